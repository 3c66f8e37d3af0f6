//! The ledger contract, case by case.

use rstest::rstest;

use super::*;
use crate::error::Reason;

const SRC: SourceRef = SourceRef {
    partition: 0,
    offset: 7,
};

fn posting(kind: &str, amount: i64, currency: &str) -> String {
    format!(
        r#"{{"event_id":"e-{kind}-{amount}","schema_version":1,"account_id":"acc-1","type":"{kind}","amount_minor":{amount},"currency":"{currency}","event_time":"2026-06-19T18:23:11Z","correlation_id":"c-1","causation_id":null}}"#
    )
}

fn apply(prev: Option<&Balance>, json: &str) -> Result<Balance, Invalid> {
    let ev = Ledger::decode(Some(b"acc-1"), json.as_bytes())?;
    Ledger::apply(prev, &ev, SRC, &Guard::none())
}

fn guarded(prev: Option<&Balance>, json: &str, overdraft: bool) -> Result<Balance, Invalid> {
    let ev = Ledger::decode(Some(b"acc-1"), json.as_bytes())?;
    let guard = Guard::new(Ledger::INVARIANTS.iter().copied(), overdraft);
    Ledger::apply(prev, &ev, SRC, &guard)
}

#[rstest]
#[case::withdrawal_beyond_available("withdrawn", 101, "available_non_negative")]
#[case::reservation_beyond_available("reserved", 101, "available_non_negative")]
#[case::release_beyond_reserved("released", 1, "reserved_non_negative")]
#[case::capture_beyond_reserved("captured", 1, "reserved_non_negative")]
fn a_posting_that_would_break_an_invariant_is_refused(
    #[case] kind: &str,
    #[case] amount: i64,
    #[case] check: &str,
) {
    let s = guarded(None, &posting("deposited", 100, "EUR"), false).unwrap();
    let err = guarded(Some(&s), &posting(kind, amount, "EUR"), false).unwrap_err();
    assert_eq!(err.reason, Reason::InvariantViolated);
    assert!(err.message.contains(check), "{}", err.message);
}

#[test]
fn an_overdraft_is_taken_when_the_contract_allows_it() {
    let s = guarded(None, &posting("deposited", 100, "EUR"), true).unwrap();
    let s = guarded(Some(&s), &posting("withdrawn", 150, "EUR"), true).unwrap();
    assert_eq!(s.balances.get("EUR").unwrap().available, -50);
}

#[test]
fn the_contract_example_renders_exactly() {
    let s = apply(
        None,
        &posting("deposited", 1000, "EUR").replace("e-deposited-1000", "e-1"),
    )
    .unwrap();
    let mut out = Vec::new();
    Ledger::render(&s, &mut out).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"{"account_id":"acc-1","balances":{"EUR":{"available":1000,"reserved":0,"total":1000}},"events_applied":1,"last_event_id":"e-1","last_event_time":"2026-06-19T18:23:11Z","source":{"partition":0,"offset":7}}"#
    );
}

#[rstest]
#[case::deposited("deposited", (1100, 50))]
#[case::withdrawn("withdrawn", (900, 50))]
#[case::reserved("reserved", (900, 150))]
#[case::released("released", (1100, -50))]
#[case::captured("captured", (1000, -50))]
fn each_type_moves_its_balances(#[case] kind: &str, #[case] expected: (i64, i64)) {
    let mut s = apply(None, &posting("deposited", 1050, "EUR")).unwrap();
    s = apply(Some(&s), &posting("reserved", 50, "EUR")).unwrap();
    let s = apply(Some(&s), &posting(kind, 100, "EUR")).unwrap();
    let m = s.balances["EUR"];
    assert_eq!((m.available, m.reserved), expected);
    assert_eq!(s.events_applied, 3);
}

#[test]
fn currencies_are_kept_apart() {
    let s = apply(None, &posting("deposited", 5, "JPY")).unwrap();
    let s = apply(Some(&s), &posting("deposited", 7, "EUR")).unwrap();
    assert_eq!(s.balances["JPY"].available, 5);
    assert_eq!(s.balances["EUR"].available, 7);
}

#[rstest]
#[case::available_overflow("deposited")]
#[case::total_overflow("released")]
fn overflow_is_an_error_never_a_wrap(#[case] kind: &str) {
    let s = apply(None, &posting("deposited", i64::MAX - 10, "EUR")).unwrap();
    let s = if kind == "released" {
        apply(Some(&s), &posting("reserved", 5, "EUR")).unwrap()
    } else {
        s
    };
    let err = apply(Some(&s), &posting(kind, 20, "EUR")).unwrap_err();
    assert_eq!(err.reason, Reason::Overflow);
}

