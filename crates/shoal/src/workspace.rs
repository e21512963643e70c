//! [`Workspace`]: one SQLite file holding a device's replica of a workspace, with the API
//! apps use — declare tables, write in transactions, query with read-only SQL, watch.
//!
//! Invariants: every write goes through a [`Transaction`] that becomes exactly one entry of
//! this device's log, durable when `commit` returns. Local writes are checked against the
//! declared schema (names, key columns, types, merge kinds); what other devices wrote is
//! stored as it comes. SQL is read-only.
//!
//! Never: blocks on the network, or writes the file outside the replica's transactions.

use std::path::Path;
use std::sync::{Arc, Mutex};

use shoal_core::control::ControlOp;
use shoal_core::encryption::{EpochKey, wrap_key};
use shoal_core::{
    DeviceKey, HasCursors, Hlc, PeerCursors, PeerId, SystemClock, WallClock, WorkspaceId,
    random_bytes,
};
use shoal_sqlite::{
    LocalTx, Options, OriginStatus, SqliteReplica, TableChange, TablesHandle, TablesMaterializer,
    from_sql, to_sql,
};
use shoal_tables::{
    CellWrite, ColumnId, ColumnType, ColumnView, MergeKind, PkColumn, RowKey, SchemaConflict,
    TableId, TableOp, TableView, TablesDump, Value, validate_name,
};

use crate::error::{Error, Result};

/// How to open or create a workspace.
#[derive(Debug, Clone)]
pub struct WorkspaceOptions {
    /// The wall clock (the system clock unless a test injects one).
    pub clock: Arc<dyn WallClock>,
    /// For [`Workspace::create`]: the workspace admits only invited devices (DESIGN §8;
    /// `docs/ARCHITECTURE.md`, "Membership"). Fixed for life by the genesis entry.
    pub members_only: bool,
    /// For [`Workspace::create`]: data entries are end-to-end encrypted (DESIGN §8;
    /// `docs/ARCHITECTURE.md`, "Encryption"); implies `members_only`. Fixed for life by the
    /// genesis entry.
    pub encrypted: bool,
}

impl Default for WorkspaceOptions {
    fn default() -> Self {
        WorkspaceOptions { clock: Arc::new(SystemClock), members_only: false, encrypted: false }
    }
}

/// A device's replica of a workspace. Cheap to clone.
#[derive(Clone)]
pub struct Workspace {
    replica: SqliteReplica,
    tables: TablesHandle,
    schema: Arc<Mutex<Option<CachedSchema>>>,
    /// Set once a sync found this device's own log forked (also kept in the file, so every
    /// later process sees it); local writes are refused from then on.
    forked: Arc<std::sync::atomic::AtomicBool>,
    /// Whether this device's own log was looked at in its folder since opening (see
    /// `own_log_first`).
    own_checked: Arc<std::sync::atomic::AtomicBool>,
}

/// Metadata key: why this device's own log is known to be forked.
pub(crate) const OWN_FORK: &str = "own_fork";

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workspace").field("replica", &self.replica).finish_non_exhaustive()
    }
}

/// The schema with the generation it was read at (`shoal_schema_gen`).
type CachedSchema = (i64, Arc<Schema>);

/// The visible schema: tables and their columns in view order.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    /// Visible tables (no rows).
    pub tables: Vec<TableView>,
    /// Conflicts between definitions made offline on different devices (not
    /// `RowsNotShown`, which needs the rows counted: see [`Status::conflicts`]).
    pub conflicts: Vec<SchemaConflict>,
}

impl Schema {
    /// The visible table named `name` (exact, else ASCII case-insensitive, as SQL matches).
    pub fn table(&self, name: &str) -> Option<&TableView> {
        self.tables
            .iter()
            .find(|t| t.name == name)
            .or_else(|| self.tables.iter().find(|t| t.name.eq_ignore_ascii_case(name)))
    }

    /// The visible table named `name`, or [`Error::UnknownTable`].
    pub fn table_or_err(&self, name: &str) -> Result<&TableView> {
        self.table(name).ok_or_else(|| Error::UnknownTable { name: name.to_owned() })
    }
}

/// A table to declare: its name, primary key and columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    /// The table's name.
    pub name: String,
    /// Primary-key columns, in key order.
    pub key: Vec<(String, ColumnType)>,
    /// Other columns: name, type, merge kind.
    pub columns: Vec<(String, ColumnType, MergeKind)>,
}

impl TableSpec {
    /// A table named `name` with no columns yet.
    pub fn new(name: impl Into<String>) -> Self {
        TableSpec { name: name.into(), key: Vec::new(), columns: Vec::new() }
    }

    /// Adds a primary-key column.
    pub fn key(mut self, name: impl Into<String>, ty: ColumnType) -> Self {
        self.key.push((name.into(), ty));
        self
    }

    /// Adds a last-writer-wins column.
    pub fn column(mut self, name: impl Into<String>, ty: ColumnType) -> Self {
        self.columns.push((name.into(), ty, MergeKind::Lww));
        self
    }

    /// Adds a counter column (INTEGER; concurrent increments add up).
    pub fn counter(mut self, name: impl Into<String>) -> Self {
        self.columns.push((name.into(), ColumnType::Integer, MergeKind::Counter));
        self
    }

    /// Adds a max column (the greatest value written wins).
    pub fn max(mut self, name: impl Into<String>, ty: ColumnType) -> Self {
        self.columns.push((name.into(), ty, MergeKind::Max));
        self
    }
}

/// Where a committed transaction landed in this device's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// The entry's index in this device's log.
    pub index: u64,
    /// The entry's timestamp.
    pub hlc: Hlc,
    /// Set when this device's clock state is ahead of its wall clock by more than
    /// receivers accept ([`Workspace::clock_ahead`]): this write (and every later one) will
    /// stall on the other devices. Fix the clock, then [`Workspace::recover_clock`].
    pub clock_ahead: Option<shoal_core::ClockSkew>,
}

/// The result of a read-only query.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryResult {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows, one value per column.
    pub rows: Vec<Vec<Value>>,
}

