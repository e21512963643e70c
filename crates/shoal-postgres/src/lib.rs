//! # shoal-postgres
//!
//! Relay storage over PostgreSQL (DESIGN §9): [`PgLogStore`] is a
//! [`shoal_core::store::LogStore`] that several relay nodes (`shoal serve`) share, each
//! with its own pool of connections to one database.
//!
//! ```text
//!  node A: append ─► BEGIN ─ UPDATE relay_heads … WHERE next = start ─ INSERT relay_entries ─ pg_notify ─ COMMIT
//!                                                                                                  │
//!  node A, node B: LISTEN shoal_appends (one connection each) ◄──────── on commit only ────────────┘
//!                  └─► tokio broadcast ─► StoredReplica::watch_cursors ─► live pushes
//! ```
//!
//! Owns: the relay schema of one database and its versioned migrations (the
//! `shoal_migrations` table; run by [`PgLogStore::connect`] under an advisory lock, so nodes
//! starting together migrate once), the optimistic append, paging reads that end on seals,
//! and the feed (LISTEN/NOTIFY forwarded to an in-process broadcast, reconnected with
//! backoff).
//!
//! Invariants:
//! - Every table and every index leads with the workspace id (`bytea`) (except
//!   `relay_meta`, the deployment's own id), and every query names one workspace, so the schema
//!   can be distributed by workspace id (Citus: `create_distributed_table('relay_entries',
//!   'workspace')`, `relay_heads` colocated) or split across clusters by a routing table.
//!   An append touches one workspace's rows: one shard.
//! - An append is one transaction that moves the origin's head from the run's start to its
//!   end (a conditional `UPDATE … WHERE next = $start AND chain = $chain`, or for a new origin
//!   an `INSERT … ON CONFLICT DO NOTHING`) and inserts the entries; when no row moves, another
//!   node got there first and nothing is written ([`Appended::Moved`]). The `NOTIFY` is part
//!   of that transaction, so the feed fires only for committed appends, on every node.
//! - The feed is a hint: if its connection drops, appends made meanwhile are not reported.
//!   The store logs a warning, reconnects with backoff and counts the gap
//!   ([`PgLogStore::feed_gaps`]); subscribers must re-read cursors after one (as after a
//!   lagged broadcast). The cursor diff against the stored heads is the truth (DESIGN §9).
//!
//! Never: stores an entry that did not come through a [`VerifiedRun`], queries two
//! workspaces in one statement (but the listing), prints a password ([`LogStore::describe`]
//! names user, host, port and database only), or panics on what it reads back (bad bytes are
//! an error naming the database, workspace, origin and index).
//!
//! Connections are plain TCP or Unix sockets (`NoTls`): run the database on the relay's host
//! or a private network (TLS is not wired yet).
//!
//! Feature `testing`: the `testing` module, a throwaway PostgreSQL server started from the installed
//! binaries, for tests (this crate's and the relay's).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use shoal_core::codec::Encode;
use shoal_core::store::{Appended, LogStore, STORE_FEED_CAPACITY, StoreEvent, run_has_control};
use shoal_core::{
    ChainHash, ChainPosition, Entry, EntryClass, PeerId, SyncError, VerifiedRun, WorkspaceId,
};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_postgres::{AsyncMessage, Client, Config, NoTls};

#[cfg(feature = "testing")]
pub mod testing;

/// The channel appends are announced on (`NOTIFY shoal_appends, '<ws> <origin> <next> <c>'`).
pub const FEED_CHANNEL: &str = "shoal_appends";

/// The advisory lock key migrations run under (ASCII "SHOALMIG").
const MIGRATION_LOCK: i64 = 0x5348_4f41_4c4d_4947;

/// Idle connections a store keeps between calls.
const IDLE_CONNECTIONS: usize = 8;

/// Rows fetched per statement of a paging read.
const READ_CHUNK: i64 = 512;

