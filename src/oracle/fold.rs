//! The oracle's own validation and fold, written apart from `tally-topology` on purpose: two
//! implementations of the contract that must agree, or the oracle reports the difference.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value};

use crate::workload::Flow;

/// What one input record is to the oracle.
pub(crate) enum Verdict {
    Applied,
    Duplicate,
    Conflict,
    Invalid,
}

/// Expected state of one key.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Expected {
    /// location or currency -> three (inventory) or two (ledger) amounts.
    pub amounts: BTreeMap<String, [i64; 3]>,
    pub events_applied: u64,
    pub last_event_id: String,
    pub last_event_time_ms: i64,
    pub partition: i32,
    pub offset: i64,
}

struct Parsed {
    id: String,
    key: String,
    slot: String,
    /// (index, delta) pairs, or a set of index to value.
    change: Change,
    time_ms: i64,
    canonical: String,
}

enum Change {
    Add(Vec<(usize, i64)>),
    Set(usize, i64),
}

/// Folds records partition by partition in offset order.
#[derive(Default)]
pub(crate) struct Fold {
    seen: HashMap<(i32, String), String>,
    pub keys: HashMap<String, Expected>,
}

fn s<'a>(o: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    o.get(k)?
        .as_str()
        .filter(|v| !v.is_empty() && v.len() <= 256)
}

fn bucket(name: &str) -> Option<usize> {
    ["sellable", "damaged", "return_to_vendor"]
        .iter()
        .position(|b| *b == name)
}

fn parse(flow: Flow, key: Option<&[u8]>, value: &[u8]) -> Option<Parsed> {
    let v: Value = serde_json::from_slice(value).ok()?;
    let o = v.as_object()?;
    if o.get("schema_version")?.as_u64()? != 1 {
        return None;
    }
    let id = s(o, "event_id")?.to_string();
    let time = o.get("event_time")?.as_str()?;
    let time_ms = chrono::DateTime::parse_from_rfc3339(time)
        .ok()?
        .timestamp_millis();
    let (agg, parsed) = match flow {
        Flow::Inventory => {
            let sku = s(o, "sku")?;
            let seller = s(o, "seller_id")?;
            let loc = s(o, "location_id")?;
            let b = bucket(o.get("bucket")?.as_str()?)?;
            let q = o.get("quantity")?.as_i64()?;
            let to = match o.get("to_bucket") {
                None => None,
                Some(Value::Null) => None,
                Some(t) => Some(bucket(t.as_str()?)?),
            };
            let op = o.get("operation")?.as_str()?;
            let change = match (op, to) {
                ("adjust", None) if q != 0 => Change::Add(vec![(b, q)]),
                ("set", None) if q >= 0 => Change::Set(b, q),
                ("move", Some(t)) if q > 0 && t != b => {
                    Change::Add(vec![(b, q.checked_neg()?), (t, q)])
                }
                _ => return None,
            };
            let canonical = format!("{id}|{sku}|{seller}|{loc}|{b}|{op}|{to:?}|{q}|{time_ms}");
            (
                sku,
                Parsed {
                    id,
                    key: sku.to_string(),
                    slot: loc.to_string(),
                    change,
                    time_ms,
                    canonical,
                },
            )
        }
        Flow::Ledger => {
            let acc = s(o, "account_id")?;
            let a = o.get("amount_minor")?.as_i64().filter(|a| *a > 0)?;
            let cur = o.get("currency")?.as_str()?;
            if cur.len() != 3 || !cur.bytes().all(|c| c.is_ascii_uppercase()) {
                return None;
            }
            let opt = |k: &str| match o.get(k) {
                None | Some(Value::Null) => Some(String::new()),
                Some(Value::String(x)) => Some(format!("={x}")),
                Some(_) => None,
            };
            let (corr, caus) = (opt("correlation_id")?, opt("causation_id")?);
            let ty = o.get("type")?.as_str()?;
            let change = match ty {
                "deposited" => vec![(0, a)],
                "withdrawn" => vec![(0, -a)],
                "reserved" => vec![(0, -a), (1, a)],
                "released" => vec![(0, a), (1, -a)],
                "captured" => vec![(1, -a)],
                _ => return None,
            };
            let canonical = format!("{id}|{acc}|{ty}|{a}|{cur}|{time_ms}|{corr}|{caus}");
            (
                acc,
                Parsed {
                    id,
                    key: acc.to_string(),
                    slot: cur.to_string(),
                    change: Change::Add(change),
                    time_ms,
                    canonical,
                },
            )
        }
    };
    (key == Some(agg.as_bytes())).then_some(parsed)
}

