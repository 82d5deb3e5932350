//! The Redis front end on real clusters: redis-cli against every node of a 3-node cluster
//! (keys in several ranges, commands across ranges, SCAN over every range, real expiry), and
//! acknowledged writes surviving the SIGKILL of a node.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Runs redis-cli against `addr` (`host:port`) and returns its output, trimmed.
fn cli(addr: &str, args: &[&str]) -> String {
    cli_raw(addr, args).trim_end().to_string()
}

/// Runs redis-cli against `addr` (`host:port`) and returns its output.
fn cli_raw(addr: &str, args: &[&str]) -> String {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let out = Command::new("redis-cli")
        .args(["-h", host, "-p", port])
        .args(args)
        .output()
        .expect("redis-cli is installed (Debian redis-tools; scripts/test installs it)");
    assert!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A reply, as much of RESP2 as these tests read.
#[derive(Debug, PartialEq)]
enum R {
    Ok(String),
    Err(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
}

/// The smallest RESP client: one command, one reply.
struct Conn {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl Conn {
    async fn open(addr: &str) -> std::io::Result<Conn> {
        let s = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await??;
        let (r, w) = s.into_split();
        Ok(Conn { r: BufReader::new(r), w })
    }

    fn encode(args: &[&[u8]], b: &mut Vec<u8>) {
        b.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            b.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            b.extend_from_slice(a);
            b.extend_from_slice(b"\r\n");
        }
    }

    async fn call(&mut self, args: &[&[u8]]) -> std::io::Result<R> {
        let mut b = Vec::new();
        Self::encode(args, &mut b);
        self.w.write_all(&b).await?;
        self.reply().await
    }

    /// Sends every command in one write, then reads their replies.
    async fn pipeline(&mut self, cmds: &[Vec<&[u8]>]) -> std::io::Result<Vec<R>> {
        let mut b = Vec::new();
        for c in cmds {
            Self::encode(c, &mut b);
        }
        self.w.write_all(&b).await?;
        let mut out = Vec::with_capacity(cmds.len());
        for _ in cmds {
            out.push(self.reply().await?);
        }
        Ok(out)
    }

    async fn reply(&mut self) -> std::io::Result<R> {
        let mut line = String::new();
        self.r.read_line(&mut line).await?;
        let body = line.trim_end().to_string();
        let bad = || std::io::Error::other(format!("unexpected reply line {line:?}"));
        match body.chars().next() {
            Some('+') => Ok(R::Ok(body[1..].to_string())),
            Some('-') => Ok(R::Err(body[1..].to_string())),
            Some(':') => Ok(R::Int(body[1..].parse().map_err(|_| bad())?)),
            Some('$') => {
                let n: i64 = body[1..].parse().map_err(|_| bad())?;
                if n < 0 {
                    return Ok(R::Bulk(None));
                }
                let mut v = vec![0; n as usize + 2];
                self.r.read_exact(&mut v).await?;
                v.truncate(n as usize);
                Ok(R::Bulk(Some(v)))
            }
            _ => Err(bad()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_works_against_every_node() {
    let t = common::start(3, &[]).await;
    let nodes = t.redis_addrs();
    // The data tier forms after the meta group: wait for its first answer.
    let end = Instant::now() + Duration::from_secs(30);
    while cli(&nodes[0], &["SET", "warmup", "1"]) != "OK" {
        assert!(Instant::now() < end, "the data tier never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A write on one node is read on every node.
    assert_eq!(cli(&nodes[0], &["SET", "foo", "bar"]), "OK");
    for n in &nodes {
        assert_eq!(cli(n, &["GET", "foo"]), "bar");
    }
    assert_eq!(cli(&nodes[1], &["INCR", "counter"]), "1");
    assert_eq!(cli(&nodes[2], &["INCRBY", "counter", "41"]), "42");
    assert_eq!(cli(&nodes[0], &["GET", "nothere"]), "");
    // "foo" (slot 12182) and "bar" (slot 5061) sit in different ranges of the four the Redis
    // keyspace starts in; "{t}a" and "{t}b" share a slot.
    assert_eq!(
        cli(&nodes[0], &["MSET", "foo", "1", "bar", "2"]),
        "CROSSSLOT Keys in request don't hash to the same slot"
    );
    assert_eq!(cli(&nodes[0], &["MSET", "{t}a", "1", "{t}b", "2"]), "OK");
    assert_eq!(cli(&nodes[1], &["MGET", "foo", "counter", "nothere", "{t}b"]), "bar\n42\n\n2");
    assert_eq!(cli(&nodes[2], &["EXISTS", "foo", "counter", "nothere"]), "2");
    assert_eq!(cli(&nodes[2], &["DBSIZE"]), "5");
    let mut keys: Vec<String> = cli(&nodes[1], &["KEYS", "*"]).lines().map(String::from).collect();
    keys.sort();
    assert_eq!(keys, vec!["counter", "foo", "warmup", "{t}a", "{t}b"]);
    assert_eq!(cli(&nodes[0], &["DEL", "foo", "counter", "nothere"]), "2");
    assert_eq!(cli(&nodes[1], &["WRONG"]), "ERR unknown command 'WRONG', with args beginning with:");
    // Real expiry, decided by the range leader's clock.
    assert_eq!(cli(&nodes[0], &["SET", "short", "x", "PX", "300"]), "OK");
    assert_eq!(cli(&nodes[2], &["GET", "short"]), "x");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(cli(&nodes[1], &["GET", "short"]), "");
    assert_eq!(cli(&nodes[1], &["SET", "long", "x", "EX", "1000"]), "OK");
    let ttl: i64 = cli(&nodes[2], &["TTL", "long"]).parse().unwrap();
    assert!((998..=1000).contains(&ttl), "TTL {ttl}");
    // SCAN visits every range: 200 keys, in pages of 10, each exactly once.
    for i in 0..200 {
        let k = format!("scan:{i}");
        let mut c = Conn::open(&nodes[i % 3]).await.unwrap();
        assert_eq!(c.call(&[b"SET", k.as_bytes(), b"v"]).await.unwrap(), R::Ok("OK".into()));
    }
    let mut seen = BTreeSet::new();
    let mut cursor = "0".to_string();
    let mut pages = 0;
    loop {
        let out = cli(&nodes[0], &["SCAN", &cursor, "MATCH", "scan:*", "COUNT", "10"]);
        let mut lines = out.lines();
        cursor = lines.next().unwrap().to_string();
        for k in lines {
            assert!(seen.insert(k.to_string()), "SCAN returned {k} twice");
        }
        pages += 1;
        assert!(pages < 500, "SCAN does not end");
        if cursor == "0" {
            break;
        }
    }
    assert_eq!(seen.len(), 200, "SCAN missed keys");
    assert_eq!(cli(&nodes[2], &["FLUSHALL"]), "OK");
    assert_eq!(cli(&nodes[0], &["DBSIZE"]), "0");
}

/// Waits until the data tier answers on `addr`.
/// Waits until each of the four first Redis ranges (4,096 slots each) answers a write: a
/// fresh cluster's ranges elect their leaders one by one, and a client meanwhile may be told
/// to try again (redis-benchmark then prints an error: seen once in `cluster_clients_see_the_ranges_as_slots`).
async fn wait_tier(addr: &str) {
    let end = Instant::now() + Duration::from_secs(30);
    while cli(addr, &["SET", "warmup", "1"]) != "OK" {
        assert!(Instant::now() < end, "the data tier never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for block in 0..4u64 {
        let (key, _) = key_in_slots(addr, "warmup", block * 4096..(block + 1) * 4096);
        while cli(addr, &["SET", &key, "1"]) != "OK" {
            assert!(Instant::now() < end, "the Redis range of slots from {} never answered", block * 4096);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Only "warmup" stays (tests count the keys).
        assert_eq!(cli(addr, &["DEL", &key]), "1");
    }
}

/// Cluster-aware clients: CLUSTER SLOTS/SHARDS/NODES describe every range's leader and
/// replicas by their Redis URLs; redis-py's RedisCluster and redis-benchmark --cluster use
/// them; redis-cli -c works from any node.
/// redis-py (plain and RedisCluster, tests/scripts/redis_cluster_check.py) and
/// `redis-benchmark --cluster` (which reads CLUSTER NODES and sends each key to its slot's
/// master, following MOVED) against `nodes`.
fn cluster_clients_work(nodes: &[String]) {
    // redis-py, plain and RedisCluster.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scripts/redis_cluster_check.py");
    let out = Command::new("/usr/bin/python3")
        .arg(script)
        .args(nodes)
        .output()
        .expect("python3 with redis-py (Debian python3-redis; scripts/test installs it)");
    assert!(
        out.status.success(),
        "redis-py: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // redis-benchmark --cluster reads CLUSTER NODES and sends each key to its slot's master.
    let (host, port) = nodes[0].rsplit_once(':').unwrap();
    let bench = Command::new("redis-benchmark")
        .args(["--cluster", "-h", host, "-p", port, "-c", "10", "-n", "500", "-t", "set,get", "-q", "--csv"])
        .output()
        .expect("redis-benchmark (Debian redis-tools)");
    let csv = String::from_utf8_lossy(&bench.stdout);
    assert!(bench.status.success(), "redis-benchmark: {csv}{}", String::from_utf8_lossy(&bench.stderr));
    assert!(csv.contains("\"SET\"") && csv.contains("\"GET\""), "redis-benchmark printed {csv}");
    assert!(!csv.to_lowercase().contains("error"), "redis-benchmark: {csv}");
}

/// The cluster clients against five nodes (ranges' replicas on three of them each): redis-cli
/// -c through every node, redis-py's RedisCluster and redis-benchmark --cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_clients_work_against_five_nodes() {
    let t = common::start(5, &[]).await;
    let nodes = t.redis_addrs();
    wait_tier(&nodes[0]).await;
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(cli(n, &["-c", "SET", &format!("five:{i}"), &format!("v{i}")]), "OK");
    }
    for n in &nodes {
        for i in 0..nodes.len() {
            assert_eq!(cli(n, &["-c", "GET", &format!("five:{i}")]), format!("v{i}"), "through {n}");
        }
    }
    cluster_clients_work(&nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_clients_see_the_ranges_as_slots() {
    let t = common::start(3, &[]).await;
    let nodes = t.redis_addrs();
    wait_tier(&nodes[0]).await;
    // Four Redis ranges of 4096 slots, each with a leader and two replicas among the nodes.
    let slots = cli_raw(&nodes[1], &["CLUSTER", "SLOTS"]);
    let lines: Vec<&str> = slots.lines().collect();
    // Per range: first slot, last slot, then per node its host, port, id and an empty
    // metadata map (a blank line in redis-cli's output).
    assert_eq!(lines.len(), 4 * (2 + 3 * 4), "{slots}");
    for (i, first) in [0, 4096, 8192, 12288].iter().enumerate() {
        let at = i * 14;
        assert_eq!(lines[at], first.to_string());
        assert_eq!(lines[at + 1], (first + 4095).to_string());
        let hosts: BTreeSet<String> =
            (0..3).map(|k| format!("{}:{}", lines[at + 2 + 4 * k], lines[at + 3 + 4 * k])).collect();
        assert_eq!(hosts, nodes.iter().cloned().collect(), "range of slots {first}: {slots}");
    }
    assert_eq!(cli(&nodes[0], &["CLUSTER", "KEYSLOT", "foo"]), "12182");
    let info = cli(&nodes[2], &["CLUSTER", "INFO"]);
    assert!(info.contains("cluster_state:ok") && info.contains("cluster_slots_assigned:16384"), "{info}");
    let node_lines = cli(&nodes[0], &["CLUSTER", "NODES"]);
    assert_eq!(node_lines.lines().count(), 3, "{node_lines}");
    assert_eq!(node_lines.lines().filter(|l| l.contains("myself")).count(), 1, "{node_lines}");
    let myid = cli(&nodes[0], &["CLUSTER", "MYID"]);
    assert_eq!(myid.len(), 40);
    assert!(node_lines.lines().any(|l| l.starts_with(&myid) && l.contains("myself")), "{node_lines}");
    assert!(cli(&nodes[0], &["INFO", "cluster"]).contains("cluster_enabled:1"));
    assert_eq!(cli(&nodes[0], &["READONLY"]), "OK");
    // The operators' view of the same: `cairn range list` and `cairn node list`.
    let run = |args: &[&str]| {
        let out = Command::new(common::binary())
            .args(args)
            .args(["--endpoints", &t.endpoints()[1], "-w", "json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let ranges = run(&["range", "list"]);
    let ranges = ranges.as_array().unwrap();
    assert_eq!(ranges.len(), 6, "{ranges:?}");
    let slot_ranges: Vec<&str> = ranges.iter().filter_map(|r| r["slots"].as_str()).collect();
    assert_eq!(slot_ranges, vec!["0-4095", "4096-8191", "8192-12287", "12288-16383"]);
    for r in ranges {
        assert_eq!(r["replicas"].as_array().unwrap().len(), 3, "{r}");
        assert!(r["leader"].is_string() && r["bytes"].is_u64() && r["id"].is_u64() && r["start"].is_string(), "{r}");
    }
    let nodes_json = run(&["node", "list"]);
    let nodes_json = nodes_json.as_array().unwrap();
    assert_eq!(nodes_json.len(), 3);
    let leaders: u64 = nodes_json.iter().map(|n| n["leaders"].as_u64().unwrap()).sum();
    assert_eq!(leaders, 6, "every range has one leader: {nodes_json:?}");
    for n in nodes_json {
        assert_eq!(n["state"], "up");
        assert_eq!(n["replicas"], 6);
        assert!(n["name"].is_string() && n["bytes"].is_u64(), "{n}");
    }
    // redis-cli in cluster mode, from any node.
    assert_eq!(cli(&nodes[2], &["-c", "SET", "hello", "world"]), "OK");
    assert_eq!(cli(&nodes[0], &["-c", "GET", "hello"]), "world");
    cluster_clients_work(&nodes);
    // The data tier's figures in /metrics: six replicas here, and batched log writes and calls.
    let ep = t.endpoints()[0].trim_start_matches("http://").to_string();
    let (code, body) = cairn_testkit::http::request(&ep, "GET", "/metrics", "").await.unwrap();
    assert_eq!(code, 200);
    let value = |name: &str| -> i64 {
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("{name} missing from /metrics"))
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(value("cairn_ranges"), 6);
    assert!(
        value("cairn_range_log_writes") > 0 && value("cairn_range_log_operations") >= value("cairn_range_log_writes")
    );
    assert!(value("cairn_range_transport_calls") > 0);
    assert!(value("cairn_range_transport_messages") >= value("cairn_range_transport_calls"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_redis_writes_survive_a_killed_node() {
    let mut t = common::start(3, &[]).await;
    let nodes = t.redis_addrs();
    let end = Instant::now() + Duration::from_secs(30);
    while cli(&nodes[0], &["SET", "warmup", "1"]) != "OK" {
        assert!(Instant::now() < end, "the data tier never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Writers on every node; member 0 is SIGKILLed while they run, then restarted.
    let w = Writers::start(&nodes);
    tokio::time::sleep(Duration::from_secs(2)).await;
    t.kill(0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    t.restart(0).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (acked, _) = w.stop().await;
    let survivors = acked.iter().filter(|k| !k.starts_with("w0:")).count();
    assert!(survivors > 50, "too few writes were acknowledged while a node was down: {survivors}");
    // Every acknowledged write is there, read through every node (the restarted one too).
    all_there(&nodes, &acked).await;
}

/// SET writers, one per address, each writing keys of its own, [`PIPELINE`] at a time, until
/// stopped.
struct Writers {
    acked: std::sync::Arc<parking_lot::Mutex<Vec<String>>>,
    /// Replies other than OK, and broken connections.
    errors: std::sync::Arc<parking_lot::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// SETs each writer sends in one pipeline.
const PIPELINE: usize = 8;

impl Writers {
    fn start(addrs: &[String]) -> Writers {
        let acked = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
        let errors = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (w, addr) in addrs.iter().enumerate() {
            let (acked, errors, stop, addr) = (acked.clone(), errors.clone(), stop.clone(), addr.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = 0;
                let mut conn: Option<Conn> = None;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if conn.is_none() {
                        conn = Conn::open(&addr).await.ok();
                        if conn.is_none() {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    }
                    // A pipeline of SETs, which the node sends to each range's leader as one
                    // batch per range. Refused or unknown: the next keys are new ones; only
                    // acknowledged keys count.
                    let keys: Vec<String> = (i..i + PIPELINE).map(|j| format!("w{w}:{j}")).collect();
                    i += PIPELINE;
                    let cmds: Vec<Vec<&[u8]>> =
                        keys.iter().map(|k| vec![&b"SET"[..], k.as_bytes(), k.as_bytes()]).collect();
                    match conn.as_mut().unwrap().pipeline(&cmds).await {
                        Ok(replies) => {
                            for (k, r) in keys.into_iter().zip(replies) {
                                match r {
                                    R::Ok(_) => acked.lock().push(k),
                                    other => errors.lock().push(format!("{k}: {other:?}")),
                                }
                            }
                        }
                        Err(e) => {
                            errors.lock().push(format!("{}..: {e}", keys[0]));
                            conn = None;
                        }
                    }
                }
            }));
        }
        Writers { acked, errors, stop, tasks }
    }

    fn acked(&self) -> usize {
        self.acked.lock().len()
    }

    /// Stops the writers: what was acknowledged, and the errors they saw.
    async fn stop(self) -> (Vec<String>, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let acked = self.acked.lock().clone();
        let errors = self.errors.lock().clone();
        (acked, errors)
    }
}

/// Every key in `acked` reads back as its own value through every node.
async fn all_there(nodes: &[String], acked: &[String]) {
    all_hold(nodes, acked, |k| k.as_bytes().to_vec()).await
}

/// Every key in `acked` reads back as `value(key)` through every node (the nodes at once).
async fn all_hold(nodes: &[String], acked: &[String], value: impl Fn(&str) -> Vec<u8>) {
    let checks = nodes.iter().map(|addr| {
        let value = &value;
        async move {
            let end = Instant::now() + Duration::from_secs(20);
            let mut c = loop {
                match Conn::open(addr).await {
                    Ok(c) => break c,
                    Err(e) => {
                        assert!(Instant::now() < end, "{addr}: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            };
            for k in acked {
                let got = loop {
                    match c.call(&[b"GET", k.as_bytes()]).await.unwrap() {
                        R::Err(_) if Instant::now() < end => tokio::time::sleep(Duration::from_millis(100)).await,
                        r => break r,
                    }
                };
                assert!(got == R::Bulk(Some(value(k))), "{addr}: acknowledged key {k} lost: {got:?}");
            }
        }
    });
    futures::future::join_all(checks).await;
}

/// `cairn ARGS --endpoints EP -w json`: its JSON, or its error text.
fn cairn_json(ep: &str, args: &[&str]) -> Result<serde_json::Value, String> {
    let out = Command::new(common::binary()).args(args).args(["--endpoints", ep, "-w", "json"]).output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).to_string());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("{args:?}: {e}"))
}

/// Operators split a range, move a replica off a node and hand leadership around while Redis
/// clients write through every node: no client sees an error, and every acknowledged write is
/// there afterwards. The moved-off node keeps nothing of the range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_split_move_and_change_leaders_under_writes() {
    // The placement driver is off: only the operator's changes happen.
    let t = common::start(4, &["--placement-interval", "0"]).await;
    let nodes = t.redis_addrs();
    wait_tier(&nodes[0]).await;
    let ep = t.endpoints()[0].clone();
    let w = Writers::start(&nodes);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A split at slot 2048 of the first Redis range (slots 0-4095).
    let split = cairn_json(&ep, &["range", "split", "--slot", "2048"]).unwrap();
    let (parent, new) = (split["range"].as_u64().unwrap(), split["new"].as_u64().unwrap());
    let ranges = cairn_json(&ep, &["range", "list"]).unwrap();
    let slots =
        |id: u64| ranges.as_array().unwrap().iter().find(|r| r["id"] == id).map(|r| r["slots"].clone()).unwrap();
    assert_eq!(slots(parent), "0-2047", "{ranges:#}");
    assert_eq!(slots(new), "2048-4095", "{ranges:#}");
    assert_eq!(ranges.as_array().unwrap().len(), 7);
    // Redis clients see it on every node, once each has read the directory again (it does
    // every 100 ms).
    for n in &nodes {
        let end = Instant::now() + Duration::from_secs(5);
        while !cli_raw(n, &["CLUSTER", "SLOTS"]).lines().any(|l| l == "2048") {
            assert!(Instant::now() < end, "{n} never showed the split in CLUSTER SLOTS");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Another split, and a merge back: the merged range holds slots 2048-4095 again.
    let second = cairn_json(&ep, &["range", "split", "--slot", "3072"]).unwrap();
    assert_eq!(second["range"], new);
    let right = second["new"].as_u64().unwrap();
    let merged = cairn_json(&ep, &["range", "merge", &new.to_string()]).unwrap();
    assert_eq!(merged["merged"], right);
    let after = cairn_json(&ep, &["range", "list"]).unwrap();
    let slots_now = after.as_array().unwrap().iter().find(|r| r["id"] == new).map(|r| r["slots"].clone()).unwrap();
    assert_eq!(slots_now, "2048-4095", "{after:#}");
    assert_eq!(after.as_array().unwrap().len(), 7, "{after:#}");
    assert!(after.as_array().unwrap().iter().all(|r| r["id"] != right), "{after:#}");
    let last = after.as_array().unwrap().last().unwrap()["id"].as_u64().unwrap();
    let nothing = cairn_json(&ep, &["range", "merge", &last.to_string()]).unwrap_err();
    assert!(nothing.contains("nothing on its right"), "{nothing}");
    // Splitting where a range starts already is refused with a clear message.
    let again = cairn_json(&ep, &["range", "split", "--slot", "2048"]).unwrap_err();
    assert!(again.contains("already starts at"), "{again}");
    // Move the new range's replica off one of its nodes onto the node that lacks it.
    let r = ranges.as_array().unwrap().iter().find(|r| r["id"] == new).unwrap().clone();
    let holders: Vec<String> = r["replicas"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().into()).collect();
    let names: Vec<String> = cairn_json(&ep, &["node", "list"])
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect();
    let to = names.iter().find(|n| !holders.contains(n)).unwrap().clone();
    // The leader's own replica moves: leadership goes first.
    let from = r["leader"].as_str().unwrap().to_string();
    let id = new.to_string();
    cairn_json(&ep, &["range", "move", &id, "--from", &from, "--to", &to]).unwrap();
    let ranges = cairn_json(&ep, &["range", "list"]).unwrap();
    let r = ranges.as_array().unwrap().iter().find(|r| r["id"] == new).unwrap().clone();
    let now: Vec<&str> = r["replicas"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    assert!(now.contains(&to.as_str()) && !now.contains(&from.as_str()) && now.len() == 3, "{r}");
    // Leadership moves on request, to each replica in turn.
    for n in &now {
        cairn_json(&ep, &["range", "transfer-leader", &id, "--to", n]).unwrap();
        let ranges = cairn_json(&ep, &["range", "list"]).unwrap();
        let r = ranges.as_array().unwrap().iter().find(|r| r["id"] == new).unwrap().clone();
        assert_eq!(r["leader"], *n, "{r}");
    }
    let bad = cairn_json(&ep, &["range", "transfer-leader", &id, "--to", &from]).unwrap_err();
    assert!(bad.contains("not a voter"), "{bad}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = w.acked();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(w.acked() > before, "writes stopped after the changes");
    let (acked, errors) = w.stop().await;
    assert!(errors.is_empty(), "clients saw errors during the changes: {:?}", &errors[..errors.len().min(10)]);
    assert!(acked.len() > 100, "too few writes: {}", acked.len());
    all_there(&nodes, &acked).await;
    // The node the replica left holds none of it: `node list` counts its replicas.
    let list = cairn_json(&ep, &["node", "list"]).unwrap();
    let total: u64 = list.as_array().unwrap().iter().map(|n| n["replicas"].as_u64().unwrap()).sum();
    assert_eq!(total, 7 * 3, "{list:#}");
    let want = list.as_array().unwrap().iter().find(|n| n["name"] == from.as_str()).unwrap()["replicas"].as_i64();
    // ...and so does the node itself: the replicas it runs, in its /metrics.
    let m = t.members.iter().find(|m| m.name == from).unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = cairn_testkit::http::request(m.client_url.trim_start_matches("http://"), "GET", "/metrics", "")
            .await
            .unwrap();
        let held = body.lines().find_map(|l| l.strip_prefix("cairn_ranges ")).map(|v| v.trim().parse::<i64>().unwrap());
        if held == want {
            break;
        }
        assert!(Instant::now() < end, "{from} still runs {held:?} range replicas, the directory gives it {want:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A node that was down while a range merged into its neighbour comes back and is caught up
/// by a snapshot past the merge (its peers purged the log that held it): nothing tells it of
/// the merge but the directory, which no longer lists the range merged away. It removes its
/// replica of that range, and its copy of the merged range holds every acknowledged key,
/// those written to the right range before the merge among them (the removal deletes only
/// keys no other range here holds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_missed_a_merge_removes_the_merged_range_and_keeps_its_keys() {
    // Snapshots every 100 entries; a follower 200 entries behind holds no log back.
    let mut t = common::start(3, &["--placement-interval", "0", "--snapshot-count", "100"]).await;
    let nodes = t.redis_addrs();
    wait_tier(&nodes[0]).await;
    let ep = t.endpoints()[0].clone();
    let split = cairn_json(&ep, &["range", "split", "--slot", "2048"]).unwrap();
    let (left, right) = (split["range"].as_u64().unwrap(), split["new"].as_u64().unwrap());
    // Keys of one hash slot of the right range (2048-4095), and of the left one.
    let (r_tag, _) = key_in_slots(&nodes[0], "r", 2048..4096);
    let (l_tag, _) = key_in_slots(&nodes[0], "l", 0..2048);
    let mut c = Conn::open(&nodes[0]).await.unwrap();
    let mut acked = Vec::new();
    let batch = |tag: &str, from: usize, n: usize| (from..from + n).map(|i| format!("{{{tag}}}:{i}")).collect();
    set_each(&mut c, batch(&r_tag, 0, 100), &mut acked).await;
    set_each(&mut c, batch(&l_tag, 0, 100), &mut acked).await;
    // Node 2 goes down; the right range takes more writes, merges into the left one, and the
    // merged range takes many more (one log entry each: its log is purged past the merge).
    t.kill(2);
    set_each(&mut c, batch(&r_tag, 100, 100), &mut acked).await;
    let merged = cairn_json(&ep, &["range", "merge", &left.to_string()]).unwrap();
    assert_eq!(merged["merged"], right);
    set_each(&mut c, batch(&r_tag, 200, 500), &mut acked).await;
    set_each(&mut c, batch(&l_tag, 100, 100), &mut acked).await;
    // Purges run every second.
    tokio::time::sleep(Duration::from_secs(3)).await;
    t.restart(2).unwrap();
    // Node 2 runs as many replicas as the directory gives it: the merged-away one is gone.
    let name = t.members[2].name.clone();
    let url = t.members[2].client_url.trim_start_matches("http://").to_string();
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let list = cairn_json(&ep, &["node", "list"]).unwrap();
        let want = list.as_array().unwrap().iter().find(|n| n["name"] == name.as_str()).unwrap()["replicas"].as_i64();
        let held = match cairn_testkit::http::request(&url, "GET", "/metrics", "").await {
            Ok((_, body)) => {
                body.lines().find_map(|l| l.strip_prefix("cairn_ranges ")).map(|v| v.trim().parse::<i64>().unwrap())
            }
            Err(_) => None,
        };
        if held.is_some() && held == want {
            break;
        }
        assert!(Instant::now() < end, "{name} still runs {held:?} range replicas, the directory gives it {want:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Its own copy of the merged range holds every key (READONLY reads its replica).
    let mut ro = Conn::open(&nodes[2]).await.unwrap();
    assert_eq!(ro.call(&[b"READONLY"]).await.unwrap(), R::Ok("OK".into()));
    let end = Instant::now() + Duration::from_secs(20);
    for k in &acked {
        loop {
            let got = ro.call(&[b"GET", k.as_bytes()]).await.unwrap();
            if got == R::Bulk(Some(k.as_bytes().to_vec())) {
                break;
            }
            assert!(Instant::now() < end, "node 2's replica lacks acknowledged key {k}: {got:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    all_there(&nodes, &acked).await;
}

/// SETs each key of `keys` to itself, one at a time, each acknowledged (added to `acked`).
/// A SET whose outcome is unknown is sent again until it is acknowledged: one forwarded to a
/// node just killed, before the forwarding node saw it go, ends with its stream ("ERR timeout:
/// the command may or may not have been executed"), as it should. Any other answer fails.
async fn set_each(c: &mut Conn, keys: Vec<String>, acked: &mut Vec<String>) {
    for k in keys {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            match c.call(&[b"SET", k.as_bytes(), k.as_bytes()]).await.unwrap() {
                R::Ok(ok) if ok == "OK" => break,
                R::Err(e) if e.starts_with("ERR timeout: the command may or may not have been executed") => {
                    assert!(Instant::now() < end, "{k}: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => panic!("{k}: {other:?}"),
            }
        }
        acked.push(k);
    }
}

/// The placement driver splits ranges that grow past `--range-split-bytes` and keeps replicas
/// spread over the nodes, while clients write with no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_placement_driver_splits_growing_ranges_and_spreads_them() {
    let t = common::start(4, &["--range-split-bytes", "65536", "--placement-interval", "300ms"]).await;
    let nodes = t.redis_addrs();
    wait_tier(&nodes[0]).await;
    let ep = t.endpoints()[1].clone();
    // About 1.5 MB of values through every node.
    let value = vec![b'v'; 512];
    let mut acked = Vec::new();
    let mut conns = Vec::new();
    for n in &nodes {
        conns.push(Conn::open(n).await.unwrap());
    }
    for i in 0..3000 {
        let k = format!("big:{i}");
        let c = &mut conns[i % nodes.len()];
        assert_eq!(c.call(&[b"SET", k.as_bytes(), &value]).await.unwrap(), R::Ok("OK".into()), "{k}");
        acked.push(k);
    }
    // Ranges split until none is past the limit by much, and replicas stay even.
    let end = Instant::now() + Duration::from_secs(60);
    let (ranges, counts) = loop {
        let ranges = cairn_json(&ep, &["range", "list"]).unwrap();
        let list = cairn_json(&ep, &["node", "list"]).unwrap();
        let counts: Vec<u64> = list.as_array().unwrap().iter().map(|n| n["replicas"].as_u64().unwrap()).collect();
        let biggest = ranges.as_array().unwrap().iter().filter_map(|r| r["bytes"].as_u64()).max().unwrap_or(0);
        let even = counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1;
        if ranges.as_array().unwrap().len() >= 16 && biggest <= 2 * 65536 && even {
            break (ranges, counts);
        }
        assert!(
            Instant::now() < end,
            "placement did not settle: biggest range {biggest} bytes, replicas per node {counts:?}, ranges {ranges:#}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("{} ranges; replicas per node {counts:?}", ranges.as_array().unwrap().len());
    all_hold(&nodes, &acked, |_| value.clone()).await;
}

/// The Redis range (from `cairn range list`'s slot intervals, "A-B") holding hash slot `slot`.
fn range_of_slot(ranges: &serde_json::Value, slot: u64) -> Option<(u64, String)> {
    ranges.as_array()?.iter().find_map(|r| {
        let s = r["slots"].as_str()?;
        let (a, b) = s.split_once('-')?;
        (a.parse::<u64>().ok()? <= slot && slot <= b.parse::<u64>().ok()?)
            .then(|| (r["id"].as_u64().unwrap(), s.into()))
    })
}

/// A key of `prefix` whose hash slot lies in `slots` (CLUSTER KEYSLOT), and that slot.
fn key_in_slots(addr: &str, prefix: &str, slots: std::ops::Range<u64>) -> (String, u64) {
    (0..10_000)
        .map(|i| format!("{prefix}{i}"))
        .find_map(|k| {
            let slot: u64 = cli(addr, &["CLUSTER", "KEYSLOT", &k]).parse().unwrap();
            slots.contains(&slot).then_some((k, slot))
        })
        .unwrap()
}

/// GETs of `keys`, in turn, through `addr` until `stop` is set (about 2,000/s or more here).
fn hammer(
    addr: String,
    keys: Vec<String>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut c = Conn::open(&addr).await.unwrap();
        let mut n = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let k = &keys[n as usize % keys.len()];
            assert_eq!(c.call(&[b"GET", k.as_bytes()]).await.unwrap(), R::Bulk(Some(b"v".to_vec())), "{k}");
            n += 1;
        }
        n
    })
}

/// A split by load cuts where the load divides: a hot range whose requests all go to one hash
/// slot does not split (it would only set an empty, cold range beside itself, which merged back
/// and split again for as long as the load came and went); one whose requests go to two slots
/// splits between them. Once cold for `--range-merge-delay`, the halves merge again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_by_load_cuts_where_the_load_divides() {
    let t =
        common::start(3, &["--range-split-qps", "300", "--placement-interval", "300ms", "--range-merge-delay", "3s"])
            .await;
    let nodes = t.redis_addrs();
    wait_tier(&nodes[0]).await;
    let ep = t.endpoints()[0].clone();
    // Two keys of the first Redis range (slots 0-4095), far apart in it.
    let (a, slot_a) = key_in_slots(&nodes[0], "a", 100..1000);
    let (b, slot_b) = key_in_slots(&nodes[0], "b", 3000..4000);
    for k in [&a, &b] {
        assert_eq!(cli(&nodes[0], &["SET", k, "v"]), "OK");
    }
    let ranges = cairn_json(&ep, &["range", "list"]).unwrap();
    let (first, slots) = range_of_slot(&ranges, slot_a).unwrap();
    assert_eq!(slots, "0-4095", "{ranges:#}");

    // All the load on one slot: no split, however hot.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..2).map(|_| hammer(nodes[0].clone(), vec![a.clone()], stop.clone())).collect();
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut gets = 0;
    for h in load {
        gets += h.await.unwrap();
    }
    assert!(gets > 300 * 5 * 2, "the load was not hot enough to test anything: {gets} GETs in 5 s");
    let ranges = cairn_json(&ep, &["range", "list"]).unwrap();
    assert_eq!(range_of_slot(&ranges, slot_a), Some((first, "0-4095".into())), "{ranges:#}");

    // The load on two slots: the range splits between them.
    stop.store(false, std::sync::atomic::Ordering::Relaxed);
    let load: Vec<_> = (0..2).map(|_| hammer(nodes[0].clone(), vec![a.clone(), b.clone()], stop.clone())).collect();
    let end = Instant::now() + Duration::from_secs(30);
    let split = loop {
        let ranges = cairn_json(&ep, &["range", "list"]).unwrap();
        let (ra, rb) = (range_of_slot(&ranges, slot_a).unwrap(), range_of_slot(&ranges, slot_b).unwrap());
        if ra.0 != rb.0 {
            break (ra, rb);
        }
        assert!(Instant::now() < end, "the range never split between slots {slot_a} and {slot_b}: {ranges:#}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in load {
        h.await.unwrap();
    }
    eprintln!("split by load: {split:?}");

    // Cold for the merge delay, the halves merge back into slots 0-4095.
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let ranges = cairn_json(&ep, &["range", "list"]).unwrap();
        if range_of_slot(&ranges, slot_a).is_some_and(|(_, s)| s == "0-4095") {
            break;
        }
        assert!(Instant::now() < end, "the cold halves never merged: {ranges:#}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for k in [&a, &b] {
        assert_eq!(cli(&nodes[1], &["GET", k]), "v");
    }
}

/// Two data nodes join a loaded 3-node cluster with `--join`; the placement driver moves
/// replicas onto them until counts are even, while clients write with no error; then
/// `cairn node remove` moves one node's replicas off again and takes it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_nodes_join_and_leave_while_clients_write() {
    let mut t = common::start(3, &["--range-split-bytes", "65536", "--placement-interval", "300ms"]).await;
    let nodes = t.redis_addrs();
    wait_tier(&nodes[0]).await;
    let ep = t.endpoints()[0].clone();
    let value = vec![b'v'; 512];
    let mut c = Conn::open(&nodes[0]).await.unwrap();
    let mut loaded = Vec::new();
    for i in 0..1500 {
        let k = format!("load:{i}");
        assert_eq!(c.call(&[b"SET", k.as_bytes(), &value]).await.unwrap(), R::Ok("OK".into()), "{k}");
        loaded.push(k);
    }
    let w = Writers::start(&nodes);
    let started = Instant::now();
    let joined: Vec<usize> = (0..2).map(|_| t.join_member()).collect();
    for &i in &joined {
        t.start_member(i).unwrap();
    }
    // Replicas even out over the five nodes.
    let end = Instant::now() + Duration::from_secs(120);
    let counts = loop {
        let list = cairn_json(&ep, &["node", "list"]).unwrap();
        let list = list.as_array().unwrap().clone();
        let counts: Vec<u64> = list.iter().map(|n| n["replicas"].as_u64().unwrap()).collect();
        let even = counts.len() == 5 && counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1;
        if even {
            for n in &list {
                assert_eq!(n["state"], "up", "{n}");
            }
            let roles: Vec<&str> = list.iter().map(|n| n["role"].as_str().unwrap()).collect();
            assert_eq!(roles.iter().filter(|r| **r == "data").count(), 2, "{roles:?}");
            break counts;
        }
        assert!(Instant::now() < end, "replicas never evened out: {counts:?}\n{}", t.logs_tail(20));
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("two nodes joined; replicas per node {counts:?} after {:?}", started.elapsed());
    // The new nodes serve Redis like the others.
    let new_addrs: Vec<String> =
        joined.iter().map(|&i| t.members[i].redis_url.trim_start_matches("redis://").to_string()).collect();
    assert_eq!(cli(&new_addrs[0], &["GET", "load:7"]), String::from_utf8(value.clone()).unwrap());
    // One of them leaves again: its replicas move to the other four first.
    let gone = t.members[joined[1]].name.clone();
    let out = Command::new(common::binary()).args(["node", "remove", &gone, "--endpoints", &ep]).output().unwrap();
    assert!(out.status.success(), "node remove: {}", String::from_utf8_lossy(&out.stderr));
    let list = cairn_json(&ep, &["node", "list"]).unwrap();
    assert!(list.as_array().unwrap().iter().all(|n| n["name"] != gone.as_str()), "{list:#}");
    // No range keeps a replica on it, and every range has its three. (One snapshot of the
    // directory: the writers go on splitting ranges, so counts taken from two calls may
    // differ. The driver may still be moving a replica between the other four, and a range
    // in the middle of that change lists both nodes for a moment, so that part is waited for.)
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let ranges = cairn_json(&ep, &["range", "list"]).unwrap();
        let replicas: Vec<Vec<&str>> = ranges
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["replicas"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect())
            .collect();
        assert!(replicas.iter().all(|r| !r.contains(&gone.as_str())), "{gone} still holds a replica: {ranges:#}");
        if replicas.iter().all(|r| r.len() == 3) {
            break;
        }
        assert!(Instant::now() < end, "ranges without three replicas: {ranges:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A voter of the meta group is drained, not removed: etcdctl member remove does that.
    let voter = t.members[2].name.clone();
    let bad = Command::new(common::binary())
        .args(["node", "remove", &voter, "--endpoints", &ep, "--timeout", "2m"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("etcdctl member remove"), "{err}");
    let (acked, errors) = w.stop().await;
    assert!(errors.is_empty(), "clients saw errors: {:?}", &errors[..errors.len().min(10)]);
    let mut c = Conn::open(&nodes[0]).await.unwrap();
    for k in &loaded {
        if c.call(&[b"GET", k.as_bytes()]).await.unwrap() == R::Bulk(None) {
            let slot = cli(&nodes[0], &["CLUSTER", "KEYSLOT", k]);
            let ranges = cairn_json(&ep, &["range", "list"]).unwrap();
            for m in &t.members {
                let _ = std::fs::copy(&m.log, format!("/tmp/lost-{}.log", m.name));
            }
            panic!("{k} (slot {slot}) lost; ranges {ranges:#}");
        }
    }
    all_there(&nodes, &acked).await;
    all_hold(&nodes, &loaded, |_| value.clone()).await;
}

/// A cluster started on one node gives each range one replica. As two data nodes join, the
/// placement driver adds replicas until every range has three, while a client writes with no
/// error; then one of the new nodes is killed, and every acknowledged write is still read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_node_clusters_ranges_reach_three_replicas_as_nodes_join() {
    let mut t = common::start(1, &["--placement-interval", "300ms"]).await;
    let first = t.redis_addrs()[0].clone();
    wait_tier(&first).await;
    let ep = t.endpoints()[0].clone();
    let replicas = |ranges: &serde_json::Value| -> Vec<usize> {
        ranges.as_array().unwrap().iter().map(|r| r["replicas"].as_array().unwrap().len()).collect()
    };
    let ranges = cairn_json(&ep, &["range", "list"]).unwrap();
    assert!(replicas(&ranges).iter().all(|n| *n == 1), "{ranges:#}");
    let mut c = Conn::open(&first).await.unwrap();
    let mut loaded = Vec::new();
    for i in 0..500 {
        let k = format!("early:{i}");
        assert_eq!(c.call(&[b"SET", k.as_bytes(), k.as_bytes()]).await.unwrap(), R::Ok("OK".into()), "{k}");
        loaded.push(k);
    }
    let w = Writers::start(std::slice::from_ref(&first));
    let joined: Vec<usize> = (0..2).map(|_| t.join_member()).collect();
    for &i in &joined {
        t.start_member(i).unwrap();
    }
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let ranges = cairn_json(&ep, &["range", "list"]).unwrap();
        if replicas(&ranges).iter().all(|n| *n == 3) {
            break;
        }
        assert!(Instant::now() < end, "ranges never reached three replicas: {ranges:#}\n{}", t.logs_tail(20));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (mut acked, errors) = w.stop().await;
    assert!(errors.is_empty(), "clients saw errors: {:?}", &errors[..errors.len().min(10)]);
    assert!(!acked.is_empty());
    acked.extend(loaded);
    // Every range now has a quorum without the node it lost.
    t.kill(joined[1]);
    let left = vec![first, t.members[joined[0]].redis_url.trim_start_matches("redis://").to_string()];
    all_there(&left, &acked).await;
    assert_eq!(cli(&left[1], &["SET", "after", "kill"]), "OK");
}

/// The index in `nodes` of the node leading the range that holds `key` (CLUSTER SLOTS lists
/// each slot interval's leader first).
fn leader_of(nodes: &[String], key: &str) -> usize {
    let slot: u32 = cli(&nodes[0], &["CLUSTER", "KEYSLOT", key]).parse().unwrap();
    let slots = cli_raw(&nodes[0], &["CLUSTER", "SLOTS"]);
    let lines: Vec<&str> = slots.lines().collect();
    let mut at = 0;
    while at + 3 < lines.len() {
        let (first, last): (u32, u32) = (lines[at].parse().unwrap(), lines[at + 1].parse().unwrap());
        if (first..=last).contains(&slot) {
            let addr = format!("{}:{}", lines[at + 2], lines[at + 3]);
            return nodes.iter().position(|n| *n == addr).expect("a known node");
        }
        at += 14;
    }
    panic!("no range holds slot {slot}: {slots}");
}

/// A pipeline's reads, and its writes, of one range go to the range's leader as one batch
/// (`services::cache::Cache::read_many`, `write_many`); each still gets its own answer, in
/// order, whatever the mix: keys of ranges led here and elsewhere, missing keys, commands over
/// several ranges, errors, a write between two reads of its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commands_are_each_answered_in_order() {
    let t = common::start(3, &[]).await;
    let nodes = t.redis_addrs();
    wait_tier(&nodes[0]).await;
    let keys: Vec<String> = (0..40).map(|i| format!("p:{i}")).collect();
    let mut c = Conn::open(&nodes[0]).await.unwrap();
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(c.call(&[b"SET", k.as_bytes(), format!("v{i}").as_bytes()]).await.unwrap(), R::Ok("OK".into()));
    }
    assert_eq!(c.call(&[b"SET", b"p:ttl", b"x", b"EX", b"1000"]).await.unwrap(), R::Ok("OK".into()));
    assert_eq!(c.call(&[b"MSET", b"{t}a", b"1", b"{t}b", b"2"]).await.unwrap(), R::Ok("OK".into()));
    // Once the placement driver has spread the leaders, on each node some reads are batched
    // where it leads and the rest are proxied.
    let end = Instant::now() + Duration::from_secs(60);
    while keys.iter().map(|k| leader_of(&nodes, k)).collect::<BTreeSet<usize>>().len() < nodes.len() {
        assert!(Instant::now() < end, "the keys' ranges were never led by every node");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for n in &nodes {
        let mut c = Conn::open(n).await.unwrap();
        let mut cmds: Vec<Vec<&[u8]>> = Vec::new();
        let mut want: Vec<R> = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            cmds.push(vec![b"GET", k.as_bytes()]);
            want.push(R::Bulk(Some(format!("v{i}").into_bytes())));
            if i % 7 == 0 {
                cmds.push(vec![b"STRLEN", k.as_bytes()]);
                want.push(R::Int(format!("v{i}").len() as i64));
                cmds.push(vec![b"GET", b"p:missing"]);
                want.push(R::Bulk(None));
            }
        }
        cmds.push(vec![b"EXISTS", b"p:1", b"p:2", b"p:3", b"p:missing"]);
        want.push(R::Int(3));
        cmds.push(vec![b"SET", b"p:5", b"changed"]);
        want.push(R::Ok("OK".into()));
        cmds.push(vec![b"GET", b"p:5"]);
        want.push(R::Bulk(Some(b"changed".to_vec())));
        cmds.push(vec![b"SET", b"p:5", b"v5"]);
        want.push(R::Ok("OK".into()));
        cmds.push(vec![b"TTL", b"p:ttl"]);
        let mut got = c.pipeline(&cmds).await.unwrap();
        match got.pop() {
            Some(R::Int(ttl)) => assert!((990..=1000).contains(&ttl), "TTL {ttl}"),
            other => panic!("TTL answered {other:?}"),
        }
        assert_eq!(got, want, "pipelined on {n}");
        assert_eq!(cli(n, &["MGET", "{t}a", "{t}b"]), "1\n2");
    }
    // Pipelined writes: those of one range go to its leader together, each answered on its own.
    for (at, n) in nodes.iter().enumerate() {
        let mut c = Conn::open(n).await.unwrap();
        let values: Vec<(String, String)> = (0..40).map(|i| (format!("w:{i}"), format!("n{at}-{i}"))).collect();
        let mut cmds: Vec<Vec<&[u8]>> = Vec::new();
        let mut want: Vec<R> = Vec::new();
        for (i, (k, v)) in values.iter().enumerate() {
            cmds.push(vec![b"SET", k.as_bytes(), v.as_bytes()]);
            want.push(R::Ok("OK".into()));
            if i % 5 == 0 {
                cmds.push(vec![b"APPEND", b"w:log", v.as_bytes()]);
                want.push(R::Int(0)); // checked below: the log grows by each value in order
                cmds.push(vec![b"INCR", k.as_bytes()]);
                want.push(R::Err("ERR value is not an integer or out of range".into()));
            }
        }
        cmds.push(vec![b"MSET", b"foo", b"1", b"bar", b"2"]);
        want.push(R::Err("CROSSSLOT Keys in request don't hash to the same slot".into()));
        cmds.push(vec![b"DEL", b"w:0", b"w:1", b"w:2", b"w:missing"]);
        want.push(R::Int(3));
        let got = c.pipeline(&cmds).await.unwrap();
        let mut log_len = 0;
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            if cmds[i][0] == b"APPEND" {
                log_len += cmds[i][2].len() as i64;
                // Earlier nodes' rounds appended too: the length only grows, by this value.
                match g {
                    R::Int(len) => assert!(*len >= log_len, "APPEND answered {len}"),
                    other => panic!("APPEND answered {other:?}"),
                }
            } else {
                assert_eq!(g, w, "pipelined write {i} on {n}: {:?}", String::from_utf8_lossy(&cmds[i].concat()));
            }
        }
        for (k, v) in values.iter().skip(3) {
            assert_eq!(cli(&nodes[(at + 1) % nodes.len()], &["GET", k]), *v);
        }
        assert_eq!(cli(n, &["EXISTS", "w:0", "w:1", "w:2"]), "0");
    }
}

/// A connection that asked for the cluster's layout (as redis-py's RedisCluster and
/// redis-benchmark --cluster do) is a cluster-aware client: a key led by another node answers
/// Redis Cluster's MOVED with that node's Redis address, and the command does not run. Other
/// connections are proxied to the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_aware_connections_are_moved_to_the_leader() {
    let t = common::start(3, &["--placement-interval", "0"]).await;
    let nodes = t.redis_addrs();
    wait_tier(&nodes[0]).await;
    assert_eq!(cli(&nodes[0], &["SET", "m-key", "v1"]), "OK");
    let leader = leader_of(&nodes, "m-key");
    let other = (leader + 1) % nodes.len();
    let slot = cli(&nodes[0], &["CLUSTER", "KEYSLOT", "m-key"]);
    let mut c = Conn::open(&nodes[other]).await.unwrap();
    assert_eq!(c.call(&[b"SET", b"m-key", b"v2"]).await.unwrap(), R::Ok("OK".into()), "a plain client is proxied");
    assert!(matches!(c.call(&[b"CLUSTER", b"NODES"]).await.unwrap(), R::Bulk(Some(_))));
    let moved = R::Err(format!("MOVED {slot} {}", nodes[leader]));
    assert_eq!(c.call(&[b"SET", b"m-key", b"v3"]).await.unwrap(), moved);
    assert_eq!(c.call(&[b"GET", b"m-key"]).await.unwrap(), moved);
    assert_eq!(c.call(&[b"INCR", b"m-key"]).await.unwrap(), moved);
    // READONLY reads are served by this node's replica, which holds v2, not v3: MOVED ran
    // nothing.
    assert_eq!(c.call(&[b"READONLY"]).await.unwrap(), R::Ok("OK".into()));
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match c.call(&[b"GET", b"m-key"]).await.unwrap() {
            R::Bulk(Some(v)) if v == b"v2" => break,
            R::Bulk(Some(v)) if v == b"v1" && Instant::now() < end => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => panic!("a READONLY read here answered {other:?}"),
        }
    }
    assert_eq!(c.call(&[b"SET", b"m-key", b"v3"]).await.unwrap(), moved, "writes still go to the leader");
    // At the leader, a cluster-aware connection runs the command; after RESET, a connection
    // is proxied again.
    let mut l = Conn::open(&nodes[leader]).await.unwrap();
    assert!(matches!(l.call(&[b"CLUSTER", b"NODES"]).await.unwrap(), R::Bulk(Some(_))));
    assert_eq!(l.call(&[b"SET", b"m-key", b"v4"]).await.unwrap(), R::Ok("OK".into()));
    assert_eq!(c.call(&[b"RESET"]).await.unwrap(), R::Ok("RESET".into()));
    assert_eq!(c.call(&[b"GET", b"m-key"]).await.unwrap(), R::Bulk(Some(b"v4".to_vec())));
    // redis-cli -c follows MOVED (here it is proxied: it asks for no layout first).
    assert_eq!(cli(&nodes[other], &["-c", "GET", "m-key"]), "v4");
}

/// READONLY (Redis Cluster's replica reads): a connection's reads are answered by its node's
/// own replica, leader or not, so they go on even when the range has no quorum; writes still
/// go to the leader; READWRITE goes back to leader reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readonly_connections_read_from_their_nodes_replica() {
    let mut t = common::start(3, &["--placement-interval", "0"]).await;
    let nodes = t.redis_addrs();
    wait_tier(&nodes[0]).await;
    assert_eq!(cli(&nodes[0], &["SET", "ro-key", "v1"]), "OK");
    let leader = leader_of(&nodes, "ro-key");
    let reader = (leader + 1) % nodes.len();
    let mut c = Conn::open(&nodes[reader]).await.unwrap();
    assert_eq!(c.call(&[b"READONLY"]).await.unwrap(), R::Ok("OK".into()));
    // The follower applies what the leader committed soon after.
    let end = Instant::now() + Duration::from_secs(10);
    while c.call(&[b"GET", b"ro-key"]).await.unwrap() != R::Bulk(Some(b"v1".to_vec())) {
        assert!(Instant::now() < end, "node {reader}'s replica never applied ro-key");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The leader and the third node stop: no quorum, so no leader can answer a read. The
    // READONLY connection's reads still do, from its node's replica.
    let third = 3 - leader - reader;
    t.pause(leader);
    t.pause(third);
    for _ in 0..3 {
        let got = tokio::time::timeout(Duration::from_secs(10), c.call(&[b"GET", b"ro-key"])).await;
        assert_eq!(got.expect("a READONLY read waited for a leader").unwrap(), R::Bulk(Some(b"v1".to_vec())));
        let missing = tokio::time::timeout(Duration::from_secs(10), c.call(&[b"EXISTS", b"ro-key", b"ro-none"])).await;
        assert_eq!(missing.expect("a READONLY read waited for a leader").unwrap(), R::Int(1));
    }
    t.resume(leader);
    t.resume(third);
    // Writes go to the leader; READWRITE reads from it again and sees them at once.
    assert_eq!(c.call(&[b"SET", b"ro-key", b"v2"]).await.unwrap(), R::Ok("OK".into()));
    assert_eq!(c.call(&[b"READWRITE"]).await.unwrap(), R::Ok("OK".into()));
    assert_eq!(c.call(&[b"GET", b"ro-key"]).await.unwrap(), R::Bulk(Some(b"v2".to_vec())));
}

/// With cairn's auth enabled (etcdctl), Redis connections must AUTH as a cairn user: AUTH
/// user pass, HELLO 3 AUTH, redis-cli --user/--pass; a wrong password is Redis's WRONGPASS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_auth_checks_cairns_users() {
    let t = common::start(3, &[]).await;
    let nodes = t.redis_addrs();
    wait_tier(&nodes[0]).await;
    let eps = t.endpoints();
    for args in [&["user", "add", "root:rootpw"][..], &["user", "add", "app:apppw"], &["auth", "enable"]] {
        let o = common::etcdctl(&eps, args);
        assert!(o.status.success(), "etcdctl {args:?}: {}", common::stderr(&o));
    }
    // Every node sees auth on once it has applied the change.
    for n in &nodes {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let mut c = Conn::open(n).await.unwrap();
            match c.call(&[b"GET", b"k"]).await.unwrap() {
                R::Err(e) if e.starts_with("NOAUTH") => break,
                other => assert!(Instant::now() < end, "{n}: auth never required: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut c = Conn::open(&nodes[1]).await.unwrap();
    assert_eq!(
        c.call(&[b"AUTH", b"app", b"nope"]).await.unwrap(),
        R::Err("WRONGPASS invalid username-password pair or user is disabled.".into())
    );
    assert!(matches!(c.call(&[b"SET", b"k", b"v"]).await.unwrap(), R::Err(e) if e.starts_with("NOAUTH")));
    assert_eq!(c.call(&[b"AUTH", b"app", b"apppw"]).await.unwrap(), R::Ok("OK".into()));
    assert_eq!(c.call(&[b"SET", b"k", b"v"]).await.unwrap(), R::Ok("OK".into()));
    assert_eq!(c.call(&[b"GET", b"k"]).await.unwrap(), R::Bulk(Some(b"v".to_vec())));
    // RESET forgets who the connection was.
    assert_eq!(c.call(&[b"RESET"]).await.unwrap(), R::Ok("RESET".into()));
    assert!(matches!(c.call(&[b"GET", b"k"]).await.unwrap(), R::Err(e) if e.starts_with("NOAUTH")));
    // redis-cli, as a user with a password; and without, refused.
    let (host, port) = nodes[2].rsplit_once(':').unwrap();
    let out = Command::new("redis-cli")
        .args(["-h", host, "-p", port, "--user", "root", "--pass", "rootpw", "--no-auth-warning", "GET", "k"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v");
    assert!(cli(&nodes[2], &["GET", "k"]).starts_with("NOAUTH"), "a connection without AUTH read a key");
    // The data tier's admin changes are root's, as etcd's admin calls: no user, then a user
    // without the root role, are refused and change nothing; root splits.
    let before = cairn_json(&eps[0], &["range", "list"]).unwrap().as_array().unwrap().len();
    let split = |who: &[&str]| {
        Command::new(common::binary())
            .args(["range", "split", "--slot", "100", "--endpoints", &eps[0]])
            .args(who)
            .output()
            .unwrap()
    };
    let o = split(&[]);
    assert!(!o.status.success() && common::stderr(&o).contains("user name is empty"), "{}", common::stderr(&o));
    let o = split(&["--user", "app:apppw"]);
    assert!(!o.status.success() && common::stderr(&o).contains("permission denied"), "{}", common::stderr(&o));
    let o = split(&["--user", "root:wrong"]);
    assert!(!o.status.success() && common::stderr(&o).contains("authentication failed"), "{}", common::stderr(&o));
    assert_eq!(cairn_json(&eps[0], &["range", "list"]).unwrap().as_array().unwrap().len(), before);
    let o = split(&["--user", "root:rootpw"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert_eq!(cairn_json(&eps[0], &["range", "list"]).unwrap().as_array().unwrap().len(), before + 1);
}

/// Active expiry: keys whose time has passed are deleted from storage by their range's leader
/// (not only hidden from reads), on every replica; keys without an expiry, or given a new one
/// in time, stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_keys_are_deleted_from_storage() {
    let t = common::start(3, &["--placement-interval", "0"]).await;
    let nodes = t.redis_addrs();
    wait_tier(&nodes[0]).await;
    let mut c = Conn::open(&nodes[0]).await.unwrap();
    for i in 0..200 {
        let k = format!("short:{i}");
        assert_eq!(c.call(&[b"SET", k.as_bytes(), b"v", b"PX", b"1000"]).await.unwrap(), R::Ok("OK".into()));
    }
    for i in 0..50 {
        let k = format!("kept:{i}");
        assert_eq!(c.call(&[b"SET", k.as_bytes(), b"v"]).await.unwrap(), R::Ok("OK".into()));
    }
    // Given a longer life before it ran out: not deleted.
    assert_eq!(c.call(&[b"SET", b"saved", b"v", b"PX", b"1000"]).await.unwrap(), R::Ok("OK".into()));
    assert_eq!(c.call(&[b"PEXPIRE", b"saved", b"600000"]).await.unwrap(), R::Int(1));
    let eps: Vec<String> = t.endpoints().iter().map(|e| e.trim_start_matches("http://").to_string()).collect();
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let mut deleted = 0;
        for ep in &eps {
            let (_, text) = cairn_testkit::http::request(ep, "GET", "/metrics", "").await.unwrap();
            deleted += text
                .lines()
                .find_map(|l| l.strip_prefix("cairn_redis_expired_keys "))
                .map_or(0, |v| v.trim().parse::<f64>().unwrap() as i64);
        }
        if deleted == 200 {
            break;
        }
        assert!(deleted < 200, "more keys deleted than expired: {deleted}");
        assert!(Instant::now() < end, "only {deleted} of 200 expired keys deleted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // 50 kept, "saved", and wait_tier's "warmup".
    assert_eq!(c.call(&[b"DBSIZE"]).await.unwrap(), R::Int(52));
    assert_eq!(c.call(&[b"GET", b"saved"]).await.unwrap(), R::Bulk(Some(b"v".to_vec())));
    assert_eq!(c.call(&[b"GET", b"kept:3"]).await.unwrap(), R::Bulk(Some(b"v".to_vec())));
}