/// The longest wait between two attempts to reconnect the feed.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The schema's versions, in order. Never edit a released one: add the next.
pub const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    "
-- One row per stored entry: its wire form (FORMAT §3: origin, index, body, seal), and
-- whether it is a control entry (for the roster). Keyed by workspace first.
CREATE TABLE relay_entries (
    workspace bytea   NOT NULL,
    origin    bytea   NOT NULL,
    idx       bigint  NOT NULL,
    control   boolean NOT NULL,
    bytes     bytea   NOT NULL,
    PRIMARY KEY (workspace, origin, idx)
);
-- The control entries of a workspace, for the roster fold.
CREATE INDEX relay_entries_control ON relay_entries (workspace, origin, idx) WHERE control;
-- Each origin's chain head (the next index, the chain hash after next - 1) and how many
-- control entries it stored (their sum is the workspace's control count).
-- The deployment's own settings (its relay id): the one table not about a workspace,
-- local to the coordinator when the others are distributed.
CREATE TABLE relay_meta (
    key   text  PRIMARY KEY,
    value bytea NOT NULL
);
CREATE TABLE relay_heads (
    workspace bytea  NOT NULL,
    origin    bytea  NOT NULL,
    next      bigint NOT NULL,
    chain     bytea  NOT NULL,
    controls  bigint NOT NULL,
    PRIMARY KEY (workspace, origin)
);
",
)];

/// A relay's logs of many workspaces in one PostgreSQL database. Cheap to clone; clones
/// share the pool and the feed.
#[derive(Clone)]
pub struct PgLogStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    name: String,
    idle: Mutex<Vec<Client>>,
    feed: broadcast::Sender<StoreEvent>,
    gaps: Arc<AtomicU64>,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl fmt::Debug for PgLogStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgLogStore").field("database", &self.inner.name).finish_non_exhaustive()
    }
}

/// Stored data that contradicts the store's invariants, or a database this build cannot use.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Damaged(String);

/// Names a database without its password: `postgres://user@host:port/dbname`.
pub fn describe_config(config: &Config) -> String {
    use tokio_postgres::config::Host;
    let user = config.get_user().unwrap_or("");
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            #[cfg(unix)]
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let hosts = if hosts.is_empty() { vec!["localhost".to_owned()] } else { hosts };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or(user);
    format!("postgres://{user}@{}:{port}/{db}", hosts.join(","))
}

impl PgLogStore {
    /// Connects to the database at `url` (a `postgres://` URL or `key=value` string),
    /// brings its schema up to date ([`MIGRATIONS`]) and starts listening for appends.
    pub async fn connect(url: &str) -> Result<Self, SyncError> {
        let mut config: Config = url.parse().map_err(|e| {
            // The URL may hold a password: the error names none of it.
            SyncError::backend("the PostgreSQL connection string", e)
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        config.application_name("shoal relay");
        let name = describe_config(&config);
        let mut client = open(&config, &name).await?;
        migrate(&mut client, &name).await?;
        let feed = broadcast::Sender::new(STORE_FEED_CAPACITY);
        let gaps = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready) = oneshot::channel();
        // The feed's connection is idle for long stretches: probe it, so a dead peer is
        // noticed (and the feed reconnected) in about a minute rather than TCP's two hours.
        let mut listen_config = config.clone();
        listen_config.keepalives_idle(Duration::from_secs(30));
        let listener =
            tokio::spawn(listen(listen_config, name.clone(), feed.clone(), gaps.clone(), ready_tx));
        let inner = Inner { config, name, idle: Mutex::new(vec![client]), feed, gaps, listener };
        // The store reports appends from the moment it is returned.
        match ready.await {
            Ok(Ok(())) => Ok(PgLogStore { inner: Arc::new(inner) }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(SyncError::Bug(format!("{}: the feed task ended", inner.name))),
        }
    }

    /// How many times the feed's connection was lost and re-established: each is a gap in
    /// which appends may have gone unreported (subscribers re-read cursors).
    pub fn feed_gaps(&self) -> u64 {
        self.inner.gaps.load(Ordering::Relaxed)
    }

    /// The schema version of the database (the newest applied migration).
    pub async fn schema_version(&self) -> Result<i32, SyncError> {
        let c = self.client().await?;
        let row = c
            .query_one("SELECT coalesce(max(version), 0) FROM shoal_migrations", &[])
            .await
            .map_err(self.pg("read the schema version"))?;
        row.try_get(0).map_err(self.pg("read the schema version"))
    }

    fn pg(&self, what: impl Into<String>) -> impl Fn(tokio_postgres::Error) -> SyncError + '_ {
        let what = what.into();
        move |e| SyncError::backend(format!("{}: {what}", self.inner.name), e)
    }

    fn damaged(&self, what: String) -> SyncError {
        SyncError::backend(format!("{}: damaged relay store", self.inner.name), Damaged(what))
    }

    /// A connection from the pool, or a new one. Connections the server closed are dropped
    /// here, so after a restart of the server the next call reconnects.
    async fn client(&self) -> Result<Pooled<'_>, SyncError> {
        loop {
            let c = lock(&self.inner.idle).pop();
            match c {
                Some(c) if c.is_closed() => continue,
                Some(c) => return Ok(Pooled { client: Some(c), store: self }),
                None => break,
            }
        }
        let c = open(&self.inner.config, &self.inner.name).await?;
        Ok(Pooled { client: Some(c), store: self })
    }

