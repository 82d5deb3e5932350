//! `cairn demo`: the whole promise in under two minutes.
//!
//! 1. start a 3-member cluster (child processes of this binary, temporary data directories);
//! 2. run writers and readers against all three endpoints, with live progress;
//! 3. SIGKILL the leader midway; measure the failover (kill -> first successful write through
//!    the others) and report the new leader;
//! 4. restart the killed member and watch it catch up;
//! 5. read back every acknowledged write; exit non-zero if any is missing or wrong.

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
            "  {} client {} peer {} pid {}{}",
            m.name,
            m.client_url,
            m.peer_url,
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
    });
    let mut tasks = Vec::new();
    for id in 0..a.writers {
        tasks.push(tokio::spawn(writer(id, endpoints.clone(), stats.clone())));
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}").expect("template"));
    let progress = |bar: &ProgressBar, phase: &str| {
        bar.set_message(format!(
            "{phase}: {} writes acknowledged, {} reads, {} unknown/failed",
            stats.acked.load(Ordering::Relaxed),
            stats.reads.load(Ordering::Relaxed),
            stats.unknown.load(Ordering::Relaxed) + stats.errors.load(Ordering::Relaxed)
        ));
        bar.tick();
    };
    let until = Instant::now() + Duration::from_secs(a.before_kill);
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
    let ok = missing == 0 && wrong == 0;
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
    println!("  total time            {:.1} s", started.elapsed().as_secs_f64());
    println!(
        "  result                {}",
        if ok { "OK: every acknowledged write is on every member" } else { "FAILED" }
    );
    drop(cluster);
    if a.keep {
        let kept = dir.keep();
        println!("kept {}", kept.display());
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
