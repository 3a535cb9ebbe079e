//! `rtq2_complete`: end an attempt and take the slot's next task in the
//! same round trip; `rtq2_complete_many`: several attempts of one worker
//! in one call; `rtq2_write_many`: a worker's chunk writes and completes
//! of several slots in one call (`core/lua/complete.lua`).

use redis::{Cmd, Value};

use super::chunk::{Chunk, ChunkReply, WriteStatus};
use super::{Function, ReplyItems};
use crate::error::Error;
use crate::protocol::{InboxMessage, TaskState};

/// How the attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompleteOutcome {
    /// With a result.
    Done,
    /// Failed for good.
    Failed,
    /// Failed; retry after a backoff on another worker while attempts remain.
    Retry,
}

impl CompleteOutcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Retry => "retry",
        }
    }
}

/// Arguments of `rtq2_complete`.
#[derive(Clone, Debug)]
pub struct Complete<'a> {
    /// Worker id.
    pub worker: &'a str,
    /// Task id.
    pub id: &'a str,
    /// The attempt the worker received.
    pub attempt: u64,
    /// Chunks the worker wrote before the trailing ones.
    pub seq0: u64,
    /// How it ended.
    pub outcome: CompleteOutcome,
    /// Result JSON (done) or reason (failed, retry).
    pub payload: &'a str,
    /// True to take the next task for this slot.
    pub want_next: bool,
    /// With `want_next`: have the next task's spec answered apart from the
    /// rest of its message (want next `'2'`, revision 9), which spares
    /// Redis a copy of it. A library older than revision 9 refuses that
    /// with `InvalidInput` naming "want next": send `false` there.
    pub next_apart: bool,
    /// Trailing chunks (at most 512).
    pub chunks: &'a [Vec<u8>],
}

/// What `rtq2_complete` answered.
#[derive(Clone, Debug, PartialEq)]
pub struct CompleteReply {
    /// `Ok`, `Ended`, `NotFound`, `Fenced`, `Order` or `TooLarge`.
    pub status: WriteStatus,
    /// The slot's next task, if one was taken.
    pub next: Option<InboxMessage>,
    /// Chunks Redis holds for the attempt.
    pub chunks: u64,
    /// The task's state after the call (none if it does not exist).
    pub state: Option<TaskState>,
    /// Redis time (ms) of the call (0 for `Fenced`, `Order`, `TooLarge`):
    /// the worker records the task's latencies in its own statistics.
    pub now_ms: i64,
    /// Redis time (ms) of the attempt's first chunk, 0 = none.
    pub first_chunk_ms: i64,
}

impl Function for Complete<'_> {
    const NAME: &'static str = "rtq2_complete";
    fn task_id(&self) -> Option<&str> {
        Some(self.id)
    }
    type Reply = CompleteReply;

    fn write_args(&self, cmd: &mut Cmd) {
        cmd.arg(self.worker)
            .arg(self.id)
            .arg(self.attempt)
            .arg(self.seq0)
            .arg(self.outcome.as_str())
            .arg(self.payload)
            .arg(want_next_arg(self.want_next, self.next_apart));
        for c in self.chunks {
            cmd.arg(c.as_slice());
        }
    }

    fn decode(reply: Value) -> Result<CompleteReply, Error> {
        let mut items = ReplyItems::new(reply, Self::NAME)?;
        let word = items.string()?;
        let status = WriteStatus::parse(&items, &word)?;
        let mut next = items.bytes()?;
        let chunks = items.uint()?;
        let state = TaskState::parse(&items.string()?);
        let now_ms = items.int()?;
        let first_chunk_ms = items.int()?;
        // Want next '2': the message comes cut before its spec, which is
        // the last item (Lua copies no spec into a message).
        if let Some(spec) = items.rest_bytes().into_iter().next() {
            if !next.is_empty() {
                next.extend_from_slice(&spec);
            }
        }
        Ok(CompleteReply {
            status,
            next: (!next.is_empty()).then(|| InboxMessage::parse(&next)),
            chunks,
            state,
            now_ms,
            first_chunk_ms,
        })
    }
}

/// The want-next argument: '0' takes no next task, '1' takes it whole,
/// '2' takes it with its spec apart (revision 9).
fn want_next_arg(want_next: bool, next_apart: bool) -> &'static str {
    match (want_next, next_apart) {
        (false, _) => "0",
        (true, false) => "1",
        (true, true) => "2",
    }
}

/// True for the refusal of a library older than revision 9 to answer a
/// next task's spec apart ([`Complete::next_apart`]): the same call with
/// `next_apart = false` is accepted there (nothing was written).
pub fn refuses_next_apart(e: &Error) -> bool {
    matches!(e, Error::InvalidInput(m) if m.contains("want next"))
}

/// Most completions one `rtq2_complete_many` call carries (a worker's
/// largest slot count).
pub const MAX_COMPLETE_BATCH: usize = crate::protocol::MAX_SLOTS;