/// What `status` reports.
#[derive(Debug, Clone)]
pub struct Status {
    /// The workspace.
    pub workspace: WorkspaceId,
    /// This device's origin.
    pub device: Option<PeerId>,
    /// Every origin known, with its cursor, materialization progress and stall reason.
    pub origins: Vec<OriginStatus>,
    /// Schema conflicts, including `RowsNotShown`: how many live rows of a table are kept
    /// but not shown because their key does not fit the winning primary key
    /// (`docs/TABLES.md` §5.3), the same on every replica holding the same entries.
    pub conflicts: Vec<SchemaConflict>,
    /// Why this device's own log is known to be forked, if it is.
    pub fork: Option<String>,
    /// How far this device's clock state is ahead of its wall clock, if by more than
    /// receivers accept ([`Workspace::clock_ahead`]).
    pub clock_ahead: Option<shoal_core::ClockSkew>,
}

impl Workspace {
    /// Creates a new workspace founded by this device (a new key), in a new file.
    pub fn create(path: impl AsRef<Path>, options: WorkspaceOptions) -> Result<Workspace> {
        let key = DeviceKey::generate()
            .map_err(|e| Error::Path { path: path.as_ref().to_owned(), reason: e.to_string() })?;
        let salt = random_bytes::<16>()
            .map_err(|e| Error::Path { path: path.as_ref().to_owned(), reason: e.to_string() })?;
        Self::create_with_key(path, key, salt, options)
    }

    /// [`Workspace::create`] with a device key and workspace salt of the caller's (an app
    /// that keeps keys in a keychain; a reproducible simulation). The key must be used by
    /// this one file only: two files with one key are one device forked.
    pub fn create_with_key(
        path: impl AsRef<Path>,
        key: DeviceKey,
        salt: [u8; 16],
        options: WorkspaceOptions,
    ) -> Result<Workspace> {
        // The genesis entry: anyone can check that the id derives from this key and salt.
        let genesis = ControlOp::genesis(key.public_key(), salt);
        let id = genesis.founds().ok_or_else(|| {
            Error::Sync(shoal_core::SyncError::Bug("a genesis founds a workspace".into()))
        })?;
        let mut first = vec![genesis];
        if options.members_only || options.encrypted {
            let encrypted = options.encrypted;
            first.push(ControlOp::Policy { encrypted, creator_exchange: key.exchange_key() });
        }
        if options.encrypted {
            // Epoch 0's key, wrapped for the creator itself: every key a device holds is
            // recovered from the control log and its own secret.
            let path_err = |reason: String| Error::Path { path: path.as_ref().to_owned(), reason };
            let epoch_key = EpochKey::generate().map_err(|e| path_err(e.to_string()))?;
            let wrap = wrap_key(&id, 0, &epoch_key, &key.exchange_key())
                .map_err(|e| path_err(e.to_string()))?;
            first.push(ControlOp::EpochKeys { epoch: 0, wraps: vec![(key.peer_id(&id), wrap)] });
        }
        Self::create_file(path.as_ref(), id, key, None, options, first)
    }

    /// Creates a file for a new device of the existing workspace `id`; it fills by syncing.
    /// In a members-only workspace its entry 0 asks to join, and its writes stay pending
    /// until an admin admits it ([`Workspace::admit`]); with an invite code, use
    /// [`Workspace::join_with_code`].
    pub fn join(
        path: impl AsRef<Path>,
        id: WorkspaceId,
        options: WorkspaceOptions,
    ) -> Result<Workspace> {
        let key = DeviceKey::generate()
            .map_err(|e| Error::Path { path: path.as_ref().to_owned(), reason: e.to_string() })?;
        Self::join_with_key(path, id, key, options)
    }

    /// [`Workspace::join`] with a device key of the caller's (see
    /// [`Workspace::create_with_key`]).
    pub fn join_with_key(
        path: impl AsRef<Path>,
        id: WorkspaceId,
        key: DeviceKey,
        options: WorkspaceOptions,
    ) -> Result<Workspace> {
        let request = ControlOp::Request { exchange: key.exchange_key() };
        Self::create_file(path.as_ref(), id, key, None, options, vec![request])
    }

    /// Creates a file for a new device joining with an invite code: its entry 0 redeems
    /// the invite, and the join is the admission (no admin needs to be online).
    pub fn join_with_code(
        path: impl AsRef<Path>,
        code: &shoal_core::invite::InviteCode,
        options: WorkspaceOptions,
    ) -> Result<Workspace> {
        let key = DeviceKey::generate()
            .map_err(|e| Error::Path { path: path.as_ref().to_owned(), reason: e.to_string() })?;
        Self::join_with_code_and_key(path, code, key, options)
    }

    /// [`Workspace::join_with_code`] with a device key of the caller's.
    pub fn join_with_code_and_key(
        path: impl AsRef<Path>,
        code: &shoal_core::invite::InviteCode,
        key: DeviceKey,
        options: WorkspaceOptions,
    ) -> Result<Workspace> {
        let join = code.join_op(&key);
        // An encrypted workspace's keys reach the new device wrapped for the invite secret:
        // its key file keeps the secret.
        let invite = code.encrypted.then(|| code.key());
        Self::create_file(path.as_ref(), code.workspace, key, invite, options, vec![join])
    }

