//! The oracle's fold, validation and comparison on hand-written records, without a broker; and
//! agreement with the generator's promises (every poison kind, duplicate and conflict counted).

use serde_json::{json, Value};

use super::super::workload::{generate, Kind, LoadSpec};
use super::compare::{compare, Outcome};
use super::fold::{Fold, Verdict};
use super::Flow;

fn inv(extra: Value) -> Vec<u8> {
    let mut v = json!({"event_id":"e-1","schema_version":1,"sku":"s-1","seller_id":"seller-1",
        "location_id":"fc-1","bucket":"sellable","operation":"adjust","quantity":10,
        "event_time":"2026-06-19T18:23:11Z"});
    merge(&mut v, extra);
    v.to_string().into_bytes()
}

fn led(extra: Value) -> Vec<u8> {
    let mut v = json!({"event_id":"e-1","schema_version":1,"account_id":"acc-1",
        "type":"deposited","amount_minor":1000,"currency":"EUR",
        "event_time":"2026-06-19T18:23:11Z","correlation_id":"c-1","causation_id":null});
    merge(&mut v, extra);
    v.to_string().into_bytes()
}

/// Sets the fields of `extra` on `v`; a field set to the string "<drop>" is removed.
fn merge(v: &mut Value, extra: Value) {
    let (Some(o), Some(extra)) = (v.as_object_mut(), extra.as_object()) else {
        return;
    };
    for (k, x) in extra {
        if x == "<drop>" {
            o.remove(k);
        } else {
            o.insert(k.clone(), x.clone());
        }
    }
}

fn verdict(flow: Flow, key: &str, value: &[u8]) -> Verdict {
    Fold::new(flow).record(0, 0, Some(key.as_bytes()), Some(value))
}

#[test]
fn every_invalid_inventory_kind_is_refused_with_its_reason() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("s-1", b"{\"event_id\":\"e-1\",".to_vec(), "malformed_json"),
        ("s-1", b"[1,2]".to_vec(), "malformed_json"),
        ("s-1", Vec::new(), "malformed_json"),
        ("s-1", inv(json!({"quantity":"<drop>"})), "missing_field"),
        ("s-1", inv(json!({"event_id":"<drop>"})), "missing_field"),
        ("s-1", inv(json!({"quantity":"ten"})), "invalid_field"),
        ("s-1", inv(json!({"quantity":1.5})), "invalid_field"),
        ("s-1", inv(json!({"event_id":""})), "invalid_field"),
        (
            "s-1",
            inv(json!({"event_time":"yesterday"})),
            "invalid_field",
        ),
        ("s-1", inv(json!({"to_bucket":"damaged"})), "invalid_field"),
        (
            "s-1",
            inv(json!({"operation":"move","to_bucket":"sellable"})),
            "invalid_field",
        ),
        ("s-1", inv(json!({"operation":"move"})), "missing_field"),
        (
            "s-1",
            inv(json!({"schema_version":2})),
            "unknown_schema_version",
        ),
        (
            "s-1",
            inv(json!({"schema_version":99})),
            "unknown_schema_version",
        ),
        ("s-1", inv(json!({"bucket":"lost"})), "unknown_bucket"),
        (
            "s-1",
            inv(json!({"operation":"move","to_bucket":"lost"})),
            "unknown_bucket",
        ),
        (
            "s-1",
            inv(json!({"operation":"teleport"})),
            "unknown_operation",
        ),
        ("s-1", inv(json!({"quantity":0})), "out_of_range"),
        (
            "s-1",
            inv(json!({"operation":"set","quantity":-5})),
            "out_of_range",
        ),
        (
            "s-1",
            inv(json!({"operation":"move","to_bucket":"damaged","quantity":0})),
            "out_of_range",
        ),
        ("s-2", inv(json!({})), "key_mismatch"),
    ];
    for (key, value, reason) in cases {
        assert_eq!(
            verdict(Flow::Inventory, key, &value),
            Verdict::Invalid(reason),
            "{}",
            String::from_utf8_lossy(&value)
        );
    }
    let none = Fold::new(Flow::Inventory).record(0, 0, None, Some(&inv(json!({}))));
    assert_eq!(none, Verdict::Invalid("key_mismatch"));
    let tombstone = Fold::new(Flow::Inventory).record(0, 0, Some(b"s-1"), None);
    assert_eq!(tombstone, Verdict::Invalid("malformed_json"));
}

