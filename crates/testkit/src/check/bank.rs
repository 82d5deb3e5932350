//! The bank workload and its checker, after Jepsen's `bank` test.
//!
//! # Workload
//!
//! A fixed set of accounts starts with known balances ([`BankModel`]).
//! Clients transfer amounts between two accounts atomically — in cairn: one
//! Txn that compares both accounts' mod_revisions with those of an earlier
//! read and, if they match, puts both new balances; a Txn whose comparison
//! failed changed nothing and is recorded as failed — and read all balances
//! at once — one range read at one revision. When the run is over and the
//! cluster has healed, one more read is taken (the *final read*), invoked
//! after every recorded operation completed or was given up. Operations are
//! recorded in a [`BankHistory`] by a [`BankRecorder`], with the timestamp
//! and outcome discipline of the register history (see [`crate::history`]):
//! `Ok` took effect once within its interval, `Fail` definitely did not take
//! effect, `Unknown` may have taken effect at any instant after its
//! invocation, or not at all. Reads whose outcome is not `Ok` carry no
//! result and are ignored.
//!
//! # What [`check_bank`] checks
//!
//! Every `Ok` read, and the final read, must satisfy:
//!
//! 1. **Accounts**: its accounts are exactly those of the model — none
//!    missing, none extra.
//! 2. **Total**: its balances sum to the model's initial total.
//! 3. **No negative balance**, unless [`BankModel::allow_negative`].
//! 4. **Explainable balances**: each account's balance lies within the range
//!    that the transfers could have produced by the time of the read. For a
//!    read `r` and an account `a`, the transfers that *definitely* preceded
//!    `r` are the `Ok` ones that completed strictly before `r` was invoked;
//!    those that *may* have preceded it are the other non-failed ones invoked
//!    no later than `r` completed (all non-failed ones for the final read).
//!    Then `a`'s balance must lie in
//!    `initial(a) + Σ definite δ(a) + [Σ maybe min(0, δ(a)), Σ maybe max(0, δ(a))]`,
//!    where `δ(a)` is the transfer's effect on `a` (`-amount` if `a` is the
//!    source, `+amount` if the destination, zero otherwise).
//!
//! The report is valid iff every read passes. Check 4 needs the recorded
//! `amount` to be exactly what the transfer moves when it takes effect; it
//! is an interval bound, not a linearizability check (which would be a
//! subset-sum search over the unknown transfers).
//!
//! # Why this is sound, also with unknown outcomes
//!
//! A read takes effect atomically at one instant `p` within its interval and
//! returns the balances at `p`; each transfer that takes effect moves its
//! amount atomically, preserving the total, and the harness never lets a
//! balance go negative (a transfer that would overdraw is not sent, or its
//! Txn fails). So checks 1–3 hold for every correct read, whatever the
//! outcomes of the transfers: they never consult them. For check 4, the
//! balance at `p` is the initial balance plus the effects of exactly the
//! transfers that took effect before `p`. That set contains every `Ok`
//! transfer that completed before `r` was invoked (it took effect before it
//! completed, hence before `p`); it contains no failed transfer and no
//! transfer invoked after `r` completed (a request takes effect only after
//! it was sent, hence after `p`); anything else — in particular any
//! `Unknown` transfer invoked early enough — may or may not be in it. The
//! checked range is the sum of the definite effects plus the widest range
//! any choice of the uncertain ones yields, so it always contains the true
//! balance. Comparisons between intervals are strict, so equal timestamps
//! never order anything.
//!
//! The checks assume the accounts hold their initial balances before the
//! first recorded operation and that only recorded transfers change them.
//!
//! Counts in [`BankReport`] are complete; the list of bad reads and the
//! lists within a [`BadRead`] are truncated to [`MAX_LISTED`] entries.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::history::{ClientId, HistoryError, OpId};
use crate::recorder::{Log, Slot};

/// Identifies an account.
pub type Account = u64;

/// An account balance, as read.
pub type Balance = i64;

/// Upper bound on the length of every list in a [`BankReport`]; the counts
/// are never truncated.
pub const MAX_LISTED: usize = 32;

/// What a client asked the bank to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BankOpKind {
    /// Move `amount` from `from` to `to`, atomically.
    Transfer {
        /// The account debited.
        from: Account,
        /// The account credited.
        to: Account,
        /// How much moves.
        amount: u64,
    },
    /// Read every balance at one instant.
    Read,
}

impl fmt::Display for BankOpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BankOpKind::Transfer { from, to, amount } => write!(f, "transfer({amount}: {from} -> {to})"),
            BankOpKind::Read => write!(f, "read"),
        }
    }
}

