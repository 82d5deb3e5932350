//! The Raft log: a segmented, checksummed, append-only file with group commit.
//!
//! # Why written here
//! The log needs exactly what openraft's `RaftLogStorage` asks for — append with a completion
//! callback fired after fsync, truncate the tail, purge the head, durable vote — and nothing
//! else. Embedding a general engine for it (redb, fjall) costs a second copy of every entry plus
//! the engine's own commit protocol on the hottest path; raft-engine (TiKV) is built around its
//! own multi-group API and C dependencies. A single-writer record log is small enough to own and
//! test fully, and makes group commit explicit.
//!
//! # Format
//! The log is a directory of segment files `wal-<seq>.log`. Each file is a sequence of records:
//!
//! ```text
//! [u32 LE body length][u32 LE crc32c(body)][body = u8 kind, payload]
//! ```
//!
//! Kinds: `Entry(index, bytes)`, `Vote(bytes)`, `Committed(bytes)`, `TruncateFrom(index)`,
//! `Purge(index, bytes)`, `Checkpoint(vote, committed, purge, sealed length)` and `Synced`. Every
//! segment starts with a checkpoint of the vote, committed and purge state at the moment it was
//! opened, so a segment whose entries are all purged can be deleted without losing that state;
//! the checkpoint also records the length the previous segment was sealed at (absent in logs
//! written before it was), so a sealed segment cut short between two records is found. Replaying all records
//! of all remaining segments in order rebuilds the log. The payloads are opaque here: the raft
//! crate encodes openraft's types into them.
//!
//! # Group commit
//! Callers never touch the file. [`Wal::append`] records the entries in memory (so they are
//! readable at once, as openraft requires) and queues them to the writer thread, which drains
//! everything queued, writes it, issues one `fdatasync`, and only then runs the completion
//! callbacks. Concurrent client writes therefore share fsyncs.
//!
//! # Zeroed ahead
//! The writer keeps the space just past the end of the active segment already written with zeros
//! (`ZERO_AHEAD_BYTES` at a time). Appends then overwrite blocks the file already has, so an
//! `fdatasync` need not commit the file's new size to the journal: on ext4 that is two disk writes
//! per sync instead of three, and a faster sync. (etcd preallocates its WAL files for the same
//! reason.) A segment is cut back to its last record when it is sealed or the log is closed.
//!
//! # Crash recovery
//! A crash can leave the last batch partially written. On open, a record in the *last* segment
//! that is cut short, or fails its checksum with nothing valid after it, is a torn tail: it was
//! never acknowledged, and the file is truncated there. Zeros after the last record are the
//! zeroed-ahead space of a log that stopped without closing: the end of the log, not damage.
//! Because a batch overwrites zeroed blocks, a crash during its sync can also leave an earlier
//! block of it unwritten and a later one written: in a last segment that ends in zeroed-ahead
//! space, a bad record followed by a valid one with a sector of zeros between them is such a
//! torn batch (etcd's rule for torn writes). Any other bad record — in an older segment, or
//! followed by a valid record otherwise — is corruption, and so is a sealed segment that is
//! empty, shorter or longer than it was sealed, or missing from the middle of the numbering, and
//! a record naming an index no log reaches (`u64::MAX`): [`Wal::open`] fails with
//! [`Error::Corruption`] naming the segment file, and the node refuses to start rather than
//! serve a log it cannot trust. Whatever bytes the files hold, recovery never panics (the
//! property tests in `proptests` feed it random and damaged segments).
//! Limitation: a corrupted *final* record that was acknowledged is indistinguishable from a torn
//! write and is dropped, and so is a damaged record followed by valid ones when a zero sector
//! lies between (a record's own data can be zeros); Raft's quorum still holds those entries on
//! the other members.
//!
//! # Layout
//! - this module: the public types, the in-memory index of entries, the [`Wal`] handle (append,
//!   read, vote, truncate, purge, close) and the segment file helpers;
//! - `record`: record framing: encoding, decoding and the checksum;
//! - `recover`: [`Wal::open`]: replaying the segments, torn-tail repair, corruption detection;
//! - `writer`: the writer thread: group commit, fsync, zeroed-ahead space, segment rotation and
//!   deletion of purged segments.

mod record;
mod recover;
mod writer;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::{Error, Result};
use record::{parse_at, Parsed, HEADER_BYTES, KIND_ENTRY};

