//! [`FolderPuller`]: reads every origin's log from a shared folder, verified.
//!
//! Owns: listing origins, choosing the segments that cover a requested page, verifying
//! each segment it reads, the per-origin cursors the folder offers, and the record of bad
//! files with their retry backoff ([`BadFile`]).
//!
//! Invariants:
//! - Only canonical names are read (see [`crate::layout`]); everything else is ignored.
//! - Every entry returned comes from a segment that passed [`Segment::decode`] against the
//!   directory and name it was found under (checksum, workspace, origin, range, chain,
//!   head), and is returned with its seals; the receiving replica's ingest pipeline checks
//!   the seal that ends each page it is given (one signature per page).
//! - Overlapping and duplicate segments are fine: a page comes from one segment that
//!   covers its first index (the one reaching furthest that verifies).
//! - A file that fails verification is skipped in favour of any other covering file, read
//!   again after a backoff (or at once when it changes — an upload completing), and shown
//!   by [`FolderPuller::bad_files`] once it failed [`Config::report_after`] times without
//!   changing in between (a file that keeps growing is an upload in progress). Its
//!   origin stalls (an error naming the file) only if no other file covers the index;
//!   every other origin is unaffected.
//! - The cursor of an origin is how far its canonical segments reach contiguously from
//!   index 0, and the segment that ends that reach (the *tip*) passed the envelope,
//!   checksum and head-signature check ([`SegmentTip::check`]). Interior segments are
//!   fully verified when they are read.
//!
//! Never: writes, renames or deletes anything in the folder; holds more than
//! [`Config::cached_segments`] decoded segments; loads a whole log.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use shoal_core::codec::{DecodeError, DecodeProblem};
use shoal_core::{Entry, FileLogPuller, PAGE_BYTES, PeerCursors, PeerId, SyncError, WorkspaceId};

use crate::config::Config;
use crate::fsutil::read_segment_file;
use crate::layout::{FileStamp, Layout, SegmentFile, coverage_path, list_segments, parse_id_dir};
use crate::segment::{Expected, Segment, SegmentProblem, SegmentTip};

/// A file in the folder that could not be used, as shown in a status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFile {
    /// The file.
    pub path: PathBuf,
    /// The origin directory it sits in.
    pub origin: PeerId,
    /// What was wrong the last time it was read.
    pub reason: String,
    /// How many times in a row it failed.
    pub failures: u32,
    /// When it first failed.
    pub first_failure: SystemTime,
    /// When it last failed.
    pub last_failure: SystemTime,
}

/// Why a file could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FileProblem {
    /// The bytes are not a valid segment for this place.
    Segment(SegmentProblem),
    /// The file (or directory) could not be read.
    Io(String),
}

impl FileProblem {
    pub(crate) fn reason(&self) -> String {
        match self {
            FileProblem::Segment(p) => p.to_string(),
            FileProblem::Io(e) => format!("cannot be read: {e}"),
        }
    }

    /// The problem as the error the sync traits carry. Always one that stalls only the
    /// file's origin ([`SyncError::stalls_origin`]).
    pub(crate) fn to_sync_error(&self, path: &Path) -> SyncError {
        let name = path.display().to_string();
        match self {
            FileProblem::Segment(p) => p.clone().into_sync_error(&name),
            FileProblem::Io(_) => SyncError::Malformed {
                source_name: name,
                what: "segment file",
                problem: DecodeError {
                    offset: 0,
                    what: DecodeProblem::Invalid("the file cannot be read"),
                },
            },
        }
    }
}

#[derive(Debug)]
struct BadRecord {
    origin: PeerId,
    stamp: Option<FileStamp>,
    problem: FileProblem,
    failures: u32,
    first_failure: SystemTime,
    last_failure: SystemTime,
    retry_at: Instant,
}

#[derive(Debug, Default)]
struct State {
    /// Tips that passed the check, by path and the version of the file checked.
    tips: HashMap<PathBuf, (FileStamp, SegmentTip)>,
    /// Recently decoded segments, most recent first.
    segments: VecDeque<(PathBuf, FileStamp, Arc<Segment>)>,
    bad: HashMap<PathBuf, BadRecord>,
}

