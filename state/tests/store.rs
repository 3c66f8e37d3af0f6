//! Contract of a store: atomic committed batches, restore from changelog records, dedupe expiry,
//! and wipe-on-unreadable. No broker involved.

use proptest::prelude::*;
use tally_state::{
    ChangelogKey, Checkpoint, CommitBatch, DedupeEntry, RecordKind, RestoreBatch, Store,
    StoreOptions,
};

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(dir.path(), StoreOptions::default()).expect("open store")
}

fn cp(input: i64) -> Checkpoint {
    Checkpoint {
        input_offset: input,
        changelog_offset: input * 2,
        watermark_ms: 7,
    }
}

#[test]
fn a_new_store_has_no_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(open(&dir).checkpoint().unwrap(), None);
}

#[test]
fn a_committed_batch_is_read_back_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir);
        let mut b = CommitBatch::default();
        b.put_state(b"sku-1", b"\x01state");
        b.put_dedupe(
            b"e-1",
            DedupeEntry {
                fingerprint: 11,
                event_time_ms: 100,
                offset: 0,
            },
        );
        b.set_checkpoint(cp(5));
        store.commit(b).unwrap();
        store.flush().unwrap();
    }
    let store = open(&dir);
    assert_eq!(
        store.state(b"sku-1").unwrap().as_deref(),
        Some(&b"\x01state"[..])
    );
    assert_eq!(
        store.dedupe(b"e-1").unwrap(),
        Some(DedupeEntry {
            fingerprint: 11,
            event_time_ms: 100,
            offset: 0,
        })
    );
    assert_eq!(store.checkpoint().unwrap(), Some(cp(5)));
}

#[test]
fn expiry_finds_only_entries_older_than_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mut b = CommitBatch::default();
    for (id, t) in [("c", 30), ("a", 10), ("b", -20), ("d", 40)] {
        b.put_dedupe(
            id.as_bytes(),
            DedupeEntry {
                fingerprint: 0,
                event_time_ms: t,
                offset: 0,
            },
        );
    }
    store.commit(b).unwrap();
    let expired = store.expired_dedupe(30, 10).unwrap();
    assert_eq!(expired, vec![(b"a".to_vec(), 10), (b"b".to_vec(), -20)]);
}

#[test]
fn removing_a_dedupe_entry_removes_it_from_the_expiry_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mut b = CommitBatch::default();
    b.put_dedupe(
        b"a",
        DedupeEntry {
            fingerprint: 0,
            event_time_ms: 10,
            offset: 0,
        },
    );
    store.commit(b).unwrap();
    let mut b = CommitBatch::default();
    b.remove_dedupe(b"a");
    store.commit(b).unwrap();
    assert_eq!(store.dedupe(b"a").unwrap(), None);
    assert!(store.expired_dedupe(i64::MAX, 10).unwrap().is_empty());
}

#[test]
fn the_expiry_scan_resumes_where_it_stopped_and_wraps() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mut b = CommitBatch::default();
    for id in ["a", "b", "c", "d", "e"] {
        b.put_dedupe(
            id.as_bytes(),
            DedupeEntry {
                fingerprint: 0,
                event_time_ms: 1,
                offset: 0,
            },
        );
    }
    store.commit(b).unwrap();
    let ids = |v: Vec<(Vec<u8>, i64)>| {
        v.into_iter()
            .map(|(k, _)| String::from_utf8(k).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(store.expired_dedupe(2, 2).unwrap()), ["a", "b"]);
    assert_eq!(ids(store.expired_dedupe(2, 2).unwrap()), ["c", "d"]);
    assert_eq!(ids(store.expired_dedupe(2, 2).unwrap()), ["e"]);
    assert_eq!(ids(store.expired_dedupe(2, 2).unwrap()), ["a", "b"]);
}

#[rstest::rstest]
#[case::one_row(1)]
#[case::a_thousand_rows(1_000)]
#[case::several_thousand_rows(3_007)]
fn a_commit_of_any_size_writes_every_row_and_then_its_checkpoint(#[case] rows: usize) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mut b = CommitBatch::default();
    for i in 0..rows {
        b.put_state(format!("sku-{i}").as_bytes(), &i.to_be_bytes());
    }
    b.set_checkpoint(cp(3));
    store.commit(b).unwrap();
    assert_eq!(store.states().count(), rows);
    let last = format!("sku-{}", rows - 1);
    assert_eq!(
        store.state(last.as_bytes()).unwrap().as_deref(),
        Some(&(rows - 1).to_be_bytes()[..])
    );
    assert_eq!(store.checkpoint().unwrap(), Some(cp(3)));
}

