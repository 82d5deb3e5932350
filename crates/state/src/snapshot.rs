//! Snapshot files: a point-in-time copy of every engine table, checksummed.
//!
//! ```text
//! "CAIRNSNP" u32-version
//! u32 header-length, header            (opaque: the Raft layer's snapshot meta)
//! records: u8 table, u32 key-length, key, u32 value-length, value
//! u8 0xFF                               (end of records)
//! u32 crc32c of every byte above
//! ```
//!
//! [`import`] verifies the checksum over the whole file, and that its records read to the end
//! mark, before it changes anything, so a torn, corrupted or malformed snapshot is refused and
//! the engine keeps its previous state.

use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::ops::Bound;

use cairn_storage::{Engine, Reader, Table, WriteBatch};

const MAGIC: &[u8; 8] = b"CAIRNSNP";
const VERSION: u32 = 1;
const END: u8 = 0xFF;
/// Records per engine write while importing.
const IMPORT_BATCH: usize = 4096;
/// Largest key or value a snapshot record may declare (guards allocation on a bad file).
const FIELD_BYTES_MAX: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot I/O: {0}")]
    Io(#[from] io::Error),
    #[error("snapshot is corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Storage(#[from] cairn_storage::Error),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

fn table_code(t: Table) -> u8 {
    match t {
        Table::Kv => 0,
        Table::Meta => 1,
    }
}

fn table_of(code: u8) -> Option<Table> {
    match code {
        0 => Some(Table::Kv),
        1 => Some(Table::Meta),
        _ => None,
    }
}

/// A writer that checksums what passes through it.
struct Crc<W> {
    inner: W,
    crc: u32,
}

impl<W: Write> Write for Crc<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes everything `reader` sees, preceded by `header`, into `out`. The caller derives the
/// header from the same reader, so it describes exactly the data written.
pub fn export<W: Write>(reader: &dyn Reader, header: &[u8], out: W) -> Result<(), SnapshotError> {
    let mut w = Crc { inner: BufWriter::with_capacity(1 << 20, out), crc: 0 };
    w.write_all(MAGIC)?;
    w.write_all(&VERSION.to_le_bytes())?;
    w.write_all(&(header.len() as u32).to_le_bytes())?;
    w.write_all(header)?;
    for table in Table::ALL {
        let mut err = None;
        reader.scan(table, Bound::Unbounded, Bound::Unbounded, &mut |k, v| {
            let r = (|| -> io::Result<()> {
                w.write_all(&[table_code(table)])?;
                w.write_all(&(k.len() as u32).to_le_bytes())?;
                w.write_all(k)?;
                w.write_all(&(v.len() as u32).to_le_bytes())?;
                w.write_all(v)
            })();
            match r {
                Ok(()) => true,
                Err(e) => {
                    err = Some(e);
                    false
                }
            }
        })?;
        if let Some(e) = err {
            return Err(e.into());
        }
    }
    w.write_all(&[END])?;
    let crc = w.crc;
    let mut inner = w.inner;
    inner.write_all(&crc.to_le_bytes())?;
    inner.flush()?;
    Ok(())
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_field(r: &mut impl Read) -> Result<Vec<u8>, SnapshotError> {
    let n = read_u32(r)? as usize;
    if n > FIELD_BYTES_MAX {
        return Err(SnapshotError::Corrupt(format!("field of {n} bytes")));
    }
    let mut v = vec![0u8; n];
    r.read_exact(&mut v)?;
    Ok(v)
}

/// A reader that checksums what passes through it.
struct CrcRead<R> {
    inner: R,
    crc: u32,
}

impl<R: Read> Read for CrcRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        Ok(n)
    }
}

/// Checks the magic, version, checksum and layout of a snapshot file; returns its header. A file
/// that passes can be read record by record to its end (`for_each_record` cannot fail on it
/// but for I/O), so an import never stops half-way on a bad record.
pub fn verify<R: Read + Seek>(mut file: R) -> Result<Vec<u8>, SnapshotError> {
    let len = file.seek(SeekFrom::End(0))?;
    if len < (MAGIC.len() + 4 + 4 + 1 + 4) as u64 {
        return Err(SnapshotError::Corrupt(format!("file of {len} bytes is too short")));
    }
    file.seek(SeekFrom::Start(0))?;
    let mut body = CrcRead { inner: BufReader::with_capacity(1 << 20, (&mut file).take(len - 4)), crc: 0 };
    let layout = read_header(&mut body).and_then(|header| {
        skip_records(&mut body)?;
        if body.read(&mut [0u8; 1])? != 0 {
            return Err(SnapshotError::Corrupt("bytes after the end of the records".into()));
        }
        Ok(header)
    });
    // The checksum covers every byte, however the layout reads: a damaged file is reported as
    // such, not by whichever field the damage hit.
    io::copy(&mut body, &mut io::sink())?;
    let crc = body.crc;
    drop(body);
    let want = read_u32(&mut file)?;
    if want != crc {
        return Err(SnapshotError::Corrupt(format!("checksum mismatch (stored {want:#010x}, computed {crc:#010x})")));
    }
    layout.map_err(|e| match e {
        SnapshotError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            SnapshotError::Corrupt("the records end before their end mark".into())
        }
        other => other,
    })
}

