//! Membership in the SQLite replica: which stored entries may be applied (DESIGN §8;
//! `docs/ARCHITECTURE.md`, "Membership").
//!
//! Owns: the `shoal_control` table (every stored control entry, by origin and index: a copy
//! of their oplog rows, small, so the roster never needs a scan of the oplog), the roster
//! cache, the hold on entries past their origin's limit, and the replica's duty to
//! acknowledge what it applied before it stores control entries that would cut it.
//!
//! The rules themselves are `shoal_core::membership`: a pure fold of the control entries.
//! A workspace whose genesis holds no policy (created before membership existed) is open:
//! every limit is unbounded and nothing here changes what applies.
//!
//! Invariants:
//! - An entry of origin `o` at index `i` is materialized only if `i < limit(o)` in the
//!   roster of the control entries stored with it or before it; this device's own entries
//!   always apply here (a pending or removed device still sees its own writes; others do
//!   not apply them).
//! - Entries past a limit are stored, forwarded, and shown as pending; when the roster
//!   raises the limit (an invite or admission arrives), they are materialized then. If the
//!   roster lowers a limit below what was materialized (possible only where this device
//!   could not acknowledge first: it is not a member itself), the state is rebuilt.
//! - Before storing control entries that would lower a limit below what this replica
//!   materialized, a member replica appends an [`ControlOp::Ack`] of its stored cursors,
//!   so those entries stay valid everywhere (witnessed validity).
//! - The table only grows (entries are never deleted), so its row count is the roster
//!   cache's generation, read inside each transaction: other processes may add rows.
//!
//! Never: decides membership itself, or drops an entry it holds.

use std::sync::Arc;

use rusqlite::{Connection, params};
use shoal_core::control::ControlOp;
use shoal_core::membership::{ControlLog, Roster};
use shoal_core::{Entry, EntryBody, EntryClass, Membership, PeerId, SyncError, WorkspaceId};

use crate::replica::{LocalTx, SqliteReplica};

/// The table of stored control entries (created on every writable open).
const DDL: &str = "
CREATE TABLE IF NOT EXISTS shoal_control (
    origin  BLOB    NOT NULL,
    idx     INTEGER NOT NULL,
    payload BLOB    NOT NULL,
    PRIMARY KEY (origin, idx)
) WITHOUT ROWID;
";

/// Control entries in the oplog, with their origin and index (the oplog key packs the
/// origin's number in this file above bit 40).
const OPLOG_CONTROL: &str = "
SELECT o.origin, l.id & 1099511627775, l.payload FROM shoal_oplog l
JOIN shoal_origins o ON o.no = (l.id >> 40)
WHERE l.expunged = 0 AND substr(l.payload, 1, 1) = x'00'";

/// Metadata key and value: this device joined with an invite, so the workspace is
/// members-only whatever arrives first.
const EXPECT_KEY: &str = "membership";
const EXPECT_MEMBERS: &[u8] = b"members-only";

/// Whether the file records that the workspace is members-only (see
/// [`SqliteReplica::expect_members_only`]).
pub(crate) fn members_expected(conn: &Connection) -> rusqlite::Result<bool> {
    Ok(crate::schema::meta(conn, EXPECT_KEY)?.as_deref() == Some(EXPECT_MEMBERS))
}

/// The roster as last folded, with the table's row count it was folded from.
pub(crate) type RosterCache = std::sync::Mutex<Option<(i64, Arc<Roster>)>>;

fn has_table(conn: &Connection) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'shoal_control'",
    )?
    .query_row([], |r| r.get::<_, i64>(0))
    .map(|n| n > 0)
}

/// Creates the table inside a write transaction, filling it from the oplog when it is new
/// (a file written before the table existed).
pub(crate) fn ensure(conn: &Connection) -> rusqlite::Result<()> {
    if has_table(conn)? {
        return Ok(());
    }
    conn.execute_batch(DDL)?;
    conn.execute(
        &format!("INSERT OR IGNORE INTO shoal_control (origin, idx, payload) {OPLOG_CONTROL}"),
        [],
    )?;
    Ok(())
}

/// Whether `e` is a control entry (the only entries the roster reads).
pub(crate) fn is_control(e: &Entry) -> bool {
    matches!(&e.body, EntryBody::Live(p) if p.class() == Ok(EntryClass::Control))
}

