//! Acting on the right thing in live lists: the selection is an identity
//! kept across refreshes and rows inserted above, confirmations name what
//! they act on, marks survive a declined confirmation and reach tasks on
//! other pages, status messages expire without hiding the filter, and a
//! late refresh shows at once. Real Redis (seeded through the real write
//! path), real frames (TestBackend).

mod support;

use std::time::{Duration, Instant};

use crossterm::event::KeyCode;
use rtq_console::fetch::{self, Action};
use rtq_console::state::{App, Effect, STATUS_TTL};
use rtq_core::TaskRequest;
use serde_json::json;
use support::*;

async fn refresh_tasks(app: &mut App, seed: &Seeded) {
    let (tab, offset, page) = app.plan().tasks.unwrap();
    app.on_fetched(
        fetch::tasks(&seed.admin, "llm", tab, offset, page)
            .await
            .unwrap(),
    );
}

async fn pending_app(seed: &Seeded) -> App {
    let mut app = App::new("redis://x/".into(), false);
    app.on_fetched(fetch::queues(&seed.admin).await.unwrap());
    app.on_key(KeyCode::Char('3'));
    refresh_tasks(&mut app, seed).await;
    app
}

async fn submit(seed: &Seeded, id: &str, priority: i16) {
    seed.client
        .queue("llm")
        .unwrap()
        .submit(TaskRequest::json(json!({})).id(id).priority(priority))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_selected_task_stays_selected_when_rows_are_inserted_above_it() {
    let seed = Seeded::new().await;
    let mut app = pending_app(&seed).await;
    // p4 (priority 9) first, then p0..p3: select p1.
    app.on_key(KeyCode::Down);
    app.on_key(KeyCode::Down);
    assert_eq!(app.selected_task().unwrap().id, "p1");
    let row_before = app.cursor();
    // Two urgent tasks arrive and sort above it.
    submit(&seed, "urgent-a", 50).await;
    submit(&seed, "urgent-b", 50).await;
    refresh_tasks(&mut app, &seed).await;
    assert_eq!(app.selected_task().unwrap().id, "p1");
    assert_eq!(
        app.cursor(),
        row_before + 2,
        "the cursor moved with the row"
    );
    // Acting acts on p1, and the confirmation says so.
    app.on_key(KeyCode::Char('c'));
    let confirm = app.confirm.clone().unwrap();
    assert!(confirm.message.contains("task p1"), "{}", confirm.message);
    assert_eq!(
        confirm.action,
        Action::Cancel("llm".into(), vec!["p1".into()])
    );
    // The frame highlights p1 too.
    app.on_key(KeyCode::Char('n'));
    let highlighted = highlighted_rows(&app);
    assert_eq!(highlighted.len(), 1, "{highlighted:?}");
    assert!(highlighted[0].contains("p1"), "{highlighted:?}");
}

/// The text of the rows drawn reversed (the table's highlight).
fn highlighted_rows(app: &App) -> Vec<String> {
    use ratatui::backend::TestBackend;
    use ratatui::style::Modifier;
    let mut terminal = ratatui::Terminal::new(TestBackend::new(120, 30)).unwrap();
    terminal
        .draw(|f| rtq_console::render::draw(f, app))
        .unwrap();
    let buffer = terminal.backend().buffer().clone();
    (1..29u16)
        .filter(|&y| (2..60u16).all(|x| buffer[(x, y)].modifier.contains(Modifier::REVERSED)))
        .map(|y| (0..120u16).map(|x| buffer[(x, y)].symbol()).collect())
        .collect()
}

#[tokio::test]
async fn when_the_selected_task_leaves_the_list_its_neighbour_is_selected() {
    let seed = Seeded::new().await;
    let mut app = pending_app(&seed).await;
    app.on_key(KeyCode::Down);
    assert_eq!(app.selected_task().unwrap().id, "p0");
    seed.client
        .queue("llm")
        .unwrap()
        .cancel("p0", "test")
        .await
        .unwrap();
    refresh_tasks(&mut app, &seed).await;
    let now = app.selected_task().unwrap().id.clone();
    assert_eq!(now, "p1", "the row that took its place");
    app.on_key(KeyCode::Char('r'));
    assert!(app.confirm.as_ref().unwrap().message.contains("task p1"));
}

#[tokio::test]
async fn marks_survive_a_declined_confirmation_and_every_action_uses_all_of_them() {
    let seed = Seeded::new().await;
    let mut app = pending_app(&seed).await;
    // Mark p4, p0, p1, p2 (space marks and moves down).
    for _ in 0..4 {
        app.on_key(KeyCode::Char(' '));
    }
    assert_eq!(app.marked.len(), 4);
    app.on_key(KeyCode::Char('c'));
    let message = app.confirm.as_ref().unwrap().message.clone();
    assert!(
        message.contains("4 tasks: p0, p1, p2 and 1 more"),
        "{message}"
    );
    assert_eq!(app.on_key(KeyCode::Char('n')), None);
    assert_eq!(
        app.marked.len(),
        4,
        "a declined confirmation keeps the marks"
    );
    assert!(app.status.as_ref().unwrap().0.contains("marks kept"));
    // Priority on marks: every marked task, with its own priority.
    let Some(Effect::Action(Action::Priority(queue, mut changes))) = app.on_key(KeyCode::Char('+'))
    else {
        panic!("expected a priority action")
    };
    changes.sort();
    assert_eq!(queue, "llm");
    assert_eq!(
        changes,
        vec![
            ("p0".to_string(), 1),
            ("p1".to_string(), 1),
            ("p2".to_string(), 1),
            ("p4".to_string(), 10)
        ]
    );
    // Confirmed: the action takes all four, then the marks are cleared.
    app.on_key(KeyCode::Char('r'));
    let Some(Effect::Action(Action::Requeue(_, ids))) = app.on_key(KeyCode::Char('y')) else {
        panic!("expected a requeue")
    };
    assert_eq!(ids.len(), 4);
    assert!(app.marked.is_empty());
}

#[tokio::test]
async fn marks_on_another_page_are_used_by_priority_changes() {
    let seed = Seeded::new().await;
    let mut app = pending_app(&seed).await;
    app.page = 2; // p4, p0 | p1, p2 | p3
    app.offset = 0;
    refresh_tasks(&mut app, &seed).await;
    app.on_key(KeyCode::Char(' ')); // p4 marked
    app.on_key(KeyCode::PageDown);
    refresh_tasks(&mut app, &seed).await;
    assert_eq!(app.selected_task().unwrap().id, "p1");
    app.on_key(KeyCode::Char(' ')); // p1 marked
    let Some(Effect::Action(Action::Priority(_, mut changes))) = app.on_key(KeyCode::Char('-'))
    else {
        panic!("expected a priority action")
    };
    changes.sort();
    assert_eq!(
        changes,
        vec![("p1".to_string(), -1), ("p4".to_string(), 8)],
        "p4 is on another page and still changes"
    );
}

#[tokio::test]
async fn a_status_message_expires_and_never_hides_the_active_filter() {
    let seed = Seeded::new().await;
    let mut app = pending_app(&seed).await;
    app.on_key(KeyCode::Char('/'));
    for c in "p".chars() {
        app.on_key(KeyCode::Char(c));
    }
    app.on_key(KeyCode::Enter);
    app.read_only = true;
    app.on_key(KeyCode::Char('c'));
    let frame = render(&app, 120, 30);
    let footer = frame.lines().last().unwrap().to_string();
    assert!(footer.contains("read-only"), "{footer}");
    assert!(footer.contains("filter: p"), "{footer}");
    // Time passes: the message goes, the filter and the key hints stay.
    app.tick(Instant::now() + STATUS_TTL);
    assert!(app.status.is_none());
    let footer = render(&app, 120, 30).lines().last().unwrap().to_string();
    assert!(
        footer.contains("filter: p") && footer.contains("? help"),
        "{footer}"
    );
}

#[tokio::test]
async fn a_late_refresh_shows_no_answer_instead_of_connected() {
    let seed = Seeded::new().await;
    let mut app = pending_app(&seed).await;
    app.refresh = Duration::from_millis(500);
    let header = render(&app, 160, 30).lines().next().unwrap().to_string();
    assert!(header.contains("connected"), "{header}");
    // The last answer came 5 s ago: Redis is frozen or overloaded.
    app.last_data = Some(Instant::now() - Duration::from_secs(5));
    let header = render(&app, 160, 30).lines().next().unwrap().to_string();
    assert!(header.contains("no answer for 5 s"), "{header}");
    assert!(!header.contains(" connected"), "{header}");
}

#[tokio::test]
async fn the_selected_queue_stays_selected_when_a_queue_appears_above_it() {
    let seed = Seeded::new().await;
    let mut app = App::new("redis://x/".into(), false);
    app.on_fetched(fetch::queues(&seed.admin).await.unwrap());
    assert_eq!(app.queue.as_deref(), Some("llm"));
    let names = |app: &App| -> Vec<String> {
        app.visible_queues()
            .iter()
            .map(|q| q.overview.name.clone())
            .collect()
    };
    for name in ["aaa", "abc"] {
        seed.client
            .queue(name)
            .unwrap()
            .submit(TaskRequest::json(json!({})))
            .await
            .unwrap();
    }
    // A queue is listed by a background SADD on its first use: wait for it.
    for _ in 0..500 {
        app.on_fetched(fetch::queues(&seed.admin).await.unwrap());
        if names(&app).len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rows = names(&app);
    let llm = rows.iter().position(|n| n == "llm").unwrap();
    assert!(llm > 0, "the new queues sort above: {rows:?}");
    assert_eq!(app.queue.as_deref(), Some("llm"));
    assert_eq!(app.cursor(), llm);
    // Moving the cursor selects by what is under it.
    app.on_key(KeyCode::Char('g'));
    assert_eq!(app.queue.as_deref(), Some(rows[0].as_str()));
}

#[tokio::test]
async fn a_task_is_found_by_id_anywhere_in_the_queue_and_a_wrong_id_says_so() {
    let seed = Seeded::new().await;
    let mut app = pending_app(&seed).await;
    app.page = 2; // the page shows p4, p0 only
    refresh_tasks(&mut app, &seed).await;
    assert!(app.visible_tasks().iter().all(|t| t.id != "p3"));
    app.on_key(KeyCode::Char('i'));
    for c in "p3".chars() {
        app.on_key(KeyCode::Char(c));
    }
    assert_eq!(app.on_key(KeyCode::Enter), Some(Effect::Refresh));
    assert_eq!(app.view, rtq_console::state::View::Detail);
    let plan = app.plan();
    assert_eq!(plan.detail.as_deref(), Some("p3"));
    app.on_fetched(
        fetch::detail_or_missing(&seed.admin, "llm", "p3")
            .await
            .unwrap(),
    );
    assert_eq!(app.selected_task().unwrap().id, "p3");
    let frame = render(&app, 120, 30);
    assert!(frame.contains("task p3"), "{frame}");

    // An id that does not exist: back to the list, and the reason.
    app.on_key(KeyCode::Char('i'));
    for c in "nope".chars() {
        app.on_key(KeyCode::Char(c));
    }
    app.on_key(KeyCode::Enter);
    app.on_fetched(
        fetch::detail_or_missing(&seed.admin, "llm", "nope")
            .await
            .unwrap(),
    );
    assert_eq!(app.view, rtq_console::state::View::Tasks);
    assert!(
        app.status
            .as_ref()
            .unwrap()
            .0
            .contains("no task nope in llm"),
        "{:?}",
        app.status
    );
}
