//! A stream queue (protocol v3) in the console, from a real Redis: the
//! queue list and the detail view show its mode, the actions it does not
//! have say so in the status line and do nothing else, cancel works.
//! Frames are rendered with ratatui's TestBackend. Beside the seeded exact
//! queue "llm", a stream queue "fast" (2 bands) has 3 tasks: "f-run" taken
//! by a hand-driven worker "gpu-s" (the real `rtq3` functions), "f0" and
//! "f1" queued.

mod support;

use crossterm::event::KeyCode;
use rtq_console::fetch::{self, Action};
use rtq_console::state::{App, Effect, View};
use rtq_core::admin::QueueMode;
use rtq_core::functions::v3;
use rtq_core::keys::QueueKeys;
use rtq_core::{TaskRequest, TaskState};
use serde_json::json;
use support::*;

async fn with_stream_queue(seed: &Seeded) {
    let q = seed.client.queue("fast").unwrap();
    q.create_stream(2, 0).await.unwrap();
    for id in ["f-run", "f0", "f1"] {
        q.submit(TaskRequest::json(json!({"id": id})).id(id))
            .await
            .unwrap();
    }
    let mut conn = redis::Client::open(seed.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys = QueueKeys::new("fast").unwrap();
    v3::beat(&mut conn, &keys, "gpu-s", 30_000, &[])
        .await
        .unwrap();
    // Priority 0 of 2 bands is band 1.
    let got = v3::read_new(&mut conn, &keys, "gpu-s", 1, 1, None)
        .await
        .unwrap();
    assert_eq!(got[0].id, "f-run");
}

/// The app in the queues view with "fast" selected.
async fn app_on_fast(seed: &Seeded) -> App {
    let mut app = App::new("redis://127.0.0.1:1/".into(), false);
    app.on_fetched(fetch::queues(&seed.admin).await.unwrap());
    for _ in 0..5 {
        if app.queue.as_deref() == Some("fast") {
            break;
        }
        app.on_key(KeyCode::Down);
    }
    assert_eq!(app.queue.as_deref(), Some("fast"));
    app
}

fn row<'a>(screen: &'a str, name: &str) -> &'a str {
    screen
        .lines()
        .find(|l| l.trim_start_matches('│').starts_with(name))
        .unwrap_or_else(|| panic!("no row {name} in\n{screen}"))
}

