//! Sync of a [`Workspace`] over a shared folder: checks the folder, runs the mirror of
//! `shoal-filelog`, and records the last successful sync so `status` can show it from any
//! process.
//!
//! Never: creates the shared folder (a missing folder is an error, never silently replaced
//! by an empty one), or writes anything into it but this device's own log.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use shoal_core::{FileLogPuller, FileLogSink, SyncError, own_log_continues};
use shoal_filelog::{Config, Mirror, MirrorStatus, StalledOrigin, SyncReport};

use crate::error::{Error, Result};
use crate::workspace::Workspace;

const LAST_SYNC: &str = "last_sync";
/// Metadata key of the last successful relay sync (`<unix ms>\t<url>`).
pub(crate) const LAST_RELAY_SYNC: &str = "last_relay_sync";

/// The outcome of one folder sync: what moved, and the mirror's status after it (stalled
/// origins, bad files with their paths).
#[derive(Debug, Clone)]
pub struct FolderSync {
    /// What the pass did.
    pub report: SyncReport,
    /// The status after the pass.
    pub status: MirrorStatus,
    /// How far this device's clock state is ahead of its wall clock, if by more than
    /// receivers accept: what it publishes stalls on every other device
    /// ([`Workspace::clock_ahead`]).
    pub clock_ahead: Option<shoal_core::ClockSkew>,
}

/// When and where this workspace last synced successfully.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastSync {
    /// Unix milliseconds.
    pub at_millis: u64,
    /// The folder (or, later, the relay) it synced with.
    pub with: String,
}

