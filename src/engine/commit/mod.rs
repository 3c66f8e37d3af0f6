//! The commit protocol, one commit at a time: staged → sealed → committing → committed or rolled
//! back. Tasks stage records and ship them into the open transaction as they go; a commit ships
//! the rest and seals every task's batch, runs its Kafka half on a thread of its own (`kafka`:
//! the transaction under exactly_once, acknowledgements then offsets under at_least_once), and
//! then hands the sealed batches to its store half (`store`). A failed Kafka half rolls every
//! task back to what Kafka committed; the stores never see a batch Kafka did not commit.

mod kafka;
mod offsets;
pub(super) mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::TopicPartitionList;

use super::producer::{Failure, TxnProducer};
use super::rebalance::EngineContext;
use super::sink::{self, DeliveredOffsets};
use super::task::ProduceError;
use super::{Engine, EngineError, FlowInfo};
use crate::config::{Config, ProcessingGuarantee};

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

/// Where the protocol stands.
enum Phase {
    /// Tasks stage records and ship them into the open transaction.
    Staging,
    /// Every task's batch is sealed and the Kafka half runs; nothing ships meanwhile.
    Committing(Running),
}

/// The commit whose Kafka half is running.
struct Running {
    events: usize,
    started: Instant,
    /// at_least_once without the group's consumer at hand: the input offsets, committed here
    /// once every record is acknowledged.
    offsets: Option<TopicPartitionList>,
}

/// The protocol's state: its phase, the producer with its transaction, and the Kafka half.
pub(super) struct Commits {
    phase: Phase,
    producer: TxnProducer,
    kafka: kafka::KafkaHalf,
    /// Where each changelog and output partition's delivered records end.
    delivered: Arc<DeliveredOffsets>,
    ends: offsets::Ends,
    /// The group's consumer, so the Kafka half commits at_least_once offsets off the poll loop;
    /// unset before the loop runs and after it ended (it would keep the consumer alive).
    group_consumer: Option<Arc<BaseConsumer<EngineContext>>>,
    /// When the next commit is due.
    next_commit: Instant,
}

impl Commits {
    /// The protocol of a processor of `flows`, committing through `producer`.
    pub(super) fn new(
        cfg: &Config,
        flows: &[Arc<FlowInfo>],
        producer: TxnProducer,
        delivered: Arc<DeliveredOffsets>,
    ) -> Result<Self, EngineError> {
        delivered.track(flows.iter().flat_map(|f| {
            [
                (f.changelog.clone(), f.partitions),
                (f.output.clone(), f.partitions),
            ]
        }));
        let topics: HashMap<_, _, _> = flows
            .iter()
            .map(|f| (f.input.clone(), (f.changelog.clone(), f.output.clone())))
            .collect();
        let kafka = kafka::KafkaHalf::start().map_err(|source| tally_state::StateError::Fs {
            path: cfg.state_dir.clone(),
            source,
        })?;
        Ok(Self {
            phase: Phase::Staging,
            producer,
            kafka,
            ends: offsets::Ends {
                delivered: Arc::clone(&delivered),
                topics: Arc::new(topics),
            },
            delivered,
            group_consumer: None,
            next_commit: Instant::now() + cfg.commit_interval(),
        })
    }

    /// Hands the group's consumer to the Kafka half (`None` once the poll loop ended).
    pub(super) fn set_consumer(&mut self, consumer: Option<Arc<BaseConsumer<EngineContext>>>) {
        self.group_consumer = consumer;
    }

    /// Whether a commit's Kafka half is running (nothing is shipped meanwhile).
    pub(super) fn committing(&self) -> bool {
        matches!(self.phase, Phase::Committing(_))
    }

    /// When the next commit is due.
    pub(super) fn next_commit(&self) -> Instant {
        self.next_commit
    }

    /// Serves the producer's delivery reports that are ready.
    pub(super) fn serve_reports(&self) {
        self.producer.sink().poll();
    }

    /// Aborts the open transaction, if any (the assignment was lost: what it holds is void).
    pub(super) fn abort_open(&mut self, health: &crate::health::Health) {
        self.producer.abort_open(health);
    }
}

