//! How domains keep materialized state in the replica's file: the [`Materializer`] hook one
//! domain implements, and the [`DomainRouter`] that dispatches each entry's ops to them.
//!
//! Owns: [`Materializer`], [`MaterializeError`], [`DomainRouter`], and the control domain's
//! receipt-time materialization (this version keeps no membership state; it checks that it
//! understands every control op, so a newer kind stalls instead of being skipped).
//!
//! Invariants:
//! - The replica calls the router inside the very transaction that appends the entry to the
//!   oplog and advances its cursor, so materialized state and the log never disagree after a
//!   commit or a crash.
//! - An entry is materialized whole or not at all, across domains: the router refuses an
//!   entry with an op of a domain nobody materializes before any domain writes; a domain
//!   decodes its ops before it writes; and when a domain fails after another one wrote, the
//!   replica rolls the transaction back and stores the entry without materializing it.
//! - A new domain plugs in by implementing [`Materializer`] and being listed in
//!   [`crate::Options::domains`]; no other domain's code changes.
//!
//! Never: a materializer never writes the oplog, cursors or clock tables.

use rusqlite::Connection;
use shoal_core::control::{ControlError, ControlOp};
use shoal_core::{Domain, Payload, PeerId};

/// Why an entry could not be materialized.
#[derive(Debug, thiserror::Error)]
pub enum MaterializeError {
    /// The entry holds an op this version does not understand. The entry stays in the oplog
    /// (and is forwarded); materializing its origin stalls here until an upgrade.
    #[error("needs a newer Shoal: {0}")]
    NeedsUpgrade(String),
    /// The entry holds an op that can never be applied (it breaks the domain's format). The
    /// entry stays in the oplog; materializing its origin stalls here.
    #[error("malformed op: {0}")]
    Malformed(String),
    /// SQLite failed.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

/// Materializes the ops of one domain (tables, documents) inside the replica's
/// transactions.
pub trait Materializer: Send + 'static {
    /// The domain whose ops this materializer applies.
    fn domain(&self) -> Domain;

    /// Creates or migrates this materializer's tables. Called once per open, in a
    /// transaction.
    fn init(&mut self, conn: &Connection) -> Result<(), rusqlite::Error>;

    /// A write transaction began (the replica holds the file's write lock until it commits
    /// or rolls back): state cached from the file may be checked once here instead of for
    /// every entry, since no other connection can change it before the transaction ends.
    fn begin(&mut self, _conn: &Connection) -> Result<(), rusqlite::Error> {
        Ok(())
    }

    /// Applies the ops of this materializer's domain in the payload of entry `(origin,
    /// index)` (op `i` is stamped `payload.hlc + i`), ignoring the ops of other domains.
    /// Decodes every op before writing anything.
    fn apply(
        &mut self,
        conn: &Connection,
        origin: PeerId,
        index: u64,
        payload: &Payload,
    ) -> Result<(), MaterializeError>;

    /// The transaction that called `apply` committed; publish what changed.
    fn committed(&mut self) {}

    /// The transaction that called `apply` rolled back; forget what it changed.
    fn rolled_back(&mut self) {}
}

/// Dispatches each entry's ops to the materializer of their domain.
pub struct DomainRouter {
    domains: Vec<Box<dyn Materializer>>,
}

impl std::fmt::Debug for DomainRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let domains: Vec<u32> = self.domains.iter().map(|d| d.domain().0).collect();
        f.debug_struct("DomainRouter").field("domains", &domains).finish()
    }
}

impl DomainRouter {
    /// A router over these domain materializers (at most one per domain; a later one for a
    /// domain already listed is ignored). The control domain is always understood.
    pub fn new(domains: Vec<Box<dyn Materializer>>) -> Self {
        let mut kept: Vec<Box<dyn Materializer>> = Vec::with_capacity(domains.len());
        for d in domains {
            if d.domain() != Domain::CONTROL && !kept.iter().any(|k| k.domain() == d.domain()) {
                kept.push(d);
            }
        }
        DomainRouter { domains: kept }
    }

    /// Initializes every domain's tables.
    pub fn init(&mut self, conn: &Connection) -> Result<(), rusqlite::Error> {
        self.domains.iter_mut().try_for_each(|d| d.init(conn))
    }

