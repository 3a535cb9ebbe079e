//! Sorting of the lists by column: `s` cycles the column, `S` reverses.
//! Column 0 is the order the data comes in (queues by name, pending tasks
//! in hand-out order, finished tasks newest first). Numbers sort largest
//! first, states worst first, names and ids A to Z; reversing flips that.
//! Task lists are paged on the server, so a task sort orders the page shown.

use std::cmp::Ordering;

use rtq_core::admin::WorkerInfo;
use rtq_core::TaskInfo;

use crate::failures::FailureGroup;
use crate::health::{last_minute_rate, queue_health};
use crate::model::{QueueRow, TaskTab};

/// How one list is sorted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sort {
    /// Index into the list's columns.
    pub col: usize,
    /// Flip the natural direction.
    pub reversed: bool,
}

impl Sort {
    /// The next column of `columns` (cycles; the direction resets).
    pub fn next(self, columns: &[&str]) -> Self {
        Self {
            col: (self.col + 1) % columns.len().max(1),
            reversed: false,
        }
    }

    /// "sorted by pending" / "sorted by pending, reversed".
    pub fn label(self, columns: &[&str]) -> String {
        let name = columns.get(self.col).copied().unwrap_or("?");
        if self.reversed {
            format!("sorted by {name}, reversed")
        } else {
            format!("sorted by {name}")
        }
    }

    fn apply(self, o: Ordering) -> Ordering {
        if self.reversed {
            o.reverse()
        } else {
            o
        }
    }
}

/// Sortable columns of the queues view.
pub const QUEUE_COLUMNS: &[&str] = &[
    "name", "state", "pending", "running", "done/s", "fail/s", "workers", "head age",
];

/// Sortable columns of the nodes view.
pub const NODE_COLUMNS: &[&str] = &["worker", "state", "busy", "done", "failed", "heartbeat"];

/// Sortable columns of a task list.
pub fn task_columns(tab: TaskTab) -> &'static [&'static str] {
    match tab {
        TaskTab::Pending => &["hand-out order", "id", "priority", "age"],
        TaskTab::Running => &["worker", "id", "running for", "chunks", "bytes"],
        TaskTab::Recent => &["newest", "id", "state", "duration", "worker"],
        TaskTab::Failures => &["count", "last seen", "kind"],
    }
}

/// Largest first.
fn desc<T: PartialOrd>(a: T, b: T) -> Ordering {
    b.partial_cmp(&a).unwrap_or(Ordering::Equal)
}

/// Sorts queue rows (stable: equal rows keep the name order). Each row's
/// key is computed once (health and rates read the statistics), so 10,000
/// rows sort in a few milliseconds.
pub fn queues(rows: &mut [&QueueRow], s: Sort) {
    if s.col == 0 || s.col >= QUEUE_COLUMNS.len() {
        rows.sort_by(|a, b| s.apply(a.overview.name.cmp(&b.overview.name)));
        return;
    }
    // Largest first: the key is the value negated (reversed: the value).
    let milli = |v: f64| (v * 1000.0).round() as i64;
    let key = |r: &QueueRow| -> i64 {
        let o = &r.overview;
        let v = match s.col {
            1 => queue_health(r).level as i64,
            2 => o.pending as i64,
            3 => o.running as i64,
            4 => milli(last_minute_rate(&r.stats, "done")),
            5 => milli(last_minute_rate(&r.stats, "failed")),
            6 => o.workers_alive as i64,
            _ => o.head_wait_ms.unwrap_or(-1),
        };
        if s.reversed {
            v
        } else {
            -v
        }
    };
    rows.sort_by_cached_key(|r| key(r));
}

/// Sorts workers.
pub fn workers(rows: &mut [&WorkerInfo], s: Sort) {
    let num = |w: &WorkerInfo, f: &str| w.field(f).parse::<i64>().unwrap_or(0);
    rows.sort_by(|a, b| {
        s.apply(match s.col {
            1 => a.field("state").cmp(b.field("state")),
            2 => desc(num(a, "busy"), num(b, "busy")),
            3 => desc(num(a, "done"), num(b, "done")),
            4 => desc(num(a, "failed"), num(b, "failed")),
            // The stalest heartbeat first.
            5 => num(a, "hb").cmp(&num(b, "hb")),
            _ => a.id.cmp(&b.id),
        })
    });
}

