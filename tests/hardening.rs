//! Against a real broker, with its default limits: input that cannot be projected as it is
//! (a record near or over the broker's limit, a state that would outgrow its topic, a null key)
//! is dead-lettered and the partition goes on; nothing loops, and the instance says so.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{bootstrap, read_all, send, Processor, Setup};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use sha2::{Digest, Sha256};
use tally::workload::Flow;

const LIMIT: Duration = Duration::from_secs(120);

fn good(id: &str, sku: &str, location: &str, q: i64) -> String {
    format!(
        r#"{{"event_id":"{id}","schema_version":1,"sku":"{sku}","seller_id":"s","location_id":"{location}","bucket":"sellable","operation":"adjust","quantity":{q},"event_time":"2026-06-19T18:23:11Z"}}"#
    )
}

/// Produces raw records (a key may be null) to partition 0, with a client that sends records
/// up to `max_bytes`.
fn produce(topic: &str, records: &[(Option<&[u8]>, &[u8])], max_bytes: usize) {
    let producer: BaseProducer = tally::kafka::clients::base(bootstrap(), &BTreeMap::new())
        .set("message.max.bytes", max_bytes.to_string())
        .create()
        .unwrap();
    for (k, v) in records {
        let mut r: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).partition(0).payload(*v);
        if let Some(k) = k {
            r = r.key(*k);
        }
        producer.send(r).map_err(|(e, _)| e).unwrap();
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

/// Creates `topic` with one partition, a `max.message.bytes` of its own and `cleanup.policy`.
fn topic_with_limit(topic: &str, max_bytes: usize, policy: &str) {
    let admin: AdminClient<DefaultClientContext> =
        tally::kafka::clients::base(bootstrap(), &BTreeMap::new())
            .create()
            .unwrap();
    let limit = max_bytes.to_string();
    let t = NewTopic::new(topic, 1, TopicReplication::Fixed(1))
        .set("max.message.bytes", &limit)
        .set("cleanup.policy", policy);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let res = rt
        .block_on(admin.create_topics([&t], &AdminOptions::new()))
        .unwrap();
    assert!(res.iter().all(Result::is_ok), "{res:?}");
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The last output of `sku`, as JSON.
fn last_output(setup: &Setup, sku: &str) -> serde_json::Value {
    let out = read_all(&setup.output);
    let rec = out
        .iter()
        .rev()
        .find(|r| r.key.as_deref() == Some(sku.as_bytes()))
        .unwrap_or_else(|| panic!("no output for {sku}"));
    serde_json::from_slice(rec.value.as_deref().unwrap()).unwrap()
}

/// An oversized poison record is dead-lettered cut to fit, and what follows it is applied.
fn poison_of(setup: &Setup, size: usize, producer_max: usize) {
    let p = Processor::start(setup, "a", &[]);
    p.wait_ready(1, LIMIT);
    let poison = vec![b'#'; size];
    let (g1, g2) = (
        good("g-1", "sku-1", "fc-1", 5),
        good("g-2", "sku-1", "fc-1", 7),
    );
    produce(
        &setup.input,
        &[
            (Some(b"sku-1"), g1.as_bytes()),
            (Some(b"sku-1"), &poison),
            (Some(b"sku-1"), g2.as_bytes()),
        ],
        producer_max,
    );
    setup.wait_caught_up(LIMIT);

    let dead = read_all(&setup.dlq);
    assert_eq!(dead.len(), 1, "one dead letter");
    let d = &dead[0];
    assert_eq!(d.headers["tally.error.reason"], "malformed_json");
    assert_eq!(d.headers["tally.truncated"], "value");
    assert_eq!(d.headers["tally.original.value.bytes"], size.to_string());
    assert_eq!(
        d.headers["tally.original.value.sha256"],
        sha256_hex(&poison)
    );
    let kept = d.value.as_deref().unwrap();
    assert!(kept.len() < 1_000_000 && poison.starts_with(kept));
    assert_eq!(d.key.as_deref(), Some(&b"sku-1"[..]));
    assert_eq!(last_output(setup, "sku-1")["sellable"], 12);
    assert_eq!(
        p.metric("tally_transactions_aborted_total"),
        0.0,
        "no rollback"
    );
    assert_eq!(p.get("/healthz").map(|r| r.0), Some(200));
    assert_eq!(p.get("/readyz").map(|r| r.0), Some(200));
}

#[test]
fn a_poison_record_just_under_the_brokers_limit_is_dead_lettered_cut_to_fit() {
    let setup = Setup::new("poison-1mb", Flow::Inventory, 1);
    poison_of(&setup, 1_040_000, 1_048_576);
}

#[test]
fn a_5_mb_poison_record_on_a_topic_that_takes_it_is_dead_lettered_cut_to_fit() {
    let mut setup = Setup::new("poison-5mb", Flow::Inventory, 1);
    setup.input = format!("{}.big", setup.app);
    topic_with_limit(&setup.input, 6 * 1024 * 1024, "delete");
    poison_of(&setup, 5 * 1024 * 1024, 6 * 1024 * 1024);
}

#[test]
fn an_event_that_would_outgrow_its_output_topic_is_dead_lettered_too_large() {
    let setup = Setup::new("too-large", Flow::Inventory, 1);
    // A 100 kB output topic: one SKU at ~300 locations with 250-byte names outgrows it.
    topic_with_limit(&setup.output, 100_000, "compact");
    let p = Processor::start(&setup, "a", &[]);
    p.wait_ready(1, LIMIT);
    let events: Vec<(String, String)> = (0..400)
        .map(|i| {
            let location = format!("{i:04}-{}", "l".repeat(245));
            (
                "sku-big".to_string(),
                good(&format!("big-{i}"), "sku-big", &location, 1),
            )
        })
        .chain([(
            "sku-small".to_string(),
            good("small-1", "sku-small", "fc-1", 3),
        )])
        .collect();
    let refs: Vec<(&str, &str)> = events
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    send(&setup.input, &refs);
    setup.wait_caught_up(LIMIT);

    let dead = read_all(&setup.dlq);
    assert!(!dead.is_empty(), "the events past the limit are refused");
    assert!(dead
        .iter()
        .all(|d| d.headers["tally.error.reason"] == "too_large"));
    let big = last_output(&setup, "sku-big");
    let applied = big["events_applied"].as_u64().unwrap();
    assert_eq!(
        applied + dead.len() as u64,
        400,
        "each event applied or refused"
    );
    assert!(read_all(&setup.output)
        .iter()
        .all(|r| r.value.as_ref().is_some_and(|v| v.len() < 100_000)));
    assert_eq!(last_output(&setup, "sku-small")["sellable"], 3);
    assert_eq!(
        p.metric("tally_transactions_aborted_total"),
        0.0,
        "no rollback"
    );
}

#[test]
fn a_record_with_a_null_key_is_dead_lettered_with_a_null_key() {
    let setup = Setup::new("null-key", Flow::Inventory, 1);
    let _p = Processor::start(&setup, "a", &[]);
    produce(&setup.input, &[(None, b"{not json")], 1_000_000);
    setup.wait_caught_up(LIMIT);
    let dead = read_all(&setup.dlq);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].key, None, "null stays null");
}

