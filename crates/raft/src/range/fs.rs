//! The range log's files, as raft-engine sees them: its `FileSystem` over
//! [`cairn_storage::volatile::DataFile`], so that a failpoints build's simulated power cut loses
//! (or tears) every write the shared log has not synced, as it does for the meta group's log and
//! the state engine. Without the layer switched on, a `DataFile` is the plain file: positioned
//! reads and writes, and fdatasync.
//!
//! raft-engine's own `DefaultFileSystem` writes through its private file type, which the
//! power-cut layer cannot see; this adapter is the seam raft-engine offers for that
//! (`Engine::open_with_file_system`).

use std::fs::OpenOptions;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cairn_storage::volatile::DataFile;
use raft_engine::env::{FileSystem, Handle, Permission, WriteExt};

/// raft-engine's files through the power-cut layer.
#[derive(Debug, Default, Clone)]
pub struct LogFs {
    /// Tests' own power switch: files volatile whether or not the process-wide layer is on
    /// (a test cannot switch that on beside other tests), and once it is set, syncs reach
    /// nothing (the power is off; raft-engine's clean close would otherwise sync).
    power_off: Option<Arc<AtomicBool>>,
    /// Tests' switch that makes every sync fail (a disk that stopped accepting writes).
    sync_fails: Option<Arc<AtomicBool>>,
}

impl LogFs {
    /// Volatile files and the switch that cuts their power.
    pub fn volatile() -> (LogFs, Arc<AtomicBool>) {
        let off = Arc::new(AtomicBool::new(false));
        (LogFs { power_off: Some(off.clone()), sync_fails: None }, off)
    }

    /// Plain files and the switch that makes their syncs fail.
    pub fn failing() -> (LogFs, Arc<AtomicBool>) {
        let fail = Arc::new(AtomicBool::new(false));
        (LogFs { power_off: None, sync_fails: Some(fail.clone()) }, fail)
    }

    fn file(&self, f: std::fs::File) -> io::Result<LogFile> {
        let data = match self.power_off {
            Some(_) => DataFile::Volatile(cairn_storage::volatile::VolatileFile::new(f)?),
            None => DataFile::new(f)?,
        };
        Ok(LogFile { data, power_off: self.power_off.clone(), sync_fails: self.sync_fails.clone() })
    }
}

/// One open log file.
#[derive(Debug)]
pub struct LogFile {
    data: DataFile,
    power_off: Option<Arc<AtomicBool>>,
    sync_fails: Option<Arc<AtomicBool>>,
}

impl Handle for LogFile {
    fn truncate(&self, offset: usize) -> io::Result<()> {
        self.data.set_len(offset as u64)
    }

    fn file_size(&self) -> io::Result<usize> {
        self.data.len().map(|n| n as usize)
    }

    fn sync(&self) -> io::Result<()> {
        if self.power_off.as_ref().is_some_and(|o| o.load(Ordering::Relaxed)) {
            return Ok(());
        }
        if self.sync_fails.as_ref().is_some_and(|f| f.load(Ordering::Relaxed)) {
            return Err(io::Error::other("fsync failed (injected)"));
        }
        self.data.sync_data()
    }
}

/// A cursor over a [`LogFile`]: raft-engine reads and writes sequentially from a position.
pub struct Cursor {
    file: Arc<LogFile>,
    pos: u64,
}

impl Read for Cursor {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Whole reads are the common case (records at known offsets): one pread. Only a read
        // that runs past the end asks for the file's length and reads what there is.
        let n = match self.file.data.read_exact_at(buf, self.pos) {
            Ok(()) => buf.len(),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                let n = (self.file.data.len()?.saturating_sub(self.pos) as usize).min(buf.len());
                self.file.data.read_exact_at(&mut buf[..n], self.pos)?;
                n
            }
            Err(e) => return Err(e),
        };
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Cursor {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.data.write_all_at(buf, self.pos)?;
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Cursor {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let base = match to {
            SeekFrom::Start(n) => {
                self.pos = n;
                return Ok(n);
            }
            SeekFrom::Current(d) => (self.pos, d),
            SeekFrom::End(d) => (self.file.data.len()?, d),
        };
        self.pos = base
            .0
            .checked_add_signed(base.1)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start of a log file"))?;
        Ok(self.pos)
    }
}

impl WriteExt for Cursor {
    fn truncate(&mut self, offset: usize) -> io::Result<()> {
        self.file.data.set_len(offset as u64)?;
        self.pos = self.pos.min(offset as u64);
        Ok(())
    }

    /// Preallocates as raft-engine's own file system does (the file grows, so an fdatasync of
    /// later writes inside it has no size to record); where the file system cannot, nothing.
    fn allocate(&mut self, offset: usize, size: usize) -> io::Result<()> {
        match &self.file.data {
            DataFile::Plain(f) => {
                match rustix::fs::fallocate(f, rustix::fs::FallocateFlags::empty(), offset as u64, size as u64) {
                    Err(e) if e == rustix::io::Errno::OPNOTSUPP => Ok(()),
                    r => r.map_err(io::Error::from),
                }
            }
            // The overlay grows the same way; like the real size change, it is lost unless synced.
            DataFile::Volatile(v) => {
                let end = (offset + size) as u64;
                if end > v.len() {
                    v.set_len(end)?;
                }
                Ok(())
            }
        }
    }
}

impl FileSystem for LogFs {
    type Handle = LogFile;
    type Reader = Cursor;
    type Writer = Cursor;

    fn create<P: AsRef<Path>>(&self, path: P) -> io::Result<LogFile> {
        self.file(OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?)
    }

    fn open<P: AsRef<Path>>(&self, path: P, perm: Permission) -> io::Result<LogFile> {
        self.file(OpenOptions::new().read(true).write(perm == Permission::ReadWrite).open(path)?)
    }

    fn delete<P: AsRef<Path>>(&self, path: P) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename<P: AsRef<Path>>(&self, src: P, dst: P) -> io::Result<()> {
        std::fs::rename(src, dst)
    }

    fn new_reader(&self, file: Arc<LogFile>) -> io::Result<Cursor> {
        Ok(Cursor { file, pos: 0 })
    }

    fn new_writer(&self, file: Arc<LogFile>) -> io::Result<Cursor> {
        Ok(Cursor { file, pos: 0 })
    }
}
