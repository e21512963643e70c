//! Row merge: puts, deletes and pruning below floors, over the sharded physical rows.
//!
//! Owns: the `put`, `delete`, `prune` and `hidden_rows` methods of `TablesMaterializer`,
//! the cached statements of puts ([`PutPlan`]), and the side tables `shoal_adds` (counter
//! increments summed per HLC) and `shoal_maxw` (max frontiers).
//!
//! Invariants:
//! - The stored state is exactly the canonical hidden state of `TablesModel` for the same
//!   ops: everything at or below a row's floor (its latest delete, its table's drop, and
//!   for a cell its column's drop) is forgotten when the floor arrives, and writes at or
//!   below a floor are ignored when they arrive later. Since stored state already survives
//!   every earlier floor, raising one floor prunes against that floor alone (one set-based
//!   statement per shard).
//! - A put reads the row head and the cells it writes with one statement per shard it
//!   touches and writes them back with one upsert per shard; a narrow table has one shard,
//!   so the common case is one read and one upsert. A one-shard, LWW-only put whose plan
//!   last found its row new skips the read: it inserts the state a new row gets with
//!   `ON CONFLICT DO NOTHING`, and reads and merges only if that changed nothing (the row
//!   exists). Statements are built once per (table, cell signature, key width) and dropped
//!   when a part moves.
//!
//! Never: decides what is visible (views do), changes the physical layout other than
//! through `ensure_*`, or sums counters in SQL (SQLite's `sum` fails on overflow; counters
//! wrap).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, params};
use shoal_core::Hlc;
use shoal_core::codec::Encode;
use shoal_tables::{
    CellWrite, ColumnId, HiddenDump, MaxFrontier, RowKey, RowState, TableId, Value, lww_wins,
    survives,
};

use super::TablesMaterializer;
use super::changes::TableChange;
use super::layout::{Part, col_name, phys_name, shard_name};
use super::sql::{hlc_from_sql, hlc_sql, lww_from_sql, lww_hlc_sql, to_sql};
use crate::materialize::MaterializeError;

/// The statements of puts with one signature on one shard.
#[derive(Debug)]
struct ShardPlan {
    shard: usize,
    select: String,
    upsert: String,
    width: usize,
}

/// The statements of puts with one signature: the main shard first (always), then every
/// other shard the cells live in; and for each cell, where its state is.
#[derive(Debug)]
pub(super) struct PutPlan {
    shards: Vec<ShardPlan>,
    /// Per cell, in signature order: (index in `shards`, offset in that shard's state).
    slots: Vec<(usize, usize)>,
    /// For a one-shard plan of LWW cells only: the main shard's upsert with `DO NOTHING`
    /// on conflict, which writes a row only if it is new (see [`PutPlan::fresh`]).
    insert: Option<String>,
    /// The last put of this plan found its row new, so the next one first tries `insert`
    /// as if its row were new too, without reading it; if the row exists after all, the
    /// insert changes nothing and the put takes the reading path. A catch-up of new rows
    /// thus costs one statement per row, an update-heavy workload one failed insert per
    /// switch from new rows to existing ones.
    fresh: AtomicBool,
}

/// Puts are keyed by table, the (column, part) of each cell, and the number of key values.
pub(super) type PutKey = (TableId, Vec<(ColumnId, Part)>, usize);

/// What a raised floor covers.
#[derive(Debug, Clone, Copy)]
pub(super) enum Scope<'a> {
    /// One row (a delete).
    Row(&'a RowKey),
    /// Every row (a table drop).
    Table,
    /// One column of every row (a column drop).
    Column(ColumnId),
}

fn part_of(write: &CellWrite) -> Part {
    match write {
        CellWrite::Set(_) => Part::Lww,
        CellWrite::Add(_) => Part::Counter,
        CellWrite::Max(_) => Part::Max,
    }
}

fn read_values(r: &rusqlite::Row<'_>, from: usize) -> rusqlite::Result<Vec<SqlValue>> {
    let n = r.as_ref().column_count();
    (from..n).map(|i| r.get::<_, SqlValue>(i)).collect()
}

