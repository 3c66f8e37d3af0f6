//! The processor's typed configuration: one TOML file, every key overridable by `TALLY_<KEY>`.
//! Parsed and validated once at start; a bad value fails the start with the key named.

mod env;
mod kafka;
mod sections;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tally_topology::Contract;

use crate::input::{FieldSource, Format, InputReader};

pub use kafka::{is_secret_key, KafkaSettings};
pub use sections::{
    resolve_listen, ControlConfig, ControlKey, HealthConfig, HttpConfig, HttpTls, SourceConfig,
    MIN_CONTROL_KEY_LEN,
};

/// Why a configuration was refused; always names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config: {0}")]
    Parse(String),
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// Delivery guarantee of a processor, named as in Kafka Streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessingGuarantee {
    /// One Kafka transaction per commit holds changelog, outputs, dead letters and offsets.
    #[default]
    ExactlyOnce,
    /// Produce, flush, then commit offsets; the dedupe index still keeps state exact.
    AtLeastOnce,
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Consumer group id and prefix of every internal topic.
    pub application_id: String,
    /// Kafka bootstrap servers.
    pub bootstrap_servers: String,
    /// Root of the local stores: `state_dir/application_id/flow/partition`.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub processing_guarantee: ProcessingGuarantee,
    /// Longest time staged work waits before it is committed.
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// Staged events that force a commit before the interval ends.
    #[serde(default = "default_commit_max_events")]
    pub commit_max_events: usize,
    /// Stable name of this instance; the transactional.id derives from it (pod name in k8s).
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Joins the group as a static member (`group.instance.id` = `instance_id`): a restart
    /// within the session timeout gets its partitions back without a rebalance.
    #[serde(default)]
    pub static_membership: bool,
    /// Other instances that keep each partition's store warm by tailing its changelog, so a
    /// takeover restores only the tail (Kafka Streams' `num.standby.replicas`).
    #[serde(default)]
    pub num_standby_replicas: u32,
    /// `host:port` at which the other instances reach this one's HTTP, advertised to the group
    /// so `/state` on any instance can forward a query to the key's owner.
    #[serde(default)]
    pub application_server: Option<String>,
    /// How long an applied event id is remembered, by event time ("7d", "36h", "90m", "600s").
    #[serde(default = "default_dedupe_retention", deserialize_with = "de_duration")]
    pub dedupe_retention: Duration,
    /// Kafka transaction timeout; a zombie's open transaction is aborted after it.
    #[serde(default = "default_transaction_timeout_ms")]
    pub transaction_timeout_ms: u64,
    /// Replication factor of topics tally creates (-1: the broker's default).
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// sled page cache per store, in MiB.
    #[serde(default = "default_store_cache_mib")]
    pub store_cache_mib: u64,
    /// Decoded committed states kept in memory per instance, split evenly over the flows' input
    /// partitions (Kafka Streams' `statestore.cache.max.bytes`); 0 turns the cache off.
    #[serde(default = "default_statestore_cache_max_bytes")]
    pub statestore_cache_max_bytes: u64,
    pub flows: Vec<FlowConfig>,
    #[serde(default)]
    pub http: HttpConfig,
    /// Passed to librdkafka as-is (security, tuning); never logged.
    #[serde(default)]
    pub kafka: KafkaSettings,
    /// The keys that sign repairs sent through the control topics.
    #[serde(default)]
    pub control: ControlConfig,
    #[serde(default)]
    pub health: HealthConfig,
    /// The source database of flows whose history is a PostgreSQL table.
    #[serde(default)]
    pub source: Option<SourceConfig>,
}

