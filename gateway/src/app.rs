//! The application: shared state ([`AppState`]), the router with every
//! route and layer, authentication of a request, and the small routes
//! (health, readiness, metrics, models).
//!
//! Authentication is a layer in front of every `/v1/` route
//! ([`require_key`]): it runs on the request head alone, so a caller
//! without a valid key gets 401, and a key not granted the route's family
//! (`routes=`) 403, before a byte of its body is read (the body limits of
//! [`crate::body`], the key's `max_body=` among them, run after it).
//! Handlers find the key as the [`Caller`] extension.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use rtq_core::admin::Admin;
use rtq_core::{Client, Error};
use serde_json::{json, Value};

use crate::auth::{ApiKey, KeyStore, Lookup, Permit, QueueShare, Refusal, Route};
use crate::catalog::{Catalog, CatalogLimits};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::open::OpenTasks;

/// Request handling settings (from the command line).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Deadline for tasks whose request names none.
    pub task_timeout: Option<Duration>,
    /// Longest synchronous wait.
    pub max_wait: Duration,
    /// What `Retry-After` advises after a full queue.
    pub retry_after: Duration,
    /// SSE keep-alive period.
    pub keepalive: Duration,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Time from a request's head to its body's last byte (a total, not
    /// an idle timeout).
    pub body_timeout: Duration,
    /// Accept submits to queues that do not exist yet (creating them).
    pub create_queues: bool,
}

impl Default for Settings {
    /// 300 s task deadline, 600 s wait, `Retry-After: 1`, 15 s keep-alive,
    /// 1 MiB bodies, 30 s body timeout, unknown queues refused.
    fn default() -> Self {
        Self {
            task_timeout: Some(Duration::from_secs(300)),
            max_wait: Duration::from_secs(600),
            retry_after: Duration::from_secs(1),
            keepalive: Duration::from_secs(15),
            max_body_bytes: 1 << 20,
            body_timeout: Duration::from_secs(30),
            create_queues: false,
        }
    }
}

/// What every handler reads.
pub struct AppState {
    /// The rtq client (one shared connection, one reader per queue).
    pub client: Client,
    /// Admin reads (readiness).
    pub admin: Admin,
    /// Served queues and models.
    pub catalog: Catalog,
    /// API keys.
    pub keys: KeyStore,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Tasks followed by open responses.
    pub open: Arc<OpenTasks>,
    /// Settings.
    pub settings: Settings,
    /// Set once shutdown began: readiness fails so balancers move away.
    pub draining: AtomicBool,
}

/// Shared state as handlers take it.
pub type Shared = Arc<AppState>;

/// The key a request presented, checked by [`require_key`] before the
/// handler runs (`None` when authentication is off).
#[derive(Clone, Debug)]
pub struct Caller(pub Option<Arc<ApiKey>>);

impl Caller {
    /// True if the key may use `queue` (always, without authentication).
    pub fn allows(&self, queue: &str) -> bool {
        self.0.as_ref().is_none_or(|k| k.queues.allows(queue))
    }
}

/// A request let in: its key (none when authentication is off) and the
/// permit that holds its concurrency slot.
pub struct Admitted {
    /// The key, if any.
    pub key: Option<Arc<ApiKey>>,
    /// Held for as long as the request (or its stream) runs.
    pub permit: Permit,
    /// The key's share of the queue its wait or stream is open on
    /// ([`AppState::wait_on`]), held as long as the permit.
    pub share: Option<QueueShare>,
}

impl Admitted {
    /// The key's name for labels and logs.
    pub fn key_name(&self) -> &str {
        self.key.as_deref().map_or("", |k| k.name.as_str())
    }
}

impl AppState {
    /// A state over `client` with these keys and settings.
    pub fn new(
        client: Client,
        keys: KeyStore,
        settings: Settings,
        catalog: CatalogLimits,
    ) -> Shared {
        let admin = Admin::new(&client);
        let metrics = Arc::new(Metrics::new());
        let open = OpenTasks::new(metrics.open_streams.clone());
        Arc::new(Self {
            catalog: Catalog::new(admin.clone(), catalog),
            admin,
            client,
            keys,
            metrics,
            open,
            settings,
            draining: AtomicBool::new(false),
        })
    }

