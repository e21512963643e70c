//! Crash tests with real processes (DESIGN.md §10; issue 10, item 2): three devices — three
//! workspace files of the real `shoal` binary sharing one folder — each run random `put`s
//! (new rows, overwrites of shared rows, counter increments, max writes), `delete`s, table
//! changes (`table create`, `table alter --column`, `--rename-column`, `--rename`,
//! `--drop`) and `sync`s, one of them also a `sync --watch` process now and then; a share
//! of the commands, `init` included, get `kill -9` at a random moment of their run. A write is *acknowledged* when its command
//! exited 0; a killed one may or may not have landed.
//!
//! After each kill the workspace reopens (`status`) and `shoal verify` passes; after each
//! round (every device quiet) `shoal verify --folder` passes; at the end a round of syncs
//! on every device makes all devices identical (every table and row, every device's
//! progress), and every acknowledged write is there as the merge rules say: a new row with
//! its value, a deleted row gone, a shared row with the acknowledged value of the highest
//! HLC unless an unacknowledged write won, a counter between the acknowledged and the
//! attempted increments, a max at least the greatest acknowledged value, renamed columns
//! and tables under their new names with their rows, dropped tables gone.
//!
//! Time-bounded and seeded: `SHOAL_CRASH_SECS` (default 30) and `SHOAL_CRASH_SEED`
//! (default: from the clock; printed, with a replay command, on failure). The run is cut
//! into epochs of `SHOAL_CRASH_EPOCH_SECS` (default 60), each a fresh sandbox with its own
//! seed, so a long run (`SHOAL_CRASH_SECS=600`, see RELIABILITY.md) keeps logs small.
//! Kill timing depends on the machine, so a seed replays the commands, not every kill.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

mod cli_util;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use cli_util::{Ran, Rng, Sandbox, envelopes, of_type, text};
use serde_json::Value as Json;

const DEVICES: usize = 3;
const FOLDER: &str = "shared";
/// Shared rows every device overwrites (last writer wins).
const HOT_ROWS: u64 = 4;
/// Share of the commands that get `kill -9`, in percent.
const KILL_PERCENT: u64 = 30;
/// A command not killed on purpose that runs this long is a hang: the test fails.
const HANG: Duration = Duration::from_secs(120);

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(v.trim().parse().unwrap_or_else(|e| panic!("{name}={v:?}: {e}")))
}

#[test]
fn devices_killed_at_random_moments_lose_no_acknowledged_write_and_converge() {
    let secs = env_u64("SHOAL_CRASH_SECS").unwrap_or(30);
    let epoch_secs = env_u64("SHOAL_CRASH_EPOCH_SECS").unwrap_or(60).max(5);
    let seed = env_u64("SHOAL_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            as u64
    });
    eprintln!("crash test: SHOAL_CRASH_SEED={seed} SHOAL_CRASH_SECS={secs}");
    let started = Instant::now();
    let mut total = Stats::default();
    let mut epoch = 0u64;
    while epoch == 0 || started.elapsed() < Duration::from_secs(secs) {
        let left = Duration::from_secs(secs).saturating_sub(started.elapsed());
        let len = left.min(Duration::from_secs(epoch_secs)).max(Duration::from_secs(5));
        let epoch_seed = seed.wrapping_add(epoch);
        eprintln!(
            "epoch {epoch}: replay with SHOAL_CRASH_SEED={epoch_seed} SHOAL_CRASH_SECS={} \
             cargo test -p shoal-cli --test crash",
            len.as_secs()
        );
        let stats = run_epoch(epoch_seed, len);
        eprintln!("epoch {epoch}: {stats}");
        total.add(&stats);
        epoch += 1;
    }
    eprintln!(
        "crash test: {epoch} epoch(s) in {:.0} s, seed {seed}: {total}",
        started.elapsed().as_secs_f64()
    );
    // The run must have done what it claims, or it proves nothing.
    assert!(total.kills() >= 5, "too few kills: {total}");
    assert!(total.acked >= 20, "too few acknowledged writes: {total}");
    assert!(total.compactions >= 1, "no compaction seen: {total}");
}

/// Figures of a run.
#[derive(Debug, Default, Clone)]
struct Stats {
    commands: u64,
    acked: u64,
    killed: BTreeMap<&'static str, u64>,
    /// Successful syncs after which the device's own directory held fewer segments than
    /// before (a compaction merged some).
    compactions: u64,
    /// Kills that left overlapping own segments (a compaction cut between writing the
    /// merged segment and removing its parts).
    mid_compaction: u64,
    /// Kills after which a temporary segment file was in the own directory (cut mid-write,
    /// by this kill or an earlier one: the next sync removes it).
    mid_write: u64,
    /// Kills of `init` that left a complete workspace (the others left none).
    init_complete: u64,
}

