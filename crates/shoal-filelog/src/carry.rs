//! [`CarrySink`]: writes, inside the device's own directory, copies of other origins' logs
//! that the device holds from elsewhere (a relay), so that devices which sync only with
//! the folder receive them.
//!
//! Owns: the carried segment files `carried-<origin>-<first>-<last>.seg` in the device's own
//! directory `<folder>/<workspace>/<carrier>/`, for every origin the device carries —
//! writing them atomically, compacting them with the own log's policy
//! ([`Config::compaction_fanout`]), and removing its own leftover temporary files there.
//!
//! Invariants:
//! - The carrier is derived from the [`DeviceKey`] the sink is made with, and every path it
//!   writes is built from it: a `CarrySink` writes only in its own device's directory,
//!   never into another device's, and only under carried names (never a name of its own
//!   log). The device's own origin is never carried (that is [`crate::FolderSink`]'s).
//! - A carried segment is an ordinary segment of the origin's log (`docs/FORMAT.md` §4):
//!   same entries, same wire form, the origin's own signed head and seals. The carrier
//!   signs nothing and cannot: a reader checks a carried segment exactly like one in the
//!   origin's directory, and the receiving replica's ingest pipeline checks the seals.
//! - What is carried continues the folder's copy of the origin exactly ([`CarrySink::carry`]
//!   takes the folder's position, chain included, and the ingest pipeline checks the
//!   entries against it): a carrier never writes a log that disagrees with what the folder
//!   holds, so a fork is never spread or hidden by carrying (fork evidence stays in the
//!   origin's own directory).
//! - Entries keep their origin and index. Two carriers racing may write the same entries
//!   twice (each in its own directory); readers take each entry once.
//! - A carried copy need not start at 0 and may have gaps (the origin's own directory
//!   covered the range in between when the carrier carried). Compaction merges small
//!   adjacent segments within each contiguous run of the copy, writing the merged segment
//!   (durably) before deleting the parts, as for the own log.
//!
//! Never: writes outside its own directory or under any but carried names, signs anything,
//! or deletes anything but its own carried temporary files and its own carried segments
//! that a merged one covers.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use shoal_core::{ChainPosition, DeviceKey, Entry, Ingest, PeerId, SyncError, WorkspaceId};

use crate::config::Config;
use crate::fsutil::{ensure_dir, read_segment_file, remove_file, write_file_atomically};
use crate::layout::{
    CARRIED_PREFIX, CarriedName, FileStamp, Layout, SegmentName, carried_temp_name, is_temp_name,
};
use crate::segment::{Expected, Segment, SegmentTip};
use crate::sink::{OwnSegment, choose_group, remove_contained};

/// Writes carried copies of other origins' logs into the device's own directory. One per
/// device and folder (the directory has a single writer).
#[derive(Debug)]
pub struct CarrySink {
    layout: Layout,
    carrier: PeerId,
    config: Config,
    ingest: Ingest,
    /// Set once this sink removed the stale carried temporary files of its directory.
    cleaned: bool,
    /// Raw body lengths of carried files whose tip passed the check, by file version.
    tips: HashMap<PathBuf, (FileStamp, u64)>,
}

/// What one [`CarrySink::carry`] did.
#[derive(Debug)]
pub struct Carried {
    /// The folder's position of the origin after the entries written (the carried copy's
    /// end).
    pub end: ChainPosition,
    /// Entries written.
    pub written: u64,
    /// Why the rest was not carried, if it was not: the entries do not continue the
    /// folder's copy (a fork, or entries the ingest pipeline refuses).
    pub refused: Option<SyncError>,
}

impl CarrySink {
    /// The carried logs of the device holding `key` in `workspace` under the shared folder
    /// `folder`. Fails with [`SyncError::Unavailable`] when the shared folder does not exist;
    /// creates nothing until something is carried.
    pub fn open(
        folder: impl Into<PathBuf>,
        workspace: WorkspaceId,
        key: &DeviceKey,
        config: Config,
    ) -> Result<CarrySink, SyncError> {
        let layout = Layout::new(folder, workspace);
        let sink = CarrySink {
            carrier: key.peer_id(&workspace),
            // The entries were judged when the local replica took them; a carrier does not
            // judge them again against its own clock (receivers do).
            ingest: Ingest::ignoring_skew(workspace),
            layout,
            config,
            cleaned: false,
            tips: HashMap::new(),
        };
        sink.layout.check_root().map_err(|r| sink.unavailable(r))?;
        Ok(sink)
    }

    /// The carrying device (whose directory holds the carried logs).
    pub fn carrier(&self) -> PeerId {
        self.carrier
    }

    /// The directory the carried files are written in: the carrier's own,
    /// `<folder>/<workspace>/<carrier>`.
    pub fn dir(&self) -> PathBuf {
        self.layout.origin_dir(&self.carrier)
    }

