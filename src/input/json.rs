//! The JSON shapes Kafka Connect's converters write: a value with or without the schema wrapper,
//! a JSON document inside a JSON string, and keys that are JSON strings or one-field structs.

use std::borrow::Cow;

use serde_json::{Map, Value};
use tally_topology::{Invalid, Reason};

/// A value's JSON object: the schema wrapper's `payload` taken, a JSON string parsed once more.
pub(super) fn object(bytes: &[u8]) -> Result<Map<String, Value>, Invalid> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| Invalid::new(Reason::MalformedJson, format!("value is not JSON: {e}")))?;
    match unwrap(value)? {
        Value::Object(map) => Ok(map),
        other => Err(super::malformed(format!(
            "value is {}, not a JSON object",
            kind(&other)
        ))),
    }
}

/// Takes the JSON converter's `{"schema":..,"payload":..}` apart, and parses a payload that is
/// a JSON document held in a string (an outbox column of type text, or jsonb unexpanded).
fn unwrap(value: Value) -> Result<Value, Invalid> {
    match without_schema(value) {
        Value::String(text) => serde_json::from_str(&text).map_err(|e| {
            Invalid::new(
                Reason::MalformedJson,
                format!("value is a string that is not JSON: {e}"),
            )
        }),
        other => Ok(other),
    }
}

/// The JSON converter's `payload` when `value` is its schema wrapper, else `value`.
fn without_schema(value: Value) -> Value {
    match value {
        Value::Object(mut map)
            if map.len() == 2 && map.contains_key("schema") && map.contains_key("payload") =>
        {
            map.remove("payload").unwrap_or(Value::Null)
        }
        other => other,
    }
}

/// A record key as the projection expects it: a JSON string's text, a one-field struct's value
/// (Debezium keys by the key columns), or the bytes as they are.
pub(super) fn key(bytes: &[u8]) -> Cow<'_, [u8]> {
    match bytes.first() {
        Some(b'"' | b'{') => {}
        _ => return Cow::Borrowed(bytes),
    }
    let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
        return Cow::Borrowed(bytes);
    };
    let value = match without_schema(value) {
        Value::Object(map) if map.len() == 1 => map.into_iter().next().map(|(_, v)| v),
        v @ Value::String(_) => Some(v),
        _ => None,
    };
    match value {
        Some(Value::String(s)) => Cow::Owned(s.into_bytes()),
        Some(Value::Number(n)) => Cow::Owned(n.to_string().into_bytes()),
        _ => Cow::Borrowed(bytes),
    }
}

/// How a JSON value is named in a message.
pub(super) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An integer field of an object, when it is one.
pub(super) fn int(map: &Map<String, Value>, name: &str) -> Option<i64> {
    map.get(name).and_then(Value::as_i64)
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case::plain(br#"{"a":1}"#.as_slice())]
    #[case::schema_wrapper(br#"{"schema":{"type":"struct"},"payload":{"a":1}}"#.as_slice())]
    #[case::json_in_a_string(br#""{\"a\":1}""#.as_slice())]
    #[case::string_in_a_wrapper(br#"{"schema":{"type":"string"},"payload":"{\"a\":1}"}"#.as_slice())]
    fn every_converter_shape_reads_as_the_same_object(#[case] bytes: &[u8]) {
        assert_eq!(
            object(bytes).unwrap(),
            serde_json::json!({"a": 1}).as_object().unwrap().clone()
        );
    }

    #[rstest]
    #[case::raw(b"sku-1".as_slice(), "sku-1")]
    #[case::json_string(br#""sku-1""#.as_slice(), "sku-1")]
    #[case::one_field_struct(br#"{"sku":"sku-1"}"#.as_slice(), "sku-1")]
    #[case::wrapped_struct(br#"{"schema":{},"payload":{"id":7}}"#.as_slice(), "7")]
    #[case::two_fields_stay_as_they_are(br#"{"a":"x","b":"y"}"#.as_slice(), r#"{"a":"x","b":"y"}"#)]
    fn keys_read_as_the_aggregate_id(#[case] bytes: &[u8], #[case] want: &str) {
        assert_eq!(key(bytes).as_ref(), want.as_bytes());
    }

    #[rstest]
    #[case::not_json(b"nope".as_slice(), "malformed_json")]
    #[case::an_array(b"[1]".as_slice(), "malformed_envelope")]
    #[case::a_string_of_garbage(br#""{oops""#.as_slice(), "malformed_json")]
    fn what_is_not_an_object_is_refused_with_its_reason(
        #[case] bytes: &[u8],
        #[case] reason: &str,
    ) {
        assert_eq!(object(bytes).unwrap_err().reason.as_str(), reason);
    }
}
