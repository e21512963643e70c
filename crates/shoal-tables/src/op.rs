//! Table ops: what the table domain writes into entries, and their byte forms.
//!
//! Owns: [`TableOp`], [`PkColumn`], [`CellWrite`], the op kind numbers ([`kind`]) and the
//! op body encodings (`docs/TABLES.md` §3).
//!
//! Invariants:
//! - [`TableOp::decode`] accepts exactly the bodies [`TableOp::to_op`] can produce: every
//!   rule of [`TableOp::validate`] is also enforced while decoding (as
//!   [`TableOpError::Malformed`], with the offset of the problem), and whatever decodes
//!   re-encodes to the same bytes.
//! - An unknown kind is [`TableOpError::UnknownKind`], never `Malformed`, so a replica can
//!   tell "written by a newer version" from "corrupt".
//! - Decoding is bounded: every count and length has a cap checked before allocation.
//!
//! Never: applies anything (that is [`TablesModel`](crate::TablesModel) or a
//! materializer), or panics on input.

use std::collections::BTreeSet;

use shoal_core::codec::{
    DecodeError, DecodeProblem, Encode, Reader, put_bytes, put_signed_varint, put_varint,
};
use shoal_core::{Domain, Op};

use crate::error::{TableOpError, ValidationError};
use crate::ids::{ColumnId, TableId, check_stored_name, stored_name_problem};
use crate::key::{MAX_KEY_VALUES, RowKey};
use crate::value::{ColumnType, MergeKind, Value};

/// The op kind numbers of the table domain ([`Op::kind`] when `domain` is
/// [`Domain::TABLES`]). They are part of the format and never reused.
pub mod kind {
    /// [`TableOp::CreateTable`](crate::TableOp::CreateTable).
    pub const CREATE_TABLE: u32 = 1;
    /// [`TableOp::AddColumn`](crate::TableOp::AddColumn).
    pub const ADD_COLUMN: u32 = 2;
    /// [`TableOp::RenameTable`](crate::TableOp::RenameTable).
    pub const RENAME_TABLE: u32 = 3;
    /// [`TableOp::RenameColumn`](crate::TableOp::RenameColumn).
    pub const RENAME_COLUMN: u32 = 4;
    /// [`TableOp::DropTable`](crate::TableOp::DropTable).
    pub const DROP_TABLE: u32 = 5;
    /// [`TableOp::DropColumn`](crate::TableOp::DropColumn).
    pub const DROP_COLUMN: u32 = 6;
    /// [`TableOp::Put`](crate::TableOp::Put).
    pub const PUT: u32 = 16;
    /// [`TableOp::Delete`](crate::TableOp::Delete).
    pub const DELETE: u32 = 17;
}

use crate::budget::MAX_CELLS_PER_PUT;

/// Cell write tags.
const WRITE_SET: u8 = 0;
const WRITE_MAX: u8 = 1;
const WRITE_ADD: u8 = 2;

/// One primary-key column of a `CreateTable`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PkColumn {
    /// The column's id.
    pub column: ColumnId,
    /// Its name at creation.
    pub name: String,
    /// Its declared type.
    pub ty: ColumnType,
}

impl PkColumn {
    /// A primary-key column of `table` with the id derived from `name`.
    pub fn new(table: TableId, name: &str, ty: ColumnType) -> PkColumn {
        PkColumn { column: ColumnId::from_name(table, name), name: name.to_owned(), ty }
    }
}

/// One cell of a `Put`. The *writer* chooses the variant from the merge kind of the column
/// in its local schema; readers keep each kind's state apart, so a disagreement about the
/// merge kind loses nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CellWrite {
    /// A last-writer-wins write.
    Set(Value),
    /// A write to a max column.
    Max(Value),
    /// A counter increment (wrapping; negative decrements).
    Add(i64),
}

