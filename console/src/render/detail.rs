//! The task detail view: metadata, timeline, attempts, input, live tail.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Wrap};
use ratatui::Frame;
use rtq_core::admin::QueueMode;
use rtq_core::Outcome;

use super::{fmt_bytes, fmt_ms};
use crate::state::App;

pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let Some(d) = &app.detail else {
        let id = app.detail_id.as_deref().unwrap_or("-");
        frame.render_widget(
            Paragraph::new(format!("loading task {id} ...")).block(Block::bordered()),
            area,
        );
        return;
    };
    let t = &d.info;
    let now = d.now_ms;
    // Times after the submit; a stream queue's ended task keeps no submit
    // time: its times are then ages.
    let at = |ms: i64| {
        if ms <= 0 {
            "-".into()
        } else if t.submitted_ms > 0 {
            format!("+{}", fmt_ms(ms - t.submitted_ms))
        } else {
            format!("{} ago", fmt_ms(now - ms))
        }
    };
    let submitted = if t.submitted_ms > 0 {
        format!("{} ago", fmt_ms(now - t.submitted_ms))
    } else {
        "-".into()
    };
    let labels = t
        .spec
        .as_ref()
        .map(|s| {
            s.labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let mut lines = vec![
        Line::from(vec![
            Span::styled("task ", Style::new().bold()),
            Span::raw(t.id.clone()),
            Span::raw(format!("  queue {}", d.queue)),
            Span::raw(match d.mode {
                QueueMode::Stream { bands } => format!(" (stream queue, {bands} bands)"),
                QueueMode::Exact => String::new(),
            }),
        ]),
        Line::from(format!(
            "state {}  priority {}  attempt {} (failures {}/{})  worker {}",
            t.state,
            t.priority,
            t.attempt,
            t.failures,
            t.max_attempts,
            if t.worker.is_empty() { "-" } else { &t.worker }
        )),
        Line::from(format!(
            "labels {}",
            if labels.is_empty() { "-" } else { &labels }
        )),
        Line::from(format!(
            "timeline: submitted {} · started {} · first chunk {} · last chunk {} · finished {}",
            submitted,
            at(t.started_ms),
            at(t.first_chunk_ms),
            at(t.last_chunk_ms),
            at(t.finished_ms)
        )),
        Line::from(format!(
            "deadline {} · output {} chunks, {}",
            if t.deadline_ms > 0 {
                at(t.deadline_ms)
            } else {
                "none".into()
            },
            t.chunks,
            fmt_bytes(t.bytes)
        )),
    ];
    match &t.outcome {
        Some(Outcome::Done(v)) => lines.push(Line::from(vec![
            Span::styled("result ", Style::new().fg(Color::Green)),
            Span::raw(truncate(&v.to_string(), 300)),
        ])),
        Some(Outcome::Ended { kind, message, .. }) => lines.push(Line::from(vec![
            Span::styled(format!("{kind}: "), Style::new().fg(Color::Red)),
            Span::raw(message.clone()),
        ])),
        None => {}
    }
    for (attempt, err) in &t.attempt_errors {
        lines.push(Line::from(Span::styled(
            format!("attempt {attempt} failed: {err}"),
            Style::new().fg(Color::Yellow),
        )));
    }
    let input = t
        .spec
        .as_ref()
        .map(|s| match (&s.input, &s.input_ref) {
            (Some(v), _) => truncate(&v.to_string(), 400),
            (None, Some(r)) => format!("(by reference) {r}"),
            _ => "-".into(),
        })
        .unwrap_or_else(|| "-".into());
    lines.push(Line::from(vec![
        Span::styled("input ", Style::new().bold()),
        Span::raw(input),
    ]));
    // Wrapped height of the metadata; it gets what it needs up to all but
    // 5 rows (the output tail keeps 3 inside a border), and scrolls with
    // j/k when it needs more.
    let paragraph = Paragraph::new(lines).wrap(Wrap { trim: false });
    let needed = paragraph.line_count(area.width.saturating_sub(2).max(1));
    let max_meta = area.height.saturating_sub(5).max(3) as usize;
    let meta_height = (needed + 2).min(max_meta);
    let visible = meta_height.saturating_sub(2);
    let scroll = (app.detail_scroll as usize).min(needed.saturating_sub(visible)) as u16;
    let title = if needed > visible {
        format!(
            " task (lines {}-{} of {needed}, j/k scroll) ",
            scroll + 1,
            scroll as usize + visible
        )
    } else {
        " task ".to_string()
    };
    let [meta, tail] =
        Layout::vertical([Constraint::Length(meta_height as u16), Constraint::Min(3)]).areas(area);
    frame.render_widget(
        paragraph
            .scroll((scroll, 0))
            .block(Block::bordered().title(title)),
        meta,
    );
    let text = d.tail.concat();
    let live = if t.state == rtq_core::TaskState::Running {
        " output (live tail) "
    } else {
        " output (tail) "
    };
    let tail_height = tail.height.saturating_sub(2) as usize;
    let wrapped_lines = text.len() / (tail.width.saturating_sub(2).max(1) as usize) + 1;
    let scroll = wrapped_lines.saturating_sub(tail_height) as u16;
    frame.render_widget(
        Paragraph::new(text)
            .wrap(Wrap { trim: false })
            .scroll((scroll, 0))
            .block(Block::bordered().title(live.bold())),
        tail,
    );
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}
