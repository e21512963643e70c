//! The entry envelope, its canonical bytes, hashes, the per-origin hash chain and signed
//! heads.
//!
//! Owns: [`Entry`] (one local transaction of one origin, or the marker left by
//! expungement), [`Op`] (a domain-tagged opaque operation), [`EntryHash`], [`ChainHash`],
//! [`SignedHead`] and [`Seal`]. Whether received entries are authentic is decided in one
//! place, the ingest pipeline (`ingest.rs`).
//!
//! Invariants:
//! - An entry's hash is blake3 over its canonical bytes (`docs/FORMAT.md` §2); an expunged
//!   entry keeps that hash, so the chain still verifies.
//! - Each origin's log is a chain: `chain[0] = seed(workspace, origin)`,
//!   `chain[i+1] = H(chain[i] || hash(entry i))`. A signed head `(workspace, origin, next,
//!   chain[next])` signed by the origin's key authenticates every entry before `next`.
//! - A [`Seal`] is a signed head attached to the entry it ends; it is transport data, not
//!   part of the entry's hash. Stored logs end with a sealed entry, and seals are at most
//!   [`MAX_SEAL_GAP`] entries apart, so any page can end on a seal.
//!
//! Never: interprets op bodies. Ops of unknown domains or kinds are carried untouched.

use std::sync::LazyLock;

use crate::codec::{DecodeError, DecodeProblem, Encode, Reader, put_varint};
use crate::error::RejectReason;
use crate::hlc::Hlc;
use crate::ids::{DeviceKey, PeerId, PublicKey, UserId, WorkspaceId};

const ENTRY_HASH_CONTEXT: &str = "shoal 2026-11 entry hash v2";
const CHAIN_SEED_CONTEXT: &str = "shoal 2026-11 chain seed v1";
const CHAIN_LINK_CONTEXT: &str = "shoal 2026-11 chain link v1";
const HEAD_SIGNATURE_PREFIX: &[u8] = b"shoal 2026-11 signed head v1\0";

// Deriving a key from a context string costs a hash of its own; every entry needs two
// keyed hashers, so the derived states are built once and cloned.
static ENTRY_HASHER: LazyLock<blake3::Hasher> =
    LazyLock::new(|| blake3::Hasher::new_derive_key(ENTRY_HASH_CONTEXT));
static CHAIN_LINK_HASHER: LazyLock<blake3::Hasher> =
    LazyLock::new(|| blake3::Hasher::new_derive_key(CHAIN_LINK_CONTEXT));

/// The most ops one entry may hold.
pub const MAX_OPS_PER_ENTRY: u64 = 1 << 20;
/// The largest op body, in bytes.
pub const MAX_OP_BYTES: u64 = 16 << 20;
/// Pages of entries (`read_since`) are cut once they hold this many bytes of payload (at the
/// next seal), so memory per page stays bounded whatever the size of the entries.
pub const PAGE_BYTES: usize = 1 << 20;

/// The most entries a log may hold between two seals. Writers seal at least this often, and
/// receivers refuse longer unsealed runs, so a reader's page can always end on a seal.
pub const MAX_SEAL_GAP: u64 = 1024;

/// Which domain an op belongs to. Domains are numbered so that an op written by a newer
/// version can be carried by an older one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Domain(pub u32);

impl Domain {
    /// Membership and workspace control (genesis, admissions, removals, expungements).
    pub const CONTROL: Domain = Domain(0);
    /// Table schema and rows (`shoal-tables`).
    pub const TABLES: Domain = Domain(1);
    /// Rich-text documents (`shoal-docs`).
    pub const DOCS: Domain = Domain(2);
}

/// One operation: a domain, a kind within the domain, and the domain's bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Op {
    /// The domain that interprets `body`.
    pub domain: Domain,
    /// The operation kind within the domain.
    pub kind: u32,
    /// The domain-defined encoding of the operation.
    pub body: Vec<u8>,
}

/// The content of a live entry: its timestamp, author and ops. Op `i` is stamped `hlc + i`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Payload {
    /// The entry's timestamp (that of its first op).
    pub hlc: Hlc,
    /// The person who wrote it, when the app says so.
    pub author: Option<UserId>,
    /// The operations, in order.
    pub ops: Vec<Op>,
}

