//! Against a real broker: drift of every kind (a corrupted store row, a skipped event, a
//! double-applied event, a deleted output record) is found by `reconcile` with the keys named,
//! repaired by `replay --apply` through the owning task, and a second reconcile is trusted.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::{bootstrap, Processor, Setup};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;
use tally::workload::Flow;
use tally_state::{CommitBatch, DedupeEntry, Store, StoreOptions};
use tally_topology::{Inventory, Partitioner, Projection};

const LIMIT: Duration = Duration::from_secs(120);
const SKUS: u32 = 40;

/// A valid inventory adjust (always positive, so every invariant holds).
fn adjust(id: &str, sku: u32, q: i64, second: u32) -> (String, String) {
    let sku = format!("sku-{sku:03}");
    let v = format!(
        r#"{{"event_id":"{id}","schema_version":1,"sku":"{sku}","seller_id":"s-1","location_id":"fc-1","bucket":"sellable","operation":"adjust","quantity":{q},"event_time":"2026-06-19T10:{:02}:{:02}Z"}}"#,
        second / 60 % 60,
        second % 60
    );
    (sku, v)
}

fn send(topic: &str, records: &[(String, Option<String>)]) {
    let producer: BaseProducer = tally::kafka::clients::base(bootstrap(), &BTreeMap::new())
        .create()
        .unwrap();
    for (k, v) in records {
        let mut r: BaseRecord<'_, str, str> = BaseRecord::to(topic).key(k.as_str());
        if let Some(v) = v {
            r = r.payload(v.as_str());
        }
        producer.send(r).map_err(|(e, _)| e).unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// Runs the tally binary; returns its exit status and the JSON it printed.
fn tally(setup: &Setup, args: &[&str]) -> (bool, Value) {
    let config = setup.dir.join("recovery.toml");
    if !config.exists() {
        std::fs::copy(setup.dir.join("a.toml"), &config).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .arg("--config")
        .arg(&config)
        .arg("--flow")
        .arg("inventory")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "tally {args:?} printed no JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), v)
}

fn store(setup: &Setup, sku: &str, partitions: i32) -> Store {
    let p = Partitioner::ConsistentRandom.partition(sku.as_bytes(), partitions);
    let path = setup
        .state_dir()
        .join("a")
        .join(&setup.app)
        .join("inventory")
        .join(p.to_string());
    Store::open(&path, StoreOptions::default()).unwrap()
}

fn failing(evidence: &Value, check: &str) -> Vec<String> {
    evidence["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == check)
        .map(|c| {
            c["examples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e.as_str().unwrap().split(':').next().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn injected_drift_is_reported_repaired_and_then_trusted() {
    let partitions = 4;
    let setup = Setup::new("drift", Flow::Inventory, partitions);
    let p = Processor::start(&setup, "a", &[]);
    let mut history: Vec<(String, Option<String>)> = Vec::new();
    for i in 0..400u32 {
        let (k, v) = adjust(&format!("e-{i}"), i % SKUS, i64::from(i % 7) + 1, i);
        history.push((k, Some(v)));
    }
    send(&setup.input, &history);
    setup.wait_caught_up(LIMIT);
    let (ok, clean) = tally(&setup, &["reconcile"]);
    assert!(ok, "a clean flow reconciles: {clean:#}");
    assert_eq!(clean["events_processed"], 400);
    assert_eq!(clean["keys_in_scope"], SKUS);
    p.terminate();

    // 1. A corrupted store row (sku-001): its next event carries the damage to the changelog.
    let s = store(&setup, "sku-001", partitions);
    let mut row = Inventory::decode_state(&s.state(b"sku-001").unwrap().unwrap()).unwrap();
    row.locations.get_mut("fc-1").unwrap().sellable += 1000;
    let mut bytes = Vec::new();
    Inventory::encode_state(&row, &mut bytes);
    let mut b = CommitBatch::default();
    b.put_state(b"sku-001", &bytes);
    s.commit(b).unwrap();
    drop(s);
    // 2. A skipped event (sku-002): its id is already in the dedupe index.
    let skipped = adjust("e-skip", 2, 5, 500);
    let ev = Inventory::decode(Some(skipped.0.as_bytes()), skipped.1.as_bytes()).unwrap();
    let s = store(&setup, "sku-002", partitions);
    let mut b = CommitBatch::default();
    b.put_dedupe(
        b"e-skip",
        DedupeEntry {
            fingerprint: Inventory::fingerprint(&ev),
            event_time_ms: Inventory::event_time_ms(&ev),
            offset: tally_state::dedupe::UNKNOWN_OFFSET,
        },
    );
    s.commit(b).unwrap();
    drop(s);
    // 3. A double-applied event (sku-003, e-3): its dedupe entry is lost, then it is redelivered.
    let s = store(&setup, "sku-003", partitions);
    let mut b = CommitBatch::default();
    b.remove_dedupe(b"e-3");
    s.commit(b).unwrap();
    drop(s);
    // 4. A deleted output record (sku-004).
    send(&setup.output, &[("sku-004".to_string(), None)]);

    let p = Processor::start(&setup, "a", &[]);
    let touch = adjust("e-touch", 1, 1, 501);
    send(
        &setup.input,
        &[
            (touch.0, Some(touch.1)),
            (skipped.0, Some(skipped.1)),
            history[3].clone(),
        ],
    );
    setup.wait_caught_up(LIMIT);

    let (ok, drift) = tally(&setup, &["reconcile"]);
    assert!(!ok, "drift must fail the reconcile: {drift:#}");
    assert_eq!(drift["confidence_status"], "untrusted");
    assert_eq!(drift["projection_rows_changed"], 3, "{drift:#}");
    assert_eq!(
        drift["changed_keys"],
        serde_json::json!(["sku-001", "sku-002", "sku-003"])
    );
    assert_eq!(failing(&drift, "output_matches_state"), vec!["sku-004"]);
    assert_eq!(
        drift["events_processed"], 402,
        "the skip is applied, the redelivery not"
    );
    assert_eq!(drift["duplicates_skipped"], 1);

    eprintln!("reconcile evidence after drift: {drift:#}");
    let apply = ["replay", "--apply", "--reason", "drift found by reconcile"];
    let (ok, repair) = tally(&setup, &[&apply[..], &["--actor", "alice"]].concat());
    eprintln!("replay --apply evidence: {repair:#}");
    assert!(ok, "the repair is confirmed: {repair:#}");
    assert_eq!(
        repair["rows_repaired"], 4,
        "3 states and 1 output: {repair:#}"
    );
    assert_eq!(repair["operator"]["actor"], "alice");
    assert_eq!(repair["operator"]["reason"], "drift found by reconcile");
    assert_eq!(repair["operator"]["key_id"], "test");
    assert_eq!(
        repair["repaired_keys"],
        serde_json::json!(["sku-001", "sku-002", "sku-003", "sku-004"])
    );
    assert_eq!(p.metric("tally_repairs_applied_total"), 4.0);
    // Each owner wrote an audit record of what it applied, for whom, in its own transaction.
    let audits: Vec<Value> = common::read_all(&format!("{}-evidence", setup.app))
        .iter()
        .filter_map(|r| serde_json::from_slice(r.value.as_deref()?).ok())
        .filter(|a: &Value| a["kind"] == "repair_applied")
        .collect();
    assert_eq!(audits.len(), 4, "{audits:#?}");
    assert!(audits
        .iter()
        .all(|a| a["actor"] == "alice" && a["recovery_id"] == repair["recovery_id"]));

    let (ok, after) = tally(&setup, &["reconcile"]);
    assert!(ok, "repaired state reconciles: {after:#}");
    assert_eq!(after["projection_rows_changed"], 0);
    assert_eq!(after["state_digest_before"], repair["state_digest_after"]);
    p.terminate();
}

#[test]
fn a_key_scoped_dry_run_names_only_that_key_and_changes_nothing() {
    let setup = Setup::new("drift-key", Flow::Inventory, 3);
    let p = Processor::start(&setup, "a", &[]);
    let records: Vec<_> = (0..120u32)
        .map(|i| {
            let (k, v) = adjust(&format!("k-{i}"), i % 10, 2, i);
            (k, Some(v))
        })
        .collect();
    send(&setup.input, &records);
    setup.wait_caught_up(LIMIT);
    // Drift in another key must not show in a replay scoped to sku-005.
    send(&setup.output, &[("sku-006".to_string(), None)]);
    let (ok, ev) = tally(&setup, &["replay", "--scope", "key=sku-005"]);
    assert!(ok, "{ev:#}");
    assert_eq!(ev["scope"], "key=sku-005");
    assert_eq!(ev["mode"], "dry_run");
    assert_eq!(ev["keys_in_scope"], 1);
    assert_eq!(ev["events_processed"], 12);
    assert_eq!(ev["source_offsets"].as_object().unwrap().len(), 1);
    let (ok, all) = tally(&setup, &["reconcile"]);
    assert!(!ok);
    assert_eq!(failing(&all, "output_matches_state"), vec!["sku-006"]);
    assert_eq!(p.metric("tally_repairs_applied_total"), 0.0);
    p.terminate();
}

#[test]
fn time_travel_answers_a_past_state_and_explains_it() {
    let setup = Setup::new("travel", Flow::Inventory, 2);
    let p = Processor::start(&setup, "a", &[]);
    let records: Vec<_> = (0..6u32)
        .map(|i| {
            let (k, v) = adjust(&format!("t-{i}"), 7, i64::from(i) + 1, i * 60);
            (k, Some(v))
        })
        .collect();
    send(&setup.input, &records);
    setup.wait_caught_up(LIMIT);
    let config = setup.dir.join("a.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["state", "get", "--flow", "inventory", "--key", "sku-007"])
        .args(["--as-of", "2026-06-19T10:02:30Z", "--explain", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    // Events at 10:00, 10:01, 10:02 happened by 10:02:30: 1 + 2 + 3.
    assert_eq!(v["state"]["sellable"], 6, "{v:#}");
    assert_eq!(v["events_applied"], 3);
    let ids: Vec<&str> = v["explain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["t-0", "t-1", "t-2"]);
    p.terminate();
}
