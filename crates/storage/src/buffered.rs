//! A write buffer in front of an engine: writes land in memory and reach the engine in large
//! batches, written by a thread of their own.
//!
//! Why: the data tier applies every Raft entry (a batch of client writes) as one engine write,
//! and a redb commit per entry cost more than the rest of apply put together (a profile of a
//! long SET run: 33 % of all samples in the engine write, 15 % in its commit). The meta group's
//! store buffers the same way (`cairn_state::store::buffer`); this is the general form, an
//! [`Engine`] itself, so the ranges' state machines are unchanged by it.
//!
//! How:
//! - Writes go into `filling`, one persistent ordered map per table ([`imbl::OrdMap`]: a reader
//!   takes it in O(1) and keeps that version while writes go on, copy-on-write). Keys and values
//!   are [`Bytes`], so a copied map node clones reference counts, not values. The `Kv` table's
//!   changes are also kept in a hash map, for point reads (see [`KvIndex`]).
//! - Once `filling` holds [`BufferLimits::bytes`] or [`BufferLimits::entries`], it becomes
//!   `flushing` and a thread writes it to the engine in one batch (the last change of each key
//!   only, in key order). One batch is in flight at a time, so the engine sees them in order.
//!   If `filling` fills again meanwhile, writers wait for that write: two buffers exist at most,
//!   so memory stays bounded by twice the limit (plus one write batch each).
//! - Readers look in `filling`, then `flushing`, then the engine. `flushing` is dropped only
//!   under the state lock after the engine's commit returned, and readers are made under that
//!   lock, so a reader that does not see it took its engine view after that commit; a reader
//!   that does see it reads the same values from it whether or not its engine view holds them.
//! - Reads that reach the engine (of the `Kv` table, the data tier's keys) go through a read
//!   cache bounded in bytes ([`BufferLimits::read_cache_bytes`]): a GET of a key the buffer does
//!   not hold was a redb B-tree walk, 30 % of a node's CPU under `redis-benchmark --cluster -t
//!   get -P 16` (BENCHMARKS.md). A cached value is the engine's as of the flush count it was read
//!   under (`Cached::flushes`). Before the count moves on, a flush gives each key it wrote
//!   that the cache holds the new value, under the new count; and a value read from the engine
//!   is cached only under the current count. So a cached value stays the engine's value from
//!   its count until now, and a reader uses it only if its own view is at that count or later.
//!   A reader whose layers hold the key never asks the engine.
//! - [`Engine::sync`] writes out everything buffered, then syncs the engine: what was written
//!   before it is durable after it, as the trait says. A write with [`WriteOp::Clear`] first
//!   writes out the buffer and then goes to the engine as is, under the lock.
//! - A failed engine write (an error, or a panic in it) fails the buffer for good
//!   ([`Error::Failed`] from every later write and sync): the data it held is not in the engine, and retrying is not safe to assume
//!   (the same reasoning as the log's fsync failure). Readers keep seeing it, so a failure never
//!   makes data appear to go back in time.
//!
//! Nothing is lost in a crash that was not already at risk: the engine's writes are not durable
//! until [`Engine::sync`] either way, and whoever writes keeps its own log (Raft's) past the last
//! sync.

use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use imbl::OrdMap;
use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::engine::{Engine, Reader, Table, WriteBatch, WriteOp};
use crate::{Error, Result};

type Map = OrdMap<Bytes, Option<Bytes>>;
type Tables = [Map; Table::ALL.len()];

/// A layer's [`Table::Kv`] changes by key, each with the layer's count of changes when it was
/// made: what a point read looks up. A lookup in the ordered map compares the key with about
/// 17 others for 100,000 keys, and the data tier's keys share long prefixes (slot, hash tag):
/// under `redis-benchmark --cluster -t get -P 16` its lookups and their `memcmp`s were 30 % of
/// the nodes' samples (BENCHMARKS.md). A hash map finds a key with one hash and one comparison:
/// `cargo bench -p cairn-storage --bench reads -- buffer/` reads a buffered key in 132 ns
/// against 248 ns, and writes in 640 ns against 380 ns.
///
/// It is not versioned as the ordered map is (a persistent hash trie was tried first: its
/// inserts copy the trie's nodes whenever a reader holds a version, and `-P 16` SETs then
/// cost more node CPU): it holds the layer's latest change of each key. A reader's view knows the layer's count when it was taken, and uses an entry
/// only if it was made by then, which makes it the view's own latest change of that key; a
/// later one sends it to its ordered map. Entries are never removed while the layer lives, so
/// a key the map lacks is in no view's ordered map either.
#[derive(Default)]
struct KvIndex(
    parking_lot::RwLock<std::collections::HashMap<Bytes, (u64, Option<Bytes>), foldhash::fast::RandomState>>,
);

/// What a reader holds of a layer.
#[derive(Clone)]
struct LayerView {
    tables: Tables,
    kv: Arc<KvIndex>,
    /// The layer's count of changes when the view was taken.
    changes: u64,
}

