//! Carried logs: a device syncing with a folder and with something else (a relay) carries
//! the other origins' entries into the folder, inside its own directory, each entry once.
//! Real files in temporary folders; the "relay-only" devices are replicas that never see
//! the folder, whose entries reach a bridge by a direct pull.

mod common;

use std::path::Path;

use common::*;
use shoal_core::*;
use shoal_filelog::layout::{CarriedPath, Layout, SegmentFile, list_segments};
use shoal_filelog::{CarrySink, Config, FolderPuller};

/// A replica that never syncs the folder (it stands for a relay-only device).
fn elsewhere(n: u8) -> (DeviceKey, std::sync::Arc<MemoryReplica>) {
    let key = key(n);
    (key.clone(), std::sync::Arc::new(MemoryReplica::new(workspace(), Some(key))))
}

async fn take(from: &MemoryReplica, into: &MemoryReplica) {
    let r = shoal_core::pull(from, into).await.expect("memory replicas do not fail");
    assert!(r.stalled.is_empty(), "{:?}", r.stalled);
}

fn append(replica: &MemoryReplica, start: u64, count: u64) {
    for n in start..start + count {
        replica.append_local(vec![payload(n)]).expect("the replica has a key");
    }
}

/// `origin`'s entries in `replica`, without seals (comparable across replicas).
fn entries_of(replica: &MemoryReplica, origin: PeerId) -> Vec<Entry> {
    replica.contents().into_iter().filter(|e| e.origin == origin).collect()
}

/// `origin`'s entries in `replica` with their seals (to carry them).
fn sealed(replica: &MemoryReplica, origin: PeerId) -> Vec<Entry> {
    replica.dump().into_iter().filter(|e| e.origin == origin).collect()
}

/// `carrier`'s carried segment files of `origin`.
fn carried_files(folder: &Path, carrier: &PeerId, origin: &PeerId) -> Vec<SegmentFile> {
    Layout::new(folder, workspace()).carried_files(carrier, origin).expect("the directory lists")
}

/// Entries of `origin` held in carried copies, per carrier: (carrier, entry count).
fn carried_counts(folder: &Path, origin: &PeerId) -> Vec<(PeerId, u64)> {
    let layout = Layout::new(folder, workspace());
    layout
        .carriers_of(origin)
        .expect("the workspace directory lists")
        .into_iter()
        .map(|c| (c, carried_files(folder, &c, origin).iter().map(|f| f.name.len()).sum()))
        .collect()
}

#[tokio::test]
async fn a_bridge_carries_relay_only_entries_to_a_folder_only_device() {
    let folder = tempfile::tempdir().unwrap();
    let bridge = Device::new(folder.path(), 1, Config::for_tests());
    let reader = Device::new(folder.path(), 2, Config::for_tests());
    let (rkey, relay_only) = elsewhere(3);
    let r = rkey.peer_id(&workspace());
    append(&relay_only, 0, 5);
    bridge.append(100, 2);
    take(&relay_only, &bridge.replica).await;

    let report = bridge.mirror.sync_once().await.unwrap();
    assert_eq!(report.carried, 5);
    assert_eq!(report.published, 2);
    // Inside the bridge's own directory, never the origin's.
    assert!(!origin_dir(folder.path(), &r).exists());
    assert_eq!(carried_counts(folder.path(), &r), vec![(bridge.origin, 5)]);
    for f in carried_files(folder.path(), &bridge.origin, &r) {
        let rel = f.path.strip_prefix(folder.path().join(workspace().to_hex())).unwrap();
        let parsed = CarriedPath::parse(rel.to_str().unwrap()).unwrap();
        assert_eq!((parsed.holder, parsed.origin), (bridge.origin, r));
    }
    assert!(bridge.mirror.status().in_sync(), "{:?}", bridge.mirror.status());

    reader.mirror.sync_once().await.unwrap();
    assert_eq!(entries_of(&reader.replica, r), entries_of(&relay_only, r));
    assert_eq!(reader.replica.contents(), bridge.replica.contents());
    let status = reader.mirror.status();
    assert!(status.in_sync(), "{status:?}");
    assert!(status.origins.iter().any(|o| o.origin == r && o.in_folder == 5 && o.local == 5));
    // The reader has nothing of its own beyond what it published; it carries nothing.
    assert_eq!(reader.mirror.sync_once().await.unwrap().carried, 0);

    // More entries: only the new ones are carried, continuing the carried copy.
    append(&relay_only, 5, 3);
    take(&relay_only, &bridge.replica).await;
    assert_eq!(bridge.mirror.sync_once().await.unwrap().carried, 3);
    reader.mirror.sync_once().await.unwrap();
    assert_eq!(entries_of(&reader.replica, r), entries_of(&relay_only, r));
    assert_eq!(carried_counts(folder.path(), &r), vec![(bridge.origin, 8)]);
}

