//! Update logic without a terminal, and every action's round trip against
//! a real Redis.

mod support;

use crossterm::event::KeyCode;
use rtq_console::fetch::{self, Action};
use rtq_console::state::{App, Effect, View};
use rtq_core::TaskState;
use support::*;

async fn tasks_app(seed: &Seeded, tab_presses: usize) -> App {
    let mut app = App::new("redis://x/".into(), false);
    app.on_fetched(fetch::queues(&seed.admin).await.unwrap());
    app.on_key(KeyCode::Char('3'));
    for _ in 0..tab_presses {
        app.on_key(KeyCode::Char('t'));
    }
    let (tab, offset, page) = app.plan().tasks.unwrap();
    app.on_fetched(
        fetch::tasks(&seed.admin, "llm", tab, offset, page)
            .await
            .unwrap(),
    );
    app
}

#[tokio::test]
async fn navigation_filter_and_views() {
    let seed = Seeded::new().await;
    let mut app = tasks_app(&seed, 0).await;
    assert_eq!(app.view, View::Tasks);
    assert_eq!(app.selected_task().unwrap().id, "p4");
    app.on_key(KeyCode::Char('j'));
    app.on_key(KeyCode::Down);
    assert_eq!(app.selected_task().unwrap().id, "p1");
    app.on_key(KeyCode::Char('G'));
    assert_eq!(app.selected_task().unwrap().id, "p3");
    app.on_key(KeyCode::Char('g'));
    assert_eq!(app.selected_task().unwrap().id, "p4");
    // Filter narrows the rows; Esc clears it first, then goes back.
    app.on_key(KeyCode::Char('/'));
    for c in "p2".chars() {
        app.on_key(KeyCode::Char(c));
    }
    app.on_key(KeyCode::Enter);
    assert_eq!(app.visible_tasks().len(), 1);
    app.on_key(KeyCode::Esc);
    assert_eq!(app.visible_tasks().len(), 5);
    app.on_key(KeyCode::Esc);
    assert_eq!(app.view, View::Queues);
    assert_eq!(app.on_key(KeyCode::Tab), Some(Effect::Refresh));
    assert_eq!(app.view, View::Nodes);
    app.on_key(KeyCode::Char('q'));
    assert!(app.quit);
}

#[tokio::test]
async fn destructive_actions_ask_first_and_default_to_no() {
    let seed = Seeded::new().await;
    let mut app = tasks_app(&seed, 1).await; // in flight
    assert_eq!(app.on_key(KeyCode::Char('c')), None);
    assert!(app
        .confirm
        .as_ref()
        .unwrap()
        .message
        .contains("Cancel task h1 in llm?"));
    // Anything but y means no.
    assert_eq!(app.on_key(KeyCode::Enter), None);
    assert!(app.confirm.is_none());
    // Mark both, cancel both.
    app.on_key(KeyCode::Char('g'));
    app.on_key(KeyCode::Char(' '));
    app.on_key(KeyCode::Char(' '));
    app.on_key(KeyCode::Char('c'));
    let effect = app.on_key(KeyCode::Char('y'));
    let Some(Effect::Action(action)) = effect else {
        panic!("{effect:?}")
    };
    assert_eq!(
        action,
        Action::Cancel("llm".into(), vec!["h1".into(), "h2".into()])
    );

    // Purge wants the queue's name typed out.
    app.on_key(KeyCode::Char('X'));
    for c in "lm".chars() {
        app.on_key(KeyCode::Char(c));
    }
    assert_eq!(app.on_key(KeyCode::Enter), None);
    assert!(app.status.as_ref().unwrap().0.contains("did not match"));
    app.on_key(KeyCode::Char('X'));
    for c in "llm".chars() {
        app.on_key(KeyCode::Char(c));
    }
    assert_eq!(
        app.on_key(KeyCode::Enter),
        Some(Effect::Action(Action::Purge("llm".into())))
    );
}

#[tokio::test]
async fn read_only_disables_every_action() {
    let seed = Seeded::new().await;
    let mut app = tasks_app(&seed, 0).await;
    app.read_only = true;
    for key in ['r', 'c', '+', '-', 'p', 'm', 'X'] {
        assert_eq!(app.on_key(KeyCode::Char(key)), None, "{key}");
        assert!(app.confirm.is_none() && app.input.is_none(), "{key}");
        assert!(app.status.as_ref().unwrap().0.contains("read-only"));
    }
}

