//! The changelog record format: what a store writes to its compacted changelog topic.
//! A record key is a one-byte kind followed by the state key or event id; the value is versioned.

use crate::error::StateError;

/// What a changelog record carries; the tag byte leads its key so compaction keeps kinds apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// Materialized state of one aggregate key; value is the projection's versioned state.
    State,
    /// One dedupe index entry, as tally wrote them before bundles; value is an encoded
    /// `DedupeEntry`, a tombstone expires it. Still read, no longer written.
    Dedupe,
    /// The dedupe entries of one shipment; value is an encoded bundle (`bundle.rs`), a
    /// tombstone expires it once all its entries are past the retention.
    Bundle,
}

impl RecordKind {
    /// The tag byte in front of the key.
    pub const fn tag(self) -> u8 {
        match self {
            RecordKind::State => b's',
            RecordKind::Dedupe => b'd',
            RecordKind::Bundle => b'b',
        }
    }
}

/// A parsed changelog key, borrowing the bytes after the tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangelogKey<'a> {
    pub kind: RecordKind,
    pub id: &'a [u8],
}

impl<'a> ChangelogKey<'a> {
    /// Writes `tag + id` into `out` (cleared first) so callers can reuse one buffer.
    pub fn encode_into(kind: RecordKind, id: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.reserve(id.len() + 1);
        out.push(kind.tag());
        out.extend_from_slice(id);
    }

    /// Convenience form of [`ChangelogKey::encode_into`].
    pub fn encode(kind: RecordKind, id: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        Self::encode_into(kind, id, &mut out);
        out
    }

    /// Parses a key read from the changelog; an unknown tag is an error, never skipped.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, StateError> {
        let (&tag, id) = bytes.split_first().ok_or(StateError::Corrupt {
            what: "changelog key",
            detail: "empty key".into(),
        })?;
        let kind = match tag {
            b's' => RecordKind::State,
            b'd' => RecordKind::Dedupe,
            b'b' => RecordKind::Bundle,
            other => {
                return Err(StateError::Corrupt {
                    what: "changelog key",
                    detail: format!("unknown record kind tag 0x{other:02x}"),
                })
            }
        };
        Ok(Self { kind, id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(RecordKind::State, b"sku-1".as_slice())]
    #[case(RecordKind::Dedupe, b"evt-9".as_slice())]
    #[case(RecordKind::Bundle, b"\0\0\0\0\0\0\0\x07hash0123".as_slice())]
    #[case(RecordKind::State, b"".as_slice())]
    fn keys_roundtrip(#[case] kind: RecordKind, #[case] id: &[u8]) {
        let bytes = ChangelogKey::encode(kind, id);
        assert_eq!(
            ChangelogKey::parse(&bytes).unwrap(),
            ChangelogKey { kind, id }
        );
    }

    #[rstest]
    #[case(b"".as_slice())]
    #[case(b"xabc".as_slice())]
    fn unreadable_keys_are_errors(#[case] bytes: &[u8]) {
        assert!(ChangelogKey::parse(bytes).is_err());
    }
}