    /// Creates the file atomically: it is built and closed under a hidden temporary name
    /// in the same directory (`.<name>.init-<random>`), synced, then linked into place
    /// (never replacing a file there) and the directory synced. A process killed on the way
    /// leaves no file at `path`, or a complete workspace; only the temporary may be left.
    fn create_file(
        path: &Path,
        id: WorkspaceId,
        key: DeviceKey,
        invite: Option<DeviceKey>,
        options: WorkspaceOptions,
        first: Vec<ControlOp>,
    ) -> Result<Workspace> {
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(parent) = parent
            && !parent.is_dir()
        {
            return Err(Error::Path {
                path: parent.to_owned(),
                reason: "no such directory".into(),
            });
        }
        if path.symlink_metadata().is_ok() {
            return Err(shoal_sqlite::OpenError::AlreadyExists { path: path.to_owned() }.into());
        }
        let path_err = |reason: String| Error::Path { path: path.to_owned(), reason };
        let name = path.file_name().ok_or_else(|| path_err("not a file name".into()))?;
        let suffix = random_bytes::<6>().map_err(|e| path_err(e.to_string()))?;
        let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
        let tmp = path.with_file_name(format!(".{}.init-{suffix}", name.to_string_lossy()));
        let built = (|| -> Result<()> {
            let m = TablesMaterializer::new();
            let encrypted_invite = invite.is_some();
            let replica = SqliteReplica::create_with_invite(
                &tmp,
                id,
                Some(key),
                invite,
                Options { clock: options.clock.clone(), domains: vec![Box::new(m)] },
            )?;
            if encrypted_invite {
                replica.expect_encrypted()?;
            }
            // Entry 0: the genesis (and policy) of a new workspace, or how this device joins.
            let ops: Vec<_> = first.iter().map(ControlOp::to_op).collect();
            replica.append_local(vec![LocalTx { ops, author: None }])?;
            if first.iter().any(|o| matches!(o, ControlOp::Join { .. })) {
                // Invites exist only in members-only workspaces.
                replica.expect_members_only()?;
            }
            drop(replica);
            // The replica's last connections to close are read-only ones, which cannot merge
            // the WAL: one read-write connection, closed last, merges it into the file and
            // deletes it (the file stays in WAL mode).
            let sql_err = |e: rusqlite::Error| path_err(format!("{}: {e}", tmp.display()));
            let conn = rusqlite::Connection::open(&tmp).map_err(sql_err)?;
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).map_err(sql_err)?;
            conn.close().map_err(|(_, e)| sql_err(e))?;
            let wal = side_file(&tmp, "-wal");
            if wal.exists() {
                return Err(path_err(format!(
                    "the new file's write-ahead log {} was not merged on close",
                    wal.display()
                )));
            }
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(|e| path_err(format!("cannot sync {}: {e}", tmp.display())))?;
            // The device key goes first: a workspace file never appears without its key file.
            // A hard link never replaces what is there; where links are not supported,
            // check and rename.
            let (tmp_key, key) = (shoal_sqlite::key_path(&tmp), shoal_sqlite::key_path(path));
            match std::fs::hard_link(&tmp_key, &key) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(path_err(format!(
                        "a key file {} is already there (from an interrupted init?); \
                         remove it if no workspace uses it",
                        key.display()
                    )));
                }
                Err(_) => std::fs::rename(&tmp_key, &key)
                    .map_err(|e| path_err(format!("cannot move the key file into place: {e}")))?,
            }
            let placed = match std::fs::hard_link(&tmp, path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    Err(Error::from(shoal_sqlite::OpenError::AlreadyExists {
                        path: path.to_owned(),
                    }))
                }
                Err(_) if path.symlink_metadata().is_err() => std::fs::rename(&tmp, path)
                    .map_err(|e| path_err(format!("cannot move the new file into place: {e}"))),
                Err(_) => {
                    Err(shoal_sqlite::OpenError::AlreadyExists { path: path.to_owned() }.into())
                }
            };
            if placed.is_err() {
                // The key placed above belongs to no workspace now.
                let _ = std::fs::remove_file(&key);
            }
            placed?;
            Ok(())
        })();
        let tmp_key = shoal_sqlite::key_path(&tmp);
        for leftover in [tmp.clone(), side_file(&tmp, "-wal"), side_file(&tmp, "-shm"), tmp_key] {
            let _ = std::fs::remove_file(leftover);
        }
        built?;
        #[cfg(unix)]
        if let Ok(dir) = std::fs::File::open(parent.unwrap_or(Path::new("."))) {
            // The new name is durable once the directory is synced.
            dir.sync_all().map_err(|e| path_err(format!("cannot sync the directory: {e}")))?;
        }
        Self::open(path, options)
    }

    fn wrap(replica: SqliteReplica, tables: TablesHandle) -> Workspace {
        let forked = replica.meta(OWN_FORK).ok().flatten().is_some();
        Workspace {
            replica,
            tables,
            schema: Arc::default(),
            forked: Arc::new(std::sync::atomic::AtomicBool::new(forked)),
            own_checked: Arc::default(),
        }
    }

    /// Why this device's own log is known to be forked, if it is (see [`Error::Forked`]).
    pub fn fork(&self) -> Result<Option<String>> {
        Ok(self.replica.meta(OWN_FORK)?.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// Records what a sync found: a fork of this device's own log is kept in the file (and
    /// refuses every later local write, in this process and any other); other errors are
    /// the caller's to report.
    pub fn note_sync_error(&self, e: &shoal_core::SyncError) -> Result<()> {
        if let shoal_core::SyncError::Forked { .. } = e {
            self.note_fork(&e.to_string())?;
        }
        Ok(())
    }

    /// Records that this device's own log is forked, and why (a mirror's `fork`).
    pub fn note_fork(&self, why: &str) -> Result<()> {
        self.replica.set_meta(OWN_FORK, why.as_bytes())?;
        self.forked.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    pub(crate) fn own_log_checked(&self) -> bool {
        self.own_checked.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(crate) fn set_own_log_checked(&self) {
        self.own_checked.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// What every local write checks first: the file is writable, this device's log is not
    /// forked, and its own log was looked at in its folder since opening.
    pub(crate) fn before_local_write(&self) -> Result<()> {
        self.replica.check_writable()?;
        self.refuse_if_forked()?;
        self.own_log_first()
    }

    fn refuse_if_forked(&self) -> Result<()> {
        if self.forked.load(std::sync::atomic::Ordering::SeqCst) {
            let why = self.fork()?.unwrap_or_else(|| "this device's own log is forked".into());
            return Err(Error::Forked(why));
        }
        Ok(())
    }

    /// Opens an existing workspace file.
    /// A file this process cannot write (its permissions, a read-only filesystem) is opened
    /// read-only, as [`Workspace::open_read_only`] does: reads work, writes fail naming it.
    pub fn open(path: impl AsRef<Path>, options: WorkspaceOptions) -> Result<Workspace> {
        let path = path.as_ref();
        remove_init_leftovers(path);
        let m = TablesMaterializer::new();
        let tables = m.handle();
        let opened = SqliteReplica::open(
            path,
            Options { clock: options.clock.clone(), domains: vec![Box::new(m)] },
        );
        match opened {
            Ok(replica) => Ok(Workspace::wrap(replica, tables)),
            Err(shoal_sqlite::OpenError::Sqlite { source, .. })
                if source.sqlite_error_code() == Some(rusqlite::ErrorCode::ReadOnly) =>
            {
                Self::open_read_only(path, options)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Opens an existing workspace file for reading only: queries, `get`, `status` and the
    /// schema work; every write (a transaction, a declaration, a sync) fails with an error
    /// naming the file. Nothing is written to the file, not even upkeep.
    pub fn open_read_only(path: impl AsRef<Path>, options: WorkspaceOptions) -> Result<Workspace> {
        remove_init_leftovers(path.as_ref());
        let m = TablesMaterializer::new();
        let tables = m.handle();
        let replica = SqliteReplica::open_read_only(
            path,
            Options { clock: options.clock, domains: vec![Box::new(m)] },
        )?;
        Ok(Workspace::wrap(replica, tables))
    }

    /// The workspace id.
    pub fn id(&self) -> WorkspaceId {
        self.replica.workspace()
    }

    /// This device's origin id.
    pub fn device(&self) -> Option<PeerId> {
        self.replica.own_origin()
    }

    /// The replica, for the sync drivers (`shoal_core::pull`, the folder mirror).
    pub fn replica(&self) -> &SqliteReplica {
        &self.replica
    }

    /// The file.
    pub fn path(&self) -> &Path {
        self.replica.path()
    }

    /// The visible schema (cached until a schema change).
    pub fn schema(&self) -> Result<Arc<Schema>> {
        let cached = self.schema.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (generation, schema) = self.replica.with_reader(|conn| {
            let generation: i64 = conn
                .prepare_cached("SELECT gen FROM shoal_schema_gen WHERE id = 0")
                .and_then(|mut s| s.query_row([], |r| r.get(0)))
                .map_err(|e| shoal_core::SyncError::backend("read the schema generation", e))?;
            if let Some((g, s)) = &cached
                && *g == generation
            {
                return Ok((generation, s.clone()));
            }
            let mut m = TablesMaterializer::new();
            let dump: TablesDump = m
                .schema_from(conn)
                .map_err(|e| shoal_core::SyncError::backend("read the schema", e))?;
            Ok((
                generation,
                Arc::new(Schema { tables: dump.tables, conflicts: m.conflicts().to_vec() }),
            ))
        })?;
        *self.schema.lock().unwrap_or_else(|p| p.into_inner()) = Some((generation, schema.clone()));
        Ok(schema)
    }

    /// Declares a table (idempotent): creates it, or adds the columns it lacks. Fails if the
    /// table exists with another key or a column exists with another type or merge kind.
    /// Two devices that declare the same table offline get the same ids and agree.
    pub fn declare(&self, spec: &TableSpec) -> Result<Option<Commit>> {
        validate_name(&spec.name)?;
        if spec.key.is_empty() {
            return Err(Error::SchemaMismatch {
                table: spec.name.clone(),
                what: "a table needs at least one key column".into(),
            });
        }
        let invalid = |reason: String| Error::InvalidTable { table: spec.name.clone(), reason };
        if spec.key.len() > shoal_tables::MAX_KEY_VALUES {
            return Err(invalid(format!(
                "{} key columns (at most {})",
                spec.key.len(),
                shoal_tables::MAX_KEY_VALUES
            )));
        }
        for (name, _) in &spec.key {
            validate_name(name)?;
        }
        for (name, ty, merge) in &spec.columns {
            validate_name(name)?;
            if *merge == MergeKind::Counter && *ty != ColumnType::Integer {
                return Err(Error::SchemaMismatch {
                    table: spec.name.clone(),
                    what: format!("counter column {name:?} must be INTEGER"),
                });
            }
        }
        // Every name once, as `add_column` and `rename_column` require (ASCII
        // case-insensitive, as SQL compares names), key columns included.
        let names: Vec<&str> = spec
            .key
            .iter()
            .map(|(n, _)| n.as_str())
            .chain(spec.columns.iter().map(|(n, _, _)| n.as_str()))
            .collect();
        for (i, name) in names.iter().enumerate() {
            if let Some(first) = names[..i].iter().find(|n| n.eq_ignore_ascii_case(name)) {
                return Err(invalid(format!(
                    "column {name:?} is given twice (as {first:?} and {name:?}; names are \
                     compared ignoring ASCII case)"
                )));
            }
        }
        // The column budget, checked before anything else is read.
        shoal_tables::check_column_budget(&spec.name, 0, names.len())
            .map_err(|e| invalid(e.to_string()))?;
        let schema = self.schema()?;
        let mut ops = Vec::new();
        let (table, existing) = match schema.table(&spec.name) {
            Some(t) => (t.id, Some(t)),
            None => (free_table_id(&schema, &spec.name), None),
        };
        match existing {
            Some(t) => {
                let keys: Vec<&ColumnView> =
                    t.columns.iter().filter(|c| c.merge.is_none()).collect();
                let same = keys.len() == spec.key.len()
                    && keys
                        .iter()
                        .zip(&spec.key)
                        .all(|(c, (n, ty))| c.name.eq_ignore_ascii_case(n) && c.ty == *ty);
                if !same {
                    let have: Vec<String> =
                        keys.iter().map(|c| format!("{} {}", c.name, c.ty)).collect();
                    return Err(Error::SchemaMismatch {
                        table: spec.name.clone(),
                        what: format!("its primary key is ({})", have.join(", ")),
                    });
                }
            }
            None => ops.push(TableOp::CreateTable {
                table,
                name: spec.name.clone(),
                primary_key: spec.key.iter().map(|(n, ty)| PkColumn::new(table, n, *ty)).collect(),
            }),
        }
        for (name, ty, merge) in &spec.columns {
            let found =
                existing.and_then(|t| t.columns.iter().find(|c| c.name.eq_ignore_ascii_case(name)));
            match found {
                Some(c) if c.merge == Some(*merge) && c.ty == *ty => {}
                Some(c) => {
                    return Err(Error::SchemaMismatch {
                        table: spec.name.clone(),
                        what: format!(
                            "column {:?} is {} {}",
                            c.name,
                            c.ty,
                            c.merge.map_or("KEY".to_owned(), |m| m.to_string())
                        ),
                    });
                }
                None => ops.push(TableOp::AddColumn {
                    table,
                    column: free_column_id(existing, table, name),
                    name: name.clone(),
                    ty: *ty,
                    merge: *merge,
                }),
            }
        }
        if ops.is_empty() {
            return Ok(None);
        }
        // The column budget (shoal_tables::MAX_COLUMNS_PER_TABLE), key columns included.
        let adding = ops.iter().filter(|o| matches!(o, TableOp::AddColumn { .. })).count();
        let have = existing.map_or(spec.key.len(), |t| t.columns.len());
        shoal_tables::check_column_budget(&spec.name, have, adding)
            .map_err(|e| invalid(e.to_string()))?;
        self.commit_ops(ops).map(Some)
    }

    /// Adds a column to the table `table`: one entry with one `AddColumn`. Fails if the
    /// name is not allowed or taken (ASCII case-insensitive, as SQL compares names), or if
    /// a counter is not INTEGER. Like [`Workspace::declare`], a column re-added under the
    /// name of a dropped one gets its id back, and shows the cells written after the drop.
    pub fn add_column(
        &self,
        table: &str,
        name: &str,
        ty: ColumnType,
        merge: MergeKind,
    ) -> Result<Commit> {
        validate_name(name)?;
        let schema = self.schema()?;
        let t = schema.table_or_err(table)?;
        if let Some(c) = t.columns.iter().find(|c| c.name.eq_ignore_ascii_case(name)) {
            return Err(Error::SchemaChange {
                table: t.name.clone(),
                reason: format!("it already has a column named {:?}", c.name),
            });
        }
        if merge == MergeKind::Counter && ty != ColumnType::Integer {
            return Err(Error::SchemaChange {
                table: t.name.clone(),
                reason: format!("counter column {name:?} must be INTEGER, not {ty}"),
            });
        }
        shoal_tables::check_column_budget(&t.name, t.columns.len(), 1)
            .map_err(|e| Error::SchemaChange { table: t.name.clone(), reason: e.to_string() })?;
        let column = free_column_id(Some(t), t.id, name);
        self.commit_ops(vec![TableOp::AddColumn {
            table: t.id,
            column,
            name: name.to_owned(),
            ty,
            merge,
        }])
    }

    /// Renames the table `table` to `new_name` (last writer wins on the name; its id, and
    /// so its rows, stay). One entry. Fails if the name is not allowed or another table has
    /// it.
    pub fn rename_table(&self, table: &str, new_name: &str) -> Result<Commit> {
        validate_name(new_name)?;
        let schema = self.schema()?;
        let t = schema.table_or_err(table)?;
        if let Some(other) =
            schema.tables.iter().find(|o| o.id != t.id && o.name.eq_ignore_ascii_case(new_name))
        {
            return Err(Error::SchemaChange {
                table: t.name.clone(),
                reason: format!("another table is named {:?}", other.name),
            });
        }
        self.commit_ops(vec![TableOp::RenameTable { table: t.id, name: new_name.to_owned() }])
    }

    /// Drops the table `table`: hides it and deletes its rows as of now, on every device
    /// (a write made concurrently elsewhere with a later timestamp revives its row once the
    /// table is declared again). One entry.
    pub fn drop_table(&self, table: &str) -> Result<Commit> {
        let schema = self.schema()?;
        let t = schema.table_or_err(table)?;
        self.commit_ops(vec![TableOp::DropTable { table: t.id }])
    }

    /// Renames a column of `table`, key columns included (last writer wins on the name).
    /// One entry. Fails if the name is not allowed or another column of the table has it.
    pub fn rename_column(&self, table: &str, column_name: &str, new_name: &str) -> Result<Commit> {
        validate_name(new_name)?;
        let schema = self.schema()?;
        let t = schema.table_or_err(table)?;
        let c = column(t, column_name)?;
        if let Some(other) =
            t.columns.iter().find(|o| o.id != c.id && o.name.eq_ignore_ascii_case(new_name))
        {
            return Err(Error::SchemaChange {
                table: t.name.clone(),
                reason: format!("it already has a column named {:?}", other.name),
            });
        }
        self.commit_ops(vec![TableOp::RenameColumn {
            table: t.id,
            column: c.id,
            name: new_name.to_owned(),
        }])
    }

    /// Drops a non-key column of `table`: hides it and the cells written to it up to now.
    /// One entry. Primary-key columns cannot be dropped.
    pub fn drop_column(&self, table: &str, column_name: &str) -> Result<Commit> {
        let schema = self.schema()?;
        let t = schema.table_or_err(table)?;
        let c = column(t, column_name)?;
        if c.merge.is_none() {
            return Err(Error::SchemaChange {
                table: t.name.clone(),
                reason: format!(
                    "column {:?} is part of the primary key; it cannot be dropped",
                    c.name
                ),
            });
        }
        self.commit_ops(vec![TableOp::DropColumn { table: t.id, column: c.id }])
    }

    /// Starts a transaction; nothing is written until [`Transaction::commit`].
    pub fn transaction(&self) -> Result<Transaction<'_>> {
        Ok(Transaction { ws: self, schema: self.schema()?, ops: Vec::new() })
    }

    fn commit_ops(&self, ops: Vec<TableOp>) -> Result<Commit> {
        let ops = ops.iter().map(|o| o.to_op()).collect::<Result<Vec<_>, _>>()?;
        self.before_local_write()?;
        if !self.replica.can_write_data()? {
            return Err(Error::NoKey);
        }
        let n_ops = ops.len() as u64;
        let commits = self.replica.append_local(vec![LocalTx { ops, author: None }])?;
        let c = commits.first().ok_or_else(|| {
            shoal_core::SyncError::Bug("a local append returned no commit".into())
        })?;
        // The clock state after this commit is at least the entry's last op (`c.hlc` is its
        // first; one op per table op).
        let wall = self.replica.wall_clock().now_millis();
        let last = c.hlc.plus(n_ops.max(1) - 1);
        Ok(Commit { index: c.index, hlc: c.hlc, clock_ahead: shoal_core::clock_ahead(last, wall) })
    }

    /// Runs read-only SQL with positional parameters (`?1`, `?2`, …). Tables are views
    /// named after the tables. Shoal's hidden `shoal_*` tables and SQLite's `sqlite_*` ones
    /// cannot be read (an SQLite authorizer refuses them, as it refuses `ATTACH`, pragmas
    /// that change anything and transactions): the statement fails with [`Error::Sql`].
    pub fn query(&self, sql: &str, params: &[Value]) -> Result<QueryResult> {
        self.replica.with_app_reader(|conn| Ok(run_query(conn, sql, params)))?
    }

    /// Runs read-only SQL like [`Workspace::query`], but hands each row to `on_row` as
    /// SQLite produces it, so memory does not grow with the result. `started` gets the
    /// column names and a [`QueryInterrupt`] (to stop the query from another thread)
    /// before the first row. An interrupted query ends with [`Error::Interrupted`]; an
    /// error of `on_row` ends the query and is returned.
    pub fn query_each<E: From<Error>>(
        &self,
        sql: &str,
        params: &[Value],
        started: impl FnOnce(&[String], QueryInterrupt) -> std::result::Result<(), E>,
        mut on_row: impl FnMut(&[Value]) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let run = |conn: &rusqlite::Connection| -> std::result::Result<(), E> {
            let err = |source| Error::Sql { sql: sql.to_owned(), source };
            let mut stmt = prepare_query(conn, sql)?;
            let columns: Vec<String> = stmt.column_names().map(str::to_owned).collect();
            started(&columns, QueryInterrupt(conn.get_interrupt_handle()))?;
            let n = columns.len();
            let args: Vec<rusqlite::types::Value> = params.iter().map(to_sql).collect();
            let mut rows = stmt.query(rusqlite::params_from_iter(args)).map_err(err)?;
            let mut values = Vec::with_capacity(n);
            loop {
                let row = match rows.next() {
                    Ok(Some(row)) => row,
                    Ok(None) => return Ok(()),
                    Err(e) if is_interrupt(&e) => return Err(Error::Interrupted.into()),
                    Err(e) => return Err(err(e).into()),
                };
                values.clear();
                for i in 0..n {
                    values.push(from_sql(row.get_ref(i).map_err(err)?));
                }
                on_row(&values)?;
            }
        };
        // The guarded pool: app SQL never runs on a connection without the authorizer.
        self.replica.with_app_reader(|conn| Ok(run(conn))).map_err(Error::from)?
    }

    /// The live row of `table` with primary key `key`, as `(column, value)` pairs.
    ///
    /// The row is found by its canonical key bytes (`docs/TABLES.md` §2), as the table
    /// domain identifies rows: a NaN key finds its row (SQL stores NaN as NULL), and `-0.0`
    /// and `0.0`, or `1` and `1.0`, are different keys. Key values are returned as given.
    pub fn get(&self, table: &str, key: &[Value]) -> Result<Option<Vec<(String, Value)>>> {
        let schema = self.schema()?;
        let t = schema.table_or_err(table)?;
        let wanted = row_key(t, key)?;
        let path = self.path().to_owned();
        let view = t.name.clone();
        // A trusted reader: the lookup reads the view's definition and the hidden row table
        // behind it (by key bytes), which app SQL's authorizer refuses.
        let row = self.replica.with_reader(|conn| {
            shoal_sqlite::live_row(conn, &view, &wanted).map_err(|e| {
                shoal_core::SyncError::backend(
                    format!("{}: read a row of table {view:?}", path.display()),
                    e,
                )
            })
        })?;
        let Some(mut values) = row else { return Ok(None) };
        if values.len() != t.columns.len() {
            // The file's schema changed since `schema()` read it: read it again.
            return Err(shoal_core::SyncError::Unavailable {
                what: format!("table {:?} of {}", t.name, path.display()),
                reason: "its definition changed while it was read; try again".into(),
            }
            .into());
        }
        // Key columns come first in view order; SQL cannot hold a NaN or always tell -0.0
        // from 0.0, the key bytes can.
        for (slot, v) in values.iter_mut().zip(key) {
            *slot = v.clone();
        }
        Ok(Some(t.columns.iter().map(|c| c.name.clone()).zip(values).collect()))
    }

    /// Change events of `table` committed by this process from now on (local writes and
    /// applied sync), with a `Lagged` event if the subscriber falls behind.
    pub fn watch(&self, table: &str) -> Result<TableWatch> {
        let schema = self.schema()?;
        let t = schema.table_or_err(table)?;
        Ok(TableWatch { ws: self.clone(), table: t.id, rx: self.tables.subscribe() })
    }

    /// Cursors of every origin held.
    pub async fn cursors(&self) -> Result<PeerCursors> {
        Ok(self.replica.cursors().await?)
    }

    /// Schema conflicts, with `RowsNotShown` (rows written under a losing table definition,
    /// kept but not shown) counted over the stored rows: one scan of each table that has
    /// rows. [`Schema::conflicts`] leaves those out.
    fn conflicts_with_rows(&self) -> Result<Vec<SchemaConflict>> {
        let path = self.path().to_owned();
        Ok(self.replica.with_reader(|conn| {
            TablesMaterializer::new().conflicts_with_rows(conn).map_err(|e| {
                shoal_core::SyncError::backend(
                    format!("{}: count the rows that do not fit their table's key", path.display()),
                    e,
                )
            })
        })?)
    }

    /// Per-origin status and schema conflicts (`RowsNotShown` included: see
    /// [`Status::conflicts`]).
    pub fn status(&self) -> Result<Status> {
        Ok(Status {
            workspace: self.id(),
            device: self.device(),
            origins: self.replica.origin_status()?,
            conflicts: self.conflicts_with_rows()?,
            fork: self.fork()?,
            clock_ahead: self.clock_ahead()?,
        })
    }
}

/// `<path><suffix>`: SQLite's side files (`-wal`, `-shm`).
/// Removes what an `init` killed after placing the file left beside it: its temporary name
/// `.NAME.init-*` (and that name's key file), but only when it is a second name of this
/// very file, so the file has one name again (SQLite must not see two; see
/// `OpenError::HardLinked`). Anything else is left alone; failures are ignored (the open
/// that follows reports what is wrong).
fn remove_init_leftovers(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = std::fs::metadata(path) else { return };
        if meta.nlink() < 2 {
            return;
        }
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { return };
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        let prefix = format!(".{}.init-", name.to_string_lossy());
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let file_name = file_name.to_string_lossy();
            if !file_name.starts_with(&prefix) || file_name.ends_with(".key") {
                continue;
            }
            let leftover = entry.path();
            let same = std::fs::symlink_metadata(&leftover)
                .is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino());
            if same {
                let _ = std::fs::remove_file(shoal_sqlite::key_path(&leftover));
                let _ = std::fs::remove_file(&leftover);
            }
        }
    }
}

fn side_file(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

/// The smallest free id for a new table named `name`: derived from the name, unless a
/// visible table (renamed since) already holds it; then from `name` and a counter, which
/// every device computes alike.
fn free_table_id(schema: &Schema, name: &str) -> TableId {
    let taken = |id: TableId| schema.tables.iter().any(|t| t.id == id);
    let mut id = TableId::from_name(name);
    let mut n = 1u32;
    while taken(id) {
        id = TableId::from_name(&format!("{name}\0{n}"));
        n += 1;
    }
    id
}

/// The id for a new column `name` of `table`: derived from the names, unless a visible
/// column of the table (renamed since) already holds it; then from the name and a counter,
/// which every device computes alike.
fn free_column_id(existing: Option<&TableView>, table: TableId, name: &str) -> ColumnId {
    let taken = |id: ColumnId| existing.is_some_and(|t| t.columns.iter().any(|c| c.id == id));
    let mut id = ColumnId::from_name(table, name);
    let mut n = 1u32;
    while taken(id) {
        id = ColumnId::from_name(table, &format!("{name}\0{n}"));
        n += 1;
    }
    id
}

fn run_query(conn: &rusqlite::Connection, sql: &str, params: &[Value]) -> Result<QueryResult> {
    let err = |source| Error::Sql { sql: sql.to_owned(), source };
    let mut stmt = prepare_query(conn, sql)?;
    let columns: Vec<String> = stmt.column_names().map(str::to_owned).collect();
    let n = columns.len();
    let args: Vec<rusqlite::types::Value> = params.iter().map(to_sql).collect();
    let mut rows_out = Vec::new();
    let mut rows = stmt.query(rusqlite::params_from_iter(args)).map_err(err)?;
    while let Some(row) = rows.next().map_err(err)? {
        let mut values = Vec::with_capacity(n);
        for i in 0..n {
            values.push(from_sql(row.get_ref(i).map_err(err)?));
        }
        rows_out.push(values);
    }
    Ok(QueryResult { columns, rows: rows_out })
}

/// Prepares app SQL on a reader connection, refusing any statement that writes.
fn prepare_query<'c>(conn: &'c rusqlite::Connection, sql: &str) -> Result<rusqlite::Statement<'c>> {
    let err = |source| Error::Sql { sql: sql.to_owned(), source };
    // The connection comes from `with_app_reader`: its schema is current (so `SELECT *`
    // expands to the current views) and its authorizer refuses Shoal's hidden tables; a
    // `shoal_*` name is refused before that, so a CTE taking a view's name cannot read the
    // hidden table behind it.
    if let Err(name) = shoal_sqlite::check_app_sql(sql) {
        // A write says so first: it would be refused whatever it named.
        if starts_with_write_verb(sql) {
            return Err(Error::NotReadOnly { sql: sql.to_owned() });
        }
        return Err(Error::HiddenName { sql: sql.to_owned(), name });
    }
    let stmt = match conn.prepare(sql) {
        Ok(stmt) => stmt,
        // Writing to a view fails while preparing, before `readonly()` can be asked.
        Err(_) if starts_with_write_verb(sql) => {
            return Err(Error::NotReadOnly { sql: sql.to_owned() });
        }
        Err(e) => return Err(err(e)),
    };
    if !stmt.readonly() {
        return Err(Error::NotReadOnly { sql: sql.to_owned() });
    }
    Ok(stmt)
}

fn is_interrupt(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::OperationInterrupted)
}

/// Stops a query of [`Workspace::query_each`] from another thread (for example on Ctrl-C):
/// the query then ends with [`Error::Interrupted`].
pub struct QueryInterrupt(rusqlite::InterruptHandle);

impl QueryInterrupt {
    /// Interrupts the running query (nothing happens if it already ended).
    pub fn interrupt(&self) {
        self.0.interrupt();
    }
}

impl std::fmt::Debug for QueryInterrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryInterrupt").finish_non_exhaustive()
    }
}

