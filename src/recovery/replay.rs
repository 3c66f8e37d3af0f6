//! Replay and reconcile: rebuild the scoped state from the input topic into a shadow, compare it
//! with the live state (changelog) and outputs, run the contract's checks, and, with `apply`,
//! hand the corrections to the owning tasks through the control topic and confirm them.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use tally_topology::Projection;

use super::evidence::{self, CheckResult, Evidence, OffsetRange, TimeRange};
use super::live::{last_values, state_key};
pub use super::plan::{Plan, Repair, Signer};
use super::progress::Progress;
use super::shadow::Shadow;
use super::RecoveryError;
use crate::kafka::clients::{self, Quiet};
use crate::kafka::record::InputRecord;
use crate::kafka::scan;

const MAX_EXAMPLES: usize = 20;
const MAX_CHANGED: usize = 100;
const MAX_REPAIRED_LISTED: usize = 1000;

/// The live view of the scoped keys: changelog state and last output record.
struct Live<S> {
    states: BTreeMap<String, (S, Vec<u8>)>,
    outputs: BTreeMap<String, Vec<u8>>,
    unreadable: Vec<String>,
}

pub(super) fn reader(plan: &Plan, group: &str) -> Result<BaseConsumer<Quiet>, RecoveryError> {
    Ok(clients::scan_reader(&plan.bootstrap, &plan.kafka, group)?)
}

pub(super) fn throwaway_group(plan: &Plan) -> String {
    format!(
        "{}-recovery-{}-{}",
        plan.application_id,
        std::process::id(),
        evidence::now_ms()
    )
}

/// Which input partitions the scope reads.
fn partitions(plan: &Plan, count: i32) -> Result<Vec<i32>, RecoveryError> {
    let by_key = plan
        .scope
        .key
        .as_ref()
        .map(|k| plan.partitioner.partition(k.as_bytes(), count));
    match (by_key, plan.scope.partition) {
        (Some(k), Some((p, _))) if k != p => Err(RecoveryError::Scope(format!(
            "key `{}` lives in partition {k} ({:?}), not in partition {p}",
            plan.scope.key.as_deref().unwrap_or_default(),
            plan.partitioner
        ))),
        (_, Some((p, _))) if p >= count => Err(RecoveryError::Scope(format!(
            "partition {p} does not exist: `{}` has {count}",
            plan.input
        ))),
        (Some(k), _) => Ok(vec![k]),
        (None, Some((p, _))) => Ok(vec![p]),
        (None, None) => Ok((0..count).collect()),
    }
}

