//! The placement driver's decisions: `plan(view) -> moves`, a pure function.
//!
//! A task on the meta leader gathers a [`View`] (nodes with their liveness, ranges with their
//! replicas, leader, size, load and idleness), calls [`plan`], and carries out what it returns.
//! The rules, in order of urgency; a range gets at most one move per plan, and a plan holds at
//! most `max_moves`:
//!
//! 0. **Clear what changes cut short left behind**:
//!    - a learner kept longer than `learner_timeout_ms` (5 min: longer than a move keeps one;
//!      left by a move whose leader lost its leadership or died before promoting it) is
//!      removed; a merge needs ranges without learners, and nothing else would remove one;
//!    - a range frozen for a merge (it refuses every request) is merged into its left
//!      neighbour, after one of its replicas moves to match the neighbour's nodes if they
//!      changed since the freeze.
//! 1. **Repair**: a replica on a node dead for longer than `dead_node_timeout_ms`, or on a node
//!    being removed, moves to the live node with the fewest replicas (then bytes) that does
//!    not hold the range; a range with fewer than `replication_factor` replicas gets one.
//! 2. **Split** a range past `split_bytes` (by size) or `split_qps` (by load). By size, at the
//!    middle key its leader reports; by load, where the keys its leader sampled from its
//!    requests divide best (`directory::load_split_boundary`), and not at all when no
//!    boundary divides them (a load on one hash slot); either moved to a legal boundary.
//! 3. **Merge** two adjacent ranges that are both small (under `merge_bytes`) and cold (under
//!    `merge_qps`, without a break for `merge_delay_ms`), and have the same replicas (a merge
//!    never copies data between nodes), unless the key between them is one of `keep` (the first
//!    layout's boundaries: subsystem prefixes and the initial Redis ranges stay apart). The
//!    delay is CockroachDB's `kv.range_split.by_load_merge_delay`: without it, a load that
//!    comes and goes every few seconds split a range when it came and merged it back when it
//!    paused, again and again, and every split and merge sends the range's clients a stale
//!    route to retry.
//! 4. **Rebalance** replicas: from the node with the most replicas to the one with the fewest,
//!    when they differ by more than one; then by bytes, when a node holds more than the mean by
//!    more than `bytes_tolerance`.
//! 5. **Leader load**: when the requests served by a node's leaders exceed the mean over the
//!    live nodes by more than `leader_qps_tolerance`, a busy range's leadership goes to the
//!    replica node whose leaders serve the fewest, if that narrows the gap (CockroachDB's
//!    load-based lease rebalancing). Ranges under `merge_qps` count as cold and are not moved
//!    for load. Without it, two hot ranges can share a leader node while another node leads
//!    only cold ones, with equal leader counts.
//! 6. **Leader counts**: from the node leading the most ranges to a replica node leading fewer,
//!    when they differ by more than one, moving its coldest range (so it does not undo 5);
//!    first within each subsystem (the ranges whose start key has the same first byte: Redis
//!    keys, the keys before them, ...), then over all ranges by moves that keep each subsystem
//!    even. Counting all ranges only, a 3-node cluster with four Redis ranges and two others
//!    could settle with two nodes leading two Redis ranges each and the third leading the two
//!    others: counts even, and one node serving no Redis client (`bench-redis` saw it).
//!
//! Hibernation is not the driver's: each node stops the timers of its idle ranges itself
//! (`cairn_raft::range::hibernate`), as TiKV's stores do.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub id: u64,
    /// Milliseconds since the node's last liveness heartbeat (0: just now).
    pub silent_ms: u64,
    /// Being removed (`cairn node remove`): its replicas move off first.
    pub draining: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RangeView {
    pub id: u64,
    pub epoch: u64,
    #[serde(with = "serde_bytes")]
    pub start: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub end: Vec<u8>,
    pub replicas: Vec<u64>,
    pub leader: Option<u64>,
    pub bytes: u64,
    /// Requests per second, recently.
    pub qps: f64,
    /// Milliseconds since the range last served a request.
    pub idle_ms: u64,
    /// How long the range has been cold (under `merge_qps`) without a break, in
    /// milliseconds, as the driver saw it at this epoch (0: not cold now).
    #[serde(default)]
    pub cold_ms: u64,
    /// A split by load found no boundary dividing its load lately (a load on one hash slot):
    /// not split by load again for now.
    #[serde(default)]
    pub no_load_split: bool,
    /// Frozen for a merge that was cut short (see [`plan`], rule 0).
    #[serde(default)]
    pub frozen: bool,
    /// The nodes that hold a learner of the range (a replica being added by a move, or one
    /// left behind by a move cut short), each with how long it has been one without a break,
    /// in milliseconds, as the driver saw it.
    #[serde(default)]
    pub learners: Vec<(u64, u64)>,
}

