//! Wide tables cannot break a receiver: every put within `MAX_CELLS_PER_PUT` and any number
//! of declared columns apply on every replica (rows are spread over shard tables); a view
//! shows at most `MAX_COLUMNS_PER_TABLE` columns, chosen the same way everywhere, and the
//! others are schema conflicts in `status` with their data kept; local writers refuse what
//! is over the budgets; dropped columns' storage is reclaimed.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::sync::Arc;

use shoal::core::{ManualClock, SyncError, pull};
use shoal::sqlite::LocalTx;
use shoal::sqlite::TablesMaterializer;
use shoal::tables::{
    CellWrite, ColumnId, ConflictKind, HiddenDump, MAX_CELLS_PER_PUT, MAX_COLUMNS_PER_TABLE,
    PkColumn, RowKey, TableId, TableOp,
};
use shoal::*;

fn text(s: &str) -> Value {
    Value::text(s).unwrap()
}

fn opts(clock: &ManualClock) -> WorkspaceOptions {
    WorkspaceOptions { clock: Arc::new(clock.clone()), ..Default::default() }
}

/// Two devices of one workspace, sharing a manual clock.
fn pair(dir: &std::path::Path, clock: &ManualClock) -> (Workspace, Workspace) {
    let a = Workspace::create(dir.join("a.shoal"), opts(clock)).unwrap();
    let b = Workspace::join(dir.join("b.shoal"), a.id(), opts(clock)).unwrap();
    (a, b)
}

async fn exchange(a: &Workspace, b: &Workspace) {
    let r = pull(a.replica(), b.replica()).await.unwrap();
    assert!(r.stalled.is_empty(), "{:?}", r.stalled);
    let r = pull(b.replica(), a.replica()).await.unwrap();
    assert!(r.stalled.is_empty(), "{:?}", r.stalled);
    for ws in [a, b] {
        for o in ws.status().unwrap().origins {
            assert!(o.stalled.is_none(), "{o:?}");
        }
    }
}

fn hidden(ws: &Workspace) -> HiddenDump {
    ws.replica()
        .with_reader(|conn| {
            TablesMaterializer::new()
                .hidden_dump(conn)
                .map_err(|e| SyncError::backend("hidden dump", e))
        })
        .unwrap()
}