/// Arguments of `rtq2_complete_many`: several completions of one worker
/// in one call (the clock and the queue's state are read once). Each is
/// answered as `rtq2_complete` would have answered it had they been sent
/// one after another; one invalid completion refuses the whole call and
/// nothing is written. The worker id of the first completion is sent for
/// all (a worker coalesces only its own).
#[derive(Clone, Debug)]
pub struct CompleteMany<'a> {
    /// The completions, 1 to [`MAX_COMPLETE_BATCH`], all of one worker.
    pub completes: &'a [Complete<'a>],
}

impl Function for CompleteMany<'_> {
    const NAME: &'static str = "rtq2_complete_many";
    type Reply = Vec<CompleteReply>;

    fn write_args(&self, cmd: &mut Cmd) {
        cmd.arg(self.completes.first().map_or("", |c| c.worker))
            .arg(self.completes.len());
        for c in self.completes {
            write_completion_group(cmd, c);
        }
    }

    fn decode(reply: Value) -> Result<Vec<CompleteReply>, Error> {
        decode_groups(reply, Self::NAME)
    }
}

/// One completion's group of arguments in a `_many` call: as
/// `rtq2_complete`'s from the task id on, then the trailing chunk count
/// and the chunks.
fn write_completion_group(cmd: &mut Cmd, c: &Complete<'_>) {
    cmd.arg(c.id)
        .arg(c.attempt)
        .arg(c.seq0)
        .arg(c.outcome.as_str())
        .arg(c.payload)
        .arg(want_next_arg(c.want_next, c.next_apart))
        .arg(c.chunks.len());
    for chunk in c.chunks {
        cmd.arg(chunk.as_slice());
    }
}

/// The replies of a `_many` call, one per group, each of
/// `rtq2_complete`'s shape.
fn decode_groups(reply: Value, function: &str) -> Result<Vec<CompleteReply>, Error> {
    match reply {
        Value::Array(items) => items.into_iter().map(Complete::decode).collect(),
        other => Err(Error::Protocol(format!(
            "{function} replied {other:?}, expected an array"
        ))),
    }
}

/// One write of a worker's slot in a `rtq2_write_many` call.
#[derive(Clone, Debug)]
pub enum SlotWrite<'a> {
    /// Chunks of a running attempt, appended as `rtq2_chunk` would.
    Chunks(Chunk<'a>),
    /// The end of an attempt, as `rtq2_complete`.
    Complete(Complete<'a>),
}

impl SlotWrite<'_> {
    fn worker(&self) -> &str {
        match self {
            Self::Chunks(c) => c.worker,
            Self::Complete(c) => c.worker,
        }
    }
}

/// Arguments of `rtq2_write_many` (revision 10): the chunk writes and
/// completes of one worker's slots in one call, applied in order (a
/// task's chunk writes before its complete), each answered as its own
/// `rtq2_chunk` or `rtq2_complete` would have been. One invalid write
/// refuses the whole call and nothing is written. The worker id of the
/// first write is sent for all.
#[derive(Clone, Debug)]
pub struct WriteMany<'a> {
    /// The writes, 1 to [`MAX_COMPLETE_BATCH`], all of one worker.
    pub writes: &'a [SlotWrite<'a>],
}

/// What `rtq2_write_many` answered for one write.
#[derive(Clone, Debug, PartialEq)]
pub enum SlotWriteReply {
    /// A chunk write's answer.
    Chunks(ChunkReply),
    /// A complete's answer.
    Complete(CompleteReply),
}

impl WriteMany<'_> {
    /// Sorts the replies (one per write, each of `rtq2_complete`'s
    /// shape) by the kind of write they answer.
    ///
    /// # Errors
    /// [`Error::Protocol`] when there is not one reply per write.
    pub fn sort_replies(&self, replies: Vec<CompleteReply>) -> Result<Vec<SlotWriteReply>, Error> {
        if replies.len() != self.writes.len() {
            return Err(Error::Protocol(format!(
                "{} answered {} replies for {} writes",
                Self::NAME,
                replies.len(),
                self.writes.len()
            )));
        }
        Ok(self
            .writes
            .iter()
            .zip(replies)
            .map(|(w, r)| match w {
                SlotWrite::Chunks(_) => SlotWriteReply::Chunks(ChunkReply {
                    status: r.status,
                    chunks: r.chunks,
                    state: r.state,
                }),
                SlotWrite::Complete(_) => SlotWriteReply::Complete(r),
            })
            .collect())
    }
}

impl Function for WriteMany<'_> {
    const NAME: &'static str = "rtq2_write_many";
    type Reply = Vec<CompleteReply>;

    fn write_args(&self, cmd: &mut Cmd) {
        cmd.arg(self.writes.first().map_or("", SlotWrite::worker))
            .arg(self.writes.len());
        for w in self.writes {
            match w {
                SlotWrite::Complete(c) => write_completion_group(cmd, c),
                SlotWrite::Chunks(c) => {
                    cmd.arg(c.id)
                        .arg(c.attempt)
                        .arg(c.seq0)
                        .arg("chunks")
                        .arg("")
                        .arg("0")
                        .arg(c.chunks.len());
                    for chunk in c.chunks {
                        cmd.arg(chunk.as_slice());
                    }
                }
            }
        }
    }

    fn decode(reply: Value) -> Result<Vec<CompleteReply>, Error> {
        decode_groups(reply, Self::NAME)
    }
}
