//! Against a real broker, with several instances of one application: a query answers from any
//! instance (over HTTPS too), a standby makes a takeover restore only the tail, and a restart
//! with static membership moves no partition.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::pipeline::wait_metric;
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
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
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
        let assigned: f64 = all
            .iter()
            .map(|p| p.metric("tally_partitions_assigned"))
            .sum();
        let ready = all
            .iter()
            .all(|p| p.get("/readyz").is_some_and(|(c, _)| c == 200));
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
            assert_eq!(
                a.body, answers[0].body,
                "{key}: every instance gives the owner's answer"
            );
            assert_eq!(
                a.headers["tally-served-by"], owner,
                "{key} is answered by its owner"
            );
        }
    }
    // Every instance names the same owner and standby, never the owner as its own standby.
    for key in &keys[..5] {
        let views: Vec<serde_json::Value> = all
            .iter()
            .map(|p| {
                serde_json::from_str(&query(p, &format!("/owners/inventory/{key}")).body).unwrap()
            })
            .collect();
        for v in &views {
            assert_eq!(v["active"], views[0]["active"]);
            assert_eq!(v["standbys"], views[0]["standbys"]);
            assert_eq!(v["standbys"].as_array().unwrap().len(), 1);
            assert_ne!(v["standbys"][0]["instance"], v["active"]["instance"]);
        }
    }
}

/// `GET path` over HTTPS (checked against `ca`) with a bearer token: status, `Tally-Served-By`,
/// body.
fn https_query(p: &Processor, path: &str, ca: &Path, token: Option<&str>) -> (u16, String, String) {
    let mut c = Command::new("curl");
    c.args(["-s", "-D", "-", "--cacert"])
        .arg(ca)
        .arg(format!("https://127.0.0.1:{}{path}", p.http_port));
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = String::from_utf8_lossy(&c.output().unwrap().stdout).into_owned();
    let Some((head, body)) = out.split_once("\r\n\r\n") else {
        return (0, String::new(), out);
    };
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let served_by = head
        .lines()
        .filter_map(|l| l.split_once(": "))
        .find(|(k, _)| k.eq_ignore_ascii_case("tally-served-by"))
        .map_or(String::new(), |(_, v)| v.to_string());
    (status, served_by, body.to_string())
}

#[test]
fn a_query_over_https_is_forwarded_to_the_owner_with_its_token() {
    let certs = &common::secure().dir;
    let ca = certs.join("ca.pem");
    let mut setup = Setup::new("routed-https", Flow::Inventory, 2);
    setup.extra = format!(
        "token = \"routed-token\"\n[http.tls]\ncertificate = {:?}\nprivate_key = {:?}\npeer_ca = {:?}\n",
        certs.join("broker.crt").display().to_string(),
        certs.join("broker.key").display().to_string(),
        ca.display().to_string()
    );
    let all = ["a", "b"].map(|i| member(&setup, i, &[]));
    setup.load(500, 40, 0.0, 0.0, 0.0, 25);
    setup.wait_caught_up(LIMIT);
    let keys = some_keys(&setup, 20);
    let token = Some("routed-token");
    let mut forwarded = [0, 0];
    for key in &keys {
        let path = format!("/state/inventory/{key}");
        // Both instances answer alike once the group has settled.
        let started = Instant::now();
        let answers = loop {
            let answers = all.each_ref().map(|p| https_query(p, &path, &ca, token));
            if answers.iter().all(|a| a.0 == 200) && answers[0] == answers[1] {
                break answers;
            }
            assert!(started.elapsed() < LIMIT, "{key}: {answers:?}");
            std::thread::sleep(Duration::from_millis(200));
        };
        let owner = &answers[0].1;
        for (i, name) in ["a", "b"].iter().enumerate() {
            forwarded[i] += usize::from(owner != name);
        }
        let owners = https_query(&all[0], &format!("/owners/inventory/{key}"), &ca, token).2;
        let owners: serde_json::Value = serde_json::from_str(&owners).unwrap();
        assert_eq!(
            owners["active"]["instance"],
            owner.as_str(),
            "{key} is answered by its owner"
        );
    }
    assert!(
        forwarded.iter().all(|&n| n > 0),
        "each instance forwarded some: {forwarded:?}"
    );
    let without = all
        .each_ref()
        .map(|p| https_query(p, &format!("/state/inventory/{}", keys[0]), &ca, None).0);
    assert_eq!(without, [401, 401], "no token, no answer, forwarded or not");
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
    // The fence runs beside the restores, so it may finish after them.
    assert_eq!(
        wait_metric(&b, "tally_departed_owners_fenced_total", 1),
        1,
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
    assert_eq!(
        metric_with(&a, "tally_restores_total", "kind=\"full\""),
        0.0
    );
    assert_eq!(
        metric_with(&a, "tally_restores_total", "kind=\"tail\""),
        a_owns
    );
    assert_eq!(
        a.metric("tally_restore_records_total"),
        0.0,
        "a store left at SIGTERM is current; log {}",
        a.log.display()
    );
    assert_trusted(&setup.oracle());
}
