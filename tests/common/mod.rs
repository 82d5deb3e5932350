//! Shared helpers for the integration tests: real clusters of `cairn server` processes, the
//! `etcd-client` crate and `etcdctl` against them, and a register workload whose history is
//! checked for linearizability.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_testkit::cluster::{ClusterSpec, ProcessCluster};
use cairn_testkit::{check_final_state, CheckOptions, OpKind, Recorder, Value};
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, Txn, TxnOp};
use rand::{Rng, SeedableRng};

pub struct TestCluster {
    pub c: ProcessCluster,
    // Kept for the cluster's lifetime; deleted on drop unless CAIRN_KEEP_TEST_DATA is set.
    pub dir: tempfile::TempDir,
}

impl std::ops::Deref for TestCluster {
    type Target = ProcessCluster;
    fn deref(&self) -> &ProcessCluster {
        &self.c
    }
}

impl std::ops::DerefMut for TestCluster {
    fn deref_mut(&mut self) -> &mut ProcessCluster {
        &mut self.c
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("CAIRN_KEEP_TEST_DATA").is_some() {
            let path = self.dir.path().to_path_buf();
            eprintln!("test cluster data kept in {}", path.display());
            self.c.dump_stacks();
            eprintln!("{}", self.c.logs_tail(40));
            // Leak the directory so it survives for inspection.
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
            let _ = dir.keep();
        }
    }
}

pub fn binary() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_cairn"))
}

/// Starts a cluster and waits for a leader.
pub async fn start(size: usize, extra: &[&str]) -> TestCluster {
    let dir = tempfile::Builder::new().prefix("cairn-test-").tempdir().expect("tempdir");
    let c = ProcessCluster::start(ClusterSpec {
        binary: binary(),
        size,
        dir: dir.path().to_path_buf(),
        extra_args: extra.iter().map(|s| s.to_string()).collect(),
        docker: None,
    })
    .expect("start cluster");
    let t = TestCluster { c, dir };
    t.c.wait_leader(Duration::from_secs(30)).await.expect("leader");
    // Every member published and caught up, as etcd's readiness: a test then sees the cluster a
    // client of a started deployment sees (`member list` shows every member started).
    t.c.wait_ready(Duration::from_secs(30)).await.expect("ready");
    t
}

pub async fn client(endpoints: &[String]) -> Client {
    client_with_timeout(endpoints, Duration::from_secs(3)).await
}

/// A client whose requests give up after `timeout` (the server's own request timeout is 5 s
/// plus two election timeouts, as etcd's).
pub async fn client_with_timeout(endpoints: &[String], timeout: Duration) -> Client {
    let opts = ConnectOptions::new().with_timeout(timeout).with_connect_timeout(Duration::from_secs(1));
    Client::connect(endpoints, Some(opts)).await.expect("connect")
}

/// Runs `etcdctl` (v3 API) against `endpoints`, given as host:port: etcdctl 3.4's per-endpoint
/// commands (`endpoint status`, `health`, `hashkv`) send a URL-style endpoint as the HTTP/2
/// `:authority`, which only grpc-go accepts (README, "Compatibility notes").
pub fn etcdctl(endpoints: &[String], args: &[&str]) -> Output {
    let eps: Vec<&str> = endpoints.iter().map(|e| e.trim_start_matches("http://")).collect();
    std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", eps.join(",")))
        .arg("--command-timeout=10s")
        .args(args)
        .output()
        .expect("etcdctl is installed (Debian package etcd-client; scripts/test installs it)")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// The gRPC status behind an etcd-client error.
pub fn status(e: &etcd_client::Error) -> Option<&tonic::Status> {
    match e {
        etcd_client::Error::GRpcStatus(s) => Some(s),
        _ => None,
    }
}

/// The seed for randomized tests: `CAIRN_TEST_SEED`, or the given default. Printed so a
/// failure can be replayed.
pub fn seed(default: u64) -> u64 {
    let s = std::env::var("CAIRN_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    eprintln!("seed {s} (set CAIRN_TEST_SEED to replay)");
    s
}

/// A register workload: clients read, write and compare-and-set a few keys, recording every
/// operation with its outcome.
pub struct Workload {
    pub recorder: Recorder,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub keys: Vec<String>,
}

fn parse_value(v: &[u8]) -> Value {
    std::str::from_utf8(v).ok().and_then(|s| s.parse().ok())
}

/// Whether a failed request certainly did not take effect. Only request errors qualify; any
/// transport or availability error leaves the outcome unknown.
fn definitely_failed(e: &etcd_client::Error) -> bool {
    matches!(status(e).map(|s| s.code()), Some(tonic::Code::InvalidArgument | tonic::Code::OutOfRange))
}

impl Workload {
    /// Starts `clients` clients, each connected to `endpoints_of(i)`.
    pub async fn start(
        clients: usize,
        nkeys: usize,
        seed: u64,
        endpoints_of: impl Fn(usize) -> Vec<String>,
    ) -> Workload {
        let recorder = Recorder::new();
        let stop = Arc::new(AtomicBool::new(false));
        let keys: Vec<String> = (0..nkeys).map(|i| format!("reg/{i}")).collect();
        let mut tasks = Vec::new();
        for id in 0..clients {
            let mut cli = client(&endpoints_of(id)).await;
            let rec = recorder.clone();
            let stop = stop.clone();
            let keys = keys.clone();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(7919).wrapping_add(id as u64));
            tasks.push(tokio::spawn(async move {
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let key = keys[rng.random_range(0..keys.len())].clone();
                    // Values are unique per write: client id and sequence.
                    let v = (id as u64 + 1) * 1_000_000 + seq;
                    match rng.random_range(0..10) {
                        0..=3 => {
                            let op = rec.invoke(id as u64, &key, OpKind::Read);
                            match cli.get(key.as_str(), None).await {
                                Ok(r) => op.read_ok(r.kvs().first().and_then(|kv| parse_value(kv.value()))),
                                Err(e) if definitely_failed(&e) => op.fail(),
                                Err(_) => op.unknown(),
                            }
                        }
                        4..=7 => {
                            let op = rec.invoke(id as u64, &key, OpKind::Write(v));
                            match cli.put(key.as_str(), v.to_string(), None).await {
                                Ok(_) => op.write_ok(),
                                Err(e) if definitely_failed(&e) => op.fail(),
                                Err(_) => op.unknown(),
                            }
                        }
                        _ => {
                            // CAS against the value last seen by a read of this key.
                            let expect = match cli.get(key.as_str(), None).await {
                                Ok(r) => r.kvs().first().and_then(|kv| parse_value(kv.value())),
                                Err(_) => continue,
                            };
                            let op = rec.invoke(id as u64, &key, OpKind::Cas { expect, new: v });
                            let cmp = match expect {
                                Some(e) => Compare::value(key.as_str(), CompareOp::Equal, e.to_string()),
                                None => Compare::version(key.as_str(), CompareOp::Equal, 0),
                            };
                            let txn = Txn::new().when([cmp]).and_then([TxnOp::put(key.as_str(), v.to_string(), None)]);
                            match cli.txn(txn).await {
                                Ok(r) => op.cas_ok(r.succeeded()),
                                Err(e) if definitely_failed(&e) => op.fail(),
                                Err(_) => op.unknown(),
                            }
                        }
                    }
                }
            }));
        }
        Workload { recorder, stop, tasks, keys }
    }

    pub async fn stop(self) -> (cairn_testkit::History, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("workload task");
        }
        (self.recorder.history(), self.keys)
    }
}

