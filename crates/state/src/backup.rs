//! Backups: the point-in-time copy etcd's `Maintenance.Snapshot` streams (and `etcdctl snapshot
//! save` writes to a file), checked and restored by `cairn snapshot status|restore`.
//!
//! ```text
//! payload     a snapshot file (see `snapshot`) whose header is a JSON `BackupHeader`
//! padding     zeros
//! u64 LE      payload length
//! sha256      of every byte above
//! ```
//!
//! The padding makes everything before the sha256 a multiple of 512 bytes, so a backup, like
//! etcd's, is 32 bytes past a multiple of 512: the test etcd's snapshot tools apply to see that
//! a snapshot carries its trailing sha256 (`etcdctl snapshot save` refuses a stream without it).
//! Two checksums guard a backup: the sha256 over the whole file and the snapshot's own CRC;
//! [`status`] and [`restore`] verify both before they use anything.
//!
//! A restore keeps the key-value history (every revision, so revisions go on where the backup
//! left them), the compaction revision, leases and the auth store. It drops what belongs to the
//! old cluster's members: Raft's applied position and membership, member names and URLs, alarms.

use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

use cairn_storage::{Engine, Reader, Table};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::snapshot::{self, SnapshotError};
use crate::store::Store;

/// What the payload's header says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHeader {
    /// Always [`BACKUP_FORMAT`].
    pub format: String,
    /// The store revision the copy was taken at.
    pub revision: i64,
    /// The compaction revision then (-1: never compacted).
    pub compact_revision: i64,
    /// Wall-clock time of the copy, ms since the Unix epoch.
    pub created_unix_ms: u64,
    /// The cluster and member it was taken from.
    pub cluster_id: u64,
    pub member_id: u64,
}

pub const BACKUP_FORMAT: &str = "cairn-backup-1";
const SHA_BYTES: u64 = 32;
const LEN_BYTES: u64 = 8;
/// etcd's snapshot tools treat a file whose length is 32 past a multiple of this as checksummed.
const ALIGN: u64 = 512;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0}")]
    Snapshot(#[from] SnapshotError),
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    #[error("not a valid cairn backup: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Store(#[from] crate::StoreError),
    #[error(transparent)]
    Storage(#[from] cairn_storage::Error),
}

/// A writer of the backup layout around a payload: counts and hashes what passes through, and
/// [`BackupWriter::finish`] adds the padding, the length and the sha256.
pub struct BackupWriter<W: Write> {
    inner: W,
    sha: Sha256,
    written: u64,
}

impl<W: Write> BackupWriter<W> {
    pub fn new(inner: W) -> Self {
        BackupWriter { inner, sha: Sha256::new(), written: 0 }
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.inner.write_all(b)?;
        self.sha.update(b);
        self.written += b.len() as u64;
        Ok(())
    }

    /// Ends the backup; returns the inner writer and the backup's total length.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        let payload = self.written;
        let pad = (ALIGN - (payload + LEN_BYTES) % ALIGN) % ALIGN;
        self.put(&vec![0u8; pad as usize])?;
        self.put(&payload.to_le_bytes())?;
        let sum = std::mem::take(&mut self.sha).finalize();
        self.inner.write_all(&sum)?;
        self.inner.flush()?;
        Ok((self.inner, self.written + SHA_BYTES))
    }
}

