//! Seal and commit: a sealed batch is seen by the next one, reaches the store only once Kafka
//! committed it, and a rollback drops it.

use super::{outputs, Harness, TaskOps};
use crate::engine::task::Status;

#[test]
fn the_next_batch_folds_on_the_sealed_one() {
    let mut h = Harness::active();
    h.add(0, "e1", "a", 2);
    h.seal();
    h.add(1, "e2", "a", 3);
    assert_eq!(outputs(&h.ship()), [("a".to_string(), 5)]);
}

#[test]
fn the_next_batch_dedupes_against_the_sealed_one() {
    let mut h = Harness::active();
    h.add(0, "e1", "a", 2);
    h.seal();
    h.add(1, "e1", "a", 2);
    assert!(h.ship().is_empty());
    assert_eq!(h.task.staging.counts.duplicates, 1);
}

#[test]
fn a_sealed_batch_is_not_in_the_store_before_its_commit() {
    let mut h = Harness::active();
    h.add(0, "e1", "a", 2);
    h.seal();
    assert_eq!(h.stored("a"), None);
    assert_eq!(h.task.committed(), 0);
}

#[test]
fn a_committed_batch_reaches_the_store_with_its_checkpoint() {
    let mut h = Harness::active();
    h.add(0, "e1", "a", 2);
    h.commit();
    assert_eq!(h.stored("a").map(|s| s.total), Some(2));
    let cp = h
        .task
        .store
        .checkpoint()
        .expect("readable")
        .expect("written");
    assert_eq!(cp.input_offset, 1);
    assert_eq!(h.task.committed(), 1);
}

#[test]
fn a_rolled_back_batch_never_reaches_the_store() {
    let mut h = Harness::active();
    h.add(0, "e1", "a", 2);
    h.seal();
    h.task.restart();
    h.task.settle().expect("nothing to write");
    assert_eq!(h.stored("a"), None);
    assert_eq!(h.task.status(), Status::Restoring);
}

#[test]
fn a_restoring_task_ignores_input() {
    let mut h = Harness::restoring(|_| {});
    h.add(0, "e1", "a", 2);
    assert_eq!(h.task.staged(), 0);
    assert!(h.ship().is_empty());
}
