//! How far a consumer group has come: committed offsets against the input's end offsets.
//! Used by the demo, the benchmarks and the tests to know when a processor has caught up.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};

/// Records of `topics` not yet committed by `group` (sum over partitions of end - committed).
pub fn group_lag(
    bootstrap: &str,
    passthrough: &BTreeMap<String, String>,
    group: &str,
    topics: &[&str],
) -> KafkaResult<i64> {
    let consumer = super::clients::quiet_reader(bootstrap, passthrough, group)?;
    let timeout = Duration::from_secs(30);
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    for topic in topics {
        let md = consumer.fetch_metadata(Some(topic), timeout)?;
        for t in md.topics() {
            for p in t.partitions() {
                let (_, high) = consumer.fetch_watermarks(topic, p.id(), timeout)?;
                tpl.add_partition(topic, p.id());
                ends.push((topic.to_string(), p.id(), high));
            }
        }
    }
    let committed = consumer.committed_offsets(tpl, timeout)?;
    let mut lag = 0;
    for (topic, p, high) in ends {
        let done = match committed.find_partition(&topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => 0,
        };
        lag += (high - done).max(0);
    }
    Ok(lag)
}
