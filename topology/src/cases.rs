//! Test inputs shared by the contracts' tests: plausible records with a few fields made odd,
//! dropped or repeated, to check that two decoders agree on every outcome.

use proptest::prelude::*;

/// Values a field can take instead of its own: wrong types, empties, extremes, `null` most.
const ODD: &[&str] = &[
    "null",
    "null",
    "null",
    "5",
    "-1",
    "0",
    "\"\"",
    "\"x\"",
    "1.5",
    "true",
    "[]",
    "{}",
    "9223372036854775807",
    "\"2026-06-19\"",
    "\"12.34\"",
    "\"EUR\"",
];

/// One change to a record: its kind, the field it touches and the odd value it may use.
pub(crate) type Change = (u8, usize, &'static str);

/// Up to two changes.
pub(crate) fn changes() -> impl Strategy<Value = Vec<Change>> {
    prop::collection::vec((0u8..4, 0usize..16, prop::sample::select(ODD)), 0..3)
}

/// `fields` as a JSON object after `changes`: a value made odd, a field dropped, a field
/// repeated, or one of `extra` (optional fields, fields of another version) added.
pub(crate) fn render(
    mut fields: Vec<(&'static str, String)>,
    changes: &[Change],
    extra: &[&'static str],
) -> String {
    for &(kind, at, odd) in changes {
        let at = at % fields.len().max(1);
        match kind {
            0 if !fields.is_empty() => fields[at].1 = odd.into(),
            1 if !fields.is_empty() => {
                fields.remove(at);
            }
            2 if !fields.is_empty() => {
                let again = fields[at].clone();
                fields.push(again);
            }
            _ => fields.push((extra[at % extra.len()], odd.into())),
        }
    }
    let parts: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    format!("{{{}}}", parts.join(","))
}

/// The property both contracts' one-pass decoders must hold, over `$records` (a strategy of
/// `(message key, JSON)`): `event::decode` gives exactly what `event::checked` gives.
macro_rules! decoding_agrees_with_the_field_by_field_decoder {
    ($records:expr) => {
        proptest::proptest! {
            #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]
            /// The one-pass decoder never changes a result: the same event, or the same refusal.
            #[test]
            fn decoding_agrees_with_the_field_by_field_decoder((key, json) in $records) {
                let key = key.map(str::as_bytes);
                proptest::prop_assert_eq!(
                    event::decode(key, json.as_bytes()),
                    event::checked(key, json.as_bytes())
                );
            }
        }
    };
}
pub(crate) use decoding_agrees_with_the_field_by_field_decoder;
