//! The `shoal` command-line tool. Glue only: every behaviour lives in the library crates;
//! the commands, their output and their exit codes are described in `docs/CLI.md`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
