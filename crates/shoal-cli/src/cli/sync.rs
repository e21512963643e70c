//! `shoal sync` (one pass, or continuously with `--watch`) and `shoal status`.
//!
//! A one-shot sync runs a mirror pass (publish this device's new entries, pull everyone
//! else's), then — if a file in the folder failed verification — reads it again up to
//! three times over about 350 ms, in case it was still being uploaded, before it reports
//! it. Files that stay bad and origins that cannot advance are reported on stderr, after
//! everything else was synced, and the exit code is 2.
//!
//! Only one `shoal sync` runs per workspace file at a time (a lock file beside it,
//! `<file>.sync-lock`): two would publish the same entries of the same device.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Result, anyhow, bail};
use serde_json::json;
use shoal::core::{HasCursors, PeerCursors, PeerId};
use shoal::filelog::{Config, FolderPuller, Mirror, MirrorStatus, SyncReport};
use shoal::{Direction, SyncLock, Workspace};

use super::args::{StatusArgs, SyncArgs};
use super::out::{self, Out, time_text};
use super::tables::show_conflicts;
use super::{Ctx, Outcome};

/// Below this many entries to pull, no progress bar is drawn.
const PROGRESS_THRESHOLD: u64 = 500;

/// `shoal sync`.
pub async fn run(ctx: &mut Ctx, a: SyncArgs) -> Result<Outcome> {
    if let Some(url) = &a.server {
        super::relay::check_url(url)?;
    }
    let ws = ctx.open()?;
    let direction = match (a.pull_only, a.push_only) {
        (true, _) => Direction::PullOnly,
        (_, true) => Direction::PushOnly,
        _ => Direction::Both,
    };
    match (&a.folder, &a.server) {
        (Some(folder), Some(url)) => both(ctx, &ws, folder, url, &a, direction).await,
        (None, Some(url)) => super::relay::sync(ctx, &ws, url, &a, direction).await,
        (Some(folder), None) => folder_sync(ctx, &ws, folder, &a, direction).await,
        (None, None) => bail!("give --folder DIR or --server URL"),
    }
}

/// `shoal sync --folder DIR --server URL`: the folder, then the relay, then the folder
/// again (to publish what the relay pass wrote); with `--watch`, both loops at once. A
/// relay sync takes no sync lock, so neither waits for the other.
async fn both(
    ctx: &mut Ctx,
    ws: &Workspace,
    folder: &Path,
    url: &str,
    a: &SyncArgs,
    direction: Direction,
) -> Result<Outcome> {
    check_folder_exists(folder)?;
    if a.watch {
        let mut relay_ctx = ctx.sibling();
        let relay_ws = ws.clone();
        let (f, r) = tokio::join!(
            sync_watch(ctx, ws, folder, direction),
            super::relay::sync(&mut relay_ctx, &relay_ws, url, a, direction)
        );
        return Ok(worst(f?, r?));
    }
    let first = folder_sync(ctx, ws, folder, a, direction).await?;
    let relay = super::relay::sync(ctx, ws, url, a, direction).await?;
    if a.dry_run {
        return Ok(worst(first, relay));
    }
    let again = folder_sync(ctx, ws, folder, a, direction).await?;
    Ok(worst(worst(first, relay), again))
}

/// The worse of two outcomes (a failure wins).
fn worst(a: Outcome, b: Outcome) -> Outcome {
    if a == Outcome::Failed || b == Outcome::Failed { Outcome::Failed } else { a }
}

/// `shoal sync --folder DIR ...`.
async fn folder_sync(
    ctx: &mut Ctx,
    ws: &Workspace,
    folder: &Path,
    a: &SyncArgs,
    direction: Direction,
) -> Result<Outcome> {
    check_folder_exists(folder)?;
    if a.dry_run {
        dry_run(ctx, ws, folder, direction).await
    } else if a.watch {
        sync_watch(ctx, ws, folder, direction).await
    } else {
        sync_once(ctx, ws, folder, direction).await
    }
}

