//! `rtq2_cancel`: end a task early, on request or at its deadline
//! (`core/lua/cancel.lua`).

use std::time::Duration;

use redis::{Cmd, Value};

use super::{Function, ReplyItems};
use crate::error::Error;
use crate::protocol::TaskState;

/// Why the task is ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelMode {
    /// A client or an operator asked.
    Cancel,
    /// A timer fired at the deadline; Redis time decides.
    Deadline,
}

/// Arguments of `rtq2_cancel`.
#[derive(Clone, Debug)]
pub struct Cancel<'a> {
    /// Task id.
    pub id: &'a str,
    /// Cancel or deadline.
    pub mode: CancelMode,
    /// Stored as the task's error message (at most 4 KiB).
    pub reason: &'a str,
}

/// What `rtq2_cancel` answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CancelReply {
    /// Ended now.
    Ended {
        /// The state it was in.
        previous: TaskState,
        /// Its worker if it was running.
        worker: Option<String>,
    },
    /// No such task.
    NotFound,
    /// It had already ended; nothing changed.
    Finished(TaskState),
    /// Deadline mode, and the deadline is later by this much (`None`: the
    /// task has no deadline).
    NotDue(Option<Duration>),
}

fn state(items: &mut ReplyItems) -> Result<TaskState, Error> {
    let word = items.string()?;
    TaskState::parse(&word)
        .ok_or_else(|| Error::Protocol(format!("rtq2_cancel replied unknown state {word:?}")))
}

impl Function for Cancel<'_> {
    const NAME: &'static str = "rtq2_cancel";
    fn task_id(&self) -> Option<&str> {
        Some(self.id)
    }
    type Reply = CancelReply;

    fn write_args(&self, cmd: &mut Cmd) {
        cmd.arg(self.id)
            .arg(match self.mode {
                CancelMode::Cancel => "cancel",
                CancelMode::Deadline => "deadline",
            })
            .arg(self.reason);
    }

    fn decode(reply: Value) -> Result<CancelReply, Error> {
        let mut items = ReplyItems::new(reply, Self::NAME)?;
        let status = items.string()?;
        match status.as_str() {
            "OK" => Ok(CancelReply::Ended {
                previous: state(&mut items)?,
                worker: Some(items.string()?).filter(|w| !w.is_empty()),
            }),
            "NOT_FOUND" => Ok(CancelReply::NotFound),
            "FINISHED" => Ok(CancelReply::Finished(state(&mut items)?)),
            "NOT_DUE" => {
                let ms = items.int()?;
                Ok(CancelReply::NotDue(
                    (ms >= 0).then(|| Duration::from_millis(ms as u64)),
                ))
            }
            other => Err(items.unexpected(other)),
        }
    }
}
