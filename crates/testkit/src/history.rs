//! Operation histories of a key-value register store, as observed by clients.
//!
//! A history is the raw material of every correctness check in this crate: a
//! list of [`Op`]s, each recording what a client asked for ([`OpKind`]), on
//! which key, when it asked (`invoke_ns`), when it heard back (`complete_ns`)
//! and what it heard ([`Outcome`]).
//!
//! # Data model
//!
//! Every key is an independent register holding a [`Value`]: `None` while the
//! key is absent (its initial state), `Some(v)` once written. The sequential
//! semantics that the checkers hold the store to are given by [`OpKind::apply`]:
//!
//! | operation              | precondition       | new state | result          |
//! |------------------------|--------------------|-----------|-----------------|
//! | `Read`                 | —                  | unchanged | current value   |
//! | `Write(v)`             | —                  | `Some(v)` | —               |
//! | `Cas { expect, new }`  | current == expect  | `Some(new)` | `true`        |
//! | `Cas { expect, new }`  | current != expect  | unchanged | `false`         |
//!
//! # Outcomes and what they promise
//!
//! * [`Outcome::Ok`]: the operation took effect exactly once, atomically, at
//!   some instant between `invoke_ns` and `complete_ns`, and produced the
//!   recorded [`Ret`]. A CAS that answered `false` is a definite outcome too:
//!   it observed a value different from `expect` and changed nothing.
//! * [`Outcome::Fail`]: the operation definitely did not take effect (for
//!   example the request was rejected before being proposed). Checkers drop it.
//! * [`Outcome::Unknown`]: the client gave up (timeout, connection lost) or
//!   never recorded a completion. The operation may have taken effect at any
//!   instant after `invoke_ns` — including long after the client gave up,
//!   because a request can sit in a leader's log — or not at all. Its
//!   `complete_ns`, if any, is only the time the client stopped waiting and is
//!   never used as a bound.
//!
//! # Recording
//!
//! [`Recorder`] is a cheaply clonable handle (an `Arc` around a mutex-guarded
//! vector) that concurrent clients share. The protocol is:
//!
//! ```
//! use cairn_testkit::history::{OpKind, Recorder};
//!
//! let recorder = Recorder::new();
//! let op = recorder.invoke(1, "k", OpKind::Write(7)); // just before sending
//! // ... send the request, await the response ...
//! op.write_ok(); // just after the response arrived
//! let history = recorder.history();
//! assert_eq!(history.ops.len(), 1);
//! ```
//!
//! Timestamps are nanoseconds since the recorder was created, read from a
//! monotonic clock *while holding the recorder's lock* and forced to be
//! strictly increasing. That makes them a total order consistent with real
//! time: if the record of one event was taken before the record of another,
//! its timestamp is smaller. Because `invoke` is called before the request
//! leaves and the completion is recorded after the response arrived, each
//! recorded interval contains the operation's true interval, so "A completed
//! before B was invoked" in the recorded timestamps implies it in reality —
//! the checkers never derive an ordering the system did not promise.

use std::fmt;
use std::io;

use crate::recorder::{Log, Slot};
use serde::{Deserialize, Serialize};

/// Contents of one register: `None` while the key is absent.
pub type Value = Option<u64>;

/// Identifies an operation within a history; unique per history.
pub type OpId = u64;

/// Identifies the logical client (process, in the literature) that issued an
/// operation. Only used for reporting: the checkers derive ordering from
/// timestamps alone, so a client may keep issuing operations after one of its
/// operations ended with [`Outcome::Unknown`].
pub type ClientId = u64;

/// What a client asked the store to do to one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// Observe the current value.
    Read,
    /// Unconditionally set the value.
    Write(u64),
    /// Set the value to `new` iff the current value equals `expect`
    /// (`expect: None` means "only if the key is absent").
    Cas {
        /// The value the key must hold for the swap to happen.
        expect: Value,
        /// The value stored if the swap happens.
        new: u64,
    },
}

impl OpKind {
    /// The sequential specification: applies this operation to a register
    /// holding `state` and returns the new state and the result a client
    /// would observe.
    pub fn apply(&self, state: Value) -> (Value, Ret) {
        match *self {
            OpKind::Read => (state, Ret::Read(state)),
            OpKind::Write(v) => (Some(v), Ret::Write),
            OpKind::Cas { expect, new } => {
                if state == expect {
                    (Some(new), Ret::Cas(true))
                } else {
                    (state, Ret::Cas(false))
                }
            }
        }
    }

    /// The value this operation stores if it takes effect, or `None` for a
    /// read.
    pub fn written_value(&self) -> Option<u64> {
        match *self {
            OpKind::Read => None,
            OpKind::Write(v) | OpKind::Cas { new: v, .. } => Some(v),
        }
    }

