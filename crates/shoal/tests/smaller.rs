//! Regression tests for smaller failures found from outside (issue 9), through the library
//! API: `get` with a NaN key, the `RowsNotShown` conflict in `status`, and read-only files.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed assertion

use shoal::*;

fn text(s: &str) -> Value {
    Value::text(s).unwrap()
}

/// `get` finds rows by their canonical key bytes: a NaN key (stored by SQLite as NULL) finds
/// its row and not the NULL key's, and -0.0 and 0.0 stay different keys.
#[test]
fn get_finds_nan_keys_and_keeps_signed_zeros_apart() {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::create(dir.path().join("a.shoal"), WorkspaceOptions::default()).unwrap();
    ws.declare(&TableSpec::new("m").key("x", ColumnType::Real).column("v", ColumnType::Text))
        .unwrap();
    let mut tx = ws.transaction().unwrap();
    tx.put("m", &[("x", Value::real(f64::NAN)), ("v", text("nan"))]).unwrap();
    tx.put("m", &[("x", Value::Null), ("v", text("null"))]).unwrap();
    tx.put("m", &[("x", Value::real(0.0)), ("v", text("zero"))]).unwrap();
    tx.put("m", &[("x", Value::real(-0.0)), ("v", text("minus zero"))]).unwrap();
    tx.commit().unwrap();

    let v = |key: Value| -> Option<Vec<(String, Value)>> { ws.get("m", &[key]).unwrap() };
    let nan = v(Value::real(f64::NAN)).expect("the NaN key's row");
    assert_eq!(nan[1], ("v".to_owned(), text("nan")));
    assert!(matches!(nan[0].1, Value::Real(f) if f.is_nan()), "{nan:?}");
    assert_eq!(v(Value::Null).unwrap()[1].1, text("null"));
    let zero = v(Value::real(0.0)).unwrap();
    assert_eq!(zero[1].1, text("zero"));
    assert!(matches!(zero[0].1, Value::Real(f) if f == 0.0 && f.is_sign_positive()));
    let minus = v(Value::real(-0.0)).unwrap();
    assert_eq!(minus[1].1, text("minus zero"));
    assert!(matches!(minus[0].1, Value::Real(f) if f == 0.0 && f.is_sign_negative()));
    assert_eq!(v(Value::real(1.5)), None);

    // Deleted rows are not found.
    let mut tx = ws.transaction().unwrap();
    tx.delete("m", &[Value::real(f64::NAN)]).unwrap();
    tx.commit().unwrap();
    assert_eq!(v(Value::real(f64::NAN)), None);
    assert_eq!(v(Value::Null).unwrap()[1].1, text("null"));
}

/// Integer 1 and real 1.0 are different keys of an ANY column, and `get` keeps them apart.
#[test]
fn get_keeps_integer_and_real_keys_apart() {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::create(dir.path().join("a.shoal"), WorkspaceOptions::default()).unwrap();
    ws.declare(&TableSpec::new("m").key("x", ColumnType::Any).column("v", ColumnType::Text))
        .unwrap();
    let mut tx = ws.transaction().unwrap();
    tx.put("m", &[("x", Value::Integer(1)), ("v", text("int"))]).unwrap();
    tx.put("m", &[("x", Value::real(1.0)), ("v", text("real"))]).unwrap();
    tx.commit().unwrap();
    assert_eq!(ws.get("m", &[Value::Integer(1)]).unwrap().unwrap()[1].1, text("int"));
    assert_eq!(ws.get("m", &[Value::real(1.0)]).unwrap().unwrap()[1].1, text("real"));
}

