//! Power loss, simulated: files whose writes stay in this process's memory until they are
//! synced, as in a page cache that a power cut empties.
//!
//! A SIGKILL does not lose what a process wrote: the kernel's page cache keeps it and writes it
//! out later. So a crash test with SIGKILL cannot tell a build that fsyncs from one that never
//! does. With this layer switched on ([`enable`], by the test-only `failpoints` build of the
//! server), the Raft log and the state engine write through [`DataFile`]s that hold every
//! unsynced write in memory and put it in the real file only when synced: a SIGKILL then loses
//! exactly what a power cut would. [`power_cut`] can also tear the unsynced writes, keeping a
//! random selection of their 512-byte sectors, as a disk that lost power mid-write does.
//!
//! Written here rather than taken from a crate: no maintained crate simulates a volatile page
//! cache over real files (TigerBeetle and FoundationDB build theirs into their simulators).
//! The layer is compiled in every build so its tests run in CI; only failpoints builds switch
//! it on.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

/// Bytes per page of the in-memory overlay.
const PAGE: u64 = 4096;
/// Bytes per sector: a torn write keeps or loses whole sectors.
pub const SECTOR: u64 = 512;

static ENABLED: AtomicBool = AtomicBool::new(false);
static FILES: Mutex<Vec<Weak<Inner>>> = Mutex::new(Vec::new());

/// Switches the layer on for files opened from now on (failpoints builds only).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A data file: the real file, or (with the layer on) one whose unsynced writes are volatile.
#[derive(Debug)]
pub enum DataFile {
    Plain(File),
    Volatile(VolatileFile),
}

impl DataFile {
    /// `file` as the layer says: volatile if it is switched on.
    pub fn new(file: File) -> io::Result<DataFile> {
        Ok(if enabled() { DataFile::Volatile(VolatileFile::new(file)?) } else { DataFile::Plain(file) })
    }

    pub fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        match self {
            DataFile::Plain(f) => f.write_all_at(data, offset),
            DataFile::Volatile(v) => v.write_all_at(data, offset),
        }
    }

    pub fn read_exact_at(&self, out: &mut [u8], offset: u64) -> io::Result<()> {
        match self {
            DataFile::Plain(f) => f.read_exact_at(out, offset),
            DataFile::Volatile(v) => v.read_exact_at(out, offset),
        }
    }

    pub fn len(&self) -> io::Result<u64> {
        match self {
            DataFile::Plain(f) => Ok(f.metadata()?.len()),
            DataFile::Volatile(v) => Ok(v.len()),
        }
    }

    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    pub fn set_len(&self, len: u64) -> io::Result<()> {
        match self {
            DataFile::Plain(f) => f.set_len(len),
            DataFile::Volatile(v) => v.set_len(len),
        }
    }

    pub fn sync_data(&self) -> io::Result<()> {
        match self {
            DataFile::Plain(f) => f.sync_data(),
            DataFile::Volatile(v) => v.sync(false),
        }
    }

    pub fn sync_all(&self) -> io::Result<()> {
        match self {
            DataFile::Plain(f) => f.sync_all(),
            DataFile::Volatile(v) => v.sync(true),
        }
    }
}

/// A file whose writes reach the real file only when synced.
#[derive(Debug)]
pub struct VolatileFile {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    file: File,
    st: Mutex<Overlay>,
}

#[derive(Debug)]
struct Overlay {
    /// The length readers see.
    len: u64,
    /// How much of the real file is still this file's (its length, less any shrink since).
    disk_len: u64,
    /// Pages written since the last sync: page number -> the page as readers see it.
    dirty: BTreeMap<u64, Box<[u8]>>,
}

impl VolatileFile {
    pub fn new(file: File) -> io::Result<VolatileFile> {
        let len = file.metadata()?.len();
        let inner = Arc::new(Inner { file, st: Mutex::new(Overlay { len, disk_len: len, dirty: BTreeMap::new() }) });
        let mut files = FILES.lock();
        files.retain(|w| w.strong_count() > 0);
        files.push(Arc::downgrade(&inner));
        Ok(VolatileFile { inner })
    }