/// An operation of the table domain. Each op of an entry stamped `h` gets its own HLC
/// `h + position` (DESIGN §6); every merge rule compares those.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TableOp {
    /// Defines a table and its primary key (at least one column). Re-declaring an existing
    /// table is allowed; a different primary key is a definition conflict.
    CreateTable {
        /// The table's id.
        table: TableId,
        /// Its name (a name write at this op's HLC).
        name: String,
        /// The primary-key columns, in key order.
        primary_key: Vec<PkColumn>,
    },
    /// Defines a non-key column. A counter column must be INTEGER.
    AddColumn {
        /// The table.
        table: TableId,
        /// The column's id.
        column: ColumnId,
        /// Its name (a name write at this op's HLC).
        name: String,
        /// Its declared type.
        ty: ColumnType,
        /// How concurrent writes merge.
        merge: MergeKind,
    },
    /// Renames a table (last writer wins).
    RenameTable {
        /// The table.
        table: TableId,
        /// The new name.
        name: String,
    },
    /// Renames a column, key columns included (last writer wins).
    RenameColumn {
        /// The table.
        table: TableId,
        /// The column.
        column: ColumnId,
        /// The new name.
        name: String,
    },
    /// Hides a table and deletes its rows at this HLC.
    DropTable {
        /// The table.
        table: TableId,
    },
    /// Hides a column and its cells written up to this HLC. Ignored for the view while the
    /// column is part of the table's primary key.
    DropColumn {
        /// The table.
        table: TableId,
        /// The column.
        column: ColumnId,
    },
    /// Writes a row: its existence, and zero or more cells (each column at most once).
    Put {
        /// The table.
        table: TableId,
        /// The row.
        key: RowKey,
        /// The cells written.
        cells: Vec<(ColumnId, CellWrite)>,
    },
    /// Deletes a row (a tombstone at this HLC).
    Delete {
        /// The table.
        table: TableId,
        /// The row.
        key: RowKey,
    },
}

impl TableOp {
    /// An `AddColumn` with the column id derived from `name`.
    pub fn add_column(table: TableId, name: &str, ty: ColumnType, merge: MergeKind) -> TableOp {
        TableOp::AddColumn {
            table,
            column: ColumnId::from_name(table, name),
            name: name.to_owned(),
            ty,
            merge,
        }
    }

    /// The op kind number ([`kind`]).
    pub fn kind(&self) -> u32 {
        match self {
            TableOp::CreateTable { .. } => kind::CREATE_TABLE,
            TableOp::AddColumn { .. } => kind::ADD_COLUMN,
            TableOp::RenameTable { .. } => kind::RENAME_TABLE,
            TableOp::RenameColumn { .. } => kind::RENAME_COLUMN,
            TableOp::DropTable { .. } => kind::DROP_TABLE,
            TableOp::DropColumn { .. } => kind::DROP_COLUMN,
            TableOp::Put { .. } => kind::PUT,
            TableOp::Delete { .. } => kind::DELETE,
        }
    }

    /// The table the op is about.
    pub fn table(&self) -> TableId {
        match self {
            TableOp::CreateTable { table, .. }
            | TableOp::AddColumn { table, .. }
            | TableOp::RenameTable { table, .. }
            | TableOp::RenameColumn { table, .. }
            | TableOp::DropTable { table }
            | TableOp::DropColumn { table, .. }
            | TableOp::Put { table, .. }
            | TableOp::Delete { table, .. } => *table,
        }
    }

