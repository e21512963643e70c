//! A device's own log first: a copied device file, or a backup restored after it wrote,
//! never loses writes silently. A restored backup takes its own entries back from the
//! folder; a clone that wrote is refused loudly (sync fails with `Forked`, `status` shows
//! it, local writes are refused) instead of "published 0 entries"; and the copy that found
//! the fork recovers as its old key's successor, re-issuing its writes.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::path::{Path, PathBuf};

use shoal::core::SyncError;
use shoal::*;

fn spec() -> TableSpec {
    TableSpec::new("todo").key("id", ColumnType::Text).column("title", ColumnType::Text)
}

fn put(ws: &Workspace, id: &str) -> Result<()> {
    let mut tx = ws.transaction()?;
    tx.put("todo", &[("id", Value::text(id).unwrap()), ("title", Value::text(id).unwrap())])?;
    tx.commit().map(|_| ())
}

fn ids(ws: &Workspace) -> Vec<String> {
    ws.query("SELECT id FROM todo ORDER BY id", &[])
        .unwrap()
        .rows
        .into_iter()
        .map(|r| match &r[0] {
            Value::Text(t) => t.to_string(),
            other => panic!("{other:?}"),
        })
        .collect()
}

struct Setup {
    dir: tempfile::TempDir,
    folder: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("shared");
        std::fs::create_dir(&folder).unwrap();
        Setup { dir, folder }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn open(&self, name: &str) -> Workspace {
        Workspace::open(self.path(name), WorkspaceOptions::default()).unwrap()
    }
}

/// Copies a workspace nobody is writing, as a backup tool or a user copying a device would:
/// the file and its write-ahead log.
fn copy_closed(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
    for side in ["-wal", "-shm", ".key"] {
        let (f, t) = (format!("{}{side}", from.display()), format!("{}{side}", to.display()));
        let _ = std::fs::remove_file(&t);
        if Path::new(&f).exists() {
            std::fs::copy(&f, &t).unwrap();
        }
    }
}

fn remove_workspace(path: &Path) {
    std::fs::remove_file(path).unwrap();
    for side in ["-wal", "-shm", ".key"] {
        let _ = std::fs::remove_file(format!("{}{side}", path.display()));
    }
}

fn is_fork(e: &Error) -> bool {
    matches!(e, Error::Sync(SyncError::Forked { .. }))
}

#[tokio::test]
async fn a_cloned_device_that_wrote_is_refused_loudly_whichever_syncs_first() {
    for clone_first in [false, true] {
        for clone_writes in [1, 3] {
            let s = Setup::new();
            let a = Workspace::create(s.path("a.shoal"), WorkspaceOptions::default()).unwrap();
            a.declare(&spec()).unwrap();
            put(&a, "before").unwrap();
            a.sync_folder(&s.folder).await.unwrap();
            drop(a);
            copy_closed(&s.path("a.shoal"), &s.path("clone.shoal"));
            let (a, clone) = (s.open("a.shoal"), s.open("clone.shoal"));
            put(&a, "a").unwrap();
            for i in 0..clone_writes {
                put(&clone, &format!("clone{i}")).unwrap();
            }
            let (first, second) = if clone_first { (&clone, &a) } else { (&a, &clone) };
            first.sync_folder(&s.folder).await.unwrap();
            let err = second.sync_folder(&s.folder).await.unwrap_err();
            assert!(is_fork(&err), "{clone_first} {clone_writes}: {err}");
            let text = err.to_string();
            assert!(text.contains("copied") && text.contains(".seg"), "names the file: {text}");
            // Loud from then on: status shows it, and the device writes nothing more.
            let st = second.status().unwrap();
            assert!(st.fork.is_some(), "{st:?}");
            let refused = put(second, "after").unwrap_err();
            assert!(matches!(refused, Error::Forked(_)), "{refused}");
            // Another process opening the file sees it too.
            let name = if clone_first { "a.shoal" } else { "clone.shoal" };
            let again = s.open(name);
            assert!(again.status().unwrap().fork.is_some());
            assert!(matches!(put(&again, "later").unwrap_err(), Error::Forked(_)));
            // The first one's writes reached the folder and a third device, which also learns
            // that the origin forked: the evidence in the folder proves it.
            let b = Workspace::join(s.path("b.shoal"), first.id(), WorkspaceOptions::default())
                .unwrap();
            let out = b.sync_folder(&s.folder).await.unwrap();
            assert_eq!(ids(&b), ids(first));
            let origin = first.device().unwrap();
            assert!(
                out.status.forked.iter().any(|f| f.origin == origin),
                "{clone_first} {clone_writes}: {:?}",
                out.status
            );
            assert!(!out.status.in_sync());
            let seen_by_first = first.sync_folder(&s.folder).await.unwrap();
            assert!(seen_by_first.status.forked.iter().any(|f| f.origin == origin));
        }
    }
}

