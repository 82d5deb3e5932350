//! Final-state checks: after the faults stopped and the cluster healed, every
//! key is read once more; the final values must be explainable, and no
//! acknowledged write may have vanished.
//!
//! Two checks run, on the same inputs:
//!
//! 1. **Linearizability with final reads** ([`with_final_reads`]): every final
//!    read is appended to the history as a read invoked after every recorded
//!    event (invocation, completion or give-up) and the whole history is
//!    checked by [`check_history`]. This is the complete, sound criterion: the
//!    final value must be the state of some linearization of everything that
//!    happened — an unknown write may or may not be part of it, and may even
//!    be ordered after the final read.
//!
//! 2. **Lost acknowledged writes** ([`lost_writes`]): a targeted diagnostic
//!    for the most common way check 1 fails. An operation *acknowledged as
//!    having stored* `v` (an `Ok` write of `v`, or an `Ok` CAS that answered
//!    `true` with `new = v`) on key `k` is reported lost iff
//!
//!    * the final read of `k` did not return `v`, **and**
//!    * every operation on `k` that may have stored the final value (an `Ok`
//!      write or swapped CAS storing it, or an `Unknown` write or CAS
//!      storing it) completed strictly before the acknowledged operation was
//!      invoked. An `Unknown` operation never counts as completed.
//!
//!    Why this is sound: the acknowledged operation took effect at some point
//!    in its interval, and the final value was stored by the last operation
//!    to take effect before the final read. That last operation is either
//!    the acknowledged one (final = `v`, excluded by the first condition) or
//!    one ordered after it — which it cannot be if it completed before the
//!    acknowledged one began. So every reported lost write is also a
//!    violation of check 1; check 1 can catch more (say, a final value that
//!    contradicts earlier reads). A final value of "absent" can never be
//!    stored (the model has no delete), so then every acknowledged write on
//!    the key is lost.
//!
//! Keys that appear in the history but have no final read are listed in
//! [`FinalStateReport::unread_keys`] and make the report invalid: the check
//! was asked to cover every key. Keys that only appear in the final reads
//! are checked too (they must read as absent).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::linearizable::check_history;
use super::{CheckOptions, Report, Verdict};
use crate::history::{ClientId, DisplayValue, History, HistoryError, Op, OpId, OpKind, Outcome, Ret, Value};

/// Client id given to the synthetic final-read operations.
pub const FINAL_READ_CLIENT: ClientId = ClientId::MAX;

/// An acknowledged write whose value the final state lost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostWrite {
    /// The key.
    pub key: String,
    /// The acknowledged operation (a write, or a CAS that swapped).
    pub write: Op,
    /// What the final read returned.
    pub final_value: Value,
    /// The operation that completed last among those that could have stored
    /// `final_value` (all of which completed before `write` was invoked), if
    /// any.
    pub last_writer_of_final: Option<Op>,
}

impl fmt::Display for LostWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "lost acknowledged write on key {:?}: {}; final value {}",
            self.key,
            self.write,
            DisplayValue(self.final_value)
        )?;
        match &self.last_writer_of_final {
            Some(op) => write!(f, " was last written by {op}, which completed before the lost write began"),
            None if self.final_value.is_none() => write!(f, " (the key was never deleted)"),
            None => write!(f, " was never written by any operation"),
        }
    }
}

/// Result of [`check_final_state`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalStateReport {
    /// True iff the history with final reads was proven linearizable, no
    /// acknowledged write was lost and every key was read.
    pub valid: bool,
    /// Linearizability of the history extended with the final reads.
    pub linearizability: Report,
    /// Acknowledged writes missing from the final state (see module docs).
    pub lost_writes: Vec<LostWrite>,
    /// Keys of the history that have no final read.
    pub unread_keys: Vec<String>,
}

impl FinalStateReport {
    /// The three-valued summary. Lost writes are definite violations even
    /// when the linearizability search was inconclusive.
    pub fn verdict(&self) -> Verdict {
        if !self.lost_writes.is_empty() {
            Verdict::NotLinearizable
        } else {
            self.linearizability.verdict()
        }
    }
}

impl fmt::Display for FinalStateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "final state: {:?}", self.verdict())?;
        for lost in &self.lost_writes {
            writeln!(f, "{lost}")?;
        }
        if !self.unread_keys.is_empty() {
            writeln!(f, "keys without a final read: {:?}", self.unread_keys)?;
        }
        write!(f, "{}", self.linearizability)
    }
}

