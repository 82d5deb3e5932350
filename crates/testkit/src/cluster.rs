//! Real clusters of `cairn server` processes, and the faults a test inflicts on them: SIGKILL,
//! SIGSTOP/SIGCONT, restart, membership changes, and (in containers) cut network links.
//!
//! Two ways to run a member:
//! - an OS process on loopback (the default). Ports are taken from the kernel (bind to port 0,
//!   note the port, release it), so tests can run side by side.
//! - a Docker container on a private bridge network made for the cluster
//!   ([`ClusterSpec::docker`]), each member with its own address and network stack, so links can
//!   be cut for real with iptables rules inside a member's network namespace
//!   ([`ProcessCluster::cut_links`]). Pausing uses the cgroup freezer (`docker pause`).
//!
//! Every member logs to `<dir>/<name>.log`; [`ProcessCluster::logs_tail`] helps a failing test
//! say why. Dropping the cluster kills every member (and removes containers and the network).

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use tonic::transport::Endpoint;

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// The `cairn` binary.
    pub binary: PathBuf,
    pub size: usize,
    /// Data directories and logs go here.
    pub dir: PathBuf,
    /// Extra `cairn server` flags for every member (e.g. `--snapshot-count=100`).
    pub extra_args: Vec<String>,
    /// Run members as containers of this image instead of processes (its entrypoint is
    /// `cairn`; see `scripts/chaos-image`).
    pub docker: Option<DockerSpec>,
}

#[derive(Debug, Clone)]
pub struct DockerSpec {
    pub image: String,
}

/// The private network of a containerized cluster.
#[derive(Debug)]
struct DockerNet {
    image: String,
    network: String,
    /// The first three octets of the /24 the members live in (`.1` is the host's bridge).
    prefix: String,
}

/// Runs `docker` and returns its stdout; a failure carries docker's stderr.
fn docker(args: &[&str]) -> std::io::Result<String> {
    let out = Command::new("docker").args(args).stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(std::io::Error::other(format!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Runs a command inside a container's network namespace (with the host's binaries: the image
/// has none).
fn in_netns(pid: u32, cmd: &[&str]) -> std::io::Result<()> {
    let pid = pid.to_string();
    let out = Command::new("nsenter").args(["-t", &pid, "-n", "--"]).args(cmd).stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("{}: {}", cmd.join(" "), String::from_utf8_lossy(&out.stderr).trim())))
    }
}

#[derive(Debug)]
pub struct Member {
    pub name: String,
    pub client_url: String,
    pub peer_url: String,
    /// Where the member serves Redis clients (`redis://host:port`).
    pub redis_url: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    /// The container's name, once created (containerized clusters only).
    container: Option<String>,
    /// The member's address on the cluster's network (containerized clusters only).
    pub ip: Option<String>,
    paused: bool,
    /// Removed from the cluster (by a membership change); never restarted.
    pub removed: bool,
    /// `--initial-cluster` and state this member starts with.
    initial_cluster: String,
    state: &'static str,
    /// `--join` URLs instead (a data node joining a running cluster).
    join: Option<String>,
}

impl Member {
    /// The member's process id as the host sees it.
    pub fn pid(&self) -> Option<u32> {
        match &self.container {
            Some(c) => docker(&["inspect", "-f", "{{.State.Pid}}", c]).ok()?.parse().ok().filter(|p| *p != 0),
            None => self.child.as_ref().map(|c| c.id()),
        }
    }

    /// Started and not exited (a member that stopped itself, e.g. refusing corrupt data, is a
    /// zombie until reaped: read its state from /proc).
    pub fn is_running(&self) -> bool {
        if let Some(c) = &self.container {
            return docker(&["inspect", "-f", "{{.State.Running}}", c]).is_ok_and(|s| s == "true");
        }
        match self.pid() {
            None => false,
            Some(pid) => std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|st| st.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
                .unwrap_or(false),
        }
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }
}

pub struct ProcessCluster {
    pub spec: ClusterSpec,
    pub members: Vec<Member>,
    net: Option<DockerNet>,
}

