//! Sends a generated workload to Kafka: an idempotent, acks=all, lz4 producer that paces to a rate,
//! waits out a full queue, and fails the load if any record was not delivered.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext};

use super::{generate, LoadReport, LoadSpec};

/// Counts failed deliveries, keeping the first error for the message.
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
    first: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut first) = self.first.lock() {
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// The loader's config: the user's settings, then what idempotent loading needs on top.
fn config(bootstrap: &str, kafka: &BTreeMap<String, String>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    for (k, v) in kafka {
        c.set(k, v);
    }
    c.set("enable.idempotence", "true").set("acks", "all");
    for (k, v) in [
        ("linger.ms", "5"),
        ("compression.type", "lz4"),
        ("batch.num.messages", "10000"),
        ("queue.buffering.max.messages", "500000"),
        ("queue.buffering.max.kbytes", "1048576"),
    ] {
        if !kafka.contains_key(k) {
            c.set(k, v);
        }
    }
    c
}

/// Sends the spec's records to `topic` (keyed, so the broker's partitioner keeps a key on one
/// partition), paced to `spec.rate`, and reports what was sent once every record is acknowledged.
pub fn produce(
    bootstrap: &str,
    kafka: &BTreeMap<String, String>,
    topic: &str,
    spec: &LoadSpec,
) -> anyhow::Result<LoadReport> {
    let producer: BaseProducer<Deliveries> =
        crate::kafka::clients::create(&config(bootstrap, kafka), Deliveries::default())?;
    // Fail fast on a topic that is missing (inputs are never auto-created).
    let md = producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .map_err(|e| anyhow::anyhow!("metadata of `{topic}`: {e}"))?;
    if let Some(e) = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .and_then(|t| t.error())
    {
        anyhow::bail!("topic `{topic}`: {:?}", RDKafkaErrorCode::from(e));
    }
    let mut report = LoadReport {
        topic: topic.to_string(),
        seed: spec.seed,
        keys: spec.keys,
        ..LoadReport::default()
    };
    let started = Instant::now();
    for (n, g) in generate(spec).enumerate() {
        if spec.rate > 0 {
            let due = Duration::from_secs_f64(n as f64 / spec.rate as f64);
            while let Some(wait) = due.checked_sub(started.elapsed()) {
                if wait < Duration::from_micros(200) {
                    break;
                }
                // `poll(wait)` would spin on the clock for all of `wait` (see `clients::flush`),
                // taking a core from the processor under test.
                crate::kafka::clients::serve_reports(&producer);
                std::thread::sleep(wait.min(Duration::from_millis(5)));
            }
        }
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).payload(&g.value);
        if let Some(k) = &g.key {
            record = record.key(k);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(anyhow::anyhow!("producing to `{topic}`: {e}")),
            }
        }
        if n % 256 == 0 {
            crate::kafka::clients::serve_reports(&producer);
        }
        report.count(g.kind);
    }
    crate::kafka::clients::flush(&producer, Duration::from_secs(120))
        .map_err(|e| anyhow::anyhow!("flushing to `{topic}`: {e}"))?;
    let ctx = producer.context();
    let failed = ctx.failed.load(Ordering::Relaxed);
    if failed > 0 {
        let first = ctx.first.lock().ok().and_then(|f| f.clone());
        anyhow::bail!(
            "{failed} of {} records to `{topic}` were not delivered (first error: {})",
            report.records_sent,
            first.unwrap_or_default()
        );
    }
    let elapsed = started.elapsed();
    report.elapsed_ms = elapsed.as_millis() as u64;
    report.records_per_sec = report.records_sent as f64 / elapsed.as_secs_f64().max(1e-9);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_settings_pass_through_but_cannot_turn_off_idempotence() {
        let kafka = BTreeMap::from([
            ("linger.ms".to_string(), "50".to_string()),
            ("enable.idempotence".to_string(), "false".to_string()),
            ("acks".to_string(), "1".to_string()),
        ]);
        let c = config("127.0.0.1:1", &kafka);
        assert_eq!(c.get("linger.ms"), Some("50"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("compression.type"), Some("lz4"));
    }
}
