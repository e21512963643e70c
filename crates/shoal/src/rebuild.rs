//! `verify` end to end: the materialized state of a workspace file compared with a fresh
//! rebuild from its oplog (issue 10, item 7).
//!
//! Owns: [`Workspace::verify_state`], [`StateCheck`] and [`StateDifference`].
//!
//! How: every stored entry, origin by origin in index order, is fed through the normal
//! ingest and apply path into a new replica in a temporary directory (no device key; a
//! wall clock at the end of time, so no stored stamp is judged as skewed — they were judged
//! when they arrived), then both files' canonical hidden state (`TablesMaterializer::
//! hidden_dump`, the format of the oracle `TablesModel`), their views and each origin's
//! applied count are compared. Each difference names the table, the row (its key values)
//! and the column.
//!
//! Limit: each side's hidden state is read into memory whole (as `HiddenDump`), so memory
//! grows with the workspace's materialized state (not with its log); the rebuild's file
//! takes as much disk as the workspace's own materialized state and log.
//!
//! Never: writes to the workspace file, or trusts anything of it but its oplog for the
//! rebuild.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use shoal_core::{Hlc, ManualClock, SyncError};
use shoal_sqlite::{Options, SqliteReplica, TablesMaterializer};
use shoal_tables::{HiddenDump, TableState};

use crate::error::{Error, Result};
use crate::workspace::Workspace;

/// One way the workspace's materialized state differs from a rebuild from its oplog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDifference {
    /// The table: its name (or `table:<id>` if it has none), or `None` for what is not
    /// about a table (an origin's applied count).
    pub table: Option<String>,
    /// The row: its key values as text, if the difference is about one row.
    pub row: Option<String>,
    /// The column's name (or `column:<id>`), if it is about one column.
    pub column: Option<String>,
    /// What differs: this file's value, then the rebuild's.
    pub what: String,
}

impl std::fmt::Display for StateDifference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(t) = &self.table {
            write!(f, "table {t}")?;
        }
        if let Some(r) = &self.row {
            write!(f, ", row {r}")?;
        }
        if let Some(c) = &self.column {
            write!(f, ", column {c}")?;
        }
        if self.table.is_some() {
            f.write_str(": ")?;
        }
        f.write_str(&self.what)
    }
}

/// The outcome of [`Workspace::verify_state`].
#[derive(Debug, Clone, Default)]
pub struct StateCheck {
    /// Entries fed to the rebuild.
    pub entries: u64,
    /// Every difference found (empty: the state is exactly a rebuild's).
    pub differences: Vec<StateDifference>,
}

impl Workspace {
    /// Rebuilds the materialized state from this file's oplog in a temporary replica and
    /// compares it with the file's own (see the module doc). `progress` gets the running
    /// count of entries fed.
    ///
    /// Another process may write the file meanwhile (a `sync --watch`, a `put`): every
    /// change moves a cursor or an applied count, so they are read before and after, and a
    /// check that saw the file change is run again (at most five times, then an error says
    /// the file kept changing).
    pub fn verify_state(&self, mut progress: impl FnMut(u64)) -> Result<StateCheck> {
        let positions = |ws: &Workspace| -> Result<_> {
            let applied: Vec<_> = ws
                .replica()
                .origin_status()?
                .into_iter()
                .map(|o| (o.origin, o.next, o.materialized))
                .collect();
            Ok((ws.replica().durable_cursors()?, applied))
        };
        for _ in 0..5 {
            let before = positions(self)?;
            let check = self.verify_state_once(&mut progress)?;
            if positions(self)? == before {
                return Ok(check);
            }
        }
        Err(Error::Path {
            path: self.path().to_owned(),
            reason: "the file kept changing while it was verified (a sync or a write in \
                     another process); verify it when it is quiet"
                .into(),
        })
    }

    fn verify_state_once(&self, mut progress: impl FnMut(u64)) -> Result<StateCheck> {
        let dir = tempfile::tempdir().map_err(|e| Error::Path {
            path: std::env::temp_dir(),
            reason: format!("cannot make a directory for the rebuild: {e}"),
        })?;
        let clock = ManualClock::new(Hlc::MAX_MILLIS);
        let options =
            Options { clock: Arc::new(clock), domains: vec![Box::new(TablesMaterializer::new())] };
        let rebuilt =
            SqliteReplica::create(dir.path().join("rebuild.shoal"), self.id(), None, options)?;
        // It rebuilds this device's state: its own entries never held, what it expects of
        // the workspace before the genesis, its keys.
        rebuilt.rebuild_like(self.replica())?;
        let mut entries = 0;
        let cursors = self.replica().durable_cursors()?;
        for (origin, next) in cursors.iter() {
            let mut from = 0;
            while from < next {
                let page = self.replica().read_page(origin, from)?;
                let Some(last) = page.last() else { break };
                let (n, end) = (page.len() as u64, last.index + 1);
                match rebuilt.apply_entries(origin, page) {
                    Ok(_) => {}
                    // A stop is reported by the chain check (`verify_all`); the rebuild holds
                    // what verified, as a receiver would.
                    Err(e) if e.stalls_origin() => break,
                    Err(e) => return Err(e.into()),
                }
                entries += n;
                progress(entries);
                from = end;
            }
        }
        let mut differences = Vec::new();
        let (here, there) = (hidden(self.replica())?, hidden(&rebuilt)?);
        compare_hidden(&here, &there, &mut differences);
        let (views_here, views_there) = (views(self.replica())?, views(&rebuilt)?);
        for name in views_here.keys().chain(views_there.keys()).collect::<BTreeSet<_>>() {
            let (a, b) = (views_here.get(name), views_there.get(name));
            if a != b {
                differences.push(StateDifference {
                    table: Some(name.clone()),
                    row: None,
                    column: None,
                    what: format!(
                        "the view differs: here {}, rebuilt {}",
                        a.map_or("missing", |s| s.as_str()),
                        b.map_or("missing", |s| s.as_str())
                    ),
                });
            }
        }
        let applied = |r: &SqliteReplica| -> Result<BTreeMap<_, _>> {
            Ok(r.origin_status()?.into_iter().map(|o| (o.origin, o.materialized)).collect())
        };
        let (a, b) = (applied(self.replica())?, applied(&rebuilt)?);
        for (origin, n) in &a {
            let m = b.get(origin).copied().unwrap_or(0);
            if *n != m {
                differences.push(StateDifference {
                    table: None,
                    row: None,
                    column: None,
                    what: format!("device {origin}: {n} entries applied here, {m} in a rebuild"),
                });
            }
        }
        drop(rebuilt);
        Ok(StateCheck { entries, differences })
    }
}

