//! Against a real broker: health tells the truth. A partition whose store cannot be opened is
//! retried, counted and reported (not ready; unhealthy once its input waits too long), and
//! `tally_consumer_lag` is what the broker says: committed offset against high watermark.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{bootstrap, send_to, Processor, Setup};
use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use tally::workload::Flow;
use tally_state::{Store, StoreOptions};

const LIMIT: Duration = Duration::from_secs(120);

fn event(i: u32) -> String {
    format!(
        r#"{{"event_id":"h-{i}","schema_version":1,"sku":"sku-{i}","seller_id":"s","location_id":"fc-1","bucket":"sellable","operation":"adjust","quantity":1,"event_time":"2026-06-19T18:23:11Z"}}"#
    )
}

/// Sends `n` events to `partition`.
fn load(setup: &Setup, partition: i32, n: u32) {
    let events: Vec<(String, String)> = (0..n)
        .map(|i| (format!("sku-{i}"), event(partition as u32 * 10_000 + i)))
        .collect();
    let records: Vec<(&[u8], &[u8])> = events
        .iter()
        .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
        .collect();
    send_to(&setup.input, partition, &records);
}

/// The broker's view of the group's lag per input partition: high watermark minus committed.
fn broker_lag(setup: &Setup) -> BTreeMap<i32, i64> {
    let c = tally::kafka::clients::quiet_reader(bootstrap(), &BTreeMap::new(), &setup.app).unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..setup.partitions {
        tpl.add_partition(&setup.input, p);
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    (0..setup.partitions)
        .map(|p| {
            let (low, high) = c
                .fetch_watermarks(&setup.input, p, Duration::from_secs(10))
                .unwrap();
            let at = match committed
                .find_partition(&setup.input, p)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(o)) => o,
                _ => low,
            };
            (p, high - at)
        })
        .collect()
}

/// `tally_consumer_lag` per partition of the processor's input.
fn reported_lag(p: &Processor, setup: &Setup) -> BTreeMap<i32, i64> {
    let Some((_, body)) = p.get("/metrics") else {
        return BTreeMap::new();
    };
    let topic = format!("topic=\"{}\"", setup.input);
    body.lines()
        .filter(|l| l.starts_with("tally_consumer_lag{") && l.contains(&topic))
        .filter_map(|l| {
            let part = l
                .split("partition=\"")
                .nth(1)?
                .split('"')
                .next()?
                .parse()
                .ok()?;
            let v: f64 = l.rsplit(' ').next()?.parse().ok()?;
            Some((part, v as i64))
        })
        .collect()
}

/// A processor's JSON answer; (0, null) while it does not answer yet.
fn json(p: &Processor, path: &str) -> (u16, serde_json::Value) {
    match p.get(path) {
        Some((code, body)) => (code, serde_json::from_str(&body).unwrap_or_default()),
        None => (0, serde_json::Value::Null),
    }
}

/// Waits until `f` holds, or panics naming `what` after `limit`.
fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A processor whose partition 0 store is locked by this test; input waits on both partitions.
fn with_partition_0_locked(name: &str) -> (Setup, Store, Processor) {
    let mut setup = Setup::new(name, Flow::Inventory, 2);
    setup.extra = "[health]\nstall_timeout = \"3s\"\n".into();
    let path = setup
        .state_dir()
        .join("a")
        .join(&setup.app)
        .join("inventory")
        .join("0");
    std::fs::create_dir_all(&path).unwrap();
    let held = Store::open(&path, StoreOptions::default()).unwrap();
    let p = Processor::start(&setup, "a", &[]);
    load(&setup, 0, 66);
    load(&setup, 1, 20);
    until("partition 1 committed", LIMIT, || {
        broker_lag(&setup)[&1] == 0
    });
    (setup, held, p)
}

#[test]
fn a_store_that_cannot_be_opened_is_retried_counted_and_not_ready() {
    let (setup, held, p) = with_partition_0_locked("blocked-store");
    until("the blocked partition reported", LIMIT, || {
        let (code, v) = json(&p, "/readyz");
        code == 503 && v["partitions_blocked"] == 1 && v["partitions_assigned"] == 2
    });
    assert!(p.metric("tally_store_open_failures_total") >= 1.0);
    // Its input waits longer than the stall timeout: the instance is not healthy either.
    until("healthz fails", Duration::from_secs(30), || {
        json(&p, "/healthz").0 == 503
    });
    let (_, v) = json(&p, "/healthz");
    assert_eq!(v["partitions_stalled"], 1, "{v}");

    drop(held);
    setup.wait_caught_up(LIMIT);
    until("ready again", LIMIT, || json(&p, "/readyz").0 == 200);
    until("healthy again", LIMIT, || json(&p, "/healthz").0 == 200);
    common::assert_trusted(&setup.oracle());
}

#[test]
fn consumer_lag_is_the_brokers_view_for_a_stuck_and_a_caught_up_partition() {
    let (setup, held, p) = with_partition_0_locked("lag-view");
    until(
        "the lag gauge agrees with the broker",
        Duration::from_secs(30),
        || {
            let broker = broker_lag(&setup);
            broker[&0] == 66 && broker[&1] == 0 && reported_lag(&p, &setup) == broker
        },
    );
    drop(held);
    setup.wait_caught_up(LIMIT);
    until("the lag gauge falls to 0", Duration::from_secs(30), || {
        reported_lag(&p, &setup) == BTreeMap::from([(0, 0), (1, 0)])
    });
}

#[test]
fn instances_that_fence_each_other_in_a_loop_are_reported_unhealthy() {
    let mut setup = Setup::new("fence-loop", Flow::Inventory, 4);
    setup.extra = "[health]\nstall_timeout = \"3s\"\n".into();
    // Two processors with one instance_id share a transactional id: each producer one creates
    // fences the other's, and their commits fail again and again.
    let a = Processor::start(&setup, "a", &[]);
    let b = Processor::start(&setup, "b", &[("TALLY_INSTANCE_ID", "a")]);
    let loader = {
        let setup = setup.clone();
        std::thread::spawn(move || setup.load_at(6_000, 200, 0.0, 0.0, 0.0, 21, 300))
    };
    // Stalled partitions, or a poll loop stuck in the client: either way not healthy.
    let unhealthy = |p: &Processor| {
        let (code, v) = json(p, "/healthz");
        let why = v["reasons"].to_string();
        code == 503 && (why.contains("no progress") || why.contains("has not turned"))
    };
    let started = Instant::now();
    while !(unhealthy(&a) || unhealthy(&b)) {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "no instance reported the loop within 90 s: a {:?}, b {:?}",
            json(&a, "/healthz"),
            json(&b, "/healthz")
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        a.metric("tally_transactions_aborted_total") + b.metric("tally_transactions_aborted_total")
            >= 1.0
    );
    loader.join().unwrap();
}