#[test]
fn every_invalid_ledger_kind_is_refused_with_its_reason() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{\"event_id\":".to_vec(), "malformed_json"),
        (led(json!({"amount_minor":"<drop>"})), "missing_field"),
        (led(json!({"currency":"<drop>"})), "missing_field"),
        (led(json!({"amount_minor":"1000"})), "invalid_field"),
        (led(json!({"currency":"eur"})), "invalid_field"),
        (led(json!({"currency":"EURO"})), "invalid_field"),
        (led(json!({"correlation_id":7})), "invalid_field"),
        (led(json!({"schema_version":"1"})), "invalid_field"),
        (led(json!({"schema_version":99})), "unknown_schema_version"),
        (led(json!({"type":"embezzled"})), "unknown_type"),
        (led(json!({"amount_minor":0})), "out_of_range"),
        (led(json!({"amount_minor":-3})), "out_of_range"),
        (led(json!({"account_id":"acc-2"})), "key_mismatch"),
    ];
    for (value, reason) in cases {
        assert_eq!(
            verdict(Flow::Ledger, "acc-1", &value),
            Verdict::Invalid(reason),
            "{}",
            String::from_utf8_lossy(&value)
        );
    }
    // Optional ids may be absent or null; unknown fields are tolerated.
    let ok = led(json!({"correlation_id":"<drop>","causation_id":"<drop>","note":"x"}));
    assert_eq!(verdict(Flow::Ledger, "acc-1", &ok), Verdict::Applied);
}

#[test]
fn inventory_operations_fold_per_location_and_bucket() {
    let mut f = Fold::new(Flow::Inventory);
    let k = Some(&b"s-1"[..]);
    let events = [
        json!({"event_id":"a","quantity":100}),
        json!({"event_id":"b","location_id":"fc-2","operation":"set","bucket":"damaged","quantity":7}),
        json!({"event_id":"c","operation":"move","to_bucket":"return_to_vendor","quantity":30}),
        json!({"event_id":"d","quantity":-5,"event_time":"2026-06-19T20:00:00.250+02:00"}),
        json!({"event_id":"e","location_id":"fc-2","operation":"set","bucket":"damaged","quantity":0,"to_bucket":null}),
    ];
    for (o, e) in events.into_iter().enumerate() {
        let v = f.record(3, 40 + o as i64, k, Some(&inv(e)));
        assert_eq!(v, Verdict::Applied);
    }
    let e = &f.keys["s-1"];
    assert_eq!(e.amounts["fc-1"], [65, 0, 30]);
    assert_eq!(e.amounts["fc-2"], [0, 0, 0]);
    assert_eq!((e.events_applied, e.last_event_id.as_str()), (5, "e"));
    assert_eq!((e.partition, e.offset), (3, 44));
    let out = json!({"sku":"s-1","stock_on_hand":95,"sellable":65,"damaged":0,
        "return_to_vendor":30,"locations":{"fc-1":{"sellable":65,"damaged":0,"return_to_vendor":30},
        "fc-2":{"sellable":0,"damaged":0,"return_to_vendor":0}},"events_applied":5,
        "last_event_id":"e","last_event_time":"2026-06-19T20:23:11.000+02:00",
        "source":{"partition":3,"offset":44}});
    assert_eq!(compare(Flow::Inventory, "s-1", e, &out), Outcome::Matched);
}