/// A free loopback port, never one this process handed out before. The port is released before
/// the member binds it, and the kernel may give a just-released port to the next `bind(0)`: two
/// members once got the same port (one's peer port, the other's client port), the second could
/// not start, and a test's requests to it reached the first member's peer listener
/// (`Unimplemented`). A race with other processes remains possible.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port =
            TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port");
        if GIVEN.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return port;
        }
    }
}

fn signal(pid: u32, sig: i32) -> std::io::Result<()> {
    // SAFETY: kill(2) has no memory-safety preconditions; pid belongs to our own child.
    let r = unsafe { libc::kill(pid as i32, sig) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl ProcessCluster {
    /// Starts `spec.size` members forming a new cluster. Does not wait for a leader.
    pub fn start(spec: ClusterSpec) -> std::io::Result<ProcessCluster> {
        let mut c = ProcessCluster::prepare(spec)?;
        for i in 0..c.members.len() {
            c.spawn(i)?;
        }
        Ok(c)
    }

    /// The members of a new cluster (names, URLs, data directories), none started yet: a test
    /// can fill their data directories first (a restore) and then `start_member` each.
    pub fn prepare(spec: ClusterSpec) -> std::io::Result<ProcessCluster> {
        std::fs::create_dir_all(&spec.dir)?;
        let net = match &spec.docker {
            Some(d) => Some(DockerNet::create(&d.image)?),
            None => None,
        };
        let mut c = ProcessCluster { spec, members: Vec::new(), net };
        for i in 1..=c.spec.size {
            let m = c.new_member_record(&format!("m{i}"), "new");
            c.members.push(m);
        }
        let ic = c.members.iter().map(|m| format!("{}={}", m.name, m.peer_url)).collect::<Vec<_>>().join(",");
        for m in &mut c.members {
            m.initial_cluster = ic.clone();
        }
        Ok(c)
    }

    /// Addresses and paths for a member that is not started yet.
    fn new_member_record(&self, name: &str, state: &'static str) -> Member {
        let (client_url, peer_url, redis_url, ip) = match &self.net {
            // .1 is the bridge; members take .11 and up, in order of creation.
            Some(n) => {
                let ip = format!("{}.{}", n.prefix, 11 + self.members.len());
                (format!("http://{ip}:2379"), format!("http://{ip}:2380"), format!("redis://{ip}:6379"), Some(ip))
            }
            None => (
                format!("http://127.0.0.1:{}", free_port()),
                format!("http://127.0.0.1:{}", free_port()),
                format!("redis://127.0.0.1:{}", free_port()),
                None,
            ),
        };
        Member {
            client_url,
            peer_url,
            redis_url,
            ip,
            data_dir: self.spec.dir.join(format!("{name}.data")),
            log: self.spec.dir.join(format!("{name}.log")),
            name: name.to_string(),
            child: None,
            container: None,
            paused: false,
            removed: false,
            initial_cluster: String::new(),
            state,
            join: None,
        }
    }

    fn server_args(&self, m: &Member, data_dir: &str) -> Vec<String> {
        let mut args = vec![
            "server".to_string(),
            format!("--name={}", m.name),
            format!("--data-dir={data_dir}"),
            format!("--listen-client-urls={}", m.client_url),
            format!("--advertise-client-urls={}", m.client_url),
            format!("--listen-peer-urls={}", m.peer_url),
            format!("--initial-advertise-peer-urls={}", m.peer_url),
            format!("--listen-redis-urls={}", m.redis_url),
        ];
        match &m.join {
            Some(urls) => args.push(format!("--join={urls}")),
            None => {
                args.push(format!("--initial-cluster={}", m.initial_cluster));
                args.push(format!("--initial-cluster-state={}", m.state));
            }
        }
        args.extend(self.spec.extra_args.iter().cloned());
        args
    }

    fn spawn(&mut self, i: usize) -> std::io::Result<()> {
        if let Some(net) = &self.net {
            let m = &self.members[i];
            match &m.container {
                // Restart: the same container, data and address.
                Some(c) => {
                    docker(&["start", c])?;
                }
                None => {
                    std::fs::create_dir_all(&m.data_dir)?;
                    let name = format!("{}-{}", net.network, m.name);
                    let ip = m.ip.clone().expect("containerized members have an address");
                    let volume = format!("{}:/data", m.data_dir.display());
                    let mut args: Vec<String> =
                        ["run", "-d", "--name", &name, "--hostname", &m.name].iter().map(|s| s.to_string()).collect();
                    args.extend(["--network".into(), net.network.clone(), "--ip".into(), ip, "-v".into(), volume]);
                    args.push(net.image.clone());
                    args.extend(self.server_args(m, "/data"));
                    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
                    docker(&args)?;
                    self.members[i].container = Some(name);
                }
            }
            self.members[i].paused = false;
            return Ok(());
        }
        let args = self.server_args(&self.members[i], &self.members[i].data_dir.display().to_string());
        let m = &mut self.members[i];
        assert!(m.child.is_none(), "member {} is already running", m.name);
        let log = File::options().create(true).append(true).open(&m.log)?;
        let child = Command::new(&self.spec.binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        m.child = Some(child);
        m.paused = false;
        Ok(())
    }

    /// Each member's Redis address, `host:port`.
    pub fn redis_addrs(&self) -> Vec<String> {
        self.members.iter().map(|m| m.redis_url.trim_start_matches("redis://").to_string()).collect()
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// Endpoints of members that are running and not paused.
    pub fn live_endpoints(&self) -> Vec<String> {
        self.members.iter().filter(|m| m.is_running() && !m.paused).map(|m| m.client_url.clone()).collect()
    }

    /// SIGKILL.
    pub fn kill(&mut self, i: usize) {
        let m = &mut self.members[i];
        if let Some(c) = &m.container {
            if m.paused {
                let _ = docker(&["unpause", c]);
            }
            // SIGKILL reaches a frozen cgroup too, but unfreezing first keeps docker's state simple.
            let _ = docker(&["kill", "-s", "KILL", c]);
            let _ = docker(&["wait", c]);
        }
        if let Some(mut c) = m.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        m.paused = false;
    }

    /// SIGTERM, then wait for a clean exit (SIGKILL after 10 s).
    pub fn stop(&mut self, i: usize) {
        let m = &mut self.members[i];
        if let Some(c) = &m.container {
            if m.paused {
                let _ = docker(&["unpause", c]);
            }
            let _ = docker(&["stop", "-t", "10", c]);
        }
        if let Some(mut c) = m.child.take() {
            if m.paused {
                let _ = signal(c.id(), libc::SIGCONT);
            }
            let _ = signal(c.id(), libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    _ if Instant::now() > deadline => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        m.paused = false;
    }

    /// SIGSTOP (a container: the cgroup freezer): the process stays, frozen.
    pub fn pause(&mut self, i: usize) {
        let m = &mut self.members[i];
        if let Some(c) = &m.container {
            docker(&["pause", c]).expect("docker pause");
            m.paused = true;
            return;
        }
        if let Some(pid) = m.pid() {
            signal(pid, libc::SIGSTOP).expect("SIGSTOP");
            m.paused = true;
        }
    }

    /// SIGCONT (a container: thawed).
    pub fn resume(&mut self, i: usize) {
        let m = &mut self.members[i];
        if let Some(c) = &m.container {
            docker(&["unpause", c]).expect("docker unpause");
            m.paused = false;
            return;
        }
        if let Some(pid) = m.pid() {
            signal(pid, libc::SIGCONT).expect("SIGCONT");
            m.paused = false;
        }
    }

    /// Starts a stopped or killed member again with its data.
    pub fn restart(&mut self, i: usize) -> std::io::Result<()> {
        self.kill(i);
        self.spawn(i)
    }

    /// Prepares a new member (not yet started): after `etcdctl member add` with its peer URL,
    /// call [`ProcessCluster::start_member`].
    pub fn new_member(&mut self) -> usize {
        let mut m = self.new_member_record(&format!("m{}", self.members.len() + 1), "existing");
        let mut ic: Vec<String> =
            self.members.iter().filter(|m| !m.removed).map(|m| format!("{}={}", m.name, m.peer_url)).collect();
        ic.push(format!("{}={}", m.name, m.peer_url));
        m.initial_cluster = ic.join(",");
        self.members.push(m);
        self.members.len() - 1
    }

    /// Prepares a data node that joins with `--join` (through every running member's client
    /// URL); start it with [`ProcessCluster::start_member`].
    pub fn join_member(&mut self) -> usize {
        let mut m = self.new_member_record(&format!("m{}", self.members.len() + 1), "existing");
        let urls: Vec<String> = self.members.iter().filter(|m| !m.removed).map(|m| m.client_url.clone()).collect();
        m.join = Some(urls.join(","));
        self.members.push(m);
        self.members.len() - 1
    }

    /// Cuts member `i`'s links to the members in `to`, both ways, by dropping their packets in
    /// `i`'s network namespace (containerized clusters only; the rules vanish when the member
    /// restarts, with its namespace).
    pub fn cut_links(&self, i: usize, to: &[usize]) -> std::io::Result<()> {
        let pid = self.members[i].pid().ok_or_else(|| std::io::Error::other("not running"))?;
        for &j in to {
            let ip = self.members[j].ip.as_deref().ok_or_else(|| std::io::Error::other("not in a container"))?;
            in_netns(pid, &["iptables", "-A", "INPUT", "-s", ip, "-j", "DROP"])?;
            in_netns(pid, &["iptables", "-A", "OUTPUT", "-d", ip, "-j", "DROP"])?;
        }
        Ok(())
    }

    /// Removes every rule [`ProcessCluster::cut_links`] added to member `i`.
    pub fn heal_links(&self, i: usize) -> std::io::Result<()> {
        let pid = self.members[i].pid().ok_or_else(|| std::io::Error::other("not running"))?;
        in_netns(pid, &["iptables", "-F", "INPUT"])?;
        in_netns(pid, &["iptables", "-F", "OUTPUT"])
    }

    /// Whether members run in containers (with their own network stacks).
    pub fn containerized(&self) -> bool {
        self.net.is_some()
    }

    /// Copies containers' output to their log files (a process member writes there directly).
    pub fn collect_logs(&self) {
        for m in &self.members {
            if let Some(c) = &m.container {
                if let Ok(out) = Command::new("docker").args(["logs", c]).stdin(Stdio::null()).output() {
                    let mut text = out.stdout;
                    text.extend_from_slice(&out.stderr);
                    let _ = std::fs::write(&m.log, text);
                }
            }
        }
    }

    /// Whether member `i` joined with `--join` (a data node, not a voter of the meta group).
    pub fn is_data_node(&self, i: usize) -> bool {
        self.members[i].join.is_some()
    }

    pub fn start_member(&mut self, i: usize) -> std::io::Result<()> {
        self.spawn(i)
    }

    /// The status of member `i`, if it answers within `timeout`.
    pub async fn status(&self, i: usize, timeout: Duration) -> Option<pb::StatusResponse> {
        status_of(&self.members[i].client_url, timeout).await
    }

    /// Marks member `i` removed and stops it for good.
    pub fn mark_removed(&mut self, i: usize) {
        self.kill(i);
        self.members[i].removed = true;
    }

    /// Waits until a running member reports itself leader and returns its index.
    pub async fn wait_leader(&self, timeout: Duration) -> Result<usize, String> {
        let deadline = Instant::now() + timeout;
        loop {
            // Every member at once: one that does not answer costs a pass its timeout once,
            // not once per member after it.
            let asked =
                self.members.iter().enumerate().filter(|(_, m)| m.is_running() && !m.paused).map(|(i, m)| async move {
                    let s = status_of(&m.client_url, Duration::from_millis(500)).await?;
                    let id = s.header.as_ref().map_or(0, |h| h.member_id);
                    (s.leader != 0 && s.leader == id).then_some(i)
                });
            if let Some(i) = futures::future::join_all(asked).await.into_iter().flatten().next() {
                return Ok(i);
            }
            if Instant::now() > deadline {
                return Err(format!("no leader within {timeout:?}\n{}", self.logs_tail(30)));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every running, unpaused member answers `/ready` (a leader is known, the member
    /// has published its attributes and caught up), as a deployment's readiness probe would.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut waiting = Vec::new();
            for m in self.members.iter().filter(|m| m.is_running() && !m.paused) {
                match crate::http::get(&m.client_url, "/ready").await {
                    Ok((200, _)) => {}
                    Ok((code, body)) => waiting.push(format!("{}: {code} {}", m.name, body.trim())),
                    Err(e) => waiting.push(format!("{}: {e}", m.name)),
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("not ready within {timeout:?}: {}\n{}", waiting.join("; "), self.logs_tail(30)));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every running member has applied at least `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        'outer: loop {
            for (i, m) in self.members.iter().enumerate() {
                if !m.is_running() || m.paused {
                    continue;
                }
                match self.status(i, Duration::from_millis(500)).await {
                    Some(s) if s.raft_applied_index >= index => {}
                    other => {
                        if Instant::now() > deadline {
                            return Err(format!(
                                "{} did not apply {index} within {timeout:?}; its status: {other:?}",
                                m.name
                            ));
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue 'outer;
                    }
                }
            }
            return Ok(());
        }
    }

    /// Writes every running member's thread stacks to `<dir>/<name>.stacks` with gdb, if gdb
    /// is installed: a test that fails because a member stopped making progress can then say
    /// where it stopped.
    pub fn dump_stacks(&self) {
        for m in &self.members {
            let Some(pid) = m.pid() else { continue };
            let out = Command::new("gdb")
                .args(["-p", &pid.to_string(), "-batch", "-ex", "thread apply all bt 30"])
                .stdin(Stdio::null())
                .output();
            if let Ok(o) = out {
                let _ = std::fs::write(self.spec.dir.join(format!("{}.stacks", m.name)), &o.stdout);
            }
        }
    }

    /// The last `n` lines of every member's log.
    pub fn logs_tail(&self, n: usize) -> String {
        self.collect_logs();
        let mut out = String::new();
        for m in &self.members {
            let text = std::fs::read_to_string(&m.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {} ({})\n", m.name, m.log.display()));
            for l in &lines[lines.len().saturating_sub(n)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    pub fn dir(&self) -> &Path {
        &self.spec.dir
    }
}

impl DockerNet {
    /// A fresh bridge network on a /24 no other network uses.
    fn create(image: &str) -> std::io::Result<DockerNet> {
        let tag = format!(
            "cairn-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_micros())
        );
        let mut last = None;
        // Try /24s in 10.213.0.0/16, starting from a pseudo-random one.
        let start = (std::process::id() as usize * 7919) % 250;
        for k in 0..250 {
            let prefix = format!("10.213.{}", (start + k) % 250 + 1);
            let subnet = format!("{prefix}.0/24");
            match docker(&["network", "create", "--driver", "bridge", "--subnet", &subnet, &tag]) {
                Ok(_) => return Ok(DockerNet { image: image.to_string(), network: tag, prefix }),
                Err(e) if e.to_string().contains("overlap") => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no free subnet for the cluster's network")))
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        if let Some(net) = &self.net {
            self.collect_logs();
            for m in &self.members {
                if let Some(c) = &m.container {
                    let _ = docker(&["rm", "-f", c]);
                }
            }
            let _ = docker(&["network", "rm", &net.network]);
        }
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                let _ = signal(c.id(), libc::SIGCONT);
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Maintenance.Status of one endpoint, or `None` if it does not answer in time.
pub async fn status_of(url: &str, timeout: Duration) -> Option<pb::StatusResponse> {
    let ep = Endpoint::from_shared(url.to_string()).ok()?.connect_timeout(timeout).timeout(timeout);
    let ch = tokio::time::timeout(timeout, ep.connect()).await.ok()?.ok()?;
    let mut c = MaintenanceClient::new(ch);
    tokio::time::timeout(timeout, c.status(pb::StatusRequest {})).await.ok()?.ok().map(|r| r.into_inner())
}
