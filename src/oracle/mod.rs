//! The independent oracle behind `tally verify`, the demo's last step and the integration tests:
//! it refolds the input topic with its own code and compares every key with the output topic.

mod changelog;
mod compare;
mod fold;
mod scan;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::workload::Flow;
use compare::Outcome;
use fold::{Fold, Verdict};

/// Which flow to check and where its topics are, so one call can judge a deployment.
#[derive(Debug, Clone)]
pub struct OracleSpec {
    pub bootstrap: String,
    /// librdkafka settings passed through to the readers (security and the like).
    pub kafka: BTreeMap<String, String>,
    pub flow: Flow,
    pub input: String,
    pub output: String,
    pub dead_letter: String,
    /// Read input only up to this group's committed offsets (else up to the high watermarks at
    /// start); use it when the processor may still be behind.
    pub group: Option<String>,
    /// The flow's changelog topic: when given, its live state keys and dedupe entries must equal
    /// the oracle's keys and first-seen event ids still inside the dedupe retention.
    pub changelog: Option<String>,
    /// The processor's `dedupe_retention` in milliseconds of event time.
    pub dedupe_retention_ms: i64,
    /// at_least_once: an output or dead letter may be written again (an identical record);
    /// under exactly_once every repeat is a violation.
    pub repeats_allowed: bool,
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
    /// Keys in the output that no valid input event has.
    pub extra_keys: u64,
    pub output_records: u64,
    /// Output records of a key whose `events_applied` did not grow (a zombie's or a replay's
    /// write); under at_least_once an identical repeat is allowed.
    pub sequence_violations: u64,
    pub dead_letters_expected: u64,
    pub dead_letters_found: u64,
    /// Dead letters counted once per source record (partition, offset).
    pub dead_letters_distinct: u64,
    pub dead_letters_expected_by_reason: BTreeMap<String, u64>,
    pub dead_letters_by_reason: BTreeMap<String, u64>,
    /// Partitions of the output, dead-letter or changelog topic held by a transaction still open.
    pub open_transactions: u64,
    /// Changelog disagreements: expected keys or event ids missing, or present but unexpected.
    pub changelog_keys_missing: u64,
    pub changelog_keys_extra: u64,
    pub dedupe_entries_missing: u64,
    pub dedupe_entries_extra: u64,
    /// The first differences (at most 20), human readable: key, field, expected, found.
    pub mismatches: Vec<String>,
    pub pass: bool,
}

const MAX_MISMATCHES: usize = 20;

impl OracleReport {
    fn note(&mut self, m: String) {
        if self.mismatches.len() < MAX_MISMATCHES {
            self.mismatches.push(m);
        }
    }
}

/// Refolds the input, compares every key with the output and counts the dead letters, so a run can
/// be trusted on evidence rather than on the processor's own word.
pub fn check(spec: &OracleSpec) -> anyhow::Result<OracleReport> {
    let group = scan::throwaway_group();
    let reader = || scan::reader(&spec.bootstrap, &spec.kafka, &group);
    // Bounds first, so records written while the oracle reads are left out consistently.
    let input_consumer = reader()?;
    let high = scan::high_watermarks(&input_consumer, &spec.input)?;
    let input_ends = match &spec.group {
        Some(g) => scan::committed(&spec.bootstrap, &spec.kafka, &spec.input, g)?
            .into_iter()
            .map(|(p, o)| (p, o.min(high.get(&p).copied().unwrap_or(0))))
            .collect(),
        None => high,
    };

    let mut report = OracleReport::default();
    let mut fold = Fold::new(spec.flow);
    scan::scan(&input_consumer, &spec.input, &input_ends, |r| {
        report.events_checked += 1;
        match fold.record(r.partition, r.offset, r.key, r.value) {
            Verdict::Applied => report.valid_applied += 1,
            Verdict::Duplicate => report.duplicates += 1,
            Verdict::Conflict => {
                report.conflicts += 1;
                expect_dead_letter(&mut report, "duplicate_conflict");
            }
            Verdict::Invalid(reason) => {
                report.invalid += 1;
                expect_dead_letter(&mut report, reason);
            }
        }
    })?;
    drop(input_consumer);

    let outputs = read_outputs(spec, &reader()?, &mut report)?;
    read_dead_letters(spec, &reader()?, &mut report)?;
    if let Some(topic) = &spec.changelog {
        let held = changelog::check(
            &reader()?,
            topic,
            &fold,
            spec.dedupe_retention_ms,
            &mut report,
        )?;
        report.open_transactions += held;
    }
    judge_keys(spec, &fold, outputs, &mut report);
    report.pass = report.lost == 0
        && report.double_applied == 0
        && report.wrong == 0
        && report.extra_keys == 0
        && report.sequence_violations == 0
        && report.open_transactions == 0
        && report.changelog_keys_missing == 0
        && report.changelog_keys_extra == 0
        && report.dedupe_entries_missing == 0
        && report.dedupe_entries_extra == 0
        && report.dead_letters_by_reason_match(spec.repeats_allowed);
    Ok(report)
}

fn expect_dead_letter(report: &mut OracleReport, reason: &str) {
    report.dead_letters_expected += 1;
    *report
        .dead_letters_expected_by_reason
        .entry(reason.to_string())
        .or_default() += 1;
}

