//! The read commands: `rtq stats`, `rtq workers`, `rtq tasks`, as text
//! tables or JSON.

use serde_json::{json, Value};

use super::{json as shape, printable, report, CliError, Ctx};
use crate::TaskList;

fn ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0}ms")).unwrap_or_else(|| "-".into())
}

pub(super) async fn stats(
    ctx: &Ctx,
    queue: Option<String>,
    window_secs: u64,
) -> Result<(), CliError> {
    let buckets = (window_secs / 10) as usize;
    let rows = match &queue {
        // One queue: read only it (also when Redis lost its registry
        // entry but not its keys).
        Some(q) => {
            ctx.known(q, false).await?;
            let (o, s) = futures::try_join!(ctx.admin.overview(q), ctx.admin.stats(q, buckets))?;
            vec![(o, s)]
        }
        None => ctx.admin.dashboard(buckets).await?,
    };
    // On a Redis Cluster: the master holding each queue (empty on one node).
    let names: Vec<String> = rows.iter().map(|(o, _)| o.name.clone()).collect();
    let nodes = ctx.admin.queue_nodes(&names).await.unwrap_or_default();
    let node_of = |name: &str| nodes.get(name).cloned().unwrap_or_else(|| "-".into());
    if !nodes.is_empty() {
        for (queue, how) in ctx.admin.moving_queues(&names).await.unwrap_or_default() {
            super::note(&format!(
                "warning: queue {queue}: {how} (live resharding): rtq workers refuse to start on it; move queues only while idle (docs/CLUSTER.md)"
            ));
        }
    }
    if ctx.json {
        let v: Vec<Value> = rows
            .iter()
            .map(|(o, s)| {
                let mut v = shape::queue_stats(o, s);
                if !nodes.is_empty() {
                    v["node"] = json!(node_of(&o.name));
                }
                v
            })
            .collect();
        ctx.doc(json!({"window_secs": window_secs, "queues": v}));
        return Ok(());
    }
    let row = |cols: [&str; 9], node: &str| {
        let line = format!(
            "{:<20} {:>7} {:>8} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8}",
            cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], cols[6], cols[7], cols[8]
        );
        if nodes.is_empty() {
            line
        } else {
            format!("{line}  {node}")
        }
    };
    ctx.line(row(
        [
            "QUEUE", "STATE", "PENDING", "RUNNING", "WORKERS", "DONE/S", "FAIL/S", "WAIT99",
            "TOTAL99",
        ],
        "NODE",
    ));
    for (o, s) in &rows {
        let name = printable(&o.name, false);
        if let Some(error) = &o.error {
            ctx.line(row(
                [&name, "error", "-", "-", "-", "-", "-", "-", "-"],
                &node_of(&o.name),
            ));
            report(error);
            continue;
        }
        ctx.line(row(
            [
                &name,
                if o.paused { "paused" } else { "running" },
                &o.pending.to_string(),
                &o.running.to_string(),
                &o.workers_alive.to_string(),
                &format!("{:.1}", s.rate("done")),
                &format!("{:.1}", s.rate("failed")),
                &ms(s.wait.p99),
                &ms(s.total.p99),
            ],
            &node_of(&o.name),
        ));
    }
    Ok(())
}

pub(super) async fn workers(ctx: &Ctx, queue: &str, departed: bool) -> Result<(), CliError> {
    ctx.known(queue, false).await?;
    let now = ctx.admin.overview(queue).await?.now_ms;
    if departed {
        return departed_workers(ctx, queue, now).await;
    }
    let workers = ctx.admin.workers(queue).await?;
    if ctx.json {
        let v: Vec<Value> = workers.iter().map(|w| shape::worker(w, now)).collect();
        ctx.doc(json!({"queue": queue, "now_ms": now, "workers": v}));
        return Ok(());
    }
    ctx.line(format!(
        "{:<32} {:<16} {:<8} {:>6} {:>8} {:>8} {:>8}",
        "WORKER", "HOST", "STATE", "BUSY", "DONE", "FAILED", "HB AGE"
    ));
    for w in &workers {
        ctx.line(format!(
            "{:<32} {:<16} {:<8} {:>6} {:>8} {:>8} {:>7}s",
            printable(&w.id, false),
            printable(w.field("host"), false),
            printable(w.field("state"), false),
            printable(&format!("{}/{}", w.field("busy"), w.field("slots")), false),
            printable(w.field("done"), false),
            printable(w.field("failed"), false),
            w.heartbeat_age_ms(now)
                .map(|a| format!("{:.1}", a as f64 / 1000.0))
                .unwrap_or_default()
        ));
    }
    Ok(())
}

