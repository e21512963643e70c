//! # shoal-tables: the table domain of Shoal
//!
//! Owns what rows and schemas *mean* when devices sync them (DESIGN §6): values and their
//! total order, table and column ids, row keys, the table ops written into log entries and
//! their byte forms, and the merge rules, as pure functions and as [`TablesModel`], an
//! in-memory reference implementation.
//!
//! ```text
//!  app write ──> TableOp ──to_op()──> shoal_core::Op ──> entry in a log
//!                                                             │ sync (any order, dupes)
//!  TablesModel / SQLite materializer <──TableOp::decode()─────┘
//!        │  merge rules (crate::merge): tombstones, LWW, counters, max, schema
//!        └──> dump(): visible tables, columns, rows   hidden_dump(): canonical state
//! ```
//!
//! **Never:** touches a database, a file, a socket or a clock; no I/O at all. Entry
//! envelopes, HLC issuing, signatures and exactly-once delivery belong to `shoal-core` and
//! the replicas; materializing into SQLite belongs to `shoal-sqlite`, which must agree
//! with [`TablesModel`] on every input.
//!
//! Main types:
//! - [`Value`] (NULL, INTEGER, REAL, TEXT, BLOB; total order, canonical NaN, canonical
//!   bytes), [`ColumnType`], [`MergeKind`].
//! - [`TableId`], [`ColumnId`] (derived from names at creation; renames keep them),
//!   [`validate_name`] for local declarations.
//! - [`RowKey`]: canonical bytes of a primary-key tuple; rows sort by them.
//! - [`TableOp`] with [`CellWrite`] and [`PkColumn`]; op kind numbers in [`kind`].
//! - The budgets [`MAX_COLUMNS_PER_TABLE`] and [`MAX_CELLS_PER_PUT`], checked locally by
//!   [`check_column_budget`].
//! - [`TablesModel`] with [`TablesDump`], [`HiddenDump`] and [`SchemaConflict`].
//! - The merge decisions a materializer must reproduce: [`survives`], [`lww_wins`],
//!   [`CellState`], [`MaxFrontier`], [`CounterAdds`], [`RowState`], [`Definitions`].
//!
//! Byte formats, kind numbers and every decision DESIGN.md leaves open are written down in
//! `docs/TABLES.md`.
//!
//! # Example
//!
//! ```
//! use shoal_core::{Hlc, Payload};
//! use shoal_tables::*;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let notes = TableId::from_name("notes");
//! let create = TableOp::CreateTable {
//!     table: notes,
//!     name: "notes".into(),
//!     primary_key: vec![PkColumn::new(notes, "id", ColumnType::Text)],
//! };
//! let likes = TableOp::add_column(notes, "likes", ColumnType::Integer, MergeKind::Counter);
//! let likes_id = ColumnId::from_name(notes, "likes");
//! let key = RowKey::from_values(&[Value::text("n1")?])?;
//! let like = |n| TableOp::Put {
//!     table: notes,
//!     key: key.clone(),
//!     cells: vec![(likes_id, CellWrite::Add(n))],
//! };
//!
//! // Two devices write one entry each; op i of an entry stamped h is stamped h + i.
//! let entry = |millis, ops: Vec<TableOp>| -> Result<Payload, ValidationError> {
//!     let ops = ops.iter().map(TableOp::to_op).collect::<Result<_, _>>()?;
//!     Ok(Payload { hlc: Hlc::from_millis(millis), author: None, ops })
//! };
//! let a = entry(1, vec![create, likes, like(1)])?;
//! let b = entry(2, vec![like(2)])?;
//!
//! // Two replicas receive them in different orders.
//! let (mut x, mut y) = (TablesModel::new(), TablesModel::new());
//! x.apply_payload(&a)?;
//! x.apply_payload(&b)?;
//! y.apply_payload(&b)?; // data before schema is kept...
//! y.apply_payload(&a)?; // ...and shows once the table is defined
//! assert_eq!(x.dump(), y.dump());
//! assert_eq!(x.hidden_dump(), y.hidden_dump());
//! assert_eq!(x.dump().tables[0].rows[0].values, vec![Value::text("n1")?, Value::Integer(3)]);
//! # Ok(()) }
//! ```

mod budget;
mod error;
mod ids;
mod key;
mod merge;
mod model;
mod op;
mod value;

pub use budget::{MAX_CELLS_PER_PUT, MAX_COLUMNS_PER_TABLE, check_column_budget};
pub use error::{NameError, TableOpError, ValidationError};
pub use ids::{
    ColumnId, MAX_NAME_CHARS, MAX_STORED_NAME_BYTES, ParseIdError, RESERVED_NAME_PREFIXES, TableId,
    check_stored_name, is_reserved_name, validate_name,
};
pub use key::{MAX_KEY_BYTES, MAX_KEY_VALUES, RowKey};
pub use merge::{
    CellState, ColumnDef, CounterAdds, Definition, Definitions, MaxFrontier, NameState, RowState,
    TableDef, cell_write_survives, defined_after_drop, lww_wins, survives,
};
pub use model::{
    ColumnState, ColumnView, ConflictKind, HiddenDump, RowView, SchemaConflict, TableState,
    TableView, TablesDump, TablesModel, rows_not_shown,
};
pub use op::{CellWrite, PkColumn, TableOp, kind};
pub use value::{CANONICAL_NAN_BITS, ColumnType, MAX_VALUE_BYTES, MergeKind, Value, canonical_f64};
