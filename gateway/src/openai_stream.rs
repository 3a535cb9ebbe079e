//! The streaming form of a completion (`stream: true`): the task's chunks
//! as OpenAI chunk events, then the finish, the usage and `data: [DONE]`.
//!
//! The response head does not wait for the first token: the answer waits
//! for the task's first event at most [`FIRST_EVENT_WINDOW`] (an error by
//! then, such as an upstream refusal, keeps its HTTP status); after that
//! it starts the stream with a comment, and keep-alive comments follow
//! every `--keepalive-secs`, so a load balancer's idle timeout never cuts
//! a request whose model is slow to start. An error that comes later is
//! the stream's last event.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use rtq_core::{Error, StreamEvent, TaskStream};
use serde_json::{json, Value};

use crate::app::{Admitted, Shared};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::open::OpenGuard;
use crate::openai::{ended_early, finish_reason, first_event, usage, Ctx, Kind};

/// Longest time the response head waits for the task's first event.
pub const FIRST_EVENT_WINDOW: Duration = Duration::from_secs(1);

/// A submitted task to answer as a stream.
pub(crate) struct Answer {
    /// The task's output (dropping it cancels the task).
    pub(crate) task: TaskStream,
    /// What every chunk repeats.
    pub(crate) ctx: Ctx,
    /// The open-task guard and the request's admission, held until the
    /// stream ends.
    pub(crate) held: (OpenGuard, Admitted),
    /// When the request came.
    pub(crate) started: Instant,
}

impl Answer {
    /// The SSE response.
    ///
    /// # Errors
    /// The error status of a task that ended within
    /// [`FIRST_EVENT_WINDOW`] without output.
    pub(crate) async fn respond(mut self, st: &Shared) -> Result<Response, ApiError> {
        let retry = st.settings.retry_after;
        let window = FIRST_EVENT_WINDOW.min(st.settings.keepalive);
        let first = first_event(&mut self.task, st.settings.max_wait, &self.ctx.id, retry);
        let pending = match tokio::time::timeout(window, first).await {
            Ok(first) => Some(first?),
            Err(_) => None,
        };
        // Bytes at once when the first token is not there yet.
        let opening = match pending {
            Some(_) => None,
            None => Some(Event::default().comment("waiting for the first token")),
        };
        let state = State {
            task: self.task,
            pending,
            ctx: self.ctx,
            sent_any: false,
            deadline: self.started + st.settings.max_wait,
            first_token: Some((Arc::clone(&st.metrics), self.started)),
            retry,
            _held: self.held,
        };
        let events = futures::stream::unfold(Some(state), |state| async move {
            let mut s = state?;
            let (events, done) = s.step().await;
            Some((events, (!done).then_some(s)))
        })
        .flat_map(futures::stream::iter);
        let events = futures::stream::iter(opening)
            .chain(events)
            .map(Ok::<_, Infallible>);
        Ok(Sse::new(events)
            .keep_alive(KeepAlive::new().interval(st.settings.keepalive))
            .into_response())
    }
}

fn data(v: &Value) -> Event {
    Event::default().data(v.to_string())
}

/// A streaming answer in progress. Dropping it (the caller went away)
/// drops the task stream, which cancels the task.
struct State {
    task: TaskStream,
    /// The first event, if it came before the stream started.
    pending: Option<StreamEvent>,
    ctx: Ctx,
    sent_any: bool,
    /// The first event must come by then (`--max-wait-secs`).
    deadline: Instant,
    /// Where to record the time to the first token, until it is.
    first_token: Option<(Arc<Metrics>, Instant)>,
    retry: Duration,
    _held: (OpenGuard, Admitted),
}

impl State {
    /// The events of the next item of the task stream, and whether the
    /// answer is complete.
    async fn step(&mut self) -> (Vec<Event>, bool) {
        let item = match self.pending.take() {
            Some(ev) => Some(Ok(ev)),
            None if !self.sent_any => {
                let deadline = tokio::time::Instant::from_std(self.deadline);
                match tokio::time::timeout_at(deadline, self.task.next()).await {
                    Ok(item) => item,
                    Err(_) => {
                        let e = ApiError::new(
                            axum::http::StatusCode::GATEWAY_TIMEOUT,
                            "timeout_error",
                            "wait_timed_out",
                            format!(
                                "task {} sent no output within the gateway's --max-wait-secs; \
                                 it was cancelled",
                                self.ctx.id
                            ),
                        );
                        return (vec![data(&e.body())], true);
                    }
                }
            }
            None => self.task.next().await,
        };
        self.translate(item)
    }

    fn translate(&mut self, item: Option<Result<StreamEvent, Error>>) -> (Vec<Event>, bool) {
        match item {
            Some(Ok(StreamEvent::Chunk(c))) => {
                if let Some((metrics, started)) = self.first_token.take() {
                    metrics.first_token(self.ctx.kind.route(), started);
                }
                let first = !self.sent_any;
                self.sent_any = true;
                (
                    vec![data(&self.ctx.chunk(Some(&c.text()), first, None))],
                    false,
                )
            }
            Some(Ok(StreamEvent::Restarted { reason, .. })) => {
                if !self.sent_any {
                    return (Vec::new(), false);
                }
                let e = ApiError::new(
                    axum::http::StatusCode::BAD_GATEWAY,
                    "server_error",
                    "generation_restarted",
                    format!(
                        "the worker of task {} was lost mid-generation ({reason}); retry the request",
                        self.ctx.id
                    ),
                );
                (vec![data(&e.body())], true)
            }
            Some(Ok(StreamEvent::Done(out))) => {
                let mut events = Vec::new();
                if !self.sent_any && self.ctx.kind == Kind::Chat {
                    events.push(data(&self.ctx.chunk(Some(""), true, None)));
                }
                events.push(data(&self.ctx.chunk(
                    None,
                    false,
                    Some(finish_reason(&out.result)),
                )));
                if self.ctx.include_usage {
                    let mut v = self.ctx.envelope(json!([]));
                    v["usage"] = usage(&out.result);
                    events.push(data(&v));
                }
                events.push(Event::default().data("[DONE]"));
                (events, true)
            }
            Some(Err(e)) => (vec![data(&ApiError::from_rtq(&e, self.retry).body())], true),
            None => (vec![data(&ended_early(&self.ctx.id).body())], true),
        }
    }
}
