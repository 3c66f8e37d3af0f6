//! Outputs held back after an at_least_once crash: until the redelivery has passed everything
//! the previous owner may have sent, a key's output could be older than one that landed.

use indexmap::IndexMap;
use tally_topology::Projection;

use super::{Task, TaskError};
use crate::engine::FastHash;

/// Keys whose output waits, and how far the redelivery must get before they are sent.
#[derive(Default)]
pub(super) struct Reemits {
    /// Outputs of events before this input offset wait. It is the input partition's end when
    /// the restore found outputs past the last commit (the previous owner processed nothing
    /// beyond it), else the committed offset: nothing waits.
    horizon: i64,
    /// Key -> (offset of its first event since the restore, the watermark before it), oldest
    /// first.
    held: IndexMap<String, (i64, i64), FastHash>,
}

impl Reemits {
    /// Starts over for a redelivery that ends at `horizon`.
    pub(super) fn reset(&mut self, horizon: i64) {
        self.horizon = horizon;
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
}

impl<P: Projection> Task<P>
where
    P::State: Send,
{
    /// The event at `offset` changed `key` (or, redelivered, found its state already has it).
    ///
    /// Before the horizon its output waits: outputs and changelog are separate partitions, so
    /// a crash can land a newer output of the key while its state and dedupe entries are lost,
    /// and sending the restored or a re-folded older state now would put it after that output.
    /// Past the horizon the key's state includes every event the previous owner processed.
    pub(super) fn hold_output(&mut self, key: &str, offset: i64) {
        if offset >= self.reemits.horizon || self.reemits.held.contains_key(key) {
            return;
        }
        let before = (offset, self.watermark);
        self.reemits.held.insert(key.to_owned(), before);
    }

    /// A redelivered event whose state already landed: its key's output may be what the crash
    /// lost, so it is sent again (after the horizon, as every output of that stretch).
    pub(super) fn reemit(&mut self, key: &str, offset: i64, state: P::State) {
        if offset >= self.reemits.horizon {
            self.stage(key, state);
        } else {
            self.hold_output(key, offset);
        }
    }

    /// Sends the held keys' outputs (with their states again) once processing reached the
    /// horizon. Only records the task processed count: when the input ends in transaction
    /// markers, the next record releases them.
    pub(super) fn release_reemits(&mut self) -> Result<(), TaskError> {
        if self.reemits.held.is_empty() || self.next < self.reemits.horizon {
            return Ok(());
        }
        let held = std::mem::take(&mut self.reemits.held);
        tracing::debug!(flow = %self.flow.name, partition = self.partition, keys = held.len(),
            horizon = self.reemits.horizon, "redelivery passed the horizon; sending held outputs");
        ::metrics::counter!("tally_outputs_resent_total", "flow" => self.flow.name.clone())
            .increment(held.len() as u64);
        for key in held.keys() {
            if let Some((i, _, slot)) = self.states.get_full_mut(key.as_str()) {
                if !slot.dirty {
                    slot.dirty = true;
                    self.dirty.push(i);
                }
            } else if let Some(state) = self.load_state(key)? {
                self.stage(key, state);
            }
        }
        Ok(())
    }
}
