//! The task API's server-sent events (`?stream=true` submits and
//! `GET .../tasks/{id}/stream`): `chunk`, `restarted`, `done` and `error`
//! events whose ids carry the attempt, so a client that reconnects with
//! `Last-Event-ID` never gets chunks of two attempts spliced together.
//!
//! - A chunk's id is `<attempt>:<index>`; a `restarted` event's id is
//!   `<next attempt>:-1` ("nothing of that attempt yet").
//! - [`Resume::parse`] reads `Last-Event-ID` (a bare index is accepted and
//!   means the task's current attempt).
//! - [`Events`] turns a [`TaskStream`] into events. When the client holds
//!   chunks of an attempt other than the one the task runs (the task was
//!   requeued while it was away, or between its request and the read), it
//!   first gets a `restarted` event and then the current attempt from
//!   chunk 0, never the tail of the new attempt after the head of the old.

use std::collections::VecDeque;
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

/// How often one response follows a task again from chunk 0 because the
/// attempt changed under it, before it gives up with an error event.
const MAX_REFOLLOWS: u32 = 3;

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
/// time.
pub struct Events {
    task: TaskStream,
    queue: Queue,
    /// Whether the task may be followed again from chunk 0 (a follower's
    /// stream; never a submit's, whose stream owns the task: dropping it
    /// would cancel the task).
    may_refollow: bool,
    refollows: u32,
    /// The attempt whose chunks the client holds, once known.
    attempt: Option<u64>,
    ready: VecDeque<Event>,
    ended: bool,
    retry_after: Duration,
}

impl Events {
    /// The events of a task this response submitted (from chunk 0).
    pub fn submitted(task: TaskStream, queue: Queue, retry_after: Duration) -> Self {
        Self::new(task, queue, false, retry_after)
    }

    fn new(task: TaskStream, queue: Queue, may_refollow: bool, retry_after: Duration) -> Self {
        Self {
            task,
            queue,
            may_refollow,
            refollows: 0,
            attempt: None,
            ready: VecDeque::new(),
            ended: false,
            retry_after,
        }
    }

    /// Follows task `id` for a client at `resume` (none: from chunk 0).
    /// If the client holds chunks of an attempt the task no longer runs,
    /// the events start with `restarted` and the current attempt from
    /// chunk 0.
    ///
    /// # Errors
    /// [`Error::NotFound`] and Redis errors.
    pub async fn follow(
        queue: &Queue,
        id: &str,
        resume: Option<Resume>,
        retry_after: Duration,
    ) -> Result<Self, Error> {
        let Some(resume) = resume.filter(|r| r.next > 0) else {
            let task = queue.follow(id, 0).await?;
            return Ok(Self::new(task, queue.clone(), true, retry_after));
        };
        // The attempt the task runs (or ran last) now: `att` only grows.
        let info = queue.status(id).await?;
        if let Some(held) = resume.attempt {
            if held == 0 || held > info.attempt {
                return Err(Error::InvalidInput(format!(
                    "Last-Event-ID names attempt {held}, which task {id} never ran (it is at \
                     attempt {}); resume from an event id this stream sent",
                    info.attempt
                )));
            }
        }
        if resume.attempt.is_none() && info.attempt == 0 {
            // Not handed out yet: the index is of whichever attempt runs
            // first.
            let task = queue.follow(id, resume.next).await?;
            return Ok(Self::new(task, queue.clone(), true, retry_after));
        }
        let held = resume.attempt.unwrap_or(info.attempt);
        if held == info.attempt {
            let task = queue.follow(id, resume.next).await?;
            let mut events = Self::new(task, queue.clone(), true, retry_after);
            events.attempt = Some(held);
            return Ok(events);
        }
        let task = queue.follow(id, 0).await?;
        let mut events = Self::new(task, queue.clone(), true, retry_after);
        let reason = abandoned(&info.attempt_errors, held);
        events
            .ready
            .push_back(restarted_event(held, &reason, info.attempt));
        Ok(events)
    }

    /// The task's id.
    pub fn id(&self) -> &str {
        self.task.id()
    }

    fn error(&self, e: &Error) -> ApiError {
        ApiError::from_rtq(e, self.retry_after)
    }

    /// Announces that the client's attempt `held` was abandoned for `now`
    /// (no `restarted` came from the library: the requeue happened before
    /// this response subscribed).
    async fn announce(&mut self, held: u64, now: u64) {
        let reason = match self.queue.status(self.task.id()).await {
            Ok(info) => abandoned(&info.attempt_errors, held),
            Err(_) => abandoned(&Default::default(), held),
        };
        self.ready.push_back(restarted_event(held, &reason, now));
        self.attempt = None;
    }

    /// Follows the task again from chunk 0; false if this stream may not
    /// (a submit's) or did so too often.
    async fn refollow(&mut self) -> bool {
        if !self.may_refollow {
            return false;
        }
        if self.refollows >= MAX_REFOLLOWS {
            let e = ApiError::new(
                axum::http::StatusCode::BAD_GATEWAY,
                "server_error",
                "stream_ended",
                format!(
                    "task {} kept restarting while this stream caught up; reconnect",
                    self.task.id()
                ),
            );
            self.ready.push_back(error_event(&e));
            self.ended = true;
            return true;
        }
        self.refollows += 1;
        match self.queue.follow(self.task.id(), 0).await {
            Ok(task) => self.task = task,
            Err(e) => {
                let e = self.error(&e);
                self.ready.push_back(error_event(&e));
                self.ended = true;
            }
        }
        true
    }

    /// The next event; `None` after the last.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(ev) = self.ready.pop_front() {
                return Some(ev);
            }
            if self.ended {
                return None;
            }
            match self.task.next().await {
                Some(Ok(StreamEvent::Chunk(c))) => {
                    if let Some(held) = self.attempt.filter(|a| *a != c.attempt) {
                        self.announce(held, c.attempt).await;
                        // Chunks 0..index of the new attempt were skipped
                        // (they were below the resume point): read again.
                        if c.index != 0 && self.refollow().await {
                            continue;
                        }
                    }
                    self.attempt = Some(c.attempt);
                    self.ready.push_back(chunk_event(&c));
                }
                Some(Ok(StreamEvent::Restarted { attempt, reason })) => {
                    self.ready
                        .push_back(restarted_event(attempt, &reason, attempt + 1));
                    self.attempt = None;
                }
                Some(Ok(StreamEvent::Done(out))) => {
                    if let Some(held) = self.attempt.filter(|a| *a != out.attempt) {
                        // The task ended in another attempt than the one
                        // the client holds: replay that one from chunk 0.
                        self.announce(held, out.attempt).await;
                        if self.refollow().await {
                            continue;
                        }
                    }
                    self.ready.push_back(done_event(&out));
                    self.ended = true;
                }
                Some(Err(e)) => {
                    let e = self.error(&e);
                    self.ready.push_back(error_event(&e));
                    self.ended = true;
                }
                None => {
                    let e = ApiError::new(
                        axum::http::StatusCode::BAD_GATEWAY,
                        "server_error",
                        "stream_ended",
                        format!("the output of task {} ended without a result", self.id()),
                    );
                    self.ready.push_back(error_event(&e));
                    self.ended = true;
                }
            }
        }
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

/// Why attempt `attempt` was abandoned, as stored with the task.
fn abandoned(errors: &std::collections::BTreeMap<u64, String>, attempt: u64) -> String {
    errors
        .get(&attempt)
        .cloned()
        .unwrap_or_else(|| format!("attempt {attempt} was abandoned; the task was run again"))
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
