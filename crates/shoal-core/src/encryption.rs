//! End-to-end encryption of data entries (DESIGN §8; `docs/FORMAT.md` §3.6).
//!
//! Owns: [`EpochKey`] (a workspace key of one epoch), [`KeyWrap`] (an epoch key sealed to
//! one X25519 key with HPKE), [`Keyring`] (the epoch keys one device holds, sealing and
//! opening data entries with them), and the byte layouts they use.
//!
//! - **Epochs.** A workspace key per epoch, 32 random bytes. Epoch 0 is made by the
//!   creator; a removal starts the next one. Each epoch key reaches members only as
//!   [`KeyWrap`]s in control entries ([`crate::control::ControlOp::EpochKeys`], and an
//!   invite's keys wrapped for its secret), so every key a device holds can be recovered
//!   from the control log and the device's own secret: there is no key store to back up.
//! - **Per-origin keys.** Entries of origin `o` under epoch `e` are sealed with
//!   `blake3::derive_key("shoal 2026-11 data key v1", key(e) || o)`, so no two origins
//!   share a key.
//! - **Entries.** XChaCha20-Poly1305 with a random 24-byte nonce stored with the
//!   ciphertext (random, not counted: a device restored from an old backup writes indexes
//!   it already used, and must not reuse a nonce). The associated data binds workspace,
//!   origin, index, the stored class, epoch, the previous chain hash, timestamp and op count,
//!   so ciphertext moved to another workspace, origin, index or branch does not open.
//! - **Wraps.** HPKE base mode (RFC 9180: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
//!   ChaCha20-Poly1305), info binding workspace, epoch and the recipient's key.
//!
//! Invariants: an epoch key never leaves this module except wrapped or as the AEAD keys it
//! derives; `Debug` never prints key bytes. Opening is all-or-nothing: a tag that fails
//! yields no plaintext.
//!
//! Never: decides which keys a device may trust (the roster does: only admins' wraps and a
//! device's own count), or provides forward secrecy (v1 does not: a member that kept an
//! epoch key reads every entry of that epoch, including ones it fetches later).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Mutex;

use chacha20poly1305::aead::{Aead, KeyInit, Payload as AeadPayload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hpke::{Deserializable, Serializable};

use crate::codec::{DecodeError, DecodeProblem, Reader, put_varint};
use crate::entry::{ChainHash, EncryptedPayload, Payload};
use crate::ids::{
    DeviceKey, ExchangeKey, PeerId, RandomnessUnavailable, WorkspaceId, random_bytes,
};

type Kem = hpke::kem::X25519HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;
type WrapAead = hpke::aead::ChaCha20Poly1305;

const DATA_KEY_CONTEXT: &str = "shoal 2026-11 data key v1";
const DATA_AAD_PREFIX: &[u8] = b"shoal 2026-11 data aad v1\0";
const WRAP_INFO_PREFIX: &[u8] = b"shoal 2026-11 epoch key wrap v1\0";

/// Bytes of one [`KeyWrap`]: the HPKE encapsulated key (32), the sealed epoch key (32) and
/// its tag (16).
pub const KEY_WRAP_LEN: usize = 80;

/// At most this many epochs' keys in one invite.
pub const MAX_INVITE_KEYS: u64 = 1024;

/// At most this many candidate keys for one epoch number (two admins who rotate at once
/// both make "the next" epoch; more than a handful is an attack on the reader's time).
pub const MAX_KEYS_PER_EPOCH: usize = 8;

/// A workspace key of one epoch.
#[derive(Clone, PartialEq, Eq)]
pub struct EpochKey([u8; 32]);

impl fmt::Debug for EpochKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EpochKey(..)")
    }
}

impl EpochKey {
    /// A new random key.
    pub fn generate() -> Result<Self, RandomnessUnavailable> {
        Ok(EpochKey(random_bytes()?))
    }

    /// A key from fixed bytes (tests and test vectors).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        EpochKey(bytes)
    }

    fn data_cipher(&self, origin: &PeerId) -> XChaCha20Poly1305 {
        let mut material = [0u8; 48];
        material[..32].copy_from_slice(&self.0);
        material[32..].copy_from_slice(origin.as_bytes());
        let key = blake3::derive_key(DATA_KEY_CONTEXT, &material);
        XChaCha20Poly1305::new(&key.into())
    }
}

/// An epoch key sealed to one X25519 key (HPKE: encapsulated key, then ciphertext and tag).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyWrap(pub [u8; KEY_WRAP_LEN]);

impl fmt::Debug for KeyWrap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyWrap({}..)", hex::encode(&self.0[..4]))
    }
}

