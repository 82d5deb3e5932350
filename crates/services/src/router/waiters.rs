//! Forwarded writes waiting for this member's own apply of them (etcd's wait registry).
//!
//! A member that forwards a put, delete or transaction registers a waiter and sends its id; the
//! leader proposes the write as `Op::Origin { member, id, .. }`, and when this member applies
//! that entry, apply returns the write's response for `id` (`cairn_state::Answer`) and the state
//! machine hands it here once the batch is visible. The forwarding request answers with
//! whichever comes first, this or the leader's reply (`Router::on_leader_write`).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use cairn_state::{Answer, Response};
use parking_lot::Mutex;
use tokio::sync::oneshot;

/// The waiters of one member. Ids start at a random point, so an entry forwarded before a
/// restart and applied after it cannot answer a request of the new process.
#[derive(Debug)]
pub(crate) struct Waiters {
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Response>>>,
}

/// A random 64-bit number (std's per-process random hash keys, mixed with the clock), so
/// waiter ids of two runs of a process do not overlap in practice.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}

impl Waiters {
    pub(crate) fn new() -> Waiters {
        Waiters { next: AtomicU64::new(random_u64()), waiting: Mutex::new(HashMap::new()) }
    }

    /// Registers a wait for the apply of a write about to be forwarded with the returned
    /// waiter's id.
    pub(crate) fn register(self: &Arc<Self>) -> ApplyWaiter {
        // Never 0: an origin id of 0 means "no waiter" on the wire.
        let id = match self.next.fetch_add(1, Ordering::Relaxed) {
            0 => self.next.fetch_add(1, Ordering::Relaxed),
            id => id,
        };
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().insert(id, tx);
        ApplyWaiter { id, rx, waiters: self.clone() }
    }

    /// Hands each answer to its waiter, if it still waits (one that gave up has withdrawn).
    pub(crate) fn answer(&self, answers: Vec<Answer>) {
        let mut waiting = self.waiting.lock();
        for a in answers {
            if let Some(tx) = waiting.remove(&a.id) {
                let _ = tx.send(a.response);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.waiting.lock().len()
    }
}

/// A registration with the router's waiter registry: resolves to the response of the `Op::Origin`
/// carrying its id once this member has applied it; dropping it withdraws the registration.
#[derive(Debug)]
pub struct ApplyWaiter {
    id: u64,
    rx: oneshot::Receiver<Response>,
    waiters: Arc<Waiters>,
}

impl ApplyWaiter {
    /// The id to put in the `Op::Origin` of the forwarded request.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Future for ApplyWaiter {
    type Output = Response;

    /// Pending until the entry is applied here. An entry that never is (the leader refused the
    /// request, or a snapshot install skipped it) leaves the future pending: the caller races it
    /// against the leader's reply.
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(Ok(r)) => Poll::Ready(r),
            _ => Poll::Pending,
        }
    }
}

impl Drop for ApplyWaiter {
    fn drop(&mut self) {
        self.waiters.waiting.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll_once<F: Future + Unpin>(f: &mut F) -> Option<F::Output> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(f).poll(&mut cx) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        }
    }

    fn done(revision: i64) -> Response {
        Response::Done { revision }
    }

    #[test]
    fn an_answer_reaches_its_waiter_and_no_other() {
        let w = Arc::new(Waiters::new());
        let (mut a, mut b) = (w.register(), w.register());
        assert_ne!(a.id(), b.id(), "ids are distinct, so no registration takes another's answer");
        w.answer(vec![Answer { id: b.id(), response: done(2) }]);
        assert_eq!(poll_once(&mut b), Some(done(2)));
        assert!(poll_once(&mut a).is_none());
        assert_eq!(w.len(), 1, "an answered waiter must not linger");
    }

    #[test]
    fn a_waiter_never_answered_stays_pending_and_withdraws_on_drop() {
        let w = Arc::new(Waiters::new());
        let mut a = w.register();
        // Answers for ids nobody waits for (another process's, a withdrawn one) are dropped.
        w.answer(vec![Answer { id: a.id().wrapping_add(1000), response: done(1) }]);
        assert!(poll_once(&mut a).is_none());
        assert_eq!(w.len(), 1);
        let id = a.id();
        drop(a);
        assert_eq!(w.len(), 0);
        w.answer(vec![Answer { id, response: done(1) }]);
        assert_eq!(w.len(), 0);
    }
}
