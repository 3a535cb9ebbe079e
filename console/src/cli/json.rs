//! The `--json` shapes: typed values (numbers as numbers, absent values as
//! `null`, labels as objects) and a [`SCHEMA`] version in every document,
//! so a script can tell a shape it knows from a newer one. The README's
//! "JSON output" section documents each shape.

use rtq_core::admin::{Percentiles, QueueOverview, QueueStats, WorkerInfo};
use rtq_core::{Outcome, TaskInfo};
use serde_json::{json, Map, Value};

/// Version of the JSON shapes: bumped when a field changes meaning or is
/// removed (added fields do not bump it).
pub const SCHEMA: u64 = 1;

/// `value` (an object) with the `"schema"` field added.
pub fn document(value: Value) -> Value {
    let mut out = Map::new();
    out.insert("schema".into(), SCHEMA.into());
    if let Value::Object(fields) = value {
        out.extend(fields);
    }
    Value::Object(out)
}

/// A Redis-clock time or a count where 0 means "none": `null` then.
fn nonzero(v: i64) -> Value {
    if v == 0 {
        Value::Null
    } else {
        v.into()
    }
}

fn percentiles(p: &Percentiles) -> Value {
    json!({"p50_ms": p.p50, "p95_ms": p.p95, "p99_ms": p.p99, "count": p.count})
}

/// One queue of `rtq stats`.
pub fn queue_stats(o: &QueueOverview, s: &QueueStats) -> Value {
    json!({
        "queue": o.name,
        "paused": o.paused,
        "pending": o.pending,
        "delayed": o.delayed,
        "running": o.running,
        "workers_alive": o.workers_alive,
        "workers_stale": o.workers_stale,
        "idle_slots": o.idle_slots,
        "max_depth": if o.max_depth == 0 { Value::Null } else { o.max_depth.into() },
        "head_wait_ms": o.head_wait_ms,
        "error": o.error,
        "submitted_per_sec": s.rate("sub"),
        "done_per_sec": s.rate("done"),
        "failed_per_sec": s.rate("failed"),
        "expired": s.sum("expired"),
        "cancelled": s.sum("cancelled"),
        "worker_lost": s.sum("lost"),
        "rejected_full": s.sum("full"),
        "wait": percentiles(&s.wait),
        "first_chunk": percentiles(&s.first_chunk),
        "total": percentiles(&s.total),
    })
}

/// A heartbeat field as a number, `null` if absent or not a number.
fn number_field(w: &WorkerInfo, name: &str) -> Value {
    w.field(name)
        .parse::<i64>()
        .map_or(Value::Null, Value::from)
}

/// A heartbeat field as text, `null` if absent or empty.
fn text_field(w: &WorkerInfo, name: &str) -> Value {
    match w.field(name) {
        "" => Value::Null,
        v => v.into(),
    }
}

/// One worker of `rtq workers`, at Redis time `now_ms`.
pub fn worker(w: &WorkerInfo, now_ms: i64) -> Value {
    json!({
        "id": w.id,
        "alive": w.lease_until_ms.is_some_and(|l| l > now_ms),
        "lease_until_ms": w.lease_until_ms,
        "heartbeat_age_ms": w.heartbeat_age_ms(now_ms),
        "host": text_field(w, "host"),
        "pid": number_field(w, "pid"),
        "version": text_field(w, "version"),
        "handler": text_field(w, "handler"),
        "state": text_field(w, "state"),
        "upstream": text_field(w, "upstream"),
        "slots": number_field(w, "slots"),
        "busy": number_field(w, "busy"),
        "done": number_field(w, "done"),
        "failed": number_field(w, "failed"),
        "last_error": text_field(w, "last_error"),
        // Redis ms, and its age; null for a worker before revision 14.
        "last_error_ms": w.last_error_ms(),
        "last_error_age_ms": w.last_error_age_ms(now_ms),
        "labels": rtq_core::admin::worker_labels(w),
        "tasks": w.tasks,
    })
}

