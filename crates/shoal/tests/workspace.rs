//! The Workspace API: declarations, checked writes, read-only SQL, watching, and two
//! devices converging through the core pull driver.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::sync::Arc;

use shoal::core::{ManualClock, pull};
use shoal::*;

fn text(s: &str) -> Value {
    Value::text(s).unwrap()
}

fn todo() -> TableSpec {
    TableSpec::new("todo")
        .key("id", ColumnType::Text)
        .column("title", ColumnType::Text)
        .counter("votes")
        .max("best", ColumnType::Integer)
}

fn opts(clock: &ManualClock) -> WorkspaceOptions {
    WorkspaceOptions { clock: Arc::new(clock.clone()), ..Default::default() }
}

/// Two devices of one workspace, sharing a manual clock.
fn pair(dir: &std::path::Path, clock: &ManualClock) -> (Workspace, Workspace) {
    let a = Workspace::create(dir.join("a.shoal"), opts(clock)).unwrap();
    let b = Workspace::join(dir.join("b.shoal"), a.id(), opts(clock)).unwrap();
    (a, b)
}

async fn exchange(a: &Workspace, b: &Workspace) {
    assert!(pull(a.replica(), b.replica()).await.unwrap().stalled.is_empty());
    assert!(pull(b.replica(), a.replica()).await.unwrap().stalled.is_empty());
}

fn rows(ws: &Workspace, sql: &str) -> Vec<Vec<Value>> {
    ws.query(sql, &[]).unwrap().rows
}

#[test]
fn declare_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::create(dir.path().join("a.shoal"), WorkspaceOptions::default()).unwrap();
    assert!(ws.declare(&todo()).unwrap().is_some());
    assert!(ws.declare(&todo()).unwrap().is_none(), "a second declaration writes nothing");
    let more = todo().column("notes", ColumnType::Text);
    assert!(ws.declare(&more).unwrap().is_some(), "a new column is added");
    let err = ws.declare(&TableSpec::new("todo").key("id", ColumnType::Integer)).unwrap_err();
    assert!(matches!(err, Error::SchemaMismatch { .. }), "{err}");
    let as_max = TableSpec::new("todo").key("id", ColumnType::Text).max("title", ColumnType::Text);
    let err = ws.declare(&as_max).unwrap_err();
    assert!(err.to_string().contains("column \"title\" is TEXT lww"), "{err}");
    // A declaration that names a column twice is refused as such, before anything else.
    let err = ws.declare(&todo().max("Title", ColumnType::Text)).unwrap_err();
    assert!(matches!(err, Error::InvalidTable { .. }), "{err}");
    let cols = ws.query("SELECT * FROM todo", &[]).unwrap().columns;
    assert_eq!(cols, ["id", "title", "votes", "best", "notes"]);
}

#[tokio::test]
async fn two_devices_declaring_offline_agree() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_700_000_000_000);
    let (a, b) = pair(dir.path(), &clock);
    a.declare(&todo()).unwrap();
    clock.advance(5);
    b.declare(&todo()).unwrap();
    let mut tx = a.transaction().unwrap();
    tx.put("todo", &[("id", text("1")), ("title", text("from a"))]).unwrap();
    tx.commit().unwrap();
    exchange(&a, &b).await;
    assert_eq!(a.schema().unwrap().tables.len(), 1);
    assert!(a.status().unwrap().conflicts.is_empty(), "{:?}", a.status().unwrap().conflicts);
    assert!(b.status().unwrap().conflicts.is_empty());
    assert_eq!(rows(&a, "SELECT * FROM todo"), rows(&b, "SELECT * FROM todo"));
    assert_eq!(rows(&b, "SELECT title FROM todo"), vec![vec![text("from a")]]);
}

#[test]
fn local_writes_are_checked_against_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::create(dir.path().join("a.shoal"), WorkspaceOptions::default()).unwrap();
    ws.declare(&todo()).unwrap();
    let mut tx = ws.transaction().unwrap();
    let err = tx.put("nope", &[("id", text("1"))]).unwrap_err();
    assert_eq!(err.to_string(), "no table named \"nope\" (see `shoal table list`)");
    let err = tx.put("todo", &[("id", text("1")), ("colour", text("red"))]).unwrap_err();
    assert_eq!(err.to_string(), "table \"todo\" has no column named \"colour\"");
    let err = tx.put("todo", &[("id", text("1")), ("title", Value::Integer(3))]).unwrap_err();
    assert_eq!(err.to_string(), "column todo.title is TEXT; got INTEGER");
    let err = tx.put("todo", &[("title", text("x"))]).unwrap_err();
    assert_eq!(err.to_string(), "table \"todo\" needs a value for its key column \"id\"");
    let err = tx.put("todo", &[("id", text("1")), ("votes", Value::Integer(3))]).unwrap_err();
    assert!(matches!(err, Error::WrongMerge { .. }), "{err}");
    let err = tx.increment("todo", &[text("1")], "title", 1).unwrap_err();
    assert!(matches!(err, Error::WrongMerge { .. }), "{err}");
    let err = tx.delete("todo", &[text("1"), text("2")]).unwrap_err();
    assert!(matches!(err, Error::KeyArity { expected: 1, got: 2, .. }), "{err}");
    assert!(Value::text("a\0b").is_err(), "NUL in text is refused");
    assert!(tx.commit().unwrap().is_none(), "nothing valid was written");
}

