//! [`FolderSink`]: publishes a device's own log into its own directory of a shared folder.
//!
//! Owns: the device's origin directory `<folder>/<workspace>/<origin>/` — writing
//! segments there atomically, learning on start what it already published, cleaning up
//! its own temporary files, and compacting its small segments.
//!
//! Invariants:
//! - The origin is derived from the [`DeviceKey`] the sink is made with; no method takes
//!   an origin, and entries of any other origin are refused ([`SyncError::Misuse`]). So a
//!   sink can only ever write its own device's log.
//! - A segment is published atomically and durably (see [`crate::fsutil::write_atomically`]):
//!   [`FileLogSink::publish`] returns only once the entries are on disk under their
//!   canonical name.
//! - Nothing is published that a reader would refuse: entries are verified against the
//!   sink's chain position (chain, seals) before anything is written, and every segment
//!   ends on a seal.
//! - Compaction writes the merged segment (durably) before deleting the parts it
//!   replaces, so at every instant the published range stays covered; readers tolerate the
//!   overlap in between.
//! - `published()` is what the directory holds contiguously from index 0. If files vanish
//!   (a user deleted them, a cloud client lost them), the next [`FolderSink::refresh`]
//!   lowers it, and the mirror republishes from the local replica.
//!
//! Never: writes outside its own origin directory, creates the shared folder itself,
//! deletes a file it did not write (only canonical segments and temporary files of its own
//! directory, and only segments covered by others), or signs anything.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use shoal_core::{
    BatchApplied, ChainPosition, DeviceKey, Entry, FileLogSink, Ingest, PeerId, SyncError,
    WorkspaceId,
};

use crate::config::Config;
use crate::fsutil::{ensure_dir, read_segment_file, remove_file, write_atomically};
use crate::layout::{
    FileStamp, Layout, SegmentFile, SegmentName, coverage_path, is_temp_name, list_segments,
};
use crate::puller::FileProblem;
use crate::segment::{Expected, Segment, SegmentTip};

/// One of the sink's own segments, known to be good (its tip was checked or it was written
/// by this sink).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OwnSegment {
    pub(crate) name: SegmentName,
    pub(crate) path: PathBuf,
    pub(crate) raw_len: u64,
}

/// Writes the device's own log into the shared folder. One sink per origin at a time: the
/// directory has a single writer (DESIGN §3, `FileLogSink`).
#[derive(Debug)]
pub struct FolderSink {
    layout: Layout,
    dir: PathBuf,
    origin: PeerId,
    config: Config,
    segments: Vec<OwnSegment>,
    bad: Vec<(SegmentFile, FileProblem)>,
    position: ChainPosition,
    ingest: Ingest,
    tips: HashMap<PathBuf, (FileStamp, SegmentTip)>,
    /// Set when a write failed: what is on disk is uncertain until the next refresh.
    dirty: bool,
}

impl FolderSink {
    /// Opens the sink of the device holding `key` in `workspace` under the shared folder
    /// `folder`: creates its directory if needed, removes its stale temporary files, and
    /// learns what it already published. Fails with [`SyncError::Unavailable`] when the
    /// shared folder does not exist.
    ///
    /// Only the origin derived from the key is kept: holding the key is what shows the log
    /// is yours, but the sink never signs (seals come from the local replica's log).
    pub fn open(
        folder: impl Into<PathBuf>,
        workspace: WorkspaceId,
        key: &DeviceKey,
        config: Config,
    ) -> Result<FolderSink, SyncError> {
        let layout = Layout::new(folder, workspace);
        let origin = key.peer_id(&workspace);
        let mut sink = FolderSink {
            dir: layout.origin_dir(&origin),
            position: ChainPosition::start(&workspace, &origin),
            // The device's own entries carry its own clock's stamps: a clock that was set back
            // since must not keep them from being published (receivers judge the skew).
            ingest: Ingest::ignoring_skew(workspace),
            layout,
            origin,
            config,
            segments: Vec::new(),
            bad: Vec::new(),
            tips: HashMap::new(),
            dirty: false,
        };
        sink.refresh()?;
        Ok(sink)
    }

    /// The sink's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The chain position after the last published entry.
    pub fn position(&self) -> ChainPosition {
        self.position
    }

    /// The number of segment files the sink knows it has in the folder.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Own files that failed their check, with why (they are replaced or deleted once the
    /// range they claim is published again).
    pub fn bad_files(&self) -> Vec<(PathBuf, String)> {
        self.bad.iter().map(|(f, p)| (f.path.clone(), p.reason())).collect()
    }

