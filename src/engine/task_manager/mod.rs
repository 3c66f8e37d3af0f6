//! The task manager owns this instance's tasks, one per assigned (flow, input partition): it adds
//! and removes them with the assignment, restores and activates them, and routes records to them.

mod activate;
mod assign;
mod control;
mod standbys;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;

use rdkafka::TopicPartitionList;
use tally_state::Store;

use super::commit::store::StoreWriter;
use super::restore::RestoreDone;
use super::standby::Standbys;
use super::task::{Restored, Status, TaskOps};
use super::watch::{Readings, TaskView};
use super::{EngineError, FastHash, FlowInfo, StoreRegistry};
use crate::config::Config;
use crate::group::Directory;
use crate::health::Health;
use crate::kafka::record::InputRecord;

/// One (flow index, input partition).
pub(super) type TaskId = (usize, i32);

/// This instance's tasks and everything that follows their life: stores, restores, control
/// partitions.
pub(super) struct TaskManager {
    cfg: Arc<Config>,
    flows: Vec<Arc<FlowInfo>>,
    by_input: HashMap<String, usize, FastHash>,
    tasks: HashMap<TaskId, Box<dyn TaskOps>, FastHash>,
    /// Assigned partitions whose store could not be opened yet.
    blocked: HashMap<TaskId, assign::Blocked>,
    restores: HashMap<TaskId, activate::RestoreHandle>,
    /// Every store opened, kept for the life of the process (see `open_store`).
    open_stores: HashMap<TaskId, Store>,
    /// The store half of every commit, handed to each task.
    writer: StoreWriter,
    restores_tx: Sender<RestoreDone>,
    restores_rx: Receiver<RestoreDone>,
    /// Restored tasks waiting for their seek: (task, what the restore found).
    pending_seeks: Vec<(TaskId, Restored)>,
    /// The stores of the tasks, shared with the HTTP queries.
    stores: Arc<StoreRegistry>,
    control: control::Control,
    health: Arc<Health>,
    readings: Arc<Readings>,
    /// Stores of partitions other instances own, kept warm here.
    standbys: Standbys,
    /// The group as seen from here: where standbys go.
    directory: Arc<Directory>,
    /// When each task was created by an assignment, until it is active: its takeover time.
    assigned_at: HashMap<TaskId, Instant>,
}

impl TaskManager {
    /// A manager without tasks for the given flows.
    pub(super) fn new(
        cfg: &Arc<Config>,
        flows: Vec<Arc<FlowInfo>>,
        stores: Arc<StoreRegistry>,
        health: Arc<Health>,
        readings: Arc<Readings>,
        directory: Arc<Directory>,
    ) -> Result<Self, EngineError> {
        let (restores_tx, restores_rx) = channel();
        let fs = |source| tally_state::StateError::Fs {
            path: cfg.state_dir.clone(),
            source,
        };
        let writer = StoreWriter::start().map_err(fs)?;
        let standbys = Standbys::start(
            cfg.bootstrap_servers.clone(),
            (*cfg.kafka).clone(),
            cfg.application_id.clone(),
        )
        .map_err(fs)?;
        Ok(Self {
            cfg: Arc::clone(cfg),
            by_input: flows.iter().map(|f| (f.input.clone(), f.idx)).collect(),
            flows,
            tasks: HashMap::default(),
            blocked: HashMap::new(),
            restores: HashMap::new(),
            open_stores: HashMap::new(),
            writer,
            restores_tx,
            restores_rx,
            pending_seeks: Vec::new(),
            stores,
            control: control::Control::new(cfg)?,
            health,
            readings,
            standbys,
            directory,
            assigned_at: HashMap::new(),
        })
    }

    /// Stages one input record in the task of its partition, if this instance has one.
    pub(super) fn route(
        &mut self,
        topic: &str,
        record: &InputRecord<'_>,
    ) -> Result<(), EngineError> {
        let Some(&flow) = self.by_input.get(topic) else {
            return Ok(());
        };
        if let Some(task) = self.tasks.get_mut(&(flow, record.partition)) {
            task.process(record)?;
        }
        Ok(())
    }

    /// The tasks of the input partitions in `tpl` (others are not the flows' inputs).
    pub(super) fn ids(&self, tpl: &TopicPartitionList) -> Vec<TaskId> {
        tpl.elements()
            .iter()
            .filter_map(|e| self.by_input.get(e.topic()).map(|&f| (f, e.partition())))
            .collect()
    }

    /// Whether this instance has a task (restoring or active) for `id`.
    pub(super) fn has(&self, id: TaskId) -> bool {
        self.tasks.contains_key(&id)
    }

    /// The input topic of flow `flow`.
    pub(super) fn input(&self, flow: usize) -> &str {
        &self.flows[flow].input
    }

    /// Every task.
    pub(super) fn all(&self) -> impl Iterator<Item = &dyn TaskOps> {
        self.tasks.values().map(|t| t.as_ref())
    }

    /// Every task, to stage, ship, seal or commit.
    pub(super) fn all_mut(&mut self) -> impl Iterator<Item = &mut Box<dyn TaskOps>> {
        self.tasks.values_mut()
    }

    /// Tasks restoring (or restored and waiting for their activation).
    pub(super) fn restoring(&self) -> usize {
        self.all()
            .filter(|t| t.status() == Status::Restoring)
            .count()
    }

    /// Events staged in every task since the last commit.
    pub(super) fn staged(&self) -> usize {
        self.all().map(|t| t.staged()).sum()
    }

    /// Waits until every committed batch is in its store, and flushes the stores (at shutdown).
    pub(super) fn settle_all(&mut self) {
        self.standbys.release_all();
        for t in self.tasks.values_mut() {
            if let Err(err) = t.settle() {
                tracing::warn!(error = %err, "writing the last batch failed; the next start restores it");
            }
            let _ = t.store().flush();
        }
    }

    /// Where each assigned partition's task stands, for the stall check.
    pub(super) fn views(&self) -> Vec<((String, i32), TaskView)> {
        let mut views = Vec::with_capacity(self.tasks.len() + self.blocked.len());
        for (&(f, p), t) in &self.tasks {
            let view = match t.status() {
                Status::Restoring => TaskView::Restoring {
                    records: self
                        .restores
                        .get(&(f, p))
                        .map_or(0, |r| r.read.load(Ordering::Relaxed)),
                },
                Status::Active => TaskView::Active {
                    committed: t.committed(),
                    uncommitted: t.uncommitted(),
                },
            };
            views.push(((self.flows[f].input.clone(), p), view));
        }
        for &(f, p) in self.blocked.keys() {
            views.push(((self.flows[f].input.clone(), p), TaskView::Blocked));
        }
        views
    }

    /// Publishes partition counts to the health endpoint.
    pub(super) fn update_gauges(&self) {
        let assigned = self.tasks.len() + self.blocked.len();
        self.health
            .set_partitions(assigned, self.restoring(), self.blocked.len());
    }

    /// Publishes a changed assignment: counts, and the partitions whose lag is read.
    fn publish_assignment(&self) {
        self.update_gauges();
        let parts = self
            .tasks
            .keys()
            .chain(self.blocked.keys())
            .map(|&(f, p)| (self.flows[f].input.clone(), p))
            .collect();
        self.readings.set_assigned(parts);
    }
}
