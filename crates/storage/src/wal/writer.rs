//! The writer thread, the only code that writes files: group commit (drain the queue, write,
//! one `fdatasync`, then the callbacks), the zeroed-ahead space, segment rotation and sealing,
//! and deletion of segments that hold only purged entries.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::sync::mpsc;
use std::sync::Arc;

use super::record::{
    checkpoint_payload, encode_record, HEADER_BYTES, KIND_CHECKPOINT, KIND_COMMITTED, KIND_ENTRY, KIND_PURGE,
    KIND_SYNCED, KIND_TRUNCATE_FROM, KIND_VOTE,
};
use super::{segment_path, sync_dir, Done, IoFault, Job, Location, Shared};
use crate::volatile::DataFile;
use crate::{Error, Result};

/// How far past the end of the active segment the writer keeps zeros written (see "Zeroed ahead").
pub(super) const ZERO_AHEAD_BYTES: u64 = 1 << 20;
/// The writer's buffer is written out once it holds this much, even within one batch.
const WRITE_CHUNK_BYTES: usize = 4 << 20;

/// The writer thread's state. Only this thread writes files.
pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    pub(super) segment: u64,
    pub(super) file: Option<DataFile>,
    /// Bytes of records in the active segment: where the next record goes.
    pub(super) len: u64,
    /// The active segment holds zeros from `len` up to here (see "Zeroed ahead").
    pub(super) zeroed_to: u64,
    /// Segments present, oldest first, with the highest entry index each holds (None if none
    /// or unknown until recomputed).
    pub(super) segments: VecDeque<(u64, Option<u64>)>,
    pub(super) buf: Vec<u8>,
    /// Bytes of the active segment known to be fsynced.
    pub(super) synced_to: u64,
    /// Where the last sync mark ([`KIND_SYNCED`]) of the active segment was written.
    pub(super) marked_to: u64,
}

impl Writer {
    pub(super) fn recompute_max_indexes(&mut self) {
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
    /// The injected fault this write (or fsync, `sync`) meets, if any (tests only).
    fn fault(&self, sync: bool) -> Option<IoFault> {
        let f = (self.shared.opts.faults.as_ref()?.0)()?;
        (sync == (f == IoFault::SyncError)).then_some(f)
    }

    /// Writes the buffer out. While the disk is full (ENOSPC) it waits and tries again: no
    /// fsync has failed and nothing of this write counts until all of it is written (bytes
    /// that did land past the log's end are overwritten, or cut off as a torn tail after a
    /// crash), so trying again is safe, unlike after a failed fsync. Meanwhile the log's
    /// callers wait and the member refuses new writes ([`super::Wal::disk_full`]).
    fn write_out(&mut self) -> Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        const ENOSPC: i32 = 28;
        loop {
            match self.write_out_once() {
                Err(Error::Io(e)) if e.raw_os_error() == Some(ENOSPC) && !self.shared.stats.closing.load(Relaxed) => {
                    if !self.shared.stats.disk_full.swap(true, Relaxed) {
                        tracing::error!(
                            dir = %self.shared.dir.display(),
                            "no space left on device for the raft log: writes are refused until space returns"
                        );
                    }
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                r => {
                    if r.is_ok() && self.shared.stats.disk_full.swap(false, Relaxed) {
                        tracing::info!("space returned: the raft log writes again");
                    }
                    return r;
                }
            }
        }
    }

    fn write_out_once(&mut self) -> Result<()> {
        let f = self.file.as_ref().expect("an open segment");
        let end = self.len + self.buf.len() as u64;
        match self.fault(false) {
            None => {}
            Some(IoFault::ShortWrite) => {
                f.write_all_at(&self.buf[..self.buf.len() / 2], self.len)?;
                return Err(IoFault::ShortWrite.error().into());
            }
            Some(other) => return Err(other.error().into()),
        }
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
        if self.file.is_none() {
            return Ok(());
        }
        // Durable first, then a sync mark after it all, so recovery knows every byte of a
        // sealed segment was durable (damage anywhere in it is corruption).
        self.file.as_ref().expect("an open segment").sync_data()?;
        self.synced_to = self.len;
        if self.len > self.marked_to {
            self.buf.clear();
            encode_record(KIND_SYNCED, &[], &mut self.buf);
            self.marked_to = self.len;
            self.write_out()?;
        }
        let f = self.file.take().expect("an open segment");
        f.set_len(self.len)?;
        f.sync_all()?;
        Ok(())
    }

    /// Starts a new segment with a checkpoint of the current state.
    pub(super) fn rotate(&mut self) -> Result<()> {
        // Sealed (and synced) before the next segment exists, so only the last segment can
        // ever end in zeros.
        let sealed_prev = self.file.is_some();
        self.seal()?;
        let sealed_prev = sealed_prev.then_some(self.len);
        let seq = self.segment + 1;
        let path = segment_path(&self.shared.dir, seq);
        let f = OpenOptions::new().create_new(true).read(true).write(true).open(&path)?;
        self.file = Some(DataFile::new(f)?);
        self.segment = seq;
        self.zeroed_to = 0;
        self.start_segment(sealed_prev)?;
        self.shared.readers.lock().push((seq, Arc::new(File::open(&path)?)));
        self.segments.push_back((seq, None));
        Ok(())
    }

    /// Writes the checkpoint that opens every segment into the empty active segment, durably.
    /// `sealed_prev`: the length the previous segment was just sealed at, if known.
    pub(super) fn start_segment(&mut self, sealed_prev: Option<u64>) -> Result<()> {
        let payload = {
            let m = self.shared.mem.lock();
            checkpoint_payload(&m.vote, &m.committed, &m.purged, sealed_prev)
        };
        self.buf.clear();
        encode_record(KIND_CHECKPOINT, &[&payload], &mut self.buf);
        // Says this segment carries sync marks (synced with the checkpoint, before any batch).
        encode_record(KIND_SYNCED, &[], &mut self.buf);
        self.len = 0;
        self.write_out()?;
        self.file.as_ref().expect("an open segment").sync_all()?;
        self.synced_to = self.len;
        self.marked_to = self.len;
        sync_dir(&self.shared.dir)
    }

    pub(super) fn run(mut self, rx: mpsc::Receiver<Job>) {
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
                    // Never retried: after a failed fsync the kernel may already have dropped
                    // the dirty pages (and marked them clean), so what the page cache holds
                    // cannot be trusted ("fsyncgate"); after a failed write the file's tail is
                    // unknown. Raft stops on the error and the member exits; a restart
                    // recovers from what the file holds (a torn tail is cut off).
                    tracing::error!(error = %msg, "raft log write or fsync failed; the log accepts nothing more");
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
        if self.synced_to == self.len && self.len > self.marked_to {
            // Everything before here is durable: say so, for recovery.
            encode_record(KIND_SYNCED, &[], &mut self.buf);
            self.marked_to = self.len;
        }
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
                if let Some(f) = self.fault(true) {
                    return Err(f.error().into());
                }
                self.file.as_ref().expect("an open segment").sync_data()?;
                self.synced_to = self.len;
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