    pub fn len(&self) -> u64 {
        self.inner.st.lock().len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let mut st = self.inner.st.lock();
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let (page, within) = (at / PAGE, (at % PAGE) as usize);
            let n = (PAGE as usize - within).min(data.len() - done);
            let buf = self.inner.page(&mut st, page)?;
            buf[within..within + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
        st.len = st.len.max(offset + data.len() as u64);
        Ok(())
    }

    pub fn read_exact_at(&self, out: &mut [u8], offset: u64) -> io::Result<()> {
        let st = self.inner.st.lock();
        if offset + out.len() as u64 > st.len {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of the file"));
        }
        let mut done = 0usize;
        while done < out.len() {
            let at = offset + done as u64;
            let (page, within) = (at / PAGE, (at % PAGE) as usize);
            let n = (PAGE as usize - within).min(out.len() - done);
            match st.dirty.get(&page) {
                Some(p) => out[done..done + n].copy_from_slice(&p[within..within + n]),
                None => self.inner.read_disk(&st, at, &mut out[done..done + n])?,
            }
            done += n;
        }
        Ok(())
    }

    pub fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = self.inner.st.lock();
        if len < st.len {
            // Whatever lies past the new end reads as zeros if the file grows again.
            let first_gone = len.div_ceil(PAGE);
            st.dirty.retain(|p, _| *p < first_gone);
            if let Some(p) = st.dirty.get_mut(&(len / PAGE)) {
                p[(len % PAGE) as usize..].fill(0);
            } else if !len.is_multiple_of(PAGE) && len < st.disk_len {
                // The page holding the new end keeps its head only.
                let page = self.inner.page(&mut st, len / PAGE)?;
                page[(len % PAGE) as usize..].fill(0);
            }
            // The real file's bytes past the new end are no longer part of this file.
            st.disk_len = st.disk_len.min(len);
        }
        st.len = len;
        Ok(())
    }

    /// Puts every unsynced write in the real file and syncs it.
    pub fn sync(&self, metadata: bool) -> io::Result<()> {
        let mut st = self.inner.st.lock();
        let len = st.len;
        // Bytes past a shrink are gone even where nothing was written over them since.
        if self.inner.file.metadata()?.len() > st.disk_len {
            self.inner.file.set_len(st.disk_len)?;
        }
        for (&page, buf) in &st.dirty {
            let at = page * PAGE;
            if at < len {
                let n = (len - at).min(PAGE) as usize;
                self.inner.file.write_all_at(&buf[..n], at)?;
            }
        }
        self.inner.file.set_len(len)?;
        if metadata {
            self.inner.file.sync_all()?;
        } else {
            self.inner.file.sync_data()?;
        }
        st.dirty.clear();
        st.disk_len = len;
        Ok(())
    }
}

impl Inner {
    /// The dirty page `page`, made from what readers see there now.
    fn page<'a>(&self, st: &'a mut Overlay, page: u64) -> io::Result<&'a mut Box<[u8]>> {
        if !st.dirty.contains_key(&page) {
            let mut buf = vec![0u8; PAGE as usize].into_boxed_slice();
            let at = page * PAGE;
            let visible = st.len.min(st.disk_len);
            if at < visible {
                let n = (visible - at).min(PAGE) as usize;
                self.file.read_exact_at(&mut buf[..n], at)?;
            }
            st.dirty.insert(page, buf);
        }
        Ok(st.dirty.get_mut(&page).expect("just inserted"))
    }

    /// Reads synced bytes; past the synced length (a file grown but not synced) they are zeros.
    fn read_disk(&self, st: &Overlay, at: u64, out: &mut [u8]) -> io::Result<()> {
        let visible = st.len.min(st.disk_len);
        let n = visible.saturating_sub(at).min(out.len() as u64) as usize;
        self.file.read_exact_at(&mut out[..n], at)?;
        out[n..].fill(0);
        Ok(())
    }

    /// Writes a selection of the unsynced sectors to the real file (`keep` decides for each),
    /// as a disk that lost power mid-write keeps some sectors of it.
    fn tear(&self, keep: &mut dyn FnMut() -> bool) {
        let st = self.st.lock();
        for (&page, buf) in &st.dirty {
            for s in 0..PAGE / SECTOR {
                let at = page * PAGE + s * SECTOR;
                if at < st.len && keep() {
                    let b = &buf[(s * SECTOR) as usize..((s + 1) * SECTOR) as usize];
                    let _ = self.file.write_all_at(b, at);
                }
            }
        }
    }
}

