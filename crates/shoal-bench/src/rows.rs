//! Single-row workloads: every entry is one app transaction that writes one row (a key and
//! four LWW cells), as an app that commits on each edit produces them.
//!
//! - `catchup-rows`: device A holds N such entries and publishes them to a local folder; a
//!   new device catches up from the folder with one sync pass **in its own process**
//!   (entries/s, cell changes/s, its peak RSS). Baseline, same run: plain SQLite upserts of
//!   the same rows into a plain table, 1,000 rows per transaction (WAL,
//!   `synchronous = NORMAL`, as remote applies use). Also bytes per entry in the folder.
//! - `commit-rows`: durable single-row commits through the `Workspace` API. Baseline, same
//!   run: plain SQLite single-row upsert transactions with the same durability (WAL,
//!   `synchronous = FULL`); the sides alternate in rounds of 100 commits, so both meet the
//!   same disk. Then what one commit writes on each side: the WAL frames of 100 commits
//!   after a `TRUNCATE` checkpoint, per commit and per B-tree.
//!
//! The N entries of `catchup-rows` are produced by encoding each row's put exactly as
//! `Transaction::commit` does and appending them 1,000 `LocalTx` per SQLite transaction
//! (each `LocalTx` is its own entry); the first entry is committed through the API and the
//! bench checks that its ops are byte for byte the ones its encoder builds.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rusqlite::{Connection, params};
use shoal::core::control::Role;
use shoal::core::{ChainPosition, EntryBody, ManualClock, Op, chain_through};
use shoal::sqlite::LocalTx;
use shoal::tables::{CellWrite, ColumnId, RowKey, TableId, TableOp};
use shoal::{ColumnType, TableSpec, Value, Workspace, WorkspaceOptions};

use crate::util::{Privacy, Published, peak_rss_mib, rate, row, run_catchup, thread_cpu, timed};

/// LWW cells written per entry (the key is written too).
const CELLS: u64 = 4;
/// Entries per `append_local` call when producing, and rows per baseline transaction.
const BATCH: u64 = 1_000;
/// Commits whose WAL frames are counted.
const WAL_COMMITS: u64 = 100;
/// Commits per round of `commit-rows` (the two sides alternate rounds).
const ROUND: u64 = 100;

const WORDS: &[&str] = &[
    "harbor", "quiet", "ledger", "maple", "invoice", "river", "draft", "amber", "signal", "orbit",
    "paper", "north", "meeting", "copper", "garden", "review", "window", "pencil", "market",
    "winter", "thread", "basket", "summit", "lantern", "budget", "canvas", "echo", "follow", "up",
    "on", "the", "a", "for", "with", "to", "fix", "call", "plan", "notes",
];

/// One row: a distinct key, two texts of 20–40 and 30–60 bytes, an integer and a real.
struct Item {
    id: String,
    title: String,
    body: String,
    n: i64,
    price: f64,
}

/// splitmix64: deterministic, so the child process can rebuild any row to check it.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn text(&mut self, min: u64, max: u64) -> String {
        let len = (min + self.below(max - min + 1)) as usize;
        let mut s = String::with_capacity(len + 8);
        while s.len() < len {
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(WORDS[self.below(WORDS.len() as u64) as usize]);
        }
        s.truncate(len);
        s
    }
}

fn item(i: u64) -> Item {
    let mut rng = Rng(i);
    Item {
        id: format!("item-{i:08}"),
        title: rng.text(20, 40),
        body: rng.text(30, 60),
        n: rng.below(1_000_000) as i64 - 500_000,
        price: rng.below(1_000_000) as f64 / 100.0,
    }
}

