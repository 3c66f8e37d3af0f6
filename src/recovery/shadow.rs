//! The shadow fold: a replay's rebuild of scoped state from the authoritative history, in memory,
//! apart from the live store; it dedupes, dead-letters and counts exactly as a task does.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tally_topology::{Guard, Projection, SourceRef};

use super::scope::Scope;
use crate::input::{InputReader, Read};
use crate::kafka::record::InputRecord;

/// What the fold saw of one key's history (or of keyless poison, under the empty key).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub events_processed: u64,
    pub duplicates_skipped: u64,
    pub duplicate_conflicts: u64,
    pub late_events_accepted: u64,
    pub dead_lettered: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.events_processed += o.events_processed;
        self.duplicates_skipped += o.duplicates_skipped;
        self.duplicate_conflicts += o.duplicate_conflicts;
        self.late_events_accepted += o.late_events_accepted;
        self.dead_lettered += o.dead_lettered;
    }
}

struct Seen {
    fingerprint: u64,
    event_time_ms: i64,
}

#[derive(Default)]
struct PartitionFold {
    seen: HashMap<String, Seen>,
    watermark: Option<i64>,
}

impl PartitionFold {
    /// Remembers an applied id and moves the partition's event-time watermark.
    fn mark(&mut self, id: &str, fingerprint: u64, event_time_ms: i64) {
        self.seen.insert(
            id.to_owned(),
            Seen {
                fingerprint,
                event_time_ms,
            },
        );
        self.watermark = Some(
            self.watermark
                .map_or(event_time_ms, |w| w.max(event_time_ms)),
        );
    }
}

/// One applied event, for `--explain`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Applied {
    pub partition: i32,
    pub offset: i64,
    pub event_id: String,
    pub event_time: String,
    pub schema_version: u32,
    /// The record as it was sent.
    pub record: serde_json::Value,
}

/// A key's rebuilt state with what it took.
pub struct Rebuilt<S> {
    pub state: S,
    /// Latest event time of the key's applied events.
    pub max_event_time_ms: i64,
}

/// The shadow store of one replay.
pub struct Shadow<P: Projection> {
    scope: Scope,
    retention_ms: i64,
    late_tolerance_ms: i64,
    /// The contract's invariants, refused as the live flow refuses them.
    guard: Guard,
    partitions: HashMap<i32, PartitionFold>,
    pub states: BTreeMap<String, Rebuilt<P::State>>,
    counts: HashMap<String, Counts>,
    /// Keys an applied event inside the scope's windows selected.
    selected: BTreeSet<String>,
    pub schema_versions: BTreeSet<u32>,
    pub event_time_range: Option<(i64, i64)>,
    /// Time travel: events with a later event time have not happened yet.
    pub as_of_ms: Option<i64>,
    /// Every applied event of the scoped keys, when asked for.
    pub trail: Option<Vec<Applied>>,
}

impl<P: Projection> Shadow<P> {
    /// An empty shadow; `retention_ms`, `late_tolerance_ms` and `guard` as the flow runs with.
    pub fn new(scope: Scope, retention_ms: i64, late_tolerance_ms: i64, guard: Guard) -> Self {
        Self {
            scope,
            retention_ms,
            late_tolerance_ms,
            guard,
            partitions: HashMap::new(),
            states: BTreeMap::new(),
            counts: HashMap::new(),
            selected: BTreeSet::new(),
            schema_versions: BTreeSet::new(),
            event_time_range: None,
            as_of_ms: None,
            trail: None,
        }
    }

    fn count(&mut self, key: &[u8]) -> &mut Counts {
        let k = String::from_utf8_lossy(key);
        if !self.counts.contains_key(k.as_ref()) {
            self.counts.insert(k.to_string(), Counts::default());
        }
        self.counts.get_mut(k.as_ref()).expect("inserted above")
    }

    /// Folds one input record as the flow reads it (a record the flow skips is not history).
    pub fn read(&mut self, reader: &InputReader, record: &InputRecord<'_>) {
        match reader.read(record) {
            Read::Event { key, value, .. } => {
                self.record(
                    record.partition,
                    record.offset,
                    key.as_deref(),
                    Some(&value),
                );
            }
            Read::Skip(_) => {}
            Read::Refused(_) => self.record(record.partition, record.offset, record.key, None),
        }
    }

