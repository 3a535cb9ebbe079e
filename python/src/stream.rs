//! [`Stream`]: a task's output as an async iterator (and a blocking
//! iterator) of [`Chunk`], [`Restarted`] and, last, [`Done`].
//!
//! The stream starts lazily (the submit or follow happens on the first
//! read), so its id is known at once. Cancelling the asyncio task that
//! awaits a read drops the Rust stream, exactly as dropping it in Rust:
//! with `cancel_on_exit=True` the task is cancelled too.

use std::sync::{Arc, Mutex};

use futures::{FutureExt, StreamExt};
use pyo3::exceptions::{PyRuntimeError, PyStopAsyncIteration, PyStopIteration};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use rtq_core::{Queue, StreamEvent, TaskRequest, TaskStream};

use crate::errors::to_py_err;
use crate::json::to_py;
use crate::runtime::{attach, awaitable, block_on, drop_in_runtime, in_runtime, usable, Call};

/// One piece of a task's output.
#[pyclass(frozen, module = "rtq._native")]
pub struct Chunk {
    /// Index within its attempt (0-based).
    #[pyo3(get)]
    index: u64,
    /// The attempt that produced it.
    #[pyo3(get)]
    attempt: u64,
    data: Vec<u8>,
}

#[pymethods]
impl Chunk {
    /// The payload as bytes.
    #[getter]
    fn data<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.data)
    }
    /// The payload as text (invalid UTF-8 replaced).
    #[getter]
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
    fn __repr__(&self) -> String {
        format!(
            "Chunk(index={}, attempt={}, text={:?})",
            self.index,
            self.attempt,
            String::from_utf8_lossy(&self.data)
        )
    }
}

/// The attempt streamed so far was abandoned (its worker was lost, or it
/// was requeued); the chunks that follow are of `next_attempt`, from
/// index 0.
#[pyclass(frozen, get_all, module = "rtq._native")]
pub struct Restarted {
    /// The abandoned attempt.
    attempt: u64,
    /// The attempt whose chunks follow (usually `attempt + 1`).
    next_attempt: u64,
    /// Why.
    reason: String,
}

#[pymethods]
impl Restarted {
    fn __repr__(&self) -> String {
        format!(
            "Restarted(attempt={}, next_attempt={}, reason={:?})",
            self.attempt, self.next_attempt, self.reason
        )
    }
}

/// The task finished: the last item of a stream.
#[pyclass(frozen, get_all, module = "rtq._native")]
pub struct Done {
    /// Task id.
    id: String,
    /// The handler's JSON result.
    result: Py<PyAny>,
    /// The attempt that produced it.
    attempt: u64,
}

#[pymethods]
impl Done {
    fn __repr__(&self, py: Python<'_>) -> String {
        let result = self
            .result
            .bind(py)
            .repr()
            .map(|r| r.to_string())
            .unwrap_or_default();
        format!(
            "Done(id={:?}, result={result}, attempt={})",
            self.id, self.attempt
        )
    }
}

/// What starts a stream on its first read.
enum Start {
    Submit(Queue, TaskRequest),
    /// Task id, first chunk index, and the attempt it counts chunks of
    /// (none: the current one).
    Follow(Queue, String, u64, Option<u64>),
}

enum State {
    NotStarted(Start),
    Open(Holder),
    /// A read is in flight.
    Busy,
    Ended,
    /// Closed by the caller, or its read was cancelled.
    Closed,
}

/// Owns the core stream and drops it inside the runtime (its clean-up
/// spawns work), whichever thread drops it.
struct Holder(Option<TaskStream>);

impl Drop for Holder {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            drop_in_runtime(s);
        }
    }
}

/// Puts the stream back after a read, or marks it closed when the read
/// was abandoned (its future dropped).
struct Reading {
    state: Arc<Mutex<State>>,
    finished: bool,
}

impl Drop for Reading {
    fn drop(&mut self) {
        if !self.finished {
            if let Ok(mut s) = self.state.lock() {
                *s = State::Closed;
            }
        }
    }
}

