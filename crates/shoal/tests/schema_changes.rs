//! Schema changes through the Workspace API (`add_column`, `rename_table`, `drop_table`,
//! `rename_column`, `drop_column`): each is checked against the schema, writes one entry,
//! and travels to other devices like any write.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::sync::Arc;

use shoal::core::{ManualClock, pull};
use shoal::*;

fn text(s: &str) -> Value {
    Value::text(s).unwrap()
}

fn todo() -> TableSpec {
    TableSpec::new("todo").key("id", ColumnType::Text).column("title", ColumnType::Text)
}

fn rows(ws: &Workspace, sql: &str) -> Vec<Vec<Value>> {
    ws.query(sql, &[]).unwrap().rows
}

fn columns(ws: &Workspace, table: &str) -> Vec<String> {
    ws.query(&format!("SELECT * FROM {table}"), &[]).unwrap().columns
}

#[test]
fn each_change_writes_one_entry_and_shows_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::create(dir.path().join("a.shoal"), WorkspaceOptions::default()).unwrap();
    let first = ws.declare(&todo()).unwrap().unwrap();
    let mut tx = ws.transaction().unwrap();
    tx.put("todo", &[("id", text("1")), ("title", text("milk"))]).unwrap();
    tx.commit().unwrap();

    let c = ws.add_column("todo", "votes", ColumnType::Integer, MergeKind::Counter).unwrap();
    assert_eq!(c.index, first.index + 2, "one entry per change");
    ws.add_column("todo", "notes", ColumnType::Text, MergeKind::Lww).unwrap();
    assert_eq!(columns(&ws, "todo"), ["id", "title", "votes", "notes"]);

    ws.rename_column("todo", "title", "name").unwrap();
    assert_eq!(columns(&ws, "todo"), ["id", "name", "votes", "notes"]);
    assert_eq!(rows(&ws, "SELECT name FROM todo"), vec![vec![text("milk")]], "data stays");

    ws.drop_column("todo", "notes").unwrap();
    assert_eq!(columns(&ws, "todo"), ["id", "name", "votes"]);

    ws.rename_table("todo", "tasks").unwrap();
    assert!(ws.schema().unwrap().table("todo").is_none());
    assert_eq!(rows(&ws, "SELECT id, name FROM tasks"), vec![vec![text("1"), text("milk")]]);

    ws.drop_table("tasks").unwrap();
    assert!(ws.schema().unwrap().tables.is_empty());
}

#[test]
fn changes_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::create(dir.path().join("a.shoal"), WorkspaceOptions::default()).unwrap();
    ws.declare(&todo()).unwrap();
    ws.declare(&TableSpec::new("other").key("k", ColumnType::Integer)).unwrap();

    let err = ws.add_column("todo", "Title", ColumnType::Text, MergeKind::Lww).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot change table \"todo\": it already has a column named \"title\""
    );
    let err = ws.add_column("todo", "n", ColumnType::Text, MergeKind::Counter).unwrap_err();
    assert!(err.to_string().contains("must be INTEGER"), "{err}");
    let err = ws.add_column("todo", "shoal_x", ColumnType::Text, MergeKind::Lww).unwrap_err();
    assert!(matches!(err, Error::InvalidName(_)), "{err}");
    let err = ws.add_column("nope", "x", ColumnType::Text, MergeKind::Lww).unwrap_err();
    assert!(matches!(err, Error::UnknownTable { .. }), "{err}");

    let err = ws.rename_table("todo", "OTHER").unwrap_err();
    assert_eq!(err.to_string(), "cannot change table \"todo\": another table is named \"other\"");
    let err = ws.rename_table("todo", "1x").unwrap_err();
    assert!(matches!(err, Error::InvalidName(_)), "{err}");
    ws.rename_table("todo", "TODO").unwrap(); // a change of case of its own name is fine

    let err = ws.rename_column("todo", "title", "id").unwrap_err();
    assert!(err.to_string().contains("already has a column named \"id\""), "{err}");
    let err = ws.rename_column("todo", "colour", "x").unwrap_err();
    assert!(matches!(err, Error::UnknownColumn { .. }), "{err}");

    let err = ws.drop_column("todo", "id").unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot change table \"TODO\": column \"id\" is part of the primary key; it cannot be \
         dropped"
    );
    let err = ws.drop_table("nope").unwrap_err();
    assert!(matches!(err, Error::UnknownTable { .. }), "{err}");
}

#[test]
fn a_column_added_under_a_name_whose_id_is_taken_gets_another_id() {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::create(dir.path().join("a.shoal"), WorkspaceOptions::default()).unwrap();
    ws.declare(&todo()).unwrap();
    // "title" keeps the id derived from "title" after its rename; a new "title" needs another.
    ws.rename_column("todo", "title", "name").unwrap();
    ws.add_column("todo", "title", ColumnType::Text, MergeKind::Lww).unwrap();
    assert_eq!(columns(&ws, "todo"), ["id", "name", "title"]);
    let mut tx = ws.transaction().unwrap();
    tx.put("todo", &[("id", text("1")), ("name", text("n")), ("title", text("t"))]).unwrap();
    tx.commit().unwrap();
    assert_eq!(rows(&ws, "SELECT name, title FROM todo"), vec![vec![text("n"), text("t")]]);
}

#[tokio::test]
async fn schema_changes_travel_to_other_devices() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_700_000_000_000);
    let opts = || WorkspaceOptions { clock: Arc::new(clock.clone()), ..Default::default() };
    let a = Workspace::create(dir.path().join("a.shoal"), opts()).unwrap();
    let b = Workspace::join(dir.path().join("b.shoal"), a.id(), opts()).unwrap();
    a.declare(&todo()).unwrap();
    a.add_column("todo", "done", ColumnType::Integer, MergeKind::Lww).unwrap();
    a.rename_column("todo", "title", "name").unwrap();
    a.rename_table("todo", "tasks").unwrap();
    pull(a.replica(), b.replica()).await.unwrap();
    assert_eq!(columns(&b, "tasks"), ["id", "name", "done"]);
    clock.advance(1);
    b.drop_table("tasks").unwrap();
    pull(b.replica(), a.replica()).await.unwrap();
    assert!(a.schema().unwrap().tables.is_empty());
}

/// Regression: a pooled reader connection that had read the table before a schema change
/// prepared `SELECT *` against its old schema and returned the old columns.
#[test]
fn queries_see_a_schema_change_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::create(dir.path().join("a.shoal"), WorkspaceOptions::default()).unwrap();
    ws.declare(&todo()).unwrap();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        assert_eq!(columns(&ws, "todo").len(), 2 + i);
        ws.add_column("todo", name, ColumnType::Text, MergeKind::Lww).unwrap();
    }
    assert_eq!(columns(&ws, "todo"), ["id", "title", "a", "b", "c"]);
}