impl Stats {
    fn kills(&self) -> u64 {
        self.killed.values().sum()
    }

    fn add(&mut self, o: &Stats) {
        self.commands += o.commands;
        self.acked += o.acked;
        for (k, n) in &o.killed {
            *self.killed.entry(k).or_default() += n;
        }
        self.compactions += o.compactions;
        self.mid_compaction += o.mid_compaction;
        self.mid_write += o.mid_write;
        self.init_complete += o.init_complete;
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} commands, {} acknowledged writes, {} kills {:?} ({} inits left a workspace), \
             {} compactions seen, {} kills mid-compaction, {} mid-write",
            self.commands,
            self.acked,
            self.kills(),
            self.killed,
            self.init_complete,
            self.compactions,
            self.mid_compaction,
            self.mid_write
        )
    }
}

/// What a device knows it wrote (acknowledged) or may have written (killed).
#[derive(Debug, Default)]
struct Model {
    /// Rows of `t` only this device writes: key -> expectation.
    unique: BTreeMap<String, Expect>,
    /// Shared rows: key -> acknowledged (HLC, value) and attempted-but-killed values.
    hot_acked: BTreeMap<String, Vec<(u64, String)>>,
    hot_maybe: BTreeMap<String, Vec<String>>,
    /// Counter row `ctr`: acknowledged and killed increments.
    ctr_acked: u64,
    ctr_maybe: u64,
    /// Max row `max`: acknowledged and killed values.
    max_acked: Vec<i64>,
    max_maybe: Vec<i64>,
    /// This device's own tables.
    tables: Vec<OwnTable>,
}

#[derive(Debug, Clone, PartialEq)]
enum Expect {
    Present(String),
    Absent,
    /// A killed command: either.
    Maybe(String),
}

#[derive(Debug)]
struct OwnTable {
    name: String,
    /// Text columns besides the key `id` (acknowledged, or repaired after a kill).
    columns: Vec<String>,
    dropped: bool,
    /// id -> (column, value, acknowledged).
    rows: BTreeMap<u64, (String, String, bool)>,
}

struct Device {
    i: usize,
    /// The workspace file (leaked: a handful per run, borrowed by every command line).
    ws: &'static str,
    rng: Rng,
    seq: u64,
    model: Model,
    stats: Stats,
    /// Typical run time of each kind of command, to draw kill moments from.
    typical: BTreeMap<&'static str, Duration>,
    /// The folder directory of this device's segments, once joined.
    own_dir: Option<PathBuf>,
    watcher: Option<Child>,
    watch_logs: usize,
    /// This device runs a `sync --watch` now and then.
    watches: bool,
}