/// The two kinds of entries (DESIGN §8): control entries (membership; always plaintext,
/// checkable by relays) and data entries (tables and documents; ciphertext when the
/// workspace is encrypted). An entry never mixes the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryClass {
    /// Only ops of [`Domain::CONTROL`], at least one.
    Control,
    /// No op of [`Domain::CONTROL`].
    Data,
}

impl EntryClass {
    /// The class of an entry holding `ops`, or an error if they mix control and data.
    pub fn of_ops(ops: &[Op]) -> Result<EntryClass, MixedClasses> {
        let control = ops.iter().filter(|o| o.domain == Domain::CONTROL).count();
        match control {
            0 => Ok(EntryClass::Data),
            n if n == ops.len() => Ok(EntryClass::Control),
            _ => Err(MixedClasses),
        }
    }
}

/// The first byte of an entry's stored form: its class and whether it is encrypted.
mod stored_tag {
    pub const CONTROL: u8 = 0;
    pub const DATA: u8 = 1;
    pub const DATA_ENCRYPTED: u8 = 3;
}

/// The stored tag of an encrypted data entry (bound into its associated data).
pub(crate) const DATA_ENCRYPTED_TAG: u8 = stored_tag::DATA_ENCRYPTED;

impl Payload {
    /// The timestamp of the last op (the entry's own timestamp when it has no ops).
    pub fn last_hlc(&self) -> Hlc {
        self.hlc.plus((self.ops.len() as u64).saturating_sub(1))
    }

    /// The entry's class, or an error if it mixes control and data ops (which no writer may
    /// produce: the format cannot express it).
    pub fn class(&self) -> Result<EntryClass, MixedClasses> {
        EntryClass::of_ops(&self.ops)
    }

    fn stored_tag(&self) -> u8 {
        match self.class() {
            Ok(EntryClass::Control) => stored_tag::CONTROL,
            // A mixed payload is refused by every writer before it is encoded; encoded anyway
            // it would not decode (a data entry may hold no control op).
            Ok(EntryClass::Data) | Err(MixedClasses) => stored_tag::DATA,
        }
    }

    /// Decodes a live payload from its stored bytes (the form [`Encode`] writes).
    pub fn decode(bytes: &[u8]) -> Result<Payload, DecodeError> {
        match EntryBody::decode_stored(bytes)? {
            EntryBody::Live(p) => Ok(p),
            _ => Err(DecodeError {
                offset: 0,
                what: DecodeProblem::Invalid(
                    "an encrypted entry where a plaintext one was expected",
                ),
            }),
        }
    }

    /// Reads what follows the timestamp of a plaintext entry of the given stored tag (author
    /// and ops), for formats that store the timestamp their own way (segments store deltas).
    fn read_contents(r: &mut Reader<'_>, tag: u8, hlc: Hlc) -> Result<Payload, DecodeError> {
        let author = match r.u8("author flag")? {
            0 => None,
            1 => Some(UserId::from_bytes(r.array("author")?)),
            other => {
                return Err(r.error(DecodeProblem::InvalidTag {
                    what: "author flag",
                    value: other.into(),
                }));
            }
        };
        let count = r.bounded_varint("op count", MAX_OPS_PER_ENTRY)?;
        // Each op takes at least three bytes, so the count cannot make us allocate more than
        // the input could fill.
        let mut ops = Vec::with_capacity(count.min(r.remaining() / 3));
        for _ in 0..count {
            let at = r.offset();
            let domain = Domain(read_u32_varint(r, "op domain")?);
            if (domain == Domain::CONTROL) != (tag == stored_tag::CONTROL) {
                return Err(DecodeError {
                    offset: at,
                    what: DecodeProblem::Invalid(
                        "an entry mixes control and data ops (its class says otherwise)",
                    ),
                });
            }
            let kind = read_u32_varint(r, "op kind")?;
            let body = r.bytes("op body", MAX_OP_BYTES)?.to_vec();
            ops.push(Op { domain, kind, body });
        }
        if tag == stored_tag::CONTROL && ops.is_empty() {
            return Err(r.error(DecodeProblem::Invalid("a control entry without ops")));
        }
        Ok(Payload { hlc, author, ops })
    }

