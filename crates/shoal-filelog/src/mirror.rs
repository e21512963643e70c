//! [`Mirror`]: the driver that keeps a device replica and a shared folder in sync.
//!
//! Owns: pairing one [`FolderReplica`] with one local device replica (any
//! `Arc<dyn Replica<Entry>>`: the in-memory one today, the SQLite one tomorrow), the
//! pass that publishes the device's own new entries and pulls every other origin's, the
//! loop that runs passes when something changes, and the [`MirrorStatus`] a user sees.
//!
//! Invariants:
//! - A pass is: publish (core [`shoal_core::publish`], local -> folder, own origin only),
//!   then pull (core [`shoal_core::pull`], folder -> local, every origin where the folder is
//!   ahead), then — when the mirror pushes and [`Config::carry`] is on — carry
//!   ([`FolderReplica::carry_from`]: every other origin's entries the local replica holds
//!   beyond the folder's copy, into this device's own directory). Passes never overlap.
//!   The cursor diff is the truth; wake-ups only say when to look.
//! - Wake-ups: the local replica's cursor stream (a commit of the device's own origin),
//!   the folder's (file events or polling), the earliest retry of a bad file, and
//!   `poll_interval` as a safety net. After a local commit the loop waits `debounce`, so
//!   a burst of commits costs one pass and one segment (folder events are debounced by the
//!   folder's watcher).
//! - A failed pass (folder unavailable, disk error) is retried with exponential backoff
//!   and recorded in the status; the loop ends only on shutdown, when the local replica
//!   closes, or on a caller's misuse or a bug.
//! - One bad origin never blocks the others: the pull driver stalls it and the status
//!   says where and why.
//!
//! Never: writes into another device's directory (other origins' entries are carried only
//! inside the device's own, unchanged), or holds more than the drivers' pages in memory.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use shoal_core::{
    CursorStream, DeviceKey, Direction, Entry, FileLogReplica, HasCursors, PeerCursors, PeerId,
    Replica, SyncError, SyncTarget, WorkspaceId, run_sync_loop,
};

use crate::config::Config;
use crate::layout::Layout;
use crate::puller::BadFile;
use crate::replica::FolderReplica;

/// One origin's position in the folder and in the local replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginStatus {
    /// The origin.
    pub origin: PeerId,
    /// How far the folder holds its log (verified at the tip).
    pub in_folder: u64,
    /// How far the local replica holds it.
    pub local: u64,
}

/// An origin the mirror cannot advance, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StalledOrigin {
    /// The origin.
    pub origin: PeerId,
    /// The local replica's cursor for it (where it is stuck).
    pub at: u64,
    /// Why (names the file when a file is at fault).
    pub reason: String,
    /// Since when it has been stalled.
    pub since: SystemTime,
}

/// An origin proven forked by evidence in the folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForkedOrigin {
    /// The origin.
    pub origin: PeerId,
    /// The index at which two signed versions of its log disagree.
    pub next: u64,
    /// The evidence file.
    pub evidence: PathBuf,
}

/// What a mirror has done and what it is stuck on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorStatus {
    /// The shared folder.
    pub folder: PathBuf,
    /// The device's own origin.
    pub origin: PeerId,
    /// Every origin known to the folder or the local replica, by origin.
    pub origins: Vec<OriginStatus>,
    /// Origins that could not advance in the last pass.
    pub stalled: Vec<StalledOrigin>,
    /// Files that keep failing verification.
    pub bad_files: Vec<BadFile>,
    /// When the last pass completed without error.
    pub last_success: Option<SystemTime>,
    /// The error of the last pass, if it failed.
    pub last_error: Option<String>,
    /// Origins whose directory holds verified fork evidence (two heads signed by the origin
    /// over different chains at one index): their log forked, and no pass is in sync.
    pub forked: Vec<ForkedOrigin>,
    /// Set once a pass found this device's own log forked (a copied file, or a restored
    /// backup that had written): why. The mirror publishes nothing while it is.
    pub fork: Option<String>,
    /// Passes run so far.
    pub passes: u64,
}

