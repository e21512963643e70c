//! Identifiers and device keys.
//!
//! Owns: [`WorkspaceId`], [`PeerId`], [`UserId`], [`DeviceKey`] (an Ed25519 signing key)
//! and [`PublicKey`].
//!
//! Invariants: a workspace id is derived from its creator's public key and a random salt,
//! so nobody can claim an existing id with another key; a peer id is derived from the
//! workspace id and the device's public key, so an entry's origin can be checked against the
//! key that signed it, and one device's peer ids are unlinkable across workspaces.
//!
//! Never: exposes secret key bytes except through [`DeviceKey::to_secret_bytes`], which
//! exists for the replica that stores the device key.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::Signer;

const WORKSPACE_ID_CONTEXT: &str = "shoal 2026-11 workspace id v1";
const PEER_ID_CONTEXT: &str = "shoal 2026-11 peer id v1";

macro_rules! id16 {
    ($(#[$doc:meta])* $name:ident, $label:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name([u8; 16]);

        impl $name {
            /// Wraps raw bytes (as read from a trusted store or a verified message).
            pub const fn from_bytes(bytes: [u8; 16]) -> Self {
                $name(bytes)
            }

            /// The raw bytes.
            pub const fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }

            /// Parses raw bytes of any length, failing unless there are exactly 16.
            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                Some($name(bytes.try_into().ok()?))
            }

            /// Lowercase hex, 32 characters: the form used in paths and messages.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// The first 8 hex characters, for people reading status output.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($label, "({})"), self.short())
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let mut out = [0u8; 16];
                hex::decode_to_slice(s, &mut out).map_err(|_| IdParseError {
                    kind: $label,
                    input: s.chars().take(64).collect(),
                })?;
                Ok($name(out))
            }
        }
    };
}

id16!(
    /// A workspace: one set of logs that sync together. Derived from the creator's public
    /// key and a salt ([`WorkspaceId::derive`]).
    WorkspaceId,
    "WorkspaceId"
);
id16!(
    /// A device's identity within one workspace: the origin of a log. Derived from the
    /// workspace id and the device's public key ([`PeerId::derive`]).
    PeerId,
    "PeerId"
);
id16!(
    /// A person or account that authored an entry, independent of the device.
    UserId,
    "UserId"
);

/// A string that is not 32 hex digits was given where an id was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a {kind} (expected 32 hex digits): {input:?}")]
pub struct IdParseError {
    kind: &'static str,
    input: String,
}

impl WorkspaceId {
    /// The id of a workspace founded by `creator` with `salt`. The genesis control entry
    /// carries both, so anyone can check who founded the workspace.
    pub fn derive(creator: &PublicKey, salt: &[u8; 16]) -> Self {
        let mut h = blake3::Hasher::new_derive_key(WORKSPACE_ID_CONTEXT);
        h.update(creator.as_bytes());
        h.update(salt);
        WorkspaceId(truncate16(h.finalize()))
    }
}

impl PeerId {
    /// The id of the device holding `key` in `workspace`.
    pub fn derive(workspace: &WorkspaceId, key: &PublicKey) -> Self {
        let mut h = blake3::Hasher::new_derive_key(PEER_ID_CONTEXT);
        h.update(workspace.as_bytes());
        h.update(key.as_bytes());
        PeerId(truncate16(h.finalize()))
    }
}

fn truncate16(hash: blake3::Hash) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(&hash.as_bytes()[..16]);
    out
}

/// Fills `buf` with bytes from the operating system's CSPRNG.
///
/// Fails only if the OS refuses randomness, which Shoal treats as fatal for key generation.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], RandomnessUnavailable> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(|e| RandomnessUnavailable(e.to_string()))?;
    Ok(out)
}

/// The operating system did not provide random bytes.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the operating system's random number generator failed: {0}")]
pub struct RandomnessUnavailable(String);

/// An Ed25519 public key, 32 bytes, known to be a valid curve point.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