#[tokio::test]
async fn every_action_round_trips_against_redis() {
    let seed = Seeded::new().await;
    let a = &seed.admin;
    // Priority: raise p0 above p4 (9 -> p0 at 10).
    let msg = fetch::perform(a, &Action::Priority("llm".into(), vec![("p0".into(), 10)]))
        .await
        .unwrap();
    assert!(msg.contains("priority changed"), "{msg}");
    assert_eq!(a.pending("llm", 0, 1).await.unwrap()[0].id, "p0");
    // Max depth.
    fetch::perform(a, &Action::MaxDepth("llm".into(), 7))
        .await
        .unwrap();
    assert_eq!(a.overview("llm").await.unwrap().max_depth, 7);
    // Cancel a running task: it ends at once.
    let msg = fetch::perform(a, &Action::Cancel("llm".into(), vec!["h1".into()]))
        .await
        .unwrap();
    assert!(msg.contains("cancelled 1"), "{msg}");
    assert_eq!(
        a.task("llm", "h1").await.unwrap().state,
        TaskState::Cancelled
    );
    // Requeue the failed one: queued again.
    fetch::perform(a, &Action::Requeue("llm".into(), vec!["bad".into()]))
        .await
        .unwrap();
    assert_eq!(a.task("llm", "bad").await.unwrap().state, TaskState::Queued);
    // Resume, then pause again.
    let msg = fetch::perform(a, &Action::Pause("llm".into(), false))
        .await
        .unwrap();
    assert!(msg.contains("resumed llm"), "{msg}");
    assert!(!a.overview("llm").await.unwrap().paused);
    fetch::perform(a, &Action::Pause("llm".into(), true))
        .await
        .unwrap();
    assert!(a.overview("llm").await.unwrap().paused);
    // Purge what is pending.
    let pending = a.overview("llm").await.unwrap().pending;
    let msg = fetch::perform(a, &Action::Purge("llm".into()))
        .await
        .unwrap();
    assert!(msg.contains(&format!("purged {pending}")), "{msg}");
    assert_eq!(a.overview("llm").await.unwrap().pending, 0);
    // An unknown id is counted as gone (a bulk action goes on with the
    // other tasks it named).
    let msg = fetch::perform(a, &Action::Requeue("llm".into(), vec!["nope".into()]))
        .await
        .unwrap();
    assert_eq!(msg, "requeued 0 task(s), 1 already gone");
}

/// Runs the fetcher for a while against `url` and returns what it sent.
async fn run_fetcher(url: String, read_only: bool) -> Vec<rtq_console::model::Fetched> {
    let (_plan_tx, plan_rx) = tokio::sync::watch::channel(fetch::Plan::default());
    let (_action_tx, action_rx) = tokio::sync::mpsc::channel(4);
    let (data_tx, mut data_rx) = tokio::sync::mpsc::channel(256);
    let fetcher = tokio::spawn(fetch::run(
        url,
        rtq_core::ClientConfig::default(),
        read_only,
        std::time::Duration::from_millis(100),
        plan_rx,
        action_rx,
        data_tx,
    ));
    let mut seen = Vec::new();
    let until = tokio::time::Instant::now() + std::time::Duration::from_millis(1500);
    while let Ok(Some(item)) = tokio::time::timeout_at(until, data_rx.recv()).await {
        seen.push(item);
    }
    fetcher.abort();
    seen
}

#[tokio::test]
async fn the_console_reaps_dead_workers_unless_it_is_read_only() {
    use rtq_core::functions::heartbeat::{Beat, Register};
    // No live worker (whose heartbeats would housekeep): a worker "ghost"
    // registered, then froze; its lease lapsed and only the console can
    // notice.
    let seed = rtq_testkit::RedisServer::start();
    let keys = rtq_core::keys::QueueKeys::new("llm").unwrap();
    let mut conn = redis::Client::open(seed.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let beat = Beat {
        worker: "ghost",
        instance: "i1",
        lease_ms: 600_000,
        slots: 1,
        accepting: true,
        running: &[],
        info: &[],
    };
    rtq_core::functions::call(&mut conn, &keys, &Register(beat))
        .await
        .unwrap();
    let mut sync = seed.conn();
    let _: () = redis::cmd("ZADD")
        .arg(keys.workers())
        .arg("XX")
        .arg(1)
        .arg("ghost")
        .query(&mut sync)
        .unwrap();
    let _: () = redis::cmd("SADD")
        .arg(rtq_core::keys::QUEUES)
        .arg("llm")
        .query(&mut sync)
        .unwrap();
    let registered = |conn: &mut redis::Connection| -> Option<f64> {
        redis::cmd("ZSCORE")
            .arg(keys.workers())
            .arg("ghost")
            .query(conn)
            .unwrap()
    };
    // Read-only: the console writes nothing, the dead worker stays listed.
    run_fetcher(seed.url(), true).await;
    assert_eq!(registered(&mut sync), Some(1.0));
    // Otherwise the console's housekeeping reaps it.
    run_fetcher(seed.url(), false).await;
    assert_eq!(registered(&mut sync), None);
    let state: Option<String> = redis::cmd("HGET")
        .arg(keys.worker("ghost"))
        .arg("state")
        .query(&mut sync)
        .unwrap();
    assert_eq!(state.as_deref(), Some("dead"));
}

#[tokio::test]
async fn the_console_reports_a_server_that_would_lose_tasks() {
    let seed = Seeded::new().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("allkeys-lru")
        .query(&mut seed.redis.conn())
        .unwrap();
    let seen = run_fetcher(seed.redis.url(), true).await;
    let warned = seen.iter().any(|f| {
        matches!(f, rtq_console::model::Fetched::ActionDone(m, true) if m.contains("allkeys-lru"))
    });
    assert!(warned, "the eviction policy is named: {seen:?}");
}
