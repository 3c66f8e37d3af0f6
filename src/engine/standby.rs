//! Standby replicas: stores of partitions other instances own, kept warm on one thread that tails
//! their changelogs (read_committed) and checkpoints them, so a takeover here restores the tail.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tally_state::{Checkpoint, RestoreBatch, Store};

use super::FlowInfo;
use crate::kafka::clients;

/// One (flow index, input partition).
type TaskId = (usize, i32);

/// How long a poll waits for changelog records: also how long a release waits at most.
const POLL: Duration = Duration::from_millis(20);
/// A standby's records wait at most this long before they are in its store.
const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// How often each standby's lag is read from the broker.
const LAG_EVERY: Duration = Duration::from_secs(1);
/// Records polled per turn at most, so commands are not kept waiting.
const MAX_PER_TURN: usize = 5000;

/// What the engine asks of the standby thread.
enum Command {
    /// Start tailing a partition's changelog into its store.
    Add(Tail),
    /// Stop: its records so far are written with their checkpoint, then `done` is told.
    Drop(TaskId, Sender<()>),
}

/// The engine's handle on its standbys: which it holds, and the thread that tails them.
pub(super) struct Standbys {
    tx: Sender<Command>,
    /// Held standbys and their lag (records behind the changelog's end; -1 until first read).
    held: HashMap<TaskId, Arc<AtomicI64>>,
    /// Drops sent and not yet confirmed: a task for the partition waits for them.
    dropping: HashMap<TaskId, Receiver<()>>,
}

impl Standbys {
    /// Starts the standby thread (it creates its reader when it gets its first standby).
    pub fn start(
        bootstrap: String,
        passthrough: std::collections::BTreeMap<String, String>,
        group: String,
    ) -> std::io::Result<Self> {
        let (tx, rx) = channel();
        std::thread::Builder::new()
            .name("tally-standby".into())
            .spawn(move || Tailer::new(bootstrap, passthrough, group).run(&rx))?;
        Ok(Self {
            tx,
            held: HashMap::new(),
            dropping: HashMap::new(),
        })
    }

    /// Whether `id` is held as a standby here.
    pub fn holds(&self, id: TaskId) -> bool {
        self.held.contains_key(&id)
    }

    /// Every standby held.
    pub fn held(&self) -> impl Iterator<Item = TaskId> + '_ {
        self.held.keys().copied()
    }

    /// Starts a standby of `flow`'s `partition` into `store`; returns its lag cell.
    pub fn add(&mut self, flow: &Arc<FlowInfo>, partition: i32, store: Store) -> Arc<AtomicI64> {
        let id = (flow.idx, partition);
        self.wait_dropped(id);
        let lag = Arc::new(AtomicI64::new(-1));
        self.held.insert(id, Arc::clone(&lag));
        let _ = self.tx.send(Command::Add(Tail::new(
            Arc::clone(flow),
            partition,
            store,
            Arc::clone(&lag),
        )));
        lag
    }

    /// Stops a standby without waiting for it to finish writing.
    pub fn drop_later(&mut self, id: TaskId) {
        if self.held.remove(&id).is_some() {
            let (done, wait) = channel();
            let _ = self.tx.send(Command::Drop(id, done));
            self.dropping.insert(id, wait);
        }
    }

    /// Stops a standby and waits until its store is written and checkpointed: the partition's
    /// task starts here next and restores from that checkpoint. `true` when one was held.
    pub fn release(&mut self, id: TaskId) -> bool {
        let held = self.held.contains_key(&id);
        self.drop_later(id);
        self.wait_dropped(id);
        held
    }

    /// Stops every standby and waits until each store is written up to its checkpoint (at
    /// shutdown: what was read is kept for the next start).
    pub fn release_all(&mut self) {
        let held: Vec<TaskId> = self.held().collect();
        for id in &held {
            self.drop_later(*id);
        }
        let dropping: Vec<TaskId> = self.dropping.keys().copied().collect();
        for id in dropping {
            self.wait_dropped(id);
        }
    }

    fn wait_dropped(&mut self, id: TaskId) {
        if let Some(wait) = self.dropping.remove(&id) {
            if wait.recv_timeout(Duration::from_secs(30)).is_err() {
                tracing::warn!(partition = id.1, "a standby did not confirm its release");
            }
        }
    }
}

/// One standby as its thread keeps it.
struct Tail {
    flow: Arc<FlowInfo>,
    partition: i32,
    store: Store,
    lag: Arc<AtomicI64>,
    chunk: RestoreBatch,
    /// The changelog offset after the last record read.
    next: i64,
    /// The changelog offset after the last record written to the store (what a query sees).
    written: i64,
    watermark: i64,
    last_flush: Instant,
}

