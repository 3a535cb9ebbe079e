//! `rtq2_chunk`: append output chunks of a running attempt
//! (`core/lua/chunk.lua`), and the write status it shares with
//! `rtq2_complete`.

use redis::{Cmd, Value};

use super::{Function, ReplyItems};
use crate::error::Error;
use crate::protocol::TaskState;

/// How Redis answered a worker's write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteStatus {
    /// Applied.
    Ok,
    /// The task was cancelled or expired: stop (complete releases the slot).
    Ended,
    /// The task no longer exists: stop.
    NotFound,
    /// This attempt is no longer current: stop; nothing was written.
    Fenced,
    /// Redis holds a different chunk count: resend from it.
    Order,
    /// The output caps would be passed: end the task as failed.
    TooLarge,
}

impl WriteStatus {
    pub(crate) fn parse(items: &ReplyItems, word: &str) -> Result<Self, Error> {
        Ok(match word {
            "OK" => Self::Ok,
            "ENDED" => Self::Ended,
            "NOT_FOUND" => Self::NotFound,
            "FENCED" => Self::Fenced,
            "ORDER" => Self::Order,
            "TOO_LARGE" => Self::TooLarge,
            other => return Err(items.unexpected(other)),
        })
    }
}

/// Arguments of `rtq2_chunk`.
#[derive(Clone, Debug)]
pub struct Chunk<'a> {
    /// Worker id.
    pub worker: &'a str,
    /// Task id.
    pub id: &'a str,
    /// The attempt the worker received.
    pub attempt: u64,
    /// Chunks the worker wrote before these.
    pub seq0: u64,
    /// The chunks (at most 512, each at most 1 MiB).
    pub chunks: &'a [Vec<u8>],
}

/// What `rtq2_chunk` answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkReply {
    /// The outcome.
    pub status: WriteStatus,
    /// Chunks Redis holds for the current attempt.
    pub chunks: u64,
    /// The task's state (none if it does not exist).
    pub state: Option<TaskState>,
}

impl Function for Chunk<'_> {
    const NAME: &'static str = "rtq2_chunk";
    fn task_id(&self) -> Option<&str> {
        Some(self.id)
    }
    type Reply = ChunkReply;

    fn write_args(&self, cmd: &mut Cmd) {
        cmd.arg(self.worker)
            .arg(self.id)
            .arg(self.attempt)
            .arg(self.seq0);
        for c in self.chunks {
            cmd.arg(c.as_slice());
        }
    }

    fn decode(reply: Value) -> Result<ChunkReply, Error> {
        let mut items = ReplyItems::new(reply, Self::NAME)?;
        let word = items.string()?;
        let status = WriteStatus::parse(&items, &word)?;
        Ok(ChunkReply {
            status,
            chunks: items.uint()?,
            state: TaskState::parse(&items.string()?),
        })
    }
}
