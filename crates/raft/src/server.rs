//! The receiving side of the peer RPC.

use std::io::Write;
use std::sync::{Arc, OnceLock};

use cairn_proto::peer::peer_server::Peer;
use cairn_proto::peer::{
    forward_result, ClusterInfoReply, ClusterInfoRequest, ErrorStatus, ForwardBatchReply, ForwardBatchRequest,
    ForwardReply, ForwardRequest, ForwardResult, RaftReply, RaftRequest, SnapshotChunk,
};
use futures::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::state_machine::SnapshotData;
use crate::types::{Raft, Snapshot, SnapshotMeta, Vote};

/// What the peer listener serves beyond Raft itself; supplied by the services layer.
#[tonic::async_trait]
pub trait PeerHandler: Send + Sync + 'static {
    /// Executes a request forwarded by a member that is not the leader; `sender` says whether
    /// the connection it came on authenticated that member.
    async fn forward(&self, req: ForwardRequest, sender: Sender) -> Result<ForwardReply, Status>;
    /// Executes a batch of forwarded requests concurrently; one result each, in order.
    async fn forward_batch(&self, reqs: Vec<ForwardRequest>, sender: Sender) -> Vec<Result<ForwardReply, Status>>;
    /// Describes the cluster to a joining member.
    async fn cluster_info(&self) -> Result<ClusterInfoReply, Status>;
}

/// Who sent a peer call, as far as its connection can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// A member that presented a TLS client certificate the peer CA verified
    /// (`--peer-client-cert-auth`).
    Authenticated,
    /// Anyone who can reach the peer port: the cluster ID is all it proved.
    Unauthenticated,
}

impl Sender {
    pub(crate) fn of<T>(req: &Request<T>) -> Sender {
        // The TLS acceptor only completes a handshake with a client certificate the trusted CA
        // signed, and only asks for one under --peer-client-cert-auth.
        match req.peer_certs() {
            Some(certs) if !certs.is_empty() => Sender::Authenticated,
            _ => Sender::Unauthenticated,
        }
    }
}

/// What the peer listener accepts.
#[derive(Debug, Clone, Copy)]
pub struct PeerLimits {
    /// This member's cluster: every call must name it.
    pub cluster_id: u64,
    /// The largest snapshot received (a state within the quota is far smaller).
    pub snapshot_bytes_max: u64,
    /// Free disk space a snapshot being received must leave.
    pub disk_reserve_bytes: u64,
}

impl PeerLimits {
    /// A snapshot holds at most what the state machine holds, which the backend quota bounds:
    /// twice the quota leaves room for the format's overhead and a leader somewhat past its
    /// quota. The reserve keeps the member able to write its log after the snapshot landed.
    pub fn for_quota(cluster_id: u64, quota_bytes: u64) -> PeerLimits {
        PeerLimits {
            cluster_id,
            snapshot_bytes_max: quota_bytes.saturating_mul(2).max(SNAPSHOT_BYTES_MIN),
            disk_reserve_bytes: DISK_RESERVE_BYTES,
        }
    }
}

/// The snapshot bound is never below this, however small the quota.
const SNAPSHOT_BYTES_MIN: u64 = 64 << 20;
/// Free space a snapshot being received must leave on its disk.
const DISK_RESERVE_BYTES: u64 = 64 << 20;
/// Free space is checked again after each this many bytes received.
const DISK_CHECK_EVERY_BYTES: u64 = 16 << 20;

#[derive(Clone)]
pub struct PeerService {
    raft: Raft,
    sm: crate::StateMachine,
    contact: Arc<crate::group::LeaderContact>,
    handler: Arc<OnceLock<Arc<dyn PeerHandler>>>,
    limits: PeerLimits,
}

impl PeerService {
    pub fn new(
        raft: Raft,
        sm: crate::StateMachine,
        contact: Arc<crate::group::LeaderContact>,
        limits: PeerLimits,
    ) -> Self {
        PeerService { raft, sm, contact, handler: Arc::new(OnceLock::new()), limits }
    }

    /// Refuses a call that does not name this member's cluster.
    fn check<T>(&self, req: &Request<T>) -> Result<(), Status> {
        crate::network::check_cluster_id(req.metadata(), self.limits.cluster_id, false)
            .inspect_err(|s| refused(s.message()))
    }

    /// Installs the handler for forwarded requests (once the services exist).
    pub fn set_handler(&self, h: Arc<dyn PeerHandler>) {
        let _ = self.handler.set(h);
    }

    fn handler(&self) -> Result<&Arc<dyn PeerHandler>, Status> {
        self.handler.get().ok_or_else(|| Status::unavailable("etcdserver: server stopped"))
    }

