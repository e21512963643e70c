//! The device's side: a connection to a relay as a remote replica (DESIGN §3: "a relay
//! connection is a remote replica proxy, so the same drivers serve folders and servers").
//!
//! Owns: [`RemoteReplica`]: connecting and authenticating ([`RemoteReplica::connect`]),
//! requests with their responses matched by id, the relay's cursors as last announced
//! (`Welcome`, `Advanced`, push results) for `watch_cursors`, and the heartbeat.
//!
//! Invariants: every request gets its response, an error, or (when the connection ends)
//! [`SyncError::Unavailable`] naming the relay; nothing waits forever (requests time out
//! after [`REQUEST_TIMEOUT`]; a relay silent for [`crate::session::DEAD_AFTER_MS`] is
//! dropped). Entries read from the relay are untrusted: the local replica takes them
//! through its ingest pipeline like any other.
//!
//! Never: reconnects by itself (the sync loop makes a new connection after a failed pass),
//! or sends a frame larger than the relay said it accepts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::{SinkExt, StreamExt};
use shoal_core::codec::Encode;
use shoal_core::{
    BatchApplied, CursorBroadcast, CursorStream, DeviceKey, Entry, HasCursors, LogProcessor,
    LogSource, PeerCursors, PeerId, SyncError, WorkspaceId,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::auth::auth_message;
use crate::frame::{Access, Frame, PROTOCOL_VERSION, RelayId, Request, Response};
use crate::session::{DEAD_AFTER_MS, ENTRANT_RUN, PING_AFTER_MS};

/// How long a request may wait for its response.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The largest frame a device takes from a relay: a page of entries ends on a seal, so it
/// may carry one entry as large as the format allows ([`shoal_core::MAX_CIPHERTEXT_BYTES`])
/// and some more.
pub const MAX_INCOMING_FRAME: usize = (shoal_core::MAX_CIPHERTEXT_BYTES as usize) + (16 << 20);

/// How long connecting and authenticating may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// How a device connects to a relay.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// A PEM file of extra trusted roots for `wss://` (a relay with a private or
    /// self-signed certificate); `None`: the file named by `SHOAL_RELAY_CA`, if set.
    pub extra_roots: Option<std::path::PathBuf>,
    /// How long a request may wait for its response (default [`REQUEST_TIMEOUT`]).
    pub request_timeout: Option<Duration>,
}

/// A connection to a relay, as a replica of one workspace (see the module doc). Cheap to
/// clone; the connection closes when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct RemoteReplica {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    url: String,
    relay: RelayId,
    max_frame: usize,
    request_timeout: Duration,
    out: mpsc::Sender<Frame>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Response>>>,
    next_id: AtomicU64,
    cursors: CursorBroadcast,
    access: watch::Sender<Access>,
    /// Why the connection ended, once it has.
    closed: watch::Sender<Option<String>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for t in self.tasks.get_mut().unwrap_or_else(|p| p.into_inner()).drain(..) {
            t.abort();
        }
    }
}

fn unavailable(url: &str, reason: impl Into<String>) -> SyncError {
    SyncError::Unavailable { what: format!("relay {url}"), reason: reason.into() }
}

impl RemoteReplica {
    /// Connects to the relay at `url` (`ws://host:port/v1/sync`, or without the path; or
    /// `wss://`) and authenticates as `key`'s device in `workspace`.
    pub async fn connect(
        url: &str,
        workspace: WorkspaceId,
        key: &DeviceKey,
    ) -> Result<RemoteReplica, SyncError> {
        Self::connect_with(url, workspace, key, &ConnectOptions::default()).await
    }

