//! The set workload and its checker, after Jepsen's `set` checker and the
//! set traffic of etcd's robustness tests.
//!
//! # Workload
//!
//! Clients add unique elements ([`Element`]s, `u64`) to a grow-only set — in
//! cairn, adding `e` is a put of key `set/<e>` — and read the whole set — one
//! range read over the `set/` prefix at a single revision. Nothing is ever
//! removed. When the run is over and the cluster has healed, one more read is
//! taken (the *final read*), invoked after every recorded operation completed
//! or was given up. Operations are recorded in a [`SetHistory`] by a
//! [`SetRecorder`], with the same timestamp and outcome discipline as the
//! register history (see [`crate::history`]): `Ok` took effect once within
//! its interval, `Fail` definitely did not take effect, `Unknown` may have
//! taken effect at any instant after its invocation — even after the final
//! read — or not at all. Reads whose outcome is not `Ok` carry no result and
//! are ignored.
//!
//! # What [`check_set`] checks
//!
//! An element is *attempted* if the history has at least one add of it
//! (whatever the outcome), *acknowledged* if some add of it is `Ok`,
//! *unknown* if it is attempted, not acknowledged and some add of it is
//! `Unknown`, and *failed* if every add of it is `Fail`. (The workload adds
//! each element once; repeated adds of an element are allowed and handled
//! by these definitions.) An element is *known present since* `t` if an
//! `Ok` add of it completed at `t` or an `Ok` read containing it completed at
//! `t` — take the earliest such `t`.
//!
//! 1. **Lost**: an element known present (acknowledged, or seen by an `Ok`
//!    read) that is missing from the final read.
//! 2. **Unexpected**: an element in an `Ok` read or the final read that was
//!    never attempted.
//! 3. **Resurrected failed add**: a failed element in an `Ok` read or the
//!    final read.
//! 4. **Premature**: an element in an `Ok` read that completed strictly
//!    before every non-failed add of the element was invoked.
//! 5. **Stale read**: an `Ok` read invoked strictly after an element became
//!    known present, that does not contain the element. (Check 1 is this
//!    check applied to the final read.)
//!
//! The report is valid iff none of these occur.
//!
//! # Why this is sound, also with unknown outcomes
//!
//! Every violation above is impossible for a grow-only set whose operations
//! each take effect atomically at one instant within their interval (for
//! reads: they return the whole set at that instant), so none is ever
//! reported for a correct store:
//!
//! * Obligations ("must contain") come only from definite evidence: an `Ok`
//!   add took effect before it completed, and an `Ok` read proves its
//!   elements were present when it took effect, hence before it completed.
//!   Since nothing is removed, every read taking effect later — any read
//!   invoked after that completion, and the final read — contains them. An
//!   `Unknown` add never creates an obligation, however long ago it was
//!   invoked: it may be applied at any later time or never.
//! * Prohibitions ("must not contain") are only derived from what cannot
//!   have happened: an element nobody tried to add, an element whose every
//!   add definitely did not take effect (`Fail`; an `Unknown` add is never
//!   treated as failed), or an element read before any add of it that might
//!   have taken effect was even sent. An `Unknown` add only bounds its
//!   element from below by its invocation time, which is exact: a request
//!   cannot be applied before it was sent.
//! * All comparisons between intervals are strict, so two events with equal
//!   timestamps (impossible with [`SetRecorder`], possible in hand-written
//!   histories) never order anything.
//!
//! The checks assume that the set contains nothing before the run and that
//! nothing but the recorded adds writes it (in cairn: the `set/` prefix is
//! empty and private to the workload), and that the final read is invoked
//! after every recorded operation ended.
//!
//! Counts in [`SetReport`] are complete; the lists of offending elements and
//! reads are truncated to [`MAX_LISTED`] entries each.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::history::{ClientId, HistoryError, OpId};
use crate::recorder::{Log, Slot};

/// An element of the set.
pub type Element = u64;

/// Upper bound on the length of every list in a [`SetReport`] (and of the
/// per-read list of missing elements); the counts are never truncated.
pub const MAX_LISTED: usize = 32;

/// What a client asked the set to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SetOpKind {
    /// Add one element.
    Add(Element),
    /// Read the whole set at one instant.
    Read,
}

impl fmt::Display for SetOpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetOpKind::Add(e) => write!(f, "add({e})"),
            SetOpKind::Read => write!(f, "read"),
        }
    }
}

/// The result of a set operation that completed successfully.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SetRet {
    /// An add was acknowledged.
    Added,
    /// A read returned these elements.
    Read(BTreeSet<Element>),
}

/// How a set operation ended, from the client's point of view; the same
/// promises as [`crate::history::Outcome`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SetOutcome {
    /// Took effect once, within the recorded interval, with this result.
    Ok(SetRet),
    /// Definitely did not take effect.
    Fail,
    /// May or may not have taken effect, at any time after invocation.
    Unknown,
}

