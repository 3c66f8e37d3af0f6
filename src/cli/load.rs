//! `tally load`: a deterministic workload, produced to Kafka as tally's JSON or written to
//! PostgreSQL as history and outbox rows for Debezium to relay.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::ensure_input;
use crate::workload::{self, Flow, LoadSpec};

/// Arguments of `tally load`.
#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// Which event contract to generate.
    #[arg(long, default_value = "inventory")]
    pub flow: String,
    /// Records to send in total (duplicates and invalid ones included).
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// Distinct aggregate keys (SKUs, accounts).
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Fraction of records that are exact redeliveries of an earlier event.
    #[arg(long, default_value_t = 0.05)]
    pub duplicates: f64,
    /// Fraction of records that are poison (every invalid kind in turn).
    #[arg(long, default_value_t = 0.01)]
    pub invalid: f64,
    /// Fraction of records that reuse an event id with different content.
    #[arg(long, default_value_t = 0.001)]
    pub conflicts: f64,
    /// Events per second; 0 sends as fast as the broker takes them.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Topic to write (default: inventory.events / ledger.events).
    #[arg(long)]
    pub topic: Option<String>,
    /// Create the topic with this many partitions if it does not exist.
    #[arg(long, default_value_t = 12)]
    pub partitions: i32,
    #[arg(
        long,
        env = "TALLY_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092"
    )]
    pub bootstrap: String,
}

/// Arguments of `tally load`: the workload ([`LoadArgs`]), and where it goes.
#[derive(Debug, Clone)]
pub struct LoadCommand {
    pub workload: LoadArgs,
    pub target: LoadTarget,
    /// Options of the other target given on the command line, which this one refuses rather
    /// than silently ignores (a default is not "given", so each target keeps its defaults).
    given_elsewhere: Vec<&'static str>,
}

/// Where `tally load` writes, and the PostgreSQL target's settings.
#[derive(Args, Debug, Clone)]
pub struct LoadTarget {
    /// kafka: tally's JSON to the input topic. postgres: each event's history row and outbox
    /// row in one transaction, for Debezium to relay.
    #[arg(long, value_enum, default_value_t = Target::Kafka)]
    pub target: Target,
    /// The database to write (postgres target), e.g. postgres://tally@127.0.0.1:15432/tally;
    /// the password comes from --pg-password-file or PGPASSWORD.
    #[arg(long, env = "TALLY_PG_URL")]
    pub pg_url: Option<String>,
    /// File whose first line is the password (postgres target); else PGPASSWORD.
    #[arg(long)]
    pub pg_password_file: Option<PathBuf>,
    /// Events per database transaction (postgres target).
    #[arg(long, default_value_t = 50)]
    pub batch: u64,
}

/// Where `tally load` writes its workload.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Kafka,
    Postgres,
}

/// Options only the kafka target uses, by clap id.
const KAFKA_ONLY: [&str; 5] = [
    "duplicates",
    "conflicts",
    "topic",
    "partitions",
    "bootstrap",
];
/// Options only the postgres target uses, by clap id.
const POSTGRES_ONLY: [&str; 3] = ["pg_url", "pg_password_file", "batch"];

// By hand rather than derived: only the matches say whether an option was given or defaulted.
impl clap::FromArgMatches for LoadCommand {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let target = LoadTarget::from_arg_matches(m)?;
        let other = match target.target {
            Target::Kafka => &POSTGRES_ONLY[..],
            Target::Postgres => &KAFKA_ONLY[..],
        };
        let given_elsewhere = other
            .iter()
            .copied()
            .filter(|id| m.value_source(id) == Some(clap::parser::ValueSource::CommandLine))
            .collect();
        Ok(Self {
            workload: LoadArgs::from_arg_matches(m)?,
            target,
            given_elsewhere,
        })
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for LoadCommand {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        LoadTarget::augment_args(LoadArgs::augment_args(cmd))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        LoadTarget::augment_args_for_update(LoadArgs::augment_args_for_update(cmd))
    }
}

/// `tally load`.
pub fn load(cmd: LoadCommand) -> anyhow::Result<ExitCode> {
    if let Some(id) = cmd.given_elsewhere.first() {
        let flag = id.replace('_', "-");
        match cmd.target.target {
            Target::Postgres if matches!(*id, "duplicates" | "conflicts") => anyhow::bail!(
                "--{flag} cannot be used with --target postgres: each event is written once, \
                 and redeliveries must come through the pipeline (Debezium relays at least once)"
            ),
            Target::Postgres => anyhow::bail!("--{flag} is for --target kafka only"),
            Target::Kafka => anyhow::bail!("--{flag} is for --target postgres only"),
        }
    }
    match cmd.target.target {
        Target::Kafka => load_kafka(cmd.workload),
        Target::Postgres => load_postgres(&cmd.workload, &cmd.target),
    }
}

