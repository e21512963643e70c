//! Property tests of the relay protocol's frames (`docs/PROTOCOL.md` §2): every frame
//! round-trips through its bytes; `Frame::decode` never panics on any input, and what it
//! accepts re-encodes to exactly the input (one byte form per frame); counts and lengths
//! beyond what the frame can hold are refused before anything is allocated for them.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::time::{Duration, Instant};

use proptest::prelude::*;
use shoal_core::codec::{DecodeProblem, Encode, put_varint};
use shoal_core::{
    DeviceKey, Domain, EncryptedPayload, Entry, EntryBody, EntryHash, Hlc, Op, Payload,
    PeerCursors, PeerId, Seal, UserId, WorkspaceId,
};
use shoal_relay::frame::{
    Access, Frame, MAX_CURSORS, MAX_ENTRIES_PER_FRAME, MAX_TEXT, RefuseCode, RelayId, Request,
    Response,
};

fn key() -> DeviceKey {
    DeviceKey::from_secret_bytes(&[1; 32])
}

fn peer() -> impl Strategy<Value = PeerId> {
    // A few fixed origins (so lists share them) and arbitrary ones.
    prop_oneof![
        (0u8..4).prop_map(|b| PeerId::from_bytes([b; 16])),
        any::<[u8; 16]>().prop_map(PeerId::from_bytes),
    ]
}

fn cursors() -> impl Strategy<Value = PeerCursors> {
    // Positions are never 0 in a cursor list (an origin at 0 is not listed).
    prop::collection::btree_map(peer(), 1..=u64::MAX, 0..6).prop_map(|m| m.into_iter().collect())
}

/// Texts as the relay writes them: up to MAX_TEXT bytes of UTF-8.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![".{0,40}", Just("é".repeat(MAX_TEXT as usize / 2))]
}

fn code() -> impl Strategy<Value = RefuseCode> {
    use RefuseCode::*;
    prop::sample::select(vec![
        Protocol,
        BadAuth,
        NotAMember,
        UnknownWorkspace,
        Limit,
        Timeout,
        Shutdown,
        Version,
        Internal,
    ])
}

fn ops(
    domains: std::ops::RangeInclusive<u32>,
    count: std::ops::Range<usize>,
) -> BoxedStrategy<Vec<Op>> {
    prop::collection::vec(
        (domains, any::<u32>(), prop::collection::vec(any::<u8>(), 0..12))
            .prop_map(|(d, kind, body)| Op { domain: Domain(d), kind, body }),
        count,
    )
    .boxed()
}

fn body() -> impl Strategy<Value = EntryBody> {
    let payload = |ops: BoxedStrategy<Vec<Op>>| {
        (any::<u64>(), prop::option::of(any::<[u8; 16]>()), ops).prop_map(|(hlc, author, ops)| {
            EntryBody::Live(Payload {
                hlc: Hlc::from_u64(hlc),
                author: author.map(UserId::from_bytes),
                ops,
            })
        })
    };
    prop_oneof![
        // A data entry (no control op, possibly none at all) and a control entry.
        payload(ops(1..=12, 0..4)),
        payload(ops(0..=0, 1..3)),
        (
            any::<u64>(),
            0..=(1u64 << 20),
            any::<u32>(),
            any::<[u8; 24]>(),
            prop::collection::vec(any::<u8>(), 0..48)
        )
            .prop_map(|(hlc, op_count, epoch, nonce, ciphertext)| {
                EntryBody::Encrypted(EncryptedPayload {
                    hlc: Hlc::from_u64(hlc),
                    op_count,
                    epoch,
                    nonce,
                    ciphertext,
                })
            }),
        any::<[u8; 32]>().prop_map(|h| EntryBody::Expunged(EntryHash(h))),
    ]
}