fn hidden(r: &SqliteReplica) -> Result<HiddenDump> {
    let path = r.path().display().to_string();
    Ok(r.with_reader(|conn| {
        TablesMaterializer::new()
            .hidden_dump(conn)
            .map_err(|e| SyncError::backend(format!("{path}: read the tables"), e))
    })?)
}

fn views(r: &SqliteReplica) -> Result<BTreeMap<String, String>> {
    let path = r.path().display().to_string();
    Ok(r.with_reader(|conn| {
        let sql = |e| SyncError::backend(format!("{path}: read the views"), e);
        let mut stmt =
            conn.prepare("SELECT name, sql FROM sqlite_master WHERE type = 'view'").map_err(sql)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(sql)?;
        rows.collect::<rusqlite::Result<BTreeMap<_, _>>>().map_err(sql)
    })?)
}

fn table_name(id: shoal_tables::TableId, t: Option<&TableState>) -> String {
    t.and_then(|t| t.name.as_ref()).map_or_else(|| format!("table:{id}"), |n| n.name.clone())
}

fn column_name(
    c: shoal_tables::ColumnId,
    a: Option<&TableState>,
    b: Option<&TableState>,
) -> String {
    [a, b]
        .into_iter()
        .flatten()
        .find_map(|t| t.columns.get(&c).and_then(|s| s.name.as_ref()).map(|n| n.name.clone()))
        .unwrap_or_else(|| format!("column:{c}"))
}

/// Every difference between two hidden states, table by table, row by row, cell by cell.
fn compare_hidden(here: &HiddenDump, there: &HiddenDump, out: &mut Vec<StateDifference>) {
    let ids: BTreeSet<_> = here.tables.keys().chain(there.tables.keys()).collect();
    for id in ids {
        let (a, b) = (here.tables.get(id), there.tables.get(id));
        let table = Some(table_name(*id, a.or(b)));
        let diff = |row: Option<String>, column: Option<String>, what: String| StateDifference {
            table: table.clone(),
            row,
            column,
            what,
        };
        let (Some(a), Some(b)) = (a, b) else {
            let side = if a.is_some() { "rebuilt" } else { "here" };
            out.push(diff(None, None, format!("the table is missing {side}")));
            continue;
        };
        if (&a.name, &a.definitions, a.dropped) != (&b.name, &b.definitions, b.dropped) {
            out.push(diff(
                None,
                None,
                format!(
                    "the table's definition differs: here {:?} {:?} dropped {:?}, rebuilt {:?} {:?} dropped {:?}",
                    a.name, a.definitions, a.dropped, b.name, b.definitions, b.dropped
                ),
            ));
        }
        for c in a.columns.keys().chain(b.columns.keys()).collect::<BTreeSet<_>>() {
            let (x, y) = (a.columns.get(c), b.columns.get(c));
            if x != y {
                let col = Some(column_name(*c, Some(a), Some(b)));
                out.push(diff(
                    None,
                    col,
                    format!("the column's definition differs: here {x:?}, rebuilt {y:?}"),
                ));
            }
        }
        for key in a.rows.keys().chain(b.rows.keys()).collect::<BTreeSet<_>>() {
            let row = Some(match key.values() {
                Ok(v) => v.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>().join(", "),
                Err(_) => format!("key bytes {:02x?}", key.as_bytes()),
            });
            let (x, y) = (a.rows.get(key), b.rows.get(key));
            let (Some(x), Some(y)) = (x, y) else {
                let side = if x.is_some() { "rebuilt" } else { "here" };
                out.push(diff(row, None, format!("the row is missing {side}")));
                continue;
            };
            if (x.tombstone, x.last_write) != (y.tombstone, y.last_write) {
                out.push(diff(
                    row.clone(),
                    None,
                    format!(
                        "the row's delete/last write differ: here {:?}/{:?}, rebuilt {:?}/{:?}",
                        x.tombstone, x.last_write, y.tombstone, y.last_write
                    ),
                ));
            }
            for c in x.cells.keys().chain(y.cells.keys()).collect::<BTreeSet<_>>() {
                let (p, q) = (x.cells.get(c), y.cells.get(c));
                if p != q {
                    let col = Some(column_name(*c, Some(a), Some(b)));
                    out.push(diff(row.clone(), col, format!("here {p:?}, rebuilt {q:?}")));
                }
            }
        }
    }
}
