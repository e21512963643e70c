//! The `shoal` command-line tool. Glue only: every behaviour lives in the library crates;
//! the commands, their output and their exit codes are described in `docs/CLI.md`.

mod cli;
mod malloc;

fn main() -> std::process::ExitCode {
    malloc::limit_malloc_arenas();
    cli::main()
}