/// One operation of a set history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetOp {
    /// Unique within the history.
    pub id: OpId,
    /// The client that issued it (reporting only).
    pub client: ClientId,
    /// What was asked.
    pub kind: SetOpKind,
    /// When the client was about to send the request.
    pub invoke_ns: u64,
    /// When the client received the response, or gave up waiting (for
    /// [`SetOutcome::Unknown`]); `None` if it never recorded either.
    pub complete_ns: Option<u64>,
    /// What the client heard back.
    pub outcome: SetOutcome,
}

impl SetOp {
    /// Checks the invariants the checker relies on (other than id
    /// uniqueness): `Ok` results fit the kind, definite outcomes have a
    /// completion time, and nothing completes before it was invoked.
    pub fn validate(&self) -> Result<(), HistoryError> {
        match (&self.outcome, self.complete_ns) {
            (SetOutcome::Ok(ret), _)
                if !matches!(
                    (self.kind, ret),
                    (SetOpKind::Add(_), SetRet::Added) | (SetOpKind::Read, SetRet::Read(_))
                ) =>
            {
                return Err(HistoryError::ResultMismatch { op: self.id });
            }
            (SetOutcome::Ok(_) | SetOutcome::Fail, None) => {
                return Err(HistoryError::MissingCompletion { op: self.id });
            }
            _ => {}
        }
        match self.complete_ns {
            Some(complete) if complete < self.invoke_ns => Err(HistoryError::CompletesBeforeInvoke { op: self.id }),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for SetOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{} client {} {} -> ", self.id, self.client, self.kind)?;
        match &self.outcome {
            SetOutcome::Ok(SetRet::Added) => write!(f, "ok")?,
            SetOutcome::Ok(SetRet::Read(elements)) => write!(f, "{} elements", elements.len())?,
            SetOutcome::Fail => write!(f, "fail")?,
            SetOutcome::Unknown => write!(f, "unknown")?,
        }
        match (&self.outcome, self.complete_ns) {
            (SetOutcome::Unknown, _) | (_, None) => write!(f, " [{}, inf)", self.invoke_ns),
            (_, Some(complete)) => write!(f, " [{}, {complete}]", self.invoke_ns),
        }
    }
}

/// A recorded set workload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetHistory {
    /// The operations, in invocation order when produced by a
    /// [`SetRecorder`] (the checker does not rely on the order).
    pub ops: Vec<SetOp>,
}

impl SetHistory {
    /// Wraps a list of operations.
    pub fn new(ops: Vec<SetOp>) -> Self {
        SetHistory { ops }
    }

    /// Checks every operation's invariants and that ids are unique.
    pub fn validate(&self) -> Result<(), HistoryError> {
        let mut ids = std::collections::HashSet::with_capacity(self.ops.len());
        for op in &self.ops {
            op.validate()?;
            if !ids.insert(op.id) {
                return Err(HistoryError::DuplicateId { op: op.id });
            }
        }
        Ok(())
    }
}

/// Shared, thread-safe recorder of a set workload; clone it into every
/// client. Same protocol and timestamp guarantees as
/// [`crate::history::Recorder`]: invoke just before sending, complete the
/// handle just after the response arrived.
///
/// ```
/// use std::collections::BTreeSet;
/// use cairn_testkit::check::set::{check_set, SetRecorder};
///
/// let recorder = SetRecorder::new();
/// recorder.invoke_add(1, 7).add_ok();
/// recorder.invoke_read(2).read_ok(BTreeSet::from([7]));
/// let report = check_set(&recorder.history(), &BTreeSet::from([7])).unwrap();
/// assert!(report.valid, "{report}");
/// ```
#[derive(Clone)]
pub struct SetRecorder {
    log: Log<SetOp>,
}

impl Default for SetRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for SetRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetRecorder").field("ops", &self.log.len()).finish()
    }
}

impl SetRecorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Self {
        SetRecorder { log: Log::new() }
    }

    /// Records that `client` is about to send `kind`. A handle dropped
    /// without completion leaves the operation [`SetOutcome::Unknown`] with
    /// no completion time.
    pub fn invoke(&self, client: ClientId, kind: SetOpKind) -> SetOpHandle {
        let slot = self.log.invoke(|index, invoke_ns| SetOp {
            id: index as OpId,
            client,
            kind,
            invoke_ns,
            complete_ns: None,
            outcome: SetOutcome::Unknown,
        });
        SetOpHandle { slot }
    }

    /// Records that `client` is about to add `element`.
    pub fn invoke_add(&self, client: ClientId, element: Element) -> SetOpHandle {
        self.invoke(client, SetOpKind::Add(element))
    }

    /// Records that `client` is about to read the set.
    pub fn invoke_read(&self, client: ClientId) -> SetOpHandle {
        self.invoke(client, SetOpKind::Read)
    }

    /// A snapshot of everything recorded so far; operations still in flight
    /// appear as [`SetOutcome::Unknown`].
    pub fn history(&self) -> SetHistory {
        SetHistory { ops: self.log.snapshot() }
    }

    /// Number of operations recorded so far.
    pub fn len(&self) -> usize {
        self.log.len()
    }

    /// Whether nothing was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An invoked set operation awaiting its outcome; completing consumes it.
