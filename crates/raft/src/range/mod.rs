//! The data tier's Raft groups ("ranges"): many groups per node, each its own openraft
//! instance, sharing what a node has one of.
//!
//! - [`SharedLog`]: one log for every range replica on the node, TiKV's `raft-engine` (one
//!   write and one fsync serve every group with something to append: group commit across
//!   ranges). [`RangeLog`] is one group's view of it, openraft's `RaftLogStorage`. Its files go
//!   through [`fs`], so failpoints builds' power cuts reach them.
//! - [`RangeStateMachine`]: one group's state machine over the node's one data engine (the
//!   ranges' keys are disjoint intervals of one ordered keyspace, so they share its tables);
//!   what a command does is the [`Applier`]'s business (the layer above: Redis semantics).
//! - [`mux`]: one peer transport for every group. Messages to a node from all its groups are
//!   queued together and sent as one `RangeBatch` call over one HTTP/2 connection.
//! - [`RangeHost`]: the node's set of range replicas: creates, opens and finds them, and
//!   answers the transport's incoming messages.
//! - [`gc`]: how far each range purges its log (a leader keeps what close followers need).
//! - [`hibernate`]: idle ranges stop their Raft timers; one beat per node pair stands in for
//!   every range's heartbeats.
//!
//! openraft 0.10.0-alpha.37, the newest release, has no multi-raft feature (its group network
//! adapter is on upstream's main branch, not released); this module is the adapter.

pub mod fs;
pub mod gc;
pub mod hibernate;
pub mod host;
pub mod log;
pub(crate) mod logcheck;
pub mod mux;
pub mod sample;
pub mod sm;
pub mod types;

pub use host::RangeError;
pub use host::{RangeHost, RangeHostOptions, RangeReplica};
pub use log::{RangeLog, SharedLog};
pub use sm::{Applier, DataView, DataWrite, RangeEvent, RangeStateMachine};
pub use types::{
    Admin, Outcome, Pairs, RangeCmd, RangeConfig, RangeDesc, RangeId, RangeOp, RangeRaft, RangeReply, RangeRequest,
    ReplicaStats, Routed,
};
