//! What the layers above use of one Raft group: who leads, proposing a command, the read
//! index, membership changes and a status snapshot. Everything here is a thin translation of
//! openraft's API into cairn's terms and errors, so that no crate above this one names
//! openraft (the ranges issue runs many groups per node; each is one [`RaftNode`]).
//!
//! Leadership questions use openraft's *server* metrics, which change only with the vote, the
//! role or the membership; the full metrics change with every log write, and every change
//! wakes every waiting receiver. Never borrow openraft's metrics while holding a borrow of
//! them: tokio's watch lock lets a waiting writer block new readers, so a second borrow can
//! deadlock against openraft publishing new metrics (a test found this). Each function here
//! takes one borrow, copies out what it needs and lets go.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cairn_state::{Command, Response};
use cairn_types::Error;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::raft::linearizable_read::{Linearizer, ReadLogId};
use openraft::{ChangeMembers, ReadPolicy, ServerState};

use crate::node::RaftNode;
use crate::types::{LogId, PeerNode, TypeConfig};

/// Leadership as this member sees it at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leadership {
    /// The leader this member knows of. After a restart the vote restored from disk can name
    /// this member while it is not (yet) leading; `leading` tells.
    pub leader: Option<u64>,
    /// The term of this member's vote.
    pub term: u64,
    /// This member is the leader, in role as well as by vote.
    pub leading: bool,
}

/// Follows leadership changes (openraft's server metrics).
pub struct LeaderWatch {
    rx: openraft::type_config::alias::WatchReceiverOf<TypeConfig, openraft::metrics::RaftServerMetrics<TypeConfig>>,
}

impl LeaderWatch {
    /// Leadership now.
    pub fn now(&self) -> Leadership {
        let m = self.rx.borrow_watched();
        leadership(&m)
    }

    /// Waits for the next change of vote, role or membership; `Err` once Raft has stopped.
    pub async fn changed(&mut self) -> Result<(), Error> {
        self.rx.changed().await.map_err(|_| Error::Stopped)
    }
}

fn leadership(m: &openraft::metrics::RaftServerMetrics<TypeConfig>) -> Leadership {
    Leadership {
        leader: m.current_leader,
        term: m.vote.leader_id().term,
        leading: m.state == ServerState::Leader && m.current_leader == Some(m.id),
    }
}

/// The membership: who votes, and how to reach every member (learners too).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    pub voters: BTreeSet<u64>,
    pub nodes: BTreeMap<u64, PeerNode>,
}

/// One membership change, as etcd's Cluster service asks for them. Each is one joint-consensus
/// change through openraft.
#[derive(Debug, Clone)]
pub enum MembershipChange {
    /// A new voter, reachable at the node's URLs.
    AddVoter(u64, PeerNode),
    /// A learner becomes a voter.
    Promote(u64),
    /// A member's peer URLs change.
    SetNode(u64, PeerNode),
    /// A voter leaves.
    RemoveVoter(u64),
    /// A learner leaves.
    RemoveLearner(u64),
}

/// A snapshot of this member's Raft state, for status, metrics and membership checks.
#[derive(Debug, Clone, Default)]
pub struct RaftStatus {
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    pub membership: Membership,
    /// On the leader: the last log index each member is known to have.
    pub matched: BTreeMap<u64, u64>,
    /// On the leader: how long ago each member last acknowledged a heartbeat.
    pub last_ack: BTreeMap<u64, Duration>,
}

fn change_err(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => Error::NotLeader,
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)) => Error::TimeoutDueToLeaderFail,
        RaftError::APIError(e) => Error::Internal(format!("membership change refused: {e}")),
        RaftError::Fatal(_) => Error::Stopped,
    }
}

impl RaftNode {
    /// Leadership now.
    pub fn leadership(&self) -> Leadership {
        leadership(&self.raft.server_metrics().borrow_watched())
    }

    /// A follower of leadership changes.
    pub fn leader_watch(&self) -> LeaderWatch {
        LeaderWatch { rx: self.raft.server_metrics() }
    }

