//! Prometheus metrics of a worker process, and [`Instrumented`], a handler
//! wrapper that times every task and counts its outcome.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use rtq_core::{async_trait, Handler, HandlerError, TaskContext, WorkerStatus};
use serde_json::Value;

use crate::handlers::{run_until_stopped, Run, Serve};
use crate::upstream::UpstreamState;

/// Label set of the task counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The worker's metrics registry.
pub struct Metrics {
    registry: Registry,
    tasks: Family<OutcomeLabels, Counter>,
    duration: Histogram,
    busy: Gauge,
    slots: Gauge,
    upstream_up: Gauge,
    redis_up: Gauge,
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new(slots: usize) -> Self {
        let mut registry = Registry::with_prefix("rtq_worker");
        let tasks = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "tasks",
            "Tasks ended by this worker, by outcome (done, failed, stopped, handed_back: given back unstarted)",
            tasks.clone(),
        );
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 16));
        registry.register(
            "task_duration_seconds",
            "Handler run time per task",
            duration.clone(),
        );
        let busy = Gauge::default();
        registry.register("slots_busy", "Slots running a task", busy.clone());
        let slots_gauge = Gauge::default();
        slots_gauge.set(slots as i64);
        registry.register(
            "slots",
            "Slots configured (--concurrency)",
            slots_gauge.clone(),
        );
        let upstream_up = Gauge::default();
        registry.register(
            "upstream_up",
            "1 while the inference server answers its health probe",
            upstream_up.clone(),
        );
        let redis_up = Gauge::default();
        registry.register(
            "redis_up",
            "1 while the last heartbeat reached Redis",
            redis_up.clone(),
        );
        Self {
            registry,
            tasks,
            duration,
            busy,
            slots: slots_gauge,
            upstream_up,
            redis_up,
        }
    }

    fn record(&self, outcome: &'static str, started: Instant) {
        self.tasks.get_or_create(&OutcomeLabels { outcome }).inc();
        self.duration.observe(started.elapsed().as_secs_f64());
    }

    /// The Prometheus text exposition, with gauges read at call time.
    pub fn render(&self, status: &WorkerStatus, upstream: &UpstreamState) -> String {
        self.busy.set(status.busy.load(Ordering::Acquire) as i64);
        self.upstream_up.set(upstream.is_up() as i64);
        self.redis_up
            .set(status.redis_ok.load(Ordering::Acquire) as i64);
        let _ = &self.slots;
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Wraps a built-in handler: runs it until the task ends or must stop
/// ([`run_until_stopped`]), times it and counts `done`, `failed` or
/// `stopped` (cancelled, expired or reassigned).
pub struct Instrumented {
    inner: Arc<dyn Serve>,
    metrics: Arc<Metrics>,
}

impl Instrumented {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Serve>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

/// Counts a task as stopped unless it reached an outcome.
struct StopGuard<'a> {
    metrics: &'a Metrics,
    started: Instant,
    finished: bool,
}

impl Drop for StopGuard<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.metrics.record("stopped", self.started);
        }
    }
}

#[async_trait]
impl Handler for Instrumented {
    async fn handle(&self, task: TaskContext) -> Result<Value, HandlerError> {
        let mut guard = StopGuard {
            metrics: &self.metrics,
            started: Instant::now(),
            finished: false,
        };
        let run = run_until_stopped(&task, self.inner.serve(&task)).await;
        guard.finished = true;
        let outcome = match &run {
            Run::Ended(Ok(_)) => "done",
            Run::Ended(Err(e)) if e.not_started => "handed_back",
            Run::Ended(Err(_)) => "failed",
            Run::Stopped(_) => "stopped",
        };
        self.metrics.record(outcome, guard.started);
        // The reason is stored in Redis and shown to clients: no secrets.
        run.into_result().map_err(|mut e| {
            e.message = crate::secrets::scrub(&e.message);
            e
        })
    }
}