/// Why a data entry could not be sealed or a key wrapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncryptionError {
    /// The workspace is encrypted and this device holds no key yet.
    #[error(
        "this device holds no key of the encrypted workspace yet (it joined without an \
         invite, or its invite's keys are not here): sync, and wait for an admin to admit it"
    )]
    NoKey,
    /// The operating system gave no randomness for a nonce or key.
    #[error("no randomness for a nonce or key: {0}")]
    Randomness(String),
    /// HPKE refused the recipient key.
    #[error("cannot wrap a key for this recipient: {0}")]
    Wrap(String),
}

/// Why an encrypted entry did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// No key of the entry's epoch is held here (yet): the entry waits for one.
    #[error("waiting for the key of epoch {epoch} (not held by this device)")]
    NoKey {
        /// The entry's epoch.
        epoch: u32,
    },
    /// No held key of the epoch opens it: tampered, moved, or sealed with a key nobody
    /// was given.
    #[error(
        "does not open under any key of epoch {epoch} held here (tampered, moved to another \
         place, or sealed under a key the workspace never shared)"
    )]
    Inauthentic {
        /// The entry's epoch.
        epoch: u32,
    },
    /// It opened, but the plaintext is not a data payload of the op count it claims.
    #[error("its decrypted contents are malformed: {0}")]
    Malformed(String),
}

impl From<RandomnessUnavailable> for EncryptionError {
    fn from(e: RandomnessUnavailable) -> Self {
        EncryptionError::Randomness(e.to_string())
    }
}

/// What a wrap of `epoch`'s key for `recipient` is bound to.
fn wrap_info(workspace: &WorkspaceId, epoch: u32, recipient: &ExchangeKey) -> Vec<u8> {
    let mut info = Vec::with_capacity(WRAP_INFO_PREFIX.len() + 52);
    info.extend_from_slice(WRAP_INFO_PREFIX);
    info.extend_from_slice(workspace.as_bytes());
    info.extend_from_slice(&epoch.to_le_bytes());
    info.extend_from_slice(&recipient.0);
    info
}

/// Seals `key` (of `epoch`) to `recipient`.
pub fn wrap_key(
    workspace: &WorkspaceId,
    epoch: u32,
    key: &EpochKey,
    recipient: &ExchangeKey,
) -> Result<KeyWrap, EncryptionError> {
    let public = <Kem as hpke::Kem>::PublicKey::from_bytes(&recipient.0)
        .map_err(|e| EncryptionError::Wrap(e.to_string()))?;
    let info = wrap_info(workspace, epoch, recipient);
    let (encapped, sealed) = hpke::single_shot_seal::<WrapAead, Kdf, Kem>(
        &hpke::OpModeS::Base,
        &public,
        &info,
        &key.0,
        &[],
    )
    .map_err(|e| EncryptionError::Wrap(e.to_string()))?;
    let encapped = encapped.to_bytes();
    let mut out = [0u8; KEY_WRAP_LEN];
    if encapped.len() + sealed.len() != KEY_WRAP_LEN {
        return Err(EncryptionError::Wrap("unexpected HPKE output length".into()));
    }
    out[..32].copy_from_slice(&encapped);
    out[32..].copy_from_slice(&sealed);
    Ok(KeyWrap(out))
}

/// Opens a wrap of `epoch`'s key with the secret of the X25519 key it was made for (a
/// device's or an invite's: [`DeviceKey::exchange_secret`]). `None` if it does not open.
pub fn unwrap_key(
    workspace: &WorkspaceId,
    epoch: u32,
    wrap: &KeyWrap,
    recipient: &DeviceKey,
) -> Option<EpochKey> {
    let secret = recipient.exchange_secret();
    let private = <Kem as hpke::Kem>::PrivateKey::from_bytes(&secret.to_bytes()).ok()?;
    let encapped = <Kem as hpke::Kem>::EncappedKey::from_bytes(&wrap.0[..32]).ok()?;
    let info = wrap_info(workspace, epoch, &recipient.exchange_key());
    let key = hpke::single_shot_open::<WrapAead, Kdf, Kem>(
        &hpke::OpModeR::Base,
        &private,
        &encapped,
        &info,
        &wrap.0[32..],
        &[],
    )
    .ok()?;
    let key: [u8; 32] = key.try_into().ok()?;
    Some(EpochKey(key))
}

/// Writes the keys an invite carries (`docs/FORMAT.md` §3.6): `varint(n)`, then per key
/// `varint(epoch) || wrap[80]`, epochs strictly ascending.
pub fn put_invite_keys(out: &mut Vec<u8>, keys: &[(u32, KeyWrap)]) {
    put_varint(out, keys.len() as u64);
    for (epoch, wrap) in keys {
        put_varint(out, u64::from(*epoch));
        out.extend_from_slice(&wrap.0);
    }
}

