//! Through the CLI, the reported scenario (issue 10, item 3): one `shoal put` while the
//! machine's clock read 2100 (`SHOAL_TEST_CLOCK_OFFSET`, test-only) warns on every later
//! put, sync and status; the other device's status names the origin and "clock ahead";
//! `shoal recover-clock --folder` gets the device writing again and its stuck writes seen,
//! and `shoal verify` then passes on both. Also: `verify` reports a defaced cell with
//! table, row and column, exit code 2.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

mod cli_util;

use cli_util::Sandbox;

/// Milliseconds from now to about 2100.
fn to_2100() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    (4_102_444_800_000i64 - now.as_millis() as i64).to_string()
}

fn ids(s: &Sandbox, ws: &str) -> String {
    s.ok(&["sql", "-w", ws, "SELECT id, votes FROM todo ORDER BY id"])
}

#[test]
fn a_put_in_2100_warns_stalls_others_and_recover_clock_heals_everyone() {
    let s = Sandbox::new();
    std::fs::create_dir(s.path("shared")).unwrap();
    s.workspace_with_todo("a.shoal");
    s.ok(&["put", "-w", "a.shoal", "todo", "id=r1", "votes+=1"]);
    s.ok(&["sync", "-w", "a.shoal", "--folder", "shared"]);
    s.join("b.shoal", "a.shoal", "shared");

    // One put with the machine's clock in 2100; it already warns.
    let out = s
        .cmd(&["put", "-w", "a.shoal", "todo", "id=r2", "votes+=1"])
        .env("SHOAL_TEST_CLOCK_OFFSET", to_2100())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    // Clock fixed: every later put, sync and status still warns.
    for (code, args) in [
        (0, vec!["put", "-w", "a.shoal", "todo", "id=r3", "votes+=1"]),
        (0, vec!["sync", "-w", "a.shoal", "--folder", "shared"]),
        (2, vec!["status", "-w", "a.shoal"]),
    ] {
        let (_, err) = s.exits(code, &args);
        assert!(err.contains("clock is ahead by 7"), "{args:?}: {err}");
        assert!(err.contains("recover-clock"), "{err}");
    }
    // b stalls on a, and says which device and why.
    let (out, _) = s.exits(2, &["--json", "status", "-w", "a.shoal"]);
    let a_dev = cli_util::envelopes(&out)[0].1["device"].as_str().unwrap().to_owned();
    let (_, err) = s.exits(2, &["sync", "-w", "b.shoal", "--folder", "shared"]);
    assert!(err.contains(&a_dev) && err.contains("clock ahead by 7"), "{err}");
    let (out, _) = s.exits(2, &["status", "-w", "b.shoal"]);
    assert!(out.contains("clock ahead by"), "{out}");
    s.ok(&["put", "-w", "b.shoal", "todo", "id=r4", "votes+=1"]);

    // The owner recovers once the clock is right.
    let out = s.ok(&["recover-clock", "-w", "a.shoal", "--folder", "shared"]);
    assert!(out.contains("re-issued 2 write(s)"), "{out}");
    s.ok(&["put", "-w", "a.shoal", "todo", "id=r5", "votes+=1"]); // no warning any more
    s.ok(&["sync", "-w", "a.shoal", "--folder", "shared"]);
    s.ok(&["sync", "-w", "b.shoal", "--folder", "shared"]);
    s.ok(&["sync", "-w", "a.shoal", "--folder", "shared"]);
    let expected = ids(&s, "a.shoal");
    for r in ["r1", "r2", "r3", "r4", "r5"] {
        assert!(expected.contains(r), "{expected}");
    }
    assert!(!expected.contains(" 2"), "nothing applied twice: {expected}");
    assert_eq!(ids(&s, "b.shoal"), expected);
    let out = s.ok(&["status", "-w", "b.shoal"]);
    assert!(out.contains("superseded from entry"), "{out}");
    // A second recovery is refused: nothing to recover.
    let (_, err) = s.exits(2, &["recover-clock", "-w", "a.shoal"]);
    assert!(err.contains("nothing to recover"), "{err}");
    for ws in ["a.shoal", "b.shoal"] {
        let out = s.ok(&["verify", "-w", ws, "--folder", "shared"]);
        assert!(out.contains("equal a rebuild"), "{out}");
    }
}

#[test]
fn verify_reports_a_defaced_cell_with_table_row_and_column() {
    let s = Sandbox::new();
    s.workspace_with_todo("a.shoal");
    s.ok(&["put", "-w", "a.shoal", "todo", "id=t1", "title=milk"]);
    s.ok(&["verify", "-w", "a.shoal"]);
    let tables: Vec<String> = {
        let conn = rusqlite::Connection::open(s.path("a.shoal")).unwrap();
        let mut stmt = conn
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'shoal_t_%'",
            )
            .unwrap();
        stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    };
    let conn = rusqlite::Connection::open(s.path("a.shoal")).unwrap();
    let title: String = conn
        .query_row(
            "SELECT name FROM pragma_table_info(?1) WHERE name LIKE 'l\\_%' ESCAPE '\\'
             AND name IN (SELECT name FROM pragma_table_info(?1)) ORDER BY cid LIMIT 1",
            [&tables[0]],
            |r| r.get(0),
        )
        .unwrap();
    let changed = conn
        .execute(&format!("UPDATE {} SET {title} = 'defaced' WHERE k0 = 't1'", tables[0]), [])
        .unwrap();
    assert_eq!(changed, 1);
    drop(conn);
    let (_, err) = s.exits(2, &["verify", "-w", "a.shoal"]);
    assert!(err.contains("table todo, row Text(\"t1\"), column title"), "{err}");
    assert!(err.contains("defaced"), "{err}");
}