/// Entries of `origin`. Decoding checks their form, not their chain or seal (that is the
/// ingest pipeline's job), so any seal bytes will do here.
fn entries(origin: PeerId) -> impl Strategy<Value = Vec<Entry>> {
    let entry = (any::<u64>(), body(), prop::option::of(any::<[u8; 32]>())).prop_map(
        move |(index, body, sig)| Entry {
            origin,
            index,
            body,
            seal: sig.map(|s| {
                let mut signature = [0; 64];
                signature[..32].copy_from_slice(&s);
                Seal { key: key().public_key(), signature }
            }),
        },
    );
    prop::collection::vec(entry, 0..4)
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::Cursors),
        (peer(), any::<u64>()).prop_map(|(origin, from)| Request::Read { origin, from }),
        peer().prop_flat_map(
            |origin| entries(origin).prop_map(move |entries| Request::Push { origin, entries })
        ),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        cursors().prop_map(Response::Cursors),
        // A read's page may mix origins as far as the frame is concerned.
        (peer(), peer()).prop_flat_map(|(a, b)| (entries(a), entries(b))).prop_map(|(mut a, b)| {
            a.extend(b);
            Response::Entries(a)
        }),
        (any::<u64>(), any::<u64>(), any::<u64>())
            .prop_map(|(new, duplicates, next)| Response::Stored { new, duplicates, next }),
        (any::<u64>(), text()).prop_map(|(next, reason)| Response::Stalled { next, reason }),
        (code(), text()).prop_map(|(code, message)| Response::Error { code, message }),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u8>(), any::<[u8; 32]>(), any::<[u8; 32]>(), any::<u64>()).prop_map(
            |(version, relay, challenge, max_frame)| Frame::Hello {
                version,
                relay: RelayId(relay),
                challenge,
                max_frame
            }
        ),
        (any::<u8>(), any::<[u8; 16]>(), any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(
            |(version, ws, secret, sig)| {
                let mut signature = [0; 64];
                signature[32..].copy_from_slice(&sig);
                Frame::Auth {
                    version,
                    workspace: WorkspaceId::from_bytes(ws),
                    key: DeviceKey::from_secret_bytes(&secret).public_key(),
                    signature,
                }
            }
        ),
        (prop::bool::ANY, cursors()).prop_map(|(member, cursors)| Frame::Welcome {
            access: if member { Access::Member } else { Access::Entrant },
            cursors
        }),
        (code(), text()).prop_map(|(code, message)| Frame::Refused { code, message }),
        (any::<u64>(), request()).prop_map(|(id, request)| Frame::Request { id, request }),
        (any::<u64>(), response()).prop_map(|(id, response)| Frame::Response { id, response }),
        cursors().prop_map(Frame::Advanced),
        cursors().prop_map(Frame::Position),
        any::<u64>().prop_map(Frame::Ping),
        any::<u64>().prop_map(Frame::Pong),
    ]
}

/// The decoder's rule on any input: no panic, and an accepted input is the canonical
/// encoding of what it decoded to.
fn check_canonical(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(frame) = Frame::decode(bytes) {
        prop_assert_eq!(
            frame.to_bytes(),
            bytes,
            "accepted a non-canonical encoding of {:?}",
            frame
        );
    }
    Ok(())
}