enum Load {
    /// The file disappeared between listing and reading (a compaction deleted it).
    Vanished,
    Bad(FileProblem),
}

/// A synchronous, verifying reader of every origin's segments in one workspace of a shared
/// folder. Cheap to share (`&self` everywhere, internally locked; no lock is held during
/// I/O).
#[derive(Debug)]
pub struct FolderPuller {
    layout: Layout,
    config: Config,
    state: Mutex<State>,
}

impl FolderPuller {
    /// A puller of `workspace` in the shared folder `folder`. Touches nothing yet.
    pub fn new(folder: impl Into<PathBuf>, workspace: WorkspaceId, config: Config) -> Self {
        FolderPuller {
            layout: Layout::new(folder, workspace),
            config,
            state: Mutex::new(State::default()),
        }
    }

    /// The shared folder.
    pub fn folder(&self) -> &Path {
        self.layout.root()
    }

    /// The workspace.
    pub fn workspace(&self) -> WorkspaceId {
        self.layout.workspace()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a cache and a report; every update completes before unlocking, so a
        // panic elsewhere cannot leave it inconsistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn unavailable(&self, reason: impl Into<String>) -> SyncError {
        SyncError::Unavailable {
            what: format!("shared folder {}", self.layout.root().display()),
            reason: reason.into(),
        }
    }

    fn check_root(&self) -> Result<(), SyncError> {
        self.layout.check_root().map_err(|r| self.unavailable(r))
    }

    /// What the folder holds of each origin: for every origin directory, how far its
    /// segments reach contiguously from 0, with a verified tip (see the module doc). An
    /// origin directory that cannot be listed is reported as a bad file and left out.
    pub fn cursors(&self) -> Result<PeerCursors, SyncError> {
        let mut out = PeerCursors::new();
        for origin in self.list_peers()? {
            match self.origin_cursor(origin) {
                Ok(next) => {
                    out.advance(origin, next);
                }
                Err(e) => tracing::warn!(%origin, error = %e, "origin directory unreadable"),
            }
        }
        Ok(out)
    }

    /// How far the folder holds `origin`'s log (see [`FolderPuller::cursors`]).
    pub fn origin_cursor(&self, origin: PeerId) -> Result<u64, SyncError> {
        let files = self.list(origin)?;
        let mut excluded: HashSet<PathBuf> =
            files.iter().filter(|f| self.in_backoff(f).is_some()).map(|f| f.path.clone()).collect();
        loop {
            let (path, next) = coverage_path(&files, |f| f.name, |f| !excluded.contains(&f.path));
            let Some(tip) = path.last() else { return Ok(0) };
            match self.check_tip(origin, tip) {
                Ok(()) => return Ok(next),
                Err(_) => {
                    excluded.insert(tip.path.clone());
                }
            }
        }
    }