    /// Proposes `cmd` (this member must lead) and waits until it is committed and applied here;
    /// the answer is apply's. `Error::NotLeader` means it was certainly not proposed;
    /// `Error::TimeoutDueToLeaderFail` that leadership was lost before it committed (it may
    /// still commit under the next leader only if it reached a quorum).
    pub async fn write(&self, cmd: Command) -> Result<Response, Error> {
        match self.raft.client_write(cmd).await {
            Ok(resp) => Ok(resp.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(Error::NotLeader),
            Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_))) => Err(Error::TimeoutDueToLeaderFail),
            Err(RaftError::APIError(e)) => Err(Error::Internal(e.to_string())),
            Err(RaftError::Fatal(_)) => Err(Error::Stopped),
        }
    }

    /// The leader's read index (this member must lead): a log position such that every write
    /// acknowledged before the call is at or before it. By Raft's ReadIndex (a quorum confirms
    /// the leadership after the call), or, with `lease`, by the leader's lease alone (UNSAFE
    /// under clock faults: `--unsafe-lease-reads`).
    pub async fn read_index(&self, lease: bool) -> Result<LogId, Error> {
        let policy = if lease { ReadPolicy::LeaseRead } else { ReadPolicy::ReadIndex };
        match self.raft.get_read_linearizer(policy).await {
            Ok(lin) => Ok(*lin.read_log_id().log_id()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(_))) => Err(Error::NotLeader),
            Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(_))) => Err(Error::LeaderChanged),
            Err(RaftError::Fatal(_)) => Err(Error::Stopped),
        }
    }

    /// Waits until this member has applied everything up to `log_id` (a read index from the
    /// leader), at most `timeout`.
    pub async fn await_applied(&self, log_id: LogId, timeout: Duration) -> Result<(), Error> {
        let lin = Linearizer::new(self.id, ReadLogId::from_log_id(log_id), None);
        match lin.try_await_ready(&self.raft, Some(timeout)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(Error::Timeout),
            Err(_) => Err(Error::Stopped),
        }
    }

    /// The membership as this member last saw it (possibly not yet committed).
    pub fn membership(&self) -> Membership {
        let m = self.raft.server_metrics();
        let m = m.borrow_watched();
        let ms = m.membership_config.membership();
        Membership { voters: ms.voter_ids().collect(), nodes: ms.nodes().map(|(i, n)| (*i, n.clone())).collect() }
    }

    /// Member `id`'s peer address, as the membership has it (without copying the rest).
    pub fn member_node(&self, id: u64) -> Option<PeerNode> {
        let m = self.raft.server_metrics();
        let m = m.borrow_watched();
        m.membership_config.membership().get_node(&id).cloned()
    }

    /// Whether `id` is in the last committed membership.
    pub fn in_committed_membership(&self, id: u64) -> bool {
        let m = self.raft.server_metrics();
        let m = m.borrow_watched();
        m.committed_membership_config.membership().get_node(&id).is_some()
    }

    /// Adds a learner (this member must lead); returns once the change is committed.
    pub async fn add_learner(&self, id: u64, node: PeerNode) -> Result<(), Error> {
        self.raft.add_learner(id, node, false).await.map(|_| ()).map_err(change_err)
    }

    /// Changes the membership (this member must lead); returns once the change is committed.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<(), Error> {
        let (change, retain) = match change {
            MembershipChange::AddVoter(id, node) => (ChangeMembers::AddVoters(BTreeMap::from([(id, node)])), true),
            MembershipChange::Promote(id) => (ChangeMembers::AddVoterIds(BTreeSet::from([id])), true),
            MembershipChange::SetNode(id, node) => (ChangeMembers::SetNodes(BTreeMap::from([(id, node)])), true),
            MembershipChange::RemoveVoter(id) => (ChangeMembers::RemoveVoters(BTreeSet::from([id])), false),
            MembershipChange::RemoveLearner(id) => (ChangeMembers::RemoveNodes(BTreeSet::from([id])), false),
        };
        self.raft.change_membership(change, retain).await.map(|_| ()).map_err(change_err)
    }

    /// Asks this member, which must lead, to hand leadership to `to`.
    pub async fn transfer_leader(&self, to: u64) -> Result<(), Error> {
        self.raft.trigger().transfer_leader(to).await.map_err(|_| Error::Stopped)
    }

    /// Initializes a new cluster's membership unless this member already has one.
    pub async fn initialize_if_new(&self, members: BTreeMap<u64, PeerNode>) {
        if !self.raft.is_initialized().await.unwrap_or(true) {
            match self.raft.initialize(members).await {
                Ok(()) => tracing::info!("initialized the new cluster's membership"),
                Err(e) => tracing::info!(reason = %e, "membership already initialized"),
            }
        }
    }

    /// Why Raft stopped on this member, once it has: a fatal error, such as a failed log write
    /// or fsync (after which the log accepts nothing more: what a failed fsync left in the page
    /// cache cannot be trusted).
    pub async fn fatal(&self) -> Option<String> {
        let stopped = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            m.running_state.as_ref().err().map(|f| f.to_string())
        };
        if stopped.is_some() {
            return stopped;
        }
        // A core that panicked (openraft's own safety checks panic, e.g. on a follower whose
        // log went backwards) does not say so in its metrics: ask it.
        self.raft.with_raft_state(|_| ()).await.err().map(|f| f.to_string())
    }

    /// Whether this member's Raft log is waiting for disk space (ENOSPC).
    pub fn disk_full(&self) -> bool {
        self.wal.disk_full()
    }

    /// Committed entries not yet applied here (cheap: read on every proposal for admission
    /// control).
    pub fn apply_lag(&self) -> u64 {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let committed = m.local_committed.map_or(0, |l| l.index);
        committed.saturating_sub(m.last_applied.map_or(0, |l| l.index))
    }

    /// A snapshot of the Raft state (one borrow of openraft's full metrics).
    pub fn status(&self) -> RaftStatus {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let ms = m.membership_config.membership();
        RaftStatus {
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            committed_index: m.local_committed.map_or(0, |l| l.index),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            membership: Membership {
                voters: ms.voter_ids().collect(),
                nodes: ms.nodes().map(|(i, n)| (*i, n.clone())).collect(),
            },
            matched: m
                .replication
                .as_ref()
                .map(|r| r.iter().filter_map(|(id, l)| l.map(|l| (*id, l.index))).collect())
                .unwrap_or_default(),
            last_ack: m
                .heartbeat
                .as_ref()
                .map(|h| {
                    h.iter().filter_map(|(id, t)| t.as_ref().map(|t| (*id, openraft::Instant::elapsed(&**t)))).collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// When this member last heard from a leader it accepts (an append or heartbeat it did not
/// refuse for a higher vote). openraft keeps a follower's `current_leader` while it is cut off
/// (pre-vote does not change the vote), so "is there a leader" is answered from this.
#[derive(Debug)]
pub struct LeaderContact {
    epoch: std::time::Instant,
    /// Milliseconds after `epoch`.
    last_ms: std::sync::atomic::AtomicU64,
}

impl Default for LeaderContact {
    fn default() -> Self {
        LeaderContact { epoch: std::time::Instant::now(), last_ms: std::sync::atomic::AtomicU64::new(0) }
    }
}

impl LeaderContact {
    /// Records a message from the leader, now.
    pub fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Time since the last message from a leader (since start when there was none).
    pub fn age(&self) -> std::time::Duration {
        let last = self.last_ms.load(std::sync::atomic::Ordering::Relaxed);
        self.epoch.elapsed().saturating_sub(std::time::Duration::from_millis(last))
    }
}

impl RaftNode {
    /// How long this member has been without a leader it hears from: zero while it leads with
    /// a quorum acknowledging it (the time since the last quorum acknowledgement otherwise),
    /// and for a follower the time since the leader's last message.
    pub fn leaderless_for(&self) -> std::time::Duration {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        if m.state == ServerState::Leader {
            // A leader that never had a quorum acknowledge it yet counts from its start.
            return m
                .last_quorum_acked
                .as_ref()
                .map_or_else(|| self.contact.age(), |t| openraft::Instant::elapsed(&**t));
        }
        if m.current_leader.is_none() {
            return self.contact.age().max(std::time::Duration::from_millis(1));
        }
        self.contact.age()
    }
}
