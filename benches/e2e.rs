//! End-to-end benchmark on a real local broker: tally (exactly_once, at_least_once) against a raw
//! rdkafka consume -> produce passthrough of the same events, plus restore speed and resources.
//! Run: `cargo bench --bench e2e` (env TALLY_BENCH_EVENTS, _KEYS, _PARTITIONS, _KAFKA_PORT;
//! _LATENCY_RATE for a latency probe alone, _LOADER_LINGER_MS to batch its loader).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord};
use serde::Serialize;
use tally::kafka::topics::{TopicRole, Topics};
use tally::workload::{Flow, LoadSpec};

#[path = "e2e/recovery.rs"]
mod recovery;
#[path = "e2e/support.rs"]
mod support;

use support::*;

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
    /// The same passthrough writing two records per event, as tally does.
    raw_passthrough_2_records_events_per_sec: f64,
    exactly_once_events_per_sec: f64,
    at_least_once_events_per_sec: f64,
    exactly_once_ratio_to_raw: f64,
    at_least_once_ratio_to_raw: f64,
    restore_records: u64,
    restore_seconds: f64,
    restore_records_per_sec: f64,
    peak_rss_mib_exactly_once: f64,
    /// Peak RSS of the process that restored every store from empty.
    peak_rss_mib_restore: f64,
    state_dir_mib: f64,
    keys_materialized: u64,
    latency_rate_events_per_sec: u64,
    /// The floor at that rate: a stateless passthrough with tally's client defaults.
    raw_latency_ms: Percentiles,
    exactly_once_latency_ms: Percentiles,
    at_least_once_latency_ms: Percentiles,
    /// The same at a fifth of the measured maximum, where the 2 cores are not saturated.
    latency_low_rate_events_per_sec: u64,
    raw_latency_low_ms: Percentiles,
    exactly_once_latency_low_ms: Percentiles,
    at_least_once_latency_low_ms: Percentiles,
    key_replay_seconds: f64,
    key_replay_events: u64,
    key_replay_trusted: bool,
    full_replay_seconds: f64,
    full_replay_events: u64,
    full_replay_trusted: bool,
    failover_seconds: f64,
}

/// End-to-end latency percentiles, input record timestamp to output visible (read_committed),
/// after a warm-up at the same rate.
#[derive(Serialize, Default, Clone, Copy)]
struct Percentiles {
    samples: usize,
    p50: f64,
    p99: f64,
    p999: f64,
    /// Seconds of load at the start whose records are left out of the percentiles.
    warmup_seconds: u64,
    /// The worst latency among those records: a fresh processor on fresh topics pays for its
    /// first produce requests, the broker's first appends to new partitions and JIT compilation.
    warmup_max: f64,
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
    if let Ok(rate) = std::env::var("TALLY_BENCH_LATENCY_RATE") {
        // Only the latency runs, at this rate (a probe; no report is written).
        let rate: u64 = rate.parse().expect("TALLY_BENCH_LATENCY_RATE is events/s");
        let seconds: u64 = env_or("TALLY_BENCH_LATENCY_SECONDS", 20);
        let work = std::env::temp_dir().join(format!("tally-bench-{run}"));
        for guarantee in ["raw", "exactly_once", "at_least_once"] {
            let p = latency(
                &bootstrap, &work, run, guarantee, guarantee, partitions, keys, rate, seconds,
            );
            eprintln!("latency {guarantee} at {rate} events/s: p50 {:.1} ms, p99 {:.1} ms, p999 {:.1} ms ({} samples; warm-up max {:.0} ms)", p.p50, p.p99, p.p999, p.samples, p.warmup_max);
        }
        return;
    }
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

    // Each pass writes its own fresh output topic.
    let pass = |name: &str, events: u64, copies: usize| {
        let output = format!("bench-{run}.{name}");
        topics
            .create(&output, partitions, 1, TopicRole::Log)
            .unwrap();
        raw_passthrough(&bootstrap, &input, &output, events, copies)
    };
    // A fresh broker's JVM runs its first passthrough at about half speed (405k against 844k
    // events/s warm): one throwaway pass warms it, so the baseline is not the cold one.
    pass("warm", events.min(300_000), 1);
    report.raw_passthrough_events_per_sec = pass("raw", events, 1);
    eprintln!(
        "raw passthrough: {:.0} events/s",
        report.raw_passthrough_events_per_sec
    );
    // tally writes two records per applied event (state, output; the dedupe entries go out in
    // one bundle per shipment): the same volume through the same clients, without state, is
    // the ceiling of that layout.
    report.raw_passthrough_2_records_events_per_sec = pass("raw2", events, 2);
    eprintln!(
        "raw passthrough writing 2 records per event: {:.0} events/s",
        report.raw_passthrough_2_records_events_per_sec
    );

