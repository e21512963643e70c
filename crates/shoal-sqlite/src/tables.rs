//! Materialization of the table domain into the replica's SQLite file.
//!
//! Owns: [`TablesMaterializer`] — the physical tables that hold each table's rows with their
//! hidden bookkeeping, the side tables of counter increments and max-column frontiers, the
//! stored schema ops, and the SQL views apps read — and [`TableChange`] events.
//!
//! Layout (all names reserved under the `shoal_` prefix):
//!
//! | object | what |
//! |---|---|
//! | `shoal_schema_ops(hlc, op)` | every schema op ever applied (they are idempotent); the schema is rebuilt from them with `shoal_tables::TablesModel` |
//! | `shoal_schema_gen` | a counter bumped by every schema or DDL change, so other processes' connections notice |
//! | `shoal_t_<table>` | one row per row key: `key` (RowKey bytes), `kn` (number of key values), `tomb` (latest delete), `written` (latest write, NULL once a tombstone covers it), `k0..` (key values), and per column: `l_<col>`/`lh_<col>` (LWW value and HLC), `n_<col>` (counter sum), `m_<col>` (max value) |
//! | `shoal_adds(tbl, key, col, hlc, n)` | counter increments above the floor, summed per HLC |
//! | `shoal_maxw(tbl, key, col, hlc, value)` | max-column Pareto frontier (values in canonical encoding) |
//! | views named after tables | live rows (`written IS NOT NULL` and a key that fits), declared columns in view order |
//!
//! Invariants: the stored state is exactly the canonical hidden state of
//! `shoal_tables::TablesModel` for the same ops (tested differentially): everything at or
//! below a row's floor (its latest delete, its table's drop, and for a cell its column's
//! drop) is forgotten, so arrival order never shows. All ops of an entry are applied in the
//! replica's transaction; ops are decoded before anything is written, so an entry applies
//! whole or not at all.
//!
//! SQLite has no NaN: a REAL NaN is kept as NaN in the merge state (an LWW cell whose HLC
//! is stored negated marks it) and reads as NULL through SQL.
//!
//! Never: writes the oplog, cursors or clock; trusts in-memory schema caches across
//! processes (it checks `shoal_schema_gen` before every entry).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{Connection, OptionalExtension, params};
use shoal_core::codec::Encode;
use shoal_core::{Domain, Hlc, Payload, PeerId};
use shoal_tables::{
    CellWrite, ColumnId, HiddenDump, MaxFrontier, MergeKind, RowKey, RowState, SchemaConflict,
    TableId, TableOp, TablesDump, TablesModel, Value, lww_wins, survives,
};
use tokio::sync::broadcast;

use crate::materialize::{MaterializeError, Materializer};

/// How many change events a slow subscriber may fall behind before it is told it lagged.
pub const CHANGE_BUFFER: usize = 4096;

/// A change to one row, published after the transaction that made it commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableChange {
    /// The table.
    pub table: TableId,
    /// The row.
    pub key: RowKey,
    /// The columns whose visible value changed (key columns are never listed).
    pub columns: Vec<ColumnId>,
    /// Whether the row is visible after the change.
    pub live: bool,
}

const DDL: &str = "
CREATE TABLE IF NOT EXISTS shoal_schema_ops (
    hlc  INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    body BLOB    NOT NULL,
    PRIMARY KEY (hlc, kind, body)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS shoal_schema_gen (id INTEGER PRIMARY KEY CHECK (id = 0), gen INTEGER NOT NULL);
INSERT OR IGNORE INTO shoal_schema_gen (id, gen) VALUES (0, 0);
CREATE TABLE IF NOT EXISTS shoal_adds (
    tbl INTEGER NOT NULL, key BLOB NOT NULL, col INTEGER NOT NULL, hlc INTEGER NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (tbl, key, col, hlc)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS shoal_maxw (
    tbl INTEGER NOT NULL, key BLOB NOT NULL, col INTEGER NOT NULL, hlc INTEGER NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (tbl, key, col, hlc)
) WITHOUT ROWID;
";

/// Which hidden parts of a column exist physically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Part {
    Lww,
    Counter,
    Max,
}

#[derive(Debug, Default, Clone)]
struct Physical {
    key_columns: usize,
    parts: HashSet<(ColumnId, Part)>,
}

/// Drops known for one table: its own and its columns'.
#[derive(Debug, Default, Clone)]
struct Drops {
    table: Option<Hlc>,
    columns: HashMap<ColumnId, Hlc>,
}

impl Drops {
    fn column(&self, c: ColumnId) -> Option<Hlc> {
        self.columns.get(&c).copied()
    }
}

/// The SQL of puts with one signature (which cells, of which kind).
#[derive(Debug)]
struct PutStatements {
    select: String,
    upsert: String,
    state_columns: usize,
}

/// Puts are keyed by table, the (column, part) of each cell, and the number of key values.
type PutKey = (TableId, Vec<(ColumnId, Part)>, usize);

/// Keeps tables materialized in the replica's file. See the module doc.
pub struct TablesMaterializer {
    put_sql: HashMap<PutKey, Arc<PutStatements>>,
    schema: TablesModel,
    drops: HashMap<TableId, Drops>,
    physical: HashMap<TableId, Physical>,
    views: BTreeMap<String, String>,
    conflicts: Vec<SchemaConflict>,
    generation: i64,
    views_dirty: bool,
    /// The caches may not match the file (after a rollback); reload before the next use.
    stale: bool,
    pending: Vec<TableChange>,
    changes: broadcast::Sender<TableChange>,
    schema_watch: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for TablesMaterializer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TablesMaterializer")
            .field("tables", &self.physical.len())
            .field("views", &self.views.len())
            .finish_non_exhaustive()
    }
}

