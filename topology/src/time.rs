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
}
