//! Repairs a replay sends through the control topic: the owning task stages the corrected row
//! in its own transaction, unless the key moved past the replay's bound meanwhile.

use tally_topology::Projection;

use super::{Status, Task};

impl<P: Projection> Task<P>
where
    P::State: Send,
{
    /// Stages a corrected row read at control `offset`; `bound` is the input offset the replay
    /// rebuilt up to.
    pub(super) fn stage_repair(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
        offset: i64,
        bound: i64,
    ) {
        if self.status != Status::Active || offset < self.control_next {
            return;
        }
        self.control_next = offset + 1;
        let key = String::from_utf8_lossy(key);
        // A key that applied an event past the replay's bound has moved on: the rebuilt row is
        // stale, and writing it would undo that event.
        let current = match self.states.get(key.as_ref()) {
            Some(s) => Some(P::source(&s.state).offset),
            None => self
                .load_state(&key)
                .ok()
                .flatten()
                .map(|s| P::source(&s).offset),
        };
        let state = value.map(P::decode_state);
        match state {
            _ if current.is_some_and(|o| o >= bound) => {
                tracing::warn!(flow = %self.flow.name, partition = self.partition, %key, bound,
                    "repair refused: the key applied events past the replay's bound; replay again");
                ::metrics::counter!("tally_repairs_refused_total", "flow" => self.flow.name.clone())
                    .increment(1);
            }
            Some(Ok(s)) if P::state_key(&s) == key => {
                tracing::info!(flow = %self.flow.name, partition = self.partition, %key, "repair staged");
                ::metrics::counter!("tally_repairs_applied_total", "flow" => self.flow.name.clone())
                    .increment(1);
                self.stage(&key, s);
            }
            other => {
                let why = match other {
                    None => "a deletion (not supported)".to_string(),
                    Some(Err(e)) => format!("unreadable state: {e}"),
                    Some(Ok(s)) => format!("state of key `{}`", P::state_key(&s)),
                };
                tracing::error!(flow = %self.flow.name, partition = self.partition, %key, offset,
                    why, "repair refused");
                ::metrics::counter!("tally_repairs_refused_total", "flow" => self.flow.name.clone())
                    .increment(1);
            }
        }
    }
}
