//! Wire encodings shared by clients, workers and the console: the task spec
//! (JSON), inbox messages (tab separated) and reply stream events (stream
//! entries). PROTOCOL.md documents the same formats for other languages.

use std::collections::BTreeMap;
use std::fmt;

use redis::Value;
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The protocol version this library writes and understands.
pub const PROTOCOL_VERSION: u32 = 1;

/// Lowest accepted priority.
pub const PRIORITY_MIN: i16 = -1000;
/// Highest accepted priority.
pub const PRIORITY_MAX: i16 = 1000;

/// State of a task. Terminal states are `Done`, `Failed`, `Cancelled`, `Expired`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Waiting in the pending zset.
    Queued,
    /// Handed to a worker (possibly still in its inbox).
    Running,
    /// Finished with a result.
    Done,
    /// Failed (handler error, or worker lost with no attempts left).
    Failed,
    /// Cancelled by a client or an operator.
    Cancelled,
    /// Its deadline passed.
    Expired,
}

impl TaskState {
    /// Parses the state as stored in the task hash.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "done" => Self::Done,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            "expired" => Self::Expired,
            _ => return None,
        })
    }

    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }

    /// True once the task can no longer change (until an operator requeues it).
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The immutable part of a task, as JSON: stored in the task hash (`spec`)
/// and delivered to the worker verbatim.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Protocol version of the writer.
    pub v: u32,
    /// Task id.
    pub id: String,
    /// Inline JSON input (absent when the input is a reference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<serde_json::Value>,
    /// Reference to input stored elsewhere (URL, object key, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_ref: Option<String>,
    /// Free-form labels (routing hints, tenant, model, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Priority in [-1000, 1000]; higher runs first.
    #[serde(default)]
    pub priority: i16,
    /// Timeout from submit in ms (0 = none).
    #[serde(default)]
    pub timeout_ms: u64,
    /// Attempts allowed (worker losses and retryable failures count).
    #[serde(default = "one")]
    pub max_attempts: u32,
}

fn one() -> u32 {
    1
}

impl TaskSpec {
    /// Decodes a spec and refuses versions this library does not know.
    ///
    /// # Errors
    /// [`Error::Protocol`] for malformed JSON or an unknown version.
    pub fn decode(json: &str) -> Result<Self, Error> {
        let spec: TaskSpec = serde_json::from_str(json)
            .map_err(|e| Error::Protocol(format!("malformed task spec: {e}")))?;
        if spec.v != PROTOCOL_VERSION {
            return Err(Error::Protocol(format!(
                "task {} uses protocol version {}, this build speaks {PROTOCOL_VERSION}",
                spec.id, spec.v
            )));
        }
        Ok(spec)
    }
}

/// A message in a worker's inbox (or returned by claim/complete).
#[derive(Clone, Debug, PartialEq)]
pub enum InboxMessage {
    /// Run this task.
    Task(TaskDelivery),
    /// Stop this task's attempt.
    Cancel {
        /// Task id.
        id: String,
        /// The attempt to stop.
        attempt: u64,
        /// Why ("cancel reason", "deadline", "requeued").
        reason: String,
    },
}

/// A task handed to a worker.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskDelivery {
    /// Task id.
    pub id: String,
    /// Attempt number (fencing token for every write of this attempt).
    pub attempt: u64,
    /// Redis time (ms) of the hand-out.
    pub handed_out_ms: i64,
    /// Deadline in Redis time (ms), 0 = none.
    pub deadline_ms: i64,
    /// The raw spec JSON.
    pub spec_json: String,
}

impl TaskDelivery {
    /// Time left until the deadline at hand-out, if the task has one.
    pub fn time_left(&self) -> Option<std::time::Duration> {
        (self.deadline_ms > 0).then(|| {
            std::time::Duration::from_millis((self.deadline_ms - self.handed_out_ms).max(0) as u64)
        })
    }
}

impl InboxMessage {
    /// Parses `T\t<id>\t<attempt>\t<now>\t<deadline>\t<spec>` or
    /// `C\t<id>\t<attempt>\t<reason>`.
    ///
    /// # Errors
    /// [`Error::Protocol`] for anything else.
    pub fn parse(raw: &str) -> Result<Self, Error> {
        let bad = || Error::Protocol(format!("malformed inbox message: {:.80}", raw));
        let num = |s: Option<&str>| s.and_then(|s| s.parse::<i64>().ok()).ok_or_else(bad);
        match raw.split_once('\t') {
            Some(("T", rest)) => {
                let mut parts = rest.splitn(5, '\t');
                let id = parts.next().ok_or_else(bad)?.to_string();
                let attempt = num(parts.next())? as u64;
                let handed_out_ms = num(parts.next())?;
                let deadline_ms = num(parts.next())?;
                let spec_json = parts.next().ok_or_else(bad)?.to_string();
                Ok(Self::Task(TaskDelivery {
                    id,
                    attempt,
                    handed_out_ms,
                    deadline_ms,
                    spec_json,
                }))
            }
            Some(("C", rest)) => {
                let mut parts = rest.splitn(3, '\t');
                let id = parts.next().ok_or_else(bad)?.to_string();
                let attempt = num(parts.next())? as u64;
                let reason = parts.next().unwrap_or("").to_string();
                Ok(Self::Cancel {
                    id,
                    attempt,
                    reason,
                })
            }
            _ => Err(bad()),
        }
    }
}

