//! The OpenAI-compatible routes: `POST /v1/chat/completions` and
//! `POST /v1/completions`. The model name selects the queue; the body goes
//! to the worker's `openai` handler as the task input (without `stream`
//! and `stream_options`, which the handler sets itself); the task's chunks
//! come back as OpenAI chunk events (`stream: true`, ending with
//! `data: [DONE]`) or as one JSON answer. The task is cancelled when the
//! caller goes away (the response, and with it the task stream, is
//! dropped).

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures::StreamExt;
use rtq_core::{StreamEvent, TaskRequest, TaskStream};
use serde_json::{json, Map, Value};

use crate::app::{json_object, Caller, Shared};
use crate::error::ApiError;
use crate::open::Hold;

/// Which OpenAI endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Chat,
    Completion,
}

impl Kind {
    pub(crate) fn route(self) -> &'static str {
        match self {
            Kind::Chat => "/v1/chat/completions",
            Kind::Completion => "/v1/completions",
        }
    }
}

/// `POST /v1/chat/completions`.
pub async fn chat(
    State(st): State<Shared>,
    Extension(caller): Extension<Caller>,
    body: Request,
) -> Response {
    serve(st, caller, body, Kind::Chat)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// `POST /v1/completions`.
pub async fn completion(
    State(st): State<Shared>,
    Extension(caller): Extension<Caller>,
    body: Request,
) -> Response {
    serve(st, caller, body, Kind::Completion)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// What the request asked for, checked.
struct Ask {
    model: String,
    stream: bool,
    include_usage: bool,
}

fn check(body: &Map<String, Value>, kind: Kind) -> Result<Ask, ApiError> {
    let model = match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => {
            return Err(ApiError::bad_request(
                "`model` is required: the name of a queue or model (GET /v1/models lists them)",
            ))
        }
    };
    match kind {
        Kind::Chat if !body.get("messages").is_some_and(Value::is_array) => {
            return Err(ApiError::bad_request("`messages` must be an array"))
        }
        Kind::Completion
            if !matches!(body.get("prompt"), Some(Value::String(_) | Value::Array(_))) =>
        {
            return Err(ApiError::bad_request(
                "`prompt` must be a string or an array",
            ))
        }
        _ => {}
    }
    // OpenAI accepts an integral float (`1.0`) as well.
    if let Some(n) = body.get("n").filter(|n| !n.is_null()) {
        if n.as_f64() != Some(1.0) {
            return Err(ApiError::bad_request(format!(
                "`n` must be 1 (one choice per request; send several requests \
                 for more), got {}",
                n.to_string().chars().take(40).collect::<String>()
            )));
        }
    }
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::bad_request("`stream` must be true or false")),
    };
    let include_usage = body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(Ask {
        model,
        stream,
        include_usage,
    })
}

async fn serve(
    st: Shared,
    caller: Caller,
    request: Request,
    kind: Kind,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    // The key and its grant of these routes were checked on the request
    // head (crate::app::require_key); its rate and concurrency limits hold
    // whatever the queue, so they are checked before the body is read too.
    let mut admitted = st.admit_key(&caller)?;
    let mut body = json_object(Bytes::from_request(request, &st).await)?;
    let ask = check(&body, kind)?;
    // The grant of the queue: the model resolves only among the key's
    // queues, so one it may not use is 404 model_not_found exactly like
    // one that does not exist (and is not in its GET /v1/models).
    let allowed = |q: &str| caller.allows(q);
    let resolved = st.catalog.resolve(&ask.model, &allowed).await?;
    st.wait_on(&mut admitted, &resolved.queue)?;
    st.catalog.check_serving(&resolved.queue).await?;
    body.remove("stream");
    body.remove("stream_options");
    if body.get("n").is_some_and(|n| !n.is_null()) {
        // `1.0` reaches the upstream as the integer it means.
        body.insert("n".into(), Value::from(1));
    }
    if !resolved.by_label {
        // The name was the queue's: the worker's --openai-model names the
        // upstream model.
        body.remove("model");
    }
    let retry = st.settings.retry_after;
    let queue = st
        .client
        .queue(&resolved.queue)
        .map_err(|e| ApiError::from_rtq(&e, retry))?;
    let mut req = TaskRequest::json(Value::Object(body))
        .cancel_on_drop(true)
        .label("model", ask.model.clone());
    if !admitted.key_name().is_empty() {
        req = req.label("api_key", admitted.key_name().to_string());
    }
    if let Some(t) = st.settings.task_timeout {
        req = req.timeout(t);
    }
    let mut task = queue
        .stream(req)
        .await
        .map_err(|e| ApiError::from_rtq(&e, retry))?;
    // The task is this request's alone (its id is the gateway's own).
    let guard = st.open.open(&queue, task.id(), Hold::Owned);
    let ctx = Ctx {
        kind,
        id: task.id().to_string(),
        model: ask.model,
        created: unix_secs(),
        include_usage: ask.include_usage,
    };
    let mut resp = if ask.stream {
        let stream = crate::openai_stream::Answer {
            task,
            ctx: ctx.clone(),
            held: (guard, admitted),
            started,
        };
        stream.respond(&st).await?
    } else {
        let first = first_event(&mut task, st.settings.max_wait, &ctx.id, retry).await?;
        if matches!(first, StreamEvent::Chunk(_)) {
            st.metrics.first_token(kind.route(), started);
        }
        let deadline = started + st.settings.max_wait;
        let (out, text) = collect(task, first, deadline, &ctx.id, retry).await?;
        drop(guard);
        axum::Json(ctx.whole(&text, &out.result)).into_response()
    };
    if let Ok(v) = HeaderValue::from_str(&ctx.id) {
        resp.headers_mut().insert("x-rtq-task-id", v);
    }
    Ok(resp)
}

