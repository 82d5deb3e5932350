//! etcd's HTTP/JSON gateway (grpc-gateway in etcd), on every client URL beside gRPC: the same
//! `/v3/...` routes, the same JSON (the protobuf JSON mapping with the proto's own field names:
//! `range_end`, `create_revision`, `dbSize`, `ID`; 64-bit integers as strings, bytes as base64,
//! enums by name, default values left out) and the same error bodies
//! (`{"error": msg, "message": msg, "code": grpc_code}` with grpc-gateway's HTTP status).
//!
//! Each route decodes its JSON body into the request message and calls the same [`Api`]
//! method the gRPC service runs, so access control, limits, metrics and errors are the gRPC
//! ones. The caller's token comes from the `Authorization` header, as etcd's gateway forwards it.
//! Streaming calls (`/v3/watch`, `/v3/lease/keepalive`, `/v3/election/observe`,
//! `/v3/maintenance/snapshot`) answer with one JSON object per line, `{"result": message}`, or
//! `{"error": {...}}` when the stream fails (see `stream`).

mod stream;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::auth_server::Auth as AuthApi;
use cairn_proto::etcdserverpb::cluster_server::Cluster as ClusterApi;
use cairn_proto::etcdserverpb::kv_server::Kv as KvApi;
use cairn_proto::etcdserverpb::lease_server::Lease as LeaseApi;
use cairn_proto::etcdserverpb::maintenance_server::Maintenance as MaintenanceApi;
use cairn_proto::v3electionpb as el;
use cairn_proto::v3electionpb::election_server::Election as ElectionApi;
use cairn_proto::v3lockpb as lk;
use cairn_proto::v3lockpb::lock_server::Lock as LockApi;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::Status;

use crate::grpc::Api;

/// The gateway's routes, to merge into the client listener's HTTP router.
pub fn router(api: Api) -> axum::Router {
    let limit = body_limit(&api);
    axum::Router::new()
        .route("/version", get(version))
        // KV
        .route("/v3/kv/range", post(range))
        .route("/v3/kv/put", post(put))
        .route("/v3/kv/deleterange", post(delete_range))
        .route("/v3/kv/txn", post(txn))
        .route("/v3/kv/compaction", post(compact))
        // Watch
        .route("/v3/watch", post(stream::watch))
        // Lease (etcd serves the older `/v3/kv/lease/...` paths too)
        .route("/v3/lease/grant", post(lease_grant))
        .route("/v3/lease/revoke", post(lease_revoke))
        .route("/v3/kv/lease/revoke", post(lease_revoke))
        .route("/v3/lease/keepalive", post(stream::keep_alive))
        .route("/v3/lease/timetolive", post(lease_time_to_live))
        .route("/v3/kv/lease/timetolive", post(lease_time_to_live))
        .route("/v3/lease/leases", post(lease_leases))
        .route("/v3/kv/lease/leases", post(lease_leases))
        // Cluster
        .route("/v3/cluster/member/add", post(member_add))
        .route("/v3/cluster/member/remove", post(member_remove))
        .route("/v3/cluster/member/update", post(member_update))
        .route("/v3/cluster/member/list", post(member_list))
        .route("/v3/cluster/member/promote", post(member_promote))
        // Maintenance
        .route("/v3/maintenance/alarm", post(alarm))
        .route("/v3/maintenance/status", post(status))
        .route("/v3/maintenance/defragment", post(defragment))
        .route("/v3/maintenance/hash", post(hash))
        .route("/v3/maintenance/hashkv", post(hash_kv))
        .route("/v3/maintenance/snapshot", post(stream::snapshot))
        .route("/v3/maintenance/transfer-leadership", post(move_leader))
        .route("/v3/maintenance/downgrade", post(downgrade))
        // Auth
        .route("/v3/auth/enable", post(auth_enable))
        .route("/v3/auth/disable", post(auth_disable))
        .route("/v3/auth/status", post(auth_status))
        .route("/v3/auth/authenticate", post(authenticate))
        .route("/v3/auth/user/add", post(user_add))
        .route("/v3/auth/user/get", post(user_get))
        .route("/v3/auth/user/list", post(user_list))
        .route("/v3/auth/user/delete", post(user_delete))
        .route("/v3/auth/user/changepw", post(user_change_password))
        .route("/v3/auth/user/grant", post(user_grant_role))
        .route("/v3/auth/user/revoke", post(user_revoke_role))
        .route("/v3/auth/role/add", post(role_add))
        .route("/v3/auth/role/get", post(role_get))
        .route("/v3/auth/role/list", post(role_list))
        .route("/v3/auth/role/delete", post(role_delete))
        .route("/v3/auth/role/grant", post(role_grant_permission))
        .route("/v3/auth/role/revoke", post(role_revoke_permission))
        // Lock and election
        .route("/v3/lock/lock", post(lock))
        .route("/v3/lock/unlock", post(unlock))
        .route("/v3/election/campaign", post(campaign))
        .route("/v3/election/proclaim", post(proclaim))
        .route("/v3/election/leader", post(leader))
        .route("/v3/election/observe", post(stream::observe))
        .route("/v3/election/resign", post(resign))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::map_response(cors))
        .with_state(Gateway { api, limit })
}