#[rstest::rstest]
#[case::put_then_tombstone(&[Some(&b"v1"[..]), None], None)]
#[case::tombstone_then_put(&[None, Some(&b"v2"[..])], Some(&b"v2"[..]))]
#[case::put_tombstone_put(&[Some(&b"v1"[..]), None, Some(&b"v3"[..])], Some(&b"v3"[..]))]
fn within_one_restore_chunk_the_last_record_of_a_key_wins(
    #[case] records: &[Option<&[u8]>],
    #[case] expected: Option<&[u8]>,
) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let key = ChangelogKey::encode(RecordKind::State, b"k");
    let mut chunk = RestoreBatch::default();
    chunk.push(
        &ChangelogKey::encode(RecordKind::State, b"other"),
        Some(b"x"),
    );
    for r in records {
        chunk.push(&key, *r);
    }
    store.restore(&mut chunk).unwrap();
    assert_eq!(store.state(b"k").unwrap().as_deref(), expected);
    assert_eq!(store.state(b"other").unwrap().as_deref(), Some(&b"x"[..]));
}

#[test]
fn restore_applies_the_last_record_of_each_key_and_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let skey = ChangelogKey::encode(RecordKind::State, b"k");
    let dkey = ChangelogKey::encode(RecordKind::Dedupe, b"e");
    let entry = DedupeEntry {
        fingerprint: 3,
        event_time_ms: 50,
        offset: 0,
    }
    .encode();
    let mut chunk = RestoreBatch::default();
    chunk.push(&skey, Some(b"old"));
    chunk.push(&skey, Some(b"new"));
    chunk.push(&dkey, Some(&entry));
    chunk.checkpoint = cp(9);
    store.restore(&mut chunk).unwrap();
    assert_eq!(store.state(b"k").unwrap().as_deref(), Some(&b"new"[..]));
    assert_eq!(
        store.expired_dedupe(51, 10).unwrap(),
        vec![(b"e".to_vec(), 50)]
    );

    let mut chunk = RestoreBatch::default();
    chunk.push(&skey, None);
    chunk.push(&dkey, None);
    chunk.checkpoint = cp(10);
    store.restore(&mut chunk).unwrap();
    assert_eq!(store.state(b"k").unwrap(), None);
    assert_eq!(store.dedupe(b"e").unwrap(), None);
    assert!(store.expired_dedupe(i64::MAX, 10).unwrap().is_empty());
    assert_eq!(store.checkpoint().unwrap(), Some(cp(10)));
}

#[test]
fn a_restore_into_an_empty_store_leaves_out_entries_already_expired() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let entry = |event_time_ms| {
        DedupeEntry {
            fingerprint: 3,
            event_time_ms,
            offset: 0,
        }
        .encode()
    };
    let mut chunk = RestoreBatch::into_empty_store(100);
    chunk.push(
        &ChangelogKey::encode(RecordKind::Dedupe, b"old"),
        Some(&entry(99)),
    );
    chunk.push(
        &ChangelogKey::encode(RecordKind::Dedupe, b"live"),
        Some(&entry(100)),
    );
    chunk.push(&ChangelogKey::encode(RecordKind::State, b"k"), Some(b"s"));
    chunk.checkpoint = cp(3);
    assert_eq!(chunk.len(), 3, "every record read counts");
    assert_eq!(chunk.max_event_time_ms(), Some(100));
    store.restore(&mut chunk).unwrap();
    assert_eq!(store.dedupe(b"old").unwrap(), None);
    assert!(store.dedupe(b"live").unwrap().is_some());
    assert_eq!(store.state(b"k").unwrap().as_deref(), Some(&b"s"[..]));
}

#[test]
fn restore_refuses_a_record_of_unknown_kind() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mut chunk = RestoreBatch::default();
    chunk.push(b"zzz", Some(b"v"));
    assert!(store.restore(&mut chunk).is_err());
}

