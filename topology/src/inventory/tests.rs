//! The inventory contract, case by case.

use rstest::rstest;

use super::*;
use crate::error::Reason;

const SRC: SourceRef = SourceRef {
    partition: 3,
    offset: 41,
};

fn event(op: &str, bucket: &str, to: Option<&str>, q: i64) -> String {
    let to = to.map_or(String::new(), |t| format!(",\"to_bucket\":\"{t}\""));
    format!(
        r#"{{"event_id":"e-{op}-{q}","schema_version":1,"sku":"1231241","seller_id":"seller-42","location_id":"fc-1","bucket":"{bucket}","operation":"{op}"{to},"quantity":{q},"event_time":"2026-06-19T18:23:11Z"}}"#
    )
}

fn apply(prev: Option<&Availability>, json: &str) -> Result<Availability, Invalid> {
    let ev = Inventory::decode(Some(b"1231241"), json.as_bytes())?;
    Inventory::apply(prev, &ev, SRC, &Guard::none())
}

/// The built-in contract's checks.
fn guarded(prev: Option<&Availability>, json: &str) -> Result<Availability, Invalid> {
    let ev = Inventory::decode(Some(b"1231241"), json.as_bytes())?;
    let guard = Guard::new(Inventory::INVARIANTS.iter().copied(), false);
    Inventory::apply(prev, &ev, SRC, &guard)
}

#[rstest]
#[case::most_negative_adjust_on_a_new_sku(i64::MIN + 1)]
#[case::small_negative_adjust_on_a_new_sku(-5)]
fn an_adjust_that_would_take_sellable_below_zero_is_refused(#[case] q: i64) {
    let err = guarded(None, &event("adjust", "sellable", None, q)).unwrap_err();
    assert_eq!(err.reason, Reason::InvariantViolated);
    assert!(
        err.message.contains("sellable_non_negative"),
        "{}",
        err.message
    );
}

#[test]
fn a_move_that_would_take_sellable_below_zero_is_refused() {
    let s = start();
    let err = guarded(Some(&s), &event("move", "sellable", Some("damaged"), 11)).unwrap_err();
    assert_eq!(err.reason, Reason::InvariantViolated);
    assert!(guarded(Some(&s), &event("move", "sellable", Some("damaged"), 10)).is_ok());
}

#[test]
fn a_state_already_below_zero_still_takes_events() {
    let negative = apply(None, &event("adjust", "sellable", None, -5)).unwrap();
    let s = guarded(Some(&negative), &event("adjust", "sellable", None, 2)).unwrap();
    assert_eq!(s.locations.get("fc-1").unwrap().sellable, -3);
}

#[test]
fn without_the_check_in_the_contract_sellable_may_go_below_zero() {
    let ev = Inventory::decode(
        Some(b"1231241"),
        event("adjust", "sellable", None, -5).as_bytes(),
    )
    .unwrap();
    let guard = Guard::new(["stock_on_hand_equals_sum_of_buckets"], false);
    assert!(Inventory::apply(None, &ev, SRC, &guard).is_ok());
}

fn start() -> Availability {
    let mut s = apply(None, &event("set", "sellable", None, 10)).unwrap();
    s = apply(Some(&s), &event("set", "damaged", None, 4)).unwrap();
    apply(Some(&s), &event("set", "return_to_vendor", None, 2)).unwrap()
}

#[test]
fn the_contract_example_renders_exactly() {
    let json = r#"{"event_id":"mkt-evt-8f11a","schema_version":1,"sku":"1231241","seller_id":"seller-42","location_id":"fc-1","bucket":"sellable","operation":"adjust","quantity":100,"event_time":"2026-06-19T18:23:11Z"}"#;
    let s = apply(None, json).unwrap();
    let mut out = Vec::new();
    Inventory::render(&s, &mut out).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"{"sku":"1231241","stock_on_hand":100,"sellable":100,"damaged":0,"return_to_vendor":0,"locations":{"fc-1":{"sellable":100,"damaged":0,"return_to_vendor":0}},"events_applied":1,"last_event_id":"mkt-evt-8f11a","last_event_time":"2026-06-19T18:23:11Z","source":{"partition":3,"offset":41}}"#
    );
}

