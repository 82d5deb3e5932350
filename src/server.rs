//! `cairn server`: start a member and serve until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use cairn_api::grpc::Api;
use cairn_proto::peer::peer_server::PeerServer;
use cairn_raft::node::{lock_data_dir, NodeOptions};
use cairn_raft::tcp::Coalescing;
use cairn_raft::{PeerService, RaftNode, RaftTimers};
use cairn_services::boot::{self, BootOptions, ClusterState};
use cairn_services::members::Members;
use cairn_services::peer::Forwarded;
use cairn_services::Metrics;
use cairn_services::{MemberConfig, Router};
use tokio_stream::wrappers::TcpListenerStream;

use crate::config::ServerArgs;

/// Parses `http://host:port` or `https://host:port` into addresses to bind.
fn bind_addrs(url: &str) -> anyhow::Result<Vec<SocketAddr>> {
    let rest = if let Some(r) = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")) {
        r
    } else {
        bail!("{url}: expected a URL like http://host:port or https://host:port");
    };
    let hostport = rest.trim_end_matches('/');
    let addrs: Vec<SocketAddr> =
        std::net::ToSocketAddrs::to_socket_addrs(hostport).with_context(|| format!("{url}: cannot resolve"))?.collect();
    // "localhost" resolves to both ::1 and 127.0.0.1; etcd binds the first, so do we.
    Ok(addrs.into_iter().take(1).collect())
}

/// Accepted connections with Nagle's algorithm off (tonic sets TCP_NODELAY only on listeners it
/// binds itself, and a small response held back 40 ms by Nagle meeting delayed ACKs would
/// dominate every round trip), in streams whose small frames share writes
/// ([`cairn_raft::tcp`]).
fn incoming(
    l: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<Coalescing<tokio::net::TcpStream>>> {
    use futures::StreamExt;
    TcpListenerStream::new(l).map(|r| {
        r.map(|s| {
            let _ = s.set_nodelay(true);
            Coalescing(s)
        })
    })
}

/// Binds every URL; each listener comes with whether it serves TLS (`https://`).
async fn listen(urls: &[String], what: &str) -> anyhow::Result<Vec<(tokio::net::TcpListener, bool)>> {
    let mut out = Vec::new();
    for u in urls {
        let tls = u.starts_with("https://");
        for addr in bind_addrs(u)? {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for {what} on {u} ({addr})"))?;
            tracing::info!(%addr, tls, "listening for {what}");
            out.push((l, tls));
        }
    }
    Ok(out)
}

fn read_pem(path: &Path, flag: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{flag} {}: cannot read", path.display()))
}

/// The TLS settings of one side (client or peer traffic), from etcd's flags.
struct TlsFiles<'a> {
    cert: Option<&'a Path>,
    key: Option<&'a Path>,
    ca: Option<&'a Path>,
    cert_auth: bool,
    /// Flag prefix for messages: "" or "peer-".
    prefix: &'static str,
}