/// A simulated power cut of this process: with `tear`, every volatile file first keeps a random
/// half of its unsynced sectors (chosen by the seed); then the process aborts, and with it
/// every write not synced. Never returns.
pub fn power_cut(tear: Option<u64>) -> ! {
    if let Some(seed) = tear {
        let mut x = seed | 1;
        // xorshift64: a few bits of randomness per sector, no dependency.
        let mut keep = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x & 1 == 1
        };
        for f in FILES.lock().iter().filter_map(Weak::upgrade) {
            f.tear(&mut keep);
        }
    }
    std::process::abort()
}

/// redb's storage over a [`DataFile`]: the state engine's writes are volatile until redb syncs
/// them (a durable commit), as with a real disk.
#[derive(Debug)]
pub struct EngineBackend(pub DataFile);

impl redb::StorageBackend for EngineBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.0.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.0.read_exact_at(out, offset)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.0.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.0.write_all_at(data, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &std::path::Path) -> VolatileFile {
        let f = std::fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(path).unwrap();
        VolatileFile::new(f).unwrap()
    }

    #[test]
    fn unsynced_writes_are_readable_but_not_on_disk_until_synced() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let v = open(&p);
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        v.write_all_at(&data, 100).unwrap();
        let mut out = vec![0u8; 10_100];
        v.read_exact_at(&mut out, 0).unwrap();
        assert_eq!(&out[100..], &data[..]);
        assert_eq!(&out[..100], &[0u8; 100][..]);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 0, "nothing on disk before a sync");
        v.sync(false).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), out, "everything on disk after it");
        // Overwrite part of it, then lose it: the disk keeps the synced bytes.
        v.write_all_at(&[0xff; 300], 4000).unwrap();
        v.read_exact_at(&mut out[..1], 4000).unwrap();
        assert_eq!(out[0], 0xff);
        drop(v);
        let on_disk = std::fs::read(&p).unwrap();
        assert_eq!(&on_disk[4100..4400], &data[4000..4300], "the unsynced overwrite was lost");
    }

    #[test]
    fn set_len_shrinks_and_grows_with_zeros() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let v = open(&p);
        v.write_all_at(&[7u8; 9000], 0).unwrap();
        v.sync(true).unwrap();
        v.set_len(5000).unwrap();
        v.set_len(9000).unwrap();
        let mut out = vec![1u8; 9000];
        v.read_exact_at(&mut out, 0).unwrap();
        assert_eq!(&out[..5000], &[7u8; 5000][..]);
        assert!(out[5000..].iter().all(|&b| b == 0), "the regrown tail reads as zeros");
        assert!(v.read_exact_at(&mut [0u8; 1], 9000).is_err(), "past the end");
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 9000, "the disk still has the old length");
        v.sync(false).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), out);
    }

    #[test]
    fn a_torn_cut_keeps_whole_sectors_of_the_unsynced_writes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let v = open(&p);
        v.write_all_at(&[1u8; 8192], 0).unwrap();
        v.sync(false).unwrap();
        v.write_all_at(&[2u8; 8192], 0).unwrap();
        let mut x = 0u32;
        v.inner.tear(&mut || {
            x += 1;
            x.is_multiple_of(2)
        });
        let disk = std::fs::read(&p).unwrap();
        for (i, sector) in disk.chunks(SECTOR as usize).enumerate() {
            let want = if (i + 1).is_multiple_of(2) { 2 } else { 1 };
            assert!(sector.iter().all(|&b| b == want), "sector {i} is whole: all {want}");
        }
    }
}
