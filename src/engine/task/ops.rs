//! What the engine asks of a task, whatever its projection: the operations of its life (restore,
//! activate, process, ship, seal, commit, settle) behind one object-safe trait.

use std::sync::Arc;

use tally_state::Store;
use tally_topology::Projection;

use super::outbox::Outbox;
use super::{ControlRecord, ProduceError, Restored, Status, Task, TaskError};
use crate::engine::FlowInfo;
use crate::kafka::record::InputRecord;

/// What a commit records for a task, beside its input offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitPoint {
    /// The next input offset to commit: not past a held key's event (see `reemit`).
    pub input: i64,
    /// The watermark after every record before `input`.
    pub watermark_ms: i64,
    /// The changelog partition's end after this task's committed records; `None` when the
    /// batch being committed wrote records there (their end is known once they are
    /// acknowledged, `Ends::stamp`).
    pub changelog_end: Option<i64>,
    /// The output partition's end when the task became active: the at_least_once metadata's
    /// floor, raised to what this process delivered (`Ends::stamp`).
    pub output_end: i64,
    /// The control offset to commit, when repairs were staged since the last commit.
    pub control: Option<i64>,
}

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
    /// The input offset the last successful commit moved past.
    fn committed(&self) -> i64;
    /// Whether input was processed that no commit holds yet (staged, or sealed and committing).
    fn uncommitted(&self) -> bool;
    /// Whether staged records wait to be handed to the producer.
    fn unshipped(&self) -> bool;
    /// Hands the records staged since the last call to the producer (inside the open
    /// transaction), so their acknowledgements arrive while later input is processed.
    fn ship(&mut self, out: &mut dyn Outbox) -> Result<(), ProduceError>;
    /// Ships what is left and the dedupe expiry of this commit.
    fn produce(&mut self, out: &mut dyn Outbox, retention_ms: i64) -> Result<(), ProduceError>;
    /// Sets everything staged (and shipped) aside as the batch of the commit that starts now;
    /// processing goes on into a new batch, which sees the sealed one.
    fn seal(&mut self);
    /// Hands the sealed batch, now committed, to the store writer; `changelog_delivered` is the
    /// changelog partition's end after every record Kafka acknowledged.
    fn after_commit(&mut self, changelog_delivered: i64) -> Result<(), TaskError>;
    /// Waits until every committed batch is in the store.
    fn settle(&mut self) -> Result<(), TaskError>;
    /// Drops staged work and starts a new restore generation.
    fn restart(&mut self) -> u64;
    /// Restore finished: process from its committed offset on, whose watermark the restore
    /// recovered, holding back the outputs of the keys whose newer outputs a crash left ahead.
    fn activate(&mut self, restored: Restored);
    /// What the next commit records for this task.
    fn commit_point(&self) -> CommitPoint;
    /// Stages a corrected row from the control topic (a replay's repair), or refuses it.
    fn repair(&mut self, record: ControlRecord<'_>);
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
        (self.pos.next - self.base().0).max(0) as usize
    }

    fn has_progress(&self) -> bool {
        let (next, control_next) = self.base();
        self.status == Status::Active
            && (self.pos.next > next || self.pos.control_next > control_next)
    }

    fn committed(&self) -> i64 {
        self.pos.committed
    }

    fn uncommitted(&self) -> bool {
        self.status == Status::Active
            && (self.pos.next > self.pos.committed
                || self.pos.control_next > self.pos.control_committed)
    }

    fn unshipped(&self) -> bool {
        self.status == Status::Active && self.staging.unshipped()
    }

    fn ship(&mut self, out: &mut dyn Outbox) -> Result<(), ProduceError> {
        self.ship_staged(out)
    }

    fn produce(&mut self, out: &mut dyn Outbox, retention_ms: i64) -> Result<(), ProduceError> {
        self.ship_staged(out)?;
        self.ship_expiry(out, retention_ms)
    }

    fn seal(&mut self) {
        self.seal_staged();
    }

    fn after_commit(&mut self, changelog_delivered: i64) -> Result<(), TaskError> {
        self.hand_to_writer(changelog_delivered)
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
        self.staging.clear();
        self.cache.clear();
        self.sealed = None;
        self.reemits.reset(0, None);
        self.staging.counts = Default::default();
        self.status = Status::Restoring;
        self.epoch += 1;
        self.epoch
    }

    fn activate(&mut self, restored: Restored) {
        if let Ok(Some(cp)) = self.store.checkpoint() {
            self.pos.watermark = cp.watermark_ms;
            self.pos.changelog_from = cp.changelog_offset;
        }
        self.pos.committed_watermark = self.pos.watermark;
        self.pos.committed = restored.committed;
        self.pos.next = restored.committed;
        self.pos.changelog_end = restored.changelog_end;
        let ahead = restored.ahead;
        self.pos.output_end = ahead.output_end;
        self.reemits.reset(ahead.horizon, ahead.keys);
        self.status = Status::Active;
    }

    fn commit_point(&self) -> CommitPoint {
        let (input, watermark_ms) = self.reemits.resume(self.pos.next, self.pos.watermark);
        let control = self.status == Status::Active && self.pos.control_next > self.base().1;
        CommitPoint {
            input,
            watermark_ms,
            changelog_end: (!self.staging.wrote_changelog).then_some(self.pos.changelog_end),
            output_end: self.pos.output_end,
            control: control.then_some(self.pos.control_next),
        }
    }

    fn repair(&mut self, record: ControlRecord<'_>) {
        self.stage_repair(record);
    }

    fn activate_control(&mut self, committed: i64) {
        self.pos.control_committed = committed;
        self.pos.control_next = committed;
    }
}