    /// Whether `ret` is a result this kind of operation can produce.
    pub fn matches(&self, ret: &Ret) -> bool {
        matches!(
            (self, ret),
            (OpKind::Read, Ret::Read(_)) | (OpKind::Write(_), Ret::Write) | (OpKind::Cas { .. }, Ret::Cas(_))
        )
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpKind::Read => write!(f, "read"),
            OpKind::Write(v) => write!(f, "write({v})"),
            OpKind::Cas { expect, new } => {
                write!(f, "cas({} -> {new})", DisplayValue(*expect))
            }
        }
    }
}

/// The result of an operation that completed successfully.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ret {
    /// A read observed this value.
    Read(Value),
    /// A write was acknowledged.
    Write,
    /// A compare-and-swap answered whether it swapped.
    Cas(bool),
}

impl fmt::Display for Ret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ret::Read(v) => write!(f, "{}", DisplayValue(*v)),
            Ret::Write => write!(f, "ok"),
            Ret::Cas(swapped) => write!(f, "{swapped}"),
        }
    }
}

/// How an operation ended, from the client's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Took effect once, within the recorded interval, with this result.
    Ok(Ret),
    /// Definitely did not take effect.
    Fail,
    /// May or may not have taken effect, at any time after invocation.
    Unknown,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok(ret) => write!(f, "{ret}"),
            Outcome::Fail => write!(f, "fail"),
            Outcome::Unknown => write!(f, "unknown"),
        }
    }
}

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Op {
    /// Unique within the history.
    pub id: OpId,
    /// The client that issued it (reporting only).
    pub client: ClientId,
    /// The key it addressed.
    pub key: String,
    /// What was asked.
    pub kind: OpKind,
    /// When the client was about to send the request.
    pub invoke_ns: u64,
    /// When the client received the response, or gave up waiting (for
    /// [`Outcome::Unknown`]); `None` if it never recorded either.
    pub complete_ns: Option<u64>,
    /// What the client heard back.
    pub outcome: Outcome,
}

impl Op {
    /// Checks the invariants the checkers rely on (other than id
    /// uniqueness, which is a property of a whole history).
    pub fn validate(&self) -> Result<(), HistoryError> {
        match (self.outcome, self.complete_ns) {
            (Outcome::Ok(ret), _) if !self.kind.matches(&ret) => {
                return Err(HistoryError::ResultMismatch { op: self.id });
            }
            (Outcome::Ok(_) | Outcome::Fail, None) => {
                return Err(HistoryError::MissingCompletion { op: self.id });
            }
            _ => {}
        }
        match self.complete_ns {
            Some(complete) if complete < self.invoke_ns => Err(HistoryError::CompletesBeforeInvoke { op: self.id }),
            _ => Ok(()),
        }
    }

    /// If the operation definitely took effect and stores a value (an
    /// acknowledged write or a CAS that answered `true`), that value.
    pub fn acknowledged_write(&self) -> Option<u64> {
        match (self.kind, self.outcome) {
            (OpKind::Write(v), Outcome::Ok(_)) => Some(v),
            (OpKind::Cas { new, .. }, Outcome::Ok(Ret::Cas(true))) => Some(new),
            _ => None,
        }
    }

    /// If the operation may have stored a value (acknowledged or of unknown
    /// outcome), that value.
    pub fn possible_write(&self) -> Option<u64> {
        match self.outcome {
            Outcome::Unknown => self.kind.written_value(),
            Outcome::Ok(_) => self.acknowledged_write(),
            Outcome::Fail => None,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "#{} client {} {:?} {} -> {} [{}, ",
            self.id, self.client, self.key, self.kind, self.outcome, self.invoke_ns
        )?;
        match (self.outcome, self.complete_ns) {
            (Outcome::Unknown, _) | (_, None) => write!(f, "inf)"),
            (_, Some(complete)) => write!(f, "{complete}]"),
        }
    }
}

/// Formats a [`Value`] as `absent` or the number.
#[derive(Clone, Copy, Debug)]
pub struct DisplayValue(pub Value);

impl fmt::Display for DisplayValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) => write!(f, "{v}"),
            None => write!(f, "absent"),
        }
    }
}

