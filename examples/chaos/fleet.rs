//! The worker fleet: real `rtq-worker` processes under fixed worker ids,
//! and the faults done to them (kill -9, SIGSTOP/SIGCONT, SIGTERM, restart
//! under the same id, start under a new id).
//!
//! Every process is owned by a [`WorkerProc`], which kills and reaps it when
//! dropped, so no exit path (an error, a panic unwinding, Ctrl-C) leaves a
//! worker running; [`sweep_strays`] is the last line of defence and finds any
//! `rtq-worker` started with this run's tag that is still alive.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How a worker process is started: everything but its id and slots is
/// shared by the fleet.
#[derive(Clone, Debug)]
pub struct Launch {
    /// The `rtq-worker` binary.
    pub bin: PathBuf,
    /// Redis URL handed to the workers.
    pub redis_url: String,
    /// Queue they serve.
    pub queue: String,
    /// Their lease (ms); short, so that lost workers are noticed quickly.
    pub lease_ms: u64,
    /// Seconds a SIGTERMed worker may drain before it hands tasks back.
    pub grace_secs: u64,
    /// Log filter of the workers (`RTQ_LOG`).
    pub log_filter: String,
    /// Directory for one log file per worker id.
    pub log_dir: PathBuf,
    /// Tag put on every worker's command line (`--label chaos_run=<tag>`),
    /// so strays of this run can be found by [`sweep_strays`].
    pub run_tag: String,
}

/// What a worker id runs with. Fixed for the id, so a restart under the
/// same id has the same capacity (the `w:` hash's `slots` never changes
/// under the capacity sampler's feet).
#[derive(Clone, Debug)]
pub struct Profile {
    /// Worker id (`--worker-id`).
    pub id: String,
    /// Slots (`--concurrency`), 1-4.
    pub slots: u32,
    /// Mock latency before the first token (ms).
    pub latency_ms: u64,
    /// Mock tokens per second.
    pub tokens_per_sec: u64,
}

/// A running `rtq-worker` process; killed (SIGKILL, which also ends a
/// stopped process) and reaped on drop.
pub struct WorkerProc {
    child: Child,
}

impl WorkerProc {
    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    fn signal(&self, sig: Signal) -> Result<()> {
        kill(self.pid(), sig).with_context(|| format!("sending {sig} to pid {}", self.pid()))
    }

    /// The exit status if the process has ended (it is reaped then).
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Where a worker id stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Its process runs normally.
    Up,
    /// SIGSTOPped; SIGCONT is due at the instant.
    Stopped(Instant),
    /// SIGTERMed at the instant; draining until it exits.
    Draining(Instant),
    /// No process (never started, killed, drained, or exited on its own).
    Down,
}

/// One worker id and its current process.
pub struct Member {
    /// The id's fixed settings.
    pub profile: Profile,
    /// Its phase.
    pub phase: Phase,
    /// Its process while it has one.
    proc: Option<WorkerProc>,
    /// Processes started under this id so far.
    pub starts: u32,
}

/// A process that ended without being killed by the run.
#[derive(Debug)]
pub struct Exit {
    /// Worker id.
    pub id: String,
    /// Its exit status.
    pub status: ExitStatus,
    /// True if it was draining (SIGTERM) and has now finished.
    pub drained: bool,
    /// How long the drain took.
    pub drain_time: Option<Duration>,
}

/// Every worker id of the run, with their processes.
pub struct Fleet {
    launch: Launch,
    /// Every id ever used, in order of creation.
    pub members: Vec<Member>,
}

impl Fleet {
    /// An empty fleet.
    pub fn new(launch: Launch) -> Self {
        Self {
            launch,
            members: Vec::new(),
        }
    }

    /// The worker lease (ms).
    pub fn lease_ms(&self) -> u64 {
        self.launch.lease_ms
    }

    /// Adds a worker id (not started).
    pub fn add(&mut self, profile: Profile) -> usize {
        self.members.push(Member {
            profile,
            phase: Phase::Down,
            proc: None,
            starts: 0,
        });
        self.members.len() - 1
    }

    /// Ids and slots of every member (for the capacity sampler).
    pub fn profiles(&self) -> Vec<Profile> {
        self.members.iter().map(|m| m.profile.clone()).collect()
    }