/// A task's output, as `async for` / `for` items: `Chunk`, `Restarted`,
/// then one `Done`; a task that ends without a result raises its
/// `rtq.TaskError` instead.
#[pyclass(frozen, module = "rtq._native")]
pub struct Stream {
    id: String,
    state: Arc<Mutex<State>>,
}

impl Stream {
    /// A stream that submits `request` (with id `id`) on its first read.
    pub fn submit(queue: Queue, request: TaskRequest, id: String) -> Self {
        Self::new(id, Start::Submit(queue, request))
    }

    /// A stream that follows task `id` from chunk `from` (of `attempt`,
    /// with `Queue::follow_from`; else of the current attempt) on its
    /// first read.
    pub fn follow(queue: Queue, id: String, from: u64, attempt: Option<u64>) -> Self {
        Self::new(id.clone(), Start::Follow(queue, id, from, attempt))
    }

    fn new(id: String, start: Start) -> Self {
        Self {
            id,
            state: Arc::new(Mutex::new(State::NotStarted(start))),
        }
    }

    /// The next item, or `None` at the end.
    async fn next(state: Arc<Mutex<State>>) -> PyResult<Option<Py<PyAny>>> {
        let taken = {
            let mut s = state
                .lock()
                .map_err(|_| PyRuntimeError::new_err("stream state poisoned"))?;
            std::mem::replace(&mut *s, State::Busy)
        };
        let mut reading = Reading {
            state: Arc::clone(&state),
            finished: false,
        };
        let mut holder = match taken {
            State::Open(h) => h,
            State::NotStarted(start) => {
                let started = match start {
                    Start::Submit(q, r) => q.stream(r).await,
                    Start::Follow(q, id, from, None) => q.follow(&id, from).await,
                    Start::Follow(q, id, from, Some(attempt)) => {
                        q.follow_from(&id, attempt, from).await
                    }
                };
                match started {
                    Ok(s) => Holder(Some(s)),
                    Err(e) => {
                        reading.finish(State::Ended);
                        return Err(to_py_err(e));
                    }
                }
            }
            State::Ended => {
                reading.finish(State::Ended);
                return Ok(None);
            }
            State::Busy => {
                reading.finished = true;
                *state
                    .lock()
                    .map_err(|_| PyRuntimeError::new_err("poisoned"))? = State::Busy;
                return Err(PyRuntimeError::new_err(
                    "another read of this stream is in progress",
                ));
            }
            State::Closed => {
                reading.finish(State::Closed);
                return Err(PyRuntimeError::new_err(
                    "the stream was closed (or a read of it was cancelled)",
                ));
            }
        };
        let item = match holder.0.as_mut() {
            Some(s) => s.next().await,
            None => None,
        };
        match item {
            None => {
                reading.finish(State::Ended);
                Ok(None)
            }
            Some(Err(e)) => {
                reading.finish(State::Ended);
                Err(to_py_err(e))
            }
            Some(Ok(event)) => {
                let done = matches!(event, StreamEvent::Done(_));
                reading.finish(if done {
                    State::Ended
                } else {
                    State::Open(holder)
                });
                attach(|py| event_to_py(py, event)).map(Some)
            }
        }
    }
}

impl Stream {
    /// The next item if it is there already (chunks arrive in batches):
    /// one poll, no trip through the runtime. `None` if it is not.
    fn try_ready(&self, py: Python<'_>) -> Option<PyResult<Option<Py<PyAny>>>> {
        let mut state = self.state.lock().ok()?;
        let State::Open(holder) = &mut *state else {
            return None;
        };
        let stream = holder.0.as_mut()?;
        if let Err(e) = usable() {
            return Some(Err(e));
        }
        let polled = in_runtime(|| stream.next().now_or_never())?;
        Some(match polled {
            None => {
                *state = State::Ended;
                Ok(None)
            }
            Some(Err(e)) => {
                *state = State::Ended;
                Err(to_py_err(e))
            }
            Some(Ok(event)) => {
                if matches!(event, StreamEvent::Done(_)) {
                    *state = State::Ended;
                }
                drop(state);
                event_to_py(py, event).map(Some)
            }
        })
    }
}

