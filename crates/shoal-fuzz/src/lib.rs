//! Fuzz target bodies for every Shoal decoder: one `pub fn <target>(data: &[u8])` per
//! decoder, called by the cargo-fuzz harness in `fuzz/` (one line per target) and by the
//! smoke test in `tests/smoke.rs`, so the fuzzer and the test suite run the same code.
//! How to run the fuzzer: `docs/FUZZING.md`.
//!
//! Owns: the targets listed in [`TARGETS`], and the seed inputs ([`seeds`]) that the
//! corpora in `fuzz/corpus/<target>/` were grown from.
//!
//! Invariants: each target feeds its input to one decoder and checks what a decoder must
//! guarantee on any input (`DESIGN` §10, `docs/FORMAT.md` §1):
//! - it returns an error instead of panicking (a panic is the failure the fuzzer reports);
//! - every format here is canonical (one byte form per value), so an accepted input
//!   re-encodes to exactly the input bytes. The one exception is a zstd segment body (the
//!   compressed frame is not canonical): there the decoded segment must survive a round
//!   trip through the raw form instead.
//!
//! Where a format is guarded by a signature or checksum the fuzzer cannot forge (segments,
//! fork evidence), the target decodes the input as given, and then a second time after
//! fixing it up — re-signed with a fixed test key, checksum recomputed — so mutations reach
//! the body decoder instead of stopping at the signature check.
//!
//! Where a format is sealed with a key (an encrypted entry's ciphertext, a key wrap), random
//! input never authenticates: `encrypted_entry` seals the input itself with a fixed key (its
//! own reading of the cipher, checked against `Keyring::seal` by a unit test) so that the
//! decoder behind the decryption is reached too.
//!
//! Never: part of the product (`publish = false`, nothing depends on it), touches the file
//! system, or uses randomness: a target's behaviour depends on its input alone, so every
//! crash replays.

pub mod seeds;

use chacha20poly1305::aead::{Aead, KeyInit, Payload as AeadPayload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use shoal_core::codec::{Encode, Reader};
use shoal_core::control::ControlOp;
use shoal_core::encryption::{EpochKey, Keyring, OpenError, put_invite_keys, read_invite_keys};
use shoal_core::{
    ChainHash, DeviceKey, Domain, EncryptedPayload, Entry, EntryBody, Hlc, Op, Payload, PeerId,
    SignedHead, WorkspaceId,
};
use shoal_filelog::fork::{EVIDENCE_LEN, ForkEvidence};
use shoal_filelog::layout::{SegmentName, parse_id_dir};
use shoal_filelog::segment::{
    Compression, Expected, FLAG_ZSTD, FORMAT_VERSION, HEADER_LEN, MAGIC, Segment, TRAILER_LEN,
    checksum,
};
use shoal_relay::auth::auth_message;
use shoal_relay::frame::{Access, Frame, PROTOCOL_VERSION, RefuseCode, RelayId, Request, Response};
use shoal_relay::session::{Action, Limits, ServerSession};
use shoal_tables::{RowKey, TableOp, Value};

/// A fuzz target: feeds `data` to one decoder and panics if the decoder breaks a rule.
pub type Target = fn(&[u8]);

/// Every target by name (the name of its `fuzz/fuzz_targets/<name>.rs` and of its corpus
/// directory `fuzz/corpus/<name>/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("control_op", control_op),
    ("encrypted_entry", encrypted_entry),
    ("entry", entry),
    ("entry_body", entry_body),
    ("fork_evidence", fork_evidence),
    ("id_dir", id_dir),
    ("invite_code", invite_code),
    ("key_wrap", key_wrap),
    ("payload", payload),
    ("relay_frame", relay_frame),
    ("row_key", row_key),
    ("segment", segment),
    ("segment_name", segment_name),
    ("table_op", table_op),
    ("value", value),
];