#[must_use = "complete the operation with ok/fail/unknown, or it stays Unknown"]
pub struct SetOpHandle {
    slot: Slot<SetOp>,
}

impl fmt::Debug for SetOpHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetOpHandle").field("id", &self.slot.index()).finish()
    }
}

impl SetOpHandle {
    /// The id the operation has in the history.
    pub fn id(&self) -> OpId {
        self.slot.index() as OpId
    }

    fn complete(self, outcome: SetOutcome) {
        self.slot.complete(|op, now| {
            op.complete_ns = Some(now);
            op.outcome = outcome;
        });
    }

    /// The operation took effect with result `ret` (a result of the wrong
    /// kind is recorded as is and rejected by [`SetHistory::validate`]).
    pub fn ok(self, ret: SetRet) {
        self.complete(SetOutcome::Ok(ret));
    }

    /// The add was acknowledged.
    pub fn add_ok(self) {
        self.ok(SetRet::Added);
    }

    /// The read returned `elements`.
    pub fn read_ok(self, elements: BTreeSet<Element>) {
        self.ok(SetRet::Read(elements));
    }

    /// The operation definitely did not take effect. When in doubt use
    /// [`SetOpHandle::unknown`], which is always sound.
    pub fn fail(self) {
        self.complete(SetOutcome::Fail);
    }

    /// The client stopped waiting without learning the outcome.
    pub fn unknown(self) {
        self.complete(SetOutcome::Unknown);
    }
}

/// Why an element was known to be present.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Evidence {
    /// This `Ok` add of the element completed.
    Acknowledged {
        /// The add.
        add: OpId,
        /// Its completion time.
        at_ns: u64,
    },
    /// This `Ok` read contained the element and completed.
    Observed {
        /// The read.
        read: OpId,
        /// Its completion time.
        at_ns: u64,
    },
}

impl Evidence {
    /// Since when the element is known to be present.
    pub fn at_ns(&self) -> u64 {
        match *self {
            Evidence::Acknowledged { at_ns, .. } | Evidence::Observed { at_ns, .. } => at_ns,
        }
    }
}

impl fmt::Display for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Evidence::Acknowledged { add, at_ns } => write!(f, "add #{add} acknowledged at {at_ns}"),
            Evidence::Observed { read, at_ns } => write!(f, "read #{read} saw it, completed at {at_ns}"),
        }
    }
}

/// Formats a read reference: `None` is the final read.
struct ReadRef(Option<OpId>);

impl fmt::Display for ReadRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => write!(f, "read #{id}"),
            None => write!(f, "the final read"),
        }
    }
}

/// An element known to be present but missing from the final read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostElement {
    /// The element.
    pub element: Element,
    /// The earliest proof that it was present.
    pub evidence: Evidence,
}

/// An element in a read that nobody tried to add, or whose every add failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForbiddenElement {
    /// The element.
    pub element: Element,
    /// The first read (in history order) containing it; `None`: only the
    /// final read did.
    pub read: Option<OpId>,
    /// The failed adds of the element (empty for an unexpected element).
    pub failed_adds: Vec<OpId>,
}

/// An element read before any add of it that might have taken effect was
/// invoked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrematureElement {
    /// The element.
    pub element: Element,
    /// The first read (in history order) that contained it too early.
    pub read: OpId,
    /// When that read completed.
    pub read_complete_ns: u64,
    /// The earliest non-failed add of the element.
    pub first_add: OpId,
    /// When that add was invoked (after `read_complete_ns`).
    pub first_add_invoke_ns: u64,
}

/// An element that a stale read lacked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingElement {
    /// The element.
    pub element: Element,
    /// The earliest proof that it was present, dated before the read began.
    pub evidence: Evidence,
}

/// An `Ok` read that lacks elements known present before it was invoked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaleRead {
    /// The read.
    pub read: OpId,
    /// When it was invoked.
    pub invoke_ns: u64,
    /// Number of elements it lacked.
    pub missing_count: usize,
    /// The lacked elements, truncated to [`MAX_LISTED`].
    pub missing: Vec<MissingElement>,
}

