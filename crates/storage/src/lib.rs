//! Storage: where bytes meet the disk.
//!
//! Two seams live here:
//!
//! - [`Engine`]: an ordered key-value store with named tables, atomic write batches and
//!   point-in-time readers. The state machine (MVCC store) sits on it. [`MemEngine`] backs unit
//!   tests; [`RedbEngine`] is the real one (redb: a copy-on-write B-tree, crash-safe, chosen by
//!   the measurement in `bench/engine-choice`, see ARCHITECTURE.md). One conformance suite
//!   ([`conformance::run_all`]) runs against every engine. [`BufferedEngine`] is an engine in
//!   front of another that buffers writes in memory and hands them over in large batches (the
//!   data tier's ranges write through one).
//! - [`wal::Wal`]: the Raft log, a segmented append-only file with a CRC on every record, group
//!   commit (one `fdatasync` for everything queued), torn-tail repair and corruption detection.
//!
//! Invariants:
//! - A batch written with [`Engine::write`] is atomic: after a crash either all of it or none of
//!   it is visible. It is durable only after a later [`Engine::sync`]; durability of client
//!   writes comes from the Raft log, which is fsynced before anything is acknowledged.
//! - Values read back are checked against the checksum written with them; a mismatch is
//!   [`Error::Corruption`], never data.
//!
//! The engine's file shrinks only when asked ([`Engine::defragment`]): redb reuses freed pages
//! but does not give them back to the file system by itself.

mod buffered;
pub mod conformance;
mod engine;
mod mem;
mod overlay;
mod redb_engine;
pub mod volatile;
pub mod wal;

pub use buffered::{BufferLimits, BufferStats, BufferedEngine, CACHED_OVERHEAD_BYTES};
pub use engine::{Engine, Reader, Table, WriteBatch, WriteOp};
pub use mem::MemEngine;
pub use overlay::scan_overlaid;
pub use redb_engine::{PageCacheStats, RedbEngine};

/// Storage errors. `Corruption` is fatal for the node: it must stop rather than serve data it
/// cannot trust.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("data corruption detected: {0}")]
    Corruption(String),
    #[error("storage engine error: {0}")]
    Engine(String),
    #[error("the write-ahead log has failed earlier and accepts no more writes: {0}")]
    Failed(String),
    /// The operation needs the engine to itself and a reader or writer is still at work; it may
    /// be retried.
    #[error("storage engine busy: {0}")]
    Busy(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a caught panic says (its message, when it has one).
pub fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}
