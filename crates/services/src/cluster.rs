//! This member's view of the cluster, and request routing.
//!
//! Every member accepts every request. A write is proposed through Raft on the leader; any other
//! member forwards it to the leader over the peer listener (`cairn.peer.Peer/Forward`). A
//! linearizable read needs a read index from the leader (Raft's ReadIndex: the leader confirms
//! with a quorum that it still leads); the serving member then waits until it has applied up to
//! that index and reads its own state. Concurrent reads on one member share one read-index round.

use openraft::async_runtime::WatchReceiver;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_proto::etcdserverpb as pb;
use cairn_proto::peer::peer_client::PeerClient;
use cairn_proto::peer::{
    forward_reply, forward_request, forward_result, ForwardBatchRequest, ForwardReply, ForwardRequest, ReadIndexRequest,
};
use cairn_raft::types::LogId;
use cairn_raft::{Raft, RaftNode};
use cairn_shard::{Command, Op, Response, Store};
use cairn_types::{Error, Limits};
use openraft::error::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::raft::linearizable_read::{Linearizer, ReadLogId};
use openraft::{ReadPolicy, ServerState};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;

use crate::metrics::Metrics;

/// Who this member is and how it serves.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub name: String,
    pub member_id: u64,
    pub cluster_id: u64,
    pub client_urls: Vec<String>,
    pub peer_urls: Vec<String>,
    /// etcd's `--initial-cluster-token`; salts the ids of added members.
    pub token: String,
    pub limits: Limits,
    /// How long a request may wait for the cluster (etcd: 5 s plus two election timeouts).
    pub request_timeout: Duration,
    pub election_timeout: Duration,
    /// UNSAFE: serve linearizable reads from the leader's lease instead of a quorum round.
    pub unsafe_lease_reads: bool,
    /// UNSAFE: acknowledge writes without fsync (reported in metrics and status).
    pub unsafe_no_fsync: bool,
    /// How often watchers that asked for progress notifications get one (etcd's
    /// `--experimental-watch-progress-notify-interval`, default 10 minutes).
    pub watch_progress_interval: Duration,
    /// How long an auth token is valid (etcd's `--auth-token-ttl`).
    pub auth_token_ttl: Duration,
    /// bcrypt cost for password hashes (etcd's `--bcrypt-cost`).
    pub bcrypt_cost: u32,
}

pub struct Cluster {
    pub cfg: ClusterConfig,
    pub node: RaftNode,
    pub metrics: Arc<Metrics>,
    peers: Mutex<HashMap<u64, (String, PeerClient<Channel>)>>,
    read_index_tx: mpsc::Sender<oneshot::Sender<Result<LogId, Error>>>,
    forward_tx: mpsc::Sender<ForwardJob>,
    propose_tx: mpsc::Sender<ProposeJob>,
    /// Lease expiry, decided while this member leads.
    pub lessor: crate::lease::Lessor,
}

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

struct ProposeJob {
    op: Op,
    deadline: Instant,
    tx: oneshot::Sender<Result<Response, Error>>,
}

/// Forwarded requests waiting to go to the leader. Everything queued when a batch leaves goes in
/// it; at most this many batches are in flight, so under load batches grow instead of RPCs.
const FORWARD_BATCH_MAX: usize = 512;
const FORWARD_BATCHES_IN_FLIGHT: usize = 4;
/// How long a member that forwarded a write waits to apply it before answering anyway.
const CATCH_UP_WAIT: Duration = Duration::from_secs(1);

struct ForwardJob {
    leader: u64,
    req: ForwardRequest,
    deadline: Instant,
    tx: oneshot::Sender<Result<ForwardReply, ForwardFailure>>,
}

/// Why a forwarded request did not produce an answer.
enum ForwardFailure {
    /// Certainly not executed (the target is not the leader, or could not be reached):
    /// safe to retry elsewhere.
    NotExecuted,
    /// Maybe executed: the outcome is unknown.
    Unknown(Error),
    /// A definite answer from the leader.
    Answer(Error),
}

tokio::task_local! {
    /// Inside [`originated`]: the forwarding member and its waiter id for the write being run.
    static ORIGIN: Option<(u64, u64)>;
}

/// `run_on_leader`'s `from_apply` for requests answered by the leader's reply only.
type NotFromApply<T> = fn(Response) -> Option<Result<T, Error>>;

