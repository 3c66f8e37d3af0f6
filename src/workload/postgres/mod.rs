//! `tally load --target postgres`: a deterministic workload written the way a service writes it,
//! each event's history row and outbox row in one transaction, for Debezium to carry to Kafka.

use std::collections::BTreeMap;

use serde::Serialize;

use super::Flow;
pub use crate::source_db::connect;
use crate::source_db::{sql_error, DbError};
pub use rows::{event_id, rows};
pub use write::write;

mod rows;
mod write;

/// What to write, so a load (and the state a check expects) can be reproduced from its spec.
#[derive(Debug, Clone, PartialEq)]
pub struct PgSpec {
    pub flow: Flow,
    /// Events in total, poison included.
    pub events: u64,
    /// Distinct aggregate keys (`sku-NNNNNN` / `acc-NNNNNN`).
    pub keys: u64,
    /// Fraction of events that are poison: an outbox row only, cycling through the kinds.
    pub invalid: f64,
    /// Events per database transaction.
    pub batch: u64,
    /// Events per second, paced per transaction; 0 for as fast as the database takes them.
    pub rate: u64,
    /// Seeds the ChaCha8 generator and the event ids.
    pub seed: u64,
}

/// The most events a spec may ask for: it bounds every generated count and balance far below
/// i64::MAX, so the generator's arithmetic cannot overflow, and keeps ids unique (< 2^61).
pub const MAX_EVENTS: u64 = 1_000_000_000_000;

impl PgSpec {
    /// Refuses a spec `write` cannot honour, before anything is connected or written.
    pub fn check(&self) -> Result<(), PgError> {
        let bad = |m: &str| Err(PgError::Spec(m.to_string()));
        if self.keys == 0 {
            return bad("keys must be > 0");
        }
        if self.batch == 0 {
            return bad("batch must be > 0");
        }
        if !(0.0..1.0).contains(&self.invalid) {
            return bad("invalid must be within [0, 1)");
        }
        if self.events > MAX_EVENTS {
            return bad("events must be <= 10^12");
        }
        Ok(())
    }
}

/// One event as the database gets it: its outbox row, and its history row unless it is poison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Version-4-shaped UUID text: the history row's key, outbox.id and the payload's event_id.
    pub event_id: String,
    /// RFC 3339 UTC, a fixed origin plus one second per event (never the wall clock).
    pub event_time: String,
    pub history: History,
    pub outbox: Outbox,
}

/// What an event leaves in its history table, or why it leaves nothing there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum History {
    /// An `inventory_transaction` row.
    Stock {
        sku: String,
        seller_id: String,
        location: &'static str,
        bucket: &'static str,
        delta: i64,
    },
    /// A `posting` row.
    Posting {
        account_id: String,
        currency: &'static str,
        entry_type: &'static str,
        amount_minor: i64,
    },
    /// Poison: only the outbox row exists, and tally dead-letters it with this reason, so the
    /// fold of the history tables stays equal to what the projection holds.
    Poison(&'static str),
}

/// An `outbox` row in the layout Debezium's outbox EventRouter reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbox {
    pub aggregatetype: &'static str,
    pub aggregateid: String,
    /// The `type` column.
    pub kind: String,
    /// tally's event JSON (schema_version 1), stored as jsonb.
    pub payload: String,
}

/// What `write` committed, so a check can compare the pipeline's counts with the injected ones.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct PgReport {
    pub flow: String,
    pub seed: u64,
    pub events: u64,
    pub valid: u64,
    pub invalid: u64,
    /// Poison by the dead-letter reason tally gives it.
    pub invalid_by_reason: BTreeMap<String, u64>,
    pub first_event_id: Option<String>,
    pub last_event_id: Option<String>,
    pub transactions: u64,
    pub elapsed_ms: u64,
    pub events_per_sec: f64,
}

impl PgReport {
    fn count(&mut self, row: &Row) {
        self.events += 1;
        match row.history {
            History::Poison(reason) => {
                self.invalid += 1;
                *self
                    .invalid_by_reason
                    .entry(reason.to_string())
                    .or_default() += 1;
            }
            _ => self.valid += 1,
        }
        if self.first_event_id.is_none() {
            self.first_event_id = Some(row.event_id.clone());
        }
        self.last_event_id = Some(row.event_id.clone());
    }
}

/// Why a load into PostgreSQL failed; no variant ever holds the password.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("invalid load spec: {0}")]
    Spec(String),
}

/// The recovery contracts of the pipeline's flows, whose `source_query` folds their history.
const CONTRACTS: [(Flow, &str); 2] = [
    (
        Flow::Inventory,
        include_str!("../../../deploy/local/sql/contracts/inventory.toml"),
    ),
    (
        Flow::Ledger,
        include_str!("../../../deploy/local/sql/contracts/ledger.toml"),
    ),
];

/// The fold query of a flow's history table: its pipeline contract's `source_query`, what
/// `reconcile --against-source` trusts.
pub fn fold_sql(flow: Flow) -> String {
    let text = CONTRACTS
        .iter()
        .find(|(f, _)| *f == flow)
        .map_or("", |(_, t)| t);
    let contract: Result<tally_topology::Contract, _> = toml::from_str(text);
    contract
        .ok()
        .and_then(|c| c.reconciliation.source_query)
        .unwrap_or_default()
}

/// Runs a flow's fold query: what its projection must hold, as (key, path, value) rows.
pub fn fold(
    client: &mut postgres::Client,
    flow: Flow,
) -> Result<Vec<(String, String, i64)>, PgError> {
    let rows = client
        .query(fold_sql(flow).as_str(), &[])
        .map_err(|e| sql_error(format!("folding the {flow} history"), &e))?;
    Ok(rows
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect::<Result<_, postgres::Error>>()
        .map_err(|e| sql_error(format!("reading the {flow} fold"), &e))?)
}

#[cfg(test)]
mod tests;
