//! The segment file format (`docs/FORMAT.md` §4): one immutable file holding a contiguous,
//! sealed run of one origin's log.
//!
//! Owns: [`Segment`] (a verified run of entries with its signed head), its byte form
//! ([`Segment::encode`], [`Segment::decode`]), the cheap tip check ([`SegmentTip::check`]:
//! envelope, checksum and signed head without decompressing), and [`SegmentProblem`], the
//! exact reason a file is refused.
//!
//! Invariants:
//! - A [`Segment`] value is always verified: [`Segment::new`] and [`Segment::decode`] are
//!   the only ways to make one, and both check the chain from the start position through
//!   every entry and that the signed head (one signature) authenticates the last entry. The
//!   signatures of interior seals are the ingest pipeline's to check when a replica takes
//!   the entries (one per run it is given), so no entry's signature is checked twice.
//! - A segment keeps the head and the seals that end each `MAX_SEAL_GAP`-aligned block of
//!   the log, no others: a reader's pages can end on a seal, and a log of small entries
//!   costs 64 bytes of signature per block, not per entry.
//! - Decoding checks, in order: magic, version, flags, lengths, checksum, the header against
//!   the directory and file name it was found under, the head signature, the body, the
//!   chain and seals. Every accepted byte string re-encodes to the same body bytes: varints
//!   are canonical, flags have no unknown bits, nothing trails.
//! - Every length is capped ([`MAX_BODY_BYTES`], [`MAX_SEGMENT_ENTRIES`], the core's op caps)
//!   before anything is allocated; decompression stops at the declared raw length.
//!
//! Never: panics on any input, touches the file system, or signs anything (seals come from
//! the origin's own log, [`shoal_core::OwnLog`]).

use std::io::Read;

use shoal_core::Hlc;
use shoal_core::codec::{DecodeError, DecodeProblem, Reader, put_signed_varint};
use shoal_core::{
    ChainHash, ChainPosition, Entry, EntryBody, EntryHash, MAX_SEAL_GAP, PeerId, PublicKey,
    RejectReason, Seal, SignedHead, SyncError, WorkspaceId, chain_through,
};

use crate::layout::SegmentName;

/// The first 8 bytes of every segment: a byte with the high bit set (catches 7-bit
/// transfers), the name, and CR LF (catches newline conversion).
pub const MAGIC: [u8; 8] = [0x89, b'S', b'H', b'O', b'A', b'L', b'\r', b'\n'];
/// The segment format version this code writes and reads.
pub const FORMAT_VERSION: u8 = 2;
/// Flag bit 0: the body is one zstd frame.
pub const FLAG_ZSTD: u8 = 0b01;
/// Flag bit 1: the body is encrypted. Reserved; this version neither writes nor reads it.
pub const FLAG_ENCRYPTED: u8 = 0b10;
/// Bytes before the body.
pub const HEADER_LEN: usize = 130;
/// Bytes after the body: head chain (32), head signature (64), checksum (32).
pub const TRAILER_LEN: usize = 128;
/// The largest body, raw or stored.
pub const MAX_BODY_BYTES: u32 = 256 << 20;
/// The most entries one segment may hold.
pub const MAX_SEGMENT_ENTRIES: u64 = 1 << 20;
/// The largest zstd window a reader accepts (log2: 16 MiB). Writers use far smaller ones;
/// the cap bounds what a crafted frame can make a reader allocate.
pub const MAX_ZSTD_WINDOW_LOG: u32 = 24;

const CHECKSUM_CONTEXT: &str = "shoal 2026-11 segment checksum v1";

/// How a segment's body is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// The raw body.
    None,
    /// One zstd frame at this level (1..=22; 3 is a good default).
    Zstd {
        /// zstd compression level.
        level: i32,
    },
}

/// What the directory and file name a segment was found under say it must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// The workspace directory it sits in.
    pub workspace: WorkspaceId,
    /// The origin directory it sits in.
    pub origin: PeerId,
    /// The range its file name claims (`None` when checking bytes that have no name).
    pub name: Option<SegmentName>,
}

