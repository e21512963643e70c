//! One test per merge rule of DESIGN §6, each applying its ops in every order that
//! matters and checking that all orders agree.

// Helpers outside #[test] functions unwrap too: a panic here is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use shoal_core::codec::Encode;
use shoal_core::{Domain, Hlc, Op, Payload};
use shoal_tables::*;

/// Table "t": key `id INTEGER`; columns `l` (LWW), `c` (counter), `m` (max).
struct Fixture {
    t: TableId,
    l: ColumnId,
    c: ColumnId,
    m: ColumnId,
}

impl Fixture {
    fn new() -> Self {
        let t = TableId::from_name("t");
        Fixture {
            t,
            l: ColumnId::from_name(t, "l"),
            c: ColumnId::from_name(t, "c"),
            m: ColumnId::from_name(t, "m"),
        }
    }

    /// The schema, at HLCs 1 to 4 (so the view shows id, l, c, m).
    fn schema(&self) -> Vec<(Hlc, TableOp)> {
        let t = self.t;
        vec![
            (h(1), create(t, "t", &[("id", ColumnType::Integer)])),
            (h(2), TableOp::add_column(t, "l", ColumnType::Any, MergeKind::Lww)),
            (h(3), TableOp::add_column(t, "c", ColumnType::Integer, MergeKind::Counter)),
            (h(4), TableOp::add_column(t, "m", ColumnType::Any, MergeKind::Max)),
        ]
    }

    fn put(&self, id: i64, cells: Vec<(ColumnId, CellWrite)>) -> TableOp {
        TableOp::Put { table: self.t, key: key(id), cells }
    }

    fn delete(&self, id: i64) -> TableOp {
        TableOp::Delete { table: self.t, key: key(id) }
    }
}

fn key(id: i64) -> RowKey {
    RowKey::from_values(&[Value::Integer(id)]).unwrap()
}

fn create(t: TableId, name: &str, pk: &[(&str, ColumnType)]) -> TableOp {
    TableOp::CreateTable {
        table: t,
        name: name.into(),
        primary_key: pk.iter().map(|(n, ty)| PkColumn::new(t, n, *ty)).collect(),
    }
}

fn text(s: &str) -> Value {
    Value::text(s).unwrap()
}

/// Applies `ops` in every order (up to 6 ops: all permutations; more: rotations and
/// reversal), asserts that every order gives the same hidden state, and returns the model.
fn converge(ops: &[(Hlc, TableOp)]) -> TablesModel {
    let mut orders: Vec<Vec<usize>> = Vec::new();
    let n = ops.len();
    if n <= 6 {
        permutations(&mut (0..n).collect(), 0, &mut orders);
    } else {
        for r in 0..n {
            let rot: Vec<usize> = (0..n).map(|i| (i + r) % n).collect();
            orders.push(rot.iter().rev().copied().collect());
            orders.push(rot);
        }
    }
    let mut first: Option<TablesModel> = None;
    for order in orders {
        let mut m = TablesModel::new();
        for i in &order {
            m.apply(ops[*i].0, &ops[*i].1).unwrap();
        }
        match &first {
            None => first = Some(m),
            Some(f) => {
                assert_eq!(m.hidden_dump(), f.hidden_dump(), "order {order:?}");
                assert_eq!(m.dump(), f.dump(), "order {order:?}");
                assert_eq!(m.conflicts(), f.conflicts(), "order {order:?}");
            }
        }
    }
    first.unwrap_or_default()
}

fn permutations(v: &mut Vec<usize>, k: usize, out: &mut Vec<Vec<usize>>) {
    if k == v.len() {
        out.push(v.clone());
        return;
    }
    for i in k..v.len() {
        v.swap(k, i);
        permutations(v, k + 1, out);
        v.swap(k, i);
    }
}

/// The schema ops first (in order), then `data` in every order.
fn with_schema(f: &Fixture, data: &[(Hlc, TableOp)]) -> TablesModel {
    let m = converge(data);
    let mut out = TablesModel::new();
    for (hlc, op) in f.schema().iter().chain(data) {
        out.apply(*hlc, op).unwrap();
    }
    // Schema first or last gives the same state.
    let mut late = m.clone();
    for (hlc, op) in f.schema() {
        late.apply(hlc, &op).unwrap();
    }
    assert_eq!(late.hidden_dump(), out.hidden_dump());
    out
}

/// The visible values of row `id` of the only table, or None if the row is not shown.
fn row(m: &TablesModel, id: i64) -> Option<Vec<Value>> {
    let dump = m.dump();
    let table = dump.tables.first()?;
    table.rows.iter().find(|r| r.key == key(id)).map(|r| r.values.clone())
}