/// One input topic projected into one output topic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowConfig {
    /// Flow name; also names its changelog and state folder.
    pub name: String,
    /// The registered projection the flow runs (built in: `inventory`, `ledger`); defaults to
    /// the flow's name.
    #[serde(default)]
    pub projection: Option<String>,
    pub input: String,
    pub output: String,
    pub dead_letter: String,
    /// Recovery contract file; the flow's built-in contract when absent.
    #[serde(default)]
    pub contract: Option<PathBuf>,
    /// What the input records are: `json` (the projection's own), `debezium_outbox` or
    /// `debezium_cdc`.
    #[serde(default)]
    pub format: Format,
    /// Event fields a Debezium format takes from a header, another field or a constant, e.g.
    /// `location_id = { field = "location" }`.
    #[serde(default)]
    pub map: BTreeMap<String, FieldSource>,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/tally")
}
fn default_commit_interval_ms() -> u64 {
    100
}
fn default_commit_max_events() -> usize {
    20_000
}
fn default_dedupe_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_transaction_timeout_ms() -> u64 {
    30_000
}
fn default_replication_factor() -> i32 {
    -1
}
fn default_store_cache_mib() -> u64 {
    16
}
fn default_statestore_cache_max_bytes() -> u64 {
    10 * 1024 * 1024
}

/// Parses "7d", "36h", "90m", "600s", "250ms" or a plain number of milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 7d, 36h, 90m, 600s or 250ms"))?;
    let ms = match unit {
        "" | "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => {
            return Err(format!(
                "`{s}` has unknown unit `{unit}` (use d, h, m, s or ms)"
            ))
        }
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("`{s}` is too large"))
}

pub(crate) fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Ms(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Ms(ms) => Ok(Duration::from_millis(ms)),
        Raw::Text(s) => parse_duration(&s).map_err(serde::de::Error::custom),
    }
}

