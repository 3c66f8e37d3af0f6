//! The oracle's own validation and fold of input records, written apart from the projection code on
//! purpose: two implementations of the event contracts that must agree, or the oracle says where.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use serde_json::{Map, Value};

use super::Flow;

/// Longest accepted id or key, in bytes (the contract's bound on ids).
const MAX_ID: usize = 256;
const BUCKETS: [&str; 3] = ["sellable", "damaged", "return_to_vendor"];

/// What one input record is to the oracle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Applied,
    Duplicate,
    Conflict,
    /// Not applied; the reason is the dead-letter reason the contract gives it.
    Invalid(&'static str),
}

/// The expected output of one key: everything the output record must say.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct Expected {
    /// Location -> [sellable, damaged, return_to_vendor], or currency -> [available, reserved, 0].
    pub amounts: BTreeMap<String, [i64; 3]>,
    pub events_applied: u64,
    pub last_event_id: String,
    pub last_event_time_ms: i64,
    pub partition: i32,
    pub offset: i64,
}

/// A validated event: where it lands and what it does.
#[derive(Debug)]
struct Event {
    id: String,
    key: String,
    /// Location (inventory) or currency (ledger).
    slot: String,
    change: Change,
    time_ms: i64,
    /// Hash of every parsed field: equal for a duplicate, different for a conflict.
    content: u64,
}

#[derive(Debug)]
enum Change {
    Add(Vec<(usize, i64)>),
    Set(usize, i64),
}

/// Folds records partition by partition in offset order, keeping per-key state and, for dedupe,
/// one content hash per event id and partition.
pub(super) struct Fold {
    flow: Flow,
    /// Partition -> first-seen event id -> (content hash, event time).
    pub seen: HashMap<i32, HashMap<Box<str>, (u64, i64)>>,
    /// Partition -> latest event time of an applied event: what dedupe expiry counts from.
    pub watermarks: HashMap<i32, i64>,
    pub keys: HashMap<String, Expected>,
}

type Check<T> = Result<T, &'static str>;

fn field<'a>(o: &'a Map<String, Value>, name: &str) -> Check<&'a Value> {
    o.get(name).ok_or("missing_field")
}

fn string<'a>(o: &'a Map<String, Value>, name: &str) -> Check<&'a str> {
    field(o, name)?.as_str().ok_or("invalid_field")
}

fn id<'a>(o: &'a Map<String, Value>, name: &str) -> Check<&'a str> {
    let s = string(o, name)?;
    if s.is_empty() || s.len() > MAX_ID {
        return Err("invalid_field");
    }
    Ok(s)
}

/// An optional string field: absent or null is `None`.
fn optional<'a>(o: &'a Map<String, Value>, name: &str) -> Check<Option<&'a str>> {
    match o.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err("invalid_field"),
    }
}

fn integer(o: &Map<String, Value>, name: &str) -> Check<i64> {
    field(o, name)?.as_i64().ok_or("invalid_field")
}

fn bucket(name: &str) -> Check<usize> {
    BUCKETS
        .iter()
        .position(|b| *b == name)
        .ok_or("unknown_bucket")
}

fn time_ms(o: &Map<String, Value>) -> Check<i64> {
    let t = string(o, "event_time")?;
    chrono::DateTime::parse_from_rfc3339(t)
        .map(|t| t.timestamp_millis())
        .map_err(|_| "invalid_field")
}

fn fingerprint(fields: impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    fields.hash(&mut h);
    h.finish()
}

/// Validates one record against its flow's contract; `Err` is the dead-letter reason.
fn validate(flow: Flow, key: Option<&[u8]>, value: Option<&[u8]>) -> Check<Event> {
    let v: Value =
        serde_json::from_slice(value.ok_or("malformed_json")?).map_err(|_| "malformed_json")?;
    let o = v.as_object().ok_or("malformed_json")?;
    let event_id = id(o, "event_id")?;
    let version = field(o, "schema_version")?;
    if !version.is_u64() {
        return Err("invalid_field");
    }
    if version.as_u64() != Some(1) {
        return Err("unknown_schema_version");
    }
    let event = match flow {
        Flow::Inventory => inventory(o, event_id)?,
        Flow::Ledger => ledger(o, event_id)?,
    };
    if key != Some(event.key.as_bytes()) {
        return Err("key_mismatch");
    }
    Ok(event)
}

fn inventory(o: &Map<String, Value>, event_id: &str) -> Check<Event> {
    let sku = id(o, "sku")?;
    let seller = id(o, "seller_id")?;
    let location = id(o, "location_id")?;
    let from = bucket(string(o, "bucket")?)?;
    let op = string(o, "operation")?;
    if !matches!(op, "adjust" | "set" | "move") {
        return Err("unknown_operation");
    }
    let to = optional(o, "to_bucket")?.map(bucket).transpose()?;
    let q = integer(o, "quantity")?;
    let time_ms = time_ms(o)?;
    let change = match (op, to) {
        ("adjust", _) if q == 0 => return Err("out_of_range"),
        ("set", _) if q < 0 => return Err("out_of_range"),
        ("move", _) if q <= 0 => return Err("out_of_range"),
        ("move", None) => return Err("missing_field"),
        ("move", Some(t)) if t == from => return Err("invalid_field"),
        ("move", Some(t)) => Change::Add(vec![(from, -q), (t, q)]),
        (_, Some(_)) => return Err("invalid_field"),
        ("set", None) => Change::Set(from, q),
        _ => Change::Add(vec![(from, q)]),
    };
    let content = fingerprint((event_id, sku, seller, location, from, op, to, q, time_ms));
    Ok(Event {
        id: event_id.to_string(),
        key: sku.to_string(),
        slot: location.to_string(),
        change,
        time_ms,
        content,
    })
}

