//! Contract of dedupe bundles in a store: a restored bundle brings back its entries, a bundle
//! expires once its newest entry is old, and per-id records of an older tally stay marked until
//! they are gone. No broker involved.

use tally_state::{
    BundleBuilder, ChangelogKey, Checkpoint, CommitBatch, DedupeEntry, RecordKind, RestoreBatch,
    StateError, Store, StoreOptions,
};

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(dir.path(), StoreOptions::default()).expect("open store")
}

/// The store's sled database, once the dropped store let go of its lock.
fn raw_sled(dir: &tempfile::TempDir) -> sled::Db {
    for _ in 0..100 {
        if let Ok(db) = sled::open(dir.path()) {
            return db;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    sled::open(dir.path()).expect("open sled")
}

fn entry(t: i64) -> DedupeEntry {
    DedupeEntry {
        fingerprint: 5,
        event_time_ms: t,
        offset: t,
    }
}

/// A bundle of `(id, event time)` as the engine ships it: (changelog key, value, newest time).
fn bundle(entries: &[(&str, i64)]) -> (Vec<u8>, Vec<u8>, i64) {
    let mut b = BundleBuilder::default();
    for (id, t) in entries {
        b.push(id.as_bytes(), &entry(*t)).unwrap();
    }
    let mut key = Vec::new();
    b.key_into(&mut key);
    (key, b.value().to_vec(), b.max_event_time_ms())
}

fn restore(store: &Store, mut chunk: RestoreBatch, records: &[(&[u8], Option<&[u8]>)]) {
    for (k, v) in records {
        chunk.push(k, *v);
    }
    chunk.checkpoint = Checkpoint {
        input_offset: 1,
        changelog_offset: records.len() as i64,
        watermark_ms: 0,
    };
    store.restore(&mut chunk).unwrap();
}

fn commit_bundle(store: &Store, entries: &[(&str, i64)]) -> Vec<u8> {
    let (key, _, newest) = bundle(entries);
    let mut b = CommitBatch::default();
    for (id, t) in entries {
        b.put_dedupe(id.as_bytes(), entry(*t));
    }
    b.put_bundle(&key, newest);
    store.commit(b).unwrap();
    key
}

#[test]
fn a_restored_bundle_brings_back_every_entry_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let (key, value, _) = bundle(&[("e-1", 10), ("e-2", 20)]);
    restore(&store, RestoreBatch::default(), &[(&key, Some(&value))]);
    assert_eq!(store.dedupe(b"e-1").unwrap(), Some(entry(10)));
    assert_eq!(store.dedupe(b"e-2").unwrap(), Some(entry(20)));
}

#[test]
fn a_later_bundle_replaces_an_earlier_entry_of_the_same_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let (k1, v1, _) = bundle(&[("e-1", 10)]);
    let (k2, v2, _) = bundle(&[("e-1", 90)]);
    restore(
        &store,
        RestoreBatch::default(),
        &[(&k1, Some(&v1)), (&k2, Some(&v2))],
    );
    assert_eq!(store.dedupe(b"e-1").unwrap(), Some(entry(90)));
}

#[test]
fn a_store_restored_from_empty_leaves_out_expired_entries_but_keeps_their_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let (key, value, _) = bundle(&[("old", 10), ("live", 50)]);
    restore(
        &store,
        RestoreBatch::into_empty_store(40),
        &[(&key, Some(&value))],
    );
    assert_eq!(store.dedupe(b"old").unwrap(), None);
    assert_eq!(store.dedupe(b"live").unwrap(), Some(entry(50)));
    assert_eq!(store.expired_bundles(51, 10).unwrap(), vec![key]);
}

#[test]
fn a_bundle_expires_only_once_its_newest_entry_is_before_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let key = commit_bundle(&store, &[("a", 10), ("b", 30)]);
    assert!(store.expired_bundles(30, 10).unwrap().is_empty());
    assert_eq!(store.expired_bundles(31, 10).unwrap(), vec![key]);
}

#[test]
fn an_expired_bundle_once_removed_is_not_found_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let key = commit_bundle(&store, &[("a", 10)]);
    let mut b = CommitBatch::default();
    b.remove_bundle(&key);
    store.commit(b).unwrap();
    assert!(store.expired_bundles(i64::MAX, 10).unwrap().is_empty());
}

