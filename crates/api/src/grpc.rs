//! etcd's v3 gRPC services.

use std::sync::Arc;
use std::time::Instant;

use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::auth_server::{Auth as AuthApi, AuthServer};
use cairn_proto::etcdserverpb::cluster_server::{Cluster as ClusterApi, ClusterServer};
use cairn_proto::etcdserverpb::kv_server::{Kv as KvApi, KvServer};
use cairn_proto::etcdserverpb::lease_server::{Lease as LeaseApi, LeaseServer};
use cairn_proto::etcdserverpb::maintenance_server::{Maintenance as MaintenanceApi, MaintenanceServer};
use cairn_proto::v3electionpb as el;
use cairn_proto::v3electionpb::election_server::{Election as ElectionApi, ElectionServer};
use cairn_proto::v3lockpb as lk;
use cairn_proto::v3lockpb::lock_server::{Lock as LockApi, LockServer};
use cairn_services::auth::{self, Auth, AuthInfo, Guard};
use cairn_services::cluster::Cluster;
use cairn_services::kv::Kv;
use cairn_services::lease::Leases;
use cairn_services::lock::{prefix_end, Elections, Locks};
use cairn_services::maintenance::Maintenance;
use cairn_services::members::Members;
use cairn_services::metrics::{GrpcLabels, MethodLabels};
use cairn_services::peer::status;
use cairn_shard::auth::{Access, AuthState};
use cairn_types::Error;
use prost::Message;
use tonic::{Request, Response, Status};

/// The gRPC services of one member, to add to a router.
pub struct Services {
    pub kv: KvServer<Api>,
    pub cluster: ClusterServer<Api>,
    pub watch: crate::watch_service::WatchService,
    pub lease: LeaseServer<Api>,
    pub lock: LockServer<Api>,
    pub election: ElectionServer<Api>,
    pub maintenance: MaintenanceServer<Api>,
    pub auth: AuthServer<Api>,
}

impl Services {
    /// Adds every service to `routes`.
    pub fn add_to(self, routes: tonic::service::Routes) -> tonic::service::Routes {
        routes
            .add_service(self.kv)
            .add_service(self.cluster)
            .add_service(self.watch)
            .add_service(self.lease)
            .add_service(self.lock)
            .add_service(self.election)
            .add_service(self.maintenance)
            .add_service(self.auth)
    }
}

/// All client-facing gRPC services of one member.
#[derive(Clone)]
pub struct Api {
    c: Arc<Cluster>,
    kv: Kv,
    leases: Leases,
    locks: Locks,
    elections: Elections,
    members: Members,
    maintenance: Maintenance,
    auth: Auth,
}

impl Api {
    pub fn new(c: Arc<Cluster>) -> Api {
        Api {
            kv: Kv::new(c.clone()),
            leases: Leases::new(c.clone()),
            locks: Locks::new(c.clone()),
            elections: Elections::new(c.clone()),
            members: Members::new(c.clone()),
            maintenance: Maintenance::new(c.clone()),
            auth: Auth::new(c.clone()),
            c,
        }
    }

    /// The services, ready to add to a tonic router, with etcd's message size limit.
    pub fn services(self) -> Services {
        let max = self.c.limits().grpc_message_bytes_max();
        Services {
            kv: KvServer::new(self.clone()).max_decoding_message_size(max).max_encoding_message_size(usize::MAX),
            cluster: ClusterServer::new(self.clone()).max_decoding_message_size(max),
            watch: crate::watch_service::WatchService::new(self.clone(), max),
            lease: LeaseServer::new(self.clone()).max_decoding_message_size(max),
            lock: LockServer::new(self.clone()).max_decoding_message_size(max),
            election: ElectionServer::new(self.clone()).max_decoding_message_size(max),
            maintenance: MaintenanceServer::new(self.clone()).max_decoding_message_size(max),
            auth: AuthServer::new(self).max_decoding_message_size(max),
        }
    }

