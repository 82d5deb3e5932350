//! Front ends. Each translates a wire protocol to the services and back, with exactly one
//! error-mapping table per protocol. They call `cairn_services` only: this crate depends on
//! neither openraft nor the etcd state machine. The RESP pieces use `cairn_range`'s command
//! and reply types (the data tier's vocabulary, no I/O) and reach the data tier only through
//! the `redis::Backend` trait; `redis::MemBackend`, the in-memory backend for tests, runs
//! `cairn_range::exec` directly.
//!
//! - [`grpc`]: etcd's v3 API (KV, Watch, Lease, Lock, Election, Cluster, Maintenance, Auth) on
//!   the client listener, with access control (`Api::call`, through `cairn_services::access`).
//!   Errors map through
//!   `cairn_types::Error::to_etcd` to etcd's codes and messages.
//! - [`gateway`]: etcd's HTTP/JSON gateway (`/v3/...`, `/version`) on the client listener,
//!   calling the same [`grpc::Api`] methods; errors in grpc-gateway's JSON and HTTP statuses.
//! - [`watch_service`]: the Watch service's routing and codec (responses shared across
//!   watchers are sent without re-encoding).
//! - [`redis`]: the RESP front end's pieces (framing, command parsing, connection
//!   handling over a `Backend` seam to the data tier); no listener yet.
//! - [`http`]: `/metrics` (Prometheus), `/health`, `/ready`, `/readyz`, `/livez` (etcd's health
//!   endpoints), `/v1/status` (JSON), on every client URL and on the metrics listener.

pub mod gateway;
pub mod grpc;
pub mod http;
pub mod redis;
pub mod watch_service;
