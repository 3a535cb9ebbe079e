//! Durable submits: the submit and a `WAIT 1 <ms>` in one pipeline on the
//! queue's master, so the submit is acknowledged only once a replica holds
//! the task. With asynchronous replication (Redis's only kind), a plain
//! acknowledged submit can be lost when its master crashes before
//! replicating it; a durable one survives a failover to the replica that
//! acknowledged it.
//!
//! `WAIT` blocks the connection it runs on until a replica acknowledges or
//! the timeout passes; on the client's shared connection, commands queued
//! behind it wait too. With healthy replicas that is a fraction of a
//! millisecond; with none, every durable submit costs its whole timeout.

use std::time::Duration;

use redis::Value;

use crate::connection::RedisConnection;
use crate::error::Error;
use crate::functions::{self, Function};
use crate::keys::QueueKeys;
use crate::protocol::value_to_i64;

/// Calls `function` on `keys` followed by `WAIT 1 <wait>` on the same node
/// and connection; returns its reply and how many replicas acknowledged
/// (`WAIT`'s answer). Loads the library and retries once if it is
/// missing.
///
/// # Errors
/// As [`functions::call`].
pub(crate) async fn call_replicated<F: Function>(
    conn: &mut RedisConnection,
    keys: &QueueKeys,
    function: &F,
    wait: Duration,
) -> Result<(F::Reply, u64), Error> {
    let mut pipe = redis::pipe();
    pipe.add_command(functions::command(keys, function))
        .cmd("WAIT")
        .arg(1)
        .arg(wait.as_millis().clamp(1, u128::from(u32::MAX)) as u64);
    pipe.ignore_errors();
    let mut loaded = false;
    loop {
        let values: Vec<Value> = pipe.query_async(conn).await?;
        let mut values = values.into_iter();
        let reply = values.next().unwrap_or(Value::Nil);
        let acked = values.next().map_or(0, |v| value_to_i64(&v)).max(0) as u64;
        if let Value::ServerError(e) = reply {
            let e = redis::RedisError::from(e);
            if !loaded && functions::is_library_missing(&e) {
                loaded = true;
                crate::cluster::ensure_loaded(conn).await?;
                continue;
            }
            return Err(functions::name_error(
                e.into(),
                F::NAME,
                keys.name(),
                function.task_id(),
            ));
        }
        return Ok((F::decode(reply)?, acked));
    }
}
