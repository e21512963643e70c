//! # shoal-sim
//!
//! A deterministic simulation of Shoal devices syncing through cloud folders, with faults,
//! checked against the model of the merge rules. It drives the real code — `Workspace`
//! over real SQLite files, the real folder log (`shoal-filelog`) — through three
//! injected layers: the folder's file-system steps (`shoal_filelog::faults`: crashes,
//! torn writes, full disks, read errors), each device's wall clock (`ManualClock`: drift,
//! stalls, jumps), and the scheduling (one seeded generator decides every step: which
//! device writes, syncs, crashes; when the cloud uploads and delivers).
//!
//! One run ([`run`]) for a seed: 3–8 devices of one workspace write random table
//! operations (schema changes, deletes, revivals, drops and re-creation, conflicting
//! definitions, tables near the width budget), sync through their local copies of a
//! simulated cloud folder (`cloud`: late, out of order, partial, duplicated deliveries,
//! conflict copies, folders that vanish for a while), crash between any two steps or in
//! the middle of a folder write, are restored from old backups, or lose their files and
//! are rebuilt from the folder. Odd seeds run a members-only workspace: the founder makes
//! an invite (its secret derived from the seed) and every device joins, and joins again
//! when rebuilt, with it, so entries are held until the invite and the genesis arrive. In
//! those runs the founder now and then removes a device or a device leaves (drawn from a
//! generator of their own); the device out keeps writing and syncing. Seeds that are 3
//! modulo 4 run an end-to-end encrypted workspace (a removal rotates the key). Seeds
//! divisible by 3 also sync through the real relay server over faulty in-memory links,
//! restarted now and then (`relay`). Then the
//! faults heal, everything quiesces, and every member replica must hold exactly the state
//! (hidden state and views) of the independent in-memory model (`shoal_tables::
//! TablesModel`) fed with every acknowledged write its author may make: the members agree
//! on every origin's limit, no limit is below what the remover had stored of it, and no
//! entry a device wrote after it knew it was out is valid. A removed device of an
//! encrypted run holds no key of the epoch its removal started. A failure names the seed
//! and the command that replays it.
//!
//! Owns: the simulation loop, its options and report. Deterministic: everything the run
//! does follows from the seed (device keys included); the folder code asks the fault
//! layer in a deterministic order within a pass.
//!
//! What a run does not cover, and where it is covered: a crash *inside* SQLite's commit
//! (the real-process `kill -9` tests of `shoal-cli`), and a power loss that undoes an
//! unsynced rename (the folder code fsyncs the directory before acknowledging, so a
//! process crash, which is simulated, is the case that matters to acknowledged writes).
//!
//! Never: used by the product; it is a test tool.

mod check;
mod cloud;
mod device;
mod faults;
mod relay;
mod workload;

use std::path::PathBuf;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use shoal::{Error as ShoalError, Workspace, WorkspaceOptions};
use shoal_core::control::Role;
use shoal_core::invite::InviteCode;
use shoal_core::membership::DeviceState;
use shoal_core::{DeviceKey, ManualClock, Payload, PeerId, SyncError, WorkspaceId};
use shoal_tables::TablesModel;

pub use cloud::CloudStats;

use check::Snapshot;
use cloud::Cloud;
use device::{Device, sim_config};
use faults::{DeviceFaults, FaultRates};
use relay::SimRelay;
use workload::{Written, random_write};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Devices; `None` draws 3 to 8 from the seed.
    pub devices: Option<usize>,
    /// Steps before healing.
    pub steps: usize,
    /// A members-only workspace, every device joining with an invite; `None` decides by
    /// the seed (odd seeds), without drawing from the seeded generator, so a seed's
    /// workload is the same either way.
    pub members_only: Option<bool>,
    /// An end-to-end encrypted workspace (members-only too); `None` decides by the seed
    /// (seeds that are 3 modulo 4: half the members-only runs).
    pub encrypted: Option<bool>,
    /// Devices also sync through a relay (the real server code over the in-memory store,
    /// reached over links that drop, duplicate, reorder, delay and cut frames, restarted now
    /// and then); `None` decides by the seed (seeds divisible by 3), without drawing from
    /// the seeded generator.
    pub relay: Option<bool>,
}

impl SimOptions {
    /// Whether the run for `seed` is members-only.
    pub fn members_only_for(&self, seed: u64) -> bool {
        self.encrypted_for(seed) || self.members_only.unwrap_or(seed % 2 == 1)
    }

    /// Whether devices of the run for `seed` also sync through a relay.
    pub fn relay_for(&self, seed: u64) -> bool {
        self.relay.unwrap_or(seed.is_multiple_of(3))
    }

    /// Whether the run for `seed` is encrypted.
    pub fn encrypted_for(&self, seed: u64) -> bool {
        self.encrypted.unwrap_or(self.members_only != Some(false) && seed % 4 == 3)
    }
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions { devices: None, steps: 150, members_only: None, encrypted: None, relay: None }
    }
}