impl Config {
    /// Reads the file, applies `TALLY_*` overrides from the process environment, validates
    /// (every flow names one of the `projections`, and its contract fits it).
    pub fn load(path: &Path, projections: &dyn Contracts) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, |k| std::env::var(k).ok(), projections)
    }

    /// Parses TOML text with overrides looked up by `env`, then validates.
    pub fn from_toml(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
        projections: &dyn Contracts,
    ) -> Result<Self, ConfigError> {
        let mut doc: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        env::apply(&mut doc, &env);
        resolve_secrets(&mut doc, &env)?;
        let cfg: Config = toml::Value::Table(doc)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        cfg.validate(projections)?;
        Ok(cfg)
    }

    fn validate(&self, projections: &dyn Contracts) -> Result<(), ConfigError> {
        check_name("application_id", &self.application_id)?;
        if self.bootstrap_servers.trim().is_empty() {
            return Err(invalid("bootstrap_servers", "must not be empty"));
        }
        if self.commit_interval_ms == 0 {
            return Err(invalid("commit_interval_ms", "must be > 0"));
        }
        if self.commit_max_events == 0 {
            return Err(invalid("commit_max_events", "must be > 0"));
        }
        if self.dedupe_retention.is_zero() {
            return Err(invalid("dedupe_retention", "must be > 0"));
        }
        if !(1000..=900_000).contains(&self.transaction_timeout_ms) {
            return Err(invalid(
                "transaction_timeout_ms",
                "must be within 1000..=900000",
            ));
        }
        if self.replication_factor == 0 || self.replication_factor < -1 {
            return Err(invalid("replication_factor", "must be -1 or >= 1"));
        }
        if let Some(id) = &self.instance_id {
            check_name("instance_id", id)?;
        }
        if self.static_membership && self.instance_id.is_none() {
            return Err(invalid(
                "static_membership",
                "needs `instance_id` (the stable name the group knows this member by)",
            ));
        }
        if self.num_standby_replicas > MAX_STANDBY_REPLICAS {
            return Err(invalid(
                "num_standby_replicas",
                format!("must be within 0..={MAX_STANDBY_REPLICAS}"),
            ));
        }
        if let Some(server) = &self.application_server {
            check_server(server).map_err(|m| invalid("application_server", m))?;
        }
        if self.flows.is_empty() {
            return Err(invalid("flows", "at least one [[flows]] entry is required"));
        }
        let mut names = std::collections::BTreeSet::new();
        let mut topics = std::collections::BTreeSet::new();
        for (i, f) in self.flows.iter().enumerate() {
            let at = |k: &str| format!("flows[{i}].{k}");
            check_name(&at("name"), &f.name)?;
            if !names.insert(f.name.as_str()) {
                return Err(invalid(at("name"), format!("duplicate flow `{}`", f.name)));
            }
            projections
                .contract_text(f.projection_name())
                .map_err(|m| invalid(at("projection"), m))?;
            let contract = f
                .contract(projections)
                .map_err(|m| invalid(at("contract"), m))?;
            f.input_reader(&contract)
                .map_err(|m| invalid(at("map"), m))?;
            for (k, t) in [
                ("input", &f.input),
                ("output", &f.output),
                ("dead_letter", &f.dead_letter),
            ] {
                check_name(&at(k), t)?;
                if !topics.insert(t.as_str()) {
                    return Err(invalid(at(k), format!("topic `{t}` is used twice")));
                }
            }
        }
        let mut ids = std::collections::BTreeSet::new();
        for (i, k) in self.control.keys.iter().enumerate() {
            check_name(&format!("control.keys[{i}].id"), &k.id)?;
            if !ids.insert(k.id.as_str()) {
                return Err(invalid(
                    format!("control.keys[{i}].id"),
                    format!("duplicate key id `{}`", k.id),
                ));
            }
            if k.secret.expose().len() < MIN_CONTROL_KEY_LEN {
                return Err(invalid(
                    format!("control.keys[{i}].secret"),
                    format!("must be at least {MIN_CONTROL_KEY_LEN} bytes"),
                ));
            }
        }
        if let Some(source) = &self.source {
            source.check().map_err(|m| invalid("source.url", m))?;
        }
        if self.health.stall_timeout < Duration::from_secs(1) {
            return Err(invalid("health.stall_timeout", "must be at least 1s"));
        }
        for key in self.kafka.keys() {
            if kafka::MANAGED_KEYS.contains(&key.as_str()) {
                return Err(invalid(
                    format!("kafka.{key}"),
                    "is managed by tally; use the top-level key instead",
                ));
            }
        }
        Ok(())
    }

    /// The instance name: `instance_id`, else the host name.
    pub fn instance(&self) -> String {
        self.instance_id
            .clone()
            .or_else(host_name)
            .unwrap_or_else(|| "tally".into())
    }

    /// Commit interval as a duration.
    pub fn commit_interval(&self) -> Duration {
        Duration::from_millis(self.commit_interval_ms)
    }

    /// How long a commit's Kafka calls may run before they are abandoned and the producer is
    /// replaced: three transaction timeouts (the broker aborted an open transaction after one),
    /// at least 30 s.
    pub fn commit_stall_limit(&self) -> Duration {
        Duration::from_millis(self.transaction_timeout_ms.saturating_mul(3))
            .max(Duration::from_secs(30))
    }
}

/// The projections a config's flows may name, as validation sees them: each one's own recovery
/// contract, and the check of a flow's contract against its projection.
pub trait Contracts {
    /// Projection `name`'s own contract (TOML); the error names the registered projections.
    fn contract_text(&self, name: &str) -> Result<&'static str, String>;
    /// Parses `text` and checks that it fits projection `name`.
    fn parse_contract(&self, name: &str, text: &str) -> Result<Contract, String>;
}

impl FlowConfig {
    /// The registered projection this flow runs: `projection`, else the flow's name.
    pub fn projection_name(&self) -> &str {
        self.projection.as_deref().unwrap_or(&self.name)
    }

    /// `{application_id}-{flow}-changelog`.
    pub fn changelog_topic(&self, application_id: &str) -> String {
        format!("{application_id}-{}-changelog", self.name)
    }

