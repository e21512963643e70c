//! Robustness of folder sync (issue #4, item 3): one test per fault a shared folder
//! produces in practice. Each test names the fault, sets it up with real files in a
//! temporary folder, and checks both that the fault is contained (reported, retried,
//! ignored) and that everything else keeps syncing.

mod common;

use std::fs;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use shoal_core::*;
use shoal_filelog::layout::SegmentName;
use shoal_filelog::segment::{Compression, Segment};
use shoal_filelog::{Config, FolderPuller};

const PATIENCE: Duration = Duration::from_secs(10);

/// The chain position of `entries`' log before index `at`.
fn position_at(entries: &[Entry], at: usize) -> ChainPosition {
    let origin = entries[0].origin;
    let mut chain = ChainHash::seed(&workspace(), &origin);
    for e in &entries[..at] {
        chain = chain.link(&e.hash());
    }
    ChainPosition { next: at as u64, chain }
}

/// A segment of `entries[a..=b]`, as bytes.
fn segment_bytes(entries: &[Entry], a: usize, b: usize) -> Vec<u8> {
    Segment::new(workspace(), position_at(entries, a), entries[a..=b].to_vec())
        .expect("a valid run")
        .encode(Compression::Zstd { level: 3 })
}

fn name(a: u64, b: u64) -> String {
    SegmentName { first: a, last: b }.file_name()
}

/// A partial upload: a cloud client has written half of a segment under its final name.
/// The reader must not use it, must retry it (with backoff), must report it after a few
/// failures, and must pick it up as soon as the file is complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_segment_is_retried_until_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path();
    let b = Device::new(folder, 2, no_compaction());
    b.append(0, 10);
    b.mirror.sync_once().await.unwrap();
    let files = segment_files(folder, &b.origin);
    assert_eq!(files.len(), 1);
    let full = fs::read(&files[0]).unwrap();
    fs::write(&files[0], &full[..full.len() / 2]).unwrap();

    let a = Device::new(folder, 1, Config::for_tests());
    wait_until(PATIENCE, "the partial file is reported", || async {
        a.mirror.sync_once().await.expect("other origins keep syncing");
        !a.mirror.status().bad_files.is_empty()
    })
    .await;
    let status = a.mirror.status();
    assert_eq!(status.bad_files[0].path, files[0]);
    assert!(status.bad_files[0].failures >= 3, "reported only after a few tries");
    assert!(status.bad_files[0].reason.contains("input ends inside"), "{status:?}");
    assert_eq!(a.cursors().await.get(&b.origin), 0);

    // The upload completes.
    fs::write(&files[0], &full).unwrap();
    wait_until(PATIENCE, "the completed file is read", || async {
        a.mirror.sync_once().await.unwrap();
        a.cursors().await.get(&b.origin) == 10
    })
    .await;
    assert!(a.mirror.status().bad_files.is_empty());
    assert!(a.mirror.status().in_sync(), "{:?}", a.mirror.status());
}

