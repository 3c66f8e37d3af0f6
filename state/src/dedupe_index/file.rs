//! The dedupe index on disk: an append-only log of frames, one per committed batch, each with
//! its puts and removes, the changelog offset its checkpoint names, and a checksum.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
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

/// One change read back from the log, in the order it was written; a put with its record's
/// position in the file.
pub(crate) enum Change<'a> {
    Put(&'a [u8], DedupeEntry, u64),
    Remove(&'a [u8]),
}

/// Where a walk through the log stands: the next record, and the end of its frame's records (0
/// at the start of the log).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    pos: u64,
    frame_end: u64,
}

/// Bytes a walk reads at a time.
const READ_AHEAD: usize = if cfg!(test) { 64 } else { 256 * 1024 };
/// Records a rewrite puts in one frame, so it streams instead of building the log in memory.
const REWRITE_FRAME_BYTES: usize = if cfg!(test) { 64 } else { 256 * 1024 };

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
    /// Opens (or creates) the log in `dir` and hands every change in it to `apply`, in order,
    /// with the whole log (to read earlier records by their positions).
    /// A frame cut short or failing its checksum makes the whole log unreadable: the store is
    /// then rebuilt from the changelog, never left with part of its index.
    pub(crate) fn open(
        dir: &Path,
        mut apply: impl FnMut(Change<'_>, &[u8]),
    ) -> Result<Self, StateError> {
        let path = dir.join(FILE_NAME);
        let fs_err = |source| StateError::Fs {
            path: path.clone(),
            source,
        };
        let mut file = open_rw(&path).map_err(fs_err)?;
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
    /// [`encode_remove`]), whose first byte lands at the file position it is given.
    pub(crate) fn append(
        &mut self,
        changelog_offset: i64,
        records: impl FnOnce(&mut Vec<u8>, u64),
    ) -> Result<(), StateError> {
        self.frame.clear();
        let at = self.len;
        encode_frame(changelog_offset, |out| records(out, at), &mut self.frame);
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

    /// The entry of the put record at `pos` if it is a put of `id` (`buf` is scratch space).
    pub(crate) fn put_at(
        &self,
        pos: u64,
        id: &[u8],
        buf: &mut Vec<u8>,
    ) -> Result<Option<DedupeEntry>, StateError> {
        buf.resize(3 + id.len() + ENTRY_LEN, 0);
        let read = self.read_at(pos, buf)?;
        match next_record(&buf[..read], pos).map_err(corrupt)? {
            Some((Change::Put(found, entry, _), _)) if found == id => Ok(Some(entry)),
            Some(_) => Ok(None),
            // The record holds a longer id than `id`, so a read of `id`'s length ends inside it.
            None if record_len_at(&buf[..read]).is_some_and(|len| len > buf.len()) => Ok(None),
            None => Err(cut_short(pos)),
        }
    }

    /// Reads up to `buf.len()` bytes at `pos`; how many there were.
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> Result<usize, StateError> {
        let mut read = 0;
        while read < buf.len() {
            match self.file.read_at(&mut buf[read..], pos + read as u64) {
                Ok(0) => break,
                Ok(n) => read += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(StateError::Fs {
                        path: self.path.clone(),
                        source,
                    })
                }
            }
        }
        Ok(read)
    }

    /// Hands the records from `from` on to `seen` (puts with their positions), until `max`
    /// were seen; where the next walk resumes, or `None` at the end of the log.
    pub(crate) fn walk(
        &self,
        from: Cursor,
        max: usize,
        buf: &mut Vec<u8>,
        mut seen: impl FnMut(Change<'_>),
    ) -> Result<Option<Cursor>, StateError> {
        let mut at = from;
        let mut count = 0;
        while count < max {
            if at.pos >= at.frame_end {
                // The next frame's head: its records' length (the offset after it is skipped).
                let frame = if at.frame_end == 0 {
                    HEADER_LEN as u64
                } else {
                    at.frame_end + FRAME_TAIL as u64
                };
                if frame >= self.len {
                    return Ok(None);
                }
                let mut head = [0u8; 4];
                if self.read_at(frame, &mut head)? < head.len() {
                    return Err(corrupt(format!("frame at byte {frame} is cut short")));
                }
                let records = u64::from(u32::from_be_bytes(head));
                at = Cursor {
                    pos: frame + FRAME_HEAD as u64,
                    frame_end: frame + FRAME_HEAD as u64 + records,
                };
                continue;
            }
            let left = at.frame_end - at.pos;
            let mut want = left.min(READ_AHEAD as u64) as usize;
            loop {
                buf.resize(want, 0);
                if self.read_at(at.pos, &mut buf[..want])? < want {
                    return Err(cut_short(at.pos));
                }
                // A record longer than one read is read whole.
                match record_len_at(&buf[..want]) {
                    Some(len) if len as u64 > left => return Err(cut_short(at.pos)),
                    Some(len) if len > want => want = len,
                    Some(_) => break,
                    None => return Err(cut_short(at.pos)),
                }
            }
            let mut used = 0;
            while count < max && used < want {
                let pos = at.pos + used as u64;
                let Some((change, len)) = next_record(&buf[used..want], pos).map_err(corrupt)?
                else {
                    break;
                };
                seen(change);
                used += len;
                count += 1;
            }
            at.pos += used as u64;
        }
        Ok(Some(at))
    }

    /// Replaces the log with the puts `keep` keeps (given each put's id, position and the
    /// position it would have in the new log), through a new file renamed over it.
    pub(crate) fn rewrite(
        &mut self,
        mut keep: impl FnMut(&[u8], u64, u64) -> bool,
    ) -> Result<(), StateError> {
        let tmp = self.path.with_extension("log.new");
        let fs_err = |source| StateError::Fs {
            path: tmp.clone(),
            source,
        };
        let mut out = std::io::BufWriter::new(File::create(&tmp).map_err(fs_err)?);
        out.write_all(&header()).map_err(fs_err)?;
        let mut written = HEADER_LEN as u64;
        if let Some(offset) = self.last_offset {
            // Frames of the live puts, each under REWRITE_FRAME_BYTES, all naming the offset.
            let mut frame: Vec<u8> = Vec::new();
            let mut records: Vec<u8> = Vec::new();
            let mut buf = Vec::new();
            let mut at = Some(Cursor::default());
            let mut flush = |records: &mut Vec<u8>, written: &mut u64| -> Result<(), StateError> {
                frame.clear();
                encode_frame(offset, |f| f.extend_from_slice(records), &mut frame);
                out.write_all(&frame).map_err(fs_err)?;
                *written += frame.len() as u64;
                records.clear();
                Ok(())
            };
            while let Some(from) = at {
                let mut kept = Vec::new();
                at = self.walk(from, 4096, &mut buf, |change| {
                    if let Change::Put(id, entry, pos) = change {
                        kept.push((pos, id.to_vec(), entry));
                    }
                })?;
                for (pos, id, entry) in kept {
                    let new = written + (FRAME_HEAD + records.len()) as u64;
                    if keep(&id, pos, new) {
                        encode_put(&id, &entry, &mut records);
                        if records.len() >= REWRITE_FRAME_BYTES {
                            flush(&mut records, &mut written)?;
                        }
                    }
                }
            }
            if !records.is_empty() || written == HEADER_LEN as u64 {
                flush(&mut records, &mut written)?;
            }
        }
        let file = out.into_inner().map_err(|e| fs_err(e.into_error()))?;
        drop(file);
        std::fs::rename(&tmp, &self.path).map_err(fs_err)?;
        self.file = open_rw(&self.path).map_err(fs_err)?;
        self.len = written;
        Ok(())
    }

    /// Empties the log (the store is rebuilt from the changelog).
    pub(crate) fn clear(&mut self) -> Result<(), StateError> {
        self.last_offset = None;
        self.rewrite(|_, _, _| false)
    }
}

fn open_rw(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
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

fn cut_short(pos: u64) -> StateError {
    corrupt(format!("record at byte {pos} is cut short"))
}

fn corrupt(detail: String) -> StateError {
    StateError::Corrupt {
        what: "dedupe log",
        detail,
    }
}

/// Applies every frame after the header; returns the changelog offset of the last one.
fn replay(
    bytes: &[u8],
    apply: &mut impl FnMut(Change<'_>, &[u8]),
) -> Result<Option<i64>, StateError> {
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
        let mut rest = &body[8..];
        let mut pos = (at + FRAME_HEAD) as u64;
        while !rest.is_empty() {
            let (change, used) = next_record(rest, pos)
                .and_then(|r| r.ok_or_else(|| "record cut short".to_string()))
                .map_err(|e| corrupt(format!("frame at byte {at}: {e}")))?;
            apply(change, bytes);
            rest = &rest[used..];
            pos += used as u64;
        }
        last = Some(i64::from_be_bytes(offset));
        at = body_end + FRAME_TAIL;
    }
    Ok(last)
}

/// The id of the put record at `pos` in the log `bytes`.
pub(crate) fn id_in(bytes: &[u8], pos: u64) -> Option<&[u8]> {
    let record = bytes.get(usize::try_from(pos).ok()?..)?;
    match next_record(record, pos) {
        Ok(Some((Change::Put(id, _, _), _))) => Some(id),
        _ => None,
    }
}

/// The length of the record `bytes` start with, once its head is there.
fn record_len_at(bytes: &[u8]) -> Option<usize> {
    let (&op, tail) = bytes.split_first()?;
    let id = usize::from(u16::from_be_bytes([*tail.first()?, *tail.get(1)?]));
    Some(3 + id + if op == PUT { ENTRY_LEN } else { 0 })
}

/// The record `bytes` start with (it sits at `pos`) and its length; `None` when `bytes` end
/// before it does.
fn next_record(bytes: &[u8], pos: u64) -> Result<Option<(Change<'_>, usize)>, String> {
    let Some(len) = record_len_at(bytes) else {
        return Ok(None);
    };
    let Some(record) = bytes.get(..len) else {
        return Ok(None);
    };
    let id_len = len - 3 - if record[0] == PUT { ENTRY_LEN } else { 0 };
    let id = &record[3..3 + id_len];
    let change = match record[0] {
        PUT => {
            let entry = DedupeEntry::decode(&record[3 + id_len..]).map_err(|e| e.to_string())?;
            Change::Put(id, entry, pos)
        }
        REMOVE => Change::Remove(id),
        other => return Err(format!("unknown record type {other} at byte {pos}")),
    };
    Ok(Some((change, len)))
}