/// Runs both final-state checks of the module docs. `final_reads` maps each
/// key to the value a read returned after the cluster healed and all other
/// operations ended (`None`: the key was absent).
pub fn check_final_state(
    history: &History,
    final_reads: &BTreeMap<String, Value>,
    opts: &CheckOptions,
) -> Result<FinalStateReport, HistoryError> {
    let extended = with_final_reads(history, final_reads)?;
    let linearizability = check_history(&extended, opts)?;
    let lost_writes = lost_writes(history, final_reads)?;
    let mut unread_keys: Vec<String> =
        history.ops.iter().filter(|op| !final_reads.contains_key(&op.key)).map(|op| op.key.clone()).collect();
    unread_keys.sort_unstable();
    unread_keys.dedup();
    Ok(FinalStateReport {
        valid: linearizability.valid && lost_writes.is_empty() && unread_keys.is_empty(),
        linearizability,
        lost_writes,
        unread_keys,
    })
}

/// The history extended with one acknowledged read per entry of
/// `final_reads`, all invoked after the latest timestamp in `history`, with
/// fresh ids and client [`FINAL_READ_CLIENT`].
pub fn with_final_reads(history: &History, final_reads: &BTreeMap<String, Value>) -> Result<History, HistoryError> {
    history.validate()?;
    let latest =
        history.ops.iter().map(|op| op.complete_ns.unwrap_or(op.invoke_ns).max(op.invoke_ns)).max().unwrap_or(0);
    let invoke_ns = latest.checked_add(1).ok_or(HistoryError::Overflow)?;
    let complete_ns = invoke_ns.checked_add(1).ok_or(HistoryError::Overflow)?;
    let mut next_id = match history.ops.iter().map(|op| op.id).max() {
        Some(max) => max.checked_add(1).ok_or(HistoryError::Overflow)?,
        None => 0,
    };
    let mut extended = history.clone();
    for (key, &value) in final_reads {
        extended.ops.push(Op {
            id: next_id,
            client: FINAL_READ_CLIENT,
            key: key.clone(),
            kind: OpKind::Read,
            invoke_ns,
            complete_ns: Some(complete_ns),
            outcome: Outcome::Ok(Ret::Read(value)),
        });
        next_id = next_id.checked_add(1).ok_or(HistoryError::Overflow)?;
    }
    Ok(extended)
}

/// Acknowledged writes lost from the final state, by the rule of the module
/// docs, in history order. Keys without a final read are skipped.
pub fn lost_writes(history: &History, final_reads: &BTreeMap<String, Value>) -> Result<Vec<LostWrite>, HistoryError> {
    history.validate()?;
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in &history.ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut lost = Vec::new();
    for (key, ops) in by_key {
        let Some(&final_value) = final_reads.get(key) else {
            continue;
        };
        // Among operations that may have stored the final value, the one
        // that may have taken effect latest, by completion time, with
        // Unknown operations completing at +infinity. (The `is_some` guard:
        // nothing stores "absent", and reads have no possible write either.)
        let last_writer_of_final = ops
            .iter()
            .filter(|op| final_value.is_some() && op.possible_write() == final_value)
            .max_by_key(|op| match op.outcome {
                Outcome::Unknown => (u64::MAX, op.invoke_ns),
                _ => (op.complete_ns.unwrap_or(u64::MAX), op.invoke_ns),
            })
            .copied();
        let superseded_by_final = |write: &Op| match last_writer_of_final {
            None => false,
            Some(writer) if writer.outcome == Outcome::Unknown => true,
            // Validated: definite outcomes have a completion time.
            Some(writer) => writer.complete_ns.is_none_or(|complete| complete >= write.invoke_ns),
        };
        for &op in &ops {
            let Some(v) = op.acknowledged_write() else {
                continue;
            };
            if Some(v) != final_value && !superseded_by_final(op) {
                lost.push(LostWrite {
                    key: key.to_owned(),
                    write: op.clone(),
                    final_value,
                    last_writer_of_final: last_writer_of_final.cloned(),
                });
            }
        }
    }
    lost.sort_by_key(|l| (l.write.invoke_ns, l.write.id));
    Ok(lost)
}

