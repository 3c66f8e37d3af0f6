//! Paired A/B runs on one broker: the same pre-loaded input caught up by each variant in turn,
//! alternating, several rounds. `TALLY_BENCH_AB=binA,binB` compares two builds of tally;
//! `TALLY_BENCH_TLS=1` compares one build over plaintext, SASL_SSL as a super user and
//! SASL_SSL as an ACL'd principal, on a secured broker with a plaintext listener added.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use tally::kafka::topics::{TopicRole, Topics};

use super::env_or;
use super::support::{inventory_load, measured_catch_up, write_instance_config, Broker, Measured};

/// One way of running the processor: a binary, a bootstrap and extra `[kafka]` settings.
pub struct Variant {
    pub name: String,
    pub bin: PathBuf,
    pub bootstrap: String,
    pub kafka: BTreeMap<String, String>,
    /// A principal to grant the application's ACLs to, before its run.
    pub grant: Option<String>,
}

/// Loads `events` once on `load_bootstrap`, then times each variant's catch-up, alternating the
/// order each round; prints one line per run and a summary per variant.
pub fn compare(load_bootstrap: &str, variants: &[Variant], secure_port: Option<u16>) {
    let events: u64 = env_or("TALLY_BENCH_EVENTS", 1_000_000);
    let keys: u64 = env_or("TALLY_BENCH_KEYS", 100_000);
    let partitions: i32 = env_or("TALLY_BENCH_PARTITIONS", 12);
    let rounds: usize = env_or("TALLY_BENCH_ROUNDS", 3);
    let run = super::run_id();
    let work = std::env::temp_dir().join(format!("tally-ab-{run}"));
    let none = BTreeMap::new();
    let topics = Topics::connect(load_bootstrap, &none).unwrap();
    let input = format!("ab-{run}.in");
    topics
        .create(&input, partitions, 1, TopicRole::Log)
        .unwrap();
    let spec = inventory_load(events, keys, 0, 1);
    tally::workload::produce(load_bootstrap, &none, &input, &spec).unwrap();
    eprintln!("loaded {events} events ({keys} SKUs, {partitions} partitions)");
    let mut results: BTreeMap<String, Vec<Measured>> = BTreeMap::new();
    // Round 0 warms the broker's transactional paths and is not counted.
    for round in 0..=rounds {
        let order: Vec<&Variant> = if round % 2 == 0 {
            variants.iter().collect()
        } else {
            variants.iter().rev().collect()
        };
        for v in order {
            let app = format!("ab-{run}-{}-{round}", v.name);
            let config =
                write_instance_config(&work, &app, &v.bootstrap, &input, "exactly_once", "bench");
            append_kafka(&config, &v.kafka);
            if let (Some(principal), Some(port)) = (&v.grant, secure_port) {
                grant(port, principal, &app, &input);
            }
            std::env::set_var("TALLY_BENCH_BIN", &v.bin);
            let log = work.join(format!("{app}.log"));
            let m = measured_catch_up(
                &config,
                &log,
                load_bootstrap,
                &app,
                &input,
                events,
                Broker::port(),
            );
            eprintln!(
                "round {round} {:<16} {:>7.0} events/s, {:>5.2} us CPU/event (broker {:.2}), peak RSS {:.0} MiB",
                v.name,
                m.events_per_sec,
                m.cpu_seconds * 1e6 / events as f64,
                m.broker_cpu_seconds * 1e6 / events as f64,
                m.peak_rss_mib
            );
            if round > 0 {
                results.entry(v.name.clone()).or_default().push(m);
            }
        }
    }
    let per_event = |s: f64| s * 1e6 / events as f64;
    for (name, runs) in &results {
        eprintln!(
            "{name:<16} events/s {}; us CPU/event {}; broker us CPU/event {}; peak RSS MiB {}",
            spread(runs.iter().map(|m| m.events_per_sec), 0),
            spread(runs.iter().map(|m| per_event(m.cpu_seconds)), 2),
            spread(runs.iter().map(|m| per_event(m.broker_cpu_seconds)), 2),
            spread(runs.iter().map(|m| m.peak_rss_mib), 0),
        );
    }
    let _ = std::fs::remove_dir_all(&work);
}

/// "min / median / max" of the values.
fn spread(values: impl Iterator<Item = f64>, decimals: usize) -> String {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    format!(
        "{:.*} / {:.*} / {:.*}",
        decimals,
        v[0],
        decimals,
        v[v.len() / 2],
        decimals,
        v[v.len() - 1]
    )
}

fn append_kafka(config: &Path, kafka: &BTreeMap<String, String>) {
    if kafka.is_empty() {
        return;
    }
    let mut text = std::fs::read_to_string(config).unwrap();
    text.push_str("[kafka]\n");
    for (k, v) in kafka {
        text.push_str(&format!("{k:?} = {v:?}\n"));
    }
    std::fs::write(config, text).unwrap();
}

fn grant(port: u16, principal: &str, app: &str, input: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/local/kafka");
    let ok = Command::new(script)
        .args([
            "grant",
            "--principal",
            principal,
            "--app",
            app,
            "--input",
            input,
        ])
        .args([
            "--output",
            &format!("{app}.out"),
            "--dead-letter",
            &format!("{app}.dlq"),
        ])
        .env("KAFKA_PORT", port.to_string())
        .status()
        .expect("grant");
    assert!(ok.success(), "grant failed");
}

/// The librdkafka settings the secured broker wrote for `who` (e.g. `tally-sasl`).
pub fn settings(port: u16, who: &str) -> BTreeMap<String, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("deploy/local/run/{port}/secure/{who}.toml"));
    let text = std::fs::read_to_string(&path).unwrap();
    let table: toml::Table = text.parse().unwrap();
    table
        .into_iter()
        .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_string()))
        .collect()
}

/// Extra broker properties that add a plaintext listener on `port + 2` to the secured broker
/// (its principal, ANONYMOUS, a super user): the A/B's plain side on the same broker.
pub fn plaintext_listener(port: u16) -> String {
    let (mtls, plain, controller) = (port + 1, port + 2, port + 1000);
    format!(
        "listeners=SASL_SSL://127.0.0.1:{port},MTLS://127.0.0.1:{mtls},PLAIN://127.0.0.1:{plain},CONTROLLER://127.0.0.1:{controller} \
         advertised.listeners=SASL_SSL://127.0.0.1:{port},MTLS://127.0.0.1:{mtls},PLAIN://127.0.0.1:{plain} \
         listener.security.protocol.map=SASL_SSL:SASL_SSL,MTLS:SSL,CONTROLLER:SSL,PLAIN:PLAINTEXT \
         super.users=User:broker;User:admin;User:ANONYMOUS"
    )
}
