//! The nodes view: every worker of the selected queue, coloured by
//! heartbeat age.

use ratatui::layout::{Constraint, Rect};
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
    let rows: Vec<Row> = app
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
                    Span::raw(w.field("last_error").to_string()).fg(Color::Red),
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
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(Style::new().bold()))
        .block(Block::bordered().title(format!(
            " workers of {queue} ({count})  {} [s/S] ",
            app.sort_label()
        )))
        .row_highlight_style(Style::new().reversed());
    let mut state = TableState::default().with_selected((count > 0).then_some(app.cursor()));
    frame.render_stateful_widget(table, area, &mut state);
}
