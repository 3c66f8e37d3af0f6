//! The Debezium pipeline of the integration tests: the run's PostgreSQL and Kafka Connect
//! (`TALLY_TEST_PG_PORT`, `TALLY_TEST_CONNECT_PORT`, else started once per process on the test
//! broker), and per test a database, an outbox or change-data-capture connector (its name is also
//! its replication slot), topics and a group; the deterministic writer; `tally reconcile
//! --against-source` as a child process; and what the topics say, counted independently of the
//! processor.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use tally::cli::local::{self, Cdc, Connect, Outbox, Postgres};
use tally::workload::postgres::{self as writer, History, PgReport, PgSpec};
use tally::workload::Flow;

use super::{bootstrap, free_port, http, read_all, Processor, Record, Setup};

/// Partitions of a pipeline's input topic.
pub const PARTITIONS: i32 = 6;

/// The run's PostgreSQL and Kafka Connect.
pub struct Servers {
    pub pg: Postgres,
    pub connect: Connect,
}

fn port(var: &str, default: u16) -> (u16, bool) {
    match std::env::var(var) {
        Ok(p) => (
            p.parse().unwrap_or_else(|_| panic!("{var}={p} is no port")),
            true,
        ),
        Err(_) => (default, false),
    }
}

/// PostgreSQL on `TALLY_TEST_PG_PORT` and Kafka Connect on `TALLY_TEST_CONNECT_PORT` (started by
/// deploy/local/test), else both started here once per process (ports 19432 and 19083).
pub fn servers() -> &'static Servers {
    static SERVERS: OnceLock<Servers> = OnceLock::new();
    SERVERS.get_or_init(|| {
        let (pg_port, pg_given) = port("TALLY_TEST_PG_PORT", 19432);
        let (connect_port, connect_given) = port("TALLY_TEST_CONNECT_PORT", 19083);
        let pg = if pg_given {
            Postgres { port: pg_port }
        } else {
            Postgres::up(pg_port).expect("deploy/local/postgres up")
        };
        let connect = if connect_given {
            Connect {
                port: connect_port,
                bootstrap: bootstrap().to_string(),
            }
        } else {
            Connect::up(connect_port, bootstrap()).expect("deploy/local/connect up")
        };
        Servers { pg, connect }
    })
}

/// Tests share the servers, but a test that kills or restarts one would fail the writers and
/// disturb the connectors of the others: it holds this exclusively, the others shared.
static SERVERS_IN_USE: RwLock<()> = RwLock::new(());

/// Held for the whole of a test that leaves the servers running.
pub fn sharing() -> RwLockReadGuard<'static, ()> {
    SERVERS_IN_USE
        .read()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Held for the whole of a test that kills or restarts Kafka Connect or PostgreSQL.
pub fn disrupting() -> RwLockWriteGuard<'static, ()> {
    SERVERS_IN_USE
        .write()
        .unwrap_or_else(PoisonError::into_inner)
}

/// What the writer put into PostgreSQL, from the specs alone (the writer is deterministic).
#[derive(Default)]
pub struct Written {
    /// Every outbox row's id.
    pub ids: BTreeSet<String>,
    /// The skus of the history rows: the keys the source folds.
    pub skus: BTreeSet<String>,
    /// The poison rows' ids (an outbox row only) with the dead-letter reason of each.
    pub poison: BTreeMap<String, &'static str>,
    /// History rows.
    pub valid: u64,
}

