//! Store writes staged in one buffer, one per key (a later write replaces the earlier where it
//! stands), applied key by key with sled's lock-free inserts (`apply_batch` locks every store).

use std::hash::BuildHasher;
use std::ops::Range;

use hashbrown::HashTable;

/// A staged write: the key's and (for a put) the value's place in the buffer.
type Op = (Range<usize>, Option<Range<usize>>);

/// What the index costs per key: its op number and, with the table's spare room and control
/// bytes, about as much again.
const INDEX_BYTES_PER_KEY: usize = 2 * std::mem::size_of::<usize>();

/// The buffer is compacted once superseded values are more than half of it and it holds at
/// least this much. Tests use a small one, so they compact often.
const COMPACT_FROM: usize = if cfg!(test) { 64 } else { 1 << 20 };

/// The last put or remove of each staged key, packed in one buffer. A restore chunk of an
/// uncompacted changelog repeats hot keys many times: keeping only the last write bounds the
/// chunk by its distinct keys, and each key costs one sled insert per chunk.
#[derive(Default)]
pub(crate) struct Writes {
    buf: Vec<u8>,
    ops: Vec<Op>,
    /// Op numbers by key.
    index: HashTable<usize>,
    hasher: foldhash::fast::RandomState,
    /// Bytes of values a later write of their key replaced, still in `buf`.
    dead: usize,
    /// Where [`Writes::compact`] copies the live bytes (kept, so it allocates once).
    spare: Vec<u8>,
}

impl Writes {
    /// Stages a put of `tag + id` (a changelog key) or, without a value, its removal.
    pub(crate) fn push(&mut self, tag: Option<u8>, id: &[u8], value: Option<&[u8]>) {
        let start = self.buf.len();
        self.buf.extend(tag);
        self.buf.extend_from_slice(id);
        let key = start..self.buf.len();
        let Self {
            buf,
            ops,
            index,
            hasher,
            dead,
            ..
        } = self;
        let hash = hasher.hash_one(&buf[key.clone()]);
        let staged = index
            .find(hash, |&i| buf[ops[i].0.clone()] == buf[key.clone()])
            .copied();
        match staged {
            Some(i) => {
                buf.truncate(start);
                let op = &mut ops[i];
                op.1 = match (value, op.1.take()) {
                    // Same length (a quantity that kept its digits): in place, no garbage.
                    (Some(v), Some(old)) if old.len() == v.len() => {
                        buf[old.clone()].copy_from_slice(v);
                        Some(old)
                    }
                    (v, old) => {
                        *dead += old.map_or(0, |o| o.len());
                        v.map(|v| append(buf, v))
                    }
                };
            }
            None => {
                let value = value.map(|v| append(buf, v));
                ops.push((key, value));
                index.insert_unique(hash, ops.len() - 1, |&i| {
                    hasher.hash_one(&buf[ops[i].0.clone()])
                });
            }
        }
        if self.dead * 2 > self.buf.len() && self.buf.len() >= COMPACT_FROM {
            self.compact();
        }
    }

    /// Copies the live keys and values into a fresh buffer, dropping the superseded values, so
    /// a chunk of many rewrites of few keys holds about what its keys need.
    fn compact(&mut self) {
        let Self {
            buf, ops, spare, ..
        } = self;
        spare.clear();
        for (key, value) in ops.iter_mut() {
            *key = append(spare, &buf[key.clone()]);
            if let Some(v) = value {
                *v = append(spare, &buf[v.clone()]);
            }
        }
        std::mem::swap(buf, spare);
        self.dead = 0;
    }

    /// Bytes the staged writes hold (keys, values, their places and index), for bounding a
    /// restore chunk.
    pub(crate) fn bytes(&self) -> usize {
        self.buf.len() + self.ops.len() * (std::mem::size_of::<Op>() + INDEX_BYTES_PER_KEY)
    }

