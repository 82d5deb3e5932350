//! One peer transport for every range: messages to a node, from all the ranges on this node,
//! go through one queue and leave as one `RangeBatch` call on the node pair's one HTTP/2
//! connection (the [`crate::network::PeerChannels`] the meta group uses too).
//!
//! The sending side ([`Mux`]) keeps a queue per target node. Its sender task takes everything
//! queued (up to [`BATCH_MESSAGES_MAX`] messages or [`BATCH_BYTES_MAX`] bytes), sends it as one
//! call and hands each message its own result; at most [`IN_FLIGHT_MAX`] calls per node are in
//! flight, so one slow batch (a snapshot) does not hold up heartbeats behind it. Queued bytes
//! per node are bounded ([`QUEUED_BYTES_MAX`]): a range whose message does not fit waits.
//!
//! The receiving side is [`RangeHandler`]: the node's [`crate::range::RangeHost`] answers each
//! message of a batch concurrently.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cairn_proto::peer::ranges_client::RangesClient;
use cairn_proto::peer::ranges_server::Ranges;
use cairn_proto::peer::{
    RangeBatchReply, RangeBatchRequest, RangeExecuteReply, RangeExecuteRequest, RangeMessage, RangeResult,
    RangeStatsReply, RangeStatsRequest,
};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RaftNetworkV2};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tonic::transport::Channel;

use crate::range::sm::SnapshotBytes;
use crate::range::types::{Outcome, RangeConfig, RangeId, RangeRequest, Snapshot, SnapshotMeta, Vote};
use crate::types::PeerNode;

/// Messages per batch call at most.
pub const BATCH_MESSAGES_MAX: usize = 512;
/// Encoded bytes per batch call at most (a single larger message travels alone).
pub const BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Batch calls in flight per node at most.
pub const IN_FLIGHT_MAX: usize = 4;
/// Bytes queued per node at most.
pub const QUEUED_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Largest batch call on the wire (a snapshot is one message).
pub const MESSAGE_BYTES_MAX: usize = crate::range::sm::SNAPSHOT_BYTES_MAX + (1 << 20);

/// Which Raft message a [`RangeMessage`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
    Append = 1,
    Vote = 2,
    PreVote = 3,
    TransferLeader = 4,
    /// A whole snapshot: `(vote, meta, data)`.
    Snapshot = 5,
    /// A node's liveness beat, for all its ranges at once (group 0; see
    /// [`crate::range::hibernate`]).
    Beat = 6,
}

impl Kind {
    pub fn from_u32(k: u32) -> Option<Kind> {
        Some(match k {
            1 => Kind::Append,
            2 => Kind::Vote,
            3 => Kind::PreVote,
            4 => Kind::TransferLeader,
            5 => Kind::Snapshot,
            6 => Kind::Beat,
            _ => return None,
        })
    }
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("raft types serialize")
}

struct Pending {
    msg: RangeMessage,
    ttl: Duration,
    reply: oneshot::Sender<Result<Vec<u8>, String>>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// Why a `Ranges/Execute` call failed.
enum CallError {
    /// It never reached the node (a cut link, no URL, a connection never made): nothing ran.
    NotSent(String),
    /// It may have reached the node.
    Failed(String),
}

/// The queue to one node.
struct PeerQueue {
    /// For client requests, which travel as calls of their own.
    client: RangesClient<Channel>,
    tx: mpsc::UnboundedSender<Pending>,
    /// Bytes of queued messages (permits are bytes, in KiB).
    budget: Arc<Semaphore>,
}

/// Queues by target node and its peer URL (a node that moved gets a new queue).
type Queues = HashMap<(u64, String), Arc<PeerQueue>>;

/// The sending side, shared by every range on the node.
#[derive(Clone)]
pub struct Mux {
    channels: crate::network::PeerChannels,
    peers: Arc<Mutex<Queues>>,
    stats: Arc<MuxStats>,
}

/// What the transport has sent: messages, and the calls that carried them; and the whole
/// snapshots among them (a follower the log had moved past), with their bytes.
#[derive(Debug, Default)]
pub struct MuxStats {
    pub messages: std::sync::atomic::AtomicU64,
    pub calls: std::sync::atomic::AtomicU64,
    pub snapshots: std::sync::atomic::AtomicU64,
    pub snapshot_bytes: std::sync::atomic::AtomicU64,
}

impl Mux {
    /// A transport over the node's peer connections.
    pub fn new(channels: crate::network::PeerChannels) -> Mux {
        Mux { channels, peers: Default::default(), stats: Default::default() }
    }