#[test]
fn ledger_types_move_money_between_available_and_reserved() {
    let mut f = Fold::new(Flow::Ledger);
    let k = Some(&b"acc-1"[..]);
    let events = [
        json!({"event_id":"1","type":"deposited","amount_minor":1000}),
        json!({"event_id":"2","type":"withdrawn","amount_minor":100}),
        json!({"event_id":"3","type":"reserved","amount_minor":300}),
        json!({"event_id":"4","type":"released","amount_minor":50}),
        json!({"event_id":"5","type":"captured","amount_minor":200}),
        json!({"event_id":"6","type":"deposited","amount_minor":5,"currency":"JPY"}),
    ];
    for (o, e) in events.into_iter().enumerate() {
        assert_eq!(f.record(0, o as i64, k, Some(&led(e))), Verdict::Applied);
    }
    let e = &f.keys["acc-1"];
    assert_eq!(e.amounts["EUR"][..2], [650, 50]);
    assert_eq!(e.amounts["JPY"][..2], [5, 0]);
    let out = json!({"account_id":"acc-1","balances":{"EUR":{"available":650,"reserved":50,
        "total":700},"JPY":{"available":5,"reserved":0,"total":5}},"events_applied":6,
        "last_event_id":"6","last_event_time":"2026-06-19T18:23:11Z",
        "source":{"partition":0,"offset":5}});
    assert_eq!(compare(Flow::Ledger, "acc-1", e, &out), Outcome::Matched);
    let mut wrong = out.clone();
    wrong["balances"]["EUR"]["reserved"] = json!(51);
    assert!(
        matches!(compare(Flow::Ledger, "acc-1", e, &wrong), Outcome::Wrong(m) if m.contains("balances.EUR"))
    );
    wrong = out.clone();
    wrong["events_applied"] = json!(7);
    assert!(matches!(
        compare(Flow::Ledger, "acc-1", e, &wrong),
        Outcome::DoubleApplied(_)
    ));
    wrong["events_applied"] = json!(5);
    assert!(matches!(
        compare(Flow::Ledger, "acc-1", e, &wrong),
        Outcome::Lost(_)
    ));
    wrong = out;
    wrong["source"]["offset"] = json!(4);
    assert!(
        matches!(compare(Flow::Ledger, "acc-1", e, &wrong), Outcome::Wrong(m) if m.contains("source"))
    );
}

#[test]
fn duplicates_are_skipped_and_conflicts_refused_per_partition() {
    let mut f = Fold::new(Flow::Ledger);
    let k = Some(&b"acc-1"[..]);
    let first = led(json!({}));
    assert_eq!(f.record(0, 0, k, Some(&first)), Verdict::Applied);
    assert_eq!(f.record(0, 1, k, Some(&first)), Verdict::Duplicate);
    // Same parsed fields written differently is still a duplicate.
    let same = led(json!({"event_time":"2026-06-19T20:23:11.000+02:00","extra":1}));
    assert_eq!(f.record(0, 2, k, Some(&same)), Verdict::Duplicate);
    let other = led(json!({"amount_minor":1001}));
    assert_eq!(f.record(0, 3, k, Some(&other)), Verdict::Conflict);
    let other = led(json!({"causation_id":"c-0"}));
    assert_eq!(f.record(0, 4, k, Some(&other)), Verdict::Conflict);
    // Invalid records never claim an id; another partition has its own ids.
    let mut g = Fold::new(Flow::Ledger);
    let bad = led(json!({"amount_minor":0}));
    assert_eq!(
        g.record(0, 0, k, Some(&bad)),
        Verdict::Invalid("out_of_range")
    );
    assert_eq!(g.record(0, 1, k, Some(&first)), Verdict::Applied);
    assert_eq!(f.record(1, 0, k, Some(&first)), Verdict::Applied);
    let e = &f.keys["acc-1"];
    assert_eq!((e.events_applied, e.amounts["EUR"][0]), (2, 2000));
}

#[test]
fn a_balance_or_stock_taken_below_zero_is_refused_as_the_contract_says() {
    let mut f = Fold::new(Flow::Ledger);
    let k = Some(&b"acc-1"[..]);
    let overdraw = led(json!({"event_id":"1","type":"withdrawn","amount_minor":5}));
    assert_eq!(
        f.record(0, 0, k, Some(&overdraw)),
        Verdict::Invalid("invariant_violated")
    );
    let mut f = Fold::new(Flow::Inventory);
    let k = Some(&b"s-1"[..]);
    let oversell = inv(json!({"event_id":"a","quantity":i64::MIN + 1}));
    assert_eq!(
        f.record(0, 0, k, Some(&oversell)),
        Verdict::Invalid("invariant_violated")
    );
    assert!(f.keys.is_empty());
}

