//! The `tally` binary: the processor and its tools (load, verify, demo).
//! Errors at this edge are `anyhow`; everything below has typed errors.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod cli;

/// jemalloc for Rust's allocations (sled's above all): against the system allocator +26% events/s
/// on 1M pre-loaded events, and against mimalloc, which tally used before, a few % less CPU and
/// peak RSS (README, "Memory at 1M keys"). `_RJEM_MALLOC_CONF` tunes it at start.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Keeps the allocator's arenas in 4 KiB pages: with transparent huge pages a partly used 2 MiB
/// page stays resident, and the processor's peak RSS on the end-to-end benchmark was ~120 MiB
/// higher (measured with mimalloc, the allocator then) for no measurable gain in events/s. Best
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
    Load(cli::LoadArgs),
    /// Recompute every key independently from the input topic and compare with the output.
    Verify(cli::VerifyArgs),
    /// Start a local broker, run the processor on a mixed workload, and check the results.
    Demo(cli::DemoArgs),
    /// Show a flow's recovery contract.
    #[command(subcommand)]
    Contract(cli::recovery::ContractCommand),
    /// Rebuild scoped state from history into a shadow, compare, and (--apply) repair; evidence.
    Replay(cli::recovery::ReplayArgs),
    /// Recompute from history, compare with live state, run the contract's checks; evidence.
    Reconcile(cli::recovery::ReconcileArgs),
    /// Dead-letter tools.
    #[command(subcommand)]
    Dlq(cli::recovery::DlqCommand),
    /// Point-in-time state of a key.
    #[command(subcommand)]
    State(cli::recovery::StateCommand),
}

fn main() -> ExitCode {
    disable_transparent_huge_pages();
    tally::redact::install_panic_hook();
    let cli = Cli::parse();
    // The demo narrates itself; the processor's info logs would drown it.
    cli::init_tracing(if matches!(cli.command, Command::Demo(_)) {
        "warn"
    } else {
        "info"
    });
    let result = match cli.command {
        Command::Run { config } => {
            cli::run(&config).with_context(|| format!("tally run --config {}", config.display()))
        }
        Command::Load(args) => cli::load(args),
        Command::Verify(args) => cli::verify(args),
        Command::Demo(args) => tally_demo(args),
        Command::Contract(cmd) => cli::recovery::contract(cmd),
        Command::Replay(args) => cli::recovery::replay(args),
        Command::Reconcile(args) => cli::recovery::reconcile(args),
        Command::Dlq(cmd) => cli::recovery::dlq(cmd),
        Command::State(cmd) => cli::recovery::state(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", tally::redact::redact(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

fn tally_demo(args: cli::DemoArgs) -> anyhow::Result<ExitCode> {
    cli::demo::run(args)
}
