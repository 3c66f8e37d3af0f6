//! The evidence record every replay, reconcile and dead-letter replay emits: what was read, what
//! was found and changed, which checks held, and whether the result can be trusted and why not.

use std::collections::BTreeMap;

use serde::Serialize;

/// One reconciliation check's outcome.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CheckResult {
    pub name: String,
    pub passed: bool,
    /// How many keys broke it.
    pub failures: u64,
    /// The first keys that broke it, with why (at most 20).
    pub examples: Vec<String>,
}

/// An offset range read from one partition, `[from, to)`.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct OffsetRange {
    pub from: i64,
    pub to: i64,
}

/// Event times of the applied events read.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TimeRange {
    pub from: String,
    pub to: String,
}

/// Who ran an operation that changes or republishes state, how they were vouched for, and why.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Operator {
    pub actor: String,
    /// The control key whose holder signed for the actor.
    pub key_id: String,
    pub host: String,
    pub reason: String,
}

/// The evidence record, serialized as JSON to the evidence topic and to stdout or a file.
#[derive(Debug, Clone, Serialize)]
pub struct Evidence {
    pub recovery_id: String,
    /// replay, reconcile or dlq_replay.
    pub kind: String,
    pub flow: String,
    pub contract_version: u32,
    pub contract_digest: String,
    pub projection_version: u32,
    pub scope: String,
    /// dry_run or apply.
    pub mode: String,
    pub source_topic: String,
    pub source_offsets: BTreeMap<i32, OffsetRange>,
    pub event_time_range: Option<TimeRange>,
    pub events_processed: u64,
    pub duplicates_skipped: u64,
    pub duplicate_conflicts: u64,
    pub late_events_accepted: u64,
    pub dead_lettered: u64,
    pub keys_in_scope: u64,
    pub projection_rows_changed: u64,
    /// The first keys whose rebuilt state differs from the live one (at most 100).
    pub changed_keys: Vec<String>,
    /// xxh3 of the scoped live state before, and of the rebuilt state (after a repair).
    pub state_digest_before: String,
    pub state_digest_after: String,
    /// Keys whose live state moved past the replay's bound while it ran (not compared).
    pub keys_moved_on: u64,
    pub rows_repaired: u64,
    pub checks: Vec<CheckResult>,
    pub schema_versions_seen: Vec<u32>,
    /// trusted or untrusted.
    pub confidence_status: String,
    pub reasons: Vec<String>,
    pub tool_version: String,
    pub started_at: String,
    pub finished_at: String,
    /// Set for operations that change or republish state (`replay --apply`, `dlq replay`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator: Option<Operator>,
    /// The keys whose repair their owners confirmed (the first 1000; the evidence topic's audit
    /// records name every one).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repaired_keys: Vec<String>,
    /// Set by a reconcile against the source database: which source it trusted and what differs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<super::source::SourceEvidence>,
}

impl Evidence {
    /// An empty record of a run of `kind` over `plan`'s flow, started at `started_ms`.
    pub fn of_plan(plan: &super::plan::Plan, kind: &str, started_ms: i64) -> Self {
        Self {
            recovery_id: recovery_id(kind, started_ms),
            kind: kind.to_string(),
            flow: plan.flow.clone(),
            contract_version: plan.contract_version,
            contract_digest: plan.contract_digest.clone(),
            projection_version: plan.projection_version,
            scope: plan.scope.describe(),
            mode: if plan.apply { "apply" } else { "dry_run" }.to_string(),
            source_topic: plan.input.clone(),
            source_offsets: BTreeMap::new(),
            event_time_range: None,
            events_processed: 0,
            duplicates_skipped: 0,
            duplicate_conflicts: 0,
            late_events_accepted: 0,
            dead_lettered: 0,
            keys_in_scope: 0,
            projection_rows_changed: 0,
            changed_keys: Vec::new(),
            state_digest_before: String::new(),
            state_digest_after: String::new(),
            keys_moved_on: 0,
            rows_repaired: 0,
            checks: Vec::new(),
            schema_versions_seen: Vec::new(),
            confidence_status: String::new(),
            reasons: Vec::new(),
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: now_rfc3339(),
            finished_at: String::new(),
            operator: plan.signer.as_ref().map(|s| s.operator.clone()),
            repaired_keys: Vec::new(),
            source: None,
        }
    }

    /// Whether the result can be relied on.
    pub fn trusted(&self) -> bool {
        self.confidence_status == "trusted"
    }

    /// Sets the verdict from the checks and any reasons already given.
    pub fn conclude(&mut self) {
        for c in &self.checks {
            if !c.passed {
                self.reasons.push(format!(
                    "check {} failed for {} key(s): {}",
                    c.name,
                    c.failures,
                    c.examples.join("; ")
                ));
            }
        }
        self.confidence_status = if self.reasons.is_empty() {
            "trusted"
        } else {
            "untrusted"
        }
        .to_string();
    }
}

/// A recovery id unique enough to name one run: time and process, no randomness needed.
pub fn recovery_id(kind: &str, started_ms: i64) -> String {
    format!("{kind}-{started_ms}-{}", std::process::id())
}

pub use crate::clock::{now_ms, now_rfc3339};

/// Publishes the record to the contract's evidence topic (created on first use, one partition,
/// keyed by flow) and waits for the broker to have it.
pub fn publish(
    bootstrap: &str,
    kafka: &BTreeMap<String, String>,
    topic: &str,
    replication: i32,
    ev: &Evidence,
) -> Result<(), super::RecoveryError> {
    use rdkafka::producer::{BaseProducer, BaseRecord};
    let topics = crate::kafka::topics::Topics::connect(bootstrap, kafka)?;
    if topics.partitions(topic)?.is_none() {
        topics.create(topic, 1, replication, crate::kafka::topics::TopicRole::Log)?;
    }
    let producer: BaseProducer = crate::kafka::clients::create(
        &crate::kafka::clients::producer(bootstrap, kafka, None, 60_000),
        rdkafka::producer::DefaultProducerContext,
    )?;
    let body = serde_json::to_vec(ev).unwrap_or_default();
    producer
        .send(BaseRecord::to(topic).key(ev.flow.as_bytes()).payload(&body))
        .map_err(|(e, _)| super::RecoveryError::Kafka(e))?;
    crate::kafka::clients::flush(&producer, std::time::Duration::from_secs(30))
        .map_err(super::RecoveryError::Kafka)?;
    Ok(())
}
