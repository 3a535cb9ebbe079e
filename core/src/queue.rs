//! [`Queue`]: the client's handle on one queue - submit, wait, stream,
//! fetch later, cancel.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Value;

use crate::client::Client;
use crate::error::Error;
use crate::info::TaskInfo;
use crate::keys::{validate_id, QueueKeys};
use crate::protocol::{
    split_status, value_to_bytes, value_to_i64, value_to_string, Outcome, TaskState,
};
use crate::request::TaskRequest;
use crate::router::ReplyRouter;
use crate::scripts::scripts;
use crate::stream::TaskStream;
use crate::tracker::Tracker;

/// A task accepted by Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submitted {
    /// Task id (generated unless the request set one).
    pub id: String,
    /// `Running` if an idle worker took it in the same step, else `Queued`.
    pub state: TaskState,
    /// The worker it was handed to, if any.
    pub worker: Option<String>,
    /// Deadline on the Redis clock (ms), 0 = none.
    pub deadline_ms: i64,
    /// Submit time on the Redis clock (ms).
    pub submitted_ms: i64,
}

/// The final result of a task.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskOutput {
    /// Task id.
    pub id: String,
    /// The handler's JSON result.
    pub result: serde_json::Value,
    /// The attempt that produced it.
    pub attempt: u64,
}

/// What `Queue::follow` saw at subscription time: state plus chunks so far.
pub(crate) struct Snapshot {
    pub attempt: u64,
    pub outcome: Option<Outcome>,
    pub first: u64,
    pub chunks: Vec<Vec<u8>>,
}

/// A handle on one queue. Cheap to clone.
#[derive(Clone)]
pub struct Queue {
    pub(crate) client: Client,
    pub(crate) keys: QueueKeys,
}

impl Queue {
    pub(crate) fn new(client: Client, keys: QueueKeys) -> Self {
        Self { client, keys }
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        self.keys.name()
    }

    /// The queue's key builder.
    pub fn keys(&self) -> &QueueKeys {
        &self.keys
    }

    pub(crate) fn router(&self) -> Arc<ReplyRouter> {
        self.client.router(&self.keys)
    }

    /// Submits a task and returns at once (asynchronous use: fetch the
    /// result later with [`Queue::wait`] or [`Queue::follow`]).
    ///
    /// # Errors
    /// [`Error::QueueFull`], [`Error::Duplicate`], [`Error::InvalidInput`],
    /// [`Error::PayloadTooLarge`], [`Error::InvalidName`], or a Redis error.
    pub async fn submit(&self, request: TaskRequest) -> Result<Submitted, Error> {
        self.submit_inner(&request, None, false).await
    }

    /// Submits a task and waits for its whole result (synchronous use).
    ///
    /// # Errors
    /// Everything [`Queue::submit`] returns, and every reason the task can
    /// end without a result: [`Error::TimedOut`] (naming the phase),
    /// [`Error::Cancelled`], [`Error::Failed`], [`Error::WorkerLost`],
    /// [`Error::Connection`].
    pub async fn run(&self, request: TaskRequest) -> Result<TaskOutput, Error> {
        let router = self.router();
        let (id, deadline) = self.prepare(&request)?;
        let waiter = router.register(&id);
        let submitted = self
            .submit_inner(&request.clone().id(id), Some(router.key()), false)
            .await?;
        let mut tracker = Tracker::new(self.clone(), submitted.id.clone(), waiter, deadline, None);
        tracker.note_submitted(&submitted);
        tracker.final_output().await
    }

    /// Submits a task and returns a stream of its chunks, ending with the
    /// final result or the reason there is none.
    ///
    /// # Errors
    /// As [`Queue::submit`]; later failures arrive through the stream.
    pub async fn stream(&self, request: TaskRequest) -> Result<TaskStream, Error> {
        let router = self.router();
        let (id, deadline) = self.prepare(&request)?;
        let waiter = router.register(&id);
        let submitted = self
            .submit_inner(&request.clone().id(id), Some(router.key()), true)
            .await?;
        let mut tracker = Tracker::new(self.clone(), submitted.id.clone(), waiter, deadline, None);
        tracker.note_submitted(&submitted);
        Ok(TaskStream::new(tracker, 0, 0, Vec::new()))
    }

    /// Waits for the result of a task submitted earlier (by any process).
    /// `max_wait` bounds the wait without affecting the task.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::WaitTimedOut`] (naming the task's state
    /// and worker), or any reason the task ended without a result.
    pub async fn wait(&self, id: &str, max_wait: Option<Duration>) -> Result<TaskOutput, Error> {
        let (mut tracker, _) = self.follow_inner(id, u64::MAX, max_wait).await?;
        tracker.final_output().await
    }

    /// Streams a task submitted earlier (by any process) from chunk `from`
    /// (0 = the beginning) of its current attempt; chunks already written
    /// come first, then live ones, with none missing or repeated.
    ///
    /// # Errors
    /// [`Error::NotFound`], or a Redis error; later failures arrive through
    /// the stream.
    pub async fn follow(&self, id: &str, from: u64) -> Result<TaskStream, Error> {
        let (tracker, snap) = self.follow_inner(id, from, None).await?;
        Ok(TaskStream::new(
            tracker,
            snap.attempt,
            snap.first,
            snap.chunks,
        ))
    }

    async fn follow_inner(
        &self,
        id: &str,
        from: u64,
        max_wait: Option<Duration>,
    ) -> Result<(Tracker, Snapshot), Error> {
        validate_id(id, "task id")?;
        let router = self.router();
        let waiter = router.register(id);
        let snap = self.snapshot(id, router.key(), from).await?;
        let mut tracker = Tracker::new(
            self.clone(),
            id.to_string(),
            waiter,
            None,
            max_wait.map(|d| Instant::now() + d),
        );
        tracker.note_snapshot(&snap);
        Ok((tracker, snap))
    }