/// Handles for observing a [`TablesMaterializer`] from outside the replica's writer.
#[derive(Debug, Clone)]
pub struct TablesHandle {
    changes: broadcast::Sender<TableChange>,
    schema: tokio::sync::watch::Receiver<u64>,
}

impl TablesHandle {
    /// Row changes committed from now on. A subscriber that falls more than
    /// [`CHANGE_BUFFER`] events behind receives `RecvError::Lagged` and should re-query.
    pub fn subscribe(&self) -> broadcast::Receiver<TableChange> {
        self.changes.subscribe()
    }

    /// A counter that moves whenever this process applies a schema change.
    pub fn schema_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.schema.clone()
    }
}

impl Default for TablesMaterializer {
    fn default() -> Self {
        Self::new()
    }
}

impl TablesMaterializer {
    /// A materializer; its state is loaded from the file at `init`.
    pub fn new() -> Self {
        TablesMaterializer {
            put_sql: HashMap::new(),
            schema: TablesModel::new(),
            drops: HashMap::new(),
            physical: HashMap::new(),
            views: BTreeMap::new(),
            conflicts: Vec::new(),
            generation: -1,
            views_dirty: false,
            stale: true,
            pending: Vec::new(),
            changes: broadcast::Sender::new(CHANGE_BUFFER),
            schema_watch: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Observation handles (change events, schema changes).
    pub fn handle(&self) -> TablesHandle {
        TablesHandle { changes: self.changes.clone(), schema: self.schema_watch.subscribe() }
    }

    /// Reloads the schema and physical layout from the file if another connection changed
    /// them (or a rollback made the caches unreliable).
    fn refresh(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        let generation: i64 = conn
            .prepare_cached("SELECT gen FROM shoal_schema_gen WHERE id = 0")?
            .query_row([], |r| r.get(0))?;
        if !self.stale && generation == self.generation {
            return Ok(());
        }
        self.schema = TablesModel::new();
        self.drops.clear();
        let mut stmt =
            conn.prepare("SELECT hlc, kind, body FROM shoal_schema_ops ORDER BY hlc, kind, body")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, Vec<u8>>(2)?))
        })?;
        for row in rows {
            let (hlc, kind, body) = row?;
            // Stored ops were decoded once before they were stored; one that no longer
            // decodes is skipped rather than stopping the replica.
            let kind = u32::try_from(kind).unwrap_or(u32::MAX);
            if let Ok(op) = TableOp::decode_body(kind, &body) {
                self.schema_apply(Hlc::from_u64(hlc as u64), &op);
            }
        }
        self.physical.clear();
        let names: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'shoal\\_t\\_%' ESCAPE '\\'")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for name in names {
            let Some(table) =
                name.strip_prefix("shoal_t_").and_then(|h| u64::from_str_radix(h, 16).ok())
            else {
                continue;
            };
            let mut phys = Physical::default();
            let cols: Vec<String> = conn
                .prepare(&format!("PRAGMA table_info(\"{name}\")"))?
                .query_map([], |r| r.get(1))?
                .collect::<Result<_, _>>()?;
            for col in cols {
                if let Some(n) = col.strip_prefix('k').and_then(|n| n.parse::<usize>().ok()) {
                    phys.key_columns = phys.key_columns.max(n + 1);
                } else if let Some((part, id)) = parse_part(&col) {
                    phys.parts.insert((id, part));
                }
            }
            self.physical.insert(TableId(table), phys);
        }
        self.views = conn
            .prepare("SELECT name, sql FROM sqlite_master WHERE type = 'view'")?
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
            .collect::<Result<_, _>>()?;
        self.conflicts = self.schema.conflicts();
        self.generation = generation;
        self.stale = false;
        Ok(())
    }

    fn bump_generation(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        conn.prepare_cached("UPDATE shoal_schema_gen SET gen = gen + 1 WHERE id = 0")?
            .execute([])?;
        self.generation += 1;
        Ok(())
    }

    fn schema_apply(&mut self, hlc: Hlc, op: &TableOp) {
        // Validation happened when the op was decoded; the model re-checks and refuses
        // nothing that decoded.
        let _ = self.schema.apply(hlc, op);
        match op {
            TableOp::DropTable { table } => {
                let d = self.drops.entry(*table).or_default();
                d.table = d.table.max(Some(hlc));
            }
            TableOp::DropColumn { table, column } => {
                let d = self.drops.entry(*table).or_default();
                let e = d.columns.entry(*column).or_insert(hlc);
                *e = (*e).max(hlc);
            }
            _ => {}
        }
    }

    /// The schema conflicts of the visible tables (as of the last schema change).
    pub fn conflicts(&self) -> &[SchemaConflict] {
        &self.conflicts
    }

    /// The visible schema: tables with their columns, no rows.
    pub fn schema(&self) -> TablesDump {
        self.schema.dump()
    }

    fn ensure_table(&mut self, conn: &Connection, table: TableId) -> rusqlite::Result<()> {
        if self.physical.contains_key(&table) {
            return Ok(());
        }
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS \"{}\" (key BLOB PRIMARY KEY, kn INTEGER NOT NULL, tomb INTEGER, written INTEGER) WITHOUT ROWID",
            phys_name(table)
        ))?;
        self.physical.insert(table, Physical::default());
        // The table's view read nothing until now.
        self.views_dirty = true;
        self.bump_generation(conn)
    }

    fn ensure_key_columns(
        &mut self,
        conn: &Connection,
        table: TableId,
        n: usize,
    ) -> rusqlite::Result<()> {
        let have = self.physical.get(&table).map_or(0, |p| p.key_columns);
        for i in have..n {
            conn.execute_batch(&format!("ALTER TABLE \"{}\" ADD COLUMN k{i}", phys_name(table)))?;
        }
        if n > have {
            if let Some(p) = self.physical.get_mut(&table) {
                p.key_columns = n;
            }
            // The view shows key columns it now has.
            self.views_dirty = true;
            self.bump_generation(conn)?;
        }
        Ok(())
    }

    fn ensure_part(
        &mut self,
        conn: &Connection,
        table: TableId,
        column: ColumnId,
        part: Part,
    ) -> rusqlite::Result<()> {
        if self.physical.get(&table).is_some_and(|p| p.parts.contains(&(column, part))) {
            return Ok(());
        }
        let t = phys_name(table);
        match part {
            Part::Lww => conn.execute_batch(&format!(
                "ALTER TABLE \"{t}\" ADD COLUMN {}; ALTER TABLE \"{t}\" ADD COLUMN {};",
                col_name("l", column),
                col_name("lh", column)
            ))?,
            Part::Counter => conn.execute_batch(&format!(
                "ALTER TABLE \"{t}\" ADD COLUMN {}",
                col_name("n", column)
            ))?,
            Part::Max => conn.execute_batch(&format!(
                "ALTER TABLE \"{t}\" ADD COLUMN {}",
                col_name("m", column)
            ))?,
        }
        if let Some(p) = self.physical.get_mut(&table) {
            p.parts.insert((column, part));
        }
        // A new column can change a view (a declared column starts to have data).
        self.views_dirty = true;
        self.bump_generation(conn)
    }

    fn apply_op(
        &mut self,
        conn: &Connection,
        hlc: Hlc,
        op: &TableOp,
    ) -> Result<(), MaterializeError> {
        match op {
            TableOp::Put { table, key, cells } => self.put(conn, hlc, *table, key, cells),
            TableOp::Delete { table, key } => self.delete(conn, hlc, *table, key),
            _ => self.schema_op(conn, hlc, op),
        }
    }

    fn schema_op(
        &mut self,
        conn: &Connection,
        hlc: Hlc,
        op: &TableOp,
    ) -> Result<(), MaterializeError> {
        let inserted = conn
            .prepare_cached(
                "INSERT OR IGNORE INTO shoal_schema_ops (hlc, kind, body) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![hlc.as_u64() as i64, op.kind(), op.to_bytes()])?;
        if inserted == 0 {
            return Ok(()); // already applied: schema ops are idempotent
        }
        self.schema_apply(hlc, op);
        self.bump_generation(conn)?;
        self.views_dirty = true;
        let table = op.table();
        let has_rows = self.physical.contains_key(&table);
        match op {
            TableOp::DropTable { .. } if has_rows => self.prune_rows(conn, table, None)?,
            TableOp::DropColumn { column, .. } if has_rows => {
                self.prune_rows(conn, table, Some(*column))?
            }
            _ => {}
        }
        Ok(())
    }

    fn put(
        &mut self,
        conn: &Connection,
        hlc: Hlc,
        table: TableId,
        key: &RowKey,
        cells: &[(ColumnId, CellWrite)],
    ) -> Result<(), MaterializeError> {
        self.ensure_table(conn, table)?;
        for (column, write) in cells {
            self.ensure_part(conn, table, *column, part_of(write))?;
        }
        let values =
            key.values().map_err(|e| MaterializeError::Malformed(format!("row key: {e}")))?;
        self.ensure_key_columns(conn, table, values.len())?;
        let (table_dropped, column_drops): (Option<Hlc>, Vec<Option<Hlc>>) = {
            let d = self.drops.get(&table);
            (
                d.and_then(|d| d.table),
                cells.iter().map(|(c, _)| d.and_then(|d| d.column(*c))).collect(),
            )
        };
        let signature: Vec<(ColumnId, Part)> =
            cells.iter().map(|(c, w)| (*c, part_of(w))).collect();
        let statements = self.put_statements(table, &signature, values.len());

        // One read of the row: its tombstone, last write and the current state of every
        // cell written, in signature order.
        let current: Option<(Option<i64>, Option<i64>, Vec<SqlValue>)> = conn
            .prepare_cached(&statements.select)?
            .query_row([key.as_bytes()], |r| {
                let n = r.as_ref().column_count();
                let mut rest = Vec::with_capacity(n - 2);
                for i in 2..n {
                    rest.push(r.get::<_, SqlValue>(i)?);
                }
                Ok((r.get(0)?, r.get(1)?, rest))
            })
            .optional()?;
        let (tomb, written, mut state) = match current {
            Some((t, w, state)) => (
                t.map(|h| Hlc::from_u64(h as u64)),
                w.filter(|w| *w != 0).map(|h| Hlc::from_u64(h as u64)),
                state,
            ),
            None => (None, None, vec![SqlValue::Null; statements.state_columns]),
        };
        let floor = tomb.max(table_dropped);
        if !survives(floor, hlc) {
            return Ok(());
        }
        let was_live = written.is_some_and(|w| survives(floor, w));
        let tbl = table.as_u64() as i64;
        let mut changed: Vec<ColumnId> = Vec::new();
        let mut at = 0; // position in `state` of the current cell's columns
        for ((column, write), column_dropped) in cells.iter().zip(column_drops) {
            let width = if matches!(write, CellWrite::Set(_)) { 2 } else { 1 };
            let slot = at;
            at += width;
            if !survives(floor.max(column_dropped), hlc) {
                continue; // `state` keeps the current values: written back unchanged
            }
            match write {
                CellWrite::Set(v) => {
                    let current = lww_from_sql(&state[slot], &state[slot + 1]);
                    if lww_wins(current.as_ref().map(|(h, v)| (*h, v)), (hlc, v)) {
                        if current.as_ref().map(|(_, v)| v) != Some(v) {
                            changed.push(*column);
                        }
                        state[slot] = to_sql(v);
                        state[slot + 1] = SqlValue::Integer(lww_hlc_sql(hlc, v));
                    }
                }
                CellWrite::Add(n) => {
                    let col = column.as_u64() as i64;
                    let existing: Option<i64> = conn
                        .prepare_cached(
                            "SELECT n FROM shoal_adds WHERE tbl = ?1 AND key = ?2 AND col = ?3 AND hlc = ?4",
                        )?
                        .query_row(params![tbl, key.as_bytes(), col, hlc.as_u64() as i64], |r| {
                            r.get(0)
                        })
                        .optional()?;
                    conn.prepare_cached(
                        "INSERT INTO shoal_adds (tbl, key, col, hlc, n) VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT (tbl, key, col, hlc) DO UPDATE SET n = excluded.n",
                    )?
                    .execute(params![
                        tbl,
                        key.as_bytes(),
                        col,
                        hlc.as_u64() as i64,
                        existing.unwrap_or(0).wrapping_add(*n)
                    ])?;
                    let sum = match &state[slot] {
                        SqlValue::Integer(i) => *i,
                        _ => 0,
                    };
                    if *n != 0 {
                        changed.push(*column);
                    }
                    state[slot] = SqlValue::Integer(sum.wrapping_add(*n));
                }
                CellWrite::Max(v) => {
                    let mut frontier = read_frontier(conn, tbl, key, *column)?;
                    let before = frontier.max(None).cloned();
                    if frontier.insert(hlc, v.clone()) {
                        write_frontier(conn, tbl, key, *column, &frontier)?;
                        let after = frontier.max(None).cloned();
                        if before != after {
                            changed.push(*column);
                        }
                        state[slot] = after.as_ref().map_or(SqlValue::Null, to_sql);
                    }
                }
            }
        }

        // Upsert the row: key, key values, last write, and every cell column (changed or
        // not, so that one statement serves every put with this signature).
        let mut args: Vec<SqlValue> = Vec::with_capacity(3 + values.len() + state.len());
        args.push(SqlValue::Blob(key.as_bytes().to_vec()));
        args.push(SqlValue::Integer(values.len() as i64));
        args.push(SqlValue::Integer(written.max(Some(hlc)).map_or(0, |h| h.as_u64() as i64)));
        args.extend(values.iter().map(to_sql));
        args.extend(state);
        conn.prepare_cached(&statements.upsert)?.execute(rusqlite::params_from_iter(args))?;
        if !was_live || !changed.is_empty() {
            self.pending.push(TableChange {
                table,
                key: key.clone(),
                columns: changed,
                live: true,
            });
        }
        Ok(())
    }

    /// The read and upsert statements for puts of `signature` into `table` with `keys` key
    /// values, built once and kept.
    fn put_statements(
        &mut self,
        table: TableId,
        signature: &[(ColumnId, Part)],
        keys: usize,
    ) -> Arc<PutStatements> {
        let cache_key = (table, signature.to_vec(), keys);
        if let Some(s) = self.put_sql.get(&cache_key) {
            return s.clone();
        }
        let t = phys_name(table);
        let mut state_cols = Vec::new();
        for (column, part) in signature {
            match part {
                Part::Lww => {
                    state_cols.push(col_name("l", *column));
                    state_cols.push(col_name("lh", *column));
                }
                Part::Counter => state_cols.push(col_name("n", *column)),
                Part::Max => state_cols.push(col_name("m", *column)),
            }
        }
        let select = format!(
            "SELECT tomb, written{}{} FROM \"{t}\" WHERE key = ?1",
            if state_cols.is_empty() { "" } else { ", " },
            state_cols.join(", ")
        );
        let mut cols = vec!["key".to_owned(), "kn".to_owned(), "written".to_owned()];
        cols.extend((0..keys).map(|i| format!("k{i}")));
        cols.extend(state_cols.iter().cloned());
        let mut updates = vec!["written = excluded.written".to_owned()];
        updates.extend(state_cols.iter().map(|c| format!("{c} = excluded.{c}")));
        let upsert = format!(
            "INSERT INTO \"{t}\" ({}) VALUES ({}) ON CONFLICT (key) DO UPDATE SET {}",
            cols.join(", "),
            (1..=cols.len()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", "),
            updates.join(", ")
        );
        let s = Arc::new(PutStatements { select, upsert, state_columns: state_cols.len() });
        self.put_sql.insert(cache_key, s.clone());
        s
    }

    fn delete(
        &mut self,
        conn: &Connection,
        hlc: Hlc,
        table: TableId,
        key: &RowKey,
    ) -> Result<(), MaterializeError> {
        self.ensure_table(conn, table)?;
        let t = phys_name(table);
        let head = read_row_head(conn, &t, key)?;
        let table_dropped = self.drops.get(&table).and_then(|d| d.table);
        let (tomb, written) = head.unwrap_or((None, None));
        if tomb.is_some_and(|t| t >= hlc) {
            return Ok(());
        }
        let was_live = written.is_some_and(|w| survives(tomb.max(table_dropped), w));
        if head.is_none() {
            let values =
                key.values().map_err(|e| MaterializeError::Malformed(format!("row key: {e}")))?;
            self.ensure_key_columns(conn, table, values.len())?;
            let mut cols = vec!["key".to_owned(), "kn".to_owned(), "tomb".to_owned()];
            let mut args = vec![
                SqlValue::Blob(key.as_bytes().to_vec()),
                SqlValue::Integer(values.len() as i64),
                SqlValue::Integer(hlc.as_u64() as i64),
            ];
            for (i, v) in values.iter().enumerate() {
                cols.push(format!("k{i}"));
                args.push(to_sql(v));
            }
            let placeholders: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
            conn.prepare_cached(&format!(
                "INSERT INTO \"{t}\" ({}) VALUES ({})",
                cols.join(", "),
                placeholders.join(", ")
            ))?
            .execute(rusqlite::params_from_iter(args))?;
        } else {
            conn.prepare_cached(&format!("UPDATE \"{t}\" SET tomb = ?2 WHERE key = ?1"))?
                .execute(params![key.as_bytes(), hlc.as_u64() as i64])?;
            self.prune_row(conn, table, key)?;
        }
        let live = self.row_is_live(conn, table, key)?;
        if was_live && !live {
            self.pending.push(TableChange {
                table,
                key: key.clone(),
                columns: Vec::new(),
                live: false,
            });
        }
        Ok(())
    }

    fn row_is_live(
        &self,
        conn: &Connection,
        table: TableId,
        key: &RowKey,
    ) -> rusqlite::Result<bool> {
        Ok(read_row_head(conn, &phys_name(table), key)?.is_some_and(|(_, w)| w.is_some()))
    }

    /// Forgets what the floors exclude in every row of `table` (after a table drop), or in
    /// one column of every row (after a column drop).
    fn prune_rows(
        &mut self,
        conn: &Connection,
        table: TableId,
        column: Option<ColumnId>,
    ) -> Result<(), MaterializeError> {
        let t = phys_name(table);
        let keys: Vec<Vec<u8>> = conn
            .prepare(&format!("SELECT key FROM \"{t}\""))?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for key in keys {
            let key = RowKey::from_bytes(key)
                .map_err(|e| MaterializeError::Malformed(format!("stored row key: {e}")))?;
            let was_live = self.row_is_live(conn, table, &key)?;
            self.prune_row(conn, table, &key)?;
            let live = self.row_is_live(conn, table, &key)?;
            if was_live {
                let columns = column.into_iter().collect();
                self.pending.push(TableChange { table, key, columns, live });
            }
        }
        Ok(())
    }

    /// Forgets everything at or below the floors of one row.
    fn prune_row(
        &mut self,
        conn: &Connection,
        table: TableId,
        key: &RowKey,
    ) -> Result<(), MaterializeError> {
        let t = phys_name(table);
        let drops = self.drops.get(&table);
        let Some((tomb, written)) = read_row_head(conn, &t, key)? else { return Ok(()) };
        let floor = tomb.max(drops.and_then(|d| d.table));
        let tbl = table.as_u64() as i64;
        let mut sets: Vec<(String, SqlValue)> = Vec::new();
        if written.is_some() && !written.is_some_and(|w| survives(floor, w)) {
            sets.push(("written".into(), SqlValue::Null));
        }
        let parts: Vec<(ColumnId, Part)> = self
            .physical
            .get(&table)
            .map(|p| p.parts.iter().copied().collect())
            .unwrap_or_default();
        for (column, part) in parts {
            let cell_floor = floor.max(drops.and_then(|d| d.column(column)));
            match part {
                Part::Lww => {
                    if read_lww(conn, &t, key, column)?
                        .is_some_and(|(h, _)| !survives(cell_floor, h))
                    {
                        sets.push((col_name("l", column), SqlValue::Null));
                        sets.push((col_name("lh", column), SqlValue::Null));
                    }
                }
                Part::Counter => {
                    let Some(floor_hlc) = cell_floor else { continue };
                    let removed = conn
                        .prepare_cached("DELETE FROM shoal_adds WHERE tbl = ?1 AND key = ?2 AND col = ?3 AND hlc <= ?4")?
                        .execute(params![tbl, key.as_bytes(), column.as_u64() as i64, floor_hlc.as_u64() as i64])?;
                    if removed > 0 {
                        let left = read_adds(conn, tbl, key, column)?;
                        let sum = left.iter().fold(0i64, |a, (_, n)| a.wrapping_add(*n));
                        sets.push((
                            col_name("n", column),
                            if left.is_empty() { SqlValue::Null } else { SqlValue::Integer(sum) },
                        ));
                    }
                }
                Part::Max => {
                    let mut frontier = read_frontier(conn, tbl, key, column)?;
                    let before = frontier.entries().len();
                    frontier.prune(cell_floor);
                    if frontier.entries().len() != before {
                        write_frontier(conn, tbl, key, column, &frontier)?;
                        sets.push((
                            col_name("m", column),
                            frontier.max(None).map_or(SqlValue::Null, to_sql),
                        ));
                    }
                }
            }
        }
        if sets.is_empty() {
            return Ok(());
        }
        let assignments: Vec<String> =
            sets.iter().enumerate().map(|(i, (c, _))| format!("{c} = ?{}", i + 2)).collect();
        let mut args: Vec<SqlValue> = vec![SqlValue::Blob(key.as_bytes().to_vec())];
        args.extend(sets.into_iter().map(|(_, v)| v));
        conn.prepare_cached(&format!(
            "UPDATE \"{t}\" SET {} WHERE key = ?1",
            assignments.join(", ")
        ))?
        .execute(rusqlite::params_from_iter(args))?;
        Ok(())
    }

    /// Recreates the views whose definition changed.
    fn rebuild_views(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        let dump = self.schema.dump();
        self.conflicts = self.schema.conflicts();
        let mut wanted: BTreeMap<String, String> = BTreeMap::new();
        let mut taken: BTreeSet<String> = BTreeSet::new();
        for table in &dump.tables {
            let folded = table.name.to_ascii_lowercase();
            if folded.starts_with("shoal_")
                || folded.starts_with("sqlite_")
                || !taken.insert(folded)
            {
                self.conflicts.push(SchemaConflict {
                    table: table.id,
                    column: None,
                    kind: shoal_tables::ConflictKind::TableName,
                    message: format!(
                        "table {:?} ({}) has a name reserved by Shoal or SQLite; it has no view until renamed",
                        table.name, table.id
                    ),
                });
                continue;
            }
            let phys = self.physical.get(&table.id).cloned().unwrap_or_default();
            let key_len = table.columns.iter().filter(|c| c.merge.is_none()).count();
            let mut select = Vec::new();
            for (i, c) in table.columns.iter().enumerate() {
                let expr = match c.merge {
                    None if i < phys.key_columns => format!("k{i}"),
                    None => "NULL".to_owned(),
                    Some(MergeKind::Lww) if phys.parts.contains(&(c.id, Part::Lww)) => {
                        col_name("l", c.id)
                    }
                    Some(MergeKind::Counter) if phys.parts.contains(&(c.id, Part::Counter)) => {
                        format!("coalesce({}, 0)", col_name("n", c.id))
                    }
                    Some(MergeKind::Max) if phys.parts.contains(&(c.id, Part::Max)) => {
                        col_name("m", c.id)
                    }
                    Some(MergeKind::Counter) => "0".to_owned(),
                    Some(_) => "NULL".to_owned(),
                };
                select.push(format!("{expr} AS {}", quote_ident(&c.name)));
            }
            let from = if self.physical.contains_key(&table.id) {
                format!("\"{}\" WHERE written IS NOT NULL AND kn = {key_len}", phys_name(table.id))
            } else {
                // No data yet: an empty view with the right columns. It reads a real table
                // so that a connection holding an older schema notices the change (SQLite
                // checks the schema cookie only for statements that touch a table).
                "shoal_schema_gen WHERE 0".to_owned()
            };
            let sql = format!(
                "CREATE VIEW {} AS SELECT {} FROM {from}",
                quote_ident(&table.name),
                select.join(", ")
            );
            wanted.insert(table.name.clone(), sql);
        }
        let existing = std::mem::take(&mut self.views);
        let mut changed = false;
        for (name, sql) in &existing {
            if wanted.get(name) != Some(sql) {
                conn.execute_batch(&format!("DROP VIEW IF EXISTS {}", quote_ident(name)))?;
                changed = true;
            }
        }
        for (name, sql) in &wanted {
            if existing.get(name) != Some(sql) {
                conn.execute_batch(sql)?;
                changed = true;
            }
        }
        self.views = wanted;
        self.views_dirty = false;
        if changed {
            self.bump_generation(conn)?;
        }
        self.schema_watch.send_modify(|n| *n += 1);
        Ok(())
    }

    /// The visible schema as stored in the file (tables with their columns, no rows).
    pub fn schema_from(&mut self, conn: &Connection) -> rusqlite::Result<TablesDump> {
        self.refresh(conn)?;
        Ok(self.schema.dump())
    }

    /// The canonical hidden state, read back from the file (for differential tests against
    /// `TablesModel::hidden_dump`).
    pub fn hidden_dump(&mut self, conn: &Connection) -> rusqlite::Result<HiddenDump> {
        self.refresh(conn)?;
        let mut dump = self.schema.hidden_dump();
        for (table, phys) in &self.physical {
            let t = phys_name(*table);
            let tbl = table.as_u64() as i64;
            let keys: Vec<(Vec<u8>, Option<i64>, Option<i64>)> = conn
                .prepare(&format!("SELECT key, tomb, written FROM \"{t}\""))?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?;
            for (key, tomb, written) in keys {
                let Ok(key) = RowKey::from_bytes(key) else { continue };
                let mut row = RowState {
                    tombstone: tomb.map(|h| Hlc::from_u64(h as u64)),
                    last_write: written.map(|h| Hlc::from_u64(h as u64)),
                    cells: BTreeMap::new(),
                };
                for (column, part) in &phys.parts {
                    let cell = row.cells.entry(*column).or_default();
                    match part {
                        Part::Lww => cell.lww = read_lww(conn, &t, &key, *column)?,
                        Part::Counter => {
                            for (h, n) in read_adds(conn, tbl, &key, *column)? {
                                cell.adds.add(h, n);
                            }
                        }
                        Part::Max => cell.max = read_frontier(conn, tbl, &key, *column)?,
                    }
                }
                row.cells.retain(|_, c| !c.is_empty());
                if !row.is_empty() {
                    dump.tables.entry(*table).or_default().rows.insert(key, row);
                }
            }
        }
        Ok(dump)
    }
}

