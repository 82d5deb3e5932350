//! `cairn demo`: the whole promise in under two minutes.
//!
//! 1. start a 3-member cluster (child processes of this binary, temporary data directories);
//! 2. run writers and readers against all three endpoints, with live progress;
//! 3. SIGKILL the leader midway; measure the failover (kill -> first successful write through
//!    the others) and report the new leader;
//! 4. restart the killed member and watch it catch up;
//! 5. read back every acknowledged write; exit non-zero if any is missing or wrong.
//!
//! Alongside, Redis clients write through every node's Redis port into the data tier, a Redis
//! range is split under that load, a fourth node joins (`--join`) and the placement driver
//! moves range replicas onto it, and every acknowledged SET is read back through every node.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::kv_client::KvClient;
use cairn_testkit::cluster::{ClusterSpec, ProcessCluster};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::Mutex;
use tonic::transport::Channel;

use cairn_testkit::resp::{Reply, Resp};

use crate::client::channel;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Seconds of workload before the leader is killed.
    #[arg(long, default_value_t = 8)]
    pub before_kill: u64,
    /// Seconds of workload after the leader is killed.
    #[arg(long, default_value_t = 8)]
    pub after_kill: u64,
    /// Concurrent writers.
    #[arg(long, default_value_t = 16)]
    pub writers: usize,
    /// Keep the data directories (printed at the end).
    #[arg(long)]
    pub keep: bool,
}

struct Stats {
    acked: AtomicU64,
    unknown: AtomicU64,
    reads: AtomicU64,
    errors: AtomicU64,
    stop: AtomicBool,
    /// key -> value of every acknowledged write (keys are unique per write).
    acked_writes: Mutex<BTreeMap<String, String>>,
    /// The same for Redis SETs.
    redis_acked: Mutex<BTreeMap<String, String>>,
    redis_failed: AtomicU64,
}

