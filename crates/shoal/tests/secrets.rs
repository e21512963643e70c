//! Secrets out of reach (issue 9, item 1): no app query can read the device key or Shoal's
//! hidden tables, key material on disk is owner-only, and reserved names are refused
//! locally and shown as conflicts when another device uses them.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use shoal::core::pull;
use shoal::sqlite::{LocalTx, key_path};
use shoal::tables::{ConflictKind, PkColumn, TableId, TableOp};
use shoal::*;

fn text(s: &str) -> Value {
    Value::text(s).unwrap()
}

fn new_ws(dir: &tempfile::TempDir, name: &str) -> Workspace {
    Workspace::create(dir.path().join(name), WorkspaceOptions::default()).unwrap()
}

fn secret(ws: &Workspace) -> [u8; 32] {
    ws.replica().device_key().unwrap().to_secret_bytes()
}

/// Every value of every row, as bytes, joined: the haystack the secret must not be in.
fn bytes_of(r: &QueryResult) -> Vec<u8> {
    let mut out = Vec::new();
    for row in &r.rows {
        for v in row {
            match v {
                Value::Blob(b) => out.extend_from_slice(b),
                Value::Text(t) => out.extend_from_slice(t.as_bytes()),
                other => out.extend_from_slice(format!("{other:?}").as_bytes()),
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Asserts that `sql` is refused, or returns nothing holding the key (raw or in hex).
fn never_shows_key(ws: &Workspace, sql: &str) {
    let key = secret(ws);
    match ws.query(sql, &[]) {
        Err(_) => {}
        Ok(r) => {
            let hay = bytes_of(&r);
            assert!(!contains(&hay, &key), "{sql}: the secret key is in the result");
            let hex_hay = String::from_utf8_lossy(&hay).to_ascii_lowercase();
            assert!(!hex_hay.contains(&hex(&key)), "{sql}: the secret key (hex) is in the result");
        }
    }
}

fn refused(ws: &Workspace, sql: &str) {
    let r = ws.query(sql, &[]);
    assert!(r.is_err(), "{sql} was allowed: {r:?}");
}

#[test]
fn the_secret_key_is_not_in_the_workspace_file() {
    let dir = tempfile::tempdir().unwrap();
    let ws = new_ws(&dir, "a.shoal");
    let key = secret(&ws);
    drop(ws);
    for f in ["a.shoal", "a.shoal-wal"] {
        if let Ok(bytes) = std::fs::read(dir.path().join(f)) {
            assert!(!contains(&bytes, &key), "the secret key is in {f}");
        }
    }
    let key_file = std::fs::read(key_path(&dir.path().join("a.shoal"))).unwrap();
    assert!(contains(&key_file, &key), "the key file holds the key");
}

#[test]
fn hidden_tables_are_refused_to_app_sql() {
    let dir = tempfile::tempdir().unwrap();
    let ws = new_ws(&dir, "a.shoal");
    ws.declare(
        &TableSpec::new("todo").key("id", ColumnType::Text).column("title", ColumnType::Text),
    )
    .unwrap();
    let mut tx = ws.transaction().unwrap();
    tx.put("todo", &[("id", text("t1")), ("title", text("milk"))]).unwrap();
    tx.commit().unwrap();
    // Normal app SQL over the views still works.
    let r = ws.query("SELECT title FROM todo WHERE id = ?1", &[text("t1")]).unwrap();
    assert_eq!(r.rows, vec![vec![text("milk")]]);
    assert_eq!(ws.query("SELECT * FROM todo", &[]).unwrap().rows.len(), 1);

    for sql in [
        "SELECT hex(value) FROM shoal_meta",
        "SELECT * FROM shoal_meta",
        "select * from SHOAL_META",
        "SELECT * FROM main.shoal_meta",
        "SELECT * FROM shoal_oplog",
        "SELECT * FROM shoal_origins",
        "SELECT * FROM shoal_schema_ops",
        "SELECT * FROM shoal_adds",
        "SELECT * FROM sqlite_master",
        "SELECT * FROM sqlite_schema",
        "SELECT sql FROM sqlite_temp_master",
        "SELECT * FROM dbstat",
        // A subquery, a CTE or a join named after a view does not open hidden tables.
        "SELECT * FROM (SELECT value FROM shoal_meta) AS todo",
        "WITH todo AS (SELECT value FROM shoal_meta) SELECT * FROM todo",
        "WITH todo AS (SELECT * FROM shoal_oplog) SELECT * FROM todo",
        "SELECT * FROM todo WHERE id IN (SELECT value FROM shoal_meta)",
        "SELECT (SELECT hex(value) FROM shoal_meta) FROM todo",
        "SELECT * FROM todo JOIN shoal_meta",
        "WITH RECURSIVE r(n, v) AS (SELECT 0, (SELECT value FROM shoal_meta LIMIT 1) \
         UNION ALL SELECT n + 1, v FROM r WHERE n < 3) SELECT * FROM r",
        "ATTACH DATABASE 'other.db' AS o",
        "ATTACH DATABASE ':memory:' AS o",
        "PRAGMA user_version = 7",
        "PRAGMA query_only = 0",
        "PRAGMA writable_schema = 1",
        "PRAGMA table_info(shoal_meta)",
        "SELECT load_extension('x')",
        "BEGIN",
        "SAVEPOINT s",
        "VACUUM INTO 'copy.db'",
    ] {
        refused(&ws, sql);
        never_shows_key(&ws, sql);
    }
    // A CTE that takes a view's name is reported to the authorizer exactly like the view;
    // naming the hidden row table behind it, however quoted, is refused before that.
    let conn = rusqlite::Connection::open(dir.path().join("a.shoal")).unwrap();
    let hidden: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'shoal_t%'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(!hidden.is_empty());
    for table in &hidden {
        let upper = table.to_ascii_uppercase();
        for sql in [
            format!("WITH todo AS (SELECT * FROM {table}) SELECT * FROM todo"),
            format!("WITH todo AS (SELECT * FROM \"{upper}\") SELECT * FROM todo"),
            format!("WITH todo AS (SELECT * FROM [{table}]) SELECT * FROM todo"),
            format!("WITH todo AS (SELECT * FROM main.`{table}`) SELECT * FROM todo"),
            format!(
                "WITH todo(a) AS MATERIALIZED (SELECT 1 FROM /* c */ {table}) SELECT * FROM todo"
            ),
        ] {
            let err = ws.query(&sql, &[]).unwrap_err();
            assert!(matches!(err, Error::HiddenName { .. }), "{sql}: {err}");
        }
    }
    // A value that merely contains the prefix (a string, a comment) is fine.
    let r = ws.query("SELECT count(*) FROM todo WHERE title <> 'shoal_x' -- shoal_meta", &[]);
    assert_eq!(r.unwrap().rows, vec![vec![Value::Integer(1)]]);
    // Informational pragmas over the views are fine.
    assert!(ws.query("PRAGMA table_info(todo)", &[]).is_ok());
    // The views still work after all of that (no transaction left open, nothing broken).
    assert_eq!(ws.query("SELECT * FROM todo", &[]).unwrap().rows.len(), 1);
}

#[test]
fn reserved_names_are_refused_locally() {
    let dir = tempfile::tempdir().unwrap();
    let ws = new_ws(&dir, "a.shoal");
    for name in ["shoal_meta", "SHOAL_x", "sqlite_master", "SQLite_stat1"] {
        let err = ws.declare(&TableSpec::new(name).key("id", ColumnType::Text)).unwrap_err();
        assert!(err.to_string().contains("reserved"), "{name}: {err}");
        let err = ws.declare(&TableSpec::new("t").key(name, ColumnType::Text)).unwrap_err();
        assert!(err.to_string().contains("reserved"), "{name}: {err}");
    }
    ws.declare(&TableSpec::new("t").key("id", ColumnType::Text)).unwrap();
    for name in ["shoal_meta", "sqlite_x"] {
        assert!(ws.add_column("t", name, ColumnType::Text, MergeKind::Lww).is_err());
        assert!(ws.rename_table("t", name).is_err());
        assert!(ws.rename_column("t", "id", name).is_err());
    }
    assert!(ws.schema().unwrap().table("t").is_some());
}

/// Another device writes a table named `shoal_meta` (its own Shoal would refuse; a
/// modified one need not): the victim shows a conflict, no view, and `get` cannot reach
/// the hidden table.
#[tokio::test]
async fn a_reserved_name_from_another_device_is_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let victim = new_ws(&dir, "victim.shoal");
    let attacker =
        Workspace::join(dir.path().join("attacker.shoal"), victim.id(), Default::default())
            .unwrap();
    pull(victim.replica(), attacker.replica()).await.unwrap();

    let mut ops = Vec::new();
    for name in ["shoal_meta", "sqlite_master", "Shoal_Origins"] {
        let table = TableId::from_name(name);
        ops.push(TableOp::CreateTable {
            table,
            name: name.to_owned(),
            primary_key: vec![PkColumn::new(table, "key", ColumnType::Text)],
        });
    }
    // And a normal table with a reserved column name and a reserved key column name.
    let t = TableId::from_name("notes");
    ops.push(TableOp::CreateTable {
        table: t,
        name: "notes".into(),
        primary_key: vec![PkColumn::new(t, "shoal_key", ColumnType::Text)],
    });
    ops.push(TableOp::AddColumn {
        table: t,
        column: shoal::tables::ColumnId::from_name(t, "sqlite_value"),
        name: "sqlite_value".into(),
        ty: ColumnType::Text,
        merge: MergeKind::Lww,
    });
    let ops = ops.iter().map(|o| o.to_op().unwrap()).collect();
    attacker.replica().append_local(vec![LocalTx { ops, author: None }]).unwrap();
    pull(attacker.replica(), victim.replica()).await.unwrap();

    for ws in [&victim, &attacker] {
        let status = ws.status().unwrap();
        let reserved: Vec<_> =
            status.conflicts.iter().filter(|c| c.kind == ConflictKind::ReservedName).collect();
        assert_eq!(reserved.len(), 5, "{:#?}", status.conflicts);
        let schema = ws.schema().unwrap();
        let names: Vec<&str> = schema.tables.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["notes"], "only the table with an allowed name is shown");
        let cols: Vec<&str> = schema.tables[0].columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            cols,
            [format!("column_{}", shoal::tables::ColumnId::from_name(t, "shoal_key"))]
        );
        assert!(ws.get("shoal_meta", &[text("device_key")]).is_err());
        assert!(ws.get("shoal_meta", &[text("device_public")]).is_err());
        assert!(ws.watch("shoal_meta").is_err());
        never_shows_key(ws, "SELECT * FROM shoal_meta");
        refused(ws, "SELECT * FROM shoal_meta");
        // The views in the file have none of those names.
        assert!(ws.query("SELECT * FROM notes", &[]).is_ok());
    }
}

#[cfg(unix)]
#[test]
fn key_material_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let ws = new_ws(&dir, "a.shoal");
    ws.declare(&TableSpec::new("t").key("id", ColumnType::Text)).unwrap();
    let path = dir.path().join("a.shoal");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&key_path(&path)), 0o600, "key file");
    assert_eq!(mode(&path), 0o600, "workspace file");
    for suffix in ["-wal", "-shm"] {
        let p = dir.path().join(format!("a.shoal{suffix}"));
        assert!(p.exists(), "{suffix} exists while the workspace is open");
        assert_eq!(mode(&p), 0o600, "{suffix}");
    }
    drop(ws);
    // A key file made readable by others is tightened on open.
    std::fs::set_permissions(key_path(&path), std::fs::Permissions::from_mode(0o644)).unwrap();
    let _ws = Workspace::open(&path, WorkspaceOptions::default()).unwrap();
    assert_eq!(mode(&key_path(&path)), 0o600);
}

