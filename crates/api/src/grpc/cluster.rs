//! etcd's Cluster service (membership).

use std::time::Instant;

use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::cluster_server::Cluster as ClusterApi;
use tonic::{Request, Response, Status};

use super::Api;

#[tonic::async_trait]
impl ClusterApi for Api {
    async fn member_add(&self, req: Request<pb::MemberAddRequest>) -> Result<Response<pb::MemberAddResponse>, Status> {
        self.call("MemberAdd", req, |w, _| w.admin(), |r| self.members.add(r)).await
    }

    async fn member_remove(
        &self,
        req: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        self.call("MemberRemove", req, |w, _| w.admin(), |r| self.members.remove(r)).await
    }

    async fn member_update(
        &self,
        req: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        self.call("MemberUpdate", req, |w, _| w.admin(), |r| self.members.update(r)).await
    }

    async fn member_list(
        &self,
        req: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        let t = Instant::now();
        let r = self.members.list(req.into_inner()).await;
        self.done("MemberList", t, r)
    }

    async fn member_promote(
        &self,
        req: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        self.call("MemberPromote", req, |w, _| w.admin(), |r| self.members.promote(r)).await
    }
}
