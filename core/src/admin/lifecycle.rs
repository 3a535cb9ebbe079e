//! A queue's life cycle for operators: whether it exists, and deleting it
//! (every key and its registry entry), so that a queue created by a typo
//! can be removed again.

use crate::error::Error;
use crate::keys::{QueueKeys, QUEUES};

use super::Admin;

/// Keys asked for per SCAN step while deleting a queue (a hint to Redis;
/// each step is one round trip and one UNLINK).
const DELETE_SCAN_COUNT: u64 = 1000;

/// What [`Admin::delete_queue`] found and removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeletedQueue {
    /// Queue name.
    pub queue: String,
    /// Keys removed (meta, task hashes, outputs, worker data, statistics,
    /// reply streams, ...).
    pub keys: u64,
    /// Tasks that were waiting when it was deleted (non-zero only when
    /// forced).
    pub pending: u64,
    /// Tasks that were owned by workers, live or past their lease (non-zero
    /// only when forced).
    pub running: u64,
    /// Live workers it had (non-zero only when forced).
    pub workers: u64,
}

impl Admin {
    /// True if queue `queue` exists: its meta hash exists, or it is in
    /// the queue registry (a queue listed by a client that never
    /// submitted).
    ///
    /// Operator tools check this before an action that would otherwise
    /// create a queue (pause, max depth, submit), so that a mistyped name
    /// is refused instead of creating a queue.
    ///
    /// The meta hash is read first, with `HGET` (which every role may run
    /// on its queues), so that a least-privilege client asking about its
    /// own queue never needs the registry (which it may not read). A
    /// registry refusal on a queue without meta counts as "no such queue".
    ///
    /// # Errors
    /// [`Error::InvalidName`], Redis errors ([`Error::PermissionDenied`]
    /// for a queue outside the user's key patterns).
    pub async fn queue_exists(&self, queue: &str) -> Result<bool, Error> {
        let k = QueueKeys::new(queue)?;
        let version: Option<String> = redis::cmd("HGET")
            .arg(k.meta())
            .arg("v")
            .query_async(&mut self.conn.clone())
            .await?;
        if version.is_some() {
            return Ok(true);
        }
        let listed: Result<bool, Error> = redis::cmd("SISMEMBER")
            .arg(QUEUES)
            .arg(queue)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(Error::from);
        match listed {
            Err(Error::PermissionDenied(_)) => Ok(false),
            other => other,
        }
    }

    /// Lists queue `queue` in the queue registry (idempotent), so that
    /// consoles and `rtq stats` show it before its first worker starts.
    /// A submit through [`Client::queue`](crate::Client::queue) lists it
    /// too, but in the background: a short-lived process creating a queue
    /// calls this first.
    ///
    /// # Errors
    /// [`Error::InvalidName`], Redis errors.
    pub async fn register_queue(&self, queue: &str) -> Result<(), Error> {
        QueueKeys::new(queue)?;
        let _: i64 = redis::cmd("SADD")
            .arg(QUEUES)
            .arg(queue)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Deletes queue `queue`: every key under its prefix `rtq:{<queue>}:`
    /// and its entry in the queue registry, so it no longer shows anywhere.
    ///
    /// Without `force` it refuses a queue that has pending or running
    /// tasks or live workers ([`Error::QueueInUse`]): those tasks would be
    /// lost and their callers would see [`Error::TaskLost`]. With `force`
    /// it deletes them too; live workers re-create the queue with their
    /// next heartbeat, so stop them first.
    ///
    /// The check and the deletion are separate steps (the keys are found
    /// with SCAN, which no script may run): a task submitted in between is
    /// deleted with the queue. Deleting is idempotent, so a deletion cut
    /// short by a lost connection can simply be run again.
    ///
    /// # Errors
    /// [`Error::UnknownQueue`] if the queue does not exist,
    /// [`Error::QueueInUse`] without `force`, [`Error::InvalidName`],
    /// Redis errors (including [`Error::PermissionDenied`] for a user
    /// without SCAN or UNLINK).
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo() -> Result<(), rtq_core::Error> {
    /// let client = rtq_core::Client::connect("redis://127.0.0.1:6379").await?;
    /// let admin = rtq_core::admin::Admin::new(&client);
    /// let gone = admin.delete_queue("lmm", false).await?;
    /// println!("removed {} keys", gone.keys);
    /// # Ok(()) }
    /// ```
    pub async fn delete_queue(&self, queue: &str, force: bool) -> Result<DeletedQueue, Error> {
        let k = QueueKeys::new(queue)?;
        if !self.queue_exists(queue).await? {
            return Err(Error::UnknownQueue {
                queue: queue.to_string(),
            });
        }
        let o = self.overview(queue).await?;
        // Running counts the tasks of stale workers too (past their lease,
        // not reaped yet): housekeeping would requeue those, so they are
        // work in progress all the same.
        let running: u64 = self
            .workers(queue)
            .await?
            .iter()
            .map(|w| w.tasks.len() as u64)
            .sum();
        if !force && (o.pending > 0 || running > 0 || o.workers_alive > 0) {
            return Err(Error::QueueInUse {
                queue: queue.to_string(),
                pending: o.pending,
                running,
                workers: o.workers_alive,
            });
        }
        // Queue names are [A-Za-z0-9._-] and braces are literal in a glob,
        // so the prefix needs no escaping.
        let pattern = format!("{}*", k.prefix());
        let mut cursor: u64 = 0;
        let mut removed = 0;
        // SCAN has no key: on a cluster it must go to the queue's master.
        let mut node = crate::cluster::SlotConnection::new(&self.conn, &k.meta());
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(DELETE_SCAN_COUNT)
                .query_async(&mut node)
                .await?;
            if !keys.is_empty() {
                let n: u64 = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(&mut self.conn.clone())
                    .await?;
                removed += n;
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        // Last, so that a deletion cut short still lists the queue and can
        // be run again.
        let _: i64 = redis::cmd("SREM")
            .arg(QUEUES)
            .arg(queue)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(DeletedQueue {
            queue: queue.to_string(),
            keys: removed,
            pending: o.pending,
            running,
            workers: o.workers_alive,
        })
    }
}
