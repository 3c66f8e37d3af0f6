//! The config's tables beside the flows: `[http]` (listen address, TLS, bearer token),
//! `[control]` (the keys that sign repairs), `[health]` (when no progress means unhealthy) and
//! `[source]` (the database a `postgres` history lives in).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::secret::Secret;

/// The HTTP endpoint for metrics, health and queries.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// `host:port`; a host name is resolved once, at start.
    #[serde(default = "default_listen", deserialize_with = "de_listen")]
    pub listen: SocketAddr,
    /// Bearer token that `/state` requires; `/metrics`, `/healthz` and `/readyz` stay open.
    #[serde(default)]
    pub token: Option<Secret>,
    /// Serve HTTPS instead of HTTP.
    #[serde(default)]
    pub tls: Option<HttpTls>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            token: None,
            tls: None,
        }
    }
}

/// PEM files of the HTTPS endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTls {
    /// The certificate chain, leaf first.
    pub certificate: PathBuf,
    /// Its private key (unencrypted PEM; mount it as a secret).
    pub private_key: PathBuf,
    /// The CA that signs the other instances' certificates, checked when a query is forwarded to
    /// a key's owner; the system's CAs when absent.
    #[serde(default)]
    pub peer_ca: Option<PathBuf>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}

fn de_listen<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    resolve_listen(&text).map_err(serde::de::Error::custom)
}

/// `ip:port` as it is, or `host:port` resolved (the first address the resolver gives).
pub fn resolve_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let mut addrs = text
        .to_socket_addrs()
        .map_err(|e| format!("`{text}` is not host:port ({e})"))?;
    addrs
        .next()
        .ok_or_else(|| format!("`{text}` resolves to no address"))
}

/// Who may send repairs: a control record is applied only when one of these keys signed it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    #[serde(default)]
    pub keys: Vec<ControlKey>,
    /// A signed repair older than this when its owner reads it is refused (a replayed copy of
    /// an old repair must not apply).
    #[serde(default = "default_max_age", deserialize_with = "super::de_duration")]
    pub max_age: Duration,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            max_age: default_max_age(),
        }
    }
}

fn default_max_age() -> Duration {
    Duration::from_secs(3600)
}

/// One signing key shared by the processors and the operators' tooling.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlKey {
    /// Named in each signed record, so keys can be rotated.
    pub id: String,
    /// The HMAC-SHA256 key: at least 16 bytes, from `{ env = .. }` or `{ file = .. }`.
    pub secret: Secret,
    /// The actors this key vouches for; empty: any actor the operator names.
    #[serde(default)]
    pub actors: Vec<String>,
}

/// Shortest control key accepted: HMAC-SHA256 is only as strong as its key.
pub const MIN_CONTROL_KEY_LEN: usize = 16;

/// When the instance stops calling itself healthy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// An assigned partition with input waiting that neither commits nor restores anything for
    /// this long makes `/healthz` fail.
    #[serde(
        default = "default_stall_timeout",
        deserialize_with = "super::de_duration"
    )]
    pub stall_timeout: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            stall_timeout: default_stall_timeout(),
        }
    }
}

fn default_stall_timeout() -> Duration {
    Duration::from_secs(60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_name_listen_address_resolves() {
        let addr = resolve_listen("localhost:9464").unwrap();
        assert!(addr.ip().is_loopback());
        assert_eq!(addr.port(), 9464);
    }

    #[test]
    fn a_listen_address_without_port_is_refused() {
        assert!(resolve_listen("localhost").is_err());
    }
}

/// The database a flow's `postgres` history lives in, which `reconcile --against-source` trusts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `postgres://user@host:port/database`; the password goes in `password`, never here.
    pub url: String,
    #[serde(default)]
    pub password: Option<Secret>,
}

impl SourceConfig {
    /// Checks the URL names a PostgreSQL database and holds no password.
    pub(super) fn check(&self) -> Result<(), String> {
        let rest = ["postgres://", "postgresql://"]
            .iter()
            .find_map(|s| self.url.strip_prefix(s))
            .ok_or("must start with postgres:// (the value is not shown)")?;
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        if let Some((user_info, _)) = authority.rsplit_once('@') {
            if user_info.contains(':') {
                return Err("holds a password: put it in source.password, e.g. { env = \"PGPASSWORD\" } (the value is not shown)".into());
            }
        }
        Ok(())
    }
}
