//! Helpers for the CLI tests: run the real `shoal` binary in a fresh temporary directory,
//! check exit codes, and parse JSON Lines output (asserting the envelope on every line).
#![allow(dead_code)] // each test file uses a different part
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value as Json;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_shoal");

/// A fresh directory to run `shoal` in.
pub struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox { dir: tempfile::tempdir().unwrap() }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A `shoal` command with the sandbox as working directory and a clean environment.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .current_dir(self.dir.path())
            .env_remove("SHOAL_WORKSPACE")
            .env_remove("SHOAL_LOG")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs and asserts exit code 0 with nothing on stderr; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "shoal {args:?} failed:\nstdout: {}\nstderr: {}",
            text(&out.stdout),
            text(&out.stderr)
        );
        assert!(out.stderr.is_empty(), "shoal {args:?} wrote to stderr: {}", text(&out.stderr));
        text(&out.stdout)
    }

    /// Runs and asserts the exit code; returns (stdout, stderr).
    pub fn exits(&self, code: i32, args: &[&str]) -> (String, String) {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "shoal {args:?}:\nstdout: {}\nstderr: {}",
            text(&out.stdout),
            text(&out.stderr)
        );
        (text(&out.stdout), text(&out.stderr))
    }

    /// Runs with --json, asserts exit 0, and returns the parsed envelopes.
    pub fn json(&self, args: &[&str]) -> Vec<(String, Json)> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        envelopes(&self.ok(&all))
    }

    /// A workspace `name` with the table `todo(id TEXT, title TEXT, done INTEGER, votes
    /// COUNTER)`; returns its workspace id.
    pub fn workspace_with_todo(&self, name: &str) -> String {
        let out = self.json(&["init", "-w", name]);
        let id = out[0].1["workspace"].as_str().unwrap().to_owned();
        self.ok(&[
            "table",
            "create",
            "-w",
            name,
            "todo",
            "--key",
            "id:text",
            "--column",
            "title:text",
            "--column",
            "done:integer",
            "--counter",
            "votes",
        ]);
        id
    }

    /// An invite code from the admin workspace `admin` (published to `folder`), for as
    /// many devices as a test needs.
    pub fn invite(&self, admin: &str, folder: &str) -> String {
        let code = self.ok(&["invite", "-w", admin, "--uses", "100", "--folder", folder]);
        code.trim().to_owned()
    }

    /// Creates device `name` joining with an invite of `admin` through `folder` (synced
    /// once); returns its `init`-style envelopes.
    pub fn join(&self, name: &str, admin: &str, folder: &str) -> Vec<(String, Json)> {
        let code = self.invite(admin, folder);
        self.json(&["join", "-w", name, &code, "--folder", folder])
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Parses JSON Lines, asserting that every line is `{"type": <string>, "data": <any>}`
/// and nothing else.
pub fn envelopes(stdout: &str) -> Vec<(String, Json)> {
    stdout
        .lines()
        .map(|line| {
            let v: Json =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"));
            let obj = v.as_object().unwrap_or_else(|| panic!("not an object: {line}"));
            assert_eq!(obj.len(), 2, "an envelope has exactly type and data: {line}");
            let kind = obj["type"].as_str().unwrap_or_else(|| panic!("no type: {line}"));
            assert!(obj.contains_key("data"), "no data: {line}");
            (kind.to_owned(), obj["data"].clone())
        })
        .collect()
}

/// The `data` of every envelope of type `kind`.
pub fn of_type(envelopes: &[(String, Json)], kind: &str) -> Vec<Json> {
    envelopes.iter().filter(|(k, _)| k == kind).map(|(_, d)| d.clone()).collect()
}

/// How a command that may be killed ended.
#[derive(Debug)]
pub enum Ran {
    /// It ended by itself (its output; exit code in `status`).
    Exited(Output),
    /// It was still running at the deadline and got SIGKILL.
    Killed,
}

impl Sandbox {
    /// Runs `shoal args` and sends it SIGKILL (`kill -9`) if it is still running after
    /// `after`. The output is collected either way (pipes, so a killed process leaves
    /// nothing half-written on the test's own stdout).
    pub fn run_or_kill(&self, args: &[&str], after: std::time::Duration) -> Ran {
        let mut child = self
            .cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start shoal {args:?}: {e}"));
        let deadline = std::time::Instant::now() + after;
        loop {
            if child.try_wait().unwrap().is_some() {
                return Ran::Exited(child.wait_with_output().unwrap());
            }
            if std::time::Instant::now() >= deadline {
                // It may end between the check and the signal: then it is not killed.
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                return match out.status.code() {
                    Some(_) => Ran::Exited(out),
                    None => Ran::Killed,
                };
            }
            std::thread::sleep(std::time::Duration::from_micros(500));
        }
    }

    /// Every live table of workspace `ws` with every row, as text (`table list` and one
    /// `sql` per table ordered by its key): equal dumps mean equal visible state.
    pub fn dump(&self, ws: &str) -> String {
        let tables = self.json(&["table", "list", "-w", ws]);
        let mut out = String::new();
        for t in of_type(&tables, "table") {
            let name = t["name"].as_str().unwrap();
            let keys: Vec<String> = t["columns"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["merge"] == "key")
                .map(|c| format!("\"{}\"", c["name"].as_str().unwrap()))
                .collect();
            let sql = format!("SELECT * FROM \"{name}\" ORDER BY {}", keys.join(", "));
            out.push_str(&format!("table {t}\n"));
            out.push_str(&self.ok(&["sql", "--json", "-w", ws, &sql]));
        }
        out
    }
}

/// A small seeded generator (xorshift64*): a failing run replays from its seed (the
/// commands it chose; kill timing still depends on the machine).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // splitmix64 of the seed, never 0.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}
