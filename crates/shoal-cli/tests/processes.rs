//! Several real device processes sharing one folder through the `shoal` binary:
//! - three devices write concurrently while `shoal sync --watch` runs for each, and
//!   converge; a fourth device that starts late catches up;
//! - a sync process killed (SIGKILL) again and again while it publishes loses no
//!   acknowledged write: after a restart every row whose `shoal put` succeeded arrives on
//!   another device, and the folder verifies.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed assertion

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

/// A background process, killed when dropped.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn shoal(args: &[&str]) -> Output {
    Command::new(SHOAL).args(args).env_remove("SHOAL_WORKSPACE").output().expect("run shoal")
}

fn ok(args: &[&str]) -> String {
    let out = shoal(args);
    assert!(
        out.status.success(),
        "shoal {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Creates device `file` joining with an invite of the admin `admin` through `folder`.
fn join(file: &Path, admin: &Path, folder: &Path) {
    let folder = folder.to_str().unwrap();
    let code = ok(&["invite", "-w", admin.to_str().unwrap(), "--folder", folder]);
    ok(&["join", "-w", file.to_str().unwrap(), code.trim(), "--folder", folder]);
}

fn watch(workspace: &Path, folder: &Path) -> Background {
    let child = Command::new(SHOAL)
        .args(["sync", "--watch", "--workspace"])
        .arg(workspace)
        .arg("--folder")
        .arg(folder)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start shoal sync --watch");
    Background(child)
}

fn rows(workspace: &Path) -> String {
    ok(&["sql", "--json", "-w", workspace.to_str().unwrap(), "SELECT * FROM t ORDER BY id"])
}

fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// Waits until `check` holds, or fails with `what` after `secs` seconds.
fn eventually(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(Instant::now() < deadline, "{what} within {secs} s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn setup(dir: &Path, devices: usize) -> (PathBuf, Vec<PathBuf>) {
    let folder = path(dir, "shared");
    std::fs::create_dir(&folder).unwrap();
    let files: Vec<PathBuf> = (0..devices).map(|i| path(dir, &format!("d{i}.shoal"))).collect();
    let first = files[0].to_str().unwrap();
    ok(&["init", "-w", first]);
    ok(&[
        "table",
        "create",
        "-w",
        first,
        "t",
        "--key",
        "id:text",
        "--column",
        "val:integer",
        "--counter",
        "votes",
    ]);
    ok(&["sync", "-w", first, "--folder", folder.to_str().unwrap()]);
    for f in &files[1..] {
        join(f, &files[0], &folder);
    }
    (folder, files)
}

#[test]
fn three_device_processes_converge_and_a_late_fourth_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let (folder, files) = setup(dir.path(), 3);
    let _watchers: Vec<Background> = files.iter().map(|f| watch(f, &folder)).collect();

    // Each device writes its own rows and bumps one shared counter, concurrently.
    const WRITES: usize = 12;
    std::thread::scope(|s| {
        for (d, file) in files.iter().enumerate() {
            s.spawn(move || {
                let w = file.to_str().unwrap();
                for k in 0..WRITES {
                    ok(&["put", "-w", w, "t", &format!("id=d{d}-{k:02}"), &format!("val={k}")]);
                    ok(&["put", "-w", w, "t", "id=shared", "votes+=1"]);
                }
            });
        }
    });

    let expected_rows = 3 * WRITES + 1;
    eventually(60, "the three devices converge", || {
        let all: Vec<String> = files.iter().map(|f| rows(f)).collect();
        all.iter().all(|r| r == &all[0])
            && all[0].lines().count() == expected_rows
            && all[0].contains(&format!("\"id\":\"shared\",\"val\":null,\"votes\":{}", 3 * WRITES))
    });

    // A fourth device starts late and catches up from the folder alone.
    let late = path(dir.path(), "late.shoal");
    join(&late, &files[0], &folder);
    assert_eq!(rows(&late), rows(&files[0]));
}

#[test]
fn a_sync_process_killed_mid_publish_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let (folder, files) = setup(dir.path(), 2);
    let writer = files[0].to_str().unwrap();
    let mut acknowledged = Vec::new();
    for round in 0..6 {
        let sync = watch(&files[0], &folder);
        for k in 0..5 {
            let id = format!("r{round}-{k}");
            // Only a put that exited 0 was acknowledged; only those must arrive.
            if shoal(&["put", "-w", writer, "t", &format!("id={id}"), &format!("val={k}")])
                .status
                .success()
            {
                acknowledged.push(id);
            }
        }
        // Kill it at some point of its publishing: right away, or a little later.
        std::thread::sleep(Duration::from_millis(20 * round));
        drop(sync); // SIGKILL
    }
    assert_eq!(acknowledged.len(), 30);

    // Restart: the folder converges and the other device gets every acknowledged row.
    let _sync = watch(&files[0], &folder);
    let reader = files[1].to_str().unwrap();
    eventually(60, "every acknowledged row reaches the other device", || {
        ok(&["sync", "-w", reader, "--folder", folder.to_str().unwrap()]);
        let got = rows(&files[1]);
        acknowledged.iter().all(|id| got.contains(&format!("\"id\":\"{id}\"")))
    });
    let out = shoal(&["verify", "-w", reader, "--folder", folder.to_str().unwrap()]);
    assert!(out.status.success(), "verify after crashes: {}", String::from_utf8_lossy(&out.stderr));
}
