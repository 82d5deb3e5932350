//! The MVCC store: etcd's revisioned key-value semantics over an [`Engine`].
//!
//! Layout in the engine (as etcd lays out bbolt): table `kv` maps a revision (16 bytes, big
//! endian main then sub) to a record `[flag][mvccpb.KeyValue]`, flag 1 marking a tombstone;
//! table `meta` holds the store revision, the compaction revision, member attributes and
//! alarms, plus whatever the Raft layer adds through [`ApplyBatch::put_meta`] in the same
//! atomic write. The in-memory [`KeyIndex`] per key is rebuilt from `kv` at start-up.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use cairn_proto::etcdserverpb as pb;
use cairn_proto::mvccpb::KeyValue;
use cairn_storage::{Engine, Reader, Table, WriteBatch, WriteOp};
use cairn_types::{Error, Revision};
use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use prost::Message;

use crate::auth::AuthState;
use crate::command::{Command, MemberAttrs, Op, Response};
use crate::index::{IndexKey, KeyAt, KeyIndex};
use crate::rev::{LocalRevisions, Rev, RevisionSource};
use crate::watch::{self, EventBatch, Feed, FeedReceiver, FeedSender, History, HistoryError};

const META_REV: &[u8] = b"store/rev";
const META_COMPACT: &[u8] = b"store/compact_rev";
const META_MEMBER_PREFIX: &[u8] = b"member/";
const META_ALARM_PREFIX: &[u8] = b"alarm/";
const META_LEASE_PREFIX: &[u8] = b"lease/";
const META_AUTH: &[u8] = b"auth";

const FLAG_PUT: u8 = 0;
const FLAG_TOMBSTONE: u8 = 1;

/// A failure of the store itself (not of a request): the node must stop.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Storage(#[from] cairn_storage::Error),
    #[error("store corruption: {0}")]
    Corrupt(String),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt(_) | StoreError::Storage(cairn_storage::Error::Corruption(_)) => Error::Corrupt,
            other => Error::Internal(other.to_string()),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Record {
    tombstone: bool,
    kv: KeyValue,
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.kv.encoded_len());
        out.push(if self.tombstone { FLAG_TOMBSTONE } else { FLAG_PUT });
        self.kv.encode(&mut out).expect("Vec grows");
        out
    }

    fn decode(rev: Rev, b: &[u8]) -> Result<Record, StoreError> {
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

/// Everything the store keeps in memory. Guarded by one lock: apply holds it for writing from
/// its first change until its changes are in `unflushed`, so readers never see half a batch.
struct State {
    keys: BTreeMap<IndexKey, KeyIndex>,
    revs: LocalRevisions,
    /// etcd's compactMainRev: -1 until the first compaction.
    compact_rev: Revision,
    members: BTreeMap<u64, MemberAttrs>,
    /// (member id, alarm type) pairs that are active.
    alarms: BTreeSet<(u64, i32)>,
    /// Granted leases and the keys attached to each (etcd's lessor state, minus expiry times:
    /// those live only on the leader, see `services::lease`).
    leases: BTreeMap<i64, Lease>,
    /// The lease of each live key that has one.
    key_lease: HashMap<Vec<u8>, i64>,
    /// Users, roles, permissions (see [`crate::auth`]).
    auth: Arc<AuthState>,
    unflushed: Unflushed,
    /// The previous buffer while a background thread writes it to the engine (see
    /// [`Flushing`]).
    flushing: Option<Flushing>,
}

/// A granted lease as every replica knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lease {
    /// Seconds, as granted.
    pub ttl: i64,
    pub keys: BTreeSet<Vec<u8>>,
}

/// Applied changes not yet written to the engine (etcd's batch transaction buffer).
///
/// Committing a redb transaction per applied batch cost more than the rest of apply; instead
/// changes collect here and go to the engine in one transaction every [`FLUSH_OPS`] changes (and
/// before snapshots and at shutdown). Readers look here before the engine. Nothing is lost in a
/// crash: the engine's applied log id is flushed with the changes it covers, and openraft
/// re-applies the log after it.
#[derive(Default)]
struct Unflushed {
    /// Kv table: revision key -> stored record, `None` for a deletion (compaction). Ordered, so
    /// history reads can scan it by revision.
    kv: BTreeMap<[u8; 16], Option<Vec<u8>>>,
    /// Every change, in order, for the engine.
    ops: WriteBatch,
}

/// Changes buffered before they are written to the engine in one transaction.
pub const FLUSH_OPS: usize = 8192;

