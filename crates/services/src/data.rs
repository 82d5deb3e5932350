//! The data tier as a member sees it: the range directory (kept by the meta group), the range
//! replicas this node must hold, and where each request for a key runs.
//!
//! - **Bootstrap**: the meta leader of a new cluster writes the first directory: one range for
//!   the keys before the Redis prefix, `initial_ranges` ranges splitting the Redis hash slots
//!   evenly, one range after it; each on `replication_factor` of the meta voters, spread round
//!   robin so that the first replica (which initializes the group, and so first leads it)
//!   differs from range to range.
//! - **Reconcile**: every node creates a replica of each range the directory places on it.
//! - **Route**: [`DataTier::execute`] finds the key's range in the cached directory and runs the
//!   request on the range's leader: here, or on another node over the range transport. A
//!   request refused before it ran (not the leader, not there, never connected, a stale epoch)
//!   is retried elsewhere; one whose outcome is unknown is reported as such and never sent
//!   again, so no request is executed twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_cluster::directory::{slot_start, Descriptor, Directory, DirectoryOp, NodeRecord, PREFIX_REDIS, SLOTS};
use cairn_raft::range::host::MEASURE_WAIT;
use cairn_raft::range::{Admin, Outcome, RangeDesc, RangeHost, RangeReplica, RangeRequest};
use cairn_raft::PeerNode;
use cairn_state::{Op, Response};
use parking_lot::{Mutex, RwLock};

use crate::Router;

/// One range as operators see it (`cairn range list`, `/v1/ranges`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RangeInfo {
    pub id: u64,
    /// Keys as text, non-printable bytes escaped (`\x72`).
    pub start: String,
    pub end: String,
    pub epoch: u64,
    /// Hash slots, for ranges of Redis keys (`0-4095`).
    pub slots: Option<String>,
    /// Node names.
    pub leader: Option<String>,
    pub replicas: Vec<String>,
    /// Bytes of keys and values, measured on this node's replica (`None`: no replica here, or
    /// its size not measured yet since it started or last changed).
    pub bytes: Option<u64>,
}

/// One node as operators see it (`cairn node list`, `/v1/nodes`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NodeInfo {
    pub id: String,
    pub name: String,
    /// `up` (a member of the meta group), `draining` (its replicas are moving off) or
    /// `unknown` (not a member).
    pub state: String,
    /// `voter` (of the meta group, and a data node) or `data` (joined with `--join`: a data
    /// node, a learner of the meta group).
    pub role: String,
    pub redis_urls: Vec<String>,
    pub replicas: usize,
    pub leaders: usize,
    /// Bytes of the replicas it holds, as far as this node can measure them.
    pub bytes: u64,
}

/// A key as text: printable ASCII as is, other bytes as `\xNN`.
pub fn key_text(k: &[u8]) -> String {
    k.iter()
        .map(|&b| if (0x20..0x7f).contains(&b) && b != b'\\' { (b as char).to_string() } else { format!("\\x{b:02x}") })
        .collect()
}

/// A key written as [`key_text`] writes it back to bytes (`\xNN` escapes).
pub fn parse_key_text(s: &str) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            let hex = s.get(i + 2..i + 4).filter(|_| b.get(i + 1) == Some(&b'x'));
            let v = hex.and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or_else(|| {
                format!("bad escape at byte {i} of {s:?}: write a backslash as \\x5c, other bytes as \\xNN")
            })?;
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

#[derive(Debug, Clone)]
pub struct TierOptions {
    /// Replicas per range (`--replication-factor`), fixed at bootstrap.
    pub replication_factor: usize,
    /// Ranges the Redis hash slots start out split into.
    pub initial_ranges: usize,
    /// This node's advertised Redis URLs (`--advertise-redis-urls`).
    pub redis_urls: Vec<String>,
    /// Joined with `--join`: a data node only (a learner of the meta group).
    pub data_only: bool,
}

/// Why a request for the data tier got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TierError {
    /// The cluster has no range directory yet (it is forming).
    #[error("the data tier is not ready: no range directory yet")]
    NotReady,
    /// Nothing ran, and no leader could be reached before the deadline.
    #[error("no leader for range {0} answered in time")]
    Unavailable(u64),
    /// A write may or may not have been applied.
    #[error("the outcome is unknown: {0}")]
    Unknown(String),
    /// An operator's request that cannot be carried out as asked.
    #[error("{0}")]
    Invalid(String),
}

/// How often the directory is re-read and replicas reconciled.
const TICK: Duration = Duration::from_millis(100);

/// The first wait for the directory to show a range's change, after a request found its route
/// stale; it doubles up to [`TICK`].
const STALE_ROUTE_WAIT_MIN: Duration = Duration::from_millis(2);

pub struct DataTier {
    c: Arc<Router>,
    host: Arc<RangeHost>,
    opts: TierOptions,
    dir: RwLock<Option<Arc<Directory>>>,
    /// The store's range map `dir` was last checked against.
    dir_from: Mutex<Option<Arc<std::collections::BTreeMap<u64, Descriptor>>>>,
    /// Ticks so far.
    ticks: std::sync::atomic::AtomicU64,
    /// Each range's leader as last learned here (from an answer, a redirect or a transfer),
    /// with the sequence number it was learned under: the answer to a request sent before a
    /// newer hint was learned does not overwrite it (a write the old leader acknowledged after
    /// a transfer would otherwise bring its name back).
    hints: Mutex<HashMap<u64, Hint>>,
    hint_seq: std::sync::atomic::AtomicU64,
}

/// The keys the first directory splits the keyspace at (the placement driver never merges
/// across them): the Redis prefix's start and end, and `initial_ranges` even slot boundaries.
pub fn initial_boundaries(initial_ranges: usize) -> Vec<Vec<u8>> {
    let n = initial_ranges.clamp(1, SLOTS as usize);
    let mut bounds: Vec<Vec<u8>> = (0..n).map(|i| slot_start((i * SLOTS as usize / n) as u16)).collect();
    bounds.push(vec![PREFIX_REDIS + 1]);
    bounds
}

