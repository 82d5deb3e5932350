//! Workload clients: concurrent etcd v3 clients that record every operation.
//!
//! Each client knows every endpoint and moves to the next one after an error, as etcd clients
//! do. An operation's outcome is `Ok` only when the server answered; a request error the server
//! answers definitely (an invalid request), or a request that never left the client (no
//! connection could be made), is `Fail`; anything else (timeouts, connections lost mid-request,
//! leader changes) is `Unknown`: the write may or may not have happened.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::kv_client::KvClient;
use rand::{Rng, SeedableRng};
use tonic::transport::{Channel, Endpoint};

use crate::history::{OpKind, Recorder, Value};

/// Per-request timeout: long enough for a leader election and a retry inside the cluster.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

pub fn channel(url: &str) -> Channel {
    Endpoint::from_shared(url.to_string())
        .expect("valid endpoint URL")
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .connect_lazy()
}

/// An etcd KV client over all endpoints, failing over on errors.
pub struct Client {
    kv: Vec<KvClient<Channel>>,
    cur: usize,
    /// The version of the synced endpoint list `kv` was built from (0: the initial list).
    synced: u64,
}

/// How a failed request ended.
pub enum Failure {
    /// The server refused it: it did not happen.
    Definite,
    /// It may or may not have happened.
    Indefinite,
}

/// How many requests failed with each cause (gRPC code and the start of the message), over
/// every client in this process: the chaos report lists them, so a run's failures can be read
/// by cause (a dead endpoint, no leader, a timeout) and not only counted.
static CAUSES: std::sync::Mutex<BTreeMap<String, usize>> = std::sync::Mutex::new(BTreeMap::new());

/// The failure causes recorded so far, most frequent first; clears the tally.
pub fn take_failure_causes() -> Vec<(String, usize)> {
    let mut v: Vec<_> = std::mem::take(&mut *CAUSES.lock().unwrap_or_else(|e| e.into_inner())).into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v
}

/// The cause of `s`, with digits (addresses, ids, ports) blanked so that one cause is one entry.
fn cause(s: &tonic::Status) -> String {
    let msg: String = s.message().chars().take(90).map(|c| if c.is_ascii_digit() { '#' } else { c }).collect();
    format!("{:?}: {msg}", s.code())
}

/// No connection could be made: the request never left this client.
fn never_sent(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::Unavailable
        && (s.message().contains("tcp connect error") || s.message().contains("error trying to connect"))
}

fn classify(s: &tonic::Status) -> Failure {
    *CAUSES.lock().unwrap_or_else(|e| e.into_inner()).entry(cause(s)).or_default() += 1;
    match s.code() {
        tonic::Code::InvalidArgument | tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => Failure::Definite,
        _ if never_sent(s) => Failure::Definite,
        _ => Failure::Indefinite,
    }
}

/// The cluster's client URLs as last learned from MemberList, with a version that changes with
/// them: etcd's clients keep their endpoints in sync with the membership (clientv3's
/// `AutoSyncInterval`), so a member added under load gets traffic and a removed one stops
/// getting it. Every workload client in this process follows it ([`spawn_autosync`]).
static SYNCED: std::sync::RwLock<(u64, Vec<String>)> = std::sync::RwLock::new((0, Vec::new()));

/// How often the endpoint list is synced with the membership.
const AUTOSYNC_INTERVAL: Duration = Duration::from_millis(500);

/// Keeps the synced endpoint list equal to the client URLs of the members that published them, asking
/// `initial` and then the last synced endpoints in turn; runs until aborted.
pub fn spawn_autosync(initial: Vec<String>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(AUTOSYNC_INTERVAL).await;
            let known = {
                let g = SYNCED.read().unwrap_or_else(|e| e.into_inner());
                if g.1.is_empty() {
                    initial.clone()
                } else {
                    g.1.clone()
                }
            };
            for ep in &known {
                let mut c = cairn_proto::etcdserverpb::cluster_client::ClusterClient::new(channel(ep));
                let mut req = tonic::Request::new(pb::MemberListRequest { linearizable: false });
                req.set_timeout(Duration::from_millis(500));
                let Ok(r) = c.member_list(req).await else { continue };
                let mut urls: Vec<String> =
                    r.into_inner().members.into_iter().filter_map(|m| m.client_ur_ls.into_iter().next()).collect();
                urls.sort();
                if urls.is_empty() {
                    continue;
                }
                let mut g = SYNCED.write().unwrap_or_else(|e| e.into_inner());
                if g.1 != urls {
                    g.0 += 1;
                    g.1 = urls;
                }
                break;
            }
        }
    })
}

/// Clears the synced endpoint list: clients made afterwards keep the endpoints they are given.
pub fn forget_synced_endpoints() {
    let mut g = SYNCED.write().unwrap_or_else(|e| e.into_inner());
    g.0 += 1;
    g.1.clear();
}

impl Client {
    pub fn new(endpoints: &[String], start: usize) -> Client {
        let kv = endpoints.iter().map(|e| KvClient::new(channel(e))).collect::<Vec<_>>();
        let cur = start % kv.len().max(1);
        Client { kv, cur, synced: 0 }
    }

    fn next(&mut self) {
        self.cur = (self.cur + 1) % self.kv.len();
    }

    /// Adopts the synced endpoint list if it changed since this client last looked.
    fn sync(&mut self) {
        let g = SYNCED.read().unwrap_or_else(|e| e.into_inner());
        if g.0 != self.synced && !g.1.is_empty() {
            self.synced = g.0;
            self.kv = g.1.iter().map(|e| KvClient::new(channel(e))).collect();
            self.cur %= self.kv.len();
        }
    }

    fn req<T>(t: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(t);
        r.set_timeout(REQUEST_TIMEOUT);
        r
    }

