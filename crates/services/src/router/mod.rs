//! The router: this member's view of the cluster, and where each request runs.
//!
//! Every member accepts every request. A write is proposed through Raft on the leader; any other
//! member forwards it to the leader, in batches on the node's peer transport (`forward`). A
//! linearizable read needs a read index from the leader (Raft's ReadIndex: the leader confirms
//! with a quorum that it still leads); the serving member then waits until it has applied up to
//! that index and reads its own state. Concurrent reads on one member share one read-index round.
//!
//! - this file: [`Router`] itself, leadership, and running a request on the leader
//!   ([`Router::on_leader`] and its variants), here or by forwarding;
//! - `forward`: batching forwarded requests to the leader and classifying their failures;
//! - `propose`: packing the leader's proposals into log entries;
//! - `read`: the shared read-index rounds behind [`Router::read_barrier`];
//! - `waiters`: forwarded writes waiting for this member's own apply of them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_proto::etcdserverpb as pb;
use cairn_proto::peer::{forward_reply, forward_request, ForwardReply, ForwardRequest};
use cairn_raft::{LogId, RaftNode};
use cairn_state::{Response, Store};
use cairn_types::{Error, Limits};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use forward::{forward_loop, ForwardFailure, ForwardJob};
pub use propose::originated;
use propose::{propose_loop, ProposeJob};
use read::read_index_loop;
pub use waiters::ApplyWaiter;
use waiters::Waiters;

/// Who this member is and how it serves.
#[derive(Debug, Clone)]
pub struct MemberConfig {
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

pub struct Router {
    pub cfg: MemberConfig,
    /// The Raft group (the whole keyspace today). Front ends never touch it.
    pub(crate) node: RaftNode,
    pub metrics: Arc<Metrics>,
    /// Forwarded writes waiting for this member's apply (etcd's wait registry).
    waiters: Arc<Waiters>,
    read_index_tx: mpsc::Sender<oneshot::Sender<Result<LogId, Error>>>,
    forward_tx: mpsc::Sender<ForwardJob>,
    propose_tx: mpsc::Sender<ProposeJob>,
    /// Lease expiry, decided while this member leads.
    pub lessor: crate::lease::Lessor,
}

/// How long a member that forwarded a write waits to apply it before answering anyway.
const CATCH_UP_WAIT: Duration = Duration::from_secs(1);

/// `run_on_leader`'s `from_apply` for requests answered by the leader's reply only.
type NotFromApply<T> = fn(Response) -> Option<Result<T, Error>>;

impl Router {
    pub fn new(cfg: MemberConfig, node: RaftNode, metrics: Arc<Metrics>) -> Arc<Router> {
        let (tx, rx) = mpsc::channel(65536);
        let (ftx, frx) = mpsc::channel(65536);
        let (ptx, prx) = mpsc::channel(65536);
        let waiters = Arc::new(Waiters::new());
        let sink = waiters.clone();
        node.sm.set_answer_sink(Arc::new(move |answers| sink.answer(answers)));
        let c = Arc::new(Router {
            cfg,
            node,
            metrics,
            waiters,
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

    /// The replicated state this member has applied. Services read it; front ends go through
    /// the services.
    pub(crate) fn store(&self) -> &Arc<Store> {
        &self.node.store
    }

    /// Initializes a new cluster's membership (member id to peer URLs) unless this member
    /// already has one.
    pub async fn initialize_if_new(&self, members: std::collections::BTreeMap<u64, Vec<String>>) {
        let members = members.into_iter().map(|(id, urls)| (id, cairn_raft::PeerNode { peer_urls: urls })).collect();
        self.node.initialize_if_new(members).await
    }

    /// Why Raft stopped on this member, once it has stopped on a fatal error.
    pub async fn fatal(&self) -> Option<String> {
        self.node.fatal().await
    }

    /// Whether this member is in the last committed membership.
    pub fn is_member(&self) -> bool {
        self.node.in_committed_membership(self.id())
    }

    /// Stops Raft and flushes the log and the store.
    pub async fn shutdown(&self) {
        self.node.shutdown().await
    }

    pub fn limits(&self) -> &Limits {
        &self.cfg.limits
    }

    /// etcd's response header for this member.
    pub fn header(&self, revision: i64) -> pb::ResponseHeader {
        let term = self.node.leadership().term;
        pb::ResponseHeader { cluster_id: self.cfg.cluster_id, member_id: self.cfg.member_id, revision, raft_term: term }
    }

    pub fn deadline(&self) -> Instant {
        Instant::now() + self.cfg.request_timeout
    }

    pub fn current_leader(&self) -> Option<u64> {
        self.node.leadership().leader
    }

    pub fn is_leader(&self) -> bool {
        self.node.leadership().leading
    }

    /// False once this member has gone longer than an election timeout without a leader it
    /// hears from (cut off, or during an election): etcd's test for `hasleader` requests.
    pub fn has_leader_now(&self) -> bool {
        self.node.leaderless_for() <= self.cfg.election_timeout
    }

    /// The term this member leads in, if it leads.
    pub fn leading_term(&self) -> Option<u64> {
        let l = self.node.leadership();
        l.leading.then_some(l.term)
    }

    /// Waits until some member is known to lead.
    pub async fn wait_leader(&self, deadline: Instant) -> Result<u64, Error> {
        let mut rx = self.node.leader_watch();
        loop {
            if let Some(l) = rx.now().leader {
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

    /// [`Router::on_leader`] for a write that the leader proposes as it is (a put, delete or
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
        // A member whose log cannot be written cannot apply the write either: refuse it now.
        if self.node.disk_full() {
            return Err(Error::DiskFull);
        }
        let from_apply = |r: Response| match r {
            Response::Error(e) => Some(Err(e)),
            other => from_apply(other).map(Ok),
        };
        self.run_on_leader(false, fwd, local, unwrap, Some(from_apply)).await
    }

    /// [`Router::on_leader`] for a request that may run twice (a read index, a lease
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
            let waiter = from_apply.as_ref().map(|_| self.waiters.register());
            let req = ForwardRequest {
                request: Some(fwd()),
                auth_revision: g.as_ref().map(|g| g.revision),
                auth_token: g.as_ref().and_then(|g| g.token.as_deref()).unwrap_or_default().to_string(),
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
        let mut rx = self.node.leader_watch();
        loop {
            if rx.now().leader.is_some_and(|l| l != from) {
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
}

/// Counts leader changes for `etcd_server_leader_changes_seen_total`.
async fn count_leader_changes(cluster: std::sync::Weak<Router>) {
    let Some(c) = cluster.upgrade() else { return };
    let mut rx = c.node.leader_watch();
    let me = c.id();
    drop(c);
    let mut last = None;
    loop {
        let now = rx.now();
        // After a restart the vote restored from disk can name this member while it is not
        // (yet) leading: that is not a leader change.
        let (leader, term) = (now.leader.filter(|l| *l != me || now.leading), now.term);
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

mod forward;
mod propose;
mod read;
mod waiters;
