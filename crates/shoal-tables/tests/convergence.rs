//! Convergence: replicas that receive the same entries, in different orders and with
//! duplicates, end in identical states; and the incremental model agrees with the merge
//! rules of DESIGN §6 computed from scratch.

// Helpers outside #[test] functions unwrap too: a panic here is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashSet};

use common::*;
use proptest::prelude::*;
use shoal_core::{Domain, Hlc, Op, Payload};
use shoal_tables::*;

const TABLE_NAMES: [&str; 4] = ["a", "b", "c", "A"];
const COLUMN_NAMES: [&str; 5] = ["x", "y", "z", "id", "X"];

fn table_ids() -> Vec<TableId> {
    vec![TableId::from_name("a"), TableId::from_name("b"), TableId(7)]
}

fn pk_variants() -> Vec<Vec<(&'static str, ColumnType)>> {
    vec![
        vec![("id", ColumnType::Integer)],
        vec![("id", ColumnType::Text)],
        vec![("k1", ColumnType::Any), ("k2", ColumnType::Any)],
    ]
}

fn column_defs() -> Vec<(ColumnType, MergeKind)> {
    vec![
        (ColumnType::Any, MergeKind::Lww),
        (ColumnType::Integer, MergeKind::Counter),
        (ColumnType::Any, MergeKind::Max),
        (ColumnType::Text, MergeKind::Lww),
    ]
}

fn keys() -> Vec<RowKey> {
    let k = |v: Vec<Value>| RowKey::from_values(&v).unwrap();
    vec![
        k(vec![Value::Integer(1)]),
        k(vec![Value::Integer(2)]),
        k(vec![Value::Text("a".into())]),
        k(vec![Value::Integer(1), Value::Integer(2)]),
        k(vec![Value::Null, Value::Text("a".into())]),
        k(vec![Value::real(-0.0)]),
        k(vec![Value::real(0.0)]),
    ]
}

fn small_write() -> impl Strategy<Value = CellWrite> {
    prop_oneof![
        small_value().prop_map(CellWrite::Set),
        small_value().prop_map(CellWrite::Max),
        prop::sample::select(vec![-3i64, -1, 1, 2, i64::MAX, i64::MIN]).prop_map(CellWrite::Add),
    ]
}

/// One random op over a small universe of tables, columns, keys and values, so that
/// definitions conflict, names collide and writes hit the same cells.
fn universe_op() -> impl Strategy<Value = TableOp> {
    let table = || prop::sample::select(table_ids());
    let column = |t: TableId, i: usize| ColumnId::from_name(t, COLUMN_NAMES[i % 4]);
    prop_oneof![
        2 => (table(), prop::sample::select(TABLE_NAMES.to_vec()), prop::sample::select(pk_variants()))
            .prop_map(|(t, name, pk)| TableOp::CreateTable {
                table: t,
                name: name.into(),
                primary_key: pk.iter().map(|(n, ty)| PkColumn::new(t, n, *ty)).collect(),
            }),
        2 => (table(), 0..4usize, prop::sample::select(COLUMN_NAMES.to_vec()), prop::sample::select(column_defs()))
            .prop_map(move |(t, c, name, (ty, merge))| TableOp::AddColumn {
                table: t, column: column(t, c), name: name.into(), ty, merge,
            }),
        1 => (table(), prop::sample::select(TABLE_NAMES.to_vec()))
            .prop_map(|(t, name)| TableOp::RenameTable { table: t, name: name.into() }),
        1 => (table(), 0..5usize, prop::sample::select(COLUMN_NAMES.to_vec()))
            .prop_map(move |(t, c, name)| TableOp::RenameColumn {
                table: t,
                column: if c == 4 { ColumnId::from_name(t, "k1") } else { column(t, c) },
                name: name.into(),
            }),
        1 => table().prop_map(|t| TableOp::DropTable { table: t }),
        1 => (table(), 0..4usize).prop_map(move |(t, c)| TableOp::DropColumn { table: t, column: column(t, c) }),
        8 => (table(), prop::sample::select(keys()), prop::collection::btree_map(0..4usize, small_write(), 0..4))
            .prop_map(move |(t, key, cells)| TableOp::Put {
                table: t,
                key,
                cells: cells.into_iter().map(|(c, w)| (column(t, c), w)).collect(),
            }),
        3 => (table(), prop::sample::select(keys())).prop_map(|(t, key)| TableOp::Delete { table: t, key }),
    ]
}

