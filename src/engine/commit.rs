//! One commit of all staged work: a Kafka transaction (exactly_once) or produce-flush-commit
//! (at_least_once), and only then the local stores. A failed commit rewinds every task.
//! The Kafka round trips run on the committer thread while the poll loop stages the next batch.

use std::time::Instant;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use tally_state::CommitMetadata;

use super::committer::{Timings, Work};
use super::producer::Failure;
use super::task::ProduceError;
use super::Engine;
use crate::config::ProcessingGuarantee;

/// How a commit attempt ended.
#[derive(Debug)]
pub enum CommitOutcome {
    /// Nothing was staged.
    Idle,
    /// Everything staged is committed and handed to the stores.
    Committed { events: usize },
    /// The commit failed; staged work was dropped and every task is restoring again.
    RolledBack,
}

/// The commit the committer thread is working on.
pub(super) struct Running {
    events: usize,
    started: Instant,
    /// at_least_once without the group's consumer at hand: the input offsets, committed here
    /// once every record is acknowledged.
    offsets: Option<TopicPartitionList>,
}

impl Engine {
    /// Commits all staged work of every active task and waits until it is done (before a
    /// revoke, at shutdown).
    pub fn commit<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<CommitOutcome, super::EngineError> {
        self.finish_commit(consumer, true)?;
        self.start_commit(consumer)?;
        Ok(self
            .finish_commit(consumer, true)?
            .unwrap_or(CommitOutcome::Idle))
    }

    /// Whether a commit is under way (nothing is shipped meanwhile).
    pub(super) fn committing(&self) -> bool {
        self.running.is_some()
    }

