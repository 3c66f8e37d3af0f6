//! The processor's producer: transactional or idempotent, with delivery tracking.
//! It learns the changelog offsets it wrote, and which generation of records is fully acknowledged.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext};

/// Highest delivered offset per changelog partition, shared by every producer incarnation.
#[derive(Default)]
pub struct ChangelogOffsets {
    topics: HashMap<String, Vec<AtomicI64>>,
}

impl ChangelogOffsets {
    /// Tracks the given changelog topics and their partition counts.
    pub fn new(topics: impl IntoIterator<Item = (String, i32)>) -> Self {
        Self {
            topics: topics
                .into_iter()
                .map(|(t, n)| (t, (0..n).map(|_| AtomicI64::new(-1)).collect()))
                .collect(),
        }
    }

    /// Next changelog offset after everything delivered to that partition (0 when nothing was).
    pub fn next_offset(&self, topic: &str, partition: i32) -> i64 {
        self.slot(topic, partition)
            .map(|a| a.load(Ordering::Acquire) + 1)
            .unwrap_or(0)
    }

    fn slot(&self, topic: &str, partition: i32) -> Option<&AtomicI64> {
        self.topics
            .get(topic)?
            .get(usize::try_from(partition).ok()?)
    }
}

/// Most producer events served by one [`Sink::poll`], so a flood of reports cannot hold the
/// loop.
const MAX_POLLS: usize = 256;

/// Generations of records whose acknowledgements can be awaited at once (see [`Sink::seal`]).
pub const GENERATIONS: usize = 64;

/// librdkafka context of the producer: records delivery offsets, failures, and how many records
/// of each generation still wait for their acknowledgement.
pub struct DeliveryTracker {
    offsets: Arc<ChangelogOffsets>,
    failures: AtomicU64,
    unacked: [AtomicU64; GENERATIONS],
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, generation: usize) {
        self.unacked[generation % GENERATIONS].fetch_sub(1, Ordering::AcqRel);
        match result {
            Ok(m) => {
                if let Some(slot) = self.offsets.slot(m.topic(), m.partition()) {
                    slot.fetch_max(m.offset(), Ordering::AcqRel);
                }
            }
            Err((e, m)) => {
                self.failures.fetch_add(1, Ordering::AcqRel);
                tracing::warn!(topic = m.topic(), partition = m.partition(), error = %e, "delivery failed");
            }
        }
    }
}

/// The producer with tally's send discipline (explicit partitions, retry on a full queue).
pub struct Sink {
    producer: BaseProducer<DeliveryTracker>,
    transactional: bool,
    pub(crate) timeout: Duration,
    /// Generation of the records sent now.
    generation: Cell<u64>,
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
                failures: AtomicU64::new(0),
                unacked: std::array::from_fn(|_| AtomicU64::new(0)),
            })?;
        if transactional {
            producer.init_transactions(timeout)?;
        }
        Ok(Self {
            producer,
            transactional,
            timeout,
            generation: Cell::new(0),
        })
    }

    /// Closes the current generation of records and returns it: [`Sink::acked`] then tells
    /// when all of them are acknowledged, while later records go on being sent. The caller
    /// keeps fewer than [`GENERATIONS`] generations unacknowledged.
    pub fn seal(&self) -> u64 {
        let sealed = self.generation.get();
        self.generation.set(sealed + 1);
        sealed
    }

    /// Whether every record of `generation` was acknowledged (or failed: see [`Sink::failures`]).
    pub fn acked(&self, generation: u64) -> bool {
        self.producer.context().unacked[generation as usize % GENERATIONS].load(Ordering::Acquire)
            == 0
    }

    /// Whether commits go through Kafka transactions.
    pub fn is_transactional(&self) -> bool {
        self.transactional
    }

    /// The underlying producer, for transaction calls.
    pub fn producer(&self) -> &BaseProducer<DeliveryTracker> {
        &self.producer
    }

    /// Deliveries that failed since the producer was created.
    pub fn failures(&self) -> u64 {
        self.producer.context().failures.load(Ordering::Acquire)
    }

    /// Serves every delivery report that is ready, without blocking. One `poll` serves one
    /// event (the reports of one produce request), so it polls until one serves nothing.
    pub fn poll(&self) {
        let mut left = self.producer.in_flight_count();
        for _ in 0..MAX_POLLS {
            if left == 0 {
                return;
            }
            self.producer.poll(Duration::ZERO);
            let now = self.producer.in_flight_count();
            if now == left {
                return;
            }
            left = now;
        }
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
        let generation = self.generation.get() as usize;
        let mut record: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(topic, generation)
                .partition(partition)
                .key(key);
        if let Some(v) = value {
            record = record.payload(v);
        }
        if let Some(h) = headers {
            record = record.headers(h);
        }
        let unacked = &self.producer.context().unacked[generation % GENERATIONS];
        unacked.fetch_add(1, Ordering::AcqRel);
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    // `poll(t)` would spin until `t` is over (see `clients::flush`).
                    self.producer.poll(Duration::ZERO);
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
        crate::kafka::clients::flush(&self.producer, self.timeout)
    }
}
