use std::collections::HashSet;

use proptest::prelude::*;
use rstest::rstest;
use serde_json::Value;
use tally_topology::{Guard, Inventory, Ledger, Projection, SourceRef};

use super::rows::*;
use super::write::due;
use std::collections::HashMap;
use std::time::Duration;

use super::*;

/// (key, JSON pointer) -> value: a fold as the SQL queries return it.
type Fold = BTreeMap<(String, String), i64>;

fn spec(flow: Flow, events: u64, keys: u64, invalid: f64, seed: u64) -> PgSpec {
    PgSpec {
        flow,
        events,
        keys,
        invalid,
        batch: 50,
        rate: 0,
        seed,
    }
}

fn is_v4_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            14 => c == '4',
            19 => matches!(c, '8' | '9' | 'a' | 'b'),
            _ => c.is_ascii_digit() || ('a'..='f').contains(&c),
        })
}

fn pointer(path: &str, name: &str) -> String {
    format!("{path}/{}", name.replace('~', "~0").replace('/', "~1"))
}

/// Every integer of a rendered output record but its `source` (where tally read it).
fn flatten(v: &Value, path: &str, key: &str, out: &mut Fold) {
    match v {
        Value::Object(m) => {
            for (name, v) in m {
                if !(path.is_empty() && name == "source") {
                    flatten(v, &pointer(path, name), key, out);
                }
            }
        }
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.insert((key.to_string(), path.to_string()), i);
            }
        }
        _ => {}
    }
}

/// What the projection holds after the outbox records (key, payload) in order, under every
/// invariant its contract checks (which must never refuse one), and its refusals by reason.
fn project<'a, P: Projection>(
    records: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> (Fold, BTreeMap<String, u64>) {
    let guard = Guard::new(P::INVARIANTS.iter().copied(), false);
    let mut states: BTreeMap<String, P::State> = BTreeMap::new();
    let mut refused = BTreeMap::new();
    for (offset, (key, payload)) in records.into_iter().enumerate() {
        let ev = match P::decode(Some(key.as_bytes()), payload.as_bytes()) {
            Ok(ev) => ev,
            Err(e) => {
                *refused.entry(e.reason.as_str().to_string()).or_default() += 1;
                continue;
            }
        };
        let at = SourceRef {
            partition: 0,
            offset: offset as i64,
        };
        let key = P::aggregate_key(&ev).to_string();
        let next = P::apply(states.get(&key), &ev, at, &guard)
            .unwrap_or_else(|e| panic!("{e}: {payload}"));
        states.insert(key, next);
    }
    let mut fold = Fold::new();
    let mut out = Vec::new();
    for (key, s) in &states {
        P::render(s, &mut out).unwrap();
        flatten(&serde_json::from_slice(&out).unwrap(), "", key, &mut fold);
    }
    (fold, refused)
}

fn project_rows(flow: Flow, rows: &[Row]) -> (Fold, BTreeMap<String, u64>) {
    let records = rows
        .iter()
        .map(|r| (r.outbox.aggregateid.as_str(), r.outbox.payload.as_str()));
    match flow {
        Flow::Inventory => project::<Inventory>(records),
        Flow::Ledger => project::<Ledger>(records),
    }
}

/// The history rows summed per key the way the SQL queries do, written apart from them.
fn history_fold(rows: &[Row]) -> Fold {
    let mut fold = Fold::new();
    let mut add = |key: &str, path: String, v: i64| {
        let slot = fold.entry((key.to_string(), path)).or_default();
        *slot = slot.checked_add(v).unwrap();
    };
    for r in rows {
        match &r.history {
            History::Stock {
                sku,
                location,
                bucket,
                delta,
                ..
            } => {
                for b in BUCKETS {
                    let d = if b == *bucket { *delta } else { 0 };
                    add(sku, format!("/locations/{location}/{b}"), d);
                    add(sku, format!("/{b}"), d);
                }
                add(sku, "/stock_on_hand".into(), *delta);
                add(sku, "/events_applied".into(), 1);
            }
            History::Posting {
                account_id,
                currency,
                entry_type,
                amount_minor: a,
            } => {
                let (da, dr) = match *entry_type {
                    "deposited" => (*a, 0),
                    "withdrawn" => (-a, 0),
                    "reserved" => (-a, *a),
                    "released" => (*a, -a),
                    _ => (0, -a),
                };
                add(account_id, format!("/balances/{currency}/available"), da);
                add(account_id, format!("/balances/{currency}/reserved"), dr);
                add(account_id, format!("/balances/{currency}/total"), da + dr);
                add(account_id, "/events_applied".into(), 1);
            }
            History::Poison(_) => {}
        }
    }
    fold
}

