//! Membership through the facade: invites, joins, admission, removal, leaving (DESIGN §8;
//! `docs/ARCHITECTURE.md`, "Membership").
//!
//! Owns: the [`Workspace`] methods that write control ops, and [`Members`], the roster as
//! an app or the CLI shows it (each device with its role, who admitted it, its state, how
//! many of its stored entries are pending, and whether its log forked or was handed over).
//!
//! Invariants: an admin op is written only by a device the roster shows as an active admin,
//! and is preceded by an ack of this device's stored cursors, so the op counts from its own
//! prefix (a promoted admin acts as one only after its log shows it saw the promotion) and
//! a removal never cuts what this device already applied. A removal's cut is this device's
//! stored cursor for the target.
//!
//! Never: decides membership (the roster does, from the control log), or writes an admin op
//! for a device that is not one.

use std::time::Duration;

use shoal_core::control::{ControlOp, Role};
use shoal_core::encryption::{EpochKey, wrap_key};
use shoal_core::invite::InviteCode;
use shoal_core::membership::{DeviceState, Roster};
use shoal_core::{Hlc, PeerId};
use shoal_sqlite::LocalTx;

use crate::error::{Error, Result};
use crate::workspace::{Commit, Workspace};

/// The workspace's members, as this device's control log says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Members {
    /// The workspace was created without membership: every device that can write the
    /// folder may write.
    pub open: bool,
    /// The workspace's genesis is here: whether it is open is known.
    pub founded: bool,
    /// Every device known, by peer id.
    pub devices: Vec<Member>,
}

/// One device, as [`Workspace::members`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its peer id.
    pub device: PeerId,
    /// Its role, once admitted.
    pub role: Option<Role>,
    /// Who admitted it.
    pub admitted_by: Option<PeerId>,
    /// When it joined, as it claims.
    pub joined_at: Option<Hlc>,
    /// Active, pending, removed or left.
    pub state: DeviceState,
    /// Entries of it stored here.
    pub stored: u64,
    /// Entries of it stored here that are not applied because of its membership.
    pub pending: u64,
    /// This device.
    pub is_self: bool,
    /// Its log forked (two signed versions: a copied file, a restored backup that had
    /// written), and its owner has not recovered yet: why, with the evidence. Known from
    /// this device's own check, or from evidence in the folder it last synced with.
    pub forked: Option<String>,
    /// The device it handed its key over to (clock or fork recovery), if any.
    pub succeeded_by: Option<PeerId>,
}

impl Workspace {
    /// The roster of this device's control log.
    fn roster(&self) -> Result<std::sync::Arc<Roster>> {
        Ok(self.replica().roster()?)
    }

    /// Every device the control log knows, with its role and state.
    pub fn members(&self) -> Result<Members> {
        let roster = self.roster()?;
        let cursors = self.replica().durable_cursors()?;
        let me = self.device();
        let mut devices: Vec<Member> = Vec::new();
        let mut ids: Vec<PeerId> = roster.devices().map(|(id, _)| *id).collect();
        for (origin, _) in cursors.iter() {
            if !ids.contains(&origin) {
                ids.push(origin);
            }
        }
        ids.sort();
        let layout = self.last_sync()?.map(|l| {
            shoal_filelog::layout::Layout::new(std::path::PathBuf::from(l.with), self.id())
        });
        for id in ids {
            let succeeded_by = self.replica().superseded(id)?.map(|s| s.successor);
            let forked = match (&layout, succeeded_by) {
                (_, Some(_)) => None,
                _ if Some(id) == me => self.fork()?,
                (Some(layout), None) => {
                    let (good, _) = shoal_filelog::fork::read_evidence(
                        &layout.origin_dir(&id),
                        &self.id(),
                        &id,
                    );
                    good.first().map(|(path, ev)| {
                        format!(
                            "two signed versions of its log disagree at entry {} (evidence {})",
                            ev.next.saturating_sub(1),
                            path.display()
                        )
                    })
                }
                (None, None) => None,
            };
            let stored = cursors.get(&id);
            let limit = if Some(id) == me { u64::MAX } else { roster.limit(&id) };
            let d = roster.device(&id);
            devices.push(Member {
                device: id,
                role: if roster.open { Some(Role::Member) } else { d.and_then(|d| d.role) },
                admitted_by: d.and_then(|d| d.admitted_by),
                joined_at: d.and_then(|d| d.joined_at),
                state: match d {
                    _ if roster.open => DeviceState::Active,
                    Some(d) => d.state.clone(),
                    None => DeviceState::Pending("it never joined".into()),
                },
                stored,
                pending: stored.saturating_sub(limit.min(stored)),
                is_self: Some(id) == me,
                forked,
                succeeded_by,
            });
        }
        Ok(Members { open: roster.open, founded: roster.founded, devices })
    }

