//! # shoal-filelog
//!
//! Sync over a shared folder — Dropbox, iCloud Drive, Google Drive, Syncthing, a network
//! share — with no server. Every device writes its own log into its own directory as
//! immutable, signed, checksummed segment files, and reads everyone else's.
//!
//! ```text
//!  <folder>/<workspace hex>/<origin hex>/<first:020>-<last:020>.seg
//!
//!  device replica ──publish──► FolderSink ──atomic write──► own directory
//!   (any Replica)  ◄──pull──── FolderPuller ◄──verify─────── every origin's directory
//!         ▲                         ▲
//!         └──────── Mirror ─────────┘  woken by local commits, file events, polling
//! ```
//!
//! - [`FolderSink`] (core trait [`shoal_core::FileLogSink`]) writes the device's own log
//!   only: it is made from the device key, so its origin cannot be chosen. Publication is
//!   atomic and durable (temporary name, fsync, rename, directory fsync); small segments
//!   are compacted so a busy device keeps a handful of files.
//! - [`FolderPuller`] (core trait [`shoal_core::FileLogPuller`]) lists origins and reads
//!   pages of any origin, fully verifying every segment it reads. Junk, conflict copies
//!   and temporary files are ignored; damaged or incomplete files are retried with
//!   backoff and reported; one bad file never stops other origins.
//! - [`FolderReplica`] (core traits [`shoal_core::Replica`] and
//!   [`shoal_core::FileLogReplica`]) is the folder as an async replica: reads every
//!   origin, writes only its own, and watches the folder (file-system events, polling
//!   fallback, debouncing).
//! - [`Mirror`] pairs a folder with a local device replica (any
//!   `Arc<dyn Replica<Entry>>`) and runs the core drivers `publish` and `pull`, once
//!   ([`Mirror::sync_once`]) or continuously ([`Mirror::run`]), with a [`MirrorStatus`].
//! - [`CarrySink`] writes, inside the device's own directory only
//!   (`<own>/carried-<origin>-<first>-<last>.seg`), copies of other origins' logs the
//!   device holds from elsewhere (a relay), unchanged and sealed by their origins; readers
//!   take an origin's entries from its own directory first and from carried copies beyond
//!   it. The mirror carries after publishing ([`Config::carry`]), so a device syncing with
//!   a folder and a relay bridges them, each entry once.
//! - [`segment`] is the byte format (`docs/FORMAT.md` §4); [`layout`] the names.
//!
//! What this crate never does: write into another device's directory, create the shared
//! folder itself (a missing folder is reported as unavailable, never replaced by an empty
//! one), trust a byte it has not verified, or load a whole log into memory. Behaviour and
//! policies are described for users in `docs/FILELOG.md`.
//!
//! # Example: two devices sync through a folder
//!
//! ```
//! use std::sync::Arc;
//! use shoal_core::*;
//! use shoal_filelog::{Config, Mirror};
//! # #[tokio::main] async fn main() -> Result<(), SyncError> {
//! let folder = tempfile::tempdir().expect("a temporary directory"); // the shared folder
//! let (alice, bob) = (DeviceKey::from_secret_bytes(&[1; 32]), DeviceKey::from_secret_bytes(&[2; 32]));
//! let ws = WorkspaceId::derive(&alice.public_key(), &[0; 16]);
//! let a = Arc::new(MemoryReplica::new(ws, Some(alice.clone())));
//! let b = Arc::new(MemoryReplica::new(ws, Some(bob.clone())));
//! let mirror_a = Mirror::open(folder.path(), ws, alice, a.clone(), Config::default());
//! let mirror_b = Mirror::open(folder.path(), ws, bob, b.clone(), Config::default());
//!
//! let op = Op { domain: Domain::TABLES, kind: 0, body: b"hi".to_vec() };
//! a.append_local(vec![Payload { hlc: Hlc::from_millis(1), author: None, ops: vec![op] }])?;
//! mirror_a.sync_once().await?; // publishes a's entry as a segment
//! mirror_b.sync_once().await?; // pulls it into b
//! assert_eq!(a.contents(), b.contents());
//! assert!(mirror_b.status().in_sync());
//! // Continuously instead: `mirror_b.run(shutdown_signal).await`.
//! # Ok(()) }
//! ```

mod carry;
mod config;
pub mod faults;
pub mod fork;
mod fsutil;
pub mod layout;
mod mirror;
mod puller;
mod replica;
pub mod segment;
mod sink;
mod watch;

pub use carry::{Carried, CarrySink};
pub use config::Config;
pub use mirror::{ForkedOrigin, Mirror, MirrorStatus, OriginStatus, StalledOrigin, SyncReport};
pub use puller::{BadFile, FolderPuller};
pub use replica::{CarryReport, FolderReplica};
pub use sink::FolderSink;
