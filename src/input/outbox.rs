//! Records of Debezium's outbox event router: the key is the aggregate id, the value the outbox
//! row's payload (expanded JSON or a JSON string), the row's id in a header.

use std::borrow::Cow;

use super::field_map::FieldMap;
use super::{json, Read, Skip, SourcePosition};
use crate::kafka::record::InputRecord;

/// Reads one outbox record: its payload with the mapped fields set (the event id from the `id`
/// header unless the flow maps it elsewhere).
pub(super) fn read<'a>(record: &InputRecord<'a>, map: &FieldMap) -> Read<'a> {
    let Some(value) = record.value else {
        return Read::Skip(Skip::Tombstone);
    };
    let mut payload = match json::object(value) {
        Ok(p) => p,
        Err(invalid) => return Read::Refused(invalid),
    };
    if let Err(invalid) = map.apply(&mut payload, record.headers) {
        return Read::Refused(invalid);
    }
    Read::Event {
        key: record.key.map(json::key),
        value: Cow::Owned(serde_json::Value::Object(payload).to_string().into_bytes()),
        // The router stamps its record with the change's time; there is no envelope to ask.
        source: SourcePosition {
            ts_ms: record.timestamp_ms,
            ..SourcePosition::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::{json, Value};
    use tally_topology::History;

    use super::super::{Format, InputReader};
    use super::*;

    fn reader() -> InputReader {
        InputReader::new(Format::DebeziumOutbox, &BTreeMap::new(), &History::kafka()).unwrap()
    }

    fn event(read: Read<'_>) -> (Vec<u8>, Value, SourcePosition) {
        match read {
            Read::Event { key, value, source } => (
                key.unwrap().into_owned(),
                serde_json::from_slice(&value).unwrap(),
                source,
            ),
            other => panic!("not an event: {other:?}"),
        }
    }

    #[test]
    fn the_payload_is_the_event_and_the_id_header_its_id() {
        let headers: Vec<(&str, Option<&[u8]>)> =
            vec![("id", Some(b"6c1e7b1a-0000-4000-8000-000000000001"))];
        let record = InputRecord {
            partition: 0,
            offset: 3,
            key: Some(b"sku-1"),
            value: Some(br#"{"sku":"sku-1","quantity":2}"#),
            timestamp_ms: Some(1_700_000_000_000),
            headers: &headers,
        };
        let (key, value, source) = event(reader().read(&record));
        assert_eq!(key, b"sku-1");
        assert_eq!(
            value,
            json!({"sku": "sku-1", "quantity": 2, "event_id": "6c1e7b1a-0000-4000-8000-000000000001"})
        );
        assert_eq!(source.ts_ms, Some(1_700_000_000_000));
    }

    #[test]
    fn a_payload_held_in_a_json_string_reads_the_same() {
        let headers: Vec<(&str, Option<&[u8]>)> = vec![("id", Some(b"e-1"))];
        let record = InputRecord {
            partition: 0,
            offset: 0,
            key: Some(br#""sku-1""#),
            value: Some(br#""{\"sku\":\"sku-1\"}""#),
            timestamp_ms: None,
            headers: &headers,
        };
        let (key, value, _) = event(reader().read(&record));
        assert_eq!(
            (key.as_slice(), value),
            (
                b"sku-1".as_slice(),
                json!({"sku": "sku-1", "event_id": "e-1"})
            )
        );
    }

    #[test]
    fn a_tombstone_is_skipped_and_a_record_without_its_id_refused() {
        let mut record = InputRecord {
            partition: 0,
            offset: 0,
            key: Some(b"sku-1"),
            value: None,
            timestamp_ms: None,
            headers: &(),
        };
        assert!(matches!(
            reader().read(&record),
            Read::Skip(Skip::Tombstone)
        ));
        record.value = Some(b"{}");
        match reader().read(&record) {
            Read::Refused(invalid) => assert_eq!(invalid.message, "header `id` is missing"),
            other => panic!("{other:?}"),
        }
    }
}
