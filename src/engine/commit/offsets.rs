//! The input offsets a commit moves past, each with tally's metadata beside it: the watermark,
//! and the changelog and output ends a restore needs (see [`CommitMetadata`]).

use std::collections::HashMap;
use std::sync::Arc;

use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use tally_state::CommitMetadata;

use crate::engine::sink::DeliveredOffsets;
use crate::engine::task::TaskOps;
use crate::engine::FastHash;

/// The input (and control) offsets to commit for every task with progress, with their
/// metadata, and the events they move past; taken after the batch's last records were produced.
pub(super) fn positions<'a>(
    tasks: impl Iterator<Item = &'a dyn TaskOps>,
    at_least_once: bool,
) -> Result<(TopicPartitionList, usize), KafkaError> {
    let mut offsets = TopicPartitionList::new();
    let mut events = 0;
    for t in tasks.filter(|t| t.has_progress()) {
        events += t.staged();
        let point = t.commit_point();
        let mut at = offsets.add_partition(&t.flow().input, t.partition());
        at.set_offset(Offset::Offset(point.input))?;
        let metadata = CommitMetadata {
            watermark_ms: point.watermark_ms,
            changelog_end: point.changelog_end,
            output_end: at_least_once.then_some(point.output_end),
        };
        at.set_metadata(metadata.encode());
        if let Some(at) = point.control {
            offsets.add_partition_offset(&t.flow().control, t.partition(), Offset::Offset(at))?;
        }
    }
    Ok((offsets, events))
}

/// Writes the partition ends known only once the commit's records are acknowledged into each
/// input offset's metadata.
#[derive(Clone)]
pub(super) struct Ends {
    pub delivered: Arc<DeliveredOffsets>,
    /// Input topic -> its flow's changelog and output topics.
    pub topics: Arc<HashMap<String, (String, String), FastHash>>,
}

impl Ends {
    /// Fills in the changelog end of every partition whose batch wrote its changelog, and
    /// raises an `output_end` (at_least_once) to what was delivered to its output partition.
    pub fn stamp(&self, offsets: &TopicPartitionList) {
        for mut at in offsets.elements() {
            let Some((changelog, output)) = self.topics.get(at.topic()) else {
                continue;
            };
            let Ok(Some(mut m)) = CommitMetadata::decode(at.metadata()) else {
                continue;
            };
            let p = at.partition();
            if m.changelog_end.is_none() {
                m.changelog_end = Some(self.delivered.next_offset(changelog, p));
            }
            if let Some(end) = m.output_end {
                m.output_end = Some(end.max(self.delivered.next_offset(output, p)));
            }
            at.set_metadata(m.encode());
        }
    }
}
