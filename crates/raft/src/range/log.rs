//! One log for every range replica on a node: TiKV's `raft-engine`, written by one thread.
//!
//! Appends, votes, truncations and purges of every group go through one queue to one writer
//! thread, which merges everything queued into one `LogBatch`, writes it and fsyncs once, then
//! fires each operation's callback: one fsync serves every group that had something to append
//! (group commit across ranges), and a group's operations reach the log in the order they were
//! made. A failed write or fsync is never retried: the log refuses every later operation and
//! the node must stop (after a failed fsync the page cache cannot be trusted).
//!
//! In the engine, each group's entries are `BytesValue` messages holding the entry's index
//! (8 bytes, big-endian) and the postcard-encoded openraft entry; the vote, the tail marker and
//! the purge point are the group's keys.

use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use parking_lot::Mutex;
use protobuf::well_known_types::BytesValue;
use raft_engine::{Command, LogBatch, MessageExt};

use crate::range::fs::LogFs;
use crate::range::logcheck;

/// raft-engine over the power-cut layer's files ([`LogFs`]).
type LogEngine = raft_engine::Engine<LogFs>;

use crate::log_store::bounds;
use crate::range::types::{Entry, LogId, RangeConfig, RangeId, Vote};
use crate::recent::Recent;

/// Largest batch of entries handed to replication in one read.
const READ_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Encoded bytes of one group's newest entries kept decoded.
const RECENT_BYTES_MAX: usize = 1024 * 1024;
/// Size of one log file: past it, raft-engine starts the next.
const FILE_BYTES: u64 = 64 * 1024 * 1024;
/// Bytes the writer merges into one write (and one fsync) at most.
const WRITE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Bytes of operations queued for the writer at most; a full queue makes callers wait (an
/// async wait: no runtime thread is held). Each operation counts at least
/// [`QUEUED_OP_BYTES_MIN`], which bounds their count too.
const QUEUE_BYTES_MAX: usize = 64 * 1024 * 1024;
const QUEUED_OP_BYTES_MIN: usize = 1024;

const KEY_VOTE: &[u8] = b"vote";
const KEY_PURGED: &[u8] = b"purged";
/// Entries after this index are truncated (raft-engine drops a tail only when it is
/// overwritten; until the next append, the marker hides it).
const KEY_TAIL: &[u8] = b"tail";

/// How raft-engine learns an entry's index.
struct Entries;

impl MessageExt for Entries {
    type Entry = BytesValue;

    fn index(e: &BytesValue) -> u64 {
        e.value.get(..8).map_or(0, |b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
    }
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("raft types serialize")
}

fn decode<T: serde::de::DeserializeOwned>(b: &[u8], what: &str) -> io::Result<T> {
    postcard::from_bytes(b)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("range log: cannot decode {what}: {e}")))
}

fn decode_entry(group: RangeId, index: u64, v: &BytesValue) -> io::Result<Entry> {
    let body = v.value.get(8..).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, format!("range log: range {group} entry {index} is too short"))
    })?;
    let e: Entry = decode(body, &format!("range {group} entry {index}"))?;
    if e.log_id.index != index {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "range log: the entry stored at index {index} of range {group} says it is entry {}",
                e.log_id.index
            ),
        ));
    }
    Ok(e)
}

type Done = Box<dyn FnOnce(io::Result<()>) + Send>;

struct Job {
    batch: LogBatch,
    done: Done,
    /// Its room in the queue, given back once it is written.
    _room: tokio::sync::OwnedSemaphorePermit,
}

/// The node's one Raft log for all its range replicas.
pub struct SharedLog {
    engine: Arc<LogEngine>,
    /// `None` once closed.
    queue: Mutex<Option<std::sync::mpsc::Sender<Job>>>,
    /// Bytes the queue has room for ([`QUEUE_BYTES_MAX`]).
    room: Arc<tokio::sync::Semaphore>,
    room_max: usize,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    failed: Arc<AtomicBool>,
    stats: Arc<LogStats>,
    /// The writer takes this before each write: a test holds it to keep operations queued.
    #[cfg_attr(not(test), allow(dead_code))]
    hold: Arc<Mutex<()>>,
}

/// What the writer has done: operations queued by groups, and the writes (each one fsync)
/// that carried them.
#[derive(Debug, Default)]
pub struct LogStats {
    pub operations: AtomicU64,
    pub writes: AtomicU64,
}

impl SharedLog {
    /// Opens (or creates) the log in `dir`. `sync` false is the unsafe no-fsync mode.
    pub fn open(dir: &Path, sync: bool) -> io::Result<Arc<SharedLog>> {
        SharedLog::open_with(dir, sync, LogFs::default(), QUEUE_BYTES_MAX, FILE_BYTES)
    }

