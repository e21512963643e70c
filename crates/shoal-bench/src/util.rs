//! Measurement helpers: wall time, peak resident memory, printing.

use std::time::{Duration, Instant};

/// Runs `f` and returns its result with the elapsed wall time.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

/// Resets the kernel's peak-RSS mark for this process (Linux `clear_refs` value 5), so a
/// later [`peak_rss_mib`] measures only what follows.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident set size since start or the last reset, in MiB (`VmHWM`).
pub fn peak_rss_mib() -> f64 {
    status_kib("VmHWM:") as f64 / 1024.0
}

/// Current resident set size in MiB.
pub fn rss_mib() -> f64 {
    status_kib("VmRSS:") as f64 / 1024.0
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// `n / seconds`.
pub fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// Prints one result row: name, figure, unit.
pub fn row(name: &str, value: f64, unit: &str) {
    println!("{name:<58} {value:>14.0} {unit}");
}

/// Runs this bench binary with `args` in a child process (so the child's peak RSS is its
/// own) and returns what it printed.
pub fn run_child<I, S>(args: I) -> anyhow::Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = std::process::Command::new(std::env::current_exe()?).args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "child process failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The number printed as `name<number>` (e.g. `seconds=1.5`) in a child's output.
pub fn field(text: &str, name: &str) -> anyhow::Result<f64> {
    use anyhow::Context;
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(name))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {name} in the child's output: {text}"))
}

/// Time the calling thread has spent on a CPU (Linux `/proc/thread-self/schedstat`), or
/// zero where that is not available.
pub fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// Who may join the workspace a catch-up bench writes, and whether its data entries are
/// encrypted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Privacy {
    /// Any device that knows the workspace id (the default of the API).
    Open,
    /// Invited devices only; data entries in plaintext.
    MembersOnly,
    /// Invited devices only; data entries end-to-end encrypted.
    Encrypted,
}

impl Privacy {
    /// `options` for creating a workspace of this kind.
    pub fn options(self, options: shoal::WorkspaceOptions) -> shoal::WorkspaceOptions {
        shoal::WorkspaceOptions {
            members_only: self != Privacy::Open,
            encrypted: self == Privacy::Encrypted,
            ..options
        }
    }

    /// What the bench prints for it.
    pub fn name(self) -> &'static str {
        match self {
            Privacy::Open => "open",
            Privacy::MembersOnly => "plain",
            Privacy::Encrypted => "encrypted",
        }
    }
}

/// A new device of `workspace` at `file`: with the invite code `code` (its text form) if
/// given (a members-only workspace), else by the workspace id (an open one).
pub fn join(
    file: &std::path::Path,
    workspace: &str,
    code: Option<&str>,
    options: shoal::WorkspaceOptions,
) -> anyhow::Result<shoal::Workspace> {
    use anyhow::Context;
    Ok(match code {
        Some(code) => {
            let code = shoal::core::invite::InviteCode::parse(code).context("invite code")?;
            anyhow::ensure!(
                code.workspace.to_string() == workspace,
                "the invite code is for another workspace"
            );
            shoal::Workspace::join_with_code(file, &code, options)?
        }
        None => shoal::Workspace::join(file, workspace.parse().context("workspace id")?, options)?,
    })
}

/// Copies the files under `from` to `to` (a folder the next catch-up may change without
/// the others seeing it).
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), target)?;
        }
    }
    Ok(())
}

/// Total size of the files under `path`.
pub fn dir_size(path: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            let p = e.path();
            total += if p.is_dir() { dir_size(&p) } else { e.metadata().map_or(0, |m| m.len()) };
        }
    }
    total
}

/// A folder a catch-up bench wrote, and how a new device joins its workspace.
pub struct Published {
    /// The shared folder.
    pub folder: std::path::PathBuf,
    /// The workspace id.
    pub workspace: String,
    /// An invite code (text form) for the device that catches up, in a members-only
    /// workspace.
    pub code: Option<String>,
    /// Entries in the folder, where the bench counts them.
    pub held: Option<u64>,
}

impl Published {
    /// The arguments of `command` (a catch-up child) that catches up into `file` from
    /// this folder.
    pub fn child_args(&self, command: &str, file: &std::path::Path) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = vec![
            command.into(),
            "--folder".into(),
            self.folder.clone().into(),
            "--workspace-id".into(),
            self.workspace.clone().into(),
            "--file".into(),
            file.into(),
        ];
        if let Some(code) = &self.code {
            args.extend(["--code".into(), code.into()]);
        }
        args
    }

    /// The same workspace in `folder` (a copy of this one).
    pub fn moved_to(&self, folder: std::path::PathBuf) -> Published {
        Published {
            folder,
            workspace: self.workspace.clone(),
            code: self.code.clone(),
            held: self.held,
        }
    }
}

/// What a catch-up child reported.
pub struct CatchupRun {
    /// Wall time of its sync pass.
    pub seconds: f64,
    /// Entries it pulled.
    pub pulled: u64,
    /// Its peak resident set size.
    pub peak_rss_mib: f64,
}

/// Runs a catch-up child with `args` in its own process (so its peak RSS is its own) and
/// reads its figures; checks it pulled every entry of `source` where those are counted.
pub fn run_catchup<I, S>(args: I, source: &Published) -> anyhow::Result<CatchupRun>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let text = run_child(args)?;
    let run = CatchupRun {
        seconds: field(&text, "seconds=")?,
        pulled: field(&text, "pulled=")? as u64,
        peak_rss_mib: field(&text, "peak_rss_mib=")?,
    };
    if let Some(held) = source.held {
        anyhow::ensure!(
            run.pulled == held,
            "the new device pulled {} of {held} entries",
            run.pulled
        );
    }
    Ok(run)
}
