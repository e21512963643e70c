//! The relay as real processes on loopback: `shoal serve` (SQLite, and PostgreSQL from the
//! test harness) with devices driven through the CLI, raw protocol clients for the attacks a
//! device cannot make, and faults: a relay killed mid-push, a watcher killed mid-push, relay
//! restarts under watchers, a client that never reads, PostgreSQL restarted under load, two
//! relay nodes over one database.
//!
//! Every process a test starts is killed when the test ends, however it ends ([`Proc`]).
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

mod cli_util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cli_util::{BIN, Rng, Sandbox, text};
use futures::{SinkExt, StreamExt};
use shoal::core::codec::Encode;
use shoal::core::{DeviceKey, PeerId, WorkspaceId};
use shoal::relay::auth::auth_message;
use shoal::relay::frame::{
    Access, Frame, PROTOCOL_VERSION, RefuseCode, RelayId, Request, Response,
};
use shoal::{Value, Workspace, WorkspaceOptions};
use tokio_tungstenite::tungstenite::Message;

// ---------------------------------------------------------------------------------------
// Processes

/// A child process killed (SIGKILL) and reaped when dropped.
struct Proc {
    child: Child,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. "TERM", "KILL").
    fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} {}", self.pid());
    }

    /// Waits up to `limit` for the process to end; its exit code (`None`: killed by a signal).
    fn wait_for(&mut self, limit: Duration) -> Option<Option<i32>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status.code());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `shoal serve` process.
