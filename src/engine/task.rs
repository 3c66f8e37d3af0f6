//! One task per (flow, input partition): decode, validate, dedupe, project, stage.
//! Staged work becomes visible only through `produce` + `after_commit`, never before a commit.

use std::collections::HashMap;
use std::sync::Arc;

use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use tally_state::{
    ChangelogKey, Checkpoint, CommitBatch, DedupeEntry, RecordKind, StateError, Store,
};
use tally_topology::{Invalid, Projection, Reason, SourceRef};

use super::sink::{ChangelogOffsets, Sink};
use super::writer::{Pending, StoreWriter};
use super::FlowInfo;
use crate::metrics;

/// Most dedupe entries examined for expiry per commit and task.
const EXPIRY_SCAN_MAX: usize = 4_096;
/// Fewest examined, so an idle index is still swept.
const EXPIRY_SCAN_MIN: usize = 64;

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
    /// Produces changelog, output and dead-letter records of the staged work.
    fn produce(&mut self, sink: &Sink, retention_ms: i64) -> Result<(), ProduceError>;
    /// Hands the committed work to the store writer (after the previous batch is written).
    fn after_commit(&mut self, offsets: &ChangelogOffsets) -> Result<(), TaskError>;
    /// Waits until every committed batch is in the store.
    fn settle(&mut self) -> Result<(), TaskError>;
    /// Drops staged work and starts a new restore generation.
    fn restart(&mut self) -> u64;
    /// Restore finished: process from `committed` on.
    fn activate(&mut self, committed: i64);
    /// Stages a corrected row from the control topic (a replay's repair) at control `offset`;
    /// `bound` is the input offset the replay rebuilt up to.
    fn repair(&mut self, key: &[u8], value: Option<&[u8]>, offset: i64, bound: i64);
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

struct DeadLetter {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    reason: Reason,
    message: String,
    offset: i64,
    stage: &'static str,
}

/// A committed batch on its way into the store; lookups see it until it is written.
struct Inflight<P: Projection> {
    states: HashMap<String, P::State>,
    dedupe: HashMap<String, DedupeEntry>,
    pending: Pending,
}

/// A task running projection `P`.
pub struct Task<P: Projection> {
    flow: Arc<FlowInfo>,
    partition: i32,
    store: Store,
    writer: StoreWriter,
    inflight: Option<Inflight<P>>,
    status: Status,
    epoch: u64,
    committed: i64,
    next: i64,
    watermark: i64,
    changelog_from: i64,
    control_committed: i64,
    control_next: i64,
    states: HashMap<String, P::State>,
    dedupe: HashMap<String, DedupeEntry>,
    expired: Vec<(Vec<u8>, i64)>,
    dead: Vec<DeadLetter>,
    counts: Counts,
    buf: Vec<u8>,
    key: Vec<u8>,
}

#[derive(Default)]
struct Counts {
    applied: u64,
    duplicates: u64,
    dead: [u64; Reason::ALL.len()],
    timestamps: Vec<i64>,
}

