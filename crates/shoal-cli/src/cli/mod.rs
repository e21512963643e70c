//! The `shoal` command-line tool: parses the command line ([`args`]), runs one command,
//! and turns the outcome into an exit code — 0 ok, 1 nothing found, 2 error — with every
//! error on stderr as `shoal: <message>`. A broken pipe (`shoal log | head`) ends quietly.
//!
//! Modules: [`args`] (every flag, defined once), [`out`] (stdout/stderr, JSON envelopes,
//! how values and times are shown), [`values`] (reading typed values), and one module per
//! group of commands: [`init`], [`tables`], [`rows`], [`sync`], [`log`], [`verify`],
//! [`demo`].
//!
//! Never: panics on anything typed or read; writes the workspace outside the library's
//! transactions.

mod args;
mod clock;
mod demo;
mod init;
mod log;
mod members;
mod out;
mod relay;
mod rows;
mod sync;
mod tables;
mod values;
mod verify;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, anyhow, bail};
use clap::{CommandFactory, FromArgMatches};
use shoal::Workspace;
use shoal::sqlite::OpenError;

use args::{Cli, Command, TableCommand};
use out::Out;

/// How a command ended, when it did not fail outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done; exit code 0.
    Ok,
    /// Nothing matched (`get` of a missing row); exit code 1.
    NothingFound,
    /// Some part failed and was reported on stderr, the rest was done; exit code 2.
    Failed,
    /// Stopped by Ctrl-C (`sql`); exit code 130, as a shell reports a SIGINT.
    Interrupted,
}

impl Outcome {
    /// The exit code.
    pub fn code(self) -> u8 {
        match self {
            Outcome::Ok => 0,
            Outcome::NothingFound => 1,
            Outcome::Failed => 2,
            Outcome::Interrupted => 130,
        }
    }
}

/// What every command gets: the global flags, the output, and the raw matches (for the
/// order of repeated flags).
pub struct Ctx {
    workspace: Option<PathBuf>,
    out: Out,
    matches: clap::ArgMatches,
}

impl Ctx {
    /// A second context for a task that runs beside this one (its own stdout handle).
    fn sibling(&self) -> Ctx {
        Ctx {
            workspace: self.workspace.clone(),
            out: Out::new(self.out.is_json()),
            matches: self.matches.clone(),
        }
    }

    /// The workspace path from --workspace or SHOAL_WORKSPACE.
    fn workspace_path(&self) -> Result<&Path> {
        self.workspace.as_deref().ok_or_else(|| {
            anyhow!("no workspace given: pass --workspace PATH or set SHOAL_WORKSPACE")
        })
    }

    /// Opens the workspace, with messages that say what to do about a wrong path.
    fn open(&self) -> Result<Workspace> {
        open_workspace(self.workspace_path()?)
    }
}

/// Opens an existing workspace file (see [`Ctx::open`]).
pub fn open_workspace(path: &Path) -> Result<Workspace> {
    if path.is_dir() {
        bail!(
            "{}: is a directory, not a workspace file (a workspace is one file; create one \
             with `shoal init --workspace FILE`)",
            path.display()
        );
    }
    Workspace::open(path, clock::options()).map_err(|e| match e {
        shoal::Error::Open(OpenError::Missing { path }) => anyhow!(
            "{}: no such workspace file (create one with `shoal init --workspace {}`, or check \
             the path)",
            path.display(),
            path.display()
        ),
        other => other.into(),
    })
}

/// Runs the tool and returns its exit code.
pub fn main() -> ExitCode {
    init_tracing();
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => return clap_exit(e),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => return clap_exit(e),
    };
    let mut ctx = Ctx { workspace: cli.workspace, out: Out::new(cli.json), matches };
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| anyhow!("cannot start the async runtime: {e}"))
        .and_then(|rt| rt.block_on(run(cli.command, &mut ctx)));
    match result {
        Ok(outcome) => ExitCode::from(outcome.code()),
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            out::warn(error_text(&e));
            ExitCode::from(2)
        }
    }
}

async fn run(command: Command, ctx: &mut Ctx) -> Result<Outcome> {
    match command {
        Command::Init(a) => init::run(ctx, a).await,
        Command::Table(TableCommand::Create(a)) => tables::create(ctx, a),
        Command::Table(TableCommand::Alter(a)) => tables::alter(ctx, a),
        Command::Table(TableCommand::List) => tables::list(ctx),
        Command::Put(a) => warn_after(ctx, |ctx| rows::put(ctx, a)),
        Command::Get(a) => rows::get(ctx, a),
        Command::Delete(a) => warn_after(ctx, |ctx| rows::delete(ctx, a)),
        Command::Sql(a) => rows::sql(ctx, a),
        Command::Watch(a) => rows::watch(ctx, a).await,
        Command::Sync(a) => {
            let r = sync::run(ctx, a).await;
            warn_clock(ctx);
            r
        }
        Command::Status(a) => {
            let r = sync::status(ctx, a).await;
            warn_clock(ctx);
            r
        }
        Command::RecoverClock(a) => clock::run(ctx, a).await,
        Command::RecoverFork(a) => clock::recover_fork(ctx, a).await,
        Command::Log(a) => log::run(ctx, a),
        Command::Verify(a) => verify::run(ctx, a),
        Command::Demo(a) => demo::run(ctx, a).await,
        Command::Invite(a) => members::invite(ctx, a).await,
        Command::Join(a) => members::join(ctx, a).await,
        Command::Members => members::list(ctx),
        Command::Admit(a) => members::admit(ctx, a).await,
        Command::Remove(a) => members::remove(ctx, a).await,
        Command::Leave(a) => members::leave(ctx, a).await,
        Command::Serve(a) => relay::serve(ctx, a).await,
    }
}

/// Runs a writing command, then warns if this device's clock state is ahead.
fn warn_after(ctx: &mut Ctx, f: impl FnOnce(&mut Ctx) -> Result<Outcome>) -> Result<Outcome> {
    let r = f(ctx);
    warn_clock(ctx);
    r
}

/// Warns if this device's clock state is ahead (nothing if the workspace does not open).
fn warn_clock(ctx: &Ctx) {
    if let Ok(ws) = ctx.open() {
        clock::warn_if_ahead(&ws);
    }
}

/// Completes on Ctrl-C (SIGINT) or, on Unix, SIGTERM: how `sync --watch` and `watch` end.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        // If the handler cannot be installed, only the other signal (or killing) ends us.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// Prints a clap error (usage mistakes as `shoal: ...`, exit 2) or help/version (exit 0).
fn clap_exit(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // Help goes to stdout; a closed pipe there is not worth reporting.
            let _ = e.print();
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => {
            let text = e.render().to_string();
            let text = text.strip_prefix("error: ").unwrap_or(&text);
            out::warn(text.trim_end());
            ExitCode::from(2)
        }
    }
}

/// An error with its causes, `outer: cause: cause`, each said once: a cause whose text
/// the message already holds (an error that shows its source in its own text) is left
/// out, and so is SQLite's bare `Error code N: …` under rusqlite's message.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        if cause.downcast_ref::<rusqlite::ffi::Error>().is_some() {
            continue;
        }
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
    }
    text
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Log lines of the library crates on stderr, only when asked for with `SHOAL_LOG`
/// (e.g. `SHOAL_LOG=debug`): by default the commands report problems themselves.
fn init_tracing() {
    if let Ok(filter) = std::env::var("SHOAL_LOG") {
        use std::io::IsTerminal;
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            // Colours only for a person at a terminal: a relay's log file stays plain text.
            .with_ansi(std::io::stderr().is_terminal())
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .try_init();
    }
}
