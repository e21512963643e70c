//! `shoal invite`, `join`, `members`, `admit`, `remove`, `leave`: membership from the
//! command line (docs/CLI.md, "Membership"). Glue over `Workspace`'s membership methods;
//! the rules are the library's.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::json;
use shoal::core::PeerId;
use shoal::core::control::Role;
use shoal::core::invite::InviteCode;
use shoal::core::membership::DeviceState;
use shoal::{Member, Workspace};

use super::args::{AdmitArgs, DeviceArgs, FolderArg, InviteArgs, JoinArgs};
use super::{Ctx, Outcome, out, sync};

fn role(text: &str) -> Role {
    if text == "admin" { Role::Admin } else { Role::Member }
}

/// Syncs once if a folder was given (the outcome of a sync that found problems is kept).
async fn maybe_sync(ctx: &mut Ctx, ws: &Workspace, folder: Option<&Path>) -> Result<Outcome> {
    match folder {
        Some(folder) => {
            sync::check_folder_exists(folder)?;
            sync::sync_once(ctx, ws, folder, shoal::Direction::Both).await
        }
        None => Ok(Outcome::Ok),
    }
}

/// `shoal invite`.
pub async fn invite(ctx: &mut Ctx, a: InviteArgs) -> Result<Outcome> {
    let ws = ctx.open()?;
    let valid_for: Option<Duration> = match &a.expires {
        None => None,
        Some(text) => Some(humantime::parse_duration(text).map_err(|e| {
            anyhow!("--expires {text:?}: not a duration such as 7d, 12h or 30m ({e})")
        })?),
    };
    if let Some(folder) = &a.folder {
        sync::check_folder_exists(folder)?;
    }
    if let Some(url) = &a.server {
        super::relay::check_url(url)?;
    }
    let hint = match (&a.folder, &a.server) {
        (Some(f), _) => f.display().to_string(),
        (None, Some(url)) => url.clone(),
        (None, None) => String::new(),
    };
    let code = ws.invite(role(&a.role), valid_for, a.uses, &hint)?;
    let text = code.encode();
    ctx.out.emit(
        "invite",
        json!({
            "code": text,
            "role": a.role,
            "uses": a.uses,
            "expires_in_ms": valid_for.map(|d| d.as_millis() as u64),
            "folder": hint,
        }),
    )?;
    // The code alone on stdout, so `shoal join -w F "$(shoal invite ...)"` works; the
    // advice only for a person at a terminal.
    ctx.out.line(&text)?;
    if std::io::stdout().is_terminal() {
        out::warn(format!(
            "give this code to the person joining, over a channel you trust: it lets {} \
             device{} join as {}{}",
            a.uses,
            if a.uses == 1 { "" } else { "s" },
            a.role,
            match &a.expires {
                Some(e) => format!(" within {e}"),
                None => String::new(),
            }
        ));
    }
    if let Some(url) = &a.server {
        // Published quietly: the output is the code.
        return match ws.sync_server(url).await {
            Ok(s) if s.relay_has_everything => Ok(Outcome::Ok),
            Ok(_) => {
                out::warn(format!(
                    "the invite may not be at relay {url} yet: run `shoal sync --server {url} --wait`"
                ));
                Ok(Outcome::Failed)
            }
            Err(shoal::Error::SyncBusy { .. }) => {
                out::warn("a sync of this workspace is running: it publishes the invite");
                Ok(Outcome::Ok)
            }
            Err(e) => Err(anyhow!(e).context(format!("publishing the invite to relay {url}"))),
        };
    }
    let Some(folder) = &a.folder else {
        out::warn("the invite is published with this device's next `shoal sync`");
        return Ok(Outcome::Ok);
    };
    // Published quietly: the output is the code.
    let done = match ws.sync_folder(folder).await {
        Ok(done) => done,
        Err(shoal::Error::SyncBusy { .. }) => {
            out::warn("a sync of this workspace is running: it publishes the invite");
            return Ok(Outcome::Ok);
        }
        Err(e) => return Err(e.into()),
    };
    let s = &done.status;
    let trouble = s.last_error.is_some()
        || s.fork.is_some()
        || !s.forked.is_empty()
        || !s.stalled.is_empty()
        || !s.bad_files.is_empty();
    if !trouble {
        Ok(Outcome::Ok)
    } else {
        out::warn(format!(
            "the invite is published, but the sync with {} found problems: see `shoal status \
             --folder {}`",
            folder.display(),
            folder.display()
        ));
        Ok(Outcome::Failed)
    }
}

