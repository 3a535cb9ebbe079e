//! Every view rendered with ratatui's TestBackend from a real Redis seeded
//! through the real write path, at 80x24 and at a wide size.

mod support;

use crossterm::event::KeyCode;
use rtq_console::fetch;
use rtq_console::state::{App, View};
use support::*;

async fn loaded(seed: &Seeded) -> App {
    let mut app = App::new("redis://127.0.0.1:1/".into(), false);
    app.on_fetched(fetch::queues(&seed.admin).await.unwrap());
    app
}

fn assert_contains(screen: &str, parts: &[&str]) {
    for p in parts {
        assert!(screen.contains(p), "missing {p:?} in\n{screen}");
    }
}

#[tokio::test]
async fn queues_view_shows_counts_latencies_and_sparklines() {
    let seed = Seeded::new().await;
    let app = loaded(&seed).await;
    let small = render(&app, 80, 24);
    assert_contains(
        &small,
        &[
            "1:Queues",
            "connected",
            "llm",
            "paused",
            "QUEUE",
            "PEND",
            "done per 10s",
            "queue depth",
        ],
    );
    let row = small
        .lines()
        .find(|l| l.contains("llm") && l.contains("paused"))
        .unwrap();
    let cells: Vec<&str> = row.trim_matches('│').split_whitespace().collect();
    // name, state, pending 5, running 2, ...
    assert_eq!(&cells[0..4], ["llm", "paused", "5", "2"], "{row}");
    let wide = render(&app, 140, 40);
    assert_contains(&wide, &["TTFC p50", "HEAD AGE", "MAX"]);
    assert!(small.lines().count() == 24 && small.lines().all(|l| l.chars().count() == 80));
}

#[tokio::test]
async fn nodes_view_shows_each_worker_with_labels_and_slots() {
    let seed = Seeded::new().await;
    let mut app = loaded(&seed).await;
    app.on_key(KeyCode::Char('2'));
    // Heartbeat fields are refreshed once per heartbeat (every second).
    for _ in 0..100 {
        let workers = seed.admin.workers("llm").await.unwrap();
        if workers.first().is_some_and(|w| w.field("busy") == "2") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    app.on_fetched(fetch::nodes(&seed.admin, "llm").await.unwrap());
    let screen = render(&app, 80, 24);
    assert_contains(
        &screen,
        &["workers of llm (1)", "gpu-1", "gpu=A100", "busy", "2/2"],
    );
    let wide = render(&app, 140, 30);
    assert_contains(&wide, &["UPTIME", "VERSION"]);
}

#[tokio::test]
async fn tasks_view_pages_pending_in_flight_and_finished() {
    let seed = Seeded::new().await;
    let mut app = loaded(&seed).await;
    app.on_key(KeyCode::Char('3'));
    let plan = app.plan();
    let (tab, offset, page) = plan.tasks.unwrap();
    app.on_fetched(
        fetch::tasks(&seed.admin, "llm", tab, offset, page)
            .await
            .unwrap(),
    );
    let pending = render(&app, 80, 24);
    assert_contains(&pending, &["llm: pending", "1-5 of 5", "p4", "9"]);
    // Priority 9 first, then FIFO.
    let order: Vec<&str> = pending
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|w| w.starts_with('p') && w.len() == 2)
        .collect();
    assert_eq!(order, ["p4", "p0", "p1", "p2", "p3"]);

    app.on_key(KeyCode::Char('t'));
    let (tab, offset, page) = app.plan().tasks.unwrap();
    app.on_fetched(
        fetch::tasks(&seed.admin, "llm", tab, offset, page)
            .await
            .unwrap(),
    );
    let running = render(&app, 100, 24);
    assert_contains(&running, &["in flight", "h1", "h2", "gpu-1", "CHUNKS"]);

    app.on_key(KeyCode::Char('t'));
    let (tab, offset, page) = app.plan().tasks.unwrap();
    app.on_fetched(
        fetch::tasks(&seed.admin, "llm", tab, offset, page)
            .await
            .unwrap(),
    );
    let finished = render(&app, 120, 24);
    assert_contains(
        &finished,
        &["finished", "bad", "failed", "CUDA out of memory", "done0"],
    );
}

