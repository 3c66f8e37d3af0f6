//! Applying a replay: corrected rows go to the owning task through the flow's control topic (the
//! owner writes store, changelog and output in its own transaction), then the changelog confirms.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord};
use tally_topology::Projection;

use super::replay::{last_values, state_key, until, Plan, Repair};
use super::RecoveryError;
use crate::kafka::clients;

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
    // Only the repaired keys are kept.
    let wanted = |id: &[u8]| std::str::from_utf8(id).is_ok_and(|k| want.contains_key(k));
    let last = |topic: &str, key_of: fn(&[u8]) -> Option<&[u8]>| {
        last_values(&consumer, plan, &parts, topic, |k| {
            key_of(k).filter(|id| wanted(id))
        })
    };
    let mut confirmed = 0u64;
    until(plan.confirm_timeout, || {
        let states = last(&plan.changelog, state_key)?;
        let outputs = last(&plan.output, |k| Some(k))?;
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
