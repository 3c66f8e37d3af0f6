//! One task per (flow, input partition): decode, validate, dedupe, project, stage.
//! Staged work reaches Kafka inside the open transaction; the store sees it only after a commit.

mod cache;
mod dead_letter;
mod fold;
mod reemit;
mod repair;
mod ship;

pub(crate) use repair::ControlRecord;

use std::collections::VecDeque;
use std::sync::Arc;

use indexmap::IndexMap;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use tally_state::{BundleBuilder, CommitBatch, DedupeEntry, StateError, Store};
use tally_topology::{Invalid, Projection, Reason, SourceRef};

use dead_letter::DeadLetter;

use super::sink::{DeliveredOffsets, Sink};
use super::writer::{Pending, StoreWriter};
use super::{FastHash, FlowInfo};

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Catching its store up from the changelog; input is paused and ignored.
    Restoring,
    /// Processing input.
    Active,
}

/// Why a task cannot go on (its store is unreadable or written by a newer tally).
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("store of {flow}/{partition}: {source}")]
    Store {
        flow: String,
        partition: i32,
        #[source]
        source: StateError,
    },
    #[error("state of key `{key}` in {flow}/{partition} is unreadable: {message}")]
    State {
        flow: String,
        partition: i32,
        key: String,
        message: String,
    },
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
    fn process(&mut self, msg: &BorrowedMessage<'_>) -> Result<(), TaskError>;
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
    fn activate(&mut self, restored: super::restore::Restored);
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

/// A produce failed: either Kafka refused or a staged state cannot be rendered.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Task(#[from] TaskError),
}

/// A key's state in the current transaction, and whether it changed since it was shipped.
struct Staged<S> {
    state: S,
    dirty: bool,
}

/// States staged in one transaction, in first-touched order.
type StagedStates<S> = IndexMap<String, Staged<S>, FastHash>;

/// Event ids applied in one transaction, with their dedupe entries, in applied order.
type StagedIds = IndexMap<String, DedupeEntry, FastHash>;

/// A committed batch on its way into the store; lookups see it until it is written.
struct Inflight<P: Projection> {
    states: StagedStates<P::State>,
    dedupe: StagedIds,
    pending: Pending,
}

/// A batch whose commit is under way: lookups see it, and the store gets it once Kafka
/// committed it.
struct Sealed<P: Projection> {
    states: StagedStates<P::State>,
    dedupe: StagedIds,
    batch: CommitBatch,
    next: i64,
    /// The input offset committed, with the watermark before it: `next` and the watermark,
    /// unless an output is held (see `reemit`).
    resume: (i64, i64),
    control_next: i64,
    counts: Counts,
    wrote_changelog: bool,
}

/// Committed batches a task may have queued at the store writer before it waits for the oldest:
/// two let sled's writes of one commit overlap the next commit's Kafka round trips.
const MAX_INFLIGHT: usize = 2;

/// A task running projection `P`.
pub struct Task<P: Projection> {
    flow: Arc<FlowInfo>,
    partition: i32,
    store: Store,
    writer: StoreWriter,
    /// Oldest first.
    inflight: VecDeque<Inflight<P>>,
    sealed: Option<Sealed<P>>,
    status: Status,
    epoch: u64,
    committed: i64,
    next: i64,
    watermark: i64,
    /// The watermark of the last committed position: expiry tombstones never go past it, so
    /// one that lands before a failed commit removes nothing the redelivery still needs.
    committed_watermark: i64,
    changelog_from: i64,
    control_committed: i64,
    control_next: i64,
    states: StagedStates<P::State>,
    /// Indexes into `states` changed since they were last shipped.
    dirty: Vec<usize>,
    dedupe: StagedIds,
    /// Entries of `dedupe` before this index are shipped.
    dedupe_shipped: usize,
    /// Shipped entries replaced since (an id applied again after it left the window).
    dedupe_reship: Vec<usize>,
    dead: Vec<DeadLetter>,
    dead_shipped: usize,
    /// Decisions on control records, for the evidence topic.
    audits: Vec<repair::Audit>,
    audits_shipped: usize,
    reemits: reemit::Reemits,
    /// The output partition's end when the task became active.
    output_end: i64,
    /// The changelog partition's end after the records of the last commit that wrote any.
    changelog_end: i64,
    /// Whether the batch being staged sent changelog records.
    wrote_changelog: bool,
    /// The store writes of everything shipped in this transaction.
    batch: CommitBatch,
    counts: Counts,
    buf: Vec<u8>,
    key: Vec<u8>,
    bundle: BundleBuilder,
    /// Committed states, decoded, for keys that come back before they leave it.
    cache: cache::StateCache<P::State>,
}

