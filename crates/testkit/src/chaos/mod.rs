//! The chaos harness: a fresh cluster, concurrent clients, a seeded schedule of faults, then
//! heal, settle, read everything back and check the history (in the manner of Jepsen and of
//! etcd's robustness tests).
//!
//! [`run`] is the whole procedure; `scripts/chaos` runs it through the `cairn-chaos` binary. The
//! same seed gives the same fault schedule ([`schedule::plan`]); what the cluster does under it
//! can still vary with timing, which is the point of running many seeds.

pub mod runtime;
pub mod schedule;
pub mod workload;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::cluster_client::ClusterClient;
use serde::Serialize;

use crate::check::{check_final_state, CheckOptions};
use crate::cluster::{ClusterSpec, ProcessCluster};
use crate::history::Outcome;
use runtime::ProcessRuntime;
use schedule::{Fault, Nemesis, NodeChange, Step, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Per-key read / write / compare-and-set; linearizability per key, no lost writes.
    Register,
    /// Unique adds; every acknowledged add is in the final set.
    Set,
    /// Transfers between accounts in transactions; every read sees the same total.
    Bank,
    /// Watchers see every revision of their prefix in order, no gap, no duplicate, across
    /// reconnects to other members.
    Watch,
    /// Fenced critical sections never interleave (needs the coordination issue).
    Lock,
    /// The register workload's reads and writes as Redis GET and SET through every node's
    /// Redis port, on the data tier's ranges; linearizability per key, no lost writes.
    RedisRegister,
    /// Deliberately weak: redis-register whose connections send READONLY, so reads come from
    /// any replica and may be stale. The checker must flag it (scripts/chaos-ci expects so).
    RedisReadonly,
    /// The set workload's unique adds as Redis SETs of unique keys (over every Redis range)
    /// and whole-set reads as KEYS; every acknowledged add must be present at the end.
    RedisSet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Runtime {
    /// OS processes on loopback.
    Process,
    /// Containers on a private bridge network, links cut with iptables (scripts/chaos-image).
    Docker,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub nodes: usize,
    pub workload: Workload,
    pub nemesis: Vec<Nemesis>,
    pub time_limit: Duration,
    pub seed: u64,
    pub runtime: Runtime,
    pub bug: Option<String>,
    /// A `cairn` binary built with `--features failpoints`.
    pub binary: PathBuf,
    /// With the docker runtime: an image of that binary.
    pub image: String,
    /// Where to write the report (and the history next to it).
    pub report: PathBuf,
    pub clients: usize,
    /// Every clock fault becomes the leader's clock running at this rate.
    pub clock_rate: Option<f64>,
}

/// The last line the harness prints.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub seed: u64,
    pub workload: Workload,
    pub nemesis: Vec<Nemesis>,
    pub ops_ok: usize,
    pub ops_failed: usize,
    pub ops_unknown: usize,
    pub faults: usize,
    pub anomalies: usize,
    pub lost_acked: usize,
    pub valid: bool,
}

#[derive(Debug, Serialize)]
struct Event {
    at_ms: u64,
    what: String,
}

fn log(t0: Instant, events: &mut Vec<Event>, what: String) {
    let at_ms = t0.elapsed().as_millis() as u64;
    eprintln!("[chaos {:>7.1}s] {what}", at_ms as f64 / 1000.0);
    events.push(Event { at_ms, what });
}

fn resolve(rt: &ProcessRuntime, target: Target, leader: Option<usize>) -> usize {
    let members = rt.members();
    match target {
        Target::Leader => leader.unwrap_or(members[0]),
        Target::Member(p) => members[p % members.len()],
    }
}