    /// The plaintext of an encrypted data entry: author and ops (`docs/FORMAT.md` §3.6).
    pub(crate) fn encode_data_contents(&self, out: &mut Vec<u8>) {
        self.encode_contents(out);
    }

    /// Decodes the plaintext of an encrypted data entry stamped `hlc`, rejecting control
    /// ops and trailing bytes.
    pub(crate) fn decode_data_contents(bytes: &[u8], hlc: Hlc) -> Result<Payload, DecodeError> {
        let mut r = Reader::new(bytes);
        let payload = Payload::read_contents(&mut r, stored_tag::DATA, hlc)?;
        r.finish()?;
        Ok(payload)
    }

    /// Writes what follows the timestamp of a plaintext entry (author and ops); the inverse
    /// of `read_contents`.
    fn encode_contents(&self, out: &mut Vec<u8>) {
        match &self.author {
            None => out.push(0),
            Some(a) => {
                out.push(1);
                out.extend_from_slice(a.as_bytes());
            }
        }
        put_varint(out, self.ops.len() as u64);
        for op in &self.ops {
            put_varint(out, op.domain.0.into());
            put_varint(out, op.kind.into());
            put_varint(out, op.body.len() as u64);
            out.extend_from_slice(&op.body);
        }
    }
}

impl Encode for Payload {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.stored_tag());
        out.extend_from_slice(&self.hlc.as_u64().to_le_bytes());
        self.encode_contents(out);
    }
}

/// A payload that mixes control and data ops: no entry can hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an entry cannot mix control ops with table or document ops")]
pub struct MixedClasses;

fn read_u32_varint(r: &mut Reader<'_>, what: &'static str) -> Result<u32, DecodeError> {
    let v = r.bounded_varint(what, u32::MAX.into())?;
    // bounded_varint checked the limit, so this conversion cannot fail.
    Ok(v as u32)
}

/// The largest ciphertext of one encrypted entry, in bytes.
pub const MAX_CIPHERTEXT_BYTES: u64 = 256 << 20;

/// A data entry as stored in an encrypted workspace: its timestamp and op count stay
/// readable (receivers check clock skew and advance their clocks without keys); author and
/// ops are ciphertext. Sealed and opened by [`crate::encryption::Keyring`] (`docs/FORMAT.md`
/// §3.6); relays and devices without keys carry such entries and verify their chains.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EncryptedPayload {
    /// The entry's timestamp (that of its first op).
    pub hlc: Hlc,
    /// How many ops the ciphertext holds (op `i` is stamped `hlc + i`).
    pub op_count: u64,
    /// The workspace key epoch it was encrypted under.
    pub epoch: u32,
    /// The random XChaCha20-Poly1305 nonce.
    pub nonce: [u8; 24],
    /// Author and ops, encrypted, with the authentication tag.
    pub ciphertext: Vec<u8>,
}

impl EncryptedPayload {
    /// The timestamp of the last op.
    pub fn last_hlc(&self) -> Hlc {
        self.hlc.plus(self.op_count.saturating_sub(1))
    }

    fn read_contents(r: &mut Reader<'_>, hlc: Hlc) -> Result<Self, DecodeError> {
        let op_count = r.bounded_varint("op count", MAX_OPS_PER_ENTRY)?;
        let epoch = read_u32_varint(r, "key epoch")?;
        let nonce = r.array("nonce")?;
        let ciphertext = r.bytes("ciphertext", MAX_CIPHERTEXT_BYTES)?.to_vec();
        Ok(EncryptedPayload { hlc, op_count: op_count as u64, epoch, nonce, ciphertext })
    }

    fn encode_contents(&self, out: &mut Vec<u8>) {
        put_varint(out, self.op_count);
        put_varint(out, self.epoch.into());
        out.extend_from_slice(&self.nonce);
        put_varint(out, self.ciphertext.len() as u64);
        out.extend_from_slice(&self.ciphertext);
    }
}

/// What an entry holds: its payload (plaintext or encrypted), or after expungement only the
/// hash of what it held.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EntryBody {
    /// A plaintext entry as written.
    Live(Payload),
    /// A data entry of an encrypted workspace, as written.
    Encrypted(EncryptedPayload),
    /// The body was removed (legal expungement); the hash keeps the chain verifiable.
    Expunged(EntryHash),
}

