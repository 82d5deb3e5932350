//! One range's state machine, over the node's one data engine.
//!
//! Every range replica on a node writes into the same engine: ranges are disjoint intervals of
//! one ordered keyspace, so their keys share `Table::Kv`, and each range's applied log id,
//! membership and descriptor sit under its id in `Table::Meta`. Apply writes a batch's changes
//! and its applied log id in one atomic engine write, not fsynced (the log is); building a
//! snapshot syncs the engine, after which openraft may purge the log up to it.
//!
//! A snapshot is the range's descriptor, its keys and values, and whether it is frozen for a
//! merge, with a CRC-32C: it is checked before anything is replaced. It is held in memory,
//! bounded by the range's size (ranges split at `--range-split-bytes`) and refused past
//! [`SNAPSHOT_BYTES_MAX`].

use std::collections::BTreeMap;
use std::io;
use std::ops::Bound;
use std::sync::{Arc, OnceLock};

use cairn_storage::{Engine, Reader, Table, WriteBatch};
use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::range::types::{
    Entry, LogId, Pairs, RangeCmd, RangeConfig, RangeDesc, RangeId, RangeOp, RangeReply, Snapshot, SnapshotMeta,
    StoredMembership, MERGE_BYTES_MAX,
};

/// A range snapshot's data, as openraft carries it: encoded bytes, or a view of the range not
/// encoded yet.
///
/// Why a view: openraft asks for the current snapshot twice whenever a replica starts (every
/// range at start-up, the new range of each split), keeps only its meta, and asks again only
/// to send it to a follower. Built eagerly, each ask was a sync of the data engine (a flush of
/// its write buffer to redb) and a scan and encoding of the range: under `redis-benchmark -t set
/// -P 16` on a fresh cluster, the splits by load made that a third of the nodes' CPU
/// (BENCHMARKS.md). A view is an engine reader and the descriptor it holds; its keys are read
/// and encoded ([`SnapshotBytes::into_bytes`]) only when the snapshot is sent.
pub enum SnapshotBytes {
    /// Encoded: received from a leader, or empty (what building a snapshot answers: its meta).
    Encoded(Vec<u8>),
    /// The range as `reader` holds it, `desc` being the descriptor the reader holds.
    View { id: RangeId, desc: RangeDesc, reader: Box<dyn Reader + Send + Sync> },
}

impl SnapshotBytes {
    /// The encoded snapshot: the range's keys with a CRC-32C. A view is read and encoded here,
    /// a scan of the range: call it from a blocking context. A range too large for a snapshot
    /// is an error of kind [`io::ErrorKind::FileTooLarge`] (it may fit once split); any other
    /// error is the engine's.
    pub fn into_bytes(self) -> io::Result<Vec<u8>> {
        let (id, desc, reader) = match self {
            SnapshotBytes::Encoded(b) => return Ok(b),
            SnapshotBytes::View { id, desc, reader } => (id, desc, reader),
        };
        let pairs = scan_pairs(&*reader, &desc, SNAPSHOT_BYTES_MAX)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!("range {id} is larger than a snapshot may be ({SNAPSHOT_BYTES_MAX} bytes)"),
            )
        })?;
        let frozen = reader.get(Table::Meta, &meta_key(id, FROZEN)).map_err(io_err)?.is_some();
        let mut data = encode(&RangeSnapshot { desc, pairs, frozen });
        let crc = crc32c::crc32c(&data);
        data.extend_from_slice(&crc.to_be_bytes());
        Ok(data)
    }
}

/// Largest range snapshot built or accepted.
pub const SNAPSHOT_BYTES_MAX: usize = 512 * 1024 * 1024;

/// Reads of a range's keys as apply sees them.
pub trait DataView {
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>>;
    /// Visits keys in `[from, to)` (`to` empty: no upper bound) in order until `visit` returns
    /// false.
    fn scan(&self, from: &[u8], to: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> io::Result<()>;
}

/// Reads and writes of a range's keys during apply.
pub trait DataWrite: DataView {
    fn put(&mut self, key: &[u8], value: &[u8]);
    fn delete(&mut self, key: &[u8]);
}

/// What a range's data commands mean: the layer above (the data tier's services) decides.
/// Must be deterministic: the same command on the same data gives the same changes and answer
/// on every replica (time comes from `stamp_ms`, the proposer's clock, carried in the log). A
/// command naming keys outside `desc` answers [`RangeReply::WrongRange`] and changes nothing.
/// An `Err` from `apply` is a storage failure: the group stops (openraft treats it as fatal).
pub trait Applier: Send + Sync + 'static {
    fn apply(&self, desc: &RangeDesc, data: &mut dyn DataWrite, stamp_ms: u64, cmd: &[u8]) -> io::Result<RangeReply>;

    /// Answers a read over the range's applied state; `now_ms` is the serving node's clock.
    fn read(&self, desc: &RangeDesc, data: &dyn DataView, cmd: &[u8], now_ms: u64) -> io::Result<RangeReply>;

    /// The first key a client request touches, as the range stores it (`read`: `cmd` is a
    /// read's encoding, else a write's), for the load samples a split by load is placed by;
    /// `None` when it names no key or cannot be decoded.
    fn key_of(&self, cmd: &[u8], read: bool) -> Option<Vec<u8>> {
        let _ = (cmd, read);
        None
    }
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("range types serialize")
}

fn decode<T: serde::de::DeserializeOwned>(b: &[u8], what: &str) -> io::Result<T> {
    postcard::from_bytes(b)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("cannot decode {what}: {e}")))
}

/// `Table::Meta` key of a range's field.
pub fn meta_key(id: RangeId, field: &str) -> Vec<u8> {
    let mut k = b"range/".to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k.push(b'/');
    k.extend_from_slice(field.as_bytes());
    k
}

/// The range whose descriptor `key` (of [`Table::Meta`]) is, if it is one.
pub(crate) fn desc_key_range(key: &[u8]) -> Option<RangeId> {
    let id = key.strip_prefix(b"range/")?.get(..8)?;
    (key.len() == 6 + 8 + 1 + DESC.len() && key.ends_with(DESC.as_bytes()))
        .then(|| u64::from_be_bytes(id.try_into().expect("8 bytes")))
}

/// The stored descriptors in `engine` of every range but `id` whose span overlaps `span`.
pub(crate) fn stored_descs(engine: &dyn Engine, id: RangeId, span: &RangeDesc) -> io::Result<Vec<RangeDesc>> {
    let reader = engine.reader().map_err(io_err)?;
    let mut descs = Vec::new();
    let mut bad = None;
    reader
        .scan(Table::Meta, Bound::Included(b"range/"), Bound::Excluded(b"range0"), &mut |k, v| {
            let Some(at) = desc_key_range(k) else { return true };
            if at == id {
                return true;
            }
            match postcard::from_bytes::<RangeDesc>(v) {
                Ok(d) if overlaps(&d, span) => descs.push(d),
                Ok(_) => {}
                Err(e) => {
                    bad = Some(io_err(format!("range {at}: stored descriptor unreadable: {e}")));
                    return false;
                }
            }
            true
        })
        .map_err(io_err)?;
    match bad {
        Some(e) => Err(e),
        None => Ok(descs),
    }
}

/// Whether two ranges' spans share a key (an empty end is the keyspace's end).
pub(crate) fn overlaps(a: &RangeDesc, b: &RangeDesc) -> bool {
    (a.end.is_empty() || b.start < a.end) && (b.end.is_empty() || a.start < b.end)
}

const APPLIED: &str = "applied";
const MEMBERSHIP: &str = "membership";
pub(crate) const DESC: &str = "desc";
/// Set when the range froze for a merge.
const FROZEN: &str = "frozen";
/// Set (on this node) when the range on the left took this one over: apply changes nothing more.
const ABSORBED: &str = "absorbed";
/// Set (on this node) when the replica's removal began: a restart finishes it.
pub const REMOVING: &str = "removing";