/// `shoal sync --folder DIR --dry-run`: what a pass would move, from both sides' cursors.
async fn dry_run(
    ctx: &mut Ctx,
    ws: &Workspace,
    folder: &Path,
    direction: Direction,
) -> Result<Outcome> {
    let puller = FolderPuller::new(folder, ws.id(), Config::default());
    let folder_cursors = puller
        .cursors()
        .map_err(|e| anyhow!(e).context(format!("reading {}", folder.display())))?;
    let local = ws.replica().durable_cursors()?;
    let own = ws.device();
    let would_publish = match (own, direction.pushes()) {
        (Some(o), true) => local.get(&o).saturating_sub(folder_cursors.get(&o)),
        _ => 0,
    };
    let would_pull: u64 = if direction.pulls() {
        folder_cursors.ahead_of(&local).iter().map(|(_, from, to)| to - from).sum()
    } else {
        0
    };
    ctx.out.emit(
        "dry_run",
        json!({ "folder": folder.display().to_string(), "would_publish": would_publish, "would_pull": would_pull }),
    )?;
    ctx.out.line(format!(
        "dry run with {}: would publish {would_publish} entr{}, pull {would_pull}; nothing moved",
        folder.display(),
        if would_publish == 1 { "y" } else { "ies" }
    ))?;
    Ok(Outcome::Ok)
}

/// Fails with a message naming the folder unless it exists and is a directory.
pub fn check_folder_exists(folder: &Path) -> Result<()> {
    match std::fs::metadata(folder) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => bail!("{}: the sync folder is not a directory", folder.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{}: the sync folder does not exist (Shoal never creates it: create it, or mount \
             the share, first)",
            folder.display()
        ),
        Err(e) => bail!("{}: the sync folder cannot be read: {e}", folder.display()),
    }
}

/// Takes the workspace's sync lock, or fails naming the lock and who holds it.
fn lock_sync(ws: &Workspace) -> Result<SyncLock> {
    match ws.try_lock_sync()? {
        Some(lock) => Ok(lock),
        None => bail!(
            "{}: another `shoal sync` is running on this workspace (it holds {}); it syncs \
             your changes too",
            ws.path().display(),
            ws.sync_lock_path().display()
        ),
    }
}

