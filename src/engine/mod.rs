//! The processor: one consumer group, one task per assigned input partition, one producer.
//! `run` owns the poll loop; rebalance callbacks commit or drop work through the same engine.

mod activate;
mod assign;
mod commit;
mod committer;
mod control;
mod faults;
mod producer;
mod rebalance;
mod restore;
mod sink;
mod task;
mod watch;
mod writer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use tally_state::Store;
use tally_topology::Guard;

pub use commit::CommitOutcome;
pub use rebalance::EngineContext;
use restore::RestoreDone;
pub use sink::DeliveredOffsets;
use task::Status;
pub(crate) use task::{Task, TaskOps};
pub(crate) use writer::StoreWriter;

use crate::config::Config;
use crate::health::Health;
use crate::kafka::clients;
use crate::kafka::limits::{self, RecordLimit};
use crate::kafka::topics::{TopicRole, Topics};
use crate::registry::{Registered, Registry};

/// A flow's names, resolved once at start.
#[derive(Debug)]
pub struct FlowInfo {
    pub idx: usize,
    pub name: String,
    /// The registered projection the flow runs.
    pub(crate) projection: Arc<dyn Registered>,
    pub input: String,
    pub output: String,
    pub dead_letter: String,
    pub changelog: String,
    pub partitions: i32,
    /// An applied id older than this behind the partition's watermark is forgotten.
    pub dedupe_retention_ms: i64,
    /// Where replays send repairs; co-partitioned with the input.
    pub control: String,
    /// Where applied and refused repairs leave their audit records (the contract's evidence
    /// topic).
    pub evidence: String,
    /// The largest record the flow may produce to any of its topics.
    pub record_limit: RecordLimit,
    /// The contract's invariants, which apply refuses to break.
    pub guard: Guard,
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
    /// Kafka refused something no retry fixes (an ACL, a record larger than a topic takes).
    #[error("stopping: {0}")]
    Fatal(String),
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
    /// Assigned partitions whose store could not be opened yet.
    blocked: HashMap<(usize, i32), assign::Blocked>,
    restores: HashMap<(usize, i32), activate::RestoreHandle>,
    open_stores: HashMap<(usize, i32), Store>,
    writer: StoreWriter,
    producer: producer::TxnProducer,
    committer: committer::Committer,
    /// The commit the committer thread works on, if any.
    running: Option<commit::Running>,
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
    /// Lag and fetch positions of the assigned partitions, shared with the lag thread.
    readings: Arc<watch::Readings>,
    stalls: watch::Stalls,
    next_check: Instant,
}

