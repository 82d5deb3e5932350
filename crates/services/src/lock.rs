//! etcd's Lock and Election services (v3lock, v3election), built on leases, revisions and the
//! event feed exactly as etcd's `clientv3/concurrency` recipes build them, so every client sees
//! the same keys and orderings whether it uses these services or the recipes (`etcdctl lock`
//! and `etcdctl elect` use the recipes over KV, Lease and Watch).
//!
//! A lock or an election `name` owns the keys under `name/`. A contender writes
//! `name/<lease id in hex>` with its lease, in a Txn that creates the key only if it does not
//! exist (so a retry finds its own key). Contenders are ordered by the key's create revision:
//! the one with the smallest holds the lock (leads the election); each other one waits until
//! every key created before its own is deleted — by Unlock/Resign or by its lease expiring.
//!
//! **Fencing.** The create revision of the holder's key is a fencing token: it only grows from
//! one holder to the next, and the holder's key exists exactly as long as it holds the lock. A
//! resource protected by the lock must check the token, because a holder can be paused past
//! its lease and wake up believing it still holds the lock. For data in cairn itself, the check
//! is a Txn comparing the lock key's create revision with the token
//! (`tests/lock.rs::fenced_writes_stay_ordered_while_holders_are_paused`, README "Locks and
//! fencing").

use std::sync::Arc;

use cairn_proto::etcdserverpb as pb;
use cairn_proto::mvccpb::{event::EventType, KeyValue};
use cairn_proto::v3electionpb as el;
use cairn_proto::v3lockpb as lk;
use cairn_state::watch::Feed;
use cairn_types::Error;
use tokio::sync::mpsc;

use crate::kv::Kv;
use crate::router::Router;

/// The range end covering every key that starts with `prefix` (etcd's `GetPrefixRangeEnd`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff: to the end of the keyspace.
    vec![0]
}

fn contender_key(name: &[u8], lease: i64) -> Vec<u8> {
    let mut k = name.to_vec();
    k.push(b'/');
    k.extend_from_slice(format!("{lease:x}").as_bytes());
    k
}

fn prefix_of(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}

/// A missing lease, as etcd's lock and election servers report it: their recipes' client calls
/// fail with etcd's error, which they return as it is, so it reaches the caller as gRPC Unknown.
fn recipe_error(e: Error) -> Error {
    match e {
        Error::LeaseNotFound => Error::RecipeLeaseNotFound,
        e => e,
    }
}

fn put_op(key: Vec<u8>, value: Vec<u8>, lease: i64) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest { key, value, lease, ..Default::default() })),
    }
}

fn get_op(r: pb::RangeRequest) -> pb::RequestOp {
    pb::RequestOp { request: Some(pb::request_op::Request::RequestRange(r)) }
}

fn create_rev_is(key: Vec<u8>, rev: i64) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Create as i32,
        key,
        target_union: Some(pb::compare::TargetUnion::CreateRevision(rev)),
        range_end: Vec::new(),
    }
}

/// The contender with the smallest create revision under `prefix` (`WithFirstCreate`).
fn first_created(prefix: &[u8]) -> pb::RangeRequest {
    pb::RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: pb::range_request::SortOrder::Ascend as i32,
        sort_target: pb::range_request::SortTarget::Create as i32,
        ..Default::default()
    }
}

fn range_kvs(r: Option<&pb::ResponseOp>) -> Vec<KeyValue> {
    match r.and_then(|r| r.response.as_ref()) {
        Some(pb::response_op::Response::ResponseRange(r)) => r.kvs.clone(),
        _ => Vec::new(),
    }
}

/// What the contention recipes need: KV calls with their usual consistency, and waiting for
/// deletions on this member's applied state.
#[derive(Clone)]
struct Recipes {
    c: Arc<Router>,
    kv: Kv,
}

impl Recipes {
    /// Writes `name/<lease>` = `value` with `lease` unless it exists. Returns the key's create
    /// revision, its current value, whether this call created it, and the Txn's header.
    async fn enter(
        &self,
        key: &[u8],
        value: &[u8],
        lease: i64,
        with_first: Option<&[u8]>,
    ) -> Result<(i64, Vec<u8>, bool, Vec<KeyValue>, pb::ResponseHeader), Error> {
        let mut success = vec![put_op(key.to_vec(), value.to_vec(), lease)];
        let mut failure = vec![get_op(pb::RangeRequest { key: key.to_vec(), ..Default::default() })];
        if let Some(prefix) = with_first {
            success.push(get_op(first_created(prefix)));
            failure.push(get_op(first_created(prefix)));
        }
        let t = pb::TxnRequest { compare: vec![create_rev_is(key.to_vec(), 0)], success, failure };
        let resp = self.kv.txn(t).await.map_err(recipe_error)?;
        let header = resp.header.unwrap_or_default();
        let first = range_kvs(resp.responses.get(1));
        if resp.succeeded {
            return Ok((header.revision, value.to_vec(), true, first, header));
        }
        let mine = range_kvs(resp.responses.first());
        // The key existed at the Txn's revision: it is in the failure branch's read.
        let kv = mine.into_iter().next().ok_or_else(|| Error::Internal("contender key vanished in its Txn".into()))?;
        Ok((kv.create_revision, kv.value, false, first, header))
    }