/// What a run did.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Devices simulated.
    pub devices: usize,
    /// The workspace admits members only (every device joined with an invite).
    pub members_only: bool,
    /// Data entries are end-to-end encrypted.
    pub encrypted: bool,
    /// Devices removed by the founder, and devices that left.
    pub removals: u64,
    /// Devices that found their own log forked (a restored backup that had written) and
    /// recovered as their own successor.
    pub fork_recoveries: u64,
    /// Writes acknowledged (committed entries fed to the model).
    pub acknowledged: u64,
    /// Writes the API refused as documented.
    pub refused: u64,
    /// Sync passes.
    pub syncs: u64,
    /// Crashes (injected in a folder step, or between steps).
    pub crashes: u64,
    /// Faults injected in folder steps (crashes, full disks, read errors).
    pub faults: u64,
    /// Backups restored.
    pub restores: u64,
    /// Devices that lost their files and were rebuilt.
    pub rebuilds: u64,
    /// Clock jumps and stalls.
    pub clock_events: u64,
    /// Devices also synced through a relay.
    pub relay: bool,
    /// Sync passes through the relay.
    pub relay_syncs: u64,
    /// Relay restarts.
    pub relay_restarts: u64,
    /// Entries carried into folders by devices that sync with a relay too (other origins'
    /// entries, written as carried copies in the carrier's own directory).
    pub carried: u64,
    /// Faults injected on relay links (frames dropped, duplicated, reordered, delayed; cuts).
    pub link_faults: u64,
    /// Heal rounds until every replica agreed.
    pub heal_rounds: usize,
    /// What the cloud did.
    pub cloud: CloudStats,
}

/// A failed run: what went wrong, and how to replay it.
#[derive(Debug, thiserror::Error)]
#[error("shoal-sim seed {seed} failed: {what}\n  replay: {replay}\n  last steps:\n{trace}")]
pub struct Failure {
    /// The seed.
    pub seed: u64,
    /// What went wrong.
    pub what: String,
    /// The command that replays the run.
    pub replay: String,
    /// The last steps before the failure.
    pub trace: String,
}

/// The command that replays `seed` with `options`.
pub fn replay_command(seed: u64, options: &SimOptions) -> String {
    let mut cmd = format!("cargo run --release -p shoal-sim -- --seed {seed}");
    if let Some(d) = options.devices {
        cmd.push_str(&format!(" --devices {d}"));
    }
    if options.steps != SimOptions::default().steps {
        cmd.push_str(&format!(" --steps {}", options.steps));
    }
    if let Some(m) = options.members_only {
        cmd.push_str(if m { " --members-only" } else { " --open" });
    }
    if let Some(e) = options.encrypted {
        cmd.push_str(if e { " --encrypted" } else { " --plaintext" });
    }
    if let Some(r) = options.relay {
        cmd.push_str(if r { " --relay" } else { " --no-relay" });
    }
    cmd
}

/// Runs the simulation for `seed` (see the crate doc).
pub fn run(seed: u64, options: &SimOptions) -> Result<Report, Failure> {
    let fail = |what: String, trace: &[String]| Failure {
        seed,
        what,
        replay: replay_command(seed, options),
        trace: trace
            .iter()
            .rev()
            .take(std::env::var("SHOAL_SIM_TRACE").ok().and_then(|v| v.parse().ok()).unwrap_or(25))
            .rev()
            .map(|t| format!("    {t}\n"))
            .collect(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(format!("starting a runtime: {e}"), &[]))?;
    // Real files, on a memory file system where there is one: a run fsyncs thousands of
    // times, and what is tested is the order of writes, not the disk.
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }
        .map_err(|e| fail(format!("a temporary directory: {e}"), &[]))?;
    let mut sim = match Sim::new(seed, options, dir.path().to_owned()) {
        Ok(sim) => sim,
        Err(e) => return Err(fail(e, &[])),
    };
    let result = runtime.block_on(sim.run());
    result.map(|()| sim.report.clone()).map_err(|e| fail(e, &sim.trace))
}

/// Fault rates of an armed sync.
const ARMED: FaultRates = FaultRates { crash: 0.03, full: 0.03, read_error: 0.05 };

/// The simulation's true time at the start (2026-01-01).
const EPOCH_MS: u64 = 1_767_225_600_000;

