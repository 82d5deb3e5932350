//! Request checks made at the edge, before anything is proposed: the same checks, in the same
//! order and with the same errors, as etcd's `v3rpc/key.go`. Checks that depend on the store's
//! state (a missing key with `ignore_value`, a compacted revision) happen at apply.

use cairn_proto::etcdserverpb as pb;
use cairn_types::{Error, Limits};

fn check_key(key: &[u8], limits: &Limits) -> Result<(), Error> {
    if key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if key.len() > limits.key_bytes_max {
        return Err(Error::KeyTooLarge { limit: limits.key_bytes_max });
    }
    Ok(())
}

pub fn range(r: &pb::RangeRequest, limits: &Limits) -> Result<(), Error> {
    check_key(&r.key, limits)?;
    if pb::range_request::SortOrder::try_from(r.sort_order).is_err()
        || pb::range_request::SortTarget::try_from(r.sort_target).is_err()
    {
        return Err(Error::InvalidSortOption);
    }
    Ok(())
}

pub fn put(r: &pb::PutRequest, limits: &Limits) -> Result<(), Error> {
    check_key(&r.key, limits)?;
    if r.ignore_value && !r.value.is_empty() {
        return Err(Error::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(Error::LeaseProvided);
    }
    Ok(())
}

pub fn delete_range(r: &pb::DeleteRangeRequest, limits: &Limits) -> Result<(), Error> {
    check_key(&r.key, limits)
}

pub fn txn(r: &pb::TxnRequest, limits: &Limits) -> Result<(), Error> {
    check_txn_ops(r, limits.txn_ops_max, limits)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

fn check_txn_ops(r: &pb::TxnRequest, max_ops: usize, limits: &Limits) -> Result<(), Error> {
    let opc = r.compare.len().max(r.success.len()).max(r.failure.len());
    if opc > max_ops {
        return Err(Error::TooManyOps { limit: limits.txn_ops_max });
    }
    for c in &r.compare {
        check_key(&c.key, limits)?;
    }
    for op in r.success.iter().chain(&r.failure) {
        use pb::request_op::Request;
        match &op.request {
            Some(Request::RequestRange(x)) => range(x, limits)?,
            Some(Request::RequestPut(x)) => put(x, limits)?,
            Some(Request::RequestDeleteRange(x)) => delete_range(x, limits)?,
            Some(Request::RequestTxn(x)) => check_txn_ops(x, max_ops - opc, limits)?,
            // etcd answers an empty op this way.
            None => return Err(Error::KeyNotFound),
        }
    }
    Ok(())
}

/// A deleted interval `[from, to)`; `to == None` is unbounded.
struct Interval {
    from: Vec<u8>,
    to: Option<Vec<u8>>,
}

impl Interval {
    fn of(key: &[u8], end: &[u8]) -> Interval {
        if end.is_empty() {
            let mut to = key.to_vec();
            to.push(0);
            Interval { from: key.to_vec(), to: Some(to) }
        } else if end == [0] {
            Interval { from: key.to_vec(), to: None }
        } else {
            Interval { from: key.to_vec(), to: Some(end.to_vec()) }
        }
    }

    fn contains(&self, k: &[u8]) -> bool {
        k >= self.from.as_slice() && self.to.as_ref().is_none_or(|t| k < t.as_slice())
    }
}

/// etcd's duplicate-key rule for one branch of a transaction: no two puts of the same key and
/// no put of a key that a delete in the same branch (or a nested one) covers. Puts in the two
/// branches of a nested transaction may repeat each other: only one branch runs.
fn check_intervals(ops: &[pb::RequestOp]) -> Result<(std::collections::HashSet<Vec<u8>>, Vec<Interval>), Error> {
    use pb::request_op::Request;
    use std::collections::HashSet;
    let mut dels: Vec<Interval> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(d)) => Some(Interval::of(&d.key, &d.range_end)),
            _ => None,
        })
        .collect();
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    let covered = |dels: &[Interval], k: &[u8]| dels.iter().any(|d| d.contains(k));
    for op in ops {
        if let Some(Request::RequestTxn(t)) = &op.request {
            let (puts_then, dels_then) = check_intervals(&t.success)?;
            let (puts_else, dels_else) = check_intervals(&t.failure)?;
            for k in &puts_then {
                if puts.contains(k) || covered(&dels, k) {
                    return Err(Error::DuplicateKey);
                }
                puts.insert(k.clone());
            }
            for k in &puts_else {
                if (puts.contains(k) && !puts_then.contains(k)) || covered(&dels, k) {
                    return Err(Error::DuplicateKey);
                }
                puts.insert(k.clone());
            }
            dels.extend(dels_then);
            dels.extend(dels_else);
        }
    }
    for op in ops {
        if let Some(Request::RequestPut(p)) = &op.request {
            if puts.contains(&p.key) || covered(&dels, &p.key) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(p.key.clone());
        }
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::request_op::Request;

    fn put_op(k: &str) -> pb::RequestOp {
        pb::RequestOp { request: Some(Request::RequestPut(pb::PutRequest { key: k.into(), ..Default::default() })) }
    }
    fn del_op(k: &str, end: &str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(Request::RequestDeleteRange(pb::DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }
    fn txn_op(success: Vec<pb::RequestOp>, failure: Vec<pb::RequestOp>) -> pb::RequestOp {
        pb::RequestOp { request: Some(Request::RequestTxn(pb::TxnRequest { compare: vec![], success, failure })) }
    }
    fn txn(success: Vec<pb::RequestOp>) -> pb::TxnRequest {
        pb::TxnRequest { compare: vec![], success, failure: vec![] }
    }

    #[test]
    fn empty_keys_and_flags() {
        let l = Limits::default();
        assert_eq!(put(&pb::PutRequest::default(), &l), Err(Error::EmptyKey));
        let p = pb::PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ignore_value: true, ..Default::default() };
        assert_eq!(put(&p, &l), Err(Error::ValueProvided));
        let p = pb::PutRequest { key: b"k".to_vec(), lease: 5, ignore_lease: true, ..Default::default() };
        assert_eq!(put(&p, &l), Err(Error::LeaseProvided));
        let r = pb::RangeRequest { key: b"k".to_vec(), sort_order: 9, ..Default::default() };
        assert_eq!(range(&r, &l), Err(Error::InvalidSortOption));
        let p = pb::PutRequest { key: vec![b'k'; l.key_bytes_max + 1], ..Default::default() };
        assert_eq!(put(&p, &l), Err(Error::KeyTooLarge { limit: l.key_bytes_max }));
    }

    #[test]
    fn too_many_ops() {
        let l = Limits::default();
        let t = txn((0..129).map(|i| put_op(&format!("k{i}"))).collect());
        assert_eq!(super::txn(&t, &l), Err(Error::TooManyOps { limit: 128 }));
        let t = txn((0..128).map(|i| put_op(&format!("k{i}"))).collect());
        assert_eq!(super::txn(&t, &l), Ok(()));
    }

    #[test]
    fn duplicate_keys() {
        let l = Limits::default();
        assert_eq!(super::txn(&txn(vec![put_op("a"), put_op("a")]), &l), Err(Error::DuplicateKey));
        assert_eq!(super::txn(&txn(vec![put_op("b"), del_op("a", "c")]), &l), Err(Error::DuplicateKey));
        assert_eq!(super::txn(&txn(vec![put_op("c"), del_op("a", "c")]), &l), Ok(()));
        assert_eq!(super::txn(&txn(vec![put_op("z"), del_op("a", "\0")]), &l), Err(Error::DuplicateKey));
        // Both branches of a nested txn may put the same key...
        assert_eq!(super::txn(&txn(vec![txn_op(vec![put_op("a")], vec![put_op("a")])]), &l), Ok(()));
        // ...but not one the outer level also puts.
        assert_eq!(
            super::txn(&txn(vec![put_op("a"), txn_op(vec![put_op("a")], vec![])]), &l),
            Err(Error::DuplicateKey)
        );
        // Success and failure branches of the top level are independent.
        let t = pb::TxnRequest { compare: vec![], success: vec![put_op("a")], failure: vec![put_op("a")] };
        assert_eq!(super::txn(&t, &l), Ok(()));
        // An empty op is answered as etcd does.
        assert_eq!(super::txn(&txn(vec![pb::RequestOp { request: None }]), &l), Err(Error::KeyNotFound));
    }
}