impl EntryBody {
    /// The stored tag (class and encryption) of a non-expunged body.
    pub fn stored_tag(&self) -> Option<u8> {
        match self {
            EntryBody::Live(p) => Some(p.stored_tag()),
            EntryBody::Encrypted(_) => Some(stored_tag::DATA_ENCRYPTED),
            EntryBody::Expunged(_) => None,
        }
    }

    /// The entry's timestamp, unless expunged.
    pub fn hlc(&self) -> Option<Hlc> {
        match self {
            EntryBody::Live(p) => Some(p.hlc),
            EntryBody::Encrypted(c) => Some(c.hlc),
            EntryBody::Expunged(_) => None,
        }
    }

    /// The timestamp of the entry's last op, unless expunged.
    pub fn last_hlc(&self) -> Option<Hlc> {
        match self {
            EntryBody::Live(p) => Some(p.last_hlc()),
            EntryBody::Encrypted(c) => Some(c.last_hlc()),
            EntryBody::Expunged(_) => None,
        }
    }

    /// The entry's class, unless expunged (an encrypted entry is always data).
    pub fn class(&self) -> Option<EntryClass> {
        match self {
            EntryBody::Live(p) => p.class().ok(),
            EntryBody::Encrypted(_) => Some(EntryClass::Data),
            EntryBody::Expunged(_) => None,
        }
    }

    /// Appends the stored form of a non-expunged body (`docs/FORMAT.md` §3.1): the bytes the
    /// entry hash covers. An expunged body appends its kept hash.
    pub fn encode_stored(&self, out: &mut Vec<u8>) {
        match self {
            EntryBody::Live(p) => p.encode(out),
            EntryBody::Encrypted(c) => {
                out.push(stored_tag::DATA_ENCRYPTED);
                out.extend_from_slice(&c.hlc.as_u64().to_le_bytes());
                c.encode_contents(out);
            }
            EntryBody::Expunged(h) => out.extend_from_slice(&h.0),
        }
    }

    /// Decodes a non-expunged body from its stored form, rejecting trailing bytes.
    pub fn decode_stored(bytes: &[u8]) -> Result<EntryBody, DecodeError> {
        let mut r = Reader::new(bytes);
        let body = Self::read_stored(&mut r)?;
        r.finish()?;
        Ok(body)
    }

    fn read_stored(r: &mut Reader<'_>) -> Result<EntryBody, DecodeError> {
        let tag = r.u8("entry class")?;
        let hlc = Hlc::from_u64(r.u64_le("entry hlc")?);
        Self::read_after_hlc(r, tag, hlc)
    }

    /// Reads the rest of a stored body after its tag and timestamp (segments store the
    /// timestamp as a delta); the inverse of [`EntryBody::encode_after_hlc`].
    pub fn read_after_hlc(r: &mut Reader<'_>, tag: u8, hlc: Hlc) -> Result<EntryBody, DecodeError> {
        match tag {
            stored_tag::CONTROL | stored_tag::DATA => {
                Ok(EntryBody::Live(Payload::read_contents(r, tag, hlc)?))
            }
            stored_tag::DATA_ENCRYPTED => {
                Ok(EntryBody::Encrypted(EncryptedPayload::read_contents(r, hlc)?))
            }
            other => {
                Err(r.error(DecodeProblem::InvalidTag { what: "entry class", value: other.into() }))
            }
        }
    }

    /// Writes the rest of a stored body after its tag and timestamp. Nothing for an
    /// expunged body.
    pub fn encode_after_hlc(&self, out: &mut Vec<u8>) {
        match self {
            EntryBody::Live(p) => p.encode_contents(out),
            EntryBody::Encrypted(c) => c.encode_contents(out),
            EntryBody::Expunged(_) => {}
        }
    }
}

/// One position `(origin, index)` of an origin's log, as stored and as it travels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    /// The peer whose log this is.
    pub origin: PeerId,
    /// Dense position in that log, from 0.
    pub index: u64,
    /// The payload or the expunge marker.
    pub body: EntryBody,
    /// The signed head that ends at this entry, when one does. Not part of the hash.
    pub seal: Option<Seal>,
}

