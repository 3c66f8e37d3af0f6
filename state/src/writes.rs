//! An ordered log of store writes, applied key by key with sled's lock-free inserts.
//! sled's `apply_batch` takes a process-wide lock that stalls every reader of every store.

use std::ops::Range;

/// A staged write: the key's and (for a put) the value's place in the buffer.
type Op = (Range<usize>, Option<Range<usize>>);

/// Puts and removes in the order they were staged, packed in one buffer; a later write of the
/// same key wins when applied.
#[derive(Default)]
pub(crate) struct Writes {
    buf: Vec<u8>,
    ops: Vec<Op>,
}

impl Writes {
    /// Stages a put of `tag + id` (a changelog key) or, without a value, its removal.
    pub(crate) fn push(&mut self, tag: Option<u8>, id: &[u8], value: Option<&[u8]>) {
        let start = self.buf.len();
        self.buf.extend(tag);
        self.buf.extend_from_slice(id);
        let key = start..self.buf.len();
        let value = value.map(|v| {
            let start = self.buf.len();
            self.buf.extend_from_slice(v);
            start..self.buf.len()
        });
        self.ops.push((key, value));
    }

    /// Applies only the last write of each key, which leaves the store as applying every write
    /// in order would: a restore chunk of an uncompacted changelog repeats hot keys many times,
    /// and a commit batch repeats a key shipped twice. Keys go in ascending order, so
    /// consecutive inserts land in the same sled leaf while it is hot. Each insert is atomic on
    /// its own, never the whole log: the caller writes its checkpoint after, so a crash in
    /// between leaves rows newer than the checkpoint, which a restore from that checkpoint
    /// overwrites with the same values.
    pub(crate) fn apply_last_per_key(&self, db: &sled::Db) -> Result<(), sled::Error> {
        let key = |i: usize| &self.buf[self.ops[i].0.clone()];
        let mut order: Vec<usize> = (0..self.ops.len()).collect();
        // Stable: the writes of one key stay in the order they were staged.
        order.sort_by(|&a, &b| key(a).cmp(key(b)));
        for (n, &i) in order.iter().enumerate() {
            let superseded = order.get(n + 1).is_some_and(|&j| key(j) == key(i));
            if !superseded {
                self.write(db, &self.ops[i])?;
            }
        }
        Ok(())
    }

    fn write(&self, db: &sled::Db, (key, value): &Op) -> Result<(), sled::Error> {
        let key = &self.buf[key.clone()];
        match value {
            Some(v) => db.insert(key, &self.buf[v.clone()])?,
            None => db.remove(key)?,
        };
        Ok(())
    }
}
