//! One simulated device: its workspace file, its local folder, its clock, its faults, and
//! what happens to its process and its disk (crash and restart, backup and restore, loss).
//!
//! Owns: [`Device`]. A device is *down* (`ws` is `None`) only inside an operation that
//! restarts it; between simulation steps it is always open.
//!
//! Invariants: a restart drops every handle of the old process before reopening, so
//! nothing of the dead process survives but its files; the device key is seeded, so a run
//! is reproducible from its seed.
//!
//! Never: copies a workspace file that is open (a backup closes the device first), or
//! restores a backup while entries written after it are not in the device's folder, and
//! at the relay in a run with one (that loss is the user's, not Shoal's, and would make the
//! check meaningless).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use shoal::{Workspace, WorkspaceOptions};
use shoal_core::invite::InviteCode;
use shoal_core::{DeviceKey, ManualClock, WorkspaceId};
use shoal_filelog::Config;
use shoal_filelog::faults::Faults;
use shoal_filelog::layout::Layout;

use crate::faults::DeviceFaults;

/// A simulated device (see the module doc).
pub(crate) struct Device {
    /// Its number.
    pub slot: usize,
    /// Bumped when the device is rebuilt from scratch (a new file and key).
    pub generation: u32,
    /// Its workspace file.
    pub path: PathBuf,
    /// Its local copy of the shared folder.
    pub folder: PathBuf,
    /// Its wall clock.
    pub clock: ManualClock,
    /// Its clock's offset from the simulation's true time, in ms.
    pub offset: i64,
    /// While set, the clock is stuck at this reading.
    pub frozen: Option<u64>,
    /// The open workspace.
    pub ws: Option<Workspace>,
    /// Its fault injector.
    pub faults: Arc<DeviceFaults>,
    /// A copy of its files (workspace, key, WAL) taken earlier, if any.
    pub backup: Option<PathBuf>,
    /// Origins this device wrote under before a fork recovery gave it a new key.
    pub past_origins: Vec<shoal_core::PeerId>,
}

/// The files that make up a workspace on disk: the file, its key, its WAL and shared memory.
fn workspace_files(path: &Path) -> Vec<PathBuf> {
    let mut files = vec![path.to_owned(), shoal_sqlite::key_path(path)];
    for suffix in ["-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        files.push(p.into());
    }
    files
}

/// The folder configuration of the simulation: tiny segments and pages (so compaction and
/// paging happen all the time), no file events or waits, retries at once.
pub(crate) fn sim_config(faults: &Arc<DeviceFaults>) -> Config {
    Config {
        segment_target_bytes: 2048,
        segment_max_entries: 6,
        compaction_fanout: 3,
        page_entries: 4,
        cached_segments: 2,
        fs_events: false,
        poll_interval: Duration::from_millis(1),
        debounce: Duration::ZERO,
        retry_initial: Duration::ZERO,
        retry_max: Duration::ZERO,
        report_after: 1,
        faults: Faults::new(faults.clone()),
        ..Config::default()
    }
}

impl Device {
    pub(crate) fn options(&self) -> WorkspaceOptions {
        WorkspaceOptions { clock: Arc::new(self.clock.clone()), ..Default::default() }
    }

    /// The open workspace. Between steps a device is always open (see the module doc).
    pub(crate) fn ws(&self) -> Result<&Workspace, String> {
        self.ws.as_ref().ok_or_else(|| format!("device {} is not open", self.slot))
    }

    /// Sets the clock from the simulation's true time.
    pub(crate) fn tick(&self, now: u64) {
        let reading = self.frozen.unwrap_or_else(|| now.saturating_add_signed(self.offset));
        self.clock.set(reading);
    }

    /// `<workspace>/<origin>`: this device's own directory, relative to its folder.
    pub(crate) fn own_dirs(&self, workspace: WorkspaceId) -> Result<Vec<String>, String> {
        let origin = self.ws()?.device().ok_or("a device without an origin")?;
        let layout = Layout::new(&self.folder, workspace);
        let mut dirs = Vec::new();
        // Its current origin, and those it wrote before a fork recovery handed them over
        // (the folder tool keeps uploading every directory the device wrote).
        for o in std::iter::once(&origin).chain(&self.past_origins) {
            let dir = layout.origin_dir(o);
            let rel = dir.strip_prefix(&self.folder).map_err(|e| e.to_string())?;
            dirs.push(rel.to_string_lossy().into_owned());
        }
        Ok(dirs)
    }

    /// Restarts the process: everything open is dropped, the files are reopened.
    pub(crate) fn restart(&mut self) -> Result<(), String> {
        self.ws = None;
        self.faults.restart();
        let ws = Workspace::open(&self.path, self.options())
            .map_err(|e| format!("device {}: reopening after a crash: {e}", self.slot))?;
        self.ws = Some(ws);
        Ok(())
    }

    /// Copies the device's files aside (closing it for the copy).
    pub(crate) fn take_backup(&mut self, into: PathBuf) -> Result<(), String> {
        self.ws = None;
        std::fs::create_dir_all(&into).map_err(|e| e.to_string())?;
        for (i, file) in workspace_files(&self.path).into_iter().enumerate() {
            let copy = into.join(i.to_string());
            let _ = std::fs::remove_file(&copy);
            if file.exists() {
                std::fs::copy(&file, &copy)
                    .map_err(|e| format!("backing up {}: {e}", file.display()))?;
            }
        }
        self.backup = Some(into);
        self.restart()
    }

    /// Puts the backup's files back in place of the current ones and reopens.
    pub(crate) fn restore_backup(&mut self) -> Result<bool, String> {
        let Some(backup) = self.backup.clone() else { return Ok(false) };
        self.ws = None;
        for (i, file) in workspace_files(&self.path).into_iter().enumerate() {
            let copy = backup.join(i.to_string());
            let _ = std::fs::remove_file(&file);
            if copy.exists() {
                std::fs::copy(&copy, &file)
                    .map_err(|e| format!("restoring {}: {e}", file.display()))?;
            }
        }
        self.restart()?;
        Ok(true)
    }

    /// Loses the device's files for good and makes a new device (a new key) in their place,
    /// which fills from the folder.
    pub(crate) fn rebuild(
        &mut self,
        workspace: WorkspaceId,
        invite: Option<&InviteCode>,
        secret: [u8; 32],
        new_path: PathBuf,
    ) -> Result<(), String> {
        self.ws = None;
        for file in workspace_files(&self.path) {
            let _ = std::fs::remove_file(file);
        }
        self.backup = None;
        self.generation += 1;
        self.path = new_path;
        self.faults.restart();
        let key = DeviceKey::from_secret_bytes(&secret);
        let ws = match invite {
            Some(code) => Workspace::join_with_code_and_key(&self.path, code, key, self.options()),
            None => Workspace::join_with_key(&self.path, workspace, key, self.options()),
        }
        .map_err(|e| format!("device {}: joining again: {e}", self.slot))?;
        self.ws = Some(ws);
        Ok(())
    }
}