/// `shoal_core::Payload::decode` (a plaintext entry's stored form): accepted input
/// re-encodes to itself.
pub fn payload(data: &[u8]) {
    if let Ok(p) = Payload::decode(data) {
        assert_eq!(p.to_bytes(), data, "payload does not re-encode to its input");
        let _ = p.class();
        let _ = p.last_hlc();
    }
}

/// `shoal_core::EntryBody::decode_stored` (plaintext or encrypted stored form): accepted
/// input re-encodes to itself.
pub fn entry_body(data: &[u8]) {
    if let Ok(body) = EntryBody::decode_stored(data) {
        let mut out = Vec::with_capacity(data.len());
        body.encode_stored(&mut out);
        assert_eq!(out, data, "entry body does not re-encode to its input");
        let _ = (body.class(), body.last_hlc(), body.stored_tag());
    }
}

/// `shoal_core::Entry::decode` (the wire form): accepted input re-encodes to itself, and
/// hashing the decoded entry does not panic.
pub fn entry(data: &[u8]) {
    if let Ok(e) = Entry::decode(data) {
        assert_eq!(e.to_bytes(), data, "entry does not re-encode to its input");
        let _ = e.hash();
        let _ = e.expunged().hash();
    }
}

/// `shoal_core::control::ControlOp::decode` on an op built from the input: byte 0 picks
/// the domain (control unless its high bit is set), byte 1 the kind, the rest is the body.
/// A decoded op re-encodes (`ControlOp::to_op`) to the same op.
pub fn control_op(data: &[u8]) {
    let (Some(&d), Some(&k)) = (data.first(), data.get(1)) else { return };
    let domain = if d & 0x80 != 0 { Domain(u32::from(d & 0x7f)) } else { Domain::CONTROL };
    let op = Op { domain, kind: u32::from(k), body: data[2..].to_vec() };
    if let Ok(c) = ControlOp::decode(&op) {
        assert_eq!(c.to_op(), op, "control op does not re-encode to its input");
        let _ = c.founds();
    }
}

/// `shoal_core::invite::InviteCode::parse` (the text form of an invite code): an accepted
/// code re-encodes to its input without the surrounding whitespace. The one exception is a
/// code of format 1 (no flags byte), which this version still reads and always writes in
/// format 2: its re-encoding is the same content with version 2 and flags 0, and parses
/// back to the same code.
pub fn invite_code(data: &[u8]) {
    use shoal_core::invite::InviteCode;
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(code) = InviteCode::parse(text) {
        let again = code.encode();
        if again != text.trim() {
            let content = |t: &str| {
                let body = t.trim().strip_prefix("shoal-invite:").expect("a parsed code");
                let mut b = data_encoding::BASE64URL_NOPAD
                    .decode(body.as_bytes())
                    .expect("a parsed code is base64url");
                b.truncate(b.len() - 4);
                b
            };
            let (old, new) = (content(text), content(&again));
            assert_eq!(old[0], 1, "invite code does not re-encode to its input");
            assert_eq!(new[..2], [2, 0], "a format 1 code is not rewritten in format 2");
            assert_eq!(old[1..], new[2..], "a format 1 code changed when rewritten");
        }
        assert!(InviteCode::parse(&again) == Ok(code), "invite code does not parse back");
    }
}

/// `shoal_core::encryption::read_invite_keys` (the keys an invite carries: count, then
/// epoch and 80-byte HPKE wrap per key, epochs strictly ascending) on a reader over the
/// input: accepted keys re-encode (`put_invite_keys`) to exactly the bytes read, whether or
/// not bytes follow (the invite op reads them from inside its body). Each decoded wrap is
/// then opened with `shoal_core::encryption::unwrap_key` for the [`vector_key`] in the
/// [`vector_workspace`]: it must not panic (the seeds hold real wraps for that key, which
/// open; a bent one does not).
pub fn key_wrap(data: &[u8]) {
    let mut r = Reader::new(data);
    let Ok(keys) = read_invite_keys(&mut r) else { return };
    let read = r.offset();
    let mut out = Vec::with_capacity(read);
    put_invite_keys(&mut out, &keys);
    assert_eq!(out, data[..read], "invite keys do not re-encode to the bytes read");
    assert_eq!(r.finish().is_ok(), read == data.len());
    assert!(keys.windows(2).all(|w| w[0].0 < w[1].0), "invite key epochs not ascending");
    let device = vector_key();
    let ws = vector_workspace();
    for (epoch, wrap) in &keys {
        let _ = shoal_core::encryption::unwrap_key(&ws, *epoch, wrap, &device);
    }
}

