//! Row keys: the canonical bytes of a primary-key value tuple.
//!
//! Owns: [`RowKey`], [`MAX_KEY_BYTES`], [`MAX_KEY_VALUES`].
//!
//! Invariants: a `RowKey` always holds the concatenated canonical encodings of 1 to
//! [`MAX_KEY_VALUES`] valid values, at most [`MAX_KEY_BYTES`] bytes in all; it cannot be
//! built otherwise. Two tuples are the same row iff their keys are equal bytes, and rows
//! are ordered by the bytes (not by the values' total order).
//!
//! Note for materializers: the key bytes, not the values, identify a row. -0.0 and +0.0,
//! or INTEGER 1 and REAL 1.0, are different keys here, while SQL would call them equal,
//! so a SQL table must use the key bytes as its primary key.
//!
//! Never: panics on input.

use std::fmt;

use shoal_core::codec::{DecodeError, DecodeProblem, Encode, Reader};

use crate::error::ValidationError;
use crate::value::Value;

/// The largest encoded row key, in bytes.
pub const MAX_KEY_BYTES: usize = 64 << 10;

/// The most values a row key (and so a primary key) may have.
pub const MAX_KEY_VALUES: usize = 16;

/// The canonical encoding of a primary-key value tuple: each value's canonical bytes, in
/// key order, with nothing between them (every value encoding is self-delimiting).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RowKey(Vec<u8>);

impl RowKey {
    /// The key of a tuple of 1 to [`MAX_KEY_VALUES`] valid values.
    pub fn from_values(values: &[Value]) -> Result<RowKey, ValidationError> {
        if values.is_empty() {
            return Err(ValidationError::EmptyKey);
        }
        if values.len() > MAX_KEY_VALUES {
            return Err(ValidationError::TooLarge {
                what: "row key value count",
                len: values.len() as u64,
                limit: MAX_KEY_VALUES as u64,
            });
        }
        let mut out = Vec::new();
        for v in values {
            v.validate()?;
            v.encode(&mut out);
        }
        if out.len() > MAX_KEY_BYTES {
            return Err(ValidationError::TooLarge {
                what: "row key",
                len: out.len() as u64,
                limit: MAX_KEY_BYTES as u64,
            });
        }
        Ok(RowKey(out))
    }

    /// Checks that `bytes` is a canonical key and wraps it.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<RowKey, DecodeError> {
        RowKey::check(&bytes, 0)?;
        Ok(RowKey(bytes))
    }

    /// Reads a length-prefixed key (`bytes(key)`, as ops carry it) from `r`.
    pub fn read(r: &mut Reader<'_>) -> Result<RowKey, DecodeError> {
        let bytes = r.bytes("row key", MAX_KEY_BYTES as u64)?;
        // Errors inside the key report offsets in the outer buffer.
        let body_at = r.offset() - bytes.len();
        RowKey::check(bytes, body_at)?;
        Ok(RowKey(bytes.to_vec()))
    }

    /// Decodes `bytes` as a key; `base` is added to error offsets.
    fn check(bytes: &[u8], base: usize) -> Result<Vec<Value>, DecodeError> {
        let shift = |mut e: DecodeError| {
            e.offset += base;
            e
        };
        if bytes.len() > MAX_KEY_BYTES {
            return Err(shift(DecodeError {
                offset: 0,
                what: DecodeProblem::TooLarge {
                    what: "row key",
                    value: bytes.len() as u64,
                    limit: MAX_KEY_BYTES as u64,
                },
            }));
        }
        if bytes.is_empty() {
            return Err(shift(DecodeError {
                offset: 0,
                what: DecodeProblem::Invalid("row key has no values"),
            }));
        }
        let mut r = Reader::new(bytes);
        let mut values = Vec::new();
        while !r.is_empty() {
            if values.len() == MAX_KEY_VALUES {
                return Err(shift(r.error(DecodeProblem::TooLarge {
                    what: "row key value count",
                    value: MAX_KEY_VALUES as u64 + 1,
                    limit: MAX_KEY_VALUES as u64,
                })));
            }
            values.push(Value::read(&mut r).map_err(shift)?);
        }
        Ok(values)
    }

    /// The values of the tuple, in key order. Cannot fail for a key built by this module
    /// (the bytes were checked when it was made); the `Result` guards that invariant.
    pub fn values(&self) -> Result<Vec<Value>, DecodeError> {
        RowKey::check(&self.0, 0)
    }

    /// The canonical bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The canonical bytes, by value.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