#[test]
fn delete_wins_a_tie() {
    let f = Fixture::new();
    let m = with_schema(
        &f,
        &[(h(10), f.put(1, vec![(f.l, CellWrite::Set(Value::Integer(5)))])), (h(10), f.delete(1))],
    );
    assert_eq!(row(&m, 1), None);
    let hidden = m.hidden_dump();
    let r = &hidden.tables[&f.t].rows[&key(1)];
    assert_eq!(r.tombstone, Some(h(10)));
    assert_eq!(r.last_write, None);
    assert!(r.cells.is_empty());
}

#[test]
fn stale_write_after_delete_is_ignored() {
    let f = Fixture::new();
    let m = with_schema(
        &f,
        &[
            (h(5), f.put(1, vec![(f.l, CellWrite::Set(Value::Integer(1)))])),
            (h(10), f.delete(1)),
            (h(7), f.put(1, vec![(f.l, CellWrite::Set(Value::Integer(2)))])),
        ],
    );
    assert_eq!(row(&m, 1), None);
    let hidden = m.hidden_dump();
    let r = &hidden.tables[&f.t].rows[&key(1)];
    assert_eq!((r.tombstone, r.last_write, r.cells.len()), (Some(h(10)), None, 0));
}

#[test]
fn revived_row_shows_only_post_delete_cells() {
    let f = Fixture::new();
    let m = with_schema(
        &f,
        &[
            (
                h(5),
                f.put(
                    1,
                    vec![
                        (f.l, CellWrite::Set(text("old"))),
                        (f.c, CellWrite::Add(3)),
                        (f.m, CellWrite::Max(Value::Integer(9))),
                    ],
                ),
            ),
            (h(10), f.delete(1)),
            (h(12), f.put(1, vec![(f.c, CellWrite::Add(1))])),
        ],
    );
    assert_eq!(
        row(&m, 1),
        Some(vec![Value::Integer(1), Value::Null, Value::Integer(1), Value::Null])
    );
    // A revival by an empty put shows the row with every cell empty.
    let m = with_schema(
        &f,
        &[
            (h(5), f.put(2, vec![(f.c, CellWrite::Add(3))])),
            (h(10), f.delete(2)),
            (h(11), f.put(2, vec![])),
        ],
    );
    assert_eq!(
        row(&m, 2),
        Some(vec![Value::Integer(2), Value::Null, Value::Integer(0), Value::Null])
    );
}

#[test]
fn counter_excludes_increments_older_than_delete() {
    let f = Fixture::new();
    let m = with_schema(
        &f,
        &[
            (h(5), f.put(1, vec![(f.c, CellWrite::Add(1))])),
            (h(15), f.put(1, vec![(f.c, CellWrite::Add(2))])),
            (h(15), f.put(1, vec![(f.c, CellWrite::Add(40))])),
            (h(16), f.put(1, vec![(f.c, CellWrite::Add(i64::MAX))])),
            (h(10), f.delete(1)),
        ],
    );
    // 2 + 40 + i64::MAX wraps.
    let expected = 42i64.wrapping_add(i64::MAX);
    assert_eq!(row(&m, 1).unwrap()[2], Value::Integer(expected));
    let hidden = m.hidden_dump();
    let adds: Vec<_> = hidden.tables[&f.t].rows[&key(1)].cells[&f.c].adds.entries().collect();
    assert_eq!(adds, vec![(h(15), 42), (h(16), i64::MAX)]);
}

#[test]
fn nan_is_canonical() {
    let other_nan = f64::from_bits(0xfff0_0000_0000_0001);
    assert!(other_nan.is_nan());
    assert_eq!(Value::real(other_nan).to_bytes(), Value::real(f64::NAN).to_bytes());
    assert_eq!(Value::real(other_nan).to_bytes(), [2, 0, 0, 0, 0, 0, 0, 0xf8, 0x7f]);
    assert_eq!(Value::Real(other_nan), Value::real(f64::NAN));
    let mut bytes = vec![2];
    bytes.extend_from_slice(&other_nan.to_bits().to_le_bytes());
    assert!(Value::decode(&bytes).is_err(), "non-canonical NaN bits are rejected");
    // Two devices writing different NaN payloads at the same HLC agree on one value.
    let f = Fixture::new();
    let m = with_schema(
        &f,
        &[
            (h(5), f.put(1, vec![(f.l, CellWrite::Set(Value::Real(other_nan)))])),
            (h(5), f.put(1, vec![(f.l, CellWrite::Set(Value::real(f64::NAN)))])),
        ],
    );
    assert_eq!(row(&m, 1).unwrap()[1].to_bytes(), Value::real(f64::NAN).to_bytes());
}

