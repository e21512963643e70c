//! [`SqliteReplica`]: a replica over one SQLite file.
//!
//! Owns: the oplog (keyed by origin, index; it is also the history), per-origin cursors and
//! chain positions, the persisted HLC, the device key (loaded from the key file, see
//! `keyfile`), the two pools of read connections (Shoal's own, and app SQL's behind the
//! authorizer of `guard`), local appends, applying received
//! entries, paging reads, and cursor notifications.
//!
//! Invariants:
//! - A local append is one SQLite transaction: stamp with the HLC, append to the oplog,
//!   materialize, advance the cursor and chain and persist the clock (one row). It returns
//!   only after the commit is durable (`synchronous = FULL`). It signs nothing: this device's
//!   own log is sealed at every 1,024th index and, when a page of it is read out, at the tip
//!   (`read_range`), so every page handed out still ends on a seal.
//! - `apply` takes received entries through the core ingest pipeline
//!   ([`shoal_core::Ingest`]), outside the write lock, and stores only the [`VerifiedRun`] it
//!   returns, so every stored log ends on a sealed entry. Storing is atomic with the cursor
//!   advance.
//! - Stall, never abort: an authentic entry that cannot be materialized (an op of a newer
//!   version, a malformed op, a storage limit, an entry the membership hook holds) is still
//!   stored and its cursor advances; materializing its origin stops there with the reason
//!   recorded for `status`, and every other origin goes on. Only failures of the file itself
//!   (I/O, a full disk, a busy lock) abort an apply.
//! - State that other processes may change (cursors, clock, positions) is read inside the
//!   write transaction, never cached, so several processes may share one file.
//! - Remote applies commit with `synchronous = NORMAL`: a power loss may forget the last of
//!   them, together with their cursor advance, and they are pulled again. Local writes are
//!   never forgotten once acknowledged.
//!
//! Never: writes an entry of another origin that failed verification; blocks a writer on a
//! watcher; panics on what it reads from the file (a damaged row is an error naming the file,
//! origin and index).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use shoal_core::SignedHead;
use shoal_core::codec::DecodeError;
use shoal_core::encryption::OpenError as SealedOpenError;
use shoal_core::{
    BatchApplied, ChainHash, ChainPosition, CursorBroadcast, CursorStream, DeviceKey, Entry,
    EntryBody, EntryClass, EntryHash, HasCursors, Hlc, HlcClock, Ingest, LogProcessor, LogSource,
    Op, OwnLog, PAGE_BYTES, Payload, PeerCursors, PeerId, PublicKey, Seal, SyncError, SystemClock,
    UserId, VerifiedRun, WallClock, WorkspaceId, run_blocking,
};

use crate::checkpoint::Checkpointer;
use crate::crypt::Crypt;
use crate::guard::AppReader;
use crate::keyfile;
use crate::materialize::{DomainRouter, MaterializeError, Materializer};
use crate::schema::{self, OpenError};

/// Entries per `read_since` page before it is extended to the next seal (a page also ends
/// after [`PAGE_BYTES`] of payload). Large enough that a catch-up commits rarely.
pub const PAGE_ENTRIES: usize = 4096;

/// How often a watched replica looks for commits made by other processes.
const EXTERNAL_POLL: Duration = Duration::from_millis(50);

/// A replica over one SQLite file. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct SqliteReplica {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) path: PathBuf,
    pub(crate) workspace: WorkspaceId,
    pub(crate) device: Option<DeviceKey>,
    /// The invite secret this device joined with (from its key file), if kept.
    pub(crate) invite: Option<DeviceKey>,
    writer: Mutex<Writer>,
    readers: Mutex<Vec<Connection>>,
    /// Connections for app SQL, each with the authorizer installed (`guard`).
    app_readers: Mutex<Vec<AppReader>>,
    pub(crate) cursors: CursorBroadcast,
    pub(crate) clock: Arc<dyn WallClock>,
    ingest: Ingest,
    /// The membership roster as last folded (`members`).
    pub(crate) roster: crate::members::RosterCache,
    /// The file records that the workspace is members-only (`members`).
    pub(crate) members_expected: std::sync::atomic::AtomicBool,
    /// The keys this device holds, as last derived (`crypt`).
    pub(crate) keyring: crate::crypt::KeyringCache,
    /// For a replica without a device key that rebuilds a device's state
    /// (`SqliteReplica::rebuild_like`): the device's origin and keys.
    pub(crate) rebuilding: std::sync::OnceLock<(PeerId, Arc<shoal_core::encryption::Keyring>)>,
    /// The file records that the workspace is encrypted (`crypt`).
    pub(crate) encryption_expected: std::sync::atomic::AtomicBool,
    /// Whether the genesis policy encrypts data, once the genesis is here (fixed for life:
    /// a commit in a plaintext workspace then reads no roster).
    pub(crate) encrypted_policy: std::sync::OnceLock<bool>,
    /// Opened with [`SqliteReplica::open_read_only`]: every write is refused.
    read_only: bool,
    poller: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

pub(crate) struct Writer {
    pub(crate) conn: Connection,
    pub(crate) materializer: DomainRouter,
    /// The connection's `synchronous` setting, so a commit sets it only when it changes.
    durability: Option<Durability>,
    /// Checkpoints the write-ahead log off this thread (none when read-only).
    checkpointer: Option<Checkpointer>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Before the connection closes, so that the last connection to close (one of the
        // replica's) still merges the log into the file.
        if let Some(c) = &mut self.checkpointer {
            c.stop(&mut self.conn);
        }
    }
}

/// How durable a write transaction's commit is (`PRAGMA synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// Local writes: on disk when the commit returns.
    Full,
    /// Remote applies: a power loss may forget the last ones, which are pulled again.
    Normal,
}

impl Writer {
    pub(crate) fn set_durability(&mut self, want: Durability) -> rusqlite::Result<()> {
        if self.durability != Some(want) {
            let value = match want {
                Durability::Full => "FULL",
                Durability::Normal => "NORMAL",
            };
            self.conn.pragma_update(None, "synchronous", value)?;
            self.durability = Some(want);
        }
        Ok(())
    }
}

impl fmt::Debug for SqliteReplica {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteReplica")
            .field("path", &self.inner.path)
            .field("workspace", &self.inner.workspace)
            .finish_non_exhaustive()
    }
}

/// How to open or create a replica.
pub struct Options {
    /// The wall clock (the system clock unless a test injects one).
    pub clock: Arc<dyn WallClock>,
    /// The domains to materialize, one materializer each (none by default: the replica is
    /// a pure log, as a relay's is).
    pub domains: Vec<Box<dyn Materializer>>,
}

impl Default for Options {
    fn default() -> Self {
        Options { clock: Arc::new(SystemClock), domains: Vec::new() }
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options").field("clock", &self.clock).finish_non_exhaustive()
    }
}

/// One local transaction to append: its ops and, optionally, who wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalTx {
    /// The ops, in order.
    pub ops: Vec<Op>,
    /// The author, if the app tracks one.
    pub author: Option<UserId>,
}

impl LocalTx {
    /// The class of the entry this transaction becomes (control or data); an error if it
    /// mixes them.
    pub fn class(&self) -> Result<shoal_core::EntryClass, shoal_core::MixedClasses> {
        shoal_core::EntryClass::of_ops(&self.ops)
    }
}

/// Where a local transaction landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalCommit {
    /// Its index in this device's log.
    pub index: u64,
    /// Its timestamp (op `i` has `hlc + i`).
    pub hlc: Hlc,
}

