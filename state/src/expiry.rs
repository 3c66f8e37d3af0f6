//! Where the dedupe index's expiry sweep stands, and the oldest event time the index can hold.
//! With that floor known, a commit whose retention bound is below it skips the sweep entirely.

/// The sweep's position and what it learned, shared by a store's handles.
#[derive(Debug)]
pub(crate) struct Expiry {
    /// Key the next scan starts at; empty means the start of the index (a new cycle).
    cursor: Vec<u8>,
    /// Every entry in the store has an event time at or after this (`i64::MIN`: unknown).
    floor: i64,
    /// Oldest event time seen by the current cycle or written since it began.
    cycle_min: i64,
}

impl Default for Expiry {
    fn default() -> Self {
        Self {
            cursor: Vec::new(),
            floor: i64::MIN,
            cycle_min: i64::MAX,
        }
    }
}

impl Expiry {
    /// Where the next scan starts; empty means the start of the index.
    pub(crate) fn cursor(&self) -> &[u8] {
        &self.cursor
    }

    /// The scan stopped at `key`: the next one resumes just after it.
    pub(crate) fn stopped_at(&mut self, key: &[u8]) {
        self.cursor.clear();
        self.cursor.extend_from_slice(key);
        self.cursor.push(0);
    }

    /// Whether an entry older than `before_ms` may exist, so a scan is worth its reads.
    pub(crate) fn may_hold_older_than(&self, before_ms: i64) -> bool {
        before_ms > self.floor
    }

    /// An entry the current cycle examined (expired or not: removing it is not yet committed).
    pub(crate) fn saw(&mut self, event_time_ms: i64) {
        self.cycle_min = self.cycle_min.min(event_time_ms);
    }

    /// The scan reached the end of the index: every entry was seen by this cycle or written
    /// during it, so the oldest of them bounds the whole index.
    pub(crate) fn wrapped(&mut self) {
        self.cursor.clear();
        self.floor = self.cycle_min;
        self.cycle_min = i64::MAX;
    }

    /// A committed entry with this event time is about to be written.
    pub(crate) fn written(&mut self, event_time_ms: i64) {
        self.floor = self.floor.min(event_time_ms);
        self.cycle_min = self.cycle_min.min(event_time_ms);
    }

    /// The store was filled or cleared behind the sweep's back: nothing is known any more.
    pub(crate) fn forget(&mut self) {
        *self = Self::default();
    }
}
