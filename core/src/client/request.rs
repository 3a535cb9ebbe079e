//! What a client submits: input (inline JSON or a reference) and options.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::error::Error;
use crate::keys::validate_id;
use crate::protocol::{
    TaskSpec, MAX_ATTEMPTS, MAX_DURATION, MAX_SPEC_BYTES, PRIORITY_MAX, PRIORITY_MIN,
    PROTOCOL_VERSION,
};

/// Default retention of a finished task's result and output.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(3600);
/// Default cap on inline input, result and chunk size: 1 MiB.
pub const DEFAULT_MAX_INLINE_BYTES: usize = 1 << 20;

/// A task to submit. Build with [`TaskRequest::json`], [`TaskRequest::parse`]
/// or [`TaskRequest::reference`], then chain options.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use rtq_core::TaskRequest;
/// let task = TaskRequest::json(serde_json::json!({"prompt": "Hello"}))
///     .priority(5)
///     .timeout(Duration::from_secs(30))
///     .max_attempts(3)
///     .label("model", "llama-3-8b");
/// ```
#[derive(Clone, Debug)]
pub struct TaskRequest {
    pub(crate) id: Option<String>,
    pub(crate) input: Option<Value>,
    pub(crate) input_ref: Option<String>,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) priority: i16,
    pub(crate) timeout: Option<Duration>,
    pub(crate) max_attempts: u32,
    pub(crate) retention: Duration,
    pub(crate) cancel_on_drop: bool,
    /// Wait for a replica after the submit (see [`TaskRequest::durable`]).
    pub(crate) durable: Option<Duration>,
}

impl TaskRequest {
    fn empty() -> Self {
        Self {
            id: None,
            input: None,
            input_ref: None,
            labels: BTreeMap::new(),
            priority: 0,
            timeout: None,
            max_attempts: 3,
            retention: DEFAULT_RETENTION,
            cancel_on_drop: false,
            durable: None,
        }
    }

    /// A task with inline JSON input.
    pub fn json(input: Value) -> Self {
        Self {
            input: Some(input),
            ..Self::empty()
        }
    }

    /// A task whose input is JSON text; the text is checked here.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the text is not JSON.
    pub fn parse(json_text: &str) -> Result<Self, Error> {
        let value = serde_json::from_str(json_text)
            .map_err(|e| Error::InvalidInput(format!("input is not valid JSON: {e}")))?;
        Ok(Self::json(value))
    }

    /// A task whose (large) input lives elsewhere: a URL, an object key, ...
    pub fn reference(reference: impl Into<String>) -> Self {
        Self {
            input_ref: Some(reference.into()),
            ..Self::empty()
        }
    }

    /// Uses this id instead of a generated one: an idempotency key. A second
    /// `submit` with the same id fails with [`Error::Duplicate`]; a second
    /// `run` or `stream` waits for (follows) the existing task.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Priority in [-1000, 1000], default 0; higher runs first, FIFO within
    /// one priority. Strict: lower priorities wait while higher ones queue.
    pub fn priority(mut self, priority: i16) -> Self {
        self.priority = priority;
        self
    }

    /// Deadline relative to the submit, measured on the Redis clock. A task
    /// still queued at its deadline never runs; a running one is cancelled.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Attempts allowed (default 3, at most 1000): a lost worker, a lost
    /// delivery, an interrupted shutdown or a retryable failure uses one;
    /// the last one ends the task as failed. An operator requeue grants a
    /// fresh budget.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Adds a label (visible to workers and in the console).
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// How long the result and output stay readable after the task ends
    /// (default 1 hour, at most 30 days).
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// A durable submit: the submit returns only once at least one replica
    /// of the queue's master holds the task (`WAIT 1` after the submit, on
    /// the same connection, waiting at most `wait`), so a crash of the
    /// master right after cannot lose an acknowledged task. If no replica
    /// answers in time the submit fails with [`Error::NotReplicated`] (the
    /// task exists and may run). Costs one replica round trip per submit;
    /// while a replica is missing, every durable submit waits `wait` and
    /// delays the client's other commands on that node meanwhile.
    pub fn durable(mut self, wait: Duration) -> Self {
        self.durable = Some(wait);
        self
    }

    /// Cancels the task when the `run` future or the
    /// [`TaskStream`](crate::TaskStream) is dropped before the task ended
    /// (default off):
    /// a web handler whose caller went away stops the GPU work. Only a
    /// task this call created is cancelled: a `run` or `stream` whose
    /// explicit [`id`](Self::id) names a task that exists already attaches
    /// to it and leaves it running when dropped (it may be another
    /// caller's), and so does one with an explicit id dropped before Redis
    /// answered its submit (the task may have existed before).
    pub fn cancel_on_drop(mut self, cancel: bool) -> Self {
        self.cancel_on_drop = cancel;
        self
    }

    /// The request's id, validated, or a new one (UUIDv7: time-ordered).
    pub(crate) fn id_or_new(&self) -> Result<String, Error> {
        match &self.id {
            Some(id) => {
                validate_id(id, "task id")?;
                Ok(id.clone())
            }
            None => Ok(uuid::Uuid::now_v7().simple().to_string()),
        }
    }

    /// Validates the request and encodes its spec.
    #[cfg(test)]
    pub(crate) fn encode(&self, id: &str, max_inline: usize) -> Result<String, Error> {
        self.encode_signed(id, max_inline, None)
    }

