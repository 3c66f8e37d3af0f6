//! Upcasting event schema version 2 to the one shape projections read: inventory case units to
//! each, ledger decimal amounts to i64 minor units by the currency's exponent, exactly or not at all.

use crate::error::{Invalid, Reason};

/// Minor-unit exponents (ISO 4217) of the currencies a v2 posting may carry.
const EXPONENTS: [(&str, u32); 24] = [
    ("AUD", 2),
    ("BHD", 3),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("CZK", 2),
    ("DKK", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("INR", 2),
    ("ISK", 0),
    ("JOD", 3),
    ("JPY", 0),
    ("KRW", 0),
    ("KWD", 3),
    ("NOK", 2),
    ("OMR", 3),
    ("PLN", 2),
    ("SEK", 2),
    ("TND", 3),
    ("USD", 2),
];

/// The number of minor-unit digits of `currency`, if tally knows it.
pub fn currency_exponent(currency: &str) -> Option<u32> {
    EXPONENTS
        .iter()
        .find(|(c, _)| *c == currency)
        .map(|(_, e)| *e)
}

fn invalid(msg: String) -> Invalid {
    Invalid::new(Reason::InvalidField, msg)
}

/// Units of a v2 inventory movement: `delta` of `each` (1 unit) or `case_of_N` (N units).
pub(crate) fn units(delta: i64, unit_of_measure: &str) -> Result<i64, Invalid> {
    let per = match unit_of_measure {
        "each" => 1,
        other => {
            let n = other.strip_prefix("case_of_").ok_or_else(|| {
                invalid(format!(
                    "unit_of_measure `{other}` is not each or case_of_N"
                ))
            })?;
            if n.is_empty() || n.starts_with('0') || !n.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid(format!(
                    "unit_of_measure `{other}`: N must be a positive integer without sign or leading zeros"
                )));
            }
            n.parse::<i64>().map_err(|_| {
                Invalid::new(
                    Reason::Overflow,
                    format!("unit_of_measure `{other}` is too large"),
                )
            })?
        }
    };
    delta.checked_mul(per).ok_or_else(|| {
        Invalid::new(
            Reason::Overflow,
            format!("delta {delta} x {unit_of_measure} overflows i64 units"),
        )
    })
}

/// A v2 decimal amount (`"12.34"`) as i64 minor units of `currency`; more fractional digits than
/// the currency has is invalid, never rounded (`"1.230"` EUR included: it claims a precision the
/// currency does not have).
pub(crate) fn minor_units(amount: &str, currency: &str) -> Result<i64, Invalid> {
    let exp = currency_exponent(currency).ok_or_else(|| {
        invalid(format!(
            "currency `{currency}` has no known minor-unit exponent"
        ))
    })?;
    let bad = || invalid(format!("amount `{amount}` is not a decimal like 12.34"));
    let (negative, digits) = match amount.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, amount),
    };
    let (int, frac) = match digits.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (digits, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(int) || frac.is_some_and(|f| !all_digits(f)) {
        return Err(bad());
    }
    let frac = frac.unwrap_or("");
    if frac.len() > exp as usize {
        return Err(invalid(format!(
            "amount `{amount}` has {} decimal places but {currency} has {exp}",
            frac.len()
        )));
    }
    let overflow = || Invalid::new(Reason::Overflow, format!("amount `{amount}` overflows i64"));
    let mut v: i64 = 0;
    for b in int.bytes().chain(frac.bytes()) {
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(i64::from(b - b'0')))
            .ok_or_else(overflow)?;
    }
    for _ in frac.len()..exp as usize {
        v = v.checked_mul(10).ok_or_else(overflow)?;
    }
    Ok(if negative { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("12.34", "EUR", 1234)]
    #[case("12.3", "EUR", 1230)]
    #[case("12", "EUR", 1200)]
    #[case("0.01", "USD", 1)]
    #[case("1500", "JPY", 1500)]
    #[case("1.005", "KWD", 1005)]
    #[case("-5", "EUR", -500)]
    #[case("9223372036854775807", "JPY", i64::MAX)]
    fn decimals_convert_exactly(#[case] amount: &str, #[case] cur: &str, #[case] minor: i64) {
        assert_eq!(minor_units(amount, cur), Ok(minor));
    }

    #[rstest]
    #[case("0.005", "EUR", Reason::InvalidField)]
    #[case("1.230", "EUR", Reason::InvalidField)]
    #[case("1.5", "JPY", Reason::InvalidField)]
    #[case("1.0001", "KWD", Reason::InvalidField)]
    #[case("1e3", "EUR", Reason::InvalidField)]
    #[case("+1", "EUR", Reason::InvalidField)]
    #[case("1.", "EUR", Reason::InvalidField)]
    #[case(".5", "EUR", Reason::InvalidField)]
    #[case(" 1", "EUR", Reason::InvalidField)]
    #[case("", "EUR", Reason::InvalidField)]
    #[case("1", "XXX", Reason::InvalidField)]
    #[case("92233720368547758.08", "EUR", Reason::Overflow)]
    fn bad_decimals_are_refused(#[case] amount: &str, #[case] cur: &str, #[case] reason: Reason) {
        assert_eq!(minor_units(amount, cur).map_err(|e| e.reason), Err(reason));
    }

    #[rstest]
    #[case(5, "each", 5)]
    #[case(-3, "case_of_12", -36)]
    #[case(2, "case_of_1", 2)]
    fn units_convert(#[case] delta: i64, #[case] uom: &str, #[case] want: i64) {
        assert_eq!(units(delta, uom), Ok(want));
    }

    #[rstest]
    #[case(1, "box", Reason::InvalidField)]
    #[case(1, "case_of_0", Reason::InvalidField)]
    #[case(1, "case_of_012", Reason::InvalidField)]
    #[case(1, "case_of_-2", Reason::InvalidField)]
    #[case(1, "case_of_", Reason::InvalidField)]
    #[case(i64::MAX, "case_of_2", Reason::Overflow)]
    fn bad_units_are_refused(#[case] delta: i64, #[case] uom: &str, #[case] reason: Reason) {
        assert_eq!(units(delta, uom).map_err(|e| e.reason), Err(reason));
    }
}
