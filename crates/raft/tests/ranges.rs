//! The data tier's Raft groups: openraft's storage suite over the shared log and a range's
//! state machine, and real groups of several nodes over the batched transport on loopback.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_raft::range::mux::RangesService;
use cairn_raft::range::{
    Admin, Applier, DataView, DataWrite, Outcome, RangeDesc, RangeHost, RangeHostOptions, RangeLog, RangeOp,
    RangeReply, RangeRequest, RangeStateMachine, SharedLog,
};
use cairn_raft::{PeerNode, RaftTimers};
use openraft::async_runtime::WatchReceiver;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;

/// A put: `cmd` is postcard `(key, value)`; the reply is the previous value.
struct Puts;

impl Applier for Puts {
    fn apply(
        &self,
        desc: &RangeDesc,
        data: &mut dyn DataWrite,
        _stamp_ms: u64,
        cmd: &[u8],
    ) -> std::io::Result<RangeReply> {
        let (k, v): (Vec<u8>, Vec<u8>) = postcard::from_bytes(cmd).expect("test op");
        if !desc.contains(&k) {
            return Ok(RangeReply::WrongRange(desc.clone()));
        }
        let prev = data.get(&k)?.unwrap_or_default();
        data.put(&k, &v);
        Ok(RangeReply::Done(prev))
    }

    fn read(&self, desc: &RangeDesc, data: &dyn DataView, cmd: &[u8], _now_ms: u64) -> std::io::Result<RangeReply> {
        if !desc.contains(cmd) {
            return Ok(RangeReply::WrongRange(desc.clone()));
        }
        Ok(RangeReply::Done(data.get(cmd)?.unwrap_or_default()))
    }
}

fn put(k: &str, v: &str) -> RangeOp {
    RangeOp::data(0, 1, postcard::to_allocvec(&(k.as_bytes().to_vec(), v.as_bytes().to_vec())).unwrap())
}

struct Builder;