/// Runs a replay or reconcile of flow `P` and returns its evidence.
pub fn run<P: Projection>(plan: &Plan) -> Result<Evidence, RecoveryError> {
    let started_ms = evidence::now_ms();
    let started_at = evidence::now_rfc3339();
    let topics = crate::kafka::topics::Topics::connect(&plan.bootstrap, &plan.kafka)?;
    let count = topics.partitions(&plan.input)?.ok_or_else(|| {
        RecoveryError::Scope(format!("input topic `{}` does not exist", plan.input))
    })?;
    let parts = partitions(plan, count)?;
    let mut reasons = Vec::new();

    // The bound: what the live state has applied (the group's committed offsets).
    let group_reader = reader(plan, &plan.application_id)?;
    let bounds = scan::committed(&group_reader, &plan.input, &parts)?;
    drop(group_reader);
    let group = throwaway_group(plan);
    let history = reader(plan, &group)?;
    let mut ranges = BTreeMap::new();
    for &p in &parts {
        let (low, _) = history.fetch_watermarks(&plan.input, p, Duration::from_secs(10))?;
        if low > 0 {
            reasons.push(format!(
                "history of partition {p} starts at offset {low}: earlier events were deleted"
            ));
        }
        ranges.insert(p, (low, bounds.get(&p).copied().unwrap_or(0)));
    }
    let total: i64 = ranges.values().map(|(f, t)| (t - f).max(0)).sum();
    let mut progress = Progress::new("reading history", total as u64);
    let mut shadow = Shadow::<P>::new(
        plan.scope.clone(),
        plan.retention_ms,
        plan.late_tolerance_ms,
        plan.guard(),
    );
    // The live view (changelog states, outputs) is read beside the history: the three reads
    // wait on the broker far more than they compute.
    let (states, outputs) = std::thread::scope(|s| {
        let states = s.spawn(|| live_states(plan, &parts, &group));
        let outputs = s.spawn(|| live_outputs(plan, &parts, &group));
        scan::read(&history, &plan.input, &ranges, |m| {
            shadow.read(&plan.reader, &InputRecord::of(m));
            progress.step();
        })?;
        progress.finish();
        Ok::<_, RecoveryError>((joined(states)?, joined(outputs)?))
    })?;
    drop(history);
    let live = Live::decode::<P>(states, outputs);
    let mut ev = Evidence {
        source_offsets: ranges
            .iter()
            .map(|(p, (from, to))| {
                (
                    *p,
                    OffsetRange {
                        from: *from,
                        to: *to,
                    },
                )
            })
            .collect(),
        event_time_range: shadow.event_time_range.map(|(a, b)| TimeRange {
            from: tally_topology::time::render_event_time(a),
            to: tally_topology::time::render_event_time(b),
        }),
        schema_versions_seen: shadow.schema_versions.iter().copied().collect(),
        reasons,
        started_at,
        ..Evidence::of_plan(plan, plan.kind, started_ms)
    };
    let totals = shadow.totals();
    ev.events_processed = totals.events_processed;
    ev.duplicates_skipped = totals.duplicates_skipped;
    ev.duplicate_conflicts = totals.duplicate_conflicts;
    ev.late_events_accepted = totals.late_events_accepted;
    ev.dead_lettered = totals.dead_lettered;

    let repairs = compare::<P>(plan, &shadow, &live, &bounds, &mut ev);
    if plan.apply && !repairs.is_empty() {
        let signer = plan.signer.as_ref().ok_or_else(|| {
            RecoveryError::Scope("an apply needs an operator and a control key to sign".into())
        })?;
        super::repair::send(plan, signer, &repairs, &bounds, &ev.recovery_id)?;
        let confirmed_keys = super::repair::confirm::<P>(plan, &repairs, &group)?;
        let confirmed = confirmed_keys.len() as u64;
        ev.repaired_keys = confirmed_keys
            .into_iter()
            .take(MAX_REPAIRED_LISTED)
            .collect();
        ev.rows_repaired = confirmed;
        if confirmed < repairs.len() as u64 {
            ev.reasons.push(format!(
                "repair not confirmed: {} of {} keys written back by their owners within {:?}",
                confirmed,
                repairs.len(),
                plan.confirm_timeout
            ));
        } else {
            // The repaired rows now equal the rebuild: the state check holds after the repair.
            for c in &mut ev.checks {
                if c.name == "state_matches_history" || c.name == "output_matches_state" {
                    c.passed = true;
                    c.examples.push(format!("repaired {confirmed} key(s)"));
                }
            }
        }
    }
    ev.conclude();
    ev.finished_at = evidence::now_rfc3339();
    Ok(ev)
}

/// A scoped thread's result; its panic goes on in the caller.
pub(super) fn joined<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> T {
    h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// The last changelog state record of every scoped key, still encoded.
pub(super) fn live_states(
    plan: &Plan,
    parts: &[i32],
    group: &str,
) -> Result<BTreeMap<String, Vec<u8>>, RecoveryError> {
    last_values(
        &reader(plan, group)?,
        plan,
        parts,
        &plan.changelog,
        state_key,
    )
}

/// The last output record of every scoped key.
pub(super) fn live_outputs(
    plan: &Plan,
    parts: &[i32],
    group: &str,
) -> Result<BTreeMap<String, Vec<u8>>, RecoveryError> {
    last_values(&reader(plan, group)?, plan, parts, &plan.output, |k| {
        Some(k)
    })
}

impl<S> Live<S> {
    /// Decodes the scoped changelog states; an unreadable one is reported, never guessed.
    fn decode<P: Projection<State = S>>(
        raw: BTreeMap<String, Vec<u8>>,
        outputs: BTreeMap<String, Vec<u8>>,
    ) -> Self {
        let mut live = Live {
            states: BTreeMap::new(),
            outputs,
            unreadable: Vec::new(),
        };
        for (key, bytes) in raw {
            match P::decode_state(&bytes) {
                Ok(s) => {
                    live.states.insert(key, (s, bytes));
                }
                Err(e) => live.unreadable.push(format!("{key}: {e}")),
            }
        }
        live
    }
}

struct Check {
    name: &'static str,
    result: CheckResult,
}

impl Check {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            result: CheckResult {
                name: name.to_string(),
                passed: true,
                failures: 0,
                examples: Vec::new(),
            },
        }
    }

    fn fail(&mut self, why: String) {
        self.result.passed = false;
        self.result.failures += 1;
        if self.result.examples.len() < MAX_EXAMPLES {
            self.result.examples.push(why);
        }
    }
}

