//! Trouble at a glance: a queue with work and no live worker is drawn red
//! "no worker", not green "running", from a real Redis; NO_COLOR drops
//! every colour but keeps the words.

mod support;

use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::style::Color;
use rtq_console::fetch;
use rtq_console::state::App;
use rtq_core::{Client, TaskRequest};
use serde_json::json;
use support::RedisServer;

fn draw(app: &App) -> Buffer {
    let mut terminal = ratatui::Terminal::new(TestBackend::new(140, 30)).unwrap();
    terminal
        .draw(|f| rtq_console::render::draw(f, app))
        .unwrap();
    terminal.backend().buffer().clone()
}

/// The text of row `y` and the colour of its first cell holding `word`.
fn find(buffer: &Buffer, word: &str) -> Option<(String, Color)> {
    let width = buffer.area.width;
    for y in 0..buffer.area.height {
        let line: String = (0..width).map(|x| buffer[(x, y)].symbol()).collect();
        if let Some(at) = line.find(word) {
            let x = line[..at].chars().count() as u16;
            return Some((line, buffer[(x, y)].fg));
        }
    }
    None
}

#[tokio::test]
async fn a_queue_with_work_and_no_live_worker_is_drawn_critical() {
    let redis = RedisServer::start();
    let client = Client::connect(&redis.url()).await.unwrap();
    let admin = rtq_core::admin::Admin::new(&client);
    let q = client.queue("orphaned").unwrap();
    for i in 0..3 {
        q.submit(TaskRequest::json(json!({ "i": i })))
            .await
            .unwrap();
    }
    let mut app = App::new("redis://x/".into(), false);
    // The queue is listed by a background SADD on first use.
    for _ in 0..500 {
        app.on_fetched(fetch::queues(&admin).await.unwrap());
        if !app.queues.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let buffer = draw(&app);
    let (line, colour) = find(&buffer, "no worker").expect("a 'no worker' state");
    assert!(line.contains("orphaned"), "{line}");
    assert_eq!(colour, Color::Red, "{line}");
    assert!(find(&buffer, "running").is_none());

    // NO_COLOR: the same words, no colour anywhere.
    app.no_color = true;
    let buffer = draw(&app);
    assert!(find(&buffer, "no worker").is_some());
    for cell in buffer.content.iter() {
        assert_eq!((cell.fg, cell.bg), (Color::Reset, Color::Reset));
    }
}
