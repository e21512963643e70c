//! Allocator tuning shared by the `shoal` and `shoal-bench` binaries (the bench includes
//! this file with `#[path]`, so there is one copy). Never used by the libraries: an app
//! that embeds Shoal chooses its own allocator settings.

/// Caps glibc's malloc at one arena. glibc gives each allocating thread its own arena (up
/// to 8 per core) and returns freed memory only from an arena's top, so a long catch-up
/// spread over tokio's blocking threads kept tens of MiB of freed memory and its RSS grew
/// with the data churned while the live heap stayed flat (`BENCHMARKS.md`, shared folder).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn limit_malloc_arenas() {
    // SAFETY: `mallopt` only changes allocator parameters; it runs first thing in `main`,
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Other allocators need no cap.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn limit_malloc_arenas() {}
