//! The task API's server-sent events (`?stream=true` submits and
//! `GET .../tasks/{id}/stream`): `chunk`, `restarted`, `done` and `error`
//! events whose ids carry the attempt, so a client that reconnects with
//! `Last-Event-ID` never gets chunks of two attempts spliced together.
//!
//! - A chunk's id is `<attempt>:<index>`; a `restarted` event's id is
//!   `<next attempt>:-1` ("nothing of that attempt yet").
//! - [`Resume::parse`] reads `Last-Event-ID` (a bare index is accepted and
//!   means the task's current attempt).
//! - [`Events`] turns a [`TaskStream`] into events. A resume is one call
//!   of the library ([`Queue::follow_from`]), which reads the task and
//!   subscribes to it in one atomic step: when the client holds chunks of
//!   an attempt the task no longer runs (it was requeued while the client
//!   was away, or at any moment up to that step), the stream starts with
//!   `restarted` and then the current attempt from chunk 0, never the
//!   tail of the new attempt after the head of the old. Later changes of
//!   attempt arrive as the library's `Restarted` the same way, so there is
//!   nothing for the gateway to compare or read again.

use std::convert::Infallible;
use std::time::Duration;

use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use rtq_core::{Chunk, Error, Queue, StreamEvent, TaskOutput, TaskStream};
use serde_json::json;

use crate::error::ApiError;

/// Longest `Last-Event-ID` accepted (two 20-digit numbers and a colon fit).
const MAX_EVENT_ID_LEN: usize = 64;

/// Where a reconnecting client stands, from its `Last-Event-ID`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resume {
    /// The attempt whose chunks it holds; `None` for a bare index (the
    /// task's current attempt).
    pub attempt: Option<u64>,
    /// The first chunk index it still needs.
    pub next: u64,
}

impl Resume {
    /// Parses a `Last-Event-ID`: `<attempt>:<index>` (index `-1` for a
    /// `restarted` event: nothing of that attempt yet) or a bare chunk
    /// index. Empty means no position (from the start).
    ///
    /// # Errors
    /// A message for the 400 answer.
    pub fn parse(raw: &str) -> Result<Option<Self>, String> {
        let bad = || {
            "Last-Event-ID must be an event id of this stream: `<attempt>:<chunk index>` \
             (or a bare chunk index)"
                .to_string()
        };
        let raw = raw.trim();
        if raw.is_empty() {
            return Ok(None);
        }
        if raw.len() > MAX_EVENT_ID_LEN {
            return Err(bad());
        }
        let (attempt, index) = match raw.split_once(':') {
            Some((a, i)) => (Some(a.parse::<u64>().map_err(|_| bad())?), i),
            None => (None, raw),
        };
        let next = match index {
            "-1" => 0,
            i if i.bytes().all(|b| b.is_ascii_digit()) => {
                i.parse::<u64>().map_err(|_| bad())?.saturating_add(1)
            }
            _ => return Err(bad()),
        };
        Ok(Some(Self { attempt, next }))
    }
}

/// Where a follow starts: the first chunk wanted, and the attempt the
/// client holds chunks of (none: the task's current attempt).
fn position(resume: Option<Resume>) -> (u64, Option<u64>) {
    match resume {
        // Nothing held (a first request, or a `restarted` event's id
        // `<next>:-1`): the current attempt from chunk 0.
        None | Some(Resume { next: 0, .. }) => (0, None),
        // A bare index or `?from=`: the current attempt (on a task not
        // handed out yet, the one that runs first).
        Some(Resume { attempt, next }) => (next, attempt),
    }
}

/// Names the `Last-Event-ID` attempt in a refusal of it.
fn held_error(e: Error, held: u64) -> Error {
    match e {
        Error::InvalidInput(why) => {
            Error::InvalidInput(format!("Last-Event-ID names attempt {held}: {why}"))
        }
        other => other,
    }
}

/// The id of a chunk event.
fn chunk_id(c: &Chunk) -> String {
    format!("{}:{}", c.attempt, c.index)
}

fn chunk_event(c: &Chunk) -> Event {
    Event::default()
        .event("chunk")
        .id(chunk_id(c))
        .data(json!({"index": c.index, "attempt": c.attempt, "text": c.text()}).to_string())
}

/// `attempt` was abandoned; the output starts again at chunk 0 of `next`.
fn restarted_event(attempt: u64, reason: &str, next: u64) -> Event {
    Event::default()
        .event("restarted")
        .id(format!("{next}:-1"))
        .data(json!({"attempt": attempt, "reason": reason}).to_string())
}

fn done_event(out: &TaskOutput) -> Event {
    Event::default()
        .event("done")
        .data(json!({"id": out.id, "result": out.result, "attempt": out.attempt}).to_string())
}

fn error_event(e: &ApiError) -> Event {
    Event::default().event("error").data(e.body().to_string())
}

/// A task's output as SSE events, keeping the client on one attempt at a
/// time (the library announces every change of attempt with `Restarted`).
pub struct Events {
    task: TaskStream,
    ended: bool,
    retry_after: Duration,
}