impl Reading {
    fn finish(&mut self, next: State) {
        self.finished = true;
        if let Ok(mut s) = self.state.lock() {
            *s = next;
        }
    }
}

fn event_to_py(py: Python<'_>, event: StreamEvent) -> PyResult<Py<PyAny>> {
    Ok(match event {
        StreamEvent::Chunk(c) => Py::new(
            py,
            Chunk {
                index: c.index,
                attempt: c.attempt,
                data: c.data,
            },
        )?
        .into_any(),
        StreamEvent::Restarted {
            attempt,
            next_attempt,
            reason,
            ..
        } => Py::new(
            py,
            Restarted {
                attempt,
                next_attempt,
                reason,
            },
        )?
        .into_any(),
        StreamEvent::Done(out) => Py::new(
            py,
            Done {
                result: to_py(py, &out.result)?,
                id: out.id,
                attempt: out.attempt,
            },
        )?
        .into_any(),
    })
}

#[pymethods]
impl Stream {
    /// The task's id (known before the first read).
    #[getter]
    fn id(&self) -> &str {
        &self.id
    }

    fn __aiter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __anext__(&self, py: Python<'_>) -> PyResult<Call> {
        if let Some(ready) = self.try_ready(py) {
            return Ok(Call::ready(ready.and_then(|item| {
                item.ok_or_else(|| PyStopAsyncIteration::new_err(()))
            })));
        }
        let state = Arc::clone(&self.state);
        awaitable(async move {
            match Stream::next(state).await? {
                Some(item) => Ok(item),
                None => Err(PyStopAsyncIteration::new_err(())),
            }
        })
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        if let Some(ready) = self.try_ready(py) {
            return ready?.ok_or_else(|| PyStopIteration::new_err(()));
        }
        let state = Arc::clone(&self.state);
        match block_on(py, Stream::next(state))? {
            Some(item) => Ok(item),
            None => Err(PyStopIteration::new_err(())),
        }
    }

    /// Stops reading: drops the Rust stream (with `cancel_on_exit=True`
    /// the task is cancelled if it has not ended).
    fn close(&self) {
        let old = match self.state.lock() {
            Ok(mut s) => std::mem::replace(&mut *s, State::Closed),
            Err(_) => return,
        };
        match old {
            State::Ended => {
                if let Ok(mut s) = self.state.lock() {
                    *s = State::Ended;
                }
            }
            other => drop_in_runtime(other),
        }
    }

    /// Async form of [`Stream::close`] (for `contextlib.aclosing`).
    fn aclose(&self) -> PyResult<Call> {
        self.close();
        awaitable(async { Ok(()) })
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Closes the stream (the exception, if any, propagates).
    #[allow(unused_variables)]
    fn __exit__(
        &self,
        exc_type: Option<Bound<'_, PyAny>>,
        exc_value: Option<Bound<'_, PyAny>>,
        traceback: Option<Bound<'_, PyAny>>,
    ) {
        self.close();
    }

    fn __aenter__(slf: Py<Self>) -> PyResult<Call> {
        awaitable(async move { Ok(slf) })
    }

    /// Closes the stream (the exception, if any, propagates).
    #[allow(unused_variables)]
    fn __aexit__<'py>(
        &self,
        exc_type: Option<Bound<'py, PyAny>>,
        exc_value: Option<Bound<'py, PyAny>>,
        traceback: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Call> {
        self.aclose()
    }

    fn __repr__(&self) -> String {
        format!("Stream(id={:?})", self.id)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if let Ok(mut s) = self.state.lock() {
            let old = std::mem::replace(&mut *s, State::Closed);
            drop_in_runtime(old);
        }
    }
}