    pub fn stats(&self) -> &MuxStats {
        &self.stats
    }

    fn queue(&self, target: u64, node: &PeerNode) -> Option<Arc<PeerQueue>> {
        let url = node.peer_urls.first()?.clone();
        let mut peers = self.peers.lock();
        if let Some(q) = peers.get(&(target, url.clone())) {
            return Some(q.clone());
        }
        let channel = self.channels.get(&url).ok()?;
        let client = RangesClient::new(channel)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX);
        let (tx, rx) = mpsc::unbounded_channel();
        let q = Arc::new(PeerQueue {
            client: client.clone(),
            tx,
            budget: Arc::new(Semaphore::new(QUEUED_BYTES_MAX / 1024)),
        });
        tokio::spawn(sender(client, rx, self.stats.clone()));
        peers.insert((target, url), q.clone());
        Some(q)
    }

    /// One `Ranges/Execute` call to `target`: the reply's encoded outcome.
    async fn execute_call(
        &self,
        target: u64,
        node: &PeerNode,
        req: RangeExecuteRequest,
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        if let cairn_types::faults::Link::Drop = cairn_types::faults::link(target) {
            return Err(CallError::NotSent("link cut by fault injection".into()));
        }
        let Some(q) = self.queue(target, node) else {
            return Err(CallError::NotSent(format!("node {target:x} has no usable peer URL")));
        };
        let mut client = q.client.clone();
        let mut req = tonic::Request::new(req);
        req.set_timeout(timeout);
        crate::network::stamp(&mut req);
        match client.execute(req).await {
            Ok(r) => Ok(r.into_inner().outcome.to_vec()),
            Err(s) if crate::tcp::never_connected(&s) => Err(CallError::NotSent(s.message().to_string())),
            Err(s) => Err(CallError::Failed(format!("node {target:x}: {}", s.message()))),
        }
    }

    /// Sends a client request to `target`, which runs it if it leads `group`. Whether a
    /// failed call may have run is told apart: a connection never made did not run it.
    pub async fn execute(&self, target: u64, node: &PeerNode, req: RangeRequest, timeout: Duration) -> Outcome {
        let RangeRequest { group, epoch, read, cmd, admin } = req;
        let admin = admin.map(|a| encode(&a)).unwrap_or_default();
        let req =
            RangeExecuteRequest { group, epoch, read, cmd: cmd.into(), admin: admin.into(), ..Default::default() };
        match self.execute_call(target, node, req, timeout).await {
            Ok(b) => postcard::from_bytes(&b)
                .unwrap_or_else(|e| Outcome::Unknown(format!("undecodable answer from node {target:x}: {e}"))),
            Err(CallError::NotSent(e)) => Outcome::Unavailable(e),
            Err(CallError::Failed(e)) if read => Outcome::Unavailable(e),
            Err(CallError::Failed(e)) => Outcome::Unknown(e),
        }
    }

    /// Sends several reads of `group` to `target`, which runs them together if it leads the
    /// range (see `RangeHost::execute_reads`).
    pub async fn execute_reads(
        &self,
        target: u64,
        node: &PeerNode,
        group: RangeId,
        epoch: u64,
        cmds: &[Vec<u8>],
        timeout: Duration,
    ) -> Result<Vec<Outcome>, Outcome> {
        let reads = cmds.iter().map(|c| c.clone().into()).collect();
        let req = RangeExecuteRequest { group, epoch, read: true, reads, ..Default::default() };
        match self.execute_call(target, node, req, timeout).await {
            Ok(b) => postcard::from_bytes(&b)
                .unwrap_or_else(|e| Err(Outcome::Unavailable(format!("undecodable answer from node {target:x}: {e}")))),
            Err(CallError::NotSent(e) | CallError::Failed(e)) => Err(Outcome::Unavailable(e)),
        }
    }

