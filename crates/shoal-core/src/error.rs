//! [`SyncError`]: the one error type for reading, applying and writing logs.
//!
//! Owns: the classification of failures by whose fault they are — the input (a malformed
//! file or message), the origin (a rejected or too-new entry), the caller (misuse), the
//! storage or transport (backend, unavailable), or Shoal itself (a bug) — each with the
//! origin, index, file or peer involved.
//!
//! Never: carries a backend's concrete error type in its signature: backends erase theirs
//! into [`SyncError::Backend`] so the sync traits stay object-safe.

use std::fmt;

use crate::codec::DecodeError;
use crate::hlc::ClockSkew;
use crate::ids::PeerId;

/// An error from reading, applying or writing logs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// Storage or transport failed (I/O, database). `context` names the file, database or
    /// peer.
    #[error("{context}: {source}")]
    Backend {
        /// What was being done, and where.
        context: String,
        /// The backend's own error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// Shoal broke one of its own invariants. Please report it.
    #[error("internal error (a bug in Shoal, please report it): {0}")]
    Bug(String),

    /// An entry of `origin` at `index` carries a timestamp too far in the future; that origin
    /// stalls there until the local clock catches up, and the others keep syncing.
    #[error("entry {origin}#{index} is stalled: {skew}")]
    ClockSkew {
        /// The origin that stalls.
        origin: PeerId,
        /// The refused entry.
        index: u64,
        /// By how much.
        skew: ClockSkew,
    },

    /// An entry was offered past the receiver's cursor.
    #[error("gap in the log of {origin}: expected index {expected}, got {got}")]
    Gap {
        /// The origin.
        origin: PeerId,
        /// The receiver's cursor.
        expected: u64,
        /// The offered index.
        got: u64,
    },

    /// Bytes from a file or a peer are not a valid Shoal structure. `source_name` names the
    /// file path or peer.
    #[error("{source_name}: malformed {what}: {problem}")]
    Malformed {
        /// The file or peer the bytes came from.
        source_name: String,
        /// What was being decoded.
        what: &'static str,
        /// What was wrong, and at which byte.
        problem: DecodeError,
    },

    /// The caller used the API wrongly. Never caused by untrusted input.
    #[error("misuse: {0}")]
    Misuse(String),

    /// An entry uses an op this version does not understand. It is stored and forwarded;
    /// applying that origin stalls at `index` until Shoal is upgraded.
    #[error("entry {origin}#{index} needs a newer Shoal: {what}")]
    NeedsUpgrade {
        /// The origin that stalls.
        origin: PeerId,
        /// The entry.
        index: u64,
        /// Which op was not understood.
        what: String,
    },

    /// An entry failed authentication: tampered, truncated, transplanted or forged.
    #[error("entry {origin}#{index} rejected: {reason}")]
    Rejected {
        /// The origin the entry claims.
        origin: PeerId,
        /// Its index.
        index: u64,
        /// Why.
        reason: RejectReason,
    },

    /// This device's own log as another replica holds it (a folder, a relay) disagrees with
    /// the device's own file: the file was copied to another machine, or restored from a
    /// backup that had written since. Nothing more is written or published for this origin.
    #[error(
        "the log of this device ({origin}) disagrees with {source_name} at or before entry {index}: \
         this device's file was copied from another device or restored from a backup that had \
         already written; it will not write or publish until it re-joins under a new key \
         (`shoal recover-fork`; `Workspace::recover_fork`)"
    )]
    Forked {
        /// This device's origin.
        origin: PeerId,
        /// The first index at which the two may differ.
        index: u64,
        /// Where the other version is (file or peer).
        source_name: String,
    },

    /// A remote replica (a relay) would not take entry `index` of `origin`: it stored what
    /// came before, and that origin stalls there for it; the others keep syncing.
    #[error("{by} would not take entry {origin}#{index}: {reason}")]
    Refused {
        /// The remote replica (a relay's address).
        by: String,
        /// The origin that stalls.
        origin: PeerId,
        /// The entry it would not take.
        index: u64,
        /// Why, in the remote's words.
        reason: String,
    },

    /// A source or destination is not reachable now (folder missing, peer disconnected);
    /// retry later.
    #[error("{what} is unavailable: {reason}")]
    Unavailable {
        /// The folder, file or peer.
        what: String,
        /// Why.
        reason: String,
    },
}

impl SyncError {
    /// Wraps a backend error with the context it happened in.
    pub fn backend(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        SyncError::Backend { context: context.into(), source: Box::new(source) }
    }

    /// True when the problem lies with one origin's entries (the driver stalls that origin
    /// and keeps syncing the others) rather than with the source or destination as a whole.
    pub fn stalls_origin(&self) -> bool {
        matches!(
            self,
            SyncError::ClockSkew { .. }
                | SyncError::Gap { .. }
                | SyncError::NeedsUpgrade { .. }
                | SyncError::Rejected { .. }
                | SyncError::Refused { .. }
                | SyncError::Malformed { .. }
        )
    }
}

/// Why an entry failed authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectReason {
    /// The signature does not match the chain: some entry before it was altered, removed or
    /// reordered, or the log belongs to another workspace.
    BadSignature,
    /// The sealing key does not derive the origin id: the entry was forged or moved to
    /// another origin.
    KeyNotOfOrigin,
    /// The origin is not a member of the workspace.
    NotAMember,
    /// More than [`crate::entry::MAX_SEAL_GAP`] entries arrived without a seal.
    UnsealedRunTooLong,
    /// A run ended before any signed head covered it (the sender must end pages on one).
    NoSignedHead,
    /// A genesis that does not found this workspace, is not its creator's first entry, or
    /// is not signed by its creator.
    ForgedGenesis,
    /// A run of one origin held an entry of another.
    WrongOrigin,
    /// A successor op whose proof is not its predecessor key's signature naming this
    /// origin in this workspace (forged, moved, or altered).
    ForgedSuccessor,
    /// A join whose proof is not the invite secret's signature for this device in this
    /// workspace (forged, or moved from another device or workspace).
    ForgedJoin,
    /// A control op where the format does not allow it: a policy outside the genesis entry,
    /// a join or request other than as a device's entry 0, or two of them in one entry.
    MisplacedControl,
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RejectReason::BadSignature => {
                "signature does not match the log (tampered, truncated or from another workspace)"
            }
            RejectReason::KeyNotOfOrigin => {
                "signed by a key that is not the origin's (forged or transplanted)"
            }
            RejectReason::NotAMember => "the origin is not a member of the workspace",
            RejectReason::UnsealedRunTooLong => "too many entries without a signed head",
            RejectReason::NoSignedHead => "the entries end without a signed head",
            RejectReason::ForgedGenesis => {
                "a genesis that does not found this workspace by its creator's first entry (forged)"
            }
            RejectReason::WrongOrigin => "an entry of another origin in this origin's log",
            RejectReason::ForgedSuccessor => {
                "a successor op not signed by its predecessor's key for this origin (forged)"
            }
            RejectReason::ForgedJoin => {
                "a join not signed by its invite's secret for this device (forged or moved)"
            }
            RejectReason::MisplacedControl => {
                "a policy, join or request op where the format does not allow one"
            }
        })
    }
}
