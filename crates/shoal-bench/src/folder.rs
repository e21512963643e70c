//! Shared-folder benchmarks (issue: sync over a shared folder): catch-up of a new device
//! from a folder, bytes per cell change on disk, and commit-to-visible latency.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use notify::Watcher;
use rusqlite::Connection;
use shoal::core::ManualClock;
use shoal::core::control::Role;
use shoal::filelog::Config;
use shoal::{ColumnType, TableSpec, Value, WatchEvent, Workspace, WorkspaceOptions};

use crate::util::{Privacy, Published, dir_size, peak_rss_mib, rate, row, run_catchup, timed};

const COLUMNS: usize = 10;
const ROWS_PER_TX: usize = 10;

fn spec() -> TableSpec {
    (0..COLUMNS).fold(TableSpec::new("items").key("id", ColumnType::Text), |s, c| {
        s.column(
            format!("c{c}"),
            if c.is_multiple_of(2) { ColumnType::Integer } else { ColumnType::Text },
        )
    })
}

fn cell(device: usize, tx: usize, row: usize, col: usize) -> Value {
    if col.is_multiple_of(2) {
        Value::Integer((tx * 1000 + row * 10 + col) as i64)
    } else {
        Value::Text(format!("device {device} value {tx}/{row}/{col}"))
    }
}

fn write(ws: &Workspace, device: usize, txs: usize) -> anyhow::Result<()> {
    let names: Vec<String> = (0..COLUMNS).map(|c| format!("c{c}")).collect();
    for t in 0..txs {
        let mut tx = ws.transaction()?;
        for r in 0..ROWS_PER_TX {
            let id = format!("d{device}-row-{:06}", (t * ROWS_PER_TX + r) % 20_000);
            let mut cells: Vec<(&str, Value)> = vec![("id", Value::Text(id))];
            cells
                .extend(names.iter().enumerate().map(|(c, n)| (n.as_str(), cell(device, t, r, c))));
            tx.put("items", &cells)?;
        }
        tx.commit()?;
    }
    Ok(())
}

/// `origins` devices of a new workspace of kind `privacy` (in `dir`) each write
/// `per_origin` entries of [`ROWS_PER_TX`] rows x [`COLUMNS`] cells and publish them to
/// the folder `dir/shared`. The first device creates the workspace; in a members-only one
/// the others join with an invite that has a use left for the device that catches up.
pub fn publish(
    dir: &Path,
    per_origin: usize,
    origins: usize,
    privacy: Privacy,
) -> anyhow::Result<Published> {
    let folder = dir.join("shared");
    std::fs::create_dir(&folder)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let clock = ManualClock::new(1_700_000_000_000);
    let options = || {
        privacy.options(WorkspaceOptions { clock: Arc::new(clock.clone()), ..Default::default() })
    };
    let first = Workspace::create(dir.join("d0.shoal"), options())?;
    first.declare(&spec())?;
    let workspace = first.id().to_string();
    let code = match privacy {
        Privacy::Open => None,
        _ => {
            let uses = u32::try_from(origins)?; // the other writers and the new device
            let code = first.invite(Role::Member, None, uses, "")?.encode();
            rt.block_on(first.sync_folder(&folder))?; // the invite, for those who use it
            Some(code)
        }
    };
    let mut devices = vec![first];
    for i in 1..origins {
        let file = dir.join(format!("d{i}.shoal"));
        devices.push(crate::util::join(&file, &workspace, code.as_deref(), options())?);
    }
    for (i, ws) in devices.iter().enumerate() {
        if i > 0 {
            rt.block_on(ws.sync_folder(&folder))?; // learn the schema (and the keys)
        }
        write(ws, i, per_origin)?;
        rt.block_on(ws.sync_folder(&folder))?;
    }
    if std::env::var_os("SHOAL_BENCH_LIST").is_some() {
        for origin in std::fs::read_dir(folder.join(&workspace))?.flatten() {
            let mut files: Vec<(String, u64)> = std::fs::read_dir(origin.path())?
                .flatten()
                .map(|f| {
                    (
                        f.file_name().to_string_lossy().into_owned(),
                        f.metadata().map_or(0, |m| m.len()),
                    )
                })
                .collect();
            files.sort();
            println!("{}: {files:?}", origin.file_name().to_string_lossy());
        }
    }
    Ok(Published { folder, workspace, code, held: None })
}

