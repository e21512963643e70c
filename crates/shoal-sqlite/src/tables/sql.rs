//! Values between the table domain and SQLite.
//!
//! Owns: [`to_sql`], [`from_sql`], [`quote_ident`] and the stored form of an LWW cell's
//! HLC (negated when its value is a NaN, which SQLite cannot store).
//!
//! Invariants: `from_sql(to_sql(v)) == v` for every value but a REAL NaN, which reads back
//! as NULL; the merge state keeps the NaN through the negated HLC.
//!
//! Never: converts between types (INTEGER 1 and REAL 1.0 stay different), or builds SQL
//! from a name without quoting it.

use rusqlite::types::{Value as SqlValue, ValueRef};
use shoal_core::Hlc;
use shoal_tables::Value;

/// Quotes an SQL identifier (names come from remote devices: quote everything).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A value as SQLite stores it (NaN, which SQLite lacks, becomes NULL).
pub fn to_sql(v: &Value) -> SqlValue {
    match v {
        Value::Null => SqlValue::Null,
        Value::Integer(i) => SqlValue::Integer(*i),
        Value::Real(f) if f.is_nan() => SqlValue::Null,
        Value::Real(f) => SqlValue::Real(*f),
        Value::Text(s) => SqlValue::Text(s.clone()),
        Value::Blob(b) => SqlValue::Blob(b.clone()),
    }
}

/// A value as SQLite returned it.
pub fn from_sql(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(f) => Value::real(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

/// An HLC as stored in an INTEGER column (HLCs are below 2^63).
pub(super) fn hlc_sql(hlc: Hlc) -> i64 {
    hlc.as_u64() as i64
}

/// An HLC read from an INTEGER column.
pub(super) fn hlc_from_sql(h: i64) -> Hlc {
    Hlc::from_u64(h as u64)
}

/// The stored HLC of an LWW cell: negated when the value is a NaN (see the module doc).
pub(super) fn lww_hlc_sql(hlc: Hlc, v: &Value) -> i64 {
    let h = hlc_sql(hlc);
    if matches!(v, Value::Real(f) if f.is_nan()) { -h } else { h }
}

/// The LWW state of a cell from its stored value and HLC columns (a negative HLC marks a
/// NaN value, which SQLite cannot store).
pub(super) fn lww_from_sql(value: &SqlValue, hlc: &SqlValue) -> Option<(Hlc, Value)> {
    match hlc {
        SqlValue::Integer(h) if *h < 0 => {
            Some((Hlc::from_u64(h.unsigned_abs()), Value::real(f64::NAN)))
        }
        SqlValue::Integer(h) => Some((hlc_from_sql(*h), from_sql(value.into()))),
        _ => None,
    }
}
