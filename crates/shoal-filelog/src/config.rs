//! Tunables of the file log: segment sizes, compaction, paging, watching and retries.
//!
//! Owns: [`Config`] and its defaults (documented in `docs/FILELOG.md`).
//!
//! Invariants: every field has a safe default; values out of range are clamped where they
//! are used (a zero page size reads one entry, a fanout below 2 disables compaction).
//!
//! Never: changes the byte format. Two devices with different configs share a folder
//! without trouble.

use std::time::Duration;

use crate::faults::Faults;
use crate::segment::Compression;

/// Tunables of a folder replica, its sink and puller, and the mirror.
#[derive(Debug, Clone)]
pub struct Config {
    /// A segment whose body (before compression) reaches this many bytes is full: a sink
    /// cuts large batches into segments near this size (at a seal), and compaction never
    /// merges past it. Also bounds what a reader holds per cached segment. Default 8 MiB.
    pub segment_target_bytes: usize,
    /// A segment with this many entries is full (cut and compacted like the byte size).
    /// Default 16,384: a reader holds decoded segments in memory, and an entry of one small
    /// row decodes to a few hundred bytes, so this keeps each cached segment to a few MiB
    /// whatever the rows are like.
    pub segment_max_entries: usize,
    /// Compaction merges small adjacent segments of the sink's own log once `fanout` of
    /// them have piled up in one size tier, so a busy device keeps O(fanout × log n)
    /// files. Below 2, compaction is off. Default 8.
    pub compaction_fanout: usize,
    /// How segment bodies are written. Default zstd level 3.
    pub compression: Compression,
    /// Entries per page returned by `read_since` (extended to the next seal). Default 4,096.
    pub page_entries: usize,
    /// Decoded segments a puller keeps, so that consecutive pages of one segment are not
    /// decoded again. Memory is bounded by this times `segment_target_bytes` (for segments
    /// written with the default policy). Default 2: the segment being paged through and
    /// the one the read-ahead reaches.
    pub cached_segments: usize,
    /// Watch the folder with file-system events (`notify`). Default true.
    pub fs_events: bool,
    /// Rescan the folder this often even without events: network shares and many cloud
    /// clients emit none. Default 2 s.
    pub poll_interval: Duration,
    /// After a wake-up (a file event, a local commit), wait this long so that a burst of
    /// changes is handled by one pass. Default 50 ms.
    pub debounce: Duration,
    /// First delay before a file that failed verification is read again, and before a
    /// failed pass (folder unavailable) is retried; doubles up to `retry_max`. Default 250 ms.
    pub retry_initial: Duration,
    /// The longest retry delay. Default 30 s.
    pub retry_max: Duration,
    /// Failures of an unchanged file after which it appears in the status (before that,
    /// or while it keeps changing, it is presumed to be an upload in progress). Default 3.
    pub report_after: u32,
    /// Carry other origins' entries into the folder: after publishing its own log, a
    /// mirror that pushes writes, inside its own directory (`carried-<origin>-….seg` files),
    /// every other origin's entries the local replica holds beyond what the folder holds
    /// of that origin (all directories considered), so that a device syncing with both a
    /// folder and a relay bridges them. Default true.
    pub carry: bool,
    /// Faults injected at the folder's file-system steps (simulations only; none by
    /// default). See [`crate::faults`].
    pub faults: Faults,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            segment_target_bytes: 8 << 20,
            segment_max_entries: 16_384,
            compaction_fanout: 8,
            compression: Compression::Zstd { level: 3 },
            page_entries: 4096,
            cached_segments: 2,
            fs_events: true,
            poll_interval: Duration::from_secs(2),
            debounce: Duration::from_millis(50),
            retry_initial: Duration::from_millis(250),
            retry_max: Duration::from_secs(30),
            report_after: 3,
            carry: true,
            faults: Faults::default(),
        }
    }
}

impl Config {
    /// Short intervals for tests: 10 ms debounce, 50 ms polling, retries from 10 ms to
    /// 200 ms.
    pub fn for_tests() -> Self {
        Config {
            poll_interval: Duration::from_millis(50),
            debounce: Duration::from_millis(10),
            retry_initial: Duration::from_millis(10),
            retry_max: Duration::from_millis(200),
            ..Config::default()
        }
    }

    /// The timing of the sync loop this configuration runs.
    pub fn timing(&self) -> shoal_core::LoopTiming {
        shoal_core::LoopTiming {
            poll_interval: self.poll_interval,
            debounce: self.debounce,
            retry_initial: self.retry_initial,
            retry_max: self.retry_max,
        }
    }

    /// The wait before retrying after `failures` failed attempts in a row (at least 1): the
    /// sync loop's backoff.
    pub fn backoff(&self, failures: u32) -> Duration {
        self.timing().backoff(failures)
    }
}