struct Sim {
    rng: StdRng,
    root: PathBuf,
    now: u64,
    workspace: WorkspaceId,
    devices: Vec<Device>,
    cloud: Cloud,
    /// Every acknowledged entry with table ops: the model is fed those that may apply.
    acked: Vec<Acked>,
    /// The invite every device of a members-only run joins with (again, when rebuilt).
    invite: Option<InviteCode>,
    /// Membership changes are drawn from a generator of their own, so adding them left
    /// every other draw of a seed as it was.
    membership_rng: StdRng,
    /// Per slot: its current device is a member (not removed, not gone).
    active: Vec<bool>,
    /// Removals and departures, with what the sim knows of their cuts.
    cuts: Vec<CutRecord>,
    /// Per origin: the first index it wrote after its own roster showed it removed or gone.
    written_after_cut: std::collections::BTreeMap<PeerId, u64>,
    wide_left: bool,
    /// The relay, in runs that have one.
    relay: Option<SimRelay>,
    steps: usize,
    report: Report,
    trace: Vec<String>,
}

/// An acknowledged entry, as its device wrote it (decrypted).
struct Acked {
    origin: PeerId,
    index: u64,
    payload: Payload,
}

/// A removal by the founder, or a device leaving: entries of `origin` below `at_least` must
/// stay valid everywhere (the remover had stored them, or they precede the leaving entry).
struct CutRecord {
    origin: PeerId,
    at_least: u64,
    /// Removed (the key rotates in an encrypted run), rather than gone by itself.
    removed: bool,
    slot: usize,
    generation: u32,
}

impl Sim {
    fn new(seed: u64, options: &SimOptions, root: PathBuf) -> Result<Sim, String> {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = options.devices.unwrap_or_else(|| rng.random_range(3..=8));
        // One seed in thirty has a table near the width budget: every schema change then makes
        // SQLite re-parse a schema of about a thousand columns on each connection, which
        // costs a run ~20 s instead of ~0.3 s.
        let wide_left = rng.random_bool(1.0 / 30.0);
        let mut devices = Vec::with_capacity(n);
        let mut workspace = None;
        let members_only = options.members_only_for(seed);
        let encrypted = options.encrypted_for(seed);
        let mut invite: Option<InviteCode> = None;
        for slot in 0..n {
            let folder = root.join(format!("folder-{slot}"));
            std::fs::create_dir_all(&folder).map_err(|e| e.to_string())?;
            let clock = ManualClock::new(EPOCH_MS);
            let faults = Arc::new(DeviceFaults::new(rng.random()));
            let path = root.join(format!("device-{slot}-0.shoal"));
            let mut device = Device {
                slot,
                generation: 0,
                path,
                folder,
                clock,
                offset: 0,
                frozen: None,
                ws: None,
                faults,
                backup: None,
                past_origins: Vec::new(),
            };
            let key = DeviceKey::from_secret_bytes(&rng.random::<[u8; 32]>());
            let ws = match (workspace, &invite) {
                (None, _) => {
                    let options = WorkspaceOptions { members_only, encrypted, ..device.options() };
                    Workspace::create_with_key(&device.path, key, rng.random(), options)
                }
                (Some(_), Some(code)) => {
                    Workspace::join_with_code_and_key(&device.path, code, key, device.options())
                }
                (Some(id), None) => {
                    Workspace::join_with_key(&device.path, id, key, device.options())
                }
            }
            .map_err(|e| format!("creating device {slot}: {e}"))?;
            if workspace.is_none() && members_only {
                // The invite's secret derives from the seed (not drawn from the generator).
                let secret =
                    *blake3::hash(&[b"shoal-sim invite".as_slice(), &seed.to_le_bytes()].concat())
                        .as_bytes();
                let code = InviteCode::from_parts(ws.id(), "", secret);
                let code = ws
                    .invite_with_code(code, Role::Member, None, 10_000)
                    .map_err(|e| format!("device {slot} invites: {e}"))?;
                invite = Some(code);
            }
            workspace = Some(ws.id());
            device.ws = Some(ws);
            devices.push(device);
        }
        let workspace = workspace.ok_or("no devices")?;
        let cloud = Cloud::new(devices.iter().map(|d| d.folder.clone()).collect());
        let mut sim = Sim {
            rng,
            root,
            now: EPOCH_MS,
            workspace,
            devices,
            cloud,
            acked: Vec::new(),
            invite,
            membership_rng: StdRng::seed_from_u64(seed ^ 0x6d65_6d62_6572_7321),
            active: vec![true; n],
            cuts: Vec::new(),
            written_after_cut: Default::default(),
            wide_left,
            relay: options.relay_for(seed).then(|| SimRelay::new(seed)),
            steps: options.steps,
            report: Report {
                seed,
                devices: n,
                members_only,
                encrypted,
                relay: options.relay_for(seed),
                ..Report::default()
            },
            trace: Vec::new(),
        };
        // The genesis is the founder's first acknowledged write.
        sim.record(0, 0)?;
        Ok(sim)
    }

    fn note(&mut self, what: String) {
        self.trace.push(format!("t+{} {what}", self.now - EPOCH_MS));
    }

