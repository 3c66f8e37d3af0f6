//! A flow that reads Debezium's change events: an insert is applied, a heartbeat or tombstone is
//! counted and passed, an update of an append-only history is dead-lettered; each moves the
//! commit point past it.

use std::collections::BTreeMap;

use tally_topology::{ChangePolicy, History};

use super::{dead_reasons, outputs, Harness, TaskOps};
use crate::input::{Format, InputReader, Skip};

fn cdc(on_update: ChangePolicy) -> Harness {
    let mut history = History::kafka();
    history.on_update = on_update;
    Harness::reading(InputReader::new(Format::DebeziumCdc, &BTreeMap::new(), &history).unwrap())
}

fn change(op: &str, id: &str, n: i64) -> String {
    format!(
        r#"{{"before":null,"after":{{"id":"{id}","key":"a","n":{n},"t":1000}},"source":{{"ts_ms":900,"lsn":1}},"op":"{op}"}}"#
    )
}

#[test]
fn an_insert_is_applied_as_its_after_row() {
    let mut h = cdc(ChangePolicy::DeadLetter);
    h.record(0, Some(b"a"), Some(change("c", "e1", 3).as_bytes()));
    assert_eq!(outputs(&h.ship()), [("a".to_string(), 3)]);
    assert_eq!(h.task.staging.counts.source_timestamps, [900]);
}

#[test]
fn a_heartbeat_and_a_tombstone_are_counted_and_passed() {
    let mut h = cdc(ChangePolicy::DeadLetter);
    h.record(0, Some(br#"{"serverName":"s"}"#), Some(br#"{"ts_ms":5}"#));
    h.record(1, Some(b"a"), None);
    assert!(h.ship().is_empty());
    assert_eq!(
        h.task.staging.counts.skipped,
        [(Skip::Heartbeat, 1), (Skip::Tombstone, 1)]
    );
    assert_eq!(h.task.commit_point().input, 2);
}

#[test]
fn an_update_of_an_append_only_history_is_dead_lettered() {
    let mut h = cdc(ChangePolicy::DeadLetter);
    h.record(0, Some(b"a"), Some(change("u", "e1", 3).as_bytes()));
    assert_eq!(dead_reasons(&h.ship()), ["unsupported_change"]);
    assert_eq!(h.task.commit_point().input, 1);
}

#[test]
fn an_update_the_contract_skips_changes_nothing() {
    let mut h = cdc(ChangePolicy::Skip);
    h.record(0, Some(b"a"), Some(change("u", "e1", 3).as_bytes()));
    assert!(h.ship().is_empty());
    assert_eq!(h.task.staging.counts.skipped, [(Skip::Change, 1)]);
}