impl OracleReport {
    /// Dead letters agree with the input: exactly (exactly_once) or once per source record.
    fn dead_letters_by_reason_match(&mut self, repeats_allowed: bool) -> bool {
        let count = if repeats_allowed {
            self.dead_letters_distinct
        } else {
            self.dead_letters_found
        };
        if count != self.dead_letters_expected {
            self.note(format!(
                "dead letters: expected {}, found {} ({} distinct)",
                self.dead_letters_expected, self.dead_letters_found, self.dead_letters_distinct
            ));
            return false;
        }
        if !repeats_allowed && self.dead_letters_by_reason != self.dead_letters_expected_by_reason {
            self.note(format!(
                "dead letters by reason: expected {:?}, found {:?}",
                self.dead_letters_expected_by_reason, self.dead_letters_by_reason
            ));
            return false;
        }
        true
    }
}

/// The last output record per key (a tombstone removes the key), checking that every key's
/// `events_applied` only grows from record to record.
fn read_outputs(
    spec: &OracleSpec,
    consumer: &scan::Reader,
    report: &mut OracleReport,
) -> anyhow::Result<HashMap<Vec<u8>, Vec<u8>>> {
    let ends = scan::high_watermarks(consumer, &spec.output)?;
    let mut outputs: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut applied: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut keyless = 0u64;
    let mut violations = Vec::new();
    let held = scan::scan(consumer, &spec.output, &ends, |r| {
        report.output_records += 1;
        match (r.key, r.value) {
            (Some(k), Some(v)) => {
                let n = events_applied(v);
                let last = applied.get(k).copied();
                let repeat = outputs.get(k).is_some_and(|prev| prev.as_slice() == v);
                let grows = match (last, n) {
                    (None, _) => true,
                    (Some(l), Some(n)) => n > l || (spec.repeats_allowed && repeat),
                    (Some(_), None) => false,
                };
                if !grows {
                    violations.push(format!(
                        "{}: output at {}:{} has events_applied {:?} after {:?}",
                        String::from_utf8_lossy(k),
                        r.partition,
                        r.offset,
                        n,
                        last
                    ));
                }
                applied.insert(k.to_vec(), n.unwrap_or(0));
                outputs.insert(k.to_vec(), v.to_vec());
            }
            (Some(k), None) => {
                outputs.remove(k);
                applied.remove(k);
            }
            (None, _) => keyless += 1,
        }
    })?;
    report.open_transactions += held.len() as u64;
    report.sequence_violations = violations.len() as u64;
    for v in violations {
        report.note(v);
    }
    if keyless > 0 {
        report.wrong += keyless;
        report.note(format!("{keyless} output records have no key"));
    }
    Ok(outputs)
}

fn events_applied(value: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Applied {
        events_applied: u64,
    }
    serde_json::from_slice::<Applied>(value)
        .ok()
        .map(|a| a.events_applied)
}

/// Counts dead letters by reason and by source record.
fn read_dead_letters(
    spec: &OracleSpec,
    consumer: &scan::Reader,
    report: &mut OracleReport,
) -> anyhow::Result<()> {
    let ends = scan::high_watermarks(consumer, &spec.dead_letter)?;
    let mut sources = std::collections::HashSet::new();
    let held = scan::scan(consumer, &spec.dead_letter, &ends, |r| {
        report.dead_letters_found += 1;
        let reason = r
            .header("tally.error.reason")
            .unwrap_or_else(|| "(none)".to_string());
        *report.dead_letters_by_reason.entry(reason).or_default() += 1;
        sources.insert((
            r.header("tally.source.partition"),
            r.header("tally.source.offset"),
        ));
    })?;
    report.dead_letters_distinct = sources.len() as u64;
    report.open_transactions += held.len() as u64;
    Ok(())
}

/// Compares every expected key with its last output record.
fn judge_keys(
    spec: &OracleSpec,
    fold: &Fold,
    mut outputs: HashMap<Vec<u8>, Vec<u8>>,
    report: &mut OracleReport,
) {
    report.keys_expected = fold.keys.len() as u64;
    report.keys_in_output = outputs.len() as u64;
    let mut keys: Vec<_> = fold.keys.iter().collect();
    keys.sort_unstable_by(|a, b| a.0.cmp(b.0));
    for (key, expected) in keys {
        let Some(bytes) = outputs.remove(key.as_bytes()) else {
            report.lost += 1;
            report.note(format!("{key}: missing from the output"));
            continue;
        };
        let outcome = match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(out) => compare::compare(spec.flow, key, expected, &out),
            Err(e) => Outcome::Wrong(format!("output is not JSON: {e}")),
        };
        match outcome {
            Outcome::Matched => report.keys_matched += 1,
            Outcome::Lost(m) => {
                report.lost += 1;
                report.note(format!("{key}: {m}"));
            }
            Outcome::DoubleApplied(m) => {
                report.double_applied += 1;
                report.note(format!("{key}: {m}"));
            }
            Outcome::Wrong(m) => {
                report.wrong += 1;
                report.note(format!("{key}: {m}"));
            }
        }
    }
    // What is left in the output has no expectation.
    let mut extra: Vec<String> = outputs
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    extra.sort_unstable();
    report.extra_keys = extra.len() as u64;
    for k in extra {
        report.note(format!("{k}: in the output but not expected"));
    }
}
