//! Against a real broker: a restarted processor restores its stores from the changelog,
//! incrementally when the store is intact and fully when it was deleted; results stay exact.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{assert_trusted, bootstrap, read_all, send, Processor, Setup};
use rdkafka::consumer::Consumer;
use rdkafka::TopicPartitionList;
use tally::workload::Flow;
use tally_state::CommitMetadata;

const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn a_restart_with_an_intact_store_restores_incrementally() {
    let setup = Setup::new("restore-inc", Flow::Inventory, 3);
    let p = Processor::start(&setup, "a", &[]);
    setup.load(3_000, 500, 0.05, 0.0, 0.0, 4);
    setup.wait_caught_up(LIMIT);
    p.terminate();

    let p = Processor::start(&setup, "a", &[]);
    p.wait_ready(3, LIMIT);
    let restored = p.metric("tally_restore_records_total");
    assert!(
        restored < 10.0,
        "an intact store reads (almost) nothing back, read {restored}"
    );
    setup.load(1_000, 500, 0.05, 0.0, 0.0, 5);
    setup.wait_caught_up(LIMIT);
    assert_trusted(&setup.oracle());
}

#[test]
fn a_restart_with_a_deleted_store_restores_fully() {
    let setup = Setup::new("restore-full", Flow::Ledger, 3);
    let p = Processor::start(&setup, "a", &[]);
    let sent = setup.load(3_000, 400, 0.0, 0.0, 0.0, 6);
    setup.wait_caught_up(LIMIT);
    let keys = setup.oracle().keys_expected;
    p.terminate();
    std::fs::remove_dir_all(setup.state_dir()).unwrap();

    let p = Processor::start(&setup, "a", &[]);
    p.wait_ready(3, LIMIT);
    let restored = p.metric("tally_restore_records_total");
    // Every changelog record is read back: at least one state per key, and at least one dedupe
    // bundle per partition.
    let records = read_all(&setup.changelog());
    let bundles: Vec<_> = records
        .iter()
        .filter(|r| r.key.as_deref().is_some_and(|k| k.starts_with(b"b")))
        .filter_map(|r| r.value.as_deref())
        .collect();
    let mut ids = std::collections::HashSet::new();
    for b in &bundles {
        tally_state::bundle::decode_bundle(b, |id, _| {
            ids.insert(id.to_vec());
        })
        .expect("a readable bundle");
    }
    assert_eq!(
        ids.len() as u64,
        sent.valid_events,
        "every applied id in a bundle"
    );
    let bundles = bundles.len() as u64;
    assert_eq!(restored, records.len() as f64);
    assert!(
        bundles >= 3 && records.len() as u64 >= keys + bundles,
        "{} records, {bundles} bundles, {keys} keys",
        records.len()
    );
    // Redelivering the same history must change nothing: the restored dedupe index knows it all.
    setup.load(3_000, 400, 0.0, 0.0, 0.0, 6);
    setup.wait_caught_up(LIMIT);
    let report = setup.oracle();
    assert_trusted(&report);
    assert_eq!(p.metric("tally_events_processed_total"), 0.0);
}

/// The committed offset tells the next owner the watermark of that position and how far the
/// changelog holds its records, in a transaction (exactly_once) as well as in a plain offset
/// commit (at_least_once, with the output's end).
#[rstest::rstest]
#[case::exactly_once("exactly_once")]
#[case::at_least_once("at_least_once")]
fn the_committed_offset_carries_the_watermark_and_changelog_end_of_its_position(
    #[case] guarantee: &'static str,
) {
    let mut setup = Setup::new("commit-wm", Flow::Inventory, 1);
    setup.guarantee = guarantee;
    let _p = Processor::start(&setup, "a", &[]);
    let event = |id: &str, at: &str| {
        format!(
            r#"{{"event_id":"{id}","schema_version":1,"sku":"sku-1","seller_id":"s","location_id":"fc-1","bucket":"sellable","operation":"adjust","quantity":1,"event_time":"{at}"}}"#
        )
    };
    // Out of order on purpose: the watermark is the highest event time, not the last one.
    let late = event("e-1", "2026-06-19T10:30:00Z");
    let early = event("e-2", "2026-06-19T10:00:00Z");
    send(&setup.input, &[("sku-1", &late), ("sku-1", &early)]);
    setup.wait_caught_up(LIMIT);

    let reader = tally::kafka::clients::quiet_reader(bootstrap(), &BTreeMap::new(), &setup.app)
        .expect("reader");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&setup.input, 0);
    let committed = reader
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    let at = committed
        .find_partition(&setup.input, 0)
        .expect("partition 0");
    // at_least_once also records where the output partition ended once the commit's records
    // were acknowledged; the next owner compares it with the output's end after a crash.
    let output_end = (guarantee == "at_least_once").then(|| {
        reader
            .fetch_watermarks(&setup.output, 0, Duration::from_secs(10))
            .expect("output watermarks")
            .1
    });
    let last_changelog_record = read_all(&setup.changelog())
        .iter()
        .map(|r| r.offset)
        .max()
        .expect("changelog records");
    let expected = CommitMetadata {
        watermark_ms: 1_781_865_000_000,
        changelog_end: Some(last_changelog_record + 1),
        output_end,
    };
    assert_eq!(
        CommitMetadata::decode(at.metadata()).expect("tally's metadata"),
        Some(expected),
        "metadata `{}`",
        at.metadata()
    );
}

/// A committed transaction's changelog records can stay unreadable (read_committed) after its
/// offsets are stable: its markers wait for a bounced leader, or another producer's transaction
/// opened before them holds the partition's stable end. The restore waits for the records the
/// committed offset stands for instead of taking the end it can read for the end.
#[test]
fn a_restore_waits_for_committed_changelog_records_held_behind_an_open_transaction() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    let setup = Setup::new("restore-lso", Flow::Inventory, 1);
    let p = Processor::start(&setup, "a", &[]);
    setup.load(1_000, 50, 0.0, 0.0, 0.0, 11);
    setup.wait_caught_up(LIMIT);
    p.terminate();

    // Another producer opens a transaction on the changelog partition and leaves it open.
    let foreign: BaseProducer = tally::kafka::clients::base(bootstrap(), &BTreeMap::new())
        .set("transactional.id", format!("{}-foreign", setup.app))
        .create()
        .expect("foreign producer");
    let timeout = Duration::from_secs(30);
    foreign.init_transactions(timeout).expect("init");
    foreign.begin_transaction().expect("begin");
    let changelog = setup.changelog();
    let stray = BaseRecord::to(&changelog)
        .partition(0)
        .key("stray")
        .payload("never committed");
    foreign.send(stray).map_err(|(e, _)| e).expect("send");
    foreign.flush(timeout).expect("flush");

    // The processor commits more changelog records behind it, then loses its store.
    let p = Processor::start(&setup, "a", &[]);
    setup.load(1_000, 50, 0.0, 0.0, 0.0, 12);
    setup.wait_caught_up(LIMIT);
    p.terminate();
    std::fs::remove_dir_all(setup.state_dir()).unwrap();

    // The rebuild can read only up to the open transaction until it is aborted.
    let p = Processor::start(&setup, "a", &[]);
    std::thread::sleep(Duration::from_secs(6));
    foreign.abort_transaction(timeout).expect("abort");
    p.wait_ready(1, LIMIT);
    setup.load(1_000, 50, 0.0, 0.0, 0.0, 13);
    setup.wait_caught_up(LIMIT);
    assert_trusted(&setup.oracle());
}
