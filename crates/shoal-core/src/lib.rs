//! # shoal-core
//!
//! The vocabulary every other Shoal crate speaks: ids, the hybrid logical clock, the entry
//! envelope with its canonical bytes and hash chain, signed heads, version vectors
//! ([`PeerCursors`]), the sync traits, and the convergence drivers that move entries
//! between any two replicas.
//!
//! ```text
//!   device A                                  device B
//!   local write ──► Replica ──read_since──►  pull driver ──apply──► Replica
//!                     ▲    ◄──watch_cursors──┘                        │
//!                     └───────────── the same drivers, reversed ──────┘
//! ```
//!
//! - An **entry** is one local transaction of one device: `{origin, index, hlc, author,
//!   ops}` ([`Entry`], [`Payload`]). Ops are domain-tagged and opaque here.
//! - Each origin's log is a **hash chain** seeded by (workspace, origin); a **signed head**
//!   ([`SignedHead`], attached to entries as a [`Seal`]) authenticates everything before it.
//!   [`Ingest`] is the one pipeline every replica runs before applying received entries;
//!   only it builds the [`VerifiedRun`] that a replica applies.
//! - A **replica** ([`Replica`]) can read ([`LogSource`]) and apply ([`LogProcessor`])
//!   entries and report its cursors ([`HasCursors`]). Drivers ([`pull`],
//!   [`pull_continuous`], [`publish`]) need nothing else.
//!
//! What this crate never does: touch a database, a file, a socket or a domain's op
//! encoding. Byte formats are specified in `docs/FORMAT.md`.
//!
//! # Example: two replicas converge
//!
//! ```
//! use shoal_core::*;
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), SyncError> {
//! let alice = DeviceKey::from_secret_bytes(&[1; 32]);
//! let bob = DeviceKey::from_secret_bytes(&[2; 32]);
//! let ws = WorkspaceId::derive(&alice.public_key(), &[0; 16]);
//! let a = MemoryReplica::new(ws, Some(alice));
//! let b = MemoryReplica::new(ws, Some(bob));
//! let op = |n: u8| Op { domain: Domain::TABLES, kind: 0, body: vec![n] };
//! a.append_local(vec![Payload { hlc: Hlc::from_millis(1), author: None, ops: vec![op(1)] }])?;
//! b.append_local(vec![Payload { hlc: Hlc::from_millis(2), author: None, ops: vec![op(2)] }])?;
//!
//! pull(&a, &b).await?; // b takes what a has
//! pull(&b, &a).await?; // and the other way
//! assert_eq!(a.cursors().await?, b.cursors().await?);
//! assert_eq!(a.contents(), b.contents());
//! # Ok(()) }
//! ```

pub mod codec;
pub mod control;
mod cursors;
mod drivers;
pub mod encryption;
mod entry;
mod error;
mod hlc;
mod ids;
mod ingest;
pub mod invite;
pub mod membership;
mod memory;
pub mod store;
mod sync;
mod sync_loop;

pub use cursors::{CursorBroadcast, CursorStream, CursorsEvent, PeerCursors};
pub use drivers::{PullReport, check_own_log, own_log_continues, publish, pull, pull_continuous};
pub use entry::{
    ChainHash, ChainPosition, Domain, EncryptedPayload, Entry, EntryBody, EntryClass, EntryHash,
    MAX_CIPHERTEXT_BYTES, MAX_OP_BYTES, MAX_OPS_PER_ENTRY, MAX_SEAL_GAP, MixedClasses, Op, OwnLog,
    PAGE_BYTES, Payload, Seal, SignedHead,
};
pub use error::{RejectReason, SyncError};
pub use hlc::{
    ClockSkew, Hlc, HlcClock, MAX_FORWARD_SKEW_MS, ManualClock, SystemClock, WallClock, check_skew,
    clock_ahead, human_duration,
};
pub use ids::{
    DeviceKey, ExchangeKey, IdParseError, InvalidKey, PeerId, PublicKey, RandomnessUnavailable,
    UserId, WorkspaceId, random_bytes,
};
pub use ingest::{Ingest, Membership, OpenMembership, VerifiedRun, chain_through};
pub use memory::MemoryReplica;
pub use sync::{
    Applied, BatchApplied, FileLogPuller, FileLogReplica, FileLogSink, HasCursors, LogPosition,
    LogProcessor, LogSource, Replica, run_blocking,
};
pub use sync_loop::{Direction, LoopTiming, SyncTarget, jittered, run_sync_loop};