#[test]
fn equal_hlc_writes_resolve_by_value_order() {
    let f = Fixture::new();
    let m = with_schema(
        &f,
        &[
            (
                h(5),
                f.put(
                    1,
                    vec![
                        (f.l, CellWrite::Set(Value::Integer(99))),
                        (f.m, CellWrite::Max(Value::real(0.0))),
                    ],
                ),
            ),
            (
                h(5),
                f.put(
                    1,
                    vec![
                        (f.l, CellWrite::Set(text("a"))),
                        (f.m, CellWrite::Max(Value::real(-0.0))),
                    ],
                ),
            ),
            (h(5), f.put(1, vec![(f.l, CellWrite::Set(Value::real(1e300)))])),
            (h(4), f.put(1, vec![(f.l, CellWrite::Set(Value::Blob(vec![1])))])),
        ],
    );
    // TEXT > REAL > INTEGER at the same HLC; the earlier BLOB loses despite its type.
    let values = row(&m, 1).unwrap();
    assert_eq!(values[1], text("a"));
    assert_eq!(values[3].to_bytes(), Value::real(0.0).to_bytes(), "+0.0 > -0.0");
}

#[test]
fn nul_in_text_is_refused() {
    assert!(matches!(Value::text("a\0b"), Err(ValidationError::TextContainsNul { position: 1 })));
    assert!(Value::decode(&[3, 3, b'a', 0, b'b']).is_err());
    let f = Fixture::new();
    let bad = f.put(1, vec![(f.l, CellWrite::Set(Value::Text("a\0".into())))]);
    assert!(bad.to_op().is_err());
    let mut m = TablesModel::new();
    assert!(matches!(m.apply(h(5), &bad), Err(TableOpError::Invalid(_))));
    assert_eq!(m, TablesModel::new(), "a refused op changes nothing");
    assert!(RowKey::from_values(&[Value::Text("\0".into())]).is_err());
    let table = TableOp::RenameTable { table: f.t, name: "a\0".into() };
    assert!(table.to_op().is_err());
}

#[test]
fn drop_table_wins_a_tie() {
    let f = Fixture::new();
    let mut ops = f.schema();
    ops.push((h(5), f.put(1, vec![(f.l, CellWrite::Set(Value::Integer(1)))])));
    ops.push((h(1), TableOp::DropTable { table: f.t }));
    let m = converge(&ops);
    assert!(m.dump().tables.is_empty(), "drop at the creation HLC hides the table");
    // Re-creating after the drop shows the table, without the rows written before the drop.
    ops.push((h(8), TableOp::DropTable { table: f.t }));
    ops.push((h(9), create(f.t, "t", &[("id", ColumnType::Integer)])));
    ops.push((h(9), f.put(2, vec![])));
    let m = converge(&ops);
    let dump = m.dump();
    assert_eq!(dump.tables.len(), 1);
    assert_eq!(dump.tables[0].rows.len(), 1);
    assert_eq!(dump.tables[0].rows[0].key, key(2));
    // Columns were defined before the drop at 8: they are dropped with the table.
    assert_eq!(dump.tables[0].columns.len(), 1, "{:?}", dump.tables[0].columns);
    assert!(!m.hidden_dump().tables[&f.t].rows.contains_key(&key(1)), "forgotten");
}

#[test]
fn drop_column_wins_a_tie_and_hides_older_cells() {
    let f = Fixture::new();
    let mut ops = f.schema();
    ops.push((
        h(5),
        f.put(1, vec![(f.l, CellWrite::Set(Value::Integer(1))), (f.c, CellWrite::Add(2))]),
    ));
    ops.push((h(2), TableOp::DropColumn { table: f.t, column: f.l }));
    let m = converge(&ops);
    let names: Vec<_> = m.dump().tables[0].columns.iter().map(|c| c.name.clone()).collect();
    assert_eq!(names, ["id", "c", "m"]);
    // Re-adding the column after a later drop shows only cells written after that drop.
    ops.push((h(6), TableOp::DropColumn { table: f.t, column: f.l }));
    ops.push((h(7), TableOp::add_column(f.t, "l", ColumnType::Any, MergeKind::Lww)));
    ops.push((h(6), f.put(2, vec![(f.l, CellWrite::Set(Value::Integer(2)))])));
    ops.push((h(7), f.put(3, vec![(f.l, CellWrite::Set(Value::Integer(3)))])));
    let m = converge(&ops);
    let t = &m.dump().tables[0];
    let names: Vec<_> = t.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["id", "c", "m", "l"], "re-added column moves to the end");
    let l: Vec<_> = t.rows.iter().map(|r| r.values[3].clone()).collect();
    assert_eq!(l, [Value::Null, Value::Null, Value::Integer(3)]);
}

