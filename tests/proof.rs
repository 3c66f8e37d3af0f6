//! The proof suite: faults injected on purpose (kill -9, fencing, churn, broker bounces, lost
//! state, poison, broker outage) and the independent oracle must say nothing was lost or doubled.
//! Reduced sizes by default (CI); `TALLY_PROOF_SCALE=full` (deploy/local/prove --full) for full.

mod common;

use std::time::{Duration, Instant};

use common::faults::{kill_loop, kill_scenario, paced, Fleet};
use common::proof::{self, size, verdict, verdict_with, Cluster};
use common::{Processor, Setup};
use tally::workload::Flow;

const LIMIT: Duration = Duration::from_secs(300);

#[test]
fn s1_baseline_two_processors_no_faults() {
    let events = size(30_000, 1_000_000);
    let setup = Setup::new("p-baseline", Flow::Inventory, 12);
    let fleet = Fleet::start(&setup, &["a", "b"]);
    setup.load(events, size(5_000, 100_000), 0.05, 0.01, 0.001, 101);
    setup.wait_caught_up(LIMIT);
    fleet.terminate();
    verdict("1 baseline", 0, &setup.oracle());
}

#[test]
fn s2_kill_9_across_three_processors_under_exactly_once() {
    let setup = Setup::new("p-kill9", Flow::Ledger, 12);
    let keys = size(3_000, 100_000);
    kill_scenario(
        "2 kill-9 x3 procs",
        &setup,
        keys,
        102,
        &["before_commit_transaction@1", "between_dedupe_and_states@5"],
    );
}

#[test]
fn s3_a_frozen_zombie_is_fenced_and_writes_nothing() {
    let setup = Setup::new("p-zombie", Flow::Inventory, 6);
    let a = Processor::start(&setup, "a", &[]);
    let b = Processor::start(&setup, "b", &[]);
    a.wait_ready(1, LIMIT);
    b.wait_ready(1, LIMIT);
    let load = paced(
        &setup,
        size(12_000, 120_000),
        1_000,
        (0.05, 0.0, 0.0),
        103,
        1_000,
    );
    std::thread::sleep(Duration::from_secs(2));
    // Past the 6 s session timeout: the group moves a's partitions to b.
    a.freeze();
    let started = Instant::now();
    while b.metric("tally_partitions_assigned") < 6.0 && started.elapsed() < LIMIT {
        std::thread::sleep(Duration::from_millis(250));
    }
    let moved = b.metric("tally_partitions_assigned") == 6.0;
    std::thread::sleep(Duration::from_secs(3));
    a.resume();
    let sent = load.join().unwrap();
    setup.wait_caught_up(LIMIT);
    let mut a = a;
    let a_alive = !a.exited();
    a.terminate();
    b.terminate();
    let report = setup.oracle();
    verdict_with(
        "3 zombie fenced",
        1,
        &report,
        &[
            ("b took over every partition while a was frozen", moved),
            ("a rejoined instead of dying", a_alive),
            (
                "every record checked",
                report.events_checked == sent.records_sent,
            ),
        ],
    );
}

#[test]
fn s4_scale_churn_one_three_one_under_load() {
    let period = Duration::from_secs(size(10, 30));
    let cycles = size(1, 3);
    let setup = Setup::new("p-churn", Flow::Ledger, 12);
    let rate = size(2_000, 10_000);
    let seconds = period.as_secs() * 2 * cycles;
    let load = paced(&setup, rate * seconds, 2_000, (0.05, 0.01, 0.0), 104, rate);
    let a = Processor::start(&setup, "a", &[]);
    let mut faults = 0;
    for _ in 0..cycles {
        std::thread::sleep(period);
        let b = Processor::start(&setup, "b", &[]);
        let c = Processor::start(&setup, "c", &[]);
        std::thread::sleep(period);
        b.terminate();
        c.terminate();
        faults += 4;
    }
    load.join().unwrap();
    let started = Instant::now();
    setup.wait_caught_up(LIMIT);
    let catch_up = started.elapsed();
    a.terminate();
    verdict_with(
        "4 scale churn 1-3-1",
        faults,
        &setup.oracle(),
        &[(
            "lag back to zero within 60 s",
            catch_up < Duration::from_secs(60),
        )],
    );
}

