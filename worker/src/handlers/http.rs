//! The `http` handler: POSTs the task input (JSON) to a local endpoint.
//!
//! The reply decides what happens:
//! - `application/json`: the body is the result.
//! - `text/event-stream` (SSE): each event's data is a chunk; an event named
//!   `result` carries the result JSON, one named `error` fails the task,
//!   data `[DONE]` ends the stream.
//! - `application/x-ndjson` / `application/jsonl`: each line is JSON:
//!   `{"chunk": "..."}`, `{"result": ...}` or `{"error": "..."}`.
//!
//! Without an explicit result, a stream's result is `{"chunks": n}`. The
//! task id is sent in the `X-Rtq-Task-Id` header. Cancelling the task drops
//! the request at once, even while the upstream is silent, which closes the
//! connection to the upstream.

use std::sync::Arc;

use rtq_core::{async_trait, Handler, HandlerError, TaskContext};
use serde_json::{json, Value};

use super::body::{read_capped, Events, Limits, Lines};
use super::{
    media_type, quote, reply_failed, run_until_stopped, send_holding, Hold, Serve, LINE_QUOTE,
};
use crate::upstream::UpstreamState;

/// POSTs tasks to one URL.
pub struct HttpHandler {
    client: reqwest::Client,
    url: String,
    upstream: Arc<UpstreamState>,
    limits: Limits,
    /// The worker's result limit (`--max-result-bytes`), checked on JSON
    /// replies.
    max_result: usize,
    /// What a task does while the upstream is down (`--upstream-down`,
    /// `--upstream-hold-secs`, see [`Hold`]).
    hold: Hold,
}

impl HttpHandler {
    /// A handler for `url`; `limits` bound what the upstream may send,
    /// `max_result` the result of a JSON reply; `hold` says what a task does
    /// while the upstream is down.
    pub fn new(
        client: reqwest::Client,
        url: String,
        upstream: Arc<UpstreamState>,
        limits: Limits,
        max_result: usize,
        hold: Hold,
    ) -> Self {
        Self {
            client,
            url,
            upstream,
            limits,
            max_result,
            hold,
        }
    }
}

/// The JSON body sent for a task: its input, or `{"input_ref": ...}`.
pub(crate) fn body_of(task: &TaskContext) -> Value {
    match (task.input(), task.input_ref()) {
        (Some(input), _) => input.clone(),
        (None, Some(r)) => json!({ "input_ref": r }),
        (None, None) => Value::Null,
    }
}

#[async_trait]
impl Handler for HttpHandler {
    async fn handle(&self, task: TaskContext) -> Result<Value, HandlerError> {
        run_until_stopped(&task, self.serve(&task))
            .await
            .into_result()
    }
}

#[async_trait]
impl Serve for HttpHandler {
    async fn serve(&self, task: &TaskContext) -> Result<Value, HandlerError> {
        let body = body_of(task);
        let resp = send_holding(
            || {
                self.client
                    .post(&self.url)
                    .header("x-rtq-task-id", task.id())
                    .header(
                        reqwest::header::ACCEPT,
                        "application/json, text/event-stream, application/x-ndjson",
                    )
                    .json(&body)
            },
            &self.url,
            &self.upstream,
            self.hold,
        )
        .await?;
        if !resp.status().is_success() {
            return Err(reply_failed(resp, &self.upstream, str::to_string).await);
        }
        self.upstream.mark_up();
        match media_type(&resp).as_str() {
            "text/event-stream" => sse(resp, task, self.limits).await,
            "application/x-ndjson" | "application/jsonl" | "application/x-jsonlines" => {
                ndjson(resp, task, self.limits).await
            }
            _ => {
                let bytes = read_capped(resp, self.limits.max_body).await?;
                let result: Value = serde_json::from_slice(&bytes).map_err(|e| {
                    HandlerError::fatal(format!(
                        "upstream returned a body that is not JSON ({e}): {}",
                        quote(&String::from_utf8_lossy(&bytes), LINE_QUOTE)
                    ))
                })?;
                // Checked here, where the flag can be named (the runtime
                // would fail it too, after the fact).
                let size = serde_json::to_string(&result).map_or(0, |j| j.len());
                if size > self.max_result {
                    return Err(HandlerError::fatal(format!(
                        "upstream JSON reply is {size} bytes, over the {}-byte result limit \
                         (--max-result-bytes; at most 16 MiB): stream it (SSE or NDJSON) or \
                         return a reference",
                        self.max_result
                    )));
                }
                Ok(result)
            }
        }
    }
}

async fn sse(
    resp: reqwest::Response,
    task: &TaskContext,
    limits: Limits,
) -> Result<Value, HandlerError> {
    let mut events = Events::new(resp.bytes_stream(), limits);
    let mut chunks = 0u64;
    while let Some(event) = events.next_event().await? {
        match event.event.as_str() {
            "result" => {
                return serde_json::from_str(&event.data).map_err(|e| {
                    HandlerError::fatal(format!("upstream result event is not JSON: {e}"))
                })
            }
            "error" => {
                return Err(HandlerError::fatal(format!(
                    "upstream error: {}",
                    event.data
                )))
            }
            _ if event.data == "[DONE]" => break,
            _ => {
                limits.check_chunk(event.data.len())?;
                task.send(event.data).await?;
                chunks += 1;
            }
        }
    }
    Ok(json!({ "chunks": chunks }))
}

async fn ndjson(
    resp: reqwest::Response,
    task: &TaskContext,
    limits: Limits,
) -> Result<Value, HandlerError> {
    let mut lines = Lines::new(resp.bytes_stream(), limits);
    let mut chunks = 0u64;
    while let Some(line) = lines.next_line().await? {
        if let Some(result) = ndjson_line(&line, task, &mut chunks, limits).await? {
            return Ok(result);
        }
    }
    Ok(json!({ "chunks": chunks }))
}

/// Handles one NDJSON line; returns the result if the line carries it.
async fn ndjson_line(
    line: &[u8],
    task: &TaskContext,
    chunks: &mut u64,
    limits: Limits,
) -> Result<Option<Value>, HandlerError> {
    let line = String::from_utf8_lossy(line).trim().to_string();
    if line.is_empty() {
        return Ok(None);
    }
    let value: Value = serde_json::from_str(&line).map_err(|e| {
        HandlerError::fatal(format!(
            "upstream sent a line that is not JSON ({e}): {}",
            quote(&line, LINE_QUOTE)
        ))
    })?;
    if let Some(result) = value.get("result") {
        return Ok(Some(result.clone()));
    }
    if let Some(err) = value.get("error") {
        let message = err
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| err.to_string());
        return Err(HandlerError::fatal(format!("upstream error: {message}")));
    }
    let chunk = match value.get("chunk") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => line,
    };
    limits.check_chunk(chunk.len())?;
    task.send(chunk).await?;
    *chunks += 1;
    Ok(None)
}
