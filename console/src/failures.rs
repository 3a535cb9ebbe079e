//! Recent failures grouped by reason: "37 x handler: CUDA out of memory",
//! with when the group was first and last seen and an example id, so an
//! operator sees at a glance what is failing and can retry a whole group.

use rtq_core::{Outcome, TaskInfo};

/// Characters of a reason kept for grouping and display.
const REASON_CHARS: usize = 160;

/// Tasks that failed for the same reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailureGroup {
    /// Identity of the group: kind and normalised reason.
    pub key: String,
    /// Error kind (handler, worker_lost, timeout_queued, timeout_running).
    pub kind: String,
    /// The reason with numbers replaced by `#` (so "took 31 s" and "took
    /// 45 s" group together), at most 160 characters.
    pub reason: String,
    /// When the oldest of them ended (Redis time, ms).
    pub first_ms: i64,
    /// When the newest of them ended.
    pub last_ms: i64,
    /// The newest task's id.
    pub example: String,
    /// Every task id of the group, newest first.
    pub ids: Vec<String>,
}

impl FailureGroup {
    /// How many tasks.
    pub fn count(&self) -> usize {
        self.ids.len()
    }
}

/// `reason` with each run of digits replaced by `#`, cut to 160 characters.
pub fn normalise(reason: &str) -> String {
    let mut out = String::new();
    let mut in_digits = false;
    for c in reason.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
        if out.chars().count() >= REASON_CHARS {
            break;
        }
    }
    out
}

/// Groups failed and expired tasks (newest first in, newest first in each
/// group); groups by size, then by the newest failure.
pub fn group(tasks: &[TaskInfo]) -> Vec<FailureGroup> {
    let mut groups: Vec<FailureGroup> = Vec::new();
    for t in tasks {
        let (kind, message) = match &t.outcome {
            Some(Outcome::Ended { kind, message, .. }) => (kind.clone(), message.as_str()),
            _ => continue,
        };
        let reason = normalise(message);
        let key = format!("{kind}\u{1f}{reason}");
        match groups.iter_mut().find(|g| g.key == key) {
            Some(g) => {
                g.ids.push(t.id.clone());
                g.first_ms = g.first_ms.min(t.finished_ms);
                if t.finished_ms > g.last_ms {
                    g.last_ms = t.finished_ms;
                    g.example = t.id.clone();
                }
            }
            None => groups.push(FailureGroup {
                key,
                kind,
                reason,
                first_ms: t.finished_ms,
                last_ms: t.finished_ms,
                example: t.id.clone(),
                ids: vec![t.id.clone()],
            }),
        }
    }
    groups.sort_by(|a, b| b.count().cmp(&a.count()).then(b.last_ms.cmp(&a.last_ms)));
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtq_core::TaskState;

    fn failed(id: &str, kind: &str, message: &str, at: i64) -> TaskInfo {
        let mut h = std::collections::HashMap::new();
        h.insert("st".to_string(), "failed".to_string());
        h.insert("v".to_string(), "2".to_string());
        let mut t = TaskInfo::from_hash(id, &h).unwrap();
        t.state = TaskState::Failed;
        t.finished_ms = at;
        t.outcome = Some(Outcome::Ended {
            state: TaskState::Failed,
            kind: kind.into(),
            message: message.into(),
            worker: "w".into(),
        });
        t
    }

    #[test]
    fn failures_group_by_kind_and_reason_with_numbers_ignored() {
        let tasks = vec![
            failed("a", "handler", "CUDA out of memory (tried 2048 MiB)", 50),
            failed("b", "handler", "upstream 503", 40),
            failed("c", "handler", "CUDA out of memory (tried 4096 MiB)", 30),
            failed("d", "worker_lost", "worker gpu-1 stopped heartbeating", 20),
            failed("e", "handler", "CUDA out of memory (tried 1024 MiB)", 10),
        ];
        let groups = group(&tasks);
        assert_eq!(groups.len(), 3);
        let oom = &groups[0];
        assert_eq!(oom.reason, "CUDA out of memory (tried # MiB)");
        assert_eq!((oom.count(), oom.first_ms, oom.last_ms), (3, 10, 50));
        assert_eq!(oom.example, "a");
        assert_eq!(oom.ids, vec!["a", "c", "e"]);
        // Equal sizes: the newest failure first.
        assert_eq!(groups[1].reason, "upstream #");
        assert_eq!(groups[2].kind, "worker_lost");
        assert_eq!(groups[2].reason, "worker gpu-# stopped heartbeating");
    }

    #[test]
    fn long_reasons_are_cut_and_still_group() {
        let long = "x".repeat(1000);
        let groups = group(&[
            failed("a", "handler", &format!("{long}1"), 2),
            failed("b", "handler", &format!("{long}2"), 1),
        ]);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].reason.chars().count(), REASON_CHARS);
    }
}