impl Engine {
    /// Commits all staged work of every active task and waits until it is done (before a
    /// revoke, at shutdown).
    pub fn commit<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<CommitOutcome, EngineError> {
        self.finish_commit(consumer, true)?;
        self.start_commit(consumer)?;
        Ok(self
            .finish_commit(consumer, true)?
            .unwrap_or(CommitOutcome::Idle))
    }

    /// Staged → sealed → committing: ships the rest of the staged work, seals it in every task
    /// and hands the Kafka half to its thread. A produce error rolls everything back at once.
    pub(super) fn start_commit<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), EngineError> {
        debug_assert!(!self.commits.committing(), "one commit runs at a time");
        self.commits.next_commit = Instant::now() + self.cfg.commit_interval();
        if !self.tasks.all().any(|t| t.has_progress()) {
            // Shipped records always come with progress; a transaction without any has nothing
            // worth committing.
            self.commits.producer.abort_open(&self.health);
            return Ok(());
        }
        let started = Instant::now();
        match self.produce_rest(consumer) {
            Ok((work, events, offsets)) => {
                for t in self.tasks.all_mut().filter(|t| t.has_progress()) {
                    t.seal();
                }
                let sink = self.commits.producer.sink();
                self.commits.kafka.submit(sink.shared(), work, sink.timeout);
                self.commits.phase = Phase::Committing(Running {
                    events,
                    started,
                    offsets,
                });
                Ok(())
            }
            Err(e) => self.produce_failed(consumer, e),
        }
    }

    /// Produces what is left of the batch (with the dedupe expiry) and says what the Kafka half
    /// does, and how many events the commit holds.
    fn produce_rest<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(kafka::Work, usize, Option<TopicPartitionList>), ProduceError> {
        let retention_ms = i64::try_from(self.cfg.dedupe_retention.as_millis()).unwrap_or(i64::MAX);
        let exactly_once = self.cfg.processing_guarantee == ProcessingGuarantee::ExactlyOnce;
        if exactly_once {
            self.commits.producer.begin()?;
        }
        let mut out = self.commits.producer.sink();
        for t in self.tasks.all_mut().filter(|t| t.has_progress()) {
            t.produce(&mut out, retention_ms)?;
        }
        let (offsets, events) = offsets::positions(self.tasks.all(), !exactly_once)?;
        let ends = self.commits.ends.clone();
        if exactly_once {
            let group = consumer
                .group_metadata()
                .ok_or_else(|| KafkaError::Subscription("no consumer group metadata yet".into()))?;
            let work = kafka::Work::Transaction {
                offsets,
                group,
                ends,
            };
            return Ok((work, events, None));
        }
        // The Kafka half commits the offsets when it has the consumer (always, once the poll
        // loop runs); the poll loop does otherwise.
        let consumer = self.commits.group_consumer.clone();
        let (offsets, here) = match consumer {
            Some(_) => (offsets, None),
            None => (TopicPartitionList::new(), Some(offsets)),
        };
        let work = kafka::Work::Acknowledged {
            offsets,
            consumer,
            failures: self.commits.producer.failures_before(),
            ends,
        };
        Ok((work, events, here))
    }

    /// Committing → committed or rolled back, once the Kafka half is done (`wait`: even if that
    /// means waiting): the sealed batches go to the store half, or everything rolls back.
    /// Returns the outcome of the commit it ended, if one was running.
    pub(super) fn finish_commit<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        wait: bool,
    ) -> Result<Option<CommitOutcome>, EngineError> {
        let Phase::Committing(running) = &self.commits.phase else {
            return Ok(None);
        };
        let started = running.started;
        let limit = self.cfg.commit_stall_limit();
        let result = match self.commits.kafka.try_result() {
            Some(r) => r,
            None if !wait && started.elapsed() < limit => return Ok(None),
            None => match self
                .commits
                .kafka
                .wait(limit.saturating_sub(started.elapsed()))
            {
                Some(r) => r,
                None => {
                    let limit_s = limit.as_secs();
                    tracing::error!(limit_s, "commit stuck in the Kafka client; abandoning it");
                    metrics::counter!("tally_commits_stalled_total").increment(1);
                    self.commits
                        .kafka
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
        let Phase::Committing(running) = std::mem::replace(&mut self.commits.phase, Phase::Staging)
        else {
            return Ok(None);
        };
        self.commits.producer.ended();
        let committed = result.and_then(|timings| {
            tracing::debug!(
                send_offsets_us = timings.send_offsets.as_micros() as u64,
                acknowledged_us = timings.acknowledged.as_micros() as u64,
                commit_us = timings.commit.as_micros() as u64,
                "kafka commit"
            );
            self.commit_offsets_here(consumer, &running)
        });
        if let Err(e) = committed {
            tracing::warn!(error = %e, "commit failed; rolling back to the committed offsets");
            self.fail(consumer, &e)?;
            return Ok(Some(CommitOutcome::RolledBack));
        }
        self.commits.producer.committed();
        let kafka_done = running.started.elapsed();
        for t in self.tasks.all_mut() {
            // Nothing ships while a commit runs, so every delivered record is this commit's or
            // an earlier one's.
            let delivered = self
                .commits
                .delivered
                .next_offset(&t.flow().changelog, t.partition());
            t.after_commit(delivered)?;
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

    /// at_least_once without the group's consumer in the Kafka half: commits the input offsets
    /// here, now that every record is acknowledged (exactly_once committed them in the
    /// transaction already).
    fn commit_offsets_here<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        running: &Running,
    ) -> Result<(), KafkaError> {
        let Some(offsets) = &running.offsets else {
            return Ok(());
        };
        self.commits.ends.stamp(offsets);
        super::faults::hit("before_commit_offsets");
        consumer.commit(offsets, CommitMode::Sync)
    }

    /// Hands what the tasks staged since the last call to the producer, opening the transaction
    /// first, so acknowledgements arrive while later input is processed instead of at commit.
    /// A Kafka error rolls everything back, as a failed commit does.
    pub fn ship<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), EngineError> {
        // A transaction takes no records while it commits; under at_least_once, records shipped
        // during a commit would widen what a crash leaves in flight (an output without its
        // state). So nothing ships during a commit under either guarantee.
        if self.commits.committing() || !self.tasks.all().any(|t| t.unshipped()) {
            return Ok(());
        }
        let shipped = self
            .commits
            .producer
            .begin()
            .map_err(ProduceError::from)
            .and_then(|()| {
                let mut out = self.commits.producer.sink();
                self.tasks
                    .all_mut()
                    .filter(|t| t.unshipped())
                    .try_for_each(|t| t.ship(&mut out))
            });
        match shipped {
            Ok(()) => Ok(()),
            Err(e) => self.produce_failed(consumer, e),
        }
    }

    /// A produce failed: a state that cannot be rendered stops the processor; a Kafka error
    /// rolls back, or stops it when no retry fixes the cause.
    fn produce_failed<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        error: ProduceError,
    ) -> Result<(), EngineError> {
        match error {
            ProduceError::Task(e) => Err(e.into()),
            ProduceError::Send(e) => {
                let e = sink::kafka_error(e);
                tracing::warn!(error = %e, "producing failed; rolling back to the committed offsets");
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
    ) -> Result<(), EngineError> {
        match self.commits.producer.classify(cause) {
            Failure::Fatal(why) => {
                self.commits.producer.abort_open(&self.health);
                Err(EngineError::Fatal(why))
            }
            Failure::RollBack => {
                self.roll_back(consumer, cause);
                Ok(())
            }
        }
    }

    /// Rolled back: drops staged work everywhere and restores every task from its changelog; the
    /// state that counts is whatever Kafka committed, whether or not this failed commit made it.
    pub fn roll_back<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        cause: &KafkaError,
    ) {
        metrics::counter!("tally_transactions_aborted_total").increment(1);
        self.stalls.rolled_back();
        debug_assert!(
            !self.commits.committing(),
            "a running commit ends before a rollback"
        );
        // The restores start first, so they overlap the producer's replacement (a transactional
        // one takes half a second to start). They read only committed records and offsets, so
        // the old transaction, aborted or fenced by the replacement, is invisible to them
        // whichever ends first; the poll loop goes on only once the new producer is ready.
        self.tasks.restart_all(consumer);
        self.commits.producer.roll_back(cause, &self.health);
    }
}
