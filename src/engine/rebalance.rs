//! Rebalance callbacks: commit in-flight work before a partition is given up, drop it when the
//! assignment was lost, and start restores for new partitions while the rest keep running.

use std::sync::{Arc, Mutex};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, TopicPartitionList};

use super::watch::Readings;
use super::{lock, Engine};
use crate::health::Health;

/// The consumer's context: reaches the engine from inside `poll`.
pub struct EngineContext {
    engine: Arc<Mutex<Engine>>,
    health: Arc<Health>,
    readings: Arc<Readings>,
}

impl EngineContext {
    /// Binds the callbacks to an engine.
    pub fn new(engine: Arc<Mutex<Engine>>, health: Arc<Health>, readings: Arc<Readings>) -> Self {
        Self {
            engine,
            health,
            readings,
        }
    }
}

impl ClientContext for EngineContext {
    fn stats(&self, stats: Statistics) {
        // An idle consumer polls no message that would say so: a broker UP again is the sign.
        if stats
            .brokers
            .values()
            .any(|b| b.nodeid >= 0 && b.state == "UP")
        {
            self.health.broker_reachable(true);
        }
        for (topic, t) in &stats.topics {
            for (p, part) in &t.partitions {
                if *p >= 0 {
                    self.readings
                        .fetched(topic, *p, part.next_offset, part.ls_offset);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error, KafkaError::Global(RDKafkaErrorCode::AllBrokersDown)) {
            self.health.broker_reachable(false);
        }
        tracing::warn!(%error, reason, "kafka client error");
    }
}

impl ConsumerContext for EngineContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let mut engine = lock(&self.engine);
        let revoked = engine.tasks.ids(tpl);
        ::metrics::counter!("tally_partitions_revoked_total").increment(revoked.len() as u64);
        if consumer.assignment_lost() {
            tracing::warn!(
                partitions = revoked.len(),
                "assignment lost; dropping staged work"
            );
            // A running commit ends first (its outcome is Kafka's, whatever this instance does).
            // Staged work spans every partition: drop it all (with the records already shipped
            // into the open transaction) and restore the survivors.
            if let Err(e) = engine.finish_commit(consumer, true) {
                tracing::error!(error = %e, "the running commit failed");
            }
            let health = Arc::clone(&engine.health);
            engine.commits.abort_open(&health);
            for &id in &revoked {
                engine.tasks.remove(id);
            }
            engine.tasks.restart_all(consumer);
            return;
        }
        match engine.commit(consumer) {
            Ok(outcome) => tracing::info!(
                partitions = revoked.len(),
                ?outcome,
                "committed before revoke"
            ),
            Err(e) => tracing::error!(error = %e, "commit before revoke failed"),
        }
        for id in revoked {
            engine.tasks.remove(id);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(tpl) = rebalance else {
            return;
        };
        let mut engine = lock(&self.engine);
        // Only partitions without a task pause for a restore: one already owned keeps running
        // (pausing it would stop it for good, as nothing restores it to resume it).
        let mut fresh = TopicPartitionList::new();
        let mut added = Vec::new();
        for (f, p) in engine.tasks.ids(tpl) {
            if engine.tasks.has((f, p)) {
                tracing::warn!(
                    partition = p,
                    "assigned a partition this instance owns already"
                );
            } else {
                fresh.add_partition(engine.tasks.input(f), p);
                added.push((f, p));
            }
        }
        if let Err(e) = consumer.pause(&fresh) {
            tracing::warn!(error = %e, "cannot pause new partitions");
        }
        ::metrics::counter!("tally_partitions_added_total").increment(added.len() as u64);
        for &id in &added {
            engine.tasks.add(id);
        }
        engine.tasks.fence_departed(&added);
        tracing::info!(partitions = tpl.count(), "partitions assigned; restoring");
    }
}