/// Why a segment's bytes were refused. Each variant is one rule of `docs/FORMAT.md` §4.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SegmentProblem {
    /// The file does not start with [`MAGIC`]: not a segment at all.
    #[error("not a Shoal segment (bad magic bytes)")]
    BadMagic,
    /// The body's zstd frame is invalid, or decompresses to another length than declared.
    #[error("the compressed body is invalid: {0}")]
    Decompress(String),
    /// A structural rule of the envelope was broken (truncated file, size over a cap,
    /// trailing bytes…). Offsets count from the start of the file.
    #[error("{0}")]
    Envelope(DecodeError),
    /// A structural rule of the (decompressed) body was broken. Offsets count from the start
    /// of the decompressed body.
    #[error("in the body: {0}")]
    Body(DecodeError),
    /// The checksum does not match: the file was damaged, or is still being written or
    /// downloaded.
    #[error("checksum mismatch: the file is damaged or incomplete")]
    ChecksumMismatch,
    /// The body is encrypted, which this version cannot read.
    #[error("the segment is encrypted, which this version of Shoal cannot read")]
    Encrypted,
    /// The entries do not lead to the chain the head signs.
    #[error("the entries do not match the signed head")]
    HeadMismatch,
    /// An entry's seal (or the head) failed authentication.
    #[error("entry {index}: {reason}")]
    Rejected {
        /// The index of the refused entry (the last one for the head).
        index: u64,
        /// Why.
        reason: RejectReason,
    },
    /// Flag bits this version does not define are set.
    #[error("unknown segment flags {flags:#04x}")]
    UnknownFlags {
        /// The flags byte.
        flags: u8,
    },
    /// A newer format version: this Shoal must be upgraded to read it.
    #[error(
        "segment format version {version} is newer than this Shoal reads ({FORMAT_VERSION}); upgrade Shoal"
    )]
    UnsupportedVersion {
        /// The version byte found.
        version: u8,
    },
    /// An older format version, whose entries were hashed and signed under entry format 1:
    /// the device that wrote it must upgrade Shoal and publish its log again.
    #[error(
        "segment format version {version} was written by an earlier Shoal (this one reads {FORMAT_VERSION}); the device that wrote it must upgrade and publish again"
    )]
    OlderVersion {
        /// The version byte found.
        version: u8,
    },
    /// The header names another origin than the directory the file sits in.
    #[error("the segment is of origin {found}, but sits in the directory of origin {expected}")]
    WrongOrigin {
        /// The directory's origin.
        expected: PeerId,
        /// The header's origin.
        found: PeerId,
    },
    /// The header's index range differs from the file name's.
    #[error("the file name says entries {expected:?}, the header says {found:?}")]
    WrongRange {
        /// From the file name.
        expected: (u64, u64),
        /// From the header.
        found: (u64, u64),
    },
    /// The header names another workspace than the directory the file sits in.
    #[error(
        "the segment is of workspace {found}, but sits in the directory of workspace {expected}"
    )]
    WrongWorkspace {
        /// The directory's workspace.
        expected: WorkspaceId,
        /// The header's workspace.
        found: WorkspaceId,
    },
}

impl SegmentProblem {
    /// The same problem as a [`SyncError::Malformed`] naming the file, for the sync traits.
    /// (Every file problem stalls only the origin it belongs to.)
    pub fn into_sync_error(self, path: &str) -> SyncError {
        let at = |offset: usize, what: DecodeProblem| DecodeError { offset, what };
        let (what, problem) = match self {
            SegmentProblem::Envelope(e) => ("segment", e),
            SegmentProblem::Body(e) => ("segment body", e),
            SegmentProblem::BadMagic => {
                ("segment", at(0, DecodeProblem::Invalid("not a Shoal segment (bad magic)")))
            }
            SegmentProblem::OlderVersion { version } => (
                "segment",
                at(
                    8,
                    DecodeProblem::InvalidTag {
                        what: "format version (written by an earlier Shoal; its device must upgrade and publish again)",
                        value: version.into(),
                    },
                ),
            ),
            SegmentProblem::UnsupportedVersion { version } => (
                "segment",
                at(
                    8,
                    DecodeProblem::InvalidTag {
                        what: "format version (written by a newer Shoal?)",
                        value: version.into(),
                    },
                ),
            ),
            SegmentProblem::Encrypted => {
                ("segment", at(9, DecodeProblem::Invalid("encrypted segments are not supported")))
            }
            SegmentProblem::UnknownFlags { flags } => (
                "segment",
                at(9, DecodeProblem::InvalidTag { what: "segment flags", value: flags.into() }),
            ),
            SegmentProblem::ChecksumMismatch => (
                "segment",
                at(0, DecodeProblem::Invalid("checksum mismatch: damaged or incomplete file")),
            ),
            SegmentProblem::WrongWorkspace { .. } => (
                "segment",
                at(10, DecodeProblem::Invalid("belongs to another workspace than its directory")),
            ),
            SegmentProblem::WrongOrigin { .. } => (
                "segment",
                at(26, DecodeProblem::Invalid("belongs to another origin than its directory")),
            ),
            SegmentProblem::WrongRange { .. } => (
                "segment",
                at(42, DecodeProblem::Invalid("header index range differs from the file name")),
            ),
            SegmentProblem::Decompress(_) => (
                "segment",
                at(HEADER_LEN, DecodeProblem::Invalid("compressed body does not decompress")),
            ),
            SegmentProblem::HeadMismatch => {
                ("segment", at(0, DecodeProblem::Invalid("entries do not match the signed head")))
            }
            SegmentProblem::Rejected { reason, .. } => (
                "segment",
                at(
                    0,
                    DecodeProblem::Invalid(match reason {
                        RejectReason::KeyNotOfOrigin => {
                            "signed by a key that is not the origin's (forged or transplanted)"
                        }
                        RejectReason::UnsealedRunTooLong => "too many entries without a seal",
                        _ => "a signature does not match the entries (tampered or forged)",
                    }),
                ),
            ),
        };
        SyncError::Malformed { source_name: path.to_owned(), what, problem }
    }
}

/// The envelope of a segment, checked without decompressing its body: the header matches
/// the directory and name, the checksum holds, and the head is signed by the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentTip {
    /// The range.
    pub name: SegmentName,
    /// The chain position before the first entry.
    pub start: ChainPosition,
    /// The signed head after the last entry (verified).
    pub head: SignedHead,
    /// Length of the body once decompressed.
    pub raw_len: u32,
    /// Length of the body as stored.
    pub stored_len: u32,
}

