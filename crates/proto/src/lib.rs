//! Generated gRPC types and services.
//!
//! - `mvccpb`, `authpb`, `etcdserverpb`, `v3lockpb`, `v3electionpb`: etcd's v3 API, written from
//!   etcd's public API definitions with the same package names, service names and field numbers,
//!   so `etcdctl` and etcd client libraries talk to cairn unchanged.
//! - `peer`: cairn's internal node-to-node RPC (Raft messages, snapshots, request forwarding).
//!   It runs on the peer listener only, never on the client listener.
#![allow(clippy::all, missing_docs)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}
pub mod authpb {
    tonic::include_proto!("authpb");
}
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}
/// Nested as `cairn::peer` to mirror the proto package `cairn.peer`: prost resolves references
/// to other packages relative to it (`super::super::etcdserverpb`).
pub mod cairn {
    pub mod peer {
        tonic::include_proto!("cairn.peer");
    }
}
pub use cairn::peer;