/// Compares rebuilt and live state key by key, fills the evidence and returns the repairs.
fn compare<P: Projection>(
    plan: &Plan,
    shadow: &Shadow<P>,
    live: &Live<P::State>,
    bounds: &BTreeMap<i32, i64>,
    ev: &mut Evidence,
) -> Vec<Repair> {
    let guard = plan.guard();
    let mut keys: Vec<&String> = shadow
        .states
        .keys()
        .chain(live.states.keys())
        .filter(|k| shadow.in_scope(k))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let wanted = |n: &str| plan.checks.iter().any(|c| c == n);
    let mut state_check = Check::new("state_matches_history");
    let mut output_check = Check::new("output_matches_state");
    let mut time_check = Check::new("last_event_time_not_newer_than_source");
    let mut invariants: BTreeMap<&str, Check> = BTreeMap::new();
    for name in &plan.checks {
        if let Some(n) = P::INVARIANTS.iter().find(|n| **n == name.as_str()) {
            invariants.insert(n, Check::new(n));
        }
    }
    for u in &live.unreadable {
        state_check.fail(format!("unreadable live state {u}"));
    }
    let mut before = xxhash_rust::xxh3::Xxh3::new();
    let mut after = xxhash_rust::xxh3::Xxh3::new();
    let mut repairs = Vec::new();
    let mut encoded = Vec::new();
    let mut rendered = Vec::new();
    for key in keys {
        let rebuilt = shadow.states.get(key.as_str());
        let current = live.states.get(key.as_str());
        // A live state that applied an event past the bound moved on while we read.
        if let Some((s, _)) = current {
            let src = P::source(s);
            if bounds.get(&src.partition).is_some_and(|b| src.offset >= *b) {
                ev.keys_moved_on += 1;
                continue;
            }
        }
        ev.keys_in_scope += 1;
        let live_bytes = current.map(|(_, b)| b.as_slice());
        if let Some((_, b)) = current {
            before.update(key.as_bytes());
            before.update(b);
        }
        let rebuilt_bytes = rebuilt.map(|r| {
            P::encode_state(&r.state, &mut encoded);
            encoded.clone()
        });
        if let Some(b) = &rebuilt_bytes {
            after.update(key.as_bytes());
            after.update(b);
        }
        if live_bytes != rebuilt_bytes.as_deref() {
            ev.projection_rows_changed += 1;
            if ev.changed_keys.len() < MAX_CHANGED {
                ev.changed_keys.push(key.clone());
            }
            state_check.fail(format!(
                "{key}: live {} but history gives {}",
                current.map_or("nothing".into(), |(s, _)| describe::<P>(s)),
                rebuilt.map_or("nothing".into(), |r| describe::<P>(&r.state))
            ));
            let partition = rebuilt
                .map(|r| P::source(&r.state).partition)
                .or_else(|| current.map(|(s, _)| P::source(s).partition))
                .unwrap_or(0);
            match &rebuilt_bytes {
                Some(b) => repairs.push(Repair {
                    key: key.clone(),
                    partition,
                    state: Some(b.clone()),
                }),
                None if plan.apply => ev.reasons.push(format!(
                    "{key}: live state without any history; deleting a row is not repaired"
                )),
                None => {}
            }
        }
        // Output and invariants are checks of the live state.
        let out = live.outputs.get(key.as_str());
        match current {
            Some((s, _)) => {
                let ok = P::render(s, &mut rendered).is_ok() && out == Some(&rendered);
                if !ok {
                    output_check.fail(format!(
                        "{key}: output {} does not render the live state",
                        if out.is_some() { "record" } else { "missing" }
                    ));
                    // A right state with a wrong output: the owner re-emits it.
                    if live_bytes == rebuilt_bytes.as_deref() {
                        if let Some(b) = &rebuilt_bytes {
                            repairs.push(Repair {
                                key: key.clone(),
                                partition: P::source(s).partition,
                                state: Some(b.clone()),
                            });
                        }
                    }
                }
                if let Some(r) = rebuilt {
                    if P::last_event_time_ms(s) > r.max_event_time_ms {
                        time_check
                            .fail(format!("{key}: live state is newer than any source event"));
                    }
                }
                for (name, c) in &mut invariants {
                    if let Err(why) = P::invariant(name, s, &guard) {
                        c.fail(format!("{key}: {why}"));
                    }
                }
            }
            None if out.is_some() => output_check.fail(format!("{key}: output without live state")),
            None => {}
        }
    }
    ev.state_digest_before = format!("{:016x}", before.digest());
    ev.state_digest_after = format!("{:016x}", after.digest());
    let mut checks = Vec::new();
    for c in [state_check, output_check, time_check] {
        if wanted(c.name) {
            checks.push(c.result);
        }
    }
    checks.extend(invariants.into_values().map(|c| c.result));
    ev.checks = checks;
    repairs
}

fn describe<P: Projection>(s: &P::State) -> String {
    let mut out = Vec::new();
    match P::render(s, &mut out) {
        Ok(()) => String::from_utf8_lossy(&out).into_owned(),
        Err(e) => format!("(unrenderable: {e})"),
    }
}
