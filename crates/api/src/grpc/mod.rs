//! etcd's v3 gRPC services: one [`Api`] implements every service, one file per service.
//! Each call goes through `Api::call`: the caller from its token, the method's permission
//! check (`cairn_services::access`), then the service, guarded by the auth revision it was
//! checked at; errors map to etcd's codes and messages through `cairn_types::Error::to_etcd`.

use std::sync::Arc;
use std::time::Instant;

use cairn_proto::etcdserverpb::auth_server::AuthServer;
use cairn_proto::etcdserverpb::cluster_server::ClusterServer;
use cairn_proto::etcdserverpb::kv_server::KvServer;
use cairn_proto::etcdserverpb::lease_server::LeaseServer;
use cairn_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use cairn_proto::v3electionpb::election_server::ElectionServer;
use cairn_proto::v3lockpb::lock_server::LockServer;
use cairn_services::access::{Access, Caller};
use cairn_services::auth::{guarded, Auth, Guard};
use cairn_services::kv::Kv;
use cairn_services::lease::Leases;
use cairn_services::lock::{Elections, Locks};
use cairn_services::maintenance::Maintenance;
use cairn_services::members::Members;
use cairn_services::metrics::{GrpcLabels, MethodLabels};
pub use cairn_services::peer::status;
use cairn_services::Router;
use cairn_types::Error;
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
    c: Arc<Router>,
    access: Access,
    kv: Kv,
    leases: Leases,
    locks: Locks,
    elections: Elections,
    members: Members,
    maintenance: Maintenance,
    auth: Auth,
}

impl Api {
    pub fn new(c: Arc<Router>) -> Api {
        Api {
            access: Access::new(c.clone()),
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

    /// The member's router (for its limits).
    pub(crate) fn router(&self) -> &Arc<Router> {
        &self.c
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

    /// Who sends `md`'s request, and the guard its work runs under (`Access::caller`).
    pub(crate) fn caller(&self, md: &tonic::metadata::MetadataMap) -> Result<(Option<Caller>, Guard), Error> {
        self.access.caller(token(md))
    }

    /// Checks the caller and runs `f` (guarded by the auth revision the caller was checked at,
    /// so its writes are refused if permissions changed meanwhile), then records the call.
    async fn call<R, T, Fut>(
        &self,
        method: &str,
        req: Request<R>,
        check: impl Fn(&Caller, &R) -> Result<(), Error>,
        f: impl FnOnce(R) -> Fut,
    ) -> Result<Response<T>, Status>
    where
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let t = Instant::now();
        // clientv3's WithRequireLeader: refuse rather than wait on a member with no leader.
        if requires_leader(req.metadata()) && !self.c.has_leader_now() {
            return self.done(method, t, Err(Error::NoLeader));
        }
        let admitted = match self.admit(req.metadata(), req.get_ref(), &check) {
            // A follower may refuse by an auth state the leader has moved past (auth disabled,
            // a user, role or grant added, a token it issued): etcd decides at apply, in log
            // order, so a client that saw the change acknowledged is never refused by it. The
            // follower catches up with the leader and decides again.
            Err(e) if stale_refusal(&e) && !self.c.is_leader() => match self.c.catch_up().await {
                Ok(()) => self.admit(req.metadata(), req.get_ref(), &check),
                Err(_) => Err(e),
            },
            other => other,
        };
        let r = match admitted {
            Err(e) => Err(e),
            Ok(guard) => guarded(Some(guard), f(req.into_inner())).await,
        };
        self.done(method, t, r)
    }

    /// The caller's auth check and the method's permission check, as this member's auth store
    /// stands; the guard the request then runs under.
    fn admit<R>(
        &self,
        md: &tonic::metadata::MetadataMap,
        req: &R,
        check: &impl Fn(&Caller, &R) -> Result<(), Error>,
    ) -> Result<Guard, Error> {
        let (who, guard) = self.caller(md)?;
        who.as_ref().map_or(Ok(()), |w| check(w, req))?;
        Ok(guard)
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

/// Refusals a member may make from an auth store that lags the leader's.
fn stale_refusal(e: &Error) -> bool {
    matches!(e, Error::UserEmpty | Error::InvalidAuthToken | Error::PermissionDenied)
}

/// The auth token of a request: etcd clients put it in the `token` metadata, its HTTP gateway
/// in `authorization`.
/// Whether the caller asked for a leader (clientv3's `WithRequireLeader` sets `hasleader`).
pub(crate) fn requires_leader(md: &tonic::metadata::MetadataMap) -> bool {
    md.get("hasleader").and_then(|v| v.to_str().ok()) == Some("true")
}

fn token(md: &tonic::metadata::MetadataMap) -> Option<&str> {
    md.get("token").or_else(|| md.get("authorization")).and_then(|v| v.to_str().ok())
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

mod auth;
mod cluster;
mod kv;
mod lease;
mod lock;
mod maintenance;
mod watch;
