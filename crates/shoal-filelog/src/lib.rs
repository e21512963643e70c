//! shoal-filelog (work in progress)
mod config;
mod fsutil;
pub mod layout;
mod mirror;
mod puller;
mod replica;
pub mod segment;
mod sink;
mod watch;

pub use config::Config;
pub use mirror::{Mirror, MirrorStatus, OriginStatus, StalledOrigin, SyncReport};
pub use puller::{BadFile, FolderPuller};
pub use replica::FolderReplica;
pub use sink::FolderSink;
