//! The one ingest path from the outside: an entry that one device cannot apply stalls only
//! its origin — it is stored, its reason shows in `status` and in the sync's own status, and
//! every other origin keeps syncing in the same pass. Also: a forged genesis is rejected.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::path::Path;
use std::sync::Arc;

use shoal::core::{DeviceKey, Domain, Op, PeerId};
use shoal::filelog::{Config, Mirror};
use shoal::sqlite::{LocalTx, Options, SqliteReplica};
use shoal::tables::{CellWrite, ColumnId, RowKey, TableId, TableOp};
use shoal::*;

fn spec() -> TableSpec {
    TableSpec::new("todo").key("id", ColumnType::Text).column("title", ColumnType::Text)
}

fn put(ws: &Workspace, id: &str, title: &str) {
    let mut tx = ws.transaction().unwrap();
    tx.put("todo", &[("id", Value::text(id).unwrap()), ("title", Value::text(title).unwrap())])
        .unwrap();
    tx.commit().unwrap();
}

/// A device that writes raw entries to its own log, as a buggy, newer or hostile device
/// would: its entries are validly signed; only their contents are what they are. Its replica
/// keeps a pure log, so it applies nothing itself.
struct RawDevice {
    replica: SqliteReplica,
    key: DeviceKey,
}

impl RawDevice {
    fn new(path: &Path, ws: &Workspace) -> RawDevice {
        Self::with_clock(path, ws, Arc::new(shoal::core::SystemClock))
    }

    fn with_clock(
        path: &Path,
        ws: &Workspace,
        clock: Arc<dyn shoal::core::WallClock>,
    ) -> RawDevice {
        let key = DeviceKey::generate().unwrap();
        let options = Options { clock, ..Options::default() };
        let replica = SqliteReplica::create(path, ws.id(), Some(key.clone()), options).unwrap();
        RawDevice { replica, key }
    }

    fn write(&self, ops: Vec<Op>) {
        self.replica.append_local(vec![LocalTx { ops, author: None }]).unwrap();
    }

    fn origin(&self) -> PeerId {
        self.replica.own_origin().unwrap()
    }

    /// Writes the device's log into the folder as a segment file directly, as a hostile
    /// device would (Shoal's own sink refuses to publish what the ingest pipeline rejects).
    async fn publish_raw(&self, folder: &Path) {
        use shoal::core::{ChainPosition, LogSource};
        use shoal::filelog::segment::{Compression, Segment};
        let ws = self.replica.workspace();
        let entries = self.replica.read_since(self.origin(), 0).await.unwrap();
        let start = ChainPosition::start(&ws, &self.origin());
        let seg = Segment::new(ws, start, entries).unwrap();
        let dir = folder.join(ws.to_hex()).join(self.origin().to_hex());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(seg.name().file_name()), seg.encode(Compression::None)).unwrap();
    }

    async fn sync(&self, folder: &Path) {
        let ws = self.replica.workspace();
        let mirror = Mirror::open(
            folder,
            ws,
            self.key.clone(),
            Arc::new(self.replica.clone()),
            Config::default(),
        );
        mirror.sync_once().await.unwrap();
    }
}

fn put_op(table: &str, id: &str, title: &str) -> Op {
    let table = TableId::from_name(table);
    let key = RowKey::from_values(&[Value::text(id).unwrap()]).unwrap();
    let cells =
        vec![(ColumnId::from_name(table, "title"), CellWrite::Set(Value::text(title).unwrap()))];
    TableOp::Put { table, key, cells }.to_op().unwrap()
}

fn rows(ws: &Workspace) -> Vec<Vec<Value>> {
    ws.query("SELECT id, title FROM todo ORDER BY id", &[]).unwrap().rows
}

fn stall_of(ws: &Workspace, origin: PeerId) -> Option<String> {
    ws.status().unwrap().origins.into_iter().find(|o| o.origin == origin).and_then(|o| o.stalled)
}

struct Devices {
    _dir: tempfile::TempDir,
    folder: std::path::PathBuf,
    a: Workspace,
    b: Workspace,
    bad: RawDevice,
}