/// The result of a bank operation that completed successfully.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BankRet {
    /// A transfer took effect.
    Transferred,
    /// A read returned these balances.
    Read(BTreeMap<Account, Balance>),
}

/// How a bank operation ended, from the client's point of view; the same
/// promises as [`crate::history::Outcome`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BankOutcome {
    /// Took effect once, within the recorded interval, with this result.
    Ok(BankRet),
    /// Definitely did not take effect.
    Fail,
    /// May or may not have taken effect, at any time after invocation.
    Unknown,
}

/// One operation of a bank history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BankOp {
    /// Unique within the history.
    pub id: OpId,
    /// The client that issued it (reporting only).
    pub client: ClientId,
    /// What was asked.
    pub kind: BankOpKind,
    /// When the client was about to send the request.
    pub invoke_ns: u64,
    /// When the client received the response, or gave up waiting (for
    /// [`BankOutcome::Unknown`]); `None` if it never recorded either.
    pub complete_ns: Option<u64>,
    /// What the client heard back.
    pub outcome: BankOutcome,
}

impl BankOp {
    /// Checks the invariants the checker relies on (other than id
    /// uniqueness): `Ok` results fit the kind, definite outcomes have a
    /// completion time, and nothing completes before it was invoked.
    pub fn validate(&self) -> Result<(), HistoryError> {
        match (&self.outcome, self.complete_ns) {
            (BankOutcome::Ok(ret), _)
                if !matches!(
                    (self.kind, ret),
                    (BankOpKind::Transfer { .. }, BankRet::Transferred) | (BankOpKind::Read, BankRet::Read(_))
                ) =>
            {
                return Err(HistoryError::ResultMismatch { op: self.id });
            }
            (BankOutcome::Ok(_) | BankOutcome::Fail, None) => {
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

/// A recorded bank workload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BankHistory {
    /// The operations, in invocation order when produced by a
    /// [`BankRecorder`] (the checker does not rely on the order).
    pub ops: Vec<BankOp>,
}

impl BankHistory {
    /// Wraps a list of operations.
    pub fn new(ops: Vec<BankOp>) -> Self {
        BankHistory { ops }
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

/// Shared, thread-safe recorder of a bank workload; clone it into every
/// client. Same protocol and timestamp guarantees as
/// [`crate::history::Recorder`]: invoke just before sending, complete the
/// handle just after the response arrived.
///
/// ```
/// use std::collections::BTreeMap;
/// use cairn_testkit::check::bank::{check_bank, BankModel, BankRecorder};
///
/// let model = BankModel::uniform(2, 10);
/// let recorder = BankRecorder::new();
/// recorder.invoke_transfer(1, 0, 1, 3).transfer_ok();
/// let balances = BTreeMap::from([(0, 7), (1, 13)]);
/// recorder.invoke_read(2).read_ok(balances.clone());
/// let report = check_bank(&recorder.history(), &model, &balances).unwrap();
/// assert!(report.valid, "{report}");
/// ```
#[derive(Clone)]
pub struct BankRecorder {
    log: Log<BankOp>,
}

impl Default for BankRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for BankRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BankRecorder").field("ops", &self.log.len()).finish()
    }
}

impl BankRecorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Self {
        BankRecorder { log: Log::new() }
    }

    /// Records that `client` is about to send `kind`. A handle dropped
    /// without completion leaves the operation [`BankOutcome::Unknown`] with
    /// no completion time.
    pub fn invoke(&self, client: ClientId, kind: BankOpKind) -> BankOpHandle {
        let slot = self.log.invoke(|index, invoke_ns| BankOp {
            id: index as OpId,
            client,
            kind,
            invoke_ns,
            complete_ns: None,
            outcome: BankOutcome::Unknown,
        });
        BankOpHandle { slot }
    }

    /// Records that `client` is about to move `amount` from `from` to `to`.
    pub fn invoke_transfer(&self, client: ClientId, from: Account, to: Account, amount: u64) -> BankOpHandle {
        self.invoke(client, BankOpKind::Transfer { from, to, amount })
    }

    /// Records that `client` is about to read every balance.
    pub fn invoke_read(&self, client: ClientId) -> BankOpHandle {
        self.invoke(client, BankOpKind::Read)
    }

    /// A snapshot of everything recorded so far; operations still in flight
    /// appear as [`BankOutcome::Unknown`].
    pub fn history(&self) -> BankHistory {
        BankHistory { ops: self.log.snapshot() }
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

/// An invoked bank operation awaiting its outcome; completing consumes it.
#[must_use = "complete the operation with ok/fail/unknown, or it stays Unknown"]
pub struct BankOpHandle {
    slot: Slot<BankOp>,
}

impl fmt::Debug for BankOpHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BankOpHandle").field("id", &self.slot.index()).finish()
    }
}

impl BankOpHandle {
    /// The id the operation has in the history.
    pub fn id(&self) -> OpId {
        self.slot.index() as OpId
    }

    fn complete(self, outcome: BankOutcome) {
        self.slot.complete(|op, now| {
            op.complete_ns = Some(now);
            op.outcome = outcome;
        });
    }

    /// The operation took effect with result `ret` (a result of the wrong
    /// kind is recorded as is and rejected by [`BankHistory::validate`]).
    pub fn ok(self, ret: BankRet) {
        self.complete(BankOutcome::Ok(ret));
    }

    /// The transfer took effect (its Txn succeeded).
    pub fn transfer_ok(self) {
        self.ok(BankRet::Transferred);
    }

    /// The read returned `balances`.
    pub fn read_ok(self, balances: BTreeMap<Account, Balance>) {
        self.ok(BankRet::Read(balances));
    }

    /// The operation definitely did not take effect (for a transfer: its
    /// Txn answered that the comparison failed). When in doubt use
    /// [`BankOpHandle::unknown`], which is always sound.
    pub fn fail(self) {
        self.complete(BankOutcome::Fail);
    }

    /// The client stopped waiting without learning the outcome.
    pub fn unknown(self) {
        self.complete(BankOutcome::Unknown);
    }
}

/// The accounts, their balances before the run, and the invariants to hold
/// reads to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BankModel {
    /// Every account and its initial balance.
    pub initial: BTreeMap<Account, Balance>,
    /// Whether reads may show negative balances.
    pub allow_negative: bool,
}

impl BankModel {
    /// Accounts `0..accounts`, each starting at `balance`; negative
    /// balances are not allowed.
    pub fn uniform(accounts: u64, balance: Balance) -> Self {
        BankModel { initial: (0..accounts).map(|a| (a, balance)).collect(), allow_negative: false }
    }

