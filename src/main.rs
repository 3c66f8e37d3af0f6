//! The `tally` binary: the command line with the built-in projections (inventory, ledger).
//! A crate of one's own projections has a `main` like this one, with its registry.

use std::process::ExitCode;

/// jemalloc for Rust's allocations (sled's above all): against the system allocator and
/// mimalloc it used less CPU and peak RSS on the end-to-end benchmark (benches/report/).
/// `_RJEM_MALLOC_CONF` tunes it at start.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    tally::cli::main(tally::Registry::builtin())
}