/// Takes the workspace's sync lock, waiting (and saying so) while another sync holds it;
/// `None` if shut down meanwhile. For `--watch`, which may start while a one-shot sync
/// finishes.
async fn wait_for_sync_lock(ws: &Workspace) -> Result<Option<SyncLock>> {
    let mut shutdown = std::pin::pin!(super::shutdown_signal());
    let mut said = false;
    loop {
        if let Some(lock) = ws.try_lock_sync()? {
            return Ok(Some(lock));
        }
        if !said {
            out::warn(format!(
                "another `shoal sync` holds {}; waiting for it to finish",
                ws.sync_lock_path().display()
            ));
            said = true;
        }
        tokio::select! {
            () = &mut shutdown => return Ok(None),
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

fn one_shot_config() -> Config {
    Config {
        retry_initial: Duration::from_millis(50),
        retry_max: Duration::from_millis(400),
        report_after: 1,
        fs_events: false,
        ..Config::default()
    }
}

/// One sync pass with `folder` (see the module doc), reported on `ctx.out`.
pub async fn sync_once(
    ctx: &mut Ctx,
    ws: &Workspace,
    folder: &Path,
    direction: Direction,
) -> Result<Outcome> {
    let lock = lock_sync(ws)?;
    let mirror = ws.folder_mirror(folder, one_shot_config(), &lock)?.with_direction(direction);
    let start = ws.replica().durable_cursors()?;
    let folder_cursors = mirror.folder().cursors().await.unwrap_or_default();
    let behind: u64 = folder_cursors
        .iter()
        .filter(|(o, _)| Some(*o) != ws.device())
        .map(|(o, n)| n.saturating_sub(start.get(&o)))
        .sum();
    let bar = if behind >= PROGRESS_THRESHOLD {
        out::progress(behind, "pulling entries")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let ticker = (!bar.is_hidden()).then(|| {
        let (bar, ws, start) = (bar.clone(), ws.clone(), total(&start));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let r = ws.clone();
                if let Ok(Ok(now)) =
                    tokio::task::spawn_blocking(move || r.replica().durable_cursors()).await
                {
                    bar.set_position(total(&now).saturating_sub(start));
                }
            }
        })
    });
    let mut report = SyncReport::default();
    let mut result = mirror.sync_once().await;
    add(&mut report, &result);
    if result.is_ok() && ws.stalls_on_superseded(&mirror.status())? {
        result = mirror.sync_once().await;
        add(&mut report, &result);
    }
    let mut retries = 0;
    while result.is_ok() && retries < 3 {
        let Some(at) = mirror.folder().puller().next_retry() else { break };
        tokio::time::sleep_until(at.into()).await;
        result = mirror.sync_once().await;
        add(&mut report, &result);
        retries += 1;
    }
    if let Some(t) = ticker {
        t.abort();
    }
    bar.finish_and_clear();
    let mut status = mirror.status();
    ws.add_local_stalls(&mut status)?;
    if let Err(e) = result {
        ws.note_sync_error(&e)?;
        if let shoal::core::SyncError::Forked { .. } = e {
            ws.publish_fork_evidence(folder)?;
        }
        return Err(anyhow!(e).context(format!("sync with {}", folder.display())));
    }
    ws.record_sync(&status.folder)?;
    let held = ws.replica().durable_cursors()?;
    let devices = status.origins.len();
    ctx.out.emit(
        "sync",
        json!({
            "folder": status.folder.display().to_string(),
            "published": report.published,
            "pulled": report.pulled,
            "duplicates": report.duplicates,
            "devices": devices,
            "in_sync": status.in_sync(),
            "time": time_text(now_millis()),
        }),
    )?;
    ctx.out.line(format!(
        "synced with {}: published {} entr{}, pulled {} ({} device{} known, {} entries held)",
        status.folder.display(),
        report.published,
        if report.published == 1 { "y" } else { "ies" },
        report.pulled,
        devices,
        if devices == 1 { "" } else { "s" },
        total(&held),
    ))?;
    report_problems(&mut ctx.out, &status)
}

fn add(total: &mut SyncReport, pass: &Result<SyncReport, shoal::core::SyncError>) {
    if let Ok(r) = pass {
        total.published += r.published;
        total.pulled += r.pulled;
        total.duplicates += r.duplicates;
    }
}

fn total(c: &PeerCursors) -> u64 {
    c.iter().map(|(_, n)| n).sum()
}

fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Stalled origins and bad files on stderr (and as envelopes); `Failed` if there are any.
fn report_problems(out: &mut Out, status: &MirrorStatus) -> Result<Outcome> {
    for s in &status.stalled {
        if !stalled_by_a_listed_bad_file(status, &s.reason) {
            out::warn(format!("device {} is stalled at entry {}: {}", s.origin, s.at, s.reason));
        }
        out.emit(
            "stalled",
            json!({ "origin": s.origin.to_hex(), "at": s.at, "reason": s.reason }),
        )?;
    }
    for b in &status.bad_files {
        out::warn(format!("bad file {}: {}", b.path.display(), b.reason));
        out.emit("bad_file", bad_file_json(b))?;
    }
    for f in &status.forked {
        out::warn(format!(
            "device {} is forked: two versions of its log disagree at entry {} (evidence {})",
            f.origin,
            f.next.saturating_sub(1),
            f.evidence.display()
        ));
        out.emit(
            "forked",
            json!({ "origin": f.origin.to_hex(), "next": f.next, "evidence": f.evidence.display().to_string() }),
        )?;
    }
    let problems =
        !status.stalled.is_empty() || !status.bad_files.is_empty() || !status.forked.is_empty();
    if problems {
        out::warn("the other devices were synced; the problems above remain");
    }
    Ok(if problems { Outcome::Failed } else { Outcome::Ok })
}

/// Whether a stall's reason is a bad file that the same report lists on its own line: the
/// human output names each bad file once (the JSON envelopes keep both records).
fn stalled_by_a_listed_bad_file(status: &MirrorStatus, reason: &str) -> bool {
    status.bad_files.iter().any(|b| reason.contains(&b.path.display().to_string()))
}

fn bad_file_json(b: &shoal::filelog::BadFile) -> serde_json::Value {
    json!({
        "path": b.path.display().to_string(),
        "origin": b.origin.to_hex(),
        "reason": b.reason,
        "failures": b.failures,
    })
}

/// `shoal sync --watch`: runs the mirror until Ctrl-C or SIGTERM, printing each pass that
/// moved something and each problem as it appears or clears.
async fn sync_watch(
    ctx: &mut Ctx,
    ws: &Workspace,
    folder: &Path,
    direction: Direction,
) -> Result<Outcome> {
    let Some(lock) = wait_for_sync_lock(ws).await? else { return Ok(Outcome::Ok) };
    let mirror = ws.folder_mirror(folder, Config::default(), &lock)?.with_direction(direction);
    if out::interactive() {
        out::warn(format!(
            "syncing {} with {}; Ctrl-C ends",
            ws.path().display(),
            folder.display()
        ));
    }
    let own = ws.device();
    let local = ws.replica().durable_cursors()?;
    let in_folder = mirror.folder().cursors().await.unwrap_or_default();
    let mut watcher = PassWatcher {
        passes: 0,
        own,
        pulled_base: local.iter().filter(|(o, _)| Some(*o) != own).map(|(_, n)| n).sum(),
        published_base: own.map_or(0, |o| in_folder.get(&o)),
        problems: BTreeSet::new(),
        last_error: None,
        last_success: None,
    };
    // A long first catch-up shows a progress bar (on terminals), fed from the file.
    let behind: u64 = in_folder
        .iter()
        .filter(|(o, _)| Some(*o) != own)
        .map(|(o, n)| n.saturating_sub(local.get(&o)))
        .sum();
    let bar = if behind >= PROGRESS_THRESHOLD {
        out::progress(behind, "catching up")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let outcome = {
        let run = mirror.run(super::shutdown_signal());
        // Reports passes until writing fails (a closed pipe, a full disk).
        let report = async {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if !bar.is_finished() && !bar.is_hidden() {
                    if mirror.status().passes > 0 {
                        bar.finish_and_clear();
                    } else if let Ok(now) = ws.replica().durable_cursors() {
                        let held: u64 =
                            now.iter().filter(|(o, _)| Some(*o) != own).map(|(_, n)| n).sum();
                        bar.set_position(held.saturating_sub(watcher.pulled_base));
                    }
                }
                if let Err(e) = watcher.observe(ws, &mirror, &mut ctx.out) {
                    return e;
                }
            }
        };
        tokio::select! {
            r = run => r.map_err(|e| anyhow!(e).context(format!("sync with {}", folder.display()))),
            e = report => Err(e),
        }
    };
    bar.finish_and_clear();
    outcome?;
    watcher.observe(ws, &mirror, &mut ctx.out)?;
    let mut status = mirror.status();
    ws.add_local_stalls(&mut status)?;
    Ok(if status.stalled.is_empty() && status.bad_files.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Failed
    })
}

