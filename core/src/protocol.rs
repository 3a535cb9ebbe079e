//! Wire encodings shared by clients, workers and the console: the task spec
//! (JSON), inbox messages (tab separated) and reply stream events (stream
//! entries). PROTOCOL.md documents the same formats for other languages.

use std::collections::BTreeMap;
use std::fmt;

use redis::Value;
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The protocol version this library writes and understands.
pub const PROTOCOL_VERSION: u32 = 2;

/// Longest accepted timeout or retention (30 days), in the client and in
/// the functions.
pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);
/// Largest spec the functions accept (clients default to a lower cap).
pub const MAX_SPEC_BYTES: usize = 16 << 20;
/// Largest result JSON the functions accept.
pub const MAX_RESULT_BYTES: usize = 16 << 20;
/// Longest reason or error message the functions accept (failure reasons
/// may be 16 times longer).
pub const MAX_TEXT_BYTES: usize = 4096;
/// Largest single output chunk.
pub const MAX_CHUNK_BYTES: usize = 1 << 20;
/// Most chunks one chunk or complete call may carry (writers split).
pub const MAX_CHUNKS_PER_CALL: usize = 512;
/// Most chunks one attempt may write.
pub const MAX_OUTPUT_CHUNKS: u64 = 100_000;
/// Most output bytes one attempt may write.
pub const MAX_OUTPUT_BYTES: u64 = 64 << 20;
/// Most attempts a task may be allowed.
pub const MAX_ATTEMPTS: u32 = 1000;
/// Highest attempt number a resume may name ([`Queue::follow_from`](crate::Queue::follow_from)):
/// an operator's requeue renews a task's budget of attempts, so its
/// attempt number may pass [`MAX_ATTEMPTS`], but never this.
pub const MAX_ATTEMPT_NUMBER: u64 = u32::MAX as u64;
/// Most slots one worker may offer.
pub const MAX_SLOTS: usize = 1024;
/// Chunks returned by one watch/read call at most.
pub const READ_PAGE: u64 = 1000;

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
    /// Ed25519 signature (hex) of the rest of the spec and the queue name,
    /// by a client holding a signing key (see `crate::signing`); absent
    /// for unsigned tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

fn one() -> u32 {
    1
}

impl TaskSpec {
    /// Decodes a spec and refuses versions this library does not know.
    ///
    /// # Errors
    /// [`Error::Protocol`] for malformed JSON (or bytes that are not
    /// UTF-8) or an unknown version.
    pub fn decode(json: &[u8]) -> Result<Self, Error> {
        let spec: TaskSpec = serde_json::from_slice(json)
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

/// Why a worker is told to stop an attempt through its inbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CancelKind {
    /// A client or an operator cancelled the task.
    Cancelled,
    /// The task's deadline passed.
    Deadline,
    /// An operator requeued the task; another attempt will run.
    Requeued,
}

impl CancelKind {
    /// Parses the wire form.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "cancelled" => Self::Cancelled,
            "deadline" => Self::Deadline,
            "requeued" => Self::Requeued,
            _ => return None,
        })
    }
}

/// A message in a worker's inbox (or the next task returned by complete).
#[derive(Clone, Debug, PartialEq)]
pub enum InboxMessage {
    /// Run this task.
    Task(TaskDelivery),
    /// Stop this attempt of a task.
    Cancel {
        /// Task id.
        id: String,
        /// The attempt to stop.
        attempt: u64,
        /// Why.
        kind: CancelKind,
        /// The reason given with the cancel.
        reason: String,
    },
    /// A message that cannot be read. When its task and attempt can be
    /// made out, the worker fails that attempt with `reason` (returning
    /// the slot); otherwise it is logged and dropped (the heartbeat's
    /// reconciliation restores the capacity it was counted against).
    Unreadable {
        /// Task id and attempt, if they could be read.
        task: Option<(String, u64)>,
        /// What is wrong with it.
        reason: String,
    },
}

fn utf8(part: Option<&[u8]>) -> Option<&str> {
    part.and_then(|p| std::str::from_utf8(p).ok())
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
    /// Redis time (ms) of the submit (the queue wait is
    /// `handed_out_ms - submitted_ms`).
    pub submitted_ms: i64,
    /// The spec JSON as stored (bytes: a foreign client may have stored
    /// anything; [`TaskSpec::decode`] says what is wrong).
    pub spec: Vec<u8>,
}

