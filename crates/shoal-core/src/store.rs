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

    /// The workspaces that hold at least one entry.
    async fn workspaces(&self) -> Result<Vec<WorkspaceId>, SyncError>;

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
}

impl Default for MemoryLogStore {
    fn default() -> Self {
        MemoryLogStore {
            logs: Mutex::new(HashMap::new()),
            feed: broadcast::Sender::new(STORE_FEED_CAPACITY),
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
        let log = logs
            .entry(workspace)
            .or_default()
            .entry(origin)
            .or_insert_with(|| (Vec::new(), ChainPosition::start(&workspace, &origin)));
        if log.1 != run.start() {
            return Ok(Appended::Moved);
        }
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

    async fn workspaces(&self) -> Result<Vec<WorkspaceId>, SyncError> {
        let mut ws: Vec<_> = self.lock().keys().copied().collect();
        ws.sort();
        Ok(ws)
    }

    fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.feed.subscribe()
    }

    fn describe(&self) -> String {
        "memory store".into()
    }
}