#[tokio::test]
async fn detail_view_shows_timeline_input_and_live_tail() {
    let seed = Seeded::new().await;
    let mut app = loaded(&seed).await;
    app.on_key(KeyCode::Char('3'));
    app.on_key(KeyCode::Char('t'));
    let (tab, offset, page) = app.plan().tasks.unwrap();
    app.on_fetched(
        fetch::tasks(&seed.admin, "llm", tab, offset, page)
            .await
            .unwrap(),
    );
    app.on_key(KeyCode::Enter);
    assert_eq!(app.view, View::Detail);
    let id = app.plan().detail.unwrap();
    assert_eq!(id, "h1");
    app.on_fetched(fetch::detail(&seed.admin, "llm", &id).await.unwrap());
    let screen = render(&app, 100, 30);
    assert_contains(
        &screen,
        &[
            "task h1",
            "state running",
            "worker gpu-1",
            "tenant=acme",
            "timeline",
            "first chunk +",
            "live tail",
            "word0 word1",
            "input",
            "\"hold\":true",
        ],
    );
}

#[tokio::test]
async fn connection_loss_keeps_stale_data_and_says_since_when() {
    let seed = Seeded::new().await;
    let mut app = loaded(&seed).await;
    app.on_fetched(rtq_console::model::Fetched::Failed(
        "cannot reach Redis at redis://127.0.0.1:1/: refused".into(),
    ));
    let screen = render(&app, 80, 24);
    assert_contains(
        &screen,
        &["disconnected since", "(stale)", "llm", "cannot reach Redis"],
    );
}

#[tokio::test]
async fn help_is_generated_from_the_keymap() {
    let mut app = App::new("redis://x/".into(), true);
    app.on_key(KeyCode::Char('?'));
    // Tall enough for every binding (80x24 scrolls: see below).
    let screen = render(&app, 80, 40);
    for b in rtq_console::keymap::KEYMAP {
        assert!(screen.contains(b.help), "help lacks {:?}", b.help);
    }
    assert!(screen.contains("READ-ONLY"));
}

#[tokio::test]
async fn a_corrupt_queue_is_an_error_row_beside_the_healthy_one_with_its_reason_shown() {
    let seed = Seeded::new().await;
    seed.admin.pause("broken", true).await.unwrap();
    let broken = rtq_core::keys::QueueKeys::new("broken").unwrap();
    let mut conn = seed.redis.conn();
    let _: () = redis::cmd("DEL")
        .arg(broken.workers())
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(broken.workers())
        .arg("x")
        .query(&mut conn)
        .unwrap();
    let app = loaded(&seed).await;
    let screen = render(&app, 120, 30);
    let row = |name: &str| {
        screen
            .lines()
            .find(|l| l.trim_start_matches('│').starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name} in\n{screen}"))
            .to_string()
    };
    assert!(row("broken").contains("error"), "{screen}");
    assert!(row("llm").contains("paused"), "{screen}");
    assert!(
        screen.contains("WRONGTYPE"),
        "the reason is shown:\n{screen}"
    );
    assert!(screen.contains("connected"), "{screen}");
}

#[test]
fn the_title_bar_never_shows_a_password_of_any_url_form() {
    for url in [
        "redis://:TITLE-SECRET-1@127.0.0.1:6379/",
        "unix:///run/redis.sock?db=0&pass=TITLE-SECRET-1",
        "redis+unix:///run/redis.sock?password=TITLE-SECRET-1",
    ] {
        let app = App::new(rtq_core::redact_url(url), false);
        let screen = render(&app, 120, 10);
        assert!(!screen.contains("TITLE-SECRET-1"), "{screen}");
        assert!(screen.contains("***"), "{screen}");
    }
}

