//! The console's state and how keys and fetched data change it. No I/O:
//! `on_key` returns an [`Effect`] for the UI loop to carry out, so every
//! rule here is testable without a terminal or a Redis.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crossterm::event::KeyCode;
use rtq_core::TaskInfo;

use crate::fetch::{Action, Plan};
use crate::filter::{Fields, Filter};
use crate::keymap::{lookup, Cmd};
use crate::model::{DetailData, Fetched, NodesData, QueueRow, TaskTab, TasksData};
use crate::sort::Sort;

/// Points of local queue-depth history kept per queue (one per refresh).
pub const DEPTH_HISTORY: usize = 120;

/// How long a status message stays on the footer.
pub const STATUS_TTL: Duration = Duration::from_secs(8);

/// Ids a confirmation names before it says "and N more".
const NAMED_IN_CONFIRM: usize = 3;

/// The views, in Tab order (detail is entered with Enter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// All queues.
    Queues,
    /// Workers of the selected queue.
    Nodes,
    /// Tasks of the selected queue.
    Tasks,
    /// One task.
    Detail,
}

/// Connection to Redis as the fetcher last saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Connection {
    /// Nothing read yet.
    Connecting,
    /// The last read worked.
    Connected,
    /// Reads fail since `since` (local time, HH:MM:SS).
    Disconnected {
        /// When the failures started.
        since: String,
        /// The last error.
        error: String,
    },
}

/// What a text prompt is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prompt {
    /// Row filter.
    Filter,
    /// New max depth of the selected queue.
    MaxDepth,
    /// Purge confirmation: the queue's name.
    Purge,
    /// A task id to open.
    GoTo,
}

/// A text prompt being edited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    /// What it is for.
    pub prompt: Prompt,
    /// Text so far.
    pub text: String,
}

/// A yes/no question before a destructive action (default: no).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confirm {
    /// The question.
    pub message: String,
    /// What "y" does.
    pub action: Action,
    /// The action is on the marked tasks (a "y" clears the marks).
    pub uses_marks: bool,
}

/// What the UI loop must do after a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Run this action (then refresh).
    Action(Action),
    /// The plan changed: fetch now.
    Refresh,
}

/// The whole console state.
#[derive(Debug)]
pub struct App {
    /// Redis address, password redacted.
    pub redis: String,
    /// Actions disabled.
    pub read_only: bool,
    /// Current view.
    pub view: View,
    /// Queue rows.
    pub queues: Vec<QueueRow>,
    /// Redis time of the last queues read.
    pub now_ms: i64,
    /// Workers of the selected queue.
    pub nodes: Option<NodesData>,
    /// Tasks page of the selected queue.
    pub tasks: Option<TasksData>,
    /// Task in detail.
    pub detail: Option<DetailData>,
    /// Pending counts per queue, one per refresh, oldest first.
    pub depth_history: HashMap<String, VecDeque<u64>>,
    /// Selected queue.
    pub queue: Option<String>,
    /// Cursor per list view (queues, nodes, tasks): the row of
    /// `selected` in what is shown.
    pub cursor: [usize; 3],
    /// What is selected per list view, by identity (queue name, worker id,
    /// task id): kept across refreshes, re-sorts and rows inserted above,
    /// so an action never lands on a row that moved under the cursor.
    pub selected: [Option<String>; 3],
    /// Task list shown.
    pub tab: TaskTab,
    /// First task of the page.
    pub offset: usize,
    /// Tasks per page.
    pub page: usize,
    /// Row filter text (see [`crate::filter`]).
    pub filter: String,
    /// Sort of each list view (queues, nodes, tasks).
    pub sort: [Sort; 3],
    /// Prompt being edited.
    pub input: Option<Input>,
    /// Pending confirmation.
    pub confirm: Option<Confirm>,
    /// Marked task ids (kept across pages, tabs and declined
    /// confirmations; cleared when an action on them is confirmed).
    pub marked: BTreeSet<String>,
    /// Last known priority of each marked task (for `+`/`-` on marks that
    /// are not on the page shown).
    pub marked_priority: HashMap<String, i16>,
    /// Task open in the detail view.
    pub detail_id: Option<String>,
    /// Connection state.
    pub connection: Connection,
    /// When data last arrived.
    pub last_data: Option<Instant>,
    /// Status line: message and whether it is an error; it expires after
    /// [`STATUS_TTL`] (see [`App::tick`]).
    pub status: Option<(String, bool)>,
    /// When the status was set.
    pub status_at: Option<Instant>,
    /// The fetcher's refresh period: data older than about two of these
    /// means Redis is not answering.
    pub refresh: Duration,
    /// Draw without colours (the `NO_COLOR` convention).
    pub no_color: bool,
    /// First line shown of the task detail (j/k scroll it).
    pub detail_scroll: u16,
    /// First line shown of the help overlay (j/k scroll it).
    pub help_scroll: u16,
    /// Help overlay shown.
    pub show_help: bool,
    /// Set while Redis has lost queues it listed a moment ago (a restart
    /// without persistence, a flush): what to say instead of "no queues".
    pub lost: Option<String>,
    /// Queue rows the queues table has room for (from the terminal height).
    pub queue_rows: usize,
    /// First queue row on screen (the table scrolls to keep the cursor in
    /// view); the rows on screen are the ones whose statistics are read.
    pub queue_offset: usize,
    /// Quit requested.
    pub quit: bool,
}

