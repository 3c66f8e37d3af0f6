//! Contract of the dedupe expiry sweep: it finds every entry older than the bound, also once a
//! full sweep has shown none was that old and later writes or a restore brought older ones.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tally_state::{ChangelogKey, CommitBatch, DedupeEntry, RecordKind, RestoreBatch, Store};

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(dir.path(), Default::default()).expect("open store")
}

fn entry(event_time_ms: i64) -> DedupeEntry {
    DedupeEntry {
        fingerprint: 0,
        event_time_ms,
        offset: 0,
    }
}

fn put(store: &Store, id: &str, t: i64) {
    let mut b = CommitBatch::default();
    b.put_dedupe(id.as_bytes(), entry(t));
    store.commit(b).unwrap();
}

/// Everything one whole cycle of the sweep reports, wherever it stood.
fn sweep(store: &Store, before_ms: i64) -> Vec<String> {
    let mut found: Vec<String> = (0..2)
        .flat_map(|_| store.expired_dedupe(before_ms, usize::MAX).unwrap())
        .map(|(id, _)| String::from_utf8(id).unwrap())
        .collect();
    found.sort();
    found.dedup();
    found
}

#[test]
fn an_entry_older_than_a_swept_index_is_found_when_written_later() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    for id in ["a", "b", "c"] {
        put(&store, id, 100);
    }
    assert!(sweep(&store, 50).is_empty());
    put(&store, "late", 10);
    assert_eq!(sweep(&store, 50), ["late"]);
}

#[test]
fn an_entry_restored_after_a_sweep_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    put(&store, "a", 100);
    assert!(sweep(&store, 50).is_empty());
    let mut chunk = RestoreBatch::default();
    chunk.push(
        &ChangelogKey::encode(RecordKind::Dedupe, b"old"),
        Some(&entry(10).encode()),
    );
    store.restore(&mut chunk).unwrap();
    assert_eq!(sweep(&store, 50), ["old"]);
}

#[test]
fn an_entry_found_but_not_removed_is_found_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    put(&store, "a", 10);
    put(&store, "b", 100);
    assert_eq!(sweep(&store, 50), ["a"]);
    // The removal was never committed (say its transaction aborted).
    assert_eq!(sweep(&store, 50), ["a"]);
}

#[derive(Debug, Clone)]
enum Op {
    Put(u8, i64),
    Remove(u8),
    Scan(i64, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..20, 0i64..100).prop_map(|(id, t)| Op::Put(id, t)),
        (0u8..20).prop_map(Op::Remove),
        (0i64..120, 1usize..6).prop_map(|(b, n)| Op::Scan(b, n)),
    ]
}

proptest! {
    #[test]
    fn a_whole_sweep_finds_exactly_the_entries_older_than_the_bound(
        ops in proptest::collection::vec(op(), 0..60),
        bound in 0i64..120,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let mut model = BTreeMap::new();
        for op in ops {
            match op {
                Op::Put(id, t) => {
                    put(&store, &format!("e{id:02}"), t);
                    model.insert(format!("e{id:02}"), t);
                }
                Op::Remove(id) => {
                    let mut b = CommitBatch::default();
                    b.remove_dedupe(format!("e{id:02}").as_bytes());
                    store.commit(b).unwrap();
                    model.remove(&format!("e{id:02}"));
                }
                Op::Scan(before, n) => {
                    store.expired_dedupe(before, n).unwrap();
                }
            }
        }
        let expected: Vec<String> =
            model.into_iter().filter(|(_, t)| *t < bound).map(|(id, _)| id).collect();
        prop_assert_eq!(sweep(&store, bound), expected);
    }
}
