//! rtq on a Redis Cluster (3 masters, 3 replicas, started by the test):
//! queues spread over the masters, served by one worker process, listed by
//! one admin; request/response, streaming, cancel and worker-kill recovery
//! on each master. One cluster is shared by every test of this binary
//! (each uses queues of its own); failover tests have their own cluster
//! (`cluster_failover.rs`).

mod support;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rtq_core::admin::Admin;
use rtq_core::keys::{cluster_slot, QueueKeys};
use rtq_core::{Client, Error, TaskRequest, TaskState, WorkerConfig};
use rtq_testkit::RedisCluster;
use serde_json::json;
use support::*;

/// The cluster shared by this binary's tests (never dropped: the nodes
/// are killed when the test process exits, as their parent).
fn cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(RedisCluster::start)
}

/// Which third of the slot space (so which of the 3 masters `redis-cli
/// --cluster create` gave it) a queue lands in.
fn shard_of(queue: &str) -> usize {
    let slot = cluster_slot(&QueueKeys::new(queue).unwrap().meta());
    usize::from(slot) * 3 / 16384
}

/// One queue name per master: `{prefix}-<n>` for the first n that lands
/// on each third of the slot space.
fn queues_on_every_master(prefix: &str) -> Vec<String> {
    let mut out: Vec<Option<String>> = vec![None; 3];
    for n in 0.. {
        let name = format!("{prefix}-{n}");
        let shard = shard_of(&name);
        if out[shard].is_none() {
            out[shard] = Some(name);
        }
        if out.iter().all(Option::is_some) {
            break;
        }
    }
    out.into_iter().flatten().collect()
}

async fn start_worker(
    url: &str,
    queue: &str,
    seen: tokio::sync::mpsc::UnboundedSender<Seen>,
) -> KillableWorker {
    KillableWorker::start(
        url,
        WorkerConfig::new(queue)
            .slots(4)
            .lease(Duration::from_millis(1000)),
        seen,
    )
    .await
}

