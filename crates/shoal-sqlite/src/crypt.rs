//! Encryption in the SQLite replica (DESIGN §8; `docs/ARCHITECTURE.md`, "Encryption").
//!
//! Owns: the keyring cache (the epoch keys this device can open from the control log, with
//! its device key and the invite secret of its key file), whether this replica treats the
//! workspace as encrypted, the chain hash an encrypted entry's associated data needs when
//! materializing resumes mid-log, and the keys an admin hands to members that lack them.
//!
//! Invariants:
//! - Stored entries stay as they arrived: ciphertext in the oplog, opened only to
//!   materialize. This device's own data entries are sealed when written
//!   (`SqliteReplica::append_local`) and materialized from the plaintext in hand.
//! - An encrypted entry whose epoch key is not held here is *pending* (stored, not applied,
//!   not a stall): it applies once a control entry brings the key. One that does not open
//!   under a held key, a plaintext data entry in an encrypted workspace, and an encrypted
//!   entry in a plaintext one stall their origin.
//! - The workspace is encrypted if its genesis policy says so, or, before the genesis is
//!   here, if this device joined with an invite for an encrypted workspace (then it holds
//!   its data writes until it has a key, rather than write them in plaintext).
//!
//! Never: stores an epoch key (every key is recovered from the control log and the key
//! file), or trusts a wrap the roster does not.

use std::sync::{Arc, Mutex};

use shoal_core::control::ControlOp;
use shoal_core::encryption::{Keyring, wrap_key};
use shoal_core::membership::{DeviceState, Roster};
use shoal_core::{ChainHash, ChainPosition, PeerId, SyncError, chain_through};

use crate::replica::{LocalTx, SqliteReplica};

/// The keyring as last derived, with the roster it was derived from.
pub(crate) type KeyringCache = Mutex<Option<(Arc<Roster>, Arc<Keyring>)>>;

/// Metadata key and value: this device joined with an invite to an encrypted workspace.
const EXPECT_KEY: &str = "encryption";
const EXPECT_ENCRYPTED: &[u8] = b"encrypted";

/// Marks a materialization hold for a missing key: the origin is pending, not stalled.
pub(crate) const KEY_WAIT: &str = "waiting for the key of epoch";

/// What materializing needs to open entries.
pub(crate) struct Crypt {
    /// Data entries must be encrypted (and encrypted ones are refused otherwise).
    pub(crate) encrypted: bool,
    /// The keys held.
    pub(crate) keys: Arc<Keyring>,
}

pub(crate) fn encryption_expected(conn: &rusqlite::Connection) -> rusqlite::Result<bool> {
    Ok(crate::schema::meta(conn, EXPECT_KEY)?.as_deref() == Some(EXPECT_ENCRYPTED))
}

impl SqliteReplica {
    /// The epoch keys this device holds (none in a plaintext workspace, or for a replica
    /// without a device key).
    pub fn keyring(&self) -> Result<Arc<Keyring>, SyncError> {
        let roster = self.roster()?;
        Ok(self.keyring_of(&roster))
    }

    /// Makes this replica, which holds no device key, rebuild `original`'s state exactly
    /// (a check of it, `shoal verify`): `original`'s own entries apply here as they do on
    /// its device (never held), what it expects of the workspace before the genesis is
    /// here (members only, encrypted) is expected here too, and entries open with its keys.
    /// Ignored by a device's own replica, and after the first call.
    pub fn rebuild_like(&self, original: &SqliteReplica) -> Result<(), SyncError> {
        use std::sync::atomic::Ordering::SeqCst;
        let (Some(own), None) = (original.own_origin(), &self.inner.device) else {
            return Ok(());
        };
        let keys = original.keyring()?;
        if self.inner.rebuilding.set((own, keys)).is_ok() {
            let expected = |flag: &std::sync::atomic::AtomicBool| flag.load(SeqCst);
            self.inner.members_expected.store(expected(&original.inner.members_expected), SeqCst);
            self.inner
                .encryption_expected
                .store(expected(&original.inner.encryption_expected), SeqCst);
        }
        Ok(())
    }

    /// The keyring of `roster` (cached while the roster is the same).
    pub(crate) fn keyring_of(&self, roster: &Arc<Roster>) -> Arc<Keyring> {
        if let Some((_, keys)) = self.inner.rebuilding.get() {
            return keys.clone();
        }
        let cache = &self.inner.keyring;
        if let Ok(guard) = cache.lock()
            && let Some((at, keys)) = guard.as_ref()
            && (Arc::ptr_eq(at, roster) || **at == **roster)
        {
            return keys.clone();
        }
        let ws = self.inner.workspace;
        let keys = Arc::new(match &self.inner.device {
            Some(device) => Keyring::for_device(roster, ws, device, self.inner.invite.as_ref()),
            None => Keyring::new(ws),
        });
        if let Ok(mut guard) = cache.lock() {
            *guard = Some((roster.clone(), keys.clone()));
        }
        keys
    }

    /// Whether this device can write data now: the workspace is not encrypted, or it
    /// holds a key to write under.
    pub fn can_write_data(&self) -> Result<bool, SyncError> {
        let roster = self.roster()?;
        Ok(!self.is_encrypted(&roster) || !self.keyring_of(&roster).is_empty())
    }

