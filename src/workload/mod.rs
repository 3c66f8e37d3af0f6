//! Deterministic workload generator behind `tally load`: the same spec and seed give
//! byte-identical records, with duplicates, conflicting ids and poison mixed in at set rates.

mod book;
mod events;
pub mod postgres;
mod produce;

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use events::Event;
pub use events::Flow;
pub use produce::produce;

/// What to generate, so a load (and the counts a check expects) can be reproduced from its spec.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub flow: Flow,
    /// Records in total, duplicates, conflicts and poison included.
    pub events: u64,
    /// Distinct aggregate keys (`sku-NNNNNN` / `acc-NNNNNN`).
    pub keys: u64,
    /// Fraction of records that are exact copies of an earlier valid event of the same key.
    pub duplicates: f64,
    /// Fraction of poison records, cycling through every invalid kind.
    pub invalid: f64,
    /// Fraction of records reusing an earlier event id of the same key with other content.
    pub conflicts: f64,
    /// Records per second; 0 for as fast as possible.
    pub rate: u64,
    /// Seeds the ChaCha8 generator and names the event ids (`inv-{seed}-{i}`).
    pub seed: u64,
}

/// What one generated record is, so callers can count what a correct processor must do with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Valid,
    Duplicate,
    Conflict,
    /// Poison, with the dead-letter reason tally must give it.
    Invalid(&'static str),
}

/// One record to send: the Kafka key and value, and what it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub kind: Kind,
}

/// What `produce` sent, so a check can compare its own counts with the injected ones.
#[derive(Debug, Clone, Serialize, Default)]
pub struct LoadReport {
    pub topic: String,
    pub seed: u64,
    pub records_sent: u64,
    pub valid_events: u64,
    pub duplicates: u64,
    pub conflicts: u64,
    pub invalid: u64,
    pub invalid_by_reason: BTreeMap<String, u64>,
    pub keys: u64,
    pub elapsed_ms: u64,
    pub records_per_sec: f64,
}

impl LoadReport {
    fn count(&mut self, kind: Kind) {
        self.records_sent += 1;
        match kind {
            Kind::Valid => self.valid_events += 1,
            Kind::Duplicate => self.duplicates += 1,
            Kind::Conflict => self.conflicts += 1,
            Kind::Invalid(r) => {
                self.invalid += 1;
                *self.invalid_by_reason.entry(r.to_string()).or_default() += 1;
            }
        }
    }
}

/// How many recent valid events duplicates and conflicts are drawn from.
const RECENT: usize = 1024;

/// The records of a spec, in order; pure and deterministic (no clock, no global state).
pub fn generate(spec: &LoadSpec) -> impl Iterator<Item = Generated> {
    Generator {
        spec: spec.clone(),
        rng: ChaCha8Rng::seed_from_u64(spec.seed),
        recent: Vec::with_capacity(RECENT.min(spec.events as usize)),
        next_slot: 0,
        poison: 0,
        book: book::Book::default(),
        i: 0,
    }
}

struct Generator {
    spec: LoadSpec,
    rng: ChaCha8Rng,
    /// A ring of recent valid events; a copy or twin keeps its original's key (so partition).
    recent: Vec<Event>,
    next_slot: usize,
    poison: u64,
    /// What the valid events so far did, so new ones keep every count non-negative.
    book: book::Book,
    i: u64,
}

impl Generator {
    fn remember(&mut self, ev: Event) {
        if self.recent.len() < RECENT {
            self.recent.push(ev);
        } else {
            self.recent[self.next_slot] = ev;
            self.next_slot = (self.next_slot + 1) % RECENT;
        }
    }

    fn earlier(&mut self) -> Event {
        let at = self.rng.random_range(0..self.recent.len());
        self.recent[at].clone()
    }
}

impl Iterator for Generator {
    type Item = Generated;

    fn next(&mut self) -> Option<Generated> {
        if self.i >= self.spec.events {
            return None;
        }
        let i = self.i;
        self.i += 1;
        let s = &self.spec;
        let (flow, seed, keys) = (s.flow, s.seed, s.keys);
        let (dup, conf, inv) = (s.duplicates, s.duplicates + s.conflicts, s.invalid);
        let r: f64 = self.rng.random();
        let copyable = !self.recent.is_empty();
        let keyed = |ev: &Event, value: Vec<u8>, kind| Generated {
            key: Some(ev.key().into_bytes()),
            value,
            kind,
        };
        if r < dup && copyable {
            let ev = self.earlier();
            return Some(keyed(&ev, ev.to_json(), Kind::Duplicate));
        }
        if r >= dup && r < conf && copyable {
            let bump = self.rng.random_range(1..=9) * 100;
            let ev = self.earlier().conflicting(bump);
            return Some(keyed(&ev, ev.to_json(), Kind::Conflict));
        }
        let ev = Event::random(flow, &mut self.rng, seed, i, keys);
        if r >= conf && r < conf + inv {
            let (key, value, reason) = ev.poison(self.poison);
            self.poison += 1;
            return Some(Generated {
                key,
                value,
                kind: Kind::Invalid(reason),
            });
        }
        let mut ev = ev;
        self.book.settle(&mut ev);
        let g = keyed(&ev, ev.to_json(), Kind::Valid);
        self.remember(ev);
        Some(g)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.spec.events - self.i) as usize;
        (left, Some(left))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    fn spec(flow: Flow, seed: u64) -> LoadSpec {
        LoadSpec {
            flow,
            events: 20_000,
            keys: 100,
            duplicates: 0.05,
            invalid: 0.02,
            conflicts: 0.01,
            rate: 0,
            seed,
        }
    }

