//! The independent oracle behind `tally verify`, the demo's last step and the integration tests:
//! it refolds the input topic with its own code and compares every key with the output topic.

mod fold;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::kafka::clients::Quiet;
use crate::workload::Flow;
use fold::{Fold, Verdict};

/// Which flow to check, where.
#[derive(Debug, Clone)]
pub struct OracleSpec {
    pub bootstrap: String,
    pub kafka: BTreeMap<String, String>,
    pub flow: Flow,
    pub input: String,
    pub output: String,
    pub dead_letter: String,
    /// Read input only up to this group's committed offsets (else up to the end).
    pub group: Option<String>,
}

/// The verdict, with every count an operator needs to trust or distrust the output.
#[derive(Debug, Clone, Serialize, Default)]
pub struct OracleReport {
    pub events_checked: u64,
    pub valid_applied: u64,
    pub duplicates: u64,
    pub conflicts: u64,
    pub invalid: u64,
    pub keys_expected: u64,
    pub keys_in_output: u64,
    pub keys_matched: u64,
    /// Keys missing from the output, or with fewer events applied than the input holds.
    pub lost: u64,
    /// Keys with more events applied than the input holds.
    pub double_applied: u64,
    /// Keys whose values differ otherwise.
    pub wrong: u64,
    pub extra_keys: u64,
    pub dead_letters_expected: u64,
    pub dead_letters_found: u64,
    pub dead_letters_by_reason: BTreeMap<String, u64>,
    /// The first differences, human readable.
    pub mismatches: Vec<String>,
    pub pass: bool,
}

fn reader(spec: &OracleSpec, group: &str) -> anyhow::Result<BaseConsumer<Quiet>> {
    Ok(crate::kafka::clients::quiet_reader(
        &spec.bootstrap,
        &spec.kafka,
        group,
    )?)
}

/// Reads every partition of `topic` from the beginning to `ends` (or to the end), in offset order
/// per partition, calling `f(partition, offset, key, value, headers)`.
fn scan(
    consumer: &BaseConsumer<Quiet>,
    topic: &str,
    ends: Option<&HashMap<i32, i64>>,
    mut f: impl FnMut(
        i32,
        i64,
        Option<&[u8]>,
        Option<&[u8]>,
        Option<&rdkafka::message::BorrowedHeaders>,
    ),
) -> anyhow::Result<()> {
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(30))?;
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    anyhow::ensure!(!parts.is_empty(), "topic `{topic}` does not exist");
    let mut tpl = TopicPartitionList::new();
    let mut open = 0;
    for p in &parts {
        let (_, high) = consumer.fetch_watermarks(topic, *p, Duration::from_secs(30))?;
        let end = ends
            .and_then(|e| e.get(p).copied())
            .unwrap_or(high)
            .min(high);
        if end > 0 {
            tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
            open += 1;
        }
    }
    if open == 0 {
        return Ok(());
    }
    consumer.assign(&tpl)?;
    let mut done = 0;
    let mut last_progress = Instant::now();
    while done < open {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                last_progress = Instant::now();
                let end = ends.and_then(|e| e.get(&m.partition()).copied());
                if end.is_none_or(|e| m.offset() < e) {
                    f(m.partition(), m.offset(), m.key(), m.payload(), m.headers());
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => done += 1,
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::ensure!(
                last_progress.elapsed() < Duration::from_secs(60),
                "reading `{topic}` stalled"
            ),
        }
    }
    consumer.unassign()?;
    Ok(())
}

/// Refolds the input, compares every key with the output, counts the dead letters.
pub fn check(spec: &OracleSpec) -> anyhow::Result<OracleReport> {
    let nonce = std::process::id();
    let consumer = reader(spec, &format!("tally-oracle-{nonce}"))?;
    let ends = match &spec.group {
        Some(group) => Some(committed(spec, group)?),
        None => None,
    };
    let mut report = OracleReport::default();
    let mut fold = Fold::default();
    scan(&consumer, &spec.input, ends.as_ref(), |p, o, k, v, _| {
        report.events_checked += 1;
        match fold.record(spec.flow, p, o, k, v) {
            Verdict::Applied => report.valid_applied += 1,
            Verdict::Duplicate => report.duplicates += 1,
            Verdict::Conflict => report.conflicts += 1,
            Verdict::Invalid => report.invalid += 1,
        }
    })?;
    let mut outputs: HashMap<String, Vec<u8>> = HashMap::new();
    scan(&consumer, &spec.output, None, |_, _, k, v, _| {
        if let (Some(k), Some(v)) = (k, v) {
            outputs.insert(String::from_utf8_lossy(k).into_owned(), v.to_vec());
        }
    })?;
    scan(&consumer, &spec.dead_letter, None, |_, _, _, _, h| {
        report.dead_letters_found += 1;
        let reason = h
            .and_then(|h| h.iter().find(|x| x.key == "tally.error.reason"))
            .and_then(|x| x.value)
            .map_or("(none)".to_string(), |v| {
                String::from_utf8_lossy(v).into_owned()
            });
        *report.dead_letters_by_reason.entry(reason).or_default() += 1;
    })?;
    report.keys_expected = fold.keys.len() as u64;
    report.keys_in_output = outputs.len() as u64;
    let note = |report: &mut OracleReport, m: String| {
        if report.mismatches.len() < 20 {
            report.mismatches.push(m);
        }
    };
    let mut keys: Vec<_> = fold.keys.iter().collect();
    keys.sort_by(|a, b| a.0.cmp(b.0));
    for (key, expected) in keys {
        let Some(bytes) = outputs.get(key) else {
            report.lost += 1;
            note(&mut report, format!("{key}: missing from the output"));
            continue;
        };
        let out: serde_json::Value = match serde_json::from_slice(bytes) {
            Ok(v) => v,
            Err(e) => {
                report.wrong += 1;
                note(&mut report, format!("{key}: output is not JSON: {e}"));
                continue;
            }
        };
        let applied = out
            .get("events_applied")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        if applied < expected.events_applied {
            report.lost += 1;
            note(
                &mut report,
                format!(
                    "{key}: events_applied {applied} < {} expected",
                    expected.events_applied
                ),
            );
        } else if applied > expected.events_applied {
            report.double_applied += 1;
            note(
                &mut report,
                format!(
                    "{key}: events_applied {applied} > {} expected",
                    expected.events_applied
                ),
            );
        } else if let Err(m) = fold::compare(spec.flow, expected, &out) {
            report.wrong += 1;
            note(&mut report, format!("{key}: {m}"));
        } else {
            report.keys_matched += 1;
        }
    }
    report.extra_keys = outputs
        .keys()
        .filter(|k| !fold.keys.contains_key(*k))
        .count() as u64;
    report.dead_letters_expected = report.invalid + report.conflicts;
    report.pass = report.lost == 0
        && report.double_applied == 0
        && report.wrong == 0
        && report.extra_keys == 0
        && report.dead_letters_found == report.dead_letters_expected;
    Ok(report)
}

/// The group's committed offset per input partition (0 when none).
fn committed(spec: &OracleSpec, group: &str) -> anyhow::Result<HashMap<i32, i64>> {
    let consumer = reader(spec, group)?;
    let md = consumer.fetch_metadata(Some(&spec.input), Duration::from_secs(30))?;
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition(&spec.input, p.id());
        }
    }
    let got = consumer.committed_offsets(tpl, Duration::from_secs(30))?;
    Ok(got
        .elements()
        .iter()
        .map(|e| {
            (
                e.partition(),
                e.offset().to_raw().filter(|o| *o >= 0).unwrap_or(0),
            )
        })
        .collect())
}
