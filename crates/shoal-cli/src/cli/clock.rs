//! The CLI side of wrong clocks and forks: the warning printed after put/delete/table/
//! sync/status when this device's clock state ran ahead, `shoal recover-clock`, `shoal
//! recover-fork` (the same hand-over to a new key), and the test-only clock offset.
//!
//! `SHOAL_TEST_CLOCK_OFFSET` (signed milliseconds) moves the wall clock the binary hands
//! to the library by that much. It exists only so the CLI tests can reproduce a machine
//! whose clock read 2100 without changing the machine's clock; it is read by this binary
//! only, never by the library, and is not meant for anything else.

use std::sync::Arc;

use anyhow::Result;
use serde_json::json;
use shoal::core::{SystemClock, WallClock, human_duration};
use shoal::{Workspace, WorkspaceOptions};

use super::args::{RecoverClockArgs, RecoverForkArgs};
use super::out;
use super::{Ctx, Outcome};

/// The test-only clock offset variable (see the module doc).
const OFFSET_VAR: &str = "SHOAL_TEST_CLOCK_OFFSET";

/// The system clock moved by `SHOAL_TEST_CLOCK_OFFSET` milliseconds.
#[derive(Debug)]
struct OffsetClock(i64);

impl WallClock for OffsetClock {
    fn now_millis(&self) -> u64 {
        SystemClock.now_millis().saturating_add_signed(self.0)
    }
}

/// The options every command opens or creates a workspace with.
pub fn options() -> WorkspaceOptions {
    match std::env::var(OFFSET_VAR).ok().and_then(|v| v.trim().parse::<i64>().ok()) {
        Some(offset) => {
            WorkspaceOptions { clock: Arc::new(OffsetClock(offset)), ..Default::default() }
        }
        None => WorkspaceOptions::default(),
    }
}

/// Prints the clock warning if this device's clock state is ahead (best effort).
pub fn warn_if_ahead(ws: &Workspace) {
    if let Ok(Some(ahead)) = ws.clock_ahead() {
        out::warn(format!(
            "warning: this device's clock is ahead by {} of the machine's clock (its writes \
             are stamped {}): every other device stalls on them. Once the machine's clock is \
             right, run `shoal recover-clock --folder DIR` to write again and have them seen",
            human_duration(ahead.ahead_ms),
            super::out::time_text(ahead.remote.millis()),
        ));
    }
}

/// `shoal recover-clock`.
pub async fn run(ctx: &mut Ctx, a: RecoverClockArgs) -> Result<Outcome> {
    let ws = ctx.open()?;
    if let Some(folder) = &a.folder {
        super::sync::check_folder_exists(folder)?;
        // Publish the old origin's entries first: after the hand-over nobody can.
        ws.sync_folder(folder).await?;
    }
    let (ws, rec) = ws.recover_clock()?;
    let s = rec.succession;
    ctx.out.emit(
        "recovered",
        json!({
            "predecessor": s.predecessor.to_hex(),
            "successor": s.successor.to_hex(),
            "cut": s.cut,
            "reissued": s.reissued,
            "was_ahead_ms": rec.was_ahead.ahead_ms,
        }),
    )?;
    ctx.out.line(format!(
        "recovered: this device was ahead by {}; it now writes as device {} (successor of {} \
         from its entry {}), and re-issued {} write(s)",
        human_duration(rec.was_ahead.ahead_ms),
        s.successor.short(),
        s.predecessor.short(),
        s.cut,
        s.reissued
    ))?;
    if let Some(folder) = &a.folder {
        ws.sync_folder(folder).await?;
        ctx.out.line(format!("published to {}", folder.display()))?;
    }
    Ok(Outcome::Ok)
}

/// `shoal recover-fork`.
pub async fn recover_fork(ctx: &mut Ctx, a: RecoverForkArgs) -> Result<Outcome> {
    let ws = ctx.open()?;
    if let Some(url) = &a.server {
        super::relay::check_url(url)?;
        let (ws, rec) = ws.recover_fork_at_relay(url).await?;
        report_fork_recovery(ctx, &rec)?;
        ws.sync_server(url).await?;
        ctx.out.line(format!("published to relay {url}"))?;
        return Ok(Outcome::Ok);
    }
    let folder = match &a.folder {
        Some(f) => f.clone(),
        None => match ws.last_sync()? {
            Some(last) => std::path::PathBuf::from(last.with),
            None => anyhow::bail!(
                "--folder is required: give the sync folder in which the fork was found"
            ),
        },
    };
    super::sync::check_folder_exists(&folder)?;
    let (ws, rec) = ws.recover_fork(&folder)?;
    report_fork_recovery(ctx, &rec)?;
    ws.sync_folder(&folder).await?;
    ctx.out.line(format!("published to {}", folder.display()))?;
    Ok(Outcome::Ok)
}

/// Prints what a fork recovery did.
fn report_fork_recovery(ctx: &mut Ctx, rec: &shoal::ForkRecovery) -> Result<()> {
    let s = &rec.succession;
    ctx.out.emit(
        "recovered",
        json!({
            "predecessor": s.predecessor.to_hex(),
            "successor": s.successor.to_hex(),
            "forked_at": rec.forked_at,
            "reissued": s.reissued,
        }),
    )?;
    ctx.out.line(format!(
        "recovered: this device's log forked at entry {}; it now writes as device {} \
         (successor of {}), and re-issued {} write(s) of its forked branch",
        rec.forked_at,
        s.successor.short(),
        s.predecessor.short(),
        s.reissued
    ))?;
    Ok(())
}
