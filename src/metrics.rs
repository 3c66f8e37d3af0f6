//! Prometheus metrics, all prefixed `tally_`: installed once, recorded per commit, not per event.
//! Counters move only when a commit succeeded, so they count what Kafka holds.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use tally_topology::Reason;

/// Installs the global recorder (idempotent) and returns the handle `/metrics` renders.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0, 30.0,
                    ],
                )
                .expect("static bucket list is not empty")
                // A gauge nobody sets any more (a revoked partition's lag) leaves the output;
                // the live ones are set every few seconds.
                .idle_timeout(MetricKindMask::GAUGE, Some(Duration::from_secs(30)));
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // A second install in the same process (tests) keeps the first recorder.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!(
        "tally_events_processed_total",
        "Events applied to state, committed"
    );
    metrics::describe_counter!(
        "tally_duplicates_skipped_total",
        "Redelivered events skipped by the dedupe index"
    );
    metrics::describe_counter!(
        "tally_dead_lettered_total",
        "Records sent to the dead-letter topic, by reason"
    );
    metrics::describe_histogram!(
        "tally_commit_latency_seconds",
        "Time to commit one batch (transaction or flush+commit)"
    );
    metrics::describe_counter!(
        "tally_transactions_aborted_total",
        "Commits that failed and were rolled back"
    );
    metrics::describe_counter!(
        "tally_restore_records_total",
        "Changelog records read while restoring stores"
    );
    metrics::describe_gauge!(
        "tally_consumer_lag",
        "Records after the group's committed offset, per assigned input partition (the broker's view)"
    );
    metrics::describe_histogram!(
        "tally_end_to_end_latency_seconds",
        "Input record timestamp to commit"
    );
    metrics::describe_histogram!(
        "tally_source_to_committed_seconds",
        "Source database commit (Debezium's source.ts_ms) to the projection committed"
    );
    metrics::describe_counter!(
        "tally_records_skipped_total",
        "Input records that carry no event (heartbeats, tombstones, skipped changes), by kind"
    );
    metrics::describe_gauge!(
        "tally_partitions_assigned",
        "Input partitions assigned to this instance"
    );
    metrics::describe_gauge!(
        "tally_partitions_restoring",
        "Assigned partitions still restoring"
    );
    metrics::describe_counter!(
        "tally_repairs_applied_total",
        "Signed repairs from the control topic written by their owner"
    );
    metrics::describe_counter!(
        "tally_repairs_refused_total",
        "Control records refused, by reason (unsigned, bad_signature, moved_on, ...)"
    );
    metrics::describe_counter!(
        "tally_restores_total",
        "Stores restored before their partition went active, by kind (full: from the changelog's start; tail: from a checkpoint)"
    );
    metrics::describe_histogram!(
        "tally_takeover_seconds",
        "Assignment of a partition to its task active (restored), by restore kind"
    );
    metrics::describe_gauge!(
        "tally_standby_lag_records",
        "Changelog records a standby replica is behind, per partition"
    );
    metrics::describe_gauge!(
        "tally_standby_partitions",
        "Standby replicas running on this instance"
    );
    metrics::describe_counter!(
        "tally_standby_records_total",
        "Changelog records written into standby stores"
    );
    metrics::describe_gauge!(
        "tally_group_members",
        "tally instances in the consumer group, as last described"
    );
    metrics::describe_counter!(
        "tally_departed_owners_fenced_total",
        "Transactional ids of previous owners that left the group, fenced to abort their open transaction"
    );
    metrics::describe_counter!(
        "tally_partitions_added_total",
        "Input partitions a rebalance gave this instance"
    );
    metrics::describe_counter!(
        "tally_partitions_revoked_total",
        "Input partitions a rebalance took from this instance"
    );
    metrics::describe_counter!(
        "tally_redeliveries_reapplied_total",
        "Redelivered records whose dedupe entry landed before a crash but whose state did not"
    );
}

