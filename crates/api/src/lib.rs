//! Front ends. Each translates a wire protocol to the services and back, with exactly one
//! error-mapping table per protocol:
//!
//! - [`grpc`]: etcd's v3 API (KV, Watch, Lease, Lock, Election, Cluster, Maintenance, Auth) on
//!   the client listener, with access control (`Api::call`). Errors map through
//!   `cairn_types::Error::to_etcd` to etcd's codes and messages.
//! - [`watch_service`]: the Watch service's routing and codec (responses shared across
//!   watchers are sent without re-encoding).
//! - [`http`]: `/metrics` (Prometheus), `/health` and `/ready` (etcd's health endpoints),
//!   `/v1/status` (JSON) on the metrics listener.

pub mod grpc;
pub mod http;
pub mod watch_service;
