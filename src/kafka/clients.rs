//! librdkafka client configurations for every role tally plays (processor, restorer, loader).
//! User `[kafka]` settings pass through as-is; configs are never logged (they may hold secrets).

use std::collections::BTreeMap;

use rdkafka::ClientConfig;

/// A base config: bootstrap servers plus the user's passthrough settings.
pub fn base(bootstrap: &str, passthrough: &BTreeMap<String, String>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    for (k, v) in passthrough {
        c.set(k, v);
    }
    c
}

/// The processor's group consumer: cooperative-sticky, read_committed, offsets committed by tally.
pub fn group_consumer(
    bootstrap: &str,
    passthrough: &BTreeMap<String, String>,
    group: &str,
) -> ClientConfig {
    let mut c = base(bootstrap, passthrough);
    c.set("group.id", group)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    set_default(&mut c, passthrough, "statistics.interval.ms", "5000");
    set_default(&mut c, passthrough, "session.timeout.ms", "10000");
    set_default(&mut c, passthrough, "heartbeat.interval.ms", "1000");
    set_default(&mut c, passthrough, "fetch.wait.max.ms", "50");
    c
}

/// A consumer that reads assigned partitions to their end and never joins a group.
pub fn reader(
    bootstrap: &str,
    passthrough: &BTreeMap<String, String>,
    group: &str,
) -> ClientConfig {
    let mut c = base(bootstrap, passthrough);
    c.set("group.id", group)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    set_default(&mut c, passthrough, "fetch.wait.max.ms", "10");
    set_default(&mut c, passthrough, "fetch.max.bytes", "16777216");
    set_default(&mut c, passthrough, "max.partition.fetch.bytes", "4194304");
    c
}

/// The processor's producer; transactional when `transactional_id` is given, else idempotent.
pub fn producer(
    bootstrap: &str,
    passthrough: &BTreeMap<String, String>,
    transactional_id: Option<&str>,
    transaction_timeout_ms: u64,
) -> ClientConfig {
    let mut c = base(bootstrap, passthrough);
    c.set("enable.idempotence", "true");
    if let Some(id) = transactional_id {
        c.set("transactional.id", id)
            .set("transaction.timeout.ms", transaction_timeout_ms.to_string());
    }
    set_default(&mut c, passthrough, "linger.ms", "5");
    set_default(&mut c, passthrough, "compression.type", "lz4");
    set_default(
        &mut c,
        passthrough,
        "queue.buffering.max.messages",
        "500000",
    );
    set_default(&mut c, passthrough, "queue.buffering.max.kbytes", "1048576");
    set_default(&mut c, passthrough, "batch.num.messages", "10000");
    c
}

fn set_default(c: &mut ClientConfig, passthrough: &BTreeMap<String, String>, k: &str, v: &str) {
    if !passthrough.contains_key(k) {
        c.set(k, v);
    }
}

/// Client context of readers: end-of-partition is expected there, not an error worth logging.
pub struct Quiet;

impl rdkafka::ClientContext for Quiet {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode};
        if matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::trace!(reason, "end of partition");
        } else {
            tracing::warn!(%error, reason, "kafka client error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for Quiet {}

/// A consumer built from [`reader`] with the [`Quiet`] context.
pub fn quiet_reader(
    bootstrap: &str,
    passthrough: &BTreeMap<String, String>,
    group: &str,
) -> rdkafka::error::KafkaResult<rdkafka::consumer::BaseConsumer<Quiet>> {
    reader(bootstrap, passthrough, group).create_with_context(Quiet)
}