fn cells(it: &Item) -> [(&'static str, Value); 5] {
    [
        ("id", Value::Text(it.id.clone())),
        ("title", Value::Text(it.title.clone())),
        ("body", Value::Text(it.body.clone())),
        ("n", Value::Integer(it.n)),
        ("price", Value::Real(it.price)),
    ]
}

fn spec() -> TableSpec {
    TableSpec::new("items")
        .key("id", ColumnType::Text)
        .column("title", ColumnType::Text)
        .column("body", ColumnType::Text)
        .column("n", ColumnType::Integer)
        .column("price", ColumnType::Real)
}

fn options() -> WorkspaceOptions {
    WorkspaceOptions { clock: Arc::new(ManualClock::new(1_700_000_000_000)), ..Default::default() }
}

/// Builds the op of one row's put as `Transaction::put` and `Transaction::commit` do: the
/// key as a `RowKey`, the LWW cells in the order given, `TableOp::to_op`.
struct Encoder {
    table: TableId,
    columns: [ColumnId; 4],
}

impl Encoder {
    fn new(ws: &Workspace) -> anyhow::Result<Self> {
        let schema = ws.schema()?;
        let t = schema.table_or_err("items")?;
        let id = |name: &str| {
            t.columns.iter().find(|c| c.name == name).map(|c| c.id).context("a declared column")
        };
        Ok(Encoder { table: t.id, columns: [id("title")?, id("body")?, id("n")?, id("price")?] })
    }

    fn op(&self, it: Item) -> anyhow::Result<Op> {
        let [title, body, n, price] = self.columns;
        let put = TableOp::Put {
            table: self.table,
            key: RowKey::from_values(&[Value::Text(it.id)])?,
            cells: vec![
                (title, CellWrite::Set(Value::Text(it.title))),
                (body, CellWrite::Set(Value::Text(it.body))),
                (n, CellWrite::Set(Value::Integer(it.n))),
                (price, CellWrite::Set(Value::Real(it.price))),
            ],
        };
        Ok(put.to_op()?)
    }
}

/// Writes `entries` one-row entries on `ws`: the first through the API (and checks the
/// encoder against it), the rest 1,000 `LocalTx` per `append_local`.
fn produce(ws: &Workspace, entries: u64) -> anyhow::Result<()> {
    let enc = Encoder::new(ws)?;
    let mut tx = ws.transaction()?;
    tx.put("items", &cells(&item(0)))?;
    let commit = tx.commit()?.context("the first row made no entry")?;
    let origin = ws.device().context("no device key")?;
    // From index 0: an encrypted entry opens only with the chain hash before it.
    let page = ws.replica().read_page(origin, 0)?;
    let at = page.iter().position(|e| e.index == commit.index).context("the first row's entry")?;
    let api_ops = match &page[at].body {
        EntryBody::Live(p) => Some(p.ops.clone()),
        EntryBody::Encrypted(sealed) => {
            let prev = chain_through(ChainPosition::start(&ws.id(), &origin), &page[..at])
                .map_err(|(e, f)| anyhow::anyhow!("own log skips from {e} to {f}"))?;
            Some(ws.replica().keyring()?.open(&origin, commit.index, &prev, sealed)?.ops)
        }
        EntryBody::Expunged(_) => None,
    };
    anyhow::ensure!(
        api_ops == Some(vec![enc.op(item(0))?]),
        "the bench encodes a row's put differently from Transaction::commit"
    );
    let mut i = 1;
    while i < entries {
        let end = (i + BATCH).min(entries);
        let txs = (i..end)
            .map(|k| Ok(LocalTx { ops: vec![enc.op(item(k))?], author: None }))
            .collect::<anyhow::Result<Vec<_>>>()?;
        ws.replica().append_local(txs)?;
        i = end;
    }
    Ok(())
}

fn plain_db(path: &Path, sync: &str) -> anyhow::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "wal")?;
    conn.pragma_update(None, "synchronous", sync)?;
    conn.execute_batch(
        "CREATE TABLE items (id TEXT PRIMARY KEY, title TEXT, body TEXT, n INTEGER, price REAL)",
    )?;
    Ok(conn)
}

fn plain_upsert(conn: &Connection, it: &Item) -> anyhow::Result<()> {
    conn.prepare_cached(
        "INSERT INTO items (id, title, body, n, price) VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (id) DO UPDATE SET title = excluded.title, body = excluded.body, \
         n = excluded.n, price = excluded.price",
    )?
    .execute(params![it.id, it.title, it.body, it.n, it.price])?;
    Ok(())
}

/// Total size of the files under `path` whose name ends in `.seg`, and their count.
fn seg_bytes(path: &Path) -> (u64, u64) {
    let (mut bytes, mut files) = (0, 0);
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                let (b, f) = seg_bytes(&p);
                bytes += b;
                files += f;
            } else if p.extension().is_some_and(|x| x == "seg") {
                bytes += e.metadata().map_or(0, |m| m.len());
                files += 1;
            }
        }
    }
    (bytes, files)
}

