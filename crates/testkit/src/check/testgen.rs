//! Test-only helpers: terse constructors for hand-written histories, random
//! history generators, and the bridge to stateright's linearizability tester
//! used as an independent oracle.

use std::collections::BTreeMap;

use rand::Rng;
use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};

use crate::history::{Op, OpId, OpKind, Outcome, Ret, Value};

fn op(id: OpId, key: &str, kind: OpKind, invoke: u64, complete: Option<u64>, outcome: Outcome) -> Op {
    Op { id, client: id, key: key.to_owned(), kind, invoke_ns: invoke, complete_ns: complete, outcome }
}

/// An acknowledged read that returned `seen`.
pub fn read(id: OpId, key: &str, seen: Value, invoke: u64, complete: u64) -> Op {
    op(id, key, OpKind::Read, invoke, Some(complete), Outcome::Ok(Ret::Read(seen)))
}

/// An acknowledged write.
pub fn write(id: OpId, key: &str, value: u64, invoke: u64, complete: u64) -> Op {
    op(id, key, OpKind::Write(value), invoke, Some(complete), Outcome::Ok(Ret::Write))
}

/// A CAS that answered `swapped`.
#[allow(clippy::too_many_arguments)]
pub fn cas(id: OpId, key: &str, expect: Value, new: u64, swapped: bool, invoke: u64, complete: u64) -> Op {
    op(id, key, OpKind::Cas { expect, new }, invoke, Some(complete), Outcome::Ok(Ret::Cas(swapped)))
}

/// An operation whose outcome is unknown and never recorded completing.
pub fn unknown(id: OpId, key: &str, kind: OpKind, invoke: u64) -> Op {
    op(id, key, kind, invoke, None, Outcome::Unknown)
}

/// An operation that definitely failed.
pub fn fail(id: OpId, key: &str, kind: OpKind, invoke: u64, complete: u64) -> Op {
    op(id, key, kind, invoke, Some(complete), Outcome::Fail)
}

/// Shape of [`random_history`] output.
#[derive(Clone, Debug)]
pub struct GenSpec {
    pub clients: u64,
    pub ops_per_client: usize,
    /// Values are drawn from `1..=values`; small ranges make collisions (and
    /// so ambiguous histories) common.
    pub values: u64,
    /// Whether any operation may end Unknown (the client moves on after a
    /// timeout), or only each client's last one.
    pub unknown_anywhere: bool,
    pub unknown_rate: f64,
    pub fail_rate: f64,
    pub cas_rate: f64,
    pub read_rate: f64,
    /// Probability of corrupting one result after generating a correct one.
    pub corrupt_rate: f64,
}

impl Default for GenSpec {
    fn default() -> Self {
        GenSpec {
            clients: 3,
            ops_per_client: 3,
            values: 3,
            unknown_anywhere: false,
            unknown_rate: 0.15,
            fail_rate: 0.05,
            cas_rate: 0.3,
            read_rate: 0.4,
            corrupt_rate: 0.5,
        }
    }
}

fn random_value(rng: &mut impl Rng, values: u64) -> u64 {
    rng.random_range(1..=values)
}

/// `None` about as often as any one value.
fn random_register(rng: &mut impl Rng, values: u64) -> Value {
    let v = rng.random_range(0..=values);
    (v > 0).then_some(v)
}

fn random_kind(rng: &mut impl Rng, spec: &GenSpec) -> OpKind {
    let x: f64 = rng.random();
    if x < spec.read_rate {
        OpKind::Read
    } else if x < spec.read_rate + spec.cas_rate {
        OpKind::Cas { expect: random_register(rng, spec.values), new: random_value(rng, spec.values) }
    } else {
        OpKind::Write(random_value(rng, spec.values))
    }
}