/// A Redis writer: SETs keys of its own through one node after another, moving on when a node
/// fails or answers with an error.
async fn redis_writer(id: usize, addrs: Vec<String>, stats: Arc<Stats>) {
    let mut node = id % addrs.len();
    let mut conn: Option<Resp> = None;
    let mut seq = 0u64;
    while !stats.stop.load(Ordering::Relaxed) {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Resp::connect(&addrs[node]).await {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    node = (node + 1) % addrs.len();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        seq += 1;
        let k = format!("demo:r{id:02}:{seq:08}");
        let v = format!("v{seq}");
        match c.call(&[b"SET", k.as_bytes(), v.as_bytes()], Duration::from_secs(5)).await {
            Ok(Reply::Simple(ok)) if ok == "OK" => {
                stats.redis_acked.lock().insert(k, v);
            }
            // An error reply (TRYAGAIN: not executed; ERR timeout: maybe executed) or a broken
            // connection: not acknowledged, so the final check does not require it.
            other => {
                stats.redis_failed.fetch_add(1, Ordering::Relaxed);
                if other.is_err() {
                    conn = None;
                    node = (node + 1) % addrs.len();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// How many of `acked` read back with their value through the Redis port at `addr`: (held,
/// missing or wrong).
async fn redis_check(addr: &str, acked: &BTreeMap<String, String>) -> anyhow::Result<(usize, usize)> {
    let mut c = Resp::connect(addr).await?;
    let (mut held, mut bad) = (0, 0);
    let pairs: Vec<(&String, &String)> = acked.iter().collect();
    for chunk in pairs.chunks(200) {
        let mut args: Vec<&[u8]> = vec![b"MGET"];
        args.extend(chunk.iter().map(|(k, _)| k.as_bytes()));
        let deadline = Instant::now() + Duration::from_secs(20);
        let values = loop {
            match c.call(&args, Duration::from_secs(10)).await? {
                Reply::Array(v) => break v,
                // TRYAGAIN while a range moves: ask again.
                other => {
                    anyhow::ensure!(Instant::now() < deadline, "MGET through {addr}: {other:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        for ((_, v), got) in chunk.iter().zip(values) {
            if got == Reply::Bulk(Some(v.as_bytes().to_vec())) {
                held += 1;
            } else {
                bad += 1;
            }
        }
    }
    Ok((held, bad))
}

/// The number of ranges the data tier has, from a node's `/v1/ranges`.
async fn range_count(endpoint: &str) -> Option<usize> {
    let (code, body) =
        cairn_testkit::http::request(endpoint.trim_start_matches("http://"), "GET", "/v1/ranges", "").await.ok()?;
    (code == 200).then(|| serde_json::from_str::<serde_json::Value>(&body).ok()?.as_array().map(Vec::len))?
}

/// How many range replicas node `name` holds, from a node's `/v1/nodes`.
async fn replicas_of(endpoint: &str, name: &str) -> Option<u64> {
    let (code, body) =
        cairn_testkit::http::request(endpoint.trim_start_matches("http://"), "GET", "/v1/nodes", "").await.ok()?;
    if code != 200 {
        return None;
    }
    let nodes: serde_json::Value = serde_json::from_str(&body).ok()?;
    nodes.as_array()?.iter().find(|n| n["name"] == name)?["replicas"].as_u64()
}

/// A client that knows every endpoint and moves to the next one when its member fails.
struct FailoverClient {
    clients: Vec<KvClient<Channel>>,
    cur: usize,
}

impl FailoverClient {
    fn new(endpoints: &[String], start: usize) -> anyhow::Result<Self> {
        let clients = endpoints.iter().map(|e| channel(e).map(KvClient::new)).collect::<anyhow::Result<_>>()?;
        Ok(FailoverClient { clients, cur: start % endpoints.len() })
    }

    fn fail_over(&mut self) {
        self.cur = (self.cur + 1) % self.clients.len();
    }

    async fn put(&mut self, k: &str, v: &str, timeout: Duration) -> Result<(), tonic::Status> {
        let mut r = tonic::Request::new(pb::PutRequest { key: k.into(), value: v.into(), ..Default::default() });
        r.set_timeout(timeout);
        self.clients[self.cur].put(r).await.map(|_| ())
    }

    async fn get(&mut self, k: &str, timeout: Duration) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut r = tonic::Request::new(pb::RangeRequest { key: k.into(), ..Default::default() });
        r.set_timeout(timeout);
        self.clients[self.cur].range(r).await.map(|r| r.into_inner().kvs.pop().map(|kv| kv.value))
    }
}

/// Prints a line above the progress display (or plainly when there is no terminal).
fn say(bar: &ProgressBar, msg: impl AsRef<str>) {
    bar.suspend(|| println!("{}", msg.as_ref()));
}

async fn writer(id: usize, endpoints: Vec<String>, stats: Arc<Stats>) -> anyhow::Result<()> {
    let mut c = FailoverClient::new(&endpoints, id)?;
    let mut seq = 0u64;
    while !stats.stop.load(Ordering::Relaxed) {
        seq += 1;
        let k = format!("demo/w{id:02}/{seq:08}");
        let v = format!("value-{id}-{seq}");
        match c.put(&k, &v, Duration::from_secs(2)).await {
            Ok(()) => {
                stats.acked.fetch_add(1, Ordering::Relaxed);
                stats.acked_writes.lock().insert(k.clone(), v);
            }
            Err(_) => {
                // Outcome unknown: the write may or may not have happened. It is not counted as
                // acknowledged, so the final check does not require it.
                stats.unknown.fetch_add(1, Ordering::Relaxed);
                c.fail_over();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if seq.is_multiple_of(4) {
            match c.get(&k, Duration::from_secs(2)).await {
                Ok(_) => stats.reads.fetch_add(1, Ordering::Relaxed),
                Err(_) => {
                    c.fail_over();
                    stats.errors.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
    }
    Ok(())
}

async fn applied(cluster: &ProcessCluster, i: usize) -> Option<(u64, i64)> {
    let s = cluster.status(i, Duration::from_millis(500)).await?;
    Some((s.raft_applied_index, s.header.map_or(0, |h| h.revision)))
}

pub async fn run(a: DemoArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let dir = tempfile::Builder::new().prefix("cairn-demo-").tempdir()?;
    let binary = std::env::current_exe()?;
    println!("cairn demo: a 3-member cluster on this machine, a workload, and the leader killed midway");
    println!("data and logs: {}", dir.path().display());
    let mut cluster = ProcessCluster::start(ClusterSpec {
        binary,
        size: 3,
        dir: dir.path().to_path_buf(),
        extra_args: vec![],
        docker: None,
    })?;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await.map_err(anyhow::Error::msg)?;
    let endpoints = cluster.endpoints();
    for (i, m) in cluster.members.iter().enumerate() {
        println!(
            "  {} client {} peer {} {} pid {}{}",
            m.name,
            m.client_url,
            m.peer_url,
            m.redis_url,
            m.pid().unwrap_or(0),
            if i == leader { "  <- leader" } else { "" }
        );
    }
    println!("[{:>5.1}s] cluster up; leader is {}", started.elapsed().as_secs_f64(), cluster.members[leader].name);

    let stats = Arc::new(Stats {
        acked: AtomicU64::new(0),
        unknown: AtomicU64::new(0),
        reads: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        acked_writes: Mutex::new(BTreeMap::new()),
        redis_acked: Mutex::new(BTreeMap::new()),
        redis_failed: AtomicU64::new(0),
    });
    let mut tasks = Vec::new();
    for id in 0..a.writers {
        tasks.push(tokio::spawn(writer(id, endpoints.clone(), stats.clone())));
    }
    let redis_addrs: Vec<String> =
        cluster.members.iter().map(|m| m.redis_url.trim_start_matches("redis://").to_string()).collect();
    let redis_tasks: Vec<_> = (0..a.writers.div_ceil(4).max(2))
        .map(|id| tokio::spawn(redis_writer(id, redis_addrs.clone(), stats.clone())))
        .collect();
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}").expect("template"));
    let progress = |bar: &ProgressBar, phase: &str| {
        bar.set_message(format!(
            "{phase}: {} writes acknowledged, {} reads, {} unknown/failed; Redis: {} SETs acknowledged",
            stats.acked.load(Ordering::Relaxed),
            stats.reads.load(Ordering::Relaxed),
            stats.unknown.load(Ordering::Relaxed) + stats.errors.load(Ordering::Relaxed),
            stats.redis_acked.lock().len(),
        ));
        bar.tick();
    };
    let until = Instant::now() + Duration::from_secs(a.before_kill / 2);
    while Instant::now() < until {
        progress(&bar, "workload");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Split a Redis range while the Redis writers write into it.
    let before = range_count(&endpoints[0]).await.unwrap_or(0);
    let t_split = Instant::now();
    let split = cairn_testkit::http::request(
        endpoints[0].trim_start_matches("http://"),
        "POST",
        "/v1/ranges/split",
        r#"{"slot": 6000}"#,
    )
    .await;
    match split {
        Ok((200, _)) => say(
            &bar,
            format!(
                "[{:>5.1}s] split the Redis range holding slot 6000 under load in {:.0} ms: {before} -> {} ranges",
                started.elapsed().as_secs_f64(),
                t_split.elapsed().as_secs_f64() * 1000.0,
                range_count(&endpoints[0]).await.unwrap_or(0)
            ),
        ),
        other => say(&bar, format!("split of the Redis range at slot 6000 refused: {other:?}")),
    }
    // A fourth machine joins as a data node; the placement driver moves replicas onto it.
    let joined = cluster.join_member();
    cluster.start_member(joined)?;
    let name = cluster.members[joined].name.clone();
    let t_join = Instant::now();
    let mut held = 0;
    while t_join.elapsed() < Duration::from_secs(30) {
        progress(&bar, &format!("{name} joining"));
        held = replicas_of(&endpoints[0], &name).await.unwrap_or(0);
        if held >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    say(
        &bar,
        format!(
            "[{:>5.1}s] {name} joined with --join; the placement driver moved {held} range replicas onto it \
             in {:.1} s, under load",
            started.elapsed().as_secs_f64(),
            t_join.elapsed().as_secs_f64()
        ),
    );
    let until = Instant::now() + Duration::from_secs(a.before_kill - a.before_kill / 2);
    while Instant::now() < until {
        progress(&bar, "workload");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Kill the leader, then probe writes through the other members until one succeeds.
    let victim = cluster.wait_leader(Duration::from_secs(5)).await.map_err(anyhow::Error::msg)?;
    let victim_name = cluster.members[victim].name.clone();
    let survivors: Vec<String> =
        endpoints.iter().enumerate().filter(|(i, _)| *i != victim).map(|(_, e)| e.clone()).collect();
    let mut probe = FailoverClient::new(&survivors, 0)?;
    let t_kill = Instant::now();
    cluster.kill(victim);
    say(&bar, format!("[{:>5.1}s] SIGKILL the leader {victim_name}", started.elapsed().as_secs_f64()));
    let mut n = 0;
    let failover = loop {
        n += 1;
        match probe.put("demo/failover-probe", &n.to_string(), Duration::from_secs(3)).await {
            Ok(()) => break t_kill.elapsed(),
            Err(_) => {
                probe.fail_over();
                progress(&bar, "failing over");
            }
        }
        anyhow::ensure!(t_kill.elapsed() < Duration::from_secs(30), "no write succeeded within 30 s of the kill");
    };
    let new_leader = cluster.wait_leader(Duration::from_secs(10)).await.map_err(anyhow::Error::msg)?;
    say(
        &bar,
        format!(
            "[{:>5.1}s] new leader {} (failover: first successful write {:.0} ms after the kill)",
            started.elapsed().as_secs_f64(),
            cluster.members[new_leader].name,
            failover.as_secs_f64() * 1000.0
        ),
    );

    let until = Instant::now() + Duration::from_secs(a.after_kill / 2);
    while Instant::now() < until {
        progress(&bar, "workload on two members");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.restart(victim)?;
    say(&bar, format!("[{:>5.1}s] restarted {victim_name} with its data", started.elapsed().as_secs_f64()));
    let until = Instant::now() + Duration::from_secs(a.after_kill - a.after_kill / 2);
    while Instant::now() < until {
        progress(&bar, "workload, three members again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stats.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    for t in redis_tasks {
        t.await?;
    }
    bar.finish_and_clear();

    // Catch-up: the restarted member reaches the leader's applied index.
    let leader = cluster.wait_leader(Duration::from_secs(10)).await.map_err(anyhow::Error::msg)?;
    let (target, _) = applied(&cluster, leader).await.unwrap_or((0, 0));
    let catch = ProgressBar::new(target);
    catch.set_style(ProgressStyle::with_template("{msg} {bar:40} {pos}/{len}").expect("template"));
    catch.set_message(format!("{victim_name} catching up (applied index)"));
    let t_catch = Instant::now();
    loop {
        let (idx, _) = applied(&cluster, victim).await.unwrap_or((0, 0));
        catch.set_position(idx.min(target));
        if idx >= target {
            break;
        }
        anyhow::ensure!(t_catch.elapsed() < Duration::from_secs(30), "{victim_name} did not catch up within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    catch.finish_and_clear();
    println!(
        "[{:>5.1}s] {victim_name} caught up to applied index {target} in {:.1} s",
        started.elapsed().as_secs_f64(),
        t_catch.elapsed().as_secs_f64()
    );

    // Every acknowledged write must be readable, with its value, through every member.
    let acked = stats.acked_writes.lock().clone();
    let mut missing = 0usize;
    let mut wrong = 0usize;
    for (i, ep) in endpoints.iter().enumerate() {
        let mut c = KvClient::new(channel(ep)?).max_decoding_message_size(256 << 20);
        // A serializable read of each member's own state: every member must hold every write.
        let r = c
            .range(pb::RangeRequest {
                key: b"demo/w".to_vec(),
                range_end: b"demo/x".to_vec(),
                serializable: true,
                ..Default::default()
            })
            .await?
            .into_inner();
        let got: BTreeMap<Vec<u8>, Vec<u8>> = r.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
        let (mut m, mut w) = (0, 0);
        for (k, v) in &acked {
            match got.get(k.as_bytes()) {
                None => m += 1,
                Some(x) if x != v.as_bytes() => w += 1,
                Some(_) => {}
            }
        }
        println!(
            "  {}: {} keys held, {} acknowledged writes missing, {} with a wrong value",
            cluster.members[i].name,
            got.len(),
            m,
            w
        );
        missing += m;
        wrong += w;
    }
    // Every acknowledged Redis SET, through every node's Redis port.
    let redis_acked = stats.redis_acked.lock().clone();
    let mut redis_lost = 0;
    let mut all_redis = redis_addrs.clone();
    all_redis.push(cluster.members[joined].redis_url.trim_start_matches("redis://").to_string());
    for (i, addr) in all_redis.iter().enumerate() {
        let (held, bad) = redis_check(addr, &redis_acked).await?;
        println!(
            "  {} (Redis {addr}): {held} acknowledged SETs read back, {bad} missing or wrong",
            cluster.members[i].name
        );
        redis_lost += bad;
    }
    let ok = missing == 0 && wrong == 0 && redis_lost == 0;
    println!();
    println!("summary");
    println!("  acknowledged writes   {}", acked.len());
    println!("  reads                 {}", stats.reads.load(Ordering::Relaxed));
    println!(
        "  unknown outcomes      {} (timeouts during failover; not required to exist)",
        stats.unknown.load(Ordering::Relaxed)
    );
    println!(
        "  failover              {:.0} ms (SIGKILL of the leader -> first successful write)",
        failover.as_secs_f64() * 1000.0
    );
    println!("  lost or wrong writes  {}", missing + wrong);
    println!(
        "  Redis SETs            {} acknowledged, {} not (refused or timed out while the node died; not required to exist), {} lost or wrong",
        redis_acked.len(),
        stats.redis_failed.load(Ordering::Relaxed),
        redis_lost
    );
    println!("  total time            {:.1} s", started.elapsed().as_secs_f64());
    println!(
        "  result                {}",
        if ok { "OK: every acknowledged write (etcd and Redis) is on every member" } else { "FAILED" }
    );
    drop(cluster);
    if a.keep {
        let kept = dir.keep();
        println!("kept {}", kept.display());
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
