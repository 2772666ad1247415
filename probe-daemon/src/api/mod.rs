//! The HTTP server: `/metrics` for Prometheus, `/healthz` and `/readyz` for Kubernetes probes,
//! and the on-call API under `/api/v1/` (bearer token). Handlers reach the rest of the daemon only
//! through [`ApiState`]: typed commands to the collector and to discovery, and their published
//! views. HTTP status codes live here only ([`ApiError`]).
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime},
};

use axum::{
    extract::{Request, State},
    http::{header, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use tracing::info;

pub mod client;
pub mod error;
pub mod openapi;
pub mod types;

use tokio::sync::{oneshot, watch};

pub use error::{ApiError, ErrorBody};

use crate::{
    attach::ProgramStatus,
    collector::{self, View},
    discovery::{self, GoView},
    snapshot::{valid_id, Kind, Snapshotter, Trigger},
    sync::lock,
};

/// What the handlers reach: the collector and discovery by command (with a reply channel), their
/// published views by reading, the snapshotter, and the server's own settings.
#[derive(Clone)]
pub struct ApiState {
    pub collector: mpsc::SyncSender<collector::Command>,
    /// None when neither Go nor OpenSSL tracking is on.
    pub discovery: Option<mpsc::SyncSender<discovery::Command>>,
    pub view: watch::Receiver<Arc<View>>,
    pub go_view: watch::Receiver<Arc<GoView>>,
    pub programs: Arc<Vec<ProgramStatus>>,
    /// Set once the server listens.
    pub serving: Arc<AtomicBool>,
    pub snapshots: Option<Arc<Snapshotter>>,
    /// The crash workers (their counters for /metrics and the snapshot list).
    pub crashes: Option<Arc<crate::snapshot::crash::Crashes>>,
    pub auth: Arc<ApiAuth>,
    pub limiter: Arc<RateLimiter>,
    /// Largest request body accepted.
    pub max_body: usize,
}

impl ApiState {
    /// `Ok(())` when ready, else the reasons it is not.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let mut reasons: Vec<String> = self
            .programs
            .iter()
            .filter(|p| !p.attached && !p.prog.optional())
            .map(|p| format!("program {} not attached: {}", p.prog.program_name(), p.error.as_deref().unwrap_or("unknown")))
            .collect();
        if !self.serving.load(Ordering::Relaxed) {
            reasons.push("HTTP server starting".into());
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }
}

/// Per-client token buckets for `/api/` (by the connection's address: headers can be forged).
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(per_second: f64, burst: u32) -> Self {
        RateLimiter { per_second, burst: f64::from(burst.max(1)), buckets: Mutex::new(HashMap::new()) }
    }

    /// `Ok` when `client` may make a request now, else how long until it may.
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut b = lock(&self.buckets);
        if b.len() > 10_000 {
            // Forget clients whose buckets are full again.
            let full = Duration::from_secs_f64(self.burst / self.per_second);
            b.retain(|_, (_, t)| now.saturating_duration_since(*t) < full);
        }
        let (tokens, last) = b.entry(client).or_insert((self.burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*last).as_secs_f64() * self.per_second).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.per_second))
        }
    }
}

/// Who may use `/api/`: holders of the bearer token (from the environment or a file, re-read when
/// it changes); with no token configured, anyone, but only while the server listens on loopback.
pub struct ApiAuth {
    env_token: Option<String>,
    token_file: Option<PathBuf>,
    file_cache: Mutex<Option<(SystemTime, String)>>,
    loopback: bool,
}

impl ApiAuth {
    pub fn new(env_token: Option<String>, token_file: Option<PathBuf>, loopback: bool) -> Self {
        let env_token = env_token.map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
        ApiAuth { env_token, token_file, file_cache: Mutex::new(None), loopback }
    }

    /// The token in force now, if any.
    pub fn token(&self) -> Option<String> {
        if let Some(t) = &self.env_token {
            return Some(t.clone());
        }
        let path = self.token_file.as_ref()?;
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok()?;
        let mut cache = lock(&self.file_cache);
        if let Some((t, tok)) = cache.as_ref() {
            if *t == mtime {
                return Some(tok.clone());
            }
        }
        let tok = std::fs::read_to_string(path).ok()?.trim().to_string();
        if tok.is_empty() {
            return None;
        }
        *cache = Some((mtime, tok.clone()));
        Some(tok)
    }

