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
use rtq_core::{Client, Error, TaskRequest, TaskState, Worker, WorkerConfig};
use rtq_testkit::RedisCluster;
use serde_json::json;
use support::*;

/// The cluster shared by this binary's tests (never dropped: testkit's
/// reaper kills its nodes once the test process has exited).
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
async fn the_workers_of_queues_on_every_master_are_read_together() {
    let url = cluster().url();
    let queues = queues_on_every_master("crew");
    let (seen, _rx) = seen_channel();
    let mut workers = Vec::new();
    for q in &queues {
        workers.push(start_worker(&url, q, seen.clone()).await);
    }
    let admin = Admin::new(&Client::connect(&url).await.unwrap());
    // With a queue nobody serves among them, in the middle.
    let mut asked = queues.clone();
    asked.insert(1, "crew-nobody".to_string());
    let read = admin.workers_of_many(&asked).await.unwrap();
    assert_eq!(read.len(), asked.len());
    let ids = |i: usize| -> Vec<String> {
        read[i]
            .as_ref()
            .unwrap()
            .iter()
            .map(|w| w.id.clone())
            .collect()
    };
    assert_eq!(ids(0), [workers[0].id.clone()]);
    assert!(ids(1).is_empty());
    assert_eq!(ids(2), [workers[1].id.clone()]);
    assert_eq!(ids(3), [workers[2].id.clone()]);
    for (i, w) in read.iter().enumerate().filter(|(i, _)| *i != 1) {
        let w = &w.as_ref().unwrap()[0];
        assert_eq!(w.field("slots"), "4", "{}", asked[i]);
    }
    // The one-queue read agrees.
    assert_eq!(admin.workers(&queues[2]).await.unwrap().len(), 1);
}

#[tokio::test]
async fn bad_cluster_configurations_fail_clearly() {
    let tls = "rediss+cluster://127.0.0.1:1,redis://127.0.0.1:2";
    let err = Client::connect(tls).await.err().unwrap().to_string();
    assert!(err.contains("mix"), "{err}");
    let empty = format!("{},", cluster().url());
    let err = Client::connect(&empty).await.err().unwrap().to_string();
    assert!(err.contains("empty"), "{err}");
    // A plain URL to one node of the cluster: a queue on another master
    // fails with the fix in the message.
    let first = cluster().node(0).url();
    let plain = Client::connect(&first).await.unwrap();
    let elsewhere = queues_on_every_master("plain")
        .into_iter()
        .find(|q| {
            let slot = cluster_slot(&QueueKeys::new(q).unwrap().meta());
            cluster().master_of_slot(slot) != Some(0)
        })
        .unwrap();
    let err = plain
        .queue(&elsewhere)
        .unwrap()
        .submit(TaskRequest::json(json!({})))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("redis+cluster://"), "{err}");
    // A cluster URL to a server that is not in cluster mode.
    let single = RedisServer::start();
    let url = single.url().replace("redis://", "redis+cluster://");
    let err = tokio::time::timeout(Duration::from_secs(30), Client::connect(&url))
        .await
        .expect("fails, not hangs")
        .err()
        .unwrap()
        .to_string();
    assert!(err.to_lowercase().contains("cluster"), "{err}");
    let dead = "redis+cluster://127.0.0.1:1";
    let err = tokio::time::timeout(Duration::from_secs(30), Client::connect(dead))
        .await
        .expect("a dead seed fails, not hangs")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("127.0.0.1:1"), "{err}");
}

