//! [`TablesModel`]: the reference implementation of the table domain, in memory.
//!
//! Owns: [`TablesModel`], its canonical hidden state ([`HiddenDump`], [`TableState`],
//! [`ColumnState`]), the app-visible view ([`TablesDump`], [`TableView`], [`ColumnView`],
//! [`RowView`]) and schema conflict reports ([`SchemaConflict`], [`ConflictKind`]).
//!
//! It is the oracle that materializers (the SQLite one in `shoal-sqlite`) are
//! differentially tested against, so it favours obviously-correct code over speed: plain
//! `BTreeMap`s, and a view recomputed from scratch by [`TablesModel::dump`].
//!
//! Invariants:
//! - Applying the same set of ops (each exactly once) in any order gives equal
//!   [`TablesModel::hidden_dump`]s, hence equal [`TablesModel::dump`]s and
//!   [`TablesModel::conflicts`]. Nothing in the state depends on arrival order: see
//!   [`crate::merge`] for why each part is canonical.
//! - Data is never dropped because of schema: rows and cells of unknown, dropped-then-
//!   redeclared, conflicting or shadowed tables and columns are kept (under their ids)
//!   unless a tombstone excludes them.
//!
//! Never: deduplicates entries (apply each `(origin, index)` once; counters are not
//! idempotent), touches a database, or does I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use shoal_core::{Domain, Hlc, Payload};

use crate::budget::MAX_COLUMNS_PER_TABLE;
use crate::error::TableOpError;
use crate::ids::{ColumnId, TableId, is_reserved_name};
use crate::key::RowKey;
use crate::merge::{ColumnDef, Definitions, NameState, RowState, TableDef, defined_after_drop};
use crate::op::TableOp;
use crate::value::{ColumnType, MergeKind, Value};

/// The table domain's state, in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablesModel {
    tables: BTreeMap<TableId, TableState>,
    /// The most columns a view shows ([`MAX_COLUMNS_PER_TABLE`] except in tests).
    column_budget: usize,
}

impl Default for TablesModel {
    fn default() -> Self {
        TablesModel { tables: BTreeMap::new(), column_budget: MAX_COLUMNS_PER_TABLE }
    }
}

/// Everything kept for one table id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableState {
    /// The winning name write (`CreateTable` names and `RenameTable`s).
    pub name: Option<NameState>,
    /// The primary keys declared by `CreateTable`s.
    pub definitions: Definitions<TableDef>,
    /// The greatest `DropTable` HLC.
    pub dropped: Option<Hlc>,
    /// Columns with a name, definition or drop (key columns included).
    pub columns: BTreeMap<ColumnId, ColumnState>,
    /// Rows with anything kept, by key bytes.
    pub rows: BTreeMap<RowKey, RowState>,
}

/// Everything kept for one column id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnState {
    /// The winning name write (`CreateTable` key column names, `AddColumn` names and
    /// `RenameColumn`s).
    pub name: Option<NameState>,
    /// The definitions declared by `AddColumn`s.
    pub definitions: Definitions<ColumnDef>,
    /// The greatest `DropColumn` HLC.
    pub dropped: Option<Hlc>,
}

/// The canonical hidden state: every table and column definition, name, tombstone, row
/// tombstone, last write and kept cell state. Equal on replicas that applied the same ops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HiddenDump {
    /// Every table id with anything kept.
    pub tables: BTreeMap<TableId, TableState>,
}

/// What apps see: visible tables, ordered by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TablesDump {
    /// The visible tables, by current name (bytewise).
    pub tables: Vec<TableView>,
}

impl TablesDump {
    /// Each visible table's rows as a SQL view shows them — a NaN reads as NULL, since
    /// SQLite stores no NaN — each table's rows sorted: what a materializer's views are
    /// compared with.
    pub fn rows_as_sql_shows(&self) -> Vec<(String, Vec<Vec<Value>>)> {
        self.tables
            .iter()
            .map(|t| {
                let mut rows: Vec<Vec<Value>> = t
                    .rows
                    .iter()
                    .map(|r| {
                        r.values
                            .iter()
                            .map(|v| match v {
                                Value::Real(f) if f.is_nan() => Value::Null,
                                other => other.clone(),
                            })
                            .collect()
                    })
                    .collect();
                rows.sort();
                (t.name.clone(), rows)
            })
            .collect()
    }
}