    /// [`Self::open`] with its own file layer, queue room and file size (tests).
    fn open_with(dir: &Path, sync: bool, fs: LogFs, room_max: usize, file_bytes: u64) -> io::Result<Arc<SharedLog>> {
        std::fs::create_dir_all(dir)?;
        // Damage is told from a torn tail only where each write is synced before the next one
        // starts: a log about to be written in the unsafe no-fsync mode is marked so first.
        let started = std::time::Instant::now();
        let checked = logcheck::check(dir)?;
        let check_time = started.elapsed();
        if !sync {
            logcheck::mark_unsynced(dir)?;
        }
        let cfg = raft_engine::Config {
            dir: dir.display().to_string(),
            // A torn tail (a write cut by a crash) is dropped; damage raft-engine would take
            // for one is refused before it opens the files (`logcheck`).
            recovery_mode: raft_engine::RecoveryMode::TolerateTailCorruption,
            target_file_size: raft_engine::ReadableSize(file_bytes),
            purge_threshold: raft_engine::ReadableSize::gb(1),
            ..Default::default()
        };
        let opening = std::time::Instant::now();
        let engine = Arc::new(
            raft_engine::Engine::open_with_file_system(cfg, Arc::new(fs))
                .map_err(|e| io_err(format!("range log in {}: {e}", dir.display())))?,
        );
        tracing::info!(
            dir = %dir.display(),
            files = checked.files,
            bytes = checked.bytes,
            check_ms = check_time.as_millis() as u64,
            open_ms = opening.elapsed().as_millis() as u64,
            "range log checked and opened",
        );
        if sync {
            logcheck::clear_unsynced(dir)?;
            // raft-engine does not sync the directory after it creates the first file: the
            // files' names are made durable here, and the log directory's own in its parent.
            std::fs::File::open(dir)?.sync_all()?;
            if let Some(parent) = dir.parent() {
                std::fs::File::open(parent)?.sync_all()?;
            }
        }
        let (queue, rx) = std::sync::mpsc::channel::<Job>();
        let failed = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(LogStats::default());
        let hold = Arc::new(Mutex::new(()));
        let (e, f, st, h) = (engine.clone(), failed.clone(), stats.clone(), hold.clone());
        let w = std::thread::Builder::new().name("range-log".into()).spawn(move || writer(e, rx, f, st, h, sync))?;
        Ok(Arc::new(SharedLog {
            engine,
            queue: Mutex::new(Some(queue)),
            room: Arc::new(tokio::sync::Semaphore::new(room_max)),
            room_max,
            writer: Mutex::new(Some(w)),
            failed,
            stats,
            hold,
        }))
    }

    /// Stops the writer once everything queued is written; later operations are refused.
    pub fn close(&self) {
        self.room.close();
        drop(self.queue.lock().take());
        if let Some(w) = self.writer.lock().take() {
            let _ = w.join();
        }
    }

    /// Waits until the queue has room for an operation of `bytes` (one larger than the whole
    /// queue waits for it to be empty).
    async fn room_for(&self, bytes: usize) -> io::Result<tokio::sync::OwnedSemaphorePermit> {
        let bytes = bytes.max(QUEUED_OP_BYTES_MIN).min(self.room_max);
        self.room
            .clone()
            .acquire_many_owned(u32::try_from(bytes).unwrap_or(u32::MAX))
            .await
            .map_err(|_| io_err("range log: closed"))
    }

    /// Bytes of operations queued for the writer or being written.
    pub fn queued_bytes(&self) -> u64 {
        self.room_max.saturating_sub(self.room.available_permits()) as u64
    }

    /// Queues `batch` in the room taken for it; `done` runs once it is durable (or failed).
    fn submit(&self, batch: LogBatch, done: Done, room: tokio::sync::OwnedSemaphorePermit) -> io::Result<()> {
        if self.failed.load(Ordering::Acquire) {
            return Err(io_err("range log: an earlier write or fsync failed; the node must restart"));
        }
        let q = self.queue.lock().clone().ok_or_else(|| io_err("range log: closed"))?;
        q.send(Job { batch, done, _room: room }).map_err(|_| io_err("range log: the writer has stopped"))
    }

    /// Queues `batch` and waits until it is durable.
    async fn write(&self, batch: LogBatch) -> io::Result<()> {
        let room = self.room_for(batch.approximate_size()).await?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(
            batch,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
            room,
        )?;
        rx.await.map_err(|_| io_err("range log: the writer has stopped"))?
    }

    /// Removes everything group `group` holds in the log (its replica left this node).
    pub async fn clean(&self, group: RangeId) -> io::Result<()> {
        let mut b = LogBatch::default();
        b.add_command(group, Command::Clean);
        self.write(b).await
    }

    /// Removes log files every group has purged past. Call now and then.
    pub fn purge_files(&self) -> io::Result<Vec<RangeId>> {
        self.engine.purge_expired_files().map_err(io_err)
    }

    pub fn stats(&self) -> &LogStats {
        &self.stats
    }

    /// Bytes of log files on disk.
    pub fn size_bytes(&self) -> u64 {
        self.engine.get_used_size() as u64
    }

    /// The groups the log holds anything for.
    pub fn groups(&self) -> Vec<RangeId> {
        self.engine.raft_groups()
    }

    /// Whether a write or fsync has failed (the node must stop).
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }
}

