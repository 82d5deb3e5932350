//! The sending side of the peer RPC: the meta group's Raft messages, and the connections every
//! peer message shares.
//!
//! Everything a node sends to one peer travels on one HTTP/2 connection ([`PeerChannels`]).
//! The Raft messages of every group, the meta group's and the ranges', go through one transport
//! ([`crate::range::mux`]): batched across groups in a few long-lived streams, so the meta
//! group's appends and heartbeats share the batches of the ranges' messages to the same node.
//! The meta group's snapshots (files, up to twice the quota) still stream as `Peer/InstallSnapshot`
//! calls of their own, in chunks, as do requests forwarded to the meta leader.
//!
//! HTTP/2 interleaves the streams in frames of at most 16 KiB, so a large append or snapshot
//! chunk delays a heartbeat by at most a few frames; the connection-level flow-control window
//! ([`PEER_CONNECTION_WINDOW_BYTES`]) is several stream windows wide, so one stream whose reader
//! is slow (a snapshot being written out) cannot stall the others.

use std::future::Future;
use std::time::Duration;

use cairn_proto::peer::peer_client::PeerClient;
use cairn_proto::peer::SnapshotChunk;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::StreamAppendResult;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RaftNetworkV2};
use tonic::transport::{Channel, Endpoint};

use crate::range::mux::{Kind, Lane, Mux, META_GROUP};
use crate::state_machine::SnapshotData;
use crate::types::{PeerNode, Snapshot, TypeConfig, Vote};

/// Bytes per snapshot chunk on the wire.
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Largest peer message accepted (an append batch is capped well below this by the log reader).
pub const PEER_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Creates the meta group's connections to peers: views of the node's one transport.
#[derive(Clone, Debug)]
pub struct Network {
    /// The transport every group's messages share (see the module doc).
    pub mux: Mux,
    /// How long one append may wait for its answer (the election timeout: a follower that
    /// takes longer is as good as gone, and the leader starts its stream again).
    pub append_ttl: Duration,
}

/// One lazily connected HTTP/2 channel per peer URL, shared by everything a node sends there
/// (the meta group, forwarding, the range transport). A tonic channel reconnects by itself after
/// the peer comes back. The map holds one entry per peer URL ever used, a handful.
#[derive(Clone, Default)]
pub struct PeerChannels {
    map: std::sync::Arc<parking_lot::Mutex<std::collections::HashMap<String, Channel>>>,
}

impl std::fmt::Debug for PeerChannels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerChannels").field("peers", &self.map.lock().len()).finish()
    }
}

impl PeerChannels {
    /// The channel to `url`, connected on its first request.
    pub fn get(&self, url: &str) -> Result<Channel, String> {
        let mut map = self.map.lock();
        if let Some(c) = map.get(url) {
            return Ok(c.clone());
        }
        let ch = crate::tcp::lazy_channel(&peer_channel_settings(peer_endpoint(url)?));
        map.insert(url.to_string(), ch.clone());
        Ok(ch)
    }

    /// The channel to `node`'s first peer URL.
    pub fn to_node(&self, node: &PeerNode) -> Result<Channel, String> {
        let url = node.peer_urls.first().ok_or("no peer URL")?;
        self.get(url)
    }
}

/// The connection-level HTTP/2 flow-control window of peer connections, in both directions
/// (the client's and the peer listener's): 16 stream windows of 1 MiB, so a stream whose
/// reader lags holds at most a sixteenth of it and the connection's other streams go on.
pub const PEER_CONNECTION_WINDOW_BYTES: u32 = 16 << 20;

/// TLS for connections to `https://` peer URLs (`--peer-cert-file`, `--peer-key-file`,
/// `--peer-trusted-ca-file`), set once at start-up.
static PEER_TLS: std::sync::OnceLock<tonic::transport::ClientTlsConfig> = std::sync::OnceLock::new();

pub fn set_peer_tls(tls: tonic::transport::ClientTlsConfig) {
    let _ = PEER_TLS.set(tls);
}

/// The metadata key that carries the sender's cluster ID on every peer call (etcd's peer HTTP
/// header of the same name).
pub const CLUSTER_ID_HEADER: &str = "x-etcd-cluster-id";

/// This member's cluster ID, stamped on every peer call it makes; set once at start-up.
pub(crate) static CLUSTER_ID: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

pub fn set_cluster_id(id: u64) {
    let _ = CLUSTER_ID.set(id);
}

/// Adds this member's cluster ID to an outgoing peer call (nothing before it is known: only a
/// joining member's ClusterInfo call goes without).
pub fn stamp<T>(req: &mut tonic::Request<T>) {
    if let Some(id) = CLUSTER_ID.get() {
        let v = tonic::metadata::MetadataValue::try_from(format!("{id:x}")).expect("hex is ASCII");
        req.metadata_mut().insert(CLUSTER_ID_HEADER, v);
    }
}