impl<W: Write> Write for BackupWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.put(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes a backup of `store` to `out`: the store's buffered changes go to the engine first,
/// then everything one engine reader sees (a consistent point: the engine only ever holds
/// whole applied batches). Apply goes on meanwhile; the copy holds no lock of the store.
pub fn write_backup<W: Write>(
    store: &Store,
    cluster_id: u64,
    member_id: u64,
    created_unix_ms: u64,
    out: W,
) -> Result<(W, u64, BackupHeader), BackupError> {
    store.flush()?;
    let reader = store.engine().reader()?;
    let header = BackupHeader {
        format: BACKUP_FORMAT.into(),
        revision: meta_i64(&*reader, crate::store::META_REV)?.unwrap_or(1),
        compact_revision: meta_i64(&*reader, crate::store::META_COMPACT)?.unwrap_or(-1),
        created_unix_ms,
        cluster_id,
        member_id,
    };
    let mut w = BackupWriter::new(out);
    snapshot::export(&*reader, &serde_json::to_vec(&header).expect("serializable"), &mut w)?;
    let (out, len) = w.finish()?;
    Ok((out, len, header))
}

/// A CRC32C over every record (table, key, value) of the store, after its buffered changes
/// reached the engine (etcd's Maintenance.Hash).
pub fn hash_store(store: &Store) -> Result<u32, BackupError> {
    store.flush()?;
    let reader = store.engine().reader()?;
    let mut hash = 0u32;
    for table in Table::ALL {
        reader.scan(table, std::ops::Bound::Unbounded, std::ops::Bound::Unbounded, &mut |k, v| {
            hash = record_hash(hash, table, k, v);
            true
        })?;
    }
    Ok(hash)
}

fn record_hash(hash: u32, table: Table, k: &[u8], v: &[u8]) -> u32 {
    let hash = crc32c::crc32c_append(hash, &[table as u8]);
    let hash = crc32c::crc32c_append(hash, k);
    crc32c::crc32c_append(hash, v)
}

fn meta_i64(reader: &dyn Reader, key: &[u8]) -> Result<Option<i64>, BackupError> {
    match reader.get(Table::Meta, key)? {
        None => Ok(None),
        Some(b) => Ok(Some(i64::from_be_bytes(
            b.as_slice().try_into().map_err(|_| BackupError::Corrupt(format!("meta {key:?} is not 8 bytes")))?,
        ))),
    }
}

/// What `cairn snapshot status` reports, as etcd's `snapshot status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupStatus {
    /// CRC32C over every record (table, key, value) of the copy: the store's `Maintenance.Hash`
    /// at the point the copy was taken.
    pub hash: u32,
    pub revision: i64,
    /// Records in the copy, of every table (as etcd counts the keys of every bucket).
    pub total_key: u64,
    /// The file's size in bytes.
    pub total_size: u64,
    #[serde(skip)]
    pub header: BackupHeader,
}

/// The payload of a backup file, after both checksums and the layout were verified.
fn open_payload(path: &Path) -> Result<(Window<std::fs::File>, u64), BackupError> {
    let mut f = std::fs::File::open(path)?;
    let len = f.seek(SeekFrom::End(0))?;
    if len < SHA_BYTES + LEN_BYTES || !(len - SHA_BYTES).is_multiple_of(ALIGN) {
        return Err(BackupError::Corrupt(format!(
            "{len} bytes: a backup is 32 bytes (its sha256) past a multiple of 512 (truncated or not a backup)"
        )));
    }
    f.seek(SeekFrom::Start(0))?;
    let mut sha = Sha256::new();
    let mut body = BufReader::with_capacity(1 << 20, (&mut f).take(len - SHA_BYTES));
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = body.read(&mut buf)?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
    }
    drop(body);
    let mut stored = [0u8; 32];
    f.read_exact(&mut stored)?;
    if sha.finalize().as_slice() != stored {
        return Err(BackupError::Corrupt("sha256 mismatch: the file is damaged".into()));
    }
    f.seek(SeekFrom::Start(len - SHA_BYTES - LEN_BYTES))?;
    let mut n = [0u8; 8];
    f.read_exact(&mut n)?;
    let payload = u64::from_le_bytes(n);
    if payload > len - SHA_BYTES - LEN_BYTES || len - SHA_BYTES - LEN_BYTES - payload >= ALIGN {
        return Err(BackupError::Corrupt(format!("payload length {payload} does not fit a file of {len} bytes")));
    }
    Ok((Window::new(f, payload)?, len))
}

fn parse_header(raw: &[u8]) -> Result<BackupHeader, BackupError> {
    let h: BackupHeader = serde_json::from_slice(raw)
        .map_err(|e| BackupError::Corrupt(format!("a cairn snapshot but not a backup (header: {e})")))?;
    if h.format != BACKUP_FORMAT {
        return Err(BackupError::Corrupt(format!("unknown backup format {:?}", h.format)));
    }
    Ok(h)
}

/// Verifies a backup file and describes it.
pub fn status(path: &Path) -> Result<BackupStatus, BackupError> {
    let (mut payload, total_size) = open_payload(path)?;
    let header = parse_header(&snapshot::verify(&mut payload)?)?;
    let (mut hash, mut total_key) = (0u32, 0u64);
    snapshot::for_each_record(&mut payload, &mut |table, k, v| {
        hash = record_hash(hash, table, k, v);
        total_key += 1;
    })?;
    Ok(BackupStatus { hash, revision: header.revision, total_key, total_size, header })
}

/// Whether a meta record of the backup is the cluster's data (kept) or the old members' state.
fn restored_meta(key: &[u8]) -> bool {
    key == crate::store::META_REV
        || key == crate::store::META_COMPACT
        || key == crate::store::META_AUTH
        || key.starts_with(crate::store::META_LEASE_PREFIX)
}

