//! Helpers and proptest strategies shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use proptest::prelude::*;
use shoal_core::Hlc;
use shoal_tables::*;

/// A timestamp from a raw integer.
pub fn h(n: u64) -> Hlc {
    Hlc::from_u64(n)
}

/// Any value, NaN bit patterns and NUL-free text included.
pub fn arb_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::Integer),
        any::<f64>().prop_map(Value::real),
        any::<u64>().prop_map(|b| Value::real(f64::from_bits(b))),
        prop::sample::select(vec![0.0, -0.0, f64::NAN, -f64::NAN, f64::INFINITY, 1.0])
            .prop_map(Value::Real),
        "[^\u{0}]{0,12}".prop_map(Value::Text),
        prop::collection::vec(any::<u8>(), 0..12).prop_map(Value::Blob),
    ]
}

/// A small set of values that collide often: equal values across types, -0.0 and +0.0,
/// NaN.
pub fn small_value() -> impl Strategy<Value = Value> {
    prop::sample::select(vec![
        Value::Null,
        Value::Integer(0),
        Value::Integer(1),
        Value::Integer(2),
        Value::real(-0.0),
        Value::real(0.0),
        Value::real(f64::NAN),
        Value::Text("a".into()),
        Value::Text("b".into()),
        Value::Blob(vec![0]),
    ])
}

/// A name that may break the stored-name rules (empty, NUL) now and then.
pub fn arb_name() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[a-zA-Z_][a-zA-Z0-9_ é]{0,10}",
        1 => Just(String::new()),
        1 => Just("a\u{0}b".to_owned()),
    ]
}

pub fn arb_type() -> impl Strategy<Value = ColumnType> {
    prop::sample::select(ColumnType::ALL.to_vec())
}

pub fn arb_merge() -> impl Strategy<Value = MergeKind> {
    prop::sample::select(MergeKind::ALL.to_vec())
}

pub fn arb_key() -> impl Strategy<Value = RowKey> {
    prop::collection::vec(arb_value(), 1..4).prop_map(|v| RowKey::from_values(&v).unwrap())
}

pub fn arb_write() -> impl Strategy<Value = CellWrite> {
    prop_oneof![
        arb_value().prop_map(CellWrite::Set),
        arb_value().prop_map(CellWrite::Max),
        any::<i64>().prop_map(CellWrite::Add),
    ]
}

/// Any table op, valid or not (ids are small so duplicates happen).
pub fn arb_op() -> impl Strategy<Value = TableOp> {
    let id = || 0u64..4;
    prop_oneof![
        (any::<u64>(), arb_name(), prop::collection::vec((id(), arb_name(), arb_type()), 0..4))
            .prop_map(|(t, name, pk)| TableOp::CreateTable {
                table: TableId(t),
                name,
                primary_key: pk
                    .into_iter()
                    .map(|(c, name, ty)| PkColumn { column: ColumnId(c), name, ty })
                    .collect(),
            }),
        (any::<u64>(), any::<u64>(), arb_name(), arb_type(), arb_merge()).prop_map(
            |(t, c, name, ty, merge)| TableOp::AddColumn {
                table: TableId(t),
                column: ColumnId(c),
                name,
                ty,
                merge
            }
        ),
        (any::<u64>(), arb_name())
            .prop_map(|(t, name)| TableOp::RenameTable { table: TableId(t), name }),
        (any::<u64>(), any::<u64>(), arb_name()).prop_map(|(t, c, name)| {
            TableOp::RenameColumn { table: TableId(t), column: ColumnId(c), name }
        }),
        any::<u64>().prop_map(|t| TableOp::DropTable { table: TableId(t) }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(t, c)| TableOp::DropColumn { table: TableId(t), column: ColumnId(c) }),
        (any::<u64>(), arb_key(), prop::collection::vec((id(), arb_write()), 0..4)).prop_map(
            |(t, key, cells)| TableOp::Put {
                table: TableId(t),
                key,
                cells: cells.into_iter().map(|(c, w)| (ColumnId(c), w)).collect(),
            }
        ),
        (any::<u64>(), arb_key()).prop_map(|(t, key)| TableOp::Delete { table: TableId(t), key }),
    ]
}

/// A deterministic generator for shuffles inside a property (xorshift64*).
pub struct Shuffler(u64);

impl Shuffler {
    pub fn new(seed: u64) -> Self {
        Shuffler(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}
