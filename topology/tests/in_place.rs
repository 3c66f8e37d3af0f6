//! The processor folds events into states it holds, in place: an event that a projection
//! refuses (an overflow) must leave the state exactly as it was, or a refused event would leak.

use proptest::prelude::*;
use tally_topology::{Guard, Inventory, Ledger, Projection, SourceRef};

/// Quantities around zero, and ones large enough that sums overflow.
fn quantity() -> impl Strategy<Value = i64> {
    prop_oneof![-50i64..50, (i64::MAX / 2)..(i64::MAX - 1)]
}

fn inventory_event(i: usize, location: u8, op: u8, q: i64) -> Vec<u8> {
    let (operation, to, q) = match op % 3 {
        0 => ("adjust", "", if q == 0 { 1 } else { q }),
        1 => ("set", "", q.abs()),
        _ => ("move", r#","to_bucket":"damaged""#, q.abs() + 1),
    };
    format!(
        r#"{{"event_id":"e-{i}","schema_version":1,"sku":"sku-1","seller_id":"s","location_id":"fc-{location}","bucket":"sellable","operation":"{operation}"{to},"quantity":{q},"event_time":"2026-06-19T18:23:11Z"}}"#
    )
    .into_bytes()
}

fn ledger_event(i: usize, kind: u8, currency: u8, amount: i64) -> Vec<u8> {
    let kind = ["deposited", "withdrawn", "reserved", "released", "captured"][kind as usize % 5];
    let currency = ["EUR", "USD"][currency as usize % 2];
    let amount = amount.abs().max(1);
    format!(
        r#"{{"event_id":"e-{i}","schema_version":1,"account_id":"acc-1","type":"{kind}","amount_minor":{amount},"currency":"{currency}","event_time":"2026-06-19T18:23:11Z","correlation_id":null,"causation_id":null}}"#
    )
    .into_bytes()
}

/// Folds `records` in place and checks every refused one against the bytes before it; returns
/// how many were refused, so a run that never overflowed is visible.
fn refused_leave_the_state_unchanged<P: Projection>(key: &[u8], records: &[Vec<u8>]) -> usize {
    let mut state: Option<P::State> = None;
    let mut refused = 0;
    for (i, value) in records.iter().enumerate() {
        let ev = P::decode(Some(key), value).expect("the generated event is valid");
        let source = SourceRef {
            partition: 0,
            offset: i as i64,
        };
        let mut s = state.take().unwrap_or_else(|| P::initial(&ev, source));
        let (mut before, mut after) = (Vec::new(), Vec::new());
        P::encode_state(&s, &mut before);
        // Every invariant guarded: a refusal for any reason must leave the state as it was.
        let guard = Guard::new(P::INVARIANTS.iter().copied(), false);
        if P::apply_in_place(&mut s, &ev, source, &guard).is_err() {
            P::encode_state(&s, &mut after);
            assert_eq!(before, after, "refused event {i} changed the state");
            refused += 1;
        }
        state = Some(s);
    }
    refused
}

proptest! {
    #[test]
    fn a_refused_inventory_event_leaves_the_state_unchanged(
        events in proptest::collection::vec((0u8..3, 0u8..9, quantity()), 1..40)
    ) {
        let records: Vec<_> = events.iter().enumerate()
            .map(|(i, (loc, op, q))| inventory_event(i, *loc, *op, *q)).collect();
        refused_leave_the_state_unchanged::<Inventory>(b"sku-1", &records);
    }

    #[test]
    fn a_refused_ledger_event_leaves_the_state_unchanged(
        events in proptest::collection::vec((0u8..5, 0u8..2, quantity()), 1..40)
    ) {
        let records: Vec<_> = events.iter().enumerate()
            .map(|(i, (kind, cur, a))| ledger_event(i, *kind, *cur, *a)).collect();
        refused_leave_the_state_unchanged::<Ledger>(b"acc-1", &records);
    }
}

/// The generators do reach the refusals the properties are about.
#[test]
fn large_quantities_do_overflow() {
    let records: Vec<_> = (0..3)
        .map(|i| inventory_event(i, 0, 0, i64::MAX - 2))
        .collect();
    assert_eq!(
        refused_leave_the_state_unchanged::<Inventory>(b"sku-1", &records),
        2
    );
    let records: Vec<_> = (0..3)
        .map(|i| ledger_event(i, 0, 0, i64::MAX - 2))
        .collect();
    assert_eq!(
        refused_leave_the_state_unchanged::<Ledger>(b"acc-1", &records),
        2
    );
}
