//! One peer transport for every range: messages to a node, from all the ranges on this node,
//! go through one queue and leave as one `RangeBatch` call on the node pair's one HTTP/2
//! connection (the [`crate::network::PeerChannels`] the meta group uses too).
//!
//! The sending side ([`Mux`]) keeps queues per target node, one per [`Lane`]. A lane's sender
//! task takes everything queued (up to [`BATCH_MESSAGES_MAX`] messages or [`BATCH_BYTES_MAX`]
//! bytes), sends it as one batch and hands each message its own result; at most
//! [`IN_FLIGHT_MAX`] batches per lane are unanswered. Queued bytes per lane are bounded
//! ([`QUEUED_BYTES_MAX`]): a range whose message does not fit waits.
//!
//! A batch travels as one message of a long-lived `Ranges/Stream` to the node (one per lane,
//! `BatchStream`), answered by id in whatever order batches finish, not as an HTTP/2 call
//! of its own: a call's headers, stream and server task cost more than a small batch. Whole
//! snapshots, too large to share a stream with heartbeats, go as `Ranges/Batch` calls.
//!
//! Client requests forwarded to a range's leader ([`Kind::Execute`]) travel the same way, in
//! lanes of their own: a batch's answer waits for its slowest message, and a write's answer
//! waits for its commit, which must not hold up the Raft messages that commit it, nor reads.
//! Batching them matters: a node proxying a pipeline sends the leaders several requests per
//! pipeline, and as calls of their own their HTTP/2 streams cost more than the requests
//! (BENCHMARKS.md, "forwarded requests share the batches"). etcd requests forwarded to the meta
//! group's leader ([`Kind::Forward`]) have a lane of their own as well: the meta group's
//! commits must not hold up the ranges' forwarded writes, nor theirs the meta group's.
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

use cairn_proto::peer::{RangeStreamReply, RangeStreamRequest};

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
/// Bytes of batches queued on one outgoing stream and not yet taken by HTTP/2, at most. Every
/// message holds its lane's budget ([`QUEUED_BYTES_MAX`]) until it is answered or its answer
/// times out, so a node that answers never gets past the budget; past it by this margin, it
/// has stopped reading (a gray failure: the connection up, the node stuck), and the stream is
/// given up with what it queued. Without this bound, batches whose answers timed out piled up
/// here for as long as the node stayed stuck.
///
/// Giving up drops the batches HTTP/2 has not taken; it cannot reset the stream itself (hyper
/// keeps the stream's sending half while it waits for the node's flow-control window), which
/// keeps the batch HTTP/2 took last and its buffer until the connection closes: a few MiB per
/// stream given up, not a queue without end.
pub const STREAM_UNREAD_BYTES_MAX: usize = QUEUED_BYTES_MAX + (16 << 20);
/// Batches of one incoming stream handled at once, at most (each sender keeps at most
/// [`IN_FLIGHT_MAX`] unanswered, so this bounds only a misbehaving one).
pub const STREAM_BATCHES_MAX: usize = 64;
/// Bytes of the batches of one incoming stream handled at once, at most (a sender's lane holds
/// at most [`QUEUED_BYTES_MAX`] unanswered); past it the stream is not read until some finish.
pub const STREAM_BATCH_BYTES_MAX: usize = 4 * QUEUED_BYTES_MAX;

/// The group id of the meta group's messages. They share the batches with the ranges' (one
/// transport carries every group), and the receiver hands them to the node's meta group
/// (`crate::server::MetaReceiver`), not to its ranges. Range ids count up from 1; this one is
/// never a range's.
pub const META_GROUP: RangeId = u64::MAX;

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
    /// A client request forwarded to the range's leader: a protobuf-encoded
    /// `RangeExecuteRequest`, answered with its reply's `outcome`.
    Execute = 7,
    /// etcd requests forwarded to the meta group's leader (group [`META_GROUP`]): a
    /// protobuf-encoded `ForwardBatchRequest`, answered with a `ForwardBatchReply`.
    Forward = 8,
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
            7 => Kind::Execute,
            8 => Kind::Forward,
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
    reply: oneshot::Sender<Result<Vec<u8>, CallError>>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// Why a message got no answer.
#[derive(Debug, Clone)]
pub enum CallError {
    /// It never reached the node (a cut link, no URL, a connection never made): nothing ran.
    NotSent(String),
    /// It may have reached the node.
    Failed(String),
    /// The node answered it with an error of its own (the receiver's handler refused it; what
    /// that means depends on the message's kind).
    Refused(String),
}

impl CallError {
    pub fn message(self) -> String {
        match self {
            CallError::NotSent(m) | CallError::Failed(m) | CallError::Refused(m) => m,
        }
    }
}

/// Which of a node's queues a message waits in. A batch is answered when its last message is,
/// so messages that wait for different things go in different batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Raft's own messages: answered as soon as the receiver has handled them.
    Raft = 0,
    /// Forwarded reads: answered after a read barrier.
    Reads = 1,
    /// Forwarded writes and range changes: answered when committed and applied.
    Writes = 2,
    /// Whole snapshots, each a `Ranges/Batch` call of its own.
    Snapshots = 3,
    /// etcd requests forwarded to the meta group's leader ([`Kind::Forward`]): answered when
    /// the meta group has run them.
    Forwards = 4,
}

/// One lane's queue to a node.
struct LaneQueue {
    tx: mpsc::UnboundedSender<Pending>,
    /// Bytes of queued messages (permits are bytes, in KiB).
    budget: Arc<Semaphore>,
}

/// The queues to one node.
struct PeerQueue {
    /// For the node's figures, asked for by calls of their own.
    client: RangesClient<Channel>,
    lanes: [LaneQueue; 5],
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

impl std::fmt::Debug for Mux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mux").field("peers", &self.peers.lock().len()).finish()
    }
}

