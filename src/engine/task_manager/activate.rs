//! A task's way back to work: its restore starts (at assignment or after a failed commit), and
//! once it finished, the task is seeked to its committed offset and its input resumed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};

use super::{Restored, TaskId, TaskManager};
use crate::config::ProcessingGuarantee;
use crate::engine::restore::RestoreJob;
use crate::engine::StoreRole;

/// A running restore as the engine sees it: to cancel it, and to see it read on.
#[derive(Clone, Default)]
pub(super) struct RestoreHandle {
    pub cancel: Arc<AtomicBool>,
    pub read: Arc<AtomicU64>,
}

impl TaskManager {
    /// Starts a task's restore from what Kafka committed, cancelling one still running.
    pub(in crate::engine) fn start_restore(&mut self, (flow_idx, partition): TaskId) {
        let Some(task) = self.tasks.get_mut(&(flow_idx, partition)) else {
            return;
        };
        let epoch = task.restart();
        let name = (task.flow().name.clone(), partition);
        if let Some(entry) = self.stores.get(&name) {
            if let StoreRole::Task { active } = &entry.role {
                active.store(false, Ordering::Release);
            }
        }
        let handle = RestoreHandle::default();
        if let Some(old) = self.restores.insert((flow_idx, partition), handle.clone()) {
            old.cancel.store(true, Ordering::Release);
        }
        self.pending_seeks
            .retain(|(id, _)| *id != (flow_idx, partition));
        let control = &self.flows[flow_idx].control;
        self.control.release(control, partition);
        RestoreJob {
            flow: Arc::clone(task.flow()),
            partition,
            epoch,
            store: task.store().clone(),
            bootstrap: self.cfg.bootstrap_servers.clone(),
            passthrough: (*self.cfg.kafka).clone(),
            group: self.cfg.application_id.clone(),
            cancel: handle.cancel,
            read: handle.read,
            hold_outputs: self.cfg.processing_guarantee == ProcessingGuarantee::AtLeastOnce,
        }
        .spawn(self.restores_tx.clone());
        self.update_gauges();
    }

    /// Restarts every task from what Kafka committed (after a failed or unknown commit).
    pub(in crate::engine) fn restart_all<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) {
        let keys: Vec<_> = self.tasks.keys().copied().collect();
        let mut tpl = TopicPartitionList::new();
        for (f, p) in keys {
            tpl.add_partition(&self.flows[f].input, p);
            self.start_restore((f, p));
        }
        if let Err(e) = consumer.pause(&tpl) {
            tracing::warn!(error = %e, "cannot pause partitions for restore");
        }
    }

    /// Activates tasks whose restore finished: seek to the committed offset, then resume.
    pub(in crate::engine) fn finish_restores<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) {
        while let Ok(done) = self.restores_rx.try_recv() {
            let key = (done.flow, done.partition);
            let current = self.tasks.get(&key).map(|t| t.epoch());
            if current != Some(done.epoch) {
                continue;
            }
            match done.result {
                Ok(r) => {
                    tracing::debug!(records = r.records, full = r.full, "restore finished");
                    self.pending_seeks.push(((done.flow, done.partition), r));
                }
                Err(e) => {
                    tracing::warn!(flow = %self.flows[done.flow].name, partition = done.partition,
                        error = %e, "restore failed; retrying");
                    std::thread::sleep(Duration::from_millis(500));
                    self.start_restore((done.flow, done.partition));
                }
            }
        }
        let seeks = std::mem::take(&mut self.pending_seeks);
        // One wake that times out says the broker is away: the rest would each wait as long.
        let mut waking = true;
        for ((f, p), restored) in seeks {
            let offset = restored.committed;
            let topic = self.flows[f].input.clone();
            match consumer.seek(&topic, p, Offset::Offset(offset), Duration::from_secs(10)) {
                Ok(()) => {
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition(&topic, p);
                    self.activated((f, p), &restored);
                    if let Some(t) = self.tasks.get_mut(&(f, p)) {
                        t.activate(restored);
                        match self.control.take(&self.flows[f].control, p) {
                            Ok(at) => t.activate_control(at),
                            Err(e) => tracing::error!(error = %e, partition = p,
                                "cannot read the control partition; repairs wait for a restart"),
                        }
                    }
                    if let Err(e) = consumer.resume(&tpl) {
                        tracing::warn!(error = %e, "resume failed");
                    }
                    if offset <= 0 && waking {
                        waking = wake_fetcher(consumer, &topic, p);
                    }
                    tracing::info!(flow = %self.flows[f].name, partition = p, offset, "partition active");
                }
                Err(e) => {
                    tracing::debug!(error = %e, "seek not possible yet; retrying");
                    self.pending_seeks.push(((f, p), restored));
                }
            }
        }
        self.update_gauges();
    }

    /// Marks a task's store as answering queries, and measures a takeover: from the assignment
    /// to the task active.
    fn activated(&mut self, id: TaskId, restored: &Restored) {
        let flow = &self.flows[id.0].name;
        if let Some(entry) = self.stores.get(&(flow.clone(), id.1)) {
            if let StoreRole::Task { active } = &entry.role {
                active.store(true, Ordering::Release);
            }
        }
        let restore = if restored.full { "full" } else { "tail" };
        ::metrics::counter!("tally_restores_total", "flow" => flow.clone(), "kind" => restore)
            .increment(1);
        if let Some(at) = self.assigned_at.remove(&id) {
            let secs = at.elapsed().as_secs_f64();
            ::metrics::histogram!("tally_takeover_seconds", "flow" => flow.clone(), "restore" => restore)
                .record(secs);
            tracing::info!(%flow, partition = id.1, restore, records = restored.records,
                takeover_ms = (secs * 1000.0) as u64, "partition taken over");
        }
    }
}

/// Makes the client fetch a partition resumed at its start now rather than up to a second later.
///
/// librdkafka wakes its fetcher when a partition's fetch starts, and the seek of a restored task
/// starts it again unless it is already running, which it is for a first start (offset 0): the
/// fetcher slept until its next turn (seen 0.7-1 s). A request to the partition's leader wakes
/// it; the answer itself is not needed. `false` when the request failed.
fn wake_fetcher<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> bool {
    match consumer.fetch_watermarks(topic, partition, WAKE_TIMEOUT) {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!(error = %e, partition, "waking the fetcher failed; it fetches on its next turn");
            false
        }
    }
}

/// How long the request that wakes the fetcher may take before the poll loop goes on.
const WAKE_TIMEOUT: Duration = Duration::from_millis(500);
