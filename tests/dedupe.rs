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