/// A random single-key history: clients issue operations one after
/// another, their events interleave at random (unique timestamps, multiples
/// of 10). Results come from executing the operations that took effect in
/// the order of random linearization points inside their intervals, so the
/// history starts out linearizable; then, with `corrupt_rate`, one result
/// is replaced by a random one, which usually (not always) breaks it.
pub fn random_history(rng: &mut impl Rng, spec: &GenSpec, key: &str) -> Vec<Op> {
    struct Draft {
        client: u64,
        kind: OpKind,
        outcome: Outcome,
        /// Whether a completion (or give-up) time is recorded.
        records_end: bool,
        invoke: u64,
        end: u64,
    }
    // Decide every operation's kind and outcome class up front.
    let mut per_client: Vec<Vec<Draft>> = Vec::new();
    for client in 0..spec.clients {
        let mut drafts = Vec::new();
        for j in 0..spec.ops_per_client {
            let last = j + 1 == spec.ops_per_client;
            let outcome = if rng.random_bool(spec.fail_rate) {
                Outcome::Fail
            } else if (spec.unknown_anywhere || last) && rng.random_bool(spec.unknown_rate) {
                Outcome::Unknown
            } else {
                Outcome::Ok(Ret::Write) // placeholder, computed below
            };
            drafts.push(Draft {
                client,
                kind: random_kind(rng, spec),
                records_end: outcome != Outcome::Unknown || rng.random_bool(0.5),
                outcome,
                invoke: 0,
                end: 0,
            });
        }
        per_client.push(drafts);
    }

    // Interleave: every operation has an invoke and an end event, in client
    // order; pick the next event from a random client.
    let mut cursor: Vec<usize> = vec![0; per_client.len()]; // events consumed
    let total_events: usize = per_client.iter().map(|d| 2 * d.len()).sum();
    for position in 0..total_events {
        let live: Vec<usize> = (0..per_client.len()).filter(|&c| cursor[c] < 2 * per_client[c].len()).collect();
        let c = live[rng.random_range(0..live.len())];
        let t = 10 * (position as u64 + 1);
        let draft = &mut per_client[c][cursor[c] / 2];
        if cursor[c].is_multiple_of(2) {
            draft.invoke = t;
        } else {
            draft.end = t;
        }
        cursor[c] += 1;
    }
    let horizon = 10 * (total_events as u64 + 2);

    let mut drafts: Vec<Draft> = per_client.into_iter().flatten().collect();
    drafts.sort_by_key(|d| d.invoke);

    // Ground truth: which operations took effect, and where.
    let mut points: Vec<(u64, usize)> = Vec::new();
    for (i, d) in drafts.iter().enumerate() {
        let point = match d.outcome {
            Outcome::Fail => continue,
            Outcome::Unknown if rng.random_bool(0.5) => continue,
            Outcome::Unknown => rng.random_range(d.invoke + 1..horizon),
            Outcome::Ok(_) => rng.random_range(d.invoke + 1..d.end),
        };
        points.push((point, i));
    }
    points.sort_unstable();
    let mut state: Value = None;
    for &(_, i) in &points {
        let (next, ret) = drafts[i].kind.apply(state);
        state = next;
        if let Outcome::Ok(_) = drafts[i].outcome {
            drafts[i].outcome = Outcome::Ok(ret);
        }
    }

    if rng.random_bool(spec.corrupt_rate) {
        let corruptible: Vec<usize> = (0..drafts.len())
            .filter(|&i| matches!(drafts[i].outcome, Outcome::Ok(Ret::Read(_)) | Outcome::Ok(Ret::Cas(_))))
            .collect();
        if !corruptible.is_empty() {
            let i = corruptible[rng.random_range(0..corruptible.len())];
            drafts[i].outcome = match drafts[i].outcome {
                Outcome::Ok(Ret::Cas(swapped)) => Outcome::Ok(Ret::Cas(!swapped)),
                _ => Outcome::Ok(Ret::Read(random_register(rng, spec.values))),
            };
        }
    }

    drafts
        .into_iter()
        .enumerate()
        .map(|(i, d)| Op {
            id: i as OpId,
            client: d.client,
            key: key.to_owned(),
            kind: d.kind,
            invoke_ns: d.invoke,
            complete_ns: d.records_end.then_some(d.end),
            outcome: d.outcome,
        })
        .collect()
}