#[test]
fn rename_is_last_writer_wins() {
    let f = Fixture::new();
    let ops = vec![
        (h(1), create(f.t, "t", &[("id", ColumnType::Integer)])),
        (h(5), TableOp::RenameTable { table: f.t, name: "b".into() }),
        (h(7), TableOp::RenameTable { table: f.t, name: "c".into() }),
        (h(7), TableOp::RenameTable { table: f.t, name: "d".into() }),
        (
            h(6),
            TableOp::RenameColumn {
                table: f.t,
                column: ColumnId::from_name(f.t, "id"),
                name: "key".into(),
            },
        ),
        (h(3), TableOp::RenameTable { table: f.t, name: "z".into() }),
    ];
    let m = converge(&ops);
    let t = &m.dump().tables[0];
    assert_eq!(t.name, "d", "equal HLC: the greater name wins");
    assert_eq!(t.id, f.t, "renames keep ids");
    assert_eq!(t.columns[0].name, "key", "key columns can be renamed");
}

#[test]
fn conflicting_definitions_resolve_the_same_everywhere() {
    let t = TableId::from_name("t");
    let a = create(t, "t", &[("id", ColumnType::Integer)]);
    let b = create(t, "t", &[("x", ColumnType::Text), ("y", ColumnType::Text)]);
    let one = RowKey::from_values(&[Value::Integer(1)]).unwrap();
    let two = RowKey::from_values(&[text("p"), text("q")]).unwrap();
    let ops = vec![
        (h(5), a.clone()),
        (h(5), b.clone()),
        (h(6), TableOp::Put { table: t, key: one.clone(), cells: vec![] }),
        (h(6), TableOp::Put { table: t, key: two.clone(), cells: vec![] }),
    ];
    let m = converge(&ops);
    // Equal HLCs: the greater definition bytes win. `b` has two key columns, so its
    // encoding starts with 0x02 > 0x01.
    let dump = m.dump();
    let view = &dump.tables[0];
    assert_eq!(view.columns.len(), 2);
    assert_eq!(view.rows.len(), 1);
    assert_eq!(view.rows[0].key, two);
    let conflicts = m.conflicts();
    let kinds: Vec<_> = conflicts.iter().map(|c| c.kind).collect();
    assert_eq!(kinds, [ConflictKind::RowsNotShown, ConflictKind::TableDefinition]);
    assert!(conflicts[1].message.contains("2 different primary keys"), "{}", conflicts[1]);
    // The losing definition's rows are kept, and shown if it wins later.
    assert!(m.hidden_dump().tables[&t].rows.contains_key(&one));
    let mut ops = ops;
    ops.push((h(7), a));
    let m = converge(&ops);
    assert_eq!(m.dump().tables[0].rows[0].key, one);

    // Columns: a counter on one device, LWW on the other; the view follows the winner and
    // both devices' writes are kept.
    let f = Fixture::new();
    let n = ColumnId::from_name(f.t, "n");
    let mut ops = f.schema();
    ops.push((h(5), TableOp::add_column(f.t, "n", ColumnType::Integer, MergeKind::Counter)));
    ops.push((h(5), TableOp::add_column(f.t, "n", ColumnType::Integer, MergeKind::Lww)));
    ops.push((h(6), f.put(1, vec![(n, CellWrite::Add(5))])));
    ops.push((h(6), f.put(1, vec![(n, CellWrite::Set(Value::Integer(100)))])));
    let m = converge(&ops[4..].iter().cloned().chain(f.schema()).collect::<Vec<_>>());
    // Equal HLCs: (INTEGER, counter) = [1, 1] > [1, 0].
    assert_eq!(row(&m, 1).unwrap()[4], Value::Integer(5));
    assert_eq!(m.conflicts()[0].kind, ConflictKind::ColumnDefinition);
    ops.push((h(8), TableOp::add_column(f.t, "n", ColumnType::Integer, MergeKind::Lww)));
    let m = converge(&ops[4..].iter().cloned().chain(f.schema()).collect::<Vec<_>>());
    assert_eq!(row(&m, 1).unwrap()[4], Value::Integer(100), "no data lost: LWW write kept");
}

