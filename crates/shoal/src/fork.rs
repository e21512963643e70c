//! Fork recovery (DESIGN §8, "Forks"; `docs/ARCHITECTURE.md`, "Forks").
//!
//! Owns: [`Workspace::recover_fork`] and its report, [`ForkRecovery`].
//!
//! A device whose own log forked — its file was copied to another machine and both wrote,
//! or a backup that had written was restored — finds it when it looks at its folder (its
//! own log first, or a sync), records it, and refuses every write. Recovery: the device
//! finds where its log and the folder's copy of it part, takes its own branch out of its
//! log, and hands over to a new key as the successor of the old one; the entries of its
//! branch are re-issued under the successor. The old key's log goes on as the folder holds
//! it (the other copy may keep writing it), so nothing of either copy is lost, and nothing
//! is applied twice: the dropped branch was refused for the fork before it was published.
//!
//! Never: runs without a fork recorded, or against anything but the folder the fork was
//! found in (the caller names it).

use std::path::Path;

use shoal_core::{DeviceKey, FileLogPuller, PeerId};
use shoal_filelog::Config;
use shoal_sqlite::Succession;

use crate::error::{Error, Result};
use crate::workspace::{Workspace, WorkspaceOptions};

/// What [`Workspace::recover_fork`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForkRecovery {
    /// The first index at which this device's log and the folder's copy of it differ.
    pub forked_at: u64,
    /// The hand-over: the old and new origins, and how many writes were re-issued.
    pub succession: Succession,
}

impl Workspace {
    /// Recovers a device whose own log forked (see the module doc), against `folder`, the
    /// sync folder the fork was found in. Consumes the workspace and returns it reopened
    /// under the new key.
    pub fn recover_fork(self, folder: &Path) -> Result<(Workspace, ForkRecovery)> {
        let key = DeviceKey::generate()
            .map_err(|e| Error::Path { path: self.path().to_owned(), reason: e.to_string() })?;
        self.recover_fork_with_key(folder, key)
    }

    /// [`Workspace::recover_fork`] handing over to a key of the caller's (see
    /// [`Workspace::create_with_key`]).
    pub fn recover_fork_with_key(
        self,
        folder: &Path,
        key: DeviceKey,
    ) -> Result<(Workspace, ForkRecovery)> {
        self.replica().check_writable()?;
        let path = self.path().to_owned();
        if self.fork()?.is_none() {
            return Err(Error::NotForked { path });
        }
        let own = self.device().ok_or_else(|| Error::Path {
            path: path.clone(),
            reason: "this workspace file has no device key".into(),
        })?;
        let forked_at = self.fork_point(own, folder)?;
        let succession = self.replica().succeed_after_fork(key, forked_at)?;
        self.replica().remove_meta(crate::workspace::OWN_FORK)?;
        let options =
            WorkspaceOptions { clock: self.replica().wall_clock().clone(), ..Default::default() };
        drop(self);
        let reopened = Workspace::open(&path, options)?;
        Ok((reopened, ForkRecovery { forked_at, succession }))
    }

    /// The first index at which this device's log of `own` and `folder`'s differ.
    fn fork_point(&self, own: PeerId, folder: &Path) -> Result<u64> {
        let puller = shoal_filelog::FolderPuller::new(folder, self.id(), Config::default());
        let mut at = 0;
        loop {
            let theirs = FileLogPuller::read_entries(&puller, own, at, 4096)?;
            let mine = self.replica().read_page(own, at)?;
            if theirs.is_empty() || mine.is_empty() {
                return Err(Error::Path {
                    path: folder.to_owned(),
                    reason: format!(
                        "this device's log and the folder's copy of it agree up to entry {at}, \
                         where one of them ends: not a fork (sync instead)"
                    ),
                });
            }
            for (a, b) in theirs.iter().zip(&mine) {
                if a.index != b.index || a.hash() != b.hash() {
                    return Ok(b.index.min(a.index));
                }
            }
            at += theirs.len().min(mine.len()) as u64;
        }
    }
}
