//! The checkpoint of a store: how far its contents reflect the input and the changelog.
//! Written in the same atomic batch as the state it describes, so the two never disagree.

use crate::error::StateError;

/// Format version of an encoded checkpoint.
pub const CHECKPOINT_VERSION: u8 = 1;
const ENCODED_LEN: usize = 1 + 8 * 3;

/// Positions a store has reached, so a restart restores only what came after them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Checkpoint {
    /// Next input offset to process (committed offset semantics).
    pub input_offset: i64,
    /// Changelog offset from which a restore must read to catch up; a safe lower bound.
    pub changelog_offset: i64,
    /// Highest event time applied in this partition, in epoch milliseconds (drives dedupe expiry).
    pub watermark_ms: i64,
}

impl Checkpoint {
    /// Encodes with a leading format version.
    pub fn encode(&self) -> [u8; ENCODED_LEN] {
        let mut out = [0u8; ENCODED_LEN];
        out[0] = CHECKPOINT_VERSION;
        out[1..9].copy_from_slice(&self.input_offset.to_be_bytes());
        out[9..17].copy_from_slice(&self.changelog_offset.to_be_bytes());
        out[17..25].copy_from_slice(&self.watermark_ms.to_be_bytes());
        out
    }

    /// Decodes any checkpoint version this build knows.
    pub fn decode(bytes: &[u8]) -> Result<Self, StateError> {
        let version = *bytes.first().ok_or(StateError::Corrupt {
            what: "checkpoint",
            detail: "empty value".into(),
        })?;
        if version != CHECKPOINT_VERSION {
            return Err(StateError::UnsupportedVersion {
                what: "checkpoint",
                found: version,
                supported: CHECKPOINT_VERSION,
            });
        }
        if bytes.len() != ENCODED_LEN {
            return Err(StateError::Corrupt {
                what: "checkpoint",
                detail: format!("expected {ENCODED_LEN} bytes, found {}", bytes.len()),
            });
        }
        let i64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            i64::from_be_bytes(b)
        };
        Ok(Self {
            input_offset: i64_at(1),
            changelog_offset: i64_at(9),
            watermark_ms: i64_at(17),
        })
    }
}

/// Format version of the offset commit metadata: 2 adds the output partition's end.
pub const COMMIT_METADATA_VERSION: u8 = 2;
const COMMIT_METADATA_PREFIX: &str = "tally:";

/// What tally commits beside an input offset, so the next owner resumes with the watermark of
/// that exact position, not the highest event time its changelog happens to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitMetadata {
    /// The partition's watermark after every record before the committed offset.
    pub watermark_ms: i64,
    /// at_least_once: the output partition's end once this commit's records were acknowledged.
    /// An output partition that ends past it holds outputs a crash may have left ahead of the
    /// changelog, so the next owner holds its outputs back until it has redelivered them.
    pub output_end: Option<i64>,
}

impl CommitMetadata {
    /// Encodes as the offset commit's metadata string (Kafka keeps up to 4 KiB by default);
    /// without an output end it stays version 1, which older tallies read.
    pub fn encode(&self) -> String {
        match self.output_end {
            Some(out) => format!(
                "{COMMIT_METADATA_PREFIX}2:wm={},out={out}",
                self.watermark_ms
            ),
            None => format!("{COMMIT_METADATA_PREFIX}1:wm={}", self.watermark_ms),
        }
    }

    /// Decodes a committed offset's metadata: `None` when another writer (an older tally, an
    /// offset reset tool) left none of tally's.
    pub fn decode(text: &str) -> Result<Option<Self>, StateError> {
        let Some(rest) = text.strip_prefix(COMMIT_METADATA_PREFIX) else {
            return Ok(None);
        };
        let corrupt = || StateError::Corrupt {
            what: "offset commit metadata",
            detail: format!("cannot parse `{text}`"),
        };
        let (version, fields) = rest.split_once(':').ok_or_else(corrupt)?;
        let version: u8 = version.parse().map_err(|_| corrupt())?;
        let (wm, out) = match version {
            1 => (fields, None),
            2 => {
                let (wm, out) = fields.split_once(',').ok_or_else(corrupt)?;
                let out = out.strip_prefix("out=").and_then(|v| v.parse().ok());
                (wm, Some(out.ok_or_else(corrupt)?))
            }
            found => {
                return Err(StateError::UnsupportedVersion {
                    what: "offset commit metadata",
                    found,
                    supported: COMMIT_METADATA_VERSION,
                })
            }
        };
        let watermark_ms = wm
            .strip_prefix("wm=")
            .and_then(|v| v.parse().ok())
            .ok_or_else(corrupt)?;
        Ok(Some(Self {
            watermark_ms,
            output_end: out,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrips() {
        let cp = Checkpoint {
            input_offset: 42,
            changelog_offset: -1,
            watermark_ms: 1_750_000_000_000,
        };
        assert_eq!(Checkpoint::decode(&cp.encode()).unwrap(), cp);
    }

    #[test]
    fn refuses_a_newer_version_by_name() {
        let mut bytes = Checkpoint::default().encode();
        bytes[0] = 9;
        let err = Checkpoint::decode(&bytes).unwrap_err().to_string();
        assert!(err.contains("format version 9"), "{err}");
    }

    #[test]
    fn refuses_a_truncated_value() {
        let bytes = Checkpoint::default().encode();
        assert!(matches!(
            Checkpoint::decode(&bytes[..10]),
            Err(StateError::Corrupt { .. })
        ));
    }

    #[rstest::rstest]
    #[case(1_750_000_000_000, None)]
    #[case(i64::MIN, Some(0))]
    #[case(-5, Some(123_456))]
    fn commit_metadata_roundtrips(#[case] watermark_ms: i64, #[case] output_end: Option<i64>) {
        let m = CommitMetadata {
            watermark_ms,
            output_end,
        };
        assert_eq!(CommitMetadata::decode(&m.encode()).unwrap(), Some(m));
    }

    #[test]
    fn version_1_commit_metadata_reads_without_an_output_end() {
        let m = CommitMetadata::decode("tally:1:wm=42").unwrap();
        assert_eq!(
            m,
            Some(CommitMetadata {
                watermark_ms: 42,
                output_end: None
            })
        );
    }

    #[rstest::rstest]
    #[case("")]
    #[case("written by a reset tool")]
    fn foreign_commit_metadata_is_none(#[case] text: &str) {
        assert_eq!(CommitMetadata::decode(text).unwrap(), None);
    }

    #[test]
    fn commit_metadata_of_a_newer_tally_is_refused_by_name() {
        let err = CommitMetadata::decode("tally:7:wm=1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("format version 7"), "{err}");
    }

    #[test]
    fn garbled_commit_metadata_is_corrupt() {
        assert!(matches!(
            CommitMetadata::decode("tally:2:wm=1,out=later"),
            Err(StateError::Corrupt { .. })
        ));
    }
}
