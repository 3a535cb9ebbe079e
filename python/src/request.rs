//! Builds a [`TaskRequest`] from the keyword arguments of `run`, `stream`
//! and `submit`, and the dicts returned for submits and task states.

use std::collections::BTreeMap;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyDict;
use rtq_core::{Outcome, Submitted, TaskInfo, TaskRequest};

use crate::errors::invalid;
use crate::json::{to_json, to_py};

/// The options every submitting call takes (the Python keywords).
pub struct Options<'py> {
    /// Inline JSON input.
    pub input: Option<Bound<'py, PyAny>>,
    /// Reference to input stored elsewhere (instead of `input`).
    pub input_ref: Option<String>,
    /// Deadline in seconds, on the Redis clock.
    pub timeout: Option<f64>,
    /// Priority in [-1000, 1000].
    pub priority: i16,
    /// Labels (str -> str).
    pub labels: Option<BTreeMap<String, String>>,
    /// Idempotency key.
    pub id: Option<String>,
    /// Attempts allowed.
    pub max_attempts: Option<u32>,
    /// Retention of the result in seconds.
    pub retention: Option<f64>,
    /// Cancel the task when the caller goes away.
    pub cancel_on_exit: bool,
}

/// A positive, finite number of seconds as a [`Duration`].
///
/// # Errors
/// `rtq.InvalidInput` naming `what`.
pub fn seconds(what: &str, secs: f64) -> PyResult<Duration> {
    if !secs.is_finite() || secs <= 0.0 {
        return Err(invalid(format!(
            "{what} must be a positive number of seconds, got {secs}"
        )));
    }
    Duration::try_from_secs_f64(secs)
        .map_err(|_| invalid(format!("{what} of {secs} seconds is out of range")))
}

impl Options<'_> {
    /// The request, with an id fixed now (generated unless given) so the
    /// caller knows it before the submit.
    ///
    /// # Errors
    /// `rtq.InvalidInput` for input that is not JSON, both or neither of
    /// `input` and `input_ref`, or durations that are not positive.
    pub fn into_request(self) -> PyResult<(TaskRequest, String)> {
        let mut request = match (self.input, self.input_ref) {
            (Some(_), Some(_)) => {
                return Err(invalid("give either input or input_ref, not both"));
            }
            (None, Some(reference)) => TaskRequest::reference(reference),
            (Some(input), None) => TaskRequest::json(
                to_json(&input)
                    .map_err(|e| Python::attach(|py| invalid(e.value(py).to_string())))?,
            ),
            (None, None) => TaskRequest::json(serde_json::Value::Null),
        };
        let id = self
            .id
            .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
        request = request
            .id(id.clone())
            .priority(self.priority)
            .cancel_on_drop(self.cancel_on_exit);
        if let Some(t) = self.timeout {
            request = request.timeout(seconds("timeout", t)?);
        }
        if let Some(n) = self.max_attempts {
            request = request.max_attempts(n);
        }
        if let Some(r) = self.retention {
            request = request.retention(seconds("retention", r)?);
        }
        for (k, v) in self.labels.unwrap_or_default() {
            request = request.label(k, v);
        }
        Ok((request, id))
    }
}

/// A submit's answer as a dict: `id`, `state`, `worker`, `deadline_ms`,
/// `submitted_ms`.
pub fn submitted_dict(py: Python<'_>, s: &Submitted) -> PyResult<Py<PyAny>> {
    let d = PyDict::new(py);
    d.set_item("id", &s.id)?;
    d.set_item("state", s.state.as_str())?;
    d.set_item("worker", s.worker.as_deref())?;
    d.set_item("deadline_ms", s.deadline_ms)?;
    d.set_item("submitted_ms", s.submitted_ms)?;
    Ok(d.into_any().unbind())
}

/// Everything stored about a task as a dict (see `TaskInfo` in the stubs).
pub fn info_dict(py: Python<'_>, t: &TaskInfo) -> PyResult<Py<PyAny>> {
    let d = PyDict::new(py);
    d.set_item("id", &t.id)?;
    d.set_item("state", t.state.as_str())?;
    d.set_item("priority", t.priority)?;
    d.set_item("attempt", t.attempt)?;
    d.set_item("failures", t.failures)?;
    d.set_item("max_attempts", t.max_attempts)?;
    d.set_item("worker", &t.worker)?;
    d.set_item("submitted_ms", t.submitted_ms)?;
    d.set_item("deadline_ms", t.deadline_ms)?;
    d.set_item("started_ms", t.started_ms)?;
    d.set_item("first_chunk_ms", t.first_chunk_ms)?;
    d.set_item("last_chunk_ms", t.last_chunk_ms)?;
    d.set_item("finished_ms", t.finished_ms)?;
    d.set_item("chunks", t.chunks)?;
    d.set_item("bytes", t.bytes)?;
    d.set_item("retry_at_ms", t.retry_at_ms)?;
    let errors = PyDict::new(py);
    for (attempt, e) in &t.attempt_errors {
        errors.set_item(attempt, e)?;
    }
    d.set_item("attempt_errors", errors)?;
    match &t.outcome {
        None => d.set_item("outcome", py.None())?,
        Some(Outcome::Done(value)) => {
            let o = PyDict::new(py);
            o.set_item("result", to_py(py, value)?)?;
            d.set_item("outcome", o)?;
        }
        Some(Outcome::Ended {
            state,
            kind,
            message,
            worker,
        }) => {
            let o = PyDict::new(py);
            o.set_item("state", state.as_str())?;
            o.set_item("kind", kind)?;
            o.set_item("message", message)?;
            o.set_item("worker", worker)?;
            d.set_item("outcome", o)?;
        }
    }
    match &t.spec {
        Some(spec) => {
            d.set_item(
                "input",
                spec.input.as_ref().map(|v| to_py(py, v)).transpose()?,
            )?;
            d.set_item("input_ref", spec.input_ref.as_deref())?;
            d.set_item("labels", spec.labels.clone())?;
        }
        None => {
            d.set_item("input", py.None())?;
            d.set_item("input_ref", py.None())?;
            d.set_item("labels", PyDict::new(py))?;
        }
    }
    Ok(d.into_any().unbind())
}
