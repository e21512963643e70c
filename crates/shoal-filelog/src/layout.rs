//! Where things live in a shared folder, and which names count.
//!
//! Owns: the directory layout `<folder>/<workspace hex>/<origin hex>/<first>-<last>.seg`
//! ([`SegmentName`], [`Layout`]), the carried segments a device keeps inside its own
//! directory (`<origin hex>/carried-<other origin hex>-<first>-<last>.seg`, [`CarriedName`],
//! [`CarriedPath`]), the name of the temporary files a sink writes before it renames them
//! into place, and the listing of one directory's own segments ([`list_segments`]) and
//! carried ones ([`list_carried`]).
//!
//! Invariants: a name is *canonical* only in exactly one spelling — ids as 32 lowercase hex
//! digits, indices as 20 zero-padded decimal digits (`u64::MAX` has 20), `first <= last`,
//! suffix `.seg`. Everything else in the folder (temporary files, `*.sync-conflict-*`,
//! `name (1).seg`, `.DS_Store`, upper-case hex, unpadded numbers, symlinks, directories where
//! files belong) is ignored by readers, so cloud clients may litter the folder freely.
//!
//! Never: reads file contents, or creates, renames or deletes anything.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use shoal_core::{PeerId, WorkspaceId};

/// The file name suffix of segments.
pub const SEGMENT_SUFFIX: &str = ".seg";
/// Digits of each index in a segment file name (`u64::MAX` has 20 decimal digits).
pub const INDEX_DIGITS: usize = 20;
/// The suffix of a sink's temporary files (`.<first>-<last>.seg.<16 hex>.tmp`).
pub const TEMP_SUFFIX: &str = ".tmp";
/// The prefix of carried segment files in a device's own directory
/// (`carried-<origin hex>-<first:020>-<last:020>.seg`). Readers older than carrying ignore
/// them: such a name is not a canonical segment name. (Files, not a subdirectory: every
/// tool that moves a device's directory file by file moves them too.)
pub const CARRIED_PREFIX: &str = "carried-";

/// The index range of a segment, as its canonical file name spells it:
/// `<first:020>-<last:020>.seg`, e.g. `00000000000000000000-00000000000000000041.seg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentName {
    /// Index of the first entry.
    pub first: u64,
    /// Index of the last entry (inclusive).
    pub last: u64,
}

impl SegmentName {
    /// Parses a canonical segment file name; `None` for anything else.
    pub fn parse(name: &str) -> Option<SegmentName> {
        let stem = name.strip_suffix(SEGMENT_SUFFIX)?;
        let (a, b) = stem.split_once('-')?;
        let first = parse_padded(a)?;
        let last = parse_padded(b)?;
        (first <= last).then_some(SegmentName { first, last })
    }

    /// The canonical file name.
    pub fn file_name(&self) -> String {
        format!("{:020}-{:020}{SEGMENT_SUFFIX}", self.first, self.last)
    }

    /// The number of entries the name claims (saturating: `0..=u64::MAX` has 2^64).
    pub fn len(&self) -> u64 {
        (self.last - self.first).saturating_add(1)
    }

    /// Always false: a segment holds at least one entry.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// True when `index` lies in the range.
    pub fn contains(&self, index: u64) -> bool {
        self.first <= index && index <= self.last
    }

    /// True when `other`'s range lies within this one.
    pub fn covers(&self, other: &SegmentName) -> bool {
        self.first <= other.first && other.last <= self.last
    }
}

fn parse_padded(s: &str) -> Option<u64> {
    if s.len() != INDEX_DIGITS || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // 20 digits may exceed u64::MAX ("99999999999999999999"); parse rejects those.
    s.parse().ok()
}

/// Parses a directory name that must be an id in canonical form (32 lowercase hex digits).
pub fn parse_id_dir(name: &str) -> Option<[u8; 16]> {
    if name.len() != 32 || !name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 16];
    hex::decode_to_slice(name, &mut out).ok()?;
    Some(out)
}

/// The temporary name a sink writes `name` under before renaming it into place. It starts
/// with a dot (hidden, and never canonical) and carries random bytes so two attempts never
/// collide.
pub fn temp_name(name: &SegmentName, random: [u8; 8]) -> String {
    format!(".{}.{}{TEMP_SUFFIX}", name.file_name(), hex::encode(random))
}

