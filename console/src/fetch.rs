//! The background fetcher: the only part of the console that talks to
//! Redis. It reads what the current view needs every refresh (or at once
//! after an action or a view change), one kind after another, so at most
//! one read of each kind is ever in flight and the UI never waits on the
//! network. It also runs operator actions. After a connection loss it keeps
//! trying; the UI keeps the last data, marked stale.

use std::time::Duration;

use rtq_core::admin::Admin;
use rtq_core::{Client, ClientConfig, Error};
use tokio::sync::{mpsc, watch};

use crate::model::{DetailData, Fetched, NodesData, QueueRow, TaskTab, TasksData};

/// What the UI currently needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Selected queue.
    pub queue: Option<String>,
    /// Read workers of the selected queue.
    pub nodes: bool,
    /// Read a page of tasks of the selected queue.
    pub tasks: Option<(TaskTab, usize, usize)>,
    /// Read this task in detail.
    pub detail: Option<String>,
}

/// An operator action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Requeue tasks.
    Requeue(String, Vec<String>),
    /// Cancel tasks.
    Cancel(String, Vec<String>),
    /// Change tasks' priority by a step.
    Priority(String, Vec<(String, i16)>),
    /// Pause (true) or resume a queue.
    Pause(String, bool),
    /// Set a queue's max depth.
    MaxDepth(String, u64),
    /// Cancel all pending tasks of a queue.
    Purge(String),
}

/// Stats window of the queues view: 30 buckets of 10 s.
const STATS_BUCKETS: usize = 30;
/// Chunks shown in the detail view's live tail.
const TAIL_CHUNKS: usize = 40;

/// Reads the queues view data: two pipelined round trips after the queue
/// list, whatever the number of queues.
///
/// # Errors
/// Redis errors.
pub async fn queues(admin: &Admin) -> Result<Fetched, Error> {
    let dashboard = admin.dashboard(STATS_BUCKETS).await?;
    // On a cluster, which master holds each queue (one more round trip;
    // none on a single node). Best effort: the rows show without it.
    let names: Vec<String> = dashboard.iter().map(|(o, _)| o.name.clone()).collect();
    let mut nodes = admin.queue_nodes(&names).await.unwrap_or_default();
    let rows: Vec<QueueRow> = dashboard
        .into_iter()
        .map(|(overview, stats)| QueueRow {
            node: nodes.remove(&overview.name),
            overview,
            stats,
        })
        .collect();
    let now_ms = rows.first().map_or(0, |r| r.overview.now_ms);
    Ok(Fetched::Queues { rows, now_ms })
}

/// Reads the nodes view data.
///
/// # Errors
/// Redis errors.
pub async fn nodes(admin: &Admin, queue: &str) -> Result<Fetched, Error> {
    let now_ms = admin.overview(queue).await?.now_ms;
    Ok(Fetched::Nodes(NodesData {
        queue: queue.to_string(),
        now_ms,
        workers: admin.workers(queue).await?,
    }))
}

/// Endings scanned for the failures tab (Redis keeps about the last 1000).
pub const FAILURE_SCAN: usize = 1000;

/// Reads one page of the tasks view.
///
/// # Errors
/// Redis errors.
pub async fn tasks(
    admin: &Admin,
    queue: &str,
    tab: TaskTab,
    offset: usize,
    page: usize,
) -> Result<Fetched, Error> {
    let overview = admin.overview(queue).await?;
    let workers = admin.workers(queue).await?;
    let dead_workers = workers
        .iter()
        .filter(|w| w.lease_until_ms.is_none_or(|l| l <= overview.now_ms))
        .map(|w| w.id.clone())
        .collect();
    let mut groups = Vec::new();
    let (tasks, total) = match tab {
        TaskTab::Pending => (
            admin.pending(queue, offset, page).await?,
            overview.pending as usize,
        ),
        TaskTab::Running => {
            let all = admin.running(queue).await?;
            let total = all.len();
            (all.into_iter().skip(offset).take(page).collect(), total)
        }
        TaskTab::Failures => {
            groups = crate::failures::group(&admin.recent_failures(queue, FAILURE_SCAN).await?);
            (Vec::new(), groups.len())
        }
        TaskTab::Recent => {
            let page_tasks = admin.recent(queue, offset, page).await?;
            let total = offset + page_tasks.len() + usize::from(page_tasks.len() == page);
            (page_tasks, total)
        }
    };
    Ok(Fetched::Tasks(TasksData {
        queue: queue.to_string(),
        tab,
        offset,
        total,
        now_ms: overview.now_ms,
        tasks,
        dead_workers,
        groups,
    }))
}

/// Reads one task in detail.
///
/// # Errors
/// Redis errors, [`Error::NotFound`].
pub async fn detail(admin: &Admin, queue: &str, id: &str) -> Result<Fetched, Error> {
    let now_ms = admin.overview(queue).await?.now_ms;
    let info = admin.task(queue, id).await?;
    let tail = admin
        .tail(queue, id, TAIL_CHUNKS)
        .await?
        .into_iter()
        .map(|c| String::from_utf8_lossy(&c).into_owned())
        .collect();
    Ok(Fetched::Detail(Box::new(DetailData {
        queue: queue.to_string(),
        now_ms,
        info,
        tail,
    })))
}

