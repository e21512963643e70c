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

// ---------------------------------------------------------------------------------------
// Exact rules, driven on `TablesMaterializer` directly: one materializer per connection,
// each entry in its own transaction, the way the replica drives it (begin, apply, then
// commit and `committed`, or rollback and `rolled_back`).

use shoal_sqlite::{MaterializeError, Materializer, TableChange, live_row};
use tokio::sync::broadcast::error::TryRecvError;

/// One connection to a replica file and the materializer that owns it.
struct Direct {
    conn: Connection,
    m: TablesMaterializer,
}

impl Direct {
    fn open(path: &std::path::Path) -> Direct {
        let conn = Connection::open(path).unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
        let mut m = TablesMaterializer::new();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        m.init(&conn).unwrap();
        conn.execute_batch("COMMIT").unwrap();
        Direct { conn, m }
    }

    /// Applies one entry stamped `hlc` (op `i` at `hlc + i`) in a transaction of its own,
    /// committed if `apply` succeeds and rolled back otherwise.
    fn entry(&mut self, hlc: u64, ops: Vec<Op>) -> Result<(), MaterializeError> {
        let payload = Payload { hlc: Hlc::from_u64(hlc), author: None, ops };
        self.conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        self.m.begin(&self.conn).unwrap();
        let origin =
            PeerId::derive(&workspace(), &DeviceKey::from_secret_bytes(&[7; 32]).public_key());
        let r = self.m.apply(&self.conn, origin, 0, &payload);
        if r.is_ok() {
            self.conn.execute_batch("COMMIT").unwrap();
            self.m.committed();
        } else {
            self.conn.execute_batch("ROLLBACK").unwrap();
            self.m.rolled_back();
        }
        r
    }

    fn ops(&mut self, hlc: u64, ops: &[TableOp]) {
        self.entry(hlc, ops.iter().map(|o| o.to_op().unwrap()).collect()).unwrap();
    }

    /// The rows of the view `name`, sorted.
    fn rows(&self, name: &str) -> Vec<Vec<Value>> {
        let mut stmt = self.conn.prepare(&format!("SELECT * FROM {}", quote_ident(name))).unwrap();
        let n = stmt.column_count();
        let mut rows: Vec<Vec<Value>> = stmt
            .query_map([], |r| Ok((0..n).map(|i| from_sql(r.get_ref(i).unwrap())).collect()))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        rows.sort();
        rows
    }

    fn table_names(&mut self) -> Vec<String> {
        self.m.schema_from(&self.conn).unwrap().tables.into_iter().map(|t| t.name).collect()
    }
}

fn todo_create() -> TableOp {
    TableOp::CreateTable {
        table: t1(),
        name: "todo".into(),
        primary_key: vec![PkColumn::new(t1(), "id", ColumnType::Text)],
    }
}

fn title_add() -> TableOp {
    TableOp::AddColumn {
        table: t1(),
        column: col(t1(), "title"),
        name: "title".into(),
        ty: ColumnType::Any,
        merge: MergeKind::Lww,
    }
}

fn key(s: &str) -> RowKey {
    RowKey::from_values(&[Value::text(s).unwrap()]).unwrap()
}

fn put_title(k: &str, v: i64) -> TableOp {
    TableOp::Put {
        table: t1(),
        key: key(k),
        cells: vec![(col(t1(), "title"), CellWrite::Set(Value::Integer(v)))],
    }
}

fn del(k: &str) -> TableOp {
    TableOp::Delete { table: t1(), key: key(k) }
}

fn row(k: &str, v: i64) -> Vec<Value> {
    vec![Value::text(k).unwrap(), Value::Integer(v)]
}

/// A `todo` table with an LWW `title`, declared at HLC 1.
fn todo_db(dir: &std::path::Path) -> Direct {
    let mut d = Direct::open(&dir.join("r.shoal"));
    d.ops(1, &[todo_create(), title_add()]);
    d
}

