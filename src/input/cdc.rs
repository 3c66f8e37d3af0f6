//! Debezium's change events of a table: an insert (`c`) or a snapshot read (`r`) is an event,
//! its `after` row; an update or delete of an append-only history is refused or skipped as the
//! contract says; a heartbeat or tombstone is skipped.

use std::borrow::Cow;

use serde_json::{Map, Value};
use tally_topology::{ChangePolicy, Invalid, Reason};

use super::field_map::FieldMap;
use super::{json, malformed, Read, Skip, SourcePosition};
use crate::kafka::record::InputRecord;

/// Reads one change event.
pub(super) fn read<'a>(
    record: &InputRecord<'a>,
    map: &FieldMap,
    on_update: ChangePolicy,
    on_delete: ChangePolicy,
) -> Read<'a> {
    let Some(value) = record.value else {
        return Read::Skip(Skip::Tombstone);
    };
    let mut envelope = match json::object(value) {
        Ok(e) => e,
        Err(invalid) => return Read::Refused(invalid),
    };
    let Some(op) = envelope
        .get("op")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        // A heartbeat is `{"ts_ms": ..}` and nothing else.
        if envelope.len() == 1 && envelope.contains_key("ts_ms") {
            return Read::Skip(Skip::Heartbeat);
        }
        return Read::Refused(malformed("change event has no `op`"));
    };
    let source = position(&envelope, record.timestamp_ms);
    let policy = match op.as_str() {
        "c" | "r" => None,
        "u" => Some(("update", on_update)),
        "d" => Some(("delete", on_delete)),
        other => {
            return Read::Refused(unsupported(format!(
                "change `{other}` is not an insert, read, update or delete"
            )))
        }
    };
    if let Some((what, policy)) = policy {
        return match policy {
            ChangePolicy::Skip => Read::Skip(Skip::Change),
            ChangePolicy::DeadLetter => Read::Refused(unsupported(format!(
                "an {what} of an append-only history (the contract's on_{what} is dead_letter)"
            ))),
        };
    }
    let mut row = match envelope.remove("after") {
        Some(Value::Object(row)) => row,
        Some(other) => {
            return Read::Refused(malformed(format!(
                "`after` of an insert is {}",
                json::kind(&other)
            )))
        }
        None => return Read::Refused(malformed("insert has no `after` row")),
    };
    if let Err(invalid) = map.apply(&mut row, record.headers) {
        return Read::Refused(invalid);
    }
    Read::Event {
        key: record.key.map(json::key),
        value: Cow::Owned(Value::Object(row).to_string().into_bytes()),
        source,
    }
}

fn unsupported(message: String) -> Invalid {
    Invalid::new(Reason::Custom("unsupported_change"), message)
}

