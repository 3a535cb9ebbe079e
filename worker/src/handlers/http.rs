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

use eventsource_stream::Eventsource;
use futures::StreamExt;
use rtq_core::{async_trait, Handler, HandlerError, TaskContext};
use serde_json::{json, Value};

use super::{media_type, request_failed, run_until_stopped, status_failed, Serve};
use crate::upstream::UpstreamState;

/// POSTs tasks to one URL.
pub struct HttpHandler {
    client: reqwest::Client,
    url: String,
    upstream: Arc<UpstreamState>,
}

impl HttpHandler {
    /// A handler for `url`.
    pub fn new(client: reqwest::Client, url: String, upstream: Arc<UpstreamState>) -> Self {
        Self {
            client,
            url,
            upstream,
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
        let resp = self
            .client
            .post(&self.url)
            .header("x-rtq-task-id", task.id())
            .header(
                reqwest::header::ACCEPT,
                "application/json, text/event-stream, application/x-ndjson",
            )
            .json(&body_of(task))
            .send()
            .await
            .map_err(|e| request_failed(e, &self.url, &self.upstream))?;
        self.upstream.mark_up();
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(status_failed(status, &text));
        }
        match media_type(&resp).as_str() {
            "text/event-stream" => sse(resp, task).await,
            "application/x-ndjson" | "application/jsonl" | "application/x-jsonlines" => {
                ndjson(resp, task).await
            }
            _ => {
                let bytes = resp
                    .bytes()
                    .await
                    .map_err(|e| request_failed(e, &self.url, &self.upstream))?;
                serde_json::from_slice(&bytes).map_err(|e| {
                    HandlerError::fatal(format!(
                        "upstream returned a body that is not JSON ({e}): {:.200}",
                        String::from_utf8_lossy(&bytes)
                    ))
                })
            }
        }
    }
}

async fn sse(resp: reqwest::Response, task: &TaskContext) -> Result<Value, HandlerError> {
    let mut events = resp.bytes_stream().eventsource();
    let mut chunks = 0u64;
    while let Some(event) = events.next().await {
        let event =
            event.map_err(|e| HandlerError::retryable(format!("upstream stream broke: {e}")))?;
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
                task.send(event.data).await?;
                chunks += 1;
            }
        }
    }
    Ok(json!({ "chunks": chunks }))
}

async fn ndjson(resp: reqwest::Response, task: &TaskContext) -> Result<Value, HandlerError> {
    let mut body = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut chunks = 0u64;
    loop {
        match body.next().await {
            Some(piece) => {
                let piece = piece
                    .map_err(|e| HandlerError::retryable(format!("upstream stream broke: {e}")))?;
                buf.extend_from_slice(&piece);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    if let Some(result) = ndjson_line(&line, task, &mut chunks).await? {
                        return Ok(result);
                    }
                }
            }
            None => {
                if let Some(result) = ndjson_line(&buf, task, &mut chunks).await? {
                    return Ok(result);
                }
                return Ok(json!({ "chunks": chunks }));
            }
        }
    }
}

/// Handles one NDJSON line; returns the result if the line carries it.
async fn ndjson_line(
    line: &[u8],
    task: &TaskContext,
    chunks: &mut u64,
) -> Result<Option<Value>, HandlerError> {
    let line = String::from_utf8_lossy(line).trim().to_string();
    if line.is_empty() {
        return Ok(None);
    }
    let value: Value = serde_json::from_str(&line).map_err(|e| {
        HandlerError::fatal(format!(
            "upstream sent a line that is not JSON ({e}): {line:.200}"
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
    task.send(chunk).await?;
    *chunks += 1;
    Ok(None)
}