/// How a task ended, as carried by a final reply event or read from the hash.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Finished with this JSON result.
    Done(serde_json::Value),
    /// Ended without a result.
    Ended {
        /// Terminal state.
        state: TaskState,
        /// Error kind: handler, worker_lost, timeout_queued, timeout_running,
        /// cancelled, purged.
        kind: String,
        /// Human-readable reason.
        message: String,
        /// Worker involved, if any.
        worker: String,
    },
}

impl Outcome {
    /// Converts an outcome into the caller-facing result.
    ///
    /// # Errors
    /// The [`Error`] variant that names why there is no result.
    pub fn into_result(self, id: &str) -> Result<serde_json::Value, Error> {
        match self {
            Outcome::Done(value) => Ok(value),
            Outcome::Ended {
                state,
                kind,
                message,
                worker,
            } => Err(match (state, kind.as_str()) {
                (_, "timeout_queued") => Error::TimedOut {
                    id: id.into(),
                    phase: crate::error::TimeoutPhase::Queued,
                },
                (_, "timeout_running") | (TaskState::Expired, _) => Error::TimedOut {
                    id: id.into(),
                    phase: crate::error::TimeoutPhase::Running { worker },
                },
                (_, "worker_lost") => Error::WorkerLost {
                    id: id.into(),
                    worker,
                    reason: message,
                },
                (TaskState::Cancelled, _) => Error::Cancelled {
                    id: id.into(),
                    reason: message,
                },
                _ => Error::Failed {
                    id: id.into(),
                    worker,
                    reason: message,
                },
            }),
        }
    }

    /// Builds an outcome from stored fields (`st`, `res`, `ek`, `err`, `w`).
    ///
    /// # Errors
    /// [`Error::Protocol`] if a stored result is not JSON.
    pub fn from_fields(
        state: TaskState,
        result: &str,
        kind: &str,
        message: &str,
        worker: &str,
    ) -> Result<Self, Error> {
        if state == TaskState::Done {
            let value = serde_json::from_str(result)
                .map_err(|e| Error::Protocol(format!("stored result is not JSON: {e}")))?;
            Ok(Outcome::Done(value))
        } else {
            Ok(Outcome::Ended {
                state,
                kind: kind.to_string(),
                message: message.to_string(),
                worker: worker.to_string(),
            })
        }
    }
}

/// One entry of a reply stream.
#[derive(Clone, Debug, PartialEq)]
pub enum ReplyEvent {
    /// Chunks `seq0..seq0+chunks.len()` of attempt `attempt`.
    Chunks {
        /// Task id.
        id: String,
        /// Attempt that wrote them.
        attempt: u64,
        /// Index of the first chunk.
        seq0: u64,
        /// Chunk payloads.
        chunks: Vec<Vec<u8>>,
    },
    /// The attempt that was running is void; the task is queued again.
    Requeued {
        /// Task id.
        id: String,
        /// The attempt that was abandoned.
        attempt: u64,
        /// Why.
        reason: String,
    },
    /// The task ended.
    Final {
        /// Task id.
        id: String,
        /// Attempt that ended it.
        attempt: u64,
        /// How it ended.
        outcome: Outcome,
    },
}

impl ReplyEvent {
    /// The task the event belongs to.
    pub fn task_id(&self) -> &str {
        match self {
            ReplyEvent::Chunks { id, .. }
            | ReplyEvent::Requeued { id, .. }
            | ReplyEvent::Final { id, .. } => id,
        }
    }

    /// Decodes a stream entry's flat field/value list.
    ///
    /// # Errors
    /// [`Error::Protocol`] for unknown event kinds or missing fields.
    pub fn decode(fields: &[(Vec<u8>, Vec<u8>)]) -> Result<Self, Error> {
        let get = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name.as_bytes())
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        let bad = |what: &str| Error::Protocol(format!("reply event without {what}"));
        let id = get("t").ok_or_else(|| bad("task id"))?;
        let attempt = get("a").and_then(|a| a.parse().ok()).unwrap_or(0);
        match get("e").as_deref() {
            Some("c") => Ok(ReplyEvent::Chunks {
                id,
                attempt,
                seq0: get("s")
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| bad("seq"))?,
                chunks: fields
                    .iter()
                    .filter(|(k, _)| k == b"c")
                    .map(|(_, v)| v.clone())
                    .collect(),
            }),
            Some("q") => Ok(ReplyEvent::Requeued {
                id,
                attempt,
                reason: get("m").unwrap_or_default(),
            }),
            Some("f") => {
                let state = get("st")
                    .as_deref()
                    .and_then(TaskState::parse)
                    .ok_or_else(|| bad("state"))?;
                let outcome = Outcome::from_fields(
                    state,
                    &get("r").unwrap_or_default(),
                    &get("k").unwrap_or_default(),
                    &get("m").unwrap_or_default(),
                    &get("w").unwrap_or_default(),
                )?;
                Ok(ReplyEvent::Final {
                    id,
                    attempt,
                    outcome,
                })
            }
            other => Err(Error::Protocol(format!(
                "unknown reply event kind {other:?}"
            ))),
        }
    }
}