#[test]
fn overflow_is_refused_and_changes_nothing() {
    let mut f = Fold::new(Flow::Inventory);
    let k = Some(&b"s-1"[..]);
    let max = i64::MAX;
    let set = inv(json!({"event_id":"a","operation":"set","quantity":max}));
    assert_eq!(f.record(0, 0, k, Some(&set)), Verdict::Applied);
    let add = inv(json!({"event_id":"b","quantity":1}));
    assert_eq!(f.record(0, 1, k, Some(&add)), Verdict::Invalid("overflow"));
    // Each location fits, their sum does not.
    let other = inv(json!({"event_id":"c","location_id":"fc-2","operation":"set","quantity":1}));
    assert_eq!(
        f.record(0, 2, k, Some(&other)),
        Verdict::Invalid("overflow")
    );
    let e = &f.keys["s-1"];
    assert_eq!((e.events_applied, e.amounts.len()), (1, 1));
    // The id of a refused event is not taken.
    let add = inv(json!({"event_id":"b","quantity":-1}));
    assert_eq!(f.record(0, 3, k, Some(&add)), Verdict::Applied);
}

#[test]
fn missing_or_foreign_output_fields_are_named() {
    let mut f = Fold::new(Flow::Inventory);
    f.record(0, 0, Some(b"s-1"), Some(&inv(json!({}))));
    let e = &f.keys["s-1"];
    let good = json!({"sku":"s-1","stock_on_hand":10,"sellable":10,"damaged":0,
        "return_to_vendor":0,"locations":{"fc-1":{"sellable":10,"damaged":0,"return_to_vendor":0}},
        "events_applied":1,"last_event_id":"e-1","last_event_time":"2026-06-19T18:23:11Z",
        "source":{"partition":0,"offset":0}});
    assert_eq!(compare(Flow::Inventory, "s-1", e, &good), Outcome::Matched);
    for (field, bad, named) in [
        ("sku", json!("s-2"), "sku"),
        ("stock_on_hand", json!(11), "stock_on_hand"),
        ("locations", json!({}), "locations.fc-1"),
        (
            "last_event_time",
            json!("2026-06-19T18:23:12Z"),
            "last_event_time",
        ),
        ("last_event_id", json!(null), "last_event_id"),
    ] {
        let mut out = good.clone();
        out[field] = bad;
        match compare(Flow::Inventory, "s-1", e, &out) {
            Outcome::Wrong(m) => assert!(m.starts_with(named), "{m}"),
            other => panic!("{field}: {other:?}"),
        }
    }
    let mut out = good;
    out["locations"]["fc-9"] = json!({"sellable":0,"damaged":0,"return_to_vendor":0});
    assert!(matches!(
        compare(Flow::Inventory, "s-1", e, &out),
        Outcome::Wrong(_)
    ));
}

#[test]
fn the_oracle_counts_what_the_generator_injected() {
    for flow in [Flow::Inventory, Flow::Ledger] {
        let spec = LoadSpec {
            flow,
            events: 20_000,
            keys: 50,
            duplicates: 0.05,
            invalid: 0.03,
            conflicts: 0.02,
            rate: 0,
            seed: 42,
        };
        // One partition, so every duplicate and conflict meets its original.
        let mut fold = Fold::new(flow);
        for (o, g) in generate(&spec).enumerate() {
            let got = fold.record(0, o as i64, g.key.as_deref(), Some(&g.value));
            let want = match g.kind {
                Kind::Valid => Verdict::Applied,
                Kind::Duplicate => Verdict::Duplicate,
                Kind::Conflict => Verdict::Conflict,
                Kind::Invalid(reason) => Verdict::Invalid(reason),
            };
            assert_eq!(got, want, "{}", String::from_utf8_lossy(&g.value));
        }
        assert_eq!(fold.keys.len(), 50);
    }
}

#[test]
fn generated_histories_never_take_stock_or_balances_below_zero() {
    for flow in [Flow::Inventory, Flow::Ledger] {
        let spec = LoadSpec {
            flow,
            events: 20_000,
            keys: 50,
            duplicates: 0.05,
            invalid: 0.03,
            conflicts: 0.02,
            rate: 0,
            seed: 7,
        };
        let mut fold = Fold::new(flow);
        for (o, g) in generate(&spec).enumerate() {
            fold.record(0, o as i64, g.key.as_deref(), Some(&g.value));
            // Checked after every record: a count that dips below zero and recovers is caught too.
            for (key, e) in &fold.keys {
                for (slot, amounts) in &e.amounts {
                    assert!(
                        amounts.iter().all(|a| *a >= 0),
                        "{flow} {key} {slot} went negative at record {o}: {amounts:?}"
                    );
                }
            }
        }
    }
}
