//! The console's state and how keys and fetched data change it. No I/O:
//! `on_key` returns an [`Effect`] for the UI loop to carry out, so every
//! rule here is testable without a terminal or a Redis.
//!
//! Layout: this file holds the state and how data and keys reach it;
//! `lists` the rows each list shows (filter, sort, the window on screen,
//! the cursor); `commands` what each command key does.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crossterm::event::KeyCode;

mod commands;
mod lists;

pub use commands::describe_tasks;

use crate::fetch::{Action, Plan};
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
}
