//! The events the generator draws: realistic valid inventory movements and ledger postings,
//! their conflicting twins, and one poison record of every invalid kind.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Which event contract to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
            other => Err(format!("unknown flow `{other}`")),
        }
    }
}

/// 2026-06-19T00:00:00Z in epoch seconds: the generator's fixed time origin.
const ORIGIN: i64 = 1_781_827_200;
const BUCKETS: [&str; 3] = ["sellable", "damaged", "return_to_vendor"];
const TYPES: [&str; 5] = ["deposited", "withdrawn", "reserved", "released", "captured"];
const CURRENCIES: [&str; 3] = ["EUR", "USD", "JPY"];

/// One valid event, kept structured so it can be re-rendered as a duplicate or a conflict.
#[derive(Debug, Clone)]
pub(crate) enum Event {
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

fn time(t: i64) -> String {
    let secs = ORIGIN + t;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

impl Event {
    pub(crate) fn random(flow: Flow, rng: &mut ChaCha8Rng, seed: u64, i: u64, keys: u64) -> Self {
        let key = rng.random_range(0..keys.max(1));
        let t = i as i64 + rng.random_range(0..3);
        match flow {
            Flow::Inventory => {
                let roll: u8 = rng.random_range(0..10);
                let bucket = rng.random_range(0..3);
                let (op, to, q) = match roll {
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
                let roll: u8 = rng.random_range(0..100);
                let kind = match roll {
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
                Event::Ledger {
                    id: format!("led-{seed}-{i}"),
                    key,
                    kind,
                    amount,
                    currency: rng.random_range(0..3),
                    t,
                }
            }
        }
    }

    pub(crate) fn key(&self) -> String {
        match self {
            Event::Inventory { key, .. } => format!("sku-{key:06}"),
            Event::Ledger { key, .. } => format!("acc-{key:06}"),
        }
    }

    /// The same event id and key with a different quantity or amount.
    pub(crate) fn conflicting(mut self) -> Self {
        match &mut self {
            Event::Inventory { q, .. } => *q += 1000,
            Event::Ledger { amount, .. } => *amount += 1000,
        }
        self
    }

    pub(crate) fn to_json(&self) -> Vec<u8> {
        self.render(None).into_bytes()
    }

    fn render(&self, id_suffix: Option<usize>) -> String {
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
                let to = to.map_or(String::new(), |b| {
                    format!(",\"to_bucket\":\"{}\"", BUCKETS[b])
                });
                format!(
                    r#"{{"event_id":"{id}{suffix}","schema_version":1,"sku":"{key}","seller_id":"seller-{}","location_id":"fc-{location}","bucket":"{}","operation":"{op}"{to},"quantity":{q},"event_time":"{}"}}"#,
                    k % 50,
                    BUCKETS[*bucket],
                    time(*t)
                )
            }
            Event::Ledger {
                id,
                kind,
                amount,
                currency,
                t,
                ..
            } => format!(
                r#"{{"event_id":"{id}{suffix}","schema_version":1,"account_id":"{key}","type":"{}","amount_minor":{amount},"currency":"{}","event_time":"{}","correlation_id":"corr-{id}","causation_id":null}}"#,
                TYPES[*kind],
                CURRENCIES[*currency],
                time(*t)
            ),
        }
    }

    /// The n-th poison record, built from this event: (key, value, expected reason).
    pub(crate) fn poison(&self, n: usize) -> (Option<Vec<u8>>, Vec<u8>, &'static str) {
        let key = self.key();
        let json = self.render(Some(n));
        let is_inv = matches!(self, Event::Inventory { .. });
        let amount_field = if is_inv {
            "\"quantity\":"
        } else {
            "\"amount_minor\":"
        };
        let replace_number = |json: &str, with: &str| -> String {
            let start = json
                .find(amount_field)
                .map_or(0, |p| p + amount_field.len());
            let end = start + json[start..].find(',').unwrap_or(0);
            format!("{}{with}{}", &json[..start], &json[end..])
        };
        let kinds: &[&str] = if is_inv {
            &[
                "malformed_json",
                "missing_field",
                "invalid_field",
                "unknown_schema_version",
                "unknown_bucket",
                "unknown_operation",
                "out_of_range",
                "key_mismatch",
            ]
        } else {
            &[
                "malformed_json",
                "missing_field",
                "invalid_field",
                "unknown_schema_version",
                "unknown_type",
                "out_of_range",
                "key_mismatch",
            ]
        };
        let reason = kinds[n % kinds.len()];
        let mut k = Some(key.clone().into_bytes());
        let value = match reason {
            "malformed_json" => json[..json.len() / 2].to_string(),
            "missing_field" => json.replacen(amount_field, "\"dropped\":", 1),
            "invalid_field" => replace_number(&json, "\"seven\""),
            "unknown_schema_version" => {
                json.replacen("\"schema_version\":1", "\"schema_version\":2", 1)
            }
            "unknown_bucket" => {
                let b = BUCKETS
                    .iter()
                    .find(|b| json.contains(&format!("\"bucket\":\"{b}\"")))
                    .copied()
                    .unwrap_or("sellable");
                json.replacen(
                    &format!("\"bucket\":\"{b}\""),
                    "\"bucket\":\"misplaced\"",
                    1,
                )
            }
            "unknown_operation" => {
                let op = ["adjust", "set", "move"]
                    .iter()
                    .find(|o| json.contains(&format!("\"operation\":\"{o}\"")))
                    .copied()
                    .unwrap_or("adjust");
                json.replacen(
                    &format!("\"operation\":\"{op}\""),
                    "\"operation\":\"teleport\"",
                    1,
                )
            }
            "unknown_type" => {
                let t = TYPES
                    .iter()
                    .find(|t| json.contains(&format!("\"type\":\"{t}\"")))
                    .copied()
                    .unwrap_or("deposited");
                json.replacen(&format!("\"type\":\"{t}\""), "\"type\":\"embezzled\"", 1)
            }
            "out_of_range" if is_inv => {
                // A negative absolute count; a move is turned into a set so the rule is the same.
                let j = json
                    .replacen("\"operation\":\"adjust\"", "\"operation\":\"set\"", 1)
                    .replacen("\"operation\":\"move\"", "\"operation\":\"set\"", 1);
                let j = match j.find(",\"to_bucket\"") {
                    Some(p) => {
                        let end = p + j[p + 1..].find(',').map_or(0, |e| e + 1);
                        format!("{}{}", &j[..p], &j[end..])
                    }
                    None => j,
                };
                replace_number(&j, "-5")
            }
            "out_of_range" => replace_number(&json, "0"),
            _ => {
                k = Some(format!("not-{key}").into_bytes());
                json
            }
        };
        (k, value.into_bytes(), reason)
    }
}

#[cfg(test)]
mod tests {
    use super::time;

    #[test]
    fn times_are_rfc3339_from_the_fixed_origin() {
        assert_eq!(time(0), "2026-06-19T00:00:00Z");
        assert_eq!(time(86_400 * 13 + 3661), "2026-07-02T01:01:01Z");
    }
}
