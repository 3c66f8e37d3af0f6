//! A store written by an earlier tally (`62a7e0a`, before the projection API) opens as it is:
//! its checkpoint, states and dedupe index read back with today's code, so an upgrade restores
//! nothing it need not. No broker: the fixture is the store of a flow that applied 287 of 300
//! generated inventory events (13 redeliveries) on one partition, then stopped cleanly.

use std::path::Path;

use tally_state::{Store, StoreOptions};
use tally_topology::{Inventory, Projection};

/// The fixture, copied: opening a store may write to it.
fn fixture() -> (tempfile::TempDir, Store) {
    let from =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-62a7e0a/inventory-0");
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&from).unwrap().flatten() {
        if entry.path().is_file() {
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
    }
    let store = Store::open(dir.path(), StoreOptions::default()).expect("the old store opens");
    (dir, store)
}

#[test]
fn the_checkpoint_of_an_older_store_reads_back() {
    let (_dir, store) = fixture();
    let cp = store.checkpoint().unwrap().expect("a checkpoint");
    assert_eq!(cp.input_offset, 300, "it had committed every record");
}

#[test]
fn the_states_of_an_older_store_decode_and_hold_every_applied_event() {
    let (_dir, store) = fixture();
    let mut keys = 0;
    let mut applied = 0;
    for row in store.states() {
        let (key, bytes) = row.unwrap();
        let state = Inventory::decode_state(&bytes).expect("an older state decodes");
        assert_eq!(Inventory::state_key(&state).as_bytes(), &key[..]);
        keys += 1;
        applied += state.events_applied;
    }
    assert_eq!(keys, 20);
    assert_eq!(
        applied, 287,
        "every valid event applied once, no redelivery"
    );
}

#[test]
fn the_dedupe_index_of_an_older_store_knows_its_ids() {
    let (_dir, store) = fixture();
    let first = store
        .dedupe(b"inv-7-0")
        .unwrap()
        .expect("the first event's id");
    assert_eq!(first.offset, 0);
    assert!(store.dedupe(b"inv-7-100000").unwrap().is_none());
    let ids = store.dedupe_entries().map(Result::unwrap).count();
    assert_eq!(ids, 287, "one entry per applied event");
}
