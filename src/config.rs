//! `cairn server` settings: etcd's flag names, from the command line, `CAIRN_*` environment
//! variables, or a TOML file, in that order of precedence.
//!
//! The file is merged by turning its keys into flags placed *before* the command line's own
//! (clap keeps the last occurrence), and skipping keys whose environment variable is set, so a
//! flag beats the environment, which beats the file, which beats the default.

use std::path::PathBuf;

use anyhow::{bail, Context};
use cairn_types::Limits;
use clap::{Args, CommandFactory};

#[derive(Args, Debug, Clone)]
#[command(args_override_self = true)]
pub struct ServerArgs {
    /// Read settings from this TOML file (keys are the flag names: `name = "n1"`).
    #[arg(long, env = "CAIRN_CONFIG_FILE")]
    pub config_file: Option<PathBuf>,

    /// Human-readable name for this member.
    #[arg(long, env = "CAIRN_NAME", default_value = "default")]
    pub name: String,

    /// Path to the data directory (default: `<name>.etcd`, as etcd).
    #[arg(long, env = "CAIRN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// URLs to listen on for client traffic (etcd v3 gRPC, plus /health and /metrics).
    #[arg(long, env = "CAIRN_LISTEN_CLIENT_URLS", default_value = "http://localhost:2379", value_delimiter = ',')]
    pub listen_client_urls: Vec<String>,

    /// This member's client URLs, as published to the rest of the cluster.
    #[arg(long, env = "CAIRN_ADVERTISE_CLIENT_URLS", default_value = "http://localhost:2379", value_delimiter = ',')]
    pub advertise_client_urls: Vec<String>,

    /// URLs to listen on for peer traffic (Raft and forwarded requests).
    #[arg(long, env = "CAIRN_LISTEN_PEER_URLS", default_value = "http://localhost:2380", value_delimiter = ',')]
    pub listen_peer_urls: Vec<String>,

