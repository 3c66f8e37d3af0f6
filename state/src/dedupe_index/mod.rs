//! The dedupe index of one store: an append-only log file of every applied event id and its
//! entry, and in memory only where each live id's record sits, so a miss is a hash probe.

mod file;
mod keydir;

use std::hash::BuildHasher;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use crate::dedupe::DedupeEntry;
use crate::error::StateError;
use crate::expiry::Expiry;
pub use file::DEDUPE_LOG_VERSION;
use file::{Change, Cursor, LogFile};
use keydir::Keydir;

/// The log is rewritten with only its live entries once it is this much larger than they are
/// (plus [`REWRITE_SLACK`]): removes and replaced puts are then most of it.
const REWRITE_FACTOR: u64 = 2;
const REWRITE_SLACK: u64 = if cfg!(test) { 64 } else { 16 * 1024 * 1024 };

/// The longest id the index holds: the log stores an id's length in two bytes and cuts a longer
/// one (event ids are validated short strings).
const MAX_ID_LEN: usize = u16::MAX as usize;

fn cut(id: &[u8]) -> &[u8] {
    &id[..id.len().min(MAX_ID_LEN)]
}

/// Applied event ids and their entries, shared by a store's handles.
pub(crate) struct DedupeIndex {
    inner: Mutex<Inner>,
}

struct Inner {
    live: Live,
    log: LogFile,
    expiry: Expiry<Cursor>,
    /// Scratch space for reading records.
    buf: Vec<u8>,
}

/// Where the live ids' records are, and the bytes they would take in a freshly written log.
#[derive(Default)]
struct Live {
    keys: Keydir,
    hasher: foldhash::fast::FixedState,
    bytes: u64,
}

impl Live {
    fn hash(&self, id: &[u8]) -> u64 {
        self.hasher.hash_one(id)
    }

    /// The position of `id`'s live record, confirmed by `is_it(pos)`.
    fn find(&self, id: &[u8], is_it: impl FnMut(u64) -> bool) -> Option<u64> {
        self.keys.find(self.hash(id), is_it)
    }

    /// `id`'s record is now the one at `pos`; `old` is where its previous one was, if any.
    fn put(&mut self, id: &[u8], pos: u64, old: Option<u64>) -> Result<(), StateError> {
        let hash = self.hash(id);
        match old {
            Some(old) => self.keys.replace(hash, old, pos),
            None => {
                self.bytes += record_len(id);
                self.keys.insert(hash, pos)
            }
        }
        .map_err(|_| StateError::IndexFull)
    }

    fn remove(&mut self, id: &[u8], pos: u64) {
        self.bytes -= record_len(id);
        self.keys.remove(self.hash(id), pos);
    }

    /// `id`'s live record is now the put at `put` (none: `id` was removed); `old` is where its
    /// live record was, if anywhere.
    fn change(&mut self, id: &[u8], put: Option<u64>, old: Option<u64>) -> Result<(), StateError> {
        match (put, old) {
            (Some(pos), old) => self.put(id, pos, old),
            (None, Some(old)) => {
                self.remove(id, old);
                Ok(())
            }
            (None, None) => Ok(()),
        }
    }

    /// Whether the put record at `pos` is `id`'s live one.
    fn holds(&self, id: &[u8], pos: u64) -> bool {
        self.keys.holds(self.hash(id), pos)
    }
}