#[rstest]
#[case::not_json("nope", Reason::MalformedJson)]
#[case::missing_amount(&posting("deposited", 1, "EUR").replace("\"amount_minor\":1,", ""), Reason::MissingField)]
#[case::amount_as_string(&posting("deposited", 1, "EUR").replace("\"amount_minor\":1", "\"amount_minor\":\"1\""), Reason::InvalidField)]
#[case::amount_zero(&posting("deposited", 0, "EUR"), Reason::OutOfRange)]
#[case::amount_negative(&posting("deposited", -5, "EUR"), Reason::OutOfRange)]
#[case::amount_too_big(&posting("deposited", 1, "EUR").replace("\"amount_minor\":1", "\"amount_minor\":99999999999999999999"), Reason::InvalidField)]
#[case::lowercase_currency(&posting("deposited", 1, "eur"), Reason::InvalidField)]
#[case::long_currency(&posting("deposited", 1, "EURO"), Reason::InvalidField)]
#[case::unknown_type(&posting("stolen", 1, "EUR"), Reason::UnknownType)]
#[case::schema_v99(&posting("deposited", 1, "EUR").replace("\"schema_version\":1", "\"schema_version\":99"), Reason::UnknownSchemaVersion)]
#[case::correlation_not_string(&posting("deposited", 1, "EUR").replace("\"c-1\"", "7"), Reason::InvalidField)]
fn invalid_input_is_refused_with_its_reason(#[case] json: &str, #[case] reason: Reason) {
    assert_eq!(
        Ledger::decode(Some(b"acc-1"), json.as_bytes())
            .unwrap_err()
            .reason,
        reason
    );
}

#[test]
fn the_message_key_must_be_the_account() {
    let json = posting("deposited", 1, "EUR");
    assert_eq!(
        Ledger::decode(Some(b"acc-2"), json.as_bytes())
            .unwrap_err()
            .reason,
        Reason::KeyMismatch
    );
}

#[test]
fn state_roundtrips() {
    let s = apply(None, &posting("deposited", 5, "JPY")).unwrap();
    let mut buf = Vec::new();
    Ledger::encode_state(&s, &mut buf);
    assert_eq!(Ledger::decode_state(&buf).unwrap(), s);
}

mod one_pass_decoding {
    use super::super::event;
    use crate::cases::{changes, render};
    use proptest::prelude::*;

    prop_compose! {
        /// A plausible posting (valid more often than not) and its message key, then up to two
        /// fields made odd, dropped, repeated or added.
        fn record()(
            v2 in any::<bool>(),
            id in prop::sample::select(vec!["\"e-1\"", "\"e\\u002d1\"", "\"\""]),
            account in prop::sample::select(vec!["\"acc-1\"", "\"acc\\u002d1\"", "\"acc-2\""]),
            kind in prop::sample::select(vec!["\"deposited\"", "\"withdrawn\"", "\"reserved\"", "\"released\"", "\"captured\""]),
            minor in prop::sample::select(vec!["250", "250", "0", "-5"]),
            amount in prop::sample::select(vec!["\"2.50\"", "\"2.50\"", "\"2.505\"", "\"-1\"", "\"0\""]),
            currency in prop::sample::select(vec!["\"EUR\"", "\"EUR\"", "\"JPY\"", "\"eur\"", "\"XXX\""]),
            time in prop::sample::select(vec!["\"2026-06-19T18:23:11Z\"", "\"2026-06-19T18:23:11.5+02:00\""]),
            correlation in prop::sample::select(vec![None, Some("\"c-1\""), Some("null")]),
            keyed in prop::sample::select(vec![true, true, true, true, false]),
            changes in changes(),
        ) -> (Option<&'static str>, String) {
            let key = keyed.then_some(if account.contains('2') { "acc-2" } else { "acc-1" });
            let mut fields: Vec<(&str, String)> = vec![
                ("event_id", id.into()),
                ("schema_version", if v2 { "2" } else { "1" }.into()),
                ("account_id", account.into()),
                ("type", kind.into()),
                ("currency", currency.into()),
                ("event_time", time.into()),
            ];
            if v2 {
                fields.push(("amount", amount.into()));
            } else {
                fields.push(("amount_minor", minor.into()));
            }
            if let Some(c) = correlation {
                fields.push(("correlation_id", c.into()));
            }
            let extra = ["amount_minor", "amount", "correlation_id", "causation_id"];
            (key, render(fields, &changes, &extra))
        }
    }

    crate::cases::decoding_agrees_with_the_field_by_field_decoder!(record());
}
