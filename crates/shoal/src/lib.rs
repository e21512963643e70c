//! # shoal
//!
//! The facade of the Shoal sync engine: re-exports the crates an app embeds. The
//! `Workspace` API (tables, transactions, queries, subscriptions, sync) is built here on
//! top of [`shoal_sqlite::SqliteReplica`] and the drivers of [`shoal_core`].
//!
//! What this crate never does: hold merge logic, storage formats or transport code of its
//! own — those live in the crates it re-exports.

pub use shoal_core as core;
pub use shoal_sqlite as sqlite;
