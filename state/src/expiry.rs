//! Where the dedupe index's expiry sweep stands, and the oldest event time the index can hold.
//! With that floor known, a commit whose retention bound is below it skips the sweep entirely.

/// The sweep's position (`C`: an index, or the last key examined) and what it learned, shared
/// by a store's handles.
#[derive(Debug)]
pub(crate) struct Expiry<C = usize> {
    /// Position the next scan starts at; the default is the start (a new cycle).
    cursor: C,
    /// Every entry in the store has an event time at or after this (`i64::MIN`: unknown).
    floor: i64,
    /// Oldest event time seen by the current cycle or written since it began.
    cycle_min: i64,
}

impl<C: Default> Default for Expiry<C> {
    fn default() -> Self {
        Self {
            cursor: C::default(),
            floor: i64::MIN,
            cycle_min: i64::MAX,
        }
    }
}

impl<C: Default> Expiry<C> {
    /// Where the next scan starts; the default is the start.
    pub(crate) fn cursor(&self) -> &C {
        &self.cursor
    }

    /// The scan stopped at `next`: the next one resumes there.
    pub(crate) fn stopped_at(&mut self, next: C) {
        self.cursor = next;
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
        self.cursor = C::default();
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
