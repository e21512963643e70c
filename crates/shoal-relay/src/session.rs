//! The relay's side of one connection, as a state machine free of I/O (`docs/PROTOCOL.md`
//! §4), so the server drives it over a WebSocket and `shoal-sim` drives it directly.
//!
//! Owns: [`ServerSession`]: the states (hello sent → authenticating → open → closed), the
//! checks on every frame (size, rate, order, what the device's [`Access`] allows), and
//! the heartbeat. It answers with [`Action`]s for its driver to carry out: send a frame,
//! look up a device's access, serve a request against the workspace's replica, close.
//!
//! Invariants:
//! - Nothing but `Hello` is sent before a valid `Auth`; nothing but `Refused` after a
//!   refusal; every served request gets exactly one response, in request order.
//! - An entrant's only accepted request is a push of a log's first run (its join, or a
//!   workspace's genesis); a member's are all.
//! - A peer that sends nothing for [`DEAD_AFTER_MS`] is closed; one that exceeds its rate,
//!   sends an oversize or malformed frame, or has more than [`Limits::max_pending`]
//!   requests unanswered is closed with a refusal naming it.
//!
//! Never: performs I/O, reads a clock (time comes in as `now_ms`), or trusts a field of a
//! frame it has not checked.

use shoal_core::codec::Encode;
use shoal_core::{PeerCursors, PeerId, WorkspaceId};

use crate::auth::verify_auth;
use crate::frame::{Access, Frame, PROTOCOL_VERSION, RefuseCode, RelayId, Request, Response};

/// A peer silent for this long gets a ping.
pub const PING_AFTER_MS: u64 = 5_000;
/// A peer silent for this long is dead (DESIGN §9: detected within 15 s).
pub const DEAD_AFTER_MS: u64 = 15_000;

/// Per-connection limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest frame accepted, in bytes.
    pub max_frame: usize,
    /// Requests received and not yet answered.
    pub max_pending: usize,
    /// Sustained bytes per second a device may send.
    pub bytes_per_sec: u64,
    /// Sustained frames per second a device may send.
    pub frames_per_sec: u64,
    /// How many seconds of either rate may arrive at once.
    pub burst_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: 32 << 20,
            max_pending: 64,
            bytes_per_sec: 64 << 20,
            frames_per_sec: 2_000,
            burst_secs: 4,
        }
    }
}

/// What the driver must do next.
// Actions live for one step of the driver and are few; boxing the frame would cost an
// allocation per frame for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this frame.
    Send(Frame),
    /// Find what `peer` may do in `workspace` and call [`ServerSession::on_access`].
    CheckAccess {
        /// The workspace.
        workspace: WorkspaceId,
        /// The authenticated device.
        peer: PeerId,
    },
    /// Serve `request` against the workspace's replica and call
    /// [`ServerSession::on_served`] with the response.
    Serve {
        /// The request's id.
        id: u64,
        /// What to do.
        request: Request,
    },
    /// The device reported its own cursors (record them for the lag metric).
    Position(PeerCursors),
    /// Send `Refused` with this code and message (already queued as a `Send` before it),
    /// then close the connection.
    Close {
        /// Why.
        code: RefuseCode,
        /// In words, naming the peer.
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// `Hello` sent; waiting for `Auth`.
    Hello,
    /// `Auth` verified; waiting for the access check.
    Checking { workspace: WorkspaceId, peer: PeerId },
    /// Serving requests.
    Open { workspace: WorkspaceId, peer: PeerId, access: Access },
    /// Refused or closed; nothing more is sent.
    Closed,
}

/// A token bucket: `rate` per second, at most `burst` saved up.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at_ms: u64,
}

impl Bucket {
    fn new(rate: u64, burst_secs: u64, now_ms: u64) -> Self {
        let burst = (rate.saturating_mul(burst_secs.max(1))) as f64;
        Bucket { tokens: burst, rate: rate as f64, burst, at_ms: now_ms }
    }

    /// Takes `n` tokens; false when there are not enough.
    fn take(&mut self, n: u64, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64 / 1000.0;
        self.at_ms = self.at_ms.max(now_ms);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= n as f64;
        self.tokens >= 0.0
    }
}