    /// Bad files that failed at least [`Config::report_after`] times, by path.
    pub fn bad_files(&self) -> Vec<BadFile> {
        let st = self.lock();
        let mut out: Vec<BadFile> = st
            .bad
            .iter()
            .filter(|(_, r)| r.failures >= self.config.report_after)
            .map(|(path, r)| BadFile {
                path: path.clone(),
                origin: r.origin,
                reason: r.problem.reason(),
                failures: r.failures,
                first_failure: r.first_failure,
                last_failure: r.last_failure,
            })
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    /// When the next bad file becomes due to be read again, if one is waiting. (Files
    /// already due are read by the next pass that needs them; they are not a reason to
    /// wake up.)
    pub fn next_retry(&self) -> Option<Instant> {
        let now = Instant::now();
        self.lock().bad.values().map(|r| r.retry_at).filter(|t| *t > now).min()
    }

    /// Reads and fully verifies one segment file of `origin` (or takes it from the cache).
    pub fn read_segment(
        &self,
        origin: PeerId,
        file: &SegmentFile,
    ) -> Result<Arc<Segment>, SyncError> {
        match self.load(origin, file) {
            Ok(seg) => Ok(seg),
            Err(Load::Vanished) => Err(SyncError::Unavailable {
                what: file.path.display().to_string(),
                reason: "the file was removed".into(),
            }),
            Err(Load::Bad(p)) => Err(p.to_sync_error(&file.path)),
        }
    }

    fn list(&self, origin: PeerId) -> Result<Vec<SegmentFile>, SyncError> {
        let dir = self.layout.origin_dir(&origin);
        match list_segments(&dir) {
            Ok(files) => {
                self.forget_missing(&dir, &files);
                Ok(files)
            }
            Err(e) => {
                self.check_root()?;
                let problem = FileProblem::Io(e.to_string());
                let err = problem.to_sync_error(&dir);
                self.record_failure(origin, &dir, None, problem);
                Err(err)
            }
        }
    }

    /// Drops what was remembered about files of `dir` that are gone.
    fn forget_missing(&self, dir: &Path, files: &[SegmentFile]) {
        let present: HashSet<&Path> = files.iter().map(|f| f.path.as_path()).collect();
        let gone = |p: &PathBuf| p.parent() == Some(dir) && !present.contains(p.as_path());
        let mut st = self.lock();
        st.tips.retain(|p, _| !gone(p));
        st.bad.retain(|p, _| !gone(p));
        st.segments.retain(|(p, _, _)| !gone(p));
        // The directory itself listed fine.
        st.bad.remove(dir);
    }

    /// The cached problem of a file that failed and is not due for another read: same
    /// version as when it failed, and its backoff not over.
    fn in_backoff(&self, file: &SegmentFile) -> Option<FileProblem> {
        let st = self.lock();
        let r = st.bad.get(&file.path)?;
        (r.stamp == Some(file.stamp) && Instant::now() < r.retry_at).then(|| r.problem.clone())
    }

    fn expected(&self, origin: PeerId, file: &SegmentFile) -> Expected {
        Expected { workspace: self.layout.workspace(), origin, name: Some(file.name) }
    }

    fn check_tip(&self, origin: PeerId, file: &SegmentFile) -> Result<(), Load> {
        if let Some((stamp, _)) = self.lock().tips.get(&file.path)
            && *stamp == file.stamp
        {
            return Ok(());
        }
        let (bytes, stamp) = self.read(origin, file)?;
        match SegmentTip::check(&bytes, &self.expected(origin, file)) {
            Ok(tip) => {
                let mut st = self.lock();
                st.tips.insert(file.path.clone(), (stamp, tip));
                st.bad.remove(&file.path);
                Ok(())
            }
            Err(p) => {
                let problem = FileProblem::Segment(p);
                self.record_failure(origin, &file.path, Some(stamp), problem.clone());
                Err(Load::Bad(problem))
            }
        }
    }

    fn read(&self, origin: PeerId, file: &SegmentFile) -> Result<(Vec<u8>, FileStamp), Load> {
        match read_segment_file(&file.path, &self.config.faults) {
            Ok(r) => Ok(r),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Load::Vanished),
            Err(e) => {
                let problem = FileProblem::Io(e.to_string());
                self.record_failure(origin, &file.path, Some(file.stamp), problem.clone());
                Err(Load::Bad(problem))
            }
        }
    }

    fn load(&self, origin: PeerId, file: &SegmentFile) -> Result<Arc<Segment>, Load> {
        {
            let mut st = self.lock();
            if let Some(i) =
                st.segments.iter().position(|(p, s, _)| *p == file.path && *s == file.stamp)
                && let Some(hit) = st.segments.remove(i)
            {
                let seg = hit.2.clone();
                st.segments.push_front(hit);
                return Ok(seg);
            }
        }
        let (bytes, stamp) = self.read(origin, file)?;
        match Segment::decode(&bytes, &self.expected(origin, file)) {
            Ok(seg) => {
                let seg = Arc::new(seg);
                let tip = SegmentTip {
                    name: seg.name(),
                    start: seg.start(),
                    head: seg.head(),
                    raw_len: seg.raw_len() as u32,
                    stored_len: 0,
                };
                let mut st = self.lock();
                st.bad.remove(&file.path);
                st.tips.insert(file.path.clone(), (stamp, tip));
                st.segments.push_front((file.path.clone(), stamp, seg.clone()));
                st.segments.truncate(self.config.cached_segments.max(1));
                Ok(seg)
            }
            Err(p) => {
                let problem = FileProblem::Segment(p);
                self.record_failure(origin, &file.path, Some(stamp), problem.clone());
                Err(Load::Bad(problem))
            }
        }
    }