#[rstest]
#[case::adjust_up(event("adjust", "sellable", None, 5), (15, 4, 2))]
#[case::adjust_down(event("adjust", "damaged", None, -3), (10, 1, 2))]
#[case::set(event("set", "return_to_vendor", None, 0), (10, 4, 0))]
#[case::move_sellable_to_damaged(event("move", "sellable", Some("damaged"), 3), (7, 7, 2))]
#[case::move_sellable_to_rtv(event("move", "sellable", Some("return_to_vendor"), 3), (7, 4, 5))]
#[case::move_damaged_to_sellable(event("move", "damaged", Some("sellable"), 1), (11, 3, 2))]
#[case::move_damaged_to_rtv(event("move", "damaged", Some("return_to_vendor"), 4), (10, 0, 6))]
#[case::move_rtv_to_sellable(event("move", "return_to_vendor", Some("sellable"), 2), (12, 4, 0))]
#[case::move_rtv_to_damaged(event("move", "return_to_vendor", Some("damaged"), 2), (10, 6, 0))]
fn operations_change_their_buckets(#[case] json: String, #[case] expected: (i64, i64, i64)) {
    let s = apply(Some(&start()), &json).unwrap();
    let b = s.locations["fc-1"];
    assert_eq!((b.sellable, b.damaged, b.return_to_vendor), expected);
    assert_eq!(s.events_applied, 4);
    assert_eq!(s.totals().unwrap().1, expected.0 + expected.1 + expected.2);
}

#[test]
fn a_move_may_take_a_bucket_negative_because_the_log_is_the_truth() {
    let s = apply(None, &event("move", "sellable", Some("damaged"), 5)).unwrap();
    assert_eq!(s.locations["fc-1"].sellable, -5);
    assert_eq!(s.totals().unwrap().1, 0);
}

#[rstest]
#[case::adjust_overflow(i64::MAX, event("adjust", "sellable", None, 1))]
#[case::stock_on_hand_overflow(i64::MAX, event("set", "damaged", None, 1))]
#[case::move_overflow(i64::MAX, event("move", "damaged", Some("sellable"), 1))]
fn overflow_is_an_error_never_a_wrap(#[case] sellable: i64, #[case] json: String) {
    let s = apply(None, &event("set", "sellable", None, sellable)).unwrap();
    assert_eq!(apply(Some(&s), &json).unwrap_err().reason, Reason::Overflow);
}

#[rstest]
#[case::not_json("{nope", Reason::MalformedJson)]
#[case::not_an_object("[1,2]", Reason::MalformedJson)]
#[case::missing_field(r#"{"event_id":"e","schema_version":1,"sku":"1231241","seller_id":"s","location_id":"fc-1","bucket":"sellable","operation":"adjust","event_time":"2026-06-19T18:23:11Z"}"#, Reason::MissingField)]
#[case::wrong_type(&event("adjust", "sellable", None, 1).replace("\"quantity\":1", "\"quantity\":\"1\""), Reason::InvalidField)]
#[case::fractional_quantity(&event("adjust", "sellable", None, 1).replace("\"quantity\":1", "\"quantity\":1.5"), Reason::InvalidField)]
#[case::schema_v3(&event("adjust", "sellable", None, 1).replace("\"schema_version\":1", "\"schema_version\":3"), Reason::UnknownSchemaVersion)]
#[case::v2_with_quantity(&event("adjust", "sellable", None, 1).replace("\"schema_version\":1", "\"schema_version\":2"), Reason::InvalidField)]
#[case::v1_with_delta(&event("adjust", "sellable", None, 1).replace("\"quantity\":1", "\"quantity\":1,\"delta\":1"), Reason::InvalidField)]
#[case::unknown_bucket(&event("adjust", "lost", None, 1), Reason::UnknownBucket)]
#[case::unknown_to_bucket(&event("move", "sellable", Some("lost"), 1), Reason::UnknownBucket)]
#[case::unknown_operation(&event("steal", "sellable", None, 1), Reason::UnknownOperation)]
#[case::set_negative(&event("set", "sellable", None, -5), Reason::OutOfRange)]
#[case::adjust_zero(&event("adjust", "sellable", None, 0), Reason::OutOfRange)]
#[case::move_zero(&event("move", "sellable", Some("damaged"), 0), Reason::OutOfRange)]
#[case::move_without_to_bucket(&event("move", "sellable", None, 1), Reason::MissingField)]
#[case::move_to_same_bucket(&event("move", "sellable", Some("sellable"), 1), Reason::InvalidField)]
#[case::to_bucket_on_adjust(&event("adjust", "sellable", Some("damaged"), 1), Reason::InvalidField)]
#[case::bad_time(&event("adjust", "sellable", None, 1).replace("2026-06-19T18:23:11Z", "June 19th"), Reason::InvalidField)]
#[case::empty_event_id(&event("adjust", "sellable", None, 1).replace("\"e-adjust-1\"", "\"\""), Reason::InvalidField)]
fn invalid_input_is_refused_with_its_reason(#[case] json: &str, #[case] reason: Reason) {
    assert_eq!(
        Inventory::decode(Some(b"1231241"), json.as_bytes())
            .unwrap_err()
            .reason,
        reason
    );
}

