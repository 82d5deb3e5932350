//! The stored value of one Redis key.
//!
//! Layout (all integers big-endian):
//!
//! ```text
//! format u8 (=1) | kind u8 | flags u8 (bit 0: has expiry) | version u64
//!   | [expire_at_ms i64, if flag 0] | value_len u32 | value bytes
//! ```
//!
//! `version` is the timestamp of the write that produced the record (today the leader's
//! `now_ms` stamped into the log entry; later an HLC timestamp), kept so that MVCC reads and
//! transaction intents can be added without rewriting every record. `kind` leaves room for
//! the other Redis types: only strings are written today, and every string command answers
//! `WRONGTYPE` for the others.

use thiserror::Error;

/// The longest value: Redis's default `proto-max-bulk-len`, which bounds strings too.
pub const VALUE_BYTES_MAX: usize = 512 * 1024 * 1024;

const FORMAT: u8 = 1;
const FLAG_EXPIRY: u8 = 1;
const FIXED_BYTES: usize = 3 + 8 + 4;
/// A record's header at most: what [`Record::header`] reads (a scan copies no more of a value).
pub const HEADER_BYTES_MAX: usize = FIXED_BYTES + 8;

/// The Redis type of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    String = 0,
    List = 1,
    Hash = 2,
    Set = 3,
    ZSet = 4,
    Stream = 5,
}

impl Kind {
    /// The name `TYPE` answers.
    pub fn name(self) -> &'static str {
        match self {
            Kind::String => "string",
            Kind::List => "list",
            Kind::Hash => "hash",
            Kind::Set => "set",
            Kind::ZSet => "zset",
            Kind::Stream => "stream",
        }
    }

    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            0 => Kind::String,
            1 => Kind::List,
            2 => Kind::Hash,
            3 => Kind::Set,
            4 => Kind::ZSet,
            5 => Kind::Stream,
            _ => return None,
        })
    }
}

/// One key's stored value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub kind: Kind,
    pub value: Vec<u8>,
    /// Absolute expiry in Unix milliseconds; the key is absent at and after this time.
    pub expire_at_ms: Option<i64>,
    /// The timestamp of the write that produced this record.
    pub version: u64,
}

/// Why stored bytes are not a record. Any of these in a store means corruption.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record is {len} bytes, shorter than its header")]
    Short { len: usize },
    #[error("unknown record format {0}")]
    Format(u8),
    #[error("unknown record kind {0}")]
    Kind(u8),
    #[error("unknown record flags {0:#x}")]
    Flags(u8),
    #[error("record value is {len} bytes, over the limit of {limit}")]
    TooLarge { len: usize, limit: usize },
    #[error("record says {said} value bytes, {has} follow")]
    Length { said: usize, has: usize },
}

impl Record {
    pub fn string(value: Vec<u8>, expire_at_ms: Option<i64>, version: u64) -> Record {
        Record { kind: Kind::String, value, expire_at_ms, version }
    }

    /// Whether the key is logically absent at `now_ms`.
    pub fn is_expired(&self, now_ms: i64) -> bool {
        self.expire_at_ms.is_some_and(|at| at <= now_ms)
    }