/// The first event that is not a restart before any output.
pub(crate) async fn first_event(
    task: &mut TaskStream,
    max_wait: Duration,
    id: &str,
    retry: Duration,
) -> Result<StreamEvent, ApiError> {
    let next = async {
        loop {
            match task.next().await {
                Some(Ok(StreamEvent::Restarted { .. })) => continue,
                Some(Ok(ev)) => return Ok(ev),
                Some(Err(e)) => return Err(ApiError::from_rtq(&e, retry)),
                None => return Err(ended_early(id)),
            }
        }
    };
    tokio::time::timeout(max_wait, next)
        .await
        .unwrap_or_else(|_| Err(wait_expired(id)))
}

/// Reads the rest of a task's output for a non-streaming answer.
async fn collect(
    mut task: TaskStream,
    first: StreamEvent,
    deadline: Instant,
    id: &str,
    retry: Duration,
) -> Result<(rtq_core::TaskOutput, String), ApiError> {
    let mut text = String::new();
    let mut ev = first;
    loop {
        match ev {
            StreamEvent::Chunk(c) => text.push_str(&c.text()),
            StreamEvent::Restarted { .. } => text.clear(),
            StreamEvent::Done(out) => return Ok((out, text)),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        ev = match tokio::time::timeout(left, task.next()).await {
            Err(_) => return Err(wait_expired(id)),
            Ok(None) => return Err(ended_early(id)),
            Ok(Some(Err(e))) => return Err(ApiError::from_rtq(&e, retry)),
            Ok(Some(Ok(ev))) => ev,
        };
    }
}

pub(crate) fn ended_early(id: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::BAD_GATEWAY,
        "server_error",
        "stream_ended",
        format!("the output of task {id} ended without a result"),
    )
}

pub(crate) fn wait_expired(id: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::GATEWAY_TIMEOUT,
        "timeout_error",
        "wait_timed_out",
        format!("task {id} did not finish within the gateway's --max-wait-secs; it was cancelled"),
    )
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What every chunk of one answer repeats.
#[derive(Clone, Debug)]
pub(crate) struct Ctx {
    pub(crate) kind: Kind,
    pub(crate) id: String,
    pub(crate) model: String,
    pub(crate) created: u64,
    pub(crate) include_usage: bool,
}

impl Ctx {
    fn object_id(&self) -> String {
        match self.kind {
            Kind::Chat => format!("chatcmpl-{}", self.id),
            Kind::Completion => format!("cmpl-{}", self.id),
        }
    }

    /// One streamed chunk: `text` (and the role on the first), or the end
    /// with its `finish` reason.
    pub(crate) fn chunk(&self, text: Option<&str>, first: bool, finish: Option<&str>) -> Value {
        let choice = match self.kind {
            Kind::Chat => {
                let mut delta = Map::new();
                if first {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(t) = text {
                    delta.insert("content".into(), json!(t));
                }
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Kind::Completion => {
                json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish})
            }
        };
        self.envelope(json!([choice]))
    }