/// A full buffer being written to the engine by a thread of its own.
///
/// Writing 8192 changes into redb takes tens of milliseconds on a small machine (26 ms measured
/// under the put benchmark, 1.3 times a second); done inside apply, under the state's write
/// lock, it stalled every write and read of the member for that long, which set the put p99.
/// Now apply hands the buffer to a thread and goes on. Until the state is told the write is
/// done, readers keep consulting the buffer (`kv`): an engine reader may or may not include
/// the write, and the records are the same either way. The buffer is dropped only under the
/// write lock after the engine commit returned, so a reader that finds it gone opened its
/// engine reader after that commit. At most one write is in flight; engine writes stay in order.
struct Flushing {
    kv: Arc<BTreeMap<[u8; 16], Option<Vec<u8>>>>,
    done: std::thread::JoinHandle<Result<(), StoreError>>,
}

impl Flushing {
    /// Waits for the write to finish.
    fn wait(self) -> Result<(), StoreError> {
        self.done
            .join()
            .unwrap_or_else(|_| Err(cairn_storage::Error::Engine("the store flush thread panicked".into()).into()))
    }
}

pub struct Store {
    engine: Arc<dyn Engine>,
    state: RwLock<State>,
    /// Applied events, for watchers ([`watch`]).
    feed: FeedSender,
    /// The current revision, for waiters ([`Store::wait_revision`]).
    applied: tokio::sync::watch::Sender<Revision>,
    /// The auth store as last applied, for permission checks that should not wait for the
    /// state lock (apply holds it for whole batches).
    auth: RwLock<Arc<AuthState>>,
    flush_stats: Arc<FlushStats>,
    /// Requests this member forwarded, waiting for their `Op::Origin` entry to be applied here.
    waiters: Arc<Waiters>,
}

/// The requests a member forwarded and now waits to apply itself (etcd's wait registry): apply
/// of an `Op::Origin` naming this member hands the op's response to the waiter registered under
/// its id, once the batch is visible. The ids start at a random point, so an entry forwarded
/// before a restart and applied after it cannot answer a request of the new process.
#[derive(Debug)]
struct Waiters {
    next: std::sync::atomic::AtomicU64,
    waiting: Mutex<HashMap<(u64, u64), tokio::sync::oneshot::Sender<Response>>>,
}

/// A random 64-bit number (std's per-process random hash keys, mixed with the clock), so
/// waiter ids of two runs of a process do not overlap in practice.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}

/// A registration with [`Store::await_apply`]: resolves to the response of the `Op::Origin`
/// carrying its id once this member has applied it; dropping it withdraws the registration.
#[derive(Debug)]
pub struct ApplyWaiter {
    key: (u64, u64),
    rx: tokio::sync::oneshot::Receiver<Response>,
    waiters: Arc<Waiters>,
}

impl ApplyWaiter {
    /// The id to put in the `Op::Origin` of the forwarded request.
    pub fn id(&self) -> u64 {
        self.key.1
    }
}

impl std::future::Future for ApplyWaiter {
    type Output = Response;

    /// Pending until the entry is applied here. An entry that never is (the leader refused the
    /// request, or a snapshot install skipped it) leaves the future pending: the caller races it
    /// against the leader's reply.
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Response> {
        match std::pin::Pin::new(&mut self.rx).poll(cx) {
            std::task::Poll::Ready(Ok(r)) => std::task::Poll::Ready(r),
            _ => std::task::Poll::Pending,
        }
    }
}

impl Drop for ApplyWaiter {
    fn drop(&mut self) {
        self.waiters.waiting.lock().remove(&self.key);
    }
}

/// Counters of the buffer's writes to the engine, for metrics.
#[derive(Default, Debug)]
pub struct FlushStats {
    pub flushes: std::sync::atomic::AtomicU64,
    pub micros: std::sync::atomic::AtomicU64,
    /// The longest single flush.
    pub max_micros: std::sync::atomic::AtomicU64,
}

impl FlushStats {
    /// Writes `ops` to `engine`, counting the write and its time.
    fn write(&self, engine: &dyn Engine, ops: WriteBatch) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::Relaxed;
        let t = std::time::Instant::now();
        engine.write(ops)?;
        let us = t.elapsed().as_micros() as u64;
        self.flushes.fetch_add(1, Relaxed);
        self.micros.fetch_add(us, Relaxed);
        self.max_micros.fetch_max(us, Relaxed);
        Ok(())
    }
}

/// A receiver of the event feed and the store's revisions when it was taken.
pub struct Subscription {
    pub feed: FeedReceiver,
    pub current: Revision,
    pub compact: Revision,
}