impl Drop for Device {
    fn drop(&mut self) {
        if let Some(mut c) = self.watcher.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn run_epoch(seed: u64, len: Duration) -> Stats {
    let s = Sandbox::new();
    std::fs::create_dir(s.path(FOLDER)).unwrap();
    let mut master = Rng::new(seed);
    let mut devices: Vec<Device> = (0..DEVICES)
        .map(|i| Device {
            i,
            ws: Box::leak(format!("d{i}.shoal").into_boxed_str()),
            rng: Rng::new(master.next_u64()),
            seq: 0,
            model: Model::default(),
            stats: Stats::default(),
            typical: BTreeMap::new(),
            own_dir: None,
            watcher: None,
            watch_logs: 0,
            watches: i == DEVICES - 1,
        })
        .collect();

    // The first device creates the workspace and the shared table; the others join.
    devices[0].init(&s, None);
    devices[0].create_shared_table(&s);
    devices[0].sync_must_pass(&s);
    let code = s.invite(devices[0].ws, FOLDER);
    for d in &mut devices[1..] {
        d.init(&s, Some(&code));
    }
    for d in &mut devices {
        d.learn_own_dir(&s);
    }

    let deadline = Instant::now() + len;
    while Instant::now() < deadline {
        std::thread::scope(|scope| {
            for d in &mut devices {
                let s = &s;
                scope.spawn(move || d.round(s));
            }
        });
        // Every device is quiet: the folder verifies.
        let (out, err) = run(&s, &["verify", "-w", devices[0].ws, "--folder", FOLDER]);
        assert_eq!(out.status.code(), Some(0), "verify --folder after a round: {err}");
    }

    // A final round of syncs on every device (twice: the last to publish reaches the
    // first on the second pass), then every device holds the same.
    for _ in 0..2 {
        for d in &mut devices {
            d.sync_must_pass(&s);
        }
    }
    check_final(&s, &devices);
    let mut stats = Stats::default();
    for d in &devices {
        stats.add(&d.stats);
    }
    stats
}

/// Runs to the end (no kill); fails on a hang or a panic. Returns the output and stderr.
fn run(s: &Sandbox, args: &[&str]) -> (Output, String) {
    match s.run_or_kill(args, HANG) {
        Ran::Exited(out) => {
            let err = text(&out.stderr);
            check_no_panic(args, &out);
            (out, err)
        }
        Ran::Killed => panic!("shoal {args:?} hung for {HANG:?}"),
    }
}

fn check_no_panic(args: &[&str], out: &Output) {
    let err = text(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(0..=2)) && !err.contains("panicked"),
        "shoal {args:?} ended with {} (a panic?):\nstdout: {}\nstderr: {err}",
        out.status,
        text(&out.stdout)
    );
}

impl Device {
    /// Runs `args`, with `kill -9` at a random moment for a share of the commands when
    /// `may_kill`. Returns `None` when killed (and checks the workspace then).
    fn exec(
        &mut self,
        s: &Sandbox,
        kind: &'static str,
        args: &[&str],
        may_kill: bool,
    ) -> Option<Output> {
        self.stats.commands += 1;
        let typical = *self.typical.get(kind).unwrap_or(&Duration::from_millis(60));
        let kill = may_kill && self.rng.chance(KILL_PERCENT);
        let after = if kill {
            let range = typical.as_micros() as u64 * 13 / 10 + 1;
            Duration::from_micros(self.rng.below(range))
        } else {
            HANG
        };
        let segments_before = self.own_segments();
        let started = Instant::now();
        match s.run_or_kill(args, after) {
            Ran::Exited(out) => {
                check_no_panic(args, &out);
                let took = started.elapsed();
                self.typical.insert(kind, (typical * 4 + took) / 5);
                Some(out)
            }
            Ran::Killed => {
                assert!(kill, "shoal {args:?} hung for {HANG:?}");
                *self.stats.killed.entry(kind).or_default() += 1;
                self.after_kill(s, args, segments_before);
                None
            }
        }
    }

    /// After a kill: the workspace (if any) reopens and verifies; what the kill left in the
    /// folder is counted.
    fn after_kill(&mut self, s: &Sandbox, args: &[&str], segments_before: Vec<(u64, u64)>) {
        if let Some(dir) = &self.own_dir {
            let after = self.own_segments();
            if overlapping(&after) && !overlapping(&segments_before) {
                self.stats.mid_compaction += 1;
            }
            let temp = std::fs::read_dir(dir)
                .unwrap()
                .any(|e| e.unwrap().file_name().to_string_lossy().starts_with('.'));
            if temp {
                self.stats.mid_write += 1;
            }
        }
        if !s.path(self.ws).exists() {
            return; // a killed init that left nothing
        }
        let (out, err) = run(s, &["status", "-w", self.ws]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{} does not reopen after killing {args:?}: {err}",
            self.ws
        );
        let (out, err) = run(s, &["verify", "-w", self.ws]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{} fails verify after killing {args:?}: {err}",
            self.ws
        );
    }