    fn entry(
        &self,
        workspace: WorkspaceId,
        origin: PeerId,
        idx: i64,
        bytes: &[u8],
    ) -> Result<Entry, SyncError> {
        let e = Entry::decode(bytes).map_err(|problem| SyncError::Malformed {
            source_name: format!(
                "{} (relay entry {origin}#{idx} of workspace {workspace})",
                self.inner.name
            ),
            what: "stored entry",
            problem,
        })?;
        if e.origin != origin || i64::try_from(e.index).ok() != Some(idx) {
            return Err(self.damaged(format!(
                "workspace {workspace}: the row of {origin}#{idx} holds entry {}#{}",
                e.origin, e.index
            )));
        }
        Ok(e)
    }

    fn head_row(
        &self,
        workspace: WorkspaceId,
        origin: &[u8],
        next: i64,
        chain: &[u8],
    ) -> Result<(PeerId, ChainPosition), SyncError> {
        let o = PeerId::from_slice(origin).ok_or_else(|| {
            self.damaged(format!(
                "workspace {workspace}: a head's origin is {} bytes",
                origin.len()
            ))
        })?;
        let next = u64::try_from(next)
            .map_err(|_| self.damaged(format!("workspace {workspace}: head of {o} is {next}")))?;
        let chain: [u8; 32] = chain.try_into().map_err(|_| {
            self.damaged(format!("workspace {workspace}: the chain hash of {o} is not 32 bytes"))
        })?;
        Ok((o, ChainPosition { next, chain: ChainHash(chain) }))
    }
}

/// A pooled connection, returned to the pool when dropped (unless the server closed it).
struct Pooled<'a> {
    client: Option<Client>,
    store: &'a PgLogStore,
}

impl std::ops::Deref for Pooled<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        // Taken out only in `drop`.
        self.client
            .as_ref()
            .unwrap_or_else(|| unreachable!("a pooled connection is present until dropped"))
    }
}

