//! [`SqliteLogStore`]: a relay's database of many workspaces in one SQLite file (DESIGN §9).
//!
//! Owns: the relay tables of one file (`relay_entries`: every stored entry in its wire form,
//! keyed by workspace, origin and index; `relay_heads`: each origin's chain head and how many
//! control entries it stored), the optimistic append that checks the head, paging reads that
//! end on seals, and the store's feed.
//!
//! ```text
//!  append ──► BEGIN IMMEDIATE ─ head == run.start? ─ insert entries ─ upsert head ─ COMMIT (FULL) ─► feed
//!  read   ──► pooled read connection (WAL: never blocks the writer), rows until the budget and a seal
//! ```
//!
//! Invariants:
//! - Every table and index leads with the workspace id, and every query but
//!   [`LogStore::workspaces`] names one workspace (the same schema as the PostgreSQL store,
//!   which is sharded by it).
//! - An append is one transaction that stores the run only if the origin's head is still the
//!   run's start ([`Appended::Moved`] otherwise, with nothing written), so a stored log is
//!   always a contiguous, verified chain ending on a seal. It returns once durable
//!   (`synchronous = FULL`).
//! - The feed is an in-process broadcast: **one process per SQLite relay**. The file is
//!   locked (`<file>.lock`) while a store has it open, so a second process is refused rather
//!   than left with a feed that never hears the first one's appends.
//!
//! Never: stores an entry that did not come through [`VerifiedRun`], runs SQLite on the
//! async executor (every call runs on tokio's blocking pool), or panics on what it reads
//! back (a damaged row is an error naming the file, workspace, origin and index).

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use shoal_core::codec::Encode;
use shoal_core::store::{Appended, LogStore, STORE_FEED_CAPACITY, StoreEvent, run_has_control};
use shoal_core::{
    ChainHash, ChainPosition, Entry, EntryClass, PeerId, SyncError, VerifiedRun, WorkspaceId,
    run_blocking,
};
use tokio::sync::broadcast;

/// `PRAGMA application_id` of relay store files: ASCII "SHRY" (device files are "SHOL").
pub const RELAY_APPLICATION_ID: i32 = 0x5348_5259;

/// The relay store format this build writes and reads (`PRAGMA user_version`).
pub const RELAY_FORMAT_VERSION: i32 = 1;

/// Read connections kept open between calls.
const IDLE_READERS: usize = 4;

/// Rows fetched per statement of a paging read (a page is usually much shorter).
const READ_CHUNK: i64 = 512;

const DDL: &str = "
-- One row per stored entry: its wire form (FORMAT §3: origin, index, body, seal), and
-- whether it is a control entry (for the roster). Keyed by workspace first.
CREATE TABLE relay_entries (
    workspace BLOB    NOT NULL,
    origin    BLOB    NOT NULL,
    idx       INTEGER NOT NULL,
    control   INTEGER NOT NULL,
    bytes     BLOB    NOT NULL,
    PRIMARY KEY (workspace, origin, idx)
) WITHOUT ROWID;

-- The control entries of a workspace, for the roster fold.
CREATE INDEX relay_entries_control ON relay_entries (workspace, origin, idx) WHERE control = 1;

-- Each origin's chain head: the next index and the chain hash after next - 1, and how many
-- control entries the origin stored (their sum is the workspace's control count).
-- The deployment's own settings (its relay id): the one table not about a workspace.
CREATE TABLE relay_meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;

CREATE TABLE relay_heads (
    workspace BLOB    NOT NULL,
    origin    BLOB    NOT NULL,
    next      INTEGER NOT NULL,
    chain     BLOB    NOT NULL,
    controls  INTEGER NOT NULL,
    PRIMARY KEY (workspace, origin)
) WITHOUT ROWID;
";

/// A relay's logs of many workspaces in one SQLite file. Cheap to clone.
#[derive(Clone)]
pub struct SqliteLogStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    feed: broadcast::Sender<StoreEvent>,
    /// Held (locked) for the store's life: one process per file.
    _lock: File,
}

impl fmt::Debug for SqliteLogStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteLogStore").field("path", &self.inner.path).finish_non_exhaustive()
    }
}

