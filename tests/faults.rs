//! Real failures under concurrent load, each checked the same way: every client operation is
//! recorded (invoke / ok / fail / unknown), the cluster is healed, every key is read once more,
//! and the history must be linearizable with no acknowledged write lost
//! (`cairn_testkit::check_final_state`).

mod common;

use std::time::Duration;

use common::*;

async fn run_for(secs: f64) {
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkill_then_restart() {
    let seed = seed(11);
    let mut tc = start(3, &[]).await;
    let eps = tc.endpoints();
    let w = Workload::start(4, 5, seed, |_| eps.clone()).await;
    run_for(1.5).await;
    let leader = tc.wait_leader(Duration::from_secs(10)).await.unwrap();
    tc.kill(leader);
    run_for(2.0).await;
    let new_leader = tc.wait_leader(Duration::from_secs(10)).await.unwrap();
    assert_ne!(new_leader, leader);
    tc.restart(leader).unwrap();
    run_for(2.0).await;
    let (h, keys) = w.stop().await;
    check(&h, &keys, &eps).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_sigkill_then_restart() {
    let seed = seed(12);
    let mut tc = start(3, &[]).await;
    let eps = tc.endpoints();
    let w = Workload::start(4, 5, seed, |_| eps.clone()).await;
    run_for(1.5).await;
    let leader = tc.wait_leader(Duration::from_secs(10)).await.unwrap();
    let follower = (leader + 1) % 3;
    tc.kill(follower);
    run_for(2.0).await;
    tc.restart(follower).unwrap();
    run_for(2.0).await;
    let (h, keys) = w.stop().await;
    check(&h, &keys, &eps).await;
}

/// The leader is frozen (SIGSTOP) for longer than the election timeout, a new leader takes
/// over and accepts writes, then the old leader wakes up. Clients pinned to the old leader must
/// never read a value older than one already written through the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_leader_never_serves_stale_reads() {
    let seed = seed(13);
    let mut tc = start(3, &[]).await;
    let eps = tc.endpoints();
    let leader = tc.wait_leader(Duration::from_secs(10)).await.unwrap();
    let pinned = vec![eps[leader].clone()];
    // Clients 0 and 1 talk only to the leader that will be paused; 2..5 to everyone.
    let w = Workload::start(6, 3, seed, |i| if i < 2 { pinned.clone() } else { eps.clone() }).await;
    run_for(1.0).await;
    tc.pause(leader);
    run_for(2.5).await;
    let new_leader = tc.wait_leader(Duration::from_secs(10)).await.unwrap();
    assert_ne!(new_leader, leader, "a new leader is elected while the old one is frozen");
    tc.resume(leader);
    run_for(2.5).await;
    let (h, keys) = w.stop().await;
    check(&h, &keys, &eps).await;
}

/// Every member is SIGKILLed at once, then restarted: every acknowledged write survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_crash_keeps_acknowledged_writes() {
    let seed = seed(14);
    let mut tc = start(3, &[]).await;
    let eps = tc.endpoints();
    let w = Workload::start(4, 8, seed, |_| eps.clone()).await;
    run_for(2.0).await;
    for i in 0..3 {
        tc.kill(i);
    }
    let (h, keys) = w.stop().await;
    for i in 0..3 {
        tc.restart(i).unwrap();
    }
    tc.wait_leader(Duration::from_secs(20)).await.unwrap();
    check(&h, &keys, &eps).await;
}

/// A follower misses so much that the log it needs has been compacted away: it must catch up
/// from a snapshot, and then hold exactly what the others hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_member_catches_up_from_a_snapshot() {
    let seed = seed(15);
    let mut tc = start(3, &["--snapshot-count=50"]).await;
    let eps = tc.endpoints();
    let leader = tc.wait_leader(Duration::from_secs(10)).await.unwrap();
    let lagger = (leader + 1) % 3;
    tc.kill(lagger);
    let live: Vec<String> = eps.iter().enumerate().filter(|(i, _)| *i != lagger).map(|(_, e)| e.clone()).collect();
    let w = Workload::start(4, 6, seed, |_| live.clone()).await;
    // Enough writes for several snapshots and log purges.
    let mut cli = client(&live).await;
    for i in 0..400 {
        cli.put(format!("bulk/{i:04}"), format!("v{i}"), None).await.unwrap();
    }
    tc.restart(lagger).unwrap();
    let target = tc.status(leader, Duration::from_secs(2)).await.unwrap().raft_applied_index;
    tc.wait_applied(target, Duration::from_secs(30)).await.unwrap();
    let log = std::fs::read_to_string(&tc.members[lagger].log).unwrap();
    assert!(
        log.contains("received snapshot; installing"),
        "the lagging member should have installed a snapshot:\n{log}"
    );
    run_for(1.0).await;
    let (h, keys) = w.stop().await;
    check(&h, &keys, &eps).await;
    // The member that caught up holds the bulk data too (a serializable read of its own state).
    let mut own = client(std::slice::from_ref(&eps[lagger])).await;
    let r = own
        .get("bulk/", Some(etcd_client::GetOptions::new().with_prefix().with_serializable().with_count_only()))
        .await
        .unwrap();
    assert_eq!(r.count(), 400);
}