/// The fixed epoch-0 key of [`encrypted_entry`]'s keyring.
pub const FUZZ_EPOCH_KEY: [u8; 32] = [0x42; 32];
/// The index of [`encrypted_entry`]'s entries (the origin is the [`vector_key`]'s, the
/// workspace the [`vector_workspace`]).
pub const FUZZ_INDEX: u64 = 7;
/// The previous chain hash of [`encrypted_entry`]'s entries.
pub const FUZZ_PREV: ChainHash = ChainHash([5; 32]);
/// The timestamp of [`encrypted_entry`]'s entries.
fn fuzz_hlc() -> Hlc {
    Hlc::from_millis(1_700_000_000_000)
}

/// `shoal_core::encryption::Keyring::open` (XChaCha20-Poly1305 open of an encrypted data
/// entry, then the decoder of its plaintext: author and ops) with a fixed keyring (epoch 0,
/// key [`FUZZ_EPOCH_KEY`]). Byte 0 of the input is the op count the entry's header claims,
/// the rest the plaintext. Two paths:
/// - the input taken as a sealed entry as found (nonce: the first 24 bytes after byte 0,
///   zero-padded; ciphertext: the rest) must not open and must not panic;
/// - the plaintext sealed by [`seal_for_fuzzing`] with the fixed key, so it authenticates
///   and the plaintext decoder gets arbitrary bytes. It must not come back `NoKey` or
///   `Inauthentic` (that would be the harness disagreeing with the cipher); an opened
///   payload has the claimed op count and timestamp, is a data entry, and re-encodes to
///   exactly the plaintext (its stored form is tag, timestamp, then the same bytes).
pub fn encrypted_entry(data: &[u8]) {
    let Some((&count, plain)) = data.split_first() else { return };
    let ws = vector_workspace();
    let origin = vector_key().peer_id(&ws);
    let mut ring = Keyring::new(ws);
    ring.insert(0, EpochKey::from_bytes(FUZZ_EPOCH_KEY));

    let mut nonce = [0u8; 24];
    let n = plain.len().min(24);
    nonce[..n].copy_from_slice(&plain[..n]);
    let as_found = EncryptedPayload {
        hlc: fuzz_hlc(),
        op_count: count.into(),
        epoch: 0,
        nonce,
        ciphertext: plain[n..].to_vec(),
    };
    assert!(ring.open(&origin, FUZZ_INDEX, &FUZZ_PREV, &as_found).is_err());

    let sealed = seal_for_fuzzing(&ws, &origin, count.into(), plain);
    match ring.open(&origin, FUZZ_INDEX, &FUZZ_PREV, &sealed) {
        Ok(p) => {
            assert_eq!(p.ops.len(), usize::from(count), "opened op count differs from the header");
            assert_eq!(p.hlc, fuzz_hlc());
            let stored = p.to_bytes();
            assert_eq!(stored[0], 1, "an opened entry is not a data entry");
            assert_eq!(stored[9..], *plain, "opened payload does not re-encode to its plaintext");
            assert_eq!(Payload::decode(&stored).as_ref(), Ok(&p));
        }
        Err(OpenError::Malformed(_)) => {}
        Err(e) => panic!("the harness's sealing did not open: {e}"),
    }
}