impl fmt::Debug for RowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.values() {
            Ok(values) => write!(f, "RowKey{values:?}"),
            Err(_) => write!(f, "RowKey(<invalid> {:02x?})", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_refuse_bad_input() {
        let vals = vec![Value::Integer(1), Value::Text("a".into())];
        let k = RowKey::from_values(&vals).unwrap();
        assert_eq!(k.values().unwrap(), vals);
        assert_eq!(RowKey::from_bytes(k.as_bytes().to_vec()).unwrap(), k);
        assert_eq!(RowKey::from_values(&[]), Err(ValidationError::EmptyKey));
        assert!(RowKey::from_values(&[Value::Text("a\0".into())]).is_err());
        assert!(RowKey::from_values(&vec![Value::Null; 17]).is_err());
        assert!(RowKey::from_bytes(vec![]).is_err());
        assert!(RowKey::from_bytes(vec![0; 17]).is_err());
        assert!(RowKey::from_bytes(vec![9]).is_err());
    }

    /// A one-blob key whose encoding is exactly `len` bytes (a 3-byte length prefix).
    fn blob_key_bytes(len: usize) -> Vec<u8> {
        let v = Value::Blob(vec![7; len - 4]);
        let bytes = v.to_bytes();
        assert_eq!(bytes.len(), len);
        bytes
    }

    #[test]
    fn limits_are_inclusive() {
        // 16 values are a key, 17 are not.
        let sixteen = RowKey::from_values(&vec![Value::Null; 16]).unwrap();
        assert_eq!(sixteen.as_bytes(), [0u8; 16]);
        assert_eq!(RowKey::from_bytes(vec![0; 16]), Ok(sixteen));
        assert_eq!(
            RowKey::from_values(&vec![Value::Null; 17]),
            Err(ValidationError::TooLarge { what: "row key value count", len: 17, limit: 16 })
        );
        assert_eq!(
            RowKey::from_bytes(vec![0; 17]),
            Err(DecodeError {
                offset: 16,
                what: DecodeProblem::TooLarge { what: "row key value count", value: 17, limit: 16 }
            })
        );
        // 64 KiB of key bytes are a key, one more byte is not.
        let max = blob_key_bytes(MAX_KEY_BYTES);
        let v = Value::decode(&max).unwrap();
        let key = RowKey::from_values(std::slice::from_ref(&v)).unwrap();
        assert_eq!(key.as_bytes(), &max[..]);
        assert_eq!(RowKey::from_bytes(max.clone()).map(RowKey::into_bytes), Ok(max));
        let over = blob_key_bytes(MAX_KEY_BYTES + 1);
        let v = Value::decode(&over).unwrap();
        assert_eq!(
            RowKey::from_values(&[v]),
            Err(ValidationError::TooLarge {
                what: "row key",
                len: MAX_KEY_BYTES as u64 + 1,
                limit: MAX_KEY_BYTES as u64
            })
        );
        assert_eq!(
            RowKey::from_bytes(over),
            Err(DecodeError {
                offset: 0,
                what: DecodeProblem::TooLarge {
                    what: "row key",
                    value: MAX_KEY_BYTES as u64 + 1,
                    limit: MAX_KEY_BYTES as u64
                }
            })
        );
        assert_eq!(
            RowKey::from_bytes(vec![]),
            Err(DecodeError { offset: 0, what: DecodeProblem::Invalid("row key has no values") })
        );
    }

    #[test]
    fn read_reports_offsets_in_the_outer_buffer() {
        // Two bytes before the key, then bytes(key) with a bad tag as its third value.
        let buf = [0xaa, 0xbb, 3, 0, 0, 9];
        let mut r = Reader::new(&buf);
        r.u8("x").unwrap();
        r.u8("y").unwrap();
        assert_eq!(
            RowKey::read(&mut r),
            Err(DecodeError {
                offset: 5,
                what: DecodeProblem::InvalidTag { what: "value tag", value: 9 }
            })
        );
        let buf = [0xaa, 2, 1, 2];
        let mut r = Reader::new(&buf);
        r.u8("x").unwrap();
        let key = RowKey::read(&mut r).unwrap();
        assert_eq!(key.values(), Ok(vec![Value::Integer(1)]));
        assert!(r.is_empty());
        // The same bad key alone reports its own offset.
        assert_eq!(
            RowKey::from_bytes(vec![0, 0, 9]),
            Err(DecodeError {
                offset: 2,
                what: DecodeProblem::InvalidTag { what: "value tag", value: 9 }
            })
        );
    }

    #[test]
    fn debug_shows_values() {
        let k = RowKey::from_values(&[Value::Integer(1), Value::Text("a".into())]).unwrap();
        assert_eq!(format!("{k:?}"), "RowKey[Integer(1), Text(\"a\")]");
        assert_eq!(format!("{:?}", RowKey(vec![9, 1])), "RowKey(<invalid> [09, 01])");
    }
}
