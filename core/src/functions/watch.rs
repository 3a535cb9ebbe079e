//! `rtq2_watch`, `rtq2_read` and `rtq2_unwatch`: follow a task from any
//! process (`core/lua/watch.lua`).
//!
//! Both reads come in two shapes: [`Watch`] and [`Read`] take a position
//! in whatever attempt the task is at (the calls every revision accepts);
//! [`ResumeWatch`] and [`ResumeRead`] (revision 13) take a position in a
//! given attempt ([`Held`]) and answer, in the same atomic step, whether
//! that attempt is still the task's ([`Resumed`]).

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
        "OK" => decode_snapshot_fields(function, items).map(Some),
        other => Err(items.unexpected(other)),
    }
}

/// The snapshot's fields after its status word.
fn decode_snapshot_fields(
    function: &'static str,
    mut items: ReplyItems,
) -> Result<TaskSnapshot, Error> {
    let word = items.string()?;
    let state = TaskState::parse(&word)
        .ok_or_else(|| Error::Protocol(format!("{function} replied unknown state {word:?}")))?;
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
    Ok(TaskSnapshot {
        state,
        attempt,
        chunk_count,
        outcome,
        first,
        chunks: items.rest_bytes(),
    })
}

/// The attempt a resume position counts chunks of (`rtq2_watch` ARGV[4],
/// `rtq2_read` ARGV[3]; revision 13).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// The attempt the task is at now (sent as `0`), for a caller that
    /// holds chunks of "the current attempt" without its number: if that
    /// attempt was abandoned since and the task waits to run again, the
    /// answer is [`Resumed::Restarted`]. A task never handed out has no
    /// attempt to abandon: the position counts chunks of the one that
    /// runs first.
    Current,
    /// Attempt `n`, 1 to [`MAX_ATTEMPT_NUMBER`](crate::protocol::MAX_ATTEMPT_NUMBER).
    Attempt(u64),
}

impl Held {
    fn arg(self) -> u64 {
        match self {
            Held::Current => 0,
            Held::Attempt(n) => n,
        }
    }
}

/// Arguments of `rtq2_watch` with a held attempt (revision 13): read from
/// a position in attempt `held`, and subscribe `reply` to later events
/// unless the task ended or never ran that attempt.
#[derive(Clone, Debug)]
pub struct ResumeWatch<'a> {
    /// Task id.
    pub id: &'a str,
    /// The follower's reply stream (this queue's `r:<client>` key).
    pub reply: &'a str,
    /// First chunk index the caller still needs, of attempt `held`.
    pub from: u64,
    /// The attempt `from` counts chunks of.
    pub held: Held,
}

/// Arguments of `rtq2_read` with a held attempt (revision 13): as
/// [`ResumeWatch`], without subscribing (FCALL_RO).
#[derive(Clone, Debug)]
pub struct ResumeRead<'a> {
    /// Task id.
    pub id: &'a str,
    /// First chunk index the caller still needs, of attempt `held`.
    pub from: u64,
    /// The attempt `from` counts chunks of.
    pub held: Held,
}

/// Where a caller holding chunks of one attempt goes on.
#[derive(Clone, Debug, PartialEq)]
pub enum Resumed {
    /// The task does not exist.
    NotFound,
    /// The task never ran the held attempt; nothing was subscribed.
    NoAttempt {
        /// The attempt the task is at (0: never handed out).
        attempt: u64,
    },
    /// The held attempt is the task's: chunks from the position asked.
    /// (Also the attempt a queued task runs next, named at position 0:
    /// the snapshot's attempt is then the one before it.)
    Same(TaskSnapshot),
    /// The held attempt was abandoned: the snapshot's chunks are of attempt
    /// `next`, from chunk 0 (none yet while the task waits to run again).
    Restarted {
        /// The abandoned attempt (the held one; for [`Held::Current`], the
        /// attempt the task was at).
        abandoned: u64,
        /// The attempt whose chunks follow from index 0: the snapshot's
        /// attempt, or the one after it while the task is queued.
        next: u64,
        /// Why `abandoned` was given up, when the task stored it (a lost
        /// worker, a failure to be retried; an operator's requeue stores
        /// none).
        reason: Option<String>,
        /// The task now.
        snapshot: TaskSnapshot,
    },
}