/// What the replica knows about one origin, for status displays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginStatus {
    /// The origin.
    pub origin: PeerId,
    /// Entries held (the cursor).
    pub next: u64,
    /// Entries applied to the materialized state.
    pub materialized: u64,
    /// Why the origin does not advance, if it does not.
    pub stalled: Option<String>,
    /// When it stalled (Unix milliseconds).
    pub stalled_at: Option<u64>,
    /// The origin's successor, if one took over: entries from `from` on are stored, never
    /// applied, and are not a stall.
    pub superseded: Option<crate::succession::Superseded>,
    /// Why entries of the origin are held by membership (a device not admitted, removed,
    /// or gone): stored and forwarded, not applied, and not a stall: that is the rule
    /// working, not something to fix here.
    pub pending: Option<String>,
}

impl SqliteReplica {
    /// Creates a new workspace file at `path` for `workspace`, holding `device` as this
    /// device's key (or none, for a replica that only relays).
    pub fn create(
        path: impl AsRef<Path>,
        workspace: WorkspaceId,
        device: Option<DeviceKey>,
        options: Options,
    ) -> Result<Self, OpenError> {
        Self::create_with_invite(path, workspace, device, None, options)
    }

    /// [`SqliteReplica::create`] for a device joining with an invite code: the invite's
    /// secret is kept in the key file beside the device key (the epoch keys of an
    /// encrypted workspace reach the new device wrapped for it).
    pub fn create_with_invite(
        path: impl AsRef<Path>,
        workspace: WorkspaceId,
        device: Option<DeviceKey>,
        invite: Option<DeviceKey>,
        options: Options,
    ) -> Result<Self, OpenError> {
        let path = path.as_ref();
        if path.exists() {
            return Err(OpenError::AlreadyExists { path: path.to_owned() });
        }
        let mut meta = vec![("workspace", workspace.as_bytes().to_vec())];
        // The secret key goes to the key file, written durably before the workspace that
        // names it; the workspace records only the public key it expects.
        let key_file = keyfile::key_path(path);
        if let Some(key) = &device {
            keyfile::write_new(&key_file, &workspace, key, invite.as_ref())?;
            meta.push(("device_public", key.public_key().as_bytes().to_vec()));
        }
        let conn = match schema::create(path, &meta) {
            Ok(conn) => conn,
            Err(e) => {
                if device.is_some() {
                    // Ours: written just above, for a workspace that does not exist.
                    let _ = std::fs::remove_file(&key_file);
                }
                return Err(e);
            }
        };
        Self::finish_open(path, conn, options, false)
    }

    /// Opens an existing workspace file.
    pub fn open(path: impl AsRef<Path>, options: Options) -> Result<Self, OpenError> {
        let path = path.as_ref();
        let conn = schema::open_existing(path, false)?;
        Self::finish_open(path, conn, options, false)
    }

    /// Opens an existing workspace file for reading only (a file this process cannot write,
    /// a backup being inspected): nothing is written to it, not even the materializer's
    /// upkeep, so the views are the ones the file holds; every write — a local commit, an
    /// apply, a sync — fails with an error saying the file is open read-only.
    pub fn open_read_only(path: impl AsRef<Path>, options: Options) -> Result<Self, OpenError> {
        let path = path.as_ref();
        let conn = schema::open_existing(path, true)?;
        Self::finish_open(path, conn, options, true)
    }

    /// Whether this replica was opened read-only.
    pub fn is_read_only(&self) -> bool {
        self.inner.read_only
    }

    /// Fails, naming the file, if the replica was opened read-only.
    pub fn check_writable(&self) -> Result<(), SyncError> {
        if self.inner.read_only {
            return Err(SyncError::Unavailable {
                what: self.inner.path.display().to_string(),
                reason: "the workspace is open read-only (this process cannot write the file): \
                         nothing can be written or synced"
                    .into(),
            });
        }
        Ok(())
    }

    fn finish_open(
        path: &Path,
        conn: Connection,
        options: Options,
        read_only: bool,
    ) -> Result<Self, OpenError> {
        let damaged = |what: String| OpenError::Damaged { path: path.to_owned(), what };
        let sql = |e| OpenError::sqlite(path, e);
        let ws = schema::meta(&conn, "workspace").map_err(sql)?;
        let workspace = ws
            .as_deref()
            .and_then(WorkspaceId::from_slice)
            .ok_or_else(|| damaged("the workspace id is missing or not 16 bytes".into()))?;
        let secrets = match schema::meta(&conn, "device_public").map_err(sql)? {
            None => None,
            Some(bytes) => {
                let public: [u8; 32] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| damaged("the device public key is not 32 bytes".into()))?;
                let public = PublicKey::from_bytes(&public)
                    .map_err(|_| damaged("the device public key is not an Ed25519 key".into()))?;
                if !read_only {
                    crate::succession::finish_key_handover(path, &workspace, &public)?;
                }
                match keyfile::read(&keyfile::key_path(path), &workspace, &public) {
                    Ok(secrets) => Some(secrets),
                    // Reading needs no key: a read-only look at a file whose key is not
                    // readable here still works.
                    Err(_) if read_only => None,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let mut writer = Writer {
            conn,
            materializer: DomainRouter::new(options.domains),
            durability: None,
            checkpointer: None,
        };
        if !read_only {
            writer.checkpointer = Some(Checkpointer::start(path, &mut writer.conn).map_err(sql)?);
            // IMMEDIATE: another process may be writing this file; taking the write lock up
            // front lets the busy timeout wait for it (a deferred transaction that reads and
            // then writes fails at once with SQLITE_BUSY instead).
            let tx = writer
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(sql)?;
            tx.execute_batch(crate::succession::DDL).map_err(sql)?;
            crate::members::ensure(&tx).map_err(sql)?;
            writer.materializer.init(&tx).map_err(sql)?;
            tx.commit().map_err(sql)?;
        }
        let cursors = read_cursors(&writer.conn).map_err(sql)?;
        let members_expected = crate::members::members_expected(&writer.conn).map_err(sql)?;
        let encryption_expected = crate::crypt::encryption_expected(&writer.conn).map_err(sql)?;
        let (device, invite) = match secrets {
            Some(s) => (Some(s.device), s.invite),
            None => (None, None),
        };
        let ingest = Ingest::new(workspace).with_clock(options.clock.clone());
        let ingest = match &device {
            Some(key) => ingest.with_own_origin(key.peer_id(&workspace)),
            None => ingest,
        };
        let replica = SqliteReplica {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                workspace,
                device,
                invite,
                writer: Mutex::new(writer),
                readers: Mutex::new(Vec::new()),
                app_readers: Mutex::new(Vec::new()),
                cursors: CursorBroadcast::new(cursors),
                ingest,
                roster: std::sync::Mutex::new(None),
                members_expected: std::sync::atomic::AtomicBool::new(members_expected),
                keyring: std::sync::Mutex::new(None),
                rebuilding: std::sync::OnceLock::new(),
                encryption_expected: std::sync::atomic::AtomicBool::new(encryption_expected),
                encrypted_policy: std::sync::OnceLock::new(),
                clock: options.clock,
                read_only,
                poller: Mutex::new(None),
            }),
        };
        if !read_only {
            replica.resume_materialization().map_err(|e| damaged(e.to_string()))?;
        }
        Ok(replica)
    }

    /// The workspace file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The workspace id.
    pub fn workspace(&self) -> WorkspaceId {
        self.inner.workspace
    }

    /// This device's origin, if the replica holds a device key.
    pub fn own_origin(&self) -> Option<PeerId> {
        self.inner.device.as_ref().map(|k| k.peer_id(&self.inner.workspace))
    }

    /// This device's signing key, for the sinks that publish its log (a folder sink signs
    /// nothing itself, but is bound to the key's origin). `None` for a relay replica.
    pub fn device_key(&self) -> Option<&DeviceKey> {
        self.inner.device.as_ref()
    }

    /// Reads a bookkeeping value stored beside the log (for example when a folder last
    /// synced).
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, SyncError> {
        let path = self.inner.path.clone();
        self.with_reader(|conn| {
            schema::meta(conn, key)
                .map_err(|e| SyncError::backend(format!("{}: read {key}", path.display()), e))
        })
    }

