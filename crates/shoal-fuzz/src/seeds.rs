//! Seed inputs: valid encodings of each target's format, taken from the test vectors of
//! `docs/FORMAT.md` (§3.3, §4.7) and built the way the crates' own tests build values.
//!
//! Owns: [`seeds`], the inputs the corpora in `fuzz/corpus/<target>/` were grown from. The
//! smoke test checks that each seed is accepted by its decoder (so the re-encoding checks
//! of the targets run) and feeds the seeds to the mutation loop.
//!
//! Invariants: deterministic (fixed keys, fixed timestamps, no randomness), and every seed
//! of a target decodes successfully in that target's decoder.
//!
//! Never: reads files at run time (the vectors are compiled in) or writes any.

use shoal_core::codec::Encode;
use shoal_core::control::{ControlOp, Role};
use shoal_core::encryption::{KeyWrap, put_invite_keys};
use shoal_core::invite::InviteCode;
use shoal_core::{
    ChainHash, ChainPosition, DeviceKey, Domain, EncryptedPayload, Entry, EntryBody, Hlc, Op,
    OwnLog, Payload, PeerId, UserId,
};
use shoal_filelog::fork::ForkEvidence;
use shoal_filelog::layout::SegmentName;
use shoal_filelog::segment::{Compression, Segment};
use shoal_tables::{
    CellWrite, ColumnId, ColumnType, MergeKind, PkColumn, RowKey, TableId, TableOp, Value,
};

use crate::{vector_key, vector_workspace};

const ENTRY_VECTOR_HEX: &str = include_str!("../../shoal-core/testdata/entry-v2.hex");
const RELAY_VECTORS: &str = include_str!("../../shoal-relay/testdata/protocol.txt");
const SEGMENT_VECTOR: &[u8] = include_bytes!("../../shoal-filelog/testdata/segment-v2.seg");
const SEGMENT_VECTOR_RAW: &[u8] = include_bytes!("../../shoal-filelog/testdata/segment-v2-raw.seg");

/// The seed inputs of the target `name` (see [`crate::TARGETS`]); empty for an unknown name.
pub fn seeds(name: &str) -> Vec<Vec<u8>> {
    match name {
        "invite_code" => invite_codes().iter().map(|c| c.encode().into_bytes()).collect(),
        "control_op" => control_ops()
            .iter()
            .map(|c| {
                let op = c.to_op();
                let mut out = vec![0, op.kind as u8];
                out.extend_from_slice(&op.body);
                out
            })
            .collect(),
        "entry" => {
            let mut out: Vec<Vec<u8>> = entries().iter().map(Encode::to_bytes).collect();
            out.push(entry_vector());
            out
        }
        "entry_body" => entries()
            .iter()
            .filter(|e| !matches!(e.body, EntryBody::Expunged(_)))
            .map(|e| {
                let mut out = Vec::new();
                e.body.encode_stored(&mut out);
                out
            })
            .collect(),
        "payload" => payloads().iter().map(Encode::to_bytes).collect(),
        "relay_frame" => relay_frames(),
        "key_wrap" => invite_keys()
            .iter()
            .map(|keys| {
                let mut out = Vec::new();
                put_invite_keys(&mut out, keys);
                out
            })
            .collect(),
        "encrypted_entry" => payloads()
            .iter()
            .filter(|p| p.class() == Ok(shoal_core::EntryClass::Data))
            .map(|p| {
                // The op count, then the plaintext: the stored form without tag and timestamp.
                let mut out = vec![p.ops.len() as u8];
                out.extend_from_slice(&p.to_bytes()[9..]);
                out
            })
            .collect(),
        "fork_evidence" => {
            let key = vector_key();
            let ws = vector_workspace();
            vec![
                ForkEvidence::sign(&key, ws, 1, ChainHash([1; 32]), ChainHash([2; 32])).encode(),
                ForkEvidence::sign(&key, ws, 1 << 40, ChainHash([0; 32]), ChainHash([0xff; 32]))
                    .encode(),
            ]
        }
        "segment" => {
            let mut out = vec![SEGMENT_VECTOR.to_vec(), SEGMENT_VECTOR_RAW.to_vec()];
            let seg = log_segment();
            out.push(seg.encode(Compression::None));
            out.push(seg.encode(Compression::Zstd { level: 3 }));
            out
        }
        "segment_name" => [(0, 0), (0, 41), (7, 1 << 33), (u64::MAX - 1, u64::MAX - 1)]
            .iter()
            .map(|&(first, last)| SegmentName { first, last }.file_name().into_bytes())
            .collect(),
        "id_dir" => {
            let ws = vector_workspace();
            vec![
                ws.to_hex().into_bytes(),
                vector_key().peer_id(&ws).to_hex().into_bytes(),
                "00000000000000000000000000000000".into(),
            ]
        }
        "table_op" => table_ops()
            .iter()
            .map(|op| {
                let mut out = vec![op.kind() as u8];
                op.encode(&mut out);
                out
            })
            .collect(),
        "value" => values().iter().map(Encode::to_bytes).collect(),
        "row_key" => [
            vec![Value::Integer(1)],
            vec![Value::Text("a".into()), Value::Integer(-5)],
            vec![Value::Null, Value::Real(1.5), Value::Blob(vec![0, 1, 2])],
        ]
        .iter()
        .map(|vs| RowKey::from_values(vs).expect("valid key values").into_bytes())
        .collect(),
        _ => Vec::new(),
    }
}