/// One visible table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableView {
    /// Its id.
    pub id: TableId,
    /// Its current name.
    pub name: String,
    /// Visible columns in view order: key columns in key order, then the others by the
    /// HLC of their winning definition, then column id.
    pub columns: Vec<ColumnView>,
    /// Live rows, by key bytes.
    pub rows: Vec<RowView>,
}

/// One visible column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnView {
    /// Its id.
    pub id: ColumnId,
    /// The name shown (its current name, or a fallback when a key column loses a name
    /// collision; see `docs/TABLES.md`).
    pub name: String,
    /// Its declared type (from the winning definition).
    pub ty: ColumnType,
    /// Its merge kind; `None` for a primary-key column.
    pub merge: Option<MergeKind>,
}

/// One live row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowView {
    /// Its key.
    pub key: RowKey,
    /// One value per visible column, in column order.
    pub values: Vec<Value>,
}

/// A schema conflict to show in `status`. Nothing is dropped because of it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SchemaConflict {
    /// The table concerned.
    pub table: TableId,
    /// The column concerned, if it is about one column.
    pub column: Option<ColumnId>,
    /// What kind of conflict.
    pub kind: ConflictKind,
    /// A readable explanation, with names, ids and what was decided.
    pub message: String,
}

impl fmt::Display for SchemaConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The kinds of [`SchemaConflict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum ConflictKind {
    /// A column id declared with different types or merge kinds.
    ColumnDefinition,
    /// Two visible columns of one table with the same name (ASCII case-insensitive).
    ColumnName,
    /// A column declared by `AddColumn` is a key column of the winning primary key.
    KeyColumnRedeclared,
    /// A table or column named with a reserved prefix (`shoal_`, `sqlite_`, any case; see
    /// [`is_reserved_name`](crate::is_reserved_name)) by another device: a table so named
    /// is not shown (no view, its data kept), a column so named is hidden, and a key
    /// column so named is shown as `column_<id>`, until renamed.
    ReservedName,
    /// Rows whose keys do not fit the winning primary key (so they are not shown).
    RowsNotShown,
    /// A table id declared with different primary keys.
    TableDefinition,
    /// Two visible tables with the same name (ASCII case-insensitive).
    TableName,
    /// A live column beyond the table's column budget
    /// ([`MAX_COLUMNS_PER_TABLE`](crate::MAX_COLUMNS_PER_TABLE)) in view order: devices
    /// declared more columns together than one may alone. It is hidden, its data kept.
    TooManyColumns,
}

impl TablesModel {
    /// An empty model.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty model whose views show at most `budget` columns per table instead of
    /// [`MAX_COLUMNS_PER_TABLE`]. For tests that exercise the budget with small tables;
    /// replicas that sync must all use the default.
    #[doc(hidden)]
    pub fn with_column_budget(budget: usize) -> Self {
        TablesModel { tables: BTreeMap::new(), column_budget: budget.max(1) }
    }

    /// The most columns a table's view shows, key columns included.
    pub fn column_budget(&self) -> usize {
        self.column_budget
    }

    /// Applies one op stamped `hlc` (its own HLC: entry HLC plus position). Refuses an op
    /// that breaks a rule ([`TableOp::validate`]) without changing anything, so the model
    /// accepts exactly what would survive encoding and decoding.
    pub fn apply(&mut self, hlc: Hlc, op: &TableOp) -> Result<(), TableOpError> {
        op.validate()?;
        self.apply_valid(hlc, op);
        Ok(())
    }

    /// Applies the table ops of one entry, atomically: op `i` is stamped
    /// `payload.hlc.plus(i)` (positions count every op, whatever its domain), ops of other
    /// domains are skipped, and if any table op cannot be decoded (unknown kind or
    /// malformed) nothing is applied.
    pub fn apply_payload(&mut self, payload: &Payload) -> Result<(), TableOpError> {
        let mut decoded = Vec::new();
        for (i, op) in payload.ops.iter().enumerate() {
            if op.domain == Domain::TABLES {
                decoded.push((payload.hlc.plus(i as u64), TableOp::decode(op)?));
            }
        }
        for (hlc, op) in &decoded {
            self.apply_valid(*hlc, op);
        }
        Ok(())
    }

    fn apply_valid(&mut self, hlc: Hlc, op: &TableOp) {
        let table = op.table();
        self.apply_to_table(hlc, op);
        // An ignored put on a table with nothing else leaves nothing to keep.
        if self.tables.get(&table).is_some_and(|t| *t == TableState::default()) {
            self.tables.remove(&table);
        }
    }

    fn apply_to_table(&mut self, hlc: Hlc, op: &TableOp) {
        let t = self.tables.entry(op.table()).or_default();
        match op {
            TableOp::CreateTable { name, primary_key, .. } => {
                NameState::offer(&mut t.name, hlc, name);
                t.definitions.record(
                    TableDef {
                        primary_key: primary_key.iter().map(|p| (p.column, p.ty)).collect(),
                    },
                    hlc,
                );
                for pk in primary_key {
                    NameState::offer(
                        &mut t.columns.entry(pk.column).or_default().name,
                        hlc,
                        &pk.name,
                    );
                }
            }
            TableOp::AddColumn { column, name, ty, merge, .. } => {
                let c = t.columns.entry(*column).or_default();
                NameState::offer(&mut c.name, hlc, name);
                c.definitions.record(ColumnDef { ty: *ty, merge: *merge }, hlc);
            }
            TableOp::RenameTable { name, .. } => {
                NameState::offer(&mut t.name, hlc, name);
            }
            TableOp::RenameColumn { column, name, .. } => {
                NameState::offer(&mut t.columns.entry(*column).or_default().name, hlc, name);
            }
            TableOp::DropTable { .. } => {
                t.dropped = t.dropped.max(Some(hlc));
                let TableState { rows, columns, dropped, .. } = t;
                let col_drop = column_drops(columns);
                rows.retain(|_, row| {
                    row.prune(*dropped, &col_drop);
                    !row.is_empty()
                });
            }
            TableOp::DropColumn { column, .. } => {
                let c = t.columns.entry(*column).or_default();
                c.dropped = c.dropped.max(Some(hlc));
                let TableState { rows, columns, dropped, .. } = t;
                let col_drop = column_drops(columns);
                rows.retain(|_, row| {
                    row.prune(*dropped, &col_drop);
                    !row.is_empty()
                });
            }
            TableOp::Put { key, cells, .. } => {
                let TableState { rows, columns, dropped, .. } = t;
                let col_drop = column_drops(columns);
                let row = rows.entry(key.clone()).or_default();
                row.put(hlc, cells, *dropped, &col_drop);
                if row.is_empty() {
                    rows.remove(key);
                }
            }
            TableOp::Delete { key, .. } => {
                let TableState { rows, columns, dropped, .. } = t;
                let col_drop = column_drops(columns);
                rows.entry(key.clone()).or_default().delete(hlc, *dropped, &col_drop);
            }
        }
    }

    /// The canonical hidden state.
    pub fn hidden_dump(&self) -> HiddenDump {
        HiddenDump { tables: self.tables.clone() }
    }

    /// The app-visible state: visible tables by name, their visible columns, live rows.
    pub fn dump(&self) -> TablesDump {
        self.resolve().0
    }

    /// Schema conflicts among live tables, in `(table, column, kind)` order.
    pub fn conflicts(&self) -> Vec<SchemaConflict> {
        self.resolve().1
    }

    /// Every live table (shown or not: shadowed by another's name, or under a reserved
    /// name) with its current name and the number of columns of its winning primary key:
    /// the tables whose rows that do not fit the key are reported as `RowsNotShown`
    /// (see [`rows_not_shown`]). In table id order.
    pub fn live_table_keys(&self) -> Vec<(TableId, String, usize)> {
        self.tables
            .iter()
            .filter_map(|(id, t)| {
                let (def, _) = t.definitions.winner()?;
                if !defined_after_drop(t.definitions.latest(), t.dropped) {
                    return None;
                }
                let name = match &t.name {
                    Some(n) => n.name.clone(),
                    None => format!("table_{id}"),
                };
                Some((*id, name, def.primary_key.len()))
            })
            .collect()
    }

    /// Computes the view and the conflicts from the hidden state.
    fn resolve(&self) -> (TablesDump, Vec<SchemaConflict>) {
        let mut conflicts = Vec::new();
        // Live tables (declared after their drop), with their view built.
        let mut live: Vec<(Option<Hlc>, TableView)> = Vec::new();
        for (id, t) in &self.tables {
            let Some((def, _)) = t.definitions.winner() else { continue };
            if !defined_after_drop(t.definitions.latest(), t.dropped) {
                continue;
            }
            let (name_hlc, name) = match &t.name {
                Some(n) => (Some(n.hlc), n.name.clone()),
                // Unreachable in practice: every CreateTable writes a name.
                None => (None, format!("table_{id}")),
            };
            let view = table_view(*id, &name, t, def, self.column_budget, &mut conflicts);
            if is_reserved_name(&name) {
                // Never shown: its view would be (or shadow) a hidden table of Shoal or
                // SQLite. It takes part in no name collision either.
                conflicts.push(SchemaConflict {
                    table: *id,
                    column: None,
                    kind: ConflictKind::ReservedName,
                    message: format!(
                        "table {id} is named {name:?}, a name reserved for Shoal and SQLite \
                         (\"shoal_\", \"sqlite_\"); it is hidden (its data is kept) until \
                         renamed"
                    ),
                });
                continue;
            }
            live.push((name_hlc, view));
        }

        // Name collisions (ASCII case-insensitive, as SQL sees names): the greatest
        // (name hlc, table id) keeps the name; the others are not shown.
        let mut by_name: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, (_, v)) in live.iter().enumerate() {
            by_name.entry(v.name.to_ascii_lowercase()).or_default().push(i);
        }
        let mut shown = BTreeSet::new();
        for group in by_name.values() {
            let Some(&winner) = group.iter().max_by_key(|&&i| (live[i].0, live[i].1.id)) else {
                continue;
            };
            shown.insert(winner);
            for &i in group.iter().filter(|&&i| i != winner) {
                let (w, l) = (&live[winner].1, &live[i].1);
                conflicts.push(SchemaConflict {
                    table: l.id,
                    column: None,
                    kind: ConflictKind::TableName,
                    message: format!(
                        "tables {} and {} are both named {:?}; table {} has the later name \
                         and keeps it, table {} is hidden (its data is kept) until one of them \
                         is renamed",
                        w.id, l.id, l.name, w.id, l.id
                    ),
                });
            }
        }
        let mut tables: Vec<TableView> = live
            .into_iter()
            .enumerate()
            .filter(|(i, _)| shown.contains(i))
            .map(|(_, (_, v))| v)
            .collect();
        tables.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        conflicts.sort();
        (TablesDump { tables }, conflicts)
    }
}

/// A column's current name and its HLC, or a fallback built from the id.
fn column_name(t: &TableState, column: ColumnId) -> (Option<Hlc>, String) {
    match t.columns.get(&column).and_then(|c| c.name.as_ref()) {
        Some(n) => (Some(n.hlc), n.name.clone()),
        None => (None, format!("column_{column}")),
    }
}

/// The view of one live table, reporting its conflicts.
fn table_view(
    id: TableId,
    name: &str,
    t: &TableState,
    def: &TableDef,
    budget: usize,
    conflicts: &mut Vec<SchemaConflict>,
) -> TableView {
    // Key columns, in key order. They are never hidden: on a name collision between two
    // key columns, the loser is shown as "<name>_<column id>".
    let key_names: Vec<(Option<Hlc>, String)> =
        def.primary_key.iter().map(|(c, _)| column_name(t, *c)).collect();
    let mut columns: Vec<ColumnView> = Vec::new();
    for (i, ((column, ty), (hlc, cname))) in def.primary_key.iter().zip(&key_names).enumerate() {
        let folded = cname.to_ascii_lowercase();
        let beaten_by = def.primary_key.iter().zip(&key_names).enumerate().find(
            |(j, ((other, _), (ohlc, oname)))| {
                *j != i && oname.to_ascii_lowercase() == folded && (*ohlc, *other) > (*hlc, *column)
            },
        );
        let shown = match beaten_by {
            // A key column cannot be hidden: it is shown under a neutral name.
            None if is_reserved_name(cname) => {
                let fallback = format!("column_{column}");
                conflicts.push(SchemaConflict {
                    table: id,
                    column: Some(*column),
                    kind: ConflictKind::ReservedName,
                    message: format!(
                        "key column {column} of table {name:?} ({id}) is named {cname:?}, a \
                         name reserved for Shoal and SQLite; it is shown as {fallback:?} \
                         until renamed"
                    ),
                });
                fallback
            }
            None => cname.clone(),
            Some((_, ((other, _), _))) => {
                let fallback = format!("{cname}_{column}");
                conflicts.push(SchemaConflict {
                    table: id,
                    column: Some(*column),
                    kind: ConflictKind::ColumnName,
                    message: format!(
                        "key columns {other} and {column} of table {name:?} ({id}) are both \
                         named {cname:?}; column {other} has the later name and keeps it, \
                         column {column} is shown as {fallback:?}"
                    ),
                });
                fallback
            }
        };
        columns.push(ColumnView { id: *column, name: shown, ty: *ty, merge: None });
    }
    let key_set: BTreeSet<ColumnId> = def.primary_key.iter().map(|(c, _)| *c).collect();
    let key_folded: BTreeSet<String> =
        columns.iter().map(|c| c.name.to_ascii_lowercase()).collect();

    // Other live columns.
    struct Candidate {
        id: ColumnId,
        def: ColumnDef,
        def_hlc: Hlc,
        name_hlc: Option<Hlc>,
        name: String,
    }
    let mut candidates: Vec<Candidate> = Vec::new();
    for (cid, c) in &t.columns {
        let Some((cdef, def_hlc)) = c.definitions.winner() else { continue };
        // A table drop drops its columns too: a re-created table starts without them.
        if !defined_after_drop(c.definitions.latest(), c.dropped.max(t.dropped)) {
            continue;
        }
        let (name_hlc, cname) = column_name(t, *cid);
        if c.definitions.len() > 1 {
            let others: Vec<String> = c
                .definitions
                .all()
                .filter(|(d, _)| *d != cdef)
                .map(|(d, h)| format!("{} {} at {h}", d.ty, d.merge))
                .collect();
            conflicts.push(SchemaConflict {
                table: id,
                column: Some(*cid),
                kind: ConflictKind::ColumnDefinition,
                message: format!(
                    "column {cname:?} ({cid}) of table {name:?} ({id}) was declared in {} \
                     different ways; using {} {} (declared at {def_hlc}), not {}; every \
                     write is kept",
                    c.definitions.len(),
                    cdef.ty,
                    cdef.merge,
                    others.join(", ")
                ),
            });
        }
        if key_set.contains(cid) {
            conflicts.push(SchemaConflict {
                table: id,
                column: Some(*cid),
                kind: ConflictKind::KeyColumnRedeclared,
                message: format!(
                    "column {cname:?} ({cid}) of table {name:?} ({id}) is a primary-key \
                     column but was also added as a {} {} column; it is shown as a key column",
                    cdef.ty, cdef.merge
                ),
            });
            continue;
        }
        candidates.push(Candidate { id: *cid, def: *cdef, def_hlc, name_hlc, name: cname });
    }
    // Name collisions: key columns keep their names; among the others the greatest
    // (name hlc, column id) keeps it; losers are hidden (their cells are kept).
    let mut kept: Vec<&Candidate> = Vec::new();
    for c in &candidates {
        let folded = c.name.to_ascii_lowercase();
        if is_reserved_name(&c.name) {
            conflicts.push(SchemaConflict {
                table: id,
                column: Some(c.id),
                kind: ConflictKind::ReservedName,
                message: format!(
                    "column {} of table {name:?} ({id}) is named {:?}, a name reserved for \
                     Shoal and SQLite; it is hidden (its data is kept) until renamed",
                    c.id, c.name
                ),
            });
            continue;
        }
        let holder = if key_folded.contains(&folded) {
            Some("a key column".to_owned())
        } else {
            candidates
                .iter()
                .filter(|o| o.id != c.id && o.name.to_ascii_lowercase() == folded)
                .find(|o| (o.name_hlc, o.id) > (c.name_hlc, c.id))
                .map(|o| format!("column {} (which has the later name)", o.id))
        };
        match holder {
            None => kept.push(c),
            Some(holder) => conflicts.push(SchemaConflict {
                table: id,
                column: Some(c.id),
                kind: ConflictKind::ColumnName,
                message: format!(
                    "column {} of table {name:?} ({id}) is named {:?} like {holder}; it is \
                     hidden (its data is kept) until one of them is renamed",
                    c.id, c.name
                ),
            }),
        }
    }
    kept.sort_by_key(|c| (c.def_hlc, c.id));
    // The column budget: the first columns in view order are shown, the rest reported.
    let room = budget.saturating_sub(columns.len());
    if kept.len() > room {
        for c in kept.split_off(room) {
            conflicts.push(SchemaConflict {
                table: id,
                column: Some(c.id),
                kind: ConflictKind::TooManyColumns,
                message: format!(
                    "column {:?} ({}) of table {name:?} ({id}) comes after the first {budget} \
                     columns (the most a table shows, in the order columns were declared); it \
                     is hidden (its data is kept) until other columns are dropped",
                    c.name, c.id
                ),
            });
        }
    }
    for c in &kept {
        columns.push(ColumnView {
            id: c.id,
            name: c.name.clone(),
            ty: c.def.ty,
            merge: Some(c.def.merge),
        });
    }

    // Rows.
    let mut rows = Vec::new();
    let mut not_fitting = 0usize;
    for (key, row) in &t.rows {
        if !row.is_visible(t.dropped) {
            continue;
        }
        let mut values = match key.values() {
            Ok(v) if v.len() == def.primary_key.len() => v,
            _ => {
                not_fitting += 1;
                continue;
            }
        };
        let row_floor = row.floor(t.dropped);
        for c in &kept {
            let floor = row_floor.max(t.columns.get(&c.id).and_then(|s| s.dropped));
            let value = match row.cells.get(&c.id) {
                Some(cell) => cell.value(c.def.merge, floor),
                None => c.def.merge.empty_value(),
            };
            values.push(value);
        }
        rows.push(RowView { key: key.clone(), values });
    }

    if t.definitions.len() > 1 {
        let show = |d: &TableDef| {
            let cols: Vec<String> = d
                .primary_key
                .iter()
                .map(|(c, ty)| format!("{} {ty}", column_name(t, *c).1))
                .collect();
            format!("({})", cols.join(", "))
        };
        let others: Vec<String> = t
            .definitions
            .all()
            .filter(|(d, _)| *d != def)
            .map(|(d, h)| format!("{} at {h}", show(d)))
            .collect();
        conflicts.push(SchemaConflict {
            table: id,
            column: None,
            kind: ConflictKind::TableDefinition,
            message: format!(
                "table {name:?} ({id}) was created with {} different primary keys; using {}, \
                 not {}; rows whose keys do not fit are kept but not shown",
                t.definitions.len(),
                show(def),
                others.join(", ")
            ),
        });
    }
    if not_fitting > 0 {
        conflicts.push(rows_not_shown(id, name, not_fitting as u64, def.primary_key.len()));
    }

    TableView { id, name: name.to_owned(), columns, rows }
}

/// The `RowsNotShown` conflict of table `id` (named `name`, with a winning primary key of
/// `key_columns` columns) when `count` of its live rows have keys that do not fit. One
/// function builds it, so materializers that count rows their own way (in SQL) report the
/// same conflict as the model.
pub fn rows_not_shown(id: TableId, name: &str, count: u64, key_columns: usize) -> SchemaConflict {
    SchemaConflict {
        table: id,
        column: None,
        kind: ConflictKind::RowsNotShown,
        message: format!(
            "{count} live rows of table {name:?} ({id}) have keys that do not fit its \
             primary key of {key_columns} columns; they are kept but not shown"
        ),
    }
}

/// The column drop lookup used by row pruning.
fn column_drops(
    columns: &BTreeMap<ColumnId, ColumnState>,
) -> impl Fn(ColumnId) -> Option<Hlc> + '_ {
    move |c| columns.get(&c).and_then(|s| s.dropped)
}
