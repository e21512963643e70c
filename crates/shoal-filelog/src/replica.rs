//! [`FolderReplica`]: a shared folder as a replica of every origin's log.
//!
//! Owns: the async face of the file log — [`LogSource`] over all origins (through the
//! [`FolderPuller`]), [`HasCursors`] (what the folder holds, verified at each tip), a
//! `watch_cursors` driven by file-system events with a polling fallback and debouncing,
//! and a [`LogProcessor`] that accepts only the device's own origin (through the
//! [`FolderSink`]).
//!
//! Invariants: blocking file I/O runs on tokio's blocking pool, never on an async worker.
//! Cursor events only move forward; a rescan is the truth (a folder that lost files shows
//! lower cursors on `cursors()`, never in an event). The watcher task lives as long as the
//! replica and stops when it is dropped.
//!
//! Never: writes a foreign origin (applying one is [`SyncError::Misuse`]), or creates the
//! shared folder itself.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use async_trait::async_trait;
use shoal_core::{
    BatchApplied, CursorBroadcast, CursorStream, DeviceKey, Entry, FileLogPuller, FileLogReplica,
    HasCursors, LogProcessor, LogSource, PeerCursors, PeerId, RejectReason, Replica, SyncError,
    WorkspaceId, run_blocking,
};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::carry::CarrySink;
use crate::config::Config;
use crate::layout::Layout;
use crate::puller::{BadFile, FolderPuller};
use crate::sink::FolderSink;
use crate::watch::{FsWatch, rearm};

/// A shared folder as a replica: reads every origin, writes only the device's own.
/// Multi-reader, single-writer: one per device and folder, owned by its [`crate::Mirror`].
#[derive(Debug, Clone)]
pub struct FolderReplica {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    layout: Layout,
    origin: PeerId,
    key: DeviceKey,
    config: Config,
    puller: Arc<FolderPuller>,
    /// Opened on first use, so a folder that is missing at start (an unmounted share)
    /// delays publishing instead of failing construction.
    sink: Mutex<Option<FolderSink>>,
    /// The carried logs' writer, opened on first use like the sink.
    carry: Mutex<Option<CarrySink>>,
    broadcast: CursorBroadcast,
    wake: Arc<Notify>,
    watcher: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let slot = self.watcher.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(task) = slot.take() {
            task.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section below completes its update before unlocking; a poisoned lock
    // only means another thread panicked elsewhere.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    fn with_sink<T>(
        &self,
        f: impl FnOnce(&mut FolderSink) -> Result<T, SyncError>,
    ) -> Result<T, SyncError> {
        let mut slot = lock(&self.sink);
        match &mut *slot {
            Some(sink) => f(sink),
            None => {
                let sink = FolderSink::open(
                    self.layout.root(),
                    self.layout.workspace(),
                    &self.key,
                    self.config.clone(),
                )?;
                f(slot.insert(sink))
            }
        }
    }
}

impl Inner {
    fn with_carry<T>(
        &self,
        f: impl FnOnce(&mut CarrySink) -> Result<T, SyncError>,
    ) -> Result<T, SyncError> {
        let mut slot = lock(&self.carry);
        match &mut *slot {
            Some(c) => f(c),
            None => {
                let c = CarrySink::open(
                    self.layout.root(),
                    self.layout.workspace(),
                    &self.key,
                    self.config.clone(),
                )?;
                f(slot.insert(c))
            }
        }
    }
}

/// What [`FolderReplica::carry_from`] did.
#[derive(Debug, Default)]
pub struct CarryReport {
    /// Entries carried into the folder, over all origins.
    pub carried: u64,
    /// Origins whose entries could not be carried (all or some), with why.
    pub refused: Vec<(PeerId, SyncError)>,
}