impl Written {
    pub fn of<'a>(specs: impl IntoIterator<Item = &'a PgSpec>) -> Self {
        let mut w = Self::default();
        for spec in specs {
            w.add(spec);
        }
        w
    }

    pub fn add(&mut self, spec: &PgSpec) {
        for row in writer::rows(spec) {
            assert!(
                self.ids.insert(row.event_id.clone()),
                "two specs share an id"
            );
            match row.history {
                History::Stock { sku, .. } => {
                    self.skus.insert(sku);
                    self.valid += 1;
                }
                History::Poison(reason) => {
                    self.poison.insert(row.event_id, reason);
                }
                History::Posting { .. } => panic!("the pipeline tests write inventory only"),
            }
        }
    }

    /// Poison rows by reason.
    pub fn poison_by_reason(&self) -> BTreeMap<String, u64> {
        let mut by = BTreeMap::new();
        for reason in self.poison.values() {
            *by.entry(reason.to_string()).or_default() += 1;
        }
        by
    }
}

/// An inventory spec of the pipeline tests: 2% poison, 20 events per transaction.
pub fn spec(events: u64, keys: u64, rate: u64, seed: u64) -> PgSpec {
    PgSpec {
        flow: Flow::Inventory,
        events,
        keys,
        invalid: 0.02,
        batch: 20,
        rate,
        seed,
    }
}

/// The input topic as counted by the outbox `id` header: records, and those whose id was seen
/// before (relayed again), the valid and the poison ones apart.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Relayed {
    pub records: u64,
    pub valid_again: u64,
    pub poison_again: u64,
}

pub fn relayed(input: &[Record], written: &Written) -> Relayed {
    relayed_by(input, written, |rec| {
        let id = rec
            .headers
            .get("id")
            .expect("an outbox record without an id header");
        Some(id.clone())
    })
}

/// The input topic of a change-data-capture pipeline as counted by the event_id of each inserted
/// or snapshot-read row (the change event's `after`): records, and those whose row was seen
/// before. The table has no poison rows.
pub fn relayed_cdc(input: &[Record], written: &Written) -> Relayed {
    relayed_by(input, written, inserted_id)
}

fn relayed_by(
    input: &[Record],
    written: &Written,
    id_of: impl Fn(&Record) -> Option<String>,
) -> Relayed {
    let mut seen = HashSet::new();
    let mut r = Relayed::default();
    for rec in input {
        r.records += 1;
        let Some(id) = id_of(rec) else { continue };
        if !seen.insert(id.clone()) {
            if written.poison.contains_key(&id) {
                r.poison_again += 1;
            } else {
                r.valid_again += 1;
            }
        }
    }
    r
}

/// A Debezium change event's value: `op` and the `after` row (none for a tombstone).
pub fn change_event(rec: &Record) -> Option<(String, Value)> {
    let v: Value = serde_json::from_slice(rec.value.as_deref()?).expect("a change event is JSON");
    Some((v["op"].as_str()?.to_string(), v["after"].clone()))
}

/// The event_id of the row a change event inserted (`c`) or read in a snapshot (`r`).
pub fn inserted_id(rec: &Record) -> Option<String> {
    match change_event(rec)? {
        (op, after) if op == "c" || op == "r" => Some(after["event_id"].as_str()?.to_string()),
        _ => None,
    }
}

/// Each key's last record on a topic (a key lives in one partition, read in offset order).
pub fn last_per_key(records: &[Record]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    records
        .iter()
        .filter_map(|r| Some((r.key.clone()?, r.value.clone().unwrap_or_default())))
        .collect()
}

/// A writer running in a thread; `written` counts its committed events.
pub struct Writing {
    pub written: Arc<AtomicU64>,
    handle: JoinHandle<PgReport>,
}

impl Writing {
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Waits until at least `n` events are committed (panics after 120 s or if it ended first).
    pub fn wait_written(&self, n: u64) {
        let started = Instant::now();
        while self.written() < n {
            assert!(
                !self.handle.is_finished(),
                "the writer ended before {n} events"
            );
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the writer is stuck"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn join(self) -> PgReport {
        self.handle.join().expect("the writer failed")
    }
}

/// What `tally reconcile --against-source` printed and how it exited.
pub struct Reconciled {
    pub success: bool,
    pub evidence: Value,
    pub stderr: String,
}

impl Reconciled {
    pub fn describe(&self) -> String {
        format!(
            "{}\nstderr: {}",
            serde_json::to_string_pretty(&self.evidence).unwrap(),
            self.stderr
        )
    }

