//! Key bindings: one table drives both key dispatch and the help screen,
//! so the help can never disagree with the keys.

use crossterm::event::KeyCode;

/// What a key asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmd {
    /// Move the selection up.
    Up,
    /// Move the selection down.
    Down,
    /// Jump to the first row.
    Top,
    /// Jump to the last row.
    Bottom,
    /// One page up.
    PageUp,
    /// One page down.
    PageDown,
    /// Next view.
    NextView,
    /// Queues view.
    Queues,
    /// Nodes view.
    Nodes,
    /// Tasks view.
    Tasks,
    /// Cycle the task list (pending, in flight, finished).
    NextTab,
    /// Edit the filter.
    Filter,
    /// Sort the list by the next column.
    SortNext,
    /// Reverse the sort order.
    SortReverse,
    /// Open a task by id, wherever it is in the queue.
    GoTo,
    /// Open the selection (queue -> tasks, task -> detail).
    Open,
    /// Back / close.
    Back,
    /// Toggle help.
    Help,
    /// Quit.
    Quit,
    /// Mark or unmark the selected task.
    Mark,
    /// Requeue the marked (or selected) tasks.
    Requeue,
    /// Cancel the marked (or selected) tasks.
    Cancel,
    /// Delete the marked (or selected) ended tasks, or a failure group.
    Delete,
    /// Mark every task of the list that passes the filter (the whole
    /// list, not only the page), or every row shown without a filter.
    MarkAll,
    /// Clear every mark.
    ClearMarks,
    /// Raise priority by one.
    PriorityUp,
    /// Lower priority by one.
    PriorityDown,
    /// Pause or resume the selected queue.
    PauseResume,
    /// Set the selected queue's max depth.
    MaxDepth,
    /// Purge the selected queue.
    Purge,
}

/// One binding.
pub struct Binding {
    /// Keys that trigger it.
    pub keys: &'static [KeyCode],
    /// How the keys are shown.
    pub label: &'static str,
    /// What it does.
    pub help: &'static str,
    /// The command.
    pub cmd: Cmd,
    /// True for actions that change queues (disabled by --read-only).
    pub mutates: bool,
}

const fn b(
    keys: &'static [KeyCode],
    label: &'static str,
    help: &'static str,
    cmd: Cmd,
    mutates: bool,
) -> Binding {
    Binding {
        keys,
        label,
        help,
        cmd,
        mutates,
    }
}

/// Every binding, in help order.
pub const KEYMAP: &[Binding] = &[
    b(
        &[KeyCode::Up, KeyCode::Char('k')],
        "↑/k",
        "move up",
        Cmd::Up,
        false,
    ),
    b(
        &[KeyCode::Down, KeyCode::Char('j')],
        "↓/j",
        "move down",
        Cmd::Down,
        false,
    ),
    b(
        &[KeyCode::Char('g'), KeyCode::Home],
        "g",
        "first row",
        Cmd::Top,
        false,
    ),
    b(
        &[KeyCode::Char('G'), KeyCode::End],
        "G",
        "last row",
        Cmd::Bottom,
        false,
    ),
    b(&[KeyCode::PageUp], "PgUp", "page up", Cmd::PageUp, false),
    b(
        &[KeyCode::PageDown],
        "PgDn",
        "page down",
        Cmd::PageDown,
        false,
    ),
    b(&[KeyCode::Tab], "Tab", "next view", Cmd::NextView, false),
    b(
        &[KeyCode::Char('1')],
        "1",
        "queues view",
        Cmd::Queues,
        false,
    ),
    b(&[KeyCode::Char('2')], "2", "nodes view", Cmd::Nodes, false),
    b(&[KeyCode::Char('3')], "3", "tasks view", Cmd::Tasks, false),
    b(
        &[KeyCode::Char('t')],
        "t",
        "tasks: pending / in flight / finished",
        Cmd::NextTab,
        false,
    ),
    b(
        &[KeyCode::Char('/')],
        "/",
        "filter: words, err:TEXT worker:ID label:K=V state:S",
        Cmd::Filter,
        false,
    ),
    b(
        &[KeyCode::Char('s')],
        "s",
        "sort by the next column (shown in the title)",
        Cmd::SortNext,
        false,
    ),
    b(
        &[KeyCode::Char('S')],
        "S",
        "reverse the sort order",
        Cmd::SortReverse,
        false,
    ),
    b(
        &[KeyCode::Char('i')],
        "i",
        "open a task by id (anywhere in the queue)",
        Cmd::GoTo,
        false,
    ),
    b(
        &[KeyCode::Enter],
        "Enter",
        "open (queue -> tasks, task -> detail)",
        Cmd::Open,
        false,
    ),
    b(&[KeyCode::Esc], "Esc", "back", Cmd::Back, false),
    b(&[KeyCode::Char('?')], "?", "this help", Cmd::Help, false),
    b(&[KeyCode::Char('q')], "q", "quit", Cmd::Quit, false),
    b(
        &[KeyCode::Char(' ')],
        "Space",
        "mark task",
        Cmd::Mark,
        false,
    ),
    b(
        &[KeyCode::Char('A')],
        "A",
        "mark every task matching the filter (whole list), or all shown",
        Cmd::MarkAll,
        false,
    ),
    b(
        &[KeyCode::Char('U')],
        "U",
        "clear all marks",
        Cmd::ClearMarks,
        false,
    ),
    b(
        &[KeyCode::Char('r')],
        "r",
        "retry (requeue) marked/selected task(s) or the failure group",
        Cmd::Requeue,
        true,
    ),
    b(
        &[KeyCode::Char('c')],
        "c",
        "cancel marked/selected task(s)",
        Cmd::Cancel,
        true,
    ),
    b(
        &[KeyCode::Char('d')],
        "d",
        "delete marked/selected ended task(s) or the failure group",
        Cmd::Delete,
        true,
    ),
    b(
        &[KeyCode::Char('+')],
        "+",
        "raise priority",
        Cmd::PriorityUp,
        true,
    ),
    b(
        &[KeyCode::Char('-')],
        "-",
        "lower priority",
        Cmd::PriorityDown,
        true,
    ),
    b(
        &[KeyCode::Char('p')],
        "p",
        "pause / resume queue",
        Cmd::PauseResume,
        true,
    ),
    b(
        &[KeyCode::Char('m')],
        "m",
        "set queue max depth",
        Cmd::MaxDepth,
        true,
    ),
    b(
        &[KeyCode::Char('X')],
        "X",
        "purge queue (asks for its name)",
        Cmd::Purge,
        true,
    ),
];

/// The binding for a key, if any.
pub fn lookup(code: KeyCode) -> Option<&'static Binding> {
    KEYMAP.iter().find(|b| b.keys.contains(&code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_key_is_bound_twice() {
        let mut seen = Vec::new();
        for b in KEYMAP {
            for k in b.keys {
                assert!(!seen.contains(k), "{k:?} bound twice");
                seen.push(*k);
            }
        }
        assert_eq!(lookup(KeyCode::Char('j')).unwrap().cmd, Cmd::Down);
        assert!(lookup(KeyCode::Char('Z')).is_none());
    }
}
