//! The `shoal` binary, run for real in a fresh directory per test: every error a person can
//! meet (message and exit code), the JSON Lines envelope of every read command, values by
//! type, table definitions, history, watch across processes, broken pipes and the demo.
//!
//! Other CLI tests: `cli_readme.rs` runs every command of the README; `cli_processes.rs`
//! runs two continuous syncs side by side.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

mod cli_util;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::time::{Duration, Instant};

use cli_util::{Sandbox, envelopes, of_type};

// ---- Errors a person understands (issue #5, item 4): message and exit code. ----

#[test]
fn error_wrong_path() {
    let s = Sandbox::new();
    let (out, err) = s.exits(2, &["get", "-w", "nowhere/laptop.shoal", "todo", "t1"]);
    assert!(out.is_empty());
    assert_eq!(
        err,
        "shoal: nowhere/laptop.shoal: no such workspace file (create one with `shoal init \
         --workspace nowhere/laptop.shoal`, or check the path)\n"
    );
    // Creating one where the directory does not exist.
    let (_, err) = s.exits(2, &["init", "-w", "nowhere/laptop.shoal"]);
    assert_eq!(
        err,
        "shoal: nowhere/laptop.shoal: cannot create the workspace file: the directory nowhere \
         does not exist\n"
    );
    // No path at all.
    let (_, err) = s.exits(2, &["sql", "SELECT 1"]);
    assert_eq!(err, "shoal: no workspace given: pass --workspace PATH or set SHOAL_WORKSPACE\n");
}

#[test]
fn error_a_directory_is_not_a_workspace() {
    let s = Sandbox::new();
    std::fs::create_dir(s.path("notes")).unwrap();
    let (_, err) = s.exits(2, &["status", "-w", "notes"]);
    assert!(err.starts_with("shoal: notes: is a directory, not a workspace file"), "{err}");
    // A file that is not a workspace either, named, and left untouched.
    std::fs::write(s.path("notes.txt"), "shopping list\n").unwrap();
    let (_, err) = s.exits(2, &["status", "-w", "notes.txt"]);
    assert_eq!(
        err,
        "shoal: notes.txt: not a Shoal workspace (the file is not an SQLite database)\n"
    );
    assert_eq!(std::fs::read_to_string(s.path("notes.txt")).unwrap(), "shopping list\n");
    // The variable works like the flag.
    let out = s.cmd(&["status"]).env("SHOAL_WORKSPACE", "notes").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(cli_util::text(&out.stderr).starts_with("shoal: notes: is a directory"));
}

#[test]
fn error_unknown_table() {
    let s = Sandbox::new();
    s.workspace_with_todo("a.shoal");
    let (_, err) = s.exits(2, &["put", "-w", "a.shoal", "todos", "id=t1"]);
    assert_eq!(err, "shoal: no table named \"todos\" (see `shoal table list`)\n");
    let (_, err) = s.exits(2, &["get", "-w", "a.shoal", "todos", "t1"]);
    assert_eq!(err, "shoal: no table named \"todos\" (see `shoal table list`)\n");
    let (_, err) = s.exits(2, &["sql", "-w", "a.shoal", "SELECT * FROM todos"]);
    assert!(
        err.starts_with("shoal: SQL error in \"SELECT * FROM todos\": no such table: todos"),
        "{err}"
    );
}

#[test]
fn error_unknown_column() {
    let s = Sandbox::new();
    s.workspace_with_todo("a.shoal");
    let (_, err) = s.exits(2, &["put", "-w", "a.shoal", "todo", "id=t1", "colour=red"]);
    assert_eq!(
        err,
        "shoal: table \"todo\" has no column named \"colour\" (its columns: id, title, done, \
         votes)\n"
    );
    let (_, err) =
        s.exits(2, &["table", "alter", "-w", "a.shoal", "todo", "--drop-column", "colour"]);
    assert_eq!(err, "shoal: table \"todo\" has no column named \"colour\"\n");
    // Nothing was written by the failed commands.
    assert_eq!(s.ok(&["sql", "-w", "a.shoal", "SELECT count(*) AS n FROM todo"]), "n\n0\n");
}