/// `shoal join`.
pub async fn join(ctx: &mut Ctx, a: JoinArgs) -> Result<Outcome> {
    let path = ctx.workspace_path()?.to_owned();
    let code = InviteCode::parse(&a.code).map_err(|e| anyhow!("the invite code: {e}"))?;
    let relay_hint = code.hint.starts_with("ws://") || code.hint.starts_with("wss://");
    let server =
        a.server.clone().or_else(|| (a.folder.is_none() && relay_hint).then(|| code.hint.clone()));
    if let Some(url) = &server {
        super::relay::check_url(url)?;
        let ws = Workspace::join_with_code(&path, &code, super::clock::options())?;
        super::init::announce(ctx, &ws, &path, false)?;
        let args = super::args::SyncArgs {
            folder: None,
            server: Some(url.clone()),
            watch: false,
            wait: false,
            timeout: Duration::from_secs(10),
            pull_only: false,
            push_only: false,
            dry_run: false,
        };
        return super::relay::sync(ctx, &ws, url, &args, shoal::Direction::Both).await;
    }
    let folder: Option<PathBuf> = match (&a.folder, code.hint.as_str()) {
        (Some(f), _) => Some(f.clone()),
        (None, "") => None,
        (None, hint) if Path::new(hint).is_dir() => Some(PathBuf::from(hint)),
        (None, hint) => bail!(
            "the invite names the sync folder {hint:?}, which is not a directory here: \
             give the folder with --folder DIR"
        ),
    };
    if let Some(folder) = &folder {
        sync::check_folder_exists(folder)?;
    }
    let ws = Workspace::join_with_code(&path, &code, super::clock::options())?;
    super::init::announce(ctx, &ws, &path, false)?;
    match &folder {
        Some(folder) => sync::sync_once(ctx, &ws, folder, shoal::Direction::Both).await,
        None => {
            out::warn(
                "no sync folder or relay: run `shoal sync --folder DIR` or `shoal sync --server \
                 URL` to fetch the workspace",
            );
            Ok(Outcome::Ok)
        }
    }
}

fn state_text(s: &DeviceState) -> String {
    match s {
        DeviceState::Active => "active".into(),
        DeviceState::Pending(why) => format!("pending: {why}"),
        DeviceState::Removed { by, cut } => format!("removed by {} from entry {cut}", by.short()),
        DeviceState::Left { cut } => format!("left at entry {cut}"),
    }
}

fn state_json(s: &DeviceState) -> serde_json::Value {
    match s {
        DeviceState::Active => json!({"state": "active"}),
        DeviceState::Pending(why) => json!({"state": "pending", "reason": why}),
        DeviceState::Removed { by, cut } => {
            json!({"state": "removed", "by": by.to_hex(), "cut": cut})
        }
        DeviceState::Left { cut } => json!({"state": "left", "cut": cut}),
    }
}

/// `shoal members`.
pub fn list(ctx: &mut Ctx) -> Result<Outcome> {
    let ws = ctx.open()?;
    let members = ws.members()?;
    if members.open {
        ctx.out.line(
            "this workspace was created open (`shoal init --open`): every device that can \
             write its folder may write; there are no invites or roles",
        )?;
    }
    for m in &members.devices {
        ctx.out.emit(
            "member",
            json!({
                "device": m.device.to_hex(),
                "role": m.role.map(Role::name),
                "admitted_by": m.admitted_by.map(|p| p.to_hex()),
                "joined_at_ms": m.joined_at.map(|h| h.millis()),
                "status": state_json(&m.state),
                "stored": m.stored,
                "pending": m.pending,
                "this_device": m.is_self,
                "forked": m.forked,
                "succeeded_by": m.succeeded_by.map(|p| p.to_hex()),
            }),
        )?;
        ctx.out.line(member_line(m))?;
    }
    Ok(Outcome::Ok)
}

