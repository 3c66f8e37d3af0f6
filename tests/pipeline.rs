//! The whole pipeline on real servers: a service writes stock movements to PostgreSQL with an
//! outbox row each, Debezium in Kafka Connect relays the outbox to Kafka, tally projects it.
//! Whatever fails on the way (Connect killed, the outbox relayed twice, PostgreSQL restarted,
//! the processor killed), every test ends with `tally reconcile --against-source`: each sku's
//! projection equals PostgreSQL's fold of its history, and each poison row is dead-lettered
//! with its reason. Redeliveries are counted on the input topic by the outbox `id` header (or,
//! when Debezium streams the table itself, by the `event_id` of the inserted row), independently
//! of the processor.

mod common;

use std::time::{Duration, Instant};

use common::pipeline::{
    self, change_event, last_per_key, relayed, relayed_cdc, servers, spec, wait_metric, Pipeline,
    Relayed, Written, PARTITIONS,
};
use common::read_all;
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(120);
const DUPLICATES: &str = "tally_duplicates_skipped_total";

#[test]
fn rows_relayed_again_after_connect_is_killed_are_absorbed() {
    let _alone = pipeline::disrupting();
    let started = Instant::now();
    let p = Pipeline::new("pl-connect-kill");
    p.register(&p.connector, "initial");
    let processor = p.start("a");
    processor.wait_ready(PARTITIONS as usize, LIMIT);
    let connect = &servers().connect;

    // A kill -9 of Connect makes Debezium relay again what it sent after its last offset flush
    // (every second). A kill that landed right on a flush is repeated in another burst.
    let mut written = Written::default();
    let mut input = Vec::new();
    let mut again = Relayed::default();
    let mut kills = 0;
    for burst in 0..3 {
        let spec = spec(if burst == 0 { 4000 } else { 1000 }, 200, 800, 10 + burst);
        written.add(&spec);
        let writing = p.write_in_background(&spec);
        writing.wait_written(spec.events / 2);
        connect.ctl("kill").unwrap();
        kills += 1;
        connect.ctl("start").unwrap();
        writing.join();
        input = p.wait_relayed(&written, LIMIT);
        again = relayed(&input, &written);
        if again.valid_again > 0 {
            break;
        }
    }
    eprintln!(
        "connect killed {kills}x: {} of {} records on the input were relayed again \
         ({} valid rows, {} poison)",
        again.valid_again + again.poison_again,
        again.records,
        again.valid_again,
        again.poison_again
    );
    assert!(
        again.valid_again > 0,
        "{kills} kills of Connect redelivered no row"
    );

    p.setup.wait_caught_up(LIMIT);
    assert_eq!(
        wait_metric(&processor, DUPLICATES, again.valid_again),
        again.valid_again,
        "every row relayed again is skipped as a duplicate, and nothing else"
    );
    p.assert_exact(&written);
    let dead = p.assert_dead_letters(&input, &written);
    assert_eq!(dead, written.poison.len() as u64 + again.poison_again);
    eprintln!("took {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn a_re_snapshot_of_the_outbox_changes_nothing() {
    let _shared = pipeline::sharing();
    let started = Instant::now();
    let p = Pipeline::new("pl-resnapshot");
    p.register(&p.connector, "initial");
    let processor = p.start("a");
    let spec = spec(1500, 150, 0, 20);
    let written = Written::of([&spec]);
    let report = p.write(&spec);
    let input = p.wait_relayed(&written, LIMIT);
    p.setup.wait_caught_up(LIMIT);
    p.assert_exact(&written);
    let before = relayed(&input, &written);
    let skipped_before = wait_metric(&processor, DUPLICATES, before.valid_again);
    assert_eq!(skipped_before, before.valid_again);
    let output_before = last_per_key(&read_all(&p.setup.output));

    // A second connector with its own slot snapshots the outbox table: every row once more.
    let second = format!("{}_again", p.connector);
    p.register(&second, "initial");
    let input = p.wait_input(before.records + report.events, LIMIT);
    p.setup.wait_caught_up(LIMIT);
    let after = relayed(&input, &written);
    eprintln!(
        "re-snapshot: the input holds {} records for {} outbox rows; {} valid rows and {} \
         poison relayed again",
        after.records,
        report.events,
        after.valid_again - before.valid_again,
        after.poison_again - before.poison_again
    );
    assert!(after.records >= 2 * report.events, "{after:?}");
    assert_eq!(
        after.valid_again - before.valid_again,
        report.valid,
        "every valid row relayed once more"
    );
    assert_eq!(
        wait_metric(&processor, DUPLICATES, skipped_before + report.valid) - skipped_before,
        report.valid,
        "every row of the snapshot is skipped as a duplicate"
    );
    p.assert_exact(&written);
    assert!(
        last_per_key(&read_all(&p.setup.output)) == output_before,
        "an output record changed"
    );
    let dead = p.assert_dead_letters(&input, &written);
    assert_eq!(dead, report.invalid + after.poison_again);
    eprintln!("took {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn a_postgres_restart_mid_load_loses_nothing() {
    let _alone = pipeline::disrupting();
    let started = Instant::now();
    let p = Pipeline::new("pl-pg-restart");
    p.register(&p.connector, "initial");
    let _processor = p.start("a");
    // Two halves with ids of their own (another seed), each on its own connection.
    let (first, second) = (spec(1000, 150, 500, 30), spec(1000, 150, 500, 31));
    let written = Written::of([&first, &second]);
    let one = p.write(&first);
    servers().pg.ctl("restart").unwrap();
    let two = p.write(&second);

    let input = p.wait_relayed(&written, LIMIT);
    p.setup.wait_caught_up(LIMIT);
    p.assert_exact(&written);
    let again = relayed(&input, &written);
    eprintln!("postgres restart: {again:?}");
    let dead = p.assert_dead_letters(&input, &written);
    assert_eq!(dead, one.invalid + two.invalid + again.poison_again);
    eprintln!("took {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn a_processor_killed_mid_load_applies_every_row_once() {
    let _shared = pipeline::sharing();
    let started = Instant::now();
    let p = Pipeline::new("pl-tally-kill");
    p.register(&p.connector, "initial");
    let first = p.start("a");
    first.wait_ready(PARTITIONS as usize, LIMIT);
    let spec = spec(3000, 200, 600, 40);
    let written = Written::of([&spec]);
    let writing = p.write_in_background(&spec);
    writing.wait_written(spec.events / 2);
    // Killed with a quarter of the load projected, mid-stream.
    let applied = wait_metric(&first, "tally_events_processed_total", spec.events / 4);
    assert!(applied > 0, "the processor applied nothing before the kill");
    first.kill9();
    let _second = p.start("a");
    let report = writing.join();

    let input = p.wait_relayed(&written, LIMIT);
    p.setup.wait_caught_up(LIMIT);
    p.assert_exact(&written);
    // Once each: a sku's events_applied is its number of rows in the table.
    let rows = p.sql("select sku, count(*) from inventory_transaction group by sku");
    let output = last_per_key(&read_all(&p.setup.output));
    for line in rows.lines() {
        let (sku, n) = line.split_once('|').unwrap();
        let record: Value = serde_json::from_slice(&output[sku.as_bytes()]).unwrap();
        assert_eq!(
            record["events_applied"].as_i64(),
            Some(n.parse().unwrap()),
            "{sku}: {record}"
        );
    }
    let again = relayed(&input, &written);
    eprintln!("processor killed after {applied} events applied; {again:?}");
    let dead = p.assert_dead_letters(&input, &written);
    assert_eq!(dead, report.invalid + again.poison_again);
    eprintln!("took {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn a_row_changed_behind_the_pipelines_back_is_reported_by_key() {
    let _shared = pipeline::sharing();
    let started = Instant::now();
    let p = Pipeline::new("pl-drift");
    p.register(&p.connector, "initial");
    let _processor = p.start("a");
    let spec = spec(800, 100, 0, 50);
    let written = Written::of([&spec]);
    p.write(&spec);
    p.wait_relayed(&written, LIMIT);
    p.setup.wait_caught_up(LIMIT);
    p.assert_exact(&written);

    let row = p.sql(
        "select event_id, sku, location, bucket from inventory_transaction \
         order by event_id limit 1",
    );
    let [id, sku, location, bucket]: [&str; 4] = row
        .trim()
        .split('|')
        .collect::<Vec<_>>()
        .try_into()
        .unwrap();
    let output = last_per_key(&read_all(&p.setup.output));
    let record: Value = serde_json::from_slice(&output[sku.as_bytes()]).unwrap();
    let live = |path: &str| record.pointer(path).and_then(Value::as_i64).unwrap_or(0);

    // No outbox row: the pipeline never hears of it.
    p.sql(&format!(
        "update inventory_transaction set delta = delta + 1000 where event_id = '{id}'"
    ));
    // Every value the contract folds that row into differs by its 1000, and nothing else does:
    // the row's own bucket at its location and the stock on hand at least (the fold may total
    // more, such as the bucket over all locations).
    p.reconcile(5).assert_drift(
        sku,
        &[
            format!("/locations/{location}/{bucket}"),
            "/stock_on_hand".into(),
        ],
        1000,
        live,
    );
    eprintln!("took {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn a_table_streamed_by_change_data_capture_projects_exactly() {
    // It kills Connect, which would make the other tests' connectors relay rows again.
    let _alone = pipeline::disrupting();
    let started = Instant::now();
    let p = Pipeline::cdc("pl-cdc");
    p.register(&p.connector, "initial");
    let processor = p.start("a");
    processor.wait_ready(PARTITIONS as usize, LIMIT);
    let connect = &servers().connect;

    // Killed mid-load, Debezium streams again what it sent after its last offset flush: the same
    // inserts, counted here by the row's event_id. Poison rows exist only in the outbox, which
    // this connector does not capture.
    let mut written = Written::default();
    let mut again = Relayed::default();
    let mut kills = 0;
    for burst in 0..3 {
        let spec = spec(if burst == 0 { 2000 } else { 500 }, 200, 800, 60 + burst);
        written.add(&spec);
        let writing = p.write_in_background(&spec);
        writing.wait_written(spec.events / 2);
        connect.ctl("kill").unwrap();
        kills += 1;
        connect.ctl("start").unwrap();
        writing.join();
        let input = p.wait_relayed(&written, LIMIT);
        again = relayed_cdc(&input, &written);
        if again.valid_again > 0 {
            break;
        }
    }
    eprintln!(
        "connect killed {kills}x: {} of {} change events on the input were streamed again \
         ({} rows in the table)",
        again.valid_again, again.records, written.valid
    );
    assert!(
        again.valid_again > 0,
        "{kills} kills of Connect redelivered no row"
    );

    p.setup.wait_caught_up(LIMIT);
    p.assert_no_dead_letters();
    assert_eq!(
        wait_metric(&processor, DUPLICATES, again.valid_again),
        again.valid_again,
        "every row streamed again is skipped as a duplicate, and nothing else"
    );
    p.assert_exact(&written);
    eprintln!("took {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn an_update_of_the_append_only_history_is_dead_lettered_and_changes_nothing() {
    let _shared = pipeline::sharing();
    let started = Instant::now();
    let p = Pipeline::cdc("pl-cdc-update");
    p.register(&p.connector, "initial");
    let _processor = p.start("a");
    let spec = spec(600, 100, 0, 70);
    let written = Written::of([&spec]);
    p.write(&spec);
    p.wait_relayed(&written, LIMIT);
    p.setup.wait_caught_up(LIMIT);
    p.assert_no_dead_letters();
    p.assert_exact(&written);
    let output_before = last_per_key(&read_all(&p.setup.output));

    let row = p.sql(
        "select event_id, sku, location, bucket from inventory_transaction \
         order by event_id limit 1",
    );
    let [id, sku, location, bucket]: [&str; 4] = row
        .trim()
        .split('|')
        .collect::<Vec<_>>()
        .try_into()
        .unwrap();
    p.sql(&format!(
        "update inventory_transaction set delta = delta + 1 where event_id = '{id}'"
    ));

    // The change event of the update reaches the input; the processor passes it.
    let waited = Instant::now();
    let update = loop {
        let found = read_all(&p.setup.input).into_iter().find(|r| {
            change_event(r).is_some_and(|(op, after)| op == "u" && after["event_id"] == id)
        });
        if let Some(r) = found {
            break r;
        }
        assert!(
            waited.elapsed() < LIMIT,
            "no update of {id} on the input; connectors: {}",
            p.connector_states()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    p.setup.wait_caught_up(LIMIT);

    let dead = read_all(&p.setup.dlq);
    assert_eq!(dead.len(), 1, "dead letters: {:?}", dead);
    let d = &dead[0];
    assert_eq!(d.headers["tally.error.reason"], "unsupported_change");
    assert_eq!(
        (
            d.headers["tally.source.partition"].parse::<i32>().unwrap(),
            d.headers["tally.source.offset"].parse::<i64>().unwrap()
        ),
        (update.partition, update.offset),
        "the dead letter is the update's"
    );
    assert_eq!(d.key.as_deref(), Some(sku.as_bytes()));
    assert!(d.value == update.value, "the change event is kept whole");
    assert_eq!(
        update.headers["__debezium.context.connectorLogicalName"], p.setup.app,
        "{:?}",
        update.headers
    );
    for (name, value) in &update.headers {
        assert_eq!(
            d.headers.get(name),
            Some(value),
            "Debezium's header {name} is kept"
        );
    }

    let output_after = last_per_key(&read_all(&p.setup.output));
    assert!(
        output_after[sku.as_bytes()] == output_before[sku.as_bytes()],
        "the output record of {sku} changed"
    );
    assert!(output_after == output_before, "an output record changed");

    // The table now says one unit more than the projection, at that row's bucket and location
    // and in the sku's totals; nothing else differs.
    let record: Value = serde_json::from_slice(&output_before[sku.as_bytes()]).unwrap();
    let live = |path: &str| record.pointer(path).and_then(Value::as_i64).unwrap_or(0);
    p.reconcile(5).assert_drift(
        sku,
        &[
            format!("/locations/{location}/{bucket}"),
            format!("/{bucket}"),
            "/stock_on_hand".into(),
        ],
        1,
        live,
    );
    eprintln!("took {:.1} s", started.elapsed().as_secs_f64());
}
