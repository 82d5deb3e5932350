//! Removing the history a compaction gave up, in the background, in bounded steps.
//!
//! Applying a Compact only moves the compaction revision (reads below it are refused from that
//! moment) and schedules a [`CompactJob`]. A thread of the store's own then walks the key index
//! in steps of at most [`STEP_KEYS`] keys or [`STEP_TIME`], whichever ends first, each under
//! the state's write lock: it drops the superseded revisions from the index and buffers the
//! deletion of their records like any applied change. Between steps the lock is free, so apply
//! and reads wait for one step at most, never for a walk of every key (etcd does the same:
//! its compaction deletes in batches of 1,000 keys and pauses between them).
//!
//! Nothing here needs to be durable: a stop part-way leaves superseded records in the engine,
//! which are invisible (below the compaction revision), and loading the store schedules the
//! walk again. Replicas may be at different points of their walk; what they answer is the same.

use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_storage::{Table, WriteOp};
use cairn_types::Revision;
use parking_lot::{Condvar, Mutex};

use super::{State, Store, StoreError};
use crate::index::IndexKey;

/// Keys one step visits at most.
pub const STEP_KEYS: usize = 1000;
/// Time one step holds the state lock at most (checked every 64 keys; one key with a very long
/// history can take longer by itself).
pub const STEP_TIME: Duration = Duration::from_millis(2);
/// Pause between steps, so apply and readers queued on the lock get it.
const STEP_PAUSE: Duration = Duration::from_millis(1);

/// A compaction whose walk of the key index is under way.
pub(super) struct CompactJob {
    rev: Revision,
    /// The last key visited; the next step starts after it.
    after: Option<IndexKey>,
    /// Every key visited: what is left is handing the removals to the engine.
    walked: bool,
}

impl CompactJob {
    pub(super) fn new(rev: Revision) -> Self {
        CompactJob { rev, after: None, walked: false }
    }
}

/// What compaction has done, for metrics.
#[derive(Default, Debug)]
pub struct CompactStats {
    pub steps: AtomicU64,
    /// Records removed from the index (and, once flushed, from the engine).
    pub removed: AtomicU64,
    /// The longest a step held the state lock.
    pub max_step_micros: AtomicU64,
}

/// Wakes the compaction thread and tells waiters when a compaction is physically done.
pub(super) struct Compactor {
    wake: Arc<(Mutex<bool>, Condvar)>,
    /// The newest compaction revision whose walk has finished and whose removals the engine
    /// holds (-1: none yet).
    done: Arc<tokio::sync::watch::Sender<Revision>>,
    stats: CompactStats,
}

impl Compactor {
    pub(super) fn new(st: &State) -> Self {
        let done = if st.compaction.is_some() { -1 } else { st.compact_rev };
        Compactor {
            wake: Arc::new((Mutex::new(st.compaction.is_some()), Condvar::new())),
            done: Arc::new(tokio::sync::watch::channel(done).0),
            stats: CompactStats::default(),
        }
    }

    /// Schedules the walk for a compaction at `rev` (replacing one under way: its keys are
    /// visited again at the newer revision).
    pub(super) fn schedule(&self, st: &mut State, rev: Revision) {
        st.compaction = Some(CompactJob::new(rev));
        self.notify();
    }

    /// After the state was reloaded (a snapshot install).
    pub(super) fn restart(&self, st: &State) {
        if st.compaction.is_some() {
            self.notify();
        } else {
            self.done.send_replace(st.compact_rev);
        }
    }

    fn notify(&self) {
        *self.wake.0.lock() = true;
        self.wake.1.notify_one();
    }
}

