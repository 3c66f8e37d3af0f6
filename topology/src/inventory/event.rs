//! The inventory input contract (schema_version 1, and 2 upcast to it) and its validation.
//! A record that breaks it is refused with a reason; nothing partial is ever applied.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::{Invalid, Reason};
use crate::fields;

/// Which stock bucket a movement touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bucket {
    Sellable,
    Damaged,
    ReturnToVendor,
}

impl Bucket {
    /// The contract's name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Bucket::Sellable => "sellable",
            Bucket::Damaged => "damaged",
            Bucket::ReturnToVendor => "return_to_vendor",
        }
    }

    fn parse(field: &str, s: &str) -> Result<Self, Invalid> {
        match s {
            "sellable" => Ok(Bucket::Sellable),
            "damaged" => Ok(Bucket::Damaged),
            "return_to_vendor" => Ok(Bucket::ReturnToVendor),
            other => Err(Invalid::new(
                Reason::UnknownBucket,
                format!("{field} `{other}` is not sellable, damaged or return_to_vendor"),
            )),
        }
    }
}

/// What a movement does to its bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Adjust,
    Set,
    Move,
}

impl Operation {
    fn parse(s: &str) -> Result<Self, Invalid> {
        match s {
            "adjust" => Ok(Operation::Adjust),
            "set" => Ok(Operation::Set),
            "move" => Ok(Operation::Move),
            other => Err(Invalid::new(
                Reason::UnknownOperation,
                format!("operation `{other}` is not adjust, set or move"),
            )),
        }
    }

    /// The contract's name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Operation::Adjust => "adjust",
            Operation::Set => "set",
            Operation::Move => "move",
        }
    }
}

/// One validated inventory movement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryEvent {
    pub event_id: String,
    pub schema_version: u32,
    pub sku: String,
    pub seller_id: String,
    pub location_id: String,
    pub bucket: Bucket,
    pub operation: Operation,
    pub to_bucket: Option<Bucket>,
    pub quantity: i64,
    pub event_time_ms: i64,
}

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    event_id: Option<&'a RawValue>,
    #[serde(borrow)]
    schema_version: Option<&'a RawValue>,
    #[serde(borrow)]
    sku: Option<&'a RawValue>,
    #[serde(borrow)]
    seller_id: Option<&'a RawValue>,
    #[serde(borrow)]
    location_id: Option<&'a RawValue>,
    #[serde(borrow)]
    bucket: Option<&'a RawValue>,
    #[serde(borrow)]
    operation: Option<&'a RawValue>,
    #[serde(borrow)]
    to_bucket: Option<&'a RawValue>,
    #[serde(borrow)]
    quantity: Option<&'a RawValue>,
    #[serde(borrow)]
    delta: Option<&'a RawValue>,
    #[serde(borrow)]
    unit_of_measure: Option<&'a RawValue>,
    #[serde(borrow)]
    event_time: Option<&'a RawValue>,
}

/// A valid record's fields, read in one typed pass (`null` reads as absent, as in [`Raw`]).
#[derive(Deserialize)]
struct Typed<'a> {
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    schema_version: u32,
    #[serde(borrow)]
    sku: Cow<'a, str>,
    #[serde(borrow)]
    seller_id: Cow<'a, str>,
    #[serde(borrow)]
    location_id: Cow<'a, str>,
    #[serde(borrow)]
    bucket: Cow<'a, str>,
    #[serde(borrow)]
    operation: Cow<'a, str>,
    #[serde(borrow, default)]
    to_bucket: Option<Cow<'a, str>>,
    #[serde(default)]
    quantity: Option<i64>,
    #[serde(default)]
    delta: Option<i64>,
    #[serde(borrow, default)]
    unit_of_measure: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event_time: Cow<'a, str>,
}

/// Parses and validates one inventory record (see [`fields::quick_or_checked`]).
pub(crate) fn decode(key: Option<&[u8]>, value: &[u8]) -> Result<InventoryEvent, Invalid> {
    fields::quick_or_checked(quick(key, value), || checked(key, value))
}