impl Entry {
    /// The entry's hash: blake3 over `origin || varint(index) || stored body`, or the hash
    /// kept by the expunge marker. It covers the body as stored (ciphertext when encrypted),
    /// so anyone can verify a chain without keys.
    pub fn hash(&self) -> EntryHash {
        match &self.body {
            EntryBody::Live(p) => EntryHash::of_payload(&self.origin, self.index, p),
            EntryBody::Encrypted(_) => {
                let mut bytes = Vec::with_capacity(64);
                self.body.encode_stored(&mut bytes);
                EntryHash::of_stored(&self.origin, self.index, &bytes)
            }
            EntryBody::Expunged(h) => *h,
        }
    }

    /// The payload, unless expunged or encrypted.
    pub fn payload(&self) -> Option<&Payload> {
        match &self.body {
            EntryBody::Live(p) => Some(p),
            EntryBody::Encrypted(_) | EntryBody::Expunged(_) => None,
        }
    }

    /// About how many bytes the entry holds in memory and on the wire (for page budgets).
    pub fn approx_size(&self) -> usize {
        match &self.body {
            EntryBody::Live(p) => 48 + p.ops.iter().map(|o| o.body.len() + 16).sum::<usize>(),
            EntryBody::Encrypted(c) => 80 + c.ciphertext.len(),
            EntryBody::Expunged(_) => 64,
        }
    }

    /// The same entry with its body replaced by the expunge marker.
    pub fn expunged(&self) -> Entry {
        Entry {
            origin: self.origin,
            index: self.index,
            body: EntryBody::Expunged(self.hash()),
            seal: self.seal,
        }
    }

    /// Decodes one entry from its wire form, rejecting trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Entry, DecodeError> {
        let mut r = Reader::new(bytes);
        let e = Entry::read(&mut r)?;
        r.finish()?;
        Ok(e)
    }

    /// Reads one entry in wire form from `r` (`docs/FORMAT.md` §3).
    pub fn read(r: &mut Reader<'_>) -> Result<Entry, DecodeError> {
        let flags = r.u8("entry flags")?;
        if flags & !0b11 != 0 {
            return Err(
                r.error(DecodeProblem::InvalidTag { what: "entry flags", value: flags.into() })
            );
        }
        let origin = PeerId::from_bytes(r.array("origin")?);
        let index = r.varint("index")?;
        let body = if flags & 0b01 != 0 {
            EntryBody::Expunged(EntryHash(r.array("expunged hash")?))
        } else {
            EntryBody::read_stored(r)?
        };
        let seal = if flags & 0b10 != 0 {
            let at = r.offset();
            let key = PublicKey::from_bytes(&r.array("seal key")?).map_err(|_| DecodeError {
                offset: at,
                what: DecodeProblem::Invalid("seal key is not an Ed25519 public key"),
            })?;
            Some(Seal { key, signature: r.array("seal signature")? })
        } else {
            None
        };
        Ok(Entry { origin, index, body, seal })
    }
}

impl Encode for Entry {
    fn encode(&self, out: &mut Vec<u8>) {
        let expunged = matches!(self.body, EntryBody::Expunged(_));
        out.push(u8::from(expunged) | (u8::from(self.seal.is_some()) << 1));
        out.extend_from_slice(self.origin.as_bytes());
        put_varint(out, self.index);
        self.body.encode_stored(out);
        if let Some(seal) = &self.seal {
            out.extend_from_slice(seal.key.as_bytes());
            out.extend_from_slice(&seal.signature);
        }
    }
}

/// blake3 hash of an entry's canonical bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryHash(pub [u8; 32]);

impl EntryHash {
    /// Hashes the canonical bytes of a live entry.
    pub fn of_payload(origin: &PeerId, index: u64, payload: &Payload) -> EntryHash {
        let mut bytes = Vec::with_capacity(64);
        payload.encode(&mut bytes);
        Self::of_stored(origin, index, &bytes)
    }

    /// Hashes an entry whose body is already in its stored form (as a replica stores it).
    pub fn of_stored(origin: &PeerId, index: u64, payload: &[u8]) -> EntryHash {
        let mut h = ENTRY_HASHER.clone();
        h.update(origin.as_bytes());
        let mut idx = Vec::with_capacity(10);
        put_varint(&mut idx, index);
        h.update(&idx);
        h.update(payload);
        EntryHash(*h.finalize().as_bytes())
    }
}

