//! The client classes: [`Client`] / [`Queue`] block (releasing the GIL),
//! [`AsyncClient`] / [`AsyncQueue`] return asyncio awaitables. Both wrap
//! the same `rtq_core` objects: thousands of concurrent waits share one
//! Redis connection and one blocking reader per queue, as in Rust.

use std::collections::BTreeMap;
use std::time::Duration;

use pyo3::prelude::*;
use rtq_core::protocol::{MAX_ATTEMPTS, PRIORITY_MAX, PRIORITY_MIN};
use rtq_core::ClientConfig;

use crate::admin::{Admin, AsyncAdmin};
use crate::args::{self, opt_secs, opt_text, Int, Secs, Text};
use crate::errors::to_py_err;
use crate::json::to_py;
use crate::request::{info_dict, seconds, submitted_dict, Options};
use crate::runtime::{attach, awaitable, block_on, in_runtime, usable, Call};
use crate::stream::Stream;

/// Client settings from the keywords of `connect`.
fn config(
    response_timeout: Option<Secs>,
    give_up_after: Option<Secs>,
    max_reply_readers: Option<Int>,
    reply_reader_idle: Option<Secs>,
) -> PyResult<ClientConfig> {
    let mut c = ClientConfig::default();
    if let Some(t) = response_timeout {
        c = c.response_timeout(seconds("response_timeout", t.0)?);
    }
    if let Some(t) = give_up_after {
        c = c.give_up_after(seconds("give_up_after", t.0)?);
    }
    if let Some(n) = max_reply_readers {
        c = c.max_reply_readers(n.within_usize("max_reply_readers", 1, usize::MAX)?);
    }
    if let Some(t) = reply_reader_idle {
        c = c.reply_reader_idle(seconds("reply_reader_idle", t.0)?);
    }
    Ok(c)
}

async fn connect_core(url: String, config: ClientConfig) -> PyResult<rtq_core::Client> {
    rtq_core::Client::connect_with(&url, config)
        .await
        .map_err(to_py_err)
}

/// Connects to Redis (blocking flavour). `max_reply_readers` bounds the
/// queues waited on at once (one Redis connection each; beyond it a wait
/// raises `rtq.TooManyQueues`), `reply_reader_idle` is how long (seconds)
/// an unused queue's connection stays open.
///
/// Raises `rtq.InvalidInput` for a malformed URL or settings out of range,
/// `rtq.ConnectionError` (password redacted), `rtq.AuthenticationFailed`,
/// `rtq.TlsError`, `rtq.PermissionDenied`.
#[pyfunction]
#[pyo3(signature = (url, *, response_timeout=None, give_up_after=None, max_reply_readers=None, reply_reader_idle=None))]
pub fn connect(
    py: Python<'_>,
    url: Text,
    response_timeout: Option<Secs>,
    give_up_after: Option<Secs>,
    max_reply_readers: Option<Int>,
    reply_reader_idle: Option<Secs>,
) -> PyResult<Client> {
    let url = checked_url(url)?;
    let config = config(
        response_timeout,
        give_up_after,
        max_reply_readers,
        reply_reader_idle,
    )?;
    let inner = block_on(py, connect_core(url, config))?;
    Ok(Client { inner })
}

/// Connects to Redis (asyncio flavour): `await rtq.aio.connect(url)`.
/// Raises as `connect`; a malformed URL or settings out of range raise
/// `rtq.InvalidInput` at once, before anything is awaited.
#[pyfunction]
#[pyo3(signature = (url, *, response_timeout=None, give_up_after=None, max_reply_readers=None, reply_reader_idle=None))]
pub fn connect_async(
    url: Text,
    response_timeout: Option<Secs>,
    give_up_after: Option<Secs>,
    max_reply_readers: Option<Int>,
    reply_reader_idle: Option<Secs>,
) -> PyResult<Call> {
    let url = checked_url(url)?;
    let config = config(
        response_timeout,
        give_up_after,
        max_reply_readers,
        reply_reader_idle,
    )?;
    awaitable(async move {
        let inner = connect_core(url, config).await?;
        Ok(AsyncClient { inner })
    })
}

