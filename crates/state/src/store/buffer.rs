//! Applied changes on their way to the engine: the buffer apply writes into, and the
//! background write of a full buffer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cairn_storage::{Engine, Table, WriteBatch, WriteOp};

use super::StoreError;

/// Applied changes not yet written to the engine (etcd's batch transaction buffer).
///
/// Committing a redb transaction per applied batch cost more than the rest of apply; instead
/// changes collect here and go to the engine in one transaction every [`FLUSH_OPS`] changes or
/// every `--backend-batch-bytes` of keys and values ([`BATCH_BYTES_DEFAULT`]), whichever comes
/// first (and before snapshots and at shutdown). Readers look here before the engine. Nothing is lost in a
/// crash: the engine's applied log id is flushed with the changes it covers, and openraft
/// re-applies the log after it.
#[derive(Default)]
pub(super) struct Unflushed {
    /// Kv table: revision key -> stored record, `None` for a deletion (compaction). Ordered, so
    /// history reads can scan it by revision.
    pub(super) kv: BTreeMap<[u8; 16], Option<Vec<u8>>>,
    /// Every change, in order, for the engine.
    pub(super) ops: WriteBatch,
    /// Bytes of the keys and values put in `ops`: what the buffer adds to the engine, counted
    /// by the quota and `DB SIZE` before it gets there.
    pub(super) bytes: u64,
}

/// Changes buffered before they are written to the engine in one transaction.
pub const FLUSH_OPS: usize = 8192;

/// Bytes of keys and values buffered before they are written to the engine
/// (`--backend-batch-bytes`). Two buffers exist at most (one filling, one being written), so
/// this bounds the memory apply holds to twice it.
pub const BATCH_BYTES_DEFAULT: u64 = 32 * 1024 * 1024;

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

/// Bytes applied but not yet counted by the engine: the filling buffer's and, until its write
/// returns, the one being written. Kept outside the state lock so the quota check of every
/// write reads it without waiting for apply.
#[derive(Default, Debug)]
pub(super) struct Buffered {
    pub(super) filling: AtomicU64,
    /// Zeroed by the flush thread once the engine holds (and counts) what it wrote.
    pub(super) writing: Arc<AtomicU64>,
}

impl Buffered {
    pub(super) fn total(&self) -> u64 {
        self.filling.load(Ordering::Relaxed) + self.writing.load(Ordering::Relaxed)
    }
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
    /// Adds one change, keeping the revision map readers consult in step.
    pub(super) fn push(&mut self, op: WriteOp) {
        match &op {
            WriteOp::Put { table, key, value } => {
                self.bytes += (key.len() + value.len()) as u64;
                if *table == Table::Kv {
                    if let Ok(k) = <[u8; 16]>::try_from(key.as_slice()) {
                        self.kv.insert(k, Some(value.clone()));
                    }
                }
            }
            WriteOp::Delete { table: Table::Kv, key } => {
                if let Ok(k) = <[u8; 16]>::try_from(key.as_slice()) {
                    self.kv.insert(k, None);
                }
            }
            _ => {}
        }
        self.ops.ops.push(op);
    }

    /// Whether the buffer should go to the engine now.
    pub(super) fn full(&self, batch_bytes: u64) -> bool {
        self.ops.len() >= FLUSH_OPS || self.bytes >= batch_bytes
    }

    /// Empties the buffer, returning its changes for the engine.
    pub(super) fn take(&mut self) -> WriteBatch {
        self.kv.clear();
        self.bytes = 0;
        // The next buffer is sized for a whole flush up front: grown by doubling, it would be
        // reallocated a dozen times per flush, each time onto freshly faulted pages.
        std::mem::replace(&mut self.ops, WriteBatch::with_capacity(FLUSH_OPS + FLUSH_OPS / 8))
    }
}
