//! Behaviour of the SQLite replica: local appends, apply rules, convergence, bad files.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::sync::Arc;

use futures::StreamExt;
use proptest::prelude::*;
use shoal_core::*;
use shoal_sqlite::{FORMAT_VERSION, LocalTx, OpenError, Options, SqliteReplica};
use tempfile::TempDir;

fn op(n: u64) -> Op {
    Op { domain: Domain::TABLES, kind: 1, body: n.to_le_bytes().to_vec() }
}

fn tx(n: u64) -> LocalTx {
    LocalTx { ops: vec![op(n)], author: None }
}

fn workspace() -> (WorkspaceId, DeviceKey) {
    let founder = DeviceKey::from_secret_bytes(&[100; 32]);
    (WorkspaceId::derive(&founder.public_key(), &[0; 16]), founder)
}

fn device(
    dir: &TempDir,
    name: &str,
    ws: WorkspaceId,
    seed: u8,
    clock: &ManualClock,
) -> SqliteReplica {
    let opts = Options { clock: Arc::new(clock.clone()), ..Options::default() };
    SqliteReplica::create(
        dir.path().join(format!("{name}.shoal")),
        ws,
        Some(DeviceKey::from_secret_bytes(&[seed; 32])),
        opts,
    )
    .unwrap()
}

/// The entries a replica holds, without seals: seals are transport data, and replicas of one
/// log hold different ones (a device seals its tip when it hands its log out; a receiver keeps
/// the seals it was given).
fn oplog(r: &SqliteReplica) -> Vec<Entry> {
    r.history(None, 0, usize::MAX).unwrap().into_iter().map(|e| Entry { seal: None, ..e }).collect()
}

#[test]
fn local_appends_are_stamped_monotonically_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (ws, _) = workspace();
    let clock = ManualClock::new(1_000_000);
    let r = device(&dir, "a", ws, 1, &clock);
    let first =
        r.append_local(vec![LocalTx { ops: vec![op(1), op(2), op(3)], author: None }]).unwrap();
    assert_eq!(first[0].index, 0);
    assert_eq!(first[0].hlc, Hlc::from_millis(1_000_000));
    // The wall clock stalls, then steps back: timestamps still increase, past every op.
    let second = r.append_local(vec![tx(4)]).unwrap();
    assert_eq!(second[0].hlc, first[0].hlc.plus(3));
    clock.advance(-10_000);
    let third = r.append_local(vec![tx(5), tx(6)]).unwrap();
    assert!(third[0].hlc > second[0].hlc && third[1].hlc > third[0].hlc);
    let path = r.path().to_owned();
    drop(r);

    // The clock was persisted with the writes: after reopening, still monotonic.
    let r = SqliteReplica::open(
        &path,
        Options { clock: Arc::new(clock.clone()), ..Options::default() },
    )
    .unwrap();
    let fourth = r.append_local(vec![tx(7)]).unwrap();
    assert!(fourth[0].hlc > third[1].hlc);
    assert_eq!(fourth[0].index, 4);
    let log = r.read_page(r.own_origin().unwrap(), 0).unwrap();
    assert_eq!(log.len(), 5);
    assert!(log.last().unwrap().seal.is_some(), "read out, the log ends on a seal");
    assert_eq!(r.verify_all(|_| {}).unwrap(), 5);
}

#[tokio::test]
async fn apply_is_idempotent_and_contiguous() {
    let dir = tempfile::tempdir().unwrap();
    let (ws, _) = workspace();
    let clock = ManualClock::new(1_000_000);
    let a = device(&dir, "a", ws, 1, &clock);
    let b = device(&dir, "b", ws, 2, &clock);
    // Three transactions, each read out right after its commit: the device seals its tip
    // when it hands its log out, so each entry comes sealed and can be applied alone.
    let origin = a.own_origin().unwrap();
    let mut entries = Vec::new();
    for n in 0..3 {
        a.append_local(vec![tx(n)]).unwrap();
        entries.extend(a.read_page(origin, n).unwrap());
    }
    assert_eq!(entries.len(), 3);
    assert!(entries.iter().all(|e| e.seal.is_some()));
    // Read out later, only the tip of the same log is sealed: commits sign nothing.
    let later = a.read_page(origin, 0).unwrap();
    assert_eq!(later.iter().map(|e| e.seal.is_some()).collect::<Vec<_>>(), [false, false, true]);

    // index > cursor: a gap, and nothing changes.
    let err = b.apply(entries[1].clone()).await.unwrap_err();
    assert!(matches!(err, SyncError::Gap { expected: 0, got: 1, .. }), "{err}");
    assert_eq!(b.cursors().await.unwrap().get(&origin), 0);

    // index == cursor applies and advances; index < cursor is a harmless duplicate.
    assert_eq!(b.apply(entries[0].clone()).await.unwrap(), Applied { new: true });
    assert_eq!(b.apply(entries[0].clone()).await.unwrap(), Applied { new: false });
    assert_eq!(b.cursors().await.unwrap().get(&origin), 1);
    let out = b.apply_batch(origin, entries.clone()).await.unwrap();
    assert_eq!((out.new, out.duplicates, out.next), (2, 1, 3));
    let unsealed: Vec<Entry> = entries.iter().map(|e| Entry { seal: None, ..e.clone() }).collect();
    assert_eq!(oplog(&b), unsealed);
}

