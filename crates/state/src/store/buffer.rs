//! Applied changes on their way to the engine: the buffer apply writes into, and the
//! background write of a full buffer.

use std::collections::BTreeMap;
use std::sync::Arc;

use cairn_storage::{Engine, WriteBatch};

use super::StoreError;

/// Applied changes not yet written to the engine (etcd's batch transaction buffer).
///
/// Committing a redb transaction per applied batch cost more than the rest of apply; instead
/// changes collect here and go to the engine in one transaction every [`FLUSH_OPS`] changes (and
/// before snapshots and at shutdown). Readers look here before the engine. Nothing is lost in a
/// crash: the engine's applied log id is flushed with the changes it covers, and openraft
/// re-applies the log after it.
#[derive(Default)]
pub(super) struct Unflushed {
    /// Kv table: revision key -> stored record, `None` for a deletion (compaction). Ordered, so
    /// history reads can scan it by revision.
    pub(super) kv: BTreeMap<[u8; 16], Option<Vec<u8>>>,
    /// Every change, in order, for the engine.
    pub(super) ops: WriteBatch,
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
pub(super) struct Flushing {
    pub(super) kv: Arc<BTreeMap<[u8; 16], Option<Vec<u8>>>>,
    pub(super) done: std::thread::JoinHandle<Result<(), StoreError>>,
}

impl Flushing {
    /// Waits for the write to finish.
    pub(super) fn wait(self) -> Result<(), StoreError> {
        self.done
            .join()
            .unwrap_or_else(|_| Err(cairn_storage::Error::Engine("the store flush thread panicked".into()).into()))
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
    pub(super) fn write(&self, engine: &dyn Engine, ops: WriteBatch) -> Result<(), StoreError> {
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

impl Unflushed {
    /// Empties the buffer, returning its changes for the engine.
    pub(super) fn take(&mut self) -> WriteBatch {
        self.kv.clear();
        // The next buffer is sized for a whole flush up front: grown by doubling, it would be
        // reallocated a dozen times per flush, each time onto freshly faulted pages.
        std::mem::replace(&mut self.ops, WriteBatch::with_capacity(FLUSH_OPS + FLUSH_OPS / 8))
    }
}
