//! A full disk, for real (DESIGN.md §10; issue 10, item 5): a small tmpfs holds the sync
//! folder (first case) or the workspace file (second case) and is filled to the last page.
//! Writes, syncs, a sync that would compact and table changes then fail with exit code 2
//! and a message naming the file or folder and saying the disk is full (or succeed, when
//! they need no new space: then they are acknowledged like any write); nothing panics.
//! After the filler is removed, the workspace reopens, `verify` passes, and sync converges
//! with another device with every acknowledged write present.
//!
//! Mounting needs root with CAP_SYS_ADMIN. Without it each test prints why it is skipped
//! (`SKIPPED: ...`) and passes; with `SHOAL_REQUIRE_TMPFS=1` (the CI, which runs as root)
//! it fails instead.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

mod cli_util;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cli_util::{Sandbox, text};

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` at `dir`, or says why it cannot.
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if out.status.success() {
            Ok(Tmpfs { dir: dir.to_owned() })
        } else {
            let err = text(&out.stderr).trim().replace('\n', " ");
            Err(format!("mount -t tmpfs failed ({}): {err}", out.status))
        }
    }

    /// Fills the filesystem with the file `filler` until not one more byte fits.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.dir.join("filler")).unwrap();
        let chunk = vec![0xa5u8; 64 << 10];
        while f.write_all(&chunk).is_ok() {}
        while f.write_all(&[0xa5]).is_ok() {}
        let _ = f.sync_all();
        // Nothing fits any more (a new file cannot get a page).
        let probe = self.dir.join("probe");
        let fits = std::fs::write(&probe, [1u8]).is_ok();
        let _ = std::fs::remove_file(&probe);
        assert!(!fits, "the tmpfs is not full");
    }

    /// Frees `bytes` at the end of the filler (whole pages).
    fn free_tail(&self, bytes: u64) {
        let f = std::fs::OpenOptions::new().write(true).open(self.dir.join("filler")).unwrap();
        let len = f.metadata().unwrap().len();
        f.set_len(len.saturating_sub(bytes)).unwrap();
    }

    fn unfill(&self) {
        std::fs::remove_file(self.dir.join("filler")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Mounts a tmpfs in the sandbox, or prints why the test is skipped (and fails if
/// `SHOAL_REQUIRE_TMPFS` is set).
fn tmpfs_or_skip(s: &Sandbox, test: &str) -> Option<Tmpfs> {
    match Tmpfs::mount(&s.path("mnt"), "4m") {
        Ok(t) => Some(t),
        Err(why) => {
            assert!(
                std::env::var_os("SHOAL_REQUIRE_TMPFS").is_none(),
                "{test}: SHOAL_REQUIRE_TMPFS is set but {why}"
            );
            // Straight to stderr, past the test harness's capture: a skip is never silent.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: {why} (needs root with CAP_SYS_ADMIN)"
            );
            None
        }
    }
}

/// A failure from the full disk: exit code 2, no panic, a message naming `place` and
/// saying the disk is full.
fn assert_full_disk_error(args: &[&str], out: &Output, place: &str) {
    let err = text(&out.stderr);
    eprintln!("shoal {args:?} on a full disk: {}", err.trim());
    assert_eq!(out.status.code(), Some(2), "shoal {args:?} on a full disk: {err}");
    assert!(!err.contains("panicked"), "shoal {args:?}: {err}");
    assert!(err.starts_with("shoal: "), "shoal {args:?}: {err}");
    assert!(err.contains(place), "shoal {args:?}: the message does not name {place}: {err}");
    let lower = err.to_lowercase();
    assert!(
        lower.contains("no space left on device") || lower.contains("disk is full"),
        "shoal {args:?}: the message does not say the disk is full: {err}"
    );
}

/// Exit 0 or a clean full-disk failure; true if it succeeded.
fn ok_or_full(s: &Sandbox, args: &[&str], place: &str) -> bool {
    let out = s.run(args);
    if out.status.code() == Some(0) {
        return true;
    }
    assert_full_disk_error(args, &out, place);
    false
}

/// The own segment files of the device of `ws` in `folder`.
fn own_segments(s: &Sandbox, ws: &str, folder: &str) -> Vec<String> {
    let st = s.json(&["status", "-w", ws]);
    let w = &cli_util::of_type(&st, "workspace")[0];
    let dir =
        s.path(folder).join(w["workspace"].as_str().unwrap()).join(w["device"].as_str().unwrap());
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn rows(s: &Sandbox, ws: &str) -> String {
    s.ok(&["sql", "--json", "-w", ws, "SELECT * FROM todo ORDER BY id"])
}

/// Every acknowledged id is in the `todo` rows of `ws`.
fn assert_all_present(s: &Sandbox, ws: &str, acked: &[String]) {
    let got = rows(s, ws);
    for id in acked {
        assert!(got.contains(&format!("\"id\":\"{id}\"")), "acknowledged {id} missing on {ws}");
    }
}

#[test]
fn a_full_folder_fails_publishing_cleanly_and_recovers() {
    let s = Sandbox::new();
    let Some(fs) = tmpfs_or_skip(&s, "a_full_folder_fails_publishing_cleanly_and_recovers") else {
        return;
    };
    let folder = "mnt/shared";
    std::fs::create_dir(s.path(folder)).unwrap();
    s.workspace_with_todo("a.shoal");
    s.ok(&["sync", "-w", "a.shoal", "--folder", folder]);
    s.join("b.shoal", "a.shoal", folder);
    let mut acked = Vec::new();
    let mut put = |s: &Sandbox, id: String| {
        s.ok(&["put", "-w", "a.shoal", "todo", &format!("id={id}"), "title=x"]);
        acked.push(id);
    };

    for i in 0..3 {
        put(&s, format!("p{i}"));
        s.ok(&["sync", "-w", "a.shoal", "--folder", folder]);
    }
    let before = own_segments(&s, "a.shoal", folder);

    // The folder's disk is full. A put goes to the workspace (another disk): acknowledged.
    fs.fill();
    put(&s, "full1".into());
    // The sync that would publish fails, naming the folder's file.
    let args = ["sync", "-w", "a.shoal", "--folder", folder];
    let out = s.run(&args);
    assert_full_disk_error(&args, &out, "mnt/shared");
    assert_eq!(own_segments(&s, "a.shoal", folder), before, "a failed publication left files");
    // A table change is written to the workspace: fine; its publication fails the same way.
    s.ok(&["table", "alter", "-w", "a.shoal", "todo", "--column", "note:text"]);
    let out = s.run(&args);
    assert_full_disk_error(&args, &out, "mnt/shared");
    // The other device still pulls (it has nothing to publish) or fails as cleanly.
    ok_or_full(&s, &["sync", "-w", "b.shoal", "--folder", folder], "mnt/shared");
    s.ok(&["verify", "-w", "a.shoal", "--folder", folder]);

    // One free page before each publication: the segment fits, a compaction after it
    // cannot write its merged segment. Publish until one was due for certain (8 single
    // segments in a row at the end: compaction merges any 8 of the lowest size tier): each
    // sync succeeds (the publication is durable), merges nothing and leaves no temporary
    // file; the compaction's failure is logged (SHOAL_LOG), naming the folder.
    let singles =
        |names: &[String]| names.iter().rev().take_while(|n| n.get(0..20) == n.get(21..41)).count();
    let mut due = false;
    for i in 0..12 {
        fs.free_tail(4096);
        put(&s, format!("one{i}"));
        let before = own_segments(&s, "a.shoal", folder);
        let out = s.cmd(&args).env("SHOAL_LOG", "warn").output().unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "sync with one free page: {err}");
        let after = own_segments(&s, "a.shoal", folder);
        assert_eq!(
            after.len(),
            before.len() + 1,
            "published one segment, merged nothing: {after:?}"
        );
        assert!(after.iter().all(|n| !n.starts_with('.')), "a temporary file was left: {after:?}");
        if singles(&before) >= 8 {
            assert!(err.contains("compaction failed"), "compaction was due: {err}");
            assert!(err.contains("No space left on device") && err.contains("mnt/shared"), "{err}");
            due = true;
            break;
        }
    }
    assert!(due, "no compaction was due in 12 publications");
    s.ok(&["verify", "-w", "a.shoal", "--folder", folder]);
    let after = own_segments(&s, "a.shoal", folder);

    // Space again: the next publication also merges, and both devices converge.
    fs.unfill();
    put(&s, "after".into());
    s.ok(&["sync", "-w", "a.shoal", "--folder", folder]);
    let merged = own_segments(&s, "a.shoal", folder);
    assert!(merged.len() < after.len(), "no merge once space is back: {merged:?}");
    s.ok(&["sync", "-w", "b.shoal", "--folder", folder]);
    s.ok(&["verify", "-w", "a.shoal", "--folder", folder]);
    s.ok(&["verify", "-w", "b.shoal", "--folder", folder]);
    assert_eq!(s.dump("a.shoal"), s.dump("b.shoal"));
    assert_all_present(&s, "b.shoal", &acked);
    assert!(s.dump("b.shoal").contains("\"note\""), "the table change reached b");
}

#[test]
fn a_full_disk_under_the_workspace_fails_writes_cleanly_and_recovers() {
    let s = Sandbox::new();
    let Some(fs) =
        tmpfs_or_skip(&s, "a_full_disk_under_the_workspace_fails_writes_cleanly_and_recovers")
    else {
        return;
    };
    std::fs::create_dir(s.path("shared")).unwrap();
    let a = "mnt/a.shoal";
    s.workspace_with_todo(a);
    s.ok(&["sync", "-w", a, "--folder", "shared"]);
    s.join("b.shoal", a, "shared");
    let mut acked: Vec<String> = Vec::new();
    for i in 0..5 {
        s.ok(&["put", "-w", a, "todo", &format!("id=a{i}"), "title=before"]);
        acked.push(format!("a{i}"));
    }
    // Entries from b for `a` to pull later.
    for i in 0..5 {
        s.ok(&["put", "-w", "b.shoal", "todo", &format!("id=b{i}"), "title=from b"]);
        acked.push(format!("b{i}"));
    }
    s.ok(&["sync", "-w", "b.shoal", "--folder", "shared"]);

    fs.fill();
    // The largest writes first: a write fails when it needs a page the disk has not, so a
    // smaller one may still fit in what SQLite's log already holds (then it is
    // acknowledged, and checked like any other). A sync must store what it pulls (b's five
    // rows): it fails.
    for _ in 0..2 {
        let ok = ok_or_full(&s, &["sync", "-w", a, "--folder", "shared"], a);
        assert!(!ok, "sync into a full disk succeeded");
    }
    // Table changes: each fails, or fits and stays; one must fail.
    let fails_within = |what: &str, args: &dyn Fn(usize) -> Vec<String>| {
        for i in 0..50 {
            let args = args(i);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            if !ok_or_full(&s, &args, a) {
                return;
            }
        }
        panic!("50 {what} on a full disk all succeeded");
    };
    fails_within("table creates", &|i| {
        ["table", "create", "-w", a, &format!("other{i}"), "--key", "id:text"]
            .map(String::from)
            .to_vec()
    });
    fails_within("table alters", &|i| {
        ["table", "alter", "-w", a, "todo", "--column", &format!("c{i}:text")]
            .map(String::from)
            .to_vec()
    });
    // Puts until one needs space it cannot get.
    let mut failed = false;
    for i in 0..200 {
        let id = format!("full{i}");
        if ok_or_full(&s, &["put", "-w", a, "todo", &format!("id={id}"), "title=full"], a) {
            acked.push(id);
        } else {
            failed = true;
            break;
        }
    }
    assert!(failed, "200 puts on a full disk all succeeded");
    // Reading needs no space: it works, or fails as clearly.
    for args in [
        &["status", "-w", a][..],
        &["sql", "-w", a, "SELECT count(*) FROM todo"],
        &["verify", "-w", a],
    ] {
        ok_or_full(&s, args, a);
    }

    // Space again: the workspace reopens and verifies, writes and syncs; both converge.
    fs.unfill();
    s.ok(&["status", "-w", a]);
    s.ok(&["verify", "-w", a, "--folder", "shared"]);
    s.ok(&["put", "-w", a, "todo", "id=after", "title=space again"]);
    acked.push("after".into());
    s.ok(&["sync", "-w", a, "--folder", "shared"]);
    s.ok(&["sync", "-w", "b.shoal", "--folder", "shared"]);
    s.ok(&["verify", "-w", a, "--folder", "shared"]);
    s.ok(&["verify", "-w", "b.shoal", "--folder", "shared"]);
    assert_eq!(s.dump(a), s.dump("b.shoal"));
    assert_all_present(&s, a, &acked);
    assert_all_present(&s, "b.shoal", &acked);
}