/// The typed pass: the event when the record is valid, else nothing.
fn quick(key: Option<&[u8]>, value: &[u8]) -> Option<InventoryEvent> {
    // One UTF-8 check of the whole record rather than one per string field.
    let t: Typed<'_> = serde_json::from_str(std::str::from_utf8(value).ok()?).ok()?;
    if ![&t.event_id, &t.sku, &t.seller_id, &t.location_id]
        .iter()
        .all(|s| fields::is_id(s))
    {
        return None;
    }
    let quantity = match (t.schema_version, t.quantity, t.delta, &t.unit_of_measure) {
        (1, Some(q), None, None) => q,
        (2, None, Some(delta), Some(uom)) => crate::upcast::units(delta, uom).ok()?,
        _ => return None,
    };
    let bucket = Bucket::parse("bucket", &t.bucket).ok()?;
    let operation = Operation::parse(&t.operation).ok()?;
    let to_bucket = match &t.to_bucket {
        Some(b) => Some(Bucket::parse("to_bucket", b).ok()?),
        None => None,
    };
    let event_time_ms = crate::time::parse_event_time(&t.event_time).ok()?;
    rules(operation, quantity, bucket, to_bucket).ok()?;
    fields::key_matches(key, "sku", &t.sku).ok()?;
    Some(InventoryEvent {
        event_id: t.event_id.into_owned(),
        schema_version: t.schema_version,
        sku: t.sku.into_owned(),
        seller_id: t.seller_id.into_owned(),
        location_id: t.location_id.into_owned(),
        bucket,
        operation,
        to_bucket,
        quantity,
        event_time_ms,
    })
}

/// The field-by-field pass: every check in contract order, the first failure named.
pub(super) fn checked(key: Option<&[u8]>, value: &[u8]) -> Result<InventoryEvent, Invalid> {
    let raw: Raw<'_> = fields::object(value)?;
    let event_id = fields::id("event_id", raw.event_id)?;
    let schema_version = fields::schema_version(raw.schema_version, &[1, 2])?;
    let sku = fields::id("sku", raw.sku)?;
    let seller_id = fields::id("seller_id", raw.seller_id)?;
    let location_id = fields::id("location_id", raw.location_id)?;
    let bucket = Bucket::parse(
        "bucket",
        &fields::required::<Cow<'_, str>>("bucket", raw.bucket)?,
    )?;
    let op: Cow<'_, str> = fields::required("operation", raw.operation)?;
    let operation = Operation::parse(&op)?;
    let to_bucket = match fields::optional_str("to_bucket", raw.to_bucket)? {
        Some(b) => Some(Bucket::parse("to_bucket", &b)?),
        None => None,
    };
    let quantity: i64 = if schema_version == 1 {
        fields::absent("delta", raw.delta, 1)?;
        fields::absent("unit_of_measure", raw.unit_of_measure, 1)?;
        fields::required("quantity", raw.quantity)?
    } else {
        fields::absent("quantity", raw.quantity, 2)?;
        let delta: i64 = fields::required("delta", raw.delta)?;
        let uom: Cow<'_, str> = fields::required("unit_of_measure", raw.unit_of_measure)?;
        crate::upcast::units(delta, &uom)?
    };
    let event_time: Cow<'_, str> = fields::required("event_time", raw.event_time)?;
    let event_time_ms = crate::time::parse_event_time(&event_time)?;
    rules(operation, quantity, bucket, to_bucket)?;
    fields::key_matches(key, "sku", &sku)?;
    Ok(InventoryEvent {
        event_id: event_id.into_owned(),
        schema_version,
        sku: sku.into_owned(),
        seller_id: seller_id.into_owned(),
        location_id: location_id.into_owned(),
        bucket,
        operation,
        to_bucket,
        quantity,
        event_time_ms,
    })
}

/// The rules that tie the quantity and the buckets to the operation.
fn rules(
    operation: Operation,
    quantity: i64,
    bucket: Bucket,
    to_bucket: Option<Bucket>,
) -> Result<(), Invalid> {
    let range = |msg: &str| Err(Invalid::new(Reason::OutOfRange, msg.to_string()));
    match operation {
        Operation::Adjust if quantity == 0 => return range("adjust needs a non-zero quantity"),
        Operation::Set if quantity < 0 => return range("set needs a quantity >= 0"),
        Operation::Move if quantity <= 0 => return range("move needs a quantity > 0"),
        _ => {}
    }
    match (operation, to_bucket) {
        (Operation::Move, None) => {
            return Err(Invalid::new(
                Reason::MissingField,
                "field `to_bucket` is missing (required for move)",
            ))
        }
        (Operation::Move, Some(t)) if t == bucket => {
            return Err(Invalid::new(
                Reason::InvalidField,
                "move needs to_bucket different from bucket",
            ))
        }
        (Operation::Adjust | Operation::Set, Some(_)) => {
            return Err(Invalid::new(
                Reason::InvalidField,
                "to_bucket is only allowed for move",
            ))
        }
        _ => {}
    }
    Ok(())
}
