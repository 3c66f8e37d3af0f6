//! The processor: one consumer group, one task per assigned input partition, one producer.
//! `run` wires them up and hands over to the poll loop; rebalance callbacks reach the same
//! engine to commit or drop work and to add or remove tasks.

mod commit;
mod departed;
mod faults;
mod flows;
mod poll_loop;
mod producer;
mod projector;
mod rebalance;
mod restore;
mod sink;
mod standby;
mod task;
mod task_manager;
mod watch;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use tally_state::Store;

pub use commit::CommitOutcome;
pub use flows::FlowInfo;
pub use projector::{Projector, Projectors};
pub use rebalance::EngineContext;
pub use sink::DeliveredOffsets;
pub(crate) use task::{Task, TaskOps};

use crate::config::Config;
use crate::group::Directory;
use crate::health::Health;
use crate::kafka::clients;

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
pub type StoreRegistry = dashmap::DashMap<(String, i32), LocalStore>;

/// A local store as the queries see it: the store and what it is here.
#[derive(Clone)]
pub struct LocalStore {
    pub store: Store,
    pub role: StoreRole,
}

/// Whether a local store is an assigned partition's (answers only once active) or a standby's
/// (answers only when the query accepts stale state).
#[derive(Clone)]
pub enum StoreRole {
    Task {
        active: Arc<AtomicBool>,
    },
    /// `lag`: records behind the changelog's end, -1 until first read.
    Standby {
        lag: Arc<std::sync::atomic::AtomicI64>,
    },
}

/// State shared by the poll loop and the rebalance callbacks.
pub struct Engine {
    cfg: Arc<Config>,
    tasks: task_manager::TaskManager,
    commits: commit::Commits,
    health: Arc<Health>,
    /// Lag and fetch positions of the assigned partitions, shared with the lag thread.
    readings: Arc<watch::Readings>,
    stalls: watch::Stalls,
    /// When blocked stores and stalls are looked at next.
    next_check: Instant,
}

/// Prepares topics, then runs the processor until `shutdown` is set; each flow runs the
/// projection its config names among `projections`.
pub(crate) fn run(
    cfg: Config,
    projections: &dyn Projectors,
    shutdown: Arc<AtomicBool>,
    health: Arc<Health>,
    stores: Arc<StoreRegistry>,
    directory: Arc<Directory>,
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
    let (flows, producer) = std::thread::scope(|s| {
        let producer = s.spawn(|| producer::TxnProducer::start(&cfg, &delivered));
        let flows = flows::prepare_topics(&cfg, projections);
        let producer = producer
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        (flows, producer)
    });
    let flows = flows?;
    // A helper thread that cannot start (a process limit) stops the start as an IO error.
    let thread_failed = |source| tally_state::StateError::Fs {
        path: cfg.state_dir.clone(),
        source,
    };
    directory.set_flows(flows.iter().map(|f| {
        let located = crate::group::Located {
            input: f.input.clone(),
            partitions: f.partitions,
            partitioner: f.partitioner,
        };
        (f.name.clone(), located)
    }));
    directory
        .start(
            cfg.bootstrap_servers.clone(),
            (*cfg.kafka).clone(),
            cfg.application_id.clone(),
        )
        .map_err(thread_failed)?;
    let producer = producer.map_err(|e| match crate::kafka::errors::fatal(&e) {
        Some(why) => EngineError::Fatal(format!("creating the producer: {why}: {e}")),
        None => e.into(),
    })?;
    let readings = Arc::new(watch::Readings::default());
    let commits = commit::Commits::new(&cfg, &flows, producer, delivered)?;
    let tasks = task_manager::TaskManager::new(
        &cfg,
        flows.clone(),
        stores,
        Arc::clone(&health),
        Arc::clone(&readings),
        Arc::clone(&directory),
    )?;
    let engine = Arc::new(Mutex::new(Engine {
        cfg: Arc::clone(&cfg),
        tasks,
        commits,
        health: Arc::clone(&health),
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
    .map_err(thread_failed)?;
    let context = EngineContext::new(
        Arc::clone(&engine),
        Arc::clone(&health),
        Arc::clone(&readings),
    );
    let mut member =
        clients::group_consumer(&cfg.bootstrap_servers, &cfg.kafka, &cfg.application_id);
    // The group carries who each member is and where its HTTP answers (see `group`).
    member.set("client.id", directory.me().client_id());
    if cfg.static_membership {
        member.set("group.instance.id", cfg.instance());
    }
    let consumer: Arc<BaseConsumer<EngineContext>> = Arc::new(clients::create(&member, context)?);
    let inputs: Vec<&str> = flows.iter().map(|f| f.input.as_str()).collect();
    consumer.subscribe(&inputs)?;
    lock(&engine)
        .commits
        .set_consumer(Some(Arc::clone(&consumer)));
    health.set_started();
    tracing::info!(application_id = %cfg.application_id, instance = %cfg.instance(),
        guarantee = ?cfg.processing_guarantee, flows = flows.len(), "processor started");
    let result = poll_loop::run(&engine, &consumer, &shutdown);
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
        e.tasks.settle_all();
        // Leaving the group runs the revoke callback, which commits nothing further and closes
        // tasks.
        e.commits.set_consumer(None);
    }
    readings.stop();
    directory.stop();
    consumer.unsubscribe();
    drop(consumer);
    tracing::info!("processor stopped");
    result
}

impl Engine {
    /// Looks at every assigned partition for work that waits without progress, and refreshes
    /// the partition gauges (a gauge nobody sets any more leaves `/metrics` after a while).
    fn check_stalls(&mut self) {
        let views = self.tasks.views();
        let stalled = self
            .stalls
            .check(&self.readings, &views, self.health.stall_timeout());
        self.health.set_stalled(stalled);
        self.tasks.update_gauges();
        self.tasks.place_standbys();
    }
}

fn lock(engine: &Mutex<Engine>) -> std::sync::MutexGuard<'_, Engine> {
    engine.lock().unwrap_or_else(|p| p.into_inner())
}