/// A damaged segment in the middle of a log: its origin stalls at that file, the status
/// names the file and the reason, and every other origin keeps syncing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bit_is_rejected_and_reported_while_other_origins_sync() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path();
    let b = Device::new(folder, 2, no_compaction());
    b.append(0, 5);
    b.mirror.sync_once().await.unwrap();
    b.append(5, 5);
    b.mirror.sync_once().await.unwrap();
    let c = Device::new(folder, 3, no_compaction());
    c.append(0, 3);
    c.mirror.sync_once().await.unwrap();

    let files = segment_files(folder, &b.origin);
    assert_eq!(files.len(), 2);
    let mut bytes = fs::read(&files[0]).unwrap();
    bytes[140] ^= 0x04;
    fs::write(&files[0], &bytes).unwrap();

    let a = Device::new(folder, 1, Config::for_tests());
    wait_until(PATIENCE, "the damaged file is reported", || async {
        a.mirror.sync_once().await.expect("a bad file never fails the whole pass");
        !a.mirror.status().bad_files.is_empty()
    })
    .await;
    let cursors = a.cursors().await;
    assert_eq!(cursors.get(&c.origin), 3, "other origins sync");
    assert_eq!(cursors.get(&b.origin), 0, "nothing of the damaged file is applied");
    let status = a.mirror.status();
    assert_eq!(status.bad_files.len(), 1);
    assert_eq!(status.bad_files[0].path, files[0]);
    assert!(status.bad_files[0].reason.contains("checksum"), "{status:?}");
    let stalled = status.stalled.iter().find(|s| s.origin == b.origin).expect("B is stalled");
    assert_eq!(stalled.at, 0);
    assert!(stalled.reason.contains(&files[0].display().to_string()), "{stalled:?}");
    assert!(!status.in_sync());

    // B republishes when it notices (its sink checks its own files on start).
    let b2 = Device::with_replica(folder, key(2), b.replica.clone(), no_compaction());
    drop(b);
    b2.mirror.sync_once().await.unwrap();
    wait_until(PATIENCE, "B's log arrives once repaired", || async {
        a.mirror.sync_once().await.unwrap();
        a.cursors().await.get(&b2.origin) == 10
    })
    .await;
}

/// Cloud clients and operating systems litter shared folders. None of it may be read: not
/// even a *valid* segment under a non-canonical name (a conflict copy may hold a log that
/// was never published).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_files_and_conflict_copies_are_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path();
    let b = Device::new(folder, 2, no_compaction());
    b.append(0, 5);
    b.mirror.sync_once().await.unwrap();
    b.append(5, 5);
    let all = b.replica.read_since(b.origin, 0).await.unwrap();
    let ten = segment_bytes(&all, 0, 9);

    let dir = origin_dir(folder, &b.origin);
    let ws_dir = folder.join(workspace().to_hex());
    for junk in [
        format!(
            "{}.sync-conflict-20261125-101010-ABCDEFG.seg",
            name(0, 9).trim_end_matches(".seg")
        ),
        format!("{} (1).seg", name(0, 9).trim_end_matches(".seg")),
        format!(".{}.0123456789abcdef.tmp", name(0, 9)),
        format!("{}.tmp", name(0, 9)),
        "0-9.seg".to_string(),
        name(0, 9).to_uppercase(),
        "._".to_string() + &name(0, 9),
    ] {
        fs::write(dir.join(junk), &ten).unwrap();
    }
    fs::write(dir.join(".DS_Store"), b"\0\0\0\x01Bud1").unwrap();
    fs::write(dir.join("desktop.ini"), b"[.ShellClassInfo]").unwrap();
    fs::write(ws_dir.join(".DS_Store"), b"junk").unwrap();
    fs::write(folder.join(".DS_Store"), b"junk").unwrap();
    fs::create_dir(ws_dir.join(".dropbox.cache")).unwrap();
    fs::create_dir(ws_dir.join(b.origin.to_hex().to_uppercase())).unwrap();
    fs::write(ws_dir.join(b.origin.to_hex().to_uppercase()).join(name(0, 9)), &ten).unwrap();
    // A directory where a segment should be a file.
    fs::create_dir(dir.join(name(10, 12))).unwrap();

    let a = Device::new(folder, 1, Config::for_tests());
    a.mirror.sync_once().await.unwrap();
    assert_eq!(a.cursors().await.get(&b.origin), 5, "only the canonical segment counts");
    assert_eq!(a.replica.dump().len(), 5);
    let status = a.mirror.status();
    assert!(status.bad_files.is_empty(), "junk is ignored, not reported: {status:?}");
    assert!(status.in_sync(), "{status:?}");
    let puller = FolderPuller::new(folder, workspace(), Config::for_tests());
    let mut peers = shoal_core::FileLogPuller::list_peers(&puller).unwrap();
    peers.sort();
    let mut expected = vec![a.origin, b.origin];
    expected.sort();
    assert_eq!(peers, expected);
}