/// The writer thread: merges queued batches, writes and fsyncs once, answers each.
fn writer(
    engine: Arc<LogEngine>,
    rx: std::sync::mpsc::Receiver<Job>,
    failed: Arc<AtomicBool>,
    stats: Arc<LogStats>,
    hold: Arc<Mutex<()>>,
    sync: bool,
) {
    while let Ok(first) = rx.recv() {
        let _held = hold.lock();
        let mut jobs = vec![(first.done, first._room)];
        let mut batch = first.batch;
        let mut merge_err = None;
        while batch.approximate_size() < WRITE_BYTES_MAX {
            match rx.try_recv() {
                Ok(mut j) => {
                    if let Err(e) = batch.merge(&mut j.batch) {
                        merge_err = Some(io_err(e));
                    }
                    jobs.push((j.done, j._room));
                }
                Err(_) => break,
            }
        }
        let r = if failed.load(Ordering::Acquire) {
            Err(io_err("range log: an earlier write or fsync failed; the node must restart"))
        } else if let Some(e) = merge_err {
            Err(e)
        } else if batch.is_empty() {
            Ok(())
        } else {
            stats.writes.fetch_add(1, Ordering::Relaxed);
            stats.operations.fetch_add(jobs.len() as u64, Ordering::Relaxed);
            // raft-engine panics where an fsync fails (its page cache cannot be trusted
            // then): that is a failed write too, answered as one, not a writer gone silent.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.write(&mut batch, sync)))
                .unwrap_or_else(|panic| {
                    Err(raft_engine::Error::Other(
                        format!("the log's write panicked: {}", cairn_storage::panic_text(&*panic)).into(),
                    ))
                })
                .map(|_| ())
                .map_err(io_err)
        };
        if let Err(e) = &r {
            if !failed.swap(true, Ordering::AcqRel) {
                tracing::error!(error = %e, "range log write failed; every later write is refused");
            }
        }
        // Each job's room is given back before its answer (the write is over).
        for (done, room) in jobs {
            drop(room);
            done(r.as_ref().map(|_| ()).map_err(io_err));
        }
    }
    if failed.load(Ordering::Acquire) {
        // raft-engine's drop syncs its files again, which panics on the failed disk, and a
        // second panic while unwinding aborts the process: the engine is left as it is (the
        // node stops anyway).
        std::mem::forget(engine);
    }
}

/// One range's view of the [`SharedLog`]: openraft's log storage for that group.
#[derive(Clone)]
pub struct RangeLog {
    group: RangeId,
    log: Arc<SharedLog>,
    recent: Arc<Mutex<Recent<RangeConfig>>>,
    /// The index the next append continues at, counting appends still queued for the writer
    /// (the engine only knows what has been written). `None` until first needed.
    next: Arc<Mutex<Option<u64>>>,
}

impl RangeLog {
    pub fn new(log: Arc<SharedLog>, group: RangeId) -> Self {
        RangeLog {
            group,
            log,
            recent: Arc::new(Mutex::new(Recent::new(RECENT_BYTES_MAX))),
            next: Arc::new(Mutex::new(None)),
        }
    }

    /// Called at start with the state machine's applied log id; makes the log continue that
    /// state.
    ///
    /// - An empty log with no purge point starts after `applied` (as if purged up to it), so
    ///   the state covering it is never replayed from entries the log does not have: a
    ///   replica that needs them gets a snapshot.
    /// - A log whose first entry is past its purge point is purged up to `applied` when the
    ///   state holds every entry missing in between: openraft reads every entry after the
    ///   purge point at start, and the range would not open. (An append past a gap, after a
    ///   snapshot install, with the purge that follows it not on disk, would leave such a log;
    ///   openraft orders that purge before the next append, so it is not expected. The state
    ///   on disk is durable here: a repair drops only entries it holds.)
    /// - Any other log is left alone.
    pub async fn seed(&self, applied: LogId) -> io::Result<()> {
        self.log.write(LogBatch::default()).await?;
        let purged: Option<LogId> = self.get_key(KEY_PURGED, "the purge point")?;
        let mut b = LogBatch::default();
        match self.engine_span()? {
            None if purged.is_none() => {}
            Some((first, _)) if purged.map_or(0, |p| p.index + 1) < first => {
                if applied.index + 1 < first {
                    return Err(io_err(format!(
                        "range log: range {} holds entries from {first} on, its purge point is {} and its \
                         state applied only up to {}: the entries between are lost",
                        self.group,
                        purged.map_or("none".to_string(), |p| p.index.to_string()),
                        applied.index
                    )));
                }
                tracing::warn!(
                    range = self.group,
                    first,
                    purged = ?purged.map(|p| p.index),
                    applied = applied.index,
                    "range log: entries missing between the purge point and the first entry; purged up to the applied state"
                );
                b.add_command(self.group, Command::Compact { index: applied.index + 1 });
            }
            _ => return Ok(()),
        }
        b.put(self.group, KEY_PURGED.to_vec(), encode(&applied)).map_err(io_err)?;
        self.log.write(b).await?;
        *self.next.lock() = Some(self.next_from_engine()?);
        Ok(())
    }

