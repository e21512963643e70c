//! The control domain: the ops that found and govern a workspace (DESIGN §8).
//!
//! Owns: [`ControlOp`] (the control op kinds this version knows and their byte forms,
//! `docs/FORMAT.md` §3.4), [`ControlError`], and the receipt check every replica runs
//! through the ingest pipeline ([`check_entry`]): what can be judged of a control entry
//! from the entry alone, without keys or membership state.
//!
//! Invariants:
//! - A genesis is valid only as entry 0 of its creator's log, and only if the workspace id
//!   derives from its creator key and salt and the origin derives from that key. So nobody
//!   can claim an existing workspace id with another key, or found a workspace twice.
//! - An op of a kind this version does not know is not an error on receipt: it is stored
//!   and forwarded, and applying its origin stalls as "needs upgrade"
//!   ([`ControlError::NeedsUpgrade`]). It is never silently skipped.
//!
//! - A successor ([`ControlOp::Successor`]) is valid only with a proof signed by its
//!   predecessor's key over (workspace, predecessor, successor, cut, chain at the cut), and
//!   only in the successor's own log: only the owner of the old key can name a successor,
//!   and the op cannot be moved to another origin or workspace. What it means (entries of
//!   the predecessor from the cut on are superseded: stored and forwarded, never applied)
//!   is applied by the replicas; this module only checks the proof.
//!
//! Never: decides membership by itself (that needs the whole control log, and arrives with
//! the security work), or reads data ops.

use crate::codec::{DecodeError, Reader};
use crate::encryption::KeyWrap;
use crate::entry::{ChainHash, Domain, EntryBody, Op};
use crate::error::RejectReason;
use crate::ids::{DeviceKey, ExchangeKey, PeerId, PublicKey, WorkspaceId};

/// The prefix of the message a predecessor key signs to name its successor
/// (`docs/FORMAT.md` §3.4).
const SUCCESSOR_PROOF_PREFIX: &[u8] = b"shoal 2026-11 successor v1\0";

/// Control op kinds. Part of the format: never reused.
pub mod kind {
    /// [`super::ControlOp::Genesis`].
    pub const GENESIS: u32 = 1;
    /// [`super::ControlOp::Successor`].
    pub const SUCCESSOR: u32 = 2;
    /// [`super::ControlOp::Policy`].
    pub const POLICY: u32 = 3;
    /// [`super::ControlOp::Invite`].
    pub const INVITE: u32 = 4;
    /// [`super::ControlOp::Join`].
    pub const JOIN: u32 = 5;
    /// [`super::ControlOp::Request`].
    pub const REQUEST: u32 = 6;
    /// [`super::ControlOp::SetRole`].
    pub const SET_ROLE: u32 = 7;
    /// [`super::ControlOp::RevokeInvite`].
    pub const REVOKE_INVITE: u32 = 8;
    /// [`super::ControlOp::Remove`].
    pub const REMOVE: u32 = 9;
    /// [`super::ControlOp::Leave`].
    pub const LEAVE: u32 = 10;
    /// [`super::ControlOp::Ack`].
    pub const ACK: u32 = 11;
    /// [`super::ControlOp::EpochKeys`].
    pub const EPOCH_KEYS: u32 = 12;
}

/// The prefix of the message an invite secret signs to admit a joining device
/// (`docs/FORMAT.md` §3.4).
const JOIN_PROOF_PREFIX: &[u8] = b"shoal 2026-11 join v1\0";

/// At most this many cursors in one [`ControlOp::Ack`] (a bound for decoders; a workspace
/// with more devices writes several acks).
pub const MAX_ACK_CURSORS: u64 = 4096;

/// At most this many wraps in one [`ControlOp::EpochKeys`].
pub const MAX_KEY_WRAPS: u64 = 4096;

/// What a member may do. Part of the format (the byte values): never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads and writes data.
    Member = 1,
    /// Also invites, admits, promotes and removes devices.
    Admin = 2,
}

impl Role {
    /// The role of byte `b`, if it names one.
    pub fn from_byte(b: u8) -> Option<Role> {
        match b {
            1 => Some(Role::Member),
            2 => Some(Role::Admin),
            _ => None,
        }
    }