    /// Asserts the reconcile found one row's drift: it exited non-zero, untrusted, at least
    /// `paths` among its mismatches, and each mismatch is `key`'s with the source `by` ahead of
    /// the state and the output, which `live` reads from the key's output record.
    pub fn assert_drift(&self, key: &str, paths: &[String], by: i64, live: impl Fn(&str) -> i64) {
        assert!(!self.success, "reconcile exited 0: {}", self.describe());
        assert_eq!(
            self.evidence["confidence_status"],
            "untrusted",
            "{}",
            self.describe()
        );
        let source = &self.evidence["source"];
        let mismatches = source["mismatches"].as_array().unwrap();
        assert_eq!(
            source["mismatches_total"].as_u64(),
            Some(mismatches.len() as u64),
            "{}",
            self.describe()
        );
        let found: Vec<&str> = mismatches
            .iter()
            .map(|m| m["path"].as_str().unwrap())
            .collect();
        for path in paths {
            assert!(
                found.contains(&path.as_str()),
                "{path} not reported: {}",
                self.describe()
            );
        }
        for m in mismatches {
            let now = live(m["path"].as_str().unwrap());
            assert_eq!(
                m,
                &serde_json::json!({
                    "key": key, "path": m["path"], "source": now + by, "state": now, "output": now
                }),
                "{}",
                self.describe()
            );
        }
    }
}

/// How the rows of PostgreSQL reach the pipeline's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relay {
    /// The outbox, through Debezium's outbox event router: format `debezium_outbox`.
    Outbox,
    /// The change events of `inventory_transaction` itself: format `debezium_cdc`, with the
    /// `map` of docs/postgres.md turning the table's columns into the inventory event.
    Cdc,
}

/// The `[flows.map]` of a change-data-capture flow of `inventory_transaction` (docs/postgres.md).
const CDC_MAP: &str = "[flows.map]\n\
location_id = { field = \"location\" }\n\
quantity = { field = \"delta\" }\n\
operation = { value = \"adjust\" }\n\
schema_version = { value = 1 }\n";

/// One test's pipeline: its database, connectors, topics and group.
pub struct Pipeline {
    pub setup: Setup,
    pub database: String,
    /// The first connector's name, also its replication slot.
    pub connector: String,
    pub relay: Relay,
    registered: Mutex<Vec<String>>,
    contract: PathBuf,
}

impl Pipeline {
    /// A fresh database with the schema, and the topics of an inventory flow whose input is
    /// where the outbox router sends aggregate type `inventory`.
    pub fn new(name: &str) -> Self {
        Self::with_relay(name, Relay::Outbox)
    }

    /// A fresh database with the schema, and the topics of an inventory flow whose input is the
    /// change-data-capture topic of `inventory_transaction` (topic prefix: the setup's app).
    pub fn cdc(name: &str) -> Self {
        Self::with_relay(name, Relay::Cdc)
    }

    fn with_relay(name: &str, relay: Relay) -> Self {
        let servers = servers();
        let mut setup = Setup::new(name, Flow::Inventory, PARTITIONS);
        // The connector names its topics itself (the setup's own `.in` stays empty); they must
        // exist before it is registered, or Connect creates them with one partition.
        match relay {
            Relay::Outbox => setup.input = format!("{}.inventory", setup.app),
            Relay::Cdc => {
                setup.input = format!("{}.public.inventory_transaction", setup.app);
                // The connector captures `posting` too; no test writes there.
                create_topic(&format!("{}.public.posting", setup.app), PARTITIONS);
            }
        }
        create_topic(&setup.input, PARTITIONS);
        let database = setup.app.replace('-', "_");
        servers.pg.createdb(&database).expect("createdb");
        let password_file = servers.pg.password_file().expect("password file");
        setup.extra = format!(
            "[source]\nurl = \"{}\"\npassword = {{ file = \"{}\" }}\n",
            servers.pg.url(&database),
            local::toml_path(&password_file)
        );
        let contract = local::scripts()
            .expect("deploy/local")
            .join("sql/contracts/inventory.toml");
        Self {
            connector: database.clone(),
            database,
            setup,
            relay,
            registered: Mutex::new(Vec::new()),
            contract,
        }
    }