    /// The index after the log's last entry, or after its purge point when it holds none.
    fn next_from_engine(&self) -> io::Result<u64> {
        if let Some((_, end)) = self.engine_span()? {
            return Ok(end);
        }
        let purged: Option<LogId> = self.get_key(KEY_PURGED, "the purge point")?;
        Ok(purged.map_or(0, |p| p.index + 1))
    }

    fn get_key<T: serde::de::DeserializeOwned>(&self, key: &[u8], what: &str) -> io::Result<Option<T>> {
        self.log.engine.get(self.group, key).map(|b| decode(&b, what)).transpose()
    }

    /// The index after the last entry the engine holds for this group, honouring the tail
    /// marker (`None`: no entries).
    fn engine_span(&self) -> io::Result<Option<(u64, u64)>> {
        let e = &self.log.engine;
        let (Some(first), Some(last)) = (e.first_index(self.group), e.last_index(self.group)) else {
            return Ok(None);
        };
        // The marker holds the last index kept (`Some(None)`: none).
        let tail: Option<Option<u64>> = self.get_key(KEY_TAIL, "the tail marker")?;
        let end = match tail {
            Some(Some(t)) => last.min(t).saturating_add(1),
            Some(None) => first,
            None => last + 1,
        };
        Ok((end > first).then_some((first, end)))
    }

    async fn read(&self, start: u64, end: u64, max_bytes: usize) -> io::Result<Vec<Entry>> {
        if let Some(entries) = self.recent.lock().get(start, end, max_bytes) {
            return Ok(entries);
        }
        // Entries queued but not yet written are in `recent`, which may not reach back to
        // `start` (after a restart it holds only what was appended since). When the engine does
        // not yet hold every appended entry of [start, end), wait for the writer once (an empty
        // write is a barrier) and read the engine alone: a read must never stop short of an
        // appended entry, or openraft applies a shorter batch than it committed.
        let appended = self.next.lock().unwrap_or(0);
        let written = self.engine_span()?.map_or(0, |(_, e)| e);
        if written < end.min(appended) {
            self.log.write(LogBatch::default()).await?;
        }
        self.read_engine(start, end, max_bytes)
    }

    /// The entries of [start, end) the engine holds (fewer when `max_bytes` is reached).
    fn read_engine(&self, start: u64, end: u64, max_bytes: usize) -> io::Result<Vec<Entry>> {
        let Some((first, last_end)) = self.engine_span()? else {
            return Ok(vec![]);
        };
        let start = start.max(first);
        let end = end.min(last_end);
        if start >= end {
            return Ok(vec![]);
        }
        let mut raw = Vec::new();
        self.log
            .engine
            .fetch_entries_to::<Entries>(self.group, start, end, Some(max_bytes), &mut raw)
            .map_err(io_err)?;
        raw.iter().enumerate().map(|(i, v)| decode_entry(self.group, start + i as u64, v)).collect::<io::Result<_>>()
    }
}

impl RaftLogReader<RangeConfig> for RangeLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (start, end) = bounds(range);
        self.read(start, end, usize::MAX).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.get_key(KEY_VOTE, "the vote")
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, io::Error> {
        self.read(start, end, READ_BYTES_MAX).await
    }
}

impl RaftLogStorage<RangeConfig> for RangeLog {
    type LogReader = RangeLog;