#[test]
fn sql_is_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::create(dir.path().join("a.shoal"), WorkspaceOptions::default()).unwrap();
    ws.declare(&todo()).unwrap();
    for sql in [
        "INSERT INTO todo (id) VALUES ('x')",
        "DELETE FROM shoal_oplog",
        "DROP VIEW todo",
        "CREATE TABLE t (x)",
    ] {
        let err = ws.query(sql, &[]).unwrap_err();
        assert!(matches!(err, Error::NotReadOnly { .. }), "{sql}: {err}");
        assert!(err.to_string().contains("read-only"), "{err}");
    }
    let err = ws.query("SELEKT 1", &[]).unwrap_err();
    assert!(matches!(err, Error::Sql { .. }), "{err}");
    assert_eq!(
        ws.query("SELECT ?1 + 1", &[Value::Integer(41)]).unwrap().rows,
        vec![vec![Value::Integer(42)]]
    );
}

#[tokio::test]
async fn watch_names_the_row_and_changed_columns_and_reports_lag() {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::create(dir.path().join("a.shoal"), WorkspaceOptions::default()).unwrap();
    ws.declare(&todo()).unwrap();
    let mut watch = ws.watch("todo").unwrap();
    let mut tx = ws.transaction().unwrap();
    tx.put("todo", &[("id", text("1")), ("title", text("a"))]).unwrap();
    tx.commit().unwrap();
    assert_eq!(
        watch.next().await,
        Some(WatchEvent::Changed {
            key: vec![text("1")],
            columns: vec!["title".into()],
            live: true
        })
    );
    let mut tx = ws.transaction().unwrap();
    tx.delete("todo", &[text("1")]).unwrap();
    tx.commit().unwrap();
    assert_eq!(
        watch.next().await,
        Some(WatchEvent::Changed { key: vec![text("1")], columns: vec![], live: false })
    );

    // A subscriber that does not read falls behind and is told so.
    for i in 0..(shoal::sqlite::CHANGE_BUFFER + 10) {
        let mut tx = ws.transaction().unwrap();
        tx.put("todo", &[("id", text(&i.to_string()))]).unwrap();
        tx.commit().unwrap();
    }
    assert!(matches!(watch.next().await, Some(WatchEvent::Lagged { missed }) if missed >= 10));
}

#[tokio::test]
async fn concurrent_edits_converge_with_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_700_000_000_000);
    let (a, b) = pair(dir.path(), &clock);
    a.declare(&todo()).unwrap();
    exchange(&a, &b).await;

    let mut tx = a.transaction().unwrap();
    tx.put("todo", &[("id", text("1")), ("title", text("old")), ("best", Value::Integer(5))])
        .unwrap();
    tx.increment("todo", &[text("1")], "votes", 1).unwrap();
    tx.commit().unwrap();
    exchange(&a, &b).await;

    // Offline: A deletes row 1; B edits its title and votes, and concurrently bumps best.
    clock.advance(10);
    let mut tx = a.transaction().unwrap();
    tx.delete("todo", &[text("1")]).unwrap();
    tx.commit().unwrap();
    clock.advance(10);
    let mut tx = b.transaction().unwrap();
    tx.put("todo", &[("id", text("1")), ("title", text("new")), ("best", Value::Integer(3))])
        .unwrap();
    tx.increment("todo", &[text("1")], "votes", 2).unwrap();
    tx.commit().unwrap();
    exchange(&a, &b).await;

    // B's later write revives the row with only what was written after the delete: the
    // old vote and the old best are gone.
    let expected = vec![vec![text("1"), text("new"), Value::Integer(2), Value::Integer(3)]];
    assert_eq!(rows(&a, "SELECT * FROM todo"), expected);
    assert_eq!(rows(&b, "SELECT * FROM todo"), expected);
}

#[tokio::test]
async fn data_before_its_schema_shows_once_the_schema_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_700_000_000_000);
    let (a, b) = pair(dir.path(), &clock);
    let c = Workspace::join(dir.path().join("c.shoal"), a.id(), opts(&clock)).unwrap();
    a.declare(&todo()).unwrap();
    pull(a.replica(), b.replica()).await.unwrap();
    let mut tx = b.transaction().unwrap();
    tx.put("todo", &[("id", text("1")), ("title", text("written by b"))]).unwrap();
    tx.commit().unwrap();

    // C hears from B first: rows of a table it does not know yet are kept, not shown.
    let b_origin = b.device().unwrap();
    // Its whole log, as one sealed run (its entry 0 is its join request).
    let b_entries = b.replica().read_page(b_origin, 0).unwrap();
    c.replica().apply_entries(b_origin, b_entries).unwrap();
    assert!(c.schema().unwrap().table("todo").is_none());
    pull(a.replica(), c.replica()).await.unwrap();
    assert_eq!(rows(&c, "SELECT id, title FROM todo"), vec![vec![text("1"), text("written by b")]]);
}

#[test]
fn get_reads_one_row_by_exact_key() {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::create(dir.path().join("a.shoal"), WorkspaceOptions::default()).unwrap();
    ws.declare(&TableSpec::new("m").key("k", ColumnType::Any).column("v", ColumnType::Text))
        .unwrap();
    let mut tx = ws.transaction().unwrap();
    tx.put("m", &[("k", Value::Integer(1)), ("v", text("int"))]).unwrap();
    tx.put("m", &[("k", Value::real(1.0)), ("v", text("real"))]).unwrap();
    tx.commit().unwrap();
    let row = ws.get("m", &[Value::real(1.0)]).unwrap().unwrap();
    assert_eq!(row, vec![("k".to_owned(), Value::real(1.0)), ("v".to_owned(), text("real"))]);
    assert!(ws.get("m", &[Value::Integer(2)]).unwrap().is_none());
}