/// `from_` and `attempt` of `follow`, range-checked.
fn follow_position(from: &Int, attempt: Option<&Int>) -> PyResult<(u64, Option<u64>)> {
    let from = from.within("from_", 0, u64::MAX)?;
    let attempt = attempt
        .map(|a| a.within("attempt", 0, u64::MAX))
        .transpose()?;
    Ok((from, attempt))
}

/// The URL, checked without connecting: a malformed one is a
/// configuration error (`rtq.InvalidInput`, not retryable).
pub fn checked_url(url: Text) -> PyResult<String> {
    rtq_core::validate_redis_url(&url.0)
        .map(|()| url.0)
        .map_err(to_py_err)
}

fn queue_core(client: &rtq_core::Client, name: &str) -> PyResult<rtq_core::Queue> {
    usable()?;
    in_runtime(|| client.queue(name)).map_err(to_py_err)
}

/// A connection to Redis (blocking calls). Cheap to share between threads.
#[pyclass(frozen, module = "rtq._native")]
pub struct Client {
    inner: rtq_core::Client,
}

#[pymethods]
impl Client {
    /// A handle on queue `name`.
    fn queue(&self, name: Text) -> PyResult<Queue> {
        Ok(Queue {
            inner: queue_core(&self.inner, &name.0)?,
        })
    }
    /// Admin reads (stats, workers, tasks).
    fn admin(&self) -> Admin {
        Admin::new(&self.inner)
    }
    /// The Redis URL, password redacted.
    #[getter]
    fn url(&self) -> &str {
        self.inner.redacted_url()
    }
    fn __repr__(&self) -> String {
        format!("rtq.Client({:?})", self.inner.redacted_url())
    }
}

/// A connection to Redis (asyncio calls).
#[pyclass(frozen, module = "rtq._native")]
pub struct AsyncClient {
    inner: rtq_core::Client,
}

#[pymethods]
impl AsyncClient {
    /// A handle on queue `name`.
    fn queue(&self, name: Text) -> PyResult<AsyncQueue> {
        Ok(AsyncQueue {
            inner: queue_core(&self.inner, &name.0)?,
        })
    }
    /// Admin reads (stats, workers, tasks).
    fn admin(&self) -> AsyncAdmin {
        AsyncAdmin::new(&self.inner)
    }
    /// The Redis URL, password redacted.
    #[getter]
    fn url(&self) -> &str {
        self.inner.redacted_url()
    }
    fn __repr__(&self) -> String {
        format!("rtq.aio.AsyncClient({:?})", self.inner.redacted_url())
    }
}

/// The futures behind both flavours of every queue method.
mod ops {
    use super::*;

    pub async fn run(q: rtq_core::Queue, request: rtq_core::TaskRequest) -> PyResult<Py<PyAny>> {
        let out = q.run(request).await.map_err(to_py_err)?;
        attach(|py| to_py(py, &out.result))
    }

    pub async fn submit(q: rtq_core::Queue, request: rtq_core::TaskRequest) -> PyResult<Py<PyAny>> {
        let s = q.submit(request).await.map_err(to_py_err)?;
        attach(|py| submitted_dict(py, &s))
    }

    pub async fn wait(
        q: rtq_core::Queue,
        id: String,
        max_wait: Option<Duration>,
    ) -> PyResult<Py<PyAny>> {
        let out = q.wait(&id, max_wait).await.map_err(to_py_err)?;
        attach(|py| to_py(py, &out.result))
    }

    pub async fn status(q: rtq_core::Queue, id: String) -> PyResult<Py<PyAny>> {
        let info = q.status(&id).await.map_err(to_py_err)?;
        attach(|py| info_dict(py, &info))
    }

    pub async fn cancel(q: rtq_core::Queue, id: String, reason: String) -> PyResult<String> {
        let state = q.cancel(&id, &reason).await.map_err(to_py_err)?;
        Ok(state.as_str().to_string())
    }

    pub async fn create_stream(q: rtq_core::Queue, bands: u8, max_depth: u64) -> PyResult<()> {
        q.create_stream(bands, max_depth).await.map_err(to_py_err)
    }
}

/// `bands` and `max_depth` of `create_stream`, range-checked.
fn stream_shape(bands: &Int, max_depth: &Int) -> PyResult<(u8, u64)> {
    Ok((
        bands.within("bands", 1, 5)?,
        max_depth.within("max_depth", 0, u64::MAX)?,
    ))
}

