//! Pages of tasks for lists: the fields a list shows (`HMGET`), never the
//! result, and the submitted spec (for its labels) only when it is small,
//! so a page of 50 tasks whose inputs and results are megabytes costs
//! kilobytes. Running tasks are paged on the server side: only the workers
//! whose tasks fall in the page are listed.

use std::collections::HashMap;

use redis::Value;

use super::{Admin, QueueMode};
use crate::client::TaskInfo;
use crate::error::Error;
use crate::keys::QueueKeys;

/// The task fields a list reads (everything but `spec`, `res` and the
/// errors of earlier attempts).
const SUMMARY_FIELDS: &[&str] = &[
    "v", "st", "pri", "att", "fails", "max", "w", "sub", "dl", "start", "fc", "lc", "fin", "nc",
    "nb", "ek", "err", "due",
];

/// Specs up to this size are read for their labels; a bigger one (an
/// inline input of megabytes) is left out and its labels are not shown.
pub const LABELS_SPEC_MAX: usize = 4096;

/// A page of the tasks owned by workers.
#[derive(Clone, Debug, Default)]
pub struct RunningPage {
    /// The page, by worker id then task id.
    pub tasks: Vec<TaskInfo>,
    /// Tasks owned by all workers.
    pub total: usize,
    /// Every registered worker and its lease expiry (ms, Redis clock).
    pub leases: Vec<(String, i64)>,
}

impl Admin {
    /// Summaries of tasks (see the module doc) in two pipelined round
    /// trips; tasks that do not exist or cannot be decoded are left out.
    /// Done tasks carry a `null` result: read the task for its result.
    ///
    /// # Errors
    /// Redis errors, invalid names.
    pub async fn task_summaries(
        &self,
        queue: &str,
        ids: &[String],
    ) -> Result<Vec<TaskInfo>, Error> {
        let k = QueueKeys::new(queue)?;
        summaries(self, &k, ids).await
    }

    /// A page of pending tasks in hand-out order, as summaries (on a
    /// stream queue, as [`Admin::pending`]: read from the entries).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn pending_page(
        &self,
        queue: &str,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<TaskInfo>, Error> {
        let k = QueueKeys::new(queue)?;
        if let QueueMode::Stream { bands } = self.mode_of(&k).await? {
            return self.stream_pending(&k, bands, offset, limit).await;
        }
        let ids = self.pending_ids(&k, offset, limit).await?;
        summaries(self, &k, &ids).await
    }

    /// A page of recently ended tasks, newest first, as summaries (see
    /// [`Admin::recent`]).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn recent_page(
        &self,
        queue: &str,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<TaskInfo>, Error> {
        let k = QueueKeys::new(queue)?;
        let ids = self.recent_ids(&k, offset, limit).await?;
        summaries(self, &k, &ids).await
    }

    /// A page of the tasks owned by workers (running, or in an inbox),
    /// ordered by worker id then task id: the workers' task counts are
    /// read, then the members of only the workers the page covers, then
    /// the page's summaries. On a stream queue: the entries its consumer
    /// group holds (up to 1,000 per band read, specs included), the
    /// workers of its live set.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn running_page(
        &self,
        queue: &str,
        offset: usize,
        limit: usize,
    ) -> Result<RunningPage, Error> {
        let k = QueueKeys::new(queue)?;
        if let QueueMode::Stream { bands } = self.mode_of(&k).await? {
            let read = self.stream_running_of(&k, bands).await?;
            let total = read.held.iter().map(|(_, n)| *n as usize).sum();
            let tasks = read.tasks().into_iter().skip(offset).take(limit).collect();
            return Ok(RunningPage {
                tasks,
                total,
                leases: read.live,
            });
        }
        let leases = self.worker_leases(queue).await?;
        let counts: Vec<i64> = if leases.is_empty() {
            Vec::new()
        } else {
            let mut pipe = redis::pipe();
            for (w, _) in &leases {
                pipe.scard(k.worker_tasks(w));
            }
            pipe.query_async(&mut self.conn.clone()).await?
        };
        let total: usize = counts.iter().map(|n| (*n).max(0) as usize).sum();
        // The workers whose tasks overlap [offset, offset + limit).
        let mut covering = Vec::new();
        let end = offset.saturating_add(limit);
        let mut start = 0usize;
        for ((w, _), n) in leases.iter().zip(&counts) {
            let n = (*n).max(0) as usize;
            if n > 0 && start + n > offset && start < end {
                covering.push((w.clone(), start));
            }
            start += n;
        }
        let mut ids = Vec::new();
        if !covering.is_empty() {
            let mut pipe = redis::pipe();
            for (w, _) in &covering {
                pipe.smembers(k.worker_tasks(w));
            }
            let members: Vec<Vec<String>> = pipe.query_async(&mut self.conn.clone()).await?;
            for ((_, first), mut tasks) in covering.iter().zip(members) {
                tasks.sort();
                for (i, id) in tasks.into_iter().enumerate() {
                    let at = first + i;
                    if at >= offset && at < end {
                        ids.push(id);
                    }
                }
            }
        }
        Ok(RunningPage {
            tasks: summaries(self, &k, &ids).await?,
            total,
            leases,
        })
    }

    /// Registered workers and their lease expiry (ms, Redis clock), by id:
    /// one `ZRANGE`, without their heartbeat fields.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn worker_leases(&self, queue: &str) -> Result<Vec<(String, i64)>, Error> {
        let k = QueueKeys::new(queue)?;
        let workers: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(k.workers())
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(workers.into_iter().map(|(w, s)| (w, s as i64)).collect())
    }
}

