//! A config value that must never be printed: given inline, or read from an environment variable
//! or a file so that the config file itself holds no secret. Resolved once, at load.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use crate::redact;

/// A resolved secret: registered for redaction, and shown as `<redacted>` by Debug.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value and registers it for redaction.
    pub fn new(value: String) -> Self {
        redact::register(&value);
        Self(value)
    }

    /// The value itself, for the one place that uses it (a client setting, a MAC key).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(redact::MASK)
    }
}

/// Where a secret comes from, as written in the config.
#[derive(Debug, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum SecretSource {
    /// Inline (the config file then is a secret itself).
    Inline(String),
    /// `{ env = "NAME" }`: the value of an environment variable.
    Env { env: String },
    /// `{ file = "/run/secrets/x" }`: a file's content, without its trailing newline.
    File { file: PathBuf },
}

impl SecretSource {
    /// Reads the value; the error names the variable or file, never the value.
    pub fn resolve(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Secret, String> {
        let value = match self {
            SecretSource::Inline(v) => v.clone(),
            SecretSource::Env { env: name } => {
                env(name).ok_or_else(|| format!("environment variable `{name}` is not set"))?
            }
            SecretSource::File { file } => std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read secret file `{}`: {e}", file.display()))?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
        };
        if value.is_empty() {
            return Err("is empty".into());
        }
        Ok(Secret::new(value))
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        SecretSource::deserialize(d)?
            .resolve(&|name| std::env::var(name).ok())
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("open-sesame-debug".into());
        assert_eq!(format!("{s:?}"), redact::MASK);
        assert_eq!(s.expose(), "open-sesame-debug");
    }

    #[test]
    fn a_file_secret_loses_its_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "from-a-file\n").unwrap();
        let s = SecretSource::File { file: path }
            .resolve(&|_| None)
            .unwrap();
        assert_eq!(s.expose(), "from-a-file");
    }

    #[test]
    fn a_missing_env_var_is_named_and_no_value_is_shown() {
        let err = SecretSource::Env {
            env: "TALLY_TEST_UNSET_SECRET".into(),
        }
        .resolve(&|_| None)
        .unwrap_err();
        assert!(err.contains("TALLY_TEST_UNSET_SECRET"), "{err}");
    }
}
