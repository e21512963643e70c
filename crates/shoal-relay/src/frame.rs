//! The relay protocol's frames and their bytes (`docs/PROTOCOL.md` §2).
//!
//! Owns: [`Frame`] (every message either side sends, one per WebSocket binary message),
//! its canonical encoding, and a decoder that takes untrusted bytes.
//!
//! Invariants: [`Frame::decode`] accepts exactly what [`Frame::encode`] produces (canonical
//! varints, no trailing bytes, counts and lengths bounded before anything is allocated);
//! entries inside a frame use the entry wire form of `docs/FORMAT.md` §3 unchanged, so a
//! relay forwards the bytes a device signed.
//!
//! Never: panics on any input, or reserves room for more items than the frame has bytes
//! left.

use shoal_core::codec::{DecodeError, DecodeProblem, Encode, Reader, put_bytes, put_varint};
use shoal_core::{Entry, PeerCursors, PeerId, PublicKey, WorkspaceId};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u8 = 1;

/// Most origins a cursor list may name in one frame.
pub const MAX_CURSORS: u64 = 1 << 20;

/// Most entries one frame may carry.
pub const MAX_ENTRIES_PER_FRAME: u64 = 1 << 16;

/// Longest text (a refusal's or an error's message) a frame may carry.
pub const MAX_TEXT: u64 = 4096;

/// A relay's identity: what a device's authentication signature names, so a signature made
/// for one relay deployment is worthless at another.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RelayId(pub [u8; 32]);

impl std::fmt::Debug for RelayId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RelayId({})", hex::encode(&self.0[..4]))
    }
}

impl std::fmt::Display for RelayId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// What an authenticated connection may do (`docs/PROTOCOL.md` §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// An active member: may read every origin and push any origin's entries.
    Member,
    /// Not (yet) a member: may push only its own entry 0 (a genesis founding this
    /// workspace, a join or a request to join), and reads nothing.
    Entrant,
}

/// Why a relay refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseCode {
    /// The frame sequence or a frame broke the protocol.
    Protocol = 1,
    /// The signature does not verify, or names another relay, challenge or workspace.
    BadAuth = 2,
    /// The device is not a member of the workspace (removed, left, never admitted).
    NotAMember = 3,
    /// The relay does not serve this workspace (unknown and new ones are not accepted).
    UnknownWorkspace = 4,
    /// A limit was reached (connections, rate, queue, frame size).
    Limit = 5,
    /// The peer went silent past the heartbeat deadline.
    Timeout = 6,
    /// The relay is shutting down.
    Shutdown = 7,
    /// The protocol version is not spoken by this side.
    Version = 8,
    /// The relay failed on its side (storage unavailable).
    Internal = 9,
}

impl RefuseCode {
    fn from_u64(v: u64) -> Option<Self> {
        use RefuseCode::*;
        Some(match v {
            1 => Protocol,
            2 => BadAuth,
            3 => NotAMember,
            4 => UnknownWorkspace,
            5 => Limit,
            6 => Timeout,
            7 => Shutdown,
            8 => Version,
            9 => Internal,
            _ => return None,
        })
    }
}

/// A request from the client (device) to the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The relay's cursors for the workspace.
    Cursors,
    /// Entries of `origin` from `from` on (a page ending on a seal).
    Read {
        /// The origin.
        origin: PeerId,
        /// The first index wanted.
        from: u64,
    },
    /// Store these entries of `origin` (ascending, ending on a seal).
    Push {
        /// The origin.
        origin: PeerId,
        /// The entries.
        entries: Vec<Entry>,
    },
}

/// The relay's answer to one [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Answer to [`Request::Cursors`].
    Cursors(PeerCursors),
    /// Answer to [`Request::Read`]; empty when the relay holds nothing there.
    Entries(Vec<Entry>),
    /// Answer to [`Request::Push`]: stored durably; the relay's cursor is now `next`.
    Stored {
        /// Entries new to the relay.
        new: u64,
        /// Entries it already had.
        duplicates: u64,
        /// Its cursor for the origin afterwards.
        next: u64,
    },
    /// Answer to [`Request::Push`]: the relay stored up to `next` and would not take the
    /// entry at `next` (the origin stalls there for this relay).
    Stalled {
        /// The relay's cursor for the origin afterwards.
        next: u64,
        /// Why, in words.
        reason: String,
    },
    /// The request was not served.
    Error {
        /// Why (a [`RefuseCode`]).
        code: RefuseCode,
        /// In words.
        message: String,
    },
}

