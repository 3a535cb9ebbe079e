//! The queue's recent history for an operator: its event stream (`ev`:
//! failures, requeues, retries, cancels, lost and departed workers,
//! operator actions), the workers that died or left in the last ten
//! minutes (`gone`), and forgetting an ended task.

use std::collections::HashMap;

use redis::Value;

use super::{Admin, WorkerInfo};
use crate::error::Error;
use crate::functions::queue_admin::{DeleteTask, DeleteTaskReply};
use crate::keys::{validate_id, QueueKeys};

/// Departed workers listed at most (newest first).
const DEPARTED_LIMIT: usize = 100;
/// How long a departed worker stays listed (its info hash lives as long).
const DEPARTED_FOR_MS: i64 = 600_000;

/// What happened, as the event stream names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A task failed (handler error, attempts used up, protocol refusal).
    Failed,
    /// A task's deadline passed.
    Expired,
    /// A task was cancelled.
    Cancelled,
    /// A task went back to the queue (operator requeue, hand-back).
    Requeued,
    /// A failed attempt will be retried after a backoff.
    Retry,
    /// An attempt was lost (its worker died, its message was lost, it was
    /// interrupted) and the task went back to the queue.
    Lost,
    /// A worker stopped heartbeating (or was replaced) and was reaped.
    WorkerLost,
    /// A worker left cleanly.
    WorkerLeft,
    /// The queue was paused.
    Paused,
    /// The queue was resumed.
    Resumed,
    /// The queue's maximum depth was set.
    MaxDepth,
    /// Queued tasks were purged.
    Purged,
    /// An ended task was deleted by an operator.
    Deleted,
    /// A kind this version does not know (written by a newer one).
    Other(String),
}

impl EventKind {
    /// Parses the stream's `k` field.
    pub fn parse(word: &str) -> Self {
        match word {
            "failed" => Self::Failed,
            "expired" => Self::Expired,
            "cancelled" => Self::Cancelled,
            "requeued" => Self::Requeued,
            "retry" => Self::Retry,
            "lost" => Self::Lost,
            "worker_lost" => Self::WorkerLost,
            "worker_left" => Self::WorkerLeft,
            "paused" => Self::Paused,
            "resumed" => Self::Resumed,
            "max_depth" => Self::MaxDepth,
            "purged" => Self::Purged,
            "deleted" => Self::Deleted,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The stream's word for it.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Failed => "failed",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
            Self::Requeued => "requeued",
            Self::Retry => "retry",
            Self::Lost => "lost",
            Self::WorkerLost => "worker_lost",
            Self::WorkerLeft => "worker_left",
            Self::Paused => "paused",
            Self::Resumed => "resumed",
            Self::MaxDepth => "max_depth",
            Self::Purged => "purged",
            Self::Deleted => "deleted",
            Self::Other(word) => word,
        }
    }

    /// True for events that signal trouble (failures, lost attempts and
    /// workers), as opposed to routine operator actions.
    pub fn is_trouble(&self) -> bool {
        matches!(
            self,
            Self::Failed | Self::Expired | Self::Lost | Self::WorkerLost
        )
    }
}

/// One entry of a queue's event stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueEvent {
    /// Stream entry id (`<ms>-<seq>`).
    pub entry_id: String,
    /// When it happened (Redis time, ms).
    pub at_ms: i64,
    /// What happened.
    pub kind: EventKind,
    /// The task it concerns, if any.
    pub task: Option<String>,
    /// The worker it concerns, if any.
    pub worker: Option<String>,
    /// Details (a reason, an error message cut to 256 bytes, a count).
    pub message: String,
}

impl QueueEvent {
    fn from_entry(entry_id: String, fields: &[(Vec<u8>, Vec<u8>)]) -> Self {
        let field = |name: &[u8]| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let some = |s: String| (!s.is_empty()).then_some(s);
        let at_ms = entry_id
            .split('-')
            .next()
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(0);
        Self {
            at_ms,
            kind: EventKind::parse(&field(b"k")),
            task: some(field(b"t")),
            worker: some(field(b"w")),
            message: field(b"m"),
            entry_id,
        }
    }
}