/// An entry: a small raw HLC (so op HLCs collide across entries and devices) and 1 to 4
/// ops, sometimes with a foreign-domain op in between.
fn entry() -> impl Strategy<Value = Payload> {
    (1u64..12, prop::collection::vec((universe_op(), prop::bool::weighted(0.1)), 1..5)).prop_map(
        |(hlc, ops)| {
            let mut out = Vec::new();
            for (op, foreign) in ops {
                if foreign {
                    out.push(Op { domain: Domain::DOCS, kind: 1, body: vec![0] });
                }
                out.push(op.to_op().unwrap());
            }
            Payload { hlc: Hlc::from_u64(hlc), author: None, ops: out }
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// 3 to 5 devices each write a few entries; every device then receives every entry
    /// (its own included) in its own random order with duplicates, applying each
    /// (origin, index) once, as a replica does. All end with identical views, hidden
    /// states and conflict reports.
    #[test]
    fn replicas_converge(
        logs in prop::collection::vec(prop::collection::vec(entry(), 1..6), 3..6),
        seed in any::<u64>(),
    ) {
        let all: Vec<((usize, usize), &Payload)> = logs
            .iter()
            .enumerate()
            .flat_map(|(o, log)| log.iter().enumerate().map(move |(i, p)| ((o, i), p)))
            .collect();
        let mut results = Vec::new();
        for receiver in 0..logs.len() {
            let mut rng = Shuffler::new(seed ^ (receiver as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut delivery: Vec<usize> = (0..all.len()).collect();
            for _ in 0..all.len() {
                delivery.push(rng.below(all.len()));
            }
            rng.shuffle(&mut delivery);
            let mut seen = HashSet::new();
            let mut m = TablesModel::new();
            for i in delivery {
                let (id, payload) = all[i];
                if seen.insert(id) {
                    m.apply_payload(payload).unwrap();
                }
            }
            results.push(m);
        }
        let first = &results[0];
        for other in &results[1..] {
            prop_assert_eq!(other.hidden_dump(), first.hidden_dump());
            prop_assert_eq!(other.dump(), first.dump());
            prop_assert_eq!(other.conflicts(), first.conflicts());
        }
    }
}

// --- The data rules computed from scratch -------------------------------------------------

/// Fixed schema, declared at HLC 1000 (after every data op and drop below), so the table
/// and its columns are visible and the tombstones only act on data.
fn oracle_schema() -> (TableId, Vec<(ColumnId, MergeKind)>, Vec<TableOp>) {
    let t = TableId::from_name("t");
    let mut ops = vec![TableOp::CreateTable {
        table: t,
        name: "t".into(),
        primary_key: vec![PkColumn::new(t, "id", ColumnType::Integer)],
    }];
    let mut cols = Vec::new();
    for (name, ty, merge) in [
        ("l", ColumnType::Any, MergeKind::Lww),
        ("c", ColumnType::Integer, MergeKind::Counter),
        ("m", ColumnType::Any, MergeKind::Max),
    ] {
        ops.push(TableOp::add_column(t, name, ty, merge));
        cols.push((ColumnId::from_name(t, name), merge));
    }
    // Column ids decide the view order (all defined at the same HLC).
    cols.sort_by_key(|(c, _)| *c);
    (t, cols, ops)
}

#[derive(Debug, Clone)]
enum DataOp {
    Put(i64, Vec<(usize, CellWrite)>),
    Delete(i64),
    DropColumn(usize),
    DropTable,
}

fn data_op() -> impl Strategy<Value = DataOp> {
    prop_oneof![
        8 => (1i64..4, prop::collection::btree_map(0..3usize, small_write(), 0..3))
            .prop_map(|(k, cells)| DataOp::Put(k, cells.into_iter().collect())),
        3 => (1i64..4).prop_map(DataOp::Delete),
        1 => (0..3usize).prop_map(DataOp::DropColumn),
        1 => Just(DataOp::DropTable),
    ]
}

/// The visible rows, straight from DESIGN §6 over the whole set of ops.
fn oracle_rows(ops: &[(Hlc, DataOp)], cols: &[(ColumnId, MergeKind)]) -> Vec<RowView> {
    let table_drop =
        ops.iter().filter(|(_, o)| matches!(o, DataOp::DropTable)).map(|(h, _)| *h).max();
    let col_drop = |c: usize| {
        ops.iter()
            .filter(|(_, o)| matches!(o, DataOp::DropColumn(x) if *x == c))
            .map(|(h, _)| *h)
            .max()
    };
    let mut rows = BTreeMap::new();
    for k in 1i64..4 {
        let deletes = ops
            .iter()
            .filter(|(_, o)| matches!(o, DataOp::Delete(x) if *x == k))
            .map(|(h, _)| *h)
            .max();
        let tomb = deletes.max(table_drop);
        let puts: Vec<(Hlc, &Vec<(usize, CellWrite)>)> = ops
            .iter()
            .filter_map(|(h, o)| match o {
                DataOp::Put(x, cells) if *x == k && Some(*h) > tomb => Some((*h, cells)),
                _ => None,
            })
            .collect();
        if puts.is_empty() {
            continue;
        }
        let mut values = vec![Value::Integer(k)];
        for (i, (_, merge)) in cols.iter().enumerate() {
            let floor = tomb.max(col_drop(i));
            let writes = puts.iter().filter(|(h, _)| Some(*h) > floor).flat_map(|(h, cells)| {
                cells.iter().filter(|(c, _)| *c == i).map(move |(_, w)| (*h, w))
            });
            let v = match merge {
                MergeKind::Lww => writes
                    .filter_map(|(h, w)| match w {
                        CellWrite::Set(v) => Some((h, v.clone())),
                        _ => None,
                    })
                    .max()
                    .map_or(Value::Null, |(_, v)| v),
                MergeKind::Counter => Value::Integer(
                    writes
                        .filter_map(|(_, w)| match w {
                            CellWrite::Add(n) => Some(*n),
                            _ => None,
                        })
                        .fold(0i64, i64::wrapping_add),
                ),
                MergeKind::Max => writes
                    .filter_map(|(_, w)| match w {
                        CellWrite::Max(v) => Some(v.clone()),
                        _ => None,
                    })
                    .max()
                    .unwrap_or(Value::Null),
            };
            values.push(v);
        }
        let key = RowKey::from_values(&[Value::Integer(k)]).unwrap();
        rows.insert(key.clone(), RowView { key, values });
    }
    rows.into_values().collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The incremental, pruning model shows exactly what the rules say, whatever the
    /// order of arrival (schema included: it may arrive first, last or in between).
    #[test]
    fn model_matches_the_rules_computed_from_scratch(
        ops in prop::collection::vec((1u64..20, data_op()), 0..24),
        seed in any::<u64>(),
    ) {
        let (t, cols, schema) = oracle_schema();
        let ops: Vec<(Hlc, DataOp)> = ops.into_iter().map(|(h, o)| (Hlc::from_u64(h), o)).collect();
        let expected = oracle_rows(&ops, &cols);
        let mut order: Vec<usize> = (0..ops.len() + 1).collect();
        Shuffler::new(seed).shuffle(&mut order);
        let mut m = TablesModel::new();
        for i in order {
            if i == ops.len() {
                for op in &schema {
                    m.apply(Hlc::from_u64(1000), op).unwrap();
                }
                continue;
            }
            let (hlc, op) = &ops[i];
            let op = match op {
                DataOp::Put(k, cells) => TableOp::Put {
                    table: t,
                    key: RowKey::from_values(&[Value::Integer(*k)]).unwrap(),
                    cells: cells.iter().map(|(c, w)| (cols[*c].0, w.clone())).collect(),
                },
                DataOp::Delete(k) => TableOp::Delete {
                    table: t,
                    key: RowKey::from_values(&[Value::Integer(*k)]).unwrap(),
                },
                DataOp::DropColumn(c) => TableOp::DropColumn { table: t, column: cols[*c].0 },
                DataOp::DropTable => TableOp::DropTable { table: t },
            };
            m.apply(*hlc, &op).unwrap();
        }
        let dump = m.dump();
        prop_assert_eq!(dump.tables.len(), 1);
        prop_assert_eq!(&dump.tables[0].rows, &expected);
    }
}
