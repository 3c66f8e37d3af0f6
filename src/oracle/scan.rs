//! How the oracle reads Kafka: assigned partitions (never a group member), read_committed, from the
//! beginning up to a bound fixed before reading, one record at a time so memory stays per key.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{BorrowedHeaders, Headers, Message};

const TIMEOUT: Duration = Duration::from_secs(30);

pub(super) use crate::kafka::clients::Quiet;

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
    let mut c = crate::kafka::clients::reader(bootstrap, kafka, group);
    // Larger partition fetches buy the oracle little speed and cost a lot of memory (measured).
    if !kafka.contains_key("max.partition.fetch.bytes") {
        c.set("max.partition.fetch.bytes", "1048576");
    }
    Ok(crate::kafka::clients::create(&c, Quiet)?)
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
        // A topic created moments ago can be in the metadata before its partitions' leaders
        // are in the client's cache ("unknown partition"); that passes within seconds.
        let mut tries = 0;
        let high = loop {
            match consumer.fetch_watermarks(topic, p, TIMEOUT) {
                Ok((_, high)) => break high,
                Err(e) if tries < 20 && is_transient(&e) => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(250));
                }
                Err(e) => return Err(e.into()),
            }
        };
        ends.insert(p, high);
    }
    Ok(ends)
}

fn is_transient(e: &rdkafka::error::KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::UnknownPartition
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::NotLeaderForPartition
        )
    )
}

/// The group's committed offset of every partition of `topic` (0 where it committed none).
pub(super) fn committed(
    bootstrap: &str,
    kafka: &BTreeMap<String, String>,
    topic: &str,
    group: &str,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let consumer = reader(bootstrap, kafka, group)?;
    let parts = partitions(&consumer, topic)?;
    Ok(crate::kafka::scan::committed(&consumer, topic, &parts)?)
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
    let ranges = ends.iter().map(|(&p, &end)| (p, (0, end))).collect();
    let held = crate::kafka::scan::read(consumer, topic, &ranges, |m| {
        f(Rec {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key(),
            value: m.payload(),
            headers: m.headers(),
        })
    })
    .map_err(|e| anyhow::anyhow!("reading `{topic}`: {e}"))?;
    Ok(held)
}