impl Resumed {
    /// The task as read, unless it does not exist or never ran the held
    /// attempt.
    pub fn snapshot(&self) -> Option<&TaskSnapshot> {
        match self {
            Resumed::Same(s) | Resumed::Restarted { snapshot: s, .. } => Some(s),
            Resumed::NotFound | Resumed::NoAttempt { .. } => None,
        }
    }

    /// As [`Resumed::snapshot`], by value.
    pub fn into_snapshot(self) -> Option<TaskSnapshot> {
        match self {
            Resumed::Same(s) | Resumed::Restarted { snapshot: s, .. } => Some(s),
            Resumed::NotFound | Resumed::NoAttempt { .. } => None,
        }
    }

    /// What a library older than revision 13 (which takes no held
    /// attempt) would have answered, decided here from a snapshot read
    /// with [`Watch`] or [`Read`] **from chunk 0** (one atomic read, so
    /// the decision is as sound, only the chunks below `from` travel for
    /// nothing). `from` is the position in the held attempt.
    pub fn classify(held: Held, from: u64, snap: Option<TaskSnapshot>) -> Resumed {
        let Some(mut snap) = snap else {
            return Resumed::NotFound;
        };
        let queued = snap.state == TaskState::Queued;
        let held = match held {
            Held::Current => snap.attempt,
            Held::Attempt(n) => n,
        };
        if held == snap.attempt + 1 && queued && from == 0 {
            // The attempt the task runs next: nothing of it held yet.
            return Resumed::Same(snap);
        }
        if held > snap.attempt {
            return Resumed::NoAttempt {
                attempt: snap.attempt,
            };
        }
        if held == snap.attempt && (snap.attempt == 0 || !queued) {
            let skip = from.saturating_sub(snap.first);
            let skip = usize::try_from(skip)
                .unwrap_or(usize::MAX)
                .min(snap.chunks.len());
            snap.chunks.drain(..skip);
            snap.first = snap.first.max(from);
            return Resumed::Same(snap);
        }
        Resumed::Restarted {
            abandoned: held,
            next: snap.attempt + u64::from(queued),
            reason: None,
            snapshot: snap,
        }
    }
}

/// True for the refusal of a library older than revision 13 to take a
/// held attempt ([`ResumeWatch`], [`ResumeRead`]): nothing was written;
/// read from chunk 0 with [`Watch`] or [`Read`] and [`Resumed::classify`].
pub fn refuses_held(e: &Error) -> bool {
    matches!(e, Error::InvalidInput(m)
        if m.contains("watch takes 3 arguments") || m.contains("read takes 2 arguments"))
}

fn decode_resumed(function: &'static str, reply: Value) -> Result<Resumed, Error> {
    let mut items = ReplyItems::new(reply, function)?;
    let status = items.string()?;
    match status.as_str() {
        "NOT_FOUND" => Ok(Resumed::NotFound),
        "NO_ATTEMPT" => Ok(Resumed::NoAttempt {
            attempt: items.uint()?,
        }),
        "OK" => decode_snapshot_fields(function, items).map(Resumed::Same),
        "RESTARTED" => {
            let abandoned = items.uint()?;
            let next = items.uint()?;
            let reason = Some(items.string()?).filter(|r| !r.is_empty());
            Ok(Resumed::Restarted {
                abandoned,
                next,
                reason,
                snapshot: decode_snapshot_fields(function, items)?,
            })
        }
        other => Err(items.unexpected(other)),
    }
}

impl Function for ResumeWatch<'_> {
    const NAME: &'static str = "rtq2_watch";
    fn task_id(&self) -> Option<&str> {
        Some(self.id)
    }
    type Reply = Resumed;
    fn write_args(&self, cmd: &mut Cmd) {
        cmd.arg(self.id)
            .arg(self.reply)
            .arg(self.from)
            .arg(self.held.arg());
    }
    fn decode(reply: Value) -> Result<Resumed, Error> {
        decode_resumed(Self::NAME, reply)
    }
}

