//! Checkers that decide whether a recorded [`History`] is explainable by the
//! store's sequential specification.
//!
//! [`History`]: crate::history::History
//!
//! * [`check_history`] ([`linearizable`]): is every key's sub-history
//!   linearizable? This is the main safety property of the store.
//! * [`check_final_state`] ([`lost`]): after the cluster healed and every key
//!   was read once more, is the final state explainable too, and did any
//!   acknowledged write disappear?
//! * [`check_set`] ([`set`]) and [`check_bank`] ([`bank`]): checkers for the
//!   set and bank workloads, with their own histories and recorders.
//! * [`check_watch`] ([`watch`]): every watcher saw every revision of its
//!   prefix, in order, with no gap and no duplicate, across reconnects.
//! * [`check_lock`] ([`lock`]): fenced critical sections never overlap, and the
//!   fenced data never takes an older token after a newer one.
//!
//! All return reports that serialize to JSON, and whose violations render a
//! human-readable explanation through `Display`.
//!
//! Verdicts are three-valued because the search is exponential in the worst
//! case and bounded by [`CheckOptions`]: a key whose search exhausts the
//! budget is reported as inconclusive, never guessed either way.

pub mod bank;
pub mod linearizable;
pub mod lock;
pub mod lost;
pub mod set;
pub mod watch;

use serde::{Deserialize, Serialize};

pub use bank::{check_bank, BankHistory, BankModel, BankRecorder, BankReport};
pub use linearizable::{check_history, Inconclusive, LinearizedStep, Violation};
pub use lock::{check_lock, LockHistory, LockReport};
pub use lost::{
    check_final_state, final_read_id, lost_writes, with_final_reads, FinalStateReport, LostWrite, FINAL_READ_CLIENT,
};
pub use set::{check_set, SetHistory, SetRecorder, SetReport};
pub use watch::{check_watch, WatchHistory, WatchReport};

#[cfg(test)]
pub(crate) mod testgen;

/// Bounds and switches for the linearizability search.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckOptions {
    /// Search steps allowed per key (one step tries one candidate operation
    /// or backtracks once). A linearizable history typically needs a small
    /// multiple of its length; exhausting the budget makes the key
    /// inconclusive.
    pub max_steps_per_key: u64,
    /// Approximate memory allowed for the per-key memo of visited search
    /// states; exceeding it also makes the key inconclusive.
    pub max_memo_bytes_per_key: usize,
    /// Apply the verdict-preserving reductions for values nobody observed
    /// (see the [`linearizable`] module docs). They make histories with many
    /// unknown writes tractable; only disable them to test the reductions
    /// themselves.
    pub reductions: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions { max_steps_per_key: 2_000_000, max_memo_bytes_per_key: 256 << 20, reductions: true }
    }
}

/// Summary verdict of a [`Report`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// Every key was proven linearizable.
    Linearizable,
    /// At least one key is not linearizable (so neither is the history,
    /// whatever the inconclusive keys turn out to be).
    NotLinearizable,
    /// No violation was found, but some key exhausted the search budget.
    Inconclusive,
}

/// Result of [`check_history`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// True iff every key was *proven* linearizable: no violation and
    /// nothing inconclusive.
    pub valid: bool,
    /// Number of distinct keys in the history.
    pub keys_checked: usize,
    /// Number of operations that took part in the search (after dropping
    /// failed operations, unknown reads and pruned unknown writes).
    pub ops_checked: usize,
    /// Total search steps over all keys; a measure of effort.
    pub steps: u64,
    /// One entry per non-linearizable key, in key order.
    pub violations: Vec<Violation>,
    /// Keys whose search exhausted its budget, in key order.
    pub inconclusive: Vec<Inconclusive>,
}

impl Report {
    /// The three-valued summary.
    pub fn verdict(&self) -> Verdict {
        if !self.violations.is_empty() {
            Verdict::NotLinearizable
        } else if !self.inconclusive.is_empty() {
            Verdict::Inconclusive
        } else {
            Verdict::Linearizable
        }
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:?}: {} keys, {} ops, {} search steps",
            self.verdict(),
            self.keys_checked,
            self.ops_checked,
            self.steps
        )?;
        for violation in &self.violations {
            writeln!(f, "{violation}")?;
        }
        for inconclusive in &self.inconclusive {
            writeln!(f, "{inconclusive}")?;
        }
        Ok(())
    }
}