    /// Whether the API answers at all (a token exists, or the server is loopback-only).
    pub fn enabled(&self) -> bool {
        self.loopback || self.token().is_some()
    }

    fn check(&self, authorization: Option<&str>) -> Result<(), Response> {
        match self.token() {
            None if self.loopback => Ok(()),
            None => Err((
                StatusCode::FORBIDDEN,
                "the API is disabled: no token configured and the server does not listen on loopback (set CHAINPROBE_API_TOKEN or [api] token_file)\n",
            )
                .into_response()),
            Some(expected) => {
                let given = authorization.and_then(|h| h.strip_prefix("Bearer ")).unwrap_or("");
                if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
                    Ok(())
                } else {
                    Err((StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], "").into_response())
                }
            }
        }
    }
}

/// Compares without an early exit, so timing does not reveal how much of a guess was right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
    }
    diff == 0
}

/// Every `/api/` request: rate limit per client, then the bearer token; one audit line each.
async fn require_token(State(st): State<ApiState>, req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0);
    let who = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .map(|f| format!("{f} via {}", peer.map(|p| p.to_string()).unwrap_or_default()))
        .or_else(|| peer.map(|p| p.to_string()))
        .unwrap_or_else(|| "unknown".into());
    let what = format!("{} {}", req.method(), req.uri().path());
    let auth = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_string);
    let ip = peer.map(|p| p.ip()).unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let resp = match st.limiter.check(ip, Instant::now()) {
        Err(wait) => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, wait.as_secs().max(1).to_string())],
            "too many requests: see [api] rate_limit_per_second\n",
        )
            .into_response(),
        Ok(()) => match st.auth.check(auth.as_deref()) {
            Ok(()) => next.run(req).await,
            Err(r) => r,
        },
    };
    info!(target: "chainprobe::audit", client = %who, request = %what, status = resp.status().as_u16(), "api");
    resp
}

/// Every API route (method, path), as the OpenAPI document lists them.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/api/v1/targets"),
    ("post", "/api/v1/targets/{pid}/creation-probes"),
    ("post", "/api/v1/snapshots"),
    ("get", "/api/v1/snapshots"),
    ("get", "/api/v1/snapshots/{id}"),
    ("get", "/api/v1/snapshots/{id}/{kind}"),
    ("get", "/api/v1/openapi.json"),
];

pub fn router(state: ApiState) -> Router {
    let api = Router::new()
        .route("/api/v1/targets", get(targets))
        .route("/api/v1/targets/{pid}/creation-probes", axum::routing::post(creation_probes))
        .route("/api/v1/snapshots", get(list_snapshots).post(create_snapshot))
        .route("/api/v1/snapshots/{id}", get(get_snapshot))
        .route("/api/v1/snapshots/{id}/{kind}", get(snapshot_file))
        .route("/api/v1/openapi.json", get(openapi))
        .layer(axum::extract::DefaultBodyLimit::max(state.max_body))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(api)
        .fallback(not_found)
        .with_state(state)
}

/// Body of `POST /api/v1/targets/{pid}/creation-probes`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreationRequest {
    pub enabled: bool,
    /// How long to keep them on (default: go.creation_window_seconds).
    pub seconds: Option<f64>,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    ApiError::new(status.as_u16(), message).into_response()
}

