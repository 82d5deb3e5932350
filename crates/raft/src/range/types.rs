//! The data tier's openraft type configuration and range descriptors.

use serde::{Deserialize, Serialize};

use crate::types::PeerNode;

/// A range's id: also its Raft group id in the shared log and on the wire.
pub type RangeId = u64;

/// One command in a range's log. `stamp_ms` is the proposing leader's wall clock: time enters
/// apply through the log (expiry decisions are deterministic on every replica).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeOp {
    pub stamp_ms: u64,
    /// The descriptor epoch the request was routed with: apply refuses the op when the range
    /// has moved on (split, merged), so a stale route is retried, never applied to the wrong
    /// keys. 0 skips the check (internal ops).
    pub epoch: u64,
    pub cmd: RangeCmd,
}

/// What a [`RangeOp`] does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RangeCmd {
    /// A command for the [`crate::range::Applier`], opaque to Raft. (`Bytes`: a log entry is
    /// cloned for each follower it is sent to and for apply, and this makes that a count.)
    Data(bytes::Bytes),
    /// Splits the range at `key`: it keeps `[start, key)`, and range `child` is created on
    /// every replica with `[key, end)`, the same voters, and the keys already in place (no data
    /// is copied). Both descriptors take the next epoch.
    Split {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        child: RangeId,
    },
    /// The first half of a merge into the range on the left: the range takes no more writes
    /// or reads (its epoch moves on; requests answer `WrongRange`), so its keys are final.
    Freeze,
    /// The second half, in the left range's log: it takes over `right` (frozen, adjacent),
    /// whose keys travel in the command (a merge is of small ranges), so a replica whose copy
    /// of `right` lags still ends up with the final keys. `right`'s replica on each node is
    /// then absorbed: it applies nothing more and is removed.
    Merge { right: RangeDesc, pairs: Pairs },
    /// Data commands proposed together: a range leader's concurrent client writes share one
    /// entry, so one append, one replication round, one fsync and one apply serve them all.
    /// Each is routed with its own epoch and answered on its own ([`RangeReply::Batch`], in
    /// order); the entry's own epoch is 0. Never holds a split, freeze or merge.
    Batch(Vec<Routed>),
    /// [`RangeCmd::Freeze`], unless the range holds more than [`MERGE_BYTES_MAX`] of keys and
    /// values: frozen, nothing could carry them into a merge (`ReadFrozen` refuses them), and
    /// nothing thaws a range, so it would refuse every request for good. Then nothing changes
    /// and the answer is empty. What `Admin::Freeze` proposes; a command of its own because a
    /// log entry means what it meant when it was written (a replica replaying an older log's
    /// `Freeze` freezes, as the others did).
    FreezeIfItFits,
}

/// One data command in a [`RangeCmd::Batch`], with the epoch it was routed with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routed {
    pub epoch: u64,
    /// Encoded as `serde_bytes` encodes a `Vec<u8>`: postcard writes both as a length and the
    /// bytes.
    pub cmd: bytes::Bytes,
}

impl RangeOp {
    /// A data command.
    pub fn data(stamp_ms: u64, epoch: u64, cmd: impl Into<bytes::Bytes>) -> RangeOp {
        RangeOp { stamp_ms, epoch, cmd: RangeCmd::Data(cmd.into()) }
    }
}

impl std::fmt::Display for RangeOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.cmd {
            RangeCmd::Data(c) => write!(f, "RangeOp({} bytes @{})", c.len(), self.stamp_ms),
            RangeCmd::Split { child, .. } => write!(f, "RangeOp(split off {child} @{})", self.stamp_ms),
            RangeCmd::Freeze => write!(f, "RangeOp(freeze @{})", self.stamp_ms),
            RangeCmd::FreezeIfItFits => write!(f, "RangeOp(freeze if it fits @{})", self.stamp_ms),
            RangeCmd::Batch(ops) => write!(f, "RangeOp({} commands @{})", ops.len(), self.stamp_ms),
            RangeCmd::Merge { right, pairs } => {
                write!(f, "RangeOp(merge {} with {} keys @{})", right.id, pairs.len(), self.stamp_ms)
            }
        }
    }
}

