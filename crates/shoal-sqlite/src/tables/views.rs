//! The SQL views apps read, one per shown table.
//!
//! Owns: the `rebuild_views` method of `TablesMaterializer`, and [`live_row`] (one row of
//! a view found by its key bytes).
//!
//! A view is named after its table and selects, from the main shard (`t0`), the live rows
//! whose key fits (`written IS NOT NULL AND kn = <key columns>`): key columns from `k0..`,
//! then each shown column from the part matching its winning merge kind, wherever that
//! part lives. Other shards are joined (`LEFT JOIN … ON key`) when the view reads them; past
//! [`MAX_JOINED_SHARDS`] (SQLite joins at most 64 tables) a column is read by a scalar
//! subquery instead, so any layout gives a valid view.
//!
//! Invariants: which columns a view shows, their names and order come only from
//! `TablesModel::dump` (the column budget included), so every replica shows the same;
//! the physical layout only decides where each value is read from. A view is recreated
//! only when its SQL changes.
//!
//! Never: writes rows, shows a column the model does not, or creates a view whose name
//! starts with `shoal_` or `sqlite_` (it would shadow or be shadowed by a hidden table).

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::{Connection, OptionalExtension};
use shoal_tables::{MergeKind, RowKey, Value, is_reserved_name};

use super::TablesMaterializer;
use super::layout::{Part, col_name, phys_name, shard_name};
use super::sql::{from_sql, quote_ident};

/// The most shard tables a view joins besides the main one.
pub(super) const MAX_JOINED_SHARDS: usize = 60;

/// How every view over a table with rows ends, before the number of key columns: the live
/// rows whose key fits. [`live_row`] relies on it.
const LIVE_ROWS_WHERE: &str = " WHERE t0.written IS NOT NULL AND t0.kn = ";

/// The live row with key bytes `key` of the view named `view`, one value per view column
/// (`None` if there is none or the view is not one of Shoal's table views). The row is found
/// by its canonical key bytes, not by SQL equality on key values: SQL cannot find a NaN key
/// (stored as NULL, like a NULL key) and finds `-0.0` for `0.0` and `1` for `1.0`, while
/// the table domain keeps all of them apart. Reads `sqlite_master` and the hidden row
/// tables: run it on a trusted connection, not one of app SQL's.
pub fn live_row(
    conn: &Connection,
    view: &str,
    key: &RowKey,
) -> rusqlite::Result<Option<Vec<Value>>> {
    let sql: Option<String> = conn
        .prepare_cached("SELECT sql FROM sqlite_master WHERE type = 'view' AND name = ?1")?
        .query_row([view], |r| r.get(0))
        .optional()?;
    let prefix = format!("CREATE VIEW {} AS ", quote_ident(view));
    let Some(select) = sql.as_deref().and_then(|s| s.strip_prefix(&prefix)) else {
        return Ok(None);
    };
    // An empty view (no data yet) reads no row table: it has no rows.
    let Some(at) = select.rfind(LIVE_ROWS_WHERE) else { return Ok(None) };
    let tail = &select[at + LIVE_ROWS_WHERE.len()..];
    if tail.is_empty() || !tail.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    let mut stmt = conn.prepare_cached(&format!("{select} AND t0.key = ?1"))?;
    let n = stmt.column_count();
    stmt.query_row([key.as_bytes()], |row| {
        (0..n).map(|i| row.get_ref(i).map(from_sql)).collect::<rusqlite::Result<Vec<Value>>>()
    })
    .optional()
}

impl TablesMaterializer {
    /// Recreates the views whose definition changed.
    pub(super) fn rebuild_views(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        let dump = self.schema.dump();
        self.conflicts = self.schema.conflicts();
        let mut wanted: BTreeMap<String, String> = BTreeMap::new();
        let mut taken: BTreeSet<String> = BTreeSet::new();
        for table in &dump.tables {
            // The model shows no table under a reserved name (`ConflictKind::ReservedName`)
            // and no two under one name; checked again here because a view of such a name
            // would shadow, or be shadowed by, a hidden table.
            if is_reserved_name(&table.name) || !taken.insert(table.name.to_ascii_lowercase()) {
                continue;
            }
            let key_len = table.columns.iter().filter(|c| c.merge.is_none()).count();
            let Some(layout) = self.layouts.get(&table.id) else {
                // No data yet: an empty view with the right columns. It reads a real table
                // so that a connection holding an older schema notices the change (SQLite
                // checks the schema cookie only for statements that touch a table).
                let select: Vec<String> = table
                    .columns
                    .iter()
                    .map(|c| {
                        let expr = if c.merge == Some(MergeKind::Counter) { "0" } else { "NULL" };
                        format!("{expr} AS {}", quote_ident(&c.name))
                    })
                    .collect();
                wanted.insert(
                    table.name.clone(),
                    format!(
                        "CREATE VIEW {} AS SELECT {} FROM shoal_schema_gen WHERE 0",
                        quote_ident(&table.name),
                        select.join(", ")
                    ),
                );
                continue;
            };
            // The shards this view reads, joined in shard order up to the join limit.
            let mut needed: BTreeSet<usize> = BTreeSet::new();
            for c in &table.columns {
                if let Some(m) = c.merge
                    && let Some(s) = layout.parts.get(&(c.id, Part::of_merge(m)))
                    && *s != 0
                {
                    needed.insert(*s);
                }
            }
            let joined: BTreeSet<usize> = needed.iter().take(MAX_JOINED_SHARDS).copied().collect();
            let read = |shard: usize, col: String| -> String {
                if shard == 0 {
                    format!("t0.{col}")
                } else if joined.contains(&shard) {
                    format!("s{shard}.{col}")
                } else {
                    format!(
                        "(SELECT {col} FROM \"{}\" WHERE key = t0.key)",
                        shard_name(table.id, shard)
                    )
                }
            };
            let mut select = Vec::new();
            for (i, c) in table.columns.iter().enumerate() {
                let expr = match c.merge {
                    None if i < layout.key_columns => format!("t0.k{i}"),
                    None => "NULL".to_owned(),
                    Some(m) => match (m, layout.parts.get(&(c.id, Part::of_merge(m)))) {
                        (MergeKind::Lww, Some(s)) => read(*s, col_name("l", c.id)),
                        (MergeKind::Counter, Some(s)) => {
                            format!("coalesce({}, 0)", read(*s, col_name("n", c.id)))
                        }
                        (MergeKind::Max, Some(s)) => read(*s, col_name("m", c.id)),
                        (MergeKind::Counter, None) => "0".to_owned(),
                        (_, None) => "NULL".to_owned(),
                    },
                };
                select.push(format!("{expr} AS {}", quote_ident(&c.name)));
            }
            let mut from = format!("\"{}\" AS t0", phys_name(table.id));
            for s in &joined {
                from.push_str(&format!(
                    " LEFT JOIN \"{}\" AS s{s} ON s{s}.key = t0.key",
                    shard_name(table.id, *s)
                ));
            }
            let sql = format!(
                "CREATE VIEW {} AS SELECT {} FROM {from}{LIVE_ROWS_WHERE}{key_len}",
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
        self.changes.schema_changed();
        Ok(())
    }
}
