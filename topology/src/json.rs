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

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn strings_are_escaped_as_serde_json_escapes_them(s in "\\PC*|[\"\\\\\\x00-\\x1f a-z]{0,12}") {
            let mut out = Vec::new();
            string(&mut out, &s);
            proptest::prop_assert_eq!(out, serde_json::to_vec(&s).unwrap());
        }
    }
}