    /// The lower-case name (`member`, `admin`).
    pub fn name(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A control op this version understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlOp {
    /// Founds the workspace: entry 0 of the creator, who becomes its first admin. The
    /// workspace id is derived from `creator` and `salt`.
    Genesis {
        /// The creator's device public key (its origin derives from it).
        creator: PublicKey,
        /// The random salt of the workspace id.
        salt: [u8; 16],
    },
    /// Names the origin whose log holds this op as the successor of an older origin of the
    /// same owner (a device whose clock state ran far ahead, or, with the security work, a
    /// forked origin): the predecessor's entries from `cut` on are superseded — stored and
    /// forwarded, never applied — and the successor re-issues their ops.
    Successor {
        /// The predecessor's device public key (its origin id derives from it).
        predecessor_key: PublicKey,
        /// The first index of the predecessor that is superseded.
        cut: u64,
        /// The predecessor's chain after its first `cut` entries: which log below the cut
        /// the successor vouches for (for fork recovery; not checked by receivers yet).
        chain: ChainHash,
        /// The predecessor key's signature of the successor proof message.
        proof: [u8; 64],
        /// The successor's X25519 key, for receiving wrapped workspace keys (absent in ops
        /// written before encryption existed).
        exchange: Option<ExchangeKey>,
    },
    /// The workspace's policy, fixed for life: only in the genesis entry, beside the
    /// [`ControlOp::Genesis`]. A workspace whose genesis has no policy was created before
    /// membership existed and admits every authentic device (`docs/ARCHITECTURE.md`).
    Policy {
        /// Data entries are encrypted (DESIGN §8).
        encrypted: bool,
        /// The creator's X25519 key, for receiving wrapped workspace keys.
        creator_exchange: ExchangeKey,
    },
    /// An admin's invitation: whoever holds the invite secret (given as an invite code) may
    /// join with `role`, before `expires` (Unix ms; 0 = never), while fewer than `uses`
    /// joins redeemed it and it is not revoked.
    Invite {
        /// The Ed25519 public key of the invite secret (it checks join proofs).
        invite_key: PublicKey,
        /// The role a device joining with it gets.
        role: Role,
        /// Unix milliseconds after which a join stamped later is refused (0: never).
        expires: u64,
        /// How many devices may join with it (at least 1).
        uses: u32,
        /// The epoch keys the inviting admin held, each wrapped for the invite secret's
        /// X25519 key, by ascending epoch (encrypted workspaces; else empty).
        wrapped: Vec<(u32, KeyWrap)>,
    },
    /// Entry 0 of a device joining with an invite: the join is the admission.
    Join {
        /// Which invite it redeems.
        invite_key: PublicKey,
        /// The joiner's X25519 key.
        exchange: ExchangeKey,
        /// The invite secret's signature of the join message (workspace, joiner, exchange
        /// key): only a holder of the code can make it, and it cannot be moved.
        proof: [u8; 64],
    },
    /// Entry 0 of a device joining without an invite: its entries stay pending until an
    /// admin admits it with [`ControlOp::SetRole`].
    Request {
        /// The requester's X25519 key.
        exchange: ExchangeKey,
    },
    /// An admin admits a requesting device or raises a member's role. Roles only rise: to
    /// lower one, remove the device and invite it again.
    SetRole {
        /// The device.
        target: PeerId,
        /// Its role from now on.
        role: Role,
    },
    /// An admin withdraws an invite: joins redeeming it that no member had acknowledged
    /// before seeing the revocation are refused.
    RevokeInvite {
        /// The invite's key.
        invite_key: PublicKey,
    },
    /// An admin removes a device: its entries from `cut` on (extended by what other members
    /// acknowledged before they saw the removal) are never applied.
    Remove {
        /// The removed device.
        target: PeerId,
        /// The first index not applied: the remover's cursor for the target.
        cut: u64,
    },
    /// The device leaves: nothing after this entry is applied (DESIGN §8 calls it `Seal`).
    Leave,
    /// What the author had stored of each origin when it wrote this (next index per
    /// origin, ascending origin order): who has seen what.
    Ack {
        /// `(origin, next)` pairs, strictly ascending by origin.
        cursors: Vec<(PeerId, u64)>,
    },
    /// The key of epoch `epoch`, wrapped for each listed device (encrypted workspaces:
    /// the creator's first key in its genesis entry, a new epoch beside a removal, or an
    /// admin handing keys to a member that lacks them). Only wraps by admins, and a
    /// device's wraps for itself, are trusted (`docs/ARCHITECTURE.md`, "Encryption").
    EpochKeys {
        /// The epoch.
        epoch: u32,
        /// `(device, wrap)` pairs, strictly ascending by device.
        wraps: Vec<(PeerId, KeyWrap)>,
    },
}

/// Why a control op cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The op kind was defined by a newer version: stored and forwarded, applying its
    /// origin waits for an upgrade.
    #[error("control op kind {kind} is not known to this version")]
    NeedsUpgrade {
        /// The unknown kind.
        kind: u32,
    },
    /// The op is of another domain.
    #[error("op of domain {0} is not a control op")]
    NotControl(u32),
    /// The op's body does not match its kind's format.
    #[error("malformed control op: {0}")]
    Malformed(DecodeError),
}

impl ControlOp {
    /// The op that founds a workspace created by `creator` with `salt`.
    pub fn genesis(creator: PublicKey, salt: [u8; 16]) -> ControlOp {
        ControlOp::Genesis { creator, salt }
    }