/// [`detail`], with a task that does not exist as
/// [`Fetched::TaskMissing`] instead of an error.
///
/// # Errors
/// Redis errors.
pub async fn detail_or_missing(admin: &Admin, queue: &str, id: &str) -> Result<Fetched, Error> {
    match detail(admin, queue, id).await {
        Err(Error::NotFound { .. }) => Ok(Fetched::TaskMissing {
            queue: queue.to_string(),
            id: id.to_string(),
        }),
        other => other,
    }
}

/// Performs an action; returns the message for the status line.
///
/// # Errors
/// The first error met.
pub async fn perform(admin: &Admin, action: &Action) -> Result<String, Error> {
    Ok(match action {
        Action::Requeue(q, ids) => {
            for id in ids {
                admin.requeue(q, id).await?;
            }
            format!("requeued {} task(s)", ids.len())
        }
        Action::Cancel(q, ids) => {
            let mut ended = 0;
            for id in ids {
                if !admin.cancel(q, id).await?.is_terminal() {
                    ended += 1;
                }
            }
            format!(
                "cancelled {ended} task(s) ({} already ended)",
                ids.len() - ended
            )
        }
        Action::Priority(q, changes) => {
            for (id, p) in changes {
                admin.set_priority(q, id, *p).await?;
            }
            format!("priority changed for {} task(s)", changes.len())
        }
        Action::Pause(q, true) => {
            admin.pause(q, true).await?;
            format!("paused {q}")
        }
        Action::Pause(q, false) => {
            let n = admin.pause(q, false).await?;
            format!("resumed {q} ({n} dispatched)")
        }
        Action::MaxDepth(q, d) => {
            admin.set_max_depth(q, *d).await?;
            format!("max depth of {q} set to {d}")
        }
        Action::Purge(q) => format!("purged {} pending task(s) from {q}", admin.purge(q).await?),
    })
}

/// Reads the plan's data, in order; returns the names of the queues seen.
async fn read_all(
    admin: &Admin,
    plan: &Plan,
    tx: &mpsc::Sender<Fetched>,
) -> Result<Vec<String>, Error> {
    let listed = queues(admin).await?;
    let names = match &listed {
        Fetched::Queues { rows, .. } => rows.iter().map(|r| r.overview.name.clone()).collect(),
        _ => Vec::new(),
    };
    let _ = tx.send(listed).await;
    let Some(q) = &plan.queue else {
        return Ok(names);
    };
    if plan.nodes {
        let _ = tx.send(nodes(admin, q).await?).await;
    }
    if let Some((tab, offset, page)) = plan.tasks {
        let _ = tx.send(tasks(admin, q, tab, offset, page).await?).await;
    }
    if let Some(id) = &plan.detail {
        let _ = tx.send(detail_or_missing(admin, q, id).await?).await;
    }
    Ok(names)
}

/// One round of housekeeping on every listed queue, concurrently: a queue
/// whose workers all died and whose clients only fire and forget still
/// gets its dead workers reaped and its overdue tasks ended while someone
/// watches it.
async fn housekeep(admin: &Admin, queues: &[String]) {
    let rounds = queues.iter().map(|q| admin.housekeeping(q));
    for (q, r) in queues.iter().zip(futures::future::join_all(rounds).await) {
        if let Err(e) = r {
            tracing::debug!(queue = %q, error = %e, "housekeeping failed");
        }
    }
}

/// The server check's findings, as status-line messages.
async fn check_server(client: &Client) -> Vec<String> {
    match client.server_report().await {
        Ok(report) => report
            .concerns()
            .into_iter()
            .map(|c| format!("Redis server: {}", c.message))
            .collect(),
        Err(e) => vec![format!("could not check the Redis server: {e}")],
    }
}

/// Runs until `tx` closes: reads every `refresh` (or on a plan change) and
/// performs actions as they arrive. `config` carries the TLS settings.
pub async fn run(
    url: String,
    config: ClientConfig,
    read_only: bool,
    refresh: Duration,
    mut plan: watch::Receiver<Plan>,
    mut actions: mpsc::Receiver<Action>,
    tx: mpsc::Sender<Fetched>,
) {
    let mut admin: Option<Admin> = None;
    loop {
        if admin.is_none() {
            let config = config.clone().give_up_after(Duration::from_secs(3));
            match Client::connect_with(&url, config).await {
                Ok(c) => {
                    for concern in check_server(&c).await {
                        if tx.send(Fetched::ActionDone(concern, true)).await.is_err() {
                            return;
                        }
                    }
                    admin = Some(Admin::new(&c));
                }
                Err(e) => {
                    if tx.send(Fetched::Failed(e.to_string())).await.is_err() {
                        return;
                    }
                }
            }
        }
        if let Some(a) = &admin {
            let current = plan.borrow_and_update().clone();
            match read_all(a, &current, &tx).await {
                Ok(names) if !read_only => housekeep(a, &names).await,
                Ok(_) => {}
                Err(e) => {
                    if tx.send(Fetched::Failed(e.to_string())).await.is_err() {
                        return;
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(refresh) => {}
            changed = plan.changed() => if changed.is_err() { return },
            action = actions.recv() => {
                let Some(action) = action else { return };
                let msg = match &admin {
                    Some(a) => match perform(a, &action).await {
                        Ok(m) => Fetched::ActionDone(m, false),
                        Err(e) => Fetched::ActionDone(format!("failed: {e}"), true),
                    },
                    None => Fetched::ActionDone("not connected to Redis".into(), true),
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
            _ = tx.closed() => return,
        }
    }
}