fn member_line(m: &Member) -> String {
    let mut line = format!(
        "{}{}  {}  {}",
        m.device.short(),
        if m.is_self { " (this device)" } else { "" },
        m.role.map_or("-", Role::name),
        state_text(&m.state)
    );
    if let Some(by) = m.admitted_by {
        line.push_str(&format!("; admitted by {}", by.short()));
    }
    if let Some(at) = m.joined_at {
        line.push_str(&format!("; joined {}", out::time_text(at.millis())));
    }
    if m.pending > 0 {
        line.push_str(&format!("; {} of {} entries pending", m.pending, m.stored));
    }
    if let Some(why) = &m.forked {
        line.push_str(&format!("; FORKED: {why}"));
    }
    if let Some(next) = m.succeeded_by {
        line.push_str(&format!("; handed over to {}", next.short()));
    }
    line
}

/// The device named by `text`: a full id or a unique prefix of at least 8 hex digits among
/// the devices this workspace knows.
fn find_device(ws: &Workspace, text: &str) -> Result<PeerId> {
    let text = text.trim().to_ascii_lowercase();
    if let Ok(id) = text.parse::<PeerId>() {
        return Ok(id);
    }
    if text.len() < 8 || !text.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("{text:?}: not a device id (32 hex digits, or a unique prefix of at least 8)");
    }
    let known: Vec<PeerId> = ws
        .members()?
        .devices
        .iter()
        .map(|m| m.device)
        .filter(|d| d.to_hex().starts_with(&text))
        .collect();
    match known.as_slice() {
        [one] => Ok(*one),
        [] => bail!("no device {text}... is known here (sync first, or see `shoal members`)"),
        many => bail!(
            "{text}... names {} devices ({}); give more digits",
            many.len(),
            many.iter().map(|d| d.to_hex()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// `shoal admit`.
pub async fn admit(ctx: &mut Ctx, a: AdmitArgs) -> Result<Outcome> {
    let ws = ctx.open()?;
    // A first sync to see the device; what it reports is reported again by the second.
    maybe_sync(ctx, &ws, a.folder.as_deref()).await?;
    let device = find_device(&ws, &a.device)?;
    ws.admit(device, role(&a.role)).with_context(|| format!("admit {device}"))?;
    ctx.out.emit("admitted", json!({"device": device.to_hex(), "role": a.role}))?;
    ctx.out.line(format!("admitted {device} as {}", a.role))?;
    maybe_sync(ctx, &ws, a.folder.as_deref()).await
}

/// `shoal remove`.
pub async fn remove(ctx: &mut Ctx, a: DeviceArgs) -> Result<Outcome> {
    let ws = ctx.open()?;
    // A first sync to see the device; what it reports is reported again by the second.
    maybe_sync(ctx, &ws, a.folder.as_deref()).await?;
    let device = find_device(&ws, &a.device)?;
    ws.remove_device(device).with_context(|| format!("remove {device}"))?;
    ctx.out.emit("removed", json!({"device": device.to_hex()}))?;
    ctx.out.line(format!(
        "removed {device}: nothing it writes past what this device holds of it is applied"
    ))?;
    maybe_sync(ctx, &ws, a.folder.as_deref()).await
}

/// `shoal leave`.
pub async fn leave(ctx: &mut Ctx, a: FolderArg) -> Result<Outcome> {
    let ws = ctx.open()?;
    // A first sync to see the device; what it reports is reported again by the second.
    maybe_sync(ctx, &ws, a.folder.as_deref()).await?;
    ws.leave()?;
    ctx.out.emit("left", json!({"device": ws.device().map(|d| d.to_hex())}))?;
    ctx.out
        .line("left the workspace: nothing this device writes from now on is applied elsewhere")?;
    maybe_sync(ctx, &ws, a.folder.as_deref()).await
}
