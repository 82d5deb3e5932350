//! The disk engine: redb, a crash-safe copy-on-write B-tree in one file.
//!
//! Writes are committed with `Durability::None` (atomic and visible, but not fsynced); on a
//! crash redb rolls back to the last durable commit, which is always a consistent state. The
//! state machine calls [`Engine::sync`] at snapshot time and periodically, and replays the Raft
//! log past the last durable state at start-up. This keeps an fsync off the apply path: the
//! Raft log has already made every entry durable before it is applied.
//!
//! Every stored value carries a CRC32C of its key and value, checked on every read, so a
//! flipped bit surfaces as [`Error::Corruption`] instead of a wrong answer.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::engine::{Engine, Reader, Table, WriteBatch, WriteOp};
use crate::{Error, Result};

type Def = TableDefinition<'static, &'static [u8], &'static [u8]>;

fn def(table: Table) -> Def {
    TableDefinition::new(table.name())
}

/// The engine's own bookkeeping, beside the caller's tables: today the live byte count, kept in
/// the same atomic commit as the writes it counts so it is exact after a crash too.
const STATS: Def = TableDefinition::new("engine_stats");
const LIVE_KEY: &[u8] = b"live_bytes";

fn engine_err(e: impl std::fmt::Display) -> Error {
    Error::Engine(e.to_string())
}

/// Bytes of checksum in front of every stored value.
const CRC_BYTES: usize = 4;

fn seal(key: &[u8], value: &[u8]) -> Vec<u8> {
    let crc = crc32c::crc32c_append(crc32c::crc32c(key), value);
    let mut out = Vec::with_capacity(CRC_BYTES + value.len());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(value);
    out
}

fn unseal<'a>(table: Table, key: &[u8], stored: &'a [u8]) -> Result<&'a [u8]> {
    if stored.len() < CRC_BYTES {
        return Err(Error::Corruption(format!(
            "table {}: value of {} bytes is shorter than its checksum",
            table.name(),
            stored.len()
        )));
    }
    let (crc, value) = stored.split_at(CRC_BYTES);
    let want = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    let got = crc32c::crc32c_append(crc32c::crc32c(key), value);
    if want != got {
        return Err(Error::Corruption(format!(
            "table {}: checksum mismatch for key {:?} (stored {want:#010x}, computed {got:#010x})",
            table.name(),
            String::from_utf8_lossy(key)
        )));
    }
    Ok(value)
}

pub struct RedbEngine {
    /// Locked for writing only by [`Engine::defragment`], which needs the database to itself
    /// (redb's `compact` takes `&mut`); readers, writes and syncs share it.
    db: RwLock<Database>,
    path: PathBuf,
    /// The file's length as of the last write or sync. Every put checks the quota against it,
    /// so it is read from here rather than by a `stat` per request (the file only changes in
    /// `write` and `sync`).
    size: AtomicU64,
    /// Bytes of keys and stored values in the caller's tables (checksums included), as of the
    /// last write; persisted in [`STATS`].
    live: AtomicU64,
    readers: Mutex<ReaderCache>,
}

/// redb's page cache: what it holds and how often a page had to be read from the file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageCacheStats {
    pub used_bytes: u64,
    pub read_misses: u64,
    pub evictions: u64,
}

impl RedbEngine {
    /// The page cache's figures (for metrics: a cache too small for the data set shows as
    /// misses and evictions).
    pub fn page_cache(&self) -> PageCacheStats {
        let s = self.db.read().cache_stats();
        PageCacheStats { used_bytes: s.used_bytes() as u64, read_misses: s.read_misses(), evictions: s.evictions() }
    }

