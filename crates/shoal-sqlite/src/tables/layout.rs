//! The physical layout of tables: hidden side tables, per-table row tables split into
//! shards, their DDL, and reclaiming the storage of dropped columns.
//!
//! Owns: [`DDL`], [`Part`], [`Layout`] and the `ensure_*`/`reclaim` methods of
//! `TablesMaterializer`.
//!
//! A table id's rows live in `shoal_t_<table>` (the main shard, index 0: `key`, `kn`,
//! `tomb`, `written`, `k0..` and some parts) and, when it has more parts than fit, in
//! `shoal_t_<table>_<n>` (n >= 1: `key` and parts), all keyed by the row key bytes. A part
//! is the physical storage of one hidden part of one column: `l_<col>` and `lh_<col>`
//! (LWW value and HLC, width 2), `n_<col>` (counter sum, width 1), `m_<col>` (max value,
//! width 1). A shard holds at most `shard_columns` part columns ([`SHARD_COLUMNS`]), so
//! any number of columns fits physically and every statement on one shard stays far below
//! SQLite's limits (2,000 columns per table or result, 32,766 bound parameters).
//!
//! Invariants:
//! - Where a part lives is physical only: it may depend on arrival order (first fit, in
//!   shard order), but what apps see and `hidden_dump` never do, because every reader goes
//!   through [`Layout::parts`].
//! - A part holds nothing at or below its cell floors (the row layer keeps that), so after
//!   a drop a part of a dropped column that holds nothing at all can be removed
//!   (`ALTER TABLE … DROP COLUMN`), and a shard left without parts is dropped. Parts
//!   referenced by a view are never removed.
//!
//! Never: stores merge state itself (that is `rows`), or names a physical object without
//! the `shoal_` prefix.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use rusqlite::{Connection, OptionalExtension, params};
use shoal_tables::{ColumnId, MergeKind, TableId};

use super::TablesMaterializer;

/// The most part columns one shard table holds (key columns of the main shard not
/// counted): 200 LWW columns, or 400 counter or max columns.
pub const SHARD_COLUMNS: usize = 400;

pub(super) const DDL: &str = "
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

/// A hidden part of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Part {
    Lww,
    Counter,
    Max,
}

impl Part {
    /// The part a view reads for a column merged as `merge`.
    pub(super) fn of_merge(merge: MergeKind) -> Part {
        match merge {
            MergeKind::Lww => Part::Lww,
            MergeKind::Counter => Part::Counter,
            MergeKind::Max => Part::Max,
        }
    }

    /// Its physical columns.
    pub(super) fn columns(self, column: ColumnId) -> Vec<String> {
        match self {
            Part::Lww => vec![col_name("l", column), col_name("lh", column)],
            Part::Counter => vec![col_name("n", column)],
            Part::Max => vec![col_name("m", column)],
        }
    }

    fn width(self) -> usize {
        if self == Part::Lww { 2 } else { 1 }
    }
}

/// The physical layout of one table id.
#[derive(Debug, Default, Clone)]
pub(super) struct Layout {
    /// How many key value columns (`k0..`) the main shard has.
    pub key_columns: usize,
    /// Existing shards: index -> part columns used. Index 0 (the main shard) always exists.
    pub shards: BTreeMap<usize, usize>,
    /// Which shard holds each part.
    pub parts: HashMap<(ColumnId, Part), usize>,
}

impl Layout {
    fn main() -> Self {
        Layout { shards: BTreeMap::from([(0, 0)]), ..Layout::default() }
    }

    /// Where a new part of `width` columns goes: the first shard with room, or a new one.
    fn place(&mut self, width: usize, cap: usize) -> (usize, bool) {
        if let Some((&i, used)) = self.shards.iter_mut().find(|(_, used)| **used + width <= cap) {
            *used += width;
            return (i, false);
        }
        let i = (1..).find(|i| !self.shards.contains_key(i)).unwrap_or(usize::MAX);
        self.shards.insert(i, width);
        (i, true)
    }
}

/// The physical name of a table's main shard.
pub(super) fn phys_name(table: TableId) -> String {
    shard_name(table, 0)
}

