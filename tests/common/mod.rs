//! Shared harness of the integration tests: one real broker per run, fresh topics and group per
//! test, the `tally` binary as a child process, and the independent oracle to judge results.
#![allow(dead_code)]

pub mod faults;
pub mod pipeline;
mod processor;
pub mod proof;
pub mod secure;

use processor::stacks_of;
#[allow(unused_imports)]
pub use processor::{http, metric_sum, Processor};
#[allow(unused_imports)]
pub use secure::secure;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tally::oracle::{OracleReport, OracleSpec};
use tally::workload::{Flow, LoadReport, LoadSpec};

/// Bootstrap servers of the run's broker: `TALLY_TEST_BOOTSTRAP`, else one started on 19092.
pub fn bootstrap() -> &'static str {
    static BOOTSTRAP: OnceLock<String> = OnceLock::new();
    BOOTSTRAP.get_or_init(|| {
        if let Ok(b) = std::env::var("TALLY_TEST_BOOTSTRAP") {
            return b;
        }
        let port = std::env::var("TALLY_TEST_KAFKA_PORT").unwrap_or_else(|_| "19092".into());
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/local/kafka");
        let status = Command::new(script)
            .arg("up")
            .env("KAFKA_PORT", &port)
            .status()
            .expect("run deploy/local/kafka up");
        assert!(status.success(), "the test broker did not start");
        format!("127.0.0.1:{port}")
    })
}

