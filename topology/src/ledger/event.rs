//! The ledger input contract (schema_version 1, and 2 upcast to it) and its validation.
//! Amounts are positive i64 minor units; the type says which balance moves which way.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::{Invalid, Reason};
use crate::fields;

/// What a posting does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryType {
    Deposited,
    Withdrawn,
    Reserved,
    Released,
    Captured,
}

impl EntryType {
    fn parse(s: &str) -> Result<Self, Invalid> {
        match s {
            "deposited" => Ok(EntryType::Deposited),
            "withdrawn" => Ok(EntryType::Withdrawn),
            "reserved" => Ok(EntryType::Reserved),
            "released" => Ok(EntryType::Released),
            "captured" => Ok(EntryType::Captured),
            other => Err(Invalid::new(
                Reason::UnknownType,
                format!(
                    "type `{other}` is not deposited, withdrawn, reserved, released or captured"
                ),
            )),
        }
    }

    /// The contract's name.
    pub fn as_str(&self) -> &'static str {
        match self {
            EntryType::Deposited => "deposited",
            EntryType::Withdrawn => "withdrawn",
            EntryType::Reserved => "reserved",
            EntryType::Released => "released",
            EntryType::Captured => "captured",
        }
    }
}

/// One validated posting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEvent {
    pub event_id: String,
    pub schema_version: u32,
    pub account_id: String,
    pub kind: EntryType,
    pub amount_minor: i64,
    pub currency: String,
    pub event_time_ms: i64,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
}

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    event_id: Option<&'a RawValue>,
    #[serde(borrow)]
    schema_version: Option<&'a RawValue>,
    #[serde(borrow)]
    account_id: Option<&'a RawValue>,
    #[serde(borrow, rename = "type")]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    amount_minor: Option<&'a RawValue>,
    #[serde(borrow)]
    amount: Option<&'a RawValue>,
    #[serde(borrow)]
    currency: Option<&'a RawValue>,
    #[serde(borrow)]
    event_time: Option<&'a RawValue>,
    #[serde(borrow)]
    correlation_id: Option<&'a RawValue>,
    #[serde(borrow)]
    causation_id: Option<&'a RawValue>,
}

/// A valid record's fields, read in one typed pass (`null` reads as absent, as in [`Raw`]).
#[derive(Deserialize)]
struct Typed<'a> {
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    schema_version: u32,
    #[serde(borrow)]
    account_id: Cow<'a, str>,
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(default)]
    amount_minor: Option<i64>,
    #[serde(borrow, default)]
    amount: Option<Cow<'a, str>>,
    #[serde(borrow)]
    currency: Cow<'a, str>,
    #[serde(borrow)]
    event_time: Cow<'a, str>,
    #[serde(borrow, default)]
    correlation_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    causation_id: Option<Cow<'a, str>>,
}

/// Parses and validates one ledger record (see [`fields::quick_or_checked`]).
pub(crate) fn decode(key: Option<&[u8]>, value: &[u8]) -> Result<LedgerEvent, Invalid> {
    fields::quick_or_checked(quick(key, value), || checked(key, value))
}

/// The typed pass: the event when the record is valid, else nothing.
fn quick(key: Option<&[u8]>, value: &[u8]) -> Option<LedgerEvent> {
    // One UTF-8 check of the whole record rather than one per string field.
    let t: Typed<'_> = serde_json::from_str(std::str::from_utf8(value).ok()?).ok()?;
    if !fields::is_id(&t.event_id) || !fields::is_id(&t.account_id) {
        return None;
    }
    let kind = EntryType::parse(&t.kind).ok()?;
    currency_code(&t.currency).ok()?;
    let amount_minor = match (t.schema_version, t.amount_minor, &t.amount) {
        (1, Some(minor), None) => minor,
        (2, None, Some(amount)) => crate::upcast::minor_units(amount, &t.currency).ok()?,
        _ => return None,
    };
    positive(amount_minor).ok()?;
    let event_time_ms = crate::time::parse_event_time(&t.event_time).ok()?;
    fields::key_matches(key, "account_id", &t.account_id).ok()?;
    Some(LedgerEvent {
        event_id: t.event_id.into_owned(),
        schema_version: t.schema_version,
        account_id: t.account_id.into_owned(),
        kind,
        amount_minor,
        currency: t.currency.into_owned(),
        event_time_ms,
        correlation_id: t.correlation_id.map(Cow::into_owned),
        causation_id: t.causation_id.map(Cow::into_owned),
    })
}

/// A currency is a 3-letter upper-case code.
fn currency_code(currency: &str) -> Result<(), Invalid> {
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Invalid::new(
            Reason::InvalidField,
            format!("currency `{currency}` is not a 3-letter upper-case code"),
        ));
    }
    Ok(())
}

/// Amounts are positive; the type says which way they move.
fn positive(amount_minor: i64) -> Result<(), Invalid> {
    if amount_minor <= 0 {
        return Err(Invalid::new(
            Reason::OutOfRange,
            format!("amount {amount_minor} (minor units) must be > 0"),
        ));
    }
    Ok(())
}

/// The field-by-field pass: every check in contract order, the first failure named.
pub(super) fn checked(key: Option<&[u8]>, value: &[u8]) -> Result<LedgerEvent, Invalid> {
    let raw: Raw<'_> = fields::object(value)?;
    let event_id = fields::id("event_id", raw.event_id)?;
    let schema_version = fields::schema_version(raw.schema_version, &[1, 2])?;
    let account_id = fields::id("account_id", raw.account_id)?;
    let kind_name: Cow<'_, str> = fields::required("type", raw.kind)?;
    let kind = EntryType::parse(&kind_name)?;
    let currency: Cow<'_, str> = fields::required("currency", raw.currency)?;
    currency_code(&currency)?;
    let amount_minor: i64 = if schema_version == 1 {
        fields::absent("amount", raw.amount, 1)?;
        fields::required("amount_minor", raw.amount_minor)?
    } else {
        fields::absent("amount_minor", raw.amount_minor, 2)?;
        let amount: Cow<'_, str> = fields::required("amount", raw.amount)?;
        crate::upcast::minor_units(&amount, &currency)?
    };
    positive(amount_minor)?;
    let event_time: Cow<'_, str> = fields::required("event_time", raw.event_time)?;
    let event_time_ms = crate::time::parse_event_time(&event_time)?;
    let correlation_id = fields::optional_str("correlation_id", raw.correlation_id)?;
    let causation_id = fields::optional_str("causation_id", raw.causation_id)?;
    fields::key_matches(key, "account_id", &account_id)?;
    Ok(LedgerEvent {
        event_id: event_id.into_owned(),
        schema_version,
        account_id: account_id.into_owned(),
        kind,
        amount_minor,
        currency: currency.into_owned(),
        event_time_ms,
        correlation_id: correlation_id.map(Cow::into_owned),
        causation_id: causation_id.map(Cow::into_owned),
    })
}
