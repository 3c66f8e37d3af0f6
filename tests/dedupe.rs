//! Against a real broker: redelivered events are applied once; an event id reused with other
//! content is dead-lettered as `duplicate_conflict`, never applied.

mod common;

use std::time::Duration;

use common::{assert_trusted, read_all, Processor, Setup};
use tally::workload::Flow;

#[test]
fn duplicates_are_not_double_counted() {
    let setup = Setup::new("dup", Flow::Inventory, 3);
    let p = Processor::start(&setup, "a", &[]);
    let sent = setup.load(4_000, 200, 0.25, 0.0, 0.0, 1);
    setup.wait_caught_up(Duration::from_secs(120));
    let report = setup.oracle();
    assert_trusted(&report);
    assert!(
        sent.duplicates > 500,
        "the workload must hold duplicates: {sent:?}"
    );
    assert_eq!(report.duplicates, sent.duplicates);
    assert_eq!(
        p.metric("tally_duplicates_skipped_total") as u64,
        sent.duplicates
    );
    assert_eq!(
        p.metric("tally_events_processed_total") as u64,
        sent.valid_events
    );
}

#[test]
fn conflicting_duplicates_are_dead_lettered_not_applied() {
    let setup = Setup::new("conflict", Flow::Ledger, 3);
    let _p = Processor::start(&setup, "a", &[]);
    let sent = setup.load(3_000, 100, 0.0, 0.0, 0.05, 2);
    setup.wait_caught_up(Duration::from_secs(120));
    assert_trusted(&setup.oracle());
    let conflicts = read_all(&setup.dlq)
        .iter()
        .filter(|r| {
            r.headers.get("tally.error.reason").map(String::as_str) == Some("duplicate_conflict")
        })
        .count() as u64;
    assert!(sent.conflicts > 50, "{sent:?}");
    assert_eq!(conflicts, sent.conflicts);
}

#[test]
fn dedupe_entries_expire_by_event_time_with_changelog_tombstones() {
    let mut setup = Setup::new("expiry", Flow::Inventory, 2);
    // The workload's events are one second of event time apart: 3000 events span 50 minutes.
    setup.dedupe_retention = Duration::from_secs(600);
    let p = Processor::start(&setup, "a", &[]);
    p.wait_ready(2, Duration::from_secs(60));
    // Paced, so expiry runs over many commits as the watermark advances.
    let sent = setup.load_at(3_000, 100, 0.0, 0.0, 0.0, 11, 1_500);
    setup.wait_caught_up(Duration::from_secs(120));
    assert_trusted(&setup.oracle());
    let dedupe = |tombstone: bool| {
        read_all(&setup.changelog())
            .iter()
            .filter(|r| r.key.as_deref().is_some_and(|k| k.starts_with(b"d")))
            .filter(|r| r.value.is_none() == tombstone)
            .count() as u64
    };
    let mut seed = 12;
    // Expiry is lazy: each commit sweeps a slice of the store, and entries still in the commit
    // being made are swept by a later one. A load that ends in one big commit (a rollback makes
    // one) leaves that commit's expired entries until more input arrives, so a trickle follows.
    let started = std::time::Instant::now();
    let live = loop {
        let (written, expired) = (dedupe(false), dedupe(true));
        assert!(expired > 0, "no expiry tombstones");
        // A 10 minute window holds about a fifth of the ids; all the others expire.
        let live = written - expired;
        if live < sent.valid_events / 2 || started.elapsed() > Duration::from_secs(60) {
            break live;
        }
        setup.load_at(200, 100, 0.0, 0.0, 0.0, seed, 1_000);
        seed += 1;
        setup.wait_caught_up(Duration::from_secs(60));
    };
    assert!(
        live > 0 && live < sent.valid_events / 2,
        "{live} ids still live after {} events",
        sent.valid_events
    );
    assert_trusted(&setup.oracle());
}
