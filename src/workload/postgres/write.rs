//! Writing a load: batches of events, each event's history and outbox rows in one transaction.

use std::time::{Duration, Instant};

use super::rows::rows;
use super::{History, PgError, PgReport, PgSpec, Row};
use crate::source_db::sql_error;
use crate::workload::Flow;

/// Inserts a batch's history rows in one statement; the arrays are text and cast in SQL, so no
/// uuid or time feature of the client is needed. `ORDER BY n` keeps the events' order.
const STOCK_SQL: &str = "\
INSERT INTO inventory_transaction (event_id, sku, seller_id, location, bucket, delta, event_time)
SELECT u.event_id::uuid, u.sku, u.seller_id, u.location, u.bucket, u.delta, u.event_time::timestamptz
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[], $7::text[])
  WITH ORDINALITY AS u(event_id, sku, seller_id, location, bucket, delta, event_time, n)
ORDER BY u.n";

const POSTING_SQL: &str = "\
INSERT INTO posting (event_id, account_id, currency, entry_type, amount_minor, event_time)
SELECT u.event_id::uuid, u.account_id, u.currency, u.entry_type, u.amount_minor, u.event_time::timestamptz
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::text[])
  WITH ORDINALITY AS u(event_id, account_id, currency, entry_type, amount_minor, event_time, n)
ORDER BY u.n";

const OUTBOX_SQL: &str = "\
INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload)
SELECT u.id::uuid, u.aggregatetype, u.aggregateid, u.kind, u.payload::jsonb
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
  WITH ORDINALITY AS u(id, aggregatetype, aggregateid, kind, payload, n)
ORDER BY u.n";

/// How long after the start the event numbered `sent` is due: fixed to the start, so a slow
/// transaction is caught up on rather than pushing every later one back.
pub(super) fn due(sent: u64, rate: u64) -> Option<Duration> {
    (rate > 0).then(|| Duration::from_secs_f64(sent as f64 / rate as f64))
}

/// Writes the spec's rows, `spec.batch` events per transaction (each event's history and outbox
/// rows always in the same one), and reports after every commit to `on_progress`.
pub fn write(
    client: &mut postgres::Client,
    spec: &PgSpec,
    mut on_progress: impl FnMut(&PgReport),
) -> Result<PgReport, PgError> {
    spec.check()?;
    let history_sql = match spec.flow {
        Flow::Inventory => STOCK_SQL,
        Flow::Ledger => POSTING_SQL,
    };
    let history = client
        .prepare(history_sql)
        .map_err(|e| sql_error("preparing the history insert".into(), &e))?;
    let outbox = client
        .prepare(OUTBOX_SQL)
        .map_err(|e| sql_error("preparing the outbox insert".into(), &e))?;
    let mut report = PgReport {
        flow: spec.flow.to_string(),
        seed: spec.seed,
        ..PgReport::default()
    };
    let size = usize::try_from(spec.batch)
        .unwrap_or(usize::MAX)
        .min(100_000);
    let mut rows = rows(spec);
    let mut batch: Vec<Row> = Vec::with_capacity(size);
    let started = Instant::now();
    loop {
        batch.clear();
        batch.extend(rows.by_ref().take(size));
        let Some(first) = batch.first() else { break };
        if let Some(wait) =
            due(report.events, spec.rate).and_then(|d| d.checked_sub(started.elapsed()))
        {
            std::thread::sleep(wait);
        }
        let what = || {
            format!(
                "writing events {}..{} (first id {})",
                report.events,
                report.events + batch.len() as u64,
                first.event_id
            )
        };
        let mut tx = client.transaction().map_err(|e| sql_error(what(), &e))?;
        match spec.flow {
            Flow::Inventory => insert_stock(&mut tx, &history, &batch),
            Flow::Ledger => insert_postings(&mut tx, &history, &batch),
        }
        .map_err(|e| sql_error(what(), &e))?;
        insert_outbox(&mut tx, &outbox, &batch).map_err(|e| sql_error(what(), &e))?;
        tx.commit().map_err(|e| sql_error(what(), &e))?;
        for row in &batch {
            report.count(row);
        }
        report.transactions += 1;
        let elapsed = started.elapsed();
        report.elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        report.events_per_sec = report.events as f64 / elapsed.as_secs_f64().max(1e-9);
        on_progress(&report);
    }
    Ok(report)
}

/// A column of a batch, for one `unnest` array.
fn column<'a, T, U>(rows: &'a [T], f: impl Fn(&'a T) -> U) -> Vec<U> {
    rows.iter().map(f).collect()
}

fn insert_stock(
    tx: &mut postgres::Transaction<'_>,
    stmt: &postgres::Statement,
    batch: &[Row],
) -> Result<(), postgres::Error> {
    let rows: Vec<_> = batch
        .iter()
        .filter_map(|r| match &r.history {
            History::Stock {
                sku,
                seller_id,
                location,
                bucket,
                delta,
            } => Some((
                r,
                sku.as_str(),
                seller_id.as_str(),
                *location,
                *bucket,
                *delta,
            )),
            _ => None,
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    tx.execute(
        stmt,
        &[
            &column(&rows, |r| r.0.event_id.as_str()),
            &column(&rows, |r| r.1),
            &column(&rows, |r| r.2),
            &column(&rows, |r| r.3),
            &column(&rows, |r| r.4),
            &column(&rows, |r| r.5),
            &column(&rows, |r| r.0.event_time.as_str()),
        ],
    )?;
    Ok(())
}

fn insert_postings(
    tx: &mut postgres::Transaction<'_>,
    stmt: &postgres::Statement,
    batch: &[Row],
) -> Result<(), postgres::Error> {
    let rows: Vec<_> = batch
        .iter()
        .filter_map(|r| match &r.history {
            History::Posting {
                account_id,
                currency,
                entry_type,
                amount_minor,
            } => Some((
                r,
                account_id.as_str(),
                *currency,
                *entry_type,
                *amount_minor,
            )),
            _ => None,
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    tx.execute(
        stmt,
        &[
            &column(&rows, |r| r.0.event_id.as_str()),
            &column(&rows, |r| r.1),
            &column(&rows, |r| r.2),
            &column(&rows, |r| r.3),
            &column(&rows, |r| r.4),
            &column(&rows, |r| r.0.event_time.as_str()),
        ],
    )?;
    Ok(())
}

fn insert_outbox(
    tx: &mut postgres::Transaction<'_>,
    stmt: &postgres::Statement,
    batch: &[Row],
) -> Result<(), postgres::Error> {
    let ids: Vec<&str> = batch.iter().map(|r| r.event_id.as_str()).collect();
    let types: Vec<&str> = batch.iter().map(|r| r.outbox.aggregatetype).collect();
    let keys: Vec<&str> = batch
        .iter()
        .map(|r| r.outbox.aggregateid.as_str())
        .collect();
    let kinds: Vec<&str> = batch.iter().map(|r| r.outbox.kind.as_str()).collect();
    let payloads: Vec<&str> = batch.iter().map(|r| r.outbox.payload.as_str()).collect();
    tx.execute(stmt, &[&ids, &types, &keys, &kinds, &payloads])?;
    Ok(())
}