/// The frames of the protocol's test vectors (`docs/PROTOCOL.md` §7: every frame kind, a
/// valid `Auth` for the target's relay and challenge), then pushes and pages of the seed
/// entries (live, expunged, encrypted, sealed and not) and an entrant's push of entry 0.
fn relay_frames() -> Vec<Vec<u8>> {
    use shoal_relay::frame::{Frame, Request, Response};
    let mut out: Vec<Vec<u8>> = RELAY_VECTORS
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(name, _)| !name.starts_with("auth_"))
        .map(|(_, hex)| hex::decode(hex).expect("the protocol vectors are hex"))
        .collect();
    let origin = vector_key().peer_id(&vector_workspace());
    let entries = entries();
    out.push(
        Frame::Request { id: 7, request: Request::Push { origin, entries: entries.clone() } }
            .to_bytes(),
    );
    out.push(
        Frame::Request { id: 8, request: Request::Push { origin, entries: entries[..1].to_vec() } }
            .to_bytes(),
    );
    out.push(Frame::Response { id: 9, response: Response::Entries(entries) }.to_bytes());
    out
}

fn entry_vector() -> Vec<u8> {
    let hex = ENTRY_VECTOR_HEX.trim();
    hex::decode(hex).expect("the entry vector is hex")
}

fn control_ops() -> Vec<ControlOp> {
    let key = vector_key();
    let ws = vector_workspace();
    let other = DeviceKey::from_secret_bytes(&[2; 32]);
    let code = InviteCode::from_parts(ws, "/srv/shared", [3; 32]);
    let target = other.peer_id(&ws);
    vec![
        ControlOp::genesis(key.public_key(), [0; 16]),
        ControlOp::successor(&key, ws, other.peer_id(&ws), 3, ChainHash([9; 32]), None),
        ControlOp::successor(
            &key,
            ws,
            other.peer_id(&ws),
            4,
            ChainHash([9; 32]),
            Some(other.exchange_key()),
        ),
        ControlOp::Policy { encrypted: true, creator_exchange: key.exchange_key() },
        code.invite_op(Role::Admin, 1_700_000_000_000, 2, vec![(0, KeyWrap([0xaa; 80]))]),
        code.join_op(&other),
        ControlOp::Request { exchange: other.exchange_key() },
        ControlOp::SetRole { target, role: Role::Admin },
        ControlOp::RevokeInvite { invite_key: code.key().public_key() },
        ControlOp::Remove { target, cut: 300 },
        ControlOp::Leave,
        ControlOp::ack([(key.peer_id(&ws), 5), (target, 200)]),
        ControlOp::EpochKeys { epoch: 1, wraps: vec![(target, KeyWrap([0xbb; 80]))] },
        ControlOp::EpochKeys {
            epoch: u32::MAX,
            wraps: vec![
                (PeerId::from_bytes([1; 16]), vector_wrap(0)),
                (PeerId::from_bytes([2; 16]), KeyWrap([0; 80])),
            ],
        },
        ControlOp::EpochKeys { epoch: 0, wraps: vec![] },
        code.invite_op(Role::Member, 0, 1, invite_keys()[2].clone()),
    ]
}

/// Real wraps for the [`vector_key`] in the [`vector_workspace`] (made once with
/// `shoal_core::encryption::wrap_key`, whose ephemeral key is random, and kept here so the
/// seeds stay fixed): epoch 0's key `10`×32 and epoch 1's key `11`×32.
const VECTOR_WRAP_EPOCH_0: &str = concat!(
    "233c5a1c966df0affcefd79f595361111f7e131298677049d53a4319f01f044faf6e3f9ca22fbac2",
    "ba981faa3c2d5ff9f633078b8df59cb9a77d4b675a5167259a07a51e196c61f7d7a630837c45feac",
);
const VECTOR_WRAP_EPOCH_1: &str = concat!(
    "5ffc8f3a1a78e38720cf271da14ebfece51919fb7b72c769134f42374aedd81ce92aa7b4d9aca4ef",
    "51e961820bc54557e4366d0382df8f61095a999b4c6cdfc9205e0c35f6704371e330959e184329fb",
);

/// A real wrap from the hex constants above.
pub fn vector_wrap(epoch: u32) -> KeyWrap {
    let hex = if epoch == 0 { VECTOR_WRAP_EPOCH_0 } else { VECTOR_WRAP_EPOCH_1 };
    let mut wrap = [0; 80];
    hex::decode_to_slice(hex, &mut wrap).expect("the vector wraps are 80 bytes of hex");
    KeyWrap(wrap)
}

