//! The task's decisions, without a broker: a task of a small test projection over a store in a
//! temporary directory, shipping into a list.

mod dedupe;
mod hold;
mod input;
mod seal;
mod sum;

use std::collections::HashMap;
use std::sync::Arc;

use tally_state::{ChangelogKey, RecordKind, Store, StoreOptions};
use tally_topology::Guard;

use super::outbox::Kept;
use super::{Ahead, Restored, Task, TaskOps};
use crate::engine::commit::store::StoreWriter;
use crate::engine::FlowInfo;
use crate::kafka::limits::RecordLimit;
use crate::kafka::record::InputRecord;
use sum::{Sum, Total};

const OUTPUT: &str = "out";
const CHANGELOG: &str = "changelog";
const DEAD_LETTER: &str = "dlq";
/// Long enough that nothing in a test leaves the dedupe window.
const RETENTION_MS: i64 = 86_400_000;

/// A task of [`Sum`] on partition 0, and what it shipped.
struct Harness {
    task: Task<Sum>,
    /// Changelog records shipped so far: the changelog's end as Kafka would acknowledge it.
    changelog_sent: i64,
    _dir: tempfile::TempDir,
}

fn flow() -> Arc<FlowInfo> {
    flow_reading(crate::input::InputReader::default())
}

/// The flow, reading its input with `reader`.
fn flow_reading(reader: crate::input::InputReader) -> Arc<FlowInfo> {
    Arc::new(FlowInfo {
        idx: 0,
        name: "sums".into(),
        projection: crate::engine::Projector::of::<Sum>(),
        input: "in".into(),
        output: OUTPUT.into(),
        dead_letter: DEAD_LETTER.into(),
        changelog: CHANGELOG.into(),
        partitions: 1,
        dedupe_retention_ms: RETENTION_MS,
        control: "control".into(),
        evidence: "evidence".into(),
        record_limit: RecordLimit::default(),
        reader,
        guard: Guard::none(),
        partitioner: Default::default(),
    })
}

/// No output was left ahead of the states by a crash.
fn nothing_ahead() -> Ahead {
    Ahead {
        horizon: 0,
        output_end: 0,
        keys: Some(HashMap::default()),
    }
}

impl Harness {
    /// An active task over an empty store.
    fn active() -> Self {
        Self::restored(|_| {}, 0, nothing_ahead())
    }

    /// A task restored to input offset `committed` over a store `prepare` wrote, with what the
    /// restore found `ahead`.
    fn restored(prepare: impl FnOnce(&Store), committed: i64, ahead: Ahead) -> Self {
        let mut h = Self::restoring(prepare);
        h.task.activate(Restored {
            committed,
            records: 0,
            full: false,
            changelog_end: 0,
            ahead,
        });
        h
    }

    /// An active task over an empty store whose flow reads its input with `reader`.
    fn reading(reader: crate::input::InputReader) -> Self {
        let mut h = Self::active();
        h.task.flow = flow_reading(reader);
        h
    }

    /// A task that has not finished its restore.
    fn restoring(prepare: impl FnOnce(&Store)) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = Store::open(&dir.path().join("store"), StoreOptions::default())
            .expect("a new store opens");
        prepare(&store);
        let writer = StoreWriter::start().expect("the writer thread starts");
        Self {
            task: Task::new(flow(), 0, store, writer, 1 << 20),
            changelog_sent: 0,
            _dir: dir,
        }
    }

    /// Processes `{"id", "key", "n"}` at `offset`, all at one event time (a redelivery has the
    /// same content wherever it lands).
    fn add(&mut self, offset: i64, id: &str, key: &str, n: i64) {
        let json = format!(r#"{{"id":"{id}","key":"{key}","n":{n},"t":1000}}"#);
        self.record(offset, Some(key.as_bytes()), Some(json.as_bytes()));
    }

    /// Processes a raw record at `offset`.
    fn record(&mut self, offset: i64, key: Option<&[u8]>, value: Option<&[u8]>) {
        let record = InputRecord {
            partition: 0,
            offset,
            key,
            value,
            timestamp_ms: None,
            headers: &(),
        };
        self.task.process(&record).expect("the store answers");
    }

    /// Ships what was staged since the last call.
    fn ship(&mut self) -> Vec<Kept> {
        let mut out = Vec::new();
        self.task.ship(&mut out).expect("a list takes every record");
        self.count(&out);
        out
    }

    /// Ships the rest, seals the batch and commits it as Kafka would; returns what it shipped.
    fn seal(&mut self) -> Vec<Kept> {
        let mut out = Vec::new();
        self.task
            .produce(&mut out, RETENTION_MS)
            .expect("a list takes every record");
        self.count(&out);
        self.task.seal();
        out
    }

    /// Seals and commits the batch, and waits until it is in the store.
    fn commit(&mut self) -> Vec<Kept> {
        let out = self.seal();
        self.task
            .after_commit(self.changelog_sent)
            .expect("the store takes the batch");
        self.task.settle().expect("the batch is written");
        out
    }

    fn count(&mut self, out: &[Kept]) {
        self.changelog_sent += out.iter().filter(|k| k.topic == CHANGELOG).count() as i64;
    }

    /// The committed state of `key` in the store.
    fn stored(&self, key: &str) -> Option<Total> {
        let bytes = self
            .task
            .store
            .state(key.as_bytes())
            .expect("the store answers")?;
        Some(<Sum as tally_topology::Projection>::decode_state(&bytes).expect("a state we wrote"))
    }
}

/// What each shipped record is: `bundle` (dedupe entries), `state`, `output`, `dead letter`.
fn kinds(out: &[Kept]) -> Vec<&'static str> {
    out.iter()
        .map(|k| match k.topic.as_str() {
            CHANGELOG => {
                let key = k.key.as_deref().unwrap_or_default();
                match ChangelogKey::parse(key).map(|c| c.kind) {
                    Ok(RecordKind::State) => "state",
                    Ok(RecordKind::Bundle) => "bundle",
                    Ok(RecordKind::Dedupe) => "dedupe",
                    Err(_) => "bad changelog key",
                }
            }
            OUTPUT => "output",
            DEAD_LETTER => "dead letter",
            _ => "elsewhere",
        })
        .collect()
}

/// The outputs shipped, as (key, total), in order.
fn outputs(out: &[Kept]) -> Vec<(String, i64)> {
    out.iter()
        .filter(|k| k.topic == OUTPUT)
        .map(|k| {
            let v: serde_json::Value =
                serde_json::from_slice(k.value.as_deref().unwrap_or_default()).expect("JSON");
            (
                v["key"].as_str().unwrap_or("?").to_owned(),
                v["total"].as_i64().unwrap_or(i64::MIN),
            )
        })
        .collect()
}

/// The reasons of the dead letters shipped, in order.
fn dead_reasons(out: &[Kept]) -> Vec<String> {
    out.iter()
        .filter(|k| k.topic == DEAD_LETTER)
        .map(|k| {
            k.headers
                .iter()
                .find(|(name, _)| name == "tally.error.reason")
                .and_then(|(_, v)| v.as_deref())
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        })
        .collect()
}
