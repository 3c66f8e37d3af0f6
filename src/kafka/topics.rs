//! Creates the topics a flow needs and refuses to start on ones that do not fit.
//! Changelog, output and dead-letter topics share the input's partition count.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, DefaultConsumerContext};
use rdkafka::error::RDKafkaErrorCode;

/// Why topics could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Unavailable(#[from] super::probe::ProbeError),
    #[error("not authorized to describe topic `{0}`: the principal needs DESCRIBE (and READ or WRITE) ACLs on it")]
    NotAuthorized(String),
    #[error(
        "input topic `{0}` does not exist (create it first, with the partition count you want)"
    )]
    MissingInput(String),
    #[error("topic `{topic}` has {found} partitions but its input `{input}` has {expected}; co-partitioned topics must agree")]
    PartitionMismatch {
        topic: String,
        input: String,
        expected: i32,
        found: i32,
    },
    #[error("changelog topic `{0}` is not compacted (cleanup.policy must include compact)")]
    NotCompacted(String),
    #[error("describing topic `{topic}` failed: {message}")]
    Describe { topic: String, message: String },
    #[error("creating topic `{topic}` failed: {message}")]
    Create { topic: String, message: String },
}

/// How long a topic's description may disagree with its creation before tally believes it.
const DESCRIBE_SETTLE: Duration = Duration::from_secs(5);

/// How a topic tally creates is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicRole {
    /// Compacted: the latest value per key is the truth (changelog, materialized output).
    Compacted,
    /// Delete policy (dead letters).
    Log,
}

/// Admin helper bound to one cluster.
pub struct Topics {
    admin: AdminClient<DefaultClientContext>,
    meta: BaseConsumer,
    timeout: Duration,
}

impl Topics {
    /// Connects an admin client and a metadata client, once the cluster answered (see
    /// [`super::probe`]).
    pub fn connect(
        bootstrap: &str,
        passthrough: &BTreeMap<String, String>,
    ) -> Result<Self, TopicError> {
        super::probe::check(bootstrap, passthrough, super::probe::START_LIMIT)?;
        let cfg = super::clients::base(bootstrap, passthrough);
        Ok(Self {
            admin: super::clients::create(&cfg, DefaultClientContext)?,
            meta: super::clients::create(&cfg, DefaultConsumerContext)?,
            timeout: Duration::from_secs(30),
        })
    }

    /// Partition count of a topic, or None when it does not exist.
    pub fn partitions(&self, topic: &str) -> Result<Option<i32>, TopicError> {
        let md = self.meta.fetch_metadata(Some(topic), self.timeout)?;
        let Some(t) = md.topics().first() else {
            return Ok(None);
        };
        match t.error().map(RDKafkaErrorCode::from) {
            Some(RDKafkaErrorCode::TopicAuthorizationFailed) => {
                Err(TopicError::NotAuthorized(topic.to_string()))
            }
            Some(_) => Ok(None),
            None if t.partitions().is_empty() => Ok(None),
            None => Ok(Some(t.partitions().len() as i32)),
        }
    }

    /// Creates `topic` when missing (idempotent; tolerates a concurrent creator).
    pub fn create(
        &self,
        topic: &str,
        partitions: i32,
        replication: i32,
        role: TopicRole,
    ) -> Result<(), TopicError> {
        let policy = match role {
            TopicRole::Compacted => "compact",
            TopicRole::Log => "delete",
        };
        let mut nt = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication))
            .set("cleanup.policy", policy);
        if role == TopicRole::Compacted {
            nt = nt
                .set("min.cleanable.dirty.ratio", "0.1")
                .set("segment.ms", "600000");
        }
        let opts = AdminOptions::new().operation_timeout(Some(self.timeout));
        let res = block_on(self.admin.create_topics([&nt], &opts))?;
        for r in res {
            match r {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => {
                    return Err(TopicError::Create {
                        topic: t,
                        message: code.to_string(),
                    })
                }
            }
        }
        // Metadata of a new topic propagates asynchronously.
        for _ in 0..100 {
            if self.partitions(topic)?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Makes sure `topic` exists with `expected` partitions (creating it if missing).
    pub fn ensure_copartitioned(
        &self,
        input: &str,
        topic: &str,
        expected: i32,
        replication: i32,
        role: TopicRole,
    ) -> Result<(), TopicError> {
        match self.partitions(topic)? {
            None => self.create(topic, expected, replication, role)?,
            Some(found) if found != expected => {
                return Err(TopicError::PartitionMismatch {
                    topic: topic.into(),
                    input: input.into(),
                    expected,
                    found,
                })
            }
            Some(_) => {}
        }
        if role == TopicRole::Compacted {
            // A topic another instance has just created is not yet described alike by every
            // broker of a cluster (seen as a false "not compacted" on 3 brokers): ask again.
            let deadline = std::time::Instant::now() + DESCRIBE_SETTLE;
            loop {
                let last_chance = std::time::Instant::now() >= deadline;
                match self.is_compacted(topic) {
                    Ok(true) => break,
                    Ok(false) if last_chance => return Err(TopicError::NotCompacted(topic.into())),
                    Err(e) if last_chance => return Err(e),
                    Ok(false) | Err(TopicError::Describe { .. }) => {
                        std::thread::sleep(Duration::from_millis(250))
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Whether the topic's cleanup.policy includes compact.
    pub fn is_compacted(&self, topic: &str) -> Result<bool, TopicError> {
        Ok(self
            .config_value(topic, "cleanup.policy")?
            .is_some_and(|v| v.split(',').any(|p| p.trim() == "compact")))
    }

    /// The largest record batch the topic accepts (`max.message.bytes`).
    pub fn max_message_bytes(&self, topic: &str) -> Result<Option<usize>, TopicError> {
        Ok(self
            .config_value(topic, "max.message.bytes")?
            .and_then(|v| v.trim().parse().ok()))
    }

    /// One setting of a topic's configuration, as the cluster describes it.
    fn config_value(&self, topic: &str, name: &str) -> Result<Option<String>, TopicError> {
        let opts = AdminOptions::new().request_timeout(Some(self.timeout));
        let res = block_on(
            self.admin
                .describe_configs([&ResourceSpecifier::Topic(topic)], &opts),
        )?;
        for r in res {
            let resource = r.map_err(|code| TopicError::Describe {
                topic: topic.into(),
                message: code.to_string(),
            })?;
            if let Some(entry) = resource.get(name) {
                return Ok(entry.value.clone());
            }
        }
        Ok(None)
    }
}

/// Runs an admin future to completion on the current thread (admin calls are rare).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread tokio runtime always builds")
        .block_on(f)
}