impl SegmentTip {
    /// Checks a segment's envelope (everything but the body) and its head signature.
    pub fn check(bytes: &[u8], expected: &Expected) -> Result<SegmentTip, SegmentProblem> {
        Ok(read_envelope(bytes, expected)?.1)
    }
}

/// A verified, contiguous run of one origin's entries that ends on a seal, with the signed
/// head that authenticates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    workspace: WorkspaceId,
    start: ChainPosition,
    entries: Vec<Entry>,
    head: SignedHead,
    raw_len: usize,
}

impl Segment {
    /// A segment of the entries `entries` of one origin in `workspace`, continuing the log
    /// at `start`. They must start at `start.next`, be contiguous, chain from `start`, and end
    /// on a sealed entry whose seal verifies (one signature: it covers all of them).
    pub fn new(
        workspace: WorkspaceId,
        start: ChainPosition,
        entries: Vec<Entry>,
    ) -> Result<Segment, SyncError> {
        let Some(first) = entries.first() else {
            return Err(SyncError::Misuse("a segment needs at least one entry".into()));
        };
        let origin = first.origin;
        if first.index != start.next {
            return Err(SyncError::Gap { origin, expected: start.next, got: first.index });
        }
        if entries.len() as u64 > MAX_SEGMENT_ENTRIES {
            return Err(SyncError::Misuse(format!(
                "{} entries do not fit in one segment (at most {MAX_SEGMENT_ENTRIES})",
                entries.len()
            )));
        }
        let chain = chain_through(start, &entries).map_err(|(expected, got)| SyncError::Gap {
            origin,
            expected,
            got,
        })?;
        let last = &entries[entries.len() - 1];
        let Some(seal) = last.seal else {
            return Err(SyncError::Misuse(format!(
                "the last entry of a segment must be sealed ({origin}#{} is not)",
                last.index
            )));
        };
        let next = start.next + entries.len() as u64;
        if entries.iter().filter_map(|e| e.seal).any(|s| s.key != seal.key) {
            return Err(SyncError::Misuse(format!(
                "entries of {origin} are sealed by different keys; a segment holds one key"
            )));
        }
        let head = SignedHead { workspace, origin, next, chain, seal };
        head.verify().map_err(|reason| SyncError::Rejected {
            origin,
            index: last.index,
            reason,
        })?;
        Self::assemble(workspace, start, entries, head)
    }

    /// Joins verified segments of one origin, in order, into one. Consecutive parts may
    /// overlap (entries already taken are skipped) but must not leave a gap, and where they
    /// overlap they must agree: the chain is recomputed through every entry and checked at
    /// every junction and against the last part's head.
    pub fn concat(parts: &[&Segment]) -> Result<Segment, SyncError> {
        let Some(p0) = parts.first() else {
            return Err(SyncError::Misuse("nothing to concatenate".into()));
        };
        let (workspace, origin) = (p0.workspace, p0.origin());
        let start = p0.start;
        let mut chain = start.chain;
        let mut next = start.next;
        let mut entries: Vec<Entry> = Vec::new();
        for p in parts {
            if p.workspace != workspace || p.origin() != origin {
                return Err(SyncError::Misuse("segments of different logs".into()));
            }
            if p.first() > next {
                return Err(SyncError::Gap { origin, expected: next, got: p.first() });
            }
            if p.last() < next {
                continue;
            }
            // The part's own chain up to `next` must be ours: two verified segments that
            // disagree mean the origin wrote two different logs.
            let skip = (next - p.first()) as usize;
            let mut theirs = p.start.chain;
            for e in &p.entries[..skip] {
                theirs = theirs.link(&e.hash());
            }
            if theirs != chain {
                return Err(SyncError::Rejected {
                    origin,
                    index: next,
                    reason: RejectReason::BadSignature,
                });
            }
            for e in &p.entries[skip..] {
                chain = chain.link(&e.hash());
                entries.push(e.clone());
            }
            next = p.last() + 1;
        }
        let head = parts[parts.len() - 1].head;
        if head.chain != chain || head.next != next {
            return Err(SyncError::Bug("concatenated chain does not reach the last head".into()));
        }
        if entries.len() as u64 > MAX_SEGMENT_ENTRIES {
            return Err(SyncError::Misuse("too many entries for one segment".into()));
        }
        Self::assemble(workspace, start, entries, head)
    }

    /// Builds a segment of entries that passed the ingest pipeline from `start` (a
    /// [`shoal_core::VerifiedRun`]): recomputes the chain (hashing only) but not the
    /// signatures.
    pub(crate) fn from_verified(
        workspace: WorkspaceId,
        start: ChainPosition,
        entries: Vec<Entry>,
    ) -> Result<Segment, SyncError> {
        let mut chain = start.chain;
        for e in &entries {
            chain = chain.link(&e.hash());
        }
        let (Some(first), Some(seal)) = (entries.first(), entries.last().and_then(|e| e.seal))
        else {
            return Err(SyncError::Bug("a verified run must be non-empty and end sealed".into()));
        };
        let head = SignedHead {
            workspace,
            origin: first.origin,
            next: start.next + entries.len() as u64,
            chain,
            seal,
        };
        Self::assemble(workspace, start, entries, head)
    }