    let work = std::env::temp_dir().join(format!("tally-bench-{run}"));
    // The broker's first transactional producer, compacted topics and transaction markers run
    // cold: on a fresh broker the first processor waited ~3 s for its first commit (the
    // transaction log is created then) and ran 15-25% slower for seconds after, which a running
    // cluster never pays again. A throwaway exactly_once run over its own 200k events warms
    // them, as the throwaway pass above warms the passthrough's paths.
    let warm_input = format!("bench-{run}.warm.in");
    topics
        .create(&warm_input, partitions, 1, TopicRole::Log)
        .unwrap();
    let warm_spec = LoadSpec {
        events: events.min(200_000),
        seed: 3,
        ..spec
    };
    tally::workload::produce(&bootstrap, &none, &warm_input, &warm_spec).unwrap();
    let warm_app = format!("bench-{run}-warm");
    let config = write_config(&work, &warm_app, &bootstrap, &warm_input, "exactly_once");
    let mut child = start(&config, &work.join("warm.log"));
    wait_lag_zero(&bootstrap, &warm_app, &warm_input);
    stop_child(&mut child);

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
            report.peak_rss_mib_restore = peak_rss_mib(child.id());
            report.restore_records = metric(port, "tally_restore_records_total") as u64;
            report.restore_records_per_sec = report.restore_records as f64 / report.restore_seconds;
            eprintln!(
                "restore: {} records in {:.2} s",
                report.restore_records, report.restore_seconds
            );
            stop_child(&mut child);
            let (s, n, t) = recovery::replay_time(&config, &["key=sku-000042"]);
            eprintln!("key replay: {n} events of sku-000042 in {s:.2} s (trusted: {t})");
            (report.key_replay_seconds, report.key_replay_events) = (s, n);
            report.key_replay_trusted = t;
            let (s, n, t) = recovery::replay_time(&config, &[]);
            eprintln!("whole-flow replay: {n} events in {s:.2} s (trusted: {t})");
            (report.full_replay_seconds, report.full_replay_events) = (s, n);
            report.full_replay_trusted = t;
            let configs = ["a", "b"]
                .map(|i| write_instance_config(&work, &app, &bootstrap, &input, guarantee, i));
            let ports = [http_port(&configs[0]), http_port(&configs[1])];
            report.failover_seconds = recovery::failover_seconds(
                [&configs[0], &configs[1]],
                ports,
                partitions as usize,
                &work,
            );
            eprintln!("failover after kill -9: {:.2} s", report.failover_seconds);
        } else {
            report.at_least_once_events_per_sec = eps;
            stop_child(&mut child);
        }
    }
    report.keys_materialized = keys.min(events);
    // Latency at fixed rates: half and a fifth of the measured exactly_once maximum, each over a
    // fresh input. The loader and the broker share the 2 cores, so half the maximum is near
    // saturation; a fifth shows the latency of a processor with headroom.
    let seconds: u64 = env_or("TALLY_BENCH_LATENCY_SECONDS", 20);
    for (share, low) in [(0.5, false), (0.2, true)] {
        let rate = (report.exactly_once_events_per_sec * share).max(1000.0) as u64;
        for guarantee in ["raw", "exactly_once", "at_least_once"] {
            let tag = format!("{guarantee}-{}", if low { "low" } else { "half" });
            let p = latency(
                &bootstrap, &work, run, &tag, guarantee, partitions, keys, rate, seconds,
            );
            eprintln!("latency {guarantee} at {rate} events/s: p50 {:.1} ms, p99 {:.1} ms, p999 {:.1} ms ({} samples; warm-up max {:.0} ms)", p.p50, p.p99, p.p999, p.samples, p.warmup_max);
            match (guarantee, low) {
                ("raw", false) => report.raw_latency_ms = p,
                ("raw", true) => report.raw_latency_low_ms = p,
                ("exactly_once", false) => report.exactly_once_latency_ms = p,
                ("exactly_once", true) => report.exactly_once_latency_low_ms = p,
                (_, false) => report.at_least_once_latency_ms = p,
                (_, true) => report.at_least_once_latency_low_ms = p,
            }
        }
        if low {
            report.latency_low_rate_events_per_sec = rate;
        } else {
            report.latency_rate_events_per_sec = rate;
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
    tag: &str,
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
    let input = format!("bench-{run}-lat-{tag}.in");
    Topics::connect(bootstrap, &none)
        .unwrap()
        .create(&input, partitions, 1, TopicRole::Log)
        .unwrap();
    std::fs::create_dir_all(work).unwrap();
    let app = format!("bench-{run}-lat-{tag}");
    let output = format!("{app}.out");
    let stop = Arc::new(AtomicBool::new(false));
    let processor = if guarantee == "raw" {
        Topics::connect(bootstrap, &none)
            .unwrap()
            .create(&output, partitions, 1, TopicRole::Log)
            .unwrap();
        Processor::Raw(raw_echo(
            bootstrap,
            &app,
            &input,
            &output,
            partitions,
            Arc::clone(&stop),
        ))
    } else {
        let config = write_config(work, &app, bootstrap, &input, guarantee);
        let child = start(&config, &work.join(format!("lat-{tag}.log")));
        wait_ready(http_port(&config), partitions as usize);
        Processor::Tally(child)
    };
    // The watcher reads every output partition by assignment (no group join, so no rebalance
    // delay is charged to the first records) and says when it reached their ends.
    let (reading_tx, reading) = std::sync::mpsc::channel();
    let watcher = {
        let (bootstrap, output, stop) = (bootstrap.to_string(), output.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let consumer = tally::kafka::clients::quiet_reader(
                &bootstrap,
                &BTreeMap::new(),
                &format!("{output}-watch"),
            )
            .unwrap();
            let mut tpl = rdkafka::TopicPartitionList::new();
            for p in 0..partitions {
                tpl.add_partition_offset(&output, p, rdkafka::Offset::Beginning)
                    .unwrap();
            }
            consumer.assign(&tpl).unwrap();
            let mut seen = Vec::new();
            let mut at_end = 0;
            while !stop.load(Ordering::Acquire) {
                match consumer.poll(Duration::from_millis(50)) {
                    Some(Ok(m)) => {
                        let now = SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .unwrap()
                            .as_millis() as i64;
                        let v: serde_json::Value =
                            serde_json::from_slice(m.payload().unwrap_or_default())
                                .unwrap_or_default();
                        if let (Some(p), Some(o)) = (
                            v["source"]["partition"].as_i64(),
                            v["source"]["offset"].as_i64(),
                        ) {
                            seen.push((p as i32, o, now));
                        }
                    }
                    Some(Err(rdkafka::error::KafkaError::PartitionEOF(_)))
                        if at_end < partitions =>
                    {
                        at_end += 1;
                        if at_end == partitions {
                            let _ = reading_tx.send(());
                        }
                    }
                    _ => {}
                }
            }
            seen
        })
    };
    reading
        .recv_timeout(Duration::from_secs(60))
        .expect("the latency watcher reached the end of every output partition");
    // The loader sends each record at once (no linger), so its timestamp is when it left;
    // `TALLY_BENCH_LOADER_LINGER_MS` batches it instead (its records wait up to that long in the
    // loader, which counts in their latency), to see what one request per record costs the host.
    let linger: u64 = env_or("TALLY_BENCH_LOADER_LINGER_MS", 0);
    let unbatched: BTreeMap<String, String> =
        [("linger.ms".to_string(), linger.to_string())].into();
    // The broker keeps warming up on the fresh topics well after the processor's first seconds:
    // a probe's transaction flush averaged 80 ms in the first second, 20-30 ms at ten and 6 ms
    // after twenty. A running processor lives on warm topics, so 10 s are left out.
    let warmup_seconds: u64 = env_or("TALLY_BENCH_WARMUP_SECONDS", 10);
    let spec = LoadSpec {
        flow: Flow::Inventory,
        events: rate * (warmup_seconds + seconds),
        keys,
        duplicates: 0.0,
        invalid: 0.0,
        conflicts: 0.0,
        rate,
        seed: 2,
    };
    tally::workload::produce(bootstrap, &unbatched, &input, &spec).unwrap();
    wait_lag_zero(bootstrap, &app, &input);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Release);
    let seen = watcher.join().unwrap();
    match processor {
        Processor::Tally(mut child) => stop_child(&mut child),
        Processor::Raw(echo) => echo.join().unwrap(),
    }
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
    let timed: Vec<(i64, i64)> = seen
        .iter()
        .filter_map(|(p, o, at)| ts.get(&(*p, *o)).map(|t| (*t, at - t)))
        .collect();
    // Each sample as (input timestamp, latency), to see when the slow ones happened.
    let samples: String = timed.iter().map(|(t, l)| format!("{t}\t{l}\n")).collect();
    let _ = std::fs::write(work.join(format!("lat-{tag}.samples")), samples);
    let start = timed.iter().map(|(t, _)| *t).min().unwrap_or(0);
    let measured_from = start + warmup_seconds as i64 * 1000;
    let warmup_max = timed
        .iter()
        .filter(|(t, _)| *t < measured_from)
        .map(|(_, l)| *l)
        .max()
        .unwrap_or(0) as f64;
    let mut lat: Vec<i64> = timed
        .iter()
        .filter(|(t, _)| *t >= measured_from)
        .map(|(_, l)| *l)
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
        warmup_seconds,
        warmup_max,
    }
}