    /// Keeps entry `index` of device `d`'s log (just acknowledged) for the model.
    fn record(&mut self, d: usize, index: u64) -> Result<(), String> {
        let ws = self.devices[d].ws()?;
        let origin = ws.device().ok_or("no origin")?;
        let entry = ws
            .replica()
            .history_opened(origin, index, 1)
            .map_err(|e| format!("reading back entry {index} of device {d}: {e}"))?
            .into_iter()
            .next()
            .ok_or_else(|| format!("device {d}: acknowledged entry {index} is not in its log"))?;
        // Control entries (the genesis) carry no table ops.
        if let Some(payload) = entry.payload() {
            if payload.class() == Ok(shoal_core::EntryClass::Control) {
                return Ok(());
            }
            self.acked.push(Acked { origin, index, payload: payload.clone() });
        } else {
            return Err(format!("device {d}: its own entry {index} does not open"));
        }
        Ok(())
    }

    /// A membership change (members-only runs): the founder removes a device, or a device
    /// leaves. The removed device keeps writing and syncing, as a device that has not
    /// heard would.
    fn membership(&mut self) -> Result<(), String> {
        let others: Vec<usize> = (1..self.devices.len()).filter(|s| self.active[*s]).collect();
        // Keep at least two members besides the founder, so runs keep syncing something.
        if others.len() < 2 {
            return Ok(());
        }
        let t = others[self.membership_rng.random_range(0..others.len())];
        let remove = self.membership_rng.random_bool(0.7);
        let target = self.devices[t].ws()?.device().ok_or("no origin")?;
        let generation = self.devices[t].generation;
        if remove {
            let founder = self.devices[0].ws()?;
            let cut = founder.replica().durable_cursors().map_err(|e| e.to_string())?.get(&target);
            match founder.remove_device(target) {
                Ok(_) => {
                    self.note(format!("device 0 removes device {t} (cut {cut})"));
                    self.cuts.push(CutRecord {
                        origin: target,
                        at_least: cut,
                        removed: true,
                        slot: t,
                        generation,
                    });
                }
                // Not known to the founder yet, or the founder is no admin (rebuilt).
                Err(shoal::Error::Membership(why)) => {
                    self.note(format!("device 0 cannot remove device {t}: {why}"));
                    return Ok(());
                }
                Err(e) => return Err(format!("device 0 removing device {t}: {e}")),
            }
        } else {
            let ws = self.devices[t].ws()?;
            match ws.leave() {
                Ok(commit) => {
                    self.note(format!("device {t} leaves at entry {}", commit.index));
                    self.cuts.push(CutRecord {
                        origin: target,
                        at_least: commit.index + 1,
                        removed: false,
                        slot: t,
                        generation,
                    });
                }
                Err(e) => {
                    self.note(format!("device {t} cannot leave: {e}"));
                    return Ok(());
                }
            }
        }
        self.report.removals += 1;
        self.active[t] = false;
        Ok(())
    }

    async fn run(&mut self) -> Result<(), String> {
        if self.report.encrypted {
            // Joining an encrypted workspace means reading it first (`shoal join CODE
            // --folder`): a device holds no key, and writes nothing, before its invite's keys
            // arrive. So every device starts with the founder's log.
            self.sync(0, false).await?;
            self.upload_own(0)?;
            self.cloud.deliver_all()?;
            for d in 1..self.devices.len() {
                self.sync(d, false).await?;
            }
        }
        for _ in 0..self.steps {
            self.now += self.rng.random_range(0..1500);
            for d in &self.devices {
                d.tick(self.now);
            }
            self.step().await?;
        }
        self.heal().await?;
        self.check()
    }

    async fn step(&mut self) -> Result<(), String> {
        if self.report.members_only && self.membership_rng.random_bool(0.015) {
            self.membership()?;
        }
        if let Some(relay) = self.relay.as_mut()
            && relay.restart_now()
        {
            relay.restart();
            self.note("the relay restarts".into());
        }
        let d = self.rng.random_range(0..self.devices.len());
        match self.rng.random_range(0..100) {
            0..=44 => self.write(d),
            45..=64 => {
                let armed = self.rng.random_bool(0.35);
                if self.relay.as_mut().is_some_and(SimRelay::chosen) {
                    self.relay_sync(d, armed).await.map(|_| ())
                } else {
                    self.sync(d, armed).await.map(|_| ())
                }
            }
            65..=74 => self.upload_own(d),
            75..=87 => {
                for _ in 0..self.rng.random_range(1..4) {
                    self.cloud.deliver_one(&mut self.rng)?;
                }
                Ok(())
            }
            88..=91 => {
                self.clock_event(d);
                Ok(())
            }
            92..=93 => {
                self.note(format!("device {d} crashes between steps"));
                self.report.crashes += 1;
                self.devices[d].restart()
            }
            94 => {
                // A restored device whose folder is unreachable when it first writes cannot
                // take its own entries back first (offline writes are allowed): its next
                // sync finds the fork, and it recovers (`recover_fork`).
                if self.cloud.present(d) {
                    self.note(format!("folder of device {d} vanishes"));
                    self.cloud.vanish(d)
                } else {
                    self.note("vanished folders come back".into());
                    self.cloud.bring_back_all()
                }
            }
            95..=96 => {
                self.note(format!("device {d} is backed up"));
                let n = self.report.restores + self.report.rebuilds;
                let into = self.root.join(format!("backup-{d}-{n}"));
                self.devices[d].take_backup(into)?;
                Ok(())
            }
            97..=98 => self.restore(d).await,
            _ => self.rebuild(d).await,
        }
    }

