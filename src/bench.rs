//! `cairn bench`: a load generator for any etcd v3 endpoints (cairn's or etcd's), in the manner
//! of etcd's own `benchmark` tool: `--clients` concurrent requesters share `--conns` gRPC
//! connections spread over the endpoints; latencies go into HDR histograms.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::kv_client::KvClient;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

use crate::client::{channel, parse_endpoints};
use crate::watch_scan;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Workload {
    /// Puts of random keys.
    Put,
    /// Gets of random keys (prefill the key space first with --prefill).
    Get,
    /// Gets and puts, --read-ratio of them gets.
    Mixed,
    /// One client writing continuously with short timeouts; reports the longest gap between
    /// two successful writes (use it while killing the leader).
    FailoverProbe,
    /// Lease keep-alives: each client grants one lease, then renews it on its own keep-alive
    /// stream, one request in flight at a time.
    LeaseKeepalive,
    /// Lock then unlock (etcd's Lock service), clients contending for --locks locks, each under
    /// its own lease. One operation is one acquire + release.
    Lock,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Consistency {
    /// Linearizable reads (etcd's default).
    L,
    /// Serializable reads (served locally, may be stale).
    S,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Comma-separated client endpoints.
    #[arg(long, default_value = "127.0.0.1:2379")]
    pub endpoints: String,
    #[arg(long, value_enum, default_value = "put")]
    pub workload: Workload,
    /// Concurrent requesters.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// gRPC connections, spread round-robin over the endpoints.
    #[arg(long, default_value_t = 8)]
    pub conns: usize,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    #[arg(long, default_value_t = 16)]
    pub key_size: usize,
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Stop after this many requests (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub total: u64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    #[arg(long, value_enum, default_value = "l")]
    pub consistency: Consistency,
    /// Share of gets in the mixed workload.
    #[arg(long, default_value_t = 0.9)]
    pub read_ratio: f64,
    /// Write every key once before measuring (for get and mixed).
    #[arg(long)]
    pub prefill: bool,
    /// Per-request timeout in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// Random seed for keys.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Watchers on the benchmark's keys (all keys are digits: the prefix range "0".."9"),
    /// opened before the load starts; each put carries its send time, so every event's delivery
    /// latency is measured.
    #[arg(long, default_value_t = 0)]
    pub watchers: usize,
    /// Watch streams the watchers are spread over (round-robin over the endpoints).
    #[arg(long, default_value_t = 100)]
    pub watch_streams: usize,
    /// Cap on requests per second over all clients (0: as fast as they go).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Distinct locks the lock workload contends for.
    #[arg(long, default_value_t = 1)]
    pub locks: usize,
    /// Background readers beside the load: each runs a Range over every key, then a HashKV,
    /// in a loop (does a large read stall the writes?). Reported as scans and their latency.
    #[arg(long, default_value_t = 0)]
    pub scanners: usize,
    #[command(flatten)]
    pub tls: crate::client::TlsArgs,
}

/// Key number `n`, zero-padded to `--key-size` digits.
fn key(a: &BenchArgs, n: u64) -> Vec<u8> {
    format!("{n:0w$}", w = a.key_size.max(1)).into_bytes()
}

struct Shared {
    hist: parking_lot::Mutex<Histogram<u64>>,
    ok: AtomicU64,
    errors: AtomicU64,
    measuring: AtomicBool,
    stop: AtomicBool,
    issued: AtomicU64,
    first_error: parking_lot::Mutex<Option<String>>,
}

/// What one requester holds between operations.
struct Requester {
    kv: KvClient<Channel>,
    chan: Channel,
    /// This requester's lease (keep-alive and lock workloads).
    lease: i64,
    /// Its open keep-alive stream.
    keep_alive:
        Option<(tokio::sync::mpsc::Sender<pb::LeaseKeepAliveRequest>, tonic::Streaming<pb::LeaseKeepAliveResponse>)>,
    index: usize,
}

/// Microseconds since the Unix epoch: the send time a put carries when watchers measure
/// delivery.
fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// The put's value: its send time (16 digits) when watchers measure, then padding.
fn stamped(value: &[u8]) -> Vec<u8> {
    let mut v = format!("{:016}", now_us()).into_bytes();
    if value.len() > v.len() {
        v.extend_from_slice(&value[v.len()..]);
    }
    v
}

async fn setup(a: &BenchArgs, r: &mut Requester) -> Result<(), tonic::Status> {
    if matches!(a.workload, Workload::LeaseKeepalive | Workload::Lock) {
        let mut lc = cairn_proto::etcdserverpb::lease_client::LeaseClient::new(r.chan.clone());
        r.lease = lc.lease_grant(pb::LeaseGrantRequest { ttl: 60, id: 0 }).await?.into_inner().id;
    }
    if a.workload == Workload::LeaseKeepalive {
        let mut lc = cairn_proto::etcdserverpb::lease_client::LeaseClient::new(r.chan.clone());
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        // Send the first keep-alive before awaiting the call: grpc-go servers (etcd) send the
        // response headers only with their first response.
        let first = pb::LeaseKeepAliveRequest { id: r.lease };
        tx.send(first).await.map_err(|_| tonic::Status::unavailable("keep-alive stream closed"))?;
        let mut s = lc.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
        s.message().await?.ok_or_else(|| tonic::Status::unavailable("keep-alive stream ended"))?;
        r.keep_alive = Some((tx, s));
    }
    Ok(())
}

async fn one(
    a: &BenchArgs,
    r: &mut Requester,
    rng: &mut rand::rngs::StdRng,
    value: &[u8],
) -> Result<(), tonic::Status> {
    let timeout = Duration::from_millis(a.timeout_ms);
    match a.workload {
        Workload::LeaseKeepalive => {
            let (tx, s) = r.keep_alive.as_mut().expect("set up");
            tx.send(pb::LeaseKeepAliveRequest { id: r.lease })
                .await
                .map_err(|_| tonic::Status::unavailable("keep-alive stream closed"))?;
            let resp = tokio::time::timeout(timeout, s.message())
                .await
                .map_err(|_| tonic::Status::deadline_exceeded("keep-alive timed out"))??
                .ok_or_else(|| tonic::Status::unavailable("keep-alive stream ended"))?;
            if resp.ttl <= 0 {
                return Err(tonic::Status::not_found("lease expired"));
            }
            return Ok(());
        }
        Workload::Lock => {
            let mut lc = cairn_proto::v3lockpb::lock_client::LockClient::new(r.chan.clone());
            let name = format!("bench-lock-{}", r.index % a.locks.max(1)).into_bytes();
            let mut req = tonic::Request::new(cairn_proto::v3lockpb::LockRequest { name, lease: r.lease });
            req.set_timeout(timeout);
            let key = lc.lock(req).await?.into_inner().key;
            let mut req = tonic::Request::new(cairn_proto::v3lockpb::UnlockRequest { key });
            req.set_timeout(timeout);
            lc.unlock(req).await?;
            return Ok(());
        }
        _ => {}
    }
    let c = &mut r.kv;
    let is_get = match a.workload {
        Workload::Get => true,
        Workload::Mixed => rng.random_bool(a.read_ratio.clamp(0.0, 1.0)),
        _ => false,
    };
    let k = key(a, rng.random_range(0..a.keys.max(1)));
    if is_get {
        let mut r = tonic::Request::new(pb::RangeRequest {
            key: k,
            serializable: a.consistency == Consistency::S,
            ..Default::default()
        });
        r.set_timeout(timeout);
        c.range(r).await?;
    } else {
        let value = if a.watchers > 0 { stamped(value) } else { value.to_vec() };
        let mut r = tonic::Request::new(pb::PutRequest { key: k, value, ..Default::default() });
        r.set_timeout(timeout);
        c.put(r).await?;
    }
    Ok(())
}

/// Delivery measurements of the watchers.
struct WatchStats {
    hist: parking_lot::Mutex<Histogram<u64>>,
    events: AtomicU64,
    canceled: AtomicU64,
}

/// Opens `--watchers` watchers over `--watch-streams` streams and measures every event's
/// delivery latency (its put's send time to its arrival here) while `measuring` is set.
async fn start_watchers(
    a: &BenchArgs,
    eps: &[String],
    measuring: Arc<Shared>,
) -> anyhow::Result<(Arc<WatchStats>, Vec<tokio::task::JoinHandle<()>>)> {
    let stats = Arc::new(WatchStats {
        hist: parking_lot::Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")),
        events: AtomicU64::new(0),
        canceled: AtomicU64::new(0),
    });
    let streams = a.watch_streams.clamp(1, a.watchers.max(1));
    let bar = ProgressBar::new(a.watchers as u64);
    bar.set_style(ProgressStyle::with_template("watchers {bar:40} {pos}/{len}").expect("template"));
    let mut tasks = Vec::new();
    for s in 0..streams {
        let n = a.watchers / streams + usize::from(s < a.watchers % streams);
        let ch = channel(&eps[s % eps.len()])?;
        let mut grpc = tonic::client::Grpc::new(ch).max_decoding_message_size(64 << 20);
        let (tx, rx) = tokio::sync::mpsc::channel(n.max(1));
        for _ in 0..n {
            let create = pb::WatchCreateRequest { key: b"0".to_vec(), range_end: b":".to_vec(), ..Default::default() };
            tx.send(pb::WatchRequest { request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)) })
                .await?;
        }
        grpc.ready().await?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static("/etcdserverpb.Watch/Watch");
        let requests = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let mut resp = grpc.streaming(requests, path, watch_scan::RawWatchCodec).await?.into_inner();
        let mut created = 0;
        while created < n {
            match resp.message().await? {
                Some(b) if watch_scan::scan(&b, |_| {})?.created => {
                    created += 1;
                    bar.inc(1);
                }
                Some(_) => {}
                None => anyhow::bail!("a watch stream ended while creating watchers"),
            }
        }
        let stats = stats.clone();
        let shared = measuring.clone();
        tasks.push(tokio::spawn(async move {
            let _keep = tx;
            let mut local = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds");
            loop {
                let m = tokio::time::timeout(Duration::from_millis(200), resp.message()).await;
                if shared.stop.load(Ordering::Relaxed) {
                    break;
                }
                let b = match m {
                    Err(_) => continue,
                    Ok(Ok(Some(b))) => b,
                    Ok(_) => break,
                };
                let measuring = shared.measuring.load(Ordering::Relaxed);
                let now = now_us();
                let scanned = watch_scan::scan(&b, |value| {
                    let sent =
                        value.get(..16).and_then(|v| std::str::from_utf8(v).ok()).and_then(|v| v.parse::<u64>().ok());
                    if let (true, Some(sent)) = (measuring, sent) {
                        local.saturating_record(now.saturating_sub(sent).max(1));
                    }
                });
                let Ok(r) = scanned else { break };
                if r.canceled {
                    stats.canceled.fetch_add(1, Ordering::Relaxed);
                }
                if measuring {
                    stats.events.fetch_add(r.events as u64, Ordering::Relaxed);
                }
            }
            stats.hist.lock().add(&local).expect("same bounds");
        }));
    }
    bar.finish_and_clear();
    Ok((stats, tasks))
}

