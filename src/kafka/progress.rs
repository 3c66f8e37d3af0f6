//! How far a consumer group has come: committed offsets against the input's end offsets.
//! Used by the demo, the benchmarks and the tests to know when a processor has caught up.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};

use super::clients::Quiet;

/// Records of `topics` not yet committed by `group` (sum over partitions of end - committed).
pub fn group_lag(
    bootstrap: &str,
    passthrough: &BTreeMap<String, String>,
    group: &str,
    topics: &[&str],
) -> KafkaResult<i64> {
    LagProbe::new(bootstrap, passthrough, group, topics)?.lag()
}

/// [`group_lag`] asked again and again over one client: a client per question costs threads,
/// a connection and a metadata request each time, which a benchmark polling every 200 ms
/// charges to the processor it measures.
pub struct LagProbe {
    consumer: BaseConsumer<Quiet>,
    partitions: Vec<(String, i32)>,
    timeout: Duration,
}

impl LagProbe {
    /// Learns the partitions of `topics` once.
    pub fn new(
        bootstrap: &str,
        passthrough: &BTreeMap<String, String>,
        group: &str,
        topics: &[&str],
    ) -> KafkaResult<Self> {
        let consumer = super::clients::quiet_reader(bootstrap, passthrough, group)?;
        let timeout = Duration::from_secs(30);
        let mut partitions = Vec::new();
        for topic in topics {
            let md = consumer.fetch_metadata(Some(topic), timeout)?;
            for t in md.topics() {
                partitions.extend(t.partitions().iter().map(|p| (topic.to_string(), p.id())));
            }
        }
        Ok(Self {
            consumer,
            partitions,
            timeout,
        })
    }

    /// The group's lag now: end offsets and committed offsets are read afresh.
    pub fn lag(&self) -> KafkaResult<i64> {
        let mut tpl = TopicPartitionList::new();
        let mut ends = Vec::with_capacity(self.partitions.len());
        for (topic, p) in &self.partitions {
            let (_, high) = self.consumer.fetch_watermarks(topic, *p, self.timeout)?;
            tpl.add_partition(topic, *p);
            ends.push(high);
        }
        let committed = self.consumer.committed_offsets(tpl, self.timeout)?;
        let mut lag = 0;
        for ((topic, p), high) in self.partitions.iter().zip(ends) {
            let done = match committed.find_partition(topic, *p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => 0,
            };
            lag += (high - done).max(0);
        }
        Ok(lag)
    }
}
