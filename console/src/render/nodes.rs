//! The nodes view: every worker of the selected queue, coloured by
//! heartbeat age, the workers that died or left in the last 10 minutes
//! (greyed, with when and why), and the queue's event tail.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::Span;
use ratatui::widgets::{Block, Row, Table, TableState};
use ratatui::Frame;
use rtq_core::admin::{worker_labels, WorkerInfo};

use super::fmt_ms;
use crate::state::App;

/// What an operator needs to know first about a worker, and its colour.
pub fn worker_state(w: &WorkerInfo, now_ms: i64) -> (String, Color) {
    let lease: i64 = w.field("lease").parse().unwrap_or(5000);
    let age = w.heartbeat_age_ms(now_ms).unwrap_or(i64::MAX);
    if w.lease_until_ms.is_none_or(|l| l <= now_ms) {
        return ("dead".into(), Color::Red);
    }
    // A stream queue's worker has no heartbeat hash: its live lease is
    // its heartbeat, and admin says whether it holds tasks.
    if w.field("mode") == "stream" {
        return match w.field("state") {
            "busy" => ("busy".into(), Color::Green),
            _ => ("idle".into(), Color::Gray),
        };
    }
    if age > lease / 2 {
        return ("stale".into(), Color::Yellow);
    }
    match w.field("state") {
        "busy" => ("busy".into(), Color::Green),
        "draining" => ("draining".into(), Color::Magenta),
        "paused" => ("upstream down".into(), Color::Red),
        "idle" => ("idle".into(), Color::Gray),
        other => (other.to_string(), Color::Gray),
    }
}

pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let now = app.nodes.as_ref().map_or(app.now_ms, |n| n.now_ms);
    let wide = area.width >= 120;
    let mut header = vec![
        "WORKER", "HOST", "LABELS", "STATE", "SLOTS", "DONE", "FAIL", "HB",
    ];
    if wide {
        header.extend(["UPTIME", "VERSION", "LAST ERROR"]);
    }
    let [area, events_area] =
        Layout::vertical([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(area);
    events(frame, events_area, app, now);
    let mut rows: Vec<Row> = app
        .visible_workers()
        .iter()
        .map(|w| {
            let (state, color) = worker_state(w, now);
            let labels: Vec<String> = worker_labels(w)
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let started: i64 = w.field("started").parse().unwrap_or(0);
            let mut cells = vec![
                Span::raw(w.id.clone()),
                Span::raw(w.field("host").to_string()),
                Span::raw(labels.join(",")),
                Span::styled(state, Style::new().fg(color)),
                Span::raw(format!("{}/{}", w.field("busy"), w.field("slots"))),
                Span::raw(w.field("done").to_string()),
                Span::raw(w.field("failed").to_string()),
                Span::styled(
                    w.heartbeat_age_ms(now).map(fmt_ms).unwrap_or_default(),
                    Style::new().fg(color),
                ),
            ];
            if wide {
                cells.extend([
                    Span::raw(if started > 0 {
                        fmt_ms(now - started)
                    } else {
                        "-".into()
                    }),
                    Span::raw(w.field("version").to_string()),
                    Span::raw(last_error_cell(w, now)).fg(Color::Red),
                ]);
            }
            Row::new(cells)
        })
        .collect();
    let mut widths = vec![
        Constraint::Min(14),
        Constraint::Length(10),
        Constraint::Length(12),
        Constraint::Length(13),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(5),
        Constraint::Length(7),
    ];
    if wide {
        widths.extend([
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Min(10),
        ]);
    }
    let queue = app.queue.as_deref().unwrap_or("-");
    let count = rows.len();
    let departed = departed_rows(app, now, wide);
    let gone = departed.len();
    rows.extend(departed);
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(Style::new().bold()))
        .block(Block::bordered().title(format!(
            " workers of {queue} ({count}{})  {} [s/S] ",
            if gone > 0 {
                format!(", {gone} departed in the last 10 min")
            } else {
                String::new()
            },
            app.sort_label()
        )))
        .row_highlight_style(Style::new().reversed());
    let mut state = TableState::default().with_selected((count > 0).then_some(app.cursor()));
    frame.render_stateful_widget(table, area, &mut state);
}

/// Departed workers under the live ones, greyed, with when and why; not
/// selectable (the cursor moves over live workers only).
fn departed_rows<'a>(app: &'a App, now: i64, wide: bool) -> Vec<Row<'a>> {
    let Some(data) = app.nodes.as_ref() else {
        return Vec::new();
    };
    data.departed
        .iter()
        .map(|w| {
            let at: i64 = w.field("dead_at").parse().unwrap_or(0);
            let why = match w.field("dead_why") {
                "" => "gone",
                why => why,
            };
            let state = if w.field("state") == "stopped" {
                "left"
            } else {
                "dead"
            };
            let mut cells = vec![
                w.id.clone(),
                w.field("host").to_string(),
                String::new(),
                format!("{state} {} ago", fmt_ms(now - at)),
                format!("-/{}", w.field("slots")),
                w.field("done").to_string(),
                w.field("failed").to_string(),
                why.to_string(),
            ];
            if wide {
                cells.extend([String::new(), w.field("version").to_string(), String::new()]);
            }
            Row::new(cells).style(Style::new().fg(Color::DarkGray))
        })
        .collect()
}

/// The selected queue's latest events, newest first; trouble in red.
fn events(frame: &mut Frame, area: Rect, app: &App, now: i64) {
    let events = app
        .nodes
        .as_ref()
        .map(|n| n.events.as_slice())
        .unwrap_or(&[]);
    let rows: Vec<Row> = events
        .iter()
        .map(|e| {
            let kind = Span::styled(
                e.kind.as_str().to_string(),
                if e.kind.is_trouble() {
                    Style::new().fg(Color::Red)
                } else {
                    Style::new().fg(Color::Cyan)
                },
            );
            Row::new(vec![
                Span::raw(format!("{} ago", fmt_ms(now - e.at_ms))),
                kind,
                Span::raw(e.task.clone().unwrap_or_default()),
                Span::raw(e.worker.clone().unwrap_or_default()),
                Span::raw(e.message.clone()),
            ])
        })
        .collect();
    let title = if events.is_empty() {
        " events (none yet: failures, requeues, cancels, lost workers, pauses show here) "
            .to_string()
    } else {
        format!(" events, newest first ({}) ", events.len())
    };
    let table = Table::new(
        rows,
        [
            Constraint::Length(10),
            Constraint::Length(12),
            Constraint::Length(24),
            Constraint::Length(16),
            Constraint::Min(10),
        ],
    )
    .header(Row::new(vec!["WHEN", "EVENT", "TASK", "WORKER", "MESSAGE"]).style(Style::new().bold()))
    .block(Block::bordered().title(title));
    frame.render_widget(table, area);
}

/// The last error with its age (`"12s ago: ..."`); a worker before
/// revision 14 sends no time, so its error shows alone.
fn last_error_cell(w: &WorkerInfo, now_ms: i64) -> String {
    let message = w.field("last_error");
    match w.last_error_age_ms(now_ms) {
        Some(age) => format!("{} ago: {message}", fmt_ms(age)),
        None => message.to_string(),
    }
}
