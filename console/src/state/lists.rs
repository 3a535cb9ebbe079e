//! Which rows a list view shows (filtered and sorted), the rows on screen
//! and the cursor: selection by identity across refreshes and re-sorts.

use rtq_core::admin::QueueMode;
use rtq_core::TaskInfo;

use super::{App, View};
use crate::filter::{Fields, Filter};
use crate::model::{QueueRow, TaskTab};

impl App {
    /// The kind of queue `name` as its last read row says (exact when it
    /// has none yet).
    pub fn queue_mode(&self, name: &str) -> QueueMode {
        self.queues
            .iter()
            .find(|q| q.overview.name == name)
            .map(|q| q.overview.mode)
            .unwrap_or_default()
    }

    pub(super) fn parsed_filter(&self) -> Filter {
        Filter::parse(&self.filter)
    }

    /// Queue rows passing the filter (in the queues view), sorted.
    pub fn visible_queues(&self) -> Vec<&QueueRow> {
        let filter = self.parsed_filter();
        let mut rows: Vec<&QueueRow> = self
            .queues
            .iter()
            .filter(|q| {
                if self.view != View::Queues || filter.is_empty() {
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
    pub(super) fn scroll_queues(&mut self) {
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

    pub(super) fn rows(&self) -> usize {
        match self.view {
            View::Queues => self.visible_queues().len(),
            View::Nodes => self.visible_workers().len(),
            View::Tasks if self.tab == TaskTab::Failures => self.visible_groups().len(),
            View::Tasks => self.visible_tasks().len(),
            View::Detail => 0,
        }
    }

    pub(super) fn cursor_mut(&mut self) -> Option<&mut usize> {
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
    pub(super) fn slot(&self) -> Option<usize> {
        match self.view {
            View::Queues => Some(0),
            View::Nodes => Some(1),
            View::Tasks => Some(2),
            View::Detail => None,
        }
    }

    /// Ids of the rows the current view shows, in order.
    pub(super) fn row_ids(&self) -> Vec<String> {
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
    pub(super) fn follow_selection(&mut self) {
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
    pub(super) fn select_at_cursor(&mut self) {
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
}