    /// The meta group's side of the range transport, sharing this service's handler for
    /// forwarded requests.
    pub fn meta_receiver(&self) -> MetaReceiver {
        MetaReceiver { raft: self.raft.clone(), contact: self.contact.clone(), handler: self.handler.clone() }
    }
}

/// The most requests one forwarded batch on the range transport may hold (members send at most
/// 512).
const FORWARD_BATCH_REQUESTS_MAX: usize = 4096;

/// A forwarded batch's answer: one result per request, in order, an error as its gRPC status.
async fn forward_batch(handler: &dyn PeerHandler, reqs: Vec<ForwardRequest>, sender: Sender) -> ForwardBatchReply {
    let results = handler
        .forward_batch(reqs, sender)
        .await
        .into_iter()
        .map(|r| ForwardResult {
            result: Some(match r {
                Ok(reply) => forward_result::Result::Reply(reply),
                Err(s) => forward_result::Result::Error(ErrorStatus {
                    code: s.code() as i32,
                    message: s.message().to_string(),
                }),
            }),
        })
        .collect();
    ForwardBatchReply { results }
}

/// Logs a refused call, at most once every 10 s (a member of another cluster retries often).
fn refused(msg: &str) {
    static LAST: parking_lot::Mutex<Option<std::time::Instant>> = parking_lot::Mutex::new(None);
    let mut last = LAST.lock();
    if last.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(10)) {
        *last = Some(std::time::Instant::now());
        tracing::error!(error = %msg, "refused a peer call");
    }
}

/// Free bytes for an unprivileged writer on the file system that holds `dir`.
pub fn free_disk_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Whether `more` bytes may still be written under `dir` leaving `reserve` free.
fn check_disk(dir: &std::path::Path, more: u64, reserve: u64) -> std::io::Result<()> {
    disk_verdict(dir, free_disk_bytes(dir)?, more, reserve)
}

/// [`check_disk`]'s decision, given the free bytes measured (apart, so that it is tested with exact
/// figures: a disk's free space moves under a test while others run beside it).
fn disk_verdict(dir: &std::path::Path, free: u64, more: u64, reserve: u64) -> std::io::Result<()> {
    if free < more.saturating_add(reserve) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            format!(
                "not enough free disk space in {} for a snapshot: {free} bytes free, {} more needed and {reserve} kept free",
                dir.display(),
                more
            ),
        ));
    }
    Ok(())
}

fn decode<T: serde::de::DeserializeOwned>(r: &RaftRequest) -> Result<T, Status> {
    postcard::from_bytes(&r.data).map_err(|e| Status::invalid_argument(format!("bad raft message: {e}")))
}

fn reply<T: serde::Serialize, E: std::fmt::Display>(r: Result<T, E>) -> Result<Response<RaftReply>, Status> {
    Ok(Response::new(match r {
        Ok(v) => {
            RaftReply { data: postcard::to_allocvec(&v).expect("raft types serialize").into(), error: String::new() }
        }
        Err(e) => RaftReply { data: Default::default(), error: e.to_string() },
    }))
}

type ReplyStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<RaftReply, Status>> + Send>>;

#[tonic::async_trait]
impl Peer for PeerService {
    type StreamAppendStream = ReplyStream;

    async fn stream_append(&self, req: Request<Streaming<RaftRequest>>) -> Result<Response<ReplyStream>, Status> {
        self.check(&req)?;
        // The input ends at the first undecodable message or transport error; openraft then ends
        // the output after answering what came before, and the leader starts a new stream.
        let input = req
            .into_inner()
            .map(|r| {
                let msg = r.ok()?;
                postcard::from_bytes::<openraft::raft::AppendEntriesRequest<crate::TypeConfig>>(&msg.data).ok()
            })
            .take_while(|m| futures::future::ready(m.is_some()))
            .filter_map(futures::future::ready);
        let contact = self.contact.clone();
        let output = self.raft.stream_append(input).map(move |r| {
            if matches!(r, Ok(Ok(_)) | Ok(Err(openraft::raft::StreamAppendError::Conflict(_)))) {
                contact.touch();
            }
            Ok(match r {
                Ok(result) => RaftReply {
                    data: postcard::to_allocvec(&result).expect("raft types serialize").into(),
                    error: String::new(),
                },
                Err(fatal) => RaftReply { data: Default::default(), error: fatal.to_string() },
            })
        });
        Ok(Response::new(Box::pin(output)))
    }

    async fn append_entries(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        self.check(&req)?;
        let r = self.raft.append_entries(decode(req.get_ref())?).await;
        if matches!(&r, Ok(resp) if !matches!(resp, openraft::raft::AppendEntriesResponse::HigherVote(_))) {
            self.contact.touch();
        }
        reply(r)
    }

