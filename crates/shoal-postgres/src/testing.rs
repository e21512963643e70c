//! A throwaway PostgreSQL server for tests, started from the installed binaries.
//!
//! Owns: one cluster per [`TestCluster`]: `initdb` into a temporary directory, `postgres`
//! listening only on a Unix socket in that directory, databases made on demand, and the
//! cleanup. [`TestCluster::shared`] is one cluster per test binary (each test takes a fresh
//! database of it); [`TestCluster::start`] is a cluster of one's own (to restart it).
//!
//! The binaries are found through `SHOAL_PG_BINDIR`, `pg_config --bindir`, the newest
//! `/usr/lib/postgresql/*/bin`, or `PATH`. PostgreSQL refuses to run as root: when the tests
//! run as root (CI), the server runs as the `postgres` system user (`setpriv`), which owns the
//! directory. Missing binaries or user are an error saying what to install, never a skip.
//!
//! Cleanup: a small guardian process (`sh`) waits on a pipe from the test process; when the
//! pipe closes (the cluster is dropped, or the test binary exits however it exits, which
//! matters for the shared cluster: statics are never dropped) it stops the server (fast
//! shutdown) and deletes the directory.
//!
//! Never: touches a server it did not start, listens on TCP, or outlives its test process.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The port number of the socket (`.s.PGSQL.<port>`; no TCP is opened).
const PORT: u16 = 5432;

/// How long the server may take to start or stop.
const WAIT: Duration = Duration::from_secs(60);

/// A PostgreSQL server of one's own, in a temporary directory (see the module doc).
#[derive(Debug)]
pub struct TestCluster {
    dir: PathBuf,
    bin: PathBuf,
    /// `Some(user)` when the server runs as another user (the tests run as root).
    run_as: Option<String>,
    server: Mutex<Option<Child>>,
    /// Closing it tells the guardian to clean up.
    guardian: Mutex<Option<(ChildStdin, Child)>>,
    databases: AtomicU32,
}

fn output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The directory holding `initdb` and `postgres`.
pub fn find_bindir() -> Result<PathBuf, String> {
    let has = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    if let Some(d) = std::env::var_os("SHOAL_PG_BINDIR") {
        let d = PathBuf::from(d);
        return if has(&d) {
            Ok(d)
        } else {
            Err(format!("SHOAL_PG_BINDIR={} holds no initdb and postgres", d.display()))
        };
    }
    if let Ok(d) = output(Command::new("pg_config").arg("--bindir")) {
        let d = PathBuf::from(d);
        if has(&d) {
            return Ok(d);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, d)| has(d))
        .collect();
    versions.sort();
    if let Some((_, d)) = versions.pop() {
        return Ok(d);
    }
    for d in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        if has(&d) {
            return Ok(d);
        }
    }
    Err("the PostgreSQL server binaries (initdb, postgres) are not installed: install the \
         Debian package `postgresql` (scripts/setup does, as root), or set SHOAL_PG_BINDIR"
        .into())
}

fn euid() -> Result<u32, String> {
    output(Command::new("id").arg("-u"))?.parse().map_err(|e| format!("id -u: {e}"))
}

