//! Compares one output record with the oracle's expectation for its key, field by field, and names
//! the first field that differs with what was expected and what was found.

use serde_json::{json, Value};

use super::fold::{inventory_totals, Expected};
use super::Flow;

/// How far `events_applied` in an output record is from the expectation.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    Matched,
    /// Fewer events applied than the input holds (or the field is missing).
    Lost(String),
    /// More events applied than the input holds.
    DoubleApplied(String),
    /// Same count, another field differs.
    Wrong(String),
}

fn same(name: &str, want: Value, got: Option<&Value>) -> Result<(), String> {
    if got == Some(&want) {
        Ok(())
    } else {
        let got = got.map_or_else(|| "nothing".to_string(), Value::to_string);
        Err(format!("{name}: expected {want}, found {got}"))
    }
}

fn map_len(out: &Value, name: &str) -> Option<usize> {
    out.get(name).and_then(Value::as_object).map(|m| m.len())
}

/// Judges the output record `out` of `key` against `e`.
pub(super) fn compare(flow: Flow, key: &str, e: &Expected, out: &Value) -> Outcome {
    let applied = out.get("events_applied").and_then(Value::as_u64);
    match applied {
        Some(n) if n == e.events_applied => {}
        Some(n) if n > e.events_applied => {
            return Outcome::DoubleApplied(format!(
                "events_applied: expected {}, found {n}",
                e.events_applied
            ))
        }
        n => {
            return Outcome::Lost(format!(
                "events_applied: expected {}, found {}",
                e.events_applied,
                n.map_or_else(|| "nothing".to_string(), |n| n.to_string())
            ))
        }
    }
    match fields(flow, key, e, out) {
        Ok(()) => Outcome::Matched,
        Err(m) => Outcome::Wrong(m),
    }
}

fn fields(flow: Flow, key: &str, e: &Expected, out: &Value) -> Result<(), String> {
    match flow {
        Flow::Inventory => {
            same("sku", key.into(), out.get("sku"))?;
            let Some((t, on_hand)) = inventory_totals(e) else {
                return Err("expected totals overflow i64".to_string());
            };
            same("stock_on_hand", on_hand.into(), out.get("stock_on_hand"))?;
            same("sellable", t[0].into(), out.get("sellable"))?;
            same("damaged", t[1].into(), out.get("damaged"))?;
            same("return_to_vendor", t[2].into(), out.get("return_to_vendor"))?;
            for (loc, b) in &e.amounts {
                let want = json!({"sellable": b[0], "damaged": b[1], "return_to_vendor": b[2]});
                let got = out.get("locations").and_then(|l| l.get(loc));
                same(&format!("locations.{loc}"), want, got)?;
            }
            let n = map_len(out, "locations");
            same(
                "locations (count)",
                e.amounts.len().into(),
                n.map(Value::from).as_ref(),
            )?;
        }
        Flow::Ledger => {
            same("account_id", key.into(), out.get("account_id"))?;
            for (cur, a) in &e.amounts {
                let total = a[0]
                    .checked_add(a[1])
                    .ok_or("expected total overflows i64")?;
                let want = json!({"available": a[0], "reserved": a[1], "total": total});
                let got = out.get("balances").and_then(|b| b.get(cur));
                same(&format!("balances.{cur}"), want, got)?;
            }
            let n = map_len(out, "balances");
            same(
                "balances (count)",
                e.amounts.len().into(),
                n.map(Value::from).as_ref(),
            )?;
        }
    }
    same(
        "last_event_id",
        e.last_event_id.as_str().into(),
        out.get("last_event_id"),
    )?;
    // An instant, compared at the millisecond precision outputs carry.
    let found = out.get("last_event_time");
    let at = found
        .and_then(Value::as_str)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_millis());
    if at != Some(e.last_event_time_ms) {
        let want = chrono::DateTime::from_timestamp_millis(e.last_event_time_ms)
            .map_or_else(|| e.last_event_time_ms.to_string(), |t| t.to_rfc3339());
        let got = found.map_or_else(|| "nothing".to_string(), Value::to_string);
        return Err(format!("last_event_time: expected {want}, found {got}"));
    }
    same(
        "source",
        json!({"partition": e.partition, "offset": e.offset}),
        out.get("source"),
    )
}
