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
