//! The events the generator draws: realistic valid inventory movements and ledger postings,
//! their conflicting twins, and poison records of every invalid kind with the reason they earn.

use chrono::{DateTime, SecondsFormat};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Which event contract a workload (and an oracle check) is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flow {
    Inventory,
    Ledger,
}

impl std::str::FromStr for Flow {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "inventory" => Ok(Flow::Inventory),
            "ledger" => Ok(Flow::Ledger),
            other => Err(format!("unknown flow `{other}` (inventory or ledger)")),
        }
    }
}

impl std::fmt::Display for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Flow::Inventory => "inventory",
            Flow::Ledger => "ledger",
        })
    }
}

/// 2026-06-19T00:00:00Z in epoch seconds: the generator's fixed time origin.
const ORIGIN: i64 = 1_781_827_200;
const BUCKETS: [&str; 3] = ["sellable", "damaged", "return_to_vendor"];
const TYPES: [&str; 5] = ["deposited", "withdrawn", "reserved", "released", "captured"];
const CURRENCIES: [&str; 3] = ["EUR", "USD", "JPY"];

/// Poison kinds of each flow, in the order the generator cycles through them.
const INVENTORY_POISON: [&str; 8] = [
    "malformed_json",
    "missing_field",
    "invalid_field",
    "unknown_schema_version",
    "unknown_bucket",
    "unknown_operation",
    "out_of_range",
    "key_mismatch",
];
const LEDGER_POISON: [&str; 7] = [
    "malformed_json",
    "missing_field",
    "invalid_field",
    "unknown_schema_version",
    "unknown_type",
    "out_of_range",
    "key_mismatch",
];

/// One valid event, kept structured so it can be re-rendered as a duplicate, a conflict or poison.
#[derive(Debug, Clone)]
pub(super) enum Event {
    Inventory {
        id: String,
        key: u64,
        location: u8,
        bucket: usize,
        op: &'static str,
        to: Option<usize>,
        q: i64,
        t: i64,
    },
    Ledger {
        id: String,
        key: u64,
        kind: usize,
        amount: i64,
        currency: usize,
        t: i64,
    },
}

/// RFC 3339 UTC text of `t` seconds after the origin.
pub(super) fn time(t: i64) -> String {
    DateTime::from_timestamp(ORIGIN + t, 0).map_or_else(
        || t.to_string(),
        |d| d.to_rfc3339_opts(SecondsFormat::Secs, true),
    )
}

/// A rendered JSON object as (field, raw JSON value) pairs, so poison can alter one field.
struct Fields(Vec<(&'static str, String)>);

impl Fields {
    fn set(&mut self, name: &'static str, raw: String) {
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = raw,
            None => {
                // New fields go after `operation` (to_bucket), else at the end.
                let at = self
                    .0
                    .iter()
                    .position(|(n, _)| *n == "operation")
                    .map_or(self.0.len(), |p| p + 1);
                self.0.insert(at, (name, raw));
            }
        }
    }

    fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| *n != name);
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    fn render(&self) -> String {
        let mut s = String::with_capacity(256);
        s.push('{');
        for (i, (name, raw)) in self.0.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push('"');
            s.push_str(name);
            s.push_str("\":");
            s.push_str(raw);
        }
        s.push('}');
        s
    }
}

fn quoted(s: &str) -> String {
    format!("\"{s}\"")
}

