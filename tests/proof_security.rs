//! The proof suite's security scenarios: kill -9 on the secured broker, forged repairs under load,
//! and ~1 MB poison records under kill -9; the independent oracle must say nothing was lost,
//! doubled or changed by anyone without the key. Part of `deploy/local/prove`.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::faults::{kill_loop, kill_scenario, paced};
use common::proof::{self, size, verdict_with};
use common::{bootstrap, read_all, secure, Processor, Setup};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tally::workload::Flow;

const LIMIT: Duration = Duration::from_secs(300);

#[test]
fn s10_kill_9_on_the_secured_broker_over_sasl_ssl() {
    let setup = secure().setup("p-secure", Flow::Ledger, 6, "tally-sasl");
    kill_scenario(
        "10 kill-9 over SASL_SSL",
        &setup,
        size(2_000, 50_000),
        110,
        &["before_commit_transaction@1"],
    );
}

/// Sends a repair nobody authorized for each of `keys`: unsigned with the bound at i64::MAX.
fn forge(setup: &Setup, keys: &[String], partitions: i32) -> u64 {
    let topic = format!("{}-ledger-control", setup.app);
    let producer: BaseProducer = tally::kafka::clients::base(bootstrap(), &BTreeMap::new())
        .create()
        .unwrap();
    for (i, key) in keys.iter().enumerate() {
        let headers = OwnedHeaders::new().insert(Header {
            key: tally::signing::BOUND_HEADER,
            value: Some(&i64::MAX.to_string()),
        });
        let p = tally_topology::Partitioner::ConsistentRandom.partition(key.as_bytes(), partitions);
        producer
            .send(
                BaseRecord::to(&topic)
                    .partition(p)
                    .key(key.as_bytes())
                    .payload(&format!("forged-{i}").into_bytes()[..])
                    .headers(headers),
            )
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    keys.len() as u64
}

#[test]
fn s11_forged_repairs_under_load_are_refused_and_change_nothing() {
    let partitions = 6;
    let setup = Setup::new("p-forged", Flow::Ledger, partitions);
    let load = paced(
        &setup,
        size(12_000, 200_000),
        500,
        (0.05, 0.01, 0.0),
        111,
        2_000,
    );
    let a = Processor::start(&setup, "a", &[]);
    a.wait_ready(partitions as usize, LIMIT);
    std::thread::sleep(Duration::from_secs(2));
    let keys: Vec<String> = (0..size(20, 200)).map(|i| format!("acc-{i}")).collect();
    let forged = forge(&setup, &keys, partitions);
    load.join().unwrap();
    setup.wait_caught_up(LIMIT);
    // The control offsets commit with the next input commit; the load is over by now.
    let started = std::time::Instant::now();
    while (a.metric("tally_repairs_refused_total") as u64) < forged
        && started.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(250));
    }
    let refused = a.metric("tally_repairs_refused_total") as u64;
    let applied = a.metric("tally_repairs_applied_total") as u64;
    a.terminate();
    let audited = read_all(&format!("{}-evidence", setup.app))
        .iter()
        .filter(|r| {
            r.value
                .as_deref()
                .is_some_and(|v| String::from_utf8_lossy(v).contains("\"refusal\":\"unsigned\""))
        })
        .count() as u64;
    verdict_with(
        "11 forged repairs",
        forged,
        &setup.oracle(),
        &[
            ("every forged repair refused", refused == forged),
            ("none applied", applied == 0),
            ("every refusal audited", audited == forged),
        ],
    );
}

/// Sends `n` non-JSON values of ~1 MB (under the broker's 1,048,588-byte limit), paced.
fn big_poison(setup: &Setup, n: u64, every: Duration) -> std::thread::JoinHandle<u64> {
    let (bootstrap, topic, partitions) = (
        setup.bootstrap.clone(),
        setup.input.clone(),
        setup.partitions,
    );
    std::thread::spawn(move || {
        let producer: BaseProducer = tally::kafka::clients::base(&bootstrap, &BTreeMap::new())
            .set("message.max.bytes", "1048576")
            .create()
            .unwrap();
        let value = vec![b'~'; 1_040_000];
        for i in 0..n {
            std::thread::sleep(every);
            let key = format!("big-{i}");
            producer
                .send(
                    BaseRecord::to(&topic)
                        .partition((i % partitions as u64) as i32)
                        .key(key.as_bytes())
                        .payload(&value[..]),
                )
                .map_err(|(e, _)| e)
                .unwrap();
            producer.flush(Duration::from_secs(30)).unwrap();
        }
        n
    })
}

#[test]
fn s12_one_megabyte_poison_under_kill_9_is_dead_lettered_and_stalls_nothing() {
    let setup = Setup::new("p-bigpoison", Flow::Inventory, 4);
    let load = paced(
        &setup,
        size(10_000, 200_000),
        1_000,
        (0.05, 0.01, 0.001),
        112,
        1_000,
    );
    let big = big_poison(&setup, size(8, 40), Duration::from_millis(size(1_000, 400)));
    let (faults, missed, sent) = kill_loop(
        &setup,
        &["a", "b"],
        size(3, 10),
        Duration::from_millis(2_000),
        &["after_commit_transaction@1"],
        load,
    );
    let big = big.join().unwrap();
    setup.wait_caught_up(LIMIT);
    let report = setup.oracle();
    let mut injected = proof::injected_by_reason(&[sent]);
    *injected.entry("malformed_json".into()).or_default() += big;
    let cut = read_all(&setup.dlq)
        .iter()
        .filter(|r| {
            r.headers
                .get("tally.truncated")
                .is_some_and(|t| t == "value")
        })
        .count() as u64;
    verdict_with(
        "12 1 MB poison across kills",
        faults,
        &report,
        &[
            (
                "dead letters by reason equal what was injected",
                report.dead_letters_by_reason == injected,
            ),
            ("every 1 MB record dead-lettered cut to fit", cut == big),
            ("every in-commit hook fired", missed == 0),
        ],
    );
}