#[tokio::test]
async fn the_queue_list_the_footer_and_the_detail_show_the_mode() {
    let seed = Seeded::new().await;
    with_stream_queue(&seed).await;
    let mut app = app_on_fast(&seed).await;
    let screen = render(&app, 80, 24);
    let fast = row(&screen, "fast");
    assert!(fast.contains("stream"), "{fast}\n{screen}");
    let cells: Vec<&str> = fast.trim_matches('│').split_whitespace().collect();
    assert_eq!(
        &cells[0..5],
        ["fast", "[stream]", "running", "2", "1"],
        "{fast}"
    );
    let llm = row(&screen, "llm");
    assert!(!llm.contains("stream"), "{llm}");
    assert!(screen.contains("queue: fast (stream, 2 bands)"), "{screen}");
    assert!(screen.lines().all(|l| l.chars().count() == 80));

    // The detail of the running task.
    app.on_key(KeyCode::Char('3'));
    app.on_key(KeyCode::Char('t')); // in flight
    let (tab, offset, page) = app.plan().tasks.unwrap();
    app.on_fetched(
        fetch::tasks(&seed.admin, "fast", tab, offset, page)
            .await
            .unwrap(),
    );
    let tasks = render(&app, 80, 24);
    assert!(
        tasks.contains("f-run") && tasks.contains("gpu-s"),
        "{tasks}"
    );
    app.on_key(KeyCode::Enter);
    assert_eq!(app.view, View::Detail);
    let id = app.plan().detail.unwrap();
    app.on_fetched(fetch::detail(&seed.admin, "fast", &id).await.unwrap());
    let detail = render(&app, 100, 30);
    assert!(detail.contains("task f-run"), "{detail}");
    assert!(detail.contains("stream queue, 2 bands"), "{detail}");
    assert!(detail.contains("worker gpu-s"), "{detail}");
    assert!(
        detail.contains("(failures 0/3)"),
        "read from the entry: {detail}"
    );
    assert!(detail.contains(r#"input {"id":"f-run"}"#), "{detail}");

    // The nodes view: the stream worker is busy with its one task.
    app.on_key(KeyCode::Char('2'));
    app.on_fetched(fetch::nodes(&seed.admin, "fast").await.unwrap());
    let nodes = render(&app, 80, 24);
    let worker = row(&nodes, "gpu-s");
    assert!(worker.contains("busy"), "{worker}\n{nodes}");
}

#[tokio::test]
async fn refused_actions_say_why_and_do_nothing_and_cancel_works() {
    let seed = Seeded::new().await;
    with_stream_queue(&seed).await;
    let mut app = app_on_fast(&seed).await;
    assert_eq!(app.queue_mode("fast"), QueueMode::Stream { bands: 2 });
    // Queue actions, from the queues view.
    for (key, action) in [('p', "pause"), ('X', "purge")] {
        app.status = None;
        assert_eq!(app.on_key(KeyCode::Char(key)), None, "{key}");
        assert!(app.confirm.is_none() && app.input.is_none(), "{key}");
        let (msg, failed) = app.status.clone().unwrap();
        assert!(failed, "{key}");
        assert!(
            msg.contains(&format!(
                "queue fast is a stream queue: {action} is not available on stream queues yet"
            )),
            "{key}: {msg}"
        );
    }
    let screen = render(&app, 120, 24);
    assert!(
        screen.contains("fast is a stream queue: purge is not available"),
        "{screen}"
    );
    // Task actions, from the tasks view (pending tab).
    app.on_key(KeyCode::Char('3'));
    let (tab, offset, page) = app.plan().tasks.unwrap();
    app.on_fetched(
        fetch::tasks(&seed.admin, "fast", tab, offset, page)
            .await
            .unwrap(),
    );
    let pending = render(&app, 80, 24);
    assert!(
        pending.contains("f0") && pending.contains("f1"),
        "{pending}"
    );
    for (key, action) in [
        ('r', "requeue"),
        ('+', "changing a priority"),
        ('-', "changing a priority"),
        ('d', "deleting a task"),
    ] {
        app.status = None;
        assert_eq!(app.on_key(KeyCode::Char(key)), None, "{key}");
        assert!(app.confirm.is_none() && app.input.is_none(), "{key}");
        let msg = app.status.clone().unwrap().0;
        assert!(
            msg.contains(&format!("{action} is not available")),
            "{key}: {msg}"
        );
    }
    // Cancel asks, then cancels through rtq3.
    assert_eq!(app.on_key(KeyCode::Char('c')), None);
    assert!(app.confirm.is_some());
    let Some(Effect::Action(action)) = app.on_key(KeyCode::Char('y')) else {
        panic!("cancel was not confirmed")
    };
    assert_eq!(action, Action::Cancel("fast".into(), vec!["f0".into()]));
    let msg = fetch::perform(&seed.admin, &action).await.unwrap();
    assert_eq!(msg, "cancelled 1 task(s) (0 already ended)");
    assert_eq!(
        seed.admin.task("fast", "f0").await.unwrap().state,
        TaskState::Cancelled
    );
    // Sent anyway (an older console), a refused action fails with the
    // same message and writes nothing.
    let err = fetch::perform(&seed.admin, &Action::Pause("fast".into(), true))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("pause is not available"), "{err}");
    // Max depth works.
    fetch::perform(&seed.admin, &Action::MaxDepth("fast".into(), 9))
        .await
        .unwrap();
    assert_eq!(seed.admin.overview("fast").await.unwrap().max_depth, 9);
}
