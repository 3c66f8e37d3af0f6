//! The dedupe index of one store: every applied event id in memory, so a lookup is a hash probe,
//! backed by an append-only log file, so a restart reads it back instead of the changelog.

mod file;
mod ids;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use crate::dedupe::DedupeEntry;
use crate::error::StateError;
use crate::expiry::Expiry;
pub use file::DEDUPE_LOG_VERSION;
use file::{Change, LogFile};
use ids::Ids;

/// The log is rewritten with only its live entries once it is this much larger than they are
/// (plus [`REWRITE_SLACK`]): removes and replaced puts are then most of it.
const REWRITE_FACTOR: u64 = 2;
const REWRITE_SLACK: u64 = if cfg!(test) { 64 } else { 16 * 1024 * 1024 };

/// Applied event ids and their entries, shared by a store's handles.
pub(crate) struct DedupeIndex {
    inner: Mutex<Inner>,
}

struct Inner {
    live: Live,
    log: LogFile,
    expiry: Expiry,
}

/// The ids in memory (in insertion order, so the expiry sweep can resume at an index), and the
/// bytes they would take in a freshly written log.
#[derive(Default)]
struct Live {
    ids: Ids,
    bytes: u64,
}

impl Live {
    fn put(&mut self, id: &[u8], entry: DedupeEntry) -> Result<(), StateError> {
        if self
            .ids
            .insert(id, entry)
            .map_err(|_| StateError::IndexFull)?
        {
            self.bytes += record_len(id);
        }
        Ok(())
    }

    /// Removes `id`; returns the entry that moved into its place (the last one), if any.
    fn remove(&mut self, id: &[u8]) -> Option<DedupeEntry> {
        let (_, moved) = self.ids.swap_remove(id)?;
        self.bytes -= record_len(id);
        moved
    }
}