    /// Whether data entries must be encrypted, given `roster` (see the module doc).
    pub(crate) fn is_encrypted(&self, roster: &Roster) -> bool {
        if roster.founded {
            let _ = self.inner.encrypted_policy.set(roster.encrypted);
        }
        roster.encrypted
            || (!roster.founded
                && self.inner.encryption_expected.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// What materializing entries under `roster` needs.
    pub(crate) fn crypt(&self, roster: &Arc<Roster>) -> Crypt {
        Crypt { encrypted: self.is_encrypted(roster), keys: self.keyring_of(roster) }
    }

    /// Records that this device joined an encrypted workspace (its invite says so): until
    /// the genesis is here, its data writes wait for a key instead of going out in
    /// plaintext.
    pub fn expect_encrypted(&self) -> Result<(), SyncError> {
        self.set_meta(EXPECT_KEY, EXPECT_ENCRYPTED)?;
        self.inner.encryption_expected.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// The chain hash before entry `index` of `origin` (what its associated data binds),
    /// recomputed from the stored log.
    pub(crate) fn chain_before(&self, origin: PeerId, index: u64) -> Result<ChainHash, SyncError> {
        let mut at = ChainPosition::start(&self.inner.workspace, &origin);
        while at.next < index {
            let mut page = self.read_page(origin, at.next)?;
            page.retain(|e| e.index < index);
            if page.is_empty() {
                break;
            }
            let chain = chain_through(at, &page).map_err(|(expected, found)| {
                SyncError::Bug(format!(
                    "{}: the stored log of {origin} skips from {expected} to {found}",
                    self.inner.path.display()
                ))
            })?;
            at = ChainPosition { next: at.next + page.len() as u64, chain };
        }
        Ok(at.chain)
    }

    /// [`SqliteReplica::history`] of one origin, with what this device can decrypt opened.
    pub fn history_opened(
        &self,
        origin: PeerId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<shoal_core::Entry>, SyncError> {
        let page = self.history(Some(origin), from, limit)?;
        if !page.iter().any(|e| matches!(e.body, shoal_core::EntryBody::Encrypted(_))) {
            return Ok(page);
        }
        let prev = self.chain_before(origin, from)?;
        Ok(self.open_run(prev, page)?.0)
    }

    /// A contiguous run of one origin's entries whose chain before the first is `prev`,
    /// with every encrypted body this device can open replaced by its plaintext (the rest
    /// stay encrypted), and the chain after the run: for showing history.
    pub fn open_run(
        &self,
        prev: ChainHash,
        entries: Vec<shoal_core::Entry>,
    ) -> Result<(Vec<shoal_core::Entry>, ChainHash), SyncError> {
        let keys = self.keyring()?;
        let mut chain = prev;
        let mut out = Vec::with_capacity(entries.len());
        for mut e in entries {
            let before = chain;
            chain = chain.link(&e.hash());
            if let shoal_core::EntryBody::Encrypted(c) = &e.body
                && let Ok(payload) = keys.open(&e.origin, e.index, &before, c)
            {
                e.body = shoal_core::EntryBody::Live(payload);
            }
            out.push(e);
        }
        Ok((out, chain))
    }

    /// An admin's duty in an encrypted workspace: every active member that was given no
    /// key of an epoch this device holds gets one (a device admitted by request, one that
    /// joined with an invite made before a rotation, or one admitted while the removal
    /// that rotated was written). Returns whether it wrote anything.
    pub fn share_keys(&self) -> Result<bool, SyncError> {
        let Some(me) = self.own_origin() else { return Ok(false) };
        if self.is_read_only() {
            return Ok(false);
        }
        let roster = self.roster()?;
        if !roster.encrypted || roster.limit(&me) != u64::MAX {
            return Ok(false);
        }
        let admin =
            roster.device(&me).is_some_and(|d| d.role == Some(shoal_core::control::Role::Admin));
        if !admin {
            return Ok(false);
        }
        let keys = self.keyring_of(&roster);
        let ws = self.inner.workspace;
        let mut ops = Vec::new();
        for epoch in keys.epochs().collect::<Vec<_>>() {
            let Some(key) = keys.keys_of(epoch).first() else { continue };
            let mut wraps = Vec::new();
            for (device, status) in roster.devices() {
                let Some(exchange) = status.exchange else { continue };
                if status.state != DeviceState::Active
                    || status.role.is_none()
                    || roster.was_given(device, epoch)
                {
                    continue;
                }
                // A member's key that cannot be wrapped for (a low-order point) gets nothing,
                // and must not stop this device's sync.
                match wrap_key(&ws, epoch, key, &exchange) {
                    Ok(wrap) => wraps.push((*device, wrap)),
                    Err(e) => tracing::warn!(%device, "no epoch key for this device: {e}"),
                }
            }
            if !wraps.is_empty() {
                ops.push(ControlOp::EpochKeys { epoch, wraps }.to_op());
            }
        }
        if ops.is_empty() {
            return Ok(false);
        }
        // After an ack of what this device stores, so its wraps count from its own prefix
        // (a promoted admin counts as one after its log shows it saw the promotion).
        let cursors = self.durable_cursors()?;
        let ack = ControlOp::ack(cursors.iter().filter(|(o, n)| *o != me && *n > 0));
        self.append_local(vec![
            LocalTx { ops: vec![ack.to_op()], author: None },
            LocalTx { ops, author: None },
        ])?;
        Ok(true)
    }
}
