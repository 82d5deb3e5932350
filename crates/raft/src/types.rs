//! cairn's openraft type configuration.

use cairn_state::{Command, Response};
use serde::{Deserialize, Serialize};

/// What Raft's membership records about a member: how to reach it on the peer listener.
/// Names and client URLs are published separately through the log (as etcd does).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PeerNode {
    pub peer_urls: Vec<String>,
}

impl std::fmt::Display for PeerNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.peer_urls.join(","))
    }
}

openraft::declare_raft_types!(
    /// cairn's Raft types: etcd requests in, etcd responses out, u64 member ids.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = PeerNode,
);

pub type Raft = openraft::Raft<TypeConfig, crate::StateMachine>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, crate::SnapshotData>;
