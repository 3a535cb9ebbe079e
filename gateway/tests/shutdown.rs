//! Shutdown against a real stack: what the gateway cancels when it stops
//! (the tasks it owns, never those it only follows) and a second signal
//! that stops it at once.

mod support;

use std::time::{Duration, Instant};

use rtq_core::TaskState;
use serde_json::{json, Value};
use support::Stack;

fn slow_chat() -> Value {
    json!({"model": "chat", "messages": [{"role": "user", "content": "slow"}], "stream": true})
}

async fn state_of(s: &Stack, id: &str) -> TaskState {
    let client = rtq_core::Client::connect(&s.redis.url()).await.unwrap();
    client
        .queue("chat")
        .unwrap()
        .status(id)
        .await
        .unwrap()
        .state
}

#[tokio::test]
async fn shutdown_cancels_the_tasks_the_gateway_owns_but_never_those_it_only_follows() {
    let mut s = Stack::start(&["--concurrency", "4"], &["--grace-secs", "1"]).await;
    // Owned: a streaming chat completion (the gateway made the task).
    let owned = s.post("k-all", "/v1/chat/completions", slow_chat()).await;
    assert_eq!(owned.status(), 200);
    let owned_id = owned.headers()["x-rtq-task-id"]
        .to_str()
        .unwrap()
        .to_string();
    // Followed: someone else's task, submitted asynchronously.
    let r = s
        .post(
            "k-all",
            "/v1/queues/chat/tasks",
            json!({"input": {"prompt": "slow"}, "id": "followed"}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let follower = s
        .get("k-all", "/v1/queues/chat/tasks/followed/stream")
        .await;
    assert_eq!(follower.status(), 200);
    // Followed too: a streaming submit whose id names that existing task.
    let attached = s
        .post(
            "k-all",
            "/v1/queues/chat/tasks?stream=true",
            json!({"input": {"prompt": "slow"}, "id": "followed"}),
        )
        .await;
    assert_eq!(attached.status(), 200);
    // Owned: a streaming submit with an id of its own that created the task.
    let mine = s
        .post(
            "k-all",
            "/v1/queues/chat/tasks?stream=true",
            json!({"input": {"prompt": "slow"}, "id": "mine"}),
        )
        .await;
    assert_eq!(mine.status(), 200);
    // All count as open streams.
    let metrics = s.get("", "/metrics").await.text().await.unwrap();
    assert!(metrics.contains("rtq_gateway_open_streams 4"), "{metrics}");

    s.gw.proc.terminate();
    let status = s.gw.proc.wait_exit(Duration::from_secs(15));
    assert!(status.is_some(), "{}", s.gw.proc.log());
    drop((owned, follower, attached, mine));
    for id in [owned_id.as_str(), "mine"] {
        assert_eq!(
            state_of(&s, id).await,
            TaskState::Cancelled,
            "{id}: {}",
            s.gw.proc.log()
        );
    }
    let followed = state_of(&s, "followed").await;
    assert!(
        matches!(followed, TaskState::Running | TaskState::Done),
        "a followed task was {followed:?} after the gateway stopped\n{}",
        s.gw.proc.log()
    );
}

#[tokio::test]
async fn a_second_signal_during_the_grace_period_stops_the_gateway_at_once() {
    let mut s = Stack::start(&[], &["--grace-secs", "120"]).await;
    let owned = s.post("k-all", "/v1/chat/completions", slow_chat()).await;
    assert_eq!(owned.status(), 200);
    let id = owned.headers()["x-rtq-task-id"]
        .to_str()
        .unwrap()
        .to_string();
    s.gw.proc.terminate();
    // The first signal was taken (two signals sent at once would be one).
    let end = Instant::now() + Duration::from_secs(10);
    while !s.gw.proc.log().contains("shutting down") {
        assert!(Instant::now() < end, "{}", s.gw.proc.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.gw.proc.terminate();
    let status = s.gw.proc.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some(),
        "the gateway ignored a second SIGTERM\n{}",
        s.gw.proc.log()
    );
    drop(owned);
    assert_eq!(
        state_of(&s, &id).await,
        TaskState::Cancelled,
        "{}",
        s.gw.proc.log()
    );
}