/// The receiving side's check of a call's cluster ID: refused when it names another cluster, or
/// (unless `optional`) when it names none. etcd refuses such peer requests with "cluster ID
/// mismatch" (HTTP 412); here it is gRPC's FAILED_PRECONDITION.
pub fn check_cluster_id(md: &tonic::metadata::MetadataMap, ours: u64, optional: bool) -> Result<(), tonic::Status> {
    let Some(v) = md.get(CLUSTER_ID_HEADER) else {
        if optional {
            return Ok(());
        }
        return Err(tonic::Status::failed_precondition(format!(
            "cluster ID missing: peer calls must carry {CLUSTER_ID_HEADER} (this member is in cluster {ours:x})"
        )));
    };
    let theirs = v.to_str().ok().and_then(|s| u64::from_str_radix(s, 16).ok());
    match theirs {
        Some(id) if id == ours => Ok(()),
        _ => Err(tonic::Status::failed_precondition(format!(
            "cluster ID mismatch: the call is for cluster {}, this member is in cluster {ours:x}",
            v.to_str().unwrap_or("(not ASCII)")
        ))),
    }
}

/// An endpoint for a peer URL: with this member's peer TLS settings when it is `https://`.
/// Every connection to a peer (Raft, forwarded requests, bootstrap) goes through here.
pub fn peer_endpoint(url: &str) -> Result<Endpoint, String> {
    let ep = Endpoint::from_shared(url.to_string()).map_err(|e| format!("bad peer URL {url}: {e}"))?;
    if url.starts_with("https://") {
        let tls = PEER_TLS.get().cloned().ok_or_else(|| format!("{url}: https peer URL but no peer TLS settings"))?;
        return ep.tls_config(tls).map_err(|e| format!("{url}: {e}"));
    }
    Ok(ep)
}

/// Keep-alives of every peer channel (open them with [`crate::tcp::lazy_channel`], which bounds
/// connecting).
pub fn peer_channel_settings(ep: Endpoint) -> Endpoint {
    ep.http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .initial_connection_window_size(PEER_CONNECTION_WINDOW_BYTES)
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Conn;

    async fn new_client(&mut self, target: u64, node: &PeerNode) -> Conn {
        let client = self.mux.channels().to_node(node).ok().map(|c| {
            PeerClient::new(c)
                .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX)
        });
        Conn { target, node: node.clone(), mux: self.mux.clone(), append_ttl: self.append_ttl, client }
    }
}

/// The meta group's connection to one peer.
pub struct Conn {
    target: u64,
    node: PeerNode,
    mux: Mux,
    append_ttl: Duration,
    /// For snapshots, which go as calls of their own.
    client: Option<PeerClient<Channel>>,
}

/// Appends sent to one peer and not yet answered, at most (openraft's own pipeline on the
/// receiving side holds as many).
const APPENDS_IN_FLIGHT_MAX: usize = 64;

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("raft types serialize")
}

fn unreachable(msg: impl ToString) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::from_string(msg))
}

/// Logs a peer's refusal (another cluster's member at that URL), at most once every 10 s.
pub(crate) fn warn_refused(s: &tonic::Status) {
    static LAST: parking_lot::Mutex<Option<std::time::Instant>> = parking_lot::Mutex::new(None);
    let mut last = LAST.lock();
    if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
        *last = Some(std::time::Instant::now());
        tracing::error!(error = %s.message(), "a peer refused this member's call");
    }
}

fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, RPCError<TypeConfig>> {
    postcard::from_bytes(b).map_err(|e| RPCError::Network(NetworkError::from_string(e)))
}

impl Conn {
    fn client(&self) -> Result<PeerClient<Channel>, RPCError<TypeConfig>> {
        self.client.clone().ok_or_else(|| unreachable(format!("member {:x} has no usable peer URL", self.target)))
    }

    /// Sends one message through the transport and waits up to `ttl` for its answer.
    async fn rpc<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        kind: Kind,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        self.fault().await?;
        let b = self
            .mux
            .send(self.target, &self.node, Lane::Raft, META_GROUP, kind, encode(req), ttl)
            .await
            .map_err(|e| unreachable(e.message()))?;
        decode(&b)
    }

    /// Test-only link faults (`failpoints` feature; a no-op otherwise).
    async fn fault(&self) -> Result<(), RPCError<TypeConfig>> {
        match cairn_types::faults::link(self.target) {
            cairn_types::faults::Link::Pass => Ok(()),
            cairn_types::faults::Link::Drop => Err(unreachable("link cut by fault injection")),
            cairn_types::faults::Link::Delay(d) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
        }
    }
}

