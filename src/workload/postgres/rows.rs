//! The rows of a load: deterministic stock movements and postings, each with its outbox row, and
//! the poison that only the outbox carries.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{History, Outbox, PgSpec, Row};
use crate::workload::Flow;

/// 2026-01-01T00:00:00Z in epoch seconds: event i happens i seconds later.
pub(super) const ORIGIN: i64 = 1_767_225_600;
pub(super) const LOCATIONS: [&str; 4] = ["fc-1", "fc-2", "fc-3", "fc-4"];
pub(super) const BUCKETS: [&str; 3] = ["sellable", "damaged", "return_to_vendor"];
pub(super) const CURRENCIES: [&str; 2] = ["EUR", "USD"];
pub(super) const TYPES: [&str; 5] = ["deposited", "withdrawn", "reserved", "released", "captured"];
/// Poison kinds in the order each flow cycles through them, with the reason tally gives each.
pub(super) const STOCK_POISON: [&str; 3] = ["unknown_bucket", "out_of_range", "missing_field"];
pub(super) const POSTING_POISON: [&str; 2] = ["unknown_type", "out_of_range"];

/// The rows of a spec, in order; pure and deterministic (same spec, same rows).
pub fn rows(spec: &PgSpec) -> impl Iterator<Item = Row> {
    Rows {
        spec: spec.clone(),
        rng: ChaCha8Rng::seed_from_u64(spec.seed),
        i: 0,
        poison: 0,
        stock: HashMap::new(),
        money: HashMap::new(),
    }
}

struct Rows {
    spec: PgSpec,
    rng: ChaCha8Rng,
    i: u64,
    poison: u64,
    /// (sku, location, bucket) -> units, so no valid delta takes a bucket below zero.
    stock: HashMap<(u64, usize, usize), i64>,
    /// (account, currency) -> (available, reserved), so no posting takes either below zero.
    money: HashMap<(u64, usize), (i64, i64)>,
}

impl Iterator for Rows {
    type Item = Row;

