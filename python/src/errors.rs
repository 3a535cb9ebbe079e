//! Maps [`rtq_core::Error`] to the Python exception classes of
//! `rtq._errors`, one class per kind, with the variant's fields as
//! attributes.

use pyo3::prelude::*;
use pyo3::types::PyDict;
use rtq_core::{Error, TimeoutPhase};

/// The Python module that defines the exception classes.
const ERRORS_MODULE: &str = "rtq._errors";

/// Builds an instance of `rtq._errors.<class>` with `message` and fields.
pub fn exception(
    py: Python<'_>,
    class: &str,
    message: &str,
    fields: &[(&str, Py<PyAny>)],
) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let cls = py.import(ERRORS_MODULE)?.getattr(class)?;
        let kwargs = PyDict::new(py);
        for (name, value) in fields {
            kwargs.set_item(*name, value)?;
        }
        let value = cls.call((message,), Some(&kwargs))?;
        Ok(PyErr::from_value(value))
    };
    build().unwrap_or_else(|e| e)
}

/// Converts an rtq error into the matching Python exception.
pub fn to_py_err(err: Error) -> PyErr {
    let message = err.to_string();
    crate::runtime::attach(|py| Ok(convert(py, err)))
        .unwrap_or_else(|_| pyo3::exceptions::PyRuntimeError::new_err(message))
}

fn s(py: Python<'_>, v: &str) -> Py<PyAny> {
    v.into_pyobject(py)
        .map(|o| o.into_any().unbind())
        .unwrap_or_else(|_| py.None())
}

fn n(py: Python<'_>, v: u64) -> Py<PyAny> {
    v.into_pyobject(py)
        .map(|o| o.into_any().unbind())
        .unwrap_or_else(|_| py.None())
}

fn opt(py: Python<'_>, v: Option<&str>) -> Py<PyAny> {
    v.map_or_else(|| py.None(), |v| s(py, v))
}

fn convert(py: Python<'_>, err: Error) -> PyErr {
    let message = err.to_string();
    let m = message.as_str();
    match &err {
        Error::InvalidName { .. }
        | Error::InvalidInput(_)
        | Error::PayloadTooLarge { .. }
        | Error::InvalidUrl { .. }
        | Error::TlsSetup(_) => exception(py, "InvalidInput", m, &[]),
        Error::QueueFull {
            queue,
            depth,
            max_depth,
        } => exception(
            py,
            "QueueFull",
            m,
            &[
                ("queue", s(py, queue)),
                ("depth", n(py, *depth)),
                ("max_depth", n(py, *max_depth)),
            ],
        ),
        Error::TooManyQueues { queue, max } => exception(
            py,
            "TooManyQueues",
            m,
            &[("queue", s(py, queue)), ("max", n(py, *max as u64))],
        ),
        Error::Duplicate { id, state } => exception(
            py,
            "Duplicate",
            m,
            &[("id", s(py, id)), ("state", s(py, state.as_str()))],
        ),
        Error::NotFound { queue, id } => exception(
            py,
            "NotFound",
            m,
            &[("queue", s(py, queue)), ("id", s(py, id))],
        ),
        Error::TimedOut { id, phase } => {
            let (phase, worker) = match phase {
                TimeoutPhase::Queued => ("queued", None),
                TimeoutPhase::Running { worker } => ("running", Some(worker.as_str())),
                #[allow(unreachable_patterns)]
                _ => ("unknown", None),
            };
            exception(
                py,
                "TimedOut",
                m,
                &[
                    ("id", s(py, id)),
                    ("phase", s(py, phase)),
                    ("worker", opt(py, worker)),
                ],
            )
        }
        Error::WaitTimedOut {
            id,
            waited_ms,
            state,
            worker,
        } => exception(
            py,
            "WaitTimedOut",
            m,
            &[
                ("id", s(py, id)),
                ("waited_ms", n(py, *waited_ms)),
                ("state", s(py, state.as_str())),
                ("worker", opt(py, worker.as_deref())),
            ],
        ),
        Error::Cancelled { id, reason } => exception(
            py,
            "Cancelled",
            m,
            &[("id", s(py, id)), ("reason", s(py, reason))],
        ),
        Error::Failed { id, worker, reason } => exception(
            py,
            "Failed",
            m,
            &[
                ("id", s(py, id)),
                ("worker", s(py, worker)),
                ("reason", s(py, reason)),
            ],
        ),
        Error::WorkerLost { id, worker, reason } => exception(
            py,
            "WorkerLost",
            m,
            &[
                ("id", s(py, id)),
                ("worker", s(py, worker)),
                ("reason", s(py, reason)),
            ],
        ),
        Error::TaskLost { id, reason } => exception(
            py,
            "TaskLost",
            m,
            &[("id", s(py, id)), ("reason", s(py, reason))],
        ),
        Error::Forged { id, reason } => exception(
            py,
            "Forged",
            m,
            &[("id", s(py, id)), ("reason", s(py, reason))],
        ),
        Error::Uncertain { id, .. } => exception(py, "Uncertain", m, &[("id", s(py, id))]),
        Error::OutOfMemory(_) => exception(py, "OutOfMemory", m, &[]),
        Error::PermissionDenied(_) => exception(py, "PermissionDenied", m, &[]),
        Error::AuthenticationFailed { url, .. } => {
            exception(py, "AuthenticationFailed", m, &[("url", s(py, url))])
        }
        Error::Tls { url, .. } => exception(py, "TlsError", m, &[("url", s(py, url))]),
        Error::Connection { url, .. } => {
            exception(py, "ConnectionError", m, &[("url", s(py, url))])
        }
        Error::Disconnected { url, id, .. } => exception(
            py,
            "ConnectionError",
            m,
            &[("url", s(py, url)), ("id", s(py, id))],
        ),
        Error::Closed { id } => exception(py, "ConnectionError", m, &[("id", s(py, id))]),
        Error::UnsuitableServer(_) => exception(py, "UnsuitableServer", m, &[]),
        Error::WorkerReplaced { worker } => {
            exception(py, "WorkerReplaced", m, &[("worker", s(py, worker))])
        }
        Error::UnknownQueue { queue } => exception(
            py,
            "NotFound",
            m,
            &[("queue", s(py, queue)), ("id", py.None())],
        ),
        _ if err.is_connection_lost() => exception(py, "ConnectionError", m, &[]),
        _ => exception(py, "ProtocolError", m, &[]),
    }
}

/// `rtq.InvalidInput` with `message`.
pub fn invalid(message: impl AsRef<str>) -> PyErr {
    Python::attach(|py| exception(py, "InvalidInput", message.as_ref(), &[]))
}
