//! Invite codes: what an admin gives a person so their device can join (DESIGN §8).
//!
//! Owns: [`InviteCode`] (the workspace id, a location hint, and the invite secret) and its
//! text form (`docs/FORMAT.md` §3.5): `shoal-invite:` followed by unpadded base64url of
//! `version || flags || workspace || secret || hint || checksum` (format 1 had no flags).
//!
//! Invariants: the secret never appears in any log; only its public key does (in the
//! admin's [`ControlOp::Invite`]) and its signature (in the joiner's [`ControlOp::Join`]).
//! A code with a wrong checksum, version or length is refused whole, never half-read.
//!
//! Never: decides whether an invite is still valid (that is the roster's job, from the
//! control log).

use crate::codec::{DecodeError, Reader, put_bytes};
use crate::control::{ControlOp, Role};
use crate::ids::{DeviceKey, RandomnessUnavailable, WorkspaceId, random_bytes};

/// The text every invite code starts with.
pub const INVITE_PREFIX: &str = "shoal-invite:";

/// The version byte of the code format this version writes (it also reads format 1, which
/// had no flags byte).
const CODE_VERSION: u8 = 2;

/// Flag bit: the workspace is encrypted.
const FLAG_ENCRYPTED: u8 = 1;

/// At most this many bytes of location hint in a code.
pub const MAX_HINT_BYTES: u64 = 1024;

/// An invite code: everything a new device needs to join a workspace while every admin is
/// offline.
#[derive(Clone, PartialEq, Eq)]
pub struct InviteCode {
    /// The workspace it joins.
    pub workspace: WorkspaceId,
    /// Where to find the workspace (a folder path or a relay URL; may be empty).
    pub hint: String,
    /// The workspace is encrypted: the joining device writes no data before it holds a
    /// key (its invite's keys arrive wrapped for the secret, in the admin's invite op).
    pub encrypted: bool,
    secret: [u8; 32],
}

/// Why a text is not an invite code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InviteCodeError {
    /// It does not start with [`INVITE_PREFIX`].
    #[error("not an invite code: it does not start with `{INVITE_PREFIX}`")]
    NotACode,
    /// The part after the prefix is not base64url.
    #[error("the invite code is damaged: not base64url ({0})")]
    Encoding(String),
    /// A code of a newer format.
    #[error("the invite code is of format {0}; this version reads formats 1 to {CODE_VERSION}")]
    Version(u8),
    /// The checksum does not match: a typo or a cut-off paste.
    #[error("the invite code is damaged (checksum mismatch): copy it again whole")]
    Checksum,
    /// The bytes do not follow the format.
    #[error("the invite code is damaged: {0}")]
    Malformed(#[from] DecodeError),
    /// The location hint is not UTF-8.
    #[error("the invite code's location hint is not UTF-8")]
    HintNotUtf8,
}

impl InviteCode {
    /// A new code with a fresh random secret.
    pub fn generate(workspace: WorkspaceId, hint: &str) -> Result<Self, RandomnessUnavailable> {
        Ok(InviteCode {
            workspace,
            hint: hint.to_owned(),
            encrypted: false,
            secret: random_bytes::<32>()?,
        })
    }

    /// A code from known parts (tests and the simulation use seeded secrets).
    pub fn from_parts(workspace: WorkspaceId, hint: &str, secret: [u8; 32]) -> Self {
        InviteCode { workspace, hint: hint.to_owned(), encrypted: false, secret }
    }

    /// The invite's signing key (its public key identifies the invite).
    pub fn key(&self) -> DeviceKey {
        DeviceKey::from_secret_bytes(&self.secret)
    }

    /// The op an admin writes to make this invite.
    pub fn invite_op(
        &self,
        role: Role,
        expires: u64,
        uses: u32,
        wrapped: Vec<(u32, crate::encryption::KeyWrap)>,
    ) -> ControlOp {
        ControlOp::Invite {
            invite_key: self.key().public_key(),
            role,
            expires,
            uses: uses.max(1),
            wrapped,
        }
    }

    /// The op a device with key `joiner` writes as its entry 0 to join with this code.
    pub fn join_op(&self, joiner: &DeviceKey) -> ControlOp {
        ControlOp::join(&self.key(), self.workspace, joiner)
    }

