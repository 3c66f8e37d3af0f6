//! Against a real broker: poison records go to the dead-letter topic with their original bytes
//! and the error headers, and the partition keeps processing the records after them.

mod common;

use std::time::Duration;

use common::{assert_trusted, read_all, send, Processor, Setup};
use tally::workload::Flow;

const GOOD_1: &str = r#"{"event_id":"g-1","schema_version":1,"sku":"sku-1","seller_id":"s","location_id":"fc-1","bucket":"sellable","operation":"adjust","quantity":5,"event_time":"2026-06-19T18:23:11Z"}"#;
const GOOD_2: &str = r#"{"event_id":"g-2","schema_version":1,"sku":"sku-1","seller_id":"s","location_id":"fc-1","bucket":"sellable","operation":"adjust","quantity":7,"event_time":"2026-06-19T18:24:11Z"}"#;
const NOT_JSON: &str = "{not json";
const BAD_BUCKET: &str = r#"{"event_id":"b-1","schema_version":1,"sku":"sku-1","seller_id":"s","location_id":"fc-1","bucket":"lost","operation":"adjust","quantity":5,"event_time":"2026-06-19T18:23:11Z"}"#;

#[test]
fn poison_records_are_dead_lettered_with_headers_and_the_partition_goes_on() {
    let setup = Setup::new("poison", Flow::Inventory, 1);
    let _p = Processor::start(&setup, "a", &[]);
    send(
        &setup.input,
        &[
            ("sku-1", GOOD_1),
            ("sku-1", NOT_JSON),
            ("sku-1", BAD_BUCKET),
            ("other", GOOD_2),
            ("sku-1", GOOD_2),
        ],
    );
    setup.wait_caught_up(Duration::from_secs(60));

    let dead = read_all(&setup.dlq);
    assert_eq!(dead.len(), 3, "{dead:?}");
    let reasons: Vec<_> = dead
        .iter()
        .map(|r| r.headers["tally.error.reason"].as_str())
        .collect();
    assert_eq!(
        reasons,
        ["malformed_json", "unknown_bucket", "key_mismatch"]
    );
    let first = &dead[0];
    assert_eq!(
        first.value.as_deref(),
        Some(NOT_JSON.as_bytes()),
        "original bytes are kept"
    );
    assert_eq!(first.key.as_deref(), Some(&b"sku-1"[..]));
    assert_eq!(first.headers["tally.source.topic"], setup.input);
    assert_eq!(first.headers["tally.source.partition"], "0");
    assert_eq!(first.headers["tally.source.offset"], "1");
    assert_eq!(first.headers["tally.error.stage"], "decode");
    assert!(!first.headers["tally.error.message"].is_empty());

    let out = read_all(&setup.output);
    let last: serde_json::Value =
        serde_json::from_slice(out.last().unwrap().value.as_deref().unwrap()).unwrap();
    assert_eq!(
        last["sellable"], 12,
        "records after the poison were applied: {last}"
    );
    assert_eq!(last["events_applied"], 2);
    assert_eq!(last["source"]["offset"], 4);
    assert_trusted(&setup.oracle());
}

#[test]
fn a_mixed_poison_workload_dead_letters_exactly_what_was_injected() {
    let setup = Setup::new("poison-mix", Flow::Ledger, 4);
    let _p = Processor::start(&setup, "a", &[]);
    let sent = setup.load(5_000, 300, 0.05, 0.05, 0.01, 3);
    setup.wait_caught_up(Duration::from_secs(120));
    let report = setup.oracle();
    assert_trusted(&report);
    assert_eq!(report.dead_letters_found, sent.invalid + sent.conflicts);
    let by_reason = &report.dead_letters_by_reason;
    for (reason, n) in &sent.invalid_by_reason {
        assert_eq!(
            by_reason.get(reason),
            Some(n),
            "reason {reason}: {by_reason:?}"
        );
    }
}
