//! Helpers of the end-to-end benchmark: the private broker, processor child processes, their
//! HTTP endpoint, resource readings and the report files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{env_or, Report};
pub struct Broker {
    pub bootstrap: String,
    script: PathBuf,
    port: String,
}

impl Broker {
    pub fn up() -> Self {
        Self::up_with(&[], "")
    }

    /// `deploy/local/kafka up ARGS` with extra broker properties.
    pub fn up_with(args: &[&str], properties: &str) -> Self {
        let port = Self::port().to_string();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/local/kafka");
        let _ = Command::new(&script)
            .arg("down")
            .env("KAFKA_PORT", &port)
            .status();
        let ok = Command::new(&script)
            .arg("up")
            .args(args)
            .env("KAFKA_PORT", &port)
            .env("KAFKA_PROPERTIES", properties)
            .status()
            .expect("kafka up");
        assert!(ok.success(), "broker did not start");
        Self {
            bootstrap: format!("127.0.0.1:{port}"),
            script,
            port,
        }
    }

    /// The broker's first port (`TALLY_BENCH_KAFKA_PORT`, 29092).
    pub fn port() -> u16 {
        env_or("TALLY_BENCH_KAFKA_PORT", 29092u16)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = Command::new(&self.script)
            .arg("down")
            .env("KAFKA_PORT", &self.port)
            .status();
    }
}

pub fn write_config(
    work: &Path,
    app: &str,
    bootstrap: &str,
    input: &str,
    guarantee: &str,
) -> PathBuf {
    write_instance_config(work, app, bootstrap, input, guarantee, "bench")
}

/// A config of one instance of `app`, with its own state dir and HTTP port.
pub fn write_instance_config(
    work: &Path,
    app: &str,
    bootstrap: &str,
    input: &str,
    guarantee: &str,
    instance: &str,
) -> PathBuf {
    std::fs::create_dir_all(work).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = format!(
        "application_id = \"{app}\"\nbootstrap_servers = \"{bootstrap}\"\nstate_dir = \"{state}\"\nprocessing_guarantee = \"{guarantee}\"\ninstance_id = \"{instance}\"\n[[flows]]\nname = \"inventory\"\ninput = \"{input}\"\noutput = \"{app}.out\"\ndead_letter = \"{app}.dlq\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n",
        state = if instance == "bench" {
            work.join("state")
        } else {
            work.join(format!("state-{instance}"))
        }
        .display()
    );
    let path = if instance == "bench" {
        work.join(format!("{app}.toml"))
    } else {
        work.join(format!("{app}-{instance}.toml"))
    };
    std::fs::write(&path, text).unwrap();
    path
}

pub fn http_port(config: &Path) -> u16 {
    let text = std::fs::read_to_string(config).unwrap();
    let line = text.lines().find(|l| l.starts_with("listen")).unwrap();
    line.rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('"')
        .parse()
        .unwrap()
}

