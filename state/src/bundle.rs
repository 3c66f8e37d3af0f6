//! Dedupe bundles: the dedupe entries of one shipment in a single changelog record, so an event
//! costs the changelog its state alone. A tombstone expires the bundle once all it holds is old.

use crate::changelog::RecordKind;
use crate::dedupe::{DedupeEntry, ENCODED_LEN};
use crate::error::StateError;

/// Format version of an encoded bundle.
pub const BUNDLE_VERSION: u8 = 1;
/// A shipment whose bundle reaches this size continues in another one: records stay well
/// below the default `message.max.bytes` (1 MB) of broker and producer.
pub const BUNDLE_MAX_BYTES: usize = 256 * 1024;
/// Format version of a stored event time (a bundle's row, the legacy mark).
const TIME_VERSION: u8 = 1;
/// Bytes of a stored event time.
const TIME_LEN: usize = 1 + 8;

/// A bundle being filled, in a buffer reused across shipments.
#[derive(Debug)]
pub struct BundleBuilder {
    value: Vec<u8>,
    first_offset: i64,
    max_event_time_ms: i64,
}

impl Default for BundleBuilder {
    fn default() -> Self {
        Self {
            value: vec![BUNDLE_VERSION],
            first_offset: i64::MAX,
            max_event_time_ms: i64::MIN,
        }
    }
}

impl BundleBuilder {
    /// Empties the bundle for the next shipment.
    pub fn clear(&mut self) {
        self.value.truncate(1);
        self.first_offset = i64::MAX;
        self.max_event_time_ms = i64::MIN;
    }

    /// Adds one applied event id; an id longer than 65,535 bytes is refused (ids are validated
    /// to far less upstream).
    pub fn push(&mut self, id: &[u8], entry: &DedupeEntry) -> Result<(), StateError> {
        let len = u16::try_from(id.len()).map_err(|_| StateError::Corrupt {
            what: "dedupe bundle",
            detail: format!("event id of {} bytes", id.len()),
        })?;
        self.value.extend_from_slice(&len.to_be_bytes());
        self.value.extend_from_slice(id);
        self.value.extend_from_slice(&entry.encode());
        self.first_offset = self.first_offset.min(entry.offset);
        self.max_event_time_ms = self.max_event_time_ms.max(entry.event_time_ms);
        Ok(())
    }

    /// Whether no entry was pushed since the last clear.
    pub fn is_empty(&self) -> bool {
        self.value.len() == 1
    }

    /// Whether the bundle reached [`BUNDLE_MAX_BYTES`] and should be sent now.
    pub fn is_full(&self) -> bool {
        self.value.len() >= BUNDLE_MAX_BYTES
    }

    /// The record's value.
    pub fn value(&self) -> &[u8] {
        &self.value
    }

    /// Newest event time in the bundle: it expires once this leaves the retention window.
    pub fn max_event_time_ms(&self) -> i64 {
        self.max_event_time_ms
    }

    /// Writes the record's key into `out`: the tag, the lowest input offset in the bundle and
    /// a hash of its content. A redelivery after a crash that bundles the same records
    /// differently gets another key, so it never replaces a bundle that landed before.
    pub fn key_into(&self, out: &mut Vec<u8>) {
        out.clear();
        out.push(RecordKind::Bundle.tag());
        out.extend_from_slice(&self.first_offset.to_be_bytes());
        out.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&self.value).to_be_bytes());
    }
}

/// Calls `f` with every (event id, entry) of an encoded bundle, in order; a value of another
/// format or shape is an error, and it may come after some entries were passed on.
pub fn decode_bundle(
    value: &[u8],
    mut f: impl FnMut(&[u8], DedupeEntry),
) -> Result<(), StateError> {
    let corrupt = |detail: String| StateError::Corrupt {
        what: "dedupe bundle",
        detail,
    };
    let mut rest = match value.split_first() {
        Some((&BUNDLE_VERSION, rest)) => rest,
        Some((&found, _)) => {
            return Err(StateError::UnsupportedVersion {
                what: "dedupe bundle",
                found,
                supported: BUNDLE_VERSION,
            })
        }
        None => return Err(corrupt("empty value".into())),
    };
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<2>()
            .ok_or_else(|| corrupt("cut short in an id length".into()))?;
        let len = usize::from(u16::from_be_bytes(*len));
        if tail.len() < len + ENCODED_LEN {
            return Err(corrupt(format!(
                "cut short: an entry needs {} bytes, {} are left",
                len + ENCODED_LEN,
                tail.len()
            )));
        }
        let (id, tail) = tail.split_at(len);
        let (entry, tail) = tail.split_at(ENCODED_LEN);
        f(id, DedupeEntry::decode(entry)?);
        rest = tail;
    }
    Ok(())
}