#[tokio::test]
async fn help_scrolls_at_80x24_so_every_key_can_be_read() {
    let mut app = App::new("redis://x/".into(), false);
    app.on_key(KeyCode::Char('?'));
    let mut seen = String::new();
    for _ in 0..rtq_console::keymap::KEYMAP.len() {
        seen.push_str(&render(&app, 80, 24));
        app.on_key(KeyCode::Char('j'));
        assert!(app.show_help, "j scrolls, it does not close");
    }
    for b in rtq_console::keymap::KEYMAP {
        assert!(seen.contains(b.help), "never shown at 80x24: {:?}", b.help);
    }
    assert!(render(&app, 80, 24).contains("j/k scroll"));
    app.on_key(KeyCode::Char('x'));
    assert!(!app.show_help, "any other key closes it");
}

#[tokio::test]
async fn a_long_error_scrolls_in_the_detail_and_never_hides_the_input() {
    let seed = Seeded::new().await;
    let mut app = loaded(&seed).await;
    let fetched = rtq_console::fetch::detail(&seed.admin, "llm", "bad")
        .await
        .unwrap();
    let rtq_console::model::Fetched::Detail(mut d) = fetched else {
        panic!("{fetched:?}")
    };
    // A 3.6 KB error, as a CUDA stack trace can be.
    if let Some(rtq_core::Outcome::Ended { message, .. }) = &mut d.info.outcome {
        *message = "trace line ".repeat(330);
    } else {
        panic!("bad has failed: {:?}", d.info.outcome)
    }
    app.view = rtq_console::state::View::Detail;
    app.detail_id = Some("bad".into());
    app.on_fetched(rtq_console::model::Fetched::Detail(d));
    let first = render(&app, 80, 24);
    assert!(first.contains("j/k scroll"), "{first}");
    assert!(
        !first.contains("input "),
        "the input is below the fold:\n{first}"
    );
    let mut seen = first;
    for _ in 0..60 {
        app.on_key(KeyCode::Char('j'));
        seen.push_str(&render(&app, 80, 24));
    }
    assert!(seen.contains("input "), "scrolling reaches the input");
    assert_eq!(app.view, rtq_console::state::View::Detail);
}

#[tokio::test]
async fn long_task_ids_are_shown_whole_on_a_wide_terminal() {
    let seed = Seeded::new().await;
    let long = format!("order-{}", "x".repeat(110));
    seed.client
        .queue("llm")
        .unwrap()
        .submit(rtq_core::TaskRequest::json(serde_json::json!({})).id(&long))
        .await
        .unwrap();
    let mut app = loaded(&seed).await;
    app.on_key(KeyCode::Char('3'));
    let (tab, offset, page) = app.plan().tasks.unwrap();
    app.on_fetched(
        fetch::tasks(&seed.admin, "llm", tab, offset, page)
            .await
            .unwrap(),
    );
    let screen = render(&app, 200, 30);
    assert!(screen.contains(&long), "the id is cut:\n{screen}");
}

