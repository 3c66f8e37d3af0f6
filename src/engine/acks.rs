//! at_least_once commits without waiting for the producer: a commit seals a generation of
//! records; once all are acknowledged its offsets are committed and its batches written.

use std::collections::VecDeque;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::TopicPartitionList;

use super::task::ProduceError;
use super::Engine;

/// A sealed generation: the input offsets to commit once the producer acknowledged it.
pub struct AwaitingAck {
    pub generation: u64,
    pub offsets: TopicPartitionList,
}

/// Sealed generations, oldest first.
pub type Awaiting = VecDeque<AwaitingAck>;

impl Engine {
    /// Commits the offsets of every acknowledged generation, oldest first, and hands their
    /// batches to the store writer. With `wait`, first waits for every acknowledgement (before
    /// a revoke, or at shutdown). A failed delivery or offset commit rolls everything back.
    pub fn settle_acks<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        wait: bool,
    ) -> Result<(), super::EngineError> {
        if self.awaiting.is_empty() {
            return Ok(());
        }
        let settled = if wait {
            self.sink.flush().map_err(ProduceError::from)
        } else {
            self.sink.poll();
            Ok(())
        }
        .and_then(|()| self.commit_acked(consumer, wait));
        match settled {
            Ok(()) => Ok(()),
            Err(ProduceError::Task(e)) => Err(e.into()),
            Err(ProduceError::Kafka(e)) => {
                tracing::warn!(error = %e, "at_least_once commit failed; rolling back to the committed offsets");
                self.roll_back(consumer, &e);
                Ok(())
            }
        }
    }

    /// `wait` commits synchronously: the partitions may change owner right after.
    fn commit_acked<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        wait: bool,
    ) -> Result<(), ProduceError> {
        let mode = if wait {
            CommitMode::Sync
        } else {
            CommitMode::Async
        };
        let mut last = None;
        while let Some(front) = self.awaiting.front() {
            if !self.sink.acked(front.generation) {
                break;
            }
            if self.sink.failures() > 0 {
                return Err(KafkaError::MessageProduction(RDKafkaErrorCode::Fail).into());
            }
            super::faults::hit("before_commit_offsets");
            // Async in the loop, which goes on at once. Should the commit fail (the consumer
            // context logs it) and the process die before a later one lands, the store is
            // ahead of the committed offsets and is rebuilt from the changelog, which holds all
            // of it.
            consumer.commit(&front.offsets, mode)?;
            last = Some(front.generation);
            self.awaiting.pop_front();
        }
        if let Some(generation) = last {
            for t in self.tasks.values_mut() {
                t.acked(generation)?;
            }
        }
        Ok(())
    }
}
