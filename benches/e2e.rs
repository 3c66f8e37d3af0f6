//! End-to-end benchmark on a real local broker: tally (exactly_once, at_least_once) against a raw
//! rdkafka consume -> produce passthrough of the same events, plus restore speed and resources.
//! Run: `cargo bench --bench e2e` (env TALLY_BENCH_EVENTS, _KEYS, _PARTITIONS, _KAFKA_PORT,
//! _SCALE_KEYS, _SCALE_EVENTS; _LATENCY_RATE for a latency probe alone, _LOADER_LINGER_MS to
//! batch its loader; _AB=binA,binB or _TLS=1 for paired A/B runs alone, _ROUNDS of them).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::BaseRecord;
use serde::Serialize;
use tally::kafka::topics::{TopicRole, Topics};
use tally::workload::{Flow, LoadSpec};

#[path = "e2e/ab.rs"]
mod ab;
#[path = "e2e/failover.rs"]
mod failover;
#[path = "e2e/latency.rs"]
mod latency;
#[path = "e2e/recovery.rs"]
mod recovery;
#[path = "e2e/scale.rs"]
mod scale;
#[path = "e2e/support.rs"]
mod support;

use latency::{latency, Percentiles};
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
    /// The scale point, a store of 1M keys (TALLY_BENCH_SCALE_KEYS; 0 leaves it out).
    scale: Option<scale::Scale>,
}

/// A name for this run's topics and directories.
fn run_id() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `TALLY_BENCH_FAILOVER=1`: kill -9 of one of two processors, timed with 0 and 1 standby at
/// 100k keys (1M events) and at 1M keys (3M events; `TALLY_BENCH_SCALE_KEYS`).
fn failover_runs() {
    let broker = Broker::up();
    let partitions: i32 = env_or("TALLY_BENCH_PARTITIONS", 12);
    let run = run_id();
    let work = std::env::temp_dir().join(format!("tally-bench-failover-{run}"));
    let mut runs = Vec::new();
    for keys in [
        env_or("TALLY_BENCH_KEYS", 100_000u64),
        env_or("TALLY_BENCH_SCALE_KEYS", 1_000_000u64),
    ] {
        if keys == 0 {
            continue;
        }
        let events = if keys >= 1_000_000 {
            3 * keys
        } else {
            10 * keys
        };
        runs.extend(failover::measure(
            &broker.bootstrap,
            &work,
            run,
            partitions,
            keys,
            events,
            &[0, 1],
        ));
    }
    failover::write_report(&runs, partitions);
    // TALLY_BENCH_KEEP=1 keeps the processors' logs and configs for a look.
    if std::env::var_os("TALLY_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&work);
    }
}

/// `TALLY_BENCH_AB=binA,binB`: two builds of tally, alternating, on one broker.
fn ab_builds(bins: &str) {
    let broker = Broker::up();
    let variants: Vec<ab::Variant> = bins
        .split(',')
        .enumerate()
        .map(|(i, bin)| ab::Variant {
            name: format!("{}-{}", ["A", "B", "C", "D"][i.min(3)], short(bin)),
            bin: bin.into(),
            bootstrap: broker.bootstrap.clone(),
            kafka: BTreeMap::new(),
            grant: None,
        })
        .collect();
    ab::compare(&broker.bootstrap, &variants, None);
}

/// A binary's file name, kept to what names a topic.
fn short(path: &str) -> String {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .collect()
}

/// `TALLY_BENCH_TLS=1`: one build over plaintext and over SASL_SSL, on one secured broker.
fn ab_tls() {
    let port = Broker::port();
    let broker = Broker::up_with(&["--secure"], &ab::plaintext_listener(port));
    let bin = std::path::PathBuf::from(
        std::env::var_os("TALLY_BENCH_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_tally").into()),
    );
    let plain = format!("127.0.0.1:{}", port + 2);
    let variant =
        |name: &str, bootstrap: &str, who: Option<&str>, grant: Option<&str>| ab::Variant {
            name: name.into(),
            bin: bin.clone(),
            bootstrap: bootstrap.into(),
            kafka: who.map(|w| ab::settings(port, w)).unwrap_or_default(),
            grant: grant.map(str::to_string),
        };
    let variants = [
        variant("plaintext", &plain, None, None),
        variant(
            "sasl_ssl-admin",
            &broker.bootstrap,
            Some("admin-sasl"),
            None,
        ),
        variant(
            "sasl_ssl-acls",
            &broker.bootstrap,
            Some("tally-sasl"),
            Some("User:tally"),
        ),
    ];
    ab::compare(&plain, &variants, Some(port));
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing we need to honour.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if let Ok(bins) = std::env::var("TALLY_BENCH_AB") {
        return ab_builds(&bins);
    }
    if std::env::var_os("TALLY_BENCH_TLS").is_some() {
        return ab_tls();
    }
    if std::env::var_os("TALLY_BENCH_FAILOVER").is_some() {
        return failover_runs();
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
        let log = work.join(format!("{guarantee}.log"));
        let (eps, rss) = timed_catch_up(&config, &log, &bootstrap, &app, &input, events);
        eprintln!(
            "tally {guarantee}: {eps:.0} events/s (including start-up and restore of empty stores)"
        );
        if guarantee == "exactly_once" {
            report.exactly_once_events_per_sec = eps;
            report.peak_rss_mib_exactly_once = rss;
            report.state_dir_mib = dir_size(&work.join("state").join(&app)) as f64 / 1048576.0;
            // Full restore: delete the stores, start again, time until no partition restores.
            let restore = timed_restore(
                &config,
                &work.join("state").join(&app),
                &work.join("restore.log"),
                partitions as usize,
            );
            report.restore_seconds = restore.seconds;
            report.peak_rss_mib_restore = restore.peak_rss_mib;
            report.restore_records = restore.records;
            report.restore_records_per_sec = restore.records_per_sec;
            eprintln!(
                "restore: {} records in {:.2} s",
                report.restore_records, report.restore_seconds
            );
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
    // Last: its 3M events and their changelog would weigh on the broker under the latency runs.
    let scale_keys: u64 = env_or("TALLY_BENCH_SCALE_KEYS", 1_000_000);
    if scale_keys > 0 {
        // Three events per key touch 95% of the keys (random keys).
        let scale_events = env_or("TALLY_BENCH_SCALE_EVENTS", 3 * scale_keys);
        report.scale = Some(scale::measure(
            &bootstrap,
            &topics,
            &work,
            run,
            partitions,
            scale_keys,
            scale_events,
        ));
    }
    report.exactly_once_ratio_to_raw =
        report.exactly_once_events_per_sec / report.raw_passthrough_events_per_sec;
    report.at_least_once_ratio_to_raw =
        report.at_least_once_events_per_sec / report.raw_passthrough_events_per_sec;
    write_reports(&report);
    let _ = std::fs::remove_dir_all(&work);
}

/// Consumes `events` records and produces `copies` records for each (the same key and value,
/// to the same partition of `output`); events/s.
fn raw_passthrough(bootstrap: &str, input: &str, output: &str, events: u64, copies: usize) -> f64 {
    let (consumer, producer) = raw_clients(bootstrap, &format!("{output}-group"));
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
            if n.is_multiple_of(1000) {
                // Every ready report: `poll(0)` serves one batch, and unserved reports fill the
                // queue and throttle the passthrough.
                tally::kafka::clients::serve_reports(&producer);
            }
        }
    }
    tally::kafka::clients::flush(&producer, Duration::from_secs(60)).unwrap();
    events as f64 / started.elapsed().as_secs_f64()
}