#[test]
fn error_value_of_the_wrong_type() {
    let s = Sandbox::new();
    s.workspace_with_todo("a.shoal");
    let (_, err) = s.exits(2, &["put", "-w", "a.shoal", "todo", "id=t1", "done=yes"]);
    assert_eq!(err, "shoal: column todo.done is INTEGER: \"yes\" is not an integer\n");
    let (_, err) = s.exits(2, &["put", "-w", "a.shoal", "todo", "id=t1", "votes+=lots"]);
    assert_eq!(err, "shoal: counter todo.votes: \"lots\" is not an integer\n");
    let (_, err) =
        s.exits(2, &["put", "-w", "a.shoal", "todo", "--row", r#"{"id": "t1", "title": 5}"#]);
    assert_eq!(err, "shoal: column todo.title is TEXT; got INTEGER\n");
    s.ok(&["table", "create", "-w", "a.shoal", "n", "--key", "k:integer"]);
    let (_, err) = s.exits(2, &["get", "-w", "a.shoal", "n", "one"]);
    assert_eq!(err, "shoal: column n.k is INTEGER: \"one\" is not an integer\n");
    let (_, err) = s.exits(2, &["table", "create", "-w", "a.shoal", "m", "--key", "k:number"]);
    assert_eq!(
        err,
        "shoal: --key \"k:number\": unknown column type \"number\": use text, integer, real, blob \
         or any\n"
    );
}

#[test]
fn error_sync_folder_does_not_exist() {
    let s = Sandbox::new();
    s.workspace_with_todo("a.shoal");
    let (_, err) = s.exits(2, &["sync", "-w", "a.shoal", "--folder", "Dropbox/shoal"]);
    assert_eq!(
        err,
        "shoal: Dropbox/shoal: the sync folder does not exist (Shoal never creates it: create \
         it, or mount the share, first)\n"
    );
    assert!(!s.path("Dropbox").exists(), "the folder is never created");
    let (_, err) = s.exits(2, &["init", "-w", "b.shoal", "--folder", "Dropbox/shoal"]);
    assert!(err.starts_with("shoal: Dropbox/shoal: the sync folder does not exist"), "{err}");
    assert!(!s.path("b.shoal").exists(), "nothing is created when the folder is wrong");
}

#[test]
fn error_sync_folder_not_writable() {
    let s = Sandbox::new();
    s.workspace_with_todo("a.shoal");
    let folder = s.path("readonly");
    std::fs::create_dir(&folder).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    // Root writes anywhere; then use a directory that even root cannot write to.
    let folder = if std::fs::write(folder.join("probe"), b"").is_ok() {
        let sys = std::path::PathBuf::from("/sys/kernel");
        if !sys.is_dir() || std::fs::write(sys.join("probe"), b"").is_ok() {
            eprintln!("skipped: no directory here is read-only for this user");
            return;
        }
        sys
    } else {
        folder
    };
    let folder = folder.to_str().unwrap();
    let (_, err) = s.exits(2, &["sync", "-w", "a.shoal", "--folder", folder]);
    assert!(
        err.starts_with(&format!("shoal: {folder}: the sync folder is not writable: ")),
        "{err}"
    );
    assert!(err.contains("ermission denied"), "{err}");
}

/// Two devices sync into a folder; one of A's segment files is damaged; a third device
/// syncs: the file is named, B's rows still arrive, and the exit code says something failed.
#[test]
fn error_corrupted_segment_met_during_sync() {
    let s = Sandbox::new();
    std::fs::create_dir(s.path("shared")).unwrap();
    // An open workspace: a new device applies B's entries without A's genesis, which is
    // in the damaged file (a members-only one holds them until the genesis is readable).
    let id =
        s.json(&["init", "-w", "a.shoal", "--open"])[0].1["workspace"].as_str().unwrap().to_owned();
    s.ok(&[
        "table",
        "create",
        "-w",
        "a.shoal",
        "todo",
        "--key",
        "id:text",
        "--column",
        "title:text",
    ]);
    s.ok(&["put", "-w", "a.shoal", "todo", "id=a1", "title=from a"]);
    s.ok(&["sync", "-w", "a.shoal", "--folder", "shared"]);
    let b = s.json(&["init", "-w", "b.shoal", "--join", &id]);
    assert_eq!(b[0].1["created"], false);
    // B declares the same table offline (same ids), so its rows show without A's entries.
    s.ok(&[
        "table",
        "create",
        "-w",
        "b.shoal",
        "todo",
        "--key",
        "id:text",
        "--column",
        "title:text",
    ]);
    s.ok(&["put", "-w", "b.shoal", "todo", "id=b1", "title=from b"]);
    s.ok(&["sync", "-w", "b.shoal", "--folder", "shared"]);

    let a_device = s.json(&["status", "-w", "a.shoal"])[0].1["device"].as_str().unwrap().to_owned();
    let a_dir = s.path("shared").join(&id).join(&a_device);
    let segments: Vec<_> = std::fs::read_dir(&a_dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(segments.len(), 1, "{segments:?}");
    let mut bytes = std::fs::read(&segments[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&segments[0], bytes).unwrap();
    let file_name = segments[0].file_name().unwrap().to_str().unwrap();

    s.json(&["init", "-w", "c.shoal", "--join", &id]);
    let (out, err) = s.exits(2, &["sync", "-w", "c.shoal", "--folder", "shared"]);
    let named = format!("{id}/{a_device}/{file_name}");
    assert!(err.contains("shoal: bad file ") && err.contains(&named), "{err}");
    assert_eq!(err.matches(&named).count(), 1, "the bad file is named once: {err}");
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(
        out.contains("pulled 3"),
        "B's three entries (its join request, table, row) arrived: {out}"
    );
    assert_eq!(
        s.ok(&["sql", "-w", "c.shoal", "SELECT id, title FROM todo"]),
        "id  title\nb1  from b\n"
    );
    // Status and verify report it too, naming the file, with exit code 2.
    let (_, err) = s.exits(2, &["status", "-w", "c.shoal", "--folder", "shared"]);
    assert!(err.contains(&named), "{err}");
    let (_, err) = s.exits(2, &["verify", "-w", "c.shoal", "--folder", "shared"]);
    assert!(err.contains(&named), "{err}");
    // The sound copies verify.
    s.ok(&["verify", "-w", "b.shoal"]);
}

#[test]
fn get_of_a_missing_row_exits_1() {
    let s = Sandbox::new();
    s.workspace_with_todo("a.shoal");
    let (out, err) = s.exits(1, &["get", "-w", "a.shoal", "todo", "t1"]);
    assert!(out.is_empty());
    assert_eq!(err, "shoal: table todo has no row t1\n");
    let (out, _) = s.exits(1, &["get", "--json", "-w", "a.shoal", "todo", "t1"]);
    assert!(out.is_empty());
}

#[test]
fn usage_errors_exit_2_with_the_program_name() {
    let s = Sandbox::new();
    let (_, err) = s.exits(2, &["frobnicate"]);
    assert!(err.starts_with("shoal: unrecognized subcommand 'frobnicate'"), "{err}");
    let (_, err) = s.exits(2, &["put", "-w", "a.shoal"]);
    assert!(err.starts_with("shoal: "), "{err}");
    let help = s.ok(&["--help"]);
    assert!(help.contains("Examples:") && help.contains("shoal demo"), "{help}");
    for cmd in [
        "init", "put", "get", "delete", "sql", "watch", "sync", "status", "log", "verify", "demo",
        "invite", "join", "members", "admit", "remove", "leave", "serve",
    ] {
        let help = s.ok(&[cmd, "--help"]);
        assert!(help.contains("Examples:"), "`shoal {cmd} --help` shows examples");
    }
    for cmd in ["create", "alter", "list"] {
        let help = s.ok(&["table", cmd, "--help"]);
        assert!(help.contains("Examples:"), "`shoal table {cmd} --help` shows examples");
    }
    // The relay's arguments are checked before anything is opened or listened on.
    let (_, err) = s.exits(2, &["serve", "--listen", "127.0.0.1:0", "--db", "mysql://x"]);
    assert!(err.contains("--db mysql://x: give sqlite:PATH or postgres://"), "serve: {err}");
    let (_, err) = s.exits(2, &["sync", "-w", "a.shoal", "--server", "http://x"]);
    assert!(err.contains("a relay URL starts with ws:// or wss://"), "{err}");
}

// ---- Output ----

/// Every read command's --json output is JSON Lines with the one envelope.
#[test]
fn json_output_of_every_read_command_is_enveloped() {
    let s = Sandbox::new();
    std::fs::create_dir(s.path("shared")).unwrap();
    let init = s.json(&["init", "-w", "a.shoal"]);
    assert_eq!(init.len(), 1);
    assert_eq!(init[0].0, "workspace");
    let created = s.json(&[
        "table",
        "create",
        "-w",
        "a.shoal",
        "todo",
        "--key",
        "id:text",
        "--column",
        "title:text",
        "--counter",
        "votes",
    ]);
    assert_eq!(created[0].0, "table");
    let put = s.json(&["put", "-w", "a.shoal", "todo", "id=t1", "title=milk", "votes+=2"]);
    assert_eq!(put[0].0, "commit");
    assert!(put[0].1["hlc"]["millis"].is_u64() && put[0].1["hlc"]["raw"].is_string());
    let sync = s.json(&["sync", "-w", "a.shoal", "--folder", "shared"]);
    assert_eq!(of_type(&sync, "sync")[0]["published"], 3);

    let mut types = BTreeSet::new();
    let mut read = |args: &[&str]| {
        let e = s.json(args);
        assert!(!e.is_empty(), "{args:?} printed nothing");
        types.extend(e.iter().map(|(k, _)| k.clone()));
        e
    };
    let list = read(&["table", "list", "-w", "a.shoal"]);
    let cols = list[0].1["columns"].as_array().unwrap();
    assert_eq!(cols[2]["merge"], "counter");
    let get = read(&["get", "-w", "a.shoal", "todo", "t1"]);
    assert_eq!(get[0].1["values"]["votes"], 2);
    let sql = read(&["sql", "-w", "a.shoal", "SELECT id, votes * 1.5 AS v FROM todo"]);
    assert_eq!(sql[0].1["values"]["v"], 3.0);
    let status = read(&["status", "-w", "a.shoal", "--folder", "shared"]);
    assert_eq!(of_type(&status, "origin")[0]["in_folder"], 3);
    assert!(of_type(&status, "last_sync")[0]["time"].is_string());
    let log = read(&["log", "-w", "a.shoal"]);
    assert_eq!(of_type(&log, "entry").len(), 3);
    read(&["verify", "-w", "a.shoal", "--folder", "shared"]);
    let expected: BTreeSet<String> =
        ["entry", "last_sync", "origin", "row", "table", "verified", "workspace"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    assert_eq!(types, expected);
    // Human output goes to stdout too, never mixed into JSON.
    assert!(s.ok(&["table", "list", "-w", "a.shoal"]).starts_with("table todo"));
}

#[test]
fn values_are_read_by_the_column_type() {
    let s = Sandbox::new();
    s.json(&["init", "-w", "a.shoal"]);
    s.ok(&[
        "table",
        "create",
        "-w",
        "a.shoal",
        "things",
        "--key",
        "id:integer",
        "--column",
        "name:text",
        "--column",
        "price:real",
        "--column",
        "photo:blob",
        "--column",
        "extra:any",
        "--counter",
        "stock",
        "--max",
        "best:integer",
    ]);
    s.ok(&[
        "put",
        "-w",
        "a.shoal",
        "things",
        "id=-7",
        "name=a=b c",
        "price=3",
        "photo=x'cafe'",
        "extra=4.5",
        "stock+=10",
        "best=3",
    ]);
    s.ok(&["put", "-w", "a.shoal", "things", "id=-7", "stock-=3", "best=2"]);
    s.ok(&["put", "-w", "a.shoal", "things", "--row", r#"{"id": 8, "name": null, "extra": "x"}"#]);
    let rows = s.json(&["sql", "-w", "a.shoal", "SELECT * FROM things ORDER BY id"]);
    let a = &rows[0].1["values"];
    assert_eq!(a["id"], -7);
    assert_eq!(a["name"], "a=b c");
    assert_eq!(a["price"], 3.0);
    assert_eq!(a["photo"]["hex"], "cafe");
    assert_eq!(a["extra"], 4.5);
    assert_eq!(a["stock"], 7);
    assert_eq!(a["best"], 3, "a max column keeps the greatest");
    let b = &rows[1].1["values"];
    assert_eq!((b["name"].is_null(), b["extra"].as_str()), (true, Some("x")));
    // People see types too: reals with a fraction, blobs in hex, NULL.
    let human = s.ok(&["get", "-w", "a.shoal", "things", "-7"]);
    assert_eq!(
        human,
        "id     -7\nname   a=b c\nprice  3.0\nphoto  x'cafe'\nextra  4.5\nstock  7\nbest   3\n"
    );
    assert!(s.ok(&["get", "-w", "a.shoal", "things", "8"]).contains("name   NULL"));
    s.ok(&["delete", "-w", "a.shoal", "things", "8"]);
    s.exits(1, &["get", "-w", "a.shoal", "things", "8"]);
}

#[test]
fn tables_keep_the_column_order_typed_and_can_be_altered() {
    let s = Sandbox::new();
    s.json(&["init", "-w", "a.shoal"]);
    s.ok(&[
        "table",
        "create",
        "-w",
        "a.shoal",
        "todo",
        "--key",
        "id:text",
        "--counter",
        "votes",
        "--column",
        "title:text",
        "--max",
        "best:integer",
    ]);
    let header = |s: &Sandbox| {
        s.ok(&["sql", "-w", "a.shoal", "SELECT * FROM todo WHERE 0 UNION ALL SELECT * FROM todo"])
    };
    s.ok(&["put", "-w", "a.shoal", "todo", "id=t1", "title=x"]);
    assert_eq!(header(&s).lines().next().unwrap(), "id  votes  title  best");
    // Declaring again is idempotent and says so.
    let again = s.ok(&[
        "table",
        "create",
        "-w",
        "a.shoal",
        "todo",
        "--key",
        "id:text",
        "--counter",
        "votes",
    ]);
    assert!(again.starts_with("table todo already exists as declared; nothing written"));
    s.ok(&[
        "table",
        "alter",
        "-w",
        "a.shoal",
        "todo",
        "--column",
        "notes:text",
        "--rename-column",
        "title=name",
        "--drop-column",
        "best",
    ]);
    assert_eq!(header(&s).lines().next().unwrap(), "id  votes  name  notes");
    s.ok(&["table", "alter", "-w", "a.shoal", "todo", "--rename", "tasks"]);
    assert!(s.ok(&["table", "list", "-w", "a.shoal"]).starts_with("table tasks"));
    s.ok(&["table", "alter", "-w", "a.shoal", "tasks", "--drop"]);
    assert_eq!(
        s.ok(&["table", "list", "-w", "a.shoal"]),
        "no tables (create one with `shoal table create`)\n"
    );
    let (_, err) = s.exits(2, &["table", "alter", "-w", "a.shoal", "tasks", "--rename", "x"]);
    assert_eq!(err, "shoal: no table named \"tasks\" (see `shoal table list`)\n");
    let (_, err) = s.exits(2, &["table", "alter", "-w", "a.shoal", "x"]);
    assert!(err.starts_with("shoal: nothing to change"), "{err}");
}

#[test]
fn log_shows_a_row_a_table_or_everything_with_devices_and_ops() {
    let s = Sandbox::new();
    std::fs::create_dir(s.path("shared")).unwrap();
    s.workspace_with_todo("a.shoal");
    s.ok(&["put", "-w", "a.shoal", "todo", "id=t1", "title=milk"]);
    s.ok(&["put", "-w", "a.shoal", "todo", "id=t2", "title=bread"]);
    s.ok(&["sync", "-w", "a.shoal", "--folder", "shared"]);
    s.join("b.shoal", "a.shoal", "shared");
    s.ok(&["put", "-w", "b.shoal", "todo", "id=t1", "done=1", "votes+=2"]);
    s.ok(&["delete", "-w", "b.shoal", "todo", "t2"]);

    let row = s.json(&["log", "-w", "b.shoal", "--table", "todo", "--row", "t1"]);
    assert_eq!(row.len(), 2, "{row:?}");
    let last = &row[1].1;
    assert_eq!(last["this_device"], true);
    assert_eq!(last["index"], 1, "entry 0 is b's join");
    assert!(last["time"].as_str().unwrap().ends_with('Z'));
    let ops = last["ops"].as_array().unwrap();
    assert_eq!(ops[0]["op"], "put");
    assert_eq!(ops[0]["table"], "todo");
    assert_eq!(ops[0]["key"][0], "t1");
    assert_eq!(ops[0]["cells"][0]["column"], "done");
    assert_eq!(ops[1]["cells"][0]["write"], "add");

    let human = s.ok(&["log", "-w", "b.shoal", "--table", "todo", "--row", "t1"]);
    assert!(human.contains("    put todo t1: title=\"milk\""), "{human}");
    assert!(human.contains("(this) #1"), "{human}");
    let table = s.json(&["log", "-w", "b.shoal", "--table", "todo"]);
    assert_eq!(table.len(), 5, "create, two puts, b's put and delete");
    let all = s.json(&["log", "-w", "b.shoal"]);
    assert_eq!(all.len(), 9, "and the genesis, a's ack and invite, and b's join");
    assert!(all.iter().any(|e| e.1["ops"][0]["op"] == "join"), "{all:?}");
    assert!(all.iter().any(|e| e.1["ops"][0]["op"] == "invite"), "{all:?}");
    assert_eq!(all[0].1["ops"][0]["op"], "genesis");
    let latest = s.json(&["log", "-w", "b.shoal", "--limit", "1"]);
    assert_eq!(latest[0].1["ops"][0]["op"], "delete");
    let b_device = s.json(&["status", "-w", "b.shoal"])[0].1["device"].as_str().unwrap().to_owned();
    let mine = s.json(&["log", "-w", "b.shoal", "--origin", &b_device[..8]]);
    assert_eq!(mine.len(), 3);
    let (_, err) = s.exits(2, &["log", "-w", "b.shoal", "--origin", "zz"]);
    assert!(err.starts_with("shoal: no device \"zz\""), "{err}");
}

/// `shoal watch` sees commits of other processes and names the changed columns.
#[test]
fn watch_prints_changes_made_by_other_processes() {
    let s = Sandbox::new();
    s.workspace_with_todo("a.shoal");
    s.ok(&["put", "-w", "a.shoal", "todo", "id=t1", "title=milk"]);
    let mut child = s
        .cmd(&["watch", "--json", "-w", "a.shoal", "todo", "--count", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| {
        rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|e| panic!("no {what}: {e}"))
    };
    // The first line says the watcher has read the table: changes from now on are printed.
    let ready = envelopes(&next("watching line"));
    assert_eq!(ready[0].0, "watching");
    assert_eq!(ready[0].1["rows"], 1);
    s.ok(&["put", "-w", "a.shoal", "todo", "id=t1", "title=oat milk"]);
    let update = next("update");
    s.ok(&["put", "-w", "a.shoal", "todo", "id=t2", "title=bread"]);
    let insert = next("insert");
    s.ok(&["delete", "-w", "a.shoal", "todo", "t1"]);
    let delete = next("delete");
    let status = child.wait().unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "{err}");
    let changes = envelopes(&[update, insert, delete].join("\n"));
    let summary: Vec<(String, String, String)> = changes
        .iter()
        .map(|(k, d)| {
            assert_eq!(k, "change");
            (
                d["change"].as_str().unwrap().into(),
                d["key"][0].as_str().unwrap().into(),
                d["columns"].to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("update".into(), "t1".into(), "[\"title\"]".into()),
            ("insert".into(), "t2".into(), "[\"id\",\"title\",\"done\",\"votes\"]".into()),
            ("delete".into(), "t1".into(), "[]".into()),
        ]
    );
    assert_eq!(changes[0].1["values"]["title"], "oat milk");
}

/// `shoal sql ... | head -1`: the closed pipe ends the command quietly.
#[test]
fn a_broken_pipe_ends_quietly() {
    let s = Sandbox::new();
    s.json(&["init", "-w", "a.shoal"]);
    let sql = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 300000) SELECT x FROM c";
    let mut child = s
        .cmd(&["sql", "-w", "a.shoal", sql])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert_eq!(first, "x\n");
    // The reader is dropped here: the pipe is closed.
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stderr.is_empty(), "{}", cli_util::text(&out.stderr));
}

// ---- The main job ----

#[test]
fn demo_converges_quickly() {
    let s = Sandbox::new();
    let started = Instant::now();
    let out = s.ok(&["demo"]);
    assert!(started.elapsed() < Duration::from_secs(10), "the demo takes under 10 s");
    assert!(out.contains("4. The converged table, identical on alice, bob and carol:"), "{out}");
    assert!(out.contains("t1  buy almond milk  0     6      40"), "{out}");
    assert!(out.contains("a delete wins a tie"), "{out}");
    assert!(out.contains("increments add up"), "{out}");
    assert!(out.contains("\nConverged: alice, bob and carol hold the same"), "{out}");
    let json = s.json(&["demo"]);
    let done = of_type(&json, "converged");
    assert_eq!(
        (done[0]["identical"].as_bool(), done[0]["explained"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(of_type(&json, "resolution").len(), 5);
    // --keep leaves the devices' files to explore with the other commands.
    s.ok(&["demo", "--keep", "d"]);
    let log = s.ok(&["log", "-w", "d/alice.shoal", "--table", "todo", "--row", "t1"]);
    assert!(log.contains("buy almond milk"), "{log}");
}

// ---- What the CLI says it does (issue #9, item 5). ----

/// The peak resident memory of a running process, in kB (Linux).
fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `shoal sql` prints rows as SQLite finds them, in bounded memory, and Ctrl-C stops a
/// runaway query at once with exit code 130.
#[test]
fn sql_streams_rows_and_stops_on_ctrl_c() {
    let s = Sandbox::new();
    s.json(&["init", "-w", "a.shoal"]);
    for json in [false, true] {
        let sql = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT x FROM c";
        let mut args = vec!["sql", "-w", "a.shoal", sql];
        if json {
            args.insert(0, "--json");
        }
        let mut child = s.cmd(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let pid = child.id();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::sync_channel(16);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // Once the test stops listening, the rest is drained.
                let _ = tx.send(line);
            }
        });
        // The query never ends: rows can only be read here if they are printed as found.
        let next = || {
            rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|e| {
                let _ = std::process::Command::new("kill").arg(pid.to_string()).status();
                panic!("no row printed while the query runs: {e}")
            })
        };
        let first: Vec<String> = (0..3).map(|_| next()).collect();
        if json {
            assert_eq!(first[0], r#"{"type":"row","data":{"values":{"x":1}}}"#);
        } else {
            assert_eq!(first, ["x", "1", "2"]);
        }
        // Read a good many rows; the process's peak memory stays small.
        let mut last = String::new();
        for _ in 0..300_000 {
            last = next();
        }
        // 3 + 300,000 lines read, the first of them the header in a table.
        let expected = if json { "{\"x\":300003}" } else { "300002" };
        assert!(last.contains(expected), "{last}");
        let peak = peak_rss_kb(pid);
        assert!(peak.is_some_and(|kb| kb < 64 * 1024), "peak RSS {peak:?} kB");
        // Ctrl-C: the rest of the output is drained while the process stops.
        let started = Instant::now();
        let pid_text = pid.to_string();
        let killed = std::process::Command::new("kill").args(["-INT", &pid_text]).status();
        assert!(killed.unwrap().success());
        let drain = std::thread::spawn(move || rx.iter().count());
        let mut status = None;
        while started.elapsed() < Duration::from_secs(10) {
            if let Some(st) = child.try_wait().unwrap() {
                status = Some(st);
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("shoal sql did not stop on SIGINT");
        };
        assert!(started.elapsed() < Duration::from_millis(1500), "{:?}", started.elapsed());
        drain.join().unwrap();
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert_eq!(status.code(), Some(130), "{err}");
        assert!(err.starts_with("shoal: interrupted (Ctrl-C) after "), "{err}");
    }
}

/// `kill -9` at any moment of `shoal init` leaves no file at the path, or a workspace that
/// `status` opens; `init` of a fresh path works afterwards, beside the leftovers.
#[test]
fn a_killed_init_leaves_no_file_or_a_working_one() {
    let s = Sandbox::new();
    let mut seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos()
            as u64
            | 1;
    let mut random_delay = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        Duration::from_micros(seed % 100_000)
    };
    let started = Instant::now();
    let (mut tries, mut complete, mut absent) = (0, 0, 0);
    while tries < 30 && started.elapsed() < Duration::from_secs(20) {
        tries += 1;
        let name = format!("w{tries}.shoal");
        let mut child = s.cmd(&["init", "-w", &name]).stdout(Stdio::null()).spawn().unwrap();
        std::thread::sleep(random_delay());
        let _ = child.kill(); // SIGKILL
        child.wait().unwrap();
        if s.path(&name).exists() {
            let (out, err) = s.exits(0, &["status", "-w", &name]);
            assert!(out.starts_with("workspace "), "{name}: {out}{err}");
            complete += 1;
        } else {
            absent += 1;
        }
    }
    assert!(tries >= 10, "only {tries} tries in 20 s");
    eprintln!("{tries} killed inits: {complete} complete, {absent} absent");
    let out = s.ok(&["init", "-w", "fresh.shoal"]);
    assert!(out.starts_with("created workspace "), "{out}");
    s.ok(&["status", "-w", "fresh.shoal"]);
}

/// `table create` makes every check `table alter` makes, up front: a name given twice
/// (ASCII case-insensitive, key columns included), the column budget, the key size.
#[test]
fn table_create_checks_names_and_budgets_up_front() {
    let s = Sandbox::new();
    s.json(&["init", "-w", "a.shoal"]);
    let create = |args: &[&str]| {
        let mut all = vec!["table", "create", "-w", "a.shoal", "t"];
        all.extend_from_slice(args);
        s.exits(2, &all).1
    };
    let err = create(&["--key", "id:text", "--counter", "c", "--counter", "C"]);
    assert_eq!(
        err,
        "shoal: cannot declare table \"t\": column \"C\" is given twice (as \"c\" and \"C\"; \
         names are compared ignoring ASCII case)\n"
    );
    let err = create(&["--key", "id:text", "--column", "id:text"]);
    assert!(err.contains("column \"id\" is given twice"), "{err}");
    let err = create(&["--key", "id:text", "--key", "ID:integer"]);
    assert!(err.contains("column \"ID\" is given twice (as \"id\""), "{err}");
    let keys: Vec<String> = (0..17).map(|i| format!("k{i}:integer")).collect();
    let mut args = Vec::new();
    for k in &keys {
        args.extend(["--key", k.as_str()]);
    }
    assert_eq!(create(&args), "shoal: cannot declare table \"t\": 17 key columns (at most 16)\n");
    let columns: Vec<String> = (0..2100).map(|i| format!("c{i}:text")).collect();
    let mut args = vec!["--key", "id:text"];
    for c in &columns {
        args.extend(["--column", c.as_str()]);
    }
    let err = create(&args);
    assert!(err.starts_with("shoal: cannot declare table \"t\": "), "{err}");
    assert!(err.contains("2101 columns; at most 1000"), "{err}");
    // Nothing was written; a valid table of 16 key columns is fine.
    assert!(s.ok(&["table", "list", "-w", "a.shoal"]).starts_with("no tables"));
    let mut args = vec!["table", "create", "-w", "a.shoal", "t"];
    for k in &keys[..16] {
        args.extend(["--key", k.as_str()]);
    }
    s.ok(&args);
}

/// Table and column names from other devices are printed with control characters
/// escaped, in `table list`, `log` and SQL headers; JSON keeps them exact.
#[test]
fn names_from_other_devices_are_escaped() {
    use shoal::tables::{ColumnId, PkColumn, TableId, TableOp};
    use shoal::{ColumnType, MergeKind, Value, Workspace, WorkspaceOptions};
    let s = Sandbox::new();
    s.json(&["init", "-w", "a.shoal"]);
    let table = "t\u{1b}[2J\u{7}\r\nx\u{8}";
    let column = "c\u{1b}]0;pwned\u{7}\r\n\u{8}";
    {
        let ws = Workspace::open(s.path("a.shoal"), WorkspaceOptions::default()).unwrap();
        let id = TableId::from_name(table);
        let ops = [
            TableOp::CreateTable {
                table: id,
                name: table.into(),
                primary_key: vec![PkColumn::new(id, "id", ColumnType::Text)],
            },
            TableOp::AddColumn {
                table: id,
                column: ColumnId::from_name(id, column),
                name: column.into(),
                ty: ColumnType::Text,
                merge: MergeKind::Lww,
            },
        ];
        let ops = ops.iter().map(|o| o.to_op().unwrap()).collect();
        ws.replica().append_local(vec![shoal::sqlite::LocalTx { ops, author: None }]).unwrap();
        let mut tx = ws.transaction().unwrap();
        tx.put(table, &[("id", Value::text("r1").unwrap()), (column, Value::text("v").unwrap())])
            .unwrap();
        tx.commit().unwrap();
    }
    let quoted = format!("SELECT * FROM \"{table}\"");
    for args in [
        vec!["table", "list", "-w", "a.shoal"],
        vec!["log", "-w", "a.shoal"],
        vec!["sql", "-w", "a.shoal", quoted.as_str()],
    ] {
        let out = s.ok(&args);
        let raw: Vec<char> = out.chars().filter(|c| c.is_control() && *c != '\n').collect();
        assert!(raw.is_empty(), "{args:?} printed raw control characters {raw:?}:\n{out}");
        assert!(out.contains("\\u{1b}"), "{args:?}: {out}");
        // Every name stays on its line.
        assert!(!out.lines().any(|l| l.starts_with("x")), "{args:?}: {out}");
    }
    let json = s.json(&["table", "list", "-w", "a.shoal"]);
    let t = &of_type(&json, "table")[0];
    assert_eq!(t["name"], table);
    assert_eq!(t["columns"][1]["name"], column);
    let rows = s.json(&["sql", "-w", "a.shoal", &quoted]);
    assert_eq!(rows[0].1["values"][column], "v");
}

/// `watch --count 0` prints nothing and ends at once; a message says each cause once.
#[test]
fn watch_count_zero_ends_and_messages_do_not_repeat() {
    let s = Sandbox::new();
    s.workspace_with_todo("a.shoal");
    let started = Instant::now();
    let mut child = s.cmd(&["watch", "-w", "a.shoal", "todo", "--count", "0"]).spawn().unwrap();
    let mut status = None;
    while started.elapsed() < Duration::from_secs(10) && status.is_none() {
        status = child.try_wait().unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    if status.is_none() {
        let _ = child.kill();
    }
    let _ = child.wait();
    assert_eq!(status.and_then(|st| st.code()), Some(0), "watch --count 0 did not end");
    assert_eq!(s.ok(&["watch", "-w", "a.shoal", "--json", "todo", "--count", "0"]), "");
    // SQLite's message comes once, without its bare error code repeated after it.
    let (_, err) = s.exits(2, &["sql", "-w", "a.shoal", "SELECT * FROM todos"]);
    assert_eq!(err, "shoal: SQL error in \"SELECT * FROM todos\": no such table: todos\n");
    let keys: Vec<String> = (0..17).map(|i| format!("k{i}")).collect();
    let mut args = vec!["get", "-w", "a.shoal", "todo"];
    args.extend(keys.iter().map(String::as_str));
    let (_, err) = s.exits(2, &args);
    for line in err.lines() {
        let parts: Vec<&str> = line.split(": ").collect();
        for w in parts.windows(2) {
            assert_ne!(w[0], w[1], "repeated: {line}");
        }
    }
}