#[test]
fn s5_three_broker_cluster_with_leader_and_coordinator_bounces() {
    let cluster = Cluster::up(19500, 3);
    let bootstrap = cluster.bootstrap();
    let setup = Setup::on(&bootstrap, "p-bounce", Flow::Inventory, 6, 3);
    let a = Processor::start(&setup, "a", &[]);
    let b = Processor::start(&setup, "b", &[]);
    a.wait_ready(1, LIMIT);
    let bounces = size(2u8, 5);
    let rate = 2_000;
    let load = paced(
        &setup,
        rate * 12 * u64::from(bounces),
        2_000,
        (0.05, 0.01, 0.0),
        105,
        rate,
    );
    for n in 0..bounces {
        std::thread::sleep(Duration::from_secs(3));
        // Round-robin over the nodes: each leads some partitions and coordinates some
        // transactions, so every kind of leader is bounced.
        let node = n % 3 + 1;
        cluster.kill_node(node);
        std::thread::sleep(Duration::from_secs(3));
        cluster.start_node(node);
    }
    load.join().unwrap();
    setup.wait_caught_up(LIMIT);
    a.terminate();
    b.terminate();
    verdict("5 3-node bounces", u64::from(bounces), &setup.oracle());
}

#[rstest::rstest]
#[case::deleted("6 state deleted", false)]
#[case::corrupted("6 store corrupted", true)]
fn s6_lost_or_corrupt_local_state_is_rebuilt_from_the_changelog(
    #[case] scenario: &str,
    #[case] corrupt: bool,
) {
    let mut setup = Setup::new("p-state", Flow::Inventory, 4);
    setup.dedupe_retention = Duration::from_secs(3650 * 86_400);
    let p = Processor::start(&setup, "a", &[]);
    let first = setup.load(size(8_000, 200_000), 1_000, 0.05, 0.01, 0.001, 106);
    setup.wait_caught_up(LIMIT);
    p.kill9();
    let stores = setup.state_dir().join("a");
    if corrupt {
        corrupt_every_store(&stores);
    } else {
        std::fs::remove_dir_all(&stores).unwrap();
    }
    let p = Processor::start(&setup, "a", &[]);
    // The same history again: the rebuilt dedupe index must know every id.
    setup.load(size(8_000, 200_000), 1_000, 0.05, 0.01, 0.001, 106);
    setup.wait_caught_up(LIMIT);
    let processed = p.metric("tally_events_processed_total");
    p.terminate();
    let report = setup.oracle();
    let store_diff = proof::stores_differ_from_changelog(&setup, &["a"]);
    let render_diff = proof::changelog_renders_outputs(&setup);
    verdict_with(
        scenario,
        1,
        &report,
        &[
            ("redelivered history applied nothing", processed == 0.0),
            ("store equals changelog", store_diff.is_empty()),
            ("changelog renders outputs", render_diff.is_empty()),
            (
                "every record checked",
                report.events_checked == 2 * first.records_sent,
            ),
        ],
    );
}

