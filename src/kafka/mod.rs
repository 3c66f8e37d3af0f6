//! Kafka plumbing shared by the processor and the tools: client configs and topic management.
//! Only this module and the engine talk to librdkafka.

pub mod clients;
pub mod errors;
pub mod limits;
pub mod probe;
pub mod progress;
pub mod record;
pub mod scan;
pub mod topics;
