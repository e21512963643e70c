//! `shoal init`: creates a workspace file — a new workspace (members-only unless `--open`;
//! end-to-end encrypted with `--encrypt`),
//! or a new device of an existing one, named by `--join <id>` or found in a sync folder
//! with `--folder`. A device joining this way asks to join: in a members-only workspace its
//! writes stay pending until an admin admits it; `shoal join CODE` joins with an invite
//! instead (docs/CLI.md).

use std::path::Path;

use anyhow::{Result, anyhow, bail};
use serde_json::json;
use shoal::Workspace;
use shoal::core::WorkspaceId;
use shoal::filelog::layout::parse_id_dir;

use super::args::InitArgs;
use super::{Ctx, Outcome, sync};

/// `shoal init`.
pub async fn run(ctx: &mut Ctx, a: InitArgs) -> Result<Outcome> {
    let path = ctx.workspace_path()?.to_owned();
    if path.is_dir() {
        bail!(
            "{}: is a directory; give the path of the workspace file to create, e.g. {}",
            path.display(),
            path.join("workspace.shoal").display()
        );
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.is_dir()
    {
        bail!(
            "{}: cannot create the workspace file: the directory {} does not exist",
            path.display(),
            parent.display()
        );
    }
    if let Some(folder) = &a.folder {
        sync::check_folder_exists(folder)?;
    }
    let join = match (&a.join, &a.folder) {
        (Some(id), _) => Some(id.trim().parse::<WorkspaceId>().map_err(|_| {
            anyhow!("--join {id:?}: not a workspace id (32 hex digits, as `shoal init` prints it)")
        })?),
        (None, Some(folder)) => Some(find_workspace(folder)?),
        (None, None) => None,
    };
    let ws = match join {
        Some(id) => Workspace::join(&path, id, super::clock::options())?,
        None => Workspace::create(
            &path,
            shoal::WorkspaceOptions {
                members_only: !a.open,
                encrypted: a.encrypt,
                ..super::clock::options()
            },
        )?,
    };
    announce(ctx, &ws, &path, join.is_none())?;
    if join.is_none() && a.encrypt {
        ctx.out.line(
            "end-to-end encrypted, members only: add devices with `shoal invite`; a device \
             that joins without an invite reads nothing until an admin admits it",
        )?;
    } else if join.is_none() && !a.open {
        ctx.out.line("members only: add devices with `shoal invite`")?;
    }
    let outcome = match &a.folder {
        Some(folder) => sync::sync_once(ctx, &ws, folder, shoal::Direction::Both).await?,
        None => Outcome::Ok,
    };
    if join.is_some() {
        // Without an invite this device only asked to join: say what that means once the
        // workspace's policy is known.
        let members = ws.members()?;
        let me = members.devices.iter().find(|m| m.is_self);
        if members.founded && !members.open && me.is_some_and(|m| m.role.is_none()) {
            super::out::warn(
                "this workspace admits members only and this device joined without an \
                 invite: its writes stay pending until an admin admits it (`shoal admit \
                 DEVICE`); with an invite code, use `shoal join CODE` instead",
            );
        } else if a.folder.is_none() {
            ctx.out.line(
                "if the workspace admits members only, this device's writes stay pending \
                 until an admin admits it (or join with `shoal join CODE`)",
            )?;
        }
    }
    Ok(outcome)
}

/// Prints the new workspace file: its workspace, this device, and whether it was created
/// or joined (the `workspace` envelope of `init` and `join`).
pub fn announce(ctx: &mut Ctx, ws: &Workspace, path: &Path, created: bool) -> Result<()> {
    let device = ws.device().map(|d| d.to_hex()).unwrap_or_default();
    ctx.out.emit(
        "workspace",
        json!({
            "workspace": ws.id().to_hex(),
            "device": device,
            "path": path.display().to_string(),
            "created": created,
        }),
    )?;
    let verb = if created { "created" } else { "joined" };
    ctx.out.line(format!("{verb} workspace {} in {}", ws.id(), path.display()))?;
    ctx.out.line(format!("this device is {device}"))?;
    Ok(())
}

/// The one workspace that has a directory in the sync folder `folder`.
fn find_workspace(folder: &Path) -> Result<WorkspaceId> {
    let entries = std::fs::read_dir(folder)
        .map_err(|e| anyhow!("{}: cannot list the sync folder: {e}", folder.display()))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| anyhow!("{}: cannot list the sync folder: {e}", folder.display()))?;
        let Some(id) = entry.file_name().to_str().and_then(parse_id_dir) else { continue };
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            found.push(WorkspaceId::from_bytes(id));
        }
    }
    found.sort();
    match found.as_slice() {
        [] => bail!(
            "{}: no Shoal workspace in this sync folder yet (the first device runs `shoal sync \
             --folder {}` after `shoal init`)",
            folder.display(),
            folder.display()
        ),
        [one] => Ok(*one),
        many => bail!(
            "{}: holds several workspaces ({}); choose one with --join WORKSPACE_ID",
            folder.display(),
            many.iter().map(|w| w.to_hex()).collect::<Vec<_>>().join(", ")
        ),
    }
}
