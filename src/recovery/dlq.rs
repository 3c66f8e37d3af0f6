//! Dead-letter replay: re-submits dead-lettered records (all, or one reason) to their input
//! partition unchanged, event id included, so the dedupe index guards against double application.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::message::{Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord};

use super::evidence::{self, Evidence, OffsetRange};
use super::replay::Plan;
use super::RecoveryError;
use crate::kafka::{clients, scan};
use crate::signing::{self, Authority};

/// Re-submits the dead letters of `plan`'s flow (those with `reason`, if given), each with its
/// original headers and a signed provenance (recovery id, operator) for the audit trail.
pub fn replay(
    plan: &Plan,
    dead_letter: &str,
    reason: Option<&str>,
) -> Result<Evidence, RecoveryError> {
    let signer = plan.signer.as_ref().ok_or_else(|| {
        RecoveryError::Scope("a dead-letter replay needs an operator and a control key".into())
    })?;
    let started_ms = evidence::now_ms();
    let recovery_id = evidence::recovery_id("dlq_replay", started_ms);
    let started_at = evidence::now_rfc3339();
    let topics = crate::kafka::topics::Topics::connect(&plan.bootstrap, &plan.kafka)?;
    let count = topics.partitions(dead_letter)?.ok_or_else(|| {
        RecoveryError::Scope(format!("dead-letter topic `{dead_letter}` does not exist"))
    })?;
    let parts: Vec<i32> = (0..count).collect();
    let group = format!(
        "{}-dlq-{}-{started_ms}",
        plan.application_id,
        std::process::id()
    );
    let consumer = clients::scan_reader(&plan.bootstrap, &plan.kafka, &group)?;
    let ends = scan::high_watermarks(&consumer, dead_letter, &parts)?;
    let ranges: BTreeMap<i32, (i64, i64)> = ends.iter().map(|(p, e)| (*p, (0, *e))).collect();
    let producer: BaseProducer = clients::create(
        &clients::producer(&plan.bootstrap, &plan.kafka, None, 60_000),
        rdkafka::producer::DefaultProducerContext,
    )?;
    let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
    let mut sent = 0u64;
    let mut failed = Vec::new();
    scan::read(&consumer, dead_letter, &ranges, |m| {
        let header = |name: &str| {
            m.headers().and_then(|h| {
                h.iter()
                    .find(|x| x.key == name)
                    .and_then(|x| x.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
        };
        let why = header("tally.error.reason").unwrap_or_default();
        if reason.is_some_and(|r| r != why) {
            return;
        }
        let partition = header("tally.source.partition")
            .and_then(|p| p.parse::<i32>().ok())
            .unwrap_or(m.partition());
        let authority = Authority {
            recovery_id: recovery_id.clone(),
            actor: signer.operator.actor.clone(),
            key_id: signer.key.id.clone(),
            bound: header("tally.source.offset")
                .and_then(|o| o.parse().ok())
                .unwrap_or(-1),
            signed_at_ms: started_ms,
        };
        let record = signing::Record {
            topic: &plan.input,
            partition,
            key: m.key(),
            value: m.payload(),
        };
        let signature = signing::sign(&signer.key, &record, &authority);
        // The input's own headers go back with it; tally's error headers do not.
        let mut headers = OwnedHeaders::new();
        for h in m.headers().into_iter().flat_map(|h| h.iter()) {
            if !h.key.starts_with("tally.") {
                headers = headers.insert(h);
            }
        }
        for h in signing::headers(&authority, &signature).iter() {
            headers = headers.insert(h);
        }
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&plan.input)
            .partition(partition)
            .headers(headers);
        if let Some(k) = m.key() {
            rec = rec.key(k);
        }
        if let Some(v) = m.payload() {
            rec = rec.payload(v);
        }
        match producer.send(rec) {
            Ok(()) => {
                sent += 1;
                *by_reason.entry(why).or_default() += 1;
            }
            Err((e, _)) => failed.push(format!("{}:{}: {e}", m.partition(), m.offset())),
        }
        clients::serve_reports(&producer);
    })?;
    clients::flush(&producer, Duration::from_secs(60)).map_err(RecoveryError::Kafka)?;
    let mut ev = Evidence {
        recovery_id,
        scope: match reason {
            Some(r) => format!("reason={r}"),
            None => "all".to_string(),
        },
        mode: "apply".to_string(),
        source_topic: dead_letter.to_string(),
        source_offsets: ranges
            .iter()
            .map(|(p, (f, t))| (*p, OffsetRange { from: *f, to: *t }))
            .collect(),
        events_processed: sent,
        dead_lettered: sent,
        changed_keys: by_reason
            .iter()
            .map(|(r, n)| format!("{r}: {n} re-submitted"))
            .collect(),
        reasons: failed
            .into_iter()
            .map(|f| format!("not re-submitted: {f}"))
            .collect(),
        started_at,
        operator: Some(signer.operator.clone()),
        ..Evidence::of_plan(plan, "dlq_replay", started_ms)
    };
    ev.conclude();
    ev.finished_at = evidence::now_rfc3339();
    Ok(ev)
}
