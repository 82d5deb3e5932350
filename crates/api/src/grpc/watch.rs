//! etcd's Watch service: one task per stream (`cairn_services::watch::serve`).

use cairn_proto::etcdserverpb as pb;
use cairn_services::watch::OutBatch;
use tonic::{Request, Response, Status};

use super::Api;

/// etcd's Watch service (routed by `watch_service`).
impl Api {
    pub(crate) async fn watch_stream(
        &self,
        req: Request<tonic::Streaming<pb::WatchRequest>>,
    ) -> Result<Response<crate::watch_service::OutStream>, Status> {
        let token = super::token(req.metadata()).map(str::to_string);
        Ok(Response::new(crate::watch_service::out_stream(self.watch(token, req.into_inner()))))
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
