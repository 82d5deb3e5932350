//! Prometheus metrics. Gauges that mirror Raft and store state are refreshed when scraped; the
//! rest are counted where things happen. A few carry etcd's names so existing etcd dashboards
//! and alerts work unchanged.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::router::Router;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    pub method: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~13 s
    Histogram::new(exponential_buckets(0.00005, 2.0, 19))
}

pub struct Metrics {
    registry: Registry,
    pub grpc_requests: Family<GrpcLabels, Counter>,
    pub grpc_seconds: Family<MethodLabels, Histogram>,
    pub forwarded: Counter,
    /// Forwarded writes answered from this member's own apply, before the leader's reply.
    pub forwarded_answered_by_apply: Counter,
    /// Round trips of forwarded batches to the leader.
    pub forward_batch_seconds: Histogram,
    /// Waits of a member that forwarded a write until it applied the write itself.
    pub catch_up_seconds: Histogram,
    pub proposals_committed: Counter,
    pub proposals_failed: Counter,
    pub proposal_seconds: Histogram,
    pub read_index_rounds: Counter,
    pub leader_changes: Counter,
    /// etcd's etcd_debugging_mvcc_watch_stream_total / watcher_total.
    pub watch_streams: Gauge,
    pub watchers: Gauge,
    pub watch_events_sent: Counter,
    /// Times a watch stream fell behind the event feed and caught up from the store.
    pub watch_resyncs: Counter,
    has_leader: Gauge,
    is_leader: Gauge,
    term: Gauge,
    last_log_index: Gauge,
    committed_index: Gauge,
    applied_index: Gauge,
    db_size: Gauge,
    db_size_in_use: Gauge,
    compaction_steps: Gauge,
    compaction_removed: Gauge,
    compaction_step_max_seconds: Gauge<f64, AtomicU64>,
    wal_size: Gauge,
    revision: Gauge,
    compact_revision: Gauge,
    keys: Gauge,
    members: Gauge,
    wal_fsync_enabled: Gauge,
    wal_disk_full: Gauge,
    wal_syncs: Gauge,
    wal_entries: Gauge,
    wal_bytes: Gauge,
    wal_sync_seconds: Gauge<f64, AtomicU64>,
    store_flushes: Gauge,
    store_flush_seconds: Gauge<f64, AtomicU64>,
    store_flush_max_seconds: Gauge<f64, AtomicU64>,
    ranges: Gauge,
    ranges_leading: Gauge,
    ranges_hibernating: Gauge,
    redis_expired_keys: Gauge,
    range_log_bytes: Gauge,
    range_log_queued_bytes: Gauge,
    range_queued_write_bytes: Gauge,
    range_engine_buffered_bytes: Gauge,
    range_engine_flushes: Gauge,
    range_read_cache_bytes: Gauge,
    range_read_cache_hits: Gauge,
    range_engine_cache_bytes: Gauge,
    range_engine_cache_misses: Gauge,
    range_engine_cache_evictions: Gauge,
    range_read_cache_misses: Gauge,
    range_read_rounds: Gauge,
    range_reads_leased: Gauge,
    range_engine_flush_seconds: Gauge<f64, AtomicU64>,
    range_engine_flush_max_seconds: Gauge<f64, AtomicU64>,
    range_log_writes: Gauge,
    range_log_operations: Gauge,
    range_transport_messages: Gauge,
    range_transport_calls: Gauge,
    range_snapshots_sent: Gauge,
    range_snapshot_bytes_sent: Gauge,
    /// The data tier on this node, once it runs (set by the server).
    tier: std::sync::OnceLock<std::sync::Weak<crate::data::DataTier>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let m = Metrics {
            grpc_requests: Family::default(),
            grpc_seconds: Family::new_with_constructor(latency_histogram),
            forwarded: Counter::default(),
            forwarded_answered_by_apply: Counter::default(),
            forward_batch_seconds: latency_histogram(),
            catch_up_seconds: latency_histogram(),
            proposals_committed: Counter::default(),
            proposals_failed: Counter::default(),
            proposal_seconds: latency_histogram(),
            read_index_rounds: Counter::default(),
            leader_changes: Counter::default(),
            watch_streams: Gauge::default(),
            watchers: Gauge::default(),
            watch_events_sent: Counter::default(),
            watch_resyncs: Counter::default(),
            has_leader: Gauge::default(),
            is_leader: Gauge::default(),
            term: Gauge::default(),
            last_log_index: Gauge::default(),
            committed_index: Gauge::default(),
            applied_index: Gauge::default(),
            db_size: Gauge::default(),
            db_size_in_use: Gauge::default(),
            compaction_steps: Gauge::default(),
            compaction_removed: Gauge::default(),
            compaction_step_max_seconds: Gauge::default(),
            wal_size: Gauge::default(),
            revision: Gauge::default(),
            compact_revision: Gauge::default(),
            keys: Gauge::default(),
            members: Gauge::default(),
            wal_fsync_enabled: Gauge::default(),
            wal_disk_full: Gauge::default(),
            wal_syncs: Gauge::default(),
            ranges: Gauge::default(),
            ranges_leading: Gauge::default(),
            ranges_hibernating: Gauge::default(),
            redis_expired_keys: Gauge::default(),
            range_log_bytes: Gauge::default(),
            range_log_queued_bytes: Gauge::default(),
            range_queued_write_bytes: Gauge::default(),
            range_engine_buffered_bytes: Gauge::default(),
            range_engine_flushes: Gauge::default(),
            range_read_cache_bytes: Gauge::default(),
            range_read_cache_hits: Gauge::default(),
            range_engine_cache_bytes: Gauge::default(),
            range_engine_cache_misses: Gauge::default(),
            range_engine_cache_evictions: Gauge::default(),
            range_read_cache_misses: Gauge::default(),
            range_read_rounds: Gauge::default(),
            range_reads_leased: Gauge::default(),
            range_engine_flush_seconds: Gauge::default(),
            range_engine_flush_max_seconds: Gauge::default(),
            range_log_writes: Gauge::default(),
            range_log_operations: Gauge::default(),
            range_transport_messages: Gauge::default(),
            range_transport_calls: Gauge::default(),
            range_snapshots_sent: Gauge::default(),
            range_snapshot_bytes_sent: Gauge::default(),
            tier: std::sync::OnceLock::new(),
            wal_entries: Gauge::default(),
            wal_bytes: Gauge::default(),
            wal_sync_seconds: Gauge::default(),
            store_flushes: Gauge::default(),
            store_flush_seconds: Gauge::default(),
            store_flush_max_seconds: Gauge::default(),
            registry: Registry::default(),
        };
        r.register("cairn_grpc_requests", "Client gRPC requests by method and status code", m.grpc_requests.clone());
        r.register("cairn_grpc_request_duration_seconds", "Client gRPC request latency", m.grpc_seconds.clone());
        r.register("cairn_forwarded_requests", "Requests forwarded to the leader", m.forwarded.clone());
        r.register(
            "cairn_forwarded_answered_by_apply",
            "Forwarded writes answered from this member's own apply of the entry, before the leader's reply came",
            m.forwarded_answered_by_apply.clone(),
        );
        r.register(
            "cairn_forward_batch_duration_seconds",
            "Round trip of a batch of forwarded requests to the leader",
            m.forward_batch_seconds.clone(),
        );
        r.register(
            "cairn_catch_up_duration_seconds",
            "Wait of a member that forwarded a write until it has applied the write itself",
            m.catch_up_seconds.clone(),
        );
        r.register(
            "etcd_server_proposals_committed",
            "Proposals committed and applied (etcd name)",
            m.proposals_committed.clone(),
        );
        r.register(
            "etcd_server_proposals_failed",
            "Proposals that failed or timed out (etcd name)",
            m.proposals_failed.clone(),
        );
        r.register("cairn_proposal_duration_seconds", "Time from proposal to applied", m.proposal_seconds.clone());
        r.register("cairn_read_index_rounds", "ReadIndex rounds served as leader", m.read_index_rounds.clone());
        r.register("etcd_server_leader_changes_seen", "Leader changes seen (etcd name)", m.leader_changes.clone());
        r.register("etcd_debugging_mvcc_watch_stream_total", "Open watch streams (etcd name)", m.watch_streams.clone());
        r.register("etcd_debugging_mvcc_watcher_total", "Active watchers (etcd name)", m.watchers.clone());
        r.register("cairn_watch_events_sent", "Watch events sent to clients", m.watch_events_sent.clone());
        r.register(
            "cairn_watch_resyncs",
            "Watch streams that fell behind the event feed and caught up from the store",
            m.watch_resyncs.clone(),
        );
        r.register("etcd_server_has_leader", "1 if a leader is known (etcd name)", m.has_leader.clone());
        r.register("etcd_server_is_leader", "1 if this member leads (etcd name)", m.is_leader.clone());
        r.register("cairn_raft_term", "Current Raft term", m.term.clone());
        r.register("cairn_raft_last_log_index", "Index of the last log entry", m.last_log_index.clone());
        r.register("cairn_raft_committed_index", "Committed index", m.committed_index.clone());
        r.register("cairn_raft_applied_index", "Applied index", m.applied_index.clone());
        r.register(
            "etcd_mvcc_db_total_size_in_bytes",
            "State store size: the file plus what apply buffers for it (etcd name)",
            m.db_size.clone(),
        );
        r.register(
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "Bytes of every revision held, buffered or in the file; what the quota counts (etcd name)",
            m.db_size_in_use.clone(),
        );
        r.register(
            "cairn_compaction_steps",
            "Bounded steps taken to remove compacted history",
            m.compaction_steps.clone(),
        );
        r.register(
            "cairn_compaction_removed_revisions",
            "Revisions removed by compaction since start",
            m.compaction_removed.clone(),
        );
        r.register(
            "cairn_compaction_step_max_seconds",
            "Longest time one compaction step held the store (apply waits at most this)",
            m.compaction_step_max_seconds.clone(),
        );
        r.register("cairn_wal_size_bytes", "Raft log size on disk", m.wal_size.clone());
        r.register("etcd_debugging_mvcc_current_revision", "Current store revision (etcd name)", m.revision.clone());
        r.register(
            "etcd_debugging_mvcc_compact_revision",
            "Last compaction revision (etcd name)",
            m.compact_revision.clone(),
        );
        r.register("etcd_debugging_mvcc_keys_total", "Live keys (etcd name)", m.keys.clone());
        r.register("cairn_cluster_members", "Members in the Raft configuration", m.members.clone());
        r.register("cairn_wal_fsync_enabled", "0 when --unsafe-no-fsync is set", m.wal_fsync_enabled.clone());
        r.register(
            "cairn_wal_disk_full",
            "1 while the Raft log waits for disk space (ENOSPC); writes are refused meanwhile",
            m.wal_disk_full.clone(),
        );
        r.register("cairn_wal_syncs", "Raft log write batches, one fdatasync each (group commit)", m.wal_syncs.clone());
        r.register("cairn_wal_entries", "Raft log entries written", m.wal_entries.clone());
        r.register("cairn_wal_bytes", "Raft log entry bytes written", m.wal_bytes.clone());
        r.register("cairn_wal_sync_seconds", "Time spent in fdatasync", m.wal_sync_seconds.clone());
        r.register("cairn_store_flushes", "Writes of applied changes to the state engine", m.store_flushes.clone());
        r.register("cairn_ranges", "Data tier range replicas on this node", m.ranges.clone());
        r.register("cairn_ranges_leading", "Data tier ranges this node leads", m.ranges_leading.clone());
        r.register(
            "cairn_redis_expired_keys",
            "Expired Redis keys this node's range leaders deleted (active expiry) since it started",
            m.redis_expired_keys.clone(),
        );
        r.register(
            "cairn_ranges_hibernating",
            "Data tier range replicas on this node whose Raft timer is stopped (idle leaders, and followers of a leader whose node beats)",
            m.ranges_hibernating.clone(),
        );
        r.register(
            "cairn_range_log_bytes",
            "Bytes of the data tier's shared Raft log files",
            m.range_log_bytes.clone(),
        );
        r.register(
            "cairn_range_log_queued_bytes",
            "Bytes of appends, votes and purges queued for the data tier's shared log writer (at most 64 MiB; callers wait beyond)",
            m.range_log_queued_bytes.clone(),
        );
        r.register(
            "cairn_range_queued_write_bytes",
            "Room taken by client writes queued or in flight on this node's range replicas until each is answered (a write counts a KiB per whole KiB plus one; at most 64 MiB per range, or one larger write; writers wait beyond)",
            m.range_queued_write_bytes.clone(),
        );
        r.register(
            "cairn_range_engine_buffered_bytes",
            "Bytes of keys and values the data tier's ranges applied that wait in memory for the data engine",
            m.range_engine_buffered_bytes.clone(),
        );
        r.register(
            "cairn_range_read_cache_bytes",
            "Bytes the data tier's read cache holds: values read from the data engine, their keys and about 100 bytes each (--range-read-cache-bytes bounds it)",
            m.range_read_cache_bytes.clone(),
        );
        r.register(
            "cairn_range_engine_cache_bytes",
            "Bytes of the data file's pages the data engine's page cache holds (--range-engine-cache-bytes bounds it)",
            m.range_engine_cache_bytes.clone(),
        );
        r.register(
            "cairn_range_engine_cache_misses",
            "Pages the data engine read from its file because its page cache did not hold them",
            m.range_engine_cache_misses.clone(),
        );
        r.register(
            "cairn_range_engine_cache_evictions",
            "Pages the data engine's page cache dropped to make room",
            m.range_engine_cache_evictions.clone(),
        );
        r.register(
            "cairn_range_read_cache_hits",
            "Reads of the data engine answered by the read cache",
            m.range_read_cache_hits.clone(),
        );
        r.register(
            "cairn_range_read_cache_misses",
            "Reads of the data engine the read cache did not answer",
            m.range_read_cache_misses.clone(),
        );
        r.register(
            "cairn_range_read_rounds",
            "Read barrier rounds this node's range leaders ran through Raft (a lease check, or a heartbeat round when the lease had lapsed), each shared by the linearizable reads waiting for it",
            m.range_read_rounds.clone(),
        );
        r.register(
            "cairn_range_reads_leased",
            "Linearizable reads this node's range leaders let through on their read lease alone, without a round through Raft",
            m.range_reads_leased.clone(),
        );
        r.register(
            "cairn_range_engine_flushes",
            "Writes of that buffer to the data engine, one transaction each",
            m.range_engine_flushes.clone(),
        );
        r.register(
            "cairn_range_engine_flush_seconds",
            "Time spent writing that buffer to the data engine",
            m.range_engine_flush_seconds.clone(),
        );
        r.register(
            "cairn_range_engine_flush_max_seconds",
            "The longest single write of that buffer",
            m.range_engine_flush_max_seconds.clone(),
        );
        r.register(
            "cairn_range_log_writes",
            "Writes of the data tier's shared Raft log, one fsync each (group commit across ranges)",
            m.range_log_writes.clone(),
        );
        r.register(
            "cairn_range_log_operations",
            "Range appends, votes, truncations and purges those writes carried",
            m.range_log_operations.clone(),
        );
        r.register(
            "cairn_range_transport_messages",
            "Messages sent to other nodes on the peer transport: every group's Raft messages (the meta group's too) and forwarded Redis requests",
            m.range_transport_messages.clone(),
        );
        r.register(
            "cairn_range_transport_calls",
            "Batches that carried them (one per node, lane and batch)",
            m.range_transport_calls.clone(),
        );
        r.register(
            "cairn_range_snapshots_sent",
            "Whole range snapshots sent to followers the log had been purged past",
            m.range_snapshots_sent.clone(),
        );
        r.register("cairn_range_snapshot_bytes_sent", "Bytes of those snapshots", m.range_snapshot_bytes_sent.clone());
        r.register(
            "cairn_store_flush_seconds",
            "Time spent writing applied changes to the engine",
            m.store_flush_seconds.clone(),
        );
        r.register(
            "cairn_store_flush_max_seconds",
            "The longest single write of applied changes",
            m.store_flush_max_seconds.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// The data tier whose figures `render` reports.
    pub fn set_tier(&self, tier: &std::sync::Arc<crate::data::DataTier>) {
        let _ = self.tier.set(std::sync::Arc::downgrade(tier));
    }

    /// Updates the state gauges from `c` and renders everything in Prometheus text format.
    pub fn render(&self, c: &Router) -> String {
        {
            let st = c.node.status();
            self.has_leader.set(i64::from(st.leader.is_some()));
            self.is_leader.set(i64::from(st.leader == Some(c.id())));
            self.term.set(st.term as i64);
            self.last_log_index.set(st.last_log_index as i64);
            self.committed_index.set(st.committed_index as i64);
            self.applied_index.set(st.applied_index as i64);
            self.members.set(st.membership.nodes.len() as i64);
        }
        let store = c.store();
        let space = store.space();
        self.db_size.set(space.file_bytes as i64);
        self.db_size_in_use.set(space.in_use_bytes as i64);
        self.wal_size.set(c.node.wal.size_bytes() as i64);
        self.revision.set(store.current_revision());
        self.compact_revision.set(store.compact_revision().max(0));
        self.keys.set(store.key_count() as i64);
        self.wal_fsync_enabled.set(i64::from(!c.cfg.unsafe_no_fsync));
        let ws = c.node.wal.stats();
        self.wal_disk_full.set(i64::from(c.node.wal.disk_full()));
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed) as i64;
        self.wal_syncs.set(get(&ws.syncs));
        self.wal_entries.set(get(&ws.entries));
        self.wal_bytes.set(get(&ws.bytes));
        self.wal_sync_seconds.set(get(&ws.sync_micros) as f64 / 1e6);
        let fs = store.flush_stats();
        self.store_flushes.set(get(&fs.flushes));
        self.store_flush_seconds.set(get(&fs.micros) as f64 / 1e6);
        self.store_flush_max_seconds.set(get(&fs.max_micros) as f64 / 1e6);
        let cs = store.compact_stats();
        self.compaction_steps.set(get(&cs.steps));
        self.compaction_removed.set(get(&cs.removed));
        self.compaction_step_max_seconds.set(get(&cs.max_step_micros) as f64 / 1e6);
        if let Some(t) = self.tier.get().and_then(|w| w.upgrade()) {
            let host = t.host();
            let replicas = host.replicas();
            self.ranges.set(replicas.len() as i64);
            self.ranges_leading.set(replicas.iter().filter(|r| r.leader() == Some(c.id())).count() as i64);
            self.ranges_hibernating.set(replicas.iter().filter(|r| r.asleep()).count() as i64);
            self.redis_expired_keys.set(get(&crate::expiry::EXPIRED_KEYS));
            self.range_log_bytes.set(host.log_bytes() as i64);
            self.range_log_queued_bytes.set(host.log_queued_bytes() as i64);
            self.range_queued_write_bytes.set(host.queued_write_bytes() as i64);
            let eb = host.engine_buffer();
            self.range_engine_buffered_bytes.set(get(&eb.buffered_bytes));
            self.range_engine_flushes.set(get(&eb.flushes));
            self.range_read_cache_bytes.set(host.read_cache_bytes() as i64);
            self.range_read_cache_hits.set(get(&eb.cache_hits));
            let pc = host.engine_page_cache();
            self.range_engine_cache_bytes.set(pc.used_bytes as i64);
            self.range_engine_cache_misses.set(pc.read_misses as i64);
            self.range_engine_cache_evictions.set(pc.evictions as i64);
            self.range_read_cache_misses.set(get(&eb.cache_misses));
            let rs = host.read_stats();
            self.range_read_rounds.set(get(&rs.rounds));
            self.range_reads_leased.set(get(&rs.leased));
            self.range_engine_flush_seconds.set(get(&eb.micros) as f64 / 1e6);
            self.range_engine_flush_max_seconds.set(get(&eb.max_micros) as f64 / 1e6);
            let ls = host.log().stats();
            self.range_log_writes.set(get(&ls.writes));
            self.range_log_operations.set(get(&ls.operations));
            let ts = host.transport();
            self.range_transport_messages.set(get(&ts.messages));
            self.range_transport_calls.set(get(&ts.calls));
            self.range_snapshots_sent.set(get(&ts.snapshots));
            self.range_snapshot_bytes_sent.set(get(&ts.snapshot_bytes));
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

/// Rewrites the OpenMetrics text `prometheus_client` writes as Prometheus's text format 0.0.4:
/// a counter's HELP and TYPE take the name its samples have (`foo_total`), `info` families
/// become gauges named `foo_info`, `unknown` is `untyped`, and `# UNIT`, `# EOF` and `_created`
/// samples (which 0.0.4 does not know) go.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    // Family name -> its type (HELP comes before TYPE, so the types are gathered first).
    let kinds: std::collections::HashMap<&str, &str> =
        openmetrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|r| r.split_once(' ')).collect();
    let rename = |name: &str| match kinds.get(name) {
        Some(&"counter") => format!("{name}_total"),
        Some(&"info") => format!("{name}_info"),
        _ => name.to_string(),
    };
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let kind = match kind {
                "info" | "stateset" => "gauge",
                "unknown" => "untyped",
                k => k,
            };
            out.push_str(&format!("# TYPE {} {kind}\n", rename(name)));
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str(&format!("# HELP {} {help}\n", rename(name)));
        } else {
            let sample = line.split(['{', ' ']).next().unwrap_or("");
            if sample.strip_suffix("_created").is_some_and(|f| kinds.contains_key(f)) {
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod text_format_tests {
    use super::*;

    #[test]
    fn openmetrics_becomes_prometheus_0_0_4() {
        let open = "# HELP reqs Requests.\n# TYPE reqs counter\nreqs_total{code=\"0\"} 3\nreqs_created 1.5\n\
                    # HELP up Up.\n# TYPE up gauge\nup 1\n# HELP lat Latency.\n# TYPE lat histogram\n\
                    # UNIT lat seconds\nlat_bucket{le=\"+Inf\"} 2\nlat_sum 0.5\nlat_count 2\n# EOF\n";
        let want = "# HELP reqs_total Requests.\n# TYPE reqs_total counter\nreqs_total{code=\"0\"} 3\n\
                    # HELP up Up.\n# TYPE up gauge\nup 1\n# HELP lat Latency.\n# TYPE lat histogram\n\
                    lat_bucket{le=\"+Inf\"} 2\nlat_sum 0.5\nlat_count 2\n";
        assert_eq!(to_prometheus_text(open), want);
    }

    /// Every family of the real registry: each sample is announced by HELP and TYPE lines of
    /// its own name (what `promtool check metrics` checks), and nothing OpenMetrics-only is left.
    #[test]
    fn the_real_registry_converts_cleanly() {
        let m = Metrics::new();
        m.watch_resyncs.inc();
        let mut open = String::new();
        prometheus_client::encoding::text::encode(&mut open, &m.registry).unwrap();
        let text = to_prometheus_text(&open);
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
        let typed: std::collections::HashSet<&str> =
            text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|r| r.split(' ').next()).collect();
        let helped: std::collections::HashSet<&str> =
            text.lines().filter_map(|l| l.strip_prefix("# HELP ")).filter_map(|r| r.split(' ').next()).collect();
        assert_eq!(typed, helped);
        for l in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            let name = l.split(['{', ' ']).next().unwrap();
            let family =
                ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).filter(|f| typed.contains(f));
            assert!(typed.contains(name) || family.is_some(), "sample {name} has no TYPE line of its name");
        }
    }
}
