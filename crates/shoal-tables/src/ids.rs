//! Table and column ids, and the rules for names.
//!
//! Owns: [`TableId`], [`ColumnId`] (and [`ParseIdError`]), [`validate_name`] (the rule
//! for names a *local* caller declares) and [`check_stored_name`] (the weaker rule every
//! replica enforces on names in ops, [`MAX_STORED_NAME_BYTES`]).
//!
//! Invariants: ids are derived deterministically from names at creation
//! (`docs/TABLES.md` §1), so two devices that declare the same schema offline agree without
//! coordination. After creation a name is only a label: renames keep ids, and nothing ever
//! derives an id from a *current* name.
//!
//! Never: rejects a name received from another device because it breaks
//! [`validate_name`]. Remote names are stored as they come; only
//! [`check_stored_name`]'s structural rules make an op malformed.

use std::fmt;
use std::str::FromStr;

use crate::error::{NameError, ValidationError};

const TABLE_ID_CONTEXT: &str = "shoal 2026-11 table id v1";
const COLUMN_ID_CONTEXT: &str = "shoal 2026-11 column id v1";

/// The longest name (in bytes) an op may carry.
pub const MAX_STORED_NAME_BYTES: usize = 256;

/// The longest name (in characters) [`validate_name`] accepts.
pub const MAX_NAME_CHARS: usize = 64;

fn derive_u64(context: &str, parts: &[&[u8]]) -> u64 {
    let mut h = blake3::Hasher::new_derive_key(context);
    for p in parts {
        h.update(p);
    }
    let out = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&out.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// A table or column id could not be parsed from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected an id of exactly 16 hex digits, got {0:?}")]
pub struct ParseIdError(pub String);

macro_rules! id8 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub u64);

        impl $name {
            /// The id as a `u64`.
            pub const fn as_u64(self) -> u64 {
                self.0
            }

            /// The 8 bytes that encode it (little-endian).
            pub const fn to_le_bytes(self) -> [u8; 8] {
                self.0.to_le_bytes()
            }
        }

        impl fmt::Display for $name {
            /// 16 lowercase hex digits of the `u64`.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:016x}", self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:016x})"), self.0)
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;

            /// Parses the form written by `Display`: exactly 16 hex digits (any case).
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(ParseIdError(s.chars().take(40).collect()));
                }
                u64::from_str_radix(s, 16).map($name).map_err(|_| ParseIdError(s.to_owned()))
            }
        }
    };
}

id8! {
    /// A table's stable id: 8 bytes, derived from the table's name at creation.
    TableId
}

id8! {
    /// A column's stable id: 8 bytes, derived from its table's id and its name at creation.
    ColumnId
}

impl TableId {
    /// The id of a table created with `name`: the first 8 bytes (as a little-endian
    /// `u64`) of `blake3_derive("shoal 2026-11 table id v1", utf8(name))`.
    pub fn from_name(name: &str) -> TableId {
        TableId(derive_u64(TABLE_ID_CONTEXT, &[name.as_bytes()]))
    }
}

impl ColumnId {
    /// The id of a column created with `name` in `table`: the first 8 bytes (as a
    /// little-endian `u64`) of
    /// `blake3_derive("shoal 2026-11 column id v1", u64le(table) || utf8(name))`.
    pub fn from_name(table: TableId, name: &str) -> ColumnId {
        ColumnId(derive_u64(COLUMN_ID_CONTEXT, &[&table.to_le_bytes(), name.as_bytes()]))
    }
}