    /// The sum of the initial balances, which every read must show.
    pub fn total(&self) -> i128 {
        self.initial.values().map(|&b| i128::from(b)).sum()
    }
}

/// A balance outside the range the transfers could explain (check 4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnexplainedBalance {
    /// The account.
    pub account: Account,
    /// What the read showed.
    pub balance: Balance,
    /// The smallest balance the transfers could have produced.
    pub min: i128,
    /// The largest balance the transfers could have produced.
    pub max: i128,
}

/// A read that failed at least one check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadRead {
    /// The read; `None` for the final read.
    pub read: Option<OpId>,
    /// The sum of the balances it showed.
    pub total: i128,
    /// The total every read must show.
    pub expected_total: i128,
    /// Accounts of the model it lacked.
    pub missing_accounts: Vec<Account>,
    /// Accounts it showed that the model does not have.
    pub unexpected_accounts: Vec<Account>,
    /// Negative balances it showed (only when not allowed).
    pub negative: Vec<(Account, Balance)>,
    /// Balances it showed that no set of transfers explains.
    pub unexplained: Vec<UnexplainedBalance>,
}

impl fmt::Display for BadRead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.read {
            Some(id) => write!(f, "bad read #{id}:")?,
            None => write!(f, "bad final read:")?,
        }
        write!(f, " total {} (expected {})", self.total, self.expected_total)?;
        if !self.missing_accounts.is_empty() {
            write!(f, "; missing accounts {:?}", self.missing_accounts)?;
        }
        if !self.unexpected_accounts.is_empty() {
            write!(f, "; unexpected accounts {:?}", self.unexpected_accounts)?;
        }
        if !self.negative.is_empty() {
            write!(f, "; negative balances {:?}", self.negative)?;
        }
        for u in &self.unexplained {
            write!(f, "; account {} balance {} outside [{}, {}]", u.account, u.balance, u.min, u.max)?;
        }
        Ok(())
    }
}

/// Result of [`check_bank`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BankReport {
    /// True iff every `Ok` read and the final read passed every check.
    pub valid: bool,
    /// Number of accounts in the model.
    pub accounts: usize,
    /// The total every read must show.
    pub initial_total: i128,
    /// `Ok` reads checked (not counting the final read).
    pub reads_checked: usize,
    /// `Ok` reads that failed a check (not counting the final read).
    pub bad_read_count: usize,
    /// The first [`MAX_LISTED`] of them, in history order.
    pub bad_reads: Vec<BadRead>,
    /// The final read's failures, if it failed a check.
    pub bad_final_read: Option<BadRead>,
    /// Transfers that took effect.
    pub transfers_ok: usize,
    /// Transfers that definitely did not.
    pub transfers_failed: usize,
    /// Transfers of unknown outcome.
    pub transfers_unknown: usize,
}

