//! `etcdctl` (Debian's etcd-client 3.4, unchanged) against a cairn cluster: KV, txn, endpoint
//! and member commands.

mod common;

use std::time::Duration;

use common::*;

fn ok(o: &std::process::Output) -> String {
    assert!(o.status.success(), "etcdctl failed: {}{}", stdout(o), stderr(o));
    stdout(o)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_kv_and_endpoints() {
    let tc = start(3, &[]).await;
    let eps = tc.endpoints();
    assert_eq!(ok(&etcdctl(&eps, &["put", "greeting", "hello"])).trim(), "OK");
    assert_eq!(ok(&etcdctl(&eps[1..2], &["get", "greeting"])), "greeting\nhello\n");
    assert_eq!(ok(&etcdctl(&eps[2..3], &["get", "greeting", "--print-value-only", "--consistency=s"])), "hello\n");
    for i in 0..5 {
        ok(&etcdctl(&eps, &["put", &format!("dir/{i}"), &i.to_string()]));
    }
    assert_eq!(ok(&etcdctl(&eps, &["get", "dir/", "--prefix", "--keys-only"])).split_whitespace().count(), 5);
    let json = ok(&etcdctl(&eps, &["get", "greeting", "-w", "json"]));
    assert!(json.contains("\"revision\":"), "{json}");
    assert_eq!(ok(&etcdctl(&eps, &["del", "dir/", "--prefix"])).trim(), "5");

    // Transactions from stdin, as in etcd's docs.
    let mut child = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", eps.join(",")))
        .arg("txn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"value(\"greeting\") = \"hello\"\n\nput greeting bye\n\nput greeting never\n\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(ok(&out), "SUCCESS\n\nOK\n");
    assert_eq!(ok(&etcdctl(&eps, &["get", "greeting", "--print-value-only"])), "bye\n");

    let st = ok(&etcdctl(&eps, &["endpoint", "status", "-w", "table"]));
    assert_eq!(st.matches("3.5.0").count(), 3, "{st}");
    assert_eq!(st.matches(" true ").count(), 1, "exactly one leader: {st}");
    // etcdctl prints health to stderr.
    let health = etcdctl(&eps, &["endpoint", "health"]);
    assert!(health.status.success(), "{}", stderr(&health));
    assert_eq!(
        stderr(&health).matches("is healthy").count() + stdout(&health).matches("is healthy").count(),
        3,
        "{}",
        stderr(&health)
    );
    let hashes = ok(&etcdctl(&eps, &["endpoint", "hashkv", "-w", "json"]));
    let parsed: serde_json::Value = serde_json::from_str(&hashes).unwrap();
    let distinct: std::collections::BTreeSet<u64> =
        parsed.as_array().unwrap().iter().map(|e| e["HashKV"]["hash"].as_u64().unwrap()).collect();
    assert_eq!(parsed.as_array().unwrap().len(), 3);
    assert_eq!(distinct.len(), 1, "members agree on the data: {hashes}");

    let rev: i64 = json.split("\"revision\":").nth(1).unwrap().split(',').next().unwrap().parse().unwrap();
    assert!(ok(&etcdctl(&eps, &["compact", &rev.to_string()])).contains("compacted revision"));
    let e = etcdctl(&eps, &["get", "greeting", &format!("--rev={}", rev - 1)]);
    assert!(!e.status.success());
    assert!(stderr(&e).contains("required revision has been compacted"), "{}", stderr(&e));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_membership_add_promote_remove() {
    let mut tc = start(3, &[]).await;
    let eps = tc.endpoints();
    let list = ok(&etcdctl(&eps, &["member", "list"]));
    assert_eq!(list.lines().count(), 3, "{list}");
    assert_eq!(list.matches(", started, ").count(), 3, "{list}");

    // Add a learner, start it, promote it once it has caught up.
    let i = tc.new_member();
    let (name, peer) = (tc.members[i].name.clone(), tc.members[i].peer_url.clone());
    let added = ok(&etcdctl(&eps, &["member", "add", &name, &format!("--peer-urls={peer}"), "--learner"]));
    assert!(added.contains("added to cluster"), "{added}");
    let id = added.split("Member ").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    tc.start_member(i).unwrap();
    ok(&etcdctl(&eps, &["put", "after-add", "x"]));
    let mut promoted = false;
    for _ in 0..100 {
        let o = etcdctl(&eps, &["member", "promote", &id]);
        if o.status.success() {
            promoted = true;
            break;
        }
        assert!(
            stderr(&o).contains("can only promote a learner member which is in sync with leader"),
            "{}",
            stderr(&o)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(promoted, "learner never caught up:\n{}", tc.logs_tail(20));
    let e = etcdctl(&eps, &["member", "promote", &id]);
    assert!(stderr(&e).contains("can only promote a learner member"), "{}", stderr(&e));
    let list = ok(&etcdctl(&eps, &["member", "list"]));
    assert_eq!(list.lines().count(), 4, "{list}");
    assert_eq!(list.matches("false").count(), 4, "no learners left: {list}");
    // The new member serves reads of data written before it joined.
    let new_ep = vec![tc.members[i].client_url.clone()];
    let mut got = String::new();
    for _ in 0..50 {
        let o = etcdctl(&new_ep, &["get", "after-add", "--print-value-only"]);
        got = stdout(&o);
        if got == "x\n" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got, "x\n");

    // Remove a member: it stops itself, and the cluster carries on.
    let victim_id = list.lines().find(|l| l.contains(", m1,")).unwrap().split(',').next().unwrap().to_string();
    let removed = ok(&etcdctl(&eps, &["member", "remove", &victim_id]));
    assert!(removed.contains("removed from cluster"), "{removed}");
    // The removed member stops itself within a second or so: talk to the others from now on
    // (a request that lands on it while it exits gets "transport is closing", as with etcd).
    let rest: Vec<String> = tc.endpoints()[1..].to_vec();
    let e = etcdctl(&rest, &["member", "remove", &victim_id]);
    assert!(stderr(&e).contains("member not found"), "{}", stderr(&e));
    let e = etcdctl(&rest, &["member", "remove", "123456789abcdef"]);
    assert!(stderr(&e).contains("member not found"), "{}", stderr(&e));
    let e = etcdctl(&rest, &["member", "add", "dup", &format!("--peer-urls={peer}")]);
    assert!(stderr(&e).contains("Peer URLs already exists"), "{}", stderr(&e));
    let e = etcdctl(&rest, &["member", "add", "bad", "--peer-urls=not-a-url"]);
    assert!(!e.status.success());
    assert_eq!(ok(&etcdctl(&rest, &["member", "list"])).lines().count(), 3);
    ok(&etcdctl(&rest, &["put", "after-remove", "y"]));
    assert_eq!(ok(&etcdctl(&rest, &["get", "after-remove", "--print-value-only"])), "y\n");
}