impl LayerView {
    fn get(&self, table: Table, key: &[u8]) -> Option<Option<Bytes>> {
        if table == Table::Kv {
            match self.kv.0.read().get(key) {
                None => return None,
                Some((made, value)) if *made <= self.changes => return Some(value.clone()),
                // Changed since the view was taken: the view's own change is in its map.
                Some(_) => {}
            }
        }
        self.tables[slot(table)].get(key).cloned()
    }
}

fn slot(table: Table) -> usize {
    Table::ALL.iter().position(|t| *t == table).expect("every table is in Table::ALL")
}

/// When a buffer goes to the engine, and how much the read cache holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferLimits {
    /// Bytes of keys and values buffered (a deletion counts its key).
    pub bytes: u64,
    /// Distinct keys buffered.
    pub entries: usize,
    /// Bytes of the read cache of `Kv` values read from the engine (keys, values and
    /// [`CACHED_OVERHEAD_BYTES`] per key); 0 turns it off.
    pub read_cache_bytes: u64,
}

/// What a cached key costs beyond its key and value bytes (the map's slot, the two `Bytes`
/// handles, the count): counted against [`BufferLimits::read_cache_bytes`].
pub const CACHED_OVERHEAD_BYTES: u64 = 96;

impl Default for BufferLimits {
    /// 32 MiB or 131,072 keys, whichever comes first. Each redb write copies every B-tree
    /// page it touches, so a larger one writes fewer pages per key when keys are overwritten
    /// or close together:
    /// under `redis-benchmark --cluster -P 16 -r 100000 -t set` on 3 nodes, node CPU per SET
    /// was 43 µs with 16,384 keys per write and 33 µs with 131,072 (BENCHMARKS.md). The count
    /// bounds what the maps' nodes cost beyond the bytes (about 200 bytes a key: the ordered
    /// map's and the hash index's).
    fn default() -> Self {
        BufferLimits { bytes: 32 << 20, entries: 131_072, read_cache_bytes: 64 << 20 }
    }
}

/// Changes not yet in the engine: the last one of each key.
#[derive(Clone, Default)]
struct Layer {
    tables: Tables,
    /// [`Table::Kv`]'s changes again, for point reads.
    kv: Arc<KvIndex>,
    /// Changes made to the layer so far (see [`KvIndex`]).
    changes: u64,
    bytes: u64,
    entries: usize,
}

fn size(key: &[u8], value: &Option<Bytes>) -> u64 {
    (key.len() + value.as_ref().map_or(0, |v| v.len())) as u64
}

impl Layer {
    fn change(&mut self, table: Table, key: Vec<u8>, value: Option<Vec<u8>>) {
        let key = Bytes::from(key);
        let value = value.map(Bytes::from);
        self.bytes += size(&key, &value);
        self.changes += 1;
        if table == Table::Kv {
            self.kv.0.write().insert(key.clone(), (self.changes, value.clone()));
        }
        match self.tables[slot(table)].insert(key.clone(), value) {
            Some(old) => self.bytes -= size(&key, &old),
            None => self.entries += 1,
        }
    }

    fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// The layer's latest change of `key`, if it holds one.
    fn get(&self, table: Table, key: &[u8]) -> Option<Option<Bytes>> {
        match table {
            Table::Kv => self.kv.0.read().get(key).map(|(_, v)| v.clone()),
            _ => self.tables[slot(table)].get(key).cloned(),
        }
    }

    fn view(&self) -> LayerView {
        LayerView { tables: self.tables.clone(), kv: self.kv.clone(), changes: self.changes }
    }

    fn full(&self, limits: BufferLimits) -> bool {
        self.bytes >= limits.bytes || self.entries >= limits.entries
    }

    /// The engine batch that writes this layer: each key's last change, in key order.
    fn batch(&self) -> WriteBatch {
        let mut wb = WriteBatch::with_capacity(self.entries);
        for (table, map) in Table::ALL.iter().zip(&self.tables) {
            for (k, v) in map.iter() {
                match v {
                    Some(v) => wb.put(*table, k.to_vec(), v.to_vec()),
                    None => wb.delete(*table, k.to_vec()),
                }
            }
        }
        wb
    }
}

/// A value read from the engine, as of flush count `flushes` (see the module doc).
#[derive(Clone)]
struct Cached {
    flushes: u64,
    value: Option<Bytes>,
}

#[derive(Clone)]
struct CachedWeight;

impl quick_cache::Weighter<Bytes, Cached> for CachedWeight {
    fn weight(&self, key: &Bytes, c: &Cached) -> u64 {
        (key.len() + c.value.as_ref().map_or(0, Bytes::len)) as u64 + CACHED_OVERHEAD_BYTES
    }
}