/// A row that contradicts the store's invariants.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Damaged(String);

impl SqliteLogStore {
    /// Opens the relay store at `path`, creating it if there is no file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SyncError> {
        let path = path.as_ref().to_owned();
        let err = |what: &str| {
            let path = path.display().to_string();
            let what = what.to_owned();
            move |e: rusqlite::Error| SyncError::backend(format!("{path}: {what}"), e)
        };
        let mut lock_name = path.clone().into_os_string();
        lock_name.push(".lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_name)
            .map_err(|e| {
                SyncError::backend(format!("{}: open the lock file", path.display()), e)
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(SyncError::Unavailable {
                    what: path.display().to_string(),
                    reason: "the relay store is open elsewhere (another process, or another \
                             SqliteLogStore in this one): one process per SQLite relay; use \
                             PostgreSQL for several relay nodes"
                        .into(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(SyncError::backend(
                    format!("{}: lock {}", path.display(), PathBuf::from(&lock_name).display()),
                    e,
                ));
            }
        }
        let mut conn = Connection::open(&path).map_err(err("open"))?;
        configure(&conn).map_err(err("configure"))?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(err("enable WAL"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(SyncError::backend(
                format!("{}: enable WAL", path.display()),
                Damaged(format!("the journal mode stayed {mode}")),
            ));
        }
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err("begin creating the schema"))?;
        let app: i32 =
            tx.query_row("PRAGMA application_id", [], |r| r.get(0)).map_err(err("read the id"))?;
        let version: i32 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err("read the format version"))?;
        let tables: i64 = tx
            .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
            .map_err(err("read the schema"))?;
        if app == 0 && tables == 0 {
            tx.execute_batch(DDL).map_err(err("create the relay tables"))?;
            tx.pragma_update(None, "application_id", RELAY_APPLICATION_ID)
                .map_err(err("set the application id"))?;
            tx.pragma_update(None, "user_version", RELAY_FORMAT_VERSION)
                .map_err(err("set the format version"))?;
        } else if app != RELAY_APPLICATION_ID {
            return Err(SyncError::backend(
                format!("{}: open a relay store", path.display()),
                Damaged(format!(
                    "not a Shoal relay store (an SQLite database with application id {app:#x})"
                )),
            ));
        } else if version != RELAY_FORMAT_VERSION {
            return Err(SyncError::backend(
                format!("{}: open a relay store", path.display()),
                Damaged(format!(
                    "relay store format {version}; this version reads format {RELAY_FORMAT_VERSION}"
                )),
            ));
        }
        tx.commit().map_err(err("commit the schema"))?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(err("set synchronous"))?;
        Ok(SqliteLogStore {
            inner: Arc::new(Inner {
                path,
                writer: Mutex::new(conn),
                readers: Mutex::new(Vec::new()),
                feed: broadcast::Sender::new(STORE_FEED_CAPACITY),
                _lock: lock,
            }),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on a pooled read connection, on the blocking pool.
    async fn with_reader<T: Send + 'static>(
        &self,
        what: String,
        f: impl FnOnce(&Connection, &dyn Fn(rusqlite::Error) -> SyncError) -> Result<T, SyncError>
        + Send
        + 'static,
    ) -> Result<T, SyncError> {
        let inner = self.inner.clone();
        run_blocking(move || {
            let context = format!("{}: {what}", inner.path.display());
            let sql = |e: rusqlite::Error| SyncError::backend(context.clone(), e);
            let pooled = lock(&inner.readers).pop();
            let conn = match pooled {
                Some(c) => c,
                None => {
                    let c = Connection::open_with_flags(
                        &inner.path,
                        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    )
                    .map_err(sql)?;
                    configure(&c).map_err(sql)?;
                    c
                }
            };
            let out = f(&conn, &sql);
            let mut idle = lock(&inner.readers);
            if idle.len() < IDLE_READERS {
                idle.push(conn);
            }
            out
        })
        .await
    }

    fn damaged(&self, what: String) -> SyncError {
        damaged(&self.inner.path, what)
    }
}

fn damaged(path: &Path, what: String) -> SyncError {
    SyncError::backend(format!("{}: damaged relay store", path.display()), Damaged(what))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Connections are taken and put back whole; a panic cannot leave one half-updated.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.pragma_update(None, "cache_size", -8_000)?;
    Ok(())
}

/// An index as SQLite stores it; past `i64::MAX` there is nothing to read.
fn sql_index(index: u64) -> Option<i64> {
    i64::try_from(index).ok()
}

/// Decodes a head row (origin, next, chain).
fn head_row(
    path: &Path,
    workspace: WorkspaceId,
    origin: Vec<u8>,
    next: i64,
    chain: Vec<u8>,
) -> Result<(PeerId, ChainPosition), SyncError> {
    let o = PeerId::from_slice(&origin).ok_or_else(|| {
        damaged(path, format!("workspace {workspace}: a head's origin is {} bytes", origin.len()))
    })?;
    let next = u64::try_from(next)
        .map_err(|_| damaged(path, format!("workspace {workspace}: head of {o} is {next}")))?;
    let chain: [u8; 32] = chain.as_slice().try_into().map_err(|_| {
        damaged(path, format!("workspace {workspace}: the chain hash of {o} is not 32 bytes"))
    })?;
    Ok((o, ChainPosition { next, chain: ChainHash(chain) }))
}

/// Decodes a stored entry, checking it is the one its key says.
pub(crate) fn entry_row(
    path: &Path,
    workspace: WorkspaceId,
    origin: PeerId,
    idx: i64,
    bytes: &[u8],
) -> Result<Entry, SyncError> {
    let e = Entry::decode(bytes).map_err(|problem| SyncError::Malformed {
        source_name: format!(
            "{} (relay entry {origin}#{idx} of workspace {workspace})",
            path.display()
        ),
        what: "stored entry",
        problem,
    })?;
    if e.origin != origin || i64::try_from(e.index).ok() != Some(idx) {
        return Err(damaged(
            path,
            format!(
                "workspace {workspace}: the row of {origin}#{idx} holds entry {}#{}",
                e.origin, e.index
            ),
        ));
    }
    Ok(e)
}

#[async_trait]
impl LogStore for SqliteLogStore {
    async fn heads(
        &self,
        workspace: WorkspaceId,
    ) -> Result<Vec<(PeerId, ChainPosition)>, SyncError> {
        let path = self.inner.path.clone();
        self.with_reader(format!("read the heads of workspace {workspace}"), move |conn, sql| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT origin, next, chain FROM relay_heads WHERE workspace = ?1 ORDER BY origin",
                )
                .map_err(sql)?;
            let rows = stmt
                .query_map(params![workspace.as_bytes()], |r| {
                    Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?, r.get::<_, Vec<u8>>(2)?))
                })
                .map_err(sql)?;
            let mut out = Vec::new();
            for row in rows {
                let (origin, next, chain) = row.map_err(sql)?;
                out.push(head_row(&path, workspace, origin, next, chain)?);
            }
            Ok(out)
        })
        .await
    }

