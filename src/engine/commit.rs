//! One commit of all staged work: a Kafka transaction (exactly_once) or produce-flush-commit
//! (at_least_once), and only then the local stores. A failed commit rewinds every task.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};
use tally_state::CommitMetadata;

use super::task::ProduceError;
use super::Engine;
use crate::config::ProcessingGuarantee;

/// How a commit attempt ended.
#[derive(Debug)]
pub enum CommitOutcome {
    /// Nothing was staged.
    Idle,
    /// Everything staged is committed and written to the stores.
    Committed { events: usize },
    /// The commit failed; staged work was dropped and every task is restoring again.
    RolledBack,
}

impl Engine {
    /// Commits all staged work of every active task.
    pub fn commit<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<CommitOutcome, super::EngineError> {
        self.next_commit = Instant::now() + self.cfg.commit_interval();
        let mut offsets = TopicPartitionList::new();
        let mut events = 0;
        for t in self.tasks.values() {
            if t.has_progress() {
                events += t.staged();
                let mut at = offsets.add_partition(&t.flow().input, t.partition());
                at.set_offset(Offset::Offset(t.position()))?;
                at.set_metadata(
                    CommitMetadata {
                        watermark_ms: t.watermark(),
                    }
                    .encode(),
                );
                if let Some(at) = t.control_position() {
                    offsets.add_partition_offset(
                        &t.flow().control,
                        t.partition(),
                        Offset::Offset(at),
                    )?;
                }
            }
        }
        if offsets.count() == 0 {
            // Shipped records always come with progress; a transaction without any has nothing
            // worth committing.
            self.abort_open();
            return Ok(CommitOutcome::Idle);
        }
        let started = Instant::now();
        match self.commit_to_kafka(consumer, &offsets) {
            Ok(()) => {}
            Err(ProduceError::Task(e)) => return Err(e.into()),
            Err(ProduceError::Kafka(e)) => {
                tracing::warn!(error = %e, "commit failed; rolling back to the committed offsets");
                self.roll_back(consumer, &e);
                return Ok(CommitOutcome::RolledBack);
            }
        }
        let kafka_done = started.elapsed();
        for t in self.tasks.values_mut() {
            if t.has_progress() {
                t.after_commit(&self.changelog_offsets)?;
            }
        }
        tracing::debug!(
            events,
            kafka_ms = kafka_done.as_millis() as u64,
            store_ms = (started.elapsed() - kafka_done).as_millis() as u64,
            "committed"
        );
        self.health.broker_reachable(true);
        metrics::histogram!("tally_commit_latency_seconds").record(started.elapsed().as_secs_f64());
        Ok(CommitOutcome::Committed { events })
    }

    fn commit_to_kafka<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        offsets: &TopicPartitionList,
    ) -> Result<(), ProduceError> {
        let retention_ms = i64::try_from(self.cfg.dedupe_retention.as_millis()).unwrap_or(i64::MAX);
        let timeout = self.sink.timeout;
        match self.cfg.processing_guarantee {
            ProcessingGuarantee::ExactlyOnce => {
                let t0 = Instant::now();
                self.begin()?;
                for t in self.tasks.values_mut() {
                    if t.has_progress() {
                        t.produce(&self.sink, retention_ms)?;
                    }
                }
                let group = consumer.group_metadata().ok_or_else(|| {
                    KafkaError::Subscription("no consumer group metadata yet".into())
                })?;
                let t1 = Instant::now();
                self.sink.flush()?;
                let t2 = Instant::now();
                super::faults::hit("before_send_offsets");
                let producer = self.sink.producer();
                producer.send_offsets_to_transaction(offsets, &group, timeout)?;
                let t3 = Instant::now();
                super::faults::hit("before_commit_transaction");
                producer.commit_transaction(timeout)?;
                self.txn_open = false;
                super::faults::hit("after_commit_transaction");
                tracing::debug!(
                    produce_us = (t1 - t0).as_micros() as u64,
                    flush_us = (t2 - t1).as_micros() as u64,
                    send_offsets_us = (t3 - t2).as_micros() as u64,
                    commit_us = t3.elapsed().as_micros() as u64,
                    "transaction"
                );
            }
            ProcessingGuarantee::AtLeastOnce => {
                let failures = self.sink.failures();
                let started = std::time::Instant::now();
                for t in self.tasks.values_mut() {
                    if t.has_progress() {
                        t.produce(&self.sink, retention_ms)?;
                    }
                }
                let produced = started.elapsed();
                let unacked = self.sink.producer().in_flight_count();
                self.sink.flush()?;
                tracing::debug!(
                    unacked,
                    produce_ms = produced.as_millis() as u64,
                    flush_ms = (started.elapsed() - produced).as_millis() as u64,
                    "flushed"
                );
                if self.sink.failures() != failures {
                    return Err(KafkaError::MessageProduction(
                        rdkafka::error::RDKafkaErrorCode::Fail,
                    )
                    .into());
                }
                super::faults::hit("before_commit_offsets");
                consumer.commit(offsets, CommitMode::Sync)?;
            }
        }
        Ok(())
    }

    /// Hands what the tasks staged since the last call to the producer, opening the transaction
    /// first, so acknowledgements arrive while later input is processed instead of at commit.
    /// A Kafka error rolls everything back, as a failed commit does.
    pub fn ship<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), super::EngineError> {
        if !self.tasks.values().any(|t| t.unshipped()) {
            return Ok(());
        }
        let shipped = self.begin().map_err(ProduceError::from).and_then(|()| {
            self.tasks
                .values_mut()
                .filter(|t| t.unshipped())
                .try_for_each(|t| t.ship(&self.sink))
        });
        match shipped {
            Ok(()) => Ok(()),
            Err(ProduceError::Task(e)) => Err(e.into()),
            Err(ProduceError::Kafka(e)) => {
                tracing::warn!(error = %e, "producing failed; rolling back to the committed offsets");
                self.roll_back(consumer, &e);
                Ok(())
            }
        }
    }

    /// Opens the transaction of the next commit unless one is open (exactly_once only).
    fn begin(&mut self) -> Result<(), KafkaError> {
        if self.sink.is_transactional() && !self.txn_open {
            self.sink.producer().begin_transaction()?;
            self.txn_open = true;
        }
        Ok(())
    }

    /// Aborts the open transaction, if any; a producer that cannot abort is replaced, which
    /// fences and aborts it as well.
    pub(super) fn abort_open(&mut self) {
        if !self.txn_open {
            return;
        }
        self.txn_open = false;
        if let Err(e) = self
            .sink
            .producer()
            .abort_transaction(Duration::from_secs(30))
        {
            tracing::warn!(error = %e, "cannot abort the open transaction; re-creating the producer");
            self.recreate_sink();
        }
    }

    /// Drops staged work everywhere and restores every task from its changelog: the state that
    /// counts is whatever Kafka committed, whether or not this failed commit made it.
    pub fn roll_back<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        cause: &KafkaError,
    ) {
        metrics::counter!("tally_transactions_aborted_total").increment(1);
        self.txn_open = false;
        if self.sink.is_transactional() {
            let abortable = matches!(cause, KafkaError::Transaction(e) if e.txn_requires_abort());
            let aborted = abortable
                && self
                    .sink
                    .producer()
                    .abort_transaction(Duration::from_secs(30))
                    .is_ok();
            if !aborted {
                self.recreate_sink();
            }
        } else {
            self.recreate_sink();
        }
        self.restart_all(consumer);
    }
}
