//! # shoal-relay
//!
//! Real-time sync through a relay (DESIGN §9, `docs/PROTOCOL.md`).
//!
//! Owns: the protocol's frames ([`frame`]), authentication and access ([`auth`]), the
//! relay's side of a connection as a state machine free of I/O ([`session`]), the server
//! that drives it over WebSockets for any [`shoal_core::store::LogStore`] ([`server`]),
//! and the client: a connection to a relay as a remote [`shoal_core::Replica`]
//! ([`client`]), so the core drivers sync with a relay exactly as with a folder.
//!
//! Invariants: a relay takes entries only through the one ingest pipeline (its replica is a
//! [`shoal_core::store::StoredReplica`]); it serves only devices its own fold of the
//! workspace's control log shows as members; every bound (frame size, pending requests,
//! rates, connections) is enforced per connection before any work is done for it.
//!
//! Never: holds data keys, decides membership itself, or lets one connection's failure
//! touch another's.

pub mod auth;
pub mod client;
pub mod frame;
#[cfg(feature = "server")]
pub mod server;
pub mod session;
pub mod tls;
