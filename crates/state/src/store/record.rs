//! How the store lays its data out in the engine: the `kv` table's records and the `meta`
//! table's keys.

use cairn_proto::mvccpb::KeyValue;
use prost::Message;

use super::StoreError;
use crate::rev::Rev;

pub(crate) const META_REV: &[u8] = b"store/rev";
pub(crate) const META_COMPACT: &[u8] = b"store/compact_rev";
pub(super) const META_MEMBER_PREFIX: &[u8] = b"member/";
pub(super) const META_ALARM_PREFIX: &[u8] = b"alarm/";
/// The data tier's range descriptors (by id) and node records (by id).
pub(super) const META_RANGE_PREFIX: &[u8] = b"dir/range/";
pub(super) const META_NODE_PREFIX: &[u8] = b"dir/node/";
/// The next range id [`cairn_cluster::directory::DirectoryOp::Reserve`] hands out.
pub(super) const META_NEXT_RANGE_ID: &[u8] = b"dir/next-range-id";
pub(crate) const META_LEASE_PREFIX: &[u8] = b"lease/";
pub(crate) const META_AUTH: &[u8] = b"auth";

const FLAG_PUT: u8 = 0;
const FLAG_TOMBSTONE: u8 = 1;

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Record {
    pub(super) tombstone: bool,
    pub(super) kv: KeyValue,
}

impl Record {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.kv.encoded_len());
        out.push(if self.tombstone { FLAG_TOMBSTONE } else { FLAG_PUT });
        self.kv.encode(&mut out).expect("Vec grows");
        out
    }

    pub(super) fn decode(rev: Rev, b: &[u8]) -> Result<Record, StoreError> {
        let bad = |why: &str| StoreError::Corrupt(format!("record at revision {}.{}: {why}", rev.main, rev.sub));
        let (&flag, rest) = b.split_first().ok_or_else(|| bad("empty"))?;
        let tombstone = match flag {
            FLAG_PUT => false,
            FLAG_TOMBSTONE => true,
            _ => return Err(bad("unknown flag")),
        };
        let kv = KeyValue::decode(rest).map_err(|e| bad(&e.to_string()))?;
        Ok(Record { tombstone, kv })
    }
}

pub(super) fn member_key(id: u64) -> Vec<u8> {
    let mut k = META_MEMBER_PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub(super) fn range_key(id: u64) -> Vec<u8> {
    let mut k = META_RANGE_PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub(super) fn node_key(id: u64) -> Vec<u8> {
    let mut k = META_NODE_PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub(super) fn lease_key(id: i64) -> Vec<u8> {
    let mut k = META_LEASE_PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub(super) fn alarm_key(member: u64, alarm: i32) -> Vec<u8> {
    let mut k = META_ALARM_PREFIX.to_vec();
    k.extend_from_slice(&member.to_be_bytes());
    k.extend_from_slice(&alarm.to_be_bytes());
    k
}
