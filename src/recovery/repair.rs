//! Applying a replay: corrected rows go to the owning task through the flow's control topic (the
//! owner writes store, changelog and output in its own transaction), then the changelog confirms.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::producer::{BaseProducer, BaseRecord};
use tally_topology::Projection;

use super::live::{last_values, state_key, until};
use super::plan::{Plan, Repair, Signer};
use super::RecoveryError;
use crate::kafka::clients;
use crate::signing::{self, Authority};

/// Sends every repair to the control topic, keyed and partitioned like its input, each signed
/// for the operator with the signer's key.
pub fn send(
    plan: &Plan,
    signer: &Signer,
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
    let producer: BaseProducer = clients::create(
        &clients::producer(&plan.bootstrap, &plan.kafka, None, 60_000),
        rdkafka::producer::DefaultProducerContext,
    )?;
    let signed_at_ms = crate::clock::now_ms();
    for r in repairs {
        let authority = Authority {
            recovery_id: recovery_id.to_string(),
            actor: signer.operator.actor.clone(),
            key_id: signer.key.id.clone(),
            bound: bounds.get(&r.partition).copied().unwrap_or(0),
            signed_at_ms,
        };
        let record = signing::Record {
            topic: &plan.control,
            partition: r.partition,
            key: Some(r.key.as_bytes()),
            value: r.state.as_deref(),
        };
        let signature = signing::sign(&signer.key, &record, &authority);
        let headers = signing::headers(&authority, &signature);
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
/// returns the keys confirmed.
pub fn confirm<P: Projection>(
    plan: &Plan,
    repairs: &[Repair],
    group: &str,
) -> Result<Vec<String>, RecoveryError> {
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
    let mut confirmed = Vec::new();
    until(plan.confirm_timeout, || {
        let states = last(&plan.changelog, state_key)?;
        let outputs = last(&plan.output, |k| Some(k))?;
        confirmed = want
            .iter()
            .filter(|(k, (state, out))| {
                states.get(**k).map(Vec::as_slice) == Some(*state) && outputs.get(**k) == Some(out)
            })
            .map(|(k, _)| k.to_string())
            .collect();
        Ok(confirmed.len() == want.len())
    })?;
    Ok(confirmed)
}
