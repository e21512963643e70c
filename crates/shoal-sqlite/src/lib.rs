//! # shoal-sqlite
//!
//! The device replica: one SQLite file holding the oplog (every entry of every origin,
//! keyed by origin and index — it is also the history), per-origin cursors and chain
//! positions, the persisted hybrid logical clock, the device's public key, and the
//! materialized state that domains keep through the [`Materializer`] hook. The device's
//! secret key is in a key file beside it ([`key_path`], owner-only), and app SQL runs on
//! connections whose SQLite authorizer refuses the hidden tables
//! ([`SqliteReplica::with_app_reader`]).
//!
//! [`SqliteReplica`] implements the core sync traits ([`shoal_core::Replica`]), so the core
//! drivers move entries between it and any other replica (another SQLite file, a folder, a
//! relay connection).
//!
//! ```text
//!  append_local ──► BEGIN IMMEDIATE ─ stamp ─ oplog insert ─ materialize ─ cursor+clock ─ COMMIT (FULL)
//!  read_since(own) ─► the page, its tip sealed then (commits sign nothing)
//!  apply_batch  ──► Ingest::verify ─ BEGIN IMMEDIATE ─ oplog insert ─ materialize ─ cursor ─ COMMIT (NORMAL)
//!  read_since   ──► pooled read-only connection (WAL: never blocks the writer)
//! ```
//!
//! What this crate never does: interpret op bodies (that is the materializer's job), talk
//! to the network, modify a file that is not a Shoal workspace, or put the secret key
//! where SQL can read it.
//!
//! ```
//! use shoal_core::{DeviceKey, Domain, Op, WorkspaceId};
//! use shoal_sqlite::{LocalTx, Options, SqliteReplica};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let key = DeviceKey::generate()?;
//! let ws = WorkspaceId::derive(&key.public_key(), &[0; 16]);
//! let replica = SqliteReplica::create(dir.path().join("a.shoal"), ws, Some(key), Options::default())?;
//! let op = Op { domain: Domain::TABLES, kind: 0, body: vec![1, 2, 3] };
//! let commits = replica.append_local(vec![LocalTx { ops: vec![op], author: None }])?;
//! assert_eq!(commits[0].index, 0);
//! # Ok(()) }
//! ```

mod checkpoint;
mod crypt;
mod guard;
mod keyfile;
mod logstore;
mod materialize;
mod members;
mod replica;
mod schema;
mod succession;
mod tables;

pub use guard::check_app_sql;
pub use keyfile::{KeyFileError, key_path};
pub use logstore::{RELAY_APPLICATION_ID, RELAY_FORMAT_VERSION, SqliteLogStore};
pub use materialize::{DomainRouter, MaterializeError, Materializer};
pub use replica::{LocalCommit, LocalTx, Options, OriginStatus, PAGE_ENTRIES, SqliteReplica};
pub use schema::{APPLICATION_ID, FORMAT_VERSION, OpenError};
pub use succession::{Succession, Superseded};
pub use tables::{
    CHANGE_BUFFER, SHARD_COLUMNS, TableChange, TablesHandle, TablesMaterializer, from_sql,
    live_row, quote_ident, to_sql,
};
