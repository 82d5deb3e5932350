//! The placement driver: on the meta leader, every interval, it asks every node for its range
//! replicas' figures (the answer is also the node's liveness heartbeat: one per node, however
//! many ranges it holds), builds a [`View`], calls the pure [`plan`] and carries out its moves
//! one after the other through the data tier's operator changes (the same as `cairn range
//! split|move|transfer-leader`).
//!
//! Carried out: splits (by size at the middle key the range's leader reports, by load where
//! the request keys it sampled divide best, either moved to a legal boundary; a load no
//! boundary divides is not split), relocations (rebalance, and repair of a dead or draining node's
//! replicas), replicas added to ranges with fewer than the replication factor (a cluster
//! started on fewer nodes, grown since), merges of small cold neighbours and leader transfers;
//! a draining data node left with no replica leaves the meta group.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use cairn_cluster::placement::Config;
use cairn_cluster::placement::{plan, Move, NodeView, RangeView, SplitReason, View};
use cairn_raft::range::ReplicaStats;
use parking_lot::Mutex;

use crate::data::DataTier;

/// How long a node's stats call may take.
const STATS_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Placer {
    tier: Arc<DataTier>,
    cfg: Config,
    /// When each node last answered (since this node began driving placement).
    heard: Mutex<HashMap<u64, Instant>>,
    /// When this node began driving placement (a node not heard since counts as silent from
    /// then: a new meta leader does not declare nodes dead at once).
    driving_since: Mutex<Option<Instant>>,
    /// Since when each range, at its epoch, has been seen cold (under `merge_qps`) at every
    /// pass: how long it must stay so before it merges (`merge_delay_ms`). A split or merge
    /// changes the epoch, so a range just split starts over.
    cold_since: Mutex<HashMap<(u64, u64), Instant>>,
    /// Ranges (at an epoch) whose split by load found no boundary dividing the load, and
    /// when: not asked again for [`NO_LOAD_SPLIT_FOR`], so that the plan does not spend a move
    /// on them at every pass (a range with a move planned gets no other, not even the leader
    /// transfer that is all a load on one hash slot can get).
    no_load_split: Mutex<HashMap<(u64, u64), Instant>>,
    /// Since when each range has been seen with a learner on each node at every pass (`plan`
    /// removes those kept longer than any move keeps one).
    learners_since: Mutex<HashMap<(u64, u64), Instant>>,
}

/// How long a range whose load no boundary divided is not split by load again (at the same
/// epoch): its load may have spread since.
const NO_LOAD_SPLIT_FOR: Duration = Duration::from_secs(30);