/// One protocol message (`docs/PROTOCOL.md` §2 gives each one's bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Relay → device, first: who the relay is and what to sign.
    Hello {
        /// The relay's protocol version.
        version: u8,
        /// The relay deployment's id.
        relay: RelayId,
        /// Fresh random bytes for this connection.
        challenge: [u8; 32],
        /// The largest frame the relay accepts, in bytes.
        max_frame: u64,
    },
    /// Device → relay: who it is, proven by a signature over the challenge.
    Auth {
        /// The device's protocol version.
        version: u8,
        /// The workspace it syncs.
        workspace: WorkspaceId,
        /// Its signing key for that workspace (its peer id derives from it).
        key: PublicKey,
        /// Signature of [`crate::auth::auth_message`].
        signature: [u8; 64],
    },
    /// Relay → device: authenticated; what it may do and what the relay holds.
    Welcome {
        /// Member or entrant.
        access: Access,
        /// The relay's cursors for the workspace.
        cursors: PeerCursors,
    },
    /// Relay → device: refused; the relay closes the connection after it.
    Refused {
        /// Why.
        code: RefuseCode,
        /// In words, naming the peer.
        message: String,
    },
    /// Device → relay.
    Request {
        /// Chosen by the device, echoed in the response.
        id: u64,
        /// What is asked.
        request: Request,
    },
    /// Relay → device.
    Response {
        /// The request's id.
        id: u64,
        /// The answer.
        response: Response,
    },
    /// Relay → device: origins the relay's store advanced, at their new positions (a hint;
    /// the device's next pass diffs cursors).
    Advanced(PeerCursors),
    /// Device → relay, after each pass: the device's own cursors (what it holds), so the
    /// relay can tell how far behind its devices are (the `lag` metric). A notice: no
    /// response; never trusted for anything else.
    Position(PeerCursors),
    /// Either side: are you there?
    Ping(u64),
    /// Either side: the answer to a [`Frame::Ping`] with the same nonce.
    Pong(u64),
}

mod tag {
    pub const HELLO: u8 = 1;
    pub const AUTH: u8 = 2;
    pub const WELCOME: u8 = 3;
    pub const REFUSED: u8 = 4;
    pub const REQUEST: u8 = 5;
    pub const RESPONSE: u8 = 6;
    pub const ADVANCED: u8 = 7;
    pub const PING: u8 = 8;
    pub const PONG: u8 = 9;
    pub const POSITION: u8 = 10;

    pub const REQ_CURSORS: u8 = 1;
    pub const REQ_READ: u8 = 2;
    pub const REQ_PUSH: u8 = 3;

    pub const RES_CURSORS: u8 = 1;
    pub const RES_ENTRIES: u8 = 2;
    pub const RES_STORED: u8 = 3;
    pub const RES_STALLED: u8 = 4;
    pub const RES_ERROR: u8 = 5;
}

fn put_cursors(out: &mut Vec<u8>, c: &PeerCursors) {
    // Position 0 is "absent": never listed (the decoder refuses it).
    put_varint(out, c.iter().filter(|(_, next)| *next > 0).count() as u64);
    for (origin, next) in c.iter().filter(|(_, next)| *next > 0) {
        out.extend_from_slice(origin.as_bytes());
        put_varint(out, next);
    }
}

fn put_entries(out: &mut Vec<u8>, entries: &[Entry]) {
    put_varint(out, entries.len() as u64);
    for e in entries {
        put_bytes(out, &e.to_bytes());
    }
}

