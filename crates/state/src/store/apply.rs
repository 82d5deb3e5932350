//! Applying committed commands: etcd's Put, DeleteRange, Txn, Compact, leases, alarms, auth
//! and member attributes, deterministically, under the store's write lock.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use cairn_proto::etcdserverpb as pb;
use cairn_proto::mvccpb::KeyValue;
use cairn_storage::{Reader, Table, WriteBatch};
use cairn_types::{Error, Revision};
use parking_lot::RwLockWriteGuard;

use super::read::{compare, header, keys_in, range, read_record, set_txn_revision, to_kv, ReadError, ReadResult, View};
use super::record::*;
use super::{Lease, State, Store, StoreError};
use crate::command::{Command, Op, Response};
use crate::index::IndexKey;
use crate::rev::{Rev, RevisionSource};
use crate::watch::{self, EventBatch, Feed};

/// The response to an `Op::Origin` naming this member: the member forwarded the request to the
/// leader and waits under `id` (the waiter registry is the router's, `services::router`).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub id: u64,
    pub response: Response,
}

impl Store {
    /// Starts applying a batch of committed commands. Readers wait until it is committed.
    ///
    /// `member` is the member this replica runs on: the answers to its own forwarded writes
    /// (`Op::Origin` entries naming it) come back from [`ApplyBatch::commit`]; 0 (no member has
    /// that id) collects none.
    pub fn begin(&self, member: u64) -> Result<ApplyBatch<'_>, StoreError> {
        let state = self.state.write();
        let reader = self.engine.reader()?;
        // Events are collected only while someone watches (a receiver cannot appear during the
        // batch: subscribing takes the read lock).
        let events = (self.feed.receiver_count() > 0).then(Vec::new);
        Ok(ApplyBatch {
            store: self,
            state,
            reader,
            pending: HashMap::new(),
            batch: WriteBatch::new(),
            meta_dirty: false,
            events,
            member,
            answers: Vec::new(),
        })
    }
}

/// One batch of committed commands being applied. Dropping it without [`ApplyBatch::commit`]
/// is only allowed when the node is stopping: the in-memory index already has the changes.
pub struct ApplyBatch<'a> {
    store: &'a Store,
    state: RwLockWriteGuard<'a, State>,
    reader: Box<dyn Reader + Send + Sync>,
    /// Records written in this batch (not yet in the engine), for reads within the batch.
    pending: HashMap<Rev, Record>,
    batch: WriteBatch,
    meta_dirty: bool,
    /// Events for the feed, when anyone is subscribed.
    events: Option<Vec<cairn_proto::mvccpb::Event>>,
    /// The member this replica runs on, and the answers to its forwarded writes.
    member: u64,
    answers: Vec<Answer>,
}

impl View for ApplyBatch<'_> {
    fn state(&self) -> &State {
        &self.state
    }

    fn record(&self, rev: Rev) -> Result<Record, StoreError> {
        match self.pending.get(&rev) {
            Some(r) => Ok(r.clone()),
            None => read_record(&self.state, &*self.reader, rev),
        }
    }
}

/// The revision being written by one write request and the next sub-revision in it.
struct WriteRev {
    main: Revision,
    sub: i64,
}

impl WriteRev {
    fn next(&mut self) -> Rev {
        let r = Rev::new(self.main, self.sub);
        self.sub += 1;
        r
    }

    fn wrote(&self) -> bool {
        self.sub > 0
    }
}

