//! `TALLY_<KEY>` overrides of top-level keys (and `TALLY_HTTP_LISTEN`), typed by the key they
//! override: a string key takes the text as it is (`TALLY_INSTANCE_ID=1` is the name "1").

/// How an override's text becomes a TOML value.
#[derive(Clone, Copy)]
enum Kind {
    /// Taken as a string, whatever it looks like.
    Text,
    /// A TOML literal when it parses as one (a number), else a string (a duration like "7d").
    Literal,
}

/// Top-level keys that `TALLY_<KEY>` may override.
const KEYS: &[(&str, Kind)] = &[
    ("application_id", Kind::Text),
    ("bootstrap_servers", Kind::Text),
    ("state_dir", Kind::Text),
    ("processing_guarantee", Kind::Text),
    ("commit_interval_ms", Kind::Literal),
    ("commit_max_events", Kind::Literal),
    ("instance_id", Kind::Text),
    ("static_membership", Kind::Literal),
    ("num_standby_replicas", Kind::Literal),
    ("application_server", Kind::Text),
    ("dedupe_retention", Kind::Literal),
    ("transaction_timeout_ms", Kind::Literal),
    ("replication_factor", Kind::Literal),
    ("store_cache_mib", Kind::Literal),
    ("statestore_cache_max_bytes", Kind::Literal),
];

/// Applies every override `env` knows to the parsed document.
pub fn apply(doc: &mut toml::Table, env: &dyn Fn(&str) -> Option<String>) {
    for (key, kind) in KEYS {
        if let Some(v) = env(&format!("TALLY_{}", key.to_uppercase())) {
            let value = match kind {
                Kind::Text => toml::Value::String(v),
                Kind::Literal => literal(&v),
            };
            doc.insert((*key).to_string(), value);
        }
    }
    if let Some(v) = env("TALLY_HTTP_LISTEN") {
        let http = doc
            .entry("http")
            .or_insert_with(|| toml::Value::Table(Default::default()));
        if let toml::Value::Table(t) = http {
            t.insert("listen".into(), toml::Value::String(v));
        }
    }
}

/// A TOML literal when the text parses as a plain one, else the text as a string.
fn literal(v: &str) -> toml::Value {
    format!("v = {v}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .filter(|v| !matches!(v, toml::Value::Table(_) | toml::Value::Array(_)))
        .unwrap_or_else(|| toml::Value::String(v.to_string()))
}
