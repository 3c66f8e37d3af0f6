//! The metering binary: tally's whole command line (`run`, `replay`, `reconcile`, `state get`,
//! `dlq replay`, `contract show`, ...) with the metering projection registered beside the
//! built-in ones. A flow runs it with `projection = "metering"` in tally.toml.

use std::process::ExitCode;

use tally::Registry;
use tally_metering::Metering;

fn main() -> ExitCode {
    tally::cli::main(Registry::builtin().register::<Metering>())
}
