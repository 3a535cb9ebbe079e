//! Header, footer, help overlay and dialogs.

use ratatui::layout::{Constraint, Flex, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};
use ratatui::Frame;

use crate::keymap::KEYMAP;
use crate::state::{App, Connection, Prompt, View};
use rtq_core::admin::QueueMode;

pub fn header(frame: &mut Frame, area: Rect, app: &App) {
    let late = app.late_by(std::time::Instant::now());
    let conn = match &app.connection {
        Connection::Connecting => Span::styled("connecting", Style::new().fg(Color::Yellow)),
        // Connected, but the next answer is overdue (a frozen or overloaded
        // Redis): say so at once instead of green.
        Connection::Connected if late.is_some() => Span::styled(
            format!("no answer for {} s", late.map_or(0, |d| d.as_secs())),
            Style::new().fg(Color::Yellow).bold(),
        ),
        Connection::Connected => Span::styled("connected", Style::new().fg(Color::Green)),
        Connection::Disconnected { since, .. } => Span::styled(
            format!("disconnected since {since}"),
            Style::new().fg(Color::Red).bold(),
        ),
    };
    let age = match app.last_data {
        Some(t) => {
            let stale = app.connection != Connection::Connected;
            let text = format!(
                " data {:.1}s old{}",
                t.elapsed().as_secs_f64(),
                if stale { " (stale)" } else { "" }
            );
            Span::styled(
                text,
                if stale {
                    Style::new().fg(Color::Yellow)
                } else {
                    Style::new().dim()
                },
            )
        }
        None => Span::raw(" no data yet"),
    };
    let tab = |n: &str, name: &str, v: View| {
        let active = app.view == v || (v == View::Tasks && app.view == View::Detail);
        let style = if active {
            Style::new().reversed()
        } else {
            Style::new()
        };
        Span::styled(format!(" {n}:{name}"), style)
    };
    // The URL comes last so a narrow terminal truncates it, not the state.
    let mut spans = vec![
        Span::styled("rtq", Style::new().bold()),
        tab("1", "Queues", View::Queues),
        tab("2", "Nodes", View::Nodes),
        tab("3", "Tasks", View::Tasks),
        Span::raw(" "),
        conn,
        age,
    ];
    if app.read_only {
        spans.push(Span::styled(" READ-ONLY", Style::new().fg(Color::Magenta)));
    }
    spans.push(Span::raw(format!("  {}", app.redis)));
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

pub fn footer(frame: &mut Frame, area: Rect, app: &App) {
    let line = if let Some(input) = &app.input {
        let label = match input.prompt {
            Prompt::Filter => "filter: ",
            Prompt::MaxDepth => "max depth (0 = unlimited): ",
            Prompt::Purge => "type the queue name to purge it: ",
            Prompt::GoTo => "open task id: ",
        };
        Line::from(vec![
            Span::styled(label, Style::new().bold()),
            Span::raw(format!("{}_", input.text)),
        ])
    } else {
        // The active filter and the marks are always shown; a status
        // message (it expires) or an error comes next, then the key hints.
        let mode = match app.queue.as_deref().map(|q| app.queue_mode(q)) {
            Some(QueueMode::Stream { bands }) => format!(" (stream, {bands} bands)"),
            _ => String::new(),
        };
        let mut spans = vec![Span::raw(format!(
            "queue: {}{mode}",
            app.queue.as_deref().unwrap_or("-")
        ))];
        if !app.filter.is_empty() {
            spans.push(Span::styled(
                format!("  filter: {}", app.filter),
                Style::new().fg(Color::Cyan).bold(),
            ));
        }
        if !app.marked.is_empty() {
            spans.push(Span::styled(
                format!("  {} marked", app.marked.len()),
                Style::new().fg(Color::Magenta),
            ));
        }
        spans.push(Span::raw("  "));
        if let Some((msg, failed)) = &app.status {
            let style = if *failed {
                Style::new().fg(Color::Red)
            } else {
                Style::new().fg(Color::Green)
            };
            spans.push(Span::styled(msg.clone(), style));
        } else if let Connection::Disconnected { error, .. } = &app.connection {
            spans.push(Span::styled(error.clone(), Style::new().fg(Color::Red)));
        } else {
            spans.push(Span::raw(" ? help  / filter  Enter open  Esc back  q quit"));
        }
        Line::from(spans)
    };
    frame.render_widget(Paragraph::new(line), area);
}

fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let [v] = Layout::vertical([Constraint::Length(height.min(area.height))])
        .flex(Flex::Center)
        .areas(area);
    let [h] = Layout::horizontal([Constraint::Length(width.min(area.width))])
        .flex(Flex::Center)
        .areas(v);
    h
}

pub fn help(frame: &mut Frame, app: &App) {
    let lines: Vec<Line> = KEYMAP
        .iter()
        .map(|b| {
            let style = if b.mutates && app.read_only {
                Style::new().dim()
            } else {
                Style::new()
            };
            Line::styled(format!("{:<8}{}", b.label, b.help), style)
        })
        .collect();
    let total = lines.len() as u16;
    let area = centered(frame.area(), 76, total + 2);
    let visible = area.height.saturating_sub(2);
    let scroll = app.help_scroll.min(total.saturating_sub(visible));
    let title = if total > visible {
        format!(
            " keys {}-{} of {total} (j/k scroll, any other key closes) ",
            scroll + 1,
            scroll + visible
        )
    } else {
        " keys (any key closes) ".to_string()
    };
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(lines)
            .scroll((scroll, 0))
            .block(Block::bordered().title(title)),
        area,
    );
}

pub fn confirm(frame: &mut Frame, message: &str) {
    let area = centered(frame.area(), (message.len() as u16 + 4).max(30), 3);
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(message.to_string())
            .style(Style::new().add_modifier(Modifier::BOLD))
            .block(
                Block::bordered()
                    .title(" confirm ")
                    .border_style(Style::new().fg(Color::Yellow)),
            ),
        area,
    );
}