#[test]
fn data_before_schema_appears_later() {
    let f = Fixture::new();
    let mut m = TablesModel::new();
    m.apply(h(5), &f.put(1, vec![(f.l, CellWrite::Set(text("x"))), (f.c, CellWrite::Add(2))]))
        .unwrap();
    assert!(m.dump().tables.is_empty());
    m.apply(h(1), &create(f.t, "t", &[("id", ColumnType::Integer)])).unwrap();
    assert_eq!(row(&m, 1), Some(vec![Value::Integer(1)]));
    m.apply(h(2), &TableOp::add_column(f.t, "c", ColumnType::Integer, MergeKind::Counter)).unwrap();
    assert_eq!(row(&m, 1), Some(vec![Value::Integer(1), Value::Integer(2)]));
    m.apply(h(9), &TableOp::add_column(f.t, "l", ColumnType::Text, MergeKind::Lww)).unwrap();
    assert_eq!(row(&m, 1), Some(vec![Value::Integer(1), Value::Integer(2), text("x")]));
}

#[test]
fn put_after_delete_in_the_same_transaction_revives_the_row() {
    let f = Fixture::new();
    let payload = |ops: Vec<TableOp>| Payload {
        hlc: h(100),
        author: None,
        ops: ops.iter().map(|o| o.to_op().unwrap()).collect(),
    };
    let setup = |m: &mut TablesModel| {
        for (hlc, op) in f.schema() {
            m.apply(hlc, &op).unwrap();
        }
        m.apply(h(50), &f.put(1, vec![(f.l, CellWrite::Set(text("old")))])).unwrap();
    };
    let mut m = TablesModel::new();
    setup(&mut m);
    m.apply_payload(&payload(vec![f.delete(1), f.put(1, vec![(f.c, CellWrite::Add(1))])])).unwrap();
    assert_eq!(
        row(&m, 1),
        Some(vec![Value::Integer(1), Value::Null, Value::Integer(1), Value::Null])
    );
    let mut m = TablesModel::new();
    setup(&mut m);
    m.apply_payload(&payload(vec![f.put(1, vec![(f.c, CellWrite::Add(1))]), f.delete(1)])).unwrap();
    assert_eq!(row(&m, 1), None, "delete after put in one transaction wins");
}

#[test]
fn payload_positions_count_every_op_and_unknown_kinds_apply_nothing() {
    let f = Fixture::new();
    let other = Op { domain: Domain::DOCS, kind: 1, body: vec![1, 2, 3] };
    let put = f.put(1, vec![]).to_op().unwrap();
    let delete = f.delete(1).to_op().unwrap();
    // put at h, foreign op at h+1, delete at h+2: the delete wins.
    let mut m = TablesModel::new();
    m.apply_payload(&Payload { hlc: h(10), author: None, ops: vec![put.clone(), other, delete] })
        .unwrap();
    assert_eq!(m.hidden_dump().tables[&f.t].rows[&key(1)].tombstone, Some(h(12)));
    // A newer version's op: the whole entry is refused, nothing applied.
    let future = Op { domain: Domain::TABLES, kind: 200, body: vec![] };
    let mut m = TablesModel::new();
    let err = m.apply_payload(&Payload { hlc: h(10), author: None, ops: vec![put, future] });
    assert!(err.unwrap_err().needs_upgrade());
    assert_eq!(m, TablesModel::new());
}

#[test]
fn two_tables_with_one_name_show_one_deterministically() {
    let a = TableId::from_name("a");
    let b = TableId::from_name("b");
    let ops = vec![
        (h(1), create(a, "a", &[("id", ColumnType::Integer)])),
        (h(1), create(b, "b", &[("id", ColumnType::Integer)])),
        (h(5), TableOp::RenameTable { table: a, name: "Same".into() }),
        (h(4), TableOp::RenameTable { table: b, name: "same".into() }),
    ];
    let m = converge(&ops);
    let dump = m.dump();
    assert_eq!(dump.tables.len(), 1);
    assert_eq!((dump.tables[0].id, dump.tables[0].name.as_str()), (a, "Same"));
    let c = m.conflicts();
    assert_eq!((c.len(), c[0].kind, c[0].table), (1, ConflictKind::TableName, b));
}