/// Where every range's group starts: as if its log had been purged up to index 0, which its
/// state covers (nothing for a new range, the keys it inherited for one made by a split).
/// Every first replica writes the same starting point and membership, so a group needs no
/// `initialize`; and a replica added later can never be caught up by replaying the log from
/// the range's beginning (a log that cannot hold inherited keys, and whose old entries were
/// routed with old epochs): the leader always sends it a snapshot, which carries the
/// descriptor its state belongs to.
pub fn split_start() -> LogId {
    LogId::new(openraft::impls::leader_id_adv::LeaderId { term: 0, node_id: 0 }, 0)
}

/// What apply tells the node hosting the range.
#[derive(Debug, Clone)]
pub enum RangeEvent {
    /// A split created range `child` here: its group must be started.
    Split { parent: RangeId, child: RangeDesc },
    /// The range on the left took range `right` over: its replica here must go (its keys stay:
    /// they are the left range's now).
    Absorbed { left: RangeId, right: RangeId },
}

fn upper(to: &[u8]) -> Bound<&[u8]> {
    if to.is_empty() {
        Bound::Unbounded
    } else {
        Bound::Excluded(to)
    }
}

/// Whether the range's keys and values, as `view` holds them, fit in a merge
/// ([`MERGE_BYTES_MAX`], as `ReadFrozen` counts them).
fn fits_a_merge(view: &Overlay) -> io::Result<bool> {
    let mut bytes = 0usize;
    view.scan(&view.desc.start, &view.desc.end, &mut |k, v| {
        bytes += k.len() + v.len();
        bytes <= MERGE_BYTES_MAX
    })?;
    Ok(bytes <= MERGE_BYTES_MAX)
}

/// The keys and values of `desc`'s span as `reader` sees them; `None` past `max` bytes.
fn scan_pairs(reader: &dyn Reader, desc: &RangeDesc, max: usize) -> io::Result<Option<Pairs>> {
    let (mut pairs, mut bytes) = (Vec::new(), 0usize);
    reader
        .scan(Table::Kv, Bound::Included(&desc.start), upper(&desc.end), &mut |k, v| {
            bytes += k.len() + v.len();
            pairs.push((serde_bytes::ByteBuf::from(k), serde_bytes::ByteBuf::from(v)));
            bytes <= max
        })
        .map_err(io_err)?;
    Ok((bytes <= max).then_some(pairs))
}

/// The engine (a reader's version of it, or as written so far: see [`Base`]), plus the changes
/// made so far in this apply batch.
struct Overlay<'a> {
    base: Base<'a>,
    desc: RangeDesc,
    changes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// A key outside the range was written: a bug in the applier, refused at commit.
    outside: Option<Vec<u8>>,
}

/// Where an [`Overlay`] reads what its changes do not hold.
enum Base<'a> {
    /// A reader's version: a read's view, all its keys as of one point.
    Reader(&'a dyn Reader),
    /// The engine as written so far, for apply (its batches write the range's keys one after
    /// another; the one other writer is a merge on the left taking them over, which the
    /// `ABSORBED` check at the start of a batch guards, as it did when apply read a reader
    /// taken at that point): point reads need no version of the engine's buffer, whose next
    /// writes would then copy every map node they change while the version lives; a scan
    /// takes a reader when it is asked for.
    Engine(&'a dyn Engine, OnceLock<Box<dyn Reader + Send + Sync>>),
}

impl Base<'_> {
    fn reader(&self) -> io::Result<&dyn Reader> {
        match self {
            Base::Reader(r) => Ok(*r),
            Base::Engine(e, cell) => {
                if cell.get().is_none() {
                    let _ = cell.set(e.reader().map_err(io_err)?);
                }
                Ok(&**cell.get().expect("set above"))
            }
        }
    }
}

impl DataView for Overlay<'_> {
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        match self.changes.get(key) {
            Some(v) => Ok(v.clone()),
            None => match &self.base {
                Base::Reader(r) => r.get(Table::Kv, key).map_err(io_err),
                Base::Engine(e, _) => e.get(Table::Kv, key).map_err(io_err),
            },
        }
    }

    fn scan(&self, from: &[u8], to: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> io::Result<()> {
        let pending = self.changes.range::<[u8], _>((Bound::Included(from), upper(to))).map(|(k, v)| (k, v.as_ref()));
        let reader = self.base.reader()?;
        cairn_storage::scan_overlaid(pending, |f| reader.scan(Table::Kv, Bound::Included(from), upper(to), f), visit)
            .map_err(io_err)
    }
}

impl DataWrite for Overlay<'_> {
    fn put(&mut self, key: &[u8], value: &[u8]) {
        if !self.desc.contains(key) {
            self.outside.get_or_insert_with(|| key.to_vec());
            return;
        }
        self.changes.insert(key.to_vec(), Some(value.to_vec()));
    }

    fn delete(&mut self, key: &[u8]) {
        if !self.desc.contains(key) {
            self.outside.get_or_insert_with(|| key.to_vec());
            return;
        }
        self.changes.insert(key.to_vec(), None);
    }
}

/// The snapshot format.
#[derive(Serialize, Deserialize)]
struct RangeSnapshot {
    desc: RangeDesc,
    pairs: Pairs,
    /// Frozen for a merge (a replica that catches up by snapshot, a new one among them, must
    /// refuse requests as the others do: unfrozen, it applied the writes they refused).
    frozen: bool,
}

struct SmState {
    applied: Option<LogId>,
    membership: StoredMembership,
    desc: RangeDesc,
    /// Whether a snapshot exists (one was built or installed): the data itself is not kept,
    /// a snapshot asked for is built afresh from the engine.
    has_snapshot: bool,
    /// Frozen for a merge: no more requests.
    frozen: bool,
    /// Frozen by applying the freeze here, in log order, not by installing a frozen range's
    /// snapshot (see [`RangeStateMachine::frozen_in_order`]).
    frozen_in_order: bool,
}

struct Inner {
    id: RangeId,
    engine: Arc<dyn Engine>,
    applier: Arc<dyn Applier>,
    state: Mutex<SmState>,
    events: Option<tokio::sync::mpsc::UnboundedSender<RangeEvent>>,
    /// Bytes of keys and values apply has written or deleted since the replica opened: how much
    /// the range may have changed (see [`RangeStateMachine::written`]).
    written: std::sync::atomic::AtomicU64,
    /// Snapshots installed since the replica opened (see [`RangeStateMachine::installs`]).
    installs: std::sync::atomic::AtomicU64,
    /// The node's lock on where its ranges' spans are (see [`SpanLock`]).
    spans: SpanLock,
    /// Set when the replica is being removed: nothing more is written (see
    /// [`RangeStateMachine::close`]).
    closed: std::sync::atomic::AtomicBool,
    /// Set when a write was refused because the replica is being removed or another range
    /// took its keys over here (see [`RangeStateMachine::retired`]).
    retired: std::sync::atomic::AtomicBool,
}

/// One per node, shared by its replicas' state machines, so that no replica's write lands in
/// keys another replica here took over. Held:
/// - by every apply's engine write: a replica lagging the merge that took its keys over
///   (the left range applied it here first) must not write them after the merge did; it
///   checks whether it was absorbed again under the lock when a merge was written since its
///   batch began (the value counts merges and snapshot installs that took a span over);
/// - by a snapshot install's write: it marks other ranges whose stored spans it covers as
///   absorbed (merged away while this node missed it), and a range absorbed or removed
///   meanwhile installs nothing;
/// - by a replica's removal while it decides which keys of its span no other replica holds
///   and deletes them: a merge or snapshot written between that decision and the deletes
///   lost the keys it had just taken over.
pub type SpanLock = Arc<Spans>;

/// See [`SpanLock`].
#[derive(Default)]
pub struct Spans {
    count: Mutex<u64>,
    /// Installs and removals holding the lock or waiting for it (a scan, a large write): an
    /// apply that would wait for them waits on a blocking thread instead of a runtime thread.
    long: std::sync::atomic::AtomicUsize,
}

impl Spans {
    /// Takes the lock; its value counts merges and installs written under it.
    pub fn lock(&self) -> parking_lot::MutexGuard<'_, u64> {
        self.count.lock()
    }

    /// Takes the lock for a while (see [`Spans::held_long`]).
    pub fn lock_long(&self) -> LongHold<'_> {
        self.long.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let count = self.count.lock();
        LongHold { count, long: &self.long }
    }

    /// Whether an install or a removal holds the lock now, or waits for it.
    pub fn held_long(&self) -> bool {
        self.long.load(std::sync::atomic::Ordering::SeqCst) > 0
    }
}

