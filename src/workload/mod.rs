//! Deterministic workload generator behind `tally load`: the same spec and seed give
//! byte-identical records, with duplicates, conflicting ids and poison mixed in at set rates.

mod events;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde::Serialize;

use events::Event;
pub use events::Flow;

/// What to generate.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub flow: Flow,
    /// Records in total, duplicates, conflicts and poison included.
    pub events: u64,
    /// Distinct aggregate keys.
    pub keys: u64,
    /// Fraction of records that are exact copies of an earlier valid event of the same key.
    pub duplicates: f64,
    /// Fraction of poison records, cycling through every invalid kind.
    pub invalid: f64,
    /// Fraction of records reusing an earlier event id of the same key with other content.
    pub conflicts: f64,
    /// Records per second; 0 for as fast as possible.
    pub rate: u64,
    pub seed: u64,
}

/// What one generated record is, so callers can count what they expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Valid,
    Duplicate,
    Conflict,
    /// Poison, with the dead-letter reason tally must give it.
    Invalid(&'static str),
}

/// One record to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub kind: Kind,
}

/// What `produce` sent.
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

const RECENT: usize = 1024;

/// The records of a spec, in order; pure and deterministic.
pub fn generate(spec: &LoadSpec) -> impl Iterator<Item = Generated> + '_ {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let mut recent: Vec<Event> = Vec::with_capacity(RECENT);
    let mut poison = 0usize;
    (0..spec.events).map(move |i| {
        let r: f64 = rng.random();
        let pick = |rng: &mut ChaCha8Rng, recent: &Vec<Event>| {
            recent[rng.random_range(0..recent.len())].clone()
        };
        if r < spec.duplicates && !recent.is_empty() {
            let ev = pick(&mut rng, &recent);
            return Generated {
                key: Some(ev.key().into_bytes()),
                value: ev.to_json(),
                kind: Kind::Duplicate,
            };
        }
        if r < spec.duplicates + spec.conflicts && !recent.is_empty() {
            let ev = pick(&mut rng, &recent).conflicting();
            return Generated {
                key: Some(ev.key().into_bytes()),
                value: ev.to_json(),
                kind: Kind::Conflict,
            };
        }
        let ev = Event::random(spec.flow, &mut rng, spec.seed, i, spec.keys);
        if r < spec.duplicates + spec.conflicts + spec.invalid {
            poison += 1;
            let (key, value, reason) = ev.poison(poison);
            return Generated {
                key,
                value,
                kind: Kind::Invalid(reason),
            };
        }
        let g = Generated {
            key: Some(ev.key().into_bytes()),
            value: ev.to_json(),
            kind: Kind::Valid,
        };
        if recent.len() < RECENT {
            recent.push(ev);
        } else {
            let slot = (i as usize) % RECENT;
            recent[slot] = ev;
        }
        g
    })
}

/// Sends the spec's records to `topic` (keyed, so a key stays on one partition) and reports.
pub fn produce(
    bootstrap: &str,
    kafka: &BTreeMap<String, String>,
    topic: &str,
    spec: &LoadSpec,
) -> anyhow::Result<LoadReport> {
    // Idempotent (so acks=all), lz4, small linger: the processor's own producer settings.
    let producer: BaseProducer =
        crate::kafka::clients::producer(bootstrap, kafka, None, 60_000).create()?;
    let mut report = LoadReport {
        topic: topic.to_string(),
        seed: spec.seed,
        keys: spec.keys,
        ..LoadReport::default()
    };
    let started = Instant::now();
    for (n, g) in generate(spec).enumerate() {
        if spec.rate > 0 && n % 100 == 0 {
            let due = Duration::from_secs_f64(n as f64 / spec.rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).payload(&g.value);
        if let Some(k) = &g.key {
            record = record.key(k);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
        producer.poll(Duration::ZERO);
        report.count(g.kind);
    }
    producer.flush(Duration::from_secs(120))?;
    let elapsed = started.elapsed();
    report.elapsed_ms = elapsed.as_millis() as u64;
    report.records_per_sec = report.records_sent as f64 / elapsed.as_secs_f64().max(1e-9);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(seed: u64) -> LoadSpec {
        LoadSpec {
            flow: Flow::Inventory,
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
        let a: Vec<_> = generate(&spec(1)).collect();
        let b: Vec<_> = generate(&spec(1)).collect();
        assert_eq!(a, b);
        let c: Vec<_> = generate(&spec(2)).collect();
        assert_ne!(a, c);
    }

    #[test]
    fn kinds_come_at_the_asked_rates() {
        for flow in [Flow::Inventory, Flow::Ledger] {
            let mut r = LoadReport::default();
            for g in generate(&LoadSpec { flow, ..spec(3) }) {
                r.count(g.kind);
            }
            let near =
                |n: u64, f: f64| ((n as f64) - 20_000.0 * f).abs() < 20_000.0 * f * 0.2 + 10.0;
            assert!(
                near(r.duplicates, 0.05) && near(r.invalid, 0.02) && near(r.conflicts, 0.01),
                "{r:?}"
            );
            assert!(
                r.invalid_by_reason.len() >= 7,
                "every poison kind appears: {r:?}"
            );
        }
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