    /// Writes the config of `instance`: the setup's, with the flow in the relay's format
    /// (`debezium_outbox`, or `debezium_cdc` and its map) under the PostgreSQL contract.
    pub fn config(&self, instance: &str, http_port: u16) -> PathBuf {
        let path = self.setup.config(instance, http_port);
        let mut text = std::fs::read_to_string(&path).unwrap();
        let format = match self.relay {
            Relay::Outbox => "debezium_outbox",
            Relay::Cdc => "debezium_cdc",
        };
        let flow = format!(
            "[[flows]]\nformat = \"{format}\"\ncontract = \"{}\"\n",
            local::toml_path(&self.contract)
        );
        assert!(text.contains("[[flows]]\n"));
        text = text.replacen("[[flows]]\n", &flow, 1);
        if self.relay == Relay::Cdc {
            // The flow's sub-table, after its keys and before the next table.
            assert!(text.contains("[[control.keys]]\n"));
            text = text.replacen(
                "[[control.keys]]\n",
                &format!("{CDC_MAP}[[control.keys]]\n"),
                1,
            );
        }
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Starts a processor (exactly_once, commit every 100 ms).
    pub fn start(&self, instance: &str) -> Processor {
        Processor::start_config(&self.setup, instance, &[], |port| {
            self.config(instance, port)
        })
    }

    /// Registers a connector of the relay named `name` on the database, writing to the input
    /// topic, and waits until it runs.
    pub fn register(&self, name: &str, snapshot_mode: &str) {
        let servers = servers();
        self.registered.lock().unwrap().push(name.to_string());
        match self.relay {
            Relay::Outbox => servers
                .connect
                .register_outbox(&Outbox {
                    name,
                    postgres: &servers.pg,
                    database: &self.database,
                    route: &format!("{}.${{routedByValue}}", self.setup.app),
                    snapshot_mode,
                })
                .expect("register the outbox connector"),
            Relay::Cdc => servers
                .connect
                .register_cdc(&Cdc {
                    name,
                    postgres: &servers.pg,
                    database: &self.database,
                    topic_prefix: &self.setup.app,
                    snapshot_mode,
                })
                .expect("register the change-data-capture connector"),
        }
    }

    /// The URL of the test's database and the role's password.
    fn url_and_password(&self) -> (String, String) {
        let pg = &servers().pg;
        let password = pg.password().expect("password");
        (pg.url(&self.database), password.expose().to_string())
    }

    /// Writes `spec` on a new connection and returns the writer's report.
    pub fn write(&self, spec: &PgSpec) -> PgReport {
        let (url, password) = self.url_and_password();
        let mut client = writer::connect(&url, Some(&password)).expect("connect to PostgreSQL");
        writer::write(&mut client, spec, |_| {}).expect("write")
    }

    /// Writes `spec` on a new connection in a thread.
    pub fn write_in_background(&self, spec: &PgSpec) -> Writing {
        let (url, password) = self.url_and_password();
        let written = Arc::new(AtomicU64::new(0));
        let handle = {
            let (spec, written) = (spec.clone(), Arc::clone(&written));
            std::thread::spawn(move || {
                let mut client =
                    writer::connect(&url, Some(&password)).expect("connect to PostgreSQL");
                writer::write(&mut client, &spec, |r| {
                    written.store(r.events, Ordering::Release)
                })
                .expect("write")
            })
        };
        Writing { written, handle }
    }

    /// SQL on the test's database as the role tally (psql's unaligned output).
    pub fn sql(&self, sql: &str) -> String {
        servers().pg.sql(&self.database, sql).expect("psql")
    }

    /// Waits until every row written is on the input topic (each outbox row, or each history
    /// row as an insert) and returns the topic.
    pub fn wait_relayed(&self, written: &Written, limit: Duration) -> Vec<Record> {
        let started = Instant::now();
        let want: Vec<&String> = match self.relay {
            Relay::Outbox => written.ids.iter().collect(),
            Relay::Cdc => written
                .ids
                .iter()
                .filter(|i| !written.poison.contains_key(*i))
                .collect(),
        };
        loop {
            let input = read_all(&self.setup.input);
            let ids: HashSet<String> = input
                .iter()
                .filter_map(|r| match self.relay {
                    Relay::Outbox => r.headers.get("id").cloned(),
                    Relay::Cdc => inserted_id(r),
                })
                .collect();
            let missing = want.iter().filter(|i| !ids.contains(**i)).count();
            if missing == 0 {
                return input;
            }
            assert!(
                started.elapsed() < limit,
                "{missing} of {} rows not relayed to {} after {limit:?}; connectors: {}",
                want.len(),
                self.setup.input,
                self.connector_states()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Waits until the input topic holds at least `records` records and returns it.
    pub fn wait_input(&self, records: u64, limit: Duration) -> Vec<Record> {
        let started = Instant::now();
        loop {
            let input = read_all(&self.setup.input);
            if input.len() as u64 >= records {
                return input;
            }
            assert!(
                started.elapsed() < limit,
                "{} holds {} of {records} records after {limit:?}; connectors: {}",
                self.setup.input,
                input.len(),
                self.connector_states()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Each registered connector's status, as Kafka Connect reports it.
    pub fn connector_states(&self) -> String {
        let port = servers().connect.port;
        let names = self.registered.lock().unwrap().clone();
        names
            .iter()
            .map(|n| {
                let status = http(port, "GET", &format!("/connectors/{n}/status"))
                    .map_or_else(|| "no answer".to_string(), |(_, body)| body);
                format!("{n}: {status}")
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// `tally reconcile --flow inventory --against-source --wait WAIT` as a child process.
    pub fn reconcile(&self, wait: u64) -> Reconciled {
        let config = self.config("reconcile", free_port());
        let out = Command::new(env!("CARGO_BIN_EXE_tally"))
            .args(["reconcile", "--flow", "inventory", "--config"])
            .arg(&config)
            .args(["--against-source", "--wait", &wait.to_string()])
            .output()
            .expect("run tally reconcile");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let evidence = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "reconcile printed no evidence ({e}; exit {}); stdout: {}; stderr: {stderr}",
                out.status,
                String::from_utf8_lossy(&out.stdout)
            )
        });
        Reconciled {
            success: out.status.success(),
            evidence,
            stderr,
        }
    }

    /// Reconciles against PostgreSQL (waiting up to 120 s for the pipeline) and asserts that
    /// every sku written was compared and equals the fold of its history: trusted, and no
    /// mismatch.
    pub fn assert_exact(&self, written: &Written) -> Reconciled {
        let r = self.reconcile(120);
        assert!(r.success, "reconcile exited non-zero: {}", r.describe());
        assert_eq!(
            r.evidence["confidence_status"],
            "trusted",
            "{}",
            r.describe()
        );
        let source = &r.evidence["source"];
        assert_eq!(source["mismatches_total"], 0, "{}", r.describe());
        assert_eq!(
            source["keys_compared"].as_u64(),
            Some(written.skus.len() as u64),
            "keys compared are the distinct skus written: {}",
            r.describe()
        );
        r
    }

    /// Asserts that nothing was dead-lettered, showing the first dead letter if something was.
    pub fn assert_no_dead_letters(&self) {
        let dead = read_all(&self.setup.dlq);
        if let Some(first) = dead.first() {
            panic!(
                "{} records dead-lettered; the first: {:?} {}",
                dead.len(),
                first.headers,
                String::from_utf8_lossy(first.value.as_deref().unwrap_or_default())
            );
        }
    }

    /// Asserts the dead-letter topic against the input topic and the writer: exactly one dead
    /// letter per poison record on the input (none twice, none for a valid row), each with the
    /// reason the writer gave its row, and every poison row dead-lettered. Returns the dead
    /// letters' count.
    pub fn assert_dead_letters(&self, input: &[Record], written: &Written) -> u64 {
        let poison_records: BTreeSet<(i32, i64)> = input
            .iter()
            .filter(|r| written.poison.contains_key(&r.headers["id"]))
            .map(|r| (r.partition, r.offset))
            .collect();
        let dead = read_all(&self.setup.dlq);
        let mut at = BTreeSet::new();
        let mut ids = BTreeMap::new();
        for d in &dead {
            let h = &d.headers;
            let source = (
                h["tally.source.partition"].parse::<i32>().unwrap(),
                h["tally.source.offset"].parse::<i64>().unwrap(),
            );
            assert!(
                at.insert(source),
                "input record {source:?} dead-lettered twice"
            );
            let id = &h["id"];
            let reason = written
                .poison
                .get(id)
                .unwrap_or_else(|| panic!("valid row {id} dead-lettered: {h:?}"));
            assert_eq!(&h["tally.error.reason"], reason, "reason of {id}");
            ids.insert(id.clone(), *reason);
        }
        assert_eq!(
            at, poison_records,
            "one dead letter per poison record on the input"
        );
        assert_eq!(ids, written.poison, "every poison row is dead-lettered");
        dead.len() as u64
    }
}

impl Drop for Pipeline {
    /// Deletes the test's connectors and their replication slots (PostgreSQL has 10), and the
    /// database of a test that passed.
    fn drop(&mut self) {
        let servers = servers();
        let names = std::mem::take(
            &mut *self
                .registered
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for name in &names {
            let _ = http(
                servers.connect.port,
                "DELETE",
                &format!("/connectors/{name}"),
            );
        }
        let started = Instant::now();
        for name in &names {
            let slot: String = name
                .to_lowercase()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            loop {
                // A deleted connector's walsender lets go of its slot a moment later.
                let left = servers.pg.sql(
                    &self.database,
                    &format!(
                        "select pg_drop_replication_slot(slot_name) from pg_replication_slots \
                         where slot_name = '{slot}' and not active;\n\
                         select count(*) from pg_replication_slots where slot_name = '{slot}';"
                    ),
                );
                match left {
                    Ok(out) if out.lines().last() == Some("0") => break,
                    _ if started.elapsed() > Duration::from_secs(20) => break,
                    _ => std::thread::sleep(Duration::from_millis(500)),
                }
            }
        }
        if !std::thread::panicking() {
            let _ = servers.pg.sql(
                "tally",
                &format!("drop database if exists {} with (force);", self.database),
            );
        }
    }
}

/// A processor's counter once it reached `want` (committed counts lag the commit a little), or
/// what it shows after 30 s.
pub fn wait_metric(processor: &Processor, name: &str, want: u64) -> u64 {
    let started = Instant::now();
    loop {
        let now = processor.metric(name) as u64;
        if now >= want || started.elapsed() > Duration::from_secs(30) {
            return now;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Creates `topic` and waits until the broker knows its partitions.
fn create_topic(topic: &str, partitions: i32) {
    let topics = tally::kafka::topics::Topics::connect(bootstrap(), &BTreeMap::new()).unwrap();
    topics
        .create(topic, partitions, 1, tally::kafka::topics::TopicRole::Log)
        .unwrap();
    let started = Instant::now();
    while topics.partitions(topic).ok().flatten() != Some(partitions) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{topic} never appeared"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
