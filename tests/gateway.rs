//! etcd's HTTP/JSON gateway on a real 3-member cluster, driven the way its users drive it: curl
//! with the recipes of etcd's documentation, and python-etcd3gw (Debian's `python3-etcd3gw`)
//! unchanged. Every call goes to every member in turn, so followers forward through it too.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// POSTs `body` to `url + path` with curl (and `Authorization: token` if given); returns the
/// HTTP status and the JSON body.
fn post(url: &str, path: &str, body: &Value, token: Option<&str>) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-X", "POST", "--max-time", "20", "-w", "\n%{http_code}"])
        .arg(format!("{url}{path}"))
        .arg("-d")
        .arg(body.to_string());
    if let Some(t) = token {
        cmd.arg("-H").arg(format!("Authorization: {t}"));
    }
    let out = cmd.output().expect("curl is installed (scripts/test installs it)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or_else(|| panic!("curl {path}: {text} {}", stderr(&out)));
    let code: u16 = code.trim().parse().unwrap_or_else(|_| panic!("curl {path}: {text}"));
    let v = serde_json::from_str(body).unwrap_or_else(|e| panic!("{path} answered non-JSON ({e}): {body}"));
    (code, v)
}

/// POSTs and expects 200.
fn ok(url: &str, path: &str, body: Value) -> Value {
    let (code, v) = post(url, path, &body, None);
    assert_eq!(code, 200, "{path} {body}: {v}");
    v
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A 64-bit integer field, which the gateway writes as a string.
fn int(v: &Value) -> i64 {
    v.as_str().unwrap_or_else(|| panic!("not a string-encoded integer: {v}")).parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_recipes_work_through_every_member() {
    let tc = start(3, &[]).await;
    let eps = tc.endpoints();

    for (i, url) in eps.iter().enumerate() {
        let key = b64(&format!("foo{i}"));
        // /version, as etcd answers it.
        let out = Command::new("curl").args(["-sS", &format!("{url}/version")]).output().unwrap();
        assert_eq!(stdout(&out), r#"{"etcdserver":"3.5.0","etcdcluster":"3.5.0"}"#);

        // KV: put, range, the fields and their encodings.
        let put = ok(url, "/v3/kv/put", json!({"key": key, "value": b64("bar")}));
        let rev = int(&put["header"]["revision"]);
        assert!(put["header"]["cluster_id"].is_string() && put["header"]["member_id"].is_string(), "{put}");
        let got = ok(url, "/v3/kv/range", json!({"key": key}));
        assert_eq!(got["count"], "1", "{got}");
        let kv = &got["kvs"][0];
        assert_eq!((kv["key"].as_str(), kv["value"].as_str()), (Some(key.as_str()), Some(b64("bar").as_str())));
        assert_eq!((int(&kv["create_revision"]), int(&kv["mod_revision"]), int(&kv["version"])), (rev, rev, 1));
        assert!(kv.get("lease").is_none(), "default values are left out: {kv}");
        // A prefix range with etcd's enum names and a limit.
        ok(url, "/v3/kv/put", json!({"key": b64(&format!("foo{i}/x")), "value": b64("1")}));
        let r = ok(
            url,
            "/v3/kv/range",
            json!({"key": key, "range_end": b64(&format!("foo{i}0")), "sort_order": "DESCEND", "limit": "1"}),
        );
        assert_eq!((r["count"].as_str(), r["more"].as_bool()), (Some("2"), Some(true)), "{r}");
        assert_eq!(r["kvs"][0]["key"], b64(&format!("foo{i}/x")));

        // Txn: compare, both branches, the nested responses.
        let t = ok(
            url,
            "/v3/kv/txn",
            json!({
                "compare": [{"key": key, "result": "EQUAL", "target": "VALUE", "value": b64("bar")}],
                "success": [{"request_put": {"key": key, "value": b64("baz")}}, {"request_range": {"key": key}}],
                "failure": [{"request_range": {"key": key}}]
            }),
        );
        assert_eq!(t["succeeded"], true, "{t}");
        assert!(t["responses"][0]["response_put"]["header"]["revision"].is_string(), "{t}");
        assert_eq!(t["responses"][1]["response_range"]["kvs"][0]["value"], b64("baz"), "{t}");
        let t = ok(
            url,
            "/v3/kv/txn",
            json!({"compare": [{"key": key, "target": "VERSION", "result": "LESS", "version": "1"}],
                   "failure": [{"request_range": {"key": key}}]}),
        );
        assert!(t.get("succeeded").is_none(), "false is left out: {t}");

        // DeleteRange with prev_kv.
        let d = ok(url, "/v3/kv/deleterange", json!({"key": key, "prev_kv": true}));
        assert_eq!((d["deleted"].as_str(), d["prev_kvs"][0]["value"].as_str()), (Some("1"), Some(b64("baz").as_str())));

        // Errors: etcd's message and code, grpc-gateway's body and HTTP status.
        let (code, e) = post(url, "/v3/kv/put", &json!({"value": b64("x")}), None);
        assert_eq!(code, 400);
        assert_eq!(
            e,
            json!({"error": "etcdserver: key is not provided", "message": "etcdserver: key is not provided", "code": 3})
        );
        let (code, e) = post(url, "/v3/kv/range", &json!({"key": key, "revision": "999999"}), None);
        assert_eq!((code, e["code"].as_i64()), (400, Some(11)), "{e}");
        assert_eq!(e["error"], "etcdserver: mvcc: required revision is a future revision");
        let (code, e) = post(url, "/v3/lease/revoke", &json!({"ID": "12345"}), None);
        assert_eq!((code, e["error"].as_str()), (404, Some("etcdserver: requested lease not found")), "{e}");

        // Maintenance and cluster.
        let st = ok(url, "/v3/maintenance/status", json!({}));
        for f in ["version", "dbSize", "leader", "raftIndex", "raftTerm", "raftAppliedIndex", "dbSizeInUse"] {
            assert!(st.get(f).is_some(), "status without {f}: {st}");
        }
        let members = ok(url, "/v3/cluster/member/list", json!({}));
        let members = members["members"].as_array().expect("members");
        assert_eq!(members.len(), 3);
        assert!(members.iter().all(|m| m["ID"].is_string() && m["peerURLs"].is_array() && m["clientURLs"].is_array()));
        let h = ok(url, "/v3/maintenance/hashkv", json!({}));
        assert!(h["hash"].is_number(), "uint32 is a JSON number: {h}");
        ok(url, "/v3/maintenance/alarm", json!({"action": "GET"}));

        // Leases: grant, attach, time to live with keys, keep alive (a stream), list, revoke.
        let g = ok(url, "/v3/lease/grant", json!({"TTL": 60}));
        let id = g["ID"].as_str().unwrap().to_string();
        assert_eq!(g["TTL"], "60");
        ok(url, "/v3/kv/put", json!({"key": b64("leased"), "value": b64("v"), "lease": id}));
        let ttl = ok(url, "/v3/kv/lease/timetolive", json!({"ID": id, "keys": true}));
        assert_eq!((ttl["grantedTTL"].as_str(), ttl["keys"][0].as_str()), (Some("60"), Some(b64("leased").as_str())));
        let ka = ok(url, "/v3/lease/keepalive", json!({"ID": id}));
        assert_eq!((ka["result"]["ID"].as_str(), ka["result"]["TTL"].as_str()), (Some(id.as_str()), Some("60")));
        let all = ok(url, "/v3/lease/leases", json!({}));
        assert!(all["leases"].as_array().unwrap().iter().any(|l| l["ID"] == id.as_str()), "{all}");
        ok(url, "/v3/lease/revoke", json!({"ID": id}));
        assert!(ok(url, "/v3/kv/range", json!({"key": b64("leased")})).get("kvs").is_none());

        // Lock and election.
        let g = ok(url, "/v3/lease/grant", json!({"TTL": 60}));
        let lease = g["ID"].as_str().unwrap().to_string();
        let l = ok(url, "/v3/lock/lock", json!({"name": b64("mylock"), "lease": lease}));
        let lock_key = l["key"].as_str().expect("lock key").to_string();
        ok(url, "/v3/lock/unlock", json!({"key": lock_key}));
        let c =
            ok(url, "/v3/election/campaign", json!({"name": b64("myelection"), "lease": lease, "value": b64("me")}));
        let leader_key = c["leader"].clone();
        let who = ok(url, "/v3/election/leader", json!({"name": b64("myelection")}));
        assert_eq!(who["kv"]["value"], b64("me"), "{who}");
        ok(url, "/v3/election/proclaim", json!({"leader": leader_key, "value": b64("still me")}));
        ok(url, "/v3/election/resign", json!({"leader": leader_key}));
        ok(url, "/v3/lease/revoke", json!({"ID": lease}));
    }
}

/// A watch over the gateway is a stream of JSON lines: the created response, then events as
/// they happen, while the connection stays open after the request body ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_json_lines_while_the_connection_is_open() {
    let tc = start(3, &[]).await;
    let eps = tc.endpoints();
    let (watch_at, write_at) = (&eps[1], &eps[2]);
    let mut child = Command::new("curl")
        .args(["-sS", "-N", "-X", "POST", &format!("{watch_at}/v3/watch"), "-d"])
        .arg(json!({"create_request": {"key": b64("w/"), "range_end": b64("w0"), "prev_kv": true}}).to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let next = || -> Value {
        let line = rx.recv_timeout(Duration::from_secs(10)).expect("a watch response line");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    };
    let created = next();
    assert_eq!(created["result"]["created"], true, "{created}");
    ok(write_at, "/v3/kv/put", json!({"key": b64("w/1"), "value": b64("a")}));
    ok(write_at, "/v3/kv/put", json!({"key": b64("w/1"), "value": b64("b")}));
    ok(write_at, "/v3/kv/deleterange", json!({"key": b64("w/1")}));
    let mut events = Vec::new();
    while events.len() < 3 {
        let r = next();
        events.extend(r["result"]["events"].as_array().cloned().unwrap_or_default());
    }
    assert!(events[0].get("type").is_none(), "PUT is the default and left out: {}", events[0]);
    assert_eq!(events[1]["prev_kv"]["value"], b64("a"));
    assert_eq!(
        (events[2]["type"].as_str(), events[2]["kv"]["key"].as_str()),
        (Some("DELETE"), Some(b64("w/1").as_str()))
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// Auth through the gateway: a token from `/v3/auth/authenticate` in the `Authorization`
/// header, etcd's errors without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_uses_the_authorization_header() {
    let tc = start(3, &[]).await;
    let url = &tc.endpoints()[1];
    ok(url, "/v3/auth/user/add", json!({"name": "root", "password": "rootpw"}));
    ok(url, "/v3/auth/user/grant", json!({"user": "root", "role": "root"}));
    ok(url, "/v3/auth/user/add", json!({"name": "alice", "password": "alicepw"}));
    ok(url, "/v3/auth/role/add", json!({"name": "app"}));
    ok(
        url,
        "/v3/auth/role/grant",
        json!({"name": "app", "perm": {"permType": "READWRITE", "key": b64("app/"), "range_end": b64("app0")}}),
    );
    ok(url, "/v3/auth/user/grant", json!({"user": "alice", "role": "app"}));
    ok(url, "/v3/auth/enable", json!({}));

    let (code, e) = post(url, "/v3/kv/put", &json!({"key": b64("app/x"), "value": b64("1")}), None);
    assert_eq!((code, e["error"].as_str()), (400, Some("etcdserver: user name is empty")), "{e}");
    let (code, e) = post(url, "/v3/auth/authenticate", &json!({"name": "alice", "password": "wrong"}), None);
    assert_eq!(
        (code, e["error"].as_str()),
        (400, Some("etcdserver: authentication failed, invalid user ID or password"))
    );
    let a = ok(url, "/v3/auth/authenticate", json!({"name": "alice", "password": "alicepw"}));
    let token = a["token"].as_str().expect("token").to_string();
    let (code, v) = post(url, "/v3/kv/put", &json!({"key": b64("app/x"), "value": b64("1")}), Some(&token));
    assert_eq!(code, 200, "{v}");
    let (code, e) = post(url, "/v3/kv/put", &json!({"key": b64("other"), "value": b64("1")}), Some(&token));
    assert_eq!((code, e["error"].as_str()), (403, Some("etcdserver: permission denied")), "{e}");
    let (code, e) = post(url, "/v3/kv/range", &json!({"key": b64("app/x")}), Some("not-a-token"));
    assert_eq!((code, e["error"].as_str()), (401, Some("etcdserver: invalid auth token")), "{e}");
    let root = ok(url, "/v3/auth/authenticate", json!({"name": "root", "password": "rootpw"}));
    let (code, v) = post(url, "/v3/auth/disable", &json!({}), root["token"].as_str());
    assert_eq!(code, 200, "{v}");
}

/// python-etcd3gw, unchanged: KV, transactions, leases, watches and locks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_etcd3gw_works_unchanged() {
    let tc = start(3, &[]).await;
    for (i, url) in tc.endpoints().into_iter().enumerate() {
        let hostport = url.trim_start_matches("http://");
        let (host, port) = hostport.rsplit_once(':').unwrap();
        let out = Command::new("/usr/bin/python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scripts/etcd3gw_check.py"))
            .args([host, port, &format!("gw{i}")])
            .output()
            .expect("Debian's python3 with python3-etcd3gw (scripts/test installs it)");
        assert!(out.status.success(), "etcd3gw against {url}:\n{}\n{}", stdout(&out), stderr(&out));
        assert_eq!(stdout(&out).trim(), "ok");
    }
}
