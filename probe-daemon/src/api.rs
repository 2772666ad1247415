//! The HTTP server: `/metrics` for Prometheus, `/healthz` and `/readyz` for Kubernetes probes.
//! Handlers reach the rest of the daemon only through the narrow [`ApiState`] handles.
use std::sync::Arc;

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};

/// Renders the metrics exposition, or says why it could not.
pub type RenderMetrics = dyn Fn() -> Result<String, String> + Send + Sync;
/// `Ok(())` when ready, else the reasons it is not.
pub type Readiness = dyn Fn() -> Result<(), Vec<String>> + Send + Sync;

#[derive(Clone)]
pub struct ApiState {
    pub render_metrics: Arc<RenderMetrics>,
    pub readiness: Arc<Readiness>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .with_state(state)
}

async fn metrics(State(st): State<ApiState>) -> Response {
    let render = st.render_metrics.clone();
    // Draining kernel maps makes syscalls: keep them off the async workers.
    match tokio::task::spawn_blocking(move || render()).await {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("rendering metrics failed: {e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("rendering metrics failed: {e}\n")).into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(st): State<ApiState>) -> Response {
    match (st.readiness)() {
        Ok(()) => "ready\n".into_response(),
        Err(reasons) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("not ready:\n- {}\n", reasons.join("\n- ")))
                .into_response()
        }
    }
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found: chainprobe serves /metrics, /healthz and /readyz\n").into_response()
}
