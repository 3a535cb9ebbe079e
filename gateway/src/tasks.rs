//! The task API for non-chat work (schemas in `gateway/API.md`):
//! - `POST /v1/queues/{queue}/tasks` submits (`?wait=true` waits for the
//!   result, `?stream=true` streams the output as SSE; both cancel the
//!   task if the caller goes away);
//! - `GET .../tasks/{id}` reads its state; `GET .../tasks/{id}/result`
//!   its result (`?wait_ms=` waits); `GET .../tasks/{id}/stream` follows
//!   its output as SSE (events in [`crate::task_sse`]), resumable with
//!   `Last-Event-ID` (`<attempt>:<chunk index>`);
//! - `DELETE .../tasks/{id}` cancels it.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use rtq_core::{Error, Outcome, Queue, TaskInfo, TaskRequest};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::{json_object, Admitted, Caller, Shared};
use crate::error::ApiError;
use crate::open::Hold;
use crate::task_sse::{Events, Resume};

/// The body of a submit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    /// Inline JSON input (what the worker's handler reads).
    input: Option<Value>,
    /// A reference to input stored elsewhere, instead of `input`.
    input_ref: Option<String>,
    /// An idempotency key: the task id.
    id: Option<String>,
    priority: Option<i16>,
    timeout_ms: Option<u64>,
    max_attempts: Option<u32>,
    retention_secs: Option<u64>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// Query of a submit.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitQuery {
    /// Wait for the result (synchronous use).
    #[serde(default)]
    wait: bool,
    /// Stream the output as SSE.
    #[serde(default)]
    stream: bool,
}

/// Query of a result read.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultQuery {
    /// How long to wait for a task that has not ended (default 0).
    #[serde(default)]
    wait_ms: u64,
}

/// Query of a stream.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// First chunk index wanted, of the current attempt (`Last-Event-ID`
    /// wins over it).
    #[serde(default)]
    from: u64,
}

/// Admits the (authenticated) caller and opens `queue`; with `must_exist`, a queue
/// nobody ever used is 404 (so reads, and submits unless
/// `--create-queues`, do not create queues).
async fn open(
    st: &Shared,
    caller: &Caller,
    name: &str,
    must_exist: bool,
) -> Result<(Admitted, Queue), ApiError> {
    let admitted = st.admit(caller, name)?;
    if must_exist && !st.catalog.queue_exists(name).await.map_err(|e| st.rtq(e))? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "queue_not_found",
            format!(
                "no queue named {name:?}: a queue exists once a worker served it \
                 (`rtq-worker --queue {name}`) or `rtq submit --create` made it; a gateway \
                 started with --create-queues lets submits create queues"
            ),
        ));
    }
    let queue = st.client.queue(name).map_err(|e| st.rtq(e))?;
    Ok((admitted, queue))
}

fn request(body: SubmitBody, st: &Shared, admitted: &Admitted) -> Result<TaskRequest, ApiError> {
    let mut req = match (body.input, body.input_ref) {
        (Some(input), None) => TaskRequest::json(input),
        (None, Some(r)) => TaskRequest::reference(r),
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of `input` (JSON) and `input_ref` (a reference)",
            ))
        }
    };
    if let Some(id) = body.id {
        req = req.id(id);
    }
    if let Some(p) = body.priority {
        req = req.priority(p);
    }
    match body.timeout_ms {
        Some(0) => {}
        Some(ms) => req = req.timeout(Duration::from_millis(ms)),
        None => {
            if let Some(t) = st.settings.task_timeout {
                req = req.timeout(t);
            }
        }
    }
    if let Some(a) = body.max_attempts {
        req = req.max_attempts(a);
    }
    if let Some(r) = body.retention_secs {
        req = req.retention(Duration::from_secs(r));
    }
    for (k, v) in body.labels {
        req = req.label(k, v);
    }
    if !admitted.key_name().is_empty() {
        req = req.label("api_key", admitted.key_name().to_string());
    }
    Ok(req)
}

