//! Relay storage: the logs of many workspaces in one database, and one workspace of it as a
//! [`crate::Replica`] (DESIGN §9).
//!
//! Owns: [`LogStore`] (what a relay's database provides: each workspace's entries by origin
//! and index, each origin's chain head, and a feed of appends made by any process sharing
//! the database), [`StoredReplica`] (one workspace of a store as a replica: entries go in
//! only through [`Ingest`], so a store only ever holds verified runs) and
//! [`MemoryLogStore`] (the reference store, for tests and the simulation). The SQLite
//! store is `shoal_sqlite::SqliteLogStore`, the PostgreSQL one `shoal_postgres::PgLogStore`.
//!
//! Invariants:
//! - Every store operation names one workspace; no operation reads or writes two. A store's
//!   tables lead with the workspace id, so a database can be sharded by it.
//! - [`LogStore::append`] takes only a [`VerifiedRun`] and stores it only if the origin's
//!   head is still the run's start (another relay node may have appended meanwhile; the
//!   caller then verifies again against the new head). A stored log is therefore always a
//!   contiguous, authentic chain ending on a verified seal.
//! - A relay stores every authentic entry (held or not, any domain, ciphertext as it is)
//!   and judges no clock: devices judge stamps when they apply, and a relay never applies.
//!
//! Never: decrypts, applies an op, or decides membership (the roster is a pure fold of the
//! stored control entries, [`crate::membership`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::broadcast;

use crate::cursors::{CursorStream, CursorsEvent, PeerCursors};
use crate::entry::{ChainPosition, Entry, EntryClass};
use crate::error::SyncError;
use crate::ids::{PeerId, WorkspaceId};
use crate::ingest::{Ingest, VerifiedRun};
use crate::membership::{ControlLog, Roster};
use crate::sync::{BatchApplied, HasCursors, LogProcessor, LogSource};

/// How many appends a store's feed buffers for a slow subscriber before it skips (a
/// skipped notice costs latency, never data: watchers re-read cursors).
pub const STORE_FEED_CAPACITY: usize = 4096;

/// Bytes of entries a [`StoredReplica::read_since`] page aims at before it is extended to the
/// next seal.
pub const STORE_PAGE_BYTES: usize = 256 << 10;

/// The outcome of [`LogStore::append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// The run is stored; the origin's head is the run's end.
    Stored,
    /// The origin's head is no longer the run's start (another writer appended first);
    /// nothing was stored.
    Moved,
}

/// An append to a store, as its feed reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreEvent {
    /// The workspace appended to.
    pub workspace: WorkspaceId,
    /// The origin appended to.
    pub origin: PeerId,
    /// The origin's next index after the append.
    pub next: u64,
    /// Whether the run held control entries (the roster may have changed).
    pub control: bool,
}

/// What a relay's database provides (see the module doc for the invariants).
#[async_trait]
pub trait LogStore: Send + Sync + fmt::Debug {
    /// Every origin's chain head in `workspace`.
    async fn heads(
        &self,
        workspace: WorkspaceId,
    ) -> Result<Vec<(PeerId, ChainPosition)>, SyncError>;

    /// `origin`'s chain head in `workspace` ([`ChainPosition::start`] when it has none).
    async fn head(
        &self,
        workspace: WorkspaceId,
        origin: PeerId,
    ) -> Result<ChainPosition, SyncError>;

    /// Entries of `origin` from index `from` on, ascending: at least `max_bytes` of them
    /// (by [`Entry::approx_size`]) when there are that many, then up to the next seal, so
    /// the page ends on a sealed entry. Empty when there is nothing at or after `from`.
    async fn read(
        &self,
        workspace: WorkspaceId,
        origin: PeerId,
        from: u64,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, SyncError>;

    /// Stores `run` atomically if `origin`'s head is still [`VerifiedRun::start`].
    async fn append(
        &self,
        workspace: WorkspaceId,
        run: &VerifiedRun,
    ) -> Result<Appended, SyncError>;

    /// Every control entry of `workspace` (plaintext, small), for the roster.
    async fn control_entries(&self, workspace: WorkspaceId) -> Result<Vec<Entry>, SyncError>;

    /// How many control entries `workspace` holds (only grows; the roster cache's key).
    async fn control_count(&self, workspace: WorkspaceId) -> Result<u64, SyncError>;

    /// The relay deployment's id (what devices' authentication signatures name): made at
    /// random the first time and kept in the store, so every node sharing it shares it.
    async fn relay_id(&self) -> Result<[u8; 32], SyncError>;

    /// A feed of every append to this store, by any process that shares it.
    fn subscribe(&self) -> broadcast::Receiver<StoreEvent>;

    /// Names the store in messages (a path, a database without its password).
    fn describe(&self) -> String;
}

/// Whether a run holds control entries.
pub fn run_has_control(run: &VerifiedRun) -> bool {
    run.entries().iter().any(|e| e.body.class() == Some(EntryClass::Control))
}

/// One workspace of a [`LogStore`] as a replica (see the module doc).
#[derive(Debug)]
pub struct StoredReplica {
    workspace: WorkspaceId,
    store: Arc<dyn LogStore>,
    ingest: Ingest,
    /// The roster as last folded, with the control count it was folded from.
    roster: Mutex<Option<(u64, Arc<Roster>)>>,
}

impl StoredReplica {
    /// The replica of `workspace` in `store`.
    pub fn new(store: Arc<dyn LogStore>, workspace: WorkspaceId) -> Self {
        StoredReplica {
            workspace,
            store,
            ingest: Ingest::ignoring_skew(workspace),
            roster: Mutex::new(None),
        }
    }