impl TablesMaterializer {
    pub(super) fn put(
        &mut self,
        conn: &Connection,
        hlc: Hlc,
        table: TableId,
        key: &RowKey,
        cells: &[(ColumnId, CellWrite)],
    ) -> Result<(), MaterializeError> {
        let signature: Vec<(ColumnId, Part)> =
            cells.iter().map(|(c, w)| (*c, part_of(w))).collect();
        self.ensure_table(conn, table)?;
        self.ensure_parts(conn, table, &signature)?;
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
        let plan = self.put_plan(table, signature, values.len());
        // Guess that the row is new (no read) when the last put of this plan found so.
        let guess_new = plan.insert.is_some() && plan.fresh.load(Ordering::Relaxed);

        // One read of the main shard: the row's tombstone, last write and the cells there.
        let main = &plan.shards[0];
        let current: Option<(Option<i64>, Option<i64>, Vec<SqlValue>)> = if guess_new {
            None
        } else {
            conn.prepare_cached(&main.select)?
                .query_row([key.as_bytes()], |r| Ok((r.get(0)?, r.get(1)?, read_values(r, 2)?)))
                .optional()?
        };
        if !guess_new && plan.insert.is_some() {
            plan.fresh.store(current.is_none(), Ordering::Relaxed);
        }
        let (tomb, written, main_state) = match current {
            Some((t, w, state)) => {
                (t.map(hlc_from_sql), w.filter(|w| *w != 0).map(hlc_from_sql), state)
            }
            None => (None, None, vec![SqlValue::Null; main.width]),
        };
        let floor = tomb.max(table_dropped);
        if !survives(floor, hlc) {
            return Ok(());
        }
        // One read per other shard written.
        let mut states = vec![main_state];
        for s in &plan.shards[1..] {
            let state = conn
                .prepare_cached(&s.select)?
                .query_row([key.as_bytes()], |r| read_values(r, 0))
                .optional()?;
            states.push(state.unwrap_or_else(|| vec![SqlValue::Null; s.width]));
        }
        let mut dirty = vec![false; states.len()];

        let was_live = written.is_some_and(|w| survives(floor, w));
        let tbl = table.as_u64() as i64;
        let mut changed: Vec<ColumnId> = Vec::new();
        for (((column, write), column_dropped), &(p, slot)) in
            cells.iter().zip(column_drops).zip(&plan.slots)
        {
            if !survives(floor.max(column_dropped), hlc) {
                continue; // the state keeps its current values
            }
            let state = &mut states[p];
            match write {
                CellWrite::Set(v) => {
                    let current = lww_from_sql(&state[slot], &state[slot + 1]);
                    if lww_wins(current.as_ref().map(|(h, v)| (*h, v)), (hlc, v)) {
                        if current.as_ref().map(|(_, v)| v) != Some(v) {
                            changed.push(*column);
                        }
                        state[slot] = to_sql(v);
                        state[slot + 1] = SqlValue::Integer(lww_hlc_sql(hlc, v));
                        dirty[p] = true;
                    }
                }
                CellWrite::Add(n) => {
                    add_wrapping(conn, tbl, key, column.as_u64() as i64, hlc, *n)?;
                    let sum = match &state[slot] {
                        SqlValue::Integer(i) => *i,
                        _ => 0,
                    };
                    if *n != 0 {
                        changed.push(*column);
                    }
                    state[slot] = SqlValue::Integer(sum.wrapping_add(*n));
                    dirty[p] = true;
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
                        dirty[p] = true;
                    }
                }
            }
        }

