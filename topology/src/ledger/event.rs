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

/// Parses and validates one ledger record.
pub(crate) fn decode(key: Option<&[u8]>, value: &[u8]) -> Result<LedgerEvent, Invalid> {
    let raw: Raw<'_> = fields::object(value)?;
    let event_id = fields::id("event_id", raw.event_id)?;
    let schema_version = fields::schema_version(raw.schema_version, &[1, 2])?;
    let account_id = fields::id("account_id", raw.account_id)?;
    let kind_name: Cow<'_, str> = fields::required("type", raw.kind)?;
    let kind = match kind_name.as_ref() {
        "deposited" => EntryType::Deposited,
        "withdrawn" => EntryType::Withdrawn,
        "reserved" => EntryType::Reserved,
        "released" => EntryType::Released,
        "captured" => EntryType::Captured,
        other => {
            return Err(Invalid::new(
                Reason::UnknownType,
                format!(
                    "type `{other}` is not deposited, withdrawn, reserved, released or captured"
                ),
            ))
        }
    };
    let currency: Cow<'_, str> = fields::required("currency", raw.currency)?;
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Invalid::new(
            Reason::InvalidField,
            format!("currency `{currency}` is not a 3-letter upper-case code"),
        ));
    }
    let amount_minor: i64 = if schema_version == 1 {
        fields::absent("amount", raw.amount, 1)?;
        fields::required("amount_minor", raw.amount_minor)?
    } else {
        fields::absent("amount_minor", raw.amount_minor, 2)?;
        let amount: Cow<'_, str> = fields::required("amount", raw.amount)?;
        crate::upcast::minor_units(&amount, &currency)?
    };
    if amount_minor <= 0 {
        return Err(Invalid::new(
            Reason::OutOfRange,
            format!("amount {amount_minor} (minor units) must be > 0"),
        ));
    }
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
