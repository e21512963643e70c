//! Two SQLite devices sync tables through a shared folder; bad folders are refused by name.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use shoal::*;

fn spec() -> TableSpec {
    TableSpec::new("todo")
        .key("id", ColumnType::Text)
        .column("title", ColumnType::Text)
        .counter("votes")
}

#[tokio::test]
async fn two_devices_converge_through_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("shared");
    std::fs::create_dir(&folder).unwrap();
    let a = Workspace::create(dir.path().join("a.shoal"), WorkspaceOptions::default()).unwrap();
    let b =
        Workspace::join(dir.path().join("b.shoal"), a.id(), WorkspaceOptions::default()).unwrap();
    a.declare(&spec()).unwrap();
    let mut tx = a.transaction().unwrap();
    tx.put("todo", &[("id", Value::text("1").unwrap()), ("title", Value::text("a").unwrap())])
        .unwrap();
    tx.commit().unwrap();
    a.sync_folder(&folder).await.unwrap();
    b.sync_folder(&folder).await.unwrap();
    let mut tx = b.transaction().unwrap();
    tx.increment("todo", &[Value::text("1").unwrap()], "votes", 3).unwrap();
    tx.commit().unwrap();
    b.sync_folder(&folder).await.unwrap();
    let out = a.sync_folder(&folder).await.unwrap();
    assert!(out.status.in_sync(), "{:?}", out.status);
    let q = "SELECT * FROM todo";
    assert_eq!(a.query(q, &[]).unwrap(), b.query(q, &[]).unwrap());
    assert_eq!(a.query("SELECT votes FROM todo", &[]).unwrap().rows, vec![vec![Value::Integer(3)]]);
    let last = a.last_sync().unwrap().unwrap();
    assert!(last.with.ends_with("shared"), "{last:?}");
}

#[tokio::test]
async fn a_missing_or_unusable_folder_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let a = Workspace::create(dir.path().join("a.shoal"), WorkspaceOptions::default()).unwrap();
    let err = a.sync_folder(dir.path().join("nope")).await.unwrap_err();
    assert!(err.to_string().ends_with("nope: the sync folder does not exist"), "{err}");
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let err = a.sync_folder(&file).await.unwrap_err();
    assert!(err.to_string().ends_with("file: the sync folder is not a directory"), "{err}");
    assert!(a.last_sync().unwrap().is_none());
}
