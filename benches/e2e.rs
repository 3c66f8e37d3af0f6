//! End-to-end benchmark on a real local broker: tally (exactly_once, at_least_once) against a raw
//! rdkafka consume -> produce passthrough of the same events, plus restore speed and resources.
//! Run: `cargo bench --bench e2e` (env TALLY_BENCH_EVENTS, _KEYS, _PARTITIONS, _KAFKA_PORT).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde::Serialize;
use tally::kafka::topics::{TopicRole, Topics};
use tally::workload::{Flow, LoadSpec};

fn env_or<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

#[derive(Serialize, Default)]
struct Report {
    commit: String,
    cores: usize,
    events: u64,
    keys: u64,
    partitions: i32,
    duplicates: f64,
    load_events_per_sec: f64,
    raw_passthrough_events_per_sec: f64,
    exactly_once_events_per_sec: f64,
    at_least_once_events_per_sec: f64,
    exactly_once_ratio_to_raw: f64,
    at_least_once_ratio_to_raw: f64,
    restore_records: u64,
    restore_seconds: f64,
    restore_records_per_sec: f64,
    peak_rss_mib_exactly_once: f64,
    state_dir_mib: f64,
    keys_materialized: u64,
    latency_rate_events_per_sec: u64,
    exactly_once_latency_ms: Percentiles,
    at_least_once_latency_ms: Percentiles,
}

/// End-to-end latency percentiles, input record timestamp to output visible (read_committed).
#[derive(Serialize, Default, Clone, Copy)]
struct Percentiles {
    samples: usize,
    p50: f64,
    p99: f64,
    p999: f64,
}

struct Broker {
    bootstrap: String,
    script: PathBuf,
    port: String,
}

