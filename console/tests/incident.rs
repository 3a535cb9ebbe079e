//! Finding and acting in an incident (issue 13): filter words, sort by
//! column, bulk actions on a filter or a group with the count confirmed,
//! departed workers and the event tail. TestBackend on a real Redis.

mod support;

use crossterm::event::KeyCode;
use rtq_console::fetch::{self, Action};
use rtq_console::model::Fetched;
use rtq_console::state::{App, Effect, View};
use rtq_core::TaskRequest;
use serde_json::json;
use support::*;

fn type_text(app: &mut App, text: &str) {
    for c in text.chars() {
        app.on_key(KeyCode::Char(c));
    }
}

async fn tasks_app(seed: &Seeded, tab_presses: usize) -> App {
    let mut app = App::new("redis://x/".into(), false);
    app.on_fetched(fetch::queues(&seed.admin).await.unwrap());
    app.on_key(KeyCode::Char('3'));
    for _ in 0..tab_presses {
        app.on_key(KeyCode::Char('t'));
    }
    refresh(seed, &mut app).await;
    app
}

async fn refresh(seed: &Seeded, app: &mut App) {
    let (tab, offset, page) = app.plan().tasks.unwrap();
    app.on_fetched(
        fetch::tasks(&seed.admin, "llm", tab, offset, page)
            .await
            .unwrap(),
    );
}

fn shown_ids(app: &App) -> Vec<String> {
    app.visible_tasks().iter().map(|t| t.id.clone()).collect()
}

#[tokio::test]
async fn filter_words_pick_errors_workers_and_labels() {
    let seed = Seeded::new().await;
    // Finished tab: "bad" failed with CUDA out of memory on gpu-1.
    let mut app = tasks_app(&seed, 2).await;
    app.on_key(KeyCode::Char('/'));
    type_text(&mut app, "err:memory");
    assert_eq!(shown_ids(&app), ["bad"]);
    app.on_key(KeyCode::Esc);
    app.on_key(KeyCode::Char('/'));
    type_text(&mut app, "err:timeout");
    assert!(shown_ids(&app).is_empty());
    app.on_key(KeyCode::Esc);
    // In flight: h1, h2 on gpu-1 with label tenant=acme.
    let mut app = tasks_app(&seed, 1).await;
    app.on_key(KeyCode::Char('/'));
    type_text(&mut app, "worker:gpu-1 label:tenant=ac");
    assert_eq!(shown_ids(&app), ["h1", "h2"]);
    app.on_key(KeyCode::Enter);
    let screen = render(&app, 120, 30);
    assert!(
        screen.contains("filter: worker:gpu-1 label:tenant=ac"),
        "{screen}"
    );
    app.on_key(KeyCode::Char('/'));
    type_text(&mut app, "x");
    assert!(shown_ids(&app).is_empty(), "tenant=acx matches nothing");
}

#[tokio::test]
async fn s_cycles_the_sort_column_and_s_shift_reverses_it() {
    let seed = Seeded::new().await;
    // Pending p0..p4: p4 has priority 9.
    let mut app = tasks_app(&seed, 0).await;
    assert_eq!(shown_ids(&app)[0], "p4", "hand-out order: priority first");
    app.on_key(KeyCode::Char('s'));
    assert_eq!(shown_ids(&app), ["p0", "p1", "p2", "p3", "p4"]);
    let screen = render(&app, 120, 30);
    assert!(screen.contains("sorted by id (this page)"), "{screen}");
    app.on_key(KeyCode::Char('S'));
    assert_eq!(shown_ids(&app), ["p4", "p3", "p2", "p1", "p0"]);
    assert!(render(&app, 120, 30).contains("sorted by id, reversed"));
    // Queues view: by state, worst first; the title says so.
    seed.client
        .queue("orphan")
        .unwrap()
        .submit(TaskRequest::json(json!({})))
        .await
        .unwrap();
    let mut app = App::new("redis://x/".into(), false);
    app.on_fetched(fetch::queues(&seed.admin).await.unwrap());
    let names = |app: &App| -> Vec<String> {
        app.visible_queues()
            .iter()
            .map(|q| q.overview.name.clone())
            .collect()
    };
    assert_eq!(names(&app), ["llm", "orphan"]);
    app.on_key(KeyCode::Char('s'));
    assert_eq!(names(&app), ["orphan", "llm"], "no worker is critical");
    let screen = render(&app, 120, 40);
    assert!(screen.contains("sorted by state [s/S]"), "{screen}");
}