    fn next(&mut self) -> Option<Row> {
        if self.i >= self.spec.events {
            return None;
        }
        let i = self.i;
        self.i += 1;
        let poison = self.rng.random::<f64>() < self.spec.invalid;
        let key = self.rng.random_range(0..self.spec.keys.max(1));
        let event_id = event_id(self.spec.flow, self.spec.seed, i);
        let event_time = event_time(i);
        let poison = poison.then(|| {
            self.poison += 1;
            self.poison - 1
        });
        let (history, outbox) = match self.spec.flow {
            Flow::Inventory => self.stock(key, poison, &event_id, &event_time),
            Flow::Ledger => self.posting(key, poison, &event_id, &event_time),
        };
        Some(Row {
            event_id,
            event_time,
            history,
            outbox,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = usize::try_from(self.spec.events - self.i).unwrap_or(usize::MAX);
        (left, Some(left))
    }
}

impl Rows {
    /// A stock adjustment of `sku-{key}`, or the `n`-th poison record when `poison` is `Some(n)`.
    fn stock(&mut self, key: u64, poison: Option<u64>, id: &str, t: &str) -> (History, Outbox) {
        let location = self.rng.random_range(0..LOCATIONS.len());
        let bucket = match self.rng.random_range(0..10u8) {
            0..7 => 0,
            7..9 => 1,
            _ => 2,
        };
        // -5..=20 without 0: 5 removals to 20 receipts, so stock builds up.
        let drawn = self.rng.random_range(-5..=19i64);
        let drawn = if drawn >= 0 { drawn + 1 } else { drawn };
        let sku = format!("sku-{key:06}");
        let seller_id = format!("seller-{:02}", mix64(key) % 100);
        let (history, bucket_text, quantity, with_sku) = match poison {
            Some(n) => {
                let reason = STOCK_POISON[(n % STOCK_POISON.len() as u64) as usize];
                let (b, q, s) = match reason {
                    "unknown_bucket" => ("misplaced", drawn, true),
                    "out_of_range" => (BUCKETS[bucket], 0, true),
                    _ => (BUCKETS[bucket], drawn, false),
                };
                (History::Poison(reason), b, q, s)
            }
            None => {
                let have = self.stock.entry((key, location, bucket)).or_default();
                // A removal larger than the bucket holds becomes a receipt of the same size.
                // Counts stay below 20 * MAX_EVENTS, so the addition is exact.
                let delta = if have.saturating_add(drawn) < 0 {
                    -drawn
                } else {
                    drawn
                };
                *have = have.saturating_add(delta);
                let h = History::Stock {
                    sku: sku.clone(),
                    seller_id: seller_id.clone(),
                    location: LOCATIONS[location],
                    bucket: BUCKETS[bucket],
                    delta,
                };
                (h, BUCKETS[bucket], delta, true)
            }
        };
        let mut fields = vec![
            ("event_id", Json::Str(id)),
            ("schema_version", Json::Int(1)),
        ];
        if with_sku {
            fields.push(("sku", Json::Str(&sku)));
        }
        fields.extend([
            ("seller_id", Json::Str(&seller_id)),
            ("location_id", Json::Str(LOCATIONS[location])),
            ("bucket", Json::Str(bucket_text)),
            ("operation", Json::Str("adjust")),
            ("quantity", Json::Int(quantity)),
            ("event_time", Json::Str(t)),
        ]);
        let outbox = Outbox {
            aggregatetype: "inventory",
            aggregateid: sku.clone(),
            kind: "StockAdjusted".to_string(),
            payload: object(&fields),
        };
        (history, outbox)
    }

    /// A posting to `acc-{key}`, or the `n`-th poison record when `poison` is `Some(n)`.
    fn posting(&mut self, key: u64, poison: Option<u64>, id: &str, t: &str) -> (History, Outbox) {
        // Most postings are in the account's home currency.
        let currency = if self.rng.random_range(0..100u8) < 85 {
            (key % 2) as usize
        } else {
            self.rng.random_range(0..CURRENCIES.len())
        };
        let kind = match self.rng.random_range(0..100u8) {
            0..50 => 0,
            50..65 => 1,
            65..80 => 2,
            80..90 => 3,
            _ => 4,
        };
        let amount: i64 = match kind {
            0 => self.rng.random_range(1_000..=50_000),
            1 | 2 => self.rng.random_range(100..=5_000),
            _ => self.rng.random_range(50..=2_500),
        };
        let account_id = format!("acc-{key:06}");
        let (history, type_text, amount) = match poison {
            Some(n) => {
                let reason = POSTING_POISON[(n % POSTING_POISON.len() as u64) as usize];
                let (k, a) = match reason {
                    "unknown_type" => ("embezzled", amount),
                    _ => (TYPES[kind], 0),
                };
                (History::Poison(reason), k, a)
            }
            None => {
                let (available, reserved) = self.money.entry((key, currency)).or_default();
                let short = match kind {
                    1 | 2 => *available < amount,
                    3 | 4 => *reserved < amount,
                    _ => false,
                };
                let kind = if short { 0 } else { kind };
                // Balances stay below 50_000 * MAX_EVENTS, so these are exact.
                match kind {
                    0 => *available = available.saturating_add(amount),
                    1 => *available = available.saturating_sub(amount),
                    2 => {
                        *available = available.saturating_sub(amount);
                        *reserved = reserved.saturating_add(amount);
                    }
                    3 => {
                        *reserved = reserved.saturating_sub(amount);
                        *available = available.saturating_add(amount);
                    }
                    _ => *reserved = reserved.saturating_sub(amount),
                }
                let h = History::Posting {
                    account_id: account_id.clone(),
                    currency: CURRENCIES[currency],
                    entry_type: TYPES[kind],
                    amount_minor: amount,
                };
                (h, TYPES[kind], amount)
            }
        };
        let payload = object(&[
            ("event_id", Json::Str(id)),
            ("schema_version", Json::Int(1)),
            ("account_id", Json::Str(&account_id)),
            ("type", Json::Str(type_text)),
            ("amount_minor", Json::Int(amount)),
            ("currency", Json::Str(CURRENCIES[currency])),
            ("event_time", Json::Str(t)),
        ]);
        let outbox = Outbox {
            aggregatetype: "ledger",
            aggregateid: account_id,
            kind: type_text.to_string(),
            payload,
        };
        (history, outbox)
    }
}

/// A JSON value of a payload field.
enum Json<'a> {
    Str(&'a str),
    Int(i64),
}

/// A JSON object with its fields in the contract's order (jsonb keeps an order of its own, but
/// this text is what the tests and a reader see).
fn object(fields: &[(&str, Json<'_>)]) -> String {
    let mut s = String::with_capacity(256);
    s.push('{');
    for (n, (name, value)) in fields.iter().enumerate() {
        if n > 0 {
            s.push(',');
        }
        s.push_str(&serde_json::Value::from(*name).to_string());
        s.push(':');
        match value {
            Json::Str(v) => s.push_str(&serde_json::Value::from(*v).to_string()),
            Json::Int(v) => s.push_str(&v.to_string()),
        }
    }
    s.push('}');
    s
}

/// RFC 3339 UTC text of event `i`'s time, as tally renders event times.
pub(super) fn event_time(i: u64) -> String {
    let secs = ORIGIN.saturating_add(i64::try_from(i).unwrap_or(i64::MAX));
    tally_topology::time::render_event_time(secs.saturating_mul(1000))
}

/// The splitmix64 finalizer: a bijection of u64 that spreads every input bit.
pub(super) fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

pub(super) const LOW_61: u64 = (1 << 61) - 1;

/// A bijection of the 61-bit integers (xorshifts and odd multiplications modulo 2^61), so
/// distinct event numbers always give distinct ids.
pub(super) fn permute61(mut x: u64) -> u64 {
    x &= LOW_61;
    x ^= x >> 31;
    x = x.wrapping_mul(0x7fb5_d329_728e_a185) & LOW_61;
    x ^= x >> 27;
    x = x.wrapping_mul(0x81da_def4_bc2d_d44d) & LOW_61;
    x ^ (x >> 33)
}

/// Event `i` of a run as version-4-shaped UUID text. After the variant bits come one bit for
/// the flow and a seed-keyed bijection of `i` (so ids are unique within a run for i < 2^61, and
/// the two flows of one seed can share an outbox); the rest is a hash of seed and `i`.
pub fn event_id(flow: Flow, seed: u64, i: u64) -> String {
    let flow_bit = match flow {
        Flow::Inventory => 0,
        Flow::Ledger => 1 << 61,
    };
    let lo = permute61(i.wrapping_add(mix64(seed))) | flow_bit | (0b10 << 62);
    let hi = (mix64(mix64(seed) ^ i) & !0xf000) | 0x4000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    )
}