/// Read access needed to evaluate requests: a consistent index and the records behind it.
trait View {
    fn state(&self) -> &State;
    fn record(&self, rev: Rev) -> Result<Record, StoreError>;
}

struct ReadView<'a> {
    state: RwLockReadGuard<'a, State>,
    reader: Box<dyn Reader + Send + Sync>,
}

impl View for ReadView<'_> {
    fn state(&self) -> &State {
        &self.state
    }

    fn record(&self, rev: Rev) -> Result<Record, StoreError> {
        read_record(&self.state, &*self.reader, rev)
    }
}

/// A record by revision: from the buffer, the buffer being flushed, or the engine.
fn read_record(st: &State, reader: &dyn Reader, rev: Rev) -> Result<Record, StoreError> {
    let missing =
        || StoreError::Corrupt(format!("the index refers to revision {}.{}, which is missing", rev.main, rev.sub));
    let key = rev.to_key();
    let flushing = st.flushing.as_ref().map(|f| &*f.kv);
    for layer in std::iter::once(&st.unflushed.kv).chain(flushing) {
        match layer.get(&key) {
            Some(Some(b)) => return Record::decode(rev, b),
            Some(None) => return Err(missing()),
            None => {}
        }
    }
    match reader.get(Table::Kv, &key)? {
        Some(b) => Record::decode(rev, &b),
        None => Err(missing()),
    }
}

/// The keys of `[key, end)` in etcd's range convention: an empty `end` means the single key,
/// `end == [0]` means every key from `key` on.
fn keys_in<'a>(
    keys: &'a BTreeMap<IndexKey, KeyIndex>,
    key: &[u8],
    end: &[u8],
) -> Box<dyn Iterator<Item = (&'a IndexKey, &'a KeyIndex)> + 'a> {
    if end.is_empty() {
        return Box::new(keys.get_key_value(key).into_iter());
    }
    if end == [0] {
        return Box::new(keys.range::<[u8], _>((Bound::Included(key), Bound::Unbounded)));
    }
    if key >= end {
        return Box::new(std::iter::empty());
    }
    Box::new(keys.range::<[u8], _>((Bound::Included(key), Bound::Excluded(end))))
}

fn to_kv(view: &dyn View, key: &[u8], at: KeyAt, keys_only: bool) -> Result<KeyValue, StoreError> {
    let rec = view.record(at.modified)?;
    if rec.tombstone || rec.kv.key != key {
        return Err(StoreError::Corrupt(format!(
            "revision {}.{} does not hold a put of the indexed key",
            at.modified.main, at.modified.sub
        )));
    }
    let mut kv = rec.kv;
    if keys_only {
        kv.value.clear();
    }
    Ok(kv)
}

/// The outcome of a read: a request error (an answer for the client) or a store failure.
pub type ReadResult<T> = Result<T, ReadError>;

#[derive(Debug)]
pub enum ReadError {
    Request(Error),
    Store(StoreError),
}

impl From<StoreError> for ReadError {
    fn from(e: StoreError) -> Self {
        ReadError::Store(e)
    }
}

impl From<Error> for ReadError {
    fn from(e: Error) -> Self {
        ReadError::Request(e)
    }
}

impl From<ReadError> for Error {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Request(e) => e,
            ReadError::Store(e) => {
                tracing::error!(error = %e, "store failure while serving a read");
                e.into()
            }
        }
    }
}