impl RangeView {
    fn has_learners(&self) -> bool {
        !self.learners.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct View {
    pub nodes: Vec<NodeView>,
    /// In key order.
    pub ranges: Vec<RangeView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub replication_factor: usize,
    pub split_bytes: u64,
    pub split_qps: f64,
    pub merge_bytes: u64,
    pub merge_qps: f64,
    /// How long both ranges must have been cold before they merge.
    pub merge_delay_ms: u64,
    /// A node silent this long is dead: its replicas are re-created elsewhere.
    pub dead_node_timeout_ms: u64,
    /// A node silent this long is not live (no new replicas, no leaders go to it).
    pub live_timeout_ms: u64,
    /// How far above the mean a node's bytes may be (0.2: 20 %).
    pub bytes_tolerance: f64,
    /// How far above the mean the requests a node's leaders serve may be (0.25: 25 %).
    pub leader_qps_tolerance: f64,
    pub max_moves: usize,
    /// Boundaries never merged across.
    pub keep: Vec<Vec<u8>>,
    /// A learner kept this long is left over from a move cut short, and is removed. A move
    /// keeps its learner for at most 2 minutes of catching up, and one cut short by a leader
    /// change may be asked again of the new leader up to 150 s after it began: 5 minutes is
    /// past both together.
    pub learner_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            replication_factor: 3,
            split_bytes: 64 << 20,
            split_qps: 2500.0,
            merge_bytes: 16 << 20,
            merge_qps: 100.0,
            merge_delay_ms: 5 * 60 * 1000,
            dead_node_timeout_ms: 5 * 60 * 1000,
            live_timeout_ms: 9_000,
            bytes_tolerance: 0.2,
            leader_qps_tolerance: 0.25,
            max_moves: 8,
            keep: Vec::new(),
            learner_timeout_ms: 5 * 60 * 1000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SplitReason {
    Size,
    Load,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Move {
    Split {
        range: u64,
        epoch: u64,
        reason: SplitReason,
    },
    /// `right` is absorbed into `left`.
    Merge {
        left: u64,
        right: u64,
    },
    /// Add a replica on `to` (learner, caught up, promoted), then remove the one on `from`.
    Relocate {
        range: u64,
        epoch: u64,
        from: u64,
        to: u64,
    },
    AddReplica {
        range: u64,
        epoch: u64,
        to: u64,
    },
    TransferLeader {
        range: u64,
        epoch: u64,
        to: u64,
    },
    /// Remove those learners of the range (left over from moves cut short).
    DropLearners {
        range: u64,
        epoch: u64,
        nodes: Vec<u64>,
    },
}

impl Move {
    /// The ranges the move touches.
    fn ranges(&self) -> Vec<u64> {
        match *self {
            Move::Merge { left, right } => vec![left, right],
            Move::Split { range, .. }
            | Move::Relocate { range, .. }
            | Move::AddReplica { range, .. }
            | Move::TransferLeader { range, .. }
            | Move::DropLearners { range, .. } => vec![range],
        }
    }
}

struct Plan<'a> {
    cfg: &'a Config,
    moves: Vec<Move>,
    busy: BTreeSet<u64>,
}

impl Plan<'_> {
    fn full(&self) -> bool {
        self.moves.len() >= self.cfg.max_moves
    }

    fn push(&mut self, m: Move) -> bool {
        if self.full() || m.ranges().iter().any(|r| self.busy.contains(r)) {
            return false;
        }
        self.busy.extend(m.ranges());
        self.moves.push(m);
        true
    }
}

/// Per-node totals, with the moves planned so far applied.
#[derive(Default, Clone, Copy)]
struct Load {
    replicas: i64,
    bytes: i64,
    /// Requests per second served by the ranges it leads.
    leader_qps: f64,
}

/// The moves that bring the cluster closer to where it should be.
pub fn plan(view: &View, cfg: &Config) -> Vec<Move> {
    let mut p = Plan { cfg, moves: Vec::new(), busy: BTreeSet::new() };
    let live: BTreeSet<u64> =
        view.nodes.iter().filter(|n| n.silent_ms < cfg.live_timeout_ms && !n.draining).map(|n| n.id).collect();
    let leaving: BTreeSet<u64> =
        view.nodes.iter().filter(|n| n.draining || n.silent_ms >= cfg.dead_node_timeout_ms).map(|n| n.id).collect();
    let mut load: BTreeMap<u64, Load> = live.iter().map(|&id| (id, Load::default())).collect();
    for r in &view.ranges {
        for n in &r.replicas {
            if let Some(l) = load.get_mut(n) {
                l.replicas += 1;
                l.bytes += r.bytes as i64;
            }
        }
        if let Some(l) = r.leader.and_then(|n| load.get_mut(&n)) {
            l.leader_qps += r.qps;
        }
    }
    // The live node with the fewest replicas (then bytes, then id) that does not hold `r`.
    let target = |load: &BTreeMap<u64, Load>, r: &RangeView| {
        load.iter()
            .filter(|(id, _)| !r.replicas.contains(id))
            .min_by_key(|(id, l)| (l.replicas, l.bytes, **id))
            .map(|(id, _)| *id)
    };

    // 0. Clear what changes cut short left behind. First, learners kept past any move (each
    // timed on its own, so that other moves of the range do not restart its clock).
    for r in &view.ranges {
        let stale: Vec<u64> =
            r.learners.iter().filter(|(_, ms)| *ms >= cfg.learner_timeout_ms).map(|(n, _)| *n).collect();
        if !stale.is_empty() {
            p.push(Move::DropLearners { range: r.id, epoch: r.epoch, nodes: stale });
        }
    }
    // Then merges cut short: a frozen range refuses every request until its left neighbour
    // takes it over (`DataTier::merge` runs again from where it stopped), and nothing else is
    // done to it meanwhile. If the two no longer have the same nodes (a replica moved or was
    // repaired since the freeze), one of the frozen range's replicas moves to a live node of
    // the left one's that it lacks first (a frozen range still changes its members), and the
    // left one stays as it is. A left one with a replica on a leaving or silent node is
    // repaired first (rule 1); a frozen one with fewer replicas gets them there too.
    for pair in view.ranges.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if !b.frozen || a.end != b.start {
            continue;
        }
        let from = b.replicas.iter().find(|n| !a.replicas.contains(n)).copied();
        let to = a.replicas.iter().find(|n| !b.replicas.contains(n)).copied();
        let a_settled = a.replicas.iter().all(|n| live.contains(n));
        match (from, to) {
            // A learner (a move under way, or one left over and removed above) first; the
            // left one stays as it is meanwhile.
            (None, None) if a.has_learners() || b.has_learners() => {
                p.busy.insert(a.id);
            }
            (None, None) => {
                p.push(Move::Merge { left: a.id, right: b.id });
            }
            (Some(from), Some(to)) if a_settled => {
                if p.push(Move::Relocate { range: b.id, epoch: b.epoch, from, to }) {
                    shift(&mut load, b, Some(from), to);
                }
                p.busy.insert(a.id);
            }
            // Repair first, below.
            _ => continue,
        }
        p.busy.insert(b.id);
    }

    // 1. Repair.
    for r in &view.ranges {
        if let Some(&from) = r.replicas.iter().find(|n| leaving.contains(n)) {
            if let Some(to) = target(&load, r) {
                if p.push(Move::Relocate { range: r.id, epoch: r.epoch, from, to }) {
                    shift(&mut load, r, Some(from), to);
                }
            }
        } else if r.replicas.len() < cfg.replication_factor {
            if let Some(to) = target(&load, r) {
                if p.push(Move::AddReplica { range: r.id, epoch: r.epoch, to }) {
                    shift(&mut load, r, None, to);
                }
            }
        }
    }

    // 2. Split (a range of one hash slot cannot: asking its leader for a middle key would only
    // scan it again and again).
    for r in view.ranges.iter().filter(|r| crate::directory::splittable(&r.start, &r.end)) {
        let reason = if r.bytes > cfg.split_bytes {
            Some(SplitReason::Size)
        } else if r.qps > cfg.split_qps && !r.no_load_split {
            Some(SplitReason::Load)
        } else {
            None
        };
        if let Some(reason) = reason {
            p.push(Move::Split { range: r.id, epoch: r.epoch, reason });
        }
    }

    // 3. Merge.
    for pair in view.ranges.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let small_cold =
            |r: &RangeView| r.bytes < cfg.merge_bytes && r.qps < cfg.merge_qps && r.cold_ms >= cfg.merge_delay_ms;
        let same_replicas = {
            let (mut x, mut y) = (a.replicas.clone(), b.replicas.clone());
            x.sort_unstable();
            y.sort_unstable();
            x == y
        };
        if a.end == b.start
            && !cfg.keep.contains(&a.end)
            && small_cold(a)
            && small_cold(b)
            && a.bytes + b.bytes < cfg.split_bytes / 2
            && same_replicas
            && !a.has_learners()
            && !b.has_learners()
        {
            p.push(Move::Merge { left: a.id, right: b.id });
        }
    }