    fn record_failure(
        &self,
        origin: PeerId,
        path: &Path,
        stamp: Option<FileStamp>,
        problem: FileProblem,
    ) {
        let now = SystemTime::now();
        let mut st = self.lock();
        st.tips.remove(path);
        let r = st.bad.entry(path.to_path_buf()).or_insert_with(|| BadRecord {
            origin,
            stamp,
            problem: problem.clone(),
            failures: 0,
            first_failure: now,
            last_failure: now,
            retry_at: Instant::now(),
        });
        // A file that changed since it last failed is still being written (an upload in
        // progress): count again from one, so only a file that stays bad is reported.
        if r.stamp != stamp {
            r.failures = 0;
        }
        r.failures = r.failures.saturating_add(1);
        r.stamp = stamp;
        r.last_failure = now;
        r.retry_at = Instant::now() + self.config.backoff(r.failures);
        if r.failures == self.config.report_after {
            tracing::warn!(
                path = %path.display(),
                failures = r.failures,
                reason = %problem.reason(),
                "file keeps failing verification"
            );
        } else {
            tracing::debug!(path = %path.display(), reason = %problem.reason(), "file failed verification");
        }
        r.problem = problem;
    }
}

impl FileLogPuller for FolderPuller {
    fn list_peers(&self) -> Result<Vec<PeerId>, SyncError> {
        self.check_root()?;
        let dir = self.layout.workspace_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.unavailable(format!("{}: {e}", dir.display()))),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| self.unavailable(format!("{}: {e}", dir.display())))?;
            let Some(id) = entry.file_name().to_str().and_then(parse_id_dir) else { continue };
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(PeerId::from_bytes(id));
            }
        }
        out.sort();
        Ok(out)
    }

    fn read_entries(&self, origin: PeerId, from: u64, max: usize) -> Result<Vec<Entry>, SyncError> {
        // A compaction elsewhere may delete files between our listing and our reading;
        // list again then. Three rounds are plenty: each round sees a newer directory.
        let mut last_error = None;
        for _ in 0..3 {
            let files = self.list(origin)?;
            let mut covering: Vec<&SegmentFile> =
                files.iter().filter(|f| f.name.contains(from)).collect();
            if covering.is_empty() {
                return Ok(Vec::new());
            }
            // Prefer the file reaching furthest (fewest files to read), then the one
            // starting closest to `from` (least to skip).
            covering.sort_by_key(|f| std::cmp::Reverse((f.name.last, f.name.first)));
            let mut vanished = false;
            let mut first_bad: Option<SyncError> = None;
            for file in covering {
                if let Some(problem) = self.in_backoff(file) {
                    first_bad.get_or_insert_with(|| problem.to_sync_error(&file.path));
                    continue;
                }
                match self.load(origin, file) {
                    Ok(seg) => return Ok(page(&seg, from, max)),
                    Err(Load::Vanished) => vanished = true,
                    Err(Load::Bad(p)) => {
                        first_bad.get_or_insert_with(|| p.to_sync_error(&file.path));
                    }
                }
            }
            if !vanished && let Some(e) = first_bad {
                return Err(e);
            }
            last_error = first_bad;
        }
        Err(last_error.unwrap_or_else(|| SyncError::Unavailable {
            what: self.layout.origin_dir(&origin).display().to_string(),
            reason: "its files kept disappearing while being read".into(),
        }))
    }
}

/// Entries of `seg` from `from`: about `max` of them or [`PAGE_BYTES`] of payload, whichever
/// comes first, extended to the next seal (the last entry of a segment is sealed, so one is
/// always found).
fn page(seg: &Segment, from: u64, max: usize) -> Vec<Entry> {
    let entries = seg.entries();
    let start = (from.saturating_sub(seg.first()) as usize).min(entries.len());
    let (mut end, mut bytes) = (start, 0usize);
    while end < entries.len() {
        bytes += entries[end].approx_size();
        end += 1;
        let full = end - start >= max.max(1) || bytes >= PAGE_BYTES;
        if full && entries[end - 1].seal.is_some() {
            break;
        }
    }
    entries[start..end].to_vec()
}
