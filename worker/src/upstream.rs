//! Upstream health: whether the worker can serve tasks right now. Two
//! things decide it: the inference server answers (health probe, or the
//! last request), and, for the exec handler, its child process is running.
//! While either is false the worker's intake is off, so a node whose model
//! crashed or is restarting never drains the queue into failures; intake
//! comes back on when both hold again. Handlers report connection failures
//! at once, and a `Retry-After` on a 429 or 503 pauses intake for that
//! long ([`UpstreamState::pause`]).
//!
//! Without a health probe (`--handler http` without `--health-url`), a
//! down upstream is tried again with a TCP connect to its address
//! ([`Trial`]), never with a real task: a task handed to an upstream that
//! still refuses connections would use up one of its attempts, and a
//! queue would drain into failures while the model server restarts.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtq_core::IntakeSwitch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Longest pause a `Retry-After` may ask for; a longer one is cut to this
/// (the next request tells again).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The conditions and the last reason the upstream was down.
struct Health {
    /// The inference server answers (probe or request).
    answering: bool,
    /// Counts the times `answering` went false, so a trial loop of an
    /// earlier outage knows to stop.
    outage: u64,
    /// The exec child is running; always true for other handlers.
    child_running: bool,
    /// Until when the upstream asked to be left alone (`Retry-After`).
    paused_until: Option<Instant>,
    /// Why it was last considered down.
    last_error: String,
}

impl Health {
    fn up(&self) -> bool {
        self.answering && self.child_running && self.paused_until.is_none()
    }
}

/// How a worker without a health probe finds out that its upstream is
/// back: a TCP connect to `addr` every `every`. A connect that succeeds
/// resumes intake; the next task then tells whether the server works.
#[derive(Clone, Debug)]
pub struct Trial {
    /// Time between two connects.
    pub every: Duration,
    /// `host:port` of the upstream (`[v6]:port` for an IPv6 address).
    pub addr: String,
}

impl Trial {
    /// The trial for the upstream at `url` (already checked to be an
    /// http(s) URL with a host).
    pub fn for_url(url: &str, every: Duration) -> Option<Self> {
        let url = url::Url::parse(url.trim()).ok()?;
        let host = url.host_str()?;
        let port = url.port_or_known_default()?;
        Some(Self {
            every,
            addr: format!("{host}:{port}"),
        })
    }

    /// True if a TCP connection to the upstream opens.
    async fn connects(&self) -> bool {
        let connect = tokio::net::TcpStream::connect(self.addr.as_str());
        matches!(
            tokio::time::timeout(crate::http_client::CONNECT_TIMEOUT, connect).await,
            Ok(Ok(_))
        )
    }
}

/// Whether the upstream is up, shared by the probe, handlers, the exec
/// supervisor and endpoints.
pub struct UpstreamState {
    health: Mutex<Health>,
    intake: IntakeSwitch,
    /// Whether the upstream is up, for handlers holding a task until it is
    /// ([`wait_until_up`](Self::wait_until_up)).
    up: tokio::sync::watch::Sender<bool>,
    /// Without a health probe nothing would ever mark the upstream up
    /// again: this trial does (see [`Trial`]).
    trial: Option<Trial>,
}

impl UpstreamState {
    /// Starts as up; the first probe (or request) corrects it.
    /// `trial` is for workers without a probe (see [`Trial`]).
    pub fn new(intake: IntakeSwitch, trial: Option<Trial>) -> Arc<Self> {
        Self::build(intake, trial, true, String::new())
    }

    /// Starts down, intake off, until [`child_started`](Self::child_started):
    /// for the exec handler, whose tasks cannot run before its child does.
    pub fn awaiting_child(intake: IntakeSwitch) -> Arc<Self> {
        Self::build(intake, None, false, "exec child is starting".to_string())
    }