#[derive(Default)]
struct Counts {
    applied: u64,
    duplicates: u64,
    /// Dead letters by reason (a handful of reasons at most).
    dead: Vec<(Reason, u64)>,
    timestamps: Vec<i64>,
    repairs_applied: u64,
    repairs_refused: Vec<crate::signing::Refusal>,
}

impl<P: Projection> Task<P>
where
    P::State: Send,
{
    /// A task in `Restoring` state over an opened store, caching up to `cache_bytes` of
    /// committed states.
    pub fn new(
        flow: Arc<FlowInfo>,
        partition: i32,
        store: Store,
        writer: StoreWriter,
        cache_bytes: usize,
    ) -> Self {
        Self {
            flow,
            partition,
            store,
            writer,
            inflight: VecDeque::new(),
            sealed: None,
            status: Status::Restoring,
            epoch: 0,
            committed: 0,
            next: 0,
            watermark: i64::MIN,
            committed_watermark: i64::MIN,
            changelog_from: 0,
            control_committed: 0,
            control_next: 0,
            states: IndexMap::default(),
            dirty: Vec::new(),
            dedupe: IndexMap::default(),
            dedupe_shipped: 0,
            dedupe_reship: Vec::new(),
            dead: Vec::new(),
            dead_shipped: 0,
            audits: Vec::new(),
            audits_shipped: 0,
            reemits: reemit::Reemits::default(),
            output_end: 0,
            changelog_end: 0,
            wrote_changelog: false,
            batch: CommitBatch::default(),
            counts: Counts::default(),
            buf: Vec::with_capacity(512),
            key: Vec::with_capacity(64),
            bundle: BundleBuilder::default(),
            cache: cache::StateCache::new(cache_bytes),
        }
    }

    fn store_err(&self, source: StateError) -> TaskError {
        TaskError::Store {
            flow: self.flow.name.clone(),
            partition: self.partition,
            source,
        }
    }

    fn dead_letter(&mut self, msg: &BorrowedMessage<'_>, invalid: Invalid, stage: &'static str) {
        match self
            .counts
            .dead
            .iter_mut()
            .find(|(r, _)| *r == invalid.reason)
        {
            Some((_, n)) => *n += 1,
            None => self.counts.dead.push((invalid.reason, 1)),
        }
        let headers = msg
            .headers()
            .into_iter()
            .flat_map(|h| h.iter().map(|x| (x.key, x.value)));
        self.dead.push(DeadLetter::new(
            msg.key(),
            msg.payload(),
            headers,
            invalid,
            msg.offset(),
            stage,
            self.flow.record_limit,
        ));
    }

    /// Stages a new state of `key` and marks it for shipping.
    fn stage(&mut self, key: &str, state: P::State) {
        let slot = self.states.get_index_of(key);
        self.stage_at(slot, key, state);
    }

    /// [`Task::stage`] for a caller that already looked up `key`'s slot in `states`.
    fn stage_at(&mut self, slot: Option<usize>, key: &str, state: P::State) {
        match slot.and_then(|i| Some((i, self.states.get_index_mut(i)?.1))) {
            Some((i, slot)) => {
                slot.state = state;
                if !slot.dirty {
                    slot.dirty = true;
                    self.dirty.push(i);
                }
            }
            None => {
                let (i, _) = self
                    .states
                    .insert_full(key.to_owned(), Staged { state, dirty: true });
                self.dirty.push(i);
            }
        }
    }

    /// The state of `key` before this batch: the sealed batch, else the newest batch still on
    /// its way to the store, else the cache of committed states, else the store.
    fn load_state(&self, key: &str) -> Result<Option<P::State>, TaskError> {
        let sealed = self.sealed.iter().map(|s| &s.states);
        let queued = self.inflight.iter().rev().map(|i| &i.states);
        if let Some(s) = sealed.chain(queued).find_map(|states| states.get(key)) {
            return Ok(Some(s.state.clone()));
        }
        if let Some(s) = self.cache.get(key) {
            return Ok(Some(s.clone()));
        }
        self.read_state(key)
    }

    /// The id's dedupe entry, unless it is outside the retention window: expiry depends on the
    /// log alone (the watermark), never on when the background expiry scan got to the entry.
    fn applied_before(&self, event_id: &str) -> Result<Option<DedupeEntry>, TaskError> {
        let bound = self.watermark.saturating_sub(self.flow.dedupe_retention_ms);
        let live = |e: DedupeEntry| (e.event_time_ms >= bound).then_some(e);
        if let Some(e) = self.dedupe.get(event_id) {
            return Ok(live(*e));
        }
        let sealed = self.sealed.iter().map(|s| &s.dedupe);
        let queued = self.inflight.iter().rev().map(|i| &i.dedupe);
        if let Some(e) = sealed.chain(queued).find_map(|ids| ids.get(event_id)) {
            return Ok(live(*e));
        }
        Ok(self
            .store
            .dedupe(event_id.as_bytes())
            .map_err(|e| self.store_err(e))?
            .and_then(live))
    }

    /// Whether the record at `offset`, whose own dedupe entry was found, is missing from its key's
    /// state (only the entry landed before a crash). When the state has it, the key's output is
    /// sent again later ([`Task::reemit`]): under at_least_once it may be what was lost.
    fn lost_in_crash(&mut self, key: &str, offset: i64) -> Result<bool, TaskError> {
        let current = match self.states.get(key) {
            Some(staged) => Some(staged.state.clone()),
            None => self.load_state(key)?,
        };
        match current {
            Some(state) if P::source(&state).offset >= offset => {
                self.reemit(key, offset, state);
                Ok(false)
            }
            _ => {
                ::metrics::counter!("tally_redeliveries_reapplied_total", "flow" => self.flow.name.clone())
                    .increment(1);
                Ok(true)
            }
        }
    }

    /// Input and control positions the batch being staged starts at: where the sealed batch
    /// ends, else the committed ones.
    fn base(&self) -> (i64, i64) {
        match &self.sealed {
            Some(s) => (s.next, s.control_next),
            None => (self.committed, self.control_committed),
        }
    }

    /// Records an applied event id; one applied again after it left the window is re-shipped.
    fn remember(&mut self, event_id: &str, entry: DedupeEntry) {
        let (i, old) = self.dedupe.insert_full(event_id.to_owned(), entry);
        if old.is_some() && i < self.dedupe_shipped {
            self.dedupe_reship.push(i);
        }
    }
}