    async fn vote(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        self.check(&req)?;
        reply(self.raft.vote(decode(req.get_ref())?).await)
    }

    async fn pre_vote(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        self.check(&req)?;
        reply(self.raft.pre_vote(decode(req.get_ref())?).await)
    }

    async fn transfer_leader(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        self.check(&req)?;
        reply(self.raft.handle_transfer_leader(decode(req.get_ref())?).await)
    }

    async fn install_snapshot(&self, req: Request<Streaming<SnapshotChunk>>) -> Result<Response<RaftReply>, Status> {
        self.check(&req)?;
        let mut stream = req.into_inner();
        let first = stream.next().await.ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let (vote, meta): (Vote, SnapshotMeta) = postcard::from_bytes(&first.header)
            .map_err(|e| Status::invalid_argument(format!("bad snapshot header: {e}")))?;
        let path = self.sm.new_snapshot_path();
        let dir = path.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
        let PeerLimits { snapshot_bytes_max: max, disk_reserve_bytes: reserve, .. } = self.limits;
        let write = async {
            check_disk(&dir, DISK_CHECK_EVERY_BYTES, reserve)?;
            let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
            let mut received = 0u64;
            let mut checked = 0u64;
            let mut data = Some(first.data);
            loop {
                let Some(bytes) = data.take() else { break };
                received += bytes.len() as u64;
                if received > max {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::FileTooLarge,
                        format!("snapshot larger than {max} bytes (twice --quota-backend-bytes): refused"),
                    ));
                }
                if received - checked >= DISK_CHECK_EVERY_BYTES {
                    check_disk(&dir, DISK_CHECK_EVERY_BYTES, reserve)?;
                    checked = received;
                }
                f.write_all(&bytes)?;
                data = match stream.next().await {
                    Some(chunk) => Some(chunk.map_err(std::io::Error::other)?.data),
                    None => None,
                };
            }
            let f = f.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            Ok::<_, std::io::Error>(())
        };
        if let Err(e) = write.await {
            let _ = std::fs::remove_file(&path);
            tracing::error!(error = %e, "receiving a snapshot failed");
            return Err(match e.kind() {
                std::io::ErrorKind::FileTooLarge | std::io::ErrorKind::StorageFull => {
                    Status::resource_exhausted(format!("snapshot refused: {e}"))
                }
                _ => Status::aborted(format!("snapshot transfer failed: {e}")),
            });
        }
        tracing::info!(last_log_id = ?meta.last_log_id, "received snapshot; installing");
        let snapshot = Snapshot { meta, snapshot: SnapshotData::File(path.clone()) };
        let r = self.raft.install_full_snapshot(vote, snapshot).await;
        // The state machine removes the file after a successful install; clean up otherwise.
        let _ = std::fs::remove_file(&path);
        reply(r)
    }

    async fn forward(&self, req: Request<ForwardRequest>) -> Result<Response<ForwardReply>, Status> {
        self.check(&req)?;
        let sender = Sender::of(&req);
        Ok(Response::new(self.handler()?.forward(req.into_inner(), sender).await?))
    }

    async fn forward_batch(&self, req: Request<ForwardBatchRequest>) -> Result<Response<ForwardBatchReply>, Status> {
        self.check(&req)?;
        let sender = Sender::of(&req);
        Ok(Response::new(forward_batch(&**self.handler()?, req.into_inner().requests, sender).await))
    }

    async fn cluster_info(&self, req: Request<ClusterInfoRequest>) -> Result<Response<ClusterInfoReply>, Status> {
        // A joining member asks before it knows the cluster ID; a known other cluster is refused.
        crate::network::check_cluster_id(req.metadata(), self.limits.cluster_id, true)?;
        Ok(Response::new(self.handler()?.cluster_info().await?))
    }
}

/// The meta group's side of the range transport ([`crate::range::mux`]): its Raft messages,
/// and etcd requests forwarded to its leader, come in the same batches as the ranges', under
/// [`crate::range::mux::META_GROUP`]. (The `Peer` service's own Raft and forwarding calls
/// above stay served, for a member of an older build.) Made by [`PeerService::meta_receiver`].
#[derive(Clone)]
pub struct MetaReceiver {
    raft: Raft,
    contact: Arc<crate::group::LeaderContact>,
    handler: Arc<OnceLock<Arc<dyn PeerHandler>>>,
}