    /// Sends several writes of `group` to `target`, which queues each as a lone write (see
    /// `RangeHost::execute_writes`). A failed call answers each as a lone write's would: not
    /// run when the connection was never made, unknown otherwise.
    pub async fn execute_writes(
        &self,
        target: u64,
        node: &PeerNode,
        group: RangeId,
        epoch: u64,
        cmds: &[Vec<u8>],
        timeout: Duration,
    ) -> Vec<Outcome> {
        let all = |o: Outcome| vec![o; cmds.len()];
        let writes = cmds.iter().map(|c| c.clone().into()).collect();
        let req = RangeExecuteRequest { group, epoch, writes, ..Default::default() };
        match self.execute_call(target, node, req, timeout).await {
            Ok(b) => match postcard::from_bytes::<Vec<Outcome>>(&b) {
                Ok(v) if v.len() == cmds.len() => v,
                Ok(v) => {
                    all(Outcome::Unknown(format!("node {target:x} answered {} of {} writes", v.len(), cmds.len())))
                }
                Err(e) => all(Outcome::Unknown(format!("undecodable answer from node {target:x}: {e}"))),
            },
            Err(CallError::NotSent(e)) => all(Outcome::Unavailable(e)),
            Err(CallError::Failed(e)) => all(Outcome::Unknown(e)),
        }
    }

    /// Asks `target` for its replicas' figures.
    pub async fn replica_stats(
        &self,
        target: u64,
        node: &PeerNode,
        timeout: Duration,
    ) -> Result<Vec<crate::range::ReplicaStats>, String> {
        if let cairn_types::faults::Link::Drop = cairn_types::faults::link(target) {
            return Err("link cut by fault injection".into());
        }
        let q = self.queue(target, node).ok_or_else(|| format!("node {target:x} has no usable peer URL"))?;
        let mut client = q.client.clone();
        let mut req = tonic::Request::new(RangeStatsRequest {});
        req.set_timeout(timeout);
        crate::network::stamp(&mut req);
        let r = client.stats(req).await.map_err(|s| s.message().to_string())?;
        postcard::from_bytes(&r.into_inner().stats).map_err(|e| format!("undecodable stats from node {target:x}: {e}"))
    }

    /// Sends one message of `group` to `target` and waits for its answer.
    pub(crate) async fn call(
        &self,
        target: u64,
        node: &PeerNode,
        group: RangeId,
        kind: Kind,
        data: Vec<u8>,
        ttl: Duration,
    ) -> Result<Vec<u8>, Unreachable<RangeConfig>> {
        if let cairn_types::faults::Link::Drop = cairn_types::faults::link(target) {
            return Err(Unreachable::from_string("link cut by fault injection"));
        }
        let q = self
            .queue(target, node)
            .ok_or_else(|| Unreachable::from_string(format!("node {target:x} has no usable peer URL")))?;
        let kib = (data.len() / 1024 + 1).min(QUEUED_BYTES_MAX / 1024) as u32;
        let permit = q.budget.clone().acquire_many_owned(kib).await.map_err(Unreachable::from_string)?;
        let (reply, rx) = oneshot::channel();
        let msg = RangeMessage { group, kind: kind as u32, data: data.into() };
        q.tx.send(Pending { msg, ttl, reply, _permit: permit })
            .map_err(|_| Unreachable::from_string("range transport stopped"))?;
        match tokio::time::timeout(ttl, rx).await {
            Ok(Ok(Ok(b))) => Ok(b),
            Ok(Ok(Err(e))) => Err(Unreachable::from_string(e)),
            Ok(Err(_)) => Err(Unreachable::from_string("range transport dropped the message")),
            Err(_) => Err(Unreachable::from_string(format!("no answer from node {target:x} within {ttl:?}"))),
        }
    }
}

