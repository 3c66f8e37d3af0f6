//! Schema versions: a history with some events rewritten in version 2 (case units, decimal
//! amounts) folds to byte-identical state as its all-version-1 equivalent.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tally_topology::{Guard, Inventory, Ledger, Projection, SourceRef};

fn fold<P: Projection>(records: &[(String, String)]) -> BTreeMap<String, Vec<u8>> {
    let mut states: BTreeMap<String, P::State> = BTreeMap::new();
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    for (i, (k, v)) in records.iter().enumerate() {
        let ev = P::decode(Some(k.as_bytes()), v.as_bytes()).expect("valid event");
        // Fingerprints must agree across versions too.
        seen.insert(P::event_id(&ev).to_string(), P::fingerprint(&ev));
        let key = P::aggregate_key(&ev).to_string();
        let source = SourceRef {
            partition: 0,
            offset: i as i64,
        };
        if let Ok(s) = P::apply(states.get(&key), &ev, source, &Guard::none()) {
            states.insert(key, s);
        }
    }
    let mut out: BTreeMap<String, Vec<u8>> = states
        .into_iter()
        .map(|(k, s)| {
            let mut b = Vec::new();
            P::encode_state(&s, &mut b);
            (k, b)
        })
        .collect();
    for (id, fp) in seen {
        out.insert(format!("fingerprint/{id}"), fp.to_be_bytes().to_vec());
    }
    out
}

/// An inventory adjust of `units` (non-zero) in v1, or in v2 as cases of `case` when they divide.
fn inventory(i: usize, key: u8, units: i64, v2: bool, case: i64) -> (String, String) {
    let sku = format!("sku-{key}");
    let amount = if !v2 {
        format!(r#""quantity":{units}"#)
    } else if units % case == 0 {
        format!(
            r#""delta":{},"unit_of_measure":"case_of_{case}""#,
            units / case
        )
    } else {
        format!(r#""delta":{units},"unit_of_measure":"each""#)
    };
    let v = format!(
        r#"{{"event_id":"e-{i}","schema_version":{},"sku":"{sku}","seller_id":"s","location_id":"fc-1","bucket":"sellable","operation":"adjust",{amount},"event_time":"2026-06-19T18:23:{:02}Z"}}"#,
        if v2 { 2 } else { 1 },
        i % 60
    );
    (sku, v)
}

/// A deposit of `minor` units of `currency` (exponent `exp`) in v1 or as a v2 decimal string.
fn ledger(i: usize, key: u8, minor: i64, v2: bool, currency: &str, exp: u32) -> (String, String) {
    let acc = format!("acc-{key}");
    let amount = if v2 {
        let scale = 10i64.pow(exp);
        let decimal = if exp == 0 {
            minor.to_string()
        } else {
            format!(
                "{}.{:0width$}",
                minor / scale,
                minor % scale,
                width = exp as usize
            )
        };
        format!(r#""amount":"{decimal}""#)
    } else {
        format!(r#""amount_minor":{minor}"#)
    };
    let v = format!(
        r#"{{"event_id":"e-{i}","schema_version":{},"account_id":"{acc}","type":"deposited",{amount},"currency":"{currency}","event_time":"2026-06-19T18:23:{:02}Z"}}"#,
        if v2 { 2 } else { 1 },
        i % 60
    );
    (acc, v)
}

proptest! {
    #[test]
    fn a_mixed_inventory_history_folds_like_its_v1_equivalent(
        events in proptest::collection::vec((0u8..4, 1i64..200, any::<bool>(), 2i64..13), 1..60)
    ) {
        let v1: Vec<_> = events.iter().enumerate()
            .map(|(i, (k, u, _, c))| inventory(i, *k, *u, false, *c)).collect();
        let mixed: Vec<_> = events.iter().enumerate()
            .map(|(i, (k, u, v2, c))| inventory(i, *k, *u, *v2, *c)).collect();
        prop_assert_eq!(fold::<Inventory>(&v1), fold::<Inventory>(&mixed));
    }

    #[test]
    fn a_mixed_ledger_history_folds_like_its_v1_equivalent(
        events in proptest::collection::vec((0u8..4, 1i64..1_000_000, any::<bool>(), 0usize..3), 1..60)
    ) {
        let cur = [("JPY", 0), ("EUR", 2), ("KWD", 3)];
        let v1: Vec<_> = events.iter().enumerate()
            .map(|(i, (k, m, _, c))| ledger(i, *k, *m, false, cur[*c].0, cur[*c].1)).collect();
        let mixed: Vec<_> = events.iter().enumerate()
            .map(|(i, (k, m, v2, c))| ledger(i, *k, *m, *v2, cur[*c].0, cur[*c].1)).collect();
        prop_assert_eq!(fold::<Ledger>(&v1), fold::<Ledger>(&mixed));
    }
}
