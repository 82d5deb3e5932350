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
//! `Purge(index, bytes)` and `Checkpoint(vote, committed, purge)`. Every segment starts with a
//! checkpoint of the vote, committed and purge state at the moment it was opened, so a segment
//! whose entries are all purged can be deleted without losing that state. Replaying all records
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
//! followed by a valid record otherwise — is corruption: [`Wal::open`] fails with
//! [`Error::Corruption`] and the node refuses to start rather than serve a log it cannot trust.
//! Limitation: a corrupted *final* record that was acknowledged is indistinguishable from a torn
//! write and is dropped, and so is a damaged record followed by valid ones when a zero sector
//! lies between (a record's own data can be zeros); Raft's quorum still holds those entries on
//! the other members.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::{Error, Result};

/// Largest record the log accepts. Entries are bounded far below this by the request limit.
pub const RECORD_BYTES_MAX: usize = 256 * 1024 * 1024;
const HEADER_BYTES: usize = 8;
/// How far past the end of the active segment the writer keeps zeros written (see "Zeroed ahead").
const ZERO_AHEAD_BYTES: u64 = 1 << 20;
/// The writer's buffer is written out once it holds this much, even within one batch.
const WRITE_CHUNK_BYTES: usize = 4 << 20;

const KIND_ENTRY: u8 = 1;
const KIND_VOTE: u8 = 2;
const KIND_COMMITTED: u8 = 3;
const KIND_TRUNCATE_FROM: u8 = 4;
const KIND_PURGE: u8 = 5;
const KIND_CHECKPOINT: u8 = 6;

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
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions { segment_bytes: 64 * 1024 * 1024, cache_bytes: 256 * 1024 * 1024, unsafe_no_fsync: false }
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
                Ok(n) => segs.push(n),
                Err(_) => return Err(Error::Corruption(format!("unexpected file in log directory: {name}"))),
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

fn encode_record(kind: u8, parts: &[&[u8]], out: &mut Vec<u8>) {
    let body_len = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    assert!(body_len <= RECORD_BYTES_MAX, "record of {body_len} bytes exceeds RECORD_BYTES_MAX");
    let start = out.len();
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(kind);
    for p in parts {
        out.extend_from_slice(p);
    }
    let crc = crc32c::crc32c(&out[start + HEADER_BYTES..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn put_opt(out: &mut Vec<u8>, v: &Option<Vec<u8>>) {
    match v {
        None => out.push(0),
        Some(b) => {
            out.push(1);
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        }
    }
}

fn checkpoint_payload(vote: &Option<Vec<u8>>, committed: &Option<Vec<u8>>, purged: &Option<Purged>) -> Vec<u8> {
    let mut p = Vec::new();
    put_opt(&mut p, vote);
    put_opt(&mut p, committed);
    match purged {
        None => p.push(0),
        Some(pg) => {
            p.push(1);
            p.extend_from_slice(&pg.index.to_le_bytes());
            p.extend_from_slice(&(pg.data.len() as u32).to_le_bytes());
            p.extend_from_slice(&pg.data);
        }
    }
    p
}

/// A cursor over a record payload; every read is bounds-checked.
struct Cursor<'a> {
    b: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Some(h)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes(b.try_into().expect("4")))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| u64::from_le_bytes(b.try_into().expect("8")))
    }
    fn opt(&mut self) -> Option<Option<Vec<u8>>> {
        match self.u8()? {
            0 => Some(None),
            1 => {
                let n = self.u32()? as usize;
                Some(Some(self.take(n)?.to_vec()))
            }
            _ => None,
        }
    }
}

/// The result of replaying the segments.
struct Replayed {
    mem: Mem,
    last_segment: u64,
    last_segment_len: u64,
}

/// How one record read went.
enum Parsed<'a> {
    Record {
        kind: u8,
        payload: &'a [u8],
        next: usize,
    },
    /// Not enough bytes for a header or for the declared body.
    Short,
    /// Header present, body present, checksum wrong (or absurd length).
    Bad,
}

fn parse_at(buf: &[u8], at: usize) -> Parsed<'_> {
    if buf.len() - at < HEADER_BYTES {
        return Parsed::Short;
    }
    let len = u32::from_le_bytes(buf[at..at + 4].try_into().expect("4")) as usize;
    let crc = u32::from_le_bytes(buf[at + 4..at + 8].try_into().expect("4"));
    if len == 0 || len > RECORD_BYTES_MAX {
        return Parsed::Bad;
    }
    let end = at + HEADER_BYTES + len;
    if end > buf.len() {
        return Parsed::Short;
    }
    let body = &buf[at + HEADER_BYTES..end];
    if crc32c::crc32c(body) != crc {
        return Parsed::Bad;
    }
    Parsed::Record { kind: body[0], payload: &body[1..], next: end }
}

/// The offset of the first intact record starting at or after `from`, if any. Only used on the
/// recovery path, after a bad record; a false positive needs a 32-bit checksum to match garbage.
fn valid_record_after(buf: &[u8], from: usize) -> Option<usize> {
    (from..buf.len()).find(|&at| matches!(parse_at(buf, at), Parsed::Record { kind, .. } if (KIND_ENTRY..=KIND_CHECKPOINT).contains(&kind)))
}

