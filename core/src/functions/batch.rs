//! Coalesced calls (`rtq2_submit_many`, `rtq2_complete_many`,
//! `rtq2_write_many`): the queue loop that gathers callers into batches,
//! and the answer of a call sorted for the callers that joined it. The
//! client's submit batcher and the worker's coalescer share both.

use std::future::Future;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::error::Error;

/// A caller waiting in a coalescing queue.
pub(crate) trait Waiter {
    /// Payload bytes it adds to a batch.
    fn bytes(&self) -> usize;
    /// True when the caller gave up (its future was dropped): it is not
    /// called for.
    fn gave_up(&self) -> bool;
}

/// The limits of one coalescing queue.
pub(crate) struct BatchLimits {
    /// Calls in flight at once before callers wait and coalesce.
    pub(crate) in_flight: usize,
    /// Callers one call carries at most.
    pub(crate) len: usize,
    /// Payload bytes one call carries at most (a bigger caller goes alone).
    pub(crate) bytes: usize,
}

/// Runs a coalescing queue until every sender is dropped and every call
/// is done: while `limits.in_flight` calls are in flight callers wait;
/// then everyone waiting (within the limits, in order) goes to `send` as
/// one batch. At low load a caller is sent at once, alone.
pub(crate) async fn coalesce<W, F, Fut>(
    mut rx: mpsc::UnboundedReceiver<W>,
    limits: BatchLimits,
    mut send: F,
) where
    W: Waiter,
    F: FnMut(Vec<W>) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut in_flight = FuturesUnordered::new();
    let mut carry: Option<W> = None;
    let mut open = true;
    while open || carry.is_some() || !in_flight.is_empty() {
        tokio::select! {
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            first = next(&mut carry, &mut rx), if (open || carry.is_some()) && in_flight.len() < limits.in_flight => {
                let Some(first) = first else {
                    open = false;
                    continue;
                };
                if first.gave_up() {
                    continue;
                }
                let mut bytes = first.bytes();
                let mut batch = vec![first];
                while batch.len() < limits.len {
                    let Ok(more) = rx.try_recv() else { break };
                    if more.gave_up() {
                        continue;
                    }
                    if bytes + more.bytes() > limits.bytes {
                        carry = Some(more);
                        break;
                    }
                    bytes += more.bytes();
                    batch.push(more);
                }
                in_flight.push(send(batch));
            }
        }
    }
}

/// The caller carried over from the last batch, else the next to arrive.
async fn next<W>(carry: &mut Option<W>, rx: &mut mpsc::UnboundedReceiver<W>) -> Option<W> {
    match carry.take() {
        Some(w) => Some(w),
        None => rx.recv().await,
    }
}

/// What each caller of a coalesced call learns.
pub(crate) enum BatchAnswer<R> {
    /// One reply per caller, in the order they joined.
    Each(Vec<R>),
    /// The call may or may not have been applied (a lost answer, or a
    /// reply of the wrong length): every caller gets a copy of this error
    /// and resolves its own uncertainty.
    Uncertain(Error),
    /// Redis refused the call, so nothing of it was applied: the callers
    /// may go alone.
    Refused(Error),
}

/// Sorts `replies` of a coalesced `function` call made for `callers`
/// callers (`unit` names them in the error, e.g. "tasks").
pub(crate) fn batch_answer<R>(
    replies: Result<Vec<R>, Error>,
    callers: usize,
    function: &str,
    unit: &str,
) -> BatchAnswer<R> {
    match replies {
        Ok(replies) if replies.len() == callers => BatchAnswer::Each(replies),
        Ok(replies) => BatchAnswer::Uncertain(Error::Protocol(format!(
            "{function} answered {} replies for {callers} {unit}",
            replies.len()
        ))),
        Err(e) if e.is_retryable() && !matches!(e, Error::OutOfMemory(_)) => {
            BatchAnswer::Uncertain(e)
        }
        Err(e) => BatchAnswer::Refused(e),
    }
}

/// The same failure for each caller of a batch (`Error` is not `Clone`).
pub(crate) fn copy_error(e: &Error) -> Error {
    match e {
        Error::Redis(r) => Error::Redis(r.clone()),
        other => Error::Protocol(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_each_callers_only_when_there_is_one_per_caller() {
        assert!(matches!(
            batch_answer(Ok(vec![1, 2]), 2, "f", "tasks"),
            BatchAnswer::Each(v) if v == [1, 2]
        ));
        match batch_answer(Ok(vec![1]), 2, "f", "tasks") {
            BatchAnswer::Uncertain(Error::Protocol(m)) => {
                assert_eq!(m, "f answered 1 replies for 2 tasks")
            }
            _ => panic!("a short reply is uncertain"),
        }
        let lost = Error::Redis(redis::RedisError::from(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert!(matches!(
            batch_answer::<u8>(Err(lost), 2, "f", "tasks"),
            BatchAnswer::Uncertain(Error::Redis(_))
        ));
        assert!(matches!(
            batch_answer::<u8>(Err(Error::OutOfMemory("oom".into())), 2, "f", "tasks"),
            BatchAnswer::Refused(Error::OutOfMemory(_))
        ));
        assert!(matches!(
            batch_answer::<u8>(Err(Error::InvalidInput("bad".into())), 2, "f", "tasks"),
            BatchAnswer::Refused(_)
        ));
    }
}