    async fn head(
        &self,
        workspace: WorkspaceId,
        origin: PeerId,
    ) -> Result<ChainPosition, SyncError> {
        let path = self.inner.path.clone();
        self.with_reader(format!("read the head of {origin} in {workspace}"), move |conn, sql| {
            read_head(conn, &path, workspace, origin).map_err(sql)?
        })
        .await
    }

    async fn read(
        &self,
        workspace: WorkspaceId,
        origin: PeerId,
        from: u64,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, SyncError> {
        let Some(from) = sql_index(from) else { return Ok(Vec::new()) };
        let path = self.inner.path.clone();
        self.with_reader(format!("read {origin} of workspace {workspace}"), move |conn, sql| {
            // One read transaction: the chunks see one snapshot.
            let tx = conn.unchecked_transaction().map_err(sql)?;
            let mut stmt = tx
                .prepare_cached(
                    "SELECT idx, bytes FROM relay_entries WHERE workspace = ?1 AND origin = ?2 \
                     AND idx >= ?3 ORDER BY idx LIMIT ?4",
                )
                .map_err(sql)?;
            let mut out: Vec<Entry> = Vec::new();
            let mut size = 0usize;
            let mut at = from;
            loop {
                let mut rows = stmt
                    .query(params![workspace.as_bytes(), origin.as_bytes(), at, READ_CHUNK])
                    .map_err(sql)?;
                let mut got = 0;
                while let Some(row) = rows.next().map_err(sql)? {
                    got += 1;
                    let idx: i64 = row.get(0).map_err(sql)?;
                    let bytes =
                        row.get_ref(1).map_err(sql)?.as_blob().map_err(|e| sql(e.into()))?;
                    if idx != at {
                        return Err(damaged(
                            &path,
                            format!(
                                "workspace {workspace}: {origin} has no entry {at} (next is {idx})"
                            ),
                        ));
                    }
                    let e = entry_row(&path, workspace, origin, idx, bytes)?;
                    size += e.approx_size();
                    let sealed = e.seal.is_some();
                    out.push(e);
                    at += 1;
                    if size >= max_bytes && sealed {
                        return Ok(out);
                    }
                }
                if got < READ_CHUNK {
                    return Ok(out);
                }
            }
        })
        .await
    }

    async fn append(
        &self,
        workspace: WorkspaceId,
        run: &VerifiedRun,
    ) -> Result<Appended, SyncError> {
        let origin = run.origin();
        let (start, end) = (run.start(), run.end());
        let control = run_has_control(run);
        let rows: Vec<(u64, bool, Vec<u8>)> = run
            .entries()
            .iter()
            .map(|e| (e.index, e.body.class() == Some(EntryClass::Control), e.to_bytes()))
            .collect();
        let controls = rows.iter().filter(|r| r.1).count() as i64;
        let inner = self.inner.clone();
        let stored = run_blocking(move || {
            let path = inner.path.display().to_string();
            let sql =
                |e| SyncError::backend(format!("{path}: append to {origin} in {workspace}"), e);
            let mut conn = lock(&inner.writer);
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql)?;
            // Checked inside the write transaction: another writer may have moved it.
            let head = read_head(&tx, &inner.path, workspace, origin).map_err(sql)??;
            if head != start {
                return Ok(Appended::Moved);
            }
            if rows.is_empty() {
                return Ok(Appended::Stored);
            }
            {
                let mut insert = tx
                    .prepare_cached(
                        "INSERT INTO relay_entries (workspace, origin, idx, control, bytes) \
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )
                    .map_err(sql)?;
                for (idx, control, bytes) in &rows {
                    let idx = sql_index(*idx).ok_or_else(|| {
                        SyncError::Misuse(format!("index {idx} does not fit SQLite's INTEGER"))
                    })?;
                    insert
                        .execute(params![
                            workspace.as_bytes(),
                            origin.as_bytes(),
                            idx,
                            control,
                            bytes
                        ])
                        .map_err(sql)?;
                }
            }
            let next = sql_index(end.next).ok_or_else(|| {
                SyncError::Misuse(format!("index {} does not fit SQLite's INTEGER", end.next))
            })?;
            tx.execute(
                "INSERT INTO relay_heads (workspace, origin, next, chain, controls) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (workspace, origin) DO UPDATE SET \
                 next = excluded.next, chain = excluded.chain, \
                 controls = relay_heads.controls + excluded.controls",
                params![workspace.as_bytes(), origin.as_bytes(), next, &end.chain.0[..], controls],
            )
            .map_err(sql)?;
            tx.commit().map_err(sql)?;
            Ok(Appended::Stored)
        })
        .await?;
        if stored == Appended::Stored && !run.entries().is_empty() {
            // No subscriber is not an error.
            let _ = self.inner.feed.send(StoreEvent { workspace, origin, next: end.next, control });
        }
        Ok(stored)
    }

    async fn control_entries(&self, workspace: WorkspaceId) -> Result<Vec<Entry>, SyncError> {
        let path = self.inner.path.clone();
        self.with_reader(format!("read the control entries of {workspace}"), move |conn, sql| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT origin, idx, bytes FROM relay_entries \
                     WHERE workspace = ?1 AND control = 1 ORDER BY origin, idx",
                )
                .map_err(sql)?;
            let mut rows = stmt.query(params![workspace.as_bytes()]).map_err(sql)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(sql)? {
                let origin: Vec<u8> = row.get(0).map_err(sql)?;
                let idx: i64 = row.get(1).map_err(sql)?;
                let bytes = row.get_ref(2).map_err(sql)?.as_blob().map_err(|e| sql(e.into()))?;
                let origin = PeerId::from_slice(&origin).ok_or_else(|| {
                    damaged(
                        &path,
                        format!("workspace {workspace}: an origin of {} bytes", origin.len()),
                    )
                })?;
                out.push(entry_row(&path, workspace, origin, idx, bytes)?);
            }
            Ok(out)
        })
        .await
    }

    async fn control_count(&self, workspace: WorkspaceId) -> Result<u64, SyncError> {
        let n: i64 = self
            .with_reader(format!("count the control entries of {workspace}"), move |conn, sql| {
                conn.prepare_cached(
                    "SELECT coalesce(sum(controls), 0) FROM relay_heads WHERE workspace = ?1",
                )
                .and_then(|mut s| s.query_row(params![workspace.as_bytes()], |r| r.get(0)))
                .map_err(sql)
            })
            .await?;
        u64::try_from(n)
            .map_err(|_| self.damaged(format!("workspace {workspace}: {n} control entries")))
    }

    async fn relay_id(&self) -> Result<[u8; 32], SyncError> {
        let fresh = shoal_core::random_bytes::<32>().map_err(|e| {
            SyncError::backend(format!("{}: a relay id", self.inner.path.display()), e)
        })?;
        let inner = self.inner.clone();
        let id: Vec<u8> = run_blocking(move || {
            let path = inner.path.display().to_string();
            let sql = |e| SyncError::backend(format!("{path}: the relay id"), e);
            let conn = lock(&inner.writer);
            conn.execute(
                "INSERT OR IGNORE INTO relay_meta (key, value) VALUES ('relay_id', ?1)",
                params![&fresh[..]],
            )
            .map_err(sql)?;
            conn.query_row("SELECT value FROM relay_meta WHERE key = 'relay_id'", [], |r| r.get(0))
                .map_err(sql)
        })
        .await?;
        id.try_into().map_err(|v: Vec<u8>| self.damaged(format!("a relay id of {} bytes", v.len())))
    }

    fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.inner.feed.subscribe()
    }

    fn describe(&self) -> String {
        self.inner.path.display().to_string()
    }
}