impl Placer {
    /// Starts driving placement whenever this node leads the meta group, for as long as the
    /// process runs.
    pub fn start(tier: Arc<DataTier>, cfg: Config, every: Duration) {
        let p = Placer {
            tier,
            cfg,
            heard: Mutex::new(HashMap::new()),
            driving_since: Mutex::new(None),
            cold_since: Mutex::new(HashMap::new()),
            no_load_split: Mutex::new(HashMap::new()),
            learners_since: Mutex::new(HashMap::new()),
        };
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                p.tick().await;
            }
        });
    }

    async fn tick(&self) {
        if !self.tier.is_meta_leader() {
            *self.driving_since.lock() = None;
            // Cold clocks are this leadership's: a later one starts them again.
            self.cold_since.lock().clear();
            self.no_load_split.lock().clear();
            self.learners_since.lock().clear();
            return;
        }
        let since = *self.driving_since.lock().get_or_insert_with(Instant::now);
        let Some(view) = self.view(since).await else { return };
        let moves = plan(&view, &self.cfg);
        for m in moves {
            if !self.tier.is_meta_leader() {
                return;
            }
            self.carry_out(&view, m).await;
        }
        self.tier.finish_removals().await;
    }

    /// Every node's figures, and the view they make with the directory.
    async fn view(&self, since: Instant) -> Option<View> {
        let dir = self.tier.directory()?;
        let nodes = self.tier.nodes();
        let peers = self.tier.peer_nodes();
        let asks = nodes.keys().map(|id| {
            let peer = peers.get(id).cloned().unwrap_or_default();
            async move { (*id, self.tier.host().stats_of(*id, &peer, STATS_TIMEOUT).await) }
        });
        let answers = futures::future::join_all(asks).await;
        let now = Instant::now();
        let mut by_range: HashMap<u64, ReplicaStats> = HashMap::new();
        {
            let mut heard = self.heard.lock();
            for (id, a) in answers {
                let Ok(stats) = a else { continue };
                heard.insert(id, now);
                for s in stats {
                    // The leader's own figures count (it serves the range's requests).
                    if s.leader == Some(id) {
                        by_range.insert(s.id, s);
                    } else {
                        by_range.entry(s.id).or_insert(s);
                    }
                }
            }
        }
        let heard = self.heard.lock().clone();
        let nodes = nodes
            .values()
            .map(|n| NodeView {
                id: n.id,
                silent_ms: now.duration_since(heard.get(&n.id).copied().unwrap_or(since)).as_millis() as u64,
                draining: n.draining,
            })
            .collect();
        let mut cold_since = self.cold_since.lock();
        let mut cold_now = HashMap::new();
        let mut no_load_split = self.no_load_split.lock();
        no_load_split.retain(|_, at| now.duration_since(*at) < NO_LOAD_SPLIT_FOR);
        let mut learners_since = self.learners_since.lock();
        let mut learners_now = HashMap::new();
        let ranges = dir
            .iter()
            .map(|d| {
                let s = by_range.get(&d.id);
                // A range no replica reported on is not known to be cold.
                let cold_ms = match s {
                    Some(s) if s.qps < self.cfg.merge_qps => {
                        let t = cold_since.get(&(d.id, d.epoch)).copied().unwrap_or(now);
                        cold_now.insert((d.id, d.epoch), t);
                        now.duration_since(t).as_millis() as u64
                    }
                    _ => 0,
                };
                let learners = d
                    .learners
                    .iter()
                    .map(|&n| {
                        let t = learners_since.get(&(d.id, n)).copied().unwrap_or(now);
                        learners_now.insert((d.id, n), t);
                        (n, now.duration_since(t).as_millis() as u64)
                    })
                    .collect();
                RangeView {
                    id: d.id,
                    epoch: d.epoch,
                    start: d.start.clone(),
                    end: d.end.clone(),
                    replicas: d.replicas.clone(),
                    leader: s.and_then(|s| s.leader),
                    bytes: s.map_or(0, |s| s.bytes),
                    qps: s.map_or(0.0, |s| s.qps),
                    idle_ms: s.map_or(0, |s| s.idle_ms),
                    cold_ms,
                    no_load_split: no_load_split.contains_key(&(d.id, d.epoch)),
                    frozen: s.is_some_and(|s| s.frozen),
                    learners,
                }
            })
            .collect();
        // Only the ranges cold now, at their current epochs, keep their clocks; and only the
        // learners there now, theirs.
        *cold_since = cold_now;
        *learners_since = learners_now;
        Some(View { nodes, ranges })
    }

    async fn carry_out(&self, view: &View, m: Move) {
        let r = match &m {
            Move::Split { range, epoch, reason: SplitReason::Size } => {
                tracing::info!(range, epoch, reason = "size", "placement: splitting a range");
                self.tier.split_range(*range, *epoch).await.map(|_| ())
            }
            Move::Split { range, epoch, reason: SplitReason::Load } => {
                match self.tier.split_range_by_load(*range, *epoch).await {
                    Ok(Some(new)) => {
                        tracing::info!(range, epoch, new, reason = "load", "placement: split a range");
                        Ok(())
                    }
                    // A load on one key or hash slot.
                    Ok(None) => {
                        tracing::debug!(range, epoch, "placement: no boundary divides the range's load");
                        self.no_load_split.lock().insert((*range, *epoch), Instant::now());
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            Move::Relocate { range, from, to, .. } => {
                tracing::info!(range, from = %format!("{from:x}"), to = %format!("{to:x}"), "placement: moving a replica");
                self.tier.move_replica(*range, *from, *to).await
            }
            Move::Merge { left, right } => {
                tracing::info!(left, right, "placement: merging two small, cold ranges");
                self.tier.merge(*left, *right).await
            }
            Move::DropLearners { range, epoch, nodes } => {
                tracing::info!(range, epoch, ?nodes, "placement: removing learners left over from moves cut short");
                self.tier.drop_learners(*range, *epoch, nodes.clone()).await
            }
            Move::AddReplica { range, to, .. } => {
                tracing::info!(range, to = %format!("{to:x}"), "placement: adding a replica to an under-replicated range");
                self.tier.add_replica(*range, *to).await
            }
            Move::TransferLeader { range, to, .. } => {
                // A leader known to the view only: the range's replicas must still hold it.
                if !view.ranges.iter().any(|r| r.id == *range && r.replicas.contains(to)) {
                    return;
                }
                tracing::debug!(range, to = %format!("{to:x}"), "placement: moving leadership");
                self.tier.transfer_leader(*range, *to).await
            }
        };
        if let Err(e) = r {
            tracing::warn!(?m, error = %e, "placement: move failed");
        }
    }
}
