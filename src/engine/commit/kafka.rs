//! The Kafka half of a commit, on a thread of its own: waiting for acknowledgements and the
//! transaction's round trips, while the poll loop goes on processing the next batch.

use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerGroupMetadata};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::TopicPartitionList;

use super::offsets::Ends;
use crate::engine::faults;
use crate::engine::rebalance::EngineContext;
use crate::engine::sink::DeliveryTracker;

/// What the thread does once every record the producer holds is acknowledged (nothing is
/// produced while a commit runs, so those are the commit's records).
pub(super) enum Work {
    /// exactly_once: the input offsets added and the transaction committed.
    Transaction {
        offsets: TopicPartitionList,
        group: ConsumerGroupMetadata,
        ends: Ends,
    },
    /// at_least_once: the input offsets committed through the group's consumer (or, without
    /// one, by the poll loop afterwards).
    Acknowledged {
        offsets: TopicPartitionList,
        consumer: Option<Arc<BaseConsumer<EngineContext>>>,
        /// Delivery failures counted before the commit's records: any more fail it.
        failures: u64,
        ends: Ends,
    },
}

struct Job {
    producer: Arc<BaseProducer<DeliveryTracker>>,
    work: Work,
    timeout: Duration,
}

/// How long each step of a finished commit took.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Timings {
    pub send_offsets: Duration,
    /// Waiting for the acknowledgements of the commit's records.
    pub acknowledged: Duration,
    pub commit: Duration,
}

/// Handle to the Kafka half's thread; one commit runs at a time.
pub(super) struct KafkaHalf {
    jobs: Sender<Job>,
    results: Receiver<KafkaResult<Timings>>,
    /// The outcome of a commit run on the poll thread because the committer thread was gone.
    fallback: Option<KafkaResult<Timings>>,
}

impl KafkaHalf {
    /// Starts the thread; it ends when the handle is dropped.
    pub fn start() -> std::io::Result<Self> {
        let (jobs, rx) = channel::<Job>();
        let (done, results) = channel();
        std::thread::Builder::new()
            .name("tally-committer".into())
            .spawn(move || {
                for job in rx {
                    if done.send(run(job)).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Self {
            jobs,
            results,
            fallback: None,
        })
    }

    /// Hands one commit to the thread.
    pub fn submit(
        &mut self,
        producer: Arc<BaseProducer<DeliveryTracker>>,
        work: Work,
        timeout: Duration,
    ) {
        let job = Job {
            producer,
            work,
            timeout,
        };
        if let Err(e) = self.jobs.send(job) {
            // The thread is gone (it never panics by design): commit here rather than not at all.
            self.fallback = Some(run(e.0));
        }
    }

    /// The outcome of the running commit, if it is over.
    pub fn try_result(&mut self) -> Option<KafkaResult<Timings>> {
        if let Some(r) = self.fallback.take() {
            return Some(r);
        }
        match self.results.try_recv() {
            Ok(r) => Some(r),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Err(KafkaError::Canceled)),
        }
    }

    /// Waits up to `limit` for the outcome of the running commit.
    pub fn wait(&mut self, limit: Duration) -> Option<KafkaResult<Timings>> {
        if let Some(r) = self.fallback.take() {
            return Some(r);
        }
        match self.results.recv_timeout(limit) {
            Ok(r) => Some(r),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => Some(Err(KafkaError::Canceled)),
        }
    }

    /// Leaves the running commit to its thread and starts another: a client call that ignores
    /// its timeout (librdkafka's `send_offsets_to_transaction` while the group coordinator
    /// moves, confluentinc/librdkafka#5456) must not stop the processor for good. The old
    /// thread ends once that call returns, if ever; its outcome is ignored.
    pub fn abandon(&mut self) -> std::io::Result<()> {
        *self = Self::start()?;
        Ok(())
    }
}

fn run(job: Job) -> KafkaResult<Timings> {
    let t1 = Instant::now();
    let mut timings = Timings::default();
    crate::kafka::clients::flush(job.producer.as_ref(), job.timeout)?;
    let t2 = Instant::now();
    timings.acknowledged = t2 - t1;
    match &job.work {
        Work::Transaction {
            offsets,
            group,
            ends,
        } => {
            // The changelog ends go into the offsets' metadata, so they are sent after the
            // acknowledgements.
            ends.stamp(offsets);
            faults::hit("before_send_offsets");
            faults::hang("send_offsets_hangs");
            job.producer
                .send_offsets_to_transaction(offsets, group, job.timeout)?;
            timings.send_offsets = t2.elapsed();
            faults::hit("before_commit_transaction");
            job.producer.commit_transaction(job.timeout)?;
            faults::hit("after_commit_transaction");
        }
        Work::Acknowledged {
            offsets,
            consumer,
            failures,
            ends,
        } => {
            if job.producer.context().failures() != *failures {
                return Err(KafkaError::MessageProduction(RDKafkaErrorCode::Fail));
            }
            if let Some(consumer) = consumer {
                ends.stamp(offsets);
                faults::hit("before_commit_offsets");
                consumer.commit(offsets, CommitMode::Sync)?;
            }
        }
    }
    timings.commit = t2.elapsed();
    Ok(timings)
}