impl Function for ResumeRead<'_> {
    const NAME: &'static str = "rtq2_read";
    fn task_id(&self) -> Option<&str> {
        Some(self.id)
    }
    const READ_ONLY: bool = true;
    type Reply = Resumed;
    fn write_args(&self, cmd: &mut Cmd) {
        cmd.arg(self.id).arg(self.from).arg(self.held.arg());
    }
    fn decode(reply: Value) -> Result<Resumed, Error> {
        decode_resumed(Self::NAME, reply)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(state: TaskState, attempt: u64, chunks: &[&str]) -> Option<TaskSnapshot> {
        Some(TaskSnapshot {
            state,
            attempt,
            chunk_count: chunks.len() as u64,
            outcome: None,
            first: 0,
            chunks: chunks.iter().map(|c| c.as_bytes().to_vec()).collect(),
        })
    }

    #[test]
    fn classify_decides_like_the_library_from_a_read_at_chunk_0() {
        use TaskState::{Queued, Running};
        let same = |r: Resumed| match r {
            Resumed::Same(s) => (s.first, s.chunks),
            other => panic!("expected Same, got {other:?}"),
        };
        // The held attempt runs: from the position.
        let (first, chunks) = same(Resumed::classify(
            Held::Attempt(2),
            1,
            snap(Running, 2, &["a", "b", "c"]),
        ));
        assert_eq!((first, chunks), (1, vec![b"b".to_vec(), b"c".to_vec()]));
        // Past what is stored: nothing yet, from the position.
        let (first, chunks) = same(Resumed::classify(
            Held::Current,
            9,
            snap(Running, 2, &["a"]),
        ));
        assert_eq!((first, chunks.len()), (9, 0));
        // Never handed out: the position counts the first attempt's chunks.
        let (first, _) = same(Resumed::classify(Held::Current, 3, snap(Queued, 0, &[])));
        assert_eq!(first, 3);
        // Abandoned, running again: the new attempt from 0.
        match Resumed::classify(Held::Attempt(1), 5, snap(Running, 3, &["x"])) {
            Resumed::Restarted {
                abandoned: 1,
                next: 3,
                reason: None,
                snapshot,
            } => assert_eq!((snapshot.first, snapshot.chunks.len()), (0, 1)),
            other => panic!("{other:?}"),
        }
        // Abandoned, waiting to run again (also for the current attempt).
        for held in [Held::Attempt(2), Held::Current] {
            assert!(matches!(
                Resumed::classify(held, 5, snap(Queued, 2, &[])),
                Resumed::Restarted {
                    abandoned: 2,
                    next: 3,
                    ..
                }
            ));
        }
        // The attempt a queued task runs next, at position 0 only.
        assert!(matches!(
            Resumed::classify(Held::Attempt(3), 0, snap(Queued, 2, &[])),
            Resumed::Same(_)
        ));
        assert_eq!(
            Resumed::classify(Held::Attempt(3), 1, snap(Queued, 2, &[])),
            Resumed::NoAttempt { attempt: 2 }
        );
        assert_eq!(
            Resumed::classify(Held::Attempt(3), 0, snap(Running, 2, &[])),
            Resumed::NoAttempt { attempt: 2 }
        );
        // Never reached.
        assert_eq!(
            Resumed::classify(Held::Attempt(4), 0, snap(Queued, 2, &[])),
            Resumed::NoAttempt { attempt: 2 }
        );
        assert_eq!(
            Resumed::classify(Held::Attempt(1), 0, None),
            Resumed::NotFound
        );
    }

    #[test]
    fn only_an_older_library_s_arity_refusal_asks_for_the_fallback() {
        let old = |m: &str| Error::InvalidInput(format!("Redis refused the call: {m}"));
        assert!(refuses_held(&old("watch takes 3 arguments")));
        assert!(refuses_held(&old("read takes 2 arguments")));
        assert!(!refuses_held(&old("watch takes 3 or 4 arguments")));
        assert!(!refuses_held(&old(
            "held attempt must be in [0, 4294967295]"
        )));
    }
}
