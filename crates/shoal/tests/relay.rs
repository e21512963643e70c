//! Sync through a relay from the library (DESIGN §9): real workspaces (SQLite) and a real
//! relay on a loopback socket. Devices converge through it alone, and through a relay and
//! a folder at once (each entry carried once); an invited device joins through the relay;
//! a removed device is refused; an encrypted workspace's relay holds no plaintext; a
//! copied device finds its fork at the relay; pull-only and dry runs move what they say.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::sync::Arc;

use shoal::core::control::Role;
use shoal::core::store::{LogStore, MemoryLogStore};
use shoal::relay::frame::RelayId;
use shoal::relay::server::{Relay, RelayConfig};
use shoal::*;

const CANARY: &str = "CANARY-41c9-relay-plaintext";

async fn start_relay() -> (String, Arc<MemoryLogStore>) {
    let store = Arc::new(MemoryLogStore::new());
    let relay = Relay::new(store.clone(), RelayConfig::new(RelayId([7; 32])));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { relay.serve(listener, std::future::pending()).await });
    (url, store)
}

fn spec() -> TableSpec {
    TableSpec::new("notes").key("id", ColumnType::Text).column("body", ColumnType::Text)
}

fn put(ws: &Workspace, id: &str, body: &str) {
    let mut tx = ws.transaction().unwrap();
    tx.put("notes", &[("id", Value::text(id).unwrap()), ("body", Value::text(body).unwrap())])
        .unwrap();
    tx.commit().unwrap();
}

fn rows(ws: &Workspace) -> Vec<Vec<Value>> {
    ws.query("SELECT id, body FROM notes ORDER BY id", &[]).map(|r| r.rows).unwrap_or_default()
}

fn members_only(encrypted: bool) -> WorkspaceOptions {
    WorkspaceOptions { members_only: true, encrypted, ..Default::default() }
}

