//! The one tokio runtime behind every Python call, and the two ways a
//! Python caller waits on it: an asyncio awaitable, or a blocking call that
//! releases the GIL and still answers Ctrl-C.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use pyo3::exceptions::{PyRuntimeError, PyStopIteration};
use pyo3::prelude::*;
use pyo3::IntoPyObjectExt;
use tokio::sync::oneshot;

/// How often a blocking wait wakes to let Python deliver signals (Ctrl-C).
const SIGNAL_CHECK: Duration = Duration::from_millis(100);

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// The shared multi-threaded runtime (started on first use).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("rtq-runtime")
            .build()
            .expect("cannot start the tokio runtime")
    })
}

/// Set in a child forked after the runtime started: the child inherited
/// the runtime without its threads, and its epoll instance is shared with
/// the parent (a child registering sockets on it hangs, and can crash the
/// parent). No rtq call may touch it there.
static FORKED: AtomicBool = AtomicBool::new(false);

const FORKED_MESSAGE: &str =
    "rtq was started in the parent process; a forked child cannot use it: \
connect in the child with multiprocessing's 'spawn' or 'forkserver' start method, \
or connect only after forking";

/// Called in the child after `fork()` (`os.register_at_fork`, registered
/// by `rtq/__init__.py`). A process that never used rtq before forking
/// keeps working in the child.
#[pyfunction]
pub fn _after_fork_in_child() {
    if RUNTIME.get().is_some() {
        FORKED.store(true, Ordering::SeqCst);
    }
}

/// `RtqError` in a forked child that inherited a started runtime.
///
/// # Errors
/// As above.
pub fn usable() -> PyResult<()> {
    if FORKED.load(Ordering::SeqCst) {
        return Err(Python::attach(|py| {
            crate::errors::exception(py, "RtqError", FORKED_MESSAGE, &[])
        }));
    }
    Ok(())
}

/// Drops `value` inside the runtime's context (its clean-up spawns on
/// the runtime); in a forked child it is leaked instead, since dropping
/// sockets would deregister them from the epoll shared with the parent.
pub fn drop_in_runtime<T>(value: T) {
    if FORKED.load(Ordering::SeqCst) {
        std::mem::forget(value);
    } else {
        in_runtime(|| drop(value));
    }
}

/// Set once the interpreter is exiting: no runtime thread may enter
/// Python from then on (a thread that waits for the GIL while the
/// interpreter finalizes is killed by Python, which aborts the process).
static EXITING: AtomicBool = AtomicBool::new(false);
/// Runtime threads inside [`attach`] right now.
static ATTACHED: AtomicUsize = AtomicUsize::new(0);

