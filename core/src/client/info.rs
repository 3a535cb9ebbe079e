//! Reading a task's stored state: [`TaskInfo`], as returned by
//! `Queue::status` and used by the console's detail view.

use std::collections::{BTreeMap, HashMap};

use crate::error::Error;
use crate::protocol::{Outcome, TaskSpec, TaskState, PROTOCOL_VERSION};

/// Everything stored about a task, decoded.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskInfo {
    /// Task id.
    pub id: String,
    /// Current state.
    pub state: TaskState,
    /// Priority.
    pub priority: i16,
    /// Hand-outs so far (the current attempt's fencing number).
    pub attempt: u64,
    /// Attempts used up by failures and worker losses.
    pub failures: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Current or last worker ("" if never started).
    pub worker: String,
    /// Submit time (ms, Redis clock).
    pub submitted_ms: i64,
    /// Deadline (ms, Redis clock), 0 = none.
    pub deadline_ms: i64,
    /// Start of the current/last attempt (ms), 0 = never started.
    pub started_ms: i64,
    /// First chunk of the current/last attempt (ms), 0 = none.
    pub first_chunk_ms: i64,
    /// Last chunk of the current/last attempt (ms), 0 = none.
    pub last_chunk_ms: i64,
    /// End time (ms), 0 = not ended.
    pub finished_ms: i64,
    /// Chunks written by the current/last attempt.
    pub chunks: u64,
    /// Bytes written by the current/last attempt.
    pub bytes: u64,
    /// How it ended, if it did.
    pub outcome: Option<Outcome>,
    /// Errors of earlier attempts, by attempt number.
    pub attempt_errors: BTreeMap<u64, String>,
    /// While a retry waits out its backoff: when it becomes runnable
    /// again (ms, Redis clock).
    pub retry_at_ms: Option<i64>,
    /// The submitted spec (input, labels, options).
    pub spec: Option<TaskSpec>,
}

impl TaskInfo {
    /// A task of which nothing but its id is known yet (a stream queue's
    /// status fills in what it stores).
    pub(crate) fn empty(id: &str) -> Self {
        Self {
            id: id.to_string(),
            state: TaskState::Queued,
            priority: 0,
            attempt: 0,
            failures: 0,
            max_attempts: 0,
            worker: String::new(),
            submitted_ms: 0,
            deadline_ms: 0,
            started_ms: 0,
            first_chunk_ms: 0,
            last_chunk_ms: 0,
            finished_ms: 0,
            chunks: 0,
            bytes: 0,
            outcome: None,
            attempt_errors: BTreeMap::new(),
            retry_at_ms: None,
            spec: None,
        }
    }

    /// Decodes a task hash (HGETALL).
    ///
    /// # Errors
    /// [`Error::Protocol`] if the hash is not a task of a known version.
    pub fn from_hash(id: &str, h: &HashMap<String, String>) -> Result<Self, Error> {
        let get = |k: &str| h.get(k).map(String::as_str).unwrap_or("");
        let int = |k: &str| get(k).parse::<i64>().unwrap_or(0);
        let version = get("v");
        if version != PROTOCOL_VERSION.to_string() {
            return Err(Error::Protocol(format!(
                "task {id} has protocol version {version:?}; this build reads {PROTOCOL_VERSION}"
            )));
        }
        let state = TaskState::parse(get("st")).ok_or_else(|| {
            Error::Protocol(format!("task {id} has unknown state {:?}", get("st")))
        })?;
        let outcome = if state.is_terminal() {
            Some(Outcome::from_fields(
                state,
                get("res"),
                get("ek"),
                get("err"),
                get("w"),
            )?)
        } else {
            None
        };
        let attempt_errors = h
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("e:")?.parse().ok()?, v.clone())))
            .collect();
        Ok(Self {
            id: id.to_string(),
            state,
            priority: int("pri") as i16,
            attempt: int("att") as u64,
            failures: int("fails") as u32,
            max_attempts: int("max") as u32,
            worker: get("w").to_string(),
            submitted_ms: int("sub"),
            deadline_ms: int("dl"),
            started_ms: int("start"),
            first_chunk_ms: int("fc"),
            last_chunk_ms: int("lc"),
            finished_ms: int("fin"),
            chunks: int("nc") as u64,
            bytes: int("nb") as u64,
            outcome,
            attempt_errors,
            retry_at_ms: Some(int("due")).filter(|d| *d > 0),
            spec: TaskSpec::decode(get("spec").as_bytes()).ok(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_queued_retry_shows_when_it_may_run_and_other_tasks_show_none() {
        let v = PROTOCOL_VERSION.to_string();
        let retry = hash(&[("v", &v), ("st", "queued"), ("fails", "1"), ("due", "1700")]);
        let info = TaskInfo::from_hash("t", &retry).unwrap();
        assert_eq!(info.retry_at_ms, Some(1700));
        assert_eq!(info.failures, 1);
        let fresh = hash(&[("v", &v), ("st", "queued"), ("due", "0"), ("e:1", "boom")]);
        let info = TaskInfo::from_hash("t", &fresh).unwrap();
        assert_eq!(info.retry_at_ms, None);
        assert_eq!(info.attempt_errors[&1], "boom");
        assert!(TaskInfo::from_hash("t", &hash(&[("v", "1"), ("st", "queued")])).is_err());
    }
}