#[tokio::test]
async fn a_worker_refuses_a_queue_whose_slot_is_being_moved() {
    let c = cluster();
    let url = c.url();
    let queue = queues_on_every_master("moving").remove(1);
    let slot = cluster_slot(&QueueKeys::new(&queue).unwrap().meta());
    let source = c.master_of_slot(slot).unwrap();
    let roles = c.roles();
    let id_of = |i: usize| roles.iter().find(|r| r.index == i).unwrap().id.clone();
    let target = roles
        .iter()
        .find(|r| r.master && r.index != source)
        .unwrap()
        .index;
    let setslot = |node: usize, args: &[&str]| {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SETSLOT").arg(slot);
        for a in args {
            cmd.arg(*a);
        }
        let _: () = cmd.query(&mut c.node(node).conn()).unwrap();
    };
    // The start of a live reshard of the queue's slot, as `redis-cli
    // --cluster reshard` does it.
    setslot(target, &["IMPORTING", &id_of(source)]);
    setslot(source, &["MIGRATING", &id_of(target)]);
    let refused = Worker::connect(&url, WorkerConfig::new(&queue)).await;
    let message = match refused {
        Err(e @ Error::UnsuitableServer(_)) => e.to_string(),
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("a worker started on a queue whose slot moves"),
    };
    assert!(
        message.contains(&queue) && message.contains(&format!("slot {slot}")),
        "{message}"
    );
    assert!(message.contains("idle"), "{message}");
    let admin = Admin::new(&Client::connect(&url).await.unwrap());
    let moving = admin
        .moving_queues(&[queue.clone(), "other".into()])
        .await
        .unwrap();
    assert_eq!(moving.len(), 2, "reported by both ends: {moving:?}");
    assert!(moving.iter().all(|(q, _)| q == &queue), "{moving:?}");
    // The move undone: the worker starts.
    setslot(source, &["STABLE"]);
    setslot(target, &["STABLE"]);
    assert!(admin
        .moving_queues(std::slice::from_ref(&queue))
        .await
        .unwrap()
        .is_empty());
    Worker::connect(&url, WorkerConfig::new(&queue))
        .await
        .expect("the worker starts once the slot is stable");
}

// The single-node suite's client-facing tests, on the cluster ---------------
//
// Chosen from requests.rs, faults.rs and waits.rs: the tests that drive
// rtq only through its public API (a client, workers, the admin API), so
// they hold on any deployment, each on a queue of a different master. The
// rest of the suite asserts on raw single-node state (command logs, INFO,
// KEYS, a fault-injection proxy in front of the one server, restarting it)
// and tests the Functions library, which runs the same on a cluster node:
// every key of a queue lives in its one slot.

/// A queue name for test `n` on master `n % 3`.
fn ported(name: &str, n: usize) -> String {
    queues_on_every_master(name).remove(n % 3)
}

#[tokio::test]
async fn suite_submit_now_fetch_later_from_another_client() {
    let url = cluster().url();
    let name = ported("fetch", 0);
    let submitter = Client::connect(&url).await.unwrap();
    let q = submitter.queue(&name).unwrap();
    let sub = q
        .submit(TaskRequest::json(json!({"chunks": 5, "chunk": "x"})))
        .await
        .unwrap();
    assert_eq!(sub.state, TaskState::Queued);
    let other = Client::connect(&url).await.unwrap();
    let oq = other.queue(&name).unwrap();
    let follow = oq.follow(&sub.id, 0).await.unwrap();
    let (seen, _rx) = seen_channel();
    let w = TestWorker::start(&url, WorkerConfig::new(&name), seen).await;
    let (out, text) = within(follow.collect_text()).await.unwrap();
    assert_eq!(text, "x0 x1 x2 x3 x4 ");
    let again = within(oq.wait(&sub.id, Some(Duration::from_secs(5))))
        .await
        .unwrap();
    assert_eq!(again.result, out.result);
    let (_, tail) = within(oq.follow(&sub.id, 3).await.unwrap().collect_text())
        .await
        .unwrap();
    assert_eq!(tail, "x3 x4 ");
    w.stop().await;
}

#[tokio::test]
async fn suite_priorities_run_highest_first_and_fifo_within_a_priority() {
    let url = cluster().url();
    let name = ported("prio", 1);
    let client = Client::connect(&url).await.unwrap();
    let q = client.queue(&name).unwrap();
    let admin = Admin::new(&client);
    admin.pause(&name, true).await.unwrap();
    for (id, prio) in [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", -3), ("f", 9)] {
        q.submit(TaskRequest::json(json!({})).id(id).priority(prio))
            .await
            .unwrap();
    }
    let (seen, mut rx) = seen_channel();
    let w = TestWorker::start(&url, WorkerConfig::new(&name).slots(1), seen).await;
    admin.pause(&name, false).await.unwrap();
    let mut order = Vec::new();
    for _ in 0..6 {
        if let Seen::Started { id, .. } = next_seen(&mut rx, 20).await {
            order.push(id);
        }
    }
    assert_eq!(order, ["f", "b", "d", "a", "c", "e"]);
    w.stop().await;
}

