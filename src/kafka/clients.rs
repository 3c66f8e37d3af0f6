//! librdkafka client configurations for every role tally plays (processor, restorer, loader).
//! User `[kafka]` settings pass through as-is; configs are never logged (they may hold secrets).

use std::collections::BTreeMap;

use rdkafka::client::ClientContext;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::ClientConfig;

/// A base config: bootstrap servers plus the user's passthrough settings.
pub fn base(bootstrap: &str, passthrough: &BTreeMap<String, String>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    for (k, v) in passthrough {
        c.set(k, v);
    }
    // OpenSSL is built in, with its own default CA directory rather than the system's: TLS
    // without a CA named finds the system's certificates (ca-certificates) by librdkafka's probe.
    let tls = passthrough
        .get("security.protocol")
        .is_some_and(|p| p.to_ascii_lowercase().contains("ssl"));
    if tls
        && !passthrough.contains_key("ssl.ca.location")
        && !passthrough.contains_key("ssl.ca.pem")
    {
        c.set("ssl.ca.location", "probe");
    }
    c
}

/// Creates a client from `config`; a refused setting is named in the error, and its value shown
/// only when it is not a secret (librdkafka's message quotes the value).
pub fn create<T, C>(config: &ClientConfig, context: C) -> KafkaResult<T>
where
    T: FromClientConfigAndContext<C>,
    C: ClientContext,
{
    config.create_with_context(context).map_err(mask)
}

fn mask(e: KafkaError) -> KafkaError {
    match e {
        KafkaError::ClientConfig(res, desc, key, value) => {
            let value = if crate::config::is_secret_key(&key) {
                crate::redact::MASK.to_string()
            } else {
                value
            };
            KafkaError::ClientConfig(res, crate::redact::redact(&desc).into_owned(), key, value)
        }
        other => other,
    }
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
    // A fetch waits for 32 KiB or 5 ms: answered at the first byte, a partition fed one record
    // at a time comes back in many tiny responses that cost CPU per event.
    set_default(&mut c, passthrough, "fetch.min.bytes", "32768");
    set_default(&mut c, passthrough, "fetch.wait.max.ms", "5");
    // A few commits' worth of prefetched input keeps the poll loop busy; more only costs memory.
    // A record pins its whole fetch response, so small responses bound memory as the queue does.
    set_default(&mut c, passthrough, "queued.max.messages.kbytes", "1024");
    set_default(&mut c, passthrough, "max.partition.fetch.bytes", "262144");
    set_default(
        &mut c,
        passthrough,
        "fetch.queue.backoff.ms",
        FETCH_QUEUE_BACKOFF_MS,
    );
    c
}

/// How long librdkafka postpones a partition's next fetch once its prefetch queue is over the
/// limit: its default (1 s) leaves a processor idle for up to a second with a backlog waiting.
const FETCH_QUEUE_BACKOFF_MS: &str = "10";

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
    set_default(&mut c, passthrough, "fetch.max.bytes", "8388608");
    set_default(&mut c, passthrough, "max.partition.fetch.bytes", "4194304");
    // librdkafka prefetches up to 64 MiB per consumer by default; a processor runs a reader per
    // restoring partition, so that default alone would cost gigabytes during a full restore.
    set_default(&mut c, passthrough, "queued.max.messages.kbytes", "8192");
    set_default(
        &mut c,
        passthrough,
        "fetch.queue.backoff.ms",
        FETCH_QUEUE_BACKOFF_MS,
    );
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

/// A [`quiet_reader`] for one-off scans of whole partitions (the recovery tools): it may
/// prefetch 64 MiB, as one scan reads far more than a restore reader holds.
pub fn scan_reader(
    bootstrap: &str,
    passthrough: &BTreeMap<String, String>,
    group: &str,
) -> rdkafka::error::KafkaResult<rdkafka::consumer::BaseConsumer<Quiet>> {
    let mut c = reader(bootstrap, passthrough, group);
    set_default(&mut c, passthrough, "queued.max.messages.kbytes", "65536");
    create(&c, Quiet)
}

/// A consumer built from [`reader`] with the [`Quiet`] context.
pub fn quiet_reader(
    bootstrap: &str,
    passthrough: &BTreeMap<String, String>,
    group: &str,
) -> rdkafka::error::KafkaResult<rdkafka::consumer::BaseConsumer<Quiet>> {
    create(&reader(bootstrap, passthrough, group), Quiet)
}

/// Serves every delivery report that is ready, without waiting for more. rdkafka's `poll` with
/// a zero timeout handles a single event (one partition's batch of reports): called once per
/// poll-loop turn or flush step, reports piled up faster than they were served, and a flush under
/// load spent hundreds of milliseconds draining them.
pub fn serve_reports<C: rdkafka::producer::ProducerContext>(
    producer: &rdkafka::producer::BaseProducer<C>,
) {
    use rdkafka::producer::Producer;
    // Served reports leave the out-queue count; a turn that serves none (no event, or an error
    // event) ends the loop.
    let mut left = producer.in_flight_count();
    loop {
        producer.poll(std::time::Duration::ZERO);
        let now = producer.in_flight_count();
        if now >= left {
            return;
        }
        left = now;
    }
}

/// How long a producer waiting for acknowledgements sleeps between serving delivery reports.
pub const FLUSH_STEP: std::time::Duration = std::time::Duration::from_micros(200);

/// How often a flush that keeps waiting says so.
const SLOW_FLUSH: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits until every record `producer` holds is acknowledged and its delivery report served.
/// rdkafka's own `flush` serves reports in 100 ms steps, and its `poll(t)` spins on the clock
/// until `t` is over even after reports arrived (a fifth of the poll thread's CPU went there);
/// this serves what is ready, then sleeps a short step.
pub fn flush<C: rdkafka::producer::ProducerContext>(
    producer: &rdkafka::producer::BaseProducer<C>,
    timeout: std::time::Duration,
) -> rdkafka::error::KafkaResult<()> {
    use rdkafka::producer::Producer;
    let started = std::time::Instant::now();
    let deadline = started + timeout;
    let mut warned = started;
    loop {
        serve_reports(producer);
        let left = producer.in_flight_count();
        if left == 0 {
            return Ok(());
        }
        let now = std::time::Instant::now();
        if now - warned >= SLOW_FLUSH {
            warned = now;
            tracing::warn!(
                left,
                waited_ms = (now - started).as_millis() as u64,
                "still waiting for acknowledgements"
            );
        }
        if now >= deadline {
            return Err(rdkafka::error::KafkaError::Flush(
                rdkafka::error::RDKafkaErrorCode::MessageTimedOut,
            ));
        }
        std::thread::sleep(FLUSH_STEP);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_without_a_named_ca_probes_the_systems_and_the_client_accepts_it() {
        let settings = BTreeMap::from([("security.protocol".to_string(), "SSL".to_string())]);
        let c = base("127.0.0.1:1", &settings);
        assert_eq!(c.get("ssl.ca.location"), Some("probe"));
        let created: KafkaResult<rdkafka::consumer::BaseConsumer> =
            create(&c, rdkafka::consumer::DefaultConsumerContext);
        assert!(created.is_ok(), "{:?}", created.err());
    }

    #[test]
    fn a_named_ca_is_kept() {
        let settings = BTreeMap::from([
            ("security.protocol".to_string(), "SASL_SSL".to_string()),
            ("ssl.ca.location".to_string(), "/etc/ca.pem".to_string()),
        ]);
        assert_eq!(
            base("x:1", &settings).get("ssl.ca.location"),
            Some("/etc/ca.pem")
        );
    }
}
