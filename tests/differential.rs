//! The differential suite: one script of steps run against a real etcd 3.4 (Debian's `etcd`),
//! a 1-member cairn, and a 3-member cairn driven through a follower (so every write and every
//! linearizable read is forwarded), with every step's full response compared field by field.
//!
//! Each target is driven with raw gRPC calls (cairn-proto's generated etcd types), so nothing
//! of a client library stands between the script and the wire; responses are compared in the
//! protobuf JSON mapping (pbjson), which shows a field that is absent, present but empty, or
//! set, exactly as it travelled. Errors are compared by gRPC code and message.
//!
//! `etcdctl` steps run etcd's own client against each target and compare its exit code, stdout
//! (parsed when `-w json`) and stderr (the grpc-go client's log lines reduced to their message
//! and error). Auth steps keep each target's tokens per user; membership steps pick member IDs
//! from each target's own list.
//!
//! Normalized, because they must differ: the header fields naming the cluster, the member and
//! the Raft term; auth tokens (whether one was given is compared); etcdctl's endpoint and the
//! IDs of leases it granted; member IDs, names and URL ports, and how many voters there are
//! (`Rule::Members` compares the set of member shapes). Revisions are compared. TTL-like fields may differ by 2 s. A few fields (and
//! steps) where cairn deliberately differs are excluded where the step is written, each with
//! the reason; README ("Compatibility notes") lists those deviations.
//!
//! `DIFFERENTIAL_SKIP_3=1` skips the 3-member target; `DIFFERENTIAL_DUMP=1` prints every step's
//! responses. Run with `cargo test --test differential -- --test-threads=1`.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use cairn_proto::authpb;
use cairn_proto::etcdserverpb as pb;
use cairn_proto::v3electionpb as epb;
use cairn_proto::v3lockpb as lockpb;
use common::*;
use pb::compare::{CompareResult as Res, CompareTarget as Tgt, TargetUnion as U};
use pb::range_request::{SortOrder, SortTarget};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tonic::transport::Channel;

type Json = Value;

/// How long one call may take before the step records a timeout (a lock that should have been
/// granted, a watch event that never came).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a watch step waits for each expected response.
const WATCH_WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Calls and their answers