/// The span lock, held by an install or a removal.
pub struct LongHold<'a> {
    count: parking_lot::MutexGuard<'a, u64>,
    long: &'a std::sync::atomic::AtomicUsize,
}

impl Drop for LongHold<'_> {
    fn drop(&mut self) {
        self.long.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl std::ops::Deref for LongHold<'_> {
    type Target = u64;
    fn deref(&self) -> &u64 {
        &self.count
    }
}

impl std::ops::DerefMut for LongHold<'_> {
    fn deref_mut(&mut self) -> &mut u64 {
        &mut self.count
    }
}

/// A range's state machine; clones share state.
#[derive(Clone)]
pub struct RangeStateMachine {
    inner: Arc<Inner>,
}

impl RangeStateMachine {
    /// Opens range `id`'s state machine on `engine`. A range new to this node starts empty with
    /// `desc`; one it already holds keeps its stored descriptor. `events` hears of the ranges
    /// its splits create; `spans` is the node's [`SpanLock`].
    pub fn open(
        engine: Arc<dyn Engine>,
        applier: Arc<dyn Applier>,
        id: RangeId,
        desc: Option<RangeDesc>,
        events: Option<tokio::sync::mpsc::UnboundedSender<RangeEvent>>,
        spans: SpanLock,
    ) -> io::Result<RangeStateMachine> {
        let r = engine.reader().map_err(io_err)?;
        let get = |f: &str| r.get(Table::Meta, &meta_key(id, f)).map_err(io_err);
        let applied: Option<LogId> =
            get(APPLIED)?.map(|b| decode(&b, "a range's applied log id")).transpose()?.flatten();
        let membership: StoredMembership =
            get(MEMBERSHIP)?.map(|b| decode(&b, "a range's membership")).transpose()?.unwrap_or_default();
        let frozen = get(FROZEN)?.is_some();
        let desc = match (get(DESC)?, desc) {
            (Some(b), _) => decode(&b, "a range descriptor")?,
            (None, Some(d)) => {
                let mut wb = WriteBatch::new();
                wb.put(Table::Meta, meta_key(id, DESC), encode(&d));
                engine.write(wb).map_err(io_err)?;
                engine.sync().map_err(io_err)?;
                d
            }
            (None, None) => return Err(io_err(format!("range {id} is not on this node"))),
        };
        Ok(RangeStateMachine {
            inner: Arc::new(Inner {
                id,
                engine,
                applier,
                state: Mutex::new(SmState {
                    applied,
                    membership,
                    desc,
                    has_snapshot: applied.is_some(),
                    frozen,
                    // After a restart no write proposed before it waits for an answer.
                    frozen_in_order: false,
                }),
                events,
                written: Default::default(),
                installs: Default::default(),
                spans,
                closed: Default::default(),
                retired: Default::default(),
            }),
        })
    }

    /// Writes the state a first replica of a new range starts from: its descriptor, and
    /// `membership` at [`split_start`].
    pub fn write_start(
        engine: &dyn Engine,
        desc: &RangeDesc,
        membership: openraft::Membership<u64, crate::types::PeerNode>,
    ) -> io::Result<()> {
        let start = Some(split_start());
        let mut wb = WriteBatch::new();
        wb.put(Table::Meta, meta_key(desc.id, DESC), encode(desc));
        wb.put(Table::Meta, meta_key(desc.id, APPLIED), encode(&start));
        wb.put(Table::Meta, meta_key(desc.id, MEMBERSHIP), encode(&StoredMembership::new(start, membership)));
        engine.write(wb).map_err(io_err)?;
        engine.sync().map_err(io_err)
    }

    pub fn desc(&self) -> RangeDesc {
        self.inner.state.lock().desc.clone()
    }

    /// Fences the replica off before its removal: once this returns, no apply or snapshot
    /// install writes anything more (openraft's shutdown stops the group's core, not a state
    /// machine worker that is applying or installing). One that was writing has written: the
    /// removal decides what to delete after it.
    pub fn close(&self) {
        self.inner.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        drop(self.inner.spans.lock());
    }

