//! Sync of a [`Workspace`] with a relay (`shoal serve`): one pass, continuous sync on the
//! library's sync loop, and waiting until the relay holds every local entry.
//!
//! A pass pulls first (so a restored backup takes back what it had written, and a copied
//! device finds its fork before it writes more), checks that the relay's copy of this
//! device's own log is the one this device wrote, then pushes every entry the relay lacks,
//! of every origin: a device that syncs with a folder too carries the folder's entries to
//! the relay, each once (entries keep their origin and index; duplicates cost nothing).
//!
//! Relay syncs take no sync lock (see [`Workspace::relay_pass`]).
//!
//! Never: writes to the relay in `--pull-only` mode, pulls in `--push-only` mode, moves
//! anything in a dry run, or holds the relay connection across passes of different
//! workspaces.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use shoal_core::{
    ChainPosition, CursorStream, Direction, HasCursors, LogProcessor, LogSource, PeerCursors,
    PeerId, SyncError, SyncTarget, own_log_continues, pull,
};
use shoal_relay::client::RemoteReplica;
use shoal_relay::frame::Access;

use crate::error::{Error, Result};
use crate::workspace::Workspace;

/// How a relay sync runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RelayOptions {
    /// Which way entries move.
    pub direction: Direction,
    /// Say what would move; move nothing.
    pub dry_run: bool,
}

/// What one relay pass did (or, in a dry run, would do).
#[derive(Debug, Clone, Default)]
pub struct RelaySync {
    /// The relay's address.
    pub relay: String,
    /// Entries the relay took from this device (any origin).
    pub pushed: u64,
    /// Entries this device took from the relay.
    pub pulled: u64,
    /// Entries sent that the other side already had.
    pub duplicates: u64,
    /// In a dry run: entries that would be pushed and pulled.
    pub would_push: u64,
    /// See `would_push`.
    pub would_pull: u64,
    /// Origins that could not advance, with the side that refused and why.
    pub stalled: Vec<(PeerId, String)>,
    /// False while the relay does not count this device as a member (it pushed only its
    /// first entry, and waits for an admin's admission).
    pub member: bool,
    /// The relay holds every entry this device holds (durably stored there).
    pub relay_has_everything: bool,
    /// How far this device's clock state is ahead of its wall clock, if too far.
    pub clock_ahead: Option<shoal_core::ClockSkew>,
}

/// Entries `a` holds beyond `b`.
fn ahead(a: &PeerCursors, b: &PeerCursors) -> u64 {
    a.ahead_of(b).iter().map(|(_, from, to)| to - from).sum()
}

impl Workspace {
    /// Connects to the relay at `url` as this device.
    pub async fn connect_relay(&self, url: &str) -> Result<RemoteReplica> {
        let key = self.replica().device_key().cloned().ok_or_else(|| Error::Path {
            path: self.path().to_owned(),
            reason: "this workspace file has no device key, so it cannot sync".into(),
        })?;
        Ok(RemoteReplica::connect(url, self.id(), &key).await?)
    }

    /// One pass with the relay at `url`: pull, then push (see the module doc).
    pub async fn sync_server(&self, url: &str) -> Result<RelaySync> {
        self.sync_server_with(url, RelayOptions::default()).await
    }

    /// [`Workspace::sync_server`] with options (direction, dry run).
    pub async fn sync_server_with(&self, url: &str, options: RelayOptions) -> Result<RelaySync> {
        let remote = self.connect_relay(url).await?;
        self.relay_pass(&remote, options).await
    }