impl Mux {
    /// A transport over the node's peer connections.
    pub fn new(channels: crate::network::PeerChannels) -> Mux {
        Mux { channels, peers: Default::default(), stats: Default::default() }
    }

    /// The peer connections it sends on.
    pub fn channels(&self) -> &crate::network::PeerChannels {
        &self.channels
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
        let lane = |way: Way| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(sender(way, rx, self.stats.clone()));
            LaneQueue { tx, budget: Arc::new(Semaphore::new(QUEUED_BYTES_MAX / 1024)) }
        };
        let stream = || Way::Stream(Arc::new(BatchStream::new(client.clone())));
        let lanes = [stream(), stream(), stream(), Way::Calls(client.clone()), stream()].map(lane);
        let q = Arc::new(PeerQueue { client, lanes });
        peers.insert((target, url), q.clone());
        Some(q)
    }

    /// A forwarded client request to `target`, in the lane its answer waits for: the reply's
    /// encoded outcome.
    async fn execute_call(
        &self,
        target: u64,
        node: &PeerNode,
        req: RangeExecuteRequest,
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        let lane = if req.read { Lane::Reads } else { Lane::Writes };
        let group = req.group;
        let data = prost::Message::encode_to_vec(&req);
        self.send(target, node, lane, group, Kind::Execute, data, timeout).await.map_err(|e| match e {
            CallError::Failed(m) => CallError::Failed(format!("node {target:x}: {m}")),
            e => e,
        })
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
            Err(CallError::Failed(e) | CallError::Refused(e)) if read => Outcome::Unavailable(e),
            Err(CallError::Failed(e) | CallError::Refused(e)) => Outcome::Unknown(e),
        }
    }

    /// Sends several reads of `group` to `target`, which runs them together if it leads the
    /// range (see `RangeHost::execute_reads`). An answer that does not hold one outcome per
    /// read (a peer of another version, say) is an error: callers pair outcomes with reads.
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
            Ok(b) => match postcard::from_bytes::<Result<Vec<Outcome>, Outcome>>(&b) {
                Ok(Ok(v)) if v.len() != cmds.len() => {
                    Err(Outcome::Unavailable(format!("node {target:x} answered {} of {} reads", v.len(), cmds.len())))
                }
                Ok(r) => r,
                Err(e) => Err(Outcome::Unavailable(format!("undecodable answer from node {target:x}: {e}"))),
            },
            Err(CallError::NotSent(e) | CallError::Failed(e) | CallError::Refused(e)) => Err(Outcome::Unavailable(e)),
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
            Err(CallError::Failed(e) | CallError::Refused(e)) => all(Outcome::Unknown(e)),
        }
    }

    /// Sends a batch of etcd requests to `target`, the meta group's leader (see
    /// `PeerHandler::forward_batch`), as a message of the [`Lane::Forwards`] stream instead of
    /// an HTTP/2 call of its own. Within `ttl` in all: a batch that cannot be queued in time
    /// (the lane's byte budget is spent) is not sent.
    pub async fn forward_meta(
        &self,
        target: u64,
        node: &PeerNode,
        batch: &cairn_proto::peer::ForwardBatchRequest,
        ttl: Duration,
    ) -> Result<cairn_proto::peer::ForwardBatchReply, CallError> {
        let data = prost::Message::encode_to_vec(batch);
        let start = std::time::Instant::now();
        let queued = self.enqueue(target, node, Lane::Forwards, META_GROUP, Kind::Forward, data, ttl);
        let answer = tokio::time::timeout(ttl, queued).await.map_err(|_| {
            CallError::NotSent(format!("the transport to node {target:x} had no room within {ttl:?}"))
        })??;
        let b = Mux::wait(answer, target, ttl.saturating_sub(start.elapsed())).await?;
        prost::Message::decode(&b[..])
            .map_err(|e| CallError::Failed(format!("undecodable forward answer from node {target:x}: {e}")))
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

    /// Sends one Raft message of `group` to `target` and waits for its answer.
    pub(crate) async fn call(
        &self,
        target: u64,
        node: &PeerNode,
        group: RangeId,
        kind: Kind,
        data: Vec<u8>,
        ttl: Duration,
    ) -> Result<Vec<u8>, Unreachable<RangeConfig>> {
        let lane = if kind == Kind::Snapshot { Lane::Snapshots } else { Lane::Raft };
        self.send(target, node, lane, group, kind, data, ttl).await.map_err(|e| Unreachable::from_string(e.message()))
    }

    /// Queues one message of `group` for `target` in `lane` and waits up to `ttl` for its
    /// answer.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn send(
        &self,
        target: u64,
        node: &PeerNode,
        lane: Lane,
        group: RangeId,
        kind: Kind,
        data: Vec<u8>,
        ttl: Duration,
    ) -> Result<Vec<u8>, CallError> {
        let answer = self.enqueue(target, node, lane, group, kind, data, ttl).await?;
        Mux::wait(answer, target, ttl).await
    }

    /// Queues one message of `group` for `target` in `lane`; [`Mux::wait`] then waits for its
    /// answer. Messages one task queues in one lane leave in the order it queued them, and a
    /// node's stream hands them on in that order (see `RangesService::stream`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn enqueue(
        &self,
        target: u64,
        node: &PeerNode,
        lane: Lane,
        group: RangeId,
        kind: Kind,
        data: Vec<u8>,
        ttl: Duration,
    ) -> Result<Answer, CallError> {
        if let cairn_types::faults::Link::Drop = cairn_types::faults::link(target) {
            return Err(CallError::NotSent("link cut by fault injection".into()));
        }
        let q = self
            .queue(target, node)
            .ok_or_else(|| CallError::NotSent(format!("node {target:x} has no usable peer URL")))?;
        let q = &q.lanes[lane as usize];
        let kib = (data.len() / 1024 + 1).min(QUEUED_BYTES_MAX / 1024) as u32;
        // Not sent at all if the lane stays full for the message's whole time to live.
        let permit = match tokio::time::timeout(ttl, q.budget.clone().acquire_many_owned(kib)).await {
            Ok(p) => p.map_err(|e| CallError::NotSent(e.to_string()))?,
            Err(_) => return Err(CallError::NotSent(format!("the queue to node {target:x} stayed full for {ttl:?}"))),
        };
        let (reply, rx) = oneshot::channel();
        let msg = RangeMessage { group, kind: kind as u32, data: data.into() };
        q.tx.send(Pending { msg, ttl, reply, _permit: permit })
            .map_err(|_| CallError::NotSent("range transport stopped".into()))?;
        Ok(rx)
    }

    /// Waits up to `ttl` for the answer of a message queued for `target`.
    pub(crate) async fn wait(answer: Answer, target: u64, ttl: Duration) -> Result<Vec<u8>, CallError> {
        match tokio::time::timeout(ttl, answer).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(CallError::Failed("range transport dropped the message".into())),
            Err(_) => Err(CallError::Failed(format!("no answer from node {target:x} within {ttl:?}"))),
        }
    }
}

