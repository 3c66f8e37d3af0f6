//! Where each live id's put record sits in the dedupe log: eight bytes per id in memory (the
//! record's position and 24 bits of the id's hash), so the ids and entries stay on disk.

use hashbrown::HashTable;

/// Bits of an element that hold the record's position; a log may grow to 1 TiB.
const POS_BITS: u32 = 40;
const TAG_BITS: u32 = 64 - POS_BITS;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;

/// The log outgrew what an element can address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Full;

/// The tag kept of an id's 64-bit hash (its top bits), so most misses are told apart in memory.
fn tag(hash: u64) -> u64 {
    hash >> POS_BITS
}

/// The table's hash of an element, from its tag alone: it is all a rehash has to go on.
fn spread(tag: u64) -> u64 {
    // A 64-bit odd multiplier spreads the 24 bits over the whole word (hashbrown takes the
    // bucket from the low bits and its control byte from the top ones).
    (tag | 1 << TAG_BITS).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn element(hash: u64, pos: u64) -> Result<u64, Full> {
    if pos >> POS_BITS != 0 {
        return Err(Full);
    }
    Ok(pos << TAG_BITS | tag(hash))
}

fn pos_of(e: u64) -> u64 {
    e >> TAG_BITS
}

/// Record positions of the live ids, found by the id's hash; the caller confirms a candidate by
/// reading its record, since a tag matches one id in 16M by chance.
#[derive(Default)]
pub(crate) struct Keydir {
    table: HashTable<u64>,
}

impl Keydir {
    /// An empty keydir with room for `n` ids.
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            table: HashTable::with_capacity(n),
        }
    }

    /// Number of live ids.
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// The position of the record of the id hashed to `hash`, among the candidates `is_it`
    /// confirms (by reading the record).
    pub(crate) fn find(&self, hash: u64, mut is_it: impl FnMut(u64) -> bool) -> Option<u64> {
        let t = tag(hash);
        self.table
            .find(spread(t), |&e| e & TAG_MASK == t && is_it(pos_of(e)))
            .map(|&e| pos_of(e))
    }

    /// Whether the record at `pos`, of an id hashed to `hash`, is that id's live one.
    pub(crate) fn holds(&self, hash: u64, pos: u64) -> bool {
        match element(hash, pos) {
            Ok(want) => self.table.find(spread(tag(hash)), |&e| e == want).is_some(),
            Err(Full) => false,
        }
    }

    /// Records a new id's record at `pos` (the caller found no record of that id).
    pub(crate) fn insert(&mut self, hash: u64, pos: u64) -> Result<(), Full> {
        let e = element(hash, pos)?;
        self.table
            .insert_unique(spread(tag(hash)), e, |&e| spread(e & TAG_MASK));
        Ok(())
    }

    /// Moves the id whose record was at `old` to its newer record at `new`.
    pub(crate) fn replace(&mut self, hash: u64, old: u64, new: u64) -> Result<(), Full> {
        let (old, new) = (element(hash, old)?, element(hash, new)?);
        if let Some(e) = self.table.find_mut(spread(tag(hash)), |&e| e == old) {
            *e = new;
        }
        Ok(())
    }

    /// Forgets the id whose record is at `pos`.
    pub(crate) fn remove(&mut self, hash: u64, pos: u64) {
        if let Ok(want) = element(hash, pos) {
            if let Ok(found) = self.table.find_entry(spread(tag(hash)), |&e| e == want) {
                found.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// Hashes that share their tag, so only the record can tell them apart.
    const SAME_TAG_A: u64 = 0xABCD_EF00_0000_0001;
    const SAME_TAG_B: u64 = 0xABCD_EF00_0000_0002;

    #[test]
    fn ids_that_share_a_tag_are_told_apart_by_their_records() {
        let mut k = Keydir::default();
        k.insert(SAME_TAG_A, 10).unwrap();
        k.insert(SAME_TAG_B, 20).unwrap();
        assert_eq!(k.find(SAME_TAG_A, |pos| pos == 10), Some(10));
        assert_eq!(k.find(SAME_TAG_B, |pos| pos == 20), Some(20));
        assert_eq!(k.find(SAME_TAG_A, |_| false), None);
        assert!(
            k.holds(SAME_TAG_A, 20),
            "same tag and position: the element is the same"
        );
        k.remove(SAME_TAG_A, 10);
        assert_eq!(k.find(SAME_TAG_B, |pos| pos == 20), Some(20));
        assert_eq!(k.len(), 1);
    }

    #[test]
    fn a_replaced_record_is_no_longer_held() {
        let mut k = Keydir::default();
        k.insert(7 << POS_BITS, 100).unwrap();
        k.replace(7 << POS_BITS, 100, 300).unwrap();
        assert!(!k.holds(7 << POS_BITS, 100));
        assert!(k.holds(7 << POS_BITS, 300));
    }

    #[test]
    fn a_position_past_a_terabyte_is_refused() {
        let mut k = Keydir::default();
        assert_eq!(k.insert(1, 1 << POS_BITS), Err(Full));
        assert_eq!(k.insert(1, (1 << POS_BITS) - 1), Ok(()));
    }

    proptest! {
        /// Whatever the hashes (few tags, so they collide), the keydir agrees with a map from
        /// id to position when records are read to confirm a candidate.
        #[test]
        fn the_keydir_agrees_with_a_map(ops in prop::collection::vec((0u16..300, any::<bool>()), 1..3000)) {
            let hash = |id: u16| u64::from(id % 7) << POS_BITS | u64::from(id);
            let mut k = Keydir::default();
            let mut model: HashMap<u16, u64> = HashMap::new();
            // The "log": which id each record position holds.
            let mut log: Vec<u16> = Vec::new();
            for (id, put) in ops {
                let h = hash(id);
                let found = k.find(h, |pos| log[pos as usize] == id);
                prop_assert_eq!(found, model.get(&id).copied());
                if put {
                    let pos = log.len() as u64;
                    log.push(id);
                    match found {
                        Some(old) => k.replace(h, old, pos).unwrap(),
                        None => k.insert(h, pos).unwrap(),
                    }
                    model.insert(id, pos);
                } else if let Some(old) = found {
                    k.remove(h, old);
                    model.remove(&id);
                }
            }
            prop_assert_eq!(k.len(), model.len());
            for (pos, id) in log.iter().enumerate() {
                let live = model.get(id) == Some(&(pos as u64));
                prop_assert_eq!(k.holds(hash(*id), pos as u64), live);
            }
        }
    }
}