    /// The workspace.
    pub fn workspace(&self) -> WorkspaceId {
        self.workspace
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn LogStore> {
        &self.store
    }

    /// The roster folded from every stored control entry of the workspace, refolded only
    /// when control entries were added.
    pub async fn roster(&self) -> Result<Arc<Roster>, SyncError> {
        let count = self.store.control_count(self.workspace).await?;
        if let Some((n, r)) = &*self.lock_roster()
            && *n == count
        {
            return Ok(r.clone());
        }
        let entries = self.store.control_entries(self.workspace).await?;
        let mut log = ControlLog::new();
        for e in &entries {
            log.insert(e.origin, e.index, &e.body);
        }
        let roster = Arc::new(log.roster(&self.workspace));
        // Entries only grow: the count of what was folded is at least `count`.
        *self.lock_roster() = Some((entries.len() as u64, roster.clone()));
        Ok(roster)
    }

    fn lock_roster(&self) -> std::sync::MutexGuard<'_, Option<(u64, Arc<Roster>)>> {
        // The cache is replaced whole; a panic elsewhere cannot leave it half-written.
        self.roster.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl HasCursors for StoredReplica {
    async fn cursors(&self) -> Result<PeerCursors, SyncError> {
        Ok(self.store.heads(self.workspace).await?.into_iter().map(|(o, h)| (o, h.next)).collect())
    }

    fn watch_cursors(&self) -> CursorStream {
        let workspace = self.workspace;
        let store = self.store.clone();
        // Subscribe before the snapshot, so no append falls between the two.
        let feed = tokio_stream::wrappers::BroadcastStream::new(store.subscribe());
        let snapshot = futures::stream::once(async move {
            match store.heads(workspace).await {
                Ok(heads) => Some(CursorsEvent::Snapshot(
                    heads.into_iter().map(|(o, h)| (o, h.next)).collect(),
                )),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the store's cursors; the watch ends");
                    None
                }
            }
        });
        let advanced = feed.filter_map(move |ev| async move {
            match ev {
                Ok(ev) if ev.workspace == workspace => {
                    Some(Some(CursorsEvent::Advanced([(ev.origin, ev.next)].into_iter().collect())))
                }
                Ok(_) => None,
                // Skipped notices: say so with an empty delta, so a watcher re-reads.
                Err(_) => Some(Some(CursorsEvent::Advanced(PeerCursors::new()))),
            }
        });
        Box::pin(
            snapshot
                .chain(advanced)
                .take_while(|e| futures::future::ready(e.is_some()))
                .filter_map(futures::future::ready),
        )
    }
}

#[async_trait]
impl LogSource<Entry> for StoredReplica {
    async fn read_since(&self, origin: PeerId, from: u64) -> Result<Vec<Entry>, SyncError> {
        self.store.read(self.workspace, origin, from, STORE_PAGE_BYTES).await
    }
}

#[async_trait]
impl LogProcessor<Entry> for StoredReplica {
    async fn apply_batch(
        &self,
        origin: PeerId,
        entries: Vec<Entry>,
    ) -> Result<BatchApplied, SyncError> {
        // A race with another node appending the same origin is retried against the new
        // head: what the other node stored becomes duplicates here.
        for _ in 0..8 {
            let head = self.store.head(self.workspace, origin).await?;
            let mut run = self.ingest.verify(origin, head, entries.clone());
            let new = run.entries().len() as u64;
            if new > 0 {
                match self.store.append(self.workspace, &run).await? {
                    Appended::Stored => {}
                    Appended::Moved => continue,
                }
            }
            let next = run.end().next;
            return match run.take_stop() {
                Some(e) => Err(e),
                None => Ok(BatchApplied { new, duplicates: run.duplicates(), next }),
            };
        }
        Err(SyncError::Backend {
            context: format!("{}: appending {origin}", self.store.describe()),
            source: "the origin's head kept moving (other writers); try again".into(),
        })
    }
}

/// Each workspace's logs: every origin's entries and chain head.
type MemoryLogs = HashMap<WorkspaceId, BTreeMap<PeerId, (Vec<Entry>, ChainPosition)>>;

/// The reference [`LogStore`], in memory.
#[derive(Debug)]
pub struct MemoryLogStore {
    logs: Mutex<MemoryLogs>,
    feed: broadcast::Sender<StoreEvent>,
    relay_id: std::sync::OnceLock<[u8; 32]>,
}

impl Default for MemoryLogStore {
    fn default() -> Self {
        MemoryLogStore {
            logs: Mutex::new(HashMap::new()),
            feed: broadcast::Sender::new(STORE_FEED_CAPACITY),
            relay_id: std::sync::OnceLock::new(),
        }
    }
}

impl MemoryLogStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryLogs> {
        // Every mutation completes before the guard drops.
        self.logs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The entries of `log` from `from` on, at least `max_bytes` of them, then to the next seal.
pub fn page_to_seal(log: &[Entry], from: u64, max_bytes: usize) -> Vec<Entry> {
    let start = usize::try_from(from).unwrap_or(usize::MAX).min(log.len());
    let mut bytes = 0;
    let mut out = Vec::new();
    for e in &log[start..] {
        bytes += e.approx_size();
        out.push(e.clone());
        if bytes >= max_bytes && e.seal.is_some() {
            break;
        }
    }
    out
}

#[async_trait]
impl LogStore for MemoryLogStore {
    async fn heads(
        &self,
        workspace: WorkspaceId,
    ) -> Result<Vec<(PeerId, ChainPosition)>, SyncError> {
        Ok(self
            .lock()
            .get(&workspace)
            .map(|w| w.iter().map(|(o, l)| (*o, l.1)).collect())
            .unwrap_or_default())
    }

