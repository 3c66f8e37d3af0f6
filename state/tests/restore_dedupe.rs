//! Contract of a restore chunk whose dedupe entries go to the index ahead of its states: the
//! states and the checkpoint wait for the chunk, and the end is the same as in one go.

use proptest::prelude::*;
use tally_state::{
    ChangelogKey, Checkpoint, DedupeEntry, RecordKind, RestoreBatch, Store, StoreOptions,
    RESTORE_CHUNK_BYTES, RESTORE_DEDUPE_BYTES,
};

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(dir.path(), StoreOptions::default()).expect("open store")
}

fn cp(changelog_offset: i64) -> Checkpoint {
    Checkpoint {
        input_offset: 1,
        changelog_offset,
        watermark_ms: 7,
    }
}

fn entry(event_time_ms: i64) -> [u8; 25] {
    DedupeEntry {
        fingerprint: 3,
        event_time_ms,
        offset: 0,
    }
    .encode()
}

fn dedupe_key(id: &[u8]) -> Vec<u8> {
    ChangelogKey::encode(RecordKind::Dedupe, id)
}

#[test]
fn dedupe_entries_applied_ahead_are_found_before_the_states_and_checkpoint_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mut chunk = RestoreBatch::default();
    chunk.push(&dedupe_key(b"e-1"), Some(&entry(40)));
    chunk.push(&ChangelogKey::encode(RecordKind::State, b"k"), Some(b"s"));
    store.restore_dedupe(&mut chunk).unwrap();
    assert_eq!(
        store.dedupe(b"e-1").unwrap().map(|e| e.event_time_ms),
        Some(40)
    );
    assert_eq!(
        store.state(b"k").unwrap(),
        None,
        "states wait for the chunk"
    );
    assert_eq!(store.checkpoint().unwrap(), None, "so does the checkpoint");
    assert_eq!(
        chunk.max_event_time_ms(),
        Some(40),
        "the chunk still knows its watermark"
    );

    chunk.push(&dedupe_key(b"e-1"), None);
    chunk.checkpoint = cp(3);
    store.restore(&mut chunk).unwrap();
    assert_eq!(
        store.dedupe(b"e-1").unwrap(),
        None,
        "a later tombstone still wins"
    );
    assert_eq!(store.state(b"k").unwrap().as_deref(), Some(&b"s"[..]));
    assert_eq!(store.checkpoint().unwrap(), Some(cp(3)));
}

#[test]
fn dedupe_entries_fill_their_own_part_of_a_chunk_not_the_states_part() {
    let mut chunk = RestoreBatch::default();
    let mut pushed = 0;
    while !chunk.dedupe_is_full() {
        chunk.push(
            &dedupe_key(format!("e-{pushed}").as_bytes()),
            Some(&entry(1)),
        );
        pushed += 1;
        assert!(
            pushed <= RESTORE_DEDUPE_BYTES,
            "the dedupe part never filled"
        );
    }
    // Each entry holds at least its 25 encoded bytes: as many as the states' bound in all.
    while pushed < RESTORE_CHUNK_BYTES / 25 {
        chunk.push(
            &dedupe_key(format!("e-{pushed}").as_bytes()),
            Some(&entry(1)),
        );
        pushed += 1;
    }
    assert!(
        !chunk.is_full(),
        "no state was pushed, so the chunk is not due"
    );
    chunk.push(
        &ChangelogKey::encode(RecordKind::State, b"k"),
        Some(&[0; RESTORE_CHUNK_BYTES]),
    );
    assert!(chunk.is_full(), "states fill it");
}

#[test]
fn a_chunk_with_an_unreadable_record_is_refused_ahead_too() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mut chunk = RestoreBatch::default();
    chunk.push(b"zzz", Some(b"v"));
    assert!(store.restore_dedupe(&mut chunk).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Dedupe puts (`Some(time)`) and tombstones (`None`) of a few ids, with the entries applied
    /// ahead at any points: the index ends as applying the whole chunk at once leaves it.
    #[test]
    fn applying_dedupe_entries_ahead_at_any_point_ends_the_same(
        records in proptest::collection::vec((0u8..5, proptest::option::of(0i64..100)), 1..60),
        ahead in proptest::collection::vec(any::<bool>(), 60),
    ) {
        let one = tempfile::tempdir().unwrap();
        let split = tempfile::tempdir().unwrap();
        let (a, b) = (open(&one), open(&split));
        let push = |c: &mut RestoreBatch, id: u8, t: &Option<i64>| {
            c.push(&dedupe_key(&[b'a' + id]), t.map(entry).as_ref().map(|e| &e[..]));
        };
        let mut whole = RestoreBatch::default();
        for (id, t) in &records { push(&mut whole, *id, t); }
        whole.checkpoint = cp(9);
        a.restore(&mut whole).unwrap();
        let mut c = RestoreBatch::default();
        for ((id, t), early) in records.iter().zip(&ahead) {
            push(&mut c, *id, t);
            if *early { b.restore_dedupe(&mut c).unwrap(); }
        }
        c.checkpoint = cp(9);
        b.restore(&mut c).unwrap();
        let entries = |s: &Store| {
            let mut v: Vec<_> = s.dedupe_entries().map(|r| r.unwrap()).collect();
            v.sort_by(|x, y| x.0.cmp(&y.0));
            v
        };
        prop_assert_eq!(entries(&a), entries(&b));
        let mut model = std::collections::BTreeMap::new();
        for (id, t) in &records {
            match t {
                Some(t) => model.insert(vec![b'a' + id], *t),
                None => model.remove(&vec![b'a' + id]),
            };
        }
        let times: Vec<_> = entries(&b).into_iter().map(|(id, e)| (id, e.event_time_ms)).collect();
        prop_assert_eq!(times, model.into_iter().collect::<Vec<_>>());
    }
}
