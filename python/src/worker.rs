//! The worker runtime with a Python handler: [`Worker`] runs
//! `rtq_core::Worker`; each task calls the handler (an `async def` taking a
//! [`Task`]; `rtq.worker` adapts generators and sync functions to that) on
//! the asyncio loop that called `run`. Cancellation reaches the handler
//! twice: its asyncio task is cancelled (`CancelledError` at its next
//! await) and `task.send` raises `rtq.Stopped`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};
use rtq_core::protocol::MAX_SLOTS;
use rtq_core::{
    async_trait, ForceStop, Handler, HandlerError, StopReason, Stopped, TaskContext, WorkerConfig,
    WorkerStatus,
};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::args::{self, text, Int, Secs, Text};
use crate::client::checked_url;
use crate::errors::{exception, to_py_err};
use crate::json::{to_json, to_py};
use crate::request::seconds;
use crate::runtime::{attach, awaitable, Call};

/// What one handler call ends with.
type Outcome = Result<Value, HandlerError>;

/// A task handed to a Python handler.
#[pyclass(frozen, module = "rtq._native")]
pub struct Task {
    ctx: Arc<TaskContext>,
}

fn stop_text(reason: &StopReason) -> String {
    match reason {
        StopReason::Cancelled { .. } => "cancelled",
        StopReason::Deadline => "deadline",
        StopReason::Requeued => "requeued",
        StopReason::Reassigned => "reassigned",
        StopReason::Gone => "gone",
        StopReason::Shutdown => "shutdown",
        StopReason::OutputTooLarge { .. } => "output_too_large",
        StopReason::WriteRefused { .. } => "write_refused",
        _ => "stopped",
    }
    .to_string()
}

#[pymethods]
impl Task {
    /// Task id.
    #[getter]
    fn id(&self) -> &str {
        self.ctx.id()
    }
    /// Attempt number (1 for the first hand-out).
    #[getter]
    fn attempt(&self) -> u64 {
        self.ctx.attempt()
    }
    /// Inline JSON input (None for a task sent by reference).
    #[getter]
    fn input(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match self.ctx.input() {
            Some(v) => to_py(py, v),
            None => Ok(py.None()),
        }
    }
    /// Reference to input stored elsewhere, if any.
    #[getter]
    fn input_ref(&self) -> Option<&str> {
        self.ctx.input_ref()
    }
    /// The task's labels.
    #[getter]
    fn labels(&self) -> BTreeMap<String, String> {
        self.ctx.labels().clone()
    }
    /// Seconds left before the task's deadline (None: no deadline).
    #[getter]
    fn time_left(&self) -> Option<f64> {
        self.ctx
            .deadline()
            .map(|d| d.saturating_duration_since(Instant::now()).as_secs_f64())
    }
    /// True once the task must stop (cancelled, deadline, reassigned,
    /// worker shutting down): sync handlers should poll it.
    #[getter]
    fn cancelled(&self) -> bool {
        self.ctx.is_cancelled()
    }
    /// Why the task must stop ("cancelled", "deadline", "requeued",
    /// "reassigned", "gone", "shutdown", "output_too_large",
    /// "write_refused"), or None.
    #[getter]
    fn stop_reason(&self) -> Option<String> {
        self.ctx.stop_reason().as_ref().map(stop_text)
    }
    /// Sends a chunk of output (str or bytes). Waits only while this
    /// task's output not yet in Redis is over its budget (4 MiB: Redis is
    /// slow or frozen), with the GIL released; on the event loop prefer
    /// `await task.asend(chunk)`, which waits without blocking the loop.
    /// Raises `rtq.Stopped` once the task must stop.
    fn send(&self, py: Python<'_>, chunk: Bound<'_, PyAny>) -> PyResult<()> {
        let data = chunk_bytes(&chunk)?;
        let ctx = Arc::clone(&self.ctx);
        // Never with the GIL held: the runtime threads that free the
        // budget (the chunk writer) may be waiting for it.
        let sent = py.detach(move || futures::executor::block_on(ctx.send(data)));
        sent.map_err(|Stopped { reason }| stopped_error(py, self.ctx.id(), &reason))
    }