/// Reads what [`put_invite_keys`] writes.
pub fn read_invite_keys(r: &mut Reader<'_>) -> Result<Vec<(u32, KeyWrap)>, DecodeError> {
    let n = r.bounded_varint("invite key count", MAX_INVITE_KEYS)?;
    let mut keys: Vec<(u32, KeyWrap)> = Vec::with_capacity(n.min(r.remaining() / 81));
    for _ in 0..n {
        let at = r.offset();
        let epoch = r.bounded_varint("invite key epoch", u32::MAX.into())? as u32;
        if keys.last().is_some_and(|(last, _)| *last >= epoch) {
            return Err(DecodeError {
                offset: at,
                what: DecodeProblem::Invalid("invite key epochs not strictly ascending"),
            });
        }
        keys.push((epoch, KeyWrap(r.array("invite key wrap")?)));
    }
    Ok(keys)
}

/// The epoch keys one device holds, and the ciphers derived from them.
pub struct Keyring {
    workspace: WorkspaceId,
    epochs: BTreeMap<u32, Vec<EpochKey>>,
    ciphers: Mutex<HashMap<(u32, usize, PeerId), XChaCha20Poly1305>>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let epochs: Vec<(u32, usize)> = self.epochs.iter().map(|(e, k)| (*e, k.len())).collect();
        f.debug_struct("Keyring").field("epochs", &epochs).finish()
    }
}

impl Keyring {
    /// A keyring holding no key.
    pub fn new(workspace: WorkspaceId) -> Self {
        Keyring { workspace, epochs: BTreeMap::new(), ciphers: Mutex::default() }
    }

    /// The keys `device` can open from `roster`'s trusted wraps for it, and, if it joined
    /// with an invite whose secret is `invite`, the keys that invite carries.
    pub fn for_device(
        roster: &crate::membership::Roster,
        workspace: WorkspaceId,
        device: &DeviceKey,
        invite: Option<&DeviceKey>,
    ) -> Keyring {
        let mut ring = Keyring::new(workspace);
        let me = device.peer_id(&workspace);
        for w in roster.key_wraps().iter().filter(|w| w.recipient == me) {
            if let Some(key) = unwrap_key(&workspace, w.epoch, &w.wrap, device) {
                ring.insert(w.epoch, key);
            }
        }
        if let Some(invite) = invite {
            let public = invite.public_key();
            for i in roster.invites().iter().filter(|i| i.key == public) {
                for (epoch, wrap) in &i.wrapped {
                    if let Some(key) = unwrap_key(&workspace, *epoch, wrap, invite) {
                        ring.insert(*epoch, key);
                    }
                }
            }
        }
        ring
    }

    /// Adds a key of `epoch` (ignored if held already, or if the epoch has the most
    /// candidates it may have).
    pub fn insert(&mut self, epoch: u32, key: EpochKey) {
        let keys = self.epochs.entry(epoch).or_default();
        if !keys.contains(&key) && keys.len() < MAX_KEYS_PER_EPOCH {
            keys.push(key);
        }
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.epochs.is_empty()
    }