    #[test]
    fn the_same_seed_gives_byte_identical_records() {
        for flow in [Flow::Inventory, Flow::Ledger] {
            let a: Vec<_> = generate(&spec(flow, 1)).collect();
            let b: Vec<_> = generate(&spec(flow, 1)).collect();
            assert_eq!(a.len(), 20_000);
            assert_eq!(a, b);
            let c: Vec<_> = generate(&spec(flow, 2)).collect();
            assert_ne!(a, c);
        }
    }

    #[test]
    fn kinds_come_at_the_asked_rates_and_poison_covers_every_reason() {
        for (flow, reasons) in [(Flow::Inventory, 8), (Flow::Ledger, 7)] {
            let mut r = LoadReport::default();
            for g in generate(&spec(flow, 3)) {
                r.count(g.kind);
            }
            let near = |n: u64, f: f64| ((n as f64) - 20_000.0 * f).abs() < 20_000.0 * f * 0.15;
            assert!(
                near(r.duplicates, 0.05) && near(r.invalid, 0.02) && near(r.conflicts, 0.01),
                "{r:?}"
            );
            assert_eq!(r.records_sent, 20_000);
            assert_eq!(r.invalid_by_reason.len(), reasons, "{r:?}");
            let (lo, hi) = (
                r.invalid_by_reason.values().min(),
                r.invalid_by_reason.values().max(),
            );
            assert!(
                hi.unwrap() - lo.unwrap() <= 1,
                "poison cycles evenly: {r:?}"
            );
        }
    }

    fn field(v: &[u8], name: &str) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_slice(v).unwrap();
        v[name].clone()
    }

    #[test]
    fn copies_and_twins_reuse_an_earlier_valid_id_of_the_same_key() {
        for flow in [Flow::Inventory, Flow::Ledger] {
            let amount = if flow == Flow::Inventory {
                "quantity"
            } else {
                "amount_minor"
            };
            let mut valid: HashMap<String, (Option<Vec<u8>>, Vec<u8>)> = HashMap::new();
            let mut poison_ids = HashSet::new();
            for g in generate(&spec(flow, 4)) {
                match g.kind {
                    Kind::Valid => {
                        let id = field(&g.value, "event_id").as_str().unwrap().to_string();
                        assert!(valid.insert(id, (g.key, g.value)).is_none(), "fresh ids");
                    }
                    Kind::Duplicate | Kind::Conflict => {
                        let id = field(&g.value, "event_id");
                        let (key, value) = &valid[id.as_str().unwrap()];
                        assert_eq!(key, &g.key);
                        if g.kind == Kind::Duplicate {
                            assert_eq!(value, &g.value);
                        } else {
                            assert_ne!(field(value, amount), field(&g.value, amount));
                        }
                    }
                    Kind::Invalid(reason) => {
                        let text = String::from_utf8_lossy(&g.value).into_owned();
                        let id = text.split('"').nth(3).unwrap_or_default().to_string();
                        assert!(id.contains("-x"), "{reason}: {text}");
                        assert!(poison_ids.insert(id), "unique poison ids");
                    }
                }
            }
            assert!(poison_ids.iter().all(|id| !valid.contains_key(id)));
            let keys: HashSet<_> = valid.values().map(|(k, _)| k.clone()).collect();
            assert_eq!(keys.len(), 100, "every key is used");
        }
    }

    #[test]
    fn event_times_advance_one_second_per_record_from_the_origin() {
        let s = LoadSpec {
            events: 3_000,
            invalid: 0.0,
            ..spec(Flow::Ledger, 5)
        };
        let origin = chrono::DateTime::parse_from_rfc3339("2026-06-19T00:00:00Z").unwrap();
        for (i, g) in generate(&s).enumerate() {
            if g.kind != Kind::Valid {
                continue;
            }
            let t = field(&g.value, "event_time");
            let t = chrono::DateTime::parse_from_rfc3339(t.as_str().unwrap()).unwrap();
            let offset = (t - origin).num_seconds() - i as i64;
            assert!((0..3).contains(&offset), "record {i}: {t}");
        }
    }

    #[test]
    fn an_empty_spec_generates_nothing() {
        let s = LoadSpec {
            events: 0,
            ..spec(Flow::Inventory, 1)
        };
        assert_eq!(generate(&s).count(), 0);
    }
}

#[cfg(test)]
mod contract_tests {
    //! The generator's poison must be refused by the projections with exactly the reason it
    //! promises, and its valid records accepted; otherwise dead-letter counts cannot be checked.
    use super::*;
    use tally_topology::{Inventory, Ledger, Projection};

    fn check<P: Projection>(flow: Flow) {
        let spec = LoadSpec {
            flow,
            events: 5_000,
            keys: 50,
            duplicates: 0.0,
            invalid: 0.2,
            conflicts: 0.0,
            rate: 0,
            seed: 9,
        };
        for g in generate(&spec) {
            let got = P::decode(g.key.as_deref(), &g.value);
            match g.kind {
                Kind::Invalid(reason) => assert_eq!(
                    got.as_ref().err().map(|e| e.reason.as_str()),
                    Some(reason),
                    "{}",
                    String::from_utf8_lossy(&g.value)
                ),
                _ => assert!(
                    got.is_ok(),
                    "{:?}: {}",
                    got,
                    String::from_utf8_lossy(&g.value)
                ),
            }
        }
    }

    #[test]
    fn inventory_poison_gets_the_promised_reason() {
        check::<Inventory>(Flow::Inventory);
    }

    #[test]
    fn ledger_poison_gets_the_promised_reason() {
        check::<Ledger>(Flow::Ledger);
    }
}