impl FolderReplica {
    /// The replica of `workspace` in the shared folder `folder`, for the device holding
    /// `key` (whose origin is the only one it writes). Touches nothing until used.
    pub fn new(
        folder: impl Into<PathBuf>,
        workspace: WorkspaceId,
        key: DeviceKey,
        config: Config,
    ) -> Self {
        let folder = folder.into();
        let layout = Layout::new(folder.clone(), workspace);
        FolderReplica {
            inner: Arc::new(Inner {
                origin: key.peer_id(&workspace),
                puller: Arc::new(FolderPuller::new(folder, workspace, config.clone())),
                layout,
                key,
                config,
                sink: Mutex::new(None),
                carry: Mutex::new(None),
                broadcast: CursorBroadcast::new(PeerCursors::new()),
                wake: Arc::new(Notify::new()),
                watcher: Mutex::new(None),
            }),
        }
    }

    /// The device's own origin (the only one this replica writes).
    pub fn origin(&self) -> PeerId {
        self.inner.origin
    }

    /// The workspace.
    pub fn workspace(&self) -> WorkspaceId {
        self.inner.layout.workspace()
    }

    /// The tunables.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The reader of every origin.
    pub fn puller(&self) -> &FolderPuller {
        &self.inner.puller
    }

    /// Bad files: those of other origins the puller keeps failing on, and damaged files of
    /// the device's own directory (which the sink replaces).
    pub fn bad_files(&self) -> Vec<BadFile> {
        let mut out = self.inner.puller.bad_files();
        if let Some(sink) = lock(&self.inner.sink).as_ref() {
            let now = std::time::SystemTime::now();
            out.extend(sink.bad_files().into_iter().map(|(path, reason)| BadFile {
                path,
                origin: self.inner.origin,
                reason,
                failures: 1,
                first_failure: now,
                last_failure: now,
            }));
        }
        out
    }

    /// Publishes the device's own entries that the folder lacks, read from `local`: learns
    /// the own directory anew (so vanished files are republished), then runs the core
    /// [`shoal_core::publish`] driver. Returns how many entries were published; each is
    /// durable in the folder on return.
    pub async fn publish_from(&self, local: Arc<dyn Replica<Entry>>) -> Result<u64, SyncError> {
        let inner = self.inner.clone();
        let runtime = tokio::runtime::Handle::current();
        let (count, next) = run_blocking(move || {
            inner.with_sink(|sink| {
                sink.refresh()?;
                // The core driver alternates async reads of the local replica with
                // synchronous, fsyncing sink calls; the whole loop runs here, on a blocking
                // thread, driving those reads with `block_on` (allowed on blocking threads).
                let count = runtime.block_on(shoal_core::publish(&*local, sink))?;
                Ok((count, shoal_core::FileLogSink::published(sink)))
            })
        })
        .await?;
        self.inner.broadcast.publish(&[(self.inner.origin, next)].into_iter().collect());
        Ok(count)
    }

    /// Carries into the folder every other origin's entries `local` holds beyond what the
    /// folder holds of that origin, counting its own directory and every carried copy (so
    /// what is in the folder already, by anyone, is not carried again). The entries are
    /// written unchanged into this device's own directory ([`CarrySink`]), continuing the
    /// folder's copy of each origin; an origin whose entries do not continue it (a fork, an
    /// entry the ingest pipeline refuses) is left alone and reported.
    pub async fn carry_from(
        &self,
        local: Arc<dyn Replica<Entry>>,
    ) -> Result<CarryReport, SyncError> {
        let mut report = CarryReport::default();
        let folder = self.cursors().await?;
        let have = local.cursors().await?;
        let own = self.inner.origin;
        for (origin, holds) in have.iter() {
            if origin == own || holds <= folder.get(&origin) {
                continue;
            }
            let puller = self.inner.puller.clone();
            let mut at = match run_blocking(move || puller.origin_position(origin)).await {
                Ok(p) => p,
                Err(e) if e.stalls_origin() => {
                    report.refused.push((origin, e));
                    continue;
                }
                Err(e) => return Err(e),
            };
            while at.next < holds {
                let page = local.read_since(origin, at.next).await?;
                if page.is_empty() {
                    break;
                }
                let inner = self.inner.clone();
                let done =
                    run_blocking(move || inner.with_carry(|c| c.carry(origin, at, page))).await?;
                report.carried += done.written;
                let stuck = done.end.next == at.next;
                at = done.end;
                if let Some(e) = done.refused {
                    report.refused.push((origin, e));
                    break;
                }
                if stuck {
                    break;
                }
            }
            self.inner.broadcast.publish(&[(origin, at.next)].into_iter().collect());
        }
        Ok(report)
    }