impl App {
    /// A fresh state.
    pub fn new(redis: String, read_only: bool) -> Self {
        Self {
            redis,
            read_only,
            view: View::Queues,
            queues: Vec::new(),
            now_ms: 0,
            nodes: None,
            tasks: None,
            detail: None,
            depth_history: HashMap::new(),
            queue: None,
            cursor: [0; 3],
            selected: [None, None, None],
            tab: TaskTab::Pending,
            offset: 0,
            page: 50,
            filter: String::new(),
            sort: [Sort::default(); 3],
            input: None,
            confirm: None,
            marked: BTreeSet::new(),
            marked_priority: HashMap::new(),
            detail_id: None,
            connection: Connection::Connecting,
            last_data: None,
            status: None,
            status_at: None,
            refresh: Duration::from_secs(1),
            no_color: false,
            detail_scroll: 0,
            help_scroll: 0,
            show_help: false,
            lost: None,
            queue_rows: 40,
            queue_offset: 0,
            quit: false,
        }
    }

    /// What the fetcher must read for the current view.
    pub fn plan(&self) -> Plan {
        Plan {
            queue: self.queue.clone(),
            queues: self.view == View::Queues,
            shown: if self.view == View::Queues {
                self.shown_queues()
            } else {
                Vec::new()
            },
            nodes: self.view == View::Nodes,
            tasks: matches!(self.view, View::Tasks).then_some((self.tab, self.offset, self.page)),
            detail: (self.view == View::Detail)
                .then(|| self.detail_id.clone())
                .flatten(),
        }
    }

    fn parsed_filter(&self) -> Filter {
        Filter::parse(&self.filter)
    }

    /// Queue rows passing the filter (in the queues view), sorted.
    pub fn visible_queues(&self) -> Vec<&QueueRow> {
        let filter = self.parsed_filter();
        let mut rows: Vec<&QueueRow> = self
            .queues
            .iter()
            .filter(|q| {
                if self.view != View::Queues {
                    return true;
                }
                let state = crate::health::queue_health(q).label;
                filter.matches(&Fields {
                    text: format!("{} {state}", q.overview.name),
                    state: Some(state.to_string()),
                    ..Fields::default()
                })
            })
            .collect();
        crate::sort::queues(&mut rows, self.sort[0]);
        rows
    }

    /// Workers passing the filter, sorted.
    pub fn visible_workers(&self) -> Vec<&rtq_core::admin::WorkerInfo> {
        let filter = self.parsed_filter();
        let mut rows: Vec<&rtq_core::admin::WorkerInfo> = self
            .nodes
            .iter()
            .flat_map(|n| n.workers.iter())
            .filter(|w| {
                let labels = rtq_core::admin::worker_labels(w);
                let last_error = w.field("last_error");
                filter.matches(&Fields {
                    text: format!(
                        "{} {} {} {} {last_error}",
                        w.id,
                        w.field("host"),
                        w.field("labels"),
                        w.field("state")
                    ),
                    errors: Some(vec![last_error]),
                    worker: Some(&w.id),
                    labels: Some(&labels),
                    state: Some(w.field("state").to_string()),
                })
            })
            .collect();
        crate::sort::workers(&mut rows, self.sort[1]);
        rows
    }