    pub fn encode(&self) -> Vec<u8> {
        assert!(
            self.value.len() <= VALUE_BYTES_MAX,
            "value of {} bytes reached encode; callers check VALUE_BYTES_MAX",
            self.value.len()
        );
        let mut out = Vec::with_capacity(FIXED_BYTES + 8 + self.value.len());
        out.push(FORMAT);
        out.push(self.kind as u8);
        out.push(if self.expire_at_ms.is_some() { FLAG_EXPIRY } else { 0 });
        out.extend_from_slice(&self.version.to_be_bytes());
        if let Some(at) = self.expire_at_ms {
            out.extend_from_slice(&at.to_be_bytes());
        }
        out.extend_from_slice(&(self.value.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.value);
        out
    }

    /// The expiry of an encoded record, read from its header alone: the value is neither
    /// checked nor copied (active expiry looks at many records, of any size).
    pub fn expiry_of(bytes: &[u8]) -> Result<Option<i64>, DecodeError> {
        if bytes.len() < FIXED_BYTES {
            return Err(DecodeError::Short { len: bytes.len() });
        }
        if bytes[0] != FORMAT {
            return Err(DecodeError::Format(bytes[0]));
        }
        Kind::from_byte(bytes[1]).ok_or(DecodeError::Kind(bytes[1]))?;
        let flags = bytes[2];
        if flags & !FLAG_EXPIRY != 0 {
            return Err(DecodeError::Flags(flags));
        }
        let mut at = 3 + 8;
        Ok(if flags & FLAG_EXPIRY != 0 { Some(i64::from_be_bytes(take::<8>(bytes, &mut at)?)) } else { None })
    }

    /// The kind and expiry of an encoded record, from its header alone (`bytes` may be cut
    /// after [`HEADER_BYTES_MAX`]): what a scan needs, without copying or checking the value.
    pub fn header(bytes: &[u8]) -> Result<(Kind, Option<i64>), DecodeError> {
        if bytes.len() < FIXED_BYTES {
            return Err(DecodeError::Short { len: bytes.len() });
        }
        let kind = Kind::from_byte(bytes[1]).ok_or(DecodeError::Kind(bytes[1]))?;
        let expiry = Record::expiry_of(bytes)?;
        // The length field follows: a record cut before it is corrupt.
        let fixed = FIXED_BYTES + if expiry.is_some() { 8 } else { 0 };
        if bytes.len() < fixed {
            return Err(DecodeError::Short { len: bytes.len() });
        }
        Ok((kind, expiry))
    }

    pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
        if bytes.len() < FIXED_BYTES {
            return Err(DecodeError::Short { len: bytes.len() });
        }
        if bytes[0] != FORMAT {
            return Err(DecodeError::Format(bytes[0]));
        }
        let kind = Kind::from_byte(bytes[1]).ok_or(DecodeError::Kind(bytes[1]))?;
        let flags = bytes[2];
        if flags & !FLAG_EXPIRY != 0 {
            return Err(DecodeError::Flags(flags));
        }
        let mut at = 3;
        let version = u64::from_be_bytes(take::<8>(bytes, &mut at)?);
        let expire_at_ms =
            if flags & FLAG_EXPIRY != 0 { Some(i64::from_be_bytes(take::<8>(bytes, &mut at)?)) } else { None };
        let len = u32::from_be_bytes(take::<4>(bytes, &mut at)?) as usize;
        if len > VALUE_BYTES_MAX {
            return Err(DecodeError::TooLarge { len, limit: VALUE_BYTES_MAX });
        }
        let rest = &bytes[at..];
        if rest.len() != len {
            return Err(DecodeError::Length { said: len, has: rest.len() });
        }
        Ok(Record { kind, value: rest.to_vec(), expire_at_ms, version })
    }
}

fn take<const N: usize>(bytes: &[u8], at: &mut usize) -> Result<[u8; N], DecodeError> {
    let slice = bytes.get(*at..*at + N).ok_or(DecodeError::Short { len: bytes.len() })?;
    *at += N;
    let mut out = [0; N];
    out.copy_from_slice(slice);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        for r in [
            Record::string(b"v".to_vec(), None, 7),
            Record::string(vec![], Some(-5), 0),
            Record { kind: Kind::Stream, value: vec![0; 300], expire_at_ms: Some(i64::MAX), version: u64::MAX },
        ] {
            assert_eq!(Record::decode(&r.encode()), Ok(r));
        }
    }

    #[test]
    fn bad_bytes_are_errors() {
        let good = Record::string(b"abc".to_vec(), Some(9), 1).encode();
        assert_eq!(Record::decode(&[]), Err(DecodeError::Short { len: 0 }));
        assert_eq!(Record::expiry_of(&[]), Err(DecodeError::Short { len: 0 }));
        assert_eq!(Record::expiry_of(&good[..12]), Err(DecodeError::Short { len: 12 }));
        let mut b = good.clone();
        b[0] = 2;
        assert_eq!(Record::decode(&b), Err(DecodeError::Format(2)));
        let mut b = good.clone();
        b[1] = 9;
        assert_eq!(Record::decode(&b), Err(DecodeError::Kind(9)));
        let mut b = good.clone();
        b[2] = 3;
        assert_eq!(Record::decode(&b), Err(DecodeError::Flags(3)));
        let mut b = good.clone();
        b.push(0);
        assert_eq!(Record::decode(&b), Err(DecodeError::Length { said: 3, has: 4 }));
        let b = &good[..good.len() - 1];
        assert_eq!(Record::decode(b), Err(DecodeError::Length { said: 3, has: 2 }));
        let mut b = good.clone();
        let n = b.len();
        b[n - 7..n - 3].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(Record::decode(&b), Err(DecodeError::TooLarge { .. })));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(r) = Record::decode(&bytes) {
                prop_assert_eq!(r.encode(), bytes.clone());
                // What decodes has the expiry its header gives.
                prop_assert_eq!(Record::expiry_of(&bytes), Ok(r.expire_at_ms));
            }
        }

        #[test]
        fn random_records_round_trip(kind in 0u8..6, value in proptest::collection::vec(any::<u8>(), 0..64),
                                     at in proptest::option::of(any::<i64>()), version in any::<u64>()) {
            let r = Record { kind: Kind::from_byte(kind).unwrap(), value, expire_at_ms: at, version };
            prop_assert_eq!(Record::expiry_of(&r.encode()), Ok(at));
            prop_assert_eq!(Record::decode(&r.encode()), Ok(r));
        }
    }
}