    async fn head(
        &self,
        workspace: WorkspaceId,
        origin: PeerId,
    ) -> Result<ChainPosition, SyncError> {
        Ok(self
            .lock()
            .get(&workspace)
            .and_then(|w| w.get(&origin))
            .map_or_else(|| ChainPosition::start(&workspace, &origin), |l| l.1))
    }

    async fn read(
        &self,
        workspace: WorkspaceId,
        origin: PeerId,
        from: u64,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, SyncError> {
        Ok(self
            .lock()
            .get(&workspace)
            .and_then(|w| w.get(&origin))
            .map(|l| page_to_seal(&l.0, from, max_bytes))
            .unwrap_or_default())
    }

    async fn append(
        &self,
        workspace: WorkspaceId,
        run: &VerifiedRun,
    ) -> Result<Appended, SyncError> {
        let origin = run.origin();
        let mut logs = self.lock();
        // Check the head before creating anything: a moved or empty run leaves no trace (no
        // empty log in `heads`, nothing listed).
        let head = logs
            .get(&workspace)
            .and_then(|w| w.get(&origin))
            .map_or_else(|| ChainPosition::start(&workspace, &origin), |l| l.1);
        if head != run.start() {
            return Ok(Appended::Moved);
        }
        if run.entries().is_empty() {
            return Ok(Appended::Stored);
        }
        let log = logs
            .entry(workspace)
            .or_default()
            .entry(origin)
            .or_insert_with(|| (Vec::new(), ChainPosition::start(&workspace, &origin)));
        log.0.extend(run.entries().iter().cloned());
        log.1 = run.end();
        let next = log.1.next;
        drop(logs);
        let _ =
            self.feed.send(StoreEvent { workspace, origin, next, control: run_has_control(run) });
        Ok(Appended::Stored)
    }

    async fn control_entries(&self, workspace: WorkspaceId) -> Result<Vec<Entry>, SyncError> {
        Ok(self
            .lock()
            .get(&workspace)
            .map(|w| {
                w.values()
                    .flat_map(|l| l.0.iter())
                    .filter(|e| e.body.class() == Some(EntryClass::Control))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn control_count(&self, workspace: WorkspaceId) -> Result<u64, SyncError> {
        Ok(self.control_entries(workspace).await?.len() as u64)
    }

    async fn relay_id(&self) -> Result<[u8; 32], SyncError> {
        if let Some(id) = self.relay_id.get() {
            return Ok(*id);
        }
        let fresh = crate::ids::random_bytes::<32>()
            .map_err(|e| SyncError::backend("memory store: a relay id", e))?;
        Ok(*self.relay_id.get_or_init(|| fresh))
    }

    fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.feed.subscribe()
    }

    fn describe(&self) -> String {
        "memory store".into()
    }
}

/// The properties every [`LogStore`] must have, as one async function each over a fresh,
/// empty store; [`conformance::run_all`] runs them all. The three stores' test suites call
/// them (`shoal-core`'s own tests for [`MemoryLogStore`], `shoal-sqlite`'s and
/// `shoal-postgres`'s through the `conformance` feature), so the stores are held to the same
/// behaviour, byte for byte.
///
/// Stores with a feed that fires asynchronously (PostgreSQL's LISTEN/NOTIFY) are waited for
/// up to [`conformance::FEED_WAIT`]. Failures panic (these are tests).
#[cfg(any(test, feature = "conformance"))]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub mod conformance {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::broadcast;

    use super::{Appended, LogStore, StoreEvent, StoredReplica};
    use crate::codec::Encode;
    use crate::control::ControlOp;
    use crate::entry::{ChainPosition, Domain, EncryptedPayload, Entry, EntryBody, Op, OwnLog};
    use crate::entry::{EntryClass, Payload};
    use crate::error::SyncError;
    use crate::hlc::Hlc;
    use crate::ids::{DeviceKey, PeerId, WorkspaceId};
    use crate::ingest::{Ingest, VerifiedRun};
    use crate::memory::MemoryReplica;
    use crate::sync::{HasCursors, LogProcessor, LogSource};

    /// How long a feed event may take to arrive.
    pub const FEED_WAIT: Duration = Duration::from_secs(10);

    /// A device writing its own log of a workspace, for building runs by hand.
    #[derive(Debug)]
    pub struct Device {
        /// The workspace it writes in.
        pub workspace: WorkspaceId,
        /// Its key.
        pub key: DeviceKey,
        /// Its log (its position is what a store's head must reach).
        pub log: OwnLog,
        hlc: u64,
    }

    impl Device {
        /// The device of secret `seed` in `workspace`.
        pub fn new(seed: u8, workspace: WorkspaceId) -> Self {
            let key = DeviceKey::from_secret_bytes(&[seed; 32]);
            let origin = key.peer_id(&workspace);
            let log =
                OwnLog::resume(key.clone(), workspace, ChainPosition::start(&workspace, &origin));
            Device { workspace, key, log, hlc: 1_000 }
        }

        /// The creator of a new workspace (salt `salt`) and its genesis entry (entry 0).
        pub fn founder(seed: u8, salt: u8) -> (Self, Vec<Entry>) {
            let key = DeviceKey::from_secret_bytes(&[seed; 32]);
            let ws = WorkspaceId::derive(&key.public_key(), &[salt; 16]);
            let mut d = Device::new(seed, ws);
            let genesis = ControlOp::genesis(key.public_key(), [salt; 16]).to_op();
            let e = d.batch(vec![vec![genesis]]);
            (d, e)
        }

        /// Its origin in the workspace.
        pub fn origin(&self) -> PeerId {
            self.log.origin()
        }

        /// One batch of entries (one per op list), the last sealed.
        pub fn batch(&mut self, ops: Vec<Vec<Op>>) -> Vec<Entry> {
            let payloads = ops
                .into_iter()
                .map(|ops| {
                    self.hlc += 10;
                    Payload { hlc: Hlc::from_millis(self.hlc), author: None, ops }
                })
                .collect();
            self.log.append(payloads).into_iter().map(|(e, _)| e).collect()
        }

        /// `count` data entries of `size` bytes of op body each, the last sealed.
        pub fn data(&mut self, count: usize, size: usize) -> Vec<Entry> {
            let n = self.log.position().next;
            self.batch(
                (0..count)
                    .map(|i| {
                        let body = vec![(n as usize + i) as u8; size];
                        vec![Op { domain: Domain::TABLES, kind: 1, body }]
                    })
                    .collect(),
            )
        }

        /// One control entry (an ack), sealed.
        pub fn control(&mut self) -> Vec<Entry> {
            let at = self.log.position().next;
            self.batch(vec![vec![ControlOp::ack([(self.origin(), at)]).to_op()]])
        }

        /// One encrypted data entry (opaque ciphertext, as a relay carries it), sealed.
        pub fn encrypted(&mut self) -> Vec<Entry> {
            self.hlc += 10;
            let body = EntryBody::Encrypted(EncryptedPayload {
                hlc: Hlc::from_millis(self.hlc),
                op_count: 2,
                epoch: 1,
                nonce: [7; 24],
                ciphertext: vec![0xAB; 57],
            });
            vec![self.log.append_body(body).0]
        }
    }

    /// Verifies `entries` against the store's head for their origin; panics unless all of
    /// them are accepted.
    pub async fn verified(
        store: &dyn LogStore,
        ws: WorkspaceId,
        entries: Vec<Entry>,
    ) -> VerifiedRun {
        let origin = entries[0].origin;
        let head = store.head(ws, origin).await.unwrap();
        let run = Ingest::ignoring_skew(ws).verify(origin, head, entries);
        assert!(run.stop().is_none(), "the test's run does not verify: {:?}", run.stop());
        run
    }

    /// Verifies and appends; panics unless it is stored.
    pub async fn append(store: &dyn LogStore, ws: WorkspaceId, entries: Vec<Entry>) {
        let run = verified(store, ws, entries).await;
        assert_eq!(store.append(ws, &run).await.unwrap(), Appended::Stored);
    }

    fn bytes(entries: &[Entry]) -> Vec<Vec<u8>> {
        entries.iter().map(Encode::to_bytes).collect()
    }

    /// Every entry of `origin`, paging with `max_bytes`; checks each page ends on a seal.
    pub async fn read_all(
        store: &dyn LogStore,
        ws: WorkspaceId,
        origin: PeerId,
        max_bytes: usize,
    ) -> Vec<Entry> {
        let mut out: Vec<Entry> = Vec::new();
        loop {
            let page = store.read(ws, origin, out.len() as u64, max_bytes).await.unwrap();
            let Some(last) = page.last() else { return out };
            assert!(
                last.seal.is_some(),
                "a page of {} ends unsealed at #{}",
                store.describe(),
                last.index
            );
            out.extend(page);
        }
    }

    /// Waits for the next event of the feed.
    pub async fn next_event(feed: &mut broadcast::Receiver<StoreEvent>) -> StoreEvent {
        match tokio::time::timeout(FEED_WAIT, feed.recv()).await {
            Ok(Ok(ev)) => ev,
            Ok(Err(e)) => panic!("the feed failed: {e}"),
            Err(_) => panic!("no feed event within {FEED_WAIT:?}"),
        }
    }

    /// Sealed runs read back byte-identical: live, control, encrypted and expunged bodies,
    /// each run's seal kept on its last entry and nowhere else.
    pub async fn round_trip(store: Arc<dyn LogStore>) {
        let (mut a, genesis) = Device::founder(1, 1);
        let ws = a.workspace;
        let mut written = genesis.clone();
        append(&*store, ws, genesis).await;
        for run in [a.data(3, 10), a.encrypted(), a.control(), a.data(1, 0)] {
            written.extend(run.clone());
            append(&*store, ws, run).await;
        }
        // An expunged entry verifies by its kept hash and is stored as the marker.
        let mut last = a.data(2, 5);
        last[0] = last[0].expunged();
        written.extend(last.clone());
        append(&*store, ws, last).await;

        let read = read_all(&*store, ws, a.origin(), usize::MAX).await;
        assert_eq!(
            bytes(&read),
            bytes(&written),
            "{}: entries differ after a round trip",
            store.describe()
        );
        let sealed: Vec<u64> = read.iter().filter(|e| e.seal.is_some()).map(|e| e.index).collect();
        assert_eq!(sealed, vec![0, 3, 4, 5, 6, 8]);
        assert!(matches!(read[4].body, EntryBody::Encrypted(_)));
        assert!(matches!(read[7].body, EntryBody::Expunged(_)));
        // Nothing at or past the end, nothing of an unknown origin.
        assert!(store.read(ws, a.origin(), 9, 1).await.unwrap().is_empty());
        assert!(store.read(ws, a.origin(), u64::MAX, 1).await.unwrap().is_empty());
        let stranger = Device::new(9, ws).origin();
        assert!(store.read(ws, stranger, 0, usize::MAX).await.unwrap().is_empty());
    }

    /// A page holds at least `max_bytes` (by [`Entry::approx_size`]) when there is that
    /// much, then runs to the next seal; it never ends unsealed.
    pub async fn pages_end_on_seals(store: Arc<dyn LogStore>) {
        let ws = WorkspaceId::from_bytes([3; 16]);
        let mut d = Device::new(2, ws);
        // Seals at 3, 7, 11 (runs of four entries of about 116 bytes each).
        for _ in 0..3 {
            append(&*store, ws, d.data(4, 100)).await;
        }
        let o = d.origin();
        let idx = |p: &[Entry]| p.iter().map(|e| e.index).collect::<Vec<_>>();
        // Any budget reached before a seal runs on to it.
        assert_eq!(idx(&store.read(ws, o, 0, 0).await.unwrap()), vec![0, 1, 2, 3]);
        assert_eq!(idx(&store.read(ws, o, 0, 1).await.unwrap()), vec![0, 1, 2, 3]);
        assert_eq!(idx(&store.read(ws, o, 1, 1).await.unwrap()), vec![1, 2, 3]);
        assert_eq!(idx(&store.read(ws, o, 3, 1).await.unwrap()), vec![3]);
        // A budget past the first seal runs to the second.
        let size: usize =
            store.read(ws, o, 0, 0).await.unwrap().iter().map(Entry::approx_size).sum();
        assert_eq!(idx(&store.read(ws, o, 0, size).await.unwrap()), vec![0, 1, 2, 3]);
        assert_eq!(idx(&store.read(ws, o, 0, size + 1).await.unwrap()), (0..8).collect::<Vec<_>>());
        assert_eq!(
            idx(&store.read(ws, o, 2, usize::MAX).await.unwrap()),
            (2..12).collect::<Vec<_>>()
        );
        // Paging through with any budget gives the whole log.
        for budget in [0, 1, 200, 1_000, usize::MAX] {
            assert_eq!(idx(&read_all(&*store, ws, o, budget).await), (0..12).collect::<Vec<_>>());
        }
    }

    /// `heads`, `head` and the cursors of a [`StoredReplica`] follow the appends.
    pub async fn heads_follow_appends(store: Arc<dyn LogStore>) {
        let ws = WorkspaceId::from_bytes([4; 16]);
        let (mut a, mut b) = (Device::new(1, ws), Device::new(2, ws));
        assert!(store.heads(ws).await.unwrap().is_empty());
        assert_eq!(
            store.head(ws, a.origin()).await.unwrap(),
            ChainPosition::start(&ws, &a.origin())
        );
        append(&*store, ws, a.data(2, 1)).await;
        append(&*store, ws, b.data(1, 1)).await;
        append(&*store, ws, a.data(3, 1)).await;
        assert_eq!(store.head(ws, a.origin()).await.unwrap(), a.log.position());
        assert_eq!(store.head(ws, b.origin()).await.unwrap(), b.log.position());
        let mut want = vec![(a.origin(), a.log.position()), (b.origin(), b.log.position())];
        want.sort_by_key(|h| h.0);
        let mut heads = store.heads(ws).await.unwrap();
        heads.sort_by_key(|h| h.0);
        assert_eq!(heads, want);
        let cursors = StoredReplica::new(store.clone(), ws).cursors().await.unwrap();
        assert_eq!((cursors.get(&a.origin()), cursors.get(&b.origin()), cursors.len()), (5, 1, 2));
    }

    /// A run verified against a head that is no longer the store's is `Moved` and stores
    /// nothing (nor does a run verified for another workspace, whose chain seed differs);
    /// an empty run stores nothing either.
    pub async fn moved_stores_nothing(store: Arc<dyn LogStore>) {
        let ws = WorkspaceId::from_bytes([5; 16]);
        let mut d = Device::new(1, ws);
        let first = d.data(2, 3);
        let second = d.data(2, 3);
        let mut feed = store.subscribe();
        let stale_first = verified(&*store, ws, first.clone()).await;
        append(&*store, ws, first.clone()).await;
        // Verified against the empty log, offered after the first append.
        assert_eq!(store.append(ws, &stale_first).await.unwrap(), Appended::Moved);
        let at_two = verified(&*store, ws, second.clone()).await;
        // A run from the start of the log, offered at index 2: moved.
        let from_zero = Ingest::ignoring_skew(ws).verify(
            d.origin(),
            ChainPosition::start(&ws, &d.origin()),
            [first.clone(), second.clone()].concat(),
        );
        assert_eq!(store.append(ws, &from_zero).await.unwrap(), Appended::Moved);
        append(&*store, ws, second.clone()).await;
        assert_eq!(store.append(ws, &at_two).await.unwrap(), Appended::Moved);
        assert_eq!(
            bytes(&read_all(&*store, ws, d.origin(), usize::MAX).await),
            bytes(&[first.clone(), second].concat())
        );
        assert_eq!(store.head(ws, d.origin()).await.unwrap(), d.log.position());
        // Only the two stored appends reached the feed.
        let ev = next_event(&mut feed).await;
        assert_eq!((ev.origin, ev.next), (d.origin(), 2));
        let ev = next_event(&mut feed).await;
        assert_eq!((ev.origin, ev.next), (d.origin(), 4));

        // A run verified in another workspace does not continue this workspace's chain.
        let other = WorkspaceId::from_bytes([6; 16]);
        let mut o = Device::new(3, other);
        let foreign = verified(&*store, other, o.data(1, 1)).await;
        assert_eq!(store.append(ws, &foreign).await.unwrap(), Appended::Moved);
        assert!(store.read(ws, o.origin(), 0, usize::MAX).await.unwrap().is_empty());
        assert_eq!(store.heads(ws).await.unwrap().len(), 1);

        // An empty run: nothing appears (no head, no workspace).
        let empty = Ingest::ignoring_skew(other).verify(
            o.origin(),
            ChainPosition::start(&other, &o.origin()),
            Vec::new(),
        );
        store.append(other, &empty).await.unwrap();
        assert!(store.heads(other).await.unwrap().is_empty());
    }

    /// Two writers push the same origin's entries at once (through two replicas of one
    /// store, or two stores sharing a database): one stores them, the other's retry finds
    /// them there as duplicates, and the log is as the device wrote it.
    pub async fn concurrent_writers(store: Arc<dyn LogStore>) {
        concurrent_writers_on(store.clone(), store).await;
    }

    /// [`concurrent_writers`] through two stores over one database (two relay nodes).
    pub async fn concurrent_writers_on(one: Arc<dyn LogStore>, two: Arc<dyn LogStore>) {
        let ws = WorkspaceId::from_bytes([7; 16]);
        for round in 0..5u8 {
            let mut d = Device::new(10 + round, ws);
            let a = d.data(40, 30);
            let b = [a.clone(), d.data(20, 30)].concat();
            let r1 = Arc::new(StoredReplica::new(one.clone(), ws));
            let r2 = Arc::new(StoredReplica::new(two.clone(), ws));
            let origin = d.origin();
            let (x, y) = tokio::join!(
                tokio::spawn(async move { r1.apply_batch(origin, a).await }),
                tokio::spawn(async move { r2.apply_batch(origin, b).await }),
            );
            let (x, y) = (x.unwrap().unwrap(), y.unwrap().unwrap());
            assert_eq!(x.new + y.new, 60, "round {round}: {x:?} {y:?}");
            assert_eq!(x.new + x.duplicates, 40);
            assert_eq!(y.new + y.duplicates, 60);
            assert_eq!(y.next, 60);
            let want = bytes(&d_entries(&d, &*one, ws).await);
            assert_eq!(want.len(), 60);
            assert_eq!(bytes(&read_all(&*two, ws, origin, usize::MAX).await), want);
            assert_eq!(one.head(ws, origin).await.unwrap(), d.log.position());
        }
    }

    async fn d_entries(d: &Device, store: &dyn LogStore, ws: WorkspaceId) -> Vec<Entry> {
        read_all(store, ws, d.origin(), usize::MAX).await
    }

    /// Two workspaces (one device key in both, so one owner's logs under two origins):
    /// heads, reads, control entries and the feed of one never show the other.
    pub async fn workspaces_isolated(store: Arc<dyn LogStore>) {
        let (mut a, genesis) = Device::founder(1, 1);
        let (mut b, genesis_b) = Device::founder(1, 2);
        let (wa, wb) = (a.workspace, b.workspace);
        let mut feed = store.subscribe();
        append(&*store, wa, genesis).await;
        append(&*store, wa, a.data(3, 8)).await;
        append(&*store, wb, genesis_b).await;
        append(&*store, wb, b.control()).await;
        let events = [
            next_event(&mut feed).await,
            next_event(&mut feed).await,
            next_event(&mut feed).await,
            next_event(&mut feed).await,
        ];
        assert_eq!(events.map(|e| (e.workspace, e.next)), [(wa, 1), (wa, 4), (wb, 1), (wb, 2)]);
        assert_eq!(store.heads(wa).await.unwrap(), vec![(a.origin(), a.log.position())]);
        assert_eq!(store.heads(wb).await.unwrap(), vec![(b.origin(), b.log.position())]);
        assert_eq!(
            store.head(wb, a.origin()).await.unwrap(),
            ChainPosition::start(&wb, &a.origin())
        );
        assert!(store.read(wb, a.origin(), 0, usize::MAX).await.unwrap().is_empty());
        assert!(store.read(wa, b.origin(), 0, usize::MAX).await.unwrap().is_empty());
        assert_eq!(store.read(wa, a.origin(), 0, usize::MAX).await.unwrap().len(), 4);
        assert_eq!(
            (store.control_count(wa).await.unwrap(), store.control_count(wb).await.unwrap()),
            (1, 2)
        );
        assert!(store.control_entries(wb).await.unwrap().iter().all(|e| e.origin == b.origin()));
        let unknown = WorkspaceId::from_bytes([0xEE; 16]);
        assert!(store.heads(unknown).await.unwrap().is_empty());
        assert_eq!(store.control_count(unknown).await.unwrap(), 0);
        assert!(store.control_entries(unknown).await.unwrap().is_empty());
    }

    /// `control_entries` holds exactly the control entries of every origin (byte-identical),
    /// `control_count` their number.
    pub async fn control_entries_counted(store: Arc<dyn LogStore>) {
        let (mut a, genesis) = Device::founder(1, 3);
        let ws = a.workspace;
        let mut b = Device::new(2, ws);
        let mut want = genesis.clone();
        append(&*store, ws, genesis).await;
        assert_eq!(store.control_count(ws).await.unwrap(), 1);
        append(&*store, ws, a.data(2, 4)).await;
        let c = a.control();
        want.extend(c.clone());
        append(&*store, ws, c).await;
        // A run mixing data and control entries.
        let mixed = [b.data(1, 1), b.control(), b.data(1, 1)].concat();
        want.push(mixed[1].clone());
        append(&*store, ws, mixed).await;
        assert_eq!(store.control_count(ws).await.unwrap(), 3);
        let mut got = store.control_entries(ws).await.unwrap();
        got.sort_by_key(|e| (e.origin, e.index));
        want.sort_by_key(|e| (e.origin, e.index));
        // Seals are transport data: the mixed run's inner entry lost its seal when verified.
        let strip = |v: &[Entry]| {
            v.iter().map(|e| Entry { seal: None, ..e.clone() }.to_bytes()).collect::<Vec<_>>()
        };
        assert_eq!(strip(&got), strip(&want));
        assert!(got.iter().all(|e| e.body.class() == Some(EntryClass::Control)));
    }

    /// The feed reports every stored append once, with the origin's new next index and
    /// whether the run held control entries.
    pub async fn feed_reports_appends(store: Arc<dyn LogStore>) {
        let (mut a, genesis) = Device::founder(1, 4);
        let ws = a.workspace;
        let mut feed = store.subscribe();
        let mut late = None;
        let runs = [genesis, a.data(3, 2), a.control(), a.data(1, 1), a.encrypted()];
        let want = [(1, true), (4, false), (5, true), (6, false), (7, false)];
        for (i, run) in runs.into_iter().enumerate() {
            append(&*store, ws, run).await;
            if i == 2 {
                late = Some(store.subscribe());
            }
        }
        for (next, control) in want {
            let ev = next_event(&mut feed).await;
            assert_eq!(ev, StoreEvent { workspace: ws, origin: a.origin(), next, control });
        }
        // A subscriber sees the appends after it subscribed, in order (on a feed that
        // fires asynchronously, such as LISTEN/NOTIFY, it may also see earlier ones still
        // on their way when it subscribed).
        let mut late = late.unwrap();
        let mut ev = next_event(&mut late).await;
        while ev.next <= 5 {
            ev = next_event(&mut late).await;
        }
        assert_eq!(ev.next, 6);
        assert_eq!(next_event(&mut late).await.next, 7);
        // And nothing more.
        assert!(tokio::time::timeout(Duration::from_millis(200), feed.recv()).await.is_err());
    }

    /// Two devices push into a [`StoredReplica`] with [`crate::pull`]; it serves their logs
    /// back, and the devices converge through it. Its cursor watch reports the pushes.
    pub async fn stored_replica_converges(store: Arc<dyn LogStore>) {
        let alice = DeviceKey::from_secret_bytes(&[1; 32]);
        let bob = DeviceKey::from_secret_bytes(&[2; 32]);
        let ws = WorkspaceId::derive(&alice.public_key(), &[0; 16]);
        let a = MemoryReplica::new(ws, Some(alice.clone()));
        let b = MemoryReplica::new(ws, Some(bob));
        let relay = StoredReplica::new(store.clone(), ws);
        let op = |n: u8| Op { domain: Domain::TABLES, kind: 0, body: vec![n; 20] };
        let p = |ms: u64, ops: Vec<Op>| Payload { hlc: Hlc::from_millis(ms), author: None, ops };
        a.append_local(vec![p(1, vec![ControlOp::genesis(alice.public_key(), [0; 16]).to_op()])])
            .unwrap();
        for i in 0..5u8 {
            a.append_local(vec![
                p(10 + u64::from(i), vec![op(i)]),
                p(20 + u64::from(i), vec![op(i + 1)]),
            ])
            .unwrap();
            b.append_local(vec![p(30 + u64::from(i), vec![op(i + 2)])]).unwrap();
        }
        use futures::StreamExt;
        let mut watch = relay.watch_cursors();
        assert!(
            matches!(watch.next().await, Some(crate::CursorsEvent::Snapshot(c)) if c.is_empty())
        );
        crate::pull(&a, &relay).await.unwrap();
        crate::pull(&b, &relay).await.unwrap();
        assert_eq!(relay.cursors().await.unwrap().total(), 16);
        // The watch reports the pushes (asynchronous feeds may coalesce nothing; at least
        // one event per stored append).
        let mut seen = crate::PeerCursors::new();
        while seen.total() < 16 {
            match tokio::time::timeout(FEED_WAIT, watch.next()).await {
                Ok(Some(crate::CursorsEvent::Advanced(c))) => seen.merge(&c),
                other => panic!("the relay's watch ended or stalled: {other:?}"),
            }
        }
        crate::pull(&relay, &a).await.unwrap();
        crate::pull(&relay, &b).await.unwrap();
        assert_eq!(a.cursors().await.unwrap(), b.cursors().await.unwrap());
        assert_eq!(a.contents(), b.contents());
        assert_eq!(relay.cursors().await.unwrap(), a.cursors().await.unwrap());
        // What the relay serves is what the devices hold (seals aside).
        let mut served = Vec::new();
        for (origin, _) in relay.cursors().await.unwrap().iter() {
            let mut from = 0;
            loop {
                let page = relay.read_since(origin, from).await.unwrap();
                let Some(last) = page.last() else { break };
                assert!(last.seal.is_some());
                from = last.index + 1;
                served.extend(page.into_iter().map(|e| Entry { seal: None, ..e }));
            }
        }
        assert_eq!(served, a.contents());
        // Pushing again is all duplicates.
        let again = crate::pull(&a, &relay).await.unwrap();
        assert_eq!(relay.cursors().await.unwrap().total(), 16, "{again:?}");
    }

    /// A tampered entry is rejected: the error names the origin and nothing is stored.
    pub async fn tampered_entry_rejected(store: Arc<dyn LogStore>) {
        let ws = WorkspaceId::from_bytes([8; 16]);
        let mut d = Device::new(4, ws);
        let relay = StoredReplica::new(store.clone(), ws);
        let mut feed = store.subscribe();
        let good = d.data(2, 6);
        relay.apply_batch(d.origin(), good.clone()).await.unwrap();
        assert_eq!(next_event(&mut feed).await.next, 2);
        let mut bad = d.data(3, 6);
        if let EntryBody::Live(p) = &mut bad[1].body {
            p.ops[0].body[0] ^= 1;
        }
        let err = relay.apply_batch(d.origin(), bad).await.unwrap_err();
        assert!(matches!(err, SyncError::Rejected { origin, .. } if origin == d.origin()), "{err}");
        assert!(err.to_string().contains(&d.origin().to_string()), "{err}");
        assert_eq!(bytes(&read_all(&*store, ws, d.origin(), usize::MAX).await), bytes(&good));
        assert_eq!(store.head(ws, d.origin()).await.unwrap().next, 2);
        assert!(tokio::time::timeout(Duration::from_millis(200), feed.recv()).await.is_err());
    }

    /// [`StoredReplica::roster`] is the fold of the stored control entries: unfounded until
    /// the genesis is stored, then founded by its creator.
    pub async fn roster_follows_control(store: Arc<dyn LogStore>) {
        let (mut a, genesis) = Device::founder(5, 5);
        let ws = a.workspace;
        let relay = StoredReplica::new(store.clone(), ws);
        let before = relay.roster().await.unwrap();
        assert!(!before.founded && before.creator.is_none());
        relay.apply_batch(a.origin(), genesis).await.unwrap();
        let after = relay.roster().await.unwrap();
        assert!(after.founded);
        assert_eq!(after.creator, Some(a.origin()));
        assert!(after.open, "a genesis without a policy founds an open workspace");
        // A data entry changes no roster; another replica of the store folds the same.
        relay.apply_batch(a.origin(), a.data(1, 1)).await.unwrap();
        assert_eq!(*relay.roster().await.unwrap(), *after);
        assert_eq!(*StoredReplica::new(store, ws).roster().await.unwrap(), *after);
    }

    /// Runs every property, each on a fresh store from `make`.
    pub async fn run_all<F, Fut>(make: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Arc<dyn LogStore>>,
    {
        round_trip(make().await).await;
        pages_end_on_seals(make().await).await;
        heads_follow_appends(make().await).await;
        moved_stores_nothing(make().await).await;
        concurrent_writers(make().await).await;
        workspaces_isolated(make().await).await;
        control_entries_counted(make().await).await;
        feed_reports_appends(make().await).await;
        stored_replica_converges(make().await).await;
        tampered_entry_rejected(make().await).await;
        roster_follows_control(make().await).await;
        relay_id_is_stable(make().await).await;
    }

    /// The relay id is made once: every later call (and every clone sharing the store)
    /// gets the same one.
    pub async fn relay_id_is_stable(store: Arc<dyn LogStore>) {
        let first = store.relay_id().await.expect("a relay id");
        assert_eq!(store.relay_id().await.expect("a relay id"), first);
        assert_ne!(first, [0; 32], "a random id");
    }

    /// One `#[tokio::test]` per property, each on a fresh store from the async block given:
    /// `shoal_core::logstore_conformance!(async { Arc::new(MyStore::new()) as Arc<dyn LogStore> });`
    #[macro_export]
    macro_rules! logstore_conformance {
        ($make:expr) => {
            $crate::logstore_conformance!(@each $make;
                round_trip pages_end_on_seals heads_follow_appends moved_stores_nothing
                concurrent_writers workspaces_isolated control_entries_counted
                feed_reports_appends stored_replica_converges tampered_entry_rejected
                roster_follows_control relay_id_is_stable);
        };
        (@each $make:expr; $($name:ident)*) => {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $crate::store::conformance::$name($make.await).await;
                }
            )*
        };
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{LogStore, MemoryLogStore};

    crate::logstore_conformance!(async { Arc::new(MemoryLogStore::new()) as Arc<dyn LogStore> });
}