    fn unavailable(&self, reason: impl Into<String>) -> SyncError {
        SyncError::Unavailable {
            what: format!("shared folder {}", self.layout.root().display()),
            reason: reason.into(),
        }
    }

    fn io_error(&self, doing: &str, path: &Path, e: io::Error) -> SyncError {
        // A shared folder that vanished mid-operation is a retryable condition, not a
        // storage failure.
        if let Err(reason) = self.layout.check_root() {
            return self.unavailable(reason);
        }
        SyncError::backend(format!("{doing} {}", path.display()), e)
    }

    /// Learns the directory anew: removes stale temporary files, checks every canonical
    /// segment's envelope, checksum and head (cached per file version), and sets
    /// `published()` to how far they reach contiguously from 0. Called on open and by the
    /// mirror before each publication, so files that vanished are noticed and republished.
    pub fn refresh(&mut self) -> Result<(), SyncError> {
        self.layout.check_root().map_err(|r| self.unavailable(r))?;
        let ws_dir = self.layout.workspace_dir();
        ensure_dir(&ws_dir, &self.config.faults)
            .map_err(|e| self.io_error("creating", &ws_dir, e))?;
        let dir = self.dir.clone();
        ensure_dir(&dir, &self.config.faults).map_err(|e| self.io_error("creating", &dir, e))?;
        // One rule for readers and the writer: a device directory is a real directory.
        // Readers skip symbolic links (a link could point anywhere, even into another
        // device's directory), so nothing written through one would ever reach anyone.
        if fs::symlink_metadata(&dir).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(SyncError::Unavailable {
                what: dir.display().to_string(),
                reason: "this device's directory in the folder is a symbolic link; other \
                         devices ignore those, so nothing published through it would reach \
                         them: replace it with a real directory"
                    .into(),
            });
        }
        self.remove_temp_files()?;
        let files = list_segments(&dir).map_err(|e| self.io_error("listing", &dir, e))?;
        let mut good = Vec::new();
        let mut bad = Vec::new();
        let mut tips = HashMap::new();
        for file in files {
            match self.tip(&file) {
                Ok((stamp, tip)) => {
                    good.push(OwnSegment {
                        name: file.name,
                        path: file.path.clone(),
                        raw_len: tip.raw_len.into(),
                    });
                    tips.insert(file.path, (stamp, tip));
                }
                // Deleted meanwhile: this sink is the only writer, so only by someone else.
                Err(None) => {}
                Err(Some(problem)) => {
                    if !self.bad.iter().any(|(known, _)| *known == file) {
                        tracing::warn!(path = %file.path.display(), reason = %problem.reason(), "own segment is damaged; it will be replaced");
                    }
                    bad.push((file, problem));
                }
            }
        }
        let (path, next) = coverage_path(&good, |s| s.name, |_| true);
        let position = match path.last().and_then(|s| tips.get(&s.path)) {
            Some((_, tip)) => ChainPosition { next, chain: tip.head.chain },
            None => ChainPosition::start(&self.layout.workspace(), &self.origin),
        };
        if position.next < self.position.next {
            tracing::warn!(
                origin = %self.origin,
                now = position.next,
                before = self.position.next,
                "published entries vanished from the shared folder; they will be republished"
            );
        }
        self.position = position;
        self.dirty = false;
        self.segments = good;
        self.bad = bad;
        self.tips = tips;
        Ok(())
    }

    fn remove_temp_files(&self) -> Result<(), SyncError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => return Err(self.io_error("listing", &self.dir, e)),
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_str().is_some_and(is_temp_name) {
                // Only this sink writes temporary files in this directory, and it is not
                // writing one now (it holds `&mut self`): this one is left from a crash.
                let path = entry.path();
                match remove_file(&path, &self.config.faults) {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), "removed a stale temporary file")
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot remove a stale temporary file")
                    }
                }
            }
        }
        Ok(())
    }

    fn expected(&self, name: SegmentName) -> Expected {
        Expected { workspace: self.layout.workspace(), origin: self.origin, name: Some(name) }
    }

    /// The checked tip of one own file; `Err(None)` if it vanished.
    fn tip(&self, file: &SegmentFile) -> Result<(FileStamp, SegmentTip), Option<FileProblem>> {
        if let Some((stamp, tip)) = self.tips.get(&file.path)
            && *stamp == file.stamp
        {
            return Ok((*stamp, *tip));
        }
        let (bytes, stamp) = match read_segment_file(&file.path, &self.config.faults) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(None),
            Err(e) => return Err(Some(FileProblem::Io(e.to_string()))),
        };
        SegmentTip::check(&bytes, &self.expected(file.name))
            .map(|tip| (stamp, tip))
            .map_err(|p| Some(FileProblem::Segment(p)))
    }

    /// Publishes what it can of `entries` (ascending, this sink's origin): entries below
    /// `published()` are counted as duplicates; from there on, every entry up to the last
    /// valid seal is written. Returns like [`shoal_core::LogProcessor::apply_batch`]; an
    /// error after a published prefix still leaves that prefix published.
    pub fn append(&mut self, entries: &[Entry]) -> Result<BatchApplied, SyncError> {
        if let Some(e) = entries.iter().find(|e| e.origin != self.origin) {
            return Err(SyncError::Misuse(format!(
                "the sink of {} cannot publish {}#{}: only a device's own log may be written",
                self.origin, e.origin, e.index
            )));
        }
        if self.dirty {
            self.refresh()?;
        }
        let next = self.position.next;
        let duplicates = entries.iter().take_while(|e| e.index < next).count();
        let rest = &entries[duplicates..];
        let Some(first) = rest.first() else {
            return Ok(BatchApplied { new: 0, duplicates: duplicates as u64, next });
        };
        if first.index != next {
            return Err(SyncError::Gap { origin: self.origin, expected: next, got: first.index });
        }
        // The one ingest pipeline, as for any replica: the device's own entries are checked
        // (chain, the seal that ends the run) before a byte of them reaches the folder.
        let mut run = self.ingest.verify(self.origin, self.position, rest.to_vec());
        let accepted = run.entries();
        if !accepted.is_empty() {
            if let Err(e) = self.write_run(accepted) {
                self.dirty = true;
                return Err(e);
            }
            debug_assert_eq!(self.position, run.end());
            self.maintain();
        }
        if let Some(e) = run.take_stop() {
            return Err(e);
        }
        Ok(BatchApplied {
            new: run.entries().len() as u64,
            duplicates: duplicates as u64,
            next: self.position.next,
        })
    }

    /// Writes verified entries continuing at `self.position`, cut at seals into segments
    /// of about the target size.
    fn write_run(&mut self, entries: &[Entry]) -> Result<(), SyncError> {
        let mut i = 0;
        while i < entries.len() {
            let end = next_cut(entries, i, &self.config)?;
            // `append` took these entries through the ingest pipeline from this very position.
            let seg = Segment::from_verified(
                self.layout.workspace(),
                self.position,
                entries[i..end].to_vec(),
            )?;
            self.write_segment(&seg)?;
            self.position = ChainPosition { next: seg.head().next, chain: seg.head().chain };
            i = end;
        }
        Ok(())
    }

    fn write_segment(&mut self, seg: &Segment) -> Result<(), SyncError> {
        let bytes = seg.encode(self.config.compression);
        let name = seg.name();
        let path = write_atomically(&self.dir, &name, &bytes, &self.config.faults)
            .map_err(|e| self.io_error("publishing", &self.dir.join(name.file_name()), e))?;
        if let Ok(meta) = fs::metadata(&path) {
            let tip = SegmentTip {
                name,
                start: seg.start(),
                head: seg.head(),
                raw_len: seg.raw_len() as u32,
                stored_len: (bytes.len() - crate::segment::HEADER_LEN - crate::segment::TRAILER_LEN)
                    as u32,
            };
            self.tips.insert(path.clone(), (FileStamp::of(&meta), tip));
        }
        self.segments.retain(|s| s.name != name);
        self.segments.push(OwnSegment { name, path, raw_len: seg.raw_len() as u64 });
        self.segments.sort_by_key(|s| s.name);
        Ok(())
    }

    /// After a publication: compacts, and removes damaged own files that are now covered.
    /// Failures are logged, never returned: the publication itself is already durable.
    fn maintain(&mut self) {
        self.remove_redundant();
        if let Err(e) = self.compact() {
            tracing::warn!(origin = %self.origin, error = %e, "compaction failed; will retry after the next publication");
        }
        let published = self.position.next;
        let segments = &self.segments;
        self.bad.retain(|(file, _)| {
            if segments.iter().any(|s| s.path == file.path) {
                return false; // replaced under the same name by a good segment
            }
            if file.name.last >= published {
                return true;
            }
            match remove_file(&file.path, &self.config.faults) {
                Ok(()) => {
                    tracing::info!(path = %file.path.display(), "removed a damaged own segment (republished)");
                    false
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                Err(_) => true,
            }
        });
    }

    /// Merges small adjacent own segments (see [`Config::compaction_fanout`]), writing each
    /// merged segment before deleting the parts it covers.
    pub fn compact(&mut self) -> Result<(), SyncError> {
        let fanout = self.config.compaction_fanout;
        if fanout < 2 {
            return Ok(());
        }
        loop {
            self.remove_redundant();
            let (path, _) = coverage_path(&self.segments, |s| s.name, |_| true);
            let path: Vec<OwnSegment> = path.into_iter().cloned().collect();
            let target = self.config.segment_target_bytes as u64;
            let max_entries = self.config.segment_max_entries as u64;
            let small = |s: &OwnSegment| s.raw_len < target && s.name.len() < max_entries;
            let from = path.iter().rposition(|s| !small(s)).map_or(0, |p| p + 1);
            let Some(group) = choose_group(&path[from..], fanout, target, max_entries) else {
                return Ok(());
            };
            self.merge(&path[from..][group])?;
        }
    }

    /// Deletes own segments contained in another own segment (left by an interrupted
    /// compaction or by a republication over a damaged file). O(n log n).
    fn remove_redundant(&mut self) {
        let (kept, removed) =
            remove_contained(std::mem::take(&mut self.segments), &self.config.faults);
        for path in removed {
            self.tips.remove(&path);
        }
        self.segments = kept;
    }

    fn merge(&mut self, group: &[OwnSegment]) -> Result<(), SyncError> {
        let mut parts = Vec::with_capacity(group.len());
        for s in group {
            let (bytes, _) = read_segment_file(&s.path, &self.config.faults)
                .map_err(|e| self.io_error("reading", &s.path, e))?;
            // Own files were verified when written; re-checking the chain and head is
            // enough to know the bytes are still the same entries.
            let seg = Segment::decode(&bytes, &self.expected(s.name))
                .map_err(|p| p.into_sync_error(&s.path.display().to_string()))?;
            parts.push(seg);
        }
        let refs: Vec<&Segment> = parts.iter().collect();
        let merged = Segment::concat(&refs)?;
        drop(parts);
        self.write_segment(&merged)?;
        tracing::debug!(origin = %self.origin, first = merged.first(), last = merged.last(), parts = group.len(), "compacted segments");
        // The merged segment is durable: only now remove what it covers. A crash in
        // between leaves overlapping files, which readers tolerate and the next
        // compaction removes.
        self.remove_redundant();
        Ok(())
    }
}

