//! The local servers the demos and tests run on, through the project's own scripts in
//! deploy/local: a Kafka broker, PostgreSQL, and Kafka Connect with Debezium.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use crate::secret::Secret;

/// deploy/local, found from the source tree the binary was built in or the working directory.
pub fn scripts() -> anyhow::Result<PathBuf> {
    [
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/local"),
        PathBuf::from("deploy/local"),
    ]
    .into_iter()
    .find(|p| p.join("kafka").exists())
    .context("deploy/local not found: run from the tally source tree")
}

/// Runs `deploy/local/<script> <args>` with `env`, feeding `stdin`; fails naming the command.
fn run(
    script: &str,
    args: &[&str],
    env: &[(&str, String)],
    stdin: Option<&str>,
) -> anyhow::Result<String> {
    let path = scripts()?.join(script);
    let mut cmd = Command::new(&path);
    cmd.args(args)
        .stderr(Stdio::inherit())
        .stdout(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running {} {}", path.display(), args.join(" ")))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        pipe.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "deploy/local/{script} {} failed ({})",
            args.join(" "),
            out.status
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A local broker on `port`.
pub fn kafka(port: u16, cmd: &str) -> anyhow::Result<()> {
    run("kafka", &[cmd], &[("KAFKA_PORT", port.to_string())], None).map(drop)
}

/// PostgreSQL of deploy/local/postgres on one port.
#[derive(Debug, Clone)]
pub struct Postgres {
    pub port: u16,
}

impl Postgres {
    /// Starts it (idempotent).
    pub fn up(port: u16) -> anyhow::Result<Self> {
        let pg = Self { port };
        pg.cmd(&["up"])?;
        Ok(pg)
    }

    fn cmd(&self, args: &[&str]) -> anyhow::Result<String> {
        run(
            "postgres",
            args,
            &[("PG_PORT", self.port.to_string())],
            None,
        )
    }

    /// A fresh database with the schema (one per demo run or test).
    pub fn createdb(&self, name: &str) -> anyhow::Result<()> {
        self.cmd(&["createdb", name]).map(drop)
    }

    /// The URL of `database`, without the password.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://tally@127.0.0.1:{}/{database}", self.port)
    }

    /// The file holding the role's password.
    pub fn password_file(&self) -> anyhow::Result<PathBuf> {
        Ok(PathBuf::from(self.cmd(&["password-file"])?.trim()))
    }

    /// The role's password.
    pub fn password(&self) -> anyhow::Result<Secret> {
        let file = self.password_file()?;
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        Ok(Secret::new(text.trim_end().to_string()))
    }

    /// Runs SQL as the role tally on `database`; returns psql's unaligned output.
    pub fn sql(&self, database: &str, sql: &str) -> anyhow::Result<String> {
        run(
            "postgres",
            &["psql", "-At", "-f", "-"],
            &[
                ("PG_PORT", self.port.to_string()),
                ("PG_DATABASE", database.to_string()),
            ],
            Some(sql),
        )
    }

    /// `restart`, `stop`, `start` or `down`.
    pub fn ctl(&self, cmd: &str) -> anyhow::Result<()> {
        self.cmd(&[cmd]).map(drop)
    }
}

/// The Kafka Connect worker of deploy/local/connect on one REST port, on one broker.
#[derive(Debug, Clone)]
pub struct Connect {
    pub port: u16,
    pub bootstrap: String,
}

/// The outbox connector of one database: its name (also its slot), and where it routes.
#[derive(Debug, Clone)]
pub struct Outbox<'a> {
    pub name: &'a str,
    pub postgres: &'a Postgres,
    pub database: &'a str,
    /// The router's topic for an aggregate type, `${routedByValue}` standing for it.
    pub route: &'a str,
    /// `initial` (rows already in the table are read first) or `no_data`.
    pub snapshot_mode: &'a str,
}

/// The change-data-capture connector of one database: its name (also its slot) and topic prefix.
#[derive(Debug, Clone)]
pub struct Cdc<'a> {
    pub name: &'a str,
    pub postgres: &'a Postgres,
    pub database: &'a str,
    /// Its topics are `<topic_prefix>.public.<table>`.
    pub topic_prefix: &'a str,
    /// `initial` (rows already in the tables are read first) or `no_data`.
    pub snapshot_mode: &'a str,
}

impl Connect {
    /// Starts the worker (idempotent).
    pub fn up(port: u16, bootstrap: &str) -> anyhow::Result<Self> {
        let c = Self {
            port,
            bootstrap: bootstrap.to_string(),
        };
        c.ctl("up")?;
        Ok(c)
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("CONNECT_PORT", self.port.to_string()),
            ("KAFKA_BOOTSTRAP", self.bootstrap.clone()),
        ]
    }

    /// `kill` (SIGKILL), `start`, `restart` (SIGTERM, start), `stop` or `down`.
    pub fn ctl(&self, cmd: &str) -> anyhow::Result<()> {
        run("connect", &[cmd], &self.env(), None).map(drop)
    }

    /// Registers the outbox connector and waits until it runs.
    pub fn register_outbox(&self, o: &Outbox<'_>) -> anyhow::Result<()> {
        self.register(
            "outbox",
            o.name,
            o.postgres,
            o.database,
            [
                ("OUTBOX_ROUTE_TOPIC", o.route.to_string()),
                ("CONNECT_SNAPSHOT_MODE", o.snapshot_mode.to_string()),
            ],
        )
    }

    /// Registers the change-data-capture connector and waits until it runs.
    pub fn register_cdc(&self, c: &Cdc<'_>) -> anyhow::Result<()> {
        self.register(
            "cdc",
            c.name,
            c.postgres,
            c.database,
            [
                ("CONNECT_TOPIC_PREFIX", c.topic_prefix.to_string()),
                ("CONNECT_SNAPSHOT_MODE", c.snapshot_mode.to_string()),
            ],
        )
    }

    /// `deploy/local/connect config KIND NAME`, registered as NAME.
    fn register(
        &self,
        kind: &str,
        name: &str,
        postgres: &Postgres,
        database: &str,
        settings: [(&'static str, String); 2],
    ) -> anyhow::Result<()> {
        let mut env = self.env();
        env.extend([
            ("PG_PORT", postgres.port.to_string()),
            ("PG_DATABASE", database.to_string()),
        ]);
        env.extend(settings);
        let config = run("connect", &["config", kind, name], &env, None)?;
        run("connect", &["register", name, "-"], &env, Some(&config)).map(drop)
    }
}

/// A path as the inside of a TOML string, for the configs the demos write.
pub fn toml_path(p: &Path) -> String {
    p.display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
}
