//! The checkpoint of a store: how far its contents reflect the input and the changelog.
//! Written in the same atomic batch as the state it describes, so the two never disagree.

use std::fmt::Write;

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

/// Format version of the offset commit metadata: 2 adds the output partition's end, 3 the
/// changelog partition's end.
pub const COMMIT_METADATA_VERSION: u8 = 3;
const COMMIT_METADATA_PREFIX: &str = "tally:";

/// What tally commits beside an input offset, so the next owner resumes with the watermark of
/// that exact position, not the highest event time its changelog happens to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitMetadata {
    /// The partition's watermark after every record before the committed offset.
    pub watermark_ms: i64,
    /// The changelog partition's end after the records of every commit up to this one. A
    /// committed transaction's records can stay unreadable for a while after its offsets are
    /// (their markers wait for a partition leader), so a restore reads at least this far.
    pub changelog_end: Option<i64>,
    /// at_least_once: the output partition's end once this commit's records were acknowledged.
    /// An output partition that ends past it holds outputs a crash may have left ahead of the
    /// changelog, so the next owner holds its outputs back until it has redelivered them.
    pub output_end: Option<i64>,
}

impl CommitMetadata {
    /// Encodes as the offset commit's metadata string (Kafka keeps up to 4 KiB by default):
    /// `tally:3:wm=<ms>[,cl=<offset>][,out=<offset>]`.
    pub fn encode(&self) -> String {
        let mut text = format!(
            "{COMMIT_METADATA_PREFIX}{COMMIT_METADATA_VERSION}:wm={}",
            self.watermark_ms
        );
        if let Some(cl) = self.changelog_end {
            let _ = write!(text, ",cl={cl}");
        }
        if let Some(out) = self.output_end {
            let _ = write!(text, ",out={out}");
        }
        text
    }

    /// Decodes a committed offset's metadata of any version this build knows: `None` when
    /// another writer (an offset reset tool) left none of tally's.
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
        if !(1..=COMMIT_METADATA_VERSION).contains(&version) {
            return Err(StateError::UnsupportedVersion {
                what: "offset commit metadata",
                found: version,
                supported: COMMIT_METADATA_VERSION,
            });
        }
        let (mut wm, mut cl, mut out) = (None, None, None);
        for field in fields.split(',') {
            let (name, value) = field.split_once('=').ok_or_else(corrupt)?;
            let slot = match (version, name) {
                (_, "wm") => &mut wm,
                (2 | 3, "out") => &mut out,
                (3, "cl") => &mut cl,
                _ => return Err(corrupt()),
            };
            let value = value.parse::<i64>().map_err(|_| corrupt())?;
            if slot.replace(value).is_some() {
                return Err(corrupt());
            }
        }
        if version == 2 && out.is_none() {
            return Err(corrupt());
        }
        Ok(Some(Self {
            watermark_ms: wm.ok_or_else(corrupt)?,
            changelog_end: cl,
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
    #[case(1_750_000_000_000, None, None)]
    #[case(i64::MIN, Some(0), Some(0))]
    #[case(-5, Some(77), Some(123_456))]
    #[case(-5, None, Some(123_456))]
    #[case(9, Some(77), None)]
    fn commit_metadata_roundtrips(
        #[case] watermark_ms: i64,
        #[case] changelog_end: Option<i64>,
        #[case] output_end: Option<i64>,
    ) {
        let m = CommitMetadata {
            watermark_ms,
            changelog_end,
            output_end,
        };
        assert_eq!(CommitMetadata::decode(&m.encode()).unwrap(), Some(m));
    }

    #[rstest::rstest]
    #[case::version_1("tally:1:wm=42", None)]
    #[case::version_2("tally:2:wm=42,out=7", Some(7))]
    fn older_commit_metadata_reads_without_a_changelog_end(
        #[case] text: &str,
        #[case] output_end: Option<i64>,
    ) {
        let m = CommitMetadata::decode(text).unwrap();
        let expected = CommitMetadata {
            watermark_ms: 42,
            changelog_end: None,
            output_end,
        };
        assert_eq!(m, Some(expected));
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

    #[rstest::rstest]
    #[case("tally:2:wm=1,out=later")]
    #[case("tally:2:wm=1")]
    #[case("tally:1:wm=1,cl=4")]
    #[case("tally:3:cl=4")]
    #[case("tally:3:wm=1,cl=4,cl=5")]
    #[case("tally:3:wm=1,size=4")]
    fn garbled_commit_metadata_is_corrupt(#[case] text: &str) {
        assert!(matches!(
            CommitMetadata::decode(text),
            Err(StateError::Corrupt { .. })
        ));
    }
}
