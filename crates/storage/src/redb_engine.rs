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

use redb::{Database, Durability, ReadableDatabase, TableDefinition};

use crate::engine::{Engine, Reader, Table, WriteBatch, WriteOp};
use crate::{Error, Result};

type Def = TableDefinition<'static, &'static [u8], &'static [u8]>;

fn def(table: Table) -> Def {
    TableDefinition::new(table.name())
}

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
    db: Database,
    path: PathBuf,
    /// The file's length as of the last write or sync. Every put checks the quota against it,
    /// so it is read from here rather than by a `stat` per request (the file only changes in
    /// `write` and `sync`).
    size: AtomicU64,
}

impl RedbEngine {
    /// Opens (or creates) the engine file. redb repairs itself after an unclean shutdown and
    /// verifies its page checksums while doing so; a file it cannot trust is an error.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Self> {
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|e| Error::Corruption(format!("cannot open state engine {}: {e}", path.display())))?;
        // Create missing tables, but never write to a file that already has them: opening a
        // store (perhaps a damaged one, about to be refused) must not change it.
        let missing = {
            let r = db.begin_read().map_err(engine_err)?;
            Table::ALL.iter().any(|t| r.open_table(def(*t)).is_err())
        };
        if missing {
            let txn = db.begin_write().map_err(engine_err)?;
            for table in Table::ALL {
                txn.open_table(def(table)).map_err(engine_err)?;
            }
            txn.commit().map_err(engine_err)?;
        }
        let e = RedbEngine { db, path: path.to_path_buf(), size: AtomicU64::new(0) };
        e.refresh_size();
        Ok(e)
    }

    fn refresh_size(&self) {
        let len = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        self.size.store(len, Ordering::Relaxed);
    }
}

struct RedbReader {
    txn: redb::ReadTransaction,
}

impl Reader for RedbReader {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let t = self.txn.open_table(def(table)).map_err(engine_err)?;
        match t.get(key).map_err(engine_err)? {
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
        let t = self.txn.open_table(def(table)).map_err(engine_err)?;
        for item in t.range::<&[u8]>((from, to)).map_err(engine_err)? {
            let (k, v) = item.map_err(engine_err)?;
            let key = k.value();
            if !visit(key, unseal(table, key, v.value())?) {
                break;
            }
        }
        Ok(())
    }
}

impl Engine for RedbEngine {
    fn reader(&self) -> Result<Box<dyn Reader + Send + Sync>> {
        Ok(Box::new(RedbReader { txn: self.db.begin_read().map_err(engine_err)? }))
    }

    fn write(&self, batch: WriteBatch) -> Result<()> {
        let mut txn = self.db.begin_write().map_err(engine_err)?;
        txn.set_durability(Durability::None).map_err(engine_err)?;
        {
            let mut kv = txn.open_table(def(Table::Kv)).map_err(engine_err)?;
            let mut meta = txn.open_table(def(Table::Meta)).map_err(engine_err)?;
            for op in batch.ops {
                match op {
                    WriteOp::Put { table, key, value } => {
                        let t = if table == Table::Kv { &mut kv } else { &mut meta };
                        t.insert(key.as_slice(), seal(&key, &value).as_slice()).map_err(engine_err)?;
                    }
                    WriteOp::Delete { table, key } => {
                        let t = if table == Table::Kv { &mut kv } else { &mut meta };
                        t.remove(key.as_slice()).map_err(engine_err)?;
                    }
                    WriteOp::Clear { table } => {
                        let t = if table == Table::Kv { &mut kv } else { &mut meta };
                        t.retain(|_, _| false).map_err(engine_err)?;
                    }
                }
            }
        }
        txn.commit().map_err(engine_err)?;
        self.refresh_size();
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        // An empty durable commit makes every earlier non-durable commit durable.
        let txn = self.db.begin_write().map_err(engine_err)?;
        txn.commit().map_err(engine_err)?;
        self.refresh_size();
        Ok(())
    }

    fn size_bytes(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
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
            let txn = e.db.begin_write().unwrap();
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

    #[test]
    fn garbage_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::write(&path, vec![0xAB; 64 * 1024]).unwrap();
        assert!(RedbEngine::open(&path, 1 << 20).is_err());
    }
}