    /// This member's peer URLs, as given to the rest of the cluster.
    #[arg(
        long,
        env = "CAIRN_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://localhost:2380",
        value_delimiter = ','
    )]
    pub initial_advertise_peer_urls: Vec<String>,

    /// Initial cluster configuration for bootstrapping: name=peer-url,...
    #[arg(long, env = "CAIRN_INITIAL_CLUSTER", default_value = "default=http://localhost:2380")]
    pub initial_cluster: String,

    /// "new" to form a cluster, "existing" to join one (after `etcdctl member add`).
    #[arg(long, env = "CAIRN_INITIAL_CLUSTER_STATE", default_value = "new")]
    pub initial_cluster_state: String,

    /// Initial cluster token; members of one cluster share it.
    #[arg(long, env = "CAIRN_INITIAL_CLUSTER_TOKEN", default_value = "etcd-cluster")]
    pub initial_cluster_token: String,

    /// URLs to serve the Redis protocol on (`redis://HOST:PORT`). A server started with no
    /// client or Redis URLs at all listens on redis://127.0.0.1:6379; one given client URLs
    /// but no Redis URLs serves no Redis.
    #[arg(long, env = "CAIRN_LISTEN_REDIS_URLS", value_delimiter = ',')]
    pub listen_redis_urls: Vec<String>,

    /// This node's Redis URLs as cluster-aware clients are told them (CLUSTER SLOTS, MOVED);
    /// defaults to the listen URLs.
    #[arg(long, env = "CAIRN_ADVERTISE_REDIS_URLS", value_delimiter = ',')]
    pub advertise_redis_urls: Vec<String>,

    /// Redis's `maxmemory-clients`: the most bytes this node's Redis connections may hold
    /// together (read buffers, commands being run, replies); past it the connections holding
    /// the most are closed, and INFO counts them in `evicted_clients`. 0: no limit.
    #[arg(long, env = "CAIRN_REDIS_MAXMEMORY_CLIENTS", default_value_t = cairn_api::redis::Limits::default().clients_memory_max)]
    pub redis_maxmemory_clients: u64,

    /// Replicas of each data tier range; fixed when the cluster is created.
    #[arg(long, env = "CAIRN_REPLICATION_FACTOR", default_value_t = 3)]
    pub replication_factor: usize,

    /// Join a running cluster as a data node: its client URLs (comma list). The node is added
    /// to the meta group as a learner (it holds range replicas; the meta group keeps its
    /// voters) and `--initial-cluster` is not needed. Ignored once the node has an identity.
    #[arg(long, env = "CAIRN_JOIN", value_delimiter = ',')]
    pub join: Vec<String>,

    /// Ranges the Redis keyspace starts out split into.
    #[arg(long, env = "CAIRN_INITIAL_RANGES", default_value_t = 4)]
    pub initial_ranges: usize,

    /// A range larger than this (keys and values) is split in two.
    #[arg(long, env = "CAIRN_RANGE_SPLIT_BYTES", default_value_t = 64 << 20, value_parser = clap::value_parser!(u64).range(4096..))]
    pub range_split_bytes: u64,

    /// A range serving more client requests per second than this is split in two (by load).
    #[arg(long, env = "CAIRN_RANGE_SPLIT_QPS", default_value_t = 2500.0)]
    pub range_split_qps: f64,

    /// Two small neighbouring ranges merge only once both have been cold (under 100 requests
    /// per second) for this long, so a load that pauses and comes back does not merge and
    /// split them again and again.
    #[arg(long, env = "CAIRN_RANGE_MERGE_DELAY", default_value = "5m", value_parser = parse_merge_delay)]
    pub range_merge_delay: std::time::Duration,

    /// A node silent this long is dead: its range replicas are re-created on other nodes.
    #[arg(long, env = "CAIRN_DEAD_NODE_TIMEOUT", default_value = "5m", value_parser = parse_dead_node_timeout)]
    pub dead_node_timeout: std::time::Duration,

    /// How often the placement driver (on the meta leader) looks at the ranges and carries out
    /// splits, moves and leader transfers; 0 turns it off (ranges then change only by
    /// `cairn range` commands).
    #[arg(long, env = "CAIRN_PLACEMENT_INTERVAL", default_value = "2s", value_parser = parse_placement_interval)]
    pub placement_interval: std::time::Duration,

    /// Extra URLs to serve /metrics, /health, /ready and /v1/status on (plain HTTP).
    #[arg(long, env = "CAIRN_LISTEN_METRICS_URLS", value_delimiter = ',')]
    pub listen_metrics_urls: Vec<String>,

    /// Path to the client server TLS certificate (PEM); serves https:// client URLs.
    #[arg(long, env = "CAIRN_CERT_FILE")]
    pub cert_file: Option<PathBuf>,

    /// Path to the client server TLS key (PEM).
    #[arg(long, env = "CAIRN_KEY_FILE")]
    pub key_file: Option<PathBuf>,

    /// Path to the client server TLS trusted CA certificate file (PEM), for client certificates.
    #[arg(long, env = "CAIRN_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,

    /// Require and verify client certificates (signed by --trusted-ca-file) on client TLS.
    #[arg(long, env = "CAIRN_CLIENT_CERT_AUTH", default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub client_cert_auth: bool,

    /// Path to the peer server TLS certificate (PEM); serves https:// peer URLs and is this
    /// member's client certificate towards its peers.
    #[arg(long, env = "CAIRN_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,

    /// Path to the peer server TLS key (PEM).
    #[arg(long, env = "CAIRN_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,

    /// Path to the peer TLS trusted CA file (PEM): verifies peers' certificates both ways.
    #[arg(long, env = "CAIRN_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,

    /// Require and verify peer client certificates (signed by --peer-trusted-ca-file).
    #[arg(long, env = "CAIRN_PEER_CLIENT_CERT_AUTH", default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub peer_client_cert_auth: bool,

    /// Time (ms) of a heartbeat interval.
    #[arg(long, env = "CAIRN_HEARTBEAT_INTERVAL", default_value_t = 50)]
    pub heartbeat_interval: u64,

    /// Time (ms) without a leader after which a follower campaigns (between 7/8 of it and all
    /// of it).
    #[arg(long, env = "CAIRN_ELECTION_TIMEOUT", default_value_t = 500)]
    pub election_timeout: u64,

    /// Number of committed entries between snapshots (after which the log is compacted).
    #[arg(long, env = "CAIRN_SNAPSHOT_COUNT", default_value_t = 10_000)]
    pub snapshot_count: u64,

    /// Maximum client request size in bytes.
    #[arg(long, env = "CAIRN_MAX_REQUEST_BYTES", default_value_t = cairn_types::limits::REQUEST_BYTES_MAX_DEFAULT)]
    pub max_request_bytes: usize,

    /// Maximum number of operations permitted in a transaction.
    #[arg(long, env = "CAIRN_MAX_TXN_OPS", default_value_t = cairn_types::limits::TXN_OPS_MAX_DEFAULT)]
    pub max_txn_ops: usize,

    /// How often watchers created with progress_notify receive a progress notification when
    /// nothing else was sent to them (etcd's flag; a duration such as 10m, 30s, 500ms).
    #[arg(long, env = "CAIRN_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL", default_value = "10m", value_parser = parse_progress_interval)]
    pub experimental_watch_progress_notify_interval: std::time::Duration,

    /// Auth token type. cairn issues signed tokens that every member verifies (etcd's
    /// `simple`, replicated); only `simple` is accepted.
    #[arg(long, env = "CAIRN_AUTH_TOKEN", default_value = "simple", value_parser = ["simple"])]
    pub auth_token: String,

    /// Seconds an auth token stays valid after Authenticate (etcd's flag and default).
    #[arg(long, env = "CAIRN_AUTH_TOKEN_TTL", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub auth_token_ttl: u64,

    /// bcrypt cost for hashing user passwords (etcd's flag and default; 4 to 31).
    #[arg(long, env = "CAIRN_BCRYPT_COST", default_value_t = 10, value_parser = clap::value_parser!(u32).range(4..=31))]
    pub bcrypt_cost: u32,

    /// Raise an alarm (and refuse writes) when the backend exceeds this size in bytes.
    #[arg(long, env = "CAIRN_QUOTA_BACKEND_BYTES", default_value_t = cairn_types::limits::QUOTA_BACKEND_BYTES_DEFAULT)]
    pub quota_backend_bytes: u64,

    /// Maximum key size in bytes.
    #[arg(long, env = "CAIRN_MAX_KEY_BYTES", default_value_t = cairn_types::limits::KEY_BYTES_MAX_DEFAULT)]
    pub max_key_bytes: usize,

    /// Memory for the state engine's page cache, in bytes.
    #[arg(long, env = "CAIRN_BACKEND_CACHE_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub backend_cache_bytes: usize,

    /// Memory for the data tier's engine page cache (redb's, of the node's one data file), in
    /// bytes. A write buffer's flush rewrites the B-tree pages its keys fall in: a page not
    /// cached is read from the file first, so with data sets larger than this cache flushes
    /// slow down and writes wait for them (under 1 KB SETs to 900 MB per node, p99 was
    /// 0.7-0.9 s with 256 MiB and 0.1-0.3 s with 1 GiB; BENCHMARKS.md). Filled as pages are
    /// used, so a small data set does not take it all.
    #[arg(long, env = "CAIRN_RANGE_ENGINE_CACHE_BYTES", default_value_t = 1024 * 1024 * 1024)]
    pub range_engine_cache_bytes: usize,

    /// Memory for the data tier's read cache, in bytes: values its ranges read from the data
    /// engine (keys, values and about 100 bytes each), so that a GET of a key read before
    /// skips the engine's B-tree. 0 turns it off. Counted in `cairn_range_read_cache_bytes`.
    #[arg(long, env = "CAIRN_RANGE_READ_CACHE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub range_read_cache_bytes: u64,

    /// Bytes of keys and values apply holds before writing them to the state engine in one
    /// transaction (the quota and DB SIZE count them meanwhile). Memory for it is at most twice
    /// this: one buffer filling, one being written. The data tier's engine buffers its ranges'
    /// writes the same way, in a buffer of its own that holds at most twice this.
    #[arg(long, env = "CAIRN_BACKEND_BATCH_BYTES", default_value_t = cairn_state::BATCH_BYTES_DEFAULT, value_parser = clap::value_parser!(u64).range(65_536..=1_073_741_824))]
    pub backend_batch_bytes: u64,

    /// Auto compaction: `periodic` keeps `--auto-compaction-retention` of time, `revision` that
    /// many revisions (etcd's flag and default).
    #[arg(long, env = "CAIRN_AUTO_COMPACTION_MODE", default_value = "periodic", value_parser = ["periodic", "revision"])]
    pub auto_compaction_mode: String,

    /// History to keep: in periodic mode a duration (`1h`, `30m`, `5s`; a bare number is
    /// hours), in revision mode a number of revisions. 0 switches auto compaction off (etcd's
    /// flag and default).
    #[arg(long, env = "CAIRN_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,

    /// UNSAFE: acknowledge writes without fsync. Acknowledged writes can be lost on power
    /// failure. For benchmarks only (etcd's flag of the same name).
    #[arg(long, env = "CAIRN_UNSAFE_NO_FSYNC", default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub unsafe_no_fsync: bool,

    /// UNSAFE: serve linearizable reads from the leader's lease (no quorum round). Stale reads
    /// become possible under clock jumps or long pauses.
    #[arg(long, env = "CAIRN_UNSAFE_LEASE_READS", default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub unsafe_lease_reads: bool,

    /// TEST ONLY (failpoints builds): switch on a deliberate defect the chaos harness must
    /// catch: stale-read, early-ack, lease-ignore-ttl.
    #[cfg(feature = "failpoints")]
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(cairn_types::faults::BUGS))]
    pub bug: Vec<String>,

    /// Log level: debug, info, warn, error.
    #[arg(long, env = "CAIRN_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// A duration as etcd writes them ("10m", "10m0s", "500ms"), at least etcd's minimum of 100 ms.