#[tokio::test]
async fn a_restored_backup_takes_its_own_entries_back_before_publishing() {
    let s = Setup::new();
    let a = Workspace::create(s.path("a.shoal"), WorkspaceOptions::default()).unwrap();
    a.declare(&spec()).unwrap();
    put(&a, "1").unwrap();
    a.sync_folder(&s.folder).await.unwrap();
    drop(a);
    copy_closed(&s.path("a.shoal"), &s.path("backup.shoal"));
    let a = s.open("a.shoal");
    put(&a, "2").unwrap();
    a.sync_folder(&s.folder).await.unwrap();
    drop(a);
    // The disk dies; last week's backup comes back and syncs before writing.
    remove_workspace(&s.path("a.shoal"));
    copy_closed(&s.path("backup.shoal"), &s.path("a.shoal"));
    let a = s.open("a.shoal");
    assert_eq!(ids(&a), ["1"]);
    let out = a.sync_folder(&s.folder).await.unwrap();
    assert!(out.status.fork.is_none(), "{:?}", out.status);
    assert_eq!(ids(&a), ["1", "2"], "its own entry came back");
    put(&a, "3").unwrap();
    a.sync_folder(&s.folder).await.unwrap();
    let b = Workspace::join(s.path("b.shoal"), a.id(), WorkspaceOptions::default()).unwrap();
    b.sync_folder(&s.folder).await.unwrap();
    assert_eq!(ids(&b), ["1", "2", "3"], "nothing lost, nothing twice");
}

/// Restores a backup of `a.shoal` taken after its first sync, once `a` wrote and synced
/// two more rows; returns the setup with `a.shoal` restored (not yet opened).
async fn restored_after_two_more_writes() -> Setup {
    let s = Setup::new();
    let a = Workspace::create(s.path("a.shoal"), WorkspaceOptions::default()).unwrap();
    a.declare(&spec()).unwrap();
    put(&a, "1").unwrap();
    a.sync_folder(&s.folder).await.unwrap();
    drop(a);
    copy_closed(&s.path("a.shoal"), &s.path("backup.shoal"));
    let a = s.open("a.shoal");
    put(&a, "2").unwrap();
    put(&a, "3").unwrap();
    a.sync_folder(&s.folder).await.unwrap();
    drop(a);
    remove_workspace(&s.path("a.shoal"));
    copy_closed(&s.path("backup.shoal"), &s.path("a.shoal"));
    s
}

#[tokio::test]
async fn a_restored_backup_that_writes_before_syncing_takes_its_own_entries_back_first() {
    let s = restored_after_two_more_writes().await;
    let a = s.open("a.shoal");
    put(&a, "4").unwrap();
    assert_eq!(ids(&a), ["1", "2", "3", "4"], "its own entries came back before the write");
    a.sync_folder(&s.folder).await.unwrap();
    let b = Workspace::join(s.path("b.shoal"), a.id(), WorkspaceOptions::default()).unwrap();
    b.sync_folder(&s.folder).await.unwrap();
    assert_eq!(ids(&b), ["1", "2", "3", "4"], "nothing lost, nothing twice");
}