/// Two devices define one table id offline with different primary keys and both write rows:
/// after syncing, both show the definition conflict and a `RowsNotShown` conflict counting
/// the rows written under the losing definition, alike.
#[tokio::test]
async fn status_counts_rows_written_under_a_losing_definition() {
    use shoal::core::{ManualClock, pull};
    use shoal::tables::ConflictKind;
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_700_000_000_000);
    let opts = || WorkspaceOptions { clock: Arc::new(clock.clone()), ..Default::default() };
    let a = Workspace::create(dir.path().join("a.shoal"), opts()).unwrap();
    let b = Workspace::join(dir.path().join("b.shoal"), a.id(), opts()).unwrap();
    pull(a.replica(), b.replica()).await.unwrap();

    // Offline: `a` keys by one column, `b` (later, so it wins) by two.
    a.declare(&TableSpec::new("t").key("id", ColumnType::Text).column("v", ColumnType::Text))
        .unwrap();
    let mut tx = a.transaction().unwrap();
    for i in 0..3 {
        tx.put("t", &[("id", text(&format!("a{i}"))), ("v", text("from a"))]).unwrap();
    }
    tx.commit().unwrap();
    clock.advance(10);
    b.declare(
        &TableSpec::new("t")
            .key("id", ColumnType::Text)
            .key("n", ColumnType::Integer)
            .column("v", ColumnType::Text),
    )
    .unwrap();
    let mut tx = b.transaction().unwrap();
    tx.put("t", &[("id", text("b")), ("n", Value::Integer(1)), ("v", text("from b"))]).unwrap();
    tx.commit().unwrap();
    // One of a's rows is deleted before the sync: only live rows are counted.
    let mut tx = a.transaction().unwrap();
    tx.delete("t", &[text("a0")]).unwrap();
    tx.commit().unwrap();

    pull(a.replica(), b.replica()).await.unwrap();
    pull(b.replica(), a.replica()).await.unwrap();

    let mut seen = Vec::new();
    for ws in [&a, &b] {
        let status = ws.status().unwrap();
        let kinds: Vec<ConflictKind> = status.conflicts.iter().map(|c| c.kind).collect();
        assert_eq!(
            kinds,
            [ConflictKind::RowsNotShown, ConflictKind::TableDefinition],
            "{:?}",
            status.conflicts
        );
        let hidden = &status.conflicts[0];
        assert!(hidden.message.starts_with("2 live rows of table \"t\""), "{hidden}");
        // The row that fits is shown, the others are not.
        assert_eq!(ws.query("SELECT id, n, v FROM t", &[]).unwrap().rows.len(), 1);
        seen.push(status.conflicts);
    }
    assert_eq!(seen[0], seen[1], "the same conflicts on both devices");

    // A row written after the sync uses the winning key: it is shown, the count stays.
    let mut tx = a.transaction().unwrap();
    tx.put("t", &[("id", text("b")), ("n", Value::Integer(2)), ("v", text("x"))]).unwrap();
    tx.commit().unwrap();
    let messages: Vec<_> = a.status().unwrap().conflicts.iter().map(|c| c.to_string()).collect();
    assert!(messages[0].starts_with("2 live rows"), "{messages:?}");
    assert_eq!(a.query("SELECT id FROM t", &[]).unwrap().rows.len(), 2);
}

mod read_only {
    use shoal::*;

    fn workspace_with_rows(dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("a.shoal");
        let ws = Workspace::create(&path, WorkspaceOptions::default()).unwrap();
        ws.declare(
            &TableSpec::new("todo").key("id", ColumnType::Text).column("title", ColumnType::Text),
        )
        .unwrap();
        let mut tx = ws.transaction().unwrap();
        tx.put(
            "todo",
            &[("id", Value::text("1").unwrap()), ("title", Value::text("one").unwrap())],
        )
        .unwrap();
        tx.commit().unwrap();
        path
    }

    fn reads_work_and_writes_fail(ws: &Workspace, path: &std::path::Path) {
        let rows = ws.query("SELECT title FROM todo", &[]).unwrap().rows;
        assert_eq!(rows, vec![vec![Value::text("one").unwrap()]]);
        assert!(ws.get("todo", &[Value::text("1").unwrap()]).unwrap().is_some());
        assert_eq!(ws.status().unwrap().origins.len(), 1);
        assert!(ws.schema().unwrap().table("todo").is_some());
        let mut tx = ws.transaction().unwrap();
        tx.put("todo", &[("id", Value::text("2").unwrap())]).unwrap();
        let err = tx.commit().unwrap_err().to_string();
        assert!(err.contains("read-only") && err.contains(&path.display().to_string()), "{err}");
        let err = ws.declare(&TableSpec::new("x").key("id", ColumnType::Text)).unwrap_err();
        assert!(err.to_string().contains("read-only"), "{err}");
    }

    /// A read-only open writes nothing and reads everything (works as root too).
    #[tokio::test]
    async fn a_workspace_opened_read_only_reads_and_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = workspace_with_rows(dir.path());
        let before = std::fs::read(&path).unwrap();
        let ws = Workspace::open_read_only(&path, WorkspaceOptions::default()).unwrap();
        reads_work_and_writes_fail(&ws, &path);
        let folder = dir.path().join("shared");
        std::fs::create_dir(&folder).unwrap();
        let err = ws.sync_folder(&folder).await.unwrap_err();
        assert!(err.to_string().contains("read-only"), "{err}");
        drop(ws);
        assert_eq!(std::fs::read(&path).unwrap(), before, "nothing was written to the file");
    }

    /// A file this process cannot write opens read-only by itself (skipped as root, whom
    /// permission bits do not stop).
    #[cfg(unix)]
    #[test]
    fn a_file_without_write_permission_opens_read_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = workspace_with_rows(dir.path());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        if std::fs::OpenOptions::new().write(true).open(&path).is_ok() {
            eprintln!("skipped: this process can write a 0400 file (root)");
            return;
        }
        let ws = Workspace::open(&path, WorkspaceOptions::default()).unwrap();
        reads_work_and_writes_fail(&ws, &path);
    }
}