    /// Removes a bookkeeping value (as [`SqliteReplica::set_meta`], reserved keys refused).
    pub fn remove_meta(&self, key: &str) -> Result<(), SyncError> {
        self.write_meta(key, None)
    }

    /// Stores a bookkeeping value beside the log. Keys starting with `workspace` or
    /// `device` are the replica's own and refused.
    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), SyncError> {
        self.write_meta(key, Some(value))
    }

    fn write_meta(&self, key: &str, value: Option<&[u8]>) -> Result<(), SyncError> {
        self.check_writable()?;
        if key.starts_with("workspace") || key.starts_with("device") {
            return Err(SyncError::Misuse(format!("metadata key {key:?} is reserved")));
        }
        let guard = self.writer();
        match value {
            Some(value) => guard.conn.execute(
                "INSERT INTO shoal_meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            ),
            None => guard.conn.execute("DELETE FROM shoal_meta WHERE key = ?1", params![key]),
        }
        .map_err(self.backend("write metadata"))?;
        Ok(())
    }

    /// The wall clock this replica stamps with.
    pub fn wall_clock(&self) -> &Arc<dyn WallClock> {
        &self.inner.clock
    }

    /// Runs `f` in an immediate write transaction of the writer connection, with the
    /// materializer begun: committed if `f` succeeds, rolled back (materializer included)
    /// if anything fails. `what` names the step in errors.
    pub(crate) fn in_write_transaction<T>(
        &self,
        what: &str,
        f: impl FnOnce(&mut Writer) -> rusqlite::Result<T>,
    ) -> Result<T, SyncError> {
        let mut guard = self.writer();
        let w = &mut *guard;
        w.conn.execute_batch("BEGIN IMMEDIATE").map_err(self.backend(&format!("begin: {what}")))?;
        let result = w.materializer.begin(&w.conn).and_then(|()| f(w));
        match result.map_err(self.backend(what)).and_then(|r| {
            w.conn
                .execute_batch("COMMIT")
                .map_err(self.backend(&format!("commit: {what}")))
                .map(|()| r)
        }) {
            Ok(r) => {
                w.materializer.committed();
                Ok(r)
            }
            Err(e) => {
                let _ = w.conn.execute_batch("ROLLBACK");
                w.materializer.rolled_back();
                Err(e)
            }
        }
    }

    pub(crate) fn writer(&self) -> MutexGuard<'_, Writer> {
        // A panic while the writer was held cannot leave a half-done transaction behind:
        // rusqlite rolls back an uncommitted transaction when it is dropped during unwinding.
        self.inner.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn backend(&self, what: &str) -> impl Fn(rusqlite::Error) -> SyncError + '_ {
        let what = what.to_owned();
        move |e| SyncError::backend(format!("{}: {what}", self.inner.path.display()), e)
    }

    /// Runs `f` on a read-only connection from the pool.
    pub fn with_reader<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, SyncError>,
    ) -> Result<T, SyncError> {
        let pooled = self.inner.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => schema::open_existing(&self.inner.path, true).map_err(|e| {
                SyncError::Unavailable {
                    what: self.inner.path.display().to_string(),
                    reason: e.to_string(),
                }
            })?,
        };
        let out = f(&conn);
        self.inner.readers.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
        out
    }

    /// Runs `f` on a read-only connection for app SQL: an SQLite authorizer refuses what
    /// app SQL may not do (read Shoal's or SQLite's own tables other than through the views,
    /// `ATTACH`, pragmas that change anything, transactions; see the `guard` module). The
    /// connection's schema is current when `f` starts.
    pub fn with_app_reader<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, SyncError>,
    ) -> Result<T, SyncError> {
        let path = &self.inner.path;
        let pooled = self.inner.app_readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let reader = match pooled {
            Some(r) => r,
            None => {
                let conn =
                    schema::open_existing(path, true).map_err(|e| SyncError::Unavailable {
                        what: path.display().to_string(),
                        reason: e.to_string(),
                    })?;
                AppReader::new(conn).map_err(self.backend("install the SQL authorizer"))?
            }
        };
        let out = match reader.prepare_for_app() {
            Ok(conn) => f(conn),
            Err(e) => Err(self.backend("read the schema")(e)),
        };
        self.inner.app_readers.lock().unwrap_or_else(|p| p.into_inner()).push(reader);
        out
    }

    /// Appends local transactions to this device's log, all in one SQLite transaction,
    /// materializes them, and returns once that transaction is durable.
    pub fn append_local(&self, txs: Vec<LocalTx>) -> Result<Vec<LocalCommit>, SyncError> {
        self.check_writable()?;
        let key = self.inner.device.clone().ok_or_else(|| {
            SyncError::Misuse("this replica holds no device key; it cannot write".into())
        })?;
        if txs.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(Err(e)) = txs.iter().map(|t| t.class()).find(Result::is_err) {
            return Err(SyncError::Misuse(e.to_string()));
        }
        let ws = self.inner.workspace;
        let origin = key.peer_id(&ws);
        let control = txs.iter().any(|t| t.class() == Ok(EntryClass::Control));
        let data = txs.iter().any(|t| t.class() == Ok(EntryClass::Data));
        let mut guard = self.writer();
        guard.set_durability(Durability::Full).map_err(self.backend("set synchronous"))?;
        let Writer { conn, materializer, .. } = &mut *guard;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(self.backend("begin local write"))?;
        let result = (|| {
            materializer.begin(&tx).map_err(self.backend("begin materializing"))?;
            // A successor of this origin stops its writes if they would be superseded, or
            // if this file handed its key over (a fork's successor supersedes nothing, but
            // the copy that handed over must not write under the old key either).
            let handed_over = || -> Result<bool, SyncError> {
                let public = schema::meta(&tx, "device_public")
                    .map_err(self.backend("read the device key"))?;
                Ok(public.as_deref() != Some(key.public_key().as_bytes().as_slice()))
            };
            let next = read_origin(&tx, &origin)
                .map_err(self.backend("read own position"))?
                .map_or(0, |r| r.position.next);
            if let Some(s) = crate::succession::superseded(&tx, &origin)
                .map_err(self.backend("read own successor"))?
                && (s.from <= next || handed_over()?)
            {
                return Err(SyncError::Misuse(format!(
                    "this device's key was handed over to {} (clock or fork recovery): \
                     reopen the workspace to write",
                    s.successor
                )));
            }
            let mut clock = HlcClock::resume(read_clock(&tx).map_err(self.backend("read clock"))?);
            let row = origin_row(&tx, &ws, &origin).map_err(self.backend("read own position"))?;
            let position = row.position;
            let materialized_to = row.materialized;
            let wall = self.inner.clock.now_millis();
            let payloads: Vec<Payload> = txs
                .into_iter()
                .map(|t| Payload {
                    hlc: clock.tick(wall, t.ops.len()),
                    author: t.author,
                    ops: t.ops,
                })
                .collect();
            let mut own = OwnLog::resume(key.clone(), ws, position);
            // Data entries of an encrypted workspace are sealed under the newest epoch key
            // held, and materialized here from the plaintext in hand.
            let crypt = if data && self.inner.encrypted_policy.get() != Some(&false) {
                let roster = crate::members::roster(&self.inner.roster, &tx, &ws)
                    .map_err(self.backend("read the membership"))?;
                Some(self.crypt(&roster)).filter(|c| c.encrypted)
            } else {
                None
            };
            // No signature per commit: the tip is sealed when the log is read out (read_range).
            let (entries, plaintext) = match &crypt {
                Some(c) => {
                    let entries = own
                        .append_unsealed_encrypted(payloads.clone(), &c.keys)
                        .map_err(|e| SyncError::Unavailable {
                            what: self.inner.path.display().to_string(),
                            reason: e.to_string(),
                        })?;
                    (entries, Some(payloads))
                }
                None => (own.append_unsealed(payloads), None),
            };
            let mut commits = Vec::with_capacity(entries.len());
            let mut materialized = materialized_to;
            {
                let mut insert = tx
                    .prepare_cached(
                        "INSERT INTO shoal_oplog (id, hlc, expunged, payload, seal) VALUES (?1, ?2, 0, ?3, ?4)",
                    )
                    .map_err(self.backend("prepare oplog insert"))?;
                for (i, (entry, bytes)) in entries.iter().enumerate() {
                    let payload = match (&entry.body, &plaintext) {
                        (_, Some(plain)) => &plain[i],
                        (EntryBody::Live(p), None) => p,
                        _ => return Err(SyncError::Bug("a local entry was built expunged".into())),
                    };
                    insert
                        .execute(params![
                            oplog_id(row.no, entry.index)?,
                            payload.hlc.as_u64() as i64,
                            bytes,
                            entry.seal.as_ref().map(|s| s.signature.as_slice()),
                        ])
                        .map_err(self.backend("append to the oplog"))?;
                    crate::members::record(&tx, entry, bytes)
                        .map_err(self.backend("record a control entry"))?;
                    // Our own origin only stalls materialization if a newer version wrote
                    // this log before (a restored backup); keep entries in order then.
                    if materialized == entry.index {
                        match materializer.apply(&tx, origin, entry.index, payload) {
                            Ok(()) => materialized += 1,
                            Err(
                                MaterializeError::NeedsUpgrade(what)
                                | MaterializeError::Malformed(what),
                            ) => {
                                return Err(SyncError::NeedsUpgrade {
                                    origin,
                                    index: entry.index,
                                    what,
                                });
                            }
                            Err(MaterializeError::Sqlite(e)) => {
                                return Err(self.backend("materialize")(e));
                            }
                        }
                    }
                    commits.push(LocalCommit { index: entry.index, hlc: payload.hlc });
                }
            }
            let at = OriginWrite {
                position: own.position(),
                key: Some(&key.public_key()),
                materialized,
                clock: clock.last(),
            };
            write_origin(&tx, &origin, at).map_err(self.backend("advance own cursor"))?;
            Ok((commits, own.position().next))
        })();
        match result {
            Ok((commits, next)) => {
                if let Err(e) = tx.commit() {
                    materializer.rolled_back();
                    return Err(self.backend("commit local write")(e));
                }
                materializer.committed();
                drop(guard);
                self.inner.cursors.publish(&[(origin, next)].into_iter().collect());
                if control {
                    // An admission, removal or ack of this device's changes what applies.
                    self.resume_materialization()?;
                }
                Ok(commits)
            }
            Err(e) => {
                drop(tx);
                materializer.rolled_back();
                Err(e)
            }
        }
    }

    /// Applies received entries of `origin` (ascending). See [`LogProcessor::apply_batch`]
    /// and the module doc: the ingest pipeline runs first, outside the write lock; then the
    /// verified run is stored in one transaction, if the origin did not move meanwhile.
    pub fn apply_entries(
        &self,
        origin: PeerId,
        entries: Vec<Entry>,
    ) -> Result<BatchApplied, SyncError> {
        self.check_writable()?;
        let mut entries = entries;
        let successor = entries.iter().any(crate::succession::names_a_successor);
        let control = entries.iter().any(crate::members::is_control);
        // A new device's entry 0 (its join or request).
        let new_device = self.own_origin() != Some(origin)
            && entries.first().is_some_and(|e| e.index == 0 && crate::members::is_control(e));
        self.ack_before_cutting(&entries)?;
        loop {
            let position = self.position(origin)?;
            let cut = self.superseded(origin)?.map(|s| s.from);
            let run = self.inner.ingest.verify_with(origin, position, entries, cut);
            match self.store_verified(run)? {
                Ok(applied) => {
                    if successor || control {
                        // Entries applied here may be superseded now (rebuild), stalls on
                        // superseded entries end, and entries held for membership may
                        // apply now.
                        self.resume_materialization()?;
                    }
                    if new_device && applied.as_ref().is_ok_and(|a| a.new > 0) {
                        self.ack_new_device()?;
                    }
                    if control && applied.as_ref().is_ok_and(|a| a.new > 0) {
                        // A member that lacks a key of the encrypted workspace gets it.
                        self.share_keys()?;
                    }
                    return applied;
                }
                // Another writer moved this origin since it was read: verify again from where
                // it is now (what it already stored are duplicates then).
                Err(moved) => entries = moved.into_entries(),
            }
        }
    }

    /// The receiver position of `origin` as stored (the start of its log if unknown).
    pub(crate) fn position(&self, origin: PeerId) -> Result<ChainPosition, SyncError> {
        let ws = self.inner.workspace;
        let path = self.inner.path.clone();
        self.with_reader(|conn| {
            let row = read_origin(conn, &origin).map_err(|e| {
                SyncError::backend(format!("{}: read the position of {origin}", path.display()), e)
            })?;
            Ok(row.map_or(ChainPosition::start(&ws, &origin), |r| r.position))
        })
    }

    /// Stores a verified run and materializes what it can (stalling, never aborting, on an
    /// entry it cannot materialize). Gives the run back if the origin's stored position is no
    /// longer the one it was verified against.
    #[allow(clippy::type_complexity)]
    fn store_verified(
        &self,
        mut run: VerifiedRun,
    ) -> Result<Result<Result<BatchApplied, SyncError>, VerifiedRun>, SyncError> {
        let ws = self.inner.workspace;
        let origin = run.origin();
        let wall = self.inner.clock.now_millis();
        let mut guard = self.writer();
        guard.set_durability(Durability::Normal).map_err(self.backend("set synchronous"))?;
        let Writer { conn, materializer, .. } = &mut *guard;
        // The first entry not to materialize in this transaction, and why: the membership
        // hook's hold, or (after a rolled-back attempt) the entry whose materialization failed.
        let mut stall: Option<(u64, String)> = run.held().map(|(i, why)| (i, why.to_owned()));
        loop {
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(self.backend("begin apply"))?;
            let attempt = (|| {
                let row = origin_row(&tx, &ws, &origin).map_err(self.backend("read position"))?;
                let cut = crate::succession::superseded(&tx, &origin)
                    .map_err(self.backend("read successor"))?
                    .map(|s| s.from);
                if row.position != run.start() || cut != run.superseded_from() {
                    return Ok(Attempt::Moved);
                }
                let superseded = |index: u64| cut.is_some_and(|c| index >= c);
                // Entries past the origin's membership limit are stored, held (not applied).
                let roster =
                    crate::members::roster_with(&self.inner.roster, &tx, &ws, run.entries())
                        .map_err(self.backend("read the membership"))?;
                // Held from the first entry not yet applied at or past the limit.
                let held_from = self.limit_of(&roster, &origin).max(row.materialized);
                if let Some(first) = run.entries().iter().find(|e| e.index >= held_from)
                    && stall.as_ref().is_none_or(|(i, _)| *i > held_from)
                {
                    let why = crate::members::hold(&roster, &origin, held_from, &first.body)
                        .unwrap_or_else(|| "not a member".into());
                    stall = Some((held_from, why));
                }
                let crypt = self.crypt(&roster);
                // The chain before each entry, which an encrypted entry's associated data binds.
                let mut prev = run.start().chain;
                materializer.begin(&tx).map_err(self.backend("begin materializing"))?;
                let mut clock =
                    HlcClock::resume(read_clock(&tx).map_err(self.backend("read clock"))?);
                let mut materialized = row.materialized;
                {
                    let mut insert = tx
                        .prepare_cached(
                            "INSERT INTO shoal_oplog (id, hlc, expunged, payload, seal) VALUES (?1, ?2, ?3, ?4, ?5)",
                        )
                        .map_err(self.backend("prepare oplog insert"))?;
                    let mut buf = Vec::with_capacity(256);
                    for e in run.entries() {
                        buf.clear();
                        e.body.encode_stored(&mut buf);
                        if let Some(last) = e.body.last_hlc()
                            && !superseded(e.index)
                        {
                            // The pipeline checked the skew against this same clock.
                            let _ = clock.observe(last, wall);
                        }
                        insert
                            .execute(params![
                                oplog_id(row.no, e.index)?,
                                e.body.hlc().map_or(0, |h| h.as_u64() as i64),
                                matches!(e.body, EntryBody::Expunged(_)),
                                &buf,
                                e.seal.as_ref().map(|s| s.signature.as_slice()),
                            ])
                            .map_err(self.backend("append to the oplog"))?;
                        crate::members::record(&tx, e, &buf)
                            .map_err(self.backend("record a control entry"))?;
                        let before = prev;
                        if crypt.encrypted {
                            prev = prev.link(&match &e.body {
                                EntryBody::Expunged(h) => *h,
                                _ => EntryHash::of_stored(&origin, e.index, &buf),
                            });
                        }
                        let stalled_here = stall.as_ref().is_some_and(|(i, _)| *i <= e.index);
                        if materialized != e.index || stalled_here || superseded(e.index) {
                            continue;
                        }
                        match materialize_entry(materializer, &tx, &ws, &crypt, &before, e) {
                            Ok(()) => materialized += 1,
                            Err(Unmaterialized::Stall(why) | Unmaterialized::Hold(why)) => {
                                return Ok(Attempt::Failed { index: e.index, why });
                            }
                            Err(Unmaterialized::Abort(err)) => {
                                return Err(self.backend("materialize")(err));
                            }
                        }
                    }
                }
                if !run.entries().is_empty() {
                    let key = run.key();
                    let at = OriginWrite {
                        position: run.end(),
                        key: key.as_ref(),
                        materialized,
                        clock: clock.last(),
                    };
                    write_origin(&tx, &origin, at).map_err(self.backend("advance cursor"))?;
                }
                let reason = match (&stall, run.stop()) {
                    (Some((i, why)), _) => Some(format!("entry {i} is not applied: {why}")),
                    (None, Some(e)) => Some(e.to_string()),
                    (None, None) => None,
                };
                // A materialization stall recorded earlier (in an earlier batch, or at open)
                // stays until the origin materializes again: a later, lesser reason (a gap, a
                // skewed entry further on) must not hide that entries are not applied.
                let applicable = |next: u64| cut.map_or(next, |c| c.min(next));
                let still_stalled = materialized
                    < applicable(run.end().next.max(row.position.next))
                    && materialized == row.materialized
                    && row.materialized < applicable(row.position.next);
                // A stop on a superseded entry is no stall: it will never be applied.
                let reason = match run.stop() {
                    Some(
                        SyncError::ClockSkew { index, .. } | SyncError::Gap { expected: index, .. },
                    ) if stall.is_none() && superseded(*index) => None,
                    _ => reason,
                };
                let reason = if still_stalled && stall.is_none() { None } else { reason };
                if reason.is_some() || materialized > row.materialized {
                    set_stall(&tx, &ws, &origin, reason.as_deref(), wall)
                        .map_err(self.backend("record stall"))?;
                }
                Ok(Attempt::Stored)
            })();
            match attempt {
                Ok(Attempt::Stored) => {
                    if let Err(e) = tx.commit() {
                        materializer.rolled_back();
                        return Err(self.backend("commit apply")(e));
                    }
                    materializer.committed();
                    break;
                }
                Ok(Attempt::Moved) => {
                    drop(tx);
                    materializer.rolled_back();
                    return Ok(Err(run));
                }
                Ok(Attempt::Failed { index, why }) => {
                    // Some domain may have written part of the entry: undo the transaction and
                    // store the run again without materializing from that entry on.
                    drop(tx);
                    materializer.rolled_back();
                    if why.contains(crate::crypt::KEY_WAIT) {
                        tracing::debug!(%origin, index, reason = %why, "origin pending");
                    } else {
                        tracing::warn!(%origin, index, reason = %why, "origin stalled");
                    }
                    stall = Some((index, why));
                }
                Err(e) => {
                    drop(tx);
                    materializer.rolled_back();
                    return Err(e);
                }
            }
        }
        drop(guard);
        let applied = BatchApplied {
            new: run.entries().len() as u64,
            duplicates: run.duplicates(),
            next: run.end().next,
        };
        if applied.new > 0 {
            self.inner.cursors.publish(&[(origin, applied.next)].into_iter().collect());
        }
        Ok(Ok(match run.take_stop() {
            Some(e) => Err(e),
            None => Ok(applied),
        }))
    }

    /// Entries of `origin` from `from`, at least [`PAGE_ENTRIES`] if there are that many,
    /// extended to end on a sealed entry.
    pub fn read_page(&self, origin: PeerId, from: u64) -> Result<Vec<Entry>, SyncError> {
        self.read_range(origin, from, PAGE_ENTRIES)
    }

    fn read_range(&self, origin: PeerId, from: u64, page: usize) -> Result<Vec<Entry>, SyncError> {
        let path = self.inner.path.clone();
        let ws = self.inner.workspace;
        // This device's own log is sealed lazily: local commits sign nothing, and a page that
        // ends at the tip gets the signed head of the tip here (deterministic Ed25519, so the
        // same page always carries the same seal).
        let own_key = self.inner.device.as_ref().filter(|k| k.peer_id(&ws) == origin);
        self.with_reader(|conn| {
            let sql = |e| SyncError::backend(format!("{}: read the oplog of {origin}", path.display()), e);
            // One snapshot for the origin's position and its entries.
            let snapshot = conn.unchecked_transaction().map_err(sql)?;
            let Some(origin_at) = read_origin(&snapshot, &origin).map_err(sql)? else { return Ok(Vec::new()) };
            let row = &origin_at;
            let key = row.key;
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, hlc, expunged, payload, seal FROM shoal_oplog WHERE id >= ?1 AND id <= ?2 ORDER BY id",
                )
                .map_err(sql)?;
            let mut rows = stmt
                .query(params![oplog_id(row.no, from.min(MAX_INDEX))?, oplog_id(row.no, MAX_INDEX)?])
                .map_err(sql)?;
            let mut out = Vec::with_capacity(page.min(PAGE_ENTRIES));
            let mut bytes = 0;
            while let Some(row) = rows.next().map_err(sql)? {
                let entry = decode_row(&path, origin, key, row)?;
                let sealed = entry.seal.is_some();
                bytes += entry.approx_size();
                out.push(entry);
                if (out.len() >= page || bytes >= PAGE_BYTES) && sealed {
                    break;
                }
            }
            drop(rows);
            drop(stmt);
            if let Some(device) = own_key
                && let Some(last) = out.last_mut()
                && last.seal.is_none()
                && last.index + 1 == origin_at.position.next
            {
                let at = origin_at.position;
                last.seal = Some(SignedHead::sign(device, ws, at.next, at.chain).seal);
            }
            snapshot.commit().map_err(sql)?;
            Ok(out)
        })
    }

    /// The oplog of one origin (or all, in origin order) from `from`, at most `limit` rows:
    /// the history that `shoal log` shows.
    pub fn history(
        &self,
        origin: Option<PeerId>,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Entry>, SyncError> {
        match origin {
            Some(o) => {
                let mut page = self.read_range(o, from, limit)?;
                page.truncate(limit);
                Ok(page)
            }
            None => {
                let mut out = Vec::new();
                for (o, _) in self.durable_cursors()?.iter() {
                    if out.len() >= limit {
                        break;
                    }
                    let mut page = self.read_range(o, from, limit - out.len())?;
                    page.truncate(limit - out.len());
                    out.extend(page);
                }
                Ok(out)
            }
        }
    }

    /// Per-origin status: cursor, materialization progress, stall reason.
    pub fn origin_status(&self) -> Result<Vec<OriginStatus>, SyncError> {
        let path = self.inner.path.clone();
        let ws = self.inner.workspace;
        self.with_reader(|conn| {
            let sql = |e| SyncError::backend(format!("{}: read origin status", path.display()), e);
            let roster = crate::members::roster(&self.inner.roster, conn, &ws).map_err(sql)?;
            let mut stmt = conn
                .prepare_cached("SELECT origin, next, materialized, stalled, stalled_at FROM shoal_origins ORDER BY origin")
                .map_err(sql)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?, r.get::<_, Option<String>>(3)?, r.get::<_, Option<i64>>(4)?))
                })
                .map_err(sql)?;
            let mut out = Vec::new();
            for row in rows {
                let (origin, next, materialized, stalled, at) = row.map_err(sql)?;
                let origin = PeerId::from_slice(&origin).ok_or_else(|| damaged_row(&path, "an origin id is not 16 bytes"))?;
                let superseded = crate::succession::superseded(conn, &origin).map_err(sql)?;
                let (next, materialized) = (next as u64, materialized as u64);
                let held = materialized < next && materialized >= self.limit_of(&roster, &origin);
                let waits_for_key = stalled.as_deref().is_some_and(|s: &str| s.contains(crate::crypt::KEY_WAIT));
                let (stalled, pending) = if waits_for_key {
                    (None, stalled)
                } else if held {
                    let why = crate::members::hold(&roster, &origin, materialized, &EntryBody::Expunged(EntryHash([0; 32])));
                    (None, why.or(stalled))
                } else {
                    (stalled, None)
                };
                out.push(OriginStatus {
                    origin,
                    next,
                    materialized,
                    stalled,
                    stalled_at: if held || waits_for_key { None } else { at.map(|t| t as u64) },
                    superseded,
                    pending,
                });
            }
            Ok(out)
        })
    }

    /// Cursors as stored in the file (including commits by other processes).
    pub fn durable_cursors(&self) -> Result<PeerCursors, SyncError> {
        let path = self.inner.path.clone();
        let cursors = self.with_reader(|conn| {
            read_cursors(conn)
                .map_err(|e| SyncError::backend(format!("{}: read cursors", path.display()), e))
        })?;
        // Other processes may have advanced the file; let watchers know.
        self.inner.cursors.publish(&cursors);
        Ok(cursors)
    }

    /// Checks every stored entry: decodes it and recomputes each origin's chain from its
    /// seed, verifying every seal. Returns the number of entries checked. `progress` is
    /// called with the running count.
    pub fn verify_all(&self, mut progress: impl FnMut(u64)) -> Result<u64, SyncError> {
        let ws = self.inner.workspace;
        // Stored entries passed the skew check when they arrived; verifying them again must
        // not depend on today's clock.
        let verifier = Ingest::ignoring_skew(ws);
        let mut checked = 0;
        for (origin, next) in self.durable_cursors()?.iter() {
            let mut position = ChainPosition::start(&ws, &origin);
            while position.next < next {
                let page = self.read_page(origin, position.next)?;
                if page.is_empty() {
                    return Err(damaged_row(
                        &self.inner.path,
                        &format!(
                            "the oplog of {origin} ends at {} but its cursor is {next}",
                            position.next
                        ),
                    ));
                }
                let run = verifier.verify(origin, position, page);
                if let Some(e) = run.stop() {
                    return Err(damaged_row(
                        &self.inner.path,
                        &format!("the stored log of {origin} does not verify: {e}"),
                    ));
                }
                if run.entries().is_empty() {
                    return Err(damaged_row(
                        &self.inner.path,
                        &format!(
                            "the oplog of {origin} has unsealed entries from {}",
                            position.next
                        ),
                    ));
                }
                checked += run.entries().len() as u64;
                position = run.end();
                progress(checked);
            }
        }
        Ok(checked)
    }

    /// Re-applies stored entries whose materialization stalled (after an upgrade, or after a
    /// crash between versions). Runs at open.
    pub(crate) fn resume_materialization(&self) -> Result<(), SyncError> {
        // A successor applied while catching up may supersede entries applied before it:
        // then everything is materialized again (at most once per new successor).
        for _ in 0..8 {
            self.rematerialize_behind()?;
            let rebuild = self.settle_successions()?;
            if !(self.settle_membership()? || rebuild) {
                break;
            }
        }
        Ok(())
    }

    fn rematerialize_behind(&self) -> Result<(), SyncError> {
        let roster = self.roster()?;
        let applicable = |s: &OriginStatus| {
            let next = s.superseded.map_or(s.next, |c| c.from.min(s.next));
            next.min(self.limit_of(&roster, &s.origin))
        };
        let behind: Vec<OriginStatus> =
            self.origin_status()?.into_iter().filter(|s| s.materialized < applicable(s)).collect();
        let crypt = self.crypt(&roster);
        for status in behind {
            let mut from = status.materialized;
            let end = applicable(&status);
            let mut prev = if crypt.encrypted {
                self.chain_before(status.origin, from)?
            } else {
                ChainHash([0; 32]) // bound by no entry's associated data
            };
            while from < end {
                let mut page = self.read_page(status.origin, from)?;
                page.retain(|e| e.index < end);
                if page.is_empty() {
                    break;
                }
                let done = self.rematerialize(status.origin, from, &page, &crypt, prev)?;
                if done == from {
                    break; // still stalled: this version cannot apply it either
                }
                if crypt.encrypted {
                    let applied = &page[..(done - from) as usize];
                    prev = shoal_core::chain_through(
                        ChainPosition { next: from, chain: prev },
                        applied,
                    )
                    .map_err(|(expected, found)| {
                        SyncError::Bug(format!(
                            "a page of {} skips from {expected} to {found}",
                            status.origin
                        ))
                    })?;
                }
                from = done;
            }
        }
        Ok(())
    }

    fn rematerialize(
        &self,
        origin: PeerId,
        from: u64,
        page: &[Entry],
        crypt: &Crypt,
        start: ChainHash,
    ) -> Result<u64, SyncError> {
        let ws = self.inner.workspace;
        let wall = self.inner.clock.now_millis();
        let mut guard = self.writer();
        let Writer { conn, materializer, .. } = &mut *guard;
        // Entries at or after `stop` are left alone: the first attempt found one of them
        // cannot be materialized.
        let mut stop: Option<(u64, String)> = None;
        loop {
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(self.backend("begin rematerialize"))?;
            if let Err(e) = materializer.begin(&tx) {
                drop(tx);
                materializer.rolled_back();
                return Err(self.backend("begin materializing")(e));
            }
            let mut materialized = from;
            let mut failed = None;
            let mut prev = start;
            for e in page.iter().filter(|e| e.index >= from) {
                if stop.as_ref().is_some_and(|(i, _)| *i <= e.index) {
                    break;
                }
                let before = prev;
                if crypt.encrypted {
                    prev = prev.link(&e.hash());
                }
                match materialize_entry(materializer, &tx, &ws, crypt, &before, e) {
                    Ok(()) => materialized += 1,
                    Err(Unmaterialized::Stall(why) | Unmaterialized::Hold(why)) => {
                        failed = Some((e.index, why));
                        break;
                    }
                    Err(Unmaterialized::Abort(err)) => {
                        drop(tx);
                        materializer.rolled_back();
                        return Err(self.backend("materialize")(err));
                    }
                }
            }
            if let Some(f) = failed {
                drop(tx);
                materializer.rolled_back();
                stop = Some(f);
                continue;
            }
            let reason = stop.as_ref().map(|(i, why)| format!("entry {i} is not applied: {why}"));
            let r = (|| {
                tx.execute(
                    "UPDATE shoal_origins SET materialized = ?2 WHERE origin = ?1",
                    params![origin.as_bytes(), to_sql_index(materialized)?],
                )
                .map_err(self.backend("record materialization"))?;
                set_stall(&tx, &ws, &origin, reason.as_deref(), wall)
                    .map_err(self.backend("record stall"))?;
                tx.commit().map_err(self.backend("commit rematerialize"))
            })();
            return match r {
                Ok(()) => {
                    materializer.committed();
                    Ok(materialized)
                }
                Err(e) => {
                    materializer.rolled_back();
                    Err(e)
                }
            };
        }
    }

    /// Runs `f` with the writer connection and the materializer, outside any transaction
    /// the replica manages: for domain maintenance (the facade's schema bootstrap).
    pub fn with_writer<T>(
        &self,
        f: impl FnOnce(&mut Connection, &mut DomainRouter) -> Result<T, SyncError>,
    ) -> Result<T, SyncError> {
        let mut guard = self.writer();
        let Writer { conn, materializer, .. } = &mut *guard;
        f(conn, materializer)
    }

    fn ensure_poller(&self) {
        let mut poller = self.inner.poller.lock().unwrap_or_else(|p| p.into_inner());
        if poller.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return; // no runtime: watchers see this process's own commits only
        };
        let weak = Arc::downgrade(&self.inner);
        let path = self.inner.path.clone();
        *poller = Some(handle.spawn(async move {
            // A connection of its own: `data_version` is per connection and changes when any
            // *other* connection commits.
            let Ok(Ok(conn)) =
                tokio::task::spawn_blocking(move || schema::open_existing(&path, true)).await
            else {
                return;
            };
            let mut conn = Some(conn);
            let mut last_version = None;
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let replica = SqliteReplica { inner };
                let Some(c) = conn.take() else { return };
                let probe = tokio::task::spawn_blocking(move || {
                    let version = c.query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0));
                    (c, version)
                })
                .await;
                let Ok((c, Ok(version))) = probe else { return };
                conn = Some(c);
                // The first probe refreshes too: a commit may have landed before it.
                if last_version != Some(version) {
                    let _ = tokio::task::spawn_blocking(move || replica.durable_cursors()).await;
                } else {
                    drop(replica);
                }
                last_version = Some(version);
                tokio::time::sleep(EXTERNAL_POLL).await;
            }
        }));
    }
}

