//! Tasks come and go with the assignment: an assigned partition's store is opened (retried with
//! backoff while it cannot be, e.g. another process holds its lock) and its restore started; a
//! revoked one's last batch is written and its task dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_state::{Store, StoreOptions};

use super::{TaskId, TaskManager};
use crate::engine::{EngineError, FlowInfo, LocalStore, StoreRole};

/// First wait before opening a store that failed to open again; it doubles up to the cap.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_CAP: Duration = Duration::from_secs(30);

/// An assigned partition whose store could not be opened yet.
pub(super) struct Blocked {
    attempts: u32,
    next_try: Instant,
}

impl TaskManager {
    fn store_path(&self, flow: &FlowInfo, partition: i32) -> std::path::PathBuf {
        self.cfg
            .state_dir
            .join(&self.cfg.application_id)
            .join(&flow.name)
            .join(partition.to_string())
    }

    /// Opens the store of a newly assigned partition and starts restoring it; a store that
    /// cannot be opened leaves the partition blocked (paused, not ready) and is tried again.
    pub(in crate::engine) fn add(&mut self, (flow_idx, partition): TaskId) {
        if self.tasks.contains_key(&(flow_idx, partition)) {
            return;
        }
        // A standby here becomes the task's store: its tail stops, written up to a checkpoint
        // the restore starts from.
        if self.standbys.release((flow_idx, partition)) {
            tracing::info!(flow = %self.flows[flow_idx].name, partition,
                "taking over from the standby kept here");
        }
        match self.open_store(flow_idx, partition) {
            Ok(store) => {
                self.blocked.remove(&(flow_idx, partition));
                self.create_task(flow_idx, partition, store);
            }
            Err(e) => {
                let flow = &self.flows[flow_idx].name;
                ::metrics::counter!("tally_store_open_failures_total", "flow" => flow.clone())
                    .increment(1);
                let b = self
                    .blocked
                    .entry((flow_idx, partition))
                    .or_insert(Blocked {
                        attempts: 0,
                        next_try: Instant::now(),
                    });
                b.attempts += 1;
                let wait = RETRY_FIRST
                    .saturating_mul(1 << b.attempts.min(16).saturating_sub(1))
                    .min(RETRY_CAP);
                b.next_try = Instant::now() + wait;
                tracing::error!(%flow, partition, error = %e, attempts = b.attempts,
                    retry_in_ms = wait.as_millis() as u64,
                    "cannot open the store of an assigned partition; it waits, not processed");
            }
        }
        self.publish_assignment();
    }

    /// Tries again the stores whose wait is over.
    pub(in crate::engine) fn retry_blocked(&mut self) {
        let now = Instant::now();
        let due: Vec<_> = self
            .blocked
            .iter()
            .filter(|(_, b)| b.next_try <= now)
            .map(|(k, _)| *k)
            .collect();
        for (f, p) in due {
            self.add((f, p));
        }
    }

    /// The store of a partition: open already (a store stays open for the life of the process:
    /// sled locks its files, and a restore thread of an earlier assignment may hold a handle),
    /// or opened now.
    pub(super) fn open_store(
        &mut self,
        flow_idx: usize,
        partition: i32,
    ) -> Result<Store, EngineError> {
        if let Some(s) = self.open_stores.get(&(flow_idx, partition)) {
            return Ok(s.clone());
        }
        let flow = Arc::clone(&self.flows[flow_idx]);
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
        Ok(store)
    }

    fn create_task(&mut self, flow_idx: usize, partition: i32, store: Store) {
        let flow = Arc::clone(&self.flows[flow_idx]);
        self.stores.insert(
            (flow.name.clone(), partition),
            LocalStore {
                store: store.clone(),
                role: StoreRole::Task {
                    active: Arc::new(AtomicBool::new(false)),
                },
            },
        );
        self.assigned_at
            .insert((flow_idx, partition), Instant::now());
        let cache = self.cache_bytes_per_task();
        let task = flow.projection.task(
            Arc::clone(&flow),
            partition,
            store,
            self.writer.clone(),
            cache,
        );
        self.tasks.insert((flow_idx, partition), task);
        self.start_restore((flow_idx, partition));
    }

    /// A task's share of `statestore_cache_max_bytes`: the budget split over every input
    /// partition of every flow, so an instance that owns them all keeps to it.
    fn cache_bytes_per_task(&self) -> usize {
        let partitions: u64 = self.flows.iter().map(|f| f.partitions.max(0) as u64).sum();
        let share = self.cfg.statestore_cache_max_bytes / partitions.max(1);
        usize::try_from(share).unwrap_or(usize::MAX)
    }

    /// Forgets a partition this instance no longer owns.
    pub(in crate::engine) fn remove(&mut self, (flow_idx, partition): TaskId) {
        self.blocked.remove(&(flow_idx, partition));
        self.assigned_at.remove(&(flow_idx, partition));
        self.control
            .release(&self.flows[flow_idx].control, partition);
        if let Some(r) = self.restores.remove(&(flow_idx, partition)) {
            r.cancel.store(true, Ordering::Release);
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
        self.publish_assignment();
    }
}