    /// Sends a chunk of output (str or bytes); an awaitable that waits,
    /// without blocking the event loop, while this task's output not yet
    /// in Redis is over its budget. Raises `rtq.Stopped` once the task
    /// must stop.
    fn asend(&self, chunk: Bound<'_, PyAny>) -> PyResult<Call> {
        let data = chunk_bytes(&chunk)?;
        let ctx = Arc::clone(&self.ctx);
        awaitable(async move {
            match ctx.send(data).await {
                Ok(()) => Ok(()),
                Err(Stopped { reason }) => {
                    Err(attach(|py| Ok(stopped_error(py, ctx.id(), &reason)))?)
                }
            }
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "rtq.Task(id={:?}, attempt={})",
            self.ctx.id(),
            self.ctx.attempt()
        )
    }
}

/// Receives the handler's outcome from its `concurrent.futures.Future`.
#[pyclass(frozen, module = "rtq._native")]
struct DoneCallback {
    tx: Mutex<Option<oneshot::Sender<Outcome>>>,
}

fn describe(py: Python<'_>, exc: &Bound<'_, PyAny>) -> String {
    let name = exc
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Exception".into());
    let text = exc.str().map(|s| s.to_string()).unwrap_or_default();
    let _ = py;
    if text.is_empty() {
        name
    } else {
        format!("{name}: {text}")
    }
}

fn outcome_of(py: Python<'_>, fut: &Bound<'_, PyAny>) -> Outcome {
    let cancelled = fut
        .call_method0("cancelled")
        .and_then(|c| c.is_truthy())
        .unwrap_or(false);
    if cancelled {
        return Err(HandlerError::retryable(
            "the handler's asyncio task was cancelled",
        ));
    }
    let exc = match fut.call_method0("exception") {
        Ok(e) => e,
        Err(e) => return Err(HandlerError::fatal(describe(py, e.value(py).as_any()))),
    };
    if !exc.is_none() {
        return Err(handler_error(py, &exc));
    }
    match fut.call_method0("result") {
        Ok(result) => to_json(&result).map_err(|e| {
            HandlerError::fatal(format!("the handler's result is not JSON: {}", e.value(py)))
        }),
        Err(e) => Err(HandlerError::fatal(describe(py, e.value(py).as_any()))),
    }
}

/// Whether `exc` is an instance of `rtq._errors.<class>`.
fn is_a(py: Python<'_>, exc: &Bound<'_, PyAny>, class: &str) -> bool {
    py.import("rtq._errors")
        .and_then(|m| m.getattr(class))
        .and_then(|cls| exc.is_instance(&cls))
        .unwrap_or(false)
}

/// The core's error for an exception a handler raised: `rtq.NotStarted`
/// gives the task back unstarted (its reason as the message),
/// `rtq.Retryable` fails the attempt as retryable, anything else fails
/// the task.
fn handler_error(py: Python<'_>, exc: &Bound<'_, PyAny>) -> HandlerError {
    if is_a(py, exc, "NotStarted") {
        let reason = exc.str().map(|s| s.to_string()).unwrap_or_default();
        return HandlerError::not_started(if reason.is_empty() {
            describe(py, exc)
        } else {
            reason
        });
    }
    let message = describe(py, exc);
    if is_a(py, exc, "Retryable") {
        HandlerError::retryable(message)
    } else {
        HandlerError::fatal(message)
    }
}

#[pymethods]
impl DoneCallback {
    fn __call__(&self, py: Python<'_>, fut: Bound<'_, PyAny>) {
        let outcome = outcome_of(py, &fut);
        if let Some(tx) = self.tx.lock().ok().and_then(|mut t| t.take()) {
            let _ = tx.send(outcome);
        }
    }
}

/// Cancels the handler's asyncio task if the core drops the call before
/// the handler finished (it outlived `cancel_grace`).
struct CancelOnDrop(Option<Py<PyAny>>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(fut) = self.0.take() {
            let _ = attach(|py| fut.call_method0(py, "cancel"));
        }
    }
}

/// The core [`Handler`] that calls a Python coroutine function.
struct PyHandler {
    func: Py<PyAny>,
    event_loop: Py<PyAny>,
    /// How long a cancelled handler may take to unwind.
    unwind: Duration,
}

impl PyHandler {
    fn start(&self, ctx: &Arc<TaskContext>, tx: oneshot::Sender<Outcome>) -> PyResult<Py<PyAny>> {
        attach(|py| {
            let task = Py::new(
                py,
                Task {
                    ctx: Arc::clone(ctx),
                },
            )?;
            let coro = self.func.call1(py, (task,))?;
            let fut = py
                .import("asyncio")?
                .call_method1("run_coroutine_threadsafe", (coro, self.event_loop.bind(py)))?;
            let callback = DoneCallback {
                tx: Mutex::new(Some(tx)),
            };
            fut.call_method1("add_done_callback", (callback,))?;
            Ok(fut.unbind())
        })
    }
}

