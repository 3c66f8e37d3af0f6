//! The task's cache of committed states, decoded: a key that comes back soon after its batch
//! reached the store skips sled's read and the state's decode. Bounded by bytes, in two generations.

use std::cell::Cell;
use std::collections::HashMap;

use super::FastHash;

/// Committed states of one task, each the newest committed version of its key; anything it
/// drops is still in the store. Two generations keep it bounded without a list to maintain:
/// when the young one fills up it becomes the old one, and the old one is dropped.
pub(super) struct StateCache<S> {
    young: HashMap<String, (S, usize), FastHash>,
    old: HashMap<String, (S, usize), FastHash>,
    young_bytes: usize,
    /// Bytes one generation may hold: half the task's budget (0: the cache is off).
    generation_bytes: usize,
    hits: Cell<u64>,
    misses: Cell<u64>,
}

/// Bytes an entry costs beyond its key's and state's own: the map's slot and control bytes.
const ENTRY_OVERHEAD: usize = 16;

impl<S> StateCache<S> {
    /// A cache that holds at most about `max_bytes` of keys and states.
    pub(super) fn new(max_bytes: usize) -> Self {
        Self {
            young: HashMap::default(),
            old: HashMap::default(),
            young_bytes: 0,
            generation_bytes: max_bytes / 2,
            hits: Cell::new(0),
            misses: Cell::new(0),
        }
    }

    /// The cached state of `key`, counted as a hit or a miss.
    pub(super) fn get(&self, key: &str) -> Option<&S> {
        let found = self.young.get(key).or_else(|| self.old.get(key));
        self.count(found.is_some());
        found.map(|(s, _)| s)
    }

    /// Removes and returns the cached state of `key` (it is about to change), counted as a hit
    /// or a miss.
    pub(super) fn take(&mut self, key: &str) -> Option<S> {
        let found = match self.young.remove(key) {
            Some((s, bytes)) => {
                self.young_bytes -= bytes;
                Some(s)
            }
            None => self.old.remove(key).map(|(s, _)| s),
        };
        self.count(found.is_some());
        found
    }

    fn count(&self, hit: bool) {
        let c = if hit { &self.hits } else { &self.misses };
        c.set(c.get() + 1);
    }

    /// Keeps `state` as the newest committed version of `key`; `bytes` is what it holds.
    pub(super) fn put(&mut self, key: String, state: S, bytes: usize) {
        if self.generation_bytes == 0 {
            return;
        }
        let bytes = bytes + key.capacity() + ENTRY_OVERHEAD + std::mem::size_of::<(String, S)>();
        self.old.remove(&key);
        if let Some((_, replaced)) = self.young.insert(key, (state, bytes)) {
            self.young_bytes -= replaced;
        }
        self.young_bytes += bytes;
        if self.young_bytes > self.generation_bytes {
            self.old = std::mem::take(&mut self.young);
            self.young_bytes = 0;
        }
    }

    /// Forgets every state (the store is about to be restored).
    pub(super) fn clear(&mut self) {
        self.young.clear();
        self.old.clear();
        self.young_bytes = 0;
    }

    /// Hits and misses since the last call.
    pub(super) fn take_counts(&self) -> (u64, u64) {
        (self.hits.take(), self.misses.take())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What one entry of key `k-N` and a `u64` state costs the budget.
    fn entry_bytes() -> usize {
        let mut c = StateCache::new(usize::MAX);
        c.put("k-0".to_string(), 0u64, 0);
        c.young_bytes
    }

    #[test]
    fn a_put_state_is_found_until_it_is_taken() {
        let mut c = StateCache::new(1 << 20);
        c.put("k".to_string(), 7u64, 0);
        assert_eq!(c.get("k"), Some(&7));
        assert_eq!(c.take("k"), Some(7));
        assert_eq!(c.get("k"), None);
        assert_eq!(c.take_counts(), (2, 1));
    }

    #[test]
    fn a_newer_version_replaces_the_older_in_either_generation() {
        let mut c = StateCache::new(4 * entry_bytes());
        c.put("k-0".to_string(), 1u64, 0);
        c.put("k-1".to_string(), 1, 0);
        c.put("k-2".to_string(), 1, 0);
        // The third entry overflowed the young generation: k-0 .. k-2 are old now.
        assert_eq!(c.young.len(), 0);
        c.put("k-0".to_string(), 2, 0);
        assert_eq!(c.get("k-0"), Some(&2));
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn it_holds_at_most_its_budget_and_drops_the_oldest_generation() {
        let per = entry_bytes();
        let mut c = StateCache::new(10 * per);
        for i in 0..100u64 {
            c.put(format!("k-{i}"), i, 0);
            assert!(c.len() * per <= 10 * per + per, "{} entries", c.len());
        }
        assert_eq!(c.get("k-99"), Some(&99));
        assert_eq!(c.get("k-0"), None);
    }

    #[test]
    fn a_state_larger_than_a_generation_is_not_kept_long() {
        let mut c = StateCache::new(1000);
        c.put("big".to_string(), 1u64, 10_000);
        c.put("next".to_string(), 2u64, 10_000);
        assert_eq!(c.get("big"), None);
    }

    #[test]
    fn a_zero_budget_keeps_nothing() {
        let mut c = StateCache::new(0);
        c.put("k".to_string(), 1u64, 0);
        assert_eq!(c.get("k"), None);
    }

    #[test]
    fn clear_forgets_both_generations() {
        let mut c = StateCache::new(3 * entry_bytes());
        c.put("k-0".to_string(), 1u64, 0);
        c.put("k-1".to_string(), 1, 0);
        c.put("k-2".to_string(), 1, 0);
        c.clear();
        assert_eq!(c.len(), 0);
        assert_eq!(c.get("k-2"), None);
    }
}