    /// Reads state and chunks from `from`, subscribing `reply` (if not
    /// empty) to later events in the same atomic step.
    pub(crate) async fn snapshot(
        &self,
        id: &str,
        reply: &str,
        from: u64,
    ) -> Result<Snapshot, Error> {
        let from_arg = from.min(1 << 40);
        let value: Value = scripts()
            .watch
            .key(self.keys.prefix())
            .arg(id)
            .arg(reply)
            .arg(from_arg)
            .invoke_async(&mut self.client.conn())
            .await?;
        let (status, items) = split_status(value)?;
        if status == "NOT_FOUND" {
            return Err(self.not_found(id));
        }
        let field = |i: usize| items.get(i).map(value_to_string).unwrap_or_default();
        let state = TaskState::parse(&field(0))
            .ok_or_else(|| Error::Protocol(format!("task {id}: unknown state {:?}", field(0))))?;
        let outcome = if state.is_terminal() {
            Some(Outcome::from_fields(
                state,
                &field(3),
                &field(4),
                &field(5),
                &field(6),
            )?)
        } else {
            None
        };
        let chunks = items.iter().skip(8).map(value_to_bytes).collect();
        Ok(Snapshot {
            attempt: items.get(1).map(value_to_i64).unwrap_or(0) as u64,
            outcome,
            first: if from == u64::MAX {
                items.get(2).map(value_to_i64).unwrap_or(0) as u64
            } else {
                from
            },
            chunks,
        })
    }

    /// Everything stored about a task.
    ///
    /// # Errors
    /// [`Error::NotFound`] or a Redis error.
    pub async fn status(&self, id: &str) -> Result<TaskInfo, Error> {
        validate_id(id, "task id")?;
        let hash: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.task(id))
            .query_async(&mut self.client.conn())
            .await?;
        if hash.is_empty() {
            return Err(self.not_found(id));
        }
        TaskInfo::from_hash(id, &hash)
    }

    /// Cancels a task: a queued one is removed, a running one's handler is
    /// told to stop; followers get [`Error::Cancelled`]. Returns the state
    /// the task was in.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Protocol`] never for valid ids. A task
    /// that already ended is not an error: its final state is returned.
    pub async fn cancel(&self, id: &str, reason: &str) -> Result<TaskState, Error> {
        validate_id(id, "task id")?;
        let value: Value = scripts()
            .cancel
            .key(self.keys.prefix())
            .arg(id)
            .arg("cancel")
            .arg(reason)
            .invoke_async(&mut self.client.conn())
            .await?;
        let (status, items) = split_status(value)?;
        match status.as_str() {
            "OK" | "FINISHED" => {
                let state = items.first().map(value_to_string).unwrap_or_default();
                TaskState::parse(&state)
                    .ok_or_else(|| Error::Protocol(format!("cancel returned state {state:?}")))
            }
            "NOT_FOUND" => Err(self.not_found(id)),
            other => Err(Error::Protocol(format!("cancel returned {other}"))),
        }
    }

    pub(crate) fn not_found(&self, id: &str) -> Error {
        Error::NotFound {
            queue: self.name().to_string(),
            id: id.to_string(),
        }
    }

    /// Picks the id and the local deadline before registering a waiter.
    fn prepare(&self, request: &TaskRequest) -> Result<(String, Option<Instant>), Error> {
        let id = match &request.id {
            Some(id) => {
                validate_id(id, "task id")?;
                id.clone()
            }
            None => uuid::Uuid::now_v7().simple().to_string(),
        };
        Ok((id, request.timeout.map(|t| Instant::now() + t)))
    }

    pub(crate) async fn submit_inner(
        &self,
        request: &TaskRequest,
        reply: Option<&str>,
        stream: bool,
    ) -> Result<Submitted, Error> {
        let (id, _) = self.prepare(request)?;
        let spec = request.encode(&id, self.client.inner.config.max_inline_bytes)?;
        let value: Value = scripts()
            .submit
            .key(self.keys.prefix())
            .arg(&id)
            .arg(spec)
            .arg(request.priority)
            .arg(request.timeout.map_or(0, |t| t.as_millis().max(1) as u64))
            .arg(request.max_attempts)
            .arg(request.retention.as_millis() as u64)
            .arg(reply.unwrap_or(""))
            .arg(if stream { "1" } else { "0" })
            .invoke_async(&mut self.client.conn())
            .await?;
        let (status, items) = split_status(value)?;
        let field = |i: usize| items.get(i).map(value_to_string).unwrap_or_default();
        match status.as_str() {
            "OK" => Ok(Submitted {
                id,
                state: if field(0) == "running" {
                    TaskState::Running
                } else {
                    TaskState::Queued
                },
                worker: Some(field(1)).filter(|w| !w.is_empty()),
                deadline_ms: field(2).parse().unwrap_or(0),
                submitted_ms: field(3).parse().unwrap_or(0),
            }),
            "QUEUE_FULL" => Err(Error::QueueFull {
                queue: self.name().to_string(),
                depth: field(0).parse().unwrap_or(0),
                max_depth: field(1).parse().unwrap_or(0),
            }),
            "DUPLICATE" => Err(Error::Duplicate {
                id,
                state: field(0),
            }),
            other => Err(Error::Protocol(format!("submit returned {other}"))),
        }
    }
}