#[test]
fn an_unreachable_bootstrap_fails_the_start_quickly_naming_the_address() {
    let mut setup = Setup::new("unreachable", Flow::Inventory, 1);
    setup.bootstrap = "127.0.0.1:1".into();
    let mut p = Processor::start(&setup, "a", &[]);
    let started = Instant::now();
    while !p.exited() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "still trying after 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(&p.log).unwrap();
    assert!(log.contains("cannot reach Kafka at 127.0.0.1:1"), "{log}");
}

#[test]
fn reconcile_offers_no_apply() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["reconcile", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && help.contains("--scope"), "{help}");
    assert!(!help.contains("--apply"), "{help}");
}

#[test]
fn a_numeric_instance_id_from_the_environment_is_a_name() {
    let setup = Setup::new("numeric-instance", Flow::Inventory, 1);
    let p = Processor::start(&setup, "a", &[("TALLY_INSTANCE_ID", "1")]);
    p.wait_ready(1, LIMIT);
    send(&setup.input, &[("sku-1", &good("n-1", "sku-1", "fc-1", 2))]);
    setup.wait_caught_up(LIMIT);
    assert_eq!(last_output(&setup, "sku-1")["sellable"], 2);
}

#[test]
fn an_adjust_of_minus_2_pow_63_on_a_new_sku_is_refused_and_reconcile_stays_trusted() {
    let setup = Setup::new("min-adjust", Flow::Inventory, 1);
    let p = Processor::start(&setup, "a", &[]);
    let most_negative = good("m-1", "sku-new", "fc-1", 0)
        .replace("\"quantity\":0", &format!("\"quantity\":{}", i64::MIN));
    send(
        &setup.input,
        &[
            ("sku-new", &most_negative),
            ("sku-new", &good("m-2", "sku-new", "fc-1", 4)),
        ],
    );
    setup.wait_caught_up(LIMIT);
    let dead = read_all(&setup.dlq);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].headers["tally.error.reason"], "invariant_violated");
    assert!(dead[0].headers["tally.error.message"].contains("sellable_non_negative"));
    assert_eq!(last_output(&setup, "sku-new")["sellable"], 4);
    p.terminate();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["reconcile", "--flow", "inventory", "--config"])
        .arg(setup.dir.join("a.toml"))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let evidence: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success(), "{evidence:#}");
    assert_eq!(evidence["confidence_status"], "trusted");
    assert_eq!(evidence["dead_lettered"], 1);
}