impl std::fmt::Debug for EntryHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EntryHash({})", hex::encode(&self.0[..6]))
    }
}

/// The hash chain of one origin's log up to some position.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChainHash(pub [u8; 32]);

impl ChainHash {
    /// The chain before entry 0 of `origin` in `workspace`. Binding the seed to both makes a
    /// log transplanted into another workspace or origin fail verification.
    pub fn seed(workspace: &WorkspaceId, origin: &PeerId) -> ChainHash {
        let mut h = blake3::Hasher::new_derive_key(CHAIN_SEED_CONTEXT);
        h.update(workspace.as_bytes());
        h.update(origin.as_bytes());
        ChainHash(*h.finalize().as_bytes())
    }

    /// The chain after appending the entry with hash `entry`.
    pub fn link(&self, entry: &EntryHash) -> ChainHash {
        let mut h = CHAIN_LINK_HASHER.clone();
        h.update(&self.0);
        h.update(&entry.0);
        ChainHash(*h.finalize().as_bytes())
    }
}

impl std::fmt::Debug for ChainHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChainHash({})", hex::encode(&self.0[..6]))
    }
}

/// An origin's key and its signature over a head; attached to the entry that ends the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Seal {
    /// The origin's public key; the origin id must derive from it.
    pub key: PublicKey,
    /// Ed25519 signature over the head's message ([`SignedHead::message`]).
    pub signature: [u8; 64],
}

/// `(workspace, origin, next, chain)` signed by the origin: authenticates entries `0..next`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedHead {
    /// The workspace the log belongs to.
    pub workspace: WorkspaceId,
    /// The origin whose log this is.
    pub origin: PeerId,
    /// The number of entries covered (the index after the last one).
    pub next: u64,
    /// The chain hash after entry `next - 1`.
    pub chain: ChainHash,
    /// The key and signature.
    pub seal: Seal,
}

impl SignedHead {
    /// The bytes that are signed.
    pub fn message(
        workspace: &WorkspaceId,
        origin: &PeerId,
        next: u64,
        chain: &ChainHash,
    ) -> Vec<u8> {
        let mut m = Vec::with_capacity(HEAD_SIGNATURE_PREFIX.len() + 72);
        m.extend_from_slice(HEAD_SIGNATURE_PREFIX);
        m.extend_from_slice(workspace.as_bytes());
        m.extend_from_slice(origin.as_bytes());
        m.extend_from_slice(&next.to_le_bytes());
        m.extend_from_slice(&chain.0);
        m
    }

    /// Signs a head with the origin's own key. The origin is derived from the key, so a
    /// device can only ever sign its own log.
    pub fn sign(
        key: &DeviceKey,
        workspace: WorkspaceId,
        next: u64,
        chain: ChainHash,
    ) -> SignedHead {
        let origin = key.peer_id(&workspace);
        let signature = key.sign(&Self::message(&workspace, &origin, next, &chain));
        SignedHead {
            workspace,
            origin,
            next,
            chain,
            seal: Seal { key: key.public_key(), signature },
        }
    }

    /// Checks that the key belongs to the origin and the signature is valid.
    pub fn verify(&self) -> Result<(), RejectReason> {
        check_seal(&self.workspace, &self.origin, self.next, &self.chain, &self.seal)
    }
}

pub(crate) fn check_seal(
    workspace: &WorkspaceId,
    origin: &PeerId,
    next: u64,
    chain: &ChainHash,
    seal: &Seal,
) -> Result<(), RejectReason> {
    if PeerId::derive(workspace, &seal.key) != *origin {
        return Err(RejectReason::KeyNotOfOrigin);
    }
    if !seal.key.verify(&SignedHead::message(workspace, origin, next, chain), &seal.signature) {
        return Err(RejectReason::BadSignature);
    }
    Ok(())
}

/// Turns a device's new payloads into entries of its own log: numbers them, extends the
/// chain and seals them (at least every [`MAX_SEAL_GAP`] entries and always the last of a
/// batch). Holding the [`DeviceKey`] is what makes the log one's own.
#[derive(Debug, Clone)]
pub struct OwnLog {
    key: DeviceKey,
    workspace: WorkspaceId,
    origin: PeerId,
    position: ChainPosition,
}

