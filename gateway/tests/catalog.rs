//! The catalog of served queues against a real Redis with many queues:
//! a request never waits for a read of every queue once a snapshot
//! exists.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rtq_core::admin::Admin;
use rtq_testkit::RedisServer;
use serde_json::{json, Value};
use support::{start_gateway, start_worker, wait_model};

const QUEUES: usize = 500;

async fn commands_processed(redis: &RedisServer) -> u64 {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn unknown_models_cost_a_targeted_read_not_a_read_of_every_queue() {
    let redis = RedisServer::start();
    let client = rtq_core::Client::connect(&redis.url()).await.unwrap();
    let admin = Admin::new(&client);
    futures::future::try_join_all((0..QUEUES).map(|i| {
        let admin = admin.clone();
        async move { admin.register_queue(&format!("q{i:04}")).await }
    }))
    .await
    .unwrap();
    let _worker = start_worker(&redis.url(), "m", &["--handler", "mock"]);
    let end = Instant::now() + Duration::from_secs(20);
    while admin.overview("m").await.unwrap().workers_alive == 0 {
        assert!(Instant::now() < end, "the worker never came up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A TTL longer than the test: no background read during it.
    let gw = start_gateway(&redis.url(), &["--catalog-ttl-ms", "600000"]);
    let http = reqwest::Client::new();
    wait_model(&http, &gw, "", "m").await;

    let before = commands_processed(&redis).await;
    for i in 0..20 {
        let r = http
            .post(format!("{}/v1/chat/completions", gw.url))
            .json(&json!({"model": format!("nope-{i}"), "messages": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "model_not_found", "{v}");
    }
    // A queue the snapshot does not know yet is found by name.
    admin.register_queue("late").await.unwrap();
    let r = http
        .post(format!("{}/v1/chat/completions", gw.url))
        .json(&json!({"model": "late", "messages": []}))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "no_live_worker", "{v}");
    let spent = commands_processed(&redis).await - before;
    // One read of every queue costs several commands per queue.
    assert!(
        spent < QUEUES as u64,
        "21 requests ran {spent} Redis commands with {QUEUES} queues\n{}",
        gw.proc.log()
    );
}

/// A handler for workers that only need to be alive.
struct Idle;

#[rtq_core::async_trait]
impl rtq_core::Handler for Idle {
    async fn handle(&self, task: rtq_core::TaskContext) -> Result<Value, rtq_core::HandlerError> {
        Ok(task.input().cloned().unwrap_or_default())
    }
}

/// Served queues of [`the_catalog_lists_exactly_the_served_models_in_a_fixed_number_of_round_trips`].
const SERVED: usize = 100;

/// The `model` label of the worker of queue `i`, if any: every fourth
/// queue carries one of three shared labels, and the last one carries the
/// name of another served queue.
fn label_of(i: usize) -> Option<String> {
    if i == SERVED - 1 {
        return Some("q050".into());
    }
    matches!(i % 4, 0).then(|| format!("fam-{}", (i / 4) % 3))
}

/// Calls per command since the server started (INFO commandstats).
async fn commandstats(conn: &mut redis::aio::MultiplexedConnection) -> BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.strip_prefix("calls=")?.split(',').next()?;
            Some((name.to_string(), calls.parse().ok()?))
        })
        .collect()
}

/// Redis counters: (commands processed, socket reads processed).
async fn counters(conn: &mut redis::aio::MultiplexedConnection) -> (u64, u64) {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(conn)
        .await
        .unwrap();
    let field = |name: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    (
        field("total_commands_processed"),
        field("total_reads_processed"),
    )
}

#[tokio::test]
async fn the_catalog_lists_exactly_the_served_models_in_a_fixed_number_of_round_trips() {
    let redis = RedisServer::start();
    let url = redis.url();
    // In-process workers (a process each would be heavy), with a lease
    // of minutes: their heartbeats do not disturb the counts below.
    let stop = tokio_util::sync::CancellationToken::new();
    let mut running = Vec::new();
    for i in 0..SERVED {
        let mut config = rtq_core::WorkerConfig::new(format!("q{i:03}"))
            .slots(1)
            .lease(Duration::from_secs(600));
        if let Some(model) = label_of(i) {
            config = config.label("model", model);
        }
        let worker = rtq_core::Worker::connect(&url, config).await.unwrap();
        let stop = stop.clone();
        running.push(tokio::spawn(async move {
            worker
                .run(std::sync::Arc::new(Idle), stop.cancelled_owned())
                .await
        }));
    }
    let client = rtq_core::Client::connect(&url).await.unwrap();
    let admin = Admin::new(&client);
    // Queues nobody serves are never listed.
    for i in 0..5 {
        admin.register_queue(&format!("idle-{i}")).await.unwrap();
    }
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let alive = admin
            .summaries()
            .await
            .unwrap()
            .iter()
            .filter(|o| o.workers_alive > 0)
            .count();
        if alive == SERVED {
            break;
        }
        assert!(Instant::now() < end, "only {alive} workers came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A paused queue is listed by its name, but a label it shares goes to
    // the first unpaused queue carrying it.
    admin.pause("q000", true).await.unwrap();

    // What GET /v1/models must list: (model id, queue).
    let mut expected = std::collections::BTreeSet::new();
    for i in 0..SERVED {
        expected.insert((format!("q{i:03}"), format!("q{i:03}")));
    }
    for family in 0..3 {
        let first_unpaused = (1..SERVED)
            .find(|i| label_of(*i) == Some(format!("fam-{family}")))
            .unwrap();
        expected.insert((format!("fam-{family}"), format!("q{first_unpaused:03}")));
    }
    assert!(expected.contains(&("fam-0".to_string(), "q012".to_string())));

    let gw = start_gateway(&url, &[]);
    let http = reqwest::Client::new();
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let v: Value = http
            .get(format!("{}/v1/models", gw.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let data = v["data"].as_array().unwrap();
        let listed: std::collections::BTreeSet<(String, String)> = data
            .iter()
            .map(|m| {
                (
                    m["id"].as_str().unwrap().to_string(),
                    m["queue"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        // Each name once.
        assert_eq!(listed.len(), data.len(), "{v}");
        let paused = data
            .iter()
            .find(|m| m["id"] == "q000")
            .map(|m| &m["paused"]);
        if listed == expected && paused == Some(&json!(true)) {
            let q004 = data.iter().find(|m| m["id"] == "q004").unwrap();
            assert_eq!(q004["workers"], 1, "{q004}");
            assert_eq!(q004["labels"]["model"], json!(["fam-1"]), "{q004}");
            break;
        }
        assert!(
            Instant::now() < end,
            "listed: {:?}\nmissing: {:?}\nextra: {:?}",
            listed,
            expected.difference(&listed).collect::<Vec<_>>(),
            listed.difference(&expected).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(gw);

    // The cost of one read of the catalog, in this process, with the
    // gateway gone: Redis commands (per command, from INFO commandstats)
    // and socket reads (a round trip is at least one read; a large
    // pipeline may take a few).
    let counter = redis::Client::open(url.as_str()).unwrap();
    let mut conn = counter.get_multiplexed_async_connection().await.unwrap();
    const READS: u64 = 10;
    // What the catalog read before it had a read of its own: the
    // console's readers (every count, every heartbeat field and owned
    // task), for comparison.
    let (s0, r0) = (commandstats(&mut conn).await, counters(&mut conn).await.1);
    for _ in 0..READS {
        let all = admin.summaries().await.unwrap();
        let served: Vec<String> = all
            .iter()
            .filter(|o| o.workers_alive > 0)
            .map(|o| o.name.clone())
            .collect();
        admin.workers_of_many(&served).await.unwrap();
    }
    let (s1, r1) = (commandstats(&mut conn).await, counters(&mut conn).await.1);
    for _ in 0..READS {
        let catalog = rtq_gateway::catalog::Catalog::new(
            admin.clone(),
            rtq_gateway::catalog::CatalogLimits::default(),
        );
        let snap = catalog.snapshot().await.unwrap();
        assert_eq!(snap.queues.len(), SERVED + 5);
        assert_eq!(snap.queues["q004"].models, ["fam-1".to_string()].into());
        assert_eq!(
            snap.queues["q004"].handlers.len(),
            1,
            "{:?}",
            snap.queues["q004"]
        );
        assert!(snap.queues["q000"].paused);
    }
    let (s2, r2) = (commandstats(&mut conn).await, counters(&mut conn).await.1);
    // Less this connection's INFO commands and socket reads.
    let per_read = |a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>| {
        let mut d: BTreeMap<String, u64> = b
            .iter()
            .map(|(k, v)| (k.clone(), (v - a.get(k).copied().unwrap_or(0)) / READS))
            .filter(|(k, v)| *v > 0 && k != "info")
            .collect();
        d.insert("total".into(), d.values().sum());
        d
    };
    let (before, after) = (per_read(&s0, &s1), per_read(&s1, &s2));
    let reads = (r2 - r1 - 2) / READS;
    eprintln!(
        "one catalog read of {SERVED} served queues (+5 idle), Redis commands by name:\n  \
         console readers (summaries + workers_of_many): {before:?} ({} socket reads)\n  \
         catalog (served_queues): {after:?} ({reads} socket reads)",
        (r1 - r0 - 2) / READS
    );
    // The registry (SMEMBERS), TIME, per queue HMGET meta (paused, mode) +
    // ZRANGE workers, per live worker one HMGET of its handler and labels.
    // (Asserted per command: the idle workers' own commands, blocking
    // reads re-issued now and then, must not make the test flaky.)
    let queues = SERVED as u64 + 5;
    let calls = |name: &str| after.get(name).copied().unwrap_or(0);
    assert_eq!(
        [
            calls("smembers"),
            calls("time"),
            calls("hget"),
            calls("zrange"),
            calls("hmget")
        ],
        [1, 1, 0, queues, queues + SERVED as u64],
        "{after:?}"
    );
    for unused in ["hgetall", "scard", "zcard"] {
        assert_eq!(calls(unused), 0, "{after:?}");
    }
    assert!(before["total"] > 3 * after["total"], "{before:?} {after:?}");
    // Three pipelined round trips whatever the number of queues (a large
    // pipeline may take a few socket reads).
    assert!(
        reads <= 6,
        "{reads} socket reads per catalog read ({after:?})"
    );
    stop.cancel();
    for r in running {
        let _ = tokio::time::timeout(Duration::from_secs(10), r).await;
    }
}
