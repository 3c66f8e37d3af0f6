//! The benchmark at the scale point, a store of 1M keys: catch-up under exactly_once,
//! then a full restore of that store from its changelog, each with its peak RSS.

use std::collections::HashSet;
use std::path::Path;

use serde::Serialize;
use tally::kafka::topics::{TopicRole, Topics};
use tally::workload::Kind;

use super::support::*;

/// What one processor costs at that scale.
#[derive(Serialize, Default)]
pub struct Scale {
    pub keys: u64,
    pub events: u64,
    /// Distinct SKUs the events touch (random keys leave some untouched): the keys in the stores.
    pub keys_materialized: u64,
    /// Valid events, each an id the dedupe index holds for the whole run.
    pub ids_held: u64,
    pub catch_up_events_per_sec: f64,
    pub peak_rss_mib_catch_up: f64,
    pub state_dir_mib: f64,
    pub restore: Restore,
}

/// Loads `events` over `keys` SKUs into a fresh input, catches one exactly_once processor up,
/// then deletes its stores and times a full restore.
pub fn measure(
    bootstrap: &str,
    topics: &Topics,
    work: &Path,
    run: u64,
    partitions: i32,
    keys: u64,
    events: u64,
) -> Scale {
    let input = format!("bench-{run}.scale.in");
    topics
        .create(&input, partitions, 1, TopicRole::Log)
        .unwrap();
    let spec = inventory_load(events, keys, 0, 5);
    let mut scale = Scale {
        keys,
        events,
        ..Scale::default()
    };
    let mut touched = HashSet::new();
    for g in tally::workload::generate(&spec).filter(|g| g.kind == Kind::Valid) {
        scale.ids_held += 1;
        touched.insert(g.key.unwrap_or_default());
    }
    scale.keys_materialized = touched.len() as u64;
    drop(touched);
    eprintln!(
        "scale: loading {events} events over {keys} SKUs ({} touched)",
        scale.keys_materialized
    );
    tally::workload::produce(bootstrap, &Default::default(), &input, &spec).unwrap();

    let app = format!("bench-{run}-scale");
    let config = write_config(work, &app, bootstrap, &input, "exactly_once");
    let state = work.join("state").join(&app);
    (scale.catch_up_events_per_sec, scale.peak_rss_mib_catch_up) = timed_catch_up(
        &config,
        &work.join("scale.log"),
        bootstrap,
        &app,
        &input,
        events,
    );
    scale.state_dir_mib = dir_size(&state) as f64 / 1048576.0;
    eprintln!(
        "scale: catch-up {:.0} events/s, peak RSS {:.0} MiB, state dir {:.0} MiB",
        scale.catch_up_events_per_sec, scale.peak_rss_mib_catch_up, scale.state_dir_mib
    );

    scale.restore = timed_restore(
        &config,
        &state,
        &work.join("scale-restore.log"),
        partitions as usize,
    );
    eprintln!(
        "scale: restore of {} records in {:.2} s, peak RSS {:.0} MiB",
        scale.restore.records, scale.restore.seconds, scale.restore.peak_rss_mib
    );
    scale
}