/// The read cache of `Kv` values (see the module doc). quick_cache: a sharded map bounded by
/// weight, with CLOCK-Pro eviction (a scan does not flush out the hot keys).
struct ReadCache {
    map: quick_cache::sync::Cache<Bytes, Cached, CachedWeight>,
    /// The flush count values are cached under. A flush refreshes the cached keys it wrote under
    /// the write lock, which then moves it on; a fill holds the read lock (or gives up, never waits).
    filling_under: parking_lot::RwLock<u64>,
}

impl ReadCache {
    fn new(bytes: u64) -> ReadCache {
        let items = (bytes / 512).max(16) as usize;
        ReadCache {
            map: quick_cache::sync::Cache::with_weighter(items, bytes, CachedWeight),
            filling_under: parking_lot::RwLock::new(0),
        }
    }

    /// Caches `value`, read from an engine view as of flush count `flushes`, if that is still
    /// the current count (else a newer flush may have changed the key).
    fn fill(&self, key: &[u8], flushes: u64, value: &Option<Vec<u8>>) {
        let Some(current) = self.filling_under.try_read() else { return };
        if *current == flushes {
            let value = value.as_deref().map(Bytes::copy_from_slice);
            self.map.insert(Bytes::copy_from_slice(key), Cached { flushes, value });
        }
    }

    /// Before flush count `next` is made current: each key `layer` wrote that is cached now
    /// gets the value the flush wrote, as of `next` (readers of older views no longer use it);
    /// with no layer, every key goes.
    ///
    /// Only keys cached now: caching every written key (tried on 2026-12-06) made a flush a
    /// fifth more expensive (quick_cache's inserts and evictions: 21 % of the flush thread's
    /// samples, 8 % of a node's CPU under `redis-benchmark -t set -P 16`) and did not move GET
    /// figures. A key read often stays warm across the flushes of its writes.
    fn flushed(&self, layer: Option<&Layer>, next: u64) {
        let mut current = self.filling_under.write();
        match layer {
            Some(l) => {
                for (k, v) in l.tables[slot(Table::Kv)].iter() {
                    // Refused when the key is not cached (nothing stale stays) or when the value
                    // is too heavy for the cache, in which case quick_cache drops the old one.
                    let _ = self.map.replace(k.clone(), Cached { flushes: next, value: v.clone() }, true);
                }
            }
            None => self.map.clear(),
        }
        *current = next;
    }
}

struct State {
    filling: Layer,
    /// The layer being written to the engine, until its commit returned (see the module doc).
    flushing: Option<Arc<Layer>>,
    /// Why the buffer failed, once an engine write did.
    failed: Option<String>,
    /// Writes to the engine so far (flushes, and writes of whole tables): the point in time of
    /// an engine view, for the read cache.
    flushes: u64,
}

/// Counters of the buffer's writes to the engine, for metrics and status.
#[derive(Debug, Default)]
pub struct BufferStats {
    pub flushes: AtomicU64,
    pub flushed_keys: AtomicU64,
    pub micros: AtomicU64,
    /// The longest single flush.
    pub max_micros: AtomicU64,
    /// Bytes buffered now (filling and flushing).
    pub buffered_bytes: AtomicU64,
    /// Reads answered by the read cache, and reads that went to the engine with it on.
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
}

struct Inner {
    base: Arc<dyn Engine>,
    state: Mutex<State>,
    /// Signalled whenever a flush ends.
    flushed: Condvar,
    limits: BufferLimits,
    stats: BufferStats,
    cache: Option<ReadCache>,
}

/// An [`Engine`] that buffers writes in memory in front of another (see the module doc).
pub struct BufferedEngine {
    inner: Arc<Inner>,
}

impl BufferedEngine {
    pub fn new(base: Arc<dyn Engine>, limits: BufferLimits) -> BufferedEngine {
        let limits = BufferLimits { bytes: limits.bytes.max(1), entries: limits.entries.max(1), ..limits };
        BufferedEngine {
            inner: Arc::new(Inner {
                base,
                state: Mutex::new(State { filling: Layer::default(), flushing: None, failed: None, flushes: 0 }),
                flushed: Condvar::new(),
                limits,
                stats: BufferStats::default(),
                cache: (limits.read_cache_bytes > 0).then(|| ReadCache::new(limits.read_cache_bytes)),
            }),
        }
    }

    pub fn stats(&self) -> &BufferStats {
        &self.inner.stats
    }

    /// Bytes the read cache holds now (keys, values and their overhead).
    pub fn read_cache_bytes(&self) -> u64 {
        self.inner.cache.as_ref().map_or(0, |c| c.map.weight())
    }

    /// Writes everything buffered so far to the engine (not synced).
    pub fn flush(&self) -> Result<()> {
        self.inner.flush_now()
    }
}

impl Inner {
    fn failed(st: &State) -> Result<()> {
        match &st.failed {
            Some(e) => Err(Error::Failed(format!("a buffered write to the state engine failed: {e}"))),
            None => Ok(()),
        }
    }

