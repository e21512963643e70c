//! The hook through which domains keep materialized state in the replica's file.
//!
//! Owns: the [`Materializer`] trait and [`MaterializeError`].
//!
//! Invariants: the replica calls [`Materializer::apply`] inside the very transaction that
//! appends the entry to the oplog and advances its cursor, so materialized state and the log
//! never disagree after a commit or a crash. An entry is materialized whole or not at all:
//! `apply` must check that it understands every op before changing anything.
//!
//! Never: a materializer never writes the oplog, cursors or clock tables.

use rusqlite::Connection;
use shoal_core::{Payload, PeerId};

/// Why an entry could not be materialized.
#[derive(Debug, thiserror::Error)]
pub enum MaterializeError {
    /// The entry holds an op this version does not understand. The entry stays in the oplog
    /// (and is forwarded); materializing its origin stalls here until an upgrade.
    #[error("needs a newer Shoal: {0}")]
    NeedsUpgrade(String),
    /// The entry holds an op that can never be applied (it breaks the domain's format). The
    /// entry stays in the oplog; materializing its origin stalls here.
    #[error("malformed op: {0}")]
    Malformed(String),
    /// SQLite failed.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

/// Applies entries to materialized state (tables, documents) inside the replica's
/// transactions.
pub trait Materializer: Send + 'static {
    /// Creates or migrates this materializer's tables. Called once per open, in a
    /// transaction.
    fn init(&mut self, conn: &Connection) -> Result<(), rusqlite::Error>;

    /// Applies the payload of entry `(origin, index)`; all or nothing (see the module doc).
    fn apply(
        &mut self,
        conn: &Connection,
        origin: PeerId,
        index: u64,
        payload: &Payload,
    ) -> Result<(), MaterializeError>;

    /// The transaction that called `apply` committed; publish what changed.
    fn committed(&mut self) {}

    /// The transaction that called `apply` rolled back; forget what it changed.
    fn rolled_back(&mut self) {}
}

/// A materializer that keeps nothing: the replica is a pure log (for relays and tests).
#[derive(Debug, Default, Clone, Copy)]
pub struct LogOnly;

impl Materializer for LogOnly {
    fn init(&mut self, _conn: &Connection) -> Result<(), rusqlite::Error> {
        Ok(())
    }

    fn apply(
        &mut self,
        _conn: &Connection,
        _origin: PeerId,
        _index: u64,
        _payload: &Payload,
    ) -> Result<(), MaterializeError> {
        Ok(())
    }
}
