//! What the console shows: snapshots produced by `fetch`, consumed by
//! `state` and `render`. Times are Redis times (ms) so ages are computed on
//! one clock, and tests can render with a fixed `now_ms`.

use std::collections::HashSet;

use rtq_core::admin::{QueueEvent, QueueMode, QueueOverview, QueueStats, WorkerInfo};
use rtq_core::TaskInfo;

/// One queue's row in the queues view.
#[derive(Clone, Debug, Default)]
pub struct QueueRow {
    /// Counts at a glance.
    pub overview: QueueOverview,
    /// Rates and latencies over the last 5 minutes for rows on screen
    /// (`stats_full`); for the others, `done` and `failed` over the last
    /// minute only (enough for their colour and sort order).
    pub stats: QueueStats,
    /// Whether `stats` is the whole window with latencies.
    pub stats_full: bool,
    /// On a Redis Cluster, the master (`host:port`) holding the queue;
    /// `None` on a single node.
    pub node: Option<String>,
}

/// Workers of the selected queue.
#[derive(Clone, Debug, Default)]
pub struct NodesData {
    /// Queue name.
    pub queue: String,
    /// Redis time of the read.
    pub now_ms: i64,
    /// Registered workers.
    pub workers: Vec<WorkerInfo>,
    /// Workers that died or left in the last 10 minutes (`dead_at`,
    /// `dead_why` fields), newest first.
    pub departed: Vec<WorkerInfo>,
    /// The queue's latest events, newest first.
    pub events: Vec<QueueEvent>,
}

/// Which list the tasks view shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TaskTab {
    /// Waiting tasks, in hand-out order.
    #[default]
    Pending,
    /// Tasks owned by workers.
    Running,
    /// Recently ended tasks.
    Recent,
    /// Recent failures grouped by reason.
    Failures,
}

impl TaskTab {
    /// The next tab (cycles).
    pub fn next(self) -> Self {
        match self {
            TaskTab::Pending => TaskTab::Running,
            TaskTab::Running => TaskTab::Recent,
            TaskTab::Recent => TaskTab::Failures,
            TaskTab::Failures => TaskTab::Pending,
        }
    }
    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            TaskTab::Pending => "pending",
            TaskTab::Running => "in flight",
            TaskTab::Recent => "finished",
            TaskTab::Failures => "failures by reason",
        }
    }
}

/// One page of tasks of the selected queue.
#[derive(Clone, Debug, Default)]
pub struct TasksData {
    /// Queue name.
    pub queue: String,
    /// Which list.
    pub tab: TaskTab,
    /// Index of the first task of the page within the list.
    pub offset: usize,
    /// Length of the whole list (as far as known).
    pub total: usize,
    /// Redis time of the read.
    pub now_ms: i64,
    /// The page.
    pub tasks: Vec<TaskInfo>,
    /// Workers whose lease has expired (their tasks are orphaned).
    pub dead_workers: HashSet<String>,
    /// The failures tab: recent failures grouped by reason.
    pub groups: Vec<crate::failures::FailureGroup>,
}

/// One task in detail.
#[derive(Clone, Debug)]
pub struct DetailData {
    /// Queue name.
    pub queue: String,
    /// The queue's kind (exact or stream).
    pub mode: QueueMode,
    /// Redis time of the read.
    pub now_ms: i64,
    /// Everything stored about it.
    pub info: TaskInfo,
    /// The last chunks of its output (live tail while it runs).
    pub tail: Vec<String>,
}

/// A result from the background fetcher.
#[derive(Clone, Debug)]
pub enum Fetched {
    /// All queues.
    Queues {
        /// One row per queue.
        rows: Vec<QueueRow>,
        /// Redis time of the read.
        now_ms: i64,
    },
    /// One queue's counts (outside the queues view: the selected queue).
    Overview(QueueOverview),
    /// Whether Redis lost its data: the message while queues are missing
    /// after a restart or a flush.
    Lost(Option<String>),
    /// Workers of a queue.
    Nodes(NodesData),
    /// A page of tasks.
    Tasks(TasksData),
    /// One task.
    Detail(Box<DetailData>),
    /// The task asked for does not exist (never submitted, or its
    /// retention passed).
    TaskMissing {
        /// Queue name.
        queue: String,
        /// Task id.
        id: String,
    },
    /// The tasks of a list that pass a filter (to mark them).
    Matched {
        /// Queue name.
        queue: String,
        /// The filter text.
        filter: String,
        /// Matching task ids, in list order.
        ids: Vec<String>,
        /// Tasks scanned.
        scanned: usize,
    },
    /// An action finished: message, and whether it failed.
    ActionDone(String, bool),
    /// Reading failed (Redis unreachable, ...).
    Failed(String),
}