impl<P: Projection> Task<P>
where
    P::State: Send,
{
    /// A task in `Restoring` state over an opened store.
    pub fn new(flow: Arc<FlowInfo>, partition: i32, store: Store, writer: StoreWriter) -> Self {
        Self {
            flow,
            partition,
            store,
            writer,
            inflight: None,
            status: Status::Restoring,
            epoch: 0,
            committed: 0,
            next: 0,
            watermark: i64::MIN,
            changelog_from: 0,
            control_committed: 0,
            control_next: 0,
            states: HashMap::new(),
            dedupe: HashMap::new(),
            expired: Vec::new(),
            dead: Vec::new(),
            counts: Counts::default(),
            buf: Vec::with_capacity(512),
            key: Vec::with_capacity(64),
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
        self.counts.dead[reason_index(invalid.reason)] += 1;
        self.dead.push(DeadLetter {
            key: msg.key().map(<[u8]>::to_vec),
            value: msg.payload().map(<[u8]>::to_vec),
            reason: invalid.reason,
            message: invalid.message,
            offset: msg.offset(),
            stage,
        });
    }

    fn load_state(&self, key: &str) -> Result<Option<P::State>, TaskError> {
        if let Some(s) = self.inflight.as_ref().and_then(|i| i.states.get(key)) {
            return Ok(Some(s.clone()));
        }
        let Some(bytes) = self
            .store
            .state(key.as_bytes())
            .map_err(|e| self.store_err(e))?
        else {
            return Ok(None);
        };
        P::decode_state(&bytes)
            .map(Some)
            .map_err(|e| TaskError::State {
                flow: self.flow.name.clone(),
                partition: self.partition,
                key: key.to_string(),
                message: e.to_string(),
            })
    }

    /// The id's dedupe entry, unless it is outside the retention window: expiry depends on the
    /// log alone (the watermark), never on when the background expiry scan got to the entry.
    fn applied_before(&self, event_id: &str) -> Result<Option<DedupeEntry>, TaskError> {
        let bound = self.watermark.saturating_sub(self.flow.dedupe_retention_ms);
        let live = |e: DedupeEntry| (e.event_time_ms >= bound).then_some(e);
        if let Some(e) = self.dedupe.get(event_id) {
            return Ok(live(*e));
        }
        if let Some(e) = self.inflight.as_ref().and_then(|i| i.dedupe.get(event_id)) {
            return Ok(live(*e));
        }
        Ok(self
            .store
            .dedupe(event_id.as_bytes())
            .map_err(|e| self.store_err(e))?
            .and_then(live))
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
        if let Some(seen) = self.applied_before(event_id)? {
            if seen.fingerprint == fingerprint {
                self.counts.duplicates += 1;
            } else {
                let invalid = Invalid {
                    reason: Reason::DuplicateConflict,
                    message: format!(
                        "event_id `{event_id}` was already applied with different content"
                    ),
                };
                self.dead_letter(msg, invalid, "dedupe");
            }
            return Ok(());
        }
        let source = SourceRef {
            partition: self.partition,
            offset,
        };
        let key = P::aggregate_key(&event);
        let applied = match self.states.get_mut(key) {
            Some(state) => P::apply(Some(state), &event, source).map(|s| *state = s),
            None => {
                let prev = self.load_state(key)?;
                P::apply(prev.as_ref(), &event, source).map(|s| {
                    self.states.insert(key.to_owned(), s);
                })
            }
        };
        if let Err(invalid) = applied {
            self.dead_letter(msg, invalid, "project");
            return Ok(());
        }
        let event_time_ms = P::event_time_ms(&event);
        self.watermark = self.watermark.max(event_time_ms);
        self.dedupe.insert(
            event_id.to_owned(),
            DedupeEntry {
                fingerprint,
                event_time_ms,
            },
        );
        self.counts.applied += 1;
        Ok(())
    }

    fn staged(&self) -> usize {
        (self.next - self.committed).max(0) as usize
    }

    fn has_progress(&self) -> bool {
        self.status == Status::Active
            && (self.next > self.committed || self.control_next > self.control_committed)
    }

    fn position(&self) -> i64 {
        self.next
    }

    fn produce(&mut self, sink: &Sink, retention_ms: i64) -> Result<(), ProduceError> {
        let flow = Arc::clone(&self.flow);
        let p = self.partition;
        for (key, state) in &self.states {
            P::encode_state(state, &mut self.buf);
            ChangelogKey::encode_into(RecordKind::State, key.as_bytes(), &mut self.key);
            sink.send(&flow.changelog, p, &self.key, Some(&self.buf), None)?;
            P::render(state, &mut self.buf).map_err(|e| TaskError::State {
                flow: flow.name.clone(),
                partition: p,
                key: key.clone(),
                message: e.to_string(),
            })?;
            sink.send(&flow.output, p, key.as_bytes(), Some(&self.buf), None)?;
        }
        let bound = self.watermark.saturating_sub(retention_ms);
        // Ids already outside the window are never written: expiring them now is the same.
        self.dedupe.retain(|_, e| e.event_time_ms >= bound);
        for (id, entry) in &self.dedupe {
            ChangelogKey::encode_into(RecordKind::Dedupe, id.as_bytes(), &mut self.key);
            sink.send(&flow.changelog, p, &self.key, Some(&entry.encode()), None)?;
        }
        self.expired.clear();
        if self.watermark != i64::MIN {
            // Sweeping twice as many entries as the batch adds keeps pace with the index's growth
            // while a small commit stays cheap (the scan runs inside the transaction).
            let scan = (2 * self.dedupe.len()).clamp(EXPIRY_SCAN_MIN, EXPIRY_SCAN_MAX);
            self.expired = self
                .store
                .expired_dedupe(bound, scan)
                .map_err(|e| self.store_err(e))?;
            tracing::trace!(
                partition = p,
                watermark = self.watermark,
                bound,
                expired = self.expired.len(),
                "dedupe expiry scan"
            );
            for (id, _) in &self.expired {
                ChangelogKey::encode_into(RecordKind::Dedupe, id, &mut self.key);
                sink.send(&flow.changelog, p, &self.key, None, None)?;
            }
        }
        for d in &self.dead {
            let headers = dead_letter_headers(&flow.input, p, d);
            let key = d.key.as_deref().unwrap_or_default();
            sink.send(&flow.dead_letter, p, key, d.value.as_deref(), Some(headers))?;
        }
        Ok(())
    }

    fn after_commit(&mut self, offsets: &ChangelogOffsets) -> Result<(), TaskError> {
        self.settle()?;
        let mut batch = CommitBatch::default();
        for (key, state) in &self.states {
            P::encode_state(state, &mut self.buf);
            batch.put_state(key.as_bytes(), &self.buf);
        }
        for (id, entry) in &self.dedupe {
            batch.put_dedupe(id.as_bytes(), *entry);
        }
        for (id, _) in self.expired.drain(..) {
            batch.remove_dedupe(&id);
        }
        self.changelog_from = self
            .changelog_from
            .max(offsets.next_offset(&self.flow.changelog, self.partition));
        batch.set_checkpoint(Checkpoint {
            input_offset: self.next,
            changelog_offset: self.changelog_from,
            watermark_ms: self.watermark,
        });
        let pending = self.writer.submit(self.store.clone(), batch);
        self.inflight = Some(Inflight {
            states: std::mem::take(&mut self.states),
            dedupe: std::mem::take(&mut self.dedupe),
            pending,
        });
        self.committed = self.next;
        self.control_committed = self.control_next;
        self.dead.clear();
        let c = std::mem::take(&mut self.counts);
        metrics::record_commit(&self.flow, c.applied, c.duplicates, &c.dead, &c.timestamps);
        self.counts.timestamps = c.timestamps;
        self.counts.timestamps.clear();
        Ok(())
    }

    fn settle(&mut self) -> Result<(), TaskError> {
        match self.inflight.take() {
            Some(i) => i.pending.wait().map_err(|e| self.store_err(e)),
            None => Ok(()),
        }
    }

    fn restart(&mut self) -> u64 {
        // Committed batches belong in the store before a restore reads its checkpoint.
        if let Err(e) = self.settle() {
            tracing::error!(error = %e, "writing a committed batch failed; the restore rebuilds it");
        }
        self.states.clear();
        self.dedupe.clear();
        self.expired.clear();
        self.dead.clear();
        self.counts = Counts::default();
        self.status = Status::Restoring;
        self.epoch += 1;
        self.epoch
    }

    fn activate(&mut self, committed: i64) {
        if let Ok(Some(cp)) = self.store.checkpoint() {
            self.watermark = cp.watermark_ms;
            self.changelog_from = cp.changelog_offset;
        }
        self.committed = committed;
        self.next = committed;
        self.status = Status::Active;
    }

    fn repair(&mut self, key: &[u8], value: Option<&[u8]>, offset: i64, bound: i64) {
        if self.status != Status::Active || offset < self.control_next {
            return;
        }
        self.control_next = offset + 1;
        let key = String::from_utf8_lossy(key);
        // A key that applied an event past the replay's bound has moved on: the rebuilt row is
        // stale, and writing it would undo that event.
        let current = match self.states.get(key.as_ref()) {
            Some(s) => Some(P::source(s).offset),
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
                self.states.insert(key.into_owned(), s);
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

    fn control_position(&self) -> Option<i64> {
        (self.status == Status::Active && self.control_next > self.control_committed)
            .then_some(self.control_next)
    }

    fn activate_control(&mut self, committed: i64) {
        self.control_committed = committed;
        self.control_next = committed;
    }
}

fn reason_index(r: Reason) -> usize {
    Reason::ALL.iter().position(|x| *x == r).unwrap_or(0)
}

fn dead_letter_headers(topic: &str, partition: i32, d: &DeadLetter) -> OwnedHeaders {
    let partition = partition.to_string();
    let offset = d.offset.to_string();
    OwnedHeaders::new_with_capacity(6)
        .insert(Header {
            key: "tally.error.reason",
            value: Some(d.reason.as_str()),
        })
        .insert(Header {
            key: "tally.error.message",
            value: Some(d.message.as_str()),
        })
        .insert(Header {
            key: "tally.error.stage",
            value: Some(d.stage),
        })
        .insert(Header {
            key: "tally.source.topic",
            value: Some(topic),
        })
        .insert(Header {
            key: "tally.source.partition",
            value: Some(partition.as_str()),
        })
        .insert(Header {
            key: "tally.source.offset",
            value: Some(offset.as_str()),
        })
}