fn max_wait(timeout: Option<Secs>) -> PyResult<Option<Duration>> {
    timeout.map(|t| seconds("timeout", t.0)).transpose()
}

/// The keywords of `run`, `stream` and `submit`, gathered.
#[allow(clippy::too_many_arguments)]
fn options<'py>(
    input: Option<Bound<'py, PyAny>>,
    input_ref: Option<Text>,
    timeout: Option<Secs>,
    priority: Int,
    labels: Option<BTreeMap<Text, Text>>,
    id: Option<Text>,
    max_attempts: Option<Int>,
    retention: Option<Secs>,
    cancel_on_exit: bool,
) -> PyResult<(rtq_core::TaskRequest, String)> {
    Options {
        input,
        input_ref: opt_text(input_ref),
        timeout: opt_secs(timeout),
        priority: priority.within("priority", PRIORITY_MIN, PRIORITY_MAX)?,
        labels: args::labels(labels),
        id: opt_text(id),
        max_attempts: max_attempts
            .map(|n| n.within("max_attempts", 1, MAX_ATTEMPTS))
            .transpose()?,
        retention: opt_secs(retention),
        cancel_on_exit,
    }
    .into_request()
}

/// A handle on one queue (blocking calls; the GIL is released while
/// waiting, and Ctrl-C interrupts a wait).
#[pyclass(frozen, module = "rtq._native")]
pub struct Queue {
    inner: rtq_core::Queue,
}

#[pymethods]
impl Queue {
    /// The queue's name.
    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }

    /// Submits a task and waits for its result.
    #[pyo3(signature = (input=None, *, input_ref=None, timeout=None, priority=Int::of(0), labels=None, id=None, max_attempts=None, retention=None, cancel_on_exit=false),
        text_signature = "($self, input=None, *, input_ref=None, timeout=None, priority=0, labels=None, id=None, max_attempts=None, retention=None, cancel_on_exit=False)")]
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        py: Python<'_>,
        input: Option<Bound<'_, PyAny>>,
        input_ref: Option<Text>,
        timeout: Option<Secs>,
        priority: Int,
        labels: Option<BTreeMap<Text, Text>>,
        id: Option<Text>,
        max_attempts: Option<Int>,
        retention: Option<Secs>,
        cancel_on_exit: bool,
    ) -> PyResult<Py<PyAny>> {
        let (request, _) = options(
            input,
            input_ref,
            timeout,
            priority,
            labels,
            id,
            max_attempts,
            retention,
            cancel_on_exit,
        )?;
        block_on(py, ops::run(self.inner.clone(), request))
    }

    /// Submits a task and returns an iterator over its output.
    #[pyo3(signature = (input=None, *, input_ref=None, timeout=None, priority=Int::of(0), labels=None, id=None, max_attempts=None, retention=None, cancel_on_exit=false),
        text_signature = "($self, input=None, *, input_ref=None, timeout=None, priority=0, labels=None, id=None, max_attempts=None, retention=None, cancel_on_exit=False)")]
    #[allow(clippy::too_many_arguments)]
    fn stream(
        &self,
        input: Option<Bound<'_, PyAny>>,
        input_ref: Option<Text>,
        timeout: Option<Secs>,
        priority: Int,
        labels: Option<BTreeMap<Text, Text>>,
        id: Option<Text>,
        max_attempts: Option<Int>,
        retention: Option<Secs>,
        cancel_on_exit: bool,
    ) -> PyResult<Stream> {
        let (request, id) = options(
            input,
            input_ref,
            timeout,
            priority,
            labels,
            id,
            max_attempts,
            retention,
            cancel_on_exit,
        )?;
        Ok(Stream::submit(self.inner.clone(), request, id))
    }

    /// Submits a task and returns at once (a dict with its `id`).
    #[pyo3(signature = (input=None, *, input_ref=None, timeout=None, priority=Int::of(0), labels=None, id=None, max_attempts=None, retention=None),
        text_signature = "($self, input=None, *, input_ref=None, timeout=None, priority=0, labels=None, id=None, max_attempts=None, retention=None)")]
    #[allow(clippy::too_many_arguments)]
    fn submit(
        &self,
        py: Python<'_>,
        input: Option<Bound<'_, PyAny>>,
        input_ref: Option<Text>,
        timeout: Option<Secs>,
        priority: Int,
        labels: Option<BTreeMap<Text, Text>>,
        id: Option<Text>,
        max_attempts: Option<Int>,
        retention: Option<Secs>,
    ) -> PyResult<Py<PyAny>> {
        let (request, _) = options(
            input,
            input_ref,
            timeout,
            priority,
            labels,
            id,
            max_attempts,
            retention,
            false,
        )?;
        block_on(py, ops::submit(self.inner.clone(), request))
    }

    /// Waits for the result of a task submitted earlier.
    #[pyo3(signature = (id, *, timeout=None))]
    fn wait(&self, py: Python<'_>, id: Text, timeout: Option<Secs>) -> PyResult<Py<PyAny>> {
        block_on(py, ops::wait(self.inner.clone(), id.0, max_wait(timeout)?))
    }

    /// Everything stored about a task (a dict).
    fn status(&self, py: Python<'_>, id: Text) -> PyResult<Py<PyAny>> {
        block_on(py, ops::status(self.inner.clone(), id.0))
    }

    /// Streams a task submitted earlier, from chunk `from_` of its current
    /// attempt, or of `attempt` (resuming: if that attempt was abandoned,
    /// a `Restarted` comes first, then the next attempt from chunk 0).
    #[pyo3(signature = (id, *, from_=Int::of(0), attempt=None),
        text_signature = "($self, id, *, from_=0, attempt=None)")]
    fn follow(&self, id: Text, from_: Int, attempt: Option<Int>) -> PyResult<Stream> {
        let (from, attempt) = follow_position(&from_, attempt.as_ref())?;
        Ok(Stream::follow(self.inner.clone(), id.0, from, attempt))
    }

    /// Cancels a task; returns the state it was in.
    #[pyo3(signature = (id, reason=Text("cancelled by client".to_string())),
        text_signature = "($self, id, reason='cancelled by client')")]
    fn cancel(&self, py: Python<'_>, id: Text, reason: Text) -> PyResult<String> {
        block_on(py, ops::cancel(self.inner.clone(), id.0, reason.0))
    }

    /// Makes this queue a stream queue (protocol v3: consumer-group
    /// streams, `bands` priority bands, 1-5) with a depth limit (0: none),
    /// or updates the limit of one. Workers and clients learn the mode
    /// from Redis.
    #[pyo3(signature = (bands=Int::of(1), max_depth=Int::of(0)),
        text_signature = "($self, bands=1, max_depth=0)")]
    fn create_stream(&self, py: Python<'_>, bands: Int, max_depth: Int) -> PyResult<()> {
        let (bands, max_depth) = stream_shape(&bands, &max_depth)?;
        block_on(py, ops::create_stream(self.inner.clone(), bands, max_depth))
    }

    fn __repr__(&self) -> String {
        format!("rtq.Queue({:?})", self.inner.name())
    }
}