/// Result of [`check_set`]. Element counts count distinct elements.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetReport {
    /// True iff no violation of any kind was found.
    pub valid: bool,
    /// Elements with at least one add.
    pub attempted: usize,
    /// Elements with an `Ok` add.
    pub acknowledged: usize,
    /// Elements without an `Ok` add but with an `Unknown` one.
    pub unknown: usize,
    /// Elements whose every add failed.
    pub failed: usize,
    /// `Ok` reads checked (not counting the final read).
    pub reads_checked: usize,
    /// Elements in the final read.
    pub in_final_read: usize,
    /// Elements known present but missing from the final read.
    pub lost_count: usize,
    /// The first [`MAX_LISTED`] of them, by element.
    pub lost: Vec<LostElement>,
    /// Elements read although never attempted.
    pub unexpected_count: usize,
    /// The first [`MAX_LISTED`] of them, by element.
    pub unexpected: Vec<ForbiddenElement>,
    /// Elements read although every add of them failed.
    pub resurrected_count: usize,
    /// The first [`MAX_LISTED`] of them, by element.
    pub resurrected: Vec<ForbiddenElement>,
    /// Elements read before any add of them that might have taken effect was
    /// invoked.
    pub premature_count: usize,
    /// The first [`MAX_LISTED`] of them, by element.
    pub premature: Vec<PrematureElement>,
    /// `Ok` reads lacking an element known present before they began.
    pub stale_read_count: usize,
    /// The first [`MAX_LISTED`] of them, in history order.
    pub stale_reads: Vec<StaleRead>,
}

