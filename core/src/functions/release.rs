//! `rtq2_release`: a worker withdraws capacity, hands tasks back, or
//! leaves (`core/lua/release.lua`).

use redis::{Cmd, Value};

use super::{Function, ReplyItems};
use crate::error::Error;

/// What to release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseMode {
    /// Free slots become 0 (intake off, or the start of a drain).
    Pause,
    /// Free slots become 0 and the listed attempts go back to the queue.
    HandBack,
    /// Hand back the listed attempts and every other owned task, then
    /// deregister.
    Leave,
}

impl ReleaseMode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::HandBack => "handback",
            Self::Leave => "leave",
        }
    }
}

/// An attempt handed back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandBack {
    /// Task id.
    pub id: String,
    /// The attempt.
    pub attempt: u64,
    /// True if the handler had started (the attempt is used up).
    pub started: bool,
}

/// Arguments of `rtq2_release`.
#[derive(Clone, Debug)]
pub struct Release<'a> {
    /// Worker id.
    pub worker: &'a str,
    /// This process's instance id (only it may release the worker).
    pub instance: &'a str,
    /// What to release.
    pub mode: ReleaseMode,
    /// Attempts handed back.
    pub items: &'a [HandBack],
}

/// What `rtq2_release` answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseReply {
    /// Done; this many tasks went back to the queue.
    Ok {
        /// Tasks requeued.
        handed_back: u64,
    },
    /// The worker was not registered; nothing to release.
    Gone,
    /// Another process holds the worker id; nothing was changed.
    Replaced,
}

impl Function for Release<'_> {
    const NAME: &'static str = "rtq2_release";
    type Reply = ReleaseReply;

    fn write_args(&self, cmd: &mut Cmd) {
        cmd.arg(self.worker)
            .arg(self.instance)
            .arg(self.mode.as_str())
            .arg(self.items.len());
        for item in self.items {
            cmd.arg(&item.id)
                .arg(item.attempt)
                .arg(if item.started { "1" } else { "0" });
        }
    }

    fn decode(reply: Value) -> Result<ReleaseReply, Error> {
        let mut items = ReplyItems::new(reply, Self::NAME)?;
        let status = items.string()?;
        let handed_back = items.uint()?;
        match status.as_str() {
            "OK" => Ok(ReleaseReply::Ok { handed_back }),
            "GONE" => Ok(ReleaseReply::Gone),
            "REPLACED" => Ok(ReleaseReply::Replaced),
            other => Err(items.unexpected(other)),
        }
    }
}