#[tokio::test]
async fn entries_are_carried_once_and_duplicates_are_harmless() {
    let folder = tempfile::tempdir().unwrap();
    let first = Device::new(folder.path(), 1, Config::for_tests());
    let second = Device::new(folder.path(), 2, Config::for_tests());
    let reader = Device::new(folder.path(), 4, Config::for_tests());
    let (rkey, relay_only) = elsewhere(3);
    let r = rkey.peer_id(&workspace());
    append(&relay_only, 0, 6);
    take(&relay_only, &first.replica).await;
    take(&relay_only, &second.replica).await;

    assert_eq!(first.mirror.sync_once().await.unwrap().carried, 6);
    // The second bridge finds them in the folder already: it carries nothing.
    assert_eq!(second.mirror.sync_once().await.unwrap().carried, 0);
    assert_eq!(first.mirror.sync_once().await.unwrap().carried, 0);
    assert_eq!(carried_counts(folder.path(), &r), vec![(first.origin, 6)]);
    assert!(carried_files(folder.path(), &second.origin, &r).is_empty());

    // Two bridges racing (both carried before seeing the other's copy): each entry is in
    // the folder once per carrier, and readers take each once.
    let mut racer =
        CarrySink::open(folder.path(), workspace(), &key(2), Config::for_tests()).unwrap();
    let start = ChainPosition::start(&workspace(), &r);
    let done = racer.carry(r, start, sealed(&relay_only, r)).unwrap();
    assert_eq!((done.written, done.end.next), (6, 6));
    assert!(done.refused.is_none());
    let mut counts = carried_counts(folder.path(), &r);
    counts.sort();
    let mut expected = vec![(first.origin, 6), (second.origin, 6)];
    expected.sort();
    assert_eq!(counts, expected);
    reader.mirror.sync_once().await.unwrap();
    assert_eq!(entries_of(&reader.replica, r), entries_of(&relay_only, r));
    assert!(reader.mirror.status().in_sync(), "{:?}", reader.mirror.status());
}

#[tokio::test]
async fn own_directory_first_then_carried_copies_beyond_it() {
    let folder = tempfile::tempdir().unwrap();
    // X syncs the folder, then stops; its later entries reach the bridge another way.
    let x = Device::new(folder.path(), 3, no_compaction());
    let bridge = Device::new(folder.path(), 1, no_compaction());
    let reader = Device::new(folder.path(), 2, Config { report_after: 1, ..no_compaction() });
    x.append(0, 4);
    x.mirror.sync_once().await.unwrap();
    x.append(4, 5);
    take(&x.replica, &bridge.replica).await;
    let report = bridge.mirror.sync_once().await.unwrap();
    assert_eq!(report.carried, 5, "only what X's own directory lacks");
    let carried = carried_files(folder.path(), &bridge.origin, &x.origin);
    assert_eq!(carried.len(), 1);
    assert_eq!((carried[0].name.first, carried[0].name.last), (4, 8));

    // A tampered carried segment: reported by its path; X's own directory still reads.
    let mut bytes = std::fs::read(&carried[0].path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&carried[0].path, &bytes).unwrap();
    reader.mirror.sync_once().await.unwrap();
    assert_eq!(reader.cursors().await.get(&x.origin), 4);
    let status = reader.mirror.status();
    assert!(
        status.bad_files.iter().any(|f| f.path == carried[0].path && f.origin == x.origin),
        "{status:?}"
    );
    assert!(!status.in_sync());

    // X's own directory catching up supersedes the bad copy for the reader.
    x.mirror.sync_once().await.unwrap();
    reader.mirror.sync_once().await.unwrap();
    assert_eq!(entries_of(&reader.replica, x.origin), entries_of(&x.replica, x.origin));
}