/// Reads every key once more (linearizably) once the cluster is healed, and checks the whole
/// history: linearizable, and no acknowledged write lost. Panics with the report otherwise.
pub async fn check(history: &cairn_testkit::History, keys: &[String], endpoints: &[String]) -> (usize, usize, usize) {
    let mut cli = client(endpoints).await;
    let mut finals = BTreeMap::new();
    for k in keys {
        let mut tries = 0;
        let v = loop {
            match cli.get(k.as_str(), None).await {
                Ok(r) => break r.kvs().first().and_then(|kv| parse_value(kv.value())),
                Err(e) => {
                    tries += 1;
                    assert!(tries < 50, "final read of {k} keeps failing: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        finals.insert(k.clone(), v);
    }
    let report = check_final_state(history, &finals, &CheckOptions::default()).expect("well-formed history");
    let ok = history.ops.iter().filter(|o| matches!(o.outcome, cairn_testkit::Outcome::Ok(_))).count();
    let unknown = history.ops.iter().filter(|o| matches!(o.outcome, cairn_testkit::Outcome::Unknown)).count();
    let fail = history.ops.len() - ok - unknown;
    eprintln!("history: {} ops ({ok} ok, {fail} failed, {unknown} unknown)", history.ops.len());
    assert!(report.valid, "history check failed:\n{report:?}\n{}", history.to_jsonl());
    assert!(ok > 50, "too few successful operations ({ok}) for the check to mean anything");
    (ok, fail, unknown)
}

/// A real etcd (Debian's `etcd`, 3.4) as a single-member cluster on free loopback ports, with
/// its data in a temporary directory; killed on drop. For the migration test and the
/// differential suite.
pub struct Etcd {
    /// The client URL, `http://127.0.0.1:<port>`.
    pub url: String,
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts etcd with `extra` flags and waits until it answers Status.
    pub async fn start(extra: &[&str]) -> Etcd {
        use cairn_testkit::cluster::free_port;
        let dir = tempfile::Builder::new().prefix("cairn-test-etcd-").tempdir().expect("tempdir");
        let (cp, pp) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{cp}");
        let peer = format!("http://127.0.0.1:{pp}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("etcd log file");
        let child = std::process::Command::new("etcd")
            .args(["--name", "etcd", "--data-dir", &dir.path().join("data").display().to_string()])
            .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("etcd={peer}")])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd is installed (Debian etcd-server; scripts/test installs it)");
        let etcd = Etcd { url, child, dir };
        let end = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = Client::connect([etcd.url.clone()], None).await {
                if c.status().await.is_ok() {
                    return etcd;
                }
            }
            assert!(std::time::Instant::now() < end, "etcd did not start:\n{}", etcd.log_tail(20));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last `n` lines of etcd's log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("etcd log (last lines):\n{}", self.log_tail(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