/// Runs `f`, a write forwarded by member `member` that waits for it under `id` (both non-zero;
/// see [`Cluster::on_leader_write`]), so that its proposal is tagged `Op::Origin`.
pub async fn originated<F: std::future::Future>(member: u64, id: u64, f: F) -> F::Output {
    ORIGIN.scope((member != 0 && id != 0).then_some((member, id)), f).await
}

/// This member's wall clock in ms (plus the test-only offset of the `failpoints` build). Only
/// the leader reads it, to stamp commands; apply never does.
fn now_ms() -> u64 {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    (ms + cairn_types::faults::clock_offset_ms()).max(0) as u64
}

impl Cluster {
    pub fn new(cfg: ClusterConfig, node: RaftNode, metrics: Arc<Metrics>) -> Arc<Cluster> {
        let (tx, rx) = mpsc::channel(65536);
        let (ftx, frx) = mpsc::channel(65536);
        let (ptx, prx) = mpsc::channel(65536);
        let c = Arc::new(Cluster {
            cfg,
            node,
            metrics,
            peers: Mutex::new(HashMap::new()),
            read_index_tx: tx,
            forward_tx: ftx,
            propose_tx: ptx,
            lessor: Default::default(),
        });
        tokio::spawn(read_index_loop(Arc::downgrade(&c), rx));
        tokio::spawn(forward_loop(Arc::downgrade(&c), frx));
        tokio::spawn(propose_loop(Arc::downgrade(&c), prx));
        tokio::spawn(count_leader_changes(Arc::downgrade(&c)));
        tokio::spawn(crate::lease::expiry_loop(Arc::downgrade(&c)));
        c
    }

    pub fn id(&self) -> u64 {
        self.cfg.member_id
    }

    pub fn raft(&self) -> &Raft {
        &self.node.raft
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.node.store
    }

    pub fn limits(&self) -> &Limits {
        &self.cfg.limits
    }

    /// etcd's response header for this member.
    pub fn header(&self, revision: i64) -> pb::ResponseHeader {
        // The term of the vote: the server metrics, read without cloning the full metrics.
        let term = self.raft().server_metrics().borrow_watched().vote.leader_id().term;
        pb::ResponseHeader { cluster_id: self.cfg.cluster_id, member_id: self.cfg.member_id, revision, raft_term: term }
    }

    pub fn deadline(&self) -> Instant {
        Instant::now() + self.cfg.request_timeout
    }

    // Leadership questions use openraft's server metrics, which change only with the vote, the
    // role or the membership; the full metrics change with every log write, and every change
    // wakes every waiting receiver.
    pub fn current_leader(&self) -> Option<u64> {
        self.raft().server_metrics().borrow_watched().current_leader
    }

    pub fn is_leader(&self) -> bool {
        let m = self.raft().server_metrics();
        let m = m.borrow_watched();
        m.state == ServerState::Leader && m.current_leader == Some(self.id())
    }

    /// The term this member leads in, if it leads.
    pub fn leading_term(&self) -> Option<u64> {
        let m = self.raft().server_metrics();
        let m = m.borrow_watched();
        (m.state == ServerState::Leader && m.current_leader == Some(self.id())).then(|| m.vote.leader_id().term)
    }

