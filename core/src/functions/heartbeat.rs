//! `rtq2_register` and `rtq2_heartbeat`: a worker (re)registers or proves
//! it is alive; Redis reconciles its capacity and ownership with the
//! attempts it reports running (`core/lua/heartbeat.lua`).

use redis::{Cmd, Value};

use super::{Function, ReplyItems};
use crate::error::Error;

/// What a worker reports about itself (the arguments of both functions).
#[derive(Clone, Debug)]
pub struct Beat<'a> {
    /// Worker id.
    pub worker: &'a str,
    /// Random per process: tells a restart under the same id from the
    /// same process re-registering.
    pub instance: &'a str,
    /// Lease in ms (100 ms to 10 min).
    pub lease_ms: u64,
    /// Slots (1..=1024).
    pub slots: usize,
    /// False while the worker takes no new tasks (free slots become 0).
    pub accepting: bool,
    /// Every attempt the process runs now: (task id, attempt).
    pub running: &'a [(String, u64)],
    /// Worker info fields for the console (host, pid, version, handler,
    /// labels, busy, done, failed, stopped, state, upstream, last_error,
    /// started).
    pub info: &'a [(&'static str, String)],
}

impl Beat<'_> {
    fn write(&self, cmd: &mut Cmd) {
        cmd.arg(self.worker)
            .arg(self.instance)
            .arg(self.lease_ms)
            .arg(self.slots)
            .arg(if self.accepting { "1" } else { "0" })
            .arg(self.running.len());
        for (id, attempt) in self.running {
            cmd.arg(id).arg(*attempt);
        }
        for (field, value) in self.info {
            cmd.arg(*field).arg(value);
        }
    }
}

/// `rtq2_register`: registers (replacing an older process under the same
/// id, whose tasks use up an attempt), reconciles, and dispatches queued
/// work into the worker's inbox.
#[derive(Clone, Debug)]
pub struct Register<'a>(pub Beat<'a>);

/// `rtq2_heartbeat`: renews the lease, reconciles, and runs a share of
/// the queue's housekeeping. Writes nothing when the worker is not
/// registered ([`BeatReply::Gone`]) or another process holds its id
/// ([`BeatReply::Replaced`]).
#[derive(Clone, Debug)]
pub struct Heartbeat<'a>(pub Beat<'a>);

/// Why Redis tells a worker to stop an attempt it reported running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopWhy {
    /// The task was cancelled.
    Cancelled,
    /// The task's deadline passed.
    Expired,
    /// The task is queued again (an operator requeue, or a lost attempt).
    Requeued,
    /// Another attempt or worker holds the task.
    Reassigned,
    /// The task ended otherwise.
    Ended,
    /// The task no longer exists.
    Gone,
}

impl StopWhy {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "cancelled" => Self::Cancelled,
            "expired" => Self::Expired,
            "requeued" => Self::Requeued,
            "reassigned" => Self::Reassigned,
            "ended" => Self::Ended,
            "gone" => Self::Gone,
            _ => return None,
        })
    }
}

/// An attempt the worker must stop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StopOrder {
    /// Task id.
    pub id: String,
    /// The attempt.
    pub attempt: u64,
    /// Why.
    pub why: StopWhy,
}

/// A successful registration or heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BeatReport {
    /// Redis time (ms).
    pub now_ms: i64,
    /// Dead workers reaped by this call's housekeeping.
    pub reaped: u64,
    /// Overdue tasks ended by this call's housekeeping.
    pub expired: u64,
    /// This worker's tasks requeued: lost messages (heartbeat), or the
    /// tasks of the process it replaced (register).
    pub swept: u64,
    /// The worker's free slots as Redis now counts them.
    pub free: u64,
    /// Reported attempts that are no longer current.
    pub stop: Vec<StopOrder>,
}

/// What `rtq2_register` / `rtq2_heartbeat` answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BeatReply {
    /// Registered or renewed.
    Ok(BeatReport),
    /// Not registered (its lease lapsed and it was reaped, or it left):
    /// register again.
    Gone,
    /// Another process registered under this worker id: stop.
    Replaced,
}

fn decode(name: &'static str, reply: Value) -> Result<BeatReply, Error> {
    let mut items = ReplyItems::new(reply, name)?;
    let status = items.string()?;
    match status.as_str() {
        "OK" => {
            let now_ms = items.int()?;
            let reaped = items.uint()?;
            let expired = items.uint()?;
            let swept = items.uint()?;
            let free = items.uint()?;
            let count = items.uint()?;
            let mut stop = Vec::new();
            for _ in 0..count {
                let id = items.string()?;
                let attempt = items.uint()?;
                let why = items.string()?;
                let why = StopWhy::parse(&why).ok_or_else(|| {
                    Error::Protocol(format!("{name}: unknown stop reason {why:?}"))
                })?;
                stop.push(StopOrder { id, attempt, why });
            }
            Ok(BeatReply::Ok(BeatReport {
                now_ms,
                reaped,
                expired,
                swept,
                free,
                stop,
            }))
        }
        "GONE" => Ok(BeatReply::Gone),
        "REPLACED" => Ok(BeatReply::Replaced),
        other => Err(items.unexpected(other)),
    }
}

impl Function for Register<'_> {
    const NAME: &'static str = "rtq2_register";
    type Reply = BeatReply;
    fn write_args(&self, cmd: &mut Cmd) {
        self.0.write(cmd);
    }
    fn decode(reply: Value) -> Result<BeatReply, Error> {
        decode(Self::NAME, reply)
    }
}

impl Function for Heartbeat<'_> {
    const NAME: &'static str = "rtq2_heartbeat";
    type Reply = BeatReply;
    fn write_args(&self, cmd: &mut Cmd) {
        self.0.write(cmd);
    }
    fn decode(reply: Value) -> Result<BeatReply, Error> {
        decode(Self::NAME, reply)
    }
}
