//! etcd's Lease service.

use std::time::Instant;

use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::lease_server::Lease as LeaseApi;
use cairn_services::access::Caller;
use tonic::{Request, Response, Status};

use super::{status, Api};

/// Keep-alive responses queued for one stream's client.
const KEEP_ALIVE_QUEUE: usize = 16;

pub(crate) type KeepAliveStream = tokio_stream::wrappers::ReceiverStream<Result<pb::LeaseKeepAliveResponse, Status>>;

#[tonic::async_trait]
impl LeaseApi for Api {
    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_grant(
        &self,
        req: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        self.call("LeaseGrant", req, |_, _| Ok(()), |r| self.leases.grant(r)).await
    }

    /// Revoking deletes the lease's keys: apply checks the caller's write access to each, as
    /// etcd (the keys are only known for certain there).
    async fn lease_revoke(
        &self,
        req: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        self.call("LeaseRevoke", req, |_, _| Ok(()), |r| self.leases.revoke(r)).await
    }

    /// Each keep-alive on the stream is answered in turn (by the leader, through this member).
    /// A failure that is not the lease's (no leader, a timeout) ends the stream with its status,
    /// as etcd does; the client then reconnects.
    async fn lease_keep_alive(
        &self,
        req: Request<tonic::Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        self.caller(req.metadata()).map_err(status)?;
        Ok(Response::new(self.keep_alive(req.into_inner())))
    }

    /// Listing the lease's keys needs read access to each (as etcd).
    async fn lease_time_to_live(
        &self,
        req: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let check = |w: &Caller, r: &pb::LeaseTimeToLiveRequest| self.access.lease_time_to_live(w, r);
        self.call("LeaseTimeToLive", req, check, |r| self.leases.time_to_live(r)).await
    }

    async fn lease_leases(
        &self,
        req: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        self.call("LeaseLeases", req, |_, _| Ok(()), |_| self.leases.leases()).await
    }
}

impl Api {
    /// Answers each keep-alive of `requests` in turn, until the requests end or one fails.
    ///
    /// While auth is enabled, opening the stream needs a valid token (the caller checks it). It
    /// is not checked again per keep-alive (etcd checks none), so a lease kept alive outlives
    /// its client's token.
    pub(crate) fn keep_alive<S>(&self, mut requests: S) -> KeepAliveStream
    where
        S: futures::Stream<Item = Result<pb::LeaseKeepAliveRequest, Status>> + Unpin + Send + 'static,
    {
        let (tx, rx) = tokio::sync::mpsc::channel(KEEP_ALIVE_QUEUE);
        let api = self.clone();
        tokio::spawn(async move {
            use futures::StreamExt;
            while let Some(Ok(r)) = requests.next().await {
                let t = Instant::now();
                let resp = api.leases.keep_alive(r).await;
                let out = api.done("LeaseKeepAlive", t, resp).map(Response::into_inner);
                let failed = out.is_err();
                if tx.send(out).await.is_err() || failed {
                    return;
                }
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}