impl Broker {
    fn up() -> Self {
        let port = env_or("TALLY_BENCH_KAFKA_PORT", 29092u16).to_string();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/local/kafka");
        let ok = Command::new(&script)
            .arg("up")
            .env("KAFKA_PORT", &port)
            .status()
            .expect("kafka up");
        assert!(ok.success(), "broker did not start");
        Self {
            bootstrap: format!("127.0.0.1:{port}"),
            script,
            port,
        }
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

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing we need to honour.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let events: u64 = env_or("TALLY_BENCH_EVENTS", 1_000_000);
    let keys: u64 = env_or("TALLY_BENCH_KEYS", 100_000);
    let partitions: i32 = env_or("TALLY_BENCH_PARTITIONS", 12);
    let duplicates = 0.05;
    let broker = Broker::up();
    let bootstrap = broker.bootstrap.clone();
    let none = BTreeMap::new();
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let input = format!("bench-{run}.in");
    let topics = Topics::connect(&bootstrap, &none).unwrap();
    topics
        .create(&input, partitions, 1, TopicRole::Log)
        .unwrap();

    let mut report = Report {
        commit: git_commit(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        events,
        keys,
        partitions,
        duplicates,
        ..Report::default()
    };
    eprintln!(
        "loading {events} inventory events ({keys} SKUs, {partitions} partitions, 5% duplicates)"
    );
    let spec = LoadSpec {
        flow: Flow::Inventory,
        events,
        keys,
        duplicates,
        invalid: 0.0,
        conflicts: 0.0,
        rate: 0,
        seed: 1,
    };
    let load = tally::workload::produce(&bootstrap, &none, &input, &spec).unwrap();
    report.load_events_per_sec = load.records_per_sec;

    let raw_out = format!("bench-{run}.raw");
    topics
        .create(&raw_out, partitions, 1, TopicRole::Log)
        .unwrap();
    report.raw_passthrough_events_per_sec = raw_passthrough(&bootstrap, &input, &raw_out, events);
    eprintln!(
        "raw passthrough: {:.0} events/s",
        report.raw_passthrough_events_per_sec
    );

    let work = std::env::temp_dir().join(format!("tally-bench-{run}"));
    for guarantee in ["exactly_once", "at_least_once"] {
        let app = format!("bench-{run}-{guarantee}");
        let config = write_config(&work, &app, &bootstrap, &input, guarantee);
        let started = Instant::now();
        let mut child = start(&config, &work.join(format!("{guarantee}.log")));
        wait_lag_zero(&bootstrap, &app, &input);
        let eps = events as f64 / started.elapsed().as_secs_f64();
        eprintln!(
            "tally {guarantee}: {eps:.0} events/s (including start-up and restore of empty stores)"
        );
        if guarantee == "exactly_once" {
            report.exactly_once_events_per_sec = eps;
            report.peak_rss_mib_exactly_once = peak_rss_mib(child.id());
            stop_child(&mut child);
            report.state_dir_mib = dir_size(&work.join("state").join(&app)) as f64 / 1048576.0;
            // Full restore: delete the stores, start again, time until no partition restores.
            std::fs::remove_dir_all(work.join("state").join(&app)).unwrap();
            let port = http_port(&config);
            let started = Instant::now();
            let mut child = start(&config, &work.join("restore.log"));
            wait_ready(port, partitions as usize);
            report.restore_seconds = started.elapsed().as_secs_f64();
            report.restore_records = metric(port, "tally_restore_records_total") as u64;
            report.restore_records_per_sec = report.restore_records as f64 / report.restore_seconds;
            eprintln!(
                "restore: {} records in {:.2} s",
                report.restore_records, report.restore_seconds
            );
            stop_child(&mut child);
        } else {
            report.at_least_once_events_per_sec = eps;
            stop_child(&mut child);
        }
    }
    report.keys_materialized = keys.min(events);
    // Latency at a fixed rate: half the measured exactly_once maximum, over a fresh input.
    let rate = (report.exactly_once_events_per_sec / 2.0).max(1000.0) as u64;
    report.latency_rate_events_per_sec = rate;
    let seconds: u64 = env_or("TALLY_BENCH_LATENCY_SECONDS", 20);
    for guarantee in ["exactly_once", "at_least_once"] {
        let p = latency(
            &bootstrap, &work, run, guarantee, partitions, keys, rate, seconds,
        );
        eprintln!("latency {guarantee} at {rate} events/s: p50 {:.1} ms, p99 {:.1} ms, p999 {:.1} ms ({} samples)", p.p50, p.p99, p.p999, p.samples);
        if guarantee == "exactly_once" {
            report.exactly_once_latency_ms = p;
        } else {
            report.at_least_once_latency_ms = p;
        }
    }
    report.exactly_once_ratio_to_raw =
        report.exactly_once_events_per_sec / report.raw_passthrough_events_per_sec;
    report.at_least_once_ratio_to_raw =
        report.at_least_once_events_per_sec / report.raw_passthrough_events_per_sec;
    write_reports(&report);
    let _ = std::fs::remove_dir_all(&work);
}

/// Runs one processor on a fresh input fed at `rate`, watches its output with a read_committed
/// consumer, and matches each output record's source offset to its input record's timestamp.
#[allow(clippy::too_many_arguments)]
fn latency(
    bootstrap: &str,
    work: &Path,
    run: u64,
    guarantee: &str,
    partitions: i32,
    keys: u64,
    rate: u64,
    seconds: u64,
) -> Percentiles {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let none = BTreeMap::new();
    let input = format!("bench-{run}-lat-{guarantee}.in");
    Topics::connect(bootstrap, &none)
        .unwrap()
        .create(&input, partitions, 1, TopicRole::Log)
        .unwrap();
    let app = format!("bench-{run}-lat-{guarantee}");
    let config = write_config(work, &app, bootstrap, &input, guarantee);
    let mut child = start(&config, &work.join(format!("lat-{guarantee}.log")));
    wait_ready(http_port(&config), partitions as usize);
    let output = format!("{app}.out");
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (bootstrap, output, stop) = (bootstrap.to_string(), output.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let consumer: BaseConsumer = tally::kafka::clients::group_consumer(
                &bootstrap,
                &BTreeMap::new(),
                &format!("{output}-watch"),
            )
            .create()
            .unwrap();
            consumer.subscribe(&[&output]).unwrap();
            let mut seen = Vec::new();
            while !stop.load(Ordering::Acquire) {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap()
                        .as_millis() as i64;
                    let v: serde_json::Value =
                        serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or_default();
                    if let (Some(p), Some(o)) = (
                        v["source"]["partition"].as_i64(),
                        v["source"]["offset"].as_i64(),
                    ) {
                        seen.push((p as i32, o, now));
                    }
                }
            }
            seen
        })
    };
    let spec = LoadSpec {
        flow: Flow::Inventory,
        events: rate * seconds,
        keys,
        duplicates: 0.0,
        invalid: 0.0,
        conflicts: 0.0,
        rate,
        seed: 2,
    };
    tally::workload::produce(bootstrap, &none, &input, &spec).unwrap();
    wait_lag_zero(bootstrap, &app, &input);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Release);
    let seen = watcher.join().unwrap();
    stop_child(&mut child);
    // Input timestamps by (partition, offset).
    let reader =
        tally::kafka::clients::quiet_reader(bootstrap, &none, &format!("{app}-ts")).unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(&input, p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    reader.assign(&tpl).unwrap();
    let mut ts: HashMap<(i32, i64), i64> = HashMap::new();
    let mut eof = 0;
    while eof < partitions {
        match reader.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                if let Some(t) = m.timestamp().to_millis() {
                    ts.insert((m.partition(), m.offset()), t);
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => eof += 1,
            _ => {}
        }
    }
    let mut lat: Vec<i64> = seen
        .iter()
        .filter_map(|(p, o, at)| ts.get(&(*p, *o)).map(|t| at - t))
        .collect();
    lat.sort_unstable();
    let pct = |q: f64| {
        lat.get(((lat.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0) as f64
    };
    Percentiles {
        samples: lat.len(),
        p50: pct(0.5),
        p99: pct(0.99),
        p999: pct(0.999),
    }
}

fn raw_passthrough(bootstrap: &str, input: &str, output: &str, events: u64) -> f64 {
    let none = BTreeMap::new();
    let consumer: BaseConsumer =
        tally::kafka::clients::group_consumer(bootstrap, &none, &format!("{output}-group"))
            .create()
            .unwrap();
    let producer: BaseProducer = tally::kafka::clients::producer(bootstrap, &none, None, 60_000)
        .create()
        .unwrap();
    consumer.subscribe(&[input]).unwrap();
    let started = Instant::now();
    let mut n = 0u64;
    while n < events {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let mut rec = BaseRecord::to(output)
                .partition(m.partition())
                .payload(m.payload().unwrap_or_default());
            if let Some(k) = m.key() {
                rec = rec.key(k);
            }
            let mut rec = rec;
            loop {
                match producer.send(rec) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        rec = r;
                        producer.poll(Duration::from_millis(5));
                    }
                }
            }
            n += 1;
            if n % 1000 == 0 {
                producer.poll(Duration::ZERO);
            }
        }
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    events as f64 / started.elapsed().as_secs_f64()
}

