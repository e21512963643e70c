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