/// The temporary name a carrier writes the carried segment `name` under (as
/// [`temp_name`]).
pub fn carried_temp_name(name: &CarriedName, random: [u8; 8]) -> String {
    format!(".{}.{}{TEMP_SUFFIX}", name.file_name(), hex::encode(random))
}

/// True for a name [`temp_name`] or [`carried_temp_name`] produces (used by a sink to
/// clean up after a crash in its own directory only).
pub fn is_temp_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.') else { return false };
    let Some(rest) = rest.strip_suffix(TEMP_SUFFIX) else { return false };
    let Some((seg, random)) = rest.rsplit_once('.') else { return false };
    random.len() == 16
        && random.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && (SegmentName::parse(seg).is_some() || CarriedName::parse(seg).is_some())
}

/// The paths of one workspace in one shared folder.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
    workspace: WorkspaceId,
}

impl Layout {
    /// The layout of `workspace` under the shared folder `root`.
    pub fn new(root: impl Into<PathBuf>, workspace: WorkspaceId) -> Self {
        Layout { root: root.into(), workspace }
    }

    /// The shared folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The workspace.
    pub fn workspace(&self) -> WorkspaceId {
        self.workspace
    }

    /// `<folder>/<workspace hex>`.
    pub fn workspace_dir(&self) -> PathBuf {
        self.root.join(self.workspace.to_hex())
    }

    /// `<folder>/<workspace hex>/<origin hex>`.
    pub fn origin_dir(&self, origin: &PeerId) -> PathBuf {
        self.workspace_dir().join(origin.to_hex())
    }

    /// `<folder>/<workspace hex>/<carrier hex>/carried-<origin hex>-<first>-<last>.seg`: a
    /// segment of `carrier`'s copy of `origin`'s log.
    pub fn carried_path(&self, carrier: &PeerId, origin: &PeerId, name: &SegmentName) -> PathBuf {
        self.origin_dir(carrier).join(CarriedName { origin: *origin, name: *name }.file_name())
    }

    /// The segments of `carrier`'s copy of `origin`'s log, sorted by range (empty for the
    /// carrier's own origin: a device never carries itself).
    pub fn carried_files(&self, carrier: &PeerId, origin: &PeerId) -> io::Result<Vec<SegmentFile>> {
        if carrier == origin {
            return Ok(Vec::new());
        }
        list_carried(&self.origin_dir(carrier), Some(origin))
            .map(|files| files.into_iter().map(|(_, f)| f).collect())
    }

    /// The device directories of the workspace (canonical names, real directories; symbolic
    /// links are skipped as everywhere), sorted. A missing workspace directory lists as empty.
    pub fn device_dirs(&self) -> io::Result<Vec<PeerId>> {
        list_id_dirs(&self.workspace_dir())
    }

    /// The origins `carrier` carries (those with a carried segment in its directory),
    /// sorted; never `carrier` itself.
    pub fn carried_origins(&self, carrier: &PeerId) -> io::Result<Vec<PeerId>> {
        let files = list_carried(&self.origin_dir(carrier), None)?;
        let set: std::collections::BTreeSet<PeerId> =
            files.into_iter().map(|(o, _)| o).filter(|o| o != carrier).collect();
        Ok(set.into_iter().collect())
    }