#[test]
fn a_store_held_open_elsewhere_is_refused_not_wiped() {
    let dir = tempfile::tempdir().unwrap();
    let held = open(&dir);
    let mut b = CommitBatch::default();
    b.put_state(b"sku-1", b"\x01state");
    b.set_checkpoint(cp(5));
    held.commit(b).unwrap();
    held.flush().unwrap();
    let err =
        Store::open_or_wipe(dir.path(), StoreOptions::default()).expect_err("refused while held");
    assert!(err.is_locked(), "{err}");
    assert_eq!(held.checkpoint().unwrap(), Some(cp(5)));
    drop(held);
    assert_eq!(
        open(&dir).state(b"sku-1").unwrap().as_deref(),
        Some(&b"\x01state"[..])
    );
}

#[test]
fn an_unreadable_checkpoint_makes_open_or_wipe_start_empty() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir);
        let mut b = CommitBatch::default();
        b.put_state(b"k", b"v");
        store.commit(b).unwrap();
        // A checkpoint written by an unknown (newer) format.
        let mut chunk = RestoreBatch::default();
        chunk.checkpoint = cp(1);
        store.restore(&mut chunk).unwrap();
        drop(store);
    }
    // Corrupt the checkpoint through sled directly.
    {
        let db = sled::open(dir.path()).unwrap();
        db.insert(b"m/checkpoint", &[42u8, 1, 2][..]).unwrap();
        db.flush().unwrap();
    }
    assert!(Store::open(dir.path(), StoreOptions::default()).is_err());
    let (store, wiped) = Store::open_or_wipe(dir.path(), StoreOptions::default()).unwrap();
    assert!(wiped.is_some());
    assert_eq!(store.state(b"k").unwrap(), None);
    assert_eq!(store.checkpoint().unwrap(), None);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Restoring the same changelog twice, in one chunk or many, ends in the same contents: the
    /// last value of each key.
    #[test]
    fn restore_is_idempotent_and_chunking_does_not_matter(
        records in proptest::collection::vec((0u8..6, proptest::option::of(0u8..4)), 1..60),
        chunk in 1usize..10,
    ) {
        let encode = |k: u8| ChangelogKey::encode(RecordKind::State, &[b'a' + k]);
        // Values of 1 to 3 bytes: a later write of a key fits the earlier one's place or not.
        let value = |v: &Option<u8>| v.map(|v| vec![v; usize::from(v % 3) + 1]);
        let one = tempfile::tempdir().unwrap();
        let many = tempfile::tempdir().unwrap();
        let (a, b) = (open(&one), open(&many));
        let mut whole = RestoreBatch::default();
        for (k, v) in &records { whole.push(&encode(*k), value(v).as_deref()); }
        a.restore(&mut whole).unwrap();
        // One chunk, emptied by each restore and filled again.
        let mut c = RestoreBatch::default();
        for _ in 0..2 {
            for part in records.chunks(chunk) {
                for (k, v) in part { c.push(&encode(*k), value(v).as_deref()); }
                b.restore(&mut c).unwrap();
            }
        }
        let rows = |s: &Store| s.states().map(|r| r.unwrap()).map(|(k, v)| (k, v.to_vec())).collect::<Vec<_>>();
        prop_assert_eq!(rows(&a), rows(&b));
        // And both hold what applying every record in order would.
        let mut model = std::collections::BTreeMap::new();
        for (k, v) in &records {
            match value(v) {
                Some(v) => model.insert(vec![b'a' + k], v),
                None => model.remove(&vec![b'a' + k]),
            };
        }
        prop_assert_eq!(rows(&a), model.into_iter().collect::<Vec<_>>());
    }
}

/// A transaction ships a key again when it changed after it was shipped: the store keeps the
/// last value, as the compacted changelog does.
#[test]
fn a_state_written_twice_in_a_batch_keeps_the_last_value() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mut b = CommitBatch::default();
    b.put_state(b"sku-1", b"\x01old");
    b.put_state(b"sku-1", b"\x01new");
    b.set_checkpoint(cp(1));
    store.commit(b).unwrap();
    assert_eq!(
        store.state(b"sku-1").unwrap().as_deref(),
        Some(&b"\x01new"[..])
    );
}

/// An id can be applied and expired in the same transaction (true = put, false = expire): the
/// store keeps what the last write says, in the order the changelog got them.
#[rstest::rstest]
#[case::put_then_expired(&[true, false], false)]
#[case::expired_then_put_again(&[false, true], true)]
#[case::put_expired_put(&[true, false, true], true)]
fn dedupe_writes_apply_in_order(#[case] puts: &[bool], #[case] present: bool) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let entry = DedupeEntry {
        fingerprint: 7,
        event_time_ms: 1,
        offset: 0,
    };
    let mut b = CommitBatch::default();
    for &put in puts {
        if put {
            b.put_dedupe(b"e-1", entry);
        } else {
            b.remove_dedupe(b"e-1");
        }
    }
    b.set_checkpoint(cp(1));
    store.commit(b).unwrap();
    assert_eq!(store.dedupe(b"e-1").unwrap(), present.then_some(entry));
    assert_eq!(store.checkpoint().unwrap(), Some(cp(1)));
}