    /// Opens (or creates) the engine file. redb repairs itself after an unclean shutdown and
    /// verifies its page checksums while doing so; a file it cannot trust is an error.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Self> {
        let mut builder = Database::builder();
        builder.set_cache_size(cache_bytes);
        let db = if crate::volatile::enabled() {
            // Test-only power-loss simulation (see `crate::volatile`): unsynced pages are lost
            // with the process.
            let f = std::fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(path)?;
            builder.create_with_backend(crate::volatile::EngineBackend(crate::volatile::DataFile::new(f)?))
        } else {
            builder.create(path)
        };
        let db = db.map_err(|e| Error::Corruption(format!("cannot open state engine {}: {e}", path.display())))?;
        // Create missing tables, but never write to a file that already has them: opening a
        // store (perhaps a damaged one, about to be refused) must not change it.
        let (missing, live) = {
            let r = db.begin_read().map_err(engine_err)?;
            let missing = Table::ALL.iter().any(|t| r.open_table(def(*t)).is_err());
            let live = match r.open_table(STATS) {
                Ok(t) => match t.get(LIVE_KEY).map_err(engine_err)? {
                    Some(v) => Some(decode_live(unseal_stats(v.value())?)?),
                    None => None,
                },
                Err(_) => None,
            };
            (missing, live)
        };
        // A file from before the byte count was kept: count once, and keep it from now on.
        let needs_stats = live.is_none();
        let live = match live {
            Some(n) => n,
            None if missing => 0,
            None => count_live(&db)?,
        };
        if missing || needs_stats {
            let txn = db.begin_write().map_err(engine_err)?;
            for table in Table::ALL {
                txn.open_table(def(table)).map_err(engine_err)?;
            }
            txn.open_table(STATS)
                .map_err(engine_err)?
                .insert(LIVE_KEY, seal(LIVE_KEY, &live.to_le_bytes()).as_slice())
                .map_err(engine_err)?;
            txn.commit().map_err(engine_err)?;
        }
        let e = RedbEngine {
            db: RwLock::new(db),
            path: path.to_path_buf(),
            size: AtomicU64::new(0),
            live: AtomicU64::new(live),
            readers: Mutex::new(ReaderCache::default()),
        };
        e.refresh_size();
        Ok(e)
    }

    /// Called after every commit: readers asked for from now on see it.
    fn committed(&self) {
        let mut c = self.readers.lock();
        c.generation += 1;
        c.reader = None;
    }

    fn refresh_size(&self) {
        let len = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        self.size.store(len, Ordering::Relaxed);
    }
}

fn unseal_stats(stored: &[u8]) -> Result<&[u8]> {
    unseal(Table::Meta, LIVE_KEY, stored).map_err(|e| Error::Corruption(format!("engine stats: {e}")))
}

fn decode_live(v: &[u8]) -> Result<u64> {
    let b: [u8; 8] =
        v.try_into().map_err(|_| Error::Corruption(format!("engine stats: live byte count of {} bytes", v.len())))?;
    Ok(u64::from_le_bytes(b))
}

/// Sums the keys and stored values of every table (for a file written before the count was
/// kept).
fn count_live(db: &Database) -> Result<u64> {
    let r = db.begin_read().map_err(engine_err)?;
    let mut n = 0u64;
    for table in Table::ALL {
        let t = r.open_table(def(table)).map_err(engine_err)?;
        for item in t.iter().map_err(engine_err)? {
            let (k, v) = item.map_err(engine_err)?;
            n += (k.value().len() + v.value().len()) as u64;
        }
    }
    Ok(n)
}

/// A point-in-time view: one read transaction with both tables opened once (opening a table
/// per `get` was a quarter of the reader's cost in a GET profile).
struct RedbReader {
    kv: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    meta: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
}

impl RedbReader {
    fn open(db: &Database) -> Result<RedbReader> {
        let txn = db.begin_read().map_err(engine_err)?;
        Ok(RedbReader {
            kv: txn.open_table(def(Table::Kv)).map_err(engine_err)?,
            meta: txn.open_table(def(Table::Meta)).map_err(engine_err)?,
        })
    }

    fn table(&self, table: Table) -> &redb::ReadOnlyTable<&'static [u8], &'static [u8]> {
        if table == Table::Kv {
            &self.kv
        } else {
            &self.meta
        }
    }
}

impl Reader for RedbReader {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.table(table).get(key).map_err(engine_err)? {
            Some(v) => Ok(Some(unseal(table, key, v.value())?.to_vec())),
            None => Ok(None),
        }
    }

    fn scan(
        &self,
        table: Table,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        if let (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) = (from, to) {
            if a > b {
                return Ok(());
            }
        }
        for item in self.table(table).range::<&[u8]>((from, to)).map_err(engine_err)? {
            let (k, v) = item.map_err(engine_err)?;
            let key = k.value();
            if !visit(key, unseal(table, key, v.value())?) {
                break;
            }
        }
        Ok(())
    }
}