/// Overwrites a stretch in the middle of every file of every sled store under `dir`.
fn corrupt_every_store(dir: &std::path::Path) {
    let mut hit = 0;
    for entry in walk(dir) {
        let Ok(meta) = std::fs::metadata(&entry) else {
            continue;
        };
        if meta.len() < 64 {
            continue;
        }
        let mut bytes = std::fs::read(&entry).unwrap();
        let mid = bytes.len() / 2;
        let end = (mid + 4096).min(bytes.len());
        for b in &mut bytes[mid..end] {
            *b ^= 0x5a;
        }
        std::fs::write(&entry, bytes).unwrap();
        hit += 1;
    }
    assert!(hit > 0, "no store files under {}", dir.display());
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn s7_poison_duplicates_and_conflicts_across_kills_are_counted_exactly() {
    let setup = Setup::new("p-poison", Flow::Inventory, 6);
    let load = paced(
        &setup,
        size(20_000, 500_000),
        2_000,
        (0.05, 0.01, 0.001),
        107,
        // The load must outlast the kill schedule (a hooked processor with no input never
        // commits): at 20k events/s it ended before the last hooked restart got its partitions.
        size(4_000, 10_000),
    );
    let (faults, missed, sent) = kill_loop(
        &setup,
        &["a", "b"],
        size(3, 10),
        Duration::from_millis(1_200),
        &["after_commit_transaction@1"],
        load,
    );
    let report = setup.oracle();
    let injected = proof::injected_by_reason(&[sent]);
    verdict_with(
        "7 poison across kills",
        faults,
        &report,
        &[
            (
                "dead letters by reason equal what was injected",
                report.dead_letters_by_reason == injected,
            ),
            ("every in-commit hook fired", missed == 0),
        ],
    );
}

#[test]
fn s8_broker_down_processors_wait_and_resume_without_restart() {
    let cluster = Cluster::up(19400, 1);
    let bootstrap = cluster.bootstrap();
    let setup = Setup::on(&bootstrap, "p-outage", Flow::Ledger, 4, 1);
    let mut a = Processor::start(&setup, "a", &[]);
    let mut b = Processor::start(&setup, "b", &[]);
    a.wait_ready(1, LIMIT);
    setup.load(size(5_000, 50_000), 500, 0.05, 0.01, 0.0, 108);
    setup.wait_caught_up(LIMIT);
    cluster.kill_node(1);
    let down = Duration::from_secs(size(20, 60));
    let started = Instant::now();
    let mut unhealthy = false;
    while started.elapsed() < down {
        unhealthy |= !matches!(a.get("/healthz"), Some((200, _)));
        std::thread::sleep(Duration::from_millis(500));
    }
    cluster.start_node(1);
    setup.load(size(5_000, 50_000), 500, 0.05, 0.01, 0.0, 109);
    setup.wait_caught_up(LIMIT);
    let survived = !a.exited() && !b.exited();
    // Health follows the client's broker states, refreshed every statistics interval (5 s).
    let started = Instant::now();
    let healthy = |p: &Processor| matches!(p.get("/healthz"), Some((200, _)));
    while !(healthy(&a) && healthy(&b)) && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(500));
    }
    let healthy_again = healthy(&a) && healthy(&b);
    a.terminate();
    b.terminate();
    verdict_with(
        "8 broker down",
        1,
        &setup.oracle(),
        &[
            ("reported unhealthy while the broker was down", unhealthy),
            ("no processor restarted", survived),
            ("healthy again", healthy_again),
        ],
    );
}

#[test]
fn s9_kill_9_under_at_least_once_never_applies_twice() {
    let mut setup = Setup::new("p-alo", Flow::Ledger, 12);
    setup.guarantee = "at_least_once";
    kill_scenario(
        "9 at_least_once kills",
        &setup,
        3_000,
        109,
        // The first hook is the one the reduced size runs.
        &["between_dedupe_and_states@5", "before_commit_offsets@1"],
    );
}

/// Standbys on: kill -9 round-robin over three processors under load. A survivor that keeps a
/// standby of a dead one's partition takes it over from that store's tail; the oracle judges the
/// outputs, and the most current copy of every store (a task's or a standby's) must equal the
/// changelog.
#[test]
fn s13_kill_9_with_standby_replicas_under_load() {
    let setup = Setup::new("p-standby", Flow::Inventory, 12);
    let names = ["a", "b", "c"];
    let load = paced(
        &setup,
        size(30_000, 1_000_000),
        size(3_000, 100_000),
        (0.05, 0.01, 0.001),
        113,
        size(1_500, 10_000),
    );
    let mut fleet = Fleet::start_with(&setup, &names, &[("TALLY_NUM_STANDBY_REPLICAS", "1")]);
    let kills = size(5, 20);
    for k in 0..kills {
        std::thread::sleep(Duration::from_millis(size(2_500, 4_000)));
        fleet.kill_and_restart(k as usize % names.len(), &[]);
    }
    let sent = load.join().unwrap();
    fleet.heal();
    setup.wait_caught_up(LIMIT);
    fleet.terminate();
    let from_standby = logged(&setup, "taking over from the standby kept here");
    let store_diff = proof::stores_differ_from_changelog(&setup, &names);
    if !store_diff.is_empty() {
        eprintln!(
            "stores that differ from the changelog (first 10): {:?}",
            &store_diff[..store_diff.len().min(10)]
        );
    }
    let report = setup.oracle();
    verdict_with(
        &format!("13 kill-9 + standbys ({from_standby} from standby)"),
        kills,
        &report,
        &[
            (
                "every record checked",
                report.events_checked == sent.records_sent,
            ),
            (
                "a takeover restored from a standby's tail",
                from_standby > 0,
            ),
            (
                "the most current stores equal the changelog",
                store_diff.is_empty(),
            ),
        ],
    );
}

/// Lines of every processor log of the setup that contain `what`.
fn logged(setup: &Setup, what: &str) -> usize {
    std::fs::read_dir(&setup.dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .map(|text| text.lines().filter(|l| l.contains(what)).count())
        .sum()
}
