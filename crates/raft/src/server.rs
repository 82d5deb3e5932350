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
    /// Executes a request forwarded by a member that is not the leader.
    async fn forward(&self, req: ForwardRequest) -> Result<ForwardReply, Status>;
    /// Executes a batch of forwarded requests concurrently; one result each, in order.
    async fn forward_batch(&self, reqs: Vec<ForwardRequest>) -> Vec<Result<ForwardReply, Status>>;
    /// Describes the cluster to a joining member.
    async fn cluster_info(&self) -> Result<ClusterInfoReply, Status>;
}

#[derive(Clone)]
pub struct PeerService {
    raft: Raft,
    sm: crate::StateMachine,
    contact: Arc<crate::group::LeaderContact>,
    handler: Arc<OnceLock<Arc<dyn PeerHandler>>>,
}

impl PeerService {
    pub fn new(raft: Raft, sm: crate::StateMachine, contact: Arc<crate::group::LeaderContact>) -> Self {
        PeerService { raft, sm, contact, handler: Arc::new(OnceLock::new()) }
    }

    /// Installs the handler for forwarded requests (once the services exist).
    pub fn set_handler(&self, h: Arc<dyn PeerHandler>) {
        let _ = self.handler.set(h);
    }

    fn handler(&self) -> Result<&Arc<dyn PeerHandler>, Status> {
        self.handler.get().ok_or_else(|| Status::unavailable("etcdserver: server stopped"))
    }
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
        let r = self.raft.append_entries(decode(req.get_ref())?).await;
        if matches!(&r, Ok(resp) if !matches!(resp, openraft::raft::AppendEntriesResponse::HigherVote(_))) {
            self.contact.touch();
        }
        reply(r)
    }

    async fn vote(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        reply(self.raft.vote(decode(req.get_ref())?).await)
    }

    async fn pre_vote(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        reply(self.raft.pre_vote(decode(req.get_ref())?).await)
    }

    async fn transfer_leader(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        reply(self.raft.handle_transfer_leader(decode(req.get_ref())?).await)
    }

    async fn install_snapshot(&self, req: Request<Streaming<SnapshotChunk>>) -> Result<Response<RaftReply>, Status> {
        let mut stream = req.into_inner();
        let first = stream.next().await.ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let (vote, meta): (Vote, SnapshotMeta) = postcard::from_bytes(&first.header)
            .map_err(|e| Status::invalid_argument(format!("bad snapshot header: {e}")))?;
        let path = self.sm.new_snapshot_path();
        let write = async {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
            f.write_all(&first.data)?;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(std::io::Error::other)?;
                f.write_all(&chunk.data)?;
            }
            let f = f.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            Ok::<_, std::io::Error>(())
        };
        if let Err(e) = write.await {
            let _ = std::fs::remove_file(&path);
            return Err(Status::aborted(format!("snapshot transfer failed: {e}")));
        }
        tracing::info!(last_log_id = ?meta.last_log_id, "received snapshot; installing");
        let snapshot = Snapshot { meta, snapshot: SnapshotData::File(path.clone()) };
        let r = self.raft.install_full_snapshot(vote, snapshot).await;
        // The state machine removes the file after a successful install; clean up otherwise.
        let _ = std::fs::remove_file(&path);
        reply(r)
    }

    async fn forward(&self, req: Request<ForwardRequest>) -> Result<Response<ForwardReply>, Status> {
        Ok(Response::new(self.handler()?.forward(req.into_inner()).await?))
    }

    async fn forward_batch(&self, req: Request<ForwardBatchRequest>) -> Result<Response<ForwardBatchReply>, Status> {
        let results = self.handler()?.forward_batch(req.into_inner().requests).await;
        let results = results
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
        Ok(Response::new(ForwardBatchReply { results }))
    }

    async fn cluster_info(&self, _req: Request<ClusterInfoRequest>) -> Result<Response<ClusterInfoReply>, Status> {
        Ok(Response::new(self.handler()?.cluster_info().await?))
    }
}