/// A larger, realistic workload: `clients` each issue `ops_per_client`
/// operations back to back with random latencies (so up to `clients`
/// operations overlap), over `keys`, with unique written values, some failed
/// and some unknown operations. Results come from a real sequential
/// execution in the order of random linearization points, so the history is
/// linearizable by construction.
pub fn sequential_workload(rng: &mut impl Rng, clients: u64, ops_per_client: usize, keys: &[&str]) -> Workload {
    let mut ops = Vec::new();
    let mut next_value = 1;
    // (linearization point, op index), for operations that took effect.
    let mut points: Vec<(u64, usize)> = Vec::new();
    let mut written: Vec<Vec<u64>> = vec![Vec::new(); keys.len()];
    for client in 0..clients {
        let mut now = rng.random_range(0..100);
        for _ in 0..ops_per_client {
            let k = rng.random_range(0..keys.len());
            let x: f64 = rng.random();
            let kind = if x < 0.5 {
                OpKind::Read
            } else if x < 0.8 {
                next_value += 1;
                written[k].push(next_value);
                OpKind::Write(next_value)
            } else {
                next_value += 1;
                // Expect a value this key plausibly holds, so that a fair
                // share of CASes swap.
                let expect = if written[k].is_empty() || rng.random_bool(0.1) {
                    None
                } else {
                    let recent = written[k].len().saturating_sub(3);
                    Some(written[k][rng.random_range(recent..written[k].len())])
                };
                OpKind::Cas { expect, new: next_value }
            };
            let invoke = now + rng.random_range(1..50);
            let complete = invoke + rng.random_range(10..300);
            now = complete;
            let y: f64 = rng.random();
            let outcome = if y < 0.03 {
                Outcome::Fail
            } else if y < 0.08 {
                Outcome::Unknown
            } else {
                Outcome::Ok(Ret::Write) // placeholder
            };
            let point = match outcome {
                Outcome::Fail => None,
                // A timed-out request may still be applied much later.
                Outcome::Unknown => rng.random_bool(0.5).then(|| rng.random_range(invoke + 1..invoke + 2_000)),
                Outcome::Ok(_) => Some(rng.random_range(invoke + 1..complete)),
            };
            if let Some(point) = point {
                points.push((point, ops.len()));
            }
            ops.push(Op {
                id: 0, // assigned below
                client,
                key: keys[k].to_owned(),
                kind,
                invoke_ns: invoke,
                complete_ns: Some(complete),
                outcome,
            });
        }
    }
    points.sort_unstable();
    let mut final_state: BTreeMap<String, Value> = keys.iter().map(|k| ((*k).to_owned(), None)).collect();
    for &(_, i) in &points {
        if let Some(value) = final_state.get_mut(&ops[i].key) {
            let (next, ret) = ops[i].kind.apply(*value);
            *value = next;
            if let Outcome::Ok(_) = ops[i].outcome {
                ops[i].outcome = Outcome::Ok(ret);
            }
        }
    }
    ops.sort_by_key(|op| op.invoke_ns);
    for (i, op) in ops.iter_mut().enumerate() {
        op.id = i as OpId;
    }
    Workload { ops, final_state }
}

/// Output of [`sequential_workload`].
pub struct Workload {
    pub ops: Vec<Op>,
    /// Every key's value after all operations that took effect.
    pub final_state: BTreeMap<String, Value>,
}

/// An independent sequential specification of the register with CAS, for
/// stateright; deliberately not sharing code with `OpKind::apply`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct CasRegister(Option<u64>);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RegOp {
    Read,
    Write(u64),
    Cas(Option<u64>, u64),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RegRet {
    Read(Option<u64>),
    Write,
    Cas(bool),
}

impl SequentialSpec for CasRegister {
    type Op = RegOp;
    type Ret = RegRet;

    fn invoke(&mut self, op: &RegOp) -> RegRet {
        match *op {
            RegOp::Read => RegRet::Read(self.0),
            RegOp::Write(v) => {
                self.0 = Some(v);
                RegRet::Write
            }
            RegOp::Cas(expect, new) => {
                let swapped = self.0 == expect;
                if swapped {
                    self.0 = Some(new);
                }
                RegRet::Cas(swapped)
            }
        }
    }
}

/// Which stateright "thread" an operation belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadMode {
    /// The issuing client; requires clients to be sequential and Unknown
    /// operations to be each client's last.
    PerClient,
    /// One thread per operation: any operation may be in flight forever.
    PerOp,
}

/// Replays a single-key history into stateright's `LinearizabilityTester`
/// in real-time order and returns its verdict.
///
/// * Failed operations are left out: they never took effect.
/// * Unknown operations are invoked and never return: stateright then may
///   or may not linearize them, anywhere after their invocation, which is
///   exactly our semantics.
/// * At equal timestamps invocations are replayed before returns, matching
///   our convention that equal timestamps are concurrent.
pub fn stateright_valid(ops: &[Op], mode: ThreadMode) -> bool {
    let mut events: Vec<(u64, bool, usize)> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match op.outcome {
            Outcome::Fail => {}
            Outcome::Unknown => events.push((op.invoke_ns, false, i)),
            Outcome::Ok(_) => {
                events.push((op.invoke_ns, false, i));
                events.push((op.complete_ns.expect("ok ops complete"), true, i));
            }
        }
    }
    events.sort_unstable();
    let mut tester = LinearizabilityTester::new(CasRegister::default());
    for (_, is_return, i) in events {
        let op = &ops[i];
        let thread = match mode {
            ThreadMode::PerClient => op.client,
            ThreadMode::PerOp => op.id,
        };
        if is_return {
            let ret = match op.outcome {
                Outcome::Ok(Ret::Read(v)) => RegRet::Read(v),
                Outcome::Ok(Ret::Write) => RegRet::Write,
                Outcome::Ok(Ret::Cas(swapped)) => RegRet::Cas(swapped),
                _ => unreachable!("only Ok operations return"),
            };
            tester.on_return(thread, ret).expect("well-formed replay");
        } else {
            let reg_op = match op.kind {
                OpKind::Read => RegOp::Read,
                OpKind::Write(v) => RegOp::Write(v),
                OpKind::Cas { expect, new } => RegOp::Cas(expect, new),
            };
            tester.on_invoke(thread, reg_op).expect("well-formed replay");
        }
    }
    tester.is_consistent()
}
