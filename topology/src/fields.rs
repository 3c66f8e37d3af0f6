//! Field-level JSON decoding shared by the event contracts: each field is parsed on its own so a
//! refusal names the field, and strings are borrowed from the input when they have no escapes.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::{Invalid, Reason};

/// Longest accepted id or key, in bytes.
pub(crate) const MAX_ID_LEN: usize = 256;

/// Parses the outer object; anything that is not a JSON object is `malformed_json`.
pub(crate) fn object<'a, T: Deserialize<'a>>(value: &'a [u8]) -> Result<T, Invalid> {
    serde_json::from_slice(value).map_err(|e| {
        Invalid::new(
            Reason::MalformedJson,
            format!("not a JSON event object: {e}"),
        )
    })
}

/// A required field of type `T`.
pub(crate) fn required<'a, T: Deserialize<'a>>(
    name: &str,
    raw: Option<&'a RawValue>,
) -> Result<T, Invalid> {
    let raw = raw
        .ok_or_else(|| Invalid::new(Reason::MissingField, format!("field `{name}` is missing")))?;
    serde_json::from_str(raw.get()).map_err(|_| {
        Invalid::new(
            Reason::InvalidField,
            format!("field `{name}` has the wrong type: {}", truncate(raw.get())),
        )
    })
}

/// A contract's decoding: nearly every record is valid, and one typed pass (`quick`) decodes it.
/// A record that pass does not accept as it is (a wrong type, a broken rule) is decoded again
/// field by field (`checked`), which names the first problem: the result is always the
/// field-by-field one.
pub(crate) fn quick_or_checked<T>(
    quick: Option<T>,
    checked: impl FnOnce() -> Result<T, Invalid>,
) -> Result<T, Invalid> {
    quick.map_or_else(checked, Ok)
}

/// Whether `s` is a valid id: non-empty, at most [`MAX_ID_LEN`] bytes.
pub(crate) fn is_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ID_LEN
}

/// A required non-empty string of at most [`MAX_ID_LEN`] bytes.
pub(crate) fn id<'a>(name: &str, raw: Option<&'a RawValue>) -> Result<Cow<'a, str>, Invalid> {
    let s: Cow<'a, str> = required(name, raw)?;
    if !is_id(&s) {
        return Err(Invalid::new(
            Reason::InvalidField,
            format!("field `{name}` must be 1..={MAX_ID_LEN} bytes"),
        ));
    }
    Ok(s)
}

/// An optional string that may also be `null`.
pub(crate) fn optional_str<'a>(
    name: &str,
    raw: Option<&'a RawValue>,
) -> Result<Option<Cow<'a, str>>, Invalid> {
    match raw {
        None => Ok(None),
        Some(r) => required::<Option<Cow<'a, str>>>(name, Some(r)),
    }
}

/// A field the event's schema version does not have must be absent, so no record is ambiguous.
pub(crate) fn absent(name: &str, raw: Option<&RawValue>, version: u32) -> Result<(), Invalid> {
    match raw {
        None => Ok(()),
        Some(_) => Err(Invalid::new(
            Reason::InvalidField,
            format!("field `{name}` is not part of schema_version {version}"),
        )),
    }
}

/// The schema version; only versions this build knows are accepted.
pub(crate) fn schema_version(raw: Option<&RawValue>, known: &[u32]) -> Result<u32, Invalid> {
    let v: u32 = required("schema_version", raw)?;
    if known.contains(&v) {
        Ok(v)
    } else {
        Err(Invalid::new(
            Reason::UnknownSchemaVersion,
            format!("schema_version {v} is not supported (known: {known:?})"),
        ))
    }
}

/// Checks that the Kafka message key equals the event's aggregate key.
pub(crate) fn key_matches(key: Option<&[u8]>, field: &str, expected: &str) -> Result<(), Invalid> {
    if key == Some(expected.as_bytes()) {
        Ok(())
    } else {
        let found = key.map_or_else(
            || "no key".to_string(),
            |k| format!("`{}`", String::from_utf8_lossy(k)),
        );
        Err(Invalid::new(
            Reason::KeyMismatch,
            format!(
                "message key {} differs from {field} `{expected}`",
                truncate(&found)
            ),
        ))
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