    /// The devices whose directory holds carried segments of `origin`, sorted; never
    /// `origin` itself.
    pub fn carriers_of(&self, origin: &PeerId) -> io::Result<Vec<PeerId>> {
        let mut out = Vec::new();
        for c in self.device_dirs()? {
            if !self.carried_files(&c, origin)?.is_empty() {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// The path of a segment of `origin`.
    pub fn segment_path(&self, origin: &PeerId, name: &SegmentName) -> PathBuf {
        self.origin_dir(origin).join(name.file_name())
    }

    /// Fails with a description when the shared folder itself is missing or not a
    /// directory. Nothing below it is ever created when it is missing: an unmounted network
    /// share or a cloud folder that was moved away must not be silently replaced by an
    /// empty local directory.
    pub fn check_root(&self) -> Result<(), String> {
        match fs::metadata(&self.root) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err("is not a directory".into()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err("does not exist (moved, deleted or not mounted?)".into())
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The canonically named real directories in `dir`, as ids, sorted.
fn list_id_dirs(dir: &Path) -> io::Result<Vec<PeerId>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Some(id) = entry.file_name().to_str().and_then(parse_id_dir) else { continue };
        // `DirEntry::file_type` does not follow symlinks.
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.push(PeerId::from_bytes(id));
        }
    }
    out.sort();
    Ok(out)
}

/// The file name of a carried segment: `carried-<origin hex>-<first:020>-<last:020>.seg`,
/// a segment of `origin`'s log kept in another device's directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CarriedName {
    /// The origin whose entries the file holds.
    pub origin: PeerId,
    /// Its range.
    pub name: SegmentName,
}

impl CarriedName {
    /// Parses a canonical carried file name; `None` for anything else.
    pub fn parse(file_name: &str) -> Option<CarriedName> {
        let rest = file_name.strip_prefix(CARRIED_PREFIX)?;
        let (hex, seg) = (rest.get(..32)?, rest.get(32..)?);
        let origin = PeerId::from_bytes(parse_id_dir(hex)?);
        Some(CarriedName { origin, name: SegmentName::parse(seg.strip_prefix('-')?)? })
    }

    /// The canonical file name.
    pub fn file_name(&self) -> String {
        format!("{CARRIED_PREFIX}{}-{}", self.origin.to_hex(), self.name.file_name())
    }
}

/// Lists the canonical carried segment files in the device directory `dir` (of `origin`
/// only, if given), sorted by origin and range. Everything else is skipped, as in
/// [`list_segments`]; a missing directory lists as empty.
pub fn list_carried(dir: &Path, origin: Option<&PeerId>) -> io::Result<Vec<(PeerId, SegmentFile)>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(carried) = file_name.to_str().and_then(CarriedName::parse) else { continue };
        if origin.is_some_and(|o| *o != carried.origin) {
            continue;
        }
        // `DirEntry::metadata` does not follow symlinks: a symlink is not a segment.
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if !meta.is_file() {
            continue;
        }
        let file =
            SegmentFile { name: carried.name, path: entry.path(), stamp: FileStamp::of(&meta) };
        out.push((carried.origin, file));
    }
    out.sort_by_key(|(o, f)| (*o, f.name));
    Ok(out)
}

/// A segment path inside a workspace directory, as the layout spells it: either a
/// device's own segment (`<origin>/<first>-<last>.seg`) or a carried one
/// (`<carrier>/carried-<origin>-<first>-<last>.seg`). Used to name and check files; the
/// puller never guesses a place from a path it did not build itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CarriedPath {
    /// The device whose directory holds the file (the origin itself for an own segment).
    pub holder: PeerId,
    /// The origin whose entries the file holds.
    pub origin: PeerId,
    /// Its range.
    pub name: SegmentName,
}

impl CarriedPath {
    /// Parses a path relative to the workspace directory, `/`-separated; `None` for
    /// anything that is not exactly one of the two canonical forms (a carried copy of the
    /// holder's own origin included).
    pub fn parse(rel: &str) -> Option<CarriedPath> {
        let (holder, file) = rel.split_once('/')?;
        let holder = PeerId::from_bytes(parse_id_dir(holder)?);
        if let Some(name) = SegmentName::parse(file) {
            return Some(CarriedPath { holder, origin: holder, name });
        }
        let carried = CarriedName::parse(file)?;
        (carried.origin != holder).then_some(CarriedPath {
            holder,
            origin: carried.origin,
            name: carried.name,
        })
    }

    /// True for a carried copy (held by another device than its origin).
    pub fn is_carried(&self) -> bool {
        self.holder != self.origin
    }

    /// The canonical relative path.
    pub fn to_rel(&self) -> String {
        match self.is_carried() {
            false => format!("{}/{}", self.holder.to_hex(), self.name.file_name()),
            true => format!(
                "{}/{}",
                self.holder.to_hex(),
                CarriedName { origin: self.origin, name: self.name }.file_name()
            ),
        }
    }
}

/// What identifies one version of a file: if any of these change, the file was replaced or
/// grew, and whatever was learned from it must be learned again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileStamp {
    /// Length in bytes.
    pub len: u64,
    /// Modification time, where the filesystem has one.
    pub modified: Option<SystemTime>,
    /// Inode number (0 where the platform has none). A rename over the file changes it.
    pub inode: u64,
}