#[tokio::test]
async fn a_filter_marks_every_match_and_bulk_delete_confirms_the_count() {
    let seed = Seeded::new().await;
    // 60 more failures of one kind on another page than the first 50.
    let q = seed.client.queue("llm").unwrap();
    for i in 0..60 {
        q.submit(
            TaskRequest::json(json!({}))
                .id(format!("x{i:02}"))
                .label("model", if i % 2 == 0 { "llama" } else { "mistral" }),
        )
        .await
        .unwrap();
    }
    // Pending tab, page of 50: a label filter over the whole list.
    let mut app = tasks_app(&seed, 0).await;
    assert_eq!(app.tasks.as_ref().unwrap().total, 65);
    app.on_key(KeyCode::Char('/'));
    type_text(&mut app, "label:model=llama");
    app.on_key(KeyCode::Enter);
    let Some(Effect::Action(action @ Action::Match(..))) = app.on_key(KeyCode::Char('A')) else {
        panic!("A asks the fetcher to match the whole list")
    };
    let Action::Match(queue, tab, filter) = &action else {
        unreachable!()
    };
    let (ids, scanned) = fetch::matching(&seed.admin, queue, *tab, filter)
        .await
        .unwrap();
    assert_eq!(scanned, 65);
    assert_eq!(ids.len(), 30, "every llama task, also beyond the page");
    app.on_fetched(Fetched::Matched {
        queue: queue.clone(),
        filter: filter.clone(),
        ids,
        scanned,
    });
    assert_eq!(app.marked.len(), 30);
    // Cancel them all: the confirmation names the count and the first ids.
    assert_eq!(app.on_key(KeyCode::Char('c')), None);
    let message = app.confirm.as_ref().unwrap().message.clone();
    assert!(
        message.contains("30 tasks: x00, x02, x04 and 27 more"),
        "{message}"
    );
    let Some(Effect::Action(cancel)) = app.on_key(KeyCode::Char('y')) else {
        panic!("y confirms")
    };
    assert!(app.marked.is_empty(), "a confirmed action clears the marks");
    let msg = fetch::perform(&seed.admin, &cancel).await.unwrap();
    assert_eq!(msg, "cancelled 30 task(s) (0 already ended)");
    // Delete: the ended ones go; a pending one is left alone.
    let ids: Vec<String> = ["x00", "x02", "x01"].map(String::from).to_vec();
    let msg = fetch::perform(&seed.admin, &Action::Delete("llm".into(), ids))
        .await
        .unwrap();
    assert_eq!(msg, "deleted 2 task(s), 1 not ended (cancel first)");
    assert!(seed.admin.task("llm", "x00").await.is_err());
    assert!(seed.admin.task("llm", "x01").await.is_ok());
}

#[tokio::test]
async fn d_deletes_a_failure_group_after_naming_it() {
    let seed = Seeded::new().await;
    let mut app = tasks_app(&seed, 3).await;
    assert!(
        app.selected_group().is_some(),
        "the failures tab has a group"
    );
    app.on_key(KeyCode::Char('d'));
    let confirm = app.confirm.clone().expect("a confirmation");
    assert!(
        confirm.message.contains("Delete task bad that failed with"),
        "{}",
        confirm.message
    );
    assert!(confirm.message.contains("CUDA out of memory"));
    app.on_key(KeyCode::Char('n'));
    assert!(app.confirm.is_none());
    app.on_key(KeyCode::Char('d'));
    let Some(Effect::Action(delete)) = app.on_key(KeyCode::Char('y')) else {
        panic!("y confirms")
    };
    assert_eq!(delete, Action::Delete("llm".into(), vec!["bad".into()]));
    fetch::perform(&seed.admin, &delete).await.unwrap();
    refresh(&seed, &mut app).await;
    assert!(app.selected_group().is_none(), "the group is gone");
    // Read-only consoles cannot delete.
    let mut ro = App::new("redis://x/".into(), true);
    ro.view = View::Tasks;
    assert_eq!(ro.on_key(KeyCode::Char('d')), None);
    assert!(ro.status.as_ref().unwrap().0.contains("read-only"));
}

#[tokio::test]
async fn departed_workers_and_the_event_tail_show_in_the_nodes_view() {
    let mut seed = Seeded::new().await;
    seed.admin.cancel("llm", "h1").await.unwrap();
    seed.admin.cancel("llm", "h2").await.unwrap();
    seed.stop_worker();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let data = loop {
        let Fetched::Nodes(data) = fetch::nodes(&seed.admin, "llm").await.unwrap() else {
            panic!("nodes expected")
        };
        if !data.departed.is_empty() {
            break data;
        }
        assert!(std::time::Instant::now() < deadline, "gpu-1 never left");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(data.departed[0].id, "gpu-1");
    let kinds: Vec<&str> = data.events.iter().map(|e| e.kind.as_str()).collect();
    assert!(kinds.contains(&"cancelled"), "{kinds:?}");
    assert!(kinds.contains(&"paused"), "{kinds:?}");
    let mut app = App::new("redis://x/".into(), false);
    app.on_fetched(fetch::queues(&seed.admin).await.unwrap());
    app.on_key(KeyCode::Char('2'));
    app.on_fetched(Fetched::Nodes(data));
    let screen = render(&app, 140, 40);
    for text in [
        "1 departed in the last 10 min",
        "left ",
        "events, newest first",
        "cancelled",
        "h2",
    ] {
        assert!(screen.contains(text), "{text:?} missing:\n{screen}");
    }
}