/// What applying a [`RangeOp`] answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RangeReply {
    /// Applied; the applier's encoded answer.
    Done(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Not applied: the op was routed with another epoch, or names keys outside the range.
    /// The range's current descriptor, to re-route with.
    WrongRange(RangeDesc),
    /// A [`RangeCmd::Batch`]'s answers, one per command, in order.
    Batch(Vec<RangeReply>),
    /// Not applied on this replica, though it may have run on the others: an unknown outcome
    /// (a replica that lags a merge which took its keys over).
    Unknown(String),
}

impl Default for RangeReply {
    fn default() -> Self {
        RangeReply::Done(Vec::new())
    }
}

/// A client request for a range: a read or a write command for the applier, or an operator's
/// change, routed with the descriptor epoch `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeRequest {
    pub group: RangeId,
    pub epoch: u64,
    pub read: bool,
    pub cmd: Vec<u8>,
    /// An operator's change instead of `cmd`.
    pub admin: Option<Admin>,
}

impl RangeRequest {
    pub fn data(group: RangeId, epoch: u64, read: bool, cmd: Vec<u8>) -> RangeRequest {
        RangeRequest { group, epoch, read, cmd, admin: None }
    }

    pub fn admin(group: RangeId, epoch: u64, admin: Admin) -> RangeRequest {
        RangeRequest { group, epoch, read: false, cmd: vec![], admin: Some(admin) }
    }
}

/// One range replica's figures, for the placement driver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaStats {
    pub id: RangeId,
    pub epoch: u64,
    /// The leader this replica knows of.
    pub leader: Option<u64>,
    /// Bytes of keys and values (measured at most every few seconds).
    pub bytes: u64,
    /// Client requests this replica ran per second, since the previous report.
    pub qps: f64,
    /// Milliseconds since it last ran a client request.
    pub idle_ms: u64,
    /// Frozen for a merge ([`RangeCmd::Freeze`]): it refuses requests until the merge is
    /// finished, which the placement driver does if the merge was cut short.
    pub frozen: bool,
}

/// Changes to a range, run by its leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Admin {
    /// Split at `key` (see [`RangeCmd::Split`]); answers the two new descriptors.
    Split {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        child: RangeId,
    },
    /// Hand leadership to node `to`, a voter; answers once `to` leads.
    TransferLeader { to: u64 },
    /// Move the replica on node `from` to node `to`: `to` joins as a learner, is caught up
    /// (by snapshot when the log has moved on), and is swapped in for `from` in one joint
    /// membership change. A leader asked to move itself hands leadership to another voter
    /// first (the answer is then `NotLeader`, and the request goes to the new leader).
    Move { from: u64, to: u64, to_peer: PeerNode },
    /// No change: answers the key at the middle of the range's bytes (empty: the range is
    /// empty), where a split by size should cut.
    MiddleKey,
    /// Freeze the range for a merge (see [`RangeCmd::FreezeIfItFits`]); answers its
    /// descriptor, or nothing when the range holds more than [`MERGE_BYTES_MAX`] (it is then
    /// not frozen).
    Freeze,
    /// Of a frozen range: answers its descriptor and every key and value (at most
    /// [`MERGE_BYTES_MAX`]).
    ReadFrozen,
    /// Take over the frozen range on the right (see [`RangeCmd::Merge`]).
    Merge { right: RangeDesc, pairs: Pairs },
    /// Add a replica on node `to`, for a range with fewer voters than `factor` (the
    /// replication factor; refused once it has as many): `to` joins as a learner, is caught
    /// up as in a move, and is made a voter.
    AddReplica { to: u64, to_peer: PeerNode, factor: usize },
    /// No change: answers the keys of the client requests the leader sampled lately (a
    /// postcard `Vec<Vec<u8>>`), where a split by load should cut.
    LoadKeys,
    /// Remove those of `nodes` that are still learners of the range, in one membership change
    /// (none: no change). A move still catching one of them up then fails at once, and may be
    /// asked again.
    DropLearners { nodes: Vec<u64> },
}

