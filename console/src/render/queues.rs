//! The queues view: one row per queue, sparklines for the selected one
//! (done, failed, total latency p50/p99, depth).

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::Line;
use ratatui::text::Span;
use ratatui::widgets::{Block, Paragraph, Row, Sparkline, Table, TableState};
use ratatui::Frame;

use super::{fit, fmt_lat, fmt_ms};
use crate::health::{last_minute_rate, queue_health, Level};
use crate::state::App;
use rtq_core::admin::stats::Latency;
use rtq_core::admin::QueueStats;

pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let [table_area, sparks] =
        Layout::vertical([Constraint::Min(4), Constraint::Length(13)]).areas(area);
    let wide = area.width >= 120;
    let mut header = vec![
        "QUEUE",
        "STATE",
        "PEND",
        "RUN",
        "DONE/s",
        "FAIL/s",
        "WAIT p50/99",
        "TOTAL p50/95/99",
        "WRK",
    ];
    if wide {
        header.extend(["TTFC p50", "HEAD AGE", "MAX"]);
    }
    // On a Redis Cluster (wide screens): the master holding each queue.
    let node_column = wide && app.visible_queues().iter().any(|q| q.node.is_some());
    if node_column {
        header.push("NODE");
    }
    let cells_all: Vec<Vec<Span>> = app
        .visible_queues()
        .iter()
        .map(|q| {
            let (o, s) = (&q.overview, &q.stats);
            // A row that just scrolled into view gets its latencies at
            // the next refresh.
            let lat = |text: String| if q.stats_full { text } else { "…".into() };
            let health = queue_health(q);
            let state = match health.level {
                Level::Critical => health.label.fg(Color::Red).bold(),
                Level::Warning => health.label.fg(Color::Yellow),
                Level::Ok => health.label.fg(Color::Green),
            };
            // A stream queue (protocol v3) is tagged; exact queues, the
            // default, are not.
            let name: Span = if o.mode.is_stream() {
                format!("{} [stream]", o.name).into()
            } else {
                o.name.clone().into()
            };
            let mut cells: Vec<Span> = vec![
                name,
                state,
                o.pending.to_string().into(),
                o.running.to_string().into(),
                format!("{:.1}", last_minute_rate(s, "done")).into(),
                format!("{:.1}", last_minute_rate(s, "failed")).into(),
                lat(format!("{}/{}", fmt_lat(s.wait.p50), fmt_lat(s.wait.p99))).into(),
                lat(format!(
                    "{}/{}/{}",
                    fmt_lat(s.total.p50),
                    fmt_lat(s.total.p95),
                    fmt_lat(s.total.p99)
                ))
                .into(),
                o.workers_alive.to_string().into(),
            ];
            if wide {
                cells.extend([
                    lat(fmt_lat(s.first_chunk.p50)).into(),
                    o.head_wait_ms
                        .map(fmt_ms)
                        .unwrap_or_else(|| "-".into())
                        .into(),
                    if o.max_depth == 0 {
                        "-".to_string()
                    } else {
                        o.max_depth.to_string()
                    }
                    .into(),
                ]);
            }
            if node_column {
                cells.push(q.node.clone().unwrap_or_else(|| "-".into()).into());
            }
            cells
        })
        .collect();
    // Latency columns as wide as their longest value ("4m05s/12m30s/1h02m"
    // must not be cut); names up to the 64-byte limit.
    let cell = |i: usize| cells_all.iter().map(move |c| c[i].content.chars().count());
    let mut widths = vec![
        fit("QUEUE", cell(0), rtq_core::keys::MAX_QUEUE_NAME + 9),
        Constraint::Length(9),
        fit("PEND", cell(2), 12),
        fit("RUN", cell(3), 8),
        Constraint::Length(6),
        Constraint::Length(6),
        fit("WAIT p50/99", cell(6), 24),
        fit("TOTAL p50/95/99", cell(7), 32),
        fit("WRK", cell(8), 6),
    ];
    if wide {
        widths.extend([
            fit("TTFC p50", cell(9), 12),
            fit("HEAD AGE", cell(10), 12),
            fit("MAX", cell(11), 14),
        ]);
    }
    if node_column {
        widths.push(fit("NODE", cell(12), 48));
    }
    let empty = app.queues.is_empty();
    let title = match &app.lost {
        Some(lost) => format!(" queues: {lost} "),
        None if empty => " queues (none yet: submit a task or start a worker) ".into(),
        None => format!(
            " queues ({})  {} [s/S] ",
            app.visible_queues().len(),
            app.sort_label()
        ),
    };
    let title = if app.lost.is_some() {
        Line::from(title).fg(Color::Red).bold()
    } else {
        Line::from(title)
    };
    let rows: Vec<Row> = cells_all.into_iter().map(Row::new).collect();
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(Style::new().bold()))
        .block(Block::bordered().title(title))
        .row_highlight_style(Style::new().reversed());
    let mut state = TableState::default()
        .with_offset(app.queue_offset)
        .with_selected((!empty).then_some(app.cursor()));
    frame.render_stateful_widget(table, table_area, &mut state);

    let Some(row) = app
        .queues
        .iter()
        .find(|q| Some(&q.overview.name) == app.queue.as_ref())
    else {
        return;
    };
    let [a, b, lat, c] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Length(3),
        Constraint::Length(4),
        Constraint::Length(3),
    ])
    .areas(sparks);
    let done = row.stats.series("done");
    let failed = row.stats.series("failed");
    let depth: Vec<u64> = app
        .depth_history
        .get(&row.overview.name)
        .map(|h| h.iter().copied().collect())
        .unwrap_or_default();
    let window = fmt_ms((row.stats.window_secs * 1000.0) as i64);
    let spark = |title: String, data: &[u64], color: Color| {
        Sparkline::default()
            .block(Block::bordered().title(title))
            .data(data.to_vec())
            .style(Style::new().fg(color))
    };
    let last = |d: &[u64]| d.last().copied().unwrap_or(0);
    frame.render_widget(
        spark(
            format!(
                " {} done per 10s, last {window} (now {}) ",
                row.overview.name,
                last(&done)
            ),
            &done,
            Color::Green,
        ),
        a,
    );
    frame.render_widget(
        spark(
            format!(" failed per 10s (now {}) ", last(&failed)),
            &failed,
            Color::Red,
        ),
        b,
    );
    latency_chart(frame, lat, &row.stats);
    frame.render_widget(
        spark(
            format!(
                " queue depth, since the console started (now {}) ",
                last(&depth)
            ),
            &depth,
            Color::Cyan,
        ),
        c,
    );
}