fn ledger(o: &Map<String, Value>, event_id: &str) -> Check<Event> {
    let account = id(o, "account_id")?;
    let kind = string(o, "type")?;
    // Signs of the change to [available, reserved].
    let signs: [i64; 2] = match kind {
        "deposited" => [1, 0],
        "withdrawn" => [-1, 0],
        "reserved" => [-1, 1],
        "released" => [1, -1],
        "captured" => [0, -1],
        _ => return Err("unknown_type"),
    };
    let a = integer(o, "amount_minor")?;
    if a <= 0 {
        return Err("out_of_range");
    }
    let change = (0..2)
        .filter(|i| signs[*i] != 0)
        .map(|i| (i, signs[i] * a))
        .collect();
    let currency = string(o, "currency")?;
    if currency.len() != 3 || !currency.bytes().all(|c| c.is_ascii_uppercase()) {
        return Err("invalid_field");
    }
    let time_ms = time_ms(o)?;
    let correlation = optional(o, "correlation_id")?;
    let causation = optional(o, "causation_id")?;
    let content = fingerprint((
        event_id,
        account,
        kind,
        a,
        currency,
        time_ms,
        correlation,
        causation,
    ));
    Ok(Event {
        id: event_id.to_string(),
        key: account.to_string(),
        slot: currency.to_string(),
        change: Change::Add(change),
        time_ms,
        content,
    })
}

/// Totals of an inventory key (per bucket, then stock on hand), `None` when they overflow i64.
pub(super) fn inventory_totals(e: &Expected) -> Option<([i64; 3], i64)> {
    let mut t = [0i64; 3];
    for b in e.amounts.values() {
        for i in 0..3 {
            t[i] = t[i].checked_add(b[i])?;
        }
    }
    Some((t, t[0].checked_add(t[1])?.checked_add(t[2])?))
}

impl Fold {
    /// An empty fold of one flow.
    pub(super) fn new(flow: Flow) -> Self {
        Fold {
            flow,
            seen: HashMap::new(),
            watermarks: HashMap::new(),
            keys: HashMap::new(),
        }
    }

    /// Applies one input record (records of a partition must come in offset order).
    pub(super) fn record(
        &mut self,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Verdict {
        let ev = match validate(self.flow, key, value) {
            Ok(ev) => ev,
            Err(reason) => return Verdict::Invalid(reason),
        };
        let seen = self.seen.entry(partition).or_default();
        if let Some(first) = seen.get(ev.id.as_str()) {
            return if first.0 == ev.content {
                Verdict::Duplicate
            } else {
                Verdict::Conflict
            };
        }
        // Compute the new amounts apart, so an overflowing event changes nothing.
        let prev = self.keys.get(&ev.key);
        let old = prev
            .and_then(|e| e.amounts.get(&ev.slot))
            .copied()
            .unwrap_or_default();
        let mut slot = old;
        match &ev.change {
            Change::Set(i, v) => slot[*i] = *v,
            Change::Add(deltas) => {
                for (i, d) in deltas {
                    match slot[*i].checked_add(*d) {
                        Some(v) => slot[*i] = v,
                        None => return Verdict::Invalid("overflow"),
                    }
                }
            }
        }
        // The built-in contracts: sellable (inventory), available and reserved (ledger) do not
        // go below zero from zero or above.
        let guarded: &[usize] = match self.flow {
            Flow::Inventory => &[0],
            Flow::Ledger => &[0, 1],
        };
        if guarded.iter().any(|&i| old[i] >= 0 && slot[i] < 0) {
            return Verdict::Invalid("invariant_violated");
        }
        let mut next = prev.cloned().unwrap_or_default();
        next.amounts.insert(ev.slot, slot);
        let fits = match self.flow {
            Flow::Inventory => inventory_totals(&next).is_some(),
            Flow::Ledger => slot[0].checked_add(slot[1]).is_some(),
        };
        let Some(applied) = next.events_applied.checked_add(1).filter(|_| fits) else {
            return Verdict::Invalid("overflow");
        };
        next.events_applied = applied;
        next.last_event_id.clone_from(&ev.id);
        next.last_event_time_ms = ev.time_ms;
        next.partition = partition;
        next.offset = offset;
        self.keys.insert(ev.key, next);
        seen.insert(ev.id.into_boxed_str(), (ev.content, ev.time_ms));
        let wm = self.watermarks.entry(partition).or_insert(ev.time_ms);
        *wm = (*wm).max(ev.time_ms);
        Verdict::Applied
    }
}
