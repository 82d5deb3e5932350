//! etcd's Lock and Election services on a real cluster, through the `etcd-client` crate (which
//! calls the v3lock / v3election gRPC services) and through `etcdctl lock` / `etcdctl elect`
//! (which build the same recipes from KV, Lease and Watch), and the fencing-token pattern with
//! lock holders frozen by SIGSTOP beyond their lease.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use etcd_client::{EventType, GetOptions, LockOptions, ResignOptions, WatchOptions};

fn code_and_message(e: &etcd_client::Error) -> (tonic::Code, String) {
    let s = status(e).unwrap_or_else(|| panic!("not a gRPC status: {e:?}"));
    (s.code(), s.message().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_waits_for_the_holder_and_its_key_orders_holders() {
    let tc = start(3, &[]).await;
    let eps = tc.endpoints();
    let mut a = client(std::slice::from_ref(&eps[0])).await;
    let mut b = client(std::slice::from_ref(&eps[1])).await;
    let la = a.lease_grant(30, None).await.unwrap().id();
    let lb = b.lease_grant(30, None).await.unwrap().id();

    let ka = a.lock("res", Some(LockOptions::new().with_lease(la))).await.unwrap();
    let key_a = ka.key().to_vec();
    assert_eq!(key_a, format!("res/{la:x}").into_bytes(), "etcd's key layout: <name>/<lease hex>");
    let token_a = a.get(key_a.clone(), None).await.unwrap().kvs()[0].create_revision();

    // B waits while A holds the lock.
    let mut b2 = b.clone();
    let waiter = tokio::spawn(async move { b2.lock("res", Some(LockOptions::new().with_lease(lb))).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!waiter.is_finished(), "B got the lock while A held it");
    a.unlock(key_a.clone()).await.unwrap();
    let kb =
        tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("B never got the lock").unwrap().unwrap();
    let token_b = b.get(kb.key().to_vec(), None).await.unwrap().kvs()[0].create_revision();
    assert!(token_b > token_a, "fencing tokens must grow: {token_a} then {token_b}");

    // A holder whose lease is revoked loses the lock to the next waiter.
    let mut a2 = a.clone();
    let waiter = tokio::spawn(async move { a2.lock("res", Some(LockOptions::new().with_lease(la))).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished());
    b.lease_revoke(lb).await.unwrap();
    let ka =
        tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("A never got the lock").unwrap().unwrap();
    let token_a2 = a.get(ka.key().to_vec(), None).await.unwrap().kvs()[0].create_revision();
    assert!(token_a2 > token_b);

    // An unknown lease: etcd's error, passed through as etcd's lock server does (gRPC Unknown).
    // An empty name: refused (etcd would lock under "/"; README, "Compatibility notes").
    let e = b.lock("res2", Some(LockOptions::new().with_lease(0x7777))).await.unwrap_err();
    assert_eq!(code_and_message(&e), (tonic::Code::Unknown, "etcdserver: requested lease not found".into()));
    let e = b.lock("", Some(LockOptions::new().with_lease(la))).await.unwrap_err();
    assert_eq!(code_and_message(&e).0, tonic::Code::InvalidArgument);
}

/// A waiter that gives up (the client cancels the call) takes its key away, so it does not
/// hold up those behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_lock_wait_removes_its_key() {
    let tc = start(3, &[]).await;
    let mut cli = client(&tc.endpoints()).await;
    let l1 = cli.lease_grant(60, None).await.unwrap().id();
    let l2 = cli.lease_grant(60, None).await.unwrap().id();
    cli.lock("q", Some(LockOptions::new().with_lease(l1))).await.unwrap();
    let mut c2 = cli.clone();
    let r =
        tokio::time::timeout(Duration::from_millis(800), c2.lock("q", Some(LockOptions::new().with_lease(l2)))).await;
    assert!(r.is_err(), "the second lock must wait");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = cli.get("q/", Some(GetOptions::new().with_prefix())).await.unwrap().kvs().len();
        if n == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the abandoned waiter's key is still there ({n} keys)");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_campaign_proclaim_leader_observe_resign() {
    let tc = start(3, &[]).await;
    let eps = tc.endpoints();
    let mut a = client(std::slice::from_ref(&eps[0])).await;
    let mut b = client(std::slice::from_ref(&eps[2])).await;
    let e = a.leader("svc").await.unwrap_err();
    assert_eq!(code_and_message(&e), (tonic::Code::Unknown, "election: no leader".into()));

    let la = a.lease_grant(30, None).await.unwrap().id();
    let lb = b.lease_grant(30, None).await.unwrap().id();
    let ca = a.campaign("svc", "a1", la).await.unwrap();
    let leader_a = ca.leader().unwrap().clone();
    assert_eq!(leader_a.key(), format!("svc/{la:x}").as_bytes());
    let mut observe = b.observe("svc").await.unwrap();
    let first = observe.message().await.unwrap().unwrap();
    assert_eq!(first.kv().unwrap().value(), b"a1");

    let mut b2 = b.clone();
    let pending = tokio::spawn(async move { b2.campaign("svc", "b1", lb).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!pending.is_finished(), "B was elected while A leads");

    a.proclaim("a2", Some(etcd_client::ProclaimOptions::new().with_leader(leader_a.clone()))).await.unwrap();
    let next = observe.message().await.unwrap().unwrap();
    assert_eq!(next.kv().unwrap().value(), b"a2");
    assert_eq!(b.leader("svc").await.unwrap().kv().unwrap().value(), b"a2");

    a.resign(Some(ResignOptions::new().with_leader(leader_a.clone()))).await.unwrap();
    let cb = tokio::time::timeout(Duration::from_secs(5), pending).await.expect("B never elected").unwrap().unwrap();
    assert!(cb.leader().unwrap().rev() > leader_a.rev());
    let next = observe.message().await.unwrap().unwrap();
    assert_eq!(next.kv().unwrap().value(), b"b1");

    // The old leader key no longer leads: etcd's "election: not leader".
    let e = a.proclaim("a3", Some(etcd_client::ProclaimOptions::new().with_leader(leader_a))).await.unwrap_err();
    assert_eq!(code_and_message(&e), (tonic::Code::Unknown, "election: not leader".into()));
}

/// `etcdctl lock` and `etcdctl elect` are client-side recipes over KV, Lease and Watch; they
/// interoperate with the Lock and Election services.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lock_and_elect_interoperate_with_the_services() {
    let tc = start(3, &[]).await;
    let eps = tc.endpoints();
    let mut cli = client(&eps).await;

    // etcdctl lock with a command: runs it holding the lock, with the key in the environment.
    let o = etcdctl(&eps, &["lock", "job", "--", "sh", "-c", "echo held $ETCD_LOCK_KEY"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("held job/"), "{}", stdout(&o));
    assert!(cli.get("job/", Some(GetOptions::new().with_prefix())).await.unwrap().kvs().is_empty());

    // While the service holds the lock, etcdctl lock waits; it gets it once unlocked.
    let lease = cli.lease_grant(30, None).await.unwrap().id();
    let held = cli.lock("job", Some(LockOptions::new().with_lease(lease))).await.unwrap();
    let mut waiting = etcdctl_spawn(&eps, &["lock", "job", "echo", "got it"]);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(waiting.try_wait().unwrap().is_none(), "etcdctl lock did not wait for the holder");
    cli.unlock(held.key().to_vec()).await.unwrap();
    let out = wait_output(waiting, Duration::from_secs(10));
    assert!(out.contains("got it"), "{out}");

    // etcdctl elect campaigns and then holds leadership; the service reports its proposal.
    let mut elect = etcdctl_spawn(&eps, &["elect", "chief", "p1"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = cli.leader("chief").await {
            assert_eq!(r.kv().unwrap().value(), b"p1");
            break;
        }
        assert!(Instant::now() < deadline, "etcdctl elect never became leader");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // etcdctl elect -l observes the leader the service campaigns for later.
    let _ = elect.kill();
    let _ = elect.wait();
    let lease = cli.lease_grant(30, None).await.unwrap().id();
    // etcdctl's session lease (60 s) still holds "chief": resign it through its key first.
    let old = cli.get("chief/", Some(GetOptions::new().with_prefix())).await.unwrap();
    for kv in old.kvs() {
        cli.delete(kv.key().to_vec(), None).await.unwrap();
    }
    cli.campaign("chief", "p2", lease).await.unwrap();
    let listen = etcdctl_spawn(&eps, &["elect", "-l", "chief"]);
    let out = read_lines(listen, 2, Duration::from_secs(10));
    assert_eq!(out.get(1).map(String::as_str), Some("p2"), "{out:?}");
}

fn etcdctl_spawn(endpoints: &[String], args: &[&str]) -> Child {
    let eps: Vec<&str> = endpoints.iter().map(|e| e.trim_start_matches("http://")).collect();
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", eps.join(",")))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("etcdctl")
}

fn wait_output(mut c: Child, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    while c.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "etcdctl did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = c.wait_with_output().unwrap();
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The first `n` lines the process prints, then it is killed.
fn read_lines(mut c: Child, n: usize, limit: Duration) -> Vec<String> {
    let out = c.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + limit;
    let mut lines = Vec::new();
    while lines.len() < n {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(l) => lines.push(l),
            Err(_) => break,
        }
    }
    let _ = c.kill();
    let _ = c.wait();
    lines
}

/// The fencing pattern (README, "Locks and fencing") under the failure Jepsen showed breaks a
/// bare lock: holders are `etcdctl lock --ttl 2` processes whose critical section reads its
/// token (the lock key's create revision), waits a moment, then writes the protected key in a
/// Txn that only succeeds while the lock key still has that create revision. The test freezes
/// holders with SIGSTOP inside the critical section for longer than their lease, so the lease
/// expires and another holder takes over; when the frozen one wakes, it still believes it holds
/// the lock. Every protected write is checked afterwards: the tokens the data accepted must
/// strictly increase. Each holder also makes the same write *without* the fence on another key;
/// those inversions are counted and printed, to show what the fence prevents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_writes_stay_ordered_while_holders_are_paused() {
    let tc = start(3, &[]).await;
    let eps = tc.endpoints();
    let mut cli = client(&eps).await;
    let dir = tempfile::tempdir().unwrap();
    let ctl_eps: Vec<&str> = eps.iter().map(|e| e.trim_start_matches("http://")).collect();
    let ctl = format!("etcdctl --endpoints={} --command-timeout=3s", ctl_eps.join(","));
    // The critical section: note the token, pause point, fenced write, unfenced write.
    let section = r#"
tok=$($CTL get "$ETCD_LOCK_KEY" -w fields | awk '/"CreateRevision"/ {print $3}')
echo "got $tok" >> "$LOG"
sleep 1
r=$(printf 'c("%s") = "%s"\n\nput data/fenced %s\n\n\n' "$ETCD_LOCK_KEY" "$tok" "$tok" | $CTL txn | head -n 1)
$CTL put data/unfenced "$tok" > /dev/null
echo "wrote $tok $r" >> "$LOG"
"#;
    let holders = 3;
    let run_for = Duration::from_secs(25);
    let started = Instant::now();
    let mut slots: Vec<Option<(Child, std::path::PathBuf)>> = (0..holders).map(|_| None).collect();
    let mut pauses = 0;
    let mut spawned = 0;
    while started.elapsed() < run_for {
        for (i, slot) in slots.iter_mut().enumerate() {
            let done = match slot {
                Some((c, _)) => c.try_wait().unwrap().is_some(),
                None => true,
            };
            if done {
                spawned += 1;
                let log = dir.path().join(format!("h{i}-{spawned}.log"));
                let c = Command::new("etcdctl")
                    .env("ETCDCTL_API", "3")
                    .env("CTL", &ctl)
                    .env("LOG", &log)
                    .arg(format!("--endpoints={}", ctl_eps.join(",")))
                    .args(["lock", "--ttl=2", "fence", "--", "sh", "-c", section])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .process_group(0)
                    .spawn()
                    .expect("etcdctl");
                *slot = Some((c, log));
            }
        }
        // Freeze a holder that is inside its critical section, beyond its 2 s lease.
        for (c, log) in slots.iter_mut().flatten() {
            let text = std::fs::read_to_string(&*log).unwrap_or_default();
            if text.contains("got ") && !text.contains("wrote ") && pauses < 6 {
                let pg = c.id() as i32;
                unsafe { libc::kill(-pg, libc::SIGSTOP) };
                tokio::time::sleep(Duration::from_millis(3500)).await;
                unsafe { libc::kill(-pg, libc::SIGCONT) };
                pauses += 1;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the last holders finish.
    for (mut c, _) in slots.into_iter().flatten() {
        let deadline = Instant::now() + Duration::from_secs(20);
        while c.try_wait().unwrap().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    let mut accepted = 0;
    let mut rejected = 0;
    for f in std::fs::read_dir(dir.path()).unwrap() {
        for l in std::fs::read_to_string(f.unwrap().path()).unwrap().lines() {
            if l.starts_with("wrote ") {
                if l.ends_with("SUCCESS") {
                    accepted += 1;
                } else if l.ends_with("FAILURE") {
                    rejected += 1;
                }
            }
        }
    }
    let fenced = history(&mut cli, "data/fenced").await;
    let unfenced = history(&mut cli, "data/unfenced").await;
    let inversions = |h: &[i64]| h.windows(2).filter(|w| w[1] <= w[0]).count();
    eprintln!(
        "{spawned} holders, {pauses} frozen; fenced writes accepted {accepted}, rejected {rejected}; \
         fenced history {fenced:?}; unfenced inversions {}",
        inversions(&unfenced)
    );
    assert!(pauses >= 3, "too few holders were frozen inside their critical section ({pauses})");
    assert!(accepted >= 5, "too few fenced writes went through ({accepted})");
    // A write whose etcdctl timed out may have happened: the data can hold more than the logs.
    assert!(fenced.len() >= accepted, "acknowledged fenced writes are missing: {fenced:?}");
    assert_eq!(inversions(&fenced), 0, "the fenced data accepted an older token after a newer one: {fenced:?}");
    assert!(rejected >= 1, "no frozen holder's write was fenced off: the scenario did not happen");
}

/// Every value `key` has had, in revision order (a watch from revision 1 up to its current
/// version).
async fn history(cli: &mut etcd_client::Client, key: &str) -> Vec<i64> {
    let r = cli.get(key, None).await.unwrap();
    let Some(last) = r.kvs().first().map(|kv| kv.mod_revision()) else { return Vec::new() };
    let mut s = cli.watch(key, Some(WatchOptions::new().with_start_revision(1))).await.unwrap();
    let mut out = Vec::new();
    loop {
        let r = tokio::time::timeout(Duration::from_secs(5), s.message()).await.unwrap().unwrap().unwrap();
        for e in r.events() {
            if e.event_type() == EventType::Put {
                let kv = e.kv().unwrap();
                out.push(kv.value_str().unwrap().trim().parse().unwrap());
                if kv.mod_revision() == last {
                    return out;
                }
            }
        }
    }
}
