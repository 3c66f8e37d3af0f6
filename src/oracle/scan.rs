//! How the oracle reads Kafka: assigned partitions (never a group member), read_committed, from the
//! beginning up to a bound fixed before reading, one record at a time so memory stays per key.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedHeaders, Headers, Message};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(30);
/// How long reading may go without a record or an end of partition before it is called stalled.
const STALL: Duration = Duration::from_secs(60);

/// Client context of the oracle's readers: end of partition is expected, not worth a warning.
pub(super) struct Quiet;

impl ClientContext for Quiet {
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::trace!(reason, "end of partition");
        } else {
            tracing::warn!(%error, reason, "kafka client error");
        }
    }
}

impl ConsumerContext for Quiet {}

/// A group id nobody else uses: the oracle never joins or commits, but librdkafka wants one.
pub(super) fn throwaway_group() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("tally-oracle-{}-{nanos}-{n}", std::process::id())
}

/// The oracle's consumer type.
pub(super) type Reader = BaseConsumer<Quiet>;

/// A consumer for assigned partitions: read_committed, no auto commit, end of partition reported.
pub(super) fn reader(
    bootstrap: &str,
    kafka: &BTreeMap<String, String>,
    group: &str,
) -> anyhow::Result<BaseConsumer<Quiet>> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    for (k, v) in kafka {
        c.set(k, v);
    }
    c.set("group.id", group)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    for (k, v) in [
        ("fetch.wait.max.ms", "10"),
        // Larger partition fetches buy little speed and cost a lot of memory (measured).
        ("max.partition.fetch.bytes", "1048576"),
    ] {
        if !kafka.contains_key(k) {
            c.set(k, v);
        }
    }
    Ok(c.create_with_context(Quiet)?)
}

/// The partitions of `topic`; an error when the topic does not exist.
pub(super) fn partitions(consumer: &BaseConsumer<Quiet>, topic: &str) -> anyhow::Result<Vec<i32>> {
    let md = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| anyhow::anyhow!("no metadata for topic `{topic}`"))?;
    if let Some(e) = t.error() {
        anyhow::bail!("topic `{topic}`: {:?}", RDKafkaErrorCode::from(e));
    }
    anyhow::ensure!(
        !t.partitions().is_empty(),
        "topic `{topic}` has no partitions"
    );
    let mut parts: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    parts.sort_unstable();
    Ok(parts)
}

/// The high watermark of every partition of `topic`, now: the bound of a read "to the end".
pub(super) fn high_watermarks(
    consumer: &BaseConsumer<Quiet>,
    topic: &str,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let mut ends = BTreeMap::new();
    for p in partitions(consumer, topic)? {
        let (_, high) = consumer.fetch_watermarks(topic, p, TIMEOUT)?;
        ends.insert(p, high);
    }
    Ok(ends)
}

/// The group's committed offset of every partition of `topic` (0 where it committed none).
pub(super) fn committed(
    bootstrap: &str,
    kafka: &BTreeMap<String, String>,
    topic: &str,
    group: &str,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let consumer = reader(bootstrap, kafka, group)?;
    let mut tpl = TopicPartitionList::new();
    for p in partitions(&consumer, topic)? {
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

/// One record as the scan hands it over.
pub(super) struct Rec<'a> {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Option<&'a BorrowedHeaders>,
}

impl Rec<'_> {
    /// The value of the last header called `name`, as text.
    pub fn header(&self, name: &str) -> Option<String> {
        let h = self.headers?;
        h.iter()
            .filter(|x| x.key == name)
            .last()
            .and_then(|x| x.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// Reads every partition of `topic` in `ends` from its beginning to before its end offset, in
/// offset order per partition. A partition is also done at its end of partition: under
/// read_committed that is the last stable offset, past which nothing is committed yet.
/// Returns the partitions whose read stopped there, below `ends`: an open transaction holds them.
pub(super) fn scan(
    consumer: &BaseConsumer<Quiet>,
    topic: &str,
    ends: &BTreeMap<i32, i64>,
    mut f: impl FnMut(Rec<'_>),
) -> anyhow::Result<Vec<i32>> {
    let mut held = Vec::new();
    let mut tpl = TopicPartitionList::new();
    let mut open = BTreeSet::new();
    for (p, end) in ends {
        if *end > 0 {
            tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
            open.insert(*p);
        }
    }
    if open.is_empty() {
        return Ok(held);
    }
    consumer.assign(&tpl)?;
    let mut progress = Instant::now();
    let finish = |p: i32, open: &mut BTreeSet<i32>| -> anyhow::Result<()> {
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
                let (p, o) = (m.partition(), m.offset());
                let end = ends.get(&p).copied().unwrap_or(0);
                if open.contains(&p) && o < end {
                    f(Rec {
                        partition: p,
                        offset: o,
                        key: m.key(),
                        value: m.payload(),
                        headers: m.headers(),
                    });
                }
                if o + 1 >= end {
                    finish(p, &mut open)?;
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                progress = Instant::now();
                if open.contains(&p) && position(consumer, topic, p)? < ends[&p] {
                    held.push(p);
                }
                finish(p, &mut open)?;
            }
            Some(Err(e)) => return Err(anyhow::anyhow!("reading `{topic}`: {e}")),
            None => anyhow::ensure!(
                progress.elapsed() < STALL,
                "reading `{topic}` stalled; partitions {open:?} not at their end"
            ),
        }
    }
    consumer.unassign()?;
    Ok(held)
}

/// The consumer's next offset in one assigned partition.
fn position(consumer: &BaseConsumer<Quiet>, topic: &str, p: i32) -> anyhow::Result<i64> {
    let at = consumer.position()?;
    Ok(at
        .find_partition(topic, p)
        .and_then(|e| e.offset().to_raw())
        .unwrap_or(-1))
}
