//! Upstream health: a probe of the inference server that switches the
//! worker's intake off while the server is down (so a node whose model
//! crashed never drains the queue into failures) and back on when it
//! answers again. Handlers report connection failures at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtq_core::IntakeSwitch;
use tokio_util::sync::CancellationToken;

/// Whether the upstream is up, shared by the probe, handlers and endpoints.
pub struct UpstreamState {
    up: AtomicBool,
    last_error: Mutex<String>,
    intake: IntakeSwitch,
    /// Without a health probe nothing would ever mark the upstream up
    /// again: after this long, intake resumes on trial (the next request
    /// tells).
    retry_after: Option<std::time::Duration>,
}

impl UpstreamState {
    /// Starts as up; the first probe (or request) corrects it.
    /// `retry_after` is for workers without a probe (see the field).
    pub fn new(intake: IntakeSwitch, retry_after: Option<Duration>) -> Arc<Self> {
        Arc::new(Self {
            up: AtomicBool::new(true),
            last_error: Mutex::new(String::new()),
            intake,
            retry_after,
        })
    }

    /// True while the upstream answers.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Why it was last considered down.
    pub fn last_error(&self) -> String {
        self.last_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }

    /// Marks the upstream up and resumes intake.
    pub fn mark_up(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            tracing::info!("upstream is back; taking tasks again");
        }
        self.intake.set(true);
    }

    /// Marks the upstream down and stops intake.
    pub fn mark_down(self: &Arc<Self>, why: &str) {
        if let Ok(mut e) = self.last_error.lock() {
            *e = why.to_string();
        }
        let was_up = self.up.swap(false, Ordering::AcqRel);
        if was_up {
            tracing::warn!(reason = why, "upstream is down; taking no new tasks");
        }
        self.intake.set(false);
        if let (true, Some(after)) = (was_up, self.retry_after) {
            let me = Arc::clone(self);
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                if !me.is_up() {
                    tracing::info!("retrying the upstream with the next task");
                    me.mark_up();
                }
            });
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
    loop {
        let result = http
            .get(&url)
            .timeout(interval.max(Duration::from_millis(500)))
            .send()
            .await;
        match result {
            Ok(r) if r.status().is_success() => state.mark_up(),
            Ok(r) => state.mark_down(&format!("health probe {url} answered {}", r.status())),
            Err(e) => state.mark_down(&format!("health probe {url} failed: {}", describe(&e))),
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