/// A versioned event time, as the store keeps it: a bundle's row (its newest entry) and the
/// legacy mark.
pub(crate) fn encode_time(event_time_ms: i64) -> [u8; TIME_LEN] {
    let mut out = [0u8; TIME_LEN];
    out[0] = TIME_VERSION;
    out[1..].copy_from_slice(&event_time_ms.to_be_bytes());
    out
}

/// Reads a value written by [`encode_time`]; `what` names it in an error.
pub(crate) fn decode_time(bytes: &[u8], what: &'static str) -> Result<i64, StateError> {
    match bytes.split_first() {
        Some((&TIME_VERSION, rest)) => {
            rest.try_into()
                .map(i64::from_be_bytes)
                .map_err(|_| StateError::Corrupt {
                    what,
                    detail: format!("expected {TIME_LEN} bytes, found {}", bytes.len()),
                })
        }
        Some((&found, _)) => Err(StateError::UnsupportedVersion {
            what,
            found,
            supported: TIME_VERSION,
        }),
        None => Err(StateError::Corrupt {
            what,
            detail: "empty value".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(t: i64) -> DedupeEntry {
        DedupeEntry {
            fingerprint: 9,
            event_time_ms: t,
            offset: t + 100,
        }
    }

    fn decoded(value: &[u8]) -> Result<Vec<(Vec<u8>, DedupeEntry)>, StateError> {
        let mut out = Vec::new();
        decode_bundle(value, |id, e| out.push((id.to_vec(), e)))?;
        Ok(out)
    }

    #[test]
    fn the_key_names_the_lowest_offset_and_changes_with_the_content() {
        let mut b = BundleBuilder::default();
        b.push(b"e-2", &entry(2)).unwrap();
        b.push(b"e-1", &entry(1)).unwrap();
        let (mut k1, mut k2) = (Vec::new(), Vec::new());
        b.key_into(&mut k1);
        assert_eq!(k1[0], b'b');
        assert_eq!(k1[1..9], 101i64.to_be_bytes());
        b.clear();
        b.push(b"e-1", &entry(1)).unwrap();
        b.key_into(&mut k2);
        assert_eq!(k1[..9], k2[..9]);
        assert_ne!(k1, k2, "a bundle of other records has another key");
    }

    #[test]
    fn refuses_an_unknown_version() {
        assert!(matches!(
            decoded(&[2, 0, 1, b'a']),
            Err(StateError::UnsupportedVersion { found: 2, .. })
        ));
    }

    #[test]
    fn refuses_a_truncated_bundle() {
        let mut b = BundleBuilder::default();
        b.push(b"e-1", &entry(1)).unwrap();
        let value = b.value();
        // One byte is the version alone: an empty bundle.
        for cut in 2..value.len() {
            assert!(decoded(&value[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn a_row_roundtrips_and_refuses_a_newer_format() {
        assert_eq!(decode_time(&encode_time(-7), "row").unwrap(), -7);
        let mut row = encode_time(1);
        row[0] = 2;
        assert!(matches!(
            decode_time(&row, "row"),
            Err(StateError::UnsupportedVersion { found: 2, .. })
        ));
    }

    proptest! {
        #[test]
        fn roundtrips(entries in proptest::collection::vec(("[a-z0-9-]{1,40}", any::<i64>(), any::<i64>(), any::<u64>()), 0..50)) {
            let mut b = BundleBuilder::default();
            let mut want = Vec::new();
            for (id, t, offset, fingerprint) in entries {
                let e = DedupeEntry { fingerprint, event_time_ms: t, offset };
                b.push(id.as_bytes(), &e).unwrap();
                want.push((id.into_bytes(), e));
            }
            prop_assert_eq!(b.is_empty(), want.is_empty());
            let max = want.iter().map(|(_, e)| e.event_time_ms).max().unwrap_or(i64::MIN);
            prop_assert_eq!(b.max_event_time_ms(), max);
            prop_assert_eq!(decoded(b.value()).unwrap(), want);
        }
    }
}
