//! Cell values, their total order and their canonical bytes; column types and merge kinds.
//!
//! Owns: [`Value`], [`ColumnType`], [`MergeKind`], [`canonical_f64`] and the value byte
//! form (`docs/TABLES.md` §2).
//!
//! Invariants:
//! - [`Value`]'s `Ord` is total and is the tie-break order of every merge rule:
//!   NULL < INTEGER < REAL < TEXT < BLOB; integers numerically, reals by IEEE-754 total
//!   order ([`f64::total_cmp`], so -0.0 < +0.0), text and blobs bytewise. `Eq` and `Hash`
//!   agree with it.
//! - **Canonical NaN.** Every NaN means the one NaN whose bits are [`CANONICAL_NAN_BITS`].
//!   [`Value::real`] canonicalizes, comparison and hashing treat any NaN as it, the encoder
//!   writes only it, and the decoder *rejects* any other NaN bit pattern (so bytes stay
//!   canonical: whatever decodes re-encodes to the same bytes).
//! - TEXT never contains NUL: [`Value::text`] refuses it, the decoder rejects it.
//! - Every value has exactly one byte form; decoding is bounded by [`MAX_VALUE_BYTES`].
//!
//! Never: converts between types (an INTEGER 1 and a REAL 1.0 are different values), or
//! panics on input.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

use shoal_core::codec::{DecodeError, DecodeProblem, Encode, Reader, put_bytes, put_signed_varint};

use crate::error::ValidationError;

/// The bit pattern of the one NaN Shoal stores (the positive quiet NaN with an empty
/// payload). It sorts after `+inf` in the total order.
pub const CANONICAL_NAN_BITS: u64 = 0x7ff8_0000_0000_0000;

/// The largest TEXT or BLOB value, in bytes.
pub const MAX_VALUE_BYTES: u64 = 8 << 20;

/// Byte tags of the value encoding; their order is the type order.
const TAG_NULL: u8 = 0;
const TAG_INTEGER: u8 = 1;
const TAG_REAL: u8 = 2;
const TAG_TEXT: u8 = 3;
const TAG_BLOB: u8 = 4;

/// Replaces any NaN by the canonical NaN; other floats are returned unchanged.
pub fn canonical_f64(f: f64) -> f64 {
    if f.is_nan() { f64::from_bits(CANONICAL_NAN_BITS) } else { f }
}

/// A cell value.
///
/// Build TEXT with [`Value::text`] (which refuses NUL) and REAL with [`Value::real`]
/// (which canonicalizes NaN). The variants are public for matching; a `Real` holding a
/// non-canonical NaN still behaves as the canonical NaN everywhere.
#[derive(Clone)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A 64-bit signed integer.
    Integer(i64),
    /// A 64-bit float.
    Real(f64),
    /// UTF-8 text without NUL.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

impl Value {
    /// A REAL value, with NaN canonicalized.
    pub fn real(f: f64) -> Value {
        Value::Real(canonical_f64(f))
    }

    /// A TEXT value; fails if `s` contains NUL or is larger than [`MAX_VALUE_BYTES`].
    pub fn text(s: impl Into<String>) -> Result<Value, ValidationError> {
        let v = Value::Text(s.into());
        v.validate()?;
        Ok(v)
    }

    /// A BLOB value; fails if it is larger than [`MAX_VALUE_BYTES`].
    pub fn blob(b: impl Into<Vec<u8>>) -> Result<Value, ValidationError> {
        let v = Value::Blob(b.into());
        v.validate()?;
        Ok(v)
    }

