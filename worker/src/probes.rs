//! The worker's HTTP endpoint for container probes and scraping:
//! `/healthz` (the process runs), `/readyz` (Redis and the upstream are
//! reachable and the worker is not draining), `/metrics` (Prometheus text).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use rtq_core::WorkerStatus;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::upstream::UpstreamState;

/// What the endpoints read.
#[derive(Clone)]
pub struct ProbeState {
    /// The worker's live counters.
    pub status: Arc<WorkerStatus>,
    /// Upstream health.
    pub upstream: Arc<UpstreamState>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
}

/// Serves the endpoints on `listener` until `stop` fires.
pub async fn serve(listener: tokio::net::TcpListener, state: ProbeState, stop: CancellationToken) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "probe endpoint failed");
    }
}

/// Binds the probe address.
///
/// # Errors
/// The address cannot be bound.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Readiness as states only (`redis unreachable`, `upstream down`,
/// `draining`): the port is unauthenticated, so no error text (which may
/// quote hosts or an upstream's answer) is served; the reasons are in the
/// logs and the heartbeat.
async fn ready(State(s): State<ProbeState>) -> impl IntoResponse {
    let mut problems = Vec::new();
    if !s.status.redis_ok.load(Ordering::Acquire) {
        problems.push("redis unreachable");
    }
    if !s.upstream.is_up() {
        problems.push("upstream down");
    }
    if s.status.draining.load(Ordering::Acquire) {
        problems.push("draining");
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", problems.join("; ")),
        )
    }
}

async fn metrics(State(s): State<ProbeState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(&s.status, &s.upstream),
    )
}
