//! Every size cairn accepts has a limit. Defaults are etcd's where etcd has one.
//!
//! Limits are validated once at start-up ([`Limits::validate`]) and enforced at the edge, before
//! a request reaches the log, so that nothing oversized is ever replicated.

use serde::{Deserialize, Serialize};

/// etcd's `--max-request-bytes` default: 1.5 MiB.
pub const REQUEST_BYTES_MAX_DEFAULT: usize = 1536 * 1024;
/// etcd's `--max-txn-ops` default.
pub const TXN_OPS_MAX_DEFAULT: usize = 128;
/// etcd's `--quota-backend-bytes` default: 2 GiB.
pub const QUOTA_BACKEND_BYTES_DEFAULT: u64 = 2 * 1024 * 1024 * 1024;
/// Largest key: bbolt's key limit, which bounds etcd's keys in practice.
pub const KEY_BYTES_MAX_DEFAULT: usize = 32 * 1024;
/// gRPC framing allowance above the request limit, as etcd adds (512 KiB): a request between
/// the two limits gets etcd's "request is too large"; above it, gRPC's own "message larger than
/// max" error.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// etcd's MaxLeaseTTL: a longer TTL is refused with "too large lease TTL".
pub const LEASE_TTL_MAX_SECS: i64 = 9_000_000_000;
/// Leases the cluster keeps at most (cairn's limit; etcd has none).
pub const LEASES_MAX: usize = 1_000_000;
/// Largest quota an operator may configure (etcd warns above 8 GiB).
pub const QUOTA_BACKEND_BYTES_MAX: u64 = 64 * 1024 * 1024 * 1024;

/// Limits enforced on client requests. Configurable with etcd's flag names.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Limits {
    pub request_bytes_max: usize,
    pub txn_ops_max: usize,
    pub quota_backend_bytes: u64,
    pub key_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_bytes_max: REQUEST_BYTES_MAX_DEFAULT,
            txn_ops_max: TXN_OPS_MAX_DEFAULT,
            quota_backend_bytes: QUOTA_BACKEND_BYTES_DEFAULT,
            key_bytes_max: KEY_BYTES_MAX_DEFAULT,
        }
    }
}

impl Limits {
    /// Rejects settings that cannot work, with a message naming the flag.
    pub fn validate(&self) -> Result<(), String> {
        if self.request_bytes_max < 1024 || self.request_bytes_max > 64 * 1024 * 1024 {
            return Err(format!(
                "--max-request-bytes must be between 1 KiB and 64 MiB, got {}",
                self.request_bytes_max
            ));
        }
        if self.txn_ops_max == 0 || self.txn_ops_max > 65536 {
            return Err(format!("--max-txn-ops must be between 1 and 65536, got {}", self.txn_ops_max));
        }
        if self.quota_backend_bytes < 1024 * 1024 || self.quota_backend_bytes > QUOTA_BACKEND_BYTES_MAX {
            return Err(format!(
                "--quota-backend-bytes must be between 1 MiB and 64 GiB, got {}",
                self.quota_backend_bytes
            ));
        }
        if self.key_bytes_max == 0 || self.key_bytes_max > self.request_bytes_max {
            return Err(format!(
                "--max-key-bytes must be between 1 and --max-request-bytes ({}), got {}",
                self.request_bytes_max, self.key_bytes_max
            ));
        }
        Ok(())
    }

    /// The largest gRPC message the client listener decodes.
    pub fn grpc_message_bytes_max(&self) -> usize {
        self.request_bytes_max + GRPC_OVERHEAD_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_etcds_and_valid() {
        let l = Limits::default();
        assert_eq!(l.request_bytes_max, 1_572_864);
        assert_eq!(l.txn_ops_max, 128);
        assert_eq!(l.quota_backend_bytes, 2_147_483_648);
        l.validate().unwrap();
    }

    #[test]
    fn validate_rejects_nonsense() {
        let l = Limits { txn_ops_max: 0, ..Limits::default() };
        assert!(l.validate().unwrap_err().contains("--max-txn-ops"));
        let l = Limits { key_bytes_max: 10 * 1024 * 1024, ..Limits::default() };
        assert!(l.validate().unwrap_err().contains("--max-key-bytes"));
        let l = Limits { quota_backend_bytes: 10, ..Limits::default() };
        assert!(l.validate().is_err());
    }
}