    /// The epochs held, ascending.
    pub fn epochs(&self) -> impl Iterator<Item = u32> + '_ {
        self.epochs.keys().copied()
    }

    /// The keys held of `epoch`.
    pub fn keys_of(&self, epoch: u32) -> &[EpochKey] {
        self.epochs.get(&epoch).map_or(&[], Vec::as_slice)
    }

    /// The newest epoch held and its first key: what this device writes under.
    pub fn newest(&self) -> Option<(u32, &EpochKey)> {
        self.epochs.iter().next_back().and_then(|(e, k)| k.first().map(|k| (*e, k)))
    }

    /// The first key of every epoch held, each wrapped for `recipient` (an invite's keys;
    /// a new member's share).
    pub fn wrap_all_for(
        &self,
        recipient: &ExchangeKey,
    ) -> Result<Vec<(u32, KeyWrap)>, EncryptionError> {
        self.epochs
            .iter()
            .filter_map(|(e, keys)| keys.first().map(|k| (*e, k)))
            .map(|(e, k)| Ok((e, wrap_key(&self.workspace, e, k, recipient)?)))
            .collect()
    }

    fn with_cipher<T>(
        &self,
        epoch: u32,
        candidate: usize,
        origin: &PeerId,
        f: impl FnOnce(&XChaCha20Poly1305) -> T,
    ) -> Option<T> {
        let key = self.epochs.get(&epoch)?.get(candidate)?;
        let mut cache = self.ciphers.lock().unwrap_or_else(|p| p.into_inner());
        let cipher =
            cache.entry((epoch, candidate, *origin)).or_insert_with(|| key.data_cipher(origin));
        Some(f(cipher))
    }

    /// Seals `payload`, entry `index` of `origin` after chain hash `prev`, under the newest
    /// epoch held.
    pub fn seal(
        &self,
        origin: &PeerId,
        index: u64,
        prev: &ChainHash,
        payload: &Payload,
    ) -> Result<EncryptedPayload, EncryptionError> {
        let (epoch, _) = self.newest().ok_or(EncryptionError::NoKey)?;
        let nonce: [u8; 24] = random_bytes()?;
        let op_count = payload.ops.len() as u64;
        let aad =
            data_aad(&self.workspace, origin, index, epoch, prev, payload.hlc.as_u64(), op_count);
        let mut plain = Vec::with_capacity(64);
        payload.encode_data_contents(&mut plain);
        let sealed = self
            .with_cipher(epoch, 0, origin, |c| {
                c.encrypt(&XNonce::from(nonce), AeadPayload { msg: &plain, aad: &aad })
            })
            .ok_or(EncryptionError::NoKey)?
            .map_err(|_| EncryptionError::Wrap("the entry is too large to seal".into()))?;
        Ok(EncryptedPayload { hlc: payload.hlc, op_count, epoch, nonce, ciphertext: sealed })
    }

    /// Opens entry `index` of `origin` whose previous chain hash is `prev`.
    pub fn open(
        &self,
        origin: &PeerId,
        index: u64,
        prev: &ChainHash,
        sealed: &EncryptedPayload,
    ) -> Result<Payload, OpenError> {
        let epoch = sealed.epoch;
        let candidates = self.keys_of(epoch).len();
        if candidates == 0 {
            return Err(OpenError::NoKey { epoch });
        }
        let aad = data_aad(
            &self.workspace,
            origin,
            index,
            epoch,
            prev,
            sealed.hlc.as_u64(),
            sealed.op_count,
        );
        for candidate in 0..candidates {
            let opened = self.with_cipher(epoch, candidate, origin, |c| {
                c.decrypt(
                    &XNonce::from(sealed.nonce),
                    AeadPayload { msg: &sealed.ciphertext, aad: &aad },
                )
            });
            if let Some(Ok(plain)) = opened {
                let payload = Payload::decode_data_contents(&plain, sealed.hlc)
                    .map_err(|e| OpenError::Malformed(e.to_string()))?;
                if payload.ops.len() as u64 != sealed.op_count {
                    return Err(OpenError::Malformed(format!(
                        "it holds {} ops where its header says {}",
                        payload.ops.len(),
                        sealed.op_count
                    )));
                }
                return Ok(payload);
            }
        }
        Err(OpenError::Inauthentic { epoch })
    }
}