#[tokio::test]
async fn tampered_entries_are_rejected_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (ws, _) = workspace();
    let clock = ManualClock::new(1_000_000);
    let a = device(&dir, "a", ws, 1, &clock);
    let b = device(&dir, "b", ws, 2, &clock);
    a.append_local(vec![tx(1), tx(2)]).unwrap();
    let origin = a.own_origin().unwrap();
    let mut entries = a.read_page(origin, 0).unwrap();
    if let EntryBody::Live(p) = &mut entries[0].body {
        p.ops[0].body[0] ^= 0x40;
    }
    let err = b.apply_batch(origin, entries).await.unwrap_err();
    assert!(
        matches!(err, SyncError::Rejected { index: 1, reason: RejectReason::BadSignature, .. }),
        "{err}"
    );
    assert_eq!(b.cursors().await.unwrap().get(&origin), 0);
    assert!(oplog(&b).is_empty());
    let status = b.origin_status().unwrap();
    assert!(status[0].stalled.as_deref().unwrap().contains("rejected"), "{status:?}");
}

#[tokio::test]
async fn an_origin_stamped_too_far_ahead_stalls_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (ws, _) = workspace();
    let fast_clock = ManualClock::new(1_000_000 + 61_000);
    let clock = ManualClock::new(1_000_000);
    let fast = device(&dir, "fast", ws, 1, &fast_clock);
    let honest = device(&dir, "honest", ws, 2, &clock);
    let b = device(&dir, "b", ws, 3, &clock);
    // The workspace's genesis: until it arrives, a replica applies nothing of others.
    let founder = device(&dir, "founder", ws, 100, &clock);
    let genesis = shoal_core::control::ControlOp::genesis(workspace().1.public_key(), [0; 16]);
    founder.append_local(vec![LocalTx { ops: vec![genesis.to_op()], author: None }]).unwrap();
    pull(&founder, &b).await.unwrap();
    fast.append_local(vec![tx(1)]).unwrap();
    honest.append_local(vec![tx(2)]).unwrap();

    let mut report = pull(&fast, &b).await.unwrap();
    report.stalled.extend(pull(&honest, &b).await.unwrap().stalled);
    assert_eq!(report.stalled.len(), 1);
    assert!(matches!(report.stalled[0].1, SyncError::ClockSkew { index: 0, .. }));
    let cursors = b.cursors().await.unwrap();
    assert_eq!(cursors.get(&fast.own_origin().unwrap()), 0, "the fast origin stalls");
    assert_eq!(cursors.get(&honest.own_origin().unwrap()), 1, "the others keep syncing");
    let status = b.origin_status().unwrap();
    let stalled = status.iter().find(|s| s.origin == fast.own_origin().unwrap()).unwrap();
    assert!(
        stalled.stalled.as_deref().unwrap().contains("ahead of the local clock"),
        "{stalled:?}"
    );

    // Once the local clock catches up, the origin resumes and the stall clears.
    clock.advance(2_000);
    pull(&fast, &b).await.unwrap();
    assert_eq!(b.cursors().await.unwrap().get(&fast.own_origin().unwrap()), 1);
    assert!(b.origin_status().unwrap().iter().all(|s| s.stalled.is_none()));
}