/// The head of `origin` in `workspace` (the chain's start when it has none). The outer error
/// is SQLite's, the inner a damaged row.
fn read_head(
    conn: &Connection,
    path: &Path,
    workspace: WorkspaceId,
    origin: PeerId,
) -> rusqlite::Result<Result<ChainPosition, SyncError>> {
    let row = conn
        .prepare_cached("SELECT next, chain FROM relay_heads WHERE workspace = ?1 AND origin = ?2")?
        .query_row(params![workspace.as_bytes(), origin.as_bytes()], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
        })
        .optional()?;
    Ok(match row {
        None => Ok(ChainPosition::start(&workspace, &origin)),
        Some((next, chain)) => {
            head_row(path, workspace, origin.as_bytes().to_vec(), next, chain).map(|h| h.1)
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use shoal_core::store::LogStore;

    use super::*;

    /// A store in a temporary directory that goes with it.
    #[derive(Debug)]
    struct TempStore {
        store: SqliteLogStore,
        _dir: tempfile::TempDir,
    }

    #[async_trait]
    impl LogStore for TempStore {
        async fn heads(&self, ws: WorkspaceId) -> Result<Vec<(PeerId, ChainPosition)>, SyncError> {
            self.store.heads(ws).await
        }
        async fn head(&self, ws: WorkspaceId, o: PeerId) -> Result<ChainPosition, SyncError> {
            self.store.head(ws, o).await
        }
        async fn read(
            &self,
            ws: WorkspaceId,
            o: PeerId,
            from: u64,
            max: usize,
        ) -> Result<Vec<Entry>, SyncError> {
            self.store.read(ws, o, from, max).await
        }
        async fn append(&self, ws: WorkspaceId, run: &VerifiedRun) -> Result<Appended, SyncError> {
            self.store.append(ws, run).await
        }
        async fn control_entries(&self, ws: WorkspaceId) -> Result<Vec<Entry>, SyncError> {
            self.store.control_entries(ws).await
        }
        async fn control_count(&self, ws: WorkspaceId) -> Result<u64, SyncError> {
            self.store.control_count(ws).await
        }
        async fn relay_id(&self) -> Result<[u8; 32], SyncError> {
            self.store.relay_id().await
        }
        fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
            self.store.subscribe()
        }
        fn describe(&self) -> String {
            self.store.describe()
        }
    }

    fn fresh() -> Arc<dyn LogStore> {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = SqliteLogStore::open(dir.path().join("relay.db")).expect("a new relay store");
        Arc::new(TempStore { store, _dir: dir })
    }

    shoal_core::logstore_conformance!(async { fresh() });

    #[tokio::test]
    async fn reopens_with_its_logs_and_refuses_other_files_and_a_second_process() {
        use shoal_core::store::conformance::{Device, append, read_all};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        let ws = WorkspaceId::from_bytes([1; 16]);
        let mut d = Device::new(1, ws);
        let entries = d.data(3, 5);
        let relay_id;
        {
            let store = SqliteLogStore::open(&path).unwrap();
            relay_id = store.relay_id().await.unwrap();
            append(&store, ws, entries.clone()).await;
            // A second open of the same file (as another process would) is refused.
            let err = SqliteLogStore::open(&path).unwrap_err();
            assert!(err.to_string().contains("open elsewhere"), "{err}");
        }
        let store = SqliteLogStore::open(&path).unwrap();
        assert_eq!(read_all(&store, ws, d.origin(), 0).await, entries);
        assert_eq!(store.head(ws, d.origin()).await.unwrap(), d.log.position());
        assert_eq!(store.relay_id().await.unwrap(), relay_id, "the relay keeps its id");
        drop(store);

        // A device workspace file (or any other database) is not a relay store.
        let other = dir.path().join("other.db");
        Connection::open(&other).unwrap().execute_batch("CREATE TABLE t (x)").unwrap();
        let err = SqliteLogStore::open(&other).unwrap_err();
        assert!(
            err.to_string().contains("other.db")
                && err.to_string().contains("not a Shoal relay store"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_damaged_row_is_an_error_naming_the_file_never_a_panic() {
        use shoal_core::store::conformance::{Device, append};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        let ws = WorkspaceId::from_bytes([2; 16]);
        let mut d = Device::new(1, ws);
        let store = SqliteLogStore::open(&path).unwrap();
        append(&store, ws, d.data(3, 5)).await;
        append(&store, ws, d.control()).await;
        let raw = Connection::open(&path).unwrap();
        let name = path.display().to_string();
        let check = |e: SyncError| assert!(e.to_string().contains(&name), "{e}");

        // Garbage bytes: a malformed entry, naming the file, origin and index.
        raw.execute("UPDATE relay_entries SET bytes = x'ff00' WHERE idx = 1", []).unwrap();
        let err = store.read(ws, d.origin(), 0, usize::MAX).await.unwrap_err();
        assert!(err.to_string().contains(&format!("{}#1", d.origin())), "{err}");
        check(err);
        // Another entry's bytes under this key.
        raw.execute(
            "UPDATE relay_entries SET bytes = (SELECT bytes FROM relay_entries WHERE idx = 0) \
             WHERE idx = 1",
            [],
        )
        .unwrap();
        check(store.read(ws, d.origin(), 0, usize::MAX).await.unwrap_err());
        // A missing row in the middle.
        raw.execute("DELETE FROM relay_entries WHERE idx = 1", []).unwrap();
        check(store.read(ws, d.origin(), 0, usize::MAX).await.unwrap_err());
        // A bad control entry.
        raw.execute("UPDATE relay_entries SET bytes = x'00' WHERE control = 1", []).unwrap();
        check(store.control_entries(ws).await.unwrap_err());
        // Bad heads.
        raw.execute("UPDATE relay_heads SET chain = x'01'", []).unwrap();
        check(store.head(ws, d.origin()).await.unwrap_err());
        check(store.heads(ws).await.unwrap_err());
        raw.execute("UPDATE relay_heads SET origin = x'01'", []).unwrap();
        check(store.heads(ws).await.unwrap_err());
    }
}