    /// Runs `f` on the current endpoint. After an error it moves to the next endpoint; when the
    /// request never left (no connection could be made) it tries there at once, as a gRPC
    /// balancer picks another connection, until every endpoint was tried once.
    async fn call<T, F, Fut>(&mut self, f: F) -> Result<T, Failure>
    where
        F: Fn(KvClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.sync();
        let mut tries = self.kv.len();
        loop {
            match f(self.kv[self.cur].clone()).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) => {
                    self.next();
                    tries -= 1;
                    if tries > 0 && never_sent(&s) {
                        continue;
                    }
                    return Err(classify(&s));
                }
            }
        }
    }

    pub async fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, Failure> {
        let req = pb::RangeRequest { key: key.into(), ..Default::default() };
        let r = self.call(|mut kv| {
            let req = req.clone();
            async move { kv.range(Self::req(req)).await }
        });
        Ok(r.await?.kvs.pop().map(|kv| kv.value))
    }

    /// Every key under `prefix`, read at one revision.
    pub async fn scan(&mut self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, Failure> {
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().expect("non-empty prefix") += 1;
        let req = pb::RangeRequest { key: prefix.into(), range_end: end, ..Default::default() };
        let r = self.call(|mut kv| {
            let req = req.clone();
            async move { kv.range(Self::req(req)).await }
        });
        Ok(r.await?.kvs.into_iter().map(|kv| (String::from_utf8_lossy(&kv.key).into(), kv.value)).collect())
    }

    pub async fn put(&mut self, key: &str, value: Vec<u8>) -> Result<(), Failure> {
        let req = pb::PutRequest { key: key.into(), value, ..Default::default() };
        self.call(|mut kv| {
            let req = req.clone();
            async move { kv.put(Self::req(req)).await }
        })
        .await
        .map(|_| ())
    }

    pub async fn txn(&mut self, t: pb::TxnRequest) -> Result<pb::TxnResponse, Failure> {
        self.call(|mut kv| {
            let t = t.clone();
            async move { kv.txn(Self::req(t)).await }
        })
        .await
    }
}

fn parse(v: &[u8]) -> Value {
    std::str::from_utf8(v).ok().and_then(|s| s.parse().ok())
}

/// The register workload: reads, writes and compare-and-sets on a few keys.
pub struct Register {
    pub recorder: Recorder,
    pub keys: Vec<String>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Register {
    pub fn start(clients: usize, nkeys: usize, seed: u64, endpoints: Vec<String>) -> Register {
        let recorder = Recorder::new();
        let stop = Arc::new(AtomicBool::new(false));
        let keys: Vec<String> = (0..nkeys).map(|i| format!("chaos/reg/{i:02}")).collect();
        // The last few clients only read, one starting on each member. A reader stays on its
        // member until a request fails, so it keeps reading through a member that is cut off
        // or lagging: where a stale read would show if the cluster served one (a client that
        // also writes leaves such a member at its first failed write).
        let readers = endpoints.len().min(clients / 2);
        let mut tasks = Vec::new();
        for id in 0..clients {
            let reader = id >= clients - readers;
            let rec = recorder.clone();
            let stop = stop.clone();
            let keys = keys.clone();
            let mut cli = Client::new(&endpoints, id);
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(id as u64));
            tasks.push(tokio::spawn(async move {
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let key = keys[rng.random_range(0..keys.len())].clone();
                    let v = (id as u64 + 1) * 1_000_000_000 + seq;
                    match if reader { 0 } else { rng.random_range(0..10) } {
                        0..=4 => {
                            let op = rec.invoke(id as u64, &key, OpKind::Read);
                            match cli.get(&key).await {
                                Ok(r) => op.read_ok(r.as_deref().and_then(parse)),
                                Err(Failure::Definite) => op.fail(),
                                Err(Failure::Indefinite) => op.unknown(),
                            }
                        }
                        5..=7 => {
                            let op = rec.invoke(id as u64, &key, OpKind::Write(v));
                            match cli.put(&key, v.to_string().into_bytes()).await {
                                Ok(()) => op.write_ok(),
                                Err(Failure::Definite) => op.fail(),
                                Err(Failure::Indefinite) => op.unknown(),
                            }
                        }
                        _ => {
                            let expect = match cli.get(&key).await {
                                Ok(r) => r.as_deref().and_then(parse),
                                Err(_) => continue,
                            };
                            let op = rec.invoke(id as u64, &key, OpKind::Cas { expect, new: v });
                            use pb::compare::{CompareResult, CompareTarget, TargetUnion};
                            let cmp = match expect {
                                Some(e) => pb::Compare {
                                    key: key.clone().into_bytes(),
                                    target: CompareTarget::Value as i32,
                                    result: CompareResult::Equal as i32,
                                    target_union: Some(TargetUnion::Value(e.to_string().into_bytes())),
                                    range_end: vec![],
                                },
                                None => pb::Compare {
                                    key: key.clone().into_bytes(),
                                    target: CompareTarget::Version as i32,
                                    result: CompareResult::Equal as i32,
                                    target_union: Some(TargetUnion::Version(0)),
                                    range_end: vec![],
                                },
                            };
                            let put = pb::RequestOp {
                                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                                    key: key.clone().into_bytes(),
                                    value: v.to_string().into_bytes(),
                                    ..Default::default()
                                })),
                            };
                            let t = pb::TxnRequest { compare: vec![cmp], success: vec![put], failure: vec![] };
                            match cli.txn(t).await {
                                Ok(r) => op.cas_ok(r.succeeded),
                                Err(Failure::Definite) => op.fail(),
                                Err(Failure::Indefinite) => op.unknown(),
                            }
                        }
                    }
                    // A modest pace keeps histories checkable (a few thousand operations per
                    // key) while faults still hit many operations in flight.
                    tokio::time::sleep(Duration::from_millis(rng.random_range(2..12))).await;
                }
            }));
        }
        Register { recorder, keys, stop, tasks }
    }

    pub async fn stop(self) -> (crate::History, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        (self.recorder.history(), self.keys)
    }
}

/// A workload client's Redis connection over every node: opens one to its current node (first
/// sending READONLY, if asked), and after a failure moves on to the next node.
struct RedisNodes {
    addrs: Vec<String>,
    node: usize,
    conn: Option<crate::resp::Resp>,
    readonly: bool,
}

impl RedisNodes {
    fn new(addrs: Vec<String>, first: usize, readonly: bool) -> RedisNodes {
        let node = first % addrs.len();
        RedisNodes { addrs, node, conn: None, readonly }
    }