const SECTOR_BYTES: usize = 512;

/// Whether the bad record at `from`, followed by a valid one at `to`, is a batch torn over the
/// zeroed-ahead space (see "Zeroed ahead") rather than damage: the segment ends in zeroed-ahead
/// space (it was not closed: a crash), and a whole disk sector in `[from, to)` is zeros, as the
/// writer left it, never overwritten. etcd's WAL decoder applies the same rule to torn writes
/// (`isTornEntry`), with the same trade-off: record data can itself hold a zero sector (a value
/// of zeros), so damage to such a record in the last segment after a crash is taken for a torn
/// write and what follows it is dropped instead of refused; the quorum still holds it.
fn torn_batch(buf: &[u8], from: usize, to: usize) -> bool {
    let zero = |r: std::ops::Range<usize>| buf[r].iter().all(|&b| b == 0);
    let crashed = buf.len() >= SECTOR_BYTES && zero(buf.len() - SECTOR_BYTES..buf.len());
    crashed && (from.div_ceil(SECTOR_BYTES)..to / SECTOR_BYTES).any(|s| zero(s * SECTOR_BYTES..(s + 1) * SECTOR_BYTES))
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

fn replay(dir: &Path, segments: &[u64]) -> Result<Replayed> {
    let mut mem = Mem {
        first: 0,
        slots: VecDeque::new(),
        next_seq: 0,
        cached_bytes: 0,
        evicted_upto: 0,
        vote: None,
        committed: None,
        purged: None,
        failed: None,
    };
    let mut last_len = 0u64;
    for (i, &seg) in segments.iter().enumerate() {
        let is_last = i + 1 == segments.len();
        let path = segment_path(dir, seg);
        let mut buf = Vec::new();
        File::open(&path)?.read_to_end(&mut buf)?;
        let mut at = 0usize;
        let mut first_record = true;
        while at < buf.len() {
            match parse_at(&buf, at) {
                Parsed::Record { kind, payload, next } => {
                    if first_record && kind != KIND_CHECKPOINT {
                        return Err(corrupt(seg, at, "segment does not start with a checkpoint"));
                    }
                    first_record = false;
                    apply_record(&mut mem, seg, at, kind, payload)?;
                    at = next;
                }
                Parsed::Short | Parsed::Bad if is_last && buf[at..].iter().all(|&b| b == 0) => {
                    // The zeroed-ahead space of a log that stopped without closing: its end.
                    break;
                }
                Parsed::Short | Parsed::Bad if is_last => {
                    // A torn write leaves only garbage after it. A valid record anywhere after the
                    // bad one means the damage is in the middle: corruption. (A flipped length
                    // field hides where the next record starts, so look at every offset.) Except
                    // for a batch torn over zeroed-ahead space: a batch overwrites blocks the file
                    // already has, and a crash during its sync can leave an earlier one unwritten
                    // and a later one written.
                    match valid_record_after(&buf, at + 1) {
                        Some(valid) if !torn_batch(&buf, at, valid) => {
                            return Err(corrupt(
                                seg,
                                at,
                                &format!("checksum mismatch before valid records (next valid record at {valid})"),
                            ));
                        }
                        _ => {
                            tracing::warn!(segment = seg, offset = at, "truncating torn tail of the raft log");
                            break;
                        }
                    }
                }
                Parsed::Short | Parsed::Bad => {
                    return Err(corrupt(seg, at, "bad record in a sealed segment"));
                }
            }
        }
        if is_last {
            if (at as u64) < buf.len() as u64 {
                cut_back(&OpenOptions::new().write(true).open(&path)?, at as u64)?;
            }
            last_len = at as u64;
        }
    }
    Ok(Replayed { mem, last_segment: segments.last().copied().unwrap_or(0), last_segment_len: last_len })
}

fn apply_record(mem: &mut Mem, seg: u64, at: usize, kind: u8, payload: &[u8]) -> Result<()> {
    let mut c = Cursor { b: payload };
    let bad = |what: &str| corrupt(seg, at, what);
    match kind {
        KIND_ENTRY => {
            let index = c.u64().ok_or_else(|| bad("short entry"))?;
            let data_off = at + HEADER_BYTES + 1 + 8;
            let len = c.b.len() as u32;
            // An entry at or below the current tail replaces it (a truncation record normally
            // precedes it; this keeps replay robust to that being the torn part).
            if let Some(last) = mem.last_index() {
                if index <= last {
                    mem.truncate_from(index);
                } else if index != last + 1 {
                    return Err(bad(&format!("hole in log: entry {index} after {last}")));
                }
            } else if let Some(p) = &mem.purged {
                if index != p.index + 1 {
                    return Err(bad(&format!("hole in log: entry {index} after purge point {}", p.index)));
                }
            }
            if mem.slots.is_empty() {
                mem.first = index;
            }
            let seq = mem.next_seq;
            mem.next_seq += 1;
            mem.slots.push_back(Slot {
                seq,
                location: Some(Location { segment: seg, offset: data_off as u64, len }),
                data: None,
            });
        }
        KIND_VOTE => mem.vote = Some(c.b.to_vec()),
        KIND_COMMITTED => mem.committed = Some(c.b.to_vec()),
        KIND_TRUNCATE_FROM => {
            let index = c.u64().ok_or_else(|| bad("short truncate"))?;
            mem.truncate_from(index);
        }
        KIND_PURGE => {
            let index = c.u64().ok_or_else(|| bad("short purge"))?;
            mem.purge_upto(index);
            mem.purged = Some(Purged { index, data: c.b.to_vec() });
        }
        KIND_CHECKPOINT => {
            let vote = c.opt().ok_or_else(|| bad("bad checkpoint"))?;
            let committed = c.opt().ok_or_else(|| bad("bad checkpoint"))?;
            let purged = match c.u8().ok_or_else(|| bad("bad checkpoint"))? {
                0 => None,
                1 => {
                    let index = c.u64().ok_or_else(|| bad("bad checkpoint"))?;
                    let n = c.u32().ok_or_else(|| bad("bad checkpoint"))? as usize;
                    Some(Purged { index, data: c.take(n).ok_or_else(|| bad("bad checkpoint"))?.to_vec() })
                }
                _ => return Err(bad("bad checkpoint")),
            };
            // A checkpoint restates what earlier records said; it only adds information when
            // the segments before it were deleted.
            if vote.is_some() {
                mem.vote = vote;
            }
            if committed.is_some() {
                mem.committed = committed;
            }
            if let Some(p) = purged {
                if mem.purged.as_ref().is_none_or(|q| q.index < p.index) {
                    mem.purge_upto(p.index);
                    mem.purged = Some(p);
                }
            }
        }
        other => return Err(bad(&format!("unknown record kind {other}"))),
    }
    Ok(())
}

impl Wal {
    /// Opens the log in `dir` (created if missing), replaying and repairing it.
    pub fn open(dir: &Path, opts: WalOptions) -> Result<Wal> {
        std::fs::create_dir_all(dir)?;
        let segments = list_segments(dir)?;
        let Replayed { mem, last_segment, last_segment_len } = replay(dir, &segments)?;

        let mut readers = Vec::new();
        for &s in &segments {
            readers.push((s, Arc::new(File::open(segment_path(dir, s))?)));
        }
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            opts,
            stats: WalStats::default(),
            mem: Mutex::new(mem),
            readers: Mutex::new(readers),
        });

        let mut writer = Writer {
            shared: shared.clone(),
            segment: 0,
            file: None,
            len: 0,
            zeroed_to: 0,
            segments: segments.iter().map(|&s| (s, None)).collect(),
            buf: Vec::with_capacity(1 << 20),
        };
        if segments.is_empty() {
            writer.rotate()?;
        } else {
            let f = OpenOptions::new().read(true).write(true).open(segment_path(dir, last_segment))?;
            writer.zeroed_to = f.metadata()?.len();
            writer.segment = last_segment;
            writer.file = Some(f);
            writer.len = last_segment_len;
            if last_segment_len == 0 {
                // A crash while a segment was being started can leave it empty (or with only a
                // torn checkpoint, cut away above): give it its checkpoint before any entry.
                writer.start_segment()?;
            }
            writer.recompute_max_indexes();
        }
        let (tx, rx) = mpsc::channel();
        let handle = thread::Builder::new().name("wal-writer".into()).spawn(move || writer.run(rx))?;
        Ok(Wal { shared, tx: Mutex::new(Some(tx)), writer: Mutex::new(Some(handle)) })
    }

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
            Parsed::Record { kind: KIND_ENTRY, payload, .. } => Ok(Bytes::copy_from_slice(&payload[8..])),
            _ => Err(corrupt(loc.segment, rec_off as usize, "entry failed its checksum on read")),
        }
    }

    /// Stops the writer thread after it has written everything queued.
    pub fn close(&self) {
        drop(self.tx.lock().take());
        if let Some(h) = self.writer.lock().take() {
            let _ = h.join();
        }
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

/// The writer thread's state. Only this thread writes files.
struct Writer {
    shared: Arc<Shared>,
    segment: u64,
    file: Option<File>,
    /// Bytes of records in the active segment: where the next record goes.
    len: u64,
    /// The active segment holds zeros from `len` up to here (see "Zeroed ahead").
    zeroed_to: u64,
    /// Segments present, oldest first, with the highest entry index each holds (None if none
    /// or unknown until recomputed).
    segments: VecDeque<(u64, Option<u64>)>,
    buf: Vec<u8>,
}

impl Writer {
    fn recompute_max_indexes(&mut self) {
        let m = self.shared.mem.lock();
        for (i, slot) in m.slots.iter().enumerate() {
            if let Some(loc) = slot.location {
                let index = m.first + i as u64;
                if let Some(s) = self.segments.iter_mut().find(|(s, _)| *s == loc.segment) {
                    s.1 = Some(s.1.map_or(index, |x: u64| x.max(index)));
                }
            }
        }
    }

    /// Writes the buffered records at the end of the active segment, keeping zeros written past
    /// them (see "Zeroed ahead"). Not synced.
    fn write_out(&mut self) -> Result<()> {
        let f = self.file.as_ref().expect("an open segment");
        let end = self.len + self.buf.len() as u64;
        f.write_all_at(&self.buf, self.len)?;
        if end > self.zeroed_to {
            // Past the zeroed space: this write grew the file anyway, so grow it by a whole
            // stretch of zeros now (at least twice this write) and let the next syncs skip the
            // size update.
            static ZEROS: [u8; ZERO_AHEAD_BYTES as usize] = [0; ZERO_AHEAD_BYTES as usize];
            let to = end + ZERO_AHEAD_BYTES.max(2 * self.buf.len() as u64);
            let mut at = end;
            while at < to {
                let n = (to - at).min(ZERO_AHEAD_BYTES);
                f.write_all_at(&ZEROS[..n as usize], at)?;
                at += n;
            }
            self.zeroed_to = to;
        }
        self.len = end;
        self.buf.clear();
        Ok(())
    }

    /// Cuts the active segment back to its last record (dropping the zeroed-ahead space) and
    /// makes it durable. For a segment being sealed, and on close. Synced even with
    /// `unsafe_no_fsync`: only the last segment may end in zeros, and this is rare.
    fn seal(&mut self) -> Result<()> {
        match self.file.take() {
            Some(f) => cut_back(&f, self.len),
            None => Ok(()),
        }
    }

    /// Starts a new segment with a checkpoint of the current state.
    fn rotate(&mut self) -> Result<()> {
        // Sealed (and synced) before the next segment exists, so only the last segment can
        // ever end in zeros.
        self.seal()?;
        let seq = self.segment + 1;
        let path = segment_path(&self.shared.dir, seq);
        let f = OpenOptions::new().create_new(true).read(true).write(true).open(&path)?;
        self.file = Some(f);
        self.segment = seq;
        self.zeroed_to = 0;
        self.start_segment()?;
        self.shared.readers.lock().push((seq, Arc::new(File::open(&path)?)));
        self.segments.push_back((seq, None));
        Ok(())
    }

    /// Writes the checkpoint that opens every segment into the empty active segment, durably.
    fn start_segment(&mut self) -> Result<()> {
        let payload = {
            let m = self.shared.mem.lock();
            checkpoint_payload(&m.vote, &m.committed, &m.purged)
        };
        self.buf.clear();
        encode_record(KIND_CHECKPOINT, &[&payload], &mut self.buf);
        self.len = 0;
        self.write_out()?;
        self.file.as_ref().expect("an open segment").sync_all()?;
        sync_dir(&self.shared.dir)
    }

    fn run(mut self, rx: mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let mut jobs = vec![first];
            while let Ok(j) = rx.try_recv() {
                jobs.push(j);
                if jobs.len() >= 4096 {
                    break;
                }
            }
            let mut dones = Vec::new();
            let result = self.write_batch(jobs, &mut dones);
            match result {
                Ok(()) => {
                    for d in dones {
                        d(Ok(()));
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    tracing::error!(error = %msg, "raft log write failed; the log stops accepting writes");
                    self.shared.mem.lock().failed = Some(msg.clone());
                    for d in dones {
                        d(Err(Error::Failed(msg.clone())));
                    }
                    // Fail everything still queued, then stop.
                    while let Ok(j) = rx.recv() {
                        match j {
                            Job::Entries { done: Some(d), .. } | Job::Vote { done: d, .. } | Job::Sync { done: d } => {
                                d(Err(Error::Failed(msg.clone())))
                            }
                            _ => {}
                        }
                    }
                    return;
                }
            }
        }
        if let Err(e) = self.seal() {
            tracing::warn!(error = %e, "raft log: could not cut the last segment back on close");
        }
    }

    fn write_batch(&mut self, jobs: Vec<Job>, dones: &mut Vec<Done>) -> Result<()> {
        let mut placed: Vec<(u64, u64, Location)> = Vec::new();
        let mut purge_to: Option<u64> = None;
        // Only entries, votes and explicit syncs must be durable before their callbacks run; a
        // committed-position or truncation record rides along with the next sync. (The leader
        // records its commit position after nearly every commit: syncing for it alone doubled
        // the fsyncs.) A purge is synced before the segments it frees are deleted.
        let mut needs_sync = false;
        self.buf.clear();
        for job in jobs {
            needs_sync |= matches!(job, Job::Entries { .. } | Job::Vote { .. } | Job::Sync { .. } | Job::Purge { .. });
            match job {
                Job::Entries { records, done } => {
                    for (index, seq, data) in records {
                        // `len + buf.len()` is where this record lands in the segment.
                        let rec_start = self.len + self.buf.len() as u64;
                        encode_record(KIND_ENTRY, &[&index.to_le_bytes(), &data], &mut self.buf);
                        let loc = Location {
                            segment: self.segment,
                            offset: rec_start + (HEADER_BYTES + 1 + 8) as u64,
                            len: data.len() as u32,
                        };
                        placed.push((index, seq, loc));
                        if let Some(s) = self.segments.back_mut() {
                            s.1 = Some(s.1.map_or(index, |x| x.max(index)));
                        }
                    }
                    dones.extend(done);
                }
                Job::Vote { data, done } => {
                    encode_record(KIND_VOTE, &[&data], &mut self.buf);
                    dones.push(done);
                }
                Job::Committed { data } => encode_record(KIND_COMMITTED, &[&data], &mut self.buf),
                Job::TruncateFrom { index } => {
                    encode_record(KIND_TRUNCATE_FROM, &[&index.to_le_bytes()], &mut self.buf)
                }
                Job::Purge { purged } => {
                    encode_record(KIND_PURGE, &[&purged.index.to_le_bytes(), &purged.data], &mut self.buf);
                    purge_to = Some(purge_to.map_or(purged.index, |p: u64| p.max(purged.index)));
                }
                Job::Sync { done } => dones.push(done),
            }
            if self.buf.len() >= WRITE_CHUNK_BYTES {
                self.write_out()?;
            }
        }
        self.write_out()?;
        let stats = &self.shared.stats;
        if needs_sync {
            if !self.shared.opts.unsafe_no_fsync {
                let t = std::time::Instant::now();
                self.file.as_ref().expect("an open segment").sync_data()?;
                stats.sync_micros.fetch_add(t.elapsed().as_micros() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            stats.syncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        stats.entries.fetch_add(placed.len() as u64, std::sync::atomic::Ordering::Relaxed);
        stats.bytes.fetch_add(placed.iter().map(|p| p.2.len as u64).sum::<u64>(), std::sync::atomic::Ordering::Relaxed);
        self.record_locations(placed);
        if let Some(p) = purge_to {
            self.delete_purged_segments(p)?;
        }
        if self.len >= self.shared.opts.segment_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    fn record_locations(&self, placed: Vec<(u64, u64, Location)>) {
        let mut m = self.shared.mem.lock();
        for (index, seq, loc) in placed {
            if index < m.first {
                continue;
            }
            let pos = (index - m.first) as usize;
            if let Some(slot) = m.slots.get_mut(pos) {
                if slot.seq == seq {
                    slot.location = Some(loc);
                }
            }
        }
        // Evict cached payloads, oldest first, down to the budget.
        let budget = self.shared.opts.cache_bytes;
        while m.cached_bytes > budget && m.evicted_upto < m.slots.len() {
            let i = m.evicted_upto;
            if m.slots[i].location.is_none() {
                break;
            }
            if let Some(d) = m.slots[i].data.take() {
                m.cached_bytes -= d.len();
            }
            m.evicted_upto += 1;
        }
    }

    /// Deletes whole segments that hold nothing but purged entries. The newest segment is
    /// never deleted, and every later segment starts with a checkpoint that carries the vote,
    /// committed and purge state forward.
    fn delete_purged_segments(&mut self, purged: u64) -> Result<()> {
        let mut deleted = false;
        while self.segments.len() > 1 {
            let (seq, max) = self.segments[0];
            if max.is_some_and(|m| m > purged) {
                break;
            }
            std::fs::remove_file(segment_path(&self.shared.dir, seq))?;
            self.shared.readers.lock().retain(|(s, _)| *s != seq);
            self.segments.pop_front();
            deleted = true;
        }
        if deleted {
            sync_dir(&self.shared.dir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::mpsc::channel;

    fn opts() -> WalOptions {
        WalOptions { segment_bytes: 4096, cache_bytes: 1024, unsafe_no_fsync: false }
    }

    fn append_sync(wal: &Wal, entries: Vec<(u64, &[u8])>) {
        let (tx, rx) = channel();
        let entries = entries.into_iter().map(|(i, d)| (i, Bytes::copy_from_slice(d))).collect();
        wal.append(entries, Box::new(move |r| tx.send(r).unwrap())).unwrap();
        rx.recv().unwrap().unwrap();
    }

    fn all(wal: &Wal) -> Vec<(u64, Vec<u8>)> {
        wal.read(0, u64::MAX, usize::MAX).unwrap().into_iter().map(|(i, b)| (i, b.to_vec())).collect()
    }

    fn payload(i: u64) -> Vec<u8> {
        format!("entry-{i}-{}", "x".repeat((i % 50) as usize)).into_bytes()
    }

    #[test]
    fn append_read_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let wal = Wal::open(dir.path(), opts()).unwrap();
            for i in 0..200u64 {
                append_sync(&wal, vec![(i, &payload(i))]);
            }
            let (tx, rx) = channel();
            wal.save_vote(b"vote-1".to_vec(), Box::new(move |r| tx.send(r).unwrap())).unwrap();
            rx.recv().unwrap().unwrap();
            wal.save_committed(b"c-150".to_vec()).unwrap();
            let got = all(&wal);
            assert_eq!(got.len(), 200);
            assert_eq!(got[17], (17, payload(17)));
        }
        let wal = Wal::open(dir.path(), opts()).unwrap();
        let st = wal.state();
        assert_eq!(st.vote, Some(b"vote-1".to_vec()));
        assert_eq!(st.committed, Some(b"c-150".to_vec()));
        assert_eq!((st.first_index, st.last_index), (Some(0), Some(199)));
        let got = all(&wal);
        for (i, (idx, data)) in got.iter().enumerate() {
            assert_eq!(*idx, i as u64);
            assert_eq!(*data, payload(i as u64));
        }
        assert!(list_segments(dir.path()).unwrap().len() > 2, "small segments must have rotated");
    }

    #[test]
    fn truncate_then_overwrite_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let wal = Wal::open(dir.path(), opts()).unwrap();
            append_sync(&wal, (0..10).map(|i| (i, &b"old"[..])).collect());
            wal.truncate_from(6).unwrap();
            append_sync(&wal, vec![(6, b"new6"), (7, b"new7")]);
            assert_eq!(all(&wal).len(), 8);
        }
        let wal = Wal::open(dir.path(), opts()).unwrap();
        let got = all(&wal);
        assert_eq!(got.len(), 8);
        assert_eq!(got[5].1, b"old");
        assert_eq!(got[6].1, b"new6");
        assert_eq!(got[7].1, b"new7");
    }

    #[test]
    fn purge_deletes_old_segments_and_keeps_state() {
        let dir = tempfile::tempdir().unwrap();
        {
            let wal = Wal::open(dir.path(), opts()).unwrap();
            let (tx, rx) = channel();
            wal.save_vote(b"v".to_vec(), Box::new(move |r| tx.send(r).unwrap())).unwrap();
            rx.recv().unwrap().unwrap();
            for i in 0..300u64 {
                append_sync(&wal, vec![(i, &payload(i))]);
            }
            let before = list_segments(dir.path()).unwrap().len();
            wal.purge(250, b"p250".to_vec()).unwrap();
            let (tx, rx) = channel();
            wal.sync(Box::new(move |r| tx.send(r).unwrap())).unwrap();
            rx.recv().unwrap().unwrap();
            let after = list_segments(dir.path()).unwrap().len();
            assert!(after < before, "segments {before} -> {after}");
        }
        let wal = Wal::open(dir.path(), opts()).unwrap();
        let st = wal.state();
        assert_eq!(st.vote, Some(b"v".to_vec()), "vote carried by checkpoints");
        assert_eq!(st.purged, Some(Purged { index: 250, data: b"p250".to_vec() }));
        assert_eq!((st.first_index, st.last_index), (Some(251), Some(299)));
        append_sync(&wal, vec![(300, b"next")]);
    }

    #[test]
    fn purge_beyond_last_then_append_after_it() {
        // A snapshot install purges past the end of the log; appends resume after it.
        let dir = tempfile::tempdir().unwrap();
        {
            let wal = Wal::open(dir.path(), opts()).unwrap();
            append_sync(&wal, vec![(0, b"a"), (1, b"b")]);
            wal.purge(99, b"p99".to_vec()).unwrap();
            append_sync(&wal, vec![(100, b"c")]);
        }
        let wal = Wal::open(dir.path(), opts()).unwrap();
        assert_eq!(all(&wal), vec![(100, b"c".to_vec())]);
    }

    #[test]
    fn evicted_entries_are_read_back_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), WalOptions { cache_bytes: 100, ..opts() }).unwrap();
        for i in 0..100u64 {
            append_sync(&wal, vec![(i, &payload(i))]);
        }
        assert!(wal.shared.mem.lock().cached_bytes <= 100 + 100);
        let got = all(&wal);
        assert_eq!(got.len(), 100);
        for (i, d) in got {
            assert_eq!(d, payload(i));
        }
    }

    #[test]
    fn read_respects_byte_budget_but_returns_at_least_one() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), opts()).unwrap();
        append_sync(&wal, (0..10).map(|i| (i, &[7u8; 100][..])).collect());
        assert_eq!(wal.read(0, 10, 250).unwrap().len(), 2);
        assert_eq!(wal.read(0, 10, 1).unwrap().len(), 1);
        assert_eq!(wal.read(3, 5, usize::MAX).unwrap().len(), 2);
    }

    /// A log in `dir` holding entries `0..n` (`payload(i)` each), each appended and synced.
    fn appended(dir: &Path, opts: WalOptions, n: u64) -> Wal {
        let wal = Wal::open(dir, opts).unwrap();
        for i in 0..n {
            append_sync(&wal, vec![(i, &payload(i))]);
        }
        wal
    }

    /// Writes `bytes` followed by the zeroed-ahead space a crash leaves at the end of a segment.
    fn write_crashed(path: &Path, mut bytes: Vec<u8>) {
        bytes.resize(bytes.len() + ZERO_AHEAD_BYTES as usize, 0);
        std::fs::write(path, &bytes).unwrap();
    }

    fn last_segment(dir: &Path) -> PathBuf {
        segment_path(dir, *list_segments(dir).unwrap().last().unwrap())
    }

    #[test]
    fn torn_tail_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        {
            let wal = Wal::open(dir.path(), WalOptions { segment_bytes: 1 << 30, ..opts() }).unwrap();
            for i in 0..5u64 {
                append_sync(&wal, vec![(i, b"data")]);
            }
        }
        // Simulate a crash in the middle of writing a sixth record.
        let path = last_segment(dir.path());
        let mut rec = Vec::new();
        encode_record(KIND_ENTRY, &[&5u64.to_le_bytes(), b"data"], &mut rec);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&rec[..rec.len() - 3]).unwrap();
        drop(f);
        let len_before = std::fs::metadata(&path).unwrap().len();
        let wal = Wal::open(dir.path(), opts()).unwrap();
        assert_eq!(wal.state().last_index, Some(4));
        assert!(std::fs::metadata(&path).unwrap().len() < len_before);
        append_sync(&wal, vec![(5, b"again")]);
        drop(wal);
        let wal = Wal::open(dir.path(), opts()).unwrap();
        assert_eq!(all(&wal).last().unwrap(), &(5, b"again".to_vec()));
    }

    #[test]
    fn zeroed_ahead_space_is_the_end_of_the_log_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let path;
        {
            let _wal = appended(dir.path(), WalOptions { segment_bytes: 1 << 30, ..opts() }, 5);
            // While the log is open, the space after its records is already written.
            path = last_segment(dir.path());
            let on_disk = std::fs::read(&path).unwrap();
            assert!(on_disk.len() as u64 >= ZERO_AHEAD_BYTES, "{} bytes", on_disk.len());
            assert_eq!(on_disk.last(), Some(&0));
        }
        // A clean close cuts the segment back to its records.
        let records_len = std::fs::metadata(&path).unwrap().len();
        assert!(records_len < 4096, "{records_len}");
        // A crash leaves the zeros: the log ends at its last record, nothing is lost or refused.
        write_crashed(&path, std::fs::read(&path).unwrap());
        {
            let wal = Wal::open(dir.path(), opts()).unwrap();
            assert_eq!(all(&wal).len(), 5);
            append_sync(&wal, vec![(5, b"more")]);
        }
        let wal = Wal::open(dir.path(), opts()).unwrap();
        assert_eq!(all(&wal).last().unwrap(), &(5, b"more".to_vec()));
        drop(wal);
        // A record torn inside the zeroed space is a torn tail; damage before it is corruption.
        let mut bytes = std::fs::read(&path).unwrap();
        let end = bytes.len();
        let mut rec = Vec::new();
        encode_record(KIND_ENTRY, &[&6u64.to_le_bytes(), b"torn"], &mut rec);
        bytes.extend_from_slice(&rec[..rec.len() - 2]);
        write_crashed(&path, bytes);
        {
            let wal = Wal::open(dir.path(), opts()).unwrap();
            assert_eq!(wal.state().last_index, Some(5));
        }
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[end / 2] ^= 0xff;
        write_crashed(&path, bytes);
        assert!(matches!(Wal::open(dir.path(), opts()), Err(Error::Corruption(_))));
    }

    #[test]
    fn a_segment_left_empty_by_a_crash_gets_its_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        drop(appended(dir.path(), opts(), 100));
        // A crash right after a new segment was created, before its checkpoint reached the disk.
        let last = last_segment(dir.path());
        let kept = {
            std::fs::OpenOptions::new().write(true).open(&last).unwrap().set_len(0).unwrap();
            let wal = Wal::open(dir.path(), opts()).unwrap();
            let kept = wal.state().last_index.unwrap();
            append_sync(&wal, vec![(kept + 1, b"after")]);
            kept
        };
        let wal = Wal::open(dir.path(), opts()).unwrap();
        assert_eq!(wal.state().last_index, Some(kept + 1));
        assert_eq!(all(&wal).last().unwrap(), &(kept + 1, b"after".to_vec()));
    }

    #[test]
    fn a_batch_torn_over_zeroed_space_is_a_torn_tail_not_corruption() {
        let dir = tempfile::tempdir().unwrap();
        drop(appended(dir.path(), WalOptions { segment_bytes: 1 << 30, ..opts() }, 5));
        let path = last_segment(dir.path());
        let clean = std::fs::read(&path).unwrap();
        let end = clean.len();
        // The next batch, never synced: two 5,000-byte entries over the zeroed-ahead space, of
        // which the disk kept the later blocks but not the first.
        let mut batch = Vec::new();
        encode_record(KIND_ENTRY, &[&5u64.to_le_bytes(), &[7u8; 5000]], &mut batch);
        encode_record(KIND_ENTRY, &[&6u64.to_le_bytes(), &[8u8; 5000]], &mut batch);
        let torn = |hole: std::ops::Range<usize>| {
            let mut bytes = clean.clone();
            let mut b = batch.clone();
            b[hole].fill(0);
            bytes.extend_from_slice(&b);
            write_crashed(&path, bytes);
        };
        // The block holding the batch's start was not written: the log ends at entry 4.
        torn(0..4096 - end % 4096);
        assert_eq!(Wal::open(dir.path(), opts()).unwrap().state().last_index, Some(4));
        // A block in the middle of the first record was not written: the same.
        torn(4096 - end % 4096 + 512..4096 - end % 4096 + 1024);
        assert_eq!(Wal::open(dir.path(), opts()).unwrap().state().last_index, Some(4));
        // No zero sector between the bad record and a valid one: corruption, as before.
        let mut damaged = clean.clone();
        let mut b = batch.clone();
        b[100] ^= 0xff;
        damaged.extend_from_slice(&b);
        write_crashed(&path, damaged);
        assert!(matches!(Wal::open(dir.path(), opts()), Err(Error::Corruption(_))));
        // A zero sector, but a segment that was closed (no zeroed-ahead space at its end): not
        // a crash, so corruption.
        let mut b = batch.clone();
        b[4096 - end % 4096 + 512..4096 - end % 4096 + 1024].fill(0);
        let mut closed = clean.clone();
        closed.extend_from_slice(&b);
        std::fs::write(&path, &closed).unwrap();
        assert!(matches!(Wal::open(dir.path(), opts()), Err(Error::Corruption(_))));
    }

    #[test]
    fn sealed_segments_end_at_their_last_record() {
        let dir = tempfile::tempdir().unwrap();
        let wal = appended(dir.path(), opts(), 200);
        let segs = list_segments(dir.path()).unwrap();
        assert!(segs.len() >= 2);
        for &seg in &segs[..segs.len() - 1] {
            let bytes = std::fs::read(segment_path(dir.path(), seg)).unwrap();
            assert_ne!(bytes.last(), Some(&0), "segment {seg} ends in zeros");
        }
        drop(wal);
        assert_eq!(all(&Wal::open(dir.path(), opts()).unwrap()).len(), 200);
    }

    #[test]
    fn garbled_last_record_is_torn_but_garbled_middle_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        {
            let wal = Wal::open(dir.path(), WalOptions { segment_bytes: 1 << 30, ..opts() }).unwrap();
            for i in 0..5u64 {
                append_sync(&wal, vec![(i, b"data")]);
            }
        }
        let path = last_segment(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        // Flip a byte inside the last record: torn write, repaired.
        bytes[n - 2] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        {
            let wal = Wal::open(dir.path(), opts()).unwrap();
            assert_eq!(wal.state().last_index, Some(3));
        }
        // Now flip a byte in the middle: valid records follow, so it is corruption.
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        match Wal::open(dir.path(), opts()) {
            Err(Error::Corruption(msg)) => assert!(msg.contains("checksum"), "{msg}"),
            Err(e) => panic!("expected corruption, got {e}"),
            Ok(_) => panic!("expected corruption, got a log"),
        }
    }

    #[test]
    fn a_flipped_length_field_in_the_middle_is_corruption_not_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let offsets = {
            let wal = Wal::open(dir.path(), WalOptions { segment_bytes: 1 << 30, ..opts() }).unwrap();
            for i in 0..20u64 {
                append_sync(&wal, vec![(i, &payload(i))]);
            }
            let m = wal.shared.mem.lock();
            m.slots.iter().map(|s| s.location.unwrap().offset).collect::<Vec<_>>()
        };
        let path = last_segment(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        // The length field of entry 10's record: 8 + 1 + 8 bytes before its payload.
        let rec = offsets[10] as usize - (HEADER_BYTES + 1 + 8);
        bytes[rec + 2] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        match Wal::open(dir.path(), opts()) {
            Err(Error::Corruption(msg)) => assert!(msg.contains("before valid records"), "{msg}"),
            Err(e) => panic!("expected corruption, got {e}"),
            Ok(w) => panic!("expected corruption, got a log ending at {:?}", w.state().last_index),
        }
    }

    #[test]
    fn corruption_in_sealed_segment_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let wal = Wal::open(dir.path(), opts()).unwrap();
            for i in 0..200u64 {
                append_sync(&wal, vec![(i, &payload(i))]);
            }
        }
        let segs = list_segments(dir.path()).unwrap();
        assert!(segs.len() >= 2);
        let path = segment_path(dir.path(), segs[0]);
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 0x55;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(Wal::open(dir.path(), opts()), Err(Error::Corruption(_))));
    }

    #[test]
    fn group_commit_batches_concurrent_appends() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Arc::new(Wal::open(dir.path(), WalOptions { segment_bytes: 1 << 30, ..opts() }).unwrap());
        let (tx, rx) = channel();
        for i in 0..1000u64 {
            let tx = tx.clone();
            wal.append(vec![(i, Bytes::from_static(b"x"))], Box::new(move |r| tx.send((i, r)).unwrap())).unwrap();
        }
        drop(tx);
        let mut got: Vec<u64> = rx
            .iter()
            .map(|(i, r)| {
                r.unwrap();
                i
            })
            .collect();
        got.sort_unstable();
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
    }
}