/// Seals `plain` as the ciphertext of entry [`FUZZ_INDEX`] of `origin` after [`FUZZ_PREV`],
/// stamped [`fuzz_hlc`], under epoch 0's [`FUZZ_EPOCH_KEY`], with a fixed nonce. This is
/// the harness's own reading of the cipher (`shoal_core::encryption`'s module doc: the key
/// derived with BLAKE3 from epoch key and origin, the associated data binding workspace,
/// origin, index, stored class, epoch, previous chain hash, timestamp and op count), so that
/// arbitrary bytes can be made to authenticate; the unit test below checks it against
/// `Keyring::seal`.
pub fn seal_for_fuzzing(
    ws: &WorkspaceId,
    origin: &PeerId,
    op_count: u64,
    plain: &[u8],
) -> EncryptedPayload {
    seal_with_nonce(ws, origin, op_count, plain, [0x24; 24])
}

fn seal_with_nonce(
    ws: &WorkspaceId,
    origin: &PeerId,
    op_count: u64,
    plain: &[u8],
    nonce: [u8; 24],
) -> EncryptedPayload {
    let epoch = 0u32;
    let mut material = [0u8; 48];
    material[..32].copy_from_slice(&FUZZ_EPOCH_KEY);
    material[32..].copy_from_slice(origin.as_bytes());
    let key = blake3::derive_key("shoal 2026-11 data key v1", &material);
    let cipher = XChaCha20Poly1305::new(&key.into());
    let mut aad = b"shoal 2026-11 data aad v1\0".to_vec();
    aad.extend_from_slice(ws.as_bytes());
    aad.extend_from_slice(origin.as_bytes());
    aad.extend_from_slice(&FUZZ_INDEX.to_le_bytes());
    aad.push(3); // the stored class of an encrypted data entry
    aad.extend_from_slice(&epoch.to_le_bytes());
    aad.extend_from_slice(&FUZZ_PREV.0);
    aad.extend_from_slice(&fuzz_hlc().as_u64().to_le_bytes());
    aad.extend_from_slice(&op_count.to_le_bytes());
    let ciphertext = cipher
        .encrypt(&XNonce::from(nonce), AeadPayload { msg: plain, aad: &aad })
        .expect("XChaCha20-Poly1305 seals any input a fuzzer gives");
    EncryptedPayload { hlc: fuzz_hlc(), op_count, epoch, nonce, ciphertext }
}

/// `shoal_tables::TableOp::decode_body`: byte 0 is the kind, the rest the body. A decoded
/// op re-encodes to the same body and kind.
pub fn table_op(data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else { return };
    if let Ok(op) = TableOp::decode_body(u32::from(kind), body) {
        assert_eq!(op.kind(), u32::from(kind), "table op decoded to another kind");
        assert_eq!(op.to_bytes(), body, "table op does not re-encode to its input");
        let _ = op.validate();
    }
}

/// `shoal_tables::Value::decode`: accepted input re-encodes to itself.
pub fn value(data: &[u8]) {
    if let Ok(v) = Value::decode(data) {
        assert_eq!(v.to_bytes(), data, "value does not re-encode to its input");
        let _ = v.validate();
    }
}

/// `shoal_tables::RowKey::from_bytes`: an accepted key yields its values, and they encode
/// back to the key's bytes.
pub fn row_key(data: &[u8]) {
    if let Ok(k) = RowKey::from_bytes(data.to_vec()) {
        assert_eq!(k.as_bytes(), data);
        let values = k.values().expect("a key accepted by from_bytes has values");
        let mut out = Vec::with_capacity(data.len());
        for v in &values {
            v.encode(&mut out);
        }
        assert_eq!(out, data, "row key values do not re-encode to the key");
        let _ = format!("{k:?}");
    }
}

/// `shoal_filelog::layout::SegmentName::parse` on the input as UTF-8: a parsed name is
/// canonical, so it spells itself back.
pub fn segment_name(data: &[u8]) {
    let Ok(name) = std::str::from_utf8(data) else { return };
    if let Some(n) = SegmentName::parse(name) {
        assert_eq!(n.file_name(), name, "segment name is not canonical");
        assert!(n.first <= n.last);
        let _ = n.len();
    }
}