/// Sends what is queued for one node, batch after batch, a few in flight.
async fn sender(client: RangesClient<Channel>, mut rx: mpsc::UnboundedReceiver<Pending>, stats: Arc<MuxStats>) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT_MAX));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let mut bytes = first.msg.data.len();
        let mut batch = vec![first];
        while batch.len() < BATCH_MESSAGES_MAX && bytes < BATCH_BYTES_MAX {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.msg.data.len();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let mut client = client.clone();
        stats.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        stats.messages.fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(async move {
            let _permit = permit;
            let ttl = batch.iter().map(|p| p.ttl).max().unwrap_or(Duration::from_secs(1));
            let (msgs, waiters): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.msg, (p.reply, p._permit))).unzip();
            let mut req = tonic::Request::new(RangeBatchRequest { messages: msgs });
            req.set_timeout(ttl);
            crate::network::stamp(&mut req);
            match client.batch(req).await {
                Ok(r) => {
                    let results = r.into_inner().results;
                    let n = results.len();
                    let mut results = results.into_iter();
                    for (reply, _) in waiters {
                        let r = match results.next() {
                            Some(RangeResult { data, error }) if error.is_empty() => Ok(data.to_vec()),
                            Some(RangeResult { error, .. }) => Err(error),
                            None => Err(format!("the batch's answer holds {n} results, too few")),
                        };
                        let _ = reply.send(r);
                    }
                }
                Err(s) => {
                    for (reply, _) in waiters {
                        let _ = reply.send(Err(s.message().to_string()));
                    }
                }
            }
        });
    }
}

/// openraft's network factory for one range.
#[derive(Clone)]
pub struct RangeNetwork {
    pub group: RangeId,
    pub mux: Mux,
}

impl RaftNetworkFactory<RangeConfig> for RangeNetwork {
    type Network = RangeConn;

    async fn new_client(&mut self, target: u64, node: &PeerNode) -> RangeConn {
        RangeConn { group: self.group, target, node: node.clone(), mux: self.mux.clone() }
    }
}

/// One range's connection to one node (a view of the shared transport).
pub struct RangeConn {
    group: RangeId,
    target: u64,
    node: PeerNode,
    mux: Mux,
}

impl RangeConn {
    async fn rpc<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        kind: Kind,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, RPCError<RangeConfig>> {
        let b = self.mux.call(self.target, &self.node, self.group, kind, encode(req), ttl).await?;
        postcard::from_bytes(&b).map_err(|e| RPCError::Network(NetworkError::from_string(e)))
    }
}