/// The associated data of a data entry (see the module doc).
fn data_aad(
    workspace: &WorkspaceId,
    origin: &PeerId,
    index: u64,
    epoch: u32,
    prev: &ChainHash,
    hlc: u64,
    op_count: u64,
) -> Vec<u8> {
    let mut aad = Vec::with_capacity(DATA_AAD_PREFIX.len() + 101);
    aad.extend_from_slice(DATA_AAD_PREFIX);
    aad.extend_from_slice(workspace.as_bytes());
    aad.extend_from_slice(origin.as_bytes());
    aad.extend_from_slice(&index.to_le_bytes());
    aad.push(crate::entry::DATA_ENCRYPTED_TAG);
    aad.extend_from_slice(&epoch.to_le_bytes());
    aad.extend_from_slice(&prev.0);
    aad.extend_from_slice(&hlc.to_le_bytes());
    aad.extend_from_slice(&op_count.to_le_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{Domain, Op};
    use crate::hlc::Hlc;
    use proptest::prelude::*;

    fn ws() -> WorkspaceId {
        WorkspaceId::from_bytes([9; 16])
    }

    fn ring(key: u8) -> Keyring {
        let mut k = Keyring::new(ws());
        k.insert(0, EpochKey::from_bytes([key; 32]));
        k
    }

    fn payload(body: Vec<u8>) -> Payload {
        Payload {
            hlc: Hlc::from_millis(5),
            author: None,
            ops: vec![Op { domain: Domain::TABLES, kind: 1, body }],
        }
    }

    #[test]
    fn a_wrap_opens_only_for_its_recipient_workspace_and_epoch() {
        let alice = DeviceKey::from_secret_bytes(&[1; 32]);
        let bob = DeviceKey::from_secret_bytes(&[2; 32]);
        let key = EpochKey::from_bytes([7; 32]);
        let wrap = wrap_key(&ws(), 3, &key, &alice.exchange_key()).unwrap();
        assert_eq!(unwrap_key(&ws(), 3, &wrap, &alice), Some(key));
        assert_eq!(unwrap_key(&ws(), 3, &wrap, &bob), None);
        assert_eq!(unwrap_key(&ws(), 4, &wrap, &alice), None);
        assert_eq!(unwrap_key(&WorkspaceId::from_bytes([8; 16]), 3, &wrap, &alice), None);
        let mut bent = wrap;
        bent.0[50] ^= 1;
        assert_eq!(unwrap_key(&ws(), 3, &bent, &alice), None);
    }

    #[test]
    fn an_entry_opens_only_where_it_was_sealed() {
        let origin = PeerId::from_bytes([1; 16]);
        let prev = ChainHash([4; 32]);
        let k = ring(1);
        let p = payload(b"secret".to_vec());
        let sealed = k.seal(&origin, 2, &prev, &p).unwrap();
        assert!(!sealed.ciphertext.windows(6).any(|w| w == b"secret"));
        assert_eq!(k.open(&origin, 2, &prev, &sealed), Ok(p.clone()));
        let inauthentic = Err(OpenError::Inauthentic { epoch: 0 });
        assert_eq!(k.open(&PeerId::from_bytes([2; 16]), 2, &prev, &sealed), inauthentic);
        assert_eq!(k.open(&origin, 3, &prev, &sealed), inauthentic);
        assert_eq!(k.open(&origin, 2, &ChainHash([5; 32]), &sealed), inauthentic);
        assert_eq!(ring(2).open(&origin, 2, &prev, &sealed), inauthentic);
        let mut later = sealed.clone();
        later.hlc = Hlc::from_millis(6);
        assert_eq!(k.open(&origin, 2, &prev, &later), inauthentic);
        let mut other_epoch = sealed.clone();
        other_epoch.epoch = 1;
        assert_eq!(k.open(&origin, 2, &prev, &other_epoch), Err(OpenError::NoKey { epoch: 1 }));
        assert_eq!(Keyring::new(ws()).seal(&origin, 2, &prev, &p), Err(EncryptionError::NoKey));
    }

    #[test]
    fn the_newest_epoch_seals_and_older_candidates_still_open() {
        let origin = PeerId::from_bytes([1; 16]);
        let prev = ChainHash([0; 32]);
        let mut k = ring(1);
        k.insert(1, EpochKey::from_bytes([2; 32]));
        let sealed = k.seal(&origin, 0, &prev, &payload(vec![1])).unwrap();
        assert_eq!(sealed.epoch, 1);
        // Two admins rotated at once: the reader holds both keys of epoch 1.
        let mut other = ring(1);
        other.insert(1, EpochKey::from_bytes([3; 32]));
        other.insert(1, EpochKey::from_bytes([2; 32]));
        assert!(other.open(&origin, 0, &prev, &sealed).is_ok());
    }

    proptest! {
        #[test]
        fn sealing_round_trips_and_nonces_differ(body in proptest::collection::vec(any::<u8>(), 0..300), index in any::<u64>()) {
            let origin = PeerId::from_bytes([1; 16]);
            let prev = ChainHash([4; 32]);
            let k = ring(1);
            let p = payload(body);
            let a = k.seal(&origin, index, &prev, &p).unwrap();
            let b = k.seal(&origin, index, &prev, &p).unwrap();
            prop_assert_ne!(a.nonce, b.nonce);
            prop_assert_eq!(k.open(&origin, index, &prev, &a), Ok(p));
        }

        #[test]
        fn invite_keys_round_trip_and_arbitrary_bytes_never_panic(
            epochs in proptest::collection::btree_set(any::<u32>(), 0..4),
            junk in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let keys: Vec<(u32, KeyWrap)> = epochs.iter().map(|e| (*e, KeyWrap([*e as u8; 80]))).collect();
            let mut out = Vec::new();
            put_invite_keys(&mut out, &keys);
            let mut r = Reader::new(&out);
            prop_assert_eq!(read_invite_keys(&mut r).unwrap(), keys);
            prop_assert!(r.finish().is_ok());
            let mut r = Reader::new(&junk);
            if let Ok(decoded) = read_invite_keys(&mut r) {
                let mut again = Vec::new();
                put_invite_keys(&mut again, &decoded);
                prop_assert_eq!(&again[..], &junk[..r.offset()]);
            }
        }
    }
}
