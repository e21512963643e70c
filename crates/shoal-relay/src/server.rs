//! The relay server: [`ServerSession`]s driven over WebSockets, for any [`LogStore`]
//! (DESIGN §9, `docs/PROTOCOL.md`).
//!
//! Owns: [`Relay`] (the store, one [`StoredReplica`] per workspace, connection counts, the
//! metrics), its HTTP routes (`/v1/sync` upgrades to the protocol, `/healthz`, `/metrics`
//! in Prometheus text) and the task of each connection: reading frames into its session,
//! carrying out the session's actions, forwarding the store's feed as `Advanced` hints,
//! and ticking the heartbeat.
//!
//! Invariants:
//! - Each connection is one task plus a writer, over a [`Link`] (a WebSocket's, or the
//!   simulation's in-memory one); its outbound queue holds at most [`OUTBOUND_FRAMES`]
//!   frames. Responses wait for room (the peer that does not read stops being read: its
//!   own backpressure), at most [`SEND_DEADLINE`] (15 s), then the peer is dropped as dead;
//!   after a refusal the connection is still read for 2 s, so the refusal reaches it; `Advanced`
//!   hints never wait: when the queue is full they are merged and sent once there is room,
//!   so a slow client costs a bounded amount of memory and catches up by cursor diff.
//! - When the relay stops, every connection is refused with `Shutdown`.
//! - Connections are counted per relay, per workspace and per device, and refused over
//!   the limits before any request is served.
//! - Requests are served through the workspace's [`StoredReplica`]: pushes go through the
//!   one ingest pipeline; reads return pages that end on a seal.
//!
//! Never: lets a connection's failure (a bad frame, a refused push, a dropped socket)
//! affect another connection, or serves a request the session did not allow.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use futures::{SinkExt, StreamExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use shoal_core::codec::Encode;
use shoal_core::store::{LogStore, StoredReplica};
use shoal_core::{
    HasCursors, LogProcessor, LogSource, PeerCursors, PeerId, SyncError, WorkspaceId, random_bytes,
};
use tokio::sync::{broadcast, mpsc};
use tracing::Instrument;

use crate::auth::{NewWorkspaces, access_of};
use crate::client::Link;
use crate::frame::{Access, Frame, RefuseCode, RelayId, Request, Response};
use crate::session::{Action, Limits, ServerSession};

/// Frames a connection's outbound queue holds.
pub const OUTBOUND_FRAMES: usize = 16;

/// How a relay is run.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The deployment's id (every node of one deployment shares it).
    pub relay: RelayId,
    /// Per-connection limits.
    pub limits: Limits,
    /// Whether devices may found workspaces here.
    pub new_workspaces: NewWorkspaces,
    /// Connections the relay takes at once.
    pub max_connections: usize,
    /// Connections one workspace may hold at once.
    pub max_connections_per_workspace: usize,
    /// Connections one device may hold at once.
    pub max_connections_per_device: usize,
}

