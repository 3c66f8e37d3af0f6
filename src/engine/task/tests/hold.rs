//! The at_least_once hold: after a crash landed a key's newer output without its state, that key
//! sends no older output, and no commit passes its event, until its state caught up.

use std::collections::HashMap;

use super::{outputs, Ahead, Harness, TaskOps};

/// A restore that found `a`'s output of input offset 2 past the last commit (offset 0), with
/// the input ending at 10.
fn a_landed_ahead() -> Ahead {
    Ahead {
        horizon: 10,
        output_end: 1,
        keys: Some(HashMap::from_iter([("a".to_string(), 2)])),
    }
}

#[test]
fn a_key_behind_its_landed_output_sends_none() {
    let mut h = Harness::restored(|_| {}, 0, a_landed_ahead());
    h.add(0, "e1", "a", 1);
    h.add(1, "e2", "b", 1);
    assert_eq!(outputs(&h.ship()), [("b".to_string(), 1)]);
}

#[test]
fn the_commit_stops_at_the_first_held_event() {
    let mut h = Harness::restored(|_| {}, 0, a_landed_ahead());
    h.add(0, "e1", "a", 1);
    h.add(1, "e2", "b", 1);
    assert_eq!(h.task.commit_point().input, 0);
}

#[test]
fn a_key_that_caught_up_sends_its_output_and_the_commit_moves_on() {
    let mut h = Harness::restored(|_| {}, 0, a_landed_ahead());
    h.add(0, "e1", "a", 1);
    h.add(1, "e2", "a", 1);
    h.ship();
    h.add(2, "e3", "a", 1);
    assert_eq!(outputs(&h.ship()), [("a".to_string(), 3)]);
    assert_eq!(h.task.commit_point().input, 3);
}

#[test]
fn without_known_keys_every_output_waits_for_the_horizon() {
    // The input ended at 3 when the restore ran.
    let unknown = Ahead {
        horizon: 3,
        output_end: 1,
        keys: None,
    };
    let mut h = Harness::restored(|_| {}, 0, unknown);
    h.add(0, "e1", "a", 1);
    h.add(1, "e2", "b", 1);
    assert!(outputs(&h.ship()).is_empty());
    h.add(2, "e3", "c", 1);
    let mut sent = outputs(&h.ship());
    sent.sort();
    assert_eq!(
        sent,
        [
            ("a".to_string(), 1),
            ("b".to_string(), 1),
            ("c".to_string(), 1)
        ]
    );
}