/// A handle on one queue (asyncio calls). Cancelling the asyncio task that
/// awaits a call drops the Rust future; with `cancel_on_exit=True` that
/// also cancels the rtq task.
#[pyclass(frozen, module = "rtq._native")]
pub struct AsyncQueue {
    inner: rtq_core::Queue,
}

#[pymethods]
impl AsyncQueue {
    /// The queue's name.
    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }

    /// Submits a task and waits for its result.
    #[pyo3(signature = (input=None, *, input_ref=None, timeout=None, priority=Int::of(0), labels=None, id=None, max_attempts=None, retention=None, cancel_on_exit=false),
        text_signature = "($self, input=None, *, input_ref=None, timeout=None, priority=0, labels=None, id=None, max_attempts=None, retention=None, cancel_on_exit=False)")]
    #[allow(clippy::too_many_arguments)]
    fn run<'py>(
        &self,
        input: Option<Bound<'py, PyAny>>,
        input_ref: Option<Text>,
        timeout: Option<Secs>,
        priority: Int,
        labels: Option<BTreeMap<Text, Text>>,
        id: Option<Text>,
        max_attempts: Option<Int>,
        retention: Option<Secs>,
        cancel_on_exit: bool,
    ) -> PyResult<Call> {
        let (request, _) = options(
            input,
            input_ref,
            timeout,
            priority,
            labels,
            id,
            max_attempts,
            retention,
            cancel_on_exit,
        )?;
        awaitable(ops::run(self.inner.clone(), request))
    }

    /// Submits a task and returns an async iterator over its output.
    #[pyo3(signature = (input=None, *, input_ref=None, timeout=None, priority=Int::of(0), labels=None, id=None, max_attempts=None, retention=None, cancel_on_exit=false),
        text_signature = "($self, input=None, *, input_ref=None, timeout=None, priority=0, labels=None, id=None, max_attempts=None, retention=None, cancel_on_exit=False)")]
    #[allow(clippy::too_many_arguments)]
    fn stream(
        &self,
        input: Option<Bound<'_, PyAny>>,
        input_ref: Option<Text>,
        timeout: Option<Secs>,
        priority: Int,
        labels: Option<BTreeMap<Text, Text>>,
        id: Option<Text>,
        max_attempts: Option<Int>,
        retention: Option<Secs>,
        cancel_on_exit: bool,
    ) -> PyResult<Stream> {
        let (request, id) = options(
            input,
            input_ref,
            timeout,
            priority,
            labels,
            id,
            max_attempts,
            retention,
            cancel_on_exit,
        )?;
        Ok(Stream::submit(self.inner.clone(), request, id))
    }

    /// Submits a task and returns at once (a dict with its `id`).
    #[pyo3(signature = (input=None, *, input_ref=None, timeout=None, priority=Int::of(0), labels=None, id=None, max_attempts=None, retention=None),
        text_signature = "($self, input=None, *, input_ref=None, timeout=None, priority=0, labels=None, id=None, max_attempts=None, retention=None)")]
    #[allow(clippy::too_many_arguments)]
    fn submit<'py>(
        &self,
        input: Option<Bound<'py, PyAny>>,
        input_ref: Option<Text>,
        timeout: Option<Secs>,
        priority: Int,
        labels: Option<BTreeMap<Text, Text>>,
        id: Option<Text>,
        max_attempts: Option<Int>,
        retention: Option<Secs>,
    ) -> PyResult<Call> {
        let (request, _) = options(
            input,
            input_ref,
            timeout,
            priority,
            labels,
            id,
            max_attempts,
            retention,
            false,
        )?;
        awaitable(ops::submit(self.inner.clone(), request))
    }

    /// Waits for the result of a task submitted earlier.
    #[pyo3(signature = (id, *, timeout=None))]
    fn wait(&self, id: Text, timeout: Option<Secs>) -> PyResult<Call> {
        awaitable(ops::wait(self.inner.clone(), id.0, max_wait(timeout)?))
    }

    /// Everything stored about a task (a dict).
    fn status(&self, id: Text) -> PyResult<Call> {
        awaitable(ops::status(self.inner.clone(), id.0))
    }

    /// Streams a task submitted earlier, from chunk `from_` of its current
    /// attempt, or of `attempt` (resuming: if that attempt was abandoned,
    /// a `Restarted` comes first, then the next attempt from chunk 0).
    #[pyo3(signature = (id, *, from_=Int::of(0), attempt=None),
        text_signature = "($self, id, *, from_=0, attempt=None)")]
    fn follow(&self, id: Text, from_: Int, attempt: Option<Int>) -> PyResult<Stream> {
        let (from, attempt) = follow_position(&from_, attempt.as_ref())?;
        Ok(Stream::follow(self.inner.clone(), id.0, from, attempt))
    }

    /// Cancels a task; returns the state it was in.
    #[pyo3(signature = (id, reason=Text("cancelled by client".to_string())),
        text_signature = "($self, id, reason='cancelled by client')")]
    fn cancel(&self, id: Text, reason: Text) -> PyResult<Call> {
        awaitable(ops::cancel(self.inner.clone(), id.0, reason.0))
    }

    /// Makes this queue a stream queue (see `Queue.create_stream`).
    #[pyo3(signature = (bands=Int::of(1), max_depth=Int::of(0)),
        text_signature = "($self, bands=1, max_depth=0)")]
    fn create_stream(&self, bands: Int, max_depth: Int) -> PyResult<Call> {
        let (bands, max_depth) = stream_shape(&bands, &max_depth)?;
        awaitable(ops::create_stream(self.inner.clone(), bands, max_depth))
    }

    fn __repr__(&self) -> String {
        format!("rtq.aio.AsyncQueue({:?})", self.inner.name())
    }
}