#[async_trait]
impl Handler for PyHandler {
    async fn handle(&self, task: TaskContext) -> Result<Value, HandlerError> {
        let ctx = Arc::new(task);
        let (tx, mut rx) = oneshot::channel();
        let fut = self.start(&ctx, tx).map_err(|e| {
            match attach(|py| Ok(describe(py, e.value(py).as_any()))) {
                Ok(reason) => {
                    HandlerError::fatal(format!("the handler could not be started: {reason}"))
                }
                // Exiting: another worker may run it.
                Err(_) => HandlerError::retryable("the worker's Python interpreter is exiting"),
            }
        })?;
        let mut guard = CancelOnDrop(Some(fut));
        let outcome = tokio::select! {
            outcome = &mut rx => outcome,
            _ = ctx.cancelled() => {
                // Cancel the asyncio task and let it unwind (finally blocks,
                // closing an upstream request) before reporting the stop.
                if let Some(f) = guard.0.take() {
                    let _ = attach(|py| f.call_method0(py, "cancel"));
                }
                let _ = tokio::time::timeout(self.unwind, &mut rx).await;
                let reason = ctx.stop_reason().unwrap_or(StopReason::Shutdown);
                return Err(Stopped { reason }.into());
            }
        };
        guard.0 = None;
        outcome.unwrap_or_else(|_| Err(HandlerError::fatal("the handler's result was lost")))
    }
}

/// A worker serving one queue with a Python handler.
#[pyclass(frozen, module = "rtq._native")]
pub struct Worker {
    inner: Mutex<Option<rtq_core::Worker>>,
    id: String,
    status: Arc<WorkerStatus>,
    /// The graceful stop: `run`'s shutdown future.
    stop: CancellationToken,
    /// The core's forced stop (`stop(force=True)`).
    force: ForceStop,
    cancel_grace: Duration,
}

/// Settings from the keywords of `connect_worker`.
#[allow(clippy::too_many_arguments)]
fn worker_config(
    queue: Text,
    slots: Int,
    labels: Option<BTreeMap<Text, Text>>,
    lease: Option<Secs>,
    worker_id: Option<Text>,
    grace: Option<Secs>,
    cancel_grace: Option<Secs>,
    handler_name: Text,
) -> PyResult<WorkerConfig> {
    let mut c = WorkerConfig::new(queue.0).handler_name(handler_name.0);
    // Set directly (the builder clamps 0 to 1).
    c.slots = slots.within_usize("slots", 1, MAX_SLOTS)?;
    for (k, v) in args::labels(labels).unwrap_or_default() {
        c = c.label(k, v);
    }
    if let Some(l) = lease {
        c = c.lease(seconds("lease", l.0)?);
    }
    if let Some(id) = worker_id {
        c = c.worker_id(id.0);
    }
    if let Some(g) = grace {
        c = c.grace(seconds("grace", g.0)?);
    }
    if let Some(g) = cancel_grace {
        c = c.cancel_grace(seconds("cancel_grace", g.0)?);
    }
    Ok(c)
}

/// Connects a worker (asyncio): registers nothing until `run`.
///
/// Raises `rtq.ConnectionError`, `rtq.InvalidInput` (a malformed URL,
/// settings out of range, a bad queue name or worker id; at once, before
/// anything is awaited), `rtq.UnsuitableServer`.
#[pyfunction]
#[pyo3(signature = (url, queue, *, slots=Int::of(1), labels=None, lease=None, worker_id=None, grace=None, cancel_grace=None, handler_name=Text("python".to_string())),
    text_signature = "(url, queue, *, slots=1, labels=None, lease=None, worker_id=None, grace=None, cancel_grace=None, handler_name='python')")]
