//! A wrong clock never poisons a device for good (issue 10, item 3): one write made while
//! the machine's clock read the year 2100 makes the device warn on every write, sync and
//! status; the other devices stall on it and say why; `recover_clock` gets it writing
//! again and its stuck writes seen by everyone, losing none and applying none twice,
//! whatever order the successor and the superseded entries arrive in.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::path::PathBuf;
use std::sync::Arc;

use shoal::core::{ManualClock, PeerId};
use shoal::*;

const NOW: u64 = 1_800_000_000_000; // 2027
const YEAR_2100: u64 = 4_102_444_800_000;

fn spec() -> TableSpec {
    TableSpec::new("todo")
        .key("id", ColumnType::Text)
        .column("title", ColumnType::Text)
        .counter("n")
}

fn text(s: &str) -> Value {
    Value::text(s).unwrap()
}

/// Writes row `id` (title = id) and adds 1 to its counter: a write applied twice would
/// show n = 2.
fn put(ws: &Workspace, id: &str) -> Commit {
    let mut tx = ws.transaction().unwrap();
    tx.put("todo", &[("id", text(id)), ("title", text(id))]).unwrap();
    tx.increment("todo", &[text(id)], "n", 1).unwrap();
    tx.commit().unwrap().unwrap()
}

fn rows(ws: &Workspace) -> Vec<Vec<Value>> {
    ws.query("SELECT id, title, n FROM todo ORDER BY id", &[]).unwrap().rows
}

fn model(ids: &[&str]) -> Vec<Vec<Value>> {
    let mut ids = ids.to_vec();
    ids.sort();
    ids.iter().map(|id| vec![text(id), text(id), Value::Integer(1)]).collect()
}

struct Device {
    ws: Option<Workspace>,
    clock: ManualClock,
}

impl Device {
    fn ws(&self) -> &Workspace {
        self.ws.as_ref().unwrap()
    }
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

    fn options(clock: &ManualClock) -> WorkspaceOptions {
        WorkspaceOptions { clock: Arc::new(clock.clone()), ..Default::default() }
    }

    fn create(&self, name: &str) -> Device {
        let clock = ManualClock::new(NOW);
        let ws = Workspace::create(self.dir.path().join(name), Self::options(&clock)).unwrap();
        Device { ws: Some(ws), clock }
    }

    fn join(&self, name: &str, id: shoal::core::WorkspaceId) -> Device {
        let clock = ManualClock::new(NOW);
        let ws = Workspace::join(self.dir.path().join(name), id, Self::options(&clock)).unwrap();
        Device { ws: Some(ws), clock }
    }

    async fn sync(&self, d: &Device) -> FolderSync {
        d.ws().sync_folder(&self.folder).await.unwrap()
    }
}

/// The scenario up to the recovery: `a` writes `r2` and `r3` with a clock state in 2100,
/// `b` stalls on them and says why. Returns (setup, a, b, a's old origin, index of r2).
async fn poisoned() -> (Setup, Device, Device, PeerId, u64) {
    let s = Setup::new();
    let a = s.create("a.shoal");
    a.ws().declare(&spec()).unwrap();
    assert_eq!(put(a.ws(), "r1").clock_ahead, None);
    s.sync(&a).await;
    let b = s.join("b.shoal", a.ws().id());
    s.sync(&b).await;
    assert_eq!(rows(b.ws()), model(&["r1"]));

    a.clock.set(YEAR_2100);
    let stuck = put(a.ws(), "r2");
    // The machine clock is fixed; the clock state is not.
    a.clock.set(NOW + 1_000);
    let later = put(a.ws(), "r3");
    let ahead = later.clock_ahead.expect("a write after the jump warns");
    assert!(ahead.ahead_ms > 70 * 365 * 86_400_000, "{ahead:?}");
    assert!(later.hlc.millis() >= YEAR_2100, "the clock never goes back by itself");
    let synced = s.sync(&a).await;
    assert!(synced.clock_ahead.is_some(), "sync warns");
    assert!(a.ws().status().unwrap().clock_ahead.is_some(), "status warns");

    // b stalls on a's origin at r2, and says who and why.
    put(b.ws(), "r4");
    let synced = s.sync(&b).await;
    let a_origin = a.ws().device().unwrap();
    let stalled = synced.status.stalled.iter().find(|st| st.origin == a_origin).unwrap();
    assert_eq!(stalled.at, stuck.index);
    assert!(stalled.reason.contains("clock ahead by 7"), "{}", stalled.reason);
    let st = b.ws().status().unwrap();
    let o = st.origins.iter().find(|o| o.origin == a_origin).unwrap();
    assert!(o.stalled.as_deref().unwrap().contains("clock ahead by"), "{o:?}");
    assert_eq!(st.clock_ahead, None, "b's own clock is fine");
    assert_eq!(rows(b.ws()), model(&["r1", "r4"]));
    (s, a, b, a_origin, stuck.index)
}

async fn recover(a: &mut Device) -> ClockRecovery {
    let ws = a.ws.take().unwrap();
    let (ws, rec) = ws.recover_clock().unwrap();
    a.ws = Some(ws);
    rec
}