impl Tail {
    fn new(flow: Arc<FlowInfo>, partition: i32, store: Store, lag: Arc<AtomicI64>) -> Self {
        Self {
            flow,
            partition,
            store,
            lag,
            chunk: RestoreBatch::default(),
            next: 0,
            written: 0,
            watermark: i64::MIN,
            last_flush: Instant::now(),
        }
    }

    /// Where to start: the store's checkpoint, or the changelog's start for a store without
    /// one (or one ahead of the changelog, which is rebuilt).
    fn start_at(&mut self, high: i64) -> Result<i64, tally_state::StateError> {
        match self.store.checkpoint()? {
            Some(cp) if cp.changelog_offset <= high => {
                self.watermark = cp.watermark_ms;
                self.next = cp.changelog_offset;
            }
            _ => {
                self.store.clear()?;
                self.watermark = i64::MIN;
                self.next = 0;
            }
        }
        self.written = self.next;
        Ok(self.next)
    }

    fn push(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
        offset: i64,
    ) -> Result<(), tally_state::StateError> {
        self.chunk.push(key, value);
        self.next = offset + 1;
        if self.chunk.dedupe_is_full() {
            self.store.restore_dedupe(&mut self.chunk)?;
        }
        if self.chunk.is_full() {
            self.flush()?;
        }
        Ok(())
    }

    fn set_lag(&self, lag: i64) {
        self.lag.store(lag, Ordering::Relaxed);
        ::metrics::gauge!("tally_standby_lag_records", "flow" => self.flow.name.clone(),
            "partition" => self.partition.to_string())
        .set(lag as f64);
    }

    /// Writes what was read, with the checkpoint it reaches.
    fn flush(&mut self) -> Result<(), tally_state::StateError> {
        self.last_flush = Instant::now();
        if self.chunk.is_empty() {
            return Ok(());
        }
        self.watermark = self
            .watermark
            .max(self.chunk.max_event_time_ms().unwrap_or(i64::MIN));
        self.chunk.checkpoint = Checkpoint {
            input_offset: 0,
            changelog_offset: self.next,
            watermark_ms: self.watermark,
        };
        let records = self.chunk.len() as u64;
        self.store.restore(&mut self.chunk)?;
        self.written = self.next;
        ::metrics::counter!("tally_standby_records_total", "flow" => self.flow.name.clone())
            .increment(records);
        Ok(())
    }
}

/// The standby thread: one reader for every standby's changelog partition.
struct Tailer {
    bootstrap: String,
    passthrough: std::collections::BTreeMap<String, String>,
    group: String,
    reader: Option<BaseConsumer<clients::Quiet>>,
    /// By (changelog topic, partition).
    tails: HashMap<(String, i32), Tail>,
    last_lag: Instant,
}

impl Tailer {
    fn new(
        bootstrap: String,
        passthrough: std::collections::BTreeMap<String, String>,
        group: String,
    ) -> Self {
        Self {
            bootstrap,
            passthrough,
            group,
            reader: None,
            tails: HashMap::new(),
            last_lag: Instant::now(),
        }
    }