/// Checks a name a local caller wants to declare (table or column, create or rename):
/// 1 to 64 characters from `[A-Za-z_][A-Za-z0-9_]*`, not a [reserved name](is_reserved_name).
///
/// Only for local declarations: names received from other devices are stored as they come;
/// a received reserved name is a schema conflict (`ConflictKind::ReservedName`), never a
/// view.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    let mut chars = name.chars();
    let Some(first) = chars.next() else { return Err(NameError::Empty) };
    if !(first.is_ascii_alphabetic() || first == '_') {
        return Err(NameError::BadStart { name: name.to_owned(), found: first });
    }
    if let Some((i, c)) =
        name.chars().enumerate().find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_'))
    {
        return Err(NameError::BadCharacter { name: name.to_owned(), found: c, position: i });
    }
    // Only ASCII remains, so the byte length is the character count.
    if name.len() > MAX_NAME_CHARS {
        return Err(NameError::TooLong { name: name.to_owned(), len: name.len() });
    }
    if is_reserved_name(name) {
        return Err(NameError::Reserved { name: name.to_owned() });
    }
    Ok(())
}

/// The name prefixes (ASCII case-insensitive) reserved for Shoal's hidden tables and
/// SQLite's internal ones.
pub const RESERVED_NAME_PREFIXES: [&str; 2] = ["shoal_", "sqlite_"];

/// True if `name` starts with a [reserved prefix](RESERVED_NAME_PREFIXES) in any case. No
/// table or column may be shown under such a name: a view named `shoal_meta` could not be
/// created, and a query of that name would read the hidden table instead.
pub fn is_reserved_name(name: &str) -> bool {
    RESERVED_NAME_PREFIXES.iter().any(|p| {
        name.len() >= p.len() && name.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
    })
}

/// Checks the structural rules every replica enforces on a name carried by an op:
/// non-empty, no NUL, at most [`MAX_STORED_NAME_BYTES`] bytes (UTF-8 is guaranteed by
/// `&str`). `what` is "table" or "column", for the message.
pub fn check_stored_name(what: &'static str, name: &str) -> Result<(), ValidationError> {
    stored_name_problem(name).map_or(Ok(()), |problem| {
        let shown: String = name.chars().take(80).collect();
        Err(ValidationError::BadStoredName { what, name: shown, problem })
    })
}