    /// The flow's recovery contract (its file, else its projection's own), loaded and checked
    /// against the projection: a flow without a valid one does not start.
    pub fn contract(&self, projections: &dyn Contracts) -> Result<Contract, String> {
        let name = self.projection_name();
        let own = projections.contract_text(name)?;
        let text = match &self.contract {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?,
            None => own.to_string(),
        };
        projections.parse_contract(name, &text)
    }

    /// How the flow reads its input records, under its contract's history.
    pub fn input_reader(&self, contract: &Contract) -> Result<InputReader, String> {
        InputReader::new(self.format, &self.map, &contract.history)
    }

    /// `{application_id}-{flow}-control`: replays' repairs for the owning tasks.
    pub fn control_topic(&self, application_id: &str) -> String {
        format!("{application_id}-{}-control", self.name)
    }
}

/// This machine's name (`HOSTNAME`, else /etc/hostname): a pod's name in Kubernetes.
pub fn host_name() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|h| !h.is_empty())
        })
}

/// Reads the secrets the document points at (`{ env = .. }`, `{ file = .. }`) with `env`, and
/// flattens `[kafka]` into dotted librdkafka names; errors name the key, never a value.
fn resolve_secrets(
    doc: &mut toml::Table,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    if let Some(value) = doc.remove("kafka") {
        let toml::Value::Table(table) = value else {
            return Err(invalid("kafka", "must be a table of librdkafka settings"));
        };
        let flat = kafka::flatten(table, env).map_err(|(k, m)| invalid(format!("kafka.{k}"), m))?;
        doc.insert("kafka".into(), toml::Value::Table(flat));
    }
    let resolve = |value: &mut toml::Value, key: String| -> Result<(), ConfigError> {
        if let toml::Value::Table(_) = value {
            let source = crate::secret::SecretSource::deserialize(value.clone())
                .map_err(|e| invalid(&key, e.to_string()))?;
            let secret = source.resolve(env).map_err(|m| invalid(&key, m))?;
            *value = toml::Value::String(secret.expose().to_string());
        }
        Ok(())
    };
    if let Some(token) = doc
        .get_mut("http")
        .and_then(|h| h.as_table_mut())
        .and_then(|h| h.get_mut("token"))
    {
        resolve(token, "http.token".into())?;
    }
    if let Some(password) = doc
        .get_mut("source")
        .and_then(|h| h.as_table_mut())
        .and_then(|h| h.get_mut("password"))
    {
        resolve(password, "source.password".into())?;
    }
    let keys = doc
        .get_mut("control")
        .and_then(|c| c.as_table_mut())
        .and_then(|c| c.get_mut("keys"))
        .and_then(|k| k.as_array_mut());
    for (i, key) in keys.into_iter().flatten().enumerate() {
        if let Some(secret) = key.as_table_mut().and_then(|k| k.get_mut("secret")) {
            resolve(secret, format!("control.keys[{i}].secret"))?;
        }
    }
    Ok(())
}

/// More standbys than this only multiply every changelog's reads.
const MAX_STANDBY_REPLICAS: u32 = 8;

/// `host:port`, with a host of letters, digits, dots, dashes (or an IPv6 literal in brackets).
fn check_server(v: &str) -> Result<(), String> {
    let (host, port) = v
        .rsplit_once(':')
        .ok_or_else(|| format!("`{v}` is not host:port"))?;
    port.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("`{v}` has no valid port"))?;
    let bracketed = host.starts_with('[') && host.ends_with(']') && host.len() > 2;
    let plain = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if bracketed || plain {
        Ok(())
    } else {
        Err(format!("`{v}` has no valid host"))
    }
}

fn check_name(key: &str, v: &str) -> Result<(), ConfigError> {
    let ok = !v.is_empty()
        && v.len() <= 200
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("`{v}` must be 1-200 chars of [A-Za-z0-9._-]"),
        ))
    }
}

#[cfg(test)]
mod tests;
