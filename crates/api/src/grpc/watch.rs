//! etcd's Watch service: one task per stream (`cairn_services::watch::serve`).

use cairn_proto::etcdserverpb as pb;
use tonic::{Request, Response, Status};

use super::Api;

/// etcd's Watch service (routed by `watch_service`).
impl Api {
    pub(crate) async fn watch_stream(
        &self,
        req: Request<tonic::Streaming<pb::WatchRequest>>,
    ) -> Result<Response<crate::watch_service::OutStream>, Status> {
        // Each create is checked against the auth store as it is then (`Access::watch_permit`).
        let permit = self.access.watch_permit(super::token(req.metadata()).map(str::to_string));
        let requests = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(cairn_services::watch::OUTBOUND_QUEUE);
        tokio::spawn(cairn_services::watch::serve(self.c.clone(), requests, tx, Some(permit)));
        Ok(Response::new(crate::watch_service::out_stream(rx)))
    }
}