impl Events {
    /// The events of a task this response submitted (from chunk 0).
    pub fn submitted(task: TaskStream, retry_after: Duration) -> Self {
        Self {
            task,
            ended: false,
            retry_after,
        }
    }

    /// Follows task `id` for a client at `resume` (none: from chunk 0).
    /// If the client holds chunks of an attempt the task no longer runs,
    /// the events start with `restarted` and the current attempt from
    /// chunk 0 (decided atomically with the subscription).
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::InvalidInput`] for an attempt the task
    /// never ran, and Redis errors.
    pub async fn follow(
        queue: &Queue,
        id: &str,
        resume: Option<Resume>,
        retry_after: Duration,
    ) -> Result<Self, Error> {
        let task = match position(resume) {
            (from, None) => queue.follow(id, from).await?,
            (from, Some(held)) => queue
                .follow_from(id, held, from)
                .await
                .map_err(|e| held_error(e, held))?,
        };
        Ok(Self::submitted(task, retry_after))
    }

    /// The events of task `id` for a client at `resume` if the task has
    /// ended (its stored chunks, then its outcome), read without a reply
    /// reader; `None` while it has not ended ([`Events::follow`] it then).
    ///
    /// # Errors
    /// As [`Events::follow`].
    pub async fn ended(
        queue: &Queue,
        id: &str,
        resume: Option<Resume>,
        retry_after: Duration,
    ) -> Result<Option<Self>, Error> {
        let (from, held) = position(resume);
        let task = queue
            .follow_if_ended(id, from, held)
            .await
            .map_err(|e| match held {
                Some(held) => held_error(e, held),
                None => e,
            })?;
        Ok(task.map(|t| Self::submitted(t, retry_after)))
    }

    /// The task's id.
    pub fn id(&self) -> &str {
        self.task.id()
    }

    fn error(&self, e: &Error) -> ApiError {
        ApiError::from_rtq(e, self.retry_after)
    }

    /// The next event; `None` after the last.
    pub async fn next(&mut self) -> Option<Event> {
        if self.ended {
            return None;
        }
        let event = match self.task.next().await {
            Some(Ok(StreamEvent::Chunk(c))) => chunk_event(&c),
            Some(Ok(StreamEvent::Restarted {
                attempt,
                next_attempt,
                reason,
                ..
            })) => restarted_event(attempt, &reason, next_attempt),
            Some(Ok(StreamEvent::Done(out))) => {
                self.ended = true;
                done_event(&out)
            }
            Some(Err(e)) => {
                self.ended = true;
                error_event(&self.error(&e))
            }
            None => {
                self.ended = true;
                let e = ApiError::new(
                    axum::http::StatusCode::BAD_GATEWAY,
                    "server_error",
                    "stream_ended",
                    format!("the output of task {} ended without a result", self.id()),
                );
                error_event(&e)
            }
        };
        Some(event)
    }

    /// The SSE response (with keep-alive comments every `keepalive`),
    /// holding `held` (the open-task guard, the request's admission)
    /// until it ends.
    pub fn into_response<H: Send + 'static>(self, held: H, keepalive: Duration) -> Response {
        let id = self.id().to_string();
        let events = futures::stream::unfold(Some((self, held)), |state| async move {
            let (mut events, held) = state?;
            let event = events.next().await?;
            Some((Ok::<_, Infallible>(event), Some((events, held))))
        })
        .boxed();
        let mut resp = Sse::new(events)
            .keep_alive(KeepAlive::new().interval(keepalive))
            .into_response();
        if let Ok(v) = HeaderValue::from_str(&id) {
            resp.headers_mut().insert("x-rtq-task-id", v);
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_parse_back_to_the_next_chunk_of_their_attempt() {
        let p = |s: &str| Resume::parse(s).unwrap();
        assert_eq!(
            p("2:7"),
            Some(Resume {
                attempt: Some(2),
                next: 8
            })
        );
        // A restarted event's id: nothing of attempt 3 yet.
        assert_eq!(
            p("3:-1"),
            Some(Resume {
                attempt: Some(3),
                next: 0
            })
        );
        // A bare index: the current attempt.
        assert_eq!(
            p(" 7 "),
            Some(Resume {
                attempt: None,
                next: 8
            })
        );
        assert_eq!(p(""), None);
        assert_eq!(p("1:18446744073709551615").map(|r| r.next), Some(u64::MAX));
    }

    #[test]
    fn malformed_event_ids_are_refused() {
        for bad in [
            "abc",
            "-5",
            "1:-2",
            "1:+3",
            ":3",
            "1:",
            "1:2:3",
            "-1:0",
            "99999999999999999999999:1",
            "1:99999999999999999999999",
            "1:\u{0}",
            &"9".repeat(65),
        ] {
            assert!(Resume::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn chunk_ids_carry_the_attempt() {
        let c = Chunk {
            index: 4,
            attempt: 2,
            data: b"x".to_vec(),
        };
        assert_eq!(chunk_id(&c), "2:4");
    }
}