/// What the last observed status of a running mirror was, to print only changes.
struct PassWatcher {
    passes: u64,
    own: Option<PeerId>,
    pulled_base: u64,
    published_base: u64,
    problems: BTreeSet<String>,
    last_error: Option<String>,
    last_success: Option<SystemTime>,
}

impl PassWatcher {
    fn observe(&mut self, ws: &Workspace, mirror: &Mirror, out: &mut Out) -> Result<()> {
        let mut status = mirror.status();
        ws.add_local_stalls(&mut status)?;
        if let Some(fork) = &status.fork
            && ws.fork()?.is_none()
        {
            ws.note_fork(fork)?;
        }
        if status.passes == self.passes {
            return Ok(());
        }
        let first = self.passes == 0;
        self.passes = status.passes;
        let (mut pulled, mut published) = (0, 0);
        for o in &status.origins {
            if Some(o.origin) == self.own {
                published = o.in_folder;
            } else {
                pulled += o.local;
            }
        }
        let (dp, dpub) = (
            pulled.saturating_sub(self.pulled_base),
            published.saturating_sub(self.published_base),
        );
        self.pulled_base = pulled;
        self.published_base = published;
        if first || dp > 0 || dpub > 0 {
            let time = time_text(now_millis());
            out.emit(
                "sync",
                json!({
                    "folder": status.folder.display().to_string(),
                    "published": dpub,
                    "pulled": dp,
                    "devices": status.origins.len(),
                    "in_sync": status.in_sync(),
                    "time": time,
                }),
            )?;
            out.line(format!(
                "{time}  published {dpub}, pulled {dp} entries ({} device(s) known{})",
                status.origins.len(),
                if status.in_sync() { ", in sync" } else { "" }
            ))?;
        }
        let mut problems = BTreeSet::new();
        for s in &status.stalled {
            let text = format!("device {} is stalled at entry {}: {}", s.origin, s.at, s.reason);
            if !self.problems.contains(&text) {
                if !stalled_by_a_listed_bad_file(&status, &s.reason) {
                    out::warn(&text);
                }
                out.emit(
                    "stalled",
                    json!({ "origin": s.origin.to_hex(), "at": s.at, "reason": s.reason }),
                )?;
            }
            problems.insert(text);
        }
        for b in &status.bad_files {
            let text = format!("bad file {}: {}", b.path.display(), b.reason);
            if !self.problems.contains(&text) {
                out::warn(&text);
                out.emit("bad_file", bad_file_json(b))?;
            }
            problems.insert(text);
        }
        self.problems = problems;
        if status.last_error != self.last_error {
            if let Some(e) = &status.last_error {
                out::warn(format!("sync pass failed (retrying): {e}"));
            } else if self.last_error.is_some() {
                out::warn("sync works again");
            }
            self.last_error = status.last_error.clone();
        }
        if status.last_success != self.last_success {
            self.last_success = status.last_success;
            ws.record_sync(&status.folder)?;
        }
        Ok(())
    }
}

