//! Relay authentication and access (DESIGN §8, `docs/PROTOCOL.md` §3).
//!
//! Owns: the bytes a device signs to authenticate ([`auth_message`]), their check
//! ([`verify_auth`]), and what an authenticated device may do, decided from the relay's
//! own fold of the workspace's control log ([`access_of`]).
//!
//! Invariants: a signature names the relay deployment, the connection's challenge, the
//! workspace and the device, so it cannot be replayed on another connection, at another
//! relay, or for another workspace or device. Access is a pure function of the roster and
//! the device: the relay applies the members' own rules and adds none.
//!
//! Never: admits a device the roster does not show active (except to push its own entry
//! 0), or serves reads to a device that is not a member.

use shoal_core::membership::{DeviceState, Roster};
use shoal_core::{PeerId, PublicKey, WorkspaceId};

use crate::frame::{Access, RefuseCode, RelayId};

/// Domain separation for the authentication signature.
const AUTH_CONTEXT: &[u8] = b"shoal relay auth v1\0";

/// What a device signs to authenticate at `relay` on the connection that sent `challenge`.
pub fn auth_message(
    relay: &RelayId,
    challenge: &[u8; 32],
    workspace: &WorkspaceId,
    peer: &PeerId,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(AUTH_CONTEXT.len() + 32 + 32 + 16 + 16);
    m.extend_from_slice(AUTH_CONTEXT);
    m.extend_from_slice(&relay.0);
    m.extend_from_slice(challenge);
    m.extend_from_slice(workspace.as_bytes());
    m.extend_from_slice(peer.as_bytes());
    m
}

/// Checks a device's authentication: `Ok(peer id)` when `signature` is `key`'s over this
/// relay's id, this connection's challenge and `workspace`.
pub fn verify_auth(
    relay: &RelayId,
    challenge: &[u8; 32],
    workspace: &WorkspaceId,
    key: &PublicKey,
    signature: &[u8; 64],
) -> Result<PeerId, String> {
    let peer = PeerId::derive(workspace, key);
    if key.verify(&auth_message(relay, challenge, workspace, &peer), signature) {
        Ok(peer)
    } else {
        Err(format!(
            "device {peer}: authentication signature does not verify (made for another relay, \
             connection or workspace, or by another key)"
        ))
    }
}

/// Whether the relay takes workspaces it does not hold yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewWorkspaces {
    /// A device may found one by pushing its genesis.
    Accept,
    /// Only workspaces the relay already holds are served.
    Refuse,
}

/// What `peer` may do in a workspace whose roster (folded from what the relay stores) is
/// `roster`, or why it is refused. `known` says whether the relay holds any entry of the
/// workspace.
pub fn access_of(
    roster: &Roster,
    known: bool,
    peer: &PeerId,
    new_workspaces: NewWorkspaces,
) -> Result<Access, (RefuseCode, String)> {
    if !roster.founded {
        return match (known, new_workspaces) {
            (false, NewWorkspaces::Refuse) => Err((
                RefuseCode::UnknownWorkspace,
                format!(
                    "device {peer}: this relay does not serve the workspace and accepts no new ones"
                ),
            )),
            // Founding: the device may push its genesis (entry 0); nothing else.
            _ => Ok(Access::Entrant),
        };
    }
    if roster.open {
        return Ok(Access::Member);
    }
    match roster.device(peer).map(|d| &d.state) {
        Some(DeviceState::Active) => Ok(Access::Member),
        None | Some(DeviceState::Pending(_)) => Ok(Access::Entrant),
        Some(DeviceState::Removed { by, cut }) => Err((
            RefuseCode::NotAMember,
            format!("device {peer} was removed from the workspace by {by} (at entry {cut})"),
        )),
        Some(DeviceState::Left { cut }) => Err((
            RefuseCode::NotAMember,
            format!("device {peer} left the workspace (at entry {cut})"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_core::DeviceKey;

    fn setup() -> (RelayId, [u8; 32], WorkspaceId, DeviceKey) {
        let key = DeviceKey::from_secret_bytes(&[7; 32]);
        let ws = WorkspaceId::derive(&key.public_key(), &[1; 16]);
        (RelayId([3; 32]), [9; 32], ws, key)
    }

    #[test]
    fn a_signature_verifies_only_for_its_relay_challenge_and_workspace() {
        let (relay, challenge, ws, key) = setup();
        let peer = key.peer_id(&ws);
        let sig = key.sign(&auth_message(&relay, &challenge, &ws, &peer));
        assert_eq!(verify_auth(&relay, &challenge, &ws, &key.public_key(), &sig), Ok(peer));
        assert!(verify_auth(&RelayId([4; 32]), &challenge, &ws, &key.public_key(), &sig).is_err());
        assert!(verify_auth(&relay, &[8; 32], &ws, &key.public_key(), &sig).is_err());
        let other_ws = WorkspaceId::derive(&key.public_key(), &[2; 16]);
        assert!(verify_auth(&relay, &challenge, &other_ws, &key.public_key(), &sig).is_err());
        let other = DeviceKey::from_secret_bytes(&[8; 32]);
        let err = verify_auth(&relay, &challenge, &ws, &other.public_key(), &sig).unwrap_err();
        assert!(err.contains(&other.peer_id(&ws).to_hex()), "{err}");
    }

    #[test]
    fn an_unknown_workspace_is_founded_only_when_the_relay_accepts_new_ones() {
        let roster = shoal_core::membership::ControlLog::new().roster(&WorkspaceId::default());
        let p = PeerId::from_bytes([1; 16]);
        assert_eq!(access_of(&roster, false, &p, NewWorkspaces::Accept), Ok(Access::Entrant));
        assert_eq!(
            access_of(&roster, false, &p, NewWorkspaces::Refuse).map_err(|e| e.0),
            Err(RefuseCode::UnknownWorkspace)
        );
        // Entries but no genesis yet: nobody is a member.
        assert_eq!(access_of(&roster, true, &p, NewWorkspaces::Refuse), Ok(Access::Entrant));
    }
}
