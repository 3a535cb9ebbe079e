//! What one console refresh costs Redis, per view, against the number of
//! queues: Redis commands, Redis CPU (`used_cpu_sys + used_cpu_user`) and
//! bytes sent (`total_net_output_bytes`), each from `INFO` deltas, for the
//! reads before issue 13's last part (every refresh read `dashboard(30)`,
//! 31 hashes per queue, in every view, and full task hashes for lists)
//! and after (summaries of every queue, whole statistics only for the rows
//! on screen with closed buckets cached, task summaries, a server-side page
//! of running tasks). Run by `scripts/bench-console.sh` on a private Redis;
//! it FLUSHALLs that Redis between points.

use anyhow::Context;
use clap::Parser;
use rtq_console::fetch::{self, Plan, Reader};
use rtq_console::model::TaskTab;
use rtq_core::admin::Admin;
use rtq_core::keys::QueueKeys;
use rtq_core::{Client, TaskRequest};
use serde_json::json;

/// Measures console reads per refresh against the number of queues.
#[derive(Parser)]
struct Args {
    /// Redis URL of a Redis this benchmark may flush.
    #[arg(long, env = "RTQ_REDIS_URL")]
    redis: String,
    /// Numbers of queues, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000,10000")]
    queues: Vec<usize>,
    /// Refreshes measured per point (after one warm-up refresh).
    #[arg(long, default_value_t = 5)]
    refreshes: usize,
    /// Rows on screen in the queues view.
    #[arg(long, default_value_t = 40)]
    rows: usize,
}

/// Pending tasks of the first queue (the tasks view's queue), each with an
/// input of this many bytes.
const PENDING: usize = 200;
const INPUT_BYTES: usize = 64 * 1024;

#[derive(Clone, Copy, Default)]
struct Cost {
    commands: f64,
    cpu_ms: f64,
    kib_out: f64,
}