#[test]
fn key_columns_survive_drop_and_column_name_collisions_are_resolved() {
    let f = Fixture::new();
    let id = ColumnId::from_name(f.t, "id");
    let mut ops = f.schema();
    ops.push((h(5), TableOp::DropColumn { table: f.t, column: id }));
    ops.push((h(6), TableOp::RenameColumn { table: f.t, column: f.l, name: "ID".into() }));
    ops.push((h(7), TableOp::RenameColumn { table: f.t, column: f.c, name: "mm".into() }));
    ops.push((h(8), TableOp::RenameColumn { table: f.t, column: f.m, name: "MM".into() }));
    ops.push((h(9), f.put(1, vec![(f.l, CellWrite::Set(Value::Integer(7)))])));
    let m = converge(&ops);
    let t = &m.dump().tables[0];
    let names: Vec<_> = t.columns.iter().map(|c| c.name.as_str()).collect();
    // `l` renamed to "ID" collides with the key column and is hidden; "mm" and "MM"
    // collide and the later name wins.
    assert_eq!(names, ["id", "MM"]);
    assert_eq!(t.rows[0].values, [Value::Integer(1), Value::Null]);
    let kinds: Vec<_> = m.conflicts().iter().map(|c| c.kind).collect();
    assert_eq!(kinds, [ConflictKind::ColumnName, ConflictKind::ColumnName]);
    // The hidden column's data is kept.
    assert!(m.hidden_dump().tables[&f.t].rows[&key(1)].cells.contains_key(&f.l));
}

/// `CreateTable` of table `t` (named `name`) with explicit key column ids.
fn create_ids(t: u64, name: &str, pk: &[(u64, &str, ColumnType)]) -> TableOp {
    TableOp::CreateTable {
        table: TableId(t),
        name: name.into(),
        primary_key: pk
            .iter()
            .map(|(c, n, ty)| PkColumn { column: ColumnId(*c), name: (*n).into(), ty: *ty })
            .collect(),
    }
}

/// `AddColumn` with explicit ids.
fn add_ids(t: u64, c: u64, name: &str, ty: ColumnType, merge: MergeKind) -> TableOp {
    TableOp::AddColumn { table: TableId(t), column: ColumnId(c), name: name.into(), ty, merge }
}

/// Applies `ops` forwards and backwards to models with `budget`, asserts both agree, and
/// returns one.
fn both_ways(budget: usize, ops: &[(Hlc, TableOp)]) -> TablesModel {
    let mut forward = TablesModel::with_column_budget(budget);
    let mut backward = TablesModel::with_column_budget(budget);
    for (hlc, op) in ops {
        forward.apply(*hlc, op).unwrap();
    }
    for (hlc, op) in ops.iter().rev() {
        backward.apply(*hlc, op).unwrap();
    }
    assert_eq!(forward.hidden_dump(), backward.hidden_dump());
    assert_eq!(forward.dump(), backward.dump());
    assert_eq!(forward.conflicts(), backward.conflicts());
    assert_eq!(forward.live_table_keys(), backward.live_table_keys());
    forward
}

