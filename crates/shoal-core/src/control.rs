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
//! Never: decides membership by itself (that needs the whole control log, and arrives with
//! the security work), or reads data ops.

use crate::codec::{DecodeError, Reader};
use crate::entry::{Domain, EntryBody, Op};
use crate::error::RejectReason;
use crate::ids::{PeerId, PublicKey, WorkspaceId};

/// Control op kinds. Part of the format: never reused.
pub mod kind {
    /// [`super::ControlOp::Genesis`].
    pub const GENESIS: u32 = 1;
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

    /// The workspace id this op founds.
    pub fn workspace(&self) -> WorkspaceId {
        match self {
            ControlOp::Genesis { creator, salt } => WorkspaceId::derive(creator, salt),
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

/// What the ingest pipeline checks of an entry's control ops on receipt: a genesis must be
/// entry 0 of its creator and must derive this workspace's id. Unknown or malformed control
/// ops pass here (they are stored and stall when applied); data entries pass untouched.
pub fn check_entry(
    workspace: &WorkspaceId,
    origin: &PeerId,
    index: u64,
    body: &EntryBody,
) -> Result<(), RejectReason> {
    let EntryBody::Live(payload) = body else { return Ok(()) };
    for op in payload.ops.iter().filter(|o| o.domain == Domain::CONTROL) {
        if let Ok(ControlOp::Genesis { creator, salt }) = ControlOp::decode(op) {
            let founds_this = WorkspaceId::derive(&creator, &salt) == *workspace;
            let by_origin = PeerId::derive(workspace, &creator) == *origin;
            if index != 0 || !founds_this || !by_origin {
                return Err(RejectReason::ForgedGenesis);
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

    fn body(op: Op) -> EntryBody {
        EntryBody::Live(Payload { hlc: Hlc::from_millis(1), author: None, ops: vec![op] })
    }

    #[test]
    fn genesis_round_trips_and_founds_its_workspace() {
        let key = DeviceKey::from_secret_bytes(&[7; 32]);
        let g = ControlOp::genesis(key.public_key(), [3; 16]);
        assert_eq!(ControlOp::decode(&g.to_op()), Ok(g.clone()));
        let ws = g.workspace();
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
    fn unknown_kinds_need_an_upgrade_and_bad_bodies_are_malformed() {
        let op = Op { domain: Domain::CONTROL, kind: 77, body: vec![1] };
        assert_eq!(ControlOp::decode(&op), Err(ControlError::NeedsUpgrade { kind: 77 }));
        let short = Op { domain: Domain::CONTROL, kind: kind::GENESIS, body: vec![0; 10] };
        assert!(matches!(ControlOp::decode(&short), Err(ControlError::Malformed(_))));
    }
}