    // 4. Rebalance replicas: by count, then by bytes.
    while !p.full() {
        let Some((&max_id, max)) = load.iter().max_by_key(|(id, l)| (l.replicas, l.bytes, std::cmp::Reverse(**id)))
        else {
            break;
        };
        let Some((&min_id, min)) = load.iter().min_by_key(|(id, l)| (l.replicas, l.bytes, **id)) else { break };
        if max.replicas - min.replicas <= 1 {
            break;
        }
        // The smallest range the fuller node holds and the emptier one does not.
        let cand = view
            .ranges
            .iter()
            .filter(|r| r.replicas.contains(&max_id) && !r.replicas.contains(&min_id) && !p.busy.contains(&r.id))
            .min_by_key(|r| (r.bytes, r.id));
        let Some(r) = cand else { break };
        p.push(Move::Relocate { range: r.id, epoch: r.epoch, from: max_id, to: min_id });
        shift(&mut load, r, Some(max_id), min_id);
    }
    let n_live = load.len().max(1) as f64;
    let mean = load.values().map(|l| l.bytes as f64).sum::<f64>() / n_live;
    while !p.full() && mean > 0.0 {
        let Some((&max_id, max)) = load.iter().max_by_key(|(id, l)| (l.bytes, std::cmp::Reverse(**id))) else { break };
        if (max.bytes as f64) <= mean * (1.0 + cfg.bytes_tolerance) {
            break;
        }
        let Some((&min_id, min)) = load.iter().min_by_key(|(id, l)| (l.bytes, **id)) else { break };
        let gap = max.bytes - min.bytes;
        // The largest range that narrows the gap (moving more than the gap would widen it).
        let cand = view
            .ranges
            .iter()
            .filter(|r| r.replicas.contains(&max_id) && !r.replicas.contains(&min_id) && !p.busy.contains(&r.id))
            .filter(|r| (r.bytes as i64) > 0 && (r.bytes as i64) < gap)
            .max_by_key(|r| (r.bytes, std::cmp::Reverse(r.id)));
        let Some(r) = cand else { break };
        p.push(Move::Relocate { range: r.id, epoch: r.epoch, from: max_id, to: min_id });
        shift(&mut load, r, Some(max_id), min_id);
    }

