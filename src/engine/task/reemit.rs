//! Outputs held back after an at_least_once crash: a key whose newer output landed while its
//! state was lost sends no output until its state has caught up with that one again.

use std::collections::HashMap;

use indexmap::IndexMap;
use tally_topology::Projection;

use super::{Task, TaskError};
use crate::engine::FastHash;

/// Keys whose output waits, and until when.
#[derive(Default)]
pub(super) struct Reemits {
    /// Past this input offset nothing waits: the input's end when the restore found outputs
    /// past the last commit (the previous owner processed nothing beyond it), else the
    /// committed offset.
    horizon: i64,
    /// Key -> the source offset of its newest output past the last commit; `None` when the
    /// last commit's output end was unknown, so every output before the horizon waits.
    ahead: Option<HashMap<String, i64, FastHash>>,
    /// Key -> (offset of the event that first held it, the watermark before it), oldest first.
    held: IndexMap<String, (i64, i64), FastHash>,
}

impl Reemits {
    /// Starts over for a redelivery that ends at `horizon`, with the outputs left `ahead`.
    pub(super) fn reset(&mut self, horizon: i64, ahead: Option<HashMap<String, i64, FastHash>>) {
        self.horizon = horizon;
        self.ahead = ahead;
        self.held.clear();
    }

    /// Whether `key`'s output waits.
    pub(super) fn holds(&self, key: &str) -> bool {
        !self.held.is_empty() && self.held.contains_key(key)
    }

    /// The input offset (with the watermark before it) a commit may go up to: not past a held
    /// key's event, so a crash before its output is sent redelivers that event again.
    pub(super) fn resume(&self, next: i64, watermark: i64) -> (i64, i64) {
        match self.held.first() {
            Some((_, &(offset, before))) if offset < next => (offset, before),
            _ => (next, watermark),
        }
    }

    /// Whether `key`, at an event of `offset` whose state now ends at input offset `source`, is
    /// behind an output that landed before the crash. A key that caught up is let go.
    fn behind(&mut self, key: &str, offset: i64, source: i64) -> bool {
        if offset >= self.horizon {
            return false;
        }
        // Unknown which keys are ahead: every key waits for the horizon.
        let Some(ahead) = &mut self.ahead else {
            return true;
        };
        match ahead.get(key) {
            Some(&landed) if source < landed => true,
            Some(_) => {
                ahead.remove(key);
                self.held.shift_remove(key);
                false
            }
            None => false,
        }
    }
}

impl<P: Projection> Task<P>
where
    P::State: Send,
{
    /// The event at `offset` changed `key` (whose state now ends there).
    ///
    /// Outputs and changelog are separate partitions, so a crash can land a key's newer output
    /// while its state and dedupe entries are lost; until the redelivery brought the state back
    /// to that output, sending the restored or a re-folded older state would put it after it.
    pub(super) fn hold_output(&mut self, key: &str, offset: i64) {
        if self.reemits.behind(key, offset, offset) {
            self.hold(key, offset);
        }
    }

    /// A redelivered event whose state already landed: its key's output may be what the crash
    /// lost, so it is sent again, unless the key is behind a newer output.
    pub(super) fn reemit(&mut self, key: &str, offset: i64, state: P::State) {
        if self.reemits.behind(key, offset, P::source(&state).offset) {
            self.hold(key, offset);
        } else {
            self.stage(key, state);
        }
    }

    /// Holds `key`'s output from the event at `offset` on, unless it is held already.
    fn hold(&mut self, key: &str, offset: i64) {
        if !self.reemits.held.contains_key(key) {
            let before = (offset, self.pos.watermark);
            self.reemits.held.insert(key.to_owned(), before);
        }
    }

    /// Sends the held keys' outputs (with their states again) once processing reached the
    /// horizon. Only records the task processed count: when the input ends in transaction
    /// markers, the next record releases them.
    pub(super) fn release_reemits(&mut self) -> Result<(), TaskError> {
        if self.reemits.held.is_empty() || self.pos.next < self.reemits.horizon {
            return Ok(());
        }
        self.reemits.ahead = Some(HashMap::default());
        let held = std::mem::take(&mut self.reemits.held);
        tracing::debug!(flow = %self.flow.name, partition = self.partition, keys = held.len(),
            horizon = self.reemits.horizon, "redelivery passed the horizon; sending held outputs");
        ::metrics::counter!("tally_outputs_resent_total", "flow" => self.flow.name.clone())
            .increment(held.len() as u64);
        for key in held.keys() {
            if let Some((i, _, slot)) = self.staging.states.get_full_mut(key.as_str()) {
                if !slot.dirty {
                    slot.dirty = true;
                    self.staging.dirty.push(i);
                }
            } else if let Some(state) = self.load_state(key)? {
                self.stage(key, state);
            }
        }
        Ok(())
    }
}
