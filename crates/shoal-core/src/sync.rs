//! The sync traits: what a replica, a log source and a log processor are.
//!
//! Owns: [`HasCursors`], [`LogSource`], [`LogProcessor`], [`Replica`], the file-log roles
//! [`FileLogSink`], [`FileLogPuller`] and [`FileLogReplica`], and the outcomes [`Applied`]
//! and [`BatchApplied`].
//!
//! Invariants every implementation keeps:
//! - `apply` is idempotent and contiguous per origin: an index below the cursor is a
//!   harmless duplicate (`Applied { new: false }`), the index at the cursor applies and
//!   advances it, an index above it is [`SyncError::Gap`]. Applying is atomic with the
//!   cursor advance, and an error changes nothing.
//! - `read_since` returns a bounded, ascending batch of one origin's entries starting at
//!   `from` (expunged markers included) that ends on a sealed entry; empty means drained.
//! - `watch_cursors` yields a `Snapshot` first, then `Advanced` deltas.
//!
//! All traits are object-safe (`async_trait` boxes the futures), so drivers can take
//! `&dyn LogSource<E>` whatever the backend.

use std::path::Path;

use async_trait::async_trait;

use crate::cursors::{CursorStream, PeerCursors};
use crate::entry::{ChainPosition, Entry};
use crate::error::SyncError;
use crate::ids::{PeerId, WorkspaceId};

/// The outcome of applying one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// False when the entry was already there (a harmless duplicate).
    pub new: bool,
}

/// The outcome of applying a batch of one origin's entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchApplied {
    /// Entries that were applied.
    pub new: u64,
    /// Entries that were already there.
    pub duplicates: u64,
    /// The processor's cursor for the origin afterwards.
    pub next: u64,
}

/// Where an item of a log sits: its origin and index. Drivers use it to page through a
/// source.
pub trait LogPosition {
    /// The origin.
    fn origin(&self) -> PeerId;
    /// The index in the origin's log.
    fn index(&self) -> u64;
}

impl LogPosition for Entry {
    fn origin(&self) -> PeerId {
        self.origin
    }
    fn index(&self) -> u64 {
        self.index
    }
}

/// Something that knows how far it has each origin's log.
#[async_trait]
pub trait HasCursors: Send + Sync {
    /// The current cursors.
    async fn cursors(&self) -> Result<PeerCursors, SyncError>;

    /// A stream of cursor events: a `Snapshot`, then `Advanced` deltas. A watcher that falls
    /// behind skips to newer state; it never blocks the replica.
    fn watch_cursors(&self) -> CursorStream;
}

/// The read side of a replica.
#[async_trait]
pub trait LogSource<E: Send + 'static>: HasCursors {
    /// Entries of `origin` from index `from` on, ascending, at most a bounded page, ending on
    /// a sealed entry. Empty when the source has nothing at or after `from`.
    async fn read_since(&self, origin: PeerId, from: u64) -> Result<Vec<E>, SyncError>;
}

/// The write side of a replica: applies entries of any origin.
#[async_trait]
pub trait LogProcessor<E: LogPosition + Send + 'static>: HasCursors {
    /// Applies ascending entries of one origin, as one transaction where the backend has
    /// them (see the module doc for the duplicate / advance / gap rule). On error, entries
    /// before the failing one may have been applied; the processor's cursor says how far it
    /// got.
    async fn apply_batch(&self, origin: PeerId, entries: Vec<E>)
    -> Result<BatchApplied, SyncError>;

    /// Applies one entry: a batch of one.
    async fn apply(&self, entry: E) -> Result<Applied, SyncError> {
        let origin = entry.origin();
        let out = self.apply_batch(origin, vec![entry]).await?;
        Ok(Applied { new: out.new > 0 })
    }

    /// Origins a pull should take before the others (a replica that judges membership
    /// names its admins, so that in one pass a removal is stored before the removed
    /// device's later entries are). Default: none, in id order.
    fn pull_first(&self) -> Vec<PeerId> {
        Vec::new()
    }
}

/// Both sides: a replica can serve, relay and merge logs. The SQL oplog is one.
pub trait Replica<E: LogPosition + Send + 'static>: LogSource<E> + LogProcessor<E> {}

impl<E: LogPosition + Send + 'static, T: LogSource<E> + LogProcessor<E> + ?Sized> Replica<E> for T {}

/// Appends the device's *own* entries to its own log in a shared folder.
///
/// A sink is bound to one origin when it is made (from the device key that signs its
/// segments); no method takes an origin, so it cannot write another device's log.
pub trait FileLogSink: Send {
    /// The origin this sink writes.
    fn origin(&self) -> PeerId;

    /// The next index not yet published.
    fn published(&self) -> u64;

    /// The workspace the sink writes for.
    fn workspace(&self) -> WorkspaceId;

    /// The chain position after the last published entry (what the sink's store holds).
    fn position(&self) -> ChainPosition;

    /// Where the published log lives, for messages (a directory, a relay).
    fn describe(&self) -> String;

    /// Publishes the given entries, which must be this sink's origin's and continue at
    /// [`FileLogSink::published`]; durable (fsynced and renamed into place) on return.
    fn publish(&mut self, entries: &[Entry]) -> Result<(), SyncError>;
}

/// A synchronous reader over the per-origin segment directories of a shared folder.
pub trait FileLogPuller: Send + Sync {
    /// The origins that have a log directory in the folder.
    fn list_peers(&self) -> Result<Vec<PeerId>, SyncError>;

    /// Verified entries of `origin` from index `from` on, at most about `max`, ending on a
    /// sealed entry; empty when the folder has nothing at or after `from`.
    fn read_entries(&self, origin: PeerId, from: u64, max: usize) -> Result<Vec<Entry>, SyncError>;
}

/// A file log as a replica: multi-reader, single-writer. Owned by its mirror (the driver
/// that pairs a folder with a local replica), never shared between writers.
pub trait FileLogReplica: Replica<Entry> {
    /// The shared folder.
    fn folder(&self) -> &Path;
}

/// Runs blocking work (file or database I/O) for an async trait method on tokio's blocking
/// pool. A task that panicked or was cancelled is reported as a bug.
pub async fn run_blocking<T, F>(f: F) -> Result<T, SyncError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, SyncError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SyncError::Bug(format!("a blocking replica task did not complete: {e}")))?
}
