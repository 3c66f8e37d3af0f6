//! The sled-backed store of one (flow, input partition): state rows, dedupe index, checkpoint.
//! Writes happen only in atomic batches, after the changelog holds the same change.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::batch::{CommitBatch, RestoreBatch, LEGACY_KEY};
use crate::bundle;
use crate::changelog::{ChangelogKey, RecordKind};
use crate::checkpoint::Checkpoint;
use crate::dedupe::DedupeEntry;
use crate::dedupe_index::DedupeIndex;
use crate::error::StateError;
use crate::expiry::Expiry;

const CHECKPOINT_KEY: &[u8] = b"m/checkpoint";
/// Store key of the store's layout version; a store without it predates dedupe bundles.
const LAYOUT_KEY: &[u8] = b"m/layout";
/// Layout 2: dedupe entries reach the changelog in bundles, whose rows the store keeps.
const LAYOUT_VERSION: u8 = 2;

/// Tuning of one store; the defaults keep a dozen stores within a small pod.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// sled page cache bound per store, in bytes.
    pub cache_capacity_bytes: u64,
    /// How often sled flushes in the background; durability comes from the changelog anyway.
    pub flush_every_ms: Option<u64>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            cache_capacity_bytes: 32 * 1024 * 1024,
            flush_every_ms: Some(1000),
        }
    }
}

/// A local cache of one changelog partition: state rows and the checkpoint in sled, the dedupe
/// index in its own log file beside them (nine in ten keys were dedupe entries, which made sled
/// most of the memory and of the write cost).
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    path: PathBuf,
    dedupe: Arc<DedupeIndex>,
    /// The bundle sweep, resuming after the last row it examined.
    bundles: Arc<Mutex<Expiry<Option<sled::IVec>>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// How long an open waits for a lock that is being released.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Opens sled at `path`. sled's IO threads let go of a dropped database's file lock a moment