    fn assemble(
        workspace: WorkspaceId,
        start: ChainPosition,
        mut entries: Vec<Entry>,
        head: SignedHead,
    ) -> Result<Segment, SyncError> {
        // A segment keeps only the seals a reader needs: the head, and one at the end of
        // every MAX_SEAL_GAP-aligned block so that pages of the log can end on a seal. The
        // head covers every entry; more seals would only cost 64 bytes each.
        let last = entries.len().saturating_sub(1);
        for (i, e) in entries.iter_mut().enumerate() {
            if i != last && !(e.index + 1).is_multiple_of(MAX_SEAL_GAP) {
                e.seal = None;
            }
        }
        let raw_len = body_len(&entries);
        if raw_len > MAX_BODY_BYTES as usize {
            return Err(SyncError::Misuse(format!(
                "entries {}..={} of {} take {raw_len} bytes, more than one segment holds ({MAX_BODY_BYTES})",
                start.next,
                head.next - 1,
                head.origin
            )));
        }
        Ok(Segment { workspace, start, entries, head, raw_len })
    }

    /// Decodes a segment's bytes and verifies them against where it was found: the
    /// envelope, the checksum, the head signature (one signature for the whole file), and
    /// that the chain through every entry reaches the head. The signatures of interior
    /// seals are left to the ingest pipeline, which checks the one that ends each run it is
    /// given.
    pub fn decode(bytes: &[u8], expected: &Expected) -> Result<Segment, SegmentProblem> {
        let (header, tip) = read_envelope(bytes, expected)?;
        // `read_envelope` checked that the file is exactly header + stored body + trailer.
        let stored = &bytes[HEADER_LEN..HEADER_LEN + tip.stored_len as usize];
        let decompressed;
        let raw = if header.flags & FLAG_ZSTD != 0 {
            decompressed = decompress(stored, tip.raw_len as usize)?;
            &decompressed[..]
        } else {
            stored
        };
        let entries = decode_body(raw, &header).map_err(SegmentProblem::Body)?;
        let last_seal = entries.last().and_then(|e| e.seal);
        let mut chain = tip.start.chain;
        let mut unsealed = 0u64;
        for e in &entries {
            chain = chain.link(&e.hash());
            unsealed = if e.seal.is_some() { 0 } else { unsealed + 1 };
            if unsealed >= MAX_SEAL_GAP {
                return Err(SegmentProblem::Rejected {
                    index: e.index,
                    reason: RejectReason::UnsealedRunTooLong,
                });
            }
        }
        if chain != tip.head.chain || last_seal != Some(tip.head.seal) {
            return Err(SegmentProblem::HeadMismatch);
        }
        Ok(Segment {
            workspace: header.workspace,
            start: tip.start,
            entries,
            head: tip.head,
            raw_len: raw.len(),
        })
    }

    /// The segment's bytes. Cannot fail: if zstd fails or would not fit the size cap, the
    /// body is stored raw (flag bit 0 clear), which every reader accepts.
    pub fn encode(&self, compression: Compression) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.raw_len);
        encode_body(&self.entries, &mut body);
        debug_assert_eq!(body.len(), self.raw_len);
        let compressed = match compression {
            Compression::None => None,
            Compression::Zstd { level } => zstd::bulk::compress(&body, level)
                .ok()
                .filter(|c| c.len() <= MAX_BODY_BYTES as usize),
        };
        let flags = if compressed.is_some() { FLAG_ZSTD } else { 0 };
        let stored = compressed.as_deref().unwrap_or(&body);
        let mut out = Vec::with_capacity(HEADER_LEN + stored.len() + TRAILER_LEN);
        out.extend_from_slice(&MAGIC);
        out.push(FORMAT_VERSION);
        out.push(flags);
        out.extend_from_slice(self.workspace.as_bytes());
        out.extend_from_slice(self.origin().as_bytes());
        out.extend_from_slice(&self.first().to_le_bytes());
        out.extend_from_slice(&self.last().to_le_bytes());
        out.extend_from_slice(&self.start.chain.0);
        out.extend_from_slice(self.head.seal.key.as_bytes());
        // Both lengths are at most MAX_BODY_BYTES (checked in `assemble` and above).
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&(stored.len() as u32).to_le_bytes());
        debug_assert_eq!(out.len(), HEADER_LEN);
        out.extend_from_slice(stored);
        out.extend_from_slice(&self.head.chain.0);
        out.extend_from_slice(&self.head.seal.signature);
        let checksum = checksum(&out);
        out.extend_from_slice(&checksum);
        out
    }

    /// The workspace.
    pub fn workspace(&self) -> WorkspaceId {
        self.workspace
    }

    /// The origin whose log this is.
    pub fn origin(&self) -> PeerId {
        self.head.origin
    }

    /// The index of the first entry.
    pub fn first(&self) -> u64 {
        self.start.next
    }

    /// The index of the last entry.
    pub fn last(&self) -> u64 {
        self.head.next - 1
    }

    /// The range as a file name spells it.
    pub fn name(&self) -> SegmentName {
        SegmentName { first: self.first(), last: self.last() }
    }

    /// The chain position before the first entry.
    pub fn start(&self) -> ChainPosition {
        self.start
    }

    /// The signed head after the last entry.
    pub fn head(&self) -> SignedHead {
        self.head
    }

    /// The entries, with their seals.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Takes the entries.
    pub fn into_entries(self) -> Vec<Entry> {
        self.entries
    }

    /// The length of the body before compression.
    pub fn raw_len(&self) -> usize {
        self.raw_len
    }
}