struct Relay {
    proc: Proc,
    /// `ws://127.0.0.1:PORT`.
    url: String,
    addr: SocketAddr,
    db: String,
    /// Its first line of output.
    banner: String,
    /// Its stderr, in a file.
    log: std::path::PathBuf,
    // Kept open so the relay never writes to a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

static RELAYS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Starts `shoal serve --listen LISTEN --db DB EXTRA...` in `s` and reads its URL from its
/// first line of output.
fn serve_on(s: &Sandbox, listen: &str, db: &str, extra: &[&str]) -> Relay {
    let n = RELAYS.fetch_add(1, Ordering::Relaxed);
    let log = s.path(&format!("relay-{n}.log"));
    let mut args = vec!["serve", "--listen", listen, "--db", db];
    args.extend_from_slice(extra);
    let mut child = s
        .cmd(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .env("SHOAL_LOG", "shoal_relay=info")
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let proc = Proc { child };
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let prefix = "shoal relay listening on ";
    let Some(rest) = line.strip_prefix(prefix) else {
        panic!(
            "shoal serve {args:?} printed {line:?}; stderr: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    };
    let url = rest.split_whitespace().next().unwrap().to_owned();
    assert!(rest.contains("(storage: "), "{line}");
    let addr: SocketAddr = url.strip_prefix("ws://").unwrap().parse().unwrap();
    Relay { proc, url, addr, db: db.to_owned(), banner: line, log, _stdout: stdout }
}

/// A relay on a free port of loopback, over `db`.
fn serve(s: &Sandbox, db: &str, extra: &[&str]) -> Relay {
    serve_on(s, "127.0.0.1:0", db, extra)
}

/// A relay over a new SQLite file in `s`.
fn serve_sqlite(s: &Sandbox, extra: &[&str]) -> Relay {
    let n = RELAYS.load(Ordering::Relaxed);
    let db = format!("sqlite:{}", s.path(&format!("relay-{n}.db")).display());
    serve(s, &db, extra)
}

impl Relay {
    /// `kill -9`, then a new relay on the same port and database.
    fn crash_and_restart(self, s: &Sandbox) -> Relay {
        let (addr, db) = (self.addr, self.db.clone());
        drop(self);
        serve_on(s, &addr.to_string(), &db, &[])
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.proc.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    fn metrics(&self) -> String {
        let (code, body) = http_get(self.addr, "/metrics");
        assert_eq!(code, 200, "{body}");
        body
    }
}

/// `GET path` over HTTP/1.1: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    c.read_to_string(&mut raw).unwrap();
    let code = raw.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (code, body)
}

/// The value of the metric line starting with `name` (0 when absent: never incremented).
fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .map(|l| l.split_whitespace().last().unwrap().parse().unwrap())
        .unwrap_or(0.0)
}

const ENTRIES_IN: &str = "shoal_relay_entries_total{direction=\"in\"}";
const ENTRIES_OUT: &str = "shoal_relay_entries_total{direction=\"out\"}";

/// `shoal sync -w WS --server URL --watch`, its output in `WS.watch.log`.
fn watch(s: &Sandbox, ws: &str, url: &str) -> Proc {
    let log = std::fs::File::create(s.path(&format!("{ws}.watch.log"))).unwrap();
    let child = s
        .cmd(&["sync", "-w", ws, "--server", url, "--watch"])
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    Proc { child }
}

fn watch_log(s: &Sandbox, ws: &str) -> String {
    std::fs::read_to_string(s.path(&format!("{ws}.watch.log"))).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Devices

/// An admin device `a.shoal` with the `todo` table, synced to the relay, and `others`
/// devices joined through the relay with one invite; returns their workspace id.
fn devices(s: &Sandbox, url: &str, others: &[&str]) -> String {
    let id = s.workspace_with_todo("a.shoal");
    s.ok(&["sync", "-w", "a.shoal", "--server", url, "--wait"]);
    if others.is_empty() {
        return id;
    }
    // Without --folder the invite is published by the next sync (and says so on stderr).
    let (code, err) = s.exits(0, &["invite", "-w", "a.shoal", "--uses", "10"]);
    assert!(err.contains("published with this device's next `shoal sync`"), "{err}");
    s.ok(&["sync", "-w", "a.shoal", "--server", url, "--wait"]);
    for ws in others {
        s.exits(0, &["join", "-w", ws, code.trim()]);
        let out = s.ok(&["sync", "-w", ws, "--server", url, "--wait"]);
        assert!(out.contains("the relay holds everything"), "{out}");
    }
    id
}

fn put(s: &Sandbox, ws: &str, id: &str, title: &str) {
    s.ok(&["put", "-w", ws, "todo", &format!("id={id}"), &format!("title={title}")]);
}

fn rows(s: &Sandbox, ws: &str) -> String {
    s.ok(&["sql", "--json", "-w", ws, "SELECT id, title, votes FROM todo ORDER BY id"])
}

fn count(s: &Sandbox, ws: &str) -> u64 {
    let out = s.ok(&["sql", "--json", "-w", ws, "SELECT count(*) AS n FROM todo"]);
    cli_util::envelopes(&out)[0].1["values"]["n"].as_u64().unwrap()
}

fn has_row(s: &Sandbox, ws: &str, id: &str) -> bool {
    s.run(&["get", "-w", ws, "todo", id]).status.code() == Some(0)
}

/// Polls `cond` every 50 ms until it holds; panics with `what` after `limit`.
fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes `n` rows `PREFIX00000...` to `todo`, one entry each, through the library (a
/// process per write would take minutes); titles of `size` random hex characters, so
/// the entries do not compress.
fn write_many(path: &Path, prefix: &str, n: usize, size: usize) {
    let ws = Workspace::open(path, WorkspaceOptions::default()).unwrap();
    let mut rng = Rng::new(n as u64);
    for i in 0..n {
        let title: String = (0..size / 16).map(|_| format!("{:016x}", rng.next_u64())).collect();
        let mut tx = ws.transaction().unwrap();
        tx.put(
            "todo",
            &[
                ("id", Value::text(format!("{prefix}{i:05}")).unwrap()),
                ("title", Value::text(title).unwrap()),
            ],
        )
        .unwrap();
        tx.commit().unwrap();
    }
}

/// The device key and workspace of a workspace file (what a raw client signs with).
fn identity(s: &Sandbox, ws: &str) -> (DeviceKey, WorkspaceId, PeerId) {
    let w = Workspace::open_read_only(s.path(ws), WorkspaceOptions::default()).unwrap();
    let key = w.replica().device_key().cloned().unwrap();
    (key, w.id(), w.device().unwrap())
}

fn device_id(s: &Sandbox, ws: &str) -> String {
    identity(s, ws).2.to_hex()
}

// ---------------------------------------------------------------------------------------
// Raw protocol clients

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// The next frame, `None` when the relay closed the connection.
async fn recv(ws: &mut Ws) -> Option<Frame> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("the relay said nothing for 10 s");
        match msg {
            Some(Ok(Message::Binary(b))) => return Some(Frame::decode(&b).unwrap()),
            Some(Ok(Message::Text(t))) => panic!("text from the relay: {t}"),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

async fn send(ws: &mut Ws, frame: &Frame) {
    ws.send(Message::Binary(frame.to_bytes().into())).await.unwrap();
}

/// Connects and reads the relay's `Hello`: (socket, relay id, challenge).
async fn hello(url: &str) -> (Ws, RelayId, [u8; 32]) {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{url}/v1/sync")).await.unwrap();
    match recv(&mut ws).await {
        Some(Frame::Hello { relay, challenge, version, .. }) => {
            assert_eq!(version, PROTOCOL_VERSION);
            (ws, relay, challenge)
        }
        other => panic!("expected hello, got {other:?}"),
    }
}

fn auth(key: &DeviceKey, workspace: WorkspaceId, relay: RelayId, challenge: [u8; 32]) -> Frame {
    let peer = key.peer_id(&workspace);
    let signature = key.sign(&auth_message(&relay, &challenge, &workspace, &peer));
    Frame::Auth { version: PROTOCOL_VERSION, workspace, key: key.public_key(), signature }
}

/// Connects and authenticates; returns the socket and the `Welcome`'s access.
async fn connect(url: &str, key: &DeviceKey, workspace: WorkspaceId) -> (Ws, Access) {
    let (mut ws, relay, challenge) = hello(url).await;
    send(&mut ws, &auth(key, workspace, relay, challenge)).await;
    match recv(&mut ws).await {
        Some(Frame::Welcome { access, cursors }) => {
            if access == Access::Entrant {
                assert!(cursors.is_empty(), "an entrant learns nothing: {cursors:?}");
            }
            (ws, access)
        }
        other => panic!("expected welcome, got {other:?}"),
    }
}

/// Reads until the relay refuses: its code and message; `None` if it closed the
/// connection without saying why.
async fn refusal(ws: &mut Ws) -> Option<(RefuseCode, String)> {
    loop {
        match recv(ws).await {
            Some(Frame::Refused { code, message }) => return Some((code, message)),
            Some(_) => {}
            None => return None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// 1. Convergence

#[test]
fn three_devices_converge_through_a_relay_by_the_cli() {
    let s = Sandbox::new();
    let relay = serve_sqlite(&s, &[]);
    let url = relay.url.as_str();
    let init = s.ok(&["init", "-w", "solo.shoal"]);
    assert!(init.contains("members only"), "a new workspace is members-only by default: {init}");
    devices(&s, url, &["b.shoal", "c.shoal"]);
    // Each device writes, one row all three write, a counter all three add to.
    for (ws, id) in [("a.shoal", "ta"), ("b.shoal", "tb"), ("c.shoal", "tc")] {
        put(&s, ws, id, &format!("from {ws}"));
        s.ok(&["put", "-w", ws, "todo", "id=shared", "votes+=1"]);
        s.ok(&["sync", "-w", ws, "--server", url, "--wait"]);
    }
    for ws in ["a.shoal", "b.shoal", "c.shoal"] {
        s.ok(&["sync", "-w", ws, "--server", url]);
    }
    let a = rows(&s, "a.shoal");
    assert_eq!(rows(&s, "b.shoal"), a);
    assert_eq!(rows(&s, "c.shoal"), a);
    assert_eq!(s.dump("b.shoal"), s.dump("a.shoal"));
    for id in ["\"ta\"", "\"tb\"", "\"tc\""] {
        assert!(a.contains(id), "{a}");
    }
    assert!(a.contains("\"votes\":3"), "three increments, one from each device: {a}");
    // The admin sees both devices as active members.
    let members = s.ok(&["members", "-w", "a.shoal"]);
    assert_eq!(members.matches("active").count(), 3, "{members}");
}

// ---------------------------------------------------------------------------------------
// 2. --wait

#[test]
fn wait_exits_0_once_the_relay_holds_everything_and_2_when_it_is_gone() {
    let s = Sandbox::new();
    let relay = serve_sqlite(&s, &[]);
    let url = relay.url.clone();
    devices(&s, &url, &[]);
    put(&s, "a.shoal", "t1", "one");
    let out = s.ok(&["sync", "-w", "a.shoal", "--server", &url, "--wait", "--timeout", "2s"]);
    assert!(out.contains("pushed 1 entry") && out.contains("the relay holds everything"), "{out}");

    drop(relay); // kill -9
    put(&s, "a.shoal", "t2", "two");
    let started = Instant::now();
    let (_, err) =
        s.exits(2, &["sync", "-w", "a.shoal", "--server", &url, "--wait", "--timeout", "2s"]);
    let took = started.elapsed();
    assert!(
        err.contains(&format!("relay {url} did not confirm every local entry within 2 s"))
            && err.contains("cannot connect"),
        "{err}"
    );
    assert!(took >= Duration::from_millis(1900) && took < Duration::from_secs(8), "{took:?}");

    // Never started: the same.
    let (_, err) = s.exits(
        2,
        &["sync", "-w", "a.shoal", "--server", "ws://127.0.0.1:1", "--wait", "--timeout", "1s"],
    );
    assert!(err.contains("did not confirm every local entry within 1 s"), "{err}");
}

// ---------------------------------------------------------------------------------------
// 3. A relay killed mid-push

#[test]
fn a_relay_killed_mid_push_restarts_on_its_database_and_loses_nothing() {
    const N: usize = 3000;
    let s = Sandbox::new();
    let mut relay = serve_sqlite(&s, &[]);
    let url = relay.url.clone();
    devices(&s, &url, &["b.shoal"]);
    write_many(&s.path("a.shoal"), "r", N, 1024);
    let before = metric(&relay.metrics(), ENTRIES_IN);

    let mut push = Proc {
        child: s
            .cmd(&["sync", "-w", "a.shoal", "--server", &url, "--wait", "--timeout", "40s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    };
    // Kill the relay once it has stored part of the push.
    let deadline = Instant::now() + Duration::from_secs(20);
    let stored = loop {
        let n = metric(&relay.metrics(), ENTRIES_IN) - before;
        if n > 0.0 {
            break n;
        }
        assert!(Instant::now() < deadline, "the relay stored nothing of the push");
        std::thread::sleep(Duration::from_millis(2));
    };
    relay.proc.signal("KILL");
    assert!(stored < N as f64, "the push ended before the kill ({stored} entries): make it longer");
    relay.proc.wait_for(Duration::from_secs(5)).unwrap();
    relay = relay.crash_and_restart(&s);

    // The waiting sync reconnects to the restarted relay and finishes.
    let code = push.wait_for(Duration::from_secs(40)).expect("sync --wait did not end");
    let mut out = String::new();
    push.child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let mut err = String::new();
    push.child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}\nrelay: {}", relay.stderr());
    assert!(out.contains("the relay holds everything"), "{out}");

    // Another device takes everything, each entry once.
    let pulled = s.ok(&["sync", "-w", "b.shoal", "--server", &url]);
    assert!(pulled.contains("the relay holds everything"), "{pulled}");
    assert_eq!(count(&s, "b.shoal"), N as u64);
    assert_eq!(s.dump("b.shoal"), s.dump("a.shoal"));
    for ws in ["a.shoal", "b.shoal"] {
        s.ok(&["verify", "-w", ws]);
    }
    // The relay stored every entry of a's log exactly once.
    let path = relay.db.strip_prefix("sqlite:").unwrap().to_owned();
    let origin = identity(&s, "a.shoal").2;
    drop(relay);
    let db = rusqlite::Connection::open(path).unwrap();
    let (rows, distinct, max): (i64, i64, i64) = db
        .query_row(
            "SELECT count(*), count(DISTINCT idx), max(idx) FROM relay_entries WHERE origin = ?1",
            [origin.as_bytes().to_vec()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((rows, distinct), (max + 1, max + 1), "a hole or a duplicate at the relay");
}

// ---------------------------------------------------------------------------------------
// 4. A watcher killed mid-push

#[test]
fn a_watcher_killed_mid_push_loses_no_acknowledged_write() {
    let s = Sandbox::new();
    let relay = serve_sqlite(&s, &[]);
    let url = relay.url.clone();
    devices(&s, &url, &["b.shoal"]);
    let mut acked = Vec::new();
    let mut i = 0;
    let mut write = |s: &Sandbox, acked: &mut Vec<String>, n: usize| {
        for _ in 0..n {
            let id = format!("k{i:03}");
            i += 1;
            let out = s.run(&["put", "-w", "a.shoal", "todo", &format!("id={id}"), "title=w"]);
            if out.status.code() == Some(0) {
                acked.push(id);
            }
        }
    };
    for _ in 0..4 {
        let mut watcher = watch(&s, "a.shoal", &url);
        write(&s, &mut acked, 6);
        // Whatever it is doing (most likely pushing the writes just made): kill -9.
        watcher.signal("KILL");
        watcher.wait_for(Duration::from_secs(5)).unwrap();
        write(&s, &mut acked, 4);
    }
    let _watcher = watch(&s, "a.shoal", &url);
    assert!(acked.len() >= 30, "most writes succeed: {acked:?}");
    eventually(Duration::from_secs(15), "b has every acknowledged write", || {
        s.ok(&["sync", "-w", "b.shoal", "--server", &url]);
        acked.iter().all(|id| has_row(&s, "b.shoal", id))
    });
    assert_eq!(count(&s, "b.shoal"), acked.len() as u64, "{}", rows(&s, "b.shoal"));
    s.ok(&["verify", "-w", "b.shoal"]);
}

// ---------------------------------------------------------------------------------------
// 5. Relay restarts under watchers

#[test]
fn watchers_reconnect_and_resume_after_the_relay_restarts() {
    let s = Sandbox::new();
    let mut relay = serve_sqlite(&s, &[]);
    let url = relay.url.clone();
    devices(&s, &url, &["b.shoal"]);
    let mut wa = watch(&s, "a.shoal", &url);
    let mut wb = watch(&s, "b.shoal", &url);
    let live = |from: &str, to: &str, id: &str| {
        put(&s, from, id, "live");
        let took =
            eventually(Duration::from_secs(20), &format!("{id} from {from} at {to}"), || {
                has_row(&s, to, id)
            });
        assert!(
            took < Duration::from_secs(5),
            "{id} took {took:?} from {from} to {to}\n{}\n{}",
            watch_log(&s, "a.shoal"),
            watch_log(&s, "b.shoal")
        );
    };
    live("a.shoal", "b.shoal", "before");

    // A graceful stop (SIGTERM) with both watchers connected, then a start on the same
    // port and database.
    relay.proc.signal("TERM");
    let stopped = relay.proc.wait_for(Duration::from_secs(5));
    assert_eq!(stopped, Some(Some(0)), "the relay did not stop on SIGTERM: {}", relay.stderr());
    relay = serve_on(&s, &relay.addr.to_string(), &relay.db.clone(), &[]);
    live("a.shoal", "b.shoal", "after-term");
    live("b.shoal", "a.shoal", "back-after-term");

    // A crash (kill -9), then a start again.
    relay = relay.crash_and_restart(&s);
    live("a.shoal", "b.shoal", "after-kill");
    live("b.shoal", "a.shoal", "back-after-kill");

    assert!(wa.running() && wb.running(), "a watcher exited");
    drop(relay);
}

// ---------------------------------------------------------------------------------------
// 6. A client that never reads

#[test]
fn a_client_that_never_reads_costs_the_relay_bounded_memory_and_delays_nobody() {
    let s = Sandbox::new();
    let relay = serve_sqlite(&s, &[]);
    let url = relay.url.clone();
    devices(&s, &url, &["b.shoal"]);
    // A log of about 4 MB: every read of it from 0 is a 256 KiB page.
    write_many(&s.path("a.shoal"), "big", 2000, 2048);
    s.ok(&["sync", "-w", "a.shoal", "--server", &url, "--wait"]);
    let (key, workspace, origin) = identity(&s, "a.shoal");
    let out_before = metric(&relay.metrics(), ENTRIES_OUT);

    // The slow client: a member asking for the whole log thousands of times, never reading.
    let rt = runtime();
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (ws, access) = rt.block_on(connect(&url, &key, workspace));
    assert_eq!(access, Access::Member);
    let (mut sink, stream) = ws.split();
    let counter = sent.clone();
    rt.spawn(async move {
        let _unread = stream; // held open, never read
        for id in 0..3000u64 {
            let f = Frame::Request { id, request: Request::Read { origin, from: 0 } };
            if sink.send(Message::Binary(f.to_bytes().into())).await.is_err() {
                break;
            }
            counter.fetch_add(1, Ordering::Relaxed);
        }
        std::future::pending::<()>().await;
    });

    // Meanwhile the other devices sync as usual, and the relay's memory stays bounded.
    let mut peak = 0;
    for round in 0..5 {
        peak = peak.max(relay.rss_kib());
        let started = Instant::now();
        put(&s, "b.shoal", &format!("b{round}"), "normal");
        s.ok(&["sync", "-w", "b.shoal", "--server", &url, "--wait", "--timeout", "5s"]);
        s.ok(&["sync", "-w", "a.shoal", "--server", &url]);
        assert!(has_row(&s, "a.shoal", &format!("b{round}")));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "round {round}: {:?}",
            started.elapsed()
        );
        peak = peak.max(relay.rss_kib());
        std::thread::sleep(Duration::from_millis(200));
    }
    let served = metric(&relay.metrics(), ENTRIES_OUT) - out_before;
    let sent = sent.load(Ordering::Relaxed);
    assert!(served > 1000.0, "the slow client's reads were served (in part): {served}");
    // Once the socket buffers are full the relay stops serving it: all 3000 pages would be
    // some 360 000 entries.
    assert!(served < 100_000.0, "the relay kept serving a client that does not read: {served}");
    assert!(
        peak < 200 * 1024,
        "relay RSS peaked at {peak} KiB after {sent} requests ({served} entries served)"
    );
    assert_eq!(http_get(relay.addr, "/healthz").0, 200);
    // A client that reads nothing is dead to the relay like a silent one (DESIGN §9:
    // heartbeats detect dead peers): its connection is closed, not held for ever.
    let metrics = eventually(Duration::from_secs(30), "the slow client is dropped", || {
        metric(&relay.metrics(), "shoal_relay_connections") == 0.0
    });
    let refused = relay.metrics();
    assert_eq!(metric(&refused, "shoal_relay_refused_total{reason=\"timeout\"}"), 1.0, "{refused}");
    assert!(metrics < Duration::from_secs(25), "{metrics:?}");
    drop(rt);
}

// ---------------------------------------------------------------------------------------
// 7. Attacks

#[test]
fn a_device_of_another_workspace_is_an_entrant_and_reads_nothing() {
    let s = Sandbox::new();
    let relay = serve_sqlite(&s, &[]);
    let url = relay.url.clone();
    devices(&s, &url, &[]);
    s.json(&["init", "-w", "x.shoal"]);
    let (_, workspace, origin) = identity(&s, "a.shoal");
    let (stranger, _, _) = identity(&s, "x.shoal");
    let peer = stranger.peer_id(&workspace).to_hex();
    let rt = runtime();
    rt.block_on(async {
        let (mut ws, access) = connect(&url, &stranger, workspace).await;
        assert_eq!(access, Access::Entrant);
        for (id, request) in [(1, Request::Read { origin, from: 0 }), (2, Request::Cursors)] {
            send(&mut ws, &Frame::Request { id, request }).await;
            match recv(&mut ws).await {
                Some(Frame::Response {
                    id: got,
                    response: Response::Error { code: RefuseCode::NotAMember, message },
                }) => {
                    assert_eq!(got, id);
                    assert!(message.contains(&peer), "{message}");
                }
                other => panic!("an entrant's read was answered: {other:?}"),
            }
        }
    });
}

#[test]
fn a_removed_device_is_refused_by_name() {
    let s = Sandbox::new();
    let relay = serve_sqlite(&s, &[]);
    let url = relay.url.clone();
    devices(&s, &url, &["b.shoal"]);
    let b = device_id(&s, "b.shoal");
    s.ok(&["sync", "-w", "a.shoal", "--server", &url]); // a learns of b's join
    s.ok(&["remove", "-w", "a.shoal", &b]);
    s.ok(&["sync", "-w", "a.shoal", "--server", &url, "--wait"]);
    put(&s, "b.shoal", "late", "after removal");
    let (_, err) = s.exits(2, &["sync", "-w", "b.shoal", "--server", &url]);
    assert!(
        err.contains(&format!("device {b} was removed")) && err.contains("NotAMember"),
        "{err}"
    );
    s.ok(&["sync", "-w", "a.shoal", "--server", &url]);
    assert!(!has_row(&s, "a.shoal", "late"));
}

#[test]
fn relay_auth_replayed_or_made_for_another_relay_is_refused() {
    let s = Sandbox::new();
    let relay = serve_sqlite(&s, &[]);
    let other = serve_sqlite(&s, &[]);
    let url = relay.url.clone();
    devices(&s, &url, &[]);
    let (key, workspace, peer) = identity(&s, "a.shoal");
    let rt = runtime();
    rt.block_on(async {
        // A signature seen on one connection, replayed on another.
        let (mut first, relay_id, challenge) = hello(&url).await;
        let signed = auth(&key, workspace, relay_id, challenge);
        send(&mut first, &signed).await;
        assert!(matches!(
            recv(&mut first).await,
            Some(Frame::Welcome { access: Access::Member, .. })
        ));
        let (mut replay, _, _) = hello(&url).await;
        send(&mut replay, &signed).await;
        let (code, message) = refusal(&mut replay).await.expect("no refusal");
        assert_eq!(code, RefuseCode::BadAuth, "{message}");
        assert!(message.contains(&peer.to_hex()), "{message}");

        // A relay in the middle: the device signs for the relay it sees (another
        // deployment) over the challenge of this one.
        let (_, other_id, _) = hello(&other.url).await;
        assert_ne!(other_id, relay_id, "two deployments, two ids");
        let (mut relayed, _, challenge) = hello(&url).await;
        send(&mut relayed, &auth(&key, workspace, other_id, challenge)).await;
        let (code, message) = refusal(&mut relayed).await.expect("no refusal");
        assert_eq!(code, RefuseCode::BadAuth, "{message}");
        assert!(message.contains(&peer.to_hex()), "{message}");
    });
    // Counted and logged (by name, with SHOAL_LOG as `serve_on` sets it) as the relay
    // closes each connection, just after sending the refusal.
    eventually(Duration::from_secs(5), "both refusals counted and logged", || {
        let metrics = relay.metrics();
        metric(&metrics, "shoal_relay_refused_total{reason=\"badauth\"}") == 2.0
            && relay.stderr().matches("connection refused").count() == 2
    });
    let log = relay.stderr();
    assert!(log.contains(&peer.to_hex()), "{log}");
}

#[test]
fn an_oversize_frame_is_refused_by_name() {
    let s = Sandbox::new();
    let relay = serve_sqlite(&s, &["--max-frame", "4096"]);
    let url = relay.url.clone();
    devices(&s, &url, &[]);
    let (key, workspace, peer) = identity(&s, "a.shoal");
    let rt = runtime();
    rt.block_on(async {
        let (mut ws, access) = connect(&url, &key, workspace).await;
        assert_eq!(access, Access::Member);
        ws.send(Message::Binary(vec![8u8; 10_000].into())).await.unwrap();
        let Some((code, message)) = refusal(&mut ws).await else {
            panic!("the relay closed the connection without a refusal; its log: {}", relay.stderr())
        };
        assert_eq!(code, RefuseCode::Limit, "{message}");
        assert!(message.contains(&peer.to_hex()) && message.contains("4096"), "{message}");
    });
    // The relay goes on serving.
    put(&s, "a.shoal", "t1", "after");
    s.ok(&["sync", "-w", "a.shoal", "--server", &url, "--wait"]);
}

#[test]
fn a_flooding_client_is_refused_and_the_others_keep_syncing() {
    let s = Sandbox::new();
    let relay = serve_sqlite(&s, &[]);
    let url = relay.url.clone();
    devices(&s, &url, &["b.shoal"]);
    let (key, workspace, peer) = identity(&s, "a.shoal");
    let rt = runtime();
    let (code, message) = rt.block_on(async {
        let (ws, _) = connect(&url, &key, workspace).await;
        let (mut sink, mut stream) = ws.split();
        let flood = tokio::spawn(async move {
            let ping = Frame::Ping(7).to_bytes();
            for _ in 0..200_000 {
                if sink.feed(Message::Binary(ping.clone().into())).await.is_err() {
                    return;
                }
            }
            let _ = sink.flush().await;
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let refused = loop {
            let msg = tokio::time::timeout_at(deadline, stream.next())
                .await
                .expect("the flood was not refused within 20 s");
            match msg {
                Some(Ok(Message::Binary(b))) => {
                    if let Frame::Refused { code, message } = Frame::decode(&b).unwrap() {
                        break (code, message);
                    }
                }
                Some(Ok(_)) => {}
                other => panic!(
                    "the connection ended without a refusal: {other:?}; relay log: {}",
                    relay.stderr()
                ),
            }
        };
        flood.abort();
        refused
    });
    assert_eq!(code, RefuseCode::Limit, "{message}");
    assert!(message.contains(&peer.to_hex()) && message.contains("rate limit"), "{message}");
    put(&s, "b.shoal", "t1", "meanwhile");
    s.ok(&["sync", "-w", "b.shoal", "--server", &url, "--wait", "--timeout", "5s"]);
    s.ok(&["sync", "-w", "a.shoal", "--server", &url]);
    assert!(has_row(&s, "a.shoal", "t1"));
}

#[test]
fn new_workspaces_refuse_serves_only_workspaces_the_relay_holds() {
    let s = Sandbox::new();
    let relay = serve_sqlite(&s, &[]);
    devices(&s, &relay.url, &[]);
    let (addr, db) = (relay.addr, relay.db.clone());
    drop(relay);
    let relay = serve_on(&s, &addr.to_string(), &db, &["--new-workspaces", "refuse"]);
    let url = relay.url.clone();
    put(&s, "a.shoal", "t1", "held");
    s.ok(&["sync", "-w", "a.shoal", "--server", &url, "--wait"]);
    s.workspace_with_todo("new.shoal");
    let id = device_id(&s, "new.shoal");
    let (_, err) = s.exits(2, &["sync", "-w", "new.shoal", "--server", &url]);
    assert!(err.contains(&format!("device {id}")) && err.contains("accepts no new ones"), "{err}");
}

// ---------------------------------------------------------------------------------------
// 8, 9. PostgreSQL

/// Sets its flag when dropped: stops a load thread when its test ends, however it ends.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// `shoal serve --db` form of the harness's connection string (`host=DIR port=P user=U
/// dbname=D`): `postgres://U@%2FDIR:P/D`, the socket's directory percent-encoded as the host
/// (a host starting with `/` is a Unix socket's directory).
fn pg_url(conn: &str) -> String {
    let field = |k: &str| {
        conn.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k} in {conn}"))
            .to_owned()
    };
    let dir = field("host").replace('/', "%2F");
    format!("postgres://{}@{dir}:{}/{}", field("user"), field("port"), field("dbname"))
}

fn fresh_pg_database(cluster: &shoal_postgres::testing::TestCluster) -> String {
    pg_url(&runtime().block_on(cluster.fresh_database()).unwrap())
}

#[test]
fn a_postgres_relay_converges_devices() {
    let cluster = shoal_postgres::testing::TestCluster::shared().unwrap();
    let db = fresh_pg_database(cluster);
    let s = Sandbox::new();
    let relay = serve(&s, &db, &[]);
    let socket_dir = db.split('@').nth(1).unwrap().split(':').next().unwrap().replace("%2F", "/");
    assert!(
        relay.banner.contains(&format!("(storage: postgres://postgres@{socket_dir}:5432/")),
        "{}",
        relay.banner
    );
    let url = relay.url.clone();
    devices(&s, &url, &["b.shoal"]);
    put(&s, "a.shoal", "ta", "a");
    put(&s, "b.shoal", "tb", "b");
    for ws in ["a.shoal", "b.shoal", "a.shoal"] {
        s.ok(&["sync", "-w", ws, "--server", &url, "--wait"]);
    }
    assert_eq!(rows(&s, "a.shoal"), rows(&s, "b.shoal"));
    assert_eq!(count(&s, "a.shoal"), 2);
    assert_eq!(http_get(relay.addr, "/healthz"), (200, "ok\n".to_owned()));
}

#[test]
fn postgres_stopped_under_load_fails_syncs_by_name_and_loses_nothing() {
    let cluster = shoal_postgres::testing::TestCluster::start().unwrap();
    let db = fresh_pg_database(&cluster);
    let dbname = db.rsplit('/').next().unwrap().to_owned();
    let s = Arc::new(Sandbox::new());
    let relay = serve(&s, &db, &[]);
    let url = relay.url.clone();
    devices(&s, &url, &["b.shoal"]);

    // Device a writes and syncs in a loop; each (row, write ok, sync ok, stderr) is kept.
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_panic = StopOnDrop(stop.clone());
    let log = Arc::new(std::sync::Mutex::new(Vec::<(String, bool, bool, String)>::new()));
    let loader = {
        let (s, url, stop, log) = (s.clone(), url.clone(), stop.clone(), log.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("p{i:04}");
                i += 1;
                let wrote = s.run(&["put", "-w", "a.shoal", "todo", &format!("id={id}")]);
                let synced = s.run(&["sync", "-w", "a.shoal", "--server", &url]);
                log.lock().unwrap().push((
                    id,
                    wrote.status.success(),
                    synced.status.success(),
                    text(&synced.stderr),
                ));
            }
        })
    };
    let synced_ok = |log: &[(String, bool, bool, String)]| log.iter().filter(|r| r.2).count();
    eventually(Duration::from_secs(10), "syncs run", || synced_ok(&log.lock().unwrap()) >= 3);

    cluster.stop().unwrap();
    let down_at = log.lock().unwrap().len();
    // The relay says the storage is down, and the syncs fail naming the database.
    let (code, body) = http_get(relay.addr, "/healthz");
    assert_eq!(code, 503, "{body}");
    eventually(Duration::from_secs(20), "a sync fails while PostgreSQL is down", || {
        log.lock().unwrap()[down_at..].iter().any(|r| !r.2)
    });
    let failure = log.lock().unwrap()[down_at..].iter().find(|r| !r.2).unwrap().3.clone();
    assert!(failure.contains(&dbname) && failure.contains("postgres://"), "{failure}");

    cluster.resume().unwrap();
    eventually(Duration::from_secs(20), "the relay is healthy again", || {
        http_get(relay.addr, "/healthz").0 == 200
    });
    let up_at = log.lock().unwrap().len();
    eventually(Duration::from_secs(20), "syncs succeed again", || {
        synced_ok(&log.lock().unwrap()[up_at..]) >= 3
    });
    // And a quick restart (stop, start) under the same load.
    cluster.restart().unwrap();
    let up_at = log.lock().unwrap().len();
    eventually(Duration::from_secs(20), "syncs succeed after a restart", || {
        synced_ok(&log.lock().unwrap()[up_at..]) >= 2
    });
    stop.store(true, Ordering::Relaxed);
    loader.join().unwrap();

    s.ok(&["sync", "-w", "a.shoal", "--server", &url, "--wait"]);
    s.ok(&["sync", "-w", "b.shoal", "--server", &url]);
    let log = log.lock().unwrap();
    let acked: Vec<&String> = log.iter().filter(|r| r.1).map(|r| &r.0).collect();
    for id in &acked {
        assert!(has_row(&s, "b.shoal", id), "{id} written at a is missing at b");
    }
    assert_eq!(count(&s, "b.shoal"), acked.len() as u64);
    s.ok(&["verify", "-w", "b.shoal"]);
}

#[test]
fn two_relay_nodes_over_one_postgres_fan_out_live_writes() {
    let cluster = shoal_postgres::testing::TestCluster::shared().unwrap();
    let db = fresh_pg_database(cluster);
    let s = Sandbox::new();
    let node1 = serve(&s, &db, &[]);
    let node2 = serve(&s, &db, &[]);
    // b joins through the other node: the invite pushed to node 1 is read at node 2.
    s.workspace_with_todo("a.shoal");
    s.ok(&["sync", "-w", "a.shoal", "--server", &node1.url, "--wait"]);
    let (code, _) = s.exits(0, &["invite", "-w", "a.shoal"]);
    s.ok(&["sync", "-w", "a.shoal", "--server", &node1.url, "--wait"]);
    s.exits(0, &["join", "-w", "b.shoal", code.trim()]);
    s.ok(&["sync", "-w", "b.shoal", "--server", &node2.url, "--wait"]);

    let _wa = watch(&s, "a.shoal", &node1.url);
    let _wb = watch(&s, "b.shoal", &node2.url);
    for (round, (from, to)) in
        [("a.shoal", "b.shoal"), ("b.shoal", "a.shoal"), ("a.shoal", "b.shoal")].iter().enumerate()
    {
        let id = format!("live{round}");
        put(&s, from, &id, "fan-out");
        // Well inside the watchers' 10 s poll: the other node was told by NOTIFY.
        let took = eventually(Duration::from_secs(15), &id, || has_row(&s, to, &id));
        assert!(
            took < Duration::from_secs(4),
            "{id} took {took:?} from {from} to {to}\n{}\n{}",
            watch_log(&s, "a.shoal"),
            watch_log(&s, "b.shoal")
        );
    }
}

// ---------------------------------------------------------------------------------------
// 10. Operations

#[test]
fn metrics_count_connections_and_entries_and_serve_help_has_examples() {
    let s = Sandbox::new();
    let relay = serve_sqlite(&s, &[]);
    let url = relay.url.clone();
    devices(&s, &url, &["b.shoal"]);
    put(&s, "a.shoal", "t1", "counted");
    s.ok(&["sync", "-w", "a.shoal", "--server", &url, "--wait"]);
    let before = relay.metrics();
    assert!(metric(&before, ENTRIES_IN) >= 1.0, "{before}");
    s.ok(&["sync", "-w", "b.shoal", "--server", &url]);
    let after = relay.metrics();
    assert!(metric(&after, ENTRIES_OUT) > metric(&before, ENTRIES_OUT), "{before}\n{after}");
    assert!(metric(&after, "shoal_relay_bytes_total{direction=\"in\"}") > 0.0, "{after}");
    eventually(Duration::from_secs(5), "the one-shot syncs' connections are closed", || {
        metric(&relay.metrics(), "shoal_relay_connections") == 0.0
    });

    let _w = watch(&s, "b.shoal", &url);
    eventually(Duration::from_secs(10), "the watcher's connection is counted", || {
        metric(&relay.metrics(), "shoal_relay_connections") == 1.0
    });

    let help =
        cli_util::text(&Command::new(BIN).args(["serve", "--help"]).output().unwrap().stdout);
    for want in [
        "Examples:",
        "shoal serve --listen 0.0.0.0:7070",
        "--db postgres://",
        "/metrics",
        "SHOAL_LOG=shoal_relay=info",
        "--max-frame",
    ] {
        assert!(help.contains(want), "{want:?} not in:\n{help}");
    }
}