    fn write(&mut self, d: usize) -> Result<(), String> {
        let wide = self.wide_left;
        let ws = self.devices[d].ws()?;
        // This device's own cursor, to check that a refused write commits nothing (the
        // stored cursors are enough: a full status also checks conflicts and the schema).
        let own_next = |ws: &shoal::Workspace| -> Result<Option<u64>, String> {
            let cursors = ws.replica().durable_cursors().map_err(|e| e.to_string())?;
            Ok(ws.device().map(|me| cursors.get(&me)))
        };
        let before = own_next(ws)?;
        // Does this device know it is no longer a member?
        let me = ws.device().ok_or("no origin")?;
        let roster = ws.replica().roster().map_err(|e| e.to_string())?;
        let knows_cut = roster.device(&me).is_some_and(|s| {
            matches!(s.state, DeviceState::Removed { .. } | DeviceState::Left { .. })
        });
        let written = random_write(&mut self.rng, ws, wide)?;
        match written {
            Written::Committed(c) => {
                self.note(format!("device {d} commits entry {}", c.index));
                self.report.acknowledged += 1;
                if knows_cut {
                    self.written_after_cut.entry(me).or_insert(c.index);
                }
                if wide
                    && self.devices[d]
                        .ws()?
                        .schema()
                        .is_ok_and(|s| s.tables.iter().any(|t| t.columns.len() > 100))
                {
                    self.wide_left = false;
                }
                self.record(d, c.index)
            }
            Written::Nothing => Ok(()),
            Written::Forked(why) => {
                self.note(format!("device {d} finds its own log forked before writing: {why}"));
                self.recover_fork(d)
            }
            Written::Refused(why) => {
                self.report.refused += 1;
                // A refused write commits nothing.
                let after = own_next(self.devices[d].ws()?)?;
                if before != after {
                    return Err(format!("device {d}: a refused write ({why}) grew the log"));
                }
                Ok(())
            }
        }
    }

    /// One sync pass of device `d`, with faults if `armed`. Returns whether it succeeded.
    async fn sync(&mut self, d: usize, armed: bool) -> Result<bool, String> {
        self.report.syncs += 1;
        let device = &self.devices[d];
        let injected = device.faults.injected();
        device.faults.arm(armed.then_some(ARMED));
        let config = sim_config(&device.faults);
        let result = device.ws()?.sync_folder_with(&device.folder, config).await;
        device.faults.arm(None);
        let faults = device.faults.injected() - injected;
        self.report.faults += faults;
        if device.faults.dead() {
            self.note(format!("device {d} crashes in a folder step during sync"));
            self.report.crashes += 1;
            self.devices[d].restart()?;
            return Ok(false);
        }
        match result {
            Ok(done) => {
                self.report.carried += done.report.carried;
                self.note(format!("device {d} syncs{}", if faults > 0 { " (faults)" } else { "" }));
                Ok(true)
            }
            Err(e) if faults > 0 || !self.cloud.present(d) => {
                self.note(format!("device {d} sync fails as expected: {e}"));
                Ok(false)
            }
            Err(ShoalError::SyncBusy { .. }) => Err(format!("device {d}: sync lock busy")),
            Err(e @ (ShoalError::Forked(_) | ShoalError::Sync(SyncError::Forked { .. }))) => {
                self.note(format!("device {d} finds its own log forked: {e}"));
                self.recover_fork(d)?;
                Ok(false)
            }
            Err(e) => Err(format!("device {d}: sync failed with no fault injected: {e}")),
        }
    }