    /// Checks every rule a replica enforces when decoding: stored names (non-empty, no
    /// NUL, at most 256 bytes), a primary key of 1 to 16 distinct columns with distinct
    /// names, counter columns INTEGER, values valid (no NUL in text, sizes), at most 2000
    /// distinct cells per put.
    ///
    /// This does *not* apply [`validate_name`](crate::validate_name): local writers check
    /// that themselves, and remote names are never refused by it.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            TableOp::CreateTable { name, primary_key, .. } => {
                check_stored_name("table", name)?;
                if primary_key.is_empty() {
                    return Err(ValidationError::EmptyPrimaryKey);
                }
                if primary_key.len() > MAX_KEY_VALUES {
                    return Err(ValidationError::TooLarge {
                        what: "primary-key column count",
                        len: primary_key.len() as u64,
                        limit: MAX_KEY_VALUES as u64,
                    });
                }
                let mut ids = BTreeSet::new();
                let mut names = BTreeSet::new();
                for pk in primary_key {
                    check_stored_name("column", &pk.name)?;
                    if !ids.insert(pk.column) {
                        return Err(ValidationError::DuplicatePrimaryKeyColumn {
                            column: pk.column,
                        });
                    }
                    if !names.insert(pk.name.as_str()) {
                        return Err(ValidationError::DuplicatePrimaryKeyName {
                            name: pk.name.clone(),
                        });
                    }
                }
                Ok(())
            }
            TableOp::AddColumn { column, name, ty, merge, .. } => {
                check_stored_name("column", name)?;
                if *merge == MergeKind::Counter && *ty != ColumnType::Integer {
                    return Err(ValidationError::CounterNotInteger { column: *column, ty: *ty });
                }
                Ok(())
            }
            TableOp::RenameTable { name, .. } => check_stored_name("table", name),
            TableOp::RenameColumn { name, .. } => check_stored_name("column", name),
            TableOp::DropTable { .. } | TableOp::DropColumn { .. } | TableOp::Delete { .. } => {
                Ok(())
            }
            TableOp::Put { cells, .. } => {
                if cells.len() > MAX_CELLS_PER_PUT {
                    return Err(ValidationError::TooLarge {
                        what: "cell count",
                        len: cells.len() as u64,
                        limit: MAX_CELLS_PER_PUT as u64,
                    });
                }
                let mut seen = BTreeSet::new();
                for (column, write) in cells {
                    if !seen.insert(*column) {
                        return Err(ValidationError::DuplicateCell { column: *column });
                    }
                    match write {
                        CellWrite::Set(v) | CellWrite::Max(v) => v.validate()?,
                        CellWrite::Add(_) => {}
                    }
                }
                Ok(())
            }
        }
    }

    /// Validates the op and wraps its body in an [`Op`] of domain [`Domain::TABLES`].
    pub fn to_op(&self) -> Result<Op, ValidationError> {
        self.validate()?;
        Ok(Op { domain: Domain::TABLES, kind: self.kind(), body: self.to_bytes() })
    }

    /// Decodes a table op. Fails with [`TableOpError::WrongDomain`] for another domain,
    /// [`TableOpError::UnknownKind`] for a kind this version does not know (needs upgrade)
    /// and [`TableOpError::Malformed`] for a body that breaks the format or a rule.
    pub fn decode(op: &Op) -> Result<TableOp, TableOpError> {
        if op.domain != Domain::TABLES {
            return Err(TableOpError::WrongDomain { domain: op.domain.0 });
        }
        TableOp::decode_body(op.kind, &op.body)
    }

    /// Decodes the body of a table op of kind `kind`.
    pub fn decode_body(kind: u32, body: &[u8]) -> Result<TableOp, TableOpError> {
        let mut r = Reader::new(body);
        let op = match kind {
            kind::CREATE_TABLE => {
                let table = read_table(&mut r)?;
                let name = read_name(&mut r, "table name")?;
                let count = r.bounded_varint("primary-key column count", MAX_KEY_VALUES as u64)?;
                if count == 0 {
                    return Err(invalid(&r, "a table needs at least one primary-key column"));
                }
                let mut primary_key: Vec<PkColumn> = Vec::with_capacity(count);
                for _ in 0..count {
                    let at = r.offset();
                    let column = read_column(&mut r)?;
                    let name = read_name(&mut r, "column name")?;
                    let ty = ColumnType::read(&mut r)?;
                    if primary_key.iter().any(|p| p.column == column) {
                        return Err(invalid_at(at, "column appears twice in the primary key"));
                    }
                    if primary_key.iter().any(|p| p.name == name) {
                        return Err(invalid_at(at, "two primary-key columns have the same name"));
                    }
                    primary_key.push(PkColumn { column, name, ty });
                }
                TableOp::CreateTable { table, name, primary_key }
            }
            kind::ADD_COLUMN => {
                let table = read_table(&mut r)?;
                let column = read_column(&mut r)?;
                let name = read_name(&mut r, "column name")?;
                let ty = ColumnType::read(&mut r)?;
                let at = r.offset();
                let merge = MergeKind::read(&mut r)?;
                if merge == MergeKind::Counter && ty != ColumnType::Integer {
                    return Err(invalid_at(at, "a counter column must be INTEGER"));
                }
                TableOp::AddColumn { table, column, name, ty, merge }
            }
            kind::RENAME_TABLE => {
                let table = read_table(&mut r)?;
                let name = read_name(&mut r, "table name")?;
                TableOp::RenameTable { table, name }
            }
            kind::RENAME_COLUMN => {
                let table = read_table(&mut r)?;
                let column = read_column(&mut r)?;
                let name = read_name(&mut r, "column name")?;
                TableOp::RenameColumn { table, column, name }
            }
            kind::DROP_TABLE => TableOp::DropTable { table: read_table(&mut r)? },
            kind::DROP_COLUMN => {
                let table = read_table(&mut r)?;
                let column = read_column(&mut r)?;
                TableOp::DropColumn { table, column }
            }
            kind::PUT => {
                let table = read_table(&mut r)?;
                let key = RowKey::read(&mut r)?;
                let count = r.bounded_varint("cell count", MAX_CELLS_PER_PUT as u64)?;
                // Each cell takes at least 10 bytes, so the count cannot make us allocate
                // more than the input could fill.
                let mut cells = Vec::with_capacity(count.min(r.remaining() / 10));
                let mut seen = BTreeSet::new();
                for _ in 0..count {
                    let at = r.offset();
                    let column = read_column(&mut r)?;
                    if !seen.insert(column) {
                        return Err(invalid_at(at, "column written twice in one put"));
                    }
                    let tag_at = r.offset();
                    let write = match r.u8("cell write tag")? {
                        WRITE_SET => CellWrite::Set(Value::read(&mut r)?),
                        WRITE_MAX => CellWrite::Max(Value::read(&mut r)?),
                        WRITE_ADD => CellWrite::Add(r.signed_varint("counter increment")?),
                        other => {
                            return Err(TableOpError::Malformed(DecodeError {
                                offset: tag_at,
                                what: DecodeProblem::InvalidTag {
                                    what: "cell write tag",
                                    value: other.into(),
                                },
                            }));
                        }
                    };
                    cells.push((column, write));
                }
                TableOp::Put { table, key, cells }
            }
            kind::DELETE => {
                let table = read_table(&mut r)?;
                let key = RowKey::read(&mut r)?;
                TableOp::Delete { table, key }
            }
            other => return Err(TableOpError::UnknownKind { kind: other }),
        };
        r.finish()?;
        Ok(op)
    }
}

