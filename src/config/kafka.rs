//! The `[kafka]` table: librdkafka settings passed through as-is, written quoted
//! (`"sasl.password" = "x"`) or as natural dotted TOML (`sasl.password = "x"`), with secrets from
//! the environment or a file (`"sasl.password" = { env = "KAFKA_PASSWORD" }`).

use std::collections::BTreeMap;
use std::ops::Deref;

use serde::Deserialize;

use crate::secret::SecretSource;

/// librdkafka settings tally sets itself; a `[kafka]` table may not override them.
pub const MANAGED_KEYS: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "group.instance.id",
    "client.id",
    "transactional.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "isolation.level",
    "partition.assignment.strategy",
    "enable.idempotence",
];

/// librdkafka settings by their dotted names; Debug masks the secret ones.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct KafkaSettings(BTreeMap<String, String>);

#[cfg(test)]
impl KafkaSettings {
    /// Settings from plain pairs.
    fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl Deref for KafkaSettings {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let shown = if is_secret_key(k) {
                    crate::redact::MASK
                } else {
                    v.as_str()
                };
                (k, shown)
            }))
            .finish()
    }
}

/// Whether a librdkafka setting holds a secret: passwords, secrets, tokens, private key material
/// and JAAS or OAUTHBEARER configurations (which embed credentials). Paths to files are not.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "sasl.jaas",
        "oauthbearer.config",
    ]
    .iter()
    .any(|word| k.contains(word))
        || (k.contains("key") && !k.ends_with(".location") && !k.contains("keytab"))
}

/// Rewrites the `[kafka]` table of a parsed config into flat `"dotted.name" = "string"` pairs:
/// nested tables are joined with dots, numbers and booleans become their text, and a
/// `{ env = .. }` / `{ file = .. }` value is read (and registered as a secret). Errors name the
/// setting, never its value.
pub fn flatten(
    table: toml::Table,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<toml::Table, (String, String)> {
    let mut out = toml::Table::new();
    flatten_into(&mut out, "", table, env)?;
    Ok(out)
}

fn flatten_into(
    out: &mut toml::Table,
    prefix: &str,
    table: toml::Table,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), (String, String)> {
    for (k, v) in table {
        let name = if prefix.is_empty() {
            k
        } else {
            format!("{prefix}.{k}")
        };
        let text = match v {
            toml::Value::String(s) => {
                if is_secret_key(&name) {
                    crate::redact::register(&s);
                }
                s
            }
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Table(t) if is_source(&t) => {
                let source = SecretSource::deserialize(toml::Value::Table(t))
                    .map_err(|e| (name.clone(), e.to_string()))?;
                let secret = source.resolve(env).map_err(|m| (name.clone(), m))?;
                secret.expose().to_string()
            }
            toml::Value::Table(t) => {
                flatten_into(out, &name, t, env)?;
                continue;
            }
            other => {
                return Err((
                    name,
                    format!(
                        "must be a string, number or boolean, not {}",
                        other.type_str()
                    ),
                ))
            }
        };
        if out
            .insert(name.clone(), toml::Value::String(text))
            .is_some()
        {
            return Err((name, "is set twice".into()));
        }
    }
    Ok(())
}

/// A table that says where a secret comes from rather than nesting more settings.
fn is_source(t: &toml::Table) -> bool {
    t.len() == 1 && (t.contains_key("env") || t.contains_key("file"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn flat(text: &str, env: &dyn Fn(&str) -> Option<String>) -> BTreeMap<String, String> {
        let doc: toml::Table = text.parse().unwrap();
        flatten(doc, env)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.as_str().unwrap().to_string()))
            .collect()
    }

    #[test]
    fn natural_dotted_toml_and_quoted_keys_mean_the_same() {
        let none = |_: &str| None;
        let dotted = flat(
            "sasl.password = \"pw-dotted-1\"\nsession.timeout.ms = 6000\n",
            &none,
        );
        let quoted = flat(
            "\"sasl.password\" = \"pw-dotted-1\"\n\"session.timeout.ms\" = \"6000\"\n",
            &none,
        );
        assert_eq!(dotted, quoted);
        assert_eq!(dotted["session.timeout.ms"], "6000");
    }

    #[test]
    fn a_secret_comes_from_the_environment() {
        let env = |k: &str| (k == "KAFKA_PASSWORD").then(|| "from-env-pw".to_string());
        let got = flat("\"sasl.password\" = { env = \"KAFKA_PASSWORD\" }\n", &env);
        assert_eq!(got["sasl.password"], "from-env-pw");
        assert!(!crate::redact::redact("x from-env-pw").contains("from-env-pw"));
    }

    #[test]
    fn a_missing_env_secret_names_the_setting() {
        let doc: toml::Table = "sasl.password = { env = \"NOPE_UNSET\" }".parse().unwrap();
        let (key, why) = flatten(doc, &|_| None).unwrap_err();
        assert_eq!(key, "sasl.password");
        assert!(why.contains("NOPE_UNSET"), "{why}");
    }

    #[rstest]
    #[case("sasl.password", true)]
    #[case("ssl.key.password", true)]
    #[case("ssl.keystore.password", true)]
    #[case("ssl.key.pem", true)]
    #[case("sasl.oauthbearer.client.secret", true)]
    #[case("sasl.oauthbearer.config", true)]
    #[case("sasl.jaas.config", true)]
    #[case("ssl.key.location", false)]
    #[case("sasl.kerberos.keytab", false)]
    #[case("ssl.ca.location", false)]
    #[case("sasl.username", false)]
    #[case("security.protocol", false)]
    fn secret_keys_are_recognised(#[case] key: &str, #[case] secret: bool) {
        assert_eq!(is_secret_key(key), secret, "{key}");
    }

    #[test]
    fn debug_masks_secret_settings() {
        let s = KafkaSettings::from_pairs([("sasl.password", "shown?"), ("sasl.username", "u")]);
        let text = format!("{s:?}");
        assert!(!text.contains("shown?") && text.contains("\"u\""), "{text}");
    }
}