/// `tally load --target postgres`: history and outbox rows, and the report on stdout.
fn load_postgres(args: &LoadArgs, target: &LoadTarget) -> anyhow::Result<ExitCode> {
    let (spec, _) = load_spec(args)?;
    let spec = workload::postgres::PgSpec {
        flow: spec.flow,
        events: spec.events,
        keys: spec.keys,
        invalid: spec.invalid,
        batch: target.batch,
        rate: spec.rate,
        seed: spec.seed,
    };
    spec.check()?;
    let url = target
        .pg_url
        .as_deref()
        .context("--target postgres needs --pg-url (or TALLY_PG_URL)")?;
    let password = pg_password(target.pg_password_file.as_deref())?;
    let mut client =
        workload::postgres::connect(url, password.as_ref().map(crate::secret::Secret::expose))?;
    let mut shown = std::time::Instant::now();
    let report = workload::postgres::write(&mut client, &spec, |r| {
        if shown.elapsed() >= std::time::Duration::from_secs(5) {
            shown = std::time::Instant::now();
            tracing::info!("{} of {} events written", r.events, spec.events);
        }
    })?;
    eprintln!(
        "wrote {} {} events ({} poison) to PostgreSQL in {} transactions, {} ms ({:.0} events/s)",
        report.events,
        report.flow,
        report.invalid,
        report.transactions,
        report.elapsed_ms,
        report.events_per_sec
    );
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}

/// The PostgreSQL password: the first line of `file`, else PGPASSWORD (none: the server may
/// not ask). Registered for redaction, so no later output shows it.
fn pg_password(file: Option<&Path>) -> anyhow::Result<Option<crate::secret::Secret>> {
    let value = match file {
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("reading --pg-password-file {}", f.display()))?;
            let line = text.lines().next().unwrap_or_default().to_string();
            anyhow::ensure!(
                !line.is_empty(),
                "--pg-password-file {} is empty",
                f.display()
            );
            Some(line)
        }
        None => std::env::var("PGPASSWORD").ok().filter(|p| !p.is_empty()),
    };
    Ok(value.map(crate::secret::Secret::new))
}

/// `tally load --target kafka`: the workload to the input topic.
fn load_kafka(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let (spec, topic) = load_spec(&args)?;
    let passthrough = BTreeMap::new();
    ensure_input(&args.bootstrap, &passthrough, &topic, args.partitions)?;
    let report = workload::produce(&args.bootstrap, &passthrough, &topic, &spec)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}

/// The generator spec and topic of `tally load` arguments.
pub fn load_spec(args: &LoadArgs) -> anyhow::Result<(LoadSpec, String)> {
    let flow: Flow = args
        .flow
        .parse()
        .map_err(|_| anyhow::anyhow!("--flow must be inventory or ledger, not `{}`", args.flow))?;
    for (name, v) in [
        ("duplicates", args.duplicates),
        ("invalid", args.invalid),
        ("conflicts", args.conflicts),
    ] {
        anyhow::ensure!((0.0..1.0).contains(&v), "--{name} must be within [0, 1)");
    }
    anyhow::ensure!(args.keys > 0, "--keys must be > 0");
    let topic = args
        .topic
        .clone()
        .unwrap_or_else(|| format!("{}.events", args.flow));
    let spec = LoadSpec {
        flow,
        events: args.events,
        keys: args.keys,
        duplicates: args.duplicates,
        invalid: args.invalid,
        conflicts: args.conflicts,
        rate: args.rate,
        seed: args.seed,
    };
    Ok((spec, topic))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> LoadCommand {
        let argv = ["tally", "load"].iter().chain(args);
        match Cli::try_parse_from(argv).map(|c| c.command) {
            Ok(Command::Load(cmd)) => cmd,
            Ok(_) => panic!("not a load"),
            Err(e) => panic!("{e}"),
        }
    }

    fn refusal(args: &[&str]) -> String {
        load(parse(args))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn defaults_are_not_options_given_to_the_other_target() {
        let cmd = parse(&["--target", "postgres", "--flow", "ledger"]);
        assert_eq!(cmd.target.target, Target::Postgres);
        assert_eq!((cmd.workload.duplicates, cmd.target.batch), (0.05, 50));
        assert!(cmd.given_elsewhere.is_empty());
        assert_eq!(parse(&[]).target.target, Target::Kafka);
        assert!(parse(&[]).given_elsewhere.is_empty());
    }

    #[test]
    fn each_target_refuses_the_other_ones_options_before_connecting() {
        let dup = refusal(&["--target", "postgres", "--duplicates", "0.1"]);
        assert!(
            dup.contains("--duplicates cannot be used with --target postgres"),
            "{dup}"
        );
        let conf = refusal(&["--target", "postgres", "--conflicts", "0"]);
        assert!(
            conf.contains("redeliveries must come through the pipeline"),
            "{conf}"
        );
        let topic = refusal(&["--target", "postgres", "--topic", "x"]);
        assert!(
            topic.contains("--topic is for --target kafka only"),
            "{topic}"
        );
        let batch = refusal(&["--batch", "10"]);
        assert!(
            batch.contains("--batch is for --target postgres only"),
            "{batch}"
        );
    }
}
