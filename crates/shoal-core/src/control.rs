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
use crate::entry::{ChainHash, Domain, EntryBody, Op};
use crate::error::RejectReason;
use crate::ids::{DeviceKey, PeerId, PublicKey, WorkspaceId};

/// The prefix of the message a predecessor key signs to name its successor
/// (`docs/FORMAT.md` §3.4).
const SUCCESSOR_PROOF_PREFIX: &[u8] = b"shoal 2026-11 successor v1\0";

/// Control op kinds. Part of the format: never reused.
pub mod kind {
    /// [`super::ControlOp::Genesis`].
    pub const GENESIS: u32 = 1;
    /// [`super::ControlOp::Successor`].
    pub const SUCCESSOR: u32 = 2;
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
            ControlOp::Successor { .. } => None,
        }
    }

    /// The op by which `successor` succeeds the origin of `predecessor` in `workspace`
    /// from index `cut` on, whose log's chain after its first `cut` entries is `chain`.
    /// Signed with the predecessor's key: only its owner can make it.
    pub fn successor(
        predecessor: &DeviceKey,
        workspace: WorkspaceId,
        successor: PeerId,
        cut: u64,
        chain: ChainHash,
    ) -> ControlOp {
        let predecessor_key = predecessor.public_key();
        let message = successor_message(
            &workspace,
            &PeerId::derive(&workspace, &predecessor_key),
            &successor,
            cut,
            &chain,
        );
        ControlOp::Successor { predecessor_key, cut, chain, proof: predecessor.sign(&message) }
    }

    /// The origin this op supersedes (for a successor op), in `workspace`.
    pub fn predecessor(&self, workspace: &WorkspaceId) -> Option<(PeerId, u64)> {
        match self {
            ControlOp::Successor { predecessor_key, cut, .. } => {
                Some((PeerId::derive(workspace, predecessor_key), *cut))
            }
            ControlOp::Genesis { .. } => None,
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
            ControlOp::Successor { predecessor_key, cut, chain, proof } => {
                let mut body = Vec::with_capacity(136);
                body.extend_from_slice(predecessor_key.as_bytes());
                body.extend_from_slice(&cut.to_le_bytes());
                body.extend_from_slice(&chain.0);
                body.extend_from_slice(proof);
                Op { domain: Domain::CONTROL, kind: kind::SUCCESSOR, body }
            }
        }
    }

    /// Decodes a control op.
    pub fn decode(op: &Op) -> Result<ControlOp, ControlError> {
        if op.domain != Domain::CONTROL {
            return Err(ControlError::NotControl(op.domain.0));
        }
        let mut r = Reader::new(&op.body);
        let out =
            match op.kind {
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
                    let predecessor_key = PublicKey::from_bytes(&r.array("predecessor key")?)
                        .map_err(|_| DecodeError {
                            offset: at,
                            what: crate::codec::DecodeProblem::Invalid(
                                "the predecessor key is not an Ed25519 public key",
                            ),
                        })?;
                    let cut = u64::from_le_bytes(r.array("successor cut")?);
                    let chain = ChainHash(r.array("successor chain")?);
                    let proof = r.array("successor proof")?;
                    ControlOp::Successor { predecessor_key, cut, chain, proof }
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
    for op in payload.ops.iter().filter(|o| o.domain == Domain::CONTROL) {
        if let Ok(ControlOp::Genesis { creator, salt }) = ControlOp::decode(op) {
            let founds_this = WorkspaceId::derive(&creator, &salt) == *workspace;
            let by_origin = PeerId::derive(workspace, &creator) == *origin;
            if index != 0 || !founds_this || !by_origin {
                return Err(RejectReason::ForgedGenesis);
            }
        }
        if let Ok(ControlOp::Successor { predecessor_key, cut, chain, proof }) =
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
        let op = ControlOp::successor(&old, ws, successor, 7, chain);
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
        let altered = ControlOp::Successor { predecessor_key, cut: 3, chain, proof };
        let got = check_entry(&ws, &successor, 0, &body(altered.to_op()));
        assert_eq!(got, Err(RejectReason::ForgedSuccessor));
        let forged =
            ControlOp::Successor { predecessor_key, cut: 7, chain, proof: new.sign(b"anything") };
        let got = check_entry(&ws, &successor, 0, &body(forged.to_op()));
        assert_eq!(got, Err(RejectReason::ForgedSuccessor));
        // An origin cannot succeed itself.
        let own = ControlOp::successor(&old, ws, old.peer_id(&ws), 7, chain);
        let got = check_entry(&ws, &old.peer_id(&ws), 3, &body(own.to_op()));
        assert_eq!(got, Err(RejectReason::ForgedSuccessor));
    }

    #[test]
    fn unknown_kinds_need_an_upgrade_and_bad_bodies_are_malformed() {
        let op = Op { domain: Domain::CONTROL, kind: 77, body: vec![1] };
        assert_eq!(ControlOp::decode(&op), Err(ControlError::NeedsUpgrade { kind: 77 }));
        let short = Op { domain: Domain::CONTROL, kind: kind::GENESIS, body: vec![0; 10] };
        assert!(matches!(ControlOp::decode(&short), Err(ControlError::Malformed(_))));
    }
}
