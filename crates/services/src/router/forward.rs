//! Forwarding: a member that does not lead sends requests to the leader in batches (everything
//! queued when a batch leaves goes in it, up to a count and a size), each one message of the
//! node's peer transport (`cairn_raft::range::mux`), and learns from each failure whether the
//! request may have run.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use cairn_proto::peer::{forward_result, ForwardBatchRequest, ForwardReply, ForwardRequest};
use cairn_raft::range::mux::CallError;
use cairn_types::Error;
use tokio::sync::{mpsc, oneshot};

use super::Router;

/// Forwarded requests waiting to go to the leader. Everything queued when a batch leaves goes in
/// it, up to this many requests and [`FORWARD_BATCH_BYTES_MAX`]; at most
/// [`FORWARD_BATCHES_IN_FLIGHT`] batches are in flight, so under load batches grow instead of
/// messages.
const FORWARD_BATCH_MAX: usize = 512;
/// Encoded bytes of the requests in one batch, at most (a larger request goes alone). A batch
/// is one message of a stream shared by the batches in flight to that leader.
const FORWARD_BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
const FORWARD_BATCHES_IN_FLIGHT: usize = 4;

pub(super) struct ForwardJob {
    pub(super) leader: u64,
    pub(super) req: ForwardRequest,
    /// `req`'s encoded size.
    pub(super) bytes: usize,
    pub(super) deadline: Instant,
    pub(super) tx: oneshot::Sender<Result<ForwardReply, ForwardFailure>>,
}

/// Why a forwarded request did not produce an answer.
pub(super) enum ForwardFailure {
    /// Certainly not executed (the target is not the leader, or could not be reached):
    /// safe to retry elsewhere.
    NotExecuted,
    /// Maybe executed: the outcome is unknown.
    Unknown(Error),
    /// A definite answer from the leader.
    Answer(Error),
}

impl Router {
    /// Sends `req` to `leader` in the next forward batch.
    pub(super) async fn forward_once(
        &self,
        leader: u64,
        req: ForwardRequest,
        deadline: Instant,
    ) -> Result<ForwardReply, ForwardFailure> {
        let (tx, rx) = oneshot::channel();
        self.metrics.forwarded.inc();
        let bytes = prost::Message::encoded_len(&req);
        if self.forward_tx.send(ForwardJob { leader, req, bytes, deadline, tx }).await.is_err() {
            return Err(ForwardFailure::Answer(Error::Stopped));
        }
        rx.await.unwrap_or(Err(ForwardFailure::Answer(Error::Stopped)))
    }

    /// Sends one batch of forwarded requests to one leader and answers each job.
    async fn send_batch(&self, leader: u64, jobs: Vec<ForwardJob>) {
        match cairn_types::faults::link(leader) {
            cairn_types::faults::Link::Drop => {
                for j in jobs {
                    let _ = j.tx.send(Err(ForwardFailure::NotExecuted));
                }
                return;
            }
            cairn_types::faults::Link::Delay(d) => tokio::time::sleep(d).await,
            cairn_types::faults::Link::Pass => {}
        }
        let Some(node) = self.node.member_node(leader) else {
            for j in jobs {
                let _ = j.tx.send(Err(ForwardFailure::NotExecuted));
            }
            return;
        };
        let deadline = jobs.iter().map(|j| j.deadline).max().unwrap_or_else(Instant::now);
        let (reqs, txs): (Vec<_>, Vec<_>) = jobs.into_iter().map(|j| (j.req, j.tx)).unzip();
        let n = reqs.len();
        let batch = ForwardBatchRequest { requests: reqs };
        let t = Instant::now();
        let ttl = deadline.saturating_duration_since(t);
        // A message of the node's batched transport, on the long-lived stream of its forwards
        // lane (BENCHMARKS.md, "forwarded etcd requests on the range transport").
        let reply = self.node.mux.forward_meta(leader, &node, &batch, ttl).await;
        self.metrics.forward_batch_seconds.observe(t.elapsed().as_secs_f64());
        match reply {
            Ok(reply) => {
                let results = reply.results;
                if results.len() != n {
                    for tx in txs {
                        let _ =
                            tx.send(Err(ForwardFailure::Unknown(Error::Internal("short forward batch reply".into()))));
                    }
                    return;
                }
                for (tx, r) in txs.into_iter().zip(results) {
                    let r = match r.result {
                        Some(forward_result::Result::Reply(reply)) => Ok(reply),
                        Some(forward_result::Result::Error(e)) => {
                            Err(classify(&tonic::Status::new(tonic::Code::from_i32(e.code), e.message)))
                        }
                        None => Err(ForwardFailure::Unknown(Error::Internal("empty forward result".into()))),
                    };
                    let _ = tx.send(r);
                }
            }
            Err(e) => {
                let failure = || match &e {
                    // Nothing ran: the batch never left this member, or the leader refused it as
                    // a whole before running any of it (it could not decode it, serves no meta
                    // group, or is of a build that does not know forwarded batches here).
                    CallError::NotSent(_) | CallError::Refused(_) => ForwardFailure::NotExecuted,
                    CallError::Failed(_) if Instant::now() >= deadline => ForwardFailure::Unknown(Error::Timeout),
                    CallError::Failed(_) => ForwardFailure::Unknown(Error::TimeoutDueToConnectionLost),
                };
                for tx in txs {
                    let _ = tx.send(Err(failure()));
                }
            }
        }
    }
}

