//! `rtq2_watch`, `rtq2_read` and `rtq2_unwatch`: follow a task from any
//! process (`core/lua/watch.lua`).

use redis::{Cmd, Value};

use super::{Function, ReplyItems};
use crate::error::Error;
use crate::protocol::{Outcome, TaskState};

/// Arguments of `rtq2_watch`: read, and subscribe `reply` to later events.
#[derive(Clone, Debug)]
pub struct Watch<'a> {
    /// Task id.
    pub id: &'a str,
    /// The follower's reply stream (this queue's `r:<client>` key).
    pub reply: &'a str,
    /// First chunk index to return.
    pub from: u64,
}

/// Arguments of `rtq2_read`: read only (FCALL_RO).
#[derive(Clone, Debug)]
pub struct Read<'a> {
    /// Task id.
    pub id: &'a str,
    /// First chunk index to return.
    pub from: u64,
}

/// Arguments of `rtq2_unwatch`: end a subscription.
#[derive(Clone, Debug)]
pub struct Unwatch<'a> {
    /// Task id.
    pub id: &'a str,
    /// The follower's reply stream.
    pub reply: &'a str,
}

/// A task's state and a page of its current attempt's chunks.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskSnapshot {
    /// Current state.
    pub state: TaskState,
    /// Current attempt (0 = never handed out).
    pub attempt: u64,
    /// Chunks the current attempt holds in total.
    pub chunk_count: u64,
    /// The outcome, once the task ended.
    pub outcome: Option<Outcome>,
    /// Index of the first chunk in `chunks`.
    pub first: u64,
    /// At most 1000 chunks from `first`.
    pub chunks: Vec<Vec<u8>>,
}

fn decode_snapshot(function: &'static str, reply: Value) -> Result<Option<TaskSnapshot>, Error> {
    let mut items = ReplyItems::new(reply, function)?;
    let status = items.string()?;
    match status.as_str() {
        "NOT_FOUND" => Ok(None),
        "OK" => {
            let word = items.string()?;
            let state = TaskState::parse(&word).ok_or_else(|| {
                Error::Protocol(format!("{function} replied unknown state {word:?}"))
            })?;
            let attempt = items.uint()?;
            let chunk_count = items.uint()?;
            let result = items.string()?;
            let kind = items.string()?;
            let message = items.string()?;
            let worker = items.string()?;
            let first = items.uint()?;
            let outcome = if state.is_terminal() {
                Some(Outcome::from_fields(
                    state, &result, &kind, &message, &worker,
                )?)
            } else {
                None
            };
            Ok(Some(TaskSnapshot {
                state,
                attempt,
                chunk_count,
                outcome,
                first,
                chunks: items.rest_bytes(),
            }))
        }
        other => Err(items.unexpected(other)),
    }
}

impl Function for Watch<'_> {
    const NAME: &'static str = "rtq2_watch";
    fn task_id(&self) -> Option<&str> {
        Some(self.id)
    }
    type Reply = Option<TaskSnapshot>;
    fn write_args(&self, cmd: &mut Cmd) {
        cmd.arg(self.id).arg(self.reply).arg(self.from);
    }
    fn decode(reply: Value) -> Result<Option<TaskSnapshot>, Error> {
        decode_snapshot(Self::NAME, reply)
    }
}

impl Function for Read<'_> {
    const NAME: &'static str = "rtq2_read";
    fn task_id(&self) -> Option<&str> {
        Some(self.id)
    }
    const READ_ONLY: bool = true;
    type Reply = Option<TaskSnapshot>;
    fn write_args(&self, cmd: &mut Cmd) {
        cmd.arg(self.id).arg(self.from);
    }
    fn decode(reply: Value) -> Result<Option<TaskSnapshot>, Error> {
        decode_snapshot(Self::NAME, reply)
    }
}

impl Function for Unwatch<'_> {
    const NAME: &'static str = "rtq2_unwatch";
    fn task_id(&self) -> Option<&str> {
        Some(self.id)
    }
    type Reply = ();
    fn write_args(&self, cmd: &mut Cmd) {
        cmd.arg(self.id).arg(self.reply);
    }
    fn decode(reply: Value) -> Result<(), Error> {
        let mut items = ReplyItems::new(reply, Self::NAME)?;
        match items.string()?.as_str() {
            "OK" => Ok(()),
            other => Err(items.unexpected(other)),
        }
    }
}
