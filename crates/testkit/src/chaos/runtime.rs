//! Where the cluster runs and how faults reach it.
//!
//! - process: `cairn server` processes on loopback. Kill and pause are signals; link cuts,
//!   delays and clock jumps go through the test-only `/debug/faults` endpoint of a `failpoints`
//!   build (there is no separate network stack to cut).
//! - docker: containers on a private bridge network. Kill is `docker kill -s KILL`, pause the
//!   cgroup freezer, link cuts are iptables DROP rules in the members' network namespaces (real
//!   packet loss, including for connections already open); delays and clock jumps still use
//!   `/debug/faults`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::chaos::schedule::Cut;
use crate::cluster::{status_of, ProcessCluster};
use crate::http::host_port;

async fn http(host_port: &str, method: &str, path: &str, body: &str) -> std::io::Result<u16> {
    crate::http::request(host_port, method, path, body).await.map(|(code, _)| code)
}

pub struct ProcessRuntime {
    pub cluster: ProcessCluster,
    /// Member ids (hex) by position, learned from Status.
    ids: BTreeMap<usize, String>,
    /// Data nodes being drained (`cairn node remove`), by position: stopped once they have
    /// left the cluster.
    pub draining: Vec<usize>,
}

impl ProcessRuntime {
    pub fn new(cluster: ProcessCluster) -> Self {
        ProcessRuntime { cluster, ids: BTreeMap::new(), draining: Vec::new() }
    }

    /// Positions of the current members (removed ones are skipped).
    pub fn members(&self) -> Vec<usize> {
        (0..self.cluster.members.len()).filter(|i| !self.cluster.members[*i].removed).collect()
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members().into_iter().map(|i| self.cluster.members[i].client_url.clone()).collect()
    }

    /// The members' Redis ports (`host:port`).
    pub fn redis_addrs(&self) -> Vec<String> {
        self.members()
            .into_iter()
            .map(|i| self.cluster.members[i].redis_url.trim_start_matches("redis://").to_string())
            .collect()
    }

    /// The current leader's position, if one answers within `timeout`.
    pub async fn leader(&self, timeout: Duration) -> Option<usize> {
        self.cluster.wait_leader(timeout).await.ok()
    }

    pub async fn learn_ids(&mut self) {
        for i in self.members() {
            if self.ids.contains_key(&i) {
                continue;
            }
            if let Some(s) = status_of(&self.cluster.members[i].client_url, Duration::from_secs(1)).await {
                if let Some(h) = s.header {
                    self.ids.insert(i, format!("{:x}", h.member_id));
                }
            }
        }
    }

    pub fn id(&self, i: usize) -> Option<&String> {
        self.ids.get(&i)
    }