    /// Waits until no flush is in flight (or the buffer failed).
    fn wait_idle(&self, st: &mut MutexGuard<'_, State>) -> Result<()> {
        while st.flushing.is_some() && st.failed.is_none() {
            self.flushed.wait(st);
        }
        Self::failed(st)
    }

    /// Whether a write would wait for the flush in flight: `filling` is full meanwhile.
    fn full(&self, st: &State) -> bool {
        st.flushing.is_some() && st.failed.is_none() && st.filling.full(self.limits)
    }

    /// Back-pressure: a second full buffer waits for the first to reach the engine. (Letting
    /// it grow past the limit meanwhile made the next buffer in flight that much larger too:
    /// a test saw four times the limit held.)
    fn wait_for_room(&self, st: &mut MutexGuard<'_, State>) -> Result<()> {
        while self.full(st) {
            self.flushed.wait(st);
        }
        Self::failed(st)
    }

    fn count_buffered(&self, st: &State) {
        let bytes = st.filling.bytes + st.flushing.as_ref().map_or(0, |l| l.bytes);
        self.stats.buffered_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Makes `filling` the layer in flight; the caller writes it out with [`Inner::write_out`].
    fn hand_over(&self, st: &mut State) -> Arc<Layer> {
        let layer = Arc::new(std::mem::take(&mut st.filling));
        st.flushing = Some(layer.clone());
        layer
    }

    /// Writes the layer in flight to the engine, then retires it (or fails the buffer).
    ///
    /// A panic in the engine's write (or the cache's refresh) fails the buffer as an error
    /// does: unwound past here, it would leave the layer in flight for good and every later
    /// writer waiting for it.
    fn write_out(&self, layer: &Layer) -> Result<()> {
        let t = Instant::now();
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.base.write(layer.batch())?;
            if let Some(c) = &self.cache {
                // Only this thread (one flush in flight) and a whole-table write (which waits
                // for it, under the lock) move the count.
                let next = self.state.lock().flushes + 1;
                c.flushed(Some(layer), next);
            }
            Ok(())
        }))
        .unwrap_or_else(|panic| {
            Err(Error::Failed(format!("the engine's write panicked: {}", crate::panic_text(&*panic))))
        });
        let us = t.elapsed().as_micros() as u64;
        let mut st = self.state.lock();
        match &out {
            Ok(()) => {
                st.flushing = None;
                st.flushes += 1;
                self.stats.flushes.fetch_add(1, Ordering::Relaxed);
                self.stats.flushed_keys.fetch_add(layer.entries as u64, Ordering::Relaxed);
                self.stats.micros.fetch_add(us, Ordering::Relaxed);
                self.stats.max_micros.fetch_max(us, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!(error = %e, "a buffered write to the state engine failed; the engine accepts no more writes");
                st.failed.get_or_insert_with(|| e.to_string());
            }
        }
        self.count_buffered(&st);
        self.flushed.notify_all();
        out
    }

    /// Writes out everything buffered before this call, in this thread.
    fn flush_now(&self) -> Result<()> {
        let mut st = self.state.lock();
        self.wait_idle(&mut st)?;
        if st.filling.is_empty() {
            return Ok(());
        }
        let layer = self.hand_over(&mut st);
        drop(st);
        self.write_out(&layer)
    }
}

impl Engine for BufferedEngine {
    fn reader(&self) -> Result<Box<dyn Reader + Send + Sync>> {
        let st = self.inner.state.lock();
        let mut layers = Vec::with_capacity(2);
        if !st.filling.is_empty() {
            layers.push(st.filling.view());
        }
        if let Some(l) = &st.flushing {
            layers.push(l.view());
        }
        // Under the lock: see the module doc.
        let base = self.inner.base.reader()?;
        Ok(Box::new(BufferedReader { layers, base, flushes: st.flushes, inner: self.inner.clone() }))
    }

