//! Versioned state encoding (a format byte, then bincode 2) and the content fingerprint hasher.
//! Both are stable across platforms and runs: they are what makes replays byte-identical.

use crate::projection::StateDecodeError;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Writes `version` then the bincode encoding of `state` into `out` (cleared first).
pub(crate) fn encode<S: bincode::Encode>(version: u8, state: &S, out: &mut Vec<u8>) {
    out.clear();
    out.push(version);
    // Encoding into a Vec cannot fail for these plain data types; writing straight into the
    // caller's buffer spares an allocation per state.
    let _ = bincode::encode_into_std_write(state, out, config());
}

/// Reads a value written by [`encode`] with exactly `version`.
pub(crate) fn decode<S: bincode::Decode<()>>(
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
    let (state, used) = bincode::decode_from_slice(body, config())
        .map_err(|e| StateDecodeError(format!("{what} state is unreadable: {e}")))?;
    if used != body.len() {
        return Err(StateDecodeError(format!(
            "{what} state has {} trailing bytes",
            body.len() - used
        )));
    }
    Ok(state)
}

/// A field-by-field content hasher; every field is length-delimited so fields cannot blur.
pub(crate) struct Fingerprint(xxhash_rust::xxh3::Xxh3);

impl Fingerprint {
    pub(crate) fn new(tag: &str) -> Self {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(tag.as_bytes());
        Self(h)
    }
    pub(crate) fn str(mut self, s: &str) -> Self {
        self.0.update(&(s.len() as u64).to_le_bytes());
        self.0.update(s.as_bytes());
        self
    }
    pub(crate) fn opt(self, s: Option<&str>) -> Self {
        match s {
            Some(s) => self.int(1).str(s),
            None => self.int(0),
        }
    }
    pub(crate) fn int(mut self, v: i64) -> Self {
        self.0.update(&v.to_le_bytes());
        self
    }
    pub(crate) fn finish(self) -> u64 {
        self.0.digest()
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
}