impl MetaReceiver {
    /// Starts answering one message: an append is handed to `appends` now (so appends reach
    /// Raft in the order they came in) and answered when the meta group has it on disk; without
    /// `appends` it is refused. `sender` is who the connection it came on proved to be.
    pub(crate) fn message(
        &self,
        kind: u32,
        data: bytes::Bytes,
        appends: Option<&AppendPipe>,
        sender: Sender,
    ) -> futures::future::BoxFuture<'static, Result<Vec<u8>, String>> {
        use crate::range::mux::Kind;
        use futures::FutureExt;
        fn decode<T: serde::de::DeserializeOwned>(data: &[u8]) -> Result<T, String> {
            postcard::from_bytes(data).map_err(|e| format!("bad meta group message: {e}"))
        }
        fn encode<T: serde::Serialize, E: std::fmt::Display>(r: Result<T, E>) -> Result<Vec<u8>, String> {
            r.map(|v| postcard::to_allocvec(&v).expect("raft types serialize")).map_err(|e| e.to_string())
        }
        let raft = self.raft.clone();
        match Kind::from_u32(kind) {
            Some(Kind::Append) => {
                let Some(pipe) = appends else {
                    return futures::future::ready(Err(
                        "the meta group's appends travel only on a Ranges/Stream".into()
                    ))
                    .boxed();
                };
                let rx = match decode(&data) {
                    Ok(req) => pipe.submit(&raft, &self.contact, req),
                    Err(e) => return futures::future::ready(Err(e)).boxed(),
                };
                async move { rx.await.unwrap_or_else(|_| Err("the meta group's append stream ended".into())) }.boxed()
            }
            Some(Kind::Vote) => async move { encode(raft.vote(decode(&data)?).await) }.boxed(),
            Some(Kind::PreVote) => async move { encode(raft.pre_vote(decode(&data)?).await) }.boxed(),
            Some(Kind::TransferLeader) => {
                async move { encode(raft.handle_transfer_leader(decode(&data)?).await) }.boxed()
            }
            Some(Kind::Forward) => {
                let handler = self.handler.get().cloned();
                async move {
                    // The bounds of a `Peer/ForwardBatch` call (members send far smaller ones).
                    if data.len() > crate::network::PEER_MESSAGE_BYTES_MAX {
                        return Err(format!(
                            "forwarded batch of {} bytes refused: at most {} bytes",
                            data.len(),
                            crate::network::PEER_MESSAGE_BYTES_MAX
                        ));
                    }
                    let reqs = <ForwardBatchRequest as prost::Message>::decode(&data[..])
                        .map_err(|e| format!("bad forwarded batch: {e}"))?
                        .requests;
                    if reqs.len() > FORWARD_BATCH_REQUESTS_MAX {
                        return Err(format!(
                            "forwarded batch of {} requests refused: at most {FORWARD_BATCH_REQUESTS_MAX}",
                            reqs.len()
                        ));
                    }
                    let reply = match handler {
                        Some(h) => forward_batch(&*h, reqs, sender).await,
                        // As the `Peer/ForwardBatch` call answers before the services exist.
                        None => {
                            let stopped = ForwardResult {
                                result: Some(forward_result::Result::Error(ErrorStatus {
                                    code: tonic::Code::Unavailable as i32,
                                    message: "etcdserver: server stopped".into(),
                                })),
                            };
                            ForwardBatchReply { results: vec![stopped; reqs.len()] }
                        }
                    };
                    Ok(prost::Message::encode_to_vec(&reply))
                }
                .boxed()
            }
            _ => futures::future::ready(Err(format!("message kind {kind} is not one of the meta group's"))).boxed(),
        }
    }
}

/// One incoming stream's appends for the meta group, handed to openraft's pipelined
/// `Raft::stream_append` in the order they arrived: appends in flight one after another, as on
/// the `Peer/StreamAppend` call, so the follower's fsyncs overlap. The stream's answers come in
/// the same order; each goes to the oldest waiting append. After a conflict (or a stopped Raft)
/// openraft ends its stream: the appends still waiting are answered with an error, and the next
/// append starts a new one (the leader starts again from the conflict anyway).
///
/// Appends that arrive out of order (a sender whose stream broke and opened again) are still
/// safe: Raft checks each append's previous entry; order only saves the conflicts.
#[derive(Default)]
pub struct AppendPipe {
    state: Arc<parking_lot::Mutex<PipeState>>,
}

type AppendAnswer = Result<Vec<u8>, String>;

#[derive(Default)]
struct PipeState {
    /// Feeds the running `stream_append`; `None` when none runs.
    input: Option<tokio::sync::mpsc::UnboundedSender<openraft::raft::AppendEntriesRequest<crate::TypeConfig>>>,
    /// Who waits for the running stream's answers, oldest first. Bounded by the transport:
    /// a stream carries at most `STREAM_BATCHES_MAX` unanswered batches.
    waiting: std::collections::VecDeque<tokio::sync::oneshot::Sender<AppendAnswer>>,
}