    /// Writes `entries` of `origin` (ascending) that continue the folder's copy of its log
    /// at `at` (from [`crate::FolderPuller::origin_position`]): entries below `at.next` are
    /// skipped, the rest are checked by the ingest pipeline against `at` (chain, seals) and
    /// written, up to the last valid seal, as segments of the carried copy. Each segment is
    /// durable on return.
    ///
    /// Fails with [`SyncError::Misuse`] for the device's own origin or entries of another
    /// origin, [`SyncError::Gap`] if the entries start after `at.next`, and with the I/O
    /// error of a write (what was written before stays).
    pub fn carry(
        &mut self,
        origin: PeerId,
        at: ChainPosition,
        entries: Vec<Entry>,
    ) -> Result<Carried, SyncError> {
        if origin == self.carrier {
            return Err(SyncError::Misuse(format!(
                "{origin} is this device's own origin: its log is published in its own \
                 directory (FolderSink), never carried"
            )));
        }
        if let Some(e) = entries.iter().find(|e| e.origin != origin) {
            return Err(SyncError::Misuse(format!(
                "a carried batch of {origin} contains {}#{}",
                e.origin, e.index
            )));
        }
        let rest: Vec<Entry> = entries.into_iter().filter(|e| e.index >= at.next).collect();
        let Some(first) = rest.first() else {
            return Ok(Carried { end: at, written: 0, refused: None });
        };
        if first.index != at.next {
            return Err(SyncError::Gap { origin, expected: at.next, got: first.index });
        }
        let mut run = self.ingest.verify(origin, at, rest);
        let accepted = run.entries();
        let mut position = at;
        if !accepted.is_empty() {
            let dir = self.prepare()?;
            let mut i = 0;
            while i < accepted.len() {
                let end = crate::sink::next_cut(accepted, i, &self.config)?;
                let seg = Segment::from_verified(
                    self.layout.workspace(),
                    position,
                    accepted[i..end].to_vec(),
                )?;
                self.write(&dir, origin, &seg, "carrying")?;
                tracing::debug!(%origin, first = seg.first(), last = seg.last(), "carried a segment");
                position = ChainPosition { next: seg.head().next, chain: seg.head().chain };
                i = end;
            }
            // The carried entries are durable already; a failed compaction is retried
            // after the next carry.
            if let Err(e) = self.compact(&origin) {
                tracing::warn!(%origin, error = %e, "compaction of a carried copy failed");
            }
        }
        Ok(Carried { end: position, written: position.next - at.next, refused: run.take_stop() })
    }

    /// Merges small adjacent segments of the carried copy of `origin`, within each
    /// contiguous run of it, with the own log's policy ([`Config::compaction_fanout`]); the
    /// merged segment is written (durably) before the parts it covers are deleted.
    pub fn compact(&mut self, origin: &PeerId) -> Result<(), SyncError> {
        let fanout = self.config.compaction_fanout;
        if fanout < 2 {
            return Ok(());
        }
        let target = self.config.segment_target_bytes as u64;
        let max_entries = self.config.segment_max_entries as u64;
        let small = |s: &OwnSegment| s.raw_len < target && s.name.len() < max_entries;
        let dir = self.dir();
        loop {
            let (segments, removed) =
                remove_contained(self.good_files(origin, &dir)?, &self.config.faults);
            for path in removed {
                self.tips.remove(&path);
            }
            let mut group = None;
            for run in contiguous_runs(&segments) {
                let from = run.iter().rposition(|s| !small(s)).map_or(0, |p| p + 1);
                if let Some(g) = choose_group(&run[from..], fanout, target, max_entries) {
                    group = Some(run[from..][g].to_vec());
                    break;
                }
            }
            let Some(group) = group else { return Ok(()) };
            self.merge(origin, &dir, &group)?;
        }
    }