impl Workspace {
    /// Own log first (before the first local write after opening): looks at what the folder
    /// this workspace last synced with holds of this device's own log. If the folder is
    /// ahead (a backup of this device was restored), takes those entries back first, so the
    /// write lands after them; if it holds a different entry at an index this device holds
    /// (a copied file, a backup that had written), records the fork and refuses. A folder
    /// that cannot be reached now is looked at again before the next write or at the next
    /// sync, which checks the same.
    pub(crate) fn own_log_first(&self) -> Result<()> {
        if self.own_log_checked() {
            return Ok(());
        }
        let (Some(last), Some(key)) = (self.last_sync()?, self.replica().device_key().cloned())
        else {
            self.set_own_log_checked();
            return Ok(());
        };
        let folder = PathBuf::from(&last.with);
        if !folder.is_dir() {
            return Ok(());
        }
        let (ws, own) = (self.id(), key.peer_id(&self.id()));
        let sink = match shoal_filelog::FolderSink::open(&folder, ws, &key, Config::default()) {
            Ok(s) => s,
            Err(e) if !e.stalls_origin() => return Ok(()), // unreachable or unwritable now
            Err(e) => return Err(e.into()),
        };
        let at = FileLogSink::position(&sink);
        let forked = |index| SyncError::Forked { origin: own, index, source_name: sink.describe() };
        let mut have = self.replica().durable_cursors()?.get(&own);
        if have < at.next {
            let puller = shoal_filelog::FolderPuller::new(&folder, ws, Config::default());
            while have < at.next {
                let page = FileLogPuller::read_entries(&puller, own, have, 4096)?;
                if page.is_empty() {
                    break;
                }
                match self.replica().apply_entries(own, page) {
                    Ok(applied) => have = applied.next,
                    Err(SyncError::Rejected { .. }) => {
                        let e = forked(have);
                        self.note_sync_error(&e)?;
                        self.publish_fork_evidence(&folder)?;
                        return Err(e.into());
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        } else if at.next > 0 {
            let page = self.replica().read_page(own, at.next - 1)?;
            if let Err(index) = own_log_continues(&ws, &own, at, page) {
                let e = forked(index);
                self.note_sync_error(&e)?;
                self.publish_fork_evidence(&folder)?;
                return Err(e.into());
            }
        }
        self.set_own_log_checked();
        Ok(())
    }
}

impl Workspace {
    /// After this device found its own log forked against `folder`: writes the proof into
    /// its own directory there — its log's head and the folder's head at the first index both
    /// hold, over different chains, each signed with this device's key (which signed both
    /// logs) — so that every device learns the origin forked (`MirrorStatus::forked`).
    /// Best effort: a folder that cannot be written now gets it at the next detection.
    pub fn publish_fork_evidence(&self, folder: &Path) -> Result<Option<PathBuf>> {
        let Some(key) = self.replica().device_key().cloned() else { return Ok(None) };
        let (ws, own) = (self.id(), key.peer_id(&self.id()));
        let sink = match shoal_filelog::FolderSink::open(folder, ws, &key, Config::default()) {
            Ok(s) => s,
            Err(_) => return Ok(None),
        };
        let at = FileLogSink::position(&sink);
        let have = self.replica().durable_cursors()?.get(&own);
        let n = have.min(at.next);
        if n == 0 {
            return Ok(None);
        }
        let start = shoal_core::ChainPosition::start(&ws, &own);
        let local = chain_at(n, start, |from| Ok(self.replica().read_page(own, from)?))?;
        let theirs = if n == at.next {
            at.chain
        } else {
            let puller = shoal_filelog::FolderPuller::new(folder, ws, Config::default());
            chain_at(n, start, |from| Ok(FileLogPuller::read_entries(&puller, own, from, 4096)?))?
        };
        if local == theirs {
            return Ok(None);
        }
        let evidence = shoal_filelog::fork::ForkEvidence::sign(&key, ws, n, theirs, local);
        Ok(evidence.write(sink.dir()).ok())
    }
}

/// The chain of one origin's log after its first `n` entries, reading pages from `read`.
pub(crate) fn chain_at(
    n: u64,
    start: shoal_core::ChainPosition,
    mut read: impl FnMut(u64) -> Result<Vec<shoal_core::Entry>>,
) -> Result<shoal_core::ChainHash> {
    let mut at = start;
    while at.next < n {
        let mut page = read(at.next)?;
        page.retain(|e| e.index >= at.next && e.index < n);
        if page.is_empty() {
            return Err(Error::Sync(SyncError::Bug(format!(
                "the log ends at {} before entry {n}",
                at.next
            ))));
        }
        let chain = shoal_core::chain_through(at, &page).map_err(|(expected, got)| {
            Error::Sync(SyncError::Bug(format!("a page of the log skips from {expected} to {got}")))
        })?;
        at = shoal_core::ChainPosition { next: at.next + page.len() as u64, chain };
    }
    Ok(at.chain)
}

/// A workspace's sync lock, held until dropped: only one sync of a workspace file runs at a
/// time (two would publish the same device's entries). An OS file lock, released however
/// the process ends.
#[derive(Debug)]
pub struct SyncLock {
    /// The locked file (none where locking is impossible); the lock goes with it.
    _file: Option<std::fs::File>,
}

impl Workspace {
    /// The lock file of this workspace's syncs: beside the file, named after its canonical
    /// path, so every path that reaches the same file (through symbolic links too) takes the
    /// same lock. (Hard links cannot reach it: a file with two names is never opened.)
    pub fn sync_lock_path(&self) -> PathBuf {
        let file = std::fs::canonicalize(self.path()).unwrap_or_else(|_| self.path().to_owned());
        let mut path = file.into_os_string();
        path.push(".sync-lock");
        path.into()
    }

    /// Takes the sync lock if it is free (`None` if another sync holds it). Where no lock
    /// can exist (a read-only directory, a filesystem without locks) it goes on unlocked:
    /// nothing could be published twice from a read-only place either.
    pub fn try_lock_sync(&self) -> Result<Option<SyncLock>> {
        let path = self.sync_lock_path();
        let opened =
            std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path);
        let Ok(file) = opened else { return Ok(Some(SyncLock { _file: None })) };
        match file.try_lock() {
            Ok(()) => Ok(Some(SyncLock { _file: Some(file) })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(_)) => Ok(Some(SyncLock { _file: None })),
        }
    }

    /// A mirror between this workspace and `folder`, for continuous sync
    /// ([`Mirror::run`]), for the holder of the workspace's sync lock (keep it while the
    /// mirror runs). Fails if the folder is missing, not a directory or not writable.
    pub fn folder_mirror(
        &self,
        folder: impl AsRef<Path>,
        config: Config,
        _lock: &SyncLock,
    ) -> Result<Mirror> {
        let folder = check_folder(folder.as_ref())?;
        let key = self.replica().device_key().cloned().ok_or_else(|| Error::Path {
            path: self.path().to_owned(),
            reason: "this workspace file has no device key, so it cannot publish".into(),
        })?;
        Ok(Mirror::open(folder, self.id(), key, Arc::new(self.replica().clone()), config))
    }

    /// Publishes this device's new entries to `folder` and pulls everyone else's, once.
    pub async fn sync_folder(&self, folder: impl AsRef<Path>) -> Result<FolderSync> {
        self.sync_folder_with(folder, Config::default()).await
    }

    /// [`Workspace::sync_folder`] with the folder log's tunables (segment sizes,
    /// compaction, retries; a simulation's fault injector).
    pub async fn sync_folder_with(
        &self,
        folder: impl AsRef<Path>,
        config: Config,
    ) -> Result<FolderSync> {
        self.replica().check_writable()?;
        let lock = self.try_lock_sync()?.ok_or_else(|| Error::SyncBusy {
            path: self.path().to_owned(),
            lock: self.sync_lock_path(),
        })?;
        let mirror = self.folder_mirror(folder.as_ref(), config, &lock)?;
        let report = match mirror.sync_once().await {
            Ok(r) => r,
            Err(e) => {
                self.note_sync_error(&e)?;
                if let SyncError::Forked { .. } = e {
                    self.publish_fork_evidence(folder.as_ref())?;
                }
                return Err(e.into());
            }
        };
        // An origin that stalled earlier in this pass may be superseded now (its successor
        // arrived later in the same pass): one more pass takes its entries as superseded.
        let mut report = report;
        if self.stalls_on_superseded(&mirror.status())? {
            match mirror.sync_once().await {
                Ok(again) => {
                    report.published += again.published;
                    report.pulled += again.pulled;
                    report.duplicates += again.duplicates;
                    report.stalled = again.stalled;
                }
                Err(e) => {
                    self.note_sync_error(&e)?;
                    return Err(e.into());
                }
            }
        }
        let mut status = mirror.status();
        if status.last_error.is_none() {
            self.record_sync(&status.folder)?;
            // The pass checked this device's own log in the folder, and took back what the
            // folder was ahead by, unless reading it back failed (a file being copied, a
            // read error): then the next write looks again first (found by `shoal-sim`).
            let own = status.origin;
            let taken_back =
                status.origins.iter().filter(|o| o.origin == own).all(|o| o.local >= o.in_folder)
                    && !status.stalled.iter().any(|s| s.origin == own)
                    && !status.bad_files.iter().any(|f| f.origin == own);
            if taken_back {
                self.set_own_log_checked();
            }
        }
        self.add_local_stalls(&mut status)?;
        Ok(FolderSync { report, status, clock_ahead: self.clock_ahead()? })
    }

    /// Adds to a mirror's status the origins whose entries arrived but are not applied here
    /// (an op of a newer version, a malformed op, a storage limit): the mirror only sees what
    /// could not be *received*, and a sync must not call itself in sync while either holds.
    ///
    /// It also drops from the folder's forked origins those whose owner recovered (a
    /// successor of the origin is applied here, `Workspace::recover_fork`): the evidence
    /// stays in the folder as history, but the fork is resolved.
    pub fn add_local_stalls(&self, status: &mut MirrorStatus) -> Result<()> {
        let mut recovered = Vec::new();
        for f in &status.forked {
            if self.replica().superseded(f.origin)?.is_some() {
                recovered.push(f.origin);
            }
        }
        status.forked.retain(|f| !recovered.contains(&f.origin));
        for o in self.replica().origin_status()? {
            let Some(reason) = o.stalled else { continue };
            if status.stalled.iter().any(|s| s.origin == o.origin) {
                continue;
            }
            let since = o.stalled_at.map_or(SystemTime::now(), |ms| {
                SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms)
            });
            status.stalled.push(StalledOrigin {
                origin: o.origin,
                at: o.materialized,
                reason,
                since,
            });
        }
        Ok(())
    }

    /// True if the mirror reports an origin stalled at an entry this replica now knows is
    /// superseded by a successor (its successor arrived later in the same pass): one more
    /// pass then takes the superseded entries.
    pub fn stalls_on_superseded(&self, status: &MirrorStatus) -> Result<bool> {
        for s in &status.stalled {
            if self.replica().superseded(s.origin)?.is_some_and(|sup| s.at >= sup.from) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Records a successful sync with `with` now.
    pub fn record_sync(&self, with: &Path) -> Result<()> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let value = format!("{now}\t{}", with.display());
        Ok(self.replica().set_meta(LAST_SYNC, value.as_bytes())?)
    }

    /// The last successful sync, if any.
    pub fn last_sync(&self) -> Result<Option<LastSync>> {
        let Some(bytes) = self.replica().meta(LAST_SYNC)? else { return Ok(None) };
        let text = String::from_utf8_lossy(&bytes);
        let Some((at, with)) = text.split_once('\t') else { return Ok(None) };
        Ok(at.parse().ok().map(|at_millis| LastSync { at_millis, with: with.to_owned() }))
    }
}

/// The folder, made absolute, if it exists, is a directory and is writable.
fn check_folder(folder: &Path) -> Result<PathBuf> {
    let fail = |reason: String| Error::Path { path: folder.to_owned(), reason };
    let meta = std::fs::metadata(folder).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => fail("the sync folder does not exist".into()),
        _ => fail(format!("the sync folder cannot be read: {e}")),
    })?;
    if !meta.is_dir() {
        return Err(fail("the sync folder is not a directory".into()));
    }
    let probe = folder.join(format!(".shoal-write-check-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .map_err(|e| fail(format!("the sync folder is not writable: {e}")))?;
    let _ = std::fs::remove_file(&probe);
    std::path::absolute(folder).map_err(|e| fail(e.to_string()))
}