/// One request of the script (or a pause, or a look at something running in the background).
#[derive(Clone)]
enum Call {
    Put(pb::PutRequest),
    Range(pb::RangeRequest),
    Delete(pb::DeleteRangeRequest),
    Txn(pb::TxnRequest),
    Compact(pb::CompactionRequest),
    Grant(pb::LeaseGrantRequest),
    Revoke(i64),
    TimeToLive(pb::LeaseTimeToLiveRequest),
    Leases,
    /// One request on the target's keep-alive stream (opened on first use) and its answer.
    KeepAlive(i64),
    /// Sends `send` (if any) on the named watch stream (opened on first use), then waits for
    /// `recv` responses.
    Watch {
        stream: &'static str,
        send: Option<pb::WatchRequest>,
        recv: usize,
    },
    /// Nothing may arrive on the named watch stream for `ms`.
    WatchQuiet {
        stream: &'static str,
        ms: u64,
    },
    WatchClose(&'static str),
    Lock(lockpb::LockRequest),
    Unlock(lockpb::UnlockRequest),
    Campaign(epb::CampaignRequest),
    Proclaim(epb::ProclaimRequest),
    Leader(epb::LeaderRequest),
    Resign(epb::ResignRequest),
    /// Opens an Observe stream under a name (with `Some`) and takes its next response.
    Observe {
        stream: &'static str,
        open: Option<epb::LeaderRequest>,
    },
    /// Starts a call that is expected to wait (a lock held by another, a campaign with a
    /// leader) in the background.
    Background {
        name: &'static str,
        call: Box<Call>,
    },
    /// Whether the background call is still waiting after `ms`.
    Waiting {
        name: &'static str,
        ms: u64,
    },
    /// The background call's answer.
    Await(&'static str),
    Status,
    HashKv(i64),
    Alarms,
    Defragment,
    Sleep(u64),
    UserAdd(pb::AuthUserAddRequest),
    UserGet(&'static str),
    UserList,
    UserDelete(&'static str),
    UserChangePassword(&'static str, &'static str),
    UserGrantRole(&'static str, &'static str),
    UserRevokeRole(&'static str, &'static str),
    RoleAdd(&'static str),
    RoleGet(&'static str),
    RoleList,
    RoleDelete(&'static str),
    RoleGrantPermission(&'static str, authpb::permission::Type, Vec<u8>, Vec<u8>),
    RoleRevokePermission(&'static str, Vec<u8>, Vec<u8>),
    AuthEnable,
    AuthDisable,
    AuthStatus,
    /// Authenticates; a token given is kept under the user's name (and shown masked).
    Authenticate(&'static str, &'static str),
    /// A unary call with the token the target gave `user` (or, when it gave none, with `user`
    /// itself as the token).
    As(&'static str, Box<Call>),
    MemberList,
    MemberAdd(pb::MemberAddRequest),
    /// A member picked from the target's own list (member IDs are the deployment's).
    MemberRemove(Pick),
    MemberPromote(Pick),
    /// `etcdctl` against the target's endpoint.
    Etcdctl(Ctl),
}

/// Which member a membership call names.
#[derive(Clone, Copy)]
enum Pick {
    Id(u64),
    /// The (first) learner in the target's member list.
    Learner,
    /// The member the script talks to (a voter).
    Voter,
}

/// What an etcdctl run's stdout yields to remember (a lease ID).
type Capture = fn(&str) -> Option<String>;

/// One etcdctl run: its arguments (`$name` stands for what an earlier run captured), its
/// standard input, whether stdout is JSON, and what to capture from stdout under a name.
#[derive(Clone, Default)]
struct Ctl {
    args: Vec<String>,
    stdin: Option<String>,
    json: bool,
    capture: Option<(&'static str, Capture)>,
}

/// The unary clients of one target; cheap to clone (a background call takes its own).
#[derive(Clone)]
struct Clients {
    kv: pb::kv_client::KvClient<Channel>,
    lease: pb::lease_client::LeaseClient<Channel>,
    watch: pb::watch_client::WatchClient<Channel>,
    maint: pb::maintenance_client::MaintenanceClient<Channel>,
    lock: lockpb::lock_client::LockClient<Channel>,
    election: epb::election_client::ElectionClient<Channel>,
    auth: pb::auth_client::AuthClient<Channel>,
    cluster: pb::cluster_client::ClusterClient<Channel>,
}

struct WatchStream {
    tx: mpsc::Sender<pb::WatchRequest>,
    rx: tonic::Streaming<pb::WatchResponse>,
}

struct Target {
    name: &'static str,
    c: Clients,
    watches: HashMap<&'static str, WatchStream>,
    keepalive: Option<(mpsc::Sender<pb::LeaseKeepAliveRequest>, tonic::Streaming<pb::LeaseKeepAliveResponse>)>,
    observes: HashMap<&'static str, tonic::Streaming<epb::LeaderResponse>>,
    background: HashMap<&'static str, tokio::task::JoinHandle<Json>>,
    /// host:port, for etcdctl.
    endpoint: String,
    /// Auth tokens by user name.
    tokens: HashMap<&'static str, String>,
    /// What etcdctl runs captured, by name.
    captured: HashMap<&'static str, String>,
}

fn answer<T: serde::Serialize>(r: Result<tonic::Response<T>, tonic::Status>) -> Json {
    match r {
        Ok(r) => json!({ "ok": serde_json::to_value(r.into_inner()).expect("serializable") }),
        Err(s) => failure(&s),
    }
}

fn failure(s: &tonic::Status) -> Json {
    json!({ "error": { "code": format!("{:?}", s.code()), "message": s.message() } })
}

/// A request carrying `token` (if any) as etcd's clients send it.
fn rq<T>(r: T, token: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(r);
    if let Some(t) = token {
        r.metadata_mut().insert("token", t.parse().expect("an ASCII token"));
    }
    r
}

/// A unary call (or one that a background task can run on its own clients).
async fn unary(c: &mut Clients, call: &Call, t: Option<&str>) -> Json {
    let r = match call.clone() {
        Call::Put(r) => answer(c.kv.put(rq(r, t)).await),
        Call::Range(r) => answer(c.kv.range(rq(r, t)).await),
        Call::Delete(r) => answer(c.kv.delete_range(rq(r, t)).await),
        Call::Txn(r) => answer(c.kv.txn(rq(r, t)).await),
        Call::Compact(r) => answer(c.kv.compact(rq(r, t)).await),
        Call::Grant(r) => answer(c.lease.lease_grant(rq(r, t)).await),
        Call::Revoke(id) => answer(c.lease.lease_revoke(rq(pb::LeaseRevokeRequest { id }, t)).await),
        Call::TimeToLive(r) => answer(c.lease.lease_time_to_live(rq(r, t)).await),
        Call::Leases => answer(c.lease.lease_leases(rq(pb::LeaseLeasesRequest {}, t)).await),
        Call::Lock(r) => answer(c.lock.lock(rq(r, t)).await),
        Call::Unlock(r) => answer(c.lock.unlock(rq(r, t)).await),
        Call::Campaign(r) => answer(c.election.campaign(rq(r, t)).await),
        Call::Proclaim(r) => answer(c.election.proclaim(rq(r, t)).await),
        Call::Leader(r) => answer(c.election.leader(rq(r, t)).await),
        Call::Resign(r) => answer(c.election.resign(rq(r, t)).await),
        Call::Status => answer(c.maint.status(rq(pb::StatusRequest {}, t)).await),
        Call::HashKv(revision) => answer(c.maint.hash_kv(rq(pb::HashKvRequest { revision }, t)).await),
        Call::Alarms => answer(
            c.maint
                .alarm(rq(
                    pb::AlarmRequest {
                        action: pb::alarm_request::AlarmAction::Get as i32,
                        member_id: 0,
                        alarm: pb::AlarmType::None as i32,
                    },
                    t,
                ))
                .await,
        ),
        Call::Defragment => answer(c.maint.defragment(rq(pb::DefragmentRequest {}, t)).await),
        Call::UserAdd(r) => answer(c.auth.user_add(rq(r, t)).await),
        Call::UserGet(name) => answer(c.auth.user_get(rq(pb::AuthUserGetRequest { name: name.into() }, t)).await),
        Call::UserList => answer(c.auth.user_list(rq(pb::AuthUserListRequest {}, t)).await),
        Call::UserDelete(name) => {
            answer(c.auth.user_delete(rq(pb::AuthUserDeleteRequest { name: name.into() }, t)).await)
        }
        Call::UserChangePassword(name, password) => answer(
            c.auth
                .user_change_password(rq(
                    pb::AuthUserChangePasswordRequest {
                        name: name.into(),
                        password: password.into(),
                        ..Default::default()
                    },
                    t,
                ))
                .await,
        ),
        Call::UserGrantRole(user, role) => answer(
            c.auth.user_grant_role(rq(pb::AuthUserGrantRoleRequest { user: user.into(), role: role.into() }, t)).await,
        ),
        Call::UserRevokeRole(name, role) => answer(
            c.auth
                .user_revoke_role(rq(pb::AuthUserRevokeRoleRequest { name: name.into(), role: role.into() }, t))
                .await,
        ),
        Call::RoleAdd(name) => answer(c.auth.role_add(rq(pb::AuthRoleAddRequest { name: name.into() }, t)).await),
        Call::RoleGet(role) => answer(c.auth.role_get(rq(pb::AuthRoleGetRequest { role: role.into() }, t)).await),
        Call::RoleList => answer(c.auth.role_list(rq(pb::AuthRoleListRequest {}, t)).await),
        Call::RoleDelete(role) => {
            answer(c.auth.role_delete(rq(pb::AuthRoleDeleteRequest { role: role.into() }, t)).await)
        }
        Call::RoleGrantPermission(name, ty, key, range_end) => answer(
            c.auth
                .role_grant_permission(rq(
                    pb::AuthRoleGrantPermissionRequest {
                        name: name.into(),
                        perm: Some(authpb::Permission { perm_type: ty as i32, key, range_end }),
                    },
                    t,
                ))
                .await,
        ),
        Call::RoleRevokePermission(role, key, range_end) => answer(
            c.auth
                .role_revoke_permission(rq(
                    pb::AuthRoleRevokePermissionRequest { role: role.into(), key, range_end },
                    t,
                ))
                .await,
        ),
        Call::AuthEnable => answer(c.auth.auth_enable(rq(pb::AuthEnableRequest {}, t)).await),
        Call::AuthDisable => answer(c.auth.auth_disable(rq(pb::AuthDisableRequest {}, t)).await),
        Call::AuthStatus => answer(c.auth.auth_status(rq(pb::AuthStatusRequest {}, t)).await),
        Call::MemberList => answer(c.cluster.member_list(rq(pb::MemberListRequest::default(), t)).await),
        Call::MemberAdd(r) => answer(c.cluster.member_add(rq(r, t)).await),
        _ => unreachable!("not a unary call"),
    };
    r
}

impl Target {
    async fn connect(name: &'static str, url: &str) -> Target {
        let ch = tonic::transport::Endpoint::from_shared(url.to_string())
            .expect("url")
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect to {name} at {url}: {e}"));
        Target {
            name,
            c: Clients {
                kv: pb::kv_client::KvClient::new(ch.clone()),
                lease: pb::lease_client::LeaseClient::new(ch.clone()),
                watch: pb::watch_client::WatchClient::new(ch.clone()),
                maint: pb::maintenance_client::MaintenanceClient::new(ch.clone()),
                lock: lockpb::lock_client::LockClient::new(ch.clone()),
                election: epb::election_client::ElectionClient::new(ch.clone()),
                auth: pb::auth_client::AuthClient::new(ch.clone()),
                cluster: pb::cluster_client::ClusterClient::new(ch),
            },
            endpoint: url.trim_start_matches("http://").to_string(),
            tokens: HashMap::new(),
            captured: HashMap::new(),
            watches: HashMap::new(),
            keepalive: None,
            observes: HashMap::new(),
            background: HashMap::new(),
        }
    }

    /// The member ID `pick` names on this target.
    async fn pick(&mut self, pick: Pick) -> Result<u64, Json> {
        let id = match pick {
            Pick::Id(id) => return Ok(id),
            Pick::Learner | Pick::Voter => {
                let st = self.c.maint.status(pb::StatusRequest {}).await.map_err(|s| failure(&s))?.into_inner();
                let me = st.header.map(|h| h.member_id).unwrap_or_default();
                let list =
                    self.c.cluster.member_list(pb::MemberListRequest::default()).await.map_err(|s| failure(&s))?;
                list.into_inner()
                    .members
                    .iter()
                    .find(|m| if let Pick::Learner = pick { m.is_learner } else { m.id == me })
                    .map(|m| m.id)
            }
        };
        id.ok_or_else(|| json!("no such member"))
    }

    /// `s` with this target's endpoint and what etcdctl runs captured (lease IDs) shown by name.
    fn unmask(&self, s: &str) -> String {
        let mut s = s.replace(&self.endpoint, "(endpoint)");
        for (name, v) in &self.captured {
            s = s.replace(v.as_str(), &format!("${name}"));
        }
        s
    }

    /// Runs etcdctl against this target: exit code, stdout (parsed when JSON) and stderr, less
    /// the grpc-go client's own log lines (they carry timestamps and addresses).
    async fn etcdctl(&mut self, ctl: &Ctl) -> Json {
        let args: Vec<String> = ctl
            .args
            .iter()
            .map(|a| match a.strip_prefix('$') {
                Some(var) => self.captured.get(var).cloned().unwrap_or_else(|| a.clone()),
                None => a.clone(),
            })
            .collect();
        let endpoint = self.endpoint.clone();
        let stdin = ctl.stdin.clone();
        let out = tokio::task::spawn_blocking(move || {
            use std::io::Write as _;
            let mut child = std::process::Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints={endpoint}"))
                .arg("--command-timeout=5s")
                .args(&args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("etcdctl is installed");
            let mut input = child.stdin.take().expect("piped");
            input.write_all(stdin.unwrap_or_default().as_bytes()).expect("etcdctl's stdin");
            drop(input);
            child.wait_with_output().expect("etcdctl ran")
        })
        .await
        .expect("etcdctl task");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if let Some((name, f)) = ctl.capture {
            if let Some(v) = f(&stdout) {
                self.captured.insert(name, v);
            }
        }
        let stderr: String = String::from_utf8_lossy(&out.stderr)
            .lines()
            .map(|l| match serde_json::from_str::<Value>(l) {
                // The grpc-go client's log line: its time and connection name are its own.
                Ok(v) if v.get("level").is_some() => format!("(client log) {} {}\n", v["msg"], v["error"]),
                _ => format!("{l}\n"),
            })
            .collect();
        let mut stdout_v = json!(self.unmask(&stdout));
        if ctl.json && out.status.success() {
            // Parsed as etcdctl wrote it: member URLs keep their shape for `Rule::Members`.
            if let Ok(mut v) = serde_json::from_str::<Value>(&stdout) {
                mask(&mut v, &["cluster_id", "member_id", "raft_term"]);
                visit(&mut v, &["*", "Endpoint"], &mut |e| *e = json!("(endpoint)"));
                stdout_v = v;
            }
        }
        let stderr = self.unmask(&stderr);
        json!({ "code": out.status.code(), "stdout": stdout_v, "stderr": stderr })
    }

    async fn run(&mut self, call: &Call) -> Json {
        match tokio::time::timeout(CALL_TIMEOUT + WATCH_WAIT, self.run_inner(call)).await {
            Ok(v) => v,
            Err(_) => json!("step timed out"),
        }
    }

    async fn run_inner(&mut self, call: &Call) -> Json {
        match call {
            Call::KeepAlive(id) => {
                let req = pb::LeaseKeepAliveRequest { id: *id };
                if let Some((tx, _)) = &self.keepalive {
                    tx.send(req).await.expect("keep-alive stream open");
                } else {
                    // The first request goes into the stream before the call: a grpc-go server
                    // sends its response headers (which the call waits for) with its first answer.
                    let (tx, rx) = mpsc::channel(16);
                    tx.send(req).await.expect("channel open");
                    let s = self.c.lease.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
                    match s {
                        Ok(s) => self.keepalive = Some((tx, s.into_inner())),
                        Err(s) => return failure(&s),
                    }
                }
                let (_, rx) = self.keepalive.as_mut().expect("opened");
                match tokio::time::timeout(CALL_TIMEOUT, rx.message()).await {
                    Ok(Ok(Some(r))) => json!({ "ok": serde_json::to_value(r).expect("serializable") }),
                    Ok(Ok(None)) => json!("stream ended"),
                    Ok(Err(s)) => failure(&s),
                    Err(_) => json!("timeout"),
                }
            }
            Call::Watch { stream, send, recv } => {
                if let Some(w) = self.watches.get(stream) {
                    if let Some(req) = send {
                        w.tx.send(req.clone()).await.expect("watch stream open");
                    }
                } else {
                    // As for keep-alives: the first request before the call.
                    let (tx, rx) = mpsc::channel(16);
                    if let Some(req) = send {
                        tx.send(req.clone()).await.expect("channel open");
                    }
                    match self.c.watch.watch(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
                        Ok(s) => {
                            self.watches.insert(stream, WatchStream { tx, rx: s.into_inner() });
                        }
                        Err(s) => return failure(&s),
                    }
                }
                let w = self.watches.get_mut(stream).expect("opened");
                let mut got = Vec::new();
                for _ in 0..*recv {
                    match tokio::time::timeout(WATCH_WAIT, w.rx.message()).await {
                        Ok(Ok(Some(r))) => got.push(serde_json::to_value(r).expect("serializable")),
                        Ok(Ok(None)) => {
                            got.push(json!("stream ended"));
                            break;
                        }
                        Ok(Err(s)) => {
                            got.push(failure(&s));
                            break;
                        }
                        Err(_) => {
                            got.push(json!("timeout"));
                            break;
                        }
                    }
                }
                json!({ "responses": got })
            }
            Call::WatchQuiet { stream, ms } => {
                let Some(w) = self.watches.get_mut(stream) else {
                    return json!("no such watch stream");
                };
                match tokio::time::timeout(Duration::from_millis(*ms), w.rx.message()).await {
                    Err(_) => json!("quiet"),
                    Ok(Ok(Some(r))) => json!({ "unexpected": serde_json::to_value(r).expect("serializable") }),
                    Ok(Ok(None)) => json!("stream ended"),
                    Ok(Err(s)) => failure(&s),
                }
            }
            Call::WatchClose(stream) => {
                self.watches.remove(stream);
                json!("closed")
            }
            Call::Observe { stream, open } => {
                if let Some(req) = open {
                    match self.c.election.observe(req.clone()).await {
                        Ok(s) => {
                            self.observes.insert(stream, s.into_inner());
                        }
                        Err(s) => return failure(&s),
                    }
                }
                let Some(s) = self.observes.get_mut(stream) else {
                    return json!("no such observe stream");
                };
                match tokio::time::timeout(CALL_TIMEOUT, s.message()).await {
                    Ok(Ok(Some(r))) => json!({ "ok": serde_json::to_value(r).expect("serializable") }),
                    Ok(Ok(None)) => json!("stream ended"),
                    Ok(Err(s)) => failure(&s),
                    Err(_) => json!("timeout"),
                }
            }
            Call::Background { name, call } => {
                let mut c = self.c.clone();
                let call = (**call).clone();
                self.background.insert(name, tokio::spawn(async move { unary(&mut c, &call, None).await }));
                json!("started")
            }
            Call::Waiting { name, ms } => {
                tokio::time::sleep(Duration::from_millis(*ms)).await;
                let h = self.background.get(name).expect("a background call started by an earlier step");
                json!(if h.is_finished() { "finished" } else { "waiting" })
            }
            Call::Await(name) => {
                let h = self.background.remove(name).expect("a background call started by an earlier step");
                match tokio::time::timeout(CALL_TIMEOUT, h).await {
                    Ok(Ok(v)) => v,
                    Ok(Err(e)) => json!(format!("background task failed: {e}")),
                    Err(_) => json!("timeout"),
                }
            }
            Call::Sleep(ms) => {
                tokio::time::sleep(Duration::from_millis(*ms)).await;
                json!("slept")
            }
            Call::Authenticate(name, password) => {
                let r = self
                    .c
                    .auth
                    .authenticate(pb::AuthenticateRequest { name: name.to_string(), password: password.to_string() })
                    .await;
                if let Ok(r) = &r {
                    self.tokens.insert(name, r.get_ref().token.clone());
                }
                answer(r)
            }
            Call::As(user, call) => {
                let token = self.tokens.get(user).cloned().unwrap_or_else(|| user.to_string());
                let mut c = self.c.clone();
                match tokio::time::timeout(CALL_TIMEOUT, unary(&mut c, call, Some(&token))).await {
                    Ok(v) => v,
                    Err(_) => json!("timeout"),
                }
            }
            Call::MemberRemove(pick) | Call::MemberPromote(pick) => {
                let id = match self.pick(*pick).await {
                    Ok(id) => id,
                    Err(v) => return v,
                };
                if let Call::MemberRemove(_) = call {
                    answer(self.c.cluster.member_remove(pb::MemberRemoveRequest { id }).await)
                } else {
                    answer(self.c.cluster.member_promote(pb::MemberPromoteRequest { id }).await)
                }
            }
            Call::Etcdctl(ctl) => self.etcdctl(ctl).await,
            other => {
                let mut c = self.c.clone();
                match tokio::time::timeout(CALL_TIMEOUT, unary(&mut c, other, None)).await {
                    Ok(v) => v,
                    Err(_) => json!("timeout"),
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Steps and comparison

/// What a step compares less strictly than "equal".
#[derive(Clone)]
enum Rule {
    /// Not compared: the path's field differs by design (the reason is at the step).
    Skip(&'static str),
    /// Numbers that may differ by up to this much (TTLs, in seconds).
    Near(&'static str, i64),
    /// An array whose order etcd leaves unspecified (a Go map's): compared sorted.
    Unordered(&'static str),
    /// Members (one, or an array): compared by shape (`member_shape`), an array as the set of its
    /// shapes, since how many voters there are is the deployment's (1 or 3).
    Members(&'static str),
}

/// The etcd answers of earlier steps, by the name a step was given with `Script::memo`: later
/// requests can use revisions etcd reported (every target gets the same request).
#[derive(Default)]
struct Memo(HashMap<&'static str, Json>);

impl Memo {
    fn int(&self, name: &str, path: &str) -> i64 {
        let v = self.0.get(name).unwrap_or_else(|| panic!("no memo {name}"));
        let mut at = v;
        for seg in path.split('.') {
            at = match at {
                Value::Array(a) => &a[seg.parse::<usize>().expect("index")],
                _ => &at[seg],
            };
        }
        match at {
            Value::String(s) => s.parse().unwrap_or_else(|_| panic!("memo {name}.{path} = {s}")),
            Value::Number(n) => n.as_i64().expect("i64"),
            Value::Null => 0,
            other => panic!("memo {name}.{path} = {other}"),
        }
    }
}

type MakeCall = Box<dyn Fn(&Memo) -> Call>;

struct Step {
    name: String,
    make: MakeCall,
    rules: Vec<Rule>,
    /// Why the whole step is not compared (it still runs, keeping the targets in step).
    excluded: Option<&'static str>,
    memo: Option<&'static str>,
}

#[derive(Default)]
struct Script {
    steps: Vec<Step>,
}

impl Script {
    fn add(&mut self, name: impl Into<String>, call: Call) -> &mut Step {
        self.dynamic(name, move |_| call.clone())
    }

    /// A step whose request depends on what etcd answered earlier.
    fn dynamic(&mut self, name: impl Into<String>, make: impl Fn(&Memo) -> Call + 'static) -> &mut Step {
        self.steps.push(Step {
            name: name.into(),
            make: Box::new(make),
            rules: Vec::new(),
            excluded: None,
            memo: None,
        });
        self.steps.last_mut().expect("just pushed")
    }
}

impl Step {
    fn rule(&mut self, r: Rule) -> &mut Step {
        self.rules.push(r);
        self
    }

    fn memo(&mut self, name: &'static str) -> &mut Step {
        self.memo = Some(name);
        self
    }

    fn exclude(&mut self, why: &'static str) -> &mut Step {
        self.excluded = Some(why);
        self
    }
}

/// Removes what must differ between deployments (cluster, member, Raft term) from every header
/// and shows keys and values as text where they are UTF-8.
fn normalize(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Object(h)) = m.get_mut("header") {
                // Whether they are there is still compared.
                for f in ["cluster_id", "member_id", "raft_term"] {
                    if let Some(v) = h.get_mut(f) {
                        *v = json!("(this deployment's)");
                    }
                }
            }
            for (k, x) in m.iter_mut() {
                match (k.as_str(), &mut *x) {
                    ("key" | "value" | "range_end", Value::String(s)) => *s = readable(s),
                    // Tokens are the deployment's; whether one was given is compared.
                    ("token", Value::String(s)) if !s.is_empty() => *s = "(a token)".into(),
                    ("keys", Value::Array(a)) => {
                        for e in a {
                            if let Value::String(s) = e {
                                *s = readable(s);
                            }
                        }
                    }
                    _ => normalize(x),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalize),
        _ => {}
    }
}

/// Replaces every field named in `fields` (at any depth) by a placeholder: etcdctl's JSON puts
/// some headers' fields at the top level.
fn mask(v: &mut Value, fields: &[&str]) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if fields.contains(&k.as_str()) {
                    *x = json!("(this deployment's)");
                } else {
                    mask(x, fields);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| mask(x, fields)),
        _ => {}
    }
}

/// A member as far as it does not describe the deployment: its ID and name masked, its URLs'
/// ports masked.
fn member_shape(m: &mut Value) {
    if let Value::Object(o) = m {
        for (k, x) in o.iter_mut() {
            match (k.as_str(), x) {
                ("ID", x) => *x = json!("(id)"),
                ("name", Value::String(s)) if !s.is_empty() => *s = "(name)".into(),
                ("peerURLs" | "clientURLs", Value::Array(a)) => {
                    for u in a {
                        if let Value::String(s) = u {
                            if let Some(i) = s.rfind(':') {
                                s.replace_range(i + 1.., "(port)");
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

fn readable(b64: &str) -> String {
    match base64::engine::general_purpose::STANDARD.decode(b64).ok().and_then(|b| String::from_utf8(b).ok()) {
        Some(s) if s.len() <= 64 => s,
        Some(s) => format!("{}... ({} bytes)", &s[..32], s.len()),
        None => b64.to_string(),
    }
}

/// Every value at `path` (dot-separated; `*` is every element or field) in `v`.
fn visit(v: &mut Value, path: &[&str], f: &mut dyn FnMut(&mut Value)) {
    let Some((first, rest)) = path.split_first() else {
        f(v);
        return;
    };
    match (v, *first) {
        (Value::Array(a), "*") => a.iter_mut().for_each(|x| visit(x, rest, f)),
        (Value::Object(m), "*") => m.values_mut().for_each(|x| visit(x, rest, f)),
        (Value::Array(a), i) => {
            if let Some(x) = i.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                visit(x, rest, f)
            }
        }
        (Value::Object(m), k) => {
            if rest.is_empty() {
                if let Some(x) = m.get_mut(k) {
                    f(x)
                }
            } else if let Some(x) = m.get_mut(k) {
                visit(x, rest, f)
            }
        }
        _ => {}
    }
}

fn remove(v: &mut Value, path: &str) {
    let segs: Vec<&str> = path.split('.').collect();
    let (last, parent) = segs.split_last().expect("a path");
    visit(v, parent, &mut |p| {
        if let Value::Object(m) = p {
            m.remove(*last);
        }
    });
}

fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

/// Applies a step's rules: `Near` makes a close-enough value equal to etcd's.
fn apply_rules(rules: &[Rule], etcd: &mut Value, other: &mut Value) {
    for r in rules {
        match r {
            Rule::Skip(p) => {
                remove(etcd, p);
                remove(other, p);
            }
            Rule::Near(p, tol) => {
                let segs: Vec<&str> = p.split('.').collect();
                let mut want = Vec::new();
                visit(etcd, &segs, &mut |x| want.push(x.clone()));
                let mut i = 0;
                visit(other, &segs, &mut |x| {
                    if let (Some(w), Some(a)) = (want.get(i).and_then(as_i64), as_i64(x)) {
                        if (w - a).abs() <= *tol {
                            *x = want[i].clone();
                        }
                    }
                    i += 1;
                });
            }
            Rule::Members(p) => {
                let segs: Vec<&str> = p.split('.').collect();
                for v in [&mut *etcd, &mut *other] {
                    visit(v, &segs, &mut |x| match x {
                        Value::Array(a) => {
                            a.iter_mut().for_each(member_shape);
                            a.sort_by_key(|e| e.to_string());
                            a.dedup();
                        }
                        x => member_shape(x),
                    });
                }
            }
            Rule::Unordered(p) => {
                let segs: Vec<&str> = p.split('.').collect();
                for v in [&mut *etcd, &mut *other] {
                    visit(v, &segs, &mut |x| {
                        if let Value::Array(a) = x {
                            a.sort_by_key(|e| e.to_string());
                        }
                    });
                }
            }
        }
    }
}

/// The differences between etcd's answer `a` and another's `b`, one line per field.
fn diff(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => diff(&p, u, v, out),
                    (Some(u), None) => out.push(format!("{p}: etcd {u}, here absent")),
                    (None, Some(v)) => out.push(format!("{p}: etcd absent, here {v}")),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                diff(&format!("{path}.{i}"), u, v, out);
            }
        }
        _ if a == b => {}
        _ => out.push(format!("{path}: etcd {a}, here {b}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Request builders

fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// The range end covering every key with this prefix.
fn prefix_end(p: &str) -> Vec<u8> {
    let mut e = b(p);
    while let Some(last) = e.pop() {
        if last < 0xff {
            e.push(last + 1);
            return e;
        }
    }
    vec![0]
}

fn put(k: &str, v: &str) -> pb::PutRequest {
    pb::PutRequest { key: b(k), value: b(v), ..Default::default() }
}

fn get(k: &str) -> pb::RangeRequest {
    pb::RangeRequest { key: b(k), ..Default::default() }
}

fn range(k: &str, end: &str) -> pb::RangeRequest {
    pb::RangeRequest { key: b(k), range_end: b(end), ..Default::default() }
}

fn prefix(k: &str) -> pb::RangeRequest {
    pb::RangeRequest { key: b(k), range_end: prefix_end(k), ..Default::default() }
}

fn del(k: &str) -> pb::DeleteRangeRequest {
    pb::DeleteRangeRequest { key: b(k), ..Default::default() }
}

fn del_prefix(k: &str) -> pb::DeleteRangeRequest {
    pb::DeleteRangeRequest { key: b(k), range_end: prefix_end(k), ..Default::default() }
}

fn op_put(p: pb::PutRequest) -> pb::RequestOp {
    pb::RequestOp { request: Some(pb::request_op::Request::RequestPut(p)) }
}

fn op_range(r: pb::RangeRequest) -> pb::RequestOp {
    pb::RequestOp { request: Some(pb::request_op::Request::RequestRange(r)) }
}

fn op_del(d: pb::DeleteRangeRequest) -> pb::RequestOp {
    pb::RequestOp { request: Some(pb::request_op::Request::RequestDeleteRange(d)) }
}

fn op_txn(t: pb::TxnRequest) -> pb::RequestOp {
    pb::RequestOp { request: Some(pb::request_op::Request::RequestTxn(t)) }
}

fn cmp(k: &str, target: Tgt, result: Res, u: U) -> pb::Compare {
    pb::Compare { key: b(k), target: target as i32, result: result as i32, target_union: Some(u), range_end: vec![] }
}

fn txn(compare: Vec<pb::Compare>, success: Vec<pb::RequestOp>, failure: Vec<pb::RequestOp>) -> pb::TxnRequest {
    pb::TxnRequest { compare, success, failure }
}

fn grant(id: i64, ttl: i64) -> Call {
    Call::Grant(pb::LeaseGrantRequest { id, ttl })
}

fn with_lease(mut p: pb::PutRequest, lease: i64) -> pb::PutRequest {
    p.lease = lease;
    p
}

fn watch_create(c: pb::WatchCreateRequest) -> Option<pb::WatchRequest> {
    Some(pb::WatchRequest { request_union: Some(pb::watch_request::RequestUnion::CreateRequest(c)) })
}

fn watch_cancel(watch_id: i64) -> Option<pb::WatchRequest> {
    Some(pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CancelRequest(pb::WatchCancelRequest { watch_id })),
    })
}

fn watch_key(k: &str) -> pb::WatchCreateRequest {
    pb::WatchCreateRequest { key: b(k), ..Default::default() }
}

fn watch_prefix(k: &str) -> pb::WatchCreateRequest {
    pb::WatchCreateRequest { key: b(k), range_end: prefix_end(k), ..Default::default() }
}

fn lock(name: &str, lease: i64) -> Call {
    Call::Lock(lockpb::LockRequest { name: b(name), lease })
}

fn unlock(key: &str) -> Call {
    Call::Unlock(lockpb::UnlockRequest { key: b(key) })
}

fn campaign(name: &str, lease: i64, value: &str) -> Call {
    Call::Campaign(epb::CampaignRequest { name: b(name), lease, value: b(value) })
}

fn leader(name: &str) -> epb::LeaderRequest {
    epb::LeaderRequest { name: b(name) }
}

/// The leader key etcd answered a campaign with (memo `m`, at `path`).
fn leader_key(m: &Memo, memo: &str, name: &str, lease: i64) -> epb::LeaderKey {
    epb::LeaderKey {
        name: b(name),
        key: format!("{name}/{lease:x}").into_bytes(),
        rev: m.int(memo, "ok.leader.rev"),
        lease,
    }
}

// ---------------------------------------------------------------------------------------------
// The script

fn script() -> Script {
    let mut s = Script::default();
    maintenance_before(&mut s);
    kv(&mut s);
    sorting(&mut s);
    range_options(&mut s);
    deletes(&mut s);
    leases(&mut s);
    compares(&mut s);
    txns(&mut s);
    errors(&mut s);
    watches(&mut s);
    locks(&mut s);
    elections(&mut s);
    compaction(&mut s);
    maintenance_after(&mut s);
    members(&mut s);
    etcdctl(&mut s);
    auth(&mut s);
    deviations(&mut s);
    s
}

/// Skips for Status: only the fields that do not describe the deployment are compared.
fn status_rules(st: &mut Step) {
    // The server's version (cairn reports the API level it implements, 3.5.0), its file sizes,
    // its member ids and Raft positions describe the deployment, not the data.
    for f in ["version", "dbSize", "dbSizeInUse", "leader", "raftIndex", "raftTerm", "raftAppliedIndex"] {
        st.rule(Rule::Skip(Box::leak(format!("ok.{f}").into_boxed_str())));
    }
}

fn maintenance_before(s: &mut Script) {
    let st = s.add("status on an empty store", Call::Status);
    status_rules(st);
    // cairn's hash is its own (README, "Compatibility notes"); the revisions are compared.
    s.add("hashkv of an empty store", Call::HashKv(0)).rule(Rule::Skip("ok.hash"));
    s.add("hashkv of a future revision", Call::HashKv(100));
    s.add("range on an empty store", Call::Range(get("a")));
    s.add("range everything on an empty store", Call::Range(range("\0", "\0")));
}

fn kv(s: &mut Script) {
    s.add("put a new key", Call::Put(put("a", "1")));
    s.add("put a new key with prev_kv", Call::Put(pb::PutRequest { prev_kv: true, ..put("b", "1") }));
    s.add("overwrite with prev_kv", Call::Put(pb::PutRequest { prev_kv: true, ..put("a", "2") }));
    s.add("overwrite without prev_kv", Call::Put(put("a", "3")));
    s.add("get a key", Call::Range(get("a")));
    s.add("put an empty value", Call::Put(put("e", "")));
    s.add("get an empty value", Call::Range(get("e")));
    s.add(
        "ignore_value keeps the value",
        Call::Put(pb::PutRequest { ignore_value: true, prev_kv: true, ..put("a", "") }),
    );
    s.add("after ignore_value", Call::Range(get("a")));
    s.add("ignore_value on a missing key", Call::Put(pb::PutRequest { ignore_value: true, ..put("nope", "") }));
    s.add("ignore_value with a value", Call::Put(pb::PutRequest { ignore_value: true, ..put("a", "x") }));
    s.add("ignore_lease on a key without lease", Call::Put(pb::PutRequest { ignore_lease: true, ..put("b", "2") }));
    s.add("ignore_lease on a missing key", Call::Put(pb::PutRequest { ignore_lease: true, ..put("nope", "2") }));
    s.add("ignore_lease with a lease", Call::Put(pb::PutRequest { ignore_lease: true, lease: 5, ..put("b", "2") }));
    s.add("put with a missing lease", Call::Put(with_lease(put("c", "1"), 0x4242)));
    s.add(
        "binary key and value",
        Call::Put(pb::PutRequest { key: vec![0xff, 0, 1], value: vec![0, 0xfe], ..Default::default() }),
    );
    s.add("get a binary key", Call::Range(pb::RangeRequest { key: vec![0xff, 0, 1], ..Default::default() }));
    s.add("put on a prefix boundary", Call::Put(put("b\u{7f}", "edge")));
    s.add("range [a, c)", Call::Range(range("a", "c")));
}

/// Keys with ties in every sort target: equal values, versions, and create and mod revisions
/// shared by keys written in one transaction. Fewer than 13 keys: etcd 3.4 (Go 1.19) sorts
/// that few by insertion, which is stable, so ties keep key order in both directions.
fn sorting(s: &mut Script) {
    s.add("s/1", Call::Put(put("s/1", "b")));
    s.add("s/2", Call::Put(put("s/2", "a")));
    s.add("s/3", Call::Put(put("s/3", "b")));
    s.add("s/4", Call::Put(put("s/4", "c")));
    s.add("s/5", Call::Put(put("s/5", "a"))).memo("s5");
    s.add("s/2 again", Call::Put(put("s/2", "a")));
    s.add("s/4 again", Call::Put(put("s/4", "b")));
    s.add(
        "s/6 s/7 s/8 in one txn",
        Call::Txn(txn(vec![], vec![op_put(put("s/6", "c")), op_put(put("s/7", "a")), op_put(put("s/8", "b"))], vec![])),
    )
    .memo("s678");
    s.add("s/9", Call::Put(put("s/9", "c")));
    s.add("s/1 again", Call::Put(put("s/1", "b")));
    let targets = [
        ("key", SortTarget::Key),
        ("version", SortTarget::Version),
        ("create", SortTarget::Create),
        ("mod", SortTarget::Mod),
        ("value", SortTarget::Value),
    ];
    let orders = [("none", SortOrder::None), ("ascend", SortOrder::Ascend), ("descend", SortOrder::Descend)];
    for (tn, t) in targets {
        for (on, o) in orders {
            let r = pb::RangeRequest { sort_target: t as i32, sort_order: o as i32, ..prefix("s/") };
            s.add(format!("sort by {tn} {on}"), Call::Range(r.clone()));
            s.add(format!("sort by {tn} {on}, limit 4"), Call::Range(pb::RangeRequest { limit: 4, ..r.clone() }));
        }
        let r = pb::RangeRequest {
            sort_target: t as i32,
            sort_order: SortOrder::Descend as i32,
            keys_only: true,
            ..prefix("s/")
        };
        s.add(format!("sort by {tn} descend, keys only"), Call::Range(r));
    }
    s.dynamic("sort by value descend, min_mod_revision", |m| {
        Call::Range(pb::RangeRequest {
            sort_target: SortTarget::Value as i32,
            sort_order: SortOrder::Descend as i32,
            min_mod_revision: m.int("s5", "ok.header.revision"),
            ..prefix("s/")
        })
    });
    s.dynamic("sort by create ascend, max_create_revision, limit 2", |m| {
        Call::Range(pb::RangeRequest {
            sort_target: SortTarget::Create as i32,
            sort_order: SortOrder::Ascend as i32,
            max_create_revision: m.int("s678", "ok.header.revision"),
            limit: 2,
            ..prefix("s/")
        })
    });
}

fn range_options(s: &mut Script) {
    for limit in [1, 3, 8, 9, 10] {
        s.add(format!("limit {limit}"), Call::Range(pb::RangeRequest { limit, ..prefix("s/") }));
    }
    s.add("negative limit", Call::Range(pb::RangeRequest { limit: -1, ..prefix("s/") }));
    s.add("count_only", Call::Range(pb::RangeRequest { count_only: true, ..prefix("s/") }));
    s.add("count_only with limit", Call::Range(pb::RangeRequest { count_only: true, limit: 2, ..prefix("s/") }));
    s.add("keys_only", Call::Range(pb::RangeRequest { keys_only: true, ..prefix("s/") }));
    s.add("keys_only with limit", Call::Range(pb::RangeRequest { keys_only: true, limit: 2, ..prefix("s/") }));
    s.add(
        "keys_only and count_only",
        Call::Range(pb::RangeRequest { keys_only: true, count_only: true, ..prefix("s/") }),
    );
    s.add("serializable", Call::Range(pb::RangeRequest { serializable: true, ..prefix("s/") }));
    s.add("from key s/5", Call::Range(pb::RangeRequest { range_end: vec![0], ..get("s/5") }));
    s.add("from key s/5, limit 2", Call::Range(pb::RangeRequest { range_end: vec![0], limit: 2, ..get("s/5") }));
    s.add(
        "every key",
        Call::Range(pb::RangeRequest { key: vec![0], range_end: vec![0], keys_only: true, ..Default::default() }),
    );
    s.add("range end before key", Call::Range(range("s/5", "s/2")));
    s.add("range end equal to key", Call::Range(range("s/5", "s/5")));
    s.add("range on a missing key", Call::Range(get("s/0")));
    s.add("range over a gap", Call::Range(range("s/10", "s/2")));
    s.dynamic("at the revision of s/5", |m| {
        Call::Range(pb::RangeRequest { revision: m.int("s5", "ok.header.revision"), ..prefix("s/") })
    });
    s.dynamic("at the revision before s/5", |m| {
        Call::Range(pb::RangeRequest { revision: m.int("s5", "ok.header.revision") - 1, ..prefix("s/") })
    });
    s.dynamic("at an old revision, count only", |m| {
        Call::Range(pb::RangeRequest { revision: m.int("s5", "ok.header.revision"), count_only: true, ..prefix("s/") })
    });
    s.dynamic("at an old revision, limit", |m| {
        Call::Range(pb::RangeRequest { revision: m.int("s5", "ok.header.revision"), limit: 2, ..prefix("s/") })
    });
    s.add("at revision 1", Call::Range(pb::RangeRequest { revision: 1, ..prefix("s/") }));
    s.add("at a future revision", Call::Range(pb::RangeRequest { revision: 100_000, ..prefix("s/") }));
    s.dynamic("min_mod_revision", |m| {
        Call::Range(pb::RangeRequest { min_mod_revision: m.int("s678", "ok.header.revision"), ..prefix("s/") })
    });
    s.dynamic("max_mod_revision", |m| {
        Call::Range(pb::RangeRequest { max_mod_revision: m.int("s678", "ok.header.revision"), ..prefix("s/") })
    });
    s.dynamic("min_create_revision", |m| {
        Call::Range(pb::RangeRequest { min_create_revision: m.int("s678", "ok.header.revision"), ..prefix("s/") })
    });
    s.dynamic("max_create_revision", |m| {
        Call::Range(pb::RangeRequest { max_create_revision: m.int("s5", "ok.header.revision"), ..prefix("s/") })
    });
    s.dynamic("min and max mod revision with limit", |m| {
        Call::Range(pb::RangeRequest {
            min_mod_revision: m.int("s5", "ok.header.revision"),
            max_mod_revision: m.int("s678", "ok.header.revision"),
            limit: 1,
            ..prefix("s/")
        })
    });
    s.dynamic("mod filter with count_only", |m| {
        Call::Range(pb::RangeRequest {
            min_mod_revision: m.int("s678", "ok.header.revision"),
            count_only: true,
            ..prefix("s/")
        })
    });
}

fn deletes(s: &mut Script) {
    for k in ["d/1", "d/2", "d/3", "d/4", "d/5"] {
        s.add(format!("put {k}"), Call::Put(put(k, k)));
    }
    s.add("delete one key", Call::Delete(del("d/1")));
    s.add("delete it again", Call::Delete(del("d/1")));
    s.add("delete a key with prev_kv", Call::Delete(pb::DeleteRangeRequest { prev_kv: true, ..del("d/2") }));
    s.add("delete a range", Call::Delete(pb::DeleteRangeRequest { range_end: b("d/4"), ..del("d/3") }));
    s.add("delete a prefix with prev_kv", Call::Delete(pb::DeleteRangeRequest { prev_kv: true, ..del_prefix("d/") }));
    s.add("delete an empty prefix", Call::Delete(pb::DeleteRangeRequest { prev_kv: true, ..del_prefix("d/") }));
    s.add("range after deletes", Call::Range(prefix("d/")));
    s.add("recreate a deleted key", Call::Put(pb::PutRequest { prev_kv: true, ..put("d/1", "again") }));
    s.add("its version starts over", Call::Range(get("d/1")));
    // Keys above every other key of the script, so the rest stays.
    s.add("put ~d/1", Call::Put(put("~d/1", "1")));
    s.add("put ~d/2", Call::Put(put("~d/2", "1")));
    s.add("delete from key", Call::Delete(pb::DeleteRangeRequest { range_end: vec![0], prev_kv: true, ..del("~d/") }));
    s.add("after delete from key", Call::Range(pb::RangeRequest { range_end: vec![0], ..get("~") }));
}

fn leases(s: &mut Script) {
    s.add("grant 1001", grant(1001, 60));
    s.add("grant 1002", grant(1002, 120));
    s.add("grant an existing id", grant(1001, 60));
    s.add("grant below the minimum ttl", grant(1003, 0));
    s.add("revoke it", Call::Revoke(1003));
    s.add("grant a too large ttl", grant(1004, 9_000_000_001));
    s.add("grant a negative id", grant(-5, 60));
    s.add("put l/1 with 1001", Call::Put(with_lease(put("l/1", "x"), 1001)));
    s.add("put l/2 with 1001", Call::Put(with_lease(put("l/2", "x"), 1001)));
    s.add("put l/3 with 1002", Call::Put(with_lease(put("l/3", "x"), 1002)));
    s.add("leased keys", Call::Range(prefix("l/")));
    s.add(
        "move l/2 to 1002 with prev_kv",
        Call::Put(pb::PutRequest { prev_kv: true, ..with_lease(put("l/2", "y"), 1002) }),
    );
    s.add(
        "ignore_lease keeps the lease",
        Call::Put(pb::PutRequest { ignore_lease: true, prev_kv: true, ..put("l/2", "z") }),
    );
    s.add("put without lease detaches", Call::Put(put("l/1", "plain")));
    s.add("reattach l/1", Call::Put(with_lease(put("l/1", "x"), 1001)));
    s.add("timetolive with keys", Call::TimeToLive(pb::LeaseTimeToLiveRequest { id: 1002, keys: true }))
        .rule(Rule::Near("ok.TTL", 2))
        .rule(Rule::Unordered("ok.keys"));
    s.add("timetolive without keys", Call::TimeToLive(pb::LeaseTimeToLiveRequest { id: 1001, keys: false }))
        .rule(Rule::Near("ok.TTL", 2));
    s.add("timetolive of a missing lease", Call::TimeToLive(pb::LeaseTimeToLiveRequest { id: 0x4242, keys: true }));
    s.add("leases", Call::Leases).rule(Rule::Unordered("ok.leases"));
    s.add("keep-alive 1001", Call::KeepAlive(1001)).rule(Rule::Near("ok.TTL", 2));
    s.add("keep-alive 1002", Call::KeepAlive(1002)).rule(Rule::Near("ok.TTL", 2));
    s.add("keep-alive of a missing lease", Call::KeepAlive(0x4242));
    s.add("grant 1005, short", grant(1005, 1));
    s.add("put l/short with 1005", Call::Put(with_lease(put("l/short", "x"), 1005)));
    s.add("put l/short2 with 1005", Call::Put(with_lease(put("l/short2", "x"), 1005)));
    s.add("revoke 1002 deletes its keys", Call::Revoke(1002));
    s.add("revoke a missing lease", Call::Revoke(1002));
    s.add("keys after revoke", Call::Range(prefix("l/")));
    s.add("put with a revoked lease", Call::Put(with_lease(put("l/9", "x"), 1002)));
    s.add("wait for 1005 to expire", Call::Sleep(3500));
    s.add("expired keys are gone in one revision", Call::Range(prefix("l/")));
    s.add("timetolive of an expired lease", Call::TimeToLive(pb::LeaseTimeToLiveRequest { id: 1005, keys: true }));
    s.add("keep-alive of an expired lease", Call::KeepAlive(1005));
    s.add("leases after expiry", Call::Leases).rule(Rule::Unordered("ok.leases"));
    s.add("grant 1006 for compares", grant(1006, 600));
}

fn compares(s: &mut Script) {
    s.add("t/x", Call::Put(put("t/x", "x1")));
    s.add("t/x again", Call::Put(with_lease(put("t/x", "x2"), 1006))).memo("tx");
    s.add("t/y", Call::Put(put("t/y", "y1")));
    let results = [("=", Res::Equal), ("!=", Res::NotEqual), (">", Res::Greater), ("<", Res::Less)];
    for (rn, r) in results {
        s.add(format!("version {rn} 2"), Call::Txn(read_txn(cmp("t/x", Tgt::Version, r, U::Version(2)))));
        s.dynamic(format!("create {rn} the create revision"), move |m| {
            let rev = m.int("tx", "ok.header.revision") - 1;
            Call::Txn(read_txn(cmp("t/x", Tgt::Create, r, U::CreateRevision(rev))))
        });
        s.dynamic(format!("mod {rn} the mod revision"), move |m| {
            let rev = m.int("tx", "ok.header.revision");
            Call::Txn(read_txn(cmp("t/x", Tgt::Mod, r, U::ModRevision(rev))))
        });
        s.add(format!("value {rn} x2"), Call::Txn(read_txn(cmp("t/x", Tgt::Value, r, U::Value(b("x2"))))));
        s.add(format!("value {rn} x10"), Call::Txn(read_txn(cmp("t/x", Tgt::Value, r, U::Value(b("x10"))))));
        s.add(format!("lease {rn} 1006"), Call::Txn(read_txn(cmp("t/x", Tgt::Lease, r, U::Lease(1006)))));
        s.add(
            format!("missing key: version {rn} 0"),
            Call::Txn(read_txn(cmp("t/none", Tgt::Version, r, U::Version(0)))),
        );
        s.add(
            format!("missing key: create {rn} 0"),
            Call::Txn(read_txn(cmp("t/none", Tgt::Create, r, U::CreateRevision(0)))),
        );
        s.add(format!("missing key: mod {rn} 0"), Call::Txn(read_txn(cmp("t/none", Tgt::Mod, r, U::ModRevision(0)))));
        s.add(
            format!("missing key: value {rn} empty"),
            Call::Txn(read_txn(cmp("t/none", Tgt::Value, r, U::Value(vec![])))),
        );
        s.add(format!("missing key: lease {rn} 0"), Call::Txn(read_txn(cmp("t/none", Tgt::Lease, r, U::Lease(0)))));
        s.add(
            format!("prefix t/: version {rn} 1"),
            Call::Txn(read_txn(pb::Compare {
                range_end: prefix_end("t/"),
                ..cmp("t/", Tgt::Version, r, U::Version(1))
            })),
        );
    }
    s.add(
        "prefix t/: every value > a",
        Call::Txn(read_txn(pb::Compare {
            range_end: prefix_end("t/"),
            ..cmp("t/", Tgt::Value, Res::Greater, U::Value(b("a")))
        })),
    );
    s.add(
        "from key t/: versions > 0",
        Call::Txn(read_txn(pb::Compare { range_end: vec![0], ..cmp("t/", Tgt::Version, Res::Greater, U::Version(0)) })),
    );
    s.add(
        "an empty range compares like a missing key",
        Call::Txn(read_txn(pb::Compare { range_end: b("t/0"), ..cmp("t/", Tgt::Version, Res::Equal, U::Version(0)) })),
    );
    s.add(
        "a version compare carrying a value",
        Call::Txn(read_txn(cmp("t/x", Tgt::Version, Res::Greater, U::Value(b("1"))))),
    );
    s.add(
        "two compares, the second fails",
        Call::Txn(read_txn_n(vec![
            cmp("t/x", Tgt::Value, Res::Equal, U::Value(b("x2"))),
            cmp("t/y", Tgt::Value, Res::Equal, U::Value(b("nope"))),
        ])),
    );
    s.add(
        "two compares, both hold",
        Call::Txn(read_txn_n(vec![
            cmp("t/x", Tgt::Value, Res::Equal, U::Value(b("x2"))),
            cmp("t/y", Tgt::Version, Res::Equal, U::Version(1)),
        ])),
    );
}

/// A read-only transaction whose branches say which one ran.
fn read_txn(c: pb::Compare) -> pb::TxnRequest {
    read_txn_n(vec![c])
}

fn read_txn_n(c: Vec<pb::Compare>) -> pb::TxnRequest {
    txn(c, vec![op_range(get("t/x"))], vec![op_range(get("t/y")), op_range(prefix("t/"))])
}

fn txns(s: &mut Script) {
    s.add("an empty txn", Call::Txn(txn(vec![], vec![], vec![])));
    s.add(
        "a failing compare with no failure ops",
        Call::Txn(txn(
            vec![cmp("t/x", Tgt::Version, Res::Equal, U::Version(99))],
            vec![op_put(put("t/z", "1"))],
            vec![],
        )),
    );
    s.add(
        "put then read in one txn",
        Call::Txn(txn(
            vec![],
            vec![op_put(put("u/a", "1")), op_range(get("u/a")), op_range(prefix("u/")), op_put(put("u/b", "1"))],
            vec![],
        )),
    );
    s.add(
        "read then put in one txn",
        Call::Txn(txn(vec![], vec![op_range(prefix("u/")), op_put(put("u/c", "1")), op_range(prefix("u/"))], vec![])),
    );
    s.add(
        "put then delete nothing",
        Call::Txn(txn(vec![], vec![op_put(put("u/d", "1")), op_del(del("u/none"))], vec![])),
    );
    s.add(
        "delete nothing then put",
        Call::Txn(txn(vec![], vec![op_del(del("u/none")), op_put(put("u/e", "1"))], vec![])),
    );
    s.add(
        "delete with prev_kv then read",
        Call::Txn(txn(
            vec![],
            vec![op_del(pb::DeleteRangeRequest { prev_kv: true, ..del("u/a") }), op_range(prefix("u/"))],
            vec![],
        )),
    );
    s.add(
        "puts with prev_kv in a txn",
        Call::Txn(txn(
            vec![],
            vec![
                op_put(pb::PutRequest { prev_kv: true, ..put("u/b", "2") }),
                op_put(pb::PutRequest { prev_kv: true, ..put("u/new", "1") }),
            ],
            vec![],
        )),
    );
    s.add(
        "count_only and keys_only in a txn",
        Call::Txn(txn(
            vec![],
            vec![
                op_range(pb::RangeRequest { count_only: true, ..prefix("u/") }),
                op_range(pb::RangeRequest { keys_only: true, limit: 1, ..prefix("u/") }),
            ],
            vec![],
        )),
    );
    s.add(
        "the failure branch writes",
        Call::Txn(txn(
            vec![cmp("u/b", Tgt::Value, Res::Equal, U::Value(b("nope")))],
            vec![op_put(put("u/f", "success"))],
            vec![op_put(put("u/f", "failure")), op_range(get("u/f")), op_del(del("u/c"))],
        )),
    );
    s.add(
        "nested txns",
        Call::Txn(txn(
            vec![cmp("u/f", Tgt::Value, Res::Equal, U::Value(b("failure")))],
            vec![
                op_put(put("u/g", "1")),
                op_txn(txn(
                    vec![cmp("u/g", Tgt::Version, Res::Equal, U::Version(0))],
                    vec![op_range(get("u/g")), op_put(put("u/h", "1"))],
                    vec![op_put(put("u/h", "2"))],
                )),
                op_txn(txn(vec![], vec![op_range(prefix("u/"))], vec![])),
                op_range(get("u/h")),
            ],
            vec![],
        )),
    );
    s.add(
        "nested read-only txns",
        Call::Txn(txn(
            vec![],
            vec![
                op_txn(txn(
                    vec![cmp("u/h", Tgt::Value, Res::Equal, U::Value(b("1")))],
                    vec![op_range(get("u/h"))],
                    vec![op_range(get("u/g"))],
                )),
                op_range(get("u/g")),
            ],
            vec![],
        )),
    );
    s.add(
        "three levels",
        Call::Txn(txn(
            vec![],
            vec![op_txn(txn(
                vec![],
                vec![
                    op_txn(txn(vec![], vec![op_put(put("u/deep", "1")), op_range(get("u/deep"))], vec![])),
                    op_del(del("u/g")),
                ],
                vec![],
            ))],
            vec![],
        )),
    );
    s.add(
        "put and delete of different keys",
        Call::Txn(txn(vec![], vec![op_put(put("u/p", "1")), op_del(del("u/h"))], vec![])),
    );
    s.add(
        "the same key in both branches",
        Call::Txn(txn(vec![], vec![op_put(put("u/q", "1"))], vec![op_put(put("u/q", "2"))])),
    );
    s.add("two deletes of one key", Call::Txn(txn(vec![], vec![op_del(del("u/q")), op_del(del("u/q"))], vec![])));
    s.dynamic("a range at an old revision in a txn", |m| {
        Call::Txn(txn(
            vec![],
            vec![op_range(pb::RangeRequest { revision: m.int("s5", "ok.header.revision"), ..prefix("s/") })],
            vec![],
        ))
    });
    s.dynamic("a write txn with a range at an old revision", |m| {
        Call::Txn(txn(
            vec![],
            vec![
                op_put(put("u/r", "1")),
                op_range(pb::RangeRequest { revision: m.int("s5", "ok.header.revision"), ..prefix("s/") }),
            ],
            vec![],
        ))
    });
    s.add(
        "a range at a future revision in a txn",
        Call::Txn(txn(vec![], vec![op_range(pb::RangeRequest { revision: 100_000, ..get("u/r") })], vec![])),
    );
    s.add(
        "a write txn with a future range",
        Call::Txn(txn(
            vec![],
            vec![op_put(put("u/s", "1")), op_range(pb::RangeRequest { revision: 100_000, ..get("u/r") })],
            vec![],
        )),
    );
    s.add(
        "sorted ranges in a txn",
        Call::Txn(txn(
            vec![],
            vec![
                op_put(put("s/3", "b")),
                op_range(pb::RangeRequest {
                    sort_target: SortTarget::Value as i32,
                    sort_order: SortOrder::Descend as i32,
                    ..prefix("s/")
                }),
                op_range(pb::RangeRequest {
                    sort_target: SortTarget::Mod as i32,
                    sort_order: SortOrder::Descend as i32,
                    limit: 3,
                    ..prefix("s/")
                }),
            ],
            vec![],
        )),
    );
    s.add(
        "a lease put in a txn",
        Call::Txn(txn(vec![], vec![op_put(with_lease(put("u/leased", "1"), 1006)), op_range(get("u/leased"))], vec![])),
    );
    s.add(
        "ignore_value in a txn",
        Call::Txn(txn(
            vec![],
            vec![op_put(pb::PutRequest { ignore_value: true, prev_kv: true, ..put("u/leased", "") })],
            vec![],
        )),
    );
    s.add("after the txns", Call::Range(prefix("u/")));
}

fn errors(s: &mut Script) {
    s.add("put an empty key", Call::Put(put("", "x")));
    s.add("range an empty key", Call::Range(get("")));
    s.add("delete an empty key", Call::Delete(del("")));
    s.add("a value over the request limit", Call::Put(put("big", &"x".repeat(1_600_000))));
    s.add("a value over the gRPC message limit", Call::Put(put("big", &"x".repeat(2_200_000))));
    s.add("a value just under the limit", Call::Put(put("big", &"x".repeat(1_500_000))));
    s.add("delete it", Call::Delete(del("big")));
    s.add(
        "duplicate put in a txn",
        Call::Txn(txn(vec![], vec![op_put(put("v/a", "1")), op_put(put("v/a", "2"))], vec![])),
    );
    s.add(
        "put and delete of one key in a txn",
        Call::Txn(txn(vec![], vec![op_put(put("v/a", "1")), op_del(del("v/a"))], vec![])),
    );
    s.add(
        "put inside a deleted range in a txn",
        Call::Txn(txn(vec![], vec![op_del(del_prefix("v/")), op_put(put("v/b", "1"))], vec![])),
    );
    s.add(
        "duplicate put across nesting",
        Call::Txn(txn(
            vec![],
            vec![op_put(put("v/a", "1")), op_txn(txn(vec![], vec![op_put(put("v/a", "2"))], vec![]))],
            vec![],
        )),
    );
    s.add(
        "duplicate put in a failure branch",
        Call::Txn(txn(vec![], vec![], vec![op_put(put("v/a", "1")), op_put(put("v/a", "2"))])),
    );
    s.add(
        "duplicate put in two nested txns",
        Call::Txn(txn(
            vec![],
            vec![
                op_txn(txn(vec![], vec![op_put(put("v/c", "1"))], vec![])),
                op_txn(txn(vec![], vec![op_put(put("v/c", "2"))], vec![])),
            ],
            vec![],
        )),
    );
    s.add(
        "too many ops in a txn",
        Call::Txn(txn(vec![], (0..129).map(|i| op_put(put(&format!("v/{i}"), "1"))).collect(), vec![])),
    );
    s.add(
        "the most ops a txn may have",
        Call::Txn(txn(vec![], (0..128).map(|i| op_range(get(&format!("v/{i}")))).collect(), vec![])),
    );
    s.add("an empty key in a txn", Call::Txn(txn(vec![], vec![op_put(put("", "1"))], vec![])));
    s.add("an empty range key in a txn", Call::Txn(txn(vec![], vec![op_range(get(""))], vec![])));
    s.add(
        "a missing lease in a txn",
        Call::Txn(txn(vec![], vec![op_put(with_lease(put("v/l", "1"), 0x4242))], vec![])),
    );
    s.add(
        "ignore_value on a missing key in a txn",
        Call::Txn(txn(vec![], vec![op_put(pb::PutRequest { ignore_value: true, ..put("v/none", "") })], vec![])),
    );
    s.add(
        "ignore_value with a value in a txn",
        Call::Txn(txn(vec![], vec![op_put(pb::PutRequest { ignore_value: true, ..put("u/b", "x") })], vec![])),
    );
    // etcd 3.4 ignores an unknown sort order; cairn refuses it with etcd 3.5's error.
    s.add("an unknown sort order", Call::Range(pb::RangeRequest { sort_order: 7, ..prefix("s/") }))
        .exclude("cairn checks the sort order as etcd 3.5 does (README, Compatibility notes)");
    s.add("compact at a future revision", Call::Compact(pb::CompactionRequest { revision: 100_000, physical: false }));
    s.add("nothing was written by the errors", Call::Range(prefix("v/")));
}

fn watches(s: &mut Script) {
    s.add("put w/a", Call::Put(put("w/a", "1"))).memo("wa");
    s.add("put w/b", Call::Put(put("w/b", "1")));
    s.add("watch w/a from now", Call::Watch { stream: "w1", send: watch_create(watch_key("w/a")), recv: 1 });
    s.add("put w/a", Call::Put(put("w/a", "2")));
    s.add("the put arrives", Call::Watch { stream: "w1", send: None, recv: 1 });
    s.add("put w/b (not watched)", Call::Put(put("w/b", "2")));
    s.add("delete w/a", Call::Delete(del("w/a")));
    s.add("the delete arrives", Call::Watch { stream: "w1", send: None, recv: 1 });
    s.add("cancel the watch", Call::Watch { stream: "w1", send: watch_cancel(0), recv: 1 });
    s.add("cancel an unknown watch", Call::Watch { stream: "w1", send: watch_cancel(77), recv: 0 });
    s.add("no answer to that", Call::WatchQuiet { stream: "w1", ms: 300 });
    s.add("put w/a after cancel", Call::Put(put("w/a", "3")));
    s.add("nothing arrives after cancel", Call::WatchQuiet { stream: "w1", ms: 300 });
    s.add("close w1", Call::WatchClose("w1"));

    s.dynamic("watch w/ from the past with prev_kv", |m| Call::Watch {
        stream: "w2",
        send: watch_create(pb::WatchCreateRequest {
            start_revision: m.int("wa", "ok.header.revision"),
            prev_kv: true,
            ..watch_prefix("w/")
        }),
        recv: 2,
    });
    s.add("put w/c", Call::Put(put("w/c", "1")));
    s.add("live event with prev_kv (none)", Call::Watch { stream: "w2", send: None, recv: 1 });
    s.add("put w/c again", Call::Put(put("w/c", "2")));
    s.add("live event with prev_kv", Call::Watch { stream: "w2", send: None, recv: 1 });
    s.add(
        "txn writing three watched keys",
        Call::Txn(txn(vec![], vec![op_put(put("w/d", "1")), op_del(del("w/c")), op_put(put("w/e", "1"))], vec![])),
    );
    s.add("one response with three events", Call::Watch { stream: "w2", send: None, recv: 1 });
    s.add("close w2", Call::WatchClose("w2"));

    s.add(
        "watch with NOPUT",
        Call::Watch {
            stream: "w3",
            send: watch_create(pb::WatchCreateRequest {
                filters: vec![pb::watch_create_request::FilterType::Noput as i32],
                ..watch_prefix("w/")
            }),
            recv: 1,
        },
    );
    s.add(
        "watch with NODELETE on another stream",
        Call::Watch {
            stream: "w4",
            send: watch_create(pb::WatchCreateRequest {
                filters: vec![pb::watch_create_request::FilterType::Nodelete as i32],
                ..watch_prefix("w/")
            }),
            recv: 1,
        },
    );
    s.add("put w/f", Call::Put(put("w/f", "1")));
    s.add("delete w/f", Call::Delete(del("w/f")));
    s.add("NOPUT sees the delete", Call::Watch { stream: "w3", send: None, recv: 1 });
    s.add("NODELETE sees the put", Call::Watch { stream: "w4", send: None, recv: 1 });
    s.add("NOPUT: nothing more", Call::WatchQuiet { stream: "w3", ms: 200 });
    s.add("NODELETE: nothing more", Call::WatchQuiet { stream: "w4", ms: 200 });
    s.add("close w3", Call::WatchClose("w3"));
    s.add("close w4", Call::WatchClose("w4"));

    s.add(
        "watch with a chosen id",
        Call::Watch {
            stream: "w5",
            send: watch_create(pb::WatchCreateRequest { watch_id: 100, ..watch_key("w/g") }),
            recv: 1,
        },
    );
    s.add(
        "the same id again",
        Call::Watch {
            stream: "w5",
            send: watch_create(pb::WatchCreateRequest { watch_id: 100, ..watch_key("w/h") }),
            recv: 1,
        },
    );
    s.add("the next automatic id", Call::Watch { stream: "w5", send: watch_create(watch_key("w/i")), recv: 1 });
    s.add("cancel the automatic one", Call::Watch { stream: "w5", send: watch_cancel(0), recv: 1 });
    s.add("put w/g", Call::Put(put("w/g", "1")));
    s.add("the chosen id gets it", Call::Watch { stream: "w5", send: None, recv: 1 });
    s.add("close w5", Call::WatchClose("w5"));

    s.add(
        "watch a range [w/a, w/c)",
        Call::Watch {
            stream: "w6",
            send: watch_create(pb::WatchCreateRequest { range_end: b("w/c"), ..watch_key("w/a") }),
            recv: 1,
        },
    );
    s.add("put w/c (outside)", Call::Put(put("w/c", "3")));
    s.add("put w/b (inside)", Call::Put(put("w/b", "3")));
    s.add("only w/b arrives", Call::Watch { stream: "w6", send: None, recv: 1 });
    s.add(
        "progress request",
        Call::Watch {
            stream: "w6",
            send: Some(pb::WatchRequest {
                request_union: Some(pb::watch_request::RequestUnion::ProgressRequest(pb::WatchProgressRequest {})),
            }),
            recv: 1,
        },
    );
    s.add("close w6", Call::WatchClose("w6"));

    s.dynamic("watch from a future revision", |m| Call::Watch {
        stream: "w7",
        send: watch_create(pb::WatchCreateRequest {
            start_revision: m.int("wa", "ok.header.revision") + 1000,
            ..watch_prefix("w/")
        }),
        recv: 1,
    });
    s.add("put w/j", Call::Put(put("w/j", "1")));
    s.add("nothing before the start revision", Call::WatchQuiet { stream: "w7", ms: 300 });
    s.add("close w7", Call::WatchClose("w7"));

    s.add(
        "watch with progress_notify",
        Call::Watch {
            stream: "w8",
            send: watch_create(pb::WatchCreateRequest { progress_notify: true, ..watch_key("w/k") }),
            recv: 1,
        },
    );
    s.add("a progress notification (interval 1 s)", Call::Watch { stream: "w8", send: None, recv: 1 });
    s.add("close w8", Call::WatchClose("w8"));

    s.add(
        "watch every key",
        Call::Watch {
            stream: "w9",
            send: watch_create(pb::WatchCreateRequest { key: vec![0], range_end: vec![0], ..Default::default() }),
            recv: 1,
        },
    );
    s.add(
        "watch with an empty key on the same stream",
        Call::Watch {
            stream: "w9",
            send: watch_create(pb::WatchCreateRequest { range_end: vec![0], ..Default::default() }),
            recv: 1,
        },
    );
    s.add("cancel the second", Call::Watch { stream: "w9", send: watch_cancel(1), recv: 1 });
    s.add("put z", Call::Put(put("z", "1")));
    s.add("every-key watch sees z", Call::Watch { stream: "w9", send: None, recv: 1 });
    s.add("close w9", Call::WatchClose("w9"));
}

fn locks(s: &mut Script) {
    s.add("grant 2001", grant(2001, 60));
    s.add("grant 2002", grant(2002, 60));
    s.add("lock lk with 2001", lock("lk", 2001));
    s.add("the lock key", Call::Range(prefix("lk/")));
    s.add("lock lk again with 2001 (same holder)", lock("lk", 2001));
    s.add("lock lk with 2002 waits", Call::Background { name: "l2", call: Box::new(lock("lk", 2002)) });
    s.add("still waiting", Call::Waiting { name: "l2", ms: 500 });
    s.add("both keys exist", Call::Range(prefix("lk/")));
    s.add("unlock 2001's key", unlock("lk/7d1"));
    s.add("2002 gets the lock", Call::Await("l2"));
    s.add("unlock 2002's key", unlock("lk/7d2"));
    s.add("unlock a missing key", unlock("lk/7d2"));
    s.add("lock with a missing lease", lock("lk", 0x4242));
    s.add("no key for it", Call::Range(prefix("lk/")));
    s.add("lock lk2 with 2001", lock("lk2", 2001));
    s.add("revoking the lease releases the lock", Call::Revoke(2001));
    s.add("lock lk2 with 2002 after the revoke", lock("lk2", 2002));
    s.add("unlock lk2", unlock("lk2/7d2"));
}

/// Steps where cairn deliberately differs and that write on one side only: last, so the
/// revisions of everything else still agree.
fn deviations(s: &mut Script) {
    // etcd locks under the prefix "/"; cairn refuses an empty name (README, "Compatibility notes").
    s.add("grant 4001", grant(4001, 60));
    s.add("lock with an empty name", lock("", 4001)).exclude("cairn refuses a lock with an empty name");
    s.add("campaign with an empty name", campaign("", 4001, "x"))
        .exclude("cairn refuses an election with an empty name");
}

fn elections(s: &mut Script) {
    s.add("grant 3001", grant(3001, 60));
    s.add("grant 3002", grant(3002, 60));
    s.add("leader of an election nobody runs", Call::Leader(leader("el")));
    s.add("campaign with 3001", campaign("el", 3001, "v1")).memo("c1");
    s.add("leader", Call::Leader(leader("el")));
    s.add("observe: the first event", Call::Observe { stream: "o1", open: Some(leader("el")) });
    s.dynamic("proclaim v2", |m| {
        Call::Proclaim(epb::ProclaimRequest { leader: Some(leader_key(m, "c1", "el", 3001)), value: b("v2") })
    });
    s.add("observe: the proclamation", Call::Observe { stream: "o1", open: None });
    s.add("leader after proclaim", Call::Leader(leader("el")));
    s.add("campaign with 3002 waits", Call::Background { name: "c2", call: Box::new(campaign("el", 3002, "w1")) });
    s.add("still waiting", Call::Waiting { name: "c2", ms: 500 });
    s.add("the election's keys", Call::Range(prefix("el/")));
    s.dynamic("proclaim with a wrong revision", |m| {
        let mut k = leader_key(m, "c1", "el", 3001);
        k.rev += 1;
        Call::Proclaim(epb::ProclaimRequest { leader: Some(k), value: b("bad") })
    });
    s.dynamic("resign 3001", |m| Call::Resign(epb::ResignRequest { leader: Some(leader_key(m, "c1", "el", 3001)) }));
    s.add("3002 is elected", Call::Await("c2")).memo("c2");
    s.add("observe: the new leader", Call::Observe { stream: "o1", open: None });
    s.add("leader after resign", Call::Leader(leader("el")));
    s.dynamic("proclaim as the resigned leader", |m| {
        Call::Proclaim(epb::ProclaimRequest { leader: Some(leader_key(m, "c1", "el", 3001)), value: b("stale") })
    });
    s.dynamic("resign again as the resigned leader", |m| {
        Call::Resign(epb::ResignRequest { leader: Some(leader_key(m, "c1", "el", 3001)) })
    });
    s.dynamic("proclaim with a missing lease", |m| {
        let k = epb::LeaderKey { lease: 0x4242, ..leader_key(m, "c2", "el", 3002) };
        Call::Proclaim(epb::ProclaimRequest { leader: Some(k), value: b("lost") })
    });
    s.add("campaign with a missing lease", campaign("el2", 0x4242, "x"));
    s.add("no key for it", Call::Range(prefix("el2/")));
    s.add("campaign again as the leader", campaign("el", 3002, "w2"));
    s.add("revoke 3002", Call::Revoke(3002));
    s.add("no leader once its lease is gone", Call::Leader(leader("el")));
}

fn compaction(s: &mut Script) {
    s.add("c/1", Call::Put(put("c/1", "1"))).memo("c1rev");
    s.add("c/1 again", Call::Put(put("c/1", "2")));
    s.add("c/2", Call::Put(put("c/2", "1"))).memo("compact_at");
    s.add("c/2 again", Call::Put(put("c/2", "2")));
    s.add(
        "watch c/ before the compaction",
        Call::Watch { stream: "wc1", send: watch_create(watch_prefix("c/")), recv: 1 },
    );
    s.dynamic("compact (physical)", |m| {
        Call::Compact(pb::CompactionRequest { revision: m.int("compact_at", "ok.header.revision"), physical: true })
    });
    s.dynamic("compact at the same revision", |m| {
        Call::Compact(pb::CompactionRequest { revision: m.int("compact_at", "ok.header.revision"), physical: false })
    });
    s.dynamic("compact below it", |m| {
        Call::Compact(pb::CompactionRequest { revision: m.int("c1rev", "ok.header.revision"), physical: false })
    });
    s.dynamic("range at the compaction revision", |m| {
        Call::Range(pb::RangeRequest { revision: m.int("compact_at", "ok.header.revision"), ..prefix("c/") })
    });
    s.dynamic("range below the compaction revision", |m| {
        Call::Range(pb::RangeRequest { revision: m.int("c1rev", "ok.header.revision"), ..prefix("c/") })
    });
    s.dynamic("count below the compaction revision", |m| {
        Call::Range(pb::RangeRequest {
            revision: m.int("c1rev", "ok.header.revision"),
            count_only: true,
            ..prefix("c/")
        })
    });
    s.dynamic("a txn range below the compaction revision", |m| {
        Call::Txn(txn(
            vec![],
            vec![op_range(pb::RangeRequest { revision: m.int("c1rev", "ok.header.revision"), ..prefix("c/") })],
            vec![],
        ))
    });
    s.dynamic("a write txn with a compacted range", |m| {
        Call::Txn(txn(
            vec![],
            vec![
                op_put(put("c/3", "1")),
                op_range(pb::RangeRequest { revision: m.int("c1rev", "ok.header.revision"), ..prefix("c/") }),
            ],
            vec![],
        ))
    });
    s.add("range now", Call::Range(prefix("c/")));
    s.add(
        "sorted by mod after compaction",
        Call::Range(pb::RangeRequest {
            sort_target: SortTarget::Mod as i32,
            sort_order: SortOrder::Descend as i32,
            ..prefix("c/")
        }),
    );
    s.add("a synced watcher survives the compaction", Call::WatchQuiet { stream: "wc1", ms: 300 });
    s.add("put c/1 after compaction", Call::Put(put("c/1", "3")));
    s.add("the synced watcher sees it", Call::Watch { stream: "wc1", send: None, recv: 1 });
    s.add("close wc1", Call::WatchClose("wc1"));
    s.dynamic("watch from a compacted revision", |m| Call::Watch {
        stream: "wc2",
        send: watch_create(pb::WatchCreateRequest {
            start_revision: m.int("c1rev", "ok.header.revision"),
            ..watch_prefix("c/")
        }),
        recv: 2,
    });
    s.add("close wc2", Call::WatchClose("wc2"));
    s.dynamic("watch from the compaction revision", |m| Call::Watch {
        stream: "wc3",
        send: watch_create(pb::WatchCreateRequest {
            start_revision: m.int("compact_at", "ok.header.revision"),
            ..watch_prefix("c/")
        }),
        recv: 2,
    });
    s.add("close wc3", Call::WatchClose("wc3"));
    s.dynamic("hashkv at the compaction revision", |m| Call::HashKv(m.int("compact_at", "ok.header.revision")));
    s.dynamic("hashkv below it", |m| Call::HashKv(m.int("c1rev", "ok.header.revision")));
    // cairn's hash is its own (README, "Compatibility notes"); the rest of the answer is compared.
    s.dynamic("hashkv above it", |m| Call::HashKv(m.int("compact_at", "ok.header.revision") + 1))
        .rule(Rule::Skip("ok.hash"));
    s.add("hashkv now", Call::HashKv(0)).rule(Rule::Skip("ok.hash"));
}

/// Member IDs, names, URLs and how many voters there are are the deployment's: `Rule::Members`
/// compares the shapes of the members; only learners are added (a voter would break a 1-member
/// etcd's quorum), and removed again.
fn members(s: &mut Script) {
    fn add(url: &str, is_learner: bool) -> Call {
        Call::MemberAdd(pb::MemberAddRequest { peer_ur_ls: vec![url.into()], is_learner })
    }
    s.add("member list", Call::MemberList).rule(Rule::Members("ok.members"));
    s.add("add a learner", add("http://127.0.0.1:1", true))
        .rule(Rule::Members("ok.member"))
        .rule(Rule::Members("ok.members"));
    s.add("member list with the learner", Call::MemberList).rule(Rule::Members("ok.members"));
    // etcd derives a new member's ID from its peer URLs and the time in whole seconds: the same
    // URLs added again within the second collide on the ID first ("member ID already exist").
    s.add("a second passes", Call::Sleep(1100));
    s.add("add its peer URL again", add("http://127.0.0.1:1", true));
    s.add("add a second learner", add("http://127.0.0.1:2", true));
    s.add("promote the learner (not in sync)", Call::MemberPromote(Pick::Learner));
    s.add("promote a voter", Call::MemberPromote(Pick::Voter));
    s.add("promote an unknown member", Call::MemberPromote(Pick::Id(0x1234)));
    s.add("remove the learner", Call::MemberRemove(Pick::Learner)).rule(Rule::Members("ok.members"));
    s.add("remove an unknown member", Call::MemberRemove(Pick::Id(0x1234)));
    s.add("member list after", Call::MemberList).rule(Rule::Members("ok.members"));
}

fn ctl(args: &[&str]) -> Ctl {
    Ctl { args: args.iter().map(|a| a.to_string()).collect(), ..Default::default() }
}

/// etcdctl with `-w json`.
fn ctl_json(args: &[&str]) -> Ctl {
    let mut c = ctl(args);
    c.args.extend(["-w".to_string(), "json".to_string()]);
    c.json = true;
    c
}

fn ctl_stdin(args: &[&str], stdin: &str) -> Ctl {
    Ctl { stdin: Some(stdin.into()), ..ctl(args) }
}

fn etcdctl(s: &mut Script) {
    fn run<'a>(s: &'a mut Script, name: &str, c: Ctl) -> &'a mut Step {
        s.add(format!("etcdctl {name}"), Call::Etcdctl(c))
    }
    run(s, "put", ctl(&["put", "ctl/a", "1"]));
    run(s, "put -w json", ctl_json(&["put", "ctl/b", "2"])).memo("ctl_b");
    run(s, "put --prev-kv", ctl(&["put", "ctl/a", "11", "--prev-kv"]));
    run(s, "put from stdin", ctl_stdin(&["put", "ctl/c"], "3"));
    run(s, "put with no key", ctl(&["put"]));
    run(s, "get", ctl(&["get", "ctl/a"]));
    run(s, "get -w json", ctl_json(&["get", "ctl/a"]));
    run(s, "get a missing key", ctl(&["get", "ctl/missing"]));
    run(s, "get a missing key -w json", ctl_json(&["get", "ctl/missing"]));
    run(s, "get --prefix", ctl(&["get", "ctl/", "--prefix"]));
    run(s, "get --prefix --keys-only", ctl(&["get", "ctl/", "--prefix", "--keys-only"]));
    run(s, "get --prefix --print-value-only", ctl(&["get", "ctl/", "--prefix", "--print-value-only"]));
    run(s, "get --prefix --limit -w json", ctl_json(&["get", "ctl/", "--prefix", "--limit=2"]));
    run(s, "get --prefix --keys-only -w json", ctl_json(&["get", "ctl/", "--prefix", "--keys-only"]));
    run(s, "get --prefix --limit --keys-only", ctl(&["get", "ctl/", "--prefix", "--limit=1", "--keys-only"]));
    run(
        s,
        "get --sort-by=MODIFY --order=DESCEND",
        ctl(&["get", "ctl/", "--prefix", "--sort-by=MODIFY", "--order=DESCEND"]),
    );
    run(s, "get --sort-by=VALUE", ctl(&["get", "ctl/", "--prefix", "--sort-by=VALUE"]));
    run(s, "get --sort-by=bad", ctl(&["get", "ctl/", "--prefix", "--sort-by=bad"]));
    run(s, "get a range", ctl(&["get", "ctl/a", "ctl/c"]));
    run(s, "get --from-key", ctl(&["get", "ctl/b", "--from-key"]));
    s.dynamic("etcdctl get --rev", |m| {
        let rev = m.int("ctl_b", "stdout.header.revision").to_string();
        Call::Etcdctl(ctl_json(&["get", "ctl/", "--prefix", &format!("--rev={rev}")]))
    });
    run(s, "get a future revision", ctl(&["get", "ctl/a", "--rev=100000"]));
    run(s, "del --prev-kv", ctl(&["del", "ctl/b", "--prev-kv"]));
    run(s, "del a missing key", ctl(&["del", "ctl/b"]));
    run(s, "del --prefix --prev-kv -w json", ctl_json(&["del", "ctl/c", "--prefix", "--prev-kv"]));
    let t = "value(\"ctl/a\") = \"11\"\n\nput ctl/t yes\nget ctl/a\n\nput ctl/t no\n\n";
    run(s, "txn from stdin", ctl_stdin(&["txn"], t));
    run(
        s,
        "txn from stdin -w json",
        Ctl {
            stdin: Some("mod(\"ctl/a\") < \"1\"\n\nput ctl/t x\n\ndel ctl/t\nget ctl/ --prefix\n\n".into()),
            ..ctl_json(&["txn"])
        },
    );
    run(
        s,
        "txn --interactive",
        ctl_stdin(&["txn", "--interactive"], "version(\"ctl/t\") = \"0\"\n\nput ctl/t again\n\nget ctl/t\n\n"),
    );
    run(s, "txn with a bad compare", ctl_stdin(&["txn"], "value(ctl/a) ~ 1\n\n\n"));
    s.add("grant 8001 for etcdctl", grant(8001, 60));
    run(s, "put --lease", ctl(&["put", "ctl/l", "v", "--lease=1f41"]));
    run(s, "put with a missing lease", ctl(&["put", "ctl/l", "v", "--lease=4242"]));
    run(s, "lease timetolive --keys -w json", ctl_json(&["lease", "timetolive", "1f41", "--keys"]))
        .rule(Rule::Near("stdout.ttl", 2));
    run(s, "lease timetolive -w json", ctl_json(&["lease", "timetolive", "1f41"])).rule(Rule::Near("stdout.ttl", 2));
    run(s, "lease list -w json", ctl_json(&["lease", "list"])).rule(Rule::Unordered("stdout.leases"));
    let granted = |out: &str| out.split_whitespace().nth(1).map(str::to_owned);
    run(s, "lease grant", Ctl { capture: Some(("lease", granted)), ..ctl(&["lease", "grant", "60"]) });
    run(s, "lease timetolive of the granted lease", ctl_json(&["lease", "timetolive", "$lease"]))
        .rule(Rule::Skip("stdout.id"))
        .rule(Rule::Near("stdout.ttl", 2));
    run(s, "lease revoke", ctl(&["lease", "revoke", "$lease"]));
    run(s, "lease revoke again", ctl(&["lease", "revoke", "$lease"]));
    run(s, "lease revoke 8001", ctl(&["lease", "revoke", "1f41"]));
    run(s, "the lease's key is gone", ctl(&["get", "ctl/l"]));
    run(s, "member list -w json", ctl_json(&["member", "list"])).rule(Rule::Members("stdout.members"));
    let st = run(s, "endpoint status -w json", ctl_json(&["endpoint", "status"]));
    for f in ["version", "dbSize", "dbSizeInUse", "leader", "raftIndex", "raftTerm", "raftAppliedIndex"] {
        st.rule(Rule::Skip(Box::leak(format!("stdout.0.Status.{f}").into_boxed_str())));
    }
    run(s, "alarm list", ctl(&["alarm", "list"]));
    run(s, "lock, running a command", ctl(&["lock", "ctl-lock", "echo", "held"]));
    run(s, "the lock is released", ctl(&["get", "ctl-lock", "--prefix", "--keys-only"]));
    // `etcdctl elect` waits until it is interrupted, so it is not run.
    run(s, "put before compaction -w json", ctl_json(&["put", "ctl/z", "1"])).memo("ctl_z");
    s.dynamic("etcdctl compaction", |m| {
        Call::Etcdctl(ctl(&["compaction", &m.int("ctl_z", "stdout.header.revision").to_string()]))
    });
    s.dynamic("etcdctl compaction again", |m| {
        Call::Etcdctl(ctl(&["compaction", &m.int("ctl_z", "stdout.header.revision").to_string()]))
    });
    s.dynamic("etcdctl get a compacted revision", |m| {
        let rev = m.int("ctl_b", "stdout.header.revision").to_string();
        Call::Etcdctl(ctl(&["get", "ctl/a", &format!("--rev={rev}")]))
    });
    run(s, "defrag", ctl(&["defrag"]));
    run(s, "user add", ctl(&["user", "add", "carol:pw"]));
    run(s, "user add again", ctl(&["user", "add", "carol:pw"]));
    run(s, "role add", ctl(&["role", "add", "r2"]));
    run(s, "role grant-permission --prefix", ctl(&["role", "grant-permission", "r2", "readwrite", "ctl/", "--prefix"]));
    run(s, "role grant-permission a range", ctl(&["role", "grant-permission", "r2", "read", "a", "c"]));
    run(s, "role grant-permission --from-key", ctl(&["role", "grant-permission", "r2", "write", "z", "--from-key"]));
    run(s, "role get", ctl(&["role", "get", "r2"]));
    run(s, "role get -w json", ctl_json(&["role", "get", "r2"]));
    run(s, "role revoke-permission", ctl(&["role", "revoke-permission", "r2", "a", "c"]));
    run(s, "role revoke-permission not granted", ctl(&["role", "revoke-permission", "r2", "q"]));
    run(s, "user grant-role", ctl(&["user", "grant-role", "carol", "r2"]));
    run(s, "user grant-role a missing role", ctl(&["user", "grant-role", "carol", "nope"]));
    run(s, "user get", ctl(&["user", "get", "carol"]));
    run(s, "user get --detail", ctl(&["user", "get", "carol", "--detail"]));
    run(s, "user list", ctl(&["user", "list"]));
    run(s, "role list -w json", ctl_json(&["role", "list"]));
    run(s, "user passwd", ctl_stdin(&["user", "passwd", "carol", "--interactive=false"], "pw2\n"));
    run(s, "user revoke-role", ctl(&["user", "revoke-role", "carol", "r2"]));
    run(s, "user delete", ctl(&["user", "delete", "carol"]));
    run(s, "user delete a missing user", ctl(&["user", "delete", "carol"]));
    run(s, "role delete", ctl(&["role", "delete", "r2"]));
    run(s, "auth enable without root", ctl(&["auth", "enable"]));
}

fn perm(role: &'static str, ty: authpb::permission::Type, key: &str, end: Vec<u8>) -> Call {
    Call::RoleGrantPermission(role, ty, b(key), end)
}

fn as_user(user: &'static str, call: Call) -> Call {
    Call::As(user, Box::new(call))
}

/// Auth, last but for the deviations: enabling it changes every later request; it is disabled
/// again at the end.
fn auth(s: &mut Script) {
    use authpb::permission::Type;
    fn user(name: &str, password: &str) -> Call {
        Call::UserAdd(pb::AuthUserAddRequest { name: name.into(), password: password.into(), ..Default::default() })
    }
    s.add("auth status", Call::AuthStatus).exclude("AuthStatus is etcd 3.5's; etcd 3.4 answers Unimplemented");
    s.add("user add alice", user("alice", "a-pass"));
    s.add("user add alice again", user("alice", "a-pass"));
    s.add("user add with an empty name", user("", "x"));
    s.add("user add bob", user("bob", "b-pass"));
    s.add("user get alice", Call::UserGet("alice"));
    s.add("user get a missing user", Call::UserGet("nobody"));
    s.add("user list", Call::UserList);
    s.add("change alice's password", Call::UserChangePassword("alice", "a-pass2"));
    s.add("change a missing user's password", Call::UserChangePassword("nobody", "x"));
    s.add("role add reader", Call::RoleAdd("reader"));
    s.add("role add reader again", Call::RoleAdd("reader"));
    s.add("role add with an empty name", Call::RoleAdd(""));
    s.add("grant read on the prefix a/", perm("reader", Type::Read, "a/", prefix_end("a/")));
    s.add("grant readwrite on the key au/x", perm("reader", Type::Readwrite, "au/x", vec![]));
    s.add("grant write on [b, d)", perm("reader", Type::Write, "b", b("d")));
    s.add("grant read from the key z", perm("reader", Type::Read, "z", vec![0]));
    s.add("grant to a missing role", perm("nope", Type::Read, "a", vec![]));
    s.add("role get reader", Call::RoleGet("reader"));
    s.add("role get a missing role", Call::RoleGet("nope"));
    s.add("role list", Call::RoleList);
    s.add("revoke au/x", Call::RoleRevokePermission("reader", b("au/x"), vec![]));
    s.add("revoke au/x again", Call::RoleRevokePermission("reader", b("au/x"), vec![]));
    s.add("role get after the revoke", Call::RoleGet("reader"));
    s.add("grant reader to alice", Call::UserGrantRole("alice", "reader"));
    s.add("grant a missing role to alice", Call::UserGrantRole("alice", "nope"));
    s.add("grant reader to a missing user", Call::UserGrantRole("nobody", "reader"));
    s.add("grant reader to bob", Call::UserGrantRole("bob", "reader"));
    s.add("revoke reader from bob", Call::UserRevokeRole("bob", "reader"));
    s.add("revoke it again", Call::UserRevokeRole("bob", "reader"));
    s.add("user get alice with her role", Call::UserGet("alice"));
    s.add("auth enable without root", Call::AuthEnable);
    s.add("user add root", user("root", "r-pass"));
    s.add("auth enable without the root role", Call::AuthEnable);
    s.add("grant root to root", Call::UserGrantRole("root", "root"));
    s.add("auth enable", Call::AuthEnable);
    s.add("auth enable again", Call::AuthEnable);
    s.add("auth status when enabled", Call::AuthStatus)
        .exclude("AuthStatus is etcd 3.5's; etcd 3.4 answers Unimplemented");
    s.add("put without a token", Call::Put(put("a/1", "x")));
    s.add("range without a token", Call::Range(get("a/1")));
    s.add("authenticate with a wrong password", Call::Authenticate("alice", "a-pass"));
    s.add("authenticate a missing user", Call::Authenticate("nobody", "x"));
    s.add("authenticate alice", Call::Authenticate("alice", "a-pass2"));
    s.add("authenticate bob", Call::Authenticate("bob", "b-pass"));
    s.add("authenticate root", Call::Authenticate("root", "r-pass"));
    s.add("root enables auth again", as_user("root", Call::AuthEnable));
    s.add("root puts a/1", as_user("root", Call::Put(put("a/1", "1"))));
    s.add("alice reads a/1", as_user("alice", Call::Range(get("a/1"))));
    s.add("alice reads the prefix a/", as_user("alice", Call::Range(prefix("a/"))));
    s.add("alice reads beyond her prefix", as_user("alice", Call::Range(range("a/", "b"))));
    s.add("alice puts a/1", as_user("alice", Call::Put(put("a/1", "2"))));
    s.add("alice puts bb", as_user("alice", Call::Put(put("bb", "1"))));
    s.add("alice reads bb", as_user("alice", Call::Range(get("bb"))));
    s.add("alice deletes bb", as_user("alice", Call::Delete(del("bb"))));
    s.add(
        "alice puts with prev_kv on bb",
        as_user("alice", Call::Put(pb::PutRequest { prev_kv: true, ..put("bb", "2") })),
    );
    s.add("alice reads from z", as_user("alice", Call::Range(range("z", "\0"))));
    s.add(
        "alice's txn reading a/1, writing bb",
        as_user("alice", Call::Txn(txn(vec![], vec![op_range(get("a/1")), op_put(put("bb", "3"))], vec![]))),
    );
    s.add("alice's txn writing a/1", as_user("alice", Call::Txn(txn(vec![], vec![op_put(put("a/1", "3"))], vec![]))));
    s.add(
        "alice's txn comparing c",
        as_user(
            "alice",
            Call::Txn(txn(
                vec![cmp("c", Tgt::Version, Res::Equal, U::Version(0))],
                vec![op_put(put("bb", "4"))],
                vec![],
            )),
        ),
    );
    s.add("bob (no role) reads a/1", as_user("bob", Call::Range(get("a/1"))));
    s.add("alice lists users", as_user("alice", Call::UserList));
    s.add("alice disables auth", as_user("alice", Call::AuthDisable));
    s.add("alice compacts", as_user("alice", Call::Compact(pb::CompactionRequest { revision: 1, physical: false })));
    s.add("alice grants a lease", as_user("alice", grant(9001, 60)));
    s.add("an invalid token", as_user("not-a-token", Call::Range(get("a/1"))));
    let ctl_as = |s: &mut Script, name: &str, user: &str, args: &[&str]| {
        let mut c = ctl(args);
        c.args.insert(0, format!("--user={user}"));
        c.json = args.ends_with(&["-w", "json"]);
        s.add(format!("etcdctl {name}"), Call::Etcdctl(c));
    };
    ctl_as(s, "get as root", "root:r-pass", &["get", "a/", "--prefix"]);
    ctl_as(s, "get with a wrong password", "alice:a-pass", &["get", "a/1"]);
    ctl_as(s, "get as alice", "alice:a-pass2", &["get", "a/1", "-w", "json"]);
    ctl_as(s, "put as alice (denied)", "alice:a-pass2", &["put", "a/1", "x"]);
    ctl_as(s, "put as alice", "alice:a-pass2", &["put", "bc", "x"]);
    ctl_as(s, "user list as alice (denied)", "alice:a-pass2", &["user", "list"]);
    ctl_as(s, "role get as root", "root:r-pass", &["role", "get", "reader"]);
    ctl_as(s, "user get --detail as root", "root:r-pass", &["user", "get", "alice", "--detail"]);
    s.add("etcdctl get without a user", Call::Etcdctl(ctl(&["get", "a/1"])));
    s.add("root lists users", as_user("root", Call::UserList));
    s.add("root gets alice", as_user("root", Call::UserGet("alice")));
    s.add("root reads everything under a/", as_user("root", Call::Range(prefix("a/"))));
    s.add("root deletes bob", as_user("root", Call::UserDelete("bob")));
    s.add("bob's token after his deletion", as_user("bob", Call::Range(get("a/1"))));
    s.add("root deletes a missing user", as_user("root", Call::UserDelete("bob")));
    s.add("root revokes reader from alice", as_user("root", Call::UserRevokeRole("alice", "reader")));
    s.add("alice reads a/1 without her role", as_user("alice", Call::Range(get("a/1"))));
    s.add("root deletes reader", as_user("root", Call::RoleDelete("reader")));
    s.add("root deletes a missing role", as_user("root", Call::RoleDelete("reader")));
    s.add("etcdctl auth disable as alice (denied)", Call::Etcdctl(ctl(&["--user=alice:a-pass2", "auth", "disable"])));
    s.add("etcdctl auth disable as root", Call::Etcdctl(ctl(&["--user=root:r-pass", "auth", "disable"])));
    s.add("etcdctl auth enable again as root", Call::Etcdctl(ctl(&["auth", "enable"])));
    s.add("authenticate root again", Call::Authenticate("root", "r-pass"));
    s.add("root disables auth", as_user("root", Call::AuthDisable));
    s.add("auth status after", Call::AuthStatus).exclude("AuthStatus is etcd 3.5's; etcd 3.4 answers Unimplemented");
    s.add("put without a token again", Call::Put(put("a/2", "x")));
    s.add("user delete alice", Call::UserDelete("alice"));
    s.add("user delete root", Call::UserDelete("root"));
    s.add("user list at the end", Call::UserList);
    s.add("role list at the end", Call::RoleList);
}

fn maintenance_after(s: &mut Script) {
    let st = s.add("status at the end", Call::Status);
    status_rules(st);
    // etcd 3.4 sends no header with an Alarm answer; cairn sends etcd 3.5's (README, "Compatibility notes").
    s.add("alarm list", Call::Alarms).rule(Rule::Skip("ok.header"));
    s.add("defragment", Call::Defragment);
    s.add("reads after defragment", Call::Range(prefix("s/")));
    s.add(
        "the last revision",
        Call::Range(pb::RangeRequest { key: vec![0], range_end: vec![0], count_only: true, ..Default::default() }),
    );
}

// ---------------------------------------------------------------------------------------------
// The run

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cairn_answers_as_etcd_does() {
    let started = Instant::now();
    let skip3 = std::env::var_os("DIFFERENTIAL_SKIP_3").is_some();
    let dump = std::env::var_os("DIFFERENTIAL_DUMP").is_some();
    // The same timing on both sides: the minimum lease TTL (1.5 election timeouts, whole
    // seconds) and the progress notification interval show up in answers.
    let progress = "--experimental-watch-progress-notify-interval=1s";
    let etcd_flags = ["--election-timeout=500", "--heartbeat-interval=50", progress];
    let cairn_flags = [progress];
    let (etcd, one, three) = tokio::join!(Etcd::start(&etcd_flags), start(1, &cairn_flags), async {
        if skip3 {
            None
        } else {
            Some(start(3, &cairn_flags).await)
        }
    });
    let mut targets =
        vec![Target::connect("etcd", &etcd.url).await, Target::connect("cairn-1", &one.endpoints()[0]).await];
    if let Some(three) = &three {
        let leader = three.wait_leader(Duration::from_secs(10)).await.expect("leader");
        let follower = (leader + 1) % 3;
        targets.push(Target::connect("cairn-3 (follower)", &three.endpoints()[follower]).await);
    }
    eprintln!("targets up in {:?}", started.elapsed());

    let script = script();
    let mut memo = Memo::default();
    let mut report = Vec::new();
    let mut excluded = 0;
    for (i, step) in script.steps.iter().enumerate() {
        let call = (step.make)(&memo);
        let answers = futures::future::join_all(targets.iter_mut().map(|t| t.run(&call))).await;
        let mut answers: Vec<Value> = answers
            .into_iter()
            .map(|mut a| {
                normalize(&mut a);
                a
            })
            .collect();
        if dump {
            match step.excluded {
                Some(why) => eprintln!("--- step {i}: {} (not compared: {why})", step.name),
                None => eprintln!("--- step {i}: {}", step.name),
            }
            for (t, a) in targets.iter().zip(&answers) {
                eprintln!("  {:<20} {a}", t.name);
            }
        }
        // Every step has an answer from etcd; one that waited in vain is a broken script, which
        // would otherwise compare equal to the same wait elsewhere.
        let etcd_answer = answers[0].to_string();
        if ["\"timeout\"", "step timed out", "no such", "stream ended"].iter().any(|s| etcd_answer.contains(s)) {
            report
                .push(format!("step {i} \"{}\": etcd did not answer as the script expects: {etcd_answer}", step.name));
        }
        if let Some(m) = step.memo {
            memo.0.insert(m, answers[0].clone());
        }
        if step.excluded.is_some() {
            excluded += 1;
            continue;
        }
        let (first, rest) = answers.split_first_mut().expect("etcd's answer");
        for (t, a) in targets[1..].iter().zip(rest.iter_mut()) {
            let mut e = first.clone();
            apply_rules(&step.rules, &mut e, a);
            let mut lines = Vec::new();
            diff("", &e, a, &mut lines);
            if !lines.is_empty() {
                report.push(format!(
                    "step {i} \"{}\" on {}:\n    {}\n    etcd: {e}\n    here: {a}",
                    step.name,
                    t.name,
                    lines.join("\n    ")
                ));
            }
        }
    }
    eprintln!(
        "{} steps ({} compared) against {} targets in {:?}",
        script.steps.len(),
        script.steps.len() - excluded,
        targets.len(),
        started.elapsed()
    );
    assert!(report.is_empty(), "{} differences from etcd:\n{}", report.len(), report.join("\n"));
}