/// The envelope's `source` position; the record timestamp when it names no commit time.
fn position(envelope: &Map<String, Value>, record_ts: Option<i64>) -> SourcePosition {
    let source = envelope.get("source").and_then(Value::as_object);
    let field = |name: &str| source.and_then(|s| json::int(s, name));
    SourcePosition {
        ts_ms: field("ts_ms").or(record_ts),
        lsn: field("lsn"),
        tx_id: field("txId"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rstest::rstest;
    use serde_json::json;
    use tally_topology::History;

    use super::super::{FieldSource, Format, InputReader};
    use super::*;

    fn reader(on_update: ChangePolicy) -> InputReader {
        let map: BTreeMap<String, FieldSource> = [
            (
                "location_id".to_string(),
                FieldSource::Field("location".into()),
            ),
            ("schema_version".to_string(), FieldSource::Value(json!(1))),
        ]
        .into_iter()
        .collect();
        let mut history = History::kafka();
        history.on_update = on_update;
        InputReader::new(Format::DebeziumCdc, &map, &history).unwrap()
    }

    fn read(value: Option<&str>, on_update: ChangePolicy) -> Read<'static> {
        let value = value.map(|v| &*Box::leak(v.as_bytes().to_vec().into_boxed_slice()));
        let record = InputRecord {
            partition: 0,
            offset: 0,
            key: Some(br#"{"sku":"sku-1"}"#),
            value,
            timestamp_ms: Some(5),
            headers: &(),
        };
        reader(on_update).read(&record)
    }

    const ROW: &str = r#"{"event_id":"e-1","sku":"sku-1","location":"fc-1","delta":3}"#;

    fn envelope(op: &str) -> String {
        format!(
            r#"{{"before":null,"after":{ROW},"source":{{"ts_ms":1700000000123,"lsn":2400,"txId":771}},"op":"{op}","ts_ms":1700000000200}}"#
        )
    }

    #[rstest]
    #[case::insert("c")]
    #[case::snapshot_read("r")]
    fn an_insert_or_a_snapshot_read_is_its_after_row(#[case] op: &str) {
        let Read::Event { key, value, source } =
            read(Some(&envelope(op)), ChangePolicy::DeadLetter)
        else {
            panic!("not an event")
        };
        assert_eq!(key.unwrap().as_ref(), b"sku-1");
        let v: Value = serde_json::from_slice(&value).unwrap();
        assert_eq!(v["location_id"], json!("fc-1"));
        assert_eq!(v["schema_version"], json!(1));
        assert_eq!((&v["delta"], &v["location"]), (&json!(3), &Value::Null));
        assert_eq!(
            source,
            SourcePosition {
                ts_ms: Some(1_700_000_000_123),
                lsn: Some(2400),
                tx_id: Some(771)
            }
        );
    }

    /// The map of docs/postgres.md over a row as Debezium writes it: the inventory projection
    /// decodes the event (its schema version 1 refuses a `delta` field, so the rename matters).
    #[test]
    fn a_mapped_inventory_row_decodes_as_an_inventory_event() {
        use tally_topology::{Inventory, Projection};
        let map: BTreeMap<String, FieldSource> = [
            ("location_id", FieldSource::Field("location".into())),
            ("quantity", FieldSource::Field("delta".into())),
            ("operation", FieldSource::Value(json!("adjust"))),
            ("schema_version", FieldSource::Value(json!(1))),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let reader = InputReader::new(Format::DebeziumCdc, &map, &History::kafka()).unwrap();
        let value = br#"{"before":null,"after":{"event_id":"2cd538ed-0000-4000-8000-000000000001","sku":"sku-000098","seller_id":"seller-73","location":"fc-3","bucket":"sellable","delta":11,"event_time":"2026-01-01T00:00:01.000000Z","accepted_at":"2026-12-07T05:20:00.123456Z"},"source":{"ts_ms":1700000000123,"lsn":2400,"txId":771},"op":"c","ts_ms":1700000000200}"#;
        let record = InputRecord {
            partition: 0,
            offset: 0,
            key: Some(b"sku-000098"),
            value: Some(value),
            timestamp_ms: None,
            headers: &(),
        };
        let Read::Event { key, value, .. } = reader.read(&record) else {
            panic!("not an event")
        };
        let event = Inventory::decode(key.as_deref(), &value).unwrap();
        assert_eq!((event.location_id.as_str(), event.quantity), ("fc-3", 11));
        assert_eq!(event.event_time_ms, 1_767_225_601_000);
    }

    #[test]
    fn the_schema_wrapper_is_taken_off() {
        let wrapped = format!(
            r#"{{"schema":{{"type":"struct"}},"payload":{}}}"#,
            envelope("c")
        );
        assert!(matches!(
            read(Some(&wrapped), ChangePolicy::DeadLetter),
            Read::Event { .. }
        ));
    }

    #[rstest]
    #[case::update("u", ChangePolicy::DeadLetter, Some("unsupported_change"))]
    #[case::update_skipped("u", ChangePolicy::Skip, None)]
    #[case::delete("d", ChangePolicy::DeadLetter, Some("unsupported_change"))]
    #[case::truncate("t", ChangePolicy::Skip, Some("unsupported_change"))]
    fn changes_of_an_append_only_history_follow_the_contract(
        #[case] op: &str,
        #[case] on_update: ChangePolicy,
        #[case] refused: Option<&str>,
    ) {
        match (read(Some(&envelope(op)), on_update), refused) {
            (Read::Refused(invalid), Some(reason)) => assert_eq!(invalid.reason.as_str(), reason),
            (Read::Skip(Skip::Change), None) => {}
            (other, _) => panic!("{op}: {other:?}"),
        }
    }

    #[rstest]
    #[case::heartbeat(Some(r#"{"ts_ms":1700000000000}"#), Skip::Heartbeat)]
    #[case::tombstone(None, Skip::Tombstone)]
    fn a_heartbeat_or_a_tombstone_is_skipped(#[case] value: Option<&str>, #[case] skip: Skip) {
        assert!(matches!(read(value, ChangePolicy::DeadLetter), Read::Skip(s) if s == skip));
    }

    #[rstest]
    #[case::no_op(r#"{"after":{}}"#, "malformed_envelope")]
    #[case::no_after(r#"{"op":"c","after":null}"#, "malformed_envelope")]
    #[case::not_json("{", "malformed_json")]
    fn a_broken_envelope_is_refused_with_its_reason(#[case] value: &str, #[case] reason: &str) {
        let Read::Refused(invalid) = read(Some(value), ChangePolicy::DeadLetter) else {
            panic!("accepted {value}")
        };
        assert_eq!(invalid.reason.as_str(), reason);
    }
}
