//! [`TaskStream`]: a task's chunks as a `futures::Stream`, ending with the
//! final result or the reason there is none. Chunks are deduplicated by
//! index, gaps are filled from the task's stored output, and chunks of an
//! abandoned attempt are announced with [`StreamEvent::Restarted`].

use std::borrow::Cow;
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};

use super::queue::TaskOutput;
use super::tracker::Tracker;
use crate::error::Error;
use crate::protocol::ReplyEvent;

/// One piece of a task's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Index of the chunk within its attempt (0-based).
    pub index: u64,
    /// The attempt that produced it.
    pub attempt: u64,
    /// The payload (text tokens are UTF-8; frames may be binary).
    pub data: Vec<u8>,
}

impl Chunk {
    /// The payload as text (invalid UTF-8 replaced).
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.data)
    }
}

/// An item of a [`TaskStream`].
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEvent {
    /// A chunk of output.
    Chunk(Chunk),
    /// The attempt whose chunks were streamed so far was abandoned (its
    /// worker was lost or it was requeued); chunks start again from 0.
    Restarted {
        /// The abandoned attempt.
        attempt: u64,
        /// Why.
        reason: String,
    },
    /// The task finished; this is the last item.
    Done(TaskOutput),
}

/// A task's output as a stream. Ends after [`StreamEvent::Done`] or after
/// the error that explains why there is no result.
pub struct TaskStream {
    id: String,
    created: bool,
    inner: BoxStream<'static, Result<StreamEvent, Error>>,
}

struct State {
    tracker: Tracker,
    attempt: u64,
    next_index: u64,
    ready: VecDeque<StreamEvent>,
    ended: bool,
    /// The error that ends the stream once the queued items are read.
    failure: Option<Error>,
}

impl TaskStream {
    /// A stream over `tracker`'s task, starting with `chunks` (already read,
    /// of attempt `attempt`, the first at index `first`).
    pub(crate) fn new(tracker: Tracker, attempt: u64, first: u64, chunks: Vec<Vec<u8>>) -> Self {
        let id = tracker.id.clone();
        let mut state = State {
            tracker,
            attempt,
            next_index: first,
            ready: VecDeque::new(),
            ended: false,
            failure: None,
        };
        for data in chunks {
            state.ready.push_back(StreamEvent::Chunk(Chunk {
                index: state.next_index,
                attempt,
                data,
            }));
            state.next_index += 1;
        }
        let inner = futures::stream::unfold(state, |mut st| async move {
            let item = st.next_item().await?;
            Some((item, st))
        })
        .boxed();
        Self {
            id,
            created: false,
            inner,
        }
    }

    /// Marks the stream as its submit's creation (see [`TaskStream::created`]).
    pub(crate) fn created_by_submit(mut self, created: bool) -> Self {
        self.created = created;
        self
    }

    /// The task's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// True if the [`Queue::stream`](crate::Queue::stream) call that
    /// returned this stream created its task; false for a follow and for a
    /// submit whose explicit id named a task that existed already (or may
    /// have: a retry after a lost reply). Only a created task is cancelled
    /// by [`TaskRequest::cancel_on_drop`](crate::TaskRequest::cancel_on_drop),
    /// and only its creator should cancel it on the caller's behalf.
    pub fn created(&self) -> bool {
        self.created
    }

    /// Reads the stream to its end and returns the final output and the
    /// text of the last attempt's chunks.
    ///
    /// # Errors
    /// The error that ended the stream.
    pub async fn collect_text(mut self) -> Result<(TaskOutput, String), Error> {
        let mut text = String::new();
        while let Some(item) = self.next().await {
            match item? {
                StreamEvent::Chunk(c) => text.push_str(&c.text()),
                StreamEvent::Restarted { .. } => text.clear(),
                StreamEvent::Done(out) => return Ok((out, text)),
            }
        }
        Err(Error::Protocol(format!(
            "stream of task {} ended without a result",
            self.id
        )))
    }
}

