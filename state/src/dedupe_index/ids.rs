//! The ids of a dedupe index, packed for memory: id bytes in large chunks, one fixed-size slot
//! per id in insertion order, and a hash table of slot numbers (~40 bytes per id plus the id).

use std::hash::BuildHasher;

use hashbrown::HashTable;

use crate::dedupe::DedupeEntry;

/// Id bytes live in chunks of this size; an id never spans two (ids are at most 64 KiB). Tests
/// use the smallest, so they cross chunks and compact often.
const CHUNK_BITS: u32 = if cfg!(test) { 16 } else { 20 };
const CHUNK: usize = 1 << CHUNK_BITS;
/// Slots live in chunks of this many, so growing never copies (or briefly doubles) them all.
const SLOTS_PER_CHUNK: usize = 1 << 14;

/// The longest id the index holds: the log stores an id's length in two bytes and cuts a longer
/// one (event ids are validated short strings), and memory holds what the log would.
const MAX_ID_LEN: usize = u16::MAX as usize;

fn cut(id: &[u8]) -> &[u8] {
    &id[..id.len().min(MAX_ID_LEN)]
}

/// The index outgrew what a slot can address: 4 GiB of id bytes or 4G ids in one store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Full;

#[derive(Clone, Copy)]
struct Slot {
    /// Chunk number and offset in it.
    at: u32,
    len: u32,
    entry: DedupeEntry,
}

fn slot_in(slots: &[Vec<Slot>], i: usize) -> &Slot {
    &slots[i / SLOTS_PER_CHUNK][i % SLOTS_PER_CHUNK]
}

/// Ids and their entries in insertion order; a removal moves the last id into the hole.
#[derive(Default)]
pub(crate) struct Ids {
    bytes: Vec<Vec<u8>>,
    slots: Vec<Vec<Slot>>,
    len: usize,
    table: HashTable<u32>,
    hasher: foldhash::fast::RandomState,
    /// Id bytes of removed ids, still in the chunks until they are compacted.
    dead: usize,
}

