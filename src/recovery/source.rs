//! `reconcile --against-source`: the contract's SQL fold of its PostgreSQL history, per key,
//! compared with the live state and the output topic, at one snapshot of the database.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use tally_topology::Projection;

use super::evidence::{self, CheckResult, Evidence};
use super::plan::Plan;
use super::replay::{joined, live_outputs, live_states, throwaway_group};
use super::RecoveryError;
use crate::secret::Secret;

/// Mismatches listed in the evidence (all are counted).
const MAX_LISTED: usize = 100;

/// The source database a reconcile trusts, and what it asks it.
#[derive(Debug, Clone)]
pub struct Source {
    /// `postgres://user@host:port/db`, without the password.
    pub url: String,
    pub password: Option<Secret>,
    /// The history table the contract names.
    pub table: String,
    /// The contract's `source_query`: rows of (key, path, value).
    pub query: String,
    /// How long to wait for the pipeline to catch up before mismatches count.
    pub wait: Duration,
}

/// What the evidence says about the source it was checked against.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SourceEvidence {
    pub database: String,
    pub table: String,
    /// xxh3 of the query text: which fold was trusted.
    pub query_digest: String,
    /// `pg_current_wal_lsn()` in the snapshot the query read.
    pub snapshot_lsn: String,
    pub keys_compared: u64,
    pub values_compared: u64,
    /// Comparisons made before the live side matched or the wait ran out.
    pub attempts: u32,
    pub mismatches_total: u64,
    /// The first mismatching values.
    pub mismatches: Vec<Mismatch>,
}

/// One value the source and the live side disagree on (`null`: absent there).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Mismatch {
    pub key: String,
    /// A JSON pointer into the output record; empty when the key itself is the difference.
    pub path: String,
    pub source: Option<i64>,
    pub state: Option<i64>,
    pub output: Option<i64>,
}

/// Per key, per path, what the source says the projection must hold.
type Expected = BTreeMap<String, BTreeMap<String, i64>>;

/// Runs the source query in a read-only repeatable-read snapshot; returns the rows and the LSN.
fn query(source: &Source) -> Result<(Expected, String), RecoveryError> {
    let mut client =
        crate::source_db::connect(&source.url, source.password.as_ref().map(Secret::expose))
            .map_err(|e| RecoveryError::Source(e.to_string()))?;
    let mut tx = client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(db)?;
    let lsn: String = tx
        .query_one("select pg_current_wal_lsn()::text", &[])
        .and_then(|r| r.try_get(0))
        .map_err(db)?;
    let mut expected = Expected::new();
    for row in tx.query(source.query.as_str(), &[]).map_err(db)? {
        let key: String = row.try_get("key").map_err(db)?;
        let path: String = row.try_get("path").map_err(db)?;
        let value: i64 = row.try_get("value").map_err(db)?;
        if expected
            .entry(key.clone())
            .or_default()
            .insert(path.clone(), value)
            .is_some()
        {
            return Err(RecoveryError::Source(format!(
                "the source query returned key `{key}` path `{path}` twice"
            )));
        }
    }
    tx.commit().map_err(db)?;
    Ok((expected, lsn))
}

fn db(e: postgres::Error) -> RecoveryError {
    RecoveryError::Source(crate::source_db::sql_error("querying the source".into(), &e).to_string())
}

/// Every (key, path) where `live` (rendered records, by key) differs from `expected`: a path the
/// live record lacks reads as 0, a key the source does not name is a difference.
fn differences(
    expected: &Expected,
    live: &BTreeMap<String, Value>,
) -> BTreeMap<(String, String), Option<i64>> {
    let mut out = BTreeMap::new();
    for (key, paths) in expected {
        let record = live.get(key);
        for (path, want) in paths {
            let got = record.map(|r| r.pointer(path).and_then(Value::as_i64).unwrap_or(0));
            if got.unwrap_or(0) != *want || (record.is_none() && *want != 0) {
                out.insert((key.clone(), path.clone()), got);
            }
        }
    }
    for key in live.keys().filter(|k| !expected.contains_key(*k)) {
        out.insert((key.clone(), String::new()), None);
    }
    out
}

/// The live side as JSON records by key: the states rendered, the output topic's records, and
/// what could not be read.
struct LiveRecords {
    states: BTreeMap<String, Value>,
    outputs: BTreeMap<String, Value>,
    unreadable: Vec<String>,
}

/// Reads the live side of every partition.
fn live<P: Projection>(plan: &Plan, parts: &[i32]) -> Result<LiveRecords, RecoveryError> {
    let group = throwaway_group(plan);
    let (states, outputs) = std::thread::scope(|s| {
        let states = s.spawn(|| live_states(plan, parts, &group));
        let outputs = live_outputs(plan, parts, &group);
        Ok::<_, RecoveryError>((joined(states)?, outputs?))
    })?;
    let mut unreadable = Vec::new();
    let mut rendered = BTreeMap::new();
    for (key, bytes) in states {
        let mut out = Vec::new();
        match P::decode_state(&bytes).map(|s| P::render(&s, &mut out)) {
            Ok(Ok(())) => match serde_json::from_slice(&out) {
                Ok(v) => {
                    rendered.insert(key, v);
                }
                Err(e) => unreadable.push(format!("{key}: rendered state is not JSON: {e}")),
            },
            Ok(Err(e)) => unreadable.push(format!("{key}: {e}")),
            Err(e) => unreadable.push(format!("{key}: {e}")),
        }
    }
    let mut parsed = BTreeMap::new();
    for (key, bytes) in outputs {
        match serde_json::from_slice(&bytes) {
            Ok(v) => {
                parsed.insert(key, v);
            }
            Err(e) => unreadable.push(format!("{key}: output record is not JSON: {e}")),
        }
    }
    Ok(LiveRecords {
        states: rendered,
        outputs: parsed,
        unreadable,
    })
}