/// Injects one step's fault; returns what to undo when it is healed.
async fn inject(rt: &mut ProcessRuntime, step: &Step, t0: Instant, events: &mut Vec<Event>) -> Result<Heal, String> {
    // The leader, for faults aimed at it (up to 2 s without one: the fault then goes to a
    // member by position). A whole-cluster power cut, a clock jump of a given member and the
    // data tier's changes do not ask: a run of power cuts once lost seconds per step here.
    let needs_leader = !matches!(
        step.fault,
        Fault::Power { scope: schedule::PowerScope::All, .. }
            | Fault::Clock { .. }
            | Fault::Nodes { .. }
            | Fault::Ranges(_)
            | Fault::RollingRestart
    );
    let asked = Instant::now();
    let leader = if needs_leader { rt.leader(Duration::from_secs(2)).await } else { None };
    if asked.elapsed() > Duration::from_secs(1) {
        log(t0, events, format!("finding the leader took {:.1} s", asked.elapsed().as_secs_f64()));
    }
    let name = |rt: &ProcessRuntime, i: usize| rt.cluster.members[i].name.clone();
    Ok(match &step.fault {
        Fault::Kill(t) => {
            let i = resolve(rt, *t, leader);
            rt.cluster.kill(i);
            log(t0, events, format!("SIGKILL {}{}", name(rt, i), if Some(i) == leader { " (leader)" } else { "" }));
            Heal::Restart(i)
        }
        Fault::Pause(t) => {
            let i = resolve(rt, *t, leader);
            rt.cluster.pause(i);
            log(t0, events, format!("SIGSTOP {}{}", name(rt, i), if Some(i) == leader { " (leader)" } else { "" }));
            Heal::Resume(i)
        }
        Fault::Partition(cut) => {
            let pairs = rt.partition(cut, leader).await?;
            let desc: Vec<String> = pairs.iter().map(|(a, b)| format!("{}-{}", name(rt, *a), name(rt, *b))).collect();
            log(t0, events, format!("partition {cut:?}: cut {}", desc.join(" ")));
            Heal::Faults
        }
        Fault::Delay { target, ms } => {
            let i = resolve(rt, *target, leader);
            rt.delay(i, *ms).await?;
            log(t0, events, format!("links of {} slowed by {ms} ms each way", name(rt, i)));
            Heal::Faults
        }
        Fault::Clock { member, offset_ms } => {
            let members = rt.members();
            let i = members[member % members.len()];
            rt.clock(i, *offset_ms, 1.0).await?;
            log(t0, events, format!("clock jump: {} moved by {offset_ms} ms", name(rt, i)));
            Heal::Faults
        }
        Fault::ClockRate { target, permille } => {
            let i = resolve(rt, *target, leader);
            let rate = f64::from(*permille) / 1000.0;
            rt.clock(i, 0, rate).await?;
            let who = format!("{}{}", name(rt, i), if Some(i) == leader { " (leader)" } else { "" });
            log(t0, events, format!("clock rate: {who} runs at {rate:.2}x"));
            Heal::Faults
        }
        Fault::Disk { target, kind } => {
            let i = resolve(rt, *target, leader);
            let who = format!("{}{}", name(rt, i), if Some(i) == leader { " (leader)" } else { "" });
            rt.disk(i, kind).await?;
            if *kind == "wal-enospc" {
                // A full disk is waited out: the member refuses writes until the fault is
                // cleared, then goes on by itself.
                log(t0, events, format!("disk of {who} full (ENOSPC for its Raft log)"));
                return Ok(Heal::Faults);
            }
            // Under load its log is written within milliseconds; it must then stop. A workload
            // on the data tier writes nothing to the meta group's log: a put through the etcd
            // API every half second makes sure something does.
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut probe = workload::Client::new(&rt.endpoints(), i);
            let mut next_probe = Instant::now();
            while rt.cluster.members[i].is_running() && Instant::now() < deadline {
                if Instant::now() >= next_probe {
                    next_probe = Instant::now() + Duration::from_millis(500);
                    let _ =
                        tokio::time::timeout(Duration::from_millis(400), probe.put("chaos/disk-probe", vec![])).await;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if rt.cluster.members[i].is_running() {
                return Err(format!("{who} did not stop within 5 s of a {kind} fault in its Raft log"));
            }
            log(t0, events, format!("disk fault {kind} in the Raft log of {who}: it stopped"));
            Heal::Restart(i)
        }
        Fault::Power { scope, tear, seed } => {
            let members = rt.members();
            let chosen: Vec<usize> = match scope {
                schedule::PowerScope::One(t) => vec![resolve(rt, *t, leader)],
                // The leader among them when there is one: its unsynced tail matters most.
                schedule::PowerScope::Minority => {
                    let n = (members.len() - 1) / 2;
                    let mut v: Vec<usize> = leader.into_iter().collect();
                    v.extend(members.iter().copied().filter(|m| Some(*m) != leader));
                    v.truncate(n.max(1));
                    v
                }
                schedule::PowerScope::All => members.clone(),
            };
            // All at once: the cuts are sent together, before any member can react to another's.
            let mut names = Vec::new();
            for (k, &i) in chosen.iter().enumerate() {
                let cut = rt.power_cut(i, *tear, seed.wrapping_add(k as u64)).await;
                names.push(format!("{}{}", name(rt, i), if cut { "" } else { " (had exited by itself)" }));
            }
            let how = if *tear { "torn unsynced writes" } else { "unsynced writes lost" };
            log(t0, events, format!("power cut ({scope:?}, {how}): {}", names.join(" ")));
            Heal::RestartAll(chosen)
        }
        Fault::Nodes { pick, change } => {
            node_change(rt, *pick, *change, t0, events).await?;
            Heal::Nothing
        }
        Fault::Ranges(change) => {
            let what = range_change(rt, *change).await?;
            log(t0, events, what);
            Heal::Nothing
        }
        Fault::RollingRestart => {
            for i in rt.members() {
                rt.cluster.stop(i);
                rt.cluster.restart(i).map_err(|e| e.to_string())?;
                log(t0, events, format!("restarted {}", name(rt, i)));
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            Heal::Nothing
        }
        Fault::ReplaceMember(t) => {
            rt.learn_ids().await;
            let i = resolve(rt, *t, leader);
            let id = rt.id(i).and_then(|h| u64::from_str_radix(h, 16).ok()).ok_or("member id unknown")?;
            let others: Vec<String> = rt
                .members()
                .into_iter()
                .filter(|m| *m != i)
                .map(|m| rt.cluster.members[m].client_url.clone())
                .collect();
            member_call(
                &others,
                |mut c| async move { c.member_remove(pb::MemberRemoveRequest { id }).await.map(|_| ()) },
            )
            .await?;
            rt.cluster.mark_removed(i);
            log(t0, events, format!("removed {} through the Cluster API", name(rt, i)));
            let n = rt.cluster.new_member();
            let peer = rt.cluster.members[n].peer_url.clone();
            member_call(&others, |mut c| {
                let peer = peer.clone();
                async move {
                    c.member_add(pb::MemberAddRequest { peer_ur_ls: vec![peer], is_learner: false }).await.map(|_| ())
                }
            })
            .await?;
            rt.cluster.start_member(n).map_err(|e| e.to_string())?;
            log(t0, events, format!("added {} in its place", name(rt, n)));
            Heal::Nothing
        }
    })
}

/// Calls the Cluster API on the first endpoint that answers (retrying while a leader is elected).
async fn member_call<F, Fut>(endpoints: &[String], f: F) -> Result<(), String>
where
    F: Fn(ClusterClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let mut last = String::new();
    for _ in 0..20 {
        for e in endpoints {
            match f(ClusterClient::new(workload::channel(e))).await {
                Ok(()) => return Ok(()),
                Err(s) => last = format!("{e}: {}", s.message()),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!("membership change failed: {last}"))
}

/// Carries out a change to the data tier's ranges through a live member's HTTP API (what
/// `cairn range split|merge|move|transfer-leader` calls). A refusal (a slot already a boundary, no
/// neighbour to merge with) is logged, not an error: the ranges are as they were.
async fn range_change(rt: &ProcessRuntime, change: schedule::RangeChange) -> Result<String, String> {
    use schedule::RangeChange;
    let call = |method: &'static str, path: String, body: String| api_call(rt, method, path, body);
    // The Redis ranges there are now.
    let (_, list) = call("GET", "/v1/ranges".into(), String::new()).await?;
    let list: serde_json::Value = serde_json::from_str(&list).map_err(|e| format!("/v1/ranges: {e}"))?;
    let redis: Vec<&serde_json::Value> =
        list.as_array().map(|a| a.iter().filter(|r| !r["slots"].is_null()).collect()).unwrap_or_default();
    let (path, body) = match change {
        RangeChange::Split { slot } => ("/v1/ranges/split".to_string(), format!(r#"{{"slot": {slot}}}"#)),
        RangeChange::Move { pick } => {
            let Some(r) = redis.get((pick % redis.len().max(1) as u64) as usize) else {
                return Ok(format!("range change {change:?}: no Redis range to pick"));
            };
            let id = r["id"].as_u64().unwrap_or(0);
            let replicas: Vec<&str> =
                r["replicas"].as_array().map(|a| a.iter().filter_map(|n| n.as_str()).collect()).unwrap_or_default();
            let (_, nodes) = call("GET", "/v1/nodes".into(), String::new()).await?;
            let nodes: serde_json::Value = serde_json::from_str(&nodes).map_err(|e| format!("/v1/nodes: {e}"))?;
            let spare: Vec<String> = nodes
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter(|n| n["state"] == "up")
                        .filter_map(|n| n["name"].as_str())
                        .filter(|n| !replicas.contains(n))
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            let (Some(from), Some(to)) = (
                replicas.get((pick / 7) as usize % replicas.len().max(1)),
                spare.get((pick / 13) as usize % spare.len().max(1)),
            ) else {
                return Ok(format!("range change {change:?}: range {id} has no replica, or no node to move one to"));
            };
            (format!("/v1/ranges/{id}/move"), format!(r#"{{"from": "{from}", "to": "{to}"}}"#))
        }
        RangeChange::Merge { pick } | RangeChange::TransferLeader { pick } => {
            // A merge takes the range on the right: that must hold Redis keys too.
            let n =
                if matches!(change, RangeChange::Merge { .. }) { redis.len().saturating_sub(1) } else { redis.len() };
            let Some(r) = redis.get((pick % n.max(1) as u64) as usize).filter(|_| n > 0) else {
                return Ok(format!("range change {change:?}: no Redis range to pick (or none with a Redis neighbour)"));
            };
            let id = r["id"].as_u64().unwrap_or(0);
            match change {
                RangeChange::Merge { .. } => (format!("/v1/ranges/{id}/merge"), String::new()),
                _ => {
                    let replicas: Vec<&str> = r["replicas"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|n| n.as_str()).collect())
                        .unwrap_or_default();
                    let leader = r["leader"].as_str().unwrap_or("");
                    let others: Vec<&&str> = replicas.iter().filter(|n| **n != leader).collect();
                    let Some(to) = others.get((pick / 7) as usize % others.len().max(1)) else {
                        return Ok(format!("range change {change:?}: range {id} has no other replica"));
                    };
                    (format!("/v1/ranges/{id}/transfer-leader"), format!(r#"{{"to": "{to}"}}"#))
                }
            }
        }
    };
    let (code, answer) = call("POST", path.clone(), body.clone()).await?;
    Ok(format!("range change: POST {path} {body} -> {code} {}", answer.trim()))
}

/// Calls a member's HTTP API: the first member that takes the connection answers (one just
/// restarted may not listen yet).
async fn api_call(
    rt: &ProcessRuntime,
    method: &'static str,
    path: String,
    body: String,
) -> Result<(u16, String), String> {
    let eps: Vec<String> = rt.endpoints().iter().map(|e| e.trim_start_matches("http://").to_string()).collect();
    let mut last = format!("{method} {path}: no member");
    for ep in &eps {
        match tokio::time::timeout(Duration::from_secs(30), crate::http::request(ep, method, &path, &body)).await {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) => last = format!("{method} {path} on {ep}: {e}"),
            Err(_) => return Err(format!("{method} {path} on {ep}: no answer in 30 s")),
        }
    }
    Err(last)
}

/// The most data nodes the `nodes` nemesis keeps joined at once.
const JOINED_MAX: usize = 2;

/// add-node / remove-node (see [`Nemesis::Nodes`], [`Nemesis::AddNode`] and
/// [`Nemesis::RemoveNode`]).
async fn node_change(
    rt: &mut ProcessRuntime,
    pick: u64,
    change: NodeChange,
    t0: Instant,
    events: &mut Vec<Event>,
) -> Result<(), String> {
    settle_drained(rt, t0, events).await;
    let joined: Vec<usize> =
        rt.members().into_iter().filter(|&i| rt.cluster.is_data_node(i) && !rt.draining.contains(&i)).collect();
    let full = joined.len() + rt.draining.len() >= JOINED_MAX;
    let remove = !joined.is_empty()
        && match change {
            NodeChange::Either => pick.is_multiple_of(2) || full,
            NodeChange::Add => false,
            NodeChange::Remove => true,
        };
    if remove {
        let i = joined[(pick / 2) as usize % joined.len()];
        let name = rt.cluster.members[i].name.clone();
        let (code, answer) = api_call(rt, "POST", format!("/v1/nodes/{name}/drain"), String::new()).await?;
        if code == 200 {
            rt.draining.push(i);
        }
        log(t0, events, format!("remove-node {name}: POST /v1/nodes/{name}/drain -> {code} {}", answer.trim()));
    } else if joined.len() + rt.draining.len() < JOINED_MAX {
        let i = rt.cluster.join_member();
        rt.cluster.start_member(i).map_err(|e| e.to_string())?;
        log(t0, events, format!("add-node: started {} with --join", rt.cluster.members[i].name));
    }
    Ok(())
}

/// Stops the drained data nodes that have left the cluster (`/v1/nodes` no longer lists them).
async fn settle_drained(rt: &mut ProcessRuntime, t0: Instant, events: &mut Vec<Event>) {
    if rt.draining.is_empty() {
        return;
    }
    let Ok((200, nodes)) = api_call(rt, "GET", "/v1/nodes".into(), String::new()).await else { return };
    let Ok(nodes) = serde_json::from_str::<serde_json::Value>(&nodes) else { return };
    let listed = |name: &str| nodes.as_array().is_some_and(|a| a.iter().any(|n| n["name"] == name));
    for i in std::mem::take(&mut rt.draining) {
        let name = rt.cluster.members[i].name.clone();
        if listed(&name) {
            rt.draining.push(i);
        } else {
            rt.cluster.mark_removed(i);
            log(t0, events, format!("remove-node {name}: left the cluster; stopped"));
        }
    }
}

enum Heal {
    Restart(usize),
    RestartAll(Vec<usize>),
    Resume(usize),
    Faults,
    Nothing,
}

async fn heal(rt: &mut ProcessRuntime, h: Heal, t0: Instant, events: &mut Vec<Event>) -> Result<(), String> {
    match h {
        Heal::Restart(i) => {
            rt.cluster.restart(i).map_err(|e| e.to_string())?;
            log(t0, events, format!("restarted {}", rt.cluster.members[i].name));
        }
        Heal::RestartAll(v) => {
            for i in v {
                rt.cluster.restart(i).map_err(|e| e.to_string())?;
                log(t0, events, format!("power back: restarted {}", rt.cluster.members[i].name));
            }
        }
        Heal::Resume(i) => {
            rt.cluster.resume(i);
            log(t0, events, format!("SIGCONT {}", rt.cluster.members[i].name));
        }
        Heal::Faults => {
            let errors = rt.heal_faults().await;
            log(
                t0,
                events,
                format!(
                    "healed links and clocks{}",
                    if errors.is_empty() { String::new() } else { format!(" ({errors:?})") }
                ),
            );
        }
        Heal::Nothing => {}
    }
    Ok(())
}

/// Runs the whole procedure and writes the report. `Err` means the harness itself could not
/// run (bad options, a cluster that never started); anomalies are in the summary.
pub async fn run(o: Options) -> Result<Summary, String> {
    let dir =
        tempfile::Builder::new().prefix(&format!("cairn-chaos-{}-", o.seed)).tempdir().map_err(|e| e.to_string())?;
    let mut extra = Vec::new();
    if let Some(b) = &o.bug {
        extra.push(format!("--bug={b}"));
    }
    let cluster = ProcessCluster::start(ClusterSpec {
        binary: o.binary.clone(),
        size: o.nodes,
        dir: dir.path().to_path_buf(),
        extra_args: extra,
        docker: (o.runtime == Runtime::Docker).then(|| crate::cluster::DockerSpec { image: o.image.clone() }),
    })
    .map_err(|e| format!("cannot start the cluster: {e}"))?;
    let mut rt = ProcessRuntime::new(cluster);
    rt.cluster.wait_leader(Duration::from_secs(30)).await?;
    rt.learn_ids().await;
    // The fault layer must be there: a build without it would make delays and clock jumps (and,
    // on processes, link cuts) silently no-ops.
    rt.heal_faults().await.into_iter().next().map_or(Ok(()), Err)?;

    let time_limit_ms = o.time_limit.as_millis() as u64;
    let steps = schedule::plan(o.seed, &o.nemesis, o.nodes, time_limit_ms);
    let t0 = Instant::now();
    let mut events = Vec::new();
    log(t0, &mut events, format!("seed {}: {} faults planned over {} s", o.seed, steps.len(), o.time_limit.as_secs()));
    // The clients follow the membership, as etcd's do (replaced members come and go).
    let autosync = workload::spawn_autosync(rt.endpoints());
    let wl = match o.workload {
        Workload::Register => Running::Register(workload::Register::start(o.clients, 16, o.seed, rt.endpoints())),
        Workload::Set => Running::Set(workload::Set::start(o.clients, o.seed, rt.endpoints())),
        Workload::Bank => Running::Bank(workload::Bank::start(o.clients, o.seed, rt.endpoints()).await?),
        Workload::Watch => Running::Watch(workload::Watch::start(o.clients, o.seed, rt.endpoints()).await?),
        Workload::Lock => Running::Lock(workload::LockWorkload::start(o.clients, o.seed, rt.endpoints())),
        Workload::RedisRegister => {
            Running::RedisRegister(workload::RedisRegister::start(o.clients, 16, o.seed, rt.redis_addrs(), false))
        }
        Workload::RedisSet => Running::RedisSet(workload::RedisSet::start(o.clients, o.seed, rt.redis_addrs())),
        Workload::RedisReadonly => {
            Running::RedisRegister(workload::RedisRegister::start(o.clients, 16, o.seed, rt.redis_addrs(), true))
        }
    };
    let mut faults = 0;
    let mut harness_errors = Vec::new();
    // When the last step ended (healed), and when its plan had it end.
    let mut healed: Option<(Instant, u64)> = None;
    for step in &steps {
        // A step that fell behind its plan (an injection or a heal can wait seconds for a busy
        // member) still keeps the quiet time its plan gave it after the step before: bunched
        // up, whole-cluster power cuts came 0.2 s after the restarts before them, and a run
        // meant to show lost writes acknowledged almost none.
        let mut at = t0 + Duration::from_millis(step.at_ms);
        if let Some((ended, planned_end_ms)) = healed {
            at = at.max(ended + Duration::from_millis(step.at_ms.saturating_sub(planned_end_ms)));
        }
        tokio::time::sleep_until(at.into()).await;
        let forced;
        let step = match (o.clock_rate, &step.fault) {
            (Some(r), Fault::Clock { .. } | Fault::ClockRate { .. }) => {
                let fault = Fault::ClockRate { target: Target::Leader, permille: (r * 1000.0).round() as u32 };
                forced = Step { fault, ..step.clone() };
                &forced
            }
            _ => step,
        };
        match inject(&mut rt, step, t0, &mut events).await {
            Ok(h) => {
                faults += 1;
                tokio::time::sleep(Duration::from_millis(step.lasts_ms)).await;
                if let Err(e) = heal(&mut rt, h, t0, &mut events).await {
                    harness_errors.push(e);
                }
                healed = Some((Instant::now(), step.at_ms + step.lasts_ms));
            }
            Err(e) => {
                log(t0, &mut events, format!("could not inject {:?}: {e}", step.fault));
                harness_errors.push(e);
            }
        }
    }
    // The workload runs alone for the planned lead-out after the last step, late or not.
    let mut end = t0 + o.time_limit;
    if let Some((ended, _)) = healed {
        end = end.max(ended + Duration::from_millis(schedule::LEAD_OUT_MS));
    }
    tokio::time::sleep_until(end.into()).await;
    let finished = wl.stop().await;
    autosync.abort();
    workload::forget_synced_endpoints();
    log(t0, &mut events, format!("workload stopped: {} operations", finished.ops()));

    // Heal everything and let the cluster settle before the final reads.
    let _ = rt.heal_faults().await;
    rt.heal_processes().map_err(|e| e.to_string())?;
    // A data node being drained finishes leaving (its replicas move off), and is stopped.
    let drained_by = Instant::now() + Duration::from_secs(30);
    settle_drained(&mut rt, t0, &mut events).await;
    while !rt.draining.is_empty() && Instant::now() < drained_by {
        tokio::time::sleep(Duration::from_secs(1)).await;
        settle_drained(&mut rt, t0, &mut events).await;
    }
    let mut converged = true;
    match rt.cluster.wait_leader(Duration::from_secs(30)).await {
        Ok(l) => {
            let target = rt.cluster.status(l, Duration::from_secs(2)).await.map_or(0, |s| s.raft_applied_index);
            if let Err(e) = rt.cluster.wait_applied(target, Duration::from_secs(30)).await {
                converged = false;
                log(t0, &mut events, format!("did not converge: {e}"));
            }
        }
        Err(e) => {
            converged = false;
            log(t0, &mut events, format!("no leader after healing: {e}"));
        }
    }
    log(t0, &mut events, "healed and settled; reading every key".into());
    let checked = finished.check(&rt.endpoints(), &rt.redis_addrs()).await;
    let (ok, failed, unknown) = (checked.ok, checked.failed, checked.unknown);
    let (check_text, anomalies, lost, conclusive) = (checked.text, checked.anomalies, checked.lost, checked.conclusive);
    let anomalies = anomalies + usize::from(!converged);
    let valid = anomalies == 0 && conclusive && harness_errors.is_empty();
    let summary = Summary {
        seed: o.seed,
        workload: o.workload,
        nemesis: o.nemesis.clone(),
        ops_ok: ok,
        ops_failed: failed,
        ops_unknown: unknown,
        faults,
        anomalies,
        lost_acked: lost,
        valid,
    };

    let history_path = o.report.with_extension("history.json");
    let _ = std::fs::write(&history_path, &checked.history_json);
    let report = serde_json::json!({
        "summary": summary,
        "bug": o.bug,
        "nodes": o.nodes,
        "time_limit_s": o.time_limit.as_secs(),
        "schedule": steps,
        "events": events,
        "harness_errors": harness_errors,
        "converged": converged,
        "conclusive": conclusive,
        "check": check_text,
        "failure_causes": workload::take_failure_causes(),
        "history": history_path,
        "member_logs": dir.path(),
    });
    std::fs::write(&o.report, serde_json::to_string_pretty(&report).expect("serializable"))
        .map_err(|e| format!("cannot write {}: {e}", o.report.display()))?;
    if !valid {
        // Keep the members' logs for whoever reads the report.
        let kept = dir.keep();
        eprintln!("[chaos] member logs kept in {}", kept.display());
    }
    Ok(summary)
}

enum Running {
    Register(workload::Register),
    RedisRegister(workload::RedisRegister),
    Set(workload::Set),
    RedisSet(workload::RedisSet),
    Bank(workload::Bank),
    Watch(workload::Watch),
    Lock(workload::LockWorkload),
}

enum Finished {
    /// The history, its keys, and whether they live on the Redis front end.
    Register(crate::History, Vec<String>, bool),
    /// The history, and whether the set lives on the Redis front end.
    Set(crate::check::SetHistory, bool),
    Bank(crate::check::BankHistory, crate::check::BankModel),
    /// Writers stopped; watchers still following until the final read.
    Watch(workload::Watch),
    Lock(workload::LockWorkload),
}

struct Checked {
    text: String,
    anomalies: usize,
    lost: usize,
    conclusive: bool,
    ok: usize,
    failed: usize,
    unknown: usize,
    history_json: String,
}

impl Checked {
    /// The final state could not be read: one anomaly, nothing concluded.
    fn unreadable(text: String) -> Checked {
        Checked {
            text,
            anomalies: 1,
            lost: 0,
            conclusive: false,
            ok: 0,
            failed: 0,
            unknown: 0,
            history_json: String::new(),
        }
    }
}

impl Running {
    async fn stop(self) -> Finished {
        match self {
            Running::Register(w) => {
                let (h, keys) = w.stop().await;
                Finished::Register(h, keys, false)
            }
            Running::RedisRegister(w) => {
                let (h, keys) = w.stop().await;
                Finished::Register(h, keys, true)
            }
            Running::Set(w) => Finished::Set(w.stop().await, false),
            Running::RedisSet(w) => Finished::Set(w.stop().await, true),
            Running::Bank(w) => {
                let (h, m) = w.stop().await;
                Finished::Bank(h, m)
            }
            Running::Watch(mut w) => {
                w.stop_writers().await;
                Finished::Watch(w)
            }
            Running::Lock(w) => Finished::Lock(w.stop().await),
        }
    }
}

fn counts<O>(
    outcomes: impl Iterator<Item = O>,
    ok: impl Fn(&O) -> bool,
    unknown: impl Fn(&O) -> bool,
) -> (usize, usize, usize) {
    let (mut o, mut f, mut u) = (0, 0, 0);
    for x in outcomes {
        if ok(&x) {
            o += 1;
        } else if unknown(&x) {
            u += 1;
        } else {
            f += 1;
        }
    }
    (o, f, u)
}

impl Finished {
    fn ops(&self) -> usize {
        match self {
            Finished::Register(h, _, _) => h.ops.len(),
            Finished::Set(h, _) => h.ops.len(),
            Finished::Bank(h, _) => h.ops.len(),
            Finished::Watch(w) => w.writes(),
            Finished::Lock(w) => w.ops(),
        }
    }

    /// Reads the final state and checks the history against it.
    async fn check(self, endpoints: &[String], redis_addrs: &[String]) -> Checked {
        use crate::check::bank::BankOutcome;
        use crate::check::set::SetOutcome;
        match self {
            Finished::Register(ref history, ref keys, redis) => {
                let (ok, failed, unknown) = counts(
                    history.ops.iter().map(|o| &o.outcome),
                    |o| matches!(o, Outcome::Ok(_)),
                    |o| matches!(o, Outcome::Unknown),
                );
                let finals = if redis {
                    workload::redis_final_reads(keys, redis_addrs).await
                } else {
                    workload::final_reads(keys, endpoints).await
                };
                let (text, anomalies, lost, conclusive) = match finals {
                    Ok(finals) => match check_final_state(history, &finals, &CheckOptions::default()) {
                        Ok(r) => (
                            format!("{r}"),
                            r.linearizability.violations.len() + r.lost_writes.len() + r.unread_keys.len(),
                            r.lost_writes.len(),
                            r.linearizability.inconclusive.is_empty(),
                        ),
                        Err(e) => (format!("malformed history: {e:?}"), 1, 0, false),
                    },
                    Err(e) => (e, 1, 0, false),
                };
                Checked { text, anomalies, lost, conclusive, ok, failed, unknown, history_json: history.to_jsonl() }
            }
            Finished::Set(ref history, redis) => {
                let (ok, failed, unknown) = counts(
                    history.ops.iter().map(|o| &o.outcome),
                    |o| matches!(o, SetOutcome::Ok(_)),
                    |o| matches!(o, SetOutcome::Unknown),
                );
                let fin = if redis {
                    workload::redis_final_set(redis_addrs).await
                } else {
                    workload::final_set(endpoints).await
                };
                let (text, anomalies, lost) = match fin {
                    Ok(fin) => match crate::check::check_set(history, &fin) {
                        Ok(r) => {
                            let a = r.lost_count
                                + r.unexpected_count
                                + r.resurrected_count
                                + r.premature_count
                                + r.stale_read_count;
                            (format!("{r}"), a, r.lost_count)
                        }
                        Err(e) => (format!("malformed history: {e:?}"), 1, 0),
                    },
                    Err(e) => (e, 1, 0),
                };
                let history_json = serde_json::to_string(history).unwrap_or_default();
                Checked { text, anomalies, lost, conclusive: true, ok, failed, unknown, history_json }
            }
            Finished::Watch(w) => {
                use crate::check::watch::WatchWriteOutcome;
                match w.finish(endpoints).await {
                    Ok(history) => {
                        let (ok, failed, unknown) = counts(
                            history.writes.iter().map(|w| w.outcome),
                            |o| matches!(o, WatchWriteOutcome::Ok { .. }),
                            |o| matches!(o, WatchWriteOutcome::Unknown),
                        );
                        let r = crate::check::check_watch(&history);
                        let history_json = serde_json::to_string(&history).unwrap_or_default();
                        Checked {
                            text: format!("{r}"),
                            anomalies: r.anomalies.len(),
                            lost: r.lost_acked,
                            conclusive: true,
                            ok,
                            failed,
                            unknown,
                            history_json,
                        }
                    }
                    Err(e) => Checked::unreadable(e),
                }
            }
            Finished::Lock(w) => {
                use crate::check::lock::FencedOutcome;
                match w.finish(endpoints).await {
                    Ok(history) => {
                        let (ok, failed, unknown) = counts(
                            history.writes.iter().map(|(_, o)| *o),
                            |o| matches!(o, FencedOutcome::Written | FencedOutcome::Fenced),
                            |o| matches!(o, FencedOutcome::Unknown),
                        );
                        let r = crate::check::check_lock(&history);
                        Checked {
                            text: format!("{r}"),
                            anomalies: r.anomalies.len(),
                            lost: 0,
                            conclusive: true,
                            ok: ok + history.holds.len(),
                            failed,
                            unknown,
                            history_json: serde_json::to_string(&history).unwrap_or_default(),
                        }
                    }
                    Err(e) => Checked::unreadable(e),
                }
            }
            Finished::Bank(ref history, ref model) => {
                let (ok, failed, unknown) = counts(
                    history.ops.iter().map(|o| &o.outcome),
                    |o| matches!(o, BankOutcome::Ok(_)),
                    |o| matches!(o, BankOutcome::Unknown),
                );
                let (text, anomalies) = match workload::final_balances(endpoints).await {
                    Ok(fin) => match crate::check::check_bank(history, model, &fin) {
                        Ok(r) => (format!("{r}"), r.bad_read_count + usize::from(r.bad_final_read.is_some())),
                        Err(e) => (format!("malformed history: {e:?}"), 1),
                    },
                    Err(e) => (e, 1),
                };
                let history_json = serde_json::to_string(history).unwrap_or_default();
                Checked { text, anomalies, lost: 0, conclusive: true, ok, failed, unknown, history_json }
            }
        }
    }
}