    fn build(
        intake: IntakeSwitch,
        trial: Option<Trial>,
        child_running: bool,
        last_error: String,
    ) -> Arc<Self> {
        intake.set(child_running);
        Arc::new(Self {
            health: Mutex::new(Health {
                answering: true,
                outage: 0,
                child_running,
                paused_until: None,
                last_error,
            }),
            intake,
            up: tokio::sync::watch::channel(child_running).0,
            trial,
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
        self.up
            .send_if_modified(|up| std::mem::replace(up, after) != after);
        (before, after)
    }

    /// Waits until the upstream is up again, or `until`; true if it is up.
    pub async fn wait_until_up(&self, until: Instant) -> bool {
        let mut up = self.up.subscribe();
        tokio::time::timeout_at(until, up.wait_for(|up| *up))
            .await
            .is_ok_and(|r| r.is_ok())
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

    /// The inference server did not answer: stops intake. Without a probe,
    /// starts the [`Trial`] that resumes it.
    pub fn mark_down(self: &Arc<Self>, why: &str) {
        let why = &crate::secrets::scrub(why);
        let mut outage = None;
        let (before, _) = self.update(|h| {
            if h.answering {
                h.outage += 1;
                outage = Some(h.outage);
            }
            h.answering = false;
            h.last_error = why.to_string();
        });
        if before {
            tracing::warn!(reason = why, "upstream is down; taking no new tasks");
        }
        if let (Some(outage), Some(trial)) = (outage, self.trial.clone()) {
            let me = Arc::clone(self);
            tokio::spawn(async move { me.try_until_back(trial, outage).await });
        }
    }

    /// Connects to the upstream every [`Trial::every`] until it accepts a
    /// connection (then resumes intake), or something else marked it up.
    async fn try_until_back(&self, trial: Trial, outage: u64) {
        loop {
            tokio::time::sleep(trial.every).await;
            let still_down = self
                .health
                .lock()
                .map(|h| !h.answering && h.outage == outage)
                .unwrap_or(false);
            if !still_down {
                return;
            }
            if trial.connects().await {
                tracing::info!(addr = %trial.addr, "the upstream accepts connections again");
                self.mark_up();
                return;
            }
        }
    }

    /// The upstream asked to be left alone for `delay` (a 429 or 503 with
    /// `Retry-After`): stops intake until then (at most
    /// [`MAX_RETRY_AFTER`]).
    pub fn pause(self: &Arc<Self>, delay: Duration, why: &str) {
        let delay = delay.min(MAX_RETRY_AFTER);
        let until = Instant::now() + delay;
        let why = &crate::secrets::scrub(why);
        let (before, _) = self.update(|h| {
            h.paused_until = Some(h.paused_until.map_or(until, |u| u.max(until)));
            h.last_error = why.to_string();
        });
        if before {
            tracing::warn!(
                reason = why,
                pause_ms = delay.as_millis() as u64,
                "upstream asked to wait (Retry-After); taking no new tasks until then"
            );
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep_until(until).await;
            let (before, after) = me.update(|h| {
                if h.paused_until.is_some_and(|u| u <= Instant::now()) {
                    h.paused_until = None;
                }
            });
            if !before && after {
                tracing::info!("the upstream's Retry-After passed; taking tasks again");
            }
        });
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
        let s = UpstreamState::awaiting_child(intake(&redis).await);
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

    /// Polls `check` every 10 ms for up to 20 s.
    async fn becomes(what: &str, check: impl Fn() -> bool) {
        let waited = tokio::time::timeout(Duration::from_secs(20), async {
            while !check() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "never happened: {what}");
    }

    #[tokio::test]
    async fn without_a_probe_intake_resumes_only_once_the_upstream_accepts_connections() {
        let redis = RedisServer::start();
        // A port nothing listens on (yet).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let trial = Trial::for_url(
            &format!("http://127.0.0.1:{port}/x"),
            Duration::from_millis(20),
        );
        let s = UpstreamState::new(intake(&redis).await, trial);
        s.mark_down("connection refused");
        // Many trial periods pass: the port still refuses, intake stays off.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!s.is_up(), "resumed while the upstream still refuses");
        let _listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        becomes("intake resumes once the port accepts", || s.is_up()).await;
        // With a probe (no trial), only the probe brings it back.
        let probed = UpstreamState::new(intake(&redis).await, None);
        probed.mark_down("probe failed");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!probed.is_up());
    }

    #[tokio::test]
    async fn a_retry_after_pauses_intake_for_that_long_and_no_longer_than_the_cap() {
        let redis = RedisServer::start();
        let s = UpstreamState::new(intake(&redis).await, None);
        s.pause(Duration::from_millis(300), "429 Too Many Requests");
        assert!(!s.is_up());
        assert_eq!(s.last_error(), "429 Too Many Requests");
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!s.is_up(), "resumed before the Retry-After passed");
        becomes("intake resumes after the Retry-After", || s.is_up()).await;
    }

    #[test]
    fn the_trial_address_keeps_ipv6_brackets_and_fills_in_the_default_port() {
        let every = Duration::from_secs(1);
        let addr = |u: &str| Trial::for_url(u, every).map(|t| t.addr);
        assert_eq!(addr("http://[::1]:8000/x").as_deref(), Some("[::1]:8000"));
        assert_eq!(
            addr("https://model.internal/v1").as_deref(),
            Some("model.internal:443")
        );
        assert_eq!(addr("http://10.0.0.1/").as_deref(), Some("10.0.0.1:80"));
    }
}
