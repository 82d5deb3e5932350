//! Key encoding for the data tier's one ordered keyspace.
//!
//! A Redis key `k` is stored as `PREFIX_REDIS | slot(k) as u16 big-endian | k`. Big-endian
//! slots make each hash slot one contiguous interval of the keyspace, in slot order, so a
//! range that the placement driver cuts at slot boundaries holds whole slots, and Redis
//! Cluster's `CLUSTER SLOTS` answer can be read off the range directory.
//!
//! The slot is Redis Cluster's: CRC16-XMODEM of the key, or of its hash tag (the bytes between
//! the first `{` and the first `}` after it, when that is not empty), modulo 16384.

use crc::{Crc, CRC_16_XMODEM};

/// The first byte of every Redis key in the data tier. Other subsystems take other bytes.
pub const PREFIX_REDIS: u8 = b'r';

/// Redis Cluster's number of hash slots.
pub const SLOT_COUNT: u16 = 16384;

/// Bytes before the user key in an encoded key: the prefix and the slot.
pub const HEADER_BYTES: usize = 3;

/// The longest user key accepted. Redis's own limit is the bulk length (512 MiB); ours is
/// smaller because a key is copied into every index entry and log record that names it.
pub const KEY_BYTES_MAX: usize = 64 * 1024;

const CRC16: Crc<u16> = Crc::<u16>::new(&CRC_16_XMODEM);

/// The part of `key` that is hashed: the hash tag if there is a non-empty one, else the key.
pub fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// Redis Cluster's hash slot of `key` (`CLUSTER KEYSLOT`).
pub fn slot(key: &[u8]) -> u16 {
    CRC16.checksum(hash_tag(key)) % SLOT_COUNT
}

/// The stored form of the Redis key `key`.
pub fn encode(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + key.len());
    out.push(PREFIX_REDIS);
    out.extend_from_slice(&slot(key).to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// The Redis key inside a stored key, or `None` if `stored` is not a well-formed Redis key
/// (wrong prefix, too short, or a slot that does not match the key).
pub fn decode(stored: &[u8]) -> Option<&[u8]> {
    if stored.len() < HEADER_BYTES || stored[0] != PREFIX_REDIS {
        return None;
    }
    let key = &stored[HEADER_BYTES..];
    let slot_stored = u16::from_be_bytes([stored[1], stored[2]]);
    (slot_stored == slot(key)).then_some(key)
}

/// A half-open interval `[start, end)` of stored keys.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct KeySpan {
    #[serde(with = "serde_bytes")]
    pub start: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub end: Vec<u8>,
}

impl KeySpan {
    /// Every Redis key.
    pub fn redis() -> KeySpan {
        KeySpan::slots(0, SLOT_COUNT - 1)
    }

    /// The Redis keys whose slots are in `first..=last`.
    pub fn slots(first: u16, last: u16) -> KeySpan {
        assert!(first <= last && last < SLOT_COUNT, "bad slot interval {first}..={last}");
        let start = slot_start(first);
        let end = if last + 1 == SLOT_COUNT { vec![PREFIX_REDIS + 1] } else { slot_start(last + 1) };
        KeySpan { start, end }
    }

    pub fn contains(&self, stored: &[u8]) -> bool {
        self.start.as_slice() <= stored && stored < self.end.as_slice()
    }
}

fn slot_start(slot: u16) -> Vec<u8> {
    let [hi, lo] = slot.to_be_bytes();
    vec![PREFIX_REDIS, hi, lo]
}

#[cfg(test)]
mod tests {
    use super::*;

    // Values from the Redis Cluster specification and `CLUSTER KEYSLOT` on Redis 7 (a
    // non-cluster redis-server refuses CLUSTER KEYSLOT, so these are the documented ones).
    #[test]
    fn slots_match_redis() {
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"hello"), 866);
        assert_eq!(slot(b""), 0);
        // The CRC16 check value of the spec: "123456789" -> 0x31C3.
        assert_eq!(CRC16.checksum(b"123456789"), 0x31C3);
        assert_eq!(slot(b"123456789"), 12739);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        // Empty tag: the whole key is hashed.
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        // Only the first '{' counts.
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar");
        assert_eq!(hash_tag(b"{bar"), b"{bar");
        assert_eq!(hash_tag(b"a{b}c"), b"b");
    }

    #[test]
    fn encoding_round_trips_and_orders_by_slot() {
        for key in [&b""[..], b"foo", b"{a}b", b"\xff\x00"] {
            let stored = encode(key);
            assert_eq!(decode(&stored), Some(key));
            let s = slot(key);
            assert!(KeySpan::slots(s, s).contains(&stored));
            assert!(KeySpan::redis().contains(&stored));
            if s > 0 {
                assert!(!KeySpan::slots(0, s - 1).contains(&stored));
            }
        }
        assert_eq!(decode(b"r"), None);
        assert_eq!(decode(b"x\x00\x00"), None);
        // A slot that does not match the key is refused.
        assert_eq!(decode(b"r\x00\x01foo"), None);
        assert_eq!(KeySpan::redis().start, [PREFIX_REDIS, 0, 0]);
        assert_eq!(KeySpan::redis().end, [PREFIX_REDIS + 1]);
    }
}