/// The newest value of a series that has one, and how many buckets ago.
fn latest(series: &[Option<f64>]) -> Option<(f64, usize)> {
    series
        .iter()
        .rev()
        .enumerate()
        .find_map(|(ago, v)| v.map(|v| (v, ago)))
}

/// Total latency (submit to end) p50 and p99 per 10-second bucket, one
/// sparkline row each on a shared scale, labelled with the newest values.
/// Bars line up with the done/failed sparklines above (labels go right).
fn latency_chart(frame: &mut Frame, area: Rect, stats: &QueueStats) {
    let p50 = stats.series_quantile(Latency::Total, 0.50);
    let p99 = stats.series_quantile(Latency::Total, 0.99);
    let (Some((last50, ago)), Some((last99, _))) = (latest(&p50), latest(&p99)) else {
        let block = Block::bordered().title(" total latency p50/p99 per 10s ");
        frame.render_widget(
            Paragraph::new("no latency data yet (no task finished in the window)").block(block),
            area,
        );
        return;
    };
    let when = if ago == 0 {
        "latest".to_string()
    } else {
        format!(
            "latest, {} ago",
            fmt_ms(ago as i64 * rtq_core::admin::stats::BUCKET_MS)
        )
    };
    let title = format!(
        " total latency per 10s: p50 {} p99 {} ({when}) ",
        fmt_lat(Some(last50)),
        fmt_lat(Some(last99))
    );
    let block = Block::bordered().title(title);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [r50, r99] = Layout::vertical([Constraint::Length(1); 2]).areas(inner);
    // Rounded up: a bucket with sub-millisecond tasks is not drawn as empty.
    let ms = |v: &Option<f64>| v.map(|m| m.ceil().max(1.0) as u64);
    // One scale for both rows, so p99 is never drawn below p50.
    let max = p99
        .iter()
        .chain(&p50)
        .filter_map(ms)
        .max()
        .unwrap_or(1)
        .max(1);
    for (rect, label, series, color) in [
        (r50, " p50", &p50, Color::Cyan),
        (r99, " p99", &p99, Color::Magenta),
    ] {
        let [s, l] = Layout::horizontal([Constraint::Min(1), Constraint::Length(4)]).areas(rect);
        // The newest buckets when the terminal is narrower than the window.
        let skip = series.len().saturating_sub(s.width as usize);
        let data: Vec<Option<u64>> = series[skip..].iter().map(ms).collect();
        frame.render_widget(
            Sparkline::default()
                .data(data)
                .max(max)
                .absent_value_symbol("·")
                .style(Style::new().fg(color)),
            s,
        );
        frame.render_widget(Line::from(label).bold().right_aligned(), l);
    }
}