impl Event {
    /// A fresh valid event for record `i` of a seeded run.
    pub(super) fn random(flow: Flow, rng: &mut ChaCha8Rng, seed: u64, i: u64, keys: u64) -> Self {
        let key = rng.random_range(0..keys.max(1));
        let t = i as i64 + rng.random_range(0..3);
        match flow {
            Flow::Inventory => {
                let bucket = rng.random_range(0..3);
                let (op, to, q) = match rng.random_range(0..10u8) {
                    0 => ("set", None, rng.random_range(0..100)),
                    1 => (
                        "move",
                        Some((bucket + rng.random_range(1..3)) % 3),
                        rng.random_range(1..6),
                    ),
                    _ => {
                        let q = rng.random_range(-5..=10);
                        ("adjust", None, if q == 0 { 1 } else { q })
                    }
                };
                Event::Inventory {
                    id: format!("inv-{seed}-{i}"),
                    key,
                    location: rng.random_range(1..=3),
                    bucket,
                    op,
                    to,
                    q,
                    t,
                }
            }
            Flow::Ledger => {
                // Deposits dominate so balances stay mostly positive.
                let kind = match rng.random_range(0..100u8) {
                    0..60 => 0,
                    60..75 => 1,
                    75..85 => 2,
                    85..93 => 3,
                    _ => 4,
                };
                let amount = if kind == 0 {
                    rng.random_range(100..10_000)
                } else {
                    rng.random_range(1..500)
                };
                // Most postings are in the account's home currency.
                let currency = if rng.random_range(0..100u8) < 85 {
                    (key % 3) as usize
                } else {
                    rng.random_range(0..3)
                };
                Event::Ledger {
                    id: format!("led-{seed}-{i}"),
                    key,
                    kind,
                    amount,
                    currency,
                    t,
                }
            }
        }
    }

    /// The Kafka message key (and aggregate key): `sku-NNNNNN` or `acc-NNNNNN`.
    pub(super) fn key(&self) -> String {
        match self {
            Event::Inventory { key, .. } => format!("sku-{key:06}"),
            Event::Ledger { key, .. } => format!("acc-{key:06}"),
        }
    }

    /// The same event id and key with a larger quantity or amount (still valid on its own).
    pub(super) fn conflicting(mut self, bump: i64) -> Self {
        match &mut self {
            Event::Inventory { q, .. } => *q += bump,
            Event::Ledger { amount, .. } => *amount += bump,
        }
        self
    }

    pub(super) fn to_json(&self) -> Vec<u8> {
        self.fields(None).render().into_bytes()
    }

    fn fields(&self, id_suffix: Option<u64>) -> Fields {
        let key = self.key();
        let suffix = id_suffix.map_or(String::new(), |n| format!("-x{n}"));
        match self {
            Event::Inventory {
                id,
                key: k,
                location,
                bucket,
                op,
                to,
                q,
                t,
            } => {
                let mut f = vec![
                    ("event_id", quoted(&format!("{id}{suffix}"))),
                    ("schema_version", "1".to_string()),
                    ("sku", quoted(&key)),
                    ("seller_id", quoted(&format!("seller-{}", k % 50))),
                    ("location_id", quoted(&format!("fc-{location}"))),
                    ("bucket", quoted(BUCKETS[*bucket])),
                    ("operation", quoted(op)),
                ];
                if let Some(b) = to {
                    f.push(("to_bucket", quoted(BUCKETS[*b])));
                }
                f.push(("quantity", q.to_string()));
                f.push(("event_time", quoted(&time(*t))));
                Fields(f)
            }
            Event::Ledger {
                id,
                kind,
                amount,
                currency,
                t,
                ..
            } => Fields(vec![
                ("event_id", quoted(&format!("{id}{suffix}"))),
                ("schema_version", "1".to_string()),
                ("account_id", quoted(&key)),
                ("type", quoted(TYPES[*kind])),
                ("amount_minor", amount.to_string()),
                ("currency", quoted(CURRENCIES[*currency])),
                ("event_time", quoted(&time(*t))),
                ("correlation_id", quoted(&format!("corr-{id}"))),
                ("causation_id", "null".to_string()),
            ]),
        }
    }

