//! tally's pure core: event contracts, their validation, and the deterministic projections that
//! fold events into materialized state.
//!
//! No IO, no clocks, no randomness: the same events in give byte-identical state out. Money and
//! quantities are i64 and overflow is an error, never a wrap.

pub mod contract;
pub mod error;
pub mod inventory;
pub mod ledger;
pub mod partitioner;
pub mod projection;
pub mod small_map;
pub mod time;
pub mod upcast;
pub mod wire;

#[cfg(test)]
mod cases;
pub mod codec;
mod fields;
mod json;

pub use contract::{ChangePolicy, Contract, ContractError, ContractSpec, History};
pub use error::{Invalid, Reason};
pub use inventory::{Availability, Bucket, Buckets, Inventory, InventoryEvent, Operation};
pub use json::rendered_source;
pub use ledger::{Amounts, Balance, EntryType, Ledger, LedgerEvent};
pub use partitioner::Partitioner;
pub use projection::{Guard, Projection, SourceRef, StateDecodeError};
pub use small_map::SmallMap;
