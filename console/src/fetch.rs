//! The background fetcher: the only part of the console that talks to
//! Redis. It reads what the current view needs every refresh (or at once
//! after an action or a view change), one kind after another, so at most
//! one read of each kind is ever in flight and the UI never waits on the
//! network. It also runs operator actions. After a connection loss it keeps
//! trying; the UI keeps the last data, marked stale.

use std::time::Duration;

use std::collections::HashSet;

use rtq_core::admin::task_pages::expired;
use rtq_core::admin::{Admin, StatsCache};
use rtq_core::{Client, ClientConfig, Error};
use tokio::sync::{mpsc, watch};

use crate::model::{DetailData, Fetched, NodesData, QueueRow, TaskTab, TasksData};

/// What the UI currently needs (by default: the queues view).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Selected queue.
    pub queue: Option<String>,
    /// The queues view is shown: read every queue's summary.
    pub queues: bool,
    /// Queue rows on screen (in the queues view): their whole statistics
    /// are read; the others get counters only. Empty: the first
    /// [`SHOWN_DEFAULT`] queues by name. Changes of this list alone do not
    /// wake the fetcher (see [`Plan::same_reads`]).
    pub shown: Vec<String>,
    /// Read workers of the selected queue.
    pub nodes: bool,
    /// Read a page of tasks of the selected queue.
    pub tasks: Option<(TaskTab, usize, usize)>,
    /// Read this task in detail.
    pub detail: Option<String>,
}

impl Default for Plan {
    fn default() -> Self {
        Self {
            queue: None,
            queues: true,
            shown: Vec::new(),
            nodes: false,
            tasks: None,
            detail: None,
        }
    }
}

impl Plan {
    /// Whether `other` asks for the same reads, the rows on screen aside:
    /// rows moving (a re-sort after new data, a scroll) must not start a
    /// read at once, or a list sorted by a changing value would be re-read
    /// back to back; new rows get their statistics at the next refresh.
    pub fn same_reads(&self, other: &Plan) -> bool {
        Plan {
            shown: Vec::new(),
            ..self.clone()
        } == Plan {
            shown: Vec::new(),
            ..other.clone()
        }
    }
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
    /// Delete ended tasks (their hash, output and result).
    Delete(String, Vec<String>),
    /// Find every task of a list that passes a filter (not only the page
    /// shown), to mark them: queue, list, filter text.
    Match(String, TaskTab, String),
}

/// Tasks a [`Action::Match`] scans at most (in pages of [`MATCH_PAGE`]).
pub const MATCH_SCAN: usize = 20_000;
/// Task summaries read per round trip while matching.
const MATCH_PAGE: usize = 500;

/// Ids of the tasks of a list that pass `filter`, up to [`MATCH_SCAN`]
/// scanned, and how many were scanned.
///
/// # Errors
/// Redis errors.
pub async fn matching(
    admin: &Admin,
    queue: &str,
    tab: TaskTab,
    filter: &str,
) -> Result<(Vec<String>, usize), Error> {
    let filter = crate::filter::Filter::parse(filter);
    let mut ids = Vec::new();
    let mut scanned = 0;
    if tab == TaskTab::Failures {
        let failed = admin.recent_failures(queue, FAILURE_SCAN).await?;
        scanned = failed.len();
        ids.extend(
            failed
                .iter()
                .filter(|t| filter.matches_task(t))
                .map(|t| t.id.clone()),
        );
        return Ok((ids, scanned));
    }
    while scanned < MATCH_SCAN {
        let page = match tab {
            TaskTab::Pending => admin.pending_page(queue, scanned, MATCH_PAGE).await?,
            TaskTab::Running => admin.running_page(queue, scanned, MATCH_PAGE).await?.tasks,
            _ => admin.recent_page(queue, scanned, MATCH_PAGE).await?,
        };
        let n = page.len();
        scanned += n;
        ids.extend(
            page.iter()
                .filter(|t| filter.matches_task(t))
                .map(|t| t.id.clone()),
        );
        if n < MATCH_PAGE {
            break;
        }
    }
    Ok((ids, scanned))
}