/// An admin and a device it invited, both synced through the relay.
async fn pair(dir: &std::path::Path, url: &str, encrypted: bool) -> (Workspace, Workspace) {
    let admin = Workspace::create(dir.join("admin.shoal"), members_only(encrypted)).unwrap();
    admin.declare(&spec()).unwrap();
    put(&admin, "a1", &format!("{CANARY} from the admin"));
    let code = admin.invite(Role::Member, None, 1, url).unwrap();
    admin.sync_server(url).await.unwrap();
    let b = Workspace::join_with_code(dir.join("b.shoal"), &code, Default::default()).unwrap();
    // The first pass pushes the join; the relay then counts b as a member and serves it.
    let first = b.sync_server(url).await.unwrap();
    assert!(first.member, "the join made b a member at the relay: {first:?}");
    b.sync_server(url).await.unwrap();
    (admin, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invited_device_joins_and_converges_through_the_relay_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _) = start_relay().await;
    let (admin, b) = pair(dir.path(), &url, false).await;
    assert_eq!(rows(&b), rows(&admin));
    put(&b, "b1", "from b");
    put(&admin, "a2", "from the admin again");
    let s = b.sync_server(&url).await.unwrap();
    assert!(s.relay_has_everything, "{s:?}");
    admin.sync_server(&url).await.unwrap();
    b.sync_server(&url).await.unwrap();
    assert_eq!(rows(&b), rows(&admin));
    assert_eq!(rows(&b).len(), 3);
    assert_eq!(admin.cursors().await.unwrap(), b.cursors().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_on_a_folder_and_a_relay_carries_entries_between_them_once() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("shared");
    std::fs::create_dir(&folder).unwrap();
    let (url, store) = start_relay().await;
    // a: folder only; bridge: folder and relay; c: relay only.
    let a = Workspace::create(dir.path().join("a.shoal"), WorkspaceOptions::default()).unwrap();
    a.declare(&spec()).unwrap();
    put(&a, "a1", "written on the folder side");
    a.sync_folder(&folder).await.unwrap();
    let bridge =
        Workspace::join(dir.path().join("bridge.shoal"), a.id(), Default::default()).unwrap();
    bridge.sync_folder(&folder).await.unwrap();
    bridge.sync_server(&url).await.unwrap();
    let c = Workspace::join(dir.path().join("c.shoal"), a.id(), Default::default()).unwrap();
    c.sync_server(&url).await.unwrap();
    assert_eq!(rows(&c), rows(&a), "a's entries reached c through the bridge");
    // Again: the bridge takes c's join and pushes nothing it pushed before.
    let again = bridge.sync_server(&url).await.unwrap();
    assert_eq!(again.pushed, 0, "{again:?}");
    let again = bridge.sync_server(&url).await.unwrap();
    assert_eq!((again.pushed, again.pulled), (0, 0), "{again:?}");
    let stored = store.heads(a.id()).await.unwrap();
    let total: u64 = stored.iter().map(|(_, h)| h.next).sum();
    assert_eq!(total, bridge.cursors().await.unwrap().total(), "each entry stored once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_workspace_leaves_no_plaintext_at_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let (url, store) = start_relay().await;
    let (admin, b) = pair(dir.path(), &url, true).await;
    assert_eq!(rows(&b), rows(&admin), "b reads the admin's encrypted rows");
    let mut bytes = Vec::new();
    for (origin, head) in store.heads(admin.id()).await.unwrap() {
        for e in store.read(admin.id(), origin, 0, usize::MAX).await.unwrap() {
            assert!(e.index < head.next);
            bytes.extend(shoal::core::codec::Encode::to_bytes(&e));
        }
    }
    assert!(!bytes.is_empty());
    let needle = CANARY.as_bytes();
    assert!(!bytes.windows(needle.len()).any(|w| w == needle), "the relay holds plaintext");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_device_is_refused_by_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _) = start_relay().await;
    let (admin, b) = pair(dir.path(), &url, false).await;
    admin.sync_server(&url).await.unwrap();
    admin.remove_device(b.device().unwrap()).unwrap();
    admin.sync_server(&url).await.unwrap();
    let err = b.sync_server(&url).await.unwrap_err().to_string();
    assert!(err.contains("removed"), "{err}");
    assert!(err.contains(&b.device().unwrap().to_hex()), "names the device: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_device_finds_its_fork_at_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _) = start_relay().await;
    let a = Workspace::create(dir.path().join("a.shoal"), WorkspaceOptions::default()).unwrap();
    a.declare(&spec()).unwrap();
    a.sync_server(&url).await.unwrap();
    drop(a);
    // The file with its write-ahead log and its key, as a user copying a device would.
    for suffix in ["", "-wal", ".key"] {
        let from = dir.path().join(format!("a.shoal{suffix}"));
        if from.exists() {
            std::fs::copy(&from, dir.path().join(format!("copy.shoal{suffix}"))).unwrap();
        }
    }
    let a = Workspace::open(dir.path().join("a.shoal"), Default::default()).unwrap();
    let copy = Workspace::open(dir.path().join("copy.shoal"), Default::default()).unwrap();
    put(&a, "x-original", "from the original");
    a.sync_server(&url).await.unwrap();
    put(&copy, "x-copy", "from the copy");
    let err = copy.sync_server(&url).await.unwrap_err();
    assert!(matches!(err, Error::Sync(shoal::core::SyncError::Forked { .. })), "{err}");
    assert!(copy.fork().unwrap().is_some(), "the fork is recorded");
    // Recovered against the relay's copy: the copy writes on under a new key, its write
    // re-issued, and every device ends with both writes, once.
    let (copy, rec) = copy.recover_fork_at_relay(&url).await.unwrap();
    assert_eq!(rec.succession.reissued, 1, "{rec:?}");
    copy.sync_server(&url).await.unwrap();
    a.sync_server(&url).await.unwrap();
    copy.sync_server(&url).await.unwrap();
    let ids = |ws: &Workspace| rows(ws).into_iter().map(|r| r[0].clone()).collect::<Vec<_>>();
    let both = vec![Value::text("x-copy").unwrap(), Value::text("x-original").unwrap()];
    assert_eq!(ids(&a), both);
    assert_eq!(ids(&copy), both);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_only_never_pushes_push_only_never_pulls_and_a_dry_run_moves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (url, store) = start_relay().await;
    let a = Workspace::create(dir.path().join("a.shoal"), WorkspaceOptions::default()).unwrap();
    a.declare(&spec()).unwrap();
    put(&a, "a1", "one");
    let dry = RelayOptions { dry_run: true, ..Default::default() };
    // Not known to the relay yet: the founder may push its genesis only; a dry run says so.
    let s = a.sync_server_with(&url, dry).await.unwrap();
    assert!(s.would_push > 0 && s.pushed == 0, "{s:?}");
    assert!(store.heads(a.id()).await.unwrap().is_empty(), "a dry run moved nothing");
    a.sync_server(&url).await.unwrap();

    let mirror = Workspace::join(dir.path().join("m.shoal"), a.id(), Default::default()).unwrap();
    let pull_only = RelayOptions { direction: Direction::PullOnly, ..Default::default() };
    let s = mirror.sync_server_with(&url, pull_only).await.unwrap();
    assert!(s.pulled > 0 && s.pushed == 0, "{s:?}");
    assert_eq!(rows(&mirror), rows(&a));
    let m = mirror.device().unwrap();
    assert!(
        !store.heads(a.id()).await.unwrap().iter().any(|(o, _)| *o == m),
        "a pull-only device never pushed, not even its first entry"
    );

    put(&a, "a2", "two");
    let push_only = RelayOptions { direction: Direction::PushOnly, ..Default::default() };
    let b = Workspace::join(dir.path().join("b.shoal"), a.id(), Default::default()).unwrap();
    b.declare(&spec()).unwrap();
    put(&b, "b1", "b");
    let s = b.sync_server_with(&url, push_only).await.unwrap();
    assert!(s.pushed > 0 && s.pulled == 0, "{s:?}");
    assert!(rows(&b).iter().all(|r| r[0] == Value::text("b1").unwrap()), "b pulled nothing");
}

/// Waits up to `secs` for `f` to hold, checking every 20 ms.
async fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    f()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_devices_see_each_others_writes_live_not_at_the_next_poll() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _) = start_relay().await;
    let (admin, b) = pair(dir.path(), &url, false).await;
    let mut stops = Vec::new();
    for ws in [admin.clone(), b.clone()] {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        stops.push(stop);
        let url = url.clone();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            ws.watch_server(&url, RelayOptions::default(), |_| {}, shutdown).await
        });
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // The loops poll every 10 s: seeing a write within 3 s is the relay's live hint.
    for i in 0..3 {
        put(&admin, &format!("live-a{i}"), "from the admin");
        let id = Value::text(format!("live-a{i}")).unwrap();
        assert!(eventually(3, || rows(&b).iter().any(|r| r[0] == id)).await, "b sees a{i}");
        put(&b, &format!("live-b{i}"), "from b");
        let id = Value::text(format!("live-b{i}")).unwrap();
        assert!(eventually(3, || rows(&admin).iter().any(|r| r[0] == id)).await, "admin sees b{i}");
    }
    drop(stops);
}

