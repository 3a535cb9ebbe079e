//! Runs the test command against one mutant: a private copy of the Lua
//! directory with the one change applied, passed as `RTQ_LUA_DIR`, under a
//! timeout. Each run is its own process group, so a timeout (or Ctrl-C)
//! kills the whole tree, redis-servers included.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::mutants::Mutant;

/// The environment variable that points the code under test at the mutated
/// Lua directory (read by rtq-core built with `lua-dir-override`).
pub const LUA_DIR_ENV: &str = "RTQ_LUA_DIR";

/// How often a running command is polled for exit.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// What the test command did with a mutant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The command failed: the tests caught the mutant.
    Killed,
    /// The command passed: no test noticed the change.
    Survived,
    /// The command ran past the timeout and was killed (counts as caught,
    /// reported apart: a mutant that hangs is usually an infinite loop).
    Timeout,
}

impl Outcome {
    /// Fixed-width label for progress lines and reports.
    pub fn label(self) -> &'static str {
        match self {
            Self::Killed => "killed",
            Self::Survived => "SURVIVED",
            Self::Timeout => "timeout",
        }
    }
}

/// What every run shares.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// The unmutated Lua directory, copied for each mutant.
    pub lua_dir: PathBuf,
    /// Shell command run with `RTQ_LUA_DIR` set; exit 0 means the mutant
    /// survived.
    pub command: String,
    /// Longest a run may take before it is killed and counted as a timeout.
    pub timeout: Duration,
    /// Where each run's output goes (`<id>.log`).
    pub log_dir: PathBuf,
}

/// Process groups of the commands running right now, so that an interrupt
/// can end them all.
static RUNNING_GROUPS: Mutex<Option<HashSet<u32>>> = Mutex::new(None);

/// Runs the command against `mutant` (or, with `None`, against the
/// unmutated copy: the baseline) and reports what happened.
///
/// # Errors
/// I/O errors setting up the copy or starting the command.
pub fn run(
    settings: &RunSettings,
    mutant: Option<&Mutant>,
    original_source: Option<&str>,
) -> io::Result<(Outcome, Duration)> {
    let name = mutant.map_or_else(|| "baseline".to_string(), |m| m.id.to_string());
    let work_dir = std::env::temp_dir().join(format!("{}{name}", work_dir_prefix()));
    let _cleanup = RemoveOnDrop(work_dir.clone());
    copy_dir(&settings.lua_dir, &work_dir)?;
    if let (Some(mutant), Some(source)) = (mutant, original_source) {
        fs::write(work_dir.join(&mutant.file), mutant.apply(source))?;
    }

    let log = File::create(settings.log_dir.join(format!("{name}.log")))?;
    let started = Instant::now();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(&settings.command)
        .env(LUA_DIR_ENV, &work_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()?;
    let group = child.id();
    running_groups(|groups| groups.insert(group));

    let outcome = loop {
        if let Some(status) = child.try_wait()? {
            break if status.success() {
                Outcome::Survived
            } else {
                Outcome::Killed
            };
        }
        if started.elapsed() > settings.timeout {
            kill_group(group);
            child.wait()?;
            break Outcome::Timeout;
        }
        thread::sleep(POLL_INTERVAL);
    };
    // Whatever the command left behind (a server a failed test did not
    // stop) goes with it.
    kill_group(group);
    running_groups(|groups| groups.remove(&group));
    Ok((outcome, started.elapsed()))
}

/// Kills every command still running and removes their copies; for an
/// interrupt, which skips the usual clean-up.
pub fn kill_running() {
    let groups: Vec<u32> = running_groups(|groups| groups.drain().collect());
    for group in groups {
        kill_group(group);
    }
    let prefix = work_dir_prefix();
    for entry in fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Name prefix of this process's private copies in the temp dir.
fn work_dir_prefix() -> String {
    format!("rtq-mutate-{}-", std::process::id())
}

fn running_groups<T>(f: impl FnOnce(&mut HashSet<u32>) -> T) -> T {
    let mut guard = RUNNING_GROUPS
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    f(guard.get_or_insert_with(HashSet::new))
}

/// Sends SIGKILL to process group `group` (through kill(1): std has no
/// signal API and the crate allows no unsafe). Best effort: the group may
/// already be gone.
fn kill_group(group: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{group}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Copies directory `from` into a new directory `to`, recursively.
fn copy_dir(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Removes a mutant's private directory when its run ends, however it ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
