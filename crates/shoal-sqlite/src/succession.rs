//! Successors: an origin that takes over from an older origin of the same owner, and what
//! every replica does about it (DESIGN §5 "HLC", §8 "Forks"; `docs/ARCHITECTURE.md`
//! "Wrong clocks").
//!
//! Owns: the `shoal_successors` table (predecessor, successor, cut), recording successor
//! ops when their entry is applied, the supersession rule every replica follows, the clock
//! state recomputed without superseded entries, and [`SqliteReplica::succeed`], by which
//! this device hands its log over to a new key (the clock recovery; fork recovery reuses
//! it).
//!
//! The rule: once a replica has applied a [`ControlOp::Successor`] naming predecessor `P`
//! with cut `c`, entries of `P` at index `>= c` are *superseded*: received without judging
//! their clock skew, stored and forwarded, never applied, never observed by the clock, and
//! not a stall (status shows them as superseded). Entries of `P` below `c` stay applied. If
//! this replica had already applied entries of `P` at or past `c` (the device itself, or a
//! receiver whose wall clock was as wrong), its materialized state is rebuilt from the oplog
//! without them, and its clock state recomputed. So the outcome does not depend on whether
//! the successor's entry arrives before or after the predecessor's superseded entries, and
//! applying the op again changes nothing. Two successors of one predecessor (only its key's
//! owner can make one) supersede from the lesser cut.
//!
//! Invariants: the record is written in the transaction that applies the successor's entry;
//! a rebuild starts in one transaction (domain state reset, every origin's `materialized`
//! set to 0, clock recomputed) and is finished by re-materializing from the oplog, which an
//! interrupted rebuild resumes on the next open. A key handed over is written as
//! `<file>.key.next` before the transaction that records the new public key, and moved over
//! `<file>.key` after it: an open finishes or drops a half-done hand-over.
//!
//! Never: judges membership (the security work adds who may name a successor: today
//! `OpenMembership`), checks the predecessor's chain at the cut against a stored one (the
//! fork recovery will), or deletes a superseded entry.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use shoal_core::control::{ControlOp, kind};
use shoal_core::encryption::wrap_key;
use shoal_core::{
    ChainPosition, DeviceKey, Domain, Entry, EntryBody, Hlc, HlcClock, MAX_FORWARD_SKEW_MS, OwnLog,
    Payload, PeerId, SignedHead, SyncError, WorkspaceId, chain_through,
};

use crate::keyfile;
use crate::replica::MAX_INDEX;
use crate::replica::{
    Durability, LocalTx, OriginWrite, SqliteReplica, Writer, oplog_id, origin_row, read_origin,
    write_origin,
};

/// The table of successors (created on every writable open).
pub(crate) const DDL: &str = "
CREATE TABLE IF NOT EXISTS shoal_successors (
    predecessor BLOB PRIMARY KEY,
    successor   BLOB NOT NULL,
    cut         INTEGER NOT NULL
) WITHOUT ROWID;
";

/// An origin superseded by a successor, as status shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superseded {
    /// The origin that took over.
    pub successor: PeerId,
    /// The first superseded index: entries at or after it are stored, never applied.
    pub from: u64,
}

/// What [`SqliteReplica::succeed`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Succession {
    /// The old origin (this device's until now).
    pub predecessor: PeerId,
    /// The new origin, holding the successor op at index 0.
    pub successor: PeerId,
    /// The first superseded index of the predecessor.
    pub cut: u64,
    /// Entries of the predecessor from the cut on whose ops were written again under the
    /// successor (one entry each, in order).
    pub reissued: u64,
}

/// Whether the `shoal_successors` table exists (a file opened read-only may predate it).
fn has_table(conn: &Connection) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'shoal_successors'",
    )?
    .query_row([], |r| r.get::<_, i64>(0))
    .map(|n| n > 0)
}