impl Engine {
    /// Stages one input record in its task.
    fn process(&mut self, msg: &BorrowedMessage<'_>) -> Result<(), EngineError> {
        let Some(&flow) = self.by_input.get(msg.topic()) else {
            return Ok(());
        };
        if let Some(task) = self.tasks.get_mut(&(flow, msg.partition())) {
            task.process(&crate::kafka::record::InputRecord::of(msg))?;
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

/// Prepares topics, then runs the processor until `shutdown` is set; each flow runs the
/// projection its config names in `registry`.
pub fn run(
    cfg: Config,
    registry: &Registry,
    shutdown: Arc<AtomicBool>,
    health: Arc<Health>,
    stores: Arc<StoreRegistry>,
) -> Result<(), EngineError> {
    let cfg = Arc::new(cfg);
    // Before the producer starts: its start waits a minute for a cluster that never answers.
    crate::kafka::probe::check(
        &cfg.bootstrap_servers,
        &cfg.kafka,
        crate::kafka::probe::START_LIMIT,
    )
    .map_err(crate::kafka::topics::TopicError::from)?;
    let delivered = Arc::new(DeliveredOffsets::default());
    // The producer's start (half a second: librdkafka's first transactional id request waits
    // for a broker connection) overlaps the topics' preparation.
    let (flows, sink) = std::thread::scope(|s| {
        let sink = s.spawn(|| producer::TxnProducer::start(&cfg, &delivered));
        let flows = prepare_topics(&cfg, registry);
        let sink = sink.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        (flows, sink)
    });
    let flows = flows?;
    let sink = sink.map_err(|e| match crate::kafka::errors::fatal(&e) {
        Some(why) => EngineError::Fatal(format!("creating the producer: {why}: {e}")),
        None => e.into(),
    })?;
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
    let readings = Arc::new(watch::Readings::default());
    let engine = Arc::new(Mutex::new(Engine {
        by_input: flows.iter().map(|f| (f.input.clone(), f.idx)).collect(),
        flows: flows.clone(),
        cfg: Arc::clone(&cfg),
        tasks: HashMap::default(),
        blocked: HashMap::new(),
        restores: HashMap::new(),
        open_stores: HashMap::new(),
        writer: StoreWriter::start().map_err(|source| tally_state::StateError::Fs {
            path: cfg.state_dir.clone(),
            source,
        })?,
        producer: sink,
        committer: committer::Committer::start().map_err(|source| tally_state::StateError::Fs {
            path: cfg.state_dir.clone(),
            source,
        })?,
        running: None,
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
        readings: Arc::clone(&readings),
        stalls: watch::Stalls::default(),
        next_check: Instant::now(),
    }));
    watch::start_lag_thread(
        Arc::clone(&readings),
        cfg.bootstrap_servers.clone(),
        (*cfg.kafka).clone(),
        cfg.application_id.clone(),
    )
    .map_err(|source| tally_state::StateError::Fs {
        path: cfg.state_dir.clone(),
        source,
    })?;
    let context = EngineContext::new(
        Arc::clone(&engine),
        Arc::clone(&health),
        Arc::clone(&readings),
    );
    let consumer: Arc<BaseConsumer<EngineContext>> = Arc::new(clients::create(
        &clients::group_consumer(&cfg.bootstrap_servers, &cfg.kafka, &cfg.application_id),
        context,
    )?);
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
                        if let Some(cause) = crate::kafka::errors::fatal(&e) {
                            return Err(EngineError::Fatal(format!("consuming: {cause}: {e}")));
                        }
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
            e.health.beat();
            if tp >= e.next_check {
                e.next_check = tp + watch::CHECK_EVERY;
                e.retry_blocked();
                e.check_stalls();
            }
            e.poll_control();
            e.producer.sink().poll();
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
    readings.stop();
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
fn prepare_topics(cfg: &Config, registry: &Registry) -> Result<Vec<Arc<FlowInfo>>, EngineError> {
    let topics = Topics::connect(&cfg.bootstrap_servers, &cfg.kafka)?;
    let producer_max = limits::producer_max(&cfg.kafka);
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
        // Validated when the config was loaded.
        let projection = registry
            .get(f.projection_name())
            .map_err(EngineError::Fatal)?;
        let contract = f.contract(registry).map_err(EngineError::Fatal)?;
        let evidence = contract.evidence_topic(&cfg.application_id);
        if topics.partitions(&evidence)?.is_none() {
            topics.create(&evidence, 1, rf, TopicRole::Log)?;
        }
        // The flow's records must fit the smallest of its topics' limits.
        let mut topic_max = usize::MAX;
        for t in [&changelog, &f.output, &f.dead_letter, &evidence] {
            if let Some(max) = topics.max_message_bytes(t)? {
                topic_max = topic_max.min(max);
            }
        }
        out.push(Arc::new(FlowInfo {
            idx,
            name: f.name.clone(),
            projection,
            input: f.input.clone(),
            output: f.output.clone(),
            dead_letter: f.dead_letter.clone(),
            changelog,
            partitions,
            dedupe_retention_ms: i64::try_from(cfg.dedupe_retention.as_millis())
                .unwrap_or(i64::MAX),
            control,
            evidence,
            record_limit: RecordLimit::new(producer_max, topic_max),
            guard: Guard::new(
                contract.reconciliation.checks.iter().cloned(),
                contract.reconciliation.allow_overdraft,
            ),
        }));
    }
    Ok(out)
}