    /// The open connection, or a new one; `None` (after a short pause, now on the next node)
    /// when it could not be opened.
    async fn conn(&mut self) -> Option<&mut crate::resp::Resp> {
        use crate::resp::{Reply, Resp};
        if self.conn.is_none() {
            let opened = match Resp::connect(&self.addrs[self.node]).await {
                Ok(mut c) if self.readonly => match c.call(&[b"READONLY"], Duration::from_secs(10)).await {
                    Ok(Reply::Simple(_)) => Some(c),
                    _ => None,
                },
                Ok(c) => Some(c),
                Err(_) => None,
            };
            if opened.is_none() {
                self.broke();
                tokio::time::sleep(Duration::from_millis(50)).await;
                return None;
            }
            self.conn = opened;
        }
        self.conn.as_mut()
    }

    /// The connection's state is unknown: a new one next time, on the next node.
    fn broke(&mut self) {
        self.conn = None;
        self.node = (self.node + 1) % self.addrs.len();
    }
}

/// The register workload over the Redis front end (the data tier): per-key GET and SET of
/// unique values through every node's Redis port; the same checker (linearizability per key,
/// no lost acknowledged write). Redis strings have no compare-and-set, so there are none.
pub struct RedisRegister {
    pub recorder: Recorder,
    pub keys: Vec<String>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// How a Redis reply to a write counts: `TRYAGAIN` and `CLUSTERDOWN` say nothing ran; cairn's
/// `ERR timeout: ... may or may not have been executed`, another error or a broken connection
/// leave the write's outcome unknown.
fn redis_write_outcome(r: &std::io::Result<crate::resp::Reply>) -> Result<(), Failure> {
    use crate::resp::Reply;
    match r {
        Ok(Reply::Simple(s)) if s == "OK" => Ok(()),
        Ok(Reply::Error(e)) if e.starts_with("TRYAGAIN") || e.starts_with("CLUSTERDOWN") => Err(Failure::Definite),
        _ => Err(Failure::Indefinite),
    }
}

impl RedisRegister {
    /// With `readonly`, every connection first sends READONLY, so its reads come from its
    /// node's own replica and may be stale: the checker must see that (a deliberate weakness).
    pub fn start(clients: usize, nkeys: usize, seed: u64, addrs: Vec<String>, readonly: bool) -> RedisRegister {
        use crate::resp::Reply;
        let recorder = Recorder::new();
        let stop = Arc::new(AtomicBool::new(false));
        // The keys hash to slots of several Redis ranges.
        let keys: Vec<String> = (0..nkeys).map(|i| format!("chaos:reg:{i:02}")).collect();
        let mut tasks = Vec::new();
        for id in 0..clients {
            let rec = recorder.clone();
            let stop = stop.clone();
            let keys = keys.clone();
            let addrs = addrs.clone();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(id as u64));
            tasks.push(tokio::spawn(async move {
                let mut nodes = RedisNodes::new(addrs, id, readonly);
                let mut seq = 0u64;
                let t = Duration::from_secs(10);
                while !stop.load(Ordering::Relaxed) {
                    let Some(c) = nodes.conn().await else { continue };
                    seq += 1;
                    let key = keys[rng.random_range(0..keys.len())].clone();
                    let v = (id as u64 + 1) * 1_000_000_000 + seq;
                    let broken = if rng.random_range(0..10) < 5 {
                        let op = rec.invoke(id as u64, &key, OpKind::Read);
                        let r = c.call(&[b"GET", key.as_bytes()], t).await;
                        match &r {
                            Ok(Reply::Bulk(b)) => op.read_ok(b.as_deref().and_then(parse)),
                            _ => op.fail(),
                        }
                        r.is_err()
                    } else {
                        let op = rec.invoke(id as u64, &key, OpKind::Write(v));
                        let r = c.call(&[b"SET", key.as_bytes(), v.to_string().as_bytes()], t).await;
                        match redis_write_outcome(&r) {
                            Ok(()) => op.write_ok(),
                            Err(Failure::Definite) => op.fail(),
                            Err(Failure::Indefinite) => op.unknown(),
                        }
                        r.is_err()
                    };
                    if broken {
                        nodes.broke();
                    }
                    tokio::time::sleep(Duration::from_millis(rng.random_range(2..12))).await;
                }
            }));
        }
        RedisRegister { recorder, keys, stop, tasks }
    }

    pub async fn stop(self) -> (crate::History, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        (self.recorder.history(), self.keys)
    }
}

