//! Test vectors of `docs/FORMAT.md` §3.3: fixed bytes that this version must decode, verify
//! and re-encode identically. If this test fails, the format changed: bump its version.

use shoal_core::codec::Encode;
use shoal_core::*;

fn vector_entry() -> (WorkspaceId, Entry) {
    let key = DeviceKey::from_secret_bytes(&[1; 32]);
    let ws = WorkspaceId::derive(&key.public_key(), &[0; 16]);
    let origin = key.peer_id(&ws);
    let payload = Payload {
        hlc: Hlc::from_millis(1_700_000_000_000),
        author: None,
        ops: vec![
            Op { domain: Domain::TABLES, kind: 1, body: b"hello".to_vec() },
            Op { domain: Domain(9), kind: 7, body: vec![0x00, 0xff] },
        ],
    };
    let mut log = OwnLog::resume(key, ws, ChainPosition::start(&ws, &origin));
    let (entry, _) = log.append(vec![payload]).remove(0);
    (ws, entry)
}

#[test]
fn entry_v2_vector_decodes_verifies_and_reencodes() {
    let text = include_str!("../testdata/entry-v2.hex");
    let bytes = hex::decode(text.trim()).expect("the vector file is hex");
    let (ws, expected) = vector_entry();
    assert_eq!(
        hex::encode(expected.to_bytes()),
        text.trim(),
        "the writer no longer produces the vector bytes"
    );
    let entry = Entry::decode(&bytes).expect("the vector decodes");
    assert_eq!(entry, expected);
    assert_eq!(entry.to_bytes(), bytes);
    let origin = entry.origin;
    let run = Ingest::new(ws).verify(origin, ChainPosition::start(&ws, &origin), vec![entry]);
    assert!(run.stop().is_none(), "{:?}", run.stop());
    assert_eq!(run.entries().len(), 1);
}

/// The control ops of `docs/FORMAT.md` §3.4 and the invite code of §3.5, built from fixed
/// keys: one line per op, `<kind> <body hex>`, then the invite code.
fn control_vectors() -> String {
    use shoal_core::control::{ControlOp, Role};
    use shoal_core::encryption::KeyWrap;
    use shoal_core::invite::InviteCode;
    let creator = DeviceKey::from_secret_bytes(&[1; 32]);
    let ws = WorkspaceId::derive(&creator.public_key(), &[0; 16]);
    let joiner = DeviceKey::from_secret_bytes(&[2; 32]);
    let code = InviteCode::from_parts(ws, "/srv/shared", [3; 32]);
    let target = joiner.peer_id(&ws);
    let ops = [
        ControlOp::successor(
            &creator,
            ws,
            target,
            7,
            ChainHash([9; 32]),
            Some(joiner.exchange_key()),
        ),
        ControlOp::Policy { encrypted: true, creator_exchange: creator.exchange_key() },
        code.invite_op(Role::Member, 1_700_000_000_000, 2, vec![(0, KeyWrap([0xaa; 80]))]),
        code.join_op(&joiner),
        ControlOp::Request { exchange: joiner.exchange_key() },
        ControlOp::SetRole { target, role: Role::Admin },
        ControlOp::RevokeInvite { invite_key: code.key().public_key() },
        ControlOp::Remove { target, cut: 300 },
        ControlOp::Leave,
        ControlOp::ack([(creator.peer_id(&ws), 5), (target, 200)]),
        ControlOp::EpochKeys { epoch: 1, wraps: vec![(target, KeyWrap([0xbb; 80]))] },
    ];
    let mut out = String::new();
    for op in ops {
        let op = op.to_op();
        out.push_str(&format!("{} {}\n", op.kind, hex::encode(&op.body)));
    }
    out.push_str(&code.encode());
    out.push('\n');
    out
}

#[test]
fn control_op_and_invite_code_vectors_decode_and_reencode() {
    use shoal_core::control::ControlOp;
    use shoal_core::invite::InviteCode;
    let text = include_str!("../testdata/control-ops.txt");
    assert_eq!(control_vectors(), text, "the writer no longer produces the vector bytes");
    let mut lines = text.lines();
    for line in lines.by_ref().take(11) {
        let (kind, body) = line.split_once(' ').expect("`<kind> <hex>`");
        let op = Op {
            domain: Domain::CONTROL,
            kind: kind.parse().expect("a kind number"),
            body: hex::decode(body).expect("hex"),
        };
        let decoded = ControlOp::decode(&op).expect("the vector decodes");
        assert_eq!(decoded.to_op(), op);
    }
    let code = lines.next().expect("the invite code line");
    let parsed = InviteCode::parse(code).expect("the code parses");
    assert_eq!(parsed.hint, "/srv/shared");
    assert_eq!(parsed.encode(), code);
}

#[test]
#[ignore = "writes the vector file; run by hand after a deliberate format change"]
fn write_control_vectors() {
    std::fs::write(
        concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/control-ops.txt"),
        control_vectors(),
    )
    .unwrap();
}
