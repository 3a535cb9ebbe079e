//! The row filter: words separated by spaces, all of which must match.
//! A plain word matches anywhere in the row (case-insensitive substring);
//! `err:TEXT` the error kind or message (of the ending, or of an earlier
//! attempt), `worker:TEXT` the worker id, `label:KEY=TEXT` a label (the
//! value contains TEXT; `label:KEY` only asks for the key), `state:TEXT`
//! the state. A qualified word that a list has no such field for (a
//! queue has no worker) matches nothing there.

use std::collections::BTreeMap;

use rtq_core::protocol::Outcome;
use rtq_core::TaskInfo;

/// One word of the filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Term {
    /// Anywhere in the row.
    Text(String),
    /// In the error kind or message.
    Err(String),
    /// In the worker id.
    Worker(String),
    /// A label: key, and text its value contains (`None`: any value).
    Label(String, Option<String>),
    /// In the state.
    State(String),
}

/// A parsed filter (lower-cased).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Every word must match.
    pub terms: Vec<Term>,
}

/// What a row offers to the filter.
#[derive(Clone, Debug, Default)]
pub struct Fields<'a> {
    /// All of the row's text, for plain words.
    pub text: String,
    /// Error kind and message(s), if the row has errors.
    pub errors: Option<Vec<&'a str>>,
    /// Worker id, if the row has one.
    pub worker: Option<&'a str>,
    /// Labels, if the row has them.
    pub labels: Option<&'a BTreeMap<String, String>>,
    /// State, if the row has one.
    pub state: Option<String>,
}

impl Filter {
    /// Parses the filter text.
    pub fn parse(text: &str) -> Self {
        let terms = text
            .split_whitespace()
            .map(|w| {
                let w = w.to_lowercase();
                let (prefix, rest) = w.split_once(':').unwrap_or(("", ""));
                match prefix {
                    "err" | "error" if !rest.is_empty() => Term::Err(rest.into()),
                    "worker" | "w" if !rest.is_empty() => Term::Worker(rest.into()),
                    "state" | "st" if !rest.is_empty() => Term::State(rest.into()),
                    "label" | "l" if !rest.is_empty() => match rest.split_once('=') {
                        Some((k, v)) => Term::Label(k.into(), Some(v.into())),
                        None => Term::Label(rest.into(), None),
                    },
                    _ => Term::Text(w),
                }
            })
            .collect();
        Self { terms }
    }

    /// True without words.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Whether the row passes every word.
    pub fn matches(&self, row: &Fields) -> bool {
        let has = |hay: &str, needle: &str| hay.to_lowercase().contains(needle);
        self.terms.iter().all(|t| match t {
            Term::Text(w) => has(&row.text, w),
            Term::Err(w) => row
                .errors
                .as_ref()
                .is_some_and(|errs| errs.iter().any(|e| has(e, w))),
            Term::Worker(w) => row.worker.is_some_and(|id| has(id, w)),
            Term::State(w) => row.state.as_ref().is_some_and(|s| has(s, w)),
            Term::Label(k, v) => row.labels.is_some_and(|labels| {
                labels.iter().any(|(lk, lv)| {
                    lk.to_lowercase() == *k && v.as_ref().is_none_or(|v| has(lv, v))
                })
            }),
        })
    }

    /// Whether a task passes.
    pub fn matches_task(&self, t: &TaskInfo) -> bool {
        if self.is_empty() {
            return true;
        }
        let mut errors: Vec<&str> = t.attempt_errors.values().map(String::as_str).collect();
        if let Some(Outcome::Ended { kind, message, .. }) = &t.outcome {
            errors.push(kind);
            errors.push(message);
        }
        let labels = t.spec.as_ref().map(|s| &s.labels);
        let label_text = labels
            .map(|l| {
                l.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        self.matches(&Fields {
            text: format!(
                "{} {} {} {label_text} {}",
                t.id,
                t.state,
                t.worker,
                errors.join(" ")
            ),
            errors: Some(errors),
            worker: Some(&t.worker),
            labels,
            state: Some(t.state.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualified_words_match_their_field_only_and_all_words_must_match() {
        let f = Filter::parse("err:timeout Worker:GPU-3 label:model=llama");
        assert_eq!(
            f.terms,
            vec![
                Term::Err("timeout".into()),
                Term::Worker("gpu-3".into()),
                Term::Label("model".into(), Some("llama".into())),
            ]
        );
        let labels: BTreeMap<String, String> =
            [("model".to_string(), "Llama-3-8B".to_string())].into();
        let row = |err: &'static str, worker: &'static str| Fields {
            text: format!("t1 failed {worker} {err}"),
            errors: Some(vec![err]),
            worker: Some(worker),
            labels: Some(&labels),
            state: Some("failed".into()),
        };
        assert!(f.matches(&row("deadline: Timeout after 30s", "gpu-3")));
        assert!(!f.matches(&row("CUDA out of memory", "gpu-3")));
        assert!(!f.matches(&row("timeout", "gpu-4")));
        // "timeout" in the worker id is not an error.
        assert!(!Filter::parse("err:timeout").matches(&row("oom", "timeout-box")));
        // A plain word matches anywhere; an empty filter everything.
        assert!(Filter::parse("GPU-3 memory").matches(&row("CUDA out of memory", "gpu-3")));
        assert!(Filter::parse("").matches(&Fields::default()));
        // A row without the field (a queue has no worker) does not match.
        assert!(!Filter::parse("worker:gpu").matches(&Fields {
            text: "gpu".into(),
            ..Fields::default()
        }));
        // label:KEY asks for the key only; "err:" alone is a plain word.
        assert!(Filter::parse("label:model").matches(&row("", "w")));
        assert!(!Filter::parse("label:tenant").matches(&row("", "w")));
        assert_eq!(Filter::parse("err:").terms, vec![Term::Text("err:".into())]);
    }
}