impl fmt::Display for SetReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "set: {}; {} attempted, {} acknowledged, {} unknown, {} failed; {} reads; {} in final read; \
             {} lost, {} unexpected, {} resurrected, {} premature, {} stale reads",
            if self.valid { "valid" } else { "INVALID" },
            self.attempted,
            self.acknowledged,
            self.unknown,
            self.failed,
            self.reads_checked,
            self.in_final_read,
            self.lost_count,
            self.unexpected_count,
            self.resurrected_count,
            self.premature_count,
            self.stale_read_count
        )?;
        for lost in &self.lost {
            writeln!(f, "lost element {}: missing from the final read, although {}", lost.element, lost.evidence)?;
        }
        for unexpected in &self.unexpected {
            writeln!(f, "unexpected element {}: in {}, but never added", unexpected.element, ReadRef(unexpected.read))?;
        }
        for resurrected in &self.resurrected {
            writeln!(
                f,
                "resurrected element {}: in {}, but every add failed: {:?}",
                resurrected.element,
                ReadRef(resurrected.read),
                resurrected.failed_adds
            )?;
        }
        for premature in &self.premature {
            writeln!(
                f,
                "premature element {}: read #{} completed at {}, before its first add #{} was invoked at {}",
                premature.element,
                premature.read,
                premature.read_complete_ns,
                premature.first_add,
                premature.first_add_invoke_ns
            )?;
        }
        for stale in &self.stale_reads {
            write!(
                f,
                "stale read #{} invoked at {} lacks {} elements:",
                stale.read, stale.invoke_ns, stale.missing_count
            )?;
            for missing in &stale.missing {
                write!(f, " {} ({})", missing.element, missing.evidence)?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// What the history says about the adds of one element.
#[derive(Default)]
struct Adds {
    /// The earliest-completing `Ok` add.
    acknowledged: Option<(u64, OpId)>,
    /// Whether some add is `Unknown`.
    unknown: bool,
    /// Ids of the failed adds.
    failed: Vec<OpId>,
    /// The earliest-invoked non-failed add.
    first_possible: Option<(u64, OpId)>,
}

impl Adds {
    fn all_failed(&self) -> bool {
        self.acknowledged.is_none() && !self.unknown
    }
}

fn push_bounded<T>(list: &mut Vec<T>, item: T) {
    if list.len() < MAX_LISTED {
        list.push(item);
    }
}

/// Runs every check of the module docs on `history`, with `final_read` the
/// elements returned by a read invoked after every recorded operation ended
/// (after the cluster healed). Fails only on a malformed history.
pub fn check_set(history: &SetHistory, final_read: &BTreeSet<Element>) -> Result<SetReport, HistoryError> {
    history.validate()?;

    let mut adds: BTreeMap<Element, Adds> = BTreeMap::new();
    // (op, its result), in history order.
    let mut reads: Vec<(&SetOp, u64, &BTreeSet<Element>)> = Vec::new();
    for op in &history.ops {
        match (op.kind, &op.outcome) {
            (SetOpKind::Add(element), outcome) => {
                let entry = adds.entry(element).or_default();
                match outcome {
                    SetOutcome::Fail => entry.failed.push(op.id),
                    SetOutcome::Unknown => entry.unknown = true,
                    SetOutcome::Ok(_) => {
                        // Validated: Ok operations have a completion time.
                        let complete = op.complete_ns.unwrap_or(u64::MAX);
                        if entry.acknowledged.is_none_or(|(t, _)| complete < t) {
                            entry.acknowledged = Some((complete, op.id));
                        }
                    }
                }
                if *outcome != SetOutcome::Fail && entry.first_possible.is_none_or(|(t, _)| op.invoke_ns < t) {
                    entry.first_possible = Some((op.invoke_ns, op.id));
                }
            }
            (SetOpKind::Read, SetOutcome::Ok(SetRet::Read(elements))) => {
                reads.push((op, op.complete_ns.unwrap_or(u64::MAX), elements));
            }
            (SetOpKind::Read, _) => {}
        }
    }

    // Since when each element is known present, with the earliest proof.
    let mut known: BTreeMap<Element, Evidence> = BTreeMap::new();
    let mut prove = |element: Element, evidence: Evidence| {
        let slot = known.entry(element).or_insert(evidence);
        if evidence.at_ns() < slot.at_ns() {
            *slot = evidence;
        }
    };
    for (&element, entry) in &adds {
        if let Some((at_ns, add)) = entry.acknowledged {
            prove(element, Evidence::Acknowledged { add, at_ns });
        }
    }
    for &(op, complete, elements) in &reads {
        for &element in elements {
            prove(element, Evidence::Observed { read: op.id, at_ns: complete });
        }
    }

    let mut report = SetReport {
        valid: false,
        attempted: adds.len(),
        acknowledged: adds.values().filter(|a| a.acknowledged.is_some()).count(),
        unknown: adds.values().filter(|a| a.acknowledged.is_none() && a.unknown).count(),
        failed: adds.values().filter(|a| a.all_failed()).count(),
        reads_checked: reads.len(),
        in_final_read: final_read.len(),
        lost_count: 0,
        lost: Vec::new(),
        unexpected_count: 0,
        unexpected: Vec::new(),
        resurrected_count: 0,
        resurrected: Vec::new(),
        premature_count: 0,
        premature: Vec::new(),
        stale_read_count: 0,
        stale_reads: Vec::new(),
    };

    // 1. Lost.
    for (&element, &evidence) in &known {
        if !final_read.contains(&element) {
            report.lost_count += 1;
            push_bounded(&mut report.lost, LostElement { element, evidence });
        }
    }

    // 2.-4. Elements that must not be (yet) present. Each element is
    // reported once per kind, for the first read (in history order, then
    // the final read) showing the violation.
    let mut unexpected: BTreeMap<Element, Option<OpId>> = BTreeMap::new();
    let mut resurrected: BTreeMap<Element, Option<OpId>> = BTreeMap::new();
    let mut premature: BTreeMap<Element, PrematureElement> = BTreeMap::new();
    let all_reads = reads.iter().map(|&(op, complete, elements)| (Some((op.id, complete)), elements));
    for (read, elements) in all_reads.chain(std::iter::once((None, final_read))) {
        for &element in elements {
            let read_id = read.map(|(id, _)| id);
            match adds.get(&element) {
                None => {
                    unexpected.entry(element).or_insert(read_id);
                }
                Some(entry) if entry.all_failed() => {
                    resurrected.entry(element).or_insert(read_id);
                }
                Some(entry) => {
                    if let (Some((id, complete)), Some((first_invoke, first_add))) = (read, entry.first_possible) {
                        if complete < first_invoke {
                            premature.entry(element).or_insert(PrematureElement {
                                element,
                                read: id,
                                read_complete_ns: complete,
                                first_add,
                                first_add_invoke_ns: first_invoke,
                            });
                        }
                    }
                }
            }
        }
    }
    report.unexpected_count = unexpected.len();
    for (&element, &read) in unexpected.iter().take(MAX_LISTED) {
        report.unexpected.push(ForbiddenElement { element, read, failed_adds: Vec::new() });
    }
    report.resurrected_count = resurrected.len();
    for (&element, &read) in resurrected.iter().take(MAX_LISTED) {
        let failed_adds = adds.get(&element).map(|a| a.failed.clone()).unwrap_or_default();
        report.resurrected.push(ForbiddenElement { element, read, failed_adds });
    }
    report.premature_count = premature.len();
    report.premature = premature.into_values().take(MAX_LISTED).collect();

    // 5. Stale reads: elements sorted by the time since which they are known
    // present; a read must contain the prefix proven before its invocation.
    let mut by_time: Vec<(u64, Element, Evidence)> = known.iter().map(|(&e, &ev)| (ev.at_ns(), e, ev)).collect();
    by_time.sort_unstable_by_key(|&(at, element, _)| (at, element));
    for &(op, _, elements) in &reads {
        let proven = by_time.partition_point(|&(at, _, _)| at < op.invoke_ns);
        let mut stale: Option<StaleRead> = None;
        for &(_, element, evidence) in &by_time[..proven] {
            if !elements.contains(&element) {
                let entry = stale.get_or_insert_with(|| StaleRead {
                    read: op.id,
                    invoke_ns: op.invoke_ns,
                    missing_count: 0,
                    missing: Vec::new(),
                });
                entry.missing_count += 1;
                push_bounded(&mut entry.missing, MissingElement { element, evidence });
            }
        }
        if let Some(stale) = stale {
            report.stale_read_count += 1;
            push_bounded(&mut report.stale_reads, stale);
        }
    }

    report.valid = report.lost_count == 0
        && report.unexpected_count == 0
        && report.resurrected_count == 0
        && report.premature_count == 0
        && report.stale_read_count == 0;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn op(id: OpId, kind: SetOpKind, invoke: u64, complete: Option<u64>, outcome: SetOutcome) -> SetOp {
        SetOp { id, client: id, kind, invoke_ns: invoke, complete_ns: complete, outcome }
    }

    fn add(id: OpId, element: Element, invoke: u64, complete: u64) -> SetOp {
        op(id, SetOpKind::Add(element), invoke, Some(complete), SetOutcome::Ok(SetRet::Added))
    }

    fn add_fail(id: OpId, element: Element, invoke: u64, complete: u64) -> SetOp {
        op(id, SetOpKind::Add(element), invoke, Some(complete), SetOutcome::Fail)
    }

    fn add_unknown(id: OpId, element: Element, invoke: u64) -> SetOp {
        op(id, SetOpKind::Add(element), invoke, None, SetOutcome::Unknown)
    }

    fn read(id: OpId, elements: &[Element], invoke: u64, complete: u64) -> SetOp {
        let set = elements.iter().copied().collect();
        op(id, SetOpKind::Read, invoke, Some(complete), SetOutcome::Ok(SetRet::Read(set)))
    }

    fn check(ops: Vec<SetOp>, final_read: &[Element]) -> SetReport {
        check_with(ops, &final_read.iter().copied().collect())
    }

    fn check_with(ops: Vec<SetOp>, final_read: &BTreeSet<Element>) -> SetReport {
        let report = check_set(&SetHistory::new(ops), final_read).expect("well formed");
        // Every report must serialize and render.
        let json = serde_json::to_string(&report).expect("serializes");
        assert_eq!(serde_json::from_str::<SetReport>(&json).expect("parses"), report);
        let _ = report.to_string();
        report
    }

    #[test]
    fn accepts_good_history_with_unknown_and_failed_adds() {
        let report = check(
            vec![
                add(0, 1, 0, 10),
                add_unknown(1, 2, 5),
                add_fail(2, 3, 6, 8),
                // Concurrent with add(1): may or may not see it.
                read(3, &[], 1, 9),
                read(4, &[1], 11, 20),
                // The unknown add shows up late, then stays.
                read(5, &[1, 2], 30, 40),
                read(6, &[1, 2], 41, 50),
                // An unknown add that never shows up is fine too.
                add_unknown(7, 4, 60),
                op(8, SetOpKind::Read, 61, None, SetOutcome::Unknown),
                op(9, SetOpKind::Read, 62, Some(63), SetOutcome::Fail),
            ],
            &[1, 2],
        );
        assert!(report.valid, "{report}");
        assert_eq!(
            (report.attempted, report.acknowledged, report.unknown, report.failed, report.reads_checked),
            (4, 1, 2, 1, 4)
        );
        assert_eq!(report.in_final_read, 2);
    }

    #[test]
    fn unknown_add_may_appear_only_in_final_read() {
        let report = check(vec![add_unknown(0, 9, 0), read(1, &[], 5, 6)], &[9]);
        assert!(report.valid, "{report}");
    }

    #[test]
    fn rejects_lost_acknowledged_add() {
        let report = check(vec![add(0, 1, 0, 10), add(1, 2, 0, 10)], &[2]);
        assert!(!report.valid);
        assert_eq!(report.lost_count, 1, "{report}");
        assert_eq!(report.lost[0], LostElement { element: 1, evidence: Evidence::Acknowledged { add: 0, at_ns: 10 } });
        assert!(report.to_string().contains("lost element 1"), "{report}");
    }

    #[test]
    fn rejects_observed_then_lost_unknown_add() {
        let report = check(vec![add_unknown(0, 1, 0), read(1, &[1], 5, 6)], &[]);
        assert!(!report.valid);
        assert_eq!(report.lost, vec![LostElement { element: 1, evidence: Evidence::Observed { read: 1, at_ns: 6 } }]);
    }

    #[test]
    fn rejects_failed_add_that_shows_up() {
        let in_read = check(vec![add_fail(0, 1, 0, 10), read(1, &[1], 20, 30)], &[]);
        assert!(!in_read.valid);
        assert_eq!(in_read.resurrected_count, 1, "{in_read}");
        assert_eq!(in_read.resurrected[0], ForbiddenElement { element: 1, read: Some(1), failed_adds: vec![0] });
        // Observed, so also lost from the final read.
        assert_eq!(in_read.lost_count, 1);

        let in_final = check(vec![add_fail(0, 1, 0, 10)], &[1]);
        assert!(!in_final.valid);
        assert_eq!(in_final.resurrected, vec![ForbiddenElement { element: 1, read: None, failed_adds: vec![0] }]);
        assert!(in_final.to_string().contains("the final read"), "{in_final}");

        // A failed add retried with an unknown outcome may show up.
        let retried = check(vec![add_fail(0, 1, 0, 10), add_unknown(1, 1, 11)], &[1]);
        assert!(retried.valid, "{retried}");
    }

    #[test]
    fn rejects_stale_read() {
        // Read 1 begins after add 0 was acknowledged but lacks it.
        let report = check(vec![add(0, 1, 0, 10), read(1, &[], 11, 20)], &[1]);
        assert!(!report.valid);
        assert_eq!(report.stale_read_count, 1, "{report}");
        let stale = &report.stale_reads[0];
        assert_eq!((stale.read, stale.missing_count), (1, 1));
        assert_eq!(stale.missing[0].evidence, Evidence::Acknowledged { add: 0, at_ns: 10 });

        // Overlapping the acknowledgement is not stale.
        let report = check(vec![add(0, 1, 0, 10), read(1, &[], 10, 20)], &[1]);
        assert!(report.valid, "{report}");
    }

    #[test]
    fn rejects_read_that_forgets_what_an_earlier_read_saw() {
        let report = check(vec![add_unknown(0, 1, 0), read(1, &[1], 5, 6), read(2, &[], 7, 8)], &[1]);
        assert!(!report.valid);
        assert_eq!(report.stale_read_count, 1, "{report}");
        assert_eq!(report.stale_reads[0].missing[0].evidence, Evidence::Observed { read: 1, at_ns: 6 });
    }

    #[test]
    fn rejects_unexpected_element() {
        let report = check(vec![add(0, 1, 0, 10), read(1, &[1, 5], 11, 20)], &[1, 5, 6]);
        assert!(!report.valid);
        assert_eq!(report.unexpected_count, 2, "{report}");
        assert_eq!(report.unexpected[0], ForbiddenElement { element: 5, read: Some(1), failed_adds: Vec::new() });
        assert_eq!(report.unexpected[1], ForbiddenElement { element: 6, read: None, failed_adds: Vec::new() });
    }

    #[test]
    fn rejects_premature_element() {
        let report = check(vec![read(0, &[1], 0, 5), add_unknown(1, 1, 6)], &[1]);
        assert!(!report.valid);
        assert_eq!(report.premature_count, 1, "{report}");
        assert_eq!(report.premature[0].first_add, 1);
    }

    #[test]
    fn lists_are_bounded_but_counts_are_not() {
        let n = MAX_LISTED as u64 * 2;
        let mut ops: Vec<SetOp> = (0..n).map(|e| add(e, e, 0, 1)).collect();
        ops.push(read(n, &[], 2, 3));
        let report = check(ops, &[]);
        assert_eq!((report.lost_count, report.lost.len()), (n as usize, MAX_LISTED));
        assert_eq!(report.stale_read_count, 1);
        assert_eq!(
            (report.stale_reads[0].missing_count, report.stale_reads[0].missing.len()),
            (n as usize, MAX_LISTED)
        );
    }

    #[test]
    fn rejects_malformed_history() {
        let bad = op(0, SetOpKind::Read, 0, Some(1), SetOutcome::Ok(SetRet::Added));
        assert_eq!(
            check_set(&SetHistory::new(vec![bad]), &BTreeSet::new()),
            Err(HistoryError::ResultMismatch { op: 0 })
        );
        let dup = SetHistory::new(vec![add(3, 1, 0, 1), add(3, 2, 0, 1)]);
        assert_eq!(check_set(&dup, &BTreeSet::new()), Err(HistoryError::DuplicateId { op: 3 }));
        let missing = SetHistory::new(vec![op(0, SetOpKind::Add(1), 0, None, SetOutcome::Fail)]);
        assert_eq!(check_set(&missing, &BTreeSet::new()), Err(HistoryError::MissingCompletion { op: 0 }));
    }

    #[test]
    fn recorder_records_across_threads() {
        let recorder = SetRecorder::new();
        std::thread::scope(|scope| {
            for client in 0..4u64 {
                let recorder = recorder.clone();
                scope.spawn(move || {
                    for i in 0..50 {
                        recorder.invoke_add(client, client * 1000 + i).add_ok();
                    }
                    let _dropped = recorder.invoke_add(client, client * 1000 + 999);
                });
            }
        });
        let history = recorder.history();
        assert_eq!(recorder.len(), 204);
        history.validate().expect("well formed");
        let all: BTreeSet<Element> = history
            .ops
            .iter()
            .filter_map(|op| match (op.kind, &op.outcome) {
                (SetOpKind::Add(e), SetOutcome::Ok(_)) => Some(e),
                _ => None,
            })
            .collect();
        recorder.invoke_read(9).read_ok(all.clone());
        let history = recorder.history();
        let times: Vec<u64> = history.ops.iter().map(|op| op.invoke_ns).collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]));
        let report = check_set(&history, &all).expect("well formed");
        assert!(report.valid, "{report}");
        assert_eq!((report.acknowledged, report.unknown), (200, 4));
    }

    /// A valid history from a sequential grow-only set: clients issue
    /// operations with random, overlapping intervals; each operation that
    /// takes effect does so at a random point (within its interval if `Ok`,
    /// any time after invocation if `Unknown`), and reads return the model
    /// state at their point.
    fn random_history(rng: &mut impl Rng) -> (Vec<SetOp>, BTreeSet<Element>) {
        let mut ops = Vec::new();
        let mut points: Vec<(u64, usize)> = Vec::new();
        let mut next_element = 0;
        for client in 0..rng.random_range(1..6u64) {
            let mut now = rng.random_range(0..100);
            for _ in 0..rng.random_range(1..30) {
                let kind = if rng.random_bool(0.6) {
                    next_element += 1;
                    SetOpKind::Add(next_element)
                } else {
                    SetOpKind::Read
                };
                let invoke = now + rng.random_range(1..50);
                let complete = invoke + rng.random_range(2..300);
                now = complete;
                let y: f64 = rng.random();
                let (outcome, point) = if y < 0.05 {
                    (SetOutcome::Fail, None)
                } else if y < 0.15 {
                    let point = rng.random_bool(0.5).then(|| rng.random_range(invoke + 1..invoke + 2_000));
                    (SetOutcome::Unknown, point)
                } else {
                    (SetOutcome::Ok(SetRet::Added), Some(rng.random_range(invoke + 1..complete)))
                };
                if let Some(point) = point {
                    points.push((point, ops.len()));
                }
                ops.push(SetOp {
                    id: ops.len() as OpId,
                    client,
                    kind,
                    invoke_ns: invoke,
                    complete_ns: Some(complete),
                    outcome,
                });
            }
        }
        points.sort_unstable();
        let mut state = BTreeSet::new();
        for (_, i) in points {
            match ops[i].kind {
                SetOpKind::Add(e) => {
                    state.insert(e);
                }
                SetOpKind::Read => {
                    if ops[i].outcome != SetOutcome::Unknown {
                        ops[i].outcome = SetOutcome::Ok(SetRet::Read(state.clone()));
                    }
                }
            }
        }
        (ops, state)
    }

    #[test]
    fn random_valid_histories_pass_and_injected_faults_fail() {
        let mut rng = StdRng::seed_from_u64(0x5eed_5e70);
        let mut injected = [0usize; 4];
        for round in 0..400 {
            let (mut ops, mut final_read) = random_history(&mut rng);
            let report = check_with(ops.clone(), &final_read);
            assert!(report.valid, "round {round}: {report}");

            let acked: Vec<(Element, u64)> = ops
                .iter()
                .filter_map(|op| match (op.kind, &op.outcome) {
                    (SetOpKind::Add(e), SetOutcome::Ok(_)) => op.complete_ns.map(|c| (e, c)),
                    _ => None,
                })
                .collect();
            let fault = rng.random_range(0..4);
            match fault {
                // Lose an acknowledged add from the final read.
                0 => {
                    let Some(&(e, _)) = acked.first() else { continue };
                    final_read.remove(&e);
                }
                // Add a never-attempted element to some read.
                1 => {
                    final_read.insert(u64::MAX);
                    if let Some(SetOp { outcome: SetOutcome::Ok(SetRet::Read(set)), .. }) =
                        ops.iter_mut().find(|op| matches!(op.outcome, SetOutcome::Ok(SetRet::Read(_))))
                    {
                        set.insert(u64::MAX - 1);
                    }
                }
                // Turn an applied add into a failed one.
                2 => {
                    let Some(i) =
                        ops.iter().position(|op| matches!(op.kind, SetOpKind::Add(e) if final_read.contains(&e)))
                    else {
                        continue;
                    };
                    ops[i].outcome = SetOutcome::Fail;
                }
                // Make a read invoked after an acknowledgement miss it.
                _ => {
                    let target = ops.iter().enumerate().find_map(|(i, op)| {
                        let invoke = op.invoke_ns;
                        match &op.outcome {
                            SetOutcome::Ok(SetRet::Read(_)) => {
                                acked.iter().find(|&&(_, complete)| complete < invoke).map(|&(e, _)| (i, e))
                            }
                            _ => None,
                        }
                    });
                    let Some((i, e)) = target else { continue };
                    if let SetOutcome::Ok(SetRet::Read(set)) = &mut ops[i].outcome {
                        set.remove(&e);
                    }
                }
            }
            injected[fault] += 1;
            let report = check_with(ops, &final_read);
            assert!(!report.valid, "round {round}, fault {fault} not detected: {report}");
            let counts =
                [report.lost_count, report.unexpected_count, report.resurrected_count, report.stale_read_count];
            assert!(counts[fault] > 0, "round {round}, fault {fault} misclassified: {report}");
        }
        assert!(injected.iter().all(|&n| n > 20), "{injected:?}");
    }
}
