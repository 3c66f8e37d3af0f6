//! The largest record tally may hand the producer for a flow: the producer's own limit and every
//! target topic's, less room for batch framing and compression that cannot shrink the bytes.

/// librdkafka's `message.max.bytes` when the config does not set it.
pub const PRODUCER_DEFAULT_MAX: usize = 1_000_000;

/// Room kept for the record batch's framing and headers tally adds itself.
const FRAMING: usize = 1024;

/// How many bytes of a record may be key, value and headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLimit {
    max: usize,
}

impl RecordLimit {
    /// The limit of records going to topics accepting at most `topic_max` bytes per batch, from a
    /// producer accepting `producer_max`.
    pub fn new(producer_max: usize, topic_max: usize) -> Self {
        let max = producer_max.min(topic_max);
        // lz4 stores incompressible bytes with a little growth (about 1/255); 1/128 covers it.
        Self {
            max: max.saturating_sub(max / 128).saturating_sub(FRAMING),
        }
    }

    /// The budget for key, value and headers together.
    pub fn bytes(&self) -> usize {
        self.max
    }

    /// Whether a record of `bytes` (key, value and headers) can be produced.
    pub fn fits(&self, bytes: usize) -> bool {
        bytes <= self.max
    }

    /// Whether a record that grew by up to `growth` from `bytes` might not fit: a cheap test
    /// that spares the exact one for the records far below the limit.
    pub fn near(&self, bytes: usize, growth: usize) -> bool {
        bytes.saturating_add(growth).saturating_mul(4) > self.max
    }
}

impl Default for RecordLimit {
    fn default() -> Self {
        Self::new(PRODUCER_DEFAULT_MAX, PRODUCER_DEFAULT_MAX)
    }
}

/// The producer's `message.max.bytes` from the passthrough settings, or librdkafka's default.
pub fn producer_max(passthrough: &std::collections::BTreeMap<String, String>) -> usize {
    passthrough
        .get("message.max.bytes")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(PRODUCER_DEFAULT_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smaller_limit_wins_with_room_for_framing() {
        let l = RecordLimit::new(1_000_000, 1_048_588);
        assert!(l.fits(900_000));
        assert!(!l.fits(1_000_000));
        assert!(l.bytes() < 1_000_000 - 1024);
    }

    #[test]
    fn small_records_are_never_near() {
        let l = RecordLimit::default();
        assert!(!l.near(2_000, 300));
        assert!(l.near(200_000, 60_000));
    }
}
