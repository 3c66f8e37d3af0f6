//! Against a real broker: live state changes only through a repair an authorized operator signed.
//! A forged, tampered or foreign-key control record is refused, counted and audited, and the
//! state stays as it was; an operation that changes state needs a reason.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::{bootstrap, read_all, send, Processor, Setup, CONTROL_KEY};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;
use tally::config::ControlKey;
use tally::secret::Secret;
use tally::signing::{self, Authority};
use tally::workload::Flow;
use tally_state::{ChangelogKey, RecordKind};
use tally_topology::{Inventory, Projection};

const LIMIT: Duration = Duration::from_secs(120);

fn adjust(id: &str, q: i64) -> String {
    format!(
        r#"{{"event_id":"{id}","schema_version":1,"sku":"sku-1","seller_id":"s","location_id":"fc-1","bucket":"sellable","operation":"adjust","quantity":{q},"event_time":"2026-06-19T18:23:11Z"}}"#
    )
}

/// A flow with one SKU at sellable 8, and its processor.
fn flow_at_8(name: &str) -> (Setup, Processor) {
    let setup = Setup::new(name, Flow::Inventory, 1);
    let p = Processor::start(&setup, "a", &[]);
    send(
        &setup.input,
        &[("sku-1", &adjust("a-1", 5)), ("sku-1", &adjust("a-2", 3))],
    );
    setup.wait_caught_up(LIMIT);
    assert_eq!(sellable(&setup), 8);
    (setup, p)
}

/// The live state of sku-1 in the changelog, with its sellable set to `to`, encoded.
fn patched_state(setup: &Setup, to: i64) -> Vec<u8> {
    let changelog = read_all(&setup.changelog());
    let value = changelog
        .iter()
        .rev()
        .find(|r| {
            r.key
                .as_deref()
                .and_then(|k| ChangelogKey::parse(k).ok())
                .is_some_and(|k| k.kind == RecordKind::State && k.id == b"sku-1")
        })
        .and_then(|r| r.value.clone())
        .expect("sku-1 has a state");
    let mut state = Inventory::decode_state(&value).unwrap();
    state.locations.get_mut("fc-1").unwrap().sellable = to;
    let mut out = Vec::new();
    Inventory::encode_state(&state, &mut out);
    out
}

fn sellable(setup: &Setup) -> i64 {
    let out = read_all(&setup.output);
    let last = out
        .iter()
        .rev()
        .find(|r| r.key.as_deref() == Some(b"sku-1"))
        .expect("an output for sku-1");
    let v: Value = serde_json::from_slice(last.value.as_deref().unwrap()).unwrap();
    v["sellable"].as_i64().unwrap()
}

/// Sends one record to the control topic, as anyone with write access to it could.
fn send_control(setup: &Setup, value: &[u8], headers: OwnedHeaders) {
    let topic = format!("{}-inventory-control", setup.app);
    let producer: BaseProducer = tally::kafka::clients::base(bootstrap(), &BTreeMap::new())
        .create()
        .unwrap();
    producer
        .send(
            BaseRecord::to(&topic)
                .partition(0)
                .key(&b"sku-1"[..])
                .payload(value)
                .headers(headers),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();
}

/// The signed headers of a control record for sku-1 carrying `value`, signed with `secret`.
fn signed(setup: &Setup, value: &[u8], secret: &str, key_id: &str) -> OwnedHeaders {
    let key = ControlKey {
        id: key_id.into(),
        secret: Secret::new(secret.into()),
        actors: Vec::new(),
    };
    let authority = Authority {
        recovery_id: "forged-1".into(),
        actor: "mallory".into(),
        key_id: key_id.into(),
        bound: i64::MAX,
        signed_at_ms: tally::clock::now_ms(),
    };
    let topic = format!("{}-inventory-control", setup.app);
    let record = signing::Record {
        topic: &topic,
        partition: 0,
        key: Some(b"sku-1"),
        value: Some(value),
    };
    signing::headers(&authority, &signing::sign(&key, &record, &authority))
}

/// Waits until the processor counted a refusal for `reason`, then checks nothing changed and
/// the refusal was audited on the evidence topic.
fn refused(setup: &Setup, p: &Processor, reason: &str) {
    let started = std::time::Instant::now();
    let label = format!("reason=\"{reason}\"");
    while !p.get("/metrics").is_some_and(|(_, body)| {
        body.lines()
            .any(|l| l.starts_with("tally_repairs_refused_total") && l.contains(&label))
    }) {
        assert!(started.elapsed() < LIMIT, "no refusal for {reason}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(p.metric("tally_repairs_applied_total"), 0.0);
    assert_eq!(sellable(setup), 8, "the state is unchanged");
    let audits: Vec<Value> = read_all(&format!("{}-evidence", setup.app))
        .iter()
        .filter_map(|r| serde_json::from_slice(r.value.as_deref()?).ok())
        .collect();
    assert!(
        audits.iter().any(|a| a["kind"] == "repair_refused"
            && a["refusal"] == reason
            && a["key"] == "sku-1"),
        "{audits:#?}"
    );
}

#[test]
fn a_forged_unsigned_repair_is_refused_audited_and_changes_nothing() {
    let (setup, p) = flow_at_8("forged");
    let forged = patched_state(&setup, 63);
    let headers = OwnedHeaders::new().insert(Header {
        key: signing::BOUND_HEADER,
        value: Some(&i64::MAX.to_string()),
    });
    send_control(&setup, &forged, headers);
    refused(&setup, &p, "unsigned");
}

#[test]
fn a_repair_signed_with_a_key_the_processor_does_not_hold_is_refused() {
    let (setup, p) = flow_at_8("foreign-key");
    let forged = patched_state(&setup, 63);
    let headers = signed(&setup, &forged, "a-key-the-processor-never-saw", "test");
    send_control(&setup, &forged, headers);
    refused(&setup, &p, "bad_signature");
}

#[test]
fn a_signed_repair_altered_in_transit_is_refused() {
    let (setup, p) = flow_at_8("tampered");
    let honest = patched_state(&setup, 9);
    let headers = signed(&setup, &honest, CONTROL_KEY, "test");
    let tampered = patched_state(&setup, 63);
    send_control(&setup, &tampered, headers);
    refused(&setup, &p, "bad_signature");
}

#[test]
fn a_repair_without_a_reason_is_not_sent() {
    let (setup, p) = flow_at_8("no-reason");
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args([
            "replay",
            "--apply",
            "--actor",
            "alice",
            "--flow",
            "inventory",
            "--config",
        ])
        .arg(setup.dir.join("a.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--reason"), "{stderr}");
    assert_eq!(p.metric("tally_repairs_applied_total"), 0.0);
}
