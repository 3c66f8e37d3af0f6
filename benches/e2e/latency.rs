//! The latency runs of the end-to-end benchmark: a processor (or the stateless floor) on a fresh
//! input fed at a fixed rate, with a read_committed watcher timing each output from its input.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::BaseRecord;
use serde::Serialize;
use tally::kafka::topics::{TopicRole, Topics};
use tally::workload::{Flow, LoadSpec};

use super::env_or;
use super::support::*;

/// End-to-end latency percentiles, input record timestamp to output visible (read_committed),
/// after a warm-up at the same rate.
#[derive(Serialize, Default, Clone, Copy)]
pub struct Percentiles {
    pub samples: usize,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    /// Seconds of load at the start whose records are left out of the percentiles.
    pub warmup_seconds: u64,
    /// The worst latency among those records: a fresh processor on fresh topics pays for its
    /// first produce requests, the broker's first appends to new partitions and JIT compilation.
    pub warmup_max: f64,
}

/// Runs one processor on a fresh input fed at `rate`, watches its output with a read_committed
/// consumer, and matches each output record's source offset to its input record's timestamp.
#[allow(clippy::too_many_arguments)]
pub fn latency(
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
    let (consumer, producer) = raw_clients(bootstrap, group);
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