/// The successor of `origin` and the cut, if one is recorded.
pub(crate) fn superseded(
    conn: &Connection,
    origin: &PeerId,
) -> rusqlite::Result<Option<Superseded>> {
    if !has_table(conn)? {
        return Ok(None);
    }
    conn.prepare_cached("SELECT successor, cut FROM shoal_successors WHERE predecessor = ?1")?
        .query_row([origin.as_bytes()], |r| {
            let successor: Vec<u8> = r.get(0)?;
            let cut: i64 = r.get(1)?;
            Ok((successor, cut))
        })
        .optional()
        .map(|row| {
            row.and_then(|(s, cut)| {
                Some(Superseded { successor: PeerId::from_slice(&s)?, from: cut.max(0) as u64 })
            })
        })
}

/// True if the entry holds a successor op (so applying it may supersede entries).
pub(crate) fn names_a_successor(e: &Entry) -> bool {
    let EntryBody::Live(p) = &e.body else { return false };
    p.ops.iter().any(|o| o.domain == Domain::CONTROL && o.kind == kind::SUCCESSOR)
}

/// Records the successor ops of an applied entry of `origin`. Returns whether any was new
/// (or lowered a cut).
pub(crate) fn record(
    conn: &Connection,
    workspace: &WorkspaceId,
    origin: &PeerId,
    payload: &Payload,
) -> rusqlite::Result<bool> {
    let mut changed = false;
    for op in payload.ops.iter().filter(|o| o.domain == Domain::CONTROL) {
        let Ok(op) = ControlOp::decode(op) else { continue };
        let Some((predecessor, cut)) = op.predecessor(workspace) else { continue };
        let cut = i64::try_from(cut).unwrap_or(i64::MAX);
        changed |= conn
            .prepare_cached(
                "INSERT INTO shoal_successors (predecessor, successor, cut) VALUES (?1, ?2, ?3)
                 ON CONFLICT (predecessor) DO UPDATE SET successor = excluded.successor,
                 cut = excluded.cut WHERE excluded.cut < cut",
            )?
            .execute(params![predecessor.as_bytes(), origin.as_bytes(), cut])?
            > 0;
    }
    Ok(changed)
}