impl std::ops::DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client
            .as_mut()
            .unwrap_or_else(|| unreachable!("a pooled connection is present until dropped"))
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.client.take()
            && !c.is_closed()
        {
            let mut idle = lock(&self.store.inner.idle);
            if idle.len() < IDLE_CONNECTIONS {
                idle.push(c);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The pool is a list of whole connections; a panic cannot leave it half-updated.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Opens a connection and drives it on a task of its own.
async fn open(config: &Config, name: &str) -> Result<Client, SyncError> {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| SyncError::backend(format!("{name}: connect"), e))?;
    let name = name.to_owned();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(database = %name, error = %e, "a PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// Applies the migrations this database lacks, one transaction under an advisory lock (two
/// nodes starting at once: the second waits, then finds nothing to do).
async fn migrate(client: &mut Client, name: &str) -> Result<(), SyncError> {
    let pg = |what: &'static str| {
        move |e: tokio_postgres::Error| SyncError::backend(format!("{name}: migrate: {what}"), e)
    };
    let tx = client.transaction().await.map_err(pg("begin"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg("take the migration lock"))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS shoal_migrations (
            version    integer PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await
    .map_err(pg("create shoal_migrations"))?;
    let done: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM shoal_migrations", &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(pg("read the schema version"))?;
    let latest = MIGRATIONS.last().map_or(0, |m| m.0);
    if done > latest {
        return Err(SyncError::backend(
            format!("{name}: migrate"),
            Damaged(format!(
                "the relay schema is at version {done}, newer than this Shoal knows ({latest}): \
                 upgrade this relay node"
            )),
        ));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > done) {
        tx.batch_execute(sql).await.map_err(|e| {
            SyncError::backend(format!("{name}: migrate: apply version {version}"), e)
        })?;
        tx.execute("INSERT INTO shoal_migrations (version) VALUES ($1)", &[version])
            .await
            .map_err(pg("record a migration"))?;
    }
    tx.commit().await.map_err(pg("commit"))
}

/// The feed: a connection that LISTENs, forwarding notifications to `feed`; reconnected with
/// backoff when it drops. The first successful LISTEN (or the first failure) is reported on
/// `ready`.
async fn listen(
    config: Config,
    name: String,
    feed: broadcast::Sender<StoreEvent>,
    gaps: Arc<AtomicU64>,
    ready: oneshot::Sender<Result<(), SyncError>>,
) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(50);
    loop {
        let listening = |first: bool| {
            if !first {
                gaps.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(database = %name, "the relay feed is listening again; appends made while it was down were not announced (subscribers re-read cursors)");
            }
        };
        let first = ready.is_some();
        let result = listen_once(&config, &name, &feed, |ok| {
            listening(first);
            if let Some(r) = ready.take() {
                let _ = r.send(ok);
            }
        })
        .await;
        match result {
            Err(e) if ready.is_some() => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(e));
                }
                return;
            }
            Err(e) => {
                tracing::warn!(database = %name, error = %e, retry_in = ?backoff, "the relay feed's connection is lost; reconnecting");
            }
            Ok(listened) => {
                if listened {
                    backoff = Duration::from_millis(50);
                }
                tracing::warn!(database = %name, retry_in = ?backoff, "the relay feed's connection ended; reconnecting");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection of the feed: LISTENs, calls `on_listening`, then forwards until the
/// connection ends (`Ok(true)`: it had been listening).
async fn listen_once(
    config: &Config,
    name: &str,
    feed: &broadcast::Sender<StoreEvent>,
    on_listening: impl FnOnce(Result<(), SyncError>),
) -> Result<bool, SyncError> {
    let (client, mut connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| SyncError::backend(format!("{name}: connect the feed"), e))?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    client
        .batch_execute(&format!("LISTEN {FEED_CHANNEL}"))
        .await
        .map_err(|e| SyncError::backend(format!("{name}: LISTEN {FEED_CHANNEL}"), e))?;
    on_listening(Ok(()));
    while let Some(n) = rx.recv().await {
        match parse_event(n.payload()) {
            // No subscriber is not an error.
            Some(ev) => drop(feed.send(ev)),
            None => {
                tracing::warn!(database = %name, payload = n.payload(), "an unknown notification on {FEED_CHANNEL}")
            }
        }
    }
    drop(client);
    match driver.await {
        Ok(Ok(())) => Ok(true),
        Ok(Err(e)) => {
            tracing::warn!(database = %name, error = %e, "the relay feed's connection failed");
            Ok(true)
        }
        Err(e) => Err(SyncError::Bug(format!("{name}: the feed's connection task failed: {e}"))),
    }
}

/// The payload announcing an append.
fn event_payload(ev: &StoreEvent) -> String {
    format!("{} {} {} {}", ev.workspace, ev.origin, ev.next, u8::from(ev.control))
}

fn parse_event(payload: &str) -> Option<StoreEvent> {
    let mut parts = payload.split(' ');
    let workspace = parts.next()?.parse().ok()?;
    let origin = parts.next()?.parse().ok()?;
    let next = parts.next()?.parse().ok()?;
    let control = match parts.next()? {
        "0" => false,
        "1" => true,
        _ => return None,
    };
    parts.next().is_none().then_some(StoreEvent { workspace, origin, next, control })
}

fn pg_index(index: u64) -> Result<i64, SyncError> {
    i64::try_from(index)
        .map_err(|_| SyncError::Misuse(format!("index {index} does not fit PostgreSQL's bigint")))
}

#[async_trait]
impl LogStore for PgLogStore {
    async fn heads(
        &self,
        workspace: WorkspaceId,
    ) -> Result<Vec<(PeerId, ChainPosition)>, SyncError> {
        let what = format!("read the heads of workspace {workspace}");
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT origin, next, chain FROM relay_heads WHERE workspace = $1 ORDER BY origin",
                &[&&workspace.as_bytes()[..]],
            )
            .await
            .map_err(self.pg(&what))?;
        rows.iter()
            .map(|r| {
                let origin: &[u8] = r.try_get(0).map_err(self.pg(&what))?;
                let next: i64 = r.try_get(1).map_err(self.pg(&what))?;
                let chain: &[u8] = r.try_get(2).map_err(self.pg(&what))?;
                self.head_row(workspace, origin, next, chain)
            })
            .collect()
    }

    async fn head(
        &self,
        workspace: WorkspaceId,
        origin: PeerId,
    ) -> Result<ChainPosition, SyncError> {
        let what = format!("read the head of {origin} in {workspace}");
        let c = self.client().await?;
        let row = c
            .query_opt(
                "SELECT next, chain FROM relay_heads WHERE workspace = $1 AND origin = $2",
                &[&&workspace.as_bytes()[..], &&origin.as_bytes()[..]],
            )
            .await
            .map_err(self.pg(&what))?;
        match row {
            None => Ok(ChainPosition::start(&workspace, &origin)),
            Some(r) => {
                let next: i64 = r.try_get(0).map_err(self.pg(&what))?;
                let chain: &[u8] = r.try_get(1).map_err(self.pg(&what))?;
                Ok(self.head_row(workspace, origin.as_bytes(), next, chain)?.1)
            }
        }
    }

    async fn read(
        &self,
        workspace: WorkspaceId,
        origin: PeerId,
        from: u64,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, SyncError> {
        let Ok(mut at) = i64::try_from(from) else { return Ok(Vec::new()) };
        let what = format!("read {origin} of workspace {workspace}");
        let c = self.client().await?;
        let stmt = c
            .prepare(
                "SELECT idx, bytes FROM relay_entries WHERE workspace = $1 AND origin = $2 \
                 AND idx >= $3 ORDER BY idx LIMIT $4",
            )
            .await
            .map_err(self.pg(&what))?;
        let mut out: Vec<Entry> = Vec::new();
        let mut size = 0usize;
        loop {
            // Entries are never rewritten, so chunks need no common snapshot: a later chunk
            // may see a later append, which also ends on a seal.
            let rows = c
                .query(
                    &stmt,
                    &[&&workspace.as_bytes()[..], &&origin.as_bytes()[..], &at, &READ_CHUNK],
                )
                .await
                .map_err(self.pg(&what))?;
            for r in &rows {
                let idx: i64 = r.try_get(0).map_err(self.pg(&what))?;
                let bytes: &[u8] = r.try_get(1).map_err(self.pg(&what))?;
                if idx != at {
                    return Err(self.damaged(format!(
                        "workspace {workspace}: {origin} has no entry {at} (next is {idx})"
                    )));
                }
                let e = self.entry(workspace, origin, idx, bytes)?;
                size += e.approx_size();
                let sealed = e.seal.is_some();
                out.push(e);
                at += 1;
                if size >= max_bytes && sealed {
                    return Ok(out);
                }
            }
            if (rows.len() as i64) < READ_CHUNK {
                return Ok(out);
            }
        }
    }

    async fn append(
        &self,
        workspace: WorkspaceId,
        run: &VerifiedRun,
    ) -> Result<Appended, SyncError> {
        let origin = run.origin();
        let (start, end) = (run.start(), run.end());
        if run.entries().is_empty() {
            let head = self.head(workspace, origin).await?;
            return Ok(if head == start { Appended::Stored } else { Appended::Moved });
        }
        // A new origin's log starts at its seed in *this* workspace: a run verified for
        // another workspace starts elsewhere and is moved.
        if start.next == 0 && start != ChainPosition::start(&workspace, &origin) {
            return Ok(Appended::Moved);
        }
        let what = format!("append to {origin} in workspace {workspace}");
        let mut idx = Vec::with_capacity(run.entries().len());
        let mut control = Vec::with_capacity(run.entries().len());
        let mut bytes = Vec::with_capacity(run.entries().len());
        for e in run.entries() {
            idx.push(pg_index(e.index)?);
            control.push(e.body.class() == Some(EntryClass::Control));
            bytes.push(e.to_bytes());
        }
        let controls = control.iter().filter(|c| **c).count() as i64;
        let (ws, o) = (&workspace.as_bytes()[..], &origin.as_bytes()[..]);
        let (next, chain) = (pg_index(end.next)?, &end.chain.0[..]);
        let payload = event_payload(&StoreEvent {
            workspace,
            origin,
            next: end.next,
            control: run_has_control(run),
        });

        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(self.pg(&what))?;
        let moved = if start.next == 0 {
            // Two nodes adding the same new origin: the second waits for the first's commit
            // on the key, then inserts nothing.
            tx.execute(
                "INSERT INTO relay_heads (workspace, origin, next, chain, controls) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (workspace, origin) DO NOTHING",
                &[&ws, &o, &next, &chain, &controls],
            )
            .await
        } else {
            // A concurrent append of the origin holds the row; once it commits, this
            // re-checks the condition against the new head and moves nothing.
            tx.execute(
                "UPDATE relay_heads SET next = $3, chain = $4, controls = controls + $5 \
                 WHERE workspace = $1 AND origin = $2 AND next = $6 AND chain = $7",
                &[&ws, &o, &next, &chain, &controls, &pg_index(start.next)?, &&start.chain.0[..]],
            )
            .await
        }
        .map_err(self.pg(&what))?;
        if moved == 0 {
            // Dropping the transaction rolls it back; nothing was written.
            return Ok(Appended::Moved);
        }
        tx.execute(
            "INSERT INTO relay_entries (workspace, origin, idx, control, bytes) \
             SELECT $1, $2, i, c, b FROM unnest($3::bigint[], $4::boolean[], $5::bytea[]) AS r(i, c, b)",
            &[&ws, &o, &idx, &control, &bytes],
        )
        .await
        .map_err(self.pg(&what))?;
        // Part of the transaction: delivered to every listener on commit, never before.
        tx.execute("SELECT pg_notify($1, $2)", &[&FEED_CHANNEL, &payload])
            .await
            .map_err(self.pg(&what))?;
        tx.commit().await.map_err(self.pg(format!("{what}: commit")))?;
        Ok(Appended::Stored)
    }

    async fn control_entries(&self, workspace: WorkspaceId) -> Result<Vec<Entry>, SyncError> {
        let what = format!("read the control entries of {workspace}");
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT origin, idx, bytes FROM relay_entries \
                 WHERE workspace = $1 AND control ORDER BY origin, idx",
                &[&&workspace.as_bytes()[..]],
            )
            .await
            .map_err(self.pg(&what))?;
        rows.iter()
            .map(|r| {
                let origin: &[u8] = r.try_get(0).map_err(self.pg(&what))?;
                let idx: i64 = r.try_get(1).map_err(self.pg(&what))?;
                let bytes: &[u8] = r.try_get(2).map_err(self.pg(&what))?;
                let origin = PeerId::from_slice(origin).ok_or_else(|| {
                    self.damaged(format!(
                        "workspace {workspace}: an origin of {} bytes",
                        origin.len()
                    ))
                })?;
                self.entry(workspace, origin, idx, bytes)
            })
            .collect()
    }

    async fn control_count(&self, workspace: WorkspaceId) -> Result<u64, SyncError> {
        let what = format!("count the control entries of {workspace}");
        let c = self.client().await?;
        let n: i64 = c
            .query_one(
                "SELECT coalesce(sum(controls), 0)::bigint FROM relay_heads WHERE workspace = $1",
                &[&&workspace.as_bytes()[..]],
            )
            .await
            .and_then(|r| r.try_get(0))
            .map_err(self.pg(&what))?;
        u64::try_from(n)
            .map_err(|_| self.damaged(format!("workspace {workspace}: {n} control entries")))
    }

    async fn relay_id(&self) -> Result<[u8; 32], SyncError> {
        let what = "read the relay id";
        let fresh = shoal_core::random_bytes::<32>()
            .map_err(|e| SyncError::backend(format!("{}: a relay id", self.inner.name), e))?;
        let c = self.client().await?;
        c.execute(
            "INSERT INTO relay_meta (key, value) VALUES ('relay_id', $1) ON CONFLICT DO NOTHING",
            &[&&fresh[..]],
        )
        .await
        .map_err(self.pg(what))?;
        let id: Vec<u8> = c
            .query_one("SELECT value FROM relay_meta WHERE key = 'relay_id'", &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(self.pg(what))?;
        id.try_into().map_err(|v: Vec<u8>| self.damaged(format!("a relay id of {} bytes", v.len())))
    }

    fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.inner.feed.subscribe()
    }

    fn describe(&self) -> String {
        self.inner.name.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_never_shows_the_password() {
        let c: Config = "postgres://relay:s3cret@db.example:5433/shoal".parse().unwrap();
        assert_eq!(describe_config(&c), "postgres://relay@db.example:5433/shoal");
        let c: Config = "host=/run/pg user=u password=hunter2 dbname=d".parse().unwrap();
        let d = describe_config(&c);
        assert!(!d.contains("hunter2") && d.contains("/run/pg") && d.ends_with("/d"), "{d}");
    }

    #[test]
    fn feed_payloads_round_trip_and_strangers_are_ignored() {
        let ev = StoreEvent {
            workspace: WorkspaceId::from_bytes([1; 16]),
            origin: PeerId::from_bytes([2; 16]),
            next: u64::MAX,
            control: true,
        };
        assert_eq!(parse_event(&event_payload(&ev)), Some(ev));
        for bad in ["", "x", "01 02 3 1", &format!("{} 2", event_payload(&ev))] {
            assert_eq!(parse_event(bad), None, "{bad}");
        }
    }
}
