//! The control reader: repairs a replay sends through the flow's control topic, read only for the
//! partitions this instance owns and whose task is active, and positioned at the group's offsets.

use std::collections::HashSet;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::TaskManager;
use crate::config::Config;
use crate::engine::task::ControlRecord;
use crate::kafka::clients::{self, Quiet};
use crate::signing;

const TIMEOUT: Duration = Duration::from_secs(10);
/// Repairs read per poll-loop turn, so a burst cannot starve input processing.
const MAX_PER_TURN: usize = 500;

/// A consumer of control partitions, assigned by hand next to the group's input partitions.
pub struct Control {
    consumer: BaseConsumer<Quiet>,
    assigned: HashSet<(String, i32)>,
}

impl Control {
    /// A reader in the application's group (for its committed offsets), never subscribed.
    pub fn new(cfg: &Config) -> Result<Self, KafkaError> {
        Ok(Self {
            consumer: clients::quiet_reader(
                &cfg.bootstrap_servers,
                &cfg.kafka,
                &cfg.application_id,
            )?,
            assigned: HashSet::new(),
        })
    }

    /// Starts reading `topic`/`p` at the group's committed offset; returns that offset.
    pub fn take(&mut self, topic: &str, p: i32) -> Result<i64, KafkaError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, p);
        let committed = self.consumer.committed_offsets(tpl, TIMEOUT)?;
        let at = committed
            .find_partition(topic, p)
            .and_then(|e| e.offset().to_raw())
            .filter(|o| *o >= 0)
            .unwrap_or(0);
        self.release(topic, p);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Offset(at))?;
        self.consumer.incremental_assign(&tpl)?;
        self.assigned.insert((topic.to_string(), p));
        Ok(at)
    }

    /// Stops reading `topic`/`p` (revoked, or restoring again).
    pub fn release(&mut self, topic: &str, p: i32) {
        if self.assigned.remove(&(topic.to_string(), p)) {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(topic, p);
            if let Err(e) = self.consumer.incremental_unassign(&tpl) {
                tracing::warn!(error = %e, topic, partition = p, "cannot release a control partition");
            }
        }
    }
}

impl TaskManager {
    /// Hands waiting repairs to their tasks.
    pub(in crate::engine) fn poll_control(&mut self) {
        if self.control.assigned.is_empty() {
            return;
        }
        for _ in 0..MAX_PER_TURN {
            let msg = match self.control.consumer.poll(Duration::ZERO) {
                Some(Ok(m)) => m,
                Some(Err(KafkaError::PartitionEOF(_))) => continue,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "control topic read failed");
                    return;
                }
                None => return,
            };
            let Some(flow) = self.flows.iter().position(|f| f.control == msg.topic()) else {
                continue;
            };
            let header = |name: &str| {
                msg.headers()
                    .and_then(|h| h.iter().find(|x| x.key == name))
                    .and_then(|x| x.value)
            };
            let (authority, signature) = signing::read_headers(header);
            let record = signing::Record {
                topic: msg.topic(),
                partition: msg.partition(),
                key: msg.key(),
                value: msg.payload(),
            };
            let verified = signing::verify(
                &self.cfg.control,
                &record,
                authority.as_ref(),
                signature.as_deref(),
                crate::clock::now_ms(),
            );
            if let Some(t) = self.tasks.get_mut(&(flow, msg.partition())) {
                t.repair(ControlRecord {
                    key: msg.key().unwrap_or_default(),
                    value: msg.payload(),
                    offset: msg.offset(),
                    authority,
                    verified,
                });
            }
        }
    }
}
