//! `rtq2_requeue`: an operator puts a task back in the queue with a fresh
//! budget of attempts (`core/lua/requeue.lua`).

use redis::{Cmd, Value};

use super::{Function, ReplyItems};
use crate::error::Error;
use crate::protocol::TaskState;

/// Arguments of `rtq2_requeue`.
#[derive(Clone, Debug)]
pub struct Requeue<'a> {
    /// Task id.
    pub id: &'a str,
    /// Why (shown to followers; at most 4 KiB).
    pub reason: &'a str,
}

/// What `rtq2_requeue` answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequeueReply {
    /// Queued again; it was in this state.
    Requeued(TaskState),
    /// It was already queued; nothing changed.
    AlreadyQueued,
    /// No such task.
    NotFound,
}

impl Function for Requeue<'_> {
    const NAME: &'static str = "rtq2_requeue";
    fn task_id(&self) -> Option<&str> {
        Some(self.id)
    }
    type Reply = RequeueReply;
    fn write_args(&self, cmd: &mut Cmd) {
        cmd.arg(self.id).arg(self.reason);
    }
    fn decode(reply: Value) -> Result<RequeueReply, Error> {
        let mut items = ReplyItems::new(reply, Self::NAME)?;
        let status = items.string()?;
        match status.as_str() {
            "OK" => {
                let word = items.string()?;
                TaskState::parse(&word)
                    .map(RequeueReply::Requeued)
                    .ok_or_else(|| {
                        Error::Protocol(format!("rtq2_requeue replied unknown state {word:?}"))
                    })
            }
            "QUEUED" => Ok(RequeueReply::AlreadyQueued),
            "NOT_FOUND" => Ok(RequeueReply::NotFound),
            other => Err(items.unexpected(other)),
        }
    }
}