#[tokio::test]
async fn long_transactions_are_sealed_often_enough_to_page() {
    let dir = tempfile::tempdir().unwrap();
    let (ws, _) = workspace();
    let clock = ManualClock::new(1_000_000);
    let a = device(&dir, "a", ws, 1, &clock);
    let b = device(&dir, "b", ws, 2, &clock);
    a.append_local((0..10_000).map(tx).collect()).unwrap();
    let origin = a.own_origin().unwrap();
    let page = a.read_page(origin, 0).unwrap();
    assert!(page.len() >= shoal_sqlite::PAGE_ENTRIES && page.len() < 10_000);
    assert!(page.last().unwrap().seal.is_some());
    let report = pull(&a, &b).await.unwrap();
    assert_eq!(report.new, 10_000);
    assert_eq!(oplog(&a), oplog(&b));
}

#[test]
fn files_that_are_not_workspaces_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "this is not a database, just some text that is long enough ".repeat(20))
        .unwrap();
    let err = SqliteReplica::open(&text, Options::default()).unwrap_err();
    assert!(matches!(err, OpenError::NotADatabase { .. }), "{err:?}");
    assert!(
        err.to_string().contains("notes.txt") && err.to_string().contains("not an SQLite database"),
        "{err}"
    );

    let other = dir.path().join("other.db");
    let conn = rusqlite::Connection::open(&other).unwrap();
    conn.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);").unwrap();
    drop(conn);
    let err = SqliteReplica::open(&other, Options::default()).unwrap_err();
    assert!(matches!(err, OpenError::NotAWorkspace { .. }), "{err:?}");
    assert!(err.to_string().contains("other.db"), "{err}");

    let missing = dir.path().join("missing.shoal");
    let err = SqliteReplica::open(&missing, Options::default()).unwrap_err();
    assert!(matches!(err, OpenError::Missing { .. }), "{err:?}");
    assert!(!missing.exists(), "opening must not create a file");
}

#[test]
fn a_newer_format_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (ws, _) = workspace();
    let clock = ManualClock::new(1_000_000);
    let path = device(&dir, "a", ws, 1, &clock).path().to_owned();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", shoal_sqlite::FORMAT_VERSION + 1).unwrap();
    drop(conn);
    let err = SqliteReplica::open(&path, Options::default()).unwrap_err();
    assert!(matches!(err, OpenError::NewerFormat { found: 4, supported: 3, .. }), "{err:?}");
    assert!(
        err.to_string().contains("a.shoal") && err.to_string().contains("newer Shoal"),
        "{err}"
    );
}

/// A file of entry format 1 cannot be converted (its hashes and signatures are v1's): it is
/// refused by name, saying what to do, before anything is written.
#[test]
fn a_format_1_file_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let (ws, _) = workspace();
    let clock = ManualClock::new(1_000_000);
    let path = device(&dir, "a", ws, 1, &clock).path().to_owned();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 1).unwrap();
    drop(conn);
    let before = std::fs::read(&path).unwrap();
    let err = SqliteReplica::open(&path, Options::default()).unwrap_err();
    assert!(
        matches!(err, OpenError::OlderFormat { found: 1, supported: FORMAT_VERSION, .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("a.shoal") && text.contains("earlier Shoal"), "{text}");
    assert!(text.contains("create or join the workspace anew"), "{text}");
    assert_eq!(std::fs::read(&path).unwrap(), before, "nothing written");
}

/// Format 2 kept the device key inside the workspace file: refused, saying why.
#[test]
fn a_format_2_file_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let (ws, _) = workspace();
    let clock = ManualClock::new(1_000_000);
    let path = device(&dir, "a", ws, 1, &clock).path().to_owned();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 2).unwrap();
    drop(conn);
    let err = SqliteReplica::open(&path, Options::default()).unwrap_err();
    assert!(matches!(err, OpenError::OlderFormat { found: 2, .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("a.shoal") && text.contains("key file"), "{text}");
}

#[tokio::test]
async fn a_corrupted_oplog_row_is_an_error_naming_file_origin_and_index() {
    let dir = tempfile::tempdir().unwrap();
    let (ws, _) = workspace();
    let clock = ManualClock::new(1_000_000);
    let a = device(&dir, "a", ws, 1, &clock);
    a.append_local(vec![tx(1), tx(2)]).unwrap();
    let origin = a.own_origin().unwrap();
    let conn = rusqlite::Connection::open(a.path()).unwrap();
    conn.execute("UPDATE shoal_oplog SET payload = x'ff' WHERE id & 0xffffffffff = 1", []).unwrap();
    drop(conn);
    let err = a.read_since(origin, 0).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, SyncError::Malformed { .. }), "{err:?}");
    assert!(msg.contains("a.shoal") && msg.contains(&format!("{origin}#1")), "{msg}");
    assert!(a.verify_all(|_| {}).is_err());
    // Other reads still work.
    assert_eq!(a.cursors().await.unwrap().get(&origin), 2);
}

