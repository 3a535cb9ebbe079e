//! The real rtq-worker binary on a Redis Cluster (3 masters, 3 replicas,
//! started by the test): worker processes serve queues on different
//! masters from one `redis+cluster://` seed list, and a task of a worker
//! killed with -9 finishes on another worker process.

mod support;

use std::time::Duration;

use rtq_core::keys::{cluster_slot, QueueKeys};
use rtq_core::{Client, TaskRequest, TaskState};
use rtq_testkit::RedisCluster;
use serde_json::json;
use support::ChildGuard;

fn spawn_worker(url: &str, queue: &str, id: &str) -> ChildGuard {
    ChildGuard::spawn(&mut support::worker_command(
        url,
        &[
            "--queue",
            queue,
            "--worker-id",
            id,
            // 40 tokens at 20/s: about two seconds of streaming.
            "--mock-tokens-per-sec",
            "20",
            "--mock-tokens",
            "40",
        ],
    ))
}

/// A queue name in the given third of the slot space (so on that master).
fn queue_on(third: usize) -> String {
    (0..)
        .map(|n| format!("wq-{n}"))
        .find(|q| {
            usize::from(cluster_slot(&QueueKeys::new(q).unwrap().meta())) * 3 / 16384 == third
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_processes_serve_queues_on_different_masters_and_survive_a_kill() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let (q1, q2) = (queue_on(0), queue_on(2));
    let mut a = spawn_worker(&url, &q1, "node-a");
    let mut b = spawn_worker(&url, &q2, "node-b");
    let client = Client::connect(&url).await.unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        client.queue(&q2).unwrap().run(TaskRequest::json(json!({}))),
    )
    .await
    .expect("served in time")
    .unwrap();
    assert_eq!(
        client
            .queue(&q2)
            .unwrap()
            .status(&out.id)
            .await
            .unwrap()
            .worker,
        "node-b"
    );
    // A stream on the other master; its worker is killed mid-stream.
    let q = client.queue(&q1).unwrap();
    let stream = q
        .stream(TaskRequest::json(json!({})).max_attempts(2))
        .await
        .unwrap();
    let id = stream.id().to_string();
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while q.status(&id).await.unwrap().state != TaskState::Running {
        assert!(std::time::Instant::now() < until, "never ran");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.kill().unwrap();
    a.wait().unwrap();
    let mut c = spawn_worker(&url, &q1, "node-c");
    let (out, text) = tokio::time::timeout(Duration::from_secs(30), stream.collect_text())
        .await
        .expect("finished in time")
        .expect("one final result");
    assert_eq!(out.attempt, 2);
    assert_eq!(q.status(&id).await.unwrap().worker, "node-c");
    let expected: String = (0..40).map(|i| format!("tok{i} ")).collect();
    assert_eq!(
        text, expected,
        "only the second attempt's tokens, each once"
    );
    for w in [&mut b, &mut c] {
        w.kill().unwrap();
        w.wait().unwrap();
    }
}