impl OwnLog {
    /// Continues the log of `key` in `workspace` from `position`.
    pub fn resume(key: DeviceKey, workspace: WorkspaceId, position: ChainPosition) -> Self {
        let origin = key.peer_id(&workspace);
        OwnLog { key, workspace, origin, position }
    }

    /// The origin (derived from the key).
    pub fn origin(&self) -> PeerId {
        self.origin
    }

    /// The position after the last appended entry.
    pub fn position(&self) -> ChainPosition {
        self.position
    }

    /// Appends a batch of payloads, returning the new entries, the last one sealed. Each
    /// entry comes with its encoded payload so a store need not encode it again.
    pub fn append(&mut self, payloads: Vec<Payload>) -> Vec<(Entry, Vec<u8>)> {
        self.append_with(payloads, true)
    }

    /// Appends a batch of payloads like [`OwnLog::append`], but seals only the entries that
    /// end a [`MAX_SEAL_GAP`] block: for a store that seals its tip when it hands its log out
    /// ([`OwnLog::head`] or [`SignedHead::sign`]), so a commit costs no signature.
    pub fn append_unsealed(&mut self, payloads: Vec<Payload>) -> Vec<(Entry, Vec<u8>)> {
        self.append_with(payloads, false)
    }

    /// The signed head of everything appended so far.
    pub fn head(&self) -> SignedHead {
        SignedHead::sign(&self.key, self.workspace, self.position.next, self.position.chain)
    }

    /// [`OwnLog::append_unsealed`] in an encrypted workspace: data payloads are sealed with
    /// `keys` (the newest epoch held; [`crate::encryption`]), control payloads stay
    /// plaintext. Fails, appending nothing, if a data payload cannot be sealed.
    pub fn append_unsealed_encrypted(
        &mut self,
        payloads: Vec<Payload>,
        keys: &crate::encryption::Keyring,
    ) -> Result<Vec<(Entry, Vec<u8>)>, crate::encryption::EncryptionError> {
        let start = self.position;
        let mut out = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let body = if payload.class() == Ok(EntryClass::Data) {
                match keys.seal(&self.origin, self.position.next, &self.position.chain, &payload) {
                    Ok(sealed) => EntryBody::Encrypted(sealed),
                    Err(e) => {
                        self.position = start;
                        return Err(e);
                    }
                }
            } else {
                EntryBody::Live(payload)
            };
            out.push(self.push(body, false));
        }
        Ok(out)
    }

    fn append_with(&mut self, payloads: Vec<Payload>, seal_last: bool) -> Vec<(Entry, Vec<u8>)> {
        let count = payloads.len();
        let mut out = Vec::with_capacity(count);
        for (i, payload) in payloads.into_iter().enumerate() {
            out.push(self.push(EntryBody::Live(payload), seal_last && i + 1 == count));
        }
        out
    }

    /// Appends one entry with a body built elsewhere (already encrypted, say), sealed: for
    /// tools and tests that build entries by hand. Its bytes are the body's stored form.
    pub fn append_body(&mut self, body: EntryBody) -> (Entry, Vec<u8>) {
        self.push(body, true)
    }

    /// Appends one entry (sealing it if `seal` or at a [`MAX_SEAL_GAP`] boundary).
    fn push(&mut self, body: EntryBody, seal: bool) -> (Entry, Vec<u8>) {
        let index = self.position.next;
        let mut bytes = Vec::with_capacity(64);
        body.encode_stored(&mut bytes);
        let hash = EntryHash::of_stored(&self.origin, index, &bytes);
        self.position = ChainPosition { next: index + 1, chain: self.position.chain.link(&hash) };
        let seal = (seal || self.position.next.is_multiple_of(MAX_SEAL_GAP)).then(|| {
            SignedHead::sign(&self.key, self.workspace, self.position.next, self.position.chain)
                .seal
        });
        (Entry { origin: self.origin, index, body, seal }, bytes)
    }
}

/// Where a receiver stands in one origin's log: the next index it expects and the chain
/// hash before that index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainPosition {
    /// The next index expected (the cursor).
    pub next: u64,
    /// The chain hash after entry `next - 1` (the seed when `next == 0`).
    pub chain: ChainHash,
}