impl Encode for TableOp {
    /// Writes the op *body* (the kind travels in [`Op::kind`]). Does not validate: use
    /// [`TableOp::to_op`] to produce ops for a log.
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            TableOp::CreateTable { table, name, primary_key } => {
                out.extend_from_slice(&table.to_le_bytes());
                put_bytes(out, name.as_bytes());
                put_varint(out, primary_key.len() as u64);
                for pk in primary_key {
                    out.extend_from_slice(&pk.column.to_le_bytes());
                    put_bytes(out, pk.name.as_bytes());
                    out.push(pk.ty.code());
                }
            }
            TableOp::AddColumn { table, column, name, ty, merge } => {
                out.extend_from_slice(&table.to_le_bytes());
                out.extend_from_slice(&column.to_le_bytes());
                put_bytes(out, name.as_bytes());
                out.push(ty.code());
                out.push(merge.code());
            }
            TableOp::RenameTable { table, name } => {
                out.extend_from_slice(&table.to_le_bytes());
                put_bytes(out, name.as_bytes());
            }
            TableOp::RenameColumn { table, column, name } => {
                out.extend_from_slice(&table.to_le_bytes());
                out.extend_from_slice(&column.to_le_bytes());
                put_bytes(out, name.as_bytes());
            }
            TableOp::DropTable { table } => out.extend_from_slice(&table.to_le_bytes()),
            TableOp::DropColumn { table, column } => {
                out.extend_from_slice(&table.to_le_bytes());
                out.extend_from_slice(&column.to_le_bytes());
            }
            TableOp::Put { table, key, cells } => {
                out.extend_from_slice(&table.to_le_bytes());
                put_bytes(out, key.as_bytes());
                put_varint(out, cells.len() as u64);
                for (column, write) in cells {
                    out.extend_from_slice(&column.to_le_bytes());
                    match write {
                        CellWrite::Set(v) => {
                            out.push(WRITE_SET);
                            v.encode(out);
                        }
                        CellWrite::Max(v) => {
                            out.push(WRITE_MAX);
                            v.encode(out);
                        }
                        CellWrite::Add(n) => {
                            out.push(WRITE_ADD);
                            put_signed_varint(out, *n);
                        }
                    }
                }
            }
            TableOp::Delete { table, key } => {
                out.extend_from_slice(&table.to_le_bytes());
                put_bytes(out, key.as_bytes());
            }
        }
    }
}