    /// Returns once no key under `prefix` created at or before `max_rev` exists (etcd's
    /// `waitDeletes`): finds the newest such key, waits for its deletion, repeats.
    async fn wait_deletes(&self, prefix: &[u8], max_rev: i64) -> Result<(), Error> {
        loop {
            let r = pb::RangeRequest {
                key: prefix.to_vec(),
                range_end: prefix_end(prefix),
                limit: 1,
                sort_order: pb::range_request::SortOrder::Descend as i32,
                sort_target: pb::range_request::SortTarget::Create as i32,
                max_create_revision: max_rev,
                ..Default::default()
            };
            let resp = self.kv.range(r).await?;
            let Some(kv) = resp.kvs.into_iter().next() else { return Ok(()) };
            self.wait_deleted(&kv.key, kv.create_revision).await;
        }
    }

    /// Waits until this member has applied the deletion of `key`'s version created at
    /// `create_rev` (or finds it already gone).
    async fn wait_deleted(&self, key: &[u8], create_rev: i64) {
        let store = self.c.store();
        loop {
            // Subscribe first, then look: a deletion applied after the look is on the feed.
            let mut sub = store.subscribe();
            let still_there = store
                .range(&pb::RangeRequest { key: key.to_vec(), serializable: true, ..Default::default() })
                .ok()
                .and_then(|r| r.kvs.into_iter().next())
                .is_some_and(|kv| kv.create_revision == create_rev);
            if !still_there {
                return;
            }
            while let Ok(Feed::Events(batch)) = sub.feed.recv().await {
                let deleted = batch
                    .events
                    .iter()
                    .any(|e| e.r#type == EventType::Delete as i32 && e.kv.as_ref().is_some_and(|kv| kv.key == key));
                if deleted {
                    return;
                }
            }
            // The store was replaced or this receiver fell behind: look again.
        }
    }

    async fn delete(&self, key: Vec<u8>) -> Result<pb::DeleteRangeResponse, Error> {
        self.kv.delete_range(pb::DeleteRangeRequest { key, ..Default::default() }).await
    }
}

/// Deletes a contender key if the call that wrote it is abandoned (the client went away or
/// the wait failed), as etcd's recipes do, so an abandoned waiter does not hold up the others
/// until its lease expires.
struct Abandon {
    recipes: Recipes,
    key: Option<Vec<u8>>,
}

impl Abandon {
    fn disarm(mut self) {
        self.key = None;
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let r = self.recipes.clone();
            // Under the caller's auth guard, like every client write (if the auth store moved
            // on meanwhile, the key stays until its lease ends).
            let guard = crate::auth::guard();
            tokio::spawn(async move {
                if let Err(e) = crate::auth::guarded(guard, r.delete(key)).await {
                    tracing::debug!(error = %e, "removing an abandoned contender key");
                }
            });
        }
    }
}

/// etcd's Lock service.
#[derive(Clone)]
pub struct Locks {
    r: Recipes,
}

impl Locks {
    pub fn new(c: Arc<Router>) -> Self {
        Locks { r: Recipes { kv: Kv::new(c.clone()), c } }
    }

    /// Blocks until the caller holds lock `name` under `lease`; answers the lock key, whose
    /// create revision is the fencing token.
    pub async fn lock(&self, req: lk::LockRequest) -> Result<lk::LockResponse, Error> {
        if req.name.is_empty() {
            return Err(Error::EmptyKey);
        }
        let key = contender_key(&req.name, req.lease);
        let prefix = prefix_of(&req.name);
        let (my_rev, _, _, first, _) = self.r.enter(&key, b"", req.lease, Some(&prefix)).await?;
        let guard = Abandon { recipes: self.r.clone(), key: Some(key.clone()) };
        let holder = first.first().map_or(0, |kv| kv.create_revision);
        if holder != my_rev {
            self.r.wait_deletes(&prefix, my_rev - 1).await?;
        }
        // The lease may have expired while waiting, taking the key (and the claim) with it.
        let resp = self.r.kv.range(pb::RangeRequest { key: key.clone(), ..Default::default() }).await?;
        guard.disarm();
        if !resp.kvs.iter().any(|kv| kv.create_revision == my_rev) {
            return Err(Error::SessionExpired);
        }
        Ok(lk::LockResponse { header: resp.header, key })
    }

    /// Releases a lock by deleting its key.
    pub async fn unlock(&self, req: lk::UnlockRequest) -> Result<lk::UnlockResponse, Error> {
        let resp = self.r.delete(req.key).await?;
        Ok(lk::UnlockResponse { header: resp.header })
    }
}

/// etcd's Election service.
#[derive(Clone)]
pub struct Elections {
    r: Recipes,
}

impl Elections {
    pub fn new(c: Arc<Router>) -> Self {
        Elections { r: Recipes { kv: Kv::new(c.clone()), c } }
    }