#[tokio::test]
async fn suite_a_full_queue_refuses_atomically() {
    let url = cluster().url();
    let name = ported("bp", 2);
    let client = Client::connect(&url).await.unwrap();
    Admin::new(&client).set_max_depth(&name, 10).await.unwrap();
    let q = client.queue(&name).unwrap();
    let results =
        futures::future::join_all((0..40).map(|i| q.submit(TaskRequest::json(json!({"i": i})))))
            .await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let full = results
        .iter()
        .filter(|r| matches!(r, Err(Error::QueueFull { max_depth: 10, .. })))
        .count();
    assert_eq!((ok, full), (10, 30));
}

#[tokio::test]
async fn suite_a_retryable_failure_is_retried_and_a_fatal_one_reported() {
    let url = cluster().url();
    let name = ported("fail", 0);
    let (seen, _rx) = seen_channel();
    let w = TestWorker::start(&url, WorkerConfig::new(&name), seen).await;
    let client = Client::connect(&url).await.unwrap();
    let q = client.queue(&name).unwrap();
    match within(q.run(TaskRequest::json(json!({"fail": "model said no"})))).await {
        Err(Error::Failed { reason, worker, .. }) => {
            assert_eq!(reason, "model said no");
            assert_eq!(worker, w.id);
        }
        other => panic!("{other:?}"),
    }
    let err = within(
        q.run(TaskRequest::json(json!({"fail": "flaky", "retryable": true})).max_attempts(3)),
    )
    .await
    .unwrap_err();
    let Error::Failed { id, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(q.status(id).await.unwrap().attempt, 3);
    w.stop().await;
}

#[tokio::test]
async fn suite_a_queued_task_expires_at_its_deadline_and_never_runs() {
    let url = cluster().url();
    let name = ported("deadline", 1);
    let client = Client::connect(&url).await.unwrap();
    let q = client.queue(&name).unwrap();
    let err = within(q.run(TaskRequest::json(json!(1)).timeout(Duration::from_millis(300))))
        .await
        .unwrap_err();
    let Error::TimedOut { id, phase } = err else {
        panic!("{err}")
    };
    assert_eq!(phase, rtq_core::TimeoutPhase::Queued);
    assert_eq!(q.status(&id).await.unwrap().state, TaskState::Expired);
    let (seen, mut rx) = seen_channel();
    let w = TestWorker::start(&url, WorkerConfig::new(&name), seen).await;
    let other = q
        .run(TaskRequest::json(json!({"marker": 1})))
        .await
        .unwrap();
    let Seen::Started { id: first, .. } = next_seen(&mut rx, 20).await else {
        panic!()
    };
    assert_eq!(first, other.id, "the expired task was never handed out");
    w.stop().await;
}

#[tokio::test]
async fn suite_two_runs_with_one_id_share_one_task_and_a_big_stream_arrives_whole() {
    let url = cluster().url();
    let name = ported("shared", 2);
    let (seen, mut rx) = seen_channel();
    let w = TestWorker::start(&url, WorkerConfig::new(&name), seen).await;
    let client = Client::connect(&url).await.unwrap();
    let q = client.queue(&name).unwrap();
    let req = || TaskRequest::json(json!({"chunks": 3})).id("same");
    let (a, b) = within(async { tokio::join!(q.run(req()), q.run(req())) }).await;
    assert_eq!(a.unwrap().result, b.unwrap().result);
    assert!(matches!(next_seen(&mut rx, 20).await, Seen::Started { .. }));
    assert!(rx.try_recv().is_err(), "one task ran once");
    let stream = q
        .stream(TaskRequest::json(json!({"chunks": 2000, "chunk": "k"})))
        .await
        .unwrap();
    let (indexes, text, done) = within(drain_stream(stream)).await;
    assert_eq!(indexes, (0..2000).collect::<Vec<_>>());
    assert_eq!(text, expected_text("k", 2000));
    done.unwrap();
    w.stop().await;
}

#[tokio::test]
async fn a_password_with_a_comma_is_one_node_not_a_seed_list() {
    let redis = RedisServer::start_with(rtq_testkit::Options {
        password: Some("pa,ss".into()),
        ..Default::default()
    });
    assert!(redis.url().contains(":pa,ss@"));
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("comma").unwrap();
    let sub = q.submit(TaskRequest::json(json!({}))).await.unwrap();
    assert_eq!(q.status(&sub.id).await.unwrap().state, TaskState::Queued);
}