/// etcd's Range: `default_rev` is the revision read when the request names none.
fn range(view: &dyn View, r: &pb::RangeRequest, default_rev: Revision) -> ReadResult<pb::RangeResponse> {
    let st = view.state();
    let current = st.revs.current();
    if r.revision > current {
        return Err(Error::FutureRev.into());
    }
    let at = if r.revision > 0 { r.revision } else { default_rev };
    if at < st.compact_rev {
        return Err(Error::Compacted.into());
    }
    let sort_order = pb::range_request::SortOrder::try_from(r.sort_order).map_err(|_| Error::InvalidSortOption)?;
    let sort_target = pb::range_request::SortTarget::try_from(r.sort_target).map_err(|_| Error::InvalidSortOption)?;
    use pb::range_request::{SortOrder, SortTarget};
    let filtered =
        r.min_mod_revision != 0 || r.max_mod_revision != 0 || r.min_create_revision != 0 || r.max_create_revision != 0;
    // As etcd: fetch everything when results are sorted or filtered, and one extra otherwise
    // to learn whether there are more.
    let fetch =
        if sort_order != SortOrder::None || filtered || r.limit <= 0 { usize::MAX } else { r.limit as usize + 1 };

    let mut count = 0i64;
    let mut found: Vec<(&[u8], KeyAt)> = Vec::new();
    for (key, ki) in keys_in(&st.keys, &r.key, &r.range_end) {
        if let Some(k) = ki.get(at) {
            count += 1;
            if !r.count_only && found.len() < fetch {
                found.push((key.as_slice(), k));
            }
        }
    }
    let mut resp = pb::RangeResponse { header: Some(header(current)), count, ..Default::default() };
    if r.count_only {
        return Ok(resp);
    }
    let mut kvs = Vec::with_capacity(found.len());
    for (key, k) in found {
        kvs.push(to_kv(view, key, k, r.keys_only)?);
    }
    if r.max_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision <= r.max_mod_revision);
    }
    if r.min_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision >= r.min_mod_revision);
    }
    if r.max_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision <= r.max_create_revision);
    }
    if r.min_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision >= r.min_create_revision);
    }
    let mut order = sort_order;
    if sort_target != SortTarget::Key && order == SortOrder::None {
        // Results come out sorted by key; any other target needs an explicit sort.
        order = SortOrder::Ascend;
    }
    if order != SortOrder::None {
        match sort_target {
            SortTarget::Key => kvs.sort_by(|a, b| a.key.cmp(&b.key)),
            SortTarget::Version => kvs.sort_by_key(|kv| kv.version),
            SortTarget::Create => kvs.sort_by_key(|kv| kv.create_revision),
            SortTarget::Mod => kvs.sort_by_key(|kv| kv.mod_revision),
            SortTarget::Value => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
        }
        if order == SortOrder::Descend {
            kvs.reverse();
        }
    }
    if r.limit > 0 && kvs.len() > r.limit as usize {
        kvs.truncate(r.limit as usize);
        resp.more = true;
    }
    resp.kvs = kvs;
    Ok(resp)
}

fn header(revision: Revision) -> pb::ResponseHeader {
    pb::ResponseHeader { revision, ..Default::default() }
}

/// etcd's compare: every live key in the compare's range must satisfy it; a missing key has
/// zero revisions, version and lease, and a value compare on it always fails.
fn compare(view: &dyn View, c: &pb::Compare, at: Revision) -> ReadResult<bool> {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let target = CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version);
    let result = CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal);
    let st = view.state();
    let mut kvs = Vec::new();
    for (key, ki) in keys_in(&st.keys, &c.key, &c.range_end) {
        if let Some(k) = ki.get(at) {
            kvs.push(to_kv(view, key, k, false)?);
        }
    }
    if kvs.is_empty() {
        if target == CompareTarget::Value {
            return Ok(false);
        }
        kvs.push(KeyValue::default());
    }
    let ok = kvs.iter().all(|kv| {
        let ord = match (&c.target_union, target) {
            (Some(TargetUnion::Value(v)), CompareTarget::Value) => kv.value.as_slice().cmp(v.as_slice()),
            (None, CompareTarget::Value) => kv.value.as_slice().cmp(&[][..]),
            (Some(TargetUnion::Version(v)), _)
            | (Some(TargetUnion::CreateRevision(v)), _)
            | (Some(TargetUnion::ModRevision(v)), _)
            | (Some(TargetUnion::Lease(v)), _) => field(kv, target).cmp(v),
            (Some(TargetUnion::Value(_)), _) | (None, _) => field(kv, target).cmp(&0),
        };
        match result {
            CompareResult::Equal => ord.is_eq(),
            CompareResult::NotEqual => ord.is_ne(),
            CompareResult::Greater => ord.is_gt(),
            CompareResult::Less => ord.is_lt(),
        }
    });
    Ok(ok)
}

fn txn_read_only(view: &dyn View, t: &pb::TxnRequest, at: Revision) -> ReadResult<pb::TxnResponse> {
    use pb::request_op::Request;
    use pb::response_op::Response as R;
    let mut ok = true;
    for c in &t.compare {
        if !compare(view, c, at)? {
            ok = false;
            break;
        }
    }
    let mut responses = Vec::new();
    for op in if ok { &t.success } else { &t.failure } {
        let r = match &op.request {
            Some(Request::RequestRange(r)) => R::ResponseRange(range(view, r, at)?),
            Some(Request::RequestTxn(n)) => R::ResponseTxn(txn_read_only(view, n, at)?),
            None => R::ResponseRange(pb::RangeResponse::default()),
            Some(Request::RequestPut(_)) | Some(Request::RequestDeleteRange(_)) => {
                return Err(Error::Internal("a write in a read-only transaction".into()).into())
            }
        };
        responses.push(pb::ResponseOp { response: Some(r) });
    }
    Ok(pb::TxnResponse { header: None, succeeded: ok, responses })
}

