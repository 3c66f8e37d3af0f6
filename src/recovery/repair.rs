//! Applying a replay: corrected rows go to the owning task through the flow's control topic (the
//! owner writes store, changelog and output in its own transaction), then the changelog confirms.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
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
    producer
        .flush(Duration::from_secs(30))
        .map_err(RecoveryError::Kafka)?;
    Ok(())
}

/// Waits until the changelog holds every repaired row; returns how many it holds.
pub fn confirm<P: Projection>(
    plan: &Plan,
    repairs: &[Repair],
    group: &str,
) -> Result<u64, RecoveryError> {
    let consumer = clients::quiet_reader(&plan.bootstrap, &plan.kafka, group)?;
    let mut parts: Vec<i32> = repairs.iter().map(|r| r.partition).collect();
    parts.sort_unstable();
    parts.dedup();
    let want: BTreeMap<&str, Option<&[u8]>> = repairs
        .iter()
        .map(|r| (r.key.as_str(), r.state.as_deref()))
        .collect();
    let mut confirmed = 0u64;
    until(plan.confirm_timeout, || {
        let ends = scan::high_watermarks(&consumer, &plan.changelog, &parts)?;
        let ranges = ends.iter().map(|(p, e)| (*p, (0, *e))).collect();
        let mut found: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
        scan::read(&consumer, &plan.changelog, &ranges, |m| {
            let Some(Ok(k)) = m.key().map(ChangelogKey::parse) else {
                return;
            };
            if k.kind != RecordKind::State {
                return;
            }
            let key = String::from_utf8_lossy(k.id);
            if want.contains_key(key.as_ref()) {
                found.insert(key.into_owned(), m.payload().map(<[u8]>::to_vec));
            }
        })?;
        confirmed = want
            .iter()
            .filter(|(k, v)| {
                found.get(**k).map(|f| f.as_deref()) == Some(**v)
                    || (v.is_none() && !found.contains_key(**k))
            })
            .count() as u64;
        Ok(confirmed == want.len() as u64)
    })?;
    Ok(confirmed)
}