async fn creation_probes(
    State(st): State<ApiState>,
    axum::extract::Path(pid): axum::extract::Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(pid) = pid.parse::<u32>() else {
        return error(StatusCode::BAD_REQUEST, format!("{pid:?} is not a process id"));
    };
    let req: CreationRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body must be {{\"enabled\": true|false, \"seconds\": N}}: {e}")),
    };
    let window = match req.seconds {
        Some(s) if !(s.is_finite() && s > 0.0 && s <= 3600.0) => return error(StatusCode::BAD_REQUEST, "seconds must be between 0 and 3600"),
        Some(s) => Some(Duration::from_secs_f64(s)),
        None => None,
    };
    let Some(tx) = st.discovery.clone() else { return ApiError::from(discovery::CreationError::GoDisabled).into_response() };
    let (reply, answer) = oneshot::channel();
    let cmd = discovery::Command::SetCreation { pid, enable: req.enabled, window, reply };
    if tokio::task::spawn_blocking(move || tx.send(cmd)).await.ok().and_then(Result::ok).is_none() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "Go discovery is not running (see the daemon's log)");
    }
    match answer.await {
        Ok(Ok(status)) => Json(types::CreationResponse { pid, creation_probes: status }).into_response(),
        Ok(Err(e)) => ApiError::from(e).into_response(),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "Go discovery stopped before it answered (see the daemon's log)"),
    }
}

async fn targets(State(st): State<ApiState>) -> Response {
    let (view, go) = (st.view.borrow().clone(), st.go_view.borrow().clone());
    Json(types::TargetsResponse::new(&view, &go)).into_response()
}

/// `GET /metrics`: OpenMetrics when the client prefers it (Prometheus does), else the classic
/// text format (promtool, `curl`), both from the same registry.
async fn metrics(State(st): State<ApiState>, headers: axum::http::HeaderMap) -> Response {
    let format = crate::metrics::Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let (tx, stats, crashes) = (st.collector.clone(), st.snapshots.as_ref().map(|s| s.stats()), st.crashes.as_ref().map(|c| c.stats()));
    // The collector drains the kernel maps and copies the state out; encoding runs here, off the
    // collector thread and off the async workers.
    let render = move || -> Result<String, String> {
        let (reply, answer) = oneshot::channel();
        tx.send(collector::Command::Scrape(reply)).map_err(|_| "the collector is not running (see the daemon's log)".to_string())?;
        let view = answer.blocking_recv().map_err(|_| "the collector stopped before it answered (see the daemon's log)".to_string())?;
        view.with_snapshots(stats).with_crashes(crashes).render().map_err(|e| e.to_string())
    };
    match tokio::task::spawn_blocking(render).await {
        Ok(Ok(body)) => {
            let body = match format {
                crate::metrics::Format::OpenMetrics => body,
                crate::metrics::Format::Text => crate::metrics::openmetrics_to_text(&body),
            };
            ([(header::CONTENT_TYPE, format.content_type()), (header::VARY, "Accept")], body).into_response()
        }
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("rendering metrics failed: {e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("rendering metrics failed: {e}\n")).into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(st): State<ApiState>) -> Response {
    match st.readiness() {
        Ok(()) => "ready\n".into_response(),
        Err(reasons) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("not ready:\n- {}\n", reasons.join("\n- ")))
                .into_response()
        }
    }
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found: chainprobe serves /metrics, /healthz, /readyz and /api/v1/ (see /api/v1/openapi.json)\n").into_response()
}

/// Body of `POST /api/v1/snapshots`: a pid, or a pod (and container) to find it by.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    pub pid: Option<u32>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub container: Option<String>,
    #[serde(default)]
    pub kinds: Vec<String>,
}

fn snapshots_off() -> Response {
    error(StatusCode::CONFLICT, "snapshots are disabled in the configuration ([snapshot] enabled = false)")
}

