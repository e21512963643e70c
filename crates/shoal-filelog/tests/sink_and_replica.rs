//! The sink, puller and folder replica on their own: what a sink learns from its
//! directory, the size policy, clean-up, ownership, the cursor watch (events and polling)
//! and page bounds.

mod common;

use std::fs;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures::StreamExt;
use shoal_core::*;
use shoal_filelog::layout::SegmentName;
use shoal_filelog::{Config, FolderPuller, FolderReplica, FolderSink};

const PATIENCE: Duration = Duration::from_secs(10);

/// A sink learns what it published from its own directory, and a file that vanished is
/// published again from the local replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_learns_what_it_published_and_republishes_vanished_files() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path();
    let a = Device::new(folder, 1, no_compaction());
    a.append(0, 4);
    a.mirror.sync_once().await.unwrap();
    a.append(4, 4);
    a.mirror.sync_once().await.unwrap();
    let files = segment_files(folder, &a.origin);
    assert_eq!(files.len(), 2);

    let entries = a.replica.dump();
    let origin = a.origin;
    let end = Ingest::new(workspace())
        .verify(origin, ChainPosition::start(&workspace(), &origin), entries)
        .end();
    let sink = FolderSink::open(folder, workspace(), &key(1), no_compaction()).unwrap();
    assert_eq!(sink.published(), 8);
    assert_eq!(sink.position(), end, "the chain position is learned from the last head");
    assert_eq!(sink.origin(), origin);

    fs::remove_file(&files[1]).unwrap();
    let mut sink = sink;
    sink.refresh().unwrap();
    assert_eq!(sink.published(), 4);
    drop(sink);

    let report = a.mirror.sync_once().await.unwrap();
    assert_eq!(report.published, 4);
    let again = FolderSink::open(folder, workspace(), &key(1), no_compaction()).unwrap();
    assert_eq!(again.published(), 8);
}

/// A busy device publishing one entry at a time keeps a handful of files, not thousands,
/// and every entry stays readable and verifiable.
#[test]
fn compaction_keeps_few_files_and_every_entry_readable() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path();
    let config = Config { compaction_fanout: 4, ..Config::for_tests() };
    let mut sink = FolderSink::open(folder, workspace(), &key(1), config.clone()).unwrap();
    let mut log = OwnLog::resume(
        key(1),
        workspace(),
        ChainPosition::start(&workspace(), &key(1).peer_id(&workspace())),
    );
    let mut all = Vec::new();
    for n in 0..150 {
        let entries: Vec<Entry> =
            log.append(vec![payload(n)]).into_iter().map(|(e, _)| e).collect();
        sink.publish(&entries).unwrap();
        all.extend(entries);
        assert!(
            sink.segment_count() <= 12,
            "{} files after {n} publications",
            sink.segment_count()
        );
    }
    let on_disk = segment_files(folder, &sink.origin());
    assert_eq!(on_disk.len(), sink.segment_count());
    assert!(on_disk.len() <= 12, "{on_disk:?}");
    let dir = sink.dir().to_path_buf();
    assert!(
        fs::read_dir(&dir)
            .unwrap()
            .all(|e| { SegmentName::parse(&e.unwrap().file_name().to_string_lossy()).is_some() }),
        "no temporary files remain"
    );

    let puller = FolderPuller::new(folder, workspace(), config);
    let origin = sink.origin();
    assert_eq!(puller.origin_cursor(origin).unwrap(), 150);
    let mut read = Vec::new();
    while (read.len() as u64) < 150 {
        let page = FileLogPuller::read_entries(&puller, origin, read.len() as u64, 16).unwrap();
        assert!(!page.is_empty());
        read.extend(page);
    }
    // The folder keeps only the seals readers need (block ends and segment heads).
    let unsealed =
        |v: &[Entry]| v.iter().map(|e| Entry { seal: None, ..e.clone() }).collect::<Vec<_>>();
    assert_eq!(unsealed(&read), unsealed(&all));
    let run =
        Ingest::new(workspace()).verify(origin, ChainPosition::start(&workspace(), &origin), read);
    assert_eq!(run.entries().len(), 150);
    assert!(run.stop().is_none());
}

