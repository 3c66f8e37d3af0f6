//! Outputs re-sent after a crash under at_least_once: a redelivered event whose state already
//! landed re-sends that state's output only once no later event of its key can still come back.

use indexmap::IndexMap;
use tally_topology::Projection;

use super::{Task, TaskError};
use crate::engine::FastHash;

/// Keys held for a re-send, and how far the redelivery must get before they are released.
#[derive(Default)]
pub(super) struct Reemits {
    /// The input partition's end when the restore began: the previous owner processed nothing
    /// at or past it, so nothing it may have sent is redelivered after it.
    horizon: i64,
    /// Key -> (offset of the redelivered event, the watermark before it), oldest first.
    held: IndexMap<String, (i64, i64), FastHash>,
}

impl Reemits {
    /// Starts over for a redelivery that ends at `horizon`.
    pub(super) fn reset(&mut self, horizon: i64) {
        self.horizon = horizon;
        self.held.clear();
    }

    /// Whether any key waits for its re-send.
    pub(super) fn holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// The input offset (with the watermark before it) a commit may go up to: not past a held
    /// key's event, so a crash before its re-send redelivers that event again.
    pub(super) fn resume(&self, next: i64, watermark: i64) -> (i64, i64) {
        match self.held.first() {
            Some((_, &(offset, before))) if offset < next => (offset, before),
            _ => (next, watermark),
        }
    }

    /// A later event of `key` was applied: its own output supersedes the held re-send.
    pub(super) fn superseded(&mut self, key: &str) {
        if !self.held.is_empty() {
            self.held.shift_remove(key);
        }
    }
}

impl<P: Projection> Task<P>
where
    P::State: Send,
{
    /// The redelivered event at `offset` is in `key`'s state already; its output may not be.
    ///
    /// Re-sending that state at once could put an older output after a newer one that landed
    /// before the crash (outputs and changelog are separate partitions, each landing a prefix).
    /// A later event of the key is redelivered too and sends its own output, so the re-send
    /// waits until the redelivery passed the horizon, and is dropped when such an event comes.
    pub(super) fn hold_reemit(&mut self, key: &str, offset: i64, state: P::State) {
        if offset >= self.reemits.horizon {
            self.stage(key, state);
            return;
        }
        if !self.reemits.held.contains_key(key) {
            self.reemits
                .held
                .insert(key.to_owned(), (offset, self.watermark));
        }
    }

    /// Re-sends the held keys' states once the redelivery reached the horizon: `consumed` is
    /// the consumer's position, which passes records the task never sees (transaction markers).
    pub(super) fn release_reemits(&mut self, consumed: i64) -> Result<(), TaskError> {
        if !self.reemits.holding() || self.next.max(consumed) < self.reemits.horizon {
            return Ok(());
        }
        let held = std::mem::take(&mut self.reemits.held);
        tracing::debug!(flow = %self.flow.name, partition = self.partition, keys = held.len(),
            horizon = self.reemits.horizon, "redelivery passed the horizon; re-sending held outputs");
        ::metrics::counter!("tally_outputs_resent_total", "flow" => self.flow.name.clone())
            .increment(held.len() as u64);
        for key in held.keys() {
            let state = match self.states.get(key.as_str()) {
                Some(staged) => Some(staged.state.clone()),
                None => self.load_state(key)?,
            };
            if let Some(state) = state {
                self.stage(key, state);
            }
        }
        Ok(())
    }
}
