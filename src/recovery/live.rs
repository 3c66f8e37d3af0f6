//! The live side of a flow as the recovery tools read it: the last value of each key in its
//! changelog or output topic, and a bounded wait for it to change.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::BaseConsumer;
use rdkafka::message::Message;
use tally_state::{ChangelogKey, RecordKind};

use super::plan::Plan;
use super::RecoveryError;
use crate::kafka::clients::Quiet;
use crate::kafka::scan;

/// The last value of every scoped key in whole partitions of `topic`; `key_of` picks the
/// aggregate key out of a record key, or skips the record.
pub(super) fn last_values(
    consumer: &BaseConsumer<Quiet>,
    plan: &Plan,
    parts: &[i32],
    topic: &str,
    key_of: impl Fn(&[u8]) -> Option<&[u8]>,
) -> Result<BTreeMap<String, Vec<u8>>, RecoveryError> {
    let ends = scan::high_watermarks(consumer, topic, parts)?;
    let ranges = ends.iter().map(|(p, e)| (*p, (0, *e))).collect();
    let mut values = BTreeMap::new();
    scan::read(consumer, topic, &ranges, |m| {
        let Some(k) = m.key().and_then(&key_of) else {
            return;
        };
        if !plan.scope.wants_key(k) {
            return;
        }
        let key = String::from_utf8_lossy(k).into_owned();
        match m.payload() {
            Some(v) => values.insert(key, v.to_vec()),
            None => values.remove(&key),
        };
    })?;
    Ok(values)
}

/// The aggregate key of a changelog state record (dedupe records and unreadable keys: none).
pub(super) fn state_key(changelog_key: &[u8]) -> Option<&[u8]> {
    ChangelogKey::parse(changelog_key)
        .ok()
        .filter(|k| k.kind == RecordKind::State)
        .map(|k| k.id)
}

/// Waits with a bound; used by the repair confirmation.
pub(super) fn until(
    limit: Duration,
    mut f: impl FnMut() -> Result<bool, RecoveryError>,
) -> Result<bool, RecoveryError> {
    let started = Instant::now();
    loop {
        if f()? {
            return Ok(true);
        }
        if started.elapsed() > limit {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
