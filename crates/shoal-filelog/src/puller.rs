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
//! - An origin's segments are those of its own directory and of every *carried* copy of it
//!   (`<carrier>/carried-<origin>-<range>.seg`, written by devices that carry it from
//!   elsewhere, [`crate::CarrySink`]). A carried segment is verified exactly like an own
//!   one (the origin's signed head and seals; the carrier signs nothing), and the folder's
//!   cursor of an origin is the reach of all of them together. A page is read from the
//!   origin's own directory whenever a good own file covers its first index, and from a
//!   carried copy only beyond that: a bad carried file is reported by its path and never
//!   stops the own directory from being read. A device directory that cannot be listed for
//!   carried files is skipped (its problem is reported under its own origin).
//!
//! Never: writes, renames or deletes anything in the folder; holds more than
//! [`Config::cached_segments`] decoded segments; loads a whole log.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use shoal_core::codec::{DecodeError, DecodeProblem};
use shoal_core::{
    ChainPosition, Entry, FileLogPuller, PAGE_BYTES, PeerCursors, PeerId, SyncError, WorkspaceId,
};

use crate::config::Config;
use crate::fsutil::read_segment_file;
use crate::layout::{
    CarriedName, FileStamp, Layout, SegmentFile, SegmentName, coverage_path, list_segments,
};
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

    /// How far the folder holds `origin`'s log (see [`FolderPuller::cursors`]): its own
    /// directory and every carried copy together.
    pub fn origin_cursor(&self, origin: PeerId) -> Result<u64, SyncError> {
        Ok(self.origin_position(origin)?.next)
    }

    /// Where the folder's copy of `origin`'s log ends, with the chain there (from the
    /// verified head of the tip segment; the origin's start position for an empty log). A
    /// carrier continues a carried log from here, so what it writes links to what the
    /// folder already holds.
    pub fn origin_position(&self, origin: PeerId) -> Result<ChainPosition, SyncError> {
        let files = self.list(origin)?.all();
        let mut excluded: HashSet<PathBuf> =
            files.iter().filter(|f| self.in_backoff(f).is_some()).map(|f| f.path.clone()).collect();
        loop {
            let (path, next) = coverage_path(&files, |f| f.name, |f| !excluded.contains(&f.path));
            let Some(tip) = path.last() else {
                return Ok(ChainPosition::start(&self.layout.workspace(), &origin));
            };
            match self.check_tip(origin, tip) {
                Ok(t) if t.head.next == next => {
                    return Ok(ChainPosition { next, chain: t.head.chain });
                }
                // A verified head always ends its file's range; anything else is a bug in
                // the check, and the file is passed over rather than trusted.
                Ok(_) | Err(_) => {
                    excluded.insert(tip.path.clone());
                }
            }
        }
    }

    /// Every canonical segment file of `origin`: its own directory's, then those of every
    /// carried copy (by carrier), each sorted by range. For a full check of a folder
    /// (`shoal verify --folder`): each can be read with [`FolderPuller::read_segment`].
    pub fn segment_files(&self, origin: PeerId) -> Result<Vec<SegmentFile>, SyncError> {
        let listing = self.list(origin)?;
        Ok(listing.own.into_iter().chain(listing.carried).collect())
    }

    /// The file a read of `origin` at `index` would use: a good own file covering it if
    /// there is one, else a good carried one, else any covering file. Names where an entry
    /// that a replica refused came from.
    pub fn file_for(&self, origin: PeerId, index: u64) -> Option<PathBuf> {
        let listing = self.list(origin).ok()?;
        let (own, carried) = (covering(&listing.own, index), covering(&listing.carried, index));
        let good = |f: &&&SegmentFile| !self.lock().bad.contains_key(&f.path);
        own.iter()
            .find(good)
            .or_else(|| carried.iter().find(good))
            .or_else(|| own.first().or(carried.first()))
            .map(|f| f.path.clone())
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

    /// The segment files of `origin`: its own directory's (an error if that cannot be
    /// listed) and every carried copy's (one that cannot be listed is recorded and skipped).
    fn list(&self, origin: PeerId) -> Result<Listing, SyncError> {
        let dir = self.layout.origin_dir(&origin);
        let own = match list_segments(&dir) {
            Ok(files) => {
                self.forget_missing(&dir, &files);
                files
            }
            Err(e) => {
                self.check_root()?;
                let problem = FileProblem::Io(e.to_string());
                let err = problem.to_sync_error(&dir);
                self.record_failure(origin, &dir, None, problem);
                return Err(err);
            }
        };
        let devices = match self.layout.device_dirs() {
            Ok(d) => d,
            Err(e) => {
                self.check_root()?;
                tracing::debug!(%origin, error = %e, "cannot list the device directories");
                Vec::new()
            }
        };
        let mut carried = Vec::new();
        let mut listed = HashSet::new();
        for carrier in devices.iter().filter(|c| **c != origin) {
            let cdir = self.layout.origin_dir(carrier);
            match self.layout.carried_files(carrier, &origin) {
                Ok(files) => {
                    self.forget_missing_carried(origin, &cdir, &files);
                    carried.extend(files);
                    listed.insert(cdir);
                }
                // Skipped: it is the carrier's own directory, whose problem is reported
                // under the carrier's origin when that is read.
                Err(e) => {
                    tracing::debug!(%origin, dir = %cdir.display(), error = %e, "cannot list carried files")
                }
            }
        }
        // Carried files of directories that are gone altogether: forget what was recorded.
        let keep =
            |p: &Path| p == dir || p.parent().is_some_and(|d| d == dir || listed.contains(d));
        self.lock().bad.retain(|p, r| r.origin != origin || keep(p));
        Ok(Listing { own, carried })
    }

    /// Drops what was remembered about files of `dir` that are gone.
    fn forget_missing(&self, dir: &Path, files: &[SegmentFile]) {
        let present: HashSet<&Path> = files.iter().map(|f| f.path.as_path()).collect();
        // Only the directory's own segments: carried files in it belong to other origins.
        let gone = |p: &PathBuf| {
            p.parent() == Some(dir)
                && !present.contains(p.as_path())
                && p.file_name().and_then(|n| n.to_str()).and_then(SegmentName::parse).is_some()
        };
        let mut st = self.lock();
        st.tips.retain(|p, _| !gone(p));
        st.bad.retain(|p, _| !gone(p));
        st.segments.retain(|(p, _, _)| !gone(p));
        // The directory itself listed fine.
        st.bad.remove(dir);
    }

    /// [`FolderPuller::forget_missing`] for the carried files of `origin` in the device
    /// directory `dir` (whose own files are left alone).
    fn forget_missing_carried(&self, origin: PeerId, dir: &Path, files: &[SegmentFile]) {
        let present: HashSet<&Path> = files.iter().map(|f| f.path.as_path()).collect();
        let gone = |p: &PathBuf| {
            p.parent() == Some(dir)
                && !present.contains(p.as_path())
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(CarriedName::parse)
                    .is_some_and(|c| c.origin == origin)
        };
        let mut st = self.lock();
        st.tips.retain(|p, _| !gone(p));
        st.bad.retain(|p, _| !gone(p));
        st.segments.retain(|(p, _, _)| !gone(p));
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

    fn check_tip(&self, origin: PeerId, file: &SegmentFile) -> Result<SegmentTip, Load> {
        if let Some((stamp, tip)) = self.lock().tips.get(&file.path)
            && *stamp == file.stamp
        {
            return Ok(*tip);
        }
        let (bytes, stamp) = self.read(origin, file)?;
        match SegmentTip::check(&bytes, &self.expected(origin, file)) {
            Ok(tip) => {
                let mut st = self.lock();
                st.tips.insert(file.path.clone(), (stamp, tip));
                st.bad.remove(&file.path);
                Ok(tip)
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
    /// Every origin with a directory of its own, and every origin some device carries.
    fn list_peers(&self) -> Result<Vec<PeerId>, SyncError> {
        self.check_root()?;
        let dir = self.layout.workspace_dir();
        let devices = self
            .layout
            .device_dirs()
            .map_err(|e| self.unavailable(format!("{}: {e}", dir.display())))?;
        let mut out: BTreeSet<PeerId> = devices.iter().copied().collect();
        for carrier in &devices {
            match self.layout.carried_origins(carrier) {
                Ok(origins) => out.extend(origins),
                Err(e) => tracing::debug!(%carrier, error = %e, "cannot list carried origins"),
            }
        }
        Ok(out.into_iter().collect())
    }

    fn read_entries(&self, origin: PeerId, from: u64, max: usize) -> Result<Vec<Entry>, SyncError> {
        // A compaction elsewhere may delete files between our listing and our reading;
        // list again then. Three rounds are plenty: each round sees a newer directory.
        let mut last_error = None;
        for _ in 0..3 {
            let listing = self.list(origin)?;
            // The origin's own directory first; carried copies only where it has no good
            // file covering `from`.
            let files: Vec<&SegmentFile> = covering(&listing.own, from)
                .into_iter()
                .chain(covering(&listing.carried, from))
                .collect();
            if files.is_empty() {
                return Ok(Vec::new());
            }
            let mut vanished = false;
            let mut first_bad: Option<SyncError> = None;
            for file in files {
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

/// The segment files of one origin: its own directory's and every carried copy's.
struct Listing {
    own: Vec<SegmentFile>,
    carried: Vec<SegmentFile>,
}

impl Listing {
    fn all(self) -> Vec<SegmentFile> {
        self.own.into_iter().chain(self.carried).collect()
    }
}

/// The files of `files` containing `index`: the one reaching furthest first (fewest files
/// to read), then the one starting closest to `index` (least to skip).
fn covering(files: &[SegmentFile], index: u64) -> Vec<&SegmentFile> {
    let mut out: Vec<&SegmentFile> = files.iter().filter(|f| f.name.contains(index)).collect();
    out.sort_by_key(|f| std::cmp::Reverse((f.name.last, f.name.first)));
    out
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
