//! The metering flow on a real broker, as its owner would test it: usage with redeliveries and
//! conflicting ids, a kill -9 of the processor in the middle of the load, an independent
//! recomputation of every customer's bill written here, `reconcile` trusted, and a forged output
//! record repaired by a signed `replay --apply`.
//!
//! The broker: `TALLY_TEST_BOOTSTRAP` (tally's `deploy/local/test` starts one), else one started
//! on port 19092 with tally's own script.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use tally::kafka::topics::{TopicRole, Topics};

const PARTITIONS: i32 = 4;
const LIMIT: Duration = Duration::from_secs(180);
const CONTROL_KEY: &str = "metering-test-key-0123456789";

fn bootstrap() -> &'static str {
    static B: OnceLock<String> = OnceLock::new();
    B.get_or_init(|| {
        if let Ok(b) = std::env::var("TALLY_TEST_BOOTSTRAP") {
            return b;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/local/kafka");
        let ok = Command::new(script)
            .arg("up")
            .env("KAFKA_PORT", "19092")
            .status()
            .expect("start the broker");
        assert!(ok.success(), "the test broker did not start");
        "127.0.0.1:19092".into()
    })
}

/// A flow of fresh topics, its config and its state directory.
struct Flow {
    app: String,
    dir: PathBuf,
    config: PathBuf,
}

impl Flow {
    fn new(name: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let app = format!("m-{name}-{}-{}", std::process::id(), nanos % 1_000_000_000);
        let dir = std::env::temp_dir().join(&app);
        std::fs::create_dir_all(&dir).unwrap();
        let topics = Topics::connect(bootstrap(), &BTreeMap::new()).unwrap();
        topics
            .create(&format!("{app}.usage"), PARTITIONS, 1, TopicRole::Log)
            .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join("metering.toml");
        std::fs::write(
            &config,
            format!(
                r#"application_id = "{app}"
bootstrap_servers = "{bootstrap}"
state_dir = "{state}"
instance_id = "a"
transaction_timeout_ms = 10000
# Ids are remembered by event time: a billing flow keeps them longer than its billing period,
# or a redelivery from last month would bill again.
dedupe_retention = "62d"
[[flows]]
name = "metering"
input = "{app}.usage"
output = "{app}.bills"
dead_letter = "{app}.usage.dlq"
[[control.keys]]
id = "ops"
secret = "{CONTROL_KEY}"
[http]
listen = "127.0.0.1:{port}"
[kafka]
"session.timeout.ms" = "6000"
"#,
                bootstrap = bootstrap(),
                state = dir.join("state").display(),
            ),
        )
        .unwrap();
        Self { app, dir, config }
    }

    fn input(&self) -> String {
        format!("{}.usage", self.app)
    }

    fn output(&self) -> String {
        format!("{}.bills", self.app)
    }