async fn create_snapshot(State(st): State<ApiState>, body: axum::body::Bytes) -> Response {
    let Some(snap) = st.snapshots.clone() else { return snapshots_off() };
    let req: SnapshotRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body must be {{\"pid\": N}} or {{\"namespace\": \"...\", \"pod\": \"...\", \"container\": \"...\"}}, with optional \"kinds\": [\"heap\", \"goroutine\"]: {e}")),
    };
    let mut kinds = Vec::new();
    for k in &req.kinds {
        match Kind::parse(k) {
            Some(k) => kinds.push(k),
            None => return error(StatusCode::BAD_REQUEST, format!("unknown kind {k:?}: heap or goroutine")),
        }
    }
    let pid = match (req.pid, req.namespace.as_deref(), req.pod.as_deref()) {
        (Some(pid), None, None) => pid,
        (None, Some(ns), Some(pod)) => {
            let (view, go) = (st.view.borrow().clone(), st.go_view.borrow().clone());
            match view.find_go_process(&go, ns, pod, req.container.as_deref()) {
                Ok(pid) => pid,
                Err(e) => return ApiError::from(e).into_response(),
            }
        }
        _ => return error(StatusCode::BAD_REQUEST, "name either \"pid\", or \"namespace\" and \"pod\" (and optionally \"container\")"),
    };
    match tokio::task::spawn_blocking(move || snap.request(pid, &kinds, Trigger::Api, None)).await {
        Ok(Ok(meta)) => (StatusCode::ACCEPTED, Json(types::SnapshotAccepted { id: meta.id, status: meta.status, pid: meta.pid })).into_response(),
        Ok(Err(r)) => ApiError::from(r).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn list_snapshots(State(st): State<ApiState>) -> Response {
    let Some(snap) = st.snapshots.clone() else { return snapshots_off() };
    let crashes = st.crashes.as_ref().map(|c| c.stats());
    match tokio::task::spawn_blocking(move || (snap.list(), snap.circuit_reason())).await {
        Ok((list, circuit)) => Json(serde_json::json!({
            "snapshots": list,
            "circuit": { "open": circuit.is_some(), "reason": circuit },
            "crashes": crashes,
        }))
        .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn get_snapshot(State(st): State<ApiState>, axum::extract::Path(id): axum::extract::Path<String>) -> Response {
    let Some(snap) = st.snapshots.clone() else { return snapshots_off() };
    if !valid_id(&id) {
        return error(StatusCode::BAD_REQUEST, "a snapshot id is 16 lowercase hex digits");
    }
    match snap.get(&id) {
        Some(m) => Json(m).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no snapshot {id} (GET /api/v1/snapshots lists them)")),
    }
}

async fn snapshot_file(State(st): State<ApiState>, axum::extract::Path((id, kind)): axum::extract::Path<(String, String)>) -> Response {
    let Some(snap) = st.snapshots.clone() else { return snapshots_off() };
    if !valid_id(&id) {
        return error(StatusCode::BAD_REQUEST, "a snapshot id is 16 lowercase hex digits");
    }
    if Kind::parse(&kind).is_none() && kind != "summary" {
        return error(StatusCode::BAD_REQUEST, "kind is heap, goroutine or summary");
    }
    let Some(meta) = snap.get(&id) else {
        return error(StatusCode::NOT_FOUND, format!("no snapshot {id}"));
    };
    let Some(path) = snap.file(&id, &kind) else {
        let why = meta.errors.get(&kind).cloned().unwrap_or_else(|| format!("snapshot {id} has no {kind} file (status {:?})", meta.status));
        return error(StatusCode::NOT_FOUND, why);
    };
    match tokio::fs::read(&path).await {
        Ok(bytes) => {
            let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            let ctype = if kind == "summary" { "application/json" } else { "application/octet-stream" };
            ([(header::CONTENT_TYPE, ctype.to_string()), (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\""))], bytes).into_response()
        }
        // Retention may have removed it since the lookup.
        Err(e) => error(StatusCode::NOT_FOUND, format!("snapshot file is gone: {e}")),
    }
}

async fn openapi() -> Response {
    Json(openapi::document()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn token_from_file_is_reread_when_it_changes() {
        let dir = std::env::temp_dir().join(format!("chainprobe-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("token");
        std::fs::write(&f, "one\n").unwrap();
        let auth = ApiAuth::new(None, Some(f.clone()), false);
        assert_eq!(auth.token().as_deref(), Some("one"));
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&f, "two").unwrap();
        let t = SystemTime::now() + std::time::Duration::from_secs(1);
        let _ = std::fs::File::options().write(true).open(&f).and_then(|h| h.set_modified(t));
        assert_eq!(auth.token().as_deref(), Some("two"));
        assert!(auth.check(Some("Bearer two")).is_ok());
        assert!(auth.check(Some("Bearer one")).is_err());
        assert!(auth.check(None).is_err());
        std::fs::remove_dir_all(&dir).ok();
        // No token: only loopback servers answer.
        assert!(ApiAuth::new(None, None, true).check(None).is_ok());
        assert!(ApiAuth::new(None, None, false).check(None).is_err());
    }
}