    // 5. Leader load.
    let mean_qps = load.values().map(|l| l.leader_qps).sum::<f64>() / n_live;
    while !p.full() && mean_qps > 0.0 {
        let Some((&max_id, max)) = load.iter().max_by(|a, b| a.1.leader_qps.total_cmp(&b.1.leader_qps)) else {
            break;
        };
        if max.leader_qps <= mean_qps * (1.0 + cfg.leader_qps_tolerance) {
            break;
        }
        let max_qps = max.leader_qps;
        // The busy range whose move narrows the gap most: to its replica node serving the
        // fewest, which must stay within the tolerance after it (else, with loads that cannot
        // be evened, as four equal ranges on three nodes, the range would only swap roles back
        // and forth with the noise of the figures).
        let cand = view
            .ranges
            .iter()
            .filter(|r| r.leader == Some(max_id) && r.qps >= cfg.merge_qps && !p.busy.contains(&r.id))
            .filter_map(|r| {
                let (to, to_qps) = r
                    .replicas
                    .iter()
                    .filter(|n| **n != max_id)
                    .filter_map(|n| load.get(n).map(|l| (*n, l.leader_qps)))
                    .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))?;
                let gap = max_qps - to_qps;
                let fits = to_qps + r.qps <= mean_qps * (1.0 + cfg.leader_qps_tolerance);
                (r.qps < gap && fits).then(|| (gap - 2.0 * r.qps).abs()).map(|left| (left, r, to))
            })
            .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.id.cmp(&b.1.id)));
        let Some((_, r, to)) = cand else { break };
        p.push(Move::TransferLeader { range: r.id, epoch: r.epoch, to });
        shift_leader(&mut load, r, max_id, to);
    }

    // 6. Leader counts: within each subsystem, then over all ranges.
    let mut by_class: BTreeMap<(Option<u8>, u64), i64> = BTreeMap::new();
    for r in &view.ranges {
        if let Some(n) = r.leader.filter(|n| load.contains_key(n)) {
            *by_class.entry((class(r), n)).or_default() += 1;
        }
    }
    let classes: BTreeSet<Option<u8>> = view.ranges.iter().map(class).collect();
    for c in classes {
        let in_class: Vec<&RangeView> = view.ranges.iter().filter(|r| class(r) == c).collect();
        even_leaders(&mut p, &mut load, &mut by_class, &in_class, |_, _| true);
    }
    let all: Vec<&RangeView> = view.ranges.iter().collect();
    // A move over all ranges goes only to a node leading fewer of the range's subsystem than
    // the node it leaves: if that subsystem was even (within one), it stays so.
    even_leaders(&mut p, &mut load, &mut by_class, &all, |counts, (r, from, to)| {
        let c = class(r);
        counts.get(&(c, to)).copied().unwrap_or(0) < counts.get(&(c, from)).copied().unwrap_or(0)
    });
    p.moves
}

/// A range's subsystem, for leader counts: the first byte of its start key (none for the
/// range at the start of the keyspace).
fn class(r: &RangeView) -> Option<u8> {
    r.start.first().copied()
}

/// Leaders per (subsystem, node).
type ClassCounts = BTreeMap<(Option<u8>, u64), i64>;

/// Rule 6 over `ranges`: while the live node leading the most of them leads more than one more
/// than a replica node of one of its ranges, that range's leadership goes there (its coldest
/// such range, to the replica node leading fewest), if `allowed(counts, (range, from, to))`.
fn even_leaders(
    p: &mut Plan,
    load: &mut BTreeMap<u64, Load>,
    counts: &mut ClassCounts,
    ranges: &[&RangeView],
    allowed: impl Fn(&ClassCounts, (&RangeView, u64, u64)) -> bool,
) {
    while !p.full() {
        let mut led: BTreeMap<u64, i64> = load.keys().map(|n| (*n, 0)).collect();
        for r in ranges {
            let leader = if p.busy.contains(&r.id) { planned_leader(p, r) } else { r.leader };
            if let Some(c) = leader.and_then(|n| led.get_mut(&n)) {
                *c += 1;
            }
        }
        let Some((&max_id, &max_leaders)) = led.iter().max_by_key(|(id, c)| (**c, std::cmp::Reverse(**id))) else {
            break;
        };
        let cand = ranges
            .iter()
            .filter(|r| r.leader == Some(max_id) && !p.busy.contains(&r.id))
            .filter_map(|r| {
                r.replicas
                    .iter()
                    .filter(|n| **n != max_id && allowed(counts, (r, max_id, **n)))
                    .filter_map(|n| led.get(n).map(|c| (*c, *n)))
                    .min()
                    .filter(|(c, _)| max_leaders - c > 1)
                    .map(|(c, n)| (c, *r, n))
            })
            .min_by(|(la, ra, na), (lb, rb, nb)| {
                ra.qps.total_cmp(&rb.qps).then(la.cmp(lb)).then(ra.id.cmp(&rb.id)).then(na.cmp(nb))
            });
        let Some((_, r, to)) = cand else { break };
        p.push(Move::TransferLeader { range: r.id, epoch: r.epoch, to });
        shift_leader(load, r, max_id, to);
        *counts.entry((class(r), max_id)).or_default() -= 1;
        *counts.entry((class(r), to)).or_default() += 1;
    }
}

/// The leader `r` will have once the moves planned so far are made.
fn planned_leader(p: &Plan, r: &RangeView) -> Option<u64> {
    p.moves
        .iter()
        .rev()
        .find_map(|m| match *m {
            Move::TransferLeader { range, to, .. } if range == r.id => Some(Some(to)),
            _ => None,
        })
        .unwrap_or(r.leader)
}

/// Range `r`'s leadership, and the requests it serves, go from node `from` to node `to`.
fn shift_leader(load: &mut BTreeMap<u64, Load>, r: &RangeView, from: u64, to: u64) {
    for (n, q) in [(from, -r.qps), (to, r.qps)] {
        load.get_mut(&n).expect("live").leader_qps += q;
    }
}