/// Verifies the backup at `path` and writes its data into `engine` (which must be empty: a new
/// member's store), keeping the history, leases and auth, dropping the old members' state.
pub fn restore(path: &Path, engine: &dyn Engine) -> Result<BackupStatus, BackupError> {
    let st = status(path)?;
    let (mut payload, _) = open_payload(path)?;
    snapshot::import_filtered(engine, &mut payload, &|table, key| table == Table::Kv || restored_meta(key))?;
    Ok(st)
}

/// A read-only, seekable view of the first `len` bytes of `inner`.
struct Window<R> {
    inner: R,
    len: u64,
    pos: u64,
}

impl<R: Seek> Window<R> {
    fn new(mut inner: R, len: u64) -> io::Result<Self> {
        inner.seek(SeekFrom::Start(0))?;
        Ok(Window { inner, len, pos: 0 })
    }
}

impl<R: Read> Read for Window<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let take = buf.len().min((self.len - self.pos) as usize);
        let n = self.inner.read(&mut buf[..take])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Seek> Seek for Window<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => n as i128,
            SeekFrom::End(d) => self.len as i128 + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if target < 0 || target > self.len as i128 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "seek outside the payload"));
        }
        self.pos = self.inner.seek(SeekFrom::Start(target as u64))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, Op};
    use cairn_proto::etcdserverpb as pb;
    use cairn_storage::MemEngine;
    use std::sync::Arc;

    fn store_with(puts: usize) -> Store {
        let s = Store::open(Arc::new(MemEngine::new())).unwrap();
        let mut b = s.begin(0).unwrap();
        for i in 0..puts {
            let p = pb::PutRequest { key: format!("k{i}").into(), value: vec![b'v'; 100], ..Default::default() };
            b.apply(&Command::new(0, Op::Put(p))).unwrap();
        }
        b.apply(&Command::new(0, Op::LeaseGrant(pb::LeaseGrantRequest { ttl: 60, id: 7 }))).unwrap();
        b.apply(&Command::new(
            0,
            Op::Alarm(pb::AlarmRequest { action: 1, member_id: 3, alarm: pb::AlarmType::Nospace as i32 }),
        ))
        .unwrap();
        b.put_meta(b"raft/applied", b"old cluster".to_vec());
        b.commit().unwrap();
        s
    }

    fn backup_of(s: &Store) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        let f = std::fs::File::create(&path).unwrap();
        let (_, len, h) = write_backup(s, 1, 2, 3, f).unwrap();
        assert_eq!(len % ALIGN, SHA_BYTES, "32 bytes past a multiple of 512, as etcd's tools expect");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
        assert_eq!(h.revision, s.current_revision());
        (dir, path)
    }

    #[test]
    fn a_restore_keeps_history_leases_and_revisions_and_drops_member_state() {
        let s = store_with(1000);
        let (_dir, path) = backup_of(&s);
        let st = status(&path).unwrap();
        assert_eq!(st.revision, 1001);
        assert!(st.total_key >= 1000, "{st:?}");

        let engine = Arc::new(MemEngine::new());
        restore(&path, &*engine).unwrap();
        let r = Store::open(engine.clone()).unwrap();
        assert_eq!(r.current_revision(), 1001, "revisions go on where the backup left them");
        let got = r.range(&pb::RangeRequest { key: b"k5".to_vec(), ..Default::default() }).unwrap();
        assert_eq!(got.kvs[0].mod_revision, 7);
        let old = r.range(&pb::RangeRequest { key: b"k5".to_vec(), revision: 7, ..Default::default() }).unwrap();
        assert_eq!(old.kvs.len(), 1, "history is kept");
        assert_eq!(r.leases(), vec![(7, 60)]);
        assert!(r.alarms().is_empty(), "the old members' alarms are not the new cluster's");
        assert_eq!(engine.get(Table::Meta, b"raft/applied").unwrap(), None, "nor their Raft state");
    }

    #[test]
    fn a_damaged_or_truncated_backup_is_refused_before_anything_is_written() {
        let s = store_with(100);
        let (_dir, path) = backup_of(&s);
        let good = std::fs::read(&path).unwrap();
        for (what, bytes) in [
            ("flipped bit", {
                let mut b = good.clone();
                b[good.len() / 3] ^= 0x10;
                b
            }),
            ("truncated", good[..good.len() - 100].to_vec()),
            ("not a backup", vec![7u8; 544]),
        ] {
            std::fs::write(&path, &bytes).unwrap();
            let e = status(&path).unwrap_err();
            assert!(matches!(e, BackupError::Corrupt(_)), "{what}: {e}");
            let engine = MemEngine::new();
            assert!(restore(&path, &engine).is_err(), "{what}");
            assert_eq!(engine.reader().unwrap().get(Table::Kv, &[0; 16]).unwrap(), None);
        }
    }
}