    fn start(&self) -> Child {
        let log = std::fs::File::create(self.dir.join(format!(
            "run-{}.log",
            SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()
        )))
        .unwrap();
        Command::new(env!("CARGO_BIN_EXE_metering"))
            .args(["run", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// Runs a metering command with the flow's config; its exit status and its JSON.
    fn tool(&self, args: &[&str]) -> (bool, Value) {
        let out = Command::new(env!("CARGO_BIN_EXE_metering"))
            .args(args)
            .args(["--flow", "metering", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?}: no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.success(), v)
    }

    fn wait_caught_up(&self) {
        let started = Instant::now();
        loop {
            let lag = tally::kafka::progress::group_lag(
                bootstrap(),
                &BTreeMap::new(),
                &self.app,
                &[&self.input()],
            )
            .unwrap_or(i64::MAX);
            if lag == 0 {
                return;
            }
            assert!(
                started.elapsed() < LIMIT,
                "still {lag} behind after {LIMIT:?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// A deterministic usage stream: `n` events over 40 customers, 3 meters and two months, then
/// redeliveries of earlier events and conflicting reuses of their ids.
fn usage(n: u64) -> Vec<(String, String)> {
    let meters = ["api_calls", "storage_gb", "seats"];
    let event = |i: u64, quantity: u64| {
        let customer = format!("cust-{:02}", (i * 7) % 40);
        let day = 1 + (i % 28);
        let month = if i.is_multiple_of(3) { "05" } else { "06" };
        let v = format!(
            r#"{{"event_id":"u-{i}","schema_version":1,"customer_id":"{customer}","meter":"{}","quantity":{quantity},"event_time":"2026-{month}-{day:02}T10:00:00Z"}}"#,
            meters[(i % 3) as usize],
        );
        (customer, v)
    };
    let mut out: Vec<_> = (0..n).map(|i| event(i, 1 + i % 9)).collect();
    // 5% redeliveries (the same bytes), 1% conflicts (the same id, another quantity).
    out.extend((0..n / 20).map(|j| event(j * 13 % n, 1 + (j * 13 % n) % 9)));
    out.extend((0..n / 100).map(|j| event(j * 17 % n, 100)));
    out
}

fn produce(topic: &str, records: &[(String, String)], per_second: u64) {
    let producer: BaseProducer = tally::kafka::clients::base(bootstrap(), &BTreeMap::new())
        .create()
        .unwrap();
    let started = Instant::now();
    for (i, (k, v)) in records.iter().enumerate() {
        let mut r: BaseRecord<'_, str, str> =
            BaseRecord::to(topic).key(k.as_str()).payload(v.as_str());
        while let Err((KafkaError::MessageProduction(_), back)) = producer.send(r) {
            r = back;
            producer.poll(Duration::from_millis(10));
        }
        if per_second > 0 {
            let due = Duration::from_secs_f64(i as f64 / per_second as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

/// Every record of a topic, per partition in offset order: (partition, key, value).
fn read(topic: &str) -> Vec<(i32, Option<String>, Option<String>)> {
    let c = tally::kafka::clients::quiet_reader(
        bootstrap(),
        &BTreeMap::new(),
        &format!("{topic}-reader"),
    )
    .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let n = md.topics()[0].partitions().len();
    let mut tpl = TopicPartitionList::new();
    for p in 0..n as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let (mut eof, mut out) = (0, Vec::new());
    let started = Instant::now();
    while eof < n && started.elapsed() < Duration::from_secs(60) {
        match c.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => out.push((
                m.partition(),
                m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                m.payload().map(|v| String::from_utf8_lossy(v).into_owned()),
            )),
            Some(Err(KafkaError::PartitionEOF(_))) => eof += 1,
            _ => {}
        }
    }
    out
}

/// Units per customer, meter and billing period.
type Bills = BTreeMap<String, BTreeMap<String, BTreeMap<String, i64>>>;

/// The bills recomputed from the input alone: per customer, per meter, per period; the first
/// occurrence of an id counts, a later one with other content does not. Also the conflicts.
fn recompute(flow: &Flow) -> (Bills, u64) {
    let mut seen: HashMap<(i32, String), String> = HashMap::new();
    let mut bills: Bills = BTreeMap::new();
    let mut conflicts = 0;
    for (p, _, value) in read(&flow.input()) {
        let Some(value) = value else { continue };
        let e: Value = serde_json::from_str(&value).unwrap();
        let id = e["event_id"].as_str().unwrap().to_string();
        match seen.get(&(p, id.clone())) {
            Some(first) if *first == value => continue,
            Some(_) => {
                conflicts += 1;
                continue;
            }
            None => {
                seen.insert((p, id), value.clone());
            }
        }
        let period = e["event_time"].as_str().unwrap()[..7].to_string();
        *bills
            .entry(e["customer_id"].as_str().unwrap().into())
            .or_default()
            .entry(e["meter"].as_str().unwrap().into())
            .or_default()
            .entry(period)
            .or_default() += e["quantity"].as_i64().unwrap();
    }
    (bills, conflicts)
}

/// The last output per customer: meter -> period -> units, checking each total.
fn bills(flow: &Flow) -> Bills {
    let mut last = BTreeMap::new();
    for (_, key, value) in read(&flow.output()) {
        if let (Some(k), Some(v)) = (key, value) {
            last.insert(k, v);
        }
    }
    last.into_iter()
        .map(|(customer, v)| {
            let doc: Value = serde_json::from_str(&v).unwrap();
            let meters = doc["meters"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(meter, m)| {
                    let periods: BTreeMap<String, i64> =
                        serde_json::from_value(m["periods"].clone()).unwrap();
                    assert_eq!(m["total"].as_i64().unwrap(), periods.values().sum::<i64>());
                    (meter.clone(), periods)
                })
                .collect();
            (customer, meters)
        })
        .collect()
}

#[test]
fn usage_is_billed_once_through_redeliveries_conflicts_and_a_kill_9_and_a_forged_bill_is_repaired()
{
    let flow = Flow::new("bill");
    let events = usage(6_000);
    let mut p = flow.start();
    let loader = {
        let (topic, events) = (flow.input(), events.clone());
        std::thread::spawn(move || produce(&topic, &events, 2_000))
    };
    std::thread::sleep(Duration::from_millis(1_500));
    p.kill().unwrap();
    p.wait().unwrap();
    let mut p = flow.start();
    loader.join().unwrap();
    flow.wait_caught_up();

    let (expected, conflicts) = recompute(&flow);
    assert!(conflicts > 0, "the load holds conflicts");
    assert_eq!(
        bills(&flow),
        expected,
        "every bill equals the recomputation"
    );
    assert_eq!(
        read(&format!("{}.usage.dlq", flow.app)).len() as u64,
        conflicts
    );
    let (ok, ev) = flow.tool(&["reconcile"]);
    assert!(ok, "{ev:#}");
    assert_eq!(ev["confidence_status"], "trusted");

    // A bill nobody computed: the output record of one customer, overwritten by hand.
    let forged = r#"{"customer_id":"cust-07","meters":{},"events_applied":0}"#;
    produce(&flow.output(), &[("cust-07".into(), forged.into())], 0);
    let (ok, drift) = flow.tool(&["reconcile"]);
    assert!(!ok, "a forged bill is found: {drift:#}");
    let failing = drift["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "output_matches_state")
        .unwrap();
    assert!(
        failing["examples"].to_string().contains("cust-07"),
        "{failing}"
    );
    let (ok, repair) = flow.tool(&[
        "replay",
        "--apply",
        "--reason",
        "forged bill",
        "--actor",
        "billing-ops",
    ]);
    assert!(ok, "{repair:#}");
    assert_eq!(repair["rows_repaired"], 1);
    assert_eq!(repair["operator"]["actor"], "billing-ops");
    let (ok, after) = flow.tool(&["reconcile"]);
    assert!(ok, "{after:#}");
    assert_eq!(bills(&flow), expected);
    let _ = p.kill();
    let _ = p.wait();
}