/// Membership 3 -> 5 -> 3 while clients keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_three_to_five_to_three_under_load() {
    let seed = seed(16);
    let mut tc = start(3, &[]).await;
    let eps = tc.endpoints();
    let w = Workload::start(4, 5, seed, |_| eps.clone()).await;
    run_for(1.0).await;
    for _ in 0..2 {
        let i = tc.new_member();
        let (name, peer) = (tc.members[i].name.clone(), tc.members[i].peer_url.clone());
        let o = etcdctl(&eps, &["member", "add", &name, &format!("--peer-urls={peer}")]);
        assert!(o.status.success(), "member add: {}", stderr(&o));
        tc.start_member(i).unwrap();
        run_for(1.0).await;
    }
    let list = stdout(&etcdctl(&eps, &["member", "list"]));
    assert_eq!(list.lines().count(), 5, "{list}");
    // Remove two of the original members (one of them may be the leader). A removed member
    // stops serving, so later admin commands go to the members that stay.
    let stay: Vec<String> = tc.members[2..].iter().map(|m| m.client_url.clone()).collect();
    for name in ["m1", "m2"] {
        let list = stdout(&etcdctl(&stay, &["member", "list"]));
        let id =
            list.lines().find(|l| l.contains(&format!(", {name},"))).unwrap().split(',').next().unwrap().to_string();
        let o = etcdctl(&stay, &["member", "remove", &id]);
        assert!(o.status.success(), "member remove: {}", stderr(&o));
        run_for(1.0).await;
    }
    let remaining: Vec<String> = tc.members[2..].iter().map(|m| m.client_url.clone()).collect();
    let list = stdout(&etcdctl(&remaining, &["member", "list"]));
    assert_eq!(list.lines().count(), 3, "{list}");
    run_for(1.0).await;
    let (h, keys) = w.stop().await;
    check(&h, &keys, &remaining).await;
}

/// A member that was cut off (frozen) and comes back must not disrupt the healthy leader: it
/// asks first (Pre-Vote) and the others, still hearing from their leader, refuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returning_member_does_not_disrupt_the_leader() {
    let mut tc = start(3, &[]).await;
    let leader = tc.wait_leader(Duration::from_secs(10)).await.unwrap();
    let term = tc.status(leader, Duration::from_secs(2)).await.unwrap().raft_term;
    let follower = (leader + 1) % 3;
    // Frozen well past its election timeout, then thawed: it times out at once on waking.
    tc.pause(follower);
    run_for(2.0).await;
    tc.resume(follower);
    run_for(2.0).await;
    // Killed and restarted: its stale log cannot win either.
    tc.kill(follower);
    run_for(1.0).await;
    tc.restart(follower).unwrap();
    run_for(2.0).await;
    assert_eq!(tc.wait_leader(Duration::from_secs(5)).await.unwrap(), leader, "the leader is unchanged");
    let after = tc.status(leader, Duration::from_secs(2)).await.unwrap().raft_term;
    assert_eq!(after, term, "no election happened: the term is unchanged");
}

/// With a majority gone, writes fail with etcd's availability errors instead of hanging or
/// pretending, and nothing is applied; once the majority is back, the cluster serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_quorum_fails_writes_with_etcds_errors() {
    let mut tc = start(3, &["--election-timeout=500"]).await;
    let eps = tc.endpoints();
    let leader = tc.wait_leader(Duration::from_secs(10)).await.unwrap();
    let survivor = (leader + 1) % 3;
    for i in 0..3 {
        if i != survivor {
            tc.kill(i);
        }
    }
    let mut c = client_with_timeout(std::slice::from_ref(&eps[survivor]), Duration::from_secs(20)).await;
    let e = tokio::time::timeout(Duration::from_secs(15), c.put("during-outage", "x", None))
        .await
        .expect("the request ends by itself")
        .unwrap_err();
    let s = status(&e).expect("a gRPC status");
    assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
    assert!(
        ["etcdserver: no leader", "etcdserver: request timed out"].iter().any(|m| s.message().starts_with(m)),
        "{s:?}"
    );
    for i in 0..3 {
        if i != survivor {
            tc.restart(i).unwrap();
        }
    }
    tc.wait_leader(Duration::from_secs(20)).await.unwrap();
    let mut c = client(&eps).await;
    c.put("after-outage", "y", None).await.unwrap();
    assert_eq!(c.get("after-outage", None).await.unwrap().kvs()[0].value(), b"y");
}
