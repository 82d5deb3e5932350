//! Linearizability checking of register histories.
//!
//! # What is checked
//!
//! A history is *linearizable* if every operation that took effect can be
//! assigned a single instant (its linearization point) inside its recorded
//! interval such that executing the operations one by one in the order of
//! those instants, against [`OpKind::apply`], produces exactly the recorded
//! results. Operation A must precede B whenever A completed before B was
//! invoked (`A.complete_ns < B.invoke_ns`, strictly: equal timestamps are
//! treated as concurrent, which can only make the checker more lenient).
//!
//! # Locality
//!
//! Linearizability is *local* (Herlihy & Wing 1990, "P-compositional" in
//! Horn & Kroening 2015): a history over several objects is linearizable iff
//! each object's sub-history is. Keys are independent registers, so the
//! history is split by key and each key is searched on its own. This is what
//! keeps realistic histories tractable: the search is exponential in the
//! number of *concurrent* operations on one key, not in the history length.
//!
//! # Outcomes
//!
//! * `Fail` operations never took effect: they are dropped.
//! * `Unknown` reads tell nothing (there is no result to check and reads do
//!   not change state): dropped.
//! * `Unknown` writes and CASes may take effect at any instant after their
//!   invocation, or never. They are given an interval `[invoke, +inf)` and the
//!   search is allowed to finish without linearizing them. An unknown CAS is
//!   only linearized where it would swap: linearizing it where it fails
//!   changes no state and answers nobody, so it is the same as omitting it.
//! * `Ok` operations must be linearized, with their recorded result; a CAS
//!   that answered `false` must be linearized where the value differs from
//!   `expect`.
//!
//! # Search (Wing & Gong, with Lowe's memoization)
//!
//! This is the algorithm of Wing & Gong (1993) with the state cache of Lowe
//! ("Testing for linearizability", 2017), in the linked-list form also used
//! by porcupine:
//!
//! 1. Every operation contributes a *call* event at `invoke_ns` and, if its
//!    outcome is definite, a *return* event at `complete_ns`. Events are
//!    sorted by time, calls before returns at equal times, into a doubly
//!    linked list.
//! 2. Scanning the list from its head, every call before the first return is
//!    a *minimal* operation: nothing still pending must precede it, so it
//!    may be linearized next. The search tries each in turn: if the model
//!    accepts it, its call and return are unlinked from the list ("lifted"),
//!    it is pushed on a stack and the scan restarts from the head.
//! 3. Reaching a return event means the operation it belongs to cannot be
//!    postponed any further, yet no candidate before it worked: backtrack by
//!    popping the stack, relinking the popped operation (dancing links: the
//!    unlinked nodes remember their neighbours, and lifts are undone in LIFO
//!    order) and continuing the scan after it.
//! 4. The search succeeds as soon as every definite operation is linearized
//!    (unknown ones have no return event, so they never force anything), and
//!    fails when it must backtrack with an empty stack.
//!
//! Lowe's memoization: two search nodes with the same *set* of linearized
//! operations and the same register state have identical futures, whatever
//! order got them there. Every (set, state) pair reached is remembered, and
//! a step that leads to a remembered pair is not taken again. This turns the
//! factorial blow-up over orders of concurrent operations into (at worst) an
//! exponential one over sets, and in practice into near-linear time for
//! linearizable histories.
//!
//! The search is bounded by [`CheckOptions::max_steps_per_key`] and by the
//! memo's size; exhausting either yields an [`Inconclusive`] entry for the
//! key rather than a hang or a guess.
//!
//! # Reductions for unobserved values
//!
//! Every unknown write stays a candidate forever, so a partition that times
//! out many writes could make the search exponential in their number. Three
//! reductions, on by default ([`CheckOptions::reductions`]), keep it in
//! check. They rest on one notion: a value `v` is *unobserved* on a key if no
//! definite read of the key returned `v` and no CAS on the key (whatever its
//! outcome) expected `v`.
//!
//! 1. **Value abstraction.** Every unobserved value written (by any write or
//!    CAS, definite or not) is replaced by one representative unobserved
//!    value. This is exact: observers only ever compare the state for
//!    equality with values they mention (a read's result, a CAS's
//!    `expect`), and every unobserved value differs from all of those. It
//!    merges memo entries that differ only in which unobserved value is
//!    stored.
//! 2. **Symmetry.** After (1), two unknown operations that store an
//!    unobserved value and have the same precondition (both writes, or both
//!    CASes expecting the same value) have the same effect wherever they are
//!    linearized, and the one invoked earlier may be linearized anywhere the
//!    other may (nothing has to follow an unknown operation, and fewer
//!    operations complete before an earlier invocation). So any
//!    linearization can be rewritten to use such interchangeable operations
//!    in invocation order, and the search only ever offers the earliest
//!    unused one of each class. That turns `2^n` subsets into `n + 1`
//!    prefixes.
//! 3. **Pruning.** If moreover the key has no CAS that answered `false`, an
//!    unknown operation storing an unobserved value is dropped altogether:
//!    in a linearization containing it, the operations up to the next change
//!    of value would have to observe that value — reads returning it or
//!    CASes expecting it — or differ from it — failed CASes — and there are
//!    none, so it is immediately followed by an unconditional write or by
//!    nothing, and removing it leaves a valid linearization. (Removing
//!    operations only shrinks the set of observers, so all such operations
//!    can be removed at once.)
//!
//! # Explanations
//!
//! For a non-linearizable key, the search remembers the longest sequence of
//! operations it managed to linearize. The [`Violation`] reports that
//! prefix with the state after each step, the pending operation with the
//! earliest completion (which had to be linearized before then: the *stuck*
//! operation), and all operations that could have been linearized instead.
//! It is one maximal dead end, not a minimal counterexample; it usually
//! points straight at the offending read.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{CheckOptions, Report};
use crate::history::{DisplayValue, History, HistoryError, Op, OpId, OpKind, Outcome, Ret, Value};

