//! Proposals: ops queued on the leader are packed into log entries (`Op::Batch`), stamped with
//! the leader's clock and proposed through Raft, one entry in flight.

use std::sync::Arc;
use std::time::Instant;

use cairn_state::{Command, Op, Response};
use cairn_types::Error;
use tokio::sync::{mpsc, oneshot};

use super::Router;

/// Proposals waiting for a log entry. Whatever is queued when an entry is proposed goes in it
/// (up to these bounds), with at most `PROPOSALS_IN_FLIGHT` entries outstanding, so under load
/// many client requests share one entry's consensus and apply overhead. One entry in flight:
/// every entry costs an fsync on each member and a round of replication messages, and with one
/// at a time an entry carries everything that arrived while the previous one committed (about
/// 20 puts at 64 clients here, against 12 with two in flight): 7% less CPU per put, higher
/// throughput and a lower p99 (BENCHMARKS.md, notes).
const PROPOSE_BATCH_MAX: usize = 256;
const PROPOSE_BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
const PROPOSALS_IN_FLIGHT: usize = 1;
/// Committed but unapplied entries beyond which proposals are refused with etcd's
/// `etcdserver: too many requests` (etcd's `maxGapBetweenApplyAndCommitIndex`).
pub const APPLY_LAG_MAX: u64 = 5000;

pub(super) struct ProposeJob {
    pub(super) op: Op,
    pub(super) deadline: Instant,
    pub(super) tx: oneshot::Sender<Result<Response, Error>>,
}

tokio::task_local! {
    /// Inside [`originated`]: the forwarding member and its waiter id for the write being run.
    static ORIGIN: Option<(u64, u64)>;
}

/// Runs `f`, a write forwarded by member `member` that waits for it under `id` (both non-zero;
/// see [`Router::on_leader_write`]), so that its proposal is tagged `Op::Origin`.
pub async fn originated<F: std::future::Future>(member: u64, id: u64, f: F) -> F::Output {
    ORIGIN.scope((member != 0 && id != 0).then_some((member, id)), f).await
}

/// This member's wall clock in ms (cairn's clock, skewed by the test-only fault layer). Only
/// the leader reads it, to stamp commands; apply never does.
fn now_ms() -> u64 {
    cairn_types::clock::wall_ms()
}

impl Router {
    /// Proposes `op` on this member, which must lead. Concurrent proposals share log entries
    /// (see `propose_loop`).
    ///
    /// Inside [`crate::auth::guarded`], the op is proposed as `Op::Guarded` by the auth
    /// revision its permissions were checked at.
    pub async fn propose(&self, op: Op, deadline: Instant) -> Result<Response, Error> {
        // etcd's admission control: a leader whose apply has fallen this far behind its log
        // takes no more proposals until it catches up.
        if self.node.apply_lag() > APPLY_LAG_MAX {
            return Err(Error::TooManyRequests);
        }
        // A leader whose log cannot be written (no space left) takes no proposals until it can.
        if self.node.disk_full() {
            return Err(Error::DiskFull);
        }
        let op = match crate::auth::guard() {
            Some(g) => Op::Guarded { auth_revision: g.revision, user: g.user, op: Box::new(op) },
            None => op,
        };
        let op = match ORIGIN.try_with(|o| *o).ok().flatten() {
            Some((member, id)) => Op::Origin { member, id, op: Box::new(op) },
            None => op,
        };
        let (tx, rx) = oneshot::channel();
        if self.propose_tx.send(ProposeJob { op, deadline, tx }).await.is_err() {
            return Err(Error::Stopped);
        }
        rx.await.unwrap_or(Err(Error::Stopped))
    }

    /// Proposes one log entry and waits for it to be applied.
    async fn propose_entry(&self, op: Op, deadline: Instant) -> Result<Response, Error> {
        let cmd = Command::new(now_ms(), op);
        let left = deadline.saturating_duration_since(Instant::now());
        let started = Instant::now();
        let r = tokio::time::timeout(left, self.node.write(cmd)).await;
        self.metrics.proposal_seconds.observe(started.elapsed().as_secs_f64());
        match r {
            Err(_) => {
                self.metrics.proposals_failed.inc();
                Err(Error::Timeout)
            }
            Ok(Ok(Response::Error(e))) => {
                self.metrics.proposals_committed.inc();
                Err(e)
            }
            Ok(Ok(resp)) => {
                self.metrics.proposals_committed.inc();
                Ok(resp)
            }
            Ok(Err(e @ Error::TimeoutDueToLeaderFail)) => {
                self.metrics.proposals_failed.inc();
                Err(e)
            }
            Ok(Err(e)) => Err(e),
        }
    }
}

/// Packs queued proposals into log entries (`Op::Batch` when more than one).
pub(super) async fn propose_loop(cluster: std::sync::Weak<Router>, mut rx: mpsc::Receiver<ProposeJob>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(PROPOSALS_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        // Let the tasks that are ready to run now (requests already read, a forwarded batch
        // being unpacked) queue their proposals before this entry is cut: under the put
        // benchmark an entry then carries 22 puts instead of 18.6 (scripts/profile-put, four
        // paired runs), so fewer fsyncs and replication rounds per put.
        tokio::task::yield_now().await;
        let mut bytes = first.op.approx_bytes();
        let mut jobs = vec![first];
        while jobs.len() < PROPOSE_BATCH_MAX && bytes < PROPOSE_BATCH_BYTES_MAX {
            match rx.try_recv() {
                Ok(j) => {
                    bytes += j.op.approx_bytes();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        let Some(c) = cluster.upgrade() else { return };
        tokio::spawn(async move {
            let deadline = jobs.iter().map(|j| j.deadline).max().unwrap_or_else(Instant::now);
            if jobs.len() == 1 {
                let j = jobs.pop().expect("one job");
                let _ = j.tx.send(c.propose_entry(j.op, deadline).await);
            } else {
                let (ops, txs): (Vec<_>, Vec<_>) = jobs.into_iter().map(|j| (j.op, j.tx)).unzip();
                let n = ops.len();
                match c.propose_entry(Op::Batch(ops), deadline).await {
                    Ok(Response::Batch(rs)) if rs.len() == n => {
                        for (tx, r) in txs.into_iter().zip(rs) {
                            let _ = tx.send(match r {
                                Response::Error(e) => Err(e),
                                other => Ok(other),
                            });
                        }
                    }
                    Ok(other) => {
                        let e = Error::Internal(format!("unexpected reply to a batch: {other:?}"));
                        for tx in txs {
                            let _ = tx.send(Err(e.clone()));
                        }
                    }
                    Err(e) => {
                        for tx in txs {
                            let _ = tx.send(Err(e.clone()));
                        }
                    }
                }
            }
            drop(permit);
        });
    }
}