/// Where the segment starting at `entries[i]` ends (exclusive): at the first seal once the
/// segment reaches the target size or entry count, else at the last seal. Shared by the own
/// log's sink and the carried logs' ([`crate::CarrySink`]).
pub(crate) fn next_cut(entries: &[Entry], i: usize, config: &Config) -> Result<usize, SyncError> {
    let target = config.segment_target_bytes.max(1);
    let max_entries = config.segment_max_entries.max(1);
    let mut size = 0usize;
    let mut cut = None;
    for (j, e) in entries.iter().enumerate().skip(i) {
        size += crate::segment::approx_entry_len(e);
        if e.seal.is_some() {
            cut = Some(j + 1);
            if size >= target || j + 1 - i >= max_entries {
                break;
            }
        }
    }
    cut.ok_or_else(|| SyncError::Bug("a verified run does not end on a seal".into()))
}

/// Deletes the segments of `segments` (one directory's good files) contained in another
/// of them; returns the rest, sorted by range, and the paths deleted. O(n log n).
pub(crate) fn remove_contained(
    segments: Vec<OwnSegment>,
    faults: &crate::faults::Faults,
) -> (Vec<OwnSegment>, Vec<PathBuf>) {
    // In order of (first ascending, last descending), a segment is contained in another
    // exactly when an earlier one reaches at least as far. (Two files of one range would
    // have one name, so ranges are distinct.)
    let mut order = segments;
    order.sort_by_key(|s| (s.name.first, std::cmp::Reverse(s.name.last)));
    let (mut kept, mut removed) = (Vec::new(), Vec::new());
    let mut reach: Option<u64> = None;
    for s in order {
        if reach.is_some_and(|r| r >= s.name.last) {
            match remove_file(&s.path, faults) {
                Ok(()) => {
                    removed.push(s.path);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    removed.push(s.path);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(path = %s.path.display(), error = %e, "cannot remove a redundant segment");
                }
            }
        } else {
            reach = Some(s.name.last);
        }
        kept.push(s);
    }
    kept.sort_by_key(|s| s.name);
    (kept, removed)
}