fn starts_with_write_verb(sql: &str) -> bool {
    let first = sql.trim_start().split(|c: char| !c.is_ascii_alphabetic()).next().unwrap_or("");
    ["INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER", "UPSERT"]
        .iter()
        .any(|verb| first.eq_ignore_ascii_case(verb))
}

/// Writes collected for one commit. Each write is checked against the schema as it is
/// added; `commit` makes them one entry, durable on return.
#[derive(Debug)]
pub struct Transaction<'w> {
    ws: &'w Workspace,
    schema: Arc<Schema>,
    ops: Vec<TableOp>,
}

impl Transaction<'_> {
    /// Writes a row: every key column by name, and any other LWW or max columns.
    pub fn put(&mut self, table: &str, cells: &[(&str, Value)]) -> Result<&mut Self> {
        let t = self.schema.table_or_err(table)?;
        let mut key = Vec::new();
        for c in t.columns.iter().filter(|c| c.merge.is_none()) {
            let Some((_, v)) = cells.iter().find(|(n, _)| n.eq_ignore_ascii_case(&c.name)) else {
                return Err(Error::MissingKey { table: t.name.clone(), column: c.name.clone() });
            };
            check_type(t, c, v)?;
            key.push(v.clone());
        }
        let mut writes = Vec::new();
        for (name, v) in cells {
            let c = column(t, name)?;
            v.validate()?;
            match c.merge {
                None => continue,
                Some(MergeKind::Lww) => {
                    check_type(t, c, v)?;
                    writes.push((c.id, CellWrite::Set(v.clone())));
                }
                Some(MergeKind::Max) => {
                    check_type(t, c, v)?;
                    writes.push((c.id, CellWrite::Max(v.clone())));
                }
                Some(MergeKind::Counter) => {
                    return Err(Error::WrongMerge {
                        table: t.name.clone(),
                        column: c.name.clone(),
                        kind: "counter",
                        hint: "change it with increment, not put",
                    });
                }
            }
        }
        let key = RowKey::from_values(&key)?;
        self.ops.push(TableOp::Put { table: t.id, key, cells: writes });
        Ok(self)
    }

    /// Adds `by` (wrapping; negative subtracts) to a counter column of the row `key`.
    pub fn increment(
        &mut self,
        table: &str,
        key: &[Value],
        column_name: &str,
        by: i64,
    ) -> Result<&mut Self> {
        let t = self.schema.table_or_err(table)?;
        let key = row_key(t, key)?;
        let c = column(t, column_name)?;
        if c.merge != Some(MergeKind::Counter) {
            return Err(Error::WrongMerge {
                table: t.name.clone(),
                column: c.name.clone(),
                kind: if c.merge.is_none() { "key" } else { "non-counter" },
                hint: "only counter columns can be incremented; write it with put",
            });
        }
        self.ops.push(TableOp::Put { table: t.id, key, cells: vec![(c.id, CellWrite::Add(by))] });
        Ok(self)
    }

    /// Deletes the row `key`. A later write revives it with only the cells written after.
    pub fn delete(&mut self, table: &str, key: &[Value]) -> Result<&mut Self> {
        let t = self.schema.table_or_err(table)?;
        let key = row_key(t, key)?;
        self.ops.push(TableOp::Delete { table: t.id, key });
        Ok(self)
    }

    /// Commits the writes as one entry; durable when it returns. `None` if there were none.
    pub fn commit(self) -> Result<Option<Commit>> {
        if self.ops.is_empty() {
            return Ok(None);
        }
        self.ws.commit_ops(self.ops).map(Some)
    }
}