/// The relay's side of one connection (see the module doc).
#[derive(Debug)]
pub struct ServerSession {
    relay: RelayId,
    challenge: [u8; 32],
    limits: Limits,
    state: State,
    pending: usize,
    /// Pushes served while the device was an entrant.
    entrant_pushes: usize,
    last_heard_ms: u64,
    pinged: bool,
    bytes: Bucket,
    frames: Bucket,
    /// A name for the peer in messages: its address until it authenticates.
    peer_name: String,
}

impl ServerSession {
    /// A new connection from `peer_name` (its address); returns the session and the
    /// `Hello` to send.
    pub fn new(
        relay: RelayId,
        challenge: [u8; 32],
        limits: Limits,
        peer_name: String,
        now_ms: u64,
    ) -> (Self, Vec<Action>) {
        let s = ServerSession {
            relay,
            challenge,
            limits,
            state: State::Hello,
            pending: 0,
            entrant_pushes: 0,
            last_heard_ms: now_ms,
            pinged: false,
            bytes: Bucket::new(limits.bytes_per_sec, limits.burst_secs, now_ms),
            frames: Bucket::new(limits.frames_per_sec, limits.burst_secs, now_ms),
            peer_name,
        };
        let hello = Frame::Hello {
            version: PROTOCOL_VERSION,
            relay,
            challenge,
            max_frame: limits.max_frame as u64,
        };
        (s, vec![Action::Send(hello)])
    }

    /// The authenticated device and its workspace, once known.
    pub fn peer(&self) -> Option<(WorkspaceId, PeerId)> {
        match self.state {
            State::Checking { workspace, peer } | State::Open { workspace, peer, .. } => {
                Some((workspace, peer))
            }
            _ => None,
        }
    }

