//! What the engine asks of a task, whatever its projection: the operations of its life (restore,
//! activate, process, ship, seal, commit, settle) behind one object-safe trait.

use std::sync::Arc;

use tally_state::Store;
use tally_topology::Projection;

use super::{ControlRecord, Counts, ProduceError, Status, Task, TaskError};
use crate::engine::restore::Restored;
use crate::engine::sink::{DeliveredOffsets, Sink};
use crate::engine::FlowInfo;
use crate::kafka::record::InputRecord;

/// What the engine needs from a task, whatever its projection.
pub trait TaskOps: Send {
    fn flow(&self) -> &Arc<FlowInfo>;
    fn partition(&self) -> i32;
    fn status(&self) -> Status;
    /// Generation of the current restore, so a stale restore result is ignored.
    fn epoch(&self) -> u64;
    fn store(&self) -> &Store;
    /// Stages one input record.
    fn process(&mut self, record: &InputRecord<'_>) -> Result<(), TaskError>;
    /// Events staged since the last commit.
    fn staged(&self) -> usize;
    /// Whether the input position moved since the last commit.
    fn has_progress(&self) -> bool;
    /// Next input offset to commit.
    fn position(&self) -> i64;
    /// The input offset the last successful commit moved past.
    fn committed(&self) -> i64;
    /// Whether input was processed that no commit holds yet (staged, or sealed and committing).
    fn uncommitted(&self) -> bool;
    /// The watermark after every record before [`TaskOps::position`], committed beside it.
    fn watermark(&self) -> i64;
    /// Whether staged records wait to be handed to the producer.
    fn unshipped(&self) -> bool;
    /// Hands the records staged since the last call to the producer (inside the open
    /// transaction), so their acknowledgements arrive while later input is processed.
    fn ship(&mut self, sink: &Sink) -> Result<(), ProduceError>;
    /// Ships what is left and the dedupe expiry of this commit.
    fn produce(&mut self, sink: &Sink, retention_ms: i64) -> Result<(), ProduceError>;
    /// Sets everything staged (and shipped) aside as the batch of the commit that starts now;
    /// processing goes on into a new batch, which sees the sealed one.
    fn seal(&mut self);
    /// Hands the sealed batch, now committed, to the store writer.
    fn after_commit(&mut self, offsets: &DeliveredOffsets) -> Result<(), TaskError>;
    /// Waits until every committed batch is in the store.
    fn settle(&mut self) -> Result<(), TaskError>;
    /// Drops staged work and starts a new restore generation.
    fn restart(&mut self) -> u64;
    /// Restore finished: process from its committed offset on, whose watermark the restore
    /// recovered, holding back the outputs of the keys whose newer outputs a crash left ahead.
    fn activate(&mut self, restored: Restored);
    /// The output partition's end when the task became active: the at_least_once commit
    /// metadata's floor, raised to what this process delivered (`Ends::stamp`).
    fn output_end(&self) -> i64;
    /// The changelog partition's end after this task's committed records, for the commit
    /// metadata; `None` when the batch being committed wrote records there (their end is
    /// known once they are acknowledged, `Ends::stamp`).
    fn changelog_end(&self) -> Option<i64>;
    /// Stages a corrected row from the control topic (a replay's repair), or refuses it.
    fn repair(&mut self, record: ControlRecord<'_>);
    /// The control offset to commit, when repairs were staged since the last commit.
    fn control_position(&self) -> Option<i64>;
    /// The control partition was assigned from its committed offset `committed`.
    fn activate_control(&mut self, committed: i64);
}

impl<P: Projection + 'static> TaskOps for Task<P>
where
    P::State: Send,
    P::Event: Send,
{
    fn flow(&self) -> &Arc<FlowInfo> {
        &self.flow
    }
    fn partition(&self) -> i32 {
        self.partition
    }
    fn status(&self) -> Status {
        self.status
    }
    fn epoch(&self) -> u64 {
        self.epoch
    }
    fn store(&self) -> &Store {
        &self.store
    }

    fn process(&mut self, record: &InputRecord<'_>) -> Result<(), TaskError> {
        self.process_record(record)?;
        self.release_reemits()
    }

    fn staged(&self) -> usize {
        (self.next - self.base().0).max(0) as usize
    }

    fn has_progress(&self) -> bool {
        let (next, control_next) = self.base();
        self.status == Status::Active && (self.next > next || self.control_next > control_next)
    }

    fn position(&self) -> i64 {
        self.reemits.resume(self.next, self.watermark).0
    }

    fn watermark(&self) -> i64 {
        self.reemits.resume(self.next, self.watermark).1
    }

    fn committed(&self) -> i64 {
        self.committed
    }

    fn uncommitted(&self) -> bool {
        self.status == Status::Active
            && (self.next > self.committed || self.control_next > self.control_committed)
    }

    fn unshipped(&self) -> bool {
        self.status == Status::Active
            && (!self.dirty.is_empty()
                || self.dedupe.len() > self.dedupe_shipped
                || !self.dedupe_reship.is_empty()
                || self.dead.len() > self.dead_shipped
                || self.audits.len() > self.audits_shipped)
    }

    fn ship(&mut self, sink: &Sink) -> Result<(), ProduceError> {
        self.ship_staged(sink)
    }

    fn produce(&mut self, sink: &Sink, retention_ms: i64) -> Result<(), ProduceError> {
        self.ship_staged(sink)?;
        self.ship_expiry(sink, retention_ms)
    }

    fn seal(&mut self) {
        self.seal_staged();
    }

    fn after_commit(&mut self, offsets: &DeliveredOffsets) -> Result<(), TaskError> {
        self.hand_to_writer(offsets)
    }

    fn settle(&mut self) -> Result<(), TaskError> {
        while let Some(i) = self.inflight.pop_front() {
            i.pending.wait().map_err(|e| self.store_err(e))?;
            self.retire(i.states);
        }
        Ok(())
    }

    fn restart(&mut self) -> u64 {
        // Committed batches belong in the store before a restore reads its checkpoint.
        if let Err(e) = self.settle() {
            tracing::error!(error = %e, "writing a committed batch failed; the restore rebuilds it");
        }
        self.drop_staged();
        self.cache.clear();
        self.sealed = None;
        self.reemits.reset(0, None);
        self.counts = Counts::default();
        self.status = Status::Restoring;
        self.epoch += 1;
        self.epoch
    }

    fn activate(&mut self, restored: Restored) {
        if let Ok(Some(cp)) = self.store.checkpoint() {
            self.watermark = cp.watermark_ms;
            self.changelog_from = cp.changelog_offset;
        }
        self.committed_watermark = self.watermark;
        self.committed = restored.committed;
        self.next = restored.committed;
        self.changelog_end = restored.changelog_end;
        let ahead = restored.ahead;
        self.output_end = ahead.output_end;
        self.reemits.reset(ahead.horizon, ahead.keys);
        self.status = Status::Active;
    }

    fn output_end(&self) -> i64 {
        self.output_end
    }

    fn changelog_end(&self) -> Option<i64> {
        (!self.wrote_changelog).then_some(self.changelog_end)
    }

    fn repair(&mut self, record: ControlRecord<'_>) {
        self.stage_repair(record);
    }

    fn control_position(&self) -> Option<i64> {
        (self.status == Status::Active && self.control_next > self.base().1)
            .then_some(self.control_next)
    }

    fn activate_control(&mut self, committed: i64) {
        self.control_committed = committed;
        self.control_next = committed;
    }
}
