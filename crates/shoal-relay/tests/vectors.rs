//! Test vectors of the relay protocol (`docs/PROTOCOL.md` §7): one frame of every kind, and
//! the authentication message with its signature, built from fixed keys. If this test fails,
//! the protocol's bytes changed: bump `PROTOCOL_VERSION` and say so in `docs/PROTOCOL.md`.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use shoal_core::codec::Encode;
use shoal_core::{
    DeviceKey, Domain, Entry, Hlc, MemoryReplica, Op, Payload, PeerCursors, PeerId, WorkspaceId,
};
use shoal_relay::auth::{auth_message, verify_auth};
use shoal_relay::frame::{
    Access, Frame, MAX_TEXT, PROTOCOL_VERSION, RefuseCode, RelayId, Request, Response,
};

const VECTORS: &str = include_str!("../testdata/protocol.txt");

/// The fixed inputs: the device key with secret `01` × 32, the workspace derived from it
/// with a zero salt (as `docs/FORMAT.md` §3.3), relay id `03` × 32, challenge `09` × 32.
fn device() -> (DeviceKey, WorkspaceId, PeerId) {
    let key = DeviceKey::from_secret_bytes(&[1; 32]);
    let ws = WorkspaceId::derive(&key.public_key(), &[0; 16]);
    let peer = key.peer_id(&ws);
    (key, ws, peer)
}

const RELAY: RelayId = RelayId([3; 32]);
const CHALLENGE: [u8; 32] = [9; 32];

/// One sealed entry, written through `MemoryReplica::append_local`: the entry of
/// `docs/FORMAT.md` §3.3 (index 0, two ops).
fn sealed_entry() -> Entry {
    let (key, ws, _) = device();
    let replica = MemoryReplica::new(ws, Some(key));
    let payload = Payload {
        hlc: Hlc::from_millis(1_700_000_000_000),
        author: None,
        ops: vec![
            Op { domain: Domain::TABLES, kind: 1, body: b"hello".to_vec() },
            Op { domain: Domain(9), kind: 7, body: vec![0x00, 0xff] },
        ],
    };
    replica.append_local(vec![payload]).unwrap().remove(0)
}

/// Every vector, by name, in file order. Names starting with `auth_` are not frames.
fn vectors() -> Vec<(&'static str, Vec<u8>)> {
    let (key, ws, peer) = device();
    let message = auth_message(&RELAY, &CHALLENGE, &ws, &peer);
    let signature = key.sign(&message);
    let other = PeerId::from_bytes([0xee; 16]);
    let cursors: PeerCursors = [(peer, 1), (other, 300)].into_iter().collect();
    let entry = sealed_entry();
    let frames: Vec<(&'static str, Frame)> = vec![
        (
            "hello",
            Frame::Hello {
                version: PROTOCOL_VERSION,
                relay: RELAY,
                challenge: CHALLENGE,
                max_frame: 32 << 20,
            },
        ),
        (
            "auth",
            Frame::Auth {
                version: PROTOCOL_VERSION,
                workspace: ws,
                key: key.public_key(),
                signature,
            },
        ),
        ("welcome_member", Frame::Welcome { access: Access::Member, cursors: cursors.clone() }),
        (
            "welcome_entrant",
            Frame::Welcome { access: Access::Entrant, cursors: PeerCursors::new() },
        ),
        ("refused", Frame::Refused { code: RefuseCode::NotAMember, message: "removed".into() }),
        ("request_cursors", Frame::Request { id: 1, request: Request::Cursors }),
        (
            "request_read",
            Frame::Request { id: 2, request: Request::Read { origin: other, from: 200 } },
        ),
        (
            "request_push",
            Frame::Request {
                id: 3,
                request: Request::Push { origin: peer, entries: vec![entry.clone()] },
            },
        ),
        (
            "response_cursors",
            Frame::Response { id: 1, response: Response::Cursors(cursors.clone()) },
        ),
        ("response_entries", Frame::Response { id: 2, response: Response::Entries(vec![entry]) }),
        (
            "response_stored",
            Frame::Response {
                id: 3,
                response: Response::Stored { new: 1, duplicates: 0, next: 1 },
            },
        ),
        (
            "response_stalled",
            Frame::Response {
                id: 4,
                response: Response::Stalled { next: 128, reason: "needs a newer Shoal".into() },
            },
        ),
        (
            "response_error",
            Frame::Response {
                id: 5,
                response: Response::Error { code: RefuseCode::Internal, message: "é".into() },
            },
        ),
        ("advanced", Frame::Advanced([(other, 301)].into_iter().collect())),
        ("position", Frame::Position(cursors.clone())),
        ("ping", Frame::Ping(0x0102_0304_0506_0708)),
        ("pong", Frame::Pong(0x0102_0304_0506_0708)),
    ];
    let mut out: Vec<(&'static str, Vec<u8>)> =
        frames.into_iter().map(|(name, f)| (name, f.to_bytes())).collect();
    out.push(("auth_message", message));
    out.push(("auth_signature", signature.to_vec()));
    out
}

/// A frame's kind, down to the kind of request or response.
fn kind(frame: &Frame) -> &'static str {
    match frame {
        Frame::Request { request, .. } => match request {
            Request::Cursors => "request cursors",
            Request::Read { .. } => "request read",
            Request::Push { .. } => "request push",
        },
        Frame::Response { response, .. } => match response {
            Response::Cursors(_) => "response cursors",
            Response::Entries(_) => "response entries",
            Response::Stored { .. } => "response stored",
            Response::Stalled { .. } => "response stalled",
            Response::Error { .. } => "response error",
        },
        other => other.name(),
    }
}