    /// `init` (joining through the folder when `join`), killed at random until a workspace
    /// exists; a killed init leaves none or a complete one.
    fn init(&mut self, s: &Sandbox, invite: Option<&str>) {
        let mut args = vec!["init", "-w", self.ws];
        if let Some(code) = invite {
            args = vec!["join", "-w", self.ws, code, "--folder", FOLDER];
        }
        // How long an init takes here, from one on a scratch path (a device that joins
        // publishes nothing, so the probe adds nothing to the folder).
        let probe = format!("probe-{}.shoal", self.i);
        let mut probe_args = args.clone();
        probe_args[2] = &probe;
        let started = Instant::now();
        let (out, err) = run(s, &probe_args);
        assert_eq!(out.status.code(), Some(0), "{probe_args:?}: {err}");
        let typical = started.elapsed().as_micros() as u64;
        let _ = std::fs::remove_file(s.path(&probe));
        for attempt in 0.. {
            // Kill the first attempt and most others (never after 20: the run must go on).
            let kill = attempt == 0 || (attempt < 20 && self.rng.chance(80));
            let after = if kill {
                Duration::from_micros(self.rng.below(typical * 13 / 10 + 1))
            } else {
                HANG
            };
            self.stats.commands += 1;
            match s.run_or_kill(&args, after) {
                Ran::Exited(out) => {
                    check_no_panic(&args, &out);
                    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out.stderr));
                    return;
                }
                Ran::Killed => assert!(kill, "shoal {args:?} hung for {HANG:?}"),
            }
            *self.stats.killed.entry("init").or_default() += 1;
            if s.path(self.ws).exists() {
                self.stats.init_complete += 1;
                self.after_kill(s, &args, Vec::new());
                if invite.is_some() {
                    // Joined but perhaps not synced yet: the first sync fills it.
                    self.sync_must_pass(s);
                }
                return;
            }
        }
    }

    fn create_shared_table(&mut self, s: &Sandbox) {
        let args = [
            "table",
            "create",
            "-w",
            self.ws,
            "t",
            "--key",
            "id:text",
            "--column",
            "v:text",
            "--counter",
            "n",
            "--max",
            "m:integer",
        ];
        let args: Vec<&str> = args.to_vec();
        if self.exec(s, "table", &args, true).is_none() {
            // Idempotent: running it again completes what the killed one began.
            let (out, err) = run(s, &args);
            assert_eq!(out.status.code(), Some(0), "table create after a kill: {err}");
        }
    }

    fn learn_own_dir(&mut self, s: &Sandbox) {
        let status = s.json(&["status", "-w", self.ws]);
        let w = &of_type(&status, "workspace")[0];
        let dir = s
            .path(FOLDER)
            .join(w["workspace"].as_str().unwrap())
            .join(w["device"].as_str().unwrap());
        self.own_dir = Some(dir);
    }

    /// The (first, last) of every own segment file in the folder.
    fn own_segments(&self) -> Vec<(u64, u64)> {
        let Some(dir) = &self.own_dir else { return Vec::new() };
        let Ok(list) = std::fs::read_dir(dir) else { return Vec::new() };
        let mut out: Vec<(u64, u64)> = list
            .filter_map(|e| {
                let name = e.ok()?.file_name().to_string_lossy().into_owned();
                let first = name.get(0..20)?.parse().ok()?;
                let last = name.get(21..41)?.parse().ok()?;
                (name.as_bytes().get(20) == Some(&b'-')).then_some((first, last))
            })
            .collect();
        out.sort();
        out
    }

    fn sync_must_pass(&mut self, s: &Sandbox) {
        let (out, err) = run(s, &["sync", "-w", self.ws, "--folder", FOLDER]);
        assert_eq!(out.status.code(), Some(0), "sync of {}: {err}", self.ws);
    }

    /// A random number of random commands.
    fn round(&mut self, s: &Sandbox) {
        let steps = 4 + self.rng.below(10);
        for _ in 0..steps {
            self.seq += 1;
            match self.rng.below(100) {
                0..=27 => self.put_unique(s),
                28..=35 => self.delete_unique(s),
                36..=47 => self.put_hot(s),
                48..=55 => self.incr(s),
                56..=59 => self.put_max(s),
                60..=69 => self.table_change(s),
                70..=79 => self.put_own_table(s),
                80..=94 => self.sync(s),
                _ if self.watches => self.toggle_watch(s),
                _ => self.sync(s),
            }
        }
        if self.watcher.is_some() {
            self.toggle_watch(s); // SIGKILL it: the folder is checked between rounds
        }
    }

    /// `put --json`; the commit's HLC when acknowledged.
    fn put(&mut self, s: &Sandbox, args: &[&str]) -> Option<Option<u64>> {
        let mut all = vec!["--json", "put", "-w", self.ws];
        all.extend_from_slice(args);
        let out = self.exec(s, "put", &all, true)?;
        if out.status.code() != Some(0) {
            panic!("shoal {all:?} failed: {}", text(&out.stderr));
        }
        self.stats.acked += 1;
        let commit = of_type(&envelopes(&text(&out.stdout)), "commit");
        Some(commit[0]["hlc"]["raw"].as_str().and_then(|r| r.parse().ok()))
    }

    fn put_unique(&mut self, s: &Sandbox) {
        let (id, v) = (format!("d{}-{}", self.i, self.seq), format!("u{}-{}", self.i, self.seq));
        let acked = self.put(s, &["t", &format!("id={id}"), &format!("v={v}")]).is_some();
        self.model.unique.insert(id, if acked { Expect::Present(v) } else { Expect::Maybe(v) });
    }

    fn delete_unique(&mut self, s: &Sandbox) {
        let present: Vec<String> = self
            .model
            .unique
            .iter()
            .filter(|(_, e)| matches!(e, Expect::Present(_)))
            .map(|(k, _)| k.clone())
            .collect();
        if present.is_empty() {
            return self.put_unique(s);
        }
        let id = present[self.rng.below(present.len() as u64) as usize].clone();
        let args = ["delete", "-w", self.ws, "t", &id];
        let now = match self.exec(s, "delete", &args, true) {
            Some(out) => {
                assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out.stderr));
                self.stats.acked += 1;
                Expect::Absent
            }
            None => match self.model.unique[&id].clone() {
                Expect::Present(v) => Expect::Maybe(v),
                e => e,
            },
        };
        self.model.unique.insert(id, now);
    }

    fn put_hot(&mut self, s: &Sandbox) {
        let id = format!("hot{}", self.rng.below(HOT_ROWS));
        let v = format!("h{}-{}", self.i, self.seq);
        match self.put(s, &["t", &format!("id={id}"), &format!("v={v}")]) {
            Some(hlc) => {
                let hlc = hlc.expect("a commit envelope has the HLC");
                self.model.hot_acked.entry(id).or_default().push((hlc, v));
            }
            None => self.model.hot_maybe.entry(id).or_default().push(v),
        }
    }

    fn incr(&mut self, s: &Sandbox) {
        match self.put(s, &["t", "id=ctr", "n+=1"]) {
            Some(_) => self.model.ctr_acked += 1,
            None => self.model.ctr_maybe += 1,
        }
    }

    fn put_max(&mut self, s: &Sandbox) {
        let m = self.rng.below(1_000_000) as i64;
        match self.put(s, &["t", "id=max", &format!("m={m}")]) {
            Some(_) => self.model.max_acked.push(m),
            None => self.model.max_maybe.push(m),
        }
    }

    /// Creates a table of this device, adds a column to one, renames a column or a table,
    /// or (rarely) drops one.
    fn table_change(&mut self, s: &Sandbox) {
        let live: Vec<usize> =
            (0..self.model.tables.len()).filter(|&t| !self.model.tables[t].dropped).collect();
        let pick = self.rng.below(100);
        if live.is_empty() || pick < 30 {
            let name = format!("d{}x{}", self.i, self.model.tables.len());
            self.model.tables.push(OwnTable {
                name: name.clone(),
                columns: vec!["a".into()],
                dropped: false,
                rows: BTreeMap::new(),
            });
            let t = self.model.tables.len() - 1;
            let args = self.create_args(t);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            if let Some(out) = self.exec(s, "table", &args, true) {
                assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out.stderr));
            } else {
                self.repair_table(s, t);
            }
        } else if pick < 70 {
            let t = live[self.rng.below(live.len() as u64) as usize];
            let col = format!("c{}", self.seq);
            self.model.tables[t].columns.push(col.clone());
            let name = self.model.tables[t].name.clone();
            let args = ["table", "alter", "-w", self.ws, &name, "--column", &format!("{col}:text")];
            let args: Vec<&str> = args.to_vec();
            if let Some(out) = self.exec(s, "table", &args, true) {
                assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out.stderr));
            } else {
                self.repair_table(s, t);
            }
        } else if pick < 82 {
            // Rename a column: its rows keep their values under the new name.
            let t = live[self.rng.below(live.len() as u64) as usize];
            let cols = &self.model.tables[t].columns;
            let old = cols[self.rng.below(cols.len() as u64) as usize].clone();
            let new = format!("r{}", self.seq);
            let name = self.model.tables[t].name.clone();
            let rename = format!("{old}={new}");
            let args = ["table", "alter", "-w", self.ws, &name, "--rename-column", &rename];
            self.alter_once(s, &args, "has no column named");
            let table = &mut self.model.tables[t];
            for c in table.columns.iter_mut().chain(table.rows.values_mut().map(|r| &mut r.0)) {
                if *c == old {
                    c.clone_from(&new);
                }
            }
        } else if pick < 90 {
            let t = live[self.rng.below(live.len() as u64) as usize];
            let name = self.model.tables[t].name.clone();
            let new = format!("d{}x{}r{}", self.i, t, self.seq);
            let args = ["table", "alter", "-w", self.ws, &name, "--rename", &new];
            self.alter_once(s, &args, "no table named");
            self.model.tables[t].name = new;
        } else {
            let t = live[self.rng.below(live.len() as u64) as usize];
            let name = self.model.tables[t].name.clone();
            let args = ["table", "alter", "-w", self.ws, &name, "--drop"];
            self.alter_once(s, &args, "no table named");
            self.model.tables[t].dropped = true;
        }
    }

    /// A table change that may be killed; after a kill it is run again, which either does
    /// it or finds it done (the old name gone: `gone` in the message).
    fn alter_once(&mut self, s: &Sandbox, args: &[&str], gone: &str) {
        if let Some(out) = self.exec(s, "table", args, true) {
            assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out.stderr));
        } else {
            let (out, err) = run(s, args);
            assert!(
                out.status.code() == Some(0)
                    || (out.status.code() == Some(2) && err.contains(gone)),
                "{args:?} after a killed run: {err}"
            );
        }
    }

    fn create_args(&self, t: usize) -> Vec<String> {
        let table = &self.model.tables[t];
        let mut args: Vec<String> =
            ["table", "create", "-w", self.ws, &table.name, "--key", "id:integer"]
                .map(String::from)
                .to_vec();
        for c in &table.columns {
            args.push("--column".into());
            args.push(format!("{c}:text"));
        }
        args
    }

    /// After a killed `table create`/`alter`: `table create` with the whole definition
    /// completes it (idempotent: what exists is left, what is missing is added).
    fn repair_table(&mut self, s: &Sandbox, t: usize) {
        let args = self.create_args(t);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (out, err) = run(s, &args);
        assert_eq!(out.status.code(), Some(0), "{args:?} after a killed table change: {err}");
    }

    fn put_own_table(&mut self, s: &Sandbox) {
        let live: Vec<usize> =
            (0..self.model.tables.len()).filter(|&t| !self.model.tables[t].dropped).collect();
        if live.is_empty() {
            return self.table_change(s);
        }
        let t = live[self.rng.below(live.len() as u64) as usize];
        let cols = self.model.tables[t].columns.clone();
        let col = cols[self.rng.below(cols.len() as u64) as usize].clone();
        let (id, v) = (self.seq, format!("w{}-{}", self.i, self.seq));
        let name = self.model.tables[t].name.clone();
        let acked = self.put(s, &[&name, &format!("id={id}"), &format!("{col}={v}")]).is_some();
        self.model.tables[t].rows.insert(id, (col, v, acked));
    }

    fn sync(&mut self, s: &Sandbox) {
        let before = self.own_segments().len();
        let args = ["sync", "-w", self.ws, "--folder", FOLDER];
        let Some(out) = self.exec(s, "sync", &args, true) else { return };
        let err = text(&out.stderr);
        match out.status.code() {
            Some(0) => {
                if self.watcher.is_none() && self.own_segments().len() < before {
                    self.stats.compactions += 1;
                }
            }
            // The watcher of this device holds the sync lock: refused, as documented.
            Some(2)
                if self.watcher.is_some() && err.contains("another `shoal sync` is running") => {}
            _ => panic!("{args:?} failed ({}): {err}", out.status),
        }
    }

    /// Starts a `sync --watch` of this device, or kills (SIGKILL) the running one.
    fn toggle_watch(&mut self, s: &Sandbox) {
        if let Some(mut child) = self.watcher.take() {
            let _ = child.kill();
            let status = child.wait().unwrap();
            if status.code().is_none() {
                *self.stats.killed.entry("sync --watch").or_default() += 1;
            }
            let log = std::fs::read_to_string(self.watch_log(s, self.watch_logs)).unwrap();
            assert!(!log.contains("panicked"), "sync --watch of {}: {log}", self.ws);
            assert!(
                status.code().is_none() || status.code() == Some(0),
                "sync --watch of {} ended with {status}: {log}",
                self.ws
            );
            self.after_kill(s, &["sync", "--watch"], Vec::new());
        } else {
            self.watch_logs += 1;
            let log = std::fs::File::create(self.watch_log(s, self.watch_logs)).unwrap();
            let child = s
                .cmd(&["sync", "-w", self.ws, "--folder", FOLDER, "--watch"])
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log))
                .spawn()
                .unwrap();
            self.watcher = Some(child);
            self.stats.commands += 1;
        }
    }

    fn watch_log(&self, s: &Sandbox, n: usize) -> PathBuf {
        s.path(&format!("{}.watch-{n}.log", self.ws))
    }
}