    /// One pass over an open relay connection.
    ///
    /// **Decision:** relay syncs take no sync lock. The lock keeps two syncs from
    /// publishing the same device's entries into one folder; a relay takes every push
    /// through its ingest pipeline, so two passes (or a folder sync and a relay sync at
    /// once, as a device that carries entries between the two runs them) only cost
    /// duplicates, and a dead target blocks no other.
    pub async fn relay_pass(
        &self,
        remote: &RemoteReplica,
        options: RelayOptions,
    ) -> Result<RelaySync> {
        let local = self.replica();
        let url = remote.url().to_string();
        let mut out = RelaySync {
            relay: url.clone(),
            member: remote.access() == Access::Member,
            ..RelaySync::default()
        };
        let before_local = local.cursors().await?;
        let before_remote = remote.cursors().await?;
        if options.dry_run {
            if options.direction != Direction::PushOnly && out.member {
                out.would_pull = ahead(&before_remote, &before_local);
            }
            if options.direction != Direction::PullOnly {
                out.would_push = ahead(&before_local, &before_remote);
            }
            out.relay_has_everything = out.would_push == 0;
            return Ok(out);
        }
        if options.direction != Direction::PullOnly {
            local.check_writable()?;
        }
        let own = self.device();
        // A device the relay does not count as a member yet pushes a log's first run (its
        // join, or the genesis of a workspace the relay does not hold); if that made it a
        // member, the pass runs again as one.
        for _ in 0..2 {
            let was_member = remote.access() == Access::Member;
            if options.direction.pulls() && was_member {
                self.relay_pull(remote, &mut out, &before_local, &before_remote).await?;
            }
            if let (Some(own), true) = (own, was_member) {
                self.check_own_log_at_relay(remote, own).await?;
            }
            if options.direction.pushes() && was_member {
                let report = pull(local, remote).await?;
                out.pushed += report.new;
                out.duplicates += report.duplicates;
                out.stalled.retain(|(_, why)| !why.starts_with("at the relay"));
                for (origin, e) in report.stalled {
                    out.stalled.push((origin, format!("at the relay: {e}")));
                }
            } else if options.direction.pushes() {
                self.push_as_entrant(remote, &mut out).await?;
            }
            out.member = remote.access() == Access::Member;
            if was_member || !out.member {
                break;
            }
        }
        let after_local = local.cursors().await?;
        let after_remote = if out.member { remote.cursors().await? } else { PeerCursors::new() };
        out.relay_has_everything = out.member && ahead(&after_local, &after_remote) == 0;
        remote.report_position(after_local.clone()).await;
        self.record_relay_sync(&url)?;
        out.clock_ahead = self.clock_ahead()?;
        Ok(out)
    }

