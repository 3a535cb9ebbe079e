//! Failovers of a Redis Cluster master while load runs (each test starts
//! a cluster of its own: 3 masters, 3 replicas, `cluster-node-timeout`
//! 1 s): a coordinated `CLUSTER FAILOVER`, and a master killed with -9.
//! Each test prints what it measured (run with `--nocapture`): how long
//! the shard stalled, what clients saw, what was lost. BENCHMARKS.md
//! quotes these numbers.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtq_core::keys::{cluster_slot, QueueKeys};
use rtq_core::{Client, Error, Queue, TaskRequest, WorkerConfig};
use rtq_testkit::RedisCluster;
use serde_json::json;
use support::*;

fn slot_of(queue: &str) -> u16 {
    cluster_slot(&QueueKeys::new(queue).unwrap().meta())
}

/// Queue names `{prefix}-<n>` in the same third of the slot space as
/// `slot` (so on the same master), `count` of them.
fn queues_near(prefix: &str, slot: u16, count: usize) -> Vec<String> {
    let third = |s: u16| usize::from(s) * 3 / 16384;
    (0..)
        .map(|n| format!("{prefix}-{n}"))
        .filter(|q| third(slot_of(q)) == third(slot))
        .take(count)
        .collect()
}

/// What one load loop observed: when each operation ended and how.
#[derive(Default)]
struct Log {
    /// (end time, ok, task id, error kind)
    ends: Vec<(Instant, bool, String, String)>,
    /// One message per error kind.
    samples: BTreeMap<String, String>,
}

impl Log {
    fn ok_ids(&self) -> Vec<String> {
        self.ends
            .iter()
            .filter(|e| e.1)
            .map(|e| e.2.clone())
            .collect()
    }

    /// Longest gap between consecutive successes.
    fn stall(&self) -> Duration {
        let mut oks: Vec<Instant> = self.ends.iter().filter(|e| e.1).map(|e| e.0).collect();
        oks.sort();
        oks.windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default()
    }

    fn errors(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for e in self.ends.iter().filter(|e| !e.1) {
            *out.entry(e.3.clone()).or_default() += 1;
        }
        out
    }
}

/// A short name for an error kind (for the printed summary).
fn kind(e: &Error) -> String {
    let debug = format!("{e:?}");
    debug
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("?")
        .to_string()
}

