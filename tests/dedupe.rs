//! Against a real broker: redelivered events are applied once; an event id reused with other
//! content is dead-lettered as `duplicate_conflict`, never applied.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{assert_trusted, read_all, send, send_bytes, send_to, Processor, Setup};
use tally::workload::Flow;
use tally_state::bundle::decode_bundle;
use tally_state::dedupe::UNKNOWN_OFFSET;
use tally_state::{ChangelogKey, DedupeEntry, RecordKind};
use tally_topology::{Inventory, Partitioner, Projection};

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
    // (ids in live bundles, bundle tombstones, per-id records): a bundle holds one
    // shipment's entries and is tombstoned once its newest entry left the window.
    let dedupe = || {
        let mut bundles: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        let (mut tombstones, mut per_id) = (0u64, 0u64);
        for r in read_all(&setup.changelog()) {
            match (r.key, r.value) {
                (Some(k), _) if k.starts_with(b"d") => per_id += 1,
                (Some(k), Some(v)) if k.starts_with(b"b") => {
                    bundles.insert(k, v);
                }
                (Some(k), None) if k.starts_with(b"b") => {
                    bundles.remove(&k);
                    tombstones += 1;
                }
                _ => {}
            }
        }
        let mut ids = HashSet::new();
        for v in bundles.values() {
            decode_bundle(v, |id, _| {
                ids.insert(id.to_vec());
            })
            .expect("a readable bundle");
        }
        (ids.len() as u64, tombstones, per_id)
    };
    // Expiry is lazy: each commit sweeps a slice of the store, and entries still in the commit
    // being made are swept by a later one; it sweeps below the last committed watermark, so a
    // load that ended in its very first commit has no tombstones until the next one. A trickle
    // follows, of events two hours past the load: they move the watermark past every bundle of
    // the load, however a busy host grouped its entries into shipments (a bundle lives as long
    // as its newest entry, and a late shipment can span the whole load).
    let started = std::time::Instant::now();
    let mut round = 0u64;
    let (live, expired, per_id) = loop {
        let (live, expired, per_id) = dedupe();
        // A liveness bound, not a timing: a trickle's few entries per commit sweep the
        // minimum slice of the bundles the load made.
        if live < sent.valid_events / 2 || started.elapsed() > Duration::from_secs(240) {
            break (live, expired, per_id);
        }
        for k in 0..4 {
            let sku = format!("sku-{:06}", (round * 4 + k) % 100);
            let event = adjust(
                &format!("late-{round}-{k}"),
                &sku,
                1,
                "2026-06-19T02:00:00Z",
            );
            // The partition the loader's partitioner gives the key, as the oracle expects.
            let partition = Partitioner::default().partition(sku.as_bytes(), 2);
            send_to(
                &setup.input,
                partition,
                &[(sku.as_bytes(), event.as_bytes())],
            );
        }
        round += 1;
        setup.wait_caught_up(Duration::from_secs(60));
    };
    assert!(expired > 0, "no expiry tombstones");
    assert_eq!(
        per_id, 0,
        "per-id dedupe records are an older tally's format"
    );
    assert!(
        live > 0 && live < sent.valid_events / 2,
        "{live} ids still live after {} events",
        sent.valid_events
    );
    assert_trusted(&setup.oracle());
}

fn adjust(id: &str, sku: &str, quantity: i64, at: &str) -> String {
    format!(
        r#"{{"event_id":"{id}","schema_version":1,"sku":"{sku}","seller_id":"s","location_id":"fc-1","bucket":"sellable","operation":"adjust","quantity":{quantity},"event_time":"{at}"}}"#
    )
}