/// Stats window of the queues view: 30 buckets of 10 s.
const STATS_BUCKETS: usize = 30;
/// Chunks shown in the detail view's live tail.
const TAIL_CHUNKS: usize = 40;
/// Rows whose statistics are read in whole when the UI has not said which
/// rows it shows (the first read, tests, scripts).
pub const SHOWN_DEFAULT: usize = 60;
/// At most this many shown rows get whole statistics (a very tall terminal).
const SHOWN_MAX: usize = 200;
/// Rows off screen whose counters are re-read per refresh, in turn: with
/// 10,000 queues each one's failure share is at most 40 refreshes old.
pub const COUNTER_SLICE: usize = 256;
/// Queues with stale workers housekept per refresh besides the shown ones.
const HOUSEKEEP_STALE_MAX: usize = 64;

/// What the fetcher remembers between refreshes: closed statistics
/// buckets, whose turn it is for counters, and which Redis answered.
#[derive(Debug, Default)]
pub struct Reader {
    /// Closed buckets already read.
    pub stats: StatsCache,
    /// Position of the next counters slice among the rows off screen.
    turn: usize,
    /// Whether Redis restarted and lost the queues.
    pub server: crate::lost::ServerWatch,
}

impl Reader {
    /// A reader with nothing cached.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the queues view: every queue's summary (two round trips
    /// whatever the number of queues), the whole statistics of the rows
    /// `shown` (closed buckets from the cache), counters of a slice of the
    /// other rows (for their colour and sort order).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn queues(&mut self, admin: &Admin, shown: &[String]) -> Result<Fetched, Error> {
        self.stats.new_refresh();
        let overviews = admin.summaries().await?;
        let now_ms = overviews.first().map_or(0, |o| o.now_ms);
        let names: Vec<&str> = overviews.iter().map(|o| o.name.as_str()).collect();
        let known: HashSet<&str> = names.iter().copied().collect();
        self.stats.retain(&known);
        let full_names: Vec<String> = if shown.is_empty() {
            names
                .iter()
                .take(SHOWN_DEFAULT)
                .map(|n| n.to_string())
                .collect()
        } else {
            shown
                .iter()
                .filter(|n| known.contains(n.as_str()))
                .take(SHOWN_MAX)
                .cloned()
                .collect()
        };
        let mut full = self
            .stats
            .read_full(admin, &full_names, STATS_BUCKETS, now_ms)
            .await?;
        let in_full: HashSet<&str> = full_names.iter().map(String::as_str).collect();
        let others: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| !in_full.contains(n))
            .collect();
        if !others.is_empty() {
            let start = self.turn % others.len();
            let slice: Vec<String> = others
                .iter()
                .cycle()
                .skip(start)
                .take(COUNTER_SLICE.min(others.len()))
                .map(|n| n.to_string())
                .collect();
            self.turn = start + slice.len();
            self.stats.read_counters(admin, &slice, now_ms).await?;
        }
        // On a cluster, which master holds each queue (one more round trip;
        // none on a single node). Best effort: the rows show without it.
        let all: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut nodes = admin.queue_nodes(&all).await.unwrap_or_default();
        let rows: Vec<QueueRow> = overviews
            .into_iter()
            .map(|overview| {
                let (stats, stats_full) = match full.remove(&overview.name) {
                    Some(s) => (s, true),
                    None => (
                        self.stats
                            .counters(&overview.name, now_ms)
                            .unwrap_or_default(),
                        false,
                    ),
                };
                QueueRow {
                    node: nodes.remove(&overview.name),
                    overview,
                    stats,
                    stats_full,
                }
            })
            .collect();
        Ok(Fetched::Queues { rows, now_ms })
    }
}

/// Reads the queues view data afresh (nothing cached): every queue's
/// summary, the whole statistics of the first [`SHOWN_DEFAULT`] queues.
///
/// # Errors
/// Redis errors.
pub async fn queues(admin: &Admin) -> Result<Fetched, Error> {
    Reader::new().queues(admin, &[]).await
}

/// Events shown in the nodes view's event tail.
pub const EVENT_TAIL: usize = 50;