/// Runs `op` in `loops` concurrent loops until `stop`, logging each end.
fn load<F, Fut>(
    loops: usize,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Log>>,
    op: F,
) -> Vec<tokio::task::JoinHandle<()>>
where
    F: Fn(String) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<(), Error>> + Send,
{
    (0..loops)
        .map(|l| {
            let (stop, log, op) = (Arc::clone(&stop), Arc::clone(&log), op.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Acquire) {
                    i += 1;
                    let id = format!("l{l}-{i}");
                    let result = op(id.clone()).await;
                    let (ok, why) = match &result {
                        Ok(()) => (true, String::new()),
                        Err(e) => (false, kind(e)),
                    };
                    {
                        let mut log = log.lock().unwrap();
                        if let Err(e) = &result {
                            log.samples
                                .entry(why.clone())
                                .or_insert_with(|| e.to_string());
                        }
                        log.ends.push((Instant::now(), ok, id, why));
                    }
                    if !ok {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect()
}

async fn stop_all(stop: &AtomicBool, handles: Vec<tokio::task::JoinHandle<()>>) {
    stop.store(true, Ordering::Release);
    for h in handles {
        within(h).await.unwrap();
    }
}

/// Ids whose task Redis no longer has.
async fn missing(q: &Queue, ids: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for id in ids {
        match q.status(id).await {
            Ok(_) => {}
            Err(Error::NotFound { .. }) => out.push(id.clone()),
            Err(e) => panic!("status of {id}: {e}"),
        }
    }
    out
}

fn worker_config(queue: &str) -> WorkerConfig {
    WorkerConfig::new(queue)
        .slots(8)
        .lease(Duration::from_millis(1000))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coordinated_failover_under_load_stalls_briefly_and_loses_nothing() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let q_name = queues_near("handover", 0, 1).remove(0);
    let master = cluster.master_of_slot(slot_of(&q_name)).unwrap();
    let (seen, _rx) = seen_channel();
    let worker = KillableWorker::start(&url, worker_config(&q_name), seen).await;
    let client = Client::connect(&url).await.unwrap();
    let q = client.queue(&q_name).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Log::default()));
    let q2 = q.clone();
    let handles = load(8, Arc::clone(&stop), Arc::clone(&log), move |id| {
        let q = q2.clone();
        async move {
            q.run(
                TaskRequest::json(json!({"id": id}))
                    .id(id)
                    .timeout(Duration::from_secs(30)),
            )
            .await
            .map(|_| ())
        }
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let started = Instant::now();
    let promoted = tokio::task::block_in_place(|| cluster.failover(master));
    let handover = started.elapsed();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop_all(&stop, handles).await;
    let log = std::mem::take(&mut *log.lock().unwrap());
    let ok = log.ok_ids();
    println!(
        "CLUSTER FAILOVER under load: handover {} ms; longest gap between completed requests {} ms; {} requests completed, errors {:?}",
        handover.as_millis(),
        log.stall().as_millis(),
        ok.len(),
        log.errors()
    );
    assert_ne!(promoted, master);
    assert!(ok.len() > 50, "load ran: {}", ok.len());
    // A coordinated failover loses no write, and the clients and the
    // worker follow the slot to its new master: every request ends well.
    assert!(log.errors().is_empty(), "{:?}", log.errors());
    // The worker still serves the queue on the new master.
    let out = within(q.run(TaskRequest::json(json!({"after": true}))))
        .await
        .unwrap();
    assert_eq!(out.result["worker"], worker.id.as_str());
    worker.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_master_is_replaced_and_no_durable_submit_is_lost() {
    let mut cluster = RedisCluster::start();
    let url = cluster.url();
    // Three queues on one master: durable submits, plain submits, and
    // requests served by a worker.
    let names = queues_near("crash", 6000, 3);
    let master = cluster.master_of_slot(slot_of(&names[0])).unwrap();
    let (seen, _rx) = seen_channel();
    let worker = KillableWorker::start(&url, worker_config(&names[2]), seen).await;
    let client = Client::connect(&url).await.unwrap();
    let (durable, plain, served) = (
        client.queue(&names[0]).unwrap(),
        client.queue(&names[1]).unwrap(),
        client.queue(&names[2]).unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let logs: Vec<Arc<Mutex<Log>>> = (0..3).map(|_| Arc::default()).collect();
    let mut handles = Vec::new();
    let q = durable.clone();
    handles.extend(load(
        4,
        Arc::clone(&stop),
        Arc::clone(&logs[0]),
        move |id| {
            let q = q.clone();
            async move {
                q.submit(
                    TaskRequest::json(json!({}))
                        .id(id)
                        .durable(Duration::from_millis(500)),
                )
                .await
                .map(|_| ())
            }
        },
    ));
    let q = plain.clone();
    handles.extend(load(
        4,
        Arc::clone(&stop),
        Arc::clone(&logs[1]),
        move |id| {
            let q = q.clone();
            async move {
                q.submit(TaskRequest::json(json!({})).id(id))
                    .await
                    .map(|_| ())
            }
        },
    ));
    let q = served.clone();
    handles.extend(load(
        4,
        Arc::clone(&stop),
        Arc::clone(&logs[2]),
        move |id| {
            let q = q.clone();
            async move {
                q.run(
                    TaskRequest::json(json!({}))
                        .id(id)
                        .timeout(Duration::from_secs(20)),
                )
                .await
                .map(|_| ())
            }
        },
    ));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let killed_at = Instant::now();
    cluster.node_mut(master).kill();
    // Wait for a replica to take the slots over.
    let new_master = tokio::task::block_in_place(|| loop {
        match cluster.master_of_slot(slot_of(&names[0])) {
            Some(m) if m != master => break m,
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    });
    let promoted_after = killed_at.elapsed();
    // The new master has no replica until the killed node comes back (as
    // its replica): durable submits fail with NotReplicated meanwhile.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    tokio::task::block_in_place(|| {
        cluster.node_mut(master).restart();
        cluster.wait_healthy(Duration::from_secs(30));
    });
    let rejoined_after = killed_at.elapsed();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop_all(&stop, handles).await;

    let take = |i: usize| std::mem::take(&mut *logs[i].lock().unwrap());
    let (durable_log, plain_log, served_log) = (take(0), take(1), take(2));
    let lost_durable = missing(&durable, &durable_log.ok_ids()).await;
    let lost_plain = missing(&plain, &plain_log.ok_ids()).await;
    println!(
        "kill -9 of a master under load: replica promoted after {} ms (node {master} -> {new_master}); the killed node back as a replica after {} ms",
        promoted_after.as_millis(),
        rejoined_after.as_millis()
    );
    for (what, log, lost) in [
        ("durable submits", &durable_log, Some(&lost_durable)),
        ("plain submits", &plain_log, Some(&lost_plain)),
        ("requests (run)", &served_log, None),
    ] {
        println!(
            "  {what}: {} acknowledged, longest gap {} ms, errors {:?}{}",
            log.ok_ids().len(),
            log.stall().as_millis(),
            log.errors(),
            lost.map(|l| format!(", acknowledged but lost: {}", l.len()))
                .unwrap_or_default()
        );
        for (kind, message) in &log.samples {
            println!("    {kind}: {message}");
        }
    }
    // Durable submits work again once the new master has a replica.
    within(durable.submit(TaskRequest::json(json!({})).durable(Duration::from_secs(5))))
        .await
        .unwrap();
    assert!(durable_log.ok_ids().len() > 20, "durable load ran");
    assert!(
        lost_durable.is_empty(),
        "acknowledged durable submits lost: {lost_durable:?}"
    );
    // Everything recovers: new requests are served on the new master.
    let out = within(served.run(TaskRequest::json(json!({"after": true}))))
        .await
        .unwrap();
    assert_eq!(out.result["worker"], worker.id.as_str());
    worker.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn masters_that_lost_the_functions_library_get_it_back() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    // A queue on each master, each served.
    let queues: Vec<String> = [0u16, 6000, 12000]
        .iter()
        .map(|s| queues_near("flushed", *s, 1).remove(0))
        .collect();
    let (seen, _rx) = seen_channel();
    let mut workers = Vec::new();
    for q in &queues {
        workers.push(KillableWorker::start(&url, worker_config(q), seen.clone()).await);
    }
    let client = Client::connect(&url).await.unwrap();
    for q in &queues {
        within(client.queue(q).unwrap().run(TaskRequest::json(json!({}))))
            .await
            .unwrap();
    }
    // Every master forgets the library (a new node, a FUNCTION FLUSH by
    // an operator); replicas follow their masters.
    let masters: Vec<usize> = cluster
        .roles()
        .iter()
        .filter(|r| r.master)
        .map(|r| r.index)
        .collect();
    assert_eq!(masters.len(), 3);
    for &m in &masters {
        let _: () = redis::cmd("FUNCTION")
            .arg("FLUSH")
            .query(&mut cluster.node(m).conn())
            .unwrap();
    }
    // The next call on each queue finds the library missing, loads it on
    // every master and goes through; workers keep serving.
    for q in &queues {
        let out = within(
            client
                .queue(q)
                .unwrap()
                .run(TaskRequest::json(json!({"again": q}))),
        )
        .await
        .unwrap();
        assert_eq!(out.result["echo"]["again"], q.as_str());
    }
    for &m in &masters {
        let libs: redis::Value = redis::cmd("FUNCTION")
            .arg("LIST")
            .arg("LIBRARYNAME")
            .arg("rtq2")
            .query(&mut cluster.node(m).conn())
            .unwrap();
        assert!(
            matches!(&libs, redis::Value::Array(a) if a.len() == 1),
            "node {m}: {libs:?}"
        );
    }
    // A new client connecting loads nothing twice and works at once.
    let fresh = Client::connect(&url).await.unwrap();
    within(
        fresh
            .queue(&queues[0])
            .unwrap()
            .run(TaskRequest::json(json!({}))),
    )
    .await
    .unwrap();
    for w in workers {
        w.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_protected_cluster_takes_the_password_from_the_url() {
    let cluster = RedisCluster::start_with(3, 0, Some("s3cret-pw"));
    let url = cluster.url();
    assert!(url.contains(":s3cret-pw@"), "{url}");
    let q = queues_near("auth", 12000, 1).remove(0);
    let (seen, _rx) = seen_channel();
    let worker = KillableWorker::start(&url, worker_config(&q), seen).await;
    let client = Client::connect(&url).await.unwrap();
    let out = within(
        client
            .queue(&q)
            .unwrap()
            .run(TaskRequest::json(json!({"x": 1}))),
    )
    .await
    .unwrap();
    assert_eq!(out.result["echo"]["x"], 1);
    let wrong = url.replace("s3cret-pw", "wrong-pw");
    let err = Client::connect(&wrong).await.err().unwrap();
    assert!(matches!(err, Error::AuthenticationFailed { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        !text.contains("wrong-pw") && !text.contains("s3cret-pw"),
        "{text}"
    );
    worker.kill();
}
