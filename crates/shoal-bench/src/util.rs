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