#[rstest::rstest]
#[case::empty(0)]
#[case::short(7)]
#[case::longest_on_the_stack(63)]
#[case::one_past_the_stack(64)]
#[case::long(300)]
fn keys_of_any_length_are_read_back(#[case] len: usize) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let key = vec![b'k'; len];
    let mut b = CommitBatch::default();
    b.put_state(&key, b"state");
    b.put_dedupe(
        &key,
        DedupeEntry {
            fingerprint: 5,
            event_time_ms: 6,
            offset: 0,
        },
    );
    store.commit(b).unwrap();
    assert_eq!(store.state(&key).unwrap().as_deref(), Some(&b"state"[..]));
    assert_eq!(store.dedupe(&key).unwrap().map(|e| e.fingerprint), Some(5));
    let mut longer = key.clone();
    longer.push(b'k');
    assert_eq!(store.state(&longer).unwrap(), None);
}

proptest! {
    /// A commit writes each key once (its last write, in key order); the store must end as if
    /// every write had been applied in the order it was staged.
    #[test]
    fn a_commit_leaves_what_its_writes_in_staged_order_would(
        ops in proptest::collection::vec((0u8..6, proptest::option::of(0u8..4)), 0..80)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let mut model = std::collections::HashMap::new();
        let mut b = CommitBatch::default();
        for (i, (id, value)) in ops.iter().enumerate() {
            // Even ids are state rows (only ever put), odd ids dedupe entries (put or removed).
            let key = [b'k', *id];
            let value = if id % 2 == 0 { Some(value.unwrap_or(0)) } else { *value };
            match value {
                Some(v) if id % 2 == 0 => b.put_state(&key, &[1, v, i as u8]),
                Some(v) => b.put_dedupe(&key, DedupeEntry {
                    fingerprint: u64::from(v),
                    event_time_ms: i as i64,
                    offset: 0,
                }),
                None => b.remove_dedupe(&key),
            }
            model.insert(*id, value.map(|v| (v, i)));
        }
        store.commit(b).unwrap();
        for id in 0u8..6 {
            let key = [b'k', id];
            let want = model.get(&id).copied().flatten();
            if id % 2 == 0 {
                let got = store.state(&key).unwrap().map(|v| v.to_vec());
                prop_assert_eq!(got, want.map(|(v, i)| vec![1, v, i as u8]));
            } else {
                let got = store.dedupe(&key).unwrap().map(|e| (e.fingerprint, e.event_time_ms));
                prop_assert_eq!(got, want.map(|(v, i)| (u64::from(v), i as i64)));
            }
        }
    }
}

#[test]
fn a_store_of_the_older_layout_with_dedupe_entries_in_sled_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        db.insert(ChangelogKey::encode(RecordKind::Dedupe, b"e-1"), &b"x"[..])
            .unwrap();
        db.flush().unwrap();
    }
    let (store, wiped) = Store::open_or_wipe(dir.path(), StoreOptions::default()).unwrap();
    let reason = wiped.expect("wiped").to_string();
    assert!(reason.contains("older tally"), "{reason}");
    assert_eq!(store.checkpoint().unwrap(), None);
}

#[test]
fn a_store_whose_dedupe_log_lost_batches_its_checkpoint_covers_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir);
        let mut b = CommitBatch::default();
        b.put_dedupe(
            b"e-1",
            DedupeEntry {
                fingerprint: 1,
                event_time_ms: 5,
                offset: 0,
            },
        );
        b.set_checkpoint(cp(4));
        store.commit(b).unwrap();
        store.flush().unwrap();
    }
    // A machine crash can take the log's unsynced tail while sled kept its checkpoint.
    std::fs::remove_file(dir.path().join("dedupe.log")).unwrap();
    let (store, wiped) = Store::open_or_wipe(dir.path(), StoreOptions::default()).unwrap();
    let reason = wiped.expect("wiped").to_string();
    assert!(reason.contains("before the checkpoint"), "{reason}");
    assert_eq!(store.checkpoint().unwrap(), None);
}