/// True if a segment's range lies inside another's.
fn overlapping(segments: &[(u64, u64)]) -> bool {
    let mut sorted = segments.to_vec();
    sorted.sort_by_key(|&(first, last)| (first, std::cmp::Reverse(last)));
    let mut reach = None;
    for (_, last) in sorted {
        if reach.is_some_and(|r| r >= last) {
            return true;
        }
        reach = Some(last);
    }
    false
}

/// Rows of `sql --json` keyed by `id` (as text).
fn rows_by_id(s: &Sandbox, ws: &str, sql: &str) -> BTreeMap<String, Json> {
    of_type(&s.json(&["sql", "-w", ws, sql]), "row")
        .into_iter()
        .map(|r| {
            let values = r["values"].clone();
            let id = match &values["id"] {
                Json::String(s) => s.clone(),
                other => other.to_string(),
            };
            (id, values)
        })
        .collect()
}

fn check_final(s: &Sandbox, devices: &[Device]) {
    // Identical everywhere: every table and row, and every device's progress.
    let dumps: Vec<String> = devices.iter().map(|d| s.dump(d.ws)).collect();
    let progress: Vec<String> = devices
        .iter()
        .map(|d| {
            let mut held: Vec<String> = of_type(&s.json(&["status", "-w", d.ws]), "origin")
                .iter()
                .map(|o| format!("{} {} {}", o["origin"], o["held"], o["applied"]))
                .collect();
            held.sort();
            held.join("\n")
        })
        .collect();
    for (d, dump) in devices.iter().zip(&dumps).skip(1) {
        assert_eq!(dump, &dumps[0], "{} and {} differ after the final syncs", d.ws, devices[0].ws);
    }
    for (d, p) in devices.iter().zip(&progress).skip(1) {
        assert_eq!(p, &progress[0], "{} and {} hold different entries", d.ws, devices[0].ws);
    }
    for d in devices {
        let (out, err) = run(s, &["verify", "-w", d.ws, "--folder", FOLDER]);
        assert_eq!(out.status.code(), Some(0), "final verify of {}: {err}", d.ws);
    }

    let ws = devices[0].ws;
    let t = rows_by_id(s, ws, "SELECT id, v, n, m FROM t");
    let v_of = |id: &str| t.get(id).map(|r| r["v"].as_str().unwrap_or("<not text>").to_owned());

    // Rows only one device wrote: a new row is there with its value, a deleted one gone.
    for d in devices {
        for (id, e) in &d.model.unique {
            let got = v_of(id);
            match e {
                Expect::Present(v) => {
                    assert_eq!(got.as_ref(), Some(v), "acknowledged put of {id} by {}", d.ws)
                }
                Expect::Absent => assert_eq!(got, None, "acknowledged delete of {id} by {}", d.ws),
                Expect::Maybe(v) => {
                    assert!(got.is_none() || got.as_ref() == Some(v), "{id}: {got:?}")
                }
            }
        }
    }

    // Shared rows: the acknowledged value of the highest HLC, unless a killed write (its
    // HLC unknown) won; never anything else.
    for k in 0..HOT_ROWS {
        let id = format!("hot{k}");
        let acked: Vec<&(u64, String)> =
            devices.iter().flat_map(|d| d.model.hot_acked.get(&id).into_iter().flatten()).collect();
        let maybe: BTreeSet<&String> =
            devices.iter().flat_map(|d| d.model.hot_maybe.get(&id).into_iter().flatten()).collect();
        let got = v_of(&id);
        let Some(got) = got else {
            assert!(acked.is_empty(), "{id}: acknowledged writes {acked:?} but no row");
            continue;
        };
        if let Some(best) = acked.iter().max_by_key(|(hlc, _)| *hlc) {
            assert!(
                got == best.1 || maybe.contains(&got),
                "{id} = {got:?}: the acknowledged write of the highest HLC is {best:?} (killed \
                 writes: {maybe:?})"
            );
        } else {
            assert!(maybe.contains(&got), "{id} = {got:?}: never written");
        }
    }

    // The counter adds up every acknowledged increment, and at most the killed ones too.
    let (acked, maybe): (u64, u64) =
        devices.iter().fold((0, 0), |(a, m), d| (a + d.model.ctr_acked, m + d.model.ctr_maybe));
    let n = t.get("ctr").map_or(0, |r| r["n"].as_u64().unwrap());
    assert!(
        acked <= n && n <= acked + maybe,
        "counter {n}: {acked} acknowledged, {maybe} killed increments"
    );

    // The max is at least every acknowledged value, and one of the values written.
    let acked: Vec<i64> = devices.iter().flat_map(|d| d.model.max_acked.clone()).collect();
    let written: BTreeSet<i64> = devices
        .iter()
        .flat_map(|d| d.model.max_acked.iter().chain(&d.model.max_maybe).copied())
        .collect();
    match t.get("max").map(|r| r["m"].as_i64().unwrap()) {
        Some(m) => {
            assert!(written.contains(&m), "max {m} was never written");
            assert!(acked.iter().all(|a| *a <= m), "max {m} below an acknowledged value {acked:?}");
        }
        None => assert!(acked.is_empty(), "acknowledged max writes {acked:?} but no row"),
    }

    // Each device's own tables: a dropped one is gone; a live one has every column added
    // and every acknowledged row.
    let tables = s.json(&["table", "list", "-w", ws]);
    let tables: BTreeMap<String, Vec<String>> = of_type(&tables, "table")
        .iter()
        .map(|t| {
            let cols = t["columns"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].as_str().unwrap().to_owned())
                .collect();
            (t["name"].as_str().unwrap().to_owned(), cols)
        })
        .collect();
    for d in devices {
        for table in &d.model.tables {
            if table.dropped {
                assert!(
                    !tables.contains_key(&table.name),
                    "{} was dropped by {}",
                    table.name,
                    d.ws
                );
                continue;
            }
            let cols = tables
                .get(&table.name)
                .unwrap_or_else(|| panic!("{} of {} is missing", table.name, d.ws));
            for c in &table.columns {
                assert!(cols.contains(c), "{}: column {c} missing ({cols:?})", table.name);
            }
            let rows = rows_by_id(s, ws, &format!("SELECT * FROM \"{}\"", table.name));
            for (id, (col, v, acked)) in &table.rows {
                let got =
                    rows.get(&id.to_string()).map(|r| r[col].as_str().unwrap_or("").to_owned());
                if *acked {
                    assert_eq!(
                        got.as_ref(),
                        Some(v),
                        "acknowledged put of {}.{id}.{col}",
                        table.name
                    );
                } else {
                    assert!(
                        got.is_none() || got.as_ref() == Some(v),
                        "{}.{id}: {got:?}",
                        table.name
                    );
                }
            }
        }
    }
}