    /// Records the call in metrics and maps the error to etcd's status.
    fn done<T>(&self, method: &str, start: Instant, r: Result<T, Error>) -> Result<Response<T>, Status> {
        let m = &self.c.metrics;
        m.grpc_seconds
            .get_or_create(&MethodLabels { method: method.to_string() })
            .observe(start.elapsed().as_secs_f64());
        let code = match &r {
            Ok(_) => "OK".to_string(),
            Err(e) => format!("{:?}", tonic::Code::from_i32(e.to_etcd().0)),
        };
        m.grpc_requests.get_or_create(&GrpcLabels { method: method.to_string(), code }).inc();
        match r {
            Ok(v) => Ok(Response::new(v)),
            Err(e) => {
                if matches!(e, Error::Internal(_) | Error::Corrupt) {
                    tracing::error!(method, error = %e, "request failed");
                }
                Err(status(e))
            }
        }
    }

    /// Who sends `md`'s request: `None` while auth is disabled. etcd clients put their token in
    /// the `token` metadata (its HTTP gateway uses `authorization`).
    /// Also the guard its work runs under: always, so that a request checked while auth was
    /// disabled is refused if auth is enabled before it applies, as etcd.
    fn caller(&self, md: &tonic::metadata::MetadataMap) -> Result<(Option<Caller>, Guard), Error> {
        let st = self.c.store().auth();
        let token = md.get("token").or_else(|| md.get("authorization")).and_then(|v| v.to_str().ok());
        let info = auth::authorize(&st, token)?;
        let guard = Guard { revision: st.revision, user: info.as_ref().map(|i| i.user.clone()).unwrap_or_default() };
        Ok((info.map(|info| Caller { info, st }), guard))
    }