/// Records a stored control entry (called in the transaction that stores it).
pub(crate) fn record(conn: &Connection, e: &Entry, stored: &[u8]) -> rusqlite::Result<()> {
    if is_control(e) {
        conn.prepare_cached(
            "INSERT OR IGNORE INTO shoal_control (origin, idx, payload) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![e.origin.as_bytes(), e.index as i64, stored])?;
    }
    Ok(())
}

/// Every stored control entry, folded into a log (from the oplog if the table is not
/// there: a file opened read-only may predate it).
fn load(conn: &Connection) -> rusqlite::Result<ControlLog> {
    let sql = if has_table(conn)? {
        "SELECT origin, idx, payload FROM shoal_control"
    } else {
        OPLOG_CONTROL
    };
    let mut log = ControlLog::new();
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?, r.get::<_, Vec<u8>>(2)?))
    })?;
    for row in rows {
        let (origin, index, payload) = row?;
        // A row that does not decode counts for nothing here; verification reports it.
        let (Some(origin), Ok(body)) =
            (PeerId::from_slice(&origin), EntryBody::decode_stored(&payload))
        else {
            continue;
        };
        log.insert(origin, index.max(0) as u64, &body);
    }
    Ok(log)
}

fn count(conn: &Connection) -> rusqlite::Result<i64> {
    if !has_table(conn)? {
        return Ok(-1);
    }
    conn.prepare_cached("SELECT count(*) FROM shoal_control")?.query_row([], |r| r.get(0))
}

/// The roster of what `conn` sees stored (cached while the table does not grow).
pub(crate) fn roster(
    cache: &RosterCache,
    conn: &Connection,
    workspace: &WorkspaceId,
) -> rusqlite::Result<Arc<Roster>> {
    let n = count(conn)?;
    if let Ok(guard) = cache.lock()
        && let Some((at, roster)) = guard.as_ref()
        && *at == n
        && n >= 0
    {
        return Ok(roster.clone());
    }
    let roster = Arc::new(load(conn)?.roster(workspace));
    if let Ok(mut guard) = cache.lock() {
        *guard = Some((n, roster.clone()));
    }
    Ok(roster)
}

/// The roster of what `conn` sees stored plus the control entries of `run`.
pub(crate) fn roster_with(
    cache: &RosterCache,
    conn: &Connection,
    workspace: &WorkspaceId,
    run: &[Entry],
) -> rusqlite::Result<Arc<Roster>> {
    if !run.iter().any(is_control) {
        return roster(cache, conn, workspace);
    }
    let mut log = load(conn)?;
    for e in run.iter().filter(|e| is_control(e)) {
        log.insert(e.origin, e.index, &e.body);
    }
    Ok(Arc::new(log.roster(workspace)))
}

/// Why entry `index` of `origin` is held, if the roster holds it.
pub(crate) fn hold(
    roster: &Roster,
    origin: &PeerId,
    index: u64,
    body: &EntryBody,
) -> Option<String> {
    roster.admit(origin, index, body).err()
}

impl SqliteReplica {
    /// The membership roster of what this replica stores (`shoal_core::membership`).
    pub fn roster(&self) -> Result<Arc<Roster>, SyncError> {
        let path = self.inner.path.clone();
        let ws = self.inner.workspace;
        self.with_reader(|conn| {
            roster(&self.inner.roster, conn, &ws).map_err(|e| {
                SyncError::backend(format!("{}: read the membership", path.display()), e)
            })
        })
    }

    /// The first index of `origin` that may not be applied here. This device's own log is
    /// never held here. Before the genesis is here, nobody can tell whether the workspace
    /// is open: a device that joined by workspace id applies what is authentic (and
    /// rebuilds without what the policy refuses once the genesis arrives), one that joined
    /// with an invite ([`SqliteReplica::expect_members_only`]) holds everything.
    pub(crate) fn limit_of(&self, roster: &Roster, origin: &PeerId) -> u64 {
        let unknown_policy = !roster.founded && !self.members_expected();
        if self.applies_as_own() == Some(*origin) || unknown_policy {
            u64::MAX
        } else {
            roster.limit(origin)
        }
    }

    /// The origin whose entries always apply here: this device's, or, in a replica that
    /// rebuilds a device's state (`SqliteReplica::rebuild_like`), that device's.
    fn applies_as_own(&self) -> Option<PeerId> {
        self.own_origin().or_else(|| self.inner.rebuilding.get().map(|(o, _)| *o))
    }