#[async_trait]
impl HasCursors for SqliteReplica {
    async fn cursors(&self) -> Result<PeerCursors, SyncError> {
        let me = self.clone();
        run_blocking(move || me.durable_cursors()).await
    }

    fn watch_cursors(&self) -> CursorStream {
        self.ensure_poller();
        self.inner.cursors.subscribe()
    }
}

#[async_trait]
impl LogSource<Entry> for SqliteReplica {
    async fn read_since(&self, origin: PeerId, from: u64) -> Result<Vec<Entry>, SyncError> {
        let me = self.clone();
        run_blocking(move || me.read_page(origin, from)).await
    }
}

#[async_trait]
impl LogProcessor<Entry> for SqliteReplica {
    async fn apply_batch(
        &self,
        origin: PeerId,
        entries: Vec<Entry>,
    ) -> Result<BatchApplied, SyncError> {
        let me = self.clone();
        run_blocking(move || me.apply_entries(origin, entries)).await
    }

    fn pull_first(&self) -> Vec<PeerId> {
        // Admins' logs first: a removal is then stored before the removed device's later
        // entries of the same pass (which would otherwise be applied and acknowledged).
        self.roster().map(|r| r.admins()).unwrap_or_default()
    }
}

/// How one attempt to store a verified run ended.
enum Attempt {
    Stored,
    /// The origin's stored position is no longer the run's start.
    Moved,
    /// Entry `index` cannot be materialized; the transaction must be rolled back.
    Failed {
        index: u64,
        why: String,
    },
}

