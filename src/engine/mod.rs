//! The processor: one consumer group, one task per assigned input partition, one producer.
//! `run` owns the poll loop; rebalance callbacks commit or drop work through the same engine.

mod activate;
mod commit;
mod committer;
mod control;
mod faults;
mod rebalance;
mod restore;
mod sink;
mod task;
mod writer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use tally_state::{Store, StoreOptions};
use tally_topology::{FlowKind, Inventory, Ledger};

pub use commit::CommitOutcome;
pub use rebalance::EngineContext;
use restore::RestoreDone;
pub use sink::DeliveredOffsets;
use sink::Sink;
use task::{Status, Task, TaskOps};
use writer::StoreWriter;

use crate::config::{Config, ProcessingGuarantee};
use crate::health::Health;
use crate::kafka::clients;
use crate::kafka::topics::{TopicRole, Topics};

/// A flow's names, resolved once at start.
#[derive(Debug)]
pub struct FlowInfo {
    pub idx: usize,
    pub name: String,
    pub kind: FlowKind,
    pub input: String,
    pub output: String,
    pub dead_letter: String,
    pub changelog: String,
    pub partitions: i32,
    /// An applied id older than this behind the partition's watermark is forgotten.
    pub dedupe_retention_ms: i64,
    /// Where replays send repairs; co-partitioned with the input.
    pub control: String,
}