async fn info(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<(f64, f64, f64)> {
    let text: String = redis::cmd("INFO").arg("all").query_async(conn).await?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let calls: f64 = text
        .lines()
        .filter(|l| l.starts_with("cmdstat_"))
        .filter_map(|l| {
            l.split_once("calls=")?
                .1
                .split(',')
                .next()?
                .parse::<f64>()
                .ok()
        })
        .sum();
    Ok((
        calls,
        field("used_cpu_sys") + field("used_cpu_user"),
        field("total_net_output_bytes"),
    ))
}

/// The mean cost of one refresh between two `INFO` snapshots taken
/// around `n` refreshes.
fn cost(before: (f64, f64, f64), after: (f64, f64, f64), n: usize) -> Cost {
    let n = n as f64;
    Cost {
        // The first snapshot's INFO is counted in the second.
        commands: (after.0 - before.0 - 1.0) / n,
        cpu_ms: (after.1 - before.1) * 1000.0 / n,
        kib_out: (after.2 - before.2) / 1024.0 / n,
    }
}

/// N queues, each with one pending task and 30 buckets of statistics;
/// the first queue with [`PENDING`] tasks of [`INPUT_BYTES`] each.
async fn seed(
    client: &Client,
    conn: &mut redis::aio::MultiplexedConnection,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let () = redis::cmd("FLUSHALL").query_async(conn).await?;
    let names: Vec<String> = (0..n).map(|i| format!("q{i:05}")).collect();
    let time: Vec<i64> = redis::cmd("TIME").query_async(conn).await?;
    let newest = time[0] / 10;
    for chunk in names.chunks(500) {
        let submits = chunk.iter().map(|q| async move {
            client
                .queue(q)?
                .submit(TaskRequest::json(json!({"n": 1})))
                .await
        });
        for r in futures::future::join_all(submits).await {
            r?;
        }
        // Statistics as scripts and heartbeats write them: counters and a
        // few histogram cells per bucket.
        let mut pipe = redis::pipe();
        for q in chunk {
            let k = QueueKeys::new(q)?;
            for b in newest - 29..=newest {
                pipe.cmd("HSET")
                    .arg(k.stats(b))
                    .arg(&[
                        ("sub", "40"),
                        ("done", "38"),
                        ("failed", "2"),
                        ("w:10", "30"),
                        ("w:14", "8"),
                        ("f:30", "30"),
                        ("f:33", "8"),
                        ("t:40", "30"),
                        ("t:44", "7"),
                        ("t:50", "1"),
                    ])
                    .ignore();
            }
        }
        pipe.query_async::<()>(conn).await?;
    }
    let big = "x".repeat(INPUT_BYTES);
    let q = client.queue(&names[0])?;
    for i in 0..PENDING {
        q.submit(
            TaskRequest::json(json!({ "input": big }))
                .id(format!("t{i:04}"))
                .label("model", "llama"),
        )
        .await?;
    }
    Ok(names)
}

/// The reads of one refresh before: `dashboard(30)` in every view, then
/// the view's own reads with full task hashes.
async fn before(admin: &Admin, view: &str, q: &str) -> anyhow::Result<()> {
    admin.dashboard(30).await?;
    match view {
        "queues" => {}
        "nodes" => {
            admin.overview(q).await?;
            admin.workers(q).await?;
        }
        "tasks" => {
            admin.overview(q).await?;
            admin.workers(q).await?;
            admin.pending(q, 0, 50).await?;
        }
        _ => {
            admin.overview(q).await?;
            admin.task(q, "t0000").await?;
            admin.tail(q, "t0000", 40).await?;
        }
    }
    Ok(())
}

fn plan(view: &str, q: &str, shown: &[String]) -> Plan {
    Plan {
        queue: Some(q.to_string()),
        queues: view == "queues",
        shown: if view == "queues" {
            shown.to_vec()
        } else {
            Vec::new()
        },
        nodes: view == "nodes",
        tasks: (view == "tasks").then_some((TaskTab::Pending, 0, 50)),
        detail: (view == "detail").then(|| "t0000".to_string()),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = Client::connect(&args.redis).await.context("connect")?;
    let admin = Admin::new(&client);
    let mut conn = redis::Client::open(args.redis.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let views = ["queues", "nodes", "tasks", "detail"];
    let mut results: Vec<(usize, &str, Cost, Cost)> = Vec::new();
    for &n in &args.queues {
        let names = seed(&client, &mut conn, n).await?;
        let q = names[0].clone();
        let shown: Vec<String> = names.iter().take(args.rows).cloned().collect();
        for view in views {
            // Before: one warm-up refresh, then n measured.
            before(&admin, view, &q).await?;
            let at = info(&mut conn).await?;
            for _ in 0..args.refreshes {
                before(&admin, view, &q).await?;
            }
            let old = cost(at, info(&mut conn).await?, args.refreshes);
            // After: the console's own reads, its cache warm.
            let mut reader = Reader::new();
            let p = plan(view, &q, &shown);
            let (tx, mut rx) = tokio::sync::mpsc::channel(64);
            let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
            fetch::read_all(&mut reader, &admin, &p, &tx).await?;
            let at = info(&mut conn).await?;
            for _ in 0..args.refreshes {
                fetch::read_all(&mut reader, &admin, &p, &tx).await?;
            }
            let new = cost(at, info(&mut conn).await?, args.refreshes);
            drop(tx);
            drain.await?;
            eprintln!(
                "{n} queues, {view}: before {:.0} cmds {:.2} ms, after {:.0} cmds {:.2} ms",
                old.commands, old.cpu_ms, new.commands, new.cpu_ms
            );
            results.push((n, view, old, new));
        }
    }
    println!(
        "| queues | view | Redis cmds before | after | Redis CPU ms before | after | KiB sent before | after |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    for (n, view, old, new) in &results {
        println!(
            "| {n} | {view} | {:.0} | {:.0} | {:.2} | {:.2} | {:.0} | {:.0} |",
            old.commands, new.commands, old.cpu_ms, new.cpu_ms, old.kib_out, new.kib_out
        );
    }
    Ok(())
}
