//! A refused input record on its way to the dead-letter topic: its key (null stays null), value
//! and headers, why it was refused, and where it came from. One that would not fit the topic is
//! cut to fit, with the original's size and SHA-256 in headers, so it never blocks a commit.

use sha2::{Digest, Sha256};
use tally_topology::{Invalid, Reason};

use super::outbox::{Outbox, Outgoing, SendError};
use crate::kafka::limits::RecordLimit;
use crate::kafka::record::{HeaderSource, InputRecord};

/// Longest error message kept (a parser's message can quote much of a large value).
const MESSAGE_MAX: usize = 1024;
/// What tally's own headers take besides the message, with their names (generously).
const OWN_HEADERS: usize = 512;

/// One dead letter, ready to be produced.
pub(crate) struct DeadLetter {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    /// The input record's own headers, unless they would not fit.
    headers: Vec<(String, Option<Vec<u8>>)>,
    /// Headers that say what was cut: (name, value).
    cut: Vec<(&'static str, String)>,
    pub(crate) reason: Reason,
    message: String,
    offset: i64,
    stage: &'static str,
}

/// A record's headers, copied.
fn owned(headers: &dyn HeaderSource) -> Vec<(String, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    headers.each(&mut |k, v| out.push((k.to_string(), v.map(<[u8]>::to_vec))));
    out
}

/// A key or value cut to `keep` bytes: its original size and digest, for the headers.
fn cut(bytes: &[u8], keep: usize) -> (Vec<u8>, String, String) {
    let digest = Sha256::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    (
        bytes[..keep.min(bytes.len())].to_vec(),
        bytes.len().to_string(),
        hex,
    )
}

impl DeadLetter {
    /// The dead letter of `record`, cut to fit `limit`.
    pub(crate) fn new(
        record: &InputRecord<'_>,
        invalid: Invalid,
        stage: &'static str,
        limit: RecordLimit,
    ) -> Self {
        let (key, value, offset) = (record.key, record.value, record.offset);
        let mut message = invalid.message;
        if message.len() > MESSAGE_MAX {
            let mut end = MESSAGE_MAX;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        let mut d = Self {
            key: None,
            value: None,
            headers: owned(record.headers),
            cut: Vec::new(),
            reason: invalid.reason,
            message,
            offset,
            stage,
        };
        let budget = limit.bytes();
        let own = OWN_HEADERS + d.message.len();
        let mut theirs: usize = d
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum();
        let key_len = key.map_or(0, <[u8]>::len);
        let value_len = value.map_or(0, <[u8]>::len);
        if limit.fits(own + theirs + key_len + value_len) {
            d.key = key.map(<[u8]>::to_vec);
            d.value = value.map(<[u8]>::to_vec);
            return d;
        }
        // Too large: the input's headers go first if they are a large part, then the key is cut
        // to a quarter of the budget if needed, and the value gets what is left.
        if theirs > budget / 4 {
            d.cut.push((
                "tally.original.headers.dropped",
                d.headers.len().to_string(),
            ));
            d.headers.clear();
            theirs = 0;
        }
        let mut what = Vec::new();
        d.key = match key {
            Some(k) if k.len() > budget / 4 => {
                let (kept, size, sha) = cut(k, budget / 4);
                d.cut.push(("tally.original.key.bytes", size));
                d.cut.push(("tally.original.key.sha256", sha));
                what.push("key");
                Some(kept)
            }
            other => other.map(<[u8]>::to_vec),
        };
        let room = budget.saturating_sub(own + theirs + d.key.as_ref().map_or(0, Vec::len));
        d.value = match value {
            Some(v) if v.len() > room => {
                let (kept, size, sha) = cut(v, room);
                d.cut.push(("tally.original.value.bytes", size));
                d.cut.push(("tally.original.value.sha256", sha));
                what.push("value");
                Some(kept)
            }
            other => other.map(<[u8]>::to_vec),
        };
        if !what.is_empty() {
            d.cut.push(("tally.truncated", what.join(",")));
        }
        d
    }

    pub(crate) fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }

    pub(crate) fn value(&self) -> Option<&[u8]> {
        self.value.as_deref()
    }

    /// Sends the dead letter to `topic`, with tally's headers (why, and where from: `input` and
    /// `partition`), what was cut, then the input's own headers.
    pub(crate) fn ship(
        &self,
        topic: &str,
        input: &str,
        partition: i32,
        out: &mut dyn Outbox,
    ) -> Result<(), SendError> {
        let partition_text = partition.to_string();
        let offset = self.offset.to_string();
        let own = [
            ("tally.error.reason", self.reason.as_str()),
            ("tally.error.message", self.message.as_str()),
            ("tally.error.stage", self.stage),
            ("tally.source.topic", input),
            ("tally.source.partition", partition_text.as_str()),
            ("tally.source.offset", offset.as_str()),
        ];
        let headers: Vec<(&str, Option<&[u8]>)> = own
            .iter()
            .map(|(k, v)| (*k, Some(v.as_bytes())))
            .chain(self.cut.iter().map(|(k, v)| (*k, Some(v.as_bytes()))))
            .chain(self.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())))
            .collect();
        out.send(Outgoing {
            topic,
            partition,
            key: self.key(),
            value: self.value(),
            headers: &headers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead(key: Option<&[u8]>, value: &[u8], limit: RecordLimit) -> DeadLetter {
        let invalid = Invalid::new(Reason::MalformedJson, "not json");
        let record = InputRecord {
            partition: 0,
            offset: 7,
            key,
            value: Some(value),
            timestamp_ms: None,
            headers: &(),
        };
        DeadLetter::new(&record, invalid, "decode", limit)
    }

    fn cut_headers(d: &DeadLetter) -> std::collections::BTreeMap<&str, &str> {
        d.cut.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    #[test]
    fn a_record_that_fits_is_kept_whole() {
        let d = dead(Some(b"sku-1"), b"{not json", RecordLimit::default());
        assert_eq!(d.value(), Some(&b"{not json"[..]));
        assert!(d.cut.is_empty());
    }

    #[test]
    fn an_oversized_value_is_cut_with_its_size_and_digest() {
        let limit = RecordLimit::default();
        let value = vec![b'x'; 1_040_000];
        let d = dead(Some(b"sku-1"), &value, limit);
        let cut = cut_headers(&d);
        assert_eq!(cut["tally.truncated"], "value");
        assert_eq!(cut["tally.original.value.bytes"], "1040000");
        let want: String = Sha256::digest(&value)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(cut["tally.original.value.sha256"], want);
        let total = d.key().map_or(0, <[u8]>::len) + d.value().map_or(0, <[u8]>::len);
        assert!(limit.fits(total + OWN_HEADERS + d.message.len()));
        assert_eq!(d.value().unwrap(), &value[..d.value().unwrap().len()]);
    }

    #[test]
    fn the_input_records_own_headers_ride_along() {
        let headers: Vec<(&str, Option<&[u8]>)> = vec![("id", Some(b"evt-1")), ("empty", None)];
        let record = InputRecord {
            partition: 0,
            offset: 3,
            key: Some(b"k"),
            value: Some(b"{nope"),
            timestamp_ms: None,
            headers: &headers,
        };
        let invalid = Invalid::new(Reason::MalformedJson, "not json");
        let d = DeadLetter::new(&record, invalid, "decode", RecordLimit::default());
        assert_eq!(
            d.headers,
            vec![
                ("id".to_string(), Some(b"evt-1".to_vec())),
                ("empty".to_string(), None)
            ]
        );
    }

    #[test]
    fn a_null_key_stays_null() {
        let d = dead(None, b"x", RecordLimit::default());
        assert_eq!(d.key(), None);
    }

    #[test]
    fn an_oversized_key_is_cut_too() {
        let limit = RecordLimit::default();
        let key = vec![b'k'; 1_200_000];
        let d = dead(Some(&key), b"v", limit);
        assert_eq!(cut_headers(&d)["tally.truncated"], "key");
        assert!(d.key().unwrap().len() <= limit.bytes() / 4);
    }
}