fn parse_progress_interval(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration (like 10m, 30s, 500ms): {e}"))?;
    if d < std::time::Duration::from_millis(100) {
        return Err(format!("{s} is below the minimum of 100ms"));
    }
    Ok(d)
}

fn parse_dead_node_timeout(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration (like 5m, 30s): {e}"))?;
    if d < std::time::Duration::from_secs(10) {
        return Err(format!("{s} is below the minimum of 10s (a node restarting is not dead)"));
    }
    Ok(d)
}

fn parse_merge_delay(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration (like 5m, 30s, 0s): {e}"))
}

fn parse_placement_interval(s: &str) -> Result<std::time::Duration, String> {
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration (like 2s, 500ms): {e}"))?;
    if d < std::time::Duration::from_millis(100) {
        return Err(format!("{s} is below the minimum of 100ms (0 turns placement off)"));
    }
    Ok(d)
}

impl ServerArgs {
    /// The Redis URLs to listen on and to advertise (see `--listen-redis-urls`).
    pub fn redis_urls(&self) -> Result<(Vec<String>, Vec<String>), String> {
        let listen = if self.listen_redis_urls.is_empty() && self.listen_client_urls == ["http://localhost:2379"] {
            vec!["redis://127.0.0.1:6379".to_string()]
        } else {
            self.listen_redis_urls.clone()
        };
        for u in listen.iter().chain(&self.advertise_redis_urls) {
            if !u.starts_with("redis://") && !u.starts_with("rediss://") {
                return Err(format!("{u}: Redis URLs look like redis://HOST:PORT, or rediss://HOST:PORT for TLS"));
            }
        }
        let advertise =
            if self.advertise_redis_urls.is_empty() { listen.clone() } else { self.advertise_redis_urls.clone() };
        Ok((listen, advertise))
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| PathBuf::from(format!("{}.etcd", self.name)))
    }

    pub fn limits(&self) -> Limits {
        Limits {
            request_bytes_max: self.max_request_bytes,
            txn_ops_max: self.max_txn_ops,
            quota_backend_bytes: self.quota_backend_bytes,
            key_bytes_max: self.max_key_bytes,
        }
    }

    /// `--initial-cluster` as (name, peer URLs); a name may repeat to give several URLs.
    pub fn initial_cluster(&self) -> anyhow::Result<Vec<(String, Vec<String>)>> {
        parse_initial_cluster(&self.initial_cluster)
    }
}