    /// Ships the rest of the staged work, seals it in every task and hands the Kafka round
    /// trips to the committer thread. A produce error rolls everything back at once.
    pub(super) fn start_commit<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), super::EngineError> {
        debug_assert!(self.running.is_none(), "one commit runs at a time");
        self.next_commit = Instant::now() + self.cfg.commit_interval();
        if !self.tasks.values().any(|t| t.has_progress()) {
            // Shipped records always come with progress; a transaction without any has nothing
            // worth committing.
            self.producer.abort_open(&self.health);
            return Ok(());
        }
        let started = Instant::now();
        match self.produce_rest(consumer) {
            Ok((work, events, offsets)) => {
                for t in self.tasks.values_mut() {
                    if t.has_progress() {
                        t.seal();
                    }
                }
                let sink = self.producer.sink();
                self.committer.submit(sink.shared(), work, sink.timeout);
                self.running = Some(Running {
                    events,
                    started,
                    offsets,
                });
                Ok(())
            }
            Err(ProduceError::Task(e)) => Err(e.into()),
            Err(ProduceError::Kafka(e)) => {
                tracing::warn!(error = %e, "commit failed; rolling back to the committed offsets");
                self.fail(consumer, &e)
            }
        }
    }

    /// Rolls back after a failed produce or commit, or stops the processor when the cause is
    /// one no retry fixes (an ACL, a record no topic takes): looping on it would only hide it.
    fn fail<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        cause: &KafkaError,
    ) -> Result<(), super::EngineError> {
        match self.producer.classify(cause) {
            Failure::Fatal(why) => {
                self.producer.abort_open(&self.health);
                Err(super::EngineError::Fatal(why))
            }
            Failure::RollBack => {
                self.roll_back(consumer, cause);
                Ok(())
            }
        }
    }

    /// Produces what is left of the batch (with the dedupe expiry) and says what the committer
    /// thread waits for, and how many events the commit holds.
    fn produce_rest<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(Work, usize, Option<TopicPartitionList>), ProduceError> {
        let retention_ms = i64::try_from(self.cfg.dedupe_retention.as_millis()).unwrap_or(i64::MAX);
        if self.cfg.processing_guarantee == ProcessingGuarantee::ExactlyOnce {
            self.producer.begin()?;
        }
        for t in self.tasks.values_mut() {
            if t.has_progress() {
                t.produce(self.producer.sink(), retention_ms)?;
            }
        }
        let (offsets, events) = self.positions()?;
        let ends = self.ends.clone();
        Ok(match self.cfg.processing_guarantee {
            ProcessingGuarantee::ExactlyOnce => {
                let group = consumer.group_metadata().ok_or_else(|| {
                    KafkaError::Subscription("no consumer group metadata yet".into())
                })?;
                let work = Work::Transaction {
                    offsets,
                    group,
                    ends,
                };
                (work, events, None)
            }
            // The committer thread commits the offsets when it has the consumer (always, once
            // the poll loop runs); the poll loop does otherwise.
            ProcessingGuarantee::AtLeastOnce => {
                let consumer = self.group_consumer.clone();
                let (offsets, here) = match consumer {
                    Some(_) => (offsets, None),
                    None => (TopicPartitionList::new(), Some(offsets)),
                };
                let failures = self.producer.failures_before();
                let work = Work::Acknowledged {
                    offsets,
                    consumer,
                    failures,
                    ends,
                };
                (work, events, here)
            }
        })
    }

    /// The input (and control) offsets to commit, with tally's metadata, and the events they
    /// move past; after the last records of the batch were produced.
    fn positions(&self) -> Result<(TopicPartitionList, usize), KafkaError> {
        let mut offsets = TopicPartitionList::new();
        let mut events = 0;
        let at_least_once = self.cfg.processing_guarantee == ProcessingGuarantee::AtLeastOnce;
        for t in self.tasks.values().filter(|t| t.has_progress()) {
            events += t.staged();
            let mut at = offsets.add_partition(&t.flow().input, t.partition());
            at.set_offset(Offset::Offset(t.position()))?;
            let metadata = CommitMetadata {
                watermark_ms: t.watermark(),
                changelog_end: t.changelog_end(),
                output_end: at_least_once.then(|| t.output_end()),
            };
            at.set_metadata(metadata.encode());
            if let Some(at) = t.control_position() {
                offsets.add_partition_offset(
                    &t.flow().control,
                    t.partition(),
                    Offset::Offset(at),
                )?;
            }
        }
        Ok((offsets, events))
    }

    /// Ends the running commit, if any, once the committer thread is done with it (`wait`: even
    /// if that means waiting): the sealed batches go to the store writer, or everything rolls
    /// back. Returns the outcome of the commit it ended.
    pub(super) fn finish_commit<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        wait: bool,
    ) -> Result<Option<CommitOutcome>, super::EngineError> {
        let Some(started) = self.running.as_ref().map(|r| r.started) else {
            return Ok(None);
        };
        let limit = self.cfg.commit_stall_limit();
        let result = match self.committer.try_result() {
            Some(r) => r,
            None if !wait && started.elapsed() < limit => return Ok(None),
            None => match self.committer.wait(limit.saturating_sub(started.elapsed())) {
                Some(r) => r,
                None => {
                    let limit_s = limit.as_secs();
                    tracing::error!(limit_s, "commit stuck in the Kafka client; abandoning it");
                    metrics::counter!("tally_commits_stalled_total").increment(1);
                    self.committer
                        .abandon()
                        .map_err(|source| tally_state::StateError::Fs {
                            path: self.cfg.state_dir.clone(),
                            source,
                        })?;
                    // Not an error a transaction can abort: the producer is replaced, which
                    // fences whatever the abandoned thread still does with the old one.
                    Err(KafkaError::Canceled)
                }
            },
        };
        let Some(running) = self.running.take() else {
            return Ok(None);
        };
        self.producer.ended();
        let committed = result.and_then(|timings| self.commit_offsets(consumer, &running, timings));
        if let Err(e) = committed {
            tracing::warn!(error = %e, "commit failed; rolling back to the committed offsets");
            self.fail(consumer, &e)?;
            return Ok(Some(CommitOutcome::RolledBack));
        }
        self.producer.committed();
        let kafka_done = running.started.elapsed();
        for t in self.tasks.values_mut() {
            t.after_commit(&self.delivered)?;
        }
        tracing::debug!(
            events = running.events,
            kafka_ms = kafka_done.as_millis() as u64,
            "committed"
        );
        self.health.broker_reachable(true);
        metrics::histogram!("tally_commit_latency_seconds")
            .record(running.started.elapsed().as_secs_f64());
        Ok(Some(CommitOutcome::Committed {
            events: running.events,
        }))
    }

    /// at_least_once: commits the input offsets once every record is acknowledged (exactly_once
    /// committed them in the transaction already).
    fn commit_offsets<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        running: &Running,
        timings: Timings,
    ) -> Result<(), KafkaError> {
        tracing::debug!(
            send_offsets_us = timings.send_offsets.as_micros() as u64,
            acknowledged_us = timings.acknowledged.as_micros() as u64,
            commit_us = timings.commit.as_micros() as u64,
            "kafka commit"
        );
        let Some(offsets) = &running.offsets else {
            return Ok(());
        };
        self.ends.stamp(offsets);
        super::faults::hit("before_commit_offsets");
        consumer.commit(offsets, CommitMode::Sync)
    }

    /// Hands what the tasks staged since the last call to the producer, opening the transaction
    /// first, so acknowledgements arrive while later input is processed instead of at commit.
    /// A Kafka error rolls everything back, as a failed commit does.
    pub fn ship<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), super::EngineError> {
        // A transaction takes no records while it commits; under at_least_once, records shipped
        // during a commit would widen what a crash leaves in flight (an output without its
        // state). So nothing ships during a commit under either guarantee.
        if self.committing() || !self.tasks.values().any(|t| t.unshipped()) {
            return Ok(());
        }
        let shipped = self
            .producer
            .begin()
            .map_err(ProduceError::from)
            .and_then(|()| {
                let sink = self.producer.sink();
                self.tasks
                    .values_mut()
                    .filter(|t| t.unshipped())
                    .try_for_each(|t| t.ship(sink))
            });
        match shipped {
            Ok(()) => Ok(()),
            Err(ProduceError::Task(e)) => Err(e.into()),
            Err(ProduceError::Kafka(e)) => {
                tracing::warn!(error = %e, "producing failed; rolling back to the committed offsets");
                self.fail(consumer, &e)
            }
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
        self.stalls.rolled_back();
        debug_assert!(
            self.running.is_none(),
            "a running commit ends before a rollback"
        );
        // The restores start first, so they overlap the producer's replacement (a transactional
        // one takes half a second to start). They read only committed records and offsets, so
        // the old transaction, aborted or fenced by the replacement, is invisible to them
        // whichever ends first; the poll loop goes on only once the new producer is ready.
        self.restart_all(consumer);
        self.producer.roll_back(cause, &self.health);
    }
}