    async fn set_faults(&self, i: usize, faults: serde_json::Value) -> Result<(), String> {
        let url = &self.cluster.members[i].client_url;
        // A member restarted a moment ago may not listen yet: connection refused is retried
        // for a few seconds (a soak run once cut links just as a restarted member came up),
        // while its process runs (one that exited by itself never will: waiting for it made
        // a power-cut run's steps 5 s late).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let answer = loop {
            match http(host_port(url), "POST", "/debug/faults", &faults.to_string()).await {
                Err(e)
                    if e.kind() == std::io::ErrorKind::ConnectionRefused
                        && std::time::Instant::now() < deadline
                        && self.cluster.members[i].is_running() =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                other => break other,
            }
        };
        match answer {
            Ok(204) | Ok(200) => Ok(()),
            Ok(404) => Err(format!(
                "{url}: /debug/faults not found: the harness needs a failpoints build (cargo build --features failpoints)"
            )),
            Ok(code) => Err(format!("{url}: /debug/faults answered {code}")),
            Err(e) => Err(format!("{url}: {e}")),
        }
    }

    /// Cuts links as `cut` says (positions among current members). Returns the pairs cut.
    pub async fn partition(&mut self, cut: &Cut, leader: Option<usize>) -> Result<Vec<(usize, usize)>, String> {
        self.learn_ids().await;
        let members = self.members();
        let n = members.len();
        // can[a][b]: whether member a can reach member b.
        let mut blocked: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
        let mut block = |a: usize, b: usize| {
            blocked.entry(a).or_default().insert(b);
            blocked.entry(b).or_default().insert(a);
        };
        match cut {
            Cut::IsolateLeader => {
                let l = leader.ok_or("no leader to isolate")?;
                for &m in &members {
                    if m != l {
                        block(l, m);
                    }
                }
            }
            Cut::Halves(side) => {
                let side: BTreeSet<usize> = side.iter().filter_map(|p| members.get(*p).copied()).collect();
                for &a in &members {
                    for &b in &members {
                        if a < b && side.contains(&a) != side.contains(&b) {
                            block(a, b);
                        }
                    }
                }
            }
            Cut::Ring => {
                for (pa, &a) in members.iter().enumerate() {
                    for (pb, &b) in members.iter().enumerate() {
                        let d = (pa + n - pb) % n;
                        if a < b && d != 1 && d != n - 1 {
                            block(a, b);
                        }
                    }
                }
            }
            Cut::Bridge { bridge } => {
                let bridge = members.get(*bridge % n.max(1)).copied().ok_or("no members")?;
                let others: Vec<usize> = members.iter().copied().filter(|m| *m != bridge).collect();
                let half = others.len() / 2;
                for &a in &others[..half] {
                    for &b in &others[half..] {
                        block(a, b);
                    }
                }
            }
        }
        let mut pairs = Vec::new();
        for &m in &members {
            let cut: Vec<usize> = blocked.get(&m).map(|s| s.iter().copied().collect()).unwrap_or_default();
            pairs.extend(cut.iter().filter(|b| m < **b).map(|b| (m, *b)));
            if !self.cluster.members[m].is_running() {
                continue;
            }
            if self.cluster.containerized() {
                // A frozen member's namespace takes rules too: it wakes up cut off.
                self.cluster.cut_links(m, &cut).map_err(|e| format!("{}: {e}", self.cluster.members[m].name))?;
            } else if !self.cluster.members[m].is_paused() {
                let ids: Vec<String> = cut.iter().filter_map(|b| self.ids.get(b).cloned()).collect();
                self.set_faults(m, serde_json::json!({ "blocked": ids })).await?;
            }
        }
        Ok(pairs)
    }

    /// Slows every link between member `i` and the others by `ms`, each way.
    pub async fn delay(&mut self, i: usize, ms: u64) -> Result<(), String> {
        self.learn_ids().await;
        let me = self.ids.get(&i).cloned().ok_or("member id unknown")?;
        let mut mine = serde_json::Map::new();
        for m in self.members() {
            let mm = &self.cluster.members[m];
            if m == i || !mm.is_running() || mm.is_paused() {
                continue;
            }
            if let Some(id) = self.ids.get(&m) {
                mine.insert(id.clone(), ms.into());
            }
            self.set_faults(m, serde_json::json!({ "delay_ms": { me.clone(): ms } })).await?;
        }
        self.set_faults(i, serde_json::json!({ "delay_ms": mine })).await
    }

    /// Moves member `i`'s wall clock.
    /// Skews member `i`'s clock: a jump of `offset_ms`, then running at `rate`.
    pub async fn clock(&mut self, i: usize, offset_ms: i64, rate: f64) -> Result<(), String> {
        self.set_faults(i, serde_json::json!({ "clock_offset_ms": offset_ms, "clock_rate": rate })).await
    }

    /// Arms a storage fault in member `i`'s Raft log; it meets it at its next write or fsync.
    pub async fn disk(&mut self, i: usize, kind: &str) -> Result<(), String> {
        self.set_faults(i, serde_json::json!({ "disk": kind })).await
    }

    /// Cuts member `i`'s power: it dies at once, losing (or, with `tear`, tearing) every write
    /// it has not synced. A member that cannot be asked (paused) is SIGKILLed, which in a
    /// failpoints build loses the same writes. Answers false when the member had already
    /// exited by itself (a fatal error): there is nothing to cut, and it is not asked.
    pub async fn power_cut(&mut self, i: usize, tear: bool, seed: u64) -> bool {
        let mode = if tear { "tear" } else { "drop" };
        let running = self.cluster.members[i].is_running();
        if running && !self.cluster.members[i].is_paused() {
            // The member dies before it answers: an error here is the expected outcome.
            let _ = self.set_faults(i, serde_json::json!({ "power_cut": mode, "seed": seed })).await;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
            while self.cluster.members[i].is_running() && std::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        self.cluster.kill(i);
        running
    }

    /// Clears link faults and clock offsets everywhere reachable.
    pub async fn heal_faults(&self) -> Vec<String> {
        let mut errors = Vec::new();
        for m in self.members() {
            let mm = &self.cluster.members[m];
            if self.cluster.containerized() && mm.is_running() {
                if let Err(e) = self.cluster.heal_links(m) {
                    errors.push(format!("{}: {e}", mm.name));
                }
            }
            if mm.is_running() && !mm.is_paused() {
                if let Err(e) = self.set_faults(m, serde_json::json!({})).await {
                    errors.push(e);
                }
            }
        }
        errors
    }

    /// Resumes paused members and starts killed ones.
    pub fn heal_processes(&mut self) -> std::io::Result<()> {
        for m in self.members() {
            if self.cluster.members[m].is_paused() {
                self.cluster.resume(m);
            }
            if !self.cluster.members[m].is_running() {
                self.cluster.restart(m)?;
            }
        }
        Ok(())
    }
}
