//! Event time: RFC 3339 text in events and outputs, i64 epoch milliseconds inside.
//! Parsing and rendering are pure; nothing here reads a clock.

use chrono::{DateTime, SecondsFormat, Utc};

use crate::error::{Invalid, Reason};

/// Parses an RFC 3339 timestamp (any offset) into epoch milliseconds.
pub fn parse_event_time(s: &str) -> Result<i64, Invalid> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| {
            Invalid::new(
                Reason::InvalidField,
                format!("event_time `{s}` is not RFC 3339: {e}"),
            )
        })
}

/// Renders epoch milliseconds as RFC 3339 UTC with `Z`, with milliseconds only when non-zero.
pub fn render_event_time(ms: i64) -> String {
    match DateTime::<Utc>::from_timestamp_millis(ms) {
        Some(t) if ms.rem_euclid(1000) == 0 => t.to_rfc3339_opts(SecondsFormat::Secs, true),
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Millis, true),
        None => ms.to_string(),
    }
}

/// Appends [`render_event_time`]'s text to `out` without an intermediate `String`: the output
/// of every event renders one, so the common years take a direct path.
pub(crate) fn write_event_time(ms: i64, out: &mut Vec<u8>) {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let (year, month, day) = civil_date(secs.div_euclid(86_400));
    if !(0..=9999).contains(&year) {
        out.extend_from_slice(render_event_time(ms).as_bytes());
        return;
    }
    let sod = secs.rem_euclid(86_400);
    let mut text = [0u8; 24];
    let mut put = |at: usize, value: i64, width: usize| {
        let mut v = value;
        for i in (at..at + width).rev() {
            text[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year, 4);
    put(5, month, 2);
    put(8, day, 2);
    put(11, sod / 3600, 2);
    put(14, sod / 60 % 60, 2);
    put(17, sod % 60, 2);
    put(20, millis, 3);
    for (at, c) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
    ] {
        text[at] = c;
    }
    let end = if millis == 0 { 19 } else { 23 };
    out.extend_from_slice(&text[..end]);
    out.push(b'Z');
}

/// The proleptic Gregorian (year, month, day) of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_date(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("2026-06-19T18:23:11Z", "2026-06-19T18:23:11Z")]
    #[case("2026-06-19T18:23:11.250Z", "2026-06-19T18:23:11.250Z")]
    #[case("2026-06-19T20:23:11+02:00", "2026-06-19T18:23:11Z")]
    fn parses_and_renders_in_utc(#[case] input: &str, #[case] rendered: &str) {
        assert_eq!(
            render_event_time(parse_event_time(input).unwrap()),
            rendered
        );
    }

    #[rstest]
    #[case("yesterday")]
    #[case("2026-06-19")]
    #[case("2026-13-19T18:23:11Z")]
    fn refuses_what_is_not_rfc3339(#[case] input: &str) {
        assert_eq!(
            parse_event_time(input).unwrap_err().reason,
            Reason::InvalidField
        );
    }

    proptest::proptest! {
        #[test]
        fn writing_an_event_time_matches_rendering_it(ms in proptest::prop_oneof![
            -62_167_219_200_000i64..253_402_300_800_000,
            proptest::num::i64::ANY,
        ]) {
            let mut out = b"prefix ".to_vec();
            write_event_time(ms, &mut out);
            proptest::prop_assert_eq!(out, format!("prefix {}", render_event_time(ms)).into_bytes());
        }
    }

    #[rstest]
    #[case(0, "1970-01-01T00:00:00Z")]
    #[case(-1, "1969-12-31T23:59:59.999Z")]
    #[case(951_782_400_000, "2000-02-29T00:00:00Z")]
    fn writes_known_instants(#[case] ms: i64, #[case] text: &str) {
        let mut out = Vec::new();
        write_event_time(ms, &mut out);
        assert_eq!(out, text.as_bytes());
    }
}