/// `shoal_filelog::layout::parse_id_dir` on the input as UTF-8: a parsed id spells itself
/// back in lowercase hex.
pub fn id_dir(data: &[u8]) {
    let Ok(name) = std::str::from_utf8(data) else { return };
    if let Some(id) = parse_id_dir(name) {
        assert_eq!(hex::encode(id), name, "id directory name is not canonical");
    }
}

/// The relay id the `relay_frame` target's sessions run under (that of the protocol's test
/// vectors, `docs/PROTOCOL.md` §7).
pub const FUZZ_RELAY: RelayId = RelayId([3; 32]);
/// The challenge of those sessions (the vectors' too, so the vector `Auth` frame is valid).
pub const FUZZ_CHALLENGE: [u8; 32] = [9; 32];

/// The `Auth` frame of [`vector_key`] for [`FUZZ_RELAY`] and [`FUZZ_CHALLENGE`].
pub fn relay_auth_frame() -> Frame {
    let (key, ws) = (vector_key(), vector_workspace());
    let peer = key.peer_id(&ws);
    let signature = key.sign(&auth_message(&FUZZ_RELAY, &FUZZ_CHALLENGE, &ws, &peer));
    Frame::Auth { version: PROTOCOL_VERSION, workspace: ws, key: key.public_key(), signature }
}

/// A relay session in which [`vector_key`]'s device is authenticated with `access`.
fn open_session(access: Access) -> ServerSession {
    static AUTH: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let auth = AUTH.get_or_init(|| relay_auth_frame().to_bytes());
    let (mut s, _) =
        ServerSession::new(FUZZ_RELAY, FUZZ_CHALLENGE, Limits::default(), "fuzz".into(), 0);
    let checking = s.on_bytes(auth, 1);
    assert!(matches!(checking[..], [Action::CheckAccess { .. }]), "{checking:?}");
    let welcome = s.on_access(Ok(access), shoal_core::PeerCursors::new());
    assert!(matches!(welcome[..], [Action::Send(Frame::Welcome { .. })]), "{welcome:?}");
    s
}

fn refused(out: &[Action], code: RefuseCode) -> bool {
    matches!(out, [Action::Send(Frame::Refused { code: c, .. }), Action::Close { code: d, .. }]
        if *c == code && *d == code)
}

/// `shoal_relay::frame::Frame::decode` (one protocol message, `docs/PROTOCOL.md` §2):
/// accepted input re-encodes to itself. Then the relay's session takes the input, as the
/// first message of a connection and (when it is a request) as a request of an
/// authenticated member and of an entrant; what it answers must follow the state machine of
/// `docs/PROTOCOL.md` §4 (a pong, an access check, a request served or denied, or a
/// refusal with the code the input calls for).
pub fn relay_frame(data: &[u8]) {
    let decoded = Frame::decode(data);
    if let Ok(f) = &decoded {
        assert_eq!(f.to_bytes(), data, "relay frame does not re-encode to its input");
        let _ = f.name();
    }
    let (mut s, _) =
        ServerSession::new(FUZZ_RELAY, FUZZ_CHALLENGE, Limits::default(), "fuzz".into(), 0);
    let out = s.on_bytes(data, 1);
    match &decoded {
        Err(_) => assert!(refused(&out, RefuseCode::Protocol), "{out:?}"),
        Ok(Frame::Ping(n)) => assert_eq!(out, vec![Action::Send(Frame::Pong(*n))]),
        Ok(Frame::Pong(_)) => assert!(out.is_empty(), "{out:?}"),
        Ok(Frame::Auth { version, .. }) if *version != PROTOCOL_VERSION => {
            assert!(refused(&out, RefuseCode::Version), "{out:?}");
        }
        Ok(Frame::Auth { .. }) => assert!(
            matches!(out[..], [Action::CheckAccess { .. }]) || refused(&out, RefuseCode::BadAuth),
            "{out:?}"
        ),
        Ok(_) => assert!(refused(&out, RefuseCode::Protocol), "{out:?}"),
    }
    let Ok(Frame::Request { id, request }) = decoded else { return };
    for access in [Access::Member, Access::Entrant] {
        let out = open_session(access).on_bytes(data, 2);
        // An entrant may push a log's first run (PROTOCOL.md §3), of any origin.
        let allowed = access == Access::Member
            || matches!(&request, Request::Push { entries, .. }
                if entries.len() <= shoal_relay::session::ENTRANT_RUN
                    && entries.iter().enumerate().all(|(i, e)| e.index == i as u64));
        if allowed {
            assert_eq!(out, vec![Action::Serve { id, request: request.clone() }]);
        } else {
            assert!(
                matches!(&out[..], [Action::Send(Frame::Response {
                    id: i,
                    response: Response::Error { code: RefuseCode::NotAMember, .. },
                })] if *i == id),
                "{out:?}"
            );
        }
    }
}