/// Why an entry was not materialized.
enum Unmaterialized {
    /// The entry cannot be applied (by this version, or at all): its origin stalls there.
    Stall(String),
    /// The entry cannot be applied *yet* (its epoch key is not here): its origin is
    /// pending there until a control entry brings the key.
    Hold(String),
    /// The file itself failed (I/O, full disk, lock): the whole apply is abandoned.
    Abort(rusqlite::Error),
}

/// Materializes one stored entry through the domain router, opening it first if it is
/// encrypted (`prev`: the chain hash before it, which its associated data binds).
fn materialize_entry(
    router: &mut DomainRouter,
    conn: &Connection,
    workspace: &WorkspaceId,
    crypt: &Crypt,
    prev: &ChainHash,
    e: &Entry,
) -> Result<(), Unmaterialized> {
    let origin = e.origin;
    if let EntryBody::Live(p) = &e.body
        && crate::succession::names_a_successor(e)
    {
        // Recorded when its entry applies (so a successor op stalled behind an earlier
        // entry of its origin takes effect only once that entry applies).
        router.apply(conn, origin, e.index, p).map_err(|err| match err {
            MaterializeError::Sqlite(e) => Unmaterialized::Abort(e),
            other => Unmaterialized::Stall(other.to_string()),
        })?;
        return crate::succession::record(conn, workspace, &origin, p)
            .map(|_| ())
            .map_err(Unmaterialized::Abort);
    }
    let opened;
    let payload = match &e.body {
        EntryBody::Expunged(_) => return Ok(()),
        EntryBody::Encrypted(_) if !crypt.encrypted => {
            return Err(Unmaterialized::Stall(
                "it is encrypted, and the workspace was created without encryption".into(),
            ));
        }
        EntryBody::Encrypted(c) => {
            opened = crypt.keys.open(&origin, e.index, prev, c).map_err(|err| match err {
                SealedOpenError::NoKey { .. } => Unmaterialized::Hold(err.to_string()),
                other => Unmaterialized::Stall(other.to_string()),
            })?;
            &opened
        }
        EntryBody::Live(p) if crypt.encrypted && p.class() == Ok(EntryClass::Data) => {
            return Err(Unmaterialized::Stall(
                "a plaintext data entry in an encrypted workspace (refused: data must be \
                 encrypted)"
                    .into(),
            ));
        }
        EntryBody::Live(p) => p,
    };
    match router.apply(conn, origin, e.index, payload) {
        Ok(()) => Ok(()),
        Err(MaterializeError::NeedsUpgrade(what)) => {
            Err(Unmaterialized::Stall(format!("needs a newer Shoal: {what}")))
        }
        Err(MaterializeError::Malformed(what)) => {
            Err(Unmaterialized::Stall(format!("malformed: {what}")))
        }
        Err(MaterializeError::Sqlite(err)) if is_storage_failure(&err) => {
            Err(Unmaterialized::Abort(err))
        }
        // Anything else SQLite refuses (a limit, a constraint) is about this entry, not
        // the file: stall its origin, keep the others going.
        Err(MaterializeError::Sqlite(err)) => {
            Err(Unmaterialized::Stall(format!("the database refused it: {err}")))
        }
    }
}