    /// Checks the request's key (401 when missing or unknown).
    ///
    /// # Errors
    /// 401.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Option<Arc<ApiKey>>, ApiError> {
        let auth = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match self.keys.lookup(auth) {
            Lookup::Open => Ok(None),
            Lookup::Key(k) => Ok(Some(k)),
            Lookup::Missing => Err(ApiError::unauthorized(
                "no API key: send `Authorization: Bearer <key>`",
            )),
            Lookup::Unknown => Err(ApiError::unauthorized("the API key is not valid")),
        }
    }

    /// Maps a library error with the configured `Retry-After` (for a full
    /// queue).
    pub fn rtq(&self, e: Error) -> ApiError {
        ApiError::from_rtq(&e, self.settings.retry_after)
    }

    /// Lets a request of `key` use `queue`: the key must allow the queue
    /// and be under its rate and concurrency limits.
    ///
    /// # Errors
    /// 403 for a queue the key may not use, 429 with `Retry-After` at a
    /// limit.
    pub fn admit(&self, caller: &Caller, queue: &str) -> Result<Admitted, ApiError> {
        if !caller.allows(queue) {
            return Err(ApiError::forbidden(queue));
        }
        self.admit_key(caller)
    }

    /// Lets a request of `key` in under its rate and concurrency limits,
    /// which hold whatever the queue: the OpenAI routes check them on the
    /// request head, before the body names the queue (its grant is checked
    /// once the body's `model` is resolved among the key's queues).
    ///
    /// # Errors
    /// 429 with `Retry-After` at a limit.
    pub fn admit_key(&self, caller: &Caller) -> Result<Admitted, ApiError> {
        let Some(k) = caller.0.clone() else {
            return Ok(Admitted {
                key: None,
                permit: Permit::none(),
                share: None,
            });
        };
        let permit = k.admit().map_err(|r| match r {
            Refusal::Rate(wait) => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "rate_limit_exceeded",
                format!("API key {} is over its request rate", k.name),
            )
            .retry_after(wait),
            Refusal::Concurrency(n) => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "concurrency_limit_exceeded",
                format!(
                    "API key {} already has {n} requests open (its limit)",
                    k.name
                ),
            )
            .retry_after(self.settings.retry_after),
        })?;
        Ok(Admitted {
            key: Some(k),
            permit,
            share: None,
        })
    }

    /// Takes the key's share of `queue` for a wait or stream about to be
    /// opened on it (each queue waited on holds one of the reply readers
    /// every key shares): at most `wait_queues=` distinct queues per key
    /// at once (`--key-wait-queues`). Nothing without authentication.
    ///
    /// # Errors
    /// 429 `wait_queues_limit_exceeded` with `Retry-After`.
    pub fn wait_on(&self, admitted: &mut Admitted, queue: &str) -> Result<(), ApiError> {
        let Some(k) = &admitted.key else {
            return Ok(());
        };
        let share = k.wait_on(queue).map_err(|n| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "wait_queues_limit_exceeded",
                format!(
                    "API key {} already has waits or streams open on {n} other queues (its \
                     wait_queues= limit); end one of them, or wait on a queue it waits on \
                     already",
                    k.name
                ),
            )
            .retry_after(self.settings.retry_after)
        })?;
        admitted.share = Some(share);
        Ok(())
    }
}

/// Parses a JSON object body, turning every way it can be wrong (too
/// large, too slow, not JSON, not an object) into an [`ApiError`].
///
/// # Errors
/// 413, 408 or 400.
pub fn json_object(
    body: Result<Bytes, BytesRejection>,
) -> Result<serde_json::Map<String, Value>, ApiError> {
    let bytes = body.map_err(|r| {
        let text = r.body_text();
        // The deadline of crate::body surfaces as a buffering failure.
        let (status, code) = if crate::body::is_deadline(&r) {
            (StatusCode::REQUEST_TIMEOUT, "body_timeout")
        } else if r.status() == StatusCode::PAYLOAD_TOO_LARGE || crate::body::is_too_large(&r) {
            (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
        } else {
            (r.status(), "invalid_body")
        };
        ApiError::new(status, "invalid_request_error", code, text)
    })?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request("the body must be a JSON object")),
        Err(e) => Err(ApiError::bad_request(format!(
            "the body is not valid JSON: {e}"
        ))),
    }
}