pub fn start(config: &Path, log: &Path) -> Child {
    // `TALLY_BENCH_BIN` runs another build of tally (an A/B of two commits on one machine).
    let bin =
        std::env::var_os("TALLY_BENCH_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_tally").into());
    Command::new(bin)
        .args(["run", "--config"])
        .arg(config)
        .env(
            "RUST_LOG",
            std::env::var("TALLY_BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

pub fn stop_child(child: &mut Child) {
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let _ = child.wait();
}

pub fn wait_lag_zero(bootstrap: &str, group: &str, input: &str) {
    let started = Instant::now();
    // One client for the whole wait: a new one per poll cost the processor under test CPU.
    let probe = tally::kafka::progress::LagProbe::new(bootstrap, &BTreeMap::new(), group, &[input])
        .expect("lag probe");
    loop {
        let lag = probe.lag().unwrap_or(i64::MAX);
        if lag == 0 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "no catch-up within 30 minutes"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn http(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    Some(raw)
}

/// The benchmark's inventory workload: `events` over `keys` SKUs with 5% duplicates, paced at
/// `rate` records/s (0: as fast as the broker takes them).
pub fn inventory_load(events: u64, keys: u64, rate: u64, seed: u64) -> tally::workload::LoadSpec {
    tally::workload::LoadSpec {
        flow: tally::workload::Flow::Inventory,
        events,
        keys,
        duplicates: 0.05,
        invalid: 0.0,
        conflicts: 0.0,
        rate,
        seed,
    }
}

/// (assigned, restoring) partitions from `/readyz`.
pub fn assigned(port: u16) -> Option<(usize, usize)> {
    let r = http(port, "/readyz")?;
    let body = r.split("\r\n\r\n").nth(1)?;
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    Some((
        v["partitions_assigned"].as_u64()? as usize,
        v["partitions_restoring"].as_u64()? as usize,
    ))
}

pub fn wait_ready(port: u16, partitions: usize) {
    let want = format!("\"partitions_assigned\":{partitions},\"partitions_restoring\":0");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(600) {
        if http(port, "/readyz").is_some_and(|r| r.starts_with("HTTP/1.1 200") && r.contains(&want))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("restore did not finish within 10 minutes");
}

/// Starts the processor of `config` on an input it has not read and waits until it has caught
/// up: events/s from process start (start-up and the restore of empty stores included) and the
/// process's peak RSS.
pub fn timed_catch_up(
    config: &Path,
    log: &Path,
    bootstrap: &str,
    group: &str,
    input: &str,
    events: u64,
) -> (f64, f64) {
    let m = measured_catch_up(config, log, bootstrap, group, input, events, Broker::port());
    (m.events_per_sec, m.peak_rss_mib)
}

/// CPU seconds (user + system) a process has used so far; 0 when it cannot be read.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start at its closing parenthesis.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf takes a plain integer and reads no memory of ours.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / hz
}

/// The pid of the local broker on `port` (node 1), from its pid file.
pub fn broker_pid(port: u16) -> Option<u32> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("deploy/local/run/{port}/node1/pid"));
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A catch-up measured for an A/B: events/s, peak RSS, and the CPU seconds of the processor
/// and of the broker it ran against.
pub struct Measured {
    pub events_per_sec: f64,
    pub peak_rss_mib: f64,
    pub cpu_seconds: f64,
    pub broker_cpu_seconds: f64,
}

/// [`timed_catch_up`] with the CPU the processor and the broker on `broker_port` used.
#[allow(clippy::too_many_arguments)]
pub fn measured_catch_up(
    config: &Path,
    log: &Path,
    bootstrap: &str,
    group: &str,
    input: &str,
    events: u64,
    broker_port: u16,
) -> Measured {
    let broker = broker_pid(broker_port);
    let broker_before = broker.map_or(0.0, cpu_seconds);
    let started = Instant::now();
    let mut child = start(config, log);
    wait_lag_zero(bootstrap, group, input);
    let events_per_sec = events as f64 / started.elapsed().as_secs_f64();
    let measured = Measured {
        events_per_sec,
        peak_rss_mib: peak_rss_mib(child.id()),
        cpu_seconds: cpu_seconds(child.id()),
        broker_cpu_seconds: broker.map_or(0.0, cpu_seconds) - broker_before,
    };
    stop_child(&mut child);
    measured
}

/// A full restore from empty: seconds from process start until every partition is served,
/// records restored, and the process's peak RSS.
#[derive(serde::Serialize, Default)]
pub struct Restore {
    pub seconds: f64,
    pub records: u64,
    pub records_per_sec: f64,
    pub peak_rss_mib: f64,
}

/// Deletes `state`, starts the processor of `config` and times its restore.
pub fn timed_restore(config: &Path, state: &Path, log: &Path, partitions: usize) -> Restore {
    std::fs::remove_dir_all(state).unwrap();
    let port = http_port(config);
    let started = Instant::now();
    let mut child = start(config, log);
    wait_ready(port, partitions);
    let seconds = started.elapsed().as_secs_f64();
    let records = metric(port, "tally_restore_records_total") as u64;
    let restore = Restore {
        seconds,
        records,
        records_per_sec: records as f64 / seconds,
        peak_rss_mib: peak_rss_mib(child.id()),
    };
    stop_child(&mut child);
    restore
}

/// A group consumer and an idempotent producer with tally's client defaults, for the raw
/// passthroughs.
pub fn raw_clients(
    bootstrap: &str,
    group: &str,
) -> (
    rdkafka::consumer::BaseConsumer,
    rdkafka::producer::BaseProducer,
) {
    let none = BTreeMap::new();
    let consumer = tally::kafka::clients::group_consumer(bootstrap, &none, group)
        .create()
        .unwrap();
    let producer = tally::kafka::clients::producer(bootstrap, &none, None, 60_000)
        .create()
        .unwrap();
    (consumer, producer)
}

pub fn metric(port: u16, name: &str) -> f64 {
    http(port, "/metrics")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_string)
        })
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

pub fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

pub fn git_commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub fn write_reports(r: &Report) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/report");
    std::fs::create_dir_all(&dir).unwrap();
    let json = serde_json::to_string_pretty(r).unwrap();
    std::fs::write(dir.join("e2e.json"), &json).unwrap();
    let md = format!(
        "# tally end-to-end benchmark\n\ncommit `{}` on {} cores; {} inventory events, {} SKUs, {} partitions, {:.0}% duplicates. The broker is warmed first by a throwaway passthrough (300k events) and a throwaway exactly_once run (200k events). Latency percentiles leave out the first {} s of load (a warm-up at the same rate on a freshly started processor).\n\n\
| measure | value |\n|---|---|\n\
| load (producer) | {:.0} events/s |\n\
| raw rdkafka passthrough | {:.0} events/s |\n\
| raw passthrough writing 2 records per event (tally's volume: state, output; dedupe entries in one bundle per shipment) | {:.0} events/s |\n\
| tally exactly_once | {:.0} events/s ({:.0}% of raw, {:.0}% of raw x2) |\n\
| tally at_least_once | {:.0} events/s ({:.0}% of raw, {:.0}% of raw x2) |\n\
| full restore | {} records in {:.2} s = {:.0} records/s, peak RSS {:.0} MiB |\n\
| peak RSS (exactly_once) | {:.0} MiB |\n\
| state dir on disk | {:.0} MiB |\n\
| end-to-end latency at {} events/s, raw passthrough (the floor) | p50 {:.0} ms, p99 {:.0} ms, p999 {:.0} ms (warm-up max {:.0} ms) |\n\
| end-to-end latency at {} events/s, exactly_once | p50 {:.0} ms, p99 {:.0} ms, p999 {:.0} ms (warm-up max {:.0} ms) |\n\
| end-to-end latency at {} events/s, at_least_once | p50 {:.0} ms, p99 {:.0} ms, p999 {:.0} ms (warm-up max {:.0} ms) |\n\
| end-to-end latency at {} events/s, raw passthrough (the floor) | p50 {:.0} ms, p99 {:.0} ms, p999 {:.0} ms (warm-up max {:.0} ms) |\n\
| end-to-end latency at {} events/s, exactly_once | p50 {:.0} ms, p99 {:.0} ms, p999 {:.0} ms (warm-up max {:.0} ms) |\n\
| end-to-end latency at {} events/s, at_least_once | p50 {:.0} ms, p99 {:.0} ms, p999 {:.0} ms (warm-up max {:.0} ms) |\n\
| replay of one key (dry run, evidence) | {} events in {:.2} s (trusted: {}) |\n\
| replay of the whole flow (dry run, evidence) | {} events in {:.2} s (trusted: {}) |\n\
| failover: kill -9 of one of two processors until every partition is served | {:.2} s |\n",
        r.commit, r.cores, r.events, r.keys, r.partitions, r.duplicates * 100.0,
        r.exactly_once_latency_ms.warmup_seconds,
        r.load_events_per_sec, r.raw_passthrough_events_per_sec, r.raw_passthrough_2_records_events_per_sec,
        r.exactly_once_events_per_sec, r.exactly_once_ratio_to_raw * 100.0, 100.0 * r.exactly_once_events_per_sec / r.raw_passthrough_2_records_events_per_sec,
        r.at_least_once_events_per_sec, r.at_least_once_ratio_to_raw * 100.0, 100.0 * r.at_least_once_events_per_sec / r.raw_passthrough_2_records_events_per_sec,
        r.restore_records, r.restore_seconds, r.restore_records_per_sec, r.peak_rss_mib_restore,
        r.peak_rss_mib_exactly_once, r.state_dir_mib,
        r.latency_rate_events_per_sec, r.raw_latency_ms.p50, r.raw_latency_ms.p99, r.raw_latency_ms.p999, r.raw_latency_ms.warmup_max,
        r.latency_rate_events_per_sec, r.exactly_once_latency_ms.p50, r.exactly_once_latency_ms.p99, r.exactly_once_latency_ms.p999, r.exactly_once_latency_ms.warmup_max,
        r.latency_rate_events_per_sec, r.at_least_once_latency_ms.p50, r.at_least_once_latency_ms.p99, r.at_least_once_latency_ms.p999, r.at_least_once_latency_ms.warmup_max,
        r.latency_low_rate_events_per_sec, r.raw_latency_low_ms.p50, r.raw_latency_low_ms.p99, r.raw_latency_low_ms.p999, r.raw_latency_low_ms.warmup_max,
        r.latency_low_rate_events_per_sec, r.exactly_once_latency_low_ms.p50, r.exactly_once_latency_low_ms.p99, r.exactly_once_latency_low_ms.p999, r.exactly_once_latency_low_ms.warmup_max,
        r.latency_low_rate_events_per_sec, r.at_least_once_latency_low_ms.p50, r.at_least_once_latency_low_ms.p99, r.at_least_once_latency_low_ms.p999, r.at_least_once_latency_low_ms.warmup_max,
        r.key_replay_events, r.key_replay_seconds, r.key_replay_trusted,
        r.full_replay_events, r.full_replay_seconds, r.full_replay_trusted,
        r.failover_seconds,
    );
    let md = match &r.scale {
        Some(s) => md + &format!(
            "| at {} keys ({} events, {} keys touched, {} ids held by the dedupe index): exactly_once catch-up | {:.0} events/s, peak RSS {:.0} MiB, state dir {:.0} MiB |\n\
| at {} keys: full restore | {} records in {:.2} s = {:.0} records/s, peak RSS {:.0} MiB |\n",
            s.keys, s.events, s.keys_materialized, s.ids_held,
            s.catch_up_events_per_sec, s.peak_rss_mib_catch_up, s.state_dir_mib,
            s.keys, s.restore.records, s.restore.seconds, s.restore.records_per_sec, s.restore.peak_rss_mib,
        ),
        None => md,
    };
    std::fs::write(dir.join("e2e.md"), &md).unwrap();
    println!("{json}");
    eprintln!("{md}");
}
