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
    let screen = render(&app, 80, 30);
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
