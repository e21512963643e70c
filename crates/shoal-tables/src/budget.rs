//! The budgets of the table domain: how wide a table and a put may be. One place, used by
//! local writers (`shoal::Workspace`), by the reference model and by every materializer.
//!
//! Owns: [`MAX_COLUMNS_PER_TABLE`], [`MAX_CELLS_PER_PUT`] and [`check_column_budget`].
//!
//! Invariants:
//! - A put is bounded by the op format itself: a `Put` of more than [`MAX_CELLS_PER_PUT`]
//!   cells cannot be written (`TableOp::validate`) nor decoded (it is malformed), so no
//!   receiver ever sees one from an honest sender, and every put within it must apply on
//!   every receiver (the SQLite materializer spreads a row over shard tables for that).
//! - A table's view shows at most [`MAX_COLUMNS_PER_TABLE`] columns, key columns
//!   included. Local writers refuse to declare more; devices that declared columns
//!   offline may together exceed it, and then every replica shows the same first columns
//!   in view order (definition HLC, then column id) and reports the others as
//!   `ConflictKind::TooManyColumns`, keeping their data (`docs/TABLES.md` §6).
//!
//! Never: depends on arrival order or on a device's own schema beyond the count it is
//! given.

use crate::error::ValidationError;

/// The most cells one `Put` may write. Part of the op format (`docs/TABLES.md` §3): the
/// writer refuses more and the decoder rejects more.
pub const MAX_CELLS_PER_PUT: usize = 2000;

/// The most columns a table's view shows, key columns included. SQLite allows 2,000
/// result columns; half of that leaves room for apps to join a wide table with others.
pub const MAX_COLUMNS_PER_TABLE: usize = 1000;

/// Checks, for a local declaration, that a table showing `have` columns (key columns
/// included) can take `adding` more.
pub fn check_column_budget(table: &str, have: usize, adding: usize) -> Result<(), ValidationError> {
    let columns = have.saturating_add(adding);
    if adding > 0 && columns > MAX_COLUMNS_PER_TABLE {
        return Err(ValidationError::TooManyColumns {
            table: table.to_owned(),
            columns,
            limit: MAX_COLUMNS_PER_TABLE,
        });
    }
    Ok(())
}
