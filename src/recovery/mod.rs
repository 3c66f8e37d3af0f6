//! Recovery tools built on each flow's recovery contract: scoped replay into a shadow store with
//! evidence, reconciliation checks, repairs through the owning task, and time travel per key.

pub mod dlq;
pub mod evidence;
pub mod live;
pub mod plan;
pub mod progress;
pub mod recoverable;
pub mod repair;
pub mod replay;
pub mod scope;
pub mod shadow;
pub mod source;
pub mod travel;

use rdkafka::error::KafkaError;

/// Why a recovery tool could not produce its evidence.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Scan(#[from] crate::kafka::scan::ScanError),
    #[error(transparent)]
    Topics(#[from] crate::kafka::topics::TopicError),
    #[error("scope: {0}")]
    Scope(String),
    #[error("cannot reach the owner: {0}")]
    NoOwner(String),
    #[error("source database: {0}")]
    Source(String),
}