impl ChainPosition {
    /// The position of a receiver that has nothing of `origin` yet.
    pub fn start(workspace: &WorkspaceId, origin: &PeerId) -> Self {
        ChainPosition { next: 0, chain: ChainHash::seed(workspace, origin) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_op(domains: std::ops::Range<u32>) -> impl Strategy<Value = Op> {
        (domains, any::<u32>(), proptest::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(d, kind, body)| Op { domain: Domain(d), kind, body })
    }

    fn arb_ops() -> impl Strategy<Value = Vec<Op>> {
        // An entry is control (at least one op, all control) or data (no control op).
        prop_oneof![
            proptest::collection::vec(arb_op(0..1), 1..4),
            proptest::collection::vec(arb_op(1..5), 0..6),
        ]
    }

    fn arb_entry() -> impl Strategy<Value = Entry> {
        let live = (any::<u64>(), proptest::option::of(any::<[u8; 16]>()), arb_ops()).prop_map(
            |(hlc, author, ops)| {
                EntryBody::Live(Payload {
                    hlc: Hlc::from_u64(hlc),
                    author: author.map(UserId::from_bytes),
                    ops,
                })
            },
        );
        let encrypted = (
            any::<u64>(),
            0..MAX_OPS_PER_ENTRY,
            any::<u32>(),
            any::<[u8; 24]>(),
            proptest::collection::vec(any::<u8>(), 0..60),
        )
            .prop_map(|(hlc, op_count, epoch, nonce, ciphertext)| {
                EntryBody::Encrypted(EncryptedPayload {
                    hlc: Hlc::from_u64(hlc),
                    op_count,
                    epoch,
                    nonce,
                    ciphertext,
                })
            });
        let expunged = any::<[u8; 32]>().prop_map(|h| EntryBody::Expunged(EntryHash(h)));
        let seal =
            proptest::option::of((1u8..=255, any::<[u8; 64]>()).prop_map(|(k, signature)| Seal {
                key: DeviceKey::from_secret_bytes(&[k; 32]).public_key(),
                signature,
            }));
        (
            any::<[u8; 16]>(),
            any::<u64>(),
            prop_oneof![3 => live, 1 => encrypted, 1 => expunged],
            seal,
        )
            .prop_map(|(origin, index, body, seal)| Entry {
                origin: PeerId::from_bytes(origin),
                index,
                body,
                seal,
            })
    }

    proptest! {
        #[test]
        fn entry_wire_form_round_trips(e in arb_entry()) {
            let bytes = e.to_bytes();
            prop_assert_eq!(Entry::decode(&bytes).unwrap(), e);
        }

        #[test]
        fn truncated_entries_are_errors_not_panics(e in arb_entry(), cut in any::<prop::sample::Index>()) {
            let bytes = e.to_bytes();
            let cut = cut.index(bytes.len());
            prop_assert!(Entry::decode(&bytes[..cut]).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(e) = Entry::decode(&bytes) {
                // Whatever decodes must re-encode to the same bytes: one form per value.
                prop_assert_eq!(e.to_bytes(), bytes);
            }
        }

        #[test]
        fn expunging_keeps_the_hash(e in arb_entry()) {
            prop_assert_eq!(e.expunged().hash(), e.hash());
        }

        #[test]
        fn the_class_is_part_of_the_hash(e in arb_entry()) {
            // Flipping the stored class byte (control <-> data) must change the hash or fail
            // to decode: nobody can relabel an entry's kind.
            let mut stored = Vec::new();
            e.body.encode_stored(&mut stored);
            if let (Some(_), false) = (e.body.stored_tag(), stored.is_empty()) {
                stored[0] ^= 1;
                if let Ok(other) = EntryBody::decode_stored(&stored) {
                    let relabelled = Entry { body: other, ..e.clone() };
                    prop_assert_ne!(relabelled.hash(), e.hash());
                }
            }
        }
    }

    #[test]
    fn mixed_entries_are_refused() {
        let p = Payload {
            hlc: Hlc::from_millis(1),
            author: None,
            ops: vec![
                Op { domain: Domain::CONTROL, kind: 1, body: vec![] },
                Op { domain: Domain::TABLES, kind: 1, body: vec![] },
            ],
        };
        assert_eq!(p.class(), Err(MixedClasses));
        assert!(Payload::decode(&p.to_bytes()).is_err(), "the format cannot express it");
    }
}