/// A task: the summary fields of a list row and, with `full`, its input,
/// result and the errors of earlier attempts (what `rtq task` prints).
pub fn task(queue: &str, t: &TaskInfo, full: bool) -> Value {
    let (error, error_kind) = match &t.outcome {
        Some(Outcome::Ended { message, kind, .. }) => (message.clone().into(), kind.clone().into()),
        _ => (Value::Null, Value::Null),
    };
    let labels = t
        .spec
        .as_ref()
        .map(|s| s.labels.clone())
        .unwrap_or_default();
    let mut v = json!({
        "id": t.id,
        "queue": queue,
        "state": t.state.as_str(),
        "priority": t.priority,
        "attempt": t.attempt,
        "failures": t.failures,
        "max_attempts": t.max_attempts,
        "worker": if t.worker.is_empty() { Value::Null } else { t.worker.clone().into() },
        "labels": labels,
        "submitted_ms": t.submitted_ms,
        "deadline_ms": nonzero(t.deadline_ms),
        "started_ms": nonzero(t.started_ms),
        "first_chunk_ms": nonzero(t.first_chunk_ms),
        "last_chunk_ms": nonzero(t.last_chunk_ms),
        "finished_ms": nonzero(t.finished_ms),
        "retry_at_ms": t.retry_at_ms,
        "chunks": t.chunks,
        "bytes": t.bytes,
        "error": error,
        "error_kind": error_kind,
    });
    if full {
        let result = match &t.outcome {
            Some(Outcome::Done(r)) => r.clone(),
            _ => Value::Null,
        };
        let attempt_errors: Map<String, Value> = t
            .attempt_errors
            .iter()
            .map(|(n, e)| (n.to_string(), e.clone().into()))
            .collect();
        let spec = t.spec.as_ref();
        v["result"] = result;
        v["attempt_errors"] = Value::Object(attempt_errors);
        v["input"] = spec.and_then(|s| s.input.clone()).unwrap_or(Value::Null);
        v["input_ref"] = spec.and_then(|s| s.input_ref.clone()).into();
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_document_starts_with_the_schema_version() {
        let d = document(json!({"queue": "llm", "n": 3}));
        assert_eq!(d, json!({"schema": 1, "queue": "llm", "n": 3}));
    }

    #[test]
    fn a_worker_heartbeat_becomes_typed_values() {
        let fields = [
            ("slots", "8"),
            ("busy", "3"),
            ("pid", "not a number"),
            ("host", ""),
            ("labels", r#"{"gpu":"A100"}"#),
            ("hb", "900"),
        ];
        let w = WorkerInfo {
            id: "w1".into(),
            lease_until_ms: Some(2_000),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            tasks: vec!["t1".into()],
        };
        let v = worker(&w, 1_000);
        assert_eq!(
            (v["slots"].clone(), v["busy"].clone()),
            (json!(8), json!(3))
        );
        assert!(v["pid"].is_null() && v["host"].is_null() && v["done"].is_null());
        assert_eq!(v["labels"], json!({"gpu": "A100"}));
        assert_eq!(
            (v["alive"].clone(), v["heartbeat_age_ms"].clone()),
            (json!(true), json!(100))
        );
        assert_eq!(worker(&w, 2_000)["alive"], false, "the lease ends at 2000");
    }

    #[test]
    fn a_task_has_labels_as_an_object_and_null_for_what_is_not_set() {
        let hash: std::collections::HashMap<String, String> = [
            ("v", "2"),
            ("st", "done"),
            ("pri", "-3"),
            ("att", "1"),
            ("max", "3"),
            ("sub", "1000"),
            ("fin", "1500"),
            ("res", r#"{"ok":true}"#),
            (
                "spec",
                r#"{"v":2,"id":"t1","input":{"p":1},"labels":{"team":"a"}}"#,
            ),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let t = TaskInfo::from_hash("t1", &hash).unwrap();
        let row = task("llm", &t, false);
        assert_eq!(row["labels"], json!({"team": "a"}));
        assert_eq!(
            (row["priority"].clone(), row["finished_ms"].clone()),
            (json!(-3), json!(1500))
        );
        assert!(row["worker"].is_null() && row["deadline_ms"].is_null() && row["error"].is_null());
        assert!(
            row.get("result").is_none(),
            "lists carry no result or input"
        );
        let full = task("llm", &t, true);
        assert_eq!(full["result"], json!({"ok": true}));
        assert_eq!(full["input"], json!({"p": 1}));
    }

    #[test]
    fn zero_times_are_null() {
        assert_eq!(nonzero(0), Value::Null);
        assert_eq!(nonzero(17), json!(17));
    }
}
