//! Decoding helpers for a projection's input: one typed pass over a record, with serde's
//! errors turned into dead-letter reasons that name the field, so a projection writes each
//! validation rule once.

use serde::Deserialize;

use crate::error::{Invalid, Reason};

/// Longest accepted id or key, in bytes (the built-in contracts' limit).
pub const MAX_ID_LEN: usize = crate::fields::MAX_ID_LEN;

/// Parses a record's value as a JSON object of type `T`: not JSON is `malformed_json`, a
/// missing field `missing_field`, a value of the wrong type or form `invalid_field`, each with
/// the field named in the message.
pub fn decode_json<'a, T: Deserialize<'a>>(value: &'a [u8]) -> Result<T, Invalid> {
    serde_json::from_slice(value).map_err(|e| {
        use serde_json::error::Category;
        let reason = match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => Reason::MalformedJson,
            Category::Data if e.to_string().starts_with("missing field") => Reason::MissingField,
            Category::Data => Reason::InvalidField,
        };
        Invalid::new(reason, e.to_string())
    })
}

/// Refuses an id that is empty or longer than [`MAX_ID_LEN`] bytes, naming the field.
pub fn id(field: &str, value: &str) -> Result<(), Invalid> {
    if crate::fields::is_id(value) {
        Ok(())
    } else {
        Err(Invalid::new(
            Reason::InvalidField,
            format!("field `{field}` must be 1 to {MAX_ID_LEN} bytes"),
        ))
    }
}

/// Refuses a record whose Kafka key is not the event's aggregate key `expected` (the
/// partitioning, and so the order of a key's events, rests on it).
pub fn key_matches(key: Option<&[u8]>, field: &str, expected: &str) -> Result<(), Invalid> {
    crate::fields::key_matches(key, field, expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Usage {
        event_id: String,
        quantity: i64,
    }

    #[rstest]
    #[case::not_json(&b"{nope"[..], Reason::MalformedJson, "")]
    #[case::not_an_object(&b"[1]"[..], Reason::InvalidField, "")]
    #[case::missing(&br#"{"event_id":"e"}"#[..], Reason::MissingField, "quantity")]
    #[case::wrong_type(&br#"{"event_id":"e","quantity":"7"}"#[..], Reason::InvalidField, "string")]
    fn a_refusal_names_its_reason(
        #[case] value: &[u8],
        #[case] reason: Reason,
        #[case] says: &str,
    ) {
        let err = decode_json::<Usage>(value).unwrap_err();
        assert_eq!(err.reason, reason, "{}", err.message);
        assert!(err.message.contains(says), "{}", err.message);
    }

    #[test]
    fn a_valid_record_decodes() {
        let u: Usage = decode_json(br#"{"event_id":"e-1","quantity":3}"#).unwrap();
        assert_eq!((u.event_id.as_str(), u.quantity), ("e-1", 3));
    }
}
