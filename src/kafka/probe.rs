//! The first contact with the cluster: a wrong address, password, certificate or CA ends a start
//! within seconds with the cause and the address named, instead of a minute of silent retries.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
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

/// A client context that keeps the errors librdkafka reported, to say why a call timed out.
#[derive(Default)]
pub struct ClientErrors(Mutex<Vec<(RDKafkaErrorCode, String)>>);

/// Errors kept between two reads at most, the latest (the probe reads them every half second).
const KEPT: usize = 64;

impl ClientErrors {
    fn keep(&self, code: RDKafkaErrorCode, why: &str) {
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() >= KEPT {
            kept.remove(0);
        }
        kept.push((code, why.to_string()));
    }

    fn take(&self) -> Vec<(RDKafkaErrorCode, String)> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl ClientContext for ClientErrors {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        // A refused handshake is always logged but its error event is not always queued (a
        // start under load then ended as "unreachable" instead of naming the refusal).
        if let Some(code) = logged_refusal(level, message) {
            self.keep(code, message);
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail);
        tracing::debug!(%error, reason, "kafka client error while connecting");
        self.keep(code, reason);
    }
}

impl ConsumerContext for ClientErrors {}

/// The refusal an error-level librdkafka log line reports, if it reports one.
fn logged_refusal(level: RDKafkaLogLevel, message: &str) -> Option<RDKafkaErrorCode> {
    let error = matches!(
        level,
        RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
    );
    if !error {
        None
    } else if message.contains("SSL handshake failed")
        || message.contains("certificate verify failed")
    {
        Some(RDKafkaErrorCode::SSL)
    } else if message.contains("SASL authentication error") {
        Some(RDKafkaErrorCode::Authentication)
    } else {
        None
    }
}

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
/// callback or queues it as an event that `poll` returns, whichever path its queues take, and
/// logs it; all three are read, every pending event of one call, refusals last (they win).
fn served_errors(client: &BaseConsumer<ClientErrors>) -> Vec<(RDKafkaErrorCode, String)> {
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
    let client: BaseConsumer<ClientErrors> = super::clients::create(
        &super::clients::base(bootstrap, passthrough),
        ClientErrors::default(),
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

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case::unknown_ca(
        RDKafkaLogLevel::Error,
        "sasl_ssl://127.0.0.1:19192/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed",
        Some(RDKafkaErrorCode::SSL)
    )]
    #[case::short_form(
        RDKafkaLogLevel::Error,
        "sasl_ssl://127.0.0.1:19192/bootstrap: error:0A000086:SSL routines::certificate verify failed (after 3ms in state SSL_HANDSHAKE)",
        Some(RDKafkaErrorCode::SSL)
    )]
    #[case::wrong_password(
        RDKafkaLogLevel::Error,
        "sasl_ssl://127.0.0.1:19192/bootstrap: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512",
        Some(RDKafkaErrorCode::Authentication)
    )]
    #[case::nothing_listens(
        RDKafkaLogLevel::Error,
        "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused",
        None
    )]
    #[case::only_a_warning(RDKafkaLogLevel::Warning, "SSL handshake failed", None)]
    fn a_refusal_is_read_from_its_log_line(
        #[case] level: RDKafkaLogLevel,
        #[case] message: &str,
        #[case] refusal: Option<RDKafkaErrorCode>,
    ) {
        assert_eq!(logged_refusal(level, message), refusal);
    }
}