/// `GET path` on the relay at `url` (ws://host:port/...), the body as text.
async fn http_get(url: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = url.trim_start_matches("ws://").split('/').next().unwrap();
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_connections_entries_and_how_far_behind_each_workspace_is() {
    let dir = tempfile::tempdir().unwrap();
    let (url, store) = start_relay().await;
    let (admin, b) = pair(dir.path(), &url, false).await;
    assert!(http_get(&url, "/healthz").await.ends_with("ok\n"));
    // b stays connected after a pass; the admin then writes three entries.
    let remote = b.connect_relay(&url).await.unwrap();
    b.relay_pass(&remote, RelayOptions::default()).await.unwrap();
    for i in 0..3 {
        put(&admin, &format!("late{i}"), "x");
    }
    admin.sync_server(&url).await.unwrap();
    // What b lacks: the three writes, and whatever the admin's pass wrote (acks).
    let held = b.cursors().await.unwrap();
    let behind: u64 =
        store.heads(admin.id()).await.unwrap().iter().map(|(o, h)| h.next - held.get(o)).sum();
    assert!(behind >= 3);
    let metrics = http_get(&url, "/metrics").await;
    // (b's position was reported before the admin wrote: no race here.)
    let lag = format!(
        "shoal_relay_workspace_lag_entries{{workspace=\"{}\"}} {behind}",
        admin.id().to_hex()
    );
    assert!(metrics.contains(&lag), "{metrics}");
    assert!(metrics.contains("shoal_relay_connections 1"), "{metrics}");
    assert!(metrics.contains("shoal_relay_entries_total{direction=\"in\"}"), "{metrics}");
    // b catches up: its lag is 0 (once the relay has read b's position, a notice sent
    // after the pass).
    b.relay_pass(&remote, RelayOptions::default()).await.unwrap();
    let lag =
        format!("shoal_relay_workspace_lag_entries{{workspace=\"{}\"}} 0", admin.id().to_hex());
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = http_get(&url, "/metrics").await;
        if metrics.contains(&lag) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("{metrics}");
}