fn column<'t>(t: &'t TableView, name: &str) -> Result<&'t ColumnView> {
    t.columns
        .iter()
        .find(|c| c.name == name)
        .or_else(|| t.columns.iter().find(|c| c.name.eq_ignore_ascii_case(name)))
        .ok_or_else(|| Error::UnknownColumn { table: t.name.clone(), column: name.to_owned() })
}

fn check_type(t: &TableView, c: &ColumnView, v: &Value) -> Result<()> {
    if c.ty.accepts(v) {
        Ok(())
    } else {
        Err(Error::WrongType {
            table: t.name.clone(),
            column: c.name.clone(),
            expected: c.ty,
            got: v.type_name(),
        })
    }
}

fn row_key(t: &TableView, key: &[Value]) -> Result<RowKey> {
    let keys: Vec<&ColumnView> = t.columns.iter().filter(|c| c.merge.is_none()).collect();
    if keys.len() != key.len() {
        return Err(Error::KeyArity {
            table: t.name.clone(),
            expected: keys.len(),
            got: key.len(),
        });
    }
    for (c, v) in keys.iter().zip(key) {
        check_type(t, c, v)?;
    }
    Ok(RowKey::from_values(key)?)
}

/// A change to a watched table.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// A row changed: its key values, the columns whose value changed, and whether it is
    /// live (false: it was deleted).
    Changed {
        /// Key values.
        key: Vec<Value>,
        /// Names of the columns that changed.
        columns: Vec<String>,
        /// Whether the row is visible now.
        live: bool,
    },
    /// The subscriber fell behind and missed `missed` events: re-query the table.
    Lagged {
        /// How many events were missed.
        missed: u64,
    },
}

/// Change events of one table; see [`Workspace::watch`].
#[derive(Debug)]
pub struct TableWatch {
    ws: Workspace,
    table: TableId,
    rx: tokio::sync::broadcast::Receiver<TableChange>,
}

impl TableWatch {
    /// The next event of this table; `None` when the workspace is closed.
    pub async fn next(&mut self) -> Option<WatchEvent> {
        loop {
            match self.rx.recv().await {
                Ok(change) if change.table == self.table => return Some(self.event(change)),
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    return Some(WatchEvent::Lagged { missed });
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    fn event(&self, change: TableChange) -> WatchEvent {
        let schema = self.ws.schema().ok();
        let names = change
            .columns
            .iter()
            .map(|id| {
                schema
                    .as_ref()
                    .and_then(|s| s.tables.iter().find(|t| t.id == self.table))
                    .and_then(|t| t.columns.iter().find(|c| c.id == *id))
                    .map_or_else(|| id.to_string(), |c| c.name.clone())
            })
            .collect();
        WatchEvent::Changed {
            key: change.key.values().unwrap_or_default(),
            columns: names,
            live: change.live,
        }
    }
}
