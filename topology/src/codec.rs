//! Versioned state encoding (a format byte, then bincode 2) and the content fingerprint hasher.
//! Both are stable across platforms and runs: they are what makes replays byte-identical.

use crate::projection::StateDecodeError;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Most bytes a decoded state may claim: a corrupt length prefix is refused with an error
/// instead of an allocation that aborts the process. No key's state comes near it.
const DECODE_LIMIT: usize = 64 << 20;

/// Writes `version` then the bincode encoding of `state` into `out` (cleared first).
pub fn encode<S: bincode::Encode>(version: u8, state: &S, out: &mut Vec<u8>) {
    out.clear();
    out.push(version);
    // Encoding into a Vec cannot fail for these plain data types; writing straight into the
    // caller's buffer spares an allocation per state.
    let _ = bincode::encode_into_std_write(state, out, config());
}

/// Reads a value written by [`encode`] with exactly `version`.
pub fn decode<S: bincode::Decode<()>>(
    what: &str,
    version: u8,
    bytes: &[u8],
) -> Result<S, StateDecodeError> {
    let (&found, body) = bytes
        .split_first()
        .ok_or_else(|| StateDecodeError(format!("{what} state is empty")))?;
    if found != version {
        return Err(StateDecodeError(format!(
            "{what} state has format version {found}; this tally reads version {version}"
        )));
    }
    let (state, used) = bincode::decode_from_slice(body, config().with_limit::<DECODE_LIMIT>())
        .map_err(|e| StateDecodeError(format!("{what} state is unreadable: {e}")))?;
    if used != body.len() {
        return Err(StateDecodeError(format!(
            "{what} state has {} trailing bytes",
            body.len() - used
        )));
    }
    Ok(state)
}

/// Bytes a fingerprint gathers on the stack before it spills to the heap; events of the
/// built-in flows fit.
const INLINE: usize = 320;

/// A field-by-field content hasher; every field is length-delimited so fields cannot blur.
/// Fields are gathered and hashed in one pass: xxh3 of the whole input is the digest its
/// streaming hasher gives, at a fraction of the cost of many small updates.
pub struct Fingerprint {
    inline: [u8; INLINE],
    len: usize,
    spill: Vec<u8>,
}

impl Fingerprint {
    /// A hasher whose every digest starts with `tag` (the projection's name, say).
    pub fn new(tag: &str) -> Self {
        let mut f = Self {
            inline: [0; INLINE],
            len: 0,
            spill: Vec::new(),
        };
        f.put(tag.as_bytes());
        f
    }
    fn put(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        if self.spill.is_empty() && end <= INLINE {
            self.inline[self.len..end].copy_from_slice(bytes);
            self.len = end;
            return;
        }
        if self.spill.is_empty() {
            self.spill.extend_from_slice(&self.inline[..self.len]);
        }
        self.spill.extend_from_slice(bytes);
    }
    /// Adds a string field.
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.put(&(s.len() as u64).to_le_bytes());
        self.put(s.as_bytes());
        self
    }
    /// Adds an optional string field (absent and empty differ).
    pub fn opt(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            Some(s) => self.int(1).str(s),
            None => self.int(0),
        }
    }
    /// Adds an integer field.
    pub fn int(&mut self, v: i64) -> &mut Self {
        self.put(&v.to_le_bytes());
        self
    }
    /// The digest of every field added.
    pub fn finish(&self) -> u64 {
        let bytes = if self.spill.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.spill[..]
        };
        xxhash_rust::xxh3::xxh3_64(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_into_a_used_buffer_writes_exactly_the_version_and_the_bincode_bytes() {
        let value = ("sku-1".to_string(), -42i64, vec![7u8, 9]);
        let mut out = b"left over from the previous state".to_vec();
        encode(3, &value, &mut out);
        let mut expected = vec![3u8];
        expected.extend(bincode::encode_to_vec(&value, config()).unwrap());
        assert_eq!(out, expected);
        let back: (String, i64, Vec<u8>) = decode("test", 3, &out).unwrap();
        assert_eq!(back, value);
    }

    #[test]
    fn a_corrupt_length_prefix_is_an_error_not_an_abort() {
        // Version 3, then a string whose length (varint marker 253: a u64 follows) claims 2^62
        // bytes: without the limit, the allocation alone aborts the process.
        let bytes = [3u8, 253, 0, 0, 0, 0, 0, 0, 0, 0x40, b'x'];
        let err = decode::<String>("test", 3, &bytes).unwrap_err();
        assert!(err.0.contains("unreadable"), "{}", err.0);
    }

    #[rstest::rstest]
    #[case::inline("sku-1")]
    #[case::spilled(&"x".repeat(1000))]
    fn a_fingerprint_is_the_streaming_xxh3_of_its_length_delimited_fields(#[case] field: &str) {
        let mut streaming = xxhash_rust::xxh3::Xxh3::new();
        streaming.update(b"tag");
        streaming.update(&(field.len() as u64).to_le_bytes());
        streaming.update(field.as_bytes());
        streaming.update(&(-7i64).to_le_bytes());
        streaming.update(&0i64.to_le_bytes());
        let ours = Fingerprint::new("tag")
            .str(field)
            .int(-7)
            .opt(None)
            .finish();
        assert_eq!(ours, streaming.digest());
    }
}
