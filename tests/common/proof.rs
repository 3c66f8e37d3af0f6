//! The proof suite's harness: scenario sizes (CI or full), the one-line verdict per scenario,
//! private Kafka clusters for broker faults, and the local-store check against the changelog.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use tally::oracle::OracleReport;
use tally::workload::{Flow, LoadReport};
use tally_state::bundle::decode_bundle;
use tally_state::{ChangelogKey, DedupeEntry, RecordKind, Store, StoreOptions};
use tally_topology::{Inventory, Ledger, Projection};

use super::{read_all_on, Setup};

/// Whether the suite runs its full sizes (`TALLY_PROOF_SCALE=full`) or the reduced CI sizes.
pub fn full() -> bool {
    std::env::var("TALLY_PROOF_SCALE").is_ok_and(|s| s == "full")
}

/// `ci` in the reduced suite, `full` in the full one.
pub fn size<T>(ci: T, full_size: T) -> T {
    if full() {
        full_size
    } else {
        ci
    }
}

/// Where every scenario appends its line; the suite's scripts print the file at the end.
pub fn report_path() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("proof-report.txt")
}

/// Prints the scenario's one line (and appends it to the report file), then asserts the verdict
/// with the whole oracle report in the failure message.
pub fn verdict(scenario: &str, faults: impl std::fmt::Display, report: &OracleReport) {
    verdict_with(scenario, faults, report, &[]);
}

/// [`verdict`] with extra scenario checks that must hold too: (what, held).
pub fn verdict_with(
    scenario: &str,
    faults: impl std::fmt::Display,
    report: &OracleReport,
    checks: &[(&str, bool)],
) {
    let faults = faults.to_string();
    let failed: Vec<&str> = checks.iter().filter(|c| !c.1).map(|c| c.0).collect();
    let pass = report.pass && failed.is_empty();
    let line = format!(
        "{scenario:<22} events={:<8} faults={faults:<14} lost={} double_applied={} wrong={} \
         sequence={} open_txn={} changelog_diff={} dead_letters={}/{}{} verdict={}{}",
        report.events_checked,
        report.lost,
        report.double_applied,
        report.wrong + report.extra_keys,
        report.sequence_violations,
        report.open_transactions,
        report.changelog_keys_missing
            + report.changelog_keys_extra
            + report.dedupe_entries_missing
            + report.dedupe_entries_extra,
        report.dead_letters_expected,
        report.dead_letters_found,
        // Under at_least_once a dead letter may repeat; the distinct count is what must match.
        if report.dead_letters_distinct == report.dead_letters_found {
            String::new()
        } else {
            format!(" ({} distinct)", report.dead_letters_distinct)
        },
        if pass { "PASS" } else { "FAIL" },
        if failed.is_empty() {
            String::new()
        } else {
            format!(" ({})", failed.join("; "))
        }
    );
    eprintln!("{line}");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(report_path())
    {
        let _ = writeln!(f, "{line}");
    }
    assert!(
        pass,
        "{line}\noracle: {}",
        serde_json::to_string_pretty(report).unwrap()
    );
}

/// The dead letters the generator injected, by reason (conflicts included): the oracle must find
/// the same, so generator, oracle and processor agree three ways.
pub fn injected_by_reason(loads: &[LoadReport]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for l in loads {
        for (r, n) in &l.invalid_by_reason {
            *out.entry(r.clone()).or_default() += n;
        }
        if l.conflicts > 0 {
            *out.entry("duplicate_conflict".to_string()).or_default() += l.conflicts;
        }
    }
    out
}

/// A private Kafka cluster (1 or 3 nodes) for scenarios that fault brokers; stopped on drop.
pub struct Cluster {
    port: u16,
    nodes: u8,
    dir: PathBuf,
}

