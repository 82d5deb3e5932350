//! etcd's Watch service: one task per stream (`cairn_services::watch::serve`).

use cairn_proto::etcdserverpb as pb;
use cairn_services::watch::OutBatch;
use tonic::{Request, Response, Status};

use super::Api;

/// How often a stream that requires a leader checks that there is one.
const LEADER_CHECK: std::time::Duration = std::time::Duration::from_millis(250);

/// etcd's Watch service (routed by `watch_service`).
impl Api {
    pub(crate) async fn watch_stream(
        &self,
        req: Request<tonic::Streaming<pb::WatchRequest>>,
    ) -> Result<Response<crate::watch_service::OutStream>, Status> {
        let token = super::token(req.metadata()).map(str::to_string);
        let require_leader = super::requires_leader(req.metadata());
        if require_leader && !self.c.has_leader_now() {
            return Err(super::status(cairn_types::Error::NoLeader));
        }
        let out = crate::watch_service::out_stream(self.watch(token, req.into_inner()));
        if !require_leader {
            return Ok(Response::new(out));
        }
        // etcd's monitorLeader: a stream that asked for a leader is ended with
        // `etcdserver: no leader` once this member has been without one for longer than an
        // election timeout, so the client reconnects to a member that has one.
        let c = self.c.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            use futures::StreamExt;
            let mut out = out;
            let mut check = tokio::time::interval(LEADER_CHECK);
            loop {
                tokio::select! {
                    item = out.next() => match item {
                        Some(item) => if tx.send(item).await.is_err() { return },
                        None => return,
                    },
                    _ = check.tick() => if !c.has_leader_now() {
                        let _ = tx.send(Err(super::status(cairn_types::Error::NoLeader))).await;
                        return;
                    },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    /// Serves one watch stream of `requests` from a caller with `token`; its responses arrive
    /// on the returned queue. Each create is checked against the auth store as it is then
    /// (`Access::watch_permit`).
    pub(crate) fn watch<S>(&self, token: Option<String>, requests: S) -> tokio::sync::mpsc::Receiver<OutBatch>
    where
        S: futures::Stream<Item = Result<pb::WatchRequest, Status>> + Unpin + Send + 'static,
    {
        let permit = self.access.watch_permit(token);
        let (tx, rx) = tokio::sync::mpsc::channel(cairn_services::watch::OUTBOUND_QUEUE);
        tokio::spawn(cairn_services::watch::serve(self.c.clone(), requests, tx, Some(permit)));
        rx
    }
}