    /// [`TaskRequest::encode`], signed for `queue` when a key is given.
    pub(crate) fn encode_signed(
        &self,
        id: &str,
        max_inline: usize,
        signer: Option<(&crate::signing::SigningKey, &str)>,
    ) -> Result<String, Error> {
        if !(PRIORITY_MIN..=PRIORITY_MAX).contains(&self.priority) {
            return Err(Error::InvalidInput(format!(
                "priority {} is outside [{PRIORITY_MIN}, {PRIORITY_MAX}]",
                self.priority
            )));
        }
        if !(1..=MAX_ATTEMPTS).contains(&self.max_attempts) {
            return Err(Error::InvalidInput(format!(
                "max_attempts must be in [1, {MAX_ATTEMPTS}], got {}",
                self.max_attempts
            )));
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::InvalidInput(
                "timeout must be positive (leave it unset for no deadline)".into(),
            ));
        }
        if self.timeout.is_some_and(|t| t > MAX_DURATION) {
            return Err(Error::InvalidInput(format!(
                "timeout must be at most {} days",
                MAX_DURATION.as_secs() / 86400
            )));
        }
        if self.retention < Duration::from_millis(1) || self.retention > MAX_DURATION {
            return Err(Error::InvalidInput(format!(
                "retention must be between 1 ms and {} days",
                MAX_DURATION.as_secs() / 86400
            )));
        }
        let spec = TaskSpec {
            v: PROTOCOL_VERSION,
            id: id.to_string(),
            input: self.input.clone(),
            input_ref: self.input_ref.clone(),
            labels: self.labels.clone(),
            priority: self.priority,
            timeout_ms: self.timeout.map_or(0, |t| t.as_millis() as u64),
            max_attempts: self.max_attempts,
            sig: None,
        };
        let mut spec = spec;
        if let Some((key, queue)) = signer {
            spec.sig = Some(key.sign(queue, &spec));
        }
        let encoded = serde_json::to_string(&spec)
            .map_err(|e| Error::InvalidInput(format!("cannot encode task: {e}")))?;
        let limit = max_inline.min(MAX_SPEC_BYTES);
        if encoded.len() > limit {
            return Err(Error::PayloadTooLarge {
                what: "input",
                size: encoded.len(),
                limit,
            });
        }
        Ok(encoded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bad_options_are_refused_before_redis() {
        let enc = |r: TaskRequest| r.encode("id1", DEFAULT_MAX_INLINE_BYTES);
        assert!(enc(TaskRequest::json(json!(1)).priority(1001)).is_err());
        assert!(enc(TaskRequest::json(json!(1)).max_attempts(0)).is_err());
        assert!(enc(TaskRequest::json(json!(1)).timeout(Duration::ZERO)).is_err());
        // Huge durations are refused here, never sent (or panicking).
        assert!(enc(TaskRequest::json(json!(1)).timeout(Duration::MAX)).is_err());
        assert!(enc(TaskRequest::json(json!(1)).timeout(MAX_DURATION)).is_ok());
        assert!(enc(TaskRequest::json(json!(1)).retention(Duration::MAX)).is_err());
        assert!(enc(TaskRequest::json(json!(1)).max_attempts(1001)).is_err());
        let big = TaskRequest::json(json!("x".repeat(2 << 20)));
        assert!(matches!(
            enc(big),
            Err(Error::PayloadTooLarge { what: "input", .. })
        ));
        assert!(TaskRequest::parse("{not json").is_err());
        let spec = enc(TaskRequest::reference("s3://bucket/big.wav").label("k", "v")).unwrap();
        let decoded = TaskSpec::decode(spec.as_bytes()).unwrap();
        assert_eq!(decoded.input_ref.as_deref(), Some("s3://bucket/big.wav"));
        assert_eq!(decoded.labels["k"], "v");
    }

    #[test]
    fn every_limit_is_inclusive() {
        let enc = |r: TaskRequest| r.encode("id1", DEFAULT_MAX_INLINE_BYTES);
        let one = || TaskRequest::json(json!(1));
        assert!(enc(one().priority(PRIORITY_MAX)).is_ok());
        assert!(enc(one().priority(PRIORITY_MIN)).is_ok());
        assert!(enc(one().priority(PRIORITY_MIN - 1)).is_err());
        assert!(enc(one().max_attempts(1)).is_ok());
        assert!(enc(one().max_attempts(MAX_ATTEMPTS)).is_ok());
        assert!(enc(one().timeout(Duration::from_millis(1))).is_ok());
        assert!(enc(one().retention(Duration::from_millis(1))).is_ok());
        assert!(enc(one().retention(Duration::from_micros(999))).is_err());
        assert!(enc(one().retention(MAX_DURATION)).is_ok());
        assert!(enc(one().retention(MAX_DURATION + Duration::from_millis(1))).is_err());
        // The input limit: a spec of exactly `max_inline` bytes passes.
        let size = one().encode("id1", usize::MAX).unwrap().len();
        assert!(one().encode("id1", size).is_ok());
        assert!(matches!(
            one().encode("id1", size - 1),
            Err(Error::PayloadTooLarge { size: s, limit, .. }) if s == size && limit == size - 1
        ));
    }
}