/// Reads the nodes view data: workers, workers departed in the last 10
/// minutes, the latest events.
///
/// # Errors
/// Redis errors.
pub async fn nodes(admin: &Admin, queue: &str) -> Result<Fetched, Error> {
    let now_ms = admin.overview(queue).await?.now_ms;
    // Departed workers and the event tail are best effort, as Redis
    // writes them: a foreign key there (a Redis error) empties them and
    // never hides the live workers.
    let departed = admin.departed_workers(queue).await.or_else(best_effort)?;
    let events = admin.events(queue, EVENT_TAIL).await.or_else(best_effort)?;
    Ok(Fetched::Nodes(NodesData {
        queue: queue.to_string(),
        now_ms,
        workers: admin.workers(queue).await?,
        departed,
        events,
    }))
}

/// An optional read's Redis error (a key of the wrong type) as nothing
/// read; other errors (the connection) as they are.
fn best_effort<T: Default>(e: Error) -> Result<T, Error> {
    match e {
        Error::Redis(r) if !r.is_io_error() && !r.is_connection_dropped() => {
            tracing::warn!(error = %r, "an optional read of the nodes view failed; shown empty");
            Ok(T::default())
        }
        other => Err(other),
    }
}

/// Endings scanned for the failures tab (Redis keeps about the last 1000).
pub const FAILURE_SCAN: usize = 1000;