/// Counts one committed batch of a task.
pub fn record_commit(
    flow: &str,
    applied: u64,
    duplicates: u64,
    dead: &[(Reason, u64)],
    timestamps: &[i64],
) {
    let name = flow.to_string();
    if applied > 0 {
        metrics::counter!("tally_events_processed_total", "flow" => name.clone())
            .increment(applied);
    }
    if duplicates > 0 {
        metrics::counter!("tally_duplicates_skipped_total", "flow" => name.clone())
            .increment(duplicates);
    }
    for (reason, n) in dead {
        metrics::counter!("tally_dead_lettered_total", "flow" => name.clone(), "reason" => reason.as_str())
            .increment(*n);
    }
    if !timestamps.is_empty() {
        let now = crate::clock::now_ms();
        let h = metrics::histogram!("tally_end_to_end_latency_seconds");
        for ts in timestamps {
            h.record(((now - ts).max(0) as f64) / 1000.0);
        }
    }
}

/// Counts a committed batch's records that carried no event, and times each applied event
/// from its source database's commit to now.
pub fn record_source(flow: &str, skipped: &[(crate::input::Skip, u64)], source_timestamps: &[i64]) {
    for (skip, n) in skipped {
        metrics::counter!("tally_records_skipped_total", "flow" => flow.to_string(), "kind" => skip.as_str())
            .increment(*n);
    }
    if !source_timestamps.is_empty() {
        let now = crate::clock::now_ms();
        let h =
            metrics::histogram!("tally_source_to_committed_seconds", "flow" => flow.to_string());
        for ts in source_timestamps {
            h.record(((now - ts).max(0) as f64) / 1000.0);
        }
    }
}

/// Counts lookups of committed states the task's cache answered, and those that read the store.
pub fn record_state_cache(flow: &str, hits: u64, misses: u64) {
    if hits > 0 {
        metrics::counter!("tally_state_cache_hits_total", "flow" => flow.to_string())
            .increment(hits);
    }
    if misses > 0 {
        metrics::counter!("tally_state_cache_misses_total", "flow" => flow.to_string())
            .increment(misses);
    }
}

/// Counts changelog records read by a restore.
pub fn record_restore(flow: &str, records: u64) {
    metrics::counter!("tally_restore_records_total", "flow" => flow.to_string()).increment(records);
}

/// Counts committed repair decisions: applied, and refused by reason.
pub fn record_repairs(flow: &str, applied: u64, refused: &[crate::signing::Refusal]) {
    if applied > 0 {
        metrics::counter!("tally_repairs_applied_total", "flow" => flow.to_string())
            .increment(applied);
    }
    for r in refused {
        metrics::counter!("tally_repairs_refused_total", "flow" => flow.to_string(), "reason" => r.as_str())
            .increment(1);
    }
}

/// Quantile `q` of histogram `name` for `flow`, read from the Prometheus text `/metrics`
/// renders and interpolated within its bucket as Prometheus' histogram_quantile does.
pub fn histogram_quantile(text: &str, name: &str, flow: &str, q: f64) -> Option<f64> {
    let prefix = format!("{name}_bucket{{");
    let flow_label = format!("flow=\"{flow}\"");
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(&flow_label))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count: f64 = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, count))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let i = buckets.iter().position(|(_, c)| *c >= rank)?;
    let (upper, count) = buckets[i];
    let (lower, below) = if i == 0 { (0.0, 0.0) } else { buckets[i - 1] };
    if upper.is_infinite() {
        return Some(lower);
    }
    Some(lower + (upper - lower) * (rank - below) / (count - below).max(f64::MIN_POSITIVE))
}

#[cfg(test)]
mod tests {
    use super::histogram_quantile;

    const TEXT: &str = "h_bucket{flow=\"f\",le=\"0.1\"} 50\nh_bucket{flow=\"f\",le=\"0.5\"} 90\n\
                        h_bucket{flow=\"f\",le=\"+Inf\"} 100\nh_bucket{flow=\"g\",le=\"0.1\"} 1\n";

    #[test]
    fn a_quantile_is_interpolated_within_its_bucket() {
        assert_eq!(histogram_quantile(TEXT, "h", "f", 0.5), Some(0.1));
        let p70 = histogram_quantile(TEXT, "h", "f", 0.7).unwrap();
        assert!((p70 - 0.3).abs() < 1e-9, "{p70}");
        assert_eq!(histogram_quantile(TEXT, "h", "f", 0.99), Some(0.5));
        assert_eq!(histogram_quantile(TEXT, "h", "x", 0.5), None);
    }
}
