//! The one tokio runtime behind every Python call, and the two ways a
//! Python caller waits on it: an asyncio awaitable, or a blocking call that
//! releases the GIL and still answers Ctrl-C.

use std::future::Future;
use std::time::Duration;

use pyo3::prelude::*;

/// How often a blocking wait wakes to let Python deliver signals (Ctrl-C).
const SIGNAL_CHECK: Duration = Duration::from_millis(100);

/// The shared multi-threaded runtime (started on first use).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    pyo3_async_runtimes::tokio::get_runtime()
}

/// Runs `f` inside the runtime's context: needed whenever a core object
/// that spawns clean-up work on drop (a stream, a wait with
/// `cancel_on_drop`) is created or dropped from a Python thread.
pub fn in_runtime<T>(f: impl FnOnce() -> T) -> T {
    let _guard = runtime().enter();
    f()
}

/// Turns a future into an asyncio awaitable. Cancelling the asyncio task
/// drops the future, exactly as dropping it in Rust would.
pub fn awaitable<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    pyo3_async_runtimes::tokio::future_into_py(py, fut)
}

/// Runs a future to completion from a blocking caller: the GIL is
/// released while it runs, and every [`SIGNAL_CHECK`] the thread checks
/// for Python signals, so Ctrl-C raises `KeyboardInterrupt` (dropping the
/// future, as in Rust).
pub fn block_on<F, T>(py: Python<'_>, fut: F) -> PyResult<T>
where
    F: Future<Output = PyResult<T>> + Send,
    T: Send,
{
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