/// A history that the checkers cannot interpret. These are harness bugs, not
/// properties of the system under test.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HistoryError {
    /// Two operations share an id.
    DuplicateId {
        /// The repeated id.
        op: OpId,
    },
    /// An `Ok` outcome whose result does not fit the operation kind (say, a
    /// read answered with `Ret::Cas`).
    ResultMismatch {
        /// The offending operation.
        op: OpId,
    },
    /// An `Ok` or `Fail` outcome without a completion time.
    MissingCompletion {
        /// The offending operation.
        op: OpId,
    },
    /// `complete_ns < invoke_ns`.
    CompletesBeforeInvoke {
        /// The offending operation.
        op: OpId,
    },
    /// A timestamp or id is too large to add the synthetic final reads after
    /// it.
    Overflow,
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryError::DuplicateId { op } => write!(f, "duplicate operation id #{op}"),
            HistoryError::ResultMismatch { op } => {
                write!(f, "operation #{op} has a result of the wrong kind")
            }
            HistoryError::MissingCompletion { op } => {
                write!(f, "operation #{op} is Ok or Fail but has no completion time")
            }
            HistoryError::CompletesBeforeInvoke { op } => {
                write!(f, "operation #{op} completes before it was invoked")
            }
            HistoryError::Overflow => write!(f, "timestamp or operation id overflow"),
        }
    }
}

impl std::error::Error for HistoryError {}

/// A complete record of a workload: every operation, in the order they were
/// invoked (when produced by a [`Recorder`]; the checkers do not rely on the
/// order).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// The operations.
    pub ops: Vec<Op>,
}