impl PublicKey {
    /// Parses a public key; fails for byte strings that are not a valid point.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, InvalidKey> {
        ed25519_dalek::VerifyingKey::from_bytes(bytes).map(PublicKey).map_err(|_| InvalidKey)
    }

    /// The 32 key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// Checks an Ed25519 signature over `message` (strict verification: rejects
    /// malleable and small-order forms).
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let sig = ed25519_dalek::Signature::from_bytes(signature);
        self.0.verify_strict(message, &sig).is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", hex::encode(&self.as_bytes()[..4]))
    }
}

/// 32 bytes that are not an Ed25519 public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid Ed25519 public key")]
pub struct InvalidKey;

/// A device's Ed25519 signing key. Signs the heads of the device's own log.
#[derive(Clone)]
pub struct DeviceKey(ed25519_dalek::SigningKey);

impl DeviceKey {
    /// A new random key.
    pub fn generate() -> Result<Self, RandomnessUnavailable> {
        Ok(Self::from_secret_bytes(&random_bytes::<32>()?))
    }

    /// Restores a key from its 32 secret bytes.
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Self {
        DeviceKey(ed25519_dalek::SigningKey::from_bytes(secret))
    }

    /// The 32 secret bytes, for the store that keeps this key.
    pub fn to_secret_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// This device's peer id in `workspace`.
    pub fn peer_id(&self, workspace: &WorkspaceId) -> PeerId {
        PeerId::derive(workspace, &self.public_key())
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }

    /// The X25519 secret this device receives wrapped workspace keys with (DESIGN §8). It is
    /// derived from the signing key, so the one key file holds both and they cannot drift
    /// apart; the derivation is one-way, so the exchange key reveals nothing of the signing
    /// key.
    pub fn exchange_secret(&self) -> x25519_dalek::StaticSecret {
        let seed = blake3::derive_key(EXCHANGE_KEY_CONTEXT, &self.0.to_bytes());
        x25519_dalek::StaticSecret::from(seed)
    }

    /// The public half of [`DeviceKey::exchange_secret`], published in the device's
    /// genesis policy or join.
    pub fn exchange_key(&self) -> ExchangeKey {
        ExchangeKey(x25519_dalek::PublicKey::from(&self.exchange_secret()).to_bytes())
    }
}

/// The blake3 context that derives a device's X25519 secret from its Ed25519 secret.
const EXCHANGE_KEY_CONTEXT: &str = "shoal 2026-11 exchange key v1";

/// An X25519 public key: where a member receives wrapped workspace keys (DESIGN §8). Any 32
/// bytes are a valid X25519 public key, so this type carries no check.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExchangeKey(pub [u8; 32]);

impl fmt::Debug for ExchangeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ExchangeKey({})", hex::encode(&self.0[..4]))
    }
}

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceKey(public {:?})", self.public_key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_ids_are_bound_to_key_and_workspace() {
        let a = DeviceKey::from_secret_bytes(&[1; 32]);
        let b = DeviceKey::from_secret_bytes(&[2; 32]);
        let ws1 = WorkspaceId::derive(&a.public_key(), &[0; 16]);
        let ws2 = WorkspaceId::derive(&a.public_key(), &[1; 16]);
        assert_ne!(ws1, ws2, "salt changes the workspace id");
        assert_ne!(ws1, WorkspaceId::derive(&b.public_key(), &[0; 16]));
        assert_ne!(a.peer_id(&ws1), a.peer_id(&ws2), "unlinkable across workspaces");
        assert_ne!(a.peer_id(&ws1), b.peer_id(&ws1));
        assert_eq!(a.peer_id(&ws1), PeerId::derive(&ws1, &a.public_key()));
    }

    #[test]
    fn ids_round_trip_through_hex() {
        let id = PeerId::from_bytes([0xab; 16]);
        assert_eq!(id.to_string().parse::<PeerId>().unwrap(), id);
        assert!("xyz".parse::<PeerId>().is_err());
        assert!("ab".parse::<PeerId>().is_err());
    }

    #[test]
    fn signatures_verify_only_for_the_signed_message() {
        let k = DeviceKey::from_secret_bytes(&[7; 32]);
        let sig = k.sign(b"hello");
        assert!(k.public_key().verify(b"hello", &sig));
        assert!(!k.public_key().verify(b"hellp", &sig));
        let mut bad = sig;
        bad[0] ^= 1;
        assert!(!k.public_key().verify(b"hello", &bad));
    }
}