#[tokio::test]
async fn a_carried_entry_that_fails_ingest_stalls_its_origin_naming_the_file() {
    let folder = tempfile::tempdir().unwrap();
    let x = Device::new(folder.path(), 3, no_compaction());
    let reader = Device::new(folder.path(), 2, no_compaction());
    x.append(0, 3);
    x.mirror.sync_once().await.unwrap();
    // A carried copy of a fork of X (its key used twice): a valid segment of X, but of a
    // different log, beyond X's own directory. (A bridge never writes this: see below.)
    let (_, twin) = elsewhere(3);
    append(&twin, 50, 6);
    let mut carrier =
        CarrySink::open(folder.path(), workspace(), &key(1), no_compaction()).unwrap();
    let done = carrier
        .carry(x.origin, ChainPosition::start(&workspace(), &x.origin), sealed(&twin, x.origin))
        .unwrap();
    assert_eq!(done.written, 6);
    let file = carried_files(folder.path(), &key(1).peer_id(&workspace()), &x.origin).remove(0);

    let report = reader.mirror.sync_once().await.unwrap();
    assert_eq!(reader.cursors().await.get(&x.origin), 3, "X's own directory read first");
    let (origin, reason) = &report.stalled[0];
    assert_eq!(*origin, x.origin);
    assert!(reason.contains(&file.path.display().to_string()), "{reason}");
    assert!(!reader.mirror.status().in_sync());
}

#[tokio::test]
async fn a_bridge_never_carries_a_log_that_disagrees_with_the_folder() {
    let folder = tempfile::tempdir().unwrap();
    let x = Device::new(folder.path(), 3, no_compaction());
    let bridge = Device::new(folder.path(), 1, no_compaction());
    x.append(0, 3);
    x.mirror.sync_once().await.unwrap();
    // The bridge holds a fork of X (X's key used on a copy), longer than the folder's.
    let (_, twin) = elsewhere(3);
    append(&twin, 50, 6);
    take(&twin, &bridge.replica).await;
    let report = bridge.mirror.sync_once().await.unwrap();
    assert_eq!(report.carried, 0);
    assert!(
        report.stalled.iter().any(|(o, why)| *o == x.origin && why.contains("cannot carry")),
        "{report:?}"
    );
    assert!(carried_files(folder.path(), &bridge.origin, &x.origin).is_empty());
}

#[tokio::test]
async fn carrying_can_be_switched_off_and_pull_only_mirrors_never_carry() {
    let folder = tempfile::tempdir().unwrap();
    let off = Device::new(folder.path(), 1, Config { carry: false, ..Config::for_tests() });
    let (rkey, relay_only) = elsewhere(3);
    let r = rkey.peer_id(&workspace());
    append(&relay_only, 0, 2);
    take(&relay_only, &off.replica).await;
    assert_eq!(off.mirror.sync_once().await.unwrap().carried, 0);

    let pull_only = {
        let d = Device::new(folder.path(), 2, Config::for_tests());
        take(&relay_only, &d.replica).await;
        let folder_replica = shoal_filelog::FolderReplica::new(
            folder.path(),
            workspace(),
            key(2),
            Config::for_tests(),
        );
        shoal_filelog::Mirror::new(folder_replica, d.replica.clone())
            .with_direction(Direction::PullOnly)
    };
    assert_eq!(pull_only.sync_once().await.unwrap().carried, 0);
    assert!(carried_counts(folder.path(), &r).is_empty());
}

#[tokio::test]
async fn a_carry_sink_writes_only_other_origins_inside_its_own_directory() {
    let folder = tempfile::tempdir().unwrap();
    let (k1, own) = elsewhere(1);
    append(&own, 0, 2);
    let me = k1.peer_id(&workspace());
    let mut sink = CarrySink::open(folder.path(), workspace(), &k1, Config::for_tests()).unwrap();
    assert_eq!(sink.carrier(), me);
    let err =
        sink.carry(me, ChainPosition::start(&workspace(), &me), sealed(&own, me)).unwrap_err();
    assert!(matches!(err, SyncError::Misuse(_)), "{err}");
    let (k3, other) = elsewhere(3);
    append(&other, 0, 2);
    let o = k3.peer_id(&workspace());
    // Entries of another origin than the one named are refused too.
    let err = sink.carry(o, ChainPosition::start(&workspace(), &o), sealed(&own, me)).unwrap_err();
    assert!(matches!(err, SyncError::Misuse(_)), "{err}");
    // A gap is refused.
    let err = sink
        .carry(o, ChainPosition::start(&workspace(), &o), sealed(&other, o)[1..].to_vec())
        .unwrap_err();
    assert!(matches!(err, SyncError::Gap { .. }), "{err}");
    assert_eq!(sink.dir(), origin_dir(folder.path(), &me));
    // Missing folder: unavailable, never created.
    let gone = folder.path().join("missing");
    let err = CarrySink::open(&gone, workspace(), &k1, Config::for_tests()).unwrap_err();
    assert!(matches!(err, SyncError::Unavailable { .. }), "{err}");
    assert!(!gone.exists());
}