    /// Checks the caller and runs `f` (guarded by the auth revision the caller was checked at,
    /// so its writes are refused if permissions changed meanwhile), then records the call.
    async fn call<R, T, Fut>(
        &self,
        method: &str,
        req: Request<R>,
        check: impl FnOnce(&Caller, &R) -> Result<(), Error>,
        f: impl FnOnce(R) -> Fut,
    ) -> Result<Response<T>, Status>
    where
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let t = Instant::now();
        let r = match self.caller(req.metadata()) {
            Err(e) => Err(e),
            Ok((who, guard)) => {
                let req = req.into_inner();
                match who.as_ref().map_or(Ok(()), |w| check(w, &req)) {
                    Err(e) => Err(e),
                    Ok(()) => auth::guarded(Some(guard), f(req)).await,
                }
            }
        };
        self.done(method, t, r)
    }

    /// etcd's request size limit, applied to everything that is proposed through the log.
    fn check_size(&self, len: usize) -> Result<(), Error> {
        let limit = self.c.limits().request_bytes_max;
        if len > limit {
            return Err(Error::RequestTooLarge { limit });
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl KvApi for Api {
    async fn range(&self, req: Request<pb::RangeRequest>) -> Result<Response<pb::RangeResponse>, Status> {
        self.call("Range", req, |w, r| w.range(r), |r| self.kv.range(r)).await
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        self.call(
            "Put",
            req,
            |w, r| w.put(r),
            |r| async move {
                self.check_size(r.encoded_len())?;
                self.kv.put(r).await
            },
        )
        .await
    }

    async fn delete_range(
        &self,
        req: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        self.call(
            "DeleteRange",
            req,
            |w, r| w.delete(r),
            |r| async move {
                self.check_size(r.encoded_len())?;
                self.kv.delete_range(r).await
            },
        )
        .await
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        self.call(
            "Txn",
            req,
            |w, r| w.txn(r),
            |r| async move {
                self.check_size(r.encoded_len())?;
                self.kv.txn(r).await
            },
        )
        .await
    }

    async fn compact(&self, req: Request<pb::CompactionRequest>) -> Result<Response<pb::CompactionResponse>, Status> {
        self.call("Compact", req, |_, _| Ok(()), |r| self.kv.compact(r)).await
    }
}

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

/// etcd's Watch service (routed by `watch_service`).
impl Api {
    pub(crate) async fn watch_stream(
        &self,
        req: Request<tonic::Streaming<pb::WatchRequest>>,
    ) -> Result<Response<crate::watch_service::OutStream>, Status> {
        // Each create is checked against the auth store as it is then, with the stream's token
        // (etcd checks at create, too); nothing is checked while auth is disabled.
        let token = req.metadata().get("token").or_else(|| req.metadata().get("authorization")).cloned();
        let c = self.c.clone();
        let permit: cairn_services::watch::Permit = Arc::new(move |key: &[u8], end: &[u8]| {
            let st = c.store().auth();
            match auth::authorize(&st, token.as_ref().and_then(|t| t.to_str().ok()))? {
                None => Ok(()),
                Some(info) => st.check_range(&info.user, key, end, Access::Read),
            }
        });
        let requests = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(cairn_services::watch::OUTBOUND_QUEUE);
        tokio::spawn(cairn_services::watch::serve(self.c.clone(), requests, tx, Some(permit)));
        Ok(Response::new(crate::watch_service::out_stream(rx)))
    }
}

/// Keep-alive responses queued for one stream's client.
const KEEP_ALIVE_QUEUE: usize = 16;

#[tonic::async_trait]
impl LeaseApi for Api {
    type LeaseKeepAliveStream = tokio_stream::wrappers::ReceiverStream<Result<pb::LeaseKeepAliveResponse, Status>>;

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
        // While auth is enabled, opening the stream needs a valid token. It is not checked again
        // per keep-alive (etcd checks none), so a lease kept alive outlives its client's token.
        self.caller(req.metadata()).map_err(status)?;
        let mut requests = req.into_inner();
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
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    /// Listing the lease's keys needs read access to each (as etcd).
    async fn lease_time_to_live(
        &self,
        req: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let store = self.c.store().clone();
        let check = move |w: &Caller, r: &pb::LeaseTimeToLiveRequest| match store.lease(r.id) {
            Some(l) if r.keys => l.keys.iter().try_for_each(|k| w.check(k, &[], Access::Read)),
            _ => Ok(()),
        };
        self.call("LeaseTimeToLive", req, check, |r| self.leases.time_to_live(r)).await
    }

    async fn lease_leases(
        &self,
        req: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        self.call("LeaseLeases", req, |_, _| Ok(()), |_| self.leases.leases()).await
    }
}

/// etcd's v3lock service: Lock waits until the lock is held (or the client cancels).
#[tonic::async_trait]
impl LockApi for Api {
    /// The lock's keys live under `name/`: the caller needs read and write access there.
    async fn lock(&self, req: Request<lk::LockRequest>) -> Result<Response<lk::LockResponse>, Status> {
        self.call("Lock", req, |w, r| w.prefix_rw(&r.name), |r| self.locks.lock(r)).await
    }

    async fn unlock(&self, req: Request<lk::UnlockRequest>) -> Result<Response<lk::UnlockResponse>, Status> {
        self.call("Unlock", req, |w, r| w.check(&r.key, &[], Access::Write), |r| self.locks.unlock(r)).await
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
        // redb reuses freed pages itself; there is nothing to rewrite.
        let header = Some(self.c.header(0));
        self.call("Defragment", req, |w, _| w.admin(), |_| async move { Ok(pb::DefragmentResponse { header }) }).await
    }

    async fn hash(&self, _req: Request<pb::HashRequest>) -> Result<Response<pb::HashResponse>, Status> {
        Err(unimplemented("Hash (use HashKV)"))
    }

    async fn hash_kv(&self, req: Request<pb::HashKvRequest>) -> Result<Response<pb::HashKvResponse>, Status> {
        let m = &self.maintenance;
        self.call("HashKV", req, |w, _| w.admin(), |r| async move { m.hash_kv(r.revision) }).await
    }

    async fn snapshot(&self, _req: Request<pb::SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(unimplemented("Snapshot"))
    }

    async fn move_leader(
        &self,
        req: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        let run = |r: pb::MoveLeaderRequest| async move {
            if !self.c.is_leader() {
                return Err(Error::NotLeader);
            }
            self.c.raft().trigger().transfer_leader(r.target_id).await.map_err(|_| Error::Stopped)?;
            Ok(pb::MoveLeaderResponse { header: Some(self.c.header(0)) })
        };
        self.call("MoveLeader", req, |w, _| w.admin(), run).await
    }

    async fn downgrade(&self, _req: Request<pb::DowngradeRequest>) -> Result<Response<pb::DowngradeResponse>, Status> {
        Err(unimplemented("Downgrade"))
    }
}

/// An authenticated caller and the auth store its token was checked against.
struct Caller {
    info: AuthInfo,
    st: Arc<AuthState>,
}

impl Caller {
    fn check(&self, key: &[u8], end: &[u8], access: Access) -> Result<(), Error> {
        self.st.check_range(&self.info.user, key, end, access)
    }

    fn admin(&self) -> Result<(), Error> {
        self.st.check_admin(&self.info.user)
    }

    fn range(&self, r: &pb::RangeRequest) -> Result<(), Error> {
        self.check(&r.key, &r.range_end, Access::Read)
    }

    /// etcd: write on the key; read too when the previous value is returned.
    fn put(&self, r: &pb::PutRequest) -> Result<(), Error> {
        self.check(&r.key, &[], Access::Write)?;
        if r.prev_kv {
            self.check(&r.key, &[], Access::Read)?;
        }
        Ok(())
    }

    fn delete(&self, r: &pb::DeleteRangeRequest) -> Result<(), Error> {
        self.check(&r.key, &r.range_end, Access::Write)?;
        if r.prev_kv {
            self.check(&r.key, &r.range_end, Access::Read)?;
        }
        Ok(())
    }

    /// Every compare reads; every operation in both branches (nested too) is checked as if it
    /// ran alone, as etcd does.
    fn txn(&self, t: &pb::TxnRequest) -> Result<(), Error> {
        use pb::request_op::Request as Op;
        for c in &t.compare {
            self.check(&c.key, &c.range_end, Access::Read)?;
        }
        for op in t.success.iter().chain(&t.failure) {
            match &op.request {
                Some(Op::RequestRange(r)) => self.range(r)?,
                Some(Op::RequestPut(r)) => self.put(r)?,
                Some(Op::RequestDeleteRange(r)) => self.delete(r)?,
                Some(Op::RequestTxn(n)) => self.txn(n)?,
                None => {}
            }
        }
        Ok(())
    }

    fn prefix_read(&self, name: &[u8]) -> Result<(), Error> {
        let mut prefix = name.to_vec();
        prefix.push(b'/');
        self.check(&prefix, &prefix_end(&prefix), Access::Read)
    }

    fn prefix_rw(&self, name: &[u8]) -> Result<(), Error> {
        self.prefix_read(name)?;
        let mut prefix = name.to_vec();
        prefix.push(b'/');
        self.check(&prefix, &prefix_end(&prefix), Access::Write)
    }

    fn leader_key(&self, l: Option<&el::LeaderKey>) -> Result<(), Error> {
        match l {
            Some(l) => self.check(&l.key, &[], Access::Write),
            None => Ok(()), // refused by the service itself ("leader" field must be provided)
        }
    }
}

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
        let check = |w: &Caller, r: &pb::AuthUserGetRequest| if w.info.user == r.name { Ok(()) } else { w.admin() };
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
        let check = |w: &Caller, r: &pb::AuthRoleGetRequest| {
            let holds = w.st.users.get(&w.info.user).is_some_and(|u| u.roles.contains(&r.role));
            if holds {
                Ok(())
            } else {
                w.admin()
            }
        };
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

/// Rewrites tonic's answers to undecodable requests into grpc-go's, which etcd clients see
/// from etcd. An oversized message: tonic says `OutOfRange` in its own words, grpc-go
/// `ResourceExhausted`, "grpc: received message larger than max (N vs. M)". A malformed
/// message: both say `Internal`; grpc-go prefixes "grpc: error unmarshalling request: ".
/// tonic sends these as trailers-only responses that also carry the `Status` in extensions.
pub fn grpc_go_decode_errors<B>(mut resp: http::Response<B>) -> http::Response<B> {
    let Some(st) = resp.extensions().get::<Status>() else {
        return resp;
    };
    let etcd = if st.code() == tonic::Code::OutOfRange && st.message().contains("decoded message length too large") {
        let nums: Vec<&str> = st.message().split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).collect();
        let (found, limit) = (nums.first().copied().unwrap_or("?"), nums.get(1).copied().unwrap_or("?"));
        Status::resource_exhausted(format!("grpc: received message larger than max ({found} vs. {limit})"))
    } else if st.code() == tonic::Code::Internal && st.message().starts_with("failed to decode Protobuf message") {
        Status::internal(format!("grpc: error unmarshalling request: {}", st.message()))
    } else {
        return resp;
    };
    if etcd.add_header(resp.headers_mut()).is_ok() {
        resp.extensions_mut().insert(etcd);
    }
    resp
}