fn events(rx: &mut tokio::sync::broadcast::Receiver<TableChange>) -> Vec<TableChange> {
    let mut out = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(c) => out.push(c),
            Err(TryRecvError::Empty) => return out,
            Err(e) => panic!("{e:?}"),
        }
    }
}

#[test]
fn deletes_hide_and_later_puts_revive_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = todo_db(dir.path());
    let mut rx = d.m.handle().subscribe();
    let tc = |k: &str, columns: Vec<ColumnId>, live| TableChange {
        table: t1(),
        key: key(k),
        columns,
        live,
    };
    let title = col(t1(), "title");

    d.ops(10, &[put_title("a", 1)]);
    assert_eq!(d.rows("todo"), vec![row("a", 1)]);
    assert_eq!(live_row(&d.conn, "todo", &key("a")).unwrap(), Some(row("a", 1)));
    assert_eq!(events(&mut rx), vec![tc("a", vec![title], true)]);

    // The same value again at a later HLC: nothing visible changes, no event.
    d.ops(11, &[put_title("a", 1)]);
    assert_eq!(events(&mut rx), vec![]);

    // A delete hides the row and reports it gone.
    d.ops(20, &[del("a")]);
    assert_eq!(d.rows("todo"), Vec::<Vec<Value>>::new());
    assert_eq!(live_row(&d.conn, "todo", &key("a")).unwrap(), None);
    assert_eq!(events(&mut rx), vec![tc("a", vec![], false)]);

    // A put older than the tombstone does not revive, and reports nothing.
    d.ops(15, &[put_title("a", 2)]);
    assert_eq!(d.rows("todo"), Vec::<Vec<Value>>::new());
    assert_eq!(events(&mut rx), vec![]);
    // A put at the tombstone's own HLC does not either (op 0 of an entry at 20).
    d.ops(20, &[put_title("a", 2)]);
    assert_eq!(d.rows("todo"), Vec::<Vec<Value>>::new());
    // An older delete arriving late does not lower the tombstone, and reports nothing.
    d.ops(12, &[del("a")]);
    assert_eq!(events(&mut rx), vec![]);
    d.ops(16, &[put_title("a", 3)]);
    assert_eq!(d.rows("todo"), Vec::<Vec<Value>>::new());
    // Deleting a row that is not live reports nothing.
    d.ops(21, &[del("a")]);
    assert_eq!(events(&mut rx), vec![]);
    let hidden = d.m.hidden_dump(&d.conn).unwrap();
    let state = &hidden.tables[&t1()].rows[&key("a")];
    assert_eq!(state.tombstone, Some(Hlc::from_u64(21)));
    assert_eq!(state.last_write, None);
    assert!(state.cells.is_empty(), "{state:?}");

    // A put after the tombstone revives the row with only what was written after it.
    d.ops(30, &[TableOp::Put { table: t1(), key: key("a"), cells: vec![] }]);
    assert_eq!(d.rows("todo"), vec![vec![Value::text("a").unwrap(), Value::Null]]);
    assert_eq!(events(&mut rx), vec![tc("a", vec![], true)]);
    d.ops(31, &[put_title("a", 4)]);
    assert_eq!(d.rows("todo"), vec![row("a", 4)]);
    assert_eq!(events(&mut rx), vec![tc("a", vec![title], true)]);

    // A delete of a row never written leaves a tombstone: a put before it stays hidden.
    d.ops(40, &[del("b")]);
    assert_eq!(events(&mut rx), vec![]);
    d.ops(35, &[put_title("b", 5)]);
    d.ops(41, &[put_title("c", 6)]);
    assert_eq!(d.rows("todo"), vec![row("a", 4), row("c", 6)]);
    let hidden = d.m.hidden_dump(&d.conn).unwrap();
    assert_eq!(hidden.tables[&t1()].rows[&key("b")].tombstone, Some(Hlc::from_u64(40)));
}

