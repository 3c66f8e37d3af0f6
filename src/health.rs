//! Liveness and readiness as the processor sees itself, read by `/healthz` and `/readyz`.
//! Updated by the poll loop and the Kafka callbacks through atomics, never locks.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// What `/healthz` and `/readyz` report.
#[derive(Debug)]
pub struct Health {
    started: AtomicBool,
    broker_up: AtomicBool,
    assigned: AtomicUsize,
    restoring: AtomicUsize,
    /// Assigned partitions without a task: their store could not be opened yet.
    blocked: AtomicUsize,
    /// Assigned partitions with work waiting and no progress for `stall_timeout`.
    stalled: AtomicUsize,
    /// The poll loop's last turn, in milliseconds since `epoch` (0: not yet).
    heartbeat_ms: AtomicU64,
    epoch: Instant,
    stall_timeout: Duration,
}

impl Default for Health {
    fn default() -> Self {
        Self::new(Duration::from_secs(60))
    }
}

/// The body of `/healthz` and `/readyz`.
#[derive(Debug, Serialize)]
pub struct Report {
    pub ok: bool,
    pub partitions_assigned: usize,
    pub partitions_restoring: usize,
    pub partitions_blocked: usize,
    pub partitions_stalled: usize,
    /// Why not ok, when not.
    pub reasons: Vec<String>,
}

impl Health {
    /// An instance that calls itself unhealthy after `stall_timeout` without progress.
    pub fn new(stall_timeout: Duration) -> Self {
        Self {
            started: AtomicBool::new(false),
            broker_up: AtomicBool::new(true),
            assigned: AtomicUsize::new(0),
            restoring: AtomicUsize::new(0),
            blocked: AtomicUsize::new(0),
            stalled: AtomicUsize::new(0),
            heartbeat_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            stall_timeout,
        }
    }

    /// The consumer has subscribed.
    pub fn set_started(&self) {
        self.started.store(true, Ordering::Release);
        self.beat();
    }

    /// The poll loop turned (it would not, stuck in a call).
    pub fn beat(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.heartbeat_ms.store(ms.max(1), Ordering::Release);
    }

    /// Whether the brokers answered lately.
    pub fn broker_reachable(&self, up: bool) {
        self.broker_up.store(up, Ordering::Release);
    }

    /// Partition counts after an assignment or restore change.
    pub fn set_partitions(&self, assigned: usize, restoring: usize, blocked: usize) {
        self.assigned.store(assigned, Ordering::Release);
        self.restoring.store(restoring, Ordering::Release);
        self.blocked.store(blocked, Ordering::Release);
        metrics::gauge!("tally_partitions_assigned").set(assigned as f64);
        metrics::gauge!("tally_partitions_restoring").set(restoring as f64);
        metrics::gauge!("tally_partitions_blocked").set(blocked as f64);
    }

    /// Partitions with work waiting and no progress for the stall timeout.
    pub fn set_stalled(&self, stalled: usize) {
        self.stalled.store(stalled, Ordering::Release);
        metrics::gauge!("tally_partitions_stalled").set(stalled as f64);
    }

    /// How long work may wait without progress before the instance is unhealthy.
    pub fn stall_timeout(&self) -> Duration {
        self.stall_timeout
    }

    /// Live: started, able to reach Kafka, its poll loop turning, no partition stalled.
    pub fn healthy(&self) -> bool {
        self.live_reasons().is_empty()
    }

    /// Ready: healthy, and every assigned partition is being processed.
    pub fn ready(&self) -> bool {
        self.healthy() && self.ready_reasons().is_empty()
    }

    fn live_reasons(&self) -> Vec<String> {
        let mut why = Vec::new();
        if !self.started.load(Ordering::Acquire) {
            why.push("not started".to_string());
            return why;
        }
        if !self.broker_up.load(Ordering::Acquire) {
            why.push("no broker reachable".to_string());
        }
        let beat = Duration::from_millis(self.heartbeat_ms.load(Ordering::Acquire));
        let silent = self.epoch.elapsed().saturating_sub(beat);
        if silent > self.stall_timeout {
            why.push(format!(
                "the poll loop has not turned for {} s",
                silent.as_secs()
            ));
        }
        let stalled = self.stalled.load(Ordering::Acquire);
        if stalled > 0 {
            why.push(format!(
                "{stalled} partition(s) made no progress for {} s with work waiting",
                self.stall_timeout.as_secs()
            ));
        }
        why
    }

    fn ready_reasons(&self) -> Vec<String> {
        let (restoring, blocked) = (
            self.restoring.load(Ordering::Acquire),
            self.blocked.load(Ordering::Acquire),
        );
        let mut why = Vec::new();
        if restoring > 0 {
            why.push(format!("{restoring} partition(s) restoring"));
        }
        if blocked > 0 {
            why.push(format!(
                "{blocked} partition(s) whose store cannot be opened"
            ));
        }
        why
    }

    /// The answer of `/healthz` (`ready`: of `/readyz`).
    pub fn report(&self, ready: bool) -> Report {
        let mut reasons = self.live_reasons();
        if ready {
            reasons.extend(self.ready_reasons());
        }
        Report {
            ok: reasons.is_empty(),
            partitions_assigned: self.assigned.load(Ordering::Acquire),
            partitions_restoring: self.restoring.load(Ordering::Acquire),
            partitions_blocked: self.blocked.load(Ordering::Acquire),
            partitions_stalled: self.stalled.load(Ordering::Acquire),
            reasons,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_started_instance_is_healthy_and_ready() {
        let h = Health::default();
        assert!(!h.healthy());
        h.set_started();
        assert!(h.healthy() && h.ready());
    }

    #[test]
    fn a_stalled_partition_fails_liveness() {
        let h = Health::default();
        h.set_started();
        h.set_stalled(1);
        assert!(!h.healthy());
        assert!(h.report(false).reasons[0].contains("no progress"));
    }

    #[test]
    fn a_blocked_partition_fails_readiness_only() {
        let h = Health::default();
        h.set_started();
        h.set_partitions(3, 0, 1);
        assert!(h.healthy());
        assert!(!h.ready());
    }

    #[test]
    fn a_silent_poll_loop_fails_liveness() {
        let h = Health::new(Duration::from_millis(1));
        h.set_started();
        std::thread::sleep(Duration::from_millis(20));
        assert!(!h.healthy());
    }
}