    async fn get_log_state(&mut self) -> Result<openraft::storage::LogState<RangeConfig>, io::Error> {
        // Whatever is queued first.
        self.log.write(LogBatch::default()).await?;
        let last_purged_log_id: Option<LogId> = self.get_key(KEY_PURGED, "the purge point")?;
        let last_log_id = match self.engine_span()? {
            Some((_, end)) => {
                let last = self.read_engine(end - 1, end, usize::MAX)?;
                Some(last.into_iter().next().ok_or_else(|| io_err("range log: the last entry is missing"))?.log_id)
            }
            None => last_purged_log_id,
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let mut b = LogBatch::default();
        b.put(self.group, KEY_VOTE.to_vec(), encode(vote)).map_err(io_err)?;
        self.log.write(b).await
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<RangeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let Some(first_new) = entries.first().map(|e| e.log_id.index) else {
            callback.io_completed(Ok(()));
            return Ok(());
        };
        let raw: Vec<BytesValue> = entries
            .iter()
            .map(|e| {
                let mut value = e.log_id.index.to_be_bytes().to_vec();
                value.extend_from_slice(&encode(e));
                BytesValue { value, ..Default::default() }
            })
            .collect();
        let lens: Vec<usize> = raw.iter().map(|v| v.value.len()).collect();
        // Room first, waiting (not blocking) while the queue is full; nothing of this group's
        // is queued meanwhile (openraft makes its log calls one at a time).
        let room = self.log.room_for(lens.iter().sum()).await?;
        let mut b = LogBatch::default();
        // raft-engine panics on a hole and on overwriting purged entries; openraft never asks
        // for either, and a log that would is refused here rather than crash the node.
        // Purges are awaited, so the engine's first index is current.
        if let Some(first) = self.log.engine.first_index(self.group) {
            if first_new < first {
                return Err(io_err(format!(
                    "range log: range {} appends entry {first_new} below its first entry {first}",
                    self.group
                )));
            }
        }
        let mut next = self.next.lock();
        let expected = match *next {
            Some(n) => n,
            None => self.next_from_engine()?,
        };
        if first_new > expected {
            // Past a gap (a snapshot was installed): what is held is obsolete.
            b.add_command(self.group, Command::Compact { index: first_new });
        }
        b.add_entries::<Entries>(self.group, &raw).map_err(io_err)?;
        b.delete(self.group, KEY_TAIL.to_vec());
        // Under the copy's lock: the queue first (it may refuse), then the copy.
        let mut recent = self.recent.lock();
        self.log.submit(b, Box::new(move |r| callback.io_completed(r)), room)?;
        *next = Some(first_new + lens.len() as u64);
        for (e, len) in entries.into_iter().zip(lens) {
            recent.push(e, len);
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let keep = last_log_id.map(|l| l.index);
        self.recent.lock().truncate_from(keep.map_or(0, |k| k + 1));
        {
            let mut next = self.next.lock();
            let n = match *next {
                Some(n) => n,
                None => self.next_from_engine()?,
            };
            *next = Some(n.min(keep.map_or(0, |k| k + 1)));
        }
        let mut b = LogBatch::default();
        b.put(self.group, KEY_TAIL.to_vec(), encode(&keep)).map_err(io_err)?;
        self.log.write(b).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.recent.lock().purge_upto(log_id.index);
        {
            let mut next = self.next.lock();
            let n = match *next {
                Some(n) => n,
                None => self.next_from_engine()?,
            };
            *next = Some(n.max(log_id.index + 1));
        }
        let mut b = LogBatch::default();
        b.put(self.group, KEY_PURGED.to_vec(), encode(&log_id)).map_err(io_err)?;
        b.add_command(self.group, Command::Compact { index: log_id.index + 1 });
        self.log.write(b).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::entry::RaftEntry;

    fn entry(index: u64, payload: usize) -> Entry {
        let lid = LogId::new(openraft::impls::leader_id_adv::LeaderId { term: 1, node_id: 1 }, index);
        Entry::new_normal(lid, crate::range::RangeOp::data(0, 0, vec![index as u8; payload]))
    }

    /// The log's files go through the power-cut layer: what it synced survives the loss of
    /// the process's unsynced writes, and in the unsafe no-fsync mode nothing does. (With
    /// raft-engine's own file system, the page cache kept unsynced writes: a simulated power
    /// cut lost nothing of the data tier's log, and a node that never synced it looked safe.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unsynced_log_writes_are_lost_in_a_power_cut() {
        use openraft::type_config::TypeConfigExt;
        for sync in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            {
                let (fs, power_off) = LogFs::volatile();
                let log = SharedLog::open_with(dir.path(), sync, fs, QUEUE_BYTES_MAX, FILE_BYTES).unwrap();
                let mut l = RangeLog::new(log.clone(), 7);
                let (tx, rx) = RangeConfig::oneshot();
                l.append((0..50).map(|i| entry(i, 100)), IOFlushed::<RangeConfig>::signal(tx)).await.unwrap();
                rx.await.unwrap().unwrap();
                // The power goes: nothing more reaches the disk, and every file is dropped
                // with what it did not sync.
                power_off.store(true, std::sync::atomic::Ordering::Relaxed);
                log.close();
            }
            let log = SharedLog::open(dir.path(), true).unwrap();
            let mut l = RangeLog::new(log, 7);
            let kept = l.try_get_log_entries(0..50).await.unwrap().len();
            assert_eq!(kept, if sync { 50 } else { 0 }, "sync {sync}");
        }
    }

    /// raft-engine panics where an fsync fails: the writer answers that write and every later
    /// one as failed, and the log says it failed (the node reports it and must stop), instead
    /// of a writer gone with its callers' appends never answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_fsync_fails_the_log_instead_of_killing_its_writer() {
        use openraft::type_config::TypeConfigExt;
        let dir = tempfile::tempdir().unwrap();
        let (fs, fail) = LogFs::failing();
        let log = SharedLog::open_with(dir.path(), true, fs, QUEUE_BYTES_MAX, FILE_BYTES).unwrap();
        let mut l = RangeLog::new(log.clone(), 7);
        let (tx, rx) = RangeConfig::oneshot();
        l.append((0..5).map(|i| entry(i, 100)), IOFlushed::<RangeConfig>::signal(tx)).await.unwrap();
        rx.await.unwrap().unwrap();
        fail.store(true, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = RangeConfig::oneshot();
        l.append((5..10).map(|i| entry(i, 100)), IOFlushed::<RangeConfig>::signal(tx)).await.unwrap();
        let flushed = tokio::time::timeout(std::time::Duration::from_secs(10), rx).await.expect("never answered");
        assert!(flushed.expect("the writer is gone").is_err(), "an append whose fsync failed was flushed");
        assert!(log.failed(), "the log does not say it failed");
        let (tx, _rx) = RangeConfig::oneshot();
        let later = l.append((10..11).map(|i| entry(i, 100)), IOFlushed::<RangeConfig>::signal(tx)).await;
        assert!(later.is_err(), "a later append was taken");
    }

    /// The writer's queue is bounded in bytes: with the writer held, appends of many groups
    /// past its room wait for it, on a runtime whose one thread goes on running other tasks
    /// (the queue's sender once blocked the thread), and are all written once it goes on.
    #[tokio::test(flavor = "current_thread")]
    #[allow(clippy::await_holding_lock, reason = "the writer is held on purpose while the test appends")]
    async fn a_full_queue_makes_appends_wait_without_holding_their_thread() {
        use openraft::type_config::TypeConfigExt;
        const ROOM: usize = 64 * 1024;
        let dir = tempfile::tempdir().unwrap();
        let log = SharedLog::open_with(dir.path(), true, LogFs::default(), ROOM, FILE_BYTES).unwrap();
        let held = log.hold.lock();
        let queued = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for g in 1..=20u64 {
            let (log, queued) = (log.clone(), queued.clone());
            tasks.push(tokio::spawn(async move {
                let mut l = RangeLog::new(log, g);
                let (tx, rx) = RangeConfig::oneshot();
                l.append((0..10).map(|i| entry(i, 1000)), IOFlushed::<RangeConfig>::signal(tx)).await.unwrap();
                queued.fetch_add(1, Ordering::SeqCst);
                rx.await.unwrap().unwrap();
            }));
        }
        // This task runs while the appends wait: they do not hold the thread.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let taken = queued.load(Ordering::SeqCst);
        assert!(taken >= 1, "no append was queued");
        assert!(taken <= (ROOM / 10_000) as u64, "{taken} appends of 10 kB queued in a {ROOM}-byte queue");
        assert!(log.queued_bytes() <= ROOM as u64 && log.queued_bytes() >= 10_000, "{} queued", log.queued_bytes());
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(log.queued_bytes(), 0);
        for g in 1..=20u64 {
            let mut l = RangeLog::new(log.clone(), g);
            assert_eq!(l.try_get_log_entries(0..10).await.unwrap().len(), 10, "group {g}");
        }
    }

    /// Appends queued faster than the writer writes them (openraft appends again before the
    /// previous append is durable): none is mistaken for a gap, and all are there after a
    /// reopen. A stale view of the engine's last index once made the log drop every earlier
    /// entry of the group (found by killing a node under Redis writes).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_queued_behind_the_writer_are_not_a_gap() {
        use openraft::type_config::TypeConfigExt;
        let dir = tempfile::tempdir().unwrap();
        {
            let log = SharedLog::open(dir.path(), true).unwrap();
            let mut l = RangeLog::new(log.clone(), 3);
            let mut waits = Vec::new();
            for i in 0..200u64 {
                let (tx, rx) = RangeConfig::oneshot();
                l.append(vec![entry(i, 100)], IOFlushed::<RangeConfig>::signal(tx)).await.unwrap();
                waits.push(rx);
            }
            for w in waits {
                w.await.unwrap().unwrap();
            }
            log.close();
        }
        let log = SharedLog::open(dir.path(), true).unwrap();
        let mut l = RangeLog::new(log, 3);
        let all = l.try_get_log_entries(0..200).await.unwrap();
        assert_eq!(all.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), (0..200).collect::<Vec<_>>());
    }

    /// A read of entries some of which are written and the rest still queued for the writer
    /// (after a restart, the recent copy holds only the queued ones) returns them all. It once
    /// returned only the written ones: openraft then applied a shorter batch than it had
    /// committed (found by killing a node under Redis writes; a debug assertion caught it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[allow(clippy::await_holding_lock, reason = "the writer is held on purpose while the test appends")]
    async fn a_read_spanning_written_and_queued_entries_returns_them_all() {
        use openraft::type_config::TypeConfigExt;
        let dir = tempfile::tempdir().unwrap();
        {
            let log = SharedLog::open(dir.path(), true).unwrap();
            let mut l = RangeLog::new(log.clone(), 5);
            let (tx, rx) = RangeConfig::oneshot();
            l.append((0..100).map(|i| entry(i, 10)), IOFlushed::<RangeConfig>::signal(tx)).await.unwrap();
            rx.await.unwrap().unwrap();
            log.close();
        }
        let log = SharedLog::open(dir.path(), true).unwrap();
        let mut l = RangeLog::new(log.clone(), 5);
        let held = log.hold.lock();
        let (tx, rx) = RangeConfig::oneshot();
        l.append((100..103).map(|i| entry(i, 10)), IOFlushed::<RangeConfig>::signal(tx)).await.unwrap();
        let mut reader = l.clone();
        let read = tokio::spawn(async move { reader.try_get_log_entries(90..103).await.unwrap() });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        drop(held);
        let got = read.await.unwrap();
        assert_eq!(got.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), (90..103).collect::<Vec<_>>());
        rx.await.unwrap().unwrap();
    }

    /// A crash after an append past a gap (a snapshot was installed) and before openraft's
    /// purge that follows it: the log's first entry is past its purge point. At the next start
    /// the log is purged up to the state's applied id, so every entry after the purge point is
    /// there (openraft reads them at start, and the range failed to open, and the node with it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_between_a_gap_append_and_its_purge_is_repaired_at_start() {
        use openraft::type_config::TypeConfigExt;
        let dir = tempfile::tempdir().unwrap();
        {
            let log = SharedLog::open(dir.path(), true).unwrap();
            let mut l = RangeLog::new(log.clone(), 9);
            let (tx, rx) = RangeConfig::oneshot();
            l.append((0..10).map(|i| entry(i, 10)), IOFlushed::<RangeConfig>::signal(tx)).await.unwrap();
            rx.await.unwrap().unwrap();
            l.purge(entry(5, 0).log_id).await.unwrap();
            // A snapshot up to 19 was installed; the leader's next entries follow it.
            let (tx, rx) = RangeConfig::oneshot();
            l.append((20..25).map(|i| entry(i, 10)), IOFlushed::<RangeConfig>::signal(tx)).await.unwrap();
            rx.await.unwrap().unwrap();
            log.close();
        }
        let log = SharedLog::open(dir.path(), true).unwrap();
        let mut l = RangeLog::new(log.clone(), 9);
        l.seed(entry(21, 0).log_id).await.unwrap();
        let st = l.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id.map(|p| p.index), Some(21));
        assert_eq!(st.last_log_id.map(|p| p.index), Some(24));
        let after = l.try_get_log_entries(22..25).await.unwrap();
        assert_eq!(after.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), vec![22, 23, 24]);
        // The next append continues the log.
        let (tx, rx) = RangeConfig::oneshot();
        l.append(vec![entry(25, 10)], IOFlushed::<RangeConfig>::signal(tx)).await.unwrap();
        rx.await.unwrap().unwrap();
        // A state that does not reach the log's first entry is refused, not papered over.
        let mut other = RangeLog::new(log.clone(), 10);
        let (tx, rx) = RangeConfig::oneshot();
        other.append((30..32).map(|i| entry(i, 10)), IOFlushed::<RangeConfig>::signal(tx)).await.unwrap();
        rx.await.unwrap().unwrap();
        other.purge(entry(10, 0).log_id).await.unwrap();
        assert!(other.seed(entry(20, 0).log_id).await.is_err());
    }

    /// Appends from many groups at once (merged by the writer into shared writes), then a
    /// reopen: every acknowledged entry is read back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn merged_writes_of_many_groups_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = SharedLog::open(dir.path(), true).unwrap();
            let mut tasks = Vec::new();
            for g in 1..=8u64 {
                let log = log.clone();
                tasks.push(tokio::spawn(async move {
                    let mut l = RangeLog::new(log, g);
                    for i in 0..50u64 {
                        use openraft::type_config::TypeConfigExt;
                        let (tx, rx) = RangeConfig::oneshot();
                        let cb = IOFlushed::<RangeConfig>::signal(tx);
                        l.append(vec![entry(i, (g as usize * 997 + i as usize * 31) % 20_000)], cb).await.unwrap();
                        rx.await.unwrap().unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            assert!(log.stats().writes.load(Ordering::Relaxed) < log.stats().operations.load(Ordering::Relaxed));
            log.close();
        }
        let log = SharedLog::open(dir.path(), true).unwrap();
        for g in 1..=8u64 {
            let mut l = RangeLog::new(log.clone(), g);
            let st = l.get_log_state().await.unwrap();
            assert_eq!(st.last_log_id.map(|x| x.index), Some(49), "group {g}");
            let all = l.try_get_log_entries(0..50).await.unwrap();
            assert_eq!(all.len(), 50, "group {g}");
            for (i, e) in all.iter().enumerate() {
                assert_eq!(*e, entry(i as u64, (g as usize * 997 + i * 31) % 20_000));
            }
        }
    }

    /// Writes ten batches of group 7 (entries 0..10, one write each) through raft-engine;
    /// `sync` false: in the unsafe no-fsync mode.
    async fn ten_writes(dir: &Path, sync: bool) {
        let log = SharedLog::open(dir, sync).unwrap();
        assert_eq!(dir.join(logcheck::UNSYNCED_MARK).exists(), !sync);
        writes(&log, 10, 1000).await;
    }

    /// Appends entries `0..n` of `payload` bytes to group 7, one write each, then closes `log`.
    async fn writes(log: &Arc<SharedLog>, n: u64, payload: usize) {
        use openraft::type_config::TypeConfigExt;
        let mut l = RangeLog::new(log.clone(), 7);
        for i in 0..n {
            let (tx, rx) = RangeConfig::oneshot();
            l.append(vec![entry(i, payload)], IOFlushed::<RangeConfig>::signal(tx)).await.unwrap();
            rx.await.unwrap().unwrap();
        }
        log.close();
    }

    /// The newest log file and where its batches start.
    fn newest_batches(dir: &Path) -> (std::path::PathBuf, Vec<u64>) {
        newest_batches_at_least(dir, 10)
    }

    fn newest_batches_at_least(dir: &Path, n: usize) -> (std::path::PathBuf, Vec<u64>) {
        let (seq, path) = crate::range::logcheck::append_files(dir).unwrap().pop().unwrap();
        let starts = crate::range::logcheck::batch_starts(&std::fs::read(&path).unwrap(), seq);
        assert!(starts.len() >= n, "{} batches", starts.len());
        (path, starts)
    }

    /// A batch damaged after it was synced, with batches written after it, makes the log refuse
    /// to open (raft-engine alone dropped every entry from it on), and so does a damaged file
    /// header (raft-engine emptied the file); the file is left as it was. Damaged entries in
    /// the middle are an error when read. A torn last batch is dropped, and what came before it
    /// kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn damage_to_synced_batches_is_refused_and_a_torn_tail_dropped() {
        let damage = |dir: &Path, at: &dyn Fn(&[u64]) -> u64| {
            let (path, starts) = newest_batches(dir);
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[at(&starts) as usize] ^= 0x10;
            std::fs::write(&path, &bytes).unwrap();
            (path, bytes)
        };
        for (what, at) in
            [("a footer", &(|s: &[u64]| s[6] - 6) as &dyn Fn(&[u64]) -> u64), ("the file header", &|_: &[u64]| 3)]
        {
            let dir = tempfile::tempdir().unwrap();
            ten_writes(dir.path(), true).await;
            let (path, bytes) = damage(dir.path(), at);
            let r = SharedLog::open(dir.path(), true);
            let e = r.err().unwrap_or_else(|| panic!("a log with {what} damaged opened"));
            assert!(e.to_string().contains("is damaged"), "{e}");
            assert_eq!(std::fs::read(&path).unwrap(), bytes, "the damaged file was changed");
        }
        let dir = tempfile::tempdir().unwrap();
        ten_writes(dir.path(), true).await;
        damage(dir.path(), &|s: &[u64]| s[5] + 40);
        let log = SharedLog::open(dir.path(), true).expect("damaged entries in the middle are found when read");
        let mut l = RangeLog::new(log, 7);
        assert!(l.try_get_log_entries(0..10).await.is_err(), "damaged entries were read");

        let dir = tempfile::tempdir().unwrap();
        ten_writes(dir.path(), true).await;
        let (path, starts) = newest_batches(dir.path());
        let last = *starts.last().unwrap();
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(last + 100).unwrap();
        let log = SharedLog::open(dir.path(), true).expect("a torn tail is dropped");
        let mut l = RangeLog::new(log, 7);
        let kept = l.try_get_log_entries(0..10).await.unwrap();
        assert!(kept == (0..9).map(|i| entry(i, 1000)).collect::<Vec<_>>(), "{} entries kept", kept.len());
    }

    /// A log written in the unsafe no-fsync mode may hold several torn writes: opened with
    /// fsync again, its newest file is taken as torn, not damaged; once everything it holds is
    /// synced, the mark goes and the check applies again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_log_written_without_fsync_opens_with_fsync_again() {
        let dir = tempfile::tempdir().unwrap();
        ten_writes(dir.path(), false).await;
        // A batch of the no-fsync run in the middle lost, the later ones kept (as a power cut
        // may leave the page cache's writes): raft-engine drops it and all after it.
        let (path, starts) = newest_batches(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[starts[6] as usize - 6] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let log = SharedLog::open(dir.path(), true).expect("a log written without fsync opens");
        assert!(!dir.path().join(logcheck::UNSYNCED_MARK).exists(), "the mark stayed");
        let mut l = RangeLog::new(log.clone(), 7);
        assert_eq!(l.try_get_log_entries(0..3).await.unwrap().len(), 3);
        log.close();
        drop((l, log));
        // Synced and unmarked now: the check applies again.
        let (path, starts) = newest_batches_at_least(dir.path(), 3);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[starts[2] as usize - 6] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let e = SharedLog::open(dir.path(), true).err().expect("damage after the mark went was let through");
        assert!(e.to_string().contains("is damaged"), "{e}");
    }

    /// Files that rotate: every one is walked whole (the check reads rotated files as
    /// raft-engine wrote them), and damage to an older file's last batch is refused with the
    /// check's message, naming the file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rotated_files_are_walked_and_damage_in_an_older_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let open = || SharedLog::open_with(dir.path(), true, LogFs::default(), QUEUE_BYTES_MAX, 32 * 1024);
        writes(&open().unwrap(), 40, 4000).await;
        let files = logcheck::append_files(dir.path()).unwrap();
        assert!(files.len() >= 3, "{} files", files.len());
        {
            let log = open().expect("a log of rotated files opens");
            let mut l = RangeLog::new(log.clone(), 7);
            assert_eq!(l.try_get_log_entries(0..40).await.unwrap().len(), 40);
            log.close();
        }
        let (seq, path) = &files[0];
        let bytes = std::fs::read(path).unwrap();
        let last = *logcheck::batch_starts(&bytes, *seq).last().unwrap();
        let mut damaged = bytes.clone();
        damaged[last as usize + 30] ^= 0x10;
        std::fs::write(path, &damaged).unwrap();
        let e = open().err().expect("damage to an older file's last batch was let through");
        assert!(e.to_string().contains("are damaged") && e.to_string().contains(&path.display().to_string()), "{e}");
    }
}
