//! What each command key does to the state (movement, views, marks,
//! confirmations of actions); the key itself is looked up in `keymap`.

use super::{App, Confirm, Effect, Input, Prompt, View, NAMED_IN_CONFIRM};
use crate::fetch::Action;
use crate::keymap::Cmd;
use crate::model::TaskTab;
use crate::sort::Sort;
use rtq_core::admin::Unavailable;

impl App {
    pub(super) fn task_targets(&self) -> Vec<String> {
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

    pub(super) fn on_cmd(&mut self, cmd: Cmd) -> Option<Effect> {
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
        if let Some(refused) = self.unavailable(cmd) {
            // A stream queue does not have this action yet: say so, and
            // neither ask for a confirmation nor send anything.
            let queue = self.queue.clone().unwrap_or_default();
            self.set_status(refused.error(&queue).to_string(), true);
            return None;
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

impl App {
    /// The action `cmd` would take that the selected queue does not have
    /// (a stream queue: pause, purge, requeue, priority, delete), if any.
    fn unavailable(&self, cmd: Cmd) -> Option<Unavailable> {
        let queue = self.queue.as_deref()?;
        if !self.queue_mode(queue).is_stream() {
            return None;
        }
        match cmd {
            Cmd::PauseResume => Some(Unavailable::Pause),
            Cmd::Purge => Some(Unavailable::Purge),
            Cmd::Requeue => Some(Unavailable::Requeue),
            Cmd::PriorityUp | Cmd::PriorityDown => Some(Unavailable::Priority),
            Cmd::Delete => Some(Unavailable::Delete),
            _ => None,
        }
    }
}