/// The physical name of shard `shard` of a table.
pub(super) fn shard_name(table: TableId, shard: usize) -> String {
    if shard == 0 {
        format!("shoal_t_{:016x}", table.as_u64())
    } else {
        format!("shoal_t_{:016x}_{shard}", table.as_u64())
    }
}

/// `shoal_t_<hex>` or `shoal_t_<hex>_<n>`: the table and shard index.
fn parse_shard_name(name: &str) -> Option<(TableId, usize)> {
    let rest = name.strip_prefix("shoal_t_")?;
    let (hex, shard) = match rest.split_once('_') {
        Some((hex, n)) => (hex, n.parse::<usize>().ok().filter(|n| *n > 0)?),
        None => (rest, 0),
    };
    if hex.len() != 16 {
        return None;
    }
    Some((TableId(u64::from_str_radix(hex, 16).ok()?), shard))
}

pub(super) fn col_name(prefix: &str, column: ColumnId) -> String {
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

/// Reads the layout of every table from the file.
pub(super) fn load_layouts(conn: &Connection) -> rusqlite::Result<HashMap<TableId, Layout>> {
    let names: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'shoal\\_t\\_%' ESCAPE '\\'")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut layouts: HashMap<TableId, Layout> = HashMap::new();
    for name in names {
        let Some((table, shard)) = parse_shard_name(&name) else { continue };
        let cols: Vec<String> = conn
            .prepare(&format!("PRAGMA table_info(\"{name}\")"))?
            .query_map([], |r| r.get(1))?
            .collect::<Result<_, _>>()?;
        let layout = layouts.entry(table).or_default();
        let mut used = 0;
        for col in cols {
            if shard == 0
                && let Some(n) = col.strip_prefix('k').and_then(|n| n.parse::<usize>().ok())
            {
                layout.key_columns = layout.key_columns.max(n + 1);
            } else if let Some((part, id)) = parse_part(&col) {
                layout.parts.insert((id, part), shard);
                used += part.width();
            }
        }
        layout.shards.insert(shard, used);
    }
    // A table whose main shard is missing (never happens: it is created first) is not
    // usable; forget it rather than write to a shard without its main table.
    layouts.retain(|_, l| l.shards.contains_key(&0));
    Ok(layouts)
}

impl TablesMaterializer {
    pub(super) fn ensure_table(
        &mut self,
        conn: &Connection,
        table: TableId,
    ) -> rusqlite::Result<()> {
        if self.layouts.contains_key(&table) {
            return Ok(());
        }
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS \"{}\" (key BLOB PRIMARY KEY, kn INTEGER NOT NULL, tomb INTEGER, written INTEGER) WITHOUT ROWID",
            phys_name(table)
        ))?;
        self.layouts.insert(table, Layout::main());
        // The table's view read nothing until now.
        self.views_dirty = true;
        self.bump_generation(conn)
    }

    pub(super) fn ensure_key_columns(
        &mut self,
        conn: &Connection,
        table: TableId,
        n: usize,
    ) -> rusqlite::Result<()> {
        let have = self.layouts.get(&table).map_or(0, |p| p.key_columns);
        for i in have..n {
            conn.execute_batch(&format!("ALTER TABLE \"{}\" ADD COLUMN k{i}", phys_name(table)))?;
        }
        if n > have {
            if let Some(p) = self.layouts.get_mut(&table) {
                p.key_columns = n;
            }
            // The view shows key columns it now has.
            self.views_dirty = true;
            self.bump_generation(conn)?;
        }
        Ok(())
    }

    /// Gives every part in `parts` physical storage (the table must exist). New shards are
    /// created with all their columns in one statement.
    pub(super) fn ensure_parts(
        &mut self,
        conn: &Connection,
        table: TableId,
        parts: &[(ColumnId, Part)],
    ) -> rusqlite::Result<()> {
        let cap = self.shard_columns;
        let Some(layout) = self.layouts.get_mut(&table) else { return Ok(()) };
        let mut created: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        let mut added: Vec<(usize, String)> = Vec::new();
        for &(column, part) in parts {
            if layout.parts.contains_key(&(column, part)) {
                continue;
            }
            let (shard, new) = layout.place(part.width(), cap);
            layout.parts.insert((column, part), shard);
            let cols = part.columns(column);
            match created.get_mut(&shard) {
                Some(c) => c.extend(cols),
                None if new => {
                    created.insert(shard, cols);
                }
                None => added.extend(cols.into_iter().map(|c| (shard, c))),
            }
        }
        if created.is_empty() && added.is_empty() {
            return Ok(());
        }
        for (shard, cols) in &created {
            conn.execute_batch(&format!(
                "CREATE TABLE \"{}\" (key BLOB PRIMARY KEY, {}) WITHOUT ROWID",
                shard_name(table, *shard),
                cols.join(", ")
            ))?;
        }
        for (shard, col) in &added {
            conn.execute_batch(&format!(
                "ALTER TABLE \"{}\" ADD COLUMN {col}",
                shard_name(table, *shard)
            ))?;
        }
        // A new column can change a view (a declared column starts to have data).
        self.views_dirty = true;
        self.bump_generation(conn)
    }

    /// Frees the physical storage of dropped columns recorded in `self.reclaim` whose parts
    /// hold nothing any more and that no view reads. Call after the views are rebuilt.
    pub(super) fn reclaim_dropped(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        let candidates = std::mem::take(&mut self.reclaim);
        if candidates.is_empty() {
            return Ok(());
        }
        // Parts that views read stay, whatever they hold.
        let read: HashSet<(TableId, ColumnId, Part)> = self
            .schema
            .dump()
            .tables
            .iter()
            .flat_map(|t| {
                t.columns
                    .iter()
                    .filter_map(move |c| c.merge.map(|m| (t.id, c.id, Part::of_merge(m))))
            })
            .collect();
        let mut changed = BTreeSet::new();
        for (table, column) in candidates {
            let Some(layout) = self.layouts.get(&table) else { continue };
            let mut parts: Vec<((ColumnId, Part), usize)> = layout
                .parts
                .iter()
                .filter(|((c, p), _)| {
                    column.is_none_or(|x| x == *c) && !read.contains(&(table, *c, *p))
                })
                .map(|(k, s)| (*k, *s))
                .collect();
            parts.sort();
            for ((c, part), shard) in parts {
                if !part_is_empty(conn, table, shard, c, part)? {
                    continue;
                }
                let t = shard_name(table, shard);
                for col in part.columns(c) {
                    conn.execute_batch(&format!("ALTER TABLE \"{t}\" DROP COLUMN {col}"))?;
                }
                if let Some(layout) = self.layouts.get_mut(&table) {
                    layout.parts.remove(&(c, part));
                    if let Some(used) = layout.shards.get_mut(&shard) {
                        *used = used.saturating_sub(part.width());
                        if *used == 0 && shard != 0 {
                            layout.shards.remove(&shard);
                            conn.execute_batch(&format!("DROP TABLE \"{t}\""))?;
                        }
                    }
                }
                changed.insert(table);
            }
        }
        if !changed.is_empty() {
            // Cached statements may name a part's old place.
            self.put_sql.retain(|(t, _, _), _| !changed.contains(t));
            self.bump_generation(conn)?;
        }
        Ok(())
    }
}