impl TestCluster {
    /// The cluster of this test binary, started on first use (see the module doc).
    pub fn shared() -> Result<&'static TestCluster, String> {
        static SHARED: OnceLock<Result<TestCluster, String>> = OnceLock::new();
        SHARED.get_or_init(TestCluster::start).as_ref().map_err(Clone::clone)
    }

    /// Makes and starts a new cluster. Slow (initdb): about a second.
    pub fn start() -> Result<TestCluster, String> {
        let bin = find_bindir()?;
        let run_as = if euid()? == 0 {
            output(Command::new("id").args(["-u", "postgres"])).map_err(|_| {
                "the tests run as root, and PostgreSQL refuses to: they run it as the `postgres` \
                 user, which does not exist (the Debian package `postgresql` creates it)"
                    .to_owned()
            })?;
            Some("postgres".to_owned())
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("shoal-pg-")
            .tempdir()
            .map_err(|e| format!("cannot make a temporary directory: {e}"))?
            .keep();
        let mut cluster = TestCluster {
            dir,
            bin,
            run_as,
            server: Mutex::new(None),
            guardian: Mutex::new(None),
            databases: AtomicU32::new(0),
        };
        cluster.spawn_guardian()?;
        if let Some(user) = &cluster.run_as {
            output(Command::new("chown").arg(format!("{user}:")).arg(&cluster.dir))?;
        }
        let data = cluster.data();
        let mut initdb = cluster.command("initdb");
        initdb.arg("-D").arg(&data).args(["-U", "postgres", "-A", "trust", "-E", "UTF8"]);
        initdb.args(["--no-locale", "--no-sync", "--no-instructions"]);
        output(&mut initdb)?;
        cluster.start_server()?;
        Ok(cluster)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// A command running `program` of the server's binaries, as the server's user.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={user}"))
                    .arg(format!("--regid={user}"))
                    .arg("--init-groups")
                    .arg("--")
                    .arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    fn spawn_guardian(&mut self) -> Result<(), String> {
        // Waits for the pipe to close, then stops the server (SIGINT: fast shutdown) if it
        // runs, waits for it, and deletes the directory.
        let script = r#"
            cat >/dev/null
            pid=$(head -n 1 "$1/data/postmaster.pid" 2>/dev/null)
            if [ -n "$pid" ] && kill -INT "$pid" 2>/dev/null; then
                i=0
                while kill -0 "$pid" 2>/dev/null && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
                kill -KILL "$pid" 2>/dev/null
            fi
            rm -rf "$1"
        "#;
        let mut child = Command::new("sh")
            .args(["-c", script, "shoal-pg-guardian"])
            .arg(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the cleanup process (sh): {e}"))?;
        let stdin = child.stdin.take().ok_or("the cleanup process has no stdin")?;
        *self.guardian.get_mut().unwrap_or_else(|p| p.into_inner()) = Some((stdin, child));
        Ok(())
    }

    fn start_server(&self) -> Result<(), String> {
        let mut server = self.server.lock().unwrap_or_else(|p| p.into_inner());
        if server.is_some() {
            return Err("the server is running".into());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .map_err(|e| format!("cannot open the server log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("cannot open the server log: {e}"))?;
        let mut cmd = self.command("postgres");
        cmd.arg("-D").arg(self.data()).arg("-k").arg(&self.dir);
        cmd.args(["-p", &PORT.to_string(), "-c", "listen_addresses="]);
        // A test server: durability does not matter, speed does.
        cmd.args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]);
        cmd.args(["-c", "max_connections=200"]);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("cannot start postgres: {e}"))?;
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("postgres exited ({status}) at start: {}", self.log()));
            }
            let ready = Command::new(self.bin.join("pg_isready"))
                .arg("-q")
                .arg("-h")
                .arg(&self.dir)
                .args(["-p", &PORT.to_string(), "-U", "postgres", "-d", "postgres"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!(
                    "postgres did not accept connections in {WAIT:?}: {}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        *server = Some(child);
        Ok(())
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Stops the server (fast shutdown: open connections are closed) and waits for it.
    pub fn stop(&self) -> Result<(), String> {
        let mut server = self.server.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mut child) = server.take() else { return Ok(()) };
        output(Command::new("kill").arg("-INT").arg(child.id().to_string()))?;
        let deadline = Instant::now() + WAIT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("postgres did not stop in {WAIT:?}"));
                }
            }
        }
    }

    /// Stops the server and starts it again on the same directory and socket.
    pub fn restart(&self) -> Result<(), String> {
        self.stop()?;
        self.start_server()
    }

    /// Starts the server after [`TestCluster::stop`].
    pub fn resume(&self) -> Result<(), String> {
        self.start_server()
    }

    /// The connection string of database `db` (Unix socket, user `postgres`, no password).
    pub fn url(&self, db: &str) -> String {
        format!("host={} port={PORT} user=postgres dbname={db}", self.dir.display())
    }

    /// Creates a new, empty database and returns its connection string.
    pub async fn fresh_database(&self) -> Result<String, String> {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let db = format!("t{n}");
        let (client, conn) = tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("cannot connect to the test server: {e}"))?;
        let driver = tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .map_err(|e| format!("cannot create database {db}: {e}"))?;
        drop(client);
        let _ = driver.await;
        Ok(self.url(&db))
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let _ = self.stop();
        if let Some((mut stdin, mut child)) =
            self.guardian.get_mut().unwrap_or_else(|p| p.into_inner()).take()
        {
            let _ = stdin.flush();
            drop(stdin);
            let _ = child.wait();
        }
    }
}