fn devices() -> Devices {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("shared");
    std::fs::create_dir(&folder).unwrap();
    let p = |n: &str| dir.path().join(n);
    let a = Workspace::create(p("a.shoal"), WorkspaceOptions::default()).unwrap();
    let b = Workspace::join(p("b.shoal"), a.id(), WorkspaceOptions::default()).unwrap();
    let bad = RawDevice::new(&p("bad.shoal"), &a);
    a.declare(&spec()).unwrap();
    b.declare(&spec()).unwrap();
    Devices { _dir: dir, folder, a, b, bad }
}

async fn sync_all(d: &Devices, folder: &Path) {
    for ws in [&d.a, &d.b, &d.a, &d.b] {
        ws.sync_folder(folder).await.unwrap();
    }
}

/// An op the receiver cannot apply — of a newer version's table kind, a malformed body, a
/// control kind it does not know — stalls that origin at that entry, on every receiver,
/// while the others converge in the same passes.
#[tokio::test]
async fn an_entry_that_cannot_be_applied_stalls_only_its_origin() {
    let cases: Vec<(&str, Op)> = vec![
        ("needs a newer Shoal", Op { domain: Domain::TABLES, kind: 200, body: vec![] }),
        ("malformed", Op { domain: Domain::TABLES, kind: 1, body: vec![0xff; 3] }),
        ("control op of kind 77", Op { domain: Domain::CONTROL, kind: 77, body: vec![] }),
        ("domain 9", Op { domain: Domain(9), kind: 1, body: vec![1] }),
    ];
    for (expect, op) in cases {
        let d = devices();
        put(&d.a, "1", "from a, before");
        d.bad.write(vec![op]);
        d.bad.write(vec![put_op("todo", "9", "from bad, after its bad entry")]);
        d.bad.sync(&d.folder).await;
        d.a.sync_folder(&d.folder).await.unwrap();
        put(&d.b, "2", "from b");
        sync_all(&d, &d.folder).await;
        put(&d.a, "3", "from a, after");
        d.bad.sync(&d.folder).await;
        sync_all(&d, &d.folder).await;

        let want: Vec<Vec<Value>> =
            [("1", "from a, before"), ("2", "from b"), ("3", "from a, after")]
                .iter()
                .map(|(i, t)| vec![Value::text(*i).unwrap(), Value::text(*t).unwrap()])
                .collect();
        assert_eq!(rows(&d.a), want, "{expect}: a has everyone else's rows");
        assert_eq!(rows(&d.b), want, "{expect}: b has everyone else's rows");
        let bad = d.bad.origin();
        for ws in [&d.a, &d.b] {
            let reason = stall_of(ws, bad).unwrap_or_else(|| panic!("{expect}: no stall shown"));
            assert!(reason.contains(expect), "{expect}: {reason}");
            // The bad entry (index 0) and the one after it are stored (and forwarded), not
            // applied.
            let st = ws.status().unwrap();
            let o = st.origins.iter().find(|o| o.origin == bad).unwrap();
            assert_eq!((o.next, o.materialized), (2, 0), "{expect}: {o:?}");
            // The sync itself says so, and does not call itself in sync.
            let out = ws.sync_folder(&d.folder).await.unwrap();
            assert!(!out.status.in_sync(), "{expect}");
            assert!(
                out.status.stalled.iter().any(|s| s.origin == bad && s.reason.contains(expect))
            );
        }
    }
}

