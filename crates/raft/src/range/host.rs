//! The node's range replicas: the shared log, the data engine, the transport, and one openraft
//! instance per range.
//!
//! Layout under the member directory:
//! ```text
//! member/ranges/log/       the shared Raft log of every range (raft-engine)
//! member/ranges/data.redb  every range's keys (Table::Kv) and per-range state (Table::Meta)
//! ```

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cairn_storage::{BufferLimits, BufferedEngine, Engine, RedbEngine, Table};
use openraft::async_runtime::WatchReceiver;
use openraft::{ChangeMembers, Config, SnapshotPolicy};
use parking_lot::{Mutex, RwLock};

use crate::node::RaftTimers;
use crate::range::gc;
use crate::range::hibernate::{self, Beat, Liveness, Role};
use crate::range::log::{RangeLog, SharedLog};
use crate::range::mux::{Kind, Mux, RangeHandler, RangeNetwork};
use crate::range::sample::KeySample;
use crate::range::sm::{self, Applier, DataView, RangeEvent, RangeStateMachine, SnapshotBytes};
use crate::range::types::{
    Admin, Outcome, RangeCmd, RangeConfig, RangeDesc, RangeId, RangeOp, RangeRaft, RangeReply, RangeRequest, Routed,
    SnapshotMeta, Vote,
};
use crate::types::PeerNode;

#[derive(Debug, Clone)]
pub struct RangeHostOptions {
    /// This node's id (the same as in the meta group).
    pub node_id: u64,
    /// `member/ranges` under the data directory.
    pub dir: PathBuf,
    pub timers: RaftTimers,
    /// Applied entries between a range's snapshots (its log is purged behind them as `gc` says).
    pub snapshot_count: u64,
    /// UNSAFE: no fsync of the shared log. Off by default.
    pub unsafe_no_fsync: bool,
    pub engine_cache_bytes: usize,
    /// When the data engine's write buffer goes to redb (see [`BufferedEngine`]).
    pub engine_buffer: BufferLimits,
    /// `--range-split-bytes`: a range that may have grown past it is measured again sooner
    /// than one that cannot have (see `RangeReplica::size`).
    pub split_bytes: u64,
    /// The node's transport to its peers, the meta group's too: every group's messages to a
    /// node share its batches and its one connection.
    pub mux: Mux,
    /// How long a move waits for its new replica to catch up before it removes it and fails:
    /// [`MOVE_CATCH_UP_MAX`] (the placement driver's learner timeout counts on it).
    pub move_catch_up_max: Duration,
}

/// One range replica on this node.
pub struct RangeReplica {
    pub id: RangeId,
    pub raft: RangeRaft,
    pub sm: RangeStateMachine,
    load: Mutex<Load>,
    /// [`RangeHostOptions::split_bytes`].
    split_bytes: u64,
    /// Its Raft timer is stopped (see [`hibernate`]).
    asleep: std::sync::atomic::AtomicBool,
    /// A leader stays awake until then, whatever its load (a peer came back).
    awake_until: Mutex<Option<std::time::Instant>>,
    /// The vote under which this replica, leading, asked openraft to hand leadership over.
    /// openraft's leader then proposes nothing and sends no heartbeat for the rest of that
    /// term, and counts on the followers' election timers if the handover fails (the target
    /// died). So while that vote stands it is no leader to vouch for in beats: a follower
    /// that slept on its word must wake and elect.
    handed_over: Mutex<Option<crate::range::types::Vote>>,
    /// Held by a replica change (a move, a replica added) from its first look at the members
    /// to its end: another one meanwhile is refused (not queued: the caller's deadline may pass
    /// while it waits, and what it was planned for may no longer hold). Two at once each
    /// computed the voters from what they saw, so a second move off the same node, run while
    /// the first waited for its learner, left the range with one voter too many. (Dropping
    /// learners takes no turn: it is what ends a move whose learner never catches up.)
    changing: tokio::sync::Mutex<()>,
    /// Client writes waiting to share the next entry (see [`RangeReplica::write_data`]).
    batcher: Mutex<Batcher>,
    /// Room for queued client writes, in KiB ([`QUEUED_KIB_MAX`]): a writer waits for it.
    room: Arc<tokio::sync::Semaphore>,
    /// Entries of client writes proposed and not yet answered ([`ENTRIES_IN_FLIGHT`]).
    in_flight: Arc<tokio::sync::Semaphore>,
    /// Read barriers shared by concurrent reads (see [`RangeReplica::read_barrier`]).
    barriers: Arc<Barriers>,
    /// openraft's metrics, watched. Kept rather than asked of `raft` each time: every
    /// `Raft::metrics()` clones a watch receiver (two shared counters touched, and again on
    /// drop), and the beat and hibernation passes read every replica's several times a
    /// second; with 1,000 idle ranges those clones were 12 % of an idle node's CPU.
    server_metrics: openraft::alias::WatchReceiverOf<RangeConfig, openraft::metrics::RaftServerMetrics<RangeConfig>>,
    metrics: openraft::alias::WatchReceiverOf<RangeConfig, openraft::RaftMetrics<RangeConfig>>,
    /// Another receiver of the same, only to learn that the core ended (see
    /// [`RangeReplica::core_ended`]).
    core_watch: Mutex<openraft::alias::WatchReceiverOf<RangeConfig, openraft::RaftMetrics<RangeConfig>>>,
}

/// One read barrier round, shared by every read that joined it before it started.
type SharedRound = futures::future::Shared<futures::future::BoxFuture<'static, Result<(), RangeError>>>;

/// A replica's read barrier rounds: at most one running, at most one waiting to start.
#[derive(Default)]
struct Barriers {
    state: Mutex<BarrierState>,
    /// Signalled when a round ends.
    ended: tokio::sync::Notify,
    /// Rounds started.
    rounds: std::sync::atomic::AtomicU64,
    /// Reads that needed no round: the lease held (see [`RangeReplica::lease_holds`]).
    leased: std::sync::atomic::AtomicU64,
    /// The same counts for every replica of the node.
    node: Arc<ReadStats>,
}

/// How a node's range leaders cleared their linearizable reads (`/metrics`).
#[derive(Debug, Default)]
pub struct ReadStats {
    /// Read barrier rounds through openraft's core (a lease check, or a heartbeat round).
    pub rounds: std::sync::atomic::AtomicU64,
    /// Reads let through on the lease alone (see [`RangeReplica::lease_holds`]).
    pub leased: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct BarrierState {
    /// The round the next reads join: it starts once the running one ends.
    next: Option<SharedRound>,
    running: bool,
}

/// Marks the running round ended when dropped (also when every read waiting on it gave up).
struct RoundGuard(Arc<Barriers>);

impl Drop for RoundGuard {
    fn drop(&mut self) {
        self.0.state.lock().running = false;
        self.0.ended.notify_waiters();
    }
}

/// Where a proposed entry's answer from apply comes.
type Answer = tokio::sync::oneshot::Receiver<openraft::raft::ClientWriteResult<RangeConfig>>;

/// A proposed entry's result as [`RangeReplica::write`] gives it; the responder dropped
/// unanswered (the group stopped) leaves the outcome unknown.
fn written(
    range: RangeId,
    reply: Result<openraft::raft::ClientWriteResult<RangeConfig>, tokio::sync::oneshot::error::RecvError>,
) -> Result<RangeReply, RangeError> {
    use openraft::error::ClientWriteError;
    match reply {
        Ok(Ok(r)) => Ok(r.data),
        Ok(Err(ClientWriteError::ForwardToLeader(f))) => Err(RangeError::NotLeader { range, leader: f.leader_id }),
        Ok(Err(e)) => Err(RangeError::Raft { range, msg: e.to_string() }),
        Err(_) => Err(RangeError::CutShort(range)),
    }
}

/// Gives each queued write its answer from an entry's result.
fn hand_out(
    answers: Vec<tokio::sync::oneshot::Sender<Result<RangeReply, RangeError>>>,
    r: Result<RangeReply, RangeError>,
) {
    match r {
        Ok(RangeReply::Batch(replies)) if replies.len() == answers.len() => {
            for (a, r) in answers.into_iter().zip(replies) {
                let _ = a.send(Ok(r));
            }
        }
        // One command's answer, or a refusal of the whole entry (the range froze or was
        // absorbed before it applied): the same for each.
        Ok(reply) => {
            for a in answers {
                let _ = a.send(Ok(reply.clone()));
            }
        }
        Err(e) => {
            for a in answers {
                let _ = a.send(Err(e.clone()));
            }
        }
    }
}

/// The outcome of one command's answer from apply (never a batch's: only
/// [`RangeReplica::write_data`] proposes batches, and it hands each command its own answer).
fn answered(reply: RangeReply) -> Outcome {
    match reply {
        RangeReply::Done(b) => Outcome::Done(b),
        RangeReply::WrongRange(d) => Outcome::WrongRange(d),
        RangeReply::Batch(_) => Outcome::Unknown("a batch's answers for one command".into()),
        RangeReply::Unknown(why) => Outcome::Unknown(why),
    }
}

/// Client writes queued on a replica, and whether a task is proposing them.
#[derive(Default)]
struct Batcher {
    queue: std::collections::VecDeque<Queued>,
    proposing: bool,
}

struct Queued {
    routed: Routed,
    answer: tokio::sync::oneshot::Sender<Result<RangeReply, RangeError>>,
    /// Its room among the queued writes, held until it is answered, whether or not its writer
    /// still waits (a writer whose wait is dropped leaves its write queued).
    room: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// The most client writes one entry carries, and their most bytes (one write past it goes
/// alone).
const BATCH_OPS_MAX: usize = 256;
const BATCH_BYTES_MAX: usize = 4 << 20;
/// The most KiB of client writes queued on one replica before writers wait.
const QUEUED_KIB_MAX: usize = 64 << 10;
/// Entries of client writes a replica has proposed and not yet seen applied, at most. One at a
/// time made a write that arrived just after an entry was proposed wait for that entry's whole
/// round (log fsync on a quorum, commit, apply) before its own began: with 50 clients sending
/// one SET at a time, p50 was 3.8 ms. Several in flight overlap their rounds, and the shared
/// log still writes and fsyncs whatever is queued, from every range, at once. Once every slot
/// is taken, writes queue and the next entry carries all of them, as before.
const ENTRIES_IN_FLIGHT: usize = 4;

/// A replica's client requests and size, as last measured.
#[derive(Default)]
struct Load {
    /// Requests since the last report, and when that was.
    requests: u64,
    since: Option<std::time::Instant>,
    last_request: Option<std::time::Instant>,
    /// A sample of the keys of the requests since the last report, and the keys sampled in
    /// the window before: where a split by load should cut ([`Admin::LoadKeys`]).
    sample: KeySample,
    last_sample: Vec<Vec<u8>>,
    /// Bytes, and when they were measured (a scan), at which epoch and at which count of
    /// bytes written (see [`RangeReplica::size`]).
    bytes: u64,
    measured: Option<Measured>,
}

#[derive(Clone, Copy)]
struct Measured {
    at: std::time::Instant,
    epoch: u64,
    written: u64,
    installs: u64,
}

impl Measured {
    /// Whether a replica measured at `bytes` then is to be measured again as it stands `now`
    /// (see [`SIZE_EVERY`]).
    fn stale(&self, now: Measured, bytes: u64, split_bytes: u64) -> bool {
        let since = now.at.duration_since(self.at);
        // Passes measure one at a time and `written` only grows; saturating all the same.
        let changed = now.written.saturating_sub(self.written);
        self.epoch != now.epoch
            || self.installs != now.installs
            || (changed > 0 && since >= SIZE_EVERY_CHANGED)
            || (changed > 0
                && changed >= rescan_after(bytes)
                && bytes.saturating_add(changed) > split_bytes
                && since >= SIZE_EVERY)
    }
}

/// A replica's size is measured again at most this often, once apply wrote a quarter of what
/// it held (as many bytes as it held past [`SIZE_CLOSE_BYTES`]) and it may have grown past
/// `--range-split-bytes` (what it held plus what apply wrote since); else at most every
/// [`SIZE_EVERY_CHANGED`] after any change (the placement driver's byte balance sees sizes that
/// old). A range apply did not touch is not measured again (its epoch changing, or a snapshot
/// installed, forces it). Measuring is a scan of the range, through the engine's page
/// cache: every 10 s for every range, it read a node's whole data set again and again (7 GiB
/// per node in the 10 GiB load, which slowed as it grew); after a quarter of it written, it
/// was still 29 % of a node's CPU under `redis-benchmark -d 1000 -P 16` SETs to 300 MB ranges,
/// and it pushed the pages the engine's flushes write out of that cache (BENCHMARKS.md); and
/// 8 % of the nodes' CPU under `-d 256 -P 16` SETs over 30 MB, where no range could reach the
/// split size between two 10 s scans. Past that size the scans read at most a byte per byte
/// written.
const SIZE_EVERY: Duration = Duration::from_secs(10);

/// Up to this size a range is measured again once a quarter of it was written, so that a
/// split by size (64 MiB by default) does not come late; past it, once as much as it holds.
const SIZE_CLOSE_BYTES: u64 = 64 << 20;

/// Bytes written to a range of `bytes` after which it is measured again (see [`SIZE_EVERY`]).
fn rescan_after(bytes: u64) -> u64 {
    if bytes <= SIZE_CLOSE_BYTES {
        bytes / 4
    } else {
        bytes
    }
}
const SIZE_EVERY_CHANGED: Duration = Duration::from_secs(60);

/// Why a write or read on a range replica did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RangeError {
    /// Not the leader; the leader it knows of, if any.
    #[error("range {range}: not the leader")]
    NotLeader { range: RangeId, leader: Option<u64> },
    #[error("range {0} is not on this node")]
    NotHere(RangeId),
    #[error("range {range}: {msg}")]
    Raft { range: RangeId, msg: String },
    /// The group had stopped (its replica removed here, or the node closing) before the
    /// write reached its core: the write was never proposed.
    #[error("range {0}: stopped before the write was proposed")]
    Stopped(RangeId),
    /// The group stopped after the write was proposed and before it was answered (openraft
    /// dropped its responder): it may have run.
    #[error("range {0}: the write's proposal was cut short")]
    CutShort(RangeId),
}

impl RangeReplica {
    /// Whether this replica's Raft core has ended, stopped or panicked, asked without a message
    /// to it: the core owns the sending side of its metrics, which goes when the core's task
    /// does (tokio drops a panicked task's future too).
    pub fn core_ended(&self) -> bool {
        use futures::FutureExt;
        let mut rx = self.core_watch.lock();
        loop {
            match rx.changed().now_or_never() {
                // A value not seen yet: look again.
                Some(Ok(())) => continue,
                Some(Err(_)) => return true,
                None => return false,
            }
        }
    }