fn field(kv: &KeyValue, target: pb::compare::CompareTarget) -> i64 {
    use pb::compare::CompareTarget;
    match target {
        CompareTarget::Version => kv.version,
        CompareTarget::Create => kv.create_revision,
        CompareTarget::Mod => kv.mod_revision,
        CompareTarget::Lease => kv.lease,
        CompareTarget::Value => 0,
    }
}

impl Store {
    /// Opens the store on `engine`, rebuilding the key index from the stored records.
    pub fn open(engine: Arc<dyn Engine>) -> Result<Store, StoreError> {
        let state = load_state(&*engine)?;
        let (applied, _) = tokio::sync::watch::channel(state.revs.current());
        let auth = RwLock::new(state.auth.clone());
        Ok(Store {
            engine,
            state: RwLock::new(state),
            feed: FeedSender::new(watch::FEED_BYTES),
            applied,
            auth,
            flush_stats: Arc::default(),
            waiters: Arc::new(Waiters {
                next: std::sync::atomic::AtomicU64::new(random_u64()),
                waiting: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Registers a wait, by `member` (this member's id), for the apply of a request it is about
    /// to forward as an `Op::Origin` with the returned waiter's id.
    pub fn await_apply(&self, member: u64) -> ApplyWaiter {
        let id = self.waiters.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.waiters.waiting.lock().insert((member, id), tx);
        ApplyWaiter { key: (member, id), rx, waiters: self.waiters.clone() }
    }

    /// Replaces the engine's contents through `f` (a snapshot install) and reloads the index,
    /// with readers held off for the whole time so none sees a half-installed state.
    pub fn replace<T, E: From<StoreError>>(&self, f: impl FnOnce(&dyn Engine) -> Result<T, E>) -> Result<T, E> {
        let mut st = self.state.write();
        // A buffer still being written must land before the engine's contents are replaced.
        if let Some(f) = st.flushing.take() {
            f.wait()?;
        }
        let out = f(&*self.engine)?;
        *st = load_state(&*self.engine)?;
        *self.auth.write() = st.auth.clone();
        self.feed.send(Feed::Resync);
        self.applied.send_replace(st.revs.current());
        Ok(out)
    }

    /// The auth store as applied so far.
    pub fn auth(&self) -> Arc<AuthState> {
        self.auth.read().clone()
    }

    /// The engine. Changes applied since the last [`Store::flush`] are not in it yet.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// Writes every buffered change to the engine (not fsynced: see [`Engine::sync`]).
    pub fn flush(&self) -> Result<(), StoreError> {
        let mut st = self.state.write();
        if let Some(f) = st.flushing.take() {
            f.wait()?;
        }
        let ops = st.unflushed.take();
        if !ops.is_empty() {
            self.flush_stats.write(&*self.engine, ops)?;
        }
        Ok(())
    }

    /// Hands the full buffer to a thread that writes it to the engine (see [`Flushing`]); waits
    /// first for the previous one, if still running. Called by apply with the write lock held.
    fn flush_in_background(&self, st: &mut State) -> Result<(), StoreError> {
        if let Some(f) = st.flushing.take() {
            f.wait()?;
        }
        let kv = Arc::new(std::mem::take(&mut st.unflushed.kv));
        let ops = st.unflushed.take();
        let engine = self.engine.clone();
        let stats = self.flush_stats.clone();
        let done = std::thread::Builder::new()
            .name("store-flush".into())
            .spawn(move || stats.write(&*engine, ops))
            .map_err(cairn_storage::Error::Io)?;
        st.flushing = Some(Flushing { kv, done });
        Ok(())
    }

    /// How often and how long the buffer was written to the engine.
    pub fn flush_stats(&self) -> &FlushStats {
        &self.flush_stats
    }

    fn view(&self) -> Result<ReadView<'_>, StoreError> {
        // Take the lock before opening the engine reader: apply writes the engine while holding
        // the lock for writing, so a reader opened under the read lock sees exactly what the
        // index describes.
        let state = self.state.read();
        let reader = self.engine.reader()?;
        Ok(ReadView { state, reader })
    }

    /// etcd's Range at the current revision (or the request's).
    pub fn range(&self, r: &pb::RangeRequest) -> Result<pb::RangeResponse, Error> {
        let view = self.view()?;
        let current = view.state.revs.current();
        Ok(range(&view, r, current)?)
    }

    /// A transaction that only reads, evaluated at the current revision without the log.
    pub fn txn_read_only(&self, t: &pb::TxnRequest) -> Result<pb::TxnResponse, Error> {
        let view = self.view()?;
        let at = view.state.revs.current();
        let mut resp = txn_read_only(&view, t, at)?;
        set_txn_revision(&mut resp, at);
        Ok(resp)
    }

    pub fn current_revision(&self) -> Revision {
        self.state.read().revs.current()
    }

    /// Waits until this replica has applied revision `rev`; false if `deadline` passed first.
    /// A member that forwarded a write waits here before answering, so the writer's next
    /// serializable read or watch on the same member sees its write (as in etcd, which answers
    /// after the local apply).
    pub async fn wait_revision(&self, rev: Revision, deadline: std::time::Instant) -> bool {
        let mut rx = self.applied.subscribe();
        let wait = rx.wait_for(|r| *r >= rev);
        tokio::time::timeout_at(deadline.into(), wait).await.is_ok_and(|r| r.is_ok())
    }

    /// A receiver of the event feed, with the revisions at the moment it was taken: every
    /// batch applied after `current` will arrive on it (unless it lags).
    pub fn subscribe(&self) -> Subscription {
        let st = self.state.read();
        Subscription { feed: self.feed.subscribe(), current: st.revs.current(), compact: st.compact_rev }
    }

    /// Number of event feed receivers (watch streams).
    pub fn feed_receivers(&self) -> usize {
        self.feed.receiver_count()
    }

    /// The events in `[start, end)` (etcd's range convention) from revision `from` on, read
    /// from the store: whole revisions, in order, stopping after the revision at which their
    /// size passes `max_bytes`, or at which the records scanned (matching or not) pass
    /// [`watch::HISTORY_SCAN_RECORDS`] or four times `max_bytes`, so one call holds the read
    /// lock briefly however sparse the range is. A watcher catching up calls this until
    /// `through` reaches `current`.
    pub fn history(&self, start: &[u8], end: &[u8], from: Revision, max_bytes: usize) -> Result<History, HistoryError> {
        let view = self.view().map_err(|e| HistoryError::Store(e.to_string()))?;
        let st = &*view.state;
        let current = st.revs.current();
        // etcd: a watcher whose start is below the compaction revision is canceled.
        if from < st.compact_rev {
            return Err(HistoryError::Compacted(st.compact_rev));
        }
        let mut out = History { events: Vec::new(), through: current, current };
        if from > current {
            // Nothing yet; a start in the future stays where it is.
            out.through = from - 1;
            return Ok(out);
        }
        let mut bytes = 0usize;
        let (mut scanned, mut scanned_bytes) = (0usize, 0usize);
        // The revision at which the size limit was passed: finish it, then stop.
        let mut stop_after: Option<Revision> = None;
        let mut bad = None;
        let mut visit = |k: &[u8], v: &[u8]| -> bool {
            let Some(rev) = Rev::from_key(k) else {
                bad = Some(format!("bad revision key {k:?}"));
                return false;
            };
            if let Some(last) = stop_after {
                if rev.main > last {
                    out.through = last;
                    return false;
                }
            }
            scanned += 1;
            scanned_bytes += v.len();
            if (scanned >= watch::HISTORY_SCAN_RECORDS || scanned_bytes >= max_bytes.saturating_mul(4))
                && stop_after.is_none()
            {
                stop_after = Some(rev.main);
            }
            let rec = match Record::decode(rev, v) {
                Ok(r) => r,
                Err(e) => {
                    bad = Some(e.to_string());
                    return false;
                }
            };
            if watch::in_range(&rec.kv.key, start, end) {
                bytes += rec.kv.key.len() + rec.kv.value.len() + 32;
                out.events.push(if rec.tombstone {
                    watch::delete_event(rec.kv.key, rev.main)
                } else {
                    watch::put_event(rec.kv)
                });
                if bytes >= max_bytes && stop_after.is_none() {
                    stop_after = Some(rev.main);
                }
            }
            true
        };
        let lo = Rev::new(from, 0).to_key();
        let hi = Rev::new(current + 1, 0).to_key();
        // Flushed records first, skipping those a buffered compaction removed; buffered puts are
        // all newer than anything flushed, so they follow in order.
        // A buffer being flushed sits between the two: its records are newer than the engine's
        // others, older than the buffer's, and the engine may or may not hold them yet, so the
        // engine scan skips them and they are visited from the buffer.
        let flushing = st.flushing.as_ref().map(|f| &*f.kv);
        let mut stopped = false;
        view.reader
            .scan(Table::Kv, Bound::Included(&lo), Bound::Excluded(&hi), &mut |k, v| {
                if let Ok(key) = <[u8; 16]>::try_from(k) {
                    if flushing.is_some_and(|f| f.contains_key(&key)) {
                        return true;
                    }
                    if let Some(None) = st.unflushed.kv.get(&key) {
                        return true;
                    }
                }
                let go_on = visit(k, v);
                stopped = !go_on;
                go_on
            })
            .map_err(|e| HistoryError::Store(e.to_string()))?;
        if let (false, Some(f)) = (stopped, flushing) {
            for (k, v) in f.range(lo..hi) {
                if let (Some(v), None | Some(Some(_))) = (v, st.unflushed.kv.get(k)) {
                    if !visit(k, v) {
                        stopped = true;
                        break;
                    }
                }
            }
        }
        if !stopped {
            for (k, v) in st.unflushed.kv.range(lo..hi) {
                if let Some(v) = v {
                    if !visit(k, v) {
                        break;
                    }
                }
            }
        }
        if let Some(why) = bad {
            return Err(HistoryError::Store(why));
        }
        Ok(out)
    }

    /// Fills each event's `prev_kv` (the key's value at the revision before the event, as etcd:
    /// none for a create, none once compacted), reading under one view.
    pub fn fill_prev_kv(&self, events: &mut [cairn_proto::mvccpb::Event]) {
        let Ok(view) = self.view() else { return };
        for e in events {
            let Some(kv) = &e.kv else { continue };
            let create =
                e.r#type == cairn_proto::mvccpb::event::EventType::Put as i32 && kv.create_revision == kv.mod_revision;
            if create || kv.mod_revision <= 1 {
                continue;
            }
            let r = pb::RangeRequest { key: kv.key.clone(), revision: kv.mod_revision - 1, ..Default::default() };
            e.prev_kv = range(&view, &r, kv.mod_revision - 1).ok().and_then(|mut r| r.kvs.pop());
        }
    }

    /// The key's value as of revision `at`, if it was live then and `at` is not compacted
    /// (a watch event's `prev_kv`).
    pub fn get_at(&self, key: &[u8], at: Revision) -> Option<KeyValue> {
        if at <= 0 {
            return None;
        }
        let r = pb::RangeRequest { key: key.to_vec(), revision: at, ..Default::default() };
        self.range(&r).ok().and_then(|mut r| r.kvs.pop())
    }

    pub fn compact_revision(&self) -> Revision {
        self.state.read().compact_rev
    }

    pub fn members(&self) -> BTreeMap<u64, MemberAttrs> {
        self.state.read().members.clone()
    }

    /// Active alarms as (member id, alarm type).
    pub fn alarms(&self) -> Vec<(u64, i32)> {
        self.state.read().alarms.iter().copied().collect()
    }

    /// Every lease with its granted TTL.
    pub fn leases(&self) -> Vec<(i64, i64)> {
        self.state.read().leases.iter().map(|(id, l)| (*id, l.ttl)).collect()
    }

    /// One lease, with its attached keys.
    pub fn lease(&self, id: i64) -> Option<Lease> {
        self.state.read().leases.get(&id).cloned()
    }

    /// Number of live keys (for status).
    pub fn key_count(&self) -> usize {
        self.state.read().keys.values().filter(|k| k.is_live()).count()
    }

    /// Starts applying a batch of committed commands. Readers wait until it is committed.
    pub fn begin(&self) -> Result<ApplyBatch<'_>, StoreError> {
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
            answers: Vec::new(),
        })
    }
}

fn load_state(engine: &dyn Engine) -> Result<State, StoreError> {
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
    let compact_rev = read_i64(META_COMPACT)?.unwrap_or(-1);
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
        let Some(rev) = Rev::from_key(k) else {
            bad = Some(format!("bad revision key {k:?}"));
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
        alarms,
        leases,
        key_lease,
        auth: Arc::new(auth),
        unflushed: Unflushed::default(),
        flushing: None,
    })
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
    /// Responses for this member's waiters (`Op::Origin`), handed over once the batch is visible.
    answers: Vec<(tokio::sync::oneshot::Sender<Response>, Response)>,
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
                if let Some(tx) = self.store.waiters.waiting.lock().remove(&(*member, *id)) {
                    self.answers.push((tx, r.clone()));
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
        let revision = if doomed.is_empty() { self.state.revs.current() } else { w.main };
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
                    // A read in a transaction sees the transaction's own earlier writes.
                    let at = if w.wrote() { w.main } else { self.state.revs.current() };
                    R::ResponseRange(range(self, r, at)?)
                }
                Some(Request::RequestPut(p)) => R::ResponsePut(self.put(p, w)?),
                Some(Request::RequestDeleteRange(d)) => R::ResponseDeleteRange(self.delete(d, w)?),
                Some(Request::RequestTxn(n)) => R::ResponseTxn(self.exec_txn(n, path, w)?),
                None => R::ResponseRange(pb::RangeResponse::default()),
            };
            responses.push(pb::ResponseOp { response: Some(r) });
        }
        Ok(pb::TxnResponse { header: None, succeeded: ok, responses })
    }

    fn compact(&mut self, rev: Revision) -> ReadResult<pb::CompactionResponse> {
        if rev <= self.state.compact_rev {
            return Err(Error::Compacted.into());
        }
        if rev > self.state.revs.current() {
            return Err(Error::FutureRev.into());
        }
        let mut removed = Vec::new();
        self.state.keys.retain(|_, ki| !ki.compact(rev, &mut removed));
        for r in removed {
            self.batch.delete(Table::Kv, r.to_key().to_vec());
            self.pending.remove(&r);
        }
        self.state.compact_rev = rev;
        self.batch.put(Table::Meta, META_COMPACT.to_vec(), rev.to_be_bytes().to_vec());
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
    /// buffer to the engine in one transaction once it holds [`FLUSH_OPS`] changes.
    pub fn commit(mut self) -> Result<(), StoreError> {
        if self.meta_dirty {
            let rev = self.state.revs.current();
            self.batch.put(Table::Meta, META_REV.to_vec(), rev.to_be_bytes().to_vec());
        }
        let batch = std::mem::take(&mut self.batch);
        let u = &mut self.state.unflushed;
        for op in batch.ops {
            if let WriteOp::Put { table: Table::Kv, key, value } = &op {
                if let Ok(k) = <[u8; 16]>::try_from(key.as_slice()) {
                    u.kv.insert(k, Some(value.clone()));
                }
            } else if let WriteOp::Delete { table: Table::Kv, key } = &op {
                if let Ok(k) = <[u8; 16]>::try_from(key.as_slice()) {
                    u.kv.insert(k, None);
                }
            }
            u.ops.ops.push(op);
        }
        // A finished background write: drop its buffer (readers find the records in the engine
        // now) and surface its error, if any.
        if self.state.flushing.as_ref().is_some_and(|f| f.done.is_finished()) {
            self.state.flushing.take().expect("checked").wait()?;
        }
        if self.state.unflushed.ops.len() >= FLUSH_OPS {
            self.store.flush_in_background(&mut self.state)?;
        }
        // Published while the write lock is still held (see `watch`).
        if let Some(events) = self.events.take().filter(|e| !e.is_empty()) {
            let revision = self.state.revs.current();
            self.store.feed.send(Feed::Events(Arc::new(EventBatch::new(revision, events))));
        }
        let rev = self.state.revs.current();
        self.store.applied.send_if_modified(|r| std::mem::replace(r, rev) != rev);
        for (tx, r) in self.answers.drain(..) {
            let _ = tx.send(r);
        }
        Ok(())
    }
}

