//! tally's local state: one sled store per (flow, input partition) holding materialized state,
//! the dedupe index and the checkpoint, plus the changelog record format that backs it.
//!
//! No Kafka here. The changelog is the truth and a store is its cache: every value carries a
//! format version, and a store that cannot be read is wiped and restored by the runtime.

pub mod changelog;
pub mod checkpoint;
pub mod dedupe;
pub mod error;
mod expiry;
pub mod store;
mod writes;

pub use changelog::{ChangelogKey, RecordKind};
pub use checkpoint::{Checkpoint, CommitMetadata};
pub use dedupe::DedupeEntry;
pub use error::StateError;
pub use store::{CommitBatch, RestoreBatch, Store, StoreOptions, RESTORE_CHUNK};