impl RelayConfig {
    /// Defaults for a relay with id `relay`.
    pub fn new(relay: RelayId) -> Self {
        RelayConfig {
            relay,
            limits: Limits::default(),
            new_workspaces: NewWorkspaces::Accept,
            max_connections: 10_000,
            max_connections_per_workspace: 1_000,
            max_connections_per_device: 4,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkspaceLabel {
    workspace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: String,
}

/// The relay's metrics (exposed at `/metrics`).
#[derive(Debug, Default)]
struct Metrics {
    connections: Gauge,
    entries: Family<DirectionLabel, Counter>,
    bytes: Family<DirectionLabel, Counter>,
    refused: Family<ReasonLabel, Counter>,
    stalled_pushes: Counter,
    lag: Family<WorkspaceLabel, Gauge>,
}

impl Metrics {
    fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("shoal_relay");
        r.register("connections", "Open device connections", self.connections.clone());
        r.register("entries", "Entries stored (in) and served (out)", self.entries.clone());
        r.register("bytes", "Frame bytes received (in) and sent (out)", self.bytes.clone());
        r.register("refused", "Connections and frames refused, by reason", self.refused.clone());
        r.register(
            "workspace_lag_entries",
            "Per workspace with connected devices: entries the relay holds that the furthest \
             behind of them did not hold at its last pass",
            self.lag.clone(),
        );
        r.register(
            "stalled_pushes",
            "Pushes whose origin stalled (entries the relay would not take)",
            self.stalled_pushes.clone(),
        );
        r
    }

    fn count(&self, family: &Family<DirectionLabel, Counter>, direction: &str, n: u64) {
        family.get_or_create(&DirectionLabel { direction: direction.into() }).inc_by(n);
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    workspaces: HashMap<WorkspaceId, usize>,
    devices: HashMap<(WorkspaceId, PeerId), usize>,
}

/// A relay over one store (see the module doc).
#[derive(Debug)]
pub struct Relay {
    store: Arc<dyn LogStore>,
    config: RelayConfig,
    replicas: Mutex<HashMap<WorkspaceId, Arc<StoredReplica>>>,
    counts: Mutex<Counts>,
    metrics: Metrics,
    registry: Registry,
    started: Instant,
    next_conn: AtomicU64,
    /// Set when the relay stops: every connection is refused with `Shutdown`.
    shutdown: tokio::sync::watch::Sender<bool>,
    /// Each member connection's last reported position (its device's cursors), for the lag
    /// metric.
    positions: Mutex<HashMap<u64, (WorkspaceId, PeerCursors)>>,
}

/// Forgets a connection's position when the connection ends.
struct Positioned<'a> {
    relay: &'a Relay,
    conn: u64,
}

impl Drop for Positioned<'_> {
    fn drop(&mut self) {
        self.relay.positions.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.conn);
    }
}

/// Holds one counted connection; uncounts it when dropped.
struct Counted {
    relay: Arc<Relay>,
    device: Option<(WorkspaceId, PeerId)>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut c = self.relay.lock_counts();
        c.total = c.total.saturating_sub(1);
        if let Some((ws, peer)) = self.device {
            if let Some(n) = c.workspaces.get_mut(&ws) {
                *n = n.saturating_sub(1);
            }
            if let Some(n) = c.devices.get_mut(&(ws, peer)) {
                *n = n.saturating_sub(1);
            }
            c.workspaces.retain(|_, n| *n > 0);
            c.devices.retain(|_, n| *n > 0);
        }
        self.relay.metrics.connections.dec();
    }
}

impl Relay {
    /// A relay serving `store`.
    pub fn new(store: Arc<dyn LogStore>, config: RelayConfig) -> Arc<Self> {
        let metrics = Metrics::default();
        let registry = metrics.registry();
        Arc::new(Relay {
            store,
            config,
            replicas: Mutex::new(HashMap::new()),
            counts: Mutex::new(Counts::default()),
            metrics,
            registry,
            started: Instant::now(),
            next_conn: AtomicU64::new(1),
            shutdown: tokio::sync::watch::Sender::new(false),
            positions: Mutex::new(HashMap::new()),
        })
    }