/// The id of the final read appended for `key` by [`with_final_reads`], if
/// any; handy to recognize it in a violation.
pub fn final_read_id(extended: &History, key: &str) -> Option<OpId> {
    extended.ops.iter().rev().find(|op| op.client == FINAL_READ_CLIENT && op.key == key).map(|op| op.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testgen::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn finals(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
        pairs.iter().map(|&(k, v)| (k.to_owned(), v)).collect()
    }

    fn run(ops: Vec<Op>, pairs: &[(&str, Value)]) -> FinalStateReport {
        check_final_state(&History::new(ops), &finals(pairs), &CheckOptions::default()).expect("well-formed history")
    }

    #[test]
    fn final_state_matching_last_write_is_valid() {
        let report = run(vec![write(0, "k", 1, 0, 10), write(1, "k", 2, 20, 30)], &[("k", Some(2))]);
        assert!(report.valid, "{report}");
        assert_eq!(report.verdict(), Verdict::Linearizable);
    }

    #[test]
    fn lost_acknowledged_write_is_rejected() {
        let report = run(vec![write(0, "k", 1, 0, 10), write(1, "k", 2, 20, 30)], &[("k", Some(1))]);
        assert!(!report.valid);
        assert_eq!(report.verdict(), Verdict::NotLinearizable);
        assert_eq!(report.lost_writes.len(), 1, "{report}");
        let lost = &report.lost_writes[0];
        assert_eq!((lost.key.as_str(), lost.write.id), ("k", 1));
        assert_eq!(lost.final_value, Some(1));
        assert_eq!(lost.last_writer_of_final.as_ref().map(|op| op.id), Some(0));
        // Check 1 agrees, and blames the final read.
        let violations = &report.linearizability.violations;
        assert_eq!(violations.len(), 1);
        let extended = with_final_reads(
            &History::new(vec![write(0, "k", 1, 0, 10), write(1, "k", 2, 20, 30)]),
            &finals(&[("k", Some(1))]),
        )
        .expect("well formed");
        assert_eq!(violations[0].stuck, final_read_id(&extended, "k"));
        assert!(lost.to_string().contains("lost acknowledged write on key \"k\""));
    }

    #[test]
    fn final_state_absent_loses_every_acknowledged_write() {
        let report = run(
            vec![
                write(0, "k", 1, 0, 10),
                cas(1, "k", Some(1), 2, true, 20, 30),
                cas(2, "k", Some(7), 3, false, 40, 50),
            ],
            &[("k", None)],
        );
        let lost: Vec<OpId> = report.lost_writes.iter().map(|l| l.write.id).collect();
        assert_eq!(lost, vec![0, 1], "a failed CAS stored nothing: {report}");
        assert!(!report.linearizability.valid);
    }

    #[test]
    fn concurrent_writes_either_may_win() {
        for winner in [1, 2] {
            let report = run(vec![write(0, "k", 1, 0, 100), write(1, "k", 2, 10, 90)], &[("k", Some(winner))]);
            assert!(report.valid, "{report}");
        }
        // Equal timestamps count as concurrent here too.
        let report = run(vec![write(0, "k", 1, 0, 10), write(1, "k", 2, 10, 20)], &[("k", Some(1))]);
        assert!(report.valid, "{report}");
        let report = run(vec![write(0, "k", 1, 0, 100), write(1, "k", 2, 10, 90)], &[("k", Some(3))]);
        assert_eq!(report.lost_writes.len(), 2, "{report}");
    }

    #[test]
    fn unknown_writes_may_or_may_not_survive() {
        let ops = || vec![write(0, "k", 1, 0, 10), unknown(1, "k", OpKind::Write(2), 20)];
        assert!(run(ops(), &[("k", Some(1))]).valid);
        assert!(run(ops(), &[("k", Some(2))]).valid);
        // An unknown write invoked *before* an acknowledged one can still
        // be applied after it (it may have been stuck in a log).
        let report = run(vec![unknown(0, "k", OpKind::Write(1), 0), write(1, "k", 2, 10, 20)], &[("k", Some(1))]);
        assert!(report.valid, "{report}");
    }

    #[test]
    fn failed_write_surviving_is_rejected() {
        let report = run(vec![write(0, "k", 1, 0, 10), fail(1, "k", OpKind::Write(2), 20, 30)], &[("k", Some(2))]);
        assert!(!report.valid);
        assert_eq!(report.lost_writes.len(), 1, "write(1) was lost: {report}");
        assert_eq!(report.lost_writes[0].last_writer_of_final, None);
        assert!(!report.linearizability.valid);
    }

    #[test]
    fn final_value_contradicting_reads_is_caught_by_linearizability_only() {
        // No acknowledged write, so nothing is "lost"; but the final read
        // goes back to a value a completed read already saw replaced.
        let report = run(
            vec![
                unknown(0, "k", OpKind::Write(1), 0),
                unknown(1, "k", OpKind::Write(2), 0),
                read(2, "k", Some(1), 10, 20),
                read(3, "k", Some(2), 30, 40),
            ],
            &[("k", Some(1))],
        );
        assert!(report.lost_writes.is_empty());
        assert_eq!(report.verdict(), Verdict::NotLinearizable, "{report}");
    }

    #[test]
    fn unread_and_extra_keys() {
        let report = run(vec![write(0, "a", 1, 0, 10), write(1, "b", 1, 0, 10)], &[("a", Some(1)), ("c", None)]);
        assert_eq!(report.unread_keys, vec!["b".to_owned()]);
        assert!(!report.valid, "an unread key makes the check incomplete");
        assert!(report.linearizability.valid);
        assert_eq!(report.linearizability.keys_checked, 3);

        let report = run(vec![], &[("c", Some(5))]);
        assert_eq!(report.verdict(), Verdict::NotLinearizable, "{report}");
    }

    #[test]
    fn final_reads_follow_every_event() {
        let history = History::new(vec![
            write(7, "k", 1, 0, 10),
            Op { complete_ns: Some(500), outcome: Outcome::Unknown, ..unknown(3, "k", OpKind::Write(2), 20) },
        ]);
        let extended = with_final_reads(&history, &finals(&[("k", Some(1))])).expect("well formed");
        let last = extended.ops.last().expect("appended");
        assert_eq!((last.id, last.invoke_ns, last.client), (8, 501, FINAL_READ_CLIENT));
    }

    /// On realistic linearizable workloads, the true final state passes both
    /// checks.
    #[test]
    fn random_workloads_true_final_state_is_valid() {
        let mut rng = StdRng::seed_from_u64(0x5eed_0010);
        for case in 0..20 {
            let workload = sequential_workload(&mut rng, 5, 100, &["a", "b", "c"]);
            let history = History::new(workload.ops);
            let report =
                check_final_state(&history, &workload.final_state, &CheckOptions::default()).expect("well formed");
            assert!(report.valid, "case {case}\n{report}");
        }
    }

    /// Every lost write flagged must also be a linearizability violation
    /// (the rule is sound), and rolling the final state back to a value
    /// superseded by a later acknowledged write must be flagged by both.
    #[test]
    fn random_workloads_lost_writes_are_sound() {
        let mut rng = StdRng::seed_from_u64(0x5eed_0011);
        let mut flagged = 0;
        for case in 0..10 {
            let workload = sequential_workload(&mut rng, 3, 30, &["a"]);
            let history = History::new(workload.ops);
            // Every value the key could end with, right or wrong.
            let mut candidates: Vec<Value> =
                history.ops.iter().filter_map(|op| op.possible_write().map(Some)).collect();
            candidates.push(None);
            for value in candidates {
                let report = check_final_state(&history, &finals(&[("a", value)]), &CheckOptions::default())
                    .expect("well formed");
                assert_ne!(report.linearizability.verdict(), Verdict::Inconclusive);
                if !report.lost_writes.is_empty() {
                    flagged += 1;
                    assert!(
                        !report.linearizability.valid,
                        "case {case}: lost write flagged on a linearizable final state\n{report}"
                    );
                }
            }
            // Roll back to the first acknowledged write when a second one
            // was invoked after it completed and nothing else wrote the
            // first value (values are unique in this workload).
            let acked: Vec<&Op> = history.ops.iter().filter(|op| op.acknowledged_write().is_some()).collect();
            if let (Some(first), Some(later)) =
                (acked.first(), acked.iter().find(|op| Some(op.invoke_ns) > acked.first().and_then(|f| f.complete_ns)))
            {
                let report = check_final_state(
                    &history,
                    &finals(&[("a", first.acknowledged_write())]),
                    &CheckOptions::default(),
                )
                .expect("well formed");
                assert!(
                    report.lost_writes.iter().any(|l| l.write.id == later.id),
                    "case {case}: rollback past #{} not flagged\n{report}",
                    later.id
                );
                assert_eq!(report.linearizability.verdict(), Verdict::NotLinearizable);
            }
        }
        assert!(flagged > 50, "only {flagged} lost-write reports");
    }
}
