//! The one history recorder every checker's history is written with: a log of operations,
//! shared by all client tasks, stamping each invocation and completion with a timestamp from
//! one clock. Timestamps are taken under the log's lock, so they are strictly increasing and
//! their order is the order in which events were recorded, which is what the linearizability,
//! set and bank checkers rely on. [`crate::history::Recorder`], [`crate::check::SetRecorder`]
//! and [`crate::check::BankRecorder`] are typed fronts over it.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// A shared log of operations of type `T`. Cloning shares it.
pub struct Log<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for Log<T> {
    fn clone(&self) -> Self {
        Log { inner: Arc::clone(&self.inner) }
    }
}

struct Inner<T> {
    start: Instant,
    state: Mutex<State<T>>,
}

struct State<T> {
    ops: Vec<T>,
    /// Last timestamp handed out; the next one is strictly larger.
    last_ns: Option<u64>,
}

impl<T> Inner<T> {
    /// Only pushes and in-place updates happen under the lock, so a poisoned lock (a client
    /// panicked while holding it) still guards a consistent vector: keep recording.
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<T> State<T> {
    /// Called with the lock held: that makes timestamps a total order consistent with the
    /// order in which events were recorded.
    fn now(&mut self, start: Instant) -> u64 {
        let elapsed = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let t = match self.last_ns {
            Some(last) => elapsed.max(last.saturating_add(1)),
            None => elapsed,
        };
        self.last_ns = Some(t);
        t
    }
}

impl<T: Clone> Default for Log<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone> Log<T> {
    /// A log whose clock starts now.
    pub fn new() -> Self {
        Log {
            inner: Arc::new(Inner {
                start: Instant::now(),
                state: Mutex::new(State { ops: Vec::new(), last_ns: None }),
            }),
        }
    }

    /// Records an invocation: `make(index, invoke_ns)` builds the operation, which is pushed
    /// with the index it gets. Complete the returned slot once the answer arrived.
    pub fn invoke(&self, make: impl FnOnce(usize, u64) -> T) -> Slot<T> {
        let mut state = self.inner.lock();
        let invoke_ns = state.now(self.inner.start);
        let index = state.ops.len();
        state.ops.push(make(index, invoke_ns));
        Slot { inner: Arc::clone(&self.inner), index }
    }

    /// Every operation recorded so far.
    pub fn snapshot(&self) -> Vec<T> {
        self.inner.lock().ops.clone()
    }

    /// Number of operations recorded so far.
    pub fn len(&self) -> usize {
        self.inner.lock().ops.len()
    }

    /// Whether nothing was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An invoked operation's place in the log. Completing consumes it, so an operation is
/// completed at most once.
pub struct Slot<T> {
    inner: Arc<Inner<T>>,
    index: usize,
}

impl<T> Slot<T> {
    /// The operation's index in the log (its id).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Records the completion: `set(op, complete_ns)` writes the outcome into the operation.
    pub fn complete(self, set: impl FnOnce(&mut T, u64)) {
        let mut state = self.inner.lock();
        let now = state.now(self.inner.start);
        // `index` came from `invoke` on the same vector, which never shrinks.
        if let Some(op) = state.ops.get_mut(self.index) {
            set(op, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_increase_and_follow_recording_order() {
        let log: Log<(usize, u64, Option<u64>)> = Log::new();
        let a = log.invoke(|i, t| (i, t, None));
        let b = log.invoke(|i, t| (i, t, None));
        b.complete(|op, t| op.2 = Some(t));
        a.complete(|op, t| op.2 = Some(t));
        let ops = log.snapshot();
        assert_eq!((ops[0].0, ops[1].0), (0, 1));
        assert!(ops[0].1 < ops[1].1 && ops[1].1 < ops[1].2.unwrap() && ops[1].2.unwrap() < ops[0].2.unwrap());
        let pending = log.invoke(|i, t| (i, t, None));
        assert_eq!(pending.index(), 2);
        drop(pending);
        assert_eq!(log.snapshot()[2].2, None, "a dropped slot leaves the operation open");
        assert_eq!(log.len(), 3);
    }
}