/// The first directory of a cluster whose voters are `voters`.
pub fn initial_directory(voters: &[u64], opts: &TierOptions) -> Vec<Descriptor> {
    let rf = opts.replication_factor.clamp(1, voters.len().max(1));
    let mut bounds: Vec<Vec<u8>> = vec![vec![]];
    bounds.extend(initial_boundaries(opts.initial_ranges));
    bounds.push(vec![]);
    bounds
        .windows(2)
        .enumerate()
        .map(|(i, w)| Descriptor {
            id: i as u64 + 1,
            start: w[0].clone(),
            end: w[1].clone(),
            epoch: 1,
            replicas: (0..rf).map(|k| voters[(i + k) % voters.len()]).collect(),
            learners: vec![],
            conf: 0,
        })
        .collect()
}

/// A leader hint (see `DataTier::hints`).
#[derive(Debug, Clone, Copy)]
struct Hint {
    leader: u64,
    seq: u64,
}

impl DataTier {
    /// Starts the data tier's background work on this node.
    pub fn start(c: Arc<Router>, host: Arc<RangeHost>, opts: TierOptions) -> Arc<DataTier> {
        let t = Arc::new(DataTier {
            c,
            host,
            opts,
            dir: RwLock::new(None),
            dir_from: Mutex::new(None),
            ticks: Default::default(),
            hints: Mutex::new(HashMap::new()),
            hint_seq: Default::default(),
        });
        let weak = Arc::downgrade(&t);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(TICK).await;
                let Some(t) = weak.upgrade() else { return };
                t.tick().await;
            }
        });
        t
    }

    pub fn host(&self) -> &Arc<RangeHost> {
        &self.host
    }

    pub fn node_id(&self) -> u64 {
        self.c.id()
    }

    /// The directory as this node last read it from the meta group.
    pub fn directory(&self) -> Option<Arc<Directory>> {
        self.dir.read().clone()
    }

    /// The node leading range `d` as far as this node knows (its own replica's view, else the
    /// last node that answered for the range), else its first replica.
    pub fn leader_of(&self, d: &Descriptor) -> Option<u64> {
        self.known_leader_of(d).or_else(|| d.replicas.first().copied())
    }

    /// The node leading range `d` by this node's replica's view or the last answer for it;
    /// `None` when neither knows (no guess).
    pub fn known_leader_of(&self, d: &Descriptor) -> Option<u64> {
        self.host.get(d.id).and_then(|r| r.leader()).or_else(|| self.hints.lock().get(&d.id).map(|h| h.leader))
    }

    /// Every range, for operators, after a wait of at most [`MEASURE_WAIT`] for the sizes
    /// of this node's replicas to be measured again where they may have changed.
    pub async fn ranges_report(&self) -> Vec<RangeInfo> {
        self.host.measure(MEASURE_WAIT).await;
        let Some(dir) = self.directory() else { return vec![] };
        let records = self.nodes();
        let name = |id: u64| records.get(&id).map_or_else(|| format!("{id:x}"), |r| r.name.clone());
        dir.iter()
            .map(|d| RangeInfo {
                id: d.id,
                start: key_text(&d.start),
                end: key_text(&d.end),
                epoch: d.epoch,
                slots: cairn_cluster::directory::slots_of(&d.start, &d.end).map(|(a, b)| format!("{a}-{b}")),
                leader: self.leader_of(d).map(name),
                replicas: d.replicas.iter().map(|r| name(*r)).collect(),
                bytes: self.host.get(d.id).and_then(|r| r.measured_bytes()),
            })
            .collect()
    }

    /// Every data node, for operators.
    pub async fn nodes_report(&self) -> Vec<NodeInfo> {
        let ranges = self.ranges_report().await;
        let m = self.c.node.membership();
        let voters = m.voters;
        let members = m.nodes;
        self.nodes()
            .into_values()
            .map(|n| {
                let held: Vec<&RangeInfo> = ranges.iter().filter(|r| r.replicas.contains(&n.name)).collect();
                let state = if n.draining {
                    "draining"
                } else if members.contains_key(&n.id) {
                    "up"
                } else {
                    "unknown"
                };
                let role = if voters.contains(&n.id) { "voter" } else { "data" };
                NodeInfo {
                    id: format!("{:x}", n.id),
                    name: n.name.clone(),
                    state: state.into(),
                    role: role.into(),
                    redis_urls: n.redis_urls.clone(),
                    replicas: held.len(),
                    leaders: held.iter().filter(|r| r.leader.as_deref() == Some(n.name.as_str())).count(),
                    bytes: held.iter().filter_map(|r| r.bytes).sum(),
                }
            })
            .collect()
    }

    /// The data tier's node records (Redis URLs and such), by node id.
    pub fn nodes(&self) -> BTreeMap<u64, NodeRecord> {
        self.c.store().nodes()
    }

    /// Whether this node leads the meta group (and so drives placement).
    pub fn is_meta_leader(&self) -> bool {
        self.c.is_leader()
    }

    /// Peer addresses of the data nodes.
    pub fn peer_nodes(&self) -> BTreeMap<u64, PeerNode> {
        self.peers()
    }

    /// Peer addresses of the meta group's members, which are the data nodes.
    fn peers(&self) -> BTreeMap<u64, PeerNode> {
        self.c.node.membership().nodes
    }

    async fn tick(&self) {
        self.refresh();
        if let Some(dir) = self.directory() {
            self.reconcile(&dir).await;
            self.publish_ranges(&dir).await;
        } else if self.c.is_leader() {
            self.bootstrap().await;
        }
        self.publish_self().await;
    }

    fn refresh(&self) {
        let ranges = self.c.store().ranges();
        if ranges.is_empty() {
            return;
        }
        // The store hands out the same map until an apply changes it.
        if self.dir_from.lock().as_ref().is_some_and(|seen| Arc::ptr_eq(seen, &ranges)) {
            return;
        }
        let same = self.dir.read().as_ref().is_some_and(|d| {
            d.len() == ranges.len() && d.iter().all(|x| ranges.get(&x.id).is_some_and(|y| y.version() == x.version()))
        });
        *self.dir_from.lock() = Some(ranges.clone());
        if same {
            return;
        }
        match Directory::new(ranges.values().cloned()) {
            Ok(d) => *self.dir.write() = Some(Arc::new(d)),
            // The meta group refuses such a directory; seeing one is a bug worth shouting.
            Err(e) => tracing::error!(error = %e, "the stored range directory is invalid"),
        }
    }

    async fn bootstrap(&self) {
        let m = self.c.node.membership();
        let voters: Vec<u64> = m.voters.iter().copied().collect();
        if voters.is_empty() {
            return;
        }
        if voters.len() < self.opts.replication_factor {
            tracing::warn!(
                voters = voters.len(),
                replication_factor = self.opts.replication_factor,
                "fewer members than --replication-factor: ranges get one replica per member"
            );
        }
        let put = initial_directory(&voters, &self.opts);
        let n = put.len();
        let deadline = Instant::now() + Duration::from_secs(5);
        match self.c.propose(Op::Directory(DirectoryOp::Bootstrap { put }), deadline).await {
            Ok(Response::Directory { applied: true, .. }) => {
                tracing::info!(ranges = n, "created the data tier's first ranges")
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "data tier bootstrap did not happen yet"),
        }
    }

    /// Creates the replicas the directory places on this node.
    async fn reconcile(&self, dir: &Directory) {
        let me = self.c.id();
        let peers = self.peers();
        for d in dir.iter() {
            if !(d.replicas.contains(&me) || d.learners.contains(&me)) || self.host.get(d.id).is_some() {
                continue;
            }
            // The first replicas of a range's first epoch start its group with its first
            // membership; any other replica waits to be caught up by a snapshot. (Ranges made
            // by splits start from their parent's log instead.)
            let voters: Option<BTreeMap<u64, PeerNode>> = (d.epoch == 1 && d.conf == 0)
                .then(|| d.replicas.iter().filter_map(|id| peers.get(id).map(|p| (*id, p.clone()))).collect());
            if voters.as_ref().is_some_and(|v| v.len() != d.replicas.len()) {
                continue;
            }
            let desc = RangeDesc { id: d.id, start: d.start.clone(), end: d.end.clone(), epoch: d.epoch };
            let here: Vec<RangeDesc> = self.host.replicas().iter().map(|r| r.sm.desc()).collect();
            if let Some(beside) = lagging_neighbour(dir, &here, &desc) {
                tracing::debug!(range = d.id, beside, "a replica beside it lags: not created yet");
                continue;
            }
            if let Err(e) = self.host.create(desc, voters).await {
                tracing::debug!(range = d.id, error = %e, "cannot create a range replica yet");
            }
        }
        // Replicas moved off this node go: the directory no longer lists this node, and either
        // it reports a newer membership than the replica holds, or the replica's own applied
        // membership has left this node out too.
        for r in self.host.replicas() {
            let Some(d) = dir.get(r.id) else {
                let desc = r.sm.desc();
                // Not while a replica here of a range that took the span over still lags the
                // merge: its apply of the merge writes the span's keys, which this removal
                // would delete (a replica of it caught up to the directory's epoch already
                // holds the span, and the removal leaves those keys alone).
                let caught_up = span_caught_up(dir, &desc, |id| self.host.get(id).map(|x| x.sm.desc().epoch));
                if caught_up && merged_away(dir, &desc) {
                    tracing::info!(
                        range = r.id,
                        "removing the replica of a range merged away while this node missed it"
                    );
                    if let Err(e) = self.host.destroy(r.id).await {
                        tracing::warn!(range = r.id, error = %e, "cannot remove a range replica");
                    }
                }
                continue;
            };
            if d.replicas.contains(&me) || d.learners.contains(&me) {
                continue;
            }
            let (voters, learners, conf) = r.members();
            let left_out = !voters.contains(&me) && !learners.contains(&me);
            if d.conf > conf || (left_out && d.conf >= conf) {
                if let Err(e) = self.host.destroy(r.id).await {
                    tracing::warn!(range = r.id, error = %e, "cannot remove a range replica");
                }
            }
        }
    }

    /// A range replica here as the directory describes it: its span and epoch, and its
    /// applied membership (a range made by a split starts with its parent's).
    fn describe(r: &RangeReplica) -> Option<Descriptor> {
        let desc = r.sm.desc();
        let (voters, learners, conf) = r.members();
        if voters.is_empty() {
            return None;
        }
        Some(Descriptor {
            id: desc.id,
            start: desc.start,
            end: desc.end,
            epoch: desc.epoch,
            replicas: voters,
            learners,
            conf,
        })
    }

    /// Reports into the directory what the ranges this node leads have become: a replica
    /// change, or a split (the range's new span and the ranges it made, which must tile the
    /// span the directory knew).
    async fn publish_ranges(&self, dir: &Directory) {
        let me = self.c.id();
        let local = self.host.replicas();
        // A hibernating leader changes nothing (a split, merge or replica change is a request,
        // which wakes it): it is checked once a second only, in case its last report failed.
        let all = self.ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed).is_multiple_of(10);
        for r in local.iter().filter(|r| (all || !r.asleep()) && r.leader() == Some(me)) {
            let Some(cur) = dir.get(r.id) else { continue };
            let Some(mine) = Self::describe(r) else { continue };
            if mine.version() <= cur.version() {
                continue;
            }
            let mut put = vec![mine.clone()];
            let mut expect = vec![(cur.id, cur.epoch)];
            let mut remove = Vec::new();
            if within(cur, &mine)
                && (mine.start.as_slice(), mine.end.as_slice()) != (cur.start.as_slice(), cur.end.as_slice())
            {
                // A merge: the ranges it took over leave the directory.
                for o in dir.iter().filter(|o| o.id != mine.id && within(o, &mine)) {
                    expect.push((o.id, o.epoch));
                    remove.push(o.id);
                }
            } else if (mine.start.as_slice(), mine.end.as_slice()) != (cur.start.as_slice(), cur.end.as_slice()) {
                for o in local.iter().filter(|o| o.id != r.id && dir.get(o.id).is_none()) {
                    if let Some(od) = Self::describe(o).filter(|od| within(od, cur)) {
                        put.push(od);
                    }
                }
                put.sort_by(|a, b| a.start.cmp(&b.start));
                let tiles = put.first().is_some_and(|f| f.start == cur.start)
                    && put.last().is_some_and(|l| l.end == cur.end)
                    && put.windows(2).all(|w| w[0].end == w[1].start);
                if !tiles {
                    continue;
                }
            }
            let op = DirectoryOp::Update { expect, put, remove };
            match self.propose_directory(op).await {
                Ok(Response::Directory { applied: true, .. }) => {
                    tracing::info!(
                        range = r.id,
                        epoch = mine.epoch,
                        conf = mine.conf,
                        "range reported to the directory"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(range = r.id, error = %e, "range not reported yet"),
            }
        }
        self.refresh();
    }

    /// Proposes a directory change to the meta group, through its leader.
    async fn propose_directory(&self, op: DirectoryOp) -> Result<Response, cairn_types::Error> {
        let op = Op::Directory(op);
        let bytes = postcard::to_allocvec(&op).expect("serializable");
        self.c
            .on_leader(
                || cairn_proto::peer::forward_request::Request::Propose(bytes.clone().into()),
                |d| {
                    let op = op.clone();
                    async move { self.c.propose(op, d).await }
                },
                |x| match x {
                    cairn_proto::peer::forward_reply::Response::Proposed(b) => postcard::from_bytes(&b).ok(),
                    _ => None,
                },
            )
            .await
    }

    /// Publishes this node's record (its Redis URLs) until the meta group has it.
    async fn publish_self(&self) {
        let me = self.c.id();
        let have = self.c.store().nodes().get(&me).cloned();
        let want = NodeRecord {
            id: me,
            name: self.c.cfg.name.clone(),
            peer_urls: self.c.cfg.peer_urls.clone(),
            redis_urls: self.opts.redis_urls.clone(),
            // Set by operators (`cairn node remove`), kept.
            draining: have.as_ref().is_some_and(|n| n.draining),
            data_only: self.opts.data_only || have.as_ref().is_some_and(|n| n.data_only),
        };
        if have.as_ref() == Some(&want) {
            return;
        }
        if let Err(e) = self.propose_directory(DirectoryOp::Node(want)).await {
            tracing::debug!(error = %e, "node record not published yet");
        }
    }

    /// Runs a request for `key` on its range's leader. `cmd` is the applier's encoding.
    pub async fn execute(&self, key: &[u8], read: bool, cmd: Vec<u8>) -> Result<Vec<u8>, TierError> {
        let deadline = Instant::now() + self.c.cfg.request_timeout;
        let mut wait = STALE_ROUTE_WAIT_MIN;
        loop {
            let dir = self.directory().ok_or(TierError::NotReady)?;
            let d = dir.lookup(key).clone();
            match self.execute_range(&d, read, cmd.clone(), deadline).await? {
                Some(b) => return Ok(b),
                // A stale route (the range split, merged or moved): read the directory again,
                // and wait for it to show the change only if it does not yet. The split's
                // descriptors reach it one meta commit later; a fixed 100 ms wait here held
                // every client of a range that split for 100 ms.
                None => {
                    if Instant::now() >= deadline {
                        return Err(TierError::Unavailable(d.id));
                    }
                    self.refresh();
                    let moved_on = self.directory().is_some_and(|now| {
                        let n = now.lookup(key);
                        (n.id, n.epoch) != (d.id, d.epoch)
                    });
                    if !moved_on {
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(TICK);
                        self.refresh();
                    }
                }
            }
        }
    }

    /// Runs several reads of range `d` at once on the node believed to lead it (see
    /// `RangeHost::execute_reads`: one call, one read barrier): the answers in order, or `None`
    /// when any of them did not run as asked (no leader known, another node leads, the route
    /// is stale, a read failed). Reads change nothing, so the caller then runs each on its
    /// own, with the usual routing and retries.
    pub async fn execute_reads(&self, d: &Descriptor, cmds: &[Vec<u8>]) -> Option<Vec<Vec<u8>>> {
        let me = self.c.id();
        let (hint, since) = self.hint(d.id);
        let target = hint.or_else(|| self.host.get(d.id).and_then(|r| r.leader()))?;
        let peer = if target == me { PeerNode::default() } else { self.c.node.member_node(target)? };
        let timeout = self.c.cfg.request_timeout;
        let outcomes = self.host.execute_reads_on(target, &peer, d.id, d.epoch, cmds, timeout).await.ok()?;
        let answers = outcomes
            .into_iter()
            .map(|o| match o {
                Outcome::Done(b) => Some(b),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        self.learn(d.id, target, since);
        Some(answers)
    }

    /// Runs several writes of range `d` on the node believed to lead it, as one call (see
    /// `RangeHost::execute_writes`). Each answer: `Some(Ok)`, it ran; `Some(Err)`, it may have
    /// run (unknown outcome, as for a lone write); `None`, it provably did not run (no leader
    /// known, another node leads, the route is stale), and the caller routes it on its own.
    pub async fn execute_writes(&self, d: &Descriptor, cmds: &[Vec<u8>]) -> Vec<Option<Result<Vec<u8>, TierError>>> {
        let me = self.c.id();
        let (hint, since) = self.hint(d.id);
        let Some(target) = hint.or_else(|| self.host.get(d.id).and_then(|r| r.leader())) else {
            return vec![None; cmds.len()];
        };
        let peer = if target == me { PeerNode::default() } else { self.c.node.member_node(target).unwrap_or_default() };
        let timeout = self.c.cfg.request_timeout;
        let outcomes = self.host.execute_writes_on(target, &peer, d.id, d.epoch, cmds, timeout).await;
        if outcomes.iter().any(|o| matches!(o, Outcome::Done(_))) {
            self.learn(d.id, target, since);
        }
        outcomes
            .into_iter()
            .map(|o| match o {
                Outcome::Done(b) => Some(Ok(b)),
                Outcome::Unknown(e) => Some(Err(TierError::Unknown(e))),
                Outcome::WrongRange(_) | Outcome::NotLeader { .. } | Outcome::NotHere | Outcome::Unavailable(_) => None,
            })
            .collect()
    }

    /// Runs a read on this node's replica of `key`'s range, leader or not, without a read
    /// barrier (READONLY). `None` when this node holds no current replica of it.
    pub fn read_local(&self, key: &[u8], cmd: &[u8]) -> Option<Vec<u8>> {
        let dir = self.directory()?;
        let d = dir.lookup(key);
        match self.host.read_local(d.id, d.epoch, cmd) {
            Outcome::Done(b) => Some(b),
            _ => None,
        }
    }

    /// Runs a request on range `d`'s leader; `Ok(None)` when the range has another descriptor
    /// now (nothing ran).
    pub async fn execute_range(
        &self,
        d: &Descriptor,
        read: bool,
        cmd: Vec<u8>,
        deadline: Instant,
    ) -> Result<Option<Vec<u8>>, TierError> {
        self.run(d, RangeRequest::data(d.id, d.epoch, read, cmd), deadline).await
    }

    /// Range `id`'s leader hint, and the sequence number to learn a newer one under.
    fn hint(&self, id: u64) -> (Option<u64>, u64) {
        let since = self.hint_seq.load(std::sync::atomic::Ordering::Acquire);
        (self.hints.lock().get(&id).map(|h| h.leader), since)
    }

    /// Records `leader` for range `id`, unless a hint was learned after `since` (see `hints`).
    fn learn(&self, id: u64, leader: u64, since: u64) {
        let mut hints = self.hints.lock();
        if hints.get(&id).is_some_and(|h| h.seq > since) {
            return;
        }
        let seq = self.hint_seq.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
        hints.insert(id, Hint { leader, seq });
    }

    async fn run(&self, d: &Descriptor, req: RangeRequest, deadline: Instant) -> Result<Option<Vec<u8>>, TierError> {
        let me = self.c.id();
        let mut attempt = 0usize;
        loop {
            let (hint, since) = self.hint(d.id);
            let local = self.host.get(d.id).and_then(|r| r.leader());
            let target = hint.or(local).unwrap_or_else(|| d.replicas[attempt % d.replicas.len().max(1)]);
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(TierError::Unavailable(d.id));
            }
            // A request served here needs no address (copying the membership's map per request
            // was 8 % of a GET run).
            let peer =
                if target == me { PeerNode::default() } else { self.c.node.member_node(target).unwrap_or_default() };
            let outcome = self.host.execute_on(target, &peer, req.clone(), left).await;
            match outcome {
                Outcome::Done(b) => {
                    self.learn(d.id, target, since);
                    return Ok(Some(b));
                }
                Outcome::WrongRange(_) => return Ok(None),
                Outcome::NotLeader { leader: Some(l) } if l != target => {
                    self.learn(d.id, l, since);
                    continue;
                }
                Outcome::NotLeader { .. } | Outcome::NotHere | Outcome::Unavailable(_) => {
                    // The range may be gone (merged) or changed: re-route with the directory.
                    self.refresh();
                    if self.directory().and_then(|dir| dir.get(d.id).map(|x| x.epoch)) != Some(d.epoch) {
                        return Ok(None);
                    }
                    if req.admin.is_some() {
                        if let Outcome::Unavailable(why) = &outcome {
                            // An operator's change refused for a reason of its own (a node
                            // not a voter, a replica already there) is not retried.
                            if !why.contains("timed out") && !why.contains("connect") {
                                return Err(TierError::Invalid(why.clone()));
                            }
                        }
                    }
                    self.hints.lock().remove(&d.id);
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis((10 * attempt as u64).min(200))).await;
                }
                Outcome::Unknown(e) => return Err(TierError::Unknown(e)),
            }
        }
    }

    /// The range holding `key`, as the directory has it.
    fn range_of(&self, key: &[u8]) -> Result<Descriptor, TierError> {
        Ok(self.directory().ok_or(TierError::NotReady)?.lookup(key).clone())
    }

    fn range_by_id(&self, id: u64) -> Result<Descriptor, TierError> {
        let dir = self.directory().ok_or(TierError::NotReady)?;
        dir.get(id).cloned().ok_or_else(|| TierError::Invalid(format!("range {id} not found")))
    }

    /// A node id by name or hex id.
    pub fn node_named(&self, name: &str) -> Result<u64, TierError> {
        let nodes = self.nodes();
        nodes
            .values()
            .find(|n| n.name == name)
            .map(|n| n.id)
            .or_else(|| u64::from_str_radix(name, 16).ok().filter(|id| nodes.contains_key(id)))
            .ok_or_else(|| TierError::Invalid(format!("node {name:?} not found")))
    }

    /// Waits until this node's directory holds range `id` at `(epoch, conf)` or newer.
    async fn await_directory(&self, id: u64, version: (u64, u64), deadline: Instant) -> Result<(), TierError> {
        loop {
            self.refresh();
            if self.directory().and_then(|d| d.get(id).map(|d| d.version() >= version)).unwrap_or(false) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(TierError::Unavailable(id));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Splits the range holding `key` at `key` (under the Redis prefix: at the start of its
    /// slot, or the next slot's when that is the range's start). Answers the two ranges.
    pub async fn split_at(&self, key: &[u8]) -> Result<(u64, u64), TierError> {
        let deadline = Instant::now() + ADMIN_TIMEOUT;
        let d = self.range_of(key)?;
        if key == d.start.as_slice() {
            return Err(TierError::Invalid(format!("range {} already starts at {}", d.id, key_text(key))));
        }
        let at = cairn_cluster::directory::split_boundary(&d.start, &d.end, key).ok_or_else(|| {
            TierError::Invalid(format!("range {} cannot split at {}: no boundary inside it", d.id, key_text(key)))
        })?;
        let child = match self.propose_directory(DirectoryOp::Reserve).await {
            Ok(Response::Directory { reserved, .. }) if reserved > 0 => reserved,
            Ok(other) => return Err(TierError::Unknown(format!("unexpected answer to a reservation: {other:?}"))),
            Err(e) => return Err(TierError::Unknown(e.to_string())),
        };
        let req = RangeRequest::admin(d.id, d.epoch, Admin::Split { key: at, child });
        match self.run(&d, req, deadline).await? {
            Some(_) => {
                self.await_directory(child, (0, 0), deadline).await?;
                Ok((d.id, child))
            }
            None => Err(TierError::Invalid(format!(
                "range {} changed while the split was asked for (split or merged): try again",
                d.id
            ))),
        }
    }

    /// Starts removing node `id`: marks it draining, so the placement driver moves its
    /// replicas to other nodes.
    pub async fn drain(&self, id: u64) -> Result<(), TierError> {
        let mut rec =
            self.nodes().get(&id).cloned().ok_or_else(|| TierError::Invalid(format!("node {id:x} not found")))?;
        if rec.draining {
            return Ok(());
        }
        rec.draining = true;
        match self.propose_directory(DirectoryOp::Node(rec)).await {
            Ok(_) => Ok(()),
            Err(e) => Err(TierError::Unknown(e.to_string())),
        }
    }

    /// Replicas the directory still places on node `id`.
    pub fn replicas_on(&self, id: u64) -> usize {
        self.directory()
            .map_or(0, |d| d.iter().filter(|r| r.replicas.contains(&id) || r.learners.contains(&id)).count())
    }

    /// On the meta leader: data nodes being removed that hold no replica any more leave the
    /// meta group, and their records are forgotten. (A voter of the meta group stays: `etcdctl
    /// member remove` changes the meta group's voters.)
    pub async fn finish_removals(&self) {
        if !self.c.is_leader() {
            return;
        }
        let m = self.c.node.membership();
        for n in self.nodes().into_values().filter(|n| n.draining && !m.voters.contains(&n.id)) {
            if self.replicas_on(n.id) > 0 {
                continue;
            }
            if m.nodes.contains_key(&n.id) {
                let members = crate::members::Members::new(self.c.clone());
                let r = cairn_proto::etcdserverpb::MemberRemoveRequest { id: n.id };
                if let Err(e) = members.remove_on_leader(r).await {
                    tracing::warn!(node = %n.name, error = %e, "cannot take a drained node out of the meta group");
                    continue;
                }
            }
            match self.propose_directory(DirectoryOp::ForgetNode(n.id)).await {
                Ok(_) => tracing::info!(node = %n.name, "node removed: its replicas moved to other nodes"),
                Err(e) => tracing::warn!(node = %n.name, error = %e, "cannot forget a removed node"),
            }
        }
    }

    /// Asks range `id`'s leader a question that changes nothing (`Admin::MiddleKey`,
    /// `Admin::LoadKeys`), refused if the range is no longer at `epoch`: its descriptor and the
    /// answer.
    async fn ask_leader(&self, id: u64, epoch: u64, question: Admin) -> Result<(Descriptor, Vec<u8>), TierError> {
        let deadline = Instant::now() + ADMIN_TIMEOUT;
        let d = self.range_by_id(id)?;
        if d.epoch != epoch {
            return Err(TierError::Invalid(format!("range {id} changed since it was looked at")));
        }
        let req = RangeRequest::admin(d.id, d.epoch, question);
        let answer = self.run(&d, req, deadline).await?.ok_or(TierError::Unavailable(id))?;
        Ok((d, answer))
    }

    /// Splits range `id` (at `epoch`) at the middle of its bytes, as its leader measures them,
    /// moved to a legal boundary. Answers the new range.
    pub async fn split_range(&self, id: u64, epoch: u64) -> Result<u64, TierError> {
        let (_, mid) = self.ask_leader(id, epoch, Admin::MiddleKey).await?;
        if mid.is_empty() {
            return Err(TierError::Invalid(format!("range {id} is empty")));
        }
        self.split_at(&mid).await.map(|(_, new)| new)
    }

    /// Splits range `id` (still at `epoch`) where its recent load divides best between the
    /// halves (`cairn_cluster::directory::load_split_boundary`, over the keys its leader
    /// sampled from its requests); answers the new range, or `None` when no boundary divides
    /// it well enough (a split that leaves the load on one side only adds a cold range).
    pub async fn split_range_by_load(&self, id: u64, epoch: u64) -> Result<Option<u64>, TierError> {
        let (d, answer) = self.ask_leader(id, epoch, Admin::LoadKeys).await?;
        let samples: Vec<Vec<u8>> =
            postcard::from_bytes(&answer).map_err(|e| TierError::Unknown(format!("undecodable load samples: {e}")))?;
        let Some(at) = cairn_cluster::directory::load_split_boundary(&d.start, &d.end, &samples) else {
            return Ok(None);
        };
        self.split_at(&at).await.map(|(_, new)| Some(new))
    }

    /// Merges range `id` with the range on its right (see [`DataTier::merge`]); answers the
    /// range merged away.
    pub async fn merge_right(&self, id: u64) -> Result<u64, TierError> {
        let l = self.range_by_id(id)?;
        let dir = self.directory().ok_or(TierError::NotReady)?;
        if l.end.is_empty() {
            return Err(TierError::Invalid(format!("range {id} is the last range: nothing on its right")));
        }
        let right = dir.lookup(&l.end).id;
        self.merge(id, right).await.map(|()| right)
    }

    /// Merges range `right` into its left neighbour `left`: both must have the same voters.
    /// The right range is frozen (its keys are final), its keys are read from its leader and
    /// proposed with the merge in the left range's log. Idempotent on a frozen right range, so
    /// a merge cut short is finished by asking again.
    pub async fn merge(&self, left: u64, right: u64) -> Result<(), TierError> {
        let deadline = Instant::now() + ADMIN_TIMEOUT;
        let l = self.range_by_id(left)?;
        let r = self.range_by_id(right)?;
        if l.end != r.start || l.end.is_empty() {
            return Err(TierError::Invalid(format!("range {right} is not the right neighbour of range {left}")));
        }
        let (mut a, mut b) = (l.replicas.clone(), r.replicas.clone());
        a.sort_unstable();
        b.sort_unstable();
        if a != b || !l.learners.is_empty() || !r.learners.is_empty() {
            return Err(TierError::Invalid(format!(
                "ranges {left} and {right} are not on the same nodes: move a replica first"
            )));
        }
        // Frozen at the epoch checked above: a right range that split meanwhile (its split not
        // yet in the directory) refuses, else the merged span would not tile the directory's
        // ranges and no report could ever enter it. A range an earlier attempt froze is in
        // the directory at its frozen epoch, and freezing it again answers as before.
        match self.run(&r, RangeRequest::admin(right, r.epoch, Admin::Freeze), deadline).await? {
            Some(b) if b.is_empty() => {
                return Err(TierError::Invalid(format!(
                    "range {right} holds more than {} MiB: too big to merge",
                    cairn_raft::range::types::MERGE_BYTES_MAX >> 20
                )))
            }
            Some(_) => {}
            None => {
                return Err(TierError::Invalid(format!(
                    "range {right} changed while the merge was asked for: try again"
                )))
            }
        }
        let frozen = self
            .run(&r, RangeRequest::admin(right, 0, Admin::ReadFrozen), deadline)
            .await?
            .ok_or(TierError::Unavailable(right))?;
        let (rdesc, pairs): (RangeDesc, cairn_raft::range::Pairs) =
            postcard::from_bytes(&frozen).map_err(|e| TierError::Unknown(format!("undecodable range keys: {e}")))?;
        let req = RangeRequest::admin(left, l.epoch, Admin::Merge { right: rdesc, pairs });
        match self.run(&l, req, deadline).await? {
            Some(b) => {
                let merged: RangeDesc =
                    postcard::from_bytes(&b).map_err(|e| TierError::Unknown(format!("undecodable answer: {e}")))?;
                self.await_directory(left, (merged.epoch, 0), deadline).await
            }
            None => Err(TierError::Invalid(format!("range {left} changed while the merge was asked for: try again"))),
        }
    }

    /// Hands range `id`'s leadership to node `to`.
    pub async fn transfer_leader(&self, id: u64, to: u64) -> Result<(), TierError> {
        let deadline = Instant::now() + ADMIN_TIMEOUT;
        let d = self.range_by_id(id)?;
        let req = RangeRequest::admin(d.id, 0, Admin::TransferLeader { to });
        self.run(&d, req, deadline).await?;
        self.learn(id, to, u64::MAX);
        // The old leader returns once it sees the new one; this node's own replica, if it is a
        // third, learns of it from the new leader's first message. Wait for that (briefly), so
        // that what this node reports next (range list, CLUSTER SLOTS) already shows it.
        if let Some(r) = self.host.get(id) {
            let until = deadline.min(Instant::now() + Duration::from_secs(2));
            while r.leader() != Some(to) && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(())
    }

    /// Moves range `id`'s replica from node `from` to node `to`, and waits until the
    /// directory says so.
    pub async fn move_replica(&self, id: u64, from: u64, to: u64) -> Result<(), TierError> {
        let deadline = Instant::now() + MOVE_TIMEOUT;
        let d = self.range_by_id(id)?;
        let to_peer = self
            .peers()
            .get(&to)
            .cloned()
            .ok_or_else(|| TierError::Invalid(format!("node {to:x} is not a member of the cluster")))?;
        let req = RangeRequest::admin(d.id, 0, Admin::Move { from, to, to_peer });
        self.run(&d, req, deadline).await?;
        loop {
            self.refresh();
            let now = self.range_by_id(id)?;
            if now.replicas.contains(&to) && !now.replicas.contains(&from) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(TierError::Unavailable(id));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Adds a replica of range `id` on node `to` (a range with fewer replicas than the
    /// replication factor: the cluster started with fewer nodes, and nodes joined since).
    pub async fn add_replica(&self, id: u64, to: u64) -> Result<(), TierError> {
        let deadline = Instant::now() + MOVE_TIMEOUT;
        let d = self.range_by_id(id)?;
        let to_peer = self
            .peers()
            .get(&to)
            .cloned()
            .ok_or_else(|| TierError::Invalid(format!("node {to:x} is not a member of the cluster")))?;
        let factor = self.opts.replication_factor;
        let req = RangeRequest::admin(d.id, d.epoch, Admin::AddReplica { to, to_peer, factor });
        if self.run(&d, req, deadline).await?.is_none() {
            // Split or merged since: the placement driver looks again.
            return Err(TierError::Unavailable(id));
        }
        loop {
            self.refresh();
            if self.range_by_id(id)?.replicas.contains(&to) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(TierError::Unavailable(id));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Removes those of `nodes` that are still learners of range `id` (left over from moves
    /// cut short), if it is still at `epoch`.
    pub async fn drop_learners(&self, id: u64, epoch: u64, nodes: Vec<u64>) -> Result<(), TierError> {
        let deadline = Instant::now() + ADMIN_TIMEOUT;
        let d = self.range_by_id(id)?;
        match self.run(&d, RangeRequest::admin(id, epoch, Admin::DropLearners { nodes }), deadline).await? {
            Some(_) => Ok(()),
            // Split or merged since: the placement driver looks again.
            None => Err(TierError::Unavailable(id)),
        }
    }
}

/// How long an operator's split or leader transfer may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a move may take (the new replica is caught up by snapshot).
const MOVE_TIMEOUT: Duration = Duration::from_secs(150);

/// Whether `a`'s span lies inside `b`'s.
fn within(a: &Descriptor, b: &Descriptor) -> bool {
    a.start >= b.start && (b.end.is_empty() || (!a.end.is_empty() && a.end <= b.end))
}

/// Whether a replica the directory does not list (`desc`, as the replica holds it) belongs to
/// a range merged away: every range the directory has over its span has a later epoch. A
/// merge's epoch is past both merged ranges' and epochs only grow from there, so that holds
/// once a merge took the span over, whether or not this node applied it (it was down, or
/// caught up by a snapshot past it). A range split off here and not yet reported is the
/// other kind of replica the directory does not list: its parent, over its span in the
/// directory, has an earlier epoch than it (a split raises both), so it stays.
fn merged_away(dir: &Directory, desc: &RangeDesc) -> bool {
    let mut over = over(dir, desc).peekable();
    over.peek().is_some() && over.all(|d| d.id != desc.id && d.epoch > desc.epoch)
}

/// The replica here (its id) that a new replica of `desc` must wait for, if any: one beside
/// `desc`'s span that lags the directory or left it (merged away). It may still apply a merge
/// that grows its span over `desc`'s, writing keys that are `desc`'s now (a merge, then a
/// split at the same key, on the other nodes). `here` holds the spans of this node's replicas.
fn lagging_neighbour(dir: &Directory, here: &[RangeDesc], desc: &RangeDesc) -> Option<u64> {
    here.iter()
        .find(|h| {
            let beside = (!h.end.is_empty() && h.end == desc.start) || (!desc.end.is_empty() && desc.end == h.start);
            beside && dir.get(h.id).is_none_or(|x| x.epoch > h.epoch)
        })
        .map(|h| h.id)
}

/// Whether each range the directory has over `desc`'s span, and this node holds a replica of
/// (`epoch_here` gives its epoch), has caught up to the directory's epoch: only then may a
/// replica merged away there be removed (a lagging one's apply of the merge writes the span's
/// keys, which the removal would delete; one caught up already holds them, and the removal
/// leaves those keys alone).
fn span_caught_up(dir: &Directory, desc: &RangeDesc, epoch_here: impl Fn(u64) -> Option<u64>) -> bool {
    over(dir, desc).all(|d| epoch_here(d.id).is_none_or(|e| e >= d.epoch))
}

/// The directory's ranges over `desc`'s span.
fn over<'a>(dir: &'a Directory, desc: &'a RangeDesc) -> impl Iterator<Item = &'a Descriptor> + 'a {
    dir.iter().filter(move |d| {
        (d.end.is_empty() || d.end.as_slice() > desc.start.as_slice())
            && (desc.end.is_empty() || d.start.as_slice() < desc.end.as_slice())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_print_as_text() {
        assert_eq!(key_text(b"abc"), "abc");
        assert_eq!(key_text(&[b'r', 0x10, 0x00]), "r\\x10\\x00");
        assert_eq!(key_text(b"a\\b"), "a\\x5cb");
        for k in [&b"abc"[..], &[b'r', 0x10, 0x00], b"a\\b", &[0xff, b' ', 0x7f]] {
            assert_eq!(parse_key_text(&key_text(k)).unwrap(), k);
        }
        assert!(parse_key_text("a\\").is_err());
        assert!(parse_key_text("a\\xZZ").is_err());
        assert!(parse_key_text("a\\y00").is_err());
    }

    #[test]
    fn the_first_directory_tiles_the_keyspace_and_spreads_replicas() {
        let opts = TierOptions { replication_factor: 3, initial_ranges: 4, redis_urls: vec![], data_only: false };
        let descs = initial_directory(&[11, 22, 33], &opts);
        assert_eq!(descs.len(), 6);
        let dir = Directory::new(descs.clone()).unwrap();
        // Every slot's keys are in one of the four Redis ranges, at even boundaries.
        assert_eq!(dir.lookup(&slot_start(0)).id, 2);
        assert_eq!(dir.lookup(&slot_start(4095)).id, 2);
        assert_eq!(dir.lookup(&slot_start(4096)).id, 3);
        assert_eq!(dir.lookup(&slot_start(16383)).id, 5);
        assert_eq!(dir.lookup(b"a").id, 1);
        assert_eq!(dir.lookup(b"z").id, 6);
        // First replicas (the initial leaders) differ from range to range.
        let firsts: Vec<u64> = descs.iter().map(|d| d.replicas[0]).collect();
        assert_eq!(firsts, vec![11, 22, 33, 11, 22, 33]);
        assert!(descs.iter().all(|d| d.replicas.len() == 3));
        // Fewer members than the replication factor: one replica on each.
        let one = initial_directory(&[7], &opts);
        assert!(one.iter().all(|d| d.replicas == vec![7]));
    }

    /// A replica the directory does not list goes only once every range over its span has a
    /// later epoch (a merge took it over); a split's child not yet reported stays.
    #[test]
    fn only_a_replica_merged_away_is_removed() {
        let (d, r) = (desc, span);
        // Range 2 ([m, t), frozen at epoch 4) merged into range 1, now [a, t) at epoch 5.
        let merged = Directory::new([d(1, b"", b"t", 5), d(3, b"t", b"", 1)]).unwrap();
        assert!(merged_away(&merged, &r(2, b"m", b"t", 4)));
        assert!(merged_away(&merged, &r(2, b"m", b"t", 3)), "a replica that lagged the freeze too");
        // ... and range 1 split since at p: still every range over [m, t) is later.
        let split = Directory::new([d(1, b"", b"p", 6), d(4, b"p", b"t", 6), d(3, b"t", b"", 1)]).unwrap();
        assert!(merged_away(&split, &r(2, b"m", b"t", 4)));
        // Range 5 split off range 1 ([a, t) at epoch 5 -> [a, p) and [p, t) at 6) here, and
        // not yet reported: the directory's range 1 over it is older.
        assert!(!merged_away(&merged, &r(5, b"p", b"t", 6)));
        // Part of its span under an older range: not merged away.
        let mixed = Directory::new([d(1, b"", b"p", 6), d(4, b"p", b"t", 2), d(3, b"t", b"", 1)]).unwrap();
        assert!(!merged_away(&mixed, &r(2, b"m", b"t", 4)));
        // The last range (an empty end) too.
        let last = Directory::new([d(1, b"", b"", 9)]).unwrap();
        assert!(merged_away(&last, &r(3, b"t", b"", 1)));
        assert!(!merged_away(&last, &r(3, b"t", b"", 10)));
    }

    fn desc(id: u64, start: &[u8], end: &[u8], epoch: u64) -> Descriptor {
        Descriptor {
            id,
            start: start.to_vec(),
            end: end.to_vec(),
            epoch,
            replicas: vec![1, 2, 3],
            learners: vec![],
            conf: 0,
        }
    }

    fn span(id: u64, start: &[u8], end: &[u8], epoch: u64) -> RangeDesc {
        RangeDesc { id, start: start.to_vec(), end: end.to_vec(), epoch }
    }

    /// A new replica waits while a replica here beside its span lags the directory or left it;
    /// replicas that are current, or not beside it, do not hold it up.
    #[test]
    fn a_new_replica_waits_for_a_lagging_neighbour() {
        // The directory: range 1 [, m) at epoch 5, range 4 [m, t) (new here), range 3 [t, ).
        let dir = Directory::new([desc(1, b"", b"m", 5), desc(4, b"m", b"t", 6), desc(3, b"t", b"", 2)]).unwrap();
        let new = span(4, b"m", b"t", 6);
        // Its neighbours here are current: it is created.
        let current = [span(1, b"", b"m", 5), span(3, b"t", b"", 2)];
        assert_eq!(lagging_neighbour(&dir, &current, &new), None);
        // The left one lags (epoch 4 here, 5 in the directory): it waits.
        let lagging = [span(1, b"", b"m", 4), span(3, b"t", b"", 2)];
        assert_eq!(lagging_neighbour(&dir, &lagging, &new), Some(1));
        // The right one left the directory (range 7 [t, x), merged away): it waits.
        let left = [span(1, b"", b"m", 5), span(7, b"t", b"x", 1)];
        assert_eq!(lagging_neighbour(&dir, &left, &new), Some(7));
        // A lagging replica that is not beside it does not matter.
        let far = [span(1, b"", b"g", 1)];
        assert_eq!(lagging_neighbour(&dir, &far, &new), None);
    }

    /// A replica merged away is removed only once each range over its span that this node
    /// holds has caught up to the directory's epoch.
    #[test]
    fn a_merged_replica_waits_for_the_ranges_over_its_span_to_catch_up() {
        // Range 2 [m, t) merged into range 1, now [, t) at epoch 5.
        let dir = Directory::new([desc(1, b"", b"t", 5), desc(3, b"t", b"", 1)]).unwrap();
        let gone = span(2, b"m", b"t", 4);
        assert!(span_caught_up(&dir, &gone, |id| (id == 1).then_some(5)));
        assert!(!span_caught_up(&dir, &gone, |id| (id == 1).then_some(4)), "range 1 here has not applied the merge");
        assert!(span_caught_up(&dir, &gone, |_| None), "no replica here over the span");
        // Range 3 is not over the span: its epoch here does not matter.
        assert!(span_caught_up(&dir, &gone, |id| match id {
            1 => Some(5),
            _ => Some(0),
        }));
    }
}
