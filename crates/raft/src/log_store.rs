//! openraft's log store over [`Wal`]: entries, vote, committed position and purge point are
//! postcard-encoded into the log's records.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use bytes::Bytes;
use cairn_storage::wal::Wal;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use parking_lot::Mutex;

use crate::recent::Recent;
use crate::types::{Entry, LogId, TypeConfig, Vote};

/// Largest batch of entries handed to replication in one read.
const READ_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Encoded bytes of recent entries kept decoded in [`Recent`].
const RECENT_BYTES_MAX: usize = 32 * 1024 * 1024;

#[derive(Clone)]
pub struct LogStore {
    wal: Arc<Wal>,
    recent: Arc<Mutex<Recent<TypeConfig>>>,
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Decodes what the log holds; `what` names it for the error (the log checksums every record,
/// so this fails only on a record written wrong, or read by a build that encodes differently).
fn decode<T: serde::de::DeserializeOwned>(b: &[u8], what: &str) -> io::Result<T> {
    postcard::from_bytes(b)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("raft log: cannot decode {what}: {e}")))
}

/// An entry read from the log at `index`. One that says it is another is refused: openraft
/// relies on entry `i` being at `i`.
fn decode_entry(index: u64, b: &[u8]) -> io::Result<Entry> {
    let e: Entry = decode(b, &format!("entry {index}"))?;
    if e.log_id.index != index {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("raft log: the entry stored at index {index} says it is entry {}", e.log_id.index),
        ));
    }
    Ok(e)
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("raft types serialize")
}

impl LogStore {
    pub fn new(wal: Arc<Wal>) -> Self {
        LogStore { wal, recent: Arc::new(Mutex::new(Recent::new(RECENT_BYTES_MAX))) }
    }

    pub fn wal(&self) -> &Arc<Wal> {
        &self.wal
    }

    fn read(&self, start: u64, end: u64, max_bytes: usize) -> io::Result<Vec<Entry>> {
        if let Some(entries) = self.recent.lock().get(start, end, max_bytes) {
            return Ok(entries);
        }
        self.wal.read(start, end, max_bytes).map_err(io_err)?.iter().map(|(i, b)| decode_entry(*i, b)).collect()
    }
}

/// `[start, end)` of a log index range (shared with the range log).
pub(crate) fn bounds(range: impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (start, end) = bounds(range);
        self.read(start, end, usize::MAX)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.wal.state().vote.map(|v| decode(&v, "the vote")).transpose()
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, io::Error> {
        self.read(start, end, READ_BYTES_MAX)
    }
}

/// Waits for a log operation's completion callback.
async fn durable(f: impl FnOnce(cairn_storage::wal::Done) -> cairn_storage::Result<()>) -> io::Result<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    f(Box::new(move |r| {
        let _ = tx.send(r);
    }))
    .map_err(io_err)?;
    rx.await.map_err(io_err)?.map_err(io_err)
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let st = self.wal.state();
        let last_purged_log_id: Option<LogId> = st.purged.map(|p| decode(&p.data, "the purge point")).transpose()?;
        let last_log_id = match st.last_index {
            Some(i) => {
                let e = self.read(i, i + 1, usize::MAX)?;
                Some(e.into_iter().next().ok_or_else(|| io_err("last log entry is missing"))?.log_id)
            }
            None => last_purged_log_id,
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let data = encode(vote);
        durable(|done| self.wal.save_vote(data, done)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        if let Some(c) = committed {
            self.wal.save_committed(encode(&c)).map_err(io_err)?;
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        self.wal.state().committed.map(|c| decode(&c, "the committed position")).transpose()
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let batch: Vec<(u64, Bytes)> = entries.iter().map(|e| (e.log_id.index, Bytes::from(encode(e)))).collect();
        if batch.is_empty() {
            callback.io_completed(Ok(()));
            return Ok(());
        }
        let lens: Vec<usize> = batch.iter().map(|(_, b)| b.len()).collect();
        // Under the copy's lock, the log first (it may refuse), then the copy: readers never see
        // the copy end before the log does.
        let mut recent = self.recent.lock();
        self.wal.append(batch, Box::new(move |r| callback.io_completed(r.map_err(io_err)))).map_err(io_err)?;
        for (e, len) in entries.into_iter().zip(lens) {
            recent.push(e, len);
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index + 1);
        let mut recent = self.recent.lock();
        recent.truncate_from(from);
        self.wal.truncate_from(from).map_err(io_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.recent.lock().purge_upto(log_id.index);
        self.wal.purge(log_id.index, encode(&log_id)).map_err(io_err)
    }
}