/// An invite's keys: none, real wraps for the vector key, other bytes, the largest epoch.
fn invite_keys() -> Vec<Vec<(u32, KeyWrap)>> {
    vec![
        vec![],
        vec![(0, vector_wrap(0))],
        vec![(0, vector_wrap(0)), (1, vector_wrap(1)), (300, KeyWrap([0xaa; 80]))],
        vec![(1, vector_wrap(0))],
        vec![(u32::MAX, KeyWrap([0; 80]))],
    ]
}

fn invite_codes() -> Vec<InviteCode> {
    let ws = vector_workspace();
    vec![
        InviteCode::from_parts(ws, "", [3; 32]),
        InviteCode::from_parts(ws, "/srv/shared", [4; 32]),
        InviteCode::from_parts(ws, "wss://relay.example/ws?x=1", [5; 32]),
    ]
}

fn payloads() -> Vec<Payload> {
    let t = Hlc::from_millis(1_700_000_000_000);
    let op = |domain, kind, body: &[u8]| Op { domain, kind, body: body.to_vec() };
    vec![
        Payload { hlc: t, author: None, ops: vec![op(Domain::TABLES, 1, b"hello")] },
        Payload {
            hlc: t.plus(1),
            author: Some(UserId::from_bytes([0xaa; 16])),
            ops: vec![op(Domain::TABLES, 2, &[0x00, 0xff]), op(Domain::DOCS, 0, b"x")],
        },
        Payload { hlc: t.plus(5), author: None, ops: vec![] },
        Payload {
            hlc: t.plus(9),
            author: None,
            ops: vec![control_ops()[0].to_op(), control_ops()[1].to_op()],
        },
        Payload { hlc: Hlc::from_u64(u64::MAX), author: None, ops: vec![op(Domain(9), 7, b"")] },
    ]
}

/// A log of the vector key holding each seed payload, one expunged, plus an encrypted
/// body (whose format is fixed ahead of the encryption work).
fn entries() -> Vec<Entry> {
    let key = vector_key();
    let ws = vector_workspace();
    let origin = key.peer_id(&ws);
    let mut log = OwnLog::resume(key, ws, ChainPosition::start(&ws, &origin));
    let mut out: Vec<Entry> = log.append(payloads()).into_iter().map(|(e, _)| e).collect();
    out[1] = out[1].expunged();
    out.push(Entry {
        origin,
        index: 1 << 20,
        body: EntryBody::Encrypted(EncryptedPayload {
            hlc: Hlc::from_millis(1_700_000_000_001),
            op_count: 2,
            epoch: 1,
            nonce: [7; 24],
            ciphertext: vec![0xc0; 40],
        }),
        seal: None,
    });
    out
}

/// A segment of the vector key holding every seed payload (sealed every other
/// transaction), one entry expunged.
fn log_segment() -> Segment {
    let key = vector_key();
    let ws = vector_workspace();
    let origin = key.peer_id(&ws);
    let start = ChainPosition::start(&ws, &origin);
    let mut log = OwnLog::resume(key, ws, start);
    let mut entries: Vec<Entry> = Vec::new();
    let ps = payloads();
    entries.extend(log.append_unsealed(ps[..2].to_vec()).into_iter().map(|(e, _)| e));
    entries.extend(log.append(ps[2..].to_vec()).into_iter().map(|(e, _)| e));
    entries[1] = entries[1].expunged();
    Segment::new(ws, start, entries).expect("the seed segment is valid")
}

fn values() -> Vec<Value> {
    vec![
        Value::Null,
        Value::Integer(0),
        Value::Integer(-1),
        Value::Integer(i64::MAX),
        Value::Real(-0.0),
        Value::Real(f64::NAN),
        Value::Real(f64::INFINITY),
        Value::Text("héllo".into()),
        Value::Blob(vec![0, 0xff]),
    ]
}

fn table_ops() -> Vec<TableOp> {
    let table = TableId::from_name("notes");
    let key = RowKey::from_values(&[Value::Text("k".into())]).expect("a valid key");
    vec![
        TableOp::CreateTable {
            table,
            name: "notes".into(),
            primary_key: vec![
                PkColumn::new(table, "id", ColumnType::Text),
                PkColumn::new(table, "n", ColumnType::Integer),
            ],
        },
        TableOp::add_column(table, "count", ColumnType::Integer, MergeKind::Counter),
        TableOp::add_column(table, "title", ColumnType::Text, MergeKind::Lww),
        TableOp::RenameTable { table, name: "memos".into() },
        TableOp::RenameColumn {
            table,
            column: ColumnId::from_name(table, "title"),
            name: "t".into(),
        },
        TableOp::DropTable { table },
        TableOp::DropColumn { table, column: ColumnId::from_name(table, "title") },
        TableOp::Put {
            table,
            key: key.clone(),
            cells: vec![
                (ColumnId::from_name(table, "title"), CellWrite::Set(Value::Text("x".into()))),
                (ColumnId::from_name(table, "count"), CellWrite::Add(-3)),
                (ColumnId::from_name(table, "best"), CellWrite::Max(Value::Real(2.5))),
            ],
        },
        TableOp::Delete { table, key },
    ]
}
