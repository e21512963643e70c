//! Codec properties: round-trips, canonical bytes, bounded decoding of arbitrary input, and
//! the total order of values.

// Helpers outside #[test] functions unwrap too: a panic here is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use common::*;
use proptest::prelude::*;
use shoal_core::codec::Encode;
use shoal_core::{Domain, Op};
use shoal_tables::*;

fn hash_of(v: &Value) -> u64 {
    let mut s = DefaultHasher::new();
    v.hash(&mut s);
    s.finish()
}

const KINDS: [u32; 8] = [
    kind::CREATE_TABLE,
    kind::ADD_COLUMN,
    kind::RENAME_TABLE,
    kind::RENAME_COLUMN,
    kind::DROP_TABLE,
    kind::DROP_COLUMN,
    kind::PUT,
    kind::DELETE,
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn value_round_trips(v in arb_value()) {
        let bytes = v.to_bytes();
        let back = Value::decode(&bytes).unwrap();
        prop_assert_eq!(&back, &v);
        prop_assert_eq!(back.to_bytes(), bytes);
    }

    #[test]
    fn value_bytes_never_panic_and_are_canonical(bytes in prop::collection::vec(any::<u8>(), 0..24)) {
        if let Ok(v) = Value::decode(&bytes) {
            prop_assert_eq!(v.to_bytes(), bytes);
        }
    }

    #[test]
    fn row_key_round_trips(values in prop::collection::vec(arb_value(), 1..6)) {
        let key = RowKey::from_values(&values).unwrap();
        prop_assert_eq!(key.values().unwrap(), values);
        prop_assert_eq!(RowKey::from_bytes(key.as_bytes().to_vec()).unwrap(), key);
    }

    #[test]
    fn row_key_bytes_never_panic_and_are_canonical(bytes in prop::collection::vec(any::<u8>(), 0..32)) {
        if let Ok(key) = RowKey::from_bytes(bytes.clone()) {
            let values = key.values().unwrap();
            prop_assert_eq!(RowKey::from_values(&values).unwrap().into_bytes(), bytes);
        }
    }

    /// Every valid op round-trips through an `Op`; every invalid one is refused by
    /// `to_op`, and its unchecked bytes are refused by the decoder (so the decoder and
    /// `validate` enforce the same rules).
    #[test]
    fn table_op_round_trips_and_validation_matches_decoding(op in arb_op()) {
        let body = op.to_bytes();
        let decoded = TableOp::decode_body(op.kind(), &body);
        match op.validate() {
            Ok(()) => {
                let wrapped = op.to_op().unwrap();
                prop_assert_eq!(wrapped.domain, Domain::TABLES);
                prop_assert_eq!(&wrapped.body, &body);
                let back = TableOp::decode(&wrapped).unwrap();
                prop_assert_eq!(&back, &op);
                prop_assert_eq!(back.to_bytes(), body);
            }
            Err(e) => {
                prop_assert!(op.to_op().is_err());
                prop_assert!(
                    matches!(decoded, Err(TableOpError::Malformed(_))),
                    "validate says {e} but decode gives {decoded:?}"
                );
            }
        }
    }

    #[test]
    fn arbitrary_op_bytes_never_panic_and_are_canonical(
        kind in prop::sample::select(KINDS.to_vec()),
        body in prop::collection::vec(any::<u8>(), 0..48),
    ) {
        if let Ok(op) = TableOp::decode_body(kind, &body) {
            prop_assert_eq!(op.kind(), kind);
            prop_assert!(op.validate().is_ok());
            prop_assert_eq!(op.to_bytes(), body);
        }
    }

    /// Mutations of valid encodings (one byte changed, inserted or removed) never panic,
    /// and anything that still decodes is canonical.
    #[test]
    fn mutated_op_bytes_never_panic_and_are_canonical(
        op in arb_op(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        how in 0u8..3,
    ) {
        let mut body = op.to_bytes();
        let i = at.index(body.len() + 1);
        match how {
            0 if i < body.len() => body[i] = byte,
            1 => body.insert(i, byte),
            _ if i < body.len() => { body.remove(i); }
            _ => body.push(byte),
        }
        let wrapped = Op { domain: Domain::TABLES, kind: op.kind(), body: body.clone() };
        if let Ok(back) = TableOp::decode(&wrapped) {
            prop_assert!(back.validate().is_ok());
            prop_assert_eq!(back.to_bytes(), body);
        }
    }

    #[test]
    fn unknown_kinds_need_upgrade(kind in any::<u32>(), body in prop::collection::vec(any::<u8>(), 0..8)) {
        prop_assume!(!KINDS.contains(&kind));
        let err = TableOp::decode(&Op { domain: Domain::TABLES, kind, body }).unwrap_err();
        prop_assert_eq!(err, TableOpError::UnknownKind { kind });
    }

    /// The order is total and consistent: sorting gives a sequence where every earlier
    /// element is <= every later one (transitivity), `cmp` is antisymmetric, and equality
    /// agrees with equal canonical bytes and equal hashes.
    #[test]
    fn value_order_is_total(mut values in prop::collection::vec(arb_value(), 0..24)) {
        values.sort();
        for i in 0..values.len() {
            for j in 0..values.len() {
                let (a, b) = (&values[i], &values[j]);
                prop_assert_eq!(a.cmp(b), b.cmp(a).reverse());
                if i < j {
                    prop_assert!(a <= b, "{a:?} sorted before {b:?}");
                }
                prop_assert_eq!(a == b, a.to_bytes() == b.to_bytes());
                if a == b {
                    prop_assert_eq!(hash_of(a), hash_of(b));
                }
            }
        }
    }

    #[test]
    fn any_nan_is_the_canonical_nan(sign in any::<bool>(), mantissa in 1u64..(1 << 52)) {
        let bits = (u64::from(sign) << 63) | (0x7ff << 52) | mantissa;
        let f = f64::from_bits(bits);
        prop_assert!(f.is_nan());
        let raw = Value::Real(f);
        let canon = Value::real(f);
        prop_assert_eq!(canon.to_bytes(), Value::real(f64::NAN).to_bytes());
        prop_assert_eq!(&raw, &canon);
        prop_assert_eq!(raw.to_bytes(), canon.to_bytes());
        let mut nonc = vec![2u8];
        nonc.extend_from_slice(&bits.to_le_bytes());
        prop_assert_eq!(Value::decode(&nonc).is_ok(), bits == CANONICAL_NAN_BITS);
    }
}

#[test]
fn negative_zero_sorts_before_positive_zero() {
    assert!(Value::real(-0.0) < Value::real(0.0));
    assert_ne!(Value::real(-0.0), Value::real(0.0));
    assert!(Value::real(f64::INFINITY) < Value::real(f64::NAN));
    assert!(Value::Integer(i64::MAX) < Value::real(f64::NEG_INFINITY));
}

/// One exact byte vector per op kind (also written out in docs/TABLES.md §3).
#[test]
fn op_vectors() {
    let t = TableId(0x11);
    let c = ColumnId(0x22);
    let key = RowKey::from_values(&[Value::Integer(1)]).unwrap();
    let le = |n: u64| n.to_le_bytes().to_vec();
    let cat = |parts: &[&[u8]]| parts.concat();
    let cases: Vec<(TableOp, u32, Vec<u8>)> = vec![
        (
            TableOp::CreateTable {
                table: t,
                name: "t".into(),
                primary_key: vec![PkColumn { column: c, name: "id".into(), ty: ColumnType::Text }],
            },
            1,
            cat(&[&le(0x11), &[1, b't', 1], &le(0x22), &[2, b'i', b'd', 3]]),
        ),
        (
            TableOp::AddColumn {
                table: t,
                column: c,
                name: "n".into(),
                ty: ColumnType::Integer,
                merge: MergeKind::Counter,
            },
            2,
            cat(&[&le(0x11), &le(0x22), &[1, b'n', 1, 1]]),
        ),
        (TableOp::RenameTable { table: t, name: "u".into() }, 3, cat(&[&le(0x11), &[1, b'u']])),
        (
            TableOp::RenameColumn { table: t, column: c, name: "v".into() },
            4,
            cat(&[&le(0x11), &le(0x22), &[1, b'v']]),
        ),
        (TableOp::DropTable { table: t }, 5, le(0x11)),
        (TableOp::DropColumn { table: t, column: c }, 6, cat(&[&le(0x11), &le(0x22)])),
        (
            TableOp::Put {
                table: t,
                key: key.clone(),
                cells: vec![
                    (c, CellWrite::Set(Value::Text("x".into()))),
                    (ColumnId(0x33), CellWrite::Max(Value::Null)),
                    (ColumnId(0x44), CellWrite::Add(-2)),
                ],
            },
            16,
            cat(&[
                &le(0x11),
                &[2, 1, 2],
                &[3],
                &le(0x22),
                &[0, 3, 1, b'x'],
                &le(0x33),
                &[1, 0],
                &le(0x44),
                &[2, 3],
            ]),
        ),
        (TableOp::Delete { table: t, key }, 17, cat(&[&le(0x11), &[2, 1, 2]])),
    ];
    for (op, kind, body) in cases {
        let wrapped = op.to_op().unwrap();
        assert_eq!(wrapped.kind, kind, "{op:?}");
        assert_eq!(wrapped.body, body, "{op:?}");
        assert_eq!(TableOp::decode(&wrapped).unwrap(), op);
    }
}

#[test]
fn decoder_rejects_rule_breaking_bodies() {
    let le = |n: u64| n.to_le_bytes().to_vec();
    let bad: Vec<(u32, Vec<u8>)> = vec![
        // CreateTable with no key column.
        (1, [&le(1)[..], &[1, b't', 0]].concat()),
        // Empty table name.
        (1, [&le(1)[..], &[0, 1], &le(2), &[1, b'k', 0]].concat()),
        // Two key columns with the same id.
        (1, [&le(1)[..], &[1, b't', 2], &le(2), &[1, b'a', 0], &le(2), &[1, b'b', 0]].concat()),
        // Counter column declared TEXT.
        (2, [&le(1)[..], &le(2), &[1, b'n', 3, 1]].concat()),
        // Unknown column type / merge kind.
        (2, [&le(1)[..], &le(2), &[1, b'n', 5, 0]].concat()),
        (2, [&le(1)[..], &le(2), &[1, b'n', 0, 3]].concat()),
        // Name with NUL.
        (3, [&le(1)[..], &[1, 0]].concat()),
        // Name not UTF-8.
        (3, [&le(1)[..], &[1, 0xff]].concat()),
        // Put with an empty key, a duplicate cell, an unknown write tag, NUL in text.
        (16, [&le(1)[..], &[0, 0]].concat()),
        (16, [&le(1)[..], &[1, 0, 2], &le(3), &[2, 0], &le(3), &[2, 0]].concat()),
        (16, [&le(1)[..], &[1, 0, 1], &le(3), &[3]].concat()),
        (16, [&le(1)[..], &[1, 0, 1], &le(3), &[0, 3, 1, 0]].concat()),
        // Trailing byte.
        (5, [&le(1)[..], &[0]].concat()),
    ];
    for (kind, body) in bad {
        let err = TableOp::decode_body(kind, &body).unwrap_err();
        assert!(matches!(err, TableOpError::Malformed(_)), "kind {kind} {body:?}: {err:?}");
    }
}