impl Materializer for TablesMaterializer {
    fn domain(&self) -> Domain {
        Domain::TABLES
    }

    fn init(&mut self, conn: &Connection) -> Result<(), rusqlite::Error> {
        conn.execute_batch(DDL)?;
        self.stale = true;
        self.refresh(conn)?;
        // Views are derived state: make sure they match this version's rules.
        self.rebuild_views(conn)
    }

    fn apply(
        &mut self,
        conn: &Connection,
        _origin: PeerId,
        _index: u64,
        payload: &Payload,
    ) -> Result<(), MaterializeError> {
        // Decode everything first: an entry applies whole or not at all.
        let mut ops = Vec::with_capacity(payload.ops.len());
        for (i, op) in payload.ops.iter().enumerate() {
            let hlc = payload.hlc.plus(i as u64);
            // Ops of other domains are theirs (the router dispatches them).
            if op.domain != Domain::TABLES {
                continue;
            }
            match TableOp::decode(op) {
                Ok(t) => ops.push((hlc, t)),
                Err(e) if e.needs_upgrade() => {
                    return Err(MaterializeError::NeedsUpgrade(format!("op {i}: {e}")));
                }
                Err(e) => return Err(MaterializeError::Malformed(format!("op {i}: {e}"))),
            }
        }
        if ops.is_empty() {
            return Ok(());
        }
        self.refresh(conn)?;
        for (hlc, op) in &ops {
            self.apply_op(conn, *hlc, op)?;
        }
        if self.views_dirty {
            self.rebuild_views(conn)?;
        }
        Ok(())
    }