fn put_text(out: &mut Vec<u8>, s: &str) {
    // Texts are ours (refusals, errors); a longer one is cut at a char boundary.
    let mut end = s.len().min(MAX_TEXT as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    put_bytes(out, &s.as_bytes()[..end]);
}

impl Encode for Frame {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Frame::Hello { version, relay, challenge, max_frame } => {
                out.push(tag::HELLO);
                out.push(*version);
                out.extend_from_slice(&relay.0);
                out.extend_from_slice(challenge);
                put_varint(out, *max_frame);
            }
            Frame::Auth { version, workspace, key, signature } => {
                out.push(tag::AUTH);
                out.push(*version);
                out.extend_from_slice(workspace.as_bytes());
                out.extend_from_slice(key.as_bytes());
                out.extend_from_slice(signature);
            }
            Frame::Welcome { access, cursors } => {
                out.push(tag::WELCOME);
                out.push(match access {
                    Access::Member => 0,
                    Access::Entrant => 1,
                });
                put_cursors(out, cursors);
            }
            Frame::Refused { code, message } => {
                out.push(tag::REFUSED);
                put_varint(out, *code as u64);
                put_text(out, message);
            }
            Frame::Request { id, request } => {
                out.push(tag::REQUEST);
                put_varint(out, *id);
                match request {
                    Request::Cursors => out.push(tag::REQ_CURSORS),
                    Request::Read { origin, from } => {
                        out.push(tag::REQ_READ);
                        out.extend_from_slice(origin.as_bytes());
                        put_varint(out, *from);
                    }
                    Request::Push { origin, entries } => {
                        out.push(tag::REQ_PUSH);
                        out.extend_from_slice(origin.as_bytes());
                        put_entries(out, entries);
                    }
                }
            }
            Frame::Response { id, response } => {
                out.push(tag::RESPONSE);
                put_varint(out, *id);
                match response {
                    Response::Cursors(c) => {
                        out.push(tag::RES_CURSORS);
                        put_cursors(out, c);
                    }
                    Response::Entries(entries) => {
                        out.push(tag::RES_ENTRIES);
                        put_entries(out, entries);
                    }
                    Response::Stored { new, duplicates, next } => {
                        out.push(tag::RES_STORED);
                        put_varint(out, *new);
                        put_varint(out, *duplicates);
                        put_varint(out, *next);
                    }
                    Response::Stalled { next, reason } => {
                        out.push(tag::RES_STALLED);
                        put_varint(out, *next);
                        put_text(out, reason);
                    }
                    Response::Error { code, message } => {
                        out.push(tag::RES_ERROR);
                        put_varint(out, *code as u64);
                        put_text(out, message);
                    }
                }
            }
            Frame::Advanced(c) => {
                out.push(tag::ADVANCED);
                put_cursors(out, c);
            }
            Frame::Position(c) => {
                out.push(tag::POSITION);
                put_cursors(out, c);
            }
            Frame::Ping(n) => {
                out.push(tag::PING);
                out.extend_from_slice(&n.to_le_bytes());
            }
            Frame::Pong(n) => {
                out.push(tag::PONG);
                out.extend_from_slice(&n.to_le_bytes());
            }
        }
    }
}

fn read_cursors(r: &mut Reader<'_>) -> Result<PeerCursors, DecodeError> {
    let n = r.bounded_varint("cursor count", MAX_CURSORS)?;
    let mut c = PeerCursors::new();
    let mut last: Option<PeerId> = None;
    for _ in 0..n {
        let origin = PeerId::from_bytes(r.array("cursor origin")?);
        // Ascending and distinct: one canonical encoding per cursor list.
        if last.is_some_and(|l| l >= origin) {
            return Err(r.error(DecodeProblem::Invalid("cursor origins not strictly ascending")));
        }
        last = Some(origin);
        let next = r.varint("cursor position")?;
        if next == 0 {
            return Err(r.error(DecodeProblem::Invalid("cursor position 0 is never listed")));
        }
        c.advance(origin, next);
    }
    Ok(c)
}

fn read_entries(r: &mut Reader<'_>, origin: Option<PeerId>) -> Result<Vec<Entry>, DecodeError> {
    let n = r.bounded_varint("entry count", MAX_ENTRIES_PER_FRAME)?;
    // Every entry takes at least a length byte: never reserve more than the bytes left.
    let mut entries = Vec::with_capacity(n.min(r.remaining()));
    for _ in 0..n {
        let len = r.bounded_varint("entry length", r.remaining() as u64)?;
        let mut sub = r.sub(len, "entry")?;
        let e = Entry::read(&mut sub)?;
        sub.finish()?;
        if origin.is_some_and(|o| o != e.origin) {
            return Err(r.error(DecodeProblem::Invalid("pushed entry of another origin")));
        }
        entries.push(e);
    }
    Ok(entries)
}

fn read_text(r: &mut Reader<'_>) -> Result<String, DecodeError> {
    let at = r.offset();
    let bytes = r.bytes("text", MAX_TEXT)?;
    String::from_utf8(bytes.to_vec())
        .map_err(|_| DecodeError { offset: at, what: DecodeProblem::Invalid("text is not UTF-8") })
}