/// A long catch-up, killed again and again: one device holds a few thousand entries
/// (written through the library, for speed); its `sync` (publishing them) and then the
/// other device's `sync` (pulling and applying them, in pages) get `kill -9` at random
/// moments until one run completes. After every kill the workspace reopens and verifies;
/// in the end the folder verifies, nothing is missing and both devices are identical.
#[test]
fn a_long_catch_up_killed_again_and_again_resumes_and_loses_nothing() {
    const ROWS: usize = 1500;
    let seed = env_u64("SHOAL_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            as u64
    });
    eprintln!("catch-up crash test: SHOAL_CRASH_SEED={seed}");
    let mut rng = Rng::new(seed);
    let s = Sandbox::new();
    std::fs::create_dir(s.path(FOLDER)).unwrap();
    s.workspace_with_todo("a.shoal");
    s.ok(&["sync", "-w", "a.shoal", "--folder", FOLDER]);
    s.join("b.shoal", "a.shoal", FOLDER);
    {
        let ws =
            shoal::Workspace::open(s.path("a.shoal"), shoal::WorkspaceOptions::default()).unwrap();
        for i in 0..ROWS {
            let mut tx = ws.transaction().unwrap();
            tx.put(
                "todo",
                &[
                    ("id", shoal::Value::Text(format!("r{i:05}"))),
                    ("title", shoal::Value::Text(format!("row {i}"))),
                ],
            )
            .unwrap();
            tx.commit().unwrap();
        }
    }

    let mut kills = 0;
    for ws in ["a.shoal", "b.shoal"] {
        let args = ["sync", "-w", ws, "--folder", FOLDER];
        // Kill within a span that grows by 15% per kill until a run completes.
        let mut span = Duration::from_millis(5);
        let started = Instant::now();
        loop {
            let after = Duration::from_micros(rng.below(span.as_micros() as u64) + 1);
            match s.run_or_kill(&args, after) {
                Ran::Exited(out) => {
                    check_no_panic(&args, &out);
                    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out.stderr));
                    eprintln!(
                        "{ws}: synced after {kills} kills so far, span {span:?}, {:.1} s",
                        started.elapsed().as_secs_f64()
                    );
                    break;
                }
                Ran::Killed => {
                    kills += 1;
                    let (out, err) = run(&s, &["status", "-w", ws]);
                    assert_eq!(out.status.code(), Some(0), "{ws} after a kill: {err}");
                    let (out, err) = run(&s, &["verify", "-w", ws]);
                    assert_eq!(out.status.code(), Some(0), "{ws} after a kill: {err}");
                    span = (span * 23 / 20).min(Duration::from_secs(30));
                }
            }
        }
    }
    eprintln!("catch-up crash test: {kills} kills");
    assert!(kills >= 2, "only {kills} kills");
    s.ok(&["verify", "-w", "b.shoal", "--folder", FOLDER]);
    assert_eq!(s.dump("a.shoal"), s.dump("b.shoal"));
    let n = s.ok(&["sql", "-w", "b.shoal", "SELECT count(*) AS n FROM todo"]);
    assert_eq!(n, format!("n\n{ROWS}\n"));
}
