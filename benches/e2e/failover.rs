//! The failover run (`TALLY_BENCH_FAILOVER=1`): two processors of one application share a
//! store, one is killed with SIGKILL, and the survivor's takeover is timed in two parts: until
//! the group gives it the dead one's partitions (the session timeout), and from there until
//! every partition is served. With 0 and 1 standby, at 100k and 1M keys.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use tally::kafka::topics::{TopicRole, Topics};

use super::support::*;

/// One kill -9 and its takeover.
#[derive(Serialize, Debug)]
pub struct Failover {
    pub keys: u64,
    pub events: u64,
    pub standbys: u32,
    /// Input records/s produced across the kill (0: killed when caught up).
    pub load_rate: u64,
    /// Partitions the killed processor owned.
    pub moved: usize,
    /// Kill to the survivor's assignment of the moved partitions.
    pub detect_seconds: f64,
    /// That assignment to every partition restored and served.
    pub takeover_seconds: f64,
    /// Changelog records the survivor read to take over.
    pub restored_records: f64,
    /// Kill to every output record written before the kill being committed or aborted: until
    /// then a read_committed consumer of the outputs waits (the last stable offset).
    pub outputs_settled_seconds: f64,
    /// The survivor's peak RSS: its own partitions, its standbys, then all of them active.
    pub survivor_peak_rss_mib: f64,
}

/// Input records/s of the runs that kill under load.
const LOAD_RATE: u64 = 20_000;

/// Loads `events` over `keys` SKUs into a fresh input and runs a failover with each standby
/// count, once killed when caught up and once under a paced load.
pub fn measure(
    bootstrap: &str,
    work: &Path,
    run: u64,
    partitions: i32,
    keys: u64,
    events: u64,
    standbys: &[u32],
) -> Vec<Failover> {
    let input = format!("bench-{run}-{keys}.failover.in");
    Topics::connect(bootstrap, &Default::default())
        .unwrap()
        .create(&input, partitions, 1, TopicRole::Log)
        .unwrap();
    let spec = inventory_load(events, keys, 0, 11);
    eprintln!("failover: loading {events} events over {keys} SKUs");
    tally::workload::produce(bootstrap, &Default::default(), &input, &spec).unwrap();
    let mut out = Vec::new();
    for load_rate in [0, LOAD_RATE] {
        for &s in standbys {
            let app = format!("bench-{run}-{keys}-s{s}-r{load_rate}");
            let f = once(
                bootstrap,
                work,
                &app,
                &input,
                partitions as usize,
                s,
                load_rate,
            );
            let f = Failover { keys, events, ..f };
            eprintln!("failover: {f:?}");
            out.push(f);
        }
    }
    out
}