#[test]
fn a_column_drop_ignores_older_cell_writes_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = todo_db(dir.path());
    let title = col(t1(), "title");
    d.ops(10, &[put_title("a", 1)]);
    d.ops(20, &[TableOp::DropColumn { table: t1(), column: title }]);
    // Older than the drop: the row is written (it is not deleted) but the cell is not;
    // newer: both are.
    d.ops(15, &[put_title("b", 2)]);
    d.ops(25, &[put_title("c", 3)]);
    let hidden = d.m.hidden_dump(&d.conn).unwrap();
    let rows = &hidden.tables[&t1()].rows;
    let cells = |k: &str| rows[&key(k)].cells.keys().copied().collect::<Vec<_>>();
    assert_eq!(cells("a"), vec![], "the drop forgets the older cell");
    assert_eq!(cells("b"), vec![]);
    assert_eq!(rows[&key("b")].last_write, Some(Hlc::from_u64(15)));
    assert_eq!(cells("c"), vec![title]);
    assert_eq!(
        d.rows("todo"),
        vec![
            vec![Value::text("a").unwrap()],
            vec![Value::text("b").unwrap()],
            vec![Value::text("c").unwrap()]
        ]
    );
}

#[test]
fn a_schema_change_through_one_connection_is_seen_by_another() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.shoal");
    let mut a = Direct::open(&path);
    let mut b = Direct::open(&path);
    assert_eq!(b.table_names(), Vec::<String>::new());
    a.ops(1, &[todo_create(), title_add()]);
    // `b` loaded its caches before: it must notice the change and reload.
    assert_eq!(b.table_names(), vec!["todo".to_owned()]);
    b.ops(10, &[put_title("a", 1)]);
    assert_eq!(a.rows("todo"), vec![row("a", 1)]);
    a.ops(20, &[TableOp::RenameTable { table: t1(), name: "tasks".into() }]);
    assert_eq!(b.table_names(), vec!["tasks".to_owned()]);
    b.ops(21, &[put_title("b", 2)]);
    assert_eq!(a.rows("tasks"), vec![row("a", 1), row("b", 2)]);
    assert_eq!(b.m.hidden_dump(&b.conn).unwrap(), a.m.hidden_dump(&a.conn).unwrap());
}

#[test]
fn a_rolled_back_schema_change_is_forgotten_even_if_the_generation_matches_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.shoal");
    let mut a = Direct::open(&path);
    let mut b = Direct::open(&path);
    // `a` applies a table declaration, then its transaction rolls back.
    a.conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    a.m.begin(&a.conn).unwrap();
    let payload =
        Payload { hlc: Hlc::from_u64(1), author: None, ops: vec![todo_create().to_op().unwrap()] };
    let origin = PeerId::derive(&workspace(), &DeviceKey::from_secret_bytes(&[7; 32]).public_key());
    a.m.apply(&a.conn, origin, 0, &payload).unwrap();
    a.conn.execute_batch("ROLLBACK").unwrap();
    a.m.rolled_back();
    // `b` makes the same number of schema changes: the counter in the file reaches the
    // value `a` counted for its rolled-back change, yet `a` must reload.
    let note = TableOp::CreateTable {
        table: t2(),
        name: "note".into(),
        primary_key: vec![PkColumn::new(t2(), "a", ColumnType::Integer)],
    };
    b.ops(2, &[note]);
    assert_eq!(a.table_names(), vec!["note".to_owned()]);
}