    /// [`RemoteReplica::connect`] with options (extra trusted roots for `wss://`).
    pub async fn connect_with(
        url: &str,
        workspace: WorkspaceId,
        key: &DeviceKey,
        options: &ConnectOptions,
    ) -> Result<RemoteReplica, SyncError> {
        let url = sync_url(url);
        tokio::time::timeout(CONNECT_TIMEOUT, Self::connect_inner(&url, workspace, key, options))
            .await
            .map_err(|_| {
                unavailable(&url, format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()))
            })?
    }

    async fn connect_inner(
        url: &str,
        workspace: WorkspaceId,
        key: &DeviceKey,
        options: &ConnectOptions,
    ) -> Result<RemoteReplica, SyncError> {
        let connector = if url.starts_with("wss://") {
            let config = crate::tls::client_config(options.extra_roots.as_deref())
                .map_err(|e| unavailable(url, e))?;
            Some(tokio_tungstenite::Connector::Rustls(config))
        } else {
            None
        };
        // A page ends on a seal, so it can hold one entry of any size the format allows.
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(MAX_INCOMING_FRAME))
            .max_frame_size(Some(MAX_INCOMING_FRAME));
        let (ws, _) =
            tokio_tungstenite::connect_async_tls_with_config(url, Some(config), true, connector)
                .await
                .map_err(|e| unavailable(url, format!("cannot connect: {e}")))?;
        let (link, pump) = websocket_link(ws);
        let remote = Self::over_link(link, url, workspace, key, options).await;
        match remote {
            Ok(r) => {
                r.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()).push(pump);
                Ok(r)
            }
            Err(e) => {
                pump.abort();
                Err(e)
            }
        }
    }

    /// Authenticates over an already open [`Link`] (a WebSocket's, or the simulation's
    /// in-memory one) named `name` in messages, and serves requests over it.
    pub async fn over_link(
        mut link: Link,
        name: &str,
        workspace: WorkspaceId,
        key: &DeviceKey,
        options: &ConnectOptions,
    ) -> Result<RemoteReplica, SyncError> {
        let url = name;
        let (relay, challenge, max_frame) = match next_frame(&mut link, url).await? {
            Frame::Hello { version, relay, challenge, max_frame } => {
                if version != PROTOCOL_VERSION {
                    return Err(unavailable(
                        url,
                        format!(
                            "speaks relay protocol {version}; this device speaks {PROTOCOL_VERSION}"
                        ),
                    ));
                }
                (relay, challenge, usize::try_from(max_frame).unwrap_or(usize::MAX))
            }
            Frame::Refused { code, message } => {
                return Err(unavailable(url, format!("refused ({code:?}): {message}")));
            }
            other => return Err(unavailable(url, format!("sent {} before hello", other.name()))),
        };
        let peer = key.peer_id(&workspace);
        let signature = key.sign(&auth_message(&relay, &challenge, &workspace, &peer));
        let auth =
            Frame::Auth { version: PROTOCOL_VERSION, workspace, key: key.public_key(), signature };
        link.tx
            .send(auth.to_bytes())
            .await
            .map_err(|_| unavailable(url, "closed the connection"))?;
        let (access, cursors) = loop {
            match next_frame(&mut link, url).await? {
                Frame::Welcome { access, cursors } => break (access, cursors),
                Frame::Ping(n) => {
                    let _ = link.tx.send(Frame::Pong(n).to_bytes()).await;
                }
                Frame::Refused { code, message } => {
                    return Err(unavailable(url, format!("refused ({code:?}): {message}")));
                }
                other => {
                    return Err(unavailable(url, format!("sent {} before welcome", other.name())));
                }
            }
        };
        let (out, rx) = mpsc::channel(64);
        let inner = Arc::new(Inner {
            url: url.to_string(),
            relay,
            max_frame,
            request_timeout: options.request_timeout.unwrap_or(REQUEST_TIMEOUT),
            out,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            cursors: CursorBroadcast::new(cursors),
            access: watch::Sender::new(access),
            closed: watch::Sender::new(None),
            tasks: Mutex::new(Vec::new()),
        });
        let task = tokio::spawn(run_connection(Arc::downgrade(&inner), link, rx));
        inner.tasks.lock().unwrap_or_else(|p| p.into_inner()).push(task);
        Ok(RemoteReplica { inner })
    }

    /// The relay's URL.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The relay deployment's id.
    pub fn relay_id(&self) -> RelayId {
        self.inner.relay
    }

    /// What this device may do at the relay (an entrant becomes a member once the relay
    /// has stored its admission).
    pub fn access(&self) -> Access {
        *self.inner.access.borrow()
    }

    /// Why the connection ended, if it has.
    pub fn closed(&self) -> Option<String> {
        self.inner.closed.borrow().clone()
    }

    /// Completes when the connection ends (or every handle is dropped). Holds no handle,
    /// so waiting on it never keeps the connection open.
    pub fn until_closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut closed = self.inner.closed.subscribe();
        async move {
            let _ = closed.wait_for(Option::is_some).await;
        }
    }

    async fn request(&self, request: Request) -> Result<Response, SyncError> {
        let url = &self.inner.url;
        if let Some(why) = self.closed() {
            return Err(unavailable(url, why));
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = Frame::Request { id, request };
        let len = frame.to_bytes().len();
        if len > self.inner.max_frame {
            return Err(SyncError::Misuse(format!(
                "a {len}-byte request is over relay {url}'s frame limit of {} bytes",
                self.inner.max_frame
            )));
        }
        let (tx, rx) = oneshot::channel();
        self.inner.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(id, tx);
        if self.inner.out.send(frame).await.is_err() {
            return Err(unavailable(
                url,
                self.closed().unwrap_or_else(|| "connection closed".into()),
            ));
        }
        match tokio::time::timeout(self.inner.request_timeout, rx).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(_)) => {
                Err(unavailable(url, self.closed().unwrap_or_else(|| "connection closed".into())))
            }
            Err(_) => {
                self.inner.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                let secs = self.inner.request_timeout.as_secs_f64();
                Err(unavailable(url, format!("no response within {secs} s")))
            }
        }
    }

    /// Tells the relay this device's own cursors (after a pass), for its lag metric. A
    /// notice: nothing waits for it; a closed connection ignores it.
    pub async fn report_position(&self, cursors: PeerCursors) {
        if self.access() == Access::Member {
            let _ = self.inner.out.send(Frame::Position(cursors)).await;
        }
    }

    fn unexpected(&self, what: &str, response: Response) -> SyncError {
        match response {
            Response::Error { code, message } => {
                unavailable(&self.inner.url, format!("{code:?}: {message}"))
            }
            other => unavailable(&self.inner.url, format!("answered {what} with {other:?}")),
        }
    }
}