    /// Tasks of the page passing the filter, sorted.
    pub fn visible_tasks(&self) -> Vec<&TaskInfo> {
        let filter = self.parsed_filter();
        let mut rows: Vec<&TaskInfo> = self
            .tasks
            .iter()
            .flat_map(|t| t.tasks.iter())
            .filter(|t| filter.matches_task(t))
            .collect();
        crate::sort::tasks(&mut rows, self.tab, self.sort[2]);
        rows
    }

    /// Failure groups passing the filter (the failures tab), sorted.
    pub fn visible_groups(&self) -> Vec<&crate::failures::FailureGroup> {
        let filter = self.parsed_filter();
        let mut rows: Vec<&crate::failures::FailureGroup> = self
            .tasks
            .iter()
            .flat_map(|t| t.groups.iter())
            .filter(|g| {
                filter.matches(&Fields {
                    text: format!("{} {} {}", g.kind, g.reason, g.example),
                    errors: Some(vec![g.kind.as_str(), g.reason.as_str()]),
                    state: Some("failed".into()),
                    ..Fields::default()
                })
            })
            .collect();
        crate::sort::groups(&mut rows, self.sort[2]);
        rows
    }

    /// The sortable columns of the current list.
    pub fn sort_columns(&self) -> &'static [&'static str] {
        match self.view {
            View::Queues => crate::sort::QUEUE_COLUMNS,
            View::Nodes => crate::sort::NODE_COLUMNS,
            View::Tasks | View::Detail => crate::sort::task_columns(self.tab),
        }
    }

    /// Names of the queue rows on screen (the queues table's window).
    pub fn shown_queues(&self) -> Vec<String> {
        self.visible_queues()
            .iter()
            .skip(self.queue_offset)
            .take(self.queue_rows.max(1))
            .map(|q| q.overview.name.clone())
            .collect()
    }

    /// The terminal is `height` lines high: the queues table has room for
    /// that minus the header, footer, charts and table borders.
    pub fn set_screen_height(&mut self, height: u16) {
        self.queue_rows = (height as usize).saturating_sub(18).max(1);
        self.scroll_queues();
    }

    /// Keeps the queues cursor inside the window on screen.
    fn scroll_queues(&mut self) {
        let rows = self.queue_rows.max(1);
        let total = self.visible_queues().len();
        let c = self.cursor[0];
        if c < self.queue_offset {
            self.queue_offset = c;
        } else if c >= self.queue_offset + rows {
            self.queue_offset = c + 1 - rows;
        }
        self.queue_offset = self.queue_offset.min(total.saturating_sub(rows));
    }

    /// "sorted by ..." of the current list.
    pub fn sort_label(&self) -> String {
        let slot = self.slot().unwrap_or(2);
        self.sort[slot].label(self.sort_columns())
    }

    /// The failure group under the cursor (failures tab).
    pub fn selected_group(&self) -> Option<&crate::failures::FailureGroup> {
        if self.view != View::Tasks || self.tab != TaskTab::Failures {
            return None;
        }
        self.visible_groups().get(self.cursor[2]).copied()
    }

    fn rows(&self) -> usize {
        match self.view {
            View::Queues => self.visible_queues().len(),
            View::Nodes => self.visible_workers().len(),
            View::Tasks if self.tab == TaskTab::Failures => self.visible_groups().len(),
            View::Tasks => self.visible_tasks().len(),
            View::Detail => 0,
        }
    }

    fn cursor_mut(&mut self) -> Option<&mut usize> {
        match self.view {
            View::Queues => Some(&mut self.cursor[0]),
            View::Nodes => Some(&mut self.cursor[1]),
            View::Tasks => Some(&mut self.cursor[2]),
            View::Detail => None,
        }
    }

    /// The cursor of the current view (0 in detail).
    pub fn cursor(&self) -> usize {
        match self.view {
            View::Queues => self.cursor[0],
            View::Nodes => self.cursor[1],
            View::Tasks => self.cursor[2],
            View::Detail => 0,
        }
    }

    /// The list slot (index into `cursor`/`selected`) of the current view.
    fn slot(&self) -> Option<usize> {
        match self.view {
            View::Queues => Some(0),
            View::Nodes => Some(1),
            View::Tasks => Some(2),
            View::Detail => None,
        }
    }

    /// Ids of the rows the current view shows, in order.
    fn row_ids(&self) -> Vec<String> {
        match self.view {
            View::Queues => self
                .visible_queues()
                .iter()
                .map(|q| q.overview.name.clone())
                .collect(),
            View::Nodes => self
                .visible_workers()
                .iter()
                .map(|w| w.id.clone())
                .collect(),
            View::Tasks if self.tab == TaskTab::Failures => self
                .visible_groups()
                .iter()
                .map(|g| g.key.clone())
                .collect(),
            View::Tasks => self.visible_tasks().iter().map(|t| t.id.clone()).collect(),
            View::Detail => Vec::new(),
        }
    }

    /// After the rows changed (new data, a filter, another view): the
    /// cursor moves to where the selected item is now. If it is gone, the
    /// row now at the cursor's place is selected.
    fn follow_selection(&mut self) {
        let Some(slot) = self.slot() else { return };
        let ids = self.row_ids();
        let wanted = if slot == 0 {
            self.queue.clone()
        } else {
            self.selected[slot].clone()
        };
        match wanted.and_then(|id| ids.iter().position(|r| *r == id)) {
            Some(i) => self.cursor[slot] = i,
            None => self.select_at_cursor(),
        }
        if slot == 0 {
            self.scroll_queues();
        }
    }

    /// After the cursor moved: select the row under it.
    fn select_at_cursor(&mut self) {
        let Some(slot) = self.slot() else { return };
        let ids = self.row_ids();
        self.cursor[slot] = self.cursor[slot].min(ids.len().saturating_sub(1));
        if let Some(id) = ids.get(self.cursor[slot]) {
            self.selected[slot] = Some(id.clone());
            if slot == 0 {
                self.queue = Some(id.clone());
            }
        }
        if slot == 0 {
            self.scroll_queues();
        }
    }

    /// Shows a status message (it expires after [`STATUS_TTL`]).
    pub fn set_status(&mut self, message: impl Into<String>, failed: bool) {
        self.status = Some((message.into(), failed));
        self.status_at = Some(Instant::now());
    }

    /// Time passes: expires the status message.
    pub fn tick(&mut self, now: Instant) {
        if self
            .status_at
            .is_some_and(|at| now.saturating_duration_since(at) >= STATUS_TTL)
        {
            self.status = None;
            self.status_at = None;
        }
    }

    /// How long Redis has not answered when a refresh is overdue (data
    /// older than two refresh periods, at least one second), else `None`.
    pub fn late_by(&self, now: Instant) -> Option<Duration> {
        let age = now.saturating_duration_since(self.last_data?);
        let limit = (self.refresh * 2).max(Duration::from_secs(1));
        (age > limit).then_some(age)
    }

    /// The task under the cursor.
    pub fn selected_task(&self) -> Option<&TaskInfo> {
        if self.view == View::Detail {
            return self.detail.as_ref().map(|d| &d.info);
        }
        if self.tab == TaskTab::Failures {
            return None;
        }
        self.visible_tasks().get(self.cursor[2]).copied()
    }

    /// Takes fetched data into the state.
    pub fn on_fetched(&mut self, fetched: Fetched) {
        match fetched {
            Fetched::Queues { rows, now_ms } => {
                for r in &rows {
                    let h = self
                        .depth_history
                        .entry(r.overview.name.clone())
                        .or_default();
                    h.push_back(r.overview.pending);
                    while h.len() > DEPTH_HISTORY {
                        h.pop_front();
                    }
                }
                // A queue that cannot be read is an error row; its reason
                // goes to the status line unless something else is shown.
                if self.status.is_none() {
                    if let Some(error) = rows.iter().find_map(|r| r.overview.error.clone()) {
                        self.set_status(error, true);
                    }
                }
                self.queues = rows;
                self.now_ms = now_ms;
                self.connection = Connection::Connected;
                self.last_data = Some(Instant::now());
                if self.queue.is_none() {
                    self.queue = self.queues.first().map(|q| q.overview.name.clone());
                }
            }
            Fetched::Overview(o) => {
                let h = self.depth_history.entry(o.name.clone()).or_default();
                h.push_back(o.pending);
                while h.len() > DEPTH_HISTORY {
                    h.pop_front();
                }
                self.now_ms = o.now_ms;
                self.connection = Connection::Connected;
                self.last_data = Some(Instant::now());
                match self.queues.iter_mut().find(|r| r.overview.name == o.name) {
                    Some(row) => row.overview = o,
                    None => self.queues.push(QueueRow {
                        overview: o,
                        ..QueueRow::default()
                    }),
                }
            }
            Fetched::Lost(lost) => self.lost = lost,
            Fetched::Nodes(n) if Some(&n.queue) == self.queue.as_ref() => self.nodes = Some(n),
            Fetched::Tasks(t) if Some(&t.queue) == self.queue.as_ref() && t.tab == self.tab => {
                for task in &t.tasks {
                    if self.marked.contains(&task.id) {
                        self.marked_priority.insert(task.id.clone(), task.priority);
                    }
                }
                self.tasks = Some(t)
            }
            Fetched::Detail(d) if Some(&d.info.id) == self.detail_id.as_ref() => {
                self.detail = Some(*d)
            }
            Fetched::ActionDone(message, failed) => self.set_status(message, failed),
            Fetched::Matched {
                queue,
                filter,
                ids,
                scanned,
            } if Some(&queue) == self.queue.as_ref() => {
                let n = ids.len();
                self.marked.extend(ids);
                self.set_status(
                    format!(
                        "marked {n} task(s) matching \"{filter}\" of {scanned} scanned: \
                         r retries, c cancels, d deletes them, U clears the marks"
                    ),
                    false,
                );
            }
            Fetched::TaskMissing { queue, id } => {
                if self.view == View::Detail && self.detail_id.as_ref() == Some(&id) {
                    self.detail_id = None;
                    self.detail = None;
                    self.view = View::Tasks;
                }
                self.set_status(
                    format!("no task {id} in {queue} (never submitted, or its retention passed)"),
                    true,
                );
            }
            Fetched::Failed(error) => {
                let since = match &self.connection {
                    Connection::Disconnected { since, .. } => since.clone(),
                    _ => chrono::Local::now().format("%H:%M:%S").to_string(),
                };
                self.connection = Connection::Disconnected { since, error };
            }
            _ => {}
        }
        self.follow_selection();
    }

    /// Handles a key; returns what the UI loop must do.
    pub fn on_key(&mut self, code: KeyCode) -> Option<Effect> {
        if self.input.is_some() {
            return self.on_input_key(code);
        }
        if let Some(confirm) = self.confirm.take() {
            if code == KeyCode::Char('y') || code == KeyCode::Char('Y') {
                if confirm.uses_marks {
                    self.marked.clear();
                    self.marked_priority.clear();
                }
                return Some(Effect::Action(confirm.action));
            }
            let kept = if confirm.uses_marks {
                " (marks kept)"
            } else {
                ""
            };
            self.set_status(format!("not done{kept}"), false);
            return None;
        }
        if self.show_help {
            // Movement keys scroll the help (it may not fit at 80x24);
            // any other key closes it ('q' also quits).
            match lookup(code).map(|b| b.cmd) {
                Some(Cmd::Up) => self.help_scroll = self.help_scroll.saturating_sub(1),
                Some(Cmd::Down) => self.help_scroll = self.help_scroll.saturating_add(1),
                Some(Cmd::PageUp) => self.help_scroll = self.help_scroll.saturating_sub(10),
                Some(Cmd::PageDown) => self.help_scroll = self.help_scroll.saturating_add(10),
                Some(Cmd::Top) => self.help_scroll = 0,
                _ => {
                    self.show_help = false;
                    self.help_scroll = 0;
                    if code != KeyCode::Char('q') {
                        return None;
                    }
                }
            }
            if self.show_help {
                return None;
            }
        }
        let binding = lookup(code)?;
        if binding.mutates && self.read_only {
            self.set_status("read-only: actions are disabled", true);
            return None;
        }
        self.on_cmd(binding.cmd)
    }

    fn on_input_key(&mut self, code: KeyCode) -> Option<Effect> {
        let input = self.input.as_mut()?;
        match code {
            KeyCode::Char(c) => {
                input.text.push(c);
                if input.prompt == Prompt::Filter {
                    self.filter = input.text.clone();
                    self.follow_selection();
                }
                None
            }
            KeyCode::Backspace => {
                input.text.pop();
                if input.prompt == Prompt::Filter {
                    self.filter = input.text.clone();
                    self.follow_selection();
                }
                None
            }
            KeyCode::Esc => {
                if input.prompt == Prompt::Filter {
                    self.filter.clear();
                }
                self.input = None;
                self.follow_selection();
                None
            }
            KeyCode::Enter => {
                let input = self.input.take()?;
                let queue = self.queue.clone()?;
                match input.prompt {
                    Prompt::Filter => None,
                    Prompt::MaxDepth => match input.text.trim().parse::<u64>() {
                        Ok(d) => Some(Effect::Action(Action::MaxDepth(queue, d))),
                        Err(_) => {
                            self.set_status(format!("{:?} is not a number", input.text), true);
                            None
                        }
                    },
                    Prompt::GoTo => {
                        let id = input.text.trim().to_string();
                        if id.is_empty() {
                            return None;
                        }
                        self.detail = None;
                        self.detail_id = Some(id);
                        self.detail_scroll = 0;
                        self.switch(View::Detail)
                    }
                    Prompt::Purge if input.text == queue => {
                        Some(Effect::Action(Action::Purge(queue)))
                    }
                    Prompt::Purge => {
                        self.set_status("purge not done: the name did not match", true);
                        None
                    }
                }
            }
            _ => None,
        }
    }

    fn task_targets(&self) -> Vec<String> {
        if let Some(group) = self.selected_group() {
            return group.ids.clone();
        }
        if self.marked.is_empty() {
            self.selected_task()
                .map(|t| vec![t.id.clone()])
                .unwrap_or_default()
        } else {
            self.marked.iter().cloned().collect()
        }
    }

    fn switch(&mut self, view: View) -> Option<Effect> {
        if self.view != view {
            self.view = view;
            self.filter.clear();
            self.follow_selection();
        }
        Some(Effect::Refresh)
    }

    fn move_cursor(&mut self, to: impl FnOnce(usize, usize) -> usize) {
        let rows = self.rows();
        if let Some(c) = self.cursor_mut() {
            *c = to(*c, rows).min(rows.saturating_sub(1));
        }
        self.select_at_cursor();
    }

    fn on_cmd(&mut self, cmd: Cmd) -> Option<Effect> {
        let page = 10;
        if self.view == View::Detail {
            // Movement scrolls the detail (a long error must not hide the
            // attempts and the input); rendering clamps it.
            let scroll = &mut self.detail_scroll;
            match cmd {
                Cmd::Up => *scroll = scroll.saturating_sub(1),
                Cmd::Down => *scroll = scroll.saturating_add(1),
                Cmd::PageUp => *scroll = scroll.saturating_sub(page as u16),
                Cmd::PageDown => *scroll = scroll.saturating_add(page as u16),
                Cmd::Top => *scroll = 0,
                Cmd::Bottom => *scroll = u16::MAX,
                _ => {}
            }
        }
        match cmd {
            Cmd::Up | Cmd::Down | Cmd::PageUp | Cmd::PageDown | Cmd::Top | Cmd::Bottom
                if self.view == View::Detail => {}
            Cmd::Up => self.move_cursor(|c, _| c.saturating_sub(1)),
            Cmd::Down => self.move_cursor(|c, _| c + 1),
            Cmd::Top => self.move_cursor(|_, _| 0),
            Cmd::Bottom => self.move_cursor(|_, rows| rows),
            Cmd::PageUp | Cmd::PageDown if self.view == View::Tasks => {
                let total = self.tasks.as_ref().map_or(0, |t| t.total);
                let before = self.offset;
                self.offset = if cmd == Cmd::PageDown {
                    if self.offset + self.page < total {
                        self.offset + self.page
                    } else {
                        self.offset
                    }
                } else {
                    self.offset.saturating_sub(self.page)
                };
                self.cursor[2] = 0;
                self.selected[2] = None;
                return (before != self.offset).then_some(Effect::Refresh);
            }
            Cmd::PageUp => self.move_cursor(|c, _| c.saturating_sub(page)),
            Cmd::PageDown => self.move_cursor(|c, _| c + page),
            Cmd::NextView => {
                let next = match self.view {
                    View::Queues => View::Nodes,
                    View::Nodes => View::Tasks,
                    View::Tasks | View::Detail => View::Queues,
                };
                return self.switch(next);
            }
            Cmd::Queues => return self.switch(View::Queues),
            Cmd::Nodes => return self.switch(View::Nodes),
            Cmd::Tasks => return self.switch(View::Tasks),
            Cmd::NextTab => {
                self.tab = self.tab.next();
                self.sort[2] = Sort::default();
                self.offset = 0;
                self.cursor[2] = 0;
                self.selected[2] = None;
                self.tasks = None;
                return self.switch(View::Tasks);
            }
            Cmd::Filter => {
                self.input = Some(Input {
                    prompt: Prompt::Filter,
                    text: self.filter.clone(),
                });
            }
            Cmd::SortNext | Cmd::SortReverse => {
                let slot = self.slot()?;
                let columns = self.sort_columns();
                let s = &mut self.sort[slot];
                *s = if cmd == Cmd::SortNext {
                    s.next(columns)
                } else {
                    Sort {
                        reversed: !s.reversed,
                        ..*s
                    }
                };
                self.follow_selection();
            }
            Cmd::GoTo => {
                self.queue.as_ref()?;
                self.input = Some(Input {
                    prompt: Prompt::GoTo,
                    text: String::new(),
                });
            }
            Cmd::Open => match self.view {
                View::Queues => return self.switch(View::Tasks),
                View::Nodes => {
                    let id = self.selected[1].clone();
                    self.tab = TaskTab::Running;
                    self.offset = 0;
                    self.tasks = None;
                    let effect = self.switch(View::Tasks);
                    self.filter = id.unwrap_or_default();
                    return effect;
                }
                View::Tasks => {
                    let id = match self.selected_group() {
                        Some(g) => g.example.clone(),
                        None => self.selected_task()?.id.clone(),
                    };
                    self.detail = None;
                    self.detail_id = Some(id);
                    self.detail_scroll = 0;
                    return self.switch(View::Detail);
                }
                View::Detail => {}
            },
            Cmd::Back => {
                if !self.filter.is_empty() {
                    self.filter.clear();
                    self.follow_selection();
                    return None;
                }
                return match self.view {
                    View::Detail => self.switch(View::Tasks),
                    View::Tasks | View::Nodes => self.switch(View::Queues),
                    View::Queues => None,
                };
            }
            Cmd::Help => self.show_help = !self.show_help,
            Cmd::Quit => self.quit = true,
            Cmd::Mark => {
                if let Some((id, priority)) =
                    self.selected_task().map(|t| (t.id.clone(), t.priority))
                {
                    if self.marked.remove(&id) {
                        self.marked_priority.remove(&id);
                    } else {
                        self.marked.insert(id.clone());
                        self.marked_priority.insert(id, priority);
                    }
                    self.move_cursor(|c, _| c + 1);
                }
            }
            Cmd::MarkAll => {
                let queue = self.queue.clone()?;
                if self.view != View::Tasks {
                    self.set_status("marks are for tasks (tasks view)", true);
                    return None;
                }
                if let Some(g) = self.selected_group() {
                    let ids = g.ids.clone();
                    self.set_status(format!("marked the group's {} task(s)", ids.len()), false);
                    self.marked.extend(ids);
                } else if self.filter.trim().is_empty() {
                    let shown: Vec<(String, i16)> = self
                        .visible_tasks()
                        .iter()
                        .map(|t| (t.id.clone(), t.priority))
                        .collect();
                    self.set_status(format!("marked the {} task(s) shown", shown.len()), false);
                    for (id, p) in shown {
                        self.marked.insert(id.clone());
                        self.marked_priority.insert(id, p);
                    }
                } else {
                    self.set_status(
                        format!(
                            "finding every {} task matching \"{}\" ...",
                            self.tab.name(),
                            self.filter
                        ),
                        false,
                    );
                    return Some(Effect::Action(Action::Match(
                        queue,
                        self.tab,
                        self.filter.clone(),
                    )));
                }
            }
            Cmd::ClearMarks => {
                let n = self.marked.len();
                self.marked.clear();
                self.marked_priority.clear();
                self.set_status(format!("{n} mark(s) cleared"), false);
            }
            Cmd::Delete => {
                let queue = self.queue.clone()?;
                let ids = self.task_targets();
                if ids.is_empty() || !matches!(self.view, View::Tasks | View::Detail) {
                    self.set_status("select a task first (tasks view)", true);
                    return None;
                }
                let what = match self.selected_group() {
                    Some(g) => format!(
                        "{} that failed with {}: {}",
                        describe_tasks(&ids),
                        g.kind,
                        g.reason
                    ),
                    None => describe_tasks(&ids),
                };
                self.confirm = Some(Confirm {
                    message: format!(
                        "Delete {what} in {queue}? Results and outputs are removed; tasks that \
                         have not ended are left alone. y/N"
                    ),
                    action: Action::Delete(queue, ids),
                    uses_marks: self.selected_group().is_none() && !self.marked.is_empty(),
                });
            }
            Cmd::Cancel if self.selected_group().is_some() => {
                self.set_status("these tasks have ended: r requeues the group", true);
            }
            Cmd::Requeue if self.selected_group().is_some() => {
                let queue = self.queue.clone()?;
                let g = self.selected_group()?;
                let message = format!(
                    "Requeue {} that failed with {}: {} in {queue}? y/N",
                    describe_tasks(&g.ids),
                    g.kind,
                    g.reason
                );
                let action = Action::Requeue(queue, g.ids.clone());
                self.confirm = Some(Confirm {
                    message,
                    action,
                    uses_marks: false,
                });
            }
            Cmd::Requeue | Cmd::Cancel => {
                let queue = self.queue.clone()?;
                let ids = self.task_targets();
                if ids.is_empty() || !matches!(self.view, View::Tasks | View::Detail) {
                    self.set_status("select a task first (tasks view)", true);
                    return None;
                }
                let message = format!(
                    "{} {} in {queue}? y/N",
                    if cmd == Cmd::Requeue {
                        "Requeue"
                    } else {
                        "Cancel"
                    },
                    describe_tasks(&ids)
                );
                let action = if cmd == Cmd::Requeue {
                    Action::Requeue(queue, ids)
                } else {
                    Action::Cancel(queue, ids)
                };
                self.confirm = Some(Confirm {
                    message,
                    action,
                    uses_marks: !self.marked.is_empty(),
                });
            }
            Cmd::PriorityUp | Cmd::PriorityDown => {
                let queue = self.queue.clone()?;
                let step = if cmd == Cmd::PriorityUp { 1 } else { -1 };
                let known = |id: &String| {
                    self.marked_priority.get(id).copied().or_else(|| {
                        self.visible_tasks()
                            .into_iter()
                            .chain(self.detail.as_ref().map(|d| &d.info))
                            .find(|t| t.id == *id)
                            .map(|t| t.priority)
                    })
                };
                let changes: Vec<(String, i16)> = self
                    .task_targets()
                    .into_iter()
                    .filter_map(|id| {
                        let p = known(&id)?;
                        Some((id, (p + step).clamp(-1000, 1000)))
                    })
                    .collect();
                for (id, p) in &changes {
                    if let Some(known) = self.marked_priority.get_mut(id) {
                        *known = *p;
                    }
                }
                if changes.is_empty() {
                    self.set_status("select a task first (tasks view)", true);
                    return None;
                }
                return Some(Effect::Action(Action::Priority(queue, changes)));
            }
            Cmd::PauseResume => {
                let queue = self.queue.clone()?;
                let paused = self
                    .queues
                    .iter()
                    .find(|q| q.overview.name == queue)
                    .is_some_and(|q| q.overview.paused);
                if paused {
                    return Some(Effect::Action(Action::Pause(queue, false)));
                }
                self.confirm = Some(Confirm {
                    message: format!("Pause queue {queue}? Nothing will be handed out. y/N"),
                    action: Action::Pause(queue, true),
                    uses_marks: false,
                });
            }
            Cmd::MaxDepth => {
                self.queue.as_ref()?;
                self.input = Some(Input {
                    prompt: Prompt::MaxDepth,
                    text: String::new(),
                });
            }
            Cmd::Purge => {
                self.queue.as_ref()?;
                self.input = Some(Input {
                    prompt: Prompt::Purge,
                    text: String::new(),
                });
            }
        }
        None
    }
}

/// "task a", "3 tasks: a, b, c" or "12 tasks: a, b, c and 9 more".
pub fn describe_tasks(ids: &[String]) -> String {
    match ids {
        [one] => format!("task {one}"),
        _ => {
            let named = ids
                .iter()
                .take(NAMED_IN_CONFIRM)
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            let more = ids.len().saturating_sub(NAMED_IN_CONFIRM);
            if more > 0 {
                format!("{} tasks: {named} and {more} more", ids.len())
            } else {
                format!("{} tasks: {named}", ids.len())
            }
        }
    }
}
