//! Restores a task's store from its changelog on a thread of its own, so other partitions go on.
//! It first reads the group's committed input offset (stable, KIP-447), then the changelog to its end.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tally_state::{Checkpoint, CommitMetadata, RestoreBatch, Store};

use super::task::{Ahead, Restored};
use super::{FastHash, FlowInfo};
use crate::kafka::clients;

/// Restores that run at once: restoring is CPU-bound (sled inserts), so more threads than cores
/// only add memory (a fetch queue, a chunk and allocator pages each) and contention.
const CONCURRENT_RESTORES: usize = 2;
/// How long end-of-partition below the high watermark may stay unexplained before restore
/// accepts it (the tail is then transaction markers or aborted records), once it read every
/// record the committed offset stands for.
const SETTLE: Duration = Duration::from_millis(1500);
/// How often a restore waiting for committed records it cannot read yet says so.
const WAITING_LOG: Duration = Duration::from_secs(10);

/// Everything a restore needs, owned, so it can run on its own thread.
pub struct RestoreJob {
    pub flow: Arc<FlowInfo>,
    pub partition: i32,
    pub epoch: u64,
    pub store: Store,
    pub bootstrap: String,
    pub passthrough: BTreeMap<String, String>,
    pub group: String,
    pub cancel: Arc<AtomicBool>,
    /// Changelog records read so far, for the stall check: a long restore is progress.
    pub read: Arc<AtomicU64>,
    /// at_least_once: outputs a crash left ahead of the changelog make the next owner hold its
    /// own outputs back until it redelivered past them.
    pub hold_outputs: bool,
}

/// The outcome reported back to the engine.
pub struct RestoreDone {
    pub flow: usize,
    pub partition: i32,
    pub epoch: u64,
    pub result: Result<Restored, String>,
}

impl RestoreJob {
    /// Queues the restore for the restore threads, which report on `done`.
    pub fn spawn(self, done: Sender<RestoreDone>) {
        pool::submit(Box::new(move |kept: &mut pool::KeptReader| {
            let (flow, partition, epoch) = (self.flow.idx, self.partition, self.epoch);
            let result = if self.cancel.load(Ordering::Acquire) {
                Err(RestoreError::Cancelled)
            } else {
                kept.get(&self.bootstrap, &self.passthrough, &self.group)
                    .map_err(RestoreError::from)
                    .and_then(|consumer| {
                        let restored = self.run(consumer);
                        // An idle reader fetches nothing more.
                        if let Err(e) = consumer.unassign() {
                            tracing::warn!(error = %e, "cannot unassign a restore reader");
                        }
                        restored
                    })
            };
            let failed = result.is_err();
            let _ = done.send(RestoreDone {
                flow,
                partition,
                epoch,
                result: result.map_err(|e| e.to_string()),
            });
            if failed {
                // Its queue may still hold the failure (all brokers down): a retry starts afresh.
                kept.discard();
            }
        }));
    }

