//! File-system primitives with the durability rules the file log relies on.
//!
//! Owns: atomic publication of one file ([`write_atomically`]), directory fsync, creating
//! the workspace and origin directories without ever creating the shared folder itself,
//! and bounded reads.
//!
//! Invariants: a canonical segment name only ever points at a complete, fsynced file; a
//! publication is durable (file and directory entry on disk) before it returns. Reads never
//! allocate more than the cap they are given.
//!
//! Never: creates the shared folder's root (an unmounted share must stay visibly missing),
//! or renames across directories (rename is atomic only within one).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::faults::{Faults, FolderStep, crash, is_simulated_crash};
use crate::layout::{FileStamp, SegmentName, temp_name};
use crate::segment::{HEADER_LEN, declared_len};

/// Writes `bytes` as `dir/<name>` so that the name appears only once the whole file is on
/// disk, and is itself on disk before this returns.
pub fn write_atomically(
    dir: &Path,
    name: &SegmentName,
    bytes: &[u8],
    faults: &Faults,
) -> io::Result<PathBuf> {
    write_file_atomically(dir, &name.file_name(), |random| temp_name(name, random), bytes, faults)
}

/// Writes `bytes` to `dir/final_name` as [`write_atomically`] does, under the temporary name
/// `temp(random)` (which readers must ignore).
pub fn write_file_atomically(
    dir: &Path,
    final_name: &str,
    temp: impl FnOnce([u8; 8]) -> String,
    bytes: &[u8],
    faults: &Faults,
) -> io::Result<PathBuf> {
    // Random bytes in the temporary name: a leftover from a crash never collides with the
    // next attempt. If the OS has no randomness the clock is good enough for that purpose.
    let random = shoal_core::random_bytes::<8>().unwrap_or_else(|_| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        nanos.to_le_bytes()
    });
    // 1. A temporary name in the *same* directory: rename is atomic only within one
    //    filesystem, and readers ignore the name (it is not canonical), so a partial file is
    //    never seen as a segment.
    let tmp = dir.join(temp(random));
    let target = dir.join(final_name);
    let result = (|| {
        faults.check(FolderStep::CreateTemp, &tmp, 0)?;
        let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        // 2. Write the whole file.
        if let Some(torn) = faults.check(FolderStep::WriteTemp, &tmp, bytes.len())? {
            file.write_all(&bytes[..torn])?;
            return Err(crash());
        }
        file.write_all(bytes)?;
        // 3. fsync the file before renaming: otherwise a crash after the rename could leave
        //    the canonical name pointing at an empty or partial file (the rename may reach
        //    the disk before the data does).
        faults.check(FolderStep::SyncTemp, &tmp, 0)?;
        file.sync_all()?;
        drop(file);
        // 4. Rename onto the canonical name: atomic, so a reader sees either no file (or
        //    the previous one of that name) or the complete new one.
        faults.check(FolderStep::Rename, &target, 0)?;
        fs::rename(&tmp, &target)?;
        // 5. fsync the directory: the rename is a change of the directory, and until that
        //    is on disk a crash can undo it — we would have acknowledged a publication that
        //    is lost.
        sync_dir(dir, faults)
    })();
    if let Err(e) = &result
        && !is_simulated_crash(e)
    {
        // Best effort: a leftover is also removed by the sink's next start. (A crashed
        // process removes nothing.)
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| target)
}

/// Removes a file of the folder. The removal is not synced: a removal undone by a crash
/// leaves a file that is covered by another (or a stale temporary), removed again later.
pub fn remove_file(path: &Path, faults: &Faults) -> io::Result<()> {
    faults.check(FolderStep::Remove, path, 0)?;
    fs::remove_file(path)
}

/// Makes a directory's entries (creations, renames, deletions) durable.
pub fn sync_dir(dir: &Path, faults: &Faults) -> io::Result<()> {
    faults.check(FolderStep::SyncDir, dir, 0)?;
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        // Windows has no directory handle to fsync; NTFS journals renames itself.
        let _ = dir;
        Ok(())
    }
}

/// Creates `dir` (one level) if missing, and makes its creation durable. Fails with
/// `NotFound` when the parent is missing: parents are never created implicitly.
pub fn ensure_dir(dir: &Path, faults: &Faults) -> io::Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => {
            if let Some(parent) = dir.parent() {
                sync_dir(parent, faults)?;
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Reads a segment file: its header, then no more than the header declares plus one byte
/// (so a longer file fails as "trailing bytes" without being read whole). A file whose
/// header is not acceptable is returned as its first [`HEADER_LEN`] bytes, for the decoder
/// to name the problem. Returns the stamp of the version read.
pub fn read_segment_file(path: &Path, faults: &Faults) -> io::Result<(Vec<u8>, FileStamp)> {
    faults.check(FolderStep::Read, path, 0)?;
    let mut file = File::open(path)?;
    let stamp = FileStamp::of(&file.metadata()?);
    let mut bytes = Vec::with_capacity(HEADER_LEN);
    (&mut file).take(HEADER_LEN as u64).read_to_end(&mut bytes)?;
    let Some(total) = declared_len(&bytes) else { return Ok((bytes, stamp)) };
    // `total` is at most HEADER_LEN + MAX_BODY_BYTES + TRAILER_LEN (checked by
    // `declared_len`), and the reservation is bounded by what the file claims to hold.
    bytes.reserve((total as usize).saturating_sub(HEADER_LEN).min(stamp.len as usize));
    let rest = total + 1 - bytes.len() as u64;
    file.take(rest).read_to_end(&mut bytes)?;
    Ok((bytes, stamp))
}
