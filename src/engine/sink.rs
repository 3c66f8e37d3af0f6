//! The processor's producer: transactional or idempotent, with delivery tracking.
//! It learns the changelog offsets it wrote so a checkpoint can say where restore resumes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext};

/// Highest delivered offset per changelog partition and commit slot, shared by every producer
/// incarnation.
#[derive(Default)]
pub struct ChangelogOffsets {
    topics: HashMap<String, Vec<[AtomicI64; SLOTS]>, super::FastHash>,
}

/// Records are sent under one of two slots, which alternate at each commit, so a commit waits
/// for its own records only, whatever else is on its way (nothing ships during a commit today:
/// see `Engine::ship`).
const SLOTS: usize = 2;

impl ChangelogOffsets {
    /// Tracks the given changelog topics and their partition counts.
    pub fn new(topics: impl IntoIterator<Item = (String, i32)>) -> Self {
        Self {
            topics: topics
                .into_iter()
                .map(|(t, n)| {
                    let slots = (0..n).map(|_| [AtomicI64::new(-1), AtomicI64::new(-1)]);
                    (t, slots.collect())
                })
                .collect(),
        }
    }

    /// Next changelog offset after everything delivered to that partition under `slot` (0 when
    /// nothing was): the records of one commit, as nothing is sent under its slot meanwhile.
    pub fn next_offset(&self, topic: &str, partition: i32, slot: usize) -> i64 {
        self.slot(topic, partition, slot)
            .map(|a| a.load(Ordering::Acquire) + 1)
            .unwrap_or(0)
    }

    fn slot(&self, topic: &str, partition: i32, slot: usize) -> Option<&AtomicI64> {
        self.topics
            .get(topic)?
            .get(usize::try_from(partition).ok()?)?
            .get(slot)
    }
}

/// librdkafka context of the producer: records delivery offsets and failures per slot.
pub struct DeliveryTracker {
    offsets: Arc<ChangelogOffsets>,
    /// Records sent and not yet acknowledged (or failed).
    unacked: [AtomicI64; SLOTS],
    failures: [AtomicU64; SLOTS],
}

impl DeliveryTracker {
    /// Whether every record sent under `slot` is acknowledged or failed.
    pub fn settled(&self, slot: usize) -> bool {
        self.unacked[slot].load(Ordering::Acquire) <= 0
    }

    /// Deliveries under `slot` that failed since it was last opened.
    pub fn failures(&self, slot: usize) -> u64 {
        self.failures[slot].load(Ordering::Acquire)
    }
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, slot: usize) {
        let slot = slot % SLOTS;
        match result {
            Ok(m) => {
                if let Some(at) = self.offsets.slot(m.topic(), m.partition(), slot) {
                    at.fetch_max(m.offset(), Ordering::AcqRel);
                }
            }
            Err((e, m)) => {
                self.failures[slot].fetch_add(1, Ordering::AcqRel);
                tracing::warn!(topic = m.topic(), partition = m.partition(), error = %e, "delivery failed");
            }
        }
        self.unacked[slot].fetch_sub(1, Ordering::AcqRel);
    }
}

/// The producer with tally's send discipline (explicit partitions, retry on a full queue).
pub struct Sink {
    producer: Arc<BaseProducer<DeliveryTracker>>,
    transactional: bool,
    /// The slot records are sent under now.
    slot: AtomicUsize,
    pub(crate) timeout: Duration,
}

impl Sink {
    /// Creates the producer; a transactional one is initialised (fencing older incarnations).
    pub fn create(
        config: &ClientConfig,
        offsets: Arc<ChangelogOffsets>,
        timeout: Duration,
    ) -> KafkaResult<Self> {
        let transactional = config.get("transactional.id").is_some();
        let producer: BaseProducer<DeliveryTracker> =
            config.create_with_context(DeliveryTracker {
                offsets,
                unacked: [AtomicI64::new(0), AtomicI64::new(0)],
                failures: [AtomicU64::new(0), AtomicU64::new(0)],
            })?;
        if transactional {
            producer.init_transactions(timeout)?;
        }
        Ok(Self {
            producer: Arc::new(producer),
            transactional,
            slot: AtomicUsize::new(0),
            timeout,
        })
    }

    /// Whether commits go through Kafka transactions.
    pub fn is_transactional(&self) -> bool {
        self.transactional
    }

    /// The underlying producer, for transaction calls.
    pub fn producer(&self) -> &BaseProducer<DeliveryTracker> {
        &self.producer
    }

    /// The producer, for the committer thread that waits on its round trips.
    pub fn shared(&self) -> Arc<BaseProducer<DeliveryTracker>> {
        Arc::clone(&self.producer)
    }

    /// Ends the current slot: records sent from now on go under the other one, whose failures
    /// start from zero (the commit that used it is over). Returns the slot ended.
    pub fn switch_slot(&self) -> usize {
        let ended = self.slot.load(Ordering::Acquire);
        let next = (ended + 1) % SLOTS;
        self.producer.context().failures[next].store(0, Ordering::Release);
        self.slot.store(next, Ordering::Release);
        ended
    }

    /// Aborts the open transaction, then serves the reports of the records it purged, so none
    /// is counted against a later commit under the same slot.
    pub fn abort(&self) -> KafkaResult<()> {
        self.producer.abort_transaction(Duration::from_secs(30))?;
        self.flush()?;
        let tracker = self.producer.context();
        for slot in 0..SLOTS {
            tracker.unacked[slot].store(0, Ordering::Release);
            tracker.failures[slot].store(0, Ordering::Release);
        }
        Ok(())
    }

    /// Serves the delivery reports that are ready, without blocking.
    pub fn poll(&self) {
        crate::kafka::clients::serve_reports(&self.producer);
    }

    /// Produces one record to an explicit partition; waits while the local queue is full.
    pub fn send(
        &self,
        topic: &str,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
    ) -> KafkaResult<()> {
        let slot = self.slot.load(Ordering::Acquire);
        let mut record: BaseRecord<'_, [u8], [u8], usize> = BaseRecord::with_opaque_to(topic, slot)
            .partition(partition)
            .key(key);
        if let Some(v) = value {
            record = record.payload(v);
        }
        if let Some(h) = headers {
            record = record.headers(h);
        }
        let unacked = &self.producer.context().unacked[slot];
        unacked.fetch_add(1, Ordering::AcqRel);
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    // `poll(t)` would spin until `t` is over (see `clients::flush`).
                    self.poll();
                    std::thread::sleep(crate::kafka::clients::FLUSH_STEP);
                }
                Err((e, _)) => {
                    unacked.fetch_sub(1, Ordering::AcqRel);
                    return Err(e);
                }
            }
        }
    }

    /// Waits until every produced record is acknowledged (and its delivery report served).
    pub fn flush(&self) -> KafkaResult<()> {
        crate::kafka::clients::flush(self.producer.as_ref(), self.timeout)
    }
}
