//! An ordered log of store writes, applied key by key with sled's lock-free inserts.
//! sled's `apply_batch` takes a process-wide lock that stalls every reader of every store.

use std::collections::HashMap;
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

    /// Applies every write in order. Each insert is atomic on its own, never the whole log: the
    /// caller writes its checkpoint after, so a crash in between leaves rows newer than the
    /// checkpoint, which a restore from that checkpoint overwrites with the same values.
    pub(crate) fn apply(&self, db: &sled::Db) -> Result<(), sled::Error> {
        for op in &self.ops {
            self.write(db, op)?;
        }
        Ok(())
    }

    /// Applies only the last write of each key, which leaves the store as [`Writes::apply`]
    /// would: a restore chunk of an uncompacted changelog repeats hot keys many times.
    pub(crate) fn apply_last_per_key(&self, db: &sled::Db) -> Result<(), sled::Error> {
        let mut last: HashMap<&[u8], usize> = HashMap::with_capacity(self.ops.len());
        for (i, (key, _)) in self.ops.iter().enumerate() {
            last.insert(&self.buf[key.clone()], i);
        }
        for (i, op) in self.ops.iter().enumerate() {
            if last.get(&self.buf[op.0.clone()]) == Some(&i) {
                self.write(db, op)?;
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
