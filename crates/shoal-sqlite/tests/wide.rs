//! Wide tables in the SQLite materializer: a put of `MAX_CELLS_PER_PUT` cells on an
//! undeclared table applies on a receiver; views over more shards than SQLite can join;
//! dropped columns' storage (columns, then whole shards) is reclaimed. Each checked
//! against the reference model (`TablesModel`).
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::sync::Arc;

use rusqlite::Connection;
use shoal_core::*;
use shoal_sqlite::{LocalTx, Options, SqliteReplica, TablesMaterializer, from_sql, quote_ident};
use shoal_tables::*;

fn workspace() -> WorkspaceId {
    WorkspaceId::derive(&DeviceKey::from_secret_bytes(&[100; 32]).public_key(), &[0; 16])
}

fn device(
    dir: &std::path::Path,
    i: usize,
    clock: &ManualClock,
    make: fn() -> TablesMaterializer,
) -> SqliteReplica {
    let opts = Options { clock: Arc::new(clock.clone()), domains: vec![Box::new(make())] };
    SqliteReplica::create(
        dir.join(format!("r{i}.shoal")),
        workspace(),
        Some(DeviceKey::from_secret_bytes(&[i as u8 + 1; 32])),
        opts,
    )
    .unwrap()
}

fn append(r: &SqliteReplica, ops: &[TableOp]) {
    let ops = ops.iter().map(|o| o.to_op().unwrap()).collect();
    r.append_local(vec![LocalTx { ops, author: None }]).unwrap();
}

/// Every entry of `r`, applied to a model.
fn model_of(r: &SqliteReplica, model: &mut TablesModel) {
    for e in r.history(None, 0, usize::MAX).unwrap() {
        model.apply_payload(e.payload().unwrap()).unwrap();
    }
}

fn view_rows(conn: &Connection, table: &str) -> (Vec<String>, Vec<Vec<Value>>) {
    let mut stmt = conn.prepare(&format!("SELECT * FROM {}", quote_ident(table))).unwrap();
    let names = stmt.column_names().map(|s| s.to_string()).collect();
    let n = stmt.column_count();
    let mut rows: Vec<Vec<Value>> = stmt
        .query_map([], |r| Ok((0..n).map(|i| from_sql(r.get_ref(i).unwrap())).collect()))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    rows.sort();
    (names, rows)
}

/// The replica's hidden state and views equal the model's.
fn check(r: &SqliteReplica, model: &TablesModel, make: fn() -> TablesMaterializer) {
    r.with_reader(|conn| {
        assert_eq!(make().hidden_dump(conn).unwrap(), model.hidden_dump());
        let mut m = make();
        assert_eq!(m.schema_from(conn).unwrap().tables.len(), model.dump().tables.len());
        assert_eq!(m.conflicts(), model.conflicts().as_slice());
        for t in model.dump().tables {
            let (names, rows) = view_rows(conn, &t.name);
            let want: Vec<String> = t.columns.iter().map(|c| c.name.clone()).collect();
            assert_eq!(names, want);
            let mut want_rows: Vec<Vec<Value>> = t.rows.iter().map(|r| r.values.clone()).collect();
            want_rows.sort();
            assert_eq!(rows, want_rows, "rows of {}", t.name);
        }
        Ok(())
    })
    .unwrap();
}

fn row_tables(r: &SqliteReplica) -> (i64, i64) {
    r.with_reader(|conn| {
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name LIKE 'shoal\\_t\\_%' ESCAPE '\\'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let columns: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master m, pragma_table_info(m.name) p \
                 WHERE m.type = 'table' AND m.name LIKE 'shoal\\_t\\_%' ESCAPE '\\'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        Ok((tables, columns))
    })
    .unwrap()
}

fn merge_of(i: usize) -> MergeKind {
    [MergeKind::Lww, MergeKind::Counter, MergeKind::Max][i % 3]
}

