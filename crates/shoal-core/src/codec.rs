//! Canonical binary encoding: little-endian fixed integers, LEB128 varints, and a bounded
//! reader.
//!
//! Owns: the primitive byte forms every Shoal format is built from (`docs/FORMAT.md` §1).
//!
//! Invariants: every value has exactly one encoding. The reader rejects overlong varints,
//! varints that overflow `u64`, reads past the end, and (through [`Reader::finish`])
//! trailing bytes — entry hashes are computed over these bytes, so two encodings of one
//! value would give two hashes.
//!
//! Never: panics on input, allocates more than the remaining input allows, or uses
//! native-endian or platform-sized integers.

use std::fmt;

/// Why a byte string could not be decoded. Carries the offset of the problem so that a
/// caller can say where in a file or message it happened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} at byte {offset}")]
pub struct DecodeError {
    /// Byte offset, from the start of the buffer being decoded, where the problem was seen.
    pub offset: usize,
    /// What was wrong, in words.
    pub what: DecodeProblem,
}

/// The kinds of malformed input a decoder reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeProblem {
    /// The input ended before the value did.
    Truncated {
        /// What was being read.
        reading: &'static str,
    },
    /// A varint used more bytes than needed, or did not fit in 64 bits.
    NonCanonicalVarint,
    /// A length or count is larger than the decoder accepts.
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its value.
        value: u64,
        /// The largest accepted value.
        limit: u64,
    },
    /// A tag or flag byte had a value this version does not define.
    InvalidTag {
        /// What the tag was for.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// Bytes remained after the value was complete.
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// Some other structural rule was broken.
    Invalid(&'static str),
}

impl fmt::Display for DecodeProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeProblem::Truncated { reading } => write!(f, "input ends inside {reading}"),
            DecodeProblem::NonCanonicalVarint => write!(f, "overlong or overflowing varint"),
            DecodeProblem::TooLarge { what, value, limit } => {
                write!(f, "{what} is {value}, more than the limit {limit}")
            }
            DecodeProblem::InvalidTag { what, value } => write!(f, "unknown {what} {value}"),
            DecodeProblem::TrailingBytes { count } => write!(f, "{count} trailing bytes"),
            DecodeProblem::Invalid(what) => write!(f, "{what}"),
        }
    }
}

/// Appends canonical encodings to a byte vector. Encoding cannot fail.
pub trait Encode {
    /// Appends `self` to `out`.
    fn encode(&self, out: &mut Vec<u8>);

    /// Returns the encoding of `self` as a new vector.
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

/// Appends `value` as an unsigned LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends `value` as a zig-zag signed varint.
pub fn put_signed_varint(out: &mut Vec<u8>, value: i64) {
    put_varint(out, ((value << 1) ^ (value >> 63)) as u64);
}

/// Appends a varint length followed by the bytes.
pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A cursor over a byte slice that never reads past its end.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Added to positions in errors, so that a sub-reader reports offsets of the whole.
    base: usize,
}

