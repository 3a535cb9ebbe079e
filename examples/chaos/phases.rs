//! The phases of a chaos run: start the fleet and the load, inject faults
//! for the chaos window, settle (every task gets its outcome, capacity comes
//! back), verify and print the summary.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use rtq_core::keys::QueueKeys;
use rtq_core::{redact_url, Client};
use tokio_util::sync::CancellationToken;

use super::fleet::{self, Fleet, Launch, Phase, Profile};
use super::load::{self, Ledger, LoadSettings};
use super::observe::{self, Observations};
use super::report::{self, Faults, Setup};
use super::{observe_stream, verify, verify_stream};
use super::{worker_bin, Args, Restart, Rng, Target, STREAM_BANDS};

/// A connection for the observer and the checks, with short timeouts so a
/// Redis restart never hangs them.
async fn raw_connection(url: &str) -> Result<ConnectionManager> {
    let client = redis::Client::open(url).context("parsing the Redis URL")?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_with_config(client, config)
        .await
        .with_context(|| format!("connecting to {}", redact_url(url)))
}

/// Everything the phases share.
struct Run {
    args: Args,
    rng: Rng,
    fleet: Fleet,
    profiles: Arc<Mutex<Vec<Profile>>>,
    obs: observe::SharedObs,
    faults: Faults,
    fleet_problems: Vec<String>,
    redis: Option<Restart>,
    conn: ConnectionManager,
    keys: QueueKeys,
    started: Instant,
    rng_seed: u64,
    redis_label: String,
    /// The Redis URL (for the stream ending audit's subscription).
    url: String,
    /// Cancelled by Ctrl-C: every phase stops and the fleet is killed.
    interrupted: CancellationToken,
}

pub(super) async fn run(args: Args, seed: u64, target: Target) -> Result<bool> {
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let tag = format!("{:x}{:x}", seed & 0xffff_ffff, std::process::id());
    let queue_name = format!("chaos-{tag}");
    let log_dir = args
        .log_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("rtq-chaos-{tag}")));
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let bin = worker_bin(&args)?;
    let Target {
        url,
        label: redis_label,
        restart: redis,
    } = target;
    println!(
        "chaos: queue {queue_name}, {redis_label}, worker {}, logs in {}",
        bin.display(),
        log_dir.display()
    );
    let client = Client::connect(&url)
        .await
        .with_context(|| format!("connecting to {}", redact_url(&url)))?;
    let queue = client.queue(&queue_name)?;
    if args.stream_queue {
        // Before any worker starts: they read the mode once, at start.
        queue
            .create_stream(STREAM_BANDS, 0)
            .await
            .context("making the chaos queue a stream queue")?;
        println!("chaos: {queue_name} is a stream queue with {STREAM_BANDS} bands");
    }
    let keys = queue.keys().clone();
    let conn = raw_connection(&url).await?;
    let mut fleet = Fleet::new(Launch {
        bin,
        redis_url: url.clone(),
        queue: queue_name.clone(),
        lease_ms: args.lease_ms,
        grace_secs: 1,
        log_filter: args.worker_log.clone(),
        log_dir: log_dir.clone(),
        run_tag: tag.clone(),
    });
    for i in 0..args.workers {
        fleet.add(profile(&mut rng, i));
    }
    let mut state = Run {
        profiles: Arc::new(Mutex::new(fleet.profiles())),
        fleet,
        rng: rng.fork(),
        obs: Arc::new(Mutex::new(Observations::default())),
        faults: Faults::default(),
        fleet_problems: Vec::new(),
        redis,
        conn,
        keys,
        started,
        rng_seed: seed,
        redis_label,
        url: url.clone(),
        interrupted: CancellationToken::new(),
        args,
    };
    let interrupted = state.interrupted.clone();
    let ctrl_c = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            interrupted.cancel();
        }
    });
    let outcome = state.phases(queue, &tag).await;
    ctrl_c.abort();
    // Every exit path: processes killed and reaped, strays swept.
    state.fleet.kill_all();
    let strays = fleet::sweep_strays(&tag);
    let passed = match outcome {
        Ok(summary) => {
            let (text, mut passed) = summary;
            print!("{text}");
            if strays > 0 {
                println!("FAIL no rtq-worker of this run survives: {strays} found by the sweep");
                passed = false;
            }
            passed
        }
        Err(e) => return Err(e),
    };
    drop(client);
    if passed && !state.args.keep_logs && state.args.log_dir.is_none() {
        let _ = std::fs::remove_dir_all(&log_dir);
    } else {
        println!("chaos: worker logs kept in {}", log_dir.display());
    }
    println!(
        "chaos: {} (seed {seed})",
        if passed { "PASSED" } else { "FAILED" }
    );
    Ok(passed)
}