/// True for SQLite failures of the file or the process (retry later), as opposed to a
/// refusal of one entry's contents.
fn is_storage_failure(err: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode as C;
    match err.sqlite_error_code() {
        Some(code) => matches!(
            code,
            C::DatabaseBusy
                | C::DatabaseLocked
                | C::SystemIoFailure
                | C::DiskFull
                | C::OutOfMemory
                | C::CannotOpen
                | C::ReadOnly
                | C::OperationInterrupted
                | C::DatabaseCorrupt
                | C::NotADatabase
                | C::FileLockingProtocolFailed
        ),
        // Not an SQLite error code: a conversion or API misuse in our own code.
        None => true,
    }
}

pub(crate) fn to_sql_index(index: u64) -> Result<i64, SyncError> {
    i64::try_from(index)
        .map_err(|_| SyncError::Misuse(format!("index {index} does not fit SQLite's INTEGER")))
}

pub(crate) fn damaged_row(path: &Path, what: &str) -> SyncError {
    SyncError::backend(format!("{}: damaged workspace", path.display()), Damaged(what.to_owned()))
}

/// Stored state that contradicts itself (for example a cursor past the stored entries).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Damaged(String);

pub(crate) fn decode_row(
    path: &Path,
    origin: PeerId,
    key: Option<PublicKey>,
    row: &rusqlite::Row<'_>,
) -> Result<Entry, SyncError> {
    let sql = |e| SyncError::backend(format!("{}: read the oplog of {origin}", path.display()), e);
    let index: i64 = row.get::<_, i64>(0).map_err(sql)? & MAX_INDEX as i64;
    let expunged: bool = row.get(2).map_err(sql)?;
    let payload: Vec<u8> = row.get(3).map_err(sql)?;
    let seal: Option<Vec<u8>> = row.get(4).map_err(sql)?;
    let at = |what: &'static str, problem: DecodeError| SyncError::Malformed {
        source_name: format!("{} (oplog row {origin}#{index})", path.display()),
        what,
        problem,
    };
    let invalid = |what: &'static str, msg: &'static str| {
        at(what, DecodeError { offset: 0, what: shoal_core::codec::DecodeProblem::Invalid(msg) })
    };
    let body = if expunged {
        let hash: [u8; 32] = payload
            .as_slice()
            .try_into()
            .map_err(|_| invalid("expunged entry", "the kept hash is not 32 bytes"))?;
        EntryBody::Expunged(EntryHash(hash))
    } else {
        EntryBody::decode_stored(&payload).map_err(|e| at("entry body", e))?
    };
    let seal = match seal {
        None => None,
        Some(sig) => {
            let signature: [u8; 64] = sig
                .as_slice()
                .try_into()
                .map_err(|_| invalid("seal", "the signature is not 64 bytes"))?;
            let key = key.ok_or_else(|| {
                invalid("seal", "a sealed entry of an origin without a known key")
            })?;
            Some(Seal { key, signature })
        }
    };
    let index = u64::try_from(index).map_err(|_| invalid("entry index", "negative index"))?;
    Ok(Entry { origin, index, body, seal })
}