impl Ids {
    /// Number of ids.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn slot(&self, i: usize) -> &Slot {
        slot_in(&self.slots, i)
    }

    fn slot_mut(&mut self, i: usize) -> &mut Slot {
        &mut self.slots[i / SLOTS_PER_CHUNK][i % SLOTS_PER_CHUNK]
    }

    fn id<'a>(bytes: &'a [Vec<u8>], s: &Slot) -> &'a [u8] {
        let chunk = (s.at >> CHUNK_BITS) as usize;
        let start = (s.at as usize) & (CHUNK - 1);
        &bytes[chunk][start..start + s.len as usize]
    }

    /// The id stored at slot `i`.
    fn id_at<'a>(bytes: &'a [Vec<u8>], slots: &[Vec<Slot>], i: u32) -> &'a [u8] {
        Self::id(bytes, slot_in(slots, i as usize))
    }

    /// The slot of `id` (already cut), whose hash is `hash`.
    fn find(&self, hash: u64, id: &[u8]) -> Option<usize> {
        let (bytes, slots) = (&self.bytes, &self.slots);
        self.table
            .find(hash, |&i| Self::id_at(bytes, slots, i) == id)
            .map(|&i| i as usize)
    }

    /// The entry of `id`.
    pub(crate) fn get(&self, id: &[u8]) -> Option<&DedupeEntry> {
        let id = cut(id);
        self.find(self.hasher.hash_one(id), id)
            .map(|i| &self.slot(i).entry)
    }

    /// The id and entry at insertion position `i`.
    pub(crate) fn get_index(&self, i: usize) -> Option<(&[u8], &DedupeEntry)> {
        (i < self.len).then(|| {
            let s = self.slot(i);
            (Self::id(&self.bytes, s), &s.entry)
        })
    }

    /// Every id and entry, in insertion order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], &DedupeEntry)> {
        self.slots
            .iter()
            .flatten()
            .map(|s| (Self::id(&self.bytes, s), &s.entry))
    }

    /// Sets the entry of `id`; true when the id is new.
    pub(crate) fn insert(&mut self, id: &[u8], entry: DedupeEntry) -> Result<bool, Full> {
        let id = cut(id);
        let hash = self.hasher.hash_one(id);
        if let Some(i) = self.find(hash, id) {
            self.slot_mut(i).entry = entry;
            return Ok(false);
        }
        if self.len >= u32::MAX as usize {
            return Err(Full);
        }
        let at = self.push_bytes(id)?;
        let room = self.slots.last().is_some_and(|c| c.len() < SLOTS_PER_CHUNK);
        if !room {
            self.slots.push(Vec::with_capacity(SLOTS_PER_CHUNK));
        }
        if let Some(chunk) = self.slots.last_mut() {
            chunk.push(Slot {
                at,
                len: id.len() as u32,
                entry,
            });
        }
        let i = self.len as u32;
        self.len += 1;
        let (bytes, slots, hasher) = (&self.bytes, &self.slots, &self.hasher);
        self.table
            .insert_unique(hash, i, |&j| hasher.hash_one(Self::id_at(bytes, slots, j)));
        Ok(true)
    }

    /// Appends `id` to the last chunk with room; its address.
    fn push_bytes(&mut self, id: &[u8]) -> Result<u32, Full> {
        let fits = self
            .bytes
            .last()
            .is_some_and(|c| CHUNK - c.len() >= id.len());
        if !fits {
            if self.bytes.len() >= 1 << (32 - CHUNK_BITS) {
                return Err(Full);
            }
            self.bytes.push(Vec::with_capacity(CHUNK));
        }
        let chunk_no = self.bytes.len() - 1;
        let chunk = &mut self.bytes[chunk_no];
        let at = ((chunk_no as u32) << CHUNK_BITS) | chunk.len() as u32;
        chunk.extend_from_slice(id);
        Ok(at)
    }

    /// Removes `id`; the removed entry and, when another id moved into its position (the last
    /// one), that id's entry.
    pub(crate) fn swap_remove(&mut self, id: &[u8]) -> Option<(DedupeEntry, Option<DedupeEntry>)> {
        let id = cut(id);
        let hash = self.hasher.hash_one(id);
        let (bytes, slots) = (&self.bytes, &self.slots);
        let found = self
            .table
            .find_entry(hash, |&i| Self::id_at(bytes, slots, i) == id);
        let (i, _) = found.ok()?.remove();
        let i = i as usize;
        let removed = *self.slot(i);
        let last = self.len - 1;
        let moved = (i != last).then(|| {
            let moved = *self.slot(last);
            *self.slot_mut(i) = moved;
            moved
        });
        if let Some(m) = &moved {
            let hash = self.hasher.hash_one(Self::id(&self.bytes, m));
            if let Some(at) = self.table.find_mut(hash, |&j| j as usize == last) {
                *at = i as u32;
            }
        }
        self.pop_slot();
        self.dead += removed.len as usize;
        if self.dead > CHUNK && self.dead > self.live_bytes() {
            self.compact();
        }
        Some((removed.entry, moved.map(|m| m.entry)))
    }

    fn pop_slot(&mut self) {
        if let Some(chunk) = self.slots.last_mut() {
            chunk.pop();
            if chunk.is_empty() {
                self.slots.pop();
            }
        }
        self.len -= 1;
    }

    fn live_bytes(&self) -> usize {
        self.bytes.iter().map(Vec::len).sum::<usize>() - self.dead
    }

    /// Rewrites the id chunks with the live ids only.
    fn compact(&mut self) {
        let old = std::mem::take(&mut self.bytes);
        self.dead = 0;
        for i in 0..self.len {
            let s = *self.slot(i);
            // Fits: the live ids took no more room before.
            if let Ok(at) = self.push_bytes(Self::id(&old, &s)) {
                self.slot_mut(i).at = at;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn entry(t: i64) -> DedupeEntry {
        DedupeEntry {
            fingerprint: t as u64,
            event_time_ms: t,
            offset: t,
        }
    }

    #[test]
    fn a_removal_moves_the_last_id_into_the_hole() {
        let mut ids = Ids::default();
        for (n, id) in ["a", "b", "c"].iter().enumerate() {
            assert_eq!(ids.insert(id.as_bytes(), entry(n as i64)), Ok(true));
        }
        assert_eq!(ids.swap_remove(b"a"), Some((entry(0), Some(entry(2)))));
        assert_eq!(ids.get_index(0), Some((&b"c"[..], &entry(2))));
        assert_eq!(ids.get(b"c"), Some(&entry(2)));
        assert_eq!(ids.swap_remove(b"b"), Some((entry(1), None)));
        assert_eq!(ids.swap_remove(b"b"), None);
        assert_eq!(ids.len(), 1);
    }

    #[test]
    fn an_empty_id_is_an_id_like_any_other() {
        let mut ids = Ids::default();
        assert_eq!(ids.insert(b"", entry(1)), Ok(true));
        assert_eq!(ids.get(b""), Some(&entry(1)));
        assert_eq!(ids.swap_remove(b""), Some((entry(1), None)));
    }

    #[test]
    fn an_id_longer_than_the_log_holds_is_kept_as_the_log_cuts_it() {
        let mut ids = Ids::default();
        let long = vec![b'x'; MAX_ID_LEN + 10];
        assert_eq!(ids.insert(&long, entry(1)), Ok(true));
        assert_eq!(ids.get(&long[..MAX_ID_LEN]), Some(&entry(1)));
        assert_eq!(ids.get_index(0).map(|(id, _)| id.len()), Some(MAX_ID_LEN));
    }

    #[test]
    fn removed_ids_give_their_room_back_and_the_rest_stay_readable() {
        let mut ids = Ids::default();
        let id = |n: usize| format!("{n:04}-{}", "x".repeat(1000)).into_bytes();
        for n in 0..400 {
            ids.insert(&id(n), entry(n as i64)).unwrap();
        }
        let before = ids.bytes.len();
        for n in 0..300 {
            ids.swap_remove(&id(n)).unwrap();
        }
        assert!(
            ids.bytes.len() < before,
            "{} chunks, as before",
            ids.bytes.len()
        );
        for n in 300..400 {
            assert_eq!(ids.get(&id(n)), Some(&entry(n as i64)));
        }
    }

    proptest! {
        /// Inserts and removes over many chunks (and compactions) agree with a plain map.
        #[test]
        fn the_index_agrees_with_a_map(ops in prop::collection::vec((0u16..400, any::<bool>()), 1..4000),
                                       pad in 0usize..600) {
            let mut ids = Ids::default();
            let mut model = HashMap::new();
            for (n, (k, put)) in ops.iter().enumerate() {
                let id = format!("{k}-{}", "p".repeat(pad)).into_bytes();
                if *put {
                    let new = ids.insert(&id, entry(n as i64)).unwrap();
                    prop_assert_eq!(new, model.insert(id, entry(n as i64)).is_none());
                } else {
                    prop_assert_eq!(ids.swap_remove(&id).map(|r| r.0), model.remove(&id));
                }
            }
            prop_assert_eq!(ids.len(), model.len());
            for (id, e) in &model {
                prop_assert_eq!(ids.get(id), Some(e));
            }
            let listed: HashMap<Vec<u8>, DedupeEntry> =
                ids.iter().map(|(id, e)| (id.to_vec(), *e)).collect();
            prop_assert_eq!(listed, model);
        }
    }
}