impl TlsFiles<'_> {
    /// The server side, for `https://` listeners; `None` when no certificate is given.
    fn server(&self) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
        let p = self.prefix;
        let (cert, key) = match (self.cert, self.key) {
            (Some(c), Some(k)) => (c, k),
            (None, None) => {
                if self.cert_auth || self.ca.is_some() {
                    bail!("--{p}client-cert-auth and --{p}trusted-ca-file need --{p}cert-file and --{p}key-file");
                }
                return Ok(None);
            }
            _ => bail!("--{p}cert-file and --{p}key-file go together"),
        };
        let id = tonic::transport::Identity::from_pem(
            read_pem(cert, &format!("--{p}cert-file"))?,
            read_pem(key, &format!("--{p}key-file"))?,
        );
        let mut cfg = tonic::transport::ServerTlsConfig::new().identity(id);
        if self.cert_auth {
            let ca = self.ca.with_context(|| format!("--{p}client-cert-auth needs --{p}trusted-ca-file"))?;
            cfg = cfg.client_ca_root(tonic::transport::Certificate::from_pem(read_pem(
                ca,
                &format!("--{p}trusted-ca-file"),
            )?));
        }
        Ok(Some(cfg))
    }

    /// The same settings for a raw TLS listener (`rediss://`), as rustls's server config.
    fn rustls_server(&self) -> anyhow::Result<Option<Arc<tokio_rustls::rustls::ServerConfig>>> {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let p = self.prefix;
        let (Some(cert), Some(key)) = (self.cert, self.key) else { return Ok(None) };
        let certs = CertificateDer::pem_slice_iter(&read_pem(cert, &format!("--{p}cert-file"))?)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("--{p}cert-file {}: not PEM certificates", cert.display()))?;
        let key = PrivateKeyDer::from_pem_slice(&read_pem(key, &format!("--{p}key-file"))?)
            .with_context(|| format!("--{p}key-file {}: no PEM private key", key.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let builder = if self.cert_auth {
            let ca = self.ca.with_context(|| format!("--{p}client-cert-auth needs --{p}trusted-ca-file"))?;
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&read_pem(ca, &format!("--{p}trusted-ca-file"))?) {
                roots.add(c.with_context(|| format!("--{p}trusted-ca-file {}: not PEM", ca.display()))?)?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let cfg = builder.with_single_cert(certs, key).context("--cert-file and --key-file do not match")?;
        Ok(Some(Arc::new(cfg)))
    }

    /// The client side (this member connecting to its peers): trusts the CA, presents the
    /// member's certificate.
    fn client(&self) -> anyhow::Result<Option<tonic::transport::ClientTlsConfig>> {
        let p = self.prefix;
        let Some(ca) = self.ca else { return Ok(None) };
        let mut cfg = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read_pem(ca, &format!("--{p}trusted-ca-file"))?));
        if let (Some(c), Some(k)) = (self.cert, self.key) {
            cfg = cfg.identity(tonic::transport::Identity::from_pem(
                read_pem(c, &format!("--{p}cert-file"))?,
                read_pem(k, &format!("--{p}key-file"))?,
            ));
        }
        Ok(Some(cfg))
    }
}

/// A tonic server builder for one listener: with TLS if it is an `https://` one.
fn builder(tls: bool, cfg: &Option<tonic::transport::ServerTlsConfig>) -> anyhow::Result<tonic::transport::Server> {
    let b = tonic::transport::Server::builder();
    if !tls {
        return Ok(b);
    }
    let cfg = cfg.clone().context("https:// URLs need a certificate (--cert-file/--key-file or --peer-...)")?;
    Ok(b.tls_config(cfg)?)
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        // openraft reports every failed heartbeat to an unreachable peer as a warning; leader
        // changes are logged by cairn itself.
        tracing_subscriber::EnvFilter::new(format!("{level},openraft=error,h2=warn,tower=warn,hyper=warn"))
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi)
        .try_init();
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