/// Where a queued message's answer comes.
pub(crate) type Answer = oneshot::Receiver<Result<Vec<u8>, CallError>>;

/// How a lane's batches travel.
enum Way {
    /// As messages of one long-lived stream.
    Stream(Arc<BatchStream>),
    /// As calls of their own.
    Calls(RangesClient<Channel>),
}

/// A batch on its way: its answer, to be waited for.
type BatchAnswer = futures::future::BoxFuture<'static, Result<Vec<RangeResult>, CallError>>;

impl Way {
    /// Puts a batch on its way. Batches of a stream leave in the order this is called in;
    /// waiting for their answers is left to the returned future.
    async fn submit(&self, messages: Vec<RangeMessage>, ttl: Duration) -> BatchAnswer {
        use futures::FutureExt;
        // At least 1: 0 says "no time to live" (a node of an earlier build).
        let ttl_ms = ttl.as_millis().try_into().unwrap_or(u64::MAX).max(1);
        match self {
            Way::Stream(s) => match s.submit(RangeBatchRequest { messages, ttl_ms }, ttl).await {
                Ok(sent) => sent.answer().map(|r| r.map(|r| r.results)).boxed(),
                Err(e) => futures::future::ready(Err(e)).boxed(),
            },
            Way::Calls(client) => {
                let mut req = tonic::Request::new(RangeBatchRequest { messages, ttl_ms });
                req.set_timeout(ttl);
                crate::network::stamp(&mut req);
                let mut client = client.clone();
                async move {
                    match client.batch(req).await {
                        Ok(r) => Ok(r.into_inner().results),
                        Err(s) if crate::tcp::never_connected(&s) => Err(CallError::NotSent(s.message().to_string())),
                        Err(s) => Err(CallError::Failed(s.message().to_string())),
                    }
                }
                .boxed()
            }
        }
    }
}

/// Batches waiting for their answer on a [`BatchStream`].
#[derive(Default)]
struct Waiting {
    next_id: u64,
    map: HashMap<u64, oneshot::Sender<Result<RangeBatchReply, CallError>>>,
    /// The stream has ended: nothing more will be answered on it.
    closed: bool,
}

/// An open stream: where its batches go, and who waits for their answers.
#[derive(Clone)]
struct OpenStream {
    tx: mpsc::UnboundedSender<(RangeStreamRequest, usize)>,
    outgoing: Outgoing,
    waiting: Arc<Mutex<Waiting>>,
    /// Reads the stream's answers.
    replies: tokio::task::AbortHandle,
}

impl OpenStream {
    /// Ends the stream: the batches queued on it and not yet taken by HTTP/2 are dropped (their
    /// memory with them), and every batch waiting for an answer is answered as failed (it may
    /// have run).
    fn give_up(&self) {
        let dropped = self.outgoing.drop_queued();
        self.replies.abort();
        let mut w = self.waiting.lock();
        w.closed = true;
        for id in dropped {
            if let Some(waiter) = w.map.remove(&id) {
                let _ = waiter.send(Err(CallError::NotSent("the node stopped reading its stream".into())));
            }
        }
        // The rest may have run.
        w.map.clear();
    }
}

/// The request side of an outgoing stream: the batches queued for HTTP/2, with the bytes it
/// has not taken yet. (Shared, so that [`OpenStream::give_up`] can drop what is queued while
/// HTTP/2 takes nothing; a channel's queue is reachable only from its receiver.)
#[derive(Clone)]
struct Outgoing {
    rx: Arc<Mutex<mpsc::UnboundedReceiver<(RangeStreamRequest, usize)>>>,
    unread: Arc<std::sync::atomic::AtomicUsize>,
}

impl Outgoing {
    /// Drops the batches HTTP/2 has not taken: their ids (they never left this node).
    fn drop_queued(&self) -> Vec<u64> {
        let mut rx = self.rx.lock();
        rx.close();
        let mut ids = Vec::new();
        while let Ok((req, n)) = rx.try_recv() {
            self.unread.fetch_sub(n, std::sync::atomic::Ordering::SeqCst);
            ids.push(req.id);
        }
        ids
    }