/// Device A of a new workspace of kind `privacy` (in `dir`) writes `entries` one-row
/// entries and publishes them to the folder `dir/shared`.
pub fn publish(dir: &Path, entries: u64, privacy: Privacy) -> anyhow::Result<Published> {
    anyhow::ensure!(entries > 0, "--entries must be at least 1");
    let folder = dir.join("shared");
    std::fs::create_dir(&folder)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let a = Workspace::create(dir.join("a.shoal"), privacy.options(options()))?;
    a.declare(&spec())?;
    // A members-only workspace: an invite for the device that catches up.
    let code = match privacy {
        Privacy::Open => None,
        _ => Some(a.invite(Role::Member, None, 1, "")?.encode()),
    };
    let control_entries = rt.block_on(a.cursors())?.total();
    let (res, produce_time) = timed(|| produce(&a, entries));
    res?;
    let held = rt.block_on(a.cursors())?.total();
    anyhow::ensure!(
        held == entries + control_entries,
        "device A holds {held} entries, not {entries} + {control_entries} (genesis, schema, invite)"
    );
    let (res, publish_time) = timed(|| rt.block_on(a.sync_folder(&folder)));
    let published = res?.report.published;
    anyhow::ensure!(published == held, "published {published} of {held} entries");
    println!(
        "device A ({}): {held} entries ({entries} rows after {control_entries} of genesis, schema and any invite), appended at {:.0} entries/s ({BATCH} per SQLite transaction), published in {:.1} s",
        privacy.name(),
        rate(entries, produce_time),
        publish_time.as_secs_f64()
    );
    Ok(Published { folder, workspace: a.id().to_string(), code, held: Some(held) })
}

/// The arguments of the catch-up process of `entries` one-row entries from `source`.
pub fn child_args(source: &Published, file: &Path, entries: u64) -> Vec<std::ffi::OsString> {
    let mut args = source.child_args("catchup-rows-child", file);
    args.extend(["--entries".into(), entries.to_string().into()]);
    args
}

/// A new device catches up from a folder holding `entries` one-row entries.
pub fn catchup(entries: u64) -> anyhow::Result<()> {
    anyhow::ensure!(entries > 0, "--entries must be at least 1");
    println!(
        "catchup-rows: {entries} entries of one row each (a TEXT key and {CELLS} LWW cells: 2 TEXT of 20-60 B, INTEGER, REAL), one folder"
    );
    let dir = tempfile::tempdir()?;
    let source = publish(dir.path(), entries, Privacy::Open)?;
    let (seg, seg_files) = seg_bytes(&source.folder);

    // Baseline: plain SQLite upserts of the same rows, 1,000 per transaction. Rows are
    // built outside the timed part.
    let mut plain = plain_db(&dir.path().join("plain.db"), "NORMAL")?;
    let mut plain_time = Duration::ZERO;
    let mut value_bytes = 0u64;
    let mut i = 0;
    while i < entries {
        let end = (i + BATCH).min(entries);
        let items: Vec<Item> = (i..end).map(item).collect();
        value_bytes += items
            .iter()
            .map(|it| (it.id.len() + it.title.len() + it.body.len() + 16) as u64)
            .sum::<u64>();
        let (res, t) = timed(|| -> anyhow::Result<()> {
            let tx = plain.transaction()?;
            for it in &items {
                plain_upsert(&tx, it)?;
            }
            tx.commit()?;
            Ok(())
        });
        res?;
        plain_time += t;
        i = end;
    }
    drop(plain);

    let late = dir.path().join("late.shoal");
    if std::env::var_os("SHOAL_BENCH_KEEP").is_some() {
        let args: Vec<String> = child_args(&source, &late, entries)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        println!("kept: {}", args.join(" "));
        std::mem::forget(dir);
        return Ok(());
    }
    // The catch-up runs in a fresh process, so its memory figure is its own and not what
    // this process kept from writing the data.
    let run = run_catchup(child_args(&source, &late, entries), &source)?;
    let (p, s) = (rate(entries, plain_time), entries as f64 / run.seconds);
    row("baseline: plain SQLite upserts, 1,000 rows per transaction", p, "rows/s");
    row("shoal: new device catches up from the folder (1 row/entry)", s, "entries/s");
    row("shoal: same, in cell changes (4 per entry, plus the key)", s * CELLS as f64, "cells/s");
    println!(
        "ratio shoal/plain: {:.2}x (target >= 0.5x); target >= 100,000 entries/s; entries pulled {}; peak RSS of the catch-up process {:.1} MiB",
        s / p,
        run.pulled,
        run.peak_rss_mib
    );
    println!(
        "folder: {seg} bytes in {seg_files} .seg files = {:.1} bytes per entry (zstd level 3); the row's values are {:.1} bytes",
        seg as f64 / entries as f64,
        value_bytes as f64 / entries as f64
    );
    Ok(())
}