pub(crate) struct OriginRow {
    pub(crate) no: i64,
    pub(crate) position: ChainPosition,
    pub(crate) key: Option<PublicKey>,
    pub(crate) materialized: u64,
}

/// The largest index an origin's log may reach in one file: the oplog key keeps 40 bits for
/// it (about 10^12 entries per origin).
pub(crate) const MAX_INDEX: u64 = (1 << 40) - 1;

/// The oplog rowid of `(origin_no, index)`.
pub(crate) fn oplog_id(origin_no: i64, index: u64) -> Result<i64, SyncError> {
    if index > MAX_INDEX {
        return Err(SyncError::Misuse(format!(
            "index {index} is beyond the largest supported, {MAX_INDEX}"
        )));
    }
    Ok((origin_no << 40) | index as i64)
}

pub(crate) fn read_origin(
    conn: &Connection,
    origin: &PeerId,
) -> rusqlite::Result<Option<OriginRow>> {
    conn.prepare_cached(
        "SELECT no, next, chain, key, materialized FROM shoal_origins WHERE origin = ?1",
    )?
    .query_row([origin.as_bytes()], |r| {
        let no: i64 = r.get(0)?;
        let next: i64 = r.get(1)?;
        let chain: Vec<u8> = r.get(2)?;
        let key: Option<Vec<u8>> = r.get(3)?;
        let materialized: i64 = r.get(4)?;
        let bad = |what: &str| {
            rusqlite::Error::FromSqlConversionFailure(
                0,
                rusqlite::types::Type::Blob,
                format!("shoal_origins row of {origin}: {what}").into(),
            )
        };
        let chain: [u8; 32] =
            chain.as_slice().try_into().map_err(|_| bad("chain hash is not 32 bytes"))?;
        let key = match key {
            None => None,
            Some(k) => {
                let k: [u8; 32] =
                    k.as_slice().try_into().map_err(|_| bad("key is not 32 bytes"))?;
                Some(PublicKey::from_bytes(&k).map_err(|_| bad("key is not an Ed25519 key"))?)
            }
        };
        Ok(OriginRow {
            no,
            position: ChainPosition { next: next as u64, chain: ChainHash(chain) },
            key,
            materialized: materialized as u64,
        })
    })
    .optional()
}