    /// Proposes `op` and waits for its answer from apply.
    pub async fn write(&self, op: RangeOp) -> Result<RangeReply, RangeError> {
        let reply = self.submit(op).await?;
        written(self.id, reply.await)
    }

    /// Hands `op` to openraft and returns where its answer from apply will come: calls made one
    /// after the other put their entries in the log in that order.
    async fn submit(&self, op: RangeOp) -> Result<Answer, RangeError> {
        let (responder, reply) = openraft::raft::responder::ProgressResponder::complete_only();
        match self.raft.client_write_ff(op, Some(responder)).await {
            Ok(()) => Ok(reply),
            // openraft refuses the call only when its message cannot reach the core, which
            // has ended: nothing was proposed. (A message the core took but never handled
            // drops the responder: "cut short", an unknown outcome.)
            Err(_) => Err(RangeError::Stopped(self.id)),
        }
    }

    /// Proposes a client's data command, routed with `epoch`, and waits for its answer from
    /// apply. Writes that arrive while `ENTRIES_IN_FLIGHT` entries are being committed are
    /// queued and proposed together as the next entry (each entry costs an fsync on a quorum,
    /// so the next takes everything that arrived meanwhile); each is still routed, applied and
    /// answered on its own. Entries are proposed in the order their writes queued.
    pub async fn write_data(self: &Arc<Self>, epoch: u64, cmd: Vec<u8>) -> Result<RangeReply, RangeError> {
        let kib = (cmd.len() / 1024 + 1).min(QUEUED_KIB_MAX) as u32;
        // The semaphore is never closed.
        let room = self.room.clone().acquire_many_owned(kib).await.ok();
        let (answer, answered) = tokio::sync::oneshot::channel();
        let start = {
            let mut b = self.batcher.lock();
            b.queue.push_back(Queued { routed: Routed { epoch, cmd: cmd.into() }, answer, room });
            !std::mem::replace(&mut b.proposing, true)
        };
        if start {
            let me = self.clone();
            tokio::spawn(async move { me.propose_queued().await });
        }
        // A dropped sender: the proposing task ended with the runtime; the write may have run.
        answered.await.unwrap_or_else(|_| {
            Err(RangeError::Raft { range: self.id, msg: "the write's proposal was cut short".into() })
        })
    }

    /// Proposes the queued client writes, up to [`ENTRIES_IN_FLIGHT`] entries at a time, until
    /// none are left. Entries reach openraft from this one task, one after the other, so the
    /// log holds them in queue order; each entry's answers are handed out by a task of its own.
    async fn propose_queued(self: Arc<Self>) {
        loop {
            // Writers already runnable queue theirs first.
            tokio::task::yield_now().await;
            // The semaphore is never closed.
            let Ok(slot) = self.in_flight.clone().acquire_owned().await else { return };
            let batch: Vec<Queued> = {
                let mut b = self.batcher.lock();
                let (mut n, mut bytes) = (0, 0);
                while n < b.queue.len() && n < BATCH_OPS_MAX {
                    bytes += b.queue[n].routed.cmd.len();
                    if n > 0 && bytes > BATCH_BYTES_MAX {
                        break;
                    }
                    n += 1;
                }
                if n == 0 {
                    b.proposing = false;
                    return;
                }
                b.queue.drain(..n).collect()
            };
            let stamp = cairn_types::clock::wall_ms();
            let (mut routed, mut answers, mut rooms) = (Vec::new(), Vec::new(), Vec::new());
            for q in batch {
                routed.push(q.routed);
                answers.push(q.answer);
                rooms.push(q.room);
            }
            let op = match <[Routed; 1]>::try_from(routed) {
                Ok([one]) => RangeOp::data(stamp, one.epoch, one.cmd),
                Err(many) => RangeOp { stamp_ms: stamp, epoch: 0, cmd: RangeCmd::Batch(many) },
            };
            let reply = match self.submit(op).await {
                Ok(reply) => reply,
                Err(e) => {
                    hand_out(answers, Err(e));
                    drop(rooms);
                    continue;
                }
            };
            let id = self.id;
            tokio::spawn(async move {
                let _slot = slot;
                hand_out(answers, written(id, reply.await));
                drop(rooms);
            });
        }
    }

    /// Waits until this replica may serve a linearizable read: it leads, a quorum acknowledged
    /// a message it sent less than `lease` before the read arrived (else it sends heartbeats and
    /// waits for a quorum to answer them, as ReadIndex does), and it has applied everything
    /// committed when the read arrived. See [`read_lease`] for why `lease` is safe.
    ///
    /// Concurrent reads share rounds, as etcd's read loop does: a read joins the round that has
    /// not started yet (making one if there is none), and a round starts once the one before it
    /// ended. A round that starts after a read arrived is valid for it; one that was already
    /// running is not, so a read waits at most for that one and its own. (A round per read went
    /// through openraft's core once each: 10 % of a GET run.)
    ///
    /// While the lease visibly holds, a read needs no round at all (see [`Self::lease_holds`]).
    pub async fn read_barrier(&self, lease: Duration) -> Result<(), RangeError> {
        use futures::FutureExt;
        if self.lease_holds(lease) {
            self.barriers.leased.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.barriers.node.leased.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(());
        }
        let round = {
            let mut st = self.barriers.state.lock();
            match &st.next {
                Some(r) => r.clone(),
                None => {
                    let r =
                        Self::barrier_round(self.raft.clone(), self.id, lease, self.barriers.clone()).boxed().shared();
                    st.next = Some(r.clone());
                    r
                }
            }
        };
        round.await
    }

    /// Read barrier rounds this replica started.
    pub fn read_rounds(&self) -> u64 {
        self.barriers.rounds.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Reads this replica let through on its lease alone, without a round.
    pub fn leased_reads(&self) -> u64 {
        self.barriers.leased.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether a linearizable read may be served now without asking openraft's core: the
    /// check the core makes for a lease read ([`read_lease`]), made on the core's last
    /// published metrics, which costs a core loop (and its metrics report) per round less.
    /// (Those loops were 12 % of a node's time under `redis-benchmark --cluster -t get -P 1`.)
    ///
    /// It holds when the metrics show this replica leading under a committed vote, a quorum
    /// acknowledged a message it sent less than `lease` ago, it has not handed its leadership
    /// over under that vote (`handed_over`), and the state machine applied an entry of that
    /// leadership (its first, blank entry is applied after everything committed before it).
    ///
    /// Why the metrics may be used though they lag the core: a lagging acknowledgement time
    /// is older, so the check is only stricter; a lagging role does not matter, because no
    /// other leader can be elected within the lease (see [`read_lease`]) except by a
    /// handover, which `handed_over` records before asking openraft for it. Nothing applied
    /// is missed either: every write this leader acknowledged was applied before its answer,
    /// and every write an earlier leader acknowledged was committed before the blank entry.
    pub fn lease_holds(&self, lease: Duration) -> bool {
        use openraft::type_config::TypeConfigExt;
        use openraft::vote::RaftLeaderId;
        let now = RangeConfig::now();
        let (leader_id, vote) = {
            let m = self.metrics.borrow_watched();
            let leads = m.state == openraft::ServerState::Leader
                && m.current_leader == Some(m.id)
                && m.vote.is_committed()
                && m.last_quorum_acked.as_ref().is_some_and(|at| now < **at + lease);
            if !leads {
                return false;
            }
            (m.vote.leader_id().to_committed(), m.vote)
        };
        if self.handed_over.lock().as_ref() == Some(&vote) {
            return false;
        }
        self.sm.applied().is_some_and(|a| a.leader_id == leader_id)
    }

    async fn barrier_round(raft: RangeRaft, id: RangeId, lease: Duration, b: Arc<Barriers>) -> Result<(), RangeError> {
        use openraft::error::{LinearizableReadError, RaftError};
        loop {
            let ended = b.ended.notified();
            tokio::pin!(ended);
            // Registered before the check, so an end between the two is not missed.
            ended.as_mut().enable();
            {
                let mut st = b.state.lock();
                if !st.running {
                    // Started: reads from now on make the next round.
                    st.running = true;
                    st.next = None;
                    b.rounds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    b.node.rounds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    break;
                }
            }
            ended.await;
        }
        let _running = RoundGuard(b);
        match raft.ensure_linearizable(openraft::LinearizerOption::new(Some(lease), true)).await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                Err(RangeError::NotLeader { range: id, leader: f.leader_id })
            }
            Err(e) => Err(RangeError::Raft { range: id, msg: e.to_string() }),
        }
    }