/// Every route, with the body limit, the body timeout and the metrics
/// middleware.
pub fn router(state: Shared) -> Router {
    let settings = state.settings.clone();
    let body_limits = crate::body::BodyLimits {
        max_bytes: settings.max_body_bytes,
        total: settings.body_timeout,
    };
    Router::new()
        .route("/v1/chat/completions", post(crate::openai::chat))
        .route("/v1/completions", post(crate::openai::completion))
        .route("/v1/models", get(models))
        .route("/v1/queues/{queue}/tasks", post(crate::tasks::submit))
        .route(
            "/v1/queues/{queue}/tasks/{id}",
            get(crate::tasks::status).delete(crate::tasks::cancel),
        )
        .route(
            "/v1/queues/{queue}/tasks/{id}/result",
            get(crate::tasks::result),
        )
        .route(
            "/v1/queues/{queue}/tasks/{id}/stream",
            get(crate::tasks::stream),
        )
        // Route layers wrap the routes above only; the last one added runs
        // first: the key is checked on the head, before the body limits
        // (and before any handler reads a byte of the body).
        .route_layer(axum::middleware::from_fn_with_state(
            body_limits,
            crate::body::limit,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            require_key,
        ))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(settings.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state.metrics),
            crate::metrics::track,
        ))
        .with_state(state)
}

/// Middleware of every `/v1/` route: checks the key on the request head
/// and passes it on as the [`Caller`] extension, or answers without
/// reading the body: 401 for a missing or unknown key, 403
/// `route_not_allowed` for a key whose `routes=` leaves out this route's
/// family (it may use no queue through it). A refused request that
/// announced a body gets `Connection: close` (its unread body cannot be
/// skipped to reach a next request); a client sending
/// `Expect: 100-continue` never sends it.
pub async fn require_key(State(st): State<Shared>, mut req: Request, next: Next) -> Response {
    let route = Route::of_path(req.uri().path());
    let checked = st.authenticate(req.headers()).and_then(|key| match key {
        Some(k) if !k.allows_route(route) => Err(ApiError::route_forbidden(route)),
        key => Ok(key),
    });
    match checked {
        Ok(key) => {
            req.extensions_mut().insert(Caller(key));
            next.run(req).await
        }
        Err(e) => {
            let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
                || req
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .is_some_and(|v| v.as_bytes() != b"0");
            let mut resp = e.into_response();
            if has_body {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            resp
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "unknown_route",
        "no such route (see gateway/API.md)",
    )
}

/// A route called with a method it does not have (axum adds `Allow`).
async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    let path: String = uri.path().chars().take(200).collect();
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method_not_allowed",
        format!("{method} is not allowed on {path} (the Allow header lists what is)"),
    )
}

/// `/readyz`: 200 while Redis answers and the gateway is not draining.
async fn ready(State(st): State<Shared>) -> Response {
    if st.draining.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    match tokio::time::timeout(Duration::from_secs(2), st.admin.queues()).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Redis unreachable: {e}\n"),
        )
            .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Redis did not answer within 2 s\n",
        )
            .into_response(),
    }
}

async fn metrics(State(st): State<Shared>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.render(),
    )
        .into_response()
}

/// The header of `GET /v1/models` that says how old the list is, in
/// milliseconds since it was read from Redis.
pub const CATALOG_AGE_HEADER: &str = "x-rtq-catalog-age-ms";

/// `GET /v1/models`: every queue with a live worker that the key may use,
/// by its name and by its workers' `model` labels; each name is listed
/// under the queue it resolves to for this key (what a completion with
/// that `model` would use). The [`CATALOG_AGE_HEADER`] says how old the
/// list is; past `--catalog-max-stale-ms` without a successful read, the
/// answer is 503 `redis_unavailable` instead (see [`crate::catalog`]).
async fn models(
    State(st): State<Shared>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let allowed = |q: &str| caller.allows(q);
    let (snap, age) = st.catalog.snapshot_with_age().await?;
    let mut listed = std::collections::BTreeSet::new();
    let mut data = Vec::new();
    for q in snap.queues.values() {
        if !q.served() || !allowed(&q.name) {
            continue;
        }
        for id in std::iter::once(&q.name).chain(&q.models) {
            let resolved = snap.resolve(id, &allowed);
            if resolved.is_none_or(|r| r.queue != q.name) || !listed.insert(id.clone()) {
                continue;
            }
            data.push(json!({
                "id": id,
                "object": "model",
                "created": snap.read_at_secs,
                "owned_by": "rtq",
                "queue": q.name,
                "paused": q.paused,
                "workers": q.workers_alive,
                "handlers": q.handlers,
                "labels": q.labels,
            }));
        }
    }
    let mut resp = axum::Json(json!({ "object": "list", "data": data })).into_response();
    resp.headers_mut().insert(
        CATALOG_AGE_HEADER,
        HeaderValue::from(age.as_millis() as u64),
    );
    Ok(resp)
}