    /// The workspace id this op founds (a genesis), or `None`.
    pub fn founds(&self) -> Option<WorkspaceId> {
        match self {
            ControlOp::Genesis { creator, salt } => Some(WorkspaceId::derive(creator, salt)),
            _ => None,
        }
    }

    /// The op by which `successor` succeeds the origin of `predecessor` in `workspace`
    /// from index `cut` on, whose log's chain after its first `cut` entries is `chain`.
    /// Signed with the predecessor's key: only its owner can make it. `exchange` is the
    /// successor's X25519 key (where it receives epoch keys of an encrypted workspace).
    pub fn successor(
        predecessor: &DeviceKey,
        workspace: WorkspaceId,
        successor: PeerId,
        cut: u64,
        chain: ChainHash,
        exchange: Option<ExchangeKey>,
    ) -> ControlOp {
        let predecessor_key = predecessor.public_key();
        let message = successor_message(
            &workspace,
            &PeerId::derive(&workspace, &predecessor_key),
            &successor,
            cut,
            &chain,
        );
        let proof = predecessor.sign(&message);
        ControlOp::Successor { predecessor_key, cut, chain, proof, exchange }
    }

    /// The origin this op supersedes (for a successor op), in `workspace`.
    pub fn predecessor(&self, workspace: &WorkspaceId) -> Option<(PeerId, u64)> {
        match self {
            ControlOp::Successor { predecessor_key, cut, .. } => {
                Some((PeerId::derive(workspace, predecessor_key), *cut))
            }
            _ => None,
        }
    }

    /// The join op of a device with key `joiner` in `workspace`, redeeming the invite whose
    /// secret is `invite`.
    pub fn join(invite: &DeviceKey, workspace: WorkspaceId, joiner: &DeviceKey) -> ControlOp {
        let exchange = joiner.exchange_key();
        let message = join_message(&workspace, &joiner.peer_id(&workspace), &exchange);
        ControlOp::Join { invite_key: invite.public_key(), exchange, proof: invite.sign(&message) }
    }

    /// An ack of `cursors` (in any order; for an origin named twice, the greater cursor),
    /// in the canonical ascending form.
    pub fn ack(cursors: impl IntoIterator<Item = (PeerId, u64)>) -> ControlOp {
        let mut by_origin = std::collections::BTreeMap::new();
        for (origin, next) in cursors {
            let c = by_origin.entry(origin).or_insert(next);
            *c = (*c).max(next);
        }
        ControlOp::Ack { cursors: by_origin.into_iter().collect() }
    }

    /// The op's kind number.
    pub fn kind(&self) -> u32 {
        match self {
            ControlOp::Genesis { .. } => kind::GENESIS,
            ControlOp::Successor { .. } => kind::SUCCESSOR,
            ControlOp::Policy { .. } => kind::POLICY,
            ControlOp::Invite { .. } => kind::INVITE,
            ControlOp::Join { .. } => kind::JOIN,
            ControlOp::Request { .. } => kind::REQUEST,
            ControlOp::SetRole { .. } => kind::SET_ROLE,
            ControlOp::RevokeInvite { .. } => kind::REVOKE_INVITE,
            ControlOp::Remove { .. } => kind::REMOVE,
            ControlOp::Leave => kind::LEAVE,
            ControlOp::Ack { .. } => kind::ACK,
            ControlOp::EpochKeys { .. } => kind::EPOCH_KEYS,
        }
    }