    /// The leader this replica knows of.
    pub fn leader(&self) -> Option<u64> {
        self.server_metrics.borrow_watched().current_leader
    }

    /// Whether this replica leads under `m`'s vote and has not handed that leadership over
    /// (see `handed_over`): the leader its followers may sleep on.
    fn leads_awake(&self, me: u64, m: &openraft::metrics::RaftServerMetrics<RangeConfig>) -> bool {
        m.current_leader == Some(me)
            && m.state == openraft::ServerState::Leader
            && self.handed_over.lock().as_ref() != Some(&m.vote)
    }

    /// Counts client requests (`cmds`, the applier's encodings; `read`: reads) and samples
    /// their keys for a split by load (a key is decoded only when sampled, see [`KeySample`]).
    fn count_requests<'a>(&self, cmds: impl IntoIterator<Item = &'a [u8]>, read: bool, applier: &dyn Applier) {
        let mut l = self.load.lock();
        for cmd in cmds {
            l.requests += 1;
            l.sample.offer(|| applier.key_of(cmd, read));
        }
        l.last_request = Some(cairn_types::clock::now());
    }

    /// The keys of the requests sampled in this report window and the one before (see
    /// `Load::sample`).
    pub fn load_keys(&self) -> Vec<Vec<u8>> {
        let l = self.load.lock();
        l.last_sample.iter().chain(l.sample.keys()).cloned().collect()
    }

    /// Starts its Raft timer again for a client request. A leader that slept sent no
    /// heartbeats, so its lease lapsed and openraft refuses writes until a quorum acknowledges
    /// it again: one heartbeat round (a read barrier under `lease`) does that first.
    async fn wake(&self, lease: Duration) {
        if self.set_asleep(false) && self.server_metrics.borrow_watched().state == openraft::ServerState::Leader {
            let _ = self.raft.ensure_linearizable(openraft::LinearizerOption::new(Some(lease), false)).await;
        }
    }

