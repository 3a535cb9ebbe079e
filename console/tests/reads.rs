//! Reads that scale (issue 13): each view reads only what it shows, closed
//! statistics buckets are read once, lists read task summaries (never an
//! input or a result), running tasks are paged on the server, and rows off
//! screen still get the counters that colour them. Real Redis.

mod support;

use std::collections::HashMap;

use rtq_console::fetch::{self, Plan, Reader};
use rtq_console::health::{queue_health, Level};
use rtq_console::model::{Fetched, TaskTab};
use rtq_core::admin::stats::BUCKET_MS;
use rtq_core::admin::StatsCache;
use rtq_core::keys::QueueKeys;
use rtq_core::{Outcome, TaskRequest};
use serde_json::json;
use support::*;

async fn redis_now_ms(seed: &Seeded) -> i64 {
    let t: Vec<i64> = redis::cmd("TIME").query(&mut seed.redis.conn()).unwrap();
    t[0] * 1000 + t[1] / 1000
}

fn hset(seed: &Seeded, key: &str, field: &str, value: u64) {
    let _: () = redis::cmd("HSET")
        .arg(key)
        .arg(field)
        .arg(value)
        .query(&mut seed.redis.conn())
        .unwrap();
}

#[tokio::test]
async fn closed_buckets_are_read_once_and_open_ones_every_time() {
    let seed = Seeded::new().await;
    // The worker adds its statistics with its heartbeats: wait until all of
    // them arrived (the seed waits 3 s at most), so no heartbeat changes an
    // open bucket between the reads compared below.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let stats = seed.admin.stats("llm", 30).await.unwrap();
        if stats.sum("done") == 3 && stats.sum("failed") == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "statistics never arrived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let k = QueueKeys::new("llm").unwrap();
    let now = redis_now_ms(&seed).await;
    let newest = now.div_euclid(BUCKET_MS);
    let queues = vec!["llm".to_string()];
    let mut cache = StatsCache::new();
    let first = cache
        .read_full(&seed.admin, &queues, 30, now)
        .await
        .unwrap();
    assert_eq!(
        cache.last_commands, 30,
        "a cold cache reads the whole window"
    );
    // The same figures as the uncached dashboard.
    let fresh = seed.admin.dashboard(30).await.unwrap();
    let llm = &fresh.iter().find(|(o, _)| o.name == "llm").unwrap().1;
    assert_eq!(first["llm"].sum("done"), llm.sum("done"));
    assert_eq!(first["llm"].total.count, llm.total.count);

    // Writes to a closed bucket (older than 30 s) are not re-read; writes
    // to an open one are.
    hset(&seed, &k.stats(newest - 10), "failed", 7);
    hset(&seed, &k.stats(newest - 1), "done", 1000);
    let second = cache
        .read_full(&seed.admin, &queues, 30, now)
        .await
        .unwrap();
    assert!(
        cache.last_commands <= 4,
        "a warm cache reads only the open buckets, read {}",
        cache.last_commands
    );
    assert_eq!(second["llm"].sum("done"), first["llm"].sum("done") + 1000);
    assert_eq!(second["llm"].sum("failed"), first["llm"].sum("failed"));
    // A cache that forgot the queue reads it whole again.
    cache.retain(&Default::default());
    let third = cache
        .read_full(&seed.admin, &queues, 30, now)
        .await
        .unwrap();
    assert_eq!(cache.last_commands, 30);
    assert_eq!(third["llm"].sum("failed"), first["llm"].sum("failed") + 7);
}

