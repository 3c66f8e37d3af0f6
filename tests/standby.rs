//! Against a real broker, with several instances of one application: a query answers from any
//! instance, a standby makes a takeover restore only the tail, and a restart with static
//! membership moves no partition.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{assert_trusted, read_all, Processor, Setup};
use tally::workload::Flow;

const LIMIT: Duration = Duration::from_secs(180);
const PARTITIONS: i32 = 6;

/// A processor advertising its HTTP address to the group, with extra settings from `env`.
fn member(setup: &Setup, instance: &str, env: &[(&str, &str)]) -> Processor {
    Processor::start_config(setup, instance, env, |port| {
        let path = setup.config(instance, port);
        let text = std::fs::read_to_string(&path).unwrap();
        let text = format!("application_server = \"127.0.0.1:{port}\"\n{text}");
        std::fs::write(&path, text).unwrap();
        path
    })
}

/// One answer: status, headers (lower-case names), body.
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

fn query(p: &Processor, path: &str) -> Answer {
    let mut s = TcpStream::connect(("127.0.0.1", p.http_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

/// A metric's value for the label set containing `label` (e.g. `kind="tail"`), summed.
fn metric_with(p: &Processor, name: &str, label: &str) -> f64 {
    let Some((_, body)) = p.get("/metrics") else {
        return 0.0;
    };
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until the processors share every partition, each is ready, and each one's view of the
/// group names an owner for `probe`.
fn wait_settled(all: &[&Processor], probe: &str) {
    let started = Instant::now();
    loop {
        let assigned: f64 = all.iter().map(|p| p.metric("tally_partitions_assigned")).sum();
        let ready = all.iter().all(|p| p.get("/readyz").is_some_and(|(c, _)| c == 200));
        let owned = all.iter().all(|p| {
            let a = query(p, &format!("/owners/inventory/{probe}"));
            a.status == 200 && a.body.contains("\"moving\":false")
        });
        if assigned == f64::from(PARTITIONS) && ready && owned {
            return;
        }
        assert!(started.elapsed() < LIMIT, "the group did not settle");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until `p` keeps `count` standbys, none behind.
fn wait_standbys_current(p: &Processor, count: f64) {
    let started = Instant::now();
    while p.metric("tally_standby_partitions") != count
        || p.metric("tally_standby_lag_records") != 0.0
    {
        assert!(
            started.elapsed() < LIMIT,
            "standbys: {} held, {} behind (want {count}, 0); log {}",
            p.metric("tally_standby_partitions"),
            p.metric("tally_standby_lag_records"),
            p.log.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn owner_of(p: &Processor, key: &str) -> String {
    let a = query(p, &format!("/owners/inventory/{key}"));
    let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    v["active"]["instance"].as_str().unwrap().to_string()
}

/// Distinct keys of the flow's output, the first `n`.
fn some_keys(setup: &Setup, n: usize) -> Vec<String> {
    let keys: BTreeSet<String> = read_all(&setup.output)
        .into_iter()
        .filter_map(|r| String::from_utf8(r.key?).ok())
        .collect();
    keys.into_iter().take(n).collect()
}

#[test]
fn a_query_sent_to_any_of_three_instances_returns_the_owners_answer() {
    let setup = Setup::new("routed", Flow::Inventory, PARTITIONS);
    let standby = [("TALLY_NUM_STANDBY_REPLICAS", "1")];
    let all = ["a", "b", "c"].map(|i| member(&setup, i, &standby));
    setup.load(3_000, 300, 0.05, 0.0, 0.0, 21);
    setup.wait_caught_up(LIMIT);
    let keys = some_keys(&setup, 30);
    wait_settled(&all.iter().collect::<Vec<_>>(), &keys[0]);
    for key in &keys {
        let owner = owner_of(&all[0], key);
        let answers: Vec<Answer> = all
            .iter()
            .map(|p| query(p, &format!("/state/inventory/{key}")))
            .collect();
        for (p, a) in all.iter().zip(&answers) {
            assert_eq!(a.status, 200, "{key} on port {}: {}", p.http_port, a.body);
            assert_eq!(a.body, answers[0].body, "{key}: every instance gives the owner's answer");
            assert_eq!(a.headers["tally-served-by"], owner, "{key} is answered by its owner");
        }
    }
    // Every instance names the same owner and standby, never the owner as its own standby.
    for key in &keys[..5] {
        let views: Vec<serde_json::Value> = all
            .iter()
            .map(|p| serde_json::from_str(&query(p, &format!("/owners/inventory/{key}")).body).unwrap())
            .collect();
        for v in &views {
            assert_eq!(v["active"], views[0]["active"]);
            assert_eq!(v["standbys"], views[0]["standbys"]);
            assert_eq!(v["standbys"].as_array().unwrap().len(), 1);
            assert_ne!(v["standbys"][0]["instance"], v["active"]["instance"]);
        }
    }
}

#[test]
fn a_kill_9_with_a_standby_restores_only_the_tail_and_loses_nothing() {
    let setup = Setup::new("standby-kill", Flow::Inventory, PARTITIONS);
    let standby = [("TALLY_NUM_STANDBY_REPLICAS", "1")];
    let a = member(&setup, "a", &standby);
    let b = member(&setup, "b", &standby);
    setup.load(4_000, 400, 0.05, 0.01, 0.0, 22);
    setup.wait_caught_up(LIMIT);
    let keys = some_keys(&setup, 50);
    wait_settled(&[&a, &b], &keys[0]);
    let a_owns = a.metric("tally_partitions_assigned");
    wait_standbys_current(&b, a_owns);
    let key = keys
        .iter()
        .find(|k| owner_of(&b, k) == "a")
        .expect("a owns some key")
        .clone();
    let before = query(&a, &format!("/state/inventory/{key}"));
    assert_eq!(before.status, 200);
    let full_before = metric_with(&b, "tally_restores_total", "kind=\"full\"");
    let tail_before = metric_with(&b, "tally_restores_total", "kind=\"tail\"");

    a.kill9();
    // Until the group notices, the key's owner is gone: a clear 503, or the standby's answer.
    let gone = query(&b, &format!("/state/inventory/{key}"));
    assert_eq!(gone.status, 503, "{}", gone.body);
    assert_eq!(gone.headers["retry-after"], "1");
    let stale = query(&b, &format!("/state/inventory/{key}?allow_stale=true"));
    assert_eq!(stale.status, 200, "{}", stale.body);
    assert_eq!(stale.body, before.body, "the standby was current");
    assert_eq!(stale.headers["tally-standby-lag"], "0");

    setup.load(2_000, 400, 0.05, 0.01, 0.0, 23);
    b.wait_ready(PARTITIONS as usize, LIMIT);
    setup.wait_caught_up(LIMIT);
    assert_eq!(
        metric_with(&b, "tally_restores_total", "kind=\"full\""),
        full_before,
        "no full restore on takeover; log {}",
        b.log.display()
    );
    assert_eq!(
        metric_with(&b, "tally_restores_total", "kind=\"tail\"") - tail_before,
        a_owns,
        "each partition taken over restored its tail"
    );
    assert_eq!(query(&b, &format!("/state/inventory/{key}")).status, 200);
    assert_eq!(
        b.metric("tally_departed_owners_fenced_total"),
        1.0,
        "the departed owner's transactional id is fenced once for all its partitions"
    );
    assert_trusted(&setup.oracle());
}

#[test]
fn a_restart_with_static_membership_moves_no_partition_and_restores_no_store() {
    let setup = Setup::new("static", Flow::Inventory, PARTITIONS);
    let static_ = [("TALLY_STATIC_MEMBERSHIP", "true")];
    let a = member(&setup, "a", &static_);
    let b = member(&setup, "b", &static_);
    setup.load(3_000, 300, 0.05, 0.01, 0.0, 24);
    setup.wait_caught_up(LIMIT);
    let keys = some_keys(&setup, 1);
    wait_settled(&[&a, &b], &keys[0]);
    let a_owns = a.metric("tally_partitions_assigned");
    let b_moves = || {
        (
            b.metric("tally_partitions_added_total"),
            b.metric("tally_partitions_revoked_total"),
        )
    };
    let b_before = b_moves();

    a.terminate();
    let a = member(&setup, "a", &static_);
    a.wait_ready(a_owns as usize, LIMIT);
    setup.load(1_000, 300, 0.05, 0.01, 0.0, 25);
    setup.wait_caught_up(LIMIT);

    assert_eq!(b_moves(), b_before, "b gained or lost no partition");
    assert_eq!(a.metric("tally_partitions_assigned"), a_owns);
    assert_eq!(metric_with(&a, "tally_restores_total", "kind=\"full\""), 0.0);
    assert_eq!(metric_with(&a, "tally_restores_total", "kind=\"tail\""), a_owns);
    assert_eq!(
        a.metric("tally_restore_records_total"),
        0.0,
        "a store left at SIGTERM is current; log {}",
        a.log.display()
    );
    assert_trusted(&setup.oracle());
}
