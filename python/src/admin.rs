//! Admin reads for scripts, over `rtq_core::admin::Admin`: queues, a
//! queue's overview, statistics, workers, task pages. Blocking ([`Admin`])
//! and asyncio ([`AsyncAdmin`]) flavours; results are plain dicts/lists.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use rtq_core::admin::{self, QueueOverview, WorkerInfo};
use rtq_core::admin::{Percentiles, QueueStats};

use crate::args::{Int, Text};
use crate::errors::{invalid, to_py_err};
use crate::request::info_dict;
use crate::runtime::{attach, awaitable, block_on, Call};

/// The largest page of tasks one call returns.
const MAX_PAGE: usize = 10_000;
/// The most statistics buckets one call reads.
const MAX_BUCKETS: usize = 10_000;

fn overview_dict(py: Python<'_>, o: &QueueOverview) -> PyResult<Py<PyAny>> {
    let d = PyDict::new(py);
    d.set_item("name", &o.name)?;
    d.set_item("paused", o.paused)?;
    d.set_item("max_depth", o.max_depth)?;
    d.set_item("pending", o.pending)?;
    d.set_item("delayed", o.delayed)?;
    d.set_item("running", o.running)?;
    d.set_item("workers_alive", o.workers_alive)?;
    d.set_item("workers_stale", o.workers_stale)?;
    d.set_item("idle_slots", o.idle_slots)?;
    d.set_item("head_wait_ms", o.head_wait_ms)?;
    d.set_item("now_ms", o.now_ms)?;
    d.set_item("error", o.error.as_deref())?;
    Ok(d.into_any().unbind())
}

fn percentiles<'py>(py: Python<'py>, p: &Percentiles) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("p50", p.p50)?;
    d.set_item("p95", p.p95)?;
    d.set_item("p99", p.p99)?;
    d.set_item("count", p.count)?;
    Ok(d)
}

fn stats_dict(py: Python<'_>, s: &QueueStats) -> PyResult<Py<PyAny>> {
    let d = PyDict::new(py);
    d.set_item("window_secs", s.window_secs)?;
    d.set_item("wait_ms", percentiles(py, &s.wait)?)?;
    d.set_item("first_chunk_ms", percentiles(py, &s.first_chunk)?)?;
    d.set_item("total_ms", percentiles(py, &s.total)?)?;
    let totals = PyDict::new(py);
    let names: std::collections::BTreeSet<&String> =
        s.buckets.iter().flat_map(|b| b.counts.keys()).collect();
    for name in names {
        totals.set_item(name, s.sum(name))?;
    }
    let buckets = PyList::empty(py);
    for b in &s.buckets {
        let bd = PyDict::new(py);
        bd.set_item("start_ms", b.start_ms)?;
        for (name, count) in &b.counts {
            bd.set_item(name, count)?;
        }
        buckets.append(bd)?;
    }
    d.set_item("totals", totals)?;
    d.set_item("buckets", buckets)?;
    Ok(d.into_any().unbind())
}

/// One worker, at Redis time `now_ms` (`None`: not read, as no worker
/// has an error time).
fn worker_dict(py: Python<'_>, w: &WorkerInfo, now_ms: Option<i64>) -> PyResult<Py<PyAny>> {
    let d = PyDict::new(py);
    d.set_item("id", &w.id)?;
    d.set_item("lease_until_ms", w.lease_until_ms)?;
    // When its last error happened (Redis ms) and how long ago; None
    // without an error, or for a worker too old to send the time.
    d.set_item("last_error_ms", w.last_error_ms())?;
    d.set_item(
        "last_error_age_ms",
        now_ms.and_then(|now| w.last_error_age_ms(now)),
    )?;
    d.set_item("tasks", w.tasks.clone())?;
    d.set_item("labels", admin::worker_labels(w))?;
    let fields = PyDict::new(py);
    for (k, v) in &w.fields {
        fields.set_item(k, v)?;
    }
    d.set_item("fields", fields)?;
    Ok(d.into_any().unbind())
}