/// A put of 2,000 one-byte cells on an undeclared table (within the op format's limit) is
/// stored by every receiver and never stops anyone else's sync.
#[tokio::test]
async fn a_very_wide_put_never_stops_the_sync_of_others() {
    let d = devices();
    put(&d.a, "1", "from a");
    let table = TableId::from_name("wide");
    let cells: Vec<(ColumnId, CellWrite)> = (0..2000)
        .map(|i| (ColumnId::from_name(table, &format!("c{i}")), CellWrite::Set(Value::Integer(1))))
        .collect();
    let key = RowKey::from_values(&[Value::Integer(1)]).unwrap();
    let op = TableOp::Put { table, key, cells }.to_op().unwrap();
    d.bad.write(vec![op]);
    d.bad.sync(&d.folder).await;
    put(&d.b, "2", "from b");
    sync_all(&d, &d.folder).await;
    let want: Vec<Vec<Value>> = [("1", "from a"), ("2", "from b")]
        .iter()
        .map(|(i, t)| vec![Value::text(*i).unwrap(), Value::text(*t).unwrap()])
        .collect();
    assert_eq!(rows(&d.a), want);
    assert_eq!(rows(&d.b), want);
    let bad = d.bad.origin();
    for ws in [&d.a, &d.b] {
        let st = ws.status().unwrap();
        let o = st.origins.iter().find(|o| o.origin == bad).unwrap();
        assert_eq!(o.next, 1, "the wide entry is stored");
        // And applied: the sharded layout holds any number of columns.
        assert_eq!((o.materialized, o.stalled.as_deref()), (1, None), "{o:?}");
    }
}

/// A genesis claiming this workspace with another key, or a second genesis, never enters.
#[tokio::test]
async fn a_forged_genesis_is_rejected_and_others_keep_syncing() {
    let d = devices();
    put(&d.a, "1", "from a");
    // `bad` claims to found the workspace: its key and some salt cannot derive the id.
    let forged = shoal::core::control::ControlOp::genesis(
        shoal::core::DeviceKey::generate().unwrap().public_key(),
        [7; 16],
    );
    d.bad.write(vec![forged.to_op()]);
    d.bad.publish_raw(&d.folder).await;
    put(&d.b, "2", "from b");
    sync_all(&d, &d.folder).await;
    assert_eq!(rows(&d.a).len(), 2);
    assert_eq!(rows(&d.b).len(), 2);
    let bad = d.bad.origin();
    for ws in [&d.a, &d.b] {
        let reason = stall_of(ws, bad).unwrap();
        assert!(reason.contains("genesis"), "{reason}");
        // The sync names where the forged entry came from: the forger's directory.
        let out = ws.sync_folder(&d.folder).await.unwrap();
        let shown = out.status.stalled.iter().find(|s| s.origin == bad).unwrap();
        let dir = d.folder.join(ws.id().to_hex()).join(bad.to_hex());
        assert!(shown.reason.contains(&dir.display().to_string()), "{}", shown.reason);
        assert!(shown.reason.contains("genesis"), "{}", shown.reason);
        let st = ws.status().unwrap();
        let next = st.origins.iter().find(|o| o.origin == bad).map_or(0, |o| o.next);
        assert_eq!(next, 0, "nothing of the forger is stored");
    }
}

/// A stall on an entry that cannot be applied is not hidden by a lesser reason found later
/// (an entry of the same origin stamped too far ahead): `status` keeps saying that entries
/// are not applied, and why.
#[tokio::test]
async fn a_later_lesser_stop_does_not_hide_that_entries_are_not_applied() {
    let mut d = devices();
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
            as u64;
    let clock = shoal::core::ManualClock::new(now);
    d.bad = RawDevice::with_clock(&d._dir.path().join("bad2.shoal"), &d.a, Arc::new(clock.clone()));
    d.bad.write(vec![Op { domain: Domain::TABLES, kind: 200, body: vec![] }]);
    d.bad.sync(&d.folder).await;
    d.a.sync_folder(&d.folder).await.unwrap();
    let bad = d.bad.origin();
    let first = stall_of(&d.a, bad).unwrap();
    assert!(first.contains("needs a newer Shoal"), "{first}");
    // Ten minutes ahead of every wall clock: refused by receivers as skewed.
    clock.set(now + 600_000);
    d.bad.write(vec![put_op("todo", "9", "from the future")]);
    d.bad.sync(&d.folder).await;
    d.a.sync_folder(&d.folder).await.unwrap();
    let after = stall_of(&d.a, bad).unwrap();
    assert!(after.contains("needs a newer Shoal"), "still the first reason: {after}");
}
