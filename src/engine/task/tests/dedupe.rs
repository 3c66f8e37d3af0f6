//! Duplicate, conflict and redelivery: each event id is applied once, with its first content.

use std::collections::HashMap;

use proptest::prelude::*;
use rstest::rstest;
use tally_state::{CommitBatch, DedupeEntry, Store};
use tally_topology::{Projection, SourceRef};

use super::sum::{Sum, Total};
use super::{dead_reasons, kinds, nothing_ahead, outputs, Harness, TaskOps};

#[test]
fn a_new_event_ships_its_dedupe_entry_before_its_state_and_output() {
    let mut h = Harness::active();
    h.add(0, "e1", "a", 2);
    let out = h.ship();
    assert_eq!(kinds(&out), ["bundle", "state", "output"]);
    assert_eq!(outputs(&out), [("a".to_string(), 2)]);
}

/// What became of a second record after `e1` (`a` += 2) was applied.
#[derive(Debug)]
enum Became {
    Applied(i64),
    Skipped,
    DeadLettered(&'static str),
}

#[rstest]
#[case::redelivery("e1", 2, Became::Skipped)]
#[case::same_id_other_content("e1", 5, Became::DeadLettered("duplicate_conflict"))]
#[case::another_id("e2", 3, Became::Applied(5))]
fn a_second_record_is_judged_by_its_id_and_content(
    #[case] id: &str,
    #[case] n: i64,
    #[case] became: Became,
) {
    let mut h = Harness::active();
    h.add(0, "e1", "a", 2);
    h.ship();
    h.add(1, id, "a", n);
    let out = h.ship();
    match became {
        Became::Applied(total) => assert_eq!(outputs(&out), [("a".to_string(), total)]),
        Became::Skipped => {
            assert!(out.is_empty(), "{:?}", kinds(&out));
            assert_eq!(h.task.staging.counts.duplicates, 1);
        }
        Became::DeadLettered(reason) => {
            assert_eq!(kinds(&out), ["dead letter"]);
            assert_eq!(dead_reasons(&out), [reason]);
        }
    }
}

#[test]
fn a_malformed_record_is_dead_lettered_and_the_partition_goes_on() {
    let mut h = Harness::active();
    h.record(0, Some(b"a"), Some(b"{not json"));
    h.add(1, "e1", "a", 2);
    let out = h.ship();
    assert_eq!(dead_reasons(&out), ["malformed_json"]);
    assert_eq!(outputs(&out), [("a".to_string(), 2)]);
    assert_eq!(h.task.commit_point().input, 2);
}

/// A store as an at_least_once crash leaves it: `e1` (`a` += 2, at offset 0) has its dedupe
/// entry, and its state only if `state_landed`.
fn crashed(state_landed: bool) -> impl FnOnce(&Store) {
    move |store: &Store| {
        let json = br#"{"id":"e1","key":"a","n":2,"t":1000}"#;
        let event = Sum::decode(Some(b"a"), json).expect("a valid event");
        let mut batch = CommitBatch::default();
        batch.put_dedupe(
            b"e1",
            DedupeEntry {
                fingerprint: Sum::fingerprint(&event),
                event_time_ms: 1000,
                offset: 0,
            },
        );
        if state_landed {
            let source = SourceRef {
                partition: 0,
                offset: 0,
            };
            let state: Total =
                Sum::apply(None, &event, source, &Default::default()).expect("applies");
            let mut bytes = Vec::new();
            Sum::encode_state(&state, &mut bytes);
            batch.put_state(b"a", &bytes);
        }
        store.commit(batch).expect("the store takes the batch");
    }
}

#[test]
fn the_same_record_is_folded_again_when_a_crash_lost_its_state() {
    let mut h = Harness::restored(crashed(false), 0, nothing_ahead());
    h.add(0, "e1", "a", 2);
    let out = h.ship();
    assert_eq!(outputs(&out), [("a".to_string(), 2)]);
    assert_eq!(h.task.staging.counts.applied, 1);
}

#[test]
fn the_same_record_resends_its_output_when_its_state_landed() {
    let mut h = Harness::restored(crashed(true), 0, nothing_ahead());
    h.add(0, "e1", "a", 2);
    let out = h.ship();
    // The output may be what the crash lost; the total is not counted twice.
    assert_eq!(outputs(&out), [("a".to_string(), 2)]);
    assert_eq!(h.task.staging.counts.applied, 0);
    assert_eq!(h.task.staging.counts.duplicates, 1);
}

proptest! {
    /// Records of a few ids, redelivered and reused with other content in any order, with
    /// commits anywhere: each key's last output is the sum of its ids' first contents, and
    /// every record of a reused id with other content is dead-lettered.
    #[test]
    fn each_id_counts_once_with_its_first_content(
        stream in prop::collection::vec((0u8..12, 1i64..4, any::<bool>()), 1..120)
    ) {
        let mut h = Harness::active();
        let mut first: HashMap<u8, i64> = HashMap::new();
        let mut conflicts = 0;
        let mut out = Vec::new();
        for (offset, (id, n, commit)) in stream.iter().enumerate() {
            let key = format!("k{}", id % 3);
            let offset = offset as i64;
            if *first.entry(*id).or_insert(*n) != *n {
                conflicts += 1;
            }
            h.add(offset, &format!("e{id}"), &key, *n);
            out.extend(if *commit { h.commit() } else { h.ship() });
        }
        out.extend(h.commit());
        let mut want: HashMap<String, i64> = HashMap::new();
        for (id, n) in &first {
            *want.entry(format!("k{}", id % 3)).or_default() += n;
        }
        let got: HashMap<String, i64> = outputs(&out).into_iter().collect();
        prop_assert_eq!(got, want);
        prop_assert_eq!(dead_reasons(&out).len(), conflicts);
    }
}