/// The fixed key the fixed-up inputs are signed with (the test vectors' key, secret bytes
/// `01` × 32, in the workspace derived from it with a zero salt: `docs/FORMAT.md` §3.3).
pub fn vector_key() -> DeviceKey {
    DeviceKey::from_secret_bytes(&[1; 32])
}

/// The test vectors' workspace (see [`vector_key`]).
pub fn vector_workspace() -> WorkspaceId {
    WorkspaceId::derive(&vector_key().public_key(), &[0; 16])
}

/// `shoal_filelog::fork::ForkEvidence::decode`, first on the input as given (read as if
/// found under the workspace and origin it names), then re-signed by [`vector_key`] so the
/// rest of the format is reached. Accepted evidence re-encodes to the decoded bytes.
pub fn fork_evidence(data: &[u8]) {
    if let Some(ws_origin) = data.get(9..41) {
        let ws = WorkspaceId::from_bytes(copy16(&ws_origin[..16]));
        let origin = PeerId::from_bytes(copy16(&ws_origin[16..]));
        if let Ok(ev) = ForkEvidence::decode(data, &ws, &origin) {
            assert_eq!(ev.encode(), data, "fork evidence does not re-encode to its input");
        }
    }
    if data.len() != EVIDENCE_LEN {
        return;
    }
    let key = vector_key();
    let ws = vector_workspace();
    let origin = key.peer_id(&ws);
    let mut fixed = data.to_vec();
    fixed[9..25].copy_from_slice(ws.as_bytes());
    fixed[25..41].copy_from_slice(origin.as_bytes());
    fixed[41..73].copy_from_slice(key.public_key().as_bytes());
    let next = u64::from_le_bytes(copy8(&fixed[73..81]));
    for at in [81, 81 + 96] {
        let chain = ChainHash(copy32(&fixed[at..at + 32]));
        let head = SignedHead::sign(&key, ws, next, chain);
        fixed[at + 32..at + 96].copy_from_slice(&head.seal.signature);
    }
    if let Ok(ev) = ForkEvidence::decode(&fixed, &ws, &origin) {
        assert_eq!(ev.encode(), fixed, "fork evidence does not re-encode to its input");
    }
}

/// `shoal_filelog::segment::Segment::decode`, first on the input as given (read as if found
/// where its header says), then fixed up so that the fuzzer gets past the checks it cannot
/// satisfy: magic and version set, lengths matched to the input, workspace, origin and key
/// set to the test vectors', the chain recomputed through the body when it is raw, the head
/// re-signed and the checksum recomputed. An accepted raw segment re-encodes to its input;
/// an accepted zstd one survives a round trip through the raw form.
pub fn segment(data: &[u8]) {
    if data.len() >= HEADER_LEN {
        let expected = Expected {
            workspace: WorkspaceId::from_bytes(copy16(&data[10..26])),
            origin: PeerId::from_bytes(copy16(&data[26..42])),
            name: Some(SegmentName {
                first: u64::from_le_bytes(copy8(&data[42..50])),
                last: u64::from_le_bytes(copy8(&data[50..58])),
            }),
        };
        if let Ok(seg) = Segment::decode(data, &expected) {
            check_segment(&seg, data, &expected);
        }
    } else {
        let ws = vector_workspace();
        let expected = Expected { workspace: ws, origin: vector_key().peer_id(&ws), name: None };
        let _ = Segment::decode(data, &expected);
    }
    if let Some((fixed, expected)) = fix_up_segment(data)
        && let Ok(seg) = Segment::decode(&fixed, &expected)
    {
        check_segment(&seg, &fixed, &expected);
    }
}

