//! etcd's Auth service on a real cluster: users, roles and key-range permissions managed with
//! `etcdctl user|role|auth` and the `etcd-client` crate, enforced on KV, Watch, Lease, Lock,
//! Election, Cluster and Maintenance calls, with etcd's errors for a missing token, a wrong
//! password, a missing permission, an expired token and the token of a deleted user — and in
//! every refused case nothing is stored.

mod common;

use std::time::Duration;

use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::kv_client::KvClient;
use common::*;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, LeaseTimeToLiveOptions, LockOptions, Permission,
    PutOptions, Txn, TxnOp, WatchOptions,
};

const DENIED: (tonic::Code, &str) = (tonic::Code::PermissionDenied, "etcdserver: permission denied");
const BAD_TOKEN: (tonic::Code, &str) = (tonic::Code::Unauthenticated, "etcdserver: invalid auth token");
const NO_USER: (tonic::Code, &str) = (tonic::Code::InvalidArgument, "etcdserver: user name is empty");

fn code_msg(e: &etcd_client::Error) -> (tonic::Code, String) {
    let s = status(e).unwrap_or_else(|| panic!("not a gRPC status: {e:?}"));
    (s.code(), s.message().to_string())
}

#[track_caller]
fn assert_err<T: std::fmt::Debug>(r: Result<T, etcd_client::Error>, want: (tonic::Code, &str)) {
    let e = r.expect_err("expected a refusal");
    assert_eq!(code_msg(&e), (want.0, want.1.to_string()));
}

async fn user_client(eps: &[String], user: &str, password: &str) -> Client {
    let opts = ConnectOptions::new()
        .with_user(user, password)
        .with_timeout(Duration::from_secs(5))
        .with_connect_timeout(Duration::from_secs(1));
    Client::connect(eps, Some(opts)).await.expect("connect and authenticate")
}

/// A raw KV client that sends `token` as etcd clients do (metadata `token`), or none.
async fn raw_get(ep: &str, token: Option<&str>, key: &str) -> Result<pb::RangeResponse, tonic::Status> {
    let mut kv = KvClient::connect(ep.to_string()).await.expect("connect");
    let mut req = tonic::Request::new(pb::RangeRequest { key: key.into(), ..Default::default() });
    if let Some(t) = token {
        req.metadata_mut().insert("token", t.parse().unwrap());
    }
    kv.range(req).await.map(|r| r.into_inner())
}

async fn raw_put(ep: &str, token: &str, key: &str) -> Result<pb::PutResponse, tonic::Status> {
    let mut kv = KvClient::connect(ep.to_string()).await.expect("connect");
    let mut req = tonic::Request::new(pb::PutRequest { key: key.into(), value: b"v".to_vec(), ..Default::default() });
    req.metadata_mut().insert("token", token.parse().unwrap());
    kv.put(req).await.map(|r| r.into_inner())
}

