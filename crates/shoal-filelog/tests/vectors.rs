//! Test vectors of `docs/FORMAT.md` §4.7: fixed segment files that this version must
//! decode and verify (and that the writer reproduces byte for byte), and one file per
//! rejection, each tied to its exact error. If a vector test fails, the format changed:
//! bump its version and extend the version log.
//!
//! `SHOAL_REGENERATE_VECTORS=1 cargo test -p shoal-filelog --test vectors` rewrites the
//! files from the builders below (only ever for a new format version).

use std::path::{Path, PathBuf};

use shoal_core::codec::DecodeProblem;
use shoal_core::*;
use shoal_filelog::layout::SegmentName;
use shoal_filelog::segment::*;

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join(name)
}

/// The vector segment (FORMAT §4.7): five entries of the device key with secret bytes
/// `01`×32 in the workspace derived from it with a zero salt, written as three
/// transactions (0–1, 2, 3–4), entry 2 then expunged.
fn vector_in(key: &DeviceKey, ws: WorkspaceId) -> Segment {
    let origin = key.peer_id(&ws);
    let t = Hlc::from_millis(1_700_000_000_000);
    let op = |domain, kind, body: &[u8]| Op { domain, kind, body: body.to_vec() };
    let mut log = OwnLog::resume(key.clone(), ws, ChainPosition::start(&ws, &origin));
    let mut entries: Vec<Entry> = Vec::new();
    for batch in [
        vec![
            Payload { hlc: t, author: None, ops: vec![op(Domain::TABLES, 1, b"hello")] },
            Payload {
                hlc: t.plus(1),
                author: Some(UserId::from_bytes([0xaa; 16])),
                ops: vec![op(Domain::TABLES, 2, &[0x00, 0xff]), op(Domain::DOCS, 0, b"x")],
            },
        ],
        vec![Payload { hlc: t.plus(3), author: None, ops: vec![op(Domain::TABLES, 1, b"gone")] }],
        vec![
            Payload { hlc: Hlc::from_millis(1_700_000_000_003), author: None, ops: vec![] },
            Payload {
                hlc: Hlc::from_millis(1_700_000_000_003).plus(1),
                author: None,
                ops: vec![op(Domain(9), 7, b"future")],
            },
        ],
    ] {
        entries.extend(log.append(batch).into_iter().map(|(e, _)| e));
    }
    entries[2] = entries[2].expunged();
    Segment::new(ws, ChainPosition::start(&ws, &origin), entries).expect("the vector is valid")
}

fn vector_key() -> DeviceKey {
    DeviceKey::from_secret_bytes(&[1; 32])
}

fn vector_ws() -> WorkspaceId {
    WorkspaceId::derive(&vector_key().public_key(), &[0; 16])
}

fn vector() -> Segment {
    vector_in(&vector_key(), vector_ws())
}

fn expected() -> Expected {
    Expected {
        workspace: vector_ws(),
        origin: vector_key().peer_id(&vector_ws()),
        name: Some(SegmentName { first: 0, last: 4 }),
    }
}

const COMPRESSED: &str = "segment-v2.seg";
const RAW: &str = "segment-v2-raw.seg";

/// The rejection files: name, how it is made from the vector, and the exact problem.
fn rejections() -> Vec<(&'static str, Vec<u8>, SegmentProblem)> {
    let good = vector().encode(Compression::Zstd { level: 3 });
    let mut bad_magic = good.clone();
    bad_magic[..8].copy_from_slice(b"SQLite f");
    let mut newer = good.clone();
    newer[8] = FORMAT_VERSION + 1;
    let mut older = good.clone();
    older[8] = FORMAT_VERSION - 1;
    let truncated = good[..good.len() - 40].to_vec();
    let mut flipped = good.clone();
    flipped[HEADER_LEN + 3] ^= 0x10;
    let other_ws = WorkspaceId::derive(&vector_key().public_key(), &[1; 16]);
    let wrong_ws = vector_in(&vector_key(), other_ws).encode(Compression::Zstd { level: 3 });
    let other_key = DeviceKey::from_secret_bytes(&[2; 32]);
    let wrong_origin = vector_in(&other_key, vector_ws()).encode(Compression::Zstd { level: 3 });
    let truncated_at = good.len() - TRAILER_LEN + 32;
    vec![
        ("bad-magic.seg", bad_magic, SegmentProblem::BadMagic),
        ("newer-version.seg", newer, SegmentProblem::UnsupportedVersion { version: 3 }),
        ("older-version.seg", older, SegmentProblem::OlderVersion { version: 1 }),
        (
            "truncated.seg",
            truncated,
            SegmentProblem::Envelope(codec::DecodeError {
                offset: truncated_at,
                what: DecodeProblem::Truncated { reading: "segment head signature" },
            }),
        ),
        ("flipped-bit.seg", flipped, SegmentProblem::ChecksumMismatch),
        (
            "wrong-workspace.seg",
            wrong_ws,
            SegmentProblem::WrongWorkspace { expected: vector_ws(), found: other_ws },
        ),
        (
            "wrong-origin.seg",
            wrong_origin,
            SegmentProblem::WrongOrigin {
                expected: vector_key().peer_id(&vector_ws()),
                found: other_key.peer_id(&vector_ws()),
            },
        ),
    ]
}