/// Reads every key once more through the Redis ports (leader reads), retrying until one
/// answers.
pub async fn redis_final_reads(keys: &[String], addrs: &[String]) -> Result<BTreeMap<String, Value>, String> {
    use crate::resp::{Reply, Resp};
    let mut out = BTreeMap::new();
    for k in keys {
        let mut tries = 0;
        let v = loop {
            let addr = &addrs[tries % addrs.len()];
            let r = match Resp::connect(addr).await {
                Ok(mut c) => c.call(&[b"GET", k.as_bytes()], Duration::from_secs(10)).await,
                Err(e) => Err(e),
            };
            match r {
                Ok(Reply::Bulk(b)) => break b.as_deref().and_then(parse),
                _ => {
                    tries += 1;
                    if tries > 60 {
                        return Err(format!("the final read of {k} kept failing"));
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        };
        out.insert(k.clone(), v);
    }
    Ok(out)
}

/// Reads every key once more (linearizably), retrying until it answers.
pub async fn final_reads(keys: &[String], endpoints: &[String]) -> Result<BTreeMap<String, Value>, String> {
    let mut cli = Client::new(endpoints, 0);
    let mut out = BTreeMap::new();
    for k in keys {
        let mut tries = 0;
        let v = loop {
            match cli.get(k).await {
                Ok(r) => break r.as_deref().and_then(parse),
                Err(_) => {
                    tries += 1;
                    if tries > 60 {
                        return Err(format!("the final read of {k} kept failing"));
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        };
        out.insert(k.clone(), v);
    }
    Ok(out)
}

/// The set workload: unique adds (a put of `chaos/set/<element>`) and whole-set reads.
pub struct Set {
    pub recorder: crate::check::SetRecorder,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

pub const SET_PREFIX: &str = "chaos/set/";

fn set_elements(kvs: Vec<(String, Vec<u8>)>) -> std::collections::BTreeSet<u64> {
    kvs.into_iter().filter_map(|(k, _)| k.strip_prefix(SET_PREFIX).and_then(|e| e.parse().ok())).collect()
}

impl Set {
    pub fn start(clients: usize, seed: u64, endpoints: Vec<String>) -> Set {
        let recorder = crate::check::SetRecorder::new();
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for id in 0..clients {
            let rec = recorder.clone();
            let stop = stop.clone();
            let mut cli = Client::new(&endpoints, id);
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(999_983).wrapping_add(id as u64));
            tasks.push(tokio::spawn(async move {
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    if rng.random_range(0..10) < 8 {
                        let e = (id as u64 + 1) * 1_000_000_000 + seq;
                        let op = rec.invoke_add(id as u64, e);
                        match cli.put(&format!("{SET_PREFIX}{e:020}"), vec![]).await {
                            Ok(()) => op.add_ok(),
                            Err(Failure::Definite) => op.fail(),
                            Err(Failure::Indefinite) => op.unknown(),
                        }
                    } else {
                        let op = rec.invoke_read(id as u64);
                        match cli.scan(SET_PREFIX).await {
                            Ok(kvs) => op.read_ok(set_elements(kvs)),
                            Err(Failure::Definite) => op.fail(),
                            Err(Failure::Indefinite) => op.unknown(),
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(rng.random_range(2..12))).await;
                }
            }));
        }
        Set { recorder, stop, tasks }
    }

    pub async fn stop(self) -> crate::check::SetHistory {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        self.recorder.history()
    }
}

/// The final read of the set, retried until it answers.
pub async fn final_set(endpoints: &[String]) -> Result<std::collections::BTreeSet<u64>, String> {
    let mut cli = Client::new(endpoints, 0);
    for _ in 0..60 {
        if let Ok(kvs) = cli.scan(SET_PREFIX).await {
            return Ok(set_elements(kvs));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err("the final read of the set kept failing".into())
}

/// The set workload over the Redis front end: unique adds (a SET of `chaos:set:<element>`,
/// keys that hash all over the slots, so over every Redis range) and whole-set reads (KEYS,
/// which visits the ranges one after the other: not atomic, but each element lives in one
/// range whose reads are linearizable, so an element added before a read began is in it).
pub struct RedisSet {
    pub recorder: crate::check::SetRecorder,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

pub const REDIS_SET_PREFIX: &str = "chaos:set:";

fn redis_set_elements(r: &crate::resp::Reply) -> Option<std::collections::BTreeSet<u64>> {
    use crate::resp::Reply;
    let Reply::Array(items) = r else { return None };
    items
        .iter()
        .map(|i| match i {
            Reply::Bulk(Some(k)) => std::str::from_utf8(k).ok()?.strip_prefix(REDIS_SET_PREFIX)?.parse().ok(),
            _ => None,
        })
        .collect()
}

impl RedisSet {
    pub fn start(clients: usize, seed: u64, addrs: Vec<String>) -> RedisSet {
        let recorder = crate::check::SetRecorder::new();
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for id in 0..clients {
            let rec = recorder.clone();
            let stop = stop.clone();
            let addrs = addrs.clone();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(999_983).wrapping_add(id as u64));
            tasks.push(tokio::spawn(async move {
                let mut nodes = RedisNodes::new(addrs, id, false);
                let mut seq = 0u64;
                let t = Duration::from_secs(10);
                let pattern = format!("{REDIS_SET_PREFIX}*");
                while !stop.load(Ordering::Relaxed) {
                    let Some(c) = nodes.conn().await else { continue };
                    seq += 1;
                    let broken = if rng.random_range(0..10) < 9 {
                        let e = (id as u64 + 1) * 1_000_000_000 + seq;
                        let op = rec.invoke_add(id as u64, e);
                        let key = format!("{REDIS_SET_PREFIX}{e}");
                        let r = c.call(&[b"SET", key.as_bytes(), b"1"], t).await;
                        match redis_write_outcome(&r) {
                            Ok(()) => op.add_ok(),
                            Err(Failure::Definite) => op.fail(),
                            Err(Failure::Indefinite) => op.unknown(),
                        }
                        r.is_err()
                    } else {
                        let op = rec.invoke_read(id as u64);
                        let r = c.call(&[b"KEYS", pattern.as_bytes()], t).await;
                        match r.as_ref().ok().and_then(redis_set_elements) {
                            Some(set) => op.read_ok(set),
                            None => op.fail(),
                        }
                        r.is_err()
                    };
                    if broken {
                        nodes.broke();
                    }
                    tokio::time::sleep(Duration::from_millis(rng.random_range(2..12))).await;
                }
            }));
        }
        RedisSet { recorder, stop, tasks }
    }

    pub async fn stop(self) -> crate::check::SetHistory {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        self.recorder.history()
    }
}

/// The final read of the Redis set (KEYS through any node), retried until it answers.
pub async fn redis_final_set(addrs: &[String]) -> Result<std::collections::BTreeSet<u64>, String> {
    use crate::resp::Resp;
    let pattern = format!("{REDIS_SET_PREFIX}*");
    for i in 0..60 {
        if let Ok(mut c) = Resp::connect(&addrs[i % addrs.len()]).await {
            if let Ok(r) = c.call(&[b"KEYS", pattern.as_bytes()], Duration::from_secs(30)).await {
                if let Some(set) = redis_set_elements(&r) {
                    return Ok(set);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err("the final read of the Redis set kept failing".into())
}

/// The bank workload: transfers between accounts in transactions, and reads of every balance.
pub struct Bank {
    pub recorder: crate::check::BankRecorder,
    pub model: crate::check::BankModel,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

pub const BANK_PREFIX: &str = "chaos/bank/";
const BANK_ACCOUNTS: u64 = 5;
const BANK_BALANCE: i64 = 100;

fn account_key(a: u64) -> String {
    format!("{BANK_PREFIX}{a:04}")
}

fn balances(kvs: Vec<(String, Vec<u8>)>) -> BTreeMap<u64, i64> {
    kvs.into_iter()
        .filter_map(|(k, v)| {
            let a = k.strip_prefix(BANK_PREFIX)?.parse().ok()?;
            let b = std::str::from_utf8(&v).ok()?.parse().ok()?;
            Some((a, b))
        })
        .collect()
}

impl Bank {
    /// Opens the accounts (before any fault), then starts the clients.
    pub async fn start(clients: usize, seed: u64, endpoints: Vec<String>) -> Result<Bank, String> {
        let model = crate::check::BankModel::uniform(BANK_ACCOUNTS, BANK_BALANCE);
        let mut cli = Client::new(&endpoints, 0);
        for a in 0..BANK_ACCOUNTS {
            let mut ok = false;
            for _ in 0..20 {
                if cli.put(&account_key(a), BANK_BALANCE.to_string().into_bytes()).await.is_ok() {
                    ok = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            if !ok {
                return Err("could not open the bank accounts".into());
            }
        }
        let recorder = crate::check::BankRecorder::new();
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for id in 0..clients {
            let rec = recorder.clone();
            let stop = stop.clone();
            let mut cli = Client::new(&endpoints, id);
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(7_777_777).wrapping_add(id as u64));
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if rng.random_range(0..10) < 7 {
                        let from = rng.random_range(0..BANK_ACCOUNTS);
                        let to = (from + rng.random_range(1..BANK_ACCOUNTS)) % BANK_ACCOUNTS;
                        let amount = rng.random_range(1..=5u64);
                        let _ = transfer(&mut cli, &rec, id as u64, from, to, amount).await;
                    } else {
                        let op = rec.invoke_read(id as u64);
                        match cli.scan(BANK_PREFIX).await {
                            Ok(kvs) => op.read_ok(balances(kvs)),
                            Err(Failure::Definite) => op.fail(),
                            Err(Failure::Indefinite) => op.unknown(),
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(rng.random_range(2..12))).await;
                }
            }));
        }
        Ok(Bank { recorder, model, stop, tasks })
    }

    pub async fn stop(self) -> (crate::check::BankHistory, crate::check::BankModel) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        (self.recorder.history(), self.model)
    }
}

/// One transfer: read both balances with their revisions, then a transaction that moves the
/// amount only if neither account changed since (compare on mod_revision).
async fn transfer(
    cli: &mut Client,
    rec: &crate::check::BankRecorder,
    client: u64,
    from: u64,
    to: u64,
    amount: u64,
) -> Result<(), ()> {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let read = |kvs: &[(String, Vec<u8>)], a: u64| -> Option<i64> {
        kvs.iter().find(|(k, _)| *k == account_key(a)).and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok())
    };
    // Read both accounts (and their mod revisions) in one transaction.
    let get = |a: u64| pb::RequestOp {
        request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
            key: account_key(a).into_bytes(),
            ..Default::default()
        })),
    };
    let r = cli
        .txn(pb::TxnRequest { compare: vec![], success: vec![get(from), get(to)], failure: vec![] })
        .await
        .map_err(|_| ())?;
    let mut kvs = Vec::new();
    let mut mods = BTreeMap::new();
    for op in r.responses {
        if let Some(pb::response_op::Response::ResponseRange(rr)) = op.response {
            for kv in rr.kvs {
                let k = String::from_utf8_lossy(&kv.key).to_string();
                mods.insert(k.clone(), kv.mod_revision);
                kvs.push((k, kv.value));
            }
        }
    }
    let (Some(bf), Some(bt)) = (read(&kvs, from), read(&kvs, to)) else { return Err(()) };
    if bf < amount as i64 {
        return Ok(()); // not enough money: no transfer attempted
    }
    let cmp = |a: u64| pb::Compare {
        key: account_key(a).into_bytes(),
        target: CompareTarget::Mod as i32,
        result: CompareResult::Equal as i32,
        target_union: Some(TargetUnion::ModRevision(*mods.get(&account_key(a)).unwrap_or(&0))),
        range_end: vec![],
    };
    let put = |a: u64, b: i64| pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key: account_key(a).into_bytes(),
            value: b.to_string().into_bytes(),
            ..Default::default()
        })),
    };
    let op = rec.invoke_transfer(client, from, to, amount);
    let t = pb::TxnRequest {
        compare: vec![cmp(from), cmp(to)],
        success: vec![put(from, bf - amount as i64), put(to, bt + amount as i64)],
        failure: vec![],
    };
    match cli.txn(t).await {
        Ok(r) if r.succeeded => op.transfer_ok(),
        // The compare failed: the transaction did nothing.
        Ok(_) => op.fail(),
        Err(Failure::Definite) => op.fail(),
        Err(Failure::Indefinite) => op.unknown(),
    }
    Ok(())
}

/// The final read of every balance, retried until it answers.
pub async fn final_balances(endpoints: &[String]) -> Result<BTreeMap<u64, i64>, String> {
    let mut cli = Client::new(endpoints, 0);
    for _ in 0..60 {
        if let Ok(kvs) = cli.scan(BANK_PREFIX).await {
            return Ok(balances(kvs));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err("the final read of the balances kept failing".into())
}

/// The watch workload: writers put unique values to a few keys under one prefix (one key per
/// request, so one event per revision) while watchers follow the prefix, reconnecting to the
/// next member from the revision after the last one they were sent whenever their stream
/// breaks. Checked by [`crate::check::check_watch`].
pub struct Watch {
    writes: Arc<parking_lot::Mutex<Vec<crate::check::watch::WatchWrite>>>,
    stop: Arc<AtomicBool>,
    writers: Vec<tokio::task::JoinHandle<()>>,
    watchers: Vec<tokio::task::JoinHandle<crate::check::watch::WatcherLog>>,
    /// The final revision and the members then, once known: watchers ask for progress until
    /// they reach it (members replaced during the run are gone from their original list).
    target: tokio::sync::watch::Sender<Option<(i64, Vec<String>)>>,
}

pub const WATCH_PREFIX: &str = "chaos/watch/";
const WATCH_KEYS: u64 = 8;
const WATCHERS: usize = 3;
/// How long watchers may take, after the final read, to be sent everything up to it.
const WATCH_SETTLE: Duration = Duration::from_secs(30);

fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().expect("non-empty prefix") += 1;
    end
}

impl Watch {
    pub async fn start(clients: usize, seed: u64, endpoints: Vec<String>) -> Result<Watch, String> {
        // Watchers start at the revision after the current one: they must see every write.
        let mut cli = Client::new(&endpoints, 0);
        let mut start = None;
        for _ in 0..40 {
            let r = cli.kv[cli.cur]
                .range(Client::req(pb::RangeRequest { key: WATCH_PREFIX.into(), ..Default::default() }))
                .await;
            match r {
                Ok(r) => {
                    start = r.into_inner().header.map(|h| h.revision + 1);
                    break;
                }
                Err(_) => {
                    cli.next();
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
        let start = start.ok_or("cannot read the current revision to start watchers at")?;
        let (target, _) = tokio::sync::watch::channel(None);
        let watchers =
            (0..WATCHERS).map(|id| tokio::spawn(watcher(id, start, endpoints.clone(), target.subscribe()))).collect();
        let writes = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for id in 0..clients {
            let writes = writes.clone();
            let stop = stop.clone();
            let mut cli = Client::new(&endpoints, id);
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(id as u64));
            writers.push(tokio::spawn(async move {
                use crate::check::watch::{WatchWrite, WatchWriteOutcome};
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let value = (id as u64 + 1) * 1_000_000_000 + seq;
                    let key = format!("{WATCH_PREFIX}{}", rng.random_range(0..WATCH_KEYS));
                    let put = pb::PutRequest {
                        key: key.clone().into(),
                        value: value.to_string().into(),
                        ..Default::default()
                    };
                    let outcome = match cli.kv[cli.cur].put(Client::req(put)).await {
                        Ok(r) => WatchWriteOutcome::Ok { revision: r.into_inner().header.map_or(0, |h| h.revision) },
                        Err(s) => {
                            cli.next();
                            match classify(&s) {
                                Failure::Definite => WatchWriteOutcome::Fail,
                                Failure::Indefinite => WatchWriteOutcome::Unknown,
                            }
                        }
                    };
                    writes.lock().push(WatchWrite { key, value, outcome });
                    tokio::time::sleep(Duration::from_millis(rng.random_range(2..12))).await;
                }
            }));
        }
        Ok(Watch { writes, stop, writers, watchers, target })
    }

    /// Stops the writers (watchers keep following while the cluster heals).
    pub async fn stop_writers(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.writers.drain(..) {
            let _ = t.await;
        }
    }

    pub fn writes(&self) -> usize {
        self.writes.lock().len()
    }

    /// Reads every key's final value, lets the watchers catch up to that revision, and returns
    /// the history.
    pub async fn finish(mut self, endpoints: &[String]) -> Result<crate::check::WatchHistory, String> {
        self.stop_writers().await;
        let mut cli = Client::new(endpoints, 0);
        let mut fin = None;
        for _ in 0..60 {
            let r = cli.kv[cli.cur]
                .range(Client::req(pb::RangeRequest {
                    key: WATCH_PREFIX.into(),
                    range_end: prefix_end(WATCH_PREFIX),
                    ..Default::default()
                }))
                .await;
            match r {
                Ok(r) => {
                    fin = Some(r.into_inner());
                    break;
                }
                Err(_) => {
                    cli.next();
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
        let fin = fin.ok_or("the final read of the watched keys kept failing")?;
        let final_revision = fin.header.as_ref().map_or(0, |h| h.revision);
        let mut finals = BTreeMap::new();
        for kv in fin.kvs {
            let value = std::str::from_utf8(&kv.value).ok().and_then(|v| v.parse().ok()).unwrap_or(0);
            finals.insert(String::from_utf8_lossy(&kv.key).into_owned(), (value, kv.mod_revision));
        }
        let _ = self.target.send(Some((final_revision, endpoints.to_vec())));
        let mut watchers = Vec::new();
        for t in self.watchers {
            watchers.push(t.await.map_err(|e| format!("a watcher task failed: {e}"))?);
        }
        let writes = std::mem::take(&mut *self.writes.lock());
        Ok(crate::check::WatchHistory { writes, watchers, finals, final_revision })
    }
}

/// One watcher: follows the prefix from `start`, reconnecting to the next endpoint when its
/// stream breaks; once `target` is set, asks for progress until it has been sent everything up
/// to it (or gives up after [`WATCH_SETTLE`]).
async fn watcher(
    id: usize,
    start: i64,
    endpoints: Vec<String>,
    mut target: tokio::sync::watch::Receiver<Option<(i64, Vec<String>)>>,
) -> crate::check::watch::WatcherLog {
    use crate::check::watch::{SeenEvent, Segment, WatcherLog};
    use cairn_proto::etcdserverpb::watch_client::WatchClient;
    let mut log = WatcherLog { id, start, segments: Vec::new(), covered_through: None };
    let mut resume = start;
    let mut cur = id % endpoints.len();
    let mut give_up_at: Option<tokio::time::Instant> = None;
    let done = |log: &WatcherLog, target: &Option<(i64, Vec<String>)>| matches!((log.covered_through, target), (Some(c), Some((t, _))) if c >= *t);
    'connect: loop {
        let endpoints = match &*target.borrow() {
            Some((_, now)) => {
                give_up_at.get_or_insert_with(|| tokio::time::Instant::now() + WATCH_SETTLE);
                now.clone()
            }
            None => endpoints.clone(),
        };
        if done(&log, &target.borrow()) || give_up_at.is_some_and(|g| tokio::time::Instant::now() > g) {
            return log;
        }
        cur %= endpoints.len().max(1);
        let endpoint = endpoints[cur].clone();
        cur = (cur + 1) % endpoints.len();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(pb::WatchCreateRequest {
                key: WATCH_PREFIX.into(),
                range_end: prefix_end(WATCH_PREFIX),
                start_revision: resume,
                ..Default::default()
            })),
        };
        let _ = tx.send(create).await;
        let mut client = WatchClient::new(channel(&endpoint));
        let opened =
            tokio::time::timeout(REQUEST_TIMEOUT, client.watch(tokio_stream::wrappers::ReceiverStream::new(rx))).await;
        let mut stream = match opened {
            Ok(Ok(s)) => s.into_inner(),
            _ => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue 'connect;
            }
        };
        log.segments.push(Segment { endpoint: endpoint.clone(), from: resume, events: Vec::new() });
        let seg = log.segments.len() - 1;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                msg = stream.message() => {
                    let r = match msg {
                        Ok(Some(r)) => r,
                        // The member went away or the stream failed: reconnect elsewhere.
                        _ => continue 'connect,
                    };
                    if r.canceled {
                        // Not expected (the workload never compacts); reconnecting would retry
                        // from the same revision, so the checker sees whatever follows.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue 'connect;
                    }
                    if r.created {
                        continue;
                    }
                    let header_rev = r.header.as_ref().map_or(0, |h| h.revision);
                    if r.events.is_empty() {
                        // A progress notification: everything up to its revision was sent.
                        log.covered_through = Some(log.covered_through.map_or(header_rev, |c| c.max(header_rev)));
                        resume = resume.max(header_rev + 1);
                    }
                    for e in r.events {
                        let Some(kv) = e.kv else { continue };
                        let value = std::str::from_utf8(&kv.value).ok().and_then(|v| v.parse().ok()).unwrap_or(0);
                        log.segments[seg].events.push(SeenEvent {
                            revision: kv.mod_revision,
                            key: String::from_utf8_lossy(&kv.key).into_owned(),
                            value,
                        });
                        // As etcd's Go client: resume after the last event received.
                        resume = resume.max(kv.mod_revision + 1);
                        log.covered_through = Some(log.covered_through.map_or(kv.mod_revision, |c| c.max(kv.mod_revision)));
                    }
                    if done(&log, &target.borrow()) {
                        return log;
                    }
                }
                _ = tick.tick() => {
                    if target.borrow().is_some() {
                        give_up_at.get_or_insert_with(|| tokio::time::Instant::now() + WATCH_SETTLE);
                        if give_up_at.is_some_and(|g| tokio::time::Instant::now() > g) {
                            return log;
                        }
                        let progress = pb::WatchRequest {
                            request_union: Some(pb::watch_request::RequestUnion::ProgressRequest(pb::WatchProgressRequest {})),
                        };
                        if tx.send(progress).await.is_err() {
                            continue 'connect;
                        }
                    }
                }
                changed = target.changed() => {
                    // The workload was dropped without finishing.
                    if changed.is_err() {
                        return log;
                    }
                }
            }
        }
    }
}

/// The lock workload: clients contend for one lock (etcd's Lock service) under leases they keep
/// alive, write a shared key with fenced Txns while they hold it, and unlock. Checked by
/// [`crate::check::check_lock`].
pub struct LockWorkload {
    t0: std::time::Instant,
    holds: Arc<parking_lot::Mutex<Vec<crate::check::lock::Hold>>>,
    writes: Arc<parking_lot::Mutex<Vec<(i64, crate::check::lock::FencedOutcome)>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

pub const LOCK_NAME: &str = "chaos/lock";
pub const LOCK_DATA: &str = "chaos/lock-data";
/// Long enough that a client renewing every second through any live member never loses its
/// lease to pauses, kills and cuts of one member at a time (a new leader adds an election
/// timeout on top); `--bug lease-ignore-ttl` makes it 300 ms.
pub const LOCK_LEASE_TTL: i64 = 10;
const KEEP_ALIVE_EVERY: Duration = Duration::from_millis(1000);

/// One client's connections to every member, moving to the next after an error.
struct CoordClient {
    kv: Vec<KvClient<Channel>>,
    lease: Vec<cairn_proto::etcdserverpb::lease_client::LeaseClient<Channel>>,
    lock: Vec<cairn_proto::v3lockpb::lock_client::LockClient<Channel>>,
    cur: usize,
}

fn timed<T>(t: T, d: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(t);
    r.set_timeout(d);
    r
}

impl CoordClient {
    fn new(endpoints: &[String], start: usize) -> CoordClient {
        let chans: Vec<Channel> = endpoints.iter().map(|e| channel(e)).collect();
        CoordClient {
            kv: chans.iter().cloned().map(KvClient::new).collect(),
            lease: chans.iter().cloned().map(cairn_proto::etcdserverpb::lease_client::LeaseClient::new).collect(),
            lock: chans.iter().cloned().map(cairn_proto::v3lockpb::lock_client::LockClient::new).collect(),
            cur: start % endpoints.len().max(1),
        }
    }

    fn next(&mut self) {
        self.cur = (self.cur + 1) % self.kv.len();
    }

    async fn grant(&mut self) -> Option<i64> {
        let r = self.lease[self.cur]
            .lease_grant(timed(pb::LeaseGrantRequest { ttl: LOCK_LEASE_TTL, id: 0 }, REQUEST_TIMEOUT))
            .await;
        match r {
            Ok(r) => Some(r.into_inner().id),
            Err(_) => {
                self.next();
                None
            }
        }
    }

    /// One keep-alive; `Some(false)` if the lease is gone.
    async fn keep_alive(&mut self, id: i64) -> Option<bool> {
        let req = timed(tokio_stream::once(pb::LeaseKeepAliveRequest { id }), Duration::from_secs(1));
        let r = async {
            let mut s = self.lease[self.cur].lease_keep_alive(req).await?.into_inner();
            s.message().await
        };
        match tokio::time::timeout(Duration::from_secs(1), r).await {
            Ok(Ok(Some(r))) => Some(r.ttl > 0),
            _ => {
                self.next();
                None
            }
        }
    }

    async fn revoke(&mut self, id: i64) {
        if self.lease[self.cur].lease_revoke(timed(pb::LeaseRevokeRequest { id }, REQUEST_TIMEOUT)).await.is_err() {
            self.next();
        }
    }
}

impl LockWorkload {
    pub fn start(clients: usize, seed: u64, endpoints: Vec<String>) -> LockWorkload {
        let t0 = std::time::Instant::now();
        let holds = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let writes = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for id in 0..clients {
            let (holds, writes, stop) = (holds.clone(), writes.clone(), stop.clone());
            let endpoints = endpoints.clone();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(7_919).wrapping_add(id as u64));
            tasks.push(tokio::spawn(async move {
                let mut cli = CoordClient::new(&endpoints, id);
                while !stop.load(Ordering::Relaxed) {
                    let Some(lease) = cli.grant().await else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    // Keep the lease alive from its own connections while this client works.
                    let ka_stop = Arc::new(AtomicBool::new(false));
                    let ka = {
                        let ka_stop = ka_stop.clone();
                        let mut kc = CoordClient::new(&endpoints, id + 1);
                        tokio::spawn(async move {
                            while !ka_stop.load(Ordering::Relaxed) {
                                if kc.keep_alive(lease).await == Some(false) {
                                    return;
                                }
                                tokio::time::sleep(KEEP_ALIVE_EVERY).await;
                            }
                        })
                    };
                    let req = cairn_proto::v3lockpb::LockRequest { name: LOCK_NAME.into(), lease };
                    let locked = cli.lock[cli.cur].lock(timed(req, Duration::from_secs(15))).await;
                    let key = match locked {
                        Ok(r) => r.into_inner().key,
                        Err(_) => {
                            cli.next();
                            ka_stop.store(true, Ordering::Relaxed);
                            cli.revoke(lease).await;
                            continue;
                        }
                    };
                    let acquired_ms = t0.elapsed().as_millis() as u64;
                    // The fencing token: the lock key's create revision.
                    let token = match cli.kv[cli.cur]
                        .range(timed(pb::RangeRequest { key: key.clone(), ..Default::default() }, REQUEST_TIMEOUT))
                        .await
                    {
                        Ok(r) => r.into_inner().kvs.first().map(|kv| kv.create_revision),
                        Err(_) => {
                            cli.next();
                            None
                        }
                    };
                    if let Some(token) = token {
                        for _ in 0..rng.random_range(1..=3) {
                            let t = fenced_put(&key, token);
                            let o = match cli.kv[cli.cur].txn(timed(t, REQUEST_TIMEOUT)).await {
                                Ok(r) if r.get_ref().succeeded => crate::check::lock::FencedOutcome::Written,
                                Ok(_) => crate::check::lock::FencedOutcome::Fenced,
                                Err(s) => {
                                    cli.next();
                                    match classify(&s) {
                                        Failure::Definite => crate::check::lock::FencedOutcome::Failed,
                                        Failure::Indefinite => crate::check::lock::FencedOutcome::Unknown,
                                    }
                                }
                            };
                            writes.lock().push((token, o));
                            tokio::time::sleep(Duration::from_millis(rng.random_range(20..150))).await;
                        }
                    }
                    let released_ms = t0.elapsed().as_millis() as u64;
                    if let Some(token) = token {
                        holds.lock().push(crate::check::lock::Hold {
                            client: id as u64,
                            token,
                            acquired_ms,
                            released_ms,
                        });
                    }
                    let unlock = cairn_proto::v3lockpb::UnlockRequest { key };
                    if cli.lock[cli.cur].unlock(timed(unlock, REQUEST_TIMEOUT)).await.is_err() {
                        cli.next();
                    }
                    ka_stop.store(true, Ordering::Relaxed);
                    let _ = ka.await;
                    cli.revoke(lease).await;
                    tokio::time::sleep(Duration::from_millis(rng.random_range(0..50))).await;
                }
            }));
        }
        LockWorkload { t0, holds, writes, stop, tasks }
    }

    pub async fn stop(self) -> LockWorkload {
        self.stop.store(true, Ordering::Relaxed);
        let mut w = self;
        for t in std::mem::take(&mut w.tasks) {
            let _ = t.await;
        }
        w
    }

    pub fn ops(&self) -> usize {
        self.holds.lock().len() + self.writes.lock().len()
    }

    /// The history, with the shared key's versions read back in revision order.
    pub async fn finish(self, endpoints: &[String]) -> Result<crate::check::LockHistory, String> {
        let _ = self.t0;
        let data = key_versions(endpoints, LOCK_DATA).await?;
        let holds = std::mem::take(&mut *self.holds.lock());
        let writes = std::mem::take(&mut *self.writes.lock());
        Ok(crate::check::LockHistory { holds, writes, data })
    }
}

/// Put the token into the shared key only while the lock key still has that create revision.
fn fenced_put(lock_key: &[u8], token: i64) -> pb::TxnRequest {
    pb::TxnRequest {
        compare: vec![pb::Compare {
            result: pb::compare::CompareResult::Equal as i32,
            target: pb::compare::CompareTarget::Create as i32,
            key: lock_key.to_vec(),
            target_union: Some(pb::compare::TargetUnion::CreateRevision(token)),
            range_end: Vec::new(),
        }],
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: LOCK_DATA.into(),
                value: token.to_string().into_bytes(),
                ..Default::default()
            })),
        }],
        failure: vec![],
    }
}

/// Every version `key` has had, oldest first: walks back from the current version through
/// `revision = mod_revision - 1` reads (nothing is compacted during a run).
async fn key_versions(endpoints: &[String], key: &str) -> Result<Vec<i64>, String> {
    let mut cli = Client::new(endpoints, 0);
    let mut out = Vec::new();
    let mut at = 0;
    let mut failures = 0;
    loop {
        let req = pb::RangeRequest { key: key.into(), revision: at, ..Default::default() };
        match cli.kv[cli.cur].range(Client::req(req)).await {
            Ok(r) => {
                let Some(kv) = r.into_inner().kvs.pop() else { break };
                let tok = std::str::from_utf8(&kv.value).ok().and_then(|v| v.parse().ok());
                out.push(tok.ok_or_else(|| format!("{key} holds a value that is not a token"))?);
                if kv.version <= 1 {
                    break;
                }
                at = kv.mod_revision - 1;
            }
            Err(_) => {
                cli.next();
                failures += 1;
                if failures > 60 {
                    return Err(format!("reading the versions of {key} kept failing"));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    out.reverse();
    Ok(out)
}