/// A name unique to this test and run.
pub fn unique(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("t-{name}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

/// A free TCP port on loopback for a processor's HTTP endpoint.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One flow's topics and the processor configuration around them.
#[derive(Clone)]
pub struct Setup {
    pub bootstrap: String,
    pub app: String,
    pub flow: Flow,
    pub input: String,
    pub output: String,
    pub dlq: String,
    pub partitions: i32,
    pub dir: PathBuf,
    pub guarantee: &'static str,
    /// The processors' `dedupe_retention`; the oracle expects expired ids to leave the changelog.
    pub dedupe_retention: Duration,
    pub commit_interval_ms: u64,
    /// The processors' `commit_max_events`.
    pub commit_max_events: usize,
    /// The processors' `[kafka]` settings besides the test defaults.
    pub kafka: BTreeMap<String, String>,
    /// Settings of the test's own clients (topic creation, load, oracle): an admin principal on
    /// a secured broker.
    pub client: BTreeMap<String, String>,
    /// More TOML appended to every processor config (tables such as `[health]`).
    pub extra: String,
    /// More lines under the processors' `[kafka]`, as written (`"k" = { env = "V" }`).
    pub kafka_raw: String,
    /// Where the processors connect, when not where the test's clients do (another listener).
    pub processor_bootstrap: Option<String>,
}

/// The key every test processor trusts for repairs (`[[control.keys]]` id `test`).
pub const CONTROL_KEY: &str = "test-control-key-0123456789";

impl Setup {
    /// Fresh topics (input created here) and a fresh state dir for one test.
    pub fn new(name: &str, flow: Flow, partitions: i32) -> Self {
        Self::on(bootstrap(), name, flow, partitions, 1)
    }

    /// Like [`Setup::new`], on another cluster and with the input's replication factor.
    pub fn on(bootstrap: &str, name: &str, flow: Flow, partitions: i32, replication: i32) -> Self {
        Self::with_clients(
            bootstrap,
            BTreeMap::new(),
            name,
            flow,
            partitions,
            replication,
        )
    }

    /// Like [`Setup::on`], with the test's own clients using `client` settings.
    pub fn with_clients(
        bootstrap: &str,
        client: BTreeMap<String, String>,
        name: &str,
        flow: Flow,
        partitions: i32,
        replication: i32,
    ) -> Self {
        let app = unique(name);
        let dir = std::env::temp_dir().join(&app);
        std::fs::create_dir_all(&dir).unwrap();
        let s = Self {
            bootstrap: bootstrap.to_string(),
            input: format!("{app}.in"),
            output: format!("{app}.out"),
            dlq: format!("{app}.dlq"),
            app,
            flow,
            partitions,
            dir,
            guarantee: "exactly_once",
            dedupe_retention: Duration::from_secs(7 * 86_400),
            commit_interval_ms: 100,
            commit_max_events: 20_000,
            kafka: BTreeMap::new(),
            client,
            extra: String::new(),
            kafka_raw: String::new(),
            processor_bootstrap: None,
        };
        let topics = tally::kafka::topics::Topics::connect(bootstrap, &s.client).unwrap();
        topics
            .create(
                &s.input,
                partitions,
                replication,
                tally::kafka::topics::TopicRole::Log,
            )
            .unwrap();
        // Every broker learns of a new topic on its own time: a processor started at once once
        // asked one that did not know it yet, and refused to start ("input topic does not
        // exist"). Wait until each broker of the cluster knows it.
        let deadline = Instant::now() + Duration::from_secs(30);
        for broker in bootstrap.split(',') {
            let one = tally::kafka::topics::Topics::connect(broker, &s.client).unwrap();
            while one.partitions(&s.input).ok().flatten() != Some(partitions) {
                assert!(
                    Instant::now() < deadline,
                    "broker {broker} never saw {}",
                    s.input
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        s
    }

    /// The flow's changelog topic.
    pub fn changelog(&self) -> String {
        let flow = match self.flow {
            Flow::Inventory => "inventory",
            Flow::Ledger => "ledger",
        };
        format!("{}-{flow}-changelog", self.app)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Writes a config for instance `instance` and returns its path.
    pub fn config(&self, instance: &str, http_port: u16) -> PathBuf {
        let flow = match self.flow {
            Flow::Inventory => "inventory",
            Flow::Ledger => "ledger",
        };
        let text = format!(
            r#"application_id = "{app}"
bootstrap_servers = "{bootstrap}"
state_dir = "{state}"
processing_guarantee = "{guarantee}"
commit_interval_ms = {commit_interval_ms}
commit_max_events = {commit_max_events}
instance_id = "{instance}"
transaction_timeout_ms = 10000
dedupe_retention = "{retention}ms"
[[flows]]
name = "{flow}"
input = "{input}"
output = "{output}"
dead_letter = "{dlq}"
[[control.keys]]
id = "test"
secret = "{control_key}"
[http]
listen = "127.0.0.1:{http_port}"
{extra}
[kafka]
"session.timeout.ms" = "6000"
{kafka}"#,
            control_key = CONTROL_KEY,
            extra = self.extra,
            kafka = self
                .kafka
                .iter()
                .map(|(k, v)| format!("{k:?} = {v:?}\n"))
                .chain([self.kafka_raw.clone()])
                .collect::<String>(),
            app = self.app,
            bootstrap = self.processor_bootstrap.as_ref().unwrap_or(&self.bootstrap),
            retention = self.dedupe_retention.as_millis(),
            commit_interval_ms = self.commit_interval_ms,
            commit_max_events = self.commit_max_events,
            state = self.state_dir().join(instance).display(),
            guarantee = self.guarantee,
            input = self.input,
            output = self.output,
            dlq = self.dlq,
        );
        let path = self.dir.join(format!("{instance}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Produces a deterministic workload into the input topic.
    pub fn load(
        &self,
        events: u64,
        keys: u64,
        duplicates: f64,
        invalid: f64,
        conflicts: f64,
        seed: u64,
    ) -> LoadReport {
        self.load_at(events, keys, duplicates, invalid, conflicts, seed, 0)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn load_at(
        &self,
        events: u64,
        keys: u64,
        duplicates: f64,
        invalid: f64,
        conflicts: f64,
        seed: u64,
        rate: u64,
    ) -> LoadReport {
        let spec = LoadSpec {
            flow: self.flow,
            events,
            keys,
            duplicates,
            invalid,
            conflicts,
            rate,
            seed,
        };
        tally::workload::produce(&self.bootstrap, &self.client, &self.input, &spec).expect("load")
    }

    /// Waits until the group committed every input record (panics after `limit`).
    pub fn wait_caught_up(&self, limit: Duration) {
        let started = Instant::now();
        loop {
            // Errors right after start-up (coordinator loading) count as "not yet".
            let lag = tally::kafka::progress::group_lag(
                &self.bootstrap,
                &self.client,
                &self.app,
                &[&self.input],
            )
            .unwrap_or(i64::MAX);
            if lag == 0 {
                return;
            }
            if started.elapsed() >= limit {
                panic!(
                    "group {} still lags by {lag} after {limit:?}; thread stacks of its \
                     processors: {}",
                    self.app,
                    self.stacks_of_processors()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Dumps the thread stacks of every running processor of this setup beside its log, and
    /// says where: a stalled group leaves more than its lag.
    fn stacks_of_processors(&self) -> String {
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return "none (no /proc)".into();
        };
        let mut dumped = Vec::new();
        for entry in procs.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let Some(config) = args.iter().skip_while(|a| *a != "--config").nth(1) else {
                continue;
            };
            let config = Path::new(config);
            if config.parent() == Some(self.dir.as_path()) {
                dumped.push(stacks_of(pid, &config.with_extension("log")));
            }
        }
        dumped.join(", ")
    }

    /// The independent recomputation of every key, compared with the output topic.
    pub fn oracle(&self) -> OracleReport {
        tally::oracle::check(&OracleSpec {
            bootstrap: self.bootstrap.clone(),
            kafka: self.client.clone(),
            flow: self.flow,
            input: self.input.clone(),
            output: self.output.clone(),
            dead_letter: self.dlq.clone(),
            group: Some(self.app.clone()),
            changelog: Some(self.changelog()),
            dedupe_retention_ms: self.dedupe_retention.as_millis() as i64,
            repeats_allowed: self.guarantee == "at_least_once",
        })
        .expect("oracle")
    }
}

/// Produces `(key, value)` records to partition 0 of `topic`, in order, and waits for them.
pub fn send(topic: &str, records: &[(&str, &str)]) {
    let bytes: Vec<_> = records
        .iter()
        .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
        .collect();
    send_bytes(topic, &bytes);
}

/// [`send`] of records that are not text (changelog records).
pub fn send_bytes(topic: &str, records: &[(&[u8], &[u8])]) {
    send_to(topic, 0, records);
}

/// [`send_bytes`] to partition `partition`.
pub fn send_to(topic: &str, partition: i32, records: &[(&[u8], &[u8])]) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = tally::kafka::clients::base(bootstrap(), &BTreeMap::new())
        .create()
        .unwrap();
    for (k, v) in records {
        producer
            .send(
                BaseRecord::to(topic)
                    .partition(partition)
                    .key(*k)
                    .payload(*v),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

/// One record read back from a topic.
#[derive(Debug)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: BTreeMap<String, String>,
}

/// Every committed record of a topic, partition by partition.
pub fn read_all(topic: &str) -> Vec<Record> {
    read_all_on(bootstrap(), topic)
}

/// [`read_all`] on another cluster.
pub fn read_all_on(bootstrap: &str, topic: &str) -> Vec<Record> {
    read_all_with(bootstrap, &BTreeMap::new(), topic)
}

/// [`read_all`] on another cluster, with client settings (a secured one).
pub fn read_all_with(
    bootstrap: &str,
    settings: &BTreeMap<String, String>,
    topic: &str,
) -> Vec<Record> {
    let consumer =
        tally::kafka::clients::quiet_reader(bootstrap, settings, &unique("reader")).unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let n = md.topics()[0].partitions().len();
    for p in 0..n as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut eof = 0;
    let mut out = Vec::new();
    let started = Instant::now();
    while eof < n && started.elapsed() < Duration::from_secs(60) {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                let mut headers = BTreeMap::new();
                if let Some(h) = m.headers() {
                    for hd in h.iter() {
                        headers.insert(
                            hd.key.to_string(),
                            String::from_utf8_lossy(hd.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                out.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers,
                });
            }
            Some(Err(KafkaError::PartitionEOF(_))) => eof += 1,
            _ => {}
        }
    }
    out
}

/// Asserts the oracle's verdict with its report in the message.
pub fn assert_trusted(report: &OracleReport) {
    assert!(
        report.pass,
        "oracle: {}",
        serde_json::to_string_pretty(report).unwrap()
    );
}