proptest! {
    #[test]
    fn the_same_spec_gives_identical_rows_with_unique_uuid_ids(
        seed in any::<u64>(),
        ledger in any::<bool>(),
        events in 0u64..400,
        keys in 1u64..30,
        invalid in 0.0f64..0.5,
    ) {
        let flow = if ledger { Flow::Ledger } else { Flow::Inventory };
        let s = spec(flow, events, keys, invalid, seed);
        let a: Vec<Row> = rows(&s).collect();
        let b: Vec<Row> = rows(&s).collect();
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(a.len() as u64, events);
        let mut ids = HashSet::new();
        for r in &a {
            prop_assert!(is_v4_uuid(&r.event_id), "{}", r.event_id);
            prop_assert!(ids.insert(r.event_id.clone()), "{}", r.event_id);
            let payload: Value = serde_json::from_str(&r.outbox.payload).unwrap();
            prop_assert_eq!(payload["event_id"].as_str(), Some(r.event_id.as_str()));
            prop_assert_eq!(payload["event_time"].as_str(), Some(r.event_time.as_str()));
        }
    }

    #[test]
    fn event_ids_differ_whenever_flows_or_event_numbers_do(
        seed in any::<u64>(),
        i in any::<u64>(),
        j in any::<u64>(),
    ) {
        let (inv, led) = (Flow::Inventory, Flow::Ledger);
        prop_assert!(is_v4_uuid(&event_id(inv, seed, i)));
        prop_assert!(is_v4_uuid(&event_id(led, seed, i)));
        prop_assert_ne!(event_id(inv, seed, i), event_id(led, seed, j));
        if i & LOW_61 != j & LOW_61 {
            prop_assert_ne!(event_id(inv, seed, i), event_id(inv, seed, j));
        }
    }
}

#[test]
fn ids_of_a_long_run_are_unique_and_other_seeds_give_other_ids() {
    let a: HashSet<String> = (0..200_000)
        .map(|i| event_id(Flow::Inventory, 7, i))
        .collect();
    assert_eq!(a.len(), 200_000);
    assert!((0..1_000).all(|i| !a.contains(&event_id(Flow::Inventory, 8, i))));
}

#[rstest]
fn folding_the_history_gives_what_the_projection_holds(
    #[values(Flow::Inventory, Flow::Ledger)] flow: Flow,
    #[values(1, 7, 42)] seed: u64,
) {
    let rows: Vec<Row> = rows(&spec(flow, 20_000, 50, 0.01, seed)).collect();
    let (projected, refused) = project_rows(flow, &rows);
    let fold = history_fold(&rows);
    assert_eq!(fold, projected);
    assert!(
        fold.values().all(|v| *v >= 0),
        "no count or balance below zero"
    );
    let mut report = PgReport::default();
    rows.iter().for_each(|r| report.count(r));
    assert_eq!(refused, report.invalid_by_reason);
    assert_eq!(report.valid + report.invalid, 20_000);
    assert_eq!(
        fold.keys().filter(|(_, p)| p == "/events_applied").count(),
        50
    );
}