/// Overlapping and duplicate segments (left by compaction, or by a republication) are
/// legal: every entry is applied exactly once, whichever files a page comes from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_and_overlapping_segments_are_tolerated() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path();
    let b = Device::new(folder, 2, no_compaction());
    b.append(0, 10);
    b.mirror.sync_once().await.unwrap();
    let all = b.replica.read_since(b.origin, 0).await.unwrap();
    let dir = origin_dir(folder, &b.origin);
    for (x, y) in [(0, 4), (3, 7), (5, 9), (2, 2), (9, 9)] {
        fs::write(dir.join(name(x, y)), segment_bytes(&all, x as usize, y as usize)).unwrap();
    }

    // Every page from every index, across overlaps, is the right run.
    let puller = FolderPuller::new(folder, workspace(), Config::for_tests());
    for from in 0..10u64 {
        let page = shoal_core::FileLogPuller::read_entries(&puller, b.origin, from, 2).unwrap();
        assert_eq!(page[0].index, from);
        // Seals are transport data (segments keep the ones readers need): compare content.
        let unsealed =
            |v: &[Entry]| v.iter().map(|e| Entry { seal: None, ..e.clone() }).collect::<Vec<_>>();
        assert_eq!(unsealed(&page), unsealed(&all[from as usize..from as usize + page.len()]));
        assert!(page.last().unwrap().seal.is_some());
    }

    let small_pages = Config { page_entries: 3, ..Config::for_tests() };
    let a = Device::new(folder, 1, small_pages.clone());
    a.mirror.sync_once().await.unwrap();
    assert_eq!(a.replica.contents(), b.replica.contents());

    // Without the original, the overlapping parts still cover the log.
    fs::remove_file(dir.join(name(0, 9))).unwrap();
    let d = Device::new(folder, 4, small_pages);
    let report = d.mirror.sync_once().await.unwrap();
    assert_eq!(report.pulled, 10, "{report:?}");
    assert_eq!(d.replica.contents(), b.replica.contents());
}

/// Segments moved into the wrong place — another workspace's, or another origin's in this
/// origin's directory — are refused, reported, and never attributed to the directory's
/// origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_in_the_wrong_directory_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path();
    let b = Device::new(folder, 2, no_compaction());
    b.append(0, 5);
    b.mirror.sync_once().await.unwrap();
    let c = Device::new(folder, 3, no_compaction());
    c.append(0, 10);
    c.mirror.sync_once().await.unwrap();

    // C's segment 0..=9 copied into B's directory: it would extend B to 10 if trusted.
    let c_file = &segment_files(folder, &c.origin)[0];
    let planted = origin_dir(folder, &b.origin).join(name(0, 9));
    fs::copy(c_file, &planted).unwrap();

    // A segment of another workspace, in the directory its origin would have here.
    let other_ws = WorkspaceId::from_bytes([0xee; 16]);
    let e_key = key(5);
    let e = MemoryReplica::new(other_ws, Some(e_key.clone()));
    e.append_local(vec![payload(1)]).unwrap();
    let e_entries = e.read_since(e_key.peer_id(&other_ws), 0).await.unwrap();
    let e_origin = e_key.peer_id(&other_ws);
    let transplanted =
        Segment::new(other_ws, ChainPosition::start(&other_ws, &e_origin), e_entries)
            .unwrap()
            .encode(Compression::Zstd { level: 3 });
    let e_dir = origin_dir(folder, &e_origin);
    fs::create_dir_all(&e_dir).unwrap();
    fs::write(e_dir.join(name(0, 0)), transplanted).unwrap();

    let a = Device::new(folder, 1, Config::for_tests());
    wait_until(PATIENCE, "both misplaced files are reported", || async {
        a.mirror.sync_once().await.unwrap();
        a.mirror.status().bad_files.len() == 2
    })
    .await;
    let cursors = a.cursors().await;
    assert_eq!(cursors.get(&b.origin), 5, "B's own segment still counts");
    assert_eq!(cursors.get(&c.origin), 10);
    assert_eq!(cursors.get(&e_origin), 0);
    let status = a.mirror.status();
    let reason_of = |p: &std::path::Path| {
        status.bad_files.iter().find(|f| f.path == p).map(|f| f.reason.clone()).unwrap()
    };
    assert!(reason_of(&planted).contains("sits in the directory of origin"), "{status:?}");
    assert!(reason_of(&e_dir.join(name(0, 0))).contains("of workspace"), "{status:?}");
    assert_eq!(a.replica.dump().iter().filter(|x| x.origin == b.origin).count(), 5);
}