#[tokio::test]
async fn requests_and_streams_on_queues_spread_over_every_master() {
    let url = cluster().url();
    let queues = queues_on_every_master("spread");
    let shards: Vec<usize> = queues.iter().map(|q| shard_of(q)).collect();
    assert_eq!(shards, vec![0, 1, 2], "{queues:?}");
    let (seen, _rx) = seen_channel();
    // One worker process (this one) serving a queue on each master.
    let mut workers = Vec::new();
    for q in &queues {
        workers.push(start_worker(&url, q, seen.clone()).await);
    }
    let client = Client::connect(&url).await.unwrap();
    for (q, w) in queues.iter().zip(&workers) {
        let queue = client.queue(q).unwrap();
        let out = within(queue.run(TaskRequest::json(json!({"prompt": q}))))
            .await
            .unwrap();
        assert_eq!(out.result["echo"]["prompt"], q.as_str());
        assert_eq!(out.result["worker"], w.id.as_str());
        let stream = queue
            .stream(TaskRequest::json(json!({"chunks": 20, "chunk": "c"})))
            .await
            .unwrap();
        let (indexes, text, done) = within(drain_stream(stream)).await;
        assert_eq!(indexes, (0..20).collect::<Vec<_>>());
        assert_eq!(text, expected_text("c", 20));
        assert_eq!(done.unwrap().result["echo"]["chunks"], 20);
        let info = queue.status(&out.id).await.unwrap();
        assert_eq!(info.state, TaskState::Done);
    }
    // Many concurrent requests over all three queues at once.
    let client = Arc::new(client);
    let mut tasks = Vec::new();
    for i in 0..60 {
        let q = client.queue(&queues[i % 3]).unwrap();
        tasks.push(tokio::spawn(async move {
            q.run(TaskRequest::json(json!({"n": i}))).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let out = within(t).await.unwrap().unwrap();
        assert_eq!(out.result["echo"]["n"], i);
    }
    for w in workers {
        w.kill();
    }
}

#[tokio::test]
async fn cancel_and_worker_kill_recovery_on_every_master() {
    let url = cluster().url();
    let client = Client::connect(&url).await.unwrap();
    for q in queues_on_every_master("recover") {
        let queue = client.queue(&q).unwrap();
        let (seen, mut rx) = seen_channel();
        // Cancel a running task.
        let w1 = start_worker(&url, &q, seen.clone()).await;
        let sub = queue
            .submit(TaskRequest::json(json!({"hold": true})))
            .await
            .unwrap();
        assert!(matches!(next_seen(&mut rx, 20).await, Seen::Started { .. }));
        queue.cancel(&sub.id, "enough").await.unwrap();
        match within(queue.wait(&sub.id, None)).await {
            Err(Error::Cancelled { .. }) => {}
            other => panic!("{q}: expected cancelled, got {other:?}"),
        }
        // A worker killed mid-task: its task goes to the next worker.
        let sub = queue
            .submit(TaskRequest::json(json!({"hold": true})).max_attempts(3))
            .await
            .unwrap();
        loop {
            if let Seen::Started { id, .. } = next_seen(&mut rx, 20).await {
                if id == sub.id {
                    break;
                }
            }
        }
        w1.kill();
        let w2 = start_worker(&url, &q, seen.clone()).await;
        let recovered = loop {
            if let Seen::Started {
                id,
                worker,
                attempt,
            } = next_seen(&mut rx, 30).await
            {
                if id == sub.id {
                    break (worker, attempt);
                }
            }
        };
        assert_eq!(recovered.0, w2.id, "{q}");
        assert_eq!(recovered.1, 2, "{q}");
        w2.release.notify_one();
        let out = within(queue.wait(&sub.id, None)).await.unwrap();
        assert_eq!(out.attempt, 2);
        w2.kill();
    }
}

#[tokio::test]
async fn one_admin_lists_and_counts_queues_on_every_master() {
    let url = cluster().url();
    let queues = queues_on_every_master("listed");
    // Each queue gets a client of its own (as separate services would),
    // and two tasks waiting.
    for q in &queues {
        let c = Client::connect(&url).await.unwrap();
        let queue = c.queue(q).unwrap();
        queue.submit(TaskRequest::json(json!({}))).await.unwrap();
        queue.submit(TaskRequest::json(json!({}))).await.unwrap();
        Admin::new(&c).register_queue(q).await.unwrap();
    }
    let admin = Admin::new(&Client::connect(&url).await.unwrap());
    let listed = admin.queues().await.unwrap();
    for q in &queues {
        assert!(listed.contains(q), "{q} not in {listed:?}");
        assert_eq!(admin.overview(q).await.unwrap().pending, 2, "{q}");
    }
    // The dashboard reads every queue, wherever it lives.
    let dashboard = admin.dashboard(6).await.unwrap();
    for q in &queues {
        let (overview, _) = dashboard
            .iter()
            .find(|(o, _)| &o.name == q)
            .unwrap_or_else(|| panic!("{q} missing from the dashboard"));
        assert_eq!(overview.error, None, "{q}");
        assert_eq!(overview.pending, 2, "{q}");
    }
    // Which master holds each queue: three different ones.
    let nodes = admin.queue_nodes(&queues).await.unwrap();
    let mut distinct: Vec<&String> = nodes.values().collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{nodes:?}");
    for q in &queues {
        let port: u16 = nodes[q].rsplit_once(':').unwrap().1.parse().unwrap();
        let slot = cluster_slot(&QueueKeys::new(q).unwrap().meta());
        let master = cluster().master_of_slot(slot).unwrap();
        assert_eq!(cluster().node(master).port(), port, "{q}");
    }
    // Deleting a queue finds its keys on its own master (SCAN is keyless).
    for q in &queues {
        let gone = admin.delete_queue(q, true).await.unwrap();
        assert!(gone.keys >= 3, "{q}: {gone:?}");
        assert!(!admin.queues().await.unwrap().contains(q));
        assert_eq!(admin.overview(q).await.unwrap().pending, 0, "{q}");
    }
}

#[tokio::test]
async fn bad_cluster_configurations_fail_clearly() {
    let tls = "rediss+cluster://127.0.0.1:1,redis://127.0.0.1:2";
    let err = Client::connect(tls).await.err().unwrap().to_string();
    assert!(err.contains("mix"), "{err}");
    let empty = format!("{},", cluster().url());
    let err = Client::connect(&empty).await.err().unwrap().to_string();
    assert!(err.contains("empty"), "{err}");
    let dead = "redis+cluster://127.0.0.1:1";
    let err = tokio::time::timeout(Duration::from_secs(30), Client::connect(dead))
        .await
        .expect("a dead seed fails, not hangs")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("127.0.0.1:1"), "{err}");
}
