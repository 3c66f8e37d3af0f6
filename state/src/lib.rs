//! tally's local state: one store per (flow, input partition) holding materialized state and the
//! checkpoint in sled and the dedupe index in its own log file (with only the records' places in
//! memory), plus the changelog record format that backs them.
//!
//! No Kafka here. The changelog is the truth and a store is its cache: every value carries a
//! format version, and a store that cannot be read is wiped and restored by the runtime.

pub mod batch;
pub mod bundle;
pub mod changelog;
pub mod checkpoint;
pub mod dedupe;
mod dedupe_index;
pub mod error;
mod expiry;
pub mod store;
mod writes;

pub use batch::{CommitBatch, RestoreBatch, RESTORE_CHUNK_BYTES, RESTORE_DEDUPE_BYTES};
pub use bundle::BundleBuilder;
pub use changelog::{ChangelogKey, RecordKind};
pub use checkpoint::{Checkpoint, CommitMetadata};
pub use dedupe::DedupeEntry;
pub use dedupe_index::DEDUPE_LOG_VERSION;
pub use error::StateError;
pub use store::{Store, StoreOptions};