    /// Checks the rules the decoder enforces: no NUL in TEXT, size limits.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            Value::Text(s) => {
                check_size("text value", s.len())?;
                if let Some(position) = s.bytes().position(|b| b == 0) {
                    return Err(ValidationError::TextContainsNul { position });
                }
                Ok(())
            }
            Value::Blob(b) => check_size("blob value", b.len()),
            Value::Null | Value::Integer(_) | Value::Real(_) => Ok(()),
        }
    }

    /// The SQL name of the value's type.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Integer(_) => "INTEGER",
            Value::Real(_) => "REAL",
            Value::Text(_) => "TEXT",
            Value::Blob(_) => "BLOB",
        }
    }

    /// True for NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Decodes one value that fills all of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Value, DecodeError> {
        let mut r = Reader::new(bytes);
        let v = Value::read(&mut r)?;
        r.finish()?;
        Ok(v)
    }

    /// Reads one value from `r` (see `docs/TABLES.md` §2 for the form).
    pub fn read(r: &mut Reader<'_>) -> Result<Value, DecodeError> {
        let at = r.offset();
        match r.u8("value tag")? {
            TAG_NULL => Ok(Value::Null),
            TAG_INTEGER => Ok(Value::Integer(r.signed_varint("integer value")?)),
            TAG_REAL => {
                let at = r.offset();
                let bits = r.u64_le("real value")?;
                let f = f64::from_bits(bits);
                if f.is_nan() && bits != CANONICAL_NAN_BITS {
                    return Err(DecodeError {
                        offset: at,
                        what: DecodeProblem::Invalid("non-canonical NaN"),
                    });
                }
                Ok(Value::Real(f))
            }
            TAG_TEXT => {
                let bytes = r.bytes("text value", MAX_VALUE_BYTES)?;
                // Offsets of errors inside the text count from its first byte.
                let at = r.offset() - bytes.len();
                let s = std::str::from_utf8(bytes).map_err(|e| DecodeError {
                    offset: at + e.valid_up_to(),
                    what: DecodeProblem::Invalid("text value is not UTF-8"),
                })?;
                if let Some(p) = bytes.iter().position(|&b| b == 0) {
                    return Err(DecodeError {
                        offset: at + p,
                        what: DecodeProblem::Invalid("text value contains NUL"),
                    });
                }
                Ok(Value::Text(s.to_owned()))
            }
            TAG_BLOB => Ok(Value::Blob(r.bytes("blob value", MAX_VALUE_BYTES)?.to_vec())),
            other => Err(DecodeError {
                offset: at,
                what: DecodeProblem::InvalidTag { what: "value tag", value: other.into() },
            }),
        }
    }

    /// Position of the value's type in the type order.
    fn rank(&self) -> u8 {
        match self {
            Value::Null => TAG_NULL,
            Value::Integer(_) => TAG_INTEGER,
            Value::Real(_) => TAG_REAL,
            Value::Text(_) => TAG_TEXT,
            Value::Blob(_) => TAG_BLOB,
        }
    }
}

fn check_size(what: &'static str, len: usize) -> Result<(), ValidationError> {
    let len = len as u64;
    if len > MAX_VALUE_BYTES {
        return Err(ValidationError::TooLarge { what, len, limit: MAX_VALUE_BYTES });
    }
    Ok(())
}

impl Encode for Value {
    /// Writes the canonical form. A NaN is always written as [`CANONICAL_NAN_BITS`]. The
    /// encoder does not check the other rules; see [`Value::validate`].
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.rank());
        match self {
            Value::Null => {}
            Value::Integer(i) => put_signed_varint(out, *i),
            Value::Real(f) => out.extend_from_slice(&canonical_f64(*f).to_bits().to_le_bytes()),
            Value::Text(s) => put_bytes(out, s.as_bytes()),
            Value::Blob(b) => put_bytes(out, b),
        }
    }
}

impl Ord for Value {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Value::Null, Value::Null) => Ordering::Equal,
            (Value::Integer(a), Value::Integer(b)) => a.cmp(b),
            (Value::Real(a), Value::Real(b)) => canonical_f64(*a).total_cmp(&canonical_f64(*b)),
            (Value::Text(a), Value::Text(b)) => a.as_bytes().cmp(b.as_bytes()),
            (Value::Blob(a), Value::Blob(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Value {}

impl Hash for Value {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.rank().hash(state);
        match self {
            Value::Null => {}
            Value::Integer(i) => i.hash(state),
            Value::Real(f) => canonical_f64(*f).to_bits().hash(state),
            Value::Text(s) => s.hash(state),
            Value::Blob(b) => b.hash(state),
        }
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => write!(f, "Null"),
            Value::Integer(i) => write!(f, "Integer({i})"),
            Value::Real(x) => write!(f, "Real({:?})", canonical_f64(*x)),
            Value::Text(s) => write!(f, "Text({s:?})"),
            Value::Blob(b) => {
                write!(f, "Blob(")?;
                for byte in b {
                    write!(f, "{byte:02x}")?;
                }
                write!(f, ")")
            }
        }
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Integer(i)
    }
}

impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::real(f)
    }
}

/// The declared type of a column. It constrains what a *local* writer may put in the
/// column ([`ColumnType::accepts`]); merged values from other devices are shown as they
/// are, whatever their type (data is never dropped or converted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ColumnType {
    /// Any value.
    Any,
    /// INTEGER or NULL.
    Integer,
    /// REAL or NULL (an INTEGER is not converted: the writer converts if it wants to).
    Real,
    /// TEXT or NULL.
    Text,
    /// BLOB or NULL.
    Blob,
}

impl ColumnType {
    /// Every type, in code order.
    pub const ALL: [ColumnType; 5] = [
        ColumnType::Any,
        ColumnType::Integer,
        ColumnType::Real,
        ColumnType::Text,
        ColumnType::Blob,
    ];

    /// True if a column of this type may hold `v`. NULL is accepted by every type.
    pub fn accepts(self, v: &Value) -> bool {
        matches!(
            (self, v),
            (_, Value::Null)
                | (ColumnType::Any, _)
                | (ColumnType::Integer, Value::Integer(_))
                | (ColumnType::Real, Value::Real(_))
                | (ColumnType::Text, Value::Text(_))
                | (ColumnType::Blob, Value::Blob(_))
        )
    }

    /// The byte that encodes this type.
    pub fn code(self) -> u8 {
        match self {
            ColumnType::Any => 0,
            ColumnType::Integer => 1,
            ColumnType::Real => 2,
            ColumnType::Text => 3,
            ColumnType::Blob => 4,
        }
    }

    /// The type a byte encodes, if any.
    pub fn from_code(code: u8) -> Option<ColumnType> {
        ColumnType::ALL.get(usize::from(code)).copied()
    }

    /// The SQL name (`ANY`, `INTEGER`, `REAL`, `TEXT`, `BLOB`).
    pub fn sql_name(self) -> &'static str {
        match self {
            ColumnType::Any => "ANY",
            ColumnType::Integer => "INTEGER",
            ColumnType::Real => "REAL",
            ColumnType::Text => "TEXT",
            ColumnType::Blob => "BLOB",
        }
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<ColumnType, DecodeError> {
        let at = r.offset();
        let code = r.u8("column type")?;
        ColumnType::from_code(code).ok_or(DecodeError {
            offset: at,
            what: DecodeProblem::InvalidTag { what: "column type", value: code.into() },
        })
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.sql_name())
    }
}

/// How concurrent writes to a column merge (DESIGN §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MergeKind {
    /// Last writer wins: the greatest `(hlc, value)`.
    Lww,
    /// The wrapping sum of increments.
    Counter,
    /// The greatest value written.
    Max,
}

impl MergeKind {
    /// Every merge kind, in code order.
    pub const ALL: [MergeKind; 3] = [MergeKind::Lww, MergeKind::Counter, MergeKind::Max];

    /// The byte that encodes this kind.
    pub fn code(self) -> u8 {
        match self {
            MergeKind::Lww => 0,
            MergeKind::Counter => 1,
            MergeKind::Max => 2,
        }
    }

    /// The kind a byte encodes, if any.
    pub fn from_code(code: u8) -> Option<MergeKind> {
        MergeKind::ALL.get(usize::from(code)).copied()
    }

    /// The value a visible row shows when the column has no surviving write: 0 for a
    /// counter, NULL otherwise.
    pub fn empty_value(self) -> Value {
        match self {
            MergeKind::Counter => Value::Integer(0),
            MergeKind::Lww | MergeKind::Max => Value::Null,
        }
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<MergeKind, DecodeError> {
        let at = r.offset();
        let code = r.u8("merge kind")?;
        MergeKind::from_code(code).ok_or(DecodeError {
            offset: at,
            what: DecodeProblem::InvalidTag { what: "merge kind", value: code.into() },
        })
    }
}

impl fmt::Display for MergeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MergeKind::Lww => "lww",
            MergeKind::Counter => "counter",
            MergeKind::Max => "max",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_order() {
        let ordered = [
            Value::Null,
            Value::Integer(i64::MIN),
            Value::Integer(7),
            Value::real(f64::NEG_INFINITY),
            Value::real(-0.0),
            Value::real(0.0),
            Value::real(f64::INFINITY),
            Value::real(f64::NAN),
            Value::Text(String::new()),
            Value::Text("a".into()),
            Value::Text("é".into()),
            Value::Blob(vec![]),
            Value::Blob(vec![0]),
        ];
        for w in ordered.windows(2) {
            assert!(w[0] < w[1], "{:?} < {:?}", w[0], w[1]);
        }
    }