    /// The HTTP routes: `/v1/sync`, `/healthz`, `/metrics`.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v1/sync", get(upgrade))
            .route("/healthz", get(healthz))
            .route("/metrics", get(metrics))
            .with_state(self.clone())
    }

    /// Serves on `listener` until `shutdown` completes.
    pub async fn serve(
        self: &Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let stopping = self.clone();
        let shutdown = async move {
            shutdown.await;
            // Open connections are upgraded WebSockets, which graceful shutdown does not
            // wait for: tell each to go (clients reconnect with backoff elsewhere).
            stopping.shutdown.send_replace(true);
        };
        axum::serve(listener, self.router().into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// Serves over TLS (`wss://`) on `listener` with the certificate chain and private key
    /// in the PEM files `cert` and `key`, until `shutdown` completes.
    pub async fn serve_tls(
        self: &Arc<Self>,
        listener: std::net::TcpListener,
        cert: &std::path::Path,
        key: &std::path::Path,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let config = crate::tls::server_config(cert, key)?;
        let handle = axum_server::Handle::new();
        let stopper = handle.clone();
        let stopping = self.clone();
        tokio::spawn(async move {
            shutdown.await;
            stopping.shutdown.send_replace(true);
            stopper.graceful_shutdown(Some(Duration::from_secs(5)));
        });
        listener.set_nonblocking(true)?;
        axum_server::from_tcp_rustls(
            listener,
            axum_server::tls_rustls::RustlsConfig::from_config(config),
        )?
        .handle(handle)
        .serve(self.router().into_make_service_with_connect_info::<SocketAddr>())
        .await
    }

    /// Sets the lag gauge: per workspace, the most entries any connected device lacked at
    /// its last reported position. One heads read per workspace with reporting devices, at
    /// scrape time only.
    async fn update_lag(&self) {
        let by_workspace: HashMap<WorkspaceId, Vec<PeerCursors>> = {
            let positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
            let mut m: HashMap<WorkspaceId, Vec<PeerCursors>> = HashMap::new();
            for (ws, c) in positions.values() {
                m.entry(*ws).or_default().push(c.clone());
            }
            m
        };
        self.metrics.lag.clear();
        for (ws, devices) in by_workspace {
            let Ok(heads) = self.store.heads(ws).await else { continue };
            let lag = devices
                .iter()
                .map(|d| heads.iter().map(|(o, h)| h.next.saturating_sub(d.get(o))).sum::<u64>())
                .max()
                .unwrap_or(0);
            let label = WorkspaceLabel { workspace: ws.to_hex() };
            self.metrics.lag.get_or_create(&label).set(i64::try_from(lag).unwrap_or(i64::MAX));
        }
    }

    /// Stops serving: every open connection is refused with `Shutdown` (what `serve` and
    /// `serve_tls` do when their shutdown completes; a simulated relay restart too).
    pub fn stop(&self) {
        self.shutdown.send_replace(true);
    }

    fn lock_counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Counts are updated in one step each; a panic elsewhere cannot leave them torn.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn replica(&self, ws: WorkspaceId) -> Arc<StoredReplica> {
        let mut map = self.replicas.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(ws)
            .or_insert_with(|| Arc::new(StoredReplica::new(self.store.clone(), ws)))
            .clone()
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn refused(&self, code: RefuseCode) {
        self.metrics
            .refused
            .get_or_create(&ReasonLabel { reason: format!("{code:?}").to_lowercase() })
            .inc();
    }

    /// Counts a connection, or says which limit it is over.
    fn admit_connection(self: &Arc<Self>) -> Result<Counted, String> {
        let mut c = self.lock_counts();
        if c.total >= self.config.max_connections {
            return Err(format!(
                "the relay holds its maximum of {} connections",
                self.config.max_connections
            ));
        }
        c.total += 1;
        drop(c);
        self.metrics.connections.inc();
        Ok(Counted { relay: self.clone(), device: None })
    }

    fn count_device(
        &self,
        counted: &mut Counted,
        ws: WorkspaceId,
        peer: PeerId,
    ) -> Result<(), String> {
        let mut c = self.lock_counts();
        let in_ws = c.workspaces.get(&ws).copied().unwrap_or(0);
        let of_device = c.devices.get(&(ws, peer)).copied().unwrap_or(0);
        if in_ws >= self.config.max_connections_per_workspace {
            return Err(format!(
                "device {peer}: the workspace holds its maximum of {} connections",
                self.config.max_connections_per_workspace
            ));
        }
        if of_device >= self.config.max_connections_per_device {
            return Err(format!(
                "device {peer} holds its maximum of {} connections",
                self.config.max_connections_per_device
            ));
        }
        *c.workspaces.entry(ws).or_default() += 1;
        *c.devices.entry((ws, peer)).or_default() += 1;
        counted.device = Some((ws, peer));
        Ok(())
    }

    /// What `peer` may do in `workspace`, from the relay's fold of its control log.
    async fn access(&self, ws: WorkspaceId, peer: PeerId) -> Result<Access, (RefuseCode, String)> {
        let replica = self.replica(ws);
        let internal = |e: SyncError| (RefuseCode::Internal, format!("relay storage: {e}"));
        let roster = replica.roster().await.map_err(internal)?;
        let known = !replica.cursors().await.map_err(internal)?.is_empty();
        access_of(&roster, known, &peer, self.config.new_workspaces)
    }

    /// Serves one allowed request.
    async fn serve_request(&self, ws: WorkspaceId, request: Request) -> (Response, bool) {
        let replica = self.replica(ws);
        let internal = |e: SyncError| Response::Error {
            code: RefuseCode::Internal,
            message: format!("relay storage: {e}"),
        };
        match request {
            Request::Cursors => match replica.cursors().await {
                Ok(c) => (Response::Cursors(c), false),
                Err(e) => (internal(e), false),
            },
            Request::Read { origin, from } => match replica.read_since(origin, from).await {
                Ok(entries) => {
                    self.metrics.count(&self.metrics.entries, "out", entries.len() as u64);
                    (Response::Entries(entries), false)
                }
                Err(e) => (internal(e), false),
            },
            Request::Push { origin, entries } => {
                let control =
                    entries.iter().any(|e| e.body.class() == Some(shoal_core::EntryClass::Control));
                let before = replica.cursors().await.map(|c| c.get(&origin)).unwrap_or(0);
                match replica.apply_batch(origin, entries).await {
                    Ok(done) => {
                        self.metrics.count(&self.metrics.entries, "in", done.new);
                        (
                            Response::Stored {
                                new: done.new,
                                duplicates: done.duplicates,
                                next: done.next,
                            },
                            control && done.new > 0,
                        )
                    }
                    Err(e) if e.stalls_origin() => {
                        self.metrics.stalled_pushes.inc();
                        let next =
                            replica.cursors().await.map(|c| c.get(&origin)).unwrap_or(before);
                        tracing::info!(%ws, %origin, error = %e, "push stalled");
                        (
                            Response::Stalled { next, reason: e.to_string() },
                            control && next > before,
                        )
                    }
                    Err(e) => (internal(e), false),
                }
            }
        }
    }
}

async fn healthz(State(relay): State<Arc<Relay>>) -> impl IntoResponse {
    match relay.store.relay_id().await {
        Ok(_) => (StatusCode::OK, "ok\n".to_string()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("storage unavailable: {e}\n")),
    }
}

async fn metrics(State(relay): State<Arc<Relay>>) -> impl IntoResponse {
    relay.update_lag().await;
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, &relay.registry) {
        Ok(()) => (StatusCode::OK, [("content-type", "text/plain; version=0.0.4")], out),
        Err(e) => {
            (StatusCode::INTERNAL_SERVER_ERROR, [("content-type", "text/plain")], e.to_string())
        }
    }
}

async fn upgrade(
    State(relay): State<Arc<Relay>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> impl IntoResponse {
    let max = relay.config.limits.max_frame;
    ws.max_message_size(max).max_frame_size(max).on_upgrade(move |socket| {
        connection(relay, socket, addr).instrument(tracing::info_span!("conn", peer = %addr))
    })
}

/// How long a response may wait for room in a connection's outbound queue before the
/// peer counts as not reading, and is dropped: as long as a silent peer is given (the
/// heartbeat does not tick while a send waits).
pub const SEND_DEADLINE: Duration = Duration::from_millis(crate::session::DEAD_AFTER_MS);

/// A connection's outbound side: a bounded queue to its writer, with `Advanced` hints
/// merged while the queue is full.
struct Outbound {
    tx: mpsc::Sender<Frame>,
    held_hint: PeerCursors,
}

impl Outbound {
    /// Queues `frame`; false when the writer is gone or the peer has not made room for
    /// [`SEND_DEADLINE`] (it does not read).
    async fn send(&mut self, frame: Frame) -> bool {
        if let Frame::Advanced(delta) = &frame {
            self.held_hint.merge(delta);
            return self.flush_hint();
        }
        matches!(tokio::time::timeout(SEND_DEADLINE, self.tx.send(frame)).await, Ok(Ok(())))
    }

    /// Sends the merged hint if there is room; true unless the writer is gone.
    fn flush_hint(&mut self) -> bool {
        if self.held_hint.is_empty() {
            return true;
        }
        match self.tx.try_reserve() {
            Ok(permit) => {
                permit.send(Frame::Advanced(std::mem::take(&mut self.held_hint)));
                true
            }
            Err(mpsc::error::TrySendError::Full(())) => true,
            Err(mpsc::error::TrySendError::Closed(())) => false,
        }
    }
}

/// What the WebSocket pump hands the session for a message over the frame limit (the
/// WebSocket layer stops reading it): an empty frame, which no client's message becomes
/// (an empty message is handed on as an invalid tag).
const OVER_THE_LIMIT: &[u8] = &[];

/// How long a connection is still read (and what arrives dropped) after the relay's side
/// ended, before it is closed: closing a socket with unread bytes makes the kernel reset
/// the connection, and the peer would lose the refusal that names it.
const LINGER: Duration = Duration::from_secs(2);

/// Carries a WebSocket's binary messages over a [`Link`] until either side ends. A text
/// message is not the protocol: it ends the connection. WebSocket pings are answered by
/// the library (the session's own heartbeat is what detects a dead peer).
async fn websocket_pump(socket: WebSocket, link: Link) {
    let Link { tx, mut rx } = link;
    let (mut sink, mut stream) = socket.split();
    // Two independent directions: neither ever waits for the other (a peer that floods
    // without reading must meet the rate limit, not a deadlock between the two queues).
    let inbound = async move {
        let mut tx = Some(tx);
        while let Some(msg) = stream.next().await {
            let bytes = match msg {
                Ok(Message::Binary(b)) if b.is_empty() => vec![0xff],
                Ok(Message::Binary(b)) => b.to_vec(),
                // Handed on as bytes the session cannot decode: it refuses the peer.
                Ok(Message::Text(_)) => vec![0xff],
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                Ok(Message::Close(_)) => break,
                // The WebSocket layer enforces the frame limit itself: the session refuses
                // by name, like every other limit (axum does not expose the error's type).
                Err(e) if e.to_string().contains("Space limit exceeded") => OVER_THE_LIMIT.to_vec(),
                Err(_) => break,
            };
            // Once the session has ended, what still arrives is read and dropped.
            if let Some(t) = &tx
                && t.send(bytes).await.is_err()
            {
                tx = None;
            }
        }
    };
    let outbound = async move {
        while let Some(bytes) = rx.recv().await {
            if sink.send(Message::Binary(bytes.into())).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    };
    tokio::pin!(inbound, outbound);
    tokio::select! {
        // The relay's side ended (a refusal is the last frame out): the peer is still read
        // for a moment before the connection closes.
        () = &mut outbound => {
            let _ = tokio::time::timeout(LINGER, &mut inbound).await;
        }
        // The peer ended: what the relay still sends goes out, for a moment.
        () = &mut inbound => {
            let _ = tokio::time::timeout(LINGER, &mut outbound).await;
        }
    }
}

async fn connection(relay: Arc<Relay>, socket: WebSocket, addr: SocketAddr) {
    let (mine, theirs) = Link::pair(OUTBOUND_FRAMES);
    let mut pump = tokio::spawn(websocket_pump(socket, theirs));
    relay.serve_link(mine, addr.to_string()).await;
    // A peer that reads nothing keeps the pump stuck writing to it: after the linger, the
    // socket is dropped whatever it holds.
    if tokio::time::timeout(LINGER + Duration::from_secs(1), &mut pump).await.is_err() {
        pump.abort();
    }
}

impl Relay {
    /// Serves one connection over `link` (a WebSocket's, or the simulation's in-memory
    /// one), its peer named `peer_name` until it authenticates. Returns when the
    /// connection ends.
    pub async fn serve_link(self: &Arc<Self>, link: Link, peer_name: String) {
        let relay = self;
        let conn = relay.next_conn.fetch_add(1, Ordering::Relaxed);
        let Link { tx: link_tx, rx: mut link_rx } = link;
        let (tx, mut rx) = mpsc::channel::<Frame>(OUTBOUND_FRAMES);
        let writer_relay = relay.clone();
        let writer = tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                let bytes = frame.to_bytes();
                writer_relay.metrics.count(&writer_relay.metrics.bytes, "out", bytes.len() as u64);
                let last = matches!(frame, Frame::Refused { .. });
                if link_tx.send(bytes).await.is_err() || last {
                    return;
                }
            }
        });
        let mut out = Outbound { tx, held_hint: PeerCursors::new() };
        let challenge: [u8; 32] = match random_bytes() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "no randomness for a challenge; connection dropped");
                return;
            }
        };
        let (mut session, actions) = ServerSession::new(
            relay.config.relay,
            challenge,
            relay.config.limits,
            peer_name,
            relay.now_ms(),
        );
        let mut counted = match relay.admit_connection() {
            Ok(c) => c,
            Err(message) => {
                relay.refused(RefuseCode::Limit);
                let _ = out.send(Frame::Refused { code: RefuseCode::Limit, message }).await;
                drop(out);
                let _ = writer.await;
                return;
            }
        };
        tracing::debug!(conn, "connected");
        let _positioned = Positioned { relay, conn };
        let mut shutdown = relay.shutdown.subscribe();
        let mut feed: Option<broadcast::Receiver<shoal_core::store::StoreEvent>> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut pending = std::collections::VecDeque::from(actions);
        loop {
            // Carry out what the session asked for, in order.
            while let Some(action) = pending.pop_front() {
                match action {
                    Action::Send(frame) => {
                        if !out.send(frame).await {
                            relay.refused(RefuseCode::Timeout);
                            tracing::info!(
                                code = ?RefuseCode::Timeout,
                                message = %format!(
                                    "{}: read nothing for {} s",
                                    session.peer_name(),
                                    SEND_DEADLINE.as_secs()
                                ),
                                "connection refused"
                            );
                            // Its queue is full: no refusal can reach it.
                            writer.abort();
                            return;
                        }
                    }
                    Action::CheckAccess { workspace, peer } => {
                        if let Err(message) = relay.count_device(&mut counted, workspace, peer) {
                            pending.extend(session.refuse(RefuseCode::Limit, message));
                            continue;
                        }
                        feed = Some(relay.store.subscribe());
                        let access = relay.access(workspace, peer).await;
                        let cursors = relay.replica(workspace).cursors().await.unwrap_or_default();
                        pending.extend(session.on_access(access, cursors));
                    }
                    Action::Serve { id, request } => {
                        let Some((ws, peer)) = session.peer() else { continue };
                        let (response, roster_changed) = relay.serve_request(ws, request).await;
                        // A changed access is announced before the response, so the device
                        // knows it when its push returns (an entrant whose join was stored
                        // is a member for its next request).
                        if roster_changed {
                            let access = relay.access(ws, peer).await;
                            let cursors = relay.replica(ws).cursors().await.unwrap_or_default();
                            pending.extend(session.on_access(access, cursors));
                        }
                        pending.extend(session.on_served(id, response));
                    }
                    Action::Position(cursors) => {
                        if let Some((ws, _)) = session.peer() {
                            let mut positions =
                                relay.positions.lock().unwrap_or_else(|p| p.into_inner());
                            positions.insert(conn, (ws, cursors));
                        }
                    }
                    Action::Close { code, message } => {
                        relay.refused(code);
                        tracing::info!(code = ?code, %message, "connection refused");
                        drop(out);
                        let _ = writer.await;
                        return;
                    }
                }
            }
            if !out.flush_hint() {
                return;
            }
            tokio::select! {
                msg = link_rx.recv() => match msg {
                    Some(bytes) if bytes.as_slice() == OVER_THE_LIMIT => {
                        let msg = format!(
                            "{}: frame over the limit of {} bytes",
                            session.peer_name(),
                            relay.config.limits.max_frame
                        );
                        pending.extend(session.refuse(RefuseCode::Limit, msg));
                    }
                    Some(bytes) => {
                        relay.metrics.count(&relay.metrics.bytes, "in", bytes.len() as u64);
                        pending.extend(session.on_bytes(&bytes, relay.now_ms()));
                    }
                    None => break,
                },
                ev = async { match feed.as_mut() { Some(f) => f.recv().await, None => std::future::pending().await } } => {
                    let Some((ws, peer)) = session.peer() else { continue };
                    match ev {
                        Ok(ev) if ev.workspace == ws => {
                            pending.extend(session.on_store_advanced([(ev.origin, ev.next)].into_iter().collect()));
                            if ev.control {
                                let access = relay.access(ws, peer).await;
                                let cursors = relay.replica(ws).cursors().await.unwrap_or_default();
                                pending.extend(session.on_access(access, cursors));
                            }
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            // Missed notices: announce everything (cheap; the device diffs)
                            // and re-check access in case a missed one changed the roster.
                            let cursors = relay.replica(ws).cursors().await.unwrap_or_default();
                            pending.extend(session.on_store_advanced(cursors.clone()));
                            let access = relay.access(ws, peer).await;
                            pending.extend(session.on_access(access, cursors));
                        }
                        Err(broadcast::error::RecvError::Closed) => feed = None,
                    }
                }
                () = async {
                    while !*shutdown.borrow_and_update() {
                        if shutdown.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                } => {
                    let msg = "the relay is shutting down; reconnect later".to_string();
                    pending.extend(session.refuse(RefuseCode::Shutdown, msg));
                }
                _ = tick.tick() => pending.extend(session.on_tick(relay.now_ms())),
            }
        }
        tracing::debug!("disconnected");
        drop(out);
        let _ = writer.await;
    }
}
