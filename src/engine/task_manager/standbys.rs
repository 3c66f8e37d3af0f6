//! Which standbys this instance keeps: read from the group's latest stable view each check, the
//! same way on every instance, never for a partition it has a task for. And the previous owners
//! of partitions taken over, whose open transactions are aborted if they left the group.

use std::collections::HashSet;
use std::sync::Arc;

use super::{TaskId, TaskManager};
use crate::config::ProcessingGuarantee;
use crate::engine::departed::Departed;
use crate::engine::producer::transactional_id_of;
use crate::engine::{LocalStore, StoreRole};

impl TaskManager {
    /// Starts the standbys the placement gives this instance and stops those it no longer gives.
    /// A view mid-rebalance (or none) changes nothing: placements are only as good as the view.
    pub(in crate::engine) fn place_standbys(&mut self) {
        let replicas = self.directory.replicas();
        if replicas == 0 {
            return;
        }
        let Some(view) = self.directory.view() else {
            return;
        };
        if !view.stable() {
            return;
        }
        let me = self.directory.me().instance.clone();
        let mut wanted: HashSet<TaskId> = HashSet::new();
        for flow in &self.flows {
            for p in 0..flow.partitions {
                let id = (flow.idx, p);
                if self.tasks.contains_key(&id) || self.blocked.contains_key(&id) {
                    continue;
                }
                if view
                    .standbys(&flow.input, p, replicas)
                    .iter()
                    .any(|m| m.instance == me)
                {
                    wanted.insert(id);
                }
            }
        }
        let stale: Vec<TaskId> = self
            .standbys
            .held()
            .filter(|id| !wanted.contains(id))
            .collect();
        for id in stale {
            self.standbys.drop_later(id);
            self.stores.remove(&(self.flows[id.0].name.clone(), id.1));
        }
        for id in wanted {
            if self.standbys.holds(id) {
                continue;
            }
            let store = match self.open_store(id.0, id.1) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(flow = %self.flows[id.0].name, partition = id.1, error = %e,
                        "cannot open a standby's store; no standby for now");
                    continue;
                }
            };
            let flow = Arc::clone(&self.flows[id.0]);
            let lag = self.standbys.add(&flow, id.1, store.clone());
            self.stores.insert(
                (flow.name.clone(), id.1),
                LocalStore {
                    store,
                    role: StoreRole::Standby { lag },
                },
            );
        }
    }

    /// Under exactly_once, fences (on threads of their own, while the restores run) the other
    /// instances stable views showed owning `taken` before, if they are no longer in the group.
    pub(in crate::engine) fn fence_departed(&self, taken: &[TaskId]) {
        if self.cfg.processing_guarantee != ProcessingGuarantee::ExactlyOnce {
            return;
        }
        let me = &self.directory.me().instance;
        let owners: HashSet<String> = taken
            .iter()
            .filter_map(|&(f, p)| self.directory.previous_owner(&self.flows[f].input, p))
            .filter(|owner| owner != me)
            .collect();
        for instance in owners {
            Departed {
                transactional_id: transactional_id_of(&self.cfg.application_id, &instance),
                instance,
            }
            .fence_if_gone(
                Arc::clone(&self.directory),
                self.cfg.bootstrap_servers.clone(),
                (*self.cfg.kafka).clone(),
            );
        }
    }
}
