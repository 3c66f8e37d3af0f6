//! What a store writes at once: a committed transaction's changes (`CommitBatch`) or a chunk of
//! changelog records read back during a restore (`RestoreBatch`), each with its checkpoint.

use crate::bundle;
use crate::changelog::{ChangelogKey, RecordKind};
use crate::checkpoint::Checkpoint;
use crate::dedupe::DedupeEntry;
use crate::dedupe_index::Changes;
use crate::error::StateError;
use crate::writes::Writes;

/// Store key of the newest event time among dedupe entries that came from per-id changelog
/// records (an older tally's): while it is set, their expiry sends per-id tombstones too.
pub(crate) const LEGACY_KEY: &[u8] = b"m/legacy-dedupe";

/// Bytes of state writes a restore chunk holds before it is applied, each chunk followed by a
/// checkpoint. A chunk keeps one write per key, so hot keys of a changelog not yet compacted cost
/// neither memory nor repeated sled inserts: a chunk that holds a partition's keys writes each
/// once (at 1M keys, 12 partitions, the states of one partition take about 12 MiB).
pub const RESTORE_CHUNK_BYTES: usize = 16 << 20;

/// Bytes of dedupe entries a restore chunk holds before they go to the index ahead of the
/// chunk's states ([`crate::Store::restore_dedupe`]): event ids never repeat, so holding them
/// longer spares nothing, and they would otherwise cut the chunk short (at 1M keys they were
/// 40% of its bytes and took it to 1.9 sled inserts per key).
pub const RESTORE_DEDUPE_BYTES: usize = 4 << 20;

/// The writes of one committed transaction, then its checkpoint.
#[derive(Default)]
pub struct CommitBatch {
    pub(crate) writes: Writes,
    pub(crate) dedupe: Changes,
    pub(crate) checkpoint: Option<Checkpoint>,
    /// Oldest newest-event-time of the bundles the batch adds, for the bundle sweep.
    pub(crate) oldest_bundle: Option<i64>,
}

impl CommitBatch {
    /// Stages the new encoded state of an aggregate key.
    pub fn put_state(&mut self, key: &[u8], value: &[u8]) {
        self.writes
            .push(Some(RecordKind::State.tag()), key, Some(value));
    }

    /// Stages a newly applied event id.
    pub fn put_dedupe(&mut self, event_id: &[u8], entry: DedupeEntry) {
        self.dedupe.push(event_id, Some(entry));
    }

    /// Stages the expiry of an event id.
    pub fn remove_dedupe(&mut self, event_id: &[u8]) {
        self.dedupe.push(event_id, None);
    }

    /// Stages a shipped bundle (by its changelog key), so the sweep can expire it later.
    pub fn put_bundle(&mut self, changelog_key: &[u8], max_event_time_ms: i64) {
        let row = bundle::encode_time(max_event_time_ms);
        self.writes.push(None, changelog_key, Some(&row));
        self.oldest_bundle = Some(
            self.oldest_bundle
                .map_or(max_event_time_ms, |t| t.min(max_event_time_ms)),
        );
    }

    /// Stages the expiry of a bundle whose tombstone was sent.
    pub fn remove_bundle(&mut self, changelog_key: &[u8]) {
        self.writes.push(None, changelog_key, None);
    }

    /// Stages the end of the legacy expiry (every entry of per-id records is gone).
    pub fn end_legacy(&mut self) {
        self.writes.push(None, LEGACY_KEY, None);
    }

    /// Stages the checkpoint that describes the batch; it is written last.
    pub fn set_checkpoint(&mut self, cp: Checkpoint) {
        self.checkpoint = Some(cp);
    }
}