    /// Blocks until the caller leads election `name`; its value is proclaimed at once.
    pub async fn campaign(&self, req: el::CampaignRequest) -> Result<el::CampaignResponse, Error> {
        if req.name.is_empty() {
            return Err(Error::EmptyKey);
        }
        let key = contender_key(&req.name, req.lease);
        let prefix = prefix_of(&req.name);
        let (rev, value, _, _, header) = self.r.enter(&key, &req.value, req.lease, None).await?;
        let guard = Abandon { recipes: self.r.clone(), key: Some(key.clone()) };
        let leader = el::LeaderKey { name: req.name.clone(), key: key.clone(), rev, lease: req.lease };
        if value != req.value {
            // A campaign resumed under the same lease with a new value: proclaim it.
            self.proclaim_as(&leader, req.value.clone()).await?;
        }
        self.r.wait_deletes(&prefix, rev - 1).await?;
        guard.disarm();
        Ok(el::CampaignResponse { header: Some(header), leader: Some(leader) })
    }

    async fn proclaim_as(&self, leader: &el::LeaderKey, value: Vec<u8>) -> Result<pb::ResponseHeader, Error> {
        let t = pb::TxnRequest {
            compare: vec![create_rev_is(leader.key.clone(), leader.rev)],
            success: vec![put_op(leader.key.clone(), value, leader.lease)],
            failure: vec![],
        };
        let resp = self.r.kv.txn(t).await.map_err(recipe_error)?;
        if !resp.succeeded {
            return Err(Error::ElectionNotLeader);
        }
        Ok(resp.header.unwrap_or_default())
    }

    /// Sets a new value for the leader, if `leader` still leads.
    pub async fn proclaim(&self, req: el::ProclaimRequest) -> Result<el::ProclaimResponse, Error> {
        let leader = req.leader.ok_or(Error::MissingLeaderKey)?;
        let header = self.proclaim_as(&leader, req.value).await?;
        Ok(el::ProclaimResponse { header: Some(header) })
    }

    /// The current leader's key and value (a linearizable read).
    pub async fn leader(&self, req: el::LeaderRequest) -> Result<el::LeaderResponse, Error> {
        let resp = self.r.kv.range(first_created(&prefix_of(&req.name))).await?;
        let kv = resp.kvs.into_iter().next().ok_or(Error::ElectionNoLeader)?;
        Ok(el::LeaderResponse { header: resp.header, kv: Some(kv) })
    }

    /// Gives up leadership (or a pending campaign): deletes the leader key if it is still the
    /// one `leader` names.
    pub async fn resign(&self, req: el::ResignRequest) -> Result<el::ResignResponse, Error> {
        let leader = req.leader.ok_or(Error::MissingLeaderKey)?;
        let t = pb::TxnRequest {
            compare: vec![create_rev_is(leader.key.clone(), leader.rev)],
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
                    key: leader.key,
                    ..Default::default()
                })),
            }],
            failure: vec![],
        };
        let resp = self.r.kv.txn(t).await?;
        Ok(el::ResignResponse { header: resp.header })
    }

    /// Streams the leader of `name`: the current one (once there is one), then every change of
    /// leader or of its value, until the client goes away. Runs until `tx` is closed.
    pub async fn observe(&self, name: Vec<u8>, tx: mpsc::Sender<Result<el::LeaderResponse, Error>>) {
        let prefix = prefix_of(&name);
        let store = self.r.c.store();
        let mut last: Option<KeyValue> = None;
        loop {
            // Subscribe before reading, so nothing applied after the read is missed.
            let mut sub = store.subscribe();
            let current = match self.r.kv.range(first_created(&prefix)).await {
                Ok(r) => r.kvs.into_iter().next(),
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            if let Some(kv) = &current {
                let changed = last.as_ref().is_none_or(|l| l.key != kv.key || l.mod_revision != kv.mod_revision);
                if changed {
                    let header = Some(self.r.c.header(store.current_revision()));
                    if tx.send(Ok(el::LeaderResponse { header, kv: Some(kv.clone()) })).await.is_err() {
                        return;
                    }
                    last = Some(kv.clone());
                }
            }
            // Wait for anything under the prefix to change, then look again.
            loop {
                tokio::select! {
                    m = sub.feed.recv() => match m {
                        Ok(Feed::Events(batch)) => {
                            let touched = batch.events.iter().any(|e| {
                                e.kv.as_ref().is_some_and(|kv| kv.key.starts_with(&prefix))
                            });
                            if touched {
                                break;
                            }
                        }
                        Ok(Feed::Resync) | Err(_) => break,
                    },
                    _ = tx.closed() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_follow_etcd() {
        assert_eq!(prefix_end(b"a/"), b"a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn contender_keys_are_name_slash_lease_hex() {
        assert_eq!(contender_key(b"mylock", 0x694d77aa9e38260f), b"mylock/694d77aa9e38260f".to_vec());
        assert_eq!(prefix_of(b"e"), b"e/".to_vec());
    }
}
