//! [`MemoryReplica`]: a complete replica held in memory.
//!
//! Owns: a reference implementation of the sync traits with no storage, used by doc tests,
//! the simulation and as the model that database replicas are compared against.
//!
//! Invariants: the same as every replica — apply takes entries through the ingest pipeline
//! ([`Ingest`]) and is idempotent and contiguous; `read_since` pages end on seals.
//!
//! Never: persists anything; a dropped `MemoryReplica` is gone.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::cursors::{CursorBroadcast, CursorStream, PeerCursors};
use crate::entry::{ChainPosition, Entry, OwnLog, Payload};
use crate::error::SyncError;
use crate::ids::{DeviceKey, PeerId, WorkspaceId};
use crate::ingest::Ingest;
use crate::sync::{BatchApplied, HasCursors, LogProcessor, LogSource};

/// Page size of [`MemoryReplica::read_since`] before it is extended to the next seal.
const PAGE: usize = 256;

/// An in-memory replica of a workspace, optionally with a device key for local writes.
#[derive(Debug)]
pub struct MemoryReplica {
    workspace: WorkspaceId,
    ingest: Ingest,
    state: Mutex<State>,
    cursors: CursorBroadcast,
}

#[derive(Debug, Default)]
struct State {
    logs: HashMap<PeerId, (Vec<Entry>, ChainPosition)>,
    own: Option<OwnLog>,
}

impl MemoryReplica {
    /// An empty replica of `workspace`; with `key`, it can append local entries.
    pub fn new(workspace: WorkspaceId, key: Option<DeviceKey>) -> Self {
        let own = key.map(|k| {
            let origin = k.peer_id(&workspace);
            OwnLog::resume(k, workspace, ChainPosition::start(&workspace, &origin))
        });
        MemoryReplica {
            workspace,
            ingest: Ingest::new(workspace),
            state: Mutex::new(State { logs: HashMap::new(), own }),
            cursors: CursorBroadcast::new(PeerCursors::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug in this module; the state is still
        // consistent because every mutation below completes before it returns.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends local payloads as one transaction of this device's own log.
    pub fn append_local(&self, payloads: Vec<Payload>) -> Result<Vec<Entry>, SyncError> {
        let mut st = self.lock();
        let State { logs, own } = &mut *st;
        let own = own
            .as_mut()
            .ok_or_else(|| SyncError::Misuse("this replica has no device key".into()))?;
        let origin = own.origin();
        if let Some(Err(e)) = payloads.iter().map(Payload::class).find(Result::is_err) {
            return Err(SyncError::Misuse(e.to_string()));
        }
        let entries: Vec<Entry> = own.append(payloads).into_iter().map(|(e, _)| e).collect();
        let log = logs
            .entry(origin)
            .or_insert_with(|| (Vec::new(), ChainPosition::start(&self.workspace, &origin)));
        log.0.extend(entries.iter().cloned());
        log.1 = own.position();
        let next = log.1.next;
        drop(st);
        self.cursors.publish(&[(origin, next)].into_iter().collect());
        Ok(entries)
    }

    /// What the replica holds, comparable across replicas: every entry by origin, in index
    /// order, without seals. Seals are transport data: replicas of the same log may hold
    /// different seals of it (a device seals each transaction; a folder one per block).
    pub fn contents(&self) -> Vec<Entry> {
        self.dump().into_iter().map(|e| Entry { seal: None, ..e }).collect()
    }

    /// Every entry held, by origin, in index order, with the seals this replica holds.
    pub fn dump(&self) -> Vec<Entry> {
        let st = self.lock();
        let mut origins: Vec<_> = st.logs.keys().copied().collect();
        origins.sort();
        origins.iter().flat_map(|o| st.logs[o].0.iter().cloned()).collect()
    }
}

#[async_trait]
impl HasCursors for MemoryReplica {
    async fn cursors(&self) -> Result<PeerCursors, SyncError> {
        Ok(self.cursors.current())
    }

    fn watch_cursors(&self) -> CursorStream {
        self.cursors.subscribe()
    }
}

#[async_trait]
impl LogSource<Entry> for MemoryReplica {
    async fn read_since(&self, origin: PeerId, from: u64) -> Result<Vec<Entry>, SyncError> {
        let st = self.lock();
        let Some((log, _)) = st.logs.get(&origin) else { return Ok(Vec::new()) };
        let start = usize::try_from(from).unwrap_or(usize::MAX).min(log.len());
        // Stored logs end on a seal, so the extension always finds one.
        let mut end = (start + PAGE).min(log.len());
        while end < log.len() && log[end - 1].seal.is_none() {
            end += 1;
        }
        Ok(log[start..end].to_vec())
    }
}

#[async_trait]
impl LogProcessor<Entry> for MemoryReplica {
    async fn apply_batch(
        &self,
        origin: PeerId,
        entries: Vec<Entry>,
    ) -> Result<BatchApplied, SyncError> {
        // In memory the whole apply runs under one lock: there is no database write lock
        // to keep verification out of.
        let mut st = self.lock();
        let log = st
            .logs
            .entry(origin)
            .or_insert_with(|| (Vec::new(), ChainPosition::start(&self.workspace, &origin)));
        let mut run = self.ingest.verify(origin, log.1, entries);
        log.0.extend(run.entries().iter().cloned());
        log.1 = run.end();
        let next = log.1.next;
        drop(st);
        let new = run.entries().len() as u64;
        if new > 0 {
            self.cursors.publish(&[(origin, next)].into_iter().collect());
        }
        match run.take_stop() {
            Some(e) => Err(e),
            None => Ok(BatchApplied { new, duplicates: run.duplicates(), next }),
        }
    }
}
