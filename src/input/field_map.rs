//! A flow's `map`: event fields taken from a header, from another field of the row or payload,
//! or set to a constant, so a table's columns become the events a projection already reads.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};
use tally_topology::{Invalid, Reason};

use crate::kafka::record::HeaderSource;

/// Where one event field comes from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum FieldSource {
    /// A record header's value, as a string (Debezium's outbox router puts the row id in `id`).
    Header(String),
    /// Another field of the row or payload, renamed (a column named otherwise).
    Field(String),
    /// A constant (a schema version, an operation the table implies).
    Value(Value),
}

/// The fields to set on each event, in order.
#[derive(Debug, Clone, Default)]
pub(super) struct FieldMap {
    entries: Vec<(String, FieldSource)>,
}

impl FieldMap {
    /// The map of a flow's config; the error names the entry that cannot work.
    pub(super) fn new(map: &BTreeMap<String, FieldSource>) -> Result<Self, String> {
        for (name, source) in map {
            let empty = match source {
                FieldSource::Header(h) => h.is_empty(),
                FieldSource::Field(f) => f.is_empty(),
                FieldSource::Value(_) => false,
            };
            if name.is_empty() || empty {
                return Err(format!("map entry `{name}` names an empty field or header"));
            }
        }
        Ok(Self {
            entries: map.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        })
    }

    /// Sets `field` from `source` unless the flow maps it itself.
    pub(super) fn default_to(&mut self, field: &str, source: FieldSource) {
        if !self.entries.iter().any(|(f, _)| f == field) {
            self.entries.push((field.to_string(), source));
        }
    }

    /// Sets every mapped field of `object`: every value is read before any is set, and a field
    /// taken from another one is renamed (the source field is not passed on: a projection may
    /// refuse a field its schema version does not have).
    pub(super) fn apply(
        &self,
        object: &mut Map<String, Value>,
        headers: &dyn HeaderSource,
    ) -> Result<(), Invalid> {
        let mut values = Vec::with_capacity(self.entries.len());
        for (name, source) in &self.entries {
            let v = match source {
                FieldSource::Header(h) => Value::String(header(headers, h)?),
                FieldSource::Field(f) => object.get(f).cloned().ok_or_else(|| {
                    Invalid::new(
                        Reason::MissingField,
                        format!("field `{f}` (mapped to `{name}`) is missing"),
                    )
                })?,
                FieldSource::Value(v) => v.clone(),
            };
            values.push(v);
        }
        for (_, source) in &self.entries {
            if let FieldSource::Field(f) = source {
                object.remove(f);
            }
        }
        for ((name, _), v) in self.entries.iter().zip(values) {
            object.insert(name.clone(), v);
        }
        Ok(())
    }
}

/// A header's value as text: the last one of that name, JSON quotes taken off.
fn header(headers: &dyn HeaderSource, name: &str) -> Result<String, Invalid> {
    let mut found: Option<Option<Vec<u8>>> = None;
    headers.each(&mut |k, v| {
        if k == name {
            found = Some(v.map(<[u8]>::to_vec));
        }
    });
    let missing = || Invalid::new(Reason::MissingField, format!("header `{name}` is missing"));
    let bytes = found.flatten().ok_or_else(missing)?;
    let text = String::from_utf8(bytes).map_err(|_| {
        Invalid::new(
            Reason::InvalidField,
            format!("header `{name}` is not UTF-8"),
        )
    })?;
    if text.len() >= 2 && text.starts_with('"') && text.ends_with('"') {
        if let Ok(Value::String(s)) = serde_json::from_str(&text) {
            return Ok(s);
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn map(entries: &[(&str, FieldSource)]) -> FieldMap {
        let m: BTreeMap<String, FieldSource> = entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        FieldMap::new(&m).unwrap()
    }

    #[test]
    fn fields_come_from_headers_columns_and_constants() {
        let m = map(&[
            ("event_id", FieldSource::Header("id".into())),
            ("location_id", FieldSource::Field("location".into())),
            ("schema_version", FieldSource::Value(json!(1))),
        ]);
        let mut row = json!({"location": "fc-1", "sku": "s"})
            .as_object()
            .unwrap()
            .clone();
        let headers: Vec<(&str, Option<&[u8]>)> = vec![("id", Some(b"\"e-1\""))];
        m.apply(&mut row, &headers).unwrap();
        assert_eq!(
            Value::Object(row),
            json!({"location_id": "fc-1", "sku": "s", "event_id": "e-1", "schema_version": 1})
        );
    }

    #[test]
    fn a_missing_header_or_column_is_named() {
        let m = map(&[("event_id", FieldSource::Header("id".into()))]);
        let err = m.apply(&mut Map::new(), &()).unwrap_err();
        assert_eq!(
            (err.reason, err.message.as_str()),
            (Reason::MissingField, "header `id` is missing")
        );
        let m = map(&[("quantity", FieldSource::Field("delta".into()))]);
        let err = m.apply(&mut Map::new(), &()).unwrap_err();
        assert!(err.message.contains("`delta`"), "{err}");
    }

    #[test]
    fn the_flows_own_entry_wins_over_a_default() {
        let mut m = map(&[("event_id", FieldSource::Field("uuid".into()))]);
        m.default_to("event_id", FieldSource::Header("id".into()));
        let mut row = json!({"uuid": "u-1"}).as_object().unwrap().clone();
        m.apply(&mut row, &()).unwrap();
        assert_eq!(row["event_id"], json!("u-1"));
    }
}