    fn run(self, consumer: &BaseConsumer<clients::Quiet>) -> Result<Restored, RestoreError> {
        let started = Instant::now();
        let (committed, metadata) = self.committed_input(consumer)?;
        let committed_watermark = metadata.map(|m| m.watermark_ms);
        // The committed offset stands for changelog records up to here, readable or not yet.
        let required = metadata.and_then(|m| m.changelog_end).unwrap_or(0);
        let ahead = self.ahead(consumer, committed, metadata)?;
        let (low, high) = consumer.fetch_watermarks(
            &self.flow.changelog,
            self.partition,
            Duration::from_secs(30),
        )?;
        let cp = self.store.checkpoint()?;
        let mut full = cp.is_none();
        if full {
            // Rows without a checkpoint are from a restore that died before its first chunk
            // was done: the rebuild starts from an empty store.
            self.store.clear()?;
        }
        // The end to read to: what was there when the restore began, or further, up to the
        // committed records the stable end still hides.
        let end = high.max(required);
        let mut from = low;
        if let Some(cp) = cp {
            if cp.changelog_offset > end || cp.input_offset > committed {
                tracing::warn!(flow = %self.flow.name, partition = self.partition,
                    checkpoint = ?cp, changelog_end = high, committed,
                    "store is ahead of the changelog or the committed offsets; rebuilding it");
                self.store.clear()?;
                full = true;
            } else {
                from = cp.changelog_offset.max(low);
            }
        }
        let mut watermark = cp.filter(|_| !full).map_or(i64::MIN, |c| c.watermark_ms);
        let mut next = from;
        let mut records = 0u64;
        if from < end {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&self.flow.changelog, self.partition, Offset::Offset(from))?;
            consumer.assign(&tpl)?;
            // A store rebuilt from empty leaves out the dedupe entries that the committed
            // watermark already expired.
            let expired_below = committed_watermark
                .filter(|w| full && *w != i64::MIN)
                .map(|w| w.saturating_sub(self.flow.dedupe_retention_ms));
            let mut chunk =
                expired_below.map_or_else(RestoreBatch::default, RestoreBatch::into_empty_store);
            let mut eof_at: Option<Instant> = None;
            let mut waiting_logged = Instant::now();
            // Committed records are not read yet: at the end of what is readable
            // (read_committed), their transaction's markers are still on their way.
            let mut missing = from < required;
            loop {
                if self.cancel.load(Ordering::Acquire) {
                    return Err(RestoreError::Cancelled);
                }
                match consumer.poll(Duration::from_millis(100)) {
                    None if missing && eof_at.is_some() => {
                        if waiting_logged.elapsed() > WAITING_LOG {
                            waiting_logged = Instant::now();
                            tracing::warn!(flow = %self.flow.name, partition = self.partition,
                                read_to = next, required, "restore waits for committed changelog \
                                records that are not readable yet (transaction markers pending)");
                        }
                    }
                    None if eof_at.is_some_and(|t| t.elapsed() > SETTLE) => break,
                    None => continue,
                    // The reader read another partition before (its outputs, or another
                    // restore's changelog): nothing of it counts here.
                    Some(Ok(m))
                        if m.partition() != self.partition || m.topic() != self.flow.changelog => {}
                    Some(Err(KafkaError::PartitionEOF(p))) if p != self.partition => {}
                    Some(Err(KafkaError::PartitionEOF(_))) => {
                        // Past records compaction removed, the position is ahead of `next`.
                        let at = next.max(self.position(consumer)?);
                        missing = at < required;
                        if !missing && at >= high {
                            break;
                        }
                        eof_at = Some(Instant::now());
                    }
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(m)) => {
                        eof_at = None;
                        records += 1;
                        self.read.fetch_add(1, Ordering::Relaxed);
                        next = m.offset() + 1;
                        missing = next < required;
                        chunk.push(m.key().unwrap_or_default(), m.payload());
                        if chunk.dedupe_is_full() {
                            self.store.restore_dedupe(&mut chunk)?;
                        }
                        if chunk.is_full() {
                            watermark =
                                watermark.max(chunk.max_event_time_ms().unwrap_or(i64::MIN));
                            chunk.checkpoint = Checkpoint {
                                input_offset: 0,
                                changelog_offset: next,
                                watermark_ms: watermark,
                            };
                            self.store.restore(&mut chunk)?;
                        }
                    }
                }
            }
            watermark = watermark.max(chunk.max_event_time_ms().unwrap_or(i64::MIN));
            chunk.checkpoint = Checkpoint {
                input_offset: committed,
                changelog_offset: next.max(from),
                watermark_ms: committed_watermark.unwrap_or(watermark),
            };
            self.store.restore(&mut chunk)?;
        } else {
            let mut chunk = RestoreBatch::default();
            chunk.checkpoint = Checkpoint {
                input_offset: committed,
                changelog_offset: from,
                watermark_ms: committed_watermark.unwrap_or(watermark),
            };
            self.store.restore(&mut chunk)?;
        }
        crate::metrics::record_restore(&self.flow.name, records);
        tracing::info!(flow = %self.flow.name, partition = self.partition, records, full,
            from, to = next, committed, elapsed_ms = started.elapsed().as_millis() as u64,
            "store restored");
        Ok(Restored {
            committed,
            records,
            full,
            changelog_end: required.max(if records > 0 { next } else { 0 }),
            ahead,
        })
    }

    /// Outputs past the last commit's output end. A previous owner under at_least_once that
    /// crashed may have landed outputs (their own partition) whose states and dedupe entries
    /// were lost: redelivered, those events would send older states after them. Those outputs
    /// are read back (at most a few commits' worth); without a recorded end (no commit yet, an
    /// older tally) every output waits until processing passes the input's end instead.
    fn ahead(
        &self,
        consumer: &BaseConsumer<clients::Quiet>,
        committed: i64,
        metadata: Option<CommitMetadata>,
    ) -> Result<Ahead, RestoreError> {
        let timeout = Duration::from_secs(30);
        let (_, output_end) =
            consumer.fetch_watermarks(&self.flow.output, self.partition, timeout)?;
        let committed_end = metadata.and_then(|m| m.output_end);
        let mut ahead = Ahead {
            horizon: committed,
            output_end,
            keys: Some(HashMap::default()),
        };
        if !self.hold_outputs || output_end <= committed_end.unwrap_or(0) {
            return Ok(ahead);
        }
        ahead.horizon = consumer
            .fetch_watermarks(&self.flow.input, self.partition, timeout)?
            .1;
        ahead.keys = match committed_end {
            Some(from) => Some(self.landed_outputs(consumer, from, output_end)?),
            None => None,
        };
        tracing::info!(flow = %self.flow.name, partition = self.partition, committed,
            horizon = ahead.horizon, output_end, ?committed_end,
            keys = ahead.keys.as_ref().map(HashMap::len),
            "outputs past the last commit: their keys' outputs wait until their states catch up");
        Ok(ahead)
    }

    /// Key -> the newest source offset among the output records in `[from, to)`.
    fn landed_outputs(
        &self,
        consumer: &BaseConsumer<clients::Quiet>,
        from: i64,
        to: i64,
    ) -> Result<HashMap<String, i64, FastHash>, RestoreError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.flow.output, self.partition, Offset::Offset(from))?;
        consumer.assign(&tpl)?;
        let mut keys: HashMap<String, i64, FastHash> = HashMap::default();
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if self.cancel.load(Ordering::Acquire) {
                return Err(RestoreError::Cancelled);
            }
            match consumer.poll(Duration::from_millis(100)) {
                None => continue,
                // Left from the reader's previous restore.
                Some(Ok(m)) if m.partition() != self.partition || m.topic() != self.flow.output => {
                }
                Some(Err(KafkaError::PartitionEOF(p))) if p != self.partition => {}
                Some(Err(KafkaError::PartitionEOF(_))) => return Ok(keys),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(m)) => {
                    let source = m.payload().and_then(tally_topology::rendered_source);
                    if let (Some(key), Some(source)) = (m.key(), source) {
                        let at = keys
                            .entry(String::from_utf8_lossy(key).into_owned())
                            .or_insert(source.offset);
                        *at = (*at).max(source.offset);
                    }
                    if m.offset() + 1 >= to {
                        return Ok(keys);
                    }
                }
            }
        }
        Err(KafkaError::Global(rdkafka::types::RDKafkaErrorCode::OperationTimedOut).into())
    }

    /// The group's committed offset of the input partition (0 when nothing was committed yet),
    /// and the watermark committed with it (none from an older tally or another tool; the
    /// changelog's highest event time stands in then). librdkafka asks for stable offsets under
    /// read_committed, so an open transaction of the previous owner is finished (committed or
    /// aborted) before this returns.
    fn committed_input(
        &self,
        consumer: &BaseConsumer<clients::Quiet>,
    ) -> Result<(i64, Option<CommitMetadata>), RestoreError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.flow.input, self.partition);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match consumer.committed_offsets(tpl.clone(), Duration::from_secs(30)) {
                Ok(res) => {
                    let Some(at) = res.find_partition(&self.flow.input, self.partition) else {
                        return Ok((0, None));
                    };
                    let Offset::Offset(offset) = at.offset() else {
                        return Ok((0, None));
                    };
                    return Ok((offset, CommitMetadata::decode(at.metadata())?));
                }
                Err(e) if Instant::now() < deadline && !self.cancel.load(Ordering::Acquire) => {
                    tracing::warn!(error = %e, flow = %self.flow.name, partition = self.partition,
                        "committed offsets not available yet; retrying");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The consumer's position in the changelog at end-of-partition: past the markers and
    /// aborted records it skipped, when it already passed them (else where it stands).
    fn position(&self, consumer: &BaseConsumer<clients::Quiet>) -> Result<i64, RestoreError> {
        let pos = consumer
            .position()?
            .find_partition(&self.flow.changelog, self.partition)
            .and_then(|e| e.offset().to_raw());
        Ok(pos.unwrap_or(i64::MIN))
    }
}

/// Why a restore failed; the engine retries it.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("store: {0}")]
    State(#[from] tally_state::StateError),
    #[error("cancelled")]
    Cancelled,
}

/// The restore threads: [`CONCURRENT_RESTORES`] of them, started on the first restore, each with
/// a reader it keeps between restores. A thread (and a new client) per restore left the
/// allocator's partly used pages of a dozen exited threads behind.
mod pool {
    use std::collections::{BTreeMap, VecDeque};
    use std::sync::{Condvar, Mutex, MutexGuard};

    use rdkafka::consumer::BaseConsumer;

    use crate::kafka::clients;

    /// A queued restore, run with the thread's kept reader.
    pub type Job = Box<dyn FnOnce(&mut KeptReader) + Send>;

    /// The queue and how many threads serve it.
    static QUEUE: Mutex<(VecDeque<Job>, usize)> = Mutex::new((VecDeque::new(), 0));
    static QUEUED: Condvar = Condvar::new();

    fn queue() -> MutexGuard<'static, (VecDeque<Job>, usize)> {
        QUEUE.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `job`, starting a thread while fewer than the limit run.
    pub fn submit(job: Job) {
        let mut q = queue();
        q.0.push_back(job);
        if q.1 < super::CONCURRENT_RESTORES {
            let n = q.1;
            match std::thread::Builder::new()
                .name(format!("restore-{n}"))
                .spawn(serve)
            {
                Ok(_) => q.1 += 1,
                Err(e) => tracing::error!(error = %e, "cannot spawn a restore thread"),
            }
        }
        QUEUED.notify_one();
    }

    fn serve() {
        let mut kept = KeptReader::default();
        loop {
            let job = {
                let mut q = queue();
                loop {
                    match q.0.pop_front() {
                        Some(job) => break job,
                        None => q = QUEUED.wait(q).unwrap_or_else(|p| p.into_inner()),
                    }
                }
            };
            job(&mut kept);
        }
    }

    /// A thread's reader, kept for the next restore of the same cluster and group.
    #[derive(Default)]
    pub struct KeptReader {
        current: Option<(String, BTreeMap<String, String>, String)>,
        reader: Option<BaseConsumer<clients::Quiet>>,
    }

    impl KeptReader {
        /// Closes the reader; the next restore creates a new one.
        pub fn discard(&mut self) {
            self.reader = None;
        }

        /// The reader for `bootstrap` and `group`, created on first use.
        pub fn get(
            &mut self,
            bootstrap: &str,
            passthrough: &BTreeMap<String, String>,
            group: &str,
        ) -> rdkafka::error::KafkaResult<&BaseConsumer<clients::Quiet>> {
            let same = self.current.as_ref().is_some_and(|(b, p, g)| {
                (b.as_str(), p, g.as_str()) == (bootstrap, passthrough, group)
            });
            if !same {
                self.reader = None;
            }
            let reader = match self.reader.take() {
                Some(reader) => reader,
                None => clients::quiet_reader(bootstrap, passthrough, group)?,
            };
            self.current = Some((bootstrap.into(), passthrough.clone(), group.into()));
            Ok(self.reader.insert(reader))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    #[test]
    fn restores_beyond_the_limit_wait_for_a_thread_and_all_run() {
        let (done, finished) = std::sync::mpsc::channel();
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let jobs = CONCURRENT_RESTORES + 3;
        for _ in 0..jobs {
            let (done, running, peak) = (done.clone(), Arc::clone(&running), Arc::clone(&peak));
            pool::submit(Box::new(move |_| {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
                running.fetch_sub(1, Ordering::SeqCst);
                let _ = done.send(());
            }));
        }
        for _ in 0..jobs {
            finished
                .recv_timeout(Duration::from_secs(10))
                .expect("every queued restore runs");
        }
        assert!(peak.load(Ordering::SeqCst) <= CONCURRENT_RESTORES);
    }
}
