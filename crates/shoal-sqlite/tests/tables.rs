//! The SQLite materializer against the reference model (`shoal_tables::TablesModel`):
//! random schema and row ops on several replicas, exchanged in random orders with
//! duplicates, must give every replica the model's hidden state and (through the SQL
//! views) the model's visible rows. Half the cases use a small column budget and tiny
//! shards, so tables are wider than a shard and than the budget.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::sync::Arc;

use proptest::prelude::*;
use rusqlite::Connection;
use shoal_core::*;
use shoal_sqlite::{LocalTx, Options, SqliteReplica, TablesMaterializer, from_sql, quote_ident};
use shoal_tables::*;

fn workspace() -> WorkspaceId {
    WorkspaceId::derive(&DeviceKey::from_secret_bytes(&[100; 32]).public_key(), &[0; 16])
}

/// The limits of one case: the column budget and the shard size (`None`: the defaults).
type Limits = Option<(usize, usize)>;

fn materializer(limits: Limits) -> TablesMaterializer {
    match limits {
        Some((budget, shard)) => TablesMaterializer::with_limits(budget, shard),
        None => TablesMaterializer::new(),
    }
}

fn device(dir: &std::path::Path, i: usize, clock: &ManualClock, limits: Limits) -> SqliteReplica {
    let opts =
        Options { clock: Arc::new(clock.clone()), domains: vec![Box::new(materializer(limits))] };
    SqliteReplica::create(
        dir.join(format!("r{i}.shoal")),
        workspace(),
        Some(DeviceKey::from_secret_bytes(&[i as u8 + 1; 32])),
        opts,
    )
    .unwrap()
}

fn t1() -> TableId {
    TableId::from_name("todo")
}
fn t2() -> TableId {
    TableId::from_name("note")
}
fn col(t: TableId, name: &str) -> ColumnId {
    ColumnId::from_name(t, name)
}

fn value_strategy() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        (-2i64..3).prop_map(Value::Integer),
        prop_oneof![Just(0.0), Just(-0.0), Just(1.0), Just(f64::NAN), Just(2.5)]
            .prop_map(Value::real),
        prop_oneof![Just("a"), Just("b"), Just("")].prop_map(|s| Value::text(s).unwrap()),
        Just(Value::blob(vec![1u8, 2]).unwrap()),
    ]
}

fn key_strategy(t: TableId) -> BoxedStrategy<RowKey> {
    if t == t1() {
        prop_oneof![
            prop_oneof![Just("x"), Just("y"), Just("z")]
                .prop_map(|s| vec![Value::text(s).unwrap()]),
            (0i64..2).prop_map(|i| vec![Value::Integer(i)]),
        ]
        .prop_map(|v| RowKey::from_values(&v).unwrap())
        .boxed()
    } else {
        ((0i64..2), prop_oneof![Just("p"), Just("q")])
            .prop_map(|(a, b)| {
                RowKey::from_values(&[Value::Integer(a), Value::text(b).unwrap()]).unwrap()
            })
            .boxed()
    }
}

/// Column names: with the small limits, more columns than fit in a shard or the budget.
const COLUMNS: [&str; 8] = ["title", "votes", "best", "extra", "c4", "c5", "c6", "c7"];

fn op_strategy() -> impl Strategy<Value = TableOp> {
    let table = prop_oneof![Just(t1()), Just(t2())];
    let columns = COLUMNS;
    let column =
        (table.clone(), 0usize..COLUMNS.len()).prop_map(move |(t, i)| (t, col(t, columns[i])));
    let create = (table.clone(), any::<bool>()).prop_map(|(t, alt)| {
        let name = if t == t1() { "todo" } else { "note" };
        let pk = if t == t1() {
            vec![PkColumn::new(t, "id", if alt { ColumnType::Integer } else { ColumnType::Text })]
        } else if alt {
            vec![PkColumn::new(t, "a", ColumnType::Integer)]
        } else {
            vec![
                PkColumn::new(t, "a", ColumnType::Integer),
                PkColumn::new(t, "b", ColumnType::Text),
            ]
        };
        TableOp::CreateTable { table: t, name: name.into(), primary_key: pk }
    });
    let add = (column.clone(), 0usize..3, 0usize..3).prop_map(|((t, c), m, ty)| {
        let merge = [MergeKind::Lww, MergeKind::Counter, MergeKind::Max][m];
        let ty = if merge == MergeKind::Counter {
            ColumnType::Integer
        } else {
            [ColumnType::Any, ColumnType::Text, ColumnType::Integer][ty]
        };
        let name = COLUMNS.into_iter().find(|n| col(t, n) == c).unwrap();
        TableOp::AddColumn { table: t, column: c, name: name.into(), ty, merge }
    });
    let rename_table = (table.clone(), prop_oneof![Just("todo"), Just("tasks"), Just("note")])
        .prop_map(|(t, n)| TableOp::RenameTable { table: t, name: n.into() });
    let rename_column = (column.clone(), prop_oneof![Just("title"), Just("name"), Just("votes")])
        .prop_map(|((t, c), n)| TableOp::RenameColumn { table: t, column: c, name: n.into() });
    let drop_table = table.clone().prop_map(|t| TableOp::DropTable { table: t });
    let drop_column = column.clone().prop_map(|(t, c)| TableOp::DropColumn { table: t, column: c });
    let write = prop_oneof![
        value_strategy().prop_map(CellWrite::Set),
        value_strategy().prop_map(CellWrite::Max),
        (-3i64..4).prop_map(CellWrite::Add),
        Just(CellWrite::Add(i64::MAX)),
    ];
    let put = table
        .clone()
        .prop_flat_map(move |t| {
            let cells = proptest::collection::btree_map(0usize..COLUMNS.len(), write.clone(), 0..6);
            (Just(t), key_strategy(t), cells)
        })
        .prop_map(move |(t, key, cells)| TableOp::Put {
            table: t,
            key,
            cells: cells.into_iter().map(|(i, w)| (col(t, columns[i]), w)).collect(),
        });
    let delete = table
        .prop_flat_map(|t| (Just(t), key_strategy(t)))
        .prop_map(|(t, key)| TableOp::Delete { table: t, key });
    prop_oneof![
        3 => create,
        3 => add,
        1 => rename_table,
        1 => rename_column,
        1 => drop_table,
        1 => drop_column,
        8 => put,
        3 => delete,
    ]
}

