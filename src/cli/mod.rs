//! The `tally` command line: every subcommand, for the projections of a registry. A binary of
//! one's own projections is `fn main() -> ExitCode { tally::cli::main(registry) }`.
//! Each command prints a human summary on stderr and a JSON report on stdout.

pub mod demo;
pub mod demo_source;
pub mod load;
pub mod local;
pub mod recovery;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::config::{Config, ProcessingGuarantee};
use crate::oracle::{self, OracleSpec};
use crate::registry::Registry;
use crate::workload::Flow;
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
pub use load::{load, load_spec, LoadArgs, LoadCommand};

#[derive(Parser)]
#[command(
    name = "tally",
    version,
    about = "Exactly-once, provable event projections on Apache Kafka"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the processor.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Produce a deterministic workload (same seed, same events) and print what was sent.
    Load(LoadCommand),
    /// Recompute every key independently from the input topic and compare with the output.
    Verify(VerifyArgs),
    /// Start a local broker, run the processor on a mixed workload, and check the results.
    Demo(DemoArgs),
    /// Show a flow's recovery contract.
    #[command(subcommand)]
    Contract(recovery::ContractCommand),
    /// Rebuild scoped state from history into a shadow, compare, and (--apply) repair; evidence.
    Replay(recovery::ReplayArgs),
    /// Recompute from history, compare with live state, run the contract's checks; evidence.
    Reconcile(recovery::ReconcileArgs),
    /// Dead-letter tools.
    #[command(subcommand)]
    Dlq(recovery::DlqCommand),
    /// Point-in-time state of a key.
    #[command(subcommand)]
    State(recovery::StateCommand),
}

/// Runs the `tally` command line with the projections of `registry`; the exit code says
/// whether the command succeeded (and, for checks, whether the result is trusted).
pub fn main(registry: Registry) -> ExitCode {
    disable_transparent_huge_pages();
    crate::redact::install_panic_hook();
    let cli = Cli::parse();
    // The demo narrates itself; the processor's info logs would drown it.
    init_tracing(if matches!(cli.command, Command::Demo(_)) {
        "warn"
    } else {
        "info"
    });
    let r = &registry;
    let result = match cli.command {
        Command::Run { config } => {
            run(&config, r).with_context(|| format!("tally run --config {}", config.display()))
        }
        Command::Load(args) => load(args),
        Command::Verify(args) => verify(args, r),
        Command::Demo(args) if args.source == DemoSource::Postgres => demo_source::run(&args, r),
        Command::Demo(args) => demo::run(args, r),
        Command::Contract(cmd) => recovery::contract(cmd, r),
        Command::Replay(args) => recovery::replay(args, r),
        Command::Reconcile(args) => recovery::reconcile(args, r),
        Command::Dlq(cmd) => recovery::dlq(cmd, r),
        Command::State(cmd) => recovery::state(cmd, r),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", crate::redact::redact(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

/// Keeps the allocator's arenas in 4 KiB pages: with transparent huge pages a partly used 2 MiB
/// page stays resident, which showed as a much higher peak RSS for no gain in events/s. Best
/// effort: an older kernel just ignores it.
fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        eprintln!(
            "tally: could not disable transparent huge pages: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Logs to stderr; `RUST_LOG` filters (else `default`).
pub fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::redact::stderr)
        .try_init();
}

/// `tally run`: serve HTTP, then process until SIGTERM/SIGINT.
pub fn run(config: &Path, registry: &Registry) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(config, registry)?;
    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&shutdown))
            .context("installing signal handlers")?;
    }
    crate::processor::run(cfg, registry, shutdown)?;
    Ok(ExitCode::SUCCESS)
}

