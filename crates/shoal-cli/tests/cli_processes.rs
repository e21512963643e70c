//! Several `shoal` processes at once: two devices each run `shoal sync --watch` on their
//! workspace file while `shoal put` processes write to the same files; the devices converge
//! through the shared folder, and the watchers stop cleanly on SIGTERM.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

mod cli_util;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use cli_util::{Sandbox, text};

/// Kills the watchers if the test fails before it stops them.
struct Watchers(Vec<Child>);

impl Drop for Watchers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `shoal sync --watch` on `ws`, its stdout and stderr in the file `log`.
fn spawn_logged(s: &Sandbox, ws: &str, log: &str) -> Child {
    let log = std::fs::File::create(s.path(log)).unwrap();
    s.cmd(&["sync", "-w", ws, "--folder", "shared", "--watch"])
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap()
}

/// Sends SIGTERM.
fn term(child: &Child) {
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
}

fn rows(s: &Sandbox, ws: &str) -> String {
    s.ok(&["sql", "--json", "-w", ws, "SELECT * FROM todo ORDER BY id"])
}

#[test]
fn two_watching_devices_converge_while_other_processes_write() {
    let s = Sandbox::new();
    std::fs::create_dir(s.path("shared")).unwrap();
    s.workspace_with_todo("a.shoal");
    s.ok(&["sync", "-w", "a.shoal", "--folder", "shared"]);
    s.join("b.shoal", "a.shoal", "shared");

    let spawn = |ws: &str| spawn_logged(&s, ws, &format!("{ws}.log"));
    let mut watchers = Watchers(vec![spawn("a.shoal"), spawn("b.shoal")]);

    // Once a watcher has run its first pass, a second sync of that file is refused.
    let deadline = Instant::now() + Duration::from_secs(20);
    for ws in ["a.shoal", "b.shoal"] {
        while !std::fs::read_to_string(s.path(&format!("{ws}.log"))).unwrap().contains("published")
        {
            assert!(Instant::now() < deadline, "watcher {ws} printed no pass");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    loop {
        let out = s.run(&["sync", "-w", "a.shoal", "--folder", "shared"]);
        let err = text(&out.stderr);
        if out.status.code() == Some(2) {
            assert!(err.contains("another `shoal sync` is running on this workspace"), "{err}");
            break;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(s.path("a.shoal.log")).unwrap_or_default();
            panic!("the watcher never took the lock: {err}\nwatcher: {log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // A second watcher of the same file waits for the lock instead, and says so.
    let mut second = spawn_logged(&s, "a.shoal", "a2.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(s.path("a2.log")).unwrap().contains("waiting for it to finish") {
        assert!(Instant::now() < deadline, "the second watcher did not say it waits");
        std::thread::sleep(Duration::from_millis(20));
    }
    term(&second);
    assert_eq!(second.wait().unwrap().code(), Some(0), "a waiting watcher stops on SIGTERM");

    for i in 0..4 {
        s.ok(&["put", "-w", "a.shoal", "todo", &format!("id=a{i}"), "title=from a", "votes+=1"]);
        s.ok(&["put", "-w", "b.shoal", "todo", &format!("id=b{i}"), "title=from b"]);
        s.ok(&["put", "-w", "b.shoal", "todo", "id=a0", "votes+=2"]);
    }

    let deadline = Instant::now() + Duration::from_secs(30);
    let (a, b) = loop {
        let (a, b) = (rows(&s, "a.shoal"), rows(&s, "b.shoal"));
        if a == b
            && a.lines().count() == 8
            && a.contains(r#""id":"a0","title":"from a","done":null,"votes":9"#)
        {
            break (a, b);
        }
        if Instant::now() > deadline {
            let logs = [s.path("a.shoal.log"), s.path("b.shoal.log")]
                .map(|p| std::fs::read_to_string(p).unwrap_or_default());
            panic!("no convergence in 30 s\na: {a}\nb: {b}\nlogs: {logs:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(a, b);

    // SIGTERM ends each watcher cleanly (exit code 0: nothing is stalled or bad).
    for child in &watchers.0 {
        term(child);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for (child, name) in watchers.0.iter_mut().zip(["a", "b"]) {
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "watcher {name} did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        let log = std::fs::read_to_string(s.path(&format!("{name}.shoal.log"))).unwrap();
        assert_eq!(status.code(), Some(0), "watcher {name}: {log}");
    }
    // Both recorded the sync, and the lock is free again.
    let status = s.json(&["status", "-w", "a.shoal"]);
    assert!(cli_util::of_type(&status, "last_sync")[0]["time"].is_string());
    s.ok(&["sync", "-w", "a.shoal", "--folder", "shared"]);
}