fn invalid(r: &Reader<'_>, what: &'static str) -> TableOpError {
    TableOpError::Malformed(r.error(DecodeProblem::Invalid(what)))
}

fn invalid_at(offset: usize, what: &'static str) -> TableOpError {
    TableOpError::Malformed(DecodeError { offset, what: DecodeProblem::Invalid(what) })
}

fn read_table(r: &mut Reader<'_>) -> Result<TableId, DecodeError> {
    Ok(TableId(r.u64_le("table id")?))
}

fn read_column(r: &mut Reader<'_>) -> Result<ColumnId, DecodeError> {
    Ok(ColumnId(r.u64_le("column id")?))
}

fn read_name(r: &mut Reader<'_>, what: &'static str) -> Result<String, DecodeError> {
    let at = r.offset();
    let bytes = r.bytes(what, crate::ids::MAX_STORED_NAME_BYTES as u64)?;
    let name = std::str::from_utf8(bytes).map_err(|_| DecodeError {
        offset: at,
        what: DecodeProblem::Invalid("name is not UTF-8"),
    })?;
    if let Some(problem) = stored_name_problem(name) {
        return Err(DecodeError { offset: at, what: DecodeProblem::Invalid(problem) });
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_kind_is_distinct_from_malformed() {
        let op = Op { domain: Domain::TABLES, kind: 99, body: vec![] };
        let err = TableOp::decode(&op).unwrap_err();
        assert_eq!(err, TableOpError::UnknownKind { kind: 99 });
        assert!(err.needs_upgrade());
        let op = Op { domain: Domain::TABLES, kind: kind::DROP_TABLE, body: vec![1, 2] };
        let err = TableOp::decode(&op).unwrap_err();
        assert!(matches!(err, TableOpError::Malformed(_)));
        assert!(!err.needs_upgrade());
        let op = Op { domain: Domain::DOCS, kind: kind::DROP_TABLE, body: vec![0; 8] };
        assert_eq!(TableOp::decode(&op).unwrap_err(), TableOpError::WrongDomain { domain: 2 });
    }

    #[test]
    fn drop_table_vector() {
        let op = TableOp::DropTable { table: TableId(0x0102030405060708) }.to_op().unwrap();
        assert_eq!(op.kind, 5);
        assert_eq!(op.body, [8, 7, 6, 5, 4, 3, 2, 1]);
    }

    #[test]
    fn counter_must_be_integer() {
        let t = TableId::from_name("t");
        let op = TableOp::add_column(t, "n", ColumnType::Text, MergeKind::Counter);
        assert!(matches!(op.validate(), Err(ValidationError::CounterNotInteger { .. })));
        let bytes = op.to_bytes();
        assert!(matches!(
            TableOp::decode_body(kind::ADD_COLUMN, &bytes),
            Err(TableOpError::Malformed(_))
        ));
    }

    fn pk(n: u64) -> Vec<PkColumn> {
        (0..n)
            .map(|i| PkColumn { column: ColumnId(i), name: format!("k{i}"), ty: ColumnType::Any })
            .collect()
    }

    fn put(cells: Vec<(ColumnId, CellWrite)>) -> TableOp {
        let key = RowKey::from_values(&[Value::Integer(1)]).unwrap();
        TableOp::Put { table: TableId(1), key, cells }
    }

    fn malformed(offset: usize, what: &'static str) -> Result<TableOp, TableOpError> {
        Err(TableOpError::Malformed(DecodeError { offset, what: DecodeProblem::Invalid(what) }))
    }

    #[test]
    fn op_limits_are_inclusive_on_both_sides() {
        let create =
            |n| TableOp::CreateTable { table: TableId(1), name: "t".into(), primary_key: pk(n) };
        let sixteen = create(16);
        assert_eq!(sixteen.validate(), Ok(()));
        let back = TableOp::decode(&sixteen.to_op().unwrap()).unwrap();
        assert_eq!(back, sixteen);
        assert_eq!(
            create(17).validate(),
            Err(ValidationError::TooLarge { what: "primary-key column count", len: 17, limit: 16 })
        );
        assert!(TableOp::decode_body(kind::CREATE_TABLE, &create(17).to_bytes()).is_err());
        assert_eq!(create(0).validate(), Err(ValidationError::EmptyPrimaryKey));
        // The count check points after the count.
        let empty = create(0).to_bytes();
        assert_eq!(
            TableOp::decode_body(kind::CREATE_TABLE, &empty),
            malformed(empty.len(), "a table needs at least one primary-key column")
        );

        let cells = |n: u64| (0..n).map(|i| (ColumnId(i), CellWrite::Add(1))).collect();
        let full = put(cells(2000));
        assert_eq!(full.validate(), Ok(()));
        assert_eq!(TableOp::decode(&full.to_op().unwrap()).unwrap(), full);
        let over = put(cells(2001));
        assert_eq!(
            over.validate(),
            Err(ValidationError::TooLarge { what: "cell count", len: 2001, limit: 2000 })
        );
        assert!(TableOp::decode_body(kind::PUT, &over.to_bytes()).is_err());
    }

    #[test]
    fn validate_names_each_broken_rule() {
        let t = TableId(1);
        let dup_id = TableOp::CreateTable {
            table: t,
            name: "t".into(),
            primary_key: vec![
                PkColumn { column: ColumnId(5), name: "a".into(), ty: ColumnType::Any },
                PkColumn { column: ColumnId(5), name: "b".into(), ty: ColumnType::Any },
            ],
        };
        assert_eq!(
            dup_id.validate(),
            Err(ValidationError::DuplicatePrimaryKeyColumn { column: ColumnId(5) })
        );
        let dup_name = TableOp::CreateTable {
            table: t,
            name: "t".into(),
            primary_key: vec![
                PkColumn { column: ColumnId(5), name: "a".into(), ty: ColumnType::Any },
                PkColumn { column: ColumnId(6), name: "a".into(), ty: ColumnType::Any },
            ],
        };
        assert_eq!(
            dup_name.validate(),
            Err(ValidationError::DuplicatePrimaryKeyName { name: "a".into() })
        );
        // Decoding points at the start of the repeated column: 8 (table) + 2 (name) + 1
        // (count) + 11 (first column: id, bytes("a"), type).
        assert_eq!(
            TableOp::decode_body(kind::CREATE_TABLE, &dup_id.to_bytes()),
            malformed(22, "column appears twice in the primary key")
        );
        assert_eq!(
            TableOp::decode_body(kind::CREATE_TABLE, &dup_name.to_bytes()),
            malformed(22, "two primary-key columns have the same name")
        );
        let bad_key_name = TableOp::CreateTable {
            table: t,
            name: "t".into(),
            primary_key: vec![PkColumn {
                column: ColumnId(5),
                name: String::new(),
                ty: ColumnType::Any,
            }],
        };
        assert!(matches!(
            bad_key_name.validate(),
            Err(ValidationError::BadStoredName { what: "column", .. })
        ));
        // Only a counter must be INTEGER, and an INTEGER counter is fine.
        for (ty, merge, ok) in [
            (ColumnType::Integer, MergeKind::Counter, true),
            (ColumnType::Any, MergeKind::Counter, false),
            (ColumnType::Text, MergeKind::Lww, true),
            (ColumnType::Real, MergeKind::Max, true),
        ] {
            let op =
                TableOp::AddColumn { table: t, column: ColumnId(9), name: "n".into(), ty, merge };
            assert_eq!(op.validate().is_ok(), ok, "{ty} {merge}");
            assert_eq!(TableOp::decode_body(kind::ADD_COLUMN, &op.to_bytes()).is_ok(), ok);
        }
        let any_counter = TableOp::AddColumn {
            table: t,
            column: ColumnId(9),
            name: "n".into(),
            ty: ColumnType::Any,
            merge: MergeKind::Counter,
        };
        // 16 bytes of ids, bytes("n"), the type byte, then the merge byte at 19.
        assert_eq!(
            TableOp::decode_body(kind::ADD_COLUMN, &any_counter.to_bytes()),
            malformed(19, "a counter column must be INTEGER")
        );
        for op in [
            TableOp::AddColumn {
                table: t,
                column: ColumnId(9),
                name: String::new(),
                ty: ColumnType::Any,
                merge: MergeKind::Lww,
            },
            TableOp::RenameTable { table: t, name: "a\0".into() },
            TableOp::RenameColumn { table: t, column: ColumnId(1), name: String::new() },
        ] {
            assert!(matches!(op.validate(), Err(ValidationError::BadStoredName { .. })), "{op:?}");
        }
        // Put cells: distinct columns, valid values in Set and Max.
        let c = ColumnId(3);
        assert_eq!(
            put(vec![(c, CellWrite::Add(1)), (c, CellWrite::Add(2))]).validate(),
            Err(ValidationError::DuplicateCell { column: c })
        );
        let nul = Value::Text("\0".into());
        for w in [CellWrite::Set(nul.clone()), CellWrite::Max(nul)] {
            assert_eq!(
                put(vec![(c, w)]).validate(),
                Err(ValidationError::TextContainsNul { position: 0 })
            );
        }
        let dup = put(vec![(c, CellWrite::Add(1)), (c, CellWrite::Add(2))]).to_bytes();
        // 8 (table) + 3 (bytes(key)) + 1 (count) + 10 (first cell) = 22.
        assert_eq!(
            TableOp::decode_body(kind::PUT, &dup),
            malformed(22, "column written twice in one put")
        );
        let mut bad_tag = put(vec![(c, CellWrite::Add(1))]).to_bytes();
        bad_tag[20] = 3;
        assert_eq!(
            TableOp::decode_body(kind::PUT, &bad_tag),
            Err(TableOpError::Malformed(DecodeError {
                offset: 20,
                what: DecodeProblem::InvalidTag { what: "cell write tag", value: 3 }
            }))
        );
        for op in [TableOp::DropTable { table: t }, TableOp::DropColumn { table: t, column: c }] {
            assert_eq!(op.validate(), Ok(()));
        }
    }

    #[test]
    fn kinds_tables_and_domain() {
        let t = TableId(42);
        let c = ColumnId(1);
        let key = RowKey::from_values(&[Value::Integer(1)]).unwrap();
        let ops = [
            (TableOp::CreateTable { table: t, name: "t".into(), primary_key: pk(1) }, 1),
            (TableOp::add_column(t, "n", ColumnType::Any, MergeKind::Lww), 2),
            (TableOp::RenameTable { table: t, name: "u".into() }, 3),
            (TableOp::RenameColumn { table: t, column: c, name: "v".into() }, 4),
            (TableOp::DropTable { table: t }, 5),
            (TableOp::DropColumn { table: t, column: c }, 6),
            (TableOp::Put { table: t, key: key.clone(), cells: vec![] }, 16),
            (TableOp::Delete { table: t, key }, 17),
        ];
        for (op, k) in ops {
            assert_eq!(op.kind(), k);
            assert_eq!(op.table(), t);
            let wrapped = op.to_op().unwrap();
            assert_eq!(wrapped.domain, Domain::TABLES);
            assert_eq!(TableOp::decode(&wrapped), Ok(op));
        }
        assert_eq!(
            TableOp::add_column(t, "n", ColumnType::Blob, MergeKind::Max),
            TableOp::AddColumn {
                table: t,
                column: ColumnId::from_name(t, "n"),
                name: "n".into(),
                ty: ColumnType::Blob,
                merge: MergeKind::Max
            }
        );
        assert_eq!(PkColumn::new(t, "k", ColumnType::Text).column, ColumnId::from_name(t, "k"));
    }
}