/// Largest record the log accepts. Entries are bounded far below this by the request limit.
pub const RECORD_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Tuning and safety switches for the log.
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// A new segment starts when the current one exceeds this size.
    pub segment_bytes: u64,
    /// Recent entries kept in memory for replication; older ones are read back from disk.
    pub cache_bytes: usize,
    /// UNSAFE: skip fsync. An acknowledged write can then be lost on power failure or kernel
    /// crash. Off by default; named after etcd's `--unsafe-no-fsync`, for benchmarks only.
    pub unsafe_no_fsync: bool,
    /// Test-only storage faults (the chaos harness's `disk` nemesis, the WAL's tests); `None`
    /// in production.
    pub faults: Option<FaultHook>,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: 64 * 1024 * 1024,
            cache_bytes: 256 * 1024 * 1024,
            unsafe_no_fsync: false,
            faults: None,
        }
    }
}

/// A storage fault the log's writer can be made to meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoFault {
    /// The next fsync fails (EIO).
    SyncError,
    /// The next write fails (EIO) having written nothing.
    WriteError,
    /// Writes fail with ENOSPC, having written nothing, for as long as the fault is set.
    NoSpace,
    /// The next write puts half its bytes in the file, then fails (EIO).
    ShortWrite,
}

impl IoFault {
    fn error(self) -> std::io::Error {
        // Linux's errno values: EIO 5, ENOSPC 28.
        std::io::Error::from_raw_os_error(if self == IoFault::NoSpace { 28 } else { 5 })
    }
}

/// Asked before each write and fsync of the log: the fault, if any, that it meets.
#[derive(Clone)]
pub struct FaultHook(pub Arc<dyn Fn() -> Option<IoFault> + Send + Sync>);

impl std::fmt::Debug for FaultHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FaultHook")
    }
}

/// Called once the operation it was queued with is durable (or failed).
pub type Done = Box<dyn FnOnce(Result<()>) + Send>;

/// The purge point: the last purged index and the caller's encoding of its log id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purged {
    pub index: u64,
    pub data: Vec<u8>,
}

/// What the log holds besides its entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalState {
    pub vote: Option<Vec<u8>>,
    pub committed: Option<Vec<u8>>,
    pub purged: Option<Purged>,
    /// Index of the first entry present, if any.
    pub first_index: Option<u64>,
    /// Index of the last entry present, if any.
    pub last_index: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Location {
    segment: u64,
    offset: u64,
    /// Length of the entry payload (after the record header, kind byte and index).
    len: u32,
}

struct Slot {
    /// Unique per append, so the writer never records a location for a slot that was
    /// truncated and re-appended in the meantime.
    seq: u64,
    location: Option<Location>,
    data: Option<Bytes>,
}

struct Mem {
    /// Index of `slots[0]`.
    first: u64,
    slots: VecDeque<Slot>,
    next_seq: u64,
    cached_bytes: usize,
    /// Eviction cursor: slots before it hold no cached data.
    evicted_upto: usize,
    vote: Option<Vec<u8>>,
    committed: Option<Vec<u8>>,
    purged: Option<Purged>,
    /// Set when a write failed: the log accepts nothing more.
    failed: Option<String>,
}

impl Mem {
    fn last_index(&self) -> Option<u64> {
        if self.slots.is_empty() {
            None
        } else {
            Some(self.first + self.slots.len() as u64 - 1)
        }
    }

    fn truncate_from(&mut self, index: u64) {
        if self.slots.is_empty() || index >= self.first + self.slots.len() as u64 {
            return;
        }
        let keep = index.saturating_sub(self.first) as usize;
        for slot in self.slots.drain(keep..) {
            if let Some(d) = slot.data {
                self.cached_bytes -= d.len();
            }
        }
        self.evicted_upto = self.evicted_upto.min(self.slots.len());
        if self.slots.is_empty() {
            self.first = index;
        }
    }

    fn purge_upto(&mut self, index: u64) {
        while !self.slots.is_empty() && self.first <= index {
            let slot = self.slots.pop_front().expect("non-empty");
            if let Some(d) = slot.data {
                self.cached_bytes -= d.len();
            }
            self.first += 1;
            self.evicted_upto = self.evicted_upto.saturating_sub(1);
        }
        if self.slots.is_empty() && self.first <= index {
            self.first = index + 1;
        }
    }
}

enum Job {
    Entries { records: Vec<(u64, u64, Bytes)>, done: Option<Done> },
    Vote { data: Vec<u8>, done: Done },
    Committed { data: Vec<u8> },
    TruncateFrom { index: u64 },
    Purge { purged: Purged },
    Sync { done: Done },
}

