//! A task's batches and positions: the batch being staged, the sealed one whose commit runs,
//! committed ones on their way into the store, and where the task stands in its partitions.

use indexmap::IndexMap;
use tally_state::{BundleBuilder, CommitBatch, DedupeEntry};
use tally_topology::{Projection, Reason};

use super::dead_letter::DeadLetter;
use super::repair::Audit;
use crate::engine::commit::store::Pending;
use crate::engine::FastHash;

/// A key's state in the current transaction, and whether it changed since it was shipped.
pub(super) struct Staged<S> {
    pub state: S,
    pub dirty: bool,
}

/// States staged in one transaction, in first-touched order.
pub(super) type StagedStates<S> = IndexMap<String, Staged<S>, FastHash>;

/// Event ids applied in one transaction, with their dedupe entries, in applied order.
pub(super) type StagedIds = IndexMap<String, DedupeEntry, FastHash>;

/// What was processed since the last seal, with how far each part was shipped, and the store
/// writes of what was shipped.
pub(super) struct Staging<P: Projection> {
    pub states: StagedStates<P::State>,
    /// Indexes into `states` changed since they were last shipped.
    pub dirty: Vec<usize>,
    pub dedupe: StagedIds,
    /// Entries of `dedupe` before this index are shipped.
    pub dedupe_shipped: usize,
    /// Shipped entries replaced since (an id applied again after it left the window).
    pub dedupe_reship: Vec<usize>,
    pub dead: Vec<DeadLetter>,
    pub dead_shipped: usize,
    /// Decisions on control records, for the evidence topic.
    pub audits: Vec<Audit>,
    pub audits_shipped: usize,
    /// Whether the batch sent changelog records.
    pub wrote_changelog: bool,
    /// The store writes of everything shipped in this transaction.
    pub batch: CommitBatch,
    pub counts: Counts,
}

impl<P: Projection> Default for Staging<P> {
    fn default() -> Self {
        Self {
            states: IndexMap::default(),
            dirty: Vec::new(),
            dedupe: IndexMap::default(),
            dedupe_shipped: 0,
            dedupe_reship: Vec::new(),
            dead: Vec::new(),
            dead_shipped: 0,
            audits: Vec::new(),
            audits_shipped: 0,
            wrote_changelog: false,
            batch: CommitBatch::default(),
            counts: Counts::default(),
        }
    }
}

impl<P: Projection> Staging<P> {
    /// Whether staged records wait to be handed to the producer.
    pub fn unshipped(&self) -> bool {
        !self.dirty.is_empty()
            || self.dedupe.len() > self.dedupe_shipped
            || !self.dedupe_reship.is_empty()
            || self.dead.len() > self.dead_shipped
            || self.audits.len() > self.audits_shipped
    }

    /// Forgets everything (after a seal took it, or a rollback dropped it), keeping the buffers.
    pub fn clear(&mut self) {
        self.states.clear();
        self.dirty.clear();
        self.dedupe.clear();
        self.dedupe_shipped = 0;
        self.dedupe_reship.clear();
        self.dead.clear();
        self.dead_shipped = 0;
        self.audits.clear();
        self.audits_shipped = 0;
        self.wrote_changelog = false;
        self.batch = CommitBatch::default();
    }
}

/// A batch whose commit is under way: lookups see it, and the store gets it once Kafka
/// committed it.
pub(super) struct Sealed<P: Projection> {
    pub states: StagedStates<P::State>,
    pub dedupe: StagedIds,
    pub batch: CommitBatch,
    pub next: i64,
    /// The input offset committed, with the watermark before it: `next` and the watermark,
    /// unless an output is held (see `reemit`).
    pub resume: (i64, i64),
    pub control_next: i64,
    pub counts: Counts,
    pub wrote_changelog: bool,
}

/// A committed batch on its way into the store; lookups see it until it is written.
pub(super) struct Inflight<P: Projection> {
    pub states: StagedStates<P::State>,
    pub dedupe: StagedIds,
    pub pending: Pending,
}

/// Committed batches a task may have queued at the store writer before it waits for the oldest:
/// two let sled's writes of one commit overlap the next commit's Kafka round trips.
pub(super) const MAX_INFLIGHT: usize = 2;

/// What a batch did, recorded as metrics once it is committed.
#[derive(Default)]
pub(super) struct Counts {
    pub applied: u64,
    pub duplicates: u64,
    /// Dead letters by reason (a handful of reasons at most).
    pub dead: Vec<(Reason, u64)>,
    pub timestamps: Vec<i64>,
    /// Records that carried no event (heartbeats, tombstones, skipped changes), by kind.
    pub skipped: Vec<(crate::input::Skip, u64)>,
    /// When the source database committed each applied event, where the input says.
    pub source_timestamps: Vec<i64>,
    pub repairs_applied: u64,
    pub repairs_refused: Vec<crate::signing::Refusal>,
}

impl Counts {
    /// Counts one record that carried no event.
    pub fn skip(&mut self, skip: crate::input::Skip) {
        match self.skipped.iter_mut().find(|(s, _)| *s == skip) {
            Some((_, n)) => *n += 1,
            None => self.skipped.push((skip, 1)),
        }
    }
}

/// Where a task stands in its input, changelog, output and control partitions.
#[derive(Debug, Clone, Copy)]
pub(super) struct Positions {
    /// The input offset the last successful commit moved past.
    pub committed: i64,
    /// The next input offset to process.
    pub next: i64,
    /// The highest event time applied.
    pub watermark: i64,
    /// The watermark of the last committed position: expiry tombstones never go past it, so
    /// one that lands before a failed commit removes nothing the redelivery still needs.
    pub committed_watermark: i64,
    /// Where a restore resumes reading the changelog.
    pub changelog_from: i64,
    pub control_committed: i64,
    pub control_next: i64,
    /// The output partition's end when the task became active.
    pub output_end: i64,
    /// The changelog partition's end after the records of the last commit that wrote any.
    pub changelog_end: i64,
}

impl Default for Positions {
    fn default() -> Self {
        Self {
            committed: 0,
            next: 0,
            watermark: i64::MIN,
            committed_watermark: i64::MIN,
            changelog_from: 0,
            control_committed: 0,
            control_next: 0,
            output_end: 0,
            changelog_end: 0,
        }
    }
}

/// Buffers every record reuses, so the hot path does not allocate.
pub(super) struct Scratch {
    pub buf: Vec<u8>,
    pub key: Vec<u8>,
    pub bundle: BundleBuilder,
}

impl Default for Scratch {
    fn default() -> Self {
        Self {
            buf: Vec::with_capacity(512),
            key: Vec::with_capacity(64),
            bundle: BundleBuilder::default(),
        }
    }
}
