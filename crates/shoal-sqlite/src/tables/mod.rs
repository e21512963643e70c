//! Materialization of the table domain into the replica's SQLite file.
//!
//! Owns: [`TablesMaterializer`] — the stored schema ops, the op dispatch of an entry, and
//! the caches of schema, drops and physical layout — and, through its submodules, the
//! physical tables, the row merge, the SQL views apps read and [`TableChange`] events.
//!
//! | module | owns |
//! |---|---|
//! | `layout` | hidden side tables (DDL), the per-table row tables split into shards of at most [`SHARD_COLUMNS`] part columns, reclaiming dropped columns' storage |
//! | `rows` | row merge: put, delete, pruning below floors, reading back the hidden state |
//! | `views` | the views named after tables (column budget from the model, shards joined), [`live_row`] |
//! | `changes` | [`TableChange`], [`TablesHandle`], [`CHANGE_BUFFER`] |
//! | `sql` | [`to_sql`], [`from_sql`], [`quote_ident`] |
//!
//! Layout (all names reserved under the `shoal_` prefix):
//!
//! | object | what |
//! |---|---|
//! | `shoal_schema_ops(hlc, op)` | every schema op ever applied (they are idempotent); the schema is rebuilt from them with `shoal_tables::TablesModel` |
//! | `shoal_schema_gen` | a counter bumped by every schema or DDL change, so other processes' connections notice |
//! | `shoal_t_<table>` | the main shard, one row per row key: `key` (RowKey bytes), `kn` (number of key values), `tomb` (latest delete), `written` (latest write, NULL once a tombstone covers it), `k0..` (key values), and parts of some columns |
//! | `shoal_t_<table>_<n>` | more shards (`key` and parts) when a table has more parts than one shard holds |
//! | parts | per column: `l_<col>`/`lh_<col>` (LWW value and HLC), `n_<col>` (counter sum), `m_<col>` (max value), each in one shard |
//! | `shoal_adds(tbl, key, col, hlc, n)` | counter increments above the floor, summed per HLC |
//! | `shoal_maxw(tbl, key, col, hlc, value)` | max-column Pareto frontier (values in canonical encoding) |
//! | views named after tables | live rows (`written IS NOT NULL` and a key that fits), shown columns in view order |
//!
//! Invariants: the stored state is exactly the canonical hidden state of
//! `shoal_tables::TablesModel` for the same ops (tested differentially), whatever the
//! arrival order, and the views show exactly the model's view (including which columns
//! the column budget hides, reported as `ConflictKind::TooManyColumns`). Every op that
//! decodes applies: any number of columns fits physically. All ops of an entry are applied
//! in the replica's transaction; ops are decoded before anything is written, so an entry
//! applies whole or not at all.
//!
//! SQLite has no NaN: a REAL NaN is kept as NaN in the merge state (an LWW cell whose HLC
//! is stored negated marks it) and reads as NULL through SQL.
//!
//! Never: writes the oplog, cursors or clock; trusts in-memory schema caches across
//! processes (it checks `shoal_schema_gen` before every entry).

mod changes;
mod layout;
mod rows;
mod sql;
mod views;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use rusqlite::{Connection, params};
use shoal_core::codec::Encode;
use shoal_core::{Domain, Hlc, Payload, PeerId};
use shoal_tables::{
    ColumnId, HiddenDump, MAX_COLUMNS_PER_TABLE, SchemaConflict, TableId, TableOp, TablesDump,
    TablesModel, rows_not_shown,
};

pub use changes::{CHANGE_BUFFER, TableChange, TablesHandle};
pub use layout::SHARD_COLUMNS;
pub use sql::{from_sql, quote_ident, to_sql};
pub use views::live_row;

use crate::materialize::{MaterializeError, Materializer};
use changes::Changes;
use layout::{DDL, Layout, load_layouts};
use rows::{PutKey, PutPlan};
use sql::hlc_sql;

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

/// Keeps tables materialized in the replica's file. See the module doc.
pub struct TablesMaterializer {
    put_sql: HashMap<PutKey, Arc<PutPlan>>,
    schema: TablesModel,
    drops: HashMap<TableId, Drops>,
    layouts: HashMap<TableId, Layout>,
    views: BTreeMap<String, String>,
    conflicts: Vec<SchemaConflict>,
    generation: i64,
    views_dirty: bool,
    /// The caches may not match the file (after a rollback); reload before the next use.
    stale: bool,
    /// The caches were checked against the file in the write transaction now open: no other
    /// connection can change the file before it ends, so entries skip the check.
    checked_in_tx: bool,
    /// Dropped columns (or whole tables, `None`) whose storage may be freed.
    reclaim: BTreeSet<(TableId, Option<ColumnId>)>,
    changes: Changes,
    column_budget: usize,
    shard_columns: usize,
}

