//! tally: exactly-once, provable projections of business events on Apache Kafka.
//!
//! A projection folds a stream of events, keyed by aggregate, into one state per key: stock
//! availability per SKU, a balance per account, usage per customer. tally runs it exactly once
//! on a Kafka consumer group (one Kafka transaction holds the changelog, the outputs, the dead
//! letters and the input offsets), keeps each partition's states in a local store backed by a
//! compacted changelog, absorbs redeliveries by event id, dead-letters what it cannot apply
//! with the reason, and can rebuild and check any key from history under the flow's recovery
//! contract, with an evidence record.
//!
//! # Writing a projection
//!
//! Implement [`Projection`] once: how a record decodes and validates into an event, its id,
//! aggregate key and time, the content fingerprint that tells a redelivery from a conflict,
//! `apply` (pure, checked arithmetic, an [`Invalid`] with a [`Reason`] for what it refuses), the
//! state's versioned encoding, the output record, the checks on one state, and the recovery
//! contract it runs under. Register it, and hand the registry to [`cli::main`]: the binary then
//! has every command (`run`, `replay`, `reconcile`, `state get --as-of`, `dlq replay`,
//! `contract show`), the HTTP queries, the metrics and the evidence, with nothing forked.
//!
//! ```no_run
//! use std::process::ExitCode;
//!
//! use serde::Deserialize;
//! use tally::{codec, wire, Guard, Invalid, Projection, Reason, Registry, SourceRef};
//!
//! /// Clicks per user: the smallest useful projection.
//! pub struct Clicks;
//!
//! #[derive(Debug, Clone, PartialEq)]
//! pub struct Click {
//!     id: String,
//!     user: String,
//!     time_ms: i64,
//! }
//!
//! #[derive(Debug, Clone, PartialEq, bincode::Encode, bincode::Decode)]
//! pub struct Count {
//!     user: String,
//!     clicks: i64,
//!     last_event_time_ms: i64,
//!     source: (i32, i64),
//! }
//!
//! /// The record as it arrives; the rules live in `decode`, once.
//! #[derive(Deserialize)]
//! struct Wire<'a> {
//!     event_id: &'a str,
//!     user_id: &'a str,
//!     event_time: &'a str,
//! }
//!
//! impl Projection for Clicks {
//!     type Event = Click;
//!     type State = Count;
//!     const NAME: &'static str = "clicks";
//!     const KEY_FIELD: &'static str = "user_id";
//!     const CONTRACT: &'static str = r#"
//! contract_version = 1
//! flow = "clicks"
//! [history]
//! kind = "kafka"
//! topics = ["{input}"]
//! [ordering]
//! key = "user_id"
//! scope = "partition"
//! [idempotency]
//! key = "event_id"
//! duplicate_policy = "first_wins_conflict_dead_lettered"
//! [projection]
//! name = "clicks"
//! version = 1
//! schema_versions = [1]
//! [replay]
//! scopes = ["key", "time", "partition"]
//! late_tolerance = "5m"
//! [reconciliation]
//! checks = ["state_matches_history", "output_matches_state", "clicks_non_negative"]
//! [evidence]
//! topic = "{application_id}-evidence"
//! format = "json"
//! "#;
//!     const STATE_VERSION: u8 = 1;
//!     const SCHEMA_VERSIONS: &'static [u32] = &[1];
//!     const INVARIANTS: &'static [&'static str] = &["clicks_non_negative"];
//!
//!     fn decode(key: Option<&[u8]>, value: &[u8]) -> Result<Click, Invalid> {
//!         let w: Wire<'_> = wire::decode_json(value)?;
//!         wire::id("event_id", w.event_id)?;
//!         wire::id("user_id", w.user_id)?;
//!         wire::key_matches(key, "user_id", w.user_id)?;
//!         let time_ms = tally::time::parse_event_time(w.event_time)?;
//!         Ok(Click { id: w.event_id.into(), user: w.user_id.into(), time_ms })
//!     }
//!     fn event_id(e: &Click) -> &str { &e.id }
//!     fn aggregate_key(e: &Click) -> &str { &e.user }
//!     fn event_time_ms(e: &Click) -> i64 { e.time_ms }
//!     fn fingerprint(e: &Click) -> u64 {
//!         codec::Fingerprint::new("clicks").str(&e.id).str(&e.user).int(e.time_ms).finish()
//!     }
//!     fn schema_version(_: &Click) -> u32 { 1 }
//!     fn initial(e: &Click, source: SourceRef) -> Count {
//!         Count { user: e.user.clone(), clicks: 0, last_event_time_ms: 0, source: (source.partition, source.offset) }
//!     }
//!     fn apply_in_place(s: &mut Count, e: &Click, source: SourceRef, _: &Guard) -> Result<(), Invalid> {
//!         s.clicks = s.clicks.checked_add(1).ok_or_else(|| Invalid::overflow("clicks"))?;
//!         s.last_event_time_ms = e.time_ms;
//!         s.source = (source.partition, source.offset);
//!         Ok(())
//!     }
//!     fn render(s: &Count, out: &mut Vec<u8>) -> Result<(), Invalid> {
//!         out.clear();
//!         serde_json::to_writer(&mut *out, &serde_json::json!({"user_id": s.user, "clicks": s.clicks}))
//!             .map_err(|e| Invalid::new(Reason::Custom("unrenderable"), e.to_string()))
//!     }
//!     fn encode_state(s: &Count, out: &mut Vec<u8>) { codec::encode(Self::STATE_VERSION, s, out) }
//!     fn decode_state(bytes: &[u8]) -> Result<Count, tally::StateDecodeError> {
//!         codec::decode("clicks", Self::STATE_VERSION, bytes)
//!     }
//!     fn state_key(s: &Count) -> &str { &s.user }
//!     fn source(s: &Count) -> SourceRef { SourceRef { partition: s.source.0, offset: s.source.1 } }
//!     fn last_event_time_ms(s: &Count) -> i64 { s.last_event_time_ms }
//!     fn invariant(name: &str, s: &Count, _: &Guard) -> Result<(), String> {
//!         match name {
//!             "clicks_non_negative" if s.clicks < 0 => Err(format!("clicks is {}", s.clicks)),
//!             _ => Ok(()),
//!         }
//!     }
//! }
//!
//! fn main() -> ExitCode {
//!     // A flow in tally.toml runs it with `projection = "clicks"`.
//!     tally::cli::main(Registry::builtin().register::<Clicks>())
//! }
//! ```
//!
//! `examples/metering/` is a complete crate of this kind (usage-based billing), with its own
//! integration test on a real broker; `docs/projections.md` is the guide.
//!
//! # Layout
//!
//! The runtime lives here: [`engine`] (tasks per partition, the task manager, the commit
//! protocol, rebalance and restore), [`processor`] (a whole processor in one call), Kafka IO,
//! config and HTTP. So do the tools, behind the `tools` feature (on by default): [`cli`],
//! [`recovery`], the workload generator and the independent oracle of the built-ins. The runtime
//! imports no tool; [`registry`] joins them. Pure logic lives in `tally-topology`, local state
//! in `tally-state`.

#[cfg(feature = "tools")]
pub mod cli;
pub mod clock;
pub mod config;
pub mod engine;
pub mod group;
pub mod health;
pub mod http;
pub mod input;
pub mod kafka;
pub mod metrics;
#[cfg(feature = "tools")]
pub mod oracle;
pub mod processor;
#[cfg(feature = "tools")]
pub mod recovery;
pub mod redact;
pub mod registry;
pub mod secret;
pub mod signing;
#[cfg(feature = "tools")]
pub mod source_db;
#[cfg(feature = "tools")]
pub mod workload;

pub use registry::Registry;
pub use tally_topology::{
    codec, time, wire, Contract, ContractSpec, Guard, Invalid, Projection, Reason, SmallMap,
    SourceRef, StateDecodeError,
};