/// What a failed forward means for retrying it. Only a failure that proves the request never ran
/// may be retried: retrying one that ran would apply it twice (a compare-and-set that succeeded
/// would then report failure). The chaos harness found exactly that when "connection reset"
/// (the leader killed mid-request) was mistaken for "could not connect", and when a leader
/// stopping mid-proposal answered "server stopped".
fn classify(s: &tonic::Status) -> ForwardFailure {
    if let Some(e) = Error::from_etcd(s.code() as i32, s.message()) {
        return match e {
            // Refused before proposing (the target does not lead).
            Error::NotLeader => ForwardFailure::NotExecuted,
            // Stopping mid-proposal: the entry may still commit elsewhere.
            Error::Stopped => ForwardFailure::Unknown(Error::Stopped),
            e => ForwardFailure::Answer(e),
        };
    }
    match s.code() {
        // No connection could be made: the request never left this member.
        tonic::Code::Unavailable if cairn_raft::tcp::never_connected(s) => ForwardFailure::NotExecuted,
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => ForwardFailure::Unknown(Error::Timeout),
        tonic::Code::Unavailable | tonic::Code::Unknown => ForwardFailure::Unknown(Error::TimeoutDueToConnectionLost),
        _ => ForwardFailure::Answer(Error::Internal(format!("forwarded request failed: {s}"))),
    }
}

/// Batches forwarded requests: whatever is queued when a batch leaves goes in it, with at most
/// `FORWARD_BATCHES_IN_FLIGHT` batches outstanding.
pub(super) async fn forward_loop(cluster: std::sync::Weak<Router>, mut rx: mpsc::Receiver<ForwardJob>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(FORWARD_BATCHES_IN_FLIGHT));
    // A request taken off the queue that did not fit in the batch before: the next one's first.
    let mut held: Option<ForwardJob> = None;
    loop {
        let first = match held.take() {
            Some(j) => j,
            None => match rx.recv().await {
                Some(j) => j,
                None => return,
            },
        };
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        // As in `propose_loop`: requests already read off the sockets join this batch, so
        // fewer, fuller batches cross to the leader (four paired runs of scripts/profile-put:
        // 2–15% more puts/s, CPU per put lower in each).
        tokio::task::yield_now().await;
        let jobs;
        (jobs, held) = fill_batch(first, &mut rx);
        let Some(c) = cluster.upgrade() else { return };
        tokio::spawn(async move {
            let mut by_leader: HashMap<u64, Vec<ForwardJob>> = HashMap::new();
            for j in jobs {
                by_leader.entry(j.leader).or_default().push(j);
            }
            for (leader, jobs) in by_leader {
                c.send_batch(leader, jobs).await;
            }
            drop(permit);
        });
    }
}

/// A batch: `first`, then what is queued in `rx` while the batch stays within
/// [`FORWARD_BATCH_MAX`] requests and [`FORWARD_BATCH_BYTES_MAX`] bytes (`first` alone may be
/// larger). A request taken off the queue that did not fit comes back second, for the next batch.
fn fill_batch(first: ForwardJob, rx: &mut mpsc::Receiver<ForwardJob>) -> (Vec<ForwardJob>, Option<ForwardJob>) {
    let mut bytes = first.bytes;
    let mut jobs = vec![first];
    while jobs.len() < FORWARD_BATCH_MAX {
        match rx.try_recv() {
            Ok(j) if bytes + j.bytes > FORWARD_BATCH_BYTES_MAX => return (jobs, Some(j)),
            Ok(j) => {
                bytes += j.bytes;
                jobs.push(j);
            }
            Err(_) => break,
        }
    }
    (jobs, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(bytes: usize) -> ForwardJob {
        let (tx, _) = oneshot::channel();
        ForwardJob { leader: 1, req: ForwardRequest::default(), bytes, deadline: Instant::now(), tx }
    }

    fn sizes(jobs: &[ForwardJob]) -> Vec<usize> {
        jobs.iter().map(|j| j.bytes).collect()
    }

    #[tokio::test]
    async fn batches_are_bounded_in_requests_and_bytes() {
        const MIB: usize = 1024 * 1024;
        let (tx, mut rx) = mpsc::channel(2048);
        // Small requests: as many as the count allows.
        for _ in 0..FORWARD_BATCH_MAX + 3 {
            tx.try_send(job(100)).ok().unwrap();
        }
        let (jobs, held) = fill_batch(job(100), &mut rx);
        assert_eq!(jobs.len(), FORWARD_BATCH_MAX);
        assert!(held.is_none());
        let (jobs, held) = fill_batch(rx.try_recv().unwrap(), &mut rx);
        assert_eq!((jobs.len(), held.is_none()), (4, true), "the rest");

        // Large ones: the bytes cut the batch, and the one that did not fit leads the next.
        for b in [MIB, 2 * MIB, MIB, 3 * MIB] {
            tx.try_send(job(b)).ok().unwrap();
        }
        let (jobs, held) = fill_batch(job(MIB / 2), &mut rx);
        assert_eq!(sizes(&jobs), [MIB / 2, MIB, 2 * MIB]);
        let held = held.expect("the request that would pass the bound");
        assert_eq!(held.bytes, MIB);
        let (jobs, held) = fill_batch(held, &mut rx);
        assert_eq!(sizes(&jobs), [MIB, 3 * MIB]);
        assert!(held.is_none());

        // One request past the bound goes alone.
        tx.try_send(job(100)).ok().unwrap();
        let (jobs, held) = fill_batch(job(6 * MIB), &mut rx);
        assert_eq!(sizes(&jobs), [6 * MIB]);
        assert_eq!(held.map(|j| j.bytes), Some(100));
    }
}
