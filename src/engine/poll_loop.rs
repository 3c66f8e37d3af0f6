//! The poll loop, one turn at a time: poll input and route each record to its task as an owned
//! record, serve the rest (control records, delivery reports, finished restores), then end the
//! running commit, start the next one when it is due, or ship what the tasks staged.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::BaseConsumer;
use rdkafka::message::Message;

use super::rebalance::EngineContext;
use super::{lock, watch, Engine, EngineError};
use crate::kafka::record::InputRecord;

/// Records routed per turn at most, so a turn never starves the commit tick.
const MAX_PER_TURN: usize = 2000;

/// A poll-loop turn that works this long (its events wait for it) is logged, by phase.
const SLOW_TURN: Duration = Duration::from_millis(25);

/// How long a poll waits for input while a commit runs, before it looks whether the commit
/// ended (the Kafka half's thread cannot wake a poll).
const COMMIT_CHECK: Duration = Duration::from_millis(2);

/// How long a poll waits for input while a restore runs, before it looks whether the restore
/// ended (a partition restored waited up to 100 ms for its activation otherwise).
const RESTORE_CHECK: Duration = Duration::from_millis(5);

/// Runs turns until `shutdown` is set, then commits what is staged.
pub(super) fn run(
    engine: &Mutex<Engine>,
    consumer: &BaseConsumer<EngineContext>,
    shutdown: &AtomicBool,
) -> Result<(), EngineError> {
    let mut times = LoopTimes::default();
    while !shutdown.load(Ordering::Acquire) {
        let wait = lock(engine).poll_wait();
        let t0 = Instant::now();
        let (polled, t1) = poll(engine, consumer, wait.min(Duration::from_millis(100)))?;
        let tp = Instant::now();
        let mut e = lock(engine);
        e.serve(consumer, polled > 0);
        let t2 = Instant::now();
        let committing = e.commit_tick(consumer)?;
        let t3 = Instant::now();
        if t3 - t1 >= SLOW_TURN {
            tracing::debug!(
                events = polled,
                process_us = (tp - t1).as_micros() as u64,
                serve_us = (t2 - tp).as_micros() as u64,
                commit_tick_us = (t3 - t2).as_micros() as u64,
                started_commit = committing,
                "slow poll-loop turn"
            );
        }
        times.add(t0, t1, t2, committing, polled);
    }
    lock(engine).commit(consumer)?;
    Ok(())
}

/// Polls up to [`MAX_PER_TURN`] records, waiting up to `wait` for the first, and routes each
/// to its task; returns how many it routed, and when the wait for the first ended.
fn poll(
    engine: &Mutex<Engine>,
    consumer: &BaseConsumer<EngineContext>,
    wait: Duration,
) -> Result<(usize, Instant), EngineError> {
    let mut polled = 0;
    let mut next = consumer.poll(wait);
    let waited = Instant::now();
    while let Some(item) = next {
        match item {
            Ok(msg) => {
                lock(engine)
                    .tasks
                    .route(msg.topic(), &InputRecord::of(&msg))?;
                polled += 1;
            }
            Err(e) => {
                if let Some(cause) = crate::kafka::errors::fatal(&e) {
                    return Err(EngineError::Fatal(format!("consuming: {cause}: {e}")));
                }
                tracing::warn!(error = %e, "consumer error");
                break;
            }
        }
        if polled >= MAX_PER_TURN {
            break;
        }
        next = consumer.poll(Duration::ZERO);
    }
    Ok((polled, waited))
}

impl Engine {
    /// How long the next poll may wait for input.
    fn poll_wait(&self) -> Duration {
        if self.commits.committing() {
            COMMIT_CHECK
        } else if self.tasks.restoring() > 0 {
            RESTORE_CHECK
        } else {
            self.commits
                .next_commit()
                .saturating_duration_since(Instant::now())
        }
    }

    /// Everything of a turn besides input: health, blocked stores and stalls (once a second),
    /// control records, delivery reports, finished restores.
    fn serve(&mut self, consumer: &BaseConsumer<EngineContext>, polled: bool) {
        self.health.beat();
        let now = Instant::now();
        if now >= self.next_check {
            self.next_check = now + watch::CHECK_EVERY;
            self.tasks.retry_blocked();
            self.check_stalls();
        }
        self.tasks.poll_control();
        self.commits.serve_reports();
        self.tasks.finish_restores(consumer);
        if polled {
            self.health.broker_reachable(true);
        }
    }

    /// Ends the running commit if it is done, then starts the next one if it is due, or else
    /// ships what the tasks staged; `true` when a commit started.
    fn commit_tick(&mut self, consumer: &BaseConsumer<EngineContext>) -> Result<bool, EngineError> {
        let max_events = self.cfg.commit_max_events;
        // A batch as large as a whole commit waits for the running commit: that bounds what is
        // staged to two commits' worth.
        let full = self.tasks.staged() >= max_events;
        self.finish_commit(consumer, full)?;
        let due = Instant::now() >= self.commits.next_commit() || self.tasks.staged() >= max_events;
        let starting = !self.commits.committing() && due;
        if starting {
            self.start_commit(consumer)?;
        } else {
            self.ship(consumer)?;
        }
        Ok(starting)
    }
}

/// Where the poll loop's time goes, logged at debug level every few seconds: waiting for input,
/// processing it, shipping, committing.
#[derive(Default)]
struct LoopTimes {
    since: Option<Instant>,
    idle: Duration,
    process: Duration,
    ship: Duration,
    commit: Duration,
    events: usize,
    commits: u64,
}

impl LoopTimes {
    fn add(&mut self, t0: Instant, t1: Instant, t2: Instant, committed: bool, events: usize) {
        let now = Instant::now();
        let since = *self.since.get_or_insert(t0);
        self.idle += t1 - t0;
        self.process += t2 - t1;
        if committed {
            self.commit += now - t2;
            self.commits += 1;
        } else {
            self.ship += now - t2;
        }
        self.events += events;
        if now - since >= Duration::from_secs(5) {
            tracing::debug!(
                events = self.events,
                commits = self.commits,
                idle_ms = self.idle.as_millis() as u64,
                process_ms = self.process.as_millis() as u64,
                ship_ms = self.ship.as_millis() as u64,
                commit_ms = self.commit.as_millis() as u64,
                "poll loop"
            );
            *self = Self::default();
        }
    }
}