    #[test]
    fn vectors() {
        let cases: &[(Value, &[u8])] = &[
            (Value::Null, &[0]),
            (Value::Integer(-1), &[1, 1]),
            (Value::Integer(64), &[1, 0x80, 0x01]),
            (Value::real(1.0), &[2, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f]),
            (Value::real(f64::NAN), &[2, 0, 0, 0, 0, 0, 0, 0xf8, 0x7f]),
            (Value::Text("hi".into()), &[3, 2, b'h', b'i']),
            (Value::Blob(vec![9]), &[4, 1, 9]),
        ];
        for (v, bytes) in cases {
            assert_eq!(&v.to_bytes(), bytes, "{v:?}");
            assert_eq!(&Value::decode(bytes).unwrap(), v);
        }
    }

    #[test]
    fn decoder_rejects() {
        // Unknown tag, NUL in text, invalid UTF-8, other NaN, trailing byte.
        for bad in [
            &[5u8][..],
            &[3, 1, 0],
            &[3, 1, 0xff],
            &[2, 1, 0, 0, 0, 0, 0, 0xf8, 0x7f],
            &[2, 0, 0, 0, 0, 0, 0, 0xf8, 0xff],
            &[0, 0],
        ] {
            assert!(Value::decode(bad).is_err(), "{bad:?}");
        }
    }

    fn err(offset: usize, what: DecodeProblem) -> Result<Value, DecodeError> {
        Err(DecodeError { offset, what })
    }

    #[test]
    fn decoder_errors_name_the_offset() {
        assert_eq!(
            Value::decode(&[7]),
            err(0, DecodeProblem::InvalidTag { what: "value tag", value: 7 })
        );
        // The NaN check points at the 8 bytes, after the tag.
        assert_eq!(
            Value::decode(&[2, 1, 0, 0, 0, 0, 0, 0xf8, 0x7f]),
            err(1, DecodeProblem::Invalid("non-canonical NaN"))
        );
        // Every other float decodes, non-NaN bit patterns included.
        for f in [0.0, -0.0, f64::INFINITY, f64::MIN_POSITIVE, -1.5] {
            let mut b = vec![2];
            b.extend_from_slice(&f.to_bits().to_le_bytes());
            assert_eq!(Value::decode(&b).map(|v| v.to_bytes()), Ok(b), "{f}");
        }
        // UTF-8 and NUL errors point at the offending byte: tag, length, then the text.
        assert_eq!(
            Value::decode(&[3, 4, b'a', b'b', b'c', 0xff]),
            err(5, DecodeProblem::Invalid("text value is not UTF-8"))
        );
        assert_eq!(
            Value::decode(&[3, 4, b'a', b'b', b'c', 0]),
            err(5, DecodeProblem::Invalid("text value contains NUL"))
        );
        // A NUL byte inside a blob is fine.
        assert_eq!(Value::decode(&[4, 2, 0, 0]), Ok(Value::Blob(vec![0, 0])));
        assert_eq!(Value::decode(&[1, 0x80, 0x01]), Ok(Value::Integer(64)));
        assert_eq!(Value::decode(&[0]), Ok(Value::Null));
    }