pub async fn run(a: ServerArgs) -> anyhow::Result<ExitCode> {
    init_logging(&a.log_level);
    let limits = a.limits();
    limits.validate().map_err(anyhow::Error::msg)?;
    let timers = RaftTimers { heartbeat_ms: a.heartbeat_interval, election_timeout_ms: a.election_timeout };
    timers.validate().map_err(anyhow::Error::msg)?;
    if a.snapshot_count == 0 {
        bail!("--snapshot-count must be positive");
    }
    let auto_compaction =
        cairn_services::compactor::AutoCompaction::parse(&a.auto_compaction_mode, &a.auto_compaction_retention)
            .map_err(anyhow::Error::msg)?;
    let state = match a.initial_cluster_state.as_str() {
        "new" => ClusterState::New,
        "existing" => ClusterState::Existing,
        other => bail!("--initial-cluster-state must be \"new\" or \"existing\", got {other:?}"),
    };
    #[cfg(feature = "failpoints")]
    for b in &a.bug {
        tracing::warn!(bug = %b, "DELIBERATE DEFECT switched on (failpoints build, for the chaos harness)");
        cairn_types::faults::enable_bug(b);
    }
    // Failpoints builds keep unsynced writes in memory, so a SIGKILL or a power cut loses them
    // as a real power cut would (see `cairn_storage::volatile`).
    #[cfg(feature = "failpoints")]
    {
        cairn_storage::volatile::enable();
        cairn_types::faults::set_power_cut(|tear| cairn_storage::volatile::power_cut(tear));
    }
    let unsafe_no_fsync = a.unsafe_no_fsync || cairn_types::faults::bug("no-fsync");
    if a.unsafe_no_fsync {
        tracing::warn!("--unsafe-no-fsync is set: acknowledged writes can be lost on power failure");
    }
    if a.unsafe_lease_reads {
        tracing::warn!("--unsafe-lease-reads is set: linearizable reads rely on clocks and may be stale after pauses");
    }
    let client_tls = TlsFiles {
        cert: a.cert_file.as_deref(),
        key: a.key_file.as_deref(),
        ca: a.trusted_ca_file.as_deref(),
        cert_auth: a.client_cert_auth,
        prefix: "",
    };
    let peer_tls = TlsFiles {
        cert: a.peer_cert_file.as_deref(),
        key: a.peer_key_file.as_deref(),
        ca: a.peer_trusted_ca_file.as_deref(),
        cert_auth: a.peer_client_cert_auth,
        prefix: "peer-",
    };
    let client_server_tls = client_tls.server()?;
    let peer_server_tls = peer_tls.server()?;
    if let Some(c) = peer_tls.client()? {
        cairn_raft::network::set_peer_tls(c);
    }
    for (urls, cfg, what) in [
        (&a.listen_client_urls, &client_server_tls, "--listen-client-urls"),
        (&a.listen_peer_urls, &peer_server_tls, "--listen-peer-urls"),
    ] {
        if cfg.is_none() && urls.iter().any(|u| u.starts_with("https://")) {
            let p = if what.contains("peer") { "peer-" } else { "" };
            bail!("{what} has an https:// URL but --{p}cert-file/--{p}key-file are not set");
        }
    }
    if a.initial_advertise_peer_urls.iter().any(|u| u.starts_with("https://")) && a.peer_trusted_ca_file.is_none() {
        bail!("https:// peer URLs need --peer-trusted-ca-file to verify the other members");
    }
    let data_dir = a.data_dir();
    let lock = lock_data_dir(&data_dir)?;

    // Bind every listener before joining anything, so a port clash fails fast.
    let peer_listeners = listen(&a.listen_peer_urls, "peer traffic").await?;
    let client_listeners = listen(&a.listen_client_urls, "client traffic").await?;
    let metrics_listeners = listen(&a.listen_metrics_urls, "metrics").await?;
    let (redis_listen, redis_advertise) = a.redis_urls().map_err(anyhow::Error::msg)?;
    // rediss:// listeners serve TLS with the client traffic's certificate flags (--cert-file,
    // --key-file, and --client-cert-auth with --trusted-ca-file).
    let redis_tls = client_tls.rustls_server()?;
    if redis_tls.is_none() && redis_listen.iter().any(|u| u.starts_with("rediss://")) {
        bail!("--listen-redis-urls has a rediss:// URL but --cert-file/--key-file are not set");
    }
    let mut redis_listeners = Vec::new();
    for u in &redis_listen {
        let tls = u.starts_with("rediss://");
        let http = format!("http://{}", u.trim_start_matches("redis://").trim_start_matches("rediss://"));
        for (l, _) in listen(std::slice::from_ref(&http), "Redis clients").await? {
            redis_listeners.push((l, tls.then(|| redis_tls.clone()).flatten()));
        }
    }

    let identity = match boot::load_identity(&data_dir)? {
        Some(id) => {
            tracing::info!(
                member = format!("{:x}", id.member_id),
                "restarting with the identity in {}",
                data_dir.display()
            );
            id
        }
        None => {
            let (initial_cluster, state) = if a.join.is_empty() {
                (a.initial_cluster()?, state)
            } else {
                (join(&a.join, &a.name, &a.initial_advertise_peer_urls).await?, ClusterState::Existing)
            };
            let opts = BootOptions {
                name: a.name.clone(),
                data_dir: data_dir.clone(),
                initial_cluster,
                state,
                token: a.initial_cluster_token.clone(),
                advertise_peer_urls: a.initial_advertise_peer_urls.clone(),
            };
            let id = boot::identify(&opts).await?;
            boot::save_identity(&data_dir, &id)?;
            id
        }
    };
    tracing::info!(
        name = %identity.name,
        member = format!("{:x}", identity.member_id),
        cluster = format!("{:x}", identity.cluster_id),
        "starting member"
    );

    // One HTTP/2 connection to each peer carries everything sent to it: the meta group's Raft
    // messages, forwarded requests and every range's batches.
    // The meta group and the ranges share one transport over them (`range::mux`).
    let peer_mux = cairn_raft::range::mux::Mux::new(cairn_raft::network::PeerChannels::default());
    let node = RaftNode::open(
        NodeOptions {
            id: identity.member_id,
            data_dir: data_dir.clone(),
            timers,
            snapshot_count: a.snapshot_count,
            unsafe_no_fsync,
            engine_cache_bytes: a.backend_cache_bytes,
            batch_bytes: a.backend_batch_bytes,
            wal_faults: wal_faults(),
            mux: peer_mux.clone(),
        },
        lock,
    )
    .await?;

    cairn_raft::network::set_cluster_id(identity.cluster_id);
    // The data tier's range replicas on this node, over their own shared log and engine.
    let ranges = cairn_raft::range::RangeHost::open(
        cairn_raft::range::RangeHostOptions {
            node_id: identity.member_id,
            dir: data_dir.join("member").join("ranges"),
            // Idle ranges hibernate (`range::hibernate`); a busy one heartbeats on its own, at
            // a third of the meta group's rate, so it costs a third as much (its failover
            // takes three election timeouts).
            timers: RaftTimers {
                heartbeat_ms: timers.heartbeat_ms * RANGE_TIMER_FACTOR,
                election_timeout_ms: timers.election_timeout_ms * RANGE_TIMER_FACTOR,
            },
            snapshot_count: a.snapshot_count,
            unsafe_no_fsync,
            engine_cache_bytes: a.range_engine_cache_bytes,
            engine_buffer: cairn_storage::BufferLimits {
                bytes: a.backend_batch_bytes,
                read_cache_bytes: a.range_read_cache_bytes,
                ..Default::default()
            },
            split_bytes: a.range_split_bytes,
            mux: peer_mux,
            move_catch_up_max: cairn_raft::range::host::MOVE_CATCH_UP_MAX,
        },
        Arc::new(cairn_services::cache::RedisApplier),
    )
    .await
    .context("opening the data tier's storage")?;
    let peer_limits = cairn_raft::PeerLimits::for_quota(identity.cluster_id, limits.quota_backend_bytes);
    let peer_service = PeerService::new(node.raft.clone(), node.sm.clone(), node.contact.clone(), peer_limits);
    let ranges_service = cairn_raft::range::mux::RangesService::new(identity.cluster_id, ranges.clone())
        .with_meta(peer_service.meta_receiver());
    let max_peer = cairn_raft::network::PEER_MESSAGE_BYTES_MAX;
    for (l, tls) in peer_listeners {
        let svc = PeerServer::new(peer_service.clone())
            .max_decoding_message_size(max_peer)
            .max_encoding_message_size(max_peer);
        let b = builder(tls, &peer_server_tls)?;
        let ranges_svc = ranges_service.clone().server();
        // Peers cancel requests routinely (a Redis client that hung up while its request was
        // forwarded): h2's guard against rapid resets (20 by default) would close the whole
        // connection, and every range's Raft traffic on it.
        let b = b.http2_max_pending_accept_reset_streams(Some(10_000));
        // One connection carries all of a peer's traffic: a stream whose handler reads slowly
        // (a snapshot being written) must not use up the whole connection's window.
        let b = b.initial_connection_window_size(cairn_raft::network::PEER_CONNECTION_WINDOW_BYTES);
        tokio::spawn(async move {
            let r = b.tcp_nodelay(true).add_service(svc).add_service(ranges_svc).serve_with_incoming(incoming(l)).await;
            if let Err(e) = r {
                tracing::error!(error = %e, "peer listener failed");
            }
        });
    }

    let cfg = MemberConfig {
        name: identity.name.clone(),
        member_id: identity.member_id,
        cluster_id: identity.cluster_id,
        client_urls: a.advertise_client_urls.clone(),
        peer_urls: a.initial_advertise_peer_urls.clone(),
        token: a.initial_cluster_token.clone(),
        limits,
        request_timeout: Duration::from_secs(5) + Duration::from_millis(2 * a.election_timeout),
        election_timeout: Duration::from_millis(a.election_timeout),
        unsafe_lease_reads: a.unsafe_lease_reads,
        unsafe_no_fsync: a.unsafe_no_fsync,
        watch_progress_interval: a.experimental_watch_progress_notify_interval,
        auth_token_ttl: Duration::from_secs(a.auth_token_ttl),
        bcrypt_cost: a.bcrypt_cost,
    };
    let cluster = Router::new(cfg, node, Arc::new(Metrics::new()));
    if let Some(initial) = identity.initial.clone() {
        // One member (the lowest id) initializes the membership; the others learn it from its
        // first append. openraft tolerates identical initialization on every member, but each
        // member's first entry then carries its own leader id and the logs must be reconciled
        // (seen here as a second election right after the first). A member that has heard
        // nothing after a while initializes itself too, so a cluster still forms if the lowest
        // member never starts.
        let c = cluster.clone();
        let first = *initial.keys().next().expect("initial cluster is not empty");
        tokio::spawn(async move {
            if c.id() != first {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            c.initialize_if_new(initial.into_iter().collect()).await;
        });
    }

    peer_service.set_handler(Arc::new(Forwarded::new(cluster.clone())));
    let tier = cairn_services::data::DataTier::start(
        cluster.clone(),
        ranges.clone(),
        cairn_services::data::TierOptions {
            replication_factor: a.replication_factor,
            initial_ranges: a.initial_ranges,
            redis_urls: redis_advertise,
            data_only: !a.join.is_empty(),
        },
    );
    if !a.placement_interval.is_zero() {
        let cfg = cairn_services::placer::Config {
            replication_factor: a.replication_factor,
            split_bytes: a.range_split_bytes,
            split_qps: a.range_split_qps,
            merge_bytes: a.range_split_bytes / 4,
            merge_delay_ms: a.range_merge_delay.as_millis() as u64,
            dead_node_timeout_ms: a.dead_node_timeout.as_millis() as u64,
            keep: cairn_services::data::initial_boundaries(a.initial_ranges),
            ..Default::default()
        };
        cairn_services::placer::Placer::start(tier.clone(), cfg, a.placement_interval);
    }
    // Expired Redis keys are deleted by their range's leader, a few at a time.
    cairn_services::expiry::start(tier.clone(), cairn_services::expiry::EVERY);

    for (l, tls) in client_listeners {
        // gRPC, and on the same port (as etcd) the HTTP endpoints and the JSON gateway.
        let api = Api::new(cluster.clone());
        let http = cairn_api::http::router(cluster.clone())
            .merge(cairn_api::http::tier_router(tier.clone(), cairn_services::auth::Auth::new(cluster.clone())))
            .merge(cairn_api::gateway::router(api.clone()));
        let routes = api.services().add_to(tonic::service::Routes::from(http));
        let b = builder(tls, &client_server_tls)?;
        tokio::spawn(async move {
            let r = b
                .accept_http1(true)
                .tcp_nodelay(true)
                .layer(tower::util::MapResponseLayer::new(cairn_api::grpc::grpc_go_decode_errors))
                .add_routes(routes)
                .serve_with_incoming(incoming(l))
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "client listener failed");
            }
        });
    }
    for (l, _) in metrics_listeners {
        let router = cairn_api::http::router(cluster.clone())
            .merge(cairn_api::http::tier_router(tier.clone(), cairn_services::auth::Auth::new(cluster.clone())));
        tokio::spawn(async move {
            if let Err(e) = axum::serve(l, router).await {
                tracing::error!(error = %e, "metrics listener failed");
            }
        });
    }

    cluster.metrics.set_tier(&tier);
    let cache = Arc::new(cairn_services::cache::Cache::new(tier.clone()));
    let clients_memory_max = a.redis_maxmemory_clients;
    for (l, tls) in redis_listeners {
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let backend = Arc::new(
            cairn_api::redis::TierBackend::new(cache.clone())
                .with_auth(cairn_services::auth::Auth::new(cluster.clone())),
        );
        tokio::spawn(async move {
            loop {
                let (s, _) = match l.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "Redis listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = s.set_nodelay(true);
                let peer = cairn_api::redis::Peer {
                    addr: s.peer_addr().ok(),
                    laddr: s.local_addr().ok(),
                    fd: Some(std::os::fd::AsRawFd::as_raw_fd(&s)),
                };
                let backend = backend.clone();
                let acceptor = acceptor.clone();
                // The connection's futures are boxed: their nesting is too deep for rustc's
                // layout query inside this task otherwise.
                tokio::spawn(async move {
                    let limits = cairn_api::redis::Limits { clients_memory_max, ..Default::default() };
                    match acceptor {
                        None => {
                            let _ = Box::pin(cairn_api::redis::serve_client(s, peer, backend, limits)).await;
                        }
                        // A handshake counts against `maxclients` (past it the connection is
                        // closed: no RESP error can reach a client before TLS is up), and one
                        // that does not finish in time is dropped.
                        Some(a) => match cairn_api::redis::clients::handshake(limits.clients_max) {
                            None => tracing::debug!("Redis TLS connection refused: max number of clients reached"),
                            Some(place) => match tokio::time::timeout(TLS_HANDSHAKE_MAX, a.accept(s)).await {
                                Ok(Ok(s)) => {
                                    drop(place);
                                    let _ = Box::pin(cairn_api::redis::serve_client(s, peer, backend, limits)).await;
                                }
                                Ok(Err(e)) => tracing::debug!(error = %e, "Redis TLS handshake failed"),
                                Err(_) => tracing::debug!("Redis TLS handshake timed out"),
                            },
                        },
                    }
                });
            }
        });
    }

    {
        let members = Members::new(cluster.clone());
        tokio::spawn(async move { members.publish_self().await });
    }
    tokio::spawn(cairn_services::compactor::run(cluster.clone(), auto_compaction));
    let removed = watch_removal(cluster.clone());
    let fatal = watch_fatal(cluster.clone());

    let code = tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            ExitCode::SUCCESS
        }
        reason = ranges_failed(ranges.clone()) => {
            tracing::error!(
                %reason,
                "the data tier cannot go on; exiting. Nothing written after a failed write or fsync was \
                 acknowledged: fix the disk and restart, and the node recovers from its log and catches up. \
                 A range whose Raft panicked found its state inconsistent (such as a follower's log gone \
                 back, which only lost durable data causes): check the disks before restarting"
            );
            bounded("the meta group", FATAL_SHUTDOWN_MAX, cluster.shutdown()).await;
            return Ok(ExitCode::FAILURE);
        }
        reason = fatal => {
            tracing::error!(
                %reason,
                "Raft stopped on a fatal error; exiting. Nothing written after the failure was acknowledged; \
                 fix the cause (the disk, its space) and restart: the member recovers from its log and catches up"
            );
            bounded("the meta group", FATAL_SHUTDOWN_MAX, cluster.shutdown()).await;
            return Ok(ExitCode::FAILURE);
        }
        _ = removed => {
            tracing::warn!("this member has been permanently removed from the cluster");
            // A removed leader keeps leading briefly, hands leadership to the most up-to-date
            // voter (openraft's step-down) and answers what it has in flight: give it that
            // time before exiting, as etcd's removed members also stop only after applying.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while cluster.is_leader() && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            tracing::warn!("exiting: removed from the cluster");
            ExitCode::SUCCESS
        }
    };
    bounded("the ranges", SHUTDOWN_MAX, ranges.shutdown()).await;
    bounded("the meta group", SHUTDOWN_MAX, cluster.shutdown()).await;
    Ok(code)
}