    fn ensure_watcher(&self) {
        let mut slot = lock(&self.inner.watcher);
        if slot.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        // Without a runtime there is nothing to drive the watcher; the stream then only
        // reflects scans made through `cursors()`.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        *slot = Some(runtime.spawn(watch_loop(Arc::downgrade(&self.inner))));
    }
}

/// Rescans the folder whenever a file event arrives (after `debounce`) or `poll_interval`
/// passes, and publishes the cursors it finds.
async fn watch_loop(replica: Weak<Inner>) {
    let mut fs_watch: Option<FsWatch> = None;
    loop {
        let Some(inner) = replica.upgrade() else { return };
        let wake = inner.wake.clone();
        let (poll, debounce) = (inner.config.poll_interval, inner.config.debounce);
        if inner.config.fs_events {
            fs_watch = rearm(fs_watch.take(), &inner.layout, &wake);
        }
        let puller = inner.puller.clone();
        drop(inner);
        let scan = run_blocking(move || puller.cursors()).await;
        let Some(inner) = replica.upgrade() else { return };
        match scan {
            Ok(cursors) => inner.broadcast.publish(&cursors),
            Err(e) => tracing::debug!(error = %e, "folder scan failed; will retry"),
        }
        drop(inner);
        tokio::select! {
            () = wake.notified() => tokio::time::sleep(debounce).await,
            () = tokio::time::sleep(poll) => {}
        }
    }
}

#[async_trait]
impl HasCursors for FolderReplica {
    async fn cursors(&self) -> Result<PeerCursors, SyncError> {
        let puller = self.inner.puller.clone();
        let cursors = run_blocking(move || puller.cursors()).await?;
        self.inner.broadcast.publish(&cursors);
        Ok(cursors)
    }

    fn watch_cursors(&self) -> CursorStream {
        self.ensure_watcher();
        self.inner.broadcast.subscribe()
    }
}

#[async_trait]
impl LogSource<Entry> for FolderReplica {
    async fn read_since(&self, origin: PeerId, from: u64) -> Result<Vec<Entry>, SyncError> {
        let puller = self.inner.puller.clone();
        let page = self.inner.config.page_entries;
        run_blocking(move || puller.read_entries(origin, from, page)).await
    }
}

#[async_trait]
impl LogProcessor<Entry> for FolderReplica {
    async fn apply_batch(
        &self,
        origin: PeerId,
        entries: Vec<Entry>,
    ) -> Result<BatchApplied, SyncError> {
        let own = self.inner.origin;
        if origin != own {
            return Err(SyncError::Misuse(format!(
                "the folder replica of {own} accepts only its own origin, not {origin}: \
                 every device publishes its own log"
            )));
        }
        if let Some(e) = entries.iter().find(|e| e.origin != own) {
            return Err(SyncError::Misuse(format!(
                "a batch of {own} contains {}#{}: every device publishes its own log",
                e.origin, e.index
            )));
        }
        let offered = entries.len();
        let inner = self.inner.clone();
        let out = run_blocking(move || inner.with_sink(|sink| sink.append(&entries))).await?;
        self.inner.broadcast.publish(&[(own, out.next)].into_iter().collect());
        if offered > 0 && out.new == 0 && out.duplicates == 0 {
            // A lone unsealed entry cannot be published yet (the same rule as every replica).
            return Err(SyncError::Rejected {
                origin,
                index: out.next,
                reason: RejectReason::UnsealedRunTooLong,
            });
        }
        Ok(out)
    }
}

impl FileLogReplica for FolderReplica {
    fn folder(&self) -> &Path {
        self.inner.layout.root()
    }
}
