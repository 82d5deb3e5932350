//! etcd's Maintenance service.

use std::time::Instant;

use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::maintenance_server::Maintenance as MaintenanceApi;
use tonic::{Request, Response, Status};

use super::Api;

type SnapshotStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!("cairn does not implement {what} yet"))
}

#[tonic::async_trait]
impl MaintenanceApi for Api {
    type SnapshotStream = SnapshotStream;

    /// A valid token if auth is enabled, no particular permission (as etcd).
    async fn alarm(&self, req: Request<pb::AlarmRequest>) -> Result<Response<pb::AlarmResponse>, Status> {
        self.call("Alarm", req, |_, _| Ok(()), |r| self.maintenance.alarm(r)).await
    }

    async fn status(&self, _req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let t = Instant::now();
        let r = Ok(self.maintenance.status());
        self.done("Status", t, r)
    }

    async fn defragment(
        &self,
        req: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        self.call("Defragment", req, |w, _| w.admin(), |_| self.maintenance.defragment()).await
    }

    /// The root role, as etcd (it hashes every key).
    async fn hash(&self, req: Request<pb::HashRequest>) -> Result<Response<pb::HashResponse>, Status> {
        self.call("Hash", req, |w, _| w.admin(), |_| self.maintenance.hash()).await
    }

    async fn hash_kv(&self, req: Request<pb::HashKvRequest>) -> Result<Response<pb::HashKvResponse>, Status> {
        let m = &self.maintenance;
        self.call("HashKV", req, |w, _| w.admin(), |r| async move { m.hash_kv(r.revision).await }).await
    }

    /// A backup of this member's store, streamed (`Maintenance::snapshot`). The root role, as
    /// etcd (it copies every key).
    async fn snapshot(&self, req: Request<pb::SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        let t = Instant::now();
        let (who, _) = self.caller(req.metadata()).map_err(super::status)?;
        if let Some(w) = &who {
            w.admin().map_err(super::status)?;
        }
        let chunks = self.maintenance.snapshot();
        self.done("Snapshot", t, Ok(()))?;
        use futures::StreamExt;
        let stream = tokio_stream::wrappers::ReceiverStream::new(chunks).map(|r| r.map_err(super::status));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn move_leader(
        &self,
        req: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        self.call("MoveLeader", req, |w, _| w.admin(), |r| self.maintenance.move_leader(r)).await
    }

    async fn downgrade(&self, _req: Request<pb::DowngradeRequest>) -> Result<Response<pb::DowngradeResponse>, Status> {
        Err(unimplemented("Downgrade"))
    }
}