/// Reads one page of the tasks view: summaries of the page's tasks only
/// (never inputs or results), running tasks paged on the server.
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
    let mut groups = Vec::new();
    let mut dead_workers = HashSet::new();
    let (tasks, total) = match tab {
        TaskTab::Pending => (
            admin.pending_page(queue, offset, page).await?,
            overview.pending.saturating_sub(overview.delayed) as usize,
        ),
        TaskTab::Running => {
            let running = admin.running_page(queue, offset, page).await?;
            dead_workers = expired(&running.leases, overview.now_ms)
                .into_iter()
                .collect();
            (running.tasks, running.total)
        }
        TaskTab::Failures => {
            groups = crate::failures::group(&admin.recent_failures(queue, FAILURE_SCAN).await?);
            (Vec::new(), groups.len())
        }
        TaskTab::Recent => {
            let page_tasks = admin.recent_page(queue, offset, page).await?;
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
    let overview = admin.overview(queue).await?;
    let now_ms = overview.now_ms;
    let info = admin.task(queue, id).await?;
    let tail = admin
        .tail(queue, id, TAIL_CHUNKS)
        .await?
        .into_iter()
        .map(|c| String::from_utf8_lossy(&c).into_owned())
        .collect();
    Ok(Fetched::Detail(Box::new(DetailData {
        queue: queue.to_string(),
        mode: overview.mode,
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

/// A task that does not exist as `None` (one of a bulk action's tasks
/// that is gone), other errors as they are.
fn absent<T>(r: Result<T, Error>) -> Result<Option<T>, Error> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// ", N already gone" when some tasks of a bulk action were gone.
fn gone_note(gone: usize) -> String {
    if gone > 0 {
        format!(", {gone} already gone")
    } else {
        String::new()
    }
}

/// Performs an action; returns the message for the status line.
///
/// # Errors
/// The first error met.
pub async fn perform(admin: &Admin, action: &Action) -> Result<String, Error> {
    Ok(match action {
        // A bulk action goes through every task the confirmation named: a
        // task gone meanwhile (deleted, its retention passed) is counted,
        // never the end of the action.
        Action::Requeue(q, ids) => {
            let mut gone = 0;
            for id in ids {
                gone += usize::from(absent(admin.requeue(q, id).await)?.is_none());
            }
            format!("requeued {} task(s){}", ids.len() - gone, gone_note(gone))
        }
        Action::Cancel(q, ids) => {
            let (mut ended, mut gone) = (0, 0);
            for id in ids {
                match absent(admin.cancel(q, id).await)? {
                    Some(state) if !state.is_terminal() => ended += 1,
                    Some(_) => {}
                    None => gone += 1,
                }
            }
            format!(
                "cancelled {ended} task(s) ({} already ended){}",
                ids.len() - ended - gone,
                gone_note(gone)
            )
        }
        Action::Priority(q, changes) => {
            let mut gone = 0;
            for (id, p) in changes {
                gone += usize::from(absent(admin.set_priority(q, id, *p).await)?.is_none());
            }
            format!(
                "priority changed for {} task(s){}",
                changes.len() - gone,
                gone_note(gone)
            )
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
        Action::Delete(q, ids) => {
            use rtq_core::admin::DeleteTaskReply;
            let (mut deleted, mut not_ended, mut held, mut gone) = (0, 0, 0, 0);
            for id in ids {
                match admin.delete_task(q, id).await {
                    Ok(DeleteTaskReply::Deleted(_)) => deleted += 1,
                    Ok(DeleteTaskReply::NotEnded(_)) => not_ended += 1,
                    Ok(DeleteTaskReply::Owned(_)) => held += 1,
                    Ok(DeleteTaskReply::NotFound) | Err(Error::NotFound { .. }) => gone += 1,
                    Err(e) => return Err(e),
                }
            }
            let mut msg = format!("deleted {deleted} task(s)");
            for (n, why) in [
                (not_ended, "not ended (cancel first)"),
                (held, "still held by their worker"),
                (gone, "already gone"),
            ] {
                if n > 0 {
                    msg.push_str(&format!(", {n} {why}"));
                }
            }
            msg
        }
        Action::Match(q, tab, filter) => {
            let (ids, scanned) = matching(admin, q, *tab, filter).await?;
            format!("{} of {scanned} match", ids.len())
        }
    })
}

/// Reads what the plan shows, and only that, in order; returns the queues
/// to housekeep: the rows on screen and queues with stale workers in the
/// queues view, the selected queue elsewhere.
///
/// # Errors
/// Redis errors.
pub async fn read_all(
    reader: &mut Reader,
    admin: &Admin,
    plan: &Plan,
    tx: &mpsc::Sender<Fetched>,
) -> Result<Vec<String>, Error> {
    let server = admin.server_state().await?;
    let lost = reader.server.observe(&server, &now_hms());
    let _ = tx.send(Fetched::Lost(lost)).await;
    let mut housekeep = Vec::new();
    if plan.queues {
        let listed = reader.queues(admin, &plan.shown).await?;
        if let Fetched::Queues { rows, .. } = &listed {
            housekeep = rows
                .iter()
                .filter(|r| r.stats_full)
                .map(|r| r.overview.name.clone())
                .collect();
            housekeep.extend(
                rows.iter()
                    .filter(|r| !r.stats_full && r.overview.workers_stale > 0)
                    .take(HOUSEKEEP_STALE_MAX)
                    .map(|r| r.overview.name.clone()),
            );
        }
        let _ = tx.send(listed).await;
    }
    let Some(q) = &plan.queue else {
        return Ok(housekeep);
    };
    if !plan.queues {
        housekeep.push(q.clone());
        // The selected queue's counts keep its row (and depth chart) current.
        let _ = tx.send(Fetched::Overview(admin.overview(q).await?)).await;
    }
    if plan.nodes {
        let _ = tx.send(nodes(admin, q).await?).await;
    }
    if let Some((tab, offset, page)) = plan.tasks {
        let _ = tx.send(tasks(admin, q, tab, offset, page).await?).await;
    }
    if let Some(id) = &plan.detail {
        let _ = tx.send(detail_or_missing(admin, q, id).await?).await;
    }
    Ok(housekeep)
}

/// Local wall-clock time, HH:MM:SS.
fn now_hms() -> String {
    chrono::Local::now().format("%H:%M:%S").to_string()
}

/// One round of housekeeping on the queues shown, concurrently: a queue
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
    let mut reader = Reader::new();
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
            match read_all(&mut reader, a, &current, &tx).await {
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
                let msg = match (&admin, &action) {
                    (Some(a), Action::Match(q, tab, filter)) => {
                        match matching(a, q, *tab, filter).await {
                            Ok((ids, scanned)) => Fetched::Matched {
                                queue: q.clone(),
                                filter: filter.clone(),
                                ids,
                                scanned,
                            },
                            Err(e) => Fetched::ActionDone(format!("failed: {e}"), true),
                        }
                    }
                    (Some(a), _) => match perform(a, &action).await {
                        Ok(m) => Fetched::ActionDone(m, false),
                        Err(e) => Fetched::ActionDone(format!("failed: {e}"), true),
                    },
                    (None, _) => Fetched::ActionDone("not connected to Redis".into(), true),
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
            _ = tx.closed() => return,
        }
    }
}
