//! etcd's Auth service.

use std::time::Instant;

use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::auth_server::Auth as AuthApi;
use cairn_services::access::Caller;
use tonic::{Request, Response, Status};

use super::Api;

/// etcd's Auth service. Management calls need the root role once auth is enabled (etcd's
/// IsAdminPermitted); a user may read its own record and the roles it holds.
#[tonic::async_trait]
impl AuthApi for Api {
    async fn auth_enable(
        &self,
        req: Request<pb::AuthEnableRequest>,
    ) -> Result<Response<pb::AuthEnableResponse>, Status> {
        self.call("AuthEnable", req, |w, _| w.admin(), |_| self.auth.enable()).await
    }

    async fn auth_disable(
        &self,
        req: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthDisableResponse>, Status> {
        self.call("AuthDisable", req, |w, _| w.admin(), |_| self.auth.disable()).await
    }

    async fn auth_status(
        &self,
        req: Request<pb::AuthStatusRequest>,
    ) -> Result<Response<pb::AuthStatusResponse>, Status> {
        self.call("AuthStatus", req, |w, _| w.admin(), |_| self.auth.status()).await
    }

    /// Needs no token: this is how a client gets one.
    async fn authenticate(
        &self,
        req: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let t = Instant::now();
        let r = self.auth.authenticate(req.into_inner()).await;
        self.done("Authenticate", t, r)
    }

    async fn user_add(
        &self,
        req: Request<pb::AuthUserAddRequest>,
    ) -> Result<Response<pb::AuthUserAddResponse>, Status> {
        self.call("UserAdd", req, |w, _| w.admin(), |r| self.auth.user_add(r)).await
    }

    async fn user_get(
        &self,
        req: Request<pb::AuthUserGetRequest>,
    ) -> Result<Response<pb::AuthUserGetResponse>, Status> {
        let check = |w: &Caller, r: &pb::AuthUserGetRequest| w.user_get(&r.name);
        self.call("UserGet", req, check, |r| self.auth.user_get(r)).await
    }

    async fn user_list(
        &self,
        req: Request<pb::AuthUserListRequest>,
    ) -> Result<Response<pb::AuthUserListResponse>, Status> {
        self.call("UserList", req, |w, _| w.admin(), |_| self.auth.user_list()).await
    }

    async fn user_delete(
        &self,
        req: Request<pb::AuthUserDeleteRequest>,
    ) -> Result<Response<pb::AuthUserDeleteResponse>, Status> {
        self.call("UserDelete", req, |w, _| w.admin(), |r| self.auth.user_delete(r)).await
    }

    async fn user_change_password(
        &self,
        req: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<pb::AuthUserChangePasswordResponse>, Status> {
        self.call("UserChangePassword", req, |w, _| w.admin(), |r| self.auth.user_change_password(r)).await
    }

    async fn user_grant_role(
        &self,
        req: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<pb::AuthUserGrantRoleResponse>, Status> {
        self.call("UserGrantRole", req, |w, _| w.admin(), |r| self.auth.user_grant_role(r)).await
    }

    async fn user_revoke_role(
        &self,
        req: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<pb::AuthUserRevokeRoleResponse>, Status> {
        self.call("UserRevokeRole", req, |w, _| w.admin(), |r| self.auth.user_revoke_role(r)).await
    }

    async fn role_add(
        &self,
        req: Request<pb::AuthRoleAddRequest>,
    ) -> Result<Response<pb::AuthRoleAddResponse>, Status> {
        self.call("RoleAdd", req, |w, _| w.admin(), |r| self.auth.role_add(r)).await
    }

    async fn role_get(
        &self,
        req: Request<pb::AuthRoleGetRequest>,
    ) -> Result<Response<pb::AuthRoleGetResponse>, Status> {
        let check = |w: &Caller, r: &pb::AuthRoleGetRequest| w.role_get(&r.role);
        self.call("RoleGet", req, check, |r| self.auth.role_get(r)).await
    }

    async fn role_list(
        &self,
        req: Request<pb::AuthRoleListRequest>,
    ) -> Result<Response<pb::AuthRoleListResponse>, Status> {
        self.call("RoleList", req, |w, _| w.admin(), |_| self.auth.role_list()).await
    }

    async fn role_delete(
        &self,
        req: Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<Response<pb::AuthRoleDeleteResponse>, Status> {
        self.call("RoleDelete", req, |w, _| w.admin(), |r| self.auth.role_delete(r)).await
    }

    async fn role_grant_permission(
        &self,
        req: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<pb::AuthRoleGrantPermissionResponse>, Status> {
        self.call("RoleGrantPermission", req, |w, _| w.admin(), |r| self.auth.role_grant_permission(r)).await
    }

    async fn role_revoke_permission(
        &self,
        req: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<pb::AuthRoleRevokePermissionResponse>, Status> {
        self.call("RoleRevokePermission", req, |w, _| w.admin(), |r| self.auth.role_revoke_permission(r)).await
    }
}
