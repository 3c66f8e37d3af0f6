//! The processor's producer: transactional or idempotent, with delivery tracking.
//! It learns the changelog offsets it wrote so a checkpoint can say where restore resumes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext};

use super::task::{Outbox, Outgoing, ProduceError, SendError};

/// Highest delivered offset per changelog and output partition, shared by every producer
/// incarnation.
#[derive(Default)]
pub struct DeliveredOffsets {
    /// Set once the topics are known: the producer starts before them (its start-up overlaps
    /// the topics' preparation), and nothing is produced until then.
    topics: OnceLock<HashMap<String, Vec<AtomicI64>, super::FastHash>>,
}

impl DeliveredOffsets {
    /// Starts tracking the given topics and their partition counts; only the first call counts.
    pub fn track(&self, topics: impl IntoIterator<Item = (String, i32)>) {
        let _ = self.topics.set(
            topics
                .into_iter()
                .map(|(t, n)| (t, (0..n).map(|_| AtomicI64::new(-1)).collect()))
                .collect(),
        );
    }

    /// Next offset after everything delivered to that partition (0 when nothing was).
    pub fn next_offset(&self, topic: &str, partition: i32) -> i64 {
        self.slot(topic, partition)
            .map(|a| a.load(Ordering::Acquire) + 1)
            .unwrap_or(0)
    }

    fn slot(&self, topic: &str, partition: i32) -> Option<&AtomicI64> {
        self.topics
            .get()?
            .get(topic)?
            .get(usize::try_from(partition).ok()?)
    }
}

/// librdkafka context of the producer: records delivery offsets and failures.
pub struct DeliveryTracker {
    offsets: Arc<DeliveredOffsets>,
    failures: AtomicU64,
    /// The first failed delivery whose cause no retry fixes.
    fatal: Mutex<Option<String>>,
}

impl DeliveryTracker {
    /// Deliveries that failed since the producer was created.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Acquire)
    }
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) => {
                if let Some(slot) = self.offsets.slot(m.topic(), m.partition()) {
                    slot.fetch_max(m.offset(), Ordering::AcqRel);
                }
            }
            Err((e, m)) => {
                self.failures.fetch_add(1, Ordering::AcqRel);
                tracing::warn!(topic = m.topic(), partition = m.partition(), error = %e, "delivery failed");
                if let Some(why) = crate::kafka::errors::fatal(e) {
                    let mut fatal = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
                    fatal.get_or_insert_with(|| format!("{why}: topic `{}`: {e}", m.topic()));
                }
            }
        }
    }
}

/// The producer with tally's send discipline (explicit partitions, retry on a full queue).
pub struct Sink {
    producer: Arc<BaseProducer<DeliveryTracker>>,
    transactional: bool,
    pub(crate) timeout: Duration,
}

impl Sink {
    /// Creates the producer; a transactional one is initialised (fencing older incarnations).
    pub fn create(
        config: &ClientConfig,
        offsets: Arc<DeliveredOffsets>,
        timeout: Duration,
    ) -> KafkaResult<Self> {
        let transactional = config.get("transactional.id").is_some();
        let producer: BaseProducer<DeliveryTracker> = crate::kafka::clients::create(
            config,
            DeliveryTracker {
                offsets,
                failures: AtomicU64::new(0),
                fatal: Mutex::new(None),
            },
        )?;
        if transactional {
            producer.init_transactions(timeout)?;
        }
        Ok(Self {
            producer: Arc::new(producer),
            transactional,
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

    /// Deliveries that failed since the producer was created.
    pub fn failures(&self) -> u64 {
        self.producer.context().failures()
    }

    /// Why a delivery failed for a cause no retry fixes, if one did.
    pub fn fatal(&self) -> Option<String> {
        self.producer
            .context()
            .fatal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Aborts the open transaction, then serves the reports of the records it purged, so their
    /// failures are not charged to a later commit.
    pub fn abort(&self) -> KafkaResult<()> {
        self.producer.abort_transaction(Duration::from_secs(30))?;
        self.flush()
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
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
    ) -> KafkaResult<()> {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).partition(partition);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(v) = value {
            record = record.payload(v);
        }
        if let Some(h) = headers {
            record = record.headers(h);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    // `poll(t)` would spin until `t` is over (see `clients::flush`).
                    self.poll();
                    std::thread::sleep(crate::kafka::clients::FLUSH_STEP);
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Waits until every produced record is acknowledged (and its delivery report served).
    pub fn flush(&self) -> KafkaResult<()> {
        crate::kafka::clients::flush(self.producer.as_ref(), self.timeout)
    }
}

/// The tasks' outbox at run time: every record goes to the producer.
impl Outbox for &Sink {
    fn send(&mut self, r: Outgoing<'_>) -> Result<(), SendError> {
        let headers = (!r.headers.is_empty()).then(|| {
            r.headers.iter().fold(
                OwnedHeaders::new_with_capacity(r.headers.len()),
                |h, &(key, value)| h.insert(Header { key, value }),
            )
        });
        Sink::send(self, r.topic, r.partition, r.key, r.value, headers).map_err(SendError::from)
    }

    fn flush(&mut self) -> Result<(), SendError> {
        Sink::flush(self).map_err(SendError::from)
    }
}

impl From<KafkaError> for SendError {
    fn from(e: KafkaError) -> Self {
        SendError(Box::new(e))
    }
}

impl From<KafkaError> for ProduceError {
    fn from(e: KafkaError) -> Self {
        ProduceError::Send(e.into())
    }
}

/// The Kafka error an outbox refused a record with (any other cause counts as a failed produce).
pub(super) fn kafka_error(e: SendError) -> KafkaError {
    match e.0.downcast::<KafkaError>() {
        Ok(k) => *k,
        Err(_) => KafkaError::MessageProduction(RDKafkaErrorCode::Fail),
    }
}
