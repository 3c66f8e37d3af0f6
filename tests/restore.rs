//! Against a real broker: a restarted processor restores its stores from the changelog,
//! incrementally when the store is intact and fully when it was deleted; results stay exact.

mod common;

use std::time::Duration;

use common::{assert_trusted, Processor, Setup};
use tally::workload::Flow;

const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn a_restart_with_an_intact_store_restores_incrementally() {
    let setup = Setup::new("restore-inc", Flow::Inventory, 3);
    let p = Processor::start(&setup, "a", &[]);
    setup.load(3_000, 500, 0.05, 0.0, 0.0, 4);
    setup.wait_caught_up(LIMIT);
    p.terminate();

    let p = Processor::start(&setup, "a", &[]);
    p.wait_ready(3, LIMIT);
    let restored = p.metric("tally_restore_records_total");
    assert!(
        restored < 10.0,
        "an intact store reads (almost) nothing back, read {restored}"
    );
    setup.load(1_000, 500, 0.05, 0.0, 0.0, 5);
    setup.wait_caught_up(LIMIT);
    assert_trusted(&setup.oracle());
}

#[test]
fn a_restart_with_a_deleted_store_restores_fully() {
    let setup = Setup::new("restore-full", Flow::Ledger, 3);
    let p = Processor::start(&setup, "a", &[]);
    let sent = setup.load(3_000, 400, 0.0, 0.0, 0.0, 6);
    setup.wait_caught_up(LIMIT);
    let keys = setup.oracle().keys_expected;
    p.terminate();
    std::fs::remove_dir_all(setup.state_dir()).unwrap();

    let p = Processor::start(&setup, "a", &[]);
    p.wait_ready(3, LIMIT);
    let restored = p.metric("tally_restore_records_total");
    // Every applied event left a dedupe record, every key at least one state record.
    assert!(
        restored >= (sent.valid_events + keys) as f64,
        "restored only {restored} records"
    );
    // Redelivering the same history must change nothing: the restored dedupe index knows it all.
    setup.load(3_000, 400, 0.0, 0.0, 0.0, 6);
    setup.wait_caught_up(LIMIT);
    let report = setup.oracle();
    assert_trusted(&report);
    assert_eq!(p.metric("tally_events_processed_total"), 0.0);
}