/// True when no row holds anything in this part.
fn part_is_empty(
    conn: &Connection,
    table: TableId,
    shard: usize,
    column: ColumnId,
    part: Part,
) -> rusqlite::Result<bool> {
    let t = shard_name(table, shard);
    let found: Option<i64> = match part {
        // An LWW cell with a value (NULL included) has an HLC.
        Part::Lww => conn
            .query_row(
                &format!(
                    "SELECT 1 FROM \"{t}\" WHERE {} IS NOT NULL LIMIT 1",
                    col_name("lh", column)
                ),
                [],
                |r| r.get(0),
            )
            .optional()?,
        // A counter sum is NULL exactly when no increment is kept.
        Part::Counter => conn
            .query_row(
                &format!(
                    "SELECT 1 FROM \"{t}\" WHERE {} IS NOT NULL LIMIT 1",
                    col_name("n", column)
                ),
                [],
                |r| r.get(0),
            )
            .optional()?,
        // A max of NULL writes reads NULL: look at the frontiers.
        Part::Max => conn
            .query_row(
                "SELECT 1 FROM shoal_maxw WHERE tbl = ?1 AND col = ?2 LIMIT 1",
                params![table.as_u64() as i64, column.as_u64() as i64],
                |r| r.get(0),
            )
            .optional()?,
    };
    Ok(found.is_none())
}