impl Fold {
    /// Applies one input record and says what it was.
    pub(crate) fn record(
        &mut self,
        flow: Flow,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Verdict {
        let Some(p) = value.and_then(|v| parse(flow, key, v)) else {
            return Verdict::Invalid;
        };
        if let Some(prev) = self.seen.get(&(partition, p.id.clone())) {
            return if *prev == p.canonical {
                Verdict::Duplicate
            } else {
                Verdict::Conflict
            };
        }
        let mut e = self.keys.get(&p.key).cloned().unwrap_or_default();
        let slot = e.amounts.entry(p.slot.clone()).or_default();
        let ok = match &p.change {
            Change::Set(i, v) => {
                slot[*i] = *v;
                true
            }
            Change::Add(deltas) => deltas.iter().all(|(i, d)| match slot[*i].checked_add(*d) {
                Some(v) => {
                    slot[*i] = v;
                    true
                }
                None => false,
            }),
        };
        if !ok {
            return Verdict::Invalid;
        }
        e.events_applied += 1;
        e.last_event_id = p.id.clone();
        e.last_event_time_ms = p.time_ms;
        e.partition = partition;
        e.offset = offset;
        self.keys.insert(p.key, e);
        self.seen.insert((partition, p.id), p.canonical);
        Verdict::Applied
    }
}

/// Compares one output record with the expectation; `Err` names the first differing field.
pub(crate) fn compare(flow: Flow, e: &Expected, out: &Value) -> Result<(), String> {
    let field = |name: &str, want: Value, got: Option<&Value>| -> Result<(), String> {
        if got == Some(&want) {
            Ok(())
        } else {
            Err(format!(
                "{name}: expected {want}, found {}",
                got.map_or("nothing".into(), Value::to_string)
            ))
        }
    };
    match flow {
        Flow::Inventory => {
            let mut totals = [0i64; 3];
            for (loc, b) in &e.amounts {
                for i in 0..3 {
                    totals[i] += b[i];
                }
                let got = out.get("locations").and_then(|l| l.get(loc));
                field(
                    &format!("locations.{loc}"),
                    serde_json::json!({"sellable": b[0], "damaged": b[1], "return_to_vendor": b[2]}),
                    got,
                )?;
            }
            let n_locs = out
                .get("locations")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len());
            if n_locs != e.amounts.len() {
                return Err(format!(
                    "locations: expected {}, found {n_locs}",
                    e.amounts.len()
                ));
            }
            field(
                "stock_on_hand",
                totals.iter().sum::<i64>().into(),
                out.get("stock_on_hand"),
            )?;
            field("sellable", totals[0].into(), out.get("sellable"))?;
            field("damaged", totals[1].into(), out.get("damaged"))?;
            field(
                "return_to_vendor",
                totals[2].into(),
                out.get("return_to_vendor"),
            )?;
        }
        Flow::Ledger => {
            for (cur, a) in &e.amounts {
                let got = out.get("balances").and_then(|b| b.get(cur));
                field(
                    &format!("balances.{cur}"),
                    serde_json::json!({"available": a[0], "reserved": a[1], "total": a[0] + a[1]}),
                    got,
                )?;
            }
            let n = out
                .get("balances")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len());
            if n != e.amounts.len() {
                return Err(format!("balances: expected {}, found {n}", e.amounts.len()));
            }
        }
    }
    field(
        "last_event_id",
        e.last_event_id.clone().into(),
        out.get("last_event_id"),
    )?;
    let t = out
        .get("last_event_time")
        .and_then(Value::as_str)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_millis());
    if t != Some(e.last_event_time_ms) {
        return Err(format!(
            "last_event_time: expected {} ms, found {t:?}",
            e.last_event_time_ms
        ));
    }
    field(
        "source",
        serde_json::json!({"partition": e.partition, "offset": e.offset}),
        out.get("source"),
    )
}
