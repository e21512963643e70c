//! Through the CLI: a copied device and a restored backup never lose writes silently
//! (issue: "its first `sync` prints 'published 0 entries' and exits 0").
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

mod cli_util;

use cli_util::Sandbox;

fn copy(s: &Sandbox, from: &str, to: &str) {
    std::fs::copy(s.path(from), s.path(to)).unwrap();
    for side in ["-wal", "-shm", ".key"] {
        let (f, t) = (s.path(&format!("{from}{side}")), s.path(&format!("{to}{side}")));
        let _ = std::fs::remove_file(&t);
        if f.exists() {
            std::fs::copy(&f, &t).unwrap();
        }
    }
}

#[test]
fn a_copied_device_is_refused_loudly_and_status_exits_2() {
    let s = Sandbox::new();
    std::fs::create_dir(s.path("shared")).unwrap();
    s.workspace_with_todo("a.shoal");
    s.ok(&["put", "-w", "a.shoal", "todo", "id=1", "title=before"]);
    s.ok(&["sync", "-w", "a.shoal", "--folder", "shared"]);
    copy(&s, "a.shoal", "copy.shoal");
    s.ok(&["put", "-w", "a.shoal", "todo", "id=2", "title=on the original"]);
    s.ok(&["put", "-w", "copy.shoal", "todo", "id=3", "title=on the copy"]);
    s.ok(&["sync", "-w", "a.shoal", "--folder", "shared"]);
    let (_, err) = s.exits(2, &["sync", "-w", "copy.shoal", "--folder", "shared"]);
    assert!(err.contains("copied from another device"), "{err}");
    assert!(err.contains(".seg"), "names the file: {err}");
    let (_, err) = s.exits(2, &["status", "-w", "copy.shoal"]);
    assert!(err.contains("forked"), "{err}");
    let (_, err) = s.exits(2, &["put", "-w", "copy.shoal", "todo", "id=4", "title=x"]);
    assert!(err.contains("copied from another device"), "{err}");
    // Every other device learns of it, with the evidence, instead of "ok".
    let id = s.json(&["status", "-w", "a.shoal"])[0].1["workspace"].as_str().unwrap().to_owned();
    s.json(&["init", "-w", "b.shoal", "--join", &id]);
    let (_, err) = s.exits(2, &["sync", "-w", "b.shoal", "--folder", "shared"]);
    assert!(err.contains("is forked") && err.contains(".evidence"), "{err}");

    // The copy recovers: it writes again as a new device, its write on the forked branch
    // is re-issued, and every device has every write once.
    let out = s.ok(&["recover-fork", "-w", "copy.shoal", "--folder", "shared"]);
    assert!(out.contains("re-issued 1 write"), "{out}");
    s.ok(&["put", "-w", "copy.shoal", "todo", "id=4", "title=after recovery"]);
    s.ok(&["sync", "-w", "copy.shoal", "--folder", "shared"]);
    s.ok(&["put", "-w", "a.shoal", "todo", "id=5", "title=the original goes on"]);
    s.ok(&["sync", "-w", "a.shoal", "--folder", "shared"]);
    s.ok(&["sync", "-w", "copy.shoal", "--folder", "shared"]);
    s.ok(&["sync", "-w", "b.shoal", "--folder", "shared"]);
    for ws in ["a.shoal", "copy.shoal", "b.shoal"] {
        let rows = s.ok(&["sql", "-w", ws, "SELECT id FROM todo ORDER BY id"]);
        assert_eq!(rows, "id\n1\n2\n3\n4\n5\n", "{ws}");
    }
    // Recovering a device that is not forked is refused.
    let (_, err) = s.exits(2, &["recover-fork", "-w", "a.shoal"]);
    assert!(err.contains("not forked"), "{err}");
}

#[test]
fn a_restored_backup_takes_its_own_writes_back() {
    let s = Sandbox::new();
    std::fs::create_dir(s.path("shared")).unwrap();
    s.workspace_with_todo("a.shoal");
    s.ok(&["put", "-w", "a.shoal", "todo", "id=1", "title=one"]);
    s.ok(&["sync", "-w", "a.shoal", "--folder", "shared"]);
    copy(&s, "a.shoal", "backup.shoal");
    s.ok(&["put", "-w", "a.shoal", "todo", "id=2", "title=two"]);
    s.ok(&["sync", "-w", "a.shoal", "--folder", "shared"]);
    copy(&s, "backup.shoal", "a.shoal");
    s.ok(&["sync", "-w", "a.shoal", "--folder", "shared"]);
    let rows = s.ok(&["sql", "-w", "a.shoal", "SELECT id FROM todo ORDER BY id"]);
    assert!(rows.contains('1') && rows.contains('2'), "{rows}");
    s.ok(&["put", "-w", "a.shoal", "todo", "id=3", "title=three"]);
    s.ok(&["sync", "-w", "a.shoal", "--folder", "shared"]);
    s.ok(&["status", "-w", "a.shoal", "--folder", "shared"]);
}