#[test]
fn regenerate_when_asked() {
    if std::env::var_os("SHOAL_REGENERATE_VECTORS").is_none() {
        return;
    }
    let seg = vector();
    std::fs::write(testdata(COMPRESSED), seg.encode(Compression::Zstd { level: 3 })).unwrap();
    std::fs::write(testdata(RAW), seg.encode(Compression::None)).unwrap();
    for (name, bytes, _) in rejections() {
        std::fs::write(testdata(&format!("rejects/{name}")), bytes).unwrap();
    }
}

#[test]
fn segment_v2_vectors_decode_verify_and_reencode() {
    let seg = vector();
    for (file, compression) in
        [(COMPRESSED, Compression::Zstd { level: 3 }), (RAW, Compression::None)]
    {
        let bytes = std::fs::read(testdata(file)).expect("the vector file exists");
        assert_eq!(
            seg.encode(compression),
            bytes,
            "{file}: the writer no longer produces the vector bytes"
        );
        let decoded = Segment::decode(&bytes, &expected()).expect("the vector decodes");
        assert_eq!(decoded, seg, "{file}");
        assert_eq!(decoded.encode(compression), bytes);
        assert_eq!((decoded.first(), decoded.last()), (0, 4));
        assert!(matches!(decoded.entries()[2].body, EntryBody::Expunged(_)));
        assert_eq!(
            decoded.entries().iter().map(|e| e.seal.is_some()).collect::<Vec<_>>(),
            [false, false, false, false, true],
            "only the head and block-aligned seals are kept"
        );
        // What a replica does with the entries: they pass the ingest pipeline from the
        // start of the log.
        let ws = vector_ws();
        let origin = decoded.origin();
        let run = Ingest::new(ws).verify(
            origin,
            ChainPosition::start(&ws, &origin),
            decoded.entries().to_vec(),
        );
        assert!(run.stop().is_none(), "{:?}", run.stop());
        assert_eq!(run.entries().len(), 5);
        assert_eq!(run.end().chain, decoded.head().chain);
    }
    let raw = std::fs::read(testdata(RAW)).unwrap();
    assert_eq!(raw[9], 0, "raw vector: flags 0");
    let zstd = std::fs::read(testdata(COMPRESSED)).unwrap();
    assert_eq!(zstd[9], FLAG_ZSTD, "compressed vector: flag bit 0");
    assert_eq!(&zstd[HEADER_LEN..HEADER_LEN + 4], &[0x28, 0xb5, 0x2f, 0xfd], "a zstd frame");
}

#[test]
fn each_rejection_vector_fails_with_its_exact_error() {
    for (name, made, problem) in rejections() {
        let path = testdata(&format!("rejects/{name}"));
        let bytes = std::fs::read(&path).expect("the rejection file exists");
        assert_eq!(bytes, made, "{name} is no longer what the builder makes");
        let err = Segment::decode(&bytes, &expected()).expect_err(name);
        assert_eq!(err, problem, "{name}");
        // At the trait boundary the error names the file and stalls only its origin.
        let shown = path.display().to_string();
        let sync = err.into_sync_error(&shown);
        assert!(sync.stalls_origin(), "{name}");
        match &sync {
            SyncError::Malformed { source_name, .. } => assert_eq!(source_name, &shown),
            other => panic!("{name}: {other:?}"),
        }
        assert!(sync.to_string().starts_with(&shown), "{name}: {sync}");
    }
}

#[test]
fn a_truncated_file_is_truncated_at_every_cut() {
    let good = std::fs::read(testdata(COMPRESSED)).unwrap();
    for cut in 0..good.len() {
        match Segment::decode(&good[..cut], &expected()) {
            Err(SegmentProblem::Envelope(e)) => {
                assert!(matches!(e.what, DecodeProblem::Truncated { .. }), "cut {cut}: {e}")
            }
            other => panic!("cut {cut}: {other:?}"),
        }
    }
}