impl MirrorStatus {
    /// True when the last pass succeeded, nothing is stalled or bad, and the local replica
    /// holds everything the folder holds and vice versa.
    pub fn in_sync(&self) -> bool {
        self.last_error.is_none()
            && self.fork.is_none()
            && self.forked.is_empty()
            && self.last_success.is_some()
            && self.stalled.is_empty()
            && self.bad_files.is_empty()
            && self.origins.iter().all(|o| o.in_folder == o.local)
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Own entries published to the folder.
    pub published: u64,
    /// Entries pulled into the local replica.
    pub pulled: u64,
    /// Entries the local replica already had.
    pub duplicates: u64,
    /// Other origins' entries carried into the folder (see [`Config::carry`]).
    pub carried: u64,
    /// Origins that could not advance, with why.
    pub stalled: Vec<(PeerId, String)>,
}

/// Keeps a device replica and a shared folder in sync. See the module doc.
pub struct Mirror {
    folder: FolderReplica,
    local: Arc<dyn Replica<Entry>>,
    direction: Direction,
    status: Mutex<MirrorStatus>,
    pass: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror").field("folder", &self.folder).finish_non_exhaustive()
    }
}

impl Mirror {
    /// A mirror between `folder` and the device replica `local`.
    pub fn new(folder: FolderReplica, local: Arc<dyn Replica<Entry>>) -> Self {
        let status = MirrorStatus {
            folder: folder.folder().to_path_buf(),
            origin: folder.origin(),
            origins: Vec::new(),
            stalled: Vec::new(),
            bad_files: Vec::new(),
            last_success: None,
            last_error: None,
            passes: 0,
            fork: None,
            forked: Vec::new(),
        };
        Mirror {
            folder,
            local,
            direction: Direction::Both,
            status: Mutex::new(status),
            pass: tokio::sync::Mutex::new(()),
        }
    }

    /// A mirror between the shared folder `folder` (workspace `workspace`) and the replica
    /// `local` of the device holding `key`.
    pub fn open(
        folder: impl Into<PathBuf>,
        workspace: WorkspaceId,
        key: DeviceKey,
        local: Arc<dyn Replica<Entry>>,
        config: Config,
    ) -> Self {
        Mirror::new(FolderReplica::new(folder, workspace, key, config), local)
    }

    /// The same mirror moving entries only `direction`'s way: a pull-only mirror never
    /// publishes (a read-only mirror or backup), a push-only one never pulls.
    pub fn with_direction(mut self, direction: Direction) -> Self {
        self.direction = direction;
        self
    }

    /// The folder side.
    pub fn folder(&self) -> &FolderReplica {
        &self.folder
    }

    /// The current status.
    pub fn status(&self) -> MirrorStatus {
        self.lock_status().clone()
    }