/// `shoal status`.
pub async fn status(ctx: &mut Ctx, a: StatusArgs) -> Result<Outcome> {
    let ws = ctx.open()?;
    let st = ws.status()?;
    // The most recent of the last folder sync and the last relay sync.
    let last = match (ws.last_sync()?, ws.last_relay_sync()?) {
        (Some(f), Some(r)) => Some(if r.at_millis > f.at_millis { r } else { f }),
        (f, r) => f.or(r),
    };
    let mut bad_files = Vec::new();
    let mut folder: Option<PeerCursors> = None;
    if let Some(dir) = &a.folder {
        check_folder_exists(dir)?;
        let puller = FolderPuller::new(dir, ws.id(), one_shot_config());
        folder = Some(puller.cursors().map_err(|e| anyhow!("{}: {e}", dir.display()))?);
        bad_files = puller.bad_files();
    }
    let device = st.device.map(|d| d.to_hex());
    ctx.out.emit(
        "workspace",
        json!({
            "workspace": st.workspace.to_hex(),
            "device": device,
            "path": ws.path().display().to_string(),
        }),
    )?;
    ctx.out.line(format!("workspace  {}", st.workspace))?;
    ctx.out.line(format!(
        "device     {} ({})",
        device.as_deref().unwrap_or("none"),
        ws.path().display()
    ))?;
    ctx.out.emit(
        "last_sync",
        json!({
            "time": last.as_ref().map(|l| time_text(l.at_millis)),
            "millis": last.as_ref().map(|l| l.at_millis),
            "with": last.as_ref().map(|l| l.with.clone()),
        }),
    )?;
    ctx.out.line(match &last {
        Some(l) => format!("last sync  {} with {}", time_text(l.at_millis), l.with),
        None => "last sync  never".to_owned(),
    })?;

    // Every origin held locally or present in the folder.
    let mut origins: BTreeMap<PeerId, Option<&shoal::sqlite::OriginStatus>> =
        st.origins.iter().map(|o| (o.origin, Some(o))).collect();
    if let Some(f) = &folder {
        for (o, _) in f.iter() {
            origins.entry(o).or_insert(None);
        }
    }
    let mut rows = Vec::new();
    let mut stalled = 0;
    for (origin, local) in &origins {
        let held = local.map_or(0, |l| l.next);
        let applied = local.map_or(0, |l| l.materialized);
        let in_folder = folder.as_ref().map(|f| f.get(origin));
        let behind = in_folder.map(|n| n.saturating_sub(held));
        let this = Some(*origin) == st.device;
        let reason = local.and_then(|l| l.stalled.clone());
        if reason.is_some() {
            stalled += 1;
        }
        ctx.out.emit(
            "origin",
            json!({
                "origin": origin.to_hex(),
                "this_device": this,
                "held": held,
                "applied": applied,
                "in_folder": in_folder,
                "behind": behind,
                "stalled": reason,
                "stalled_since": local.and_then(|l| l.stalled_at).map(time_text),
                "pending": local.and_then(|l| l.pending.clone()),
                "superseded": local.and_then(|l| l.superseded).map(|s| json!({
                    "successor": s.successor.to_hex(),
                    "from": s.from,
                })),
            }),
        )?;
        let bad = bad_files.iter().filter(|b| b.origin == *origin).count();
        let state = match (&reason, this) {
            (Some(r), _) => format!("stalled at entry {applied}: {r}"),
            (None, _) if let Some(p) = local.and_then(|l| l.pending.as_ref()) => {
                format!("{} entries pending (stored, not applied): {p}", held - applied)
            }
            (None, _) if bad > 0 => format!("{bad} bad file(s) in the folder (below)"),
            (None, _) if let Some(s) = local.and_then(|l| l.superseded) => format!(
                "superseded from entry {} by device {} (clock recovery): not applied",
                s.from,
                s.successor.short()
            ),
            (None, true) => "this device".to_owned(),
            (None, false) if behind.is_some_and(|b| b > 0) => "behind the folder".to_owned(),
            (None, false) => "ok".to_owned(),
        };
        let opt = |v: Option<u64>| v.map_or("-".to_owned(), |n| n.to_string());
        rows.push(vec![
            format!("  {}", origin.short()),
            held.to_string(),
            applied.to_string(),
            opt(in_folder),
            opt(behind),
            state,
        ]);
    }
    ctx.out.line(format!("devices    {}", origins.len()))?;
    ctx.out.table(&["  device", "held", "applied", "in folder", "behind", "state"], &rows)?;
    for b in &bad_files {
        out::warn(format!("bad file {}: {}", b.path.display(), b.reason));
        ctx.out.emit("bad_file", bad_file_json(b))?;
    }
    let schema = ws.schema()?;
    if schema.conflicts.is_empty() {
        ctx.out.line("schema conflicts: none")?;
    }
    show_conflicts(&mut ctx.out, &schema)?;
    if let Some(fork) = &st.fork {
        out::warn(format!("this device's own log is forked: {fork}"));
        ctx.out.emit("forked", json!({ "reason": fork }))?;
    }
    Ok(if stalled > 0 || !bad_files.is_empty() || st.fork.is_some() || st.clock_ahead.is_some() {
        Outcome::Failed
    } else {
        Outcome::Ok
    })
}
