//! `rtq2_submit`: create a task, handing it to a free worker at once or
//! queueing it (`core/lua/submit.lua`).

use redis::{Cmd, Value};

use super::{Function, ReplyItems};
use crate::error::Error;
use crate::protocol::TaskState;

/// Arguments of `rtq2_submit`.
#[derive(Clone, Debug)]
pub struct Submit<'a> {
    /// Task id (the idempotency key).
    pub id: &'a str,
    /// The spec JSON.
    pub spec: &'a str,
    /// Priority in [-1000, 1000].
    pub priority: i16,
    /// Timeout in ms from now (0 = no deadline), at most 30 days.
    pub timeout_ms: u64,
    /// Attempts allowed, 1..=1000.
    pub max_attempts: u32,
    /// Retention in ms after the task ends, 1 ms to 30 days.
    pub retention_ms: u64,
    /// The submitter's reply stream key, or "" for none.
    pub reply: &'a str,
    /// True to receive chunk events on the reply stream.
    pub stream: bool,
}

/// What `rtq2_submit` answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubmitReply {
    /// Created: running (handed to `worker` in the same step) or queued.
    Accepted {
        /// `Running` or `Queued`.
        state: TaskState,
        /// The worker it was handed to.
        worker: Option<String>,
        /// Deadline (ms, Redis clock), 0 = none.
        deadline_ms: i64,
        /// Submit time (ms, Redis clock).
        now_ms: i64,
    },
    /// Refused: the queue is at its maximum depth.
    QueueFull {
        /// Queued tasks.
        depth: u64,
        /// The queue's maximum.
        max_depth: u64,
    },
    /// A task with this id exists; it is described so that a retried
    /// submit can recognise its own task.
    Duplicate {
        /// Its state.
        state: TaskState,
        /// Its current or last worker.
        worker: Option<String>,
        /// Its deadline (ms), 0 = none.
        deadline_ms: i64,
        /// Its submit time (ms).
        submitted_ms: i64,
        /// Its submitter's reply stream.
        reply: String,
    },
}

fn state(items: &mut ReplyItems) -> Result<TaskState, Error> {
    let word = items.string()?;
    TaskState::parse(&word)
        .ok_or_else(|| Error::Protocol(format!("rtq2_submit replied unknown state {word:?}")))
}

fn worker(items: &mut ReplyItems) -> Result<Option<String>, Error> {
    Ok(Some(items.string()?).filter(|w| !w.is_empty()))
}

impl Function for Submit<'_> {
    const NAME: &'static str = "rtq2_submit";
    fn task_id(&self) -> Option<&str> {
        Some(self.id)
    }
    type Reply = SubmitReply;

    fn write_args(&self, cmd: &mut Cmd) {
        cmd.arg(self.id)
            .arg(self.spec)
            .arg(self.priority)
            .arg(self.timeout_ms)
            .arg(self.max_attempts)
            .arg(self.retention_ms)
            .arg(self.reply)
            .arg(if self.stream { "1" } else { "0" });
    }

    fn decode(reply: Value) -> Result<SubmitReply, Error> {
        let mut items = ReplyItems::new(reply, Self::NAME)?;
        let status = items.string()?;
        match status.as_str() {
            "OK" => Ok(SubmitReply::Accepted {
                state: state(&mut items)?,
                worker: worker(&mut items)?,
                deadline_ms: items.int()?,
                now_ms: items.int()?,
            }),
            "QUEUE_FULL" => Ok(SubmitReply::QueueFull {
                depth: items.uint()?,
                max_depth: items.uint()?,
            }),
            "DUPLICATE" => Ok(SubmitReply::Duplicate {
                state: state(&mut items)?,
                worker: worker(&mut items)?,
                deadline_ms: items.int()?,
                submitted_ms: items.int()?,
                reply: items.string()?,
            }),
            other => Err(items.unexpected(other)),
        }
    }
}

/// Most tasks one `rtq2_submit_many` call carries.
pub const MAX_SUBMIT_BATCH: usize = 256;

/// Arguments of `rtq2_submit_many`: several submits in one call (the
/// per-call work is paid once). Each task is answered as `rtq2_submit`
/// would have answered it had the tasks been submitted one after another;
/// one invalid task refuses the whole call and nothing is written.
#[derive(Clone, Debug)]
pub struct SubmitMany<'a> {
    /// The tasks, 1 to [`MAX_SUBMIT_BATCH`].
    pub tasks: &'a [Submit<'a>],
}

impl Function for SubmitMany<'_> {
    const NAME: &'static str = "rtq2_submit_many";
    type Reply = Vec<SubmitReply>;

    fn write_args(&self, cmd: &mut Cmd) {
        cmd.arg(self.tasks.len());
        for task in self.tasks {
            task.write_args(cmd);
        }
    }

    fn decode(reply: Value) -> Result<Vec<SubmitReply>, Error> {
        match reply {
            Value::Array(items) => items.into_iter().map(Submit::decode).collect(),
            other => Err(Error::Protocol(format!(
                "{} replied {other:?}, expected an array",
                Self::NAME
            ))),
        }
    }
}