#[tokio::test]
async fn rows_off_screen_get_counters_that_still_colour_them() {
    let seed = Seeded::new().await;
    for q in ["aa", "zz"] {
        seed.client
            .queue(q)
            .unwrap()
            .submit(TaskRequest::json(json!({})))
            .await
            .unwrap();
    }
    // zz failed most of its tasks in the current bucket.
    let now = redis_now_ms(&seed).await;
    let k = QueueKeys::new("zz").unwrap();
    hset(&seed, &k.stats(now.div_euclid(BUCKET_MS)), "failed", 9);
    hset(&seed, &k.stats(now.div_euclid(BUCKET_MS)), "done", 1);
    // Submits list their queue in the registry.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while seed.admin.queues().await.unwrap().len() < 3 {
        assert!(std::time::Instant::now() < deadline, "queues never listed");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let mut reader = Reader::new();
    let Fetched::Queues { rows, .. } = reader
        .queues(&seed.admin, &["llm".to_string()])
        .await
        .unwrap()
    else {
        panic!("queues expected")
    };
    let by: HashMap<&str, _> = rows.iter().map(|r| (r.overview.name.as_str(), r)).collect();
    assert_eq!(by.len(), 3, "{:?}", by.keys());
    assert!(by["llm"].stats_full, "the row on screen has its latencies");
    assert!(by["llm"].stats.total.count > 0);
    assert!(!by["zz"].stats_full && !by["aa"].stats_full);
    assert_eq!(by["zz"].stats.total.count, 0, "no histograms off screen");
    let zz = queue_health(by["zz"]);
    // zz has a pending task and no worker (critical either way); its
    // failure share is known although it is off screen.
    assert_eq!(zz.level, Level::Critical);
    assert_eq!(rtq_console::health::failure_share(by["zz"]), Some(0.9));
}

#[tokio::test]
async fn lists_read_summaries_never_inputs_or_results() {
    let seed = Seeded::new().await;
    let big = "x".repeat(64 * 1024);
    let q = seed.client.queue("big").unwrap();
    q.submit(
        TaskRequest::json(json!({ "input": big }))
            .id("huge")
            .label("model", "llama"),
    )
    .await
    .unwrap();
    q.submit(
        TaskRequest::json(json!({}))
            .id("small")
            .label("model", "llama"),
    )
    .await
    .unwrap();
    let page = seed.admin.pending_page("big", 0, 10).await.unwrap();
    let by: HashMap<&str, _> = page.iter().map(|t| (t.id.as_str(), t)).collect();
    assert!(by["huge"].spec.is_none(), "a 64 KiB spec is not read");
    let small = by["small"].spec.as_ref().expect("a small spec is read");
    assert_eq!(small.labels["model"], "llama");
    // The full read still has everything.
    let full = seed.admin.task("big", "huge").await.unwrap();
    assert!(full.spec.is_some());
    // Finished tasks: the result is not read (null), the error is.
    let recent = seed.admin.recent_page("llm", 0, 10).await.unwrap();
    let done = recent.iter().find(|t| t.id == "done0").unwrap();
    assert_eq!(done.outcome, Some(Outcome::Done(serde_json::Value::Null)));
    let full = seed.admin.task("llm", "done0").await.unwrap();
    assert_eq!(full.outcome, Some(Outcome::Done(json!({"ok": true}))));
    let bad = recent.iter().find(|t| t.id == "bad").unwrap();
    assert!(
        matches!(&bad.outcome, Some(Outcome::Ended { message, .. }) if message.contains("CUDA")),
        "{:?}",
        bad.outcome
    );
}

#[tokio::test]
async fn running_tasks_are_paged_on_the_server() {
    let seed = Seeded::new().await;
    let all = seed.admin.running_page("llm", 0, 50).await.unwrap();
    assert_eq!(all.total, 2);
    let ids: Vec<&str> = all.tasks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["h1", "h2"]);
    let second = seed.admin.running_page("llm", 1, 1).await.unwrap();
    assert_eq!(second.total, 2);
    assert_eq!(second.tasks.len(), 1);
    assert_eq!(second.tasks[0].id, "h2");
    assert!(seed
        .admin
        .running_page("llm", 2, 10)
        .await
        .unwrap()
        .tasks
        .is_empty());
    assert_eq!(all.leases.len(), 1);
    assert_eq!(all.leases[0].0, "gpu-1");
}

/// Waits (deadline 20 s) until gpu-1 has left.
async fn wait_departed(seed: &Seeded) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while seed.admin.departed_workers("llm").await.unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "gpu-1 never left");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Everything one refresh of `plan` sends.
async fn one_refresh(reader: &mut Reader, seed: &Seeded, plan: &Plan) -> Vec<Fetched> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    fetch::read_all(reader, &seed.admin, plan, &tx)
        .await
        .unwrap();
    drop(tx);
    let mut out = Vec::new();
    while let Some(f) = rx.recv().await {
        out.push(f);
    }
    out
}

