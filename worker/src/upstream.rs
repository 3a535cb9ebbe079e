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
}

impl UpstreamState {
    /// Starts as up; the first probe corrects it.
    pub fn new(intake: IntakeSwitch) -> Arc<Self> {
        Arc::new(Self {
            up: AtomicBool::new(true),
            last_error: Mutex::new(String::new()),
            intake,
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
    pub fn mark_down(&self, why: &str) {
        if let Ok(mut e) = self.last_error.lock() {
            *e = why.to_string();
        }
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(reason = why, "upstream is down; taking no new tasks");
        }
        self.intake.set(false);
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
