//! Upstream health: whether the worker can serve tasks right now. Two
//! things decide it: the inference server answers (health probe, or the
//! last request), and, for the exec handler, its child process is running.
//! While either is false the worker's intake is off, so a node whose model
//! crashed or is restarting never drains the queue into failures; intake
//! comes back on when both hold again. Handlers report connection failures
//! at once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtq_core::IntakeSwitch;
use tokio_util::sync::CancellationToken;

/// The two conditions and the last reason the upstream was down.
struct Health {
    /// The inference server answers (probe or request).
    answering: bool,
    /// The exec child is running; always true for other handlers.
    child_running: bool,
    /// Why it was last considered down.
    last_error: String,
}

impl Health {
    fn up(&self) -> bool {
        self.answering && self.child_running
    }
}

/// Whether the upstream is up, shared by the probe, handlers, the exec
/// supervisor and endpoints.
pub struct UpstreamState {
    health: Mutex<Health>,
    intake: IntakeSwitch,
    /// Without a health probe nothing would ever mark the upstream up
    /// again: after this long, intake resumes on trial (the next request
    /// tells).
    retry_after: Option<Duration>,
}

impl UpstreamState {
    /// Starts as up; the first probe (or request) corrects it.
    /// `retry_after` is for workers without a probe (see the field).
    pub fn new(intake: IntakeSwitch, retry_after: Option<Duration>) -> Arc<Self> {
        Self::build(intake, retry_after, true, String::new())
    }

    /// Starts down, intake off, until [`child_started`](Self::child_started):
    /// for the exec handler, whose tasks cannot run before its child does.
    pub fn awaiting_child(intake: IntakeSwitch, retry_after: Option<Duration>) -> Arc<Self> {
        Self::build(
            intake,
            retry_after,
            false,
            "exec child is starting".to_string(),
        )
    }

    fn build(
        intake: IntakeSwitch,
        retry_after: Option<Duration>,
        child_running: bool,
        last_error: String,
    ) -> Arc<Self> {
        intake.set(child_running);
        Arc::new(Self {
            health: Mutex::new(Health {
                answering: true,
                child_running,
                last_error,
            }),
            intake,
            retry_after,
        })
    }

    /// Applies `change` and switches intake to match, under one lock so
    /// concurrent reports cannot leave intake out of step. Returns whether
    /// the upstream was up before and is up after.
    fn update(&self, change: impl FnOnce(&mut Health)) -> (bool, bool) {
        let Ok(mut h) = self.health.lock() else {
            return (false, false);
        };
        let before = h.up();
        change(&mut h);
        let after = h.up();
        self.intake.set(after);
        (before, after)
    }

    /// True while the upstream answers and (exec) its child runs.
    pub fn is_up(&self) -> bool {
        self.health.lock().map(|h| h.up()).unwrap_or(false)
    }

    /// Why it was last considered down.
    pub fn last_error(&self) -> String {
        self.health
            .lock()
            .map(|h| h.last_error.clone())
            .unwrap_or_default()
    }

    /// The inference server answered: resumes intake unless the exec child
    /// is down.
    pub fn mark_up(&self) {
        if let (false, true) = self.update(|h| h.answering = true) {
            tracing::info!("upstream is back; taking tasks again");
        }
    }

    /// The inference server did not answer: stops intake.
    pub fn mark_down(self: &Arc<Self>, why: &str) {
        let why = &crate::secrets::scrub(why);
        let mut was_answering = false;
        let (before, _) = self.update(|h| {
            was_answering = h.answering;
            h.answering = false;
            h.last_error = why.to_string();
        });
        if before {
            tracing::warn!(reason = why, "upstream is down; taking no new tasks");
        }
        if let (true, Some(after)) = (was_answering, self.retry_after) {
            let me = Arc::clone(self);
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let answering = me.health.lock().map(|h| h.answering).unwrap_or(true);
                if !answering {
                    tracing::info!("retrying the upstream with the next task");
                    me.mark_up();
                }
            });
        }
    }

    /// The exec child runs and reads its stdin: resumes intake unless the
    /// inference server's probe fails.
    pub fn child_started(&self) {
        if let (false, true) = self.update(|h| h.child_running = true) {
            tracing::info!("exec child is running; taking tasks");
        }
    }

    /// The exec child is gone (crashed, restarting, shutting down): stops
    /// intake until [`child_started`](Self::child_started).
    pub fn child_stopped(&self, why: &str) {
        let why = &crate::secrets::scrub(why);
        let (before, _) = self.update(|h| {
            h.child_running = false;
            h.last_error = why.to_string();
        });
        if before {
            tracing::warn!(reason = why, "exec child is down; taking no new tasks");
        }
    }
}

/// Probes `url` (GET, 2xx = up) every `interval` until stopped.
pub async fn probe_loop(
    http: reqwest::Client,
    url: String,
    interval: Duration,
    state: Arc<UpstreamState>,
    stop: CancellationToken,
) {
    let shown = rtq_core::redact_url(&url);
    loop {
        let result = http
            .get(&url)
            .timeout(interval.max(Duration::from_millis(500)))
            .send()
            .await;
        match result {
            Ok(r) if r.status().is_success() => state.mark_up(),
            Ok(r) => state.mark_down(&format!("health probe {shown} answered {}", r.status())),
            Err(e) => state.mark_down(&format!("health probe {shown} failed: {}", describe(&e))),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// A short, secret-free description of an HTTP client error.
pub fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_connect() {
        "connection refused or unreachable"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_decode() || e.is_body() {
        "bad response body"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind} ({detail})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtq_core::{Worker, WorkerConfig};
    use rtq_testkit::RedisServer;

    /// A real worker's intake switch (the state drives it).
    async fn intake(redis: &RedisServer) -> IntakeSwitch {
        Worker::connect(&redis.url(), WorkerConfig::new("up"))
            .await
            .unwrap()
            .intake()
    }

    #[tokio::test]
    async fn the_upstream_is_up_only_while_it_answers_and_its_child_runs() {
        let redis = RedisServer::start();
        let s = UpstreamState::awaiting_child(intake(&redis).await, None);
        assert!(!s.is_up());
        assert_eq!(s.last_error(), "exec child is starting");
        s.child_started();
        assert!(s.is_up());
        s.mark_down("probe failed");
        assert!(!s.is_up());
        assert_eq!(s.last_error(), "probe failed");
        s.child_stopped("child crashed");
        s.mark_up();
        assert!(!s.is_up(), "the child is still down");
        assert_eq!(s.last_error(), "child crashed");
        s.child_started();
        assert!(s.is_up());
        assert!(UpstreamState::new(intake(&redis).await, None).is_up());
    }

    #[tokio::test]
    async fn without_a_probe_intake_resumes_on_trial_after_retry_after() {
        let redis = RedisServer::start();
        let s = UpstreamState::new(intake(&redis).await, Some(Duration::from_millis(50)));
        s.mark_down("connection refused");
        assert!(!s.is_up());
        let waited = tokio::time::timeout(Duration::from_secs(20), async {
            while !s.is_up() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "intake never resumed on trial");
        // With a probe (no retry_after), only the probe brings it back.
        let probed = UpstreamState::new(intake(&redis).await, None);
        probed.mark_down("probe failed");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!probed.is_up());
    }
}