impl Stream for TaskStream {
    type Item = Result<StreamEvent, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

impl State {
    async fn next_item(&mut self) -> Option<Result<StreamEvent, Error>> {
        loop {
            if let Some(ev) = self.ready.pop_front() {
                return Some(Ok(ev));
            }
            if let Some(e) = self.failure.take() {
                return Some(Err(e));
            }
            if self.ended {
                return None;
            }
            let event = match self.tracker.next_event().await {
                Ok(ev) => ev,
                Err(e) => {
                    self.ended = true;
                    return Some(Err(e));
                }
            };
            match event {
                ReplyEvent::Chunks {
                    attempt,
                    seq0,
                    chunks,
                    ..
                } => {
                    if let Err(e) = self.accept_chunks(attempt, seq0, chunks).await {
                        self.ended = true;
                        return Some(Err(e));
                    }
                }
                ReplyEvent::Requeued {
                    attempt, reason, ..
                } => {
                    if attempt >= self.attempt {
                        self.attempt = attempt + 1;
                        self.next_index = 0;
                        return Some(Ok(StreamEvent::Restarted { attempt, reason }));
                    }
                }
                ReplyEvent::Final {
                    attempt,
                    chunks,
                    outcome,
                    ..
                } => {
                    self.ended = true;
                    // The tail may be missing (chunk events trimmed while we
                    // were away, or never sent): fill it before the end.
                    if attempt >= self.attempt && self.next_index < chunks {
                        if attempt > self.attempt {
                            self.switch_attempt(attempt);
                        }
                        if let Err(e) = self.fill(attempt, chunks).await {
                            return Some(Err(e));
                        }
                    }
                    let id = self.tracker.id.clone();
                    let done = outcome.into_result(&id).map(|result| {
                        StreamEvent::Done(TaskOutput {
                            id,
                            result,
                            attempt,
                        })
                    });
                    match done {
                        Ok(done) => self.ready.push_back(done),
                        Err(e) => self.failure = Some(e),
                    }
                }
            }
        }
    }

    fn switch_attempt(&mut self, attempt: u64) {
        if self.attempt != 0 {
            self.next_index = 0;
        }
        self.attempt = attempt;
    }

    async fn accept_chunks(
        &mut self,
        attempt: u64,
        seq0: u64,
        chunks: Vec<Vec<u8>>,
    ) -> Result<(), Error> {
        if attempt < self.attempt {
            return Ok(()); // from an abandoned attempt
        }
        if attempt > self.attempt {
            self.switch_attempt(attempt);
        }
        if seq0 > self.next_index {
            // A gap (the reply stream was trimmed while we were away):
            // fill it from the task's stored output first.
            self.fill(attempt, seq0).await?;
        }
        let skip = self.next_index.saturating_sub(seq0) as usize;
        for data in chunks.into_iter().skip(skip) {
            self.push_chunk(attempt, data);
        }
        Ok(())
    }

    fn push_chunk(&mut self, attempt: u64, data: Vec<u8>) {
        self.ready.push_back(StreamEvent::Chunk(Chunk {
            index: self.next_index,
            attempt,
            data,
        }));
        self.next_index += 1;
    }

    /// Reads the stored chunks of `attempt` from `next_index` up to `until`,
    /// page by page.
    async fn fill(&mut self, attempt: u64, until: u64) -> Result<(), Error> {
        while self.next_index < until {
            let snap = self
                .tracker
                .queue
                .read(&self.tracker.id, self.next_index)
                .await?;
            let Some(snap) = snap.filter(|s| s.attempt == attempt && !s.chunks.is_empty()) else {
                return Err(Error::Protocol(format!(
                    "task {}: chunks {}..{} of attempt {attempt} are no longer stored (the task was requeued or its retention passed)",
                    self.tracker.id, self.next_index, until
                )));
            };
            for data in snap.chunks {
                if self.next_index >= until {
                    break;
                }
                self.push_chunk(attempt, data);
            }
        }
        Ok(())
    }
}