/// A chunk of changelog records read during restore, with the checkpoint reached after it.
/// Records are copied once, into one buffer, and the last value per key wins.
#[derive(Default)]
pub struct RestoreBatch {
    pub(crate) writes: Writes,
    pub(crate) dedupe: Changes,
    records: usize,
    max_event_time_ms: Option<i64>,
    /// Newest event time among entries read from per-id records (an older tally's).
    pub(crate) legacy_max: Option<i64>,
    /// The first record that is not a changelog record of this build; the chunk is refused.
    pub(crate) invalid: Option<StateError>,
    /// Dedupe entries older than this are left out (see [`RestoreBatch::into_empty_store`]).
    expired_below: Option<i64>,
    /// The positions the store reaches once the chunk is applied.
    pub checkpoint: Checkpoint,
}

impl RestoreBatch {
    /// A chunk for a store restored from empty whose dedupe entries below `bound` (the committed
    /// watermark minus the retention) count as expired anyway: lookups ignore them, so they are
    /// not written. An uncompacted changelog holds many (their tombstones follow later in the
    /// log). Only for an empty store: in another, the entry may replace an older one of its id.
    pub fn into_empty_store(bound: i64) -> Self {
        Self {
            expired_below: Some(bound),
            ..Self::default()
        }
    }

    /// Adds one changelog record; a later record of the same key replaces an earlier one.
    pub fn push(&mut self, key: &[u8], value: Option<&[u8]>) {
        if self.invalid.is_some() {
            return;
        }
        let kind = match ChangelogKey::parse(key) {
            Ok(k) => k.kind,
            Err(e) => {
                self.invalid = Some(e);
                return;
            }
        };
        self.records += 1;
        match (kind, value) {
            (RecordKind::State, _) | (RecordKind::Bundle, None) => {
                self.writes.push(None, key, value)
            }
            (RecordKind::Dedupe, None) => self.dedupe.push(&key[1..], None),
            (RecordKind::Dedupe, Some(v)) => match DedupeEntry::decode(v) {
                Ok(e) => {
                    self.legacy_max = self.legacy_max.max(Some(e.event_time_ms));
                    self.entry(&key[1..], e);
                }
                Err(e) => self.invalid = Some(e),
            },
            (RecordKind::Bundle, Some(v)) => {
                let mut newest = i64::MIN;
                let decoded = bundle::decode_bundle(v, |id, e| {
                    newest = newest.max(e.event_time_ms);
                    self.entry(id, e);
                });
                match decoded {
                    Ok(()) => self
                        .writes
                        .push(None, key, Some(&bundle::encode_time(newest))),
                    Err(e) => self.invalid = Some(e),
                }
            }
        }
    }

    /// One dedupe entry read back, unless it is already expired for an empty store.
    fn entry(&mut self, id: &[u8], e: DedupeEntry) {
        self.max_event_time_ms = self.max_event_time_ms.max(Some(e.event_time_ms));
        let expired = self.expired_below.is_some_and(|b| e.event_time_ms < b);
        if !expired {
            self.dedupe.push(id, Some(e));
        }
    }

    /// Highest event time among the chunk's dedupe entries: the partition's watermark is at
    /// least this.
    pub fn max_event_time_ms(&self) -> Option<i64> {
        self.max_event_time_ms
    }

    /// Number of records pushed (written or left out).
    pub fn len(&self) -> usize {
        self.records
    }

    /// Whether the chunk holds [`RESTORE_CHUNK_BYTES`] of writes and is due to be applied.
    pub fn is_full(&self) -> bool {
        self.writes.bytes() >= RESTORE_CHUNK_BYTES
    }

    /// Whether the chunk holds [`RESTORE_DEDUPE_BYTES`] of dedupe entries, due to go to the
    /// index ahead of the states.
    pub fn dedupe_is_full(&self) -> bool {
        self.dedupe.bytes() >= RESTORE_DEDUPE_BYTES
    }

    /// Empties the chunk for the next records, keeping its buffers and the bound of
    /// [`RestoreBatch::into_empty_store`].
    pub(crate) fn clear(&mut self) {
        self.writes.clear();
        self.dedupe.clear();
        self.records = 0;
        self.max_event_time_ms = None;
        self.legacy_max = None;
        self.invalid = None;
        self.checkpoint = Checkpoint::default();
    }

    /// Whether no record was pushed.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }
}
