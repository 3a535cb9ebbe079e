//! Redis's clock as seen from this machine: deadlines of stream entries
//! are in ms of Redis time; the worker turns them into local instants with
//! the offset measured by `TIME` at start and with every beat (kept in
//! [`WorkerStatus`]'s clock offset, which the status reports use too).

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::connection::RedisConnection;
use crate::error::Error;
use crate::worker::config::{local_now_ms, WorkerStatus};

/// Measures Redis time minus local time (ms) and stores it in `status`;
/// returns Redis's time in ms.
///
/// # Errors
/// Connection errors; [`Error::Protocol`] for an unreadable reply.
pub(crate) async fn sync(conn: &RedisConnection, status: &WorkerStatus) -> Result<i64, Error> {
    let before = local_now_ms();
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut conn.clone()).await?;
    let after = local_now_ms();
    let redis_ms = secs
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(micros / 1000))
        .ok_or_else(|| Error::Protocol(format!("TIME replied {secs} {micros}")))?;
    let offset = redis_ms - (before + (after - before) / 2);
    status.clock_offset_ms.store(offset, Ordering::Release);
    Ok(redis_ms)
}

/// Redis's time now, as estimated from the last [`sync`].
pub(crate) fn redis_now_ms(status: &WorkerStatus) -> i64 {
    local_now_ms() + status.clock_offset_ms.load(Ordering::Acquire)
}

/// Time left until `deadline_ms` (Redis time); `None` once it passed.
pub(crate) fn left(status: &WorkerStatus, deadline_ms: u64) -> Option<Duration> {
    let left = i64::try_from(deadline_ms)
        .unwrap_or(i64::MAX)
        .saturating_sub(redis_now_ms(status));
    (left > 0).then(|| Duration::from_millis(left as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_is_measured_on_redis_time() {
        let status = WorkerStatus::default();
        status.clock_offset_ms.store(10_000, Ordering::Release);
        let now = redis_now_ms(&status) as u64;
        assert_eq!(left(&status, now.saturating_sub(1)), None);
        let l = left(&status, now + 5_000).expect("in the future");
        assert!(l <= Duration::from_secs(5) && l > Duration::from_secs(4));
        status.clock_offset_ms.store(-10_000, Ordering::Release);
        assert!(
            left(&status, now + 5_000).expect("in the future") > Duration::from_secs(14),
            "a Redis clock behind ours leaves more time"
        );
    }
}