fn once(
    bootstrap: &str,
    work: &Path,
    app: &str,
    input: &str,
    partitions: usize,
    standbys: u32,
    load_rate: u64,
) -> Failover {
    let configs = ["a", "b"].map(|i| {
        let path = write_instance_config(work, app, bootstrap, input, "exactly_once", i);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("num_standby_replicas = {standbys}\n{text}")).unwrap();
        path
    });
    let ports = configs.each_ref().map(|c| http_port(c));
    let mut a = start(&configs[0], &work.join(format!("{app}-a.log")));
    let mut b = start(&configs[1], &work.join(format!("{app}-b.log")));
    wait_lag_zero(bootstrap, app, input);
    let started = Instant::now();
    let shared = loop {
        let (x, y) = (assigned(ports[0]), assigned(ports[1]));
        if let (Some((xa, 0)), Some((ya, 0))) = (x, y) {
            if xa > 0 && ya > 0 && xa + ya == partitions {
                break (xa, ya);
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "no shared assignment"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    if standbys > 0 {
        // The survivor's standbys hold the other's partitions, current.
        let started = Instant::now();
        while metric(ports[1], "tally_standby_partitions") != shared.0 as f64
            || metric(ports[1], "tally_standby_lag_records") != 0.0
        {
            assert!(
                started.elapsed() < Duration::from_secs(900),
                "standbys never current"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Under load, the kill lands with a transaction open: 20 s of records from 3 s before it.
    let load = (load_rate > 0).then(|| {
        let spec = inventory_load(load_rate * 20, 100_000, load_rate, 12 + u64::from(standbys));
        let (bootstrap, input) = (bootstrap.to_string(), input.to_string());
        let t = std::thread::spawn(move || {
            tally::workload::produce(&bootstrap, &Default::default(), &input, &spec).unwrap()
        });
        std::thread::sleep(Duration::from_secs(3));
        t
    });
    let read_before = metric(ports[1], "tally_restore_records_total");
    let output = format!("{app}.out");
    let (uncommitted, committed) = output_readers(bootstrap);
    let _ = a.kill();
    let _ = a.wait();
    let killed = Instant::now();
    let written = ends(&uncommitted, &output, partitions);
    let (mut detected, mut done, mut settled) = (None, None, None);
    while done.is_none() || settled.is_none() {
        let now = assigned(ports[1]);
        if detected.is_none() && now.is_some_and(|(n, _)| n > shared.1) {
            detected = Some(Instant::now());
        }
        if done.is_none() && now == Some((partitions, 0)) {
            done = Some(Instant::now());
        }
        if settled.is_none()
            && ends(&committed, &output, partitions)
                .iter()
                .zip(&written)
                .all(|(c, w)| c >= w)
        {
            settled = Some(Instant::now());
        }
        assert!(
            killed.elapsed() < Duration::from_secs(600),
            "no takeover within 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let done = done.unwrap_or_else(Instant::now);
    let detected = detected.unwrap_or(done);
    let restored_records = metric(ports[1], "tally_restore_records_total") - read_before;
    if let Some(load) = load {
        load.join().unwrap();
        wait_lag_zero(bootstrap, app, input);
    }
    let survivor_peak_rss_mib = peak_rss_mib(b.id());
    stop_child(&mut b);
    Failover {
        keys: 0,
        events: 0,
        standbys,
        load_rate,
        moved: shared.0,
        detect_seconds: (detected - killed).as_secs_f64(),
        takeover_seconds: (done - detected).as_secs_f64(),
        restored_records,
        outputs_settled_seconds: settled.map_or(f64::NAN, |t| (t - killed).as_secs_f64()),
        survivor_peak_rss_mib,
    }
}

/// Two readers of partition ends: read_uncommitted (the high watermark) and read_committed
/// (the last stable offset).
fn output_readers(
    bootstrap: &str,
) -> (
    rdkafka::consumer::BaseConsumer,
    rdkafka::consumer::BaseConsumer,
) {
    let make = |isolation: &str| {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", bootstrap)
            .set("group.id", "bench-failover-ends")
            .set("isolation.level", isolation);
        c.create().unwrap()
    };
    (make("read_uncommitted"), make("read_committed"))
}

/// Each partition's end as `reader` sees it (-1 when it cannot be read now).
fn ends(reader: &rdkafka::consumer::BaseConsumer, topic: &str, partitions: usize) -> Vec<i64> {
    use rdkafka::consumer::Consumer;
    (0..partitions as i32)
        .map(|p| {
            reader
                .fetch_watermarks(topic, p, Duration::from_secs(5))
                .map_or(-1, |(_, high)| high)
        })
        .collect()
}

/// Writes `benches/report/failover.{json,md}`.
pub fn write_report(runs: &[Failover], partitions: i32) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/report");
    let json = serde_json::json!({
        "commit": git_commit(),
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "partitions": partitions,
        "session_timeout_ms": 10000,
        "runs": runs,
    });
    std::fs::write(
        dir.join("failover.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .unwrap();
    let mut md = format!(
        "# tally failover: kill -9 of one of two processors\n\ncommit `{}` on {} cores; {partitions} partitions, one broker, tally's default `session.timeout.ms` (10 s), the processor killed when caught up (load 0) or 3 s into a paced load of 20,000 records/s over 100k keys (a transaction open at the kill). Detection: kill to the survivor's assignment of the dead one's partitions. Takeover: that assignment to every partition restored and served (`/readyz`, polled every 5 ms). Outputs settled: kill to every output record written before the kill being committed or aborted (the outputs' last stable offset past their high watermark at the kill), until which a read_committed consumer of the outputs sees nothing newer. Survivor RSS: its peak over the whole run.\n\n| keys | events | load | standbys | partitions moved | detection | takeover | records restored | outputs settled | survivor peak RSS |\n|---|---|---|---|---|---|---|---|---|---|\n",
        git_commit(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    for r in runs {
        md.push_str(&format!(
            "| {} | {} | {}/s | {} | {} | {:.2} s | {:.3} s | {:.0} | {:.2} s | {:.0} MiB |\n",
            r.keys,
            r.events,
            r.load_rate,
            r.standbys,
            r.moved,
            r.detect_seconds,
            r.takeover_seconds,
            r.restored_records,
            r.outputs_settled_seconds,
            r.survivor_peak_rss_mib
        ));
    }
    std::fs::write(dir.join("failover.md"), md).unwrap();
}