fn vector_text() -> String {
    vectors().iter().map(|(name, bytes)| format!("{name} {}\n", hex::encode(bytes))).collect()
}

fn parsed() -> Vec<(&'static str, Vec<u8>)> {
    VECTORS
        .lines()
        .map(|line| {
            let (name, hex) = line.split_once(' ').expect("`<name> <hex>`");
            (name, hex::decode(hex).expect("hex"))
        })
        .collect()
}

#[test]
fn the_writer_produces_the_vector_file() {
    assert_eq!(vector_text(), VECTORS, "the writer no longer produces the vector bytes");
}

#[test]
fn every_frame_vector_decodes_and_reencodes_to_its_bytes() {
    let expected = vectors();
    let mut kinds = std::collections::BTreeSet::new();
    for ((name, bytes), (_, built)) in parsed().iter().zip(&expected) {
        if name.starts_with("auth_") {
            continue;
        }
        let frame = Frame::decode(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(frame.to_bytes(), *bytes, "{name} does not re-encode to its bytes");
        assert_eq!(Frame::decode(built).unwrap(), frame, "{name}");
        kinds.insert(kind(&frame));
    }
    // One line per frame kind (Welcome twice), per request kind and per response kind.
    assert_eq!(kinds.len(), 8 + 3 + 5, "{kinds:?}");
    assert_eq!(parsed().len(), expected.len());
}

#[test]
fn the_auth_vectors_verify_only_for_their_relay_and_challenge() {
    let v: std::collections::BTreeMap<_, _> = parsed().into_iter().collect();
    let (key, ws, peer) = device();
    assert_eq!(v["auth_message"], auth_message(&RELAY, &CHALLENGE, &ws, &peer));
    // The documented layout: context, relay, challenge, workspace, peer.
    let m = &v["auth_message"];
    assert_eq!(&m[..20], b"shoal relay auth v1\0");
    assert_eq!(m.len(), 20 + 32 + 32 + 16 + 16);
    assert_eq!(&m[20..52], &RELAY.0);
    assert_eq!(&m[52..84], &CHALLENGE);
    assert_eq!(&m[84..100], ws.as_bytes());
    assert_eq!(&m[100..], peer.as_bytes());
    let signature: [u8; 64] = v["auth_signature"].clone().try_into().unwrap();
    let Frame::Auth { version, workspace, key: sent_key, signature: sent } =
        Frame::decode(&v["auth"]).unwrap()
    else {
        panic!("the auth vector is not an Auth frame");
    };
    assert_eq!(
        (version, workspace, sent_key, sent),
        (PROTOCOL_VERSION, ws, key.public_key(), signature)
    );
    assert_eq!(verify_auth(&RELAY, &CHALLENGE, &ws, &key.public_key(), &signature), Ok(peer));
    assert!(
        verify_auth(&RelayId([4; 32]), &CHALLENGE, &ws, &key.public_key(), &signature).is_err()
    );
    assert!(verify_auth(&RELAY, &[8; 32], &ws, &key.public_key(), &signature).is_err());
    let Frame::Hello { relay, challenge, .. } = Frame::decode(&v["hello"]).unwrap() else {
        panic!("the hello vector is not a Hello frame");
    };
    assert_eq!((relay, challenge), (RELAY, CHALLENGE), "auth signs what hello sent");
}

#[test]
fn the_pushed_entry_is_the_format_vector_and_a_text_is_capped() {
    // The entry inside `request_push` is byte for byte the entry of `docs/FORMAT.md` §3.3.
    let format_vector = include_str!("../../shoal-core/testdata/entry-v2.hex").trim();
    assert_eq!(hex::encode(sealed_entry().to_bytes()), format_vector);
    let v: std::collections::BTreeMap<_, _> = parsed().into_iter().collect();
    assert!(hex::encode(&v["request_push"]).contains(format_vector));
    // A longer text is cut at MAX_TEXT bytes (at a char boundary) when encoded.
    let long = Frame::Refused { code: RefuseCode::Limit, message: "é".repeat(MAX_TEXT as usize) };
    let Frame::Refused { message, .. } = Frame::decode(&long.to_bytes()).unwrap() else {
        panic!("not a refusal");
    };
    assert_eq!(message.len(), MAX_TEXT as usize);
}

#[test]
#[ignore = "writes the vector file; run by hand after a deliberate protocol change"]
fn write_protocol_vectors() {
    std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/protocol.txt"), vector_text())
        .unwrap();
}
