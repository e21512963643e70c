//! Errors of the table domain.
//!
//! Owns: [`TableOpError`] (why an op could not be decoded or applied), [`ValidationError`]
//! (why a value, key or op built by the caller is not something Shoal will write) and
//! [`NameError`] (why a name is not acceptable for a *local* declaration).
//!
//! Whose fault it is:
//! - [`TableOpError::UnknownKind`]: the op was written by a newer version. The replica keeps
//!   the entry and stalls that origin with a "needs upgrade" status.
//! - [`TableOpError::Malformed`]: the peer's bytes are wrong (a bug or an attack on the
//!   writer's side). The offset says where.
//! - [`TableOpError::Invalid`] and [`ValidationError`]: a caller built an op that breaks a
//!   rule (for example a counter column that is not INTEGER). Never caused by bytes: every
//!   rule it checks is also checked while decoding, where it becomes `Malformed`.
//! - [`NameError`]: a local caller chose a name Shoal does not accept for new declarations.
//!
//! Never: panics, or drops the input that caused it.

use shoal_core::codec::DecodeError;

use crate::ids::ColumnId;
use crate::value::ColumnType;

/// Why a table op could not be decoded from an [`Op`](shoal_core::Op), or was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TableOpError {
    /// The op's kind is not defined by this version: it was written by a newer one. The
    /// replica must keep the entry and stall its origin ("needs upgrade"), not drop it.
    #[error("table op kind {kind} is unknown to this version of Shoal (needs upgrade)")]
    UnknownKind {
        /// The op kind found.
        kind: u32,
    },
    /// The op belongs to another domain; it is not a table op at all.
    #[error("op of domain {domain} is not a table op (domain 1)")]
    WrongDomain {
        /// The domain found.
        domain: u32,
    },
    /// The op body does not follow the byte format of its kind (`docs/TABLES.md`).
    #[error("malformed table op body: {0}")]
    Malformed(DecodeError),
    /// The op breaks a rule of the table domain. Only ops built in memory can get this;
    /// decoded ops report the same problems as [`TableOpError::Malformed`].
    #[error("invalid table op: {0}")]
    Invalid(ValidationError),
}

impl TableOpError {
    /// True when the op comes from a newer version of Shoal: the replica should stall the
    /// origin with a "needs upgrade" status rather than report corruption.
    pub fn needs_upgrade(&self) -> bool {
        matches!(self, TableOpError::UnknownKind { .. })
    }
}

impl From<DecodeError> for TableOpError {
    fn from(e: DecodeError) -> Self {
        TableOpError::Malformed(e)
    }
}

impl From<ValidationError> for TableOpError {
    fn from(e: ValidationError) -> Self {
        TableOpError::Invalid(e)
    }
}

/// A value, row key or op that Shoal refuses to write, because every replica would refuse
/// to read it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// TEXT values may not contain the NUL character (SQLite and many apps truncate at it).
    #[error("text contains a NUL character at byte {position}")]
    TextContainsNul {
        /// Byte offset of the first NUL.
        position: usize,
    },
    /// A TEXT or BLOB value is larger than [`MAX_VALUE_BYTES`](crate::MAX_VALUE_BYTES).
    #[error("{what} of {len} bytes is larger than the limit of {limit} bytes")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size in bytes (or count).
        len: u64,
        /// The largest accepted size.
        limit: u64,
    },
    /// A row key must hold at least one value.
    #[error("a row key needs at least one value")]
    EmptyKey,
    /// A stored name (table or column) broke the rules every replica checks: non-empty,
    /// no NUL, at most [`MAX_STORED_NAME_BYTES`](crate::MAX_STORED_NAME_BYTES) bytes.
    #[error("{what} name {name:?} is not acceptable: {problem}")]
    BadStoredName {
        /// "table" or "column".
        what: &'static str,
        /// The name (possibly shortened for the message).
        name: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A table was created without a primary key.
    #[error("a table needs at least one primary-key column")]
    EmptyPrimaryKey,
    /// The same column id appears twice in a primary key.
    #[error("column {column} appears twice in the primary key")]
    DuplicatePrimaryKeyColumn {
        /// The repeated column.
        column: ColumnId,
    },
    /// Two primary-key columns of one `CreateTable` have the same name.
    #[error("two primary-key columns are named {name:?}")]
    DuplicatePrimaryKeyName {
        /// The repeated name.
        name: String,
    },
    /// Counter columns hold sums of integers, so they must be declared INTEGER.
    #[error("counter column {column} must be INTEGER, not {ty}")]
    CounterNotInteger {
        /// The column.
        column: ColumnId,
        /// The type it was declared with.
        ty: ColumnType,
    },
    /// A local declaration would give a table more columns than
    /// [`MAX_COLUMNS_PER_TABLE`](crate::MAX_COLUMNS_PER_TABLE).
    #[error(
        "table {table:?} would have {columns} columns; at most {limit} are allowed (key columns \
         included): drop columns or use another table"
    )]
    TooManyColumns {
        /// The table.
        table: String,
        /// How many columns it would have.
        columns: usize,
        /// The budget.
        limit: usize,
    },
    /// The same column is written twice by one `Put`.
    #[error("column {column} is written twice in one put")]
    DuplicateCell {
        /// The repeated column.
        column: ColumnId,
    },
}

/// Why a name is not acceptable for a new local declaration (see
/// [`validate_name`](crate::validate_name)). Names received from other devices are never
/// checked against these rules: they are stored as they come.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty.
    #[error("a name cannot be empty")]
    Empty,
    /// The name is longer than 64 characters.
    #[error("name {name:?} has {len} characters; at most 64 are allowed")]
    TooLong {
        /// The name.
        name: String,
        /// Its length in characters.
        len: usize,
    },
    /// The first character is not an ASCII letter or `_`.
    #[error("name {name:?} must start with an ASCII letter or '_', not {found:?}")]
    BadStart {
        /// The name.
        name: String,
        /// The first character.
        found: char,
    },
    /// A character other than an ASCII letter, digit or `_`.
    #[error(
        "name {name:?} may contain only ASCII letters, digits and '_'; found {found:?} at \
         character {position}"
    )]
    BadCharacter {
        /// The name.
        name: String,
        /// The offending character.
        found: char,
        /// Its index in characters.
        position: usize,
    },
    /// Names starting with `shoal_` or `sqlite_` (in any case) are reserved for Shoal's
    /// hidden tables and SQLite's internal ones.
    #[error(
        "name {name:?} is reserved: names starting with \"shoal_\" or \"sqlite_\" (in any \
         case) belong to Shoal and SQLite"
    )]
    Reserved {
        /// The name.
        name: String,
    },
}