/// Every physical column of every row table (all shards).
fn physical_columns(ws: &Workspace) -> i64 {
    ws.replica()
        .with_reader(|conn| {
            conn.query_row(
                "SELECT count(*) FROM sqlite_master m, pragma_table_info(m.name) p \
                 WHERE m.type = 'table' AND m.name LIKE 'shoal\\_t\\_%' ESCAPE '\\'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| SyncError::backend("count columns", e))
        })
        .unwrap()
}

fn append(ws: &Workspace, ops: &[TableOp]) {
    let ops = ops.iter().map(|o| o.to_op().unwrap()).collect();
    ws.replica().append_local(vec![LocalTx { ops, author: None }]).unwrap();
}

fn spec(name: &str, prefix: &str, n: usize) -> TableSpec {
    let mut s = TableSpec::new(name).key("id", ColumnType::Text);
    for i in 0..n {
        s = s.column(format!("{prefix}{i}"), ColumnType::Any);
    }
    s
}

fn put_all(ws: &Workspace, table: &str, id: &str, names: &[String]) {
    let mut cells: Vec<(&str, Value)> = vec![("id", text(id))];
    cells.extend(names.iter().map(|n| (n.as_str(), text(n))));
    let mut tx = ws.transaction().unwrap();
    tx.put(table, &cells).unwrap();
    tx.commit().unwrap();
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

fn too_many(ws: &Workspace) -> Vec<ColumnId> {
    ws.status()
        .unwrap()
        .conflicts
        .iter()
        .filter(|c| c.kind == ConflictKind::TooManyColumns)
        .filter_map(|c| c.column)
        .collect()
}

#[tokio::test]
async fn a_put_of_2000_cells_on_an_undeclared_table_applies_on_a_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_700_000_000_000);
    let (a, b) = pair(dir.path(), &clock);
    let wide = TableId::from_name("wide");
    let key = RowKey::from_values(&[text("r")]).unwrap();
    let cells: Vec<(ColumnId, CellWrite)> = (0..MAX_CELLS_PER_PUT)
        .map(|i| {
            let v = Value::blob(vec![i as u8]).unwrap();
            (ColumnId::from_name(wide, &format!("c{i}")), CellWrite::Set(v))
        })
        .collect();
    assert_eq!(cells.len(), 2000);
    append(&a, &[TableOp::Put { table: wide, key: key.clone(), cells }]);
    exchange(&a, &b).await;
    let dump = hidden(&b);
    assert_eq!(dump.tables[&wide].rows[&key].cells.len(), 2000, "every cell is stored");
    assert_eq!(dump, hidden(&a));

    // Declaring the table (key and 999 of the columns: the budget) shows them.
    clock.advance(1);
    let mut ops = vec![TableOp::CreateTable {
        table: wide,
        name: "wide".into(),
        primary_key: vec![PkColumn::new(wide, "id", ColumnType::Text)],
    }];
    ops.extend(
        (0..MAX_COLUMNS_PER_TABLE - 1)
            .map(|i| TableOp::add_column(wide, &format!("c{i}"), ColumnType::Any, MergeKind::Lww)),
    );
    append(&b, &ops);
    exchange(&a, &b).await;
    for ws in [&a, &b] {
        let q = ws.query("SELECT * FROM wide", &[]).unwrap();
        assert_eq!(q.columns.len(), MAX_COLUMNS_PER_TABLE);
        assert_eq!(q.rows.len(), 1);
        assert_eq!(q.rows[0][0], text("r"));
        assert_eq!(q.rows[0][999], Value::blob(vec![(998 % 256) as u8]).unwrap());
        assert!(ws.status().unwrap().conflicts.is_empty());
    }
    assert_eq!(hidden(&a), hidden(&b));
}

#[test]
fn one_cell_past_the_put_budget_is_refused_by_writer_and_reader() {
    let wide = TableId::from_name("wide");
    let key = RowKey::from_values(&[text("r")]).unwrap();
    let put = |n: usize| TableOp::Put {
        table: wide,
        key: key.clone(),
        cells: (0..n)
            .map(|i| (ColumnId::from_name(wide, &format!("c{i}")), CellWrite::Set(Value::Null)))
            .collect(),
    };
    let at = put(MAX_CELLS_PER_PUT).to_op().unwrap();
    assert!(TableOp::decode(&at).is_ok());
    let err = put(MAX_CELLS_PER_PUT + 1).to_op().unwrap_err();
    assert!(err.to_string().contains("2000"), "{err}");
    // The same op built by hand does not decode: no receiver can be asked to apply it.
    let mut body = at.body.clone();
    let count_at = 8 + 1 + key.as_bytes().len();
    assert_eq!(&body[count_at..count_at + 2], &[0xd0, 0x0f], "varint 2000");
    body[count_at..count_at + 2].copy_from_slice(&[0xd1, 0x0f]);
    let c = ColumnId::from_name(wide, "c2000").as_u64().to_le_bytes();
    body.extend_from_slice(&c);
    body.extend_from_slice(&[0x00, 0x00]);
    let over = shoal::core::Op { body, ..at };
    assert!(TableOp::decode(&over).is_err(), "2001 cells are malformed");
}