/// Keys and values, as a frozen range's are carried into a merge.
pub type Pairs = Vec<(serde_bytes::ByteBuf, serde_bytes::ByteBuf)>;

/// The most bytes of keys and values a merge carries through the left range's log.
pub const MERGE_BYTES_MAX: usize = 32 * 1024 * 1024;

/// How a request for a range ended, on the node that got it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Executed: the applier's answer.
    Done(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Not executed: the range has another descriptor now (re-route with it).
    WrongRange(RangeDesc),
    /// Not executed: this node does not lead the range (the leader it knows of).
    NotLeader { leader: Option<u64> },
    /// Not executed: no replica of the range here.
    NotHere,
    /// Not executed, for a reason that may pass (the group is stopping, a read barrier lost
    /// its leadership).
    Unavailable(String),
    /// May or may not have been executed: a write's outcome is unknown (it must not be sent
    /// again).
    Unknown(String),
}

/// Where a range sits in the keyspace: `[start, end)`, `end` empty meaning the keyspace's end.
/// `epoch` changes on every split, merge and replica change, so a request routed with an old
/// descriptor is detected and re-routed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RangeDesc {
    pub id: RangeId,
    #[serde(with = "serde_bytes")]
    pub start: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub end: Vec<u8>,
    pub epoch: u64,
}

impl RangeDesc {
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && (self.end.is_empty() || key < self.end.as_slice())
    }
}

openraft::declare_raft_types!(
    /// A range's Raft types: opaque data-tier commands in and out, the same node ids and peer
    /// addresses as the meta group.
    pub RangeConfig:
        D = RangeOp,
        R = RangeReply,
        NodeId = u64,
        Node = PeerNode,
);

pub type RangeRaft = openraft::Raft<RangeConfig, crate::range::RangeStateMachine>;
pub type LogId = openraft::alias::LogIdOf<RangeConfig>;
pub type Vote = openraft::alias::VoteOf<RangeConfig>;
pub type Entry = openraft::alias::EntryOf<RangeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<RangeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<RangeConfig>;
pub type Snapshot = openraft::alias::SnapshotOf<RangeConfig, crate::range::sm::SnapshotBytes>;

#[cfg(test)]
mod tests {
    use super::*;

    /// The data commands' bytes used to be `Vec<u8>`s encoded with `serde_bytes`: logs and
    /// snapshots written then must read the same now.
    #[test]
    fn data_commands_encode_as_they_did_as_vecs() {
        #[derive(Serialize, Deserialize)]
        enum OldCmd {
            Data(#[serde(with = "serde_bytes")] Vec<u8>),
        }
        #[derive(Serialize, Deserialize)]
        struct OldRouted {
            epoch: u64,
            #[serde(with = "serde_bytes")]
            cmd: Vec<u8>,
        }
        let cmd: Vec<u8> = (0..=255u8).cycle().take(300).collect();
        let old = postcard::to_allocvec(&OldCmd::Data(cmd.clone())).unwrap();
        assert_eq!(postcard::to_allocvec(&RangeCmd::Data(cmd.clone().into())).unwrap(), old);
        assert_eq!(postcard::from_bytes::<RangeCmd>(&old).unwrap(), RangeCmd::Data(cmd.clone().into()));
        let old = postcard::to_allocvec(&OldRouted { epoch: 7, cmd: cmd.clone() }).unwrap();
        let new = Routed { epoch: 7, cmd: cmd.into() };
        assert_eq!(postcard::to_allocvec(&new).unwrap(), old);
        assert_eq!(postcard::from_bytes::<Routed>(&old).unwrap(), new);
    }
}