#[tokio::test]
async fn a_slow_watcher_observes_the_final_cursors() {
    let dir = tempfile::tempdir().unwrap();
    let (ws, _) = workspace();
    let clock = ManualClock::new(1_000_000);
    let a = device(&dir, "a", ws, 1, &clock);
    let mut watch = a.watch_cursors();
    assert_eq!(watch.next().await, Some(CursorsEvent::Snapshot(PeerCursors::new())));
    for n in 0..200 {
        a.append_local(vec![tx(n)]).unwrap();
    }
    let mut seen = PeerCursors::new();
    while seen.get(&a.own_origin().unwrap()) < 200 {
        match watch.next().await {
            Some(CursorsEvent::Advanced(d)) | Some(CursorsEvent::Snapshot(d)) => seen.merge(&d),
            None => panic!("stream ended"),
        }
    }
    assert_eq!(seen, a.cursors().await.unwrap());
}

#[tokio::test]
async fn commits_by_another_process_reach_watchers() {
    let dir = tempfile::tempdir().unwrap();
    let (ws, _) = workspace();
    let clock = ManualClock::new(1_000_000);
    let a = device(&dir, "a", ws, 1, &clock);
    // A second handle on the same file stands for another process: it shares nothing in
    // memory with the first.
    let other = SqliteReplica::open(
        a.path(),
        Options { clock: Arc::new(clock.clone()), ..Options::default() },
    )
    .unwrap();
    let mut watch = a.watch_cursors();
    watch.next().await;
    other.append_local(vec![tx(1)]).unwrap();
    let event =
        tokio::time::timeout(std::time::Duration::from_secs(5), watch.next()).await.unwrap();
    let Some(CursorsEvent::Advanced(d)) = event else { panic!("{event:?}") };
    assert_eq!(d.get(&a.own_origin().unwrap()), 1);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// Five replicas append at random and pull from each other in random order; after a
    /// final exchange every replica holds the same oplog and cursors, and a watcher started
    /// at the beginning has seen the final cursors.
    #[test]
    fn five_replicas_converge(steps in proptest::collection::vec((0usize..5, 0usize..5, 0u64..4), 10..60)) {
        let rt = runtime();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let (ws, _) = workspace();
            let clock = ManualClock::new(1_000_000);
            let replicas: Vec<SqliteReplica> =
                (0..5).map(|i| device(&dir, &format!("r{i}"), ws, i as u8 + 1, &clock)).collect();
            let mut watches: Vec<_> = replicas.iter().map(|r| r.watch_cursors()).collect();
            for (i, (a, b, n)) in steps.into_iter().enumerate() {
                clock.advance(1);
                if n > 0 {
                    replicas[a].append_local((0..n).map(|k| tx(i as u64 * 10 + k)).collect()).unwrap();
                }
                if a != b {
                    let report = pull(&replicas[a], &replicas[b]).await.unwrap();
                    assert!(report.stalled.is_empty(), "{:?}", report.stalled);
                }
            }
            for _ in 0..2 {
                for a in 0..5 {
                    for b in 0..5 {
                        if a != b {
                            pull(&replicas[a], &replicas[b]).await.unwrap();
                        }
                    }
                }
            }
            let expected = oplog(&replicas[0]);
            let cursors = replicas[0].cursors().await.unwrap();
            for r in &replicas[1..] {
                assert_eq!(oplog(r), expected);
                assert_eq!(r.cursors().await.unwrap(), cursors);
            }
            for w in &mut watches {
                let mut seen = PeerCursors::new();
                while seen != cursors {
                    match tokio::time::timeout(std::time::Duration::from_secs(5), w.next()).await {
                        Ok(Some(CursorsEvent::Snapshot(c) | CursorsEvent::Advanced(c))) => seen.merge(&c),
                        other => panic!("watcher ended before the final cursors: {other:?}"),
                    }
                }
            }
        });
    }
}