    /// What a device the relay does not count as a member pushes: the first run of the
    /// workspace's genesis (the relay may not hold the workspace yet) and of its own log
    /// (its join or request), nothing else (an entrant's pushes are bounded per connection).
    async fn push_as_entrant(&self, remote: &RemoteReplica, out: &mut RelaySync) -> Result<()> {
        let local = self.replica();
        let creator = local.roster()?.creator;
        let mut origins: Vec<PeerId> = creator.into_iter().chain(self.device()).collect();
        origins.dedup();
        for origin in origins {
            let page = local.read_page(origin, 0)?;
            if page.is_empty() {
                continue;
            }
            match remote.apply_batch(origin, page).await {
                Ok(done) => {
                    out.pushed += done.new;
                    out.duplicates += done.duplicates;
                }
                Err(e) if e.stalls_origin() => {
                    out.stalled.push((origin, format!("at the relay: {e}")));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Takes what the relay holds and this device lacks; this device's own log coming back
    /// different from what it wrote is a fork.
    async fn relay_pull(
        &self,
        remote: &RemoteReplica,
        out: &mut RelaySync,
        before_local: &PeerCursors,
        before_remote: &PeerCursors,
    ) -> Result<()> {
        let local = self.replica();
        let mut report = pull(remote, local).await?;
        // An origin that stalled on entries its successor (later in the same pass)
        // supersedes moves on a second pass.
        if report.stalled.iter().any(|(o, _)| local.superseded(*o).ok().flatten().is_some()) {
            let again = pull(remote, local).await?;
            report.new += again.new;
            report.duplicates += again.duplicates;
            report.stalled = again.stalled;
        }
        out.pulled += report.new;
        out.duplicates += report.duplicates;
        for (origin, e) in report.stalled {
            if Some(origin) == self.device() && matches!(e, SyncError::Rejected { .. }) {
                let at = before_local.get(&origin).min(before_remote.get(&origin));
                return Err(self.relay_fork(remote.url(), at));
            }
            out.stalled.push((origin, format!("here: {e}")));
        }
        Ok(())
    }

    /// The relay's copy of this device's own log must be the one this device wrote: the
    /// relay's last entry of it, sealed, must verify over this device's own chain.
    async fn check_own_log_at_relay(&self, remote: &RemoteReplica, own: PeerId) -> Result<()> {
        if remote.access() != Access::Member {
            return Ok(());
        }
        let at_relay = remote.cursors().await?.get(&own);
        let here = self.replica().durable_cursors()?.get(&own);
        if at_relay == 0 || here < at_relay {
            // Nothing there, or the relay is ahead (the pull took back what it could; an
            // entry it would not take is reported as a stall).
            return Ok(());
        }
        let start = ChainPosition::start(&self.id(), &own);
        let chain = crate::folder::chain_at(at_relay, start, |from| {
            Ok(self.replica().read_page(own, from)?)
        })?;
        let page: Vec<_> =
            remote.read_since(own, at_relay - 1).await?.into_iter().take(1).collect();
        match own_log_continues(&self.id(), &own, ChainPosition { next: at_relay, chain }, page) {
            Ok(()) => Ok(()),
            Err(index) => Err(self.relay_fork(remote.url(), index)),
        }
    }

    fn relay_fork(&self, url: &str, index: u64) -> Error {
        let Some(origin) = self.device() else {
            return Error::Sync(SyncError::Bug("a fork of a device without a key".into()));
        };
        let e = SyncError::Forked { origin, index, source_name: format!("relay {url}") };
        if let Err(note) = self.note_sync_error(&e) {
            return note;
        }
        Error::Sync(e)
    }

    /// The last successful relay sync, if any (`LastSync::with` is the relay's URL).
    pub fn last_relay_sync(&self) -> Result<Option<crate::LastSync>> {
        let Some(bytes) = self.replica().meta(crate::folder::LAST_RELAY_SYNC)? else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&bytes);
        let Some((at, with)) = text.split_once('\t') else { return Ok(None) };
        Ok(at.parse().ok().map(|at_millis| crate::LastSync { at_millis, with: with.to_owned() }))
    }

    /// Records a successful sync with the relay at `url` now.
    fn record_relay_sync(&self, url: &str) -> Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let value = format!("{now}\t{url}");
        Ok(self.replica().set_meta(crate::folder::LAST_RELAY_SYNC, value.as_bytes())?)
    }

    /// Passes until the relay durably holds every entry this device holds, or `timeout`
    /// passes (then [`Error::Timeout`]).
    pub async fn sync_server_wait(
        &self,
        url: &str,
        options: RelayOptions,
        timeout: Duration,
    ) -> Result<RelaySync> {
        let deadline = Instant::now() + timeout;
        let mut last_error: Option<Error> = None;
        let mut remote: Option<RemoteReplica> = None;
        let mut failures = 0u32;
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = tokio::time::timeout(left, async {
                let r = match remote.take().filter(|r| r.closed().is_none()) {
                    Some(r) => r,
                    None => self.connect_relay(url).await?,
                };
                let pass = self.relay_pass(&r, options).await;
                remote = Some(r);
                pass
            })
            .await;
            match attempt {
                Ok(Ok(s)) if s.relay_has_everything => return Ok(s),
                Ok(Ok(s)) if !s.member => {
                    last_error = Some(Error::Timeout(format!(
                        "relay {url} does not count this device as a member yet (waiting for an admin to admit it)"
                    )));
                }
                Ok(Ok(s)) => {
                    last_error = Some(Error::Timeout(match s.stalled.first() {
                        Some((o, why)) => {
                            format!("relay {url} would not take everything: {o}: {why}")
                        }
                        None => format!("relay {url} does not hold every local entry yet"),
                    }));
                }
                Ok(Err(e)) => last_error = Some(e),
                Err(_) => break,
            }
            failures += 1;
            tokio::time::sleep(
                shoal_core::jittered(Duration::from_millis(100) * 2u32.pow(failures.min(5)))
                    .min(deadline.saturating_duration_since(Instant::now())),
            )
            .await;
        }
        Err(Error::Timeout(format!(
            "relay {url} did not confirm every local entry within {} s{}",
            timeout.as_secs_f64(),
            last_error.map(|e| format!(" (last: {e})")).unwrap_or_default()
        )))
    }

    /// Syncs with the relay at `url` until `shutdown` completes: a pass at start, after
    /// local commits, when the relay announces new entries, and every poll interval; a
    /// lost connection is made again with exponential backoff and jitter, resuming from
    /// cursors.
    pub async fn watch_server(
        &self,
        url: &str,
        options: RelayOptions,
        on_pass: impl Fn(&std::result::Result<RelaySync, String>) + Send + Sync + 'static,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<()> {
        let own = self.device().ok_or_else(|| Error::Path {
            path: self.path().to_owned(),
            reason: "this workspace file has no device key, so it cannot sync".into(),
        })?;
        let target = RelayTarget {
            ws: self.clone(),
            url: url.to_string(),
            options,
            remote: Mutex::new(None),
            events: Arc::new(shoal_core::CursorBroadcast::new(PeerCursors::new())),
            lost: Arc::new(tokio::sync::watch::Sender::new(0)),
            on_pass: Box::new(on_pass),
        };
        shoal_core::run_sync_loop(
            own,
            self.replica(),
            &target,
            shoal_core::LoopTiming {
                poll_interval: Duration::from_secs(10),
                debounce: Duration::from_millis(50),
                retry_initial: Duration::from_millis(200),
                retry_max: Duration::from_secs(30),
            },
            shutdown,
        )
        .await?;
        Ok(())
    }
}

type OnPass = Box<dyn Fn(&std::result::Result<RelaySync, String>) + Send + Sync>;

/// A relay as a [`SyncTarget`]: a connection made when needed and kept while it lives.
struct RelayTarget {
    ws: Workspace,
    url: String,
    options: RelayOptions,
    remote: Mutex<Option<RemoteReplica>>,
    /// The live connection's announcements, forwarded (the loop subscribes once; the
    /// connection changes).
    events: Arc<shoal_core::CursorBroadcast>,
    /// Bumped when a connection ends (wakes the loop to connect again).
    lost: Arc<tokio::sync::watch::Sender<u64>>,
    on_pass: OnPass,
}

impl RelayTarget {
    fn current(&self) -> Option<RemoteReplica> {
        self.remote
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .filter(|r| r.closed().is_none())
    }
}

#[async_trait]
impl SyncTarget for RelayTarget {
    async fn pass(&self) -> std::result::Result<(), SyncError> {
        let remote = match self.current() {
            Some(r) => r,
            None => {
                let r = self
                    .ws
                    .connect_relay(&self.url)
                    .await
                    .map_err(|e| to_sync_error(&self.url, e))?;
                // Forward this connection's announcements into the loop's stream; when the
                // connection ends, wake the loop, so it connects again (with backoff) and
                // both sides re-announce positions, instead of waiting for the next local
                // commit or poll.
                let events = self.events.clone();
                let lost = self.lost.clone();
                let mut stream = r.watch_cursors();
                let closed = r.until_closed();
                tokio::spawn(async move {
                    use futures::StreamExt;
                    let forward = async {
                        while let Some(ev) = stream.next().await {
                            let c = match ev {
                                shoal_core::CursorsEvent::Snapshot(c)
                                | shoal_core::CursorsEvent::Advanced(c) => c,
                            };
                            events.publish(&c);
                        }
                    };
                    tokio::select! {
                        () = forward => {}
                        () = closed => {}
                    }
                    lost.send_modify(|n| *n = n.wrapping_add(1));
                });
                *self.remote.lock().unwrap_or_else(|p| p.into_inner()) = Some(r.clone());
                r
            }
        };
        let result = self.ws.relay_pass(&remote, self.options).await;
        let shown = result.as_ref().map(Clone::clone).map_err(|e| e.to_string());
        (self.on_pass)(&shown);
        result.map(|_| ()).map_err(|e| to_sync_error(&self.url, e))
    }

    fn target_events(&self) -> CursorStream {
        use futures::StreamExt;
        // A lost connection shows as a snapshot (which always wakes the loop).
        let events = self.events.clone();
        let lost = futures::stream::unfold(self.lost.subscribe(), move |mut rx| {
            let events = events.clone();
            async move {
                rx.changed().await.ok()?;
                Some((shoal_core::CursorsEvent::Snapshot(events.current()), rx))
            }
        });
        futures::stream::select(self.events.subscribe(), lost).boxed()
    }
}

fn to_sync_error(url: &str, e: Error) -> SyncError {
    match e {
        Error::Sync(s) => s,
        other => SyncError::Unavailable { what: format!("relay {url}"), reason: other.to_string() },
    }
}
