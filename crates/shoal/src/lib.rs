//! # shoal
//!
//! Conflict-free sync of app data between devices. An app opens a [`Workspace`] (one
//! SQLite file), declares tables, writes rows in transactions, reads with plain read-only
//! SQL, watches changes, and syncs with other devices over a shared folder or a relay.
//! Writes never wait for the network; every device converges to the same state.
//!
//! ```
//! use shoal::{ColumnType, TableSpec, Value, Workspace, WorkspaceOptions};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let ws = Workspace::create(dir.path().join("notes.shoal"), WorkspaceOptions::default())?;
//! ws.declare(&TableSpec::new("todo").key("id", ColumnType::Text).column("title", ColumnType::Text).counter("votes"))?;
//!
//! let mut tx = ws.transaction()?;
//! tx.put("todo", &[("id", Value::text("t1")?), ("title", Value::text("buy milk")?)])?;
//! tx.increment("todo", &[Value::text("t1")?], "votes", 2)?;
//! tx.commit()?; // durable on return
//!
//! let rows = ws.query("SELECT title, votes FROM todo WHERE id = ?1", &[Value::text("t1")?])?;
//! assert_eq!(rows.rows, vec![vec![Value::text("buy milk")?, Value::Integer(2)]]);
//! # Ok(()) }
//! ```
//!
//! This crate is a facade: merge rules live in `shoal-tables`, storage in `shoal-sqlite`,
//! logs, signatures and sync drivers in `shoal-core`, folder sync in `shoal-filelog`.
//! It never holds merge logic, formats or transport code of its own.

mod clock;
mod error;
mod folder;
mod fork;
mod members;
mod rebuild;
mod relay_sync;
mod workspace;

pub use clock::ClockRecovery;
pub use error::{Error, Result};
pub use folder::{FolderSync, LastSync, SyncLock};
pub use fork::ForkRecovery;
pub use members::{Member, Members};
pub use rebuild::{StateCheck, StateDifference};
pub use relay_sync::{RelayOptions, RelaySync};
pub use shoal_core as core;
pub use shoal_core::Direction;
pub use shoal_filelog as filelog;
pub use shoal_relay as relay;
pub use shoal_sqlite as sqlite;
pub use shoal_tables as tables;
pub use shoal_tables::{ColumnType, MergeKind, Value};
pub use workspace::{
    Commit, QueryInterrupt, QueryResult, Schema, Status, TableSpec, TableWatch, Transaction,
    WatchEvent, Workspace, WorkspaceOptions,
};

/// The README's Rust example, compiled by `cargo test --doc` so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
