//! `shoal sync --server URL` (once, `--wait`, `--watch`, `--dry-run`) and `shoal serve`.
//!
//! Glue only: the pass, the wait and the loop are the library's (`Workspace::sync_server*`),
//! the server is `shoal_relay::server::Relay` over the store `--db` names.
//!
//! Never: prints a database password (a `postgres://` URL is shown without it).

use anyhow::{Result, anyhow, bail};
use serde_json::json;
use shoal::{Direction, RelayOptions, RelaySync, Workspace};

use super::args::{NewWorkspacesArg, ServeArgs, SyncArgs};
use super::out::{self, time_text};
use super::{Ctx, Outcome};

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `shoal sync --server URL ...`.
pub async fn sync(
    ctx: &mut Ctx,
    ws: &Workspace,
    url: &str,
    a: &SyncArgs,
    direction: Direction,
) -> Result<Outcome> {
    let options = RelayOptions { direction, dry_run: a.dry_run };
    if a.watch {
        return watch(ctx, ws, url, options).await;
    }
    let result = if a.wait {
        ws.sync_server_wait(url, options, a.timeout).await
    } else {
        ws.sync_server_with(url, options).await
    };
    let s = result.map_err(|e| anyhow!(e).context(format!("sync with relay {url}")))?;
    if a.dry_run {
        ctx.out.emit(
            "dry_run",
            json!({ "server": s.relay, "would_push": s.would_push, "would_pull": s.would_pull }),
        )?;
        ctx.out.line(format!(
            "dry run with relay {}: would push {} entr{}, pull {}; nothing moved",
            s.relay,
            s.would_push,
            if s.would_push == 1 { "y" } else { "ies" },
            s.would_pull
        ))?;
        return Ok(Outcome::Ok);
    }
    report(ctx, &s)
}

/// Prints one pass; `Failed` when an origin stalled.
fn report(ctx: &mut Ctx, s: &RelaySync) -> Result<Outcome> {
    ctx.out.emit(
        "sync",
        json!({
            "server": s.relay,
            "pushed": s.pushed,
            "pulled": s.pulled,
            "duplicates": s.duplicates,
            "member": s.member,
            "relay_has_everything": s.relay_has_everything,
            "time": time_text(now_millis()),
        }),
    )?;
    ctx.out.line(format!(
        "synced with relay {}: pushed {} entr{}, pulled {}{}",
        s.relay,
        s.pushed,
        if s.pushed == 1 { "y" } else { "ies" },
        s.pulled,
        if s.relay_has_everything { " (the relay holds everything this device holds)" } else { "" }
    ))?;
    if !s.member {
        out::warn(format!(
            "relay {} does not count this device as a member yet: it took only its first \
             entry; an admin must admit it (then sync again)",
            s.relay
        ));
    }
    for (origin, why) in &s.stalled {
        out::warn(format!("device {origin} is stalled {why}"));
        ctx.out.emit("stalled", json!({ "origin": origin.to_hex(), "reason": why }))?;
    }
    Ok(if s.stalled.is_empty() { Outcome::Ok } else { Outcome::Failed })
}

/// `shoal sync --server URL --watch`: passes on the library's loop until Ctrl-C; each
/// pass that moved something (and every failure) is printed.
async fn watch(ctx: &mut Ctx, ws: &Workspace, url: &str, options: RelayOptions) -> Result<Outcome> {
    if out::interactive() {
        out::warn(format!("syncing {} with relay {url}; Ctrl-C ends", ws.path().display()));
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let on_pass = move |r: &std::result::Result<RelaySync, String>| {
        let _ = tx.send(r.clone());
    };
    let run = ws.watch_server(url, options, on_pass, super::shutdown_signal());
    let mut run = std::pin::pin!(run);
    let mut first = true;
    let mut last_error: Option<String> = None;
    loop {
        tokio::select! {
            r = &mut run => {
                r.map_err(|e| anyhow!(e).context(format!("sync with relay {url}")))?;
                return Ok(Outcome::Ok);
            }
            Some(pass) = rx.recv() => match pass {
                Ok(s) => {
                    if last_error.take().is_some() {
                        out::warn(format!("relay {url} works again"));
                    }
                    if first || s.pushed > 0 || s.pulled > 0 || !s.stalled.is_empty() {
                        first = false;
                        report(ctx, &s)?;
                    }
                }
                Err(e) => {
                    if last_error.as_deref() != Some(e.as_str()) {
                        out::warn(format!("sync pass with relay {url} failed (retrying): {e}"));
                        ctx.out.emit("sync_error", json!({ "server": url, "error": e }))?;
                    }
                    last_error = Some(e);
                }
            },
        }
    }
}

/// Checks a `--server` URL's form before anything is opened.
pub fn check_url(url: &str) -> Result<()> {
    if !(url.starts_with("ws://") || url.starts_with("wss://")) {
        bail!("--server {url}: a relay URL starts with ws:// or wss://");
    }
    Ok(())
}

/// Opens the store `--db` names.
async fn open_store(db: &str) -> Result<std::sync::Arc<dyn shoal::core::store::LogStore>> {
    if let Some(path) = db.strip_prefix("sqlite:") {
        let store = shoal::sqlite::SqliteLogStore::open(path)
            .map_err(|e| anyhow!(e).context(format!("--db {db}")))?;
        return Ok(std::sync::Arc::new(store));
    }
    if db.starts_with("postgres://") || db.starts_with("postgresql://") {
        let store = shoal_postgres::PgLogStore::connect(db).await.map_err(|e| anyhow!(e))?;
        return Ok(std::sync::Arc::new(store));
    }
    bail!("--db {db}: give sqlite:PATH or postgres://USER@HOST/DATABASE")
}

/// `shoal serve`: runs a relay until Ctrl-C or SIGTERM.
pub async fn serve(ctx: &mut Ctx, a: ServeArgs) -> Result<Outcome> {
    use shoal::relay::auth::NewWorkspaces;
    use shoal::relay::server::{Relay, RelayConfig};
    let store = open_store(&a.db).await?;
    let relay_id =
        store.relay_id().await.map_err(|e| anyhow!(e).context("reading the relay's id"))?;
    let mut config = RelayConfig::new(shoal::relay::frame::RelayId(relay_id));
    config.new_workspaces = match a.new_workspaces {
        NewWorkspacesArg::Accept => NewWorkspaces::Accept,
        NewWorkspacesArg::Refuse => NewWorkspaces::Refuse,
    };
    config.max_connections = a.max_connections;
    config.max_connections_per_workspace = a.max_connections_per_workspace;
    config.max_connections_per_device = a.max_connections_per_device;
    config.limits.max_frame = a.max_frame;
    let listener =
        std::net::TcpListener::bind(a.listen).map_err(|e| anyhow!("--listen {}: {e}", a.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if a.tls_cert.is_some() { "wss" } else { "ws" };
    let described = store.describe();
    let relay = Relay::new(store, config);
    ctx.out.emit(
        "serving",
        json!({ "url": format!("{scheme}://{addr}"), "db": described, "relay_id": hex_id(&relay_id) }),
    )?;
    ctx.out.line(format!("shoal relay listening on {scheme}://{addr} (storage: {described})"))?;
    let shutdown = super::shutdown_signal();
    let served = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => relay.serve_tls(listener, cert, key, shutdown).await,
        _ => {
            listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            relay.serve(listener, shutdown).await
        }
    };
    served.map_err(|e| anyhow!("relay on {addr}: {e}"))?;
    out::warn("relay stopped");
    Ok(Outcome::Ok)
}

fn hex_id(id: &[u8; 32]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}