impl FileStamp {
    /// The stamp of a file's metadata.
    pub fn of(meta: &fs::Metadata) -> Self {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(meta);
        #[cfg(not(unix))]
        let inode = 0;
        FileStamp { len: meta.len(), modified: meta.modified().ok(), inode }
    }
}

/// One canonical segment file found in an origin directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFile {
    /// Its range.
    pub name: SegmentName,
    /// Its path.
    pub path: PathBuf,
    /// The version of the file that was listed.
    pub stamp: FileStamp,
}

/// Lists the canonical segment files of one origin directory, sorted by `(first, last)`.
/// Everything else is skipped. A missing directory lists as empty. Files that vanish while
/// being listed (a compaction deleting its parts) are skipped too.
pub fn list_segments(dir: &Path) -> io::Result<Vec<SegmentFile>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str().and_then(SegmentName::parse) else { continue };
        // `DirEntry::metadata` does not follow symlinks: a symlink is not a segment.
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if !meta.is_file() {
            continue;
        }
        out.push(SegmentFile { name, path: entry.path(), stamp: FileStamp::of(&meta) });
    }
    out.sort_by_key(|f| f.name);
    Ok(out)
}

/// The segments a reader follows from index 0: starting at 0, repeatedly the usable segment
/// that contains the next needed index and reaches furthest. Returns that path (consecutive
/// segments may overlap) and the index after its end. O(n log n) in the number of files.
pub fn coverage_path<T>(
    segments: &[T],
    name: impl Fn(&T) -> SegmentName,
    usable: impl Fn(&T) -> bool,
) -> (Vec<&T>, u64) {
    let mut order: Vec<&T> = segments.iter().filter(|s| usable(s)).collect();
    order.sort_by_key(|s| name(s).first);
    let mut path = Vec::new();
    let mut next = 0u64;
    let mut i = 0;
    loop {
        // Among the segments that start at or before `next`, the one reaching furthest.
        // Segments passed over in an earlier round end before `next` (the round's choice
        // reached further than all of them), so one sweep suffices.
        let mut best: Option<&T> = None;
        while let Some(s) = order.get(i).copied().filter(|s| name(s).first <= next) {
            if name(s).last >= next && best.is_none_or(|b| name(s).last > name(b).last) {
                best = Some(s);
            }
            i += 1;
        }
        let Some(best) = best else { break };
        path.push(best);
        let last = name(best).last;
        if last == u64::MAX {
            next = u64::MAX;
            break;
        }
        next = last + 1;
    }
    (path, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_segment_names_parse() {
        let good = SegmentName { first: 0, last: 41 };
        assert_eq!(good.file_name(), "00000000000000000000-00000000000000000041.seg");
        assert_eq!(SegmentName::parse(&good.file_name()), Some(good));
        let max = SegmentName { first: u64::MAX, last: u64::MAX };
        assert_eq!(SegmentName::parse(&max.file_name()), Some(max));
        for bad in [
            "0-41.seg",
            "00000000000000000000-00000000000000000041.seg.tmp",
            "00000000000000000000-00000000000000000041 (1).seg",
            "00000000000000000000-00000000000000000041.sync-conflict-20261125-101010-ABCDEFG.seg",
            "00000000000000000041-00000000000000000000.seg",
            "99999999999999999999-99999999999999999999.seg",
            "+0000000000000000000-00000000000000000041.seg",
            "00000000000000000000-00000000000000000041.SEG",
            ".DS_Store",
            "",
        ] {
            assert_eq!(SegmentName::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn temp_names_are_recognised_and_never_canonical() {
        let name = SegmentName { first: 3, last: 9 };
        let t = temp_name(&name, [0xab; 8]);
        assert!(is_temp_name(&t), "{t}");
        assert_eq!(SegmentName::parse(&t), None);
        assert!(!is_temp_name(&name.file_name()));
        assert!(!is_temp_name(".DS_Store"));
        assert!(!is_temp_name(".x.tmp"));
    }

    #[test]
    fn id_dirs_must_be_lowercase_hex() {
        assert!(parse_id_dir(&"ab".repeat(16)).is_some());
        assert!(parse_id_dir(&"AB".repeat(16)).is_none());
        assert!(parse_id_dir("abc").is_none());
    }

    proptest::proptest! {
        #[test]
        fn carried_paths_round_trip(
            holder in proptest::prelude::any::<[u8; 16]>(),
            origin in proptest::prelude::any::<[u8; 16]>(),
            first in 0u64..1000,
            len in 0u64..1000,
        ) {
            let name = SegmentName { first, last: first + len };
            let (holder, origin) = (PeerId::from_bytes(holder), PeerId::from_bytes(origin));
            let p = CarriedPath { holder, origin, name };
            let parsed = CarriedPath::parse(&p.to_rel());
            if holder == origin {
                proptest::prop_assert_eq!(parsed, Some(p));
                proptest::prop_assert!(!p.is_carried());
            } else {
                proptest::prop_assert_eq!(parsed, Some(p));
                proptest::prop_assert!(p.is_carried());
            }
        }

        #[test]
        fn arbitrary_paths_parse_only_canonically(rel in "[0-9a-fA-F/.carieds-]{0,120}") {
            if let Some(p) = CarriedPath::parse(&rel) {
                proptest::prop_assert_eq!(p.to_rel(), rel);
            }
        }

        #[test]
        fn carried_names_parse_only_canonically(
            name in "(carried-)?[0-9a-f]{0,34}-?[0-9]{0,21}-?[0-9]{0,21}(\\.seg)?"
        ) {
            if let Some(c) = CarriedName::parse(&name) {
                proptest::prop_assert_eq!(c.file_name(), name.clone());
                proptest::prop_assert!(SegmentName::parse(&name).is_none());
            }
        }

        #[test]
        fn carried_names_round_trip(
            origin in proptest::prelude::any::<[u8; 16]>(),
            first in 0u64..u64::MAX,
            len in 0u64..10,
        ) {
            let name = SegmentName { first, last: first.saturating_add(len) };
            let c = CarriedName { origin: PeerId::from_bytes(origin), name };
            proptest::prop_assert_eq!(CarriedName::parse(&c.file_name()), Some(c));
            // Older readers see no segment in it, and its temporary name is recognised.
            proptest::prop_assert!(SegmentName::parse(&c.file_name()).is_none());
            let t = carried_temp_name(&c, [7; 8]);
            proptest::prop_assert!(is_temp_name(&t));
            proptest::prop_assert!(CarriedName::parse(&t).is_none());
        }
    }

    #[test]
    fn carried_paths_reject_everything_else() {
        let a = "ab".repeat(16);
        let b = "cd".repeat(16);
        let seg = SegmentName { first: 0, last: 9 }.file_name();
        assert!(CarriedPath::parse(&format!("{a}/carried-{b}-{seg}")).is_some());
        assert!(CarriedPath::parse(&format!("{a}/{seg}")).is_some());
        for bad in [
            format!("{a}/carried-{a}-{seg}"),
            format!("{a}/Carried-{b}-{seg}"),
            format!("{a}/carried-{b}/{seg}"),
            format!("{a}/carried/{b}/{seg}"),
            format!("{a}/carried-{}-{seg}", b.to_uppercase()),
            format!("{a}/carried-{b}-{seg}.tmp"),
            format!("{a}/carried-{b}{seg}"),
            format!("{a}/carried--{seg}"),
            format!("/{a}/{seg}"),
            format!("{a}/{seg}/"),
        ] {
            assert_eq!(CarriedPath::parse(&bad), None, "{bad}");
        }
    }

    #[test]
    fn coverage_follows_the_furthest_reaching_segment() {
        let n = |first, last| SegmentName { first, last };
        let segs = [n(0, 4), n(0, 9), n(5, 9), n(8, 12), n(20, 30)];
        let (path, next) = coverage_path(&segs, |s| *s, |_| true);
        assert_eq!(path, vec![&n(0, 9), &n(8, 12)]);
        assert_eq!(next, 13);
        let (path, next) = coverage_path(&segs, |s| *s, |s| *s != n(0, 9));
        assert_eq!(path, vec![&n(0, 4), &n(5, 9), &n(8, 12)]);
        assert_eq!(next, 13);
        let (path, next) = coverage_path(&segs[2..], |s| *s, |_| true);
        assert!(path.is_empty());
        assert_eq!(next, 0);
    }
}