fn toml_to_flag_value(key: &str, v: &toml::Value) -> anyhow::Result<String> {
    Ok(match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Array(a) => a
            .iter()
            .map(|x| match x {
                toml::Value::String(s) => Ok(s.clone()),
                other => bail!("config key {key}: list items must be strings, got {other}"),
            })
            .collect::<anyhow::Result<Vec<_>>>()?
            .join(","),
        other => bail!("config key {key}: unsupported value {other}"),
    })
}

/// For `cairn server`: reads the config file named by `--config-file` (or
/// `CAIRN_CONFIG_FILE`) and splices its settings in as flags ahead of the command line's.
pub fn expand_config_file(argv: Vec<String>) -> anyhow::Result<Vec<String>> {
    if argv.get(1).map(String::as_str) != Some("server") {
        return Ok(argv);
    }
    let mut path = std::env::var("CAIRN_CONFIG_FILE").ok();
    let mut it = argv.iter().skip(2);
    while let Some(a) = it.next() {
        if let Some(p) = a.strip_prefix("--config-file=") {
            path = Some(p.to_string());
        } else if a == "--config-file" {
            path = it.next().cloned();
        }
    }
    let Some(path) = path else { return Ok(argv) };
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read config file {path}"))?;
    let table: toml::Table = text.parse().with_context(|| format!("config file {path} is not valid TOML"))?;
    let cmd = crate::Cli::command();
    let server = cmd.find_subcommand("server").expect("server subcommand");
    let known: Vec<String> = server.get_arguments().filter_map(|a| a.get_long().map(str::to_string)).collect();
    let mut file_args = Vec::new();
    for (key, value) in &table {
        let flag = key.replace('_', "-");
        if !known.contains(&flag) || flag == "config-file" {
            bail!("config file {path}: unknown setting {key:?}");
        }
        let env = format!("CAIRN_{}", flag.to_uppercase().replace('-', "_"));
        if std::env::var_os(&env).is_some() {
            continue; // the environment beats the file
        }
        let value = toml_to_flag_value(key, value).with_context(|| format!("config file {path}"))?;
        file_args.push(format!("--{flag}={value}"));
    }
    let mut out = vec![argv[0].clone(), argv[1].clone()];
    out.extend(file_args);
    out.extend(argv.into_iter().skip(2));
    Ok(out)
}