/// One step: which replica writes, the ops of its entry, how far the clock moves, and
/// which pair exchanges afterwards.
type Step = (usize, Vec<TableOp>, i64, usize, usize);

fn step_strategy() -> impl Strategy<Value = Step> {
    (0usize..3, proptest::collection::vec(op_strategy(), 1..4), -1i64..2, 0usize..3, 0usize..3)
}

/// The visible rows through the SQL views, with the model's rows turned into what SQL can
/// show (NaN reads as NULL), each table's rows sorted by value order.
fn views(conn: &Connection, schema: &TablesDump) -> Vec<(String, Vec<Vec<Value>>)> {
    schema
        .tables
        .iter()
        .map(|t| {
            let mut stmt =
                conn.prepare(&format!("SELECT * FROM {}", quote_ident(&t.name))).unwrap();
            let n = stmt.column_count();
            let mut rows: Vec<Vec<Value>> = stmt
                .query_map([], |r| Ok((0..n).map(|i| from_sql(r.get_ref(i).unwrap())).collect()))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            rows.sort();
            (t.name.clone(), rows)
        })
        .collect()
}

fn run(steps: Vec<Step>, shuffle_seed: u64, limits: Limits) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(1_700_000_000_000);
        let replicas: Vec<SqliteReplica> =
            (0..3).map(|i| device(dir.path(), i, &clock, limits)).collect();
        for (who, ops, tick, a, b) in steps {
            clock.advance(tick);
            let ops = ops.iter().map(|o| o.to_op().unwrap()).collect();
            replicas[who].append_local(vec![LocalTx { ops, author: None }]).unwrap();
            if a != b {
                pull(&replicas[a], &replicas[b]).await.unwrap();
            }
        }
        for _ in 0..2 {
            for a in 0..3 {
                for b in 0..3 {
                    if a != b {
                        let report = pull(&replicas[a], &replicas[b]).await.unwrap();
                        assert!(report.stalled.is_empty(), "{:?}", report.stalled);
                    }
                }
            }
        }

        // The model receives every entry once, in a shuffled order.
        let mut entries = replicas[0].history(None, 0, usize::MAX).unwrap();
        let mut state = shuffle_seed;
        for i in (1..entries.len()).rev() {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            entries.swap(i, (state >> 33) as usize % (i + 1));
        }
        let mut model = match limits {
            Some((budget, _)) => TablesModel::with_column_budget(budget),
            None => TablesModel::new(),
        };
        for e in &entries {
            model.apply_payload(e.payload().unwrap()).unwrap();
        }
        let expected_hidden = model.hidden_dump();
        let expected_views = model.dump().rows_as_sql_shows();

        for r in &replicas {
            r.with_reader(|conn| {
                let hidden = materializer(limits).hidden_dump(conn).unwrap();
                assert_eq!(hidden, expected_hidden, "hidden state of {}", r.path().display());
                let mut m = materializer(limits);
                let schema = m.schema_from(conn).unwrap();
                // The schema alone holds no rows, so `conflicts()` leaves `RowsNotShown` out;
                // `conflicts_with_rows` counts them in SQL and must match the model exactly.
                let expected: Vec<SchemaConflict> = model
                    .conflicts()
                    .into_iter()
                    .filter(|c| c.kind != ConflictKind::RowsNotShown)
                    .collect();
                assert_eq!(m.conflicts(), expected, "conflicts of {}", r.path().display());
                let with_rows = materializer(limits).conflicts_with_rows(conn).unwrap();
                assert_eq!(with_rows, model.conflicts(), "conflicts of {}", r.path().display());
                assert_eq!(views(conn, &schema), expected_views, "views of {}", r.path().display());
                Ok(())
            })
            .unwrap();
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn replicas_match_the_model(
        steps in proptest::collection::vec(step_strategy(), 1..30),
        seed: u64,
        wide: bool,
    ) {
        // Budget 5 columns (1 or 2 of them keys), shards of 3 part columns (one LWW part
        // and one more): wide tables spread over several shards and past the budget.
        run(steps, seed, wide.then_some((5, 3)));
    }
}

/// Regression (found by the property test in CI): a row that arrives for a table whose
/// declaration is already known, with no cells, must show in the view — creating the
/// physical table and its key columns has to rebuild the view.
#[test]
fn a_row_without_cells_arriving_after_the_schema_shows() {
    let note = t2();
    let put = TableOp::Put {
        table: note,
        key: RowKey::from_values(&[Value::Integer(0), Value::text("p").unwrap()]).unwrap(),
        cells: vec![],
    };
    let create = TableOp::CreateTable {
        table: note,
        name: "note".into(),
        primary_key: vec![
            PkColumn::new(note, "a", ColumnType::Integer),
            PkColumn::new(note, "b", ColumnType::Text),
        ],
    };
    run(vec![(0, vec![put], 0, 0, 0), (1, vec![create], 0, 0, 0)], 0, None);
}
