//! The sled-backed store of one (flow, input partition): state rows, dedupe index, checkpoint.
//! Writes happen only in atomic batches, after the changelog holds the same change.

use std::path::{Path, PathBuf};

use crate::changelog::{ChangelogKey, RecordKind};
use crate::checkpoint::Checkpoint;
use crate::dedupe::DedupeEntry;
use crate::dedupe_index::{Changes, DedupeIndex};
use crate::error::StateError;
use crate::writes::Writes;

const CHECKPOINT_KEY: &[u8] = b"m/checkpoint";

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
/// index in memory with its own log file beside them (nine in ten keys were dedupe entries,
/// which made sled most of the memory and of the write cost).
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    path: PathBuf,
    dedupe: std::sync::Arc<DedupeIndex>,
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
            dedupe: std::sync::Arc::new(DedupeIndex::open(path)?),
        };
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
        Ok(self.db.clear()?)
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
        Ok(self.dedupe.get(event_id))
    }

    /// Writes one committed batch: its state rows and dedupe changes, then the checkpoint. A
    /// crash in between leaves rows newer than the checkpoint, which a restore from that
    /// checkpoint overwrites with the same values.
    pub fn commit(&self, batch: CommitBatch) -> Result<(), StateError> {
        let reaches = batch.checkpoint.map(|cp| cp.changelog_offset);
        self.dedupe.apply(batch.dedupe.iter(), reaches)?;
        batch.writes.apply_last_per_key(&self.db)?;
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
        Ok(self.dedupe.expired(before_ms, scan))
    }

    /// Applies one chunk of changelog records (last value per key wins) and its checkpoint.
    pub fn restore(&self, chunk: RestoreBatch) -> Result<(), StateError> {
        if let Some(e) = chunk.invalid {
            return Err(e);
        }
        self.dedupe.forget_expiry();
        self.dedupe
            .apply(chunk.dedupe.iter(), Some(chunk.checkpoint.changelog_offset))?;
        chunk.writes.apply_last_per_key(&self.db)?;
        self.db.insert(CHECKPOINT_KEY, &chunk.checkpoint.encode())?;
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
        self.dedupe.entries().into_iter().map(Ok)
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

/// Changelog records per restore chunk, each followed by a checkpoint. Each key is written once
/// per chunk, so a large chunk skips repeated writes of hot keys in a changelog not yet
/// compacted (+8% records/s over 1,000 on the end-to-end benchmark), for ~3 MiB held at once.
pub const RESTORE_CHUNK: usize = 32_768;

/// The writes of one committed transaction, then its checkpoint.
#[derive(Default)]
pub struct CommitBatch {
    writes: Writes,
    dedupe: Changes,
    checkpoint: Option<Checkpoint>,
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

    /// Stages the checkpoint that describes the batch; it is written last.
    pub fn set_checkpoint(&mut self, cp: Checkpoint) {
        self.checkpoint = Some(cp);
    }
}

/// A chunk of changelog records read during restore, with the checkpoint reached after it.
/// Records are copied once, into one buffer, and applied in log order (the last value per key
/// wins).
#[derive(Default)]
pub struct RestoreBatch {
    writes: Writes,
    dedupe: Changes,
    records: usize,
    max_event_time_ms: Option<i64>,
    /// The first record that is not a changelog record of this build; the chunk is refused.
    invalid: Option<StateError>,
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
        if kind == RecordKind::Dedupe {
            let id = &key[1..];
            let Some(v) = value else {
                self.dedupe.push(id, None);
                return;
            };
            match DedupeEntry::decode(v) {
                Ok(e) => {
                    self.max_event_time_ms = Some(
                        self.max_event_time_ms
                            .map_or(e.event_time_ms, |m| m.max(e.event_time_ms)),
                    );
                    let expired = self.expired_below.is_some_and(|b| e.event_time_ms < b);
                    if !expired {
                        self.dedupe.push(id, Some(e));
                    }
                }
                Err(e) => self.invalid = Some(e),
            }
            return;
        }
        self.writes.push(None, key, value);
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

    /// Whether no record was pushed.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }
}
