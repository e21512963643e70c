//! Fault injection at the folder's file-system steps, for simulations (`shoal-sim`).
//!
//! Owns: [`FaultInjector`] (asked before each step of a write, removal or read in the
//! shared folder), the steps ([`FolderStep`]) and what can happen there ([`Fault`]), and
//! [`Faults`], the handle a [`Config`](crate::Config) carries (none by default).
//!
//! A fault is either an error the OS could return (a full disk, an I/O error) — the
//! operation then fails and cleans up as it would — or a *crash*: the step does not
//! happen (a torn write keeps the bytes written so far), nothing is cleaned up, and the
//! operation fails with an error [`is_simulated_crash`] recognizes. Whoever injects a
//! crash must then treat the process as dead: drop the replica and everything holding it
//! without further use, and reopen it, as a restarted process would.
//!
//! Never: changes what is written when no injector is set (the steps are the same calls
//! as without this module), or injects anything in production builds by itself (only a
//! caller that sets [`Config::faults`](crate::Config::faults) gets faults).

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

/// One step of the folder's file-system work, in the order a publication does them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FolderStep {
    /// Creating a temporary file for a new segment (or fork evidence).
    CreateTemp,
    /// Writing its bytes.
    WriteTemp,
    /// `fsync` of the temporary file.
    SyncTemp,
    /// Renaming it onto its canonical name.
    Rename,
    /// `fsync` of the directory after the rename or a removal.
    SyncDir,
    /// Removing a file (a compacted-away segment, a stale temporary file).
    Remove,
    /// Reading a segment file.
    Read,
}

/// What happens at a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The step runs normally.
    Proceed,
    /// The step fails with this error kind, as the OS could make it fail (for example
    /// `StorageFull`); the operation cleans up and reports it.
    Fail(io::ErrorKind),
    /// The process dies before the step completes. At [`FolderStep::WriteTemp`], the first
    /// `torn_at` bytes are written first (a torn write); elsewhere `torn_at` is ignored.
    Crash {
        /// How many bytes of the write reach the file before the crash.
        torn_at: Option<usize>,
    },
}

/// Decides the fault at each step. Called with the step, the path concerned and, for
/// [`FolderStep::WriteTemp`], the length of the write (0 elsewhere).
pub trait FaultInjector: Send + Sync + fmt::Debug {
    /// The fault at this step.
    fn at(&self, step: FolderStep, path: &Path, len: usize) -> Fault;
}

/// The fault injector a [`Config`](crate::Config) carries: none by default.
#[derive(Clone, Default)]
pub struct Faults(Option<Arc<dyn FaultInjector>>);

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("Faults(none)"),
            Some(i) => write!(f, "Faults({i:?})"),
        }
    }
}

/// The message of a simulated crash's error.
const CRASH: &str = "simulated crash (fault injection)";

/// True if `e` is the error of a simulated crash.
pub fn is_simulated_crash(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Other && e.to_string() == CRASH
}

impl Faults {
    /// Faults decided by `injector`.
    pub fn new(injector: Arc<dyn FaultInjector>) -> Self {
        Faults(Some(injector))
    }

    /// Asks the injector about `step`: `Ok(None)` to proceed; `Ok(Some(n))` for a torn
    /// write of `n` bytes followed by a crash (only at `WriteTemp`); `Err` for a failure
    /// or a crash.
    pub(crate) fn check(
        &self,
        step: FolderStep,
        path: &Path,
        len: usize,
    ) -> io::Result<Option<usize>> {
        let Some(injector) = &self.0 else { return Ok(None) };
        match injector.at(step, path, len) {
            Fault::Proceed => Ok(None),
            Fault::Fail(kind) => Err(io::Error::new(kind, format!("injected {kind} at {step:?}"))),
            Fault::Crash { torn_at: Some(n) } if step == FolderStep::WriteTemp => {
                Ok(Some(n.min(len)))
            }
            Fault::Crash { .. } => Err(crash()),
        }
    }
}

/// The error of a simulated crash.
pub(crate) fn crash() -> io::Error {
    io::Error::other(CRASH)
}
