//! How a flow reads its input topic: tally's own JSON as it is, or what Debezium writes (its
//! outbox router's records and its change events), unwrapped into the JSON a projection decodes.

mod cdc;
mod field_map;
mod json;
mod outbox;

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;
use tally_topology::{ChangePolicy, History, Invalid, Reason};

use field_map::FieldMap;
pub use field_map::FieldSource;

use crate::kafka::record::InputRecord;

/// What a flow's input records are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// The projection's own JSON, decoded as it is.
    #[default]
    Json,
    /// Debezium's outbox event router: key = aggregate id, value = the outbox row's payload, the
    /// row's id in the `id` header.
    DebeziumOutbox,
    /// Debezium's change events of a table: inserts and snapshot reads are events.
    DebeziumCdc,
}

impl Format {
    /// The name config files use.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::DebeziumOutbox => "debezium_outbox",
            Format::DebeziumCdc => "debezium_cdc",
        }
    }
}

/// Where the source committed a change, as Debezium reports it: kept for the
/// source-to-committed latency and for evidence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourcePosition {
    /// The database's commit time (epoch ms), or the record's timestamp when no envelope says.
    pub ts_ms: Option<i64>,
    /// PostgreSQL's log sequence number of the change.
    pub lsn: Option<i64>,
    /// The source transaction's id.
    pub tx_id: Option<i64>,
}

/// A record that carries no event and is not an error: counted, never dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// A Debezium heartbeat.
    Heartbeat,
    /// A record without a value: a compaction tombstone.
    Tombstone,
    /// A change the contract says to skip (`on_update` / `on_delete = "skip"`).
    Change,
}

impl Skip {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::Heartbeat => "heartbeat",
            Skip::Tombstone => "tombstone",
            Skip::Change => "change",
        }
    }
}

/// One input record, read: the event for the projection, a record to skip, or one to refuse.
#[derive(Debug)]
pub enum Read<'a> {
    Event {
        key: Option<Cow<'a, [u8]>>,
        value: Cow<'a, [u8]>,
        source: SourcePosition,
    },
    Skip(Skip),
    Refused(Invalid),
}

/// Why a record is not a Debezium record tally can read.
pub(crate) fn malformed(message: impl Into<String>) -> Invalid {
    Invalid::new(Reason::Custom("malformed_envelope"), message)
}

/// How one flow reads its input: the format, the fields it maps, and what the contract says to
/// do with updates and deletes of its table.
#[derive(Debug, Clone, Default)]
pub struct InputReader {
    format: Format,
    map: FieldMap,
    on_update: ChangePolicy,
    on_delete: ChangePolicy,
}

impl InputReader {
    /// The reader of a flow with `format` and `map` (event field -> where it comes from) under a
    /// contract's `history`; the error names what does not fit.
    pub fn new(
        format: Format,
        map: &BTreeMap<String, FieldSource>,
        history: &History,
    ) -> Result<Self, String> {
        if format == Format::Json && !map.is_empty() {
            return Err(
                "`map` applies only to the debezium_outbox and debezium_cdc formats".into(),
            );
        }
        let mut map = FieldMap::new(map)?;
        if format == Format::DebeziumOutbox {
            map.default_to("event_id", FieldSource::Header("id".into()));
        }
        Ok(Self {
            format,
            map,
            on_update: history.on_update,
            on_delete: history.on_delete,
        })
    }

    /// The format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Reads one record.
    pub fn read<'a>(&self, record: &InputRecord<'a>) -> Read<'a> {
        match self.format {
            Format::Json => match record.value {
                Some(value) => Read::Event {
                    key: record.key.map(Cow::Borrowed),
                    value: Cow::Borrowed(value),
                    source: SourcePosition::default(),
                },
                None => Read::Refused(Invalid::new(Reason::MalformedJson, "record has no value")),
            },
            Format::DebeziumOutbox => outbox::read(record, &self.map),
            Format::DebeziumCdc => cdc::read(record, &self.map, self.on_update, self.on_delete),
        }
    }
}