    /// Waits until some member is known to lead.
    pub async fn wait_leader(&self, deadline: Instant) -> Result<u64, Error> {
        let mut rx = self.raft().server_metrics();
        loop {
            if let Some(l) = rx.borrow_watched().current_leader {
                return Ok(l);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::NoLeader);
            }
            // Wait for a metrics change, but re-check at least every election timeout.
            let wait = left.min(self.cfg.election_timeout);
            let _ = tokio::time::timeout(wait, rx.changed()).await;
        }
    }

    fn peer(&self, id: u64) -> Result<PeerClient<Channel>, Error> {
        let url = {
            let m = self.raft().metrics();
            let m = m.borrow_watched();
            m.membership_config.membership().get_node(&id).and_then(|n| n.peer_urls.first().cloned())
        }
        .ok_or(Error::NoLeader)?;
        let mut peers = self.peers.lock();
        if let Some((u, c)) = peers.get(&id) {
            if *u == url {
                return Ok(c.clone());
            }
        }
        let ep = cairn_raft::network::peer_endpoint(&url).map_err(Error::Internal)?;
        let ch = cairn_raft::tcp::lazy_channel(&cairn_raft::network::peer_channel_settings(ep));
        let c = PeerClient::new(ch)
            .max_decoding_message_size(cairn_raft::network::PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(cairn_raft::network::PEER_MESSAGE_BYTES_MAX);
        peers.insert(id, (url, c.clone()));
        Ok(c)
    }

    /// Sends `req` to `leader` in the next forward batch.
    async fn forward_once(
        &self,
        leader: u64,
        req: ForwardRequest,
        deadline: Instant,
    ) -> Result<ForwardReply, ForwardFailure> {
        let (tx, rx) = oneshot::channel();
        self.metrics.forwarded.inc();
        if self.forward_tx.send(ForwardJob { leader, req, deadline, tx }).await.is_err() {
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
        let mut client = match self.peer(leader) {
            Ok(c) => c,
            Err(_) => {
                for j in jobs {
                    let _ = j.tx.send(Err(ForwardFailure::NotExecuted));
                }
                return;
            }
        };
        let deadline = jobs.iter().map(|j| j.deadline).max().unwrap_or_else(Instant::now);
        let (reqs, txs): (Vec<_>, Vec<_>) = jobs.into_iter().map(|j| (j.req, j.tx)).unzip();
        let n = reqs.len();
        let mut request = tonic::Request::new(ForwardBatchRequest { requests: reqs });
        request.set_timeout(deadline.saturating_duration_since(Instant::now()));
        let t = Instant::now();
        let reply = client.forward_batch(request).await;
        self.metrics.forward_batch_seconds.observe(t.elapsed().as_secs_f64());
        match reply {
            Ok(reply) => {
                let results = reply.into_inner().results;
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
            Err(s) => {
                for tx in txs {
                    let _ = tx.send(Err(classify(&s)));
                }
            }
        }
    }

    /// Runs `local` on the leader: here if this member leads, else by forwarding `fwd()` to the
    /// leader (whose peer handler runs the same `local` there). Retries across leader changes
    /// as long as the request certainly did not execute.
    pub async fn on_leader<T, F, Fut>(
        &self,
        fwd: impl Fn() -> forward_request::Request,
        local: F,
        unwrap: impl Fn(forward_reply::Response) -> Option<T>,
    ) -> Result<T, Error>
    where
        F: Fn(Instant) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        self.run_on_leader(false, fwd, local, unwrap, None::<NotFromApply<T>>).await
    }

    /// [`Cluster::on_leader`] for a write that the leader proposes as it is (a put, delete or
    /// transaction): when forwarded, it is proposed as an `Op::Origin` naming this member, and
    /// this member answers from its own apply of that entry (`from_apply` turns the applied
    /// response into the answer) or from the leader's reply, whichever comes first. The two are
    /// the same answer: apply is deterministic. As with etcd, whose followers answer a forwarded
    /// proposal when they apply it, the answer need not wait for the leader's reply to travel
    /// back after this member has applied the write; the reply stays for when this member does
    /// not apply the entry itself (a snapshot install skipped it) and for refusals.
    pub async fn on_leader_write<T, F, Fut>(
        &self,
        fwd: impl Fn() -> forward_request::Request,
        local: F,
        unwrap: impl Fn(forward_reply::Response) -> Option<T>,
        from_apply: impl Fn(Response) -> Option<T>,
    ) -> Result<T, Error>
    where
        F: Fn(Instant) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let from_apply = |r: Response| match r {
            Response::Error(e) => Some(Err(e)),
            other => from_apply(other).map(Ok),
        };
        self.run_on_leader(false, fwd, local, unwrap, Some(from_apply)).await
    }

    /// [`Cluster::on_leader`] for a request that may run twice (a read index, a lease
    /// keep-alive): when another member becomes leader while it is forwarded, it is sent to the
    /// new leader at once instead of waiting for the old one, which may be paused or cut off.
    pub async fn on_leader_idempotent<T, F, Fut>(
        &self,
        fwd: impl Fn() -> forward_request::Request,
        local: F,
        unwrap: impl Fn(forward_reply::Response) -> Option<T>,
    ) -> Result<T, Error>
    where
        F: Fn(Instant) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        self.run_on_leader(true, fwd, local, unwrap, None::<NotFromApply<T>>).await
    }

    async fn run_on_leader<T, F, Fut>(
        &self,
        idempotent: bool,
        fwd: impl Fn() -> forward_request::Request,
        local: F,
        unwrap: impl Fn(forward_reply::Response) -> Option<T>,
        from_apply: Option<impl Fn(Response) -> Option<Result<T, Error>>>,
    ) -> Result<T, Error>
    where
        F: Fn(Instant) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let deadline = self.deadline();
        loop {
            if Instant::now() >= deadline {
                return Err(Error::Timeout);
            }
            if self.is_leader() {
                match local(deadline).await {
                    Err(Error::NotLeader) => {
                        self.settle().await;
                        continue;
                    }
                    other => return other,
                }
            }
            let leader = self.wait_leader(deadline).await?;
            if leader == self.id() {
                self.settle().await;
                continue;
            }
            let g = crate::auth::guard();
            let waiter = from_apply.as_ref().map(|_| self.store().await_apply(self.id()));
            let req = ForwardRequest {
                request: Some(fwd()),
                auth_revision: g.as_ref().map(|g| g.revision),
                auth_user: g.map(|g| g.user).unwrap_or_default(),
                origin_member: if waiter.is_some() { self.id() } else { 0 },
                origin_id: waiter.as_ref().map_or(0, |w| w.id()),
            };
            let sent = self.forward_once(leader, req, deadline);
            let answered = |r: Response| {
                self.metrics.forwarded_answered_by_apply.inc();
                let answer = from_apply.as_ref().expect("a waiter only with from_apply");
                answer(r).unwrap_or_else(|| Err(Error::Internal("mismatched response to a forwarded write".into())))
            };
            let r = match waiter {
                Some(mut applied) => {
                    let r = tokio::select! {
                        biased;
                        r = &mut applied => return answered(r),
                        r = sent => r,
                    };
                    // A reply lost on the way back (the leader died after committing, the
                    // deadline passed) says nothing of the outcome, but this member may have
                    // applied the entry meanwhile: then the outcome is known.
                    if let Err(ForwardFailure::Unknown(_)) = &r {
                        if let Some(resp) = futures::FutureExt::now_or_never(&mut applied) {
                            return answered(resp);
                        }
                    }
                    r
                }
                None if idempotent => tokio::select! {
                    r = sent => r,
                    _ = self.leader_moved(leader) => continue,
                },
                None => sent.await,
            };
            match r {
                Ok(ForwardReply { response: Some(r) }) => {
                    return unwrap(r).ok_or_else(|| Error::Internal("mismatched reply to a forwarded request".into()))
                }
                Ok(ForwardReply { response: None }) => return Err(Error::Internal("empty forwarded reply".into())),
                Err(ForwardFailure::Answer(e)) | Err(ForwardFailure::Unknown(e)) => return Err(e),
                Err(ForwardFailure::NotExecuted) => self.settle().await,
            }
        }
    }

    /// Returns once a member other than `from` is known to lead.
    async fn leader_moved(&self, from: u64) {
        let mut rx = self.raft().server_metrics();
        loop {
            if rx.borrow_watched().current_leader.is_some_and(|l| l != from) {
                return;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Waits (at most `CATCH_UP_WAIT`, 1 s) until this member has applied revision `rev`, so a
    /// client that wrote through it and then reads serializably or watches here sees its own
    /// write, as with etcd, which answers a write after applying it on the member that took it.
    /// The write is committed either way; after the wait the answer goes out regardless.
    pub async fn caught_up(&self, rev: i64) {
        if self.store().current_revision() < rev {
            let t = Instant::now();
            let _ = self.store().wait_revision(rev, t + CATCH_UP_WAIT).await;
            self.metrics.catch_up_seconds.observe(t.elapsed().as_secs_f64());
        }
    }

    /// A short pause before retrying after a leadership change, so the new leader is known.
    async fn settle(&self) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    /// Proposes `op` on this member, which must lead. Concurrent proposals share log entries
    /// (see `propose_loop`).
    ///
    /// Inside [`crate::auth::guarded`], the op is proposed as `Op::Guarded` by the auth
    /// revision its permissions were checked at.
    pub async fn propose(&self, op: Op, deadline: Instant) -> Result<Response, Error> {
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
        let r = tokio::time::timeout(left, self.raft().client_write(cmd)).await;
        self.metrics.proposal_seconds.observe(started.elapsed().as_secs_f64());
        match r {
            Err(_) => {
                self.metrics.proposals_failed.inc();
                Err(Error::Timeout)
            }
            Ok(Ok(resp)) => {
                self.metrics.proposals_committed.inc();
                match resp.data {
                    Response::Error(e) => Err(e),
                    other => Ok(other),
                }
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Err(Error::NotLeader),
            Ok(Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)))) => {
                self.metrics.proposals_failed.inc();
                Err(Error::TimeoutDueToLeaderFail)
            }
            Ok(Err(RaftError::APIError(e))) => Err(Error::Internal(e.to_string())),
            Ok(Err(RaftError::Fatal(_))) => Err(Error::Stopped),
        }
    }

    /// Makes the next local read linearizable: returns once this member has applied everything
    /// committed before the call (by the leader's read index). Inside `auth::guarded`, the
    /// caller's auth check is then confirmed still current (etcd's ErrAuthOldRevision).
    pub async fn read_barrier(&self) -> Result<(), Error> {
        let deadline = self.deadline();
        let (tx, rx) = oneshot::channel();
        self.read_index_tx.send(tx).await.map_err(|_| Error::Stopped)?;
        let log_id = rx.await.map_err(|_| Error::Stopped)??;
        let left = deadline.saturating_duration_since(Instant::now());
        let lin = Linearizer::new(self.id(), ReadLogId::from_log_id(log_id), None);
        match lin.try_await_ready(self.raft(), Some(left)).await {
            Ok(Ok(_)) => crate::auth::recheck_after_barrier(&self.store().auth()),
            Ok(Err(_)) => Err(Error::Timeout),
            Err(_) => Err(Error::Stopped),
        }
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

    /// The leader's read index.
    pub async fn local_read_index(&self) -> Result<LogId, Error> {
        let policy = if self.cfg.unsafe_lease_reads { ReadPolicy::LeaseRead } else { ReadPolicy::ReadIndex };
        self.metrics.read_index_rounds.inc();
        match self.raft().get_read_linearizer(policy).await {
            Ok(lin) => Ok(*lin.read_log_id().log_id()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(_))) => Err(Error::NotLeader),
            Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(_))) => Err(Error::LeaderChanged),
            Err(RaftError::Fatal(_)) => Err(Error::Stopped),
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
    let m = s.message();
    match s.code() {
        // No connection could be made: the request never left this member.
        tonic::Code::Unavailable if m.contains("tcp connect error") || m.contains("error trying to connect") => {
            ForwardFailure::NotExecuted
        }
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => ForwardFailure::Unknown(Error::Timeout),
        tonic::Code::Unavailable | tonic::Code::Unknown => ForwardFailure::Unknown(Error::TimeoutDueToConnectionLost),
        _ => ForwardFailure::Answer(Error::Internal(format!("forwarded request failed: {s}"))),
    }
}

