//! The fault schedule: a pure function of the seed, so a failing run is replayed exactly by
//! running again with the same seed.
//!
//! One fault at a time: a fault starts, lasts a few seconds, is healed, and the cluster gets a
//! quiet gap before the next one (the shape of Jepsen's default nemesis schedule). Targets that
//! depend on the cluster's state at that moment ("the leader") are resolved when the step runs;
//! everything random is drawn here.

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// A kind of fault the harness can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Nemesis {
    /// SIGKILL a member (often the leader), restart it later.
    Kill,
    /// SIGSTOP a member longer than the election timeout, then SIGCONT.
    Pause,
    /// Cut links between members: isolate the leader, random halves, a majority ring, a bridge.
    Partition,
    /// Slow every link of one member (often the leader) by tens to hundreds of milliseconds.
    Delay,
    /// Skew one member's clock: jump it forward or back, or make it run fast or slow
    /// (0.5x to 2x); lease and token expiry and command stamps read it.
    Clock,
    /// Restart every member in turn (SIGTERM, start again).
    Restart,
    /// Replace a member: remove it through the Cluster API, add a fresh one.
    Membership,
    /// Make one member's Raft log meet a storage fault (fsync or write error, ENOSPC, a short
    /// write): the member must stop, and is restarted later.
    Disk,
    /// Cut the power of one member, a minority or every member at once: every write a member
    /// has not synced is lost (or torn), then they restart.
    Power,
    /// Change the data tier's ranges under the workload, as an operator or the placement
    /// driver would: split a Redis range at a slot, merge a range into its left neighbour, or
    /// move a range's leadership to another replica.
    Ranges,
    /// Move a replica of a Redis range from one node to one that holds none (a learner added,
    /// caught up by snapshot, swapped in for the old replica), as the placement driver's
    /// rebalancing and repair do. Needs more nodes than the replication factor (5 members).
    Move,
    /// add-node / remove-node: start a data node with `--join` (the placement driver moves
    /// replicas onto it), or drain one that joined (`cairn node remove`: its replicas move
    /// off, then it leaves the cluster and is stopped). At most two joined nodes at a time.
    Nodes,
    /// One of `ranges`' changes alone: split a Redis range at a slot.
    Split,
    /// One of `ranges`' changes alone: merge a Redis range into its left neighbour.
    Merge,
    /// One of `ranges`' changes alone: move a range's leadership to another replica.
    TransferLeader,
    /// One of `nodes`' changes alone: start a data node with `--join` (none while two joined
    /// nodes are there already).
    AddNode,
    /// One of `nodes`' changes alone: drain a data node that joined earlier. With none there,
    /// one joins instead, so that a later step has one to remove.
    RemoveNode,
}

/// Which of the `nodes` nemesis' changes a step makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum NodeChange {
    /// Add or remove, as `pick` and the joined nodes decide.
    Either,
    Add,
    Remove,
}

/// A change to the data tier's ranges; which range is resolved when the step runs, from
/// `pick` over the ranges there are then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RangeChange {
    Split { slot: u16 },
    Merge { pick: u64 },
    TransferLeader { pick: u64 },
    Move { pick: u64 },
}

/// Whose power a power cut takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PowerScope {
    One(Target),
    Minority,
    All,
}

/// A member, chosen when the step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Target {
    /// Whoever leads when the step runs.
    Leader,
    /// The member at this position among the current members.
    Member(usize),
}

/// How members are split by a partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Cut {
    /// The leader alone on one side.
    IsolateLeader,
    /// These member positions on one side, the rest on the other.
    Halves(Vec<usize>),
    /// Every member sees only its two ring neighbours (a majority ring with 5 members).
    Ring,
    /// Two halves joined through one bridge member that sees both.
    Bridge { bridge: usize },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Fault {
    Kill(Target),
    Pause(Target),
    Partition(Cut),
    Delay {
        target: Target,
        ms: u64,
    },
    Clock {
        member: usize,
        offset_ms: i64,
    },
    /// The target's clock runs at `permille` / 1000 of real time.
    ClockRate {
        target: Target,
        permille: u32,
    },
    RollingRestart,
    ReplaceMember(Target),
    /// `kind` is one of `cairn_types::faults::DISK_FAULTS`.
    Disk {
        target: Target,
        kind: &'static str,
    },
    /// `tear`: a random half of the unsynced sectors (by `seed`) reach the disk first.
    Power {
        scope: PowerScope,
        tear: bool,
        seed: u64,
    },
    Ranges(RangeChange),
    /// Add a data node, or remove one that joined earlier; `pick` chooses, when the step runs.
    Nodes {
        pick: u64,
        change: NodeChange,
    },
}