fn write_config(work: &Path, app: &str, bootstrap: &str, input: &str, guarantee: &str) -> PathBuf {
    std::fs::create_dir_all(work).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = format!(
        "application_id = \"{app}\"\nbootstrap_servers = \"{bootstrap}\"\nstate_dir = \"{state}\"\nprocessing_guarantee = \"{guarantee}\"\ninstance_id = \"bench\"\n[[flows]]\nname = \"inventory\"\ninput = \"{input}\"\noutput = \"{app}.out\"\ndead_letter = \"{app}.dlq\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n",
        state = work.join("state").display()
    );
    let path = work.join(format!("{app}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn http_port(config: &Path) -> u16 {
    let text = std::fs::read_to_string(config).unwrap();
    let line = text.lines().find(|l| l.starts_with("listen")).unwrap();
    line.rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('"')
        .parse()
        .unwrap()
}

fn start(config: &Path, log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn stop_child(child: &mut Child) {
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let _ = child.wait();
}

fn wait_lag_zero(bootstrap: &str, group: &str, input: &str) {
    let started = Instant::now();
    loop {
        let lag = tally::kafka::progress::group_lag(bootstrap, &BTreeMap::new(), group, &[input])
            .unwrap_or(i64::MAX);
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

fn http(port: u16, path: &str) -> Option<String> {
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

fn wait_ready(port: u16, partitions: usize) {
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

fn metric(port: u16, name: &str) -> f64 {
    http(port, "/metrics")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn peak_rss_mib(pid: u32) -> f64 {
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

fn dir_size(path: &Path) -> u64 {
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

fn git_commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn write_reports(r: &Report) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/report");
    std::fs::create_dir_all(&dir).unwrap();
    let json = serde_json::to_string_pretty(r).unwrap();
    std::fs::write(dir.join("e2e.json"), &json).unwrap();
    let md = format!(
        "# tally end-to-end benchmark\n\ncommit `{}` on {} cores; {} inventory events, {} SKUs, {} partitions, {:.0}% duplicates.\n\n\
| measure | value |\n|---|---|\n\
| load (producer) | {:.0} events/s |\n\
| raw rdkafka passthrough | {:.0} events/s |\n\
| tally exactly_once | {:.0} events/s ({:.0}% of raw) |\n\
| tally at_least_once | {:.0} events/s ({:.0}% of raw) |\n\
| full restore | {} records in {:.2} s = {:.0} records/s |\n\
| peak RSS (exactly_once) | {:.0} MiB |\n\
| state dir on disk | {:.0} MiB |\n\
| end-to-end latency at {} events/s, exactly_once | p50 {:.0} ms, p99 {:.0} ms, p999 {:.0} ms |\n\
| end-to-end latency at {} events/s, at_least_once | p50 {:.0} ms, p99 {:.0} ms, p999 {:.0} ms |\n",
        r.commit, r.cores, r.events, r.keys, r.partitions, r.duplicates * 100.0,
        r.load_events_per_sec, r.raw_passthrough_events_per_sec,
        r.exactly_once_events_per_sec, r.exactly_once_ratio_to_raw * 100.0,
        r.at_least_once_events_per_sec, r.at_least_once_ratio_to_raw * 100.0,
        r.restore_records, r.restore_seconds, r.restore_records_per_sec,
        r.peak_rss_mib_exactly_once, r.state_dir_mib,
        r.latency_rate_events_per_sec, r.exactly_once_latency_ms.p50, r.exactly_once_latency_ms.p99, r.exactly_once_latency_ms.p999,
        r.latency_rate_events_per_sec, r.at_least_once_latency_ms.p50, r.at_least_once_latency_ms.p99, r.at_least_once_latency_ms.p999,
    );
    std::fs::write(dir.join("e2e.md"), &md).unwrap();
    println!("{json}");
    eprintln!("{md}");
}
