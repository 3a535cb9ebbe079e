//! Operator functions on a queue and its tasks: priority, pause, maximum
//! depth, purge, housekeeping (`core/lua/queue_admin.lua`).

use redis::{Cmd, Value};

use super::{Function, ReplyItems};
use crate::error::Error;
use crate::protocol::TaskState;

/// `rtq2_set_priority`: change a task's priority (queued tasks move).
#[derive(Clone, Debug)]
pub struct SetPriority<'a> {
    /// Task id.
    pub id: &'a str,
    /// New priority in [-1000, 1000].
    pub priority: i16,
}

impl Function for SetPriority<'_> {
    const NAME: &'static str = "rtq2_set_priority";
    fn task_id(&self) -> Option<&str> {
        Some(self.id)
    }
    /// The task's state, or `None` if it does not exist.
    type Reply = Option<TaskState>;
    fn write_args(&self, cmd: &mut Cmd) {
        cmd.arg(self.id).arg(self.priority);
    }
    fn decode(reply: Value) -> Result<Option<TaskState>, Error> {
        let mut items = ReplyItems::new(reply, Self::NAME)?;
        match items.string()?.as_str() {
            "OK" => {
                let word = items.string()?;
                TaskState::parse(&word).map(Some).ok_or_else(|| {
                    Error::Protocol(format!("{} replied unknown state {word:?}", Self::NAME))
                })
            }
            "NOT_FOUND" => Ok(None),
            other => Err(items.unexpected(other)),
        }
    }
}

/// `rtq2_pause`: pause or resume hand-outs.
#[derive(Clone, Copy, Debug)]
pub struct Pause {
    /// True to pause, false to resume.
    pub paused: bool,
}

impl Function for Pause {
    const NAME: &'static str = "rtq2_pause";
    /// Tasks dispatched on resume (at most 1000; housekeeping does the rest).
    type Reply = u64;
    fn write_args(&self, cmd: &mut Cmd) {
        cmd.arg(if self.paused { "1" } else { "0" });
    }
    fn decode(reply: Value) -> Result<u64, Error> {
        let mut items = ReplyItems::new(reply, Self::NAME)?;
        match items.string()?.as_str() {
            "OK" => items.uint(),
            other => Err(items.unexpected(other)),
        }
    }
}

/// `rtq2_set_max_depth`: the most tasks that may wait (0 = unlimited).
#[derive(Clone, Copy, Debug)]
pub struct SetMaxDepth {
    /// The limit, at most 2^40.
    pub max_depth: u64,
}

impl Function for SetMaxDepth {
    const NAME: &'static str = "rtq2_set_max_depth";
    type Reply = ();
    fn write_args(&self, cmd: &mut Cmd) {
        cmd.arg(self.max_depth);
    }
    fn decode(reply: Value) -> Result<(), Error> {
        let mut items = ReplyItems::new(reply, Self::NAME)?;
        match items.string()?.as_str() {
            "OK" => Ok(()),
            other => Err(items.unexpected(other)),
        }
    }
}

/// `rtq2_purge`: cancel up to `batch` queued tasks.
#[derive(Clone, Copy, Debug)]
pub struct Purge {
    /// Tasks per call, 1..=1000.
    pub batch: u32,
}

/// What one purge call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PurgeReply {
    /// Tasks cancelled.
    pub removed: u64,
    /// Tasks still queued.
    pub remaining: u64,
}

impl Function for Purge {
    const NAME: &'static str = "rtq2_purge";
    type Reply = PurgeReply;
    fn write_args(&self, cmd: &mut Cmd) {
        cmd.arg(self.batch);
    }
    fn decode(reply: Value) -> Result<PurgeReply, Error> {
        let mut items = ReplyItems::new(reply, Self::NAME)?;
        Ok(PurgeReply {
            removed: items.uint()?,
            remaining: items.uint()?,
        })
    }
}

/// `rtq2_delete_task`: forget an ended task now (its hash, output and
/// follower set) instead of at the end of its retention.
#[derive(Clone, Debug)]
pub struct DeleteTask<'a> {
    /// Task id.
    pub id: &'a str,
}

/// What `rtq2_delete_task` answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeleteTaskReply {
    /// Deleted; the state it had ended in.
    Deleted(TaskState),
    /// No such task.
    NotFound,
    /// Queued or running: cancel it first.
    NotEnded(TaskState),
    /// Ended, but its worker (named) has not let go of it yet.
    Owned(String),
}

impl Function for DeleteTask<'_> {
    const NAME: &'static str = "rtq2_delete_task";
    fn task_id(&self) -> Option<&str> {
        Some(self.id)
    }
    type Reply = DeleteTaskReply;
    fn write_args(&self, cmd: &mut Cmd) {
        cmd.arg(self.id);
    }
    fn decode(reply: Value) -> Result<DeleteTaskReply, Error> {
        let mut items = ReplyItems::new(reply, Self::NAME)?;
        let word = items.string()?;
        let state = |items: &mut ReplyItems| -> Result<TaskState, Error> {
            let s = items.string()?;
            TaskState::parse(&s).ok_or_else(|| {
                Error::Protocol(format!("{} replied unknown state {s:?}", Self::NAME))
            })
        };
        match word.as_str() {
            "OK" => Ok(DeleteTaskReply::Deleted(state(&mut items)?)),
            "NOT_FOUND" => Ok(DeleteTaskReply::NotFound),
            "NOT_ENDED" => Ok(DeleteTaskReply::NotEnded(state(&mut items)?)),
            "OWNED" => Ok(DeleteTaskReply::Owned(items.string()?)),
            other => Err(items.unexpected(other)),
        }
    }
}

/// `rtq2_housekeep`: one bounded round of upkeep.
#[derive(Clone, Copy, Debug, Default)]
pub struct Housekeep;

/// What one housekeeping round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HousekeepReport {
    /// Dead workers reaped.
    pub reaped: u64,
    /// Overdue tasks ended.
    pub expired: u64,
    /// Queued tasks handed to free slots.
    pub dispatched: u64,
}

impl Function for Housekeep {
    const NAME: &'static str = "rtq2_housekeep";
    type Reply = HousekeepReport;
    fn write_args(&self, _cmd: &mut Cmd) {}
    fn decode(reply: Value) -> Result<HousekeepReport, Error> {
        let mut items = ReplyItems::new(reply, Self::NAME)?;
        Ok(HousekeepReport {
            reaped: items.uint()?,
            expired: items.uint()?,
            dispatched: items.uint()?,
        })
    }
}
