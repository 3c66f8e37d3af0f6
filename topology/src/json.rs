//! Output records written piece by piece into a reused buffer, in a fixed field order.
//! Strings that need no escaping are copied as they are, others go through serde_json's escaper.

use crate::projection::SourceRef;
use crate::time::write_event_time;

/// Appends a literal piece of the record.
pub(crate) fn raw(out: &mut Vec<u8>, piece: &str) {
    out.extend_from_slice(piece.as_bytes());
}

/// Appends `s` as a JSON string, escaped exactly as serde_json escapes it.
pub(crate) fn string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        // Writing a &str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
        return;
    }
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// Appends an integer.
pub(crate) fn int(out: &mut Vec<u8>, v: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// Appends the fields every output record ends with (what was applied last, and where it was
/// read), and closes the record.
pub(crate) fn provenance(
    out: &mut Vec<u8>,
    events_applied: u64,
    last_event_id: &str,
    last_event_time_ms: i64,
    source: SourceRef,
) {
    raw(out, ",\"events_applied\":");
    int(out, events_applied);
    raw(out, ",\"last_event_id\":");
    string(out, last_event_id);
    // RFC 3339 text never needs escaping.
    raw(out, ",\"last_event_time\":\"");
    write_event_time(last_event_time_ms, out);
    raw(out, "\",\"source\":{\"partition\":");
    int(out, source.partition);
    raw(out, ",\"offset\":");
    int(out, source.offset);
    raw(out, "}}");
}

/// The `source` an output record ends with (see [`provenance`]): the input offset of the
/// event its state applied last. `None` for a record that is not such an output.
pub fn rendered_source(record: &[u8]) -> Option<SourceRef> {
    #[derive(serde::Deserialize)]
    struct Source {
        partition: i32,
        offset: i64,
    }
    #[derive(serde::Deserialize)]
    struct Output {
        source: Source,
    }
    let out: Output = serde_json::from_slice(record).ok()?;
    Some(SourceRef {
        partition: out.source.partition,
        offset: out.source.offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_of_a_rendered_record_reads_back() {
        let source = SourceRef {
            partition: 3,
            offset: 4_000,
        };
        let mut out = b"{\"sku\":\"sku-1\"".to_vec();
        provenance(&mut out, 7, "e-7", 0, source);
        assert_eq!(rendered_source(&out), Some(source));
        assert_eq!(rendered_source(b"not an output"), None);
    }

    proptest::proptest! {
        #[test]
        fn strings_are_escaped_as_serde_json_escapes_them(s in "\\PC*|[\"\\\\\\x00-\\x1f a-z]{0,12}") {
            let mut out = Vec::new();
            string(&mut out, &s);
            proptest::prop_assert_eq!(out, serde_json::to_vec(&s).unwrap());
        }
    }
}
