//! The tasks view: pending, in flight or finished tasks of the selected
//! queue, one page at a time (a 100,000-task queue costs one page).

use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::Span;
use ratatui::widgets::{Block, Row, Table, TableState};
use ratatui::Frame;
use rtq_core::{Outcome, TaskInfo};

use super::{fit, fmt_bytes, fmt_ms};
use crate::model::TaskTab;
use crate::state::App;

fn deadline_in(t: &TaskInfo, now: i64) -> Span<'static> {
    if t.deadline_ms == 0 {
        return Span::raw("-");
    }
    let left = t.deadline_ms - now;
    let color = if left < 5_000 {
        Color::Red
    } else {
        Color::Reset
    };
    Span::styled(
        if left <= 0 {
            "overdue".to_string()
        } else {
            fmt_ms(left)
        },
        Style::new().fg(color),
    )
}

fn reason(t: &TaskInfo) -> String {
    match &t.outcome {
        Some(Outcome::Ended { kind, message, .. }) => format!("{kind}: {message}"),
        Some(Outcome::Done(_)) => "ok".into(),
        None => String::new(),
    }
}

pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let data = app.tasks.as_ref();
    let now = data.map_or(app.now_ms, |d| d.now_ms);
    let mark = |t: &TaskInfo| if app.marked.contains(&t.id) { "*" } else { " " };
    // Ids are shown whole (up to 128 characters), not cut to a fixed width.
    let id_width = fit(
        "ID",
        app.visible_tasks().iter().map(|t| t.id.chars().count()),
        rtq_core::keys::MAX_ID_LEN,
    );
    let (header, widths, rows): (Vec<&str>, Vec<Constraint>, Vec<Row>) = match app.tab {
        TaskTab::Pending => (
            vec!["", "ID", "PRI", "AGE", "DEADLINE IN", "LABELS"],
            vec![
                Constraint::Length(1),
                id_width,
                Constraint::Length(5),
                Constraint::Length(8),
                Constraint::Length(11),
                Constraint::Min(10),
            ],
            app.visible_tasks()
                .into_iter()
                .map(|t| {
                    let labels = t
                        .spec
                        .as_ref()
                        .map(|s| {
                            s.labels
                                .iter()
                                .map(|(k, v)| format!("{k}={v}"))
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default();
                    Row::new(vec![
                        Span::raw(mark(t)),
                        Span::raw(t.id.clone()),
                        Span::raw(t.priority.to_string()),
                        Span::raw(fmt_ms(now - t.submitted_ms)),
                        deadline_in(t, now),
                        Span::raw(labels),
                    ])
                })
                .collect(),
        ),
        TaskTab::Running => (
            vec![
                "",
                "ID",
                "WORKER",
                "ELAPSED",
                "DEADLINE IN",
                "CHUNKS",
                "BYTES",
                "RATE/s",
                "LAST CHUNK",
            ],
            vec![
                Constraint::Length(1),
                id_width,
                Constraint::Min(12),
                Constraint::Length(8),
                Constraint::Length(11),
                Constraint::Length(6),
                Constraint::Length(7),
                Constraint::Length(6),
                Constraint::Length(10),
            ],
            app.visible_tasks()
                .into_iter()
                .map(|t| {
                    let orphaned = data.is_some_and(|d| d.dead_workers.contains(&t.worker));
                    let worker = if orphaned {
                        Span::styled(
                            format!("{} (orphaned)", t.worker),
                            Style::new().fg(Color::Red),
                        )
                    } else {
                        Span::raw(t.worker.clone())
                    };
                    let rate = if t.first_chunk_ms > 0 && t.last_chunk_ms > t.first_chunk_ms {
                        format!(
                            "{:.1}",
                            t.chunks as f64 * 1000.0 / (t.last_chunk_ms - t.first_chunk_ms) as f64
                        )
                    } else {
                        "-".into()
                    };
                    let since_last = if t.last_chunk_ms > 0 {
                        now - t.last_chunk_ms
                    } else if t.started_ms > 0 {
                        now - t.started_ms
                    } else {
                        0
                    };
                    let stall = if since_last > 5_000 {
                        Color::Yellow
                    } else {
                        Color::Reset
                    };
                    Row::new(vec![
                        Span::raw(mark(t)),
                        Span::raw(t.id.clone()),
                        worker,
                        Span::raw(if t.started_ms > 0 {
                            fmt_ms(now - t.started_ms)
                        } else {
                            "-".into()
                        }),
                        deadline_in(t, now),
                        Span::raw(t.chunks.to_string()),
                        Span::raw(fmt_bytes(t.bytes)),
                        Span::raw(rate),
                        Span::styled(fmt_ms(since_last), Style::new().fg(stall)),
                    ])
                })
                .collect(),
        ),
        TaskTab::Failures => (
            vec!["COUNT", "KIND", "REASON", "FIRST", "LAST", "EXAMPLE"],
            vec![
                Constraint::Length(6),
                Constraint::Length(16),
                Constraint::Min(30),
                Constraint::Length(10),
                Constraint::Length(10),
                fit(
                    "EXAMPLE",
                    app.visible_groups()
                        .iter()
                        .map(|g| g.example.chars().count()),
                    rtq_core::keys::MAX_ID_LEN,
                ),
            ],
            app.visible_groups()
                .into_iter()
                .map(|g| {
                    Row::new(vec![
                        Span::styled(g.count().to_string(), Style::new().fg(Color::Red)),
                        Span::raw(g.kind.clone()),
                        Span::raw(g.reason.clone()),
                        Span::raw(format!("{} ago", fmt_ms(now - g.first_ms))),
                        Span::raw(format!("{} ago", fmt_ms(now - g.last_ms))),
                        Span::raw(g.example.clone()),
                    ])
                })
                .collect(),
        ),
        TaskTab::Recent => (
            vec!["", "ID", "STATE", "ENDED", "TOOK", "WORKER", "REASON"],
            vec![
                Constraint::Length(1),
                id_width,
                Constraint::Length(9),
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Min(10),
                Constraint::Min(16),
            ],
            app.visible_tasks()
                .into_iter()
                .map(|t| {
                    let color = match t.state {
                        rtq_core::TaskState::Done => Color::Green,
                        rtq_core::TaskState::Failed => Color::Red,
                        _ => Color::Yellow,
                    };
                    Row::new(vec![
                        Span::raw(mark(t)),
                        Span::raw(t.id.clone()),
                        Span::styled(t.state.to_string(), Style::new().fg(color)),
                        Span::raw(format!("{} ago", fmt_ms(now - t.finished_ms))),
                        Span::raw(fmt_ms(t.finished_ms - t.submitted_ms)),
                        Span::raw(t.worker.clone()),
                        Span::raw(reason(t)),
                    ])
                })
                .collect(),
        ),
    };
    let queue = app.queue.as_deref().unwrap_or("-");
    let count = rows.len();
    let (offset, total) = data.map_or((0, 0), |d| (d.offset, d.total));
    let sorted = if app.sort[2] == crate::sort::Sort::default() {
        String::new()
    } else {
        format!("  {} (this page)", app.sort_label())
    };
    let title = format!(
        " {queue}: {} [t switches]  {}-{} of {total}{sorted}{} ",
        app.tab.name(),
        if count == 0 { 0 } else { offset + 1 },
        offset + count,
        if app.marked.is_empty() {
            String::new()
        } else {
            format!("  {} marked", app.marked.len())
        }
    );
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(Style::new().bold()))
        .block(Block::bordered().title(title))
        .row_highlight_style(Style::new().reversed());
    let mut state = TableState::default().with_selected((count > 0).then_some(app.cursor()));
    frame.render_stateful_widget(table, area, &mut state);
}
