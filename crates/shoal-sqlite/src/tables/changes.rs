//! Change events of the table domain.
//!
//! Owns: [`TableChange`], [`TablesHandle`], [`CHANGE_BUFFER`] and the list of changes
//! made by the transaction in progress.
//!
//! Invariants: events are collected while a transaction applies and sent only after it
//! commits ([`Changes::publish`]); a rollback discards them ([`Changes::discard`]). A
//! subscriber that falls more than [`CHANGE_BUFFER`] events behind is told it lagged
//! (`broadcast::error::RecvError::Lagged`), never silently skipped.
//!
//! Never: sends an event for a transaction that did not commit, or blocks the writer on a
//! slow subscriber.

use shoal_tables::{ColumnId, RowKey, TableId};
use tokio::sync::{broadcast, watch};

/// How many change events a slow subscriber may fall behind before it is told it lagged.
pub const CHANGE_BUFFER: usize = 4096;

/// A change to one row, published after the transaction that made it commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableChange {
    /// The table.
    pub table: TableId,
    /// The row.
    pub key: RowKey,
    /// The columns whose visible value changed (key columns are never listed).
    pub columns: Vec<ColumnId>,
    /// Whether the row is visible after the change.
    pub live: bool,
}

/// Handles for observing a [`TablesMaterializer`](super::TablesMaterializer) from outside
/// the replica's writer.
#[derive(Debug, Clone)]
pub struct TablesHandle {
    changes: broadcast::Sender<TableChange>,
    schema: watch::Receiver<u64>,
}

impl TablesHandle {
    /// Row changes committed from now on. A subscriber that falls more than
    /// [`CHANGE_BUFFER`] events behind receives `RecvError::Lagged` and should re-query.
    pub fn subscribe(&self) -> broadcast::Receiver<TableChange> {
        self.changes.subscribe()
    }

    /// A counter that moves whenever this process applies a schema change.
    pub fn schema_changes(&self) -> watch::Receiver<u64> {
        self.schema.clone()
    }
}

/// The changes of the transaction in progress and the channels they go out on.
#[derive(Debug)]
pub(super) struct Changes {
    pending: Vec<TableChange>,
    sender: broadcast::Sender<TableChange>,
    schema: watch::Sender<u64>,
}

impl Changes {
    pub(super) fn new() -> Self {
        Changes {
            pending: Vec::new(),
            sender: broadcast::Sender::new(CHANGE_BUFFER),
            schema: watch::Sender::new(0),
        }
    }

    pub(super) fn handle(&self) -> TablesHandle {
        TablesHandle { changes: self.sender.clone(), schema: self.schema.subscribe() }
    }

    /// Records a row change of the transaction in progress.
    pub(super) fn record(&mut self, change: TableChange) {
        self.pending.push(change);
    }

    /// Tells schema watchers that the schema or the views changed.
    pub(super) fn schema_changed(&self) {
        self.schema.send_modify(|n| *n += 1);
    }

    /// The transaction committed: send its changes.
    pub(super) fn publish(&mut self) {
        for change in self.pending.drain(..) {
            // No subscriber is not an error.
            let _ = self.sender.send(change);
        }
    }

    /// The transaction rolled back: forget its changes.
    pub(super) fn discard(&mut self) {
        self.pending.clear();
    }
}
