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

use super::queue::{Queue, TaskOutput};
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
    /// The attempt whose chunks were streamed so far (or, for
    /// [`Queue::follow_from`](crate::Queue::follow_from), the attempt the
    /// caller held chunks of) was abandoned: its worker was lost, it
    /// failed and is retried, or an operator requeued it. The chunks that
    /// follow are of `next_attempt`, from index 0. A stream announces
    /// every change of attempt this way once it delivered (or resumed
    /// from) chunks of the old one, so chunks of two attempts are never
    /// spliced together. (Non-exhaustive: match it with `..`, so a field
    /// added later is not a breaking change.)
    #[non_exhaustive]
    Restarted {
        /// The abandoned attempt.
        attempt: u64,
        /// The attempt whose chunks follow (from index 0): usually
        /// `attempt + 1`, later when the task was run again more than once
        /// while the caller was away.
        next_attempt: u64,
        /// Why (the stored reason, or a general one when none was stored).
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

/// Where a stream starts: chunks already read (of `attempt`, the first at
/// index `first`), after an optional [`StreamEvent::Restarted`].
pub(crate) struct Start {
    /// The attempt the stream is at (for a task never handed out, 0).
    pub(crate) attempt: u64,
    /// Index of the first chunk of `chunks`.
    pub(crate) first: u64,
    /// Chunks read with the task's state.
    pub(crate) chunks: Vec<Vec<u8>>,
    /// Announced first: the held attempt was abandoned.
    pub(crate) restarted: Option<StreamEvent>,
}

/// Where a stream's events come from.
enum Source {
    /// A subscription, through the reply router.
    Live(Box<Tracker>),
    /// A task that had ended when it was read: its final event, once (no
    /// reply reader needed).
    Ended(Option<ReplyEvent>),
}

impl Source {
    async fn next_event(&mut self, id: &str) -> Result<ReplyEvent, Error> {
        match self {
            Source::Live(tracker) => tracker.next_event().await,
            Source::Ended(last) => last
                .take()
                .ok_or_else(|| Error::Protocol(format!("stream of task {id} read past its end"))),
        }
    }
}

struct State {
    source: Source,
    queue: Queue,
    id: String,
    attempt: u64,
    next_index: u64,
    ready: VecDeque<StreamEvent>,
    ended: bool,
    /// The error that ends the stream once the queued items are read.
    failure: Option<Error>,
}

impl TaskStream {
    /// A stream over `tracker`'s task from `start`.
    pub(crate) fn new(mut tracker: Tracker, start: Start) -> Self {
        // A polled task (a stream queue's, submitted by another client):
        // the polls read chunks from where the stream starts.
        tracker.poll_chunks_from(start.attempt, start.first + start.chunks.len() as u64);
        let (queue, id) = (tracker.queue.clone(), tracker.id.clone());
        Self::with_source(Source::Live(Box::new(tracker)), queue, id, start)
    }

    /// The finite stream of a task that had ended when it was read (with
    /// `last`, its final event): `start`, the rest of its stored chunks
    /// (read page by page), then its outcome. Needs no reply reader.
    pub(crate) fn ended(queue: Queue, id: String, last: ReplyEvent, start: Start) -> Self {
        Self::with_source(Source::Ended(Some(last)), queue, id, start)
    }

    fn with_source(source: Source, queue: Queue, id: String, start: Start) -> Self {
        let mut state = State {
            source,
            queue,
            id: id.clone(),
            attempt: start.attempt,
            next_index: start.first,
            ready: VecDeque::new(),
            ended: false,
            failure: None,
        };
        state.ready.extend(start.restarted);
        for data in start.chunks {
            state.push_chunk(start.attempt, data);
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

/// The reason of an abandoned attempt whose stored reason is not at hand.
pub(crate) fn abandoned_reason(attempt: u64) -> String {
    format!("attempt {attempt} was abandoned; the task was run again")
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
            let event = match self.source.next_event(&self.id).await {
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
                        return Some(Ok(StreamEvent::Restarted {
                            attempt,
                            next_attempt: attempt + 1,
                            reason,
                        }));
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
                    // were away, or never sent), or the whole output of an
                    // attempt that started after the last chunk we saw:
                    // fill it before the end.
                    if attempt > self.attempt {
                        self.switch_attempt(attempt);
                    }
                    if attempt == self.attempt && self.next_index < chunks {
                        if let Err(e) = self.fill(attempt, chunks).await {
                            // What was read is delivered before the error.
                            self.failure = Some(e);
                            continue;
                        }
                    }
                    let id = self.id.clone();
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

    /// Goes on with the chunks of a later `attempt` whose start was not
    /// announced (its `q` event was trimmed from the reply stream, or
    /// came before the subscription). From a task never handed out
    /// (attempt 0) the position stays: it counts chunks of whichever
    /// attempt runs first. Otherwise the new attempt starts at 0, after a
    /// [`StreamEvent::Restarted`] if chunks of the old one were delivered.
    fn switch_attempt(&mut self, attempt: u64) {
        if self.attempt != 0 {
            if self.next_index > 0 {
                self.ready.push_back(StreamEvent::Restarted {
                    attempt: self.attempt,
                    next_attempt: attempt,
                    reason: abandoned_reason(self.attempt),
                });
            }
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
            let snap = self.queue.read(&self.id, self.next_index).await?;
            let Some(snap) = snap.filter(|s| s.attempt == attempt && !s.chunks.is_empty()) else {
                return Err(Error::Protocol(format!(
                    "task {}: chunks {}..{} of attempt {attempt} are no longer stored (the task was requeued or its retention passed)",
                    self.id, self.next_index, until
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