/// One step: inject `fault` at `at_ms`, heal it `lasts_ms` later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub at_ms: u64,
    pub lasts_ms: u64,
    pub fault: Fault,
}

/// When faults start and the quiet time left at the end for the workload alone.
pub const LEAD_IN_MS: u64 = 3_000;
pub const LEAD_OUT_MS: u64 = 3_000;

/// The schedule for `seed`.
pub fn plan(seed: u64, nemeses: &[Nemesis], members: usize, time_limit_ms: u64) -> Vec<Step> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut steps = Vec::new();
    if nemeses.is_empty() || members == 0 {
        return steps;
    }
    let mut t = LEAD_IN_MS;
    loop {
        let nemesis = nemeses[rng.random_range(0..nemeses.len())];
        let pick_target = |rng: &mut rand::rngs::StdRng| {
            if rng.random_bool(0.5) {
                Target::Leader
            } else {
                Target::Member(rng.random_range(0..members))
            }
        };
        let (fault, lasts_ms) = match nemesis {
            Nemesis::Kill => (Fault::Kill(pick_target(&mut rng)), rng.random_range(1_000..5_000)),
            // Longer than the election timeout (500 ms by default), so others take over.
            Nemesis::Pause => (Fault::Pause(pick_target(&mut rng)), rng.random_range(1_000..5_000)),
            Nemesis::Partition => {
                let cut = match rng.random_range(0..4) {
                    0 => Cut::IsolateLeader,
                    1 => {
                        let mut side: Vec<usize> = (0..members).filter(|_| rng.random_bool(0.5)).collect();
                        if side.is_empty() || side.len() == members {
                            side = vec![rng.random_range(0..members)];
                        }
                        Cut::Halves(side)
                    }
                    2 if members >= 4 => Cut::Ring,
                    _ => Cut::Bridge { bridge: rng.random_range(0..members) },
                };
                (Fault::Partition(cut), rng.random_range(2_000..6_000))
            }
            Nemesis::Delay => {
                let target = pick_target(&mut rng);
                // Up to most of an election timeout (500 ms) round trip.
                (Fault::Delay { target, ms: rng.random_range(20..200) }, rng.random_range(2_000..6_000))
            }
            Nemesis::Clock if rng.random_bool(0.5) => {
                let offset_ms = rng.random_range(1_000..120_000) * if rng.random_bool(0.5) { 1 } else { -1 };
                (Fault::Clock { member: rng.random_range(0..members), offset_ms }, rng.random_range(2_000..6_000))
            }
            Nemesis::Clock => {
                let permille = rng.random_range(500..=2_000);
                (Fault::ClockRate { target: pick_target(&mut rng), permille }, rng.random_range(2_000..6_000))
            }
            Nemesis::Restart => (Fault::RollingRestart, 0),
            Nemesis::Membership => (Fault::ReplaceMember(Target::Member(rng.random_range(0..members))), 0),
            Nemesis::Disk => {
                let kinds = cairn_types::faults::DISK_FAULTS;
                let kind = kinds[rng.random_range(0..kinds.len())];
                (Fault::Disk { target: pick_target(&mut rng), kind }, rng.random_range(1_000..5_000))
            }
            Nemesis::Power => {
                let scope = match rng.random_range(0..3) {
                    0 => PowerScope::One(pick_target(&mut rng)),
                    1 => PowerScope::Minority,
                    _ => PowerScope::All,
                };
                let fault = Fault::Power { scope, tear: rng.random_bool(0.5), seed: rng.random() };
                (fault, rng.random_range(1_000..4_000))
            }
            Nemesis::Ranges => {
                let change = match rng.random_range(0..3) {
                    0 => RangeChange::Split { slot: rng.random_range(1..16_384) },
                    1 => RangeChange::Merge { pick: rng.random() },
                    _ => RangeChange::TransferLeader { pick: rng.random() },
                };
                (Fault::Ranges(change), 0)
            }
            Nemesis::Move => (Fault::Ranges(RangeChange::Move { pick: rng.random() }), 0),
            Nemesis::Nodes => (Fault::Nodes { pick: rng.random(), change: NodeChange::Either }, 0),
            Nemesis::Split => (Fault::Ranges(RangeChange::Split { slot: rng.random_range(1..16_384) }), 0),
            Nemesis::Merge => (Fault::Ranges(RangeChange::Merge { pick: rng.random() }), 0),
            Nemesis::TransferLeader => (Fault::Ranges(RangeChange::TransferLeader { pick: rng.random() }), 0),
            Nemesis::AddNode => (Fault::Nodes { pick: rng.random(), change: NodeChange::Add }, 0),
            Nemesis::RemoveNode => (Fault::Nodes { pick: rng.random(), change: NodeChange::Remove }, 0),
        };
        if t + lasts_ms + LEAD_OUT_MS > time_limit_ms {
            break;
        }
        steps.push(Step { at_ms: t, lasts_ms, fault });
        t += lasts_ms + rng.random_range(1_000..3_000);
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_named_range_and_node_nemeses_make_only_their_own_change() {
        let only = |n: Nemesis, ok: fn(&Fault) -> bool| {
            let steps = plan(3, &[n], 5, 60_000);
            assert!(!steps.is_empty() && steps.iter().all(|s| ok(&s.fault)), "{n:?}: {steps:?}");
        };
        only(Nemesis::Split, |f| matches!(f, Fault::Ranges(RangeChange::Split { .. })));
        only(Nemesis::Merge, |f| matches!(f, Fault::Ranges(RangeChange::Merge { .. })));
        only(Nemesis::TransferLeader, |f| matches!(f, Fault::Ranges(RangeChange::TransferLeader { .. })));
        only(Nemesis::AddNode, |f| matches!(f, Fault::Nodes { change: NodeChange::Add, .. }));
        only(Nemesis::RemoveNode, |f| matches!(f, Fault::Nodes { change: NodeChange::Remove, .. }));
        // The names the issue and the README use on the command line.
        use clap::ValueEnum;
        for name in ["split", "merge", "move", "transfer-leader", "add-node", "remove-node"] {
            assert!(Nemesis::from_str(name, false).is_ok(), "{name}");
        }
    }

    #[test]
    fn same_seed_same_schedule() {
        let all = [Nemesis::Kill, Nemesis::Pause, Nemesis::Partition, Nemesis::Clock];
        assert_eq!(plan(7, &all, 3, 60_000), plan(7, &all, 3, 60_000));
        assert_ne!(plan(7, &all, 3, 60_000), plan(8, &all, 3, 60_000));
    }

    #[test]
    fn steps_fit_the_time_limit_and_do_not_overlap() {
        let all = [Nemesis::Kill, Nemesis::Pause, Nemesis::Partition, Nemesis::Clock, Nemesis::Restart];
        for seed in 0..50 {
            let steps = plan(seed, &all, 5, 60_000);
            assert!(!steps.is_empty());
            for w in steps.windows(2) {
                assert!(w[0].at_ms + w[0].lasts_ms < w[1].at_ms, "{w:?}");
            }
            let last = steps.last().unwrap();
            assert!(last.at_ms + last.lasts_ms + LEAD_OUT_MS <= 60_000);
            for s in &steps {
                if let Fault::Partition(Cut::Halves(side)) = &s.fault {
                    assert!(!side.is_empty() && side.len() < 5);
                }
            }
        }
    }

    #[test]
    fn only_the_chosen_nemeses_appear() {
        let steps = plan(3, &[Nemesis::Pause], 3, 60_000);
        assert!(steps.iter().all(|s| matches!(s.fault, Fault::Pause(_))));
        let steps = plan(1, &[Nemesis::Move, Nemesis::Nodes], 5, 60_000);
        assert!(steps.iter().any(|s| matches!(s.fault, Fault::Nodes { .. })));
        assert!(steps.iter().any(|s| matches!(s.fault, Fault::Ranges(RangeChange::Move { .. }))));
        assert!(steps.iter().all(|s| matches!(s.fault, Fault::Nodes { .. } | Fault::Ranges(RangeChange::Move { .. }))));
    }
}
