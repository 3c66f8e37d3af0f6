//! Liveness and readiness as the processor sees itself, read by `/healthz` and `/readyz`.
//! Updated by the poll loop and the Kafka callbacks through atomics, never locks.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// What `/healthz` and `/readyz` report.
#[derive(Debug)]
pub struct Health {
    started: AtomicBool,
    broker_up: AtomicBool,
    assigned: AtomicUsize,
    restoring: AtomicUsize,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            started: AtomicBool::new(false),
            broker_up: AtomicBool::new(true),
            assigned: AtomicUsize::new(0),
            restoring: AtomicUsize::new(0),
        }
    }
}

impl Health {
    /// The consumer has subscribed.
    pub fn set_started(&self) {
        self.started.store(true, Ordering::Release);
    }

    /// Whether the brokers answered lately.
    pub fn broker_reachable(&self, up: bool) {
        self.broker_up.store(up, Ordering::Release);
    }

    /// Partition counts after an assignment or restore change.
    pub fn set_partitions(&self, assigned: usize, restoring: usize) {
        self.assigned.store(assigned, Ordering::Release);
        self.restoring.store(restoring, Ordering::Release);
        metrics::gauge!("tally_partitions_assigned").set(assigned as f64);
        metrics::gauge!("tally_partitions_restoring").set(restoring as f64);
    }

    /// Live: started and able to reach Kafka.
    pub fn healthy(&self) -> bool {
        self.started.load(Ordering::Acquire) && self.broker_up.load(Ordering::Acquire)
    }

    /// Ready: healthy and no assigned partition is restoring.
    pub fn ready(&self) -> bool {
        self.healthy() && self.restoring.load(Ordering::Acquire) == 0
    }

    /// (assigned, restoring) partitions.
    pub fn partitions(&self) -> (usize, usize) {
        (
            self.assigned.load(Ordering::Acquire),
            self.restoring.load(Ordering::Acquire),
        )
    }
}