    /// Indexes of members in `phase` (compared by kind).
    pub fn in_phase(&self, want: fn(&Phase) -> bool) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| want(&self.members[i].phase))
            .collect()
    }

    /// Members whose process runs normally.
    pub fn up(&self) -> Vec<usize> {
        self.in_phase(|p| matches!(p, Phase::Up))
    }

    /// Members without a process.
    pub fn down(&self) -> Vec<usize> {
        self.in_phase(|p| matches!(p, Phase::Down))
    }

    /// Members with a process (up, stopped or draining).
    pub fn alive(&self) -> usize {
        self.members.iter().filter(|m| m.proc.is_some()).count()
    }

    /// Starts a process for member `i` under its id.
    ///
    /// # Errors
    /// If the binary cannot be started or its log file opened.
    pub fn start(&mut self, i: usize) -> Result<()> {
        let launch = &self.launch;
        let member = &mut self.members[i];
        let p = &member.profile;
        let log = log_file(&launch.log_dir, &p.id)?;
        let mut cmd = Command::new(&launch.bin);
        // Only what the run sets: an RTQ_* variable of the caller's shell
        // (a health URL, a mock error rate) would change what is tested.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("RTQ_") {
                cmd.env_remove(name);
            }
        }
        let child = cmd
            .arg("--worker-id")
            .arg(&p.id)
            .arg("--queue")
            .arg(&launch.queue)
            .arg("--handler")
            .arg("mock")
            .arg("--concurrency")
            .arg(p.slots.to_string())
            .arg("--mock-latency-ms")
            .arg(p.latency_ms.to_string())
            .arg("--mock-tokens-per-sec")
            .arg(p.tokens_per_sec.to_string())
            .arg("--lease-ms")
            .arg(launch.lease_ms.to_string())
            .arg("--grace-secs")
            .arg(launch.grace_secs.to_string())
            .arg("--probe-addr")
            .arg("off")
            .arg("--label")
            .arg(format!("chaos_run={}", launch.run_tag))
            // The URL may hold a password: environment, not argv.
            .env("RTQ_REDIS_URL", &launch.redis_url)
            .env("RTQ_LOG", &launch.log_filter)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", launch.bin.display()))?;
        member.proc = Some(WorkerProc { child });
        member.phase = Phase::Up;
        member.starts += 1;
        Ok(())
    }

    /// kill -9 of member `i`; returns once the process is reaped.
    pub fn kill9(&mut self, i: usize) {
        let member = &mut self.members[i];
        // Dropping the guard sends SIGKILL and reaps.
        drop(member.proc.take());
        member.phase = Phase::Down;
    }

    /// SIGSTOP of member `i` until `until` (see [`Fleet::resume_due`]).
    ///
    /// # Errors
    /// If the signal cannot be sent.
    pub fn stop(&mut self, i: usize, until: Instant) -> Result<()> {
        let member = &mut self.members[i];
        if let Some(p) = &member.proc {
            p.signal(Signal::SIGSTOP)?;
            member.phase = Phase::Stopped(until);
        }
        Ok(())
    }

    /// SIGCONT of every stopped member whose time has come (all of them
    /// with `all`); returns their indexes.
    ///
    /// # Errors
    /// If a signal cannot be sent.
    pub fn resume_due(&mut self, now: Instant, all: bool) -> Result<Vec<usize>> {
        let mut resumed = Vec::new();
        for (i, member) in self.members.iter_mut().enumerate() {
            if let Phase::Stopped(until) = member.phase {
                if all || until <= now {
                    if let Some(p) = &member.proc {
                        p.signal(Signal::SIGCONT)?;
                    }
                    member.phase = Phase::Up;
                    resumed.push(i);
                }
            }
        }
        Ok(resumed)
    }

    /// SIGTERM of member `i`: it drains (grace `--grace-secs`) and exits.
    ///
    /// # Errors
    /// If the signal cannot be sent.
    pub fn term(&mut self, i: usize) -> Result<()> {
        let member = &mut self.members[i];
        if let Some(p) = &member.proc {
            p.signal(Signal::SIGTERM)?;
            member.phase = Phase::Draining(Instant::now());
        }
        Ok(())
    }

    /// Reaps processes that ended by themselves (drained, or crashed).
    pub fn reap_exits(&mut self) -> Vec<Exit> {
        let mut exits = Vec::new();
        for member in &mut self.members {
            let Some(status) = member.proc.as_mut().and_then(WorkerProc::exited) else {
                continue;
            };
            let since = match member.phase {
                Phase::Draining(since) => Some(since),
                _ => None,
            };
            exits.push(Exit {
                id: member.profile.id.clone(),
                status,
                drained: since.is_some(),
                drain_time: since.map(|s| s.elapsed()),
            });
            member.proc = None;
            member.phase = Phase::Down;
        }
        exits
    }

    /// Kills and reaps every process of the fleet.
    pub fn kill_all(&mut self) {
        for member in &mut self.members {
            drop(member.proc.take());
            member.phase = Phase::Down;
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn log_file(dir: &Path, id: &str) -> Result<File> {
    let path = dir.join(format!("{id}.log"));
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Kills (SIGKILL) every process whose command line names `rtq-worker` and
/// carries this run's tag, in case one escaped its guard; returns how many
/// it found. Linux only (`/proc`); elsewhere it finds none.
pub fn sweep_strays(run_tag: &str) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let tag = format!("chaos_run={run_tag}");
    let mut found = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_worker = args
            .first()
            .is_some_and(|a| String::from_utf8_lossy(a).ends_with("rtq-worker"));
        if is_worker && args.contains(&tag.as_bytes()) {
            tracing::warn!(pid, "a worker of this run outlived its guard; killing it");
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            found += 1;
        }
    }
    found
}