impl TaskDelivery {
    /// Time left until the deadline at hand-out, if the task has one.
    pub fn time_left(&self) -> Option<std::time::Duration> {
        (self.deadline_ms > 0).then(|| {
            std::time::Duration::from_millis(
                self.deadline_ms.saturating_sub(self.handed_out_ms).max(0) as u64,
            )
        })
    }
}

impl InboxMessage {
    /// Parses `T\t<id>\t<attempt>\t<handed_out>\t<deadline>\t<submitted>\t<spec>` or
    /// `C\t<id>\t<attempt>\t<kind>\t<reason>`. Never fails: anything else
    /// is [`InboxMessage::Unreadable`].
    pub fn parse(raw: &[u8]) -> Self {
        let unreadable = |task: Option<(String, u64)>, why: &str| InboxMessage::Unreadable {
            task,
            reason: format!(
                "unreadable inbox message ({why}): {:.80}",
                String::from_utf8_lossy(raw)
            ),
        };
        let mut parts = raw.splitn(7, |b| *b == b'\t');
        let tag = parts.next().unwrap_or_default();
        let Some(id) = utf8(parts.next()).filter(|id| !id.is_empty()) else {
            return unreadable(None, "no task id");
        };
        let Some(attempt) = utf8(parts.next()).and_then(|a| a.parse::<u64>().ok()) else {
            return unreadable(None, "no attempt");
        };
        let task = Some((id.to_string(), attempt));
        match tag {
            b"T" => {
                let handed_out = utf8(parts.next()).and_then(|n| n.parse::<i64>().ok());
                let deadline = utf8(parts.next()).and_then(|n| n.parse::<i64>().ok());
                let submitted = utf8(parts.next()).and_then(|n| n.parse::<i64>().ok());
                let (Some(handed_out_ms), Some(deadline_ms), Some(submitted_ms)) =
                    (handed_out, deadline, submitted)
                else {
                    return unreadable(task, "bad hand-out, deadline or submit time");
                };
                let Some(spec) = parts.next() else {
                    return unreadable(task, "no spec");
                };
                InboxMessage::Task(TaskDelivery {
                    id: id.to_string(),
                    attempt,
                    handed_out_ms,
                    deadline_ms,
                    submitted_ms,
                    spec: spec.to_vec(),
                })
            }
            b"C" => {
                let Some(kind) = utf8(parts.next()).and_then(CancelKind::parse) else {
                    return unreadable(None, "unknown cancel kind");
                };
                let reason = parts
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect::<Vec<_>>()
                    .join("\t");
                InboxMessage::Cancel {
                    id: id.to_string(),
                    attempt,
                    kind,
                    reason,
                }
            }
            _ => unreadable(None, "unknown message kind"),
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
        /// Chunks that attempt wrote in total: a reader that holds fewer
        /// fills the tail from the stored output before it reports the end.
        chunks: u64,
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
        let raw = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name.as_bytes())
                .map(|(_, v)| v)
        };
        let get = |name: &str| raw(name).map(|v| String::from_utf8_lossy(v).into_owned());
        let number = |name: &str| get(name).and_then(|v| v.parse::<u64>().ok());
        let bad = |what: &str| Error::Protocol(format!("reply event without {what}"));
        let id = get("t").ok_or_else(|| bad("task id"))?;
        let attempt = number("a").unwrap_or(0);
        match get("e").as_deref() {
            Some("c") => {
                let count = number("n").ok_or_else(|| bad("chunk count"))?;
                let chunks = (0..count)
                    .map(|i| raw(&format!("c{i}")).cloned().ok_or_else(|| bad("a chunk")))
                    .collect::<Result<_, _>>()?;
                Ok(ReplyEvent::Chunks {
                    id,
                    attempt,
                    seq0: number("s").ok_or_else(|| bad("seq"))?,
                    chunks,
                })
            }
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
                    chunks: number("n").unwrap_or(0),
                    outcome,
                })
            }
            other => Err(Error::Protocol(format!(
                "unknown reply event kind {other:?}"
            ))),
        }
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
    fn inbox_messages_round_trip_and_garbage_is_unreadable_not_an_error() {
        let spec = r#"{"v":2,"id":"a","input":{"x":"tab\there"}}"#;
        let raw = format!("T\ta\t3\t1000\t5000\t900\t{spec}");
        match InboxMessage::parse(raw.as_bytes()) {
            InboxMessage::Task(d) => {
                assert_eq!(d.id, "a");
                assert_eq!(d.attempt, 3);
                assert_eq!(d.spec, spec.as_bytes());
                assert_eq!(d.submitted_ms, 900);
                assert_eq!(d.time_left(), Some(std::time::Duration::from_millis(4000)));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            InboxMessage::parse(b"C\tb\t2\tcancelled\tuser asked"),
            InboxMessage::Cancel {
                id: "b".into(),
                attempt: 2,
                kind: CancelKind::Cancelled,
                reason: "user asked".into()
            }
        );
        for (bad, task) in [
            (&b""[..], None),
            (b"X\ta", None),
            (b"T\ta\tnotanumber\t1\t2\t{}", None),
            (b"T\ta\t1", Some(("a".to_string(), 1))),
            (b"T\ta\t4\t1.8e+19\t0\t0\t{}", Some(("a".to_string(), 4))),
            // A revision-6 message (no submit time): unreadable, not misread.
            (b"T\ta\t5\t1000\t0\t{\"v\":2}", Some(("a".to_string(), 5))),
            (b"C\ta\t1\tweird\tx", None),
        ] {
            match InboxMessage::parse(bad) {
                InboxMessage::Unreadable { task: t, .. } => assert_eq!(t, task, "{bad:?}"),
                other => panic!("{bad:?} parsed as {other:?}"),
            }
        }
        // A spec that is not UTF-8 still arrives, so the worker can fail it.
        let InboxMessage::Task(d) = InboxMessage::parse(b"T\ta\t1\t0\t0\t0\t\xff\xfe") else {
            panic!()
        };
        assert!(TaskSpec::decode(&d.spec).is_err());
    }

    #[test]
    fn unknown_protocol_versions_are_refused() {
        let err = TaskSpec::decode(br#"{"v":1,"id":"a"}"#).unwrap_err();
        assert!(err.to_string().contains("version 1"), "{err}");
        assert!(TaskSpec::decode(b"not json").is_err());
        assert_eq!(
            TaskSpec::decode(br#"{"v":2,"id":"a"}"#)
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

    fn fields(pairs: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn reply_events_decode_with_distinct_chunk_fields() {
        let ev = ReplyEvent::decode(&fields(&[
            ("t", "x"),
            ("e", "c"),
            ("a", "1"),
            ("s", "4"),
            ("n", "2"),
            ("c0", "he"),
            ("c1", "llo"),
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
        // A chunk missing from the event is an error, not a silent gap.
        assert!(ReplyEvent::decode(&fields(&[
            ("t", "x"),
            ("e", "c"),
            ("a", "1"),
            ("s", "0"),
            ("n", "2"),
            ("c0", "he"),
        ]))
        .is_err());
        let fin = ReplyEvent::decode(&fields(&[
            ("t", "x"),
            ("e", "f"),
            ("st", "done"),
            ("a", "1"),
            ("n", "40"),
            ("r", "{\"ok\":true}"),
        ]))
        .unwrap();
        assert!(matches!(
            fin,
            ReplyEvent::Final {
                chunks: 40,
                outcome: Outcome::Done(_),
                ..
            }
        ));
        assert!(ReplyEvent::decode(&fields(&[("t", "x"), ("e", "zz")])).is_err());
    }

    #[test]
    fn redis_values_read_as_text_numbers_and_bytes() {
        let bulk = Value::BulkString(b"42".to_vec());
        assert_eq!(value_to_string(&bulk), "42");
        assert_eq!(value_to_string(&Value::SimpleString("s".into())), "s");
        assert_eq!(value_to_string(&Value::Int(-7)), "-7");
        assert_eq!(value_to_string(&Value::Okay), "OK");
        assert_eq!(value_to_string(&Value::Nil), "");
        assert_eq!(value_to_i64(&Value::Int(5)), 5);
        assert_eq!(value_to_i64(&bulk), 42);
        assert_eq!(value_to_i64(&Value::Nil), 0);
        assert_eq!(value_to_bytes(&Value::Int(3)), b"3");
        assert_eq!(value_to_bytes(&Value::BulkString(vec![0xff])), vec![0xff]);
    }
}