fn check_segment(seg: &Segment, bytes: &[u8], expected: &Expected) {
    let raw = seg.encode(Compression::None);
    if bytes[9] & FLAG_ZSTD == 0 {
        assert_eq!(raw, bytes, "raw segment does not re-encode to its input");
    }
    let again = Segment::decode(&raw, expected).expect("a re-encoded segment decodes");
    assert_eq!(again.entries(), seg.entries(), "segment entries changed in a round trip");
    assert_eq!(again.start(), seg.start());
    assert_eq!(again.head(), seg.head());
    assert_eq!(again.workspace(), seg.workspace());
    assert_eq!(again.raw_len(), seg.raw_len());
}

/// The input made into a segment of the vector key that passes the envelope checks, with
/// where it must be found; `None` when it is too short or its index range cannot be signed.
fn fix_up_segment(data: &[u8]) -> Option<(Vec<u8>, Expected)> {
    if data.len() < HEADER_LEN + TRAILER_LEN {
        return None;
    }
    let key = vector_key();
    let ws = vector_workspace();
    let origin = key.peer_id(&ws);
    let mut b = data.to_vec();
    b[..8].copy_from_slice(&MAGIC);
    b[8] = FORMAT_VERSION;
    b[9] &= FLAG_ZSTD;
    b[10..26].copy_from_slice(ws.as_bytes());
    b[26..42].copy_from_slice(origin.as_bytes());
    let first = u64::from_le_bytes(copy8(&b[42..50]));
    let last = u64::from_le_bytes(copy8(&b[50..58]));
    let next = last.checked_add(1)?;
    b[90..122].copy_from_slice(key.public_key().as_bytes());
    let stored = u32::try_from(data.len() - HEADER_LEN - TRAILER_LEN).ok()?;
    if b[9] & FLAG_ZSTD == 0 {
        b[122..126].copy_from_slice(&stored.to_le_bytes());
    }
    b[126..130].copy_from_slice(&stored.to_le_bytes());
    let body_end = HEADER_LEN + stored as usize;
    let mut chain = ChainHash(copy32(&b[body_end..body_end + 32]));
    let mut last_seal = None;
    if b[9] & FLAG_ZSTD == 0 {
        let start = ChainHash(copy32(&b[58..90]));
        if let Some((c, seal_at)) =
            walk_raw_body(&b[HEADER_LEN..body_end], origin, first, last, start)
        {
            chain = c;
            last_seal = seal_at.map(|at| HEADER_LEN + at);
        }
    }
    b[body_end..body_end + 32].copy_from_slice(&chain.0);
    let head = SignedHead::sign(&key, ws, next, chain);
    b[body_end + 32..body_end + 96].copy_from_slice(&head.seal.signature);
    if let Some(at) = last_seal {
        b[at..at + 64].copy_from_slice(&head.seal.signature);
    }
    let sum = checksum(&b[..body_end + 96]);
    b[body_end + 96..].copy_from_slice(&sum);
    Some((b, Expected { workspace: ws, origin, name: Some(SegmentName { first, last }) }))
}