#[tokio::test]
async fn two_devices_declaring_600_columns_offline_converge() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_700_000_000_000);
    let (a, b) = pair(dir.path(), &clock);
    a.declare(&spec("t", "a", 600)).unwrap();
    put_all(&a, "t", "from a", &names("a", 600));
    clock.advance(5);
    b.declare(&spec("t", "b", 600)).unwrap();
    put_all(&b, "t", "from b", &names("b", 600));
    exchange(&a, &b).await;

    // 1 + 1200 columns: the first 1000 in view order are shown (a declared first), the
    // other 201 are conflicts, the same on both devices.
    let qa = a.query("SELECT * FROM t ORDER BY id", &[]).unwrap();
    let qb = b.query("SELECT * FROM t ORDER BY id", &[]).unwrap();
    assert_eq!(qa, qb);
    let mut expected = vec!["id".to_owned()];
    expected.extend(names("a", 600));
    expected.extend(names("b", 399));
    assert_eq!(qa.columns, expected);
    assert_eq!(qa.rows.len(), 2);
    assert_eq!(qa.rows[0][600], text("a599"));
    assert_eq!(qa.rows[1][601], text("b0"));
    assert_eq!(a.status().unwrap().conflicts, b.status().unwrap().conflicts);
    let t = TableId::from_name("t");
    let hidden_cols: Vec<ColumnId> =
        names("b", 600)[399..].iter().map(|n| ColumnId::from_name(t, n)).collect();
    let mut over = too_many(&a);
    over.sort();
    let mut want = hidden_cols.clone();
    want.sort();
    assert_eq!(over, want, "201 conflicts, one per hidden column");
    assert_eq!(hidden(&a), hidden(&b), "hidden state converges, hidden columns' data kept");
    let dump = hidden(&a);
    let row = &dump.tables[&t].rows[&RowKey::from_values(&[text("from b")]).unwrap()];
    assert!(row.cells.contains_key(&hidden_cols[200]), "the data of a hidden column is kept");

    // A table over the budget takes no new column; dropping columns shows hidden ones.
    let err = b.add_column("t", "more", ColumnType::Any, MergeKind::Lww).unwrap_err();
    assert!(err.to_string().contains("at most 1000"), "{err}");
    for i in 0..10 {
        a.drop_column("t", &format!("a{i}")).unwrap();
    }
    exchange(&a, &b).await;
    let qa = a.query("SELECT * FROM t ORDER BY id", &[]).unwrap();
    assert_eq!(qa, b.query("SELECT * FROM t ORDER BY id", &[]).unwrap());
    assert_eq!(qa.columns.len(), MAX_COLUMNS_PER_TABLE);
    assert_eq!(qa.columns.last().unwrap(), "b408");
    assert_eq!(qa.rows[1][999], text("b408"), "a column shown later has its data");
    assert_eq!(too_many(&a).len(), 191);
    assert_eq!(hidden(&a), hidden(&b));
}

