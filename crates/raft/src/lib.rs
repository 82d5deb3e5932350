//! Consensus, through openraft (0.10 line; ARCHITECTURE.md says why), met at its seams:
//!
//! - [`LogStore`] (`RaftLogStorage`): the segmented write-ahead log of `cairn-storage`, with
//!   group commit: openraft's append callback fires after the batch's `fdatasync`.
//! - [`StateMachine`] (`RaftStateMachine`): applies each batch of committed entries to the
//!   store of `cairn-state` as one `ApplyBatch`, with the applied log id and the membership in
//!   the same batch, so they reach the engine in the same atomic write as the changes they
//!   cover. Snapshots are point-in-time engine views, exported only when a follower needs one.
//! - [`network`] (`RaftNetworkFactory`/`RaftNetworkV2`): gRPC over the peer listener; openraft's
//!   messages travel postcard-encoded inside `cairn.peer` messages.
//! - [`PeerService`]: the receiving side of the peer RPC, plus request forwarding, which it hands
//!   to a [`PeerHandler`] supplied by the services layer.
//!
//! [`RaftNode::open`] assembles them; [`group`] is what the layers above use of a running group
//! (leadership, proposing, the read index, membership, status), in cairn's terms and errors.
//! No crate above this one depends on openraft.

pub mod group;
pub mod log_store;
pub mod network;
pub mod node;
pub mod range;
mod recent;
pub mod server;
pub mod state_machine;
pub mod tcp;
pub mod types;

pub use group::{LeaderWatch, Leadership, Membership, MembershipChange, RaftStatus};
pub use log_store::LogStore;
pub use node::{NodeOptions, RaftNode, RaftTimers};
pub use server::{PeerHandler, PeerLimits, PeerService, Sender};
pub use state_machine::{SnapshotData, StateMachine};
pub use types::{LogId, PeerNode, Raft, TypeConfig};