/// `rtq workers --departed`: who died or left in the last 10 minutes.
async fn departed_workers(ctx: &Ctx, queue: &str, now: i64) -> Result<(), CliError> {
    let gone = ctx.admin.departed_workers(queue).await?;
    let at = |w: &rtq_core::admin::WorkerInfo| w.field("dead_at").parse::<i64>().ok();
    if ctx.json {
        let v: Vec<Value> = gone
            .iter()
            .map(|w| {
                let mut v = shape::worker(w, now);
                v["departed_at_ms"] = json!(at(w));
                v["departed_why"] = json!(w.field("dead_why"));
                v
            })
            .collect();
        ctx.doc(json!({"queue": queue, "now_ms": now, "departed": v}));
        return Ok(());
    }
    ctx.line(format!(
        "{:<32} {:<16} {:<8} {:>8} {:>8} {:>9}  WHY",
        "WORKER", "HOST", "STATE", "DONE", "FAILED", "AGO"
    ));
    for w in &gone {
        ctx.line(format!(
            "{:<32} {:<16} {:<8} {:>8} {:>8} {:>8}s  {}",
            printable(&w.id, false),
            printable(w.field("host"), false),
            printable(w.field("state"), false),
            printable(w.field("done"), false),
            printable(w.field("failed"), false),
            at(w)
                .map(|t| format!("{:.1}", (now - t).max(0) as f64 / 1000.0))
                .unwrap_or_default(),
            printable(w.field("dead_why"), false),
        ));
    }
    Ok(())
}

/// `rtq events QUEUE`: the queue's event stream, newest first.
pub(super) async fn events(ctx: &Ctx, queue: &str, limit: usize) -> Result<(), CliError> {
    ctx.known(queue, false).await?;
    let events = ctx.admin.events(queue, limit).await?;
    if ctx.json {
        let v: Vec<Value> = events
            .iter()
            .map(|e| {
                json!({
                    "at_ms": e.at_ms,
                    "kind": e.kind.as_str(),
                    "task": e.task,
                    "worker": e.worker,
                    "message": e.message,
                })
            })
            .collect();
        ctx.doc(json!({"queue": queue, "events": v}));
        return Ok(());
    }
    ctx.line(format!(
        "{:<24} {:<12} {:<24} {:<20} MESSAGE",
        "TIME (UTC)", "KIND", "TASK", "WORKER"
    ));
    for e in &events {
        let time = chrono::DateTime::from_timestamp_millis(e.at_ms)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
            .unwrap_or_default();
        ctx.line(format!(
            "{:<24} {:<12} {:<24} {:<20} {}",
            time,
            printable(e.kind.as_str(), false),
            printable(e.task.as_deref().unwrap_or("-"), false),
            printable(e.worker.as_deref().unwrap_or("-"), false),
            printable(&e.message, false),
        ));
    }
    Ok(())
}

pub(super) async fn tasks(
    ctx: &Ctx,
    queue: &str,
    state: TaskList,
    limit: usize,
) -> Result<(), CliError> {
    ctx.known(queue, false).await?;
    let admin = &ctx.admin;
    let (list, tasks) = match state {
        TaskList::Pending => ("pending", admin.pending(queue, 0, limit).await?),
        TaskList::Running => (
            "running",
            admin
                .running(queue)
                .await?
                .into_iter()
                .take(limit)
                .collect(),
        ),
        TaskList::Recent => ("recent", admin.recent(queue, 0, limit).await?),
    };
    if ctx.json {
        let v: Vec<Value> = tasks.iter().map(|t| shape::task(queue, t, false)).collect();
        ctx.doc(json!({"queue": queue, "list": list, "tasks": v}));
        return Ok(());
    }
    for t in &tasks {
        ctx.line(format!(
            "{}\t{}\t{}\t{}",
            printable(&t.id, false),
            t.state,
            t.priority,
            printable(&t.worker, false)
        ));
    }
    Ok(())
}