/// Sorts a page of tasks of `tab`.
pub fn tasks(rows: &mut [&TaskInfo], tab: TaskTab, s: Sort) {
    if s.col == 0 && !s.reversed {
        return;
    }
    rows.sort_by(|a, b| {
        s.apply(match (tab, s.col) {
            (_, 1) => a.id.cmp(&b.id),
            (TaskTab::Pending, 2) => desc(a.priority, b.priority),
            (TaskTab::Pending, 3) => a.submitted_ms.cmp(&b.submitted_ms),
            (TaskTab::Running, 2) => a.started_ms.cmp(&b.started_ms),
            (TaskTab::Running, 3) => desc(a.chunks, b.chunks),
            (TaskTab::Running, 4) => desc(a.bytes, b.bytes),
            (TaskTab::Recent, 2) => a.state.to_string().cmp(&b.state.to_string()),
            (TaskTab::Recent, 3) => desc(
                a.finished_ms - a.submitted_ms,
                b.finished_ms - b.submitted_ms,
            ),
            (TaskTab::Recent, 4) => a.worker.cmp(&b.worker),
            // Column 0 reversed: the page in reverse arrival order.
            _ => Ordering::Equal,
        })
    });
    if s.col == 0 {
        rows.reverse();
    }
}

/// Sorts failure groups.
pub fn groups(rows: &mut [&FailureGroup], s: Sort) {
    rows.sort_by(|a, b| {
        s.apply(match s.col {
            1 => desc(a.last_ms, b.last_ms),
            2 => a.kind.cmp(&b.kind),
            _ => desc(a.count(), b.count()),
        })
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_column_cycles_and_the_label_names_it() {
        let s = Sort::default();
        assert_eq!(s.label(QUEUE_COLUMNS), "sorted by name");
        let s = s.next(QUEUE_COLUMNS).next(QUEUE_COLUMNS);
        assert_eq!(s.label(QUEUE_COLUMNS), "sorted by pending");
        let r = Sort {
            reversed: true,
            ..s
        };
        assert_eq!(r.label(QUEUE_COLUMNS), "sorted by pending, reversed");
        let mut s = Sort::default();
        for _ in 0..QUEUE_COLUMNS.len() {
            s = s.next(QUEUE_COLUMNS);
        }
        assert_eq!(s.col, 0);
    }

    #[test]
    fn queues_sort_by_number_largest_first_and_by_state_worst_first() {
        let row = |name: &str, pending: u64, workers: u64| {
            let mut r = QueueRow::default();
            r.overview.name = name.into();
            r.overview.pending = pending;
            r.overview.workers_alive = workers;
            r
        };
        let (a, b, c) = (row("a", 5, 1), row("b", 50, 1), row("c", 1, 0));
        let mut rows = vec![&a, &b, &c];
        queues(
            &mut rows,
            Sort {
                col: 2,
                reversed: false,
            },
        );
        assert_eq!(
            rows.iter()
                .map(|r| r.overview.name.as_str())
                .collect::<String>(),
            "bac"
        );
        queues(
            &mut rows,
            Sort {
                col: 2,
                reversed: true,
            },
        );
        assert_eq!(
            rows.iter()
                .map(|r| r.overview.name.as_str())
                .collect::<String>(),
            "cab"
        );
        // c has pending work and no worker: critical, first.
        queues(
            &mut rows,
            Sort {
                col: 1,
                reversed: false,
            },
        );
        assert_eq!(rows[0].overview.name, "c");
        queues(&mut rows, Sort::default());
        assert_eq!(
            rows.iter()
                .map(|r| r.overview.name.as_str())
                .collect::<String>(),
            "abc"
        );
    }
}