impl DedupeIndex {
    /// Reads the index back from its log in `dir` (creating an empty one).
    pub(crate) fn open(dir: &Path) -> Result<Self, StateError> {
        let mut live = Live::default();
        let mut full = Ok(());
        let log = LogFile::open(dir, |change| match change {
            Change::Put(id, entry) => {
                if full.is_ok() {
                    full = live.put(id, entry);
                }
            }
            Change::Remove(id) => {
                live.remove(id);
            }
        })?;
        full?;
        Ok(Self {
            inner: Mutex::new(Inner {
                live,
                log,
                expiry: Expiry::default(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The entry of `id`, if it was applied and not removed.
    pub(crate) fn get(&self, id: &[u8]) -> Option<DedupeEntry> {
        self.lock().live.ids.get(id).copied()
    }

    /// Applies puts (`Some`) and removes (`None`) of the batch whose checkpoint names
    /// `changelog_offset`, in order: first to the log, as one frame, then to memory. A batch with
    /// a checkpoint always writes its frame, so the log shows it is as new as the checkpoint.
    pub(crate) fn apply<'a>(
        &self,
        changes: impl Iterator<Item = (&'a [u8], Option<DedupeEntry>)> + Clone,
        changelog_offset: Option<i64>,
    ) -> Result<(), StateError> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let mut changes = changes.peekable();
        if changes.peek().is_none() && changelog_offset.is_none() {
            return Ok(());
        }
        let offset = changelog_offset
            .or(inner.log.last_offset)
            .unwrap_or(i64::MIN);
        let logged = changes.clone();
        inner.log.append(offset, |out| {
            for (id, entry) in logged {
                match entry {
                    Some(e) => file::encode_put(id, &e, out),
                    None => file::encode_remove(id, out),
                }
            }
        })?;
        for (id, entry) in changes {
            match entry {
                Some(e) => {
                    // Before the insert, so no sweep can miss an entry older than its floor.
                    inner.expiry.written(e.event_time_ms);
                    inner.live.put(id, e)?;
                }
                // The last entry moved into the hole, maybe behind the sweep's cursor: the
                // current cycle counts it as seen.
                None => {
                    if let Some(moved) = inner.live.remove(id) {
                        inner.expiry.saw(moved.event_time_ms);
                    }
                }
            }
        }
        if inner.log.len > REWRITE_FACTOR * inner.live.bytes + REWRITE_SLACK {
            inner.log.rewrite(inner.live.ids.iter())?;
        }
        Ok(())
    }

    /// Entries whose event time is before `before_ms`, found by examining the next `scan`
    /// entries (resuming where the last call stopped, wrapping at the end). Once a whole cycle
    /// showed that no entry is that old, it examines none.
    pub(crate) fn expired(&self, before_ms: i64, scan: usize) -> Vec<(Vec<u8>, i64)> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        if !inner.expiry.may_hold_older_than(before_ms) {
            return Vec::new();
        }
        let start = (*inner.expiry.cursor()).min(inner.live.ids.len());
        let end = start.saturating_add(scan).min(inner.live.ids.len());
        let mut out = Vec::new();
        for (id, e) in (start..end).filter_map(|i| inner.live.ids.get_index(i)) {
            inner.expiry.saw(e.event_time_ms);
            if e.event_time_ms < before_ms {
                out.push((id.to_vec(), e.event_time_ms));
            }
        }
        if end == inner.live.ids.len() {
            inner.expiry.wrapped();
        } else {
            inner.expiry.stopped_at(end);
        }
        out
    }

    /// Whether an entry older than `before_ms` may be in the index (false once a whole sweep
    /// cycle showed none is).
    pub(crate) fn may_hold_older_than(&self, before_ms: i64) -> bool {
        self.lock().expiry.may_hold_older_than(before_ms)
    }

    /// The newest event time of any entry (none when the index is empty).
    pub(crate) fn max_event_time(&self) -> Option<i64> {
        self.lock()
            .live
            .ids
            .iter()
            .map(|(_, e)| e.event_time_ms)
            .max()
    }

    /// Every entry, in id order.
    pub(crate) fn entries(&self) -> Vec<(Vec<u8>, DedupeEntry)> {
        let mut all: Vec<_> = self
            .lock()
            .live
            .ids
            .iter()
            .map(|(id, e)| (id.to_vec(), *e))
            .collect();
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Removes every entry, on disk too.
    pub(crate) fn clear(&self) -> Result<(), StateError> {
        let mut inner = self.lock();
        inner.live = Live::default();
        inner.expiry.forget();
        inner.log.clear()
    }

    /// Entries were written behind the sweep's back (a restore): it knows nothing any more.
    pub(crate) fn forget_expiry(&self) {
        self.lock().expiry.forget();
    }

    /// The changelog offset of the newest batch in the log (none when it holds no batch).
    pub(crate) fn last_offset(&self) -> Option<i64> {
        self.lock().log.last_offset
    }

    /// Bytes of the log on disk.
    pub(crate) fn size_on_disk(&self) -> u64 {
        self.lock().log.len
    }
}

/// A staged change: the id's place in the buffer, and the entry to put (none: remove).
type StagedChange = (std::ops::Range<usize>, Option<DedupeEntry>);

/// Dedupe puts and removes of one batch, in the order they were staged, packed in one buffer.
#[derive(Default)]
pub(crate) struct Changes {
    ids: Vec<u8>,
    ops: Vec<StagedChange>,
}

impl Changes {
    /// Stages a put (`Some`) or a remove (`None`) of `id`.
    pub(crate) fn push(&mut self, id: &[u8], entry: Option<DedupeEntry>) {
        let start = self.ids.len();
        self.ids.extend_from_slice(id);
        self.ops.push((start..self.ids.len(), entry));
    }

    /// Bytes the staged changes hold, for bounding a restore chunk.
    pub(crate) fn bytes(&self) -> usize {
        self.ids.len() + self.ops.len() * std::mem::size_of::<StagedChange>()
    }

    /// Forgets every staged change, keeping the buffers.
    pub(crate) fn clear(&mut self) {
        self.ids.clear();
        self.ops.clear();
    }

    /// The staged changes, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], Option<DedupeEntry>)> + Clone {
        self.ops.iter().map(|(r, e)| (&self.ids[r.clone()], *e))
    }
}

/// Bytes of `id`'s put record in the log.
fn record_len(id: &[u8]) -> u64 {
    (1 + 2 + id.len() + crate::dedupe::ENCODED_LEN) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(t: i64) -> DedupeEntry {
        DedupeEntry {
            fingerprint: 7,
            event_time_ms: t,
            offset: t,
        }
    }

    fn put(index: &DedupeIndex, id: &str, t: i64) {
        index
            .apply(std::iter::once((id.as_bytes(), Some(entry(t)))), Some(t))
            .unwrap();
    }

    fn remove(index: &DedupeIndex, id: &str) {
        index
            .apply(std::iter::once((id.as_bytes(), None)), None)
            .unwrap();
    }

    #[test]
    fn a_log_mostly_of_removes_is_rewritten_with_the_live_entries_only() {
        let dir = tempfile::tempdir().unwrap();
        let index = DedupeIndex::open(dir.path()).unwrap();
        for i in 0..50 {
            put(&index, &format!("gone-{i}"), i);
            remove(&index, &format!("gone-{i}"));
        }
        put(&index, "kept", 99);
        let len = index.size_on_disk();
        assert!(len < 200, "the log was not rewritten: {len} bytes");
        drop(index);
        let index = DedupeIndex::open(dir.path()).unwrap();
        assert_eq!(index.get(b"kept"), Some(entry(99)));
        assert_eq!(index.entries().len(), 1);
    }

    #[rstest::rstest]
    #[case::cut_short(|b: &mut Vec<u8>| b.truncate(b.len() - 3))]
    #[case::flipped_bits(|b: &mut Vec<u8>| { let mid = b.len() / 2; b[mid] ^= 0x5a; })]
    #[case::a_stray_tail(|b: &mut Vec<u8>| b.extend_from_slice(&[0, 0, 0, 1]))]
    fn a_damaged_log_is_unreadable_rather_than_partly_read(#[case] damage: fn(&mut Vec<u8>)) {
        let dir = tempfile::tempdir().unwrap();
        let index = DedupeIndex::open(dir.path()).unwrap();
        for i in 0..20 {
            put(&index, &format!("id-{i}"), i);
        }
        drop(index);
        let path = dir.path().join(file::FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        damage(&mut bytes);
        std::fs::write(&path, bytes).unwrap();
        assert!(matches!(
            DedupeIndex::open(dir.path()),
            Err(StateError::Corrupt { .. })
        ));
    }

    #[test]
    fn the_log_knows_the_checkpoint_of_its_last_batch_across_a_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let index = DedupeIndex::open(dir.path()).unwrap();
        assert_eq!(index.last_offset(), None);
        put(&index, "a", 5);
        index.apply(std::iter::empty(), Some(9)).unwrap();
        assert_eq!(index.last_offset(), Some(9));
        for i in 0..50 {
            put(&index, &format!("gone-{i}"), 9);
            remove(&index, &format!("gone-{i}"));
        }
        drop(index);
        let index = DedupeIndex::open(dir.path()).unwrap();
        assert_eq!(index.last_offset(), Some(9));
        assert_eq!(index.get(b"a"), Some(entry(5)));
    }

    #[test]
    fn a_log_of_a_newer_format_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        put(&DedupeIndex::open(dir.path()).unwrap(), "a", 1);
        let path = dir.path().join(file::FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[4] = 9;
        std::fs::write(&path, bytes).unwrap();
        let err = DedupeIndex::open(dir.path())
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("format version 9"), "{err}");
    }
}