impl<'a> Reader<'a> {
    /// A reader over all of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0, base: 0 }
    }

    /// Offset of the next byte, relative to the outermost buffer.
    pub fn offset(&self) -> usize {
        self.base + self.pos
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// True when every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// An error at the current offset.
    pub fn error(&self, what: DecodeProblem) -> DecodeError {
        DecodeError { offset: self.offset(), what }
    }

    /// Reads exactly `n` bytes.
    pub fn take(&mut self, n: usize, reading: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(self.error(DecodeProblem::Truncated { reading }));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// Reads a fixed-size array.
    pub fn array<const N: usize>(&mut self, reading: &'static str) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N, reading)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    /// Reads one byte.
    pub fn u8(&mut self, reading: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, reading)?[0])
    }

    /// Reads a little-endian `u32`.
    pub fn u32_le(&mut self, reading: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(reading)?))
    }

    /// Reads a little-endian `u64`.
    pub fn u64_le(&mut self, reading: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(reading)?))
    }

    /// Reads a canonical unsigned LEB128 varint (at most 10 bytes, no redundant high zero
    /// groups, no bits beyond 64).
    pub fn varint(&mut self, reading: &'static str) -> Result<u64, DecodeError> {
        let start = self.pos;
        let mut value: u64 = 0;
        let mut shift = 0u32;
        loop {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(self.error(DecodeProblem::Truncated { reading }));
            };
            self.pos += 1;
            let low = u64::from(byte & 0x7f);
            if shift == 63 && low > 1 {
                self.pos = start;
                return Err(self.error(DecodeProblem::NonCanonicalVarint));
            }
            value |= low << shift;
            if byte & 0x80 == 0 {
                // A final zero group after the first byte means the encoding was overlong.
                if byte == 0 && self.pos - start > 1 {
                    self.pos = start;
                    return Err(self.error(DecodeProblem::NonCanonicalVarint));
                }
                return Ok(value);
            }
            shift += 7;
            if shift > 63 {
                self.pos = start;
                return Err(self.error(DecodeProblem::NonCanonicalVarint));
            }
        }
    }

    /// Reads a zig-zag signed varint.
    pub fn signed_varint(&mut self, reading: &'static str) -> Result<i64, DecodeError> {
        let raw = self.varint(reading)?;
        Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
    }

    /// Reads a varint that must not exceed `limit`, as a `usize`.
    pub fn bounded_varint(
        &mut self,
        reading: &'static str,
        limit: u64,
    ) -> Result<usize, DecodeError> {
        let at = self.offset();
        let value = self.varint(reading)?;
        if value > limit {
            return Err(DecodeError {
                offset: at,
                what: DecodeProblem::TooLarge { what: reading, value, limit },
            });
        }
        usize::try_from(value).map_err(|_| DecodeError {
            offset: at,
            what: DecodeProblem::TooLarge { what: reading, value, limit: usize::MAX as u64 },
        })
    }

    /// Reads a varint length (at most `limit`) and that many bytes.
    pub fn bytes(&mut self, reading: &'static str, limit: u64) -> Result<&'a [u8], DecodeError> {
        let len = self.bounded_varint(reading, limit)?;
        self.take(len, reading)
    }

    /// Splits off a sub-reader over the next `len` bytes; it cannot read past them.
    pub fn sub(&mut self, len: usize, reading: &'static str) -> Result<Reader<'a>, DecodeError> {
        let base = self.offset();
        let buf = self.take(len, reading)?;
        Ok(Reader { buf, pos: 0, base })
    }

    /// Succeeds only if every byte was consumed.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(self.error(DecodeProblem::TrailingBytes { count: self.remaining() }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn varint_vectors() {
        let cases: &[(u64, &[u8])] = &[
            (0, &[0x00]),
            (1, &[0x01]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (300, &[0xac, 0x02]),
            (u64::MAX, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
        ];
        for (value, bytes) in cases {
            let mut out = Vec::new();
            put_varint(&mut out, *value);
            assert_eq!(&out, bytes, "encoding of {value}");
            let mut r = Reader::new(bytes);
            assert_eq!(r.varint("v").unwrap(), *value);
            r.finish().unwrap();
        }
    }

    #[test]
    fn varint_rejects_overlong_and_overflow() {
        for bad in [
            &[0x80, 0x00][..],
            &[0xff, 0x00],
            &[0x81, 0x80, 0x00],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x81, 0x00],
        ] {
            let err = Reader::new(bad).varint("v").unwrap_err();
            assert_eq!(err.what, DecodeProblem::NonCanonicalVarint, "{bad:?}");
        }
        let err = Reader::new(&[0x80]).varint("v").unwrap_err();
        assert!(matches!(err.what, DecodeProblem::Truncated { .. }));
    }

    #[test]
    fn sub_reader_is_bounded_and_reports_outer_offsets() {
        let buf = [1u8, 2, 3, 4];
        let mut r = Reader::new(&buf);
        r.u8("a").unwrap();
        let mut sub = r.sub(2, "sub").unwrap();
        assert_eq!(sub.take(2, "x").unwrap(), &[2, 3]);
        let err = sub.u8("y").unwrap_err();
        assert_eq!(err.offset, 3);
        assert_eq!(r.u8("b").unwrap(), 4);
        r.finish().unwrap();
    }

    proptest! {
        #[test]
        fn varint_round_trips(v: u64) {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut r = Reader::new(&out);
            prop_assert_eq!(r.varint("v").unwrap(), v);
            prop_assert!(r.finish().is_ok());
        }

        #[test]
        fn signed_varint_round_trips(v: i64) {
            let mut out = Vec::new();
            put_signed_varint(&mut out, v);
            let mut r = Reader::new(&out);
            prop_assert_eq!(r.signed_varint("v").unwrap(), v);
        }

        #[test]
        fn varint_decoding_is_injective(bytes in proptest::collection::vec(any::<u8>(), 0..12)) {
            // Any accepted byte string must be the canonical encoding of what it decodes to.
            let mut r = Reader::new(&bytes);
            if let Ok(v) = r.varint("v") {
                let used = r.offset();
                let mut out = Vec::new();
                put_varint(&mut out, v);
                prop_assert_eq!(&out[..], &bytes[..used]);
            }
        }
    }
}