impl Admin {
    /// The queue's last `count` events, newest first (about the last 1000
    /// are kept). One `XREVRANGE`.
    ///
    /// # Errors
    /// [`Error::InvalidName`] for a bad queue name, Redis errors (a key of
    /// the wrong type included).
    pub async fn events(&self, queue: &str, count: usize) -> Result<Vec<QueueEvent>, Error> {
        let k = QueueKeys::new(queue)?;
        let reply: Value = redis::cmd("XREVRANGE")
            .arg(k.events())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(count.max(1))
            .query_async(&mut self.conn.clone())
            .await?;
        let Value::Array(entries) = reply else {
            return Ok(Vec::new());
        };
        Ok(entries
            .into_iter()
            .filter_map(crate::client::stream_entry)
            .map(|(id, fields)| QueueEvent::from_entry(id, &fields))
            .collect())
    }

    /// Workers that died (state `dead`, reaped after their lease lapsed or
    /// replaced by a restart) or left (state `stopped`) in the last ten
    /// minutes, newest first, with their last heartbeat fields plus
    /// `dead_at` (ms) and `dead_why`. `lease_until_ms` is `None` and
    /// `tasks` empty. Workers back under the same id are not listed.
    ///
    /// # Errors
    /// [`Error::InvalidName`] for a bad queue name, Redis errors.
    pub async fn departed_workers(&self, queue: &str) -> Result<Vec<WorkerInfo>, Error> {
        let k = QueueKeys::new(queue)?;
        let mut conn = self.conn.clone();
        let (departed, now): (Vec<(String, f64)>, (i64, i64)) = redis::pipe()
            .cmd("ZRANGE")
            .arg(k.departed())
            .arg(0)
            .arg(DEPARTED_LIMIT - 1)
            .arg("REV")
            .arg("WITHSCORES")
            .cmd("TIME")
            .query_async(&mut conn)
            .await?;
        let now_ms = now.0 * 1000 + now.1 / 1000;
        let departed: Vec<(String, i64)> = departed
            .into_iter()
            .map(|(id, at)| (id, at as i64))
            .filter(|(_, at)| now_ms - at <= DEPARTED_FOR_MS)
            .collect();
        if departed.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (id, _) in &departed {
            pipe.hgetall(k.worker(id));
        }
        // A foreign info key reads as gone (left out), never as a failed
        // read of every departed worker.
        pipe.ignore_errors();
        let replies: Vec<Value> = pipe.query_async(&mut conn).await?;
        let mut out = Vec::new();
        for ((id, at), reply) in departed.into_iter().zip(replies) {
            let mut fields: HashMap<String, String> =
                redis::from_redis_value(reply).unwrap_or_default();
            match fields.get("state").map(String::as_str) {
                // Its info expired, or a process registered again under
                // this id (its registration removes it from `gone`; this
                // covers a read between the two).
                None => continue,
                Some("dead" | "stopped") => {}
                Some(_) => continue,
            }
            fields
                .entry("dead_at".into())
                .or_insert_with(|| at.to_string());
            out.push(WorkerInfo {
                id,
                lease_until_ms: None,
                fields,
                tasks: Vec::new(),
            });
        }
        Ok(out)
    }

    /// Forgets an ended task now (its hash, output and follower set)
    /// instead of at the end of its retention. Queued and running tasks
    /// are refused ([`DeleteTaskReply::NotEnded`]: cancel them first), as
    /// is an ended task its worker has not let go of yet
    /// ([`DeleteTaskReply::Owned`]).
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown id, [`Error::InvalidName`] for a
    /// bad queue name or id, [`Error::InvalidInput`] on a stream queue (not
    /// available there yet), Redis errors.
    pub async fn delete_task(&self, queue: &str, id: &str) -> Result<DeleteTaskReply, Error> {
        let k = QueueKeys::new(queue)?;
        validate_id(id, "task id")?;
        self.refuse_stream(&k, super::stream::Unavailable::Delete)
            .await?;
        match self.call(&k, &DeleteTask { id }).await? {
            DeleteTaskReply::NotFound => Err(Self::not_found(queue, id)),
            other => Ok(other),
        }
    }
}