/// Why the processor stopped.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Topics(#[from] crate::kafka::topics::TopicError),
    #[error(transparent)]
    Task(#[from] task::TaskError),
    #[error("store: {0}")]
    State(#[from] tally_state::StateError),
}

/// The hasher of the per-record maps (tasks by partition, staged states and ids, delivery
/// offsets by topic): several lookups per event, where SipHash showed in profiles.
pub(crate) type FastHash = foldhash::fast::RandomState;

/// Local stores by (flow name, partition), shared with the HTTP query endpoint.
pub type StoreRegistry = dashmap::DashMap<(String, i32), Store>;

/// State shared by the poll loop and the rebalance callbacks.
pub struct Engine {
    cfg: Arc<Config>,
    flows: Vec<Arc<FlowInfo>>,
    by_input: HashMap<String, usize, FastHash>,
    tasks: HashMap<(usize, i32), Box<dyn TaskOps>, FastHash>,
    cancels: HashMap<(usize, i32), Arc<AtomicBool>>,
    open_stores: HashMap<(usize, i32), Store>,
    writer: StoreWriter,
    sink: Sink,
    /// Whether records were shipped into a transaction that is not committed yet.
    txn_open: bool,
    committer: committer::Committer,
    /// The commit the committer thread works on, if any.
    running: Option<commit::Running>,
    /// The producer's delivery failures when the last commit or rollback ended: the records
    /// of the next commit fail it by adding to them.
    failures_before: u64,
    /// The group's consumer, so the committer thread commits at_least_once offsets off the poll
    /// loop; unset before the loop runs and after it ended (it would keep the consumer alive).
    group_consumer: Option<Arc<BaseConsumer<EngineContext>>>,
    delivered: Arc<DeliveredOffsets>,
    /// Stamps each commit's changelog (and at_least_once output) ends, see `Ends`.
    ends: committer::Ends,
    restores_tx: Sender<RestoreDone>,
    restores_rx: Receiver<RestoreDone>,
    /// Restored tasks to seek: (flow, partition, what the restore found).
    pending_seeks: Vec<(usize, i32, restore::Restored)>,
    next_commit: Instant,
    health: Arc<Health>,
    stores: Arc<StoreRegistry>,
    control: control::Control,
}

impl Engine {
    fn transactional_id(cfg: &Config) -> Option<String> {
        (cfg.processing_guarantee == ProcessingGuarantee::ExactlyOnce)
            .then(|| format!("{}-{}", cfg.application_id, cfg.instance()))
    }

    fn create_sink(cfg: &Config, offsets: &Arc<DeliveredOffsets>) -> Result<Sink, KafkaError> {
        let tid = Self::transactional_id(cfg);
        let pc = clients::producer(
            &cfg.bootstrap_servers,
            &cfg.kafka,
            tid.as_deref(),
            cfg.transaction_timeout_ms,
        );
        Sink::create(&pc, Arc::clone(offsets), Duration::from_secs(60))
    }

    fn recreate_sink(&mut self) {
        loop {
            match Self::create_sink(&self.cfg, &self.delivered) {
                Ok(s) => {
                    self.sink = s;
                    self.txn_open = false;
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot re-create the producer; retrying");
                    self.health.broker_reachable(false);
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }

    fn store_path(&self, flow: &FlowInfo, partition: i32) -> std::path::PathBuf {
        self.cfg
            .state_dir
            .join(&self.cfg.application_id)
            .join(&flow.name)
            .join(partition.to_string())
    }

    /// Opens the store of a newly assigned partition and starts restoring it.
    fn add_task(&mut self, flow_idx: usize, partition: i32) -> Result<(), EngineError> {
        if self.tasks.contains_key(&(flow_idx, partition)) {
            return Ok(());
        }
        let flow = Arc::clone(&self.flows[flow_idx]);
        // A store stays open for the life of the process: sled locks its files, and a restore
        // thread of an earlier assignment may still hold a handle.
        let store = match self.open_stores.get(&(flow_idx, partition)) {
            Some(s) => s.clone(),
            None => {
                let path = self.store_path(&flow, partition);
                let opts = StoreOptions {
                    cache_capacity_bytes: self.cfg.store_cache_mib * 1024 * 1024,
                    ..StoreOptions::default()
                };
                let (store, wiped) = Store::open_or_wipe(&path, opts)?;
                if let Some(reason) = wiped {
                    tracing::warn!(flow = %flow.name, partition, %reason,
                        "store unreadable; wiped, restoring from the changelog");
                }
                self.open_stores
                    .insert((flow_idx, partition), store.clone());
                store
            }
        };
        self.stores
            .insert((flow.name.clone(), partition), store.clone());
        let cache = self.cache_bytes_per_task();
        let writer = self.writer.clone();
        let task: Box<dyn TaskOps> = match flow.kind {
            FlowKind::Inventory => Box::new(Task::<Inventory>::new(
                flow, partition, store, writer, cache,
            )),
            FlowKind::Ledger => {
                Box::new(Task::<Ledger>::new(flow, partition, store, writer, cache))
            }
        };
        self.tasks.insert((flow_idx, partition), task);
        self.start_restore(flow_idx, partition);
        Ok(())
    }

    /// A task's share of `statestore_cache_max_bytes`: the budget split over every input
    /// partition of every flow, so an instance that owns them all keeps to it.
    fn cache_bytes_per_task(&self) -> usize {
        let partitions: u64 = self.flows.iter().map(|f| f.partitions.max(0) as u64).sum();
        let share = self.cfg.statestore_cache_max_bytes / partitions.max(1);
        usize::try_from(share).unwrap_or(usize::MAX)
    }

    /// Forgets a partition this instance no longer owns.
    fn remove_task(&mut self, flow_idx: usize, partition: i32) {
        self.control
            .release(&self.flows[flow_idx].control, partition);
        if let Some(c) = self.cancels.remove(&(flow_idx, partition)) {
            c.store(true, Ordering::Release);
        }
        if let Some(mut t) = self.tasks.remove(&(flow_idx, partition)) {
            if let Err(e) = t.settle() {
                tracing::warn!(error = %e, "writing the last batch of a revoked store failed");
            }
            if let Err(e) = t.store().flush() {
                tracing::warn!(error = %e, "flushing a revoked store failed");
            }
            self.stores.remove(&(t.flow().name.clone(), partition));
        }
        self.update_gauges();
    }

    fn update_gauges(&self) {
        self.health
            .set_partitions(self.tasks.len(), self.restoring_tasks());
    }

    /// Stages one input record in its task.
    fn process(&mut self, msg: &BorrowedMessage<'_>) -> Result<(), EngineError> {
        let Some(&flow) = self.by_input.get(msg.topic()) else {
            return Ok(());
        };
        if let Some(task) = self.tasks.get_mut(&(flow, msg.partition())) {
            task.process(msg)?;
        }
        Ok(())
    }

    /// Tasks restoring (or restored and waiting for their activation).
    fn restoring_tasks(&self) -> usize {
        self.tasks
            .values()
            .filter(|t| t.status() == Status::Restoring)
            .count()
    }

    fn staged(&self) -> usize {
        self.tasks.values().map(|t| t.staged()).sum()
    }
}

/// Prepares topics, then runs the processor until `shutdown` is set.
pub fn run(
    cfg: Config,
    shutdown: Arc<AtomicBool>,
    health: Arc<Health>,
    stores: Arc<StoreRegistry>,
) -> Result<(), EngineError> {
    let cfg = Arc::new(cfg);
    let delivered = Arc::new(DeliveredOffsets::default());
    // The producer's start (half a second: librdkafka's first transactional id request waits
    // for a broker connection) overlaps the topics' preparation.
    let (flows, sink) = std::thread::scope(|s| {
        let sink = s.spawn(|| Engine::create_sink(&cfg, &delivered));
        let flows = prepare_topics(&cfg);
        let sink = sink.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        (flows, sink)
    });
    let flows = flows?;
    let sink = sink?;
    delivered.track(flows.iter().flat_map(|f| {
        [
            (f.changelog.clone(), f.partitions),
            (f.output.clone(), f.partitions),
        ]
    }));
    let ends = committer::Ends {
        delivered: Arc::clone(&delivered),
        topics: Arc::new(
            flows
                .iter()
                .map(|f| (f.input.clone(), (f.changelog.clone(), f.output.clone())))
                .collect(),
        ),
    };
    let (restores_tx, restores_rx) = channel();
    let engine = Arc::new(Mutex::new(Engine {
        by_input: flows.iter().map(|f| (f.input.clone(), f.idx)).collect(),
        flows: flows.clone(),
        cfg: Arc::clone(&cfg),
        tasks: HashMap::default(),
        cancels: HashMap::new(),
        open_stores: HashMap::new(),
        writer: StoreWriter::start().map_err(|source| tally_state::StateError::Fs {
            path: cfg.state_dir.clone(),
            source,
        })?,
        sink,
        txn_open: false,
        committer: committer::Committer::start().map_err(|source| tally_state::StateError::Fs {
            path: cfg.state_dir.clone(),
            source,
        })?,
        running: None,
        failures_before: 0,
        group_consumer: None,
        delivered,
        ends,
        restores_tx,
        restores_rx,
        pending_seeks: Vec::new(),
        next_commit: Instant::now() + cfg.commit_interval(),
        health: Arc::clone(&health),
        stores,
        control: control::Control::new(&cfg)?,
    }));
    let context = EngineContext::new(Arc::clone(&engine), Arc::clone(&health));
    let consumer: Arc<BaseConsumer<EngineContext>> = Arc::new(
        clients::group_consumer(&cfg.bootstrap_servers, &cfg.kafka, &cfg.application_id)
            .create_with_context(context)?,
    );
    let inputs: Vec<&str> = flows.iter().map(|f| f.input.as_str()).collect();
    consumer.subscribe(&inputs)?;
    lock(&engine).group_consumer = Some(Arc::clone(&consumer));
    health.set_started();
    tracing::info!(application_id = %cfg.application_id, instance = %cfg.instance(),
        guarantee = ?cfg.processing_guarantee, flows = flows.len(), "processor started");
    let max_events = cfg.commit_max_events;
    let mut times = LoopTimes::default();
    let result = (|| -> Result<(), EngineError> {
        while !shutdown.load(Ordering::Acquire) {
            let wait = {
                let e = lock(&engine);
                if e.committing() {
                    // The end of a commit is noticed between polls.
                    COMMIT_CHECK
                } else if e.restoring_tasks() > 0 {
                    // So is the end of a restore: its partition is activated at the next turn.
                    RESTORE_CHECK
                } else {
                    e.next_commit.saturating_duration_since(Instant::now())
                }
            };
            let mut polled = 0;
            let t0 = Instant::now();
            let mut next = consumer.poll(wait.min(Duration::from_millis(100)));
            let t1 = Instant::now();
            while let Some(item) = next {
                match item {
                    Ok(msg) => {
                        lock(&engine).process(&msg)?;
                        polled += 1;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "consumer error");
                        break;
                    }
                }
                if polled >= 2000 {
                    break;
                }
                next = consumer.poll(Duration::ZERO);
            }
            let tp = Instant::now();
            let mut e = lock(&engine);
            e.poll_control();
            e.sink.poll();
            e.finish_restores(&consumer);
            if polled > 0 {
                e.health.broker_reachable(true);
            }
            let t2 = Instant::now();
            // A batch as large as a whole commit waits for the running commit: that bounds what
            // is staged to two commits' worth.
            let full = e.staged() >= max_events;
            e.finish_commit(&consumer, full)?;
            let t3 = Instant::now();
            let committing = !e.committing() && (t2 >= e.next_commit || e.staged() >= max_events);
            if committing {
                e.start_commit(&consumer)?;
            } else {
                e.ship(&consumer)?;
            }
            let t4 = Instant::now();
            if t4 - t1 >= SLOW_TURN {
                tracing::debug!(
                    events = polled,
                    process_us = (tp - t1).as_micros() as u64,
                    serve_us = (t2 - tp).as_micros() as u64,
                    finish_commit_us = (t3 - t2).as_micros() as u64,
                    ship_us = (t4 - t3).as_micros() as u64,
                    started_commit = committing,
                    "slow poll-loop turn"
                );
            }
            times.add(t0, t1, t2, committing, polled);
        }
        let mut e = lock(&engine);
        e.commit(&consumer)?;
        Ok(())
    })();
    if let Err(err) = &result {
        tracing::error!(error = %err, "processor stopping on error");
    }
    {
        let mut e = lock(&engine);
        // A commit still running (the loop stopped on an error) ends first: its job holds the
        // consumer, which must close here.
        if let Err(err) = e.finish_commit(&consumer, true) {
            tracing::warn!(error = %err, "the last commit failed; the next start restores");
        }
        for t in e.tasks.values_mut() {
            if let Err(err) = t.settle() {
                tracing::warn!(error = %err, "writing the last batch failed; the next start restores it");
            }
            let _ = t.store().flush();
        }
    }
    // Leaving the group runs the revoke callback, which commits nothing further and closes tasks.
    lock(&engine).group_consumer = None;
    consumer.unsubscribe();
    drop(consumer);
    tracing::info!("processor stopped");
    result
}

/// A poll-loop turn that works this long (its events wait for it) is logged, by phase.
const SLOW_TURN: Duration = Duration::from_millis(25);

/// How long a poll waits for input while a commit runs, before it looks whether the commit
/// ended (the committer thread cannot wake a poll).
const COMMIT_CHECK: Duration = Duration::from_millis(2);

/// How long a poll waits for input while a restore runs, before it looks whether the restore
/// ended (a partition restored waited up to 100 ms for its activation otherwise).
const RESTORE_CHECK: Duration = Duration::from_millis(5);

/// Where the poll loop's time goes, logged at debug level every few seconds: waiting for input,
/// processing it, shipping, committing.
#[derive(Default)]
struct LoopTimes {
    since: Option<Instant>,
    idle: Duration,
    process: Duration,
    ship: Duration,
    commit: Duration,
    events: u64,
    commits: u64,
}

impl LoopTimes {
    fn add(&mut self, t0: Instant, t1: Instant, t2: Instant, committed: bool, events: u64) {
        let now = Instant::now();
        let since = *self.since.get_or_insert(t0);
        self.idle += t1 - t0;
        self.process += t2 - t1;
        if committed {
            self.commit += now - t2;
            self.commits += 1;
        } else {
            self.ship += now - t2;
        }
        self.events += events;
        if now - since >= Duration::from_secs(5) {
            tracing::debug!(
                events = self.events,
                commits = self.commits,
                idle_ms = self.idle.as_millis() as u64,
                process_ms = self.process.as_millis() as u64,
                ship_ms = self.ship.as_millis() as u64,
                commit_ms = self.commit.as_millis() as u64,
                "poll loop"
            );
            *self = Self::default();
        }
    }
}

fn lock(engine: &Mutex<Engine>) -> std::sync::MutexGuard<'_, Engine> {
    engine.lock().unwrap_or_else(|p| p.into_inner())
}

/// Resolves every flow's topics: the input must exist; changelog, output and dead-letter topics
/// are created with its partition count, or checked against it.
fn prepare_topics(cfg: &Config) -> Result<Vec<Arc<FlowInfo>>, EngineError> {
    let topics = Topics::connect(&cfg.bootstrap_servers, &cfg.kafka)?;
    let mut out = Vec::new();
    for (idx, f) in cfg.flows.iter().enumerate() {
        let partitions = topics
            .partitions(&f.input)?
            .ok_or_else(|| crate::kafka::topics::TopicError::MissingInput(f.input.clone()))?;
        let changelog = f.changelog_topic(&cfg.application_id);
        let rf = cfg.replication_factor;
        topics.ensure_copartitioned(&f.input, &changelog, partitions, rf, TopicRole::Compacted)?;
        topics.ensure_copartitioned(&f.input, &f.output, partitions, rf, TopicRole::Compacted)?;
        topics.ensure_copartitioned(&f.input, &f.dead_letter, partitions, rf, TopicRole::Log)?;
        let control = f.control_topic(&cfg.application_id);
        topics.ensure_copartitioned(&f.input, &control, partitions, rf, TopicRole::Log)?;
        out.push(Arc::new(FlowInfo {
            idx,
            name: f.name.clone(),
            kind: f.kind().unwrap_or(FlowKind::Inventory),
            input: f.input.clone(),
            output: f.output.clone(),
            dead_letter: f.dead_letter.clone(),
            changelog,
            partitions,
            dedupe_retention_ms: i64::try_from(cfg.dedupe_retention.as_millis())
                .unwrap_or(i64::MAX),
            control,
        }));
    }
    Ok(out)
}
