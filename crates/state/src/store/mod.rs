//! The MVCC store: etcd's revisioned key-value semantics over an [`Engine`].
//!
//! Layout in the engine (as etcd lays out bbolt): table `kv` maps a revision (16 bytes, big
//! endian main then sub) to a record `[flag][mvccpb.KeyValue]`, flag 1 marking a tombstone;
//! table `meta` holds the store revision, the compaction revision, member attributes and
//! alarms, plus whatever the Raft layer adds through [`ApplyBatch::put_meta`] in the same
//! atomic write. The in-memory [`KeyIndex`] per key is rebuilt from `kv` at start-up.
//!
//! The parts, in the order a write meets them:
//! - `apply`: [`ApplyBatch`], the deterministic apply of committed commands under the write lock;
//! - `buffer`: applied changes waiting for the engine, and their background write;
//! - `read`: Range, compares and read-only transactions over a consistent view;
//! - `history`: revision-ordered reads for watchers;
//! - `compact`: removing the history a compaction gave up, in the background, in bounded steps;
//! - `record`: the engine layout; `load`: rebuilding the in-memory state from it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cairn_proto::etcdserverpb as pb;
use cairn_storage::Engine;
use cairn_types::{Error, Revision};
use parking_lot::RwLock;

use crate::auth::AuthState;
use crate::command::MemberAttrs;
use crate::index::{IndexKey, KeyIndex};
use crate::rev::{LocalRevisions, RevisionSource};
use crate::watch::{self, Feed, FeedReceiver, FeedSender};

pub use apply::{Answer, ApplyBatch};
use buffer::{Buffered, Flushing, Unflushed};
pub use buffer::{FlushStats, BATCH_BYTES_DEFAULT, FLUSH_OPS};
pub use compact::CompactStats;
use compact::{CompactJob, Compactor};
use load::load_state;
use read::{range, set_txn_revision, ReadView};
pub(crate) use record::{META_AUTH, META_COMPACT, META_LEASE_PREFIX, META_REV};

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

/// Everything the store keeps in memory. Guarded by one lock: apply holds it for writing from
/// its first change until its changes are in `unflushed`, so readers never see half a batch.
struct State {
    keys: BTreeMap<IndexKey, KeyIndex>,
    revs: LocalRevisions,
    /// etcd's compactMainRev: -1 until the first compaction.
    compact_rev: Revision,
    members: BTreeMap<u64, MemberAttrs>,
    /// The data tier's range directory and node records (`Op::Directory`).
    /// Shared, so a reader takes it without a copy; an apply that changes it makes a new one.
    ranges: Arc<BTreeMap<u64, cairn_cluster::directory::Descriptor>>,
    nodes: BTreeMap<u64, cairn_cluster::directory::NodeRecord>,
    /// The next range id to reserve (never handed out twice, even after a merge).
    next_range_id: u64,
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
    /// A compaction whose superseded records are still being removed (see `compact`).
    compaction: Option<CompactJob>,
}

/// A granted lease as every replica knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lease {
    /// Seconds, as granted.
    pub ttl: i64,
    pub keys: BTreeSet<Vec<u8>>,
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
    /// Applied bytes the engine does not count yet (see [`Store::space`]).
    buffered: Buffered,
    /// `--backend-batch-bytes`.
    batch_bytes: AtomicU64,
    compactor: Compactor,
    /// Revisions chunked reads are reading at, with how many read at each (see
    /// `read::Pin`): compaction does not remove history they need.
    read_pins: parking_lot::Mutex<BTreeMap<Revision, usize>>,
}

/// How much room the store takes, as `endpoint status` and the quota see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// The engine file's length plus what apply holds for it: etcd's `dbSize`.
    pub file_bytes: u64,
    /// The keys and values stored (every revision not yet compacted away) plus what apply
    /// holds: etcd's `dbSizeInUse`, and what the quota counts.
    pub in_use_bytes: u64,
}

/// A receiver of the event feed and the store's revisions when it was taken.
pub struct Subscription {
    pub feed: FeedReceiver,
    pub current: Revision,
    pub compact: Revision,
}

impl Store {
    /// Opens the store on `engine`, rebuilding the key index from the stored records.
    pub fn open(engine: Arc<dyn Engine>) -> Result<Store, StoreError> {
        let state = load_state(&*engine)?;
        let (applied, _) = tokio::sync::watch::channel(state.revs.current());
        let auth = RwLock::new(state.auth.clone());
        let compactor = Compactor::new(&state);
        Ok(Store {
            engine,
            state: RwLock::new(state),
            feed: FeedSender::new(watch::FEED_BYTES),
            applied,
            auth,
            flush_stats: Arc::default(),
            buffered: Buffered::default(),
            batch_bytes: AtomicU64::new(BATCH_BYTES_DEFAULT),
            compactor,
            read_pins: Default::default(),
        })
    }

    /// Sets `--backend-batch-bytes`: the bytes of keys and values apply buffers before it
    /// writes them to the engine.
    pub fn set_batch_bytes(&self, bytes: u64) {
        self.batch_bytes.store(bytes.max(1), Ordering::Relaxed);
    }

    /// The store's size: the engine's, plus what apply buffers for it.
    pub fn space(&self) -> Space {
        let buffered = self.buffered.total();
        Space { file_bytes: self.engine.size_bytes() + buffered, in_use_bytes: self.engine.live_bytes() + buffered }
    }