/// How long [`shutdown`] waits for runtime threads to leave Python.
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// Enters Python from a runtime thread, unless the interpreter is exiting.
///
/// # Errors
/// `RuntimeError` once the interpreter exits, or `f`'s error.
pub fn attach<R>(f: impl FnOnce(Python<'_>) -> PyResult<R>) -> PyResult<R> {
    ATTACHED.fetch_add(1, Ordering::SeqCst);
    let result = if EXITING.load(Ordering::SeqCst) {
        Err(PyRuntimeError::new_err("the Python interpreter is exiting"))
    } else {
        Python::attach(f)
    };
    ATTACHED.fetch_sub(1, Ordering::SeqCst);
    result
}

/// Called at interpreter exit (`atexit`, registered by `rtq/__init__.py`):
/// stops runtime threads from entering Python and lets those inside
/// leave, with the GIL released, before finalization starts.
#[pyfunction]
pub fn _shutdown(py: Python<'_>) {
    EXITING.store(true, Ordering::SeqCst);
    py.detach(|| {
        let start = std::time::Instant::now();
        while ATTACHED.load(Ordering::SeqCst) > 0 && start.elapsed() < EXIT_WAIT {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
}

/// Runs `f` inside the runtime's context: needed whenever a core object
/// that spawns clean-up work on drop (a stream, a wait with
/// `cancel_on_drop`) is created or dropped from a Python thread.
pub fn in_runtime<T>(f: impl FnOnce() -> T) -> T {
    let _guard = runtime().enter();
    f()
}

/// A Rust future not started yet, boxed for [`Call`].
type BoxFuture = Pin<Box<dyn Future<Output = PyResult<Py<PyAny>>> + Send>>;

/// Turns a future into a Python coroutine ([`Call`]). Nothing runs until
/// it is awaited (or wrapped in a task); cancelling the asyncio task drops
/// the future, exactly as dropping it in Rust would.
pub fn awaitable<F, T>(fut: F) -> PyResult<Call>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    let boxed: BoxFuture = Box::pin(async move {
        let value = fut.await?;
        attach(|py| value.into_py_any(py))
    });
    Ok(Call {
        state: Mutex::new(CallState::NotStarted(boxed)),
    })
}

enum CallState {
    NotStarted(BoxFuture),
    /// Running on the runtime: the asyncio future and its `__await__`
    /// iterator, which this coroutine delegates to.
    Started {
        future: Py<PyAny>,
        iter: Py<PyAny>,
    },
    /// Already finished when created (an item that was ready at once).
    Ready(PyResult<Py<PyAny>>),
    Closed,
}

/// The coroutine every asyncio method returns: `await` it, or pass it to
/// `asyncio.create_task` / `asyncio.run` like any coroutine. On its first
/// step it starts the Rust future on the runtime and from then on
/// delegates to the asyncio future that receives its outcome.
#[pyclass(frozen, module = "rtq._native")]
pub struct Call {
    state: Mutex<CallState>,
}

impl Call {
    /// A coroutine that finishes with `result` on its first step.
    pub fn ready(result: PyResult<Py<PyAny>>) -> Self {
        Self {
            state: Mutex::new(CallState::Ready(result)),
        }
    }

    /// The asyncio future's iterator, starting the Rust future on the
    /// first step. The state lock is never held while Python code runs.
    fn iter(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let poisoned = || PyRuntimeError::new_err("coroutine state poisoned");
        let taken = {
            let mut state = self.state.lock().map_err(|_| poisoned())?;
            match &*state {
                CallState::Started { iter, .. } => return Ok(Some(iter.clone_ref(py))),
                CallState::Closed => return Ok(None),
                CallState::NotStarted(_) | CallState::Ready(_) => {
                    std::mem::replace(&mut *state, CallState::Closed)
                }
            }
        };
        let fut = match taken {
            CallState::NotStarted(fut) => fut,
            // Finishes on its first step, without the runtime.
            CallState::Ready(Ok(value)) => return Err(PyStopIteration::new_err((value,))),
            CallState::Ready(Err(err)) => return Err(err),
            _ => return Ok(None),
        };
        let future = start(py, fut)?;
        let iter = future.call_method0("__await__")?.unbind();
        *self.state.lock().map_err(|_| poisoned())? = CallState::Started {
            future: future.unbind(),
            iter: iter.clone_ref(py),
        };
        Ok(Some(iter))
    }
}

#[pymethods]
impl Call {
    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.send(py, py.None())
    }

    /// Steps the coroutine (the generator protocol). Once a step ends it
    /// (its result as `StopIteration`, or its exception), the coroutine
    /// is closed: awaiting it again raises `RuntimeError`, as for any
    /// coroutine (the asyncio future's iterator, stepped again, would
    /// raise `SystemError`).
    fn send(&self, py: Python<'_>, value: Py<PyAny>) -> PyResult<Py<PyAny>> {
        match self.iter(py)? {
            Some(iter) => iter
                .call_method1(py, "send", (value,))
                .inspect_err(|_| self.close(py)),
            None => Err(reused()),
        }
    }

    /// Raises an exception inside the coroutine (how asyncio cancels).
    #[pyo3(signature = (typ, val=None, tb=None))]
    fn throw(
        &self,
        py: Python<'_>,
        typ: Py<PyAny>,
        val: Option<Py<PyAny>>,
        tb: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let started = match self.state.lock() {
            Ok(s) => matches!(*s, CallState::Started { .. }),
            Err(_) => false,
        };
        if started {
            if let Some(iter) = self.iter(py)? {
                // Raised back out: the coroutine ended (see `send`).
                return iter
                    .call_method1(py, "throw", (typ, val, tb))
                    .inspect_err(|_| self.close(py));
            }
        }
        self.close(py);
        let typ = typ.into_bound(py);
        let exc = if typ.is_instance_of::<pyo3::exceptions::PyBaseException>() {
            typ
        } else {
            match val {
                Some(v)
                    if v.bind(py)
                        .is_instance_of::<pyo3::exceptions::PyBaseException>() =>
                {
                    v.into_bound(py)
                }
                Some(v) => typ.call1((v,))?,
                None => typ.call0()?,
            }
        };
        Err(PyErr::from_value(exc))
    }

    /// Closes the coroutine: drops the Rust future (cancels it if running).
    fn close(&self, py: Python<'_>) {
        let old = match self.state.lock() {
            Ok(mut s) => std::mem::replace(&mut *s, CallState::Closed),
            Err(_) => return,
        };
        match old {
            CallState::Started { future, iter } => {
                let _ = future.call_method0(py, "cancel");
                let _ = iter.call_method0(py, "close");
            }
            other => drop_in_runtime(other),
        }
    }
}

/// What Python raises when a finished coroutine is awaited again.
fn reused() -> PyErr {
    PyRuntimeError::new_err("cannot reuse already awaited coroutine")
}

/// Starts `fut` on the runtime and returns the asyncio future of the
/// running loop that receives its outcome. Cancelling that future (or
/// dropping it unawaited) drops `fut`.
fn start(py: Python<'_>, fut: BoxFuture) -> PyResult<Bound<'_, PyAny>> {
    if let Err(e) = usable() {
        std::mem::forget(fut); // may hold inherited sockets
        return Err(e);
    }
    let event_loop = py.import("asyncio")?.call_method0("get_running_loop")?;
    let py_fut = event_loop.call_method0("create_future")?;
    let (done_tx, done_rx) = oneshot::channel::<()>();
    py_fut.call_method1(
        "add_done_callback",
        (OnDone {
            tx: Mutex::new(Some(done_tx)),
        },),
    )?;
    let event_loop = event_loop.unbind();
    let target = py_fut.clone().unbind();
    runtime().spawn(async move {
        let result = tokio::select! {
            result = fut => result,
            // Cancelled, or dropped unawaited: drop the Rust future.
            _ = done_rx => return,
        };
        // Entering Python may wait for the GIL: not on a runtime worker.
        tokio::task::spawn_blocking(move || {
            let _ = attach(|py| {
                let deliver = Deliver {
                    target,
                    result: Mutex::new(Some(result)),
                };
                // Fails only if the loop was closed meanwhile: nobody waits.
                event_loop.call_method1(py, "call_soon_threadsafe", (deliver,))?;
                Ok(())
            });
        });
    });
    Ok(py_fut)
}

/// Sets an asyncio future's outcome, on its loop's thread.
#[pyclass(frozen, module = "rtq._native")]
struct Deliver {
    target: Py<PyAny>,
    result: Mutex<Option<PyResult<Py<PyAny>>>>,
}

#[pymethods]
impl Deliver {
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let target = self.target.bind(py);
        let Some(result) = self.result.lock().ok().and_then(|mut r| r.take()) else {
            return Ok(());
        };
        if target.call_method0("done")?.is_truthy()? {
            return Ok(()); // cancelled meanwhile
        }
        match result {
            Ok(value) => target.call_method1("set_result", (value,))?,
            Err(err) => target.call_method1("set_exception", (err.into_value(py),))?,
        };
        Ok(())
    }
}

/// Tells the Rust side that its asyncio future is done (or cancelled).
#[pyclass(frozen, module = "rtq._native")]
struct OnDone {
    tx: Mutex<Option<oneshot::Sender<()>>>,
}

#[pymethods]
impl OnDone {
    fn __call__(&self, _future: Bound<'_, PyAny>) {
        if let Some(tx) = self.tx.lock().ok().and_then(|mut t| t.take()) {
            let _ = tx.send(());
        }
    }
}

/// Runs a future to completion from a blocking caller: the GIL is
/// released while it runs, and every [`SIGNAL_CHECK`] the thread checks
/// for Python signals, so Ctrl-C raises `KeyboardInterrupt` (dropping the
/// future, as in Rust).
///
/// The future is dropped inside the runtime's context on every path: an
/// interrupted call drops it unfinished, and its drop guards (core's
/// cancel-on-exit, the reply reader's unwatch) spawn their cleanup on the
/// current runtime; outside it they found none and silently skipped it.
pub fn block_on<F, T>(py: Python<'_>, fut: F) -> PyResult<T>
where
    F: Future<Output = PyResult<T>> + Send,
    T: Send,
{
    if let Err(e) = usable() {
        std::mem::forget(fut); // may hold inherited sockets
        return Err(e);
    }
    // Declared before `fut`, so dropped after it.
    let _context = runtime().enter();
    let mut fut = std::pin::pin!(fut);
    loop {
        let step = py.detach(|| {
            runtime().block_on(async { tokio::time::timeout(SIGNAL_CHECK, fut.as_mut()).await })
        });
        match step {
            Ok(done) => return done,
            Err(_elapsed) => py.check_signals()?,
        }
    }
}
