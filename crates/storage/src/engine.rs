//! The [`Engine`] seam: what the state machine needs from an embedded store, and no more.

use std::ops::Bound;

use crate::Result;

/// The tables (keyspaces) an engine holds. A fixed set keeps the seam small; a new capability
/// adds a variant here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// MVCC records: revision -> key-value record (etcd's "key" bucket).
    Kv,
    /// Small state-machine metadata: applied log id, membership, compaction revision, ...
    Meta,
}

impl Table {
    pub const ALL: [Table; 2] = [Table::Kv, Table::Meta];

    pub fn name(self) -> &'static str {
        match self {
            Table::Kv => "kv",
            Table::Meta => "meta",
        }
    }
}

/// One change in a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    Put {
        table: Table,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        table: Table,
        key: Vec<u8>,
    },
    /// Remove every key of the table (snapshot install).
    Clear {
        table: Table,
    },
}

/// Changes applied atomically by [`Engine::write`], in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    pub ops: Vec<WriteOp>,
}

impl WriteBatch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(ops: usize) -> Self {
        WriteBatch { ops: Vec::with_capacity(ops) }
    }

    pub fn put(&mut self, table: Table, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(WriteOp::Put { table, key: key.into(), value: value.into() });
    }

    pub fn delete(&mut self, table: Table, key: impl Into<Vec<u8>>) {
        self.ops.push(WriteOp::Delete { table, key: key.into() });
    }

    pub fn clear(&mut self, table: Table) {
        self.ops.push(WriteOp::Clear { table });
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }
}

/// A consistent, point-in-time view of an engine: later writes are not visible through it.
pub trait Reader {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Visits keys in `[from, to)` order (bounds as given) until `visit` returns `false`.
    fn scan(
        &self,
        table: Table,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()>;
}

/// A reader shared by several callers (the redb engine hands out one until the next commit).
impl<R: Reader + ?Sized> Reader for std::sync::Arc<R> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        (**self).get(table, key)
    }

    fn scan(
        &self,
        table: Table,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        (**self).scan(table, from, to, visit)
    }
}

/// An embedded, ordered, crash-safe key-value store.
pub trait Engine: Send + Sync + 'static {
    /// A point-in-time reader. Cheap; many may exist at once, alongside one writer. It owns
    /// its view, so it may be kept (a snapshot waiting to be sent holds one).
    fn reader(&self) -> Result<Box<dyn Reader + Send + Sync>>;

    /// Applies `batch` atomically. Not durable until [`Engine::sync`].
    fn write(&self, batch: WriteBatch) -> Result<()>;

    /// Makes every batch written so far durable.
    fn sync(&self) -> Result<()>;

    /// Bytes the engine occupies on disk (or in memory for the memory engine): the file's
    /// length, free pages included.
    fn size_bytes(&self) -> u64;

    /// Bytes of the keys and values it holds, whatever the file's length: what a quota
    /// counts (etcd's "in use"). Exact after every write, and kept across restarts.
    fn live_bytes(&self) -> u64;

    /// Rewrites the engine so that it occupies little more than its live bytes, returning its
    /// size before and after (etcd's defragment). Blocks writes and new readers while it runs;
    /// fails with [`crate::Error::Busy`] while a reader opened earlier is still alive.
    fn defragment(&self) -> Result<(u64, u64)>;

    /// Whether a write now would wait for the engine: a write buffer that is full while its
    /// previous batch is still being written out ([`crate::BufferedEngine`]). A caller on an
    /// async runtime first waits for room with [`Engine::wait_for_room`] off the runtime's
    /// threads, so that the wait does not stall every other task of that thread.
    fn is_full(&self) -> bool {
        false
    }

    /// Blocks until a write would not wait (see [`Engine::is_full`]), or the engine failed.
    fn wait_for_room(&self) -> Result<()> {
        Ok(())
    }

    /// A point read of what was written so far (through a fresh reader, unless the engine
    /// has a cheaper way: [`crate::BufferedEngine`] looks in its buffer without taking a
    /// version of it, which would make the next writes copy the map nodes they change).
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.reader()?.get(table, key)
    }
}
