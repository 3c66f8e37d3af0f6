//! The dedupe index on disk: an append-only log of puts and removes, replayed on open and
//! rewritten with only the live entries once removes make up most of it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::dedupe::DedupeEntry;
use crate::error::StateError;

/// File name of the log in a store's directory.
pub(crate) const FILE_NAME: &str = "dedupe.log";
/// Format version of the log (its header's last byte).
pub const DEDUPE_LOG_VERSION: u8 = 1;
const MAGIC: &[u8; 4] = b"TLYD";
const HEADER_LEN: usize = MAGIC.len() + 1;
const PUT: u8 = 1;
const REMOVE: u8 = 2;
const ENTRY_LEN: usize = crate::dedupe::ENCODED_LEN;

/// One change read back from the log, in the order it was written.
pub(crate) enum Change<'a> {
    Put(&'a [u8], DedupeEntry),
    Remove(&'a [u8]),
}

/// The open log, positioned at its end.
pub(crate) struct LogFile {
    path: PathBuf,
    file: File,
    /// Bytes in the file, header included.
    pub(crate) len: u64,
}

impl LogFile {
    /// Opens (or creates) the log at `dir` and hands every change in it to `apply`, in order.
    /// A record cut short by a crash while it was appended ends the log and is cut off.
    pub(crate) fn open(dir: &Path, mut apply: impl FnMut(Change<'_>)) -> Result<Self, StateError> {
        let path = dir.join(FILE_NAME);
        let fs_err = |source| StateError::Fs {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(fs_err)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(fs_err)?;
        if bytes.is_empty() {
            file.write_all(&header()).map_err(fs_err)?;
            return Ok(Self {
                path,
                file,
                len: HEADER_LEN as u64,
            });
        }
        let intact = replay(&bytes, &mut apply)?;
        if intact < bytes.len() {
            file.set_len(intact as u64).map_err(fs_err)?;
        }
        Ok(Self {
            path,
            file,
            len: intact as u64,
        })
    }

    /// Appends encoded changes (see [`encode_put`], [`encode_remove`]) with one write, so a
    /// crash after it loses none of them.
    pub(crate) fn append(&mut self, records: &[u8]) -> Result<(), StateError> {
        if records.is_empty() {
            return Ok(());
        }
        self.file
            .write_all(records)
            .map_err(|source| StateError::Fs {
                path: self.path.clone(),
                source,
            })?;
        self.len += records.len() as u64;
        Ok(())
    }

    /// Replaces the log with one holding only `live` puts, through a new file renamed over it.
    pub(crate) fn rewrite<'a>(
        &mut self,
        live: impl Iterator<Item = (&'a [u8], &'a DedupeEntry)>,
    ) -> Result<(), StateError> {
        let tmp = self.path.with_extension("log.new");
        let fs_err = |source| StateError::Fs {
            path: tmp.clone(),
            source,
        };
        let mut out = header().to_vec();
        for (id, entry) in live {
            encode_put(id, entry, &mut out);
        }
        let mut file = File::create(&tmp).map_err(fs_err)?;
        file.write_all(&out).map_err(fs_err)?;
        std::fs::rename(&tmp, &self.path).map_err(fs_err)?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(fs_err)?;
        self.len = out.len() as u64;
        Ok(())
    }

    /// Empties the log (the store is rebuilt from the changelog).
    pub(crate) fn clear(&mut self) -> Result<(), StateError> {
        self.rewrite(std::iter::empty())
    }
}

fn header() -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..MAGIC.len()].copy_from_slice(MAGIC);
    h[MAGIC.len()] = DEDUPE_LOG_VERSION;
    h
}

/// Encodes the put of `id` as one log record.
pub(crate) fn encode_put(id: &[u8], entry: &DedupeEntry, out: &mut Vec<u8>) {
    out.push(PUT);
    encode_id(id, out);
    out.extend_from_slice(&entry.encode());
}

/// Encodes the removal of `id` as one log record.
pub(crate) fn encode_remove(id: &[u8], out: &mut Vec<u8>) {
    out.push(REMOVE);
    encode_id(id, out);
}

fn encode_id(id: &[u8], out: &mut Vec<u8>) {
    // Event ids are validated short strings; one longer than a u16 is cut to fit, which only
    // weakens dedupe for such an id.
    let len = id.len().min(usize::from(u16::MAX));
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&id[..len]);
}

/// Applies every whole record after the header; returns where the last whole record ends.
fn replay(bytes: &[u8], apply: &mut impl FnMut(Change<'_>)) -> Result<usize, StateError> {
    let corrupt = |detail: String| StateError::Corrupt {
        what: "dedupe log",
        detail,
    };
    if bytes.len() < HEADER_LEN || &bytes[..MAGIC.len()] != MAGIC {
        return Err(corrupt("not a tally dedupe log".into()));
    }
    let version = bytes[MAGIC.len()];
    if version != DEDUPE_LOG_VERSION {
        return Err(StateError::UnsupportedVersion {
            what: "dedupe log",
            found: version,
            supported: DEDUPE_LOG_VERSION,
        });
    }
    let mut at = HEADER_LEN;
    while at < bytes.len() {
        let Some(head) = bytes.get(at..at + 3) else {
            break;
        };
        let op = head[0];
        let id_end = at + 3 + usize::from(u16::from_be_bytes([head[1], head[2]]));
        let Some(id) = bytes.get(at + 3..id_end) else {
            break;
        };
        match op {
            PUT => {
                let Some(value) = bytes.get(id_end..id_end + ENTRY_LEN) else {
                    break;
                };
                apply(Change::Put(id, DedupeEntry::decode(value)?));
                at = id_end + ENTRY_LEN;
            }
            REMOVE => {
                apply(Change::Remove(id));
                at = id_end;
            }
            other => return Err(corrupt(format!("unknown record type {other} at byte {at}"))),
        }
    }
    Ok(at)
}