/// How long a clean stop (SIGTERM) waits for the ranges, then the meta group, to stop.
const SHUTDOWN_MAX: Duration = Duration::from_secs(10);
/// How long a node that cannot go on (a fatal Raft or storage error) waits for its Raft to
/// stop before it exits anyway. Nothing is lost by not waiting: nothing after the failure was
/// acknowledged, and what was is on disk; a node that lingers deaf only delays its restart.
const FATAL_SHUTDOWN_MAX: Duration = Duration::from_secs(2);

/// Waits for `stop` for at most `max`; past it, says so and goes on exiting.
async fn bounded(what: &str, max: Duration, stop: impl std::future::Future<Output = ()>) {
    if tokio::time::timeout(max, stop).await.is_err() {
        tracing::warn!("{what} did not stop within {max:?}; exiting without waiting for it");
    }
}

/// How long a rediss:// client may take to finish its TLS handshake.
const TLS_HANDSHAKE_MAX: Duration = Duration::from_secs(10);

/// How much slower than the meta group's the ranges' Raft timers run.
const RANGE_TIMER_FACTOR: u64 = 3;

/// Resolves with the reason once the data tier cannot go on (its shared log failed, or a
/// range's Raft stopped on a fatal error): the node must stop, as for the meta group.
/// The log is checked every 200 ms; the ranges' cores, a message to each, every 2 s (1,000
/// idle ranges must cost little).
async fn ranges_failed(ranges: Arc<cairn_raft::range::RangeHost>) -> String {
    let mut tick = 0u64;
    loop {
        if let Some(reason) = ranges.fatal(tick.is_multiple_of(10)).await {
            return reason;
        }
        tick = tick.wrapping_add(1);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The Raft log's storage faults, set by the chaos harness (failpoints builds only).
fn wal_faults() -> Option<cairn_storage::wal::FaultHook> {
    if !cfg!(feature = "failpoints") {
        return None;
    }
    use cairn_storage::wal::IoFault;
    Some(cairn_storage::wal::FaultHook(Arc::new(|| match cairn_types::faults::disk()?.as_str() {
        "wal-fsync" => Some(IoFault::SyncError),
        "wal-write" => Some(IoFault::WriteError),
        "wal-enospc" => Some(IoFault::NoSpace),
        "wal-short-write" => Some(IoFault::ShortWrite),
        _ => None,
    })))
}

/// Resolves with the reason once Raft has stopped on a fatal error (a failed log write or
/// fsync, a failed state write): the member cannot go on and exits.
async fn watch_fatal(cluster: Arc<Router>) -> String {
    // Polled, as `watch_removal`.
    loop {
        if let Some(reason) = cluster.fatal().await {
            return reason;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Resolves once this member has been removed from the committed membership (after having been
/// in it), as etcd's members stop themselves then.
async fn watch_removal(cluster: Arc<Router>) {
    // Polled: subscribing to the metrics would wake this task on every log write.
    let mut seen = false;
    loop {
        let present = cluster.is_member();
        // A member that joined replays configurations from before it was added: absence only
        // counts after this member has been seen in a committed configuration.
        if present {
            seen = true;
        } else if seen {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `--join`: asks a member at one of `urls` to add this node to the meta group as a learner
/// (etcd's MemberAdd), and answers the cluster's members, this node among them by `name`, to
/// start from as an existing member. A node added before (it stopped before saving its
/// identity) is found in the member list instead.
async fn join(urls: &[String], name: &str, peer_urls: &[String]) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    use cairn_proto::etcdserverpb as pb;
    use cairn_proto::etcdserverpb::cluster_client::ClusterClient;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        for url in urls {
            let mut c = ClusterClient::new(crate::client::channel(&crate::client::normalize(url))?);
            let add = pb::MemberAddRequest { peer_ur_ls: peer_urls.to_vec(), is_learner: true };
            let members = match c.member_add(add).await {
                Ok(r) => r.into_inner().members,
                Err(s) if s.message().contains("Peer URLs already exists") => {
                    match c.member_list(pb::MemberListRequest { linearizable: true }).await {
                        Ok(r) => r.into_inner().members,
                        Err(s) => {
                            last = format!("{url}: {}", s.message());
                            continue;
                        }
                    }
                }
                Err(s) => {
                    last = format!("{url}: {}", s.message());
                    continue;
                }
            };
            tracing::info!(via = %url, "joined the cluster as a data node");
            return Ok(members
                .into_iter()
                .map(|m| {
                    let me = m.peer_ur_ls.iter().any(|u| peer_urls.contains(u));
                    let n = if me {
                        name.to_string()
                    } else if m.name.is_empty() {
                        format!("{:x}", m.id)
                    } else {
                        m.name
                    };
                    (n, m.peer_ur_ls)
                })
                .collect());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("cannot join the cluster at {}: {last}", urls.join(","))
}