/// One step of a linearization: the operation and the value the key held
/// right after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinearizedStep {
    /// The linearized operation.
    pub op: OpId,
    /// The register's value after it.
    pub state_after: Value,
}

/// A key whose sub-history is not linearizable, with an explanation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// The key.
    pub key: String,
    /// The longest sequence of operations the search could linearize.
    pub prefix: Vec<LinearizedStep>,
    /// The register's value after `prefix`.
    pub state: Value,
    /// Of the operations not in `prefix`, the definite one that completed
    /// first: it had to be linearized before its completion and could not
    /// be (either it contradicts `state` or every candidate ordering led to
    /// a dead end).
    pub stuck: Option<OpId>,
    /// Every operation that could have been linearized right after `prefix`
    /// (invoked no later than `stuck` completed), including `stuck` itself.
    pub candidates: Vec<OpId>,
    /// The operations referenced above, sorted by invocation time.
    pub ops: Vec<Op>,
}

/// How many prefix steps `Display` shows before eliding older ones.
const DISPLAY_PREFIX_TAIL: usize = 20;

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let by_id: BTreeMap<OpId, &Op> = self.ops.iter().map(|op| (op.id, op)).collect();
        let show = |f: &mut fmt::Formatter<'_>, id: OpId| match by_id.get(&id) {
            Some(op) => write!(f, "{op}"),
            None => write!(f, "#{id}"),
        };
        writeln!(f, "key {:?} is not linearizable", self.key)?;
        writeln!(f, "  longest linearizable prefix: {} operations", self.prefix.len())?;
        let skip = self.prefix.len().saturating_sub(DISPLAY_PREFIX_TAIL);
        if skip > 0 {
            writeln!(f, "    ... {skip} earlier operations")?;
        }
        for step in &self.prefix[skip..] {
            write!(f, "    ")?;
            show(f, step.op)?;
            writeln!(f, "  => {}", DisplayValue(step.state_after))?;
        }
        writeln!(f, "  value after the prefix: {}", DisplayValue(self.state))?;
        if let Some(stuck) = self.stuck {
            write!(f, "  cannot linearize next, before it completes: ")?;
            show(f, stuck)?;
            writeln!(f)?;
        }
        writeln!(f, "  candidates tried after the prefix:")?;
        for &id in &self.candidates {
            write!(f, "    ")?;
            show(f, id)?;
            writeln!(f)?;
        }
        Ok(())
    }
}

/// A key whose search exhausted its budget.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inconclusive {
    /// The key.
    pub key: String,
    /// Operations that took part in the search.
    pub ops: usize,
    /// Steps taken before giving up.
    pub steps: u64,
    /// Distinct (linearized set, state) pairs remembered.
    pub memo_entries: usize,
}

impl fmt::Display for Inconclusive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "key {:?}: inconclusive after {} steps and {} memoized states over {} operations",
            self.key, self.steps, self.memo_entries, self.ops
        )
    }
}

/// Checks that `history` is linearizable, key by key.
///
/// Returns an error only for malformed histories (see
/// [`History::validate`]); a non-linearizable or inconclusive history is a
/// successful check with a failing [`Report`].
pub fn check_history(history: &History, opts: &CheckOptions) -> Result<Report, HistoryError> {
    history.validate()?;
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in &history.ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut report = Report {
        valid: true,
        keys_checked: by_key.len(),
        ops_checked: 0,
        steps: 0,
        violations: Vec::new(),
        inconclusive: Vec::new(),
    };
    for (key, ops) in by_key {
        let checked = check_key(key, &ops, opts)?;
        report.ops_checked += checked.ops;
        report.steps += checked.steps;
        match checked.result {
            KeyResult::Linearizable => {}
            KeyResult::Violation(violation) => report.violations.push(*violation),
            KeyResult::Inconclusive(inconclusive) => report.inconclusive.push(inconclusive),
        }
    }
    report.valid = report.violations.is_empty() && report.inconclusive.is_empty();
    Ok(report)
}

enum KeyResult {
    Linearizable,
    Violation(Box<Violation>),
    Inconclusive(Inconclusive),
}

struct KeyCheck {
    ops: usize,
    steps: u64,
    result: KeyResult,
}

/// What linearizing an operation requires of and does to the register.
#[derive(Clone, Copy, Debug)]
enum Effect {
    /// A definite read: the value must be exactly this.
    Read(Value),
    /// A write, definite or not: always allowed.
    Write(u64),
    /// A definite CAS and its answer.
    Cas { expect: Value, new: u64, swapped: bool },
    /// A CAS of unknown outcome: only linearized where it swaps.
    MaybeCas { expect: Value, new: u64 },
}

impl Effect {
    /// The register's value after linearizing this operation on `state`,
    /// or `None` if the operation cannot be linearized there.
    fn step(self, state: Value) -> Option<Value> {
        match self {
            Effect::Read(seen) => (state == seen).then_some(state),
            Effect::Write(v) => Some(Some(v)),
            Effect::Cas { expect, new, swapped } => match (state == expect, swapped) {
                (true, true) => Some(Some(new)),
                (false, false) => Some(state),
                _ => None,
            },
            Effect::MaybeCas { expect, new } => (state == expect).then_some(Some(new)),
        }
    }

    /// The value stored, for operations that store one.
    fn stored(self) -> Option<u64> {
        match self {
            Effect::Read(_) => None,
            Effect::Write(v) | Effect::Cas { new: v, .. } | Effect::MaybeCas { new: v, .. } => Some(v),
        }
    }

    /// The value a read returned or a CAS expected, if any.
    fn observed(self) -> Option<u64> {
        match self {
            Effect::Read(seen) => seen,
            Effect::Cas { expect, .. } | Effect::MaybeCas { expect, .. } => expect,
            Effect::Write(_) => None,
        }
    }

