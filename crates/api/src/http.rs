//! The HTTP listener (`--listen-metrics-urls`): Prometheus metrics, health, readiness and a
//! JSON status for operators.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Json;
use cairn_services::maintenance::Maintenance;
use cairn_services::Router;
use serde_json::json;

/// The data tier's views for operators: `/v1/ranges` and `/v1/nodes` (JSON), what
/// `cairn range list` and `cairn node list` print; and its changes: `POST /v1/ranges/split`
/// (`{"key": K}` or `{"slot": N}`), `/v1/ranges/{id}/merge` (with the range on its right),
/// `/v1/ranges/{id}/move` (`{"from": NODE, "to": NODE}`) and
/// `/v1/ranges/{id}/transfer-leader` (`{"to": NODE}`) and `/v1/nodes/{name}/drain` (its
/// replicas move off; a data node then leaves), nodes by name or hex id.
///
/// The changes (`POST`) are an administrator's: with cairn's auth enabled they need an
/// `Authorization` header holding the token of a user with the root role (etcd's
/// `/v3/auth/authenticate` issues it), as etcd's admin calls do; otherwise 401 (no or a bad
/// token) or 403 (not root).
pub fn tier_router(tier: Arc<cairn_services::data::DataTier>, auth: cairn_services::auth::Auth) -> axum::Router {
    use axum::extract::Path;
    use axum::routing::post;
    let changes = axum::Router::new()
        .route("/v1/ranges/split", post(split))
        .route(
            "/v1/ranges/{id}/move",
            post(|State(t): State<Tier>, Path(id): Path<u64>, Json(b): Json<MoveBody>| async move {
                let r = async {
                    let (from, to) = (t.node_named(&b.from)?, t.node_named(&b.to)?);
                    t.move_replica(id, from, to).await
                };
                tier_answer(r.await.map(|()| json!({"range": id, "from": b.from, "to": b.to})))
            }),
        )
        .route(
            "/v1/ranges/{id}/merge",
            post(|State(t): State<Tier>, Path(id): Path<u64>| async move {
                tier_answer(t.merge_right(id).await.map(|right| json!({"range": id, "merged": right})))
            }),
        )
        .route(
            "/v1/ranges/{id}/transfer-leader",
            post(|State(t): State<Tier>, Path(id): Path<u64>, Json(b): Json<ToBody>| async move {
                let r = async { t.transfer_leader(id, t.node_named(&b.to)?).await };
                tier_answer(r.await.map(|()| json!({"range": id, "leader": b.to})))
            }),
        )
        .route(
            "/v1/nodes/{name}/drain",
            post(|State(t): State<Tier>, Path(name): Path<String>| async move {
                let r = async { t.drain(t.node_named(&name)?).await };
                tier_answer(r.await.map(|()| json!({"node": name, "state": "draining"})))
            }),
        )
        .layer(axum::middleware::from_fn(move |req: axum::extract::Request, next: axum::middleware::Next| {
            let auth = auth.clone();
            async move {
                let token = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
                let token = token.map(|t| t.strip_prefix("Bearer ").unwrap_or(t));
                if let Err(e) = auth.check_admin_token(token) {
                    let code = match e {
                        cairn_types::Error::PermissionDenied | cairn_types::Error::UserNotFound => {
                            StatusCode::FORBIDDEN
                        }
                        _ => StatusCode::UNAUTHORIZED,
                    };
                    return (code, Json(json!({"error": e.to_string()}))).into_response();
                }
                next.run(req).await
            }
        }));
    axum::Router::new()
        .route("/v1/ranges", get(|State(t): State<Tier>| async move { Json(t.ranges_report().await) }))
        .route("/v1/nodes", get(|State(t): State<Tier>| async move { Json(t.nodes_report().await) }))
        .merge(changes)
        .with_state(tier)
}

type Tier = Arc<cairn_services::data::DataTier>;

#[derive(serde::Deserialize)]
struct SplitBody {
    /// A key as `cairn range list` prints keys (`\xNN` escapes).
    key: Option<String>,
    /// A Redis hash slot: split at its start.
    slot: Option<u16>,
}

#[derive(serde::Deserialize)]
struct MoveBody {
    from: String,
    to: String,
}

#[derive(serde::Deserialize)]
struct ToBody {
    to: String,
}

async fn split(State(t): State<Tier>, Json(b): Json<SplitBody>) -> axum::response::Response {
    use cairn_services::data::{parse_key_text, TierError};
    let key = match (b.key, b.slot) {
        (Some(k), None) => parse_key_text(&k),
        (None, Some(s)) if s < cairn_cluster::directory::SLOTS => Ok(cairn_cluster::directory::slot_start(s)),
        (None, Some(s)) => Err(format!("slot {s} is out of range (0-16383)")),
        _ => Err("give exactly one of \"key\" and \"slot\"".into()),
    };
    let r = match key {
        Ok(k) => t.split_at(&k).await,
        Err(e) => Err(TierError::Invalid(e)),
    };
    tier_answer(r.map(|(range, new)| json!({"range": range, "new": new})))
}

/// A data tier change's answer: 200 with `ok`, or the error with its status (400 for a request
/// that cannot be carried out as asked, 503 when nothing ran and it may be retried, 500 when
/// its outcome is unknown).
fn tier_answer(r: Result<serde_json::Value, cairn_services::data::TierError>) -> axum::response::Response {
    use cairn_services::data::TierError;
    match r {
        Ok(v) => (StatusCode::OK, Json(v)).into_response(),
        Err(e) => {
            let code = match e {
                TierError::Invalid(_) => StatusCode::BAD_REQUEST,
                TierError::NotReady | TierError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                TierError::Unknown(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            (code, Json(json!({"error": e.to_string()}))).into_response()
        }
    }
}

pub fn router(c: Arc<Router>) -> axum::Router {
    let r = axum::Router::new()
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

/// OpenMetrics to a scraper that asks for it (`Accept: application/openmetrics-text`), else
/// Prometheus's text format 0.0.4: each body under its own content type.
async fn metrics(State(c): State<Arc<Router>>, headers: axum::http::HeaderMap) -> impl IntoResponse {
    let open = c.metrics.render(&c);
    let wants_openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if wants_openmetrics {
        ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], open)
    } else {
        (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            cairn_services::metrics::to_prometheus_text(&open),
        )
    }
}

/// etcd's `/health` (`Maintenance::health`).
async fn health(State(c): State<Arc<Router>>) -> impl IntoResponse {
    match Maintenance::new(c).health().await {
        Ok(()) => (StatusCode::OK, Json(json!({"health": "true", "reason": ""}))),
        Err(r) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"health": "false", "reason": r}))),
    }
}

/// Ready to serve (etcd 3.5's `/readyz`, `Maintenance::ready`).
async fn ready(State(c): State<Arc<Router>>) -> impl IntoResponse {
    match Maintenance::new(c).ready().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
    }
}

/// Liveness (etcd 3.5's `/livez`): the process answers HTTP. It does not depend on the cluster,
/// so an orchestrator does not restart members of a cluster that merely lost quorum.
async fn live() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

async fn status(State(c): State<Arc<Router>>) -> impl IntoResponse {
    Json(Maintenance::new(c).report())
}
