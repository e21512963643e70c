//! The on-disk layout of a workspace file and how it is opened.
//!
//! Owns: the DDL of the oplog, origins, clock and metadata tables, the format version, and
//! the checks that refuse files that are not Shoal workspaces or were written by a newer
//! Shoal ([`OpenError`]).
//!
//! Invariants: a Shoal file has `PRAGMA application_id` = [`APPLICATION_ID`] and
//! `PRAGMA user_version` = the format version it was written with. The file is in WAL mode
//! so that readers never block the writer.
//!
//! The file and, through it, its WAL and shared-memory files are created owner-only (0600)
//! on Unix. The device's secret key is not in the file (see `keyfile`).
//!
//! Never: modifies a file it does not recognise; opening an existing non-Shoal database or
//! a newer format fails before anything is written.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::keyfile::KeyFileError;

/// `PRAGMA application_id` of Shoal workspace files: ASCII "SHOL".
pub const APPLICATION_ID: i32 = 0x5348_4f4c;

/// The format version this build writes and the newest it reads.
pub const FORMAT_VERSION: i32 = 3;

/// Why a workspace file could not be opened or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// No file at the path (and creation was not asked for).
    #[error("{}: no such workspace file", path.display())]
    Missing {
        /// The path.
        path: PathBuf,
    },
    /// The file exists but is not an SQLite database.
    #[error("{}: not a Shoal workspace (the file is not an SQLite database)", path.display())]
    NotADatabase {
        /// The path.
        path: PathBuf,
    },
    /// An SQLite database that Shoal did not create.
    #[error("{}: not a Shoal workspace (an SQLite database with application id {found:#x})", path.display())]
    NotAWorkspace {
        /// The path.
        path: PathBuf,
        /// Its application id.
        found: i32,
    },
    /// Written by a newer Shoal.
    #[error("{}: written by a newer Shoal (format version {found}; this version reads up to {supported})", path.display())]
    NewerFormat {
        /// The path.
        path: PathBuf,
        /// The file's format version.
        found: i32,
        /// The newest this build reads.
        supported: i32,
    },
    /// Written by an earlier Shoal in a format this version no longer reads.
    #[error("{}: written by an earlier Shoal (format version {found}; this version reads format {supported}). {advice}", path.display())]
    OlderFormat {
        /// The path.
        path: PathBuf,
        /// The file's format version.
        found: i32,
        /// The format this build reads.
        supported: i32,
        /// Why it cannot be converted, and what to do.
        advice: &'static str,
    },
    /// The device key file is missing, wrong or unusable.
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    /// The file is a Shoal workspace but its contents are inconsistent.
    #[error("{}: damaged workspace: {what}", path.display())]
    Damaged {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A workspace already exists where one was to be created.
    #[error("{}: a workspace already exists here", path.display())]
    AlreadyExists {
        /// The path.
        path: PathBuf,
    },
    /// The file has more than one hard link. SQLite keeps its write-ahead log and lock
    /// file beside the *name* it was opened by, so two names of one file would each get a
    /// log of their own and corrupt it; Shoal refuses to open such a file at all.
    #[error("{}: the workspace file has {links} hard links; SQLite keeps a separate write-ahead log per name, which would corrupt it. Remove the other names (`find / -samefile` finds them); to have two devices, join a second workspace instead of linking or copying the file", path.display())]
    HardLinked {
        /// The path.
        path: PathBuf,
        /// How many names the file has.
        links: u64,
    },
    /// The file system failed.
    #[error("{}: {what}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// SQLite failed.
    #[error("{}: {source}", path.display())]
    Sqlite {
        /// The path.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
}

impl OpenError {
    pub(crate) fn sqlite(path: &Path, source: rusqlite::Error) -> Self {
        if let rusqlite::Error::SqliteFailure(e, _) = &source
            && e.code == rusqlite::ErrorCode::NotADatabase
        {
            return OpenError::NotADatabase { path: path.to_owned() };
        }
        OpenError::Sqlite { path: path.to_owned(), source }
    }
}

const DDL: &str = "
-- Workspace id, the device's public key (device_public: its secret key is in the key file
-- beside the workspace file, never here), and bookkeeping such as the last folder sync.
CREATE TABLE shoal_meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;

-- One row per entry of every origin, keyed by (origin, index) packed into the rowid:
-- id = origin_no << 40 | index, where origin_no numbers origins within this file
-- (shoal_origins.no). An integer key keeps appends at the end of one B-tree and saves the
-- 16-byte origin id per row. payload is the canonical payload (FORMAT §3.1), or the 32-byte
-- entry hash when expunged = 1. seal is the 64-byte signature of the head ending at this
-- entry (the key is in shoal_origins), NULL for unsealed entries.
CREATE TABLE shoal_oplog (
    id       INTEGER PRIMARY KEY,
    hlc      INTEGER NOT NULL,
    expunged INTEGER NOT NULL DEFAULT 0,
    payload  BLOB    NOT NULL,
    seal     BLOB
);