/// Ids of the workers whose lease has expired at `now_ms`.
pub fn expired(leases: &[(String, i64)], now_ms: i64) -> Vec<String> {
    leases
        .iter()
        .filter(|(_, until)| *until <= now_ms)
        .map(|(w, _)| w.clone())
        .collect()
}

async fn summaries(admin: &Admin, k: &QueueKeys, ids: &[String]) -> Result<Vec<TaskInfo>, Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.cmd("HMGET").arg(k.task(id)).arg(SUMMARY_FIELDS);
        pipe.cmd("HSTRLEN").arg(k.task(id)).arg("spec");
    }
    pipe.ignore_errors();
    let replies: Vec<Value> = pipe.query_async(&mut admin.conn.clone()).await?;
    let mut fields = Vec::with_capacity(ids.len());
    let mut small_specs = Vec::new();
    for (i, pair) in replies.chunks(2).enumerate() {
        let values: Vec<Option<Vec<u8>>> =
            redis::from_redis_value(pair[0].clone()).unwrap_or_default();
        let spec_len = pair
            .get(1)
            .and_then(|v| redis::from_redis_value::<usize>(v.clone()).ok())
            .unwrap_or(0);
        if spec_len > 0 && spec_len <= LABELS_SPEC_MAX {
            small_specs.push(i);
        }
        fields.push(values);
    }
    let mut specs: HashMap<usize, String> = HashMap::new();
    if !small_specs.is_empty() {
        let mut pipe = redis::pipe();
        for &i in &small_specs {
            pipe.hget(k.task(&ids[i]), "spec");
        }
        pipe.ignore_errors();
        let replies: Vec<Value> = pipe.query_async(&mut admin.conn.clone()).await?;
        for (&i, v) in small_specs.iter().zip(replies) {
            if let Ok(bytes) = redis::from_redis_value::<Vec<u8>>(v) {
                specs.insert(i, String::from_utf8_lossy(&bytes).into_owned());
            }
        }
    }
    Ok(ids
        .iter()
        .zip(fields)
        .enumerate()
        .filter_map(|(i, (id, values))| {
            let mut h: HashMap<String, String> = SUMMARY_FIELDS
                .iter()
                .zip(values)
                .filter_map(|(f, v)| {
                    Some((f.to_string(), String::from_utf8_lossy(&v?).into_owned()))
                })
                .collect();
            if h.is_empty() {
                return None;
            }
            // The result is not read: a done task carries `null`.
            h.insert("res".into(), "null".into());
            if let Some(spec) = specs.remove(&i) {
                h.insert("spec".into(), spec);
            }
            TaskInfo::from_hash(id, &h).ok()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_workers_are_those_past_their_lease() {
        let leases = [("a".to_string(), 100), ("b".to_string(), 101)];
        assert_eq!(expired(&leases, 100), vec!["a".to_string()]);
        assert!(expired(&leases, 99).is_empty());
        assert!(!SUMMARY_FIELDS.contains(&"spec") && !SUMMARY_FIELDS.contains(&"res"));
    }
}