    /// One sync pass of device `d` through the relay, over a faulty link if `armed`.
    /// Returns whether it succeeded.
    async fn relay_sync(&mut self, d: usize, armed: bool) -> Result<bool, String> {
        let Some(relay) = self.relay.as_mut() else { return Ok(false) };
        self.report.relay_syncs += 1;
        let faults_before = relay.faults.load(std::sync::atomic::Ordering::Relaxed);
        let ws = self.devices[d].ws.clone().ok_or("device not open")?;
        let result = match relay.connect(&ws, format!("sim device {d}"), armed).await {
            Ok(remote) => {
                let pass = ws.relay_pass(&remote, shoal::RelayOptions::default());
                // Generous: a seed with a table near the width budget takes seconds per
                // schema change on a loaded machine.
                match tokio::time::timeout(std::time::Duration::from_secs(300), pass).await {
                    Ok(r) => r.map(|_| ()).map_err(|e| (e.to_string(), Some(e))),
                    Err(_) => Err(("the pass took over 300 s".into(), None)),
                }
            }
            Err(e) => Err((e, None)),
        };
        let faults = relay.faults.load(std::sync::atomic::Ordering::Relaxed) - faults_before;
        self.report.link_faults += faults;
        self.report.relay_restarts = relay.restarts;
        let active = self.active[self.devices[d].slot];
        match result {
            Ok(()) => {
                self.note(format!(
                    "device {d} syncs with the relay{}",
                    if faults > 0 { " (faults)" } else { "" }
                ));
                Ok(true)
            }
            Err((e, Some(ShoalError::Forked(_) | ShoalError::Sync(SyncError::Forked { .. })))) => {
                self.note(format!("device {d} finds its own log forked at the relay: {e}"));
                self.recover_fork_at_relay(d).await?;
                Ok(false)
            }
            Err((e, _)) if armed || !active => {
                self.note(format!("device {d} relay sync fails as expected: {e}"));
                Ok(false)
            }
            Err((e, _)) => {
                Err(format!("device {d}: relay sync failed with no fault injected: {e}"))
            }
        }
    }

    fn clock_event(&mut self, d: usize) {
        self.report.clock_events += 1;
        let device = &mut self.devices[d];
        match self.rng.random_range(0..4) {
            0 => device.offset += self.rng.random_range(-300_000..300_000),
            1 if device.frozen.is_none() => {
                device.frozen = Some(shoal_core::WallClock::now_millis(&device.clock))
            }
            1 => device.frozen = None,
            _ => device.offset += self.rng.random_range(-3_000..3_000),
        }
        let (offset, frozen) = (device.offset, device.frozen);
        device.tick(self.now);
        self.note(format!("device {d} clock: offset {offset} ms, frozen {frozen:?}"));
    }

