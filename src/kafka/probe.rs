//! The first contact with the cluster: a wrong address, password, certificate or CA ends a start
//! within seconds with the cause and the address named, instead of a minute of silent retries.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientContext;

/// How long the cluster may stay unreachable at start before tally gives up.
pub const START_LIMIT: Duration = Duration::from_secs(15);

/// Why the cluster could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Credentials or certificates were refused: retrying cannot help.
    #[error("Kafka at {bootstrap} refused this client: {cause}")]
    Refused { bootstrap: String, cause: String },
    /// Nothing answered within the limit.
    #[error("cannot reach Kafka at {bootstrap} within {waited_s} s: {cause}")]
    Unreachable {
        bootstrap: String,
        waited_s: u64,
        cause: String,
    },
    #[error("kafka: {0}")]
    Client(#[from] KafkaError),
}

/// A client context that keeps the last error librdkafka reported, to say why a call timed out.
#[derive(Default)]
pub struct LastError(Mutex<Option<(RDKafkaErrorCode, String)>>);

impl LastError {
    fn take(&self) -> Option<(RDKafkaErrorCode, String)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl ClientContext for LastError {
    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail);
        tracing::debug!(%error, reason, "kafka client error while connecting");
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((code, reason.to_string()));
    }
}

impl ConsumerContext for LastError {}

/// Whether an error says the cluster refused this client (no retry helps).
fn refused(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::SSL
            | RDKafkaErrorCode::UnsupportedSASLMechanism
            | RDKafkaErrorCode::IllegalSASLState
            | RDKafkaErrorCode::ClusterAuthorizationFailed
    )
}

/// The errors of the client's pending events: librdkafka hands a connection error to the error
/// callback (the context) or queues it as an event that `poll` returns, whichever path its
/// queues take; both are read, every pending event of one call, refusals first.
fn served_errors(client: &BaseConsumer<LastError>) -> Vec<(RDKafkaErrorCode, String)> {
    let mut seen = Vec::new();
    for _ in 0..1000 {
        match client.poll(Duration::ZERO) {
            Some(Err(e)) => {
                let code = e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail);
                seen.push((code, e.to_string()));
            }
            Some(Ok(_)) => {}
            None => break,
        }
    }
    seen.extend(client.context().take());
    // A refusal is the cause; later transport errors are its consequence.
    seen.sort_by_key(|(code, _)| refused(*code));
    seen
}

/// Asks the cluster for its metadata until it answers, it refuses this client, or `limit` passed.
pub fn check(
    bootstrap: &str,
    passthrough: &BTreeMap<String, String>,
    limit: Duration,
) -> Result<(), ProbeError> {
    let client: BaseConsumer<LastError> = super::clients::create(
        &super::clients::base(bootstrap, passthrough),
        LastError::default(),
    )?;
    let started = Instant::now();
    let mut last = None;
    loop {
        let step = Duration::from_millis(500);
        let answered = client.fetch_metadata(None, step);
        for seen in served_errors(&client) {
            // "all brokers are down" says less than the connection error that caused it.
            if seen.0 != RDKafkaErrorCode::AllBrokersDown || last.is_none() {
                last = Some(seen);
            }
        }
        match (&answered, &last) {
            (Ok(_), _) => return Ok(()),
            (Err(_), Some((code, why))) if refused(*code) => {
                return Err(ProbeError::Refused {
                    bootstrap: bootstrap.to_string(),
                    cause: why.clone(),
                })
            }
            (Err(e), _) if refused(e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail)) => {
                return Err(ProbeError::Refused {
                    bootstrap: bootstrap.to_string(),
                    cause: e.to_string(),
                })
            }
            (Err(e), _) if started.elapsed() >= limit => {
                let cause = last.map_or_else(|| e.to_string(), |(_, why)| why);
                return Err(ProbeError::Unreachable {
                    bootstrap: bootstrap.to_string(),
                    waited_s: limit.as_secs(),
                    cause,
                });
            }
            (Err(_), _) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}
