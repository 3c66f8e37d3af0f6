//! The `tally` binary: the processor and its tools (load, verify, demo).
//! Errors at this edge are `anyhow`; everything below has typed errors.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod cli;

/// mimalloc for Rust's allocations (sled's above all): +30% events/s under exactly_once on the
/// end-to-end benchmark, at the price of ~170 MiB more peak RSS (benches/report/e2e.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keeps the allocator's arenas in 4 KiB pages: with transparent huge pages a partly used 2 MiB
/// page stays resident, and the processor's peak RSS on the end-to-end benchmark was ~120 MiB
/// higher for no measurable gain in events/s. Best effort: an older kernel just ignores it.
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

extern "C" {
    /// mimalloc's option setter (linked in by the allocator crate, which does not re-export it).
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// `mi_option_purge_delay` in mimalloc 2 and 3 (the crate names the options around it, not it).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// Hands freed pages back to the OS at once instead of 10 ms later: under load the delayed ones
/// stayed resident, and the processor's peak RSS on 1M pre-loaded events was 200-208 MiB against
/// 227-235 with the delay, at the same events/s. `MIMALLOC_PURGE_DELAY` still overrides it.
fn purge_freed_memory_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: called first thing in main, before any other thread exists (the setter is not
        // thread safe); it stores one integer in mimalloc's option table.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
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
    Reconcile(cli::recovery::ReplayArgs),
    /// Dead-letter tools.
    #[command(subcommand)]
    Dlq(cli::recovery::DlqCommand),
    /// Point-in-time state of a key.
    #[command(subcommand)]
    State(cli::recovery::StateCommand),
}

fn main() -> ExitCode {
    purge_freed_memory_at_once();
    disable_transparent_huge_pages();
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
        Command::Replay(args) => cli::recovery::replay(args, "replay"),
        Command::Reconcile(args) => cli::recovery::replay(args, "reconcile"),
        Command::Dlq(cmd) => cli::recovery::dlq(cmd),
        Command::State(cmd) => cli::recovery::state(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn tally_demo(args: cli::DemoArgs) -> anyhow::Result<ExitCode> {
    cli::demo::run(args)
}
