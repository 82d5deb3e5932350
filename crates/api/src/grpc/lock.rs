//! etcd's v3lock and v3election services.

use cairn_proto::v3electionpb as el;
use cairn_proto::v3electionpb::election_server::Election as ElectionApi;
use cairn_proto::v3lockpb as lk;
use cairn_proto::v3lockpb::lock_server::Lock as LockApi;
use cairn_services::access::Caller;
use tonic::{Request, Response, Status};

use super::{status, Api};

/// etcd's v3lock service: Lock waits until the lock is held (or the client cancels).
#[tonic::async_trait]
impl LockApi for Api {
    /// The lock's keys live under `name/`: the caller needs read and write access there.
    async fn lock(&self, req: Request<lk::LockRequest>) -> Result<Response<lk::LockResponse>, Status> {
        self.call("Lock", req, |w, r| w.prefix_rw(&r.name), |r| self.locks.lock(r)).await
    }

    async fn unlock(&self, req: Request<lk::UnlockRequest>) -> Result<Response<lk::UnlockResponse>, Status> {
        self.call("Unlock", req, |w, r| w.unlock(&r.key), |r| self.locks.unlock(r)).await
    }
}

/// etcd's v3election service.
#[tonic::async_trait]
impl ElectionApi for Api {
    type ObserveStream = tokio_stream::wrappers::ReceiverStream<Result<el::LeaderResponse, Status>>;

    /// An election's keys live under `name/`, as a lock's.
    async fn campaign(&self, req: Request<el::CampaignRequest>) -> Result<Response<el::CampaignResponse>, Status> {
        self.call("Campaign", req, |w, r| w.prefix_rw(&r.name), |r| self.elections.campaign(r)).await
    }

    async fn proclaim(&self, req: Request<el::ProclaimRequest>) -> Result<Response<el::ProclaimResponse>, Status> {
        let check = |w: &Caller, r: &el::ProclaimRequest| w.leader_key(r.leader.as_ref());
        self.call("Proclaim", req, check, |r| self.elections.proclaim(r)).await
    }

    async fn leader(&self, req: Request<el::LeaderRequest>) -> Result<Response<el::LeaderResponse>, Status> {
        self.call("Leader", req, |w, r| w.prefix_read(&r.name), |r| self.elections.leader(r)).await
    }

    /// The current leader, then every change, until the client goes away; an error (no
    /// leader for the cluster, a timeout) ends the stream with etcd's status.
    async fn observe(&self, req: Request<el::LeaderRequest>) -> Result<Response<Self::ObserveStream>, Status> {
        let (who, _) = self.caller(req.metadata()).map_err(status)?;
        let name = req.into_inner().name;
        if let Some(w) = &who {
            w.prefix_read(&name).map_err(status)?;
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel(OBSERVE_QUEUE);
        let (out_tx, out_rx) = tokio::sync::mpsc::channel(OBSERVE_QUEUE);
        let elections = self.elections.clone();
        tokio::spawn(async move { elections.observe(name, tx).await });
        tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                let failed = r.is_err();
                if out_tx.send(r.map_err(status)).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(out_rx)))
    }

    async fn resign(&self, req: Request<el::ResignRequest>) -> Result<Response<el::ResignResponse>, Status> {
        let check = |w: &Caller, r: &el::ResignRequest| w.leader_key(r.leader.as_ref());
        self.call("Resign", req, check, |r| self.elections.resign(r)).await
    }
}

/// Leader changes queued for one Observe stream.
const OBSERVE_QUEUE: usize = 16;