    /// A write transaction began.
    pub fn begin(&mut self, conn: &Connection) -> Result<(), rusqlite::Error> {
        self.domains.iter_mut().try_for_each(|d| d.begin(conn))
    }

    /// Applies an entry's ops, all domains or none (see the module doc). A router without
    /// domains keeps a pure log (a relay's replica): it materializes nothing and stalls on
    /// nothing.
    pub fn apply(
        &mut self,
        conn: &Connection,
        origin: PeerId,
        index: u64,
        payload: &Payload,
    ) -> Result<(), MaterializeError> {
        if self.domains.is_empty() {
            return Ok(());
        }
        // Every op must belong to a domain this version materializes, before anyone writes.
        let mut involved = Vec::with_capacity(1);
        for (i, op) in payload.ops.iter().enumerate() {
            if op.domain == Domain::CONTROL {
                match ControlOp::decode(op) {
                    Ok(_) => {}
                    Err(ControlError::NeedsUpgrade { kind }) => {
                        return Err(MaterializeError::NeedsUpgrade(format!(
                            "op {i} is a control op of kind {kind}, unknown to this version"
                        )));
                    }
                    Err(e) => return Err(MaterializeError::Malformed(format!("op {i}: {e}"))),
                }
                continue;
            }
            match self.domains.iter().position(|d| d.domain() == op.domain) {
                Some(at) if !involved.contains(&at) => involved.push(at),
                Some(_) => {}
                None => {
                    return Err(MaterializeError::NeedsUpgrade(format!(
                        "op {i} belongs to domain {}, which this version does not materialize",
                        op.domain.0
                    )));
                }
            }
        }
        for at in involved {
            self.domains[at].apply(conn, origin, index, payload)?;
        }
        Ok(())
    }

    /// The transaction committed.
    pub fn committed(&mut self) {
        self.domains.iter_mut().for_each(|d| d.committed());
    }

    /// The transaction rolled back.
    pub fn rolled_back(&mut self) {
        self.domains.iter_mut().for_each(|d| d.rolled_back());
    }

    /// The materializer of `domain`, to inspect its state (for example the tables schema).
    pub fn domain_mut(&mut self, domain: Domain) -> Option<&mut dyn Materializer> {
        self.domains.iter_mut().find(|d| d.domain() == domain).map(|d| d.as_mut() as _)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_core::{Hlc, Op};

    struct Counting(Domain, usize);
    impl Materializer for Counting {
        fn domain(&self) -> Domain {
            self.0
        }
        fn init(&mut self, _: &Connection) -> Result<(), rusqlite::Error> {
            Ok(())
        }
        fn apply(
            &mut self,
            _: &Connection,
            _: PeerId,
            _: u64,
            _: &Payload,
        ) -> Result<(), MaterializeError> {
            self.1 += 1;
            Ok(())
        }
    }

    fn payload(ops: Vec<Op>) -> Payload {
        Payload { hlc: Hlc::from_millis(1), author: None, ops }
    }

    #[test]
    fn ops_go_to_their_domain_and_unknown_ones_stall_before_any_write() {
        let conn = Connection::open_in_memory().unwrap();
        let mut router = DomainRouter::new(vec![Box::new(Counting(Domain::TABLES, 0))]);
        let origin = PeerId::from_bytes([1; 16]);
        let tables = Op { domain: Domain::TABLES, kind: 1, body: vec![] };
        router.apply(&conn, origin, 0, &payload(vec![tables.clone(), tables.clone()])).unwrap();
        let docs = Op { domain: Domain::DOCS, kind: 1, body: vec![] };
        let err = router.apply(&conn, origin, 1, &payload(vec![tables, docs])).unwrap_err();
        assert!(matches!(err, MaterializeError::NeedsUpgrade(_)), "{err}");
        let future_control = Op { domain: Domain::CONTROL, kind: 999, body: vec![] };
        let err = router.apply(&conn, origin, 2, &payload(vec![future_control])).unwrap_err();
        assert!(matches!(err, MaterializeError::NeedsUpgrade(_)), "{err}");
        let n = router.domain_mut(Domain::TABLES).map(|_| ());
        assert!(n.is_some());
    }
}