/// The origin's row, created at the start of its log if absent (writers only).
pub(crate) fn origin_row(
    conn: &Connection,
    workspace: &WorkspaceId,
    origin: &PeerId,
) -> rusqlite::Result<OriginRow> {
    if let Some(row) = read_origin(conn, origin)? {
        return Ok(row);
    }
    let start = ChainPosition::start(workspace, origin);
    conn.prepare_cached(
        "INSERT INTO shoal_origins (origin, no, next, chain, key, materialized)
         VALUES (?1, (SELECT coalesce(max(no), 0) + 1 FROM shoal_origins), 0, ?2, NULL, 0)",
    )?
    .execute(params![origin.as_bytes(), start.chain.0.as_slice()])?;
    read_origin(conn, origin)?.ok_or(rusqlite::Error::QueryReturnedNoRows)
}

/// What a write transaction records in an origin's row when it stored entries of it.
pub(crate) struct OriginWrite<'a> {
    pub(crate) position: ChainPosition,
    pub(crate) key: Option<&'a PublicKey>,
    pub(crate) materialized: u64,
    /// The replica's clock after the transaction. It is kept in the row being written anyway
    /// (the clock is the greatest of all rows' values), so a commit rewrites one page of
    /// bookkeeping, not two.
    pub(crate) clock: Hlc,
}

pub(crate) fn write_origin(
    conn: &Connection,
    origin: &PeerId,
    at: OriginWrite<'_>,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE shoal_origins SET next = ?2, chain = ?3, key = coalesce(key, ?4), materialized = ?5,
         clock = max(clock, ?6) WHERE origin = ?1",
    )?
    .execute(params![
        origin.as_bytes(),
        at.position.next as i64,
        at.position.chain.0.as_slice(),
        at.key.map(|k| k.as_bytes().as_slice()),
        at.materialized as i64,
        at.clock.as_u64() as i64,
    ])?;
    Ok(())
}

pub(crate) fn set_stall(
    conn: &Connection,
    workspace: &WorkspaceId,
    origin: &PeerId,
    reason: Option<&str>,
    wall: u64,
) -> rusqlite::Result<()> {
    match reason {
        None => {
            conn.prepare_cached(
                "UPDATE shoal_origins SET stalled = NULL, stalled_at = NULL WHERE origin = ?1 AND stalled IS NOT NULL",
            )?
            .execute([origin.as_bytes()])?;
        }
        Some(reason) => {
            origin_row(conn, workspace, origin)?;
            conn.prepare_cached(
                "UPDATE shoal_origins SET stalled = ?2, stalled_at = coalesce(stalled_at, ?3) WHERE origin = ?1",
            )?
            .execute(params![origin.as_bytes(), reason, wall as i64])?;
        }
    }
    Ok(())
}

/// The replica's clock: the greatest timestamp it issued or observed, kept per origin row
/// (see [`OriginWrite::clock`]).
pub(crate) fn read_clock(conn: &Connection) -> rusqlite::Result<Hlc> {
    conn.prepare_cached("SELECT coalesce(max(clock), 0) FROM shoal_origins")?
        .query_row([], |r| r.get::<_, i64>(0))
        .map(|v| Hlc::from_u64(v as u64))
}

fn read_cursors(conn: &Connection) -> rusqlite::Result<PeerCursors> {
    let mut stmt = conn.prepare_cached("SELECT origin, next FROM shoal_origins WHERE next > 0")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))?;
    let mut out = PeerCursors::new();
    for row in rows {
        let (origin, next) = row?;
        if let Some(origin) = PeerId::from_slice(&origin) {
            out.advance(origin, next as u64);
        }
    }
    Ok(out)
}