#[test]
fn a_restored_bundle_tombstone_removes_its_row() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let (key, value, _) = bundle(&[("a", 10)]);
    restore(
        &store,
        RestoreBatch::default(),
        &[(&key, Some(&value)), (&key, None)],
    );
    assert!(store.expired_bundles(i64::MAX, 10).unwrap().is_empty());
}

#[test]
fn the_bundle_sweep_resumes_where_it_stopped_and_wraps() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let keys: Vec<_> = (0..5)
        .map(|i| commit_bundle(&store, &[(&format!("e-{i}"), i)]))
        .collect();
    assert_eq!(store.expired_bundles(100, 2).unwrap(), keys[0..2]);
    assert_eq!(store.expired_bundles(100, 2).unwrap(), keys[2..4]);
    assert_eq!(store.expired_bundles(100, 2).unwrap(), keys[4..5]);
    assert_eq!(store.expired_bundles(100, 2).unwrap(), keys[0..2]);
}

#[test]
fn a_sweep_that_saw_nothing_old_reads_nothing_until_an_older_bundle_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    commit_bundle(&store, &[("new", 100)]);
    assert!(store.expired_bundles(50, 10).unwrap().is_empty());
    let late = commit_bundle(&store, &[("late", 20)]);
    assert_eq!(store.expired_bundles(50, 10).unwrap(), vec![late]);
}

#[test]
fn a_damaged_bundle_refuses_its_restore_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let (key, value, _) = bundle(&[("a", 10)]);
    let mut chunk = RestoreBatch::default();
    chunk.push(&key, Some(&value[..value.len() - 1]));
    assert!(matches!(
        store.restore(&mut chunk),
        Err(StateError::Corrupt {
            what: "dedupe bundle",
            ..
        })
    ));
}

#[test]
fn restored_per_id_records_mark_the_store_legacy_up_to_their_newest_entry() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    assert_eq!(store.legacy_dedupe().unwrap(), None);
    let (k1, k2) = (
        ChangelogKey::encode(RecordKind::Dedupe, b"a"),
        ChangelogKey::encode(RecordKind::Dedupe, b"b"),
    );
    let (bk, bv, _) = bundle(&[("c", 99)]);
    restore(
        &store,
        RestoreBatch::default(),
        &[
            (&k1, Some(&entry(30).encode())),
            (&k2, Some(&entry(20).encode())),
            (&bk, Some(&bv)),
        ],
    );
    assert_eq!(store.legacy_dedupe().unwrap(), Some(30));
    let mut b = CommitBatch::default();
    b.end_legacy();
    store.commit(b).unwrap();
    assert_eq!(store.legacy_dedupe().unwrap(), None);
}

#[test]
fn a_store_of_an_older_tally_is_legacy_up_to_its_newest_entry() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir);
        let mut b = CommitBatch::default();
        b.put_dedupe(b"a", entry(70));
        b.put_dedupe(b"b", entry(40));
        store.commit(b).unwrap();
        store.flush().unwrap();
    }
    // An older tally wrote no layout.
    {
        let db = raw_sled(&dir);
        db.remove(b"m/layout").unwrap();
        db.flush().unwrap();
    }
    assert_eq!(open(&dir).legacy_dedupe().unwrap(), Some(70));
}

#[test]
fn a_store_of_a_newer_layout_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(&dir));
    {
        let db = raw_sled(&dir);
        db.insert(b"m/layout", &[9u8]).unwrap();
        db.flush().unwrap();
    }
    let err = Store::open(dir.path(), StoreOptions::default())
        .expect_err("refused")
        .to_string();
    assert!(err.contains("store layout has format version 9"), "{err}");
}

#[test]
fn a_cleared_store_is_not_legacy() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let k = ChangelogKey::encode(RecordKind::Dedupe, b"a");
    restore(
        &store,
        RestoreBatch::default(),
        &[(&k, Some(&entry(30).encode()))],
    );
    store.clear().unwrap();
    drop(store);
    assert_eq!(open(&dir).legacy_dedupe().unwrap(), None);
}
