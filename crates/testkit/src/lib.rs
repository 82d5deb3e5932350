//! Test infrastructure for cairn: real multi-process clusters with faults
//! ([`cluster`]), workload histories, and the checkers that judge them.
//!
//! # Tour
//!
//! A correctness test drives a cluster with concurrent clients, injects
//! faults, and afterwards asks one question: *could a single, correct,
//! non-replicated store have produced what the clients saw?*
//!
//! 1. **Record** ([`history`]). Clients share a [`Recorder`]; each request is
//!    bracketed by [`Recorder::invoke`] (just before sending) and one of
//!    [`OpHandle::ok`] / [`OpHandle::fail`] / [`OpHandle::unknown`] (after the
//!    response, or after giving up). The result is a [`History`] of [`Op`]s:
//!    reads, writes and compare-and-swaps on string keys holding
//!    `Option<u64>` registers, with monotonic timestamps and one of three
//!    outcomes — `Ok` (took effect, with this result), `Fail` (definitely did
//!    not) and `Unknown` (may have, at any time after invocation). Histories
//!    serialize to JSON lines for reports.
//!
//! 2. **Check linearizability** ([`check::linearizable`]).
//!    [`check_history`] splits the history by key (linearizability is
//!    local) and runs a Wing–Gong search with Lowe's memoization on each
//!    key, bounded by [`CheckOptions`]. The [`Report`] says
//!    linearizable / not / inconclusive, and for each violating key shows
//!    the longest linearizable prefix and the operation that could not be
//!    placed.
//!
//! 3. **Check the final state** ([`check::lost`]). After healing the
//!    cluster, read every key once more and pass the values to
//!    [`check_final_state`]: it re-checks linearizability with those reads
//!    appended after everything else, and lists acknowledged writes whose
//!    value vanished although nothing could have overwritten it.
//!
//! ```
//! use std::collections::BTreeMap;
//! use cairn_testkit::{check_final_state, check_history, CheckOptions, OpKind, Recorder};
//!
//! let recorder = Recorder::new();
//! recorder.invoke(1, "k", OpKind::Write(1)).write_ok();
//! let read = recorder.invoke(2, "k", OpKind::Read);
//! read.read_ok(Some(1));
//! let history = recorder.history();
//!
//! let report = check_history(&history, &CheckOptions::default()).unwrap();
//! assert!(report.valid, "{report}");
//!
//! let finals = BTreeMap::from([("k".to_owned(), Some(1))]);
//! let report = check_final_state(&history, &finals, &CheckOptions::default()).unwrap();
//! assert!(report.valid, "{report}");
//! ```

pub mod chaos;
pub mod check;
pub mod cluster;
pub mod history;
pub mod http;
pub mod recorder;
pub mod resp;

pub use check::{
    check_bank, check_final_state, check_history, check_set, BankHistory, BankModel, BankRecorder, BankReport,
    CheckOptions, FinalStateReport, LostWrite, Report, SetHistory, SetRecorder, SetReport, Verdict, Violation,
};
pub use history::{History, Op, OpHandle, OpKind, Outcome, Recorder, Ret, Value};