    /// Writes each staged key, then forgets them (keeping the buffers for the next batch). Keys
    /// go in ascending order, so consecutive inserts land in the same sled leaf while it is hot.
    /// Each insert is atomic on its own, never the whole batch: the caller writes its checkpoint
    /// after, so a crash in between leaves rows newer than the checkpoint, which a restore from
    /// that checkpoint overwrites with the same values.
    pub(crate) fn apply(&mut self, db: &sled::Db) -> Result<(), sled::Error> {
        let buf = &self.buf;
        self.ops
            .sort_unstable_by(|a, b| buf[a.0.clone()].cmp(&buf[b.0.clone()]));
        let written = self.ops.iter().try_for_each(|(key, value)| {
            let key = &buf[key.clone()];
            match value {
                Some(v) => db.insert(key, &buf[v.clone()]).map(drop),
                None => db.remove(key).map(drop),
            }
        });
        self.clear();
        written
    }

    /// Forgets every staged write, keeping the buffers.
    pub(crate) fn clear(&mut self) {
        self.buf.clear();
        self.ops.clear();
        self.index.clear();
        self.dead = 0;
    }
}

fn append(buf: &mut Vec<u8>, v: &[u8]) -> Range<usize> {
    let start = buf.len();
    buf.extend_from_slice(v);
    start..buf.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> sled::Db {
        sled::Config::new().temporary(true).open().unwrap()
    }

    #[test]
    fn the_last_write_of_a_key_wins_whatever_its_length() {
        let mut w = Writes::default();
        w.push(Some(b's'), b"k", Some(b"one"));
        w.push(Some(b's'), b"j", Some(b"kept"));
        w.push(Some(b's'), b"k", Some(b"two"));
        w.push(Some(b's'), b"k", Some(b"three"));
        w.push(None, b"gone", Some(b"x"));
        w.push(None, b"gone", None);
        assert_eq!(w.ops.len(), 3);
        let db = db();
        db.insert(b"gone", b"old").unwrap();
        w.apply(&db).unwrap();
        assert_eq!(db.get(b"sk").unwrap().as_deref(), Some(&b"three"[..]));
        assert_eq!(db.get(b"sj").unwrap().as_deref(), Some(&b"kept"[..]));
        assert_eq!(db.get(b"gone").unwrap(), None);
    }

    #[test]
    fn a_put_after_a_remove_puts_and_apply_leaves_nothing_staged() {
        let mut w = Writes::default();
        w.push(None, b"k", None);
        w.push(None, b"k", Some(b"back"));
        let db = db();
        w.apply(&db).unwrap();
        assert_eq!(db.get(b"k").unwrap().as_deref(), Some(&b"back"[..]));
        assert_eq!(w.bytes(), 0);
        w.push(None, b"k", Some(b"again"));
        w.apply(&db).unwrap();
        assert_eq!(db.get(b"k").unwrap().as_deref(), Some(&b"again"[..]));
    }

    #[test]
    fn repeated_same_length_writes_of_one_key_do_not_grow_the_batch() {
        let mut w = Writes::default();
        w.push(None, b"hot", Some(b"0001"));
        let once = w.bytes();
        for i in 0..1000 {
            w.push(None, b"hot", Some(format!("{i:04}").as_bytes()));
        }
        assert_eq!(w.bytes(), once);
    }

    #[test]
    fn rewrites_of_other_lengths_are_compacted_away_and_the_last_values_kept() {
        let mut w = Writes::default();
        for i in 0..1000 {
            for k in [&b"a"[..], b"b", b"c"] {
                // Lengths 1 to 4, so most rewrites do not fit in place.
                w.push(None, k, Some(&vec![k[0]; i % 4 + 1]));
            }
            w.push(None, b"gone", Some(b"x"));
            w.push(None, b"gone", None);
        }
        assert!(
            w.buf.len() <= 2 * 3 * (1 + 4) + COMPACT_FROM,
            "{} bytes buffered for 3 keys",
            w.buf.len()
        );
        let db = db();
        w.apply(&db).unwrap();
        for k in [&b"a"[..], b"b", b"c"] {
            assert_eq!(db.get(k).unwrap().as_deref(), Some(&vec![k[0]; 4][..]));
        }
        assert_eq!(db.get(b"gone").unwrap(), None);
    }
}