/// The total file length a segment's first [`HEADER_LEN`] bytes declare, when the magic,
/// version, flags and body length are acceptable; `None` otherwise (the decoder then says
/// what is wrong). Lets a reader read no more than the header declares, so a large
/// foreign file under a canonical name costs one header read.
pub fn declared_len(prefix: &[u8]) -> Option<u64> {
    let header = prefix.get(..HEADER_LEN)?;
    if header[..8] != MAGIC || header[8] != FORMAT_VERSION || header[9] & !FLAG_ZSTD != 0 {
        return None;
    }
    let stored = u32::from_le_bytes([header[126], header[127], header[128], header[129]]);
    (stored <= MAX_BODY_BYTES).then_some((HEADER_LEN + TRAILER_LEN) as u64 + u64::from(stored))
}

/// The blake3 checksum a segment ends with, over every byte before it.
pub fn checksum(bytes: &[u8]) -> [u8; 32] {
    *blake3::Hasher::new_derive_key(CHECKSUM_CONTEXT).update(bytes).finalize().as_bytes()
}

struct Header {
    flags: u8,
    workspace: WorkspaceId,
    origin: PeerId,
    key: PublicKey,
    first: u64,
    last: u64,
}

fn read_envelope(
    bytes: &[u8],
    expected: &Expected,
) -> Result<(Header, SegmentTip), SegmentProblem> {
    let envelope = SegmentProblem::Envelope;
    let mut r = Reader::new(bytes);
    match bytes.get(..MAGIC.len()) {
        Some(m) if m == MAGIC => {}
        // A file cut inside the magic is truncated, not foreign.
        None if MAGIC.starts_with(bytes) => {
            return Err(envelope(r.error(DecodeProblem::Truncated { reading: "segment magic" })));
        }
        _ => return Err(SegmentProblem::BadMagic),
    }
    r.take(MAGIC.len(), "segment magic").map_err(envelope)?;
    let version = r.u8("segment format version").map_err(envelope)?;
    if version < FORMAT_VERSION {
        return Err(SegmentProblem::OlderVersion { version });
    }
    if version != FORMAT_VERSION {
        return Err(SegmentProblem::UnsupportedVersion { version });
    }
    let flags = r.u8("segment flags").map_err(envelope)?;
    if flags & FLAG_ENCRYPTED != 0 {
        return Err(SegmentProblem::Encrypted);
    }
    if flags & !FLAG_ZSTD != 0 {
        return Err(SegmentProblem::UnknownFlags { flags });
    }
    let workspace = WorkspaceId::from_bytes(r.array("segment workspace").map_err(envelope)?);
    let origin = PeerId::from_bytes(r.array("segment origin").map_err(envelope)?);
    let first = r.u64_le("segment first index").map_err(envelope)?;
    let last = r.u64_le("segment last index").map_err(envelope)?;
    let prev_chain = ChainHash(r.array("segment previous chain hash").map_err(envelope)?);
    let key_at = r.offset();
    let key_bytes: [u8; 32] = r.array("segment origin key").map_err(envelope)?;
    let raw_len = read_len(&mut r, "segment raw body length")?;
    let stored_len = read_len(&mut r, "segment stored body length")?;
    if flags & FLAG_ZSTD == 0 && raw_len != stored_len {
        return Err(envelope(DecodeError {
            offset: HEADER_LEN - 4,
            what: DecodeProblem::Invalid("an uncompressed body must have equal lengths"),
        }));
    }
    let body_at = r.offset();
    r.take(stored_len as usize, "segment body").map_err(envelope)?;
    let head_chain = ChainHash(r.array("segment head chain").map_err(envelope)?);
    let signature: [u8; 64] = r.array("segment head signature").map_err(envelope)?;
    let sum_at = r.offset();
    let sum: [u8; 32] = r.array("segment checksum").map_err(envelope)?;
    r.finish().map_err(envelope)?;
    if checksum(&bytes[..sum_at]) != sum {
        return Err(SegmentProblem::ChecksumMismatch);
    }
    // The bytes are as written. Now: are they what this place in the folder should hold?
    if workspace != expected.workspace {
        return Err(SegmentProblem::WrongWorkspace {
            expected: expected.workspace,
            found: workspace,
        });
    }
    if origin != expected.origin {
        return Err(SegmentProblem::WrongOrigin { expected: expected.origin, found: origin });
    }
    if let Some(name) = expected.name
        && (name.first, name.last) != (first, last)
    {
        return Err(SegmentProblem::WrongRange {
            expected: (name.first, name.last),
            found: (first, last),
        });
    }
    if first > last || last - first >= MAX_SEGMENT_ENTRIES || last == u64::MAX {
        return Err(envelope(DecodeError {
            offset: 42,
            what: DecodeProblem::TooLarge {
                what: "segment index range",
                value: last.wrapping_sub(first).wrapping_add(1),
                limit: MAX_SEGMENT_ENTRIES,
            },
        }));
    }
    let key = PublicKey::from_bytes(&key_bytes).map_err(|_| {
        envelope(DecodeError {
            offset: key_at,
            what: DecodeProblem::Invalid("origin key is not an Ed25519 public key"),
        })
    })?;
    let head = SignedHead {
        workspace,
        origin,
        next: last + 1,
        chain: head_chain,
        seal: Seal { key, signature },
    };
    head.verify().map_err(|reason| SegmentProblem::Rejected { index: last, reason })?;
    debug_assert_eq!(body_at, HEADER_LEN);
    let tip = SegmentTip {
        name: SegmentName { first, last },
        start: ChainPosition { next: first, chain: prev_chain },
        head,
        raw_len,
        stored_len,
    };
    Ok((Header { flags, workspace, origin, key, first, last }, tip))
}