/// `POST /v1/queues/{queue}/tasks`. The key's grant of the queue, its
/// limits and the queue's existence are checked before the body is read;
/// the key's share of the queues waited on (`wait=true`, `stream=true`)
/// once it is, and not at all when the body names a task that has ended.
pub async fn submit(
    State(st): State<Shared>,
    Path(name): Path<String>,
    query: Result<Query<SubmitQuery>, axum::extract::rejection::QueryRejection>,
    Extension(caller): Extension<Caller>,
    request_body: Request,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let (mut admitted, queue) = open(&st, &caller, &name, !st.settings.create_queues).await?;
    let query_waits = query.wait || query.stream;
    // The key's share of the queues waited on is taken only once the body
    // is read: the body may name the id of a task that has ended, which
    // needs no reader and takes no share (and a slow body holds none).
    let body = Bytes::from_request(request_body, &st).await;
    let body: SubmitBody = serde_json::from_value(Value::Object(json_object(body)?))
        .map_err(|e| ApiError::bad_request(format!("invalid submit body: {e}")))?;
    let named = body.id.clone();
    let req = request(body, &st, &admitted)?;
    if query.wait && query.stream {
        return Err(ApiError::bad_request(
            "choose one of wait=true and stream=true",
        ));
    }
    if query_waits {
        let (task, hold) = match ended_task(&st, &queue, named.as_deref()).await? {
            // Answered from what is stored, as a follow of it would be:
            // nothing to wait for, so no reader, no share, and no check
            // that a worker serves the queue. Never ours to cancel.
            Some(task) => (task, Hold::Followed),
            None => {
                st.wait_on(&mut admitted, &name)?;
                st.catalog.check_serving(&name).await?;
                let task = queue
                    .stream(req.cancel_on_drop(true))
                    .await
                    .map_err(|e| st.rtq(e))?;
                // A submit that names its id may attach to a task that
                // exists already (someone else's): the gateway then only
                // follows it, and never cancels it, at shutdown or when
                // the caller leaves.
                let hold = if task.created() {
                    Hold::Owned
                } else {
                    Hold::Followed
                };
                (task, hold)
            }
        };
        let guard = st.open.open(&queue, task.id(), hold);
        if query.stream {
            let events = Events::submitted(task, st.settings.retry_after);
            return Ok(events.into_response((guard, admitted), st.settings.keepalive));
        }
        let id = task.id().to_string();
        let collected = tokio::time::timeout(st.settings.max_wait, task.collect_text()).await;
        drop(guard);
        let (out, _) = collected
            .map_err(|_| {
                ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "timeout_error",
                    "wait_timed_out",
                    match hold {
                        Hold::Owned => format!(
                            "task {id} did not finish within --max-wait-secs; it was cancelled"
                        ),
                        Hold::Followed => format!(
                            "task {id} did not finish within --max-wait-secs; this request \
                             attached to it (it existed already), so it goes on"
                        ),
                    },
                )
            })?
            .map_err(|e| st.rtq(e))?;
        return Ok(axum::Json(json!({
            "id": out.id, "queue": name, "state": "done",
            "result": out.result, "attempt": out.attempt,
        }))
        .into_response());
    }
    let s = queue.submit(req).await.map_err(|e| st.rtq(e))?;
    let mut resp = (
        StatusCode::ACCEPTED,
        axum::Json(json!({
            "id": s.id, "queue": name, "state": s.state.as_str(), "worker": s.worker,
            "deadline_ms": s.deadline_ms, "submitted_ms": s.submitted_ms,
        })),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/queues/{name}/tasks/{}", s.id)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// The finite stream of the task a waiting submit names by `id`, if that
/// task exists and has ended (read without a reply reader, see
/// [`Queue::follow_if_ended`]); `None` without an id, for an id no task
/// has (the submit creates it), or for a task that has not ended.
///
/// # Errors
/// An invalid id (400) or a Redis error.
async fn ended_task(
    st: &Shared,
    queue: &Queue,
    id: Option<&str>,
) -> Result<Option<rtq_core::TaskStream>, ApiError> {
    let Some(id) = id else {
        return Ok(None);
    };
    match queue.follow_if_ended(id, 0, None).await {
        Ok(task) => Ok(task),
        Err(Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(st.rtq(e)),
    }
}

/// A task's state as JSON.
fn info_json(queue: &str, info: &TaskInfo) -> Value {
    let opt = |ms: i64| (ms > 0).then_some(ms);
    let (result, error) = match &info.outcome {
        Some(Outcome::Done(v)) => (v.clone(), Value::Null),
        Some(Outcome::Ended { kind, message, .. }) => {
            (Value::Null, json!({"kind": kind, "message": message}))
        }
        None => (Value::Null, Value::Null),
    };
    json!({
        "id": info.id,
        "queue": queue,
        "state": info.state.as_str(),
        "worker": (!info.worker.is_empty()).then_some(&info.worker),
        "attempt": info.attempt,
        "max_attempts": info.max_attempts,
        "priority": info.priority,
        "submitted_ms": info.submitted_ms,
        "deadline_ms": opt(info.deadline_ms),
        "started_ms": opt(info.started_ms),
        "first_chunk_ms": opt(info.first_chunk_ms),
        "finished_ms": opt(info.finished_ms),
        "chunks": info.chunks,
        "bytes": info.bytes,
        "labels": info.spec.as_ref().map(|s| &s.labels),
        "result": result,
        "error": error,
    })
}

/// `GET /v1/queues/{queue}/tasks/{id}`.
pub async fn status(
    State(st): State<Shared>,
    Path((name, id)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let (_admitted, queue) = open(&st, &caller, &name, true).await?;
    let info = queue.status(&id).await.map_err(|e| st.rtq(e))?;
    Ok(axum::Json(info_json(&name, &info)).into_response())
}

/// `GET /v1/queues/{queue}/tasks/{id}/result`: 200 with the result, 202
/// with the state while it runs, or the error status of how it ended.
pub async fn result(
    State(st): State<Shared>,
    Path((name, id)): Path<(String, String)>,
    query: Result<Query<ResultQuery>, axum::extract::rejection::QueryRejection>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let (mut admitted, queue) = open(&st, &caller, &name, true).await?;
    let info = queue.status(&id).await.map_err(|e| st.rtq(e))?;
    if info.outcome.is_none() && query.wait_ms == 0 {
        return Ok((StatusCode::ACCEPTED, axum::Json(info_json(&name, &info))).into_response());
    }
    if let Some(outcome) = info.outcome {
        // An ended task is answered from its stored outcome: no reply
        // reader, no share of the key's queues.
        let out = outcome.into_result(&id).map_err(|e| st.rtq(e))?;
        return Ok(axum::Json(json!({
            "id": id, "queue": name, "state": "done",
            "result": out, "attempt": info.attempt,
        }))
        .into_response());
    }
    // Held until the wait below ends.
    st.wait_on(&mut admitted, &name)?;
    let wait = Duration::from_millis(query.wait_ms).min(st.settings.max_wait);
    match queue.wait(&id, Some(wait)).await {
        Ok(out) => Ok(axum::Json(json!({
            "id": out.id, "queue": name, "state": "done",
            "result": out.result, "attempt": out.attempt,
        }))
        .into_response()),
        Err(Error::WaitTimedOut { state, worker, .. }) => Ok((
            StatusCode::ACCEPTED,
            axum::Json(json!({"id": id, "queue": name, "state": state.as_str(), "worker": worker})),
        )
            .into_response()),
        Err(e) => Err(st.rtq(e)),
    }
}

/// `GET /v1/queues/{queue}/tasks/{id}/stream`: follows the output from
/// `Last-Event-ID` + 1 (or `?from=`). Following never cancels the task.
pub async fn stream(
    State(st): State<Shared>,
    Path((name, id)): Path<(String, String)>,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let (mut admitted, queue) = open(&st, &caller, &name, true).await?;
    let resume = match headers.get("last-event-id") {
        Some(v) => {
            let text = v.to_str().map_err(|_| {
                ApiError::bad_request("Last-Event-ID must be an event id of this stream")
            })?;
            Resume::parse(text).map_err(ApiError::bad_request)?
        }
        None => None,
    };
    // `Last-Event-ID` wins over `?from=` (a chunk of the current attempt).
    let resume = resume.or(Some(Resume {
        attempt: None,
        next: query.from,
    }));
    let retry = st.settings.retry_after;
    // A task that has ended is answered from what is stored, without a
    // reply reader: nothing to wait for, so no share of the key's queues
    // is taken. Only a task still to be waited on takes one (one that
    // ends meanwhile is followed all the same).
    let ended = Events::ended(&queue, &id, resume, retry)
        .await
        .map_err(|e| st.rtq(e))?;
    let events = match ended {
        Some(events) => events,
        None => {
            st.wait_on(&mut admitted, &name)?;
            Events::follow(&queue, &id, resume, retry)
                .await
                .map_err(|e| st.rtq(e))?
        }
    };
    let guard = st.open.open(&queue, events.id(), Hold::Followed);
    Ok(events.into_response((guard, admitted), st.settings.keepalive))
}

/// `DELETE /v1/queues/{queue}/tasks/{id}`.
pub async fn cancel(
    State(st): State<Shared>,
    Path((name, id)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let (admitted, queue) = open(&st, &caller, &name, true).await?;
    let by = match admitted.key_name() {
        "" => "cancelled through the gateway".to_string(),
        k => format!("cancelled through the gateway by key {k}"),
    };
    let previous = queue.cancel(&id, &by).await.map_err(|e| st.rtq(e))?;
    Ok(axum::Json(json!({
        "id": id, "queue": name, "previous_state": previous.as_str(),
        "cancelled": !previous.is_terminal(),
    }))
    .into_response())
}
