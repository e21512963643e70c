//! The simulation's fault injector for one device's folder I/O.
//!
//! Owns: [`DeviceFaults`], which decides, from its own seeded generator, whether a step of
//! the device's folder work fails (a full disk, an I/O error) or crashes the device (with
//! a torn write when the step is a write), and remembers that the device is dead after a
//! crash so that every later step of that process fails too.
//!
//! Invariants: decisions depend only on the seed and the sequence of steps asked (the
//! folder code asks them in a deterministic order within one pass); nothing is injected
//! unless the simulation armed the injector for the current operation.
//!
//! Never: touches the file system itself (the folder code does the torn write).

use std::io::ErrorKind;
use std::path::Path;
use std::sync::Mutex;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use shoal_filelog::faults::{Fault, FaultInjector, FolderStep};

/// How likely each kind of fault is at one step while armed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FaultRates {
    /// A crash at this step.
    pub crash: f64,
    /// A full disk at a write step.
    pub full: f64,
    /// An I/O error at a read.
    pub read_error: f64,
}

#[derive(Debug)]
struct State {
    rng: StdRng,
    armed: Option<FaultRates>,
    dead: bool,
    injected: u64,
}

/// One device's injector (see the module doc).
#[derive(Debug)]
pub(crate) struct DeviceFaults(Mutex<State>);

impl DeviceFaults {
    pub(crate) fn new(seed: u64) -> Self {
        DeviceFaults(Mutex::new(State {
            rng: StdRng::seed_from_u64(seed),
            armed: None,
            dead: false,
            injected: 0,
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Faults at these rates from now on (`None`: none).
    pub(crate) fn arm(&self, rates: Option<FaultRates>) {
        self.state().armed = rates;
    }

    /// True once a crash was injected: the device's process is dead.
    pub(crate) fn dead(&self) -> bool {
        self.state().dead
    }

    /// A restarted process: alive, disarmed.
    pub(crate) fn restart(&self) {
        let mut s = self.state();
        s.dead = false;
        s.armed = None;
    }

    /// Faults injected so far.
    pub(crate) fn injected(&self) -> u64 {
        self.state().injected
    }
}

impl FaultInjector for DeviceFaults {
    fn at(&self, step: FolderStep, _path: &Path, len: usize) -> Fault {
        let mut s = self.state();
        if s.dead {
            return Fault::Crash { torn_at: None };
        }
        let Some(rates) = s.armed else { return Fault::Proceed };
        let roll: f64 = s.rng.random();
        let write =
            matches!(step, FolderStep::CreateTemp | FolderStep::WriteTemp | FolderStep::SyncTemp);
        let fault = if roll < rates.crash {
            s.dead = true;
            let torn_at =
                (step == FolderStep::WriteTemp && len > 0).then(|| s.rng.random_range(0..len));
            Fault::Crash { torn_at }
        } else if write && roll < rates.crash + rates.full {
            Fault::Fail(ErrorKind::StorageFull)
        } else if step == FolderStep::Read && roll < rates.read_error {
            Fault::Fail(ErrorKind::Other)
        } else {
            Fault::Proceed
        };
        if fault != Fault::Proceed {
            s.injected += 1;
        }
        fault
    }
}