/// Every kind of schema conflict, each with the decision it reports, in one workspace;
/// and the view that results (names, fallbacks, hidden columns, table order).
#[test]
fn every_schema_conflict_is_decided_and_reported_exactly() {
    use ColumnType::{Any, Integer, Text};
    use MergeKind::{Counter, Lww, Max};
    let k1 = RowKey::from_values(&[Value::Integer(1)]).unwrap();
    let k12 = RowKey::from_values(&[Value::Integer(1), Value::Integer(2)]).unwrap();
    let ops = vec![
        // Table 1 "t": two primary keys, a column declared two ways, a key column re-added,
        // a reserved column name, two columns and a key column with one name, and one
        // column past a budget of 3.
        (h(10), create_ids(1, "t", &[(0x10, "id", Integer)])),
        (h(5), create_ids(1, "t", &[(0x11, "k", Text)])),
        (h(11), add_ids(1, 0x20, "n", Integer, Counter)),
        (h(12), add_ids(1, 0x20, "n", Integer, Lww)),
        (h(13), add_ids(1, 0x10, "id", Any, Lww)),
        (h(14), add_ids(1, 0x30, "shoal_x", Any, Lww)),
        (h(15), add_ids(1, 0x40, "dup", Any, Lww)),
        (h(15), add_ids(1, 0x41, "DUP", Any, Lww)),
        (h(16), add_ids(1, 0x50, "ID", Any, Lww)),
        (h(17), add_ids(1, 0x60, "late", Any, Max)),
        (
            h(18),
            TableOp::Put {
                table: TableId(1),
                key: k1.clone(),
                cells: vec![
                    (ColumnId(0x20), CellWrite::Set(Value::Integer(7))),
                    (ColumnId(0x60), CellWrite::Max(Value::Integer(3))),
                ],
            },
        ),
        (h(18), TableOp::Put { table: TableId(1), key: k12.clone(), cells: vec![] }),
        // Table 2 "u": two key columns end up with one name; the later name keeps it.
        (h(20), create_ids(2, "u", &[(0x70, "a", Any), (0x71, "b", Any)])),
        (
            h(21),
            TableOp::RenameColumn { table: TableId(2), column: ColumnId(0x71), name: "A".into() },
        ),
        (h(22), TableOp::Put { table: TableId(2), key: k12.clone(), cells: vec![] }),
        // Table 3 "v": key columns named alike at one HLC (the greater id keeps the name);
        // it also loses its name to table 5 "V" at the same HLC (the greater id wins).
        (h(30), create_ids(3, "v", &[(0x81, "x", Any), (0x80, "X", Any)])),
        (h(30), create_ids(5, "V", &[(0xa0, "id", Integer)])),
        // Table 4 "w": a reserved key column name. Table 6: a reserved table name.
        (h(40), create_ids(4, "w", &[(0x90, "sqlite_k", Text)])),
        (h(50), create_ids(6, "Shoal_t", &[(0xb0, "id", Integer)])),
        // Table 7: conflicting definitions, then dropped: reports nothing.
        (h(60), create_ids(7, "gone", &[(0xc0, "id", Integer)])),
        (h(60), create_ids(7, "gone", &[(0xc1, "id2", Text)])),
        (h(61), TableOp::DropTable { table: TableId(7) }),
        // Table 8: dropped and re-created; only the column added after the drop shows.
        (h(70), create_ids(8, "back", &[(0xd0, "id", Integer)])),
        (h(71), add_ids(8, 0xd1, "old", Any, Lww)),
        (h(72), TableOp::DropTable { table: TableId(8) }),
        (h(73), create_ids(8, "back", &[(0xd0, "id", Integer)])),
        (h(74), add_ids(8, 0xd2, "new", Any, Lww)),
    ];
    let m = both_ways(3, &ops);

    let dump = m.dump();
    let shown: Vec<(TableId, &str, Vec<&str>)> = dump
        .tables
        .iter()
        .map(|t| (t.id, t.name.as_str(), t.columns.iter().map(|c| c.name.as_str()).collect()))
        .collect();
    // Ordered by name bytes: "V" < "back" < "t" < "u" < "w".
    assert_eq!(
        shown,
        [
            (TableId(5), "V", vec!["id"]),
            (TableId(8), "back", vec!["id", "new"]),
            (TableId(1), "t", vec!["id", "n", "DUP"]),
            (TableId(2), "u", vec!["a_0000000000000070", "A"]),
            (TableId(4), "w", vec!["column_0000000000000090"]),
        ]
    );
    let t = &dump.tables[2];
    let views: Vec<(ColumnId, ColumnType, Option<MergeKind>)> =
        t.columns.iter().map(|c| (c.id, c.ty, c.merge)).collect();
    assert_eq!(
        views,
        [
            (ColumnId(0x10), Integer, None),
            (ColumnId(0x20), Integer, Some(Lww)),
            (ColumnId(0x41), Any, Some(Lww)),
        ]
    );
    assert_eq!(t.rows.len(), 1);
    assert_eq!(t.rows[0].key, k1);
    assert_eq!(t.rows[0].values, [Value::Integer(1), Value::Integer(7), Value::Null]);
    assert_eq!(dump.tables[3].rows[0].values, [Value::Integer(1), Value::Integer(2)]);

    let id = |n: u64| format!("{:016x}", n);
    let c = |table: u64, column: Option<u64>, kind: ConflictKind, message: String| SchemaConflict {
        table: TableId(table),
        column: column.map(ColumnId),
        kind,
        message,
    };
    let mut want = vec![
        c(
            1,
            None,
            ConflictKind::RowsNotShown,
            format!(
                "1 live rows of table \"t\" ({}) have keys that do not fit its primary key of 1 \
                 columns; they are kept but not shown",
                id(1)
            ),
        ),
        c(
            1,
            None,
            ConflictKind::TableDefinition,
            format!(
                "table \"t\" ({}) was created with 2 different primary keys; using (id INTEGER), \
                 not (k TEXT) at {}; rows whose keys do not fit are kept but not shown",
                id(1),
                h(5)
            ),
        ),
        c(
            1,
            Some(0x10),
            ConflictKind::KeyColumnRedeclared,
            format!(
                "column \"id\" ({}) of table \"t\" ({}) is a primary-key column but was also \
                 added as a ANY lww column; it is shown as a key column",
                id(0x10),
                id(1)
            ),
        ),
        c(
            1,
            Some(0x20),
            ConflictKind::ColumnDefinition,
            format!(
                "column \"n\" ({}) of table \"t\" ({}) was declared in 2 different ways; using \
                 INTEGER lww (declared at {}), not INTEGER counter at {}; every write is kept",
                id(0x20),
                id(1),
                h(12),
                h(11)
            ),
        ),
        c(
            1,
            Some(0x30),
            ConflictKind::ReservedName,
            format!(
                "column {} of table \"t\" ({}) is named \"shoal_x\", a name reserved for Shoal \
                 and SQLite; it is hidden (its data is kept) until renamed",
                id(0x30),
                id(1)
            ),
        ),
        c(
            1,
            Some(0x40),
            ConflictKind::ColumnName,
            format!(
                "column {} of table \"t\" ({}) is named \"dup\" like column {} (which has the \
                 later name); it is hidden (its data is kept) until one of them is renamed",
                id(0x40),
                id(1),
                id(0x41)
            ),
        ),
        c(
            1,
            Some(0x50),
            ConflictKind::ColumnName,
            format!(
                "column {} of table \"t\" ({}) is named \"ID\" like a key column; it is hidden \
                 (its data is kept) until one of them is renamed",
                id(0x50),
                id(1)
            ),
        ),
        c(
            1,
            Some(0x60),
            ConflictKind::TooManyColumns,
            format!(
                "column \"late\" ({}) of table \"t\" ({}) comes after the first 3 columns (the \
                 most a table shows, in the order columns were declared); it is hidden (its \
                 data is kept) until other columns are dropped",
                id(0x60),
                id(1)
            ),
        ),
        c(
            2,
            Some(0x70),
            ConflictKind::ColumnName,
            format!(
                "key columns {} and {} of table \"u\" ({}) are both named \"a\"; column {} has \
                 the later name and keeps it, column {} is shown as \"a_{}\"",
                id(0x71),
                id(0x70),
                id(2),
                id(0x71),
                id(0x70),
                id(0x70)
            ),
        ),
        c(
            3,
            None,
            ConflictKind::TableName,
            format!(
                "tables {} and {} are both named \"v\"; table {} has the later name and keeps \
                 it, table {} is hidden (its data is kept) until one of them is renamed",
                id(5),
                id(3),
                id(5),
                id(3)
            ),
        ),
        c(
            3,
            Some(0x80),
            ConflictKind::ColumnName,
            format!(
                "key columns {} and {} of table \"v\" ({}) are both named \"X\"; column {} has \
                 the later name and keeps it, column {} is shown as \"X_{}\"",
                id(0x81),
                id(0x80),
                id(3),
                id(0x81),
                id(0x80),
                id(0x80)
            ),
        ),
        c(
            4,
            Some(0x90),
            ConflictKind::ReservedName,
            format!(
                "key column {} of table \"w\" ({}) is named \"sqlite_k\", a name reserved for \
                 Shoal and SQLite; it is shown as \"column_{}\" until renamed",
                id(0x90),
                id(4),
                id(0x90)
            ),
        ),
        c(
            6,
            None,
            ConflictKind::ReservedName,
            format!(
                "table {} is named \"Shoal_t\", a name reserved for Shoal and SQLite \
                 (\"shoal_\", \"sqlite_\"); it is hidden (its data is kept) until renamed",
                id(6)
            ),
        ),
    ];
    want.sort();
    let got = m.conflicts();
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w);
        assert_eq!(g.to_string(), w.message, "Display shows the message");
    }
    assert_eq!(got.len(), want.len(), "{got:#?}");

    // Every live table, shown or not, with its key width; dropped ones are left out.
    let keys: Vec<(TableId, String, usize)> = m.live_table_keys();
    let keys: Vec<(u64, &str, usize)> =
        keys.iter().map(|(t, n, k)| (t.as_u64(), n.as_str(), *k)).collect();
    assert_eq!(
        keys,
        [
            (1, "t", 1),
            (2, "u", 2),
            (3, "v", 2),
            (4, "w", 1),
            (5, "V", 1),
            (6, "Shoal_t", 1),
            (8, "back", 1)
        ]
    );
    assert_eq!(m.column_budget(), 3);
}