/// Entries per origin for about `cells` cell changes from `origins` devices.
pub fn per_origin(cells: usize, origins: usize) -> usize {
    cells / origins / (ROWS_PER_TX * COLUMNS)
}

/// Cell changes in one entry.
pub const CELLS_PER_ENTRY: usize = ROWS_PER_TX * COLUMNS;

/// A new device catches up from a folder holding `cells` cell changes from `origins`
/// devices.
pub fn catchup(cells: usize, origins: usize) -> anyhow::Result<()> {
    let per_origin = per_origin(cells, origins);
    let cells = (per_origin * origins * CELLS_PER_ENTRY) as u64;
    println!(
        "folder-catchup: {cells} cell changes from {origins} origins ({per_origin} entries of {CELLS_PER_ENTRY} cells each) in one folder"
    );
    let dir = tempfile::tempdir()?;
    let source = publish(dir.path(), per_origin, origins, Privacy::Open)?;
    let on_disk = dir_size(&source.folder);

    // Baseline: plain SQLite upserts of the same rows into a plain table.
    let plain = Connection::open(dir.path().join("plain.db"))?;
    plain.pragma_update(None, "journal_mode", "wal")?;
    plain.pragma_update(None, "synchronous", "NORMAL")?;
    let cols: Vec<String> = (0..COLUMNS).map(|c| format!("c{c}")).collect();
    plain
        .execute_batch(&format!("CREATE TABLE items (id TEXT PRIMARY KEY, {})", cols.join(", ")))?;
    let upsert = format!(
        "INSERT INTO items (id, {}) VALUES (?1, {}) ON CONFLICT (id) DO UPDATE SET {}",
        cols.join(", "),
        (2..=COLUMNS + 1).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", "),
        cols.iter().map(|c| format!("{c} = excluded.{c}")).collect::<Vec<_>>().join(", ")
    );
    let (res, plain_time) = timed(|| -> anyhow::Result<()> {
        let mut plain = plain;
        for d in 0..origins {
            for t in 0..per_origin {
                let tx = plain.transaction()?;
                {
                    let mut stmt = tx.prepare_cached(&upsert)?;
                    for r in 0..ROWS_PER_TX {
                        let id = format!("d{d}-row-{:06}", (t * ROWS_PER_TX + r) % 20_000);
                        let mut args = vec![shoal::sqlite::to_sql(&Value::Text(id))];
                        args.extend((0..COLUMNS).map(|c| shoal::sqlite::to_sql(&cell(d, t, r, c))));
                        stmt.execute(rusqlite::params_from_iter(args))?;
                    }
                }
                tx.commit()?;
            }
        }
        Ok(())
    });
    res?;

    if std::env::var_os("SHOAL_BENCH_KEEP").is_some() {
        println!("kept: folder {} workspace {}", source.folder.display(), source.workspace);
        std::mem::forget(dir);
        return Ok(());
    }
    // The catch-up runs in a fresh process, so its memory figure is its own and not what
    // this process kept from writing the data.
    let late = dir.path().join("late.shoal");
    let run = run_catchup(source.child_args("folder-catchup-child", &late), &source)?;
    let (seconds, peak, pulled) = (run.seconds, run.peak_rss_mib, run.pulled);
    row("baseline: plain SQLite upserts of the same rows", rate(cells, plain_time), "cells/s");
    row("shoal: new device catches up from the folder", cells as f64 / seconds, "cells/s");
    println!(
        "ratio shoal/plain: {:.2}x; target >= 150,000 cell changes/s; entries pulled {pulled}; peak RSS of the catch-up process {peak:.1} MiB",
        cells as f64 / seconds / rate(cells, plain_time),
    );
    println!(
        "on disk: {on_disk} bytes in the folder = {:.1} bytes per cell change (zstd level 3)",
        on_disk as f64 / cells as f64
    );
    Ok(())
}

