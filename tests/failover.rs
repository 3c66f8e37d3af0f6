//! Against a real broker: processors share partitions and take over from each other, and a
//! kill -9 in the middle of a load (or inside a commit) loses nothing and applies nothing twice.

mod common;

use std::time::Duration;

use common::{assert_trusted, Processor, Setup};
use tally::workload::Flow;

const LIMIT: Duration = Duration::from_secs(180);

#[test]
fn two_processors_split_the_partitions_and_one_takes_over_when_the_other_stops() {
    let setup = Setup::new("split", Flow::Inventory, 6);
    let a = Processor::start(&setup, "a", &[]);
    let b = Processor::start(&setup, "b", &[]);
    setup.load(4_000, 600, 0.05, 0.01, 0.0, 7);
    setup.wait_caught_up(LIMIT);
    let assigned = |p: &Processor| p.metric("tally_partitions_assigned");
    // The group may still be settling its cooperative rebalance; give it a bounded while.
    let started = std::time::Instant::now();
    while (assigned(&a) < 1.0 || assigned(&b) < 1.0 || assigned(&a) + assigned(&b) != 6.0)
        && started.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        assigned(&a) >= 1.0 && assigned(&b) >= 1.0,
        "a={} b={}",
        assigned(&a),
        assigned(&b)
    );
    assert_eq!(assigned(&a) + assigned(&b), 6.0);
    assert_trusted(&setup.oracle());

    a.terminate();
    setup.load(4_000, 600, 0.05, 0.01, 0.0, 8);
    setup.wait_caught_up(LIMIT);
    b.wait_ready(6, LIMIT);
    assert_trusted(&setup.oracle());
}

#[test]
fn kill_9_during_a_load_under_exactly_once_loses_nothing_and_applies_nothing_twice() {
    let setup = Setup::new("kill9", Flow::Ledger, 4);
    let p = Processor::start(&setup, "a", &[]);
    // Processing must be under way when the kill comes.
    p.wait_ready(4, LIMIT);
    let loader = {
        let setup = setup.clone();
        std::thread::spawn(move || setup.load_at(20_000, 500, 0.05, 0.01, 0.002, 9, 8_000))
    };
    std::thread::sleep(Duration::from_millis(1500));
    p.kill9();
    std::thread::sleep(Duration::from_millis(500));
    let _p = Processor::start(&setup, "a", &[]);
    loader.join().unwrap();
    setup.wait_caught_up(LIMIT);
    assert_trusted(&setup.oracle());
}

#[rstest::rstest]
#[case::before_sending_offsets("before_send_offsets@3")]
#[case::between_sending_offsets_and_committing("before_commit_transaction@3")]
#[case::right_after_committing("after_commit_transaction@3")]
#[case::between_dedupe_entries_and_states("between_dedupe_and_states@20")]
fn a_crash_inside_a_commit_loses_nothing_and_applies_nothing_twice(#[case] fault: &str) {
    crash_and_recover(Setup::new("crash-commit", Flow::Inventory, 2), fault, 300);
}

/// Under at_least_once the changelog keeps whatever prefix was acknowledged before the crash;
/// the fault flushes first, so the dedupe entries land and their states do not.
#[rstest::rstest]
#[case::between_dedupe_entries_and_states("between_dedupe_and_states@20")]
#[case::before_committing_offsets("before_commit_offsets@3")]
fn a_crash_under_at_least_once_loses_nothing_and_applies_nothing_twice(#[case] fault: &str) {
    let mut setup = Setup::new("crash-alo", Flow::Inventory, 2);
    setup.guarantee = "at_least_once";
    crash_and_recover(setup, fault, 300);
}

/// Under at_least_once a crash can land a key's newer output while its state (another
/// partition) is lost. The redelivery must not send the restored, older state after it: the
/// oracle's per-key sequence check over every output record fails if it does.
///
/// The processor starts on a backlog, so each poll-loop turn handles 2,000 events, and dies in
/// a later turn once that turn's outputs (not its states) landed: the keys of that turn whose
/// state landed in an earlier turn of the same commit are redelivered across turns again.
/// Before any commit the next owner cannot know which outputs landed and holds them all; after
/// one it reads the outputs past that commit's and holds only their keys.
#[rstest::rstest]
#[case::before_the_first_commit(20_000, "outputs_before_states@3")]
#[case::after_commits(4_000, "outputs_before_states@5")]
fn a_newer_output_that_landed_without_its_state_is_never_followed_by_an_older_one(
    #[case] commit_max_events: usize,
    #[case] fault: &str,
) {
    let mut setup = Setup::new("crash-ahead", Flow::Inventory, 2);
    setup.guarantee = "at_least_once";
    setup.commit_interval_ms = 10_000;
    setup.commit_max_events = commit_max_events;
    setup.load(12_000, 2_000, 0.0, 0.0, 0.0, 5);
    let mut p = Processor::start(&setup, "a", &[("TALLY_FAULT", fault)]);
    let started = std::time::Instant::now();
    while !p.exited() {
        assert!(
            started.elapsed() < LIMIT,
            "the fault never fired; thread stacks {}",
            p.stacks()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _p = Processor::start(&setup, "a", &[]);
    setup.wait_caught_up(LIMIT);
    assert_trusted(&setup.oracle());
}

/// A Kafka client call of a commit that never returns (librdkafka's `send_offsets_to_transaction`
/// can block past its timeout while the group coordinator moves) is abandoned after the stall
/// limit (three transaction timeouts, 30 s here): the producer is replaced and the processor
/// rolls back and goes on, without a restart, losing nothing and applying nothing twice.
#[test]
fn a_commit_whose_kafka_call_never_returns_is_abandoned_and_the_processor_goes_on() {
    let setup = Setup::new("commit-hang", Flow::Inventory, 2);
    let mut p = Processor::start(&setup, "a", &[("TALLY_FAULT", "send_offsets_hangs@3")]);
    p.wait_ready(2, LIMIT);
    let started = std::time::Instant::now();
    let mut seed = 30;
    while p.metric("tally_commits_stalled_total") < 1.0 {
        assert!(
            started.elapsed() < LIMIT && !p.exited(),
            "the stalled commit was not abandoned; thread stacks {}",
            p.stacks()
        );
        setup.load_at(400, 300, 0.05, 0.0, 0.0, seed, 2_000);
        seed += 1;
    }
    setup.load_at(2_000, 300, 0.05, 0.0, 0.0, seed, 2_000);
    setup.wait_caught_up(LIMIT);
    assert!(!p.exited(), "the processor went on without a restart");
    assert_trusted(&setup.oracle());
}

/// Runs one processor with `fault` under paced input (over `keys` keys) until the fault killed
/// it, then a plain one until it caught up, and checks the outputs against the oracle.
fn crash_and_recover(setup: Setup, fault: &str, keys: u64) {
    let mut p = Processor::start(&setup, "a", &[("TALLY_FAULT", fault)]);
    p.wait_ready(2, LIMIT);
    // Paced input until the fault fired: the commits it needs come however the broker paces
    // them (a stalled broker once let a single 2-second load end in one commit).
    let started = std::time::Instant::now();
    let mut seed = 10;
    while !p.exited() {
        assert!(
            started.elapsed() < LIMIT,
            "the fault never fired; thread stacks {}",
            p.stacks()
        );
        setup.load_at(400, keys, 0.05, 0.0, 0.0, seed, 2_000);
        seed += 1;
    }
    let _p = Processor::start(&setup, "a", &[]);
    setup.wait_caught_up(LIMIT);
    assert_trusted(&setup.oracle());
}