impl Unflushed {
    /// Empties the buffer, returning its changes for the engine.
    fn take(&mut self) -> WriteBatch {
        self.kv.clear();
        // The next buffer is sized for a whole flush up front: grown by doubling, it would be
        // reallocated a dozen times per flush, each time onto freshly faulted pages.
        std::mem::replace(&mut self.ops, WriteBatch::with_capacity(FLUSH_OPS + FLUSH_OPS / 8))
    }
}

/// Sets the header revision of a transaction response and of the transactions nested in it.
fn set_txn_revision(resp: &mut pb::TxnResponse, revision: Revision) {
    resp.header = Some(header(revision));
    for op in &mut resp.responses {
        if let Some(pb::response_op::Response::ResponseTxn(n)) = &mut op.response {
            set_txn_revision(n, revision);
        }
    }
}

fn member_key(id: u64) -> Vec<u8> {
    let mut k = META_MEMBER_PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn lease_key(id: i64) -> Vec<u8> {
    let mut k = META_LEASE_PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn alarm_key(member: u64, alarm: i32) -> Vec<u8> {
    let mut k = META_ALARM_PREFIX.to_vec();
    k.extend_from_slice(&member.to_be_bytes());
    k.extend_from_slice(&alarm.to_be_bytes());
    k
}

#[cfg(test)]
mod tests;
