//! Oplog benchmarks (issue: foundation): local append and replica-to-replica pull.

use std::sync::Arc;

use anyhow::Context;
use rusqlite::{Connection, params};
use shoal_core::codec::Encode;
use shoal_core::{
    DeviceKey, Domain, HasCursors, Hlc, ManualClock, Op, Payload, WorkspaceId, pull as pull_entries,
};
use shoal_sqlite::{LocalTx, Options, SqliteReplica};

use crate::util::{peak_rss_mib, rate, reset_peak_rss, row, rss_mib, timed};

/// A typical small cell write: 32 bytes of op body.
fn op(n: u64) -> Op {
    let mut body = n.to_le_bytes().to_vec();
    body.resize(32, 0x5a);
    Op { domain: Domain::TABLES, kind: 6, body }
}

fn workspace() -> (WorkspaceId, DeviceKey) {
    let key = DeviceKey::from_secret_bytes(&[7; 32]);
    (WorkspaceId::derive(&key.public_key(), &[0; 16]), key)
}

fn replica(dir: &std::path::Path, name: &str, seed: u8) -> anyhow::Result<SqliteReplica> {
    let (ws, _) = workspace();
    let opts =
        Options { clock: Arc::new(ManualClock::new(1_700_000_000_000)), ..Options::default() };
    Ok(SqliteReplica::create(
        dir.join(name),
        ws,
        Some(DeviceKey::from_secret_bytes(&[seed; 32])),
        opts,
    )?)
}

/// Plain SQLite with the same durability settings as the replica (WAL, synchronous=FULL).
fn plain_db(path: &std::path::Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "wal")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch("CREATE TABLE log (k INTEGER PRIMARY KEY, v BLOB NOT NULL)")?;
    Ok(conn)
}

pub fn append(entries: u64, batch: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    println!("append: {entries} entries of one 32-byte op, {batch} per committed transaction");

    // Baseline: the same payload bytes, plain INSERTs, same batch and durability.
    let mut conn = plain_db(&dir.path().join("plain.db"))?;
    let (res, plain) = timed(|| -> anyhow::Result<()> {
        let mut n = 0;
        while n < entries {
            let tx = conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached("INSERT INTO log (k, v) VALUES (?1, ?2)")?;
                for k in n..(n + batch).min(entries) {
                    let payload = Payload { hlc: Hlc::from_u64(k), author: None, ops: vec![op(k)] };
                    stmt.execute(params![k as i64, payload.to_bytes()])?;
                }
            }
            tx.commit()?;
            n += batch;
        }
        Ok(())
    });
    res?;

    let r = replica(dir.path(), "shoal.db", 1)?;
    let (res, shoal) = timed(|| -> anyhow::Result<()> {
        let mut n = 0;
        while n < entries {
            let txs = (n..(n + batch).min(entries))
                .map(|k| LocalTx { ops: vec![op(k)], author: None })
                .collect();
            r.append_local(txs)?;
            n += batch;
        }
        Ok(())
    });
    res?;
    let (plain_rate, shoal_rate) = (rate(entries, plain), rate(entries, shoal));
    row("baseline: plain SQLite INSERT of the same bytes", plain_rate, "rows/s");
    row("shoal: local append (stamp+chain+seal+oplog+cursor)", shoal_rate, "entries/s");
    println!("ratio shoal/plain: {:.2}x (target >= 0.5x)", shoal_rate / plain_rate);
    Ok(())
}

pub fn pull(entries: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    println!("pull: {entries} entries of one 32-byte op from one SQLite replica into another");
    let source = replica(dir.path(), "source.db", 1)?;
    let mut n = 0;
    while n < entries {
        let txs = (n..(n + 10_000).min(entries))
            .map(|k| LocalTx { ops: vec![op(k)], author: None })
            .collect();
        source.append_local(txs)?;
        n += 10_000;
    }
    let target = replica(dir.path(), "target.db", 2)?;

    // Baseline: copy the same rows with plain SQLite (SELECT from one file, INSERT into
    // another, same page size per transaction and synchronous=NORMAL, as remote applies use).
    let src_conn = Connection::open(source.path())?;
    let mut dst = plain_db(&dir.path().join("copy.db"))?;
    dst.pragma_update(None, "synchronous", "NORMAL")?;
    let (res, plain) = timed(|| -> anyhow::Result<u64> {
        let mut copied = 0u64;
        let mut from = 0i64;
        loop {
            let mut stmt = src_conn.prepare_cached(
                "SELECT id, payload FROM shoal_oplog WHERE id >= ?1 ORDER BY id LIMIT 4096",
            )?;
            let rows: Vec<(i64, Vec<u8>)> = stmt
                .query_map([from], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            if rows.is_empty() {
                break;
            }
            let tx = dst.transaction()?;
            {
                let mut ins = tx.prepare_cached("INSERT INTO log (k, v) VALUES (?1, ?2)")?;
                for (k, v) in &rows {
                    ins.execute(params![k, v])?;
                }
            }
            tx.commit()?;
            copied += rows.len() as u64;
            from = rows.last().map(|r| r.0 + 1).unwrap_or(from);
        }
        Ok(copied)
    });
    let copied = res?;

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let rss_before = rss_mib();
    reset_peak_rss();
    let (res, shoal) = timed(|| rt.block_on(pull_entries(&source, &target)));
    let report = res.context("pull failed")?;
    let peak = peak_rss_mib();
    let done = rt.block_on(target.cursors())?.total();
    anyhow::ensure!(done == entries && report.new == entries, "pulled {done} of {entries}");
    row("baseline: plain SQLite SELECT+INSERT copy of the rows", rate(copied, plain), "rows/s");
    row("shoal: pull (read pages, verify chain+seals, apply)", rate(entries, shoal), "entries/s");
    println!(
        "ratio shoal/plain: {:.2}x; target >= 200,000 entries/s; RSS before pull {rss_before:.1} MiB, peak during pull {peak:.1} MiB",
        rate(entries, shoal) / rate(copied, plain)
    );
    Ok(())
}