impl ApplyBatch<'_> {
    /// Adds a meta record to the batch's atomic write (the Raft layer's applied log id and
    /// membership go here).
    pub fn put_meta(&mut self, key: &[u8], value: Vec<u8>) {
        self.batch.put(Table::Meta, key.to_vec(), value);
    }

    /// Drops the attributes of members no longer in the cluster. Called when a membership
    /// change is applied, so every replica prunes at the same point of the log.
    pub fn retain_members(&mut self, keep: &BTreeSet<u64>) {
        let gone: Vec<u64> = self.state.members.keys().filter(|id| !keep.contains(id)).copied().collect();
        for id in gone {
            self.state.members.remove(&id);
            self.batch.delete(Table::Meta, member_key(id));
        }
    }

    /// The current store revision, as this batch sees it.
    pub fn current_revision(&self) -> Revision {
        self.state.revs.current()
    }

    /// Applies one committed command. Request errors (a compaction of a compacted revision, a
    /// put on a missing key with `ignore_value`) come back as [`Response::Error`] with nothing
    /// changed; a store failure is an `Err` and stops the node.
    pub fn apply(&mut self, cmd: &Command) -> Result<Response, StoreError> {
        self.apply_op(&cmd.op)
    }

    fn apply_op(&mut self, op: &Op) -> Result<Response, StoreError> {
        let r = match op {
            Op::Batch(ops) => {
                let mut out = Vec::with_capacity(ops.len());
                for op in ops {
                    out.push(self.apply_op(op)?);
                }
                return Ok(Response::Batch(out));
            }
            Op::Put(p) => self.standalone(|b, w| b.put(p, w)).map(Response::Put),
            Op::DeleteRange(d) => self.standalone(|b, w| b.delete(d, w)).map(Response::DeleteRange),
            Op::Txn(t) => self.txn_request(t).map(Response::Txn),
            Op::Compact(c) => self.compact(c.revision).map(Response::Compact),
            Op::Alarm(a) => Ok(Response::Alarm(self.alarm(a))),
            Op::LeaseGrant(g) => self.lease_grant(g).map(Response::LeaseGrant),
            Op::LeaseRevoke(r) => self.lease_revoke(r.id).map(Response::LeaseRevoke),
            Op::Guarded { auth_revision, user, op } => {
                if let Err(e) = self.check_guard(*auth_revision, user, op) {
                    return Ok(Response::Error(e));
                }
                return self.apply_op(op);
            }
            Op::Origin { member, id, op } => {
                let r = self.apply_op(op)?;
                if *member == self.member {
                    self.answers.push(Answer { id: *id, response: r.clone() });
                }
                return Ok(r);
            }
            Op::Auth(a) => {
                let mut auth = (*self.state.auth).clone();
                match auth.apply(a) {
                    Ok(()) => {
                        self.batch.put(Table::Meta, META_AUTH.to_vec(), auth.encode());
                        let auth = Arc::new(auth);
                        self.state.auth = auth.clone();
                        *self.store.auth.write() = auth;
                        Ok(Response::Done { revision: self.current_revision() })
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Op::Directory(d) => Ok(self.directory(d)),
            Op::SetMemberAttrs { id, attrs } => {
                self.batch.put(Table::Meta, member_key(*id), postcard::to_allocvec(attrs).expect("serializable"));
                self.state.members.insert(*id, attrs.clone());
                Ok(Response::Done { revision: self.current_revision() })
            }
        };
        match r {
            Ok(resp) => Ok(resp),
            Err(ReadError::Request(e)) => Ok(Response::Error(e)),
            Err(ReadError::Store(e)) => Err(e),
        }
    }

    /// An `Op::Directory`: applied only when every expected epoch still holds and the result
    /// still tiles the keyspace, so a directory that routes a key to two ranges, or to none, is
    /// never stored.
    fn directory(&mut self, op: &cairn_cluster::directory::DirectoryOp) -> Response {
        use cairn_cluster::directory::{Directory, DirectoryOp};
        let state = &mut *self.state;
        let answer = |applied: bool, reserved: u64, st: &State| Response::Directory {
            applied,
            ranges: st.ranges.values().cloned().collect(),
            reserved,
        };
        let (put, remove) = match op {
            DirectoryOp::Node(n) => {
                self.batch.put(Table::Meta, node_key(n.id), postcard::to_allocvec(n).expect("serializable"));
                state.nodes.insert(n.id, n.clone());
                return answer(true, 0, state);
            }
            DirectoryOp::ForgetNode(id) => {
                self.batch.delete(Table::Meta, node_key(*id));
                let had = state.nodes.remove(id).is_some();
                return answer(had, 0, state);
            }
            DirectoryOp::Reserve => {
                let id = state.next_range_id.max(1);
                state.next_range_id = id + 1;
                self.batch.put(Table::Meta, META_NEXT_RANGE_ID.to_vec(), state.next_range_id.to_be_bytes().to_vec());
                return answer(true, id, state);
            }
            DirectoryOp::Bootstrap { put } => {
                if !state.ranges.is_empty() {
                    return answer(false, 0, state);
                }
                (put, &Vec::new())
            }
            DirectoryOp::Update { expect, put, remove } => {
                if expect.iter().any(|(id, epoch)| state.ranges.get(id).map(|d| d.epoch) != Some(*epoch)) {
                    return answer(false, 0, state);
                }
                // A report older than what is stored (a deposed leader's) changes nothing.
                if put.iter().any(|d| state.ranges.get(&d.id).is_some_and(|s| d.version() < s.version())) {
                    return answer(false, 0, state);
                }
                (put, remove)
            }
        };
        let mut next = (*state.ranges).clone();
        for id in remove {
            next.remove(id);
        }
        for d in put {
            next.insert(d.id, d.clone());
        }
        if Directory::new(next.values().cloned()).is_err() {
            return answer(false, 0, state);
        }
        for id in remove {
            self.batch.delete(Table::Meta, range_key(*id));
        }
        for d in put {
            self.batch.put(Table::Meta, range_key(d.id), postcard::to_allocvec(d).expect("serializable"));
        }
        // Every id ever stored stays used, even once merged away.
        let top = put.iter().map(|d| d.id + 1).max().unwrap_or(0);
        if top > state.next_range_id {
            state.next_range_id = top;
            self.batch.put(Table::Meta, META_NEXT_RANGE_ID.to_vec(), top.to_be_bytes().to_vec());
        }
        state.ranges = Arc::new(next);
        answer(true, 0, state)
    }

    /// The checks of a guarded op that belong to apply (see `Op::Guarded`); etcd's order.
    fn check_guard(&self, auth_revision: u64, user: &str, op: &Op) -> Result<(), Error> {
        if let Op::Origin { op, .. } = op {
            // The tag says who waits for the answer; the checks are the tagged op's.
            return self.check_guard(auth_revision, user, op);
        }
        let auth = &self.state.auth;
        if !auth.enabled {
            return Ok(());
        }
        if user.is_empty() {
            return Err(Error::UserEmpty);
        }
        if let Op::Auth(_) = op {
            // Management calls: the caller's rights now, whatever changed since the check.
            return auth.check_admin(user);
        }
        if auth.revision > auth_revision {
            return Err(Error::AuthOldRevision);
        }
        self.check_lease_keys(user, op)
    }

    /// etcd's checkLeasePuts: attaching a key to a lease or revoking it touches every key on the
    /// lease, so the user needs write access to each.
    fn check_lease_keys(&self, user: &str, op: &Op) -> Result<(), Error> {
        let lease_keys = |id: i64| -> Result<(), Error> {
            match self.state.leases.get(&id) {
                Some(l) => l
                    .keys
                    .iter()
                    .try_for_each(|k| self.state.auth.check_range(user, k, &[], crate::auth::Access::Write)),
                None => Ok(()),
            }
        };
        fn txn_leases(t: &pb::TxnRequest, out: &mut Vec<i64>) {
            use pb::request_op::Request;
            for op in t.success.iter().chain(&t.failure) {
                match &op.request {
                    Some(Request::RequestPut(p)) if p.lease != 0 => out.push(p.lease),
                    Some(Request::RequestTxn(n)) => txn_leases(n, out),
                    _ => {}
                }
            }
        }
        match op {
            Op::Put(p) if p.lease != 0 => lease_keys(p.lease),
            Op::LeaseRevoke(r) => lease_keys(r.id),
            Op::Txn(t) => {
                let mut ids = Vec::new();
                txn_leases(t, &mut ids);
                ids.into_iter().try_for_each(lease_keys)
            }
            _ => Ok(()),
        }
    }

    /// Runs a single put or delete as its own write request.
    fn standalone<T>(&mut self, f: impl FnOnce(&mut Self, &mut WriteRev) -> ReadResult<T>) -> ReadResult<T> {
        let mut w = WriteRev { main: self.state.revs.peek_next(), sub: 0 };
        let out = f(self, &mut w)?;
        if w.wrote() {
            self.state.revs.take(w.main);
            self.meta_dirty = true;
        }
        Ok(out)
    }

    fn nospace(&self) -> bool {
        self.state.alarms.iter().any(|&(_, ty)| ty == pb::AlarmType::Nospace as i32)
    }

    fn write_record(&mut self, rev: Rev, rec: Record) {
        self.batch.put(Table::Kv, rev.to_key().to_vec(), rec.encode());
        if let Some(events) = &mut self.events {
            events.push(if rec.tombstone {
                watch::delete_event(rec.kv.key.clone(), rev.main)
            } else {
                watch::put_event(rec.kv.clone())
            });
        }
        self.pending.insert(rev, rec);
    }

    fn latest(&self, key: &[u8]) -> ReadResult<Option<KeyValue>> {
        match self.state.keys.get(key).and_then(|ki| ki.get(Revision::MAX)) {
            Some(k) => Ok(Some(to_kv(self, key, k, false)?)),
            None => Ok(None),
        }
    }

    /// Moves `key`'s attachment to `lease` (0: none).
    fn attach(&mut self, key: &[u8], lease: i64) {
        let st = &mut *self.state;
        let old = st.key_lease.get(key).copied().unwrap_or(0);
        if old == lease {
            return;
        }
        if old != 0 {
            if let Some(l) = st.leases.get_mut(&old) {
                l.keys.remove(key);
            }
            st.key_lease.remove(key);
        }
        if lease != 0 {
            if let Some(l) = st.leases.get_mut(&lease) {
                l.keys.insert(key.to_vec());
            }
            st.key_lease.insert(key.to_vec(), lease);
        }
    }

    fn lease_grant(&mut self, g: &pb::LeaseGrantRequest) -> ReadResult<pb::LeaseGrantResponse> {
        if self.state.leases.contains_key(&g.id) {
            return Err(Error::LeaseExist.into());
        }
        if self.state.leases.len() >= cairn_types::limits::LEASES_MAX {
            return Err(Error::TooManyLeases { limit: cairn_types::limits::LEASES_MAX }.into());
        }
        self.state.leases.insert(g.id, Lease { ttl: g.ttl, keys: BTreeSet::new() });
        self.batch.put(Table::Meta, lease_key(g.id), g.ttl.to_be_bytes().to_vec());
        Ok(pb::LeaseGrantResponse {
            header: Some(header(self.state.revs.current())),
            id: g.id,
            ttl: g.ttl,
            error: String::new(),
        })
    }

    /// etcd's revoke: every attached key deleted in one revision, then the lease removed.
    fn lease_revoke(&mut self, id: i64) -> ReadResult<pb::LeaseRevokeResponse> {
        let keys = match self.state.leases.get(&id) {
            Some(l) => l.keys.clone(),
            None => return Err(Error::LeaseNotFound.into()),
        };
        let revision = self.standalone(|b, w| {
            for key in keys {
                b.delete(&pb::DeleteRangeRequest { key, ..Default::default() }, w)?;
            }
            Ok(if w.wrote() { w.main } else { b.state.revs.current() })
        })?;
        self.state.leases.remove(&id);
        self.batch.delete(Table::Meta, lease_key(id));
        Ok(pb::LeaseRevokeResponse { header: Some(header(revision)) })
    }

    fn put(&mut self, p: &pb::PutRequest, w: &mut WriteRev) -> ReadResult<pb::PutResponse> {
        if self.nospace() {
            return Err(Error::NoSpace.into());
        }
        if p.lease != 0 && !self.state.leases.contains_key(&p.lease) {
            return Err(Error::LeaseNotFound.into());
        }
        // The previous record is read only when the request needs it: a plain put learns the
        // key's create revision and version from the index alone.
        let prev = if p.prev_kv || p.ignore_value || p.ignore_lease { self.latest(&p.key)? } else { None };
        if (p.ignore_value || p.ignore_lease) && prev.is_none() {
            return Err(Error::KeyNotFound.into());
        }
        let value = match (&prev, p.ignore_value) {
            (Some(prev), true) => prev.value.clone(),
            _ => p.value.clone(),
        };
        let lease = match (&prev, p.ignore_lease) {
            (Some(prev), true) => prev.lease,
            _ => p.lease,
        };
        let rev = w.next();
        // Most puts update a key that exists: look it up by reference, and copy the key only
        // for a new one.
        let (created, version) = match self.state.keys.get_mut(p.key.as_slice()) {
            Some(k) => k.put(rev),
            None => self.state.keys.entry(IndexKey::from_slice(&p.key)).or_default().put(rev),
        };
        let kv = KeyValue {
            key: p.key.clone(),
            create_revision: created.main,
            mod_revision: rev.main,
            version,
            value,
            lease,
        };
        self.write_record(rev, Record { tombstone: false, kv });
        self.attach(&p.key, lease);
        Ok(pb::PutResponse { header: Some(header(rev.main)), prev_kv: if p.prev_kv { prev } else { None } })
    }

    fn delete(&mut self, d: &pb::DeleteRangeRequest, w: &mut WriteRev) -> ReadResult<pb::DeleteRangeResponse> {
        let mut doomed = Vec::new();
        for (key, ki) in keys_in(&self.state.keys, &d.key, &d.range_end) {
            if let Some(k) = ki.get(Revision::MAX) {
                doomed.push((key.to_vec(), k));
            }
        }
        let mut prev_kvs = Vec::new();
        for (key, k) in &doomed {
            if d.prev_kv {
                prev_kvs.push(to_kv(self, key, *k, false)?);
            }
            let rev = w.next();
            self.state.keys.get_mut(key.as_slice()).expect("key is indexed").tombstone(rev);
            self.attach(key, 0);
            let kv = KeyValue { key: key.clone(), mod_revision: rev.main, ..Default::default() };
            self.write_record(rev, Record { tombstone: true, kv });
        }
        // etcd's `storeTxnWrite.DeleteRange`: the write revision once this request (a txn)
        // changed anything, even if this delete found nothing.
        let revision = if w.wrote() { w.main } else { self.state.revs.current() };
        Ok(pb::DeleteRangeResponse { header: Some(header(revision)), deleted: doomed.len() as i64, prev_kvs })
    }

    fn txn_request(&mut self, t: &pb::TxnRequest) -> ReadResult<pb::TxnResponse> {
        let current = self.state.revs.current();
        // As etcd: every compare on the path (nested ones too) is evaluated against the state
        // before the transaction, then the chosen ops are checked, then executed.
        let mut path = Vec::new();
        self.txn_path(t, current, &mut path)?;
        self.check_txn(t, &mut path.iter().copied(), current)?;
        let mut w = WriteRev { main: self.state.revs.peek_next(), sub: 0 };
        let mut resp = self.exec_txn(t, &mut path.into_iter(), &mut w)?;
        let revision = if w.wrote() {
            self.state.revs.take(w.main);
            self.meta_dirty = true;
            w.main
        } else {
            current
        };
        set_txn_revision(&mut resp, revision);
        Ok(resp)
    }

    fn txn_path(&self, t: &pb::TxnRequest, at: Revision, path: &mut Vec<bool>) -> ReadResult<()> {
        let mut ok = true;
        for c in &t.compare {
            if !compare(self, c, at)? {
                ok = false;
                break;
            }
        }
        path.push(ok);
        for op in if ok { &t.success } else { &t.failure } {
            if let Some(pb::request_op::Request::RequestTxn(nested)) = &op.request {
                self.txn_path(nested, at, path)?;
            }
        }
        Ok(())
    }

    fn check_txn(
        &self,
        t: &pb::TxnRequest,
        path: &mut impl Iterator<Item = bool>,
        current: Revision,
    ) -> ReadResult<()> {
        let ok = path.next().expect("path covers every txn");
        for op in if ok { &t.success } else { &t.failure } {
            match &op.request {
                Some(pb::request_op::Request::RequestRange(r)) => {
                    if r.revision > current {
                        return Err(Error::FutureRev.into());
                    }
                    if r.revision > 0 && r.revision < self.state.compact_rev {
                        return Err(Error::Compacted.into());
                    }
                }
                Some(pb::request_op::Request::RequestPut(p)) => {
                    if self.nospace() {
                        return Err(Error::NoSpace.into());
                    }
                    if p.lease != 0 && !self.state.leases.contains_key(&p.lease) {
                        return Err(Error::LeaseNotFound.into());
                    }
                    let live = self.state.keys.get(p.key.as_slice()).is_some_and(|ki| ki.is_live());
                    if (p.ignore_value || p.ignore_lease) && !live {
                        return Err(Error::KeyNotFound.into());
                    }
                }
                Some(pb::request_op::Request::RequestTxn(nested)) => self.check_txn(nested, path, current)?,
                Some(pb::request_op::Request::RequestDeleteRange(_)) | None => {}
            }
        }
        Ok(())
    }

    fn exec_txn(
        &mut self,
        t: &pb::TxnRequest,
        path: &mut impl Iterator<Item = bool>,
        w: &mut WriteRev,
    ) -> ReadResult<pb::TxnResponse> {
        use pb::request_op::Request;
        use pb::response_op::Response as R;
        let ok = path.next().expect("path covers every txn");
        let mut responses = Vec::new();
        for op in if ok { &t.success } else { &t.failure } {
            let r = match &op.request {
                Some(Request::RequestRange(r)) => {
                    // A read in a transaction sees the transaction's own earlier writes, and
                    // answers with the revision it read at (etcd's `storeTxnWrite.Range`).
                    let at = if w.wrote() { w.main } else { self.state.revs.current() };
                    let mut rr = range(self, r, at)?;
                    rr.header = Some(header(at));
                    R::ResponseRange(rr)
                }
                Some(Request::RequestPut(p)) => R::ResponsePut(self.put(p, w)?),
                Some(Request::RequestDeleteRange(d)) => R::ResponseDeleteRange(self.delete(d, w)?),
                Some(Request::RequestTxn(n)) => R::ResponseTxn(self.exec_txn(n, path, w)?),
                None => R::ResponseRange(pb::RangeResponse::default()),
            };
            responses.push(pb::ResponseOp { response: Some(r) });
        }
        Ok(pb::TxnResponse { header: Some(pb::ResponseHeader::default()), succeeded: ok, responses })
    }

    fn compact(&mut self, rev: Revision) -> ReadResult<pb::CompactionResponse> {
        if rev <= self.state.compact_rev {
            return Err(Error::Compacted.into());
        }
        if rev > self.state.revs.current() {
            return Err(Error::FutureRev.into());
        }
        // From here on reads below `rev` are refused; the records they would need are removed
        // in the background, in bounded steps (see `compact`), so apply never walks the keys.
        self.state.compact_rev = rev;
        self.batch.put(Table::Meta, META_COMPACT.to_vec(), rev.to_be_bytes().to_vec());
        self.store.compactor.schedule(&mut self.state, rev);
        Ok(pb::CompactionResponse { header: Some(header(self.state.revs.current())) })
    }

    fn alarm(&mut self, a: &pb::AlarmRequest) -> pb::AlarmResponse {
        use pb::alarm_request::AlarmAction;
        let key = alarm_key(a.member_id, a.alarm);
        match AlarmAction::try_from(a.action) {
            Ok(AlarmAction::Activate)
                if a.alarm != pb::AlarmType::None as i32 && self.state.alarms.insert((a.member_id, a.alarm)) =>
            {
                self.batch.put(Table::Meta, key, Vec::new());
            }
            Ok(AlarmAction::Deactivate) => {
                // etcd: deactivating NONE for member 0 clears every alarm.
                let doomed: Vec<_> = self
                    .state
                    .alarms
                    .iter()
                    .copied()
                    .filter(|&(m, t)| (a.member_id == 0 || m == a.member_id) && (a.alarm == 0 || t == a.alarm))
                    .collect();
                for (m, t) in doomed {
                    self.state.alarms.remove(&(m, t));
                    self.batch.delete(Table::Meta, alarm_key(m, t));
                }
            }
            _ => {}
        }
        pb::AlarmResponse {
            header: Some(header(self.state.revs.current())),
            alarms: self.state.alarms.iter().map(|&(member_id, alarm)| pb::AlarmMember { member_id, alarm }).collect(),
        }
    }

    /// Makes the batch visible to readers, buffering its changes for the engine; writes the
    /// buffer to the engine in one transaction once it is full ([`super::FLUSH_OPS`] changes or
    /// `--backend-batch-bytes`).
    ///
    /// Returns the answers to this member's own forwarded writes (see [`Store::begin`]); the
    /// batch is visible by the time the caller hands them on, so a client answered from one
    /// reads its write on this member at once.
    pub fn commit(mut self) -> Result<Vec<Answer>, StoreError> {
        if self.meta_dirty {
            let rev = self.state.revs.current();
            self.batch.put(Table::Meta, META_REV.to_vec(), rev.to_be_bytes().to_vec());
        }
        let batch = std::mem::take(&mut self.batch);
        self.store.buffer(&mut self.state, batch.ops)?;
        // Published while the write lock is still held (see `watch`).
        if let Some(events) = self.events.take().filter(|e| !e.is_empty()) {
            let revision = self.state.revs.current();
            self.store.feed.send(Feed::Events(Arc::new(EventBatch::new(revision, events))));
        }
        let rev = self.state.revs.current();
        self.store.applied.send_if_modified(|r| std::mem::replace(r, rev) != rev);
        Ok(std::mem::take(&mut self.answers))
    }
}
