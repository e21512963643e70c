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
//! The other copy is wherever the fork was found: a folder ([`Workspace::recover_fork`])
//! or a relay ([`Workspace::recover_fork_at_relay`]).
//!
//! Never: runs without a fork recorded, or against anything but the folder or relay the
//! fork was found in (the caller names it).

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
        let own = self.forked_origin()?;
        let puller = shoal_filelog::FolderPuller::new(folder, self.id(), Config::default());
        let read = |at| Ok(FileLogPuller::read_entries(&puller, own, at, 4096)?);
        let forked_at = self.fork_point(own, &folder.display().to_string(), "the folder", read)?;
        self.hand_over_after_fork(key, forked_at)
    }

    /// [`Workspace::recover_fork`] for a fork found at the relay at `url` (the relay holds
    /// the other copy of this device's log).
    pub async fn recover_fork_at_relay(self, url: &str) -> Result<(Workspace, ForkRecovery)> {
        let key = DeviceKey::generate()
            .map_err(|e| Error::Path { path: self.path().to_owned(), reason: e.to_string() })?;
        self.recover_fork_at_relay_with_key(url, key).await
    }

    /// [`Workspace::recover_fork_at_relay`] handing over to a key of the caller's.
    pub async fn recover_fork_at_relay_with_key(
        self,
        url: &str,
        key: DeviceKey,
    ) -> Result<(Workspace, ForkRecovery)> {
        let remote = self.connect_relay(url).await?;
        self.recover_fork_over(&remote, key).await
    }

    /// [`Workspace::recover_fork_at_relay`] over an open relay connection.
    pub async fn recover_fork_over(
        self,
        remote: &shoal_relay::client::RemoteReplica,
        key: DeviceKey,
    ) -> Result<(Workspace, ForkRecovery)> {
        use shoal_core::LogSource;
        let own = self.forked_origin()?;
        // The relay's copy of this device's own log: its own writes, so it is small enough
        // to hold while the two are compared.
        let mut theirs: Vec<shoal_core::Entry> = Vec::new();
        loop {
            let page = remote.read_since(own, theirs.len() as u64).await?;
            if page.is_empty() {
                break;
            }
            theirs.extend(page);
        }
        let read = |at: u64| {
            let from = usize::try_from(at).unwrap_or(usize::MAX).min(theirs.len());
            Ok(theirs[from..].iter().take(4096).cloned().collect())
        };
        let forked_at =
            self.fork_point(own, &format!("relay {}", remote.url()), "the relay", read)?;
        self.hand_over_after_fork(key, forked_at)
    }

    /// This device's origin, if its file is writable and a fork of its log is recorded.
    fn forked_origin(&self) -> Result<PeerId> {
        self.replica().check_writable()?;
        let path = self.path().to_owned();
        if self.fork()?.is_none() {
            return Err(Error::NotForked { path });
        }
        self.device().ok_or_else(|| Error::Path {
            path,
            reason: "this workspace file has no device key".into(),
        })
    }

    /// Hands over to `key` after a fork at `forked_at` (checked: a fork is recorded).
    fn hand_over_after_fork(
        self,
        key: DeviceKey,
        forked_at: u64,
    ) -> Result<(Workspace, ForkRecovery)> {
        let path = self.path().to_owned();
        let succession = self.replica().succeed_after_fork(key, forked_at)?;
        self.replica().remove_meta(crate::workspace::OWN_FORK)?;
        let options =
            WorkspaceOptions { clock: self.replica().wall_clock().clone(), ..Default::default() };
        drop(self);
        let reopened = Workspace::open(&path, options)?;
        Ok((reopened, ForkRecovery { forked_at, succession }))
    }

    /// The first index at which this device's log of `own` and the other copy's differ
    /// (`where` names the copy, `what` says what it is), reading the copy with `read_theirs`.
    fn fork_point(
        &self,
        own: PeerId,
        r#where: &str,
        what: &str,
        mut read_theirs: impl FnMut(u64) -> Result<Vec<shoal_core::Entry>>,
    ) -> Result<u64> {
        let mut at = 0;
        loop {
            let theirs = read_theirs(at)?;
            let mine = self.replica().read_page(own, at)?;
            if theirs.is_empty() || mine.is_empty() {
                return Err(Error::Path {
                    path: r#where.into(),
                    reason: format!(
                        "this device's log and {what}'s copy of it agree up to entry {at}, \
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