    /// Encodes the op.
    pub fn to_op(&self) -> Op {
        match self {
            ControlOp::Genesis { creator, salt } => {
                let mut body = Vec::with_capacity(48);
                body.extend_from_slice(creator.as_bytes());
                body.extend_from_slice(salt);
                Op { domain: Domain::CONTROL, kind: kind::GENESIS, body }
            }
            ControlOp::Successor { predecessor_key, cut, chain, proof, exchange } => {
                let mut body = Vec::with_capacity(168);
                body.extend_from_slice(predecessor_key.as_bytes());
                body.extend_from_slice(&cut.to_le_bytes());
                body.extend_from_slice(&chain.0);
                body.extend_from_slice(proof);
                if let Some(exchange) = exchange {
                    body.extend_from_slice(&exchange.0);
                }
                Op { domain: Domain::CONTROL, kind: kind::SUCCESSOR, body }
            }
            ControlOp::Policy { encrypted, creator_exchange } => {
                let mut body = Vec::with_capacity(33);
                body.push(u8::from(*encrypted));
                body.extend_from_slice(&creator_exchange.0);
                Op { domain: Domain::CONTROL, kind: kind::POLICY, body }
            }
            ControlOp::Invite { invite_key, role, expires, uses, wrapped } => {
                let mut body = Vec::with_capacity(48 + wrapped.len() * 84);
                body.extend_from_slice(invite_key.as_bytes());
                body.push(*role as u8);
                body.extend_from_slice(&expires.to_le_bytes());
                body.extend_from_slice(&uses.to_le_bytes());
                crate::encryption::put_invite_keys(&mut body, wrapped);
                Op { domain: Domain::CONTROL, kind: kind::INVITE, body }
            }
            ControlOp::Join { invite_key, exchange, proof } => {
                let mut body = Vec::with_capacity(128);
                body.extend_from_slice(invite_key.as_bytes());
                body.extend_from_slice(&exchange.0);
                body.extend_from_slice(proof);
                Op { domain: Domain::CONTROL, kind: kind::JOIN, body }
            }
            ControlOp::Request { exchange } => {
                Op { domain: Domain::CONTROL, kind: kind::REQUEST, body: exchange.0.to_vec() }
            }
            ControlOp::SetRole { target, role } => {
                let mut body = Vec::with_capacity(17);
                body.extend_from_slice(target.as_bytes());
                body.push(*role as u8);
                Op { domain: Domain::CONTROL, kind: kind::SET_ROLE, body }
            }
            ControlOp::RevokeInvite { invite_key } => Op {
                domain: Domain::CONTROL,
                kind: kind::REVOKE_INVITE,
                body: invite_key.as_bytes().to_vec(),
            },
            ControlOp::Remove { target, cut } => {
                let mut body = Vec::with_capacity(24);
                body.extend_from_slice(target.as_bytes());
                body.extend_from_slice(&cut.to_le_bytes());
                Op { domain: Domain::CONTROL, kind: kind::REMOVE, body }
            }
            ControlOp::Leave => Op { domain: Domain::CONTROL, kind: kind::LEAVE, body: Vec::new() },
            ControlOp::Ack { cursors } => {
                let mut body = Vec::with_capacity(2 + cursors.len() * 20);
                crate::codec::put_varint(&mut body, cursors.len() as u64);
                for (origin, next) in cursors {
                    body.extend_from_slice(origin.as_bytes());
                    crate::codec::put_varint(&mut body, *next);
                }
                Op { domain: Domain::CONTROL, kind: kind::ACK, body }
            }
            ControlOp::EpochKeys { epoch, wraps } => {
                let mut body = Vec::with_capacity(8 + wraps.len() * 96);
                crate::codec::put_varint(&mut body, u64::from(*epoch));
                crate::codec::put_varint(&mut body, wraps.len() as u64);
                for (device, wrap) in wraps {
                    body.extend_from_slice(device.as_bytes());
                    body.extend_from_slice(&wrap.0);
                }
                Op { domain: Domain::CONTROL, kind: kind::EPOCH_KEYS, body }
            }
        }
    }