    /// The device's access, once checked.
    pub fn access(&self) -> Option<Access> {
        match self.state {
            State::Open { access, .. } => Some(access),
            _ => None,
        }
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// How the peer is named in messages.
    pub fn peer_name(&self) -> &str {
        &self.peer_name
    }

    /// Refuses and closes: the `Refused` frame, then `Close`.
    pub fn refuse(&mut self, code: RefuseCode, message: String) -> Vec<Action> {
        if self.state == State::Closed {
            return Vec::new();
        }
        self.state = State::Closed;
        vec![
            Action::Send(Frame::Refused { code, message: message.clone() }),
            Action::Close { code, message },
        ]
    }

    /// A binary message arrived.
    pub fn on_bytes(&mut self, bytes: &[u8], now_ms: u64) -> Vec<Action> {
        if self.state == State::Closed {
            return Vec::new();
        }
        self.last_heard_ms = now_ms;
        self.pinged = false;
        if bytes.len() > self.limits.max_frame {
            let msg = format!(
                "{}: frame of {} bytes is over the limit of {}",
                self.peer_name,
                bytes.len(),
                self.limits.max_frame
            );
            return self.refuse(RefuseCode::Limit, msg);
        }
        if !self.frames.take(1, now_ms) || !self.bytes.take(bytes.len() as u64, now_ms) {
            let msg = format!("{}: sending faster than this relay's rate limit", self.peer_name);
            return self.refuse(RefuseCode::Limit, msg);
        }
        match Frame::decode(bytes) {
            Ok(frame) => self.on_frame(frame),
            Err(e) => {
                let msg = format!("{}: malformed frame: {e}", self.peer_name);
                self.refuse(RefuseCode::Protocol, msg)
            }
        }
    }

    fn on_frame(&mut self, frame: Frame) -> Vec<Action> {
        match (&self.state, frame) {
            (_, Frame::Ping(n)) => vec![Action::Send(Frame::Pong(n))],
            (_, Frame::Pong(_)) => Vec::new(),
            (State::Hello, Frame::Auth { version, workspace, key, signature }) => {
                if version != PROTOCOL_VERSION {
                    let msg = format!(
                        "{}: speaks relay protocol {version}; this relay speaks {PROTOCOL_VERSION}",
                        self.peer_name
                    );
                    return self.refuse(RefuseCode::Version, msg);
                }
                match verify_auth(&self.relay, &self.challenge, &workspace, &key, &signature) {
                    Ok(peer) => {
                        self.peer_name = format!("device {peer} ({})", self.peer_name);
                        self.state = State::Checking { workspace, peer };
                        vec![Action::CheckAccess { workspace, peer }]
                    }
                    Err(e) => {
                        let msg = format!("{}: {e}", self.peer_name);
                        self.refuse(RefuseCode::BadAuth, msg)
                    }
                }
            }
            (State::Open { access: Access::Member, .. }, Frame::Position(cursors)) => {
                vec![Action::Position(cursors)]
            }
            (State::Open { .. }, Frame::Position(_)) => Vec::new(),
            (State::Open { peer, access, .. }, Frame::Request { id, request }) => {
                let (peer, access) = (*peer, *access);
                if self.pending >= self.limits.max_pending {
                    let msg = format!(
                        "{}: more than {} requests unanswered",
                        self.peer_name, self.limits.max_pending
                    );
                    return self.refuse(RefuseCode::Limit, msg);
                }
                if let Err(message) = allowed(access, &peer, &request) {
                    return vec![Action::Send(Frame::Response {
                        id,
                        response: Response::Error { code: RefuseCode::NotAMember, message },
                    })];
                }
                if access == Access::Entrant {
                    // Entrants are not members: what they may store is bounded per
                    // connection, however fast they may send.
                    self.entrant_pushes += 1;
                    if self.entrant_pushes > ENTRANT_PUSHES {
                        let msg = format!(
                            "{}: more than {ENTRANT_PUSHES} pushes before being admitted",
                            self.peer_name
                        );
                        return self.refuse(RefuseCode::Limit, msg);
                    }
                }
                self.pending += 1;
                vec![Action::Serve { id, request }]
            }
            (_, frame) => {
                let msg = format!(
                    "{}: unexpected {} frame in this state of the protocol",
                    self.peer_name,
                    frame.name()
                );
                self.refuse(RefuseCode::Protocol, msg)
            }
        }
    }

    /// The access check of [`Action::CheckAccess`] finished (also called again when the
    /// workspace's roster changed: a member may have been removed, an entrant admitted).
    pub fn on_access(
        &mut self,
        result: Result<Access, (RefuseCode, String)>,
        cursors: PeerCursors,
    ) -> Vec<Action> {
        let (workspace, peer, before) = match self.state {
            State::Checking { workspace, peer } => (workspace, peer, None),
            State::Open { workspace, peer, access } => (workspace, peer, Some(access)),
            _ => return Vec::new(),
        };
        match result {
            Ok(access) => {
                self.state = State::Open { workspace, peer, access };
                if before == Some(access) {
                    return Vec::new();
                }
                // An entrant learns nothing of the workspace.
                let cursors = if access == Access::Member { cursors } else { PeerCursors::new() };
                vec![Action::Send(Frame::Welcome { access, cursors })]
            }
            Err((code, message)) => self.refuse(code, message),
        }
    }

    /// A request of [`Action::Serve`] was served.
    pub fn on_served(&mut self, id: u64, response: Response) -> Vec<Action> {
        if self.state == State::Closed {
            return Vec::new();
        }
        self.pending = self.pending.saturating_sub(1);
        vec![Action::Send(Frame::Response { id, response })]
    }

    /// The workspace's store advanced (any origin, written through any connection or node).
    pub fn on_store_advanced(&mut self, delta: PeerCursors) -> Vec<Action> {
        match self.state {
            State::Open { access: Access::Member, .. } if !delta.is_empty() => {
                vec![Action::Send(Frame::Advanced(delta))]
            }
            _ => Vec::new(),
        }
    }

    /// Time passed: pings a quiet peer, closes a silent one.
    pub fn on_tick(&mut self, now_ms: u64) -> Vec<Action> {
        if self.state == State::Closed {
            return Vec::new();
        }
        let silent = now_ms.saturating_sub(self.last_heard_ms);
        if silent >= DEAD_AFTER_MS {
            let msg = format!("{}: silent for {} s", self.peer_name, silent / 1000);
            return self.refuse(RefuseCode::Timeout, msg);
        }
        if silent >= PING_AFTER_MS && !self.pinged {
            self.pinged = true;
            return vec![Action::Send(Frame::Ping(now_ms))];
        }
        Vec::new()
    }
}

/// Most entries an entrant may push in one log's first run.
pub const ENTRANT_RUN: usize = 64;

/// Most pushes an entrant may make on one connection (its join and the genesis, with
/// room for retries): an entrant is not a member, so what it may store is bounded.
pub const ENTRANT_PUSHES: usize = 8;

/// Whether a device with `access` may make `request`.
///
/// An entrant may push only the first run of a log (from entry 0, at most [`ENTRANT_RUN`]
/// entries): its own join or request to join, or a workspace's genesis (a new workspace,
/// or one this relay does not hold yet, brought by any device that holds it). Both are
/// self-authenticating (the ingest pipeline checks the genesis against the workspace id and
/// the seal against the origin), and neither makes the entrant a reader: only the roster
/// folded from them does.
fn allowed(access: Access, peer: &PeerId, request: &Request) -> Result<(), String> {
    match (access, request) {
        (Access::Member, _) => Ok(()),
        (Access::Entrant, Request::Push { entries, .. })
            if entries.len() <= ENTRANT_RUN
                && entries.iter().enumerate().all(|(i, e)| e.index == i as u64) =>
        {
            Ok(())
        }
        (Access::Entrant, _) => Err(format!(
            "device {peer} is not a member of the workspace (yet): it may push only the first \
             run of a log (its join or request, or the workspace's genesis)"
        )),
    }
}

/// The encoded size of a frame (what the limits count).
pub fn frame_len(frame: &Frame) -> usize {
    frame.to_bytes().len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::auth_message;
    use shoal_core::DeviceKey;

    fn hello(s: &[Action]) -> ([u8; 32], RelayId) {
        match &s[0] {
            Action::Send(Frame::Hello { challenge, relay, .. }) => (*challenge, *relay),
            other => panic!("expected hello, got {other:?}"),
        }
    }

    fn auth_bytes(
        key: &DeviceKey,
        ws: WorkspaceId,
        relay: RelayId,
        challenge: [u8; 32],
    ) -> Vec<u8> {
        let peer = key.peer_id(&ws);
        let signature = key.sign(&auth_message(&relay, &challenge, &ws, &peer));
        Frame::Auth { version: PROTOCOL_VERSION, workspace: ws, key: key.public_key(), signature }
            .to_bytes()
    }

    fn open_session(access: Access) -> (ServerSession, PeerId) {
        let key = DeviceKey::from_secret_bytes(&[5; 32]);
        let ws = WorkspaceId::derive(&key.public_key(), &[0; 16]);
        let (mut s, out) =
            ServerSession::new(RelayId([1; 32]), [2; 32], Limits::default(), "test".into(), 0);
        let (challenge, relay) = hello(&out);
        let out = s.on_bytes(&auth_bytes(&key, ws, relay, challenge), 1);
        let peer = key.peer_id(&ws);
        assert_eq!(out, vec![Action::CheckAccess { workspace: ws, peer }]);
        let out = s.on_access(Ok(access), PeerCursors::new());
        assert!(matches!(out[..], [Action::Send(Frame::Welcome { .. })]));
        (s, peer)
    }

    fn closed_with(out: &[Action], code: RefuseCode) -> bool {
        out.iter().any(|a| matches!(a, Action::Close { code: c, .. } if *c == code))
    }

    #[test]
    fn a_signature_for_another_challenge_is_refused() {
        let key = DeviceKey::from_secret_bytes(&[5; 32]);
        let ws = WorkspaceId::derive(&key.public_key(), &[0; 16]);
        let (mut s, out) =
            ServerSession::new(RelayId([1; 32]), [2; 32], Limits::default(), "test".into(), 0);
        let (_, relay) = hello(&out);
        let out = s.on_bytes(&auth_bytes(&key, ws, relay, [3; 32]), 1);
        assert!(closed_with(&out, RefuseCode::BadAuth), "{out:?}");
        assert!(s.is_closed());
        assert!(s.on_bytes(&Frame::Ping(1).to_bytes(), 2).is_empty(), "nothing after a refusal");
    }

    #[test]
    fn requests_before_auth_and_garbage_are_protocol_errors() {
        let (mut s, _) =
            ServerSession::new(RelayId([1; 32]), [2; 32], Limits::default(), "t".into(), 0);
        let req = Frame::Request { id: 1, request: Request::Cursors }.to_bytes();
        assert!(closed_with(&s.on_bytes(&req, 1), RefuseCode::Protocol));
        let (mut s, _) =
            ServerSession::new(RelayId([1; 32]), [2; 32], Limits::default(), "t".into(), 0);
        assert!(closed_with(&s.on_bytes(&[0xff, 1, 2], 1), RefuseCode::Protocol));
    }

    #[test]
    fn an_entrant_may_push_only_the_first_run_of_a_log() {
        let (mut s, peer) = open_session(Access::Entrant);
        let out = s.on_bytes(&Frame::Request { id: 7, request: Request::Cursors }.to_bytes(), 2);
        assert!(
            matches!(
                &out[..],
                [Action::Send(Frame::Response {
                    id: 7,
                    response: Response::Error { code: RefuseCode::NotAMember, .. }
                })]
            ),
            "{out:?}"
        );
        let entry = |index| shoal_core::Entry {
            origin: peer,
            index,
            body: shoal_core::EntryBody::Expunged(shoal_core::EntryHash([0; 32])),
            seal: None,
        };
        let first_run = Request::Push { origin: peer, entries: vec![entry(0), entry(1)] };
        let out = s.on_bytes(&Frame::Request { id: 8, request: first_run.clone() }.to_bytes(), 3);
        assert_eq!(out, vec![Action::Serve { id: 8, request: first_run }]);
        for entries in [
            vec![entry(1)],
            vec![entry(0), entry(2)],
            (0..=ENTRANT_RUN as u64).map(entry).collect(),
        ] {
            let later = Request::Push { origin: peer, entries };
            let out = s.on_bytes(&Frame::Request { id: 9, request: later }.to_bytes(), 4);
            assert!(
                matches!(
                    &out[..],
                    [Action::Send(Frame::Response { response: Response::Error { .. }, .. })]
                ),
                "{out:?}"
            );
        }
        let read = Request::Read { origin: peer, from: 0 };
        let out = s.on_bytes(&Frame::Request { id: 10, request: read }.to_bytes(), 5);
        assert!(matches!(
            &out[..],
            [Action::Send(Frame::Response { response: Response::Error { .. }, .. })]
        ));
        // An entrant's pushes are bounded per connection.
        let mut out = Vec::new();
        for id in 0..ENTRANT_PUSHES as u64 - 1 {
            let push = Request::Push { origin: peer, entries: vec![entry(0)] };
            out = s.on_bytes(&Frame::Request { id: 100 + id, request: push }.to_bytes(), 6);
            s.on_served(100 + id, Response::Stored { new: 0, duplicates: 1, next: 1 });
        }
        assert!(!closed_with(&out, RefuseCode::Limit), "{out:?}");
        let push = Request::Push { origin: peer, entries: vec![entry(0)] };
        let out = s.on_bytes(&Frame::Request { id: 200, request: push }.to_bytes(), 7);
        assert!(closed_with(&out, RefuseCode::Limit), "{out:?}");
    }

    #[test]
    fn a_silent_peer_is_pinged_then_closed_within_fifteen_seconds() {
        let (mut s, _) = open_session(Access::Member);
        assert!(s.on_tick(PING_AFTER_MS - 1).is_empty());
        assert!(matches!(&s.on_tick(PING_AFTER_MS + 1)[..], [Action::Send(Frame::Ping(_))]));
        assert!(s.on_tick(PING_AFTER_MS + 2).is_empty(), "one ping per silence");
        assert!(closed_with(&s.on_tick(DEAD_AFTER_MS + 1), RefuseCode::Timeout));
    }

    #[test]
    fn oversize_frames_floods_and_unanswered_requests_close_the_connection() {
        let (mut s, _) = open_session(Access::Member);
        let big = vec![0u8; Limits::default().max_frame + 1];
        assert!(closed_with(&s.on_bytes(&big, 2), RefuseCode::Limit));

        let (mut s, _) = open_session(Access::Member);
        let ping = Frame::Ping(1).to_bytes();
        let mut closed = false;
        for _ in 0..(Limits::default().frames_per_sec * Limits::default().burst_secs + 10) {
            closed |= closed_with(&s.on_bytes(&ping, 2), RefuseCode::Limit);
        }
        assert!(closed, "a flood within one millisecond is refused");

        let (mut s, _) = open_session(Access::Member);
        let mut out = Vec::new();
        for id in 0..=Limits::default().max_pending as u64 {
            out = s.on_bytes(&Frame::Request { id, request: Request::Cursors }.to_bytes(), 2);
        }
        assert!(closed_with(&out, RefuseCode::Limit), "{out:?}");
    }

    #[test]
    fn a_removed_member_is_refused_when_the_roster_changes() {
        let (mut s, _) = open_session(Access::Member);
        let out = s.on_access(Err((RefuseCode::NotAMember, "removed".into())), PeerCursors::new());
        assert!(closed_with(&out, RefuseCode::NotAMember));
    }
}