/// Reads past every record up to and including the end mark.
fn skip_records(r: &mut impl Read) -> Result<(), SnapshotError> {
    loop {
        let mut code = [0u8; 1];
        r.read_exact(&mut code)?;
        if code[0] == END {
            return Ok(());
        }
        table_of(code[0]).ok_or_else(|| SnapshotError::Corrupt(format!("unknown table {}", code[0])))?;
        for _ in 0..2 {
            let n = read_u32(r)? as u64;
            if n > FIELD_BYTES_MAX as u64 {
                return Err(SnapshotError::Corrupt(format!("field of {n} bytes")));
            }
            if io::copy(&mut r.by_ref().take(n), &mut io::sink())? != n {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
        }
    }
}

/// Reads the magic, the version and the header field at the start of a snapshot file.
fn read_header(r: &mut impl Read) -> Result<Vec<u8>, SnapshotError> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(SnapshotError::Corrupt("not a cairn snapshot".into()));
    }
    let version = read_u32(r)?;
    if version != VERSION {
        return Err(SnapshotError::Corrupt(format!("unsupported snapshot version {version}")));
    }
    read_field(r)
}

/// Replaces the engine's contents with the snapshot's, after verifying the whole file. The
/// engine is synced at the end; a crash before that leaves the previous durable state.
pub fn import<R: Read + Seek>(engine: &dyn Engine, file: R) -> Result<Vec<u8>, SnapshotError> {
    import_filtered(engine, file, &|_, _| true)
}

/// [`import`], keeping only the records `keep` accepts.
pub fn import_filtered<R: Read + Seek>(
    engine: &dyn Engine,
    mut file: R,
    keep: &dyn Fn(Table, &[u8]) -> bool,
) -> Result<Vec<u8>, SnapshotError> {
    let header = verify(&mut file)?;
    let mut batch = WriteBatch::new();
    for t in Table::ALL {
        batch.clear(t);
    }
    let mut failed = None;
    for_each_record(&mut file, &mut |table, k, v| {
        if failed.is_some() || !keep(table, k) {
            return;
        }
        batch.put(table, k.to_vec(), v.to_vec());
        if batch.len() >= IMPORT_BATCH {
            if let Err(e) = engine.write(std::mem::take(&mut batch)) {
                failed = Some(e);
            }
        }
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    engine.write(batch)?;
    engine.sync()?;
    Ok(header)
}

/// Calls `f` with every record of a snapshot file, in file order (the caller verifies the file
/// first: this only parses it).
pub fn for_each_record<R: Read + Seek, F: FnMut(Table, &[u8], &[u8])>(
    mut file: R,
    f: &mut F,
) -> Result<(), SnapshotError> {
    file.seek(SeekFrom::Start(0))?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    read_header(&mut r)?;
    loop {
        let mut code = [0u8; 1];
        r.read_exact(&mut code)?;
        if code[0] == END {
            return Ok(());
        }
        let table = table_of(code[0]).ok_or_else(|| SnapshotError::Corrupt(format!("unknown table {}", code[0])))?;
        let k = read_field(&mut r)?;
        let v = read_field(&mut r)?;
        f(table, &k, &v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_storage::MemEngine;
    use std::io::Cursor;

    fn engine_with(n: u32) -> MemEngine {
        let e = MemEngine::new();
        let mut b = WriteBatch::new();
        for i in 0..n {
            b.put(Table::Kv, i.to_be_bytes().to_vec(), vec![i as u8; 100]);
        }
        b.put(Table::Meta, b"m".to_vec(), b"meta".to_vec());
        e.write(b).unwrap();
        e
    }

    #[test]
    fn roundtrip_replaces_contents() {
        let src = engine_with(10_000);
        let mut file = Vec::new();
        export(&*src.reader().unwrap(), b"hdr", &mut file).unwrap();
        let dst = engine_with(3);
        let mut b = WriteBatch::new();
        b.put(Table::Kv, b"stale".to_vec(), b"x".to_vec());
        dst.write(b).unwrap();
        assert_eq!(import(&dst, Cursor::new(&file)).unwrap(), b"hdr");
        assert_eq!(dst.get(Table::Kv, b"stale").unwrap(), None);
        assert_eq!(dst.get(Table::Kv, &9999u32.to_be_bytes()).unwrap(), Some(vec![9999u32 as u8; 100]));
        assert_eq!(dst.get(Table::Meta, b"m").unwrap(), Some(b"meta".to_vec()));
    }

    #[test]
    fn corrupt_or_truncated_snapshot_changes_nothing() {
        let src = engine_with(100);
        let mut file = Vec::new();
        export(&*src.reader().unwrap(), b"hdr", &mut file).unwrap();
        let dst = engine_with(1);
        let mut flipped = file.clone();
        flipped[file.len() / 2] ^= 1;
        assert!(matches!(import(&dst, Cursor::new(&flipped)), Err(SnapshotError::Corrupt(_))));
        let truncated = &file[..file.len() - 10];
        assert!(import(&dst, Cursor::new(truncated)).is_err());
        assert_eq!(dst.get(Table::Kv, &0u32.to_be_bytes()).unwrap(), Some(vec![0u8; 100]));
        assert_eq!(dst.get(Table::Kv, &50u32.to_be_bytes()).unwrap(), None, "nothing was imported");
    }
}
