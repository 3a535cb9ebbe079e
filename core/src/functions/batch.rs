//! The answer of a coalesced call (`rtq2_submit_many`,
//! `rtq2_complete_many`) sorted for the callers that joined it: the
//! client's submit batcher and the worker's completer share it.

use crate::error::Error;

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
