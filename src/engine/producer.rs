//! The processor's producer and its transaction: it opens, aborts and replaces them, and sorts a
//! failed produce or commit into "roll back and go on" or "stop, naming the cause" (a missing
//! ACL, a record no topic takes), as Kafka Streams' `StreamsProducer` does.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::Producer as _;

use super::sink::{DeliveredOffsets, Sink};
use crate::config::{Config, ProcessingGuarantee};
use crate::health::Health;
use crate::kafka::clients;

/// What a failed produce or commit calls for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Failure {
    /// Roll everything back to the committed offsets and go on.
    RollBack,
    /// Stop: no retry fixes it; the string says why.
    Fatal(String),
}

/// The producer of every flow, with its open transaction (exactly_once) or none.
pub(super) struct TxnProducer {
    sink: Sink,
    cfg: Arc<Config>,
    delivered: Arc<DeliveredOffsets>,
    /// Whether records were shipped into a transaction that is not committed yet.
    open: bool,
    /// The producer's delivery failures when the last commit or rollback ended: the records of
    /// the next commit fail it by adding to them.
    failures_before: u64,
}

impl TxnProducer {
    /// Creates the producer (a transactional one is initialised, fencing older incarnations).
    pub(super) fn start(
        cfg: &Arc<Config>,
        delivered: &Arc<DeliveredOffsets>,
    ) -> Result<Self, KafkaError> {
        Ok(Self {
            sink: create(cfg, delivered)?,
            cfg: Arc::clone(cfg),
            delivered: Arc::clone(delivered),
            open: false,
            failures_before: 0,
        })
    }

    /// The producer records are sent through.
    pub(super) fn sink(&self) -> &Sink {
        &self.sink
    }

    /// Delivery failures before the records of the running commit.
    pub(super) fn failures_before(&self) -> u64 {
        self.failures_before
    }

    /// Opens the transaction of the next commit unless one is open (exactly_once only).
    pub(super) fn begin(&mut self) -> Result<(), KafkaError> {
        if self.sink.is_transactional() && !self.open {
            self.sink.producer().begin_transaction()?;
            self.open = true;
        }
        Ok(())
    }

    /// The running commit ended (committed, failed or abandoned): nothing is open any more.
    pub(super) fn ended(&mut self) {
        self.open = false;
    }

    /// A commit succeeded: later delivery failures belong to the next one.
    pub(super) fn committed(&mut self) {
        self.failures_before = self.sink.failures();
    }

    /// Aborts the open transaction, if any; a producer that cannot abort is replaced, which
    /// fences and aborts it as well.
    pub(super) fn abort_open(&mut self, health: &Health) {
        if !self.open {
            return;
        }
        self.open = false;
        if let Err(e) = self.sink.abort() {
            tracing::warn!(error = %e, "cannot abort the open transaction; re-creating the producer");
            self.recreate(health);
        }
        self.failures_before = self.sink.failures();
    }

    /// What `cause` (or a delivery failure the producer saw) calls for.
    pub(super) fn classify(&self, cause: &KafkaError) -> Failure {
        crate::kafka::errors::fatal(cause)
            .map(|why| format!("{why}: {cause}"))
            .or_else(|| self.sink.fatal())
            .map_or(Failure::RollBack, Failure::Fatal)
    }

    /// After a failed commit: aborts the transaction when Kafka says it can be, else replaces
    /// the producer (which fences the old one and aborts its transaction).
    pub(super) fn roll_back(&mut self, cause: &KafkaError, health: &Health) {
        self.open = false;
        let abortable = self.sink.is_transactional()
            && matches!(cause, KafkaError::Transaction(e) if e.txn_requires_abort());
        if !(abortable && self.sink.abort().is_ok()) {
            self.recreate(health);
        }
        self.failures_before = self.sink.failures();
    }

    /// Replaces the producer, retrying until the cluster gives a new one.
    fn recreate(&mut self, health: &Health) {
        loop {
            match create(&self.cfg, &self.delivered) {
                Ok(s) => {
                    self.sink = s;
                    self.open = false;
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot re-create the producer; retrying");
                    health.broker_reachable(false);
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }
}

/// The `transactional.id` of an exactly_once processor: one per instance.
fn transactional_id(cfg: &Config) -> Option<String> {
    (cfg.processing_guarantee == ProcessingGuarantee::ExactlyOnce)
        .then(|| transactional_id_of(&cfg.application_id, &cfg.instance()))
}

/// The `transactional.id` instance `instance` of application `application_id` commits with.
pub(super) fn transactional_id_of(application_id: &str, instance: &str) -> String {
    format!("{application_id}-{instance}")
}

fn create(cfg: &Config, delivered: &Arc<DeliveredOffsets>) -> Result<Sink, KafkaError> {
    let tid = transactional_id(cfg);
    let pc = clients::producer(
        &cfg.bootstrap_servers,
        &cfg.kafka,
        tid.as_deref(),
        cfg.transaction_timeout_ms,
    );
    Sink::create(&pc, Arc::clone(delivered), Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use rdkafka::error::RDKafkaErrorCode;
    use rstest::rstest;

    use super::*;

    /// An idempotent producer (at_least_once): created without a broker.
    fn producer() -> TxnProducer {
        let cfg = Config::from_toml(
            r#"application_id = "p"
bootstrap_servers = "127.0.0.1:1"
processing_guarantee = "at_least_once"
[[flows]]
name = "inventory"
input = "i"
output = "o"
dead_letter = "d"
"#,
            |_| None,
            &crate::Registry::builtin(),
        )
        .unwrap();
        TxnProducer::start(&Arc::new(cfg), &Arc::new(DeliveredOffsets::default())).unwrap()
    }

    #[rstest]
    #[case::missing_acl(RDKafkaErrorCode::TopicAuthorizationFailed, true)]
    #[case::too_large(RDKafkaErrorCode::MessageSizeTooLarge, true)]
    #[case::queue_full(RDKafkaErrorCode::QueueFull, false)]
    #[case::leader_moved(RDKafkaErrorCode::NotLeaderForPartition, false)]
    fn a_failure_is_fatal_only_when_no_retry_fixes_it(
        #[case] code: RDKafkaErrorCode,
        #[case] fatal: bool,
    ) {
        let got = producer().classify(&KafkaError::MessageProduction(code));
        assert_eq!(matches!(got, Failure::Fatal(_)), fatal, "{got:?}");
    }

    #[test]
    fn without_a_transaction_nothing_opens() {
        let mut p = producer();
        p.begin().unwrap();
        assert!(!p.open);
    }
}