    /// Creates an invite: `role`, valid for `valid_for` (forever if `None`), for `uses`
    /// devices. The code carries `hint` (where to find the workspace: a folder path or a
    /// relay URL) and the invite secret; give it to the person over a channel you trust.
    pub fn invite(
        &self,
        role: Role,
        valid_for: Option<Duration>,
        uses: u32,
        hint: &str,
    ) -> Result<InviteCode> {
        let code = InviteCode::generate(self.id(), hint)
            .map_err(|e| Error::Membership(format!("cannot make an invite secret: {e}")))?;
        self.invite_with_code(code, role, valid_for, uses)
    }

    /// [`Workspace::invite`] with an invite secret of the caller's (a reproducible
    /// simulation); the code must be for this workspace.
    pub fn invite_with_code(
        &self,
        code: InviteCode,
        role: Role,
        valid_for: Option<Duration>,
        uses: u32,
    ) -> Result<InviteCode> {
        if code.workspace != self.id() {
            return Err(Error::Membership(format!(
                "the invite code is for workspace {}, not {}",
                code.workspace,
                self.id()
            )));
        }
        let expires = match valid_for {
            None => 0,
            Some(d) => self
                .replica()
                .wall_clock()
                .now_millis()
                .saturating_add(d.as_millis().min(u128::from(u64::MAX)) as u64)
                .max(1),
        };
        let mut code = code;
        let roster = self.roster()?;
        code.encrypted = roster.encrypted;
        // The epoch keys this admin holds, wrapped for the invite secret: the new device
        // reads history and writes without any admin online.
        let wrapped = if roster.encrypted {
            self.replica()
                .keyring()?
                .wrap_all_for(&code.key().exchange_key())
                .map_err(|e| Error::Membership(e.to_string()))?
        } else {
            Vec::new()
        };
        self.admin_op(code.invite_op(role, expires, uses, wrapped))?;
        Ok(code)
    }

    /// Admits a device that asked to join without an invite, or raises a member to admin.
    pub fn admit(&self, device: PeerId, role: Role) -> Result<Commit> {
        let roster = self.roster()?;
        if roster.device(&device).is_none() {
            return Err(Error::Membership(format!(
                "no device {device} has asked to join (sync first, or check the id)"
            )));
        }
        let mut ops = vec![ControlOp::SetRole { target: device, role }];
        // In an encrypted workspace the admission hands over every key this admin holds.
        if let Some(exchange) = roster.device(&device).and_then(|d| d.exchange)
            && roster.encrypted
        {
            let keys = self.replica().keyring()?;
            for epoch in keys.epochs().filter(|e| !roster.was_given(&device, *e)) {
                let Some(key) = keys.keys_of(epoch).first() else { continue };
                let wrap = wrap_key(&self.id(), epoch, key, &exchange).map_err(|e| {
                    Error::Membership(format!(
                        "device {device} published a key no epoch key can be wrapped for \
                         ({e}): it could read nothing; not admitted"
                    ))
                })?;
                ops.push(ControlOp::EpochKeys { epoch, wraps: vec![(device, wrap)] });
            }
        }
        self.admin_ops(ops)
    }

    /// Withdraws an invite (by its code): joins that no member had seen before they saw
    /// the revocation are refused.
    pub fn revoke_invite(&self, code: &InviteCode) -> Result<Commit> {
        if code.workspace != self.id() {
            return Err(Error::Membership(format!(
                "the invite code is for workspace {}, not {}",
                code.workspace,
                self.id()
            )));
        }
        self.admin_op(ControlOp::RevokeInvite { invite_key: code.key().public_key() })
    }

