//! Generated gRPC types and services.
//!
//! - `mvccpb`, `authpb`, `etcdserverpb`, `v3lockpb`, `v3electionpb`: etcd's v3 API, written from
//!   etcd's public API definitions with the same package names, service names and field numbers,
//!   so `etcdctl` and etcd client libraries talk to cairn unchanged. Their messages also have
//!   serde implementations in the protobuf JSON mapping (pbjson), for the HTTP gateway.
//! - `peer`: cairn's internal node-to-node RPC (Raft messages, snapshots, request forwarding).
//!   It runs on the peer listener only, never on the client listener.
#![allow(clippy::all, missing_docs)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}
pub mod authpb {
    tonic::include_proto!("authpb");
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
}
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
}
/// Nested as `cairn::peer` to mirror the proto package `cairn.peer`: prost resolves references
/// to other packages relative to it (`super::super::etcdserverpb`).
pub mod cairn {
    pub mod peer {
        tonic::include_proto!("cairn.peer");
    }
}
pub use cairn::peer;
