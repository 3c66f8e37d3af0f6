//! One task per (flow, input partition): decode, validate, dedupe, project, stage.
//! Staged work reaches Kafka inside the open transaction; the store sees it only after a commit.

mod batches;
mod cache;
mod dead_letter;
mod decide;
mod fold;
mod ops;
mod outbox;
mod reemit;
mod repair;
mod restored;
mod ship;
#[cfg(test)]
mod tests;

pub(crate) use ops::TaskOps;
pub(crate) use outbox::{Outbox, Outgoing, SendError};
pub(crate) use repair::ControlRecord;
pub(crate) use restored::{Ahead, Restored};

use std::collections::VecDeque;
use std::sync::Arc;

use tally_state::{DedupeEntry, StateError, Store};
use tally_topology::{Invalid, Projection, Reason, SourceRef};

use batches::{Inflight, Positions, Scratch, Sealed, Staged, Staging};
use dead_letter::DeadLetter;

use super::commit::store::StoreWriter;
use super::{FastHash, FlowInfo};
use crate::input::Read;
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

/// A produce failed: either the outbox refused a record or a staged state cannot be rendered.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("producing: {0}")]
    Send(#[from] SendError),
    #[error(transparent)]
    Task(#[from] TaskError),
}

/// A task running projection `P`.
pub struct Task<P: Projection> {
    flow: Arc<FlowInfo>,
    partition: i32,
    store: Store,
    writer: StoreWriter,
    status: Status,
    /// Generation of the current restore.
    epoch: u64,
    pos: Positions,
    /// What was processed since the last seal.
    staging: Staging<P>,
    /// The batch whose commit runs.
    sealed: Option<Sealed<P>>,
    /// Committed batches on their way into the store, oldest first.
    inflight: VecDeque<Inflight<P>>,
    reemits: reemit::Reemits,
    /// Committed states, decoded, for keys that come back before they leave it.
    cache: cache::StateCache<P::State>,
    scratch: Scratch,
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
            status: Status::Restoring,
            epoch: 0,
            pos: Positions::default(),
            staging: Staging::default(),
            sealed: None,
            inflight: VecDeque::new(),
            reemits: reemit::Reemits::default(),
            cache: cache::StateCache::new(cache_bytes),
            scratch: Scratch::default(),
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
            .staging
            .counts
            .dead
            .iter_mut()
            .find(|(r, _)| *r == invalid.reason)
        {
            Some((_, n)) => *n += 1,
            None => self.staging.counts.dead.push((invalid.reason, 1)),
        }
        let limit = self.flow.record_limit;
        self.staging
            .dead
            .push(DeadLetter::new(record, invalid, stage, limit));
    }

    /// Stages a new state of `key` and marks it for shipping.
    fn stage(&mut self, key: &str, state: P::State) {
        let slot = self.staging.states.get_index_of(key);
        self.stage_at(slot, key, state);
    }

    /// [`Task::stage`] for a caller that already looked up `key`'s slot in `states`.
    fn stage_at(&mut self, slot: Option<usize>, key: &str, state: P::State) {
        match slot.and_then(|i| Some((i, self.staging.states.get_index_mut(i)?.1))) {
            Some((i, slot)) => {
                slot.state = state;
                if !slot.dirty {
                    slot.dirty = true;
                    self.staging.dirty.push(i);
                }
            }
            None => {
                let (i, _) = self
                    .staging
                    .states
                    .insert_full(key.to_owned(), Staged { state, dirty: true });
                self.staging.dirty.push(i);
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
        let bound = self
            .pos
            .watermark
            .saturating_sub(self.flow.dedupe_retention_ms);
        let live = |e: DedupeEntry| (e.event_time_ms >= bound).then_some(e);
        if let Some(e) = self.staging.dedupe.get(event_id) {
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
        let current = match self.staging.states.get(key) {
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
            None => (self.pos.committed, self.pos.control_committed),
        }
    }

    /// Records an applied event id; one applied again after it left the window is re-shipped.
    fn remember(&mut self, event_id: &str, entry: DedupeEntry) {
        let (i, old) = self.staging.dedupe.insert_full(event_id.to_owned(), entry);
        if old.is_some() && i < self.staging.dedupe_shipped {
            self.staging.dedupe_reship.push(i);
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
        if self.status != Status::Active || offset < self.pos.next {
            return Ok(());
        }
        self.pos.next = offset + 1;
        if let Some(ts) = record.timestamp_ms {
            self.staging.counts.timestamps.push(ts);
        }
        let (record_key, value, origin) = match self.flow.reader.read(record) {
            Read::Event { key, value, source } => (key, value, source),
            Read::Skip(skip) => {
                self.staging.counts.skip(skip);
                return Ok(());
            }
            Read::Refused(invalid) => {
                self.dead_letter(record, invalid, "decode");
                return Ok(());
            }
        };
        let event = match P::decode(record_key.as_deref(), &value) {
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
                self.staging.counts.duplicates += 1;
                return Ok(());
            }
            decide::Verdict::SameRecord => {
                if !self.lost_in_crash(key, offset)? {
                    self.staging.counts.duplicates += 1;
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
        self.pos.watermark = self.pos.watermark.max(event_time_ms);
        self.remember(
            event_id,
            DedupeEntry {
                fingerprint,
                event_time_ms,
                offset,
            },
        );
        self.staging.counts.applied += 1;
        if let Some(ts) = origin.ts_ms {
            self.staging.counts.source_timestamps.push(ts);
        }
        Ok(())
    }
}
