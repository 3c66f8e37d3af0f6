//! Watches every assigned input partition: its lag as the broker sees it (the group's committed
//! offset against the high watermark, the `tally_consumer_lag` gauge) and whether work waits on
//! it without progress, which makes `/healthz` fail.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::clients;

/// How often the lag is read from the broker.
const LAG_EVERY: Duration = Duration::from_secs(2);
/// How often the poll loop looks for stalled partitions.
pub(super) const CHECK_EVERY: Duration = Duration::from_secs(1);

/// What the broker and the consumer last said about one input partition.
#[derive(Debug, Clone, Copy, Default)]
struct Reading {
    /// Broker: committed offset and high watermark (`None` until read).
    lag: Option<i64>,
    /// Consumer statistics: the next offset it fetches and the partition's last stable offset.
    fetch: Option<(i64, i64)>,
}

/// Readings shared by the lag thread, the consumer's statistics callback and the poll loop.
#[derive(Default)]
pub struct Readings {
    assigned: Mutex<Vec<(String, i32)>>,
    by_partition: Mutex<HashMap<(String, i32), Reading>>,
    stop: AtomicBool,
}

impl Readings {
    /// The input partitions this instance owns now.
    pub(super) fn set_assigned(&self, parts: Vec<(String, i32)>) {
        let mut all = self.by_partition.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|k, _| parts.contains(k));
        *self.assigned.lock().unwrap_or_else(|p| p.into_inner()) = parts;
    }

    /// From the consumer's statistics: where its fetcher stands against the stable end.
    pub fn fetched(&self, topic: &str, partition: i32, next: i64, stable: i64) {
        let mut all = self.by_partition.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = all.get_mut(&(topic.to_string(), partition)) {
            r.fetch = (next >= 0 && stable >= 0).then_some((next, stable));
        }
    }

    fn get(&self, topic: &str, partition: i32) -> Reading {
        let all = self.by_partition.lock().unwrap_or_else(|p| p.into_inner());
        all.get(&(topic.to_string(), partition))
            .copied()
            .unwrap_or_default()
    }

    /// Ends the lag thread.
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Starts the thread that reads the lag of the assigned partitions from the broker.
pub(super) fn start_lag_thread(
    readings: Arc<Readings>,
    bootstrap: String,
    passthrough: BTreeMap<String, String>,
    group: String,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("tally-lag".into())
        .spawn(move || {
            let reader = match clients::quiet_reader(&bootstrap, &passthrough, &group) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "cannot create the lag reader; no lag is reported");
                    return;
                }
            };
            while !readings.stop.load(Ordering::Acquire) {
                let parts = readings
                    .assigned
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                if let Err(e) = read_lag(&reader, &readings, &parts) {
                    tracing::debug!(error = %e, "reading the lag failed; trying again");
                }
                std::thread::sleep(LAG_EVERY);
            }
        })?;
    Ok(())
}

fn read_lag<C: rdkafka::consumer::ConsumerContext>(
    reader: &rdkafka::consumer::BaseConsumer<C>,
    readings: &Readings,
    parts: &[(String, i32)],
) -> rdkafka::error::KafkaResult<()> {
    if parts.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for (t, p) in parts {
        tpl.add_partition(t, *p);
    }
    let committed = reader.committed_offsets(tpl, Duration::from_secs(10))?;
    for (t, p) in parts {
        let (low, high) = reader.fetch_watermarks(t, *p, Duration::from_secs(5))?;
        let at = committed
            .find_partition(t, *p)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            })
            .unwrap_or(low);
        let lag = (high - at.max(low)).max(0);
        metrics::gauge!("tally_consumer_lag", "topic" => t.clone(), "partition" => p.to_string())
            .set(lag as f64);
        let mut all = readings
            .by_partition
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Only partitions still assigned keep a reading.
        if readings
            .assigned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|(at, ap)| at == t && ap == p)
        {
            all.entry((t.clone(), *p)).or_default().lag = Some(lag);
        }
    }
    Ok(())
}

/// Where one partition's task stands, as the poll loop sees it.
#[derive(Debug, Clone, Copy)]
pub(super) enum TaskView {
    /// No task: its store could not be opened yet.
    Blocked,
    /// Restoring; `records` read so far by its restore.
    Restoring { records: u64 },
    /// Processing; `committed` is its committed position, `uncommitted` whether it processed
    /// records its last commit does not hold.
    Active { committed: i64, uncommitted: bool },
}

/// One partition's progress record.
#[derive(Debug, Clone, Copy)]
struct Progress {
    /// The committed position last seen while active, to tell when it moves.
    committed: Option<i64>,
    /// Records its restore had read at the last look.
    restored: u64,
    /// Since when work has waited without progress.
    waiting_since: Option<Instant>,
}

/// The poll loop's stall tracker.
#[derive(Default)]
pub(super) struct Stalls {
    progress: HashMap<(String, i32), Progress>,
    last_rollback: Option<Instant>,
}