/// The catch-up half of [`catchup`], in its own process: join the workspace, sync once
/// from the folder, print the time, entries pulled and peak RSS; then check the rows.
pub fn catchup_child(
    folder: &Path,
    workspace: &str,
    file: &Path,
    entries: u64,
    code: Option<&str>,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let late = crate::util::join(file, workspace, code, options())?;
    let (res, time) = timed(|| rt.block_on(late.sync_folder(folder)));
    let out = res?;
    let peak = peak_rss_mib();
    anyhow::ensure!(out.status.in_sync(), "not in sync: {:?}", out.status);
    // Checked after the figures are taken: every row arrived, and three of them whole.
    let count = late.query("SELECT count(*) FROM items", &[])?;
    anyhow::ensure!(
        count.rows.first().and_then(|r| r.first()) == Some(&Value::Integer(entries as i64)),
        "the new device shows {:?} rows, not {entries}",
        count.rows
    );
    for k in [0, entries / 2, entries - 1] {
        let expected = cells(&item(k));
        let got = late.get("items", &[expected[0].1.clone()])?.context("a row is missing")?;
        let got: Vec<(&str, Value)> = got.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
        anyhow::ensure!(got == expected, "row {k} differs: {got:?}");
    }
    println!("seconds={} pulled={} peak_rss_mib={peak:.1}", time.as_secs_f64(), out.report.pulled);
    Ok(())
}

/// The WAL frames appended since the WAL was last emptied: page number of each frame, the
/// page size, the commits and the file's length.
struct Wal {
    page_size: u64,
    pages: Vec<u32>,
    commits: u64,
    len: u64,
}

fn read_wal(db: &Path) -> anyhow::Result<Wal> {
    let mut path = db.as_os_str().to_owned();
    path.push("-wal");
    let bytes = std::fs::read(&path)?;
    let be = |at: usize| -> anyhow::Result<u32> {
        let b = bytes.get(at..at + 4).context("a truncated WAL")?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let page_size = u64::from(be(8)?);
    let salts = bytes.get(16..24).context("a truncated WAL header")?;
    let frame = 24 + page_size as usize;
    let (mut pages, mut commits) = (Vec::new(), 0);
    let mut at = 32;
    while at + frame <= bytes.len() && bytes.get(at + 8..at + 16) == Some(salts) {
        pages.push(be(at)?);
        if be(at + 4)? != 0 {
            commits += 1;
        }
        at += frame;
    }
    Ok(Wal { page_size, pages, commits, len: bytes.len() as u64 })
}

/// Empties the WAL and stops automatic checkpoints on `conn`, so the WAL then holds every
/// frame written after.
fn empty_wal(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
    if busy != 0 {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            Some("the TRUNCATE checkpoint did not complete".into()),
        ));
    }
    Ok(())
}

/// One line: pages and bytes per commit, and pages per commit by B-tree (named with the
/// `dbstat` table of a connection to `db`).
fn wal_line(name: &str, db: &Path, wal: &Wal) -> anyhow::Result<String> {
    let conn = Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut stmt = conn.prepare("SELECT name, pageno FROM dbstat")?;
    let owner: HashMap<u32, String> = stmt
        .query_map([], |r| Ok((r.get::<_, u32>(1)?, r.get::<_, String>(0)?)))?
        .collect::<Result<_, _>>()?;
    let mut by_tree: BTreeMap<&str, u64> = BTreeMap::new();
    for p in &wal.pages {
        *by_tree.entry(owner.get(p).map_or("(free or header)", String::as_str)).or_default() += 1;
    }
    let mut trees: Vec<(&str, u64)> = by_tree.into_iter().collect();
    trees.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let per = |n: u64| n as f64 / wal.commits as f64;
    let trees: Vec<String> = trees.iter().map(|(t, n)| format!("{t} {:.2}", per(*n))).collect();
    Ok(format!(
        "{name:<14} {:>5.2} pages = {:>7.0} B of WAL per commit ({} commits, {} B pages): {}",
        per(wal.pages.len() as u64),
        wal.len as f64 / wal.commits as f64,
        wal.commits,
        wal.page_size,
        trees.join(", ")
    ))
}