    /// Whether this replica refused a write because it is being removed, or because the range
    /// on its left took its keys over here: the storage error that stopped its group then is
    /// no failure of the node's (its removal follows).
    pub fn retired(&self) -> bool {
        self.inner.retired.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Refuses a write of a replica that is being removed or was absorbed (see [`Self::retired`]).
    fn retire(&self, why: String) -> io::Error {
        self.inner.retired.store(true, std::sync::atomic::Ordering::SeqCst);
        io_err(format!("range {}: {why}", self.inner.id))
    }

    fn closed_error(&self) -> io::Error {
        self.retire("the replica is being removed from this node".into())
    }

    /// Whether the range froze for a merge (it serves nothing more).
    pub fn frozen(&self) -> bool {
        self.inner.state.lock().frozen
    }

    /// Whether the range froze by this replica's own apply of the freeze, in log order, since
    /// it opened. Then every entry before the freeze was applied here first, and answered, so
    /// a write of this replica still unanswered comes after the freeze, and no replica runs it.
    /// A replica frozen by a snapshot skipped entries: a write it proposed among them may have
    /// run on the others (their effects are in the snapshot).
    pub fn frozen_in_order(&self) -> bool {
        let st = self.inner.state.lock();
        st.frozen && st.frozen_in_order
    }

    /// Every key and value of the range (a frozen one's, for a merge), refused past `max`.
    pub fn pairs(&self, max: usize) -> io::Result<Pairs> {
        let desc = self.desc();
        let reader = self.inner.engine.reader().map_err(io_err)?;
        scan_pairs(&*reader, &desc, max)?
            .ok_or_else(|| io_err(format!("range {} holds more than {max} bytes", desc.id)))
    }

    pub fn applied(&self) -> Option<LogId> {
        self.inner.state.lock().applied
    }

    /// The range's applied (committed) membership.
    pub fn membership(&self) -> StoredMembership {
        self.inner.state.lock().membership.clone()
    }

    /// Reads the range's keys as of now (what apply has made visible).
    pub fn read<T>(&self, f: impl FnOnce(&dyn DataView) -> T) -> io::Result<T> {
        let reader = self.inner.engine.reader().map_err(io_err)?;
        let desc = self.desc();
        let view = Overlay { base: Base::Reader(&*reader), desc, changes: BTreeMap::new(), outside: None };
        Ok(f(&view))
    }

    /// Bytes of keys and values apply has written or deleted here so far (a counter that only
    /// grows): whoever measures the range with [`Self::bytes`] measures again only once this
    /// moved enough, so an idle range is never scanned twice.
    pub fn written(&self) -> u64 {
        self.inner.written.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Snapshots installed here so far: an install replaces the range's keys without counting
    /// in [`Self::written`], and often under the same epoch, so it makes a measure stale too.
    pub fn installs(&self) -> u64 {
        self.inner.installs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes of the range's keys and values (a full scan: for status, not hot paths).
    pub fn bytes(&self) -> io::Result<u64> {
        let desc = self.desc();
        let reader = self.inner.engine.reader().map_err(io_err)?;
        let mut n = 0u64;
        reader
            .scan(Table::Kv, Bound::Included(&desc.start), upper(&desc.end), &mut |k, v| {
                n += (k.len() + v.len()) as u64;
                true
            })
            .map_err(io_err)?;
        Ok(n)
    }

    /// The first key at or past the middle of the range's bytes (`None`: empty).
    pub fn middle_key(&self) -> io::Result<Option<Vec<u8>>> {
        let total = self.bytes()?;
        let desc = self.desc();
        let reader = self.inner.engine.reader().map_err(io_err)?;
        let (mut n, mut at) = (0u64, None);
        reader
            .scan(Table::Kv, Bound::Included(&desc.start), upper(&desc.end), &mut |k, v| {
                n += (k.len() + v.len()) as u64;
                if n * 2 >= total {
                    at = Some(k.to_vec());
                    return false;
                }
                true
            })
            .map_err(io_err)?;
        Ok(at)
    }

    /// The applied log id and membership `reader` holds (it may be newer than `SmState`'s
    /// when apply ran meanwhile: the meta read with it describes exactly what it holds).
    fn meta_of(&self, reader: &dyn Reader) -> io::Result<SnapshotMeta> {
        let (applied, membership) = {
            let st = self.inner.state.lock();
            (st.applied, st.membership.clone())
        };
        let r_applied: Option<LogId> = reader
            .get(Table::Meta, &meta_key(self.inner.id, APPLIED))
            .map_err(io_err)?
            .map(|b| decode(&b, "a range's applied log id"))
            .transpose()?
            .flatten();
        let r_membership: StoredMembership = reader
            .get(Table::Meta, &meta_key(self.inner.id, MEMBERSHIP))
            .map_err(io_err)?
            .map(|b| decode(&b, "a range's membership"))
            .transpose()?
            .unwrap_or(membership);
        Ok(SnapshotMeta { last_log_id: r_applied.or(applied), last_membership: r_membership })
    }

    /// What openraft calls building a snapshot: it only keeps the snapshot's meta (to purge the
    /// log up to it) and asks for the data when a follower needs it ([`Self::snapshot`]), so
    /// this makes what a reader holds durable and answers its meta, with no data. The reader
    /// is taken before the sync, so the sync covers everything it holds (a write applied
    /// after the sync, not yet durable, is past the meta and its entry stays in the log).
    fn mark_snapshot(&self) -> io::Result<Snapshot> {
        let engine = &self.inner.engine;
        let reader = engine.reader().map_err(io_err)?;
        engine.sync().map_err(io_err)?;
        let meta = self.meta_of(&*reader)?;
        self.inner.state.lock().has_snapshot = true;
        Ok(Snapshot { meta, snapshot: SnapshotBytes::Encoded(Vec::new()) })
    }

    /// The range's snapshot as of now: the meta a reader holds, and that reader as the data,
    /// encoded only if the snapshot is sent ([`SnapshotBytes`]).
    ///
    /// Not synced, unlike [`Self::mark_snapshot`]. openraft asks for it when the replica starts
    /// and before sending a snapshot; only the first is kept, as its snapshot, and the log may
    /// then be purged up to it (`gc_pass`), so that meta must be durable. It is, because a
    /// replica starts only in two ways:
    /// - when the node opens the engine: redb then shows only durable state (an orderly close
    ///   made its last commits durable; after a crash it rolled back to the last durable one);
    /// - as the new range of a split: its meta is [`split_start`], and its log is seeded as
    ///   purged up to there (`RangeLog::seed`), so no entry lies behind it.
    ///
    /// A replica started again while the node runs (without [`crate::range::RangeHost`]
    /// removing it first) would break this and would need the sync back. Sent to a follower,
    /// it is the follower that makes the snapshot durable before its log is cut.
    fn snapshot(&self) -> io::Result<Snapshot> {
        let reader = self.inner.engine.reader().map_err(io_err)?;
        // The descriptor the reader holds: a split applied since has not cut its keys.
        let desc = match reader.get(Table::Meta, &meta_key(self.inner.id, DESC)).map_err(io_err)? {
            Some(b) => decode(&b, "a range descriptor")?,
            None => self.desc(),
        };
        let meta = self.meta_of(&*reader)?;
        Ok(Snapshot { meta, snapshot: SnapshotBytes::View { id: self.inner.id, desc, reader } })
    }

    fn install(&self, meta: &SnapshotMeta, data: Vec<u8>) -> io::Result<()> {
        if data.len() < 4 || data.len() > SNAPSHOT_BYTES_MAX + 4 {
            return Err(io_err(format!("range {}: snapshot of {} bytes refused", self.inner.id, data.len())));
        }
        let (body, crc) = data.split_at(data.len() - 4);
        if crc32c::crc32c(body).to_be_bytes() != crc {
            return Err(io_err(format!("range {}: snapshot checksum mismatch", self.inner.id)));
        }
        let snap: RangeSnapshot = decode(body, "a range snapshot")?;
        if snap.desc.id != self.inner.id {
            return Err(io_err(format!("range {}: snapshot of range {} refused", self.inner.id, snap.desc.id)));
        }
        for (k, _) in &snap.pairs {
            if !snap.desc.contains(k) {
                return Err(io_err(format!("range {}: snapshot holds a key outside the range", self.inner.id)));
            }
        }
        let id = self.inner.id;
        let engine = &self.inner.engine;
        let old = self.desc();
        // Other ranges stored here over the old or the new span: those the snapshot's range
        // took over by a merge this node missed have earlier epochs than the snapshot's
        // (`stale`); their replicas here (until removed) write nothing more, and their keys in
        // the span are replaced. Any other is a range that holds its keys (one split off after
        // the snapshot was taken, already here): they are neither deleted nor written.
        let others = || -> io::Result<(Vec<RangeDesc>, Vec<RangeDesc>)> {
            let mut all = stored_descs(&**engine, id, &snap.desc)?;
            all.extend(stored_descs(&**engine, id, &old)?);
            Ok(all.into_iter().partition(|d| overlaps(d, &snap.desc) && d.epoch < snap.desc.epoch))
        };
        let batch = |keep: &[RangeDesc]| -> io::Result<WriteBatch> {
            let theirs = |k: &[u8]| keep.iter().any(|d| d.contains(k));
            let mut wb = WriteBatch::new();
            // What the range held, under both the old and the new bounds, goes first.
            let reader = engine.reader().map_err(io_err)?;
            for d in [&old, &snap.desc] {
                reader
                    .scan(Table::Kv, Bound::Included(&d.start), upper(&d.end), &mut |k, _| {
                        if !theirs(k) {
                            wb.delete(Table::Kv, k.to_vec());
                        }
                        true
                    })
                    .map_err(io_err)?;
            }
            for (k, v) in snap.pairs.iter().filter(|(k, _)| !theirs(k)) {
                wb.put(Table::Kv, k.to_vec(), v.to_vec());
            }
            Ok(wb)
        };
        let before = others()?;
        let mut wb = batch(&before.1)?;
        // The write is under the span lock (see [`SpanLock`]), taken when the engine's buffer
        // has room: a write waiting for a flush under it would hold up every apply on the node.
        let mut spans = loop {
            engine.wait_for_room().map_err(io_err)?;
            let spans = self.inner.spans.lock_long();
            if !engine.is_full() {
                break spans;
            }
        };
        if self.inner.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(self.closed_error());
        }
        if engine.get(Table::Meta, &meta_key(id, ABSORBED)).map_err(io_err)?.is_some() {
            return Err(self.retire("merged into its left neighbour here, no snapshot installed".into()));
        }
        // Another range here may have written keys of the span since the scan above: then it
        // is scanned again, under the lock (rare: as a rule no other range's span overlaps).
        let (stale, keep) = others()?;
        if !stale.is_empty() || !keep.is_empty() || (&stale, &keep) != (&before.0, &before.1) {
            wb = batch(&keep)?;
        }
        for d in &stale {
            wb.put(Table::Meta, meta_key(d.id, ABSORBED), vec![1]);
        }
        // A merge applied here whose scan came before this write scans again (see `apply_entries`).
        *spans += 1;
        wb.put(Table::Meta, meta_key(id, APPLIED), encode(&meta.last_log_id));
        wb.put(Table::Meta, meta_key(id, MEMBERSHIP), encode(&meta.last_membership));
        wb.put(Table::Meta, meta_key(id, DESC), encode(&snap.desc));
        if snap.frozen {
            wb.put(Table::Meta, meta_key(id, FROZEN), vec![1]);
        } else {
            wb.delete(Table::Meta, meta_key(id, FROZEN));
        }
        engine.write(wb).map_err(io_err)?;
        drop(spans);
        engine.sync().map_err(io_err)?;
        let mut st = self.inner.state.lock();
        st.applied = meta.last_log_id;
        st.membership = meta.last_membership.clone();
        st.desc = snap.desc;
        st.frozen = snap.frozen;
        // Entries the snapshot covers were not applied here (see `frozen_in_order`).
        st.frozen_in_order = st.frozen_in_order && snap.frozen;
        st.has_snapshot = true;
        self.inner.installs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

impl RangeStateMachine {
    /// Applies committed entries, in order, in one engine write; each entry's answer. (The
    /// caller made sure the engine's write buffer has room.)
    fn apply_entries(&self, entries: &[Entry]) -> io::Result<Vec<RangeReply>> {
        let id = self.inner.id;
        let engine = &self.inner.engine;
        let mut replies = Vec::with_capacity(entries.len());
        // Whether the batch merges a range into this one (see [`SpanLock`]), and which.
        let mut absorbs = false;
        let mut merged_rights: Vec<RangeDesc> = Vec::new();
        // Whether this batch froze the range: in order only once it is written (a write that
        // fails stops the group, and the batch's writes before the freeze, unanswered, ran
        // on the other replicas: never a refusal to retry).
        let mut froze_here = false;
        // Before the replica's own state is locked: an install or a removal holding the span
        // lock is waited out without holding up the replica's readers.
        let merges = *self.inner.spans.lock();
        let mut st = self.inner.state.lock();
        let mut view = Overlay {
            base: Base::Engine(&**engine, OnceLock::new()),
            desc: st.desc.clone(),
            changes: BTreeMap::new(),
            outside: None,
        };
        let mut meta: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut events = Vec::new();
        // Taken over by the range on the left (on this node): its keys are that range's now.
        // (Checked again before the write if a merge was written meanwhile: see [`SpanLock`].)
        let absorbed = engine.get(Table::Meta, &meta_key(id, ABSORBED)).map_err(io_err)?.is_some();
        for entry in entries {
            if let Some(applied) = &st.applied {
                if entry.log_id.index <= applied.index {
                    return Err(io_err(format!("range {id}: apply of {} after {}", entry.log_id, applied)));
                }
            }
            let reply = match &entry.payload {
                EntryPayload::Blank => RangeReply::default(),
                EntryPayload::Normal(op) if op.epoch != 0 && op.epoch != view.desc.epoch => {
                    RangeReply::WrongRange(view.desc.clone())
                }
                // This replica lags the merge that took its keys over: the entry is not
                // applied here. Past the freeze, it ran nowhere; before it, it ran on the
                // replicas that applied it in order (its effect is in the merge's keys). An
                // absorbed replica skips the freeze too, so it tells them apart only once it
                // was frozen before: else the entry's outcome is unknown, never a refusal a
                // client could retry on.
                EntryPayload::Normal(_) if absorbed && st.frozen => RangeReply::WrongRange(view.desc.clone()),
                EntryPayload::Normal(_) if absorbed => RangeReply::Unknown(format!(
                    "range {id} was merged into its left neighbour before this replica applied the write"
                )),
                EntryPayload::Normal(RangeOp { cmd: cmd @ (RangeCmd::Freeze | RangeCmd::FreezeIfItFits), .. }) => {
                    let checked = matches!(cmd, RangeCmd::FreezeIfItFits);
                    if checked && !st.frozen && !fits_a_merge(&view)? {
                        // Every replica decides this alike, at this point of the log (the
                        // scan holds this state machine's lock: a merge is of small ranges,
                        // and this is rare).
                        RangeReply::Done(Vec::new())
                    } else {
                        if !st.frozen {
                            st.frozen = true;
                            froze_here = true;
                            view.desc.epoch += 1;
                            st.desc = view.desc.clone();
                            meta.push((meta_key(id, FROZEN), vec![1]));
                            meta.push((meta_key(id, DESC), encode(&view.desc)));
                        }
                        RangeReply::Done(encode(&view.desc))
                    }
                }
                EntryPayload::Normal(_) if st.frozen => RangeReply::WrongRange(view.desc.clone()),
                EntryPayload::Normal(RangeOp { cmd: RangeCmd::Merge { right, pairs }, .. }) => {
                    let d = view.desc.clone();
                    let fits = !d.end.is_empty() && right.start == d.end && right.id != id;
                    if !fits || pairs.iter().any(|(k, _)| !right.contains(k)) {
                        RangeReply::WrongRange(d)
                    } else {
                        let merged = RangeDesc {
                            id,
                            start: d.start.clone(),
                            end: right.end.clone(),
                            epoch: d.epoch.max(right.epoch) + 1,
                        };
                        view.desc = merged.clone();
                        // This node's copy of the right range may lag: its keys are replaced by
                        // the final ones the command carries.
                        let mut stale = Vec::new();
                        view.scan(&right.start, &right.end, &mut |k, _| {
                            stale.push(k.to_vec());
                            true
                        })?;
                        for k in stale {
                            view.delete(&k);
                        }
                        for (k, v) in pairs {
                            view.put(k, v);
                        }
                        st.desc = merged.clone();
                        absorbs = true;
                        merged_rights.push(right.clone());
                        meta.push((meta_key(id, DESC), encode(&merged)));
                        meta.push((meta_key(right.id, ABSORBED), vec![1]));
                        events.push(RangeEvent::Absorbed { left: id, right: right.id });
                        RangeReply::Done(encode(&merged))
                    }
                }
                EntryPayload::Normal(RangeOp { stamp_ms, cmd: RangeCmd::Batch(ops), .. }) => {
                    let desc = view.desc.clone();
                    let mut answers = Vec::with_capacity(ops.len());
                    for op in ops {
                        answers.push(if op.epoch != 0 && op.epoch != desc.epoch {
                            RangeReply::WrongRange(desc.clone())
                        } else {
                            self.inner.applier.apply(&desc, &mut view, *stamp_ms, &op.cmd)?
                        });
                    }
                    RangeReply::Batch(answers)
                }
                EntryPayload::Normal(RangeOp { stamp_ms, cmd: RangeCmd::Data(cmd), .. }) => {
                    let desc = view.desc.clone();
                    self.inner.applier.apply(&desc, &mut view, *stamp_ms, cmd)?
                }
                EntryPayload::Normal(RangeOp { cmd: RangeCmd::Split { key, child }, .. }) => {
                    let d = &view.desc;
                    let inside = key.as_slice() > d.start.as_slice() && (d.end.is_empty() || key < &d.end);
                    if !inside || *child == id {
                        RangeReply::WrongRange(d.clone())
                    } else {
                        let epoch = d.epoch + 1;
                        let child_desc = RangeDesc { id: *child, start: key.clone(), end: d.end.clone(), epoch };
                        let parent = RangeDesc { id, start: d.start.clone(), end: key.clone(), epoch };
                        // The child starts with the parent's membership, at `split_start`;
                        // unless its replica is here already, at this epoch or later (this
                        // replica lagged the split and the child was caught up by snapshot):
                        // its state is not to be written over.
                        let stored: Option<RangeDesc> = engine
                            .get(Table::Meta, &meta_key(*child, DESC))
                            .map_err(io_err)?
                            .map(|b| decode(&b, "a range descriptor"))
                            .transpose()?;
                        if stored.is_none_or(|d| d.epoch < epoch) {
                            let start = Some(split_start());
                            let m = StoredMembership::new(start, st.membership.membership().clone());
                            meta.push((meta_key(*child, DESC), encode(&child_desc)));
                            meta.push((meta_key(*child, APPLIED), encode(&start)));
                            meta.push((meta_key(*child, MEMBERSHIP), encode(&m)));
                        }
                        meta.push((meta_key(id, DESC), encode(&parent)));
                        view.desc = parent.clone();
                        st.desc = parent;
                        events.push(RangeEvent::Split { parent: id, child: child_desc.clone() });
                        RangeReply::Done(encode(&child_desc))
                    }
                }
                EntryPayload::Membership(m) => {
                    st.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    RangeReply::default()
                }
            };
            st.applied = Some(entry.log_id);
            replies.push(reply);
        }
        if let Some(k) = view.outside {
            return Err(io_err(format!("range {id}: apply wrote key {k:?} outside the range")));
        }
        // A reader a scan took goes before the write: while it holds the buffer's version, the
        // write copies every buffer node it touches instead of changing it in place (a profile
        // of a SET run spent 15 % of node CPU in those copies).
        let Overlay { changes, base, .. } = view;
        drop(base);
        // What a merge leaves in the right range's span: what another write put there
        // between this batch's scan and its write (this node's lagging replica of the right
        // range, an install) and the merge did not see goes too (below).
        let merge_keeps: std::collections::HashSet<Vec<u8>> = changes
            .iter()
            .filter(|(k, v)| v.is_some() && merged_rights.iter().any(|r| r.contains(k)))
            .map(|(k, _)| k.clone())
            .collect();
        let mut wb = WriteBatch::with_capacity(changes.len() + 2 + meta.len());
        let changed: usize = changes.iter().map(|(k, v)| k.len() + v.as_ref().map_or(0, |v| v.len())).sum();
        self.inner.written.fetch_add(changed as u64, std::sync::atomic::Ordering::Relaxed);
        for (k, v) in changes {
            match v {
                Some(v) => wb.put(Table::Kv, k, v),
                None => wb.delete(Table::Kv, k),
            }
        }
        for (k, v) in meta {
            wb.put(Table::Meta, k, v);
        }
        wb.put(Table::Meta, meta_key(id, APPLIED), encode(&st.applied));
        wb.put(Table::Meta, meta_key(id, MEMBERSHIP), encode(&st.membership));
        let mut spans = self.inner.spans.lock();
        if self.inner.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(self.closed_error());
        }
        if !absorbed && *spans != merges && engine.get(Table::Meta, &meta_key(id, ABSORBED)).map_err(io_err)?.is_some()
        {
            // The range on the left took this one's keys over while the batch was applied: its
            // writes are not this replica's to make (an error stops the group; its writes'
            // outcome is unknown to their clients, as a lagging absorbed replica answers).
            return Err(self.retire("merged into its left neighbour here while applying".into()));
        }
        if !merged_rights.is_empty() {
            // Also without an install since: this node's lagging replica of the right range
            // may have written a key after the merge's scan (it is absorbed only by this write).
            let reader = engine.reader().map_err(io_err)?;
            for right in &merged_rights {
                reader
                    .scan(Table::Kv, Bound::Included(&right.start), upper(&right.end), &mut |k, _| {
                        if !merge_keeps.contains(k) {
                            wb.delete(Table::Kv, k.to_vec());
                        }
                        true
                    })
                    .map_err(io_err)?;
            }
        }
        if absorbs {
            *spans += 1;
        }
        // A failed engine write is fatal: openraft stops the group on this error.
        engine.write(wb).map_err(io_err)?;
        drop(spans);
        st.frozen_in_order |= froze_here;
        drop(st);
        if let Some(tx) = &self.inner.events {
            for e in events {
                // The host may be shutting down; a range created here is found again at start.
                let _ = tx.send(e);
            }
        }
        Ok(replies)
    }
}

impl RaftSnapshotBuilder<RangeConfig> for RangeStateMachine {
    type SnapshotData = SnapshotBytes;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.mark_snapshot()).await.map_err(io_err)?
    }
}

impl RaftStateMachine<RangeConfig> for RangeStateMachine {
    type SnapshotData = SnapshotBytes;
    type SnapshotBuilder = RangeStateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let st = self.inner.state.lock();
        Ok((st.applied, st.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<RangeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut items = Vec::new();
        while let Some(item) = entries.try_next().await? {
            items.push(item);
        }
        if items.is_empty() {
            return Ok(());
        }
        if self.inner.engine.is_full() {
            // The write below would block this thread until the engine's write buffer has
            // room, a flush into redb that takes up to seconds under load, and with it every
            // task of this runtime thread: the meta group's heartbeats among them (a loaded
            // node's members then lost the meta group's leadership every few seconds). So the
            // wait is on a blocking thread; this group waits without holding a worker. (The
            // buffer is the node's: another range's apply may still fill it between this check
            // and the write below, which then waits as every write did before; rare, since a
            // buffer holds thousands of entries.)
            let engine = self.inner.engine.clone();
            tokio::task::spawn_blocking(move || engine.wait_for_room()).await.map_err(io_err)?.map_err(io_err)?;
        }
        let (entries, responders): (Vec<Entry>, Vec<_>) = items.into_iter().unzip();
        // The write waits for the node's span lock (see [`SpanLock`]); a snapshot install or
        // a replica's removal may hold it for a while: then the batch is applied on a
        // blocking thread, not while holding up this runtime thread's tasks. (Other applies
        // hold it for their engine write alone, which takes the engine's own lock anyway.)
        let busy = self.inner.spans.held_long();
        let replies = if busy {
            let this = self.clone();
            tokio::task::spawn_blocking(move || this.apply_entries(&entries)).await.map_err(io_err)??
        } else {
            self.apply_entries(&entries)?
        };
        for (responder, reply) in responders.into_iter().zip(replies) {
            if let Some(r) = responder {
                r.send(reply);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotBytes) -> Result<(), io::Error> {
        let this = self.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || this.install(&meta, snapshot.into_bytes()?)).await.map_err(io_err)?
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        if !self.inner.state.lock().has_snapshot {
            return Ok(None);
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.snapshot()).await.map_err(io_err)?.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_storage::{BufferLimits, BufferedEngine, MemEngine};
    use std::sync::atomic::Ordering;

    /// Applies nothing: these tests write the engine themselves.
    struct Nothing;

    impl Applier for Nothing {
        fn apply(&self, _: &RangeDesc, _: &mut dyn DataWrite, _: u64, _: &[u8]) -> io::Result<RangeReply> {
            Ok(RangeReply::default())
        }
        fn read(&self, _: &RangeDesc, _: &dyn DataView, _: &[u8], _: u64) -> io::Result<RangeReply> {
            Ok(RangeReply::default())
        }
    }

    fn put(engine: &dyn Engine, key: &[u8], value: &[u8]) {
        let mut wb = WriteBatch::new();
        wb.put(Table::Kv, key.to_vec(), value.to_vec());
        engine.write(wb).unwrap();
    }

    /// openraft asks for the current snapshot whenever a replica starts and keeps only its meta:
    /// that ask neither flushes the engine's write buffer nor reads the range; sent later, the
    /// snapshot holds the range as it was when asked, not as it is when sent.
    #[tokio::test]
    async fn the_current_snapshot_is_read_only_when_sent() {
        let buffer = Arc::new(BufferedEngine::new(Arc::new(MemEngine::new()), BufferLimits::default()));
        let engine: Arc<dyn Engine> = buffer.clone();
        let desc = RangeDesc { id: 7, start: b"b".to_vec(), end: b"y".to_vec(), epoch: 3 };
        let nodes = std::collections::BTreeMap::from([(1u64, crate::types::PeerNode::default())]);
        let members = openraft::Membership::new(vec![[1u64].into()], nodes).unwrap();
        RangeStateMachine::write_start(&*engine, &desc, members).unwrap();
        let mut sm =
            RangeStateMachine::open(engine.clone(), Arc::new(Nothing), 7, None, None, SpanLock::default()).unwrap();
        put(&*engine, b"a", b"outside");
        put(&*engine, b"c", b"1");
        put(&*engine, b"x", b"2");
        let flushes = buffer.stats().flushes.load(Ordering::Relaxed);

        let snap = sm.get_current_snapshot().await.unwrap().expect("a started range has a snapshot");
        assert_eq!(snap.meta.last_log_id, Some(split_start()));
        assert_eq!(buffer.stats().flushes.load(Ordering::Relaxed), flushes, "asking flushed the write buffer");
        assert!(matches!(snap.snapshot, SnapshotBytes::View { .. }), "asking read the range");

        // Written after the ask: not in the snapshot.
        put(&*engine, b"d", b"3");
        put(&*engine, b"c", b"changed");
        let bytes = snap.snapshot.into_bytes().unwrap();
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        assert_eq!(crc32c::crc32c(body).to_be_bytes(), crc);
        let decoded: RangeSnapshot = decode(body, "a range snapshot").unwrap();
        assert_eq!(decoded.desc, desc);
        let pairs: Vec<(&[u8], &[u8])> = decoded.pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
        assert_eq!(pairs, vec![(&b"c"[..], &b"1"[..]), (b"x", b"2")]);

        // Encoded bytes pass through as they are.
        assert_eq!(SnapshotBytes::Encoded(vec![1, 2]).into_bytes().unwrap(), vec![1, 2]);
    }

    /// A frozen range's snapshot freezes the replica that installs it (a replica added to the
    /// range, or one far behind): unfrozen, it would apply the writes the others refuse, and
    /// lead them if elected.
    #[tokio::test]
    async fn a_frozen_range_stays_frozen_on_a_replica_caught_up_by_snapshot() {
        let desc = RangeDesc { id: 7, start: b"b".to_vec(), end: b"y".to_vec(), epoch: 3 };
        let nodes = std::collections::BTreeMap::from([(1u64, crate::types::PeerNode::default())]);
        let members = openraft::Membership::new(vec![[1u64].into()], nodes).unwrap();
        let open = |engine: &Arc<dyn Engine>| {
            RangeStateMachine::open(engine.clone(), Arc::new(Nothing), 7, None, None, SpanLock::default())
        };
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
        RangeStateMachine::write_start(&*engine, &desc, members.clone()).unwrap();
        put(&*engine, b"c", b"1");
        let mut wb = WriteBatch::new();
        wb.put(Table::Meta, meta_key(7, FROZEN), vec![1]);
        engine.write(wb).unwrap();
        let mut sm = open(&engine).unwrap();
        assert!(sm.frozen());
        let snap = sm.get_current_snapshot().await.unwrap().unwrap();
        let (meta, bytes) = (snap.meta.clone(), snap.snapshot.into_bytes().unwrap());

        let other: Arc<dyn Engine> = Arc::new(MemEngine::new());
        RangeStateMachine::write_start(&*other, &desc, members).unwrap();
        let theirs = open(&other).unwrap();
        assert!(!theirs.frozen());
        theirs.install(&meta, bytes).unwrap();
        assert!(theirs.frozen(), "installing a frozen range's snapshot left the replica unfrozen");
        // It skipped entries: a write it proposed among them may have run elsewhere.
        assert!(!theirs.frozen_in_order());
        assert!(open(&other).unwrap().frozen(), "not frozen once reopened");
    }

    fn entry(index: u64, cmd: RangeCmd) -> Entry {
        let log_id = LogId::new(openraft::impls::leader_id_adv::LeaderId { term: 1, node_id: 1 }, index);
        Entry { log_id, payload: EntryPayload::Normal(RangeOp { stamp_ms: 1, epoch: 0, cmd }) }
    }

    /// A replica that lags a merge which took its keys over (the left range's replica on its
    /// node applied the merge) applies no more entries. What it answers a write it proposed
    /// while it led must not be a refusal, which the router retries elsewhere: an entry before
    /// the freeze ran on the replicas that applied it in order, and its effect is in the
    /// merge's keys. Only once the replica had itself frozen is every later entry one that
    /// ran nowhere.
    #[test]
    fn a_replica_lagging_a_merge_answers_writes_before_the_freeze_as_unknown() {
        let desc = RangeDesc { id: 7, start: b"b".to_vec(), end: b"y".to_vec(), epoch: 3 };
        let nodes = std::collections::BTreeMap::from([(1u64, crate::types::PeerNode::default())]);
        let members = openraft::Membership::new(vec![[1u64].into()], nodes).unwrap();
        let absorb = |engine: &Arc<dyn Engine>| {
            let mut wb = WriteBatch::new();
            wb.put(Table::Meta, meta_key(7, ABSORBED), vec![1]);
            engine.write(wb).unwrap();
        };
        let data = || RangeCmd::Data(bytes::Bytes::from_static(b"w"));

        // Absorbed before it applied the freeze: the write may have run.
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
        RangeStateMachine::write_start(&*engine, &desc, members.clone()).unwrap();
        let sm =
            RangeStateMachine::open(engine.clone(), Arc::new(Nothing), 7, None, None, SpanLock::default()).unwrap();
        assert_eq!(sm.apply_entries(&[entry(1, data())]).unwrap(), vec![RangeReply::Done(vec![])]);
        absorb(&engine);
        match &sm.apply_entries(&[entry(2, data()), entry(3, RangeCmd::Freeze)]).unwrap()[..] {
            [RangeReply::Unknown(_), RangeReply::Unknown(_)] => {}
            other => panic!("a lagging replica's answers: {other:?}"),
        }
        assert!(!sm.frozen_in_order());

        // Frozen in order first: what comes after the freeze ran nowhere.
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
        RangeStateMachine::write_start(&*engine, &desc, members).unwrap();
        let sm =
            RangeStateMachine::open(engine.clone(), Arc::new(Nothing), 7, None, None, SpanLock::default()).unwrap();
        let frozen = RangeDesc { epoch: 4, ..desc.clone() };
        assert_eq!(sm.apply_entries(&[entry(1, RangeCmd::Freeze)]).unwrap(), vec![RangeReply::Done(encode(&frozen))]);
        assert!(sm.frozen_in_order());
        absorb(&engine);
        assert_eq!(sm.apply_entries(&[entry(2, data())]).unwrap(), vec![RangeReply::WrongRange(frozen)]);
    }

    /// A memory engine rigged for tests: its writes fail once `fail` is set, and with `spans`,
    /// once `armed`, the range on the left merges range 7 (marks it absorbed, under the span
    /// lock) right after range 7's apply first looked whether it was absorbed.
    struct Rigged {
        inner: MemEngine,
        fail: std::sync::atomic::AtomicBool,
        spans: Option<SpanLock>,
        armed: std::sync::atomic::AtomicBool,
    }

    impl Default for Rigged {
        fn default() -> Self {
            Rigged { inner: MemEngine::new(), fail: Default::default(), spans: None, armed: Default::default() }
        }
    }

    impl Engine for Rigged {
        fn reader(&self) -> cairn_storage::Result<Box<dyn Reader + Send + Sync>> {
            self.inner.reader()
        }
        fn write(&self, batch: WriteBatch) -> cairn_storage::Result<()> {
            if self.fail.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(cairn_storage::Error::Io(io::Error::other("disk gone")));
            }
            self.inner.write(batch)
        }
        fn sync(&self) -> cairn_storage::Result<()> {
            self.inner.sync()
        }
        fn size_bytes(&self) -> u64 {
            self.inner.size_bytes()
        }
        fn live_bytes(&self) -> u64 {
            self.inner.live_bytes()
        }
        fn defragment(&self) -> cairn_storage::Result<(u64, u64)> {
            self.inner.defragment()
        }
        fn get(&self, table: Table, key: &[u8]) -> cairn_storage::Result<Option<Vec<u8>>> {
            let r = self.inner.get(table, key)?;
            if let Some(spans) = &self.spans {
                if key == meta_key(7, ABSORBED) && self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
                    let mut spans = spans.lock();
                    let mut wb = WriteBatch::new();
                    wb.put(Table::Meta, key.to_vec(), vec![1]);
                    self.inner.write(wb)?;
                    *spans += 1;
                }
            }
            Ok(r)
        }
    }

    /// A batch that froze the range but could not be written stops the group with its writes
    /// unanswered, those before the freeze among them, which ran on the other replicas: the
    /// replica is not frozen in order then, so they are never refused (and retried).
    #[test]
    fn a_freeze_that_could_not_be_written_is_not_in_order() {
        let desc = RangeDesc { id: 7, start: b"b".to_vec(), end: b"y".to_vec(), epoch: 3 };
        let nodes = std::collections::BTreeMap::from([(1u64, crate::types::PeerNode::default())]);
        let members = openraft::Membership::new(vec![[1u64].into()], nodes).unwrap();
        let failing = Arc::new(Rigged::default());
        let engine: Arc<dyn Engine> = failing.clone();
        RangeStateMachine::write_start(&*engine, &desc, members).unwrap();
        let sm = RangeStateMachine::open(engine, Arc::new(Nothing), 7, None, None, SpanLock::default()).unwrap();
        failing.fail.store(true, std::sync::atomic::Ordering::Relaxed);
        let data = RangeCmd::Data(bytes::Bytes::from_static(b"w"));
        assert!(sm.apply_entries(&[entry(1, data), entry(2, RangeCmd::Freeze)]).is_err());
        assert!(!sm.frozen_in_order(), "a freeze never written counts as applied in order");
    }

    /// Writes key `cmd` with value "v".
    struct Writes;

    impl Applier for Writes {
        fn apply(&self, _: &RangeDesc, view: &mut dyn DataWrite, _: u64, cmd: &[u8]) -> io::Result<RangeReply> {
            view.put(cmd, b"v");
            Ok(RangeReply::default())
        }
        fn read(&self, _: &RangeDesc, _: &dyn DataView, _: &[u8], _: u64) -> io::Result<RangeReply> {
            Ok(RangeReply::default())
        }
    }

    /// A replica lagging the merge that took its keys over must not write them once the
    /// merge did: a batch that began before the merge was written looks again before its own
    /// write, and writes nothing.
    #[test]
    fn a_replica_absorbed_while_its_batch_applied_writes_nothing() {
        let desc = RangeDesc { id: 7, start: b"b".to_vec(), end: b"y".to_vec(), epoch: 3 };
        let nodes = std::collections::BTreeMap::from([(1u64, crate::types::PeerNode::default())]);
        let members = openraft::Membership::new(vec![[1u64].into()], nodes).unwrap();
        let spans = SpanLock::default();
        let engine = Arc::new(Rigged { spans: Some(spans.clone()), ..Default::default() });
        RangeStateMachine::write_start(&*engine, &desc, members).unwrap();
        let sm = RangeStateMachine::open(engine.clone(), Arc::new(Writes), 7, None, None, spans).unwrap();
        let write = |i, k: &'static [u8]| entry(i, RangeCmd::Data(bytes::Bytes::from_static(k)));
        sm.apply_entries(&[write(1, b"c")]).unwrap();
        engine.armed.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(!sm.retired());
        assert!(sm.apply_entries(&[write(2, b"d")]).is_err());
        assert!(sm.retired(), "the stop of an absorbed replica's group counts as a node failure");
        assert_eq!(engine.inner.get(Table::Kv, b"c").unwrap(), Some(b"v".to_vec()));
        assert_eq!(
            engine.inner.get(Table::Kv, b"d").unwrap(),
            None,
            "an absorbed replica wrote the merged range's keys"
        );
    }

    /// A snapshot is installed neither on a replica that is being removed nor on one whose keys
    /// the range on its left took over here; one that covers other ranges' stored spans (merged
    /// away while this node missed it) marks them absorbed, so their replicas write nothing more.
    #[tokio::test]
    async fn snapshots_install_only_where_no_other_range_holds_the_keys() {
        let desc = RangeDesc { id: 7, start: b"b".to_vec(), end: b"y".to_vec(), epoch: 3 };
        let nodes = std::collections::BTreeMap::from([(1u64, crate::types::PeerNode::default())]);
        let members = openraft::Membership::new(vec![[1u64].into()], nodes).unwrap();
        let open = |engine: &Arc<dyn Engine>| {
            RangeStateMachine::open(engine.clone(), Arc::new(Writes), 7, None, None, SpanLock::default()).unwrap()
        };
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
        RangeStateMachine::write_start(&*engine, &desc, members.clone()).unwrap();
        put(&*engine, b"c", b"1");
        let snap = open(&engine).get_current_snapshot().await.unwrap().unwrap();
        let (meta, bytes) = (snap.meta.clone(), snap.snapshot.into_bytes().unwrap());
        let fresh = |stale: Option<RangeDesc>| {
            let e: Arc<dyn Engine> = Arc::new(MemEngine::new());
            RangeStateMachine::write_start(&*e, &desc, members.clone()).unwrap();
            if let Some(d) = stale {
                let mut wb = WriteBatch::new();
                wb.put(Table::Meta, meta_key(d.id, DESC), encode(&d));
                e.write(wb).unwrap();
            }
            e
        };

        // Range 9's stored span [c, e) lies in the snapshot's: it is marked absorbed.
        let e = fresh(Some(RangeDesc { id: 9, start: b"c".to_vec(), end: b"e".to_vec(), epoch: 2 }));
        open(&e).install(&meta, bytes.clone()).unwrap();
        assert_eq!(e.get(Table::Kv, b"c").unwrap(), Some(b"1".to_vec()));
        assert!(e.get(Table::Meta, &meta_key(9, ABSORBED)).unwrap().is_some());
        // Range 10's [d, x) at epoch 4, later than the snapshot's: split off after the snapshot
        // was taken, and here already. Its keys are its own: neither deleted nor overwritten.
        let e = fresh(Some(RangeDesc { id: 10, start: b"d".to_vec(), end: b"x".to_vec(), epoch: 4 }));
        put(&*e, b"d", b"theirs");
        put(&*e, b"n", b"theirs");
        let mut wb = WriteBatch::new();
        wb.put(Table::Kv, b"c".to_vec(), b"stale".to_vec());
        e.write(wb).unwrap();
        open(&e).install(&meta, bytes.clone()).unwrap();
        assert!(e.get(Table::Meta, &meta_key(10, ABSORBED)).unwrap().is_none());
        assert_eq!(e.get(Table::Kv, b"d").unwrap(), Some(b"theirs".to_vec()));
        assert_eq!(e.get(Table::Kv, b"n").unwrap(), Some(b"theirs".to_vec()));
        assert_eq!(e.get(Table::Kv, b"c").unwrap(), Some(b"1".to_vec()));
        // Range 3's [y, z) does not overlap it: untouched.
        let e = fresh(Some(RangeDesc { id: 3, start: b"y".to_vec(), end: b"z".to_vec(), epoch: 2 }));
        open(&e).install(&meta, bytes.clone()).unwrap();
        assert!(e.get(Table::Meta, &meta_key(3, ABSORBED)).unwrap().is_none());

        // Absorbed here: nothing installed.
        let e = fresh(None);
        let mut wb = WriteBatch::new();
        wb.put(Table::Meta, meta_key(7, ABSORBED), vec![1]);
        e.write(wb).unwrap();
        assert!(open(&e).install(&meta, bytes.clone()).is_err());
        assert_eq!(e.get(Table::Kv, b"c").unwrap(), None);

        // Being removed: neither an install nor an apply writes.
        let e = fresh(None);
        let sm = open(&e);
        sm.close();
        assert!(sm.install(&meta, bytes).is_err());
        assert!(sm.apply_entries(&[entry(1, RangeCmd::Data(bytes::Bytes::from_static(b"d")))]).is_err());
        assert_eq!(e.get(Table::Kv, b"c").unwrap(), None);
        assert_eq!(e.get(Table::Kv, b"d").unwrap(), None);
    }

    /// A replica that lagged a split whose child is here already (caught up by a snapshot at
    /// the split's epoch or later) leaves the child's state as it is when it applies the split.
    #[test]
    fn a_lagging_split_does_not_write_over_its_childs_state() {
        let desc = RangeDesc { id: 7, start: b"b".to_vec(), end: b"y".to_vec(), epoch: 3 };
        let nodes = std::collections::BTreeMap::from([(1u64, crate::types::PeerNode::default())]);
        let members = openraft::Membership::new(vec![[1u64].into()], nodes).unwrap();
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
        RangeStateMachine::write_start(&*engine, &desc, members).unwrap();
        let child = RangeDesc { id: 8, start: b"m".to_vec(), end: b"y".to_vec(), epoch: 6 };
        let applied = Some(LogId::new(openraft::impls::leader_id_adv::LeaderId { term: 2, node_id: 1 }, 40));
        let mut wb = WriteBatch::new();
        wb.put(Table::Meta, meta_key(8, DESC), encode(&child));
        wb.put(Table::Meta, meta_key(8, APPLIED), encode(&applied));
        engine.write(wb).unwrap();
        let sm =
            RangeStateMachine::open(engine.clone(), Arc::new(Nothing), 7, None, None, SpanLock::default()).unwrap();
        sm.apply_entries(&[entry(1, RangeCmd::Split { key: b"m".to_vec(), child: 8 })]).unwrap();
        assert_eq!(sm.desc().end, b"m".to_vec());
        let stored: RangeDesc = decode(&engine.get(Table::Meta, &meta_key(8, DESC)).unwrap().unwrap(), "").unwrap();
        assert_eq!(stored, child, "the child's descriptor was written over");
        let stored: Option<LogId> =
            decode(&engine.get(Table::Meta, &meta_key(8, APPLIED)).unwrap().unwrap(), "").unwrap();
        assert_eq!(stored, applied, "the child's applied position was written over");
    }
}
