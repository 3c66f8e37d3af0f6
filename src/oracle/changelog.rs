//! The oracle's look at a flow's changelog: the live state keys and dedupe entries of each
//! partition must be exactly the keys and first-seen event ids its own fold found, except ids
//! past the dedupe retention, which the processor deletes lazily and may or may not still hold.

use std::collections::{BTreeSet, HashMap};

use tally_state::bundle::decode_bundle;
use tally_state::changelog::{ChangelogKey, RecordKind};

use super::fold::Fold;
use super::{scan, OracleReport};

/// Compares the changelog with the fold; returns how many changelog partitions an open
/// transaction holds.
pub(super) fn check(
    consumer: &scan::Reader,
    topic: &str,
    fold: &Fold,
    retention_ms: i64,
    report: &mut OracleReport,
) -> anyhow::Result<u64> {
    let ends = scan::high_watermarks(consumer, topic)?;
    // Partition -> live ids, per kind; the last record of an id wins, a tombstone removes it.
    let mut states: HashMap<i32, BTreeSet<Vec<u8>>> = HashMap::new();
    let mut dedupe: HashMap<i32, BTreeSet<Vec<u8>>> = HashMap::new();
    // (partition, bundle key) -> the ids of a live bundle.
    let mut bundles: HashMap<(i32, Vec<u8>), Vec<Vec<u8>>> = HashMap::new();
    let mut unreadable = 0u64;
    let held = scan::scan(consumer, topic, &ends, |r| {
        let Some(Ok(key)) = r.key.map(ChangelogKey::parse) else {
            unreadable += 1;
            return;
        };
        let set = match key.kind {
            RecordKind::State => states.entry(r.partition).or_default(),
            RecordKind::Dedupe => dedupe.entry(r.partition).or_default(),
            RecordKind::Bundle => {
                let at = (r.partition, key.id.to_vec());
                let Some(value) = r.value else {
                    bundles.remove(&at);
                    return;
                };
                let mut ids = Vec::new();
                match decode_bundle(value, |id, _| ids.push(id.to_vec())) {
                    Ok(()) => bundles.insert(at, ids),
                    Err(_) => {
                        unreadable += 1;
                        bundles.remove(&at)
                    }
                };
                return;
            }
        };
        if r.value.is_some() {
            set.insert(key.id.to_vec());
        } else {
            set.remove(key.id);
        }
    })?;
    if unreadable > 0 {
        report.wrong += unreadable;
        report.note(format!(
            "{unreadable} changelog records have no readable key or bundle"
        ));
    }
    // An id in any live bundle is live (an id applied again after it expired is in two).
    for ((p, _), ids) in bundles {
        dedupe.entry(p).or_default().extend(ids);
    }

    let mut want_states: HashMap<i32, BTreeSet<Vec<u8>>> = HashMap::new();
    for (key, e) in &fold.keys {
        want_states
            .entry(e.partition)
            .or_default()
            .insert(key.as_bytes().to_vec());
    }
    // An id older than its partition's watermark minus the retention is expired: its entry
    // may still be in the changelog until the expiry scan reaches it, or already gone.
    let mut want_dedupe: HashMap<i32, BTreeSet<Vec<u8>>> = HashMap::new();
    for (p, ids) in &fold.seen {
        let bound = fold
            .watermarks
            .get(p)
            .map_or(i64::MIN, |w| w.saturating_sub(retention_ms));
        let want = want_dedupe.entry(*p).or_default();
        for (id, &(_, time_ms)) in ids {
            let id = id.as_bytes();
            if time_ms >= bound {
                want.insert(id.to_vec());
            } else if let Some(found) = dedupe.get_mut(p) {
                found.remove(id);
            }
        }
    }
    let (missing, extra) = diff("state key", &want_states, &states, report);
    report.changelog_keys_missing = missing;
    report.changelog_keys_extra = extra;
    let (missing, extra) = diff("dedupe entry", &want_dedupe, &dedupe, report);
    report.dedupe_entries_missing = missing;
    report.dedupe_entries_extra = extra;
    Ok(held.len() as u64)
}

/// (missing, extra) counts between the wanted and the found ids of every partition.
fn diff(
    what: &str,
    want: &HashMap<i32, BTreeSet<Vec<u8>>>,
    found: &HashMap<i32, BTreeSet<Vec<u8>>>,
    report: &mut OracleReport,
) -> (u64, u64) {
    let empty = BTreeSet::new();
    let partitions: BTreeSet<i32> = want.keys().chain(found.keys()).copied().collect();
    let (mut missing, mut extra) = (0, 0);
    for p in partitions {
        let w = want.get(&p).unwrap_or(&empty);
        let f = found.get(&p).unwrap_or(&empty);
        for id in w.difference(f) {
            missing += 1;
            report.note(format!(
                "changelog partition {p}: {what} `{}` missing",
                String::from_utf8_lossy(id)
            ));
        }
        for id in f.difference(w) {
            extra += 1;
            report.note(format!(
                "changelog partition {p}: {what} `{}` not expected",
                String::from_utf8_lossy(id)
            ));
        }
    }
    (missing, extra)
}
