//! cairn's shared vocabulary. No I/O lives here.
//!
//! - [`ids`]: member and cluster identifiers, derived the way etcd derives them so that every
//!   member of a new cluster computes the same ids from the same `--initial-cluster`.
//! - [`limits`]: every size cairn accepts has a limit, with etcd's defaults.
//! - [`error`]: the error kinds a request can end in. Each front end (gRPC, later RESP and HTTP)
//!   maps them to its wire form in exactly one table.
//!
//! Glossary (one word, one meaning): *revision* is the MVCC store's logical clock (etcd's
//! revision); *index* is a position in the Raft log; *term* is a Raft term. A *member* is a
//! node of the cluster as etcd's Cluster API shows it.

pub mod clock;
pub mod error;
pub mod faults;
pub mod ids;
pub mod limits;

pub use error::Error;
pub use ids::{cluster_id, member_id, NodeId};
pub use limits::Limits;

/// A store revision (etcd's `revision`): the cluster-wide logical clock of writes.
/// Signed because etcd's API uses int64 for revisions.
pub type Revision = i64;