/// The newest reader, handed to every caller until a commit makes it old: beginning a redb
/// read transaction and opening its tables per read was 14 % of a node's CPU under
/// `redis-benchmark -t get`. `generation` counts commits; a reader begun before a commit is
/// never cached after it (it would show an old state to a reader asked for after the write).
/// A commit drops the cached reader, so an old snapshot lives only while a caller holds it
/// (redb cannot reuse the pages a live snapshot still sees).
#[derive(Default)]
struct ReaderCache {
    generation: u64,
    reader: Option<Arc<RedbReader>>,
}

impl Engine for RedbEngine {
    fn reader(&self) -> Result<Box<dyn Reader + Send + Sync>> {
        let generation = {
            let c = self.readers.lock();
            if let Some(r) = &c.reader {
                return Ok(Box::new(r.clone()));
            }
            c.generation
        };
        let r = Arc::new(RedbReader::open(&self.db.read())?);
        let mut c = self.readers.lock();
        if c.generation == generation && c.reader.is_none() {
            c.reader = Some(r.clone());
        }
        Ok(Box::new(r))
    }

    fn write(&self, batch: WriteBatch) -> Result<()> {
        let db = self.db.read();
        let mut txn = db.begin_write().map_err(engine_err)?;
        txn.set_durability(Durability::None).map_err(engine_err)?;
        // redb admits one write transaction at a time, so the count read here is not changed
        // by anyone else before this commit stores it.
        let mut live = self.live.load(Ordering::Relaxed) as i128;
        {
            let mut kv = txn.open_table(def(Table::Kv)).map_err(engine_err)?;
            let mut meta = txn.open_table(def(Table::Meta)).map_err(engine_err)?;
            for op in batch.ops {
                match op {
                    WriteOp::Put { table, key, value } => {
                        let t = if table == Table::Kv { &mut kv } else { &mut meta };
                        let sealed = seal(&key, &value);
                        live += (key.len() + sealed.len()) as i128;
                        if let Some(old) = t.insert(key.as_slice(), sealed.as_slice()).map_err(engine_err)? {
                            live -= (key.len() + old.value().len()) as i128;
                        }
                    }
                    WriteOp::Delete { table, key } => {
                        let t = if table == Table::Kv { &mut kv } else { &mut meta };
                        if let Some(old) = t.remove(key.as_slice()).map_err(engine_err)? {
                            live -= (key.len() + old.value().len()) as i128;
                        }
                    }
                    WriteOp::Clear { table } => {
                        let t = if table == Table::Kv { &mut kv } else { &mut meta };
                        t.retain(|k, v| {
                            live -= (k.len() + v.len()) as i128;
                            false
                        })
                        .map_err(engine_err)?;
                    }
                }
            }
            let live = live.max(0) as u64;
            txn.open_table(STATS)
                .map_err(engine_err)?
                .insert(LIVE_KEY, seal(LIVE_KEY, &live.to_le_bytes()).as_slice())
                .map_err(engine_err)?;
        }
        txn.commit().map_err(engine_err)?;
        self.committed();
        self.live.store(live.max(0) as u64, Ordering::Relaxed);
        self.refresh_size();
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        // An empty durable commit makes every earlier non-durable commit durable.
        let txn = self.db.read().begin_write().map_err(engine_err)?;
        txn.commit().map_err(engine_err)?;
        self.refresh_size();
        Ok(())
    }

