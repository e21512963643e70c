//! One sync per workspace file, whatever path reaches it: the library takes the lock for
//! every sync (not only the CLI), keyed by the file, not by the path used to open it.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use shoal::*;

#[cfg(unix)]
#[tokio::test]
async fn the_sync_lock_is_per_file_not_per_path_and_taken_by_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("shared");
    std::fs::create_dir(&folder).unwrap();
    let real = dir.path().join("a.shoal");
    let link = dir.path().join("link.shoal");
    let a = Workspace::create(&real, WorkspaceOptions::default()).unwrap();
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let via_link = Workspace::open(&link, WorkspaceOptions::default()).unwrap();
    assert_eq!(a.sync_lock_path(), via_link.sync_lock_path());

    let held = a.try_lock_sync().unwrap().unwrap();
    assert!(via_link.try_lock_sync().unwrap().is_none(), "the same file through a symlink");
    let err = via_link.sync_folder(&folder).await.unwrap_err();
    assert!(matches!(err, Error::SyncBusy { .. }), "{err}");
    assert!(err.to_string().contains("another sync"), "{err}");
    drop(held);
    via_link.sync_folder(&folder).await.unwrap();
    a.sync_folder(&folder).await.unwrap();
}

/// A second hard link of a workspace file would give SQLite a second write-ahead log for
/// one database (it keys them by name) and corrupt it: opening a file with two names is
/// refused, naming the file, whichever name is used; the first name works again once the
/// second is gone.
#[cfg(unix)]
#[test]
fn a_workspace_file_with_two_hard_links_is_not_opened() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("a.shoal");
    drop(Workspace::create(&real, WorkspaceOptions::default()).unwrap());
    let other_dir = dir.path().join("elsewhere");
    std::fs::create_dir(&other_dir).unwrap();
    let linked = other_dir.join("b.shoal");
    std::fs::hard_link(&real, &linked).unwrap();
    for path in [&real, &linked] {
        for err in [
            Workspace::open(path, WorkspaceOptions::default()).unwrap_err(),
            Workspace::open_read_only(path, WorkspaceOptions::default()).unwrap_err(),
        ] {
            let text = err.to_string();
            assert!(text.contains(&path.display().to_string()), "{text}");
            assert!(text.contains("2 hard links"), "{text}");
        }
    }
    std::fs::remove_file(&linked).unwrap();
    Workspace::open(&real, WorkspaceOptions::default()).unwrap();
}

/// An `init` killed after it placed the file but before it removed its temporary name
/// leaves the file with two names; the next open removes the temporary one (and only a
/// temporary name of this very file) and opens.
#[cfg(unix)]
#[test]
fn an_interrupted_init_leftover_is_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("a.shoal");
    drop(Workspace::create(&real, WorkspaceOptions::default()).unwrap());
    let leftover = dir.path().join(".a.shoal.init-0011223344ff");
    std::fs::hard_link(&real, &leftover).unwrap();
    let unrelated = dir.path().join(".a.shoal.init-ffeeddccbbaa");
    std::fs::write(&unrelated, b"not a link of the workspace").unwrap();
    let ws = Workspace::open(&real, WorkspaceOptions::default()).unwrap();
    assert!(ws.device().is_some());
    assert!(!leftover.exists(), "the second name of the file is removed");
    assert!(unrelated.exists(), "a file that is not the workspace is left alone");
}