    fn run(mut self, rx: &Receiver<Command>) {
        loop {
            let wait = if self.tails.is_empty() {
                Duration::from_secs(1)
            } else {
                Duration::ZERO
            };
            match rx.recv_timeout(wait) {
                Ok(cmd) => {
                    self.command(cmd);
                    while let Ok(cmd) = rx.try_recv() {
                        self.command(cmd);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if !self.tails.is_empty() {
                self.turn();
            }
        }
        for tail in self.tails.values_mut() {
            let _ = tail.flush();
        }
    }

    fn reader(&mut self) -> Option<&BaseConsumer<clients::Quiet>> {
        if self.reader.is_none() {
            match clients::quiet_reader(&self.bootstrap, &self.passthrough, &self.group) {
                Ok(r) => self.reader = Some(r),
                Err(e) => tracing::warn!(error = %e, "cannot create the standby reader"),
            }
        }
        self.reader.as_ref()
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Add(tail) => self.add(tail),
            Command::Drop((flow, partition), done) => {
                let key = self
                    .tails
                    .iter()
                    .find(|(_, t)| t.flow.idx == flow && t.partition == partition)
                    .map(|(k, _)| k.clone());
                if let Some(key) = key {
                    if let Some(mut tail) = self.tails.remove(&key) {
                        if let Err(e) = tail.flush() {
                            tracing::warn!(flow = %tail.flow.name, partition, error = %e,
                                "writing a released standby failed; its next owner restores more");
                        }
                        ::metrics::gauge!("tally_standby_lag_records", "flow" => tail.flow.name.clone(),
                            "partition" => partition.to_string())
                        .set(0.0);
                    }
                    self.count_running();
                    if let Some(reader) = self.reader.as_ref() {
                        let mut tpl = TopicPartitionList::new();
                        tpl.add_partition(&key.0, key.1);
                        if let Err(e) = reader.incremental_unassign(&tpl) {
                            tracing::debug!(error = %e, "unassigning a standby");
                        }
                    }
                }
                let _ = done.send(());
            }
        }
    }

    fn add(&mut self, mut tail: Tail) {
        let topic = tail.flow.changelog.clone();
        let partition = tail.partition;
        let Some(reader) = self.reader() else {
            return;
        };
        let high = match reader.fetch_watermarks(&topic, partition, Duration::from_secs(10)) {
            Ok((_, high)) => high,
            Err(e) => {
                tracing::warn!(%topic, partition, error = %e, "a standby cannot read its changelog's end; it starts at its checkpoint");
                i64::MAX
            }
        };
        let from = match tail.start_at(high) {
            Ok(from) => from,
            Err(e) => {
                tracing::warn!(%topic, partition, error = %e, "a standby's store is unusable; no standby");
                return;
            }
        };
        let mut tpl = TopicPartitionList::new();
        let offset = if from > 0 {
            Offset::Offset(from)
        } else {
            Offset::Beginning
        };
        if tpl.add_partition_offset(&topic, partition, offset).is_err()
            || reader.incremental_assign(&tpl).is_err()
        {
            tracing::warn!(%topic, partition, "cannot assign a standby's changelog");
            return;
        }
        tracing::info!(flow = %tail.flow.name, partition, from, "standby started");
        if high != i64::MAX {
            // Behind by the whole way until its first reading, never "current" before it.
            tail.set_lag((high - from).max(0));
        }
        self.tails.insert((topic, partition), tail);
        self.count_running();
    }

    /// Standbys counted once they run, each with its lag set: "every standby current" is never
    /// read from standbys still starting.
    fn count_running(&self) {
        ::metrics::gauge!("tally_standby_partitions").set(self.tails.len() as f64);
    }

    /// Reads what arrived, writes what waited long enough, reads the lag now and then.
    fn turn(&mut self) {
        let Some(reader) = self.reader.as_ref() else {
            return;
        };
        let mut next = reader.poll(POLL);
        let mut n = 0;
        let mut failed: Vec<(String, i32)> = Vec::new();
        while let Some(item) = next {
            match item {
                Ok(m) => {
                    let key = (m.topic().to_string(), m.partition());
                    if let Some(tail) = self.tails.get_mut(&key) {
                        if let Err(e) =
                            tail.push(m.key().unwrap_or_default(), m.payload(), m.offset())
                        {
                            tracing::warn!(topic = %key.0, partition = key.1, error = %e, "a standby cannot apply its changelog; starting it over");
                            failed.push(key);
                        }
                    }
                }
                Err(KafkaError::PartitionEOF(_)) => {}
                Err(e) => tracing::debug!(error = %e, "standby reader"),
            }
            n += 1;
            if n >= MAX_PER_TURN {
                break;
            }
            next = reader.poll(Duration::ZERO);
        }
        for tail in self.tails.values_mut() {
            if tail.last_flush.elapsed() >= FLUSH_EVERY {
                if let Err(e) = tail.flush() {
                    tracing::warn!(flow = %tail.flow.name, partition = tail.partition, error = %e, "a standby cannot write its store");
                    failed.push((tail.flow.changelog.clone(), tail.partition));
                }
            }
        }
        for key in failed {
            if let Some(mut tail) = self.tails.remove(&key) {
                tail.chunk = RestoreBatch::default();
                self.add(tail);
            }
            self.count_running();
        }
        if self.last_lag.elapsed() >= LAG_EVERY {
            self.last_lag = Instant::now();
            self.read_lag();
        }
    }

    /// Records behind the changelog's end, per standby: the end less what its store holds (the
    /// reader's position once everything read is written).
    fn read_lag(&self) {
        let Some(reader) = self.reader.as_ref() else {
            return;
        };
        let positions = reader.position().ok();
        for ((topic, partition), tail) in &self.tails {
            let Ok((_, high)) = reader.fetch_watermarks(topic, *partition, Duration::from_secs(1))
            else {
                continue;
            };
            // The position counts the transaction markers past the last record read.
            let at = if tail.chunk.is_empty() {
                positions
                    .as_ref()
                    .and_then(|p| p.find_partition(topic, *partition))
                    .and_then(|e| e.offset().to_raw())
                    .unwrap_or(0)
                    .max(tail.next)
            } else {
                tail.written
            };
            tail.set_lag((high - at).max(0));
        }
    }
}
