//! `verify_state` (issue 10, item 7): the materialized state equals a fresh rebuild from
//! the oplog on a healthy workspace, and each kind of damage to it is reported with exactly
//! its table, row and column.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use shoal::tables::{ColumnId, TableId};
use shoal::*;

fn text(s: &str) -> Value {
    Value::text(s).unwrap()
}

fn workspace(dir: &tempfile::TempDir) -> Workspace {
    let ws = Workspace::create(dir.path().join("w.shoal"), WorkspaceOptions::default()).unwrap();
    let spec = TableSpec::new("todo")
        .key("id", ColumnType::Text)
        .column("title", ColumnType::Text)
        .counter("votes");
    ws.declare(&spec).unwrap();
    for id in ["t1", "t2", "t3"] {
        let mut tx = ws.transaction().unwrap();
        tx.put("todo", &[("id", text(id)), ("title", text(&format!("title {id}")))]).unwrap();
        tx.increment("todo", &[text(id)], "votes", 2).unwrap();
        tx.commit().unwrap();
    }
    let mut tx = ws.transaction().unwrap();
    tx.delete("todo", &[text("t3")]).unwrap();
    tx.commit().unwrap();
    ws
}

/// Runs SQL on the workspace file directly, as damage would.
fn damage(ws: &Workspace, sql: &str) {
    let conn = rusqlite::Connection::open(ws.path()).unwrap();
    let changed = conn.execute(sql, []).unwrap();
    assert_eq!(changed, 1, "{sql}");
}

fn table() -> String {
    format!("shoal_t_{:016x}", TableId::from_name("todo").as_u64())
}

fn part(prefix: &str, column: &str) -> String {
    let c = ColumnId::from_name(TableId::from_name("todo"), column);
    format!("{prefix}_{:016x}", c.as_u64())
}

fn only_difference(ws: &Workspace) -> StateDifference {
    let check = ws.verify_state(|_| {}).unwrap();
    assert!(check.entries >= 5);
    assert_eq!(check.differences.len(), 1, "{:#?}", check.differences);
    check.differences.into_iter().next().unwrap()
}

#[test]
fn a_healthy_workspace_equals_its_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let ws = workspace(&dir);
    let check = ws.verify_state(|_| {}).unwrap();
    assert_eq!(check.entries, 6, "genesis, schema, three puts, a delete");
    assert!(check.differences.is_empty(), "{:#?}", check.differences);
}

#[test]
fn a_corrupted_cell_is_reported_with_its_table_row_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let ws = workspace(&dir);
    damage(
        &ws,
        &format!("UPDATE {} SET {} = 'defaced' WHERE k0 = 't2'", table(), part("l", "title")),
    );
    let d = only_difference(&ws);
    assert_eq!(d.table.as_deref(), Some("todo"));
    assert_eq!(d.row.as_deref(), Some(format!("{:?}", text("t2")).as_str()));
    assert_eq!(d.column.as_deref(), Some("title"));
    assert!(d.what.contains("defaced"), "{d}");
}

#[test]
fn a_deleted_row_is_reported_with_its_table_and_row() {
    let dir = tempfile::tempdir().unwrap();
    let ws = workspace(&dir);
    damage(&ws, &format!("DELETE FROM {} WHERE k0 = 't1'", table()));
    let d = only_difference(&ws);
    assert_eq!(d.table.as_deref(), Some("todo"));
    assert_eq!(d.row.as_deref(), Some(format!("{:?}", text("t1")).as_str()));
    assert_eq!(d.column, None);
    assert!(d.what.contains("missing here"), "{d}");
}

#[test]
fn an_altered_cell_clock_is_reported_with_its_table_row_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let ws = workspace(&dir);
    damage(
        &ws,
        &format!("UPDATE {} SET {p} = {p} + 1 WHERE k0 = 't1'", table(), p = part("lh", "title")),
    );
    let d = only_difference(&ws);
    assert_eq!((d.table.as_deref(), d.column.as_deref()), (Some("todo"), Some("title")));
    assert_eq!(d.row.as_deref(), Some(format!("{:?}", text("t1")).as_str()));
}

#[test]
fn a_counter_sum_and_a_tombstone_are_checked_too() {
    let dir = tempfile::tempdir().unwrap();
    let ws = workspace(&dir);
    damage(&ws, &format!("UPDATE {} SET tomb = NULL WHERE k0 = 't3'", table()));
    let d = only_difference(&ws);
    assert_eq!(
        (d.row.as_deref(), d.column.as_deref()),
        (Some(format!("{:?}", text("t3")).as_str()), None)
    );
    let dir = tempfile::tempdir().unwrap();
    let ws = workspace(&dir);
    damage(&ws, "UPDATE shoal_adds SET n = 5 WHERE hlc = (SELECT min(hlc) FROM shoal_adds)");
    let d = only_difference(&ws);
    assert_eq!(d.column.as_deref(), Some("votes"), "{d}");
}

/// Found by the crash test (a `join --folder` killed mid-sync): a device whose own entries
/// are held everywhere else (its invite is not here yet) still applies them itself, and
/// the rebuild that checks it must do the same, and hold others' entries as it does
/// before the genesis arrives.
#[tokio::test]
async fn a_device_whose_own_entries_are_held_elsewhere_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("shared");
    std::fs::create_dir(&folder).unwrap();
    let options = WorkspaceOptions { members_only: true, ..Default::default() };
    let admin = Workspace::create(dir.path().join("a.shoal"), options).unwrap();
    // A member's entries reach the folder before the admin's genesis does, for the joiner.
    let code = shoal::core::invite::InviteCode::generate(admin.id(), "").unwrap();
    let joiner =
        Workspace::join_with_code(dir.path().join("j.shoal"), &code, Default::default()).unwrap();
    joiner.declare(&TableSpec::new("todo").key("id", ColumnType::Text)).unwrap();
    let check = |ws: &Workspace| {
        let c = ws.verify_state(|_| {}).unwrap();
        assert!(c.differences.is_empty(), "{:?}", c.differences);
    };
    check(&joiner);
    // The genesis arrives, the invite (not written yet) does not: the joiner is no member
    // in its own roster, and its own entries still apply on it.
    admin.sync_folder(&folder).await.unwrap();
    joiner.sync_folder(&folder).await.unwrap();
    assert!(joiner.schema().unwrap().table("todo").is_some());
    check(&joiner);
}