#[tokio::test]
async fn each_view_reads_only_what_it_shows() {
    let seed = Seeded::new().await;
    let mut reader = Reader::new();
    let queues_view = Plan::default();
    let got = one_refresh(&mut reader, &seed, &queues_view).await;
    assert!(got.iter().any(|f| matches!(f, Fetched::Queues { .. })));
    let nodes_view = Plan {
        queue: Some("llm".into()),
        queues: false,
        nodes: true,
        ..Plan::default()
    };
    let got = one_refresh(&mut reader, &seed, &nodes_view).await;
    assert!(
        !got.iter().any(|f| matches!(f, Fetched::Queues { .. })),
        "the nodes view does not read every queue"
    );
    assert!(got.iter().any(|f| matches!(f, Fetched::Nodes(_))));
    assert!(got
        .iter()
        .any(|f| matches!(f, Fetched::Overview(o) if o.name == "llm" && o.running == 2)));
    let tasks_view = Plan {
        queue: Some("llm".into()),
        queues: false,
        tasks: Some((TaskTab::Running, 0, 50)),
        ..Plan::default()
    };
    let got = one_refresh(&mut reader, &seed, &tasks_view).await;
    assert!(!got.iter().any(|f| matches!(f, Fetched::Queues { .. })));
    let tasks = got
        .iter()
        .find_map(|f| match f {
            Fetched::Tasks(t) => Some(t),
            _ => None,
        })
        .expect("tasks");
    assert_eq!(tasks.total, 2);
    // Moving rows alone does not count as a new plan.
    let moved = Plan {
        shown: vec!["llm".into()],
        ..Plan::default()
    };
    assert!(Plan::default().same_reads(&moved));
    assert!(!Plan::default().same_reads(&nodes_view));
}

#[tokio::test]
async fn redis_losing_its_data_is_said_instead_of_an_empty_list() {
    let mut seed = Seeded::new().await;
    // No worker left to list the queue again at its next heartbeat (its
    // held tasks cancelled first, so it leaves at once).
    for id in ["h1", "h2"] {
        seed.admin.cancel("llm", id).await.unwrap();
    }
    seed.stop_worker();
    wait_departed(&seed).await;
    let mut reader = Reader::new();
    let got = one_refresh(&mut reader, &seed, &Plan::default()).await;
    assert!(got.iter().any(|f| matches!(f, Fetched::Lost(None))));
    let mut app = rtq_console::state::App::new("redis://x/".into(), true);
    for f in got {
        app.on_fetched(f);
    }
    let _: () = redis::cmd("FLUSHALL")
        .query(&mut seed.redis.conn())
        .unwrap();
    let got = one_refresh(&mut reader, &seed, &Plan::default()).await;
    let lost = got
        .iter()
        .find_map(|f| match f {
            Fetched::Lost(Some(m)) => Some(m.clone()),
            _ => None,
        })
        .expect("a loss is reported");
    assert!(lost.contains("1 queues listed before; 0 now"), "{lost}");
    for f in got {
        app.on_fetched(f);
    }
    let screen = render(&app, 200, 30);
    assert!(screen.contains("lost its data"), "{screen}");
    assert!(!screen.contains("none yet"), "{screen}");
}

/// Two refreshes can fall in one Redis millisecond, one on each side of a
/// flush: each refresh checks again whether Redis lost its data, whatever
/// the clock says, so the second never shows the figures cached before.
#[tokio::test]
async fn a_refresh_at_the_same_millisecond_after_a_flush_shows_no_cached_figures() {
    let seed = Seeded::new().await;
    let k = QueueKeys::new("llm").unwrap();
    let now = redis_now_ms(&seed).await;
    hset(&seed, &k.stats(now.div_euclid(BUCKET_MS) - 10), "done", 500);
    let queues = vec!["llm".to_string()];
    let mut cache = StatsCache::new();
    cache.new_refresh();
    let before = cache
        .read_full(&seed.admin, &queues, 30, now)
        .await
        .unwrap();
    assert!(before["llm"].sum("done") >= 500);
    let _: () = redis::cmd("FLUSHALL")
        .query(&mut seed.redis.conn())
        .unwrap();
    cache.new_refresh();
    let after = cache
        .read_full(&seed.admin, &queues, 30, now)
        .await
        .unwrap();
    assert_eq!(
        after["llm"].sum("done"),
        0,
        "figures cached before the flush"
    );
}