/// Sets every origin's clock value from its own entries that stay applied (below its cut),
/// ignoring any entry stamped more than [`MAX_FORWARD_SKEW_MS`] past `wall`: the replica's
/// clock (their greatest) then no longer includes superseded stamps.
fn recompute_clock(conn: &Connection, wall: u64) -> rusqlite::Result<()> {
    let limit = Hlc::from_millis(wall.saturating_add(MAX_FORWARD_SKEW_MS).min(Hlc::MAX_MILLIS))
        .plus(0xffff);
    let rows: Vec<(Vec<u8>, i64, i64, Option<i64>)> = conn
        .prepare(
            "SELECT o.origin, o.no, o.next, s.cut FROM shoal_origins o
             LEFT JOIN shoal_successors s ON s.predecessor = o.origin",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    for (origin, no, next, cut) in rows {
        let end = cut.map_or(next, |c| c.min(next));
        let mut clock = 0i64;
        if end > 0 {
            let best: Option<(i64, bool, Vec<u8>)> = conn
                .prepare_cached(
                    "SELECT hlc, expunged, payload FROM shoal_oplog
                     WHERE id >= ?1 AND id < ?2 AND hlc <= ?3 ORDER BY hlc DESC LIMIT 1",
                )?
                .query_row(params![no << 40, (no << 40) + end, limit.as_u64() as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()?;
            if let Some((hlc, expunged, payload)) = best {
                let last = if expunged {
                    None
                } else {
                    EntryBody::decode_stored(&payload).ok().and_then(|b| b.last_hlc())
                };
                let last = last.unwrap_or(Hlc::from_u64(hlc as u64)).min(limit);
                clock = last.as_u64() as i64;
            }
        }
        conn.prepare_cached("UPDATE shoal_origins SET clock = ?2 WHERE origin = ?1")?
            .execute(params![origin, clock])?;
    }
    Ok(())
}

/// Starts a rebuild of the materialized state inside `conn`'s transaction: every domain's
/// state is forgotten, every origin's `materialized` goes back to 0 (the stored log is
/// untouched), and the clock is recomputed.
pub(crate) fn start_rebuild(w: &mut Writer, wall: u64) -> rusqlite::Result<()> {
    w.materializer.reset(&w.conn)?;
    w.conn.execute("UPDATE shoal_origins SET materialized = 0", [])?;
    recompute_clock(&w.conn, wall)
}

/// Moves a handed-over key file into place if the workspace now expects it, or drops it if
/// the hand-over never committed (called at open, before the key is read).
pub(crate) fn finish_key_handover(
    path: &Path,
    workspace: &WorkspaceId,
    expected: &shoal_core::PublicKey,
) -> Result<(), crate::OpenError> {
    let next = next_key_path(path);
    if !next.exists() {
        return Ok(());
    }
    let io = |what: &'static str| {
        move |source| crate::OpenError::Io { path: next_key_path(path), what, source }
    };
    match keyfile::read(&next, workspace, expected) {
        Ok(_) => std::fs::rename(&next, keyfile::key_path(path))
            .map_err(io("move the new key file into place")),
        Err(_) => std::fs::remove_file(&next).map_err(io("remove an unused new key file")),
    }
}

fn next_key_path(path: &Path) -> PathBuf {
    let mut p = keyfile::key_path(path).into_os_string();
    p.push(".next");
    p.into()
}

impl SqliteReplica {
    /// The successor of `origin`, if this replica applied one.
    pub fn superseded(&self, origin: PeerId) -> Result<Option<Superseded>, SyncError> {
        let path = self.inner.path.clone();
        self.with_reader(|conn| {
            superseded(conn, &origin).map_err(|e| {
                SyncError::backend(format!("{}: read the successor of {origin}", path.display()), e)
            })
        })
    }

    /// This replica's clock state: the greatest timestamp it issued or observed.
    pub fn clock_state(&self) -> Result<Hlc, SyncError> {
        let path = self.inner.path.clone();
        self.with_reader(|conn| {
            crate::replica::read_clock(conn)
                .map_err(|e| SyncError::backend(format!("{}: read the clock", path.display()), e))
        })
    }

    /// After entries naming a successor were applied (or at open): clears the stall of each
    /// predecessor that has nothing applicable left, and starts a rebuild if entries now
    /// superseded were applied here. Returns whether a rebuild was started (the caller then
    /// re-materializes).
    pub(crate) fn settle_successions(&self) -> Result<bool, SyncError> {
        let wall = self.inner.clock.now_millis();
        self.in_write_transaction("settle successors", |w| {
            if !has_table(&w.conn)? {
                return Ok(false);
            }
            w.conn.execute(
                "UPDATE shoal_origins SET stalled = NULL, stalled_at = NULL
                 WHERE stalled IS NOT NULL AND origin IN (SELECT predecessor FROM shoal_successors s
                   WHERE shoal_origins.materialized >= min(shoal_origins.next, s.cut))",
                [],
            )?;
            let applied_past: i64 = w.conn.query_row(
                "SELECT count(*) FROM shoal_origins o JOIN shoal_successors s
                 ON s.predecessor = o.origin WHERE o.materialized > s.cut",
                [],
                |r| r.get(0),
            )?;
            if applied_past > 0 {
                start_rebuild(w, wall)?;
            }
            Ok(applied_past > 0)
        })
    }

    /// Hands this device's log over to `new_key`: the current origin (the predecessor) is
    /// superseded from `cut` on, and a new origin (the successor) begins with the
    /// successor op, signed by the old key, followed by the ops of every predecessor entry
    /// from `cut` on, re-issued in order with fresh timestamps (one entry each, same
    /// author; control ops and entries without readable ops are not re-issued). The clock
    /// state is recomputed without the superseded entries first, so the new stamps follow
    /// the wall clock again. The predecessor's log is sealed at its tip with the old key
    /// (so it can still be published and verified) and the old key is then forgotten: the
    /// key file holds the new key. This replica keeps the old key in memory and refuses
    /// every later local write: reopen the workspace to write under the successor.
    ///
    /// Entries of the predecessor not yet published anywhere stay in this file only: publish
    /// them (sync) before handing over, as `shoal recover-clock --folder` does.
    pub fn succeed(&self, new_key: DeviceKey, cut: u64) -> Result<Succession, SyncError> {
        self.hand_over(new_key, cut, false)
    }

    /// Hands this device's log over to `new_key` after it found its own log forked at
    /// `fork_at` (another copy of this device — a cloned file, a restored backup that had
    /// written — published different entries there): this device's own entries from
    /// `fork_at` on, which no other replica holds, are taken out of its log and re-issued
    /// under the successor, as [`SqliteReplica::succeed`] re-issues; the successor op
    /// supersedes nothing (its cut is `u64::MAX`), so the other copy's entries, in the
    /// folder, stay valid and are pulled into the predecessor's log here like any other
    /// device's. The caller checks that those entries reached no other replica (they were
    /// refused for the fork before being published).
    pub fn succeed_after_fork(
        &self,
        new_key: DeviceKey,
        fork_at: u64,
    ) -> Result<Succession, SyncError> {
        self.hand_over(new_key, fork_at, true)
    }

    fn hand_over(&self, new_key: DeviceKey, cut: u64, fork: bool) -> Result<Succession, SyncError> {
        self.check_writable()?;
        let ws = self.inner.workspace;
        let old_key = self.inner.device.clone().ok_or_else(|| {
            SyncError::Misuse("this replica holds no device key: nothing to hand over".into())
        })?;
        let predecessor = old_key.peer_id(&ws);
        let successor = new_key.peer_id(&ws);
        if successor == predecessor {
            return Err(SyncError::Misuse("the new key is the current key".into()));
        }
        // The chain at the cut (the proof names it) and the entries to re-issue.
        let position = self.position(predecessor)?;
        if cut > position.next {
            return Err(SyncError::Misuse(format!(
                "cut {cut} is past the end of this device's log ({})",
                position.next
            )));
        }
        // In an encrypted workspace the predecessor's entries are opened to be re-issued,
        // and the successor gets every epoch key, wrapped for itself in its entry 0.
        let roster = self.roster()?;
        let keys = self.keyring_of(&roster);
        let encrypted = self.is_encrypted(&roster);
        let mut at = ChainPosition::start(&ws, &predecessor);
        let mut reissue: Vec<LocalTx> = Vec::new();
        let mut chain_at_cut = (cut == 0).then_some(at.chain);
        while at.next < position.next {
            let page = self.read_page(predecessor, at.next)?;
            if page.is_empty() {
                break;
            }
            let mut prev = at.chain;
            for e in &page {
                let before = prev;
                prev = prev.link(&e.hash());
                if e.index == cut && chain_at_cut.is_none() {
                    chain_at_cut = Some(before);
                }
                let opened = match &e.body {
                    EntryBody::Encrypted(c) if e.index >= cut => {
                        Some(keys.open(&predecessor, e.index, &before, c).map_err(|err| {
                            SyncError::Misuse(format!(
                                "entry {} of this device cannot be re-issued: {err}",
                                e.index
                            ))
                        })?)
                    }
                    _ => None,
                };
                let body = opened.as_ref().or(match &e.body {
                    EntryBody::Live(p) => Some(p),
                    _ => None,
                });
                if e.index >= cut
                    && let Some(p) = body
                {
                    let ops: Vec<_> =
                        p.ops.iter().filter(|o| o.domain != Domain::CONTROL).cloned().collect();
                    if !ops.is_empty() {
                        reissue.push(LocalTx { ops, author: p.author });
                    }
                }
            }
            let chain = chain_through(at, &page)
                .map_err(|(x, g)| SyncError::Bug(format!("own log skips from {x} to {g}")))?;
            at = ChainPosition { next: at.next + page.len() as u64, chain };
        }
        let chain_at_cut = match chain_at_cut {
            Some(c) => c,
            None if cut == at.next => at.chain,
            None => return Err(SyncError::Bug(format!("own log does not reach {cut}"))),
        };
        // After a fork the successor supersedes nothing: the entries past `cut` that this
        // device drops were never anyone else's, and the other copy's stay valid.
        let superseded_from = if fork { u64::MAX } else { cut };
        let op = ControlOp::successor(
            &old_key,
            ws,
            successor,
            superseded_from,
            chain_at_cut,
            Some(new_key.exchange_key()),
        );
        let mut first = vec![op.to_op()];
        if encrypted {
            for epoch in keys.epochs().collect::<Vec<_>>() {
                let Some(key) = keys.keys_of(epoch).first() else { continue };
                let wrap = wrap_key(&ws, epoch, key, &new_key.exchange_key())
                    .map_err(|e| SyncError::Misuse(e.to_string()))?;
                first.push(ControlOp::EpochKeys { epoch, wraps: vec![(successor, wrap)] }.to_op());
            }
        }

        // The new key goes beside the file first, under its hand-over name.
        let path = self.inner.path.clone();
        let next_key = next_key_path(&path);
        let _ = std::fs::remove_file(&next_key);
        keyfile::write_new(&next_key, &ws, &new_key, None)
            .map_err(|e| SyncError::backend(format!("{}: write the new key", path.display()), e))?;

        let wall = self.inner.clock.now_millis();
        let reissued = reissue.len() as u64;
        let mut guard = self.writer();
        guard.set_durability(Durability::Full).map_err(self.backend("set synchronous"))?;
        let w = &mut *guard;
        w.conn.execute_batch("BEGIN IMMEDIATE").map_err(self.backend("begin hand-over"))?;
        let result = (|| -> Result<u64, SyncError> {
            w.materializer.begin(&w.conn).map_err(self.backend("begin materializing"))?;
            let sql = |what: &'static str| self.backend(what);
            let row = read_origin(&w.conn, &predecessor)
                .map_err(sql("read own position"))?
                .ok_or_else(|| SyncError::Misuse("this device has written nothing".into()))?;
            if row.position != position {
                return Err(SyncError::Misuse(
                    "this device's log moved during the hand-over (another process wrote): \
                     try again"
                        .into(),
                ));
            }
            // After a fork, this device's own branch leaves its log: the predecessor's log
            // here ends at the fork, and the other copy's entries continue it.
            let tip = if fork {
                let rewound = ChainPosition { next: cut, chain: chain_at_cut };
                w.conn
                    .execute(
                        "DELETE FROM shoal_oplog WHERE id >= ?1 AND id <= ?2",
                        params![oplog_id(row.no, cut)?, oplog_id(row.no, MAX_INDEX)?],
                    )
                    .map_err(sql("take the forked branch out"))?;
                w.conn
                    .execute(
                        "DELETE FROM shoal_control WHERE origin = ?1 AND idx >= ?2",
                        params![predecessor.as_bytes(), cut as i64],
                    )
                    .map_err(sql("take the forked branch out"))?;
                let at = OriginWrite {
                    position: rewound,
                    key: Some(&old_key.public_key()),
                    materialized: 0,
                    clock: Hlc::ZERO,
                };
                write_origin(&w.conn, &predecessor, at).map_err(sql("rewind the old log"))?;
                rewound
            } else {
                position
            };
            // Seal the predecessor's tip with the old key: nobody can once it is gone.
            if tip.next > 0 {
                let seal = SignedHead::sign(&old_key, ws, tip.next, tip.chain).seal;
                w.conn
                    .execute(
                        "UPDATE shoal_oplog SET seal = ?2 WHERE id = ?1 AND seal IS NULL",
                        params![oplog_id(row.no, tip.next - 1)?, seal.signature.as_slice()],
                    )
                    .map_err(sql("seal the old log"))?;
            }
            w.conn
                .execute(
                    "UPDATE shoal_meta SET value = ?1 WHERE key = 'device_public'",
                    [new_key.public_key().as_bytes().as_slice()],
                )
                .map_err(sql("record the new key"))?;
            let payload = Payload { hlc: Hlc::ZERO, author: None, ops: vec![op.to_op()] };
            record(&w.conn, &ws, &successor, &payload).map_err(sql("record the successor"))?;
            start_rebuild(w, wall).map_err(sql("start the rebuild"))?;
            let mut clock =
                HlcClock::resume(crate::replica::read_clock(&w.conn).map_err(sql("read clock"))?);
            let mut payloads =
                vec![Payload { hlc: clock.tick(wall, first.len()), author: None, ops: first }];
            for t in reissue {
                payloads.push(Payload {
                    hlc: clock.tick(wall, t.ops.len()),
                    author: t.author,
                    ops: t.ops,
                });
            }
            let new_row = origin_row(&w.conn, &ws, &successor).map_err(sql("new origin"))?;
            let mut own = OwnLog::resume(new_key.clone(), ws, new_row.position);
            let entries = if encrypted {
                own.append_unsealed_encrypted(payloads, &keys).map_err(|e| {
                    SyncError::Unavailable {
                        what: path.display().to_string(),
                        reason: e.to_string(),
                    }
                })?
            } else {
                own.append_unsealed(payloads)
            };
            for (entry, bytes) in &entries {
                let hlc = entry.body.hlc().map_or(0, |h| h.as_u64() as i64);
                w.conn
                    .execute(
                        "INSERT INTO shoal_oplog (id, hlc, expunged, payload, seal) VALUES (?1, ?2, 0, ?3, NULL)",
                        params![oplog_id(new_row.no, entry.index)?, hlc, bytes],
                    )
                    .map_err(sql("append to the oplog"))?;
                crate::members::record(&w.conn, entry, bytes)
                    .map_err(sql("record a control entry"))?;
            }
            let at = OriginWrite {
                position: own.position(),
                key: Some(&new_key.public_key()),
                materialized: 0,
                clock: clock.last(),
            };
            write_origin(&w.conn, &successor, at).map_err(sql("advance the new origin"))?;
            Ok(own.position().next)
        })();
        let next = match result {
            Ok(next) => next,
            Err(e) => {
                let _ = w.conn.execute_batch("ROLLBACK");
                w.materializer.rolled_back();
                let _ = std::fs::remove_file(&next_key);
                return Err(e);
            }
        };
        if let Err(e) = w.conn.execute_batch("COMMIT") {
            let _ = w.conn.execute_batch("ROLLBACK");
            w.materializer.rolled_back();
            let _ = std::fs::remove_file(&next_key);
            return Err(self.backend("commit hand-over")(e));
        }
        w.materializer.committed();
        drop(guard);
        std::fs::rename(&next_key, keyfile::key_path(&path)).map_err(|e| {
            SyncError::backend(format!("{}: move the new key into place", path.display()), e)
        })?;
        keyfile::sync_dir(&keyfile::key_path(&path)).map_err(|e| {
            SyncError::backend(format!("{}: sync its directory", path.display()), e)
        })?;
        self.inner.cursors.publish(&[(successor, next)].into_iter().collect());
        self.resume_materialization()?;
        Ok(Succession { predecessor, successor, cut, reissued })
    }
}
