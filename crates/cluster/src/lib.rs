//! The data tier's cluster layer, the parts that are pure functions: no I/O, no clocks, no
//! Raft. The meta group stores what they read; tasks on the meta leader and the request
//! router carry out what they decide.
//!
//! - [`directory`]: which range holds a key, by descriptor with epochs; where a range may
//!   split (Redis keys only at hash-slot boundaries).
//! - [`placement`]: `plan(view) -> moves`: split, merge, repair, rebalance and leader balance
//!   decisions over a snapshot of the cluster.

pub mod directory;
pub mod placement;