#[allow(clippy::too_many_arguments)]
pub fn connect_worker(
    url: Text,
    queue: Text,
    slots: Int,
    labels: Option<BTreeMap<Text, Text>>,
    lease: Option<Secs>,
    worker_id: Option<Text>,
    grace: Option<Secs>,
    cancel_grace: Option<Secs>,
    handler_name: Text,
) -> PyResult<Call> {
    let url = checked_url(url)?;
    let config = worker_config(
        queue,
        slots,
        labels,
        lease,
        worker_id,
        grace,
        cancel_grace,
        handler_name,
    )?;
    let cancel_grace = config.cancel_grace;
    awaitable(async move {
        let w = rtq_core::Worker::connect(&url, config)
            .await
            .map_err(to_py_err)?;
        Ok(Worker {
            id: w.id().to_string(),
            status: w.status(),
            force: w.force_stop(),
            inner: Mutex::new(Some(w)),
            stop: CancellationToken::new(),
            cancel_grace,
        })
    })
}

#[pymethods]
impl Worker {
    /// This worker's id.
    #[getter]
    fn id(&self) -> &str {
        &self.id
    }

    /// Runs until `stop()` is called, then drains: takes no new tasks, lets
    /// running ones finish within the grace period, hands the rest back.
    /// `handler(task)` must return a coroutine; it runs on the calling
    /// asyncio loop. `stop(force=True)`, before or during the drain, stops
    /// at once: every running task is handed back (waiting for Redis at
    /// most 2 s) and `run` returns. Cancelling the awaiting asyncio task
    /// also stops at once, but hands the tasks back best effort, without
    /// waiting for Redis.
    fn run<'py>(&self, py: Python<'py>, handler: Bound<'py, PyAny>) -> PyResult<Call> {
        if !handler.is_callable() {
            return Err(PyTypeError::new_err("handler must be callable"));
        }
        let worker = self
            .inner
            .lock()
            .ok()
            .and_then(|mut w| w.take())
            .ok_or_else(|| PyRuntimeError::new_err("this worker has already run"))?;
        let event_loop = py.import("asyncio")?.call_method0("get_running_loop")?;
        let handler = Arc::new(PyHandler {
            func: handler.unbind(),
            event_loop: event_loop.unbind(),
            unwind: self.cancel_grace,
        });
        let stop = self.stop.clone();
        awaitable(async move {
            worker
                .run(handler, stop.cancelled_owned())
                .await
                .map_err(to_py_err)
        })
    }

    /// Asks the worker to stop (safe from a signal handler or any
    /// thread). By default gracefully: the drain of `run`. With
    /// `force=True`, at once (a second SIGTERM): every running task is
    /// stopped (its handler gets at most `cancel_grace`, capped at 1 s, to
    /// return) and handed back to the queue, a started one counted as
    /// interrupted (it uses an attempt), and `run` returns once Redis
    /// took them back (waiting at most 2 s; else the lease lapses).
    #[pyo3(signature = (*, force=false))]
    fn stop(&self, force: bool) {
        self.stop.cancel();
        if force {
            self.force.force();
        }
    }

    /// Live counters: busy, done, failed, stopped, redis_ok, accepting,
    /// draining, last_error.
    fn status(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let s = &self.status;
        let d = PyDict::new(py);
        d.set_item("busy", s.busy.load(Ordering::Relaxed))?;
        d.set_item("done", s.done.load(Ordering::Relaxed))?;
        d.set_item("failed", s.failed.load(Ordering::Relaxed))?;
        d.set_item("stopped", s.stopped.load(Ordering::Relaxed))?;
        d.set_item("redis_ok", s.redis_ok.load(Ordering::Relaxed))?;
        d.set_item("accepting", s.accepting.load(Ordering::Relaxed))?;
        d.set_item("draining", s.draining.load(Ordering::Relaxed))?;
        d.set_item("last_error", s.last_error())?;
        Ok(d.into_any().unbind())
    }

    fn __repr__(&self) -> String {
        format!("rtq.Worker(id={:?})", self.id)
    }
}

/// A chunk's bytes: str (UTF-8) or bytes.
fn chunk_bytes(chunk: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    if let Ok(s) = chunk.cast::<PyString>() {
        Ok(text(s)?.into_bytes())
    } else if let Ok(b) = chunk.cast::<PyBytes>() {
        Ok(b.as_bytes().to_vec())
    } else {
        Err(PyTypeError::new_err(
            "a chunk is str or bytes (encode other values first, e.g. json.dumps)",
        ))
    }
}

/// `rtq.Stopped` for task `id`, with its reason.
fn stopped_error(py: Python<'_>, id: &str, reason: &StopReason) -> PyErr {
    exception(
        py,
        "Stopped",
        &format!("task {id} must stop: {reason}"),
        &[(
            "reason",
            PyString::new(py, &stop_text(reason)).into_any().unbind(),
        )],
    )
}