-- Per-origin position: its number in this file, next index (the cursor), the chain hash
-- after next - 1, the origin's public key, how far materialization got, why the origin
-- is stalled if it is, and the replica's HLC as of the last transaction that stored entries
-- of this origin (the replica's clock is the greatest of these: kept in the row each write
-- rewrites anyway, so a commit dirties one bookkeeping page, not two).
CREATE TABLE shoal_origins (
    origin       BLOB PRIMARY KEY,
    no           INTEGER NOT NULL UNIQUE,
    next         INTEGER NOT NULL,
    chain        BLOB    NOT NULL,
    key          BLOB,
    materialized INTEGER NOT NULL,
    stalled      TEXT,
    stalled_at   INTEGER,
    clock        INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
";

/// Applies the connection settings every Shoal connection uses.
pub(crate) fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.pragma_update(None, "foreign_keys", false)?;
    conn.pragma_update(None, "temp_store", "memory")?;
    // 8 MiB of page cache per connection: enough for the hot B-tree pages, and a bound on
    // memory that does not grow with the log.
    conn.pragma_update(None, "cache_size", -8_000)?;
    // Table materialization uses one statement per table and cell signature.
    conn.set_prepared_statement_cache_capacity(512);
    Ok(())
}

/// Opens a connection to an existing workspace file and checks that it is one this build
/// can read.
pub(crate) fn open_existing(path: &Path, read_only: bool) -> Result<Connection, OpenError> {
    if !path.exists() {
        return Err(OpenError::Missing { path: path.to_owned() });
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).map_err(|source| OpenError::Io {
            path: path.to_owned(),
            what: "read the file's metadata",
            source,
        })?;
        if meta.nlink() > 1 {
            return Err(OpenError::HardLinked { path: path.to_owned(), links: meta.nlink() });
        }
    }
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags).map_err(|e| OpenError::sqlite(path, e))?;
    configure(&conn).map_err(|e| OpenError::sqlite(path, e))?;
    check_identity(path, &conn)?;
    Ok(conn)
}

fn check_identity(path: &Path, conn: &Connection) -> Result<(), OpenError> {
    // Reading the header is what tells SQLite-or-not; a non-database fails here.
    let app: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(|e| OpenError::sqlite(path, e))?;
    if app != APPLICATION_ID {
        return Err(OpenError::NotAWorkspace { path: path.to_owned(), found: app });
    }
    let version: i32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| OpenError::sqlite(path, e))?;
    if version > FORMAT_VERSION {
        return Err(OpenError::NewerFormat {
            path: path.to_owned(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let advice = match version {
        1 => Some(
            "Its entries are hashed and signed under entry format 1, which cannot be \
             converted: keep the old file, open it with the Shoal that wrote it to sync \
             everything out, then create or join the workspace anew with this version",
        ),
        2 => Some(
            "It keeps the device's secret key inside the workspace file, where SQL could read \
             it; this version keeps it in a key file beside it. Sync everything out with the \
             Shoal that wrote it, then create or join the workspace anew with this version",
        ),
        _ => None,
    };
    if let Some(advice) = advice {
        return Err(OpenError::OlderFormat {
            path: path.to_owned(),
            found: version,
            supported: FORMAT_VERSION,
            advice,
        });
    }
    if version < 1 {
        return Err(OpenError::Damaged {
            path: path.to_owned(),
            what: format!("format version {version} is not a released format"),
        });
    }
    Ok(())
}

/// Creates a new workspace file with the given metadata. Fails if the path holds anything.
pub(crate) fn create(path: &Path, meta: &[(&str, Vec<u8>)]) -> Result<Connection, OpenError> {
    // Created here, empty (an empty file is an empty SQLite database), so that it is
    // owner-only from its first byte: SQLite gives the WAL and shared-memory files the
    // mode of the database file. `create_new` also refuses a path that holds anything.
    match crate::keyfile::create_private(path) {
        Ok(file) => drop(file),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(OpenError::AlreadyExists { path: path.to_owned() });
        }
        Err(e) => {
            return Err(OpenError::Io {
                path: path.to_owned(),
                what: "create the file",
                source: e,
            });
        }
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn =
        Connection::open_with_flags(path, flags).map_err(|e| OpenError::sqlite(path, e))?;
    let init = |conn: &mut Connection| -> rusqlite::Result<()> {
        configure(conn)?;
        conn.pragma_update(None, "journal_mode", "wal")?;
        let tx = conn.transaction()?;
        tx.execute_batch(DDL)?;
        for (k, v) in meta {
            tx.execute("INSERT INTO shoal_meta (key, value) VALUES (?1, ?2)", (k, v))?;
        }
        // The identity goes last: a file interrupted before this commit is not a workspace.
        tx.pragma_update(None, "application_id", APPLICATION_ID)?;
        tx.pragma_update(None, "user_version", FORMAT_VERSION)?;
        tx.commit()
    };
    init(&mut conn).map_err(|e| OpenError::sqlite(path, e))?;
    Ok(conn)
}

/// Reads a metadata value.
pub(crate) fn meta(conn: &Connection, key: &str) -> rusqlite::Result<Option<Vec<u8>>> {
    conn.query_row("SELECT value FROM shoal_meta WHERE key = ?1", [key], |r| r.get(0)).optional()
}