impl DedupeIndex {
    /// Reads the index back from its log in `dir` (creating an empty one).
    pub(crate) fn open(dir: &Path) -> Result<Self, StateError> {
        let mut live = Live::default();
        let mut full = Ok(());
        // Candidates are confirmed against the records read so far.
        let log = LogFile::open(dir, |change, read| {
            let (id, put) = match change {
                Change::Put(id, _, pos) => (id, Some(pos)),
                Change::Remove(id) => (id, None),
            };
            let old = live.find(id, |p| file::id_in(read, p) == Some(id));
            if full.is_ok() {
                full = live.change(id, put, old);
            }
        })?;
        full?;
        Ok(Self {
            inner: Mutex::new(Inner {
                live,
                log,
                expiry: Expiry::default(),
                buf: Vec::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The entry of `id`, if it was applied and not removed.
    pub(crate) fn get(&self, id: &[u8]) -> Result<Option<DedupeEntry>, StateError> {
        let mut inner = self.lock();
        let Inner { live, log, buf, .. } = &mut *inner;
        Ok(find_record(live, log, buf, cut(id))?.map(|(_, e)| e))
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
        let mut puts = Vec::new();
        inner.log.append(offset, |out, at| {
            for (id, entry) in logged {
                match entry {
                    Some(e) => {
                        puts.push(at + out.len() as u64);
                        file::encode_put(cut(id), &e, out);
                    }
                    None => file::encode_remove(cut(id), out),
                }
            }
        })?;
        let mut puts = puts.into_iter();
        let Inner {
            live,
            log,
            expiry,
            buf,
        } = inner;
        for (id, entry) in changes {
            let id = cut(id);
            let old = find_record(live, log, buf, id)?.map(|(pos, _)| pos);
            let put = match entry {
                Some(e) => {
                    // Before the insert, so no sweep can miss an entry older than its floor.
                    expiry.written(e.event_time_ms);
                    Some(puts.next().ok_or_else(|| StateError::Corrupt {
                        what: "dedupe log",
                        detail: "a batch's puts went missing on their way to the log".into(),
                    })?)
                }
                None => None,
            };
            live.change(id, put, old)?;
        }
        if log.len > REWRITE_FACTOR * live.bytes + REWRITE_SLACK {
            rewrite(live, log)?;
            // Records moved: the sweep goes on from the start of the new log (what it learned
            // still holds: the entries are the same).
            expiry.stopped_at(Cursor::default());
        }
        Ok(())
    }

    /// Entries whose event time is before `before_ms`, found by examining the next `scan`
    /// records of the log (resuming where the last call stopped, wrapping at the end). Once a
    /// whole cycle showed that no entry is that old, it examines none.
    pub(crate) fn expired(
        &self,
        before_ms: i64,
        scan: usize,
    ) -> Result<Vec<(Vec<u8>, i64)>, StateError> {
        let mut inner = self.lock();
        let Inner {
            live,
            log,
            expiry,
            buf,
        } = &mut *inner;
        if !expiry.may_hold_older_than(before_ms) {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let next = walk_live(live, log, *expiry.cursor(), scan, buf, |id, e| {
            expiry.saw(e.event_time_ms);
            if e.event_time_ms < before_ms {
                out.push((id.to_vec(), e.event_time_ms));
            }
        })?;
        match next {
            Some(at) => expiry.stopped_at(at),
            None => expiry.wrapped(),
        }
        Ok(out)
    }

    /// Whether an entry older than `before_ms` may be in the index (false once a whole sweep
    /// cycle showed none is).
    pub(crate) fn may_hold_older_than(&self, before_ms: i64) -> bool {
        self.lock().expiry.may_hold_older_than(before_ms)
    }

    /// The newest event time of any entry (none when the index is empty).
    pub(crate) fn max_event_time(&self) -> Result<Option<i64>, StateError> {
        let mut newest = None;
        self.for_each_live(|_, e| newest = newest.max(Some(e.event_time_ms)))?;
        Ok(newest)
    }

    /// Every entry, in id order.
    pub(crate) fn entries(&self) -> Result<Vec<(Vec<u8>, DedupeEntry)>, StateError> {
        let mut all = Vec::new();
        self.for_each_live(|id, e| all.push((id.to_vec(), e)))?;
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }

    /// Hands every live id and entry to `f`, in log order.
    fn for_each_live(&self, mut f: impl FnMut(&[u8], DedupeEntry)) -> Result<(), StateError> {
        let mut inner = self.lock();
        let Inner { live, log, buf, .. } = &mut *inner;
        let mut at = Some(Cursor::default());
        while let Some(from) = at {
            at = walk_live(live, log, from, 4096, buf, &mut f)?;
        }
        Ok(())
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

/// The position and entry of `id`'s live record (`id` already cut), reading the candidates'
/// records to confirm them.
fn find_record(
    live: &Live,
    log: &LogFile,
    buf: &mut Vec<u8>,
    id: &[u8],
) -> Result<Option<(u64, DedupeEntry)>, StateError> {
    let mut found = None;
    let mut failed = None;
    let pos = live.find(id, |pos| match log.put_at(pos, id, buf) {
        Ok(Some(entry)) => {
            found = Some(entry);
            true
        }
        Ok(None) => false,
        Err(e) => {
            failed = Some(e);
            false
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(pos.zip(found))
}

/// Hands the live puts among the next `max` records of the log from `from` to `seen`; where
/// the next walk resumes, or `None` at the end of the log.
fn walk_live(
    live: &Live,
    log: &LogFile,
    from: Cursor,
    max: usize,
    buf: &mut Vec<u8>,
    mut seen: impl FnMut(&[u8], DedupeEntry),
) -> Result<Option<Cursor>, StateError> {
    log.walk(from, max, buf, |change| {
        if let Change::Put(id, e, pos) = change {
            if live.holds(id, pos) {
                seen(id, e);
            }
        }
    })
}

/// Rewrites the log with the live records only, and points the keydir at their new places.
fn rewrite(live: &mut Live, log: &mut LogFile) -> Result<(), StateError> {
    let mut moved = Keydir::with_capacity(live.keys.len());
    let mut full = Ok(());
    log.rewrite(|id, old, new| {
        let keep = live.holds(id, old);
        if keep && full.is_ok() {
            full = moved.insert(live.hash(id), new);
        }
        keep
    })?;
    full.map_err(|_| StateError::IndexFull)?;
    live.keys = moved;
    Ok(())
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
    fn an_id_longer_than_one_read_is_found_and_swept() {
        let dir = tempfile::tempdir().unwrap();
        let index = DedupeIndex::open(dir.path()).unwrap();
        let long = "x".repeat(500);
        put(&index, "short", 5);
        put(&index, &long, 1);
        put(&index, "after", 9);
        assert_eq!(index.get(long.as_bytes()).unwrap(), Some(entry(1)));
        assert_eq!(
            index.expired(3, usize::MAX).unwrap(),
            vec![(long.into_bytes(), 1)]
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// One batch of puts (`Some(t)`) and removes of ids by number, long ones or short.
        Batch(Vec<(u8, bool, Option<i64>)>),
        Sweep(usize),
        Reopen,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        let change = (0u8..24, any::<bool>(), proptest::option::of(0i64..100));
        prop_oneof![
            8 => proptest::collection::vec(change, 1..4).prop_map(Op::Batch),
            1 => (1usize..8).prop_map(Op::Sweep),
            1 => Just(Op::Reopen),
        ]
    }

    fn id_of(n: u8, long: bool) -> Vec<u8> {
        let pad = if long { 90 } else { 0 };
        format!("{n}-{}", "l".repeat(pad)).into_bytes()
    }

    proptest::proptest! {
        /// Whatever the puts, removes, rewrites (the test slack is tiny), sweeps and reopens,
        /// the index finds what a plain map holds, and lists exactly that.
        #[test]
        fn the_index_agrees_with_a_map(ops in proptest::collection::vec(op(), 1..120)) {
            let dir = tempfile::tempdir().unwrap();
            let mut index = DedupeIndex::open(dir.path()).unwrap();
            let mut model = std::collections::BTreeMap::new();
            for op in ops {
                match op {
                    Op::Batch(changes) => {
                        let changes: Vec<(Vec<u8>, Option<DedupeEntry>)> = changes
                            .into_iter()
                            .map(|(n, long, t)| (id_of(n, long), t.map(entry)))
                            .collect();
                        index
                            .apply(changes.iter().map(|(id, e)| (id.as_slice(), *e)), Some(1))
                            .unwrap();
                        for (id, e) in changes {
                            match e {
                                Some(e) => model.insert(id, e),
                                None => model.remove(&id),
                            };
                        }
                    }
                    Op::Sweep(n) => {
                        for (id, t) in index.expired(50, n).unwrap() {
                            proptest::prop_assert_eq!(model.get(&id).map(|e| e.event_time_ms), Some(t));
                        }
                    }
                    Op::Reopen => {
                        drop(index);
                        index = DedupeIndex::open(dir.path()).unwrap();
                    }
                }
            }
            for n in 0..24 {
                for long in [false, true] {
                    let id = id_of(n, long);
                    proptest::prop_assert_eq!(index.get(&id).unwrap(), model.get(&id).copied());
                }
            }
            let listed: Vec<(Vec<u8>, DedupeEntry)> = model.into_iter().collect();
            proptest::prop_assert_eq!(index.entries().unwrap(), listed);
        }
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
        assert_eq!(index.get(b"kept").unwrap(), Some(entry(99)));
        assert_eq!(index.entries().unwrap().len(), 1);
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
        assert_eq!(index.get(b"a").unwrap(), Some(entry(5)));
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