/// Compares the source's fold with the live state and the output topic until they agree or
/// `source.wait` runs out, and returns the evidence of the last comparison.
pub fn reconcile<P: Projection>(plan: &Plan, source: &Source) -> Result<Evidence, RecoveryError> {
    let started_ms = evidence::now_ms();
    let mut ev = Evidence::of_plan(plan, "reconcile", started_ms);
    ev.mode = "against_source".into();
    ev.source_topic = source.table.clone();
    let topics = crate::kafka::topics::Topics::connect(&plan.bootstrap, &plan.kafka)?;
    let count = topics.partitions(&plan.output)?.ok_or_else(|| {
        RecoveryError::Scope(format!("output topic `{}` does not exist", plan.output))
    })?;
    let parts: Vec<i32> = (0..count).collect();
    let began = Instant::now();
    let mut attempts = 0;
    let (expected, lsn, state_diff, output_diff, unreadable) = loop {
        attempts += 1;
        let (expected, lsn) = query(source)?;
        let live = live::<P>(plan, &parts)?;
        let state_diff = differences(&expected, &live.states);
        let output_diff = differences(&expected, &live.outputs);
        let unreadable = live.unreadable;
        let agreed = state_diff.is_empty() && output_diff.is_empty() && unreadable.is_empty();
        if agreed || began.elapsed() >= source.wait {
            break (expected, lsn, state_diff, output_diff, unreadable);
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let values: u64 = expected.values().map(|p| p.len() as u64).sum();
    let keys: BTreeSet<&(String, String)> = state_diff.keys().chain(output_diff.keys()).collect();
    let expected_at = |key: &str, path: &str| expected.get(key).and_then(|p| p.get(path)).copied();
    let mismatches: Vec<Mismatch> = keys
        .iter()
        .map(|(key, path)| {
            let want = expected_at(key, path);
            let side = |diff: &BTreeMap<(String, String), Option<i64>>| match diff
                .get(&(key.clone(), path.clone()))
            {
                Some(got) => *got,
                None => want,
            };
            Mismatch {
                key: key.clone(),
                path: path.clone(),
                source: want,
                state: side(&state_diff),
                output: side(&output_diff),
            }
        })
        .collect();
    ev.keys_in_scope = expected.len() as u64;
    ev.checks = vec![
        check("state_matches_source", &state_diff),
        check("output_matches_source", &output_diff),
    ];
    ev.reasons.extend(
        unreadable
            .into_iter()
            .take(20)
            .map(|u| format!("unreadable: {u}")),
    );
    ev.source = Some(SourceEvidence {
        database: source.url.clone(),
        table: source.table.clone(),
        query_digest: format!(
            "{:016x}",
            xxhash_rust::xxh3::xxh3_64(source.query.as_bytes())
        ),
        snapshot_lsn: lsn,
        keys_compared: expected.len() as u64,
        values_compared: values,
        attempts,
        mismatches_total: mismatches.len() as u64,
        mismatches: mismatches.into_iter().take(MAX_LISTED).collect(),
    });
    ev.conclude();
    ev.finished_at = evidence::now_rfc3339();
    Ok(ev)
}

fn check(name: &str, diff: &BTreeMap<(String, String), Option<i64>>) -> CheckResult {
    CheckResult {
        name: name.into(),
        passed: diff.is_empty(),
        failures: diff.keys().map(|(k, _)| k).collect::<BTreeSet<_>>().len() as u64,
        examples: diff
            .keys()
            .take(20)
            .map(|(k, p)| {
                if p.is_empty() {
                    format!("{k}: not in the source")
                } else {
                    format!("{k}{p}")
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn expected(rows: &[(&str, &str, i64)]) -> Expected {
        let mut e = Expected::new();
        for (k, p, v) in rows {
            e.entry(k.to_string())
                .or_default()
                .insert(p.to_string(), *v);
        }
        e
    }

    fn live(records: &[(&str, Value)]) -> BTreeMap<String, Value> {
        records
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn a_live_record_that_holds_what_the_source_folds_agrees() {
        let e = expected(&[
            ("sku-1", "/locations/fc-1/sellable", 5),
            ("sku-1", "/locations/fc-1/damaged", 0),
        ]);
        let l = live(&[("sku-1", json!({"locations": {"fc-1": {"sellable": 5}}}))]);
        assert!(differences(&e, &l).is_empty());
    }

    #[test]
    fn a_different_value_a_missing_key_and_an_unknown_key_are_each_named() {
        let e = expected(&[("a", "/n", 5), ("b", "/n", 2)]);
        let l = live(&[("a", json!({"n": 4})), ("c", json!({"n": 1}))]);
        let d = differences(&e, &l);
        assert_eq!(
            d.into_iter().collect::<Vec<_>>(),
            vec![
                (("a".into(), "/n".into()), Some(4)),
                (("b".into(), "/n".into()), None),
                (("c".into(), String::new()), None),
            ]
        );
    }

    #[test]
    fn a_key_the_source_folds_to_zero_may_be_absent() {
        let e = expected(&[("a", "/n", 0)]);
        assert!(differences(&e, &BTreeMap::new()).is_empty());
    }
}