    /// etcd's defragment: writes out the buffer, then rewrites the engine file so it holds
    /// little more than its live bytes. Apply and reads wait while it runs (as in etcd). A
    /// snapshot or backup being read keeps the file busy; defragment retries until `deadline`.
    pub fn defragment(&self, deadline: std::time::Instant) -> Result<(u64, u64), StoreError> {
        loop {
            {
                let mut st = self.state.write();
                self.flush_locked(&mut st)?;
                match self.engine.defragment() {
                    Err(cairn_storage::Error::Busy(why)) if std::time::Instant::now() < deadline => {
                        tracing::debug!(%why, "defragment: the engine is busy; retrying");
                    }
                    other => return Ok(other?),
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
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
        // The buffer described the old contents.
        st.unflushed.take();
        self.buffered.filling.store(0, Ordering::Relaxed);
        *st = load_state(&*self.engine)?;
        self.compactor.restart(&st);
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
        self.flush_locked(&mut st)
    }

    fn flush_locked(&self, st: &mut State) -> Result<(), StoreError> {
        if let Some(f) = st.flushing.take() {
            f.wait()?;
        }
        let bytes = st.unflushed.bytes;
        let ops = st.unflushed.take();
        if !ops.is_empty() {
            self.buffered.writing.fetch_add(bytes, Ordering::Relaxed);
            self.buffered.filling.store(0, Ordering::Relaxed);
            let out = self.flush_stats.write(&*self.engine, ops);
            self.buffered.writing.fetch_sub(bytes, Ordering::Relaxed);
            out?;
        }
        Ok(())
    }

    /// Adds changes to the buffer; hands it to the engine once full. With the write lock held.
    fn buffer(&self, st: &mut State, ops: impl IntoIterator<Item = cairn_storage::WriteOp>) -> Result<(), StoreError> {
        for op in ops {
            st.unflushed.push(op);
        }
        self.buffered.filling.store(st.unflushed.bytes, Ordering::Relaxed);
        // A finished background write: drop its buffer (readers find the records in the engine
        // now) and surface its error, if any.
        if st.flushing.as_ref().is_some_and(|f| f.done.is_finished()) {
            st.flushing.take().expect("checked").wait()?;
        }
        if st.unflushed.full(self.batch_bytes.load(Ordering::Relaxed)) {
            self.flush_in_background(st, None)?;
        }
        Ok(())
    }

    /// Hands the full buffer to a thread that writes it to the engine (see [`Flushing`]); waits
    /// first for the previous one, if still running. Called by apply with the write lock held.
    /// `then` runs on that thread once the write succeeded.
    fn flush_in_background(&self, st: &mut State, then: Option<Box<dyn FnOnce() + Send>>) -> Result<(), StoreError> {
        if let Some(f) = st.flushing.take() {
            f.wait()?;
        }
        let kv = Arc::new(std::mem::take(&mut st.unflushed.kv));
        let bytes = st.unflushed.bytes;
        let ops = st.unflushed.take();
        let engine = self.engine.clone();
        let stats = self.flush_stats.clone();
        let writing = self.buffered.writing.clone();
        writing.fetch_add(bytes, Ordering::Relaxed);
        self.buffered.filling.store(0, Ordering::Relaxed);
        let done = std::thread::Builder::new()
            .name("store-flush".into())
            .spawn(move || {
                let out = stats.write(&*engine, ops);
                // The engine counts these bytes now (or never will: the node stops).
                writing.fetch_sub(bytes, Ordering::Relaxed);
                if let (Ok(()), Some(then)) = (&out, then) {
                    then();
                }
                out
            })
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

    /// etcd's Range at the current revision (or the request's). A single key is read in one
    /// go; a range in chunks (even with a limit, the count covers every key in it), so that a
    /// Range over every key never holds apply back for longer than one chunk.
    pub fn range(&self, r: &pb::RangeRequest) -> Result<pb::RangeResponse, Error> {
        if !r.range_end.is_empty() {
            return Ok(self.range_in_chunks(r)?);
        }
        let view = self.view()?;
        let current = view.state.revs.current();
        Ok(range(&view, r, current)?)
    }

    /// A transaction that only reads, evaluated at the current revision without the log; its
    /// ranges are read in chunks at that revision, pinned until the answer is complete.
    pub fn txn_read_only(&self, t: &pb::TxnRequest) -> Result<pb::TxnResponse, Error> {
        let (at, _pin) = {
            let st = self.state.read();
            let at = st.revs.current();
            *self.read_pins.lock().entry(at).or_default() += 1;
            (at, read::Pin { pins: &self.read_pins, at })
        };
        let mut resp = self.txn_read_only_in_chunks(t, at)?;
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

    pub fn compact_revision(&self) -> Revision {
        self.state.read().compact_rev
    }

    pub fn members(&self) -> BTreeMap<u64, MemberAttrs> {
        self.state.read().members.clone()
    }

    /// The data tier's range descriptors, by id, as of the last apply (the same `Arc` until
    /// an apply changes them).
    pub fn ranges(&self) -> Arc<BTreeMap<u64, cairn_cluster::directory::Descriptor>> {
        self.state.read().ranges.clone()
    }

    /// The data tier's node records, by id.
    pub fn nodes(&self) -> BTreeMap<u64, cairn_cluster::directory::NodeRecord> {
        self.state.read().nodes.clone()
    }

    /// Active alarms as (member id, alarm type).
    pub fn alarms(&self) -> Vec<(u64, i32)> {
        self.state.read().alarms.iter().copied().collect()
    }

    /// Number of granted leases.
    pub fn lease_count(&self) -> usize {
        self.state.read().leases.len()
    }

    /// Whether lease `id` is granted.
    pub fn has_lease(&self, id: i64) -> bool {
        self.state.read().leases.contains_key(&id)
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
}

mod apply;
mod buffer;
mod compact;
mod history;
mod load;
mod read;
mod record;

#[cfg(test)]
mod tests;
