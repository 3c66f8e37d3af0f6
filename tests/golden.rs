//! Golden replay: a fixed history (versions 1 and 2 mixed, redeliveries in either version, a
//! conflict, late and invalid events) gives the committed golden state and golden evidence,
//! straight through and through a kill -9 in the middle. `TALLY_BLESS=1` rewrites the goldens.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{bootstrap, read_all, Processor, Setup};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;
use tally::workload::Flow;

const LIMIT: Duration = Duration::from_secs(120);

fn history() -> Vec<(String, String)> {
    include_str!("golden/history.jsonl")
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["key"].as_str().unwrap().to_string(),
                v["value"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn send(topic: &str, records: &[(String, String)]) {
    let producer: BaseProducer = tally::kafka::clients::base(bootstrap(), &BTreeMap::new())
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for (k, v) in records {
        producer
            .send(BaseRecord::to(topic).key(k.as_str()).payload(v.as_str()))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// Runs the history through a processor (killed half-way when `crash`), then returns the last
/// output record per key and the masked evidence of a dry-run replay.
fn run(name: &str, crash: bool) -> (Value, Value) {
    let setup = Setup::new(name, Flow::Inventory, 2);
    let h = history();
    let (first, rest) = h.split_at(h.len() / 2);
    let p = Processor::start(&setup, "a", &[]);
    send(&setup.input, first);
    let p = if crash {
        setup.wait_caught_up(LIMIT);
        p.kill9();
        Processor::start(&setup, "a", &[])
    } else {
        p
    };
    send(&setup.input, rest);
    setup.wait_caught_up(LIMIT);
    let mut state = BTreeMap::new();
    for r in read_all(&setup.output) {
        if let (Some(k), Some(v)) = (r.key, r.value) {
            state.insert(
                String::from_utf8(k).unwrap(),
                serde_json::from_slice::<Value>(&v).unwrap(),
            );
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["replay", "--flow", "inventory", "--config"])
        .arg(setup.dir.join("a.toml"))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let mut evidence: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no evidence ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    for masked in ["recovery_id", "started_at", "finished_at", "source_topic"] {
        evidence[masked] = Value::from("<masked>");
    }
    p.terminate();
    (serde_json::to_value(state).unwrap(), evidence)
}

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

fn check(name: &str, got: &Value) {
    let path = golden(name);
    if std::env::var("TALLY_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(&path, serde_json::to_string_pretty(got).unwrap() + "\n").unwrap();
        return;
    }
    let want: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        got,
        &want,
        "{name} differs from its golden file; got:\n{}",
        serde_json::to_string_pretty(got).unwrap()
    );
}

#[rstest::rstest]
#[case::straight_through("golden-straight", false)]
#[case::through_a_crash("golden-crash", true)]
fn the_golden_history_replays_to_golden_state_and_evidence(
    #[case] name: &str,
    #[case] crash: bool,
) {
    let (state, evidence) = run(name, crash);
    check("state.json", &state);
    check("evidence.json", &evidence);
}
