//! The `mock` handler: a simulated model for demos, tests and benchmarks.
//! Input fields override the defaults: `max_tokens`, `fail` (a reason).
//! Like a real model it stops at once when the task is cancelled, even in
//! the middle of its latency or between tokens.

use std::time::Duration;

use rtq_core::{async_trait, Handler, HandlerError, TaskContext};
use serde_json::{json, Value};

use crate::handlers::{run_until_stopped, Serve};

/// How the simulated model behaves.
#[derive(Clone, Debug, Default)]
pub struct MockSettings {
    /// Time before the first token.
    pub latency: Duration,
    /// Tokens per second (0 = no pacing).
    pub tokens_per_sec: f64,
    /// Tokens per task by default.
    pub tokens: u64,
    /// Fraction of tasks that fail.
    pub error_rate: f64,
}

/// The simulated model.
pub struct MockHandler {
    settings: MockSettings,
}

impl MockHandler {
    /// A mock with these settings.
    pub fn new(settings: MockSettings) -> Self {
        Self { settings }
    }
}

/// A stable pseudo-random number in [0, 1) from the task id, so a given
/// task fails (or not) the same way on every attempt and in tests.
fn unit_from(id: &str) -> f64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in id.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    // splitmix64 finalizer: FNV alone mixes short inputs poorly.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58476d1ce4e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d049bb133111eb);
    h ^= h >> 31;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

#[async_trait]
impl Handler for MockHandler {
    async fn handle(&self, task: TaskContext) -> Result<Value, HandlerError> {
        run_until_stopped(&task, self.serve(&task))
            .await
            .into_result()
    }
}

#[async_trait]
impl Serve for MockHandler {
    async fn serve(&self, task: &TaskContext) -> Result<Value, HandlerError> {
        let input = task.input().cloned().unwrap_or(Value::Null);
        if let Some(reason) = input["fail"].as_str() {
            return Err(HandlerError::fatal(reason));
        }
        if unit_from(task.id()) < self.settings.error_rate {
            return Err(HandlerError::fatal("mock: simulated model error"));
        }
        if !self.settings.latency.is_zero() {
            tokio::time::sleep(self.settings.latency).await;
        }
        let tokens = input["max_tokens"].as_u64().unwrap_or(self.settings.tokens);
        let pace = (self.settings.tokens_per_sec > 0.0)
            .then(|| Duration::from_secs_f64(1.0 / self.settings.tokens_per_sec));
        for i in 0..tokens {
            if let Some(p) = pace {
                tokio::time::sleep(p).await;
            }
            task.send(format!("tok{i} ")).await?;
        }
        Ok(json!({ "model": "mock", "usage": { "completion_tokens": tokens } }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_rate_draws_are_stable_and_spread() {
        assert_eq!(unit_from("abc"), unit_from("abc"));
        // Pinned: a task id draws the same number in every release, so a
        // benchmark's failures are the same tasks every run.
        assert_eq!(unit_from("abc"), 0.054024713354027254);
        assert_eq!(unit_from("m1"), 0.6950954694926653);
        let below = (0..1000)
            .filter(|i| unit_from(&format!("t{i}")) < 0.3)
            .count();
        assert!((200..400).contains(&below), "{below}");
    }
}