    /// The n-th poison record (n counts from 0), built from this event with one fault:
    /// (key, value, the dead-letter reason the contract gives it). Its event id gets a `-xN`
    /// suffix, so it never collides with a valid id or another poison record.
    pub(super) fn poison(&self, n: u64) -> (Option<Vec<u8>>, Vec<u8>, &'static str) {
        let inventory = matches!(self, Event::Inventory { .. });
        let kinds: &[&'static str] = if inventory {
            &INVENTORY_POISON
        } else {
            &LEDGER_POISON
        };
        let reason = kinds[(n % kinds.len() as u64) as usize];
        // Which variant of that kind: alternates on each pass through the cycle.
        let variant = n / kinds.len() as u64;
        let odd = variant % 2 == 1;
        let amount = if inventory {
            "quantity"
        } else {
            "amount_minor"
        };
        let mut f = self.fields(Some(n));
        let mut key = Some(self.key().into_bytes());
        match reason {
            "malformed_json" => {
                let json = f.render();
                let cut = if odd { json.len() - 1 } else { json.len() / 2 };
                return (key, json.as_bytes()[..cut].to_vec(), reason);
            }
            "missing_field" if !odd => f.remove(amount),
            "missing_field" => f.remove("event_time"),
            "invalid_field" if !odd => f.set(amount, quoted("seven")),
            "invalid_field" => f.set(amount, "7.5".to_string()),
            "unknown_schema_version" => {
                let v = if odd { "99" } else { "3" };
                f.set("schema_version", v.to_string());
            }
            "unknown_bucket" if !odd || f.get("to_bucket").is_none() => {
                f.set("bucket", quoted("misplaced"));
            }
            "unknown_bucket" => f.set("to_bucket", quoted("lost_and_found")),
            "unknown_operation" => f.set("operation", quoted("teleport")),
            "unknown_type" => f.set("type", quoted("embezzled")),
            "out_of_range" if inventory => match variant % 3 {
                0 => {
                    f.set("operation", quoted("set"));
                    f.remove("to_bucket");
                    f.set(amount, "-5".to_string());
                }
                1 => {
                    let from = f.get("bucket").unwrap_or_default().to_string();
                    let to = BUCKETS.iter().map(|b| quoted(b)).find(|b| *b != from);
                    f.set("operation", quoted("move"));
                    f.set("to_bucket", to.unwrap_or_else(|| quoted("damaged")));
                    f.set(amount, "0".to_string());
                }
                _ => {
                    f.set("operation", quoted("adjust"));
                    f.remove("to_bucket");
                    f.set(amount, "0".to_string());
                }
            },
            "out_of_range" => {
                let v = if odd { "-250" } else { "0" };
                f.set(amount, v.to_string());
            }
            _ => {
                // key_mismatch: another key, or none at all.
                key = (!odd).then(|| format!("not-{}", self.key()).into_bytes());
            }
        }
        (key, f.render().into_bytes(), reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_from_the_fixed_origin() {
        assert_eq!(time(0), "2026-06-19T00:00:00Z");
        assert_eq!(time(86_400 * 13 + 3661), "2026-07-02T01:01:01Z");
    }

    #[test]
    fn flows_parse_and_print_by_name() {
        for f in [Flow::Inventory, Flow::Ledger] {
            assert_eq!(f.to_string().parse::<Flow>(), Ok(f));
        }
        assert!("orders".parse::<Flow>().is_err());
    }

    #[test]
    fn valid_events_render_the_contract_fields_in_order() {
        let ev = Event::Inventory {
            id: "inv-1-0".into(),
            key: 7,
            location: 2,
            bucket: 0,
            op: "move",
            to: Some(1),
            q: 3,
            t: 5,
        };
        assert_eq!(
            String::from_utf8(ev.to_json()).unwrap(),
            r#"{"event_id":"inv-1-0","schema_version":1,"sku":"sku-000007","seller_id":"seller-7","location_id":"fc-2","bucket":"sellable","operation":"move","to_bucket":"damaged","quantity":3,"event_time":"2026-06-19T00:00:05Z"}"#
        );
        let ev = Event::Ledger {
            id: "led-1-0".into(),
            key: 3,
            kind: 2,
            amount: 250,
            currency: 1,
            t: 0,
        };
        assert_eq!(
            String::from_utf8(ev.to_json()).unwrap(),
            r#"{"event_id":"led-1-0","schema_version":1,"account_id":"acc-000003","type":"reserved","amount_minor":250,"currency":"USD","event_time":"2026-06-19T00:00:00Z","correlation_id":"corr-led-1-0","causation_id":null}"#
        );
    }
}
