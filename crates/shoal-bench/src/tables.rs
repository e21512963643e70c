//! Table benchmarks (issue: tables): local transactions of 100 cell writes, remote apply of
//! cell changes, and bookkeeping bytes per cell.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rusqlite::{Connection, params_from_iter};
use shoal::core::{HasCursors, ManualClock, pull};
use shoal::{ColumnType, TableSpec, Value, Workspace, WorkspaceOptions};

use crate::util::{peak_rss_mib, rate, reset_peak_rss, row, timed};

const COLUMNS: usize = 10;
const ROWS_PER_TX: usize = 10;
/// Rows cycle over this many ids, so most transactions after the first pass update.
const ID_SPACE: usize = 20_000;

fn spec() -> TableSpec {
    (0..COLUMNS).fold(TableSpec::new("items").key("id", ColumnType::Text), |s, c| {
        s.column(
            format!("c{c}"),
            if c.is_multiple_of(2) { ColumnType::Integer } else { ColumnType::Text },
        )
    })
}

fn cell(tx: usize, row: usize, col: usize) -> Value {
    if col.is_multiple_of(2) {
        Value::Integer((tx * 1000 + row * 10 + col) as i64)
    } else {
        Value::Text(format!("value {tx}/{row}/{col}"))
    }
}

fn row_id(tx: usize, row: usize) -> String {
    format!("row-{:06}", (tx * ROWS_PER_TX + row) % ID_SPACE)
}

fn options() -> WorkspaceOptions {
    WorkspaceOptions { clock: Arc::new(ManualClock::new(1_700_000_000_000)), ..Default::default() }
}

fn plain_db(path: &Path, sync: &str) -> anyhow::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "wal")?;
    conn.pragma_update(None, "synchronous", sync)?;
    let cols: Vec<String> = (0..COLUMNS).map(|c| format!("c{c}")).collect();
    conn.execute_batch(&format!("CREATE TABLE items (id TEXT PRIMARY KEY, {})", cols.join(", ")))?;
    Ok(conn)
}

fn plain_upserts(conn: &mut Connection, txs: usize) -> anyhow::Result<()> {
    let cols: Vec<String> = (0..COLUMNS).map(|c| format!("c{c}")).collect();
    let sql = format!(
        "INSERT INTO items (id, {}) VALUES (?1, {}) ON CONFLICT (id) DO UPDATE SET {}",
        cols.join(", "),
        (2..=COLUMNS + 1).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", "),
        cols.iter().map(|c| format!("{c} = excluded.{c}")).collect::<Vec<_>>().join(", ")
    );
    for t in 0..txs {
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(&sql)?;
            for r in 0..ROWS_PER_TX {
                let mut args = vec![shoal::sqlite::to_sql(&Value::Text(row_id(t, r)))];
                args.extend((0..COLUMNS).map(|c| shoal::sqlite::to_sql(&cell(t, r, c))));
                stmt.execute(params_from_iter(args))?;
            }
        }
        tx.commit()?;
    }
    Ok(())
}

fn shoal_transactions(ws: &Workspace, txs: usize) -> anyhow::Result<()> {
    let names: Vec<String> = (0..COLUMNS).map(|c| format!("c{c}")).collect();
    for t in 0..txs {
        let mut tx = ws.transaction()?;
        for r in 0..ROWS_PER_TX {
            let mut cells: Vec<(&str, Value)> = vec![("id", Value::Text(row_id(t, r)))];
            cells.extend(names.iter().enumerate().map(|(c, n)| (n.as_str(), cell(t, r, c))));
            tx.put("items", &cells)?;
        }
        tx.commit()?;
    }
    Ok(())
}