impl Cluster {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/local/kafka")
    }

    fn run(&self, args: &[&str]) -> bool {
        Command::new(Self::script())
            .args(args)
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_DIR", &self.dir)
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Starts `nodes` brokers from `port` on a fresh data dir.
    pub fn up(port: u16, nodes: u8) -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("kafka-{port}"));
        let c = Self { port, nodes, dir };
        c.run(&["down"]);
        assert!(
            c.run(&["up", "--nodes", &nodes.to_string()]),
            "cluster on {port} did not start"
        );
        c
    }

    /// Its bootstrap servers.
    pub fn bootstrap(&self) -> String {
        (0..self.nodes)
            .map(|i| format!("127.0.0.1:{}", self.port + u16::from(i)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// kill -9 of node `n` (1-based), keeping its data.
    pub fn kill_node(&self, n: u8) {
        assert!(self.run(&["stop-node", &n.to_string()]), "stop node {n}");
    }

    /// Restarts node `n` on its data and waits until it serves.
    pub fn start_node(&self, n: u8) {
        assert!(self.run(&["start-node", &n.to_string()]), "start node {n}");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.run(&["down"]);
    }
}

/// Every live record of a changelog: (partition, raw key) -> value; tombstones remove.
fn changelog_contents(setup: &Setup) -> HashMap<(i32, Vec<u8>), Vec<u8>> {
    let mut out = HashMap::new();
    for r in read_all_on(&setup.bootstrap, &setup.changelog()) {
        let Some(k) = r.key else { continue };
        match r.value {
            Some(v) => out.insert((r.partition, k), v),
            None => out.remove(&(r.partition, k)),
        };
    }
    out
}

/// What a local store holds that differs from the changelog (which the oracle checked against
/// its own fold): every state value byte for byte, every dedupe id. Empty when they agree.
/// Only for a retention longer than the history: a rebuilt store leaves out expired entries
/// that the changelog may still hold. The processors of `instances` must be stopped (sled holds
/// a lock).
pub fn stores_differ_from_changelog(setup: &Setup, instances: &[&str]) -> Vec<String> {
    let mut want = changelog_contents(setup);
    let want_ids = take_dedupe_ids(&mut want);
    let flow = match setup.flow {
        Flow::Inventory => "inventory",
        Flow::Ledger => "ledger",
    };
    let mut diffs = Vec::new();
    let mut seen_partitions = BTreeSet::new();
    for instance in instances {
        let root = setup.state_dir().join(instance).join(&setup.app).join(flow);
        let Ok(dirs) = std::fs::read_dir(&root) else {
            continue;
        };
        for d in dirs.flatten() {
            let Ok(p) = d.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            // A partition's newest owner holds its store; an older copy elsewhere is stale.
            if !owns_last(setup, instances, instance, p) || !seen_partitions.insert(p) {
                continue;
            }
            let store = Store::open(&d.path(), StoreOptions::default()).expect("open store");
            for item in store.states() {
                let (k, v) = item.expect("read state");
                let ck = ChangelogKey::encode(RecordKind::State, &k);
                match want.remove(&(p, ck)) {
                    Some(w) if w == v.as_ref() => {}
                    Some(_) => diffs.push(format!("p{p} state {}: differs", show(&k))),
                    None => diffs.push(format!("p{p} state {}: not in changelog", show(&k))),
                }
            }
            // Entries past the retention as of the store's watermark are ignored by lookups;
            // each copy sweeps them (and the owner tombstones their bundles) in its own time.
            let watermark = store
                .checkpoint()
                .ok()
                .flatten()
                .map_or(i64::MIN, |c| c.watermark_ms);
            let live_from = watermark.saturating_sub(setup.dedupe_retention.as_millis() as i64);
            let mut ids: BTreeSet<Vec<u8>> = want_ids
                .get(&p)
                .into_iter()
                .flatten()
                .filter(|(_, t)| **t >= live_from)
                .map(|(id, _)| id.clone())
                .collect();
            for item in store.dedupe_entries() {
                let (id, entry) = item.expect("read dedupe entry");
                if entry.event_time_ms >= live_from && !ids.remove(&id) {
                    diffs.push(format!("p{p} dedupe {}: not in changelog", show(&id)));
                }
            }
            for id in ids {
                diffs.push(format!(
                    "p{p} dedupe {}: in changelog, not in store",
                    show(&id)
                ));
            }
        }
    }
    for ((p, k), _) in want {
        if seen_partitions.contains(&p) {
            diffs.push(format!("p{p} {}: in changelog, not in store", show(&k)));
        }
    }
    diffs
}

/// Takes the dedupe records (per-id ones and bundles) out of `contents` and returns the ids
/// they hold with their event times, per partition.
fn take_dedupe_ids(
    contents: &mut HashMap<(i32, Vec<u8>), Vec<u8>>,
) -> HashMap<i32, BTreeMap<Vec<u8>, i64>> {
    let mut ids: HashMap<i32, BTreeMap<Vec<u8>, i64>> = HashMap::new();
    contents.retain(|(p, k), v| {
        let set = ids.entry(*p).or_default();
        match ChangelogKey::parse(k).map(|k| (k.kind, k.id)) {
            Ok((RecordKind::Dedupe, id)) => {
                let entry = DedupeEntry::decode(v).expect("a readable dedupe entry");
                set.insert(id.to_vec(), entry.event_time_ms);
            }
            Ok((RecordKind::Bundle, _)) => decode_bundle(v, |id, e| {
                set.insert(id.to_vec(), e.event_time_ms);
            })
            .expect("a readable dedupe bundle"),
            _ => return true,
        }
        false
    });
    ids
}

/// Whether `me` holds the most current store of partition `p` among `instances`: the furthest
/// changelog checkpoint (a task's store, or a standby's), the first such instance on a tie.
fn owns_last(setup: &Setup, instances: &[&str], me: &str, p: i32) -> bool {
    let flow = match setup.flow {
        Flow::Inventory => "inventory",
        Flow::Ledger => "ledger",
    };
    let reached = |i: &str| {
        let dir = setup
            .state_dir()
            .join(i)
            .join(&setup.app)
            .join(flow)
            .join(p.to_string());
        if !dir.exists() {
            return None;
        }
        let store = Store::open(&dir, StoreOptions::default()).ok()?;
        store.checkpoint().ok()?.map(|c| c.changelog_offset)
    };
    let mine = reached(me);
    let best = instances.iter().map(|i| reached(i)).max().flatten();
    mine.is_some() && mine == best && instances.iter().find(|i| reached(i) == best) == Some(&me)
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Every changelog state, rendered by the projection, equals the last output record of its key:
/// the oracle judged the outputs, so this ties the changelog's values to its verdict.
pub fn changelog_renders_outputs(setup: &Setup) -> Vec<String> {
    let mut outputs: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    for r in read_all_on(&setup.bootstrap, &setup.output) {
        if let (Some(k), Some(v)) = (r.key, r.value) {
            outputs.insert(k, v);
        }
    }
    let mut diffs = Vec::new();
    let mut rendered = Vec::new();
    for ((_, k), v) in changelog_contents(setup) {
        let Ok(key) = ChangelogKey::parse(&k) else {
            diffs.push(format!("unreadable changelog key {}", show(&k)));
            continue;
        };
        if key.kind != RecordKind::State {
            continue;
        }
        let ok = match setup.flow {
            Flow::Inventory => Inventory::decode_state(&v)
                .ok()
                .and_then(|s| Inventory::render(&s, &mut rendered).ok()),
            Flow::Ledger => Ledger::decode_state(&v)
                .ok()
                .and_then(|s| Ledger::render(&s, &mut rendered).ok()),
        };
        if ok.is_none() || outputs.get(key.id) != Some(&rendered) {
            diffs.push(format!(
                "{}: changelog state does not render its output",
                show(key.id)
            ));
        }
    }
    diffs
}