/// What every route handler gets.
#[derive(Clone)]
struct Gateway {
    api: Api,
    /// Largest request body read (see [`body_limit`]).
    limit: usize,
}

/// The largest JSON body the gateway reads: base64 makes bytes 4/3 as long and JSON adds
/// quoting and field names, so twice the gRPC message limit, which is itself
/// `--max-request-bytes` plus 512 KiB. The request is then checked against
/// `--max-request-bytes` as a gRPC request is.
fn body_limit(api: &Api) -> usize {
    api.router().limits().grpc_message_bytes_max().saturating_mul(2)
}

/// etcd's gateway answers every request with these (its `allowCORS` wrapper).
async fn cors(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    h.insert("access-control-allow-methods", HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"));
    h.insert("access-control-allow-headers", HeaderValue::from_static("accept, content-type, authorization"));
    resp
}

/// `/version`, as etcd answers it: the server's version and the cluster's (major.minor.0).
async fn version() -> Response {
    #[derive(Serialize)]
    struct Version<'a> {
        etcdserver: &'a str,
        etcdcluster: String,
    }
    let v = cairn_services::maintenance::ETCD_API_VERSION;
    let cluster = v.rsplit_once('.').map_or(v.to_string(), |(mm, _)| format!("{mm}.0"));
    json_response(StatusCode::OK, &Version { etcdserver: v, etcdcluster: cluster })
}

/// grpc-gateway's HTTP status for a gRPC code (its `HTTPStatusFromCode`).
fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code::*;
    match code {
        Ok => StatusCode::OK,
        Cancelled => StatusCode::REQUEST_TIMEOUT,
        Unknown | Internal | DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        // grpc-gateway maps FailedPrecondition and OutOfRange to 400, deliberately not 412.
        InvalidArgument | FailedPrecondition | OutOfRange => StatusCode::BAD_REQUEST,
        DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        NotFound => StatusCode::NOT_FOUND,
        AlreadyExists | Aborted => StatusCode::CONFLICT,
        PermissionDenied => StatusCode::FORBIDDEN,
        Unauthenticated => StatusCode::UNAUTHORIZED,
        ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The body of a failed call, as etcd's gateway writes it.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
    code: i32,
}

fn error_body(s: &Status) -> ErrorBody<'_> {
    ErrorBody { error: s.message(), message: s.message(), code: s.code() as i32 }
}

/// A failed call: grpc-gateway's status code and error body.
fn error_response(s: &Status) -> Response {
    json_response(http_status(s.code()), &error_body(s))
}

fn json_response(code: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(b) => (code, [(header::CONTENT_TYPE, "application/json")], b).into_response(),
        Err(e) => error_response(&Status::internal(format!("encoding the response: {e}"))),
    }
}