async fn prefill(a: &BenchArgs, clients: &[KvClient<Channel>]) -> anyhow::Result<()> {
    let value = vec![b'v'; a.value_size];
    let pb = ProgressBar::new(a.keys);
    pb.set_style(ProgressStyle::with_template("prefill {bar:40} {pos}/{len} keys").expect("template"));
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..a.clients.min(64) {
        let mut c = clients[i % clients.len()].clone();
        let next = next.clone();
        let value = value.clone();
        let a = a.clone();
        let pb = pb.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= a.keys {
                    return Ok::<_, anyhow::Error>(());
                }
                c.put(pb::PutRequest { key: key(&a, n), value: value.clone(), ..Default::default() }).await?;
                pb.inc(1);
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    pb.finish_and_clear();
    Ok(())
}

/// Results, in milliseconds where a latency.
#[derive(serde::Serialize)]
pub struct Summary {
    pub workload: String,
    pub endpoints: String,
    pub clients: usize,
    pub conns: usize,
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub first_error: Option<String>,
    /// With --watchers: how many, events delivered while measuring, delivery latency.
    pub watchers: usize,
    pub watch_events: u64,
    pub watch_events_per_sec: f64,
    pub watch_p50_ms: Option<f64>,
    pub watch_p99_ms: Option<f64>,
    pub watchers_canceled: u64,
    /// With --scanners: full Range + HashKV rounds completed while measuring, keys in the
    /// last Range, the median round, and failed rounds.
    pub scanners: usize,
    pub scans: u64,
    pub scan_keys: u64,
    pub scan_p50_ms: Option<f64>,
    pub scan_errors: u64,
}

#[derive(Default)]
struct Scans {
    done: AtomicU64,
    keys: AtomicU64,
    errors: AtomicU64,
    hist: parking_lot::Mutex<Option<Histogram<u64>>>,
}

/// Full Range then HashKV, until the run stops; rounds finished while measuring are counted.
async fn scan_loop(chan: Channel, shared: Arc<Shared>, scans: Arc<Scans>) {
    use cairn_proto::etcdserverpb::maintenance_client::MaintenanceClient;
    let mut kv = KvClient::new(chan.clone()).max_decoding_message_size(1 << 30);
    let mut m = MaintenanceClient::new(chan);
    while !shared.stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let all = pb::RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() };
        let r = match kv.range(all).await {
            Ok(r) => m.hash_kv(pb::HashKvRequest { revision: 0 }).await.map(|_| r.into_inner().count),
            Err(e) => Err(e),
        };
        if !shared.measuring.load(Ordering::Relaxed) {
            continue;
        }
        match r {
            Ok(n) => {
                scans.keys.store(n as u64, Ordering::Relaxed);
                scans.done.fetch_add(1, Ordering::Relaxed);
                let mut h = scans.hist.lock();
                let h =
                    h.get_or_insert_with(|| Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds"));
                h.saturating_record((t.elapsed().as_micros() as u64).max(1));
            }
            Err(e) => {
                scans.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e.message(), "scan failed");
            }
        }
    }
}