/// A worker id's fixed settings: 1-4 slots, mock pacing so a task of 2-44
/// tokens takes about 50-500 ms.
fn profile(rng: &mut Rng, i: usize) -> Profile {
    Profile {
        id: format!("w{i}"),
        slots: 1 + rng.below(4) as u32,
        latency_ms: 30 + rng.below(31),
        tokens_per_sec: 90 + rng.below(21),
    }
}

/// Which fault comes next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Kill,
    Stop,
    Term,
    RestartSame,
    StartNew,
}

impl Run {
    /// Start, chaos, settle, verify; returns the summary and whether every
    /// check passed.
    async fn phases(&mut self, queue: rtq_core::Queue, tag: &str) -> Result<(String, bool)> {
        for i in 0..self.fleet.members.len() {
            self.fleet.start(i)?;
        }
        self.wait_registered(self.args.workers).await?;
        let stop_observer = CancellationToken::new();
        let observer = if self.args.stream_queue {
            tokio::spawn(observe_stream::observe(
                self.conn.clone(),
                self.keys.clone(),
                STREAM_BANDS,
                Arc::clone(&self.profiles),
                Arc::clone(&self.obs),
                self.started,
                stop_observer.clone(),
            ))
        } else {
            tokio::spawn(observe::observe(
                self.conn.clone(),
                self.keys.clone(),
                Arc::clone(&self.profiles),
                Arc::clone(&self.obs),
                self.started,
                stop_observer.clone(),
            ))
        };
        // The ending audit of a stream queue sets notify-keyspace-events:
        // only on the private Redis, never on a given one.
        let audit = if self.args.stream_queue && self.args.redis.is_none() {
            Some(
                observe_stream::start_ending_audit(
                    &self.url,
                    &self.keys,
                    Arc::clone(&self.obs),
                    stop_observer.clone(),
                )
                .await
                .context("subscribing the ending audit")?,
            )
        } else {
            None
        };
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let stop_load = CancellationToken::new();
        let abandon = CancellationToken::new();
        let load = tokio::spawn(load::generate(
            queue,
            LoadSettings {
                rate: self.args.rate,
                max_in_flight: self.args.max_in_flight,
                id_prefix: format!("t{tag}"),
                stream_queue: self.args.stream_queue,
            },
            self.rng.fork(),
            Arc::clone(&ledger),
            stop_load.clone(),
            abandon.clone(),
        ));
        let chaos_started = Instant::now();
        let chaos = self.chaos().await;
        stop_load.cancel();
        let _ = load.await;
        tracing::info!(
            elapsed_s = chaos_started.elapsed().as_secs(),
            "chaos over; settling"
        );
        let settled = match chaos {
            Ok(()) => self.settle(&ledger).await,
            Err(e) => Err(e),
        };
        abandon.cancel();
        if self.args.stream_queue {
            // The endings of the last tasks may still be on their way
            // through the subscription.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        stop_observer.cancel();
        let _ = observer.await;
        if let Some(audit) = audit {
            let _ = audit.await;
        }
        settled?;
        if self.args.stream_queue {
            self.verify_stream(&ledger).await
        } else {
            self.verify(&ledger).await
        }
    }

    /// Fails once Ctrl-C was pressed (the fleet is killed on the way out).
    fn check_interrupt(&self) -> Result<()> {
        if self.interrupted.is_cancelled() {
            bail!("interrupted (Ctrl-C)");
        }
        Ok(())
    }

    /// Waits (bounded) until `n` workers are registered.
    async fn wait_registered(&mut self, n: usize) -> Result<()> {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            // A stream queue's live workers are in `lv`, not `workers`.
            let key = if self.args.stream_queue {
                rtq_core::functions::v3::live_key(&self.keys)
            } else {
                self.keys.workers()
            };
            let live: usize = redis::cmd("ZCARD")
                .arg(key)
                .query_async(&mut self.conn)
                .await
                .unwrap_or(0);
            if live >= n {
                return Ok(());
            }
            self.check_interrupt()?;
            self.check_exits();
            if Instant::now() > until {
                bail!("only {live} of {n} workers registered within 30 s (see their logs)");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Records workers that exited by themselves; a drain is expected to
    /// end with status 0 within the grace plus a margin.
    fn check_exits(&mut self) {
        for exit in self.fleet.reap_exits() {
            if exit.drained {
                let took = exit.drain_time.unwrap_or_default();
                self.faults.drains.push(took);
                tracing::info!(worker = %exit.id, took_ms = took.as_millis() as u64, status = %exit.status, "drained");
                if !exit.status.success() {
                    self.fleet_problems.push(format!(
                        "worker {} drained with {} after SIGTERM",
                        exit.id, exit.status
                    ));
                }
            } else {
                tracing::error!(worker = %exit.id, status = %exit.status, "worker exited by itself");
                self.fleet_problems.push(format!(
                    "worker {} exited by itself with {}",
                    exit.id, exit.status
                ));
            }
        }
        // A drain is bounded: grace (1 s) + cancel grace (1 s) + a margin.
        let hung: Vec<usize> = self.fleet.in_phase(
            |p| matches!(p, Phase::Draining(since) if since.elapsed() > Duration::from_secs(15)),
        );
        for i in hung {
            let id = self.fleet.members[i].profile.id.clone();
            self.fleet_problems
                .push(format!("worker {id} still draining 15 s after SIGTERM"));
            self.fleet.kill9(i);
        }
    }

    /// The chaos window: a fault at random intervals, SIGCONTs when due,
    /// Redis restarts evenly spaced.
    async fn chaos(&mut self) -> Result<()> {
        let window = Duration::from_secs(self.args.duration);
        let start = Instant::now();
        let restarts = u64::from(self.args.redis_restarts);
        let redis_due: Vec<Instant> = (1..=restarts)
            .map(|k| start + window.mul_f64(k as f64 / (restarts + 1) as f64))
            .collect();
        let mut redis_done = 0usize;
        let mut next = start + self.pause();
        while start.elapsed() < window {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(25)) => {}
                _ = self.interrupted.cancelled() => bail!("interrupted (Ctrl-C)"),
            }
            let now = Instant::now();
            for i in self.fleet.resume_due(now, false)? {
                tracing::info!(worker = %self.fleet.members[i].profile.id, "SIGCONT");
            }
            self.check_exits();
            if redis_due.get(redis_done).is_some_and(|due| *due <= now) {
                redis_done += 1;
                self.restart_redis().await?;
                next = Instant::now() + self.pause();
                continue;
            }
            if now >= next {
                self.inject()?;
                next = Instant::now() + self.pause();
            }
        }
        Ok(())
    }

    fn pause(&mut self) -> Duration {
        let (lo, hi) = (self.args.fault_min_ms, self.args.fault_max_ms);
        Duration::from_millis(lo + self.rng.below(hi - lo + 1))
    }

    /// Picks and does one fault. Destructive faults keep at least half the
    /// starting workers up; below that, workers are brought back first.
    fn inject(&mut self) -> Result<()> {
        let up = self.fleet.up();
        let down: Vec<usize> = self
            .fleet
            .down()
            .into_iter()
            .filter(|&i| self.fleet.members[i].starts > 0)
            .collect();
        let max_alive = self.args.max_workers.unwrap_or(self.args.workers + 2);
        let floor = self.args.workers.div_ceil(2).max(1);
        let mut choices: Vec<(Fault, u64)> = Vec::new();
        if up.len() > floor {
            choices.extend([(Fault::Kill, 4), (Fault::Stop, 2), (Fault::Term, 2)]);
        }
        if !down.is_empty() {
            choices.push((Fault::RestartSame, 3));
        }
        if self.fleet.alive() < max_alive {
            choices.push((Fault::StartNew, 1));
        }
        let total: u64 = choices.iter().map(|(_, w)| w).sum();
        if total == 0 {
            return Ok(());
        }
        let mut pick = self.rng.below(total);
        let fault = choices
            .iter()
            .find(|(_, w)| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .map(|(f, _)| *f)
            .unwrap_or(Fault::StartNew);
        let at = self.started.elapsed().as_secs_f64();
        match fault {
            Fault::Kill => {
                let i = up[self.rng.below(up.len() as u64) as usize];
                let id = self.fleet.members[i].profile.id.clone();
                self.fleet.kill9(i);
                self.obs.lock().unwrap().killed(&id);
                self.faults.kills += 1;
                tracing::info!(at, worker = %id, "kill -9");
            }
            Fault::Stop => {
                let i = up[self.rng.below(up.len() as u64) as usize];
                let lease = self.fleet.lease_ms();
                let hold = Duration::from_millis(lease + lease / 2 + self.rng.below(lease * 3 / 2));
                self.fleet.stop(i, Instant::now() + hold)?;
                self.faults.stops += 1;
                tracing::info!(at, worker = %self.fleet.members[i].profile.id, hold_ms = hold.as_millis() as u64, "SIGSTOP");
            }
            Fault::Term => {
                let i = up[self.rng.below(up.len() as u64) as usize];
                self.fleet.term(i)?;
                self.faults.terms += 1;
                tracing::info!(at, worker = %self.fleet.members[i].profile.id, "SIGTERM");
            }
            Fault::RestartSame => {
                let i = down[self.rng.below(down.len() as u64) as usize];
                let id = self.fleet.members[i].profile.id.clone();
                self.obs.lock().unwrap().restarting(&id);
                self.fleet.start(i)?;
                self.faults.restarts_same_id += 1;
                tracing::info!(at, worker = %id, "restart under the same id");
            }
            Fault::StartNew => {
                let n = self.fleet.members.len();
                let p = profile(&mut self.rng, n);
                let i = self.fleet.add(p);
                *self.profiles.lock().unwrap() = self.fleet.profiles();
                self.fleet.start(i)?;
                self.faults.new_ids += 1;
                tracing::info!(at, worker = %self.fleet.members[i].profile.id, slots = self.fleet.members[i].profile.slots, "start under a new id");
            }
        }
        Ok(())
    }

    /// kill -9 of the private Redis and a restart on the same port from its
    /// AOF (blocking until it answers).
    async fn restart_redis(&mut self) -> Result<()> {
        let Some(restart) = self.redis.clone() else {
            return Ok(());
        };
        tracing::info!(
            at = self.started.elapsed().as_secs_f64(),
            "Redis kill -9 and restart"
        );
        tokio::task::spawn_blocking(move || restart())
            .await
            .context("restarting redis-server")??;
        self.faults.redis_restarts += 1;
        Ok(())
    }

    /// After the chaos: resume stopped workers, let drains finish, bring at
    /// least `--workers` back up, and wait (bounded) for every outcome and
    /// for the workers' capacity to come back.
    async fn settle(&mut self, ledger: &load::SharedLedger) -> Result<()> {
        self.fleet.resume_due(Instant::now(), true)?;
        let until = Instant::now() + Duration::from_secs(self.args.settle_secs);
        while !self
            .fleet
            .in_phase(|p| matches!(p, Phase::Draining(_)))
            .is_empty()
        {
            self.check_interrupt()?;
            self.check_exits();
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let mut down = self.fleet.down();
        while self.fleet.up().len() < self.args.workers {
            let i = match down.pop() {
                Some(i) => i,
                None => {
                    let n = self.fleet.members.len();
                    let p = profile(&mut self.rng, n);
                    let i = self.fleet.add(p);
                    *self.profiles.lock().unwrap() = self.fleet.profiles();
                    i
                }
            };
            let id = self.fleet.members[i].profile.id.clone();
            self.obs.lock().unwrap().restarting(&id);
            self.fleet.start(i)?;
            tracing::info!(worker = %id, "started for the settle");
        }
        loop {
            self.check_interrupt()?;
            self.check_exits();
            let open = ledger.lock().unwrap().in_flight;
            if open == 0 {
                break;
            }
            if Instant::now() > until {
                tracing::error!(open, "settle bound reached with tasks still open");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Waits (bounded) until every worker with a process has all its slots
    /// free and owns nothing, and every worker without one owns nothing and
    /// offers nothing; returns those that did not get there.
    async fn capacity_at_rest(&mut self) -> Result<Vec<(String, i64, i64, i64)>> {
        let profiles = self.fleet.profiles();
        let lease = Duration::from_millis(self.args.lease_ms);
        let until = Instant::now() + Duration::from_secs(5) + lease * 5;
        loop {
            let snap = observe::capacity_snapshot(&mut self.conn, &self.keys, &profiles).await;
            let bad: Vec<(String, i64, i64, i64)> = match snap {
                Ok(snap) => snap
                    .into_iter()
                    .zip(&self.fleet.members)
                    .filter(|(v, m)| {
                        if m.phase == Phase::Up {
                            !(v.free == v.slots && v.owned == 0)
                        } else {
                            v.free != 0 || v.owned != 0
                        }
                    })
                    .map(|(v, _)| (v.worker, v.free, v.owned, v.slots))
                    .collect(),
                Err(e) => vec![(format!("(snapshot failed: {e})"), 0, 0, 0)],
            };
            if bad.is_empty() || Instant::now() > until {
                return Ok(bad);
            }
            self.check_exits();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reads Redis and runs every check; returns the summary and whether
    /// every check passed.
    async fn verify(&mut self, ledger: &load::SharedLedger) -> Result<(String, bool)> {
        let at_rest = self.capacity_at_rest().await?;
        self.check_exits();
        observe::read_endings(&mut self.conn, &self.keys, &self.obs)
            .await
            .context("reading the ended stream")?;
        let endings_added = observe::endings_added(&mut self.conn, &self.keys)
            .await
            .context("XINFO STREAM of the ended stream")?;
        let ids = ledger.lock().unwrap().order.clone();
        let hashes = verify::read_tasks(&mut self.conn, &self.keys, &ids)
            .await
            .context("reading the task hashes")?;
        let known: std::collections::HashSet<String> = ids.into_iter().collect();
        let leftovers =
            verify::leftovers(&mut self.conn, &self.keys, &self.fleet.profiles(), &known)
                .await
                .context("reading the queue's structures")?;
        let ledger = ledger.lock().unwrap();
        let obs = self.obs.lock().unwrap();
        let (mut checks, audit) = verify::verdict(&verify::Evidence {
            ledger: &ledger,
            hashes: &hashes,
            obs: &obs,
            endings_added,
            leftovers: &leftovers,
            at_rest: &at_rest,
            fleet_problems: &self.fleet_problems,
        });
        verify::check_free_handouts(&mut checks, &audit, self.faults.total());
        let setup = Setup {
            seed: self.rng_seed,
            duration: Duration::from_secs(self.args.duration),
            workers: self.args.workers,
            slots: self
                .fleet
                .members
                .iter()
                .take(self.args.workers)
                .map(|m| m.profile.slots)
                .collect(),
            lease_ms: self.args.lease_ms,
            rate: self.args.rate,
            max_in_flight: self.args.max_in_flight,
            redis: self.redis_label.clone(),
            wall: self.started.elapsed(),
            stream_bands: None,
        };
        let text = report::render(&setup, &self.faults, &ledger, &obs, &audit, &checks);
        Ok((text, checks.iter().all(verify::Check::passed)))
    }

    /// Waits (bounded) until the stream queue is empty: every ending
    /// removed its entry (`XACK` + `XDEL`) and moved `n` with it, so this
    /// holds as soon as every task ended; returns what is left then.
    async fn stream_at_rest(
        &mut self,
        known: &std::collections::HashSet<String>,
    ) -> Result<verify_stream::Leftovers> {
        let lease = Duration::from_millis(self.args.lease_ms);
        let until = Instant::now() + Duration::from_secs(5) + lease * 5;
        loop {
            let left = verify_stream::leftovers(&mut self.conn, &self.keys, STREAM_BANDS, known)
                .await
                .context("reading the stream queue's structures")?;
            if left.clean() || Instant::now() > until {
                return Ok(left);
            }
            self.check_exits();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The stream queue's checks (`verify_stream`); returns the summary and
    /// whether every check passed.
    async fn verify_stream(&mut self, ledger: &load::SharedLedger) -> Result<(String, bool)> {
        let ids = ledger.lock().unwrap().order.clone();
        let known: std::collections::HashSet<String> = ids.iter().cloned().collect();
        let leftovers = self.stream_at_rest(&known).await?;
        self.check_exits();
        let stored = verify_stream::read_stored(&mut self.conn, &self.keys, &ids)
            .await
            .context("reading the task markers and outputs")?;
        let ledger = ledger.lock().unwrap();
        let obs = self.obs.lock().unwrap();
        let (checks, audit) = verify_stream::verdict(&verify_stream::Evidence {
            ledger: &ledger,
            stored: &stored,
            obs: &obs,
            leftovers: &leftovers,
            bands: STREAM_BANDS,
            fleet_problems: &self.fleet_problems,
        });
        let setup = Setup {
            seed: self.rng_seed,
            duration: Duration::from_secs(self.args.duration),
            workers: self.args.workers,
            slots: self
                .fleet
                .members
                .iter()
                .take(self.args.workers)
                .map(|m| m.profile.slots)
                .collect(),
            lease_ms: self.args.lease_ms,
            rate: self.args.rate,
            max_in_flight: self.args.max_in_flight,
            redis: self.redis_label.clone(),
            wall: self.started.elapsed(),
            stream_bands: Some(STREAM_BANDS),
        };
        let text = report::render(&setup, &self.faults, &ledger, &obs, &audit, &checks);
        Ok((text, checks.iter().all(verify::Check::passed)))
    }
}