    /// Decodes a control op.
    pub fn decode(op: &Op) -> Result<ControlOp, ControlError> {
        if op.domain != Domain::CONTROL {
            return Err(ControlError::NotControl(op.domain.0));
        }
        let mut r = Reader::new(&op.body);
        let out = match op.kind {
            kind::GENESIS => {
                let at = r.offset();
                let creator =
                    PublicKey::from_bytes(&r.array("genesis creator key")?).map_err(|_| {
                        DecodeError {
                            offset: at,
                            what: crate::codec::DecodeProblem::Invalid(
                                "the creator key is not an Ed25519 public key",
                            ),
                        }
                    })?;
                let salt = r.array("genesis salt")?;
                ControlOp::Genesis { creator, salt }
            }
            kind::SUCCESSOR => {
                let at = r.offset();
                let predecessor_key =
                    PublicKey::from_bytes(&r.array("predecessor key")?).map_err(|_| {
                        DecodeError {
                            offset: at,
                            what: crate::codec::DecodeProblem::Invalid(
                                "the predecessor key is not an Ed25519 public key",
                            ),
                        }
                    })?;
                let cut = u64::from_le_bytes(r.array("successor cut")?);
                let chain = ChainHash(r.array("successor chain")?);
                let proof = r.array("successor proof")?;
                let exchange = if r.remaining() > 0 {
                    Some(ExchangeKey(r.array("successor exchange key")?))
                } else {
                    None
                };
                ControlOp::Successor { predecessor_key, cut, chain, proof, exchange }
            }
            kind::POLICY => {
                let at = r.offset();
                let encrypted = match r.u8("policy flags")? {
                    0 => false,
                    1 => true,
                    _ => return Err(invalid(at, "unknown policy flags").into()),
                };
                ControlOp::Policy {
                    encrypted,
                    creator_exchange: ExchangeKey(r.array("creator exchange key")?),
                }
            }
            kind::INVITE => {
                let invite_key = public_key(&mut r, "invite key")?;
                let role = role(&mut r)?;
                let expires = r.u64_le("invite expiry")?;
                let at = r.offset();
                let uses = r.u32_le("invite uses")?;
                if uses == 0 {
                    return Err(invalid(at, "an invite for no uses").into());
                }
                let wrapped = crate::encryption::read_invite_keys(&mut r)?;
                ControlOp::Invite { invite_key, role, expires, uses, wrapped }
            }
            kind::JOIN => {
                let invite_key = public_key(&mut r, "join invite key")?;
                let exchange = ExchangeKey(r.array("join exchange key")?);
                let proof = r.array("join proof")?;
                ControlOp::Join { invite_key, exchange, proof }
            }
            kind::REQUEST => {
                ControlOp::Request { exchange: ExchangeKey(r.array("request exchange key")?) }
            }
            kind::SET_ROLE => {
                let target = PeerId::from_bytes(r.array("role target")?);
                ControlOp::SetRole { target, role: role(&mut r)? }
            }
            kind::REVOKE_INVITE => {
                ControlOp::RevokeInvite { invite_key: public_key(&mut r, "revoked invite key")? }
            }
            kind::REMOVE => {
                let target = PeerId::from_bytes(r.array("removed device")?);
                ControlOp::Remove { target, cut: r.u64_le("removal cut")? }
            }
            kind::LEAVE => ControlOp::Leave,
            kind::ACK => {
                let n = r.bounded_varint("ack cursor count", MAX_ACK_CURSORS)?;
                let mut cursors: Vec<(PeerId, u64)> = Vec::with_capacity(n);
                for _ in 0..n {
                    let at = r.offset();
                    let origin = PeerId::from_bytes(r.array("ack origin")?);
                    if cursors.last().is_some_and(|(last, _)| *last >= origin) {
                        return Err(invalid(at, "ack origins not strictly ascending").into());
                    }
                    cursors.push((origin, r.varint("ack cursor")?));
                }
                ControlOp::Ack { cursors }
            }
            kind::EPOCH_KEYS => {
                let epoch = r.bounded_varint("key epoch", u32::MAX.into())? as u32;
                let n = r.bounded_varint("key wrap count", MAX_KEY_WRAPS)?;
                let mut wraps: Vec<(PeerId, KeyWrap)> =
                    Vec::with_capacity(n.min(r.remaining() / 96));
                for _ in 0..n {
                    let at = r.offset();
                    let device = PeerId::from_bytes(r.array("key wrap device")?);
                    if wraps.last().is_some_and(|(last, _)| *last >= device) {
                        return Err(invalid(at, "key wrap devices not strictly ascending").into());
                    }
                    wraps.push((device, KeyWrap(r.array("key wrap")?)));
                }
                ControlOp::EpochKeys { epoch, wraps }
            }
            other => return Err(ControlError::NeedsUpgrade { kind: other }),
        };
        r.finish()?;
        Ok(out)
    }
}

impl From<DecodeError> for ControlError {
    fn from(e: DecodeError) -> Self {
        ControlError::Malformed(e)
    }
}

fn invalid(offset: usize, why: &'static str) -> DecodeError {
    DecodeError { offset, what: crate::codec::DecodeProblem::Invalid(why) }
}

fn public_key(r: &mut Reader<'_>, reading: &'static str) -> Result<PublicKey, DecodeError> {
    let at = r.offset();
    PublicKey::from_bytes(&r.array(reading)?).map_err(|_| invalid(at, "not an Ed25519 public key"))
}

fn role(r: &mut Reader<'_>) -> Result<Role, DecodeError> {
    let at = r.offset();
    Role::from_byte(r.u8("role")?).ok_or_else(|| invalid(at, "unknown role"))
}

/// The message an invite secret signs to admit `joiner` with `exchange`
/// (`docs/FORMAT.md` §3.4).
fn join_message(workspace: &WorkspaceId, joiner: &PeerId, exchange: &ExchangeKey) -> Vec<u8> {
    let mut m = Vec::with_capacity(JOIN_PROOF_PREFIX.len() + 64);
    m.extend_from_slice(JOIN_PROOF_PREFIX);
    m.extend_from_slice(workspace.as_bytes());
    m.extend_from_slice(joiner.as_bytes());
    m.extend_from_slice(&exchange.0);
    m
}

/// The message a predecessor's key signs to name `successor` (`docs/FORMAT.md` §3.4).
fn successor_message(
    workspace: &WorkspaceId,
    predecessor: &PeerId,
    successor: &PeerId,
    cut: u64,
    chain: &ChainHash,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(SUCCESSOR_PROOF_PREFIX.len() + 88);
    m.extend_from_slice(SUCCESSOR_PROOF_PREFIX);
    m.extend_from_slice(workspace.as_bytes());
    m.extend_from_slice(predecessor.as_bytes());
    m.extend_from_slice(successor.as_bytes());
    m.extend_from_slice(&cut.to_le_bytes());
    m.extend_from_slice(&chain.0);
    m
}

/// What the ingest pipeline checks of an entry's control ops on receipt: a genesis must be
/// entry 0 of its creator and must derive this workspace's id; a successor op's proof must
/// be its predecessor key's signature naming the origin whose log holds it. Unknown or
/// malformed control ops pass here (they are stored and stall when applied); data entries
/// pass untouched.
pub fn check_entry(
    workspace: &WorkspaceId,
    origin: &PeerId,
    index: u64,
    body: &EntryBody,
) -> Result<(), RejectReason> {
    let EntryBody::Live(payload) = body else { return Ok(()) };
    let decoded: Vec<ControlOp> = payload
        .ops
        .iter()
        .filter(|o| o.domain == Domain::CONTROL)
        .filter_map(|o| ControlOp::decode(o).ok())
        .collect();
    let genesis = decoded.iter().any(|o| matches!(o, ControlOp::Genesis { .. }));
    let admissions = decoded
        .iter()
        .filter(|o| matches!(o, ControlOp::Join { .. } | ControlOp::Request { .. }))
        .count();
    let policies = decoded.iter().filter(|o| matches!(o, ControlOp::Policy { .. })).count();
    if policies > usize::from(genesis)
        || admissions > 1
        || (admissions == 1 && (index != 0 || genesis))
    {
        return Err(RejectReason::MisplacedControl);
    }
    for op in &decoded {
        if let ControlOp::Join { exchange, proof, invite_key } = op
            && !invite_key.verify(&join_message(workspace, origin, exchange), proof)
        {
            return Err(RejectReason::ForgedJoin);
        }
    }
    for op in payload.ops.iter().filter(|o| o.domain == Domain::CONTROL) {
        if let Ok(ControlOp::Genesis { creator, salt }) = ControlOp::decode(op) {
            let founds_this = WorkspaceId::derive(&creator, &salt) == *workspace;
            let by_origin = PeerId::derive(workspace, &creator) == *origin;
            if index != 0 || !founds_this || !by_origin {
                return Err(RejectReason::ForgedGenesis);
            }
        }
        if let Ok(ControlOp::Successor { predecessor_key, cut, chain, proof, .. }) =
            ControlOp::decode(op)
        {
            let predecessor = PeerId::derive(workspace, &predecessor_key);
            let message = successor_message(workspace, &predecessor, origin, cut, &chain);
            if predecessor == *origin || !predecessor_key.verify(&message, &proof) {
                return Err(RejectReason::ForgedSuccessor);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Payload;
    use crate::hlc::Hlc;
    use crate::ids::DeviceKey;
    use proptest::prelude::*;

    fn body(op: Op) -> EntryBody {
        EntryBody::Live(Payload { hlc: Hlc::from_millis(1), author: None, ops: vec![op] })
    }

    #[test]
    fn genesis_round_trips_and_founds_its_workspace() {
        let key = DeviceKey::from_secret_bytes(&[7; 32]);
        let g = ControlOp::genesis(key.public_key(), [3; 16]);
        assert_eq!(ControlOp::decode(&g.to_op()), Ok(g.clone()));
        let ws = g.founds().unwrap();
        let origin = key.peer_id(&ws);
        assert_eq!(check_entry(&ws, &origin, 0, &body(g.to_op())), Ok(()));
    }

    #[test]
    fn forged_or_misplaced_genesis_is_rejected() {
        let owner = DeviceKey::from_secret_bytes(&[7; 32]);
        let ws = WorkspaceId::derive(&owner.public_key(), &[3; 16]);
        let squatter = DeviceKey::from_secret_bytes(&[8; 32]);
        let squat = ControlOp::genesis(squatter.public_key(), [3; 16]).to_op();
        let origin = squatter.peer_id(&ws);
        assert_eq!(check_entry(&ws, &origin, 0, &body(squat)), Err(RejectReason::ForgedGenesis));
        // The owner's own genesis, but not at index 0: a second founding.
        let real = ControlOp::genesis(owner.public_key(), [3; 16]).to_op();
        let owner_origin = owner.peer_id(&ws);
        assert_eq!(
            check_entry(&ws, &owner_origin, 5, &body(real.clone())),
            Err(RejectReason::ForgedGenesis)
        );
        // The owner's genesis replayed by another origin.
        assert_eq!(check_entry(&ws, &origin, 0, &body(real)), Err(RejectReason::ForgedGenesis));
    }

    #[test]
    fn a_successor_needs_its_predecessors_proof_for_this_origin_and_workspace() {
        let ws = WorkspaceId::from_bytes([9; 16]);
        let old = DeviceKey::from_secret_bytes(&[1; 32]);
        let new = DeviceKey::from_secret_bytes(&[2; 32]);
        let successor = new.peer_id(&ws);
        let chain = ChainHash([5; 32]);
        let op = ControlOp::successor(&old, ws, successor, 7, chain, Some(new.exchange_key()));
        assert_eq!(ControlOp::decode(&op.to_op()), Ok(op.clone()));
        assert_eq!(op.predecessor(&ws), Some((old.peer_id(&ws), 7)));
        assert_eq!(check_entry(&ws, &successor, 0, &body(op.to_op())), Ok(()));
        // Moved to another origin, or another workspace: the proof names the successor.
        let other = DeviceKey::from_secret_bytes(&[3; 32]).peer_id(&ws);
        let moved = check_entry(&ws, &other, 0, &body(op.to_op()));
        assert_eq!(moved, Err(RejectReason::ForgedSuccessor));
        let ws2 = WorkspaceId::from_bytes([8; 16]);
        let moved = check_entry(&ws2, &new.peer_id(&ws2), 0, &body(op.to_op()));
        assert_eq!(moved, Err(RejectReason::ForgedSuccessor));
        // A cut changed after signing, or a proof made by someone else's key.
        let ControlOp::Successor { predecessor_key, chain, proof, .. } = op.clone() else {
            unreachable!()
        };
        let altered =
            ControlOp::Successor { predecessor_key, cut: 3, chain, proof, exchange: None };
        let got = check_entry(&ws, &successor, 0, &body(altered.to_op()));
        assert_eq!(got, Err(RejectReason::ForgedSuccessor));
        let forged = ControlOp::Successor {
            predecessor_key,
            cut: 7,
            chain,
            proof: new.sign(b"anything"),
            exchange: None,
        };
        let got = check_entry(&ws, &successor, 0, &body(forged.to_op()));
        assert_eq!(got, Err(RejectReason::ForgedSuccessor));
        // An origin cannot succeed itself.
        let own = ControlOp::successor(&old, ws, old.peer_id(&ws), 7, chain, None);
        let got = check_entry(&ws, &old.peer_id(&ws), 3, &body(own.to_op()));
        assert_eq!(got, Err(RejectReason::ForgedSuccessor));
    }

    #[test]
    fn a_join_needs_its_invite_secrets_proof_for_this_device_and_workspace() {
        let ws = WorkspaceId::from_bytes([9; 16]);
        let invite = DeviceKey::from_secret_bytes(&[4; 32]);
        let joiner = DeviceKey::from_secret_bytes(&[5; 32]);
        let join = ControlOp::join(&invite, ws, &joiner);
        assert_eq!(ControlOp::decode(&join.to_op()), Ok(join.clone()));
        let me = joiner.peer_id(&ws);
        assert_eq!(check_entry(&ws, &me, 0, &body(join.to_op())), Ok(()));
        // Moved to another device or workspace, or signed by another key.
        let other = DeviceKey::from_secret_bytes(&[6; 32]).peer_id(&ws);
        assert_eq!(check_entry(&ws, &other, 0, &body(join.to_op())), Err(RejectReason::ForgedJoin));
        let ws2 = WorkspaceId::from_bytes([8; 16]);
        let moved = check_entry(&ws2, &joiner.peer_id(&ws2), 0, &body(join.to_op()));
        assert_eq!(moved, Err(RejectReason::ForgedJoin));
        let ControlOp::Join { exchange, .. } = join.clone() else { unreachable!() };
        let forged = ControlOp::Join {
            invite_key: invite.public_key(),
            exchange,
            proof: joiner.sign(b"anything"),
        };
        assert_eq!(check_entry(&ws, &me, 0, &body(forged.to_op())), Err(RejectReason::ForgedJoin));
        // A join anywhere but entry 0, or two admission ops in one entry.
        assert_eq!(
            check_entry(&ws, &me, 1, &body(join.to_op())),
            Err(RejectReason::MisplacedControl)
        );
        let request = ControlOp::Request { exchange: joiner.exchange_key() };
        let both = EntryBody::Live(Payload {
            hlc: Hlc::from_millis(1),
            author: None,
            ops: vec![join.to_op(), request.to_op()],
        });
        assert_eq!(check_entry(&ws, &me, 0, &both), Err(RejectReason::MisplacedControl));
        // A policy outside the genesis entry.
        let policy = ControlOp::Policy { encrypted: true, creator_exchange: exchange };
        assert_eq!(
            check_entry(&ws, &me, 0, &body(policy.to_op())),
            Err(RejectReason::MisplacedControl)
        );
    }

    fn any_peer() -> impl Strategy<Value = PeerId> {
        any::<[u8; 16]>().prop_map(PeerId::from_bytes)
    }

    fn any_op() -> impl Strategy<Value = ControlOp> {
        let key = (1u8..=255).prop_map(|n| DeviceKey::from_secret_bytes(&[n; 32]).public_key());
        let role = prop_oneof![Just(Role::Member), Just(Role::Admin)];
        let exchange = any::<[u8; 32]>().prop_map(ExchangeKey);
        prop_oneof![
            (key.clone(), any::<[u8; 16]>())
                .prop_map(|(creator, salt)| ControlOp::Genesis { creator, salt }),
            (any::<bool>(), exchange.clone()).prop_map(|(encrypted, creator_exchange)| {
                ControlOp::Policy { encrypted, creator_exchange }
            }),
            (
                key.clone(),
                role.clone(),
                any::<u64>(),
                1..u32::MAX,
                proptest::collection::btree_map(any::<u32>(), any::<u8>(), 0..3)
                    .prop_map(|m| m.into_iter().map(|(e, b)| (e, KeyWrap([b; 80]))).collect())
            )
                .prop_map(|(invite_key, role, expires, uses, wrapped)| {
                    ControlOp::Invite { invite_key, role, expires, uses, wrapped }
                }),
            (key.clone(), exchange.clone(), any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(
                |(invite_key, exchange, a, b)| {
                    let mut proof = [0; 64];
                    proof[..32].copy_from_slice(&a);
                    proof[32..].copy_from_slice(&b);
                    ControlOp::Join { invite_key, exchange, proof }
                }
            ),
            exchange.prop_map(|exchange| ControlOp::Request { exchange }),
            (any_peer(), role).prop_map(|(target, role)| ControlOp::SetRole { target, role }),
            key.prop_map(|invite_key| ControlOp::RevokeInvite { invite_key }),
            (any_peer(), any::<u64>()).prop_map(|(target, cut)| ControlOp::Remove { target, cut }),
            Just(ControlOp::Leave),
            proptest::collection::btree_map(any_peer(), any::<u64>(), 0..20)
                .prop_map(|m| ControlOp::Ack { cursors: m.into_iter().collect() }),
            (any::<u32>(), proptest::collection::btree_map(any_peer(), any::<u8>(), 0..4))
                .prop_map(|(epoch, m)| ControlOp::EpochKeys {
                    epoch,
                    wraps: m.into_iter().map(|(d, b)| (d, KeyWrap([b; 80]))).collect()
                }),
        ]
    }

    proptest! {
        #[test]
        fn every_op_round_trips_and_its_bytes_are_canonical(op in any_op()) {
            let encoded = op.to_op();
            prop_assert_eq!(encoded.kind, op.kind());
            let decoded = ControlOp::decode(&encoded).unwrap();
            prop_assert_eq!(&decoded, &op);
            prop_assert_eq!(decoded.to_op(), encoded);
        }

        #[test]
        fn arbitrary_bodies_never_panic_and_decode_canonically(kind in 0u32..14, body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let op = Op { domain: Domain::CONTROL, kind, body };
            if let Ok(decoded) = ControlOp::decode(&op) {
                prop_assert_eq!(decoded.to_op(), op);
            }
        }
    }

    #[test]
    fn unknown_kinds_need_an_upgrade_and_bad_bodies_are_malformed() {
        let op = Op { domain: Domain::CONTROL, kind: 77, body: vec![1] };
        assert_eq!(ControlOp::decode(&op), Err(ControlError::NeedsUpgrade { kind: 77 }));
        let short = Op { domain: Domain::CONTROL, kind: kind::GENESIS, body: vec![0; 10] };
        assert!(matches!(ControlOp::decode(&short), Err(ControlError::Malformed(_))));
    }
}