/// `ws://host:port` → `ws://host:port/v1/sync`; a URL with a path is kept as it is.
pub fn sync_url(url: &str) -> String {
    let url = url.trim_end_matches('/');
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    if after_scheme.contains('/') { url.to_string() } else { format!("{url}/v1/sync") }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One connection's frames as bytes, both ways: what a transport carries. Closed when
/// either side drops its half.
#[derive(Debug)]
pub struct Link {
    /// Frames to the other side.
    pub tx: mpsc::Sender<Vec<u8>>,
    /// Frames from the other side.
    pub rx: mpsc::Receiver<Vec<u8>>,
}

impl Link {
    /// Two connected ends, each queueing up to `capacity` frames.
    pub fn pair(capacity: usize) -> (Link, Link) {
        let (a_tx, b_rx) = mpsc::channel(capacity);
        let (b_tx, a_rx) = mpsc::channel(capacity);
        (Link { tx: a_tx, rx: a_rx }, Link { tx: b_tx, rx: b_rx })
    }
}

/// Carries a WebSocket's binary messages over a [`Link`]; the returned task ends (and the
/// link closes) when either side does. WebSocket pings are answered by the library.
fn websocket_link(ws: Ws) -> (Link, JoinHandle<()>) {
    let (mine, theirs) = Link::pair(16);
    let Link { tx, mut rx } = theirs;
    let (mut sink, mut stream) = ws.split();
    // Two independent directions: neither ever waits for the other.
    let task = tokio::spawn(async move {
        let inbound = async move {
            while let Some(Ok(msg)) = stream.next().await {
                match msg {
                    Message::Binary(b) if tx.send(b.to_vec()).await.is_err() => break,
                    Message::Binary(_) => {}
                    // Not the protocol: end the connection (the other side is broken).
                    Message::Text(_) | Message::Close(_) => break,
                    _ => {}
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
        tokio::select! {
            () = inbound => {}
            () = outbound => {}
        }
    });
    (mine, task)
}

async fn next_frame(link: &mut Link, url: &str) -> Result<Frame, SyncError> {
    match link.rx.recv().await {
        Some(b) => Frame::decode(&b).map_err(|e| SyncError::Malformed {
            source_name: format!("relay {url}"),
            what: "frame",
            problem: e,
        }),
        None => Err(unavailable(url, "closed the connection")),
    }
}

/// The connection's task: writes queued frames, reads frames, answers pings, and detects
/// a silent relay. Ends when the relay closes, goes silent, or every handle is dropped.
async fn run_connection(inner: std::sync::Weak<Inner>, link: Link, mut rx: mpsc::Receiver<Frame>) {
    let Link { tx: sink, rx: mut stream } = link;
    let mut last_heard = Instant::now();
    let mut pinged = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let why: String = loop {
        tokio::select! {
            frame = rx.recv() => match frame {
                Some(f) => {
                    if sink.send(f.to_bytes()).await.is_err() {
                        break "the connection closed".into();
                    }
                }
                None => break "closed by this device".into(),
            },
            msg = stream.recv() => {
                last_heard = Instant::now();
                pinged = false;
                let Some(inner) = inner.upgrade() else { break "closed by this device".into() };
                let Some(b) = msg else { break "the relay closed the connection".into() };
                match Frame::decode(&b) {
                    Ok(Frame::Response { id, response }) => {
                        let tx = inner.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                        if let Some(tx) = tx {
                            let _ = tx.send(response);
                        }
                    }
                    Ok(Frame::Advanced(delta)) => inner.cursors.publish(&delta),
                    Ok(Frame::Welcome { access, cursors }) => {
                        inner.access.send_replace(access);
                        inner.cursors.publish(&cursors);
                    }
                    Ok(Frame::Ping(n)) => {
                        if sink.send(Frame::Pong(n).to_bytes()).await.is_err() {
                            break "the connection closed".into();
                        }
                    }
                    Ok(Frame::Pong(_)) => {}
                    Ok(Frame::Refused { code, message }) => break format!("refused ({code:?}): {message}"),
                    Ok(other) => break format!("sent an unexpected {} frame", other.name()),
                    Err(e) => break format!("sent a malformed frame: {e}"),
                }
            }
            _ = tick.tick() => {
                let silent = last_heard.elapsed().as_millis() as u64;
                if silent >= DEAD_AFTER_MS {
                    break format!("silent for {} s", silent / 1000);
                }
                if silent >= PING_AFTER_MS && !pinged {
                    pinged = true;
                    if sink.send(Frame::Ping(silent).to_bytes()).await.is_err() {
                        break "the connection closed".into();
                    }
                }
            }
        }
    };
    if let Some(inner) = inner.upgrade() {
        tracing::info!(relay = %inner.url, reason = %why, "relay connection ended");
        inner.closed.send_replace(Some(why));
        // Dropping the senders fails every waiting request with the reason above.
        inner.pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

#[async_trait]
impl HasCursors for RemoteReplica {
    async fn cursors(&self) -> Result<PeerCursors, SyncError> {
        // An entrant may not read the relay's cursors; it sees none (it may push only its
        // own entry 0, see `apply_batch`).
        if self.access() == Access::Entrant {
            return Ok(PeerCursors::new());
        }
        match self.request(Request::Cursors).await? {
            Response::Cursors(c) => {
                self.inner.cursors.publish(&c);
                Ok(c)
            }
            other => Err(self.unexpected("a cursors request", other)),
        }
    }

    fn watch_cursors(&self) -> CursorStream {
        self.inner.cursors.subscribe()
    }
}

#[async_trait]
impl LogSource<Entry> for RemoteReplica {
    async fn read_since(&self, origin: PeerId, from: u64) -> Result<Vec<Entry>, SyncError> {
        match self.request(Request::Read { origin, from }).await? {
            Response::Entries(entries) => Ok(entries),
            other => Err(self.unexpected("a read", other)),
        }
    }
}

#[async_trait]
impl LogProcessor<Entry> for RemoteReplica {
    async fn apply_batch(
        &self,
        origin: PeerId,
        entries: Vec<Entry>,
    ) -> Result<BatchApplied, SyncError> {
        let first = entries.first().map_or(0, |e| e.index);
        let mut entries = entries;
        if self.access() == Access::Entrant {
            // Until the relay has stored its admission, a device may push only a log's
            // first run (entry 0 to the first seal: a join, or the workspace's genesis);
            // the rest of the origin waits (a stall for this pass).
            let end = entries.iter().position(|e| e.seal.is_some()).map_or(0, |i| i + 1);
            if first != 0 || end > ENTRANT_RUN {
                entries.clear();
            }
            entries.truncate(end);
            if entries.is_empty() {
                return Err(SyncError::Refused {
                    by: format!("relay {}", self.inner.url),
                    origin,
                    index: first,
                    reason: "this device is not a member of the workspace at the relay (yet)"
                        .into(),
                });
            }
        }
        match self.request(Request::Push { origin, entries }).await? {
            Response::Stored { new, duplicates, next } => {
                self.inner.cursors.publish(&[(origin, next)].into_iter().collect());
                Ok(BatchApplied { new, duplicates, next })
            }
            Response::Stalled { next, reason } => {
                self.inner.cursors.publish(&[(origin, next)].into_iter().collect());
                Err(SyncError::Refused {
                    by: format!("relay {}", self.inner.url),
                    origin,
                    index: next.max(first),
                    reason,
                })
            }
            other => Err(self.unexpected("a push", other)),
        }
    }
}