    /// Removes a device: its entries past what this device holds of it (and past what
    /// other members had seen before they saw the removal) are never applied anywhere.
    pub fn remove_device(&self, device: PeerId) -> Result<Commit> {
        if Some(device) == self.device() {
            return Err(Error::Membership(
                "a device cannot remove itself: use `leave` instead".into(),
            ));
        }
        let roster = self.roster()?;
        if roster.device(&device).is_none() {
            return Err(Error::Membership(format!("no device {device} is known here")));
        }
        let cut = self.replica().durable_cursors()?.get(&device);
        let remove = ControlOp::Remove { target: device, cut };
        if !roster.encrypted {
            return self.admin_ops(vec![remove]);
        }
        // The removal rotates the key: a new epoch, wrapped for every other active member
        // (this device included), so the removed device cannot read what follows.
        let epoch = roster.newest_epoch().map_or(0, |e| e.saturating_add(1));
        let key = EpochKey::generate().map_err(|e| Error::Membership(e.to_string()))?;
        let mut wraps = Vec::new();
        for (id, status) in roster.devices() {
            let Some(exchange) = status.exchange else { continue };
            if *id == device || status.role.is_none() || status.state != DeviceState::Active {
                continue;
            }
            // A member whose key cannot be wrapped for (a low-order point) gets nothing; it
            // must not stop the removal of another.
            match wrap_key(&self.id(), epoch, &key, &exchange) {
                Ok(wrap) => wraps.push((*id, wrap)),
                Err(e) => tracing::warn!(device = %id, "no epoch key for this device: {e}"),
            }
        }
        self.admin_ops(vec![remove, ControlOp::EpochKeys { epoch, wraps }])
    }

    /// This device leaves: nothing it writes after this is applied anywhere else.
    pub fn leave(&self) -> Result<Commit> {
        self.control_ops(vec![ControlOp::Leave])
    }

    /// Writes an admin op after an ack of this device's stored cursors (see the module
    /// doc), if this device is an active admin.
    fn admin_op(&self, op: ControlOp) -> Result<Commit> {
        self.admin_ops(vec![op])
    }

    /// [`Workspace::admin_op`] for several ops in one entry.
    fn admin_ops(&self, ops: Vec<ControlOp>) -> Result<Commit> {
        let roster = self.roster()?;
        let me = self.device().ok_or_else(|| {
            Error::Membership("this replica holds no device key: it cannot write".into())
        })?;
        if roster.open {
            return Err(Error::Membership(
                "this workspace was created open, without membership (every device may \
                 write): there are no invites or roles to manage; a members-only workspace \
                 (the default of `shoal init`; `WorkspaceOptions::members_only`) has them"
                    .into(),
            ));
        }
        let status = roster.device(&me);
        let active = status.is_some_and(|d| d.state == DeviceState::Active);
        if !active || status.and_then(|d| d.role) != Some(Role::Admin) {
            return Err(Error::Membership(format!(
                "this device ({}) is not an active admin of the workspace: ask an admin",
                me.short()
            )));
        }
        let cursors = self.replica().durable_cursors()?;
        let ack = ControlOp::ack(cursors.iter().filter(|(o, n)| *o != me && *n > 0));
        let commits = self.control_entries(vec![vec![ack], ops])?;
        commits.into_iter().last().ok_or_else(|| {
            Error::Sync(shoal_core::SyncError::Bug("a local append returned no commit".into()))
        })
    }

    fn control_ops(&self, ops: Vec<ControlOp>) -> Result<Commit> {
        let commits = self.control_entries(vec![ops])?;
        commits.into_iter().last().ok_or_else(|| {
            Error::Sync(shoal_core::SyncError::Bug("a local append returned no commit".into()))
        })
    }

    /// Appends one control entry per element of `entries`, in one transaction.
    fn control_entries(&self, entries: Vec<Vec<ControlOp>>) -> Result<Vec<Commit>> {
        self.before_local_write()?;
        let txs = entries
            .into_iter()
            .map(|ops| LocalTx { ops: ops.iter().map(ControlOp::to_op).collect(), author: None })
            .collect();
        let commits = self.replica().append_local(txs)?;
        Ok(commits
            .into_iter()
            .map(|c| Commit { index: c.index, hlc: c.hlc, clock_ahead: None })
            .collect())
    }
}