    /// Whether its Raft timer is stopped: an idle leader, or a follower whose leader's node
    /// beats (see [`hibernate`]).
    pub fn asleep(&self) -> bool {
        self.asleep.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops or starts its Raft timer; whether it was stopped.
    fn set_asleep(&self, asleep: bool) -> bool {
        let was = self.asleep.swap(asleep, std::sync::atomic::Ordering::Relaxed);
        if was != asleep {
            self.raft.runtime_config().tick(!asleep);
        }
        was
    }

    /// How the hibernation pass sees this replica at `now`.
    fn role(&self, me: u64, now: std::time::Instant, liveness: &Liveness, silent: Duration) -> Role {
        let (leader, leads) = {
            let m = &self.server_metrics;
            let m = m.borrow_watched();
            // A leader that handed its leadership over is neither: it must keep its timer.
            (m.current_leader, self.leads_awake(me, &m))
        };
        match leader {
            Some(l) if l == me && leads => {
                let busy = self.load.lock().last_request.is_some_and(|t| now.duration_since(t) < hibernate::IDLE_AFTER);
                let held = self.awake_until.lock().is_some_and(|t| now < t);
                let m = &self.metrics;
                let m = m.borrow_watched();
                let last = m.last_log_index;
                let caught_up = m
                    .replication
                    .as_ref()
                    .is_some_and(|rep| rep.values().all(|matched| matched.as_ref().map(|l| l.index) == last));
                let stable = m.membership_config.membership().get_joint_config().len() == 1;
                Role::Leader { idle: !busy && !held, settled: caught_up && stable }
            }
            Some(l) if l != me => Role::Follower { vouched: liveness.vouches(l, self.id, now, silent) },
            _ => Role::Other,
        }
    }

    /// The range's bytes, measured again when they may have changed enough (see
    /// `SIZE_EVERY`). A scan: only [`RangeHost::measure`]'s passes call it, in a blocking thread.
    fn size(&self) -> u64 {
        // Read before the scan: what apply writes during it counts towards the next one.
        let at = Measured {
            at: cairn_types::clock::now(),
            epoch: self.sm.desc().epoch,
            written: self.sm.written(),
            installs: self.sm.installs(),
        };
        let stale = {
            let l = self.load.lock();
            l.measured.is_none_or(|m| m.stale(at, l.bytes, self.split_bytes))
        };
        let fresh = if stale { self.sm.bytes().ok() } else { None };
        let mut l = self.load.lock();
        if let Some(b) = fresh {
            l.bytes = b;
            l.measured = Some(at);
        }
        l.bytes
    }

    /// Room taken by the client writes queued here or in flight, until each is answered (a
    /// write whose writer stopped waiting keeps it): bytes, a write counting one KiB per whole
    /// KiB it holds plus one, at most `QUEUED_KIB_MAX` KiB (64 MiB; a single larger write
    /// takes all of it and counts as that).
    pub fn queued_write_bytes(&self) -> u64 {
        (QUEUED_KIB_MAX - self.room.available_permits()) as u64 * 1024
    }

    /// The range's bytes as last measured, if that was since its descriptor last changed and
    /// its last snapshot was installed (see [`RangeHost::measure`]).
    pub fn measured_bytes(&self) -> Option<u64> {
        let (epoch, installs) = (self.sm.desc().epoch, self.sm.installs());
        let l = self.load.lock();
        l.measured.filter(|m| m.epoch == epoch && m.installs == installs).map(|_| l.bytes)
    }

    /// The replica's figures, and a new window of request counts and key samples; `None`
    /// while its size is not known ([`Self::measured_bytes`]: the window goes on).
    pub fn stats(&self) -> Option<crate::range::ReplicaStats> {
        let now = cairn_types::clock::now();
        let epoch = self.sm.desc().epoch;
        let bytes = self.measured_bytes()?;
        let mut l = self.load.lock();
        let secs = l.since.map_or(0.0, |s| now.duration_since(s).as_secs_f64());
        let qps = if secs > 0.0 { l.requests as f64 / secs } else { 0.0 };
        l.requests = 0;
        l.last_sample = l.sample.take();
        l.since = Some(now);
        Some(crate::range::ReplicaStats {
            id: self.id,
            epoch,
            leader: self.leader(),
            bytes,
            qps,
            idle_ms: l.last_request.map_or(u64::MAX, |t| now.duration_since(t).as_millis() as u64),
            frozen: self.sm.frozen(),
        })
    }

    /// The range's voters and learners as this replica has applied them, and the log index
    /// of that membership (the directory's `conf`).
    pub fn members(&self) -> (Vec<u64>, Vec<u64>, u64) {
        let m = self.sm.membership();
        let conf = m.log_id().map_or(0, |l| l.index);
        let voters: Vec<u64> = m.voter_ids().collect();
        let learners: Vec<u64> = m.membership().learner_ids().collect();
        (voters, learners, conf)
    }
}

/// Every range replica on this node.
pub struct RangeHost {
    opts: RangeHostOptions,
    log: Arc<SharedLog>,
    engine: Arc<dyn Engine>,
    /// The same engine, for its buffer's figures.
    buffer: Arc<BufferedEngine>,
    /// The engine under the buffer, for its page cache's figures.
    redb: Arc<RedbEngine>,
    /// How its replicas cleared their reads.
    reads: Arc<ReadStats>,
    applier: Arc<dyn Applier>,
    mux: Mux,
    config: Arc<Config>,
    /// See [`read_lease`].
    read_lease: Duration,
    replicas: RwLock<HashMap<RangeId, Arc<RangeReplica>>>,
    events: tokio::sync::mpsc::UnboundedSender<RangeEvent>,
    /// The beats heard from peers (see [`hibernate`]).
    liveness: Liveness,
    /// Beats heard from a node after it was silent (or first heard): each wakes the ranges
    /// led here that it holds.
    returns: std::sync::atomic::AtomicU64,
    /// How long a peer may go unheard before the ranges it leads elect again.
    silent: Duration,
    /// Serializes creating and destroying replicas (the overlap check and the start).
    lifecycle: tokio::sync::Mutex<()>,
    /// Serializes the span changes of replicas' applies with removals' deletes (see
    /// [`sm::SpanLock`]).
    spans: sm::SpanLock,
    /// Set when the host shuts down: the peers' open `Ranges/Stream`s then end.
    closing: tokio::sync::watch::Sender<bool>,
    /// Until then this node's replicas neither vote nor campaign (see [`RangeHost::quiet`]).
    quiet_until: tokio::time::Instant,
    /// Passes measuring the replicas' sizes (see [`RangeHost::measure`]).
    measures: Passes,
}

/// How long the stats call waits for a pass measuring sizes: half of what the placement
/// driver gives a node to answer.
pub const MEASURE_WAIT: Duration = Duration::from_secs(1);

/// Work run in a blocking thread, one pass at a time, that callers wait for as long as each
/// chooses (see [`RangeHost::measure`]).
#[derive(Default)]
struct Passes {
    /// The last pass started, and whether it has ended.
    last: Mutex<Option<(SharedPass, Arc<std::sync::atomic::AtomicBool>)>>,
    /// Passes started.
    started: std::sync::atomic::AtomicU64,
}

type SharedPass = futures::future::Shared<futures::future::BoxFuture<'static, ()>>;

impl Passes {
    /// The pass under way, or a new one of `work`.
    fn pass(&self, work: impl FnOnce() + Send + 'static) -> SharedPass {
        use futures::FutureExt;
        use std::sync::atomic::{AtomicBool, Ordering};
        let mut last = self.last.lock();
        if let Some((pass, ended)) = last.as_ref() {
            if !ended.load(Ordering::Acquire) {
                return pass.clone();
            }
        }
        self.started.fetch_add(1, Ordering::Relaxed);
        let ended = Arc::new(AtomicBool::new(false));
        let done = ended.clone();
        let pass = tokio::task::spawn_blocking(move || {
            // Ended even if the work panicked (the pass is over either way).
            struct Ended(Arc<AtomicBool>);
            impl Drop for Ended {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::Release);
                }
            }
            let _ended = Ended(done);
            work()
        })
        .map(|_| ())
        .boxed()
        .shared();
        *last = Some((pass.clone(), ended));
        pass
    }
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl RangeHost {
    /// Opens the node's range storage and starts every range replica it holds.
    pub async fn open(opts: RangeHostOptions, applier: Arc<dyn Applier>) -> io::Result<Arc<RangeHost>> {
        opts.timers.validate().map_err(io_err)?;
        let log = SharedLog::open(&opts.dir.join("log"), !opts.unsafe_no_fsync)?;
        let path = opts.dir.join("data.redb");
        let redb =
            RedbEngine::open(&path, opts.engine_cache_bytes).map_err(|e| io_err(format!("{}: {e}", path.display())))?;
        // Every range's apply writes through one buffer, which reaches redb in large batches.
        let redb = Arc::new(redb);
        let buffer = Arc::new(BufferedEngine::new(redb.clone(), opts.engine_buffer));
        let engine: Arc<dyn Engine> = buffer.clone();
        let t = opts.timers;
        let config = Config {
            cluster_name: "cairn-range".into(),
            heartbeat_interval: t.heartbeat_ms,
            election_timeout_min: t.election_timeout_ms * 3 / 8,
            election_timeout_max: t.election_timeout_ms / 2,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(opts.snapshot_count),
            // Purging is `gc`'s: it keeps what close followers still need.
            max_in_snapshot_log_to_keep: u64::MAX,
            replication_lag_threshold: opts.snapshot_count.saturating_mul(2),
            install_snapshot_timeout: 120_000,
            max_payload_entries: 256,
            enable_pre_vote: Some(true),
            // As the meta group: a restarted leader must win a new election (see node.rs).
            enable_leader_restore: Some(false),
            ..Config::default()
        }
        .validate()
        .map_err(io_err)?;
        let (events, mut event_rx) = tokio::sync::mpsc::unbounded_channel();
        let mux = opts.mux.clone();
        let quiet_until = tokio::time::Instant::now() + Duration::from_millis(config.election_timeout_max);
        let host = Arc::new(RangeHost {
            opts,
            log,
            engine,
            buffer,
            redb,
            reads: Arc::default(),
            applier,
            mux,
            read_lease: read_lease(&config),
            liveness: Liveness::default(),
            returns: Default::default(),
            silent: hibernate::silent_after(config.election_timeout_max),
            config: Arc::new(config),
            replicas: RwLock::new(HashMap::new()),
            events,
            closing: tokio::sync::watch::Sender::new(false),
            lifecycle: tokio::sync::Mutex::new(()),
            spans: sm::SpanLock::default(),
            quiet_until,
            measures: Passes::default(),
        });
        for id in host.stored_ranges()? {
            // A removal the node stopped in is finished, not started again.
            if !host.finish_removal(id).await? {
                host.start(id, None).await?;
            }
        }
        // A split applied here starts the new range's group at once.
        let weak = Arc::downgrade(&host);
        tokio::spawn(async move {
            while let Some(event) = event_rx.recv().await {
                let Some(h) = weak.upgrade() else { return };
                match event {
                    RangeEvent::Split { parent, child } => {
                        let id = child.id;
                        match h.create(child, None).await {
                            Ok(_) => tracing::info!(parent, range = id, "range split"),
                            Err(e) => {
                                tracing::warn!(parent, range = id, error = %e, "cannot start a range made by a split")
                            }
                        }
                    }
                    RangeEvent::Absorbed { left, right } => match h.destroy(right).await {
                        Ok(()) => tracing::info!(left, range = right, "range merged into the range on its left"),
                        Err(e) => tracing::warn!(left, range = right, error = %e, "cannot remove a merged range"),
                    },
                }
            }
        });
        // Beats to peers, and the hibernation pass.
        let weak = Arc::downgrade(&host);
        let every = hibernate::beat_every(host.opts.timers.heartbeat_ms);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(h) = weak.upgrade() else { return };
                h.beat();
                h.hibernate_pass();
            }
        });
        // Each range's log purge point (see `gc`).
        let weak = Arc::downgrade(&host);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(gc::EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(h) = weak.upgrade() else { return };
                h.gc_pass().await;
            }
        });
        let weak = Arc::downgrade(&host);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let Some(h) = weak.upgrade() else { return };
                let log = h.log.clone();
                drop(h);
                if let Err(e) =
                    tokio::task::spawn_blocking(move || log.purge_files()).await.map_err(io_err).and_then(|r| r)
                {
                    tracing::warn!(error = %e, "range log purge failed");
                }
            }
        });
        Ok(host)
    }

    /// The ranges whose descriptors this node's engine holds.
    fn stored_ranges(&self) -> io::Result<Vec<RangeId>> {
        let reader = self.engine.reader().map_err(io_err)?;
        let mut ids = Vec::new();
        reader
            .scan(Table::Meta, Bound::Included(b"range/"), Bound::Excluded(b"range0"), &mut |k, _| {
                ids.extend(sm::desc_key_range(k));
                true
            })
            .map_err(io_err)?;
        Ok(ids)
    }

    /// Whether this node's replicas must still neither vote nor campaign: for the election
    /// timeout's maximum after the host opened. A range leader serves reads on a lease that
    /// counts on each voter that acknowledged it refusing other candidates for that long
    /// ([`read_lease`]); openraft keeps that refusal in memory only, so a voter that restarted
    /// meanwhile would elect another leader while the old one still read on its lease (a
    /// stale read). A node that was down for longer loses nothing by the wait but the
    /// first election's speed.
    pub fn quiet(&self) -> bool {
        tokio::time::Instant::now() < self.quiet_until
    }

    async fn start(&self, id: RangeId, desc: Option<RangeDesc>) -> io::Result<Arc<RangeReplica>> {
        // It may write and sync the engine (a flush of its write buffer): off the runtime.
        let (engine, applier, events) = (self.engine.clone(), self.applier.clone(), self.events.clone());
        let spans = self.spans.clone();
        let sm = tokio::task::spawn_blocking(move || {
            RangeStateMachine::open(engine, applier, id, desc, Some(events), spans)
        })
        .await
        .map_err(io_err)??;
        let net = RangeNetwork { group: id, mux: self.mux.clone() };
        let log = RangeLog::new(self.log.clone(), id);
        // State with an applied position over an empty log (a range made by a split, or a
        // crash before its starting point reached the log): the log starts after it.
        if let Some(applied) = sm.applied() {
            log.seed(applied).await?;
        }
        let raft =
            RangeRaft::new(self.opts.node_id, self.config.clone(), net, log, sm.clone()).await.map_err(io_err)?;
        if self.quiet() {
            raft.runtime_config().elect(false);
            let (raft, until) = (raft.clone(), self.quiet_until);
            tokio::spawn(async move {
                tokio::time::sleep_until(until).await;
                raft.runtime_config().elect(true);
            });
        }
        let (server_metrics, metrics) = (raft.server_metrics(), raft.metrics());
        let r = Arc::new(RangeReplica {
            id,
            raft,
            sm,
            load: Mutex::new(Load::default()),
            split_bytes: self.opts.split_bytes,
            asleep: std::sync::atomic::AtomicBool::new(false),
            awake_until: Mutex::new(None),
            handed_over: Mutex::new(None),
            changing: tokio::sync::Mutex::new(()),
            batcher: Mutex::new(Batcher::default()),
            room: Arc::new(tokio::sync::Semaphore::new(QUEUED_KIB_MAX)),
            in_flight: Arc::new(tokio::sync::Semaphore::new(ENTRIES_IN_FLIGHT)),
            barriers: Arc::new(Barriers { node: self.reads.clone(), ..Default::default() }),
            core_watch: Mutex::new(metrics.clone()),
            server_metrics,
            metrics,
        });
        self.replicas.write().insert(id, r.clone());
        Ok(r)
    }

    /// Creates a replica of a range new to this node. With `voters`, it is one of the range's
    /// first replicas: it starts with that membership at [`sm::split_start`] (every first
    /// replica alike, then they elect a leader). Without, it waits to be added by the range's
    /// leader, which sends it a snapshot (or it starts as a split made it).
    ///
    /// Refused while another replica here still holds some of its keys: a range split off
    /// elsewhere waits until this node's replica of its parent has applied the split, so the
    /// two never write the same keys.
    pub async fn create(
        &self,
        desc: RangeDesc,
        voters: Option<BTreeMap<u64, PeerNode>>,
    ) -> io::Result<Arc<RangeReplica>> {
        let _g = self.lifecycle.lock().await;
        if let Some(r) = self.get(desc.id) {
            return Ok(r);
        }
        // A removal of an earlier replica of the range that failed half-way ends first: the
        // new one starts afresh, not over what is left of the old one's log.
        self.finish_removal(desc.id).await?;
        let stored = self.stored_desc(desc.id)?;
        let span = stored.as_ref().unwrap_or(&desc);
        if let Some(o) = self.replicas().into_iter().find(|r| overlaps(&r.sm.desc(), span)) {
            return Err(io_err(format!(
                "range {} overlaps range {} here (a split not yet applied on this node)",
                desc.id, o.id
            )));
        }
        if let (Some(v), None) = (voters, &stored) {
            let ids: std::collections::BTreeSet<u64> = v.keys().copied().collect();
            let m = openraft::Membership::new(vec![ids], v).map_err(io_err)?;
            let (engine, start) = (self.engine.clone(), desc.clone());
            tokio::task::spawn_blocking(move || RangeStateMachine::write_start(&*engine, &start, m))
                .await
                .map_err(io_err)??;
        }
        self.start(desc.id, Some(desc)).await
    }

    /// Finishes the removal of range `id`'s replica here if one began (see [`Self::destroy`]):
    /// whether there was one.
    async fn finish_removal(&self, id: RangeId) -> io::Result<bool> {
        if self.engine.get(Table::Meta, &sm::meta_key(id, sm::REMOVING)).map_err(io_err)?.is_none() {
            return Ok(false);
        }
        self.log.clean(id).await?;
        if let Some(desc) = self.stored_desc(id)? {
            let (engine, spans) = (self.engine.clone(), self.spans.clone());
            tokio::task::spawn_blocking(move || Self::delete_replica(&*engine, &spans, id, &desc))
                .await
                .map_err(io_err)??;
        }
        tracing::info!(range = id, "an earlier removal of the range's replica finished");
        Ok(true)
    }

    fn stored_desc(&self, id: RangeId) -> io::Result<Option<RangeDesc>> {
        let reader = self.engine.reader().map_err(io_err)?;
        reader
            .get(Table::Meta, &sm::meta_key(id, sm::DESC))
            .map_err(io_err)?
            .map(|b| postcard::from_bytes(&b).map_err(io_err))
            .transpose()
    }

    /// Removes this node's replica of range `id` (moved elsewhere): stops its group, and
    /// deletes its keys, its state and its log here.
    pub async fn destroy(&self, id: RangeId) -> io::Result<()> {
        let _g = self.lifecycle.lock().await;
        let Some(r) = self.replicas.write().remove(&id) else { return Ok(()) };
        let _ = r.raft.shutdown().await;
        // openraft's shutdown stops the group's core; a state machine worker applying or
        // installing is fenced off here (then the stored descriptor is the last one written:
        // an install updates the replica's own copy only after its write).
        let sm = r.sm.clone();
        tokio::task::spawn_blocking(move || sm.close()).await.map_err(io_err)?;
        let desc = self.stored_desc(id)?.unwrap_or_else(|| r.sm.desc());
        // Marked durably first, then the log goes, then the state: a restart in between
        // finishes the removal (a replica started again over an emptied log would have voted
        // again with no memory of its votes; with the state deleted first, a replica of the
        // range added here later would have started with no state over the old log). The
        // syncs of the engine (a flush of its write buffer, seconds under load) and the scan
        // of the range run on a blocking thread, not one of the runtime's.
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || {
            let mut wb = cairn_storage::WriteBatch::new();
            wb.put(Table::Meta, sm::meta_key(id, sm::REMOVING), vec![1]);
            engine.write(wb)?;
            engine.sync()
        })
        .await
        .map_err(io_err)?
        .map_err(io_err)?;
        self.log.clean(id).await?;
        let (engine, spans) = (self.engine.clone(), self.spans.clone());
        tokio::task::spawn_blocking(move || Self::delete_replica(&*engine, &spans, id, &desc))
            .await
            .map_err(io_err)??;
        tracing::info!(range = id, "range replica removed from this node");
        Ok(())
    }

    /// Deletes range `id`'s keys and its state from `engine`, durably, but for keys another
    /// range's stored descriptor here covers: a merged range's keys are its left neighbour's
    /// now, and a split's child may hold keys before its replica starts. Which keys those are
    /// is decided again under `spans` (see [`sm::SpanLock`]), just before the deletes are
    /// written, so a merge or a snapshot that took keys of the span over during the scan
    /// keeps them, and one that comes after the deletes writes its keys after them.
    fn delete_replica(engine: &dyn Engine, spans: &sm::Spans, id: RangeId, desc: &RangeDesc) -> io::Result<()> {
        let held = sm::stored_descs(engine, id, desc)?;
        let mut wb = cairn_storage::WriteBatch::new();
        {
            let reader = engine.reader().map_err(io_err)?;
            let end = if desc.end.is_empty() { Bound::Unbounded } else { Bound::Excluded(desc.end.as_slice()) };
            reader
                .scan(Table::Kv, Bound::Included(desc.start.as_slice()), end, &mut |k, _| {
                    if !held.iter().any(|o| o.contains(k)) {
                        wb.delete(Table::Kv, k.to_vec());
                    }
                    true
                })
                .map_err(io_err)?;
            let prefix = sm::meta_key(id, "");
            let mut upper = prefix.clone();
            *upper.last_mut().expect("non-empty") += 1;
            reader
                .scan(
                    Table::Meta,
                    Bound::Included(prefix.as_slice()),
                    Bound::Excluded(upper.as_slice()),
                    &mut |k, _| {
                        wb.delete(Table::Meta, k.to_vec());
                        true
                    },
                )
                .map_err(io_err)?;
        }
        // Under the lock once the engine's buffer has room: a write waiting for a flush under
        // it would hold up every apply on the node.
        let _spans = loop {
            engine.wait_for_room().map_err(io_err)?;
            let spans = spans.lock_long();
            if !engine.is_full() {
                break spans;
            }
        };
        let now = sm::stored_descs(engine, id, desc)?;
        if now != held {
            wb.ops.retain(|op| match op {
                cairn_storage::WriteOp::Delete { table: Table::Kv, key } => !now.iter().any(|o| o.contains(key)),
                _ => true,
            });
        }
        engine.write(wb).map_err(io_err)?;
        drop(_spans);
        engine.sync().map_err(io_err)
    }

    pub fn get(&self, id: RangeId) -> Option<Arc<RangeReplica>> {
        self.replicas.read().get(&id).cloned()
    }

    pub fn replicas(&self) -> Vec<Arc<RangeReplica>> {
        let mut v: Vec<_> = self.replicas.read().values().cloned().collect();
        v.sort_by_key(|r| r.id);
        v
    }

    /// The shared log: its files, and how many group operations its writes carried.
    pub fn log(&self) -> &Arc<SharedLog> {
        &self.log
    }

    /// The transport's counts of messages and calls.
    pub fn transport(&self) -> &crate::range::mux::MuxStats {
        self.mux.stats()
    }

    /// How many times a peer node was heard again after a silence (or first heard): each
    /// time, the ranges led here that it holds wake up to heartbeat it.
    pub fn peer_returns(&self) -> u64 {
        self.returns.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sends every node this one shares a range with its beat: the ranges led here that it
    /// holds a replica of (see [`hibernate`]).
    fn beat(&self) {
        let me = self.opts.node_id;
        let mut peers: HashMap<u64, (PeerNode, Vec<RangeId>)> = HashMap::new();
        for r in self.replicas() {
            let m = &r.server_metrics;
            let m = m.borrow_watched();
            let leads = r.leads_awake(me, &m);
            for (id, node) in m.membership_config.nodes() {
                if *id == me {
                    continue;
                }
                let e = peers.entry(*id).or_insert_with(|| (node.clone(), Vec::new()));
                if leads {
                    e.1.push(r.id);
                }
            }
        }
        let ttl = self.silent;
        for (id, (node, leading)) in peers {
            let mux = self.mux.clone();
            let beat = postcard::to_allocvec(&Beat { from: me, leading }).expect("serializable");
            tokio::spawn(async move {
                let _ = mux.call(id, &node, 0, Kind::Beat, beat, ttl).await;
            });
        }
    }

    /// A beat from a peer: who it is alive for, and whether it just came back.
    fn heard(&self, beat: Beat) {
        let from = beat.from;
        if !self.liveness.record(beat, cairn_types::clock::now(), self.silent) {
            return;
        }
        self.returns.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Back (or new): the ranges led here that it holds heartbeat to it now.
        let until = cairn_types::clock::now() + self.silent * 2;
        for r in self.replicas() {
            let holds = r.server_metrics.borrow_watched().membership_config.nodes().any(|(id, _)| *id == from);
            if holds && r.leader() == Some(self.opts.node_id) {
                *r.awake_until.lock() = Some(until);
                let _ = r.set_asleep(false);
            }
        }
    }

    /// Stops or restarts each replica's Raft timer (see [`hibernate`]).
    fn hibernate_pass(&self) {
        let me = self.opts.node_id;
        let now = cairn_types::clock::now();
        for r in self.replicas() {
            let role = r.role(me, now, &self.liveness, self.silent);
            let _ = r.set_asleep(hibernate::may_sleep(role));
        }
    }

    /// Purges each range's log as far as [`gc::purge_to`] says.
    async fn gc_pass(&self) {
        let me = self.opts.node_id;
        let count = self.opts.snapshot_count;
        let limits = gc::Limits {
            keep: (count / 10).max(1),
            lag_max: count.saturating_mul(2),
            log_full: self.log.size_bytes() > gc::HOLD_BYTES_MAX,
        };
        for r in self.replicas() {
            let view = {
                let m = &r.metrics;
                let m = m.borrow_watched();
                gc::LogView {
                    snapshot: m.snapshot.as_ref().map(|l| l.index),
                    purged: m.purged.as_ref().map(|l| l.index),
                    last: m.last_log_index,
                    followers: m.replication.as_ref().map(|rep| {
                        rep.iter().filter(|(id, _)| **id != me).map(|(_, l)| l.as_ref().map(|l| l.index)).collect()
                    }),
                }
            };
            if let Some(to) = gc::purge_to(&view, limits) {
                // Only a stopped group fails this; its log stays as it is.
                let _ = r.raft.trigger().purge_log(to).await;
            }
        }
    }

    /// The data engine's page cache (redb's, bounded by `--range-engine-cache-bytes`).
    pub fn engine_page_cache(&self) -> cairn_storage::PageCacheStats {
        self.redb.page_cache()
    }

    /// The data engine's write buffer: what it holds and how its writes to redb went.
    pub fn engine_buffer(&self) -> &cairn_storage::BufferStats {
        self.buffer.stats()
    }

    /// How this node's range leaders cleared their linearizable reads.
    pub fn read_stats(&self) -> &ReadStats {
        &self.reads
    }

    /// Bytes the data engine's read cache holds now.
    pub fn read_cache_bytes(&self) -> u64 {
        self.buffer.read_cache_bytes()
    }

    /// Bytes of the shared log's files.
    pub fn log_bytes(&self) -> u64 {
        self.log.size_bytes()
    }

    /// Bytes queued for the shared log's writer.
    pub fn log_queued_bytes(&self) -> u64 {
        self.log.queued_bytes()
    }

    /// Room taken by client writes queued or in flight on this node's replicas
    /// ([`RangeReplica::queued_write_bytes`]).
    pub fn queued_write_bytes(&self) -> u64 {
        self.replicas().iter().map(|r| r.queued_write_bytes()).sum()
    }

    /// Why this node's data tier cannot go on, once it cannot: its shared log failed a write
    /// or fsync, or a range's Raft core stopped on a storage error or a panic (openraft's own
    /// safety checks panic, e.g. on a follower whose log went back: an entry it had
    /// acknowledged as durable was lost). The node must stop, as for the meta group: a
    /// range whose core died serves nothing, and while its replica is listed, this node's
    /// beats could keep that range's followers asleep.
    ///
    /// `cores`: also ask every range's core, a message to each (with many ranges, call it with
    /// `true` only now and then; the log's state is a flag).
    pub async fn fatal(&self, cores: bool) -> Option<String> {
        if self.log.failed() {
            return Some("the data tier's shared log failed a write or fsync".into());
        }
        if !cores {
            return None;
        }
        for r in self.replicas() {
            if r.sm.retired() {
                // Stopped by a write refused as its removal comes (see `retired`).
                continue;
            }
            let stopped = {
                let m = &r.metrics;
                let m = m.borrow_watched();
                m.running_state
                    .as_ref()
                    .err()
                    .filter(|f| !matches!(f, openraft::errors::Fatal::Stopped))
                    .map(|f| f.to_string())
            };
            // A core that panicked does not say so in its metrics: once it has ended, ask it
            // why (a message to every live core every 2 s woke each, and was a fifth of an
            // idle node's CPU with 1,000 ranges). A replica being removed (merged away, moved
            // off) stops normally, which is no failure.
            let stopped = match stopped {
                Some(s) => Some(s),
                None if r.core_ended() => match r.raft.with_raft_state(|_| ()).await {
                    Err(openraft::errors::Fatal::Stopped) | Ok(()) => None,
                    Err(f) => Some(f.to_string()),
                },
                None => None,
            };
            if let Some(why) = stopped {
                return Some(format!("range {}'s Raft stopped: {why}", r.id));
            }
        }
        None
    }

    /// Runs a client request on this node's replica of `group`, which must lead it. A write is
    /// stamped with this node's clock and proposed; a read waits for a read barrier, then
    /// answers from the applied state.
    pub async fn execute(&self, req: RangeRequest) -> Outcome {
        let RangeRequest { group, epoch, read, cmd, admin } = req;
        let Some(r) = self.get(group) else { return Outcome::NotHere };
        let sampled = if admin.is_some() { None } else { Some(cmd.as_slice()) };
        r.count_requests(sampled, read, &*self.applier);
        r.wake(self.read_lease).await;
        if let Some(a) = admin {
            return self.admin(&r, epoch, a).await;
        }
        if read {
            return match self.read_on(&r, epoch, std::slice::from_ref(&cmd)).await {
                Ok(mut answers) => answers.pop().expect("one answer per read"),
                Err(o) => o,
            };
        }
        Self::write_on(&r, epoch, cmd).await
    }

    /// A client write on replica `r` (see [`RangeReplica::write_data`]), and how it ended.
    async fn write_on(r: &Arc<RangeReplica>, epoch: u64, cmd: Vec<u8>) -> Outcome {
        match r.write_data(epoch, cmd).await {
            Ok(reply) => answered(reply),
            Err(RangeError::NotLeader { leader, .. }) => Outcome::NotLeader { leader },
            // Never proposed: the replica was removed (moved off, merged away) as the write
            // reached it. The router re-routes it with the directory, as for a replica gone.
            Err(RangeError::Stopped(_)) => Outcome::NotHere,
            // A frozen range applies no write proposed after its freeze, and every write
            // before it had its answer once this replica applied the freeze in order: a write
            // cut short then (its group stopped as the range merged away) never ran. Any other
            // failure, or a replica frozen by a snapshot (which skipped entries, and failed
            // their writes as discarded though they may have run elsewhere), is unknown.
            Err(RangeError::CutShort(_)) if r.sm.frozen_in_order() => Outcome::WrongRange(r.sm.desc()),
            Err(e) => Outcome::Unknown(e.to_string()),
        }
    }

    /// Several client writes of range `group` (a pipeline's, on distinct keys), each queued on
    /// the replica as a lone write is, concurrently, so they share its next entries; each has
    /// its own outcome.
    pub async fn execute_writes(&self, group: RangeId, epoch: u64, cmds: Vec<Vec<u8>>) -> Vec<Outcome> {
        let Some(r) = self.get(group) else { return vec![Outcome::NotHere; cmds.len()] };
        r.count_requests(cmds.iter().map(Vec::as_slice), false, &*self.applier);
        r.wake(self.read_lease).await;
        futures::future::join_all(cmds.into_iter().map(|cmd| Self::write_on(&r, epoch, cmd))).await
    }

    /// Runs several reads of range `group` at once on this node, which must lead it: one read
    /// barrier, one descriptor, one engine reader and one clock reading serve them all (a
    /// pipeline's reads of one range, `services::cache::Cache::read_many`). Each read has its
    /// own answer; `Err` is the one outcome of the batch when none ran (the replica is not
    /// here or does not lead, the epoch is stale, no barrier).
    pub async fn execute_reads(&self, group: RangeId, epoch: u64, cmds: &[Vec<u8>]) -> Result<Vec<Outcome>, Outcome> {
        let Some(r) = self.get(group) else { return Err(Outcome::NotHere) };
        r.count_requests(cmds.iter().map(Vec::as_slice), true, &*self.applier);
        r.wake(self.read_lease).await;
        self.read_on(&r, epoch, cmds).await
    }

    /// Reads on replica `r` after a read barrier (see [`Self::execute_reads`]).
    async fn read_on(&self, r: &RangeReplica, epoch: u64, cmds: &[Vec<u8>]) -> Result<Vec<Outcome>, Outcome> {
        match r.read_barrier(self.read_lease).await {
            Ok(()) => {}
            Err(RangeError::NotLeader { leader, .. }) => return Err(Outcome::NotLeader { leader }),
            Err(e) => return Err(Outcome::Unavailable(e.to_string())),
        }
        let desc = r.sm.desc();
        if (epoch != 0 && epoch != desc.epoch) || r.sm.frozen() {
            return Err(Outcome::WrongRange(desc));
        }
        let now = cairn_types::clock::wall_ms();
        let read = |view: &dyn DataView| {
            let one = |cmd: &Vec<u8>| match self.applier.read(&desc, view, cmd, now) {
                Ok(reply) => answered(reply),
                Err(e) => Outcome::Unavailable(e.to_string()),
            };
            cmds.iter().map(one).collect()
        };
        r.sm.read(read).map_err(|e| Outcome::Unavailable(e.to_string()))
    }

    /// Reads from this node's replica of `group` as it stands, leader or not: no read barrier,
    /// so the answer may miss recent writes (Redis Cluster's READONLY replica reads). The
    /// replica's descriptor must still be `epoch`.
    pub fn read_local(&self, group: RangeId, epoch: u64, cmd: &[u8]) -> Outcome {
        let Some(r) = self.get(group) else { return Outcome::NotHere };
        r.count_requests([cmd], true, &*self.applier);
        let desc = r.sm.desc();
        if (epoch != 0 && epoch != desc.epoch) || r.sm.frozen() {
            return Outcome::WrongRange(desc);
        }
        let now = cairn_types::clock::wall_ms();
        match r.sm.read(|view| self.applier.read(&desc, view, cmd, now)).and_then(|r| r) {
            Ok(reply) => answered(reply),
            Err(e) => Outcome::Unavailable(e.to_string()),
        }
    }

    /// Runs an operator's change on range `r`, whose leader this node must be.
    async fn admin(&self, r: &Arc<RangeReplica>, epoch: u64, a: Admin) -> Outcome {
        let _turn = match a {
            Admin::Move { .. } | Admin::AddReplica { .. } => match r.changing.try_lock() {
                Ok(turn) => Some(turn),
                Err(_) => {
                    return Outcome::Unavailable(format!("range {}: another change of its replicas is under way", r.id))
                }
            },
            _ => None,
        };
        let me = self.opts.node_id;
        let leader = r.leader();
        if leader != Some(me) {
            return Outcome::NotLeader { leader };
        }
        let desc = r.sm.desc();
        if epoch != 0 && epoch != desc.epoch {
            return Outcome::WrongRange(desc);
        }
        let (voters, learners, _) = r.members();
        match a {
            Admin::LoadKeys => Outcome::Done(postcard::to_allocvec(&r.load_keys()).expect("serializable")),
            Admin::MiddleKey => {
                let r = r.clone();
                match tokio::task::spawn_blocking(move || r.sm.middle_key()).await {
                    Ok(Ok(k)) => Outcome::Done(k.unwrap_or_default()),
                    Ok(Err(e)) => Outcome::Unavailable(e.to_string()),
                    Err(e) => Outcome::Unavailable(e.to_string()),
                }
            }
            Admin::Split { key, child } => self.propose(r, epoch, RangeCmd::Split { key, child }).await,
            Admin::Freeze => self.propose(r, epoch, RangeCmd::FreezeIfItFits).await,
            Admin::Merge { right, pairs } => self.propose(r, epoch, RangeCmd::Merge { right, pairs }).await,
            Admin::ReadFrozen => {
                if !r.sm.frozen() {
                    return Outcome::Unavailable(format!("range {} is not frozen", r.id));
                }
                // Everything the range applied before it froze is here once the freeze is.
                if let Err(e) = r.read_barrier(self.read_lease).await {
                    return Outcome::Unavailable(e.to_string());
                }
                let r = r.clone();
                match tokio::task::spawn_blocking(move || r.sm.pairs(crate::range::types::MERGE_BYTES_MAX)).await {
                    Ok(Ok(pairs)) => Outcome::Done(postcard::to_allocvec(&(desc, pairs)).expect("serializable")),
                    Ok(Err(e)) => Outcome::Unavailable(e.to_string()),
                    Err(e) => Outcome::Unavailable(e.to_string()),
                }
            }
            Admin::TransferLeader { to } => {
                if to == me {
                    return Outcome::Done(vec![]);
                }
                if !voters.contains(&to) {
                    return Outcome::Unavailable(format!("node {to:x} is not a voter of range {}", r.id));
                }
                self.hand_over(r, to).await
            }
            Admin::Move { from, to, to_peer } => {
                if !voters.contains(&from) {
                    return if voters.contains(&to) {
                        Outcome::Done(vec![])
                    } else {
                        Outcome::Unavailable(format!("node {from:x} holds no replica of range {}", r.id))
                    };
                }
                if voters.contains(&to) {
                    return Outcome::Unavailable(format!("node {to:x} already holds a replica of range {}", r.id));
                }
                if from == me {
                    // Leadership goes first, to a voter that stays: the one that acknowledged
                    // this leader last (a dead voter would leave the range leaderless until an
                    // election); the caller follows it.
                    let acked = r.metrics.borrow_watched().heartbeat.clone().unwrap_or_default();
                    let Some(next) =
                        voters.iter().copied().filter(|v| *v != me).max_by_key(|v| acked.get(v).cloned().flatten())
                    else {
                        return Outcome::Unavailable(format!("range {} has no other voter to lead it", r.id));
                    };
                    return match self.hand_over(r, next).await {
                        Outcome::Done(_) => Outcome::NotLeader { leader: Some(next) },
                        other => other,
                    };
                }
                self.swap_in(r, voters, &learners, Some(from), to, to_peer).await
            }
            Admin::AddReplica { to, to_peer, factor } => {
                if voters.contains(&to) {
                    return Outcome::Done(vec![]);
                }
                if voters.len() >= factor {
                    return Outcome::Unavailable(format!(
                        "range {} already has {} replicas (the replication factor is {factor})",
                        r.id,
                        voters.len()
                    ));
                }
                self.swap_in(r, voters, &learners, None, to, to_peer).await
            }
            Admin::DropLearners { nodes } => {
                let drop: std::collections::BTreeSet<u64> =
                    nodes.into_iter().filter(|n| learners.contains(n)).collect();
                if drop.is_empty() {
                    return Outcome::Done(vec![]);
                }
                membership_changed(r.id, r.raft.change_membership(ChangeMembers::RemoveNodes(drop), false).await)
            }
        }
    }

    /// Makes node `to` a voter of `r` in place of `from` (or beside the voters, with no
    /// `from`): `to` joins as a learner, and once it holds what the leader had when it joined
    /// (by snapshot when the log has moved on) one membership change swaps it in.
    async fn swap_in(
        &self,
        r: &Arc<RangeReplica>,
        voters: Vec<u64>,
        learners: &[u64],
        from: Option<u64>,
        to: u64,
        to_peer: PeerNode,
    ) -> Outcome {
        let me = self.opts.node_id;
        if !learners.contains(&to) {
            if let Err(e) = r.raft.add_learner(to, to_peer, false).await {
                return Outcome::Unavailable(format!("range {}: cannot add a learner: {e}", r.id));
            }
        }
        let target = r.metrics.borrow_watched().last_log_index.unwrap_or(0);
        let catch_up_max = self.opts.move_catch_up_max;
        let give_up = tokio::time::Instant::now() + catch_up_max;
        loop {
            if tokio::time::Instant::now() >= give_up {
                // The learner goes (a merge needs none, and a leader keeps sending to it); a
                // move that no longer leads leaves it to the placement driver (`plan`, rule 0).
                let gone = r.raft.change_membership(ChangeMembers::RemoveNodes([to].into()), false).await;
                if let Err(e) = gone {
                    tracing::warn!(range = r.id, learner = %format!("{to:x}"), error = %e, "learner of a failed move not removed");
                }
                return Outcome::Unavailable(format!(
                    "range {}: node {to:x} did not catch up within {catch_up_max:?}",
                    r.id
                ));
            }
            let m = r.metrics.borrow_watched().clone();
            if m.current_leader != Some(me) {
                return Outcome::NotLeader { leader: m.current_leader };
            }
            let (voters_now, learners_now, _) = r.members();
            if m.membership_config.membership().get_node(&to).is_none()
                && !voters_now.contains(&to)
                && !learners_now.contains(&to)
            {
                // Removed meanwhile (the placement driver's `DropLearners`, after a move cut
                // short left it; neither the leader's latest membership nor the one applied
                // holds it): this move ends here rather than wait for it. (Made a voter
                // meanwhile, by another change, it is still a member and this move goes on.)
                return Outcome::Unavailable(format!("range {}: node {to:x} is no longer a member of it", r.id));
            }
            let matched = m.replication.as_ref().and_then(|rep| rep.get(&to).cloned().flatten()).map_or(0, |l| l.index);
            if matched >= target {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The voters now, not those read before the catch-up: a change made meanwhile (another
        // replica added) is kept.
        let now: Vec<u64> = r.metrics.borrow_watched().membership_config.membership().voter_ids().collect();
        let mut next: std::collections::BTreeSet<u64> = if now.is_empty() { voters } else { now }.into_iter().collect();
        if let Some(from) = from {
            next.remove(&from);
        }
        next.insert(to);
        membership_changed(r.id, r.raft.change_membership(next, false).await)
    }

    /// Proposes an operator's command to `r`'s log and waits for its answer.
    async fn propose(&self, r: &Arc<RangeReplica>, epoch: u64, cmd: RangeCmd) -> Outcome {
        match r.write(RangeOp { stamp_ms: cairn_types::clock::wall_ms(), epoch, cmd }).await {
            Ok(reply) => answered(reply),
            Err(RangeError::NotLeader { leader, .. }) => Outcome::NotLeader { leader },
            Err(RangeError::Stopped(_)) => Outcome::NotHere,
            Err(e) => Outcome::Unknown(e.to_string()),
        }
    }

    /// Hands leadership of `r` to voter `to` and waits until `to` leads.
    async fn hand_over(&self, r: &Arc<RangeReplica>, to: u64) -> Outcome {
        *r.handed_over.lock() = Some(r.server_metrics.borrow_watched().vote);
        if let Err(e) = r.raft.trigger().transfer_leader(to).await {
            return Outcome::Unavailable(format!("range {}: {e}", r.id));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.opts.timers.election_timeout_ms * 4);
        loop {
            let leader = r.leader();
            if leader == Some(to) {
                return Outcome::Done(vec![]);
            }
            if tokio::time::Instant::now() >= deadline {
                return Outcome::Unavailable(format!("range {}: leadership did not move to node {to:x}", r.id));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Runs a client request on node `node` (this one, or a peer over the transport).
    pub async fn execute_on(&self, node: u64, peer: &PeerNode, req: RangeRequest, timeout: Duration) -> Outcome {
        let read = req.read;
        if node == self.opts.node_id {
            return match tokio::time::timeout(timeout, self.execute(req)).await {
                Ok(o) => o,
                Err(_) if read => Outcome::Unavailable("timed out".into()),
                Err(_) => Outcome::Unknown("request timed out".into()),
            };
        }
        self.mux.execute(node, peer, req, timeout).await
    }

    /// [`Self::execute_reads`] on node `node`: this one, or a peer over the range transport.
    pub async fn execute_reads_on(
        &self,
        node: u64,
        peer: &PeerNode,
        group: RangeId,
        epoch: u64,
        cmds: &[Vec<u8>],
        timeout: Duration,
    ) -> Result<Vec<Outcome>, Outcome> {
        if node == self.opts.node_id {
            return match tokio::time::timeout(timeout, self.execute_reads(group, epoch, cmds)).await {
                Ok(o) => o,
                Err(_) => Err(Outcome::Unavailable("timed out".into())),
            };
        }
        self.mux.execute_reads(node, peer, group, epoch, cmds, timeout).await
    }

    /// [`Self::execute_writes`] on node `node`: this one, or a peer over the range transport.
    /// Past `timeout`, each write's outcome is unknown, as a lone write's would be.
    pub async fn execute_writes_on(
        &self,
        node: u64,
        peer: &PeerNode,
        group: RangeId,
        epoch: u64,
        cmds: &[Vec<u8>],
        timeout: Duration,
    ) -> Vec<Outcome> {
        if node == self.opts.node_id {
            let n = cmds.len();
            return match tokio::time::timeout(timeout, self.execute_writes(group, epoch, cmds.to_vec())).await {
                Ok(o) => o,
                Err(_) => vec![Outcome::Unknown("request timed out".into()); n],
            };
        }
        self.mux.execute_writes(node, peer, group, epoch, cmds, timeout).await
    }

    /// The figures of every replica whose size is known (the stats call's answer), after a
    /// wait of at most [`MEASURE_WAIT`] for a pass of [`Self::measure`].
    pub async fn stats(&self) -> Vec<crate::range::ReplicaStats> {
        self.measure(MEASURE_WAIT).await;
        self.replicas().iter().filter_map(|r| r.stats()).collect()
    }

    /// Measures the size of every replica that may have changed enough since it was last
    /// measured (`RangeReplica::size`), in a pass in a blocking thread; waits at most `wait`
    /// for it. One pass runs at a time: a caller that finds one under way waits for that one.
    ///
    /// Measuring is a scan of the range. Those who ask for sizes do not wait for the scans to
    /// end: the placement driver's stats call, which is also the node's liveness beat (a node
    /// that held more than its 2 s of scans, after a start or a split, seemed silent, and
    /// concurrent calls scanned the same ranges twice over), and `/v1/ranges`, whose scans
    /// held a runtime worker.
    ///
    /// A pass under way may have begun before a replica here now started (a split's child) or
    /// last changed: once it ends, one more pass measures what it left unknown.
    pub async fn measure(&self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        for _ in 0..2 {
            let all = self.replicas();
            let pass = self.measures.pass(move || {
                for r in all {
                    r.size();
                }
            });
            if tokio::time::timeout_at(deadline, pass).await.is_err()
                || self.replicas().iter().all(|r| r.measured_bytes().is_some())
            {
                return;
            }
        }
    }

    /// Passes of [`Self::measure`] started.
    pub fn measure_passes(&self) -> u64 {
        self.measures.started.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Asks node `node` (this one, or a peer) for its replicas' figures.
    pub async fn stats_of(
        &self,
        node: u64,
        peer: &PeerNode,
        timeout: Duration,
    ) -> Result<Vec<crate::range::ReplicaStats>, String> {
        if node == self.opts.node_id {
            return Ok(self.stats().await);
        }
        self.mux.replica_stats(node, peer, timeout).await
    }

    /// Stops every range and syncs the data engine.
    pub async fn shutdown(&self) {
        self.closing.send_replace(true);
        let all: Vec<_> = self.replicas.write().drain().map(|(_, r)| r).collect();
        for r in all {
            let _ = r.raft.shutdown().await;
        }
        self.log.close();
        // On this thread, blocking it: the node is stopping, and its callers bound the
        // shutdown with a timeout, which must not end the process in the middle of this sync
        // (what was applied is safe either way, but the next start would replay the log).
        let _ = self.engine.sync();
    }
}

/// How long a range leader serves linearizable reads on the strength of a quorum's last
/// acknowledgement, without a new round of heartbeats: half the election timeout's maximum.
///
/// Why that is safe: a replica that acknowledged the leader refuses to vote for anyone else for
/// `election_timeout_max` after it heard from it (openraft's leader lease), measured on its own
/// clock from when the message arrived; the leader counts its read lease from when it sent the
/// message, on its clock. A new leader needs a vote from a replica of that quorum, so reads
/// stay linearizable while `lease / leader's clock rate <= election_timeout_max / replica's
/// clock rate`, that is while no two nodes' clocks run at rates more than 2x apart (say one at
/// 0.7x and one at 1.4x real time). Clock jumps do not matter (openraft measures with the
/// monotonic clock); rate skew beyond 2x does, and is what the clock nemesis checks. The
/// voters' refusal lives in openraft's memory: a restarted node keeps it by voting for no one
/// for `election_timeout_max` after it starts ([`RangeHost::quiet`]).
pub fn read_lease(config: &Config) -> Duration {
    Duration::from_millis(config.election_timeout_max / 2)
}

/// How long a move waits for its new replica to catch up, by default
/// ([`RangeHostOptions::move_catch_up_max`]).
pub const MOVE_CATCH_UP_MAX: Duration = Duration::from_secs(120);

/// The outcome of a membership change of range `id`.
fn membership_changed<T>(
    id: RangeId,
    r: Result<T, openraft::error::RaftError<RangeConfig, openraft::error::ClientWriteError<RangeConfig>>>,
) -> Outcome {
    match r {
        Ok(_) => Outcome::Done(vec![]),
        Err(openraft::error::RaftError::APIError(openraft::error::ClientWriteError::ForwardToLeader(f))) => {
            Outcome::NotLeader { leader: f.leader_id }
        }
        Err(e) => Outcome::Unknown(format!("range {id}: membership change: {e}")),
    }
}

fn overlaps(a: &RangeDesc, b: &RangeDesc) -> bool {
    a.id != b.id && sm::overlaps(a, b)
}

fn reply<T: serde::Serialize, E: std::fmt::Display>(r: Result<T, E>) -> Result<Vec<u8>, String> {
    r.map(|v| postcard::to_allocvec(&v).expect("raft types serialize")).map_err(|e| e.to_string())
}

fn decode<T: serde::de::DeserializeOwned>(data: &[u8]) -> Result<T, String> {
    postcard::from_bytes(data).map_err(|e| format!("undecodable range message: {e}"))
}

#[tonic::async_trait]
impl RangeHandler for RangeHost {
    async fn execute(&self, req: RangeRequest) -> Outcome {
        RangeHost::execute(self, req).await
    }

    async fn execute_reads(&self, group: RangeId, epoch: u64, cmds: Vec<Vec<u8>>) -> Result<Vec<Outcome>, Outcome> {
        RangeHost::execute_reads(self, group, epoch, &cmds).await
    }

    async fn execute_writes(&self, group: RangeId, epoch: u64, cmds: Vec<Vec<u8>>) -> Vec<Outcome> {
        RangeHost::execute_writes(self, group, epoch, cmds).await
    }

    async fn stats(&self) -> Vec<crate::range::ReplicaStats> {
        RangeHost::stats(self).await
    }

    async fn closing(&self) {
        let _ = self.closing.subscribe().wait_for(|c| *c).await;
    }

    async fn handle(&self, group: RangeId, kind: Kind, data: &[u8]) -> Result<Vec<u8>, String> {
        if kind == Kind::Beat {
            self.heard(decode(data)?);
            return Ok(vec![]);
        }
        let r = self.get(group).ok_or_else(|| format!("range {group} is not on node {:x}", self.opts.node_id))?;
        match kind {
            Kind::Append => reply(r.raft.append_entries(decode(data)?).await),
            Kind::Vote | Kind::PreVote if self.quiet() => {
                Err(format!("node {:x} started moments ago and does not vote yet", self.opts.node_id))
            }
            Kind::Vote => reply(r.raft.vote(decode(data)?).await),
            Kind::PreVote => reply(r.raft.pre_vote(decode(data)?).await),
            Kind::TransferLeader => reply(r.raft.handle_transfer_leader(decode(data)?).await),
            Kind::Beat => Ok(vec![]),
            // `RangesService` runs forwarded requests itself.
            Kind::Execute => Err("a forwarded request is not a Raft message".into()),
            Kind::Forward => Err("forwarded etcd requests go to the meta group".into()),
            Kind::Snapshot => {
                let (vote, meta, bytes): (Vote, SnapshotMeta, serde_bytes::ByteBuf) = decode(data)?;
                let snapshot = openraft::alias::SnapshotOf::<RangeConfig, SnapshotBytes> {
                    meta,
                    snapshot: SnapshotBytes::Encoded(bytes.into_vec()),
                };
                reply(r.raft.install_full_snapshot(vote, snapshot).await)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An engine holding keys `keys` and the stored descriptors `descs`.
    fn engine_with(keys: &[&str], descs: &[RangeDesc]) -> Arc<cairn_storage::MemEngine> {
        let engine = Arc::new(cairn_storage::MemEngine::new());
        let mut wb = cairn_storage::WriteBatch::new();
        for k in keys {
            wb.put(Table::Kv, k.as_bytes().to_vec(), b"v".to_vec());
        }
        for d in descs {
            wb.put(Table::Meta, sm::meta_key(d.id, sm::DESC), postcard::to_allocvec(d).unwrap());
        }
        engine.write(wb).unwrap();
        engine
    }

    fn desc(id: RangeId, start: &str, end: &str) -> RangeDesc {
        RangeDesc { id, start: start.as_bytes().to_vec(), end: end.as_bytes().to_vec(), epoch: 1 }
    }

    fn kv_keys(engine: &dyn Engine) -> Vec<String> {
        let mut keys = Vec::new();
        engine
            .reader()
            .unwrap()
            .scan(Table::Kv, Bound::Unbounded, Bound::Unbounded, &mut |k, _| {
                keys.push(String::from_utf8(k.to_vec()).unwrap());
                true
            })
            .unwrap();
        keys
    }

    #[test]
    fn a_removal_keeps_the_keys_another_stored_descriptor_covers() {
        // Range 1 is removed; range 2 (a split's child whose replica has not started, or the
        // left neighbour that merged part of it) holds [g, z) by its stored descriptor alone.
        let removed = desc(1, "a", "m");
        let engine = engine_with(&["a", "c", "g", "k", "n"], &[removed.clone(), desc(2, "g", "z")]);
        RangeHost::delete_replica(&*engine, &sm::Spans::default(), 1, &removed).unwrap();
        assert_eq!(kv_keys(&*engine), ["g", "k", "n"]);
        let reader = engine.reader().unwrap();
        assert_eq!(reader.get(Table::Meta, &sm::meta_key(1, sm::DESC)).unwrap(), None);
        assert!(reader.get(Table::Meta, &sm::meta_key(2, sm::DESC)).unwrap().is_some());
    }

    #[test]
    fn a_merge_written_during_a_removal_keeps_the_keys_it_took_over() {
        // A merge's apply writes range 3's wider span while range 1's removal runs: it holds
        // the span lock, so the removal decides after it (and without the lock, the removal
        // decided before the merge landed and deleted what it took over).
        let removed = desc(1, "a", "m");
        let engine = engine_with(&["a", "c", "k", "n"], &[removed.clone(), desc(3, "", "a")]);
        let spans = sm::SpanLock::default();
        let merge = spans.lock();
        let removal = {
            let (engine, spans, removed) = (engine.clone(), spans.clone(), removed.clone());
            std::thread::spawn(move || RangeHost::delete_replica(&*engine, &spans, 1, &removed))
        };
        // The removal has scanned and waits for the lock.
        std::thread::sleep(Duration::from_millis(200));
        let mut wb = cairn_storage::WriteBatch::new();
        wb.put(Table::Meta, sm::meta_key(3, sm::DESC), postcard::to_allocvec(&desc(3, "", "g")).unwrap());
        engine.write(wb).unwrap();
        drop(merge);
        removal.join().unwrap().unwrap();
        assert_eq!(kv_keys(&*engine), ["a", "c", "n"]);
    }

    /// Node 1's host on `dir`, with the test suite's timers.
    fn test_options(dir: &std::path::Path) -> RangeHostOptions {
        RangeHostOptions {
            node_id: 1,
            dir: dir.to_path_buf(),
            timers: RaftTimers { heartbeat_ms: 50, election_timeout_ms: 500 },
            snapshot_count: 50,
            unsafe_no_fsync: false,
            engine_cache_bytes: 1 << 20,
            engine_buffer: Default::default(),
            split_bytes: 64 << 20,
            mux: Mux::new(Default::default()),
            move_catch_up_max: MOVE_CATCH_UP_MAX,
        }
    }

    /// Applies and reads nothing, and holds every apply while its flag is set.
    #[derive(Default)]
    struct Stalled(std::sync::Mutex<bool>, std::sync::Condvar);

    impl Stalled {
        fn hold(&self, held: bool) {
            *self.0.lock().unwrap() = held;
            self.1.notify_all();
        }
    }

    /// Lets applies go on when dropped, so that a failing test ends instead of leaving one
    /// held in a runtime worker, which would keep the runtime from shutting down.
    struct Release(Arc<Stalled>);

    impl Drop for Release {
        fn drop(&mut self) {
            self.0.hold(false);
        }
    }

    impl Applier for Stalled {
        fn apply(&self, _: &RangeDesc, _: &mut dyn sm::DataWrite, _: u64, _: &[u8]) -> io::Result<RangeReply> {
            let mut held = self.0.lock().unwrap();
            while *held {
                held = self.1.wait(held).unwrap();
            }
            Ok(RangeReply::default())
        }
        fn read(&self, _: &RangeDesc, _: &dyn DataView, _: &[u8], _: u64) -> io::Result<RangeReply> {
            Ok(RangeReply::default())
        }
    }

    /// The stats call (the node's liveness beat) waits for a pass measuring sizes only
    /// [`MEASURE_WAIT`], leaves out the replicas not measured yet, and joins the pass under
    /// way instead of starting another; once that pass ends, the next call measures again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_stats_call_waits_for_sizes_only_so_long() {
        let dir = tempfile::tempdir().unwrap();
        let host = RangeHost::open(test_options(dir.path()), Arc::new(Stalled::default())).await.unwrap();
        // A pass that takes as long as the test says (a scan of a large node).
        let (release, held) = std::sync::mpsc::channel::<()>();
        let slow = host.measures.pass(move || {
            let _ = held.recv();
        });
        let one = BTreeMap::from([(1u64, PeerNode::default())]);
        host.create(desc(1, "a", "z"), Some(one)).await.unwrap();
        for _ in 0..3 {
            let t = std::time::Instant::now();
            let stats =
                tokio::time::timeout(MEASURE_WAIT * 3, host.stats()).await.expect("the stats call waited for the pass");
            assert!(t.elapsed() >= MEASURE_WAIT, "{:?}", t.elapsed());
            assert!(stats.is_empty(), "a range not measured yet was reported");
        }
        assert_eq!(host.measure_passes(), 1, "a call started a pass beside the one under way");
        release.send(()).unwrap();
        slow.await;
        host.measure(Duration::from_secs(30)).await;
        assert_eq!(host.measure_passes(), 2);
        let stats = host.stats().await;
        assert_eq!(stats.iter().map(|s| (s.id, s.bytes)).collect::<Vec<_>>(), [(1, 0)]);
        host.shutdown().await;
    }

    /// A queued client write keeps its room in the replica's queue until it is answered, even
    /// once its writer stopped waiting (a Redis client that hung up, a forwarded batch dropped):
    /// freeing it then let the queue grow past its bound. Past the bound, writers wait.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_queued_write_keeps_its_room_until_answered() {
        let dir = tempfile::tempdir().unwrap();
        let stalled = Arc::new(Stalled::default());
        let host = RangeHost::open(test_options(dir.path()), stalled.clone()).await.unwrap();
        let one = BTreeMap::from([(1u64, PeerNode::default())]);
        host.create(desc(1, "a", "z"), Some(one)).await.unwrap();
        let r = host.get(1).unwrap();
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while r.leader() != Some(1) {
            assert!(std::time::Instant::now() < end, "the range elected no leader");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stalled.hold(true);
        let release = Release(stalled.clone());
        // Writers of 1 MiB each that give up after 50 ms: the first entries commit and wait in
        // apply, the rest wait in the queue.
        let mib = 1 << 20;
        let kib_each = (mib / 1024 + 1) as u64;
        let fits = QUEUED_KIB_MAX as u64 / kib_each;
        for _ in 0..fits {
            let w = tokio::time::timeout(Duration::from_millis(50), r.write_data(1, vec![0; mib])).await;
            assert!(w.is_err(), "a write was answered while apply was held: {w:?}");
        }
        assert_eq!(r.queued_write_bytes(), fits * kib_each * 1024, "writes that no one waits for gave their room back");
        assert_eq!(host.queued_write_bytes(), r.queued_write_bytes());
        // The queue is full: the next writer waits for room, and nothing more is queued.
        let w = tokio::time::timeout(Duration::from_millis(200), r.write_data(1, vec![0; mib])).await;
        assert!(w.is_err());
        assert_eq!(r.queued_write_bytes(), fits * kib_each * 1024);
        // Apply goes on: every write is answered, and the room is free again.
        drop(release);
        let end = std::time::Instant::now() + Duration::from_secs(20);
        while r.queued_write_bytes() > 0 {
            assert!(std::time::Instant::now() < end, "room still taken: {}", r.queued_write_bytes());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let w = tokio::time::timeout(Duration::from_secs(10), r.write_data(1, b"after".to_vec())).await;
        assert!(matches!(w, Ok(Ok(_))), "{w:?}");
        host.shutdown().await;
    }

    #[test]
    fn a_range_is_measured_again_when_it_may_have_reached_the_split_size_or_a_minute_on() {
        let t0 = std::time::Instant::now();
        let m = Measured { at: t0, epoch: 3, written: 1_000, installs: 0 };
        let split = 64 << 20;
        // The replica `s` seconds on, at `epoch`, apply having written up to `written`.
        let now = |s: u64, epoch: u64, written: u64| Measured {
            at: t0 + Duration::from_secs(s),
            epoch,
            written,
            installs: 0,
        };
        let mb = 1 << 20;
        // Its descriptor changed (split, merge, move): at once.
        assert!(m.stale(now(0, 4, 1_000), 10 * mb, split));
        // A snapshot was installed (a new replica caught up; a follower far behind): at once.
        assert!(m.stale(Measured { installs: 1, ..now(0, 3, 1_000) }, 0, split));
        // Nothing written: never.
        assert!(!m.stale(now(3_600, 3, 1_000), 10 * mb, split));
        // 10 MB, a quarter of it written, but it cannot have reached 64 MiB: only a minute on.
        assert!(!m.stale(now(11, 3, 1_000 + 3 * mb), 10 * mb, split));
        assert!(m.stale(now(61, 3, 1_000 + 3 * mb), 10 * mb, split));
        // 60 MB and a quarter of it written: it may be past 64 MiB, so after 10 s.
        assert!(!m.stale(now(9, 3, 1_000 + 15 * mb), 60 * mb, split));
        assert!(m.stale(now(11, 3, 1_000 + 15 * mb), 60 * mb, split));
        // ... but not before a quarter of it was written.
        assert!(!m.stale(now(11, 3, 1_000 + 5 * mb), 60 * mb, split));
        // A small split size (tests, small clusters) makes a small range's scans timely.
        assert!(m.stale(now(11, 3, 1_000 + 3 * mb), 10 * mb, 12 * mb));
        // Past the split size (one hash slot's range cannot split): after as much as it holds.
        assert!(!m.stale(now(11, 3, 1_000 + 50 * mb), 100 * mb, split));
        assert!(m.stale(now(11, 3, 1_000 + 100 * mb), 100 * mb, split));
        // A measure stored by a racing call that read `written` later: no underflow.
        assert!(!m.stale(now(11, 3, 500), 10 * mb, split));
    }
}