/// Wall time and this thread's CPU time spent on one side of `commit-rows`.
#[derive(Default)]
struct Side {
    wall: Duration,
    cpu: Duration,
}

impl Side {
    fn add(&mut self, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
        let cpu = thread_cpu();
        let (res, wall) = timed(f);
        self.cpu += thread_cpu().saturating_sub(cpu);
        self.wall += wall;
        res
    }
}

fn shoal_commit(ws: &Workspace, i: u64) -> anyhow::Result<()> {
    let mut tx = ws.transaction()?;
    tx.put("items", &cells(&item(i)))?;
    tx.commit()?;
    Ok(())
}

fn plain_commit(conn: &mut Connection, i: u64) -> anyhow::Result<()> {
    let tx = conn.transaction()?;
    plain_upsert(&tx, &item(i))?;
    tx.commit()?;
    Ok(())
}

/// Durable single-row commits through the `Workspace` API vs plain SQLite single-row
/// upsert transactions with the same durability; then WAL pages per commit.
pub fn commit(transactions: u64) -> anyhow::Result<()> {
    // On the disk of the current directory, not a RAM-backed /tmp: durability is the cost.
    let dir = tempfile::tempdir_in(std::env::current_dir()?)?;
    println!(
        "commit-rows: {transactions} durable commits of one row each (a TEXT key and {CELLS} LWW cells), files in {}",
        dir.path().display()
    );
    let plain_path = dir.path().join("plain.db");
    let mut plain = plain_db(&plain_path, "FULL")?;
    let ws = Workspace::create(dir.path().join("shoal.shoal"), options())?;
    ws.declare(&spec())?;
    // Rounds of 100 commits, alternating, so that both sides meet the same disk: the
    // latency of an fsync on a shared VM disk drifts during a run.
    let (mut plain_time, mut shoal_time) = (Side::default(), Side::default());
    let mut i = 0;
    while i < transactions {
        let end = (i + ROUND).min(transactions);
        plain_time.add(|| (i..end).try_for_each(|k| plain_commit(&mut plain, k)))?;
        shoal_time.add(|| (i..end).try_for_each(|k| shoal_commit(&ws, k)))?;
        i = end;
    }
    let (p, s) = (rate(transactions, plain_time.wall), rate(transactions, shoal_time.wall));
    row("baseline: plain SQLite BEGIN/upsert/COMMIT (synchronous=FULL)", p, "commits/s");
    row("shoal: Workspace transaction, put, commit (durable)", s, "commits/s");
    let us = |d: Duration| d.as_secs_f64() * 1e6 / transactions as f64;
    println!(
        "ratio shoal/plain: {:.2}x (target >= 0.8x); per commit: plain {:.0} us ({:.0} us on CPU), shoal {:.0} us ({:.0} us on CPU)",
        s / p,
        us(plain_time.wall),
        us(plain_time.cpu),
        us(shoal_time.wall),
        us(shoal_time.cpu)
    );

    // What one commit writes: the WAL frames of 100 more commits after emptying the WAL.
    let next = transactions..transactions + WAL_COMMITS;
    empty_wal(&plain)?;
    for i in next.clone() {
        plain_commit(&mut plain, i)?;
    }
    let plain_wal = read_wal(&plain_path)?;
    ws.replica().with_writer(|conn, _| {
        empty_wal(conn).map_err(|e| shoal::core::SyncError::backend("empty the WAL", e))
    })?;
    for i in next {
        shoal_commit(&ws, i)?;
    }
    let shoal_wal = read_wal(ws.path())?;
    ws.replica().with_writer(|conn, _| {
        conn.pragma_update(None, "wal_autocheckpoint", 1000)
            .map_err(|e| shoal::core::SyncError::backend("restore autocheckpoint", e))
    })?;
    anyhow::ensure!(
        plain_wal.commits == WAL_COMMITS && shoal_wal.commits == WAL_COMMITS,
        "counted {} and {} commits in the WALs, not {WAL_COMMITS}",
        plain_wal.commits,
        shoal_wal.commits
    );
    println!("{}", wal_line("plain SQLite:", &plain_path, &plain_wal)?);
    println!("{}", wal_line("shoal:", ws.path(), &shoal_wal)?);
    Ok(())
}
