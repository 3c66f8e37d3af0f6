//! The per-location and per-currency part of a state: a map of few entries kept as a sorted
//! vector, smaller to hold, clone and decode than a tree, and encoded byte for byte as one.

use std::ops::Index;

use bincode::de::{BorrowDecoder, Decoder};
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use bincode::{BorrowDecode, Decode, Encode};

/// A map from names to values, in name order; a state holds a handful of entries, where one
/// allocation beats a tree's nodes on every load, copy and store of the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmallMap<V>(Vec<(String, V)>);

impl<V> Default for SmallMap<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> SmallMap<V> {
    /// An empty map, without an allocation.
    pub const fn new() -> Self {
        Self(Vec::new())
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the map has no entry.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    /// The value of `key`, to change in place.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        self.find(key).ok().map(|i| &mut self.0[i].1)
    }

    /// Sets `key` to `value`, returning the value it replaced.
    pub fn insert(&mut self, key: String, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (key, value));
                None
            }
        }
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<V> {
        self.find(key).ok().map(|i| self.0.remove(i).1)
    }

    /// Bytes the map holds on the heap: its entries and their names.
    pub fn heap_bytes(&self) -> usize {
        self.0.capacity() * std::mem::size_of::<(String, V)>()
            + self.0.iter().map(|(k, _)| k.capacity()).sum::<usize>()
    }

    /// Entries in name order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &V)> + DoubleEndedIterator {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Values in name order.
    pub fn values(&self) -> impl ExactSizeIterator<Item = &V> + DoubleEndedIterator {
        self.0.iter().map(|(_, v)| v)
    }
}

impl<V> FromIterator<(String, V)> for SmallMap<V> {
    /// Entries in any order; a name given twice keeps its last value, as a map's inserts would.
    fn from_iter<I: IntoIterator<Item = (String, V)>>(entries: I) -> Self {
        let mut v: Vec<(String, V)> = entries.into_iter().collect();
        if !strictly_sorted(&v) {
            // Stable, so equal names stay in given order and the last one is kept below.
            v.sort_by(|a, b| a.0.cmp(&b.0));
            let mut kept: Vec<(String, V)> = Vec::with_capacity(v.len());
            for e in v {
                match kept.last_mut() {
                    Some(last) if last.0 == e.0 => *last = e,
                    _ => kept.push(e),
                }
            }
            v = kept;
        }
        Self(v)
    }
}

fn strictly_sorted<V>(v: &[(String, V)]) -> bool {
    v.windows(2).all(|w| w[0].0 < w[1].0)
}

impl<V> Index<&str> for SmallMap<V> {
    type Output = V;

    /// The value of `key`; panics when it is absent, as a map's index does.
    fn index(&self, key: &str) -> &V {
        match self.get(key) {
            Some(v) => v,
            None => panic!("no entry `{key}` in the map"),
        }
    }
}

impl<V: Encode> Encode for SmallMap<V> {
    /// A length, then each name and value: the bytes bincode writes for a `BTreeMap`, so stores
    /// and changelogs written before this type read back unchanged.
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        self.0.encode(encoder)
    }
}

impl<Ctx, V: Decode<Ctx>> Decode<Ctx> for SmallMap<V> {
    fn decode<D: Decoder<Context = Ctx>>(decoder: &mut D) -> Result<Self, DecodeError> {
        // What tally wrote is in order and kept as it is; anything else is read as a map would
        // read it (the collect sorts only what is out of order, in place).
        Ok(Vec::<(String, V)>::decode(decoder)?.into_iter().collect())
    }
}

impl<'de, Ctx, V: Decode<Ctx>> BorrowDecode<'de, Ctx> for SmallMap<V> {
    fn borrow_decode<D: BorrowDecoder<'de, Context = Ctx>>(
        decoder: &mut D,
    ) -> Result<Self, DecodeError> {
        Self::decode(decoder)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn encoded<T: Encode>(value: &T) -> Vec<u8> {
        bincode::encode_to_vec(value, bincode::config::standard()).unwrap()
    }

    fn decoded<T: Decode<()>>(bytes: &[u8]) -> T {
        bincode::decode_from_slice(bytes, bincode::config::standard())
            .unwrap()
            .0
    }

    fn entries() -> impl Strategy<Value = Vec<(String, i64)>> {
        prop::collection::vec(("[a-e]{0,3}", any::<i64>()), 0..8)
    }

    proptest! {
        #[test]
        fn it_encodes_the_bytes_of_the_map_it_stands_for(entries in entries()) {
            let tree: BTreeMap<String, i64> = entries.iter().cloned().collect();
            let small: SmallMap<i64> = entries.into_iter().collect();
            prop_assert_eq!(encoded(&small), encoded(&tree));
        }

        #[test]
        fn it_reads_what_a_map_wrote(entries in entries()) {
            let tree: BTreeMap<String, i64> = entries.into_iter().collect();
            let small: SmallMap<i64> = decoded(&encoded(&tree));
            prop_assert!(small.iter().eq(tree.iter().map(|(k, v)| (k.as_str(), v))));
        }

        #[test]
        fn inserts_and_removes_agree_with_a_map(
            ops in prop::collection::vec(("[a-d]{1}", any::<i64>(), any::<bool>()), 0..24),
        ) {
            let mut tree = BTreeMap::new();
            let mut small = SmallMap::new();
            for (k, v, remove) in ops {
                if remove {
                    prop_assert_eq!(small.remove(&k), tree.remove(&k));
                } else {
                    prop_assert_eq!(small.insert(k.clone(), v), tree.insert(k, v));
                }
            }
            prop_assert!(small.iter().eq(tree.iter().map(|(k, v)| (k.as_str(), v))));
        }
    }

    #[test]
    fn an_unordered_encoding_is_read_in_order_keeping_the_last_of_a_repeated_name() {
        let written = vec![("b".to_string(), 1i64), ("a".into(), 2), ("b".into(), 3)];
        let small: SmallMap<i64> = decoded(&encoded(&written));
        assert_eq!(small.iter().collect::<Vec<_>>(), [("a", &2), ("b", &3)]);
    }

    #[test]
    fn a_value_changes_in_place_and_an_absent_name_has_none() {
        let mut small: SmallMap<i64> = [("fc-1".to_string(), 5)].into_iter().collect();
        *small.get_mut("fc-1").unwrap() += 1;
        assert_eq!(small["fc-1"], 6);
        assert_eq!(small.get("fc-2"), None);
        assert_eq!(small.get_mut("fc-2"), None);
    }
}