impl fmt::Display for BankReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "bank: {}; {} accounts, total {}; {} reads, {} bad, final read {}; transfers {} ok, {} failed, {} unknown",
            if self.valid { "valid" } else { "INVALID" },
            self.accounts,
            self.initial_total,
            self.reads_checked,
            self.bad_read_count,
            if self.bad_final_read.is_some() { "bad" } else { "ok" },
            self.transfers_ok,
            self.transfers_failed,
            self.transfers_unknown
        )?;
        for bad in self.bad_reads.iter().chain(&self.bad_final_read) {
            writeln!(f, "{bad}")?;
        }
        Ok(())
    }
}

/// The effects of the transfers on one account, indexed for the range
/// queries of check 4.
#[derive(Default)]
struct AccountEffects {
    /// `Ok` transfers touching the account, by completion time, with running
    /// sums of (δ, min(0, δ), max(0, δ)) — entry `i` covers the first `i`.
    ok_by_complete: Vec<u64>,
    ok_sums: Vec<(i128, i128, i128)>,
    /// Non-failed transfers touching the account, by invocation time, with
    /// running sums of (min(0, δ), max(0, δ)).
    possible_by_invoke: Vec<u64>,
    possible_sums: Vec<(i128, i128)>,
}

impl AccountEffects {
    fn build(mut ok: Vec<(u64, i128)>, mut possible: Vec<(u64, i128)>) -> Self {
        ok.sort_unstable();
        possible.sort_unstable();
        let mut ok_sums = vec![(0, 0, 0)];
        for &(_, d) in &ok {
            let (s, lo, hi) = ok_sums[ok_sums.len() - 1];
            ok_sums.push((s + d, lo + d.min(0), hi + d.max(0)));
        }
        let mut possible_sums = vec![(0, 0)];
        for &(_, d) in &possible {
            let (lo, hi) = possible_sums[possible_sums.len() - 1];
            possible_sums.push((lo + d.min(0), hi + d.max(0)));
        }
        AccountEffects {
            ok_by_complete: ok.into_iter().map(|(t, _)| t).collect(),
            ok_sums,
            possible_by_invoke: possible.into_iter().map(|(t, _)| t).collect(),
            possible_sums,
        }
    }

    /// The range of the net effect of the transfers that took effect before
    /// a read invoked at `invoke` and completed at `complete` (`None`: after
    /// everything) — see check 4.
    fn range(&self, invoke: Option<u64>, complete: Option<u64>) -> (i128, i128) {
        let definite = match invoke {
            Some(invoke) => self.ok_by_complete.partition_point(|&t| t < invoke),
            None => self.ok_by_complete.len(),
        };
        let possible = match complete {
            Some(complete) => self.possible_by_invoke.partition_point(|&t| t <= complete),
            None => self.possible_by_invoke.len(),
        };
        let (sum, def_lo, def_hi) = self.ok_sums[definite];
        let (pos_lo, pos_hi) = self.possible_sums[possible];
        // Definite transfers are among the possible ones (they were invoked
        // before they completed, before the read was invoked), so the maybe
        // set's bounds are the possible set's minus the definite set's.
        (sum + pos_lo - def_lo, sum + pos_hi - def_hi)
    }
}