    #[test]
    fn size_limit_is_inclusive() {
        let limit = usize::try_from(MAX_VALUE_BYTES).unwrap();
        assert_eq!(limit, 8 * 1024 * 1024);
        let at_limit = "a".repeat(limit);
        assert!(Value::text(at_limit.clone()).is_ok());
        assert!(Value::blob(vec![1u8; limit]).is_ok());
        assert_eq!(
            Value::text(at_limit + "b"),
            Err(ValidationError::TooLarge {
                what: "text value",
                len: MAX_VALUE_BYTES + 1,
                limit: MAX_VALUE_BYTES
            })
        );
        assert_eq!(
            Value::blob(vec![1u8; limit + 1]),
            Err(ValidationError::TooLarge {
                what: "blob value",
                len: MAX_VALUE_BYTES + 1,
                limit: MAX_VALUE_BYTES
            })
        );
        // A value built directly is checked by `validate` the same way.
        assert!(Value::Blob(vec![0; limit + 1]).validate().is_err());
        assert!(Value::Text("x".repeat(limit + 1)).validate().is_err());
        for ok in [Value::Null, Value::Integer(i64::MIN), Value::real(f64::NAN)] {
            assert_eq!(ok.validate(), Ok(()));
        }
        // The decoder takes a value at the limit and refuses one byte more.
        let mut bytes = vec![4];
        shoal_core::codec::put_bytes(&mut bytes, &vec![7u8; limit]);
        assert_eq!(Value::decode(&bytes).map(|v| v.to_bytes().len()), Ok(bytes.len()));
        let mut bytes = vec![3];
        shoal_core::codec::put_varint(&mut bytes, MAX_VALUE_BYTES + 1);
        assert!(matches!(
            Value::decode(&bytes),
            Err(DecodeError { offset: 1, what: DecodeProblem::TooLarge { .. } })
        ));
    }

    #[test]
    fn text_refuses_nul_at_its_position() {
        assert_eq!(Value::text("abc"), Ok(Value::Text("abc".into())));
        assert_eq!(Value::text("ab\0c\0"), Err(ValidationError::TextContainsNul { position: 2 }));
        assert_eq!(Value::text("\0"), Err(ValidationError::TextContainsNul { position: 0 }));
        assert_eq!(Value::blob([0u8]), Ok(Value::Blob(vec![0])));
    }

    #[test]
    fn names_debug_and_conversions() {
        let all = [
            (Value::Null, "NULL", "Null"),
            (Value::Integer(-3), "INTEGER", "Integer(-3)"),
            (Value::Real(f64::from_bits(0xfff0_0000_0000_0001)), "REAL", "Real(NaN)"),
            (Value::real(-0.0), "REAL", "Real(-0.0)"),
            (Value::Text("a\"b".into()), "TEXT", "Text(\"a\\\"b\")"),
            (Value::Blob(vec![0, 0xab, 7]), "BLOB", "Blob(00ab07)"),
        ];
        for (v, name, debug) in all {
            assert_eq!(v.type_name(), name);
            assert_eq!(format!("{v:?}"), debug);
            assert_eq!(v.is_null(), name == "NULL");
        }
        assert_eq!(Value::from(7i64), Value::Integer(7));
        assert_eq!(Value::from(-0.0f64).to_bytes(), Value::Real(-0.0).to_bytes());
        let nan = Value::from(f64::from_bits(0x7ff0_0000_0000_0002));
        assert!(matches!(nan, Value::Real(f) if f.to_bits() == CANONICAL_NAN_BITS));
        assert_eq!(canonical_f64(2.5), 2.5);
        assert_eq!(canonical_f64(-f64::NAN).to_bits(), CANONICAL_NAN_BITS);
    }

    #[test]
    fn order_within_and_across_types() {
        use std::cmp::Ordering::{Equal, Greater, Less};
        assert_eq!(Value::Null.cmp(&Value::Null), Equal);
        assert_eq!(Value::Integer(2).cmp(&Value::Integer(10)), Less);
        assert_eq!(Value::Integer(2).partial_cmp(&Value::Integer(2)), Some(Equal));
        assert_eq!(Value::real(2.0).cmp(&Value::real(1.0)), Greater);
        assert_eq!(Value::Text("b".into()).cmp(&Value::Text("ab".into())), Greater);
        assert_eq!(Value::Blob(vec![1]).cmp(&Value::Blob(vec![1, 0])), Less);
        assert_eq!(Value::Blob(vec![]).cmp(&Value::Text("z".into())), Greater);
        assert_eq!(Value::Null.cmp(&Value::Integer(i64::MIN)), Less);
        assert!(Value::Integer(1) != Value::real(1.0), "no conversion");
        assert!(Value::Integer(1) == Value::Integer(1));
        assert!(Value::Real(f64::from_bits(0x7ff0_0000_0000_0001)) == Value::real(f64::NAN));
    }

