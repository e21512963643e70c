//! Through the CLI, as the failures were seen: links to a workspace file or to a device
//! directory never let two syncs run at once or writes vanish.
#![cfg(unix)]
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

mod cli_util;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use cli_util::Sandbox;

/// Kills the watcher however the test ends.
struct Watcher(Child);

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_sync_through_a_symlink_to_a_file_being_synced_is_refused() {
    let s = Sandbox::new();
    s.workspace_with_todo("a.shoal");
    std::fs::create_dir(s.path("shared")).unwrap();
    std::os::unix::fs::symlink(s.path("a.shoal"), s.path("link.shoal")).unwrap();
    let child = s
        .cmd(&["sync", "-w", "a.shoal", "--folder", "shared", "--watch"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _watcher = Watcher(child);
    // The watcher holds the lock once it has published (its directory appears).
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir(s.path("shared")).unwrap().next().is_none() {
        assert!(Instant::now() < deadline, "the watcher never published");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = s.run(&["sync", "-w", "link.shoal", "--folder", "shared"]);
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    let err = cli_util::text(&out.stderr);
    assert!(
        err.contains("another `shoal sync` is running") && err.contains("a.shoal.sync-lock"),
        "{err}"
    );
}

#[test]
fn a_workspace_file_with_a_second_hard_link_is_refused_naming_it() {
    let s = Sandbox::new();
    s.workspace_with_todo("a.shoal");
    std::fs::hard_link(s.path("a.shoal"), s.path("b.shoal")).unwrap();
    for name in ["a.shoal", "b.shoal"] {
        let out = s.run(&["status", "-w", name]);
        assert_ne!(out.status.code(), Some(0), "{out:?}");
        let err = cli_util::text(&out.stderr);
        assert!(err.contains(name) && err.contains("2 hard links"), "{err}");
    }
    std::fs::remove_file(s.path("b.shoal")).unwrap();
    s.ok(&["status", "-w", "a.shoal"]);
}

#[test]
fn a_symlinked_device_directory_is_refused_by_its_writer() {
    let s = Sandbox::new();
    s.workspace_with_todo("a.shoal");
    std::fs::create_dir(s.path("shared")).unwrap();
    s.ok(&["sync", "-w", "a.shoal", "--folder", "shared"]);
    // Replace the device's own directory by a link to a copy elsewhere.
    let ws_dir = std::fs::read_dir(s.path("shared")).unwrap().next().unwrap().unwrap().path();
    let own = std::fs::read_dir(&ws_dir).unwrap().next().unwrap().unwrap().path();
    let elsewhere = s.path("elsewhere");
    std::fs::rename(&own, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &own).unwrap();
    s.ok(&["put", "-w", "a.shoal", "todo", "id=1", "title=x"]);
    let (_, err) = s.exits(2, &["sync", "-w", "a.shoal", "--folder", "shared"]);
    assert!(err.contains("symbolic link"), "{err}");
}