/// Creates an input topic when missing (the processor itself never creates inputs).
pub fn ensure_input(
    bootstrap: &str,
    passthrough: &BTreeMap<String, String>,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<()> {
    let topics = crate::kafka::topics::Topics::connect(bootstrap, passthrough)?;
    if topics.partitions(topic)?.is_none() {
        topics.create(topic, partitions, -1, crate::kafka::topics::TopicRole::Log)?;
    }
    Ok(())
}

/// Arguments of `tally verify`.
#[derive(Args, Debug, Clone)]
pub struct VerifyArgs {
    /// The processor's config (bootstrap, topics, group).
    #[arg(long)]
    pub config: PathBuf,
    /// Flow to check (default: every flow).
    #[arg(long)]
    pub flow: Option<String>,
    /// Read input only up to the group's committed offsets (for a processor still running).
    #[arg(long)]
    pub committed: bool,
    /// Also check the changelog: its state keys and dedupe entries must equal the recomputation
    /// (holds while no dedupe entry has expired, i.e. history shorter than dedupe_retention).
    #[arg(long)]
    pub changelog: bool,
}

/// `tally verify`: exits 1 when any key differs from the independent recomputation (the
/// built-in projections only: the oracle is a second implementation of each).
pub fn verify(args: VerifyArgs, registry: &Registry) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(&args.config, registry)?;
    let mut pass = true;
    for f in &cfg.flows {
        if args.flow.as_ref().is_some_and(|n| *n != f.name) {
            continue;
        }
        let report = oracle::check(&oracle_spec(&cfg, f, args.committed, args.changelog)?)?;
        pass &= report.pass;
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(if pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The oracle's view of one configured flow.
pub fn oracle_spec(
    cfg: &Config,
    f: &crate::config::FlowConfig,
    committed: bool,
    changelog: bool,
) -> anyhow::Result<OracleSpec> {
    let flow: Flow = f.projection_name().parse().map_err(|_| {
        anyhow::anyhow!(
            "flow `{}` has no oracle (built-in projections only)",
            f.name
        )
    })?;
    Ok(OracleSpec {
        bootstrap: cfg.bootstrap_servers.clone(),
        kafka: (*cfg.kafka).clone(),
        flow,
        input: f.input.clone(),
        output: f.output.clone(),
        dead_letter: f.dead_letter.clone(),
        group: committed.then(|| cfg.application_id.clone()),
        changelog: changelog.then(|| f.changelog_topic(&cfg.application_id)),
        dedupe_retention_ms: i64::try_from(cfg.dedupe_retention.as_millis()).unwrap_or(i64::MAX),
        repeats_allowed: cfg.processing_guarantee != ProcessingGuarantee::ExactlyOnce,
    })
}

/// Arguments of `tally demo`.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Where the events come from: `kafka` (tally's JSON, produced to the input topics) or
    /// `postgres` (rows with an outbox in PostgreSQL, relayed by Debezium in Kafka Connect).
    #[arg(long, value_enum, default_value_t = DemoSource::Kafka)]
    pub source: DemoSource,
    /// Inventory events to load (ledger gets half as many); default 100000, with postgres 20000.
    #[arg(long)]
    pub events: Option<u64>,
    /// With postgres: rows written per second (0: as fast as the database takes them).
    #[arg(long, default_value_t = 2_000)]
    pub rate: u64,
    /// Broker port for the local Kafka the demo starts.
    #[arg(long, env = "KAFKA_PORT", default_value_t = 9092)]
    pub kafka_port: u16,
    /// With postgres: the local PostgreSQL's port.
    #[arg(long, env = "PG_PORT", default_value_t = 15432)]
    pub pg_port: u16,
    /// With postgres: leave Kafka Connect running through the load (a steady-state latency
    /// measurement) instead of killing it halfway.
    #[arg(long)]
    pub no_kill: bool,
    /// With postgres: the local Kafka Connect's REST port.
    #[arg(long, env = "CONNECT_PORT", default_value_t = 18083)]
    pub connect_port: u16,
    /// Leave the local servers running afterwards.
    #[arg(long)]
    pub keep_broker: bool,
}

/// Where `tally demo` takes its events from.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoSource {
    Kafka,
    Postgres,
}