/// A sink removes its own stale temporary files when it starts, and nothing in other
/// origins' directories.
#[test]
fn stale_temp_files_of_its_own_are_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path();
    let own = origin_dir(folder, &key(1).peer_id(&workspace()));
    let other = origin_dir(folder, &key(2).peer_id(&workspace()));
    fs::create_dir_all(&own).unwrap();
    fs::create_dir_all(&other).unwrap();
    let temp = format!(".{}.0011223344556677.tmp", SegmentName { first: 0, last: 3 }.file_name());
    fs::write(own.join(&temp), b"partial").unwrap();
    fs::write(other.join(&temp), b"partial").unwrap();
    fs::write(own.join("notes.txt"), b"not ours to delete").unwrap();
    let sink = FolderSink::open(folder, workspace(), &key(1), Config::for_tests()).unwrap();
    assert_eq!(sink.published(), 0);
    assert!(!own.join(&temp).exists());
    assert!(other.join(&temp).exists(), "another device's directory is never touched");
    assert!(own.join("notes.txt").exists(), "only our own temporary names are removed");
}

/// The shared folder's root is never created: an unmounted share stays visibly missing.
#[test]
fn a_missing_folder_is_unavailable_and_not_created() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("not-mounted");
    let err = FolderSink::open(&folder, workspace(), &key(1), Config::for_tests()).unwrap_err();
    assert!(matches!(err, SyncError::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains("not-mounted"), "{err}");
    assert!(!folder.exists());
    let puller = FolderPuller::new(&folder, workspace(), Config::for_tests());
    assert!(matches!(puller.cursors(), Err(SyncError::Unavailable { .. })));
}

/// The folder replica writes only its own origin: a foreign entry is a caller's misuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folder_replica_accepts_only_its_own_origin() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path();
    let replica = FolderReplica::new(folder, workspace(), key(1), Config::for_tests());
    let b = MemoryReplica::new(workspace(), Some(key(2)));
    b.append_local(vec![payload(1)]).unwrap();
    let foreign = b.dump();
    let err = replica.apply_batch(foreign[0].origin, foreign.clone()).await.unwrap_err();
    assert!(matches!(err, SyncError::Misuse(_)), "{err:?}");
    let err = replica.apply(foreign[0].clone()).await.unwrap_err();
    assert!(matches!(err, SyncError::Misuse(_)), "{err:?}");
    // Entries of B labelled as a batch of A's origin are refused too.
    let err = replica.apply_batch(replica.origin(), foreign).await.unwrap_err();
    assert!(matches!(err, SyncError::Misuse(_)), "{err:?}");

    let a = MemoryReplica::new(workspace(), Some(key(1)));
    a.append_local(vec![payload(1), payload(2)]).unwrap();
    a.append_local(vec![payload(3)]).unwrap();
    let own = a.dump();
    let applied = replica.apply_batch(replica.origin(), own.clone()).await.unwrap();
    assert_eq!((applied.new, applied.next), (3, 3));
    let again = replica.apply_batch(replica.origin(), own.clone()).await.unwrap();
    assert_eq!((again.new, again.duplicates), (0, 3), "idempotent");
    assert_eq!(replica.cursors().await.unwrap().get(&replica.origin()), 3);
    let back = replica.read_since(replica.origin(), 0).await.unwrap();
    let unsealed =
        |v: Vec<Entry>| v.into_iter().map(|e| Entry { seal: None, ..e }).collect::<Vec<_>>();
    assert_eq!(unsealed(back), unsealed(own));
    assert_eq!(FileLogReplica::folder(&replica), folder);
}

async fn next_advance(stream: &mut CursorStream, origin: PeerId, to: u64) {
    tokio::time::timeout(PATIENCE, async {
        while let Some(ev) = stream.next().await {
            let c = match ev {
                CursorsEvent::Snapshot(c) | CursorsEvent::Advanced(c) => c,
            };
            if c.get(&origin) >= to {
                return;
            }
        }
        panic!("the cursor stream ended");
    })
    .await
    .expect("the folder's cursors advanced in time");
}