fn read_len(r: &mut Reader<'_>, what: &'static str) -> Result<u32, SegmentProblem> {
    let at = r.offset();
    let v = r.u32_le(what).map_err(SegmentProblem::Envelope)?;
    if v > MAX_BODY_BYTES {
        return Err(SegmentProblem::Envelope(DecodeError {
            offset: at,
            what: DecodeProblem::TooLarge { what, value: v.into(), limit: MAX_BODY_BYTES.into() },
        }));
    }
    Ok(v)
}

fn decompress(stored: &[u8], raw_len: usize) -> Result<Vec<u8>, SegmentProblem> {
    let problem = |e: std::io::Error| SegmentProblem::Decompress(e.to_string());
    let mut decoder = zstd::stream::read::Decoder::with_buffer(stored).map_err(problem)?;
    decoder.window_log_max(MAX_ZSTD_WINDOW_LOG).map_err(problem)?;
    let mut decoder = decoder.single_frame();
    // Reserve the declared length up to one full segment (so a normal segment decompresses
    // without a chain of reallocations, which fragments the heap), grow with the data
    // actually produced beyond that, and stop one byte past the declared length.
    let mut out = Vec::with_capacity(raw_len.min(16 << 20));
    (&mut decoder).take(raw_len as u64 + 1).read_to_end(&mut out).map_err(problem)?;
    if out.len() != raw_len {
        return Err(SegmentProblem::Decompress(format!(
            "it holds more or less than the {raw_len} bytes the header declares"
        )));
    }
    if !decoder.finish().is_empty() {
        return Err(SegmentProblem::Decompress("bytes follow the zstd frame".into()));
    }
    Ok(out)
}

const ENTRY_EXPUNGED: u8 = 0b01;
const ENTRY_SEALED: u8 = 0b10;
/// Bits 2–3 of an entry's flags: its stored class tag (`docs/FORMAT.md` §3.1).
const ENTRY_CLASS_SHIFT: u8 = 2;
const ENTRY_CLASS_MASK: u8 = 0b1100;

fn encode_body(entries: &[Entry], out: &mut Vec<u8>) {
    let mut prev_hlc = 0u64;
    for e in entries {
        let class = match e.body.stored_tag() {
            None => ENTRY_EXPUNGED,
            Some(tag) => tag << ENTRY_CLASS_SHIFT,
        };
        out.push(class | if e.seal.is_some() { ENTRY_SEALED } else { 0 });
        match (&e.body, e.body.hlc()) {
            (EntryBody::Expunged(h), _) => out.extend_from_slice(&h.0),
            (body, hlc) => {
                let hlc = hlc.map_or(0, |h| h.as_u64());
                // Wrapping difference read as signed: a bijection on u64, so every value has
                // exactly one encoding, and close timestamps take a byte or two.
                put_signed_varint(out, hlc.wrapping_sub(prev_hlc) as i64);
                prev_hlc = hlc;
                body.encode_after_hlc(out);
            }
        }
        if let Some(seal) = &e.seal {
            out.extend_from_slice(&seal.signature);
        }
    }
}