/// What is wrong with a stored name, if anything.
pub(crate) fn stored_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_STORED_NAME_BYTES {
        Some("it is longer than 256 bytes")
    } else if name.contains('\0') {
        Some("it contains NUL")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_displayed_as_16_hex_digits() {
        let t = TableId::from_name("notes");
        assert_eq!(t, TableId::from_name("notes"));
        assert_ne!(t, TableId::from_name("Notes"));
        let c = ColumnId::from_name(t, "id");
        assert_ne!(c, ColumnId::from_name(TableId::from_name("other"), "id"));
        assert_eq!(t.to_string().len(), 16);
        assert_eq!(t.to_string().parse::<TableId>().unwrap(), t);
        assert_eq!(TableId(1).to_string(), "0000000000000001");
        assert!("1".parse::<TableId>().is_err());
        assert!("+000000000000001".parse::<TableId>().is_err());
        assert_eq!("00000000000000FF".parse::<ColumnId>().unwrap(), ColumnId(255));
    }

    #[test]
    fn id_derivation_matches_blake3_directly() {
        let mut h = blake3::Hasher::new_derive_key("shoal 2026-11 table id v1");
        h.update(b"notes");
        let b = *h.finalize().as_bytes();
        assert_eq!(TableId::from_name("notes").0, u64::from_le_bytes(b[..8].try_into().unwrap()));
    }

    #[test]
    fn name_rules() {
        for ok in ["a", "_", "Notes_2", "shoal", "shoalx", &"a".repeat(64)] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert!(matches!(validate_name("1a"), Err(NameError::BadStart { found: '1', .. })));
        assert!(matches!(
            validate_name("a-b"),
            Err(NameError::BadCharacter { found: '-', position: 1, .. })
        ));
        assert!(matches!(validate_name("é"), Err(NameError::BadStart { .. })));
        assert!(matches!(validate_name(&"a".repeat(65)), Err(NameError::TooLong { len: 65, .. })));
        assert!(matches!(validate_name("shoal_x"), Err(NameError::Reserved { .. })));
        assert!(matches!(validate_name("SHOAL_"), Err(NameError::Reserved { .. })));
        for reserved in ["sqlite_master", "SQLite_x", "sqlite_", "Shoal_Meta"] {
            assert!(
                matches!(validate_name(reserved), Err(NameError::Reserved { .. })),
                "{reserved}"
            );
        }
        for ok in ["sqlite", "sqlitex", "my_sqlite_t", "shoalmeta"] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn stored_name_rules() {
        assert!(check_stored_name("table", "any name, even with spaces é").is_ok());
        assert!(check_stored_name("table", "").is_err());
        assert!(check_stored_name("table", "a\0b").is_err());
        assert!(check_stored_name("table", &"x".repeat(257)).is_err());
        assert!(check_stored_name("table", &"x".repeat(256)).is_ok());
    }

    #[test]
    fn stored_name_errors_say_what_and_shorten_the_name() {
        let problem = |name: &str| match check_stored_name("column", name) {
            Err(ValidationError::BadStoredName { what, name, problem }) => {
                assert_eq!(what, "column");
                Some((name, problem))
            }
            Err(other) => panic!("{other:?}"),
            Ok(()) => None,
        };
        assert_eq!(problem(""), Some((String::new(), "it is empty")));
        assert_eq!(problem("a\0"), Some(("a\0".into(), "it contains NUL")));
        let long = "é".repeat(129); // 258 bytes
        assert_eq!(problem(&long), Some(("é".repeat(80), "it is longer than 256 bytes")));
        assert_eq!(problem(&"é".repeat(128)), None, "256 bytes");
    }

    #[test]
    fn ids_as_numbers_bytes_and_debug() {
        let t = TableId(0x0102_0304_0506_0708);
        assert_eq!(t.as_u64(), 0x0102_0304_0506_0708);
        assert_eq!(t.to_le_bytes(), [8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(format!("{t:?}"), "TableId(0102030405060708)");
        assert_eq!(format!("{:?}", ColumnId(255)), "ColumnId(00000000000000ff)");
        assert_eq!(ColumnId(255).to_string(), "00000000000000ff");
        assert_eq!(ColumnId(3).as_u64(), 3);
        assert_eq!(ColumnId(3).to_le_bytes(), [3, 0, 0, 0, 0, 0, 0, 0]);
        // Column ids mix in the table id's bytes and the name, under their own context.
        let mut h = blake3::Hasher::new_derive_key("shoal 2026-11 column id v1");
        h.update(&t.to_le_bytes());
        h.update(b"id");
        let b = *h.finalize().as_bytes();
        assert_eq!(ColumnId::from_name(t, "id").0, u64::from_le_bytes(b[..8].try_into().unwrap()));
        assert_eq!("0102030405060708".parse::<TableId>(), Ok(t));
        assert_eq!("ffffffffffffffff".parse::<ColumnId>(), Ok(ColumnId(u64::MAX)));
        for bad in
            ["", "010203040506070", "01020304050607080", "010203040506070g", "0x02030405060708"]
        {
            assert_eq!(bad.parse::<TableId>(), Err(ParseIdError(bad.into())), "{bad}");
        }
        let long = "z".repeat(50);
        assert_eq!(long.parse::<ColumnId>(), Err(ParseIdError("z".repeat(40))));
    }

    #[test]
    fn reserved_names_are_the_prefixes_in_any_case() {
        for name in ["shoal_", "SHOAL_x", "sqlite_", "SqLiTe_master"] {
            assert!(is_reserved_name(name), "{name}");
        }
        for name in ["shoal", "sqlite", "shoalx", "_shoal_", "s", ""] {
            assert!(!is_reserved_name(name), "{name}");
        }
        assert!(matches!(validate_name("_x"), Ok(())));
        assert!(matches!(validate_name("a_1"), Ok(())));
        assert!(matches!(
            validate_name("ab c"),
            Err(NameError::BadCharacter { found: ' ', position: 2, .. })
        ));
        assert!(matches!(validate_name("_-"), Err(NameError::BadCharacter { position: 1, .. })));
    }
}
