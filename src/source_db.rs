//! The tools' PostgreSQL client: a connection to a source database whose password never shows
//! in an error, and errors that say what was being done.

use std::time::Duration;

/// Why the source database could not be used; no variant ever holds the password.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid PostgreSQL URL: {0}")]
    Url(String),
    #[error("connecting to PostgreSQL at {target}: {message}")]
    Connect { target: String, message: String },
    #[error("{what}: {message}")]
    Sql { what: String, message: String },
}

/// Connects without TLS (the local database listens on loopback only), giving up after 10 s.
/// The password is set apart from the URL and is scrubbed from every error.
pub fn connect(url: &str, password: Option<&str>) -> Result<postgres::Client, DbError> {
    let secrets: Vec<&str> = password.into_iter().chain(url_password(url)).collect();
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e: postgres::Error| DbError::Url(scrub(&chain(&e), &secrets)))?;
    if let Some(p) = password {
        config.password(p);
    }
    config
        .connect_timeout(Duration::from_secs(10))
        .application_name("tally");
    let target = describe(&config);
    config
        .connect(postgres::NoTls)
        .map_err(|e| DbError::Connect {
            target,
            message: scrub(&chain(&e), &secrets),
        })
}

/// `user@host:port/dbname` of a config, for messages (never the password).
fn describe(config: &postgres::Config) -> String {
    let host = config.get_hosts().first().map_or_else(
        || "localhost".to_string(),
        |h| match h {
            postgres::config::Host::Tcp(name) => name.clone(),
            postgres::config::Host::Unix(path) => path.display().to_string(),
        },
    );
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}@{host}:{port}/{}",
        config.get_user().unwrap_or_default(),
        config.get_dbname().unwrap_or_default()
    )
}

/// The password a `postgres://user:password@host/...` URL carries, so errors can scrub it too.
fn url_password(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let userinfo = authority.rsplit_once('@')?.0;
    userinfo
        .split_once(':')
        .map(|(_, p)| p)
        .filter(|p| !p.is_empty())
}

/// An error with its causes, `: `-separated (the client's own text names only the kind).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

fn scrub(text: &str, secrets: &[&str]) -> String {
    secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(text.to_string(), |t, s| t.replace(s, crate::redact::MASK))
}

pub fn sql_error(what: String, e: &postgres::Error) -> DbError {
    DbError::Sql {
        what,
        message: chain(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_error_shows_the_password() {
        for url in [
            "postgres://tally:url-secret-1@127.0.0.1:1/tally",
            "postgres://tally:url-secret-1@127.0.0.1:notaport/tally",
        ] {
            let e = connect(url, Some("file-secret-2")).err().unwrap();
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains("secret"), "{shown}");
        }
        assert_eq!(
            url_password("postgres://u:p%40ss@h:5/d?x=1"),
            Some("p%40ss")
        );
        assert_eq!(url_password("postgres://u@h/d"), None);
    }
}