/// Counters for metrics: how well group commit is batching.
#[derive(Debug, Default)]
pub struct WalStats {
    pub syncs: std::sync::atomic::AtomicU64,
    pub entries: std::sync::atomic::AtomicU64,
    pub bytes: std::sync::atomic::AtomicU64,
    /// Total time spent in fdatasync, in microseconds.
    pub sync_micros: std::sync::atomic::AtomicU64,
    /// The log's disk is full: its writer waits for space, writing nothing meanwhile.
    pub disk_full: std::sync::atomic::AtomicBool,
    /// Set by [`Wal::close`]: a writer waiting for space gives up.
    closing: std::sync::atomic::AtomicBool,
}

struct Shared {
    dir: PathBuf,
    opts: WalOptions,
    stats: WalStats,
    mem: Mutex<Mem>,
    /// Open read handles of the segments, for entries no longer cached.
    readers: Mutex<Vec<(u64, Arc<File>)>>,
}

/// The write-ahead log. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Wal {
    shared: Arc<Shared>,
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<thread::JoinHandle<()>>>,
}

/// The largest segment number accepted: the writer numbers segments one up from the last.
const SEGMENT_SEQ_MAX: u64 = u64::MAX / 2;

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("wal-{seq:016}.log"))
}

fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut segs = Vec::new();
    for ent in std::fs::read_dir(dir)? {
        let name = ent?.file_name();
        let name = name.to_string_lossy();
        if let Some(seq) = name.strip_prefix("wal-").and_then(|s| s.strip_suffix(".log")) {
            match seq.parse::<u64>() {
                // Far beyond any log (a new segment every 64 MiB), and room to count on.
                Ok(n) if n <= SEGMENT_SEQ_MAX => segs.push(n),
                _ => return Err(Error::Corruption(format!("unexpected file in log directory: {name}"))),
            }
        }
    }
    segs.sort_unstable();
    Ok(segs)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Cuts `file` back to `len` bytes, durably.
fn cut_back(file: &File, len: u64) -> Result<()> {
    file.set_len(len)?;
    file.sync_all()?;
    Ok(())
}

fn corrupt(seg: u64, at: usize, what: &str) -> Error {
    Error::Corruption(format!("raft log segment wal-{seg:016}.log at offset {at}: {what}"))
}

impl Wal {
    fn send(&self, job: Job) -> Result<()> {
        if let Some(msg) = &self.shared.mem.lock().failed {
            return Err(Error::Failed(msg.clone()));
        }
        match &*self.tx.lock() {
            Some(tx) => tx.send(job).map_err(|_| Error::Failed("log writer stopped".into())),
            None => Err(Error::Failed("log closed".into())),
        }
    }

    /// The vote, committed and purge state and the index range present.
    pub fn state(&self) -> WalState {
        let m = self.shared.mem.lock();
        WalState {
            vote: m.vote.clone(),
            committed: m.committed.clone(),
            purged: m.purged.clone(),
            first_index: if m.slots.is_empty() { None } else { Some(m.first) },
            last_index: m.last_index(),
        }
    }

    /// Appends consecutive entries. They are readable when this returns; `done` runs once they
    /// are durable. An entry at or below the current last index replaces the tail from there.
    pub fn append(&self, entries: Vec<(u64, Bytes)>, done: Done) -> Result<()> {
        let mut records = Vec::with_capacity(entries.len());
        {
            let mut m = self.shared.mem.lock();
            if let Some(msg) = &m.failed {
                return Err(Error::Failed(msg.clone()));
            }
            for (index, data) in entries {
                match m.last_index() {
                    Some(last) if index <= last => m.truncate_from(index),
                    Some(last) => assert_eq!(index, last + 1, "append would leave a hole: {index} after {last}"),
                    None => {
                        if let Some(p) = &m.purged {
                            assert!(index > p.index, "append of {index} at or below purge point {}", p.index);
                        }
                        m.first = index;
                    }
                }
                let seq = m.next_seq;
                m.next_seq += 1;
                m.cached_bytes += data.len();
                m.slots.push_back(Slot { seq, location: None, data: Some(data.clone()) });
                records.push((index, seq, data));
            }
        }
        self.send(Job::Entries { records, done: Some(done) })
    }

    /// Saves the vote; `done` runs once it is durable.
    pub fn save_vote(&self, data: Vec<u8>, done: Done) -> Result<()> {
        self.shared.mem.lock().vote = Some(data.clone());
        self.send(Job::Vote { data, done })
    }