#[rstest]
#[case::other_key(Some(&b"999"[..]))]
#[case::no_key(None)]
fn the_message_key_must_be_the_sku(#[case] key: Option<&[u8]>) {
    let json = event("adjust", "sellable", None, 1);
    assert_eq!(
        Inventory::decode(key, json.as_bytes()).unwrap_err().reason,
        Reason::KeyMismatch
    );
}

#[test]
fn unknown_extra_fields_are_ignored() {
    let json = event("adjust", "sellable", None, 1)
        .replace("{\"event_id\"", "{\"extra\":[1,{}],\"event_id\"");
    assert!(Inventory::decode(Some(b"1231241"), json.as_bytes()).is_ok());
}

#[test]
fn state_roundtrips_and_an_unknown_version_is_named() {
    let s = start();
    let mut buf = Vec::new();
    Inventory::encode_state(&s, &mut buf);
    assert_eq!(Inventory::decode_state(&buf).unwrap(), s);
    buf[0] = 9;
    assert!(Inventory::decode_state(&buf)
        .unwrap_err()
        .to_string()
        .contains("format version 9"));
    assert!(Inventory::decode_state(&[1, 0xff, 0xff]).is_err());
    assert!(Inventory::decode_state(&[]).is_err());
}

#[test]
fn fingerprint_ignores_layout_but_not_content() {
    let a = event("adjust", "sellable", None, 1);
    let spaced = a.replace(",\"", " ,\n \"").replace("\":", "\" : ");
    let reordered = a
        .replace("{\"event_id\":\"e-adjust-1\",", "{")
        .replace("}", ",\"event_id\":\"e-adjust-1\"}");
    let other = event("adjust", "sellable", None, 1).replace("fc-1", "fc-2");
    let fp = |j: &str| {
        Inventory::fingerprint(&Inventory::decode(Some(b"1231241"), j.as_bytes()).unwrap())
    };
    assert_eq!(fp(&a), fp(&spaced));
    assert_eq!(fp(&a), fp(&reordered));
    assert_ne!(fp(&a), fp(&other));
}

mod one_pass_decoding {
    use super::super::event;
    use crate::cases::{changes, render};
    use proptest::prelude::*;

    prop_compose! {
        /// A plausible record (valid more often than not) and its message key, then up to two
        /// fields made odd, dropped, repeated or added.
        fn record()(
            v2 in any::<bool>(),
            id in prop::sample::select(vec!["\"e-1\"", "\"e\\u002d1\"", "\"\""]),
            sku in prop::sample::select(vec!["\"sku-1\"", "\"sku\\u002d1\"", "\"sku-2\""]),
            location in prop::sample::select(vec!["\"fc-1\"", "\"fc\\n1\""]),
            bucket in prop::sample::select(vec!["\"sellable\"", "\"damaged\"", "\"return_to_vendor\""]),
            operation in prop::sample::select(vec!["\"adjust\"", "\"set\"", "\"move\""]),
            to_bucket in prop::sample::select(vec![None, None, None, Some("\"sellable\""), Some("\"damaged\""), Some("null")]),
            quantity in prop::sample::select(vec!["3", "3", "3", "-3", "0", "4611686018427387904"]),
            uom in prop::sample::select(vec!["\"each\"", "\"case_of_12\"", "\"case_of_0\"", "\"box\""]),
            time in prop::sample::select(vec!["\"2026-06-19T18:23:11Z\"", "\"2026-06-19T18:23:11.5+02:00\""]),
            keyed in prop::sample::select(vec![true, true, true, true, false]),
            changes in changes(),
        ) -> (Option<&'static str>, String) {
            let key = keyed.then_some(if sku.contains('2') { "sku-2" } else { "sku-1" });
            // A move gets a bucket to go to, unless one was drawn.
            let to_bucket = match (operation, to_bucket) {
                ("\"move\"", None) if bucket == "\"sellable\"" => Some("\"damaged\""),
                ("\"move\"", None) => Some("\"sellable\""),
                (_, t) => t,
            };
            let mut fields: Vec<(&str, String)> = vec![
                ("event_id", id.into()),
                ("schema_version", if v2 { "2" } else { "1" }.into()),
                ("sku", sku.into()),
                ("seller_id", "\"seller-1\"".into()),
                ("location_id", location.into()),
                ("bucket", bucket.into()),
                ("operation", operation.into()),
                ("event_time", time.into()),
            ];
            if let Some(t) = to_bucket {
                fields.push(("to_bucket", t.into()));
            }
            if v2 {
                fields.push(("delta", quantity.into()));
                fields.push(("unit_of_measure", uom.into()));
            } else {
                fields.push(("quantity", quantity.into()));
            }
            let extra = ["quantity", "delta", "unit_of_measure", "to_bucket"];
            (key, render(fields, &changes, &extra))
        }
    }

    crate::cases::decoding_agrees_with_the_field_by_field_decoder!(record());
}