    fn committed(&mut self) {
        for change in self.pending.drain(..) {
            // No subscriber is not an error.
            let _ = self.changes.send(change);
        }
    }

    fn rolled_back(&mut self) {
        self.pending.clear();
        self.stale = true;
    }
}

fn part_of(write: &CellWrite) -> Part {
    match write {
        CellWrite::Set(_) => Part::Lww,
        CellWrite::Add(_) => Part::Counter,
        CellWrite::Max(_) => Part::Max,
    }
}

fn phys_name(table: TableId) -> String {
    format!("shoal_t_{:016x}", table.as_u64())
}

fn col_name(prefix: &str, column: ColumnId) -> String {
    format!("{prefix}_{:016x}", column.as_u64())
}

fn parse_part(name: &str) -> Option<(Part, ColumnId)> {
    let (prefix, hex) = name.split_once('_')?;
    let part = match prefix {
        "l" => Part::Lww,
        "n" => Part::Counter,
        "m" => Part::Max,
        _ => return None,
    };
    Some((part, ColumnId(u64::from_str_radix(hex, 16).ok()?)))
}

/// Quotes an SQL identifier (names come from remote devices: quote everything).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A value as SQLite stores it (NaN, which SQLite lacks, becomes NULL).
pub fn to_sql(v: &Value) -> SqlValue {
    match v {
        Value::Null => SqlValue::Null,
        Value::Integer(i) => SqlValue::Integer(*i),
        Value::Real(f) if f.is_nan() => SqlValue::Null,
        Value::Real(f) => SqlValue::Real(*f),
        Value::Text(s) => SqlValue::Text(s.clone()),
        Value::Blob(b) => SqlValue::Blob(b.clone()),
    }
}