    /// Records the committed position. Not fsynced on its own: it becomes durable with the
    /// next durable write, which is all Raft needs of it.
    pub fn save_committed(&self, data: Vec<u8>) -> Result<()> {
        self.shared.mem.lock().committed = Some(data.clone());
        self.send(Job::Committed { data })
    }

    /// Removes entries at `index` and after.
    pub fn truncate_from(&self, index: u64) -> Result<()> {
        self.shared.mem.lock().truncate_from(index);
        self.send(Job::TruncateFrom { index })
    }

    /// Removes entries up to and including `index`, remembering `data` as the purge point.
    pub fn purge(&self, index: u64, data: Vec<u8>) -> Result<()> {
        let purged = Purged { index, data };
        {
            let mut m = self.shared.mem.lock();
            m.purge_upto(index);
            m.purged = Some(purged.clone());
        }
        self.send(Job::Purge { purged })
    }

    /// Runs `done` once everything queued before it is durable.
    pub fn sync(&self, done: Done) -> Result<()> {
        self.send(Job::Sync { done })
    }

    /// Entries in `[start, end)` that are present, in order, stopping early (after at least
    /// one entry) once `max_bytes` is reached.
    pub fn read(&self, start: u64, end: u64, max_bytes: usize) -> Result<Vec<(u64, Bytes)>> {
        let mut out = Vec::new();
        let mut to_load = Vec::new();
        {
            let m = self.shared.mem.lock();
            if m.slots.is_empty() {
                return Ok(out);
            }
            let lo = start.max(m.first);
            let hi = end.min(m.first + m.slots.len() as u64);
            let mut bytes = 0usize;
            for index in lo..hi {
                let slot = &m.slots[(index - m.first) as usize];
                let len = slot.data.as_ref().map(|d| d.len()).or(slot.location.map(|l| l.len as usize)).unwrap_or(0);
                if !out.is_empty() && bytes + len > max_bytes {
                    break;
                }
                bytes += len;
                match (&slot.data, slot.location) {
                    (Some(d), _) => out.push((index, d.clone())),
                    (None, Some(loc)) => {
                        to_load.push((out.len(), loc));
                        out.push((index, Bytes::new()));
                    }
                    (None, None) => unreachable!("an uncached entry always has a location"),
                }
            }
        }
        for (pos, loc) in to_load {
            out[pos].1 = self.read_at(loc)?;
        }
        Ok(out)
    }

    fn read_at(&self, loc: Location) -> Result<Bytes> {
        let file = {
            let r = self.shared.readers.lock();
            r.iter()
                .find(|(s, _)| *s == loc.segment)
                .map(|(_, f)| f.clone())
                .ok_or_else(|| Error::Corruption(format!("raft log segment {} vanished", loc.segment)))?
        };
        // Re-read the whole record to check its checksum again: a bit flipped on disk since
        // start-up must not be replicated.
        let rec_off = loc.offset - (HEADER_BYTES as u64 + 1 + 8);
        let mut buf = vec![0u8; HEADER_BYTES + 1 + 8 + loc.len as usize];
        file.read_exact_at(&mut buf, rec_off)?;
        match parse_at(&buf, 0) {
            Parsed::Record { kind: KIND_ENTRY, payload, .. } if payload.len() >= 8 => {
                Ok(Bytes::copy_from_slice(&payload[8..]))
            }
            _ => Err(corrupt(loc.segment, rec_off as usize, "entry failed its checksum on read")),
        }
    }

    /// Stops the writer thread after it has written everything queued.
    pub fn close(&self) {
        self.shared.stats.closing.store(true, std::sync::atomic::Ordering::Relaxed);
        drop(self.tx.lock().take());
        if let Some(h) = self.writer.lock().take() {
            let _ = h.join();
        }
    }

    /// Whether the log's disk is full: nothing more is written until space returns, and writes
    /// waiting for the log wait with it (the member refuses new ones).
    pub fn disk_full(&self) -> bool {
        self.shared.stats.disk_full.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Group-commit counters.
    pub fn stats(&self) -> &WalStats {
        &self.shared.stats
    }

    /// Files of the log, for status (on disk: with the zeroed-ahead space).
    pub fn size_bytes(&self) -> u64 {
        list_segments(&self.shared.dir)
            .unwrap_or_default()
            .iter()
            .filter_map(|s| std::fs::metadata(segment_path(&self.shared.dir, *s)).ok())
            .map(|m| m.len())
            .sum()
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.close();
    }
}