/// Which task list `tasks` reads.
#[derive(Clone, Copy)]
enum Kind {
    Pending,
    Running,
    Recent,
    Failed,
}

fn kind(name: &Text) -> PyResult<Kind> {
    Ok(match name.0.as_str() {
        "pending" => Kind::Pending,
        "running" => Kind::Running,
        "recent" => Kind::Recent,
        "failed" => Kind::Failed,
        other => {
            return Err(invalid(format!(
            "unknown task list {other:?}: use \"pending\", \"running\", \"recent\" or \"failed\""
        )))
        }
    })
}

/// The futures behind both flavours.
mod ops {
    use super::*;

    type Out = PyResult<Py<PyAny>>;

    pub async fn queues(a: admin::Admin) -> Out {
        let names = a.queues().await.map_err(to_py_err)?;
        attach(|py| Ok(PyList::new(py, names)?.into_any().unbind()))
    }

    pub async fn overview(a: admin::Admin, queue: String) -> Out {
        let o = a.overview(&queue).await.map_err(to_py_err)?;
        attach(|py| overview_dict(py, &o))
    }

    pub async fn stats(a: admin::Admin, queue: String, buckets: usize) -> Out {
        let s = a.stats(&queue, buckets).await.map_err(to_py_err)?;
        attach(|py| stats_dict(py, &s))
    }

    pub async fn workers(a: admin::Admin, queue: String) -> Out {
        let ws = a.workers(&queue).await.map_err(to_py_err)?;
        // Ages are on the Redis clock, read after the workers (so never
        // negative), and only when some worker has an error time: the
        // overview is the admin read that carries Redis's time.
        let now_ms = if ws.iter().any(|w| w.last_error_ms().is_some()) {
            Some(a.overview(&queue).await.map_err(to_py_err)?.now_ms)
        } else {
            None
        };
        attach(|py| {
            let list = PyList::empty(py);
            for w in &ws {
                list.append(worker_dict(py, w, now_ms)?)?;
            }
            Ok(list.into_any().unbind())
        })
    }

    pub async fn tasks(
        a: admin::Admin,
        queue: String,
        kind: Kind,
        offset: usize,
        limit: usize,
    ) -> Out {
        let infos = match kind {
            Kind::Pending => a.pending(&queue, offset, limit).await,
            Kind::Running => a.running(&queue).await,
            Kind::Recent => a.recent(&queue, offset, limit).await,
            Kind::Failed => a.recent_failures(&queue, offset + limit).await,
        }
        .map_err(to_py_err)?;
        attach(|py| {
            let list = PyList::empty(py);
            let page: Box<dyn Iterator<Item = _>> = match kind {
                Kind::Pending | Kind::Recent => Box::new(infos.iter()),
                Kind::Running | Kind::Failed => Box::new(infos.iter().skip(offset).take(limit)),
            };
            for t in page {
                list.append(info_dict(py, t)?)?;
            }
            Ok(list.into_any().unbind())
        })
    }
}

/// The largest `offset`: Redis ranges are signed 64-bit, and
/// `offset + limit` must not overflow.
fn max_offset() -> usize {
    usize::try_from(i64::MAX).unwrap_or(usize::MAX) - MAX_PAGE
}

/// `offset` and `limit` of `tasks`, range-checked.
fn page(offset: &Int, limit: &Int) -> PyResult<(usize, usize)> {
    Ok((
        offset.within_usize("offset", 0, max_offset())?,
        limit.within_usize("limit", 1, MAX_PAGE)?,
    ))
}

fn buckets(n: &Int) -> PyResult<usize> {
    n.within_usize("buckets", 1, MAX_BUCKETS)
}

/// Admin reads (blocking calls).
#[pyclass(frozen, module = "rtq._native")]
pub struct Admin {
    inner: admin::Admin,
}

impl Admin {
    /// Admin reads over a client's connection.
    pub fn new(client: &rtq_core::Client) -> Self {
        Self {
            inner: admin::Admin::new(client),
        }
    }
}

