//! State -> frame. `draw` lays out the header, the current view and the
//! footer, then overlays (help, confirmation). One module per view.
//!
//! Layout: this file (`draw`, formatting helpers); `chrome` (header,
//! footer, help overlay, dialogs); `queues`, `nodes`, `tasks` (the three
//! views); `detail` (one task).

mod chrome;
mod detail;
mod nodes;
mod queues;
mod tasks;

use ratatui::layout::{Constraint, Layout};
use ratatui::Frame;

use crate::state::{App, View};

/// Draws the whole console.
pub fn draw(frame: &mut Frame, app: &App) {
    let [header, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    chrome::header(frame, header, app);
    match app.view {
        View::Queues => queues::draw(frame, body, app),
        View::Nodes => nodes::draw(frame, body, app),
        View::Tasks => tasks::draw(frame, body, app),
        View::Detail => detail::draw(frame, body, app),
    }
    chrome::footer(frame, footer, app);
    if app.show_help {
        chrome::help(frame, app);
    }
    if let Some(confirm) = &app.confirm {
        chrome::confirm(frame, &confirm.message);
    }
    if app.no_color {
        // NO_COLOR (https://no-color.org): keep bold and reverse, drop
        // every colour. Levels stay readable: the words say them.
        for cell in frame.buffer_mut().content.iter_mut() {
            cell.fg = ratatui::style::Color::Reset;
            cell.bg = ratatui::style::Color::Reset;
        }
    }
}

/// A column exactly as wide as its widest value or its header (in
/// characters), at most `cap`: ids and latencies are shown whole instead
/// of cut to a fixed width.
pub fn fit(header: &str, values: impl IntoIterator<Item = usize>, cap: usize) -> Constraint {
    let widest = values.into_iter().fold(header.chars().count(), usize::max);
    Constraint::Length(widest.min(cap) as u16)
}

/// A duration in ms, short: 850ms, 12.3s, 4m05s, 2h03m.
pub fn fmt_ms(ms: i64) -> String {
    let ms = ms.max(0);
    match ms {
        0..=999 => format!("{ms}ms"),
        1_000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60),
    }
}

/// An optional latency in ms, short ("-" if unknown).
pub fn fmt_lat(ms: Option<f64>) -> String {
    ms.map(|m| fmt_ms(m.round() as i64))
        .unwrap_or_else(|| "-".into())
}

/// A byte count, short: 512B, 12.0K, 3.4M.
pub fn fmt_bytes(b: u64) -> String {
    match b {
        0..=1023 => format!("{b}B"),
        1024..=1_048_575 => format!("{:.1}K", b as f64 / 1024.0),
        _ => format!("{:.1}M", b as f64 / 1_048_576.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_are_short() {
        assert_eq!(fmt_ms(850), "850ms");
        assert_eq!(fmt_ms(12_345), "12.3s");
        assert_eq!(fmt_ms(245_000), "4m05s");
        assert_eq!(fmt_ms(7_380_000), "2h03m");
        assert_eq!(fmt_ms(-5), "0ms");
        assert_eq!(fmt_lat(None), "-");
        assert_eq!(fmt_bytes(2048), "2.0K");
    }
}