/// What the latency watcher measures: a tally process, or the stateless floor.
enum Processor {
    Tally(std::process::Child),
    Raw(std::thread::JoinHandle<()>),
}

/// The latency floor of this machine: a passthrough with tally's client defaults (group
/// consumer, idempotent producer) that answers each input record at once with its source, in
/// the shape the watcher reads, and commits its offsets every 100 ms; no state, no transaction.
fn raw_echo(
    bootstrap: &str,
    group: &str,
    input: &str,
    output: &str,
    partitions: i32,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    use rdkafka::consumer::CommitMode;
    let none = BTreeMap::new();
    let consumer: BaseConsumer = tally::kafka::clients::group_consumer(bootstrap, &none, group)
        .create()
        .unwrap();
    let producer: BaseProducer = tally::kafka::clients::producer(bootstrap, &none, None, 60_000)
        .create()
        .unwrap();
    consumer.subscribe(&[input]).unwrap();
    // Assigned before the load starts, as tally is (its readiness), so no join is measured.
    while consumer.assignment().map_or(0, |a| a.count()) < partitions as usize {
        assert!(
            consumer.poll(Duration::from_millis(100)).is_none(),
            "the input is empty"
        );
    }
    let output = output.to_string();
    std::thread::spawn(move || {
        let mut next_commit = Instant::now();
        let mut value = String::new();
        while !stop.load(std::sync::atomic::Ordering::Acquire) {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(10)) {
                use std::fmt::Write;
                value.clear();
                let _ = write!(
                    value,
                    "{{\"source\":{{\"partition\":{},\"offset\":{}}}}}",
                    m.partition(),
                    m.offset()
                );
                let mut rec = BaseRecord::to(&output)
                    .partition(m.partition())
                    .payload(value.as_str())
                    .key(m.key().unwrap_or_default());
                while let Err((_, r)) = producer.send(rec) {
                    rec = r;
                    tally::kafka::clients::serve_reports(&producer);
                    std::thread::sleep(tally::kafka::clients::FLUSH_STEP);
                }
                let _ = consumer.store_offset_from_message(&m);
            }
            tally::kafka::clients::serve_reports(&producer);
            if Instant::now() >= next_commit {
                next_commit = Instant::now() + Duration::from_millis(100);
                let _ = consumer.commit_consumer_state(CommitMode::Async);
            }
        }
        tally::kafka::clients::flush(&producer, Duration::from_secs(60)).unwrap();
    })
}

/// Consumes `events` records and produces `copies` records for each (the same key and value,
/// to the same partition of `output`); events/s.
fn raw_passthrough(bootstrap: &str, input: &str, output: &str, events: u64, copies: usize) -> f64 {
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
            for _ in 0..copies {
                let mut rec = BaseRecord::to(output)
                    .partition(m.partition())
                    .payload(m.payload().unwrap_or_default());
                if let Some(k) = m.key() {
                    rec = rec.key(k);
                }
                while let Err((_, r)) = producer.send(rec) {
                    rec = r;
                    tally::kafka::clients::serve_reports(&producer);
                    std::thread::sleep(tally::kafka::clients::FLUSH_STEP);
                }
            }
            n += 1;
            if n % 1000 == 0 {
                // Every ready report: `poll(0)` serves one batch, and unserved reports fill the
                // queue and throttle the passthrough.
                tally::kafka::clients::serve_reports(&producer);
            }
        }
    }
    tally::kafka::clients::flush(&producer, Duration::from_secs(60)).unwrap();
    events as f64 / started.elapsed().as_secs_f64()
}