#[test]
fn a_missing_or_wrong_key_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let a = new_ws(&dir, "a.shoal");
    let b = new_ws(&dir, "b.shoal");
    drop((a, b));
    let a_path = dir.path().join("a.shoal");
    let a_key = key_path(&a_path);
    std::fs::rename(&a_key, dir.path().join("saved.key")).unwrap();
    let err = Workspace::open(&a_path, WorkspaceOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("a.shoal.key") && msg.contains("missing"), "{msg}");
    // Another workspace's key file.
    std::fs::copy(key_path(&dir.path().join("b.shoal")), &a_key).unwrap();
    let msg = Workspace::open(&a_path, WorkspaceOptions::default()).unwrap_err().to_string();
    assert!(msg.contains("a.shoal.key") && msg.contains("not this workspace's"), "{msg}");
    // Truncated.
    std::fs::write(&a_key, b"SHOALKEY").unwrap();
    let msg = Workspace::open(&a_path, WorkspaceOptions::default()).unwrap_err().to_string();
    assert!(msg.contains("a.shoal.key"), "{msg}");
    // Its own key opens it again.
    std::fs::remove_file(&a_key).unwrap();
    std::fs::rename(dir.path().join("saved.key"), &a_key).unwrap();
    Workspace::open(&a_path, WorkspaceOptions::default()).unwrap();
    // Creating over an existing key file is refused and leaves it alone.
    let before = std::fs::read(&a_key).unwrap();
    std::fs::remove_file(&a_path).unwrap();
    let err = Workspace::create(&a_path, WorkspaceOptions::default()).unwrap_err();
    assert!(err.to_string().contains("a.shoal.key"), "{err}");
    assert_eq!(std::fs::read(&a_key).unwrap(), before);
}