    pub(crate) fn envelope(&self, choices: Value) -> Value {
        let object = match self.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Completion => "text_completion",
        };
        json!({
            "id": self.object_id(),
            "object": object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": choices,
        })
    }

    /// The non-streaming answer.
    fn whole(&self, text: &str, result: &Value) -> Value {
        let finish = finish_reason(result);
        let (object, choice) = match self.kind {
            Kind::Chat => (
                "chat.completion",
                json!({"index": 0, "message": {"role": "assistant", "content": text},
                       "logprobs": null, "finish_reason": finish}),
            ),
            Kind::Completion => (
                "text_completion",
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish}),
            ),
        };
        json!({
            "id": self.object_id(),
            "object": object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [choice],
            "usage": usage(result),
        })
    }
}

pub(crate) fn finish_reason(result: &Value) -> &str {
    result["finish_reason"].as_str().unwrap_or("stop")
}

/// The task's usage in OpenAI's shape (missing counts are 0).
pub(crate) fn usage(result: &Value) -> Value {
    let u = &result["usage"];
    let prompt = u["prompt_tokens"].as_u64().unwrap_or(0);
    let completion = u["completion_tokens"].as_u64().unwrap_or(0);
    let total = u["total_tokens"].as_u64().unwrap_or(prompt + completion);
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(kind: Kind) -> Ctx {
        Ctx {
            kind,
            id: "t1".into(),
            model: "m".into(),
            created: 7,
            include_usage: true,
        }
    }

    #[test]
    fn chat_chunks_carry_the_role_first_and_the_finish_last() {
        let c = ctx(Kind::Chat);
        let first = c.chunk(Some("Hel"), true, None);
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(first["id"], "chatcmpl-t1");
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(first["choices"][0]["delta"]["content"], "Hel");
        assert!(first["choices"][0]["finish_reason"].is_null());
        let last = c.chunk(None, false, Some("length"));
        assert_eq!(last["choices"][0]["delta"], json!({}));
        assert_eq!(last["choices"][0]["finish_reason"], "length");
    }

    #[test]
    fn completion_chunks_are_text_completions() {
        let c = ctx(Kind::Completion);
        let v = c.chunk(Some("x"), true, None);
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["choices"][0]["text"], "x");
    }

    #[test]
    fn whole_answers_fill_usage_and_finish_reason() {
        let v = ctx(Kind::Chat).whole("hi", &json!({"usage": {"completion_tokens": 3}}));
        assert_eq!(v["choices"][0]["message"]["content"], "hi");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(
            v["usage"],
            json!({"prompt_tokens": 0, "completion_tokens": 3, "total_tokens": 3})
        );
    }

    #[test]
    fn requests_are_checked_before_anything_is_submitted() {
        let obj = |v: Value| v.as_object().unwrap().clone();
        assert!(check(&obj(json!({"messages": []})), Kind::Chat).is_err());
        assert!(check(&obj(json!({"model": "q"})), Kind::Chat).is_err());
        assert!(check(&obj(json!({"model": "q", "prompt": 3})), Kind::Completion).is_err());
        assert!(check(
            &obj(json!({"model": "q", "messages": [], "n": 2})),
            Kind::Chat
        )
        .is_err());
        assert!(check(
            &obj(json!({"model": "q", "messages": [], "stream": "yes"})),
            Kind::Chat
        )
        .is_err());
        for ok in [json!(1), json!(1.0), Value::Null] {
            assert!(
                check(
                    &obj(json!({"model": "q", "messages": [], "n": ok})),
                    Kind::Chat
                )
                .is_ok(),
                "n={ok}"
            );
        }
        for bad in [
            json!(2),
            json!(1.5),
            json!(0),
            json!(-1),
            json!("1"),
            json!(2.0),
        ] {
            let e = check(
                &obj(json!({"model": "q", "messages": [], "n": bad})),
                Kind::Chat,
            )
            .err()
            .unwrap_or_else(|| panic!("n={bad} accepted"));
            assert!(e.message.contains("`n` must be 1"), "{}", e.message);
        }
        let ask = check(
            &obj(json!({"model": "q", "messages": [], "stream": true,
                        "stream_options": {"include_usage": true}})),
            Kind::Chat,
        )
        .unwrap();
        assert!(ask.stream && ask.include_usage);
    }
}