pub async fn run(a: BenchArgs) -> anyhow::Result<ExitCode> {
    let eps = parse_endpoints(&a.endpoints);
    anyhow::ensure!(!eps.is_empty(), "no endpoints");
    a.tls.install()?;
    if a.workload == Workload::FailoverProbe {
        return failover_probe(&a, &eps).await;
    }
    let chans: Vec<Channel> =
        (0..a.conns.max(1)).map(|i| channel(&eps[i % eps.len()])).collect::<anyhow::Result<_>>()?;
    let clients: Vec<KvClient<Channel>> =
        chans.iter().map(|ch| KvClient::new(ch.clone()).max_decoding_message_size(64 << 20)).collect();
    if a.prefill {
        prefill(&a, &clients).await?;
    }
    let shared = Arc::new(Shared {
        hist: parking_lot::Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")),
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        measuring: AtomicBool::new(a.warmup <= 0.0),
        stop: AtomicBool::new(false),
        issued: AtomicU64::new(0),
        first_error: parking_lot::Mutex::new(None),
    });
    let (watch, watch_tasks) = if a.watchers > 0 {
        let (w, t) = start_watchers(&a, &eps, shared.clone()).await?;
        (Some(w), t)
    } else {
        (None, Vec::new())
    };
    let scans = Arc::new(Scans::default());
    let scan_tasks: Vec<_> = (0..a.scanners)
        .map(|i| tokio::spawn(scan_loop(chans[i % chans.len()].clone(), shared.clone(), scans.clone())))
        .collect();
    let value = vec![b'x'; a.value_size];
    let mut requesters = Vec::new();
    for i in 0..a.clients {
        let mut r = Requester {
            kv: clients[i % clients.len()].clone(),
            chan: chans[i % chans.len()].clone(),
            lease: 0,
            keep_alive: None,
            index: i,
        };
        setup(&a, &mut r).await.map_err(|e| anyhow::anyhow!("setting up client {i}: {}", e.message()))?;
        requesters.push(r);
    }
    let mut tasks = Vec::new();
    let rate_start = Instant::now();
    for (i, mut c) in requesters.into_iter().enumerate() {
        let shared = shared.clone();
        let a = a.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed.wrapping_mul(1000).wrapping_add(i as u64));
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            while !shared.stop.load(Ordering::Relaxed) {
                let n = shared.issued.fetch_add(1, Ordering::Relaxed);
                if a.total > 0 && n >= a.total {
                    break;
                }
                if a.rate > 0.0 {
                    // Request n goes out no earlier than n / rate seconds after the start.
                    let at = rate_start + Duration::from_secs_f64(n as f64 / a.rate);
                    tokio::time::sleep_until(at.into()).await;
                }
                let t = Instant::now();
                let r = one(&a, &mut c, &mut rng, &value).await;
                let us = t.elapsed().as_micros() as u64;
                if !shared.measuring.load(Ordering::Relaxed) {
                    continue;
                }
                match r {
                    Ok(()) => {
                        local.saturating_record(us.max(1));
                        shared.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                        let mut fe = shared.first_error.lock();
                        if fe.is_none() {
                            *fe = Some(e.message().to_string());
                        }
                    }
                }
            }
            shared.hist.lock().add(&local).expect("same bounds");
        }));
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} {elapsed} {msg}").expect("template"));
    if a.warmup > 0.0 {
        bar.set_message("warming up");
        tokio::time::sleep(Duration::from_secs_f64(a.warmup)).await;
        shared.measuring.store(true, Ordering::Relaxed);
    }
    let start = Instant::now();
    let mut last = (Instant::now(), 0u64);
    while start.elapsed().as_secs_f64() < a.duration && !tasks.iter().all(|t| t.is_finished()) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let ok = shared.ok.load(Ordering::Relaxed);
        let rate = (ok - last.1) as f64 / last.0.elapsed().as_secs_f64();
        last = (Instant::now(), ok);
        bar.set_message(format!("{ok} ok, {} errors, {rate:.0} ops/s", shared.errors.load(Ordering::Relaxed)));
        bar.tick();
    }
    let secs = start.elapsed().as_secs_f64();
    shared.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let watch_events = watch.as_ref().map_or(0, |w| w.events.load(Ordering::Relaxed));
    for t in watch_tasks {
        let _ = t.await;
    }
    for t in scan_tasks {
        let _ = t.await;
    }
    bar.finish_and_clear();
    let h = shared.hist.lock();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let ok = shared.ok.load(Ordering::Relaxed);
    let s = Summary {
        workload: format!("{:?}", a.workload).to_lowercase(),
        endpoints: eps.join(","),
        clients: a.clients,
        conns: a.conns,
        requests: ok,
        errors: shared.errors.load(Ordering::Relaxed),
        seconds: secs,
        ops_per_sec: ok as f64 / secs,
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: h.max() as f64 / 1000.0,
        first_error: shared.first_error.lock().clone(),
        watchers: a.watchers,
        watch_events,
        watch_events_per_sec: watch_events as f64 / secs,
        watch_p50_ms: watch.as_ref().map(|w| w.hist.lock().value_at_quantile(0.5) as f64 / 1000.0),
        watch_p99_ms: watch.as_ref().map(|w| w.hist.lock().value_at_quantile(0.99) as f64 / 1000.0),
        watchers_canceled: watch.as_ref().map_or(0, |w| w.canceled.load(Ordering::Relaxed)),
        scanners: a.scanners,
        scans: scans.done.load(Ordering::Relaxed),
        scan_keys: scans.keys.load(Ordering::Relaxed),
        scan_p50_ms: scans.hist.lock().as_ref().map(|h| h.value_at_quantile(0.5) as f64 / 1000.0),
        scan_errors: scans.errors.load(Ordering::Relaxed),
    };
    if a.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        println!(
            "workload {} | {} clients over {} connections | {} endpoints",
            s.workload,
            s.clients,
            s.conns,
            eps.len()
        );
        println!("requests {}  errors {}  in {:.1}s", s.requests, s.errors, s.seconds);
        println!("throughput {:.0} ops/s", s.ops_per_sec);
        println!(
            "latency ms  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            s.p50_ms, s.p90_ms, s.p99_ms, s.p999_ms, s.max_ms
        );
        if let (Some(p50), Some(p99)) = (s.watch_p50_ms, s.watch_p99_ms) {
            println!(
                "watchers {}: {} events ({:.0}/s), delivery ms p50 {p50:.3} p99 {p99:.3}, {} canceled",
                s.watchers, s.watch_events, s.watch_events_per_sec, s.watchers_canceled
            );
        }
        if let Some(p50) = s.scan_p50_ms {
            println!(
                "scanners {}: {} full Range + HashKV rounds over {} keys, p50 {p50:.0} ms, {} errors",
                s.scanners, s.scans, s.scan_keys, s.scan_errors
            );
        }
        if let Some(e) = &s.first_error {
            println!("first error: {e}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes continuously and reports the longest time without a successful write.
async fn failover_probe(a: &BenchArgs, eps: &[String]) -> anyhow::Result<ExitCode> {
    let clients: Vec<KvClient<Channel>> =
        eps.iter().map(|e| channel(e).map(KvClient::new)).collect::<anyhow::Result<_>>()?;
    let mut cur = 0usize;
    let start = Instant::now();
    let mut last_ok = Instant::now();
    let mut longest = Duration::ZERO;
    let (mut ok, mut errors) = (0u64, 0u64);
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < a.duration {
        n += 1;
        let mut r = tonic::Request::new(pb::PutRequest {
            key: b"failover-probe".to_vec(),
            value: n.to_string().into_bytes(),
            ..Default::default()
        });
        r.set_timeout(Duration::from_millis(a.timeout_ms.min(1000)));
        match clients[cur].clone().put(r).await {
            Ok(_) => {
                ok += 1;
                longest = longest.max(last_ok.elapsed());
                last_ok = Instant::now();
            }
            Err(_) => {
                errors += 1;
                // A client given all endpoints fails over to the next one.
                cur = (cur + 1) % clients.len();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    let out = serde_json::json!({
        "workload": "failover-probe", "writes_ok": ok, "errors": errors,
        "longest_gap_ms": longest.as_secs_f64() * 1000.0,
    });
    if a.json {
        println!("{out}");
    } else {
        println!(
            "writes ok {ok}, errors {errors}, longest gap between successful writes {:.0} ms",
            longest.as_secs_f64() * 1000.0
        );
    }
    Ok(ExitCode::SUCCESS)
}