/// About how many body bytes an entry takes (for cutting runs into segments).
pub(crate) fn approx_entry_len(e: &Entry) -> usize {
    body_len(std::slice::from_ref(e))
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn body_len(entries: &[Entry]) -> usize {
    let mut prev_hlc = 0u64;
    let mut n = 0;
    for e in entries {
        n += 1;
        match &e.body {
            EntryBody::Expunged(_) => n += 32,
            EntryBody::Live(p) => {
                let hlc = p.hlc.as_u64();
                let delta = hlc.wrapping_sub(prev_hlc) as i64;
                n += varint_len(((delta << 1) ^ (delta >> 63)) as u64);
                prev_hlc = hlc;
                n += if p.author.is_some() { 17 } else { 1 };
                n += varint_len(p.ops.len() as u64);
                for op in &p.ops {
                    n += varint_len(op.domain.0.into()) + varint_len(op.kind.into());
                    n += varint_len(op.body.len() as u64) + op.body.len();
                }
            }
            EntryBody::Encrypted(c) => {
                let hlc = c.hlc.as_u64();
                let delta = hlc.wrapping_sub(prev_hlc) as i64;
                n += varint_len(((delta << 1) ^ (delta >> 63)) as u64);
                prev_hlc = hlc;
                n += varint_len(c.op_count) + varint_len(c.epoch.into()) + 24;
                n += varint_len(c.ciphertext.len() as u64) + c.ciphertext.len();
            }
        }
        if e.seal.is_some() {
            n += 64;
        }
    }
    n
}

fn decode_body(raw: &[u8], h: &Header) -> Result<Vec<Entry>, DecodeError> {
    let mut r = Reader::new(raw);
    // The header's range was capped at MAX_SEGMENT_ENTRIES; each entry takes at least 4
    // bytes, so the body bounds the allocation too.
    let count = h.last - h.first + 1;
    let mut entries = Vec::with_capacity((count as usize).min(raw.len() / 4 + 1));
    let mut prev_hlc = 0u64;
    for index in h.first..=h.last {
        let flags = r.u8("entry flags")?;
        let expunged = flags & ENTRY_EXPUNGED != 0;
        let unknown = flags & !(ENTRY_EXPUNGED | ENTRY_SEALED | ENTRY_CLASS_MASK) != 0;
        if unknown || (expunged && flags & ENTRY_CLASS_MASK != 0) {
            return Err(
                r.error(DecodeProblem::InvalidTag { what: "entry flags", value: flags.into() })
            );
        }
        let body = if expunged {
            EntryBody::Expunged(EntryHash(r.array("expunged entry hash")?))
        } else {
            let delta = r.signed_varint("hlc delta")?;
            let hlc = prev_hlc.wrapping_add(delta as u64);
            prev_hlc = hlc;
            let tag = (flags & ENTRY_CLASS_MASK) >> ENTRY_CLASS_SHIFT;
            EntryBody::read_after_hlc(&mut r, tag, Hlc::from_u64(hlc))?
        };
        let seal = if flags & ENTRY_SEALED != 0 {
            Some(Seal { key: h.key, signature: r.array("seal signature")? })
        } else {
            None
        };
        entries.push(Entry { origin: h.origin, index, body, seal });
    }
    let end = r.offset();
    r.finish()?;
    if entries.last().is_some_and(|e| e.seal.is_none()) {
        return Err(DecodeError {
            offset: end,
            what: DecodeProblem::Invalid("the last entry is not sealed"),
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use shoal_core::Payload;
    use shoal_core::{DeviceKey, OwnLog};
    use shoal_core::{Domain, Op, UserId};

    fn key() -> DeviceKey {
        DeviceKey::from_secret_bytes(&[5; 32])
    }

    fn ws() -> WorkspaceId {
        WorkspaceId::from_bytes([7; 16])
    }

    /// Entries written in transactions of the given sizes, some then expunged.
    fn log(batches: &[Vec<Payload>], expunge: &[usize]) -> Vec<Entry> {
        let k = key();
        let origin = k.peer_id(&ws());
        let mut own = OwnLog::resume(k, ws(), ChainPosition::start(&ws(), &origin));
        let mut out: Vec<Entry> = Vec::new();
        for b in batches {
            out.extend(own.append(b.clone()).into_iter().map(|(e, _)| e));
        }
        for &i in expunge {
            if let Some(e) = out.get_mut(i) {
                *e = e.expunged();
            }
        }
        out
    }

    fn expected(seg: &Segment) -> Expected {
        Expected { workspace: seg.workspace(), origin: seg.origin(), name: Some(seg.name()) }
    }

    fn arb_payload() -> impl Strategy<Value = Payload> {
        (
            any::<u64>(),
            proptest::option::of(any::<[u8; 16]>()),
            // Data entries: domains other than control (an entry never mixes the two).
            proptest::collection::vec(
                (1u32..4, any::<u32>(), proptest::collection::vec(any::<u8>(), 0..24)),
                0..4,
            ),
        )
            .prop_map(|(hlc, author, ops)| Payload {
                hlc: Hlc::from_u64(hlc),
                author: author.map(UserId::from_bytes),
                ops: ops
                    .into_iter()
                    .map(|(d, kind, body)| Op { domain: Domain(d), kind, body })
                    .collect(),
            })
    }

    fn arb_log() -> impl Strategy<Value = Vec<Entry>> {
        (
            proptest::collection::vec(proptest::collection::vec(arb_payload(), 1..4), 1..6),
            proptest::collection::vec(0usize..20, 0..3),
        )
            .prop_map(|(batches, expunge)| log(&batches, &expunge))
    }

    fn simple(n: usize) -> Vec<Entry> {
        let batches: Vec<Vec<Payload>> = (0..n)
            .map(|i| {
                vec![Payload {
                    hlc: Hlc::from_millis(1_000 + i as u64),
                    author: None,
                    ops: vec![Op { domain: Domain::TABLES, kind: 1, body: vec![i as u8; 8] }],
                }]
            })
            .collect();
        log(&batches, &[])
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn segments_round_trip(entries in arb_log(), zstd in any::<bool>()) {
            let origin = entries[0].origin;
            let seg = Segment::new(ws(), ChainPosition::start(&ws(), &origin), entries.clone()).unwrap();
            let mut body = Vec::new();
            encode_body(seg.entries(), &mut body);
            prop_assert_eq!(body.len(), seg.raw_len());
            let compression = if zstd { Compression::Zstd { level: 3 } } else { Compression::None };
            let bytes = seg.encode(compression);
            let back = Segment::decode(&bytes, &expected(&seg)).unwrap();
            let unsealed = |v: &[Entry]| v.iter().map(|e| Entry { seal: None, ..e.clone() }).collect::<Vec<_>>();
            prop_assert_eq!(unsealed(back.entries()), unsealed(&entries));
            // Only the head and block-aligned seals are kept.
            let last = entries.len() - 1;
            for (i, e) in back.entries().iter().enumerate() {
                let kept = i == last || (e.index + 1).is_multiple_of(MAX_SEAL_GAP);
                prop_assert_eq!(e.seal.is_some(), kept && entries[i].seal.is_some());
            }
            prop_assert_eq!(&back, &seg);
            prop_assert_eq!(&back.encode(compression), &bytes);
            let tip = SegmentTip::check(&bytes, &expected(&seg)).unwrap();
            prop_assert_eq!(tip.head, seg.head());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let exp = Expected { workspace: ws(), origin: key().peer_id(&ws()), name: None };
            let _ = Segment::decode(&bytes, &exp);
            let _ = SegmentTip::check(&bytes, &exp);
        }

        /// Random bodies behind a valid envelope and checksum reach the body decoder (and
        /// the decompressor), which must refuse them cleanly.
        #[test]
        fn arbitrary_bodies_behind_a_valid_envelope_never_panic(
            body in proptest::collection::vec(any::<u8>(), 0..300),
            zstd_flag in any::<bool>(),
            raw_len in 0u32..2000,
        ) {
            let seg = Segment::new(ws(), ChainPosition::start(&ws(), &key().peer_id(&ws())), simple(3)).unwrap();
            let good = seg.encode(Compression::None);
            let mut bytes = good[..HEADER_LEN].to_vec();
            bytes[9] = if zstd_flag { FLAG_ZSTD } else { 0 };
            let raw_len = if zstd_flag { raw_len } else { body.len() as u32 };
            bytes[122..126].copy_from_slice(&raw_len.to_le_bytes());
            bytes[126..130].copy_from_slice(&(body.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&body);
            bytes.extend_from_slice(&good[good.len() - TRAILER_LEN..good.len() - 32]);
            let sum = checksum(&bytes);
            bytes.extend_from_slice(&sum);
            let result = Segment::decode(&bytes, &expected(&seg));
            if let Ok(back) = result {
                prop_assert_eq!(back.entries(), seg.entries());
            }
        }
    }

    #[test]
    fn segments_must_end_sealed_and_continue_the_chain() {
        let entries = log(
            &[(0..3)
                .map(|i| Payload { hlc: Hlc::from_millis(i), author: None, ops: vec![] })
                .collect()],
            &[],
        );
        let origin = entries[0].origin;
        let start = ChainPosition::start(&ws(), &origin);
        assert!(matches!(
            Segment::new(ws(), start, entries[..2].to_vec()),
            Err(SyncError::Misuse(_))
        ));
        assert!(matches!(
            Segment::new(ws(), start, entries[1..].to_vec()),
            Err(SyncError::Gap { expected: 0, got: 1, .. })
        ));
        let other = WorkspaceId::from_bytes([1; 16]);
        assert!(matches!(
            Segment::new(other, ChainPosition::start(&other, &origin), entries.clone()),
            Err(SyncError::Rejected { .. })
        ));
        assert!(Segment::new(ws(), start, entries).is_ok());
    }

    #[test]
    fn concat_joins_overlapping_parts_and_refuses_gaps() {
        let entries = simple(10);
        let origin = entries[0].origin;
        let seed = ChainPosition::start(&ws(), &origin);
        let whole = Segment::new(ws(), seed, entries.clone()).unwrap();
        let at = |i: usize| {
            let mut c = seed.chain;
            for e in &entries[..i] {
                c = c.link(&e.hash());
            }
            ChainPosition { next: i as u64, chain: c }
        };
        let part = |a: usize, b: usize| Segment::new(ws(), at(a), entries[a..b].to_vec()).unwrap();
        let (p1, p2, p3) = (part(0, 4), part(2, 7), part(7, 10));
        assert_eq!(Segment::concat(&[&p1, &p2, &p3]).unwrap(), whole);
        assert!(matches!(
            Segment::concat(&[&p1, &p3]),
            Err(SyncError::Gap { expected: 4, got: 7, .. })
        ));
    }

    #[test]
    fn head_only_check_still_catches_a_changed_entry() {
        let entries = simple(4);
        let origin = entries[0].origin;
        let seg = Segment::new(ws(), ChainPosition::start(&ws(), &origin), entries).unwrap();
        let mut bytes = seg.encode(Compression::None);
        // Flip a bit in the first op body (raw body: flags, hlc delta (8 bytes: ~2^42 zigzag
        // takes 7), author, count, domain, kind, len, body…) and fix the checksum.
        let target = HEADER_LEN + 14;
        bytes[target] ^= 0x01;
        let n = bytes.len();
        let sum = checksum(&bytes[..n - 32]);
        bytes[n - 32..].copy_from_slice(&sum);
        let exp = expected(&seg);
        assert!(Segment::decode(&bytes, &exp).is_err());
    }
}