fn read_code(r: &mut Reader<'_>) -> Result<RefuseCode, DecodeError> {
    let v = r.varint("refusal code")?;
    RefuseCode::from_u64(v)
        .ok_or_else(|| r.error(DecodeProblem::InvalidTag { what: "refusal code", value: v }))
}

impl Frame {
    /// Decodes one frame from untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Frame, DecodeError> {
        let mut r = Reader::new(bytes);
        let frame = Frame::read(&mut r)?;
        r.finish()?;
        Ok(frame)
    }

    fn read(r: &mut Reader<'_>) -> Result<Frame, DecodeError> {
        let t = r.u8("frame tag")?;
        Ok(match t {
            tag::HELLO => Frame::Hello {
                version: r.u8("version")?,
                relay: RelayId(r.array("relay id")?),
                challenge: r.array("challenge")?,
                max_frame: r.varint("max frame")?,
            },
            tag::AUTH => {
                let version = r.u8("version")?;
                let workspace = WorkspaceId::from_bytes(r.array("workspace")?);
                let at = r.offset();
                let key = PublicKey::from_bytes(&r.array("key")?).map_err(|_| DecodeError {
                    offset: at,
                    what: DecodeProblem::Invalid("key is not an Ed25519 public key"),
                })?;
                Frame::Auth { version, workspace, key, signature: r.array("signature")? }
            }
            tag::WELCOME => {
                let access = match r.u8("access")? {
                    0 => Access::Member,
                    1 => Access::Entrant,
                    v => {
                        return Err(
                            r.error(DecodeProblem::InvalidTag { what: "access", value: v.into() })
                        );
                    }
                };
                Frame::Welcome { access, cursors: read_cursors(r)? }
            }
            tag::REFUSED => Frame::Refused { code: read_code(r)?, message: read_text(r)? },
            tag::REQUEST => {
                let id = r.varint("request id")?;
                let request = match r.u8("request kind")? {
                    tag::REQ_CURSORS => Request::Cursors,
                    tag::REQ_READ => Request::Read {
                        origin: PeerId::from_bytes(r.array("origin")?),
                        from: r.varint("from")?,
                    },
                    tag::REQ_PUSH => {
                        let origin = PeerId::from_bytes(r.array("origin")?);
                        Request::Push { origin, entries: read_entries(r, Some(origin))? }
                    }
                    v => {
                        return Err(r.error(DecodeProblem::InvalidTag {
                            what: "request kind",
                            value: v.into(),
                        }));
                    }
                };
                Frame::Request { id, request }
            }
            tag::RESPONSE => {
                let id = r.varint("response id")?;
                let response = match r.u8("response kind")? {
                    tag::RES_CURSORS => Response::Cursors(read_cursors(r)?),
                    tag::RES_ENTRIES => Response::Entries(read_entries(r, None)?),
                    tag::RES_STORED => Response::Stored {
                        new: r.varint("new")?,
                        duplicates: r.varint("duplicates")?,
                        next: r.varint("next")?,
                    },
                    tag::RES_STALLED => {
                        Response::Stalled { next: r.varint("next")?, reason: read_text(r)? }
                    }
                    tag::RES_ERROR => {
                        Response::Error { code: read_code(r)?, message: read_text(r)? }
                    }
                    v => {
                        return Err(r.error(DecodeProblem::InvalidTag {
                            what: "response kind",
                            value: v.into(),
                        }));
                    }
                };
                Frame::Response { id, response }
            }
            tag::ADVANCED => Frame::Advanced(read_cursors(r)?),
            tag::POSITION => Frame::Position(read_cursors(r)?),
            tag::PING => Frame::Ping(r.u64_le("nonce")?),
            tag::PONG => Frame::Pong(r.u64_le("nonce")?),
            v => {
                return Err(
                    r.error(DecodeProblem::InvalidTag { what: "frame tag", value: v.into() })
                );
            }
        })
    }

    /// The frame's name, for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "hello",
            Frame::Auth { .. } => "auth",
            Frame::Welcome { .. } => "welcome",
            Frame::Refused { .. } => "refused",
            Frame::Request { .. } => "request",
            Frame::Response { .. } => "response",
            Frame::Advanced(_) => "advanced",
            Frame::Position(_) => "position",
            Frame::Ping(_) => "ping",
            Frame::Pong(_) => "pong",
        }
    }
}