impl StoreBuilder<cairn_raft::range::RangeConfig, RangeLog, RangeStateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, RangeLog, RangeStateMachine), StorageError<cairn_raft::range::RangeConfig>> {
        let dir = tempfile::tempdir().unwrap();
        let log = SharedLog::open(&dir.path().join("log"), true).unwrap();
        let engine = Arc::new(cairn_storage::RedbEngine::open(&dir.path().join("data.redb"), 1 << 20).unwrap());
        let desc = RangeDesc { id: 7, start: vec![], end: vec![], epoch: 1 };
        let sm = RangeStateMachine::open(engine, Arc::new(Puts), 7, Some(desc), None, Default::default()).unwrap();
        Ok((dir, RangeLog::new(log, 7), sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_on_the_shared_log() {
    Suite::test_all(Builder).await.unwrap();
}

const CLUSTER: u64 = 0xc0ffee;

fn req(group: u64, epoch: u64, read: bool, cmd: Vec<u8>) -> RangeRequest {
    RangeRequest::data(group, epoch, read, cmd)
}

/// One node: its range host served on a loopback port.
struct Node {
    id: u64,
    dir: std::path::PathBuf,
    addr: SocketAddr,
    host: Arc<RangeHost>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<()>,
}

fn options(id: u64, dir: &std::path::Path) -> RangeHostOptions {
    RangeHostOptions {
        node_id: id,
        dir: dir.to_path_buf(),
        timers: RaftTimers { heartbeat_ms: 50, election_timeout_ms: 500 },
        snapshot_count: 50,
        unsafe_no_fsync: false,
        engine_cache_bytes: 1 << 20,
        engine_buffer: Default::default(),
        split_bytes: 64 << 20,
        mux: cairn_raft::range::mux::Mux::new(Default::default()),
        move_catch_up_max: cairn_raft::range::host::MOVE_CATCH_UP_MAX,
    }
}

async fn start(id: u64, dir: &std::path::Path, addr: Option<SocketAddr>) -> Node {
    start_with(options(id, dir), addr).await
}

async fn start_with(opts: RangeHostOptions, addr: Option<SocketAddr>) -> Node {
    cairn_raft::network::set_cluster_id(CLUSTER);
    let listener = tokio::net::TcpListener::bind(addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap())).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (id, dir) = (opts.node_id, opts.dir.clone());
    let host = RangeHost::open(opts, Arc::new(Puts)).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let svc = RangesService::new(CLUSTER, host.clone()).server();
    let served = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    Node { id, dir, addr, host, stop: Some(stop), served }
}

impl Node {
    fn peer(&self) -> PeerNode {
        PeerNode { peer_urls: vec![format!("http://{}", self.addr)] }
    }

    async fn stop(mut self) -> (u64, std::path::PathBuf, SocketAddr) {
        let _ = self.stop.take().unwrap().send(());
        self.host.shutdown().await;
        let _ = self.served.await;
        (self.id, self.dir, self.addr)
    }
}

fn range(id: u64) -> RangeDesc {
    RangeDesc { id, start: vec![id as u8], end: vec![id as u8 + 1], epoch: 1 }
}

fn key(range: u64, i: usize) -> String {
    format!("{}k{i:03}", range as u8 as char)
}

/// The node that leads `range`, once one does.
async fn leader(nodes: &[&Node], range: u64) -> usize {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        for (i, n) in nodes.iter().enumerate() {
            if let Some(r) = n.host.get(range) {
                if r.leader() == Some(n.id) {
                    return i;
                }
            }
        }
        assert!(Instant::now() < end, "range {range} elected no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn write(nodes: &[&Node], range: u64, k: &str, v: &str) -> RangeReply {
    write_op(nodes, range, put(k, v)).await
}

async fn write_op(nodes: &[&Node], range: u64, op: RangeOp) -> RangeReply {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let l = leader(nodes, range).await;
        // As a client request: through the host, which wakes a sleeping leader.
        let cairn_raft::range::RangeCmd::Data(cmd) = op.cmd.clone() else { panic!("a data write") };
        match nodes[l].host.execute(req(range, op.epoch, false, cmd.to_vec())).await {
            Outcome::Done(b) => return RangeReply::Done(b),
            Outcome::WrongRange(d) => return RangeReply::WrongRange(d),
            other => {
                assert!(Instant::now() < end, "write to range {range} kept failing: {other:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Waits until `node` holds `v` at `k` in `range`.
async fn converged(node: &Node, range: u64, k: &str, v: &str) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(r) = node.host.get(range) {
            let got = r.sm.read(|d| d.get(k.as_bytes()).unwrap()).unwrap();
            if got.as_deref() == Some(v.as_bytes()) {
                return;
            }
        }
        assert!(Instant::now() < end, "node {} never saw {k}={v} in range {range}", node.id);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const RANGES: u64 = 16;

/// Nodes 1, 2, ... on `dirs`, holding no range yet.
async fn start_all(dirs: &[tempfile::TempDir]) -> Vec<Node> {
    let mut nodes = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        nodes.push(start(i as u64 + 1, d.path(), None).await);
    }
    nodes
}

async fn cluster(dirs: &[tempfile::TempDir]) -> Vec<Node> {
    let nodes = start_all(dirs).await;
    let voters: BTreeMap<u64, PeerNode> = nodes.iter().map(|n| (n.id, n.peer())).collect();
    for id in 1..=RANGES {
        for (i, n) in nodes.iter().enumerate() {
            // Every replica is created; the first node bootstraps the group.
            n.host.create(range(id), (i == 0).then(|| voters.clone())).await.unwrap();
        }
    }
    nodes
}

/// The node learns that a range's Raft core ended without sending it a message: a running
/// core is not reported, one that stopped is (`core_ended`), and a normal stop (a replica
/// removed) is no failure of the node (`fatal`), while writes still work on the other ranges.
/// A write that reaches the stopped replica is refused as never proposed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_range_core_is_noticed_without_a_message_to_it() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = cluster(&dirs).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    write(&refs, 1, &key(1, 0), "a").await;
    let r = refs[0].host.get(1).unwrap();
    assert!(!r.core_ended(), "a running core");
    assert_eq!(refs[0].host.fatal(true).await, None);
    r.raft.shutdown().await.unwrap();
    assert!(r.core_ended(), "a core that stopped");
    assert!(r.core_ended(), "and it stays so");
    assert_eq!(refs[0].host.fatal(true).await, None, "a normal stop is no failure");
    // A write that reaches a stopped replica (one being removed as it arrived) was never
    // proposed: it is re-routed, not answered with an unknown outcome.
    let w = postcard::to_allocvec(&(key(1, 1).into_bytes(), b"c".to_vec())).unwrap();
    assert_eq!(refs[0].host.execute(req(1, 0, false, w.clone())).await, Outcome::NotHere);
    assert_eq!(refs[0].host.execute_writes(1, 0, vec![w.clone(), w]).await, vec![Outcome::NotHere; 2]);
    write(&refs, 2, &key(2, 0), "b").await;
    for n in nodes {
        n.stop().await;
    }
}

/// A leader's concurrent client writes share entries (one append, fsync round and apply for
/// many), and each still gets its own answer: the previous value its own apply saw, or a
/// refusal of its own when it was routed with a stale epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_to_a_range_share_entries_and_each_gets_its_answer() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = cluster(&dirs).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    write(&refs, 2, &key(2, 0), "first").await;
    let l = leader(&refs, 2).await;
    let r = refs[l].host.get(2).unwrap();
    let before = r.raft.metrics().borrow_watched().last_log_index.unwrap_or(0);
    const N: usize = 200;
    let host = &refs[l].host;
    let writes = (0..N).map(|i| async move {
        let cmd = postcard::to_allocvec(&(key(2, i).into_bytes(), format!("w{i}").into_bytes())).unwrap();
        // Every tenth is routed with an epoch the range never had.
        let epoch = if i % 10 == 9 { 7 } else { 1 };
        (i, host.execute(req(2, epoch, false, cmd)).await)
    });
    for (i, outcome) in futures::future::join_all(writes).await {
        let want = match i {
            _ if i % 10 == 9 => Outcome::WrongRange(range(2)),
            0 => Outcome::Done(b"first".to_vec()),
            _ => Outcome::Done(vec![]),
        };
        assert_eq!(outcome, want, "write {i}");
    }
    let entries = r.raft.metrics().borrow_watched().last_log_index.unwrap_or(0) - before;
    assert!(entries <= (N / 4) as u64, "{N} concurrent writes took {entries} entries");
    for n in &refs {
        for i in (0..N).filter(|i| i % 10 != 9) {
            converged(n, 2, &key(2, i), &format!("w{i}")).await;
        }
        let stale = n.host.get(2).unwrap().sm.read(|d| d.get(key(2, 9).as_bytes()).unwrap()).unwrap();
        assert_eq!(stale, None, "a write routed with a stale epoch was applied");
    }
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_share_read_barriers_and_see_every_write_before_them() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = cluster(&dirs).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    let l = leader(&refs, 2).await;
    let host = &refs[l].host;
    let r = host.get(2).unwrap();
    let k = key(2, 1);
    const ROUNDS: usize = 5;
    const READS: usize = 100;
    let (before, leased_before) = (r.read_rounds(), r.leased_reads());
    for round in 0..ROUNDS {
        let v = format!("v{round}");
        write(&refs, 2, &k, &v).await;
        // Every read arrives after the write was acknowledged: each must see it.
        let reads = (0..READS).map(|_| host.execute(req(2, 1, true, k.as_bytes().to_vec())));
        for (i, got) in futures::future::join_all(reads).await.into_iter().enumerate() {
            assert_eq!(got, Outcome::Done(v.clone().into_bytes()), "round {round}, read {i}");
        }
    }
    let rounds = r.read_rounds() - before;
    let leased = r.leased_reads() - leased_before;
    assert!(rounds + leased >= 1, "the reads went through no barrier");
    assert!(rounds <= (ROUNDS * READS / 4) as u64, "{} concurrent reads took {rounds} barrier rounds", ROUNDS * READS);
    for n in nodes {
        n.stop().await;
    }
}

/// A leader serves reads on its lease alone, without a round through its Raft core
/// (`lease_holds`), but only while the lease holds: once its followers have been silent for
/// longer than the lease, a read waits for a quorum again, and without one it gets no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_reads_on_its_lease_only_while_a_quorum_keeps_it() {
    const R: u64 = 4;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = cluster(&dirs).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    let k = key(R, 1);
    write(&refs, R, &k, "v1").await;
    let l = leader(&refs, R).await;
    let r = refs[l].host.get(R).unwrap();
    let lease = cairn_raft::range::host::read_lease(&openraft::Config {
        election_timeout_max: options(1, dirs[0].path()).timers.election_timeout_ms / 2,
        ..Default::default()
    });
    // Heartbeats (every 50 ms) keep a 125 ms lease; a read soon finds it held.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let leased = r.leased_reads();
        assert_eq!(refs[l].host.execute(req(R, 1, true, k.as_bytes().to_vec())).await, Outcome::Done(b"v1".to_vec()));
        if r.leased_reads() > leased {
            break;
        }
        assert!(Instant::now() < end, "no read was served on the lease in 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Its followers go: the lease lapses, and no read is answered on it any more.
    let leader_id = nodes[l].id;
    while nodes.len() > 1 {
        let i = nodes.iter().position(|n| n.id != leader_id).unwrap();
        nodes.remove(i).stop().await;
    }
    tokio::time::sleep(lease + Duration::from_millis(50)).await;
    assert!(!r.lease_holds(lease), "the lease held {lease:?} after the followers went");
    let leased = r.leased_reads();
    let read =
        tokio::time::timeout(Duration::from_secs(5), nodes[0].host.execute(req(R, 1, true, k.as_bytes().to_vec())))
            .await;
    assert!(!matches!(read, Ok(Outcome::Done(_))), "a leader without a quorum answered a read: {read:?}");
    assert_eq!(r.leased_reads(), leased);
    drop(r);
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_groups_replicate_over_one_batched_transport() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = cluster(&dirs).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    // Writes to every range at once: their appends share the shared log's fsyncs and the
    // transport's calls.
    let mut tasks = Vec::new();
    for id in 1..=RANGES {
        let refs = refs.clone();
        tasks.push(async move {
            for i in 0..20 {
                let prev = write(&refs, id, &key(id, i), &format!("v{i}")).await;
                assert_eq!(prev, RangeReply::Done(vec![]), "a fresh key had a value");
            }
            // The answer of a put is the previous value, from apply.
            assert_eq!(write(&refs, id, &key(id, 0), "again").await, RangeReply::Done(b"v0".to_vec()));
        });
    }
    futures::future::join_all(tasks).await;
    // Client requests from any node: run by the leader (over the transport from another
    // node); a node that does not lead says so, with the leader it knows.
    let l = leader(&refs, 3).await;
    let other = (l + 1) % refs.len();
    let (lid, lpeer) = (refs[l].id, refs[l].peer());
    let get = |k: &str| k.as_bytes().to_vec();
    let t = Duration::from_secs(5);
    let via_peer = refs[other].host.execute_on(lid, &lpeer, req(3, 1, true, get(&key(3, 5))), t).await;
    assert_eq!(via_peer, Outcome::Done(b"v5".to_vec()));
    let at_follower = refs[other].host.execute(req(3, 1, true, get(&key(3, 5)))).await;
    assert_eq!(at_follower, Outcome::NotLeader { leader: Some(lid) });
    let w = postcard::to_allocvec(&(key(3, 5).into_bytes(), b"v5b".to_vec())).unwrap();
    assert_eq!(
        refs[other].host.execute_on(lid, &lpeer, req(3, 1, false, w.clone()), t).await,
        Outcome::Done(b"v5".to_vec())
    );
    assert_eq!(refs[other].host.execute(req(3, 1, false, w)).await, Outcome::NotLeader { leader: Some(lid) });
    assert_eq!(refs[l].host.execute(req(3, 2, true, get(&key(3, 5)))).await, Outcome::WrongRange(range(3)));
    assert_eq!(refs[l].host.execute(req(99, 1, true, get(&key(3, 5)))).await, Outcome::NotHere);
    // A node nobody listens on: the request never left, so it is safe to send elsewhere.
    let nobody = PeerNode { peer_urls: vec!["http://127.0.0.1:1".into()] };
    let gone = refs[other].host.execute_on(77, &nobody, req(3, 1, false, get("x")), t).await;
    assert!(matches!(gone, Outcome::Unavailable(_)), "{gone:?}");
    // A write routed with another epoch, or to keys of another range, is refused with the
    // range's descriptor and changes nothing.
    // (Through the leader of the moment: on a loaded machine, leadership may move in between.)
    let stale = RangeOp { epoch: 9, ..put(&key(1, 0), "stale") };
    assert_eq!(write_op(&refs, 1, stale).await, RangeReply::WrongRange(range(1)));
    assert_eq!(write_op(&refs, 1, put(&key(2, 0), "elsewhere")).await, RangeReply::WrongRange(range(1)));
    // Group commit across ranges: fewer log writes (fsyncs) than group operations, and fewer
    // transport calls than Raft messages, on some node.
    let ld = |n: &Node| {
        let s = n.host.log().stats();
        (s.operations.load(Relaxed), s.writes.load(Relaxed))
    };
    let tr = |n: &Node| (n.host.transport().messages.load(Relaxed), n.host.transport().calls.load(Relaxed));
    for n in &nodes {
        eprintln!("node {}: log {:?} (operations, writes); transport {:?} (messages, calls)", n.id, ld(n), tr(n));
    }
    assert!(nodes.iter().any(|n| ld(n).1 < ld(n).0), "no log write carried more than one group operation");
    assert!(nodes.iter().any(|n| tr(n).1 < tr(n).0), "no transport call carried more than one message");
    for n in &nodes {
        for id in 1..=RANGES {
            converged(n, id, &key(id, 19), "v19").await;
            converged(n, id, &key(id, 0), "again").await;
        }
        // A range's view scans the one engine every range writes into.
        for id in 1..=RANGES {
            let n_keys = n.host.get(id).unwrap().sm.read(|d| {
                let mut c = 0;
                d.scan(b"", b"", &mut |_, _| {
                    c += 1;
                    true
                })
                .unwrap();
                c
            });
            assert_eq!(n_keys.unwrap(), 20 * RANGES as usize, "the engine holds every range's keys");
        }
    }
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_survives_its_leaders_node_and_the_node_catches_up() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = cluster(&dirs).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    for i in 0..10 {
        write(&refs, 1, &key(1, i), "before").await;
    }
    let l = leader(&refs, 1).await;
    // Its leader's node stops; the other two elect a new leader and keep taking writes, past a
    // snapshot (snapshot_count is 50), so the stopped node must be caught up by snapshot.
    let stopped = nodes.remove(l).stop().await;
    let refs: Vec<&Node> = nodes.iter().collect();
    for i in 0..120 {
        write(&refs, 1, &key(1, i), "after").await;
    }
    // It restarts from its directory, on its old address.
    let back = start(stopped.0, &stopped.1, Some(stopped.2)).await;
    let r = back.host.get(1).expect("the replica is reopened from the data engine");
    // What it had applied before is there at once (or the newer value, if it caught up already).
    let early = r.sm.read(|d| d.get(key(1, 9).as_bytes()).unwrap()).unwrap();
    assert!(early.is_some(), "the restarted node lost range 1's applied data");
    converged(&back, 1, &key(1, 119), "after").await;
    converged(&back, 1, &key(1, 0), "after").await;
    nodes.push(back);
    for n in nodes {
        n.stop().await;
    }
}

/// Range 1's leader's last snapshot and purge indexes, and what node `follower` has matched.
async fn log_of(nodes: &[&Node], follower: u64) -> (u64, u64, u64) {
    let m = nodes[leader(nodes, 1).await].host.get(1).unwrap().raft.metrics().borrow_watched().clone();
    let index = |l: Option<&cairn_raft::range::types::LogId>| l.map_or(0, |l| l.index);
    let matched = m.replication.as_ref().and_then(|r| r.get(&follower).cloned().flatten());
    (index(m.snapshot.as_ref()), index(m.purged.as_ref()), index(matched.as_ref()))
}

fn snapshots_sent(nodes: &[&Node]) -> u64 {
    nodes.iter().map(|n| n.host.transport().snapshots.load(Relaxed)).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_follower_catches_up_from_the_log_until_it_lags_too_far() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = start_all(&dirs).await;
    // One range only, so the stopped follower leads nothing whose leadership would move.
    let voters: BTreeMap<u64, PeerNode> = nodes.iter().map(|n| (n.id, n.peer())).collect();
    for (i, n) in nodes.iter().enumerate() {
        n.host.create(range(1), (i == 0).then(|| voters.clone())).await.unwrap();
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    for i in 0..10 {
        write(&refs, 1, &key(1, i), "before").await;
    }
    for n in &refs {
        converged(n, 1, &key(1, 9), "before").await;
    }
    let l = leader(&refs, 1).await;
    let f = (l + 1) % 3;
    // Each follower got one snapshot to start (a group starts as if its log were purged at
    // index 0): what counts is what is sent from here on.
    let at_start = snapshots_sent(&refs);
    // A follower stops while 90 entries are written: past a snapshot and the 5 entries kept
    // behind it (snapshot_count is 50), within 2 x 50 of what it matched. The leader keeps
    // those entries for it (range::gc), so it catches up from the log: no snapshot is sent.
    let stopped = nodes.remove(f).stop().await;
    let refs: Vec<&Node> = nodes.iter().collect();
    for i in 0..90 {
        write(&refs, 1, &key(1, i), "lagged").await;
    }
    // Two purge passes later the leader still holds what the follower needs.
    tokio::time::sleep(cairn_raft::range::gc::EVERY * 5 / 2).await;
    let (snapshot, purged, matched) = log_of(&refs, stopped.0).await;
    assert!(snapshot >= 60, "a snapshot was built past what the follower had ({snapshot})");
    assert!(purged <= matched, "the leader purged to {purged}, the follower matched {matched}");
    let back = start(stopped.0, &stopped.1, Some(stopped.2)).await;
    converged(&back, 1, &key(1, 89), "lagged").await;
    nodes.insert(f, back);
    let refs: Vec<&Node> = nodes.iter().collect();
    assert_eq!(snapshots_sent(&refs) - at_start, 0, "a follower 90 entries behind got a snapshot");
    // Stopped again while 150 are written, past 2 x 50: the leader no longer waits for it, and
    // it is caught up by a snapshot.
    let stopped = nodes.remove(f).stop().await;
    let refs: Vec<&Node> = nodes.iter().collect();
    for i in 0..150 {
        write(&refs, 1, &key(1, i), "far").await;
    }
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, purged, matched) = log_of(&refs, stopped.0).await;
        if purged > matched {
            break;
        }
        assert!(Instant::now() < end, "the leader kept its log for a follower 150 entries behind");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let back = start(stopped.0, &stopped.1, Some(stopped.2)).await;
    converged(&back, 1, &key(1, 149), "far").await;
    converged(&back, 1, &key(1, 0), "far").await;
    nodes.insert(f, back);
    let refs: Vec<&Node> = nodes.iter().collect();
    assert!(snapshots_sent(&refs) > at_start, "a follower 150 entries behind was sent no snapshot");
    for n in nodes {
        n.stop().await;
    }
}

/// Counts the keys in `[from, to)` of `node`'s whole data engine (every range's keys).
fn keys_in_engine(node: &Node, from: &[u8], to: &[u8]) -> usize {
    let r = node.host.replicas().into_iter().next().expect("some replica");
    r.sm.read(|d| {
        let mut c = 0;
        d.scan(from, to, &mut |_, _| {
            c += 1;
            true
        })
        .unwrap();
        c
    })
    .unwrap()
}

/// Runs an operator's change on whichever node leads `range`, following `NotLeader`.
async fn admin(nodes: &[&Node], range: u64, epoch: u64, a: Admin) -> Outcome {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let l = leader(nodes, range).await;
        match nodes[l].host.execute(RangeRequest::admin(range, epoch, a.clone())).await {
            Outcome::NotLeader { .. } | Outcome::Unavailable(_) if Instant::now() < end => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => return other,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_splits_in_its_own_log_and_its_replicas_move() {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = start_all(&dirs).await;
    // Range 1 on nodes 1-3; node 4 holds nothing yet.
    let voters: BTreeMap<u64, PeerNode> = nodes[..3].iter().map(|n| (n.id, n.peer())).collect();
    for (i, n) in nodes[..3].iter().enumerate() {
        n.host.create(range(1), (i == 0).then(|| voters.clone())).await.unwrap();
    }
    let three: Vec<&Node> = nodes[..3].iter().collect();
    for i in 0..100 {
        write(&three, 1, &key(1, i), &format!("v{i}")).await;
    }
    // The split is one command in range 1's log: range 1 keeps [start, k050), range 100 takes
    // [k050, end) with the keys already in place, on every replica, both at epoch 2.
    let at = key(1, 50).into_bytes();
    let child = match admin(&three, 1, 1, Admin::Split { key: at.clone(), child: 100 }).await {
        Outcome::Done(b) => postcard::from_bytes::<RangeDesc>(&b).unwrap(),
        other => panic!("split: {other:?}"),
    };
    assert_eq!(child, RangeDesc { id: 100, start: at.clone(), end: vec![2], epoch: 2 });
    for n in &three {
        let end = Instant::now() + Duration::from_secs(10);
        while n.host.get(100).is_none() {
            assert!(Instant::now() < end, "node {} never started range 100", n.id);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(n.host.get(1).unwrap().sm.desc(), RangeDesc { end: at.clone(), epoch: 2, ..range(1) });
    }
    // The split range elects a leader and serves the keys it took over; range 1 refuses them,
    // and refuses a request routed with its old epoch.
    let read = |range: u64, epoch: u64, k: String| {
        let three = three.clone();
        async move {
            loop {
                let l = leader(&three, range).await;
                match three[l].host.execute(req(range, epoch, true, k.clone().into_bytes())).await {
                    // Just elected, and already deposed (every replica of a new range campaigns).
                    Outcome::NotLeader { .. } => tokio::time::sleep(Duration::from_millis(20)).await,
                    other => return other,
                }
            }
        }
    };
    assert_eq!(read(100, 2, key(1, 60)).await, Outcome::Done(b"v60".to_vec()));
    let r1 = RangeDesc { end: at.clone(), epoch: 2, ..range(1) };
    assert_eq!(read(1, 2, key(1, 60)).await, Outcome::WrongRange(r1.clone()));
    assert_eq!(read(1, 1, key(1, 10)).await, Outcome::WrongRange(r1.clone()));
    assert_eq!(read(1, 2, key(1, 10)).await, Outcome::Done(b"v10".to_vec()));
    // A split outside the range, or at its start, changes nothing.
    let bad = admin(&three, 1, 2, Admin::Split { key: key(1, 70).into_bytes(), child: 101 }).await;
    assert_eq!(bad, Outcome::WrongRange(r1.clone()));
    // Both take writes; range 100's log passes a snapshot (snapshot_count is 50), so the
    // replica moved to node 4 below is caught up by snapshot.
    let at2 = |k: String, v: String| RangeOp { epoch: 2, ..put(&k, &v) };
    for i in 0..120 {
        let prev = write_op(&three, 100, at2(key(1, 50 + i % 50), format!("w{i}"))).await;
        let want = if i < 50 { format!("v{}", 50 + i) } else { format!("w{}", i - 50) };
        assert_eq!(prev, RangeReply::Done(want.into_bytes()));
    }
    assert_eq!(write_op(&three, 1, at2(key(1, 0), "w".into())).await, RangeReply::Done(b"v0".to_vec()));
    // Move range 100 off its leader's node onto node 4: leadership moves first, then node 4
    // joins as a learner, catches up and is swapped in.
    let from = three[leader(&three, 100).await].id;
    nodes[3].host.create(child.clone(), None).await.unwrap();
    let all: Vec<&Node> = nodes.iter().collect();
    let moved = admin(&all, 100, 0, Admin::Move { from, to: 4, to_peer: nodes[3].peer() }).await;
    assert_eq!(moved, Outcome::Done(vec![]));
    let r100 = |n: &Node| n.host.get(100).map(|r| r.members().0);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let want: Vec<u64> = (1..=4).filter(|n| *n != from).collect();
        if all.iter().filter(|n| n.id != from).all(|n| r100(n).as_deref() == Some(want.as_slice())) {
            break;
        }
        assert!(Instant::now() < end, "range 100's voters never became {want:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    converged(&nodes[3], 100, &key(1, 99), "w99").await;
    converged(&nodes[3], 100, &key(1, 50), "w100").await;
    // A range fresh from a split, whose log holds none of the keys it inherited, moves to node
    // 4 at once: node 4 must get them by snapshot, not by replaying that log.
    let at25 = key(1, 25).into_bytes();
    let fresh = match admin(&three, 1, 2, Admin::Split { key: at25.clone(), child: 101 }).await {
        Outcome::Done(b) => postcard::from_bytes::<RangeDesc>(&b).unwrap(),
        other => panic!("split: {other:?}"),
    };
    nodes[3].host.create(fresh.clone(), None).await.unwrap();
    let from101 = three[leader(&three, 101).await].id;
    let moved = admin(&all, 101, 0, Admin::Move { from: from101, to: 4, to_peer: nodes[3].peer() }).await;
    assert_eq!(moved, Outcome::Done(vec![]));
    converged(&nodes[3], 101, &key(1, 25), "v25").await;
    converged(&nodes[3], 101, &key(1, 49), "v49").await;
    // The node it left removes its replica: the keys, the state and the log.
    let gone = &nodes[(from - 1) as usize];
    gone.host.destroy(100).await.unwrap();
    assert!(gone.host.get(100).is_none());
    assert_eq!(keys_in_engine(gone, &at, &[2]), 0, "the moved range's keys stayed behind");
    assert_eq!(keys_in_engine(gone, &range(1).start, &at), 50, "range 1's keys went too");
    // Leadership moves on request.
    let stay: Vec<&Node> = all.iter().copied().filter(|n| n.id != from).collect();
    let now = stay[leader(&stay, 100).await].id;
    let to = stay.iter().map(|n| n.id).find(|id| *id != now).unwrap();
    assert_eq!(admin(&stay, 100, 0, Admin::TransferLeader { to }).await, Outcome::Done(vec![]));
    assert_eq!(stay[leader(&stay, 100).await].id, to);
    // A restarted node reopens the split range from its data engine.
    let i4 = nodes.len() - 1;
    let (id, dir, addr) = nodes.remove(i4).stop().await;
    let back = start(id, &dir, Some(addr)).await;
    assert!(back.host.get(100).is_some(), "range 100 was not reopened");
    converged(&back, 100, &key(1, 99), "w99").await;
    nodes.push(back);
    for n in nodes {
        n.stop().await;
    }
}

/// A node that stopped while it removed a replica (its removal marked, the log or the state
/// not yet deleted) finishes the removal when it starts again, instead of starting the replica
/// over whatever is left of its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_cut_short_by_a_stop_is_finished_at_the_next_start() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = cluster(&dirs).await;
    for i in 0..10 {
        let refs: Vec<&Node> = nodes.iter().collect();
        write(&refs, 3, &key(3, i), "v").await;
    }
    converged(&nodes[2], 3, &key(3, 9), "v").await;
    let (id, dir, addr) = nodes.remove(2).stop().await;
    // As a removal leaves it if the node stops right after marking it.
    {
        let engine = cairn_storage::RedbEngine::open(&dir.join("data.redb"), 1 << 20).unwrap();
        let mut wb = cairn_storage::WriteBatch::new();
        let marker = cairn_raft::range::sm::meta_key(3, cairn_raft::range::sm::REMOVING);
        wb.put(cairn_storage::Table::Meta, marker, vec![1]);
        cairn_storage::Engine::write(&engine, wb).unwrap();
        cairn_storage::Engine::sync(&engine).unwrap();
    }
    let back = start(id, &dir, Some(addr)).await;
    assert!(back.host.get(3).is_none(), "the replica whose removal was cut short started again");
    assert!(back.host.get(4).is_some(), "another range did not start");
    assert!(!back.host.log().groups().contains(&3), "its log is still there");
    assert_eq!(keys_in_engine(&back, &range(3).start, &range(3).end), 0, "its keys are still there");
    assert_eq!(keys_in_engine(&back, &[0], &[0xff]), 0, "no other range held keys here");
    nodes.push(back);
    for n in nodes {
        n.stop().await;
    }
}

/// A leader asked to hand its leadership to a node that has just died proposes nothing and
/// sends no heartbeat for the rest of its term (openraft), counting on the followers' election
/// timers. Followers asleep on its node's beats must not wait for it: the beats stop naming
/// the range, they wake, elect, and the range serves writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_to_a_dead_node_does_not_leave_a_sleeping_range_leaderless() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = cluster(&dirs).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    for id in 1..=RANGES {
        write(&refs, id, &key(id, 0), "v").await;
    }
    all_asleep(&refs).await;
    let l = leader(&refs, 3).await;
    let (leader_id, dead) = (nodes[l].id, nodes[(l + 1) % 3].id);
    let gone = nodes.remove((l + 1) % 3);
    gone.stop().await;
    let l = nodes.iter().position(|n| n.id == leader_id).unwrap();
    let handover = nodes[l].host.execute(RangeRequest::admin(3, 0, Admin::TransferLeader { to: dead })).await;
    assert!(matches!(handover, Outcome::Unavailable(_)), "{handover:?}");
    let rest: Vec<&Node> = nodes.iter().collect();
    assert_eq!(write(&rest, 3, &key(3, 0), "after").await, RangeReply::Done(b"v".to_vec()));
    for n in nodes {
        n.stop().await;
    }
}

/// A range started with one replica (a cluster started on one node) grows to three: each new
/// replica joins as a learner, is caught up by snapshot and made a voter; a fourth is refused;
/// and the range then survives the loss of the node it started on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_under_replicated_range_gets_replicas_added() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = start_all(&dirs).await;
    let one: BTreeMap<u64, PeerNode> = [(1, nodes[0].peer())].into();
    nodes[0].host.create(range(7), Some(one)).await.unwrap();
    // Past snapshot_count (50): the new replicas are caught up by snapshot.
    for i in 0..80 {
        write(&[&nodes[0]], 7, &key(7, i), &format!("v{i}")).await;
    }
    for n in &nodes[1..] {
        n.host.create(range(7), None).await.unwrap();
    }
    let all: Vec<&Node> = nodes.iter().collect();
    for to in [2, 3] {
        let add = Admin::AddReplica { to, to_peer: nodes[to as usize - 1].peer(), factor: 3 };
        assert_eq!(admin(&all, 7, 1, add).await, Outcome::Done(vec![]));
    }
    for n in &all {
        let end = Instant::now() + Duration::from_secs(10);
        while n.host.get(7).map(|r| r.members().0) != Some(vec![1, 2, 3]) {
            assert!(Instant::now() < end, "node {} never saw range 7's three voters", n.id);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    converged(&nodes[2], 7, &key(7, 0), "v0").await;
    converged(&nodes[2], 7, &key(7, 79), "v79").await;
    // A range at its replication factor takes no more.
    let l = leader(&all, 7).await;
    let extra = Admin::AddReplica { to: 4, to_peer: PeerNode::default(), factor: 3 };
    match nodes[l].host.execute(RangeRequest::admin(7, 1, extra)).await {
        Outcome::Unavailable(why) => assert!(why.contains("already has 3 replicas"), "{why}"),
        other => panic!("a fourth replica: {other:?}"),
    }
    // The node it started on goes; the other two elect and serve.
    let first = nodes.remove(0);
    first.stop().await;
    let rest: Vec<&Node> = nodes.iter().collect();
    assert_eq!(write(&rest, 7, &key(7, 5), "after").await, RangeReply::Done(b"v5".to_vec()));
    for n in nodes {
        n.stop().await;
    }
}

/// A learner left behind by a move cut short (its leader gone before promoting it; here one
/// on a node that never answers) is removed by `DropLearners`, on every replica, and the range
/// then takes a merge's precondition (no learners) and its writes as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_left_over_is_dropped() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = cluster(&dirs).await;
    let all: Vec<&Node> = nodes.iter().collect();
    let gone = PeerNode { peer_urls: vec!["http://127.0.0.1:9".into()] };
    // A move adds it so (an idle range sleeps, and its leader's lease must be renewed first,
    // as a request does: retried until the leader takes it).
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        write(&all, 1, &key(1, 1), "wake").await;
        let l = leader(&all, 1).await;
        match nodes[l].host.get(1).unwrap().raft.add_learner(4, gone.clone(), false).await {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < end, "no learner added: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in &all {
        let end = Instant::now() + Duration::from_secs(10);
        while n.host.get(1).map(|r| r.members().1) != Some(vec![4]) {
            assert!(Instant::now() < end, "node {} never saw the learner", n.id);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Only the nodes named: none here.
    assert_eq!(admin(&all, 1, 0, Admin::DropLearners { nodes: vec![5] }).await, Outcome::Done(vec![]));
    let l = leader(&all, 1).await;
    assert_eq!(nodes[l].host.get(1).unwrap().members().1, vec![4]);
    assert_eq!(admin(&all, 1, 0, Admin::DropLearners { nodes: vec![4, 5] }).await, Outcome::Done(vec![]));
    for n in &all {
        let end = Instant::now() + Duration::from_secs(10);
        while n.host.get(1).map(|r| r.members()).map(|(v, l, _)| (v, l)) != Some((vec![1, 2, 3], vec![])) {
            assert!(Instant::now() < end, "node {} still sees a learner", n.id);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // None left: nothing to do.
    assert_eq!(admin(&all, 1, 0, Admin::DropLearners { nodes: vec![4] }).await, Outcome::Done(vec![]));
    assert_eq!(write(&all, 1, &key(1, 0), "after").await, RangeReply::Done(vec![]));

    // A move to that node (which never answers, so it never catches up) ends as soon as its
    // learner is removed, not at its 2-minute limit.
    let l = leader(&all, 1).await;
    let from = [1u64, 2, 3].into_iter().find(|v| *v != nodes[l].id).unwrap();
    let host = nodes[l].host.clone();
    let moving = tokio::spawn(async move {
        host.execute(RangeRequest::admin(1, 0, Admin::Move { from, to: 4, to_peer: gone })).await
    });
    let end = Instant::now() + Duration::from_secs(10);
    while nodes[l].host.get(1).map(|r| r.members().1) != Some(vec![4]) {
        assert!(Instant::now() < end, "the move added no learner");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(admin(&all, 1, 0, Admin::DropLearners { nodes: vec![4] }).await, Outcome::Done(vec![]));
    match tokio::time::timeout(Duration::from_secs(10), moving).await {
        Ok(Ok(Outcome::Unavailable(why))) => assert!(why.contains("no longer a member"), "{why}"),
        other => panic!("the move did not end when its learner was removed: {other:?}"),
    }
    for n in nodes {
        n.stop().await;
    }
}

/// A move whose new replica does not catch up within the move's limit removes it and fails:
/// the learner does not stay in the membership (where the leader keeps sending to it and a
/// merge would refuse the range), and the range keeps its voters and serves writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_whose_learner_never_catches_up_gives_up_and_removes_it() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let limit = Duration::from_secs(1);
    let mut nodes = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        let opts = RangeHostOptions { move_catch_up_max: limit, ..options(i as u64 + 1, d.path()) };
        nodes.push(start_with(opts, None).await);
    }
    let voters: BTreeMap<u64, PeerNode> = nodes.iter().map(|n| (n.id, n.peer())).collect();
    for n in &nodes {
        n.host.create(range(1), Some(voters.clone())).await.unwrap();
    }
    let all: Vec<&Node> = nodes.iter().collect();
    // A node that never answers: its learner never catches up.
    let gone = PeerNode { peer_urls: vec!["http://127.0.0.1:9".into()] };
    let end = Instant::now() + Duration::from_secs(20);
    let started = loop {
        // An idle range sleeps: a write wakes its leader, as a client's request would.
        write(&all, 1, &key(1, 0), "before").await;
        let l = leader(&all, 1).await;
        let from = [1u64, 2, 3].into_iter().find(|v| *v != nodes[l].id).unwrap();
        let started = Instant::now();
        let moved =
            nodes[l].host.execute(RangeRequest::admin(1, 0, Admin::Move { from, to: 4, to_peer: gone.clone() })).await;
        match moved {
            Outcome::Unavailable(why) if why.contains("did not catch up") => break started,
            other => assert!(Instant::now() < end, "the move did not give up on its learner: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // It waited for its limit, not for openraft or a timeout of the request.
    let took = started.elapsed();
    assert!(took >= limit && took < limit * 8, "the move gave up after {took:?}");
    for n in &all {
        let end = Instant::now() + Duration::from_secs(10);
        while n.host.get(1).map(|r| r.members()).map(|(v, l, _)| (v, l)) != Some((vec![1, 2, 3], vec![])) {
            assert!(
                Instant::now() < end,
                "node {} still sees the learner: {:?}",
                n.id,
                n.host.get(1).map(|r| r.members())
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(write(&all, 1, &key(1, 1), "after").await, RangeReply::Done(vec![]));
    for n in nodes {
        n.stop().await;
    }
}

/// Two moves of one range off the same node, the second sent while the first waits for its
/// learner: the second is refused while the first is under way, and the range keeps three
/// voters. (Run side by side, each swapped its own learner in for the same voter, and the
/// range was left with four.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_of_one_range_run_one_after_the_other() {
    let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = start_all(&dirs).await;
    let voters: BTreeMap<u64, PeerNode> = nodes[..3].iter().map(|n| (n.id, n.peer())).collect();
    for n in &nodes[..3] {
        n.host.create(range(1), Some(voters.clone())).await.unwrap();
    }
    let three: Vec<&Node> = nodes[..3].iter().collect();
    write(&three, 1, &key(1, 0), "v").await;
    let l = leader(&three, 1).await;
    let from = [1u64, 2, 3].into_iter().find(|v| *v != nodes[l].id).unwrap();
    let members = |n: &Node| n.host.get(1).map(|r| r.members()).map(|(v, l, _)| (v, l));
    // Node 4 holds no replica yet, so the first move's learner cannot catch up.
    let host = nodes[l].host.clone();
    let to4 = nodes[3].peer();
    let first = tokio::spawn(async move {
        host.execute(RangeRequest::admin(1, 0, Admin::Move { from, to: 4, to_peer: to4 })).await
    });
    let end = Instant::now() + Duration::from_secs(10);
    while members(&nodes[l]).map(|(_, l)| l) != Some(vec![4]) {
        assert!(Instant::now() < end, "the first move added no learner");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nodes[4].host.create(range(1), None).await.unwrap();
    let host = nodes[l].host.clone();
    let to5 = nodes[4].peer();
    let second = tokio::time::timeout(
        Duration::from_secs(20),
        host.execute(RangeRequest::admin(1, 0, Admin::Move { from, to: 5, to_peer: to5 })),
    )
    .await
    .expect("the second move never ended");
    match second {
        Outcome::Unavailable(why) => assert!(why.contains("under way"), "{why}"),
        other => panic!("the second move, while the first was under way: {other:?} {:?}", members(&nodes[l])),
    }
    assert!(!first.is_finished());
    nodes[3].host.create(range(1), None).await.unwrap();
    let first =
        tokio::time::timeout(Duration::from_secs(20), first).await.expect("the first move never ended").unwrap();
    assert_eq!(first, Outcome::Done(vec![]));
    let want: Vec<u64> = [1u64, 2, 3, 4].into_iter().filter(|v| *v != from).collect();
    let end = Instant::now() + Duration::from_secs(10);
    while members(&nodes[l]) != Some((want.clone(), vec![])) {
        assert!(Instant::now() < end, "range 1's members: {:?}, not {want:?}", members(&nodes[l]));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in nodes {
        n.stop().await;
    }
}

/// A node that just started neither votes nor campaigns for the election timeout's maximum:
/// a leader may still be serving reads on a lease that counted on this node's refusal of
/// other candidates, which openraft forgot in the restart. Then it votes as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_just_started_does_not_vote_until_a_lease_it_backed_ran_out() {
    use cairn_raft::range::mux::{Kind, RangeHandler};
    use cairn_raft::range::types::RangeConfig;
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    // Node 1 has been up for longer than the window; node 2 starts now.
    let one = start(1, dirs[0].path(), None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!one.host.quiet());
    let two = start(2, dirs[1].path(), None).await;
    let opened = Instant::now();
    let voters: BTreeMap<u64, PeerNode> = [(1u64, one.peer()), (2, two.peer())].into();
    two.host.create(range(1), Some(voters.clone())).await.unwrap();
    one.host.create(range(1), Some(voters)).await.unwrap();

    // It refuses votes and pre-votes.
    let vote = openraft::alias::VoteOf::<RangeConfig>::new(5, 9);
    let bytes = postcard::to_allocvec(&openraft::raft::VoteRequest::<RangeConfig>::new(vote, None)).unwrap();
    for kind in [Kind::Vote, Kind::PreVote] {
        match RangeHandler::handle(&*two.host, 1, kind, &bytes).await {
            Err(why) => assert!(why.contains("does not vote yet"), "{why}"),
            Ok(_) => panic!("a node that just started answered a {kind:?}"),
        }
    }
    // Node 1 cannot win without node 2's vote, and node 2 does not campaign (node 1 would
    // vote for it: it never heard of a leader) until its window ends.
    let led = |n: &Node| n.host.get(1).and_then(|r| r.leader());
    while two.host.quiet() {
        assert_eq!((led(&one), led(&two)), (None, None), "a leader elected while node 2 was quiet");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The window is the range's election timeout maximum (half the configured timeout).
    assert!(opened.elapsed() <= Duration::from_millis(300), "quiet for {:?}", opened.elapsed());
    // Then it votes, and the range elects.
    leader(&[&one, &two], 1).await;
    match RangeHandler::handle(&*two.host, 1, Kind::Vote, &bytes).await {
        Ok(_) => {}
        Err(why) => panic!("no vote after the window: {why}"),
    }
    one.stop().await;
    two.stop().await;
}

/// A range holding more than a merge can carry is not frozen: frozen, nothing could read its
/// keys into a merge, and nothing thaws it, so it would refuse every write for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_too_big_to_merge_is_not_frozen() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = start_all(&dirs).await;
    let voters: BTreeMap<u64, PeerNode> = nodes.iter().map(|n| (n.id, n.peer())).collect();
    for n in &nodes {
        n.host.create(range(1), Some(voters.clone())).await.unwrap();
    }
    let all: Vec<&Node> = nodes.iter().collect();
    let big = "x".repeat(1 << 20);
    let n = cairn_raft::range::types::MERGE_BYTES_MAX / (1 << 20) + 1;
    for i in 0..n {
        write(&all, 1, &key(1, i), &big).await;
    }
    match admin(&all, 1, 0, Admin::Freeze).await {
        Outcome::Done(b) => assert!(b.is_empty(), "a range of {n} MiB was frozen"),
        other => panic!("freeze: {other:?}"),
    }
    // Not frozen on any replica: each decided so at the same point of the log.
    for node in &all {
        let end = Instant::now() + Duration::from_secs(10);
        let r = node.host.get(1).expect("a replica");
        while r.sm.applied() < all[leader(&all, 1).await].host.get(1).unwrap().sm.applied() {
            assert!(Instant::now() < end, "node {} did not catch up", node.id);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!r.sm.frozen(), "node {} froze the range", node.id);
    }
    // Still at its epoch, and still writable.
    assert_eq!(
        write_op(&all, 1, RangeOp { epoch: 1, ..put(&key(1, 0), "after") }).await,
        RangeReply::Done(big.into_bytes())
    );
    // Smaller again, it freezes.
    for i in 1..n {
        write(&all, 1, &key(1, i), "").await;
    }
    match admin(&all, 1, 0, Admin::Freeze).await {
        Outcome::Done(b) => {
            assert_eq!(postcard::from_bytes::<RangeDesc>(&b).unwrap(), RangeDesc { epoch: 2, ..range(1) })
        }
        other => panic!("freeze: {other:?}"),
    }
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_range_merges_into_its_left_neighbour() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = start_all(&dirs).await;
    let voters: BTreeMap<u64, PeerNode> = nodes.iter().map(|n| (n.id, n.peer())).collect();
    for n in &nodes {
        n.host.create(range(1), Some(voters.clone())).await.unwrap();
    }
    let all: Vec<&Node> = nodes.iter().collect();
    for i in 0..100 {
        write(&all, 1, &key(1, i), &format!("v{i}")).await;
    }
    let at = key(1, 50).into_bytes();
    let right = match admin(&all, 1, 1, Admin::Split { key: at.clone(), child: 100 }).await {
        Outcome::Done(b) => postcard::from_bytes::<RangeDesc>(&b).unwrap(),
        other => panic!("split: {other:?}"),
    };
    for n in &all {
        let end = Instant::now() + Duration::from_secs(10);
        while n.host.get(100).is_none() {
            assert!(Instant::now() < end, "node {} never started range 100", n.id);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let at2 = |k: String, v: &str, epoch: u64| RangeOp { epoch, ..put(&k, v) };
    write_op(&all, 100, at2(key(1, 60), "after-split", 2)).await;
    write_op(&all, 100, at2(key(1, 61), "", 2)).await;
    // Freeze: the range's epoch moves on, and it refuses reads and writes from then on.
    let frozen = match admin(&all, 100, 0, Admin::Freeze).await {
        Outcome::Done(b) => postcard::from_bytes::<RangeDesc>(&b).unwrap(),
        other => panic!("freeze: {other:?}"),
    };
    assert_eq!(frozen, RangeDesc { epoch: 3, ..right.clone() });
    let l100 = leader(&all, 100).await;
    let refused = all[l100].host.execute(req(100, 3, true, key(1, 60).into_bytes())).await;
    assert_eq!(refused, Outcome::WrongRange(frozen.clone()));
    assert_eq!(write_op(&all, 100, at2(key(1, 62), "late", 3)).await, RangeReply::WrongRange(frozen.clone()));
    // Its keys, read from its leader, travel with the merge through range 1's log.
    let (desc, pairs): (RangeDesc, cairn_raft::range::Pairs) = match admin(&all, 100, 0, Admin::ReadFrozen).await {
        Outcome::Done(b) => postcard::from_bytes(&b).unwrap(),
        other => panic!("read: {other:?}"),
    };
    assert_eq!(desc, frozen);
    assert_eq!(pairs.len(), 50);
    let merged = match admin(&all, 1, 2, Admin::Merge { right: desc, pairs }).await {
        Outcome::Done(b) => postcard::from_bytes::<RangeDesc>(&b).unwrap(),
        other => panic!("merge: {other:?}"),
    };
    assert_eq!(merged, RangeDesc { epoch: 4, ..range(1) });
    // Every node: range 100 is gone, range 1 holds every key with its last value.
    for n in &all {
        let end = Instant::now() + Duration::from_secs(10);
        while n.host.get(100).is_some() {
            assert!(Instant::now() < end, "node {} kept range 100", n.id);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        converged(n, 1, &key(1, 60), "after-split").await;
        converged(n, 1, &key(1, 99), "v99").await;
        converged(n, 1, &key(1, 10), "v10").await;
        assert_eq!(keys_in_engine(n, &range(1).start, &range(1).end), 100);
        assert_eq!(n.host.get(1).unwrap().sm.desc(), merged);
    }
    assert_eq!(write_op(&all, 1, at2(key(1, 70), "merged", 4)).await, RangeReply::Done(b"v70".to_vec()));
    // A restart keeps the merged range, and no trace of the other.
    let (id, dir, addr) = nodes.remove(2).stop().await;
    let back = start(id, &dir, Some(addr)).await;
    assert!(back.host.get(100).is_none());
    converged(&back, 1, &key(1, 70), "merged").await;
    nodes.push(back);
    for n in nodes {
        n.stop().await;
    }
}

/// Waits until every replica on every node in `nodes` has stopped its Raft timer.
async fn all_asleep(nodes: &[&Node]) {
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let awake: Vec<(u64, u64)> = nodes
            .iter()
            .flat_map(|n| {
                n.host.replicas().into_iter().filter(|r| !r.asleep()).map(|r| (n.id, r.id)).collect::<Vec<_>>()
            })
            .collect();
        if awake.is_empty() {
            return;
        }
        assert!(Instant::now() < end, "(node, range) still ticking: {awake:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Idle ranges stop their timers and heartbeats: what crosses the transport then is one beat
/// per node pair, however many ranges there are. A write wakes its range's leader; a stopped
/// leader's node makes its ranges' followers elect; the node comes back and they settle again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_ranges_hibernate_and_wake_when_needed() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = cluster(&dirs).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    for id in 1..=RANGES {
        write(&refs, id, &key(id, 0), "v").await;
    }
    all_asleep(&refs).await;
    // Two seconds of quiet: beats every 50 ms to 2 peers is 80 messages a node. Heartbeats of
    // 16 ranges would be about 430 (each leader sends 2 per 50 ms). A window in which some
    // node went unheard for the election timeout (a starved test process: every node runs in
    // it) does not count: its ranges rightly woke. Another window is measured, up to five.
    let sent = |n: &Node| n.host.transport().messages.load(Relaxed);
    let returns = |nodes: &[Node]| nodes.iter().map(|n| n.host.peer_returns()).sum::<u64>();
    let mut windows = 0;
    loop {
        windows += 1;
        let (before, back) = (nodes.iter().map(sent).collect::<Vec<u64>>(), returns(&nodes));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let counts: Vec<u64> = nodes.iter().zip(before).map(|(n, b)| sent(n) - b).collect();
        if returns(&nodes) != back {
            eprintln!("window {windows}: a node went unheard and came back ({counts:?} messages); measuring again");
            assert!(windows < 5, "in five 2 s windows some node always went unheard: {counts:?}");
            all_asleep(&refs).await;
            continue;
        }
        for (n, d) in nodes.iter().zip(counts) {
            eprintln!("node {}: {d} messages in 2 s while idle", n.id);
            assert!(d <= 130, "node {} sent {d} messages in 2 s with every range idle", n.id);
        }
        break;
    }
    // A write to a sleeping range: its leader wakes and it commits on every replica.
    write(&refs, 5, &key(5, 1), "woken").await;
    for n in &nodes {
        converged(n, 5, &key(5, 1), "woken").await;
    }
    // The leader of range 1 stops: its followers hear no more beats, wake and elect.
    let l = leader(&refs, 1).await;
    let t0 = Instant::now();
    let stopped = nodes.remove(l).stop().await;
    let refs: Vec<&Node> = nodes.iter().collect();
    write(&refs, 1, &key(1, 1), "after").await;
    eprintln!("range 1 took a write {:?} after its leader's node stopped", t0.elapsed());
    for id in 1..=RANGES {
        write(&refs, id, &key(id, 2), "after").await;
    }
    // It comes back: it learns who leads, and everything goes quiet again.
    let back = start(stopped.0, &stopped.1, Some(stopped.2)).await;
    nodes.push(back);
    let refs: Vec<&Node> = nodes.iter().collect();
    for id in 1..=RANGES {
        for n in &nodes {
            converged(n, id, &key(id, 2), "after").await;
        }
    }
    all_asleep(&refs).await;
    for n in nodes {
        n.stop().await;
    }
}
