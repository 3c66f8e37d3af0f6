//! tally: exactly-once, provable projections of business events on Apache Kafka.
//!
//! The runtime: Kafka IO, tasks per partition, rebalance and restore, transactions, HTTP and the
//! tools (workload generator, independent oracle, demo). Pure logic lives in `tally-topology`,
//! local state in `tally-state`.

pub mod clock;
pub mod config;
pub mod engine;
pub mod health;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod oracle;
pub mod recovery;
pub mod redact;
pub mod secret;
pub mod signing;
pub mod workload;