#[tokio::test]
async fn a_restored_backup_that_wrote_while_its_folder_was_away_is_a_fork_not_a_silent_loss() {
    let s = restored_after_two_more_writes().await;
    // The folder is not mounted when the restored device writes.
    let away = s.dir.path().join("away");
    std::fs::rename(&s.folder, &away).unwrap();
    let a = s.open("a.shoal");
    put(&a, "written on the restored backup").unwrap();
    std::fs::rename(&away, &s.folder).unwrap();
    let err = a.sync_folder(&s.folder).await.unwrap_err();
    assert!(is_fork(&err), "{err}");
    assert!(a.status().unwrap().fork.is_some());
    // Recovered: the write made on the restored backup is re-issued under a new key, and
    // the entries the device had published before the disk died stay.
    let (a, rec) = a.recover_fork(&s.folder).unwrap();
    assert_eq!((rec.forked_at, rec.succession.reissued), (3, 1), "{rec:?}");
    a.sync_folder(&s.folder).await.unwrap();
    let b = Workspace::join(s.path("b.shoal"), a.id(), WorkspaceOptions::default()).unwrap();
    b.sync_folder(&s.folder).await.unwrap();
    let all = ["1", "2", "3", "written on the restored backup"];
    assert_eq!(ids(&a), all);
    assert_eq!(ids(&b), all, "nothing lost, nothing twice");
}

/// Recovery (issue 11): the copy that found its log forked re-joins as the successor of
/// its old key; its writes on the forked branch are re-issued; the other copy keeps
/// writing under the old key; every device converges with every write once.
#[tokio::test]
async fn a_forked_device_recovers_as_a_successor_and_nothing_is_lost_or_doubled() {
    for (members_only, encrypted) in [(false, false), (true, false), (true, true)] {
        let s = Setup::new();
        let options = WorkspaceOptions { members_only, encrypted, ..Default::default() };
        let a = Workspace::create(s.path("a.shoal"), options).unwrap();
        a.declare(&spec()).unwrap();
        put(&a, "before").unwrap();
        let code = members_only.then(|| a.invite(shoal::core::control::Role::Member, None, 1, ""));
        a.sync_folder(&s.folder).await.unwrap();
        drop(a);
        copy_closed(&s.path("a.shoal"), &s.path("clone.shoal"));
        let (a, clone) = (s.open("a.shoal"), s.open("clone.shoal"));
        put(&a, "a1").unwrap();
        put(&clone, "clone1").unwrap();
        put(&clone, "clone2").unwrap();
        a.sync_folder(&s.folder).await.unwrap();
        let err = clone.sync_folder(&s.folder).await.unwrap_err();
        assert!(is_fork(&err), "{err}");
        // Not forked: nothing to recover.
        let err = a.clone().recover_fork(&s.folder).unwrap_err();
        assert!(matches!(err, Error::NotForked { .. }), "{err}");

        let (clone, rec) = clone.recover_fork(&s.folder).unwrap();
        assert_eq!(rec.succession.reissued, 2, "{rec:?}");
        assert!(clone.fork().unwrap().is_none());
        clone.sync_folder(&s.folder).await.unwrap();
        assert_eq!(ids(&clone), ["a1", "before", "clone1", "clone2"]);
        put(&clone, "clone3").unwrap();
        clone.sync_folder(&s.folder).await.unwrap();
        // The other copy keeps its key and keeps writing.
        put(&a, "a2").unwrap();
        a.sync_folder(&s.folder).await.unwrap();
        clone.sync_folder(&s.folder).await.unwrap();
        let b = match &code {
            Some(code) => Workspace::join_with_code(
                s.path("b.shoal"),
                code.as_ref().unwrap(),
                WorkspaceOptions::default(),
            )
            .unwrap(),
            None => {
                Workspace::join(s.path("b.shoal"), a.id(), WorkspaceOptions::default()).unwrap()
            }
        };
        b.sync_folder(&s.folder).await.unwrap();
        let all = ["a1", "a2", "before", "clone1", "clone2", "clone3"];
        for ws in [&a, &clone, &b] {
            assert_eq!(ids(ws), all, "members_only {members_only} encrypted {encrypted}");
            let check = ws.verify_state(|_| {}).unwrap();
            assert!(check.differences.is_empty(), "{:?}", check.differences);
        }
        // Nothing applied twice: each write is one row version in the log of one origin.
        let entries: usize = b
            .replica()
            .history(None, 0, usize::MAX)
            .unwrap()
            .iter()
            .filter(|e| !matches!(&e.body, shoal::core::EntryBody::Live(p) if p.class() == Ok(shoal::core::EntryClass::Control)))
            .count();
        assert_eq!(entries, all.len() + 1, "one data entry per write, plus the declaration");
    }
}