/// A request message from a JSON body; an empty body is the empty message (as grpc-gateway).
/// Malformed JSON is `InvalidArgument` with the parser's words, as etcd's gateway answers it.
fn decode<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// Reads the whole body, at most `limit` bytes.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, Status> {
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| Status::resource_exhausted(format!("gateway: request body larger than max ({limit} bytes)")))
}

/// The caller's token (etcd's gateway forwards `Authorization` as gRPC metadata).
fn token(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
}

/// A gRPC request carrying the message and the HTTP caller's token.
fn grpc_request<T>(headers: &HeaderMap, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(t) = token(headers).and_then(|t| t.parse().ok()) {
        req.metadata_mut().insert("authorization", t);
    }
    req
}

/// Defines a route handler for a unary call: decode, call the [`Api`] method, encode.
macro_rules! unary {
    ($($name:ident: $service:ident::$method:ident($req:ty);)*) => {$(
        async fn $name(State(g): State<Gateway>, headers: HeaderMap, body: Body) -> Response {
            let msg = match read_body(body, g.limit).await.and_then(|b| decode::<$req>(&b)) {
                Ok(m) => m,
                Err(s) => return error_response(&s),
            };
            match <Api as $service>::$method(&g.api, grpc_request(&headers, msg)).await {
                Ok(resp) => json_response(StatusCode::OK, resp.get_ref()),
                Err(s) => error_response(&s),
            }
        }
    )*};
}