#[test]
fn an_op_of_an_unknown_kind_needs_an_upgrade_and_applies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Direct::open(&dir.path().join("r.shoal"));
    let unknown = Op { domain: Domain::TABLES, kind: 9999, body: vec![] };
    let r = d.entry(1, vec![todo_create().to_op().unwrap(), unknown]);
    assert!(matches!(r, Err(MaterializeError::NeedsUpgrade(_))), "{r:?}");
    assert_eq!(d.table_names(), Vec::<String>::new());
    // A known kind whose body does not decode is malformed, not newer.
    let bad = Op { domain: Domain::TABLES, kind: todo_create().kind(), body: vec![0xff; 3] };
    let r = d.entry(2, vec![todo_create().to_op().unwrap(), bad]);
    assert!(matches!(r, Err(MaterializeError::Malformed(_))), "{r:?}");
    assert_eq!(d.table_names(), Vec::<String>::new());
    // Ops of other domains are skipped (they are other materializers'); the rest applies.
    let doc = Op { domain: Domain::DOCS, kind: 1, body: vec![0xff] };
    d.entry(3, vec![doc, todo_create().to_op().unwrap()]).unwrap();
    assert_eq!(d.table_names(), vec!["todo".to_owned()]);
}

#[test]
fn change_events_go_out_on_commit_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = todo_db(dir.path());
    let mut rx = d.m.handle().subscribe();
    let mut schema = d.m.handle().schema_changes();
    let seen = *schema.borrow_and_update();
    // An entry that fails after a put: rolled back, nothing is sent, now or later.
    let unknown = Op { domain: Domain::TABLES, kind: 9999, body: vec![] };
    let r = d.entry(5, vec![put_title("x", 1).to_op().unwrap(), unknown]);
    assert!(r.is_err());
    // A put applied in a transaction that rolls back.
    d.conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    d.m.begin(&d.conn).unwrap();
    let payload = Payload {
        hlc: Hlc::from_u64(6),
        author: None,
        ops: vec![put_title("y", 1).to_op().unwrap()],
    };
    let origin = PeerId::derive(&workspace(), &DeviceKey::from_secret_bytes(&[7; 32]).public_key());
    d.m.apply(&d.conn, origin, 0, &payload).unwrap();
    assert_eq!(events(&mut rx), vec![], "sent before the commit");
    d.conn.execute_batch("ROLLBACK").unwrap();
    d.m.rolled_back();
    d.ops(7, &[put_title("z", 1)]);
    let got: Vec<RowKey> = events(&mut rx).into_iter().map(|c| c.key).collect();
    assert_eq!(got, vec![key("z")]);
    assert_eq!(d.rows("todo"), vec![row("z", 1)]);
    // A schema change moves the schema counter up.
    d.ops(8, &[TableOp::RenameTable { table: t1(), name: "tasks".into() }]);
    assert!(*schema.borrow_and_update() > seen);
}

#[test]
fn drops_report_the_rows_they_touch() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = todo_db(dir.path());
    let title = col(t1(), "title");
    let mut rx = d.m.handle().subscribe();
    d.ops(10, &[put_title("a", 1)]);
    d.ops(35, &[put_title("b", 2)]);
    // Written at the very HLC of the table drop below (another device's clock): the drop
    // covers it.
    d.ops(30, &[put_title("c", 3)]);
    events(&mut rx);
    // A column drop: every live row stays live and its column changed.
    d.ops(20, &[TableOp::DropColumn { table: t1(), column: title }]);
    let tc = |k: &str, columns: Vec<ColumnId>, live| TableChange {
        table: t1(),
        key: key(k),
        columns,
        live,
    };
    assert_eq!(
        events(&mut rx),
        vec![tc("a", vec![title], true), tc("b", vec![title], true), tc("c", vec![title], true)]
    );
    // A table drop: rows written before it are gone, rows written after it stay.
    d.ops(30, &[TableOp::DropTable { table: t1() }]);
    assert_eq!(
        events(&mut rx),
        vec![tc("a", vec![], false), tc("b", vec![], true), tc("c", vec![], false)]
    );
    let hidden = d.m.hidden_dump(&d.conn).unwrap();
    let rows = &hidden.tables[&t1()].rows;
    assert!(!rows.contains_key(&key("a")), "{rows:?}");
    assert!(!rows.contains_key(&key("c")), "{rows:?}");
    assert_eq!(rows[&key("b")].last_write, Some(Hlc::from_u64(35)));
}
