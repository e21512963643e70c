//! The SQL views apps read, one per shown table.
//!
//! Owns: the `rebuild_views` method of `TablesMaterializer`.
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

use rusqlite::Connection;
use shoal_tables::{MergeKind, is_reserved_name};

use super::TablesMaterializer;
use super::layout::{Part, col_name, phys_name, shard_name};
use super::sql::quote_ident;

/// The most shard tables a view joins besides the main one.
pub(super) const MAX_JOINED_SHARDS: usize = 60;

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
                "CREATE VIEW {} AS SELECT {} FROM {from} WHERE t0.written IS NOT NULL AND t0.kn = {key_len}",
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