    fn lock_status(&self) -> MutexGuard<'_, MirrorStatus> {
        // Updates replace whole fields; a panic elsewhere cannot leave it half-written.
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs one pass: publish the device's new entries, pull every other origin's. The
    /// status is updated either way; the first error (publish before pull) is returned.
    pub async fn sync_once(&self) -> Result<SyncReport, SyncError> {
        let _one_pass_at_a_time = self.pass.lock().await;
        let mut report = SyncReport::default();
        let published = match self.direction.pushes() {
            true => self.folder.publish_from(self.local.clone()).await,
            false => Ok(0),
        };
        if let Ok(n) = &published {
            report.published = *n;
        }
        let pulled = match self.direction.pulls() {
            true => shoal_core::pull(&self.folder, &*self.local).await,
            false => Ok(shoal_core::PullReport::default()),
        };
        // Pulling can make the device write (a member acknowledges a new device it
        // stored, or what it applied before a cut): publish that in the same pass.
        let published = match (published, &pulled) {
            (Ok(n), Ok(_)) if self.direction.pushes() => {
                match self.folder.publish_from(self.local.clone()).await {
                    Ok(more) => Ok(n + more),
                    Err(e) => Err(e),
                }
            }
            (other, _) => other,
        };
        if let Ok(n) = &published {
            report.published = *n;
        }
        // Carry what this device holds of other origins beyond the folder's copy (entries
        // from a relay), once its own log is published; never while that failed (a fork).
        let carry = self.direction.pushes() && self.folder.config().carry && published.is_ok();
        let carried = match carry {
            true => self.folder.carry_from(self.local.clone()).await,
            false => Ok(crate::replica::CarryReport::default()),
        };
        let local_cursors = self.local.cursors().await.unwrap_or_default();
        let layout = Layout::new(self.folder.folder().to_owned(), self.folder.workspace());
        // Name where refused entries came from: a file problem names its file already; an
        // entry the ingest pipeline rejected is named by the file a read at the origin's
        // position uses (its own directory's, or a carried copy's), else its directory.
        let source = |o: &PeerId| {
            let puller = self.folder.puller();
            puller
                .file_for(*o, local_cursors.get(o))
                .unwrap_or_else(|| layout.origin_dir(o))
                .display()
                .to_string()
        };
        if let Ok(r) = &pulled {
            report.pulled = r.new;
            report.duplicates = r.duplicates;
            report.stalled = r
                .stalled
                .iter()
                .map(|(o, e)| match e {
                    SyncError::Malformed { .. } => (*o, e.to_string()),
                    _ => (*o, format!("{}: {e}", source(o))),
                })
                .collect();
        }
        if let Ok(c) = &carried {
            report.carried = c.carried;
            for (o, e) in &c.refused {
                if !report.stalled.iter().any(|(s, _)| s == o) {
                    let dir = layout.origin_dir(&self.folder.origin());
                    report.stalled.push((*o, format!("cannot carry into {}: {e}", dir.display())));
                }
            }
        }
        let folder_cursors = self.folder.cursors().await.unwrap_or_default();
        // The folder ahead of this device in its own log, with entries that do not continue
        // it: the same fork the publication checks for, seen from the other side.
        let own = self.folder.origin();
        let fork = pulled.as_ref().ok().and_then(|r| {
            r.stalled.iter().find(|(o, e)| *o == own && matches!(e, SyncError::Rejected { .. }))
        });
        let fork = fork.map(|_| {
            let index = local_cursors.get(&own);
            let dir = Layout::new(self.folder.folder().to_owned(), self.folder.workspace())
                .origin_dir(&own);
            // Name the file that holds the disagreeing entry, if it can be found.
            let file = crate::layout::list_segments(&dir)
                .unwrap_or_default()
                .into_iter()
                .find(|f| f.name.first <= index && index <= f.name.last)
                .map_or(dir, |f| f.path);
            SyncError::Forked { origin: own, index, source_name: file.display().to_string() }
        });
        let error = published.err().or(fork).or(pulled.err()).or(carried.err());
        self.update_status(&report, &folder_cursors, &local_cursors, error.as_ref());
        match error {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    fn update_status(
        &self,
        report: &SyncReport,
        folder: &PeerCursors,
        local: &PeerCursors,
        error: Option<&SyncError>,
    ) {
        let now = SystemTime::now();
        let mut origins: BTreeMap<PeerId, OriginStatus> = BTreeMap::new();
        for (origin, _) in folder.iter().chain(local.iter()) {
            origins.entry(origin).or_insert_with(|| OriginStatus {
                origin,
                in_folder: folder.get(&origin),
                local: local.get(&origin),
            });
        }
        let bad_files = self.folder.bad_files();
        let layout = Layout::new(self.folder.folder().to_owned(), self.folder.workspace());
        let forked: Vec<ForkedOrigin> = origins
            .keys()
            .flat_map(|o| {
                let (good, _) =
                    crate::fork::read_evidence(&layout.origin_dir(o), &layout.workspace(), o);
                good.into_iter().map(|(path, ev)| ForkedOrigin {
                    origin: ev.origin,
                    next: ev.next,
                    evidence: path,
                })
            })
            .collect();
        let mut st = self.lock_status();
        st.forked = forked;
        let stalled = report
            .stalled
            .iter()
            .map(|(origin, reason)| StalledOrigin {
                origin: *origin,
                at: local.get(origin),
                reason: reason.clone(),
                since: st.stalled.iter().find(|s| s.origin == *origin).map_or(now, |s| s.since),
            })
            .collect();
        st.passes += 1;
        st.origins = origins.into_values().collect();
        st.stalled = stalled;
        st.bad_files = bad_files;
        match error {
            None => {
                st.last_success = Some(now);
                st.last_error = None;
            }
            Some(e) => {
                if let SyncError::Forked { .. } = e {
                    st.fork = Some(e.to_string());
                }
                st.last_error = Some(e.to_string());
            }
        }
    }

    /// Runs passes whenever something changes until `shutdown` completes (or the local
    /// replica closes), on the core's transport-neutral loop ([`shoal_core::run_sync_loop`]:
    /// local commits debounced, folder changes, retries of bad files, polling, backoff after
    /// failed passes). Only a misuse of the API or a bug ends the loop with an error.
    pub async fn run(&self, shutdown: impl Future<Output = ()> + Send) -> Result<(), SyncError> {
        let timing = self.folder.config().timing();
        run_sync_loop(self.folder.origin(), &*self.local, self, timing, shutdown).await
    }
}

#[async_trait]
impl SyncTarget for Mirror {
    async fn pass(&self) -> Result<(), SyncError> {
        self.sync_once().await.map(|_| ())
    }

    fn target_events(&self) -> CursorStream {
        self.folder.watch_cursors()
    }

    fn next_retry(&self) -> Option<Instant> {
        self.folder.puller().next_retry()
    }
}
