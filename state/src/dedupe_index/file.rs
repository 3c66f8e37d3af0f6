//! The dedupe index on disk: an append-only log of frames, one per committed batch, each with
//! its puts and removes, the changelog offset its checkpoint names, and a checksum.

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
/// Frame: payload length (u32), changelog offset (i64), payload, xxh3 of offset and payload.
const FRAME_HEAD: usize = 4 + 8;
const FRAME_TAIL: usize = 8;
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
    /// The changelog offset of the last frame: the log holds every batch up to that checkpoint.
    pub(crate) last_offset: Option<i64>,
    frame: Vec<u8>,
}

impl LogFile {
    /// Opens (or creates) the log in `dir` and hands every change in it to `apply`, in order.
    /// A frame cut short or failing its checksum makes the whole log unreadable: the store is
    /// then rebuilt from the changelog, never left with part of its index.
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
            bytes.extend_from_slice(&header());
        }
        let last_offset = replay(&bytes, &mut apply)?;
        Ok(Self {
            path,
            file,
            len: bytes.len() as u64,
            last_offset,
            frame: Vec::new(),
        })
    }

    /// Appends one frame for the batch whose checkpoint names `changelog_offset`, with one
    /// write; `records` encodes its changes into the frame (see [`encode_put`],
    /// [`encode_remove`]).
    pub(crate) fn append(
        &mut self,
        changelog_offset: i64,
        records: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), StateError> {
        self.frame.clear();
        encode_frame(changelog_offset, records, &mut self.frame);
        self.file
            .write_all(&self.frame)
            .map_err(|source| StateError::Fs {
                path: self.path.clone(),
                source,
            })?;
        self.len += self.frame.len() as u64;
        self.last_offset = Some(changelog_offset);
        Ok(())
    }

    /// Replaces the log with one frame holding only `live` puts, through a new file renamed
    /// over it.
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
        if let Some(offset) = self.last_offset {
            encode_frame(
                offset,
                |records| {
                    for (id, entry) in live {
                        encode_put(id, entry, records);
                    }
                },
                &mut out,
            );
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
        self.last_offset = None;
        self.rewrite(std::iter::empty())
    }
}

fn header() -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..MAGIC.len()].copy_from_slice(MAGIC);
    h[MAGIC.len()] = DEDUPE_LOG_VERSION;
    h
}

/// Appends a frame to `out`: the records are encoded in place, then their length is filled in.
fn encode_frame(changelog_offset: i64, records: impl FnOnce(&mut Vec<u8>), out: &mut Vec<u8>) {
    let len_at = out.len();
    out.extend_from_slice(&[0; 4]);
    let body = out.len();
    out.extend_from_slice(&changelog_offset.to_be_bytes());
    records(out);
    let len = u32::try_from(out.len() - body - 8).unwrap_or(u32::MAX);
    out[len_at..body].copy_from_slice(&len.to_be_bytes());
    let sum = xxhash_rust::xxh3::xxh3_64(&out[body..]);
    out.extend_from_slice(&sum.to_be_bytes());
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

fn corrupt(detail: String) -> StateError {
    StateError::Corrupt {
        what: "dedupe log",
        detail,
    }
}

/// Applies every frame after the header; returns the changelog offset of the last one.
fn replay(bytes: &[u8], apply: &mut impl FnMut(Change<'_>)) -> Result<Option<i64>, StateError> {
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
    let mut last = None;
    while at < bytes.len() {
        let cut = || corrupt(format!("frame at byte {at} is cut short"));
        let len_bytes = bytes.get(at..at + 4).ok_or_else(cut)?;
        let len = u32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
        let body_end = at + FRAME_HEAD + len as usize;
        let body = bytes.get(at + 4..body_end).ok_or_else(cut)?;
        let sum = bytes.get(body_end..body_end + FRAME_TAIL).ok_or_else(cut)?;
        if xxhash_rust::xxh3::xxh3_64(body).to_be_bytes() != sum {
            return Err(corrupt(format!("frame at byte {at} fails its checksum")));
        }
        let mut offset = [0u8; 8];
        offset.copy_from_slice(&body[..8]);
        replay_records(&body[8..], apply)
            .map_err(|e| corrupt(format!("frame at byte {at}: {e}")))?;
        last = Some(i64::from_be_bytes(offset));
        at = body_end + FRAME_TAIL;
    }
    Ok(last)
}

fn replay_records(mut rest: &[u8], apply: &mut impl FnMut(Change<'_>)) -> Result<(), String> {
    while let Some((&op, tail)) = rest.split_first() {
        let len = tail
            .get(..2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
            .ok_or("record cut short")?;
        let id = tail.get(2..2 + len).ok_or("record cut short")?;
        let after = &tail[2 + len..];
        match op {
            PUT => {
                let value = after.get(..ENTRY_LEN).ok_or("record cut short")?;
                let entry = DedupeEntry::decode(value).map_err(|e| e.to_string())?;
                apply(Change::Put(id, entry));
                rest = &after[ENTRY_LEN..];
            }
            REMOVE => {
                apply(Change::Remove(id));
                rest = after;
            }
            other => return Err(format!("unknown record type {other}")),
        }
    }
    Ok(())
}