    /// The same effect storing `v` instead.
    fn storing(self, v: u64) -> Effect {
        match self {
            Effect::Read(_) => self,
            Effect::Write(_) => Effect::Write(v),
            Effect::Cas { expect, swapped, .. } => Effect::Cas { expect, new: v, swapped },
            Effect::MaybeCas { expect, .. } => Effect::MaybeCas { expect, new: v },
        }
    }
}

/// An operation taking part in the search.
struct Call<'a> {
    op: &'a Op,
    /// What the search uses (after value abstraction).
    effect: Effect,
    /// The operation's real effect, for explanations.
    concrete: Effect,
    /// `None` for unknown outcomes: they never have to be linearized.
    complete_ns: Option<u64>,
    /// For unknown operations storing an unobserved value: their symmetry
    /// class (see the module docs).
    class: Option<usize>,
}

/// Turns a key's operations into search participants, applying the rules of
/// the module docs: drop failures and unknown reads, and, if enabled, the
/// reductions for unobserved values. Returns the calls and the number of
/// symmetry classes.
fn prepare<'a>(ops: &[&'a Op], opts: &CheckOptions) -> Result<(Vec<Call<'a>>, usize), HistoryError> {
    let mut calls = Vec::with_capacity(ops.len());
    for &op in ops {
        let (effect, complete_ns) = match (op.outcome, op.kind) {
            (Outcome::Fail, _) | (Outcome::Unknown, OpKind::Read) => continue,
            (Outcome::Unknown, OpKind::Write(v)) => (Effect::Write(v), None),
            (Outcome::Unknown, OpKind::Cas { expect, new }) => (Effect::MaybeCas { expect, new }, None),
            (Outcome::Ok(ret), kind) => {
                let complete = op.complete_ns.ok_or(HistoryError::MissingCompletion { op: op.id })?;
                let effect = match (kind, ret) {
                    (OpKind::Read, Ret::Read(seen)) => Effect::Read(seen),
                    (OpKind::Write(v), Ret::Write) => Effect::Write(v),
                    (OpKind::Cas { expect, new }, Ret::Cas(swapped)) => Effect::Cas { expect, new, swapped },
                    _ => return Err(HistoryError::ResultMismatch { op: op.id }),
                };
                (effect, Some(complete))
            }
        };
        calls.push(Call { op, effect, concrete: effect, complete_ns, class: None });
    }
    if !opts.reductions {
        return Ok((calls, 0));
    }

    let observed: HashSet<u64> = calls.iter().filter_map(|c| c.effect.observed()).collect();
    let unobserved = |c: &Call<'_>| c.effect.stored().is_some_and(|v| !observed.contains(&v));

    // 3. Pruning.
    let has_failed_cas = calls.iter().any(|c| matches!(c.effect, Effect::Cas { swapped: false, .. }));
    if !has_failed_cas {
        calls.retain(|c| !(c.complete_ns.is_none() && unobserved(c)));
    }

    // 1. Value abstraction: the smallest unobserved value stored stands for
    //    all of them.
    let representative = calls.iter().filter(|c| unobserved(c)).filter_map(|c| c.effect.stored()).min();
    if let Some(representative) = representative {
        for call in &mut calls {
            if unobserved(call) {
                call.effect = call.effect.storing(representative);
            }
        }
    }

    // 2. Symmetry classes of unknown operations storing an unobserved value,
    //    keyed by precondition: `None` for writes, `Some(expect)` for CASes.
    let mut classes: BTreeMap<Option<Value>, usize> = BTreeMap::new();
    for call in &mut calls {
        let precondition = match call.effect {
            _ if call.complete_ns.is_some() => continue,
            Effect::Write(v) if Some(v) == representative => None,
            Effect::MaybeCas { expect, new } if Some(new) == representative => Some(expect),
            _ => continue,
        };
        let next = classes.len();
        call.class = Some(*classes.entry(precondition).or_insert(next));
    }
    Ok((calls, classes.len()))
}

const NIL: usize = usize::MAX;
const HEAD: usize = 0;

#[derive(Clone, Copy)]
enum Node {
    Head,
    Call(usize),
    /// Only its position matters: reaching it forces a backtrack.
    Return,
}

/// The time-ordered event list of the module docs, as index-linked nodes.
struct EventList {
    nodes: Vec<Node>,
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Per call: its call node, and its return node or `NIL`.
    call_node: Vec<usize>,
    return_node: Vec<usize>,
    /// Call indices in list order.
    call_order: Vec<usize>,
}

impl EventList {
    fn new(calls: &[Call<'_>]) -> Self {
        // (time, returns after calls at equal times, call index): a total,
        // deterministic order.
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * calls.len());
        for (i, call) in calls.iter().enumerate() {
            events.push((call.op.invoke_ns, false, i));
            if let Some(complete) = call.complete_ns {
                events.push((complete, true, i));
            }
        }
        events.sort_unstable();

        let len = events.len() + 1;
        let mut list = EventList {
            nodes: Vec::with_capacity(len),
            next: Vec::with_capacity(len),
            prev: Vec::with_capacity(len),
            call_node: vec![NIL; calls.len()],
            return_node: vec![NIL; calls.len()],
            call_order: Vec::with_capacity(calls.len()),
        };
        list.nodes.push(Node::Head);
        for (position, &(_, is_return, i)) in events.iter().enumerate() {
            let node = position + 1;
            if is_return {
                list.nodes.push(Node::Return);
                list.return_node[i] = node;
            } else {
                list.nodes.push(Node::Call(i));
                list.call_node[i] = node;
                list.call_order.push(i);
            }
        }
        for node in 0..len {
            list.next.push(if node + 1 < len { node + 1 } else { NIL });
            list.prev.push(if node == 0 { NIL } else { node - 1 });
        }
        list
    }