    fn unread(&self) -> usize {
        self.unread.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl futures::Stream for Outgoing {
    type Item = RangeStreamRequest;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<RangeStreamRequest>> {
        self.rx.lock().poll_recv(cx).map(|next| {
            next.map(|(req, n)| {
                self.unread.fetch_sub(n, std::sync::atomic::Ordering::SeqCst);
                req
            })
        })
    }
}

/// A `Ranges/Stream` to one node, opened on the first batch and again after it ends (the
/// node restarted, the connection broke: the channel reconnects by itself).
struct BatchStream {
    client: RangesClient<Channel>,
    open: tokio::sync::Mutex<Option<OpenStream>>,
    /// [`STREAM_UNREAD_BYTES_MAX`] (smaller in tests).
    unread_max: usize,
}

impl BatchStream {
    fn new(client: RangesClient<Channel>) -> BatchStream {
        BatchStream { client, open: tokio::sync::Mutex::new(None), unread_max: STREAM_UNREAD_BYTES_MAX }
    }

    /// The open stream, opening it if need be. A failure here sent nothing.
    async fn stream(&self) -> Result<OpenStream, CallError> {
        let mut open = self.open.lock().await;
        if let Some(s) = &*open {
            if !s.waiting.lock().closed {
                return Ok(s.clone());
            }
        }
        *open = None;
        let (tx, rx) = mpsc::unbounded_channel();
        let outgoing = Outgoing { rx: Arc::new(Mutex::new(rx)), unread: Default::default() };
        let mut req = tonic::Request::new(outgoing.clone());
        crate::network::stamp(&mut req);
        let mut replies = match self.client.clone().stream(req).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                if s.code() == tonic::Code::FailedPrecondition {
                    crate::network::warn_refused(&s);
                }
                return Err(CallError::NotSent(s.message().into()));
            }
        };
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        let w = waiting.clone();
        let replies = tokio::spawn(async move {
            let end = loop {
                match replies.message().await {
                    Ok(Some(RangeStreamReply { id, reply })) => {
                        if let Some(waiter) = w.lock().map.remove(&id) {
                            let _ = waiter.send(Ok(reply.unwrap_or_default()));
                        }
                    }
                    Ok(None) => break "the node ended the stream".to_string(),
                    Err(s) => break s.message().to_string(),
                }
            };
            tracing::debug!(end, "range stream closed");
            let mut w = w.lock();
            w.closed = true;
            // Dropping the waiters answers each batch with "no answer": it may have run.
            w.map.clear();
        });
        let s = OpenStream { tx, outgoing, waiting, replies: replies.abort_handle() };
        *open = Some(s.clone());
        Ok(s)
    }

    /// Sends `batch` on the stream (opening it if need be); [`Sent::answer`] waits until `ttl`
    /// has passed since this call for its answer.
    async fn submit(&self, batch: RangeBatchRequest, ttl: Duration) -> Result<Sent, CallError> {
        let deadline = tokio::time::Instant::now() + ttl;
        let s = match tokio::time::timeout_at(deadline, self.stream()).await {
            Ok(s) => s?,
            Err(_) => return Err(CallError::NotSent(format!("no stream opened within {ttl:?}"))),
        };
        let bytes = batch.messages.iter().map(|m| m.data.len() + 16).sum::<usize>();
        let unread = s.outgoing.unread();
        if unread > 0 && unread + bytes > self.unread_max {
            // The node stopped reading: the next batch opens a new stream.
            s.give_up();
            return Err(CallError::NotSent(format!(
                "the node has not read the {unread} bytes queued on its stream; stream given up"
            )));
        }
        let (reply, rx) = oneshot::channel();
        let id = {
            let mut w = s.waiting.lock();
            if w.closed {
                return Err(CallError::NotSent("the stream ended".into()));
            }
            let id = w.next_id;
            w.next_id += 1;
            w.map.insert(id, reply);
            id
        };
        s.outgoing.unread.fetch_add(bytes, std::sync::atomic::Ordering::SeqCst);
        if s.tx.send((RangeStreamRequest { id, batch: Some(batch) }, bytes)).is_err() {
            s.outgoing.unread.fetch_sub(bytes, std::sync::atomic::Ordering::SeqCst);
            s.waiting.lock().map.remove(&id);
            return Err(CallError::NotSent("the stream ended".into()));
        }
        Ok(Sent { id, rx, waiting: s.waiting, deadline, ttl })
    }
}

/// A batch sent on a stream, its answer still to come.
struct Sent {
    id: u64,
    rx: oneshot::Receiver<Result<RangeBatchReply, CallError>>,
    waiting: Arc<Mutex<Waiting>>,
    deadline: tokio::time::Instant,
    ttl: Duration,
}

impl Sent {
    async fn answer(self) -> Result<RangeBatchReply, CallError> {
        match tokio::time::timeout_at(self.deadline, self.rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(CallError::Failed("the stream ended before the answer".into())),
            Err(_) => {
                self.waiting.lock().map.remove(&self.id);
                Err(CallError::Failed(format!("no answer within {:?}", self.ttl)))
            }
        }
    }
}