        // Upsert the main shard: key, key values, last write and its cells (changed or not,
        // so that one statement serves every put with this signature); then every other
        // shard whose cells changed.
        for (i, (s, state)) in plan.shards.iter().zip(states).enumerate() {
            let mut args: Vec<SqlValue> = Vec::with_capacity(3 + values.len() + state.len());
            args.push(SqlValue::Blob(key.as_bytes().to_vec()));
            if guess_new {
                // A one-shard plan: write the row only if it is new; if it exists, nothing
                // was written or recorded yet, and the put reads it and merges.
                args.push(SqlValue::Integer(values.len() as i64));
                args.push(SqlValue::Integer(hlc_sql(hlc)));
                args.extend(values.iter().map(to_sql));
                args.extend(state);
                let insert = plan.insert.as_deref().unwrap_or(&s.upsert);
                if conn.prepare_cached(insert)?.execute(rusqlite::params_from_iter(args))? == 0 {
                    plan.fresh.store(false, Ordering::Relaxed);
                    return self.put(conn, hlc, table, key, cells);
                }
                break;
            }
            if i == 0 {
                args.push(SqlValue::Integer(values.len() as i64));
                args.push(SqlValue::Integer(written.max(Some(hlc)).map_or(0, hlc_sql)));
                args.extend(values.iter().map(to_sql));
            } else if !dirty[i] {
                continue;
            }
            args.extend(state);
            conn.prepare_cached(&s.upsert)?.execute(rusqlite::params_from_iter(args))?;
        }
        if !was_live || !changed.is_empty() {
            self.changes.record(TableChange {
                table,
                key: key.clone(),
                columns: changed,
                live: true,
            });
        }
        Ok(())
    }

    /// The statements for puts of `signature` into `table` with `keys` key values, built
    /// once and kept (until a part of the table moves).
    fn put_plan(
        &mut self,
        table: TableId,
        signature: Vec<(ColumnId, Part)>,
        keys: usize,
    ) -> Arc<PutPlan> {
        let cache_key = (table, signature, keys);
        if let Some(s) = self.put_sql.get(&cache_key) {
            return s.clone();
        }
        let signature = &cache_key.1;
        let layout = self.layouts.get(&table);
        // Shard -> its state columns, in signature order; the main shard always first.
        let mut by_shard: BTreeMap<usize, Vec<String>> = BTreeMap::from([(0, Vec::new())]);
        let mut located = Vec::with_capacity(signature.len());
        for (column, part) in signature {
            let shard = layout.and_then(|l| l.parts.get(&(*column, *part))).copied().unwrap_or(0);
            let cols = by_shard.entry(shard).or_default();
            located.push((shard, cols.len()));
            cols.extend(part.columns(*column));
        }
        let index: BTreeMap<usize, usize> =
            by_shard.keys().enumerate().map(|(i, s)| (*s, i)).collect();
        let slots = located.into_iter().map(|(s, off)| (index[&s], off)).collect();
        let mut shards = Vec::with_capacity(by_shard.len());
        for (shard, state_cols) in by_shard {
            let t = shard_name(table, shard);
            let (select, mut cols, mut updates) = if shard == 0 {
                let select = format!(
                    "SELECT tomb, written{}{} FROM \"{t}\" WHERE key = ?1",
                    if state_cols.is_empty() { "" } else { ", " },
                    state_cols.join(", ")
                );
                let mut cols = vec!["key".to_owned(), "kn".to_owned(), "written".to_owned()];
                cols.extend((0..keys).map(|i| format!("k{i}")));
                (select, cols, vec!["written = excluded.written".to_owned()])
            } else {
                let select =
                    format!("SELECT {} FROM \"{t}\" WHERE key = ?1", state_cols.join(", "));
                (select, vec!["key".to_owned()], Vec::new())
            };
            cols.extend(state_cols.iter().cloned());
            updates.extend(state_cols.iter().map(|c| format!("{c} = excluded.{c}")));
            let upsert = format!(
                "INSERT INTO \"{t}\" ({}) VALUES ({}) ON CONFLICT (key) DO UPDATE SET {}",
                cols.join(", "),
                (1..=cols.len()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", "),
                updates.join(", ")
            );
            shards.push(ShardPlan { shard, select, upsert, width: state_cols.len() });
        }
        debug_assert!(shards.first().is_some_and(|s| s.shard == 0));
        let insert =
            (shards.len() == 1 && signature.iter().all(|(_, p)| *p == Part::Lww)).then(|| {
                let upsert = &shards[0].upsert;
                let at = upsert.find(" ON CONFLICT").unwrap_or(upsert.len());
                format!("{} ON CONFLICT (key) DO NOTHING", &upsert[..at])
            });
        let plan = Arc::new(PutPlan { shards, slots, insert, fresh: AtomicBool::new(false) });
        self.put_sql.insert(cache_key, plan.clone());
        plan
    }

    pub(super) fn delete(
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
                SqlValue::Integer(hlc_sql(hlc)),
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
            conn.prepare_cached(&format!(
                "UPDATE \"{t}\" SET tomb = ?2, written = CASE WHEN written <= ?2 THEN NULL ELSE written END WHERE key = ?1"
            ))?
            .execute(params![key.as_bytes(), hlc_sql(hlc)])?;
            self.prune(conn, table, Scope::Row(key), hlc)?;
        }
        let live = read_row_head(conn, &t, key)?.is_some_and(|(_, w)| w.is_some());
        if was_live && !live {
            self.changes.record(TableChange {
                table,
                key: key.clone(),
                columns: Vec::new(),
                live: false,
            });
        }
        Ok(())
    }

    /// A table drop or column drop at `hlc` arrived: forget what it excludes in every row
    /// and report every row that was visible.
    pub(super) fn drop_floor(
        &mut self,
        conn: &Connection,
        table: TableId,
        column: Option<ColumnId>,
        hlc: Hlc,
    ) -> Result<(), MaterializeError> {
        let t = phys_name(table);
        let live_before: Vec<(Vec<u8>, i64)> = conn
            .prepare(&format!(
                "SELECT key, written FROM \"{t}\" WHERE written IS NOT NULL AND written != 0"
            ))?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        match column {
            None => {
                conn.execute(
                    &format!("UPDATE \"{t}\" SET written = NULL WHERE written <= ?1"),
                    [hlc_sql(hlc)],
                )?;
                self.prune(conn, table, Scope::Table, hlc)?;
            }
            Some(c) => self.prune(conn, table, Scope::Column(c), hlc)?,
        }
        for (key, written) in live_before {
            let key = RowKey::from_bytes(key)
                .map_err(|e| MaterializeError::Malformed(format!("stored row key: {e}")))?;
            let live = column.is_some() || hlc_from_sql(written) > hlc;
            let columns = column.into_iter().collect();
            self.changes.record(TableChange { table, key, columns, live });
        }
        Ok(())
    }

    /// Forgets every cell write at or below `floor` in `scope` (the floor just raised;
    /// everything stored already survives the earlier ones).
    fn prune(
        &mut self,
        conn: &Connection,
        table: TableId,
        scope: Scope<'_>,
        floor: Hlc,
    ) -> Result<(), MaterializeError> {
        let Some(layout) = self.layouts.get(&table) else { return Ok(()) };
        let in_scope = |c: &ColumnId| match scope {
            Scope::Column(x) => *c == x,
            _ => true,
        };
        // LWW parts: one statement per shard.
        let mut lww: BTreeMap<usize, Vec<ColumnId>> = BTreeMap::new();
        let mut side = false;
        for ((c, part), shard) in &layout.parts {
            if !in_scope(c) {
                continue;
            }
            match part {
                Part::Lww => lww.entry(*shard).or_default().push(*c),
                Part::Counter | Part::Max => side = true,
            }
        }
        for (shard, mut columns) in lww {
            columns.sort();
            let sets: Vec<String> = columns
                .iter()
                .flat_map(|c| {
                    let (l, lh) = (col_name("l", *c), col_name("lh", *c));
                    [
                        format!("{l} = CASE WHEN abs({lh}) <= ?1 THEN NULL ELSE {l} END"),
                        format!("{lh} = CASE WHEN abs({lh}) <= ?1 THEN NULL ELSE {lh} END"),
                    ]
                })
                .collect();
            let t = shard_name(table, shard);
            match scope {
                Scope::Row(key) => {
                    conn.prepare_cached(&format!(
                        "UPDATE \"{t}\" SET {} WHERE key = ?2",
                        sets.join(", ")
                    ))?
                    .execute(params![hlc_sql(floor), key.as_bytes()])?;
                }
                Scope::Table | Scope::Column(_) => {
                    conn.execute(
                        &format!("UPDATE \"{t}\" SET {}", sets.join(", ")),
                        [hlc_sql(floor)],
                    )?;
                }
            }
        }
        if side {
            self.prune_side(conn, table, scope, floor)?;
        }
        Ok(())
    }

    /// Prunes counter increments and max frontiers in `scope` at `floor`, and rewrites the
    /// sums and maxima of the cells that lost something.
    fn prune_side(
        &mut self,
        conn: &Connection,
        table: TableId,
        scope: Scope<'_>,
        floor: Hlc,
    ) -> Result<(), MaterializeError> {
        let tbl = table.as_u64() as i64;
        let (cond, key_arg, col_arg) = match scope {
            Scope::Row(key) => ("AND key = ?3", Some(key.as_bytes().to_vec()), None),
            Scope::Table => ("", None, None),
            Scope::Column(c) => ("AND col = ?3", None, Some(c.as_u64() as i64)),
        };
        let third: SqlValue = match (&key_arg, col_arg) {
            (Some(k), _) => SqlValue::Blob(k.clone()),
            (None, Some(c)) => SqlValue::Integer(c),
            (None, None) => SqlValue::Null,
        };
        for (side, part) in [("shoal_adds", Part::Counter), ("shoal_maxw", Part::Max)] {
            let sql = format!(
                "SELECT DISTINCT key, col FROM {side} WHERE tbl = ?1 AND hlc <= ?2 {cond} ORDER BY key, col"
            );
            let hit: Vec<(Vec<u8>, i64)> = {
                let mut stmt = conn.prepare_cached(&sql)?;
                if cond.is_empty() {
                    stmt.query_map(params![tbl, hlc_sql(floor)], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect::<Result<_, _>>()?
                } else {
                    stmt.query_map(params![tbl, hlc_sql(floor), third], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?
                    .collect::<Result<_, _>>()?
                }
            };
            for (key_bytes, col) in hit {
                let key = RowKey::from_bytes(key_bytes)
                    .map_err(|e| MaterializeError::Malformed(format!("stored row key: {e}")))?;
                let column = ColumnId(col as u64);
                let value = match part {
                    Part::Counter => {
                        conn.prepare_cached(
                            "DELETE FROM shoal_adds WHERE tbl = ?1 AND key = ?2 AND col = ?3 AND hlc <= ?4",
                        )?
                        .execute(params![tbl, key.as_bytes(), col, hlc_sql(floor)])?;
                        let left = read_adds(conn, tbl, &key, column)?;
                        let sum = left.iter().fold(0i64, |a, (_, n)| a.wrapping_add(*n));
                        if left.is_empty() { SqlValue::Null } else { SqlValue::Integer(sum) }
                    }
                    _ => {
                        let mut frontier = read_frontier(conn, tbl, &key, column)?;
                        frontier.prune(Some(floor));
                        write_frontier(conn, tbl, &key, column, &frontier)?;
                        frontier.max(None).map_or(SqlValue::Null, to_sql)
                    }
                };
                let shard =
                    self.layouts.get(&table).and_then(|l| l.parts.get(&(column, part))).copied();
                if let Some(shard) = shard {
                    let col_sql = match part {
                        Part::Counter => col_name("n", column),
                        _ => col_name("m", column),
                    };
                    conn.prepare_cached(&format!(
                        "UPDATE \"{}\" SET {col_sql} = ?2 WHERE key = ?1",
                        shard_name(table, shard)
                    ))?
                    .execute(params![key.as_bytes(), value])?;
                }
            }
        }
        Ok(())
    }

    /// Adds the stored rows of every table to `dump` (canonical hidden state).
    pub(super) fn hidden_rows(
        &self,
        conn: &Connection,
        dump: &mut HiddenDump,
    ) -> rusqlite::Result<()> {
        for (table, layout) in &self.layouts {
            let tbl = table.as_u64() as i64;
            let mut rows: BTreeMap<Vec<u8>, RowState> = BTreeMap::new();
            let heads: Vec<(Vec<u8>, Option<i64>, Option<i64>)> = conn
                .prepare(&format!("SELECT key, tomb, written FROM \"{}\"", phys_name(*table)))?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?;
            for (key, tomb, written) in heads {
                rows.insert(
                    key,
                    RowState {
                        tombstone: tomb.map(hlc_from_sql),
                        last_write: written.filter(|w| *w != 0).map(hlc_from_sql),
                        cells: BTreeMap::new(),
                    },
                );
            }
            // LWW parts, one scan per shard.
            let mut lww: BTreeMap<usize, Vec<ColumnId>> = BTreeMap::new();
            for ((c, part), shard) in &layout.parts {
                if *part == Part::Lww {
                    lww.entry(*shard).or_default().push(*c);
                }
            }
            for (shard, columns) in lww {
                let cols: Vec<String> =
                    columns.iter().flat_map(|c| [col_name("l", *c), col_name("lh", *c)]).collect();
                let mut stmt = conn.prepare(&format!(
                    "SELECT key, {} FROM \"{}\"",
                    cols.join(", "),
                    shard_name(*table, shard)
                ))?;
                let mut q = stmt.query([])?;
                while let Some(r) = q.next()? {
                    let key: Vec<u8> = r.get(0)?;
                    let state = read_values(r, 1)?;
                    let Some(row) = rows.get_mut(&key) else { continue };
                    for (i, c) in columns.iter().enumerate() {
                        if let Some(v) = lww_from_sql(&state[2 * i], &state[2 * i + 1]) {
                            row.cells.entry(*c).or_default().lww = Some(v);
                        }
                    }
                }
            }
            let adds: Vec<(Vec<u8>, i64, i64, i64)> = conn
                .prepare("SELECT key, col, hlc, n FROM shoal_adds WHERE tbl = ?1")?
                .query_map([tbl], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<Result<_, _>>()?;
            for (key, col, h, n) in adds {
                if let Some(row) = rows.get_mut(&key) {
                    row.cells.entry(ColumnId(col as u64)).or_default().adds.add(hlc_from_sql(h), n);
                }
            }
            let maxw: Vec<(Vec<u8>, i64, i64, Vec<u8>)> = conn
                .prepare("SELECT key, col, hlc, value FROM shoal_maxw WHERE tbl = ?1")?
                .query_map([tbl], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<Result<_, _>>()?;
            for (key, col, h, bytes) in maxw {
                if let (Some(row), Ok(v)) = (rows.get_mut(&key), Value::decode(&bytes)) {
                    row.cells
                        .entry(ColumnId(col as u64))
                        .or_default()
                        .max
                        .insert(hlc_from_sql(h), v);
                }
            }
            for (key, mut row) in rows {
                let Ok(key) = RowKey::from_bytes(key) else { continue };
                row.cells.retain(|_, c| !c.is_empty());
                if !row.is_empty() {
                    dump.tables.entry(*table).or_default().rows.insert(key, row);
                }
            }
        }
        Ok(())
    }
}

/// Adds `n` to the increments at `hlc`, wrapping (SQLite's `+` fails on overflow, so the
/// sum is computed here).
fn add_wrapping(
    conn: &Connection,
    tbl: i64,
    key: &RowKey,
    col: i64,
    hlc: Hlc,
    n: i64,
) -> rusqlite::Result<()> {
    let existing: Option<i64> = conn
        .prepare_cached(
            "SELECT n FROM shoal_adds WHERE tbl = ?1 AND key = ?2 AND col = ?3 AND hlc = ?4",
        )?
        .query_row(params![tbl, key.as_bytes(), col, hlc_sql(hlc)], |r| r.get(0))
        .optional()?;
    conn.prepare_cached(
        "INSERT INTO shoal_adds (tbl, key, col, hlc, n) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (tbl, key, col, hlc) DO UPDATE SET n = excluded.n",
    )?
    .execute(params![
        tbl,
        key.as_bytes(),
        col,
        hlc_sql(hlc),
        existing.unwrap_or(0).wrapping_add(n)
    ])?;
    Ok(())
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
            Ok((tomb.map(hlc_from_sql), written.filter(|w| *w != 0).map(hlc_from_sql)))
        })
        .optional()
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
        Ok((hlc_from_sql(r.get::<_, i64>(0)?), r.get(1)?))
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
            frontier.insert(hlc_from_sql(h), v);
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
            hlc_sql(*h),
            v.to_bytes()
        ])?;
    }
    Ok(())
}
