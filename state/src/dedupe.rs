//! Dedupe index entries: which event ids a partition has applied, with their content fingerprint.
//! The fingerprint tells a harmless redelivery from a conflicting event that reuses an id.

use crate::error::StateError;

/// Format version of an encoded dedupe entry.
pub const DEDUPE_VERSION: u8 = 1;
const ENCODED_LEN: usize = 1 + 8 + 8;

/// One applied event id, kept until its event time falls out of the retention window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupeEntry {
    /// Content fingerprint of the event that was applied under this id.
    pub fingerprint: u64,
    /// Event time of that event, epoch milliseconds; expiry is by event time, never wall time.
    pub event_time_ms: i64,
}

impl DedupeEntry {
    /// Encodes with a leading format version.
    pub fn encode(&self) -> [u8; ENCODED_LEN] {
        let mut out = [0u8; ENCODED_LEN];
        out[0] = DEDUPE_VERSION;
        out[1..9].copy_from_slice(&self.fingerprint.to_be_bytes());
        out[9..17].copy_from_slice(&self.event_time_ms.to_be_bytes());
        out
    }

    /// Decodes any dedupe entry version this build knows.
    pub fn decode(bytes: &[u8]) -> Result<Self, StateError> {
        match bytes.first() {
            None => Err(StateError::Corrupt {
                what: "dedupe entry",
                detail: "empty value".into(),
            }),
            Some(&DEDUPE_VERSION) if bytes.len() == ENCODED_LEN => {
                let mut fp = [0u8; 8];
                fp.copy_from_slice(&bytes[1..9]);
                let mut t = [0u8; 8];
                t.copy_from_slice(&bytes[9..17]);
                Ok(Self {
                    fingerprint: u64::from_be_bytes(fp),
                    event_time_ms: i64::from_be_bytes(t),
                })
            }
            Some(&DEDUPE_VERSION) => Err(StateError::Corrupt {
                what: "dedupe entry",
                detail: format!("expected {ENCODED_LEN} bytes, found {}", bytes.len()),
            }),
            Some(&found) => Err(StateError::UnsupportedVersion {
                what: "dedupe entry",
                found,
                supported: DEDUPE_VERSION,
            }),
        }
    }
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
        }
        .encode();
        bytes[0] = 2;
        assert!(matches!(
            DedupeEntry::decode(&bytes),
            Err(StateError::UnsupportedVersion { found: 2, .. })
        ));
    }

    proptest! {
        #[test]
        fn roundtrips(fingerprint in any::<u64>(), event_time_ms in any::<i64>()) {
            let e = DedupeEntry { fingerprint, event_time_ms };
            prop_assert_eq!(DedupeEntry::decode(&e.encode()).unwrap(), e);
        }
    }
}