/// Sends what is queued for one node in one lane, batch after batch, a few in flight.
async fn sender(way: Way, mut rx: mpsc::UnboundedReceiver<Pending>, stats: Arc<MuxStats>) {
    let way = Arc::new(way);
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
        stats.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        stats.messages.fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let ttl = batch.iter().map(|p| p.ttl).max().unwrap_or(Duration::from_secs(1));
        let (msgs, waiters): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.msg, (p.reply, p._permit))).unzip();
        // Sent here, in queue order (the meta group's appends rely on it); answered in a task
        // of its own, in whatever order answers come.
        let answer = way.submit(msgs, ttl).await;
        tokio::spawn(async move {
            let _permit = permit;
            match answer.await {
                Ok(results) => {
                    let n = results.len();
                    let mut results = results.into_iter();
                    for (reply, _) in waiters {
                        let r = match results.next() {
                            Some(RangeResult { data, error }) if error.is_empty() => Ok(data.to_vec()),
                            Some(RangeResult { error, .. }) => Err(CallError::Refused(error)),
                            None => Err(CallError::Failed(format!("the batch's answer holds {n} results, too few"))),
                        };
                        let _ = reply.send(r);
                    }
                }
                Err(e) => {
                    for (reply, _) in waiters {
                        let _ = reply.send(Err(e.clone()));
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
        // Read and encoded now (see `SnapshotBytes`), off the runtime's threads. A range too
        // large to send is retried after a back-off (a split may shrink it); an engine that
        // cannot be read is a storage error, which stops the group as it stopped it when the
        // snapshot was read on openraft's ask.
        let signature = snapshot.meta.signature();
        let data = match tokio::task::spawn_blocking(move || snapshot.snapshot.into_bytes()).await {
            Ok(Ok(data)) => data,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::FileTooLarge => {
                tracing::warn!(range = self.group, error = %e, "a snapshot cannot be sent");
                return Err(StreamingError::Unreachable(Unreachable::new(&e)));
            }
            Ok(Err(e)) => {
                return Err(StreamingError::StorageError(openraft::StorageError::from_io_error(
                    openraft::ErrorSubject::Snapshot(Some(signature)),
                    openraft::ErrorVerb::Read,
                    e,
                )))
            }
            Err(e) => return Err(StreamingError::Network(NetworkError::from_string(e))),
        };
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
    /// Returns once the node is shutting down: open streams then end, or they would hold up
    /// the listener's graceful shutdown for as long as the peers keep them.
    async fn closing(&self);
}

/// Answers one range's message.
async fn handle_message(h: Arc<dyn RangeHandler>, m: RangeMessage) -> Result<Vec<u8>, String> {
    match Kind::from_u32(m.kind) {
        Some(Kind::Execute) => match prost::Message::decode(&m.data[..]) {
            Ok(req) => execute_to_the_end(h, req).await,
            Err(e) => Err(format!("undecodable forwarded request: {e}")),
        },
        Some(kind) => h.handle(m.group, kind, &m.data).await,
        None => Err(format!("unknown range message kind {}", m.kind)),
    }
}

/// [`execute`], where a range change (a split, a move, a replica added) runs to its end in a
/// task of its own even if no one waits for it any more: cut short between its steps, a move
/// would leave a learner behind. Client requests stop when their wait is dropped.
async fn execute_to_the_end(h: Arc<dyn RangeHandler>, r: RangeExecuteRequest) -> Result<Vec<u8>, String> {
    if r.admin.is_empty() {
        return execute(&*h, r).await;
    }
    tokio::spawn(async move { execute(&*h, r).await })
        .await
        .unwrap_or_else(|e| Err(format!("the range change's task failed: {e}")))
}

/// Runs a forwarded client request: its encoded outcome (see `RangeExecuteRequest`), or why
/// it could not be read.
async fn execute(h: &dyn RangeHandler, r: RangeExecuteRequest) -> Result<Vec<u8>, String> {
    if !r.writes.is_empty() {
        let cmds = r.writes.into_iter().map(|c| c.to_vec()).collect();
        return Ok(encode(&h.execute_writes(r.group, r.epoch, cmds).await));
    }
    if !r.reads.is_empty() {
        let cmds = r.reads.into_iter().map(|c| c.to_vec()).collect();
        return Ok(encode(&h.execute_reads(r.group, r.epoch, cmds).await));
    }
    let admin = if r.admin.is_empty() {
        None
    } else {
        Some(postcard::from_bytes(&r.admin).map_err(|e| format!("undecodable range change: {e}"))?)
    };
    let req = RangeRequest { group: r.group, epoch: r.epoch, read: r.read, cmd: r.cmd.to_vec(), admin };
    Ok(encode(&h.execute(req).await))
}

/// The `cairn.peer.Ranges` gRPC service: checks the cluster ID, then hands each message of a
/// batch to the node's range host, or to its meta group ([`META_GROUP`]).
#[derive(Clone)]
pub struct RangesService {
    cluster_id: u64,
    handler: Arc<dyn RangeHandler>,
    meta: Option<crate::server::MetaReceiver>,
    /// [`STREAM_BATCH_BYTES_MAX`] (smaller in tests).
    stream_bytes_max: usize,
}

impl RangesService {
    pub fn new(cluster_id: u64, handler: Arc<dyn RangeHandler>) -> Self {
        RangesService { cluster_id, handler, meta: None, stream_bytes_max: STREAM_BATCH_BYTES_MAX }
    }

    /// Hands the meta group's messages to `meta` (without it they are refused).
    pub fn with_meta(mut self, meta: crate::server::MetaReceiver) -> Self {
        self.meta = Some(meta);
        self
    }

    /// The tonic server for the peer listener.
    pub fn server(self) -> cairn_proto::peer::ranges_server::RangesServer<RangesService> {
        cairn_proto::peer::ranges_server::RangesServer::new(self)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX)
    }

    /// Starts answering a batch: each message concurrently, results in order. The meta group's
    /// appends are handed to `appends` here, before the returned future runs, so they reach the
    /// meta group in the order they arrived in; without `appends` (a batch that came as a call
    /// of its own) they are refused.
    fn start_batch(
        &self,
        msgs: Vec<RangeMessage>,
        appends: Option<&crate::server::AppendPipe>,
        sender: crate::server::Sender,
    ) -> impl std::future::Future<Output = Vec<RangeResult>> + Send + 'static {
        use futures::future::Either;
        use futures::FutureExt;
        // A range's message is answered without a box of its own (most messages are ranges').
        let futs: Vec<_> = msgs
            .into_iter()
            .map(|m| {
                if m.group != META_GROUP {
                    let h = self.handler.clone();
                    return Either::Left(async move { handle_message(h, m).await });
                }
                Either::Right(match &self.meta {
                    Some(meta) => meta.message(m.kind, m.data, appends, sender),
                    None => futures::future::ready(Err("this node serves no meta group".to_string())).boxed(),
                })
            })
            .collect();
        async move {
            futures::future::join_all(futs)
                .await
                .into_iter()
                .map(|r| match r {
                    Ok(data) => RangeResult { data: data.into(), error: String::new() },
                    Err(error) => RangeResult { data: Default::default(), error },
                })
                .collect()
        }
    }
}

/// How long a receiver works on a batch: the time to live its sender gave it, or
/// [`RECEIVE_TTL_DEFAULT`] from a sender that gave none.
fn receive_ttl(ttl_ms: u64) -> Duration {
    if ttl_ms == 0 {
        RECEIVE_TTL_DEFAULT
    } else {
        Duration::from_millis(ttl_ms)
    }
}

/// The time to live of a batch from a node of an earlier build, which does not say: longer than
/// any wait of a sender (the longest, a replica move's, is 150 s).
const RECEIVE_TTL_DEFAULT: Duration = Duration::from_secs(180);

#[tonic::async_trait]
impl Ranges for RangesService {
    type StreamStream = tokio_stream::wrappers::ReceiverStream<Result<RangeStreamReply, tonic::Status>>;

    async fn stream(
        &self,
        req: tonic::Request<tonic::Streaming<RangeStreamRequest>>,
    ) -> Result<tonic::Response<Self::StreamStream>, tonic::Status> {
        crate::network::check_cluster_id(req.metadata(), self.cluster_id, false)?;
        let sender = crate::server::Sender::of(&req);
        let mut batches = req.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_BATCHES_MAX);
        let svc = self.clone();
        tokio::spawn(async move {
            let running = Arc::new(Semaphore::new(STREAM_BATCHES_MAX));
            let kib_max = (svc.stream_bytes_max / 1024).max(1);
            let running_kib = Arc::new(Semaphore::new(kib_max));
            let closing = svc.handler.closing();
            tokio::pin!(closing);
            // The meta group's appends from this stream, handed on in order (ends with it).
            let appends = crate::server::AppendPipe::default();
            // Each batch runs as a task of its own, as a call would: a write waiting for its
            // commit must not hold up the batches behind it.
            loop {
                let next = tokio::select! {
                    m = batches.message() => m,
                    _ = &mut closing => break,
                };
                let Ok(Some(RangeStreamRequest { id, batch })) = next else { break };
                let (msgs, ttl) = batch.map(|b| (b.messages, receive_ttl(b.ttl_ms))).unwrap_or_default();
                let kib = (msgs.iter().map(|m| m.data.len()).sum::<usize>() / 1024 + 1).min(kib_max) as u32;
                // Room for it among the batches running, by count and by bytes; the next batch
                // is not read meanwhile (HTTP/2's flow control then holds the sender back).
                let room = async {
                    let permit = running.clone().acquire_owned().await.ok()?;
                    let bytes = running_kib.clone().acquire_many_owned(kib).await.ok()?;
                    Some((permit, bytes))
                };
                let room = tokio::select! {
                    r = room => r,
                    _ = &mut closing => None,
                };
                let Some(room) = room else { break };
                let tx = tx.clone();
                let n = msgs.len();
                let answer = svc.start_batch(msgs, Some(&appends), sender);
                // A batch is worked on while its sender waits for it, and while the stream is
                // there to answer on: past its time to live, or once the stream is gone, what
                // is still under way is dropped (a write already proposed stays proposed; only
                // the wait for it ends), so stuck handlers cannot pile up.
                tokio::spawn(async move {
                    let results = tokio::select! {
                        r = tokio::time::timeout(ttl, answer) => r.unwrap_or_else(|_| {
                            let error = format!("not answered within its time to live ({ttl:?})");
                            vec![RangeResult { data: Default::default(), error }; n]
                        }),
                        _ = tx.closed() => return,
                    };
                    let _ = tx.send(Ok(RangeStreamReply { id, reply: Some(RangeBatchReply { results }) })).await;
                    drop(room);
                });
            }
        });
        Ok(tonic::Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn batch(
        &self,
        req: tonic::Request<RangeBatchRequest>,
    ) -> Result<tonic::Response<RangeBatchReply>, tonic::Status> {
        crate::network::check_cluster_id(req.metadata(), self.cluster_id, false)?;
        let sender = crate::server::Sender::of(&req);
        let results = self.start_batch(req.into_inner().messages, None, sender).await;
        Ok(tonic::Response::new(RangeBatchReply { results }))
    }

    /// A forwarded request as a call of its own (nodes send them in batches now, as
    /// [`Kind::Execute`] messages; this answers a node that does not).
    async fn execute(
        &self,
        req: tonic::Request<RangeExecuteRequest>,
    ) -> Result<tonic::Response<RangeExecuteReply>, tonic::Status> {
        crate::network::check_cluster_id(req.metadata(), self.cluster_id, false)?;
        let outcome = execute_to_the_end(self.handler.clone(), req.into_inner())
            .await
            .map_err(tonic::Status::invalid_argument)?;
        Ok(tonic::Response::new(RangeExecuteReply { outcome: outcome.into() }))
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

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::peer::ranges_server::RangesServer;

    /// A node stuck in a gray failure: its connection is up and it accepts streams, but it
    /// never reads what comes on them.
    #[derive(Default)]
    struct Stuck {
        streams: Mutex<Vec<tonic::Streaming<RangeStreamRequest>>>,
    }

    #[tonic::async_trait]
    impl Ranges for Stuck {
        type StreamStream = futures::stream::Pending<Result<RangeStreamReply, tonic::Status>>;

        async fn stream(
            &self,
            req: tonic::Request<tonic::Streaming<RangeStreamRequest>>,
        ) -> Result<tonic::Response<Self::StreamStream>, tonic::Status> {
            self.streams.lock().push(req.into_inner());
            Ok(tonic::Response::new(futures::stream::pending()))
        }

        async fn batch(
            &self,
            _: tonic::Request<RangeBatchRequest>,
        ) -> Result<tonic::Response<RangeBatchReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("stuck"))
        }

        async fn execute(
            &self,
            _: tonic::Request<RangeExecuteRequest>,
        ) -> Result<tonic::Response<RangeExecuteReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("stuck"))
        }

        async fn stats(
            &self,
            _: tonic::Request<RangeStatsRequest>,
        ) -> Result<tonic::Response<RangeStatsReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("stuck"))
        }
    }

    /// A node whose every Raft message and client request hangs (a group stuck on its storage,
    /// say), but range changes, which take 500 ms. `started` counts the Raft messages begun,
    /// `live` those under way, `changed` the range changes finished.
    #[derive(Default)]
    struct Hanging {
        started: std::sync::atomic::AtomicUsize,
        live: Arc<std::sync::atomic::AtomicUsize>,
        changed: std::sync::atomic::AtomicUsize,
    }

    /// One handler under way, for [`Hanging`]'s count.
    struct Live(Arc<std::sync::atomic::AtomicUsize>);

    impl Drop for Live {
        fn drop(&mut self) {
            self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tonic::async_trait]
    impl RangeHandler for Hanging {
        async fn handle(&self, _: RangeId, _: Kind, _: &[u8]) -> Result<Vec<u8>, String> {
            self.started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.live.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _live = Live(self.live.clone());
            futures::future::pending().await
        }
        async fn execute(&self, r: RangeRequest) -> Outcome {
            if r.admin.is_none() {
                return futures::future::pending().await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            self.changed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Outcome::Done(vec![])
        }
        async fn execute_reads(&self, _: RangeId, _: u64, _: Vec<Vec<u8>>) -> Result<Vec<Outcome>, Outcome> {
            futures::future::pending().await
        }
        async fn execute_writes(&self, _: RangeId, _: u64, _: Vec<Vec<u8>>) -> Vec<Outcome> {
            futures::future::pending().await
        }
        async fn stats(&self) -> Vec<crate::range::ReplicaStats> {
            Vec::new()
        }
        async fn closing(&self) {
            futures::future::pending().await
        }
    }

    /// A node runs the batches of one stream up to a bound in bytes, not only in count: with
    /// every message hanging, it stops reading the stream once the batches it runs hold the
    /// bound (the count bound alone let a stream hold 64 batches of any size).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_runs_a_streams_batches_up_to_a_bound_in_bytes() {
        const MAX: usize = 8 << 20;
        crate::network::set_cluster_id(0xca1);
        let cluster = *crate::network::CLUSTER_ID.get().unwrap();
        let handler = Arc::new(Hanging::default());
        let mut svc = RangesService::new(cluster, handler.clone());
        svc.stream_bytes_max = MAX;
        let addr = serve(svc).await;
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        let stream = BatchStream::new(RangesClient::new(channel).max_encoding_message_size(MESSAGE_BYTES_MAX));
        let mut sent = Vec::new();
        for g in 0..32u64 {
            let msg = RangeMessage { group: g + 1, kind: Kind::Append as u32, data: vec![3u8; 1 << 20].into() };
            sent.push(
                stream
                    .submit(RangeBatchRequest { messages: vec![msg], ttl_ms: 30_000 }, Duration::from_secs(30))
                    .await
                    .unwrap(),
            );
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let started = handler.started.load(std::sync::atomic::Ordering::SeqCst);
        assert!(started >= 1, "no batch ran");
        assert!(started <= MAX >> 20, "{started} batches of 1 MiB run at once under a bound of {MAX} bytes");
    }

    /// A node that answers a batch of reads with one outcome too few.
    struct Short;

    #[tonic::async_trait]
    impl RangeHandler for Short {
        async fn handle(&self, _: RangeId, _: Kind, _: &[u8]) -> Result<Vec<u8>, String> {
            Err("no".into())
        }
        async fn execute(&self, _: RangeRequest) -> Outcome {
            Outcome::Unavailable("no".into())
        }
        async fn execute_reads(&self, _: RangeId, _: u64, cmds: Vec<Vec<u8>>) -> Result<Vec<Outcome>, Outcome> {
            Ok(cmds.into_iter().skip(1).map(Outcome::Done).collect())
        }
        async fn execute_writes(&self, _: RangeId, _: u64, cmds: Vec<Vec<u8>>) -> Vec<Outcome> {
            cmds.into_iter().skip(1).map(Outcome::Done).collect()
        }
        async fn stats(&self) -> Vec<crate::range::ReplicaStats> {
            Vec::new()
        }
        async fn closing(&self) {
            futures::future::pending().await
        }
    }

    /// A batch of reads or writes answered with fewer outcomes than it holds is an error for
    /// every command of it: the callers pair outcomes with commands (a short answer once left
    /// a pipelined read without a reply, and the Redis front end panicked on it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_short_answer_to_a_batch_is_an_error() {
        crate::network::set_cluster_id(0xca1);
        let cluster = *crate::network::CLUSTER_ID.get().unwrap();
        let svc = RangesService::new(cluster, Arc::new(Short));
        let addr = serve(svc).await;
        let node = PeerNode { peer_urls: vec![format!("http://{addr}")] };
        let mux = Mux::new(Default::default());
        let cmds = vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()];
        let t = Duration::from_secs(10);
        let r = mux.execute_reads(2, &node, 1, 1, &cmds, t).await;
        assert!(matches!(&r, Err(Outcome::Unavailable(e)) if e.contains("2 of 3")), "{r:?}");
        let w = mux.execute_writes(2, &node, 1, 1, &cmds, t).await;
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w.iter().all(|o| matches!(o, Outcome::Unknown(_))), "{w:?}");
    }

    /// Serves `svc` on a port of its own: its address.
    async fn serve(svc: RangesService) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc.server())
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }

    /// Waits up to 5 s for `live` to reach `n`.
    async fn live_reaches(live: &std::sync::atomic::AtomicUsize, n: usize) -> bool {
        for _ in 0..500 {
            if live.load(std::sync::atomic::Ordering::SeqCst) == n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// A receiver works on a batch only while someone waits for it: past the time to live its
    /// sender gave it, or once the stream it came on is gone, its handlers are dropped. (They
    /// once ran on without end: a handler that never finished kept its task, and what its batch
    /// held, for as long as the node ran, and a new stream's batches piled up beside them.)
    /// A range change runs to its end all the same: cut short between its steps, a move would
    /// leave a learner behind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_receiver_drops_batches_no_one_waits_for() {
        crate::network::set_cluster_id(0xca1);
        let cluster = *crate::network::CLUSTER_ID.get().unwrap();
        let handler = Arc::new(Hanging::default());
        let (live, changed) = (handler.live.clone(), &handler.changed);
        let svc = RangesService::new(cluster, handler.clone());
        let addr = serve(svc).await;
        let node = PeerNode { peer_urls: vec![format!("http://{addr}")] };

        // Past its time to live, on a stream that stays open.
        let mux = Mux::new(Default::default());
        let r = mux.call(2, &node, 1, Kind::Append, vec![1], Duration::from_millis(300)).await;
        assert!(r.is_err(), "{r:?}");
        assert!(
            live_reaches(&live, 0).await,
            "{} handlers still run past their time to live",
            live.load(std::sync::atomic::Ordering::SeqCst)
        );

        // A range change past its time to live finishes.
        let change = RangeRequest::admin(1, 0, crate::range::types::Admin::LoadKeys);
        let o = mux.execute(2, &node, change, Duration::from_millis(100)).await;
        assert!(!matches!(o, Outcome::Done(_)), "{o:?}");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(changed.load(std::sync::atomic::Ordering::SeqCst), 1, "a range change was cut short");

        // From a sender that gives no time to live (an earlier build), until its stream goes.
        let channel =
            tonic::transport::Endpoint::from_shared(node.peer_urls[0].clone()).unwrap().connect().await.unwrap();
        let mut client = RangesClient::new(channel);
        let (tx, rx) = mpsc::channel(4);
        let msg = RangeMessage { group: 1, kind: Kind::Append as u32, data: vec![1].into() };
        tx.send(RangeStreamRequest { id: 1, batch: Some(RangeBatchRequest { messages: vec![msg], ttl_ms: 0 }) })
            .await
            .unwrap();
        let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        crate::network::stamp(&mut req);
        let replies = client.stream(req).await.unwrap();
        assert!(live_reaches(&live, 1).await, "the batch's handler did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(live.load(std::sync::atomic::Ordering::SeqCst), 1, "dropped while its stream is open");
        drop((tx, replies, client));
        assert!(live_reaches(&live, 0).await, "a handler still runs after its stream is gone");
    }

    /// Starts a [`Stuck`] node: its peer URL.
    async fn stuck_node() -> PeerNode {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RangesServer::new(Stuck::default()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        PeerNode { peer_urls: vec![format!("http://{addr}")] }
    }

    /// A message that finds its lane to a node full (the node answers nothing) waits at most
    /// its time to live for room, then is not sent; it does not wait for the messages ahead
    /// of it to time out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_message_waits_for_room_in_a_full_lane_no_longer_than_its_time_to_live() {
        let node = stuck_node().await;
        let mux = Mux::new(Default::default());
        // The lane's budget taken by messages that wait 30 s for their answers.
        let mut ahead = Vec::new();
        for i in 0..(QUEUED_BYTES_MAX >> 20) {
            let (mux, node) = (mux.clone(), node.clone());
            ahead.push(tokio::spawn(async move {
                mux.send(
                    2,
                    &node,
                    Lane::Raft,
                    i as u64,
                    Kind::Append,
                    vec![1u8; (1 << 20) - 1],
                    Duration::from_secs(30),
                )
                .await
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let start = std::time::Instant::now();
        let r = mux.send(2, &node, Lane::Raft, 99, Kind::Append, vec![2u8; 100], Duration::from_millis(300)).await;
        let waited = start.elapsed();
        assert!(matches!(r, Err(CallError::NotSent(_))), "{r:?}");
        assert!(waited < Duration::from_secs(3), "waited {waited:?} for room in the lane");
        for a in ahead {
            a.abort();
        }
    }

    /// Batches sent to a node that stopped reading its stream pile up no further than
    /// [`STREAM_UNREAD_BYTES_MAX`]: past it the stream is given up, its queued batches dropped
    /// and the batch not sent; the dropped batches are answered as not sent. (Their answers
    /// time out, which frees the lane for more: they once piled up without end in the
    /// stream's queue.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_that_stops_reading_holds_up_a_bounded_number_of_bytes() {
        const MAX: usize = 8 << 20;
        let node = stuck_node().await;
        let channel =
            tonic::transport::Endpoint::from_shared(node.peer_urls[0].clone()).unwrap().connect().await.unwrap();
        let client = RangesClient::new(channel).max_encoding_message_size(MESSAGE_BYTES_MAX);
        let mut stream = BatchStream::new(client);
        stream.unread_max = MAX;
        let batch = || RangeBatchRequest {
            messages: vec![RangeMessage { group: 1, kind: Kind::Append as u32, data: vec![7u8; 1 << 20].into() }],
            ttl_ms: 50,
        };
        let (mut sent, mut given_up) = (Vec::new(), 0);
        for _ in 0..48 {
            let before = stream.open.lock().await.clone();
            match stream.submit(batch(), Duration::from_millis(50)).await {
                Ok(s) => sent.push(s),
                Err(CallError::NotSent(_)) => {
                    given_up += 1;
                    let old = before.expect("a stream was open");
                    assert_eq!(old.outgoing.unread(), 0, "a given-up stream still holds its batches");
                }
                Err(e) => panic!("{e:?}"),
            }
            let open = stream.open.lock().await.clone().unwrap();
            assert!(open.outgoing.unread() <= MAX, "{} bytes queued on a stream", open.outgoing.unread());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let sent_count = sent.len();
        assert!(given_up >= 1, "{sent_count} batches of 1 MiB queued for a node that reads nothing, none refused");
        let mut not_sent = 0;
        for s in sent {
            if let Err(CallError::NotSent(_)) = s.answer().await {
                not_sent += 1;
            }
        }
        assert!(not_sent >= 1, "no batch dropped by a given-up stream was answered as not sent");
    }
}