#[pymethods]
impl Admin {
    /// Names of every queue ever used.
    fn queues(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        block_on(py, ops::queues(self.inner.clone()))
    }
    /// A queue at a glance: pending, running, workers, idle slots, ...
    fn overview(&self, py: Python<'_>, queue: Text) -> PyResult<Py<PyAny>> {
        block_on(py, ops::overview(self.inner.clone(), queue.0))
    }
    /// Counters and latency percentiles over the last `buckets` 10 s buckets.
    #[pyo3(signature = (queue, *, buckets=Int::of(30)),
        text_signature = "($self, queue, *, buckets=30)")]
    fn stats(&self, py: Python<'_>, queue: Text, buckets: Int) -> PyResult<Py<PyAny>> {
        let n = self::buckets(&buckets)?;
        block_on(py, ops::stats(self.inner.clone(), queue.0, n))
    }
    /// The queue's workers as their heartbeats describe them.
    fn workers(&self, py: Python<'_>, queue: Text) -> PyResult<Py<PyAny>> {
        block_on(py, ops::workers(self.inner.clone(), queue.0))
    }
    /// A page of tasks: `kind` is "pending", "running", "recent" or "failed".
    #[pyo3(signature = (queue, kind=Text("pending".to_string()), *, offset=Int::of(0), limit=Int::of(100)),
        text_signature = "($self, queue, kind='pending', *, offset=0, limit=100)")]
    fn tasks(
        &self,
        py: Python<'_>,
        queue: Text,
        kind: Text,
        offset: Int,
        limit: Int,
    ) -> PyResult<Py<PyAny>> {
        let kind = self::kind(&kind)?;
        let (offset, limit) = page(&offset, &limit)?;
        block_on(
            py,
            ops::tasks(self.inner.clone(), queue.0, kind, offset, limit),
        )
    }
}

/// Admin reads (asyncio calls).
#[pyclass(frozen, module = "rtq._native")]
pub struct AsyncAdmin {
    inner: admin::Admin,
}

impl AsyncAdmin {
    /// Admin reads over a client's connection.
    pub fn new(client: &rtq_core::Client) -> Self {
        Self {
            inner: admin::Admin::new(client),
        }
    }
}

#[pymethods]
impl AsyncAdmin {
    /// Names of every queue ever used.
    fn queues(&self) -> PyResult<Call> {
        awaitable(ops::queues(self.inner.clone()))
    }
    /// A queue at a glance: pending, running, workers, idle slots, ...
    fn overview(&self, queue: Text) -> PyResult<Call> {
        awaitable(ops::overview(self.inner.clone(), queue.0))
    }
    /// Counters and latency percentiles over the last `buckets` 10 s buckets.
    #[pyo3(signature = (queue, *, buckets=Int::of(30)),
        text_signature = "($self, queue, *, buckets=30)")]
    fn stats(&self, queue: Text, buckets: Int) -> PyResult<Call> {
        let n = self::buckets(&buckets)?;
        awaitable(ops::stats(self.inner.clone(), queue.0, n))
    }
    /// The queue's workers as their heartbeats describe them.
    fn workers(&self, queue: Text) -> PyResult<Call> {
        awaitable(ops::workers(self.inner.clone(), queue.0))
    }
    /// A page of tasks: `kind` is "pending", "running", "recent" or "failed".
    #[pyo3(signature = (queue, kind=Text("pending".to_string()), *, offset=Int::of(0), limit=Int::of(100)),
        text_signature = "($self, queue, kind='pending', *, offset=0, limit=100)")]
    fn tasks(&self, queue: Text, kind: Text, offset: Int, limit: Int) -> PyResult<Call> {
        let kind = self::kind(&kind)?;
        let (offset, limit) = page(&offset, &limit)?;
        awaitable(ops::tasks(self.inner.clone(), queue.0, kind, offset, limit))
    }
}
