//! Dedupe index entries: which event ids a partition has applied, with their content fingerprint.
//! The fingerprint tells a harmless redelivery from a conflicting event that reuses an id.

use crate::error::StateError;

/// Format version of an encoded dedupe entry.
pub const DEDUPE_VERSION: u8 = 2;
/// Version 1: fingerprint and event time, without the input offset.
const V1_LEN: usize = 1 + 8 + 8;
/// Length of an entry of the current format.
pub(crate) const ENCODED_LEN: usize = V1_LEN + 8;
/// The input offset of an entry written before format 2, which did not record it.
pub const UNKNOWN_OFFSET: i64 = -1;

/// One applied event id, kept until its event time falls out of the retention window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupeEntry {
    /// Content fingerprint of the event that was applied under this id.
    pub fingerprint: u64,
    /// Event time of that event, epoch milliseconds; expiry is by event time, never wall time.
    pub event_time_ms: i64,
    /// Input offset the event was applied from ([`UNKNOWN_OFFSET`] for a format-1 entry), so a
    /// redelivery of that very record after a crash can be told from a duplicate of it.
    pub offset: i64,
}

impl DedupeEntry {
    /// Encodes with a leading format version.
    pub fn encode(&self) -> [u8; ENCODED_LEN] {
        let mut out = [0u8; ENCODED_LEN];
        out[0] = DEDUPE_VERSION;
        out[1..9].copy_from_slice(&self.fingerprint.to_be_bytes());
        out[9..17].copy_from_slice(&self.event_time_ms.to_be_bytes());
        out[17..25].copy_from_slice(&self.offset.to_be_bytes());
        out
    }

    /// Decodes any dedupe entry version this build knows.
    pub fn decode(bytes: &[u8]) -> Result<Self, StateError> {
        match bytes.first() {
            None => Err(StateError::Corrupt {
                what: "dedupe entry",
                detail: "empty value".into(),
            }),
            Some(&1) if bytes.len() == V1_LEN => Ok(Self {
                fingerprint: u64::from_be_bytes(word(bytes, 1)),
                event_time_ms: i64::from_be_bytes(word(bytes, 9)),
                offset: UNKNOWN_OFFSET,
            }),
            Some(&DEDUPE_VERSION) if bytes.len() == ENCODED_LEN => Ok(Self {
                fingerprint: u64::from_be_bytes(word(bytes, 1)),
                event_time_ms: i64::from_be_bytes(word(bytes, 9)),
                offset: i64::from_be_bytes(word(bytes, 17)),
            }),
            Some(&v @ (1 | DEDUPE_VERSION)) => Err(StateError::Corrupt {
                what: "dedupe entry",
                detail: format!(
                    "format {v}: expected {} bytes, found {}",
                    if v == 1 { V1_LEN } else { ENCODED_LEN },
                    bytes.len()
                ),
            }),
            Some(&found) => Err(StateError::UnsupportedVersion {
                what: "dedupe entry",
                found,
                supported: DEDUPE_VERSION,
            }),
        }
    }
}

/// The 8 bytes at `at`; the caller checked the length.
fn word(bytes: &[u8], at: usize) -> [u8; 8] {
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes[at..at + 8]);
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn refuses_an_unknown_version() {
        let mut bytes = DedupeEntry {
            fingerprint: 1,
            event_time_ms: 2,
            offset: 3,
        }
        .encode();
        bytes[0] = 3;
        assert!(matches!(
            DedupeEntry::decode(&bytes),
            Err(StateError::UnsupportedVersion { found: 3, .. })
        ));
    }

    #[test]
    fn reads_a_format_1_entry_with_an_unknown_offset() {
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&7u64.to_be_bytes());
        v1.extend_from_slice(&(-5i64).to_be_bytes());
        assert_eq!(
            DedupeEntry::decode(&v1).unwrap(),
            DedupeEntry {
                fingerprint: 7,
                event_time_ms: -5,
                offset: UNKNOWN_OFFSET,
            }
        );
    }

    #[test]
    fn refuses_a_truncated_entry() {
        let bytes = DedupeEntry {
            fingerprint: 1,
            event_time_ms: 2,
            offset: 3,
        }
        .encode();
        assert!(matches!(
            DedupeEntry::decode(&bytes[..20]),
            Err(StateError::Corrupt { .. })
        ));
    }

    proptest! {
        #[test]
        fn roundtrips(fingerprint in any::<u64>(), event_time_ms in any::<i64>(), offset in any::<i64>()) {
            let e = DedupeEntry { fingerprint, event_time_ms, offset };
            prop_assert_eq!(DedupeEntry::decode(&e.encode()).unwrap(), e);
        }
    }
}
