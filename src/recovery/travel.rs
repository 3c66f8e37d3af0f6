//! Time travel: the state of one key at a point in its history (an event time, or an input
//! offset), folded from the authoritative history, with the events that made it on request.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use serde::Serialize;
use tally_topology::Projection;

use super::replay::Plan;
use super::scope::Scope;
use super::shadow::{Applied, Shadow};
use super::RecoveryError;
use crate::kafka::record::InputRecord;
use crate::kafka::{clients, scan};

/// Where in history to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// Every event with an event time at or before this instant (as known today: late arrivals
    /// with an earlier event time count).
    AsOf(i64),
    /// Every record of the key's partition up to and including this offset.
    AtOffset(i32, i64),
    /// Everything committed so far.
    Now,
}

/// The answer to `tally state get`.
#[derive(Debug, Serialize)]
pub struct Answer {
    pub flow: String,
    pub key: String,
    pub partition: i32,
    pub point: String,
    /// The materialized record the key had then (as the output topic shows it), or null.
    pub state: Option<serde_json::Value>,
    pub events_applied: u64,
    pub duplicates_skipped: u64,
    pub late_events: u64,
    /// With `--explain`: every applied event, in log order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explain: Option<Vec<Applied>>,
}

/// Folds `key`'s history up to `point`.
pub fn state_at<P: Projection>(
    plan: &Plan,
    key: &str,
    point: Point,
    explain: bool,
) -> Result<Answer, RecoveryError> {
    let topics = crate::kafka::topics::Topics::connect(&plan.bootstrap, &plan.kafka)?;
    let count = topics.partitions(&plan.input)?.ok_or_else(|| {
        RecoveryError::Scope(format!("input topic `{}` does not exist", plan.input))
    })?;
    let partition = plan.partitioner.partition(key.as_bytes(), count);
    let group = format!(
        "{}-travel-{}-{}",
        plan.application_id,
        std::process::id(),
        super::evidence::now_ms()
    );
    let consumer = clients::scan_reader(&plan.bootstrap, &plan.kafka, &group)?;
    let (low, high) = consumer.fetch_watermarks(&plan.input, partition, Duration::from_secs(10))?;
    let end = match point {
        Point::AtOffset(p, _) if p != partition => {
            return Err(RecoveryError::Scope(format!(
                "key `{key}` lives in partition {partition} ({:?}), not in partition {p}",
                plan.partitioner
            )))
        }
        Point::AtOffset(_, o) => (o + 1).min(high),
        Point::AsOf(_) | Point::Now => high,
    };
    let scope = Scope {
        key: Some(key.to_string()),
        ..Scope::default()
    };
    let mut shadow = Shadow::<P>::new(
        scope,
        plan.retention_ms,
        plan.late_tolerance_ms,
        plan.guard(),
    );
    if let Point::AsOf(t) = point {
        shadow.as_of_ms = Some(t);
    }
    if explain {
        shadow.trail = Some(Vec::new());
    }
    let ranges = BTreeMap::from([(partition, (low, end))]);
    scan::read(&consumer, &plan.input, &ranges, |m| {
        shadow.read(&plan.reader, &InputRecord::of(m));
    })?;
    let totals = shadow.totals();
    let state = match shadow.states.get(key) {
        Some(r) => {
            let mut out = Vec::new();
            P::render(&r.state, &mut out).map_err(|e| RecoveryError::Scope(e.to_string()))?;
            serde_json::from_slice(&out).ok()
        }
        None => None,
    };
    Ok(Answer {
        flow: plan.flow.clone(),
        key: key.to_string(),
        partition,
        point: match point {
            Point::AsOf(t) => format!("as of {}", tally_topology::time::render_event_time(t)),
            Point::AtOffset(p, o) => format!("at offset {p}:{o}"),
            Point::Now => "now".to_string(),
        },
        state,
        events_applied: totals.events_processed,
        duplicates_skipped: totals.duplicates_skipped,
        late_events: totals.late_events_accepted,
        explain: shadow.trail.take(),
    })
}