    /// A clean pass whose success means every entry of `d` is in its local folder, and in
    /// a run with a relay, at the relay too (for a member). A device restored from a backup
    /// then finds each of its old entries wherever it syncs first, so a branch it writes
    /// after the restore is found forked there; were its old entries in one store only, it
    /// could publish the new branch to the other, and no replica would see both until a
    /// device carried one branch to the other's store (`docs/ARCHITECTURE.md`, "Forks
    /// across stores").
    async fn publish_all(&mut self, d: usize) -> Result<bool, String> {
        if !self.cloud.present(d) {
            return Ok(false);
        }
        if self.relay.is_none() || !self.active[self.devices[d].slot] {
            return self.sync(d, false).await;
        }
        // A pass can make the device write (an ack of what it pulled): go round until a
        // round writes nothing, so both stores hold every entry.
        for _ in 0..4 {
            let own = |ws: &shoal::Workspace| -> Result<u64, String> {
                let me = ws.device().ok_or("no origin")?;
                Ok(ws.replica().durable_cursors().map_err(|e| e.to_string())?.get(&me))
            };
            let before = own(self.devices[d].ws()?)?;
            if !self.sync(d, false).await? || !self.relay_sync(d, false).await? {
                return Ok(false);
            }
            if own(self.devices[d].ws()?)? == before {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The cloud uploads what device `d` wrote in its local folder.
    fn upload_own(&mut self, d: usize) -> Result<(), String> {
        for dir in self.devices[d].own_dirs(self.workspace)? {
            self.cloud.upload(d, &dir)?;
        }
        Ok(())
    }

    /// A device that found its own log forked (a restored backup that had written at
    /// indices the folder holds) recovers as the successor of its old key: its branch's
    /// writes are re-issued under the new key. The model follows: the dropped branch's
    /// acknowledged entries are replaced by their re-issued copies.
    fn recover_fork(&mut self, d: usize) -> Result<(), String> {
        let (ws, old, mine, key) = self.begin_recovery(d)?;
        let folder = self.devices[d].folder.clone();
        let (ws, rec) = match ws.recover_fork_with_key(&folder, key) {
            Ok(done) => done,
            Err(e) => return Err(format!("device {d}: recovering from its fork: {e}")),
        };
        self.recovered(d, old, mine, ws, rec)
    }

    /// [`Sim::recover_fork`] for a fork found at the relay: recovered against the relay's
    /// copy of the device's log.
    async fn recover_fork_at_relay(&mut self, d: usize) -> Result<(), String> {
        let (ws, old, mine, key) = self.begin_recovery(d)?;
        let relay = self.relay.as_mut().ok_or("no relay")?;
        let remote = relay.connect(&ws, format!("sim device {d} (recovery)"), false).await?;
        let (ws, rec) = match ws.recover_fork_over(&remote, key).await {
            Ok(done) => done,
            Err(e) => {
                return Err(format!("device {d}: recovering from its fork at the relay: {e}"));
            }
        };
        self.recovered(d, old, mine, ws, rec)
    }

    /// The start of a fork recovery: the device's workspace (taken out), its origin, what
    /// its own log holds (to tell the dropped branch), and its new key.
    fn begin_recovery(
        &mut self,
        d: usize,
    ) -> Result<(Workspace, PeerId, Vec<shoal_core::Entry>, DeviceKey), String> {
        self.report.fork_recoveries += 1;
        let ws = self.devices[d].ws.take().ok_or("no workspace")?;
        let old = ws.device().ok_or("no origin")?;
        let mine = ws
            .replica()
            .history_opened(old, 0, usize::MAX)
            .map_err(|e| format!("device {d}: reading its own log: {e}"))?;
        let key = DeviceKey::from_secret_bytes(&self.rng.random::<[u8; 32]>());
        Ok((ws, old, mine, key))
    }

    /// After a fork recovery: the model drops the dropped branch's writes and takes their
    /// re-issued copies; the device goes on under its new key.
    fn recovered(
        &mut self,
        d: usize,
        old: PeerId,
        mine: Vec<shoal_core::Entry>,
        ws: Workspace,
        rec: shoal::ForkRecovery,
    ) -> Result<(), String> {
        let dropped: Vec<(u64, Payload)> = mine
            .into_iter()
            .filter(|e| e.index >= rec.forked_at)
            .filter_map(|e| e.payload().map(|p| (e.index, p.clone())))
            .collect();
        self.acked.retain(|a| {
            a.origin != old || !dropped.iter().any(|(i, p)| *i == a.index && *p == a.payload)
        });
        let successor = rec.succession.successor;
        let reissued = ws
            .replica()
            .history_opened(successor, 0, usize::MAX)
            .map_err(|e| format!("device {d}: reading its new log: {e}"))?;
        for e in reissued {
            if let Some(p) = e.payload()
                && p.class() == Ok(shoal_core::EntryClass::Data)
            {
                self.acked.push(Acked { origin: successor, index: e.index, payload: p.clone() });
            }
        }
        self.note(format!(
            "device {d} recovers as {successor} (forked at {}, {} re-issued)",
            rec.forked_at, rec.succession.reissued
        ));
        self.devices[d].ws = Some(ws);
        self.devices[d].past_origins.push(old);
        Ok(())
    }

    async fn restore(&mut self, d: usize) -> Result<(), String> {
        // A backup taken before the device's first sync knows no folder, so before its first
        // write it cannot take back its own later entries: its next sync finds the fork,
        // and the device recovers as its own successor (`recover_fork`).
        if !self.publish_all(d).await? {
            return Ok(());
        }
        self.report.restores += 1;
        self.devices[d].restore_backup()?;
        let last = self.devices[d].ws()?.last_sync().map_err(|e| e.to_string())?;
        self.note(format!("device {d} is restored from its backup (last sync {last:?})"));
        Ok(())
    }

    async fn rebuild(&mut self, d: usize) -> Result<(), String> {
        // In an encrypted run the founder is the only admin, and only an admin can hand a
        // rebuilt device the keys of epochs its (old) invite does not carry; a workspace
        // that loses every admin's device loses that (`docs/ARCHITECTURE.md`,
        // "Encryption"). So the founder's device is not lost here.
        if d == 0 && self.report.encrypted {
            return Ok(());
        }
        if !self.publish_all(d).await? {
            return Ok(());
        }
        // The folder tool still uploads what the lost device had published.
        self.upload_own(d)?;
        self.note(format!("device {d} loses its files and joins again"));
        self.report.rebuilds += 1;
        let generation = self.devices[d].generation + 1;
        let path = self.root.join(format!("device-{d}-{generation}.shoal"));
        let secret = self.rng.random::<[u8; 32]>();
        self.devices[d].rebuild(self.workspace, self.invite.as_ref(), secret, path)?;
        // A new device: a member again (the old origin keeps its cut).
        self.active[d] = true;
        Ok(())
    }

    async fn heal(&mut self) -> Result<(), String> {
        self.note("healing: folders back, clocks right, no faults".into());
        self.cloud.bring_back_all()?;
        self.now += 600_000;
        for device in &mut self.devices {
            device.offset = 0;
            device.frozen = None;
            device.tick(self.now);
        }
        let mut previous: Option<Vec<Snapshot>> = None;
        for round in 1..=12 {
            self.report.heal_rounds = round;
            for d in 0..self.devices.len() {
                // A second pass for a device that found its own log forked and recovered.
                if !self.sync(d, false).await? && !self.sync(d, false).await? {
                    return Err(format!("device {d}: a sync failed while healing"));
                }
                if self.relay.is_some()
                    && !self.relay_sync(d, false).await?
                    && !self.relay_sync(d, false).await?
                    && self.active[self.devices[d].slot]
                {
                    return Err(format!("device {d}: a relay sync failed while healing"));
                }
                self.upload_own(d)?;
            }
            self.cloud.deliver_all()?;
            // Removed and departed devices see less (their own later writes, not the new
            // epoch's): they are checked apart (`check`).
            let snapshots: Vec<Snapshot> = self
                .devices
                .iter()
                .filter(|d| self.active[d.slot])
                .map(|d| Snapshot::of(d.ws()?))
                .collect::<Result<_, _>>()?;
            let agree = snapshots.windows(2).all(|w| w[0] == w[1]);
            if agree && self.cloud.idle() && previous.as_ref() == Some(&snapshots) {
                return Ok(());
            }
            previous = Some(snapshots);
        }
        let mut why = String::new();
        if let Some(first) = previous.as_ref().and_then(|p| p.first()) {
            for (i, snap) in previous.iter().flatten().enumerate().skip(1) {
                if let Some(diff) = snap.difference(first) {
                    why = format!(": the {i}th member differs from the first: {diff}");
                    break;
                }
            }
        }
        Err(format!("replicas did not agree after 12 heal rounds{why}"))
    }

    fn check(&mut self) -> Result<(), String> {
        self.report.cloud = self.cloud.stats;
        // Who may write what: the members' rosters agree, and respect what the sim knows of
        // every cut (the remover had stored the entries below it; entries a device wrote
        // after it knew it was out are never valid).
        let members: Vec<usize> = (0..self.devices.len()).filter(|s| self.active[*s]).collect();
        let roster =
            self.devices[members[0]].ws()?.replica().roster().map_err(|e| e.to_string())?;
        let origins: std::collections::BTreeSet<PeerId> =
            self.acked.iter().map(|a| a.origin).collect();
        for &m in &members[1..] {
            let other = self.devices[m].ws()?.replica().roster().map_err(|e| e.to_string())?;
            for o in &origins {
                if roster.limit(o) != other.limit(o) {
                    return Err(format!(
                        "devices {} and {m} disagree on who may write: origin {o} limited at \
                         {} and {}",
                        members[0],
                        roster.limit(o),
                        other.limit(o)
                    ));
                }
            }
        }
        for cut in &self.cuts {
            let limit = roster.limit(&cut.origin);
            if limit < cut.at_least {
                return Err(format!(
                    "origin {} is cut at {limit}, below {} (what its remover had stored, or \
                     its leaving entry)",
                    cut.origin, cut.at_least
                ));
            }
        }
        for (origin, first) in &self.written_after_cut {
            if roster.limit(origin) > *first {
                return Err(format!(
                    "origin {origin} wrote entry {first} after it knew it was out, and it \
                     is valid (limit {})",
                    roster.limit(origin)
                ));
            }
        }
        let mut model = TablesModel::new();
        for a in self.acked.iter().filter(|a| a.index < roster.limit(&a.origin)) {
            model
                .apply_payload(&a.payload)
                .map_err(|e| format!("the model refuses entry {} of {}: {e}", a.index, a.origin))?;
        }
        let expected = Snapshot::of_model(&model);
        for device in &self.devices {
            let ws = device.ws()?;
            let status = ws.status().map_err(|e| e.to_string())?;
            if let Some(fork) = &status.fork {
                return Err(format!("device {}: forked: {fork}", device.slot));
            }
            let member = self.active[device.slot];
            for o in &status.origins {
                if let Some(why) = &o.stalled {
                    return Err(format!(
                        "device {}: origin {} stalled: {why}",
                        device.slot, o.origin
                    ));
                }
                // Held entries are those of devices that are out, and, on a device that is
                // out itself, the new epoch's.
                let out = roster.device(&o.origin).is_some_and(|s| s.state != DeviceState::Active);
                if o.materialized != o.next && member && !out {
                    return Err(format!(
                        "device {}: origin {} holds {} entries, applied {} ({:?})",
                        device.slot, o.origin, o.next, o.materialized, o.pending
                    ));
                }
            }
            if member && let Some(diff) = Snapshot::of(ws)?.difference(&expected) {
                return Err(format!("device {} differs from the model: {diff}", device.slot));
            }
        }
        // A removed device holds no key of the epochs its removal started.
        if self.report.encrypted {
            let newest = |slot: usize| -> Result<Option<u32>, String> {
                let ring =
                    self.devices[slot].ws()?.replica().keyring().map_err(|e| e.to_string())?;
                Ok(ring.newest().map(|(e, _)| e))
            };
            for cut in self.cuts.iter().filter(|c| c.removed) {
                let device = &self.devices[cut.slot];
                if device.generation != cut.generation {
                    continue;
                }
                let founder = newest(0)?;
                if newest(cut.slot)? >= founder {
                    return Err(format!(
                        "removed device {} holds the newest key (epoch {founder:?})",
                        cut.slot
                    ));
                }
            }
        }
        Ok(())
    }
}
