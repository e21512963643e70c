//! A device that syncs with a shared folder and a relay carries the relay's entries into the
//! folder (DESIGN §9): real workspaces (SQLite), a real folder, and a real relay on a
//! loopback socket. A folder-only device then sees a relay-only device's writes; entries
//! are carried once (a second bridge carries nothing); every copy keeps origin and index.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::sync::Arc;

use shoal::core::store::MemoryLogStore;
use shoal::filelog::layout::Layout;
use shoal::relay::frame::RelayId;
use shoal::relay::server::{Relay, RelayConfig};
use shoal::*;

async fn start_relay() -> String {
    let store = Arc::new(MemoryLogStore::new());
    let relay = Relay::new(store, RelayConfig::new(RelayId([1; 32])));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { relay.serve(listener, std::future::pending()).await });
    url
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

/// Entries of `origin` in carried copies, per carrier.
fn carried(folder: &std::path::Path, ws: &Workspace, origin: &shoal::core::PeerId) -> Vec<u64> {
    let layout = Layout::new(folder, ws.id());
    layout
        .carriers_of(origin)
        .unwrap()
        .iter()
        .map(|c| layout.carried_files(c, origin).unwrap().iter().map(|f| f.name.len()).sum())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_only_device_sees_a_relay_only_device_through_a_bridge_once() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("shared");
    std::fs::create_dir(&folder).unwrap();
    let url = start_relay().await;

    // a: folder only; bridge and bridge2: folder and relay; c: relay only.
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
    put(&c, "c1", "written on the relay side");
    put(&c, "c2", "and again");
    c.sync_server(&url).await.unwrap();
    let c_origin = c.device().unwrap();
    let c_entries = c.cursors().await.unwrap().get(&c_origin);
    assert!(c_entries > 0);

    // The bridge takes c's entries from the relay and carries them into the folder.
    bridge.sync_server(&url).await.unwrap();
    let synced = bridge.sync_folder(&folder).await.unwrap();
    assert_eq!(synced.report.carried, c_entries, "{:?}", synced.report);
    assert!(synced.status.in_sync(), "{:?}", synced.status);
    assert_eq!(carried(&folder, &c, &c_origin), vec![c_entries]);
    // Never in c's own directory: only c writes that.
    assert!(!Layout::new(&folder, a.id()).origin_dir(&c_origin).exists());

    // The folder-only device sees c's writes.
    let seen = a.sync_folder(&folder).await.unwrap();
    assert!(seen.status.in_sync(), "{:?}", seen.status);
    assert_eq!(rows(&a), rows(&c));
    assert_eq!(a.cursors().await.unwrap().get(&c_origin), c_entries);

    // A second bridge finds them in the folder already: it carries nothing of c's.
    let bridge2 =
        Workspace::join(dir.path().join("bridge2.shoal"), a.id(), Default::default()).unwrap();
    bridge2.sync_server(&url).await.unwrap();
    assert_eq!(bridge2.cursors().await.unwrap().get(&c_origin), c_entries);
    let second = bridge2.sync_folder(&folder).await.unwrap();
    assert_eq!(carried(&folder, &c, &c_origin), vec![c_entries], "{:?}", second.report);
    // Nor does the first bridge again.
    assert_eq!(bridge.sync_folder(&folder).await.unwrap().report.carried, 0);

    // No loop: what a wrote reaches c through the relay, and nothing comes back twice.
    put(&a, "a2", "again on the folder side");
    a.sync_folder(&folder).await.unwrap();
    bridge.sync_folder(&folder).await.unwrap();
    bridge.sync_server(&url).await.unwrap();
    c.sync_server(&url).await.unwrap();
    assert_eq!(rows(&c), rows(&a));
    let again = bridge.sync_folder(&folder).await.unwrap();
    assert_eq!(again.report.carried, 0, "{:?}", again.report);
    assert_eq!(carried(&folder, &c, &c_origin), vec![c_entries]);
    let a_origin = a.device().unwrap();
    assert!(carried(&folder, &c, &a_origin).is_empty(), "a's own log is never carried");
}
