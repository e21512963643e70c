//! `shoal verify`: checks every entry stored in the workspace file (decoding, each
//! origin's hash chain from its seed, every seal's signature) and, with `--folder`, every
//! segment file of the workspace in a sync folder plus each origin's chain across its
//! segments. Every bad file is reported and the others are still checked; exit code 2 if
//! anything failed.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Result;
use serde_json::json;
use shoal::Workspace;
use shoal::core::{ChainPosition, FileLogPuller, Ingest};
use shoal::filelog::layout::{Layout, list_segments};
use shoal::filelog::{Config, FolderPuller};

use super::args::VerifyArgs;
use super::out::{self, progress};
use super::sync::check_folder_exists;
use super::{Ctx, Outcome};

/// Below this many entries (or files), no progress bar is drawn.
const PROGRESS_THRESHOLD: u64 = 500;

/// `shoal verify`.
pub fn run(ctx: &mut Ctx, a: VerifyArgs) -> Result<Outcome> {
    let ws = ctx.open()?;
    let cursors = ws.replica().durable_cursors()?;
    let total: u64 = cursors.iter().map(|(_, n)| n).sum();
    let devices = cursors.iter().count();
    let bar = bar(total, "verifying entries");
    let result = ws.replica().verify_all(|n| bar.set_position(n));
    bar.finish_and_clear();
    let mut failed = false;
    let path = ws.path().display().to_string();
    match result {
        Ok(n) => {
            ctx.out.emit(
                "verified",
                json!({ "what": "workspace", "path": path, "entries": n, "devices": devices }),
            )?;
            ctx.out.line(format!(
                "{path}: verified {n} entries of {devices} device(s): every hash chain and \
                 signature checks"
            ))?;
        }
        Err(e) => {
            out::warn(format!("{path}: {e}"));
            ctx.out.emit("problem", json!({ "path": path, "reason": e.to_string() }))?;
            failed = true;
        }
    }
    failed |= verify_state(ctx, &ws, total)?;
    if let Some(folder) = &a.folder {
        failed |= verify_folder(ctx, &ws, folder)?;
    }
    Ok(if failed { Outcome::Failed } else { Outcome::Ok })
}

/// The materialized state against a fresh rebuild from the oplog: each difference on its
/// own line (table, row, column). True if any.
fn verify_state(ctx: &mut Ctx, ws: &Workspace, total: u64) -> Result<bool> {
    let bar = bar(total, "rebuilding the tables from the log");
    let check = ws.verify_state(|n| bar.set_position(n));
    bar.finish_and_clear();
    let check = check?;
    let path = ws.path().display().to_string();
    for d in &check.differences {
        out::warn(format!("{path}: the tables differ from a rebuild from the log: {d}"));
        ctx.out.emit(
            "difference",
            json!({ "path": path, "table": d.table, "row": d.row, "column": d.column, "what": d.what }),
        )?;
    }
    if check.differences.is_empty() {
        ctx.out.emit(
            "verified",
            json!({ "what": "tables", "path": path, "entries": check.entries }),
        )?;
        ctx.out.line(format!(
            "{path}: the tables equal a rebuild from the log ({} entries replayed)",
            check.entries
        ))?;
    }
    Ok(!check.differences.is_empty())
}

fn bar(total: u64, what: &str) -> indicatif::ProgressBar {
    if total >= PROGRESS_THRESHOLD {
        progress(total, what)
    } else {
        indicatif::ProgressBar::hidden()
    }
}

/// Checks the folder's copy of the workspace; true if anything failed.
fn verify_folder(ctx: &mut Ctx, ws: &Workspace, folder: &Path) -> Result<bool> {
    check_folder_exists(folder)?;
    let config = Config { report_after: 1, ..Config::default() };
    let puller = FolderPuller::new(folder, ws.id(), config);
    let layout = Layout::new(folder, ws.id());
    let origins = puller.list_peers()?;
    let mut failed = false;
    let mut bad_paths = BTreeSet::new();
    let mut files = Vec::new();
    for origin in &origins {
        let dir = layout.origin_dir(origin);
        match list_segments(&dir) {
            Ok(list) => files.extend(list.into_iter().map(|f| (*origin, f))),
            Err(e) => {
                out::warn(format!("{}: cannot list the directory: {e}", dir.display()));
                ctx.out.emit("bad_file", json!({ "path": dir.display().to_string(), "origin": origin.to_hex(), "reason": e.to_string() }))?;
                failed = true;
            }
        }
    }
    // Every file, fully: checksum, place, chain within it, every seal.
    let bar = bar(files.len() as u64, "verifying segments");
    let mut segments = 0u64;
    for (origin, file) in &files {
        match puller.read_segment(*origin, file) {
            Ok(_) => segments += 1,
            Err(e) => {
                out::warn(format!("bad file {e}"));
                ctx.out.emit(
                    "bad_file",
                    json!({ "path": file.path.display().to_string(), "origin": origin.to_hex(), "reason": e.to_string() }),
                )?;
                bad_paths.insert(file.path.display().to_string());
                failed = true;
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    // Each origin's log across its files, from its seed: no gap, no broken link. Through the
    // ingest pipeline with a clock that cannot call anything skewed: verifying a stored log
    // must not depend on today's date.
    let ingest = Ingest::ignoring_skew(ws.id());
    let mut entries = 0u64;
    for origin in &origins {
        let mut position = ChainPosition::start(&ws.id(), origin);
        loop {
            let page = match puller.read_entries(*origin, position.next, 4096) {
                Ok(p) => p,
                Err(e) => {
                    let text = e.to_string();
                    if bad_paths.iter().any(|p| text.contains(p.as_str())) {
                        out::warn(format!(
                            "device {origin}: the folder's copy of its log stops at entry {} (bad \
                             file above)",
                            position.next
                        ));
                    } else {
                        out::warn(format!("device {origin}: entries from {}: {e}", position.next));
                    }
                    failed = true;
                    break;
                }
            };
            if page.is_empty() {
                break;
            }
            let run = ingest.verify(*origin, position, page);
            if let Some(e) = run.stop() {
                out::warn(format!("device {origin}: entries from {}: {e}", run.end().next));
                failed = true;
                break;
            }
            if run.end().next == position.next {
                break;
            }
            position = run.end();
        }
        entries += position.next;
    }
    let path = folder.display().to_string();
    ctx.out.emit(
        "verified",
        json!({
            "what": "folder",
            "path": path,
            "entries": entries,
            "devices": origins.len(),
            "segments": segments,
            "bad_files": bad_paths.len(),
        }),
    )?;
    ctx.out.line(format!(
        "{path}: verified {segments} segment file(s) holding {entries} entries of {} device(s){}",
        origins.len(),
        if failed { "; problems reported above" } else { "" }
    ))?;
    Ok(failed)
}
