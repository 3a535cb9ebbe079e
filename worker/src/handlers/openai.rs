//! The `openai` handler: forwards tasks to an OpenAI-compatible server
//! (vLLM, TGI, Ollama, llama.cpp). Input with `messages` goes to
//! `/v1/chat/completions`, input with `prompt` to `/v1/completions`; the
//! request always streams, token deltas become chunks, and the result is
//! `{"text", "finish_reason", "usage", "model"}`. A result that would pass
//! the worker's result limit (`--max-result-bytes`) with the whole text in
//! it does not repeat the text: `"text"` is `null` and `"text_bytes"` says
//! how long it was (the client has it from the chunks). The server's error
//! message becomes the task's failure reason. Cancelling the task drops the
//! request at once (even during a silent prefill), which closes the
//! connection; OpenAI-compatible servers abort the generation on that.

use std::sync::Arc;

use rtq_core::{async_trait, Handler, HandlerError, TaskContext};
use serde_json::{json, Value};

use super::body::{read_capped, Events, Limits};
use super::{
    media_type, quote, reply_failed, run_until_stopped, send_holding, Hold, Serve, LINE_QUOTE,
};
use crate::upstream::UpstreamState;

/// Talks to one OpenAI-compatible server.
pub struct OpenAiHandler {
    client: reqwest::Client,
    base: String,
    model: Option<String>,
    upstream: Arc<UpstreamState>,
    limits: Limits,
    /// The worker's result limit (`--max-result-bytes`): a result that
    /// would pass it leaves the text out (see the module docs).
    max_result: usize,
    /// What a task does while the server is down (`--upstream-down`,
    /// `--upstream-hold-secs`, see [`Hold`]).
    hold: Hold,
}

impl OpenAiHandler {
    /// A handler for the server at `base` (e.g. `http://127.0.0.1:8000`);
    /// `model` fills in requests that name none; `limits` bound what the
    /// server may send; `max_result` is the worker's result limit; `hold`
    /// what a task does while the server is down.
    pub fn new(
        client: reqwest::Client,
        base: String,
        model: Option<String>,
        upstream: Arc<UpstreamState>,
        limits: Limits,
        max_result: usize,
        hold: Hold,
    ) -> Self {
        Self {
            client,
            base: base
                .trim_end_matches('/')
                .trim_end_matches("/v1")
                .to_string(),
            model,
            upstream,
            limits,
            max_result,
            hold,
        }
    }
}

/// The result of a completion: the text in it unless that would take the
/// result over `max_result` bytes, then `"text": null` and its length.
fn completion_result(
    text: &str,
    finish: Value,
    usage: Value,
    model: Value,
    max_result: usize,
) -> Value {
    let mut result = json!({
        "text": text,
        "finish_reason": finish,
        "usage": usage,
        "model": model,
    });
    if serde_json::to_string(&result).map_or(true, |j| j.len() > max_result) {
        result["text"] = Value::Null;
        result["text_bytes"] = json!(text.len());
    }
    result
}

/// The server's own message from an error body, or the body itself.
fn error_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            v["error"]["message"]
                .as_str()
                .or_else(|| v["error"].as_str())
                .or_else(|| v["message"].as_str())
                .map(String::from)
        })
        .unwrap_or_else(|| body.to_string())
}

/// The text of one choice: a chat delta, a chat message, or a completion.
fn choice_text(choice: &Value) -> Option<&str> {
    choice["delta"]["content"]
        .as_str()
        .or_else(|| choice["message"]["content"].as_str())
        .or_else(|| choice["text"].as_str())
}

#[async_trait]
impl Handler for OpenAiHandler {
    async fn handle(&self, task: TaskContext) -> Result<Value, HandlerError> {
        run_until_stopped(&task, self.serve(&task))
            .await
            .into_result()
    }
}

