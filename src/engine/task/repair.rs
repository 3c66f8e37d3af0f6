//! Repairs a replay sends through the control topic: the owning task stages the corrected row
//! in its own transaction only when an authorized operator signed it and the key has not moved
//! past the replay's bound; applied or refused, an audit record goes to the evidence topic.

use serde::Serialize;
use tally_topology::Projection;

use super::{Status, Task};
use crate::signing::{Authority, Refusal};

/// A control record read by the engine, with what its signature check found.
pub(crate) struct ControlRecord<'a> {
    pub key: &'a [u8],
    pub value: Option<&'a [u8]>,
    pub offset: i64,
    pub authority: Option<Authority>,
    pub verified: Result<(), Refusal>,
}

/// The audit record of one control record, JSON on the flow's evidence topic.
#[derive(Debug, Serialize)]
pub(crate) struct Audit {
    /// repair_applied or repair_refused.
    kind: &'static str,
    flow: String,
    partition: i32,
    key: String,
    control_offset: i64,
    recovery_id: Option<String>,
    actor: Option<String>,
    key_id: Option<String>,
    signed_at_ms: Option<i64>,
    refusal: Option<&'static str>,
    message: String,
    /// When the owner decided (its wall clock; audit only, never state).
    decided_at: String,
}

impl<P: Projection> Task<P>
where
    P::State: Send,
{
    /// Stages a corrected row read from the control topic, or refuses it; either way the
    /// decision is staged as an audit record in the same transaction.
    pub(super) fn stage_repair(&mut self, record: ControlRecord<'_>) {
        if self.status != Status::Active || record.offset < self.pos.control_next {
            return;
        }
        self.pos.control_next = record.offset + 1;
        let key = String::from_utf8_lossy(record.key).into_owned();
        let outcome = match record.verified {
            Err(refusal) => Err((refusal, "the control record is not signed by a known key")),
            Ok(()) => self.check_repair(&key, record.value, record.authority.as_ref()),
        };
        let (refusal, message) = match outcome {
            Ok(state) => {
                tracing::info!(flow = %self.flow.name, partition = self.partition, %key, "repair staged");
                self.staging.counts.repairs_applied += 1;
                self.stage(&key, state);
                (None, "applied".to_string())
            }
            Err((refusal, why)) => {
                tracing::warn!(flow = %self.flow.name, partition = self.partition, %key,
                    offset = record.offset, reason = refusal.as_str(), why, "repair refused");
                self.staging.counts.repairs_refused.push(refusal);
                (Some(refusal.as_str()), why.to_string())
            }
        };
        let a = record.authority;
        self.staging.audits.push(Audit {
            kind: if refusal.is_none() {
                "repair_applied"
            } else {
                "repair_refused"
            },
            flow: self.flow.name.clone(),
            partition: self.partition,
            key,
            control_offset: record.offset,
            recovery_id: a.as_ref().map(|a| a.recovery_id.clone()),
            actor: a.as_ref().map(|a| a.actor.clone()),
            key_id: a.as_ref().map(|a| a.key_id.clone()),
            signed_at_ms: a.as_ref().map(|a| a.signed_at_ms),
            refusal,
            message,
            decided_at: crate::clock::now_rfc3339(),
        });
    }

    /// The state a verified repair writes, or why it must not.
    fn check_repair(
        &self,
        key: &str,
        value: Option<&[u8]>,
        authority: Option<&Authority>,
    ) -> Result<P::State, (Refusal, &'static str)> {
        let bound = authority.map_or(0, |a| a.bound);
        // A key that applied an event past the replay's bound has moved on: the rebuilt row is
        // stale, and writing it would undo that event.
        let current = match self.staging.states.get(key) {
            Some(s) => Some(P::source(&s.state).offset),
            None => self
                .load_state(key)
                .ok()
                .flatten()
                .map(|s| P::source(&s).offset),
        };
        if current.is_some_and(|o| o >= bound) {
            return Err((
                Refusal::MovedOn,
                "the key applied events past the replay's bound; replay again",
            ));
        }
        let Some(value) = value else {
            return Err((Refusal::Deletion, "a deletion (not supported)"));
        };
        match P::decode_state(value) {
            Ok(s) if P::state_key(&s) == key => Ok(s),
            Ok(_) => Err((Refusal::BadState, "the state is another key's")),
            Err(_) => Err((Refusal::BadState, "the state cannot be read")),
        }
    }
}
