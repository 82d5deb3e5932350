//! Test-only fault injection, compiled in only with the `failpoints` feature (never in the
//! default build). Without it every function here is a constant the compiler folds away.
//!
//! The chaos harness (`scripts/chaos`) sets the faults of each member over HTTP
//! (`POST /debug/faults` on the client listener). They are:
//!
//! - **link faults**: outgoing peer RPCs to listed members are dropped (as if the network were cut)
//!   or delayed. Cutting A→B on A and B→A on B is a partition between them; because every peer
//!   exchange is a request from one side, this needs no separate network stack.
//! - **clock skew**: jumps this member's clock (`clock_offset_ms`) and makes it run fast or slow
//!   (`clock_rate`); every timer of cairn's own reads it ([`crate::clock`]).
//! - **disk faults**: the Raft log's next write or fsync fails ([`DISK_FAULTS`]).
//! - **power cuts**: the process dies at once, losing every write it has not synced (the
//!   storage layer keeps unsynced writes in memory in failpoints builds), or tearing them.
//! - **bugs**: deliberate defects (`--bug NAME` at start-up) the harness must detect:
//!   `stale-read` serves linearizable reads from local state without the ReadIndex round;
//!   `early-ack` acknowledges puts before they are committed; `lease-ignore-ttl` makes the
//!   leader expire leases 300 ms after their last grant or keep-alive, whatever their TTL.

use std::time::Duration;

/// What happens to an outgoing peer RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Pass,
    Drop,
    Delay(Duration),
}

#[cfg(feature = "failpoints")]
mod imp {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::RwLock;

    use serde::{Deserialize, Serialize};

    /// The fault state of this member, as set by the harness.
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    pub struct Faults {
        /// Member ids (hex, as `cairn status` shows them) whose links are cut.
        #[serde(default)]
        pub blocked: BTreeSet<String>,
        /// Member id (hex) -> added delay in milliseconds.
        #[serde(default)]
        pub delay_ms: BTreeMap<String, u64>,
        #[serde(default)]
        pub clock_offset_ms: i64,
        /// How fast this member's clock runs (1.0 when absent): see [`crate::clock`].
        #[serde(default)]
        pub clock_rate: Option<f64>,
        /// A storage fault the Raft log's writer meets at its next write or fsync (see
        /// [`super::DISK_FAULTS`]).
        #[serde(default)]
        pub disk: Option<String>,
        /// Cut this member's power now: `drop` (every unsynced write is lost) or `tear` (a
        /// random half of the unsynced sectors, chosen by `seed`, reach the disk first). The
        /// process dies on the spot.
        #[serde(default)]
        pub power_cut: Option<String>,
        #[serde(default)]
        pub seed: u64,
    }

    /// What a power cut calls: the storage layer's simulation (set at start-up).
    pub static POWER_CUT: std::sync::OnceLock<fn(Option<u64>)> = std::sync::OnceLock::new();

    pub static FAULTS: RwLock<Option<Faults>> = RwLock::new(None);
    pub static BUGS: RwLock<BTreeSet<String>> = RwLock::new(BTreeSet::new());
}

#[cfg(feature = "failpoints")]
pub use imp::Faults;

/// The fault for an RPC to member `to`.
#[inline]
pub fn link(to: u64) -> Link {
    #[cfg(feature = "failpoints")]
    {
        if let Some(f) = imp::FAULTS.read().expect("faults lock").as_ref() {
            let id = format!("{to:x}");
            if f.blocked.contains(&id) {
                return Link::Drop;
            }
            if let Some(ms) = f.delay_ms.get(&id) {
                return Link::Delay(Duration::from_millis(*ms));
            }
        }
    }
    let _ = to;
    Link::Pass
}

/// The storage faults the `disk` nemesis injects into the Raft log: `wal-fsync` (fsync fails
/// with EIO), `wal-write` (a write fails with EIO), `wal-enospc` (writes fail with ENOSPC for
/// as long as it is set), `wal-short-write` (half a write lands, then EIO).
pub const DISK_FAULTS: &[&str] = &["wal-fsync", "wal-write", "wal-enospc", "wal-short-write"];

/// The storage fault set for this member's Raft log, if any.
#[inline]
pub fn disk() -> Option<String> {
    #[cfg(feature = "failpoints")]
    {
        if let Some(f) = imp::FAULTS.read().expect("faults lock").as_ref() {
            return f.disk.clone();
        }
    }
    None
}

/// Whether the deliberate defect `name` is switched on.
#[inline]
pub fn bug(name: &str) -> bool {
    #[cfg(feature = "failpoints")]
    {
        return imp::BUGS.read().expect("bugs lock").contains(name);
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = name;
        false
    }
}

/// Replaces this member's faults (a power cut does not return).
#[cfg(feature = "failpoints")]
pub fn set(f: Faults) {
    let cut = f.power_cut.clone().map(|mode| (mode == "tear").then_some(f.seed));
    crate::clock::set_skew(f.clock_offset_ms, f.clock_rate.unwrap_or(1.0).clamp(0.01, 100.0));
    *imp::FAULTS.write().expect("faults lock") = Some(f);
    if let (Some(tear), Some(hook)) = (cut, imp::POWER_CUT.get()) {
        hook(tear);
    }
}

/// Installs the power-cut simulation (`cairn_storage::volatile::power_cut`).
#[cfg(feature = "failpoints")]
pub fn set_power_cut(hook: fn(Option<u64>)) {
    let _ = imp::POWER_CUT.set(hook);
}

/// This member's faults.
#[cfg(feature = "failpoints")]
pub fn get() -> Faults {
    imp::FAULTS.read().expect("faults lock").clone().unwrap_or_default()
}

/// Switches a deliberate defect on (at start-up).
#[cfg(feature = "failpoints")]
pub fn enable_bug(name: &str) {
    imp::BUGS.write().expect("bugs lock").insert(name.to_string());
}

/// The defects `--bug` accepts (`no-fsync`: acknowledge without fsync, as
/// `--unsafe-no-fsync`; power cuts must catch it).
pub const BUGS: &[&str] = &["stale-read", "early-ack", "lease-ignore-ttl", "no-fsync"];