    /// The text form.
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(56 + self.hint.len());
        bytes.push(CODE_VERSION);
        bytes.push(if self.encrypted { FLAG_ENCRYPTED } else { 0 });
        bytes.extend_from_slice(self.workspace.as_bytes());
        bytes.extend_from_slice(&self.secret);
        put_bytes(&mut bytes, self.hint.as_bytes());
        let sum = blake3::hash(&bytes);
        bytes.extend_from_slice(&sum.as_bytes()[..4]);
        format!("{INVITE_PREFIX}{}", data_encoding::BASE64URL_NOPAD.encode(&bytes))
    }

    /// Reads the text form (surrounding whitespace is ignored).
    pub fn parse(text: &str) -> Result<Self, InviteCodeError> {
        let body = text.trim().strip_prefix(INVITE_PREFIX).ok_or(InviteCodeError::NotACode)?;
        let bytes = data_encoding::BASE64URL_NOPAD
            .decode(body.as_bytes())
            .map_err(|e| InviteCodeError::Encoding(e.to_string()))?;
        let Some(split) = bytes.len().checked_sub(4) else {
            return Err(InviteCodeError::Checksum);
        };
        let (content, sum) = bytes.split_at(split);
        if blake3::hash(content).as_bytes()[..4] != *sum {
            return Err(InviteCodeError::Checksum);
        }
        let mut r = Reader::new(content);
        let version = r.u8("invite code version")?;
        let encrypted = match version {
            1 => false,
            CODE_VERSION => {
                let at = r.offset();
                match r.u8("invite code flags")? {
                    0 => false,
                    FLAG_ENCRYPTED => true,
                    _ => {
                        return Err(DecodeError {
                            offset: at,
                            what: crate::codec::DecodeProblem::Invalid("unknown invite code flags"),
                        }
                        .into());
                    }
                }
            }
            other => return Err(InviteCodeError::Version(other)),
        };
        let workspace = WorkspaceId::from_bytes(r.array("invite workspace")?);
        let secret = r.array("invite secret")?;
        let hint = r.bytes("invite hint", MAX_HINT_BYTES)?.to_vec();
        r.finish()?;
        let hint = String::from_utf8(hint).map_err(|_| InviteCodeError::HintNotUtf8)?;
        Ok(InviteCode { workspace, hint, encrypted, secret })
    }
}

impl std::fmt::Debug for InviteCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret: codes end up in logs.
        f.debug_struct("InviteCode")
            .field("workspace", &self.workspace)
            .field("hint", &self.hint)
            .field("encrypted", &self.encrypted)
            .field("key", &self.key().public_key())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn debug_output_never_shows_the_secret() {
        let code = InviteCode::from_parts(WorkspaceId::from_bytes([1; 16]), "x", [0xab; 32]);
        assert!(!format!("{code:?}").contains("abab"));
    }

    #[test]
    fn damaged_codes_are_refused_whole() {
        let code = InviteCode::from_parts(WorkspaceId::from_bytes([1; 16]), "/srv/f", [7; 32]);
        let text = code.encode();
        assert_eq!(InviteCode::parse(&format!("  {text}\n")), Ok(code.clone()));
        assert_eq!(InviteCode::parse("hello"), Err(InviteCodeError::NotACode));
        // A cut-off paste: refused whether the cut leaves whole base64 groups or not.
        for cut in 1..8 {
            assert!(matches!(
                InviteCode::parse(&text[..text.len() - cut]),
                Err(InviteCodeError::Checksum | InviteCodeError::Encoding(_))
            ));
        }
        assert!(matches!(
            InviteCode::parse(&format!("{text}!")),
            Err(InviteCodeError::Encoding(_))
        ));
        // One character changed.
        let mut chars: Vec<char> = text.chars().collect();
        let at = INVITE_PREFIX.len() + 10;
        chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
        let typo: String = chars.into_iter().collect();
        assert_eq!(InviteCode::parse(&typo), Err(InviteCodeError::Checksum));
    }

    proptest! {
        #[test]
        fn codes_round_trip(ws in any::<[u8; 16]>(), secret in any::<[u8; 32]>(), hint in ".{0,60}", encrypted in any::<bool>()) {
            let mut code = InviteCode::from_parts(WorkspaceId::from_bytes(ws), &hint, secret);
            code.encrypted = encrypted;
            prop_assert_eq!(InviteCode::parse(&code.encode()), Ok(code));
        }

        #[test]
        fn arbitrary_text_never_panics(body in "[A-Za-z0-9_-]{0,120}") {
            let _ = InviteCode::parse(&format!("{INVITE_PREFIX}{body}"));
        }
    }
}