/// Runs every check of the module docs on each `Ok` read of `history` and on
/// `final_read`, the balances returned by a read invoked after every
/// recorded operation ended (after the cluster healed). Fails only on a
/// malformed history.
pub fn check_bank(
    history: &BankHistory,
    model: &BankModel,
    final_read: &BTreeMap<Account, Balance>,
) -> Result<BankReport, HistoryError> {
    history.validate()?;
    let expected_total = model.total();

    let mut ok: BTreeMap<Account, Vec<(u64, i128)>> = BTreeMap::new();
    let mut possible: BTreeMap<Account, Vec<(u64, i128)>> = BTreeMap::new();
    let (mut transfers_ok, mut transfers_failed, mut transfers_unknown) = (0, 0, 0);
    for op in &history.ops {
        let BankOpKind::Transfer { from, to, amount } = op.kind else {
            continue;
        };
        match op.outcome {
            BankOutcome::Fail => {
                transfers_failed += 1;
                continue;
            }
            BankOutcome::Unknown => transfers_unknown += 1,
            BankOutcome::Ok(_) => transfers_ok += 1,
        }
        if from == to {
            continue;
        }
        let amount = i128::from(amount);
        for (account, delta) in [(from, -amount), (to, amount)] {
            if let BankOutcome::Ok(_) = op.outcome {
                // Validated: Ok operations have a completion time.
                ok.entry(account).or_default().push((op.complete_ns.unwrap_or(u64::MAX), delta));
            }
            possible.entry(account).or_default().push((op.invoke_ns, delta));
        }
    }
    let effects: BTreeMap<Account, AccountEffects> = model
        .initial
        .keys()
        .map(|&a| {
            (a, AccountEffects::build(ok.remove(&a).unwrap_or_default(), possible.remove(&a).unwrap_or_default()))
        })
        .collect();

    let check_read = |read: Option<&BankOp>, balances: &BTreeMap<Account, Balance>| -> Option<BadRead> {
        let total: i128 = balances.values().map(|&b| i128::from(b)).sum();
        let missing_accounts: Vec<Account> =
            model.initial.keys().filter(|a| !balances.contains_key(a)).copied().take(MAX_LISTED).collect();
        let unexpected_accounts: Vec<Account> =
            balances.keys().filter(|a| !model.initial.contains_key(a)).copied().take(MAX_LISTED).collect();
        let negative: Vec<(Account, Balance)> = if model.allow_negative {
            Vec::new()
        } else {
            balances.iter().filter(|(_, &b)| b < 0).map(|(&a, &b)| (a, b)).take(MAX_LISTED).collect()
        };
        let (invoke, complete) = match read {
            Some(op) => (Some(op.invoke_ns), op.complete_ns),
            None => (None, None),
        };
        let mut unexplained = Vec::new();
        for (&account, &balance) in balances {
            let (Some(&initial), Some(effects)) = (model.initial.get(&account), effects.get(&account)) else {
                continue;
            };
            let (lo, hi) = effects.range(invoke, complete);
            let (min, max) = (i128::from(initial) + lo, i128::from(initial) + hi);
            if !(min..=max).contains(&i128::from(balance)) && unexplained.len() < MAX_LISTED {
                unexplained.push(UnexplainedBalance { account, balance, min, max });
            }
        }
        let good = total == expected_total
            && missing_accounts.is_empty()
            && unexpected_accounts.is_empty()
            && negative.is_empty()
            && unexplained.is_empty();
        (!good).then(|| BadRead {
            read: read.map(|op| op.id),
            total,
            expected_total,
            missing_accounts,
            unexpected_accounts,
            negative,
            unexplained,
        })
    };

    let mut reads_checked = 0;
    let mut bad_read_count = 0;
    let mut bad_reads = Vec::new();
    for op in &history.ops {
        if let BankOutcome::Ok(BankRet::Read(balances)) = &op.outcome {
            reads_checked += 1;
            if let Some(bad) = check_read(Some(op), balances) {
                bad_read_count += 1;
                if bad_reads.len() < MAX_LISTED {
                    bad_reads.push(bad);
                }
            }
        }
    }
    let bad_final_read = check_read(None, final_read);

    Ok(BankReport {
        valid: bad_read_count == 0 && bad_final_read.is_none(),
        accounts: model.initial.len(),
        initial_total: expected_total,
        reads_checked,
        bad_read_count,
        bad_reads,
        bad_final_read,
        transfers_ok,
        transfers_failed,
        transfers_unknown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn op(id: OpId, kind: BankOpKind, invoke: u64, complete: Option<u64>, outcome: BankOutcome) -> BankOp {
        BankOp { id, client: id, kind, invoke_ns: invoke, complete_ns: complete, outcome }
    }

    fn transfer(id: OpId, from: Account, to: Account, amount: u64, invoke: u64, complete: u64) -> BankOp {
        let kind = BankOpKind::Transfer { from, to, amount };
        op(id, kind, invoke, Some(complete), BankOutcome::Ok(BankRet::Transferred))
    }

    fn transfer_unknown(id: OpId, from: Account, to: Account, amount: u64, invoke: u64) -> BankOp {
        op(id, BankOpKind::Transfer { from, to, amount }, invoke, None, BankOutcome::Unknown)
    }

    fn transfer_fail(id: OpId, from: Account, to: Account, amount: u64, invoke: u64, complete: u64) -> BankOp {
        op(id, BankOpKind::Transfer { from, to, amount }, invoke, Some(complete), BankOutcome::Fail)
    }

    fn balances(values: &[Balance]) -> BTreeMap<Account, Balance> {
        values.iter().enumerate().map(|(a, &b)| (a as Account, b)).collect()
    }

    fn read(id: OpId, values: &[Balance], invoke: u64, complete: u64) -> BankOp {
        op(id, BankOpKind::Read, invoke, Some(complete), BankOutcome::Ok(BankRet::Read(balances(values))))
    }

    fn check(model: &BankModel, ops: Vec<BankOp>, final_read: &BTreeMap<Account, Balance>) -> BankReport {
        let report = check_bank(&BankHistory::new(ops), model, final_read).expect("well formed");
        let json = serde_json::to_string(&report).expect("serializes");
        assert_eq!(serde_json::from_str::<BankReport>(&json).expect("parses"), report);
        let _ = report.to_string();
        report
    }

    fn three() -> BankModel {
        BankModel::uniform(3, 10)
    }

    #[test]
    fn accepts_good_history() {
        let report = check(
            &three(),
            vec![
                read(0, &[10, 10, 10], 0, 1),
                transfer(1, 0, 1, 5, 2, 10),
                // Concurrent with the transfer: either state is fine.
                read(2, &[10, 10, 10], 3, 4),
                read(3, &[5, 15, 10], 5, 6),
                transfer_unknown(4, 1, 2, 15, 11),
                transfer_fail(5, 2, 0, 3, 12, 13),
                read(6, &[5, 15, 10], 14, 15),
                read(7, &[5, 0, 25], 16, 17),
                op(8, BankOpKind::Read, 18, None, BankOutcome::Unknown),
            ],
            &balances(&[5, 0, 25]),
        );
        assert!(report.valid, "{report}");
        assert_eq!(
            (report.reads_checked, report.transfers_ok, report.transfers_failed, report.transfers_unknown),
            (5, 1, 1, 1)
        );
        assert_eq!((report.accounts, report.initial_total), (3, 30));
    }

    #[test]
    fn rejects_read_with_wrong_total() {
        let report = check(&three(), vec![read(0, &[10, 10, 11], 0, 1)], &balances(&[10, 10, 10]));
        assert!(!report.valid);
        assert_eq!(report.bad_read_count, 1, "{report}");
        assert_eq!((report.bad_reads[0].read, report.bad_reads[0].total), (Some(0), 31));
        assert!(report.bad_final_read.is_none());
        assert!(report.to_string().contains("total 31 (expected 30)"), "{report}");
    }

    #[test]
    fn rejects_read_with_missing_or_extra_account() {
        let missing = BTreeMap::from([(0, 15), (1, 15)]);
        let ops = vec![op(0, BankOpKind::Read, 0, Some(1), BankOutcome::Ok(BankRet::Read(missing)))];
        let report = check(&three(), ops, &balances(&[10, 10, 10]));
        assert!(!report.valid);
        assert_eq!(report.bad_reads[0].missing_accounts, vec![2], "{report}");

        let extra = BTreeMap::from([(0, 10), (1, 10), (2, 10), (7, 0)]);
        let ops = vec![op(0, BankOpKind::Read, 0, Some(1), BankOutcome::Ok(BankRet::Read(extra)))];
        let report = check(&three(), ops, &balances(&[10, 10, 10]));
        assert!(!report.valid);
        assert_eq!(report.bad_reads[0].unexpected_accounts, vec![7], "{report}");
    }

    #[test]
    fn rejects_negative_balance_unless_allowed() {
        let ops = vec![transfer_unknown(0, 0, 1, 11, 0), read(1, &[-1, 21, 10], 1, 2)];
        let report = check(&three(), ops.clone(), &balances(&[-1, 21, 10]));
        assert!(!report.valid);
        assert_eq!(report.bad_reads[0].negative, vec![(0, -1)], "{report}");
        assert_eq!(report.bad_final_read.as_ref().map(|b| b.negative.clone()), Some(vec![(0, -1)]));
        assert!(report.bad_reads[0].unexplained.is_empty(), "{report}");

        let lenient = BankModel { allow_negative: true, ..three() };
        let report = check(&lenient, ops, &balances(&[-1, 21, 10]));
        assert!(report.valid, "{report}");
    }

    #[test]
    fn rejects_bad_final_read() {
        let report = check(&three(), vec![transfer(0, 0, 1, 5, 0, 1)], &balances(&[5, 15, 9]));
        assert!(!report.valid);
        assert_eq!(report.bad_read_count, 0);
        let bad = report.bad_final_read.as_ref().expect("final read is bad");
        assert_eq!((bad.read, bad.total), (None, 29));
        assert!(report.to_string().contains("bad final read"), "{report}");
    }

    #[test]
    fn rejects_unexplainable_balances() {
        // Total preserved, but the acknowledged transfer is missing from a
        // read that began after it completed.
        let report =
            check(&three(), vec![transfer(0, 0, 1, 5, 0, 1), read(1, &[10, 10, 10], 2, 3)], &balances(&[5, 15, 10]));
        assert!(!report.valid);
        let unexplained = &report.bad_reads[0].unexplained;
        assert_eq!(unexplained[0], UnexplainedBalance { account: 0, balance: 10, min: 5, max: 5 }, "{report}");

        // A transfer invoked after the read completed cannot show.
        let report =
            check(&three(), vec![read(0, &[5, 15, 10], 0, 1), transfer(1, 0, 1, 5, 2, 3)], &balances(&[5, 15, 10]));
        assert!(!report.valid, "{report}");

        // Nor can a failed one, even in the final read.
        let report = check(&three(), vec![transfer_fail(0, 0, 1, 5, 0, 1)], &balances(&[5, 15, 10]));
        assert!(report.bad_final_read.is_some(), "{report}");

        // An unknown one may show at any time after its invocation.
        let report = check(
            &three(),
            vec![transfer_unknown(0, 0, 1, 5, 0), read(1, &[5, 15, 10], 1, 2), read(2, &[5, 15, 10], 50, 60)],
            &balances(&[5, 15, 10]),
        );
        assert!(report.valid, "{report}");
    }

    #[test]
    fn rejects_malformed_history() {
        let bad = op(0, BankOpKind::Read, 0, Some(1), BankOutcome::Ok(BankRet::Transferred));
        let result = check_bank(&BankHistory::new(vec![bad]), &three(), &balances(&[10, 10, 10]));
        assert_eq!(result, Err(HistoryError::ResultMismatch { op: 0 }));
        let backwards = transfer(0, 0, 1, 1, 5, 4);
        let result = check_bank(&BankHistory::new(vec![backwards]), &three(), &balances(&[10, 10, 10]));
        assert_eq!(result, Err(HistoryError::CompletesBeforeInvoke { op: 0 }));
    }

    #[test]
    fn recorder_records_across_threads() {
        let recorder = BankRecorder::new();
        std::thread::scope(|scope| {
            for client in 0..4u64 {
                let recorder = recorder.clone();
                scope.spawn(move || {
                    for _ in 0..25 {
                        recorder.invoke_transfer(client, 0, 1, 1).fail();
                        recorder.invoke_read(client).read_ok(balances(&[10, 10, 10]));
                    }
                });
            }
        });
        let _pending = recorder.invoke_transfer(9, 1, 2, 4);
        let history = recorder.history();
        assert_eq!(recorder.len(), 201);
        history.validate().expect("well formed");
        let times: Vec<u64> = history.ops.iter().map(|op| op.invoke_ns).collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]));
        let report = check_bank(&history, &three(), &balances(&[10, 6, 14])).expect("well formed");
        assert!(report.valid, "{report}");
        assert_eq!((report.reads_checked, report.transfers_failed, report.transfers_unknown), (100, 100, 1));
    }

    /// Check 4 computed naively, to cross-check the prefix sums.
    fn naive_range(ops: &[BankOp], account: Account, invoke: Option<u64>, complete: Option<u64>) -> (i128, i128) {
        let (mut lo, mut hi) = (0, 0);
        for op in ops {
            let BankOpKind::Transfer { from, to, amount } = op.kind else { continue };
            let delta = match account {
                _ if from == to => 0,
                a if a == from => -i128::from(amount),
                a if a == to => i128::from(amount),
                _ => 0,
            };
            let definite = matches!(op.outcome, BankOutcome::Ok(_))
                && invoke.is_none_or(|i| op.complete_ns.is_some_and(|c| c < i));
            let possible = op.outcome != BankOutcome::Fail && complete.is_none_or(|c| op.invoke_ns <= c);
            if definite {
                lo += delta;
                hi += delta;
            } else if possible {
                lo += delta.min(0);
                hi += delta.max(0);
            }
        }
        (lo, hi)
    }

    /// A valid history from a sequential bank: clients issue operations with
    /// random, overlapping intervals; each operation that takes effect does
    /// so at a random point (within its interval if `Ok`, any time after
    /// invocation if `Unknown`). Transfers that would overdraw at their
    /// point do not take effect (an `Ok` one becomes `Fail`, as its Txn
    /// comparison would fail), and reads return the model state at their
    /// point.
    fn random_history(rng: &mut impl Rng, model: &BankModel) -> (Vec<BankOp>, BTreeMap<Account, Balance>) {
        let accounts = model.initial.len() as u64;
        let mut ops = Vec::new();
        let mut points: Vec<(u64, usize)> = Vec::new();
        for client in 0..rng.random_range(1..6u64) {
            let mut now = rng.random_range(0..100);
            for _ in 0..rng.random_range(1..30) {
                let kind = if rng.random_bool(0.6) {
                    let from = rng.random_range(0..accounts);
                    let to = rng.random_range(0..accounts);
                    BankOpKind::Transfer { from, to, amount: rng.random_range(1..=8) }
                } else {
                    BankOpKind::Read
                };
                let invoke = now + rng.random_range(1..50);
                let complete = invoke + rng.random_range(2..300);
                now = complete;
                let y: f64 = rng.random();
                let (outcome, point) = if y < 0.05 {
                    (BankOutcome::Fail, None)
                } else if y < 0.15 {
                    let point = rng.random_bool(0.5).then(|| rng.random_range(invoke + 1..invoke + 2_000));
                    (BankOutcome::Unknown, point)
                } else {
                    (BankOutcome::Ok(BankRet::Transferred), Some(rng.random_range(invoke + 1..complete)))
                };
                if let Some(point) = point {
                    points.push((point, ops.len()));
                }
                ops.push(BankOp {
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
        let mut state = model.initial.clone();
        for (_, i) in points {
            match ops[i].kind {
                BankOpKind::Transfer { from, to, amount } => {
                    let amount = amount as Balance;
                    if state[&from] >= amount {
                        *state.entry(from).or_default() -= amount;
                        *state.entry(to).or_default() += amount;
                    } else if ops[i].outcome != BankOutcome::Unknown {
                        ops[i].outcome = BankOutcome::Fail;
                    }
                }
                BankOpKind::Read => {
                    if ops[i].outcome != BankOutcome::Unknown {
                        ops[i].outcome = BankOutcome::Ok(BankRet::Read(state.clone()));
                    }
                }
            }
        }
        (ops, state)
    }

    #[test]
    fn random_valid_histories_pass_and_injected_faults_fail() {
        let mut rng = StdRng::seed_from_u64(0x5eed_ba4c);
        let mut injected = [0usize; 5];
        for round in 0..400 {
            let model = BankModel::uniform(rng.random_range(2..6), rng.random_range(0..20));
            let (mut ops, mut final_read) = random_history(&mut rng, &model);
            let report = check(&model, ops.clone(), &final_read);
            assert!(report.valid, "round {round}: {report}");

            // The prefix sums agree with the naive definition.
            let history = BankHistory::new(ops.clone());
            let mut ok: BTreeMap<Account, Vec<(u64, i128)>> = BTreeMap::new();
            let mut possible: BTreeMap<Account, Vec<(u64, i128)>> = BTreeMap::new();
            for op in &history.ops {
                if let BankOpKind::Transfer { from, to, amount } = op.kind {
                    if from == to || op.outcome == BankOutcome::Fail {
                        continue;
                    }
                    for (a, d) in [(from, -i128::from(amount)), (to, i128::from(amount))] {
                        if matches!(op.outcome, BankOutcome::Ok(_)) {
                            ok.entry(a).or_default().push((op.complete_ns.unwrap_or(u64::MAX), d));
                        }
                        possible.entry(a).or_default().push((op.invoke_ns, d));
                    }
                }
            }
            for &a in model.initial.keys() {
                let effects =
                    AccountEffects::build(ok.remove(&a).unwrap_or_default(), possible.remove(&a).unwrap_or_default());
                for probe in [None, Some(0), Some(150), Some(400), Some(2_000)] {
                    let complete = probe.map(|t| t + 100);
                    assert_eq!(effects.range(probe, complete), naive_range(&ops, a, probe, complete));
                }
            }

            let read_index = ops.iter().position(|op| matches!(op.outcome, BankOutcome::Ok(BankRet::Read(_))));
            let fault = rng.random_range(0..5);
            let target = match (fault, read_index) {
                (4, _) => &mut final_read,
                (_, Some(i)) => match &mut ops[i].outcome {
                    BankOutcome::Ok(BankRet::Read(balances)) => balances,
                    _ => unreachable!("position found a read"),
                },
                (_, None) => continue,
            };
            match fault {
                // Total off by one.
                0 => *target.entry(0).or_default() += 1,
                // A missing account.
                1 => {
                    target.remove(&0);
                }
                // A negative balance, keeping the total.
                2 => {
                    let moved = target[&0] + 1;
                    *target.entry(0).or_default() -= moved;
                    *target.entry(1).or_default() += moved;
                }
                // An extra account.
                3 => {
                    target.insert(u64::MAX, 0);
                }
                // The final read is off.
                _ => *target.entry(1).or_default() -= 1,
            }
            injected[fault] += 1;
            let report = check(&model, ops, &final_read);
            assert!(!report.valid, "round {round}, fault {fault} not detected: {report}");
            let bad = if fault == 4 { report.bad_final_read.clone() } else { report.bad_reads.first().cloned() };
            let bad = bad.expect("the corrupted read is reported");
            let classified = match fault {
                0 | 4 => bad.total != bad.expected_total,
                1 => bad.missing_accounts == vec![0],
                2 => bad.negative.first().is_some_and(|&(a, b)| a == 0 && b == -1),
                _ => bad.unexpected_accounts == vec![u64::MAX],
            };
            assert!(classified, "round {round}, fault {fault} misclassified: {report}");
        }
        assert!(injected.iter().all(|&n| n > 20), "{injected:?}");
    }
}