impl std::fmt::Debug for TablesMaterializer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TablesMaterializer")
            .field("tables", &self.layouts.len())
            .field("views", &self.views.len())
            .finish_non_exhaustive()
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
        Self::with_limits(MAX_COLUMNS_PER_TABLE, SHARD_COLUMNS)
    }

    /// A materializer whose views show at most `column_budget` columns per table and whose
    /// shards hold at most `shard_columns` part columns (at least 2). For tests that
    /// exercise the budget and sharding with small tables: replicas that sync must use the
    /// same column budget (the default), and a file must always be opened with the same
    /// shard size.
    #[doc(hidden)]
    pub fn with_limits(column_budget: usize, shard_columns: usize) -> Self {
        TablesMaterializer {
            put_sql: HashMap::new(),
            schema: TablesModel::with_column_budget(column_budget),
            drops: HashMap::new(),
            layouts: HashMap::new(),
            views: BTreeMap::new(),
            conflicts: Vec::new(),
            generation: -1,
            views_dirty: false,
            stale: true,
            checked_in_tx: false,
            reclaim: BTreeSet::new(),
            changes: Changes::new(),
            column_budget,
            shard_columns: shard_columns.max(2),
        }
    }

    /// Observation handles (change events, schema changes).
    pub fn handle(&self) -> TablesHandle {
        self.changes.handle()
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
        self.schema = TablesModel::with_column_budget(self.column_budget);
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
        self.layouts = load_layouts(conn)?;
        self.put_sql.clear();
        self.reclaim.clear();
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

    /// The schema conflicts of the visible tables (as of the last schema change), except
    /// `RowsNotShown`, which needs the rows counted ([`TablesMaterializer::conflicts_with_rows`]).
    pub fn conflicts(&self) -> &[SchemaConflict] {
        &self.conflicts
    }

    /// Every schema conflict, as `TablesModel::conflicts` reports it for the same ops,
    /// `RowsNotShown` included: the live rows whose key does not fit the winning primary
    /// key (written under a losing definition) are counted in SQL, the way the views leave
    /// them out (`written IS NOT NULL AND kn <> <key columns>`), in each live table — shown
    /// or not — that has rows. Costs one scan of each such table's main shard, so it is for
    /// `status`, not for every schema read ([`TablesMaterializer::conflicts`] leaves these
    /// conflicts out).
    pub fn conflicts_with_rows(
        &mut self,
        conn: &Connection,
    ) -> rusqlite::Result<Vec<SchemaConflict>> {
        self.refresh(conn)?;
        let mut out = self.conflicts.clone();
        for (id, name, key_columns) in self.schema.live_table_keys() {
            if !self.layouts.contains_key(&id) {
                continue; // no row stored yet
            }
            let sql = format!(
                "SELECT count(*) FROM \"{}\" WHERE written IS NOT NULL AND kn <> ?1",
                layout::phys_name(id)
            );
            let count: i64 =
                conn.prepare_cached(&sql)?.query_row([key_columns as i64], |r| r.get(0))?;
            if count > 0 {
                out.push(rows_not_shown(id, &name, count as u64, key_columns));
            }
        }
        out.sort();
        Ok(out)
    }

    /// The visible schema: tables with their columns, no rows.
    pub fn schema(&self) -> TablesDump {
        self.schema.dump()
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
        self.hidden_rows(conn, &mut dump)?;
        Ok(dump)
    }

    /// Applies the decoded ops of one entry, then brings views and storage up to date.
    fn apply_ops(
        &mut self,
        conn: &Connection,
        ops: &[(Hlc, TableOp)],
    ) -> Result<(), MaterializeError> {
        if !self.checked_in_tx {
            self.refresh(conn)?;
        }
        for (hlc, op) in ops {
            match op {
                TableOp::Put { table, key, cells } => self.put(conn, *hlc, *table, key, cells)?,
                TableOp::Delete { table, key } => self.delete(conn, *hlc, *table, key)?,
                _ => self.schema_op(conn, *hlc, op)?,
            }
        }
        if self.views_dirty {
            self.rebuild_views(conn)?;
        }
        // After the views: storage that a view reads is never freed.
        self.reclaim_dropped(conn)?;
        Ok(())
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
            .execute(params![hlc_sql(hlc), op.kind(), op.to_bytes()])?;
        if inserted == 0 {
            return Ok(()); // already applied: schema ops are idempotent
        }
        self.schema_apply(hlc, op);
        self.bump_generation(conn)?;
        self.views_dirty = true;
        let table = op.table();
        if !self.layouts.contains_key(&table) {
            return Ok(());
        }
        match op {
            TableOp::DropTable { .. } => {
                self.drop_floor(conn, table, None, hlc)?;
                self.reclaim.insert((table, None));
            }
            TableOp::DropColumn { column, .. } => {
                self.drop_floor(conn, table, Some(*column), hlc)?;
                self.reclaim.insert((table, Some(*column)));
            }
            _ => {}
        }
        Ok(())
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
        self.apply_ops(conn, &ops)
    }

    fn begin(&mut self, conn: &Connection) -> Result<(), rusqlite::Error> {
        self.refresh(conn)?;
        self.checked_in_tx = true;
        Ok(())
    }

    fn committed(&mut self) {
        self.checked_in_tx = false;
        self.changes.publish();
    }

    fn rolled_back(&mut self) {
        self.checked_in_tx = false;
        self.changes.discard();
        self.stale = true;
    }
}