/// Polls until the stats of "llm" carry a total-latency histogram (workers
/// send their tallies with their heartbeats), then loads the app.
async fn loaded_with_latency(seed: &Seeded) -> App {
    use rtq_core::admin::stats::Latency;
    for _ in 0..300 {
        let stats = seed.admin.stats("llm", 30).await.unwrap();
        if stats.total.count >= 3
            && stats
                .series_quantile(Latency::Total, 0.5)
                .iter()
                .any(|v| v.is_some())
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    loaded(seed).await
}

#[tokio::test]
async fn queues_view_charts_total_latency_p50_and_p99_with_latest_values() {
    use rtq_core::admin::stats::Latency;
    let seed = Seeded::new().await;
    let app = loaded_with_latency(&seed).await;
    let stats = &app
        .queues
        .iter()
        .find(|q| q.overview.name == "llm")
        .unwrap()
        .stats;
    let latest = |q: f64| {
        stats
            .series_quantile(Latency::Total, q)
            .into_iter()
            .rev()
            .find_map(|v| v)
            .map(|ms| rtq_console::render::fmt_lat(Some(ms)))
            .expect("a latency once the worker flushed its stats")
    };
    let (p50, p99) = (latest(0.5), latest(0.99));
    for (w, h) in [(80, 24), (140, 40)] {
        let screen = render(&app, w, h);
        assert_contains(
            &screen,
            &[
                &format!("total latency per 10s: p50 {p50} p99 {p99} (latest"),
                "done per 10s",
                "queue depth",
            ],
        );
        assert!(!screen.contains("no latency data yet"), "{screen}");
        // One labelled sparkline row each, in this order, under the title.
        let lines: Vec<&str> = screen.lines().collect();
        let title = lines
            .iter()
            .position(|l| l.contains("total latency"))
            .unwrap();
        assert!(lines[title + 1].ends_with(" p50│"), "{screen}");
        assert!(lines[title + 2].ends_with(" p99│"), "{screen}");
        // Buckets without finished tasks are drawn as absent, not as zero,
        // and the newest bucket with tasks has a bar in the p99 row (its
        // value is the scale's maximum or close to it).
        assert!(lines[title + 1].contains('·'), "{screen}");
        assert!(
            lines[title + 2].chars().any(|c| ('▁'..='█').contains(&c)),
            "{screen}"
        );
        assert!(screen.lines().all(|l| l.chars().count() == w as usize));
    }
}

#[tokio::test]
async fn latency_chart_says_when_there_is_no_data_and_honours_no_color() {
    use ratatui::backend::TestBackend;
    use ratatui::style::Color;
    use ratatui::Terminal;
    use rtq_core::TaskRequest;
    let seed = Seeded::new().await;
    // A registered queue with a pending task and no worker: nothing
    // finished, ever.
    seed.admin.set_max_depth("idle", 100).await.unwrap();
    seed.client
        .queue("idle")
        .unwrap()
        .submit(TaskRequest::json(serde_json::json!({})).id("i0"))
        .await
        .unwrap();
    let mut app = loaded_with_latency(&seed).await;
    app.queue = Some("idle".into());
    let screen = render(&app, 80, 24);
    assert_contains(
        &screen,
        &["total latency p50/p99 per 10s", "no latency data yet"],
    );
    // NO_COLOR: the chart is still drawn (its symbols and labels) but no
    // cell carries a colour.
    app.queue = Some("llm".into());
    app.no_color = true;
    let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
    terminal
        .draw(|f| rtq_console::render::draw(f, &app))
        .unwrap();
    let buffer = terminal.backend().buffer();
    assert!(buffer
        .content
        .iter()
        .all(|c| c.fg == Color::Reset && c.bg == Color::Reset));
    let text: String = buffer.content.iter().map(|c| c.symbol()).collect();
    assert!(text.contains("total latency per 10s: p50"), "{text}");
    // Tiny terminals must not panic.
    for (w, h) in [(20, 8), (80, 10), (5, 3)] {
        render(&app, w, h);
    }
}

#[tokio::test]
async fn hostile_latency_histograms_render_without_panic() {
    let seed = Seeded::new().await;
    // Every bucket of the window gets absurd and malformed histogram
    // fields, as a buggy or hostile writer could leave them.
    let keys = rtq_core::keys::QueueKeys::new("llm").unwrap();
    let mut conn = seed.redis.conn();
    let (now, _): (i64, i64) = redis::cmd("TIME").query(&mut conn).unwrap();
    let newest = now * 1000 / rtq_core::admin::stats::BUCKET_MS;
    for b in newest - 29..=newest {
        let _: () = redis::cmd("HSET")
            .arg(keys.stats(b))
            .arg("t:4294967295")
            .arg("18446744073709551615")
            .arg("t:7")
            .arg("junk")
            .arg("t:-3")
            .arg("2")
            .query(&mut conn)
            .unwrap();
    }
    let app = loaded(&seed).await;
    for (w, h) in [(80, 24), (30, 12)] {
        let screen = render(&app, w, h);
        assert!(screen.lines().count() == h as usize, "{screen}");
    }
    assert_contains(&render(&app, 80, 24), &["total latency per 10s: p50"]);
}