    #[test]
    fn hash_agrees_with_eq_and_separates_values() {
        use std::collections::hash_map::DefaultHasher;
        let hash = |v: &Value| {
            let mut s = DefaultHasher::new();
            v.hash(&mut s);
            s.finish()
        };
        let distinct = [
            Value::Null,
            Value::Integer(0),
            Value::Integer(1),
            Value::real(0.0),
            Value::real(-0.0),
            Value::real(f64::NAN),
            Value::Text(String::new()),
            Value::Text("a".into()),
            Value::Blob(vec![]),
            Value::Blob(vec![b'a']),
        ];
        let hashes: std::collections::BTreeSet<u64> = distinct.iter().map(hash).collect();
        assert_eq!(hashes.len(), distinct.len(), "distinct values, distinct hashes");
        let odd_nan = Value::Real(f64::from_bits(0xfff8_0000_0000_0042));
        assert_eq!(hash(&odd_nan), hash(&Value::real(f64::NAN)));
    }

    #[test]
    fn column_types_accept_their_own_values_and_null() {
        let values = [
            Value::Null,
            Value::Integer(1),
            Value::real(1.0),
            Value::Text("a".into()),
            Value::Blob(vec![1]),
        ];
        // Row: type; columns: NULL, INTEGER, REAL, TEXT, BLOB.
        let table = [
            (ColumnType::Any, [true, true, true, true, true]),
            (ColumnType::Integer, [true, true, false, false, false]),
            (ColumnType::Real, [true, false, true, false, false]),
            (ColumnType::Text, [true, false, false, true, false]),
            (ColumnType::Blob, [true, false, false, false, true]),
        ];
        for (ty, expected) in table {
            for (v, want) in values.iter().zip(expected) {
                assert_eq!(ty.accepts(v), want, "{ty} accepts {v:?}");
            }
        }
    }

    #[test]
    fn type_and_merge_codes_names_and_reads() {
        let types = [
            (ColumnType::Any, 0, "ANY"),
            (ColumnType::Integer, 1, "INTEGER"),
            (ColumnType::Real, 2, "REAL"),
            (ColumnType::Text, 3, "TEXT"),
            (ColumnType::Blob, 4, "BLOB"),
        ];
        for (ty, code, name) in types {
            assert_eq!(ty.code(), code);
            assert_eq!(ColumnType::from_code(code), Some(ty));
            assert_eq!(ty.sql_name(), name);
            assert_eq!(ty.to_string(), name);
            assert_eq!(ColumnType::read(&mut Reader::new(&[code])), Ok(ty));
        }
        assert_eq!(ColumnType::from_code(5), None);
        assert_eq!(
            ColumnType::read(&mut Reader::new(&[9, 9])),
            Err(DecodeError {
                offset: 0,
                what: DecodeProblem::InvalidTag { what: "column type", value: 9 }
            })
        );
        let kinds = [
            (MergeKind::Lww, 0, "lww", Value::Null),
            (MergeKind::Counter, 1, "counter", Value::Integer(0)),
            (MergeKind::Max, 2, "max", Value::Null),
        ];
        for (kind, code, name, empty) in kinds {
            assert_eq!(kind.code(), code);
            assert_eq!(MergeKind::from_code(code), Some(kind));
            assert_eq!(kind.to_string(), name);
            assert_eq!(kind.empty_value(), empty);
            assert_eq!(MergeKind::read(&mut Reader::new(&[code])), Ok(kind));
        }
        assert_eq!(MergeKind::from_code(3), None);
        let mut r = Reader::new(&[0, 3]);
        assert_eq!(MergeKind::read(&mut r), Ok(MergeKind::Lww));
        assert_eq!(
            MergeKind::read(&mut r),
            Err(DecodeError {
                offset: 1,
                what: DecodeProblem::InvalidTag { what: "merge kind", value: 3 }
            })
        );
    }
}
