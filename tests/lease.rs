//! etcd's Lease API on a real cluster: grant, keep-alive, time-to-live, list, revoke, expiry,
//! attached keys, etcd's errors, `etcdctl lease`, and leases kept alive through a leader SIGKILL
//! and SIGSTOP and across a whole-cluster restart.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use etcd_client::{LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions};

fn code_and_message(e: &etcd_client::Error) -> (tonic::Code, String) {
    let s = status(e).unwrap_or_else(|| panic!("not a gRPC status: {e:?}"));
    (s.code(), s.message().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_attach_keep_alive_time_to_live_list_and_revoke() {
    let tc = start(3, &[]).await;
    let eps = tc.endpoints();
    let leader = tc.wait_leader(Duration::from_secs(10)).await.unwrap();
    // Through a follower: everything is forwarded to the leader.
    let mut cli = client(std::slice::from_ref(&eps[(leader + 1) % 3])).await;
    let g = cli.lease_grant(30, None).await.unwrap();
    assert_eq!(g.ttl(), 30);
    assert!(g.id() > 0);
    let id = g.id();
    cli.put("l/a", "1", Some(PutOptions::new().with_lease(id))).await.unwrap();
    cli.put("l/b", "1", Some(PutOptions::new().with_lease(id))).await.unwrap();
    assert_eq!(cli.get("l/a", None).await.unwrap().kvs()[0].lease(), id);

    let t = cli.lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys())).await.unwrap();
    assert_eq!(t.granted_ttl(), 30);
    assert!(t.ttl() > 25 && t.ttl() <= 30, "{}", t.ttl());
    assert_eq!(t.keys(), &[b"l/a".to_vec(), b"l/b".to_vec()]);
    assert!(cli.leases().await.unwrap().leases().iter().any(|l| l.id() == id));

    let (mut keeper, mut stream) = cli.lease_keep_alive(id).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let ka = stream.message().await.unwrap().unwrap();
    assert_eq!((ka.id(), ka.ttl()), (id, 30));

    cli.lease_revoke(id).await.unwrap();
    assert!(cli.get("l/", Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap().kvs().is_empty());
    // etcd: time-to-live of an unknown lease is TTL -1; keep-alive answers TTL 0.
    assert_eq!(cli.lease_time_to_live(id, None).await.unwrap().ttl(), -1);
    keeper.keep_alive().await.unwrap();
    assert_eq!(stream.message().await.unwrap().unwrap().ttl(), 0);
    let e = cli.lease_revoke(id).await.unwrap_err();
    assert_eq!(code_and_message(&e), (tonic::Code::NotFound, "etcdserver: requested lease not found".into()));
    let e = cli.put("l/c", "1", Some(PutOptions::new().with_lease(id))).await.unwrap_err();
    assert_eq!(code_and_message(&e), (tonic::Code::NotFound, "etcdserver: requested lease not found".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_errors_and_minimum_ttl_follow_etcd() {
    let tc = start(3, &[]).await;
    let mut cli = client(&tc.endpoints()).await;
    let g = cli.lease_grant(100, Some(LeaseGrantOptions::new().with_id(0x1234))).await.unwrap();
    assert_eq!(g.id(), 0x1234);
    let e = cli.lease_grant(100, Some(LeaseGrantOptions::new().with_id(0x1234))).await.unwrap_err();
    assert_eq!(code_and_message(&e), (tonic::Code::FailedPrecondition, "etcdserver: lease already exists".into()));
    let e = cli.lease_grant(9_000_000_001, None).await.unwrap_err();
    assert_eq!(code_and_message(&e), (tonic::Code::OutOfRange, "etcdserver: too large lease TTL".into()));
    // Below the minimum (1.5 election timeouts, rounded up to whole seconds): granted at it.
    assert_eq!(cli.lease_grant(0, None).await.unwrap().ttl(), 1);
    // The existing lease was not disturbed.
    assert_eq!(cli.lease_time_to_live(0x1234, None).await.unwrap().granted_ttl(), 100);
}

/// Without keep-alives a lease expires after its TTL; its keys go in one revision, seen by a
/// watcher as deletes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrenewed_lease_expires_and_its_keys_are_deleted() {
    let tc = start(3, &[]).await;
    let mut cli = client(&tc.endpoints()).await;
    let id = cli.lease_grant(2, None).await.unwrap().id();
    let granted = Instant::now();
    cli.put("e/1", "v", Some(PutOptions::new().with_lease(id))).await.unwrap();
    cli.put("e/2", "v", Some(PutOptions::new().with_lease(id))).await.unwrap();
    cli.put("e/kept", "v", None).await.unwrap();
    let mut w = cli.watch("e/", Some(etcd_client::WatchOptions::new().with_prefix())).await.unwrap();
    w.message().await.unwrap().unwrap(); // created
    let r = tokio::time::timeout(Duration::from_secs(10), w.message()).await.unwrap().unwrap().unwrap();
    let elapsed = granted.elapsed();
    assert!(elapsed >= Duration::from_millis(1900), "expired early: {elapsed:?}");
    let evs: Vec<(etcd_client::EventType, String, i64)> = r
        .events()
        .iter()
        .map(|e| (e.event_type(), e.kv().unwrap().key_str().unwrap().to_string(), e.kv().unwrap().mod_revision()))
        .collect();
    assert_eq!(evs.len(), 2, "{evs:?}");
    assert!(evs.iter().all(|e| e.0 == etcd_client::EventType::Delete && e.2 == evs[0].2), "one revision: {evs:?}");
    let left = cli.get("e/", Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(left.kvs().len(), 1);
    assert_eq!(cli.lease_time_to_live(id, None).await.unwrap().ttl(), -1);
}

/// Keeps `id` alive every `every` through any member, reconnecting as etcd clients do, until
/// stopped. Returns how many keep-alives succeeded.
fn keep_alive_loop(
    eps: Vec<String>,
    id: i64,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut ok = 0;
        let mut cur = 0;
        while !stop.load(Ordering::Relaxed) {
            let ep = eps[cur % eps.len()].clone();
            cur += 1;
            // A killed member refuses the connection: try the next one.
            let opts = etcd_client::ConnectOptions::new()
                .with_timeout(Duration::from_secs(2))
                .with_connect_timeout(Duration::from_secs(1));
            let Ok(mut cli) = etcd_client::Client::connect([ep], Some(opts)).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let Ok((mut keeper, mut stream)) = cli.lease_keep_alive(id).await else { continue };
            while !stop.load(Ordering::Relaxed) {
                if keeper.keep_alive().await.is_err() {
                    break;
                }
                match tokio::time::timeout(Duration::from_secs(2), stream.message()).await {
                    Ok(Ok(Some(r))) => {
                        assert!(r.ttl() > 0, "the lease was lost while kept alive");
                        ok += 1;
                    }
                    _ => break,
                }
                tokio::time::sleep(every).await;
            }
        }
        ok
    })
}

/// A lease kept alive never expires, whatever happens to the leader: SIGKILL, then SIGSTOP
/// beyond the election timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_alive_lease_survives_leader_kill_and_pause() {
    let mut tc = start(3, &[]).await;
    let eps = tc.endpoints();
    let mut cli = client(&eps).await;
    let ttl = 3;
    let id = cli.lease_grant(ttl, None).await.unwrap().id();
    cli.put("k/held", "v", Some(PutOptions::new().with_lease(id))).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let keeper = keep_alive_loop(eps.clone(), id, Duration::from_millis(500), stop.clone());
    let check = |cli: &mut etcd_client::Client| {
        let mut cli = cli.clone();
        async move {
            let r = cli.get("k/held", Some(etcd_client::GetOptions::new().with_serializable())).await;
            r.map(|r| r.kvs().len())
        }
    };
    let leader = tc.wait_leader(Duration::from_secs(10)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    tc.kill(leader);
    let others: Vec<String> = (0..3).filter(|i| *i != leader).map(|i| eps[i].clone()).collect();
    let mut survivors = client(&others).await;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Ok(n) = check(&mut survivors).await {
            assert_eq!(n, 1, "the key of a kept-alive lease disappeared after the leader was killed");
        }
    }
    tc.restart(leader).unwrap();
    let leader2 = tc.wait_leader(Duration::from_secs(10)).await.unwrap();
    tc.pause(leader2);
    tokio::time::sleep(Duration::from_secs(4)).await;
    tc.resume(leader2);
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Ok(n) = check(&mut cli).await {
            assert_eq!(n, 1, "the key of a kept-alive lease disappeared after the leader was paused");
        }
    }
    let r = cli.get("k/held", None).await.unwrap();
    assert_eq!(r.kvs().len(), 1);
    stop.store(true, Ordering::Relaxed);
    let renewed = keeper.await.unwrap();
    assert!(renewed > 5, "only {renewed} keep-alives succeeded");
    // Once nobody renews it, it expires: within its TTL plus an election or two.
    let stopped = Instant::now();
    loop {
        if cli.get("k/held", None).await.unwrap().kvs().is_empty() {
            break;
        }
        assert!(stopped.elapsed() < Duration::from_secs(ttl as u64 + 5), "the lease never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Leases and their keys survive a whole-cluster restart; the new leader gives them their TTL
/// afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_survive_a_full_restart() {
    let mut tc = start(3, &[]).await;
    let mut cli = client(&tc.endpoints()).await;
    let id = cli.lease_grant(20, None).await.unwrap().id();
    cli.put("r/a", "v", Some(PutOptions::new().with_lease(id))).await.unwrap();
    for i in 0..3 {
        tc.kill(i);
    }
    for i in 0..3 {
        tc.restart(i).unwrap();
    }
    tc.wait_leader(Duration::from_secs(20)).await.unwrap();
    let mut cli = client(&tc.endpoints()).await;
    let t = cli.lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys())).await.unwrap();
    assert_eq!(t.granted_ttl(), 20);
    assert!(t.ttl() >= 19, "{}", t.ttl());
    assert_eq!(t.keys(), &[b"r/a".to_vec()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lease_commands() {
    let tc = start(3, &[]).await;
    let eps = tc.endpoints();
    let out = etcdctl(&eps, &["lease", "grant", "60"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // "lease 694d71ddacfda227 granted with TTL(60s)"
    let text = stdout(&out);
    let id = text.split_whitespace().nth(1).unwrap_or_default().to_string();
    assert!(text.contains("granted with TTL(60s)"), "{text}");
    let out = etcdctl(&eps, &["put", "--lease", &id, "ek", "ev"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = etcdctl(&eps, &["lease", "timetolive", "--keys", &id]);
    assert!(stdout(&out).contains("remaining") && stdout(&out).contains("attached keys([ek])"), "{}", stdout(&out));
    let out = etcdctl(&eps, &["lease", "list"]);
    assert!(stdout(&out).contains(&id), "{}", stdout(&out));
    let out = etcdctl(&eps, &["lease", "keep-alive", "--once", &id]);
    assert!(stdout(&out).contains("keepalived with TTL(60)"), "{}{}", stdout(&out), stderr(&out));
    let out = etcdctl(&eps, &["lease", "revoke", &id]);
    assert!(stdout(&out).contains("revoked"), "{}", stdout(&out));
    let out = etcdctl(&eps, &["get", "ek"]);
    assert_eq!(stdout(&out), "");
    let out = etcdctl(&eps, &["lease", "revoke", &id]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("requested lease not found"), "{}", stderr(&out));
}
