//! Bounded reads of committed records for the recovery tools: offset ranges of chosen partitions,
//! read in offset order under read_committed, and a group's committed offsets as the bound.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::clients::Quiet;

const TIMEOUT: Duration = Duration::from_secs(10);
/// A read that gets neither records nor end-of-partition for this long has stalled.
const STALL: Duration = Duration::from_secs(60);

/// Why a bounded read failed.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("reading `{topic}` stalled; partitions {partitions:?} not at their end")]
    Stalled { topic: String, partitions: Vec<i32> },
}

/// The high watermark of each listed partition.
pub fn high_watermarks(
    consumer: &BaseConsumer<Quiet>,
    topic: &str,
    partitions: &[i32],
) -> Result<BTreeMap<i32, i64>, ScanError> {
    let mut out = BTreeMap::new();
    for &p in partitions {
        out.insert(p, consumer.fetch_watermarks(topic, p, TIMEOUT)?.1);
    }
    Ok(out)
}

/// The consumer group's committed offsets (0 where none), read stably: pending transactional
/// offset commits are waited for, so the bound matches what the live state has applied.
pub fn committed(
    consumer: &BaseConsumer<Quiet>,
    topic: &str,
    partitions: &[i32],
) -> Result<BTreeMap<i32, i64>, ScanError> {
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition(topic, p);
    }
    let got = consumer.committed_offsets(tpl, TIMEOUT)?;
    Ok(got
        .elements()
        .iter()
        .map(|e| {
            (
                e.partition(),
                e.offset().to_raw().filter(|o| *o >= 0).unwrap_or(0),
            )
        })
        .collect())
}

/// Reads `[from, to)` of every partition in `ranges`, in offset order per partition; a partition
/// also ends at its end of partition (the last stable offset under read_committed). Returns the
/// partitions that ended there below `to`: an open transaction holds them.
pub fn read(
    consumer: &BaseConsumer<Quiet>,
    topic: &str,
    ranges: &BTreeMap<i32, (i64, i64)>,
    mut f: impl FnMut(&BorrowedMessage<'_>),
) -> Result<Vec<i32>, ScanError> {
    let mut held = Vec::new();
    let mut tpl = TopicPartitionList::new();
    let mut open = BTreeSet::new();
    for (&p, &(from, to)) in ranges {
        if to > from {
            tpl.add_partition_offset(topic, p, Offset::Offset(from))?;
            open.insert(p);
        }
    }
    if open.is_empty() {
        return Ok(held);
    }
    consumer.assign(&tpl)?;
    // A partition paused at its end by an earlier read of this consumer stays paused across
    // unassign and assign in librdkafka; a re-read (repair confirmation) would stall on it.
    consumer.resume(&tpl)?;
    let started = Instant::now();
    let mut records = 0u64;
    let mut progress = Instant::now();
    let done = |p: i32, open: &mut BTreeSet<i32>| -> Result<(), KafkaError> {
        if open.remove(&p) {
            let mut one = TopicPartitionList::new();
            one.add_partition(topic, p);
            consumer.pause(&one)?;
        }
        Ok(())
    };
    while !open.is_empty() {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                progress = Instant::now();
                let p = m.partition();
                let Some(&(_, to)) = ranges.get(&p) else {
                    continue;
                };
                if open.contains(&p) && m.offset() < to {
                    records += 1;
                    f(&m);
                }
                if m.offset() + 1 >= to {
                    done(p, &mut open)?;
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                progress = Instant::now();
                let to = ranges.get(&p).map_or(0, |r| r.1);
                if open.contains(&p) && position(consumer, topic, p)? < to {
                    held.push(p);
                }
                done(p, &mut open)?;
            }
            // The client reconnects by itself; a read that stays cut off ends as stalled.
            Some(Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure,
            ))) if progress.elapsed() <= STALL => {}
            Some(Err(e)) => return Err(e.into()),
            None if progress.elapsed() > STALL => {
                return Err(ScanError::Stalled {
                    topic: topic.to_string(),
                    partitions: open.into_iter().collect(),
                })
            }
            None => {}
        }
    }
    consumer.unassign()?;
    tracing::debug!(
        topic,
        partitions = ranges.len(),
        records,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "bounded read done"
    );
    Ok(held)
}

/// The consumer's next offset in one assigned partition.
fn position(consumer: &BaseConsumer<Quiet>, topic: &str, p: i32) -> Result<i64, KafkaError> {
    let at = consumer.position()?;
    Ok(at
        .find_partition(topic, p)
        .and_then(|e| e.offset().to_raw())
        .unwrap_or(-1))
}