    /// Folds one input record; records of a partition must come in offset order. Every record is
    /// decoded (a conflict may span keys); only in-scope keys keep state.
    pub fn record(
        &mut self,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) {
        let record_key = key.unwrap_or_default();
        let wanted = self.scope.wants_key(record_key);
        let Some(value) = value else {
            if wanted {
                self.count(record_key).dead_lettered += 1;
            }
            return;
        };
        let ev = match P::decode(key, value) {
            Ok(ev) => ev,
            Err(_) => {
                if wanted {
                    self.count(record_key).dead_lettered += 1;
                }
                return;
            }
        };
        if self.as_of_ms.is_some_and(|t| P::event_time_ms(&ev) > t) {
            return;
        }
        let pf = self.partitions.entry(partition).or_default();
        let id = P::event_id(&ev);
        let fingerprint = P::fingerprint(&ev);
        let bound = pf
            .watermark
            .map_or(i64::MIN, |w| w.saturating_sub(self.retention_ms));
        let dup = pf
            .seen
            .get(id)
            .filter(|s| s.event_time_ms >= bound)
            .map(|s| s.fingerprint == fingerprint);
        let agg = P::aggregate_key(&ev).to_owned();
        let wanted = self.scope.wants_key(agg.as_bytes());
        match dup {
            Some(true) => {
                if wanted {
                    self.count(agg.as_bytes()).duplicates_skipped += 1;
                }
                return;
            }
            Some(false) => {
                if wanted {
                    let c = self.count(agg.as_bytes());
                    c.duplicate_conflicts += 1;
                    c.dead_lettered += 1;
                }
                return;
            }
            None => {}
        }
        let time = P::event_time_ms(&ev);
        let source = SourceRef { partition, offset };
        // Keys outside the scope still mark their ids (a later conflict may name them), but keep
        // no state; their events are applied to nothing.
        if !wanted {
            pf.mark(id, fingerprint, time);
            return;
        }
        let prev = self.states.get(&agg);
        let late = prev.is_some_and(|r| {
            time < P::last_event_time_ms(&r.state).saturating_sub(self.late_tolerance_ms)
        });
        match P::apply(prev.map(|r| &r.state), &ev, source, &self.guard) {
            Ok(state) => {
                let max = prev.map_or(time, |r| r.max_event_time_ms.max(time));
                let version = P::schema_version(&ev);
                pf.mark(id, fingerprint, time);
                self.states.insert(
                    agg.clone(),
                    Rebuilt {
                        state,
                        max_event_time_ms: max,
                    },
                );
                self.schema_versions.insert(version);
                self.event_time_range = Some(match self.event_time_range {
                    Some((lo, hi)) => (lo.min(time), hi.max(time)),
                    None => (time, time),
                });
                if self.scope.selects(partition, offset, time) {
                    self.selected.insert(agg.clone());
                }
                if let Some(trail) = &mut self.trail {
                    trail.push(Applied {
                        partition,
                        offset,
                        event_id: P::event_id(&ev).to_string(),
                        event_time: tally_topology::time::render_event_time(time),
                        schema_version: version,
                        record: serde_json::from_slice(value).unwrap_or_default(),
                    });
                }
                let c = self.count(agg.as_bytes());
                c.events_processed += 1;
                c.late_events_accepted += u64::from(late);
            }
            Err(_) => self.count(agg.as_bytes()).dead_lettered += 1,
        }
    }

    /// Whether `key` is in the replay's scope, given what the history showed.
    pub fn in_scope(&self, key: &str) -> bool {
        self.scope.wants_key(key.as_bytes())
            && (!self.scope.by_events() || self.selected.contains(key))
    }

    /// Sum of the counts of the keys in scope (keyless poison counts when no key is scoped).
    pub fn totals(&self) -> Counts {
        let mut t = Counts::default();
        for (k, c) in &self.counts {
            let keyless_ok = k.is_empty() && self.scope.key.is_none() && !self.scope.by_events();
            if keyless_ok || self.in_scope(k) {
                t.add(c);
            }
        }
        t
    }
}