    fn members_expected(&self) -> bool {
        self.inner.members_expected.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Records that this workspace admits members only before its genesis is here (a
    /// device joining with an invite knows it): until the genesis arrives, nothing of other
    /// devices is applied.
    pub fn expect_members_only(&self) -> Result<(), SyncError> {
        self.set_meta(EXPECT_KEY, EXPECT_MEMBERS)?;
        self.inner.members_expected.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// The replica's duty before storing `entries` of another origin (see the module doc):
    /// if their control entries would lower some origin's limit below what this replica
    /// materialized, and this device is an admitted member, it first appends an ack of its
    /// stored cursors.
    pub(crate) fn ack_before_cutting(&self, entries: &[Entry]) -> Result<(), SyncError> {
        let Some(own) = self.own_origin() else { return Ok(()) };
        if self.is_read_only() || !entries.iter().any(is_control) {
            return Ok(());
        }
        let path = self.inner.path.clone();
        let ws = self.inner.workspace;
        let (now, after) = self.with_reader(|conn| {
            let read = || -> rusqlite::Result<_> {
                let now = roster(&self.inner.roster, conn, &ws)?;
                let after = roster_with(&self.inner.roster, conn, &ws, entries)?;
                Ok((now, after))
            };
            read().map_err(|e| {
                SyncError::backend(format!("{}: read the membership", path.display()), e)
            })
        })?;
        if now.open || !now.founded || now.limit(&own) != u64::MAX {
            return Ok(()); // not a member: its acks would count for nothing
        }
        let cuts = self
            .origin_status()?
            .iter()
            .any(|s| s.origin != own && s.materialized > after.limit(&s.origin));
        if !cuts {
            return Ok(());
        }
        let cursors = self.durable_cursors()?;
        let ack = ControlOp::ack(cursors.iter().filter(|(o, n)| *o != own && *n > 0));
        self.append_local(vec![LocalTx { ops: vec![ack.to_op()], author: None }])?;
        Ok(())
    }
}

impl SqliteReplica {
    /// The replica's other duty: after storing a new device's entry 0 (its join), an
    /// admitted member acks what it stores, so that admission is witnessed — a later join
    /// with the same one-use invite, or a revocation, then cannot undo it.
    pub(crate) fn ack_new_device(&self) -> Result<(), SyncError> {
        let Some(own) = self.own_origin() else { return Ok(()) };
        if self.is_read_only() {
            return Ok(());
        }
        let now = self.roster()?;
        if now.open || !now.founded || now.limit(&own) != u64::MAX {
            return Ok(());
        }
        let cursors = self.durable_cursors()?;
        let ack = ControlOp::ack(cursors.iter().filter(|(o, n)| *o != own && *n > 0));
        self.append_local(vec![LocalTx { ops: vec![ack.to_op()], author: None }])?;
        Ok(())
    }

    /// After control entries were stored (or at open): records why each origin held at its
    /// limit is held, and starts a rebuild if entries past a limit were materialized here.
    /// Returns whether a rebuild was started (the caller then re-materializes).
    pub(crate) fn settle_membership(&self) -> Result<bool, SyncError> {
        if self.is_read_only() {
            return Ok(false);
        }
        let ws = self.inner.workspace;
        let own = self.applies_as_own();
        let wall = self.inner.clock.now_millis();
        self.in_write_transaction("settle membership", |w| {
            let roster = roster(&self.inner.roster, &w.conn, &ws)?;
            if roster.open || (!roster.founded && !self.members_expected()) {
                return Ok(false);
            }
            let rows: Vec<(Vec<u8>, i64, i64, Option<String>)> = w
                .conn
                .prepare_cached("SELECT origin, next, materialized, stalled FROM shoal_origins")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<Result<_, _>>()?;
            let mut rebuild = false;
            for (origin, next, materialized, stalled) in rows {
                let Some(origin) = PeerId::from_slice(&origin) else { continue };
                if Some(origin) == own {
                    continue;
                }
                let (next, materialized) = (next.max(0) as u64, materialized.max(0) as u64);
                let limit = roster.limit(&origin);
                if materialized > limit {
                    rebuild = true;
                } else if materialized == limit && limit < next && stalled.is_none() {
                    let why = roster
                        .admit(&origin, limit, &EntryBody::Expunged(shoal_core::EntryHash([0; 32])))
                        .err()
                        .unwrap_or_default();
                    let reason = format!("entry {limit} is not applied: {why}");
                    crate::replica::set_stall(&w.conn, &ws, &origin, Some(&reason), wall)?;
                }
            }
            if rebuild {
                crate::succession::start_rebuild(w, wall)?;
            }
            Ok(rebuild)
        })
    }
}
