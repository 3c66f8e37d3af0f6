//! One task per (flow, input partition): decode, validate, dedupe, project, stage.
//! Staged work reaches Kafka inside the open transaction; the store sees it only after a commit.

mod cache;
mod dead_letter;
mod decide;
mod fold;
mod ops;
mod reemit;
mod repair;
mod ship;

pub(crate) use ops::TaskOps;
pub(crate) use repair::ControlRecord;

use std::collections::VecDeque;
use std::sync::Arc;

use indexmap::IndexMap;
use tally_state::{BundleBuilder, CommitBatch, DedupeEntry, StateError, Store};
use tally_topology::{Invalid, Projection, Reason, SourceRef};

use dead_letter::DeadLetter;

use super::writer::{Pending, StoreWriter};
use super::{FastHash, FlowInfo};
use crate::kafka::record::InputRecord;

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

    fn dead_letter(&mut self, record: &InputRecord<'_>, invalid: Invalid, stage: &'static str) {
        match self
            .counts
            .dead
            .iter_mut()
            .find(|(r, _)| *r == invalid.reason)
        {
            Some((_, n)) => *n += 1,
            None => self.counts.dead.push((invalid.reason, 1)),
        }
        let limit = self.flow.record_limit;
        self.dead
            .push(DeadLetter::new(record, invalid, stage, limit));
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
        let lost = decide::lost_in_crash(current.as_ref().map(|s| P::source(s).offset), offset);
        match current {
            Some(state) if !lost => self.reemit(key, offset, state),
            _ => ::metrics::counter!("tally_redeliveries_reapplied_total", "flow" => self.flow.name.clone())
                .increment(1),
        }
        Ok(lost)
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
    fn process_record(&mut self, record: &InputRecord<'_>) -> Result<(), TaskError> {
        let offset = record.offset;
        if self.status != Status::Active || offset < self.next {
            return Ok(());
        }
        self.next = offset + 1;
        if let Some(ts) = record.timestamp_ms {
            self.counts.timestamps.push(ts);
        }
        let Some(value) = record.value else {
            let invalid = Invalid::new(Reason::MalformedJson, "record has no value");
            self.dead_letter(record, invalid, "decode");
            return Ok(());
        };
        let event = match P::decode(record.key, value) {
            Ok(ev) => ev,
            Err(invalid) => {
                self.dead_letter(record, invalid, "decode");
                return Ok(());
            }
        };
        let event_id = P::event_id(&event);
        let fingerprint = P::fingerprint(&event);
        let key = P::aggregate_key(&event);
        let seen = self.applied_before(event_id)?;
        match decide::classify(seen.as_ref(), fingerprint, offset) {
            decide::Verdict::New => {}
            decide::Verdict::Conflict => {
                let message =
                    format!("event_id `{event_id}` was already applied with different content");
                self.dead_letter(
                    record,
                    Invalid::new(Reason::DuplicateConflict, message),
                    "dedupe",
                );
                return Ok(());
            }
            decide::Verdict::Redelivery => {
                self.counts.duplicates += 1;
                return Ok(());
            }
            decide::Verdict::SameRecord => {
                if !self.lost_in_crash(key, offset)? {
                    self.counts.duplicates += 1;
                    return Ok(());
                }
            }
        }
        let source = SourceRef {
            partition: self.partition,
            offset,
        };
        if let Err(invalid) = self.fold(key, &event, value.len(), source)? {
            self.dead_letter(record, invalid, "project");
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