    fn unlink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = next;
        if next != NIL {
            self.prev[next] = prev;
        }
    }

    /// Undoes `unlink(node)`; valid because unlinks are undone in LIFO
    /// order, so `node`'s remembered neighbours are adjacent again.
    fn relink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = node;
        if next != NIL {
            self.prev[next] = node;
        }
    }

    fn lift(&mut self, call: usize) {
        self.unlink(self.call_node[call]);
        if self.return_node[call] != NIL {
            self.unlink(self.return_node[call]);
        }
    }

    fn unlift(&mut self, call: usize) {
        if self.return_node[call] != NIL {
            self.relink(self.return_node[call]);
        }
        self.relink(self.call_node[call]);
    }
}

/// Fixed-size bitset over call indices; the memo key.
#[derive(Clone, PartialEq, Eq, Hash)]
struct BitSet(Box<[u64]>);

impl BitSet {
    fn new(bits: usize) -> Self {
        BitSet(vec![0; bits.div_ceil(64)].into_boxed_slice())
    }

    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// Per symmetry class: members in list (invocation) order, and how many of
/// them are linearized — always a prefix, by construction.
struct Classes {
    members: Vec<Vec<usize>>,
    used: Vec<usize>,
}

impl Classes {
    fn new(calls: &[Call<'_>], count: usize, list: &EventList) -> Self {
        let mut members = vec![Vec::new(); count];
        for &i in &list.call_order {
            if let Some(class) = calls[i].class {
                members[class].push(i);
            }
        }
        Classes { members, used: vec![0; count] }
    }

    /// Whether `i` may be linearized next as far as symmetry goes: it is in
    /// no class, or it is its class's earliest unused member.
    fn allows(&self, calls: &[Call<'_>], i: usize) -> bool {
        calls[i].class.is_none_or(|c| self.members[c].get(self.used[c]) == Some(&i))
    }

    fn adjust(&mut self, calls: &[Call<'_>], i: usize, linearized: bool) {
        if let Some(c) = calls[i].class {
            if linearized {
                self.used[c] += 1;
            } else {
                self.used[c] -= 1;
            }
        }
    }
}

/// Runs the search for one key. See the module docs.
fn check_key(key: &str, ops: &[&Op], opts: &CheckOptions) -> Result<KeyCheck, HistoryError> {
    let (calls, class_count) = prepare(ops, opts)?;
    let definite_total = calls.iter().filter(|c| c.complete_ns.is_some()).count();
    let mut check = KeyCheck { ops: calls.len(), steps: 0, result: KeyResult::Linearizable };
    if definite_total == 0 {
        // Only unknown writes: linearizing none of them is a linearization.
        return Ok(check);
    }

    let mut list = EventList::new(&calls);
    let mut classes = Classes::new(&calls, class_count, &list);
    let mut linearized = BitSet::new(calls.len());
    let mut memo: HashSet<(BitSet, Value)> = HashSet::new();
    // Rough heap cost of one memo entry: the bitset words, the value, and
    // the hash table's slot and control byte.
    let entry_bytes = linearized.0.len() * 8 + std::mem::size_of::<(BitSet, Value)>() + 1;
    // Linearized calls, innermost last, with the state before each.
    let mut stack: Vec<(usize, Value)> = Vec::new();
    // The deepest stack seen, for explanations. It is refreshed lazily,
    // just before backtracking from a new maximum depth, and only from the
    // first position where it differs (`best[..agree] == stack[..agree]`),
    // so maintaining it costs O(1) amortized per step instead of a copy of
    // the stack at every new depth.
    let mut best: Vec<usize> = Vec::new();
    let mut agree = 0;
    let mut state: Value = None;
    let mut definite_done = 0;
    let mut node = list.next[HEAD];

    loop {
        check.steps += 1;
        if check.steps > opts.max_steps_per_key || memo.len().saturating_mul(entry_bytes) > opts.max_memo_bytes_per_key
        {
            check.result = KeyResult::Inconclusive(Inconclusive {
                key: key.to_owned(),
                ops: calls.len(),
                steps: check.steps - 1,
                memo_entries: memo.len(),
            });
            return Ok(check);
        }
        match (node != NIL).then(|| list.nodes[node]) {
            Some(Node::Call(i)) => {
                let call = &calls[i];
                if let (true, Some(next_state)) = (classes.allows(&calls, i), call.effect.step(state)) {
                    linearized.set(i);
                    if memo.insert((linearized.clone(), next_state)) {
                        stack.push((i, state));
                        state = next_state;
                        list.lift(i);
                        classes.adjust(&calls, i, true);
                        if call.complete_ns.is_some() {
                            definite_done += 1;
                            if definite_done == definite_total {
                                return Ok(check);
                            }
                        }
                        node = list.next[HEAD];
                        continue;
                    }
                    // Already explored from this (set, state): skip.
                    linearized.clear(i);
                }
                node = list.next[node];
            }
            // A pending operation cannot be postponed past its return (or,
            // defensively, the scan ran off the end): backtrack.
            Some(Node::Return) | None => {
                if stack.len() > best.len() {
                    best.truncate(agree);
                    best.extend(stack[agree..].iter().map(|&(i, _)| i));
                }
                let Some((i, previous)) = stack.pop() else {
                    check.result = KeyResult::Violation(Box::new(explain(key, &calls, &best)));
                    return Ok(check);
                };
                agree = agree.min(stack.len());
                linearized.clear(i);
                if calls[i].complete_ns.is_some() {
                    definite_done -= 1;
                }
                classes.adjust(&calls, i, false);
                state = previous;
                list.unlift(i);
                node = list.next[list.call_node[i]];
            }
            // The head is never reached by a scan: scans start at its
            // successor.
            Some(Node::Head) => node = list.next[node],
        }
    }
}

/// Builds the [`Violation`] for a failed search from the longest prefix it
/// linearized, replaying the operations' real effects.
fn explain(key: &str, calls: &[Call<'_>], best: &[usize]) -> Violation {
    let mut state = None;
    let mut prefix = Vec::with_capacity(best.len());
    let mut in_prefix = vec![false; calls.len()];
    for &i in best {
        // The abstract search accepted this step and the abstraction is
        // exact, so the concrete step cannot fail; keep the state unchanged
        // rather than panic.
        state = calls[i].concrete.step(state).unwrap_or(state);
        in_prefix[i] = true;
        prefix.push(LinearizedStep { op: calls[i].op.id, state_after: state });
    }
    let pending = || (0..calls.len()).filter(|&i| !in_prefix[i]);
    let stuck =
        pending().filter_map(|i| calls[i].complete_ns.map(|c| (c, calls[i].op.invoke_ns, i))).min().map(|(_, _, i)| i);
    let deadline = stuck.and_then(|i| calls[i].complete_ns).unwrap_or(u64::MAX);
    let candidates: Vec<usize> = pending().filter(|&i| calls[i].op.invoke_ns <= deadline).collect();

    let mut ops: Vec<Op> = best.iter().chain(&candidates).map(|&i| calls[i].op.clone()).collect();
    ops.sort_by_key(|op| (op.invoke_ns, op.id));
    Violation {
        key: key.to_owned(),
        prefix,
        state,
        stuck: stuck.map(|i| calls[i].op.id),
        candidates: candidates.iter().map(|&i| calls[i].op.id).collect(),
        ops,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testgen::{self, *};
    use crate::check::Verdict;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::time::Instant;

    fn check(ops: Vec<Op>) -> Report {
        check_history(&History::new(ops), &CheckOptions::default()).expect("well-formed history")
    }

    fn assert_linearizable(ops: Vec<Op>) {
        let report = check(ops);
        assert_eq!(report.verdict(), Verdict::Linearizable, "{report}");
        assert!(report.valid);
    }

    fn assert_violation(ops: Vec<Op>) -> Violation {
        let report = check(ops);
        assert_eq!(report.verdict(), Verdict::NotLinearizable, "{report}");
        assert!(!report.valid);
        assert_eq!(report.violations.len(), 1, "{report}");
        report.violations.into_iter().next().expect("one violation")
    }

    #[test]
    fn empty_history_is_linearizable() {
        let report = check(vec![]);
        assert!(report.valid);
        assert_eq!(report.keys_checked, 0);
    }

    #[test]
    fn sequential_write_then_read() {
        assert_linearizable(vec![read(0, "k", None, 0, 10), write(1, "k", 1, 20, 30), read(2, "k", Some(1), 40, 50)]);
    }

    #[test]
    fn stale_read_after_completed_write_is_rejected() {
        let violation =
            assert_violation(vec![write(0, "k", 1, 0, 10), write(1, "k", 2, 20, 30), read(2, "k", Some(1), 40, 50)]);
        assert_eq!(violation.key, "k");
        let prefix: Vec<OpId> = violation.prefix.iter().map(|s| s.op).collect();
        assert_eq!(prefix, vec![0, 1]);
        assert_eq!(violation.state, Some(2));
        assert_eq!(violation.stuck, Some(2));
        assert_eq!(violation.candidates, vec![2]);
        let text = violation.to_string();
        assert!(text.contains("key \"k\" is not linearizable"), "{text}");
        assert!(text.contains("#2 client 2 \"k\" read -> 1 [40, 50]"), "{text}");
    }

    #[test]
    fn read_of_a_value_never_written_is_rejected() {
        let violation = assert_violation(vec![write(0, "k", 1, 0, 10), read(1, "k", Some(9), 5, 20)]);
        // The write could be linearized (before or after the read's
        // invocation); the read then has nothing to return 9 from.
        let prefix: Vec<OpId> = violation.prefix.iter().map(|s| s.op).collect();
        assert_eq!(prefix, vec![0]);
        assert_eq!(violation.stuck, Some(1));
        assert_eq!(violation.candidates, vec![1]);
    }

    #[test]
    fn read_of_absent_after_completed_write_is_rejected() {
        assert_violation(vec![write(0, "k", 1, 0, 10), read(1, "k", None, 20, 30)]);
    }

    #[test]
    fn read_overlapping_a_write_may_see_either_value() {
        assert_linearizable(vec![write(0, "k", 1, 0, 100), read(1, "k", None, 10, 20)]);
        assert_linearizable(vec![write(0, "k", 1, 0, 100), read(1, "k", Some(1), 10, 20)]);
        // Equal timestamps count as concurrent.
        assert_linearizable(vec![write(0, "k", 1, 0, 10), read(1, "k", None, 10, 20)]);
    }

    #[test]
    fn new_then_old_read_inversion_is_rejected() {
        // Both reads overlap the write, but once a read returned the new
        // value a later read cannot return the old one.
        assert_violation(vec![write(0, "k", 1, 0, 100), read(1, "k", Some(1), 10, 20), read(2, "k", None, 30, 40)]);
        // The other way round is fine.
        assert_linearizable(vec![write(0, "k", 1, 0, 100), read(1, "k", None, 10, 20), read(2, "k", Some(1), 30, 40)]);
    }

    #[test]
    fn concurrent_writes_may_be_ordered_either_way() {
        let base = || vec![write(0, "k", 1, 0, 50), write(1, "k", 2, 10, 60)];
        for last in [1, 2] {
            let mut ops = base();
            ops.push(read(2, "k", Some(last), 70, 80));
            assert_linearizable(ops);
        }
        // ... but all readers must agree on one order.
        let mut ops = base();
        ops.push(read(2, "k", Some(1), 70, 80));
        ops.push(read(3, "k", Some(2), 90, 95));
        assert_violation(ops);
    }

    #[test]
    fn cas_chains() {
        assert_linearizable(vec![
            cas(0, "k", None, 1, true, 0, 10),
            cas(1, "k", Some(1), 2, true, 20, 30),
            cas(2, "k", Some(1), 3, false, 40, 50),
            cas(3, "k", Some(2), 3, true, 60, 70),
            read(4, "k", Some(3), 80, 90),
        ]);
        // Concurrent CASes from the same expected value: only one may win.
        assert_linearizable(vec![
            cas(0, "k", None, 1, true, 0, 100),
            cas(1, "k", None, 2, false, 10, 90),
            read(2, "k", Some(1), 110, 120),
        ]);
        assert_violation(vec![cas(0, "k", None, 1, true, 0, 100), cas(1, "k", None, 2, true, 10, 90)]);
        // A CAS that swapped from a value nobody wrote.
        assert_violation(vec![cas(0, "k", Some(1), 2, true, 0, 10)]);
        // A CAS that failed although the value was what it expected.
        assert_violation(vec![write(0, "k", 5, 0, 10), cas(1, "k", Some(5), 6, false, 20, 30)]);
        // A failed CAS whose only explanation is a concurrent write.
        assert_linearizable(vec![
            write(0, "k", 5, 0, 10),
            write(1, "k", 7, 15, 40),
            cas(2, "k", Some(5), 6, false, 20, 30),
            read(3, "k", Some(7), 50, 60),
        ]);
    }

    #[test]
    fn unknown_write_later_read_is_accepted() {
        assert_linearizable(vec![
            write(0, "k", 1, 0, 10),
            unknown(1, "k", OpKind::Write(2), 20),
            read(2, "k", Some(2), 1_000, 1_010),
        ]);
    }

    #[test]
    fn unknown_write_never_observed_is_accepted() {
        assert_linearizable(vec![
            write(0, "k", 1, 0, 10),
            unknown(1, "k", OpKind::Write(2), 20),
            read(2, "k", Some(1), 1_000, 1_010),
        ]);
    }

    #[test]
    fn unknown_write_takes_effect_at_most_once() {
        // Once the unknown write was observed, it cannot be undone.
        assert_violation(vec![
            write(0, "k", 1, 0, 10),
            unknown(1, "k", OpKind::Write(2), 20),
            read(2, "k", Some(2), 30, 40),
            read(3, "k", Some(1), 50, 60),
        ]);
    }

    #[test]
    fn unknown_write_cannot_take_effect_before_invocation() {
        assert_violation(vec![read(0, "k", Some(2), 0, 10), unknown(1, "k", OpKind::Write(2), 20)]);
    }

    #[test]
    fn unknown_cas_may_or_may_not_swap() {
        let ops = |seen| {
            vec![
                write(0, "k", 1, 0, 10),
                unknown(1, "k", OpKind::Cas { expect: Some(1), new: 2 }, 20),
                read(2, "k", Some(seen), 30, 40),
            ]
        };
        assert_linearizable(ops(1));
        assert_linearizable(ops(2));
        // It can only swap from its expected value.
        assert_violation(vec![
            write(0, "k", 3, 0, 10),
            unknown(1, "k", OpKind::Cas { expect: Some(1), new: 2 }, 20),
            read(2, "k", Some(2), 30, 40),
        ]);
    }

    #[test]
    fn unknown_reads_carry_no_information() {
        assert_linearizable(vec![write(0, "k", 1, 0, 10), unknown(1, "k", OpKind::Read, 20)]);
    }

    #[test]
    fn failed_write_later_read_is_rejected() {
        let violation = assert_violation(vec![
            write(0, "k", 1, 0, 10),
            fail(1, "k", OpKind::Write(2), 20, 30),
            read(2, "k", Some(2), 40, 50),
        ]);
        assert!(
            !violation.candidates.contains(&1) && !violation.prefix.iter().any(|s| s.op == 1),
            "failed operations take no part in the search: {violation}"
        );
    }

    #[test]
    fn keys_are_checked_independently() {
        let report = check(vec![
            write(0, "a", 1, 0, 10),
            read(1, "a", Some(1), 20, 30),
            write(2, "b", 1, 0, 10),
            read(3, "b", Some(1), 20, 30),
            // Across keys nothing constrains values: "c" reads a value
            // written to "a", which is a violation on "c" only.
            read(4, "c", Some(1), 40, 50),
        ]);
        assert_eq!(report.keys_checked, 3);
        assert_eq!(report.ops_checked, 5);
        assert_eq!(report.violations.len(), 1);
        assert_eq!(report.violations[0].key, "c");
    }

    #[test]
    fn malformed_histories_are_errors() {
        let mut bad = read(0, "k", None, 10, 20);
        bad.outcome = Outcome::Ok(Ret::Cas(true));
        assert_eq!(
            check_history(&History::new(vec![bad]), &CheckOptions::default()),
            Err(HistoryError::ResultMismatch { op: 0 })
        );
    }

    #[test]
    fn exhausted_budget_is_inconclusive_not_a_verdict() {
        let ops = vec![write(0, "k", 1, 0, 100), write(1, "k", 2, 0, 100), read(2, "k", Some(2), 110, 120)];
        let opts = CheckOptions { max_steps_per_key: 1, ..CheckOptions::default() };
        let report = check_history(&History::new(ops.clone()), &opts).expect("well formed");
        assert_eq!(report.verdict(), Verdict::Inconclusive, "{report}");
        assert!(!report.valid);
        assert_eq!(report.inconclusive.len(), 1);
        assert_eq!(report.inconclusive[0].key, "k");
        assert_eq!(report.inconclusive[0].ops, 3);
        // With the default budget the same history is decided.
        assert_linearizable(ops);

        // The memory bound applies too.
        let opts = CheckOptions { max_memo_bytes_per_key: 0, ..CheckOptions::default() };
        let report = check_history(&History::new(vec![write(0, "k", 1, 0, 10), write(1, "k", 2, 20, 30)]), &opts)
            .expect("well formed");
        assert_eq!(report.verdict(), Verdict::Inconclusive, "{report}");
    }

    #[test]
    fn pruning_drops_only_unobservable_unknown_writes() {
        let ops = vec![
            write(0, "k", 1, 0, 10),
            unknown(1, "k", OpKind::Write(2), 20),
            unknown(2, "k", OpKind::Write(3), 20),
            read(3, "k", Some(3), 40, 50),
        ];
        assert_eq!(check(ops.clone()).ops_checked, 3, "write(2) is never observed");
        let mut with_failed_cas = ops;
        with_failed_cas.push(cas(4, "k", Some(9), 1, false, 60, 70));
        assert_eq!(
            check(with_failed_cas).ops_checked,
            5,
            "a failed CAS may be explained by any value: nothing is pruned"
        );
    }

    /// Many concurrent unknown writes whose values nobody reads: without
    /// pruning this is exponential, with pruning it is trivial.
    #[test]
    fn many_unobserved_unknown_writes_are_cheap() {
        let mut ops: Vec<Op> = (0..200).map(|i| unknown(i, "k", OpKind::Write(1_000 + i), i)).collect();
        for i in 0..100 {
            let t = 1_000 + 20 * i;
            ops.push(write(200 + 2 * i, "k", i, t, t + 5));
            ops.push(read(201 + 2 * i, "k", Some(i), t + 10, t + 15));
        }
        let report = check(ops);
        assert!(report.valid, "{report}");
        assert_eq!(report.ops_checked, 200);
    }

    /// Our checker against stateright's, on thousands of small random
    /// histories of three clients with three operations each. Unknown
    /// outcomes are only generated as a client's last operation, where
    /// stateright can express them as an invocation that never returned.
    #[test]
    fn agrees_with_stateright_per_client_threads() {
        let mut rng = StdRng::seed_from_u64(0x5eed_0001);
        let mut seen = [0usize; 2];
        for case in 0..3_000 {
            let spec =
                GenSpec { clients: 3, ops_per_client: 3, values: 3, unknown_anywhere: false, ..GenSpec::default() };
            let ops = testgen::random_history(&mut rng, &spec, "k");
            let ours = ours_valid(&ops);
            let theirs = testgen::stateright_valid(&ops, ThreadMode::PerClient);
            assert_eq!(
                ours,
                theirs,
                "case {case}: we say {ours}, stateright says {theirs}\n{}",
                History::new(ops.clone()).to_jsonl()
            );
            seen[usize::from(ours)] += 1;
        }
        assert!(seen[0] > 300 && seen[1] > 300, "{seen:?}: generator lacks variety");
    }

    /// Same, with one stateright thread per operation, so that unknown
    /// outcomes can appear anywhere (a client that timed out moves on while
    /// its request may still take effect). Kept small: stateright's search
    /// is unmemoized and per-operation threads remove its per-thread order.
    #[test]
    fn agrees_with_stateright_unknowns_anywhere() {
        let mut rng = StdRng::seed_from_u64(0x5eed_0002);
        let mut seen = [0usize; 2];
        for case in 0..3_000 {
            let spec = GenSpec {
                clients: 3,
                ops_per_client: 2,
                values: if case % 2 == 0 { 2 } else { 5 },
                unknown_anywhere: true,
                ..GenSpec::default()
            };
            let ops = testgen::random_history(&mut rng, &spec, "k");
            let ours = ours_valid(&ops);
            let theirs = testgen::stateright_valid(&ops, ThreadMode::PerOp);
            assert_eq!(
                ours,
                theirs,
                "case {case}: we say {ours}, stateright says {theirs}\n{}",
                History::new(ops.clone()).to_jsonl()
            );
            seen[usize::from(ours)] += 1;
        }
        assert!(seen[0] > 300 && seen[1] > 300, "{seen:?}: generator lacks variety");
    }

    /// Splitting by key must not change verdicts: two independent keys are
    /// jointly linearizable iff each is, according to stateright.
    #[test]
    fn agrees_with_stateright_across_keys() {
        let mut rng = StdRng::seed_from_u64(0x5eed_0003);
        let spec = GenSpec::default();
        for case in 0..500 {
            let a = testgen::random_history(&mut rng, &spec, "a");
            let mut b = testgen::random_history(&mut rng, &spec, "b");
            let expected = testgen::stateright_valid(&a, ThreadMode::PerClient)
                && testgen::stateright_valid(&b, ThreadMode::PerClient);
            for op in &mut b {
                op.id += 1_000;
            }
            let mut ops = a;
            ops.extend(b);
            assert_eq!(ours_valid(&ops), expected, "case {case}");
        }
    }

    /// The reductions must never change a verdict. Larger histories than
    /// stateright can handle, with many unknowns; the unreduced search is
    /// the reference. Wider value ranges leave more values unobserved.
    #[test]
    fn reductions_preserve_verdicts() {
        let mut rng = StdRng::seed_from_u64(0x5eed_0004);
        let (mut pruned, mut symmetric) = (0, 0);
        let mut seen = [0usize; 2];
        for case in 0..3_000 {
            let spec = GenSpec {
                clients: 4,
                ops_per_client: 4,
                values: [3, 6, 12][case % 3],
                unknown_anywhere: true,
                unknown_rate: 0.3,
                cas_rate: [0.0, 0.3, 0.5][(case / 3) % 3],
                ..GenSpec::default()
            };
            let history = History::new(testgen::random_history(&mut rng, &spec, "k"));
            let with = check_history(&history, &CheckOptions::default()).expect("well formed");
            let unreduced = CheckOptions { reductions: false, ..CheckOptions::default() };
            let without = check_history(&history, &unreduced).expect("well formed");
            assert_ne!(with.verdict(), Verdict::Inconclusive);
            assert_eq!(with.verdict(), without.verdict(), "case {case}\n{}", history.to_jsonl());
            seen[usize::from(with.valid)] += 1;
            if with.ops_checked < without.ops_checked {
                pruned += 1;
            }
            // Count histories where a symmetry class has several members,
            // i.e. where the symmetry reduction actually restricts choices.
            let refs: Vec<&Op> = history.ops.iter().collect();
            let (calls, classes) = prepare(&refs, &CheckOptions::default()).expect("well formed");
            let mut sizes = vec![0; classes];
            for class in calls.iter().filter_map(|c| c.class) {
                sizes[class] += 1;
            }
            if sizes.iter().any(|&n| n > 1) {
                symmetric += 1;
            }
        }
        assert!(pruned > 100, "pruning exercised only {pruned} times");
        assert!(symmetric > 100, "symmetry exercised only {symmetric} times");
        assert!(seen[0] > 200 && seen[1] > 200, "{seen:?}: generator lacks variety");
    }

    /// The symmetry reduction offers the *earliest* unused unknown write: a
    /// later one may be invoked too late to explain a failed CAS.
    #[test]
    fn symmetry_prefers_the_earliest_unknown_write() {
        assert_linearizable(vec![
            unknown(0, "k", OpKind::Write(100), 0),
            unknown(1, "k", OpKind::Write(200), 100),
            write(2, "k", 5, 10, 20),
            // Only the unknown write(100) can make the value differ from 5.
            cas(3, "k", Some(5), 7, false, 30, 40),
        ]);
    }

    /// Unknown operations with different preconditions are not
    /// interchangeable: an unknown CAS that can never swap must not hide an
    /// unknown write invoked after it.
    #[test]
    fn symmetry_respects_preconditions() {
        assert_linearizable(vec![
            unknown(0, "k", OpKind::Cas { expect: Some(9), new: 100 }, 0),
            unknown(1, "k", OpKind::Write(200), 1),
            write(2, "k", 5, 10, 20),
            cas(3, "k", Some(5), 7, false, 30, 40),
        ]);
    }

    /// Definite operations storing unobserved values are abstracted but not
    /// symmetric: their deadlines differ, so their order matters.
    #[test]
    fn definite_writes_of_unobserved_values_keep_their_order() {
        assert_linearizable(vec![
            write(0, "k", 100, 0, 100),
            write(1, "k", 200, 10, 20),
            write(2, "k", 3, 25, 30),
            // Needs write(100) after write(3), hence after write(200).
            cas(3, "k", Some(3), 8, false, 40, 50),
        ]);
    }

    /// Unknown writes of values nobody read, with a failed CAS (which rules
    /// out pruning): without the symmetry reduction the search would try
    /// every subset of them.
    #[test]
    fn many_unknown_writes_with_a_failed_cas_are_tractable() {
        let history = |last_read| {
            let mut ops: Vec<Op> = (0..30).map(|i| unknown(i, "k", OpKind::Write(100 + i), i)).collect();
            ops.push(write(30, "k", 1, 40, 50));
            ops.push(cas(31, "k", Some(5), 6, false, 60, 70));
            ops.push(write(32, "k", 2, 80, 90));
            ops.push(read(33, "k", Some(last_read), 100, 110));
            History::new(ops)
        };
        let budget = CheckOptions { max_steps_per_key: 100_000, ..CheckOptions::default() };
        let good = check_history(&history(2), &budget).expect("well formed");
        assert!(good.valid, "{good}");
        let bad = check_history(&history(1), &budget).expect("well formed");
        assert_eq!(bad.verdict(), Verdict::NotLinearizable, "{bad}");
        assert!(bad.steps < 10_000, "{} steps", bad.steps);
        assert_eq!(bad.violations[0].stuck, Some(33));

        let unreduced = CheckOptions { reductions: false, ..budget };
        let report = check_history(&history(1), &unreduced).expect("well formed");
        assert_eq!(report.verdict(), Verdict::Inconclusive, "{report}");
    }

    fn ours_valid(ops: &[Op]) -> bool {
        let report = check_history(&History::new(ops.to_vec()), &CheckOptions::default()).expect("well formed");
        assert_ne!(report.verdict(), Verdict::Inconclusive, "{report}");
        report.valid
    }

    /// 5 clients x 200 operations over 3 keys, from a real sequential
    /// execution with random overlapping intervals (so linearizable by
    /// construction), including failed and unknown operations.
    #[test]
    fn large_linearizable_history_is_fast() {
        let mut rng = StdRng::seed_from_u64(0x5eed_0005);
        let history = History::new(testgen::sequential_workload(&mut rng, 5, 200, &["x", "y", "z"]).ops);
        assert_eq!(history.ops.len(), 1_000);
        let started = Instant::now();
        let report = check_history(&history, &CheckOptions::default()).expect("well formed");
        let elapsed = started.elapsed();
        assert!(report.valid, "{report}");
        assert_eq!(report.keys_checked, 3);
        // Effort is deterministic, so bound it exactly rather than only by
        // wall-clock time, which depends on the machine's load.
        assert!(report.steps < 20 * history.ops.len() as u64, "{} steps for {} ops", report.steps, history.ops.len());
        assert!(elapsed.as_millis() < 1_000, "took {elapsed:?}");
    }

    /// The same workload with one read corrupted must be rejected, and the
    /// explanation must point at the corrupted read.
    #[test]
    fn large_history_with_a_stale_read_is_rejected() {
        let mut rng = StdRng::seed_from_u64(0x5eed_0005);
        let mut history = History::new(testgen::sequential_workload(&mut rng, 5, 200, &["x", "y", "z"]).ops);
        // Corrupt a late read on "y" so it returns a value nobody wrote.
        let target = history
            .ops
            .iter()
            .rposition(|op| op.key == "y" && matches!(op.outcome, Outcome::Ok(Ret::Read(Some(_)))))
            .expect("the workload reads y");
        history.ops[target].outcome = Outcome::Ok(Ret::Read(Some(u64::MAX)));
        let target_id = history.ops[target].id;

        let started = Instant::now();
        let report = check_history(&history, &CheckOptions::default()).expect("well formed");
        let elapsed = started.elapsed();
        assert_eq!(report.verdict(), Verdict::NotLinearizable, "{report}");
        assert_eq!(report.violations.len(), 1);
        let violation = &report.violations[0];
        assert_eq!(violation.key, "y");
        assert!(violation.candidates.contains(&target_id), "{violation}");
        assert!(elapsed.as_millis() < 1_000, "took {elapsed:?}");
    }
}