impl Store {
    /// Runs one bounded step of the compaction under way; true if more remain.
    pub fn compact_step(&self) -> Result<bool, StoreError> {
        let mut st = self.state.write();
        let started = Instant::now();
        let Some(job) = st.compaction.as_ref() else {
            return Ok(false);
        };
        let rev = job.rev;
        if job.walked {
            return self.finish_walk(&mut st, rev);
        }
        // A chunked read below `rev` still needs the history this would remove: wait for it.
        if self.read_pins.lock().keys().next().is_some_and(|&pinned| pinned < rev) {
            return Ok(true);
        }
        let from = match &job.after {
            Some(k) => Bound::Excluded(k.clone()),
            None => Bound::Unbounded,
        };
        let mut removed = Vec::new();
        let mut emptied = Vec::new();
        let mut stopped_at = None;
        let mut visited = 0usize;
        for (key, ki) in st.keys.range_mut((from, Bound::Unbounded)) {
            if ki.compact(rev, &mut removed) {
                emptied.push(key.clone());
            }
            visited += 1;
            if visited >= STEP_KEYS || (visited.is_multiple_of(64) && started.elapsed() >= STEP_TIME) {
                stopped_at = Some(key.clone());
                break;
            }
        }
        for key in &emptied {
            st.keys.remove(key);
        }
        let job = st.compaction.as_mut().expect("checked");
        match stopped_at {
            Some(key) => job.after = Some(key),
            None => job.walked = true,
        }
        self.compactor.stats.removed.fetch_add(removed.len() as u64, Relaxed);
        let deletes = removed.into_iter().map(|r| WriteOp::Delete { table: Table::Kv, key: r.to_key().to_vec() });
        self.buffer(&mut st, deletes)?;
        let held = started.elapsed().as_micros() as u64;
        drop(st);
        self.compactor.stats.steps.fetch_add(1, Relaxed);
        self.compactor.stats.max_step_micros.fetch_max(held, Relaxed);
        Ok(true)
    }

    /// The last step: the removals go to the engine now rather than with the next full buffer.
    /// Until they do the engine still counts the bytes they free, and a store refusing writes
    /// for its quota would never fill the buffer. Never waits for a write in flight (apply
    /// would wait with it): while one runs, it answers "more" and is tried again.
    fn finish_walk(&self, st: &mut State, rev: Revision) -> Result<bool, StoreError> {
        if st.flushing.as_ref().is_some_and(|f| !f.done.is_finished()) {
            return Ok(true);
        }
        st.compaction = None;
        let done = self.compactor.done.clone();
        let finished = move || {
            done.send_if_modified(|r| std::mem::replace(r, rev.max(*r)) != *r);
        };
        if st.unflushed.ops.is_empty() {
            finished();
        } else {
            self.flush_in_background(st, Some(Box::new(finished)))?;
        }
        Ok(false)
    }

    /// Runs the compaction under way on this thread (tests, and stores without a compaction
    /// thread) until its removals are buffered, and hands them to the engine unless a write is
    /// in flight.
    pub fn finish_compaction(&self) -> Result<(), StoreError> {
        while self.compact_step()? {
            let st = self.state.read();
            if st.compaction.as_ref().is_some_and(|j| j.walked)
                && st.flushing.as_ref().is_some_and(|f| !f.done.is_finished())
            {
                break;
            }
        }
        Ok(())
    }

    /// Starts the thread that carries out compactions. It holds the store only while it works
    /// and stops once the store is dropped.
    pub fn start_compactor(self: &Arc<Self>) -> std::io::Result<()> {
        let store = Arc::downgrade(self);
        let wake = self.compactor.wake.clone();
        std::thread::Builder::new().name("store-compact".into()).spawn(move || loop {
            {
                let mut pending = wake.0.lock();
                if !*pending {
                    wake.1.wait_for(&mut pending, Duration::from_secs(1));
                }
                *pending = false;
            }
            let Some(store) = store.upgrade() else {
                return;
            };
            loop {
                match store.compact_step() {
                    Ok(true) => std::thread::sleep(STEP_PAUSE),
                    Ok(false) => break,
                    Err(e) => {
                        // The same failure stops apply (it shares the buffer and the engine).
                        tracing::error!(error = %e, "compaction step failed");
                        break;
                    }
                }
            }
        })?;
        Ok(())
    }

    /// Waits until the compaction at `rev` (or a later one) has removed what it gave up; false
    /// if `deadline` passed first. etcd's `physical` compaction answers after this.
    pub async fn wait_compacted(&self, rev: Revision, deadline: Instant) -> bool {
        let mut rx = self.compactor.done.subscribe();
        let wait = rx.wait_for(|r| *r >= rev);
        tokio::time::timeout_at(deadline.into(), wait).await.is_ok_and(|r| r.is_ok())
    }

    /// Compaction counters.
    pub fn compact_stats(&self) -> &CompactStats {
        &self.compactor.stats
    }
}