/// Size tier of a segment by its entry count: `floor(log_fanout(len))`.
fn tier(len: u64, fanout: u64) -> u32 {
    let mut t = 0;
    let mut n = len;
    while n >= fanout {
        n /= fanout;
        t += 1;
    }
    t
}

/// Picks the trailing run of small segments to merge: for the lowest tier `t` at which the
/// trailing segments of tier `<= t` number at least `fanout`, that run (shortened from the
/// front until it fits the size caps; at least two segments). Merging the lowest tier
/// first keeps each entry rewritten about `log_fanout(n)` times; including the smaller
/// tiers left behind a larger segment absorbs them at the next merge above them.
pub(crate) fn choose_group(
    small: &[OwnSegment],
    fanout: usize,
    target: u64,
    max_entries: u64,
) -> Option<std::ops::Range<usize>> {
    let f = fanout as u64;
    let max_tier = small.iter().map(|s| tier(s.name.len(), f)).max()?;
    for t in 0..=max_tier {
        let run_start = small.iter().rposition(|s| tier(s.name.len(), f) > t).map_or(0, |p| p + 1);
        if small.len() - run_start < fanout {
            continue;
        }
        let mut start = small.len();
        let (mut bytes, mut entries) = (0u64, 0u64);
        while start > run_start {
            let s = &small[start - 1];
            if bytes + s.raw_len > target || entries + s.name.len() > max_entries {
                break;
            }
            bytes += s.raw_len;
            entries += s.name.len();
            start -= 1;
        }
        return (small.len() - start >= 2).then_some(start..small.len());
    }
    None
}