/// Local transactions of 100 cell writes (10 rows x 10 columns) vs plain SQLite upserts.
pub fn local(txs: usize) -> anyhow::Result<()> {
    println!(
        "tables-local: {txs} transactions of {} cell writes ({ROWS_PER_TX} rows x {COLUMNS} columns), ids cycling over {ID_SPACE} rows",
        ROWS_PER_TX * COLUMNS
    );
    // Both sides commit with synchronous=FULL in WAL mode: a commit is durable on return,
    // as a Shoal commit always is.
    let dir = tempfile::tempdir()?;
    let mut conn = plain_db(&dir.path().join("plain.db"), "FULL")?;
    let (res, plain) = timed(|| plain_upserts(&mut conn, txs));
    res?;
    let ws = Workspace::create(dir.path().join("shoal.db"), options())?;
    ws.declare(&spec())?;
    let cells = (txs * ROWS_PER_TX * COLUMNS) as u64;
    let (res, shoal) = timed(|| shoal_transactions(&ws, txs));
    res?;
    let (p, s) = (rate(cells, plain), rate(cells, shoal));
    row("baseline: plain SQLite upserts (same rows, same batches)", p, "cells/s");
    row("shoal: Workspace transactions (put, commit)", s, "cells/s");
    println!("ratio shoal/plain: {:.2}x (target >= 0.4x)", s / p);
    Ok(())
}

/// A new device applies N cell changes written by another device, vs plain SQLite upserts
/// of the same rows; then bookkeeping bytes per cell.
pub fn remote(cells: usize) -> anyhow::Result<()> {
    let txs = cells / (ROWS_PER_TX * COLUMNS);
    let cells = (txs * ROWS_PER_TX * COLUMNS) as u64;
    println!(
        "tables-remote: {cells} cell changes in {txs} entries written on device A, pulled by device B"
    );
    let dir = tempfile::tempdir()?;
    let a = Workspace::create(dir.path().join("a.shoal"), options())?;
    a.declare(&spec())?;
    shoal_transactions(&a, txs)?;

    let mut conn = plain_db(&dir.path().join("plain.db"), "NORMAL")?;
    let (res, plain) = timed(|| plain_upserts(&mut conn, txs));
    res?;

    let b = Workspace::join(dir.path().join("b.shoal"), a.id(), options())?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    reset_peak_rss();
    let (res, shoal) = timed(|| rt.block_on(pull(a.replica(), b.replica())));
    let report = res.context("pull")?;
    let peak = peak_rss_mib();
    anyhow::ensure!(report.stalled.is_empty(), "stalled: {:?}", report.stalled);
    anyhow::ensure!(
        rt.block_on(b.replica().cursors())? == rt.block_on(a.replica().cursors())?,
        "B did not catch up"
    );
    let check = b.query("SELECT count(*) FROM items", &[])?;
    row(
        "baseline: plain SQLite upserts of the same rows (synchronous=NORMAL)",
        rate(cells, plain),
        "cells/s",
    );
    row("shoal: pull + verify + apply with merge rules", rate(cells, shoal), "cells/s");
    println!(
        "ratio shoal/plain: {:.2}x; target >= 150,000 cell changes/s; peak RSS during pull {peak:.1} MiB; rows: {:?}",
        rate(cells, shoal) / rate(cells, plain),
        check.rows[0][0]
    );
    drop(conn);
    bookkeeping(dir.path(), &b, cells)?;
    Ok(())
}

/// Sizes after VACUUM: the materialized table vs the plain table holding the same rows, and
/// the oplog, per cell.
fn bookkeeping(dir: &Path, ws: &Workspace, cells_written: u64) -> anyhow::Result<()> {
    let copy = dir.join("materialized-only.db");
    ws.replica().with_reader(|conn| {
        conn.execute("VACUUM INTO ?1", [copy.to_string_lossy()])
            .map_err(|e| shoal::core::SyncError::backend("vacuum", e))
    })?;
    let with_oplog = std::fs::metadata(&copy)?.len();
    let conn = Connection::open(&copy)?;
    conn.execute_batch("DELETE FROM shoal_oplog; VACUUM;")?;
    drop(conn);
    let materialized = std::fs::metadata(&copy)?.len();
    let plain_copy = dir.join("plain-vacuumed.db");
    Connection::open(dir.join("plain.db"))?
        .execute("VACUUM INTO ?1", [plain_copy.to_string_lossy()])?;
    let plain = std::fs::metadata(&plain_copy)?.len();
    let live_cells = (ID_SPACE.min(cells_written as usize / COLUMNS) * COLUMNS) as f64;
    println!(
        "bookkeeping: materialized {:.1} B/cell vs plain {:.1} B/cell => {:.1} B of bookkeeping per stored cell; oplog {:.1} B per cell change",
        materialized as f64 / live_cells,
        plain as f64 / live_cells,
        (materialized as f64 - plain as f64) / live_cells,
        (with_oplog - materialized) as f64 / cells_written as f64
    );
    Ok(())
}