/// Reads a script reply's status word and the remaining items.
///
/// # Errors
/// [`Error::Protocol`] if the reply is not an array starting with a string.
pub fn split_status(value: Value) -> Result<(String, Vec<Value>), Error> {
    match value {
        Value::Array(mut items) if !items.is_empty() => {
            let status = value_to_string(&items.remove(0));
            Ok((status, items))
        }
        other => Err(Error::Protocol(format!(
            "unexpected script reply {other:?}"
        ))),
    }
}

/// Renders a Redis value as a string (bulk, simple, integer; else empty).
pub fn value_to_string(value: &Value) -> String {
    match value {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        Value::Okay => "OK".into(),
        _ => String::new(),
    }
}

/// Reads a Redis value as an integer (integer or numeric string; else 0).
pub fn value_to_i64(value: &Value) -> i64 {
    match value {
        Value::Int(i) => *i,
        other => value_to_string(other).parse().unwrap_or(0),
    }
}

/// Reads a Redis value as raw bytes.
pub fn value_to_bytes(value: &Value) -> Vec<u8> {
    match value {
        Value::BulkString(b) => b.clone(),
        other => value_to_string(other).into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbox_messages_round_trip_and_reject_garbage() {
        let spec = r#"{"v":1,"id":"a","input":{"x":"tab\there"}}"#;
        let raw = format!("T\ta\t3\t1000\t5000\t{spec}");
        match InboxMessage::parse(&raw).unwrap() {
            InboxMessage::Task(d) => {
                assert_eq!(d.id, "a");
                assert_eq!(d.attempt, 3);
                assert_eq!(d.spec_json, spec);
                assert_eq!(d.time_left(), Some(std::time::Duration::from_millis(4000)));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            InboxMessage::parse("C\tb\t2\tuser asked").unwrap(),
            InboxMessage::Cancel {
                id: "b".into(),
                attempt: 2,
                reason: "user asked".into()
            }
        );
        for bad in ["", "X\ta", "T\ta\tnotanumber\t1\t2\t{}", "T\ta\t1"] {
            assert!(InboxMessage::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unknown_protocol_versions_are_refused() {
        let err = TaskSpec::decode(r#"{"v":2,"id":"a"}"#).unwrap_err();
        assert!(err.to_string().contains("version 2"), "{err}");
        assert!(TaskSpec::decode("not json").is_err());
        assert_eq!(
            TaskSpec::decode(r#"{"v":1,"id":"a"}"#)
                .unwrap()
                .max_attempts,
            1
        );
    }

    #[test]
    fn outcomes_name_the_reason() {
        let lost = Outcome::Ended {
            state: TaskState::Failed,
            kind: "worker_lost".into(),
            message: "gone".into(),
            worker: "w1".into(),
        };
        assert!(
            matches!(lost.into_result("t"), Err(Error::WorkerLost { worker, .. }) if worker == "w1")
        );
        let queued = Outcome::Ended {
            state: TaskState::Expired,
            kind: "timeout_queued".into(),
            message: String::new(),
            worker: String::new(),
        };
        let err = queued.into_result("t").unwrap_err();
        assert_eq!(err.to_string(), "task t timed out while queued");
    }

    #[test]
    fn reply_events_decode() {
        let f = |pairs: &[(&str, &str)]| -> Vec<(Vec<u8>, Vec<u8>)> {
            pairs
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect()
        };
        let ev = ReplyEvent::decode(&f(&[
            ("t", "x"),
            ("e", "c"),
            ("a", "1"),
            ("s", "4"),
            ("c", "he"),
            ("c", "llo"),
        ]))
        .unwrap();
        assert_eq!(
            ev,
            ReplyEvent::Chunks {
                id: "x".into(),
                attempt: 1,
                seq0: 4,
                chunks: vec![b"he".to_vec(), b"llo".to_vec()]
            }
        );
        let fin = ReplyEvent::decode(&f(&[
            ("t", "x"),
            ("e", "f"),
            ("st", "done"),
            ("a", "1"),
            ("r", "{\"ok\":true}"),
        ]))
        .unwrap();
        assert!(matches!(
            fin,
            ReplyEvent::Final {
                outcome: Outcome::Done(_),
                ..
            }
        ));
        assert!(ReplyEvent::decode(&f(&[("t", "x"), ("e", "zz")])).is_err());
    }
}
