//! The console's state and how keys and fetched data change it. No I/O:
//! `on_key` returns an [`Effect`] for the UI loop to carry out, so every
//! rule here is testable without a terminal or a Redis.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Instant;

use crossterm::event::KeyCode;
use rtq_core::TaskInfo;

use crate::fetch::{Action, Plan};
use crate::keymap::{lookup, Cmd};
use crate::model::{DetailData, Fetched, NodesData, QueueRow, TaskTab, TasksData};

/// Points of local queue-depth history kept per queue (one per refresh).
pub const DEPTH_HISTORY: usize = 120;

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
    /// Cursor per list view (queues, nodes, tasks).
    pub cursor: [usize; 3],
    /// Task list shown.
    pub tab: TaskTab,
    /// First task of the page.
    pub offset: usize,
    /// Tasks per page.
    pub page: usize,
    /// Row filter (case-insensitive substring).
    pub filter: String,
    /// Prompt being edited.
    pub input: Option<Input>,
    /// Pending confirmation.
    pub confirm: Option<Confirm>,
    /// Marked task ids.
    pub marked: BTreeSet<String>,
    /// Task open in the detail view.
    pub detail_id: Option<String>,
    /// Connection state.
    pub connection: Connection,
    /// When data last arrived.
    pub last_data: Option<Instant>,
    /// Status line: message and whether it is an error.
    pub status: Option<(String, bool)>,
    /// Help overlay shown.
    pub show_help: bool,
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
            tab: TaskTab::Pending,
            offset: 0,
            page: 50,
            filter: String::new(),
            input: None,
            confirm: None,
            marked: BTreeSet::new(),
            detail_id: None,
            connection: Connection::Connecting,
            last_data: None,
            status: None,
            show_help: false,
            quit: false,
        }
    }

    /// What the fetcher must read for the current view.
    pub fn plan(&self) -> Plan {
        Plan {
            queue: self.queue.clone(),
            nodes: self.view == View::Nodes,
            tasks: matches!(self.view, View::Tasks).then_some((self.tab, self.offset, self.page)),
            detail: (self.view == View::Detail)
                .then(|| self.detail_id.clone())
                .flatten(),
        }
    }

    fn matches(&self, text: &str) -> bool {
        self.filter.is_empty() || text.to_lowercase().contains(&self.filter.to_lowercase())
    }

    /// Queue rows passing the filter.
    pub fn visible_queues(&self) -> Vec<&QueueRow> {
        self.queues
            .iter()
            .filter(|q| self.view != View::Queues || self.matches(&q.overview.name))
            .collect()
    }

    /// Workers passing the filter.
    pub fn visible_workers(&self) -> Vec<&rtq_core::admin::WorkerInfo> {
        self.nodes
            .iter()
            .flat_map(|n| n.workers.iter())
            .filter(|w| {
                self.matches(&format!(
                    "{} {} {} {}",
                    w.id,
                    w.field("host"),
                    w.field("labels"),
                    w.field("state")
                ))
            })
            .collect()
    }

    /// Tasks of the page passing the filter.
    pub fn visible_tasks(&self) -> Vec<&TaskInfo> {
        self.tasks
            .iter()
            .flat_map(|t| t.tasks.iter())
            .filter(|t| {
                let labels = t
                    .spec
                    .as_ref()
                    .map(|s| format!("{:?}", s.labels))
                    .unwrap_or_default();
                self.matches(&format!("{} {} {} {labels}", t.id, t.state, t.worker))
            })
            .collect()
    }

    fn rows(&self) -> usize {
        match self.view {
            View::Queues => self.visible_queues().len(),
            View::Nodes => self.visible_workers().len(),
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

    fn clamp(&mut self) {
        let rows = self.rows();
        if let Some(c) = self.cursor_mut() {
            *c = (*c).min(rows.saturating_sub(1));
        }
        if self.view == View::Queues {
            if let Some(q) = self.visible_queues().get(self.cursor[0]) {
                self.queue = Some(q.overview.name.clone());
            }
        }
    }

    /// The task under the cursor.
    pub fn selected_task(&self) -> Option<&TaskInfo> {
        if self.view == View::Detail {
            return self.detail.as_ref().map(|d| &d.info);
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
                        self.status = Some((error, true));
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
            Fetched::Nodes(n) if Some(&n.queue) == self.queue.as_ref() => self.nodes = Some(n),
            Fetched::Tasks(t) if Some(&t.queue) == self.queue.as_ref() && t.tab == self.tab => {
                self.tasks = Some(t)
            }
            Fetched::Detail(d) if Some(&d.info.id) == self.detail_id.as_ref() => {
                self.detail = Some(*d)
            }
            Fetched::ActionDone(message, failed) => self.status = Some((message, failed)),
            Fetched::Failed(error) => {
                let since = match &self.connection {
                    Connection::Disconnected { since, .. } => since.clone(),
                    _ => chrono::Local::now().format("%H:%M:%S").to_string(),
                };
                self.connection = Connection::Disconnected { since, error };
            }
            _ => {}
        }
        self.clamp();
    }

    /// Handles a key; returns what the UI loop must do.
    pub fn on_key(&mut self, code: KeyCode) -> Option<Effect> {
        if self.input.is_some() {
            return self.on_input_key(code);
        }
        if let Some(confirm) = self.confirm.take() {
            if code == KeyCode::Char('y') || code == KeyCode::Char('Y') {
                return Some(Effect::Action(confirm.action));
            }
            self.status = Some(("not done".into(), false));
            return None;
        }
        if self.show_help {
            self.show_help = false;
            if code != KeyCode::Char('q') {
                return None;
            }
        }
        let binding = lookup(code)?;
        if binding.mutates && self.read_only {
            self.status = Some(("read-only: actions are disabled".into(), true));
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
                    self.clamp();
                }
                None
            }
            KeyCode::Backspace => {
                input.text.pop();
                if input.prompt == Prompt::Filter {
                    self.filter = input.text.clone();
                    self.clamp();
                }
                None
            }
            KeyCode::Esc => {
                if input.prompt == Prompt::Filter {
                    self.filter.clear();
                }
                self.input = None;
                self.clamp();
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
                            self.status = Some((format!("{:?} is not a number", input.text), true));
                            None
                        }
                    },
                    Prompt::Purge if input.text == queue => {
                        Some(Effect::Action(Action::Purge(queue)))
                    }
                    Prompt::Purge => {
                        self.status = Some(("purge not done: the name did not match".into(), true));
                        None
                    }
                }
            }
            _ => None,
        }
    }

    fn task_targets(&self) -> Vec<String> {
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
            self.clamp();
        }
        Some(Effect::Refresh)
    }

    fn move_cursor(&mut self, to: impl FnOnce(usize, usize) -> usize) {
        let rows = self.rows();
        if let Some(c) = self.cursor_mut() {
            *c = to(*c, rows).min(rows.saturating_sub(1));
        }
        self.clamp();
    }

    fn on_cmd(&mut self, cmd: Cmd) -> Option<Effect> {
        let page = 10;
        match cmd {
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
                self.offset = 0;
                self.cursor[2] = 0;
                self.tasks = None;
                self.marked.clear();
                return self.switch(View::Tasks);
            }
            Cmd::Filter => {
                self.input = Some(Input {
                    prompt: Prompt::Filter,
                    text: self.filter.clone(),
                });
            }
            Cmd::Open => match self.view {
                View::Queues => return self.switch(View::Tasks),
                View::Nodes => {
                    let id = self
                        .visible_workers()
                        .get(self.cursor[1])
                        .map(|w| w.id.clone());
                    self.tab = TaskTab::Running;
                    self.offset = 0;
                    self.tasks = None;
                    let effect = self.switch(View::Tasks);
                    self.filter = id.unwrap_or_default();
                    return effect;
                }
                View::Tasks => {
                    let id = self.selected_task()?.id.clone();
                    self.detail = None;
                    self.detail_id = Some(id);
                    return self.switch(View::Detail);
                }
                View::Detail => {}
            },
            Cmd::Back => {
                if !self.filter.is_empty() {
                    self.filter.clear();
                    self.clamp();
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
                if let Some(id) = self.selected_task().map(|t| t.id.clone()) {
                    if !self.marked.remove(&id) {
                        self.marked.insert(id);
                    }
                    self.move_cursor(|c, _| c + 1);
                }
            }
            Cmd::Requeue | Cmd::Cancel => {
                let queue = self.queue.clone()?;
                let ids = self.task_targets();
                if ids.is_empty() || !matches!(self.view, View::Tasks | View::Detail) {
                    self.status = Some(("select a task first (tasks view)".into(), true));
                    return None;
                }
                let (verb, action) = if cmd == Cmd::Requeue {
                    ("Requeue", Action::Requeue(queue, ids.clone()))
                } else {
                    ("Cancel", Action::Cancel(queue, ids.clone()))
                };
                self.confirm = Some(Confirm {
                    message: format!("{verb} {} task(s)? y/N", ids.len()),
                    action,
                });
                self.marked.clear();
            }
            Cmd::PriorityUp | Cmd::PriorityDown => {
                let queue = self.queue.clone()?;
                let step = if cmd == Cmd::PriorityUp { 1 } else { -1 };
                let targets = self.task_targets();
                let changes: Vec<(String, i16)> = self
                    .visible_tasks()
                    .into_iter()
                    .chain(self.detail.as_ref().map(|d| &d.info))
                    .filter(|t| targets.contains(&t.id))
                    .map(|t| (t.id.clone(), (t.priority + step).clamp(-1000, 1000)))
                    .collect();
                if changes.is_empty() {
                    self.status = Some(("select a task first (tasks view)".into(), true));
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