    /// The carried files of `origin` whose tip passes the check (bad ones are left alone:
    /// never merged, never deleted).
    fn good_files(&mut self, origin: &PeerId, dir: &Path) -> Result<Vec<OwnSegment>, SyncError> {
        let files = self
            .layout
            .carried_files(&self.carrier, origin)
            .map_err(|e| self.io_error("listing", dir, e))?;
        let present: HashSet<&Path> = files.iter().map(|f| f.path.as_path()).collect();
        let of_origin = |p: &Path| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(CarriedName::parse)
                .is_some_and(|c| c.origin == *origin)
        };
        self.tips.retain(|p, _| !of_origin(p) || present.contains(p.as_path()));
        let mut out = Vec::new();
        for file in &files {
            if let Some((stamp, raw_len)) = self.tips.get(&file.path)
                && *stamp == file.stamp
            {
                out.push(OwnSegment {
                    name: file.name,
                    path: file.path.clone(),
                    raw_len: *raw_len,
                });
                continue;
            }
            let Ok((bytes, stamp)) = read_segment_file(&file.path, &self.config.faults) else {
                continue;
            };
            if let Ok(tip) = SegmentTip::check(&bytes, &self.expected(origin, file.name)) {
                self.tips.insert(file.path.clone(), (stamp, tip.raw_len.into()));
                out.push(OwnSegment {
                    name: file.name,
                    path: file.path.clone(),
                    raw_len: tip.raw_len.into(),
                });
            }
        }
        Ok(out)
    }

    /// Writes `seg` (of `origin`) atomically and durably under its carried name in `dir`.
    fn write(
        &self,
        dir: &Path,
        origin: PeerId,
        seg: &Segment,
        doing: &str,
    ) -> Result<(), SyncError> {
        let bytes = seg.encode(self.config.compression);
        let carried = CarriedName { origin, name: seg.name() };
        let file_name = carried.file_name();
        write_file_atomically(
            dir,
            &file_name,
            |random| carried_temp_name(&carried, random),
            &bytes,
            &self.config.faults,
        )
        .map_err(|e| self.io_error(doing, &dir.join(&file_name), e))?;
        Ok(())
    }

    fn expected(&self, origin: &PeerId, name: SegmentName) -> Expected {
        Expected { workspace: self.layout.workspace(), origin: *origin, name: Some(name) }
    }

    fn merge(
        &mut self,
        origin: &PeerId,
        dir: &Path,
        group: &[OwnSegment],
    ) -> Result<(), SyncError> {
        let mut parts = Vec::with_capacity(group.len());
        for s in group {
            let (bytes, _) = read_segment_file(&s.path, &self.config.faults)
                .map_err(|e| self.io_error("reading", &s.path, e))?;
            let seg = Segment::decode(&bytes, &self.expected(origin, s.name))
                .map_err(|p| p.into_sync_error(&s.path.display().to_string()))?;
            parts.push(seg);
        }
        let refs: Vec<&Segment> = parts.iter().collect();
        let merged = Segment::concat(&refs)?;
        drop(parts);
        self.write(dir, *origin, &merged, "compacting")?;
        tracing::debug!(%origin, first = merged.first(), last = merged.last(), parts = group.len(), "compacted a carried copy");
        // The parts, now contained in the merged segment, are deleted by the next round's
        // `remove_contained`.
        Ok(())
    }

    /// Creates (if needed) the workspace and own directories, refusing a symbolic link;
    /// removes stale carried temporary files once.
    fn prepare(&mut self) -> Result<PathBuf, SyncError> {
        self.layout.check_root().map_err(|r| self.unavailable(r))?;
        let dir = self.dir();
        for d in [self.layout.workspace_dir(), dir.clone()] {
            ensure_dir(&d, &self.config.faults).map_err(|e| self.io_error("creating", &d, e))?;
        }
        // Readers skip symbolic links; nothing written through one would reach anyone.
        if fs::symlink_metadata(&dir).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(SyncError::Unavailable {
                what: dir.display().to_string(),
                reason: "this device's directory in the folder is a symbolic link; other \
                         devices ignore those, so nothing carried through it would reach \
                         them: replace it with a real directory"
                    .into(),
            });
        }
        if !self.cleaned {
            self.remove_temp_files(&dir);
            self.cleaned = true;
        }
        Ok(dir)
    }

    fn remove_temp_files(&self, dir: &Path) {
        let Ok(entries) = fs::read_dir(dir) else { return };
        let carried_temp = format!(".{CARRIED_PREFIX}");
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if is_temp_name(name) && name.starts_with(&carried_temp) {
                // Only this device writes in its own directory, and this sink is not writing
                // now (it holds `&mut self`): the file is left from a crash.
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
    }

    fn unavailable(&self, reason: impl Into<String>) -> SyncError {
        SyncError::Unavailable {
            what: format!("shared folder {}", self.layout.root().display()),
            reason: reason.into(),
        }
    }

    fn io_error(&self, doing: &str, path: &Path, e: io::Error) -> SyncError {
        if let Err(reason) = self.layout.check_root() {
            return self.unavailable(reason);
        }
        SyncError::backend(format!("{doing} {}", path.display()), e)
    }
}

/// Splits segments (sorted by range, none contained in another) into runs without gaps:
/// consecutive segments of a run touch or overlap.
fn contiguous_runs(segments: &[OwnSegment]) -> Vec<&[OwnSegment]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=segments.len() {
        let breaks = i == segments.len()
            || segments[i].name.first > segments[i - 1].name.last.saturating_add(1);
        if breaks {
            out.push(&segments[start..i]);
            start = i;
        }
    }
    out.retain(|r| !r.is_empty());
    out
}