    /// Looks in the buffer under the lock, without taking a version of it as a reader does:
    /// a reader's version makes the next write to each map node it holds copy that node, and
    /// apply asked for one at every batch only to read a key or two.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let st = self.inner.state.lock();
        for layer in std::iter::once(&st.filling).chain(st.flushing.as_deref()) {
            if let Some(v) = layer.get(table, key) {
                return Ok(v.as_ref().map(|v| v.to_vec()));
            }
        }
        // Not buffered: the engine as a reader with no layers sees it (its view taken under
        // the lock, as every reader's is; see the module doc), through the read cache.
        let base = self.inner.base.reader()?;
        let reader = BufferedReader { layers: Vec::new(), base, flushes: st.flushes, inner: self.inner.clone() };
        drop(st);
        reader.get(table, key)
    }

    fn write(&self, batch: WriteBatch) -> Result<()> {
        let inner = &self.inner;
        let mut st = inner.state.lock();
        Inner::failed(&st)?;
        if batch.ops.iter().any(|op| matches!(op, WriteOp::Clear { .. })) {
            // Rare (a whole table replaced): the buffer goes first, then the batch as is, all
            // under the lock so no reader sees a step between.
            inner.wait_idle(&mut st)?;
            // Every key may change: the cache starts over under the next count (a failed
            // write below only drops values that were still right).
            st.flushes += 1;
            if let Some(c) = &inner.cache {
                c.flushed(None, st.flushes);
            }
            if !st.filling.is_empty() {
                let layer = inner.hand_over(&mut st);
                let out = inner.base.write(layer.batch());
                st.flushing = None;
                if let Err(e) = out {
                    st.filling = Arc::unwrap_or_clone(layer);
                    st.failed = Some(e.to_string());
                    return Err(e);
                }
            }
            let out = inner.base.write(batch);
            if let Err(e) = &out {
                st.failed = Some(e.to_string());
            }
            inner.count_buffered(&st);
            return out;
        }
        inner.wait_for_room(&mut st)?;
        for op in batch.ops {
            match op {
                WriteOp::Put { table, key, value } => st.filling.change(table, key, Some(value)),
                WriteOp::Delete { table, key } => st.filling.change(table, key, None),
                WriteOp::Clear { .. } => unreachable!("handled above"),
            }
        }
        if st.flushing.is_none() && st.filling.full(inner.limits) {
            let layer = inner.hand_over(&mut st);
            let me = inner.clone();
            let spawned = std::thread::Builder::new().name("engine-flush".into()).spawn(move || {
                // A failure is kept in the state and answered to every later write and sync.
                let _ = me.write_out(&layer);
            });
            if let Err(e) = spawned {
                // No thread: this writer writes it out itself, so the buffer stays within
                // its bounds (given back to `filling`, it would grow past them while the
                // thread cannot start).
                tracing::warn!(error = %e, "cannot start the engine flush thread; the writer flushes the buffer");
                let layer = st.flushing.clone().expect("just set");
                drop(st);
                return inner.write_out(&layer);
            }
        }
        inner.count_buffered(&st);
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        self.inner.flush_now()?;
        self.inner.base.sync()
    }

    fn is_full(&self) -> bool {
        self.inner.full(&self.inner.state.lock())
    }

    fn wait_for_room(&self) -> Result<()> {
        self.inner.wait_for_room(&mut self.inner.state.lock())
    }

    /// The engine's size plus what the buffer holds for it.
    fn size_bytes(&self) -> u64 {
        self.inner.base.size_bytes() + self.inner.stats.buffered_bytes.load(Ordering::Relaxed)
    }

    /// Exact: the buffer is written out first (status reads this, not hot paths).
    fn live_bytes(&self) -> u64 {
        if let Err(e) = self.inner.flush_now() {
            tracing::warn!(error = %e, "live bytes counted without the buffer");
        }
        self.inner.base.live_bytes()
    }

    fn defragment(&self) -> Result<(u64, u64)> {
        self.inner.flush_now()?;
        self.inner.base.defragment()
    }
}

/// A point-in-time view: the buffer's layers (newest first) over the engine's reader.
struct BufferedReader {
    layers: Vec<LayerView>,
    base: Box<dyn Reader + Send + Sync>,
    /// The flush count of `base`'s view, for the read cache (`inner.cache`).
    flushes: u64,
    inner: Arc<Inner>,
}

/// Whether `[from, to)` is empty (imbl's range panics on some empty bounds, as std's does).
fn empty_bounds(from: Bound<&[u8]>, to: Bound<&[u8]>) -> bool {
    match (from, to) {
        (Bound::Included(a), Bound::Included(b)) => a > b,
        (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) => a >= b,
        _ => false,
    }
}

impl Reader for BufferedReader {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        for layer in &self.layers {
            if let Some(v) = layer.get(table, key) {
                return Ok(v.as_ref().map(|v| v.to_vec()));
            }
        }
        let Some(cache) = self.inner.cache.as_ref().filter(|_| table == Table::Kv) else {
            return self.base.get(table, key);
        };
        let stats = &self.inner.stats;
        if let Some(c) = cache.map.get(key) {
            // Cached at this view's count or before, and no flush wrote the key since.
            if c.flushes <= self.flushes {
                stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(c.value.map(|v| v.to_vec()));
            }
        }
        stats.cache_misses.fetch_add(1, Ordering::Relaxed);
        let value = self.base.get(table, key)?;
        cache.fill(key, self.flushes, &value);
        Ok(value)
    }

    fn scan(
        &self,
        table: Table,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        if empty_bounds(from, to) {
            return Ok(());
        }
        let pending = Merged {
            iters: self
                .layers
                .iter()
                .map(|t| {
                    let it: Box<dyn Iterator<Item = _>> = Box::new(t.tables[slot(table)].range::<_, [u8]>((from, to)));
                    it.peekable()
                })
                .collect(),
        };
        crate::scan_overlaid(pending, |f| self.base.scan(table, from, to, f), visit)
    }
}

