//! `rtq task QUEUE ID`: one task's state, attempts, result or error;
//! `--follow` streams its output until it ends. Also the streaming printer
//! that `rtq submit --stream` shares.

use std::io::Write;

use futures::StreamExt;
use rtq_core::{Outcome, StreamEvent, TaskInfo, TaskStream};
use serde_json::json;

use super::json::{self as shape};
use super::{note, printable, CliError, Ctx};

/// Prints the task, or follows it with `follow`. Exit 0 for a task found
/// (whatever its state) unless following: then the task's own outcome
/// decides (1 if it ends without a result).
pub(super) async fn run(ctx: &Ctx, queue: &str, id: &str, follow: bool) -> Result<(), CliError> {
    ctx.known(queue, false).await?;
    if follow {
        let stream = ctx.client.queue(queue)?.follow(id, 0).await?;
        // Never follow silently what nothing will run.
        if let Ok(o) = ctx.admin.overview(queue).await {
            let ended = ctx
                .admin
                .task(queue, id)
                .await
                .map(|t| t.state.is_terminal());
            if o.workers_alive == 0 && matches!(ended, Ok(false)) {
                note(&format!(
                    "queue {} has no live worker; following anyway (interrupt to stop)",
                    printable(queue, false)
                ));
            }
        }
        return print_stream(ctx, stream).await;
    }
    let t = ctx.admin.task(queue, id).await?;
    if ctx.json {
        ctx.doc(shape::task(queue, &t, true));
    } else {
        ctx.line(describe(queue, &t));
    }
    Ok(())
}

/// Prints a task's stream: chunks as they arrive, restarts on stderr, the
/// result last (with `--json`, one JSON document per line and event).
///
/// # Errors
/// The reason the task ended without a result (exit 1), or a connection
/// error.
pub(super) async fn print_stream(ctx: &Ctx, mut stream: TaskStream) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    while let Some(ev) = stream.next().await {
        let ev = ev?;
        let written = if ctx.json {
            let v = match &ev {
                StreamEvent::Chunk(c) => {
                    json!({"event": "chunk", "attempt": c.attempt, "index": c.index, "text": c.text()})
                }
                StreamEvent::Restarted {
                    attempt,
                    next_attempt,
                    reason,
                    ..
                } => {
                    json!({"event": "restarted", "attempt": attempt, "next_attempt": next_attempt, "reason": reason})
                }
                StreamEvent::Done(o) => {
                    json!({"event": "done", "id": o.id, "attempt": o.attempt, "result": o.result})
                }
            };
            writeln!(out, "{}", shape::document(v))
        } else {
            match ev {
                StreamEvent::Chunk(c) => out.write_all(printable(&c.text(), true).as_bytes()),
                StreamEvent::Restarted { reason, .. } => {
                    let _ = writeln!(
                        std::io::stderr().lock(),
                        "\n[restarted: {}]",
                        printable(&reason, true)
                    );
                    Ok(())
                }
                StreamEvent::Done(o) => writeln!(out, "\n{}", o.result),
            }
        };
        if let Err(e) = written.and_then(|()| out.flush()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                // The reader went away (`| head`): stop following; the
                // task itself goes on.
                return Ok(());
            }
        }
    }
    Ok(())
}

/// A duration in ms, short ("52ms", "2.8s", "3m05s").
fn dur(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    }
}

/// The text form of `rtq task`: what, where, when, and how it ended.
fn describe(queue: &str, t: &TaskInfo) -> String {
    let p = |s: &str| printable(s, false).into_owned();
    let mut lines = vec![format!("task {}  queue {}", p(&t.id), p(queue))];
    let worker = if t.worker.is_empty() {
        String::new()
    } else {
        format!("  worker {}", p(&t.worker))
    };
    lines.push(format!(
        "state {}  priority {}  attempt {} (failures {}/{}){worker}",
        t.state, t.priority, t.attempt, t.failures, t.max_attempts
    ));
    if let Some(spec) = &t.spec {
        if !spec.labels.is_empty() {
            let labels: Vec<String> = spec
                .labels
                .iter()
                .map(|(k, v)| format!("{}={}", p(k), p(v)))
                .collect();
            lines.push(format!("labels {}", labels.join(" ")));
        }
    }
    let submitted = chrono::DateTime::from_timestamp_millis(t.submitted_ms)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string())
        .unwrap_or_else(|| t.submitted_ms.to_string());
    let mut timeline = vec![format!("submitted {submitted}")];
    let mut at = |what: &str, ms: i64| {
        if ms > 0 {
            timeline.push(format!("{what} +{}", dur(ms - t.submitted_ms)));
        }
    };
    at("started", t.started_ms);
    at("first chunk", t.first_chunk_ms);
    at("last chunk", t.last_chunk_ms);
    at("finished", t.finished_ms);
    at("deadline", t.deadline_ms);
    lines.push(timeline.join(" · "));
    lines.push(format!("output {} chunks, {} bytes", t.chunks, t.bytes));
    match &t.outcome {
        Some(Outcome::Done(result)) => lines.push(format!("result {}", p(&result.to_string()))),
        Some(Outcome::Ended { kind, message, .. }) => {
            lines.push(format!("error ({}) {}", p(kind), printable(message, true)))
        }
        None => {}
    }
    for (n, e) in &t.attempt_errors {
        lines.push(format!("attempt {n} failed: {}", printable(e, true)));
    }
    if let Some(spec) = &t.spec {
        if let Some(input) = &spec.input {
            lines.push(format!("input {}", p(&input.to_string())));
        }
        if let Some(r) = &spec.input_ref {
            lines.push(format!("input_ref {}", p(r)));
        }
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::dur;

    #[test]
    fn durations_are_short() {
        assert_eq!(dur(52), "52ms");
        assert_eq!(dur(2_800), "2.8s");
        assert_eq!(dur(185_000), "3m05s");
        assert_eq!(dur(-5), "0ms");
    }
}