#[rstest]
#[case(Flow::Inventory, &["missing_field", "out_of_range", "unknown_bucket"])]
#[case(Flow::Ledger, &["out_of_range", "unknown_type"])]
fn poison_cycles_through_its_kinds_and_earns_the_promised_reason(
    #[case] flow: Flow,
    #[case] reasons: &[&str],
) {
    let rows: Vec<Row> = rows(&spec(flow, 3_000, 20, 0.3, 3)).collect();
    let mut report = PgReport::default();
    rows.iter().for_each(|r| report.count(r));
    let got: Vec<&str> = report
        .invalid_by_reason
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(got, reasons);
    let counts = report.invalid_by_reason.values();
    assert!(counts.clone().max().unwrap() - counts.min().unwrap() <= 1);
    assert!((800..1_000).contains(&report.invalid), "{report:?}");
    for r in &rows {
        let (key, value) = (
            Some(r.outbox.aggregateid.as_bytes()),
            r.outbox.payload.as_bytes(),
        );
        let refused = match flow {
            Flow::Inventory => Inventory::decode(key, value).err(),
            Flow::Ledger => Ledger::decode(key, value).err(),
        };
        let expected = match r.history {
            History::Poison(reason) => Some(reason),
            _ => None,
        };
        assert_eq!(
            refused.map(|e| e.reason.as_str()),
            expected,
            "{}",
            r.outbox.payload
        );
    }
}

#[test]
fn rows_carry_the_contract_payloads_and_outbox_columns() {
    let inv: Vec<Row> = rows(&spec(Flow::Inventory, 8, 50, 0.0, 7)).collect();
    let r = &inv[7];
    assert_eq!(r.event_time, "2026-01-01T00:00:07Z");
    assert_eq!(
        (r.outbox.aggregatetype, r.outbox.kind.as_str()),
        ("inventory", "StockAdjusted")
    );
    let History::Stock {
        sku,
        seller_id,
        location,
        bucket,
        delta,
    } = &r.history
    else {
        panic!("{r:?}")
    };
    assert_eq!(&r.outbox.aggregateid, sku);
    assert_eq!(
        r.outbox.payload,
        format!(
            r#"{{"event_id":"{}","schema_version":1,"sku":"{sku}","seller_id":"{seller_id}","location_id":"{location}","bucket":"{bucket}","operation":"adjust","quantity":{delta},"event_time":"2026-01-01T00:00:07Z"}}"#,
            r.event_id
        )
    );
    let led: Vec<Row> = rows(&spec(Flow::Ledger, 1, 50, 0.0, 7)).collect();
    let r = &led[0];
    let History::Posting {
        account_id,
        currency,
        entry_type,
        amount_minor,
    } = &r.history
    else {
        panic!("{r:?}")
    };
    assert_eq!(
        (r.outbox.aggregatetype, &r.outbox.kind),
        ("ledger", &entry_type.to_string())
    );
    assert_eq!(&r.outbox.aggregateid, account_id);
    assert_eq!(
        r.outbox.payload,
        format!(
            r#"{{"event_id":"{}","schema_version":1,"account_id":"{account_id}","type":"{entry_type}","amount_minor":{amount_minor},"currency":"{currency}","event_time":"2026-01-01T00:00:00Z"}}"#,
            r.event_id
        )
    );
}

#[test]
fn sellers_are_stable_per_sku_and_deltas_never_zero() {
    let mut seller = HashMap::new();
    for r in rows(&spec(Flow::Inventory, 5_000, 40, 0.0, 11)) {
        let History::Stock {
            sku,
            seller_id,
            delta,
            ..
        } = r.history
        else {
            panic!("no poison asked")
        };
        assert!((-5..=20).contains(&delta) && delta != 0, "{delta}");
        assert_eq!(
            seller.entry(sku).or_insert_with(|| seller_id.clone()),
            &seller_id
        );
    }
}

#[test]
fn pacing_is_fixed_to_the_start() {
    assert_eq!(due(0, 100), Some(Duration::ZERO));
    assert_eq!(due(150, 100), Some(Duration::from_millis(1_500)));
    assert_eq!(due(150, 0), None);
}

#[test]
fn specs_write_cannot_honour_are_refused() {
    let ok = spec(Flow::Ledger, 10, 1, 0.0, 1);
    assert!(ok.check().is_ok());
    for bad in [
        PgSpec {
            keys: 0,
            ..ok.clone()
        },
        PgSpec {
            batch: 0,
            ..ok.clone()
        },
        PgSpec {
            invalid: 1.0,
            ..ok.clone()
        },
        PgSpec {
            events: MAX_EVENTS + 1,
            ..ok.clone()
        },
    ] {
        assert!(matches!(bad.check(), Err(PgError::Spec(_))), "{bad:?}");
    }
}