/// etcd's `--initial-cluster`: `name=url,name=url,...` (a name may repeat for several URLs).
pub fn parse_initial_cluster(s: &str) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, url) =
            part.split_once('=').with_context(|| format!("--initial-cluster entry {part:?} is not name=url"))?;
        match out.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url.to_string()),
            None => out.push((name.to_string(), vec![url.to_string()])),
        }
    }
    if out.is_empty() {
        bail!("--initial-cluster is empty");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(argv: Vec<String>) -> ServerArgs {
        match crate::Cli::parse_from(argv).cmd {
            crate::Cmd::Server(a) => *a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn defaults_are_etcds() {
        let a = parse(vec!["cairn".into(), "server".into()]);
        assert_eq!(
            a.redis_urls().unwrap(),
            (vec!["redis://127.0.0.1:6379".to_string()], vec!["redis://127.0.0.1:6379".to_string()])
        );
        let b =
            parse(vec!["cairn".into(), "server".into(), "--listen-client-urls".into(), "http://127.0.0.1:3000".into()]);
        assert!(b.redis_urls().unwrap().0.is_empty(), "client URLs without Redis URLs: no Redis listener");
        let c = parse(vec!["cairn".into(), "server".into(), "--listen-redis-urls".into(), "http://x:1".into()]);
        assert!(c.redis_urls().is_err());
        assert_eq!(a.name, "default");
        assert_eq!(a.data_dir(), PathBuf::from("default.etcd"));
        assert_eq!(a.listen_client_urls, vec!["http://localhost:2379"]);
        assert_eq!(
            a.initial_cluster().unwrap(),
            vec![("default".to_string(), vec!["http://localhost:2380".to_string()])]
        );
        a.limits().validate().unwrap();
    }

    #[test]
    fn file_is_overridden_by_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "name = \"from-file\"\nsnapshot-count = 7\nlisten-client-urls = [\"http://127.0.0.1:1\", \"http://127.0.0.1:2\"]\n").unwrap();
        let argv = vec![
            "cairn".into(),
            "server".into(),
            format!("--config-file={}", f.display()),
            "--snapshot-count=9".into(),
        ];
        let a = parse(expand_config_file(argv).unwrap());
        assert_eq!(a.name, "from-file");
        assert_eq!(a.snapshot_count, 9, "the flag wins over the file");
        assert_eq!(a.listen_client_urls.len(), 2);
    }

    #[test]
    fn the_example_config_file_parses() {
        let f = concat!(env!("CARGO_MANIFEST_DIR"), "/config/cairn.toml");
        let argv = vec!["cairn".into(), "server".into(), format!("--config-file={f}")];
        let a = parse(expand_config_file(argv).unwrap());
        assert_eq!(a.name, "n1");
        assert_eq!(a.max_request_bytes, 1_572_864);
        assert_eq!(a.redis_maxmemory_clients, 2 << 30);
        a.limits().validate().unwrap();
    }

    /// Text made of TOML's punctuation, some setting names and values: random config files.
    fn toml_ish() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let piece = prop::sample::select(vec![
            "name",
            "snapshot-count",
            "snapshot_count",
            "listen-client-urls",
            "heartbeat-interval",
            "max-txn-ops",
            "bcrypt-cost",
            "auth-token",
            "log-level",
            "config-file",
            "[x]",
            "[[y]]",
            " = ",
            "=",
            "\"",
            "'",
            "\"\"\"",
            "\n",
            " ",
            "[",
            "]",
            "{",
            "}",
            ",",
            ".",
            "#",
            "1",
            "-7",
            "99999999999999999999",
            "1e9",
            "true",
            "nan",
            "\\u0000",
            "1979-05-27T07:32:00Z",
            "\"http://127.0.0.1:1\"",
            "\u{e9}",
            "\u{0}",
        ]);
        prop::collection::vec(piece, 0..24).prop_map(|p| p.concat())
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 256, failure_persistence: None, ..Default::default() })]

        /// Whatever a config file holds, reading it is an error that names the file, or flags
        /// that clap accepts or refuses; never a panic.
        #[test]
        fn any_config_file_is_read_or_refused(text in toml_ish(), bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            use clap::Parser;
            let dir = tempfile::tempdir().unwrap();
            let f = dir.path().join("c.toml");
            for content in [text.into_bytes(), bytes] {
                std::fs::write(&f, &content).unwrap();
                let argv = vec!["cairn".into(), "server".into(), format!("--config-file={}", f.display())];
                match expand_config_file(argv) {
                    Ok(argv) => {
                        if let Ok(crate::Cli { cmd: crate::Cmd::Server(a), .. }) = crate::Cli::try_parse_from(argv) {
                            let _ = a.initial_cluster();
                            let _ = a.limits().validate();
                        }
                    }
                    Err(e) => proptest::prop_assert!(format!("{e:#}").contains("c.toml"), "error names no file: {:#}", e),
                }
            }
        }
    }

    /// What reading a config file holding `text` is refused with (`{:#}`: every context).
    fn refusal(text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, text).unwrap();
        let argv = vec!["cairn".into(), "server".into(), format!("--config-file={}", f.display())];
        format!("{:#}", expand_config_file(argv).unwrap_err())
    }

    #[test]
    fn unknown_file_key_is_an_error() {
        assert!(refusal("nmae = \"typo\"\n").contains("unknown setting"));
    }

    /// A value of a type no flag takes (a float, a table) is refused, naming file and key.
    #[test]
    fn unsupported_value_error_names_the_file_and_key() {
        let e = refusal("name = 1e9\n");
        assert!(e.contains("c.toml") && e.contains("config key name: unsupported value"), "{e}");
    }
}
