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

/// The encryption vectors of `docs/FORMAT.md` §3.6: `name value` lines.
fn encryption_fields(text: &str) -> std::collections::BTreeMap<&str, &str> {
    text.lines().filter_map(|l| l.split_once(' ')).collect()
}

#[test]
#[ignore = "writes the vector file; run by hand after a deliberate format change"]
fn write_encryption_vectors() {
    use shoal_core::encryption::{EpochKey, Keyring, wrap_key};
    let creator = DeviceKey::from_secret_bytes(&[1; 32]);
    let ws = WorkspaceId::derive(&creator.public_key(), &[0; 16]);
    let origin = creator.peer_id(&ws);
    let key = [0x44; 32];
    let mut ring = Keyring::new(ws);
    ring.insert(0, EpochKey::from_bytes(key));
    let prev = ChainHash([0x55; 32]);
    let payload = Payload {
        hlc: Hlc::from_millis(1_700_000_000_000),
        author: None,
        ops: vec![Op { domain: Domain::TABLES, kind: 1, body: b"hello".to_vec() }],
    };
    let sealed = EntryBody::Encrypted(ring.seal(&origin, 3, &prev, &payload).unwrap());
    let mut sealed_bytes = Vec::new();
    sealed.encode_stored(&mut sealed_bytes);
    let recipient = DeviceKey::from_secret_bytes(&[2; 32]);
    let wrap = wrap_key(&ws, 0, &EpochKey::from_bytes(key), &recipient.exchange_key()).unwrap();
    let text = format!(
        "epoch_key {}\nworkspace {}\norigin {}\nindex 3\nprev_chain {}\nsealed {}\npayload {}\n\
         recipient_secret {}\nwrap_epoch 0\nwrap {}\n",
        hex::encode(key),
        ws.to_hex(),
        origin.to_hex(),
        hex::encode(prev.0),
        hex::encode(sealed_bytes),
        hex::encode(payload.to_bytes()),
        hex::encode([2u8; 32]),
        hex::encode(wrap.0),
    );
    std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/encryption.txt"), text).unwrap();
}

#[test]
fn the_encryption_vectors_open_only_where_they_were_made() {
    use shoal_core::encryption::{EpochKey, KeyWrap, Keyring, OpenError, unwrap_key};
    let text = include_str!("../testdata/encryption.txt");
    let f = encryption_fields(text);
    let bytes = |name: &str| hex::decode(f[name]).expect("hex");
    let key: [u8; 32] = bytes("epoch_key").try_into().unwrap();
    let ws = WorkspaceId::from_slice(&bytes("workspace")).unwrap();
    let origin = PeerId::from_slice(&bytes("origin")).unwrap();
    let index: u64 = f["index"].parse().unwrap();
    let prev = ChainHash(bytes("prev_chain").try_into().unwrap());
    let EntryBody::Encrypted(sealed) = EntryBody::decode_stored(&bytes("sealed")).unwrap() else {
        panic!("the sealed vector is not an encrypted entry");
    };
    let payload = Payload::decode(&bytes("payload")).unwrap();
    let mut ring = Keyring::new(ws);
    ring.insert(0, EpochKey::from_bytes(key));
    assert_eq!(ring.open(&origin, index, &prev, &sealed), Ok(payload));
    let moved = Err(OpenError::Inauthentic { epoch: 0 });
    assert_eq!(ring.open(&origin, index + 1, &prev, &sealed), moved);
    assert_eq!(ring.open(&PeerId::from_bytes([7; 16]), index, &prev, &sealed), moved);
    assert_eq!(ring.open(&origin, index, &ChainHash([0; 32]), &sealed), moved);
    let recipient: [u8; 32] = bytes("recipient_secret").try_into().unwrap();
    let wrap = KeyWrap(bytes("wrap").try_into().unwrap());
    let epoch: u32 = f["wrap_epoch"].parse().unwrap();
    let opened = unwrap_key(&ws, epoch, &wrap, &DeviceKey::from_secret_bytes(&recipient));
    assert_eq!(opened, Some(EpochKey::from_bytes(key)));
    assert_eq!(unwrap_key(&ws, epoch, &wrap, &DeviceKey::from_secret_bytes(&[3; 32])), None);
}