impl AppendPipe {
    fn submit(
        &self,
        raft: &Raft,
        contact: &Arc<crate::group::LeaderContact>,
        req: openraft::raft::AppendEntriesRequest<crate::TypeConfig>,
    ) -> tokio::sync::oneshot::Receiver<AppendAnswer> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut st = self.state.lock();
        let input = st.input.get_or_insert_with(|| {
            let (input, requests) = tokio::sync::mpsc::unbounded_channel();
            let answers = raft.stream_append(tokio_stream::wrappers::UnboundedReceiverStream::new(requests));
            tokio::spawn(answer_appends(answers, self.state.clone(), contact.clone()));
            input
        });
        if input.send(req).is_ok() {
            st.waiting.push_back(tx);
        }
        rx
    }
}

impl Drop for AppendPipe {
    /// The incoming stream ended: so does the input, and openraft's stream after answering
    /// what it has.
    fn drop(&mut self) {
        self.state.lock().input = None;
    }
}

/// Hands each of openraft's answers to the oldest waiting append, until the stream ends.
async fn answer_appends(
    answers: impl futures::Stream<
        Item = Result<openraft::raft::StreamAppendResult<crate::TypeConfig>, openraft::error::Fatal<crate::TypeConfig>>,
    >,
    state: Arc<parking_lot::Mutex<PipeState>>,
    contact: Arc<crate::group::LeaderContact>,
) {
    futures::pin_mut!(answers);
    while let Some(r) = answers.next().await {
        if matches!(r, Ok(Ok(_)) | Ok(Err(openraft::raft::StreamAppendError::Conflict(_)))) {
            contact.touch();
        }
        let answer = match r {
            Ok(result) => Ok(postcard::to_allocvec(&result).expect("raft types serialize")),
            Err(fatal) => Err(fatal.to_string()),
        };
        let waiter = state.lock().waiting.pop_front();
        if let Some(w) = waiter {
            let _ = w.send(answer);
        }
    }
    let mut st = state.lock();
    st.input = None;
    // Dropped: each still waiting is answered with an error.
    st.waiting.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_needs_free_disk_space_beyond_the_reserve() {
        let d = tempfile::tempdir().unwrap();
        assert!(free_disk_bytes(d.path()).unwrap() > 0);
        check_disk(d.path(), 0, 0).expect("nothing needed");
        // No disk here has 2^63 bytes free, whatever other tests write or delete meanwhile.
        let e = check_disk(d.path(), 1 << 63, 0).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::StorageFull);
        assert!(e.to_string().contains("not enough free disk space"), "{e}");
        let e = check_disk(d.path(), 0, 1 << 63).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::StorageFull, "the reserve counts");
        // The boundary, with exact figures.
        let free = 1000;
        disk_verdict(d.path(), free, 600, 400).expect("exactly enough");
        assert!(disk_verdict(d.path(), free, 601, 400).is_err(), "one byte short");
        assert!(disk_verdict(d.path(), free, 600, 401).is_err(), "one byte of reserve short");
        assert!(disk_verdict(d.path(), free, u64::MAX, 1).is_err(), "no overflow");
    }

    #[test]
    fn the_snapshot_bound_follows_the_quota() {
        assert_eq!(PeerLimits::for_quota(1, 2 << 30).snapshot_bytes_max, 4 << 30);
        assert_eq!(PeerLimits::for_quota(1, 1 << 20).snapshot_bytes_max, SNAPSHOT_BYTES_MIN);
    }

    #[test]
    fn cluster_ids_are_checked() {
        use crate::network::{check_cluster_id, CLUSTER_ID_HEADER};
        let mut md = tonic::metadata::MetadataMap::new();
        assert!(check_cluster_id(&md, 0xab, true).is_ok(), "optional: absent is fine");
        assert_eq!(check_cluster_id(&md, 0xab, false).unwrap_err().code(), tonic::Code::FailedPrecondition);
        md.insert(CLUSTER_ID_HEADER, "ab".parse().unwrap());
        assert!(check_cluster_id(&md, 0xab, false).is_ok());
        let e = check_cluster_id(&md, 0xac, true).unwrap_err();
        assert!(e.message().contains("cluster ID mismatch: the call is for cluster ab"), "{e:?}");
        md.insert(CLUSTER_ID_HEADER, "not hex".parse().unwrap());
        assert!(check_cluster_id(&md, 0xab, false).is_err());
    }
}
