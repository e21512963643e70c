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