/// The shared folder disappears (unmounted, moved by the user, cloud client resyncing):
/// mirrors report it, back off, never recreate it, and converge once it is back —
/// including everything written meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folder_disappearing_for_a_while_converges() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("shared");
    let away = tmp.path().join("away");
    fs::create_dir(&folder).unwrap();
    let a = Device::new(&folder, 1, Config::for_tests());
    let b = Device::new(&folder, 2, Config::for_tests());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let run = |d: &Device| {
        let m = d.mirror.clone();
        let mut rx = stopped.clone();
        tokio::spawn(async move {
            m.run(async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
        })
    };
    let tasks = [run(&a), run(&b)];
    a.append(0, 3);
    wait_until(PATIENCE, "B has A's first entries", || async {
        b.cursors().await.get(&a.origin) == 3
    })
    .await;

    fs::rename(&folder, &away).unwrap();
    a.append(3, 4);
    b.append(0, 2);
    wait_until(PATIENCE, "both mirrors report the missing folder", || async {
        [&a, &b].iter().all(|d| {
            d.mirror.status().last_error.as_deref().is_some_and(|e| e.contains("unavailable"))
        })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!folder.exists(), "a missing shared folder is never recreated");

    fs::rename(&away, &folder).unwrap();
    wait_until(PATIENCE, "the devices converge", || async {
        a.cursors().await == b.cursors().await && a.cursors().await.total() == 9
    })
    .await;
    assert_eq!(a.replica.contents(), b.replica.contents());
    stop.send(true).unwrap();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
}

/// A device killed while publishing leaves a temporary file and (on a filesystem without
/// atomic rename, or a torn cloud upload) a partial segment under a canonical name. On
/// restart the leftovers are cleaned up and every acknowledged local write reaches the
/// other devices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_publish_restart_converges() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path();
    let a = Device::new(folder, 1, no_compaction());
    a.append(0, 5);
    a.mirror.sync_once().await.unwrap();
    // Acknowledged by the local replica, not yet published when the process dies.
    a.append(5, 5);
    let all = a.replica.read_since(a.origin, 0).await.unwrap();
    let next = segment_bytes(&all, 5, 9);
    let dir = origin_dir(folder, &a.origin);
    let temp = dir.join(format!(".{}.00112233445566ff.tmp", name(5, 9)));
    fs::write(&temp, &next[..next.len() / 3]).unwrap();
    fs::write(dir.join(name(5, 9)), &next[..next.len() / 2]).unwrap();
    fs::write(dir.join(name(5, 7)), &next[..40]).unwrap();
    let replica = a.replica.clone();
    drop(a);

    let b = Device::new(folder, 2, Config::for_tests());
    b.mirror.sync_once().await.unwrap();
    assert_eq!(b.cursors().await.get(&replica.dump()[0].origin), 5, "partial files are not read");

    // Restart: a new mirror on the same local replica.
    let a = Device::with_replica(folder, key(1), replica, no_compaction());
    let report = a.mirror.sync_once().await.unwrap();
    assert_eq!(report.published, 5);
    assert!(!temp.exists(), "the stale temporary file is removed");
    assert!(!dir.join(name(5, 7)).exists(), "the damaged own file is removed once covered");
    let names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");

    b.mirror.sync_once().await.unwrap();
    assert_eq!(b.cursors().await.get(&a.origin), 10, "no acknowledged write is lost");
    let theirs: Vec<Entry> =
        b.replica.contents().into_iter().filter(|e| e.origin == a.origin).collect();
    assert_eq!(theirs, a.replica.contents());
    let _ = Arc::strong_count(&a.replica);
}