impl RaftNetworkV2<RangeConfig> for RangeConn {
    type SnapshotData = SnapshotBytes;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<RangeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<RangeConfig>, RPCError<RangeConfig>> {
        self.rpc(Kind::Append, &rpc, option.soft_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<RangeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<RangeConfig>, RPCError<RangeConfig>> {
        self.rpc(Kind::Vote, &rpc, option.soft_ttl()).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<RangeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<RangeConfig>, RPCError<RangeConfig>> {
        self.rpc(Kind::PreVote, &rpc, option.soft_ttl()).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<RangeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<RangeConfig>, RPCError<RangeConfig>> {
        self.rpc(Kind::TransferLeader, &req, option.soft_ttl()).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<RangeConfig>, StreamingError<RangeConfig>> {
        let data = snapshot.snapshot.into_inner();
        let stats = self.mux.stats();
        stats.snapshots.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        stats.snapshot_bytes.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let msg: (Vote, SnapshotMeta, serde_bytes::ByteBuf) = (vote, snapshot.meta, serde_bytes::ByteBuf::from(data));
        let call = self.rpc::<_, SnapshotResponse<RangeConfig>>(Kind::Snapshot, &msg, Duration::from_secs(120));
        tokio::select! {
            r = call => r.map_err(|e| match e {
                RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                other => StreamingError::Network(NetworkError::from_string(other)),
            }),
            closed = cancel => Err(StreamingError::Closed(closed)),
        }
    }
}

/// The receiving side: answers one range's message (the node's range host).
#[tonic::async_trait]
pub trait RangeHandler: Send + Sync + 'static {
    async fn handle(&self, group: RangeId, kind: Kind, data: &[u8]) -> Result<Vec<u8>, String>;
    /// A client request forwarded by another node.
    async fn execute(&self, req: RangeRequest) -> Outcome;
    /// Several reads of one range forwarded by another node, run together.
    async fn execute_reads(&self, group: RangeId, epoch: u64, cmds: Vec<Vec<u8>>) -> Result<Vec<Outcome>, Outcome>;
    /// Several writes of one range forwarded by another node, each with its own outcome.
    async fn execute_writes(&self, group: RangeId, epoch: u64, cmds: Vec<Vec<u8>>) -> Vec<Outcome>;
    /// The node's replicas' figures.
    async fn stats(&self) -> Vec<crate::range::ReplicaStats>;
}

/// Answers a whole batch, each message concurrently, results in order.
pub async fn handle_batch(h: &dyn RangeHandler, msgs: Vec<RangeMessage>) -> Vec<RangeResult> {
    let futs = msgs.into_iter().map(|m| async move {
        let r = match Kind::from_u32(m.kind) {
            Some(kind) => h.handle(m.group, kind, &m.data).await,
            None => Err(format!("unknown range message kind {}", m.kind)),
        };
        match r {
            Ok(data) => RangeResult { data: data.into(), error: String::new() },
            Err(error) => RangeResult { data: Default::default(), error },
        }
    });
    futures::future::join_all(futs).await
}

/// The `cairn.peer.Ranges` gRPC service: checks the cluster ID, then hands the batch to the
/// node's range host.
#[derive(Clone)]
pub struct RangesService {
    cluster_id: u64,
    handler: Arc<dyn RangeHandler>,
}

impl RangesService {
    pub fn new(cluster_id: u64, handler: Arc<dyn RangeHandler>) -> Self {
        RangesService { cluster_id, handler }
    }

    /// The tonic server for the peer listener.
    pub fn server(self) -> cairn_proto::peer::ranges_server::RangesServer<RangesService> {
        cairn_proto::peer::ranges_server::RangesServer::new(self)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX)
    }
}

#[tonic::async_trait]
impl Ranges for RangesService {
    async fn batch(
        &self,
        req: tonic::Request<RangeBatchRequest>,
    ) -> Result<tonic::Response<RangeBatchReply>, tonic::Status> {
        crate::network::check_cluster_id(req.metadata(), self.cluster_id, false)?;
        let results = handle_batch(&*self.handler, req.into_inner().messages).await;
        Ok(tonic::Response::new(RangeBatchReply { results }))
    }

    async fn execute(
        &self,
        req: tonic::Request<RangeExecuteRequest>,
    ) -> Result<tonic::Response<RangeExecuteReply>, tonic::Status> {
        crate::network::check_cluster_id(req.metadata(), self.cluster_id, false)?;
        let r = req.into_inner();
        if !r.writes.is_empty() {
            let cmds = r.writes.into_iter().map(|c| c.to_vec()).collect();
            let outcomes = self.handler.execute_writes(r.group, r.epoch, cmds).await;
            return Ok(tonic::Response::new(RangeExecuteReply { outcome: encode(&outcomes).into() }));
        }
        if !r.reads.is_empty() {
            let cmds = r.reads.into_iter().map(|c| c.to_vec()).collect();
            let outcome = self.handler.execute_reads(r.group, r.epoch, cmds).await;
            return Ok(tonic::Response::new(RangeExecuteReply { outcome: encode(&outcome).into() }));
        }
        let admin = if r.admin.is_empty() {
            None
        } else {
            Some(
                postcard::from_bytes(&r.admin)
                    .map_err(|e| tonic::Status::invalid_argument(format!("undecodable range change: {e}")))?,
            )
        };
        let req = RangeRequest { group: r.group, epoch: r.epoch, read: r.read, cmd: r.cmd.to_vec(), admin };
        let outcome = self.handler.execute(req).await;
        Ok(tonic::Response::new(RangeExecuteReply { outcome: encode(&outcome).into() }))
    }

    async fn stats(
        &self,
        req: tonic::Request<RangeStatsRequest>,
    ) -> Result<tonic::Response<RangeStatsReply>, tonic::Status> {
        crate::network::check_cluster_id(req.metadata(), self.cluster_id, false)?;
        let stats = self.handler.stats().await;
        Ok(tonic::Response::new(RangeStatsReply { stats: encode(&stats).into() }))
    }
}