#[async_trait]
impl Serve for OpenAiHandler {
    async fn serve(&self, task: &TaskContext) -> Result<Value, HandlerError> {
        let mut body = match task.input() {
            Some(Value::Object(map)) => map.clone(),
            _ => {
                return Err(HandlerError::fatal(
                    "openai input must be a JSON object with \"messages\" or \"prompt\"",
                ))
            }
        };
        let path = if body.contains_key("messages") {
            "/v1/chat/completions"
        } else if body.contains_key("prompt") {
            "/v1/completions"
        } else {
            return Err(HandlerError::fatal(
                "openai input needs \"messages\" (chat) or \"prompt\" (completion)",
            ));
        };
        if let (false, Some(model)) = (body.contains_key("model"), &self.model) {
            body.insert("model".into(), json!(model));
        }
        body.insert("stream".into(), json!(true));
        body.insert("stream_options".into(), json!({ "include_usage": true }));
        let url = format!("{}{path}", self.base);
        let resp = send_holding(
            || {
                self.client
                    .post(&url)
                    .header("x-rtq-task-id", task.id())
                    .json(&body)
            },
            &url,
            &self.upstream,
            self.hold,
        )
        .await?;
        if !resp.status().is_success() {
            return Err(reply_failed(resp, &self.upstream, error_message).await);
        }
        self.upstream.mark_up();
        if media_type(&resp) != "text/event-stream" {
            // The server ignored `stream`: one JSON answer.
            let bytes = read_capped(resp, self.limits.max_body).await?;
            let v: Value = serde_json::from_slice(&bytes)
                .map_err(|e| HandlerError::fatal(format!("upstream answer is not JSON: {e}")))?;
            let text = choice_text(&v["choices"][0]).unwrap_or("").to_string();
            if !text.is_empty() {
                task.send(text.clone()).await?;
            }
            return Ok(completion_result(
                &text,
                v["choices"][0]["finish_reason"].clone(),
                v["usage"].clone(),
                v["model"].clone(),
                self.max_result,
            ));
        }
        let mut events = Events::new(resp.bytes_stream(), self.limits);
        let mut text = String::new();
        let (mut finish, mut usage, mut model) = (Value::Null, Value::Null, Value::Null);
        while let Some(event) = events.next_event().await? {
            if event.data.trim() == "[DONE]" {
                break;
            }
            let v: Value = serde_json::from_str(&event.data).map_err(|e| {
                HandlerError::fatal(format!(
                    "upstream sent an event that is not JSON ({e}): {}",
                    quote(&event.data, LINE_QUOTE)
                ))
            })?;
            if v.get("error").is_some() {
                return Err(HandlerError::fatal(format!(
                    "upstream error: {}",
                    error_message(&event.data)
                )));
            }
            if let Some(choice) = v["choices"].get(0) {
                if let Some(delta) = choice_text(choice).filter(|d| !d.is_empty()) {
                    self.limits.check_chunk(delta.len())?;
                    task.send(delta.to_string()).await?;
                    text.push_str(delta);
                }
                if !choice["finish_reason"].is_null() {
                    finish = choice["finish_reason"].clone();
                }
            }
            if !v["usage"].is_null() {
                usage = v["usage"].clone();
            }
            if model.is_null() && !v["model"].is_null() {
                model = v["model"].clone();
            }
        }
        Ok(completion_result(
            &text,
            finish,
            usage,
            model,
            self.max_result,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_error_messages_are_extracted() {
        assert_eq!(
            error_message(r#"{"error":{"message":"model not found","type":"x"}}"#),
            "model not found"
        );
        assert_eq!(error_message(r#"{"error":"overloaded"}"#), "overloaded");
        assert_eq!(error_message("plain text"), "plain text");
    }

    #[test]
    fn a_text_that_would_pass_the_result_limit_is_left_out_of_the_result() {
        let small = completion_result("hi", json!("stop"), Value::Null, json!("m"), 1000);
        assert_eq!(small["text"], "hi");
        assert_eq!(small["model"], "m");
        let big = completion_result(
            &"y".repeat(2000),
            json!("stop"),
            Value::Null,
            json!("m"),
            1000,
        );
        assert_eq!(big["text"], Value::Null);
        assert_eq!(big["text_bytes"], 2000);
        assert_eq!(big["finish_reason"], "stop");
        // Exactly at the limit still fits.
        let fits = completion_result("ab", Value::Null, Value::Null, Value::Null, 1000);
        let size = fits.to_string().len();
        assert_eq!(
            completion_result("ab", Value::Null, Value::Null, Value::Null, size)["text"],
            "ab"
        );
        assert_eq!(
            completion_result("ab", Value::Null, Value::Null, Value::Null, size - 1)["text"],
            Value::Null
        );
    }

    #[test]
    fn choice_text_reads_chat_deltas_messages_and_completions() {
        assert_eq!(
            choice_text(&json!({"delta": {"content": "hi"}})),
            Some("hi")
        );
        assert_eq!(
            choice_text(&json!({"message": {"content": "all"}})),
            Some("all")
        );
        assert_eq!(choice_text(&json!({"text": "t"})), Some("t"));
        assert_eq!(choice_text(&json!({"delta": {"role": "assistant"}})), None);
    }
}