/// root (root role), alice (read-write on `app/`, read on `cfg`), then auth enabled; all through
/// a follower, so every change is forwarded to the leader.
async fn set_up(cli: &mut Client) {
    cli.user_add("root", "rootpw", None).await.unwrap();
    cli.user_grant_role("root", "root").await.unwrap();
    cli.user_add("alice", "alicepw", None).await.unwrap();
    cli.role_add("app").await.unwrap();
    cli.role_grant_permission("app", Permission::read_write("app/").with_prefix()).await.unwrap();
    cli.role_grant_permission("app", Permission::read("cfg")).await.unwrap();
    cli.user_grant_role("alice", "app").await.unwrap();
    cli.auth_enable().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_manages_users_roles_and_auth() {
    let tc = start(3, &[]).await;
    let leader = tc.wait_leader(Duration::from_secs(10)).await.unwrap();
    let eps = tc.endpoints();
    let follower = std::slice::from_ref(&eps[(leader + 1) % 3]);
    let ok = |args: &[&str]| {
        let o = etcdctl(follower, args);
        assert!(o.status.success(), "etcdctl {args:?}: {}", stderr(&o));
        stdout(&o)
    };
    let refused = |args: &[&str], want: &str| {
        let o = etcdctl(follower, args);
        assert!(!o.status.success(), "etcdctl {args:?} succeeded: {}", stdout(&o));
        assert!(stderr(&o).contains(want), "etcdctl {args:?}: wanted {want:?}, got {}", stderr(&o));
    };
    assert!(ok(&["user", "add", "root:rootpw"]).contains("User root created"));
    ok(&["user", "add", "alice:alicepw"]);
    ok(&["role", "add", "app"]);
    ok(&["role", "grant-permission", "app", "readwrite", "app/", "--prefix"]);
    ok(&["role", "grant-permission", "app", "read", "cfg"]);
    ok(&["user", "grant-role", "alice", "app"]);
    refused(&["user", "add", "alice:x"], "etcdserver: user name already exists");
    refused(&["user", "grant-role", "alice", "nope"], "etcdserver: role name not found");
    // etcdctl creates the root role and grants it to root when enabling.
    assert!(ok(&["auth", "enable"]).contains("Authentication Enabled"));

    let root = ["--user", "root:rootpw"];
    let alice = ["--user", "alice:alicepw"];
    let with = |who: &[&str], args: &[&str]| -> Vec<String> {
        who.iter().chain(args).map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| etcdctl(follower, &args.iter().map(String::as_str).collect::<Vec<_>>());

    refused(&["put", "k", "v"], "etcdserver: user name is empty");
    refused(&["--user", "alice:wrong", "get", "cfg"], "etcdserver: authentication failed, invalid user ID or password");
    refused(&["--user", "nobody:pw", "get", "cfg"], "etcdserver: authentication failed, invalid user ID or password");
    assert!(run(with(&root, &["put", "cfg", "c1"])).status.success());
    let o = run(with(&alice, &["put", "app/a", "1"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&run(with(&alice, &["get", "cfg", "--print-value-only"]))).trim(), "c1");
    assert_eq!(stdout(&run(with(&alice, &["get", "app/a", "--print-value-only"]))).trim(), "1");
    for args in [
        vec!["put", "cfg", "c2"],
        vec!["put", "other", "x"],
        vec!["get", "app/", "--from-key"],
        vec!["del", "cfg"],
        vec!["user", "list"],
        vec!["role", "add", "r2"],
        vec!["auth", "disable"],
    ] {
        let o = run(with(&alice, &args));
        assert!(
            !o.status.success() && stderr(&o).contains("etcdserver: permission denied"),
            "alice {args:?}: {}",
            stderr(&o)
        );
    }
    // Nothing alice was refused took effect.
    assert_eq!(stdout(&run(with(&root, &["get", "cfg", "--print-value-only"]))).trim(), "c1");
    assert!(stdout(&run(with(&root, &["get", "other"]))).is_empty());
    let users = stdout(&run(with(&root, &["user", "list"])));
    assert_eq!(users.split_whitespace().collect::<Vec<_>>(), ["alice", "root"]);
    let role = stdout(&run(with(&root, &["role", "get", "app"])));
    assert!(role.contains("[app/, app0) (prefix app/)") && role.contains("cfg"), "{role}");
    assert!(stdout(&run(with(&alice, &["user", "get", "alice"]))).contains("Roles: app"));

    // Revoking the permission takes effect at once; a new password ends the old one.
    assert!(run(with(&root, &["role", "revoke-permission", "app", "cfg"])).status.success());
    let o = run(with(&alice, &["get", "cfg"]));
    assert!(stderr(&o).contains("etcdserver: permission denied"), "{}", stderr(&o));

    // Root cannot be deleted while auth is on; disabling opens everything again.
    let o = run(with(&root, &["user", "delete", "root"]));
    assert!(stderr(&o).contains("etcdserver: invalid auth management"), "{}", stderr(&o));
    assert!(run(with(&root, &["auth", "disable"])).status.success());
    ok(&["put", "other", "x"]);
    assert_eq!(stdout(&etcdctl(&eps, &["get", "other", "--print-value-only"])).trim(), "x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_are_enforced_on_every_api() {
    let tc = start(3, &[]).await;
    let leader = tc.wait_leader(Duration::from_secs(10)).await.unwrap();
    let eps = tc.endpoints();
    let follower = vec![eps[(leader + 1) % 3].clone()];
    set_up(&mut client(&follower).await).await;
    let mut root = user_client(&follower, "root", "rootpw").await;
    let mut alice = user_client(&follower, "alice", "alicepw").await;

    // KV.
    alice.put("app/x", "1", None).await.unwrap();
    assert_eq!(alice.get("app/x", None).await.unwrap().kvs()[0].value(), b"1");
    assert_err(alice.put("secret/x", "1", None).await, DENIED);
    assert_err(alice.put("cfg", "1", None).await, DENIED);
    assert_err(alice.get("app/", Some(GetOptions::new().with_from_key())).await, DENIED);
    assert_err(alice.delete("cfg", None).await, DENIED);
    let prev = alice.put("app/x", "2", Some(PutOptions::new().with_prev_key())).await.unwrap();
    assert_eq!(prev.prev_key().unwrap().value(), b"1");
    let t =
        Txn::new().when([Compare::value("secret/x", CompareOp::Equal, "1")]).and_then([TxnOp::put("app/y", "1", None)]);
    assert_err(alice.txn(t).await, DENIED);
    let t = Txn::new()
        .when([Compare::version("app/x", CompareOp::Greater, 0)])
        .and_then([TxnOp::put("app/y", "1", None), TxnOp::txn(Txn::new().and_then([TxnOp::delete("secret/z", None)]))]);
    assert_err(alice.txn(t).await, DENIED); // a nested op outside the grant
    let t =
        Txn::new().when([Compare::version("app/x", CompareOp::Greater, 0)]).and_then([TxnOp::put("app/y", "1", None)]);
    assert!(alice.txn(t).await.unwrap().succeeded());

    // Watch: a watcher outside the grant is canceled with etcd's reason; inside, events flow.
    let mut w = alice.watch("secret/", Some(WatchOptions::new().with_prefix())).await.unwrap();
    let r = w.message().await.unwrap().unwrap();
    assert!(r.canceled() && r.created(), "{r:?}");
    assert_eq!(r.cancel_reason(), "rpc error: code = PermissionDenied desc = etcdserver: permission denied");
    let mut w = alice.watch("app/", Some(WatchOptions::new().with_prefix())).await.unwrap();
    assert!(!w.message().await.unwrap().unwrap().canceled());
    root.put("app/w", "1", None).await.unwrap();
    let r = w.message().await.unwrap().unwrap();
    assert_eq!(r.events()[0].kv().unwrap().key(), b"app/w");

    // Lease: granting needs only a valid token; revoking needs write on every attached key,
    // listing them needs read.
    let mine = alice.lease_grant(60, None).await.unwrap().id();
    alice.put("app/l", "1", Some(PutOptions::new().with_lease(mine))).await.unwrap();
    let roots = root.lease_grant(60, None).await.unwrap().id();
    root.put("secret/l", "1", Some(PutOptions::new().with_lease(roots))).await.unwrap();
    assert_err(alice.lease_revoke(roots).await, DENIED);
    // Attaching a key to a lease touches the lease's other keys (etcd's rule, checked at apply).
    assert_err(alice.put("app/z", "1", Some(PutOptions::new().with_lease(roots))).await, DENIED);
    assert!(alice.get("app/z", None).await.unwrap().kvs().is_empty());
    assert_err(alice.lease_time_to_live(roots, Some(LeaseTimeToLiveOptions::new().with_keys())).await, DENIED);
    assert_eq!(root.get("secret/l", None).await.unwrap().kvs().len(), 1, "a refused revoke deleted keys");
    alice.lease_revoke(mine).await.unwrap();
    assert!(alice.get("app/l", None).await.unwrap().kvs().is_empty());

    // Lock and Election: keys under `name/`.
    let l = alice.lease_grant(60, None).await.unwrap().id();
    let held = alice.lock("app/lk", Some(LockOptions::new().with_lease(l))).await.unwrap();
    alice.unlock(held.key()).await.unwrap();
    assert_err(alice.lock("secret/lk", Some(LockOptions::new().with_lease(l))).await, DENIED);
    alice.campaign("app/el", "me", l).await.unwrap();
    assert_eq!(alice.leader("app/el").await.unwrap().kv().unwrap().value(), b"me");
    assert_err(alice.campaign("secret/el", "me", l).await, DENIED);
    assert_err(alice.leader("secret/el").await, DENIED);
    assert!(root.get("secret/", Some(GetOptions::new().with_prefix())).await.unwrap().kvs().len() == 1);

    // Cluster and Maintenance: changes need the root role; reading status does not.
    assert_err(alice.member_add(["http://127.0.0.1:1"], None).await, DENIED);
    assert_eq!(alice.member_list().await.unwrap().members().len(), 3);
    assert_err(alice.defragment().await, DENIED);
    assert_err(alice.hash_kv(0).await, DENIED);
    alice.status().await.unwrap();
    root.hash_kv(0).await.unwrap();
    assert_err(alice.user_add("eve", "pw", None).await, DENIED);
    assert_err(alice.auth_disable().await, DENIED);

    // Without a token, with a made-up one.
    assert_err(client(&follower).await.get("app/x", None).await, NO_USER);
    let e = raw_get(&follower[0], Some("not-a-token"), "app/x").await.unwrap_err();
    assert_eq!((e.code(), e.message()), BAD_TOKEN);
}

/// A token dies with its user, with its user's password, and at its TTL; every member honours
/// a token another member issued; auth survives a whole-cluster restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_deleted_users_expired_tokens_and_restarts() {
    let mut tc = start(3, &["--auth-token-ttl", "3"]).await;
    let eps = tc.endpoints();
    set_up(&mut client(&eps).await).await;
    let mut root = user_client(&eps, "root", "rootpw").await;
    root.user_add("bob", "bobpw", None).await.unwrap();
    root.user_grant_role("bob", "app").await.unwrap();

    let token = |ep: String, user: &'static str, pw: &'static str| async move {
        let mut a = client(&[ep]).await.auth_client();
        a.authenticate(user.into(), pw.into()).await.unwrap().token().to_string()
    };
    // A member checks a token against the auth store it has applied. One that has not applied
    // a change yet lets the request through that check and refuses it after its read barrier
    // with "revision of auth store is old" (etcd's answer for that race; clients authenticate
    // again). A linearizable read through the member first makes it apply what was committed,
    // so the checks below see the member's answer to the token itself.
    let caught_up = |ep: String| async move {
        let t = token(ep.clone(), "root", "rootpw").await;
        raw_get(&ep, Some(&t), "app/x").await.unwrap();
    };
    // Issued by member 0, honoured by member 2.
    let bob = token(eps[0].clone(), "bob", "bobpw").await;
    raw_put(&eps[2], &bob, "app/bob").await.unwrap();
    root.user_delete("bob").await.unwrap();
    for ep in &eps {
        caught_up(ep.clone()).await;
        let e = raw_put(ep, &bob, "app/bob2").await.unwrap_err();
        assert_eq!((e.code(), e.message()), BAD_TOKEN, "{ep}");
    }
    // Even a new user of the same name cannot use the old token.
    root.user_add("bob", "other", None).await.unwrap();
    root.user_grant_role("bob", "app").await.unwrap();
    caught_up(eps[1].clone()).await;
    let e = raw_put(&eps[1], &bob, "app/bob2").await.unwrap_err();
    assert_eq!((e.code(), e.message()), BAD_TOKEN);

    let alice = token(eps[1].clone(), "alice", "alicepw").await;
    raw_get(&eps[1], Some(&alice), "app/x").await.unwrap();
    root.user_change_password("alice", "newpw").await.unwrap();
    caught_up(eps[1].clone()).await;
    let e = raw_get(&eps[1], Some(&alice), "app/x").await.unwrap_err();
    assert_eq!((e.code(), e.message()), BAD_TOKEN);

    let alice = token(eps[2].clone(), "alice", "newpw").await;
    raw_get(&eps[0], Some(&alice), "app/x").await.unwrap();
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let e = raw_get(&eps[0], Some(&alice), "app/x").await.unwrap_err();
    assert_eq!((e.code(), e.message()), BAD_TOKEN, "an expired token");
    // root's client's token has expired too: a new client authenticates again.
    let mut root = user_client(&eps, "root", "rootpw").await;
    assert!(root.get("app/bob2", None).await.unwrap().kvs().is_empty(), "a refused write was stored");

    // Disabling and enabling again ends every token issued before.
    let alice = token(eps[0].clone(), "alice", "newpw").await;
    root.auth_disable().await.unwrap();
    client(&eps).await.auth_enable().await.unwrap();
    let e = raw_get(&eps[0], Some(&alice), "app/x").await.unwrap_err();
    assert_eq!((e.code(), e.message()), BAD_TOKEN, "a token from before the disable");

    for i in 0..3 {
        tc.kill(i);
    }
    for i in 0..3 {
        tc.restart(i).unwrap();
    }
    tc.wait_leader(Duration::from_secs(30)).await.unwrap();
    let mut alice = user_client(&eps, "alice", "newpw").await;
    alice.put("app/after", "1", None).await.unwrap();
    assert_err(alice.put("secret/after", "1", None).await, DENIED);
    assert_err(client(&eps).await.get("app/after", None).await, NO_USER);
}
