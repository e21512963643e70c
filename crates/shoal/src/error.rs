//! [`Error`]: what the `Workspace` API reports, with the table, column, file or statement
//! involved.

use std::path::PathBuf;

use shoal_sqlite::OpenError;
use shoal_tables::{ColumnType, NameError, ValidationError};

/// An error from the [`Workspace`](crate::Workspace) API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The workspace file could not be opened or created.
    #[error(transparent)]
    Open(#[from] OpenError),

    /// A clock recovery was asked for, but this device's clock state is not ahead of its
    /// wall clock (past the bound receivers use): there is nothing to recover, or the wall
    /// clock is still wrong.
    #[error("{}: this device's clock is not ahead of its wall clock by more than {} s: nothing to recover (if the machine's clock is still wrong, fix it first)", path.display(), shoal_core::MAX_FORWARD_SKEW_MS / 1000)]
    ClockNotAhead {
        /// The workspace file.
        path: std::path::PathBuf,
    },

    /// [`crate::Workspace::recover_fork`] on a device whose own log is not forked.
    #[error("{}: this device's own log is not forked: nothing to recover", path.display())]
    NotForked {
        /// The workspace file.
        path: std::path::PathBuf,
    },

    /// Reading, applying or writing the log failed.
    #[error(transparent)]
    Sync(#[from] shoal_core::SyncError),

    /// A wait for a replica (a relay confirming it stored every local entry) ran out of
    /// time; the message says what was still missing.
    #[error("{0}")]
    Timeout(String),

    /// Another sync of this workspace file is running (it holds the lock).
    #[error(
        "{}: another sync of this workspace is running (it holds {}); it syncs your changes too",
        path.display(),
        lock.display()
    )]
    SyncBusy {
        /// The workspace file.
        path: std::path::PathBuf,
        /// The lock file.
        lock: std::path::PathBuf,
    },

    /// This device's own log diverged from the one it published (a copied file, or a restored
    /// backup that had written): it writes nothing more until it re-joins under a new key
    /// ([`crate::Workspace::recover_fork`]).
    #[error("{0}")]
    Forked(String),

    /// A membership operation this device may not make (not an admin, not a member, an
    /// unknown device), or an invite code for another workspace.
    #[error("{0}")]
    Membership(String),

    /// The workspace is end-to-end encrypted and this device holds no key yet: it joined
    /// without an invite and no admin admitted it, or its invite's keys have not arrived.
    #[error(
        "this device holds no key of the encrypted workspace yet, so it cannot write: sync \
         (an invite's keys arrive with the workspace), or ask an admin to admit it"
    )]
    NoKey,

    /// No visible table has this name.
    #[error("no table named {name:?} (see `shoal table list`)")]
    UnknownTable {
        /// The name asked for.
        name: String,
    },

    /// The table has no visible column with this name.
    #[error("table {table:?} has no column named {column:?}")]
    UnknownColumn {
        /// The table.
        table: String,
        /// The column asked for.
        column: String,
    },

    /// A value does not have the column's declared type.
    #[error("column {table}.{column} is {expected}; got {got}")]
    WrongType {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// Its declared type.
        expected: ColumnType,
        /// The type of the value given.
        got: &'static str,
    },

    /// A row was written without every primary-key column.
    #[error("table {table:?} needs a value for its key column {column:?}")]
    MissingKey {
        /// The table.
        table: String,
        /// The key column that was not given.
        column: String,
    },

    /// A key had the wrong number of values.
    #[error("table {table:?} has {expected} key columns; got {got} key values")]
    KeyArity {
        /// The table.
        table: String,
        /// Its number of key columns.
        expected: usize,
        /// How many values were given.
        got: usize,
    },

    /// A counter column can only be incremented, and only a counter can be incremented.
    #[error("column {table}.{column} is a {kind} column: {hint}")]
    WrongMerge {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// Its merge kind.
        kind: &'static str,
        /// What to do instead.
        hint: &'static str,
    },

    /// A declaration contradicts the table as it exists.
    #[error("table {table:?} already exists with a different definition: {what}")]
    SchemaMismatch {
        /// The table.
        table: String,
        /// What differs.
        what: String,
    },

    /// A table declaration that is not valid in itself (a name given twice, too many
    /// columns or key columns).
    #[error("cannot declare table {table:?}: {reason}")]
    InvalidTable {
        /// The table.
        table: String,
        /// Why.
        reason: String,
    },

    /// A schema change that the table as it exists does not allow (a name already taken,
    /// a primary-key column to drop).
    #[error("cannot change table {table:?}: {reason}")]
    SchemaChange {
        /// The table.
        table: String,
        /// Why.
        reason: String,
    },

    /// A table or column name is not allowed.
    #[error("invalid name: {0}")]
    InvalidName(#[from] NameError),

    /// A value or key that no replica would accept.
    #[error("invalid value: {0}")]
    InvalidValue(#[from] ValidationError),

    /// SQL given to `query` writes; it must only read.
    #[error("SQL is read-only in Shoal (write with put, increment and delete): {sql:?}")]
    NotReadOnly {
        /// The statement.
        sql: String,
    },

    /// SQL given to `query` names one of Shoal's hidden tables or columns (a `shoal_*`
    /// name; no table or column an app can see has one).
    #[error(
        "SQL may not name Shoal's hidden tables or columns ({name:?} starts with the reserved prefix shoal_); query the tables by their own names: {sql:?}"
    )]
    HiddenName {
        /// The statement.
        sql: String,
        /// The reserved name it uses.
        name: String,
    },

    /// SQLite refused a query.
    #[error("SQL error in {sql:?}: {source}")]
    Sql {
        /// The statement.
        sql: String,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },

    /// A query was stopped by its [`QueryInterrupt`](crate::QueryInterrupt).
    #[error("the query was interrupted")]
    Interrupted,

    /// A file or folder given by the caller is unusable.
    #[error("{}: {reason}", path.display())]
    Path {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