#[tokio::test]
async fn a_table_at_the_column_budget_works_and_one_past_is_refused_or_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_700_000_000_000);
    let (a, b) = pair(dir.path(), &clock);
    let n = MAX_COLUMNS_PER_TABLE - 1;
    a.declare(&spec("t", "c", n)).unwrap();
    put_all(&a, "t", "r", &names("c", n));
    exchange(&a, &b).await;
    for ws in [&a, &b] {
        let q = ws.query("SELECT * FROM t", &[]).unwrap();
        assert_eq!(q.columns.len(), MAX_COLUMNS_PER_TABLE);
        assert_eq!(q.rows[0][n], text(&format!("c{}", n - 1)));
        assert!(ws.status().unwrap().conflicts.is_empty());
    }

    // Locally, one more column is refused, by add_column and by declare.
    let err = a.add_column("t", "extra", ColumnType::Any, MergeKind::Lww).unwrap_err();
    assert!(matches!(err, Error::SchemaChange { .. }), "{err}");
    assert!(err.to_string().contains("1001 columns; at most 1000"), "{err}");
    let err = a.declare(&spec("t", "c", n + 1)).unwrap_err();
    assert!(matches!(err, Error::InvalidTable { .. }), "{err}");
    let err = a.declare(&spec("u", "c", n + 1)).unwrap_err();
    assert!(err.to_string().contains("at most 1000"), "{err}");
    assert!(a.schema().unwrap().table("u").is_none());
    a.declare(&spec("u", "c", n)).unwrap();

    // Remotely (a writer that skipped the check), it is a conflict; its data is kept.
    let t = TableId::from_name("t");
    let extra = ColumnId::from_name(t, "extra");
    append(
        &b,
        &[
            TableOp::add_column(t, "extra", ColumnType::Any, MergeKind::Lww),
            TableOp::Put {
                table: t,
                key: RowKey::from_values(&[text("r")]).unwrap(),
                cells: vec![(extra, CellWrite::Set(text("kept")))],
            },
        ],
    );
    exchange(&a, &b).await;
    for ws in [&a, &b] {
        assert_eq!(ws.query("SELECT * FROM t", &[]).unwrap().columns.len(), 1000);
        assert_eq!(too_many(ws), vec![extra]);
        let c = &ws.status().unwrap().conflicts[0];
        assert!(c.message.contains("\"extra\""), "{}", c.message);
    }
    assert_eq!(hidden(&a), hidden(&b));
    let dump = hidden(&a);
    let cell = &dump.tables[&t].rows[&RowKey::from_values(&[text("r")]).unwrap()].cells[&extra];
    assert_eq!(cell.lww.as_ref().map(|(_, v)| v.clone()), Some(text("kept")));

    // Dropping a column makes room: the hidden column shows with its data.
    a.drop_column("t", "c0").unwrap();
    exchange(&a, &b).await;
    for ws in [&a, &b] {
        assert!(too_many(ws).is_empty());
        let q = ws.query("SELECT extra FROM t", &[]).unwrap();
        assert_eq!(q.rows, vec![vec![text("kept")]]);
    }
}

#[tokio::test]
async fn add_and_drop_cycles_do_not_grow_the_physical_table() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_700_000_000_000);
    let (a, b) = pair(dir.path(), &clock);
    a.declare(&TableSpec::new("t").key("id", ColumnType::Text).column("keep", ColumnType::Text))
        .unwrap();
    let cycle = |i: usize| {
        let (l, n, m) = (format!("l{i}"), format!("n{i}"), format!("m{i}"));
        a.add_column("t", &l, ColumnType::Text, MergeKind::Lww).unwrap();
        a.add_column("t", &n, ColumnType::Integer, MergeKind::Counter).unwrap();
        a.add_column("t", &m, ColumnType::Integer, MergeKind::Max).unwrap();
        let mut tx = a.transaction().unwrap();
        tx.put("t", &[("id", text("r")), ("keep", text("k")), (&l, text("x"))]).unwrap();
        tx.put("t", &[("id", text("r")), (&m, Value::Integer(i as i64))]).unwrap();
        tx.increment("t", &[text("r")], &n, 2).unwrap();
        tx.commit().unwrap();
        clock.advance(1);
        a.drop_column("t", &l).unwrap();
        a.drop_column("t", &n).unwrap();
        a.drop_column("t", &m).unwrap();
        // The same name again: the column id comes back.
        a.add_column("t", "again", ColumnType::Text, MergeKind::Lww).unwrap();
        let mut tx = a.transaction().unwrap();
        tx.put("t", &[("id", text("r")), ("again", text("y"))]).unwrap();
        tx.commit().unwrap();
        clock.advance(1);
        a.drop_column("t", "again").unwrap();
    };
    cycle(0);
    exchange(&a, &b).await;
    let (after_one_a, after_one_b) = (physical_columns(&a), physical_columns(&b));
    for i in 1..40 {
        cycle(i);
    }
    exchange(&a, &b).await;
    assert_eq!(physical_columns(&a), after_one_a, "the writer's tables do not grow");
    assert_eq!(physical_columns(&b), after_one_b, "the receiver's tables do not grow");
    assert_eq!(hidden(&a), hidden(&b));
    let q = a.query("SELECT * FROM t", &[]).unwrap();
    assert_eq!(q.columns, ["id", "keep"]);
    assert_eq!(q.rows, vec![vec![text("r"), text("k")]]);
}