impl Stalls {
    /// A commit failed and everything rolled back: restores that follow are no progress.
    pub(super) fn rolled_back(&mut self) {
        self.last_rollback = Some(Instant::now());
    }

    /// Counts the partitions whose work waited `timeout` without progress.
    pub(super) fn check(
        &mut self,
        readings: &Readings,
        tasks: &[((String, i32), TaskView)],
        timeout: Duration,
    ) -> usize {
        let now = Instant::now();
        self.progress
            .retain(|k, _| tasks.iter().any(|(t, _)| t == k));
        let mut stalled = 0;
        for (part, view) in tasks {
            let reading = readings.get(&part.0, part.1);
            let broker_lag = reading.lag.unwrap_or(0) > 0;
            let (pending, committed, restored) = match *view {
                TaskView::Blocked => (broker_lag, None, 0),
                TaskView::Restoring { records } => (true, None, records),
                TaskView::Active {
                    committed,
                    uncommitted,
                } => {
                    // The fetcher skips transaction markers the committed offset cannot pass:
                    // it says whether input waits, where the consumer reports it.
                    let waiting = match reading.fetch {
                        Some((next, stable)) => next < stable,
                        None => broker_lag,
                    };
                    (uncommitted || waiting, Some(committed), 0)
                }
            };
            let p = self.progress.entry(part.clone()).or_insert(Progress {
                committed,
                restored,
                waiting_since: None,
            });
            // A restore that reads on counts as progress, unless restores keep following
            // rollbacks (a commit that fails again and again).
            let restore_moved = restored > p.restored
                && self
                    .last_rollback
                    .is_none_or(|r| p.waiting_since.is_none_or(|w| r < w));
            let commit_moved = matches!((p.committed, committed), (Some(a), Some(b)) if a != b);
            let moved = commit_moved || restore_moved;
            p.committed = committed.or(p.committed);
            p.restored = restored;
            if !pending || moved {
                p.waiting_since = pending.then_some(now);
                continue;
            }
            let since = *p.waiting_since.get_or_insert(now);
            if now - since >= timeout {
                stalled += 1;
                tracing::warn!(topic = %part.0, partition = part.1, ?view,
                    waited_s = (now - since).as_secs(), "partition makes no progress");
            }
        }
        stalled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part() -> (String, i32) {
        ("in".to_string(), 0)
    }

    fn readings(lag: i64) -> Readings {
        let r = Readings::default();
        r.set_assigned(vec![part()]);
        r.by_partition.lock().unwrap().insert(
            part(),
            Reading {
                lag: Some(lag),
                fetch: None,
            },
        );
        r
    }

    const T: Duration = Duration::from_millis(30);

    fn after_timeout(s: &mut Stalls, r: &Readings, view: TaskView) -> usize {
        s.check(r, &[(part(), view)], T);
        std::thread::sleep(T + Duration::from_millis(10));
        s.check(r, &[(part(), view)], T)
    }

    #[test]
    fn a_blocked_partition_with_input_stalls() {
        let mut s = Stalls::default();
        assert_eq!(after_timeout(&mut s, &readings(5), TaskView::Blocked), 1);
    }

    #[test]
    fn a_blocked_partition_without_input_does_not() {
        let mut s = Stalls::default();
        assert_eq!(after_timeout(&mut s, &readings(0), TaskView::Blocked), 0);
    }

    #[test]
    fn uncommitted_work_that_never_commits_stalls() {
        let mut s = Stalls::default();
        let view = TaskView::Active {
            committed: 10,
            uncommitted: true,
        };
        assert_eq!(after_timeout(&mut s, &readings(0), view), 1);
    }

    #[test]
    fn an_idle_caught_up_partition_does_not() {
        let mut s = Stalls::default();
        let view = TaskView::Active {
            committed: 10,
            uncommitted: false,
        };
        let r = readings(1);
        // The consumer fetched past a trailing transaction marker the commit cannot pass.
        r.fetched("in", 0, 11, 11);
        assert_eq!(after_timeout(&mut s, &r, view), 0);
    }

    #[test]
    fn restores_after_rollbacks_are_no_progress() {
        let mut s = Stalls::default();
        let r = readings(3);
        s.check(&r, &[(part(), TaskView::Restoring { records: 1 })], T);
        s.rolled_back();
        std::thread::sleep(T + Duration::from_millis(10));
        let got = s.check(&r, &[(part(), TaskView::Restoring { records: 2 })], T);
        assert_eq!(got, 1);
    }

    #[test]
    fn a_long_restore_that_reads_on_does_not_stall() {
        let mut s = Stalls::default();
        let r = readings(3);
        s.check(&r, &[(part(), TaskView::Restoring { records: 1 })], T);
        std::thread::sleep(T + Duration::from_millis(10));
        let got = s.check(&r, &[(part(), TaskView::Restoring { records: 500 })], T);
        assert_eq!(got, 0);
    }
}