impl FileLogSink for FolderSink {
    fn origin(&self) -> PeerId {
        self.origin
    }

    fn published(&self) -> u64 {
        self.position.next
    }

    fn workspace(&self) -> WorkspaceId {
        self.layout.workspace()
    }

    fn position(&self) -> ChainPosition {
        self.position
    }

    fn describe(&self) -> String {
        // The file holding the tip names the disagreement best; the directory otherwise.
        let tip = self.position.next.checked_sub(1);
        self.segments
            .iter()
            .filter(|s| tip.is_some_and(|t| s.name.first <= t && t <= s.name.last))
            .map(|s| s.path.display().to_string())
            .next()
            .unwrap_or_else(|| self.dir.display().to_string())
    }

    fn publish(&mut self, entries: &[Entry]) -> Result<(), SyncError> {
        let done = self.append(entries)?;
        if let Some(last) = entries.last()
            && done.next <= last.index
        {
            return Err(SyncError::Misuse(format!(
                "{}#{} is not sealed: a publication must end on a sealed entry",
                self.origin, last.index
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(first: u64, last: u64) -> OwnSegment {
        OwnSegment { name: SegmentName { first, last }, path: PathBuf::new(), raw_len: 100 }
    }

    #[test]
    fn tiers_merge_lowest_first_and_absorb_stragglers() {
        let singles: Vec<OwnSegment> = (0..8).map(|i| own(i, i)).collect();
        assert_eq!(choose_group(&singles, 8, 1 << 20, 1 << 20), Some(0..8));
        assert_eq!(choose_group(&singles[..7], 8, 1 << 20, 1 << 20), None);

        // Three stragglers, then a tier-1 segment, then eight singles: the singles merge.
        let mut mixed: Vec<OwnSegment> = (0..3).map(|i| own(i, i)).collect();
        mixed.push(own(3, 10));
        mixed.extend((11..19).map(|i| own(i, i)));
        assert_eq!(choose_group(&mixed, 8, 1 << 20, 1 << 20), Some(4..12));
        // Later, with eight tier-1 segments at the end, the stragglers are absorbed.
        let mut later: Vec<OwnSegment> = (0..3).map(|i| own(i, i)).collect();
        later.extend((0..8).map(|k| own(3 + k * 8, 10 + k * 8)));
        assert_eq!(choose_group(&later, 8, 1 << 20, 1 << 20), Some(0..11));
        // A byte cap shortens the run from the front.
        assert_eq!(choose_group(&singles, 8, 300, 1 << 20), Some(5..8));
        assert_eq!(choose_group(&singles, 8, 150, 1 << 20), None);
    }
}