/// Arbitrary bytes behind a valid frame tag (and, for requests and responses, a valid id
/// and kind), so that the decoder gets past the first byte.
fn tagged_bytes() -> impl Strategy<Value = Vec<u8>> {
    (1u8..=9, any::<u64>(), 0u8..=6, prop::collection::vec(any::<u8>(), 0..200)).prop_map(
        |(tag, id, kind, rest)| {
            let mut out = vec![tag];
            if tag == 5 || tag == 6 {
                put_varint(&mut out, id);
                out.push(kind);
            }
            out.extend(rest);
            out
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_frame_round_trips(f in frame()) {
        let bytes = f.to_bytes();
        prop_assert_eq!(Frame::decode(&bytes).unwrap(), f);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_what_decodes_is_canonical(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        check_canonical(&bytes)?;
    }

    #[test]
    fn bytes_behind_a_valid_tag_never_panic_and_what_decodes_is_canonical(bytes in tagged_bytes()) {
        check_canonical(&bytes)?;
    }

    #[test]
    fn truncated_frames_are_refused(f in frame(), cut in any::<prop::sample::Index>()) {
        let bytes = f.to_bytes();
        let cut = cut.index(bytes.len());
        // A frame has one length: no proper prefix of it is a frame.
        prop_assert!(Frame::decode(&bytes[..cut]).is_err());
        // Nor is it with bytes after it.
        let mut longer = bytes.clone();
        longer.push(0);
        prop_assert!(Frame::decode(&longer).is_err());
    }

    #[test]
    fn damaged_frames_never_panic_and_what_decodes_is_canonical(
        f in frame(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..4),
        overwrite in prop::option::of((any::<prop::sample::Index>(), any::<u8>())),
    ) {
        let mut bytes = f.to_bytes();
        for (at, bit) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
        }
        if let Some((at, b)) = overwrite {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        check_canonical(&bytes)?;
    }
}

/// The header of a push of `origin` with request id 1, up to (not including) its count.
fn push_header() -> Vec<u8> {
    let mut out = vec![5, 1, 3];
    out.extend_from_slice(&[0x11; 16]);
    out
}

fn decode_quickly(bytes: &[u8]) -> DecodeProblem {
    let start = Instant::now();
    let e = Frame::decode(bytes).unwrap_err();
    assert!(start.elapsed() < Duration::from_millis(500), "took {:?}", start.elapsed());
    e.what
}

#[test]
fn oversize_counts_are_refused_before_allocating() {
    // A push claiming 2^40 entries in a 20-byte frame: refused on the count itself.
    let mut b = push_header();
    put_varint(&mut b, 1 << 40);
    assert!(
        matches!(decode_quickly(&b), DecodeProblem::TooLarge { value, .. } if value == 1 << 40)
    );
    // One more than the limit is refused; the limit itself only runs out of bytes.
    let mut b = push_header();
    put_varint(&mut b, MAX_ENTRIES_PER_FRAME + 1);
    assert!(matches!(decode_quickly(&b), DecodeProblem::TooLarge { .. }));
    let mut b = push_header();
    put_varint(&mut b, MAX_ENTRIES_PER_FRAME);
    assert!(matches!(decode_quickly(&b), DecodeProblem::Truncated { .. }));
    // Entries of a read's response likewise.
    let mut b = vec![6, 1, 2];
    put_varint(&mut b, u64::MAX);
    assert!(matches!(decode_quickly(&b), DecodeProblem::TooLarge { .. }));
    // An entry longer than the bytes left.
    let mut b = push_header();
    put_varint(&mut b, 1);
    put_varint(&mut b, 1 << 30);
    assert!(matches!(decode_quickly(&b), DecodeProblem::TooLarge { .. }));
    // Cursor lists: in Welcome, Advanced and the cursors response.
    for head in [vec![3, 0], vec![7], vec![6, 9, 1]] {
        let mut b = head.clone();
        put_varint(&mut b, MAX_CURSORS + 1);
        assert!(matches!(decode_quickly(&b), DecodeProblem::TooLarge { .. }), "{head:?}");
        let mut b = head.clone();
        put_varint(&mut b, MAX_CURSORS);
        assert!(matches!(decode_quickly(&b), DecodeProblem::Truncated { .. }), "{head:?}");
    }
    // Texts: a refusal, a stall and an error.
    for head in [vec![4, 1], vec![6, 1, 4, 0], vec![6, 1, 5, 1]] {
        let mut b = head.clone();
        put_varint(&mut b, MAX_TEXT + 1);
        b.extend(std::iter::repeat_n(b'a', MAX_TEXT as usize + 1));
        assert!(matches!(decode_quickly(&b), DecodeProblem::TooLarge { .. }), "{head:?}");
        let mut b = head.clone();
        put_varint(&mut b, 1 << 62);
        assert!(matches!(decode_quickly(&b), DecodeProblem::TooLarge { .. }), "{head:?}");
    }
}

#[test]
fn cursor_lists_are_strictly_ascending_without_zeros() {
    let a = PeerId::from_bytes([1; 16]);
    let b = PeerId::from_bytes([2; 16]);
    let list = |pairs: &[(PeerId, u64)]| {
        let mut out = vec![7];
        put_varint(&mut out, pairs.len() as u64);
        for (o, n) in pairs {
            out.extend_from_slice(o.as_bytes());
            put_varint(&mut out, *n);
        }
        out
    };
    assert!(Frame::decode(&list(&[(a, 1), (b, 2)])).is_ok());
    for bad in [vec![(b, 1), (a, 2)], vec![(a, 1), (a, 2)], vec![(a, 0)]] {
        assert!(
            matches!(decode_quickly(&list(&bad)), DecodeProblem::Invalid(_)),
            "{bad:?} accepted"
        );
    }
}

#[test]
fn a_push_carries_only_its_own_origin() {
    let origin = PeerId::from_bytes([1; 16]);
    let mut entry =
        Entry { origin, index: 0, body: EntryBody::Expunged(EntryHash([0; 32])), seal: None };
    let push = |e: &Entry| {
        Frame::Request { id: 1, request: Request::Push { origin, entries: vec![e.clone()] } }
            .to_bytes()
    };
    assert!(Frame::decode(&push(&entry)).is_ok());
    entry.origin = PeerId::from_bytes([2; 16]);
    assert!(matches!(decode_quickly(&push(&entry)), DecodeProblem::Invalid(_)));
    // A read's page is not held to one origin by the frame.
    let page = Frame::Response { id: 1, response: Response::Entries(vec![entry]) };
    assert!(Frame::decode(&page.to_bytes()).is_ok());
}

#[test]
fn unknown_tags_kinds_codes_and_access_values_are_refused() {
    for bytes in [
        vec![0],
        vec![11],
        vec![5, 1, 0],
        vec![5, 1, 4],
        vec![6, 1, 0],
        vec![6, 1, 6],
        vec![4, 0, 0],
        vec![4, 10, 0],
        vec![3, 2, 0],
    ] {
        assert!(
            matches!(decode_quickly(&bytes), DecodeProblem::InvalidTag { .. }),
            "{bytes:?} accepted"
        );
    }
    // A text that is not UTF-8.
    assert!(matches!(decode_quickly(&[4, 1, 1, 0xff]), DecodeProblem::Invalid(_)));
    // A non-canonical varint (request id 0 written in two bytes).
    assert!(matches!(decode_quickly(&[5, 0x80, 0x00, 1]), DecodeProblem::NonCanonicalVarint));
}
