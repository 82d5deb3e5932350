//! Linearizable reads: a read-index round (Raft's ReadIndex, from the leader), shared by every
//! read queued when it starts, then waiting until this member has applied that far.

use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use cairn_proto::peer::{forward_reply, forward_request, ReadIndexRequest};
use cairn_raft::LogId;
use cairn_types::Error;

use super::Router;

impl Router {
    /// Makes the next local read linearizable: returns once this member has applied everything
    /// committed before the call (by the leader's read index). Inside `auth::guarded`, the
    /// caller's auth check is then confirmed still current (etcd's ErrAuthOldRevision).
    pub async fn read_barrier(&self) -> Result<(), Error> {
        self.catch_up().await?;
        crate::auth::recheck_after_barrier(&self.store().auth())
    }

    /// Returns once this member has applied everything committed before the call (by the
    /// leader's read index).
    pub async fn catch_up(&self) -> Result<(), Error> {
        let deadline = self.deadline();
        let (tx, rx) = oneshot::channel();
        self.read_index_tx.send(tx).await.map_err(|_| Error::Stopped)?;
        let log_id = rx.await.map_err(|_| Error::Stopped)??;
        let left = deadline.saturating_duration_since(Instant::now());
        self.node.await_applied(log_id, left).await
    }

    /// One read-index round: from this member if it leads, else from the leader.
    pub async fn read_index(&self) -> Result<LogId, Error> {
        self.on_leader_idempotent(
            || forward_request::Request::ReadIndex(ReadIndexRequest {}),
            |_| self.local_read_index(),
            |r| match r {
                forward_reply::Response::ReadIndex(r) => postcard::from_bytes(&r.log_id).ok(),
                _ => None,
            },
        )
        .await
    }

    /// The leader's read index. A round that no quorum confirmed in time (heartbeats answered
    /// late on a busy machine) is tried again while this member leads, until the request's
    /// deadline: etcd waits that long for its read index, and answers `leader changed` only when
    /// the leadership moved.
    pub async fn local_read_index(&self) -> Result<LogId, Error> {
        let deadline = self.deadline();
        loop {
            self.metrics.read_index_rounds.inc();
            match self.node.read_index(self.cfg.unsafe_lease_reads).await {
                Err(Error::LeaderChanged) if self.is_leader() && Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await
                }
                other => return other,
            }
        }
    }
}

/// Serves read-index requests one round at a time; every request queued when a round starts
/// shares its result. A round started after a read arrived is valid for that read.
pub(super) async fn read_index_loop(
    cluster: std::sync::Weak<Router>,
    mut rx: mpsc::Receiver<oneshot::Sender<Result<LogId, Error>>>,
) {
    while let Some(first) = rx.recv().await {
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        let Some(c) = cluster.upgrade() else { return };
        let r = c.read_index().await;
        drop(c);
        for w in waiters {
            let _ = w.send(r.clone());
        }
    }
}