impl History {
    /// Wraps a list of operations.
    pub fn new(ops: Vec<Op>) -> Self {
        History { ops }
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

    /// Writes one JSON object per operation, one per line.
    pub fn write_jsonl<W: io::Write>(&self, mut out: W) -> io::Result<()> {
        for op in &self.ops {
            serde_json::to_writer(&mut out, op)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    }

    /// The JSON-lines form as a string.
    pub fn to_jsonl(&self) -> String {
        let mut out = Vec::new();
        // Writing into a Vec cannot fail, and every field serializes.
        if self.write_jsonl(&mut out).is_err() {
            unreachable!("serializing an Op into memory cannot fail");
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Parses the form written by [`History::write_jsonl`]; blank lines are
    /// ignored.
    pub fn from_jsonl(text: &str) -> Result<Self, serde_json::Error> {
        let ops = text
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<Vec<Op>, _>>()?;
        Ok(History { ops })
    }
}

/// Shared, thread-safe history recorder. Clone it into every client task.
#[derive(Clone)]
pub struct Recorder {
    log: Log<Op>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorder").field("ops", &self.log.len()).finish()
    }
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Self {
        Recorder { log: Log::new() }
    }

    /// Records that `client` is about to send `kind` on `key`. Call it
    /// *before* the request leaves, and complete the returned handle after
    /// the response arrived. A handle dropped without completion leaves the
    /// operation [`Outcome::Unknown`] with no completion time.
    pub fn invoke(&self, client: ClientId, key: impl Into<String>, kind: OpKind) -> OpHandle {
        let key = key.into();
        let slot = self.log.invoke(|index, invoke_ns| Op {
            id: index as OpId,
            client,
            key,
            kind,
            invoke_ns,
            complete_ns: None,
            outcome: Outcome::Unknown,
        });
        OpHandle { slot }
    }

    /// A snapshot of everything recorded so far. Operations still in flight
    /// appear as [`Outcome::Unknown`].
    pub fn history(&self) -> History {
        History { ops: self.log.snapshot() }
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

/// An invoked operation awaiting its outcome. Completing consumes the handle,
/// so an operation is completed at most once.
#[must_use = "complete the operation with ok/fail/unknown, or it stays Unknown"]
pub struct OpHandle {
    slot: Slot<Op>,
}

impl fmt::Debug for OpHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpHandle").field("id", &self.slot.index()).finish()
    }
}

impl OpHandle {
    /// The id the operation has in the history.
    pub fn id(&self) -> OpId {
        self.slot.index() as OpId
    }

    fn complete(self, outcome: Outcome) {
        self.slot.complete(|op, now| {
            op.complete_ns = Some(now);
            op.outcome = outcome;
        });
    }

    /// The operation took effect with result `ret`. A result that does not
    /// match the operation kind is recorded as is and later rejected by
    /// [`History::validate`]; prefer the typed helpers below.
    pub fn ok(self, ret: Ret) {
        self.complete(Outcome::Ok(ret));
    }

    /// A read observed `value`.
    pub fn read_ok(self, value: Value) {
        self.ok(Ret::Read(value));
    }

    /// A write was acknowledged.
    pub fn write_ok(self) {
        self.ok(Ret::Write);
    }

    /// A compare-and-swap answered `swapped`.
    pub fn cas_ok(self, swapped: bool) {
        self.ok(Ret::Cas(swapped));
    }

    /// The operation definitely did not take effect. Only use this when the
    /// store guarantees it (e.g. a request rejected before being proposed);
    /// when in doubt use [`OpHandle::unknown`], which is always sound.
    pub fn fail(self) {
        self.complete(Outcome::Fail);
    }

    /// The client stopped waiting without learning the outcome.
    pub fn unknown(self) {
        self.complete(Outcome::Unknown);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_assigns_ids_and_strictly_increasing_times() {
        let recorder = Recorder::new();
        let a = recorder.invoke(1, "x", OpKind::Write(1));
        let b = recorder.invoke(2, "x", OpKind::Read);
        assert_eq!((a.id(), b.id()), (0, 1));
        b.read_ok(None);
        a.write_ok();
        let c = recorder.invoke(3, "y", OpKind::Cas { expect: None, new: 4 });
        c.unknown();
        let _dropped = recorder.invoke(3, "y", OpKind::Read);
        drop(_dropped);

        let history = recorder.history();
        history.validate().expect("recorded history is well formed");
        let ops = &history.ops;
        assert_eq!(ops.len(), 4);
        // Event order: a.inv < b.inv < b.ret < a.ret < c.inv < c.ret < d.inv.
        let times = [
            ops[0].invoke_ns,
            ops[1].invoke_ns,
            ops[1].complete_ns.unwrap(),
            ops[0].complete_ns.unwrap(),
            ops[2].invoke_ns,
            ops[2].complete_ns.unwrap(),
            ops[3].invoke_ns,
        ];
        assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
        assert_eq!(ops[0].outcome, Outcome::Ok(Ret::Write));
        assert_eq!(ops[1].outcome, Outcome::Ok(Ret::Read(None)));
        assert_eq!(ops[2].outcome, Outcome::Unknown);
        assert_eq!(ops[3].outcome, Outcome::Unknown);
        assert_eq!(ops[3].complete_ns, None);
    }

    #[test]
    fn recorder_is_shareable_across_threads() {
        let recorder = Recorder::new();
        std::thread::scope(|scope| {
            for client in 0..4 {
                let recorder = recorder.clone();
                scope.spawn(move || {
                    for i in 0..100 {
                        recorder.invoke(client, "k", OpKind::Write(client * 1000 + i)).write_ok();
                    }
                });
            }
        });
        let history = recorder.history();
        assert_eq!(history.ops.len(), 400);
        history.validate().expect("well formed");
    }

    #[test]
    fn jsonl_round_trip() {
        let recorder = Recorder::new();
        recorder.invoke(1, "a", OpKind::Write(5)).write_ok();
        recorder.invoke(2, "a", OpKind::Read).read_ok(Some(5));
        recorder.invoke(3, "b", OpKind::Cas { expect: None, new: 1 }).cas_ok(true);
        recorder.invoke(4, "b", OpKind::Write(2)).fail();
        let _ = recorder.invoke(5, "b", OpKind::Read);
        let history = recorder.history();
        let text = history.to_jsonl();
        assert_eq!(text.lines().count(), 5);
        assert_eq!(History::from_jsonl(&text).expect("parses"), history);
        // The format is meant to be read by people too; pin one line.
        let first = text.lines().next().unwrap_or_default();
        assert!(first.contains(r#""kind":{"write":5}"#) && first.contains(r#""outcome":{"ok":"write"}"#), "{first}");
    }

    #[test]
    fn validate_rejects_malformed_ops() {
        let op = Op {
            id: 1,
            client: 0,
            key: "k".into(),
            kind: OpKind::Read,
            invoke_ns: 10,
            complete_ns: Some(20),
            outcome: Outcome::Ok(Ret::Write),
        };
        assert_eq!(op.validate(), Err(HistoryError::ResultMismatch { op: 1 }));
        let missing = Op { complete_ns: None, outcome: Outcome::Fail, ..op.clone() };
        assert_eq!(missing.validate(), Err(HistoryError::MissingCompletion { op: 1 }));
        let backwards = Op { complete_ns: Some(5), outcome: Outcome::Ok(Ret::Read(None)), ..op.clone() };
        assert_eq!(backwards.validate(), Err(HistoryError::CompletesBeforeInvoke { op: 1 }));
        let good = Op { outcome: Outcome::Ok(Ret::Read(None)), ..op };
        let dup = History::new(vec![good.clone(), good]);
        assert_eq!(dup.validate(), Err(HistoryError::DuplicateId { op: 1 }));
    }

    #[test]
    fn sequential_semantics() {
        let cas = |expect, new| OpKind::Cas { expect, new };
        assert_eq!(OpKind::Read.apply(None), (None, Ret::Read(None)));
        assert_eq!(OpKind::Write(3).apply(None), (Some(3), Ret::Write));
        assert_eq!(cas(None, 1).apply(None), (Some(1), Ret::Cas(true)));
        assert_eq!(cas(None, 1).apply(Some(2)), (Some(2), Ret::Cas(false)));
        assert_eq!(cas(Some(2), 5).apply(Some(2)), (Some(5), Ret::Cas(true)));
        assert_eq!(cas(Some(2), 5).apply(None), (None, Ret::Cas(false)));
    }
}