#[tokio::test]
async fn a_put_of_max_cells_on_an_undeclared_table_applies_on_a_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_700_000_000_000);
    let make = TablesMaterializer::new;
    let (a, b) = (device(dir.path(), 0, &clock, make), device(dir.path(), 1, &clock, make));
    let t = TableId::from_name("wide");
    let key = RowKey::from_values(&[Value::Integer(7)]).unwrap();
    // 2,000 cells of every kind: 2,666 physical columns, more than SQLite allows in one table.
    let cells: Vec<(ColumnId, CellWrite)> = (0..MAX_CELLS_PER_PUT)
        .map(|i| {
            let c = ColumnId::from_name(t, &format!("c{i}"));
            let w = match merge_of(i) {
                MergeKind::Lww => CellWrite::Set(Value::blob(vec![i as u8]).unwrap()),
                MergeKind::Counter => CellWrite::Add(i as i64),
                MergeKind::Max => CellWrite::Max(Value::Integer(i as i64)),
            };
            (c, w)
        })
        .collect();
    append(&a, &[TableOp::Put { table: t, key: key.clone(), cells }]);
    let report = pull(&a, &b).await.unwrap();
    assert!(report.stalled.is_empty(), "{:?}", report.stalled);
    let mut model = TablesModel::new();
    model_of(&a, &mut model);
    check(&b, &model, make);
    assert!(row_tables(&b).0 > 1, "the row is spread over shards");

    // Declared later, on the receiver, with every column: the first 1,000 show.
    clock.advance(1);
    let mut ops = vec![TableOp::CreateTable {
        table: t,
        name: "wide".into(),
        primary_key: vec![PkColumn::new(t, "id", ColumnType::Integer)],
    }];
    ops.extend((0..MAX_CELLS_PER_PUT).map(|i| {
        let ty =
            if merge_of(i) == MergeKind::Counter { ColumnType::Integer } else { ColumnType::Any };
        TableOp::add_column(t, &format!("c{i}"), ty, merge_of(i))
    }));
    append(&b, &ops);
    pull(&b, &a).await.unwrap();
    let mut model = TablesModel::new();
    model_of(&b, &mut model);
    let conflicts = model.conflicts();
    assert_eq!(conflicts.len(), MAX_CELLS_PER_PUT + 1 - MAX_COLUMNS_PER_TABLE);
    assert!(conflicts.iter().all(|c| c.kind == ConflictKind::TooManyColumns));
    check(&a, &model, make);
    check(&b, &model, make);
}

fn tiny() -> TablesMaterializer {
    // One LWW part per shard: every LWW column has a shard of its own.
    TablesMaterializer::with_limits(MAX_COLUMNS_PER_TABLE, 2)
}

#[tokio::test]
async fn views_read_more_shards_than_sqlite_joins_and_drops_free_them() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_700_000_000_000);
    let (a, b) = (device(dir.path(), 0, &clock, tiny), device(dir.path(), 1, &clock, tiny));
    let t = TableId::from_name("t");
    let mut ops = vec![TableOp::CreateTable {
        table: t,
        name: "t".into(),
        primary_key: vec![PkColumn::new(t, "id", ColumnType::Text)],
    }];
    let n = 150; // shards, past SQLite's 64 tables per join
    ops.extend(
        (0..n).map(|i| TableOp::add_column(t, &format!("c{i}"), ColumnType::Any, MergeKind::Lww)),
    );
    append(&a, &ops);
    for r in 0..3 {
        let key = RowKey::from_values(&[Value::text(format!("r{r}")).unwrap()]).unwrap();
        let cells = (0..n)
            .filter(|i| (i + r) % 2 == 0)
            .map(|i| {
                (ColumnId::from_name(t, &format!("c{i}")), CellWrite::Set(Value::Integer(i as i64)))
            })
            .collect();
        append(&a, &[TableOp::Put { table: t, key, cells }]);
    }
    pull(&a, &b).await.unwrap();
    let mut model = TablesModel::new();
    model_of(&a, &mut model);
    check(&a, &model, tiny);
    check(&b, &model, tiny);
    assert_eq!(row_tables(&b).0, 1 + n as i64 - 1, "the main table holds one part");

    // Dropping every column frees every shard but the main one.
    clock.advance(1);
    let drops: Vec<TableOp> = (0..n)
        .map(|i| TableOp::DropColumn { table: t, column: ColumnId::from_name(t, &format!("c{i}")) })
        .collect();
    append(&a, &drops);
    pull(&a, &b).await.unwrap();
    let mut model = TablesModel::new();
    model_of(&a, &mut model);
    check(&a, &model, tiny);
    check(&b, &model, tiny);
    for r in [&a, &b] {
        // key, kn, tomb, written, k0
        assert_eq!(row_tables(r), (1, 5), "only the main table is left, without parts");
    }
}