type LayerIter<'a> = std::iter::Peekable<Box<dyn Iterator<Item = (&'a Bytes, &'a Option<Bytes>)> + 'a>>;

/// The layers' changes in key order; of one key's changes, the newest layer's.
struct Merged<'a> {
    iters: Vec<LayerIter<'a>>,
}

impl Iterator for Merged<'_> {
    type Item = (Bytes, Option<Bytes>);

    fn next(&mut self) -> Option<Self::Item> {
        let least = self.iters.iter_mut().filter_map(|i| i.peek().map(|(k, _)| (*k).clone())).min()?;
        let mut out = None;
        // Newest first: the first layer holding the key gives the value; the rest skip it.
        for it in &mut self.iters {
            if let Some((_, v)) = it.next_if(|(k, _)| **k == least) {
                out.get_or_insert_with(|| v.clone());
            }
        }
        Some((least, out.expect("the least key is in some layer")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemEngine;

    fn tiny() -> BufferLimits {
        BufferLimits { bytes: 64, entries: 3, read_cache_bytes: 1 << 20 }
    }

    #[test]
    fn conformance_over_memory() {
        crate::conformance::run_all(&|| Box::new(BufferedEngine::new(Arc::new(MemEngine::new()), tiny())));
        crate::conformance::run_all(&|| {
            Box::new(BufferedEngine::new(Arc::new(MemEngine::new()), BufferLimits::default()))
        });
    }

    #[test]
    fn conformance_over_redb() {
        crate::conformance::run_all(&|| {
            let dir = tempfile::tempdir().unwrap();
            let base = crate::RedbEngine::open(&dir.path().join("e.redb"), 1 << 20).unwrap();
            // The directory goes when the test process ends; the engine holds the file open.
            std::mem::forget(dir);
            Box::new(BufferedEngine::new(Arc::new(base), tiny()))
        });
    }

    #[derive(Debug, Clone)]
    enum Step {
        Put(bool, u8, u8),
        Delete(bool, u8),
        Clear(bool),
        /// Keeps a reader of both engines, checked against each other at the end.
        Reader,
        Sync,
        /// Compares a scan of `[from, to)` now.
        Scan(u8, u8),
        /// Compares a point read of one key in every reader kept so far and in a new one
        /// (through the read cache, filled and used at every point in time).
        Get(u8),
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            8 => (any::<bool>(), 0u8..24, any::<u8>()).prop_map(|(t, k, v)| Step::Put(t, k, v)),
            3 => (any::<bool>(), 0u8..24).prop_map(|(t, k)| Step::Delete(t, k)),
            1 => any::<bool>().prop_map(Step::Clear),
            2 => Just(Step::Reader),
            1 => Just(Step::Sync),
            2 => (0u8..26, 0u8..26).prop_map(|(a, b)| Step::Scan(a, b)),
            4 => (0u8..24).prop_map(Step::Get),
        ]
    }

    fn table(kv: bool) -> Table {
        if kv {
            Table::Kv
        } else {
            Table::Meta
        }
    }

    fn everything(r: &dyn Reader) -> Vec<(Table, Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        for t in Table::ALL {
            r.scan(t, Bound::Unbounded, Bound::Unbounded, &mut |k, v| {
                out.push((t, k.to_vec(), v.to_vec()));
                true
            })
            .unwrap();
        }
        out
    }

    proptest::proptest! {
        /// Whatever the writes, flushes and syncs (background flushes of a 3-key buffer racing
        /// them), every reader of the buffered engine sees what a reader of the memory engine
        /// taken at the same point sees, and so do point reads (through the read cache, at
        /// every point in time; of readers and of the engine itself) and bounded scans.
        #[test]
        fn behaves_as_the_memory_engine(steps in proptest::collection::vec(step(), 1..120)) {
            let model = MemEngine::new();
            let e = BufferedEngine::new(Arc::new(MemEngine::new()), tiny());
            let mut readers = Vec::new();
            for s in steps {
                let mut wb = WriteBatch::new();
                match s {
                    Step::Put(t, k, v) => wb.put(table(t), vec![k], vec![v; (v % 7) as usize]),
                    Step::Delete(t, k) => wb.delete(table(t), vec![k]),
                    Step::Clear(t) => wb.clear(table(t)),
                    Step::Reader => readers.push((model.reader().unwrap(), e.reader().unwrap())),
                    Step::Sync => e.sync().unwrap(),
                    Step::Scan(a, b) => {
                        let (mr, br) = (model.reader().unwrap(), e.reader().unwrap());
                        for t in Table::ALL {
                            let (from, to) = ([a], [b]);
                            let bounds = [
                                (Bound::Included(&from[..]), Bound::Excluded(&to[..])),
                                (Bound::Excluded(&from[..]), Bound::Included(&to[..])),
                                (Bound::Included(&from[..]), Bound::Unbounded),
                            ];
                            for (f, u) in bounds {
                                let (mut want, mut got) = (Vec::new(), Vec::new());
                                mr.scan(t, f, u, &mut |k, v| { want.push((k.to_vec(), v.to_vec())); want.len() < 5 }).unwrap();
                                br.scan(t, f, u, &mut |k, v| { got.push((k.to_vec(), v.to_vec())); got.len() < 5 }).unwrap();
                                proptest::prop_assert_eq!(&got, &want);
                            }
                            proptest::prop_assert_eq!(br.get(t, &from).unwrap(), mr.get(t, &from).unwrap());
                        }
                    }
                    Step::Get(k) => {
                        // The engine's own point read (no reader: it looks in the buffer).
                        for t in Table::ALL {
                            proptest::prop_assert_eq!(e.get(t, &[k]).unwrap(), model.get(t, &[k]).unwrap());
                        }
                        readers.push((model.reader().unwrap(), e.reader().unwrap()));
                        for (m, b) in &readers {
                            for t in Table::ALL {
                                proptest::prop_assert_eq!(b.get(t, &[k]).unwrap(), m.get(t, &[k]).unwrap());
                            }
                        }
                    }
                }
                if !wb.is_empty() {
                    model.write(wb.clone()).unwrap();
                    e.write(wb).unwrap();
                }
            }
            for (m, b) in &readers {
                proptest::prop_assert_eq!(everything(&**b), everything(&**m));
                for k in 0..24u8 {
                    proptest::prop_assert_eq!(b.get(Table::Kv, &[k]).unwrap(), m.get(Table::Kv, &[k]).unwrap());
                }
            }
            proptest::prop_assert_eq!(everything(&*e.reader().unwrap()), everything(&*model.reader().unwrap()));
            e.sync().unwrap();
            proptest::prop_assert_eq!(e.stats().buffered_bytes.load(Ordering::Relaxed), 0);
            proptest::prop_assert_eq!(e.live_bytes(), model.live_bytes());
        }
    }

    /// An engine whose writes fail once `fail` is set, and wait while `open` is not.
    struct Controlled {
        inner: MemEngine,
        fail: std::sync::atomic::AtomicBool,
        open: parking_lot::Mutex<bool>,
        opened: Condvar,
    }

    impl Controlled {
        fn new(open: bool) -> Controlled {
            Controlled {
                inner: MemEngine::new(),
                fail: Default::default(),
                open: parking_lot::Mutex::new(open),
                opened: Condvar::new(),
            }
        }

        fn open_gate(&self) {
            *self.open.lock() = true;
            self.opened.notify_all();
        }
    }

    impl Engine for Controlled {
        fn reader(&self) -> Result<Box<dyn Reader + Send + Sync>> {
            self.inner.reader()
        }
        fn write(&self, batch: WriteBatch) -> Result<()> {
            let mut open = self.open.lock();
            while !*open {
                self.opened.wait(&mut open);
            }
            if self.fail.load(Ordering::SeqCst) {
                return Err(Error::Io(std::io::Error::other("injected write error")));
            }
            self.inner.write(batch)
        }
        fn sync(&self) -> Result<()> {
            self.inner.sync()
        }
        fn size_bytes(&self) -> u64 {
            self.inner.size_bytes()
        }
        fn live_bytes(&self) -> u64 {
            self.inner.live_bytes()
        }
        fn defragment(&self) -> Result<(u64, u64)> {
            self.inner.defragment()
        }
    }

    #[test]
    fn a_failed_flush_refuses_every_later_write_and_sync_and_readers_keep_the_data() {
        let base = Arc::new(Controlled::new(true));
        let e =
            BufferedEngine::new(base.clone(), BufferLimits { bytes: 1 << 20, entries: 1 << 20, ..Default::default() });
        let mut wb = WriteBatch::new();
        wb.put(Table::Kv, b"a".to_vec(), b"1".to_vec());
        e.write(wb.clone()).unwrap();
        e.sync().unwrap();
        wb = WriteBatch::new();
        wb.put(Table::Kv, b"a".to_vec(), b"2".to_vec());
        e.write(wb.clone()).unwrap();
        base.fail.store(true, Ordering::SeqCst);
        let err = e.sync().unwrap_err();
        assert!(err.to_string().contains("injected write error"), "{err}");
        // The buffered value stays visible: a reader never sees the older "1" again.
        assert_eq!(e.get(Table::Kv, b"a").unwrap(), Some(b"2".to_vec()));
        base.fail.store(false, Ordering::SeqCst);
        // Failed for good, even though the engine would now accept the write.
        assert!(matches!(e.write(wb).unwrap_err(), Error::Failed(_)));
        assert!(matches!(e.sync().unwrap_err(), Error::Failed(_)));
        assert_eq!(base.inner.get(Table::Kv, b"a").unwrap(), Some(b"1".to_vec()));
    }

    /// An engine whose write panics.
    struct Panics(MemEngine);

    impl Engine for Panics {
        fn reader(&self) -> Result<Box<dyn Reader + Send + Sync>> {
            self.0.reader()
        }
        fn write(&self, _: WriteBatch) -> Result<()> {
            panic!("injected panic");
        }
        fn sync(&self) -> Result<()> {
            self.0.sync()
        }
        fn size_bytes(&self) -> u64 {
            self.0.size_bytes()
        }
        fn live_bytes(&self) -> u64 {
            self.0.live_bytes()
        }
        fn defragment(&self) -> Result<(u64, u64)> {
            self.0.defragment()
        }
    }

    /// A panic in the flush thread fails the buffer as an error does: writers that would wait
    /// for that flush, and syncs, get an error instead of waiting for good.
    #[test]
    fn a_flush_that_panics_fails_the_buffer_instead_of_leaving_writers_waiting() {
        let e = Arc::new(BufferedEngine::new(Arc::new(Panics(MemEngine::new())), tiny()));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (e2, done2) = (e.clone(), done.clone());
        let writer = std::thread::spawn(move || {
            // The third key fills the buffer and starts the flush; the next ones fill the
            // second buffer, and then a write must wait for the flush, which panics.
            let mut out = Ok(());
            for i in 0..16u8 {
                let mut wb = WriteBatch::new();
                wb.put(Table::Kv, vec![b'k', i], vec![i]);
                out = e2.write(wb);
                if out.is_err() {
                    break;
                }
            }
            let synced = e2.sync();
            done2.store(true, Ordering::SeqCst);
            (out, synced)
        });
        let end = Instant::now() + std::time::Duration::from_secs(10);
        while !done.load(Ordering::SeqCst) {
            assert!(Instant::now() < end, "a writer waits for good for a flush that panicked");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let (written, synced) = writer.join().unwrap();
        assert!(matches!(written, Err(Error::Failed(_))), "{written:?}");
        match synced {
            Err(Error::Failed(why)) => assert!(why.contains("injected panic"), "{why}"),
            other => panic!("sync after a panicked flush: {other:?}"),
        }
        // Readers keep the buffered data.
        assert_eq!(e.get(Table::Kv, &[b'k', 0]).unwrap(), Some(vec![0]));
    }

    #[test]
    fn a_full_buffer_goes_to_the_engine_in_the_background_and_readers_stay_consistent() {
        let base = Arc::new(MemEngine::new());
        let e = BufferedEngine::new(base.clone(), BufferLimits { bytes: 1 << 30, entries: 100, ..Default::default() });
        let before = e.reader().unwrap();
        for i in 0..1000u32 {
            let mut wb = WriteBatch::new();
            wb.put(Table::Kv, i.to_be_bytes().to_vec(), vec![1; 10]);
            e.write(wb).unwrap();
        }
        // Whole buffers reached the engine without a sync, in few large writes.
        let flushes = e.stats().flushes.load(Ordering::Relaxed);
        assert!((1..=10).contains(&flushes), "{flushes} flushes");
        assert!(base.reader().unwrap().get(Table::Kv, &0u32.to_be_bytes()).unwrap().is_some());
        // Bounded: two buffers at most, each at most the limit and one write.
        let held = e.stats().buffered_bytes.load(Ordering::Relaxed);
        assert!(held <= 2 * 101 * 14, "{held} bytes buffered");
        assert_eq!(everything(&*before), vec![], "a reader keeps its point in time");
        let r = e.reader().unwrap();
        assert_eq!(everything(&*r).len(), 1000);
        e.sync().unwrap();
        assert_eq!(everything(&*base.reader().unwrap()).len(), 1000);
        assert_eq!(e.stats().buffered_bytes.load(Ordering::Relaxed), 0);
    }

    /// A caller that must not block (an async runtime's thread) can tell that a write would
    /// wait for the flush in flight, and wait for room elsewhere.
    #[test]
    fn a_write_that_would_wait_for_the_flush_is_told_and_can_wait_for_room() {
        let base = Arc::new(Controlled::new(false));
        let e = Arc::new(BufferedEngine::new(
            base.clone(),
            BufferLimits { bytes: 1 << 30, entries: 2, ..Default::default() },
        ));
        let put = |k: &[u8]| {
            let mut wb = WriteBatch::new();
            wb.put(Table::Kv, k.to_vec(), b"v".to_vec());
            e.write(wb).unwrap();
        };
        put(b"a");
        assert!(!e.is_full());
        put(b"b"); // full: goes to the engine, whose write waits at the gate
        assert!(!e.is_full(), "room in the next buffer");
        put(b"c");
        put(b"d");
        assert!(e.is_full(), "the next buffer is full while the first is in flight");
        let waiter = {
            let e = e.clone();
            std::thread::spawn(move || e.wait_for_room())
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!waiter.is_finished(), "room before the flush in flight ended");
        base.open_gate();
        waiter.join().unwrap().unwrap();
        assert!(!e.is_full());
        e.sync().unwrap();
        assert_eq!(everything(&*base.reader().unwrap()).len(), 4);
    }
}
