//! Processes the exec child leaves outside its process group.
//!
//! The group's SIGTERM/SIGKILL reaches every process that stayed in the
//! group, but a process that called `setsid` (a daemonising helper, a
//! detached server) is in a session and group of its own. When its parent
//! dies such an orphan would go to init and outlive the worker, GPU memory
//! and all. The worker process is made a *child subreaper*
//! (`PR_SET_CHILD_SUBREAPER`, Linux 3.4+), so the orphans of its
//! descendants are re-parented to it instead; once the child's group is
//! gone, [`stop_adopted`] stops and reaps them.
//!
//! Not covered: an orphan whose parent is still alive (it is not adopted
//! until that parent dies), and a process that re-parents itself outside
//! the worker's tree some other way. The worker runs no other child
//! processes, so every process it adopted came from the exec child.

use std::collections::HashSet;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use tokio::time::Instant;

/// How often adopted processes are checked while they stop.
const POLL: Duration = Duration::from_millis(20);
/// How long adopted processes have after SIGKILL to be gone.
const KILL_PATIENCE: Duration = Duration::from_secs(2);

/// Makes this process a child subreaper (see the module docs); logs if the
/// kernel refuses.
pub(super) fn become_subreaper() {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(error = %e, "cannot become a child subreaper: processes the exec child detaches with setsid may outlive it");
    }
}

/// The processes whose parent is this process, with their state letter.
fn children() -> Vec<(Pid, char)> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let (state, ppid) = state_and_parent(&stat)?;
            (ppid == me).then_some((Pid::from_raw(pid), state))
        })
        .collect()
}

/// The state letter and parent pid of a `/proc/<pid>/stat` line.
fn state_and_parent(stat: &str) -> Option<(char, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Stops every process this one adopted: SIGTERM when first seen, SIGKILL
/// to what is left after `grace`, and reaps them (as their children are
/// adopted in turn, they are stopped too). Call it only when the exec
/// child itself has been reaped: every child left is an orphan.
pub(super) async fn stop_adopted(grace: Duration) {
    let started = Instant::now();
    let mut signalled = HashSet::new();
    let mut killed = false;
    loop {
        let mut live = Vec::new();
        for (pid, state) in children() {
            if matches!(state, 'Z' | 'X') {
                let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
            } else {
                live.push(pid);
            }
        }
        if live.is_empty() {
            return;
        }
        for pid in &live {
            if signalled.insert(*pid) {
                tracing::warn!(%pid, "a process the exec child left outside its process group is still running; stopping it");
                let _ = kill(*pid, Signal::SIGTERM);
            }
        }
        let elapsed = started.elapsed();
        if elapsed >= grace {
            for pid in &live {
                let _ = kill(*pid, Signal::SIGKILL);
            }
            if !killed {
                killed = true;
                tracing::warn!(
                    count = live.len(),
                    "processes left by the exec child outlived SIGTERM; sending SIGKILL"
                );
            }
        }
        if elapsed >= grace + KILL_PATIENCE {
            tracing::error!(
                count = live.len(),
                "processes left by the exec child survived SIGKILL"
            );
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_lines_give_state_and_parent() {
        assert_eq!(
            state_and_parent("4242 (python3) S 1 4240 4240 0 -1"),
            Some(('S', 1))
        );
        assert_eq!(
            state_and_parent("77 (odd) name (x)) Z 70 70 70 0"),
            Some(('Z', 70))
        );
        assert_eq!(state_and_parent("garbage"), None);
    }
}