/// Serves read-index requests one round at a time; every request queued when a round starts
/// shares its result. A round started after a read arrived is valid for that read.
async fn read_index_loop(
    cluster: std::sync::Weak<Cluster>,
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

/// Counts leader changes for `etcd_server_leader_changes_seen_total`.
async fn count_leader_changes(cluster: std::sync::Weak<Cluster>) {
    let Some(c) = cluster.upgrade() else { return };
    let mut rx = c.raft().server_metrics();
    drop(c);
    let mut last = None;
    loop {
        let (leader, term) = {
            let m = rx.borrow_watched();
            // After a restart the vote restored from disk can name this member while it is not
            // (yet) leading: that is not a leader change.
            let leader = m.current_leader.filter(|l| *l != m.id || m.state == openraft::ServerState::Leader);
            (leader, m.vote.leader_id().term)
        };
        if leader.is_some() && leader != last {
            match cluster.upgrade() {
                Some(c) => {
                    c.metrics.leader_changes.inc();
                    let me = leader == Some(c.id());
                    tracing::info!(leader = format!("{:x}", leader.unwrap_or(0)), term, is_me = me, "leader elected");
                }
                None => return,
            };
            last = leader;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Batches forwarded requests: whatever is queued when a batch leaves goes in it, with at most
/// `FORWARD_BATCHES_IN_FLIGHT` batches outstanding.
async fn forward_loop(cluster: std::sync::Weak<Cluster>, mut rx: mpsc::Receiver<ForwardJob>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(FORWARD_BATCHES_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        // As in `propose_loop`: requests already read off the sockets join this batch, so
        // fewer, fuller batches cross to the leader (four paired runs of scripts/profile-put:
        // 2–15% more puts/s, CPU per put lower in each).
        tokio::task::yield_now().await;
        let mut jobs = vec![first];
        while jobs.len() < FORWARD_BATCH_MAX {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
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

/// Packs queued proposals into log entries (`Op::Batch` when more than one).
async fn propose_loop(cluster: std::sync::Weak<Cluster>, mut rx: mpsc::Receiver<ProposeJob>) {
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