/// after the drop, so a reopen in that moment waits up to [`LOCK_WAIT`] for it; a lock another
/// process holds still fails.
fn open_sled(config: &sled::Config, path: &Path) -> Result<sled::Db, StateError> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        let config = config.clone();
        // sled panics on some corrupt files instead of returning an error; either way the
        // store is unreadable and is rebuilt from the changelog.
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || config.open()))
            .map_err(|panic| StateError::OpenPanicked {
                path: path.to_owned(),
                message: panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "see the panic message before this line".into()),
            })?
            .map_err(|source| StateError::Open {
                path: path.to_owned(),
                source,
            });
        match opened {
            Err(e) if e.is_locked() && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

impl Store {
    /// Opens (or creates) the store at `path` and checks that its checkpoint is readable.
    pub fn open(path: &Path, opts: StoreOptions) -> Result<Self, StateError> {
        std::fs::create_dir_all(path).map_err(|source| StateError::Fs {
            path: path.to_owned(),
            source,
        })?;
        let config = sled::Config::new()
            .path(path)
            .cache_capacity(opts.cache_capacity_bytes)
            .flush_every_ms(opts.flush_every_ms)
            .mode(sled::Mode::HighThroughput);
        let db = open_sled(&config, path)?;
        if db.scan_prefix([RecordKind::Dedupe.tag()]).next().is_some() {
            return Err(StateError::Corrupt {
                what: "store",
                detail: "dedupe entries in sled: the layout of an older tally, whose stores are \
                         rebuilt from the changelog"
                    .into(),
            });
        }
        let store = Self {
            db,
            path: path.to_owned(),
            dedupe: Arc::new(DedupeIndex::open(path)?),
            bundles: Arc::default(),
        };
        store.check_layout()?;
        // The log is written before the checkpoint: one that ends before it lost batches (a
        // machine crash took its unsynced tail, or it was deleted).
        if let Some(cp) = store.checkpoint()? {
            let logged = store.dedupe.last_offset();
            if !matches!(logged, Some(o) if o >= cp.changelog_offset) {
                return Err(StateError::Corrupt {
                    what: "store",
                    detail: format!(
                        "the dedupe log ends at changelog offset {logged:?}, before the \
                         checkpoint's {}",
                        cp.changelog_offset
                    ),
                });
            }
        }
        Ok(store)
    }

    /// Refuses a newer layout; marks a store of an older tally, whose dedupe entries came from
    /// per-id changelog records, so their expiry still sends per-id tombstones.
    fn check_layout(&self) -> Result<(), StateError> {
        match self.db.get(LAYOUT_KEY)?.as_deref() {
            Some([LAYOUT_VERSION]) => return Ok(()),
            Some([found, ..]) if *found > LAYOUT_VERSION => {
                return Err(StateError::UnsupportedVersion {
                    what: "store layout",
                    found: *found,
                    supported: LAYOUT_VERSION,
                })
            }
            Some(other) => {
                return Err(StateError::Corrupt {
                    what: "store layout",
                    detail: format!("{other:?}"),
                })
            }
            None => {}
        }
        if let Some(newest) = self.dedupe.max_event_time()? {
            self.mark_legacy(newest)?;
        }
        self.db.insert(LAYOUT_KEY, &[LAYOUT_VERSION])?;
        Ok(())
    }

    /// Opens the store, or wipes it and opens an empty one when it cannot be read.
    /// Returns the store and the reason it was wiped, if it was.
    pub fn open_or_wipe(
        path: &Path,
        opts: StoreOptions,
    ) -> Result<(Self, Option<StateError>), StateError> {
        match Self::open(path, opts) {
            Ok(store) => Ok((store, None)),
            // Another process holds the store: wiping it would destroy live state.
            Err(e @ StateError::Open { .. }) if e.is_locked() => Err(e),
            Err(reason) => {
                Self::wipe(path)?;
                Ok((Self::open(path, opts)?, Some(reason)))
            }
        }
    }

    /// Deletes the store's files; the next open starts empty.
    pub fn wipe(path: &Path) -> Result<(), StateError> {
        match std::fs::remove_dir_all(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Fs {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Removes every row, dedupe entry and the checkpoint (the store is rebuilt from the changelog).
    pub fn clear(&self) -> Result<(), StateError> {
        self.dedupe.clear()?;
        self.db.clear()?;
        self.bundles_sweep().forget();
        self.db.insert(LAYOUT_KEY, &[LAYOUT_VERSION])?;
        Ok(())
    }

    /// Where the store lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The checkpoint of the last committed batch, if any batch was committed.
    pub fn checkpoint(&self) -> Result<Option<Checkpoint>, StateError> {
        self.db
            .get(CHECKPOINT_KEY)?
            .map(|v| Checkpoint::decode(&v))
            .transpose()
    }

    /// The encoded state of one aggregate key.
    pub fn state(&self, key: &[u8]) -> Result<Option<sled::IVec>, StateError> {
        Ok(with_key(RecordKind::State, key, |k| self.db.get(k))?)
    }

    /// The dedupe entry of one event id, if that id was applied and has not expired.
    pub fn dedupe(&self, event_id: &[u8]) -> Result<Option<DedupeEntry>, StateError> {
        self.dedupe.get(event_id)
    }

    /// Writes one committed batch: its state rows and dedupe changes, then the checkpoint. A
    /// crash in between leaves rows newer than the checkpoint, which a restore from that
    /// checkpoint overwrites with the same values.
    pub fn commit(&self, mut batch: CommitBatch) -> Result<(), StateError> {
        let reaches = batch.checkpoint.map(|cp| cp.changelog_offset);
        self.dedupe.apply(batch.dedupe.iter(), reaches)?;
        if let Some(t) = batch.oldest_bundle {
            self.bundles_sweep().written(t);
        }
        batch.writes.apply(&self.db)?;
        if let Some(cp) = batch.checkpoint {
            self.db.insert(CHECKPOINT_KEY, &cp.encode())?;
        }
        Ok(())
    }

    /// Dedupe entries whose event time is before `before_ms`, found by scanning the next
    /// `scan` entries of the index (resuming where the last call stopped, wrapping at the end).
    /// An incremental scan costs no extra write per event, unlike a time index; once a whole
    /// cycle showed that no entry is that old, it costs no read either.
    pub fn expired_dedupe(
        &self,
        before_ms: i64,
        scan: usize,
    ) -> Result<Vec<(Vec<u8>, i64)>, StateError> {
        self.dedupe.expired(before_ms, scan)
    }

    /// Changelog keys of bundles whose newest event time is before `before_ms`, found by
    /// examining the next `scan` bundle rows (resuming after the last one examined, wrapping at
    /// the end). Once a whole cycle showed that no bundle is that old, it examines none.
    pub fn expired_bundles(
        &self,
        before_ms: i64,
        scan: usize,
    ) -> Result<Vec<sled::IVec>, StateError> {
        let mut sweep = self.bundles_sweep();
        if !sweep.may_hold_older_than(before_ms) {
            return Ok(Vec::new());
        }
        let tag = RecordKind::Bundle.tag();
        let from = match sweep.cursor() {
            Some(last) => std::ops::Bound::Excluded(last.clone()),
            None => std::ops::Bound::Included(sled::IVec::from(&[tag])),
        };
        let to = std::ops::Bound::Excluded(sled::IVec::from(&[tag + 1]));
        let mut out = Vec::new();
        let (mut last, mut examined) = (None, 0);
        for row in self.db.range((from, to)).take(scan) {
            let (key, value) = row?;
            examined += 1;
            let newest = bundle::decode_time(&value, "dedupe bundle row")?;
            sweep.saw(newest);
            if newest < before_ms {
                out.push(key.clone());
            }
            last = Some(key);
        }
        match last {
            Some(key) if examined == scan => sweep.stopped_at(Some(key)),
            _ => sweep.wrapped(),
        }
        Ok(out)
    }

    /// The newest event time among dedupe entries that came from per-id changelog records of
    /// an older tally, while any of them may be left; their expiry sends per-id tombstones.
    pub fn legacy_dedupe(&self) -> Result<Option<i64>, StateError> {
        self.db
            .get(LEGACY_KEY)?
            .map(|v| bundle::decode_time(&v, "legacy dedupe mark"))
            .transpose()
    }

    /// Whether the dedupe index may still hold an entry older than `before_ms`.
    pub fn dedupe_may_hold_older_than(&self, before_ms: i64) -> bool {
        self.dedupe.may_hold_older_than(before_ms)
    }

    fn mark_legacy(&self, newest: i64) -> Result<(), StateError> {
        let newest = self.legacy_dedupe()?.map_or(newest, |m| m.max(newest));
        self.db.insert(LEGACY_KEY, &bundle::encode_time(newest))?;
        Ok(())
    }

    fn bundles_sweep(&self) -> std::sync::MutexGuard<'_, Expiry<Option<sled::IVec>>> {
        self.bundles.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one chunk of changelog records (last value per key wins) and its checkpoint,
    /// and empties the chunk for the next records (its buffers stay allocated).
    pub fn restore(&self, chunk: &mut RestoreBatch) -> Result<(), StateError> {
        self.restore_dedupe_reaching(chunk, Some(chunk.checkpoint.changelog_offset))?;
        self.bundles_sweep().forget();
        chunk.writes.apply(&self.db)?;
        if let Some(newest) = chunk.legacy_max {
            self.mark_legacy(newest)?;
        }
        self.db.insert(CHECKPOINT_KEY, &chunk.checkpoint.encode())?;
        chunk.clear();
        Ok(())
    }

    /// Applies the dedupe entries a restore chunk holds so far, ahead of its states and
    /// checkpoint. A crash before that checkpoint restores from the one before, which reads the
    /// same entries again; writing an entry again is harmless.
    pub fn restore_dedupe(&self, chunk: &mut RestoreBatch) -> Result<(), StateError> {
        self.restore_dedupe_reaching(chunk, None)
    }

    /// Refuses a chunk with an unreadable record, else applies and empties its dedupe entries,
    /// with the changelog offset their log frame reaches (none: as far as the log did).
    fn restore_dedupe_reaching(
        &self,
        chunk: &mut RestoreBatch,
        reaches: Option<i64>,
    ) -> Result<(), StateError> {
        if let Some(e) = chunk.invalid.take() {
            return Err(e);
        }
        self.dedupe.forget_expiry();
        self.dedupe.apply(chunk.dedupe.iter(), reaches)?;
        chunk.dedupe.clear();
        Ok(())
    }

    /// Every state row as (aggregate key, encoded state), in key order.
    pub fn states(&self) -> impl Iterator<Item = Result<(Vec<u8>, sled::IVec), StateError>> {
        self.prefixed(RecordKind::State.tag())
            .map(|r| r.map(|(k, v)| (k[1..].to_vec(), v)))
    }

    /// Every dedupe entry as (event id, entry), in id order.
    pub fn dedupe_entries(
        &self,
    ) -> impl Iterator<Item = Result<(Vec<u8>, DedupeEntry), StateError>> {
        let (entries, failed) = match self.dedupe.entries() {
            Ok(all) => (all, None),
            Err(e) => (Vec::new(), Some(Err(e))),
        };
        failed.into_iter().chain(entries.into_iter().map(Ok))
    }

    /// Waits until everything written so far is on disk (used on clean shutdown).
    pub fn flush(&self) -> Result<(), StateError> {
        self.db.flush()?;
        Ok(())
    }

    /// Bytes the store occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64, StateError> {
        Ok(self.db.size_on_disk()? + self.dedupe.size_on_disk())
    }

    fn prefixed(
        &self,
        tag: u8,
    ) -> impl Iterator<Item = Result<(sled::IVec, sled::IVec), StateError>> {
        self.db
            .scan_prefix([tag])
            .map(|r| r.map_err(StateError::from))
    }
}

/// Calls `f` with the store key of `id` (its kind's tag, then the id), built on the stack when
/// it is short: lookups are on the per-event path and would otherwise allocate each time.
fn with_key<R>(kind: RecordKind, id: &[u8], f: impl FnOnce(&[u8]) -> R) -> R {
    let mut stack = [0u8; 64];
    match stack.get_mut(1..=id.len()) {
        Some(rest) => {
            rest.copy_from_slice(id);
            stack[0] = kind.tag();
            f(&stack[..=id.len()])
        }
        None => f(&ChangelogKey::encode(kind, id)),
    }
}
