//! The HTTP listener (`--listen-metrics-urls`): Prometheus metrics, health, readiness and a
//! JSON status for operators.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use cairn_services::cluster::Cluster;
use cairn_services::maintenance::{alarm_name, Maintenance};
use cairn_services::members::Members;
use openraft::async_runtime::WatchReceiver;
use serde_json::json;

pub fn router(c: Arc<Cluster>) -> Router {
    let r = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/readyz", get(ready))
        .route("/livez", get(live))
        .route("/v1/status", get(status));
    #[cfg(feature = "failpoints")]
    let r = r.route("/debug/faults", get(get_faults).post(set_faults));
    r.with_state(c)
}

/// Test-only (`failpoints` builds): the chaos harness sets this member's link faults and clock.
#[cfg(feature = "failpoints")]
async fn set_faults(Json(f): Json<cairn_types::faults::Faults>) -> impl IntoResponse {
    tracing::warn!(faults = ?f, "fault injection");
    cairn_types::faults::set(f);
    StatusCode::NO_CONTENT
}

#[cfg(feature = "failpoints")]
async fn get_faults() -> impl IntoResponse {
    Json(cairn_types::faults::get())
}

async fn metrics(State(c): State<Arc<Cluster>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], c.metrics.render(&c))
}

/// etcd's `/health`: healthy when there is a leader, no alarm is raised, and a linearizable
/// read completes in time.
async fn health(State(c): State<Arc<Cluster>>) -> impl IntoResponse {
    let alarms = c.store().alarms();
    let reason = if !alarms.is_empty() {
        Some(format!("ALARM {}", alarms.iter().map(|a| alarm_name(a.1)).collect::<Vec<_>>().join(",")))
    } else if c.current_leader().is_none() {
        Some("RAFT NO LEADER".to_string())
    } else {
        match tokio::time::timeout(Duration::from_secs(1), c.read_barrier()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("QGET ERROR: {e}")),
            Err(_) => Some("QGET TIMEOUT".to_string()),
        }
    };
    match reason {
        None => (StatusCode::OK, Json(json!({"health": "true", "reason": ""}))),
        Some(r) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"health": "false", "reason": r}))),
    }
}

/// Ready to serve (etcd 3.5's `/readyz`): a leader is known, this member has published its name
/// and client URLs through the log (etcd's `ReadyNotify`: until then `member list` shows it as
/// unstarted), and a read-index round completes, so this member has applied everything committed
/// before the check. A member that restarted and is still replaying or catching up from the
/// leader is not ready.
async fn ready(State(c): State<Arc<Cluster>>) -> impl IntoResponse {
    if c.current_leader().is_none() {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: no leader\n".to_string());
    }
    if !c.store().members().contains_key(&c.id()) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: member attributes not yet published\n".to_string());
    }
    match tokio::time::timeout(Duration::from_secs(1), c.read_barrier()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n".to_string()),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "not ready: not caught up with the leader\n".to_string()),
    }
}

/// Liveness (etcd 3.5's `/livez`): the process answers HTTP. It does not depend on the cluster,
/// so an orchestrator does not restart members of a cluster that merely lost quorum.
async fn live() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

fn hex(id: u64) -> String {
    format!("{id:x}")
}

async fn status(State(c): State<Arc<Cluster>>) -> impl IntoResponse {
    let st = Maintenance::new(c.clone()).status();
    let (replication, heartbeat_ms) = {
        let m = c.raft().metrics();
        let m = m.borrow_watched();
        let rep: std::collections::BTreeMap<u64, u64> = m
            .replication
            .as_ref()
            .map(|r| r.iter().map(|(id, l)| (*id, l.map_or(0, |l| l.index))).collect())
            .unwrap_or_default();
        let hb: std::collections::BTreeMap<u64, u64> = m
            .heartbeat
            .as_ref()
            .map(|h| {
                h.iter()
                    .filter_map(|(id, t)| {
                        t.as_ref().map(|t| (*id, openraft::Instant::elapsed(&**t).as_millis() as u64))
                    })
                    .collect()
            })
            .unwrap_or_default();
        (rep, hb)
    };
    let members: Vec<_> = Members::new(c.clone())
        .list_local()
        .into_iter()
        .map(|m| {
            json!({
                "id": hex(m.id),
                "name": m.name,
                "peer_urls": m.peer_ur_ls,
                "client_urls": m.client_ur_ls,
                "is_learner": m.is_learner,
                "is_leader": st.leader == m.id,
                "matched_index": replication.get(&m.id),
                "last_ack_ms": heartbeat_ms.get(&m.id),
            })
        })
        .collect();
    let store = c.store();
    Json(json!({
        "name": c.cfg.name,
        "member_id": hex(c.id()),
        "cluster_id": hex(c.cfg.cluster_id),
        "version": st.version,
        "leader": if st.leader == 0 { None } else { Some(hex(st.leader)) },
        "is_leader": st.leader == c.id(),
        "is_learner": st.is_learner,
        "raft_term": st.raft_term,
        "raft_index": st.raft_index,
        "raft_applied_index": st.raft_applied_index,
        "revision": store.current_revision(),
        "compact_revision": store.compact_revision(),
        "keys": store.key_count(),
        "db_size_bytes": st.db_size,
        "wal_size_bytes": c.node.wal.size_bytes(),
        "alarms": st.errors,
        "unsafe_no_fsync": c.cfg.unsafe_no_fsync,
        "members": members,
    }))
}