#[tokio::test]
async fn a_device_recovers_and_every_device_converges_with_nothing_lost_or_doubled() {
    let (s, mut a, b, old, cut) = poisoned().await;

    // Still in 2100 on the wall: nothing to recover, and it says so.
    let ws = a.ws.take().unwrap();
    a.clock.set(YEAR_2100);
    let err = ws.clone().recover_clock().unwrap_err();
    assert!(matches!(err, Error::ClockNotAhead { .. }), "{err}");
    a.clock.set(NOW + 2_000);
    a.ws = Some(ws);

    let rec = recover(&mut a).await;
    assert_eq!(rec.succession.predecessor, old);
    assert_eq!((rec.succession.cut, rec.succession.reissued), (cut, 2));
    assert_eq!(a.ws().device(), Some(rec.succession.successor));
    assert_eq!(a.ws().clock_ahead().unwrap(), None, "the poisoned origin no longer counts");
    // The device writes with today's clock again.
    let fresh = put(a.ws(), "r5");
    assert_eq!(fresh.clock_ahead, None);
    assert!(fresh.hlc.millis() < NOW + 10_000, "{:?}", fresh.hlc);
    // Locally: r2 and r3 are there once (re-issued), not from the superseded entries.
    assert_eq!(rows(a.ws()), model(&["r1", "r2", "r3", "r5"]));

    s.sync(&a).await;
    let synced = s.sync(&b).await;
    assert!(synced.status.stalled.is_empty(), "{:?}", synced.status.stalled);
    s.sync(&a).await;
    let all = model(&["r1", "r2", "r3", "r4", "r5"]);
    assert_eq!(rows(a.ws()), all);
    assert_eq!(rows(b.ws()), all);
    // b shows the old origin as superseded, not stalled.
    let st = b.ws().status().unwrap();
    let o = st.origins.iter().find(|o| o.origin == old).unwrap();
    assert_eq!(o.stalled, None);
    let sup = o.superseded.unwrap();
    assert_eq!((sup.successor, sup.from), (rec.succession.successor, cut));

    // A device joining now gets everything (successor and superseded entries in one pass).
    let c = s.join("c.shoal", a.ws().id());
    let synced = s.sync(&c).await;
    assert!(synced.status.stalled.is_empty(), "{:?}", synced.status.stalled);
    assert_eq!(rows(c.ws()), all);

    // Recovery is not repeatable by accident, and a stale handle cannot write the old log.
    assert!(matches!(a.ws().clone().recover_clock(), Err(Error::ClockNotAhead { .. })));
}

#[tokio::test]
async fn the_successor_first_then_the_superseded_entries_converge_too() {
    let (s, mut a, _b, old, cut) = poisoned().await;
    a.clock.set(NOW + 2_000);
    let rec = recover(&mut a).await;
    s.sync(&a).await;
    // d receives the successor's log before anything of the old origin.
    let d = s.join("d.shoal", a.ws().id());
    let new = rec.succession.successor;
    let page = a.ws().replica().read_page(new, 0).unwrap();
    d.ws().replica().apply_entries(new, page).unwrap();
    assert_eq!(d.ws().replica().superseded(old).unwrap().map(|s| s.from), Some(cut));
    let page = a.ws().replica().read_page(old, 0).unwrap();
    d.ws().replica().apply_entries(old, page).unwrap();
    let st = d.ws().status().unwrap();
    let o = st.origins.iter().find(|o| o.origin == old).unwrap();
    assert_eq!((o.next, o.materialized, o.stalled.as_deref()), (cut + 2, cut, None));
    // Applying the successor again changes nothing.
    let page = a.ws().replica().read_page(new, 0).unwrap();
    let again = d.ws().replica().apply_entries(new, page).unwrap();
    assert_eq!(again.new, 0);
    s.sync(&d).await;
    assert_eq!(rows(d.ws()), rows(a.ws()));
    assert_eq!(rows(d.ws()), model(&["r1", "r2", "r3", "r4"]));
}

#[tokio::test]
async fn a_receiver_that_applied_the_superseded_entries_rebuilds_and_its_clock_recovers() {
    let (s, mut a, _b, old, cut) = poisoned().await;
    // e's machine clock was in 2100 too when it synced: it accepted and applied a's entries
    // and its own clock state ran ahead by observing them.
    let e = s.join("e.shoal", a.ws().id());
    e.clock.set(YEAR_2100);
    s.sync(&e).await;
    e.clock.set(NOW + 1_500);
    assert_eq!(rows(e.ws()), model(&["r1", "r2", "r3", "r4"]));
    assert!(e.ws().clock_ahead().unwrap().is_some());

    a.clock.set(NOW + 2_000);
    recover(&mut a).await;
    s.sync(&a).await;
    let synced = s.sync(&e).await;
    assert!(synced.status.stalled.is_empty(), "{:?}", synced.status.stalled);
    let st = e.ws().status().unwrap();
    let o = st.origins.iter().find(|o| o.origin == old).unwrap();
    assert_eq!(o.materialized, cut, "the superseded entries are no longer applied");
    assert_eq!(st.clock_ahead, None, "the rebuild recomputed the clock without them");
    assert_eq!(rows(e.ws()), model(&["r1", "r2", "r3", "r4"]));
}