impl<P: Projection + 'static> Task<P>
where
    P::State: Send,
    P::Event: Send,
{
    /// Decodes, dedupes and folds one input record; a bad one becomes a dead letter.
    fn process_record(&mut self, msg: &BorrowedMessage<'_>) -> Result<(), TaskError> {
        let offset = msg.offset();
        if self.status != Status::Active || offset < self.next {
            return Ok(());
        }
        self.next = offset + 1;
        if let Some(ts) = msg.timestamp().to_millis() {
            self.counts.timestamps.push(ts);
        }
        let Some(value) = msg.payload() else {
            let invalid = Invalid {
                reason: Reason::MalformedJson,
                message: "record has no value".into(),
            };
            self.dead_letter(msg, invalid, "decode");
            return Ok(());
        };
        let event = match P::decode(msg.key(), value) {
            Ok(ev) => ev,
            Err(invalid) => {
                self.dead_letter(msg, invalid, "decode");
                return Ok(());
            }
        };
        let event_id = P::event_id(&event);
        let fingerprint = P::fingerprint(&event);
        let key = P::aggregate_key(&event);
        if let Some(seen) = self.applied_before(event_id)? {
            if seen.fingerprint != fingerprint {
                let invalid = Invalid {
                    reason: Reason::DuplicateConflict,
                    message: format!(
                        "event_id `{event_id}` was already applied with different content"
                    ),
                };
                self.dead_letter(msg, invalid, "dedupe");
                return Ok(());
            }
            // The very record again, after a crash, is applied when only its entry landed (entries
            // are sent before states); any other repeat is a duplicate.
            if seen.offset != offset || !self.lost_in_crash(key, offset)? {
                self.counts.duplicates += 1;
                return Ok(());
            }
        }
        let source = SourceRef {
            partition: self.partition,
            offset,
        };
        if let Err(invalid) = self.fold(key, &event, value.len(), source)? {
            self.dead_letter(msg, invalid, "project");
            return Ok(());
        }
        let event_time_ms = P::event_time_ms(&event);
        self.watermark = self.watermark.max(event_time_ms);
        self.remember(
            event_id,
            DedupeEntry {
                fingerprint,
                event_time_ms,
                offset,
            },
        );
        self.counts.applied += 1;
        Ok(())
    }
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

    fn process(&mut self, msg: &BorrowedMessage<'_>) -> Result<(), TaskError> {
        self.process_record(msg)?;
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

    fn activate(&mut self, restored: super::restore::Restored) {
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