/// Walks a raw segment body (`docs/FORMAT.md` §4.3) far enough to compute the chain
/// through its entries from `start`, and where the last entry's seal signature sits. `None`
/// if the body does not parse (the decoder will then say why). This is the harness's own
/// reading of the format, written from the document, not the decoder's code.
fn walk_raw_body(
    body: &[u8],
    origin: PeerId,
    first: u64,
    last: u64,
    start: ChainHash,
) -> Option<(ChainHash, Option<usize>)> {
    if last < first || last - first >= 1 << 20 {
        return None;
    }
    let mut r = Reader::new(body);
    let mut chain = start;
    let mut prev_hlc = 0u64;
    let mut seal_at = None;
    for index in first..=last {
        let flags = r.u8("flags").ok()?;
        let body = if flags & 0b01 != 0 {
            EntryBody::Expunged(shoal_core::EntryHash(r.array("hash").ok()?))
        } else {
            let hlc = prev_hlc.wrapping_add(r.signed_varint("hlc").ok()? as u64);
            prev_hlc = hlc;
            EntryBody::read_after_hlc(&mut r, (flags >> 2) & 0b11, Hlc::from_u64(hlc)).ok()?
        };
        seal_at = None;
        if flags & 0b10 != 0 {
            seal_at = Some(r.offset());
            r.take(64, "seal").ok()?;
        }
        let e = Entry { origin, index, body, seal: None };
        chain = chain.link(&e.hash());
    }
    Some((chain, seal_at))
}

fn copy8(b: &[u8]) -> [u8; 8] {
    let mut out = [0; 8];
    out.copy_from_slice(&b[..8]);
    out
}

fn copy16(b: &[u8]) -> [u8; 16] {
    let mut out = [0; 16];
    out.copy_from_slice(&b[..16]);
    out
}

fn copy32(b: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(&b[..32]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fix-up must leave a valid raw segment of the vector key as it is; otherwise the
    /// harness's own walk of the body disagrees with the format and mutations of valid
    /// segments would never reach the decoder's success path.
    #[test]
    fn fixing_up_a_valid_raw_segment_changes_nothing() {
        let mut raw = 0;
        for s in seeds::seeds("segment") {
            if s[9] & FLAG_ZSTD == 0 {
                raw += 1;
                let (fixed, _) = fix_up_segment(&s).unwrap();
                assert_eq!(fixed, s);
            }
        }
        assert!(raw >= 2);
    }

    /// Likewise for fork evidence: re-signing valid evidence reproduces it (Ed25519
    /// signatures are deterministic).
    #[test]
    fn fixing_up_valid_fork_evidence_changes_nothing() {
        let ws = vector_workspace();
        let origin = vector_key().peer_id(&ws);
        for s in seeds::seeds("fork_evidence") {
            let ev = ForkEvidence::decode(&s, &ws, &origin).unwrap();
            assert_eq!(ev.encode(), s);
        }
    }

    /// The harness's sealing of [`encrypted_entry`] must be the product's: sealing a data
    /// payload's plaintext with the nonce `Keyring::seal` drew gives the same ciphertext, and
    /// the product opens what the harness seals.
    #[test]
    fn the_harness_seals_as_the_keyring_does() {
        let ws = vector_workspace();
        let origin = vector_key().peer_id(&ws);
        let mut ring = Keyring::new(ws);
        ring.insert(0, EpochKey::from_bytes(FUZZ_EPOCH_KEY));
        let mut sealed_some = 0;
        for s in seeds::seeds("encrypted_entry") {
            let (count, plain) = s.split_first().unwrap();
            let mut stored = vec![1];
            stored.extend_from_slice(&fuzz_hlc().as_u64().to_le_bytes());
            stored.extend_from_slice(plain);
            let p = Payload::decode(&stored).unwrap();
            assert_eq!(u64::from(*count), p.ops.len() as u64);
            let theirs = ring.seal(&origin, FUZZ_INDEX, &FUZZ_PREV, &p).unwrap();
            let ours = seal_with_nonce(&ws, &origin, p.ops.len() as u64, plain, theirs.nonce);
            assert_eq!(ours, theirs);
            let ours = seal_for_fuzzing(&ws, &origin, p.ops.len() as u64, plain);
            assert_eq!(ring.open(&origin, FUZZ_INDEX, &FUZZ_PREV, &ours), Ok(p));
            sealed_some += 1;
        }
        assert!(sealed_some >= 3);
    }
}
