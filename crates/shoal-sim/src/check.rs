//! The end-of-run check: every replica equals the model of the merge rules.
//!
//! Owns: reading a device's hidden state and views ([`Snapshot::of`]), the model's
//! ([`Snapshot::of_model`]), and describing the first difference.
//!
//! Invariants: views are compared as SQL shows them (a NaN reads as NULL) with each
//! table's rows sorted, so a difference is one of state, never of order.
//!
//! Never: writes to a replica.

use shoal::Workspace;
use shoal_core::SyncError;
use shoal_sqlite::{TablesMaterializer, from_sql, quote_ident};
use shoal_tables::{HiddenDump, TablesModel, Value};

/// One replica's (or the model's) state: the hidden state and the views.
#[derive(Debug, PartialEq)]
pub(crate) struct Snapshot {
    pub hidden: HiddenDump,
    pub views: Vec<(String, Vec<Vec<Value>>)>,
}

impl Snapshot {
    pub(crate) fn of(ws: &Workspace) -> Result<Snapshot, String> {
        let tables = ws.schema().map_err(|e| format!("reading the schema: {e}"))?;
        ws.replica()
            .with_reader(|conn| {
                let hidden = TablesMaterializer::new()
                    .hidden_dump(conn)
                    .map_err(|e| SyncError::backend("hidden dump", e))?;
                let mut views = Vec::new();
                for t in &tables.tables {
                    let sql = format!("SELECT * FROM {}", quote_ident(&t.name));
                    let mut stmt = conn.prepare(&sql).map_err(|e| SyncError::backend("view", e))?;
                    let n = stmt.column_count();
                    let mut rows: Vec<Vec<Value>> = stmt
                        .query_map([], |r| {
                            (0..n).map(|i| r.get_ref(i).map(from_sql)).collect::<Result<_, _>>()
                        })
                        .map_err(|e| SyncError::backend("view", e))?
                        .collect::<Result<_, _>>()
                        .map_err(|e| SyncError::backend("view", e))?;
                    rows.sort();
                    views.push((t.name.clone(), rows));
                }
                Ok(Snapshot { hidden, views })
            })
            .map_err(|e| format!("reading {}: {e}", ws.path().display()))
    }

    pub(crate) fn of_model(model: &TablesModel) -> Snapshot {
        Snapshot { hidden: model.hidden_dump(), views: model.dump().rows_as_sql_shows() }
    }

    /// The first difference from `expected`, described, if any.
    pub(crate) fn difference(&self, expected: &Snapshot) -> Option<String> {
        if self.views != expected.views {
            let names = |s: &Snapshot| s.views.iter().map(|v| v.0.clone()).collect::<Vec<_>>();
            if names(self) != names(expected) {
                return Some(format!(
                    "visible tables {:?}, expected {:?}",
                    names(self),
                    names(expected)
                ));
            }
            for ((name, rows), (_, want)) in self.views.iter().zip(&expected.views) {
                if rows != want {
                    let extra: Vec<_> = rows.iter().filter(|r| !want.contains(r)).collect();
                    let missing: Vec<_> = want.iter().filter(|r| !rows.contains(r)).collect();
                    return Some(format!(
                        "table {name:?}: rows not expected {extra:?}; rows missing {missing:?}"
                    ));
                }
            }
        }
        if self.hidden != expected.hidden {
            for (id, state) in &expected.hidden.tables {
                match self.hidden.tables.get(id) {
                    None => return Some(format!("hidden state: table {id} missing")),
                    Some(s) if s != state => {
                        return Some(format!(
                            "hidden state of table {id} differs:\n  replica {s:?}\n  model   {state:?}"
                        ));
                    }
                    Some(_) => {}
                }
            }
            return Some("hidden state: tables not in the model".into());
        }
        None
    }
}