    fn size_bytes(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    fn live_bytes(&self) -> u64 {
        self.live.load(Ordering::Relaxed)
    }

    fn defragment(&self) -> Result<(u64, u64)> {
        self.refresh_size();
        let before = self.size_bytes();
        {
            // Waits for writes and syncs in flight; holds off new readers and writers. redb
            // moves live pages to the front of the file, commits durably (two-phase) and
            // truncates the free tail.
            let mut db = self.db.write();
            // The cached reader is a read in progress to redb.
            self.committed();
            match db.compact() {
                Ok(_) => {}
                Err(redb::CompactionError::TransactionInProgress) => {
                    return Err(Error::Busy("a read of the state engine is in progress".into()))
                }
                Err(e) => return Err(engine_err(e)),
            }
        }
        self.refresh_size();
        Ok((before, self.size_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Engine;
    use redb::ReadableTable;

    #[test]
    fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let n = std::sync::atomic::AtomicU32::new(0);
        crate::conformance::run_all(&|| {
            let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Box::new(RedbEngine::open(&dir.path().join(format!("db{i}")), 1 << 20).unwrap())
        });
    }

    #[test]
    fn synced_writes_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let e = RedbEngine::open(&path, 1 << 20).unwrap();
            let mut b = WriteBatch::new();
            b.put(Table::Kv, b"k".to_vec(), b"v".to_vec());
            e.write(b).unwrap();
            e.sync().unwrap();
        }
        let e = RedbEngine::open(&path, 1 << 20).unwrap();
        assert_eq!(e.get(Table::Kv, b"k").unwrap(), Some(b"v".to_vec()));
    }

    #[test]
    fn flipped_value_byte_is_corruption() {
        // Write a record through redb directly with a wrong checksum, as a flipped bit would.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let e = RedbEngine::open(&path, 1 << 20).unwrap();
        let mut b = WriteBatch::new();
        b.put(Table::Kv, b"key".to_vec(), b"value".to_vec());
        e.write(b).unwrap();
        {
            let txn = e.db.read().begin_write().unwrap();
            {
                let mut t = txn.open_table(def(Table::Kv)).unwrap();
                let mut stored = t.get(b"key".as_slice()).unwrap().unwrap().value().to_vec();
                stored[5] ^= 0x01;
                t.insert(b"key".as_slice(), stored.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        match e.get(Table::Kv, b"key") {
            Err(Error::Corruption(msg)) => assert!(msg.contains("checksum mismatch"), "{msg}"),
            other => panic!("expected corruption, got {other:?}"),
        }
        let mut seen = 0;
        let err = e.reader().unwrap().scan(Table::Kv, Bound::Unbounded, Bound::Unbounded, &mut |_, _| {
            seen += 1;
            true
        });
        assert!(matches!(err, Err(Error::Corruption(_))));
        assert_eq!(seen, 0, "a corrupt value must never reach the caller");
    }

    /// The file really shrinks: fill it, delete most of it, defragment.
    #[test]
    fn defragment_shrinks_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let e = RedbEngine::open(&path, 1 << 20).unwrap();
        for chunk in 0..20u32 {
            let mut b = WriteBatch::new();
            for i in 0..100u32 {
                b.put(Table::Kv, (chunk * 100 + i).to_be_bytes().to_vec(), vec![1u8; 4096]);
            }
            e.write(b).unwrap();
        }
        e.sync().unwrap();
        let full = std::fs::metadata(&path).unwrap().len();
        assert!(full > 8 << 20, "2,000 values of 4 KiB: file of {full} bytes");
        let mut b = WriteBatch::new();
        for i in 0..1900u32 {
            b.delete(Table::Kv, i.to_be_bytes().to_vec());
        }
        e.write(b).unwrap();
        e.sync().unwrap();
        let live = e.live_bytes();
        assert!(live < 500_000, "100 values left: {live}");
        let (before, after) = e.defragment().unwrap();
        let on_disk = std::fs::metadata(&path).unwrap().len();
        assert_eq!(after, on_disk);
        assert!(after < full / 4, "defragment: {before} -> {after} bytes (full {full})");
        drop(e);
        // The count and the records survive a reopen.
        let e = RedbEngine::open(&path, 1 << 20).unwrap();
        assert_eq!(e.live_bytes(), live);
        assert_eq!(e.get(Table::Kv, &1999u32.to_be_bytes()).unwrap(), Some(vec![1u8; 4096]));
    }

    /// A reader opened earlier keeps its view; defragment waits for no one and says so.
    #[test]
    fn defragment_with_a_reader_alive_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let e = RedbEngine::open(&dir.path().join("db"), 1 << 20).unwrap();
        let r = e.reader().unwrap();
        assert!(matches!(e.defragment(), Err(Error::Busy(_))));
        drop(r);
        e.defragment().unwrap();
    }

    #[test]
    fn garbage_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::write(&path, vec![0xAB; 64 * 1024]).unwrap();
        assert!(RedbEngine::open(&path, 1 << 20).is_err());
    }
}
