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
/// `cairn range list` and `cairn node list` print.
pub fn tier_router(tier: Arc<cairn_services::data::DataTier>) -> axum::Router {
    let t2 = tier.clone();
    axum::Router::new()
        .route("/v1/ranges", get(move || async move { axum::Json(tier.ranges_report()) }))
        .route("/v1/nodes", get(move || async move { axum::Json(t2.nodes_report()) }))
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
