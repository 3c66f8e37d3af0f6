//! Applying a replay: corrected rows go to the owning task through the flow's control topic (the
//! owner writes store, changelog and output in its own transaction), then the changelog confirms.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord};
use tally_state::{ChangelogKey, RecordKind};
use tally_topology::Projection;

use super::replay::{until, Plan, Repair};
use super::RecoveryError;
use crate::kafka::clients;
use crate::kafka::scan;

/// Header naming the recovery a control record belongs to.
pub const RECOVERY_ID_HEADER: &str = "tally.recovery_id";
/// Header with the input offset the replay rebuilt up to (decimal); the owner refuses a repair of
/// a key that applied events at or past it.
pub const BOUND_HEADER: &str = "tally.repair.bound";

/// Sends every repair to the control topic, keyed and partitioned like its input.
pub fn send(
    plan: &Plan,
    repairs: &[Repair],
    bounds: &BTreeMap<i32, i64>,
    recovery_id: &str,
) -> Result<(), RecoveryError> {
    let topics = crate::kafka::topics::Topics::connect(&plan.bootstrap, &plan.kafka)?;
    if topics.partitions(&plan.control)?.is_none() {
        return Err(RecoveryError::NoOwner(format!(
            "control topic `{}` does not exist: no processor of this flow has started",
            plan.control
        )));
    }
    let producer: BaseProducer = clients::producer(&plan.bootstrap, &plan.kafka, None, 60_000)
        .create()
        .map_err(RecoveryError::Kafka)?;
    for r in repairs {
        let bound = bounds.get(&r.partition).copied().unwrap_or(0).to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: RECOVERY_ID_HEADER,
                value: Some(recovery_id),
            })
            .insert(Header {
                key: BOUND_HEADER,
                value: Some(&bound),
            });
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&plan.control)
            .partition(r.partition)
            .key(r.key.as_bytes())
            .headers(headers);
        if let Some(s) = &r.state {
            rec = rec.payload(s.as_slice());
        }
        producer
            .send(rec)
            .map_err(|(e, _)| RecoveryError::Kafka(e))?;
    }
    clients::flush(&producer, Duration::from_secs(30)).map_err(RecoveryError::Kafka)?;
    Ok(())
}

/// Waits until the changelog holds every repaired row and the output topic its rendering;
/// returns how many rows are confirmed.
pub fn confirm<P: Projection>(
    plan: &Plan,
    repairs: &[Repair],
    group: &str,
) -> Result<u64, RecoveryError> {
    let consumer = clients::scan_reader(&plan.bootstrap, &plan.kafka, group)?;
    let mut parts: Vec<i32> = repairs.iter().map(|r| r.partition).collect();
    parts.sort_unstable();
    parts.dedup();
    // key -> (changelog bytes, output bytes) the owner must have written.
    let mut want: BTreeMap<&str, (&[u8], Vec<u8>)> = BTreeMap::new();
    for r in repairs {
        let Some(state) = r.state.as_deref() else {
            continue;
        };
        let mut out = Vec::new();
        if let Ok(s) = P::decode_state(state) {
            // A rebuilt state always renders; a failure leaves the output unconfirmable.
            let _ = P::render(&s, &mut out);
        }
        want.insert(r.key.as_str(), (state, out));
    }
    let last = |topic: &str, changelog: bool| -> Result<BTreeMap<String, Vec<u8>>, RecoveryError> {
        let ends = scan::high_watermarks(&consumer, topic, &parts)?;
        let ranges = ends.iter().map(|(p, e)| (*p, (0, *e))).collect();
        let mut found = BTreeMap::new();
        scan::read(&consumer, topic, &ranges, |m| {
            let Some(raw) = m.key() else { return };
            let id = if changelog {
                match ChangelogKey::parse(raw) {
                    Ok(k) if k.kind == RecordKind::State => k.id,
                    _ => return,
                }
            } else {
                raw
            };
            let key = String::from_utf8_lossy(id);
            if want.contains_key(key.as_ref()) {
                match m.payload() {
                    Some(v) => found.insert(key.into_owned(), v.to_vec()),
                    None => found.remove(key.as_ref()),
                };
            }
        })?;
        Ok(found)
    };
    let mut confirmed = 0u64;
    until(plan.confirm_timeout, || {
        let states = last(&plan.changelog, true)?;
        let outputs = last(&plan.output, false)?;
        confirmed = want
            .iter()
            .filter(|(k, (state, out))| {
                states.get(**k).map(Vec::as_slice) == Some(*state) && outputs.get(**k) == Some(out)
            })
            .count() as u64;
        Ok(confirmed == want.len() as u64)
    })?;
    Ok(confirmed)
}
