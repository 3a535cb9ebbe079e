//! The failures tab: recent failures grouped by reason, with a bulk retry
//! of a whole group, against a real Redis seeded through the real write
//! path.

mod support;

use crossterm::event::KeyCode;
use rtq_console::fetch::{self, Action};
use rtq_console::model::TaskTab;
use rtq_console::state::{App, Effect};
use rtq_core::{TaskRequest, TaskState};
use serde_json::json;
use support::*;

#[tokio::test]
async fn failures_are_grouped_by_reason_and_a_group_is_retried_in_one_action() {
    let seed = Seeded::new().await;
    let q = seed.client.queue("llm").unwrap();
    // Free the worker's two slots (held tasks) and let the queue run.
    for id in ["h1", "h2"] {
        q.cancel(id, "make room").await.unwrap();
    }
    seed.admin.pause("llm", false).await.unwrap();
    for (id, reason) in [
        ("oom-1", "CUDA out of memory"),
        ("oom-2", "CUDA out of memory"),
        ("u-1", "upstream 503"),
    ] {
        let run = q.run(
            TaskRequest::json(json!({ "fail": reason }))
                .id(id)
                .max_attempts(1),
        );
        let r = tokio::time::timeout(std::time::Duration::from_secs(60), run)
            .await
            .expect("the task ends");
        assert!(r.is_err(), "{id} fails");
    }
    let mut app = App::new("redis://x/".into(), false);
    app.on_fetched(fetch::queues(&seed.admin).await.unwrap());
    app.on_key(KeyCode::Char('3'));
    while app.tab != TaskTab::Failures {
        app.on_key(KeyCode::Char('t'));
    }
    let (tab, offset, page) = app.plan().tasks.unwrap();
    app.on_fetched(
        fetch::tasks(&seed.admin, "llm", tab, offset, page)
            .await
            .unwrap(),
    );
    let groups: Vec<(usize, String)> = app
        .visible_groups()
        .iter()
        .map(|g| (g.count(), g.reason.clone()))
        .collect();
    assert_eq!(
        groups,
        vec![
            (3, "CUDA out of memory".to_string()),
            (1, "upstream #".to_string())
        ]
    );
    let screen = render(&app, 140, 30);
    assert!(
        screen.contains("CUDA out of memory") && screen.contains("oom-2"),
        "{screen}"
    );

    // Retry the whole group: the confirmation names the count and reason.
    app.on_key(KeyCode::Char('r'));
    let message = app.confirm.as_ref().unwrap().message.clone();
    assert!(
        message.contains("3 tasks") && message.contains("handler: CUDA out of memory"),
        "{message}"
    );
    let Some(Effect::Action(action)) = app.on_key(KeyCode::Char('y')) else {
        panic!("expected an action")
    };
    let Action::Requeue(_, ref ids) = action else {
        panic!("{action:?}")
    };
    let mut ids = ids.clone();
    ids.sort();
    assert_eq!(ids, vec!["bad", "oom-1", "oom-2"]);
    let before = q.status("bad").await.unwrap().attempt;
    fetch::perform(&seed.admin, &action).await.unwrap();
    // Each ran again (and, with the same input, failed again): a new
    // attempt, not the old failure.
    for id in ["bad", "oom-1", "oom-2"] {
        let info = q.status(id).await.unwrap();
        assert!(
            info.attempt > before || info.state != TaskState::Failed,
            "{id} was not retried: {info:?}"
        );
    }
    let untouched = q.status("u-1").await.unwrap();
    assert_eq!((untouched.state, untouched.attempt), (TaskState::Failed, 1));
}