unary! {
    range: KvApi::range(pb::RangeRequest);
    put: KvApi::put(pb::PutRequest);
    delete_range: KvApi::delete_range(pb::DeleteRangeRequest);
    txn: KvApi::txn(pb::TxnRequest);
    compact: KvApi::compact(pb::CompactionRequest);
    lease_grant: LeaseApi::lease_grant(pb::LeaseGrantRequest);
    lease_revoke: LeaseApi::lease_revoke(pb::LeaseRevokeRequest);
    lease_time_to_live: LeaseApi::lease_time_to_live(pb::LeaseTimeToLiveRequest);
    lease_leases: LeaseApi::lease_leases(pb::LeaseLeasesRequest);
    member_add: ClusterApi::member_add(pb::MemberAddRequest);
    member_remove: ClusterApi::member_remove(pb::MemberRemoveRequest);
    member_update: ClusterApi::member_update(pb::MemberUpdateRequest);
    member_list: ClusterApi::member_list(pb::MemberListRequest);
    member_promote: ClusterApi::member_promote(pb::MemberPromoteRequest);
    alarm: MaintenanceApi::alarm(pb::AlarmRequest);
    status: MaintenanceApi::status(pb::StatusRequest);
    defragment: MaintenanceApi::defragment(pb::DefragmentRequest);
    hash: MaintenanceApi::hash(pb::HashRequest);
    hash_kv: MaintenanceApi::hash_kv(pb::HashKvRequest);
    move_leader: MaintenanceApi::move_leader(pb::MoveLeaderRequest);
    downgrade: MaintenanceApi::downgrade(pb::DowngradeRequest);
    auth_enable: AuthApi::auth_enable(pb::AuthEnableRequest);
    auth_disable: AuthApi::auth_disable(pb::AuthDisableRequest);
    auth_status: AuthApi::auth_status(pb::AuthStatusRequest);
    authenticate: AuthApi::authenticate(pb::AuthenticateRequest);
    user_add: AuthApi::user_add(pb::AuthUserAddRequest);
    user_get: AuthApi::user_get(pb::AuthUserGetRequest);
    user_list: AuthApi::user_list(pb::AuthUserListRequest);
    user_delete: AuthApi::user_delete(pb::AuthUserDeleteRequest);
    user_change_password: AuthApi::user_change_password(pb::AuthUserChangePasswordRequest);
    user_grant_role: AuthApi::user_grant_role(pb::AuthUserGrantRoleRequest);
    user_revoke_role: AuthApi::user_revoke_role(pb::AuthUserRevokeRoleRequest);
    role_add: AuthApi::role_add(pb::AuthRoleAddRequest);
    role_get: AuthApi::role_get(pb::AuthRoleGetRequest);
    role_list: AuthApi::role_list(pb::AuthRoleListRequest);
    role_delete: AuthApi::role_delete(pb::AuthRoleDeleteRequest);
    role_grant_permission: AuthApi::role_grant_permission(pb::AuthRoleGrantPermissionRequest);
    role_revoke_permission: AuthApi::role_revoke_permission(pb::AuthRoleRevokePermissionRequest);
    lock: LockApi::lock(lk::LockRequest);
    unlock: LockApi::unlock(lk::UnlockRequest);
    campaign: ElectionApi::campaign(el::CampaignRequest);
    proclaim: ElectionApi::proclaim(el::ProclaimRequest);
    leader: ElectionApi::leader(el::LeaderRequest);
    resign: ElectionApi::resign(el::ResignRequest);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_use_etcds_json_mapping() {
        let r = pb::RangeResponse {
            header: Some(pb::ResponseHeader { cluster_id: 1, member_id: 2, revision: 3, raft_term: 4 }),
            kvs: vec![cairn_proto::mvccpb::KeyValue {
                key: b"foo".to_vec(),
                create_revision: 2,
                mod_revision: 2,
                version: 1,
                value: b"bar".to_vec(),
                lease: 0,
            }],
            more: false,
            count: 1,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"header":{"cluster_id":"1","member_id":"2","revision":"3","raft_term":"4"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}],"count":"1"}"#
        );
        let s = pb::StatusResponse { db_size: 20480, raft_index: 5, is_learner: false, ..Default::default() };
        assert_eq!(serde_json::to_string(&s).unwrap(), r#"{"dbSize":"20480","raftIndex":"5"}"#);
        let g = pb::LeaseGrantResponse { id: 7, ttl: 30, ..Default::default() };
        assert_eq!(serde_json::to_string(&g).unwrap(), r#"{"ID":"7","TTL":"30"}"#);
    }

    #[test]
    fn requests_accept_what_etcd_clients_send() {
        let r: pb::RangeRequest =
            decode(br#"{"key":"Zm9v","range_end":"Zm9w","limit":"5","sort_order":"DESCEND","serializable":true}"#)
                .unwrap();
        assert_eq!((r.key.as_slice(), r.range_end.as_slice(), r.limit), (&b"foo"[..], &b"fop"[..], 5));
        assert_eq!(r.sort_order, pb::range_request::SortOrder::Descend as i32);
        assert!(r.serializable);
        // Numbers as numbers too, and an empty body is the empty request.
        let g: pb::LeaseGrantRequest = decode(br#"{"TTL": 30}"#).unwrap();
        assert_eq!(g.ttl, 30);
        assert_eq!(decode::<pb::StatusRequest>(b"").unwrap(), pb::StatusRequest {});
        let t: pb::TxnRequest = decode(
            br#"{"compare":[{"key":"Zm9v","result":"EQUAL","target":"VERSION","version":"0"}],
                 "success":[{"request_put":{"key":"Zm9v","value":"MQ=="}}]}"#,
        )
        .unwrap();
        assert_eq!(t.compare[0].target, pb::compare::CompareTarget::Version as i32);
        assert!(matches!(t.success[0].request, Some(pb::request_op::Request::RequestPut(_))));
        let e = decode::<pb::RangeRequest>(b"not json").unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn errors_look_like_etcds_gateway() {
        let s = Status::invalid_argument("etcdserver: key is not provided");
        assert_eq!(
            serde_json::to_string(&error_body(&s)).unwrap(),
            r#"{"error":"etcdserver: key is not provided","message":"etcdserver: key is not provided","code":3}"#
        );
        assert_eq!(http_status(tonic::Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(tonic::Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(http_status(tonic::Code::Unavailable), StatusCode::SERVICE_UNAVAILABLE);
    }
}