fn shift(load: &mut BTreeMap<u64, Load>, r: &RangeView, from: Option<u64>, to: u64) {
    if let Some(l) = from.and_then(|f| load.get_mut(&f)) {
        l.replicas -= 1;
        l.bytes -= r.bytes as i64;
    }
    if let Some(l) = load.get_mut(&to) {
        l.replicas += 1;
        l.bytes += r.bytes as i64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn node(id: u64) -> NodeView {
        NodeView { id, silent_ms: 0, draining: false }
    }

    fn range(id: u64, replicas: &[u64], bytes: u64) -> RangeView {
        RangeView {
            id,
            epoch: 1,
            start: vec![id as u8],
            end: vec![id as u8 + 1],
            replicas: replicas.to_vec(),
            leader: replicas.first().copied(),
            bytes,
            qps: 500.0,
            idle_ms: 0,
            cold_ms: 0,
            no_load_split: false,
            frozen: false,
            learners: vec![],
        }
    }

    fn cfg() -> Config {
        Config::default()
    }

    /// Applies relocations and additions to the view, as the task would.
    fn apply(view: &mut View, moves: &[Move]) {
        for m in moves {
            match *m {
                Move::Relocate { range, from, to, .. } => {
                    let r = view.ranges.iter_mut().find(|r| r.id == range).unwrap();
                    r.replicas.retain(|n| *n != from);
                    r.replicas.push(to);
                    if r.leader == Some(from) {
                        r.leader = r.replicas.first().copied();
                    }
                }
                Move::AddReplica { range, to, .. } => {
                    view.ranges.iter_mut().find(|r| r.id == range).unwrap().replicas.push(to)
                }
                Move::TransferLeader { range, to, .. } => {
                    view.ranges.iter_mut().find(|r| r.id == range).unwrap().leader = Some(to)
                }
                _ => {}
            }
        }
    }

    /// A range left frozen by a merge cut short is merged into its left neighbour at the next
    /// pass, and nothing else is done to it; if its nodes differ from its neighbour's, a
    /// replica moves to match first.
    #[test]
    fn a_frozen_range_is_merged_into_its_left_neighbour_first() {
        let mut frozen = range(2, &[2, 3, 1], 70 * MB);
        frozen.frozen = true;
        frozen.qps = 10_000.0;
        let view = View {
            nodes: (1..=4).map(node).collect(),
            ranges: vec![range(1, &[1, 2, 3], 70 * MB), frozen.clone(), range(3, &[1, 2, 3], MB)],
        };
        let moves = plan(&view, &cfg());
        assert_eq!(moves.first(), Some(&Move::Merge { left: 1, right: 2 }), "{moves:?}");
        assert!(moves.iter().skip(1).all(|m| !m.ranges().contains(&2)), "{moves:?}");
        // Its left neighbour's replica on node 3 moved to node 4 since the freeze: the frozen
        // range's follows, and the neighbour stays as it is.
        let view = View {
            nodes: (1..=4).map(node).collect(),
            ranges: vec![range(1, &[1, 2, 4], 70 * MB), frozen.clone(), range(3, &[1, 2, 3], MB)],
        };
        let moves = plan(&view, &cfg());
        assert_eq!(moves.first(), Some(&Move::Relocate { range: 2, epoch: 1, from: 3, to: 4 }), "{moves:?}");
        assert!(moves.iter().skip(1).all(|m| !m.ranges().contains(&2) && !m.ranges().contains(&1)), "{moves:?}");
        // ... unless node 4 is dead: the neighbour is repaired first, not followed there.
        let mut dead = node(4);
        dead.silent_ms = cfg().dead_node_timeout_ms;
        let view = View {
            nodes: vec![node(1), node(2), node(3), dead, node(5)],
            ranges: vec![range(1, &[1, 2, 4], 70 * MB), frozen.clone(), range(3, &[1, 2, 3], MB)],
        };
        let moves = plan(&view, &cfg());
        assert!(moves.iter().all(|m| !matches!(m, Move::Relocate { range: 2, .. })), "{moves:?}");
        assert!(moves.iter().any(|m| matches!(m, Move::Relocate { range: 1, from: 4, .. })), "{moves:?}");
        // A frozen range with fewer replicas than its neighbour gets one by repair.
        let mut short = frozen;
        short.replicas = vec![2, 1];
        let view = View {
            nodes: (1..=4).map(node).collect(),
            ranges: vec![range(1, &[1, 2, 3], 70 * MB), short, range(3, &[1, 2, 3], MB)],
        };
        let moves = plan(&view, &cfg());
        assert!(moves.iter().any(|m| matches!(m, Move::AddReplica { range: 2, .. })), "{moves:?}");
    }

    /// A learner left over from a move cut short (its leader died before promoting it) is
    /// removed once kept longer than any move keeps one, and only that one; until then, and
    /// while it is there, a merge that needs the range waits (it would be refused), and its
    /// left neighbour stays as it is.
    #[test]
    fn a_learner_left_over_is_removed_and_merges_wait_for_it() {
        let cfg = Config { merge_delay_ms: 0, ..cfg() };
        let mut frozen = range(2, &[1, 2, 3], MB);
        frozen.frozen = true;
        frozen.learners = vec![(4, cfg.learner_timeout_ms - 1), (5, 10)];
        let mut cold = range(3, &[1, 2, 3], MB);
        let mut colder = range(4, &[1, 2, 3], MB);
        for r in [&mut cold, &mut colder] {
            (r.qps, r.cold_ms) = (0.0, cfg.merge_delay_ms);
        }
        colder.learners = vec![(4, 0)];
        let mut view = View {
            // Nodes 4 and 5 hold nothing: rebalancing would move replicas of any range free to.
            nodes: (1..=5).map(node).collect(),
            ranges: vec![range(1, &[1, 2, 3], 10 * MB), frozen, cold, colder],
        };
        // A move may still be under way: nothing is removed, nothing merges into or with a
        // range that has a learner, and the frozen range's left neighbour is not moved.
        let moves = plan(&view, &cfg);
        assert!(moves.iter().all(|m| !matches!(m, Move::DropLearners { .. } | Move::Merge { .. })), "{moves:?}");
        assert!(moves.iter().all(|m| !m.ranges().contains(&2) && !m.ranges().contains(&1)), "{moves:?}");
        // Kept too long: that learner is removed (not the other), and the frozen range merges
        // once it has none.
        view.ranges[1].learners[0].1 = cfg.learner_timeout_ms;
        let moves = plan(&view, &cfg);
        assert_eq!(moves.first(), Some(&Move::DropLearners { range: 2, epoch: 1, nodes: vec![4] }), "{moves:?}");
        assert!(moves.iter().skip(1).all(|m| !m.ranges().contains(&2)), "{moves:?}");
        view.ranges[1].learners.clear();
        view.ranges[3].learners.clear();
        let moves = plan(&view, &cfg);
        assert_eq!(moves.first(), Some(&Move::Merge { left: 1, right: 2 }), "{moves:?}");
        assert!(moves.contains(&Move::Merge { left: 3, right: 4 }), "{moves:?}");
    }

    #[test]
    fn a_balanced_cluster_needs_nothing() {
        let view = View {
            nodes: (1..=3).map(node).collect(),
            ranges: vec![range(1, &[1, 2, 3], 10 * MB), range(2, &[2, 3, 1], 10 * MB), range(3, &[3, 1, 2], 10 * MB)],
        };
        assert_eq!(plan(&view, &cfg()), vec![]);
    }

    #[test]
    fn big_and_hot_ranges_split() {
        let mut hot = range(2, &[2, 3, 1], MB);
        hot.qps = 10_000.0;
        let view = View {
            nodes: (1..=3).map(node).collect(),
            ranges: vec![range(1, &[1, 2, 3], 65 * MB), hot, range(3, &[3, 1, 2], 64 * MB)],
        };
        assert_eq!(
            plan(&view, &cfg()),
            vec![
                Move::Split { range: 1, epoch: 1, reason: SplitReason::Size },
                Move::Split { range: 2, epoch: 1, reason: SplitReason::Load },
            ]
        );
    }

    /// A hot range whose split by load found no boundary (its load on one hash slot) is not
    /// planned a split again, so its leadership can still move for load: a planned split took
    /// the range's one move of the plan at every pass.
    #[test]
    fn a_hot_range_no_boundary_divides_is_not_split_again_and_its_leader_may_move() {
        let mut rs: Vec<RangeView> = (1..=4).map(|id| range(id, &[1, 2, 3], MB)).collect();
        for (r, (leader, qps)) in rs.iter_mut().zip([(1, 3000.0), (1, 3000.0), (2, 0.0), (3, 0.0)]) {
            (r.leader, r.qps) = (Some(leader), qps);
        }
        let cfg = Config { leader_qps_tolerance: 1.0, ..cfg() };
        let mut view = View { nodes: (1..=3).map(node).collect(), ranges: rs };
        let split = |r: u64| Move::Split { range: r, epoch: 1, reason: SplitReason::Load };
        let moves = plan(&view, &cfg);
        assert!(moves.contains(&split(1)) && moves.contains(&split(2)), "{moves:?}");
        assert!(!moves.iter().any(|m| matches!(m, Move::TransferLeader { .. })), "{moves:?}");
        view.ranges[0].no_load_split = true;
        let moves = plan(&view, &cfg);
        assert!(!moves.contains(&split(1)) && moves.contains(&split(2)), "{moves:?}");
        assert!(moves.iter().any(|m| matches!(m, Move::TransferLeader { range: 1, .. })), "{moves:?}");
    }

    #[test]
    fn a_hot_range_of_one_hash_slot_does_not_split() {
        use crate::directory::slot_start;
        let mut hot = range(2, &[2, 3, 1], 65 * MB);
        hot.qps = 10_000.0;
        (hot.start, hot.end) = (slot_start(7), slot_start(8));
        let mut two = hot.clone();
        (two.id, two.start, two.end) = (3, slot_start(8), slot_start(10));
        (two.replicas, two.leader) = (vec![3, 1, 2], Some(3));
        let view = View { nodes: (1..=3).map(node).collect(), ranges: vec![hot, two] };
        assert_eq!(plan(&view, &cfg()), vec![Move::Split { range: 3, epoch: 1, reason: SplitReason::Size }]);
    }

    #[test]
    fn small_cold_neighbours_with_the_same_replicas_merge() {
        let mut rs = vec![
            range(1, &[1, 2, 3], MB),
            range(2, &[3, 2, 1], MB),
            range(3, &[1, 2, 4], MB),
            range(4, &[1, 2, 4], MB),
        ];
        for r in &mut rs {
            (r.qps, r.cold_ms) = (1.0, cfg().merge_delay_ms);
        }
        // A hot one does not merge.
        (rs[3].qps, rs[3].cold_ms) = (1000.0, 0);
        let mut view = View { nodes: (1..=4).map(node).collect(), ranges: rs };
        // Not before both were cold for the delay: a load that paused may come back.
        view.ranges[1].cold_ms = cfg().merge_delay_ms - 1;
        assert!(!plan(&view, &cfg()).iter().any(|m| matches!(m, Move::Merge { .. })), "{:?}", plan(&view, &cfg()));
        view.ranges[1].cold_ms = cfg().merge_delay_ms;
        let moves = plan(&view, &cfg());
        assert!(moves.contains(&Move::Merge { left: 1, right: 2 }), "{moves:?}");
        // Not across a boundary to keep.
        let keep = Config { keep: vec![vec![2]], ..cfg() };
        assert!(!plan(&view, &keep).iter().any(|m| matches!(m, Move::Merge { .. })), "{:?}", plan(&view, &keep));
        // 2 and 3 have different replicas; 3 and 4: 4 is hot.
        assert!(
            !moves.iter().any(|m| matches!(m, Move::Merge { left: 2, .. } | Move::Merge { left: 3, .. })),
            "{moves:?}"
        );
    }

    #[test]
    fn replicas_of_a_dead_node_are_recreated_elsewhere_only_after_the_timeout() {
        let mut nodes: Vec<_> = (1..=4).map(node).collect();
        nodes[2].silent_ms = 60_000; // node 3: down a minute, not yet dead
        let view = View { nodes: nodes.clone(), ranges: vec![range(1, &[1, 2, 3], MB), range(2, &[2, 3, 4], MB)] };
        assert!(
            !plan(&view, &cfg()).iter().any(|m| matches!(m, Move::Relocate { from: 3, .. })),
            "a node that may come back keeps its replicas"
        );
        nodes[2].silent_ms = 5 * 60 * 1000;
        let view = View { nodes, ..view };
        let moves = plan(&view, &cfg());
        assert!(moves.contains(&Move::Relocate { range: 1, epoch: 1, from: 3, to: 4 }), "{moves:?}");
        // Range 2 already has node 4; node 1 is the only live node left for it.
        assert!(moves.contains(&Move::Relocate { range: 2, epoch: 1, from: 3, to: 1 }), "{moves:?}");
    }

    #[test]
    fn a_draining_node_is_emptied_and_under_replicated_ranges_grow() {
        let mut nodes: Vec<_> = (1..=4).map(node).collect();
        nodes[0].draining = true;
        let view = View { nodes, ranges: vec![range(1, &[1, 2, 3], MB), range(2, &[2, 3], MB)] };
        let moves = plan(&view, &cfg());
        assert_eq!(moves[0], Move::Relocate { range: 1, epoch: 1, from: 1, to: 4 });
        assert_eq!(moves[1], Move::AddReplica { range: 2, epoch: 1, to: 4 });
    }

    #[test]
    fn new_nodes_receive_replicas_until_counts_and_bytes_even_out() {
        // Three loaded nodes, two new ones.
        let mut view = View {
            nodes: (1..=5).map(node).collect(),
            ranges: (1..=30).map(|i| range(i, &[1, 2, 3], (i % 7 + 1) * MB)).collect(),
        };
        let mut rounds = 0;
        loop {
            let moves = plan(&view, &Config { max_moves: 4, ..cfg() });
            let relocations: Vec<_> = moves.iter().filter(|m| matches!(m, Move::Relocate { .. })).cloned().collect();
            if relocations.is_empty() {
                break;
            }
            apply(&mut view, &relocations);
            rounds += 1;
            assert!(rounds < 100, "placement does not converge");
        }
        let mut counts = BTreeMap::new();
        let mut bytes = BTreeMap::new();
        for r in &view.ranges {
            assert_eq!(r.replicas.len(), 3);
            for n in &r.replicas {
                *counts.entry(*n).or_insert(0) += 1;
                *bytes.entry(*n).or_insert(0u64) += r.bytes;
            }
        }
        let (lo, hi) = (counts.values().min().unwrap(), counts.values().max().unwrap());
        assert!(hi - lo <= 2, "replica counts {counts:?}");
        let mean = bytes.values().sum::<u64>() as f64 / bytes.len() as f64;
        for (n, b) in &bytes {
            assert!((*b as f64 - mean).abs() <= mean * 0.2 + 7.0 * MB as f64, "node {n} holds {b} bytes, mean {mean}");
        }
        assert_eq!(counts.len(), 5, "every node holds replicas");
    }

    #[test]
    fn leaders_spread_over_the_replicas() {
        let mut view =
            View { nodes: (1..=3).map(node).collect(), ranges: (1..=9).map(|i| range(i, &[1, 2, 3], MB)).collect() };
        // Every leader on node 1.
        let moves = plan(&view, &cfg());
        assert!(moves.iter().all(|m| matches!(m, Move::TransferLeader { .. })), "{moves:?}");
        apply(&mut view, &moves);
        let mut leaders = BTreeMap::new();
        for r in &view.ranges {
            *leaders.entry(r.leader.unwrap()).or_insert(0) += 1;
        }
        assert_eq!(leaders.values().copied().collect::<Vec<_>>(), vec![3, 3, 3], "{leaders:?}");
        assert!(plan(&view, &cfg()).is_empty());
    }

    /// Leaders per node, and the requests they serve.
    fn leader_load(view: &View) -> BTreeMap<u64, (usize, f64)> {
        let mut m: BTreeMap<u64, (usize, f64)> = view.nodes.iter().map(|n| (n.id, (0, 0.0))).collect();
        for r in &view.ranges {
            let e = m.get_mut(&r.leader.unwrap()).unwrap();
            e.0 += 1;
            e.1 += r.qps;
        }
        m
    }

    /// Ranges of one hash slot each (they cannot split), of 20 MiB (they do not merge), cold,
    /// led by `leaders` in turn.
    fn slot_ranges(leaders: &[u64]) -> Vec<RangeView> {
        use crate::directory::slot_start;
        (0..leaders.len())
            .map(|i| {
                let mut r = range(i as u64 + 1, &[1, 2, 3], 20 * MB);
                (r.start, r.end) = (slot_start(i as u16), slot_start(i as u16 + 1));
                (r.leader, r.qps) = (Some(leaders[i]), 0.0);
                r
            })
            .collect()
    }

    /// Three hot ranges (one per redis-benchmark --cluster master, say) and six cold ones:
    /// counts even, but two hot ones on node 1 and none on node 3.
    #[test]
    fn hot_leaders_spread_by_load_and_counts_stay_even() {
        let mut ranges = slot_ranges(&[1, 1, 1, 2, 2, 2, 3, 3, 3]);
        ranges[0].qps = 15_000.0;
        ranges[1].qps = 14_000.0;
        ranges[3].qps = 16_000.0;
        let mut view = View { nodes: (1..=3).map(node).collect(), ranges };
        let moves = plan(&view, &cfg());
        assert!(!moves.is_empty() && moves.iter().all(|m| matches!(m, Move::TransferLeader { .. })), "{moves:?}");
        apply(&mut view, &moves);
        let load = leader_load(&view);
        for (n, (count, qps)) in &load {
            assert!((14_000.0..=16_000.0).contains(qps), "node {n} serves {qps}/s: {load:?}");
            assert!((2..=4).contains(count), "node {n} leads {count}: {load:?}");
        }
        // Stable: the next plan (same load) changes nothing.
        assert_eq!(plan(&view, &cfg()), vec![], "{load:?}");
    }

    /// The layout a fresh 3-node cluster starts with (the keys before the Redis prefix, four
    /// Redis ranges, the keys after them), idle, settled as `bench-redis` once saw it: leader
    /// counts even overall, but node 3 leading no Redis range. Counts even out within each
    /// subsystem first, then overall, and stay so.
    #[test]
    fn leader_counts_even_within_each_subsystem() {
        use crate::directory::slot_start;
        let mut redis = slot_ranges(&[1, 1, 2, 2]);
        for (i, r) in redis.iter_mut().enumerate() {
            r.id = i as u64 + 2;
            r.end = if i == 3 { vec![crate::directory::PREFIX_REDIS + 1] } else { r.end.clone() };
        }
        let mut before = range(1, &[1, 2, 3], MB);
        (before.start, before.end, before.leader, before.qps) = (vec![], slot_start(0), Some(3), 0.0);
        let mut after = range(6, &[1, 2, 3], MB);
        (after.start, after.end, after.leader, after.qps) =
            (vec![crate::directory::PREFIX_REDIS + 1], vec![], Some(3), 0.0);
        let mut ranges = vec![before];
        ranges.extend(redis);
        ranges.push(after);
        let mut view = View { nodes: (1..=3).map(node).collect(), ranges };
        // Even overall already: the old rule planned nothing here.
        assert!(leader_load(&view).values().all(|(c, _)| *c == 2));
        let moves = plan(&view, &cfg());
        assert!(!moves.is_empty() && moves.iter().all(|m| matches!(m, Move::TransferLeader { .. })), "{moves:?}");
        apply(&mut view, &moves);
        let redis_led = |view: &View, n: u64| {
            view.ranges
                .iter()
                .filter(|r| class(r) == Some(crate::directory::PREFIX_REDIS) && r.leader == Some(n))
                .count()
        };
        for n in 1..=3 {
            assert!((1..=2).contains(&redis_led(&view, n)), "node {n}: {:?}", view.ranges);
        }
        assert!(leader_load(&view).values().all(|(c, _)| *c == 2), "{:?}", leader_load(&view));
        assert_eq!(plan(&view, &cfg()), vec![]);
    }

    /// Load within the tolerance, or too small to matter (cold ranges), moves nothing; and
    /// a single hot range that is the whole difference is not passed around.
    #[test]
    fn leader_load_within_tolerance_or_cold_stays() {
        let mut ranges = slot_ranges(&[1, 2, 3]);
        for (i, r) in ranges.iter_mut().enumerate() {
            r.qps = [10_000.0, 9_000.0, 11_000.0][i];
        }
        let view = View { nodes: (1..=3).map(node).collect(), ranges: ranges.clone() };
        assert_eq!(plan(&view, &cfg()), vec![]);
        // Cold: 50 requests/s on one node, none elsewhere.
        for (i, r) in ranges.iter_mut().enumerate() {
            r.qps = if i == 0 { 50.0 } else { 0.0 };
        }
        let view = View { nodes: (1..=3).map(node).collect(), ranges: ranges.clone() };
        assert_eq!(plan(&view, &cfg()), vec![]);
        // Four equally busy ranges on three nodes, with noise: one node leads two whatever
        // happens, and no leader moves back and forth.
        let mut four = slot_ranges(&[1, 1, 2, 3]);
        for (noise, r) in [1.1, 0.9, 0.9, 0.9].iter().zip(four.iter_mut()) {
            r.qps = 5_000.0 * noise;
        }
        let view4 = View { nodes: (1..=3).map(node).collect(), ranges: four };
        assert_eq!(plan(&view4, &cfg()), vec![]);
        // One hot range: wherever it is, some node serves all of it; moving it gains nothing.
        ranges[0].qps = 20_000.0;
        let view = View { nodes: (1..=3).map(node).collect(), ranges };
        assert_eq!(plan(&view, &cfg()), vec![]);
    }

    #[test]
    fn a_plan_is_bounded_and_touches_each_range_once() {
        let view = View {
            nodes: (1..=6).map(node).collect(),
            ranges: (1..=50).map(|i| range(i, &[1, 2, 3], 100 * MB)).collect(),
        };
        let moves = plan(&view, &Config { max_moves: 5, ..cfg() });
        assert_eq!(moves.len(), 5);
        let mut seen = BTreeSet::new();
        for m in &moves {
            for r in m.ranges() {
                assert!(seen.insert(r), "range {r} moved twice in one plan: {moves:?}");
            }
        }
    }

    #[test]
    fn nothing_goes_to_a_node_that_is_not_live() {
        let mut nodes: Vec<_> = (1..=4).map(node).collect();
        nodes[3].silent_ms = 20_000; // node 4 is down (not yet dead)
        let view = View { nodes, ranges: (1..=6).map(|i| range(i, &[1, 2, 3], MB)).collect() };
        for m in plan(&view, &cfg()) {
            match m {
                Move::Relocate { to, .. } | Move::AddReplica { to, .. } | Move::TransferLeader { to, .. } => {
                    assert_ne!(to, 4, "{m:?}")
                }
                _ => {}
            }
        }
    }
}