/// Adapts the synchronous snapshot writer to a stream of chunks.
struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<SnapshotChunk>,
    header: Option<Vec<u8>>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn send(&mut self) -> std::io::Result<()> {
        let data = std::mem::take(&mut self.buf);
        let header = self.header.take().unwrap_or_default();
        self.tx
            .blocking_send(SnapshotChunk { header: header.into(), data: data.into() })
            .map_err(|_| std::io::Error::other("snapshot receiver went away"))
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= SNAPSHOT_CHUNK_BYTES {
            self.send()?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() || self.header.is_some() {
            self.send()?;
        }
        Ok(())
    }
}

impl RaftNetworkV2<TypeConfig> for Conn {
    type SnapshotData = SnapshotData;

    /// Replication with several appends in flight, so a batch does not wait for the previous
    /// one's fsync on the follower. Each append is queued in the transport's Raft lane in
    /// order; the lane's batches leave in that order on one stream, and the receiver hands the
    /// meta group's appends to Raft in the order they came (`crate::server::AppendPipe`).
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        _option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>, RPCError<TypeConfig>>,
    >
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        Box::pin(async move {
            self.fault().await?;
            let (target, node, mux, ttl) = (self.target, self.node.clone(), self.mux.clone(), self.append_ttl);
            let (queued, answers) = tokio::sync::mpsc::channel(APPENDS_IN_FLIGHT_MAX);
            // Queues the appends one after another, so they leave in order; stops when the
            // answers are no longer read (openraft ended the session) or one could not be queued.
            tokio::spawn(async move {
                let mut input = input;
                loop {
                    let req = tokio::select! {
                        r = input.next() => r,
                        _ = queued.closed() => None,
                    };
                    let Some(req) = req else { break };
                    let answer =
                        mux.enqueue(target, &node, Lane::Raft, META_GROUP, Kind::Append, encode(&req), ttl).await;
                    let failed = answer.is_err();
                    if queued.send(answer).await.is_err() || failed {
                        break;
                    }
                }
            });
            let results = tokio_stream::wrappers::ReceiverStream::new(answers).then(move |answer| async move {
                // A link cut while appends are in flight fails them, as a real cut would.
                if cairn_types::faults::link(target) == cairn_types::faults::Link::Drop {
                    return Err(unreachable("link cut by fault injection"));
                }
                let answer = answer.map_err(|e| unreachable(e.message()))?;
                let b = Mux::wait(answer, target, ttl).await.map_err(|e| unreachable(e.message()))?;
                decode::<StreamAppendResult<TypeConfig>>(&b)
            });
            let boxed: BoxStream<'s, _> = Box::pin(results);
            Ok(boxed)
        })
    }

    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        // openraft 0.10 calls this only from the default `stream_append`, which this type
        // replaces: every append (heartbeats too) goes through `stream_append` above.
        Err(RPCError::Network(NetworkError::from_string("the meta group sends appends only on streams")))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(Kind::Vote, &rpc, option.soft_ttl()).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(Kind::PreVote, &rpc, option.soft_ttl()).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(Kind::TransferLeader, &req, option.soft_ttl()).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        self.fault().await.map_err(|e| StreamingError::Unreachable(Unreachable::from_string(e)))?;
        let mut client = self.client().map_err(|e| StreamingError::Unreachable(Unreachable::from_string(e)))?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let header = encode(&(vote, snapshot.meta.clone()));
        let data = snapshot.snapshot;
        let producer = tokio::task::spawn_blocking(move || {
            let mut w = ChunkWriter { tx, header: Some(header), buf: Vec::with_capacity(SNAPSHOT_CHUNK_BYTES) };
            data.write_to(&mut w)
        });
        let mut chunks = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        stamp(&mut chunks);
        let call = client.install_snapshot(chunks);
        tokio::select! {
            r = call => {
                let produced = producer.await.map_err(|e| StreamingError::Network(NetworkError::from_string(e)))?;
                let reply = r.map_err(|s| StreamingError::Unreachable(Unreachable::from_string(s)))?;
                produced.map_err(|e| StreamingError::Network(NetworkError::from_string(e)))?;
                let reply = reply.into_inner();
                if !reply.error.is_empty() {
                    return Err(StreamingError::Unreachable(Unreachable::from_string(reply.error)));
                }
                decode(&reply.data).map_err(|e| StreamingError::Network(NetworkError::from_string(e)))
            }
            closed = cancel => Err(StreamingError::Closed(closed)),
        }
    }
}