/// A value as SQLite returned it.
pub fn from_sql(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(f) => Value::real(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

/// The stored HLC of an LWW cell: negated when the value is a NaN (see the module doc).
fn lww_hlc_sql(hlc: Hlc, v: &Value) -> i64 {
    let h = hlc.as_u64() as i64;
    if matches!(v, Value::Real(f) if f.is_nan()) { -h } else { h }
}

fn read_row_head(
    conn: &Connection,
    t: &str,
    key: &RowKey,
) -> rusqlite::Result<Option<(Option<Hlc>, Option<Hlc>)>> {
    conn.prepare_cached(&format!("SELECT tomb, written FROM \"{t}\" WHERE key = ?1"))?
        .query_row([key.as_bytes()], |r| {
            let tomb: Option<i64> = r.get(0)?;
            let written: Option<i64> = r.get(1)?;
            Ok((
                tomb.map(|h| Hlc::from_u64(h as u64)),
                written.filter(|w| *w != 0).map(|h| Hlc::from_u64(h as u64)),
            ))
        })
        .optional()
}

/// The LWW state of a cell from its stored value and HLC columns (a negative HLC marks a
/// NaN value, which SQLite cannot store).
fn lww_from_sql(value: &SqlValue, hlc: &SqlValue) -> Option<(Hlc, Value)> {
    match hlc {
        SqlValue::Integer(h) if *h < 0 => {
            Some((Hlc::from_u64(h.unsigned_abs()), Value::real(f64::NAN)))
        }
        SqlValue::Integer(h) => Some((Hlc::from_u64(*h as u64), from_sql(value.into()))),
        _ => None,
    }
}

fn read_lww(
    conn: &Connection,
    t: &str,
    key: &RowKey,
    column: ColumnId,
) -> rusqlite::Result<Option<(Hlc, Value)>> {
    let sql = format!(
        "SELECT {}, {} FROM \"{t}\" WHERE key = ?1",
        col_name("l", column),
        col_name("lh", column)
    );
    let row = conn
        .prepare_cached(&sql)?
        .query_row([key.as_bytes()], |r| Ok((r.get::<_, SqlValue>(0)?, r.get::<_, SqlValue>(1)?)))
        .optional()?;
    Ok(row.and_then(|(v, h)| lww_from_sql(&v, &h)))
}

fn read_adds(
    conn: &Connection,
    tbl: i64,
    key: &RowKey,
    column: ColumnId,
) -> rusqlite::Result<Vec<(Hlc, i64)>> {
    conn.prepare_cached(
        "SELECT hlc, n FROM shoal_adds WHERE tbl = ?1 AND key = ?2 AND col = ?3 ORDER BY hlc",
    )?
    .query_map(params![tbl, key.as_bytes(), column.as_u64() as i64], |r| {
        Ok((Hlc::from_u64(r.get::<_, i64>(0)? as u64), r.get(1)?))
    })?
    .collect()
}

fn read_frontier(
    conn: &Connection,
    tbl: i64,
    key: &RowKey,
    column: ColumnId,
) -> rusqlite::Result<MaxFrontier> {
    let rows: Vec<(i64, Vec<u8>)> = conn
        .prepare_cached("SELECT hlc, value FROM shoal_maxw WHERE tbl = ?1 AND key = ?2 AND col = ?3 ORDER BY hlc")?
        .query_map(params![tbl, key.as_bytes(), column.as_u64() as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut frontier = MaxFrontier::new();
    for (h, bytes) in rows {
        if let Ok(v) = Value::decode(&bytes) {
            frontier.insert(Hlc::from_u64(h as u64), v);
        }
    }
    Ok(frontier)
}

fn write_frontier(
    conn: &Connection,
    tbl: i64,
    key: &RowKey,
    column: ColumnId,
    frontier: &MaxFrontier,
) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM shoal_maxw WHERE tbl = ?1 AND key = ?2 AND col = ?3")?
        .execute(params![tbl, key.as_bytes(), column.as_u64() as i64])?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO shoal_maxw (tbl, key, col, hlc, value) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for (h, v) in frontier.entries() {
        insert.execute(params![
            tbl,
            key.as_bytes(),
            column.as_u64() as i64,
            h.as_u64() as i64,
            v.to_bytes()
        ])?;
    }
    Ok(())
}
