//! The `shoal` command-line tool. Glue only: every behaviour lives in the library crates.

use clap::Parser;

/// Conflict-free sync of app data between devices.
#[derive(Parser)]
#[command(name = "shoal", version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