/// A changelog of an older tally holds one record per dedupe entry. A newer tally restores it,
/// skips the redelivery it names, and sends that record's tombstone once it leaves the window
/// (its own entries go out in bundles).
#[test]
fn per_id_dedupe_records_of_an_older_tally_are_honoured_then_tombstoned() {
    let mut setup = Setup::new("legacy", Flow::Inventory, 1);
    setup.dedupe_retention = Duration::from_secs(600);
    let old = adjust("old-1", "sku-a", 5, "2026-06-19T10:00:00Z");
    let event = Inventory::decode(Some(b"sku-a"), old.as_bytes()).expect("a valid event");
    let entry = DedupeEntry {
        fingerprint: Inventory::fingerprint(&event),
        event_time_ms: Inventory::event_time_ms(&event),
        offset: UNKNOWN_OFFSET,
    };
    let key = ChangelogKey::encode(RecordKind::Dedupe, b"old-1");
    let topics =
        tally::kafka::topics::Topics::connect(&setup.bootstrap, &Default::default()).unwrap();
    topics
        .create(
            &setup.changelog(),
            1,
            1,
            tally::kafka::topics::TopicRole::Compacted,
        )
        .unwrap();
    send_bytes(&setup.changelog(), &[(&key, &entry.encode())]);
    let p = Processor::start(&setup, "a", &[]);
    p.wait_ready(1, Duration::from_secs(60));
    send(&setup.input, &[("sku-a", &old)]);
    setup.wait_caught_up(Duration::from_secs(60));
    assert_eq!(p.metric("tally_duplicates_skipped_total"), 1.0);
    assert_eq!(p.metric("tally_events_processed_total"), 0.0);
    // Twenty minutes of event time later the entry is outside the window; expiry sweeps below
    // the last committed watermark, so a few more commits follow.
    let started = std::time::Instant::now();
    let tombstoned = || {
        read_all(&setup.changelog())
            .iter()
            .any(|r| r.key.as_deref() == Some(&key[..]) && r.value.is_none())
    };
    for n in 0.. {
        if tombstoned() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the per-id record was never tombstoned"
        );
        let id = format!("new-{n}");
        send(
            &setup.input,
            &[("sku-b", &adjust(&id, "sku-b", 1, "2026-06-19T10:20:00Z"))],
        );
        setup.wait_caught_up(Duration::from_secs(60));
    }
    // The oracle cannot judge this history (it never saw the older tally's entry).
    assert!(
        !read_all(&setup.output)
            .iter()
            .any(|r| r.key.as_deref() == Some(&b"sku-a"[..])),
        "the event the older tally applied was applied again"
    );
}

/// Under at_least_once a failed commit can leave later records (a later watermark, expiry
/// tombstones) in the changelog. The redelivered records must be judged from the committed
/// position's watermark, as they were the first time, or a duplicate inside the retention window
/// looks expired and is applied twice.
#[test]
fn a_failed_commit_under_at_least_once_does_not_move_the_dedupe_window() {
    let mut setup = Setup::new("window", Flow::Inventory, 1);
    setup.guarantee = "at_least_once";
    setup.dedupe_retention = Duration::from_secs(600);
    // One commit must hold both records of the second send.
    setup.commit_interval_ms = 2_000;
    let original = adjust("w-1", "sku-a", 5, "2026-06-19T10:00:00Z");
    let p = Processor::start(&setup, "a", &[]);
    p.wait_ready(1, Duration::from_secs(60));
    send(&setup.input, &[("sku-a", &original)]);
    setup.wait_caught_up(Duration::from_secs(60));
    p.terminate();
    // The next processor's first commit dies after its records landed, before its offsets are
    // committed. The duplicate comes while the window still holds the original; the record
    // after it moves the watermark 20 minutes on, past the original's retention.
    let mut p = Processor::start(&setup, "a", &[("TALLY_FAULT", "before_commit_offsets@1")]);
    p.wait_ready(1, Duration::from_secs(60));
    let later = adjust("w-2", "sku-c", 1, "2026-06-19T10:20:00Z");
    send(&setup.input, &[("sku-a", &original), ("sku-c", &later)]);
    let started = std::time::Instant::now();
    while !p.exited() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the fault never fired"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _p = Processor::start(&setup, "a", &[]);
    setup.wait_caught_up(Duration::from_secs(60));
    let last_a = read_all(&setup.output)
        .into_iter()
        .rfind(|r| r.key.as_deref() == Some(&b"sku-a"[..]))
        .and_then(|r| r.value)
        .map(|v| serde_json::from_slice::<serde_json::Value>(&v).unwrap());
    let last_a = last_a.expect("sku-a has an output");
    assert_eq!(last_a["sellable"], 5, "the duplicate was applied: {last_a}");
    assert_eq!(last_a["events_applied"], 1, "{last_a}");
    assert_trusted(&setup.oracle());
}