/// File-system events wake the watcher (polling is set far beyond the test's patience).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_cursors_follows_file_events() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path();
    let config = Config { poll_interval: Duration::from_secs(600), ..Config::for_tests() };
    let watcher = FolderReplica::new(folder, workspace(), key(1), config);
    let mut events = watcher.watch_cursors();
    assert!(matches!(events.next().await, Some(CursorsEvent::Snapshot(_))));
    // Let the watcher arm itself before the write.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let b = Device::new(folder, 2, Config::for_tests());
    b.append(0, 3);
    let started = std::time::Instant::now();
    b.mirror.sync_once().await.unwrap();
    next_advance(&mut events, b.origin, 3).await;
    assert!(started.elapsed() < Duration::from_secs(5), "woken by an event, not by polling");
}

/// Without file-system events (network shares, some cloud clients), polling finds changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_cursors_falls_back_to_polling() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path();
    let config = Config { fs_events: false, ..Config::for_tests() };
    let watcher = FolderReplica::new(folder, workspace(), key(1), config);
    let mut events = watcher.watch_cursors();
    let b = Device::new(folder, 2, Config::for_tests());
    b.append(0, 2);
    b.mirror.sync_once().await.unwrap();
    next_advance(&mut events, b.origin, 2).await;
}

/// Pages are bounded by the requested size, extended only to the next seal (a segment keeps
/// its head and a seal at the end of every MAX_SEAL_GAP-aligned block).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_bounded_and_end_on_seals() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path();
    let b = MemoryReplica::new(workspace(), Some(key(2)));
    for n in 0..10 {
        b.append_local((0..3).map(|k| payload(n * 3 + k)).collect()).unwrap();
    }
    let local: Arc<dyn Replica<Entry>> = Arc::new(b);
    let replica = FolderReplica::new(folder, workspace(), key(2), no_compaction());
    assert_eq!(replica.publish_from(local.clone()).await.unwrap(), 30);
    let puller = FolderPuller::new(folder, workspace(), Config::for_tests());
    let origin = replica.origin();
    let mut from = 0;
    while from < 30 {
        let page = FileLogPuller::read_entries(&puller, origin, from, 4).unwrap();
        assert!(page.len() >= 4.min(30 - from as usize), "{}", page.len());
        assert!(page.len() as u64 <= 4 + MAX_SEAL_GAP, "{}", page.len());
        assert!(page.last().unwrap().seal.is_some());
        assert_eq!(page[0].index, from);
        from += page.len() as u64;
    }
    assert!(FileLogPuller::read_entries(&puller, origin, 30, 4).unwrap().is_empty(), "drained");
}

/// The mirror runs its blocking file work on tokio's blocking pool and drives the local
/// replica from there; that must work on a single-threaded runtime too.
#[tokio::test(flavor = "current_thread")]
async fn a_mirror_works_on_a_current_thread_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path();
    let a = Device::new(folder, 1, Config::for_tests());
    let b = Device::new(folder, 2, Config::for_tests());
    a.append(0, 3);
    assert_eq!(a.mirror.sync_once().await.unwrap().published, 3);
    assert_eq!(b.mirror.sync_once().await.unwrap().pulled, 3);
    assert_eq!(a.replica.contents(), b.replica.contents());
}

/// A device directory that is a symbolic link is refused by its writer, as readers ignore
/// it: the owner never believes it published what nobody can read.
#[cfg(unix)]
#[tokio::test]
async fn a_symlinked_device_directory_is_refused_by_its_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("shared");
    fs::create_dir(&folder).unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    let a = Device::new(&folder, 1, Config::for_tests());
    let ws_dir = origin_dir(&folder, &a.origin).parent().unwrap().to_owned();
    fs::create_dir_all(&ws_dir).unwrap();
    std::os::unix::fs::symlink(&elsewhere, origin_dir(&folder, &a.origin)).unwrap();
    a.append(0, 3);
    let err = a.mirror.sync_once().await.unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0, "nothing written through it");
    // And a reader does not list it as a device.
    let puller = FolderPuller::new(&folder, workspace(), Config::for_tests());
    assert!(FileLogPuller::list_peers(&puller).unwrap().is_empty());
}