/// The catch-up half of [`catchup`], in its own process: join the workspace, sync once
/// from the folder, print the time, entries pulled and peak RSS.
pub fn catchup_child(
    folder: &Path,
    workspace: &str,
    file: &Path,
    code: Option<&str>,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let clock = ManualClock::new(1_700_000_000_000);
    let options = WorkspaceOptions { clock: Arc::new(clock), ..Default::default() };
    let late = crate::util::join(file, workspace, code, options)?;
    let (res, time) = timed(|| rt.block_on(late.sync_folder(folder)));
    let out = res?;
    anyhow::ensure!(out.status.in_sync(), "not in sync: {:?}", out.status);
    println!(
        "seconds={} pulled={} peak_rss_mib={:.1}",
        time.as_secs_f64(),
        out.report.pulled,
        peak_rss_mib()
    );
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Commit on device A to visible on device B through a local folder, both running
/// continuous mirrors with file events; baseline: a raw file-system event for a file
/// written and renamed into a watched folder.
pub fn latency(samples: usize) -> anyhow::Result<()> {
    println!(
        "folder-latency: {samples} commits on A, each timed until visible on B (continuous mirrors, file events on, default config)"
    );
    let dir = tempfile::tempdir()?;
    let folder = dir.path().join("shared");
    std::fs::create_dir(&folder)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;

    // Baseline: how long the OS takes to tell a watcher about a file renamed into place.
    let raw_dir = dir.path().join("raw");
    std::fs::create_dir(&raw_dir)?;
    let (tx, rx) = std::sync::mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
        if let Ok(e) = e
            && matches!(e.kind, notify::EventKind::Modify(notify::event::ModifyKind::Name(_)))
        {
            let _ = tx.send(Instant::now());
        }
    })?;
    watcher.watch(&raw_dir, notify::RecursiveMode::Recursive)?;
    let mut raw = Vec::with_capacity(samples);
    for i in 0..samples {
        let tmp = raw_dir.join(format!(".tmp{i}"));
        std::fs::write(&tmp, b"x")?;
        let start = Instant::now();
        std::fs::rename(&tmp, raw_dir.join(format!("f{i}.seg")))?;
        let seen = rx.recv_timeout(Duration::from_secs(5))?;
        while rx.try_recv().is_ok() {}
        raw.push(seen.saturating_duration_since(start));
    }
    drop(watcher);

    let a = Workspace::create(dir.path().join("a.shoal"), WorkspaceOptions::default())?;
    let b = Workspace::join(dir.path().join("b.shoal"), a.id(), WorkspaceOptions::default())?;
    let spec =
        TableSpec::new("pings").key("id", ColumnType::Integer).column("at", ColumnType::Text);
    a.declare(&spec)?;
    rt.block_on(a.sync_folder(&folder))?;
    rt.block_on(b.sync_folder(&folder))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for ws in [&a, &b] {
        let lock = ws
            .try_lock_sync()?
            .ok_or_else(|| anyhow::anyhow!("the workspace is being synced by another process"))?;
        let mirror = ws.folder_mirror(&folder, Config::default(), &lock)?;
        let mut stop = stop_rx.clone();
        tasks.push(rt.spawn(async move {
            mirror
                .run(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        }));
    }
    let mut watch = b.watch("pings")?;
    let mut lat = Vec::with_capacity(samples);
    rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        for i in 0..samples {
            let start = Instant::now();
            let mut tx = a.transaction()?;
            tx.put(
                "pings",
                &[("id", Value::Integer(i as i64)), ("at", Value::Text("now".into()))],
            )?;
            tx.commit()?;
            loop {
                let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
                    .await
                    .context("no change on B within 10 s")?;
                match event {
                    Some(WatchEvent::Changed { key, .. })
                        if key == vec![Value::Integer(i as i64)] =>
                    {
                        break;
                    }
                    Some(_) => continue,
                    None => anyhow::bail!("B closed"),
                }
            }
            lat.push(start.elapsed());
            // Space the commits like a person typing, so each is timed on its own.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::Ok(())
    })?;
    stop_tx.send(true)?;
    for t in tasks {
        rt.block_on(t)??;
    }
    raw.sort();
    lat.sort();
    println!(
        "baseline: raw file event after rename into a watched folder   p50 {:>7.2} ms   p99 {:>7.2} ms",
        ms(percentile(&raw, 0.5)),
        ms(percentile(&raw, 0.99))
    );
    println!(
        "shoal: commit on A to visible on B through the folder          p50 {:>7.2} ms   p99 {:>7.2} ms   (target p50 < 200 ms)",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99))
    );
    Ok(())
}
