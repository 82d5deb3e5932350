//! Rebuilding the in-memory state (key index, leases, members, alarms, auth) from the engine
//! at start-up and after a snapshot install.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use cairn_storage::{Engine, Table};

use super::buffer::Unflushed;
use super::compact::CompactJob;
use super::record::*;
use super::{Lease, State, StoreError};
use crate::auth::AuthState;
use crate::command::MemberAttrs;
use crate::index::{IndexKey, KeyIndex};
use crate::rev::{LocalRevisions, Rev};

/// The largest store revision a loaded store may be at: far beyond any real store (one write
/// a nanosecond for a century is 2^62), and room for apply to count up without overflowing.
const REVISION_MAX: i64 = i64::MAX / 2;

pub(super) fn load_state(engine: &dyn Engine) -> Result<State, StoreError> {
    let reader = engine.reader()?;
    let read_i64 = |key: &[u8]| -> Result<Option<i64>, StoreError> {
        match reader.get(Table::Meta, key)? {
            None => Ok(None),
            Some(b) => Ok(Some(i64::from_be_bytes(
                b.as_slice().try_into().map_err(|_| StoreError::Corrupt(format!("meta {key:?} is not 8 bytes")))?,
            ))),
        }
    };
    let current = read_i64(META_REV)?.unwrap_or(1);
    if !(1..=REVISION_MAX).contains(&current) {
        return Err(StoreError::Corrupt(format!(
            "meta store/rev holds revision {current}; revisions run from 1 to {REVISION_MAX}"
        )));
    }
    let compact_rev = read_i64(META_COMPACT)?.unwrap_or(-1);
    if compact_rev > current {
        return Err(StoreError::Corrupt(format!(
            "meta store/compact_rev holds revision {compact_rev}, beyond the store revision {current}"
        )));
    }
    let mut members = BTreeMap::new();
    let mut alarms = BTreeSet::new();
    let mut bad = None;
    reader.scan(Table::Meta, Bound::Included(META_MEMBER_PREFIX), Bound::Unbounded, &mut |k, v| {
        let Some(id) = k.strip_prefix(META_MEMBER_PREFIX) else {
            return false;
        };
        match (id.try_into().map(u64::from_be_bytes), postcard::from_bytes::<MemberAttrs>(v)) {
            (Ok(id), Ok(attrs)) => {
                members.insert(id, attrs);
            }
            _ => bad = Some(format!("bad member record {k:?}")),
        }
        true
    })?;
    reader.scan(Table::Meta, Bound::Included(META_ALARM_PREFIX), Bound::Unbounded, &mut |k, _| {
        let Some(rest) = k.strip_prefix(META_ALARM_PREFIX) else {
            return false;
        };
        if rest.len() == 12 {
            let id = u64::from_be_bytes(rest[..8].try_into().expect("8"));
            let ty = i32::from_be_bytes(rest[8..].try_into().expect("4"));
            alarms.insert((id, ty));
        } else {
            bad = Some(format!("bad alarm record {k:?}"));
        }
        true
    })?;
    let mut ranges = BTreeMap::new();
    reader.scan(Table::Meta, Bound::Included(META_RANGE_PREFIX), Bound::Unbounded, &mut |k, v| {
        if !k.starts_with(META_RANGE_PREFIX) {
            return false;
        }
        match postcard::from_bytes::<cairn_cluster::directory::Descriptor>(v) {
            Ok(d) if range_key(d.id) == k => {
                ranges.insert(d.id, d);
            }
            _ => bad = Some(format!("bad range descriptor record {k:?}")),
        }
        true
    })?;
    let next_range_id = match reader.get(Table::Meta, META_NEXT_RANGE_ID)? {
        None => 0,
        Some(b) => match <[u8; 8]>::try_from(b.as_slice()) {
            Ok(a) => u64::from_be_bytes(a),
            Err(_) => {
                bad = Some("bad next range id record".into());
                0
            }
        },
    };
    let mut nodes = BTreeMap::new();
    reader.scan(Table::Meta, Bound::Included(META_NODE_PREFIX), Bound::Unbounded, &mut |k, v| {
        if !k.starts_with(META_NODE_PREFIX) {
            return false;
        }
        match postcard::from_bytes::<cairn_cluster::directory::NodeRecord>(v) {
            Ok(n) if node_key(n.id) == k => {
                nodes.insert(n.id, n);
            }
            _ => bad = Some(format!("bad node record {k:?}")),
        }
        true
    })?;
    let mut leases = BTreeMap::new();
    reader.scan(Table::Meta, Bound::Included(META_LEASE_PREFIX), Bound::Unbounded, &mut |k, v| {
        let Some(id) = k.strip_prefix(META_LEASE_PREFIX) else {
            return false;
        };
        match (<[u8; 8]>::try_from(id), <[u8; 8]>::try_from(v)) {
            (Ok(id), Ok(ttl)) => {
                leases.insert(i64::from_be_bytes(id), Lease { ttl: i64::from_be_bytes(ttl), keys: BTreeSet::new() });
            }
            _ => bad = Some(format!("bad lease record {k:?}")),
        }
        true
    })?;
    let auth = match reader.get(Table::Meta, META_AUTH)? {
        None => AuthState::default(),
        Some(b) => AuthState::decode(&b).map_err(StoreError::Corrupt)?,
    };
    let mut key_lease: HashMap<Vec<u8>, i64> = HashMap::new();
    let mut keys: BTreeMap<IndexKey, KeyIndex> = BTreeMap::new();
    reader.scan(Table::Kv, Bound::Unbounded, Bound::Unbounded, &mut |k, v| {
        // Revisions (main from 1, sub from 0) encode so that byte order is revision order, which
        // the key index relies on; a negative one would come out of order.
        let Some(rev) = Rev::from_key(k).filter(|r| r.main >= 1 && r.sub >= 0) else {
            bad = Some(format!("table kv: bad revision key {k:?}"));
            return false;
        };
        if rev.main > current {
            bad = Some(format!("record at revision {} beyond the store revision {current}", rev.main));
            return false;
        }
        match Record::decode(rev, v) {
            Ok(rec) => {
                let ki = keys.entry(IndexKey::from_slice(&rec.kv.key)).or_default();
                if rec.tombstone {
                    if ki.is_live() {
                        ki.tombstone(rev);
                        key_lease.remove(&rec.kv.key);
                    } else {
                        bad = Some(format!("tombstone at {} of a key that is not live", rev.main));
                        return false;
                    }
                } else if !(1..=rev.main).contains(&rec.kv.create_revision) || !(1..=rev.main).contains(&rec.kv.version)
                {
                    // A key's version counts its puts since its creation, each at a revision of
                    // its own after the first (2).
                    bad = Some(format!(
                        "record at revision {}.{}: create revision {} and version {} do not fit it",
                        rev.main, rev.sub, rec.kv.create_revision, rec.kv.version
                    ));
                    return false;
                } else {
                    ki.restore(rev, rec.kv.create_revision, rec.kv.version);
                    // Records come in revision order: the last put decides the key's lease.
                    if rec.kv.lease != 0 {
                        key_lease.insert(rec.kv.key.clone(), rec.kv.lease);
                    } else {
                        key_lease.remove(&rec.kv.key);
                    }
                }
                true
            }
            Err(e) => {
                bad = Some(e.to_string());
                false
            }
        }
    })?;
    if let Some(why) = bad {
        return Err(StoreError::Corrupt(why));
    }
    keys.retain(|_, ki| !ki.revisions().is_empty());
    for (key, id) in &key_lease {
        match leases.get_mut(id) {
            Some(l) => {
                l.keys.insert(key.clone());
            }
            None => {
                return Err(StoreError::Corrupt(format!(
                    "key {:?} is attached to lease {id:x}, which does not exist",
                    String::from_utf8_lossy(key)
                )))
            }
        }
    }
    Ok(State {
        keys,
        revs: LocalRevisions::new(current),
        compact_rev,
        members,
        ranges: std::sync::Arc::new(ranges),
        nodes,
        next_range_id,
        alarms,
        leases,
        key_lease,
        auth: Arc::new(auth),
        unflushed: Unflushed::default(),
        flushing: None,
        // Records a compaction gave up may still be here (it was cut short by a stop, or this
        // is a snapshot taken mid-way): go over the keys again.
        compaction: (compact_rev > 0).then(|| CompactJob::new(compact_rev)),
    })
}