#[tokio::test]
async fn readers_that_predate_carrying_still_read_own_directories() {
    // A reader before carrying listed only the files of `<workspace>/<origin>/` and only
    // 32-hex directories under the workspace: a `carried` directory is neither a segment
    // nor an origin, so it is ignored. The same listing functions are used here.
    let folder = tempfile::tempdir().unwrap();
    let bridge = Device::new(folder.path(), 1, Config::for_tests());
    let (rkey, relay_only) = elsewhere(3);
    let r = rkey.peer_id(&workspace());
    bridge.append(0, 3);
    append(&relay_only, 0, 4);
    take(&relay_only, &bridge.replica).await;
    bridge.mirror.sync_once().await.unwrap();
    assert!(!carried_files(folder.path(), &bridge.origin, &r).is_empty());
    let own = list_segments(&origin_dir(folder.path(), &bridge.origin)).unwrap();
    assert_eq!(own.iter().map(|f| f.name.len()).sum::<u64>(), 3, "only the own log's files");
    // The carried files sit beside the own ones, under names that are no segment name.
    let all: Vec<String> = std::fs::read_dir(origin_dir(folder.path(), &bridge.origin))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(all.iter().any(|n| n.starts_with("carried-")), "{all:?}");
    assert!(all.iter().filter(|n| n.starts_with("carried-")).all(|n| {
        shoal_filelog::layout::SegmentName::parse(n).is_none()
            && shoal_filelog::layout::CarriedName::parse(n).is_some()
    }));
    // Reading the own log file by file, as an old reader does, still works.
    let puller = FolderPuller::new(folder.path(), workspace(), Config::for_tests());
    for f in &own {
        puller.read_segment(bridge.origin, f).unwrap();
    }
    // The device directories are the same as before carrying.
    let devices = Layout::new(folder.path(), workspace()).device_dirs().unwrap();
    assert_eq!(devices, vec![bridge.origin]);
    // The new reader lists the carried origin as a peer, with its carried cursor.
    let mut peers = FileLogPuller::list_peers(&puller).unwrap();
    peers.sort();
    let mut expected = vec![bridge.origin, r];
    expected.sort();
    assert_eq!(peers, expected);
    assert_eq!(puller.origin_cursor(r).unwrap(), 4);
    // And the sink of the bridge's own log ignores the carried directory.
    let sink =
        shoal_filelog::FolderSink::open(folder.path(), workspace(), &key(1), Config::for_tests())
            .unwrap();
    assert_eq!(FileLogSink::published(&sink), 3);
    assert!(sink.bad_files().is_empty());
}

#[tokio::test]
async fn carried_copies_are_compacted_within_each_contiguous_run() {
    let folder = tempfile::tempdir().unwrap();
    let config = Config { compaction_fanout: 4, ..Config::for_tests() };
    let bridge = Device::new(folder.path(), 1, config.clone());
    let reader = Device::new(folder.path(), 2, config.clone());
    let (rkey, relay_only) = elsewhere(3);
    let r = rkey.peer_id(&workspace());
    // Sixteen passes that each carry one new entry.
    for n in 0..16 {
        append(&relay_only, n, 1);
        take(&relay_only, &bridge.replica).await;
        assert_eq!(bridge.mirror.sync_once().await.unwrap().carried, 1);
    }
    let files = carried_files(folder.path(), &bridge.origin, &r);
    assert!(files.len() < 8, "{} files for 16 passes: {files:?}", files.len());
    assert_eq!(carried_counts(folder.path(), &r), vec![(bridge.origin, 16)], "no overlaps left");
    reader.mirror.sync_once().await.unwrap();
    assert_eq!(entries_of(&reader.replica, r), entries_of(&relay_only, r));

    // A copy with a gap (the origin's own directory covered the middle): each run is
    // compacted on its own, and never merged across the gap.
    let mut sink = CarrySink::open(folder.path(), workspace(), &key(4), config.clone()).unwrap();
    let (xkey, x) = elsewhere(5);
    let xo = xkey.peer_id(&workspace());
    append(&x, 0, 12);
    let all = sealed(&x, xo);
    let mut at = ChainPosition::start(&workspace(), &xo);
    for e in &all[..4] {
        at = sink.carry(xo, at, vec![e.clone()]).unwrap().end;
    }
    // Entries 4..8 are skipped over (as if the origin's own directory held them).
    let at8 = shoal_core::chain_through(at, &all[4..8]).unwrap();
    let mut at = ChainPosition { next: 8, chain: at8 };
    for e in &all[8..] {
        at = sink.carry(xo, at, vec![e.clone()]).unwrap().end;
    }
    let names: Vec<(u64, u64)> = carried_files(folder.path(), &key(4).peer_id(&workspace()), &xo)
        .iter()
        .map(|f| (f.name.first, f.name.last))
        .collect();
    assert_eq!(names, vec![(0, 3), (8, 11)]);
}
