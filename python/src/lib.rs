//! # rtq-python: the `rtq._native` extension module
//!
//! Python bindings over `rtq-core` (one protocol implementation, no
//! second copy). The pure-Python package `rtq` (python/rtq/) re-exports
//! these classes, defines the exception classes, and adapts handlers.
//!
//! # Layout
//! - `runtime`: the shared tokio runtime; asyncio awaitables and
//!   blocking waits that release the GIL and answer Ctrl-C.
//! - `args`: argument types that turn bad values into `rtq.InvalidInput`.
//! - `json`: task input and results between Python objects and JSON.
//! - `errors`: `rtq_core::Error` to the `rtq._errors` exception classes.
//! - `request`: `run`/`stream`/`submit` keywords to a `TaskRequest`; the
//!   dicts of submits and task states.
//! - `client`: `Client`/`Queue` (blocking), `AsyncClient`/`AsyncQueue`.
//! - `stream`: `Stream` (async and blocking iterator), `Chunk`,
//!   `Restarted`, `Done`.
//! - `worker`: `Worker` with a Python handler, `Task`.
//! - `admin`: `Admin`/`AsyncAdmin` reads (queues, stats, workers, tasks).

mod admin;
mod args;
mod client;
mod errors;
mod json;
mod request;
mod runtime;
mod stream;
mod worker;

use pyo3::prelude::*;

/// Logs rtq's tracing events to stderr at `level` ("info", "debug", or a
/// filter such as "rtq_core=debug"). Once per process; later calls are
/// ignored.
#[pyfunction]
#[pyo3(signature = (level=args::Text("info".to_string())),
    text_signature = "(level='info')")]
fn init_logging(level: args::Text) {
    let filter = tracing_subscriber::EnvFilter::try_new(&level.0)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Masks the password in a Redis URL (for logs and messages).
#[pyfunction]
fn redact_url(url: args::Text) -> String {
    rtq_core::redact_url(&url.0)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(client::connect, m)?)?;
    m.add_function(wrap_pyfunction!(client::connect_async, m)?)?;
    m.add_function(wrap_pyfunction!(worker::connect_worker, m)?)?;
    m.add_function(wrap_pyfunction!(init_logging, m)?)?;
    m.add_function(wrap_pyfunction!(redact_url, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::_shutdown, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::_after_fork_in_child, m)?)?;
    m.add_class::<client::Client>()?;
    m.add_class::<client::AsyncClient>()?;
    m.add_class::<client::Queue>()?;
    m.add_class::<client::AsyncQueue>()?;
    m.add_class::<stream::Stream>()?;
    m.add_class::<stream::Chunk>()?;
    m.add_class::<stream::Restarted>()?;
    m.add_class::<stream::Done>()?;
    m.add_class::<worker::Worker>()?;
    m.add_class::<worker::Task>()?;
    m.add_class::<admin::Admin>()?;
    m.add_class::<admin::AsyncAdmin>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
